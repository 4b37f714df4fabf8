//! Connections held per client address, for the TCP listeners anyone may reach (SIP on the
//! nodes, DNS): at most so many at once from one address, so that one client cannot take
//! every slot of a listener and lock everyone else out.
//!
//! An address is an IPv4 address, or the /64 prefix of an IPv6 one (what one subscriber line
//! is given: counting single IPv6 addresses would be no limit at all); an IPv4-mapped IPv6
//! address counts as its IPv4 address. A connection takes an [`AddressSlot`] when it is
//! accepted and gives it back when the slot is dropped. The table holds only addresses with
//! connections open, so it is bounded by the listener's own bound on connections.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// Connections open per client address (see the module documentation).
#[derive(Debug, Default)]
pub struct PerAddress {
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in its address's count, given back when dropped.
#[derive(Debug)]
pub struct AddressSlot {
    table: Arc<PerAddress>,
    key: IpAddr,
}

impl PerAddress {
    /// An empty table.
    pub fn new() -> Arc<PerAddress> {
        Arc::default()
    }

    /// The address `ip` counts under: itself (IPv4), its /64 (IPv6), or the IPv4 address an
    /// IPv4-mapped IPv6 address carries.
    pub fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
            },
        }
    }

    /// A place for one more connection from `ip`, unless its address holds `max` already
    /// (`max` 0: no limit; the connection is still counted).
    pub fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<AddressSlot> {
        let key = PerAddress::key(ip);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(key).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            table: self.clone(),
            key,
        })
    }

    /// Connections open from `ip`'s address.
    pub fn held(&self, ip: IpAddr) -> usize {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(&PerAddress::key(ip)).copied().unwrap_or(0)
    }

    /// Addresses with connections open.
    pub fn addresses(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = self.table.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// IPv4 addresses count alone; IPv6 ones by their /64; an IPv4-mapped IPv6 address as its
    /// IPv4 address.
    #[test]
    fn keys() {
        let key = |s: &str| PerAddress::key(ip(s));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
    }

    /// At most `max` per address, a slot given back on drop, 0 counting without a limit, and
    /// nothing left in the table once every connection has closed.
    #[test]
    fn slots_are_bounded_and_given_back() {
        let t = PerAddress::new();
        let a = t.take(ip("2001:db8::1"), 1).unwrap();
        assert!(t.take(ip("2001:db8::2"), 1).is_none(), "same /64");
        let b = t.take(ip("2001:db8:0:1::2"), 1).unwrap();
        drop(a);
        let c = t.take(ip("2001:db8::2"), 1).unwrap();
        let many: Vec<_> = (0..1000)
            .map(|_| t.take(ip("192.0.2.7"), 0).unwrap())
            .collect();
        assert_eq!(t.held(ip("192.0.2.7")), 1000);
        assert_eq!(t.addresses(), 3);
        drop((b, c, many));
        assert_eq!(t.held(ip("192.0.2.7")), 0);
        assert_eq!(t.addresses(), 0);
    }
}
