//! Slowing down, then refusing, a source address that keeps failing authentication (a
//! password guesser, a phone configured with an old password), with no IO: the caller
//! supplies the time.
//!
//! Each address has a count of failures within a window. Below [`GuardPolicy::slow_after`]
//! failures nothing changes. From there on the address may try authenticating at most once
//! per [`GuardPolicy::slow_interval_ms`]: a request that comes sooner is refused without
//! being checked ([`Admit::TooSoon`]). At [`GuardPolicy::block_after`] failures it is
//! refused for [`GuardPolicy::block_ms`] ([`Admit::Blocked`]). A success does not clear the
//! count (one known account behind the same address would otherwise reset a guesser's); the
//! count ends with its window.
//!
//! The table is bounded ([`GuardPolicy::max_sources`]): when full, addresses whose window
//! ended are dropped first, then the one whose window started earliest.

use std::collections::HashMap;
use std::net::IpAddr;

/// The thresholds. Every limit is configurable by the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuardPolicy {
    /// Failures are counted over this long from the first one, in milliseconds.
    pub window_ms: u64,
    /// From this many failures in the window, attempts are spaced.
    pub slow_after: u32,
    /// The least time between two attempts of a slowed address, in milliseconds.
    pub slow_interval_ms: u64,
    /// At this many failures in the window, the address is refused.
    pub block_after: u32,
    /// How long a refused address stays refused, in milliseconds.
    pub block_ms: u64,
    /// Most addresses tracked.
    pub max_sources: usize,
}

impl Default for GuardPolicy {
    /// 5 failures in a minute slow an address to one attempt a second; 20 refuse it for 5
    /// minutes; 100,000 addresses tracked.
    fn default() -> Self {
        GuardPolicy {
            window_ms: 60_000,
            slow_after: 5,
            slow_interval_ms: 1_000,
            block_after: 20,
            block_ms: 300_000,
            max_sources: 100_000,
        }
    }
}

/// Whether an address may try now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Yes.
    Open,
    /// Yes, but it is slowed: its next attempt must wait.
    Slowed,
    /// No: a slowed address tried again too soon.
    TooSoon,
    /// No: refused for this many more milliseconds.
    Blocked(u64),
}

impl Admit {
    /// Whether the attempt may go on.
    pub fn allowed(self) -> bool {
        matches!(self, Admit::Open | Admit::Slowed)
    }
}

#[derive(Clone, Copy, Debug)]
struct Source {
    window_start: u64,
    failures: u32,
    last_attempt: u64,
    blocked_until: u64,
}

/// The failure counts per source address.
#[derive(Debug, Clone)]
pub struct FailureGuard {
    policy: GuardPolicy,
    sources: HashMap<IpAddr, Source>,
}

impl FailureGuard {
    /// An empty guard with `policy`.
    pub fn new(policy: GuardPolicy) -> FailureGuard {
        FailureGuard {
            policy,
            sources: HashMap::new(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &GuardPolicy {
        &self.policy
    }

    /// Whether no address is tracked (the common case: callers may skip [`Self::admit`]).
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// How many addresses are tracked.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    /// Whether `ip` may attempt authentication at `now_ms`; a slowed address's attempt is
    /// recorded, so the next one must wait.
    pub fn admit(&mut self, ip: IpAddr, now_ms: u64) -> Admit {
        let p = self.policy;
        let Some(s) = self.sources.get_mut(&ip) else {
            return Admit::Open;
        };
        if s.blocked_until > now_ms {
            return Admit::Blocked(s.blocked_until - now_ms);
        }
        if now_ms.saturating_sub(s.window_start) > p.window_ms {
            self.sources.remove(&ip);
            return Admit::Open;
        }
        if s.failures < p.slow_after {
            return Admit::Open;
        }
        if now_ms.saturating_sub(s.last_attempt) < p.slow_interval_ms {
            return Admit::TooSoon;
        }
        s.last_attempt = now_ms;
        Admit::Slowed
    }

    /// Records a failed authentication from `ip` at `now_ms`; returns true when this one
    /// made the address blocked.
    pub fn failed(&mut self, ip: IpAddr, now_ms: u64) -> bool {
        let p = self.policy;
        if !self.sources.contains_key(&ip) && self.sources.len() >= p.max_sources {
            self.make_room(now_ms);
        }
        let s = self.sources.entry(ip).or_insert(Source {
            window_start: now_ms,
            failures: 0,
            last_attempt: now_ms,
            blocked_until: 0,
        });
        if s.blocked_until <= now_ms && now_ms.saturating_sub(s.window_start) > p.window_ms {
            *s = Source {
                window_start: now_ms,
                failures: 0,
                last_attempt: now_ms,
                blocked_until: 0,
            };
        }
        s.failures = s.failures.saturating_add(1);
        s.last_attempt = now_ms;
        if s.failures >= p.block_after && s.blocked_until <= now_ms {
            s.blocked_until = now_ms + p.block_ms;
            // A new window starts when the block ends.
            s.window_start = s.blocked_until;
            s.failures = 0;
            return true;
        }
        false
    }

    /// Drops the addresses whose window and block ended at `now_ms` (call it now and then).
    pub fn purge(&mut self, now_ms: u64) {
        let window = self.policy.window_ms;
        self.sources.retain(|_, s| {
            s.blocked_until > now_ms || now_ms.saturating_sub(s.window_start) <= window
        });
    }

    fn make_room(&mut self, now_ms: u64) {
        self.purge(now_ms);
        if self.sources.len() < self.policy.max_sources {
            return;
        }
        if let Some(oldest) = self
            .sources
            .iter()
            .filter(|(_, s)| s.blocked_until <= now_ms)
            .min_by_key(|(_, s)| s.window_start)
            .map(|(ip, _)| *ip)
        {
            self.sources.remove(&oldest);
        } else if let Some(first) = self.sources.keys().next().copied() {
            // Every tracked address is blocked: the earliest to end makes room.
            let first = self
                .sources
                .iter()
                .min_by_key(|(_, s)| s.blocked_until)
                .map_or(first, |(ip, _)| *ip);
            self.sources.remove(&first);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    fn policy() -> GuardPolicy {
        GuardPolicy {
            window_ms: 60_000,
            slow_after: 3,
            slow_interval_ms: 1_000,
            block_after: 6,
            block_ms: 10_000,
            max_sources: 4,
        }
    }

    #[test]
    fn slowed_then_blocked_then_free_again() {
        let mut g = FailureGuard::new(policy());
        let a = ip(1);
        assert_eq!(g.admit(a, T0), Admit::Open);
        for i in 0..3 {
            assert!(!g.failed(a, T0 + i));
        }
        // Slowed: one attempt per second.
        assert_eq!(g.admit(a, T0 + 10), Admit::TooSoon);
        assert_eq!(g.admit(a, T0 + 1_010), Admit::Slowed);
        assert_eq!(g.admit(a, T0 + 1_500), Admit::TooSoon);
        assert!(!g.admit(a, T0 + 1_500).allowed());
        // Another address is not affected.
        assert_eq!(g.admit(ip(2), T0 + 1_500), Admit::Open);
        for i in 0..2 {
            assert!(!g.failed(a, T0 + 2_000 + i));
        }
        assert!(g.failed(a, T0 + 2_100), "the sixth failure blocks");
        assert_eq!(g.admit(a, T0 + 2_100), Admit::Blocked(10_000));
        assert_eq!(g.admit(a, T0 + 12_099), Admit::Blocked(1));
        // After the block a new window starts from nothing.
        assert_eq!(g.admit(a, T0 + 12_100), Admit::Open);
        assert!(!g.failed(a, T0 + 12_200));
        assert_eq!(g.admit(a, T0 + 12_300), Admit::Open);
    }

    #[test]
    fn failures_are_forgotten_with_their_window() {
        let mut g = FailureGuard::new(policy());
        for i in 0..5 {
            g.failed(ip(1), T0 + i);
        }
        assert!(!g.admit(ip(1), T0 + 10).allowed());
        assert_eq!(g.admit(ip(1), T0 + 60_010), Admit::Open);
        assert!(g.is_empty(), "an ended window is dropped when seen");
        g.failed(ip(1), T0 + 70_000);
        g.purge(T0 + 200_000);
        assert!(g.is_empty());
    }

    #[test]
    fn the_table_is_bounded() {
        let mut g = FailureGuard::new(policy());
        for n in 0..50u8 {
            g.failed(ip(n), T0 + u64::from(n));
            assert!(g.len() <= 4);
        }
        // Even when every tracked address is blocked.
        let mut g = FailureGuard::new(policy());
        for n in 0..10u8 {
            for _ in 0..6 {
                g.failed(ip(n), T0);
            }
            assert!(g.len() <= 4);
        }
        assert!(matches!(g.admit(ip(9), T0), Admit::Blocked(_)));
    }
}
