//! The shared model: kinds of participant, roles, members and the network status that the
//! active manager publishes.
//!
//! Every daemon applies a [`NetworkStatus`] only when its `(term, version)` is greater than the
//! one it holds ([`NetworkStatus::supersedes`]), so a deposed manager can never roll the network
//! back.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// What a certificate allows its holder to be. Carried in our own certificate extension.
///
/// Variants are only appended, never reordered: the wire format depends on their order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A publish/subscribe hub.
    Eventserver,
    /// A manager: takes part in the election, the active one publishes network status.
    Manager,
    /// An authoritative DNS server for the SIP domain.
    Dns,
    /// A role-bearing member (`sip_proxy`, `registrar`, `media_relay`, or any other role).
    Node,
    /// A read-only client: may subscribe, never publish, never a member.
    Monitor,
    /// An operator's client: may publish revocation lists and log events, never a member.
    Admin,
}

impl Kind {
    /// Every kind, in wire order.
    pub const ALL: [Kind; 6] = [
        Kind::Eventserver,
        Kind::Manager,
        Kind::Dns,
        Kind::Node,
        Kind::Monitor,
        Kind::Admin,
    ];

    /// The lowercase name used in certificates, configs and `farm.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Eventserver => "eventserver",
            Kind::Manager => "manager",
            Kind::Dns => "dns",
            Kind::Node => "node",
            Kind::Monitor => "monitor",
            Kind::Admin => "admin",
        }
    }

    /// Whether holders of this kind join the network as members (monitors and admins are
    /// clients only).
    pub fn is_member(self) -> bool {
        !matches!(self, Kind::Monitor | Kind::Admin)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a kind or role name that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not one of the kinds.
    #[error(
        "unknown kind {0:?} (expected one of eventserver, manager, dns, node, monitor, admin)"
    )]
    UnknownKind(String),
    /// A role name with characters outside `[a-z0-9_-]` or of a bad length.
    #[error("invalid role {0:?}: a role is 1-32 characters of a-z, 0-9, '_' or '-'")]
    BadRole(String),
    /// A member name with characters outside `[A-Za-z0-9_-]` or of a bad length.
    #[error("invalid member name {0:?}: a name is 1-63 characters of A-Z, a-z, 0-9, '_' or '-'")]
    BadName(String),
}

impl FromStr for Kind {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| NameError::UnknownKind(s.to_string()))
    }
}

/// A role a node can bear. Roles are an open set: any role in a certificate is announced and
/// gets its own ring, so third-party software can join beside a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Role(String);

impl Role {
    /// The SIP proxy role.
    pub const SIP_PROXY: &'static str = "sip_proxy";
    /// The registrar role.
    pub const REGISTRAR: &'static str = "registrar";
    /// The media relay role.
    pub const MEDIA_RELAY: &'static str = "media_relay";
    /// The roles every node of a farm gets unless told otherwise.
    pub const BUILT_IN: [&'static str; 3] = [Self::SIP_PROXY, Self::REGISTRAR, Self::MEDIA_RELAY];

    /// Checks and wraps a role name.
    pub fn new(name: &str) -> Result<Self, NameError> {
        let ok = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(Role(name.to_string()))
        } else {
            Err(NameError::BadRole(name.to_string()))
        }
    }

    /// The role's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Role {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::new(s)
    }
}

impl TryFrom<String> for Role {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Role::new(&s)
    }
}

impl From<Role> for String {
    fn from(r: Role) -> String {
        r.0
    }
}

/// Checks a member name (the certificate CN): 1-63 characters of `[A-Za-z0-9_-]`, so that
/// `NAME.DOMAIN` is a valid host name.
pub fn check_member_name(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(NameError::BadName(name.to_string()))
    }
}

/// A service a member offers, and where.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// The service name, for example `sip`, `lookup`, `eventserver`, `raft`, `dns`, `metrics`.
    pub service: String,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// A live member of the network, as the active manager sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Unique name (certificate CN).
    pub name: String,
    /// Kind, from the certificate.
    pub kind: Kind,
    /// Roles announced (always a subset of the certificate's roles), sorted.
    pub roles: Vec<Role>,
    /// The services the member offers.
    pub endpoints: Vec<Endpoint>,
    /// When the active manager first saw this member live, in milliseconds since the Unix
    /// epoch.
    pub since: u64,
    /// The member's address, as its event-server connections come from.
    pub ip: IpAddr,
}

impl Member {
    /// Whether the member bears `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r.as_str() == role)
    }

    /// The address of the named service, if the member offers it.
    pub fn endpoint(&self, service: &str) -> Option<SocketAddr> {
        self.endpoints
            .iter()
            .find(|e| e.service == service)
            .map(|e| e.addr)
    }
}

/// The network status: every live member, published by the active manager.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// The Raft term of the publishing manager.
    pub term: u64,
    /// Increases with every status published within a term.
    pub version: u64,
    /// The name of the manager that published this status (the active manager).
    pub manager: String,
    /// Every live member, sorted by name. Shared: a copy of the status costs a reference count
    /// per member, not a copy of each (on the wire a member is encoded as itself).
    pub members: Vec<Arc<Member>>,
}

impl NetworkStatus {
    /// Whether this status should replace `held` (strictly greater `(term, version)`).
    pub fn supersedes(&self, held: Option<&NetworkStatus>) -> bool {
        match held {
            None => true,
            Some(h) => (self.term, self.version) > (h.term, h.version),
        }
    }

    /// The member with this name.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().map(|m| &**m).find(|m| m.name == name)
    }

    /// Live members bearing `role`.
    pub fn with_role<'a>(&'a self, role: &'a str) -> impl Iterator<Item = &'a Member> + 'a {
        self.members
            .iter()
            .map(|m| &**m)
            .filter(move |m| m.has_role(role))
    }

    /// Live members of `kind`.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Member> + '_ {
        self.members
            .iter()
            .map(|m| &**m)
            .filter(move |m| m.kind == kind)
    }

    /// A digest of the membership ([`member_digest`] of every member, added up): equal member
    /// lists have equal digests whatever their order, and one member's change moves it by that
    /// member's share alone, so a receiver keeps it up to date at the cost of the change.
    pub fn digest(&self) -> u64 {
        self.members
            .iter()
            .fold(0u64, |d, m| d.wrapping_add(member_digest(m)))
    }

    /// The delta that turns `self` into `next` (members joined or changed, members gone),
    /// for `next`'s term and version; `None` when `next` is not of the same term and manager
    /// (a receiver must then be given `next` whole).
    pub fn delta_to(&self, next: &NetworkStatus) -> Option<StatusDelta> {
        if next.term != self.term || next.manager != self.manager || next.version <= self.version {
            return None;
        }
        let mut upserts = Vec::new();
        let mut removed = Vec::new();
        let (a, b) = (&self.members, &next.members);
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) if x.name == y.name => {
                    if x != y {
                        upserts.push(y.clone());
                    }
                    i += 1;
                    j += 1;
                }
                (Some(x), Some(y)) if x.name < y.name => {
                    removed.push(x.name.clone());
                    i += 1;
                }
                (Some(x), None) => {
                    removed.push(x.name.clone());
                    i += 1;
                }
                (_, Some(y)) => {
                    upserts.push(y.clone());
                    j += 1;
                }
                (None, None) => break,
            }
        }
        Some(StatusDelta {
            term: next.term,
            version: next.version,
            base: self.version,
            manager: next.manager.clone(),
            upserts,
            removed,
            digest: next.digest(),
        })
    }

    /// Applies `delta` in place when it follows this status (same term and manager, `base`
    /// equal to this version) and the result has the delta's digest. `digest` is this
    /// status's [`NetworkStatus::digest`] and is brought up to date, at the cost of the
    /// change (not of the membership): nothing but the changed members is touched.
    ///
    /// On an error the status and `digest` are unchanged. The member list must be sorted by
    /// name (as every published status is); it stays sorted.
    pub fn apply_delta(&mut self, delta: &StatusDelta, digest: &mut u64) -> Result<(), DeltaError> {
        let d = self.digest_after(delta, *digest)?;
        self.put_delta(delta);
        *digest = d;
        Ok(())
    }

    /// Makes the change of a delta that [`NetworkStatus::digest_after`] accepted.
    pub(crate) fn put_delta(&mut self, delta: &StatusDelta) {
        for name in &delta.removed {
            if let Ok(i) = self.members.binary_search_by(|m| m.name.as_str().cmp(name)) {
                self.members.remove(i);
            }
        }
        for m in &delta.upserts {
            match self.members.binary_search_by(|x| x.name.cmp(&m.name)) {
                Ok(i) => self.members[i] = m.clone(),
                Err(i) => self.members.insert(i, m.clone()),
            }
        }
        self.term = delta.term;
        self.version = delta.version;
    }

    /// Checks that `delta` follows this status and is well formed (the names it removes are
    /// held, and no name is removed or upserted twice), and returns the digest of the status
    /// it makes, given `digest`, this one's.
    pub fn digest_after(&self, delta: &StatusDelta, digest: u64) -> Result<u64, DeltaError> {
        if delta.term != self.term || delta.base != self.version || delta.manager != self.manager {
            return Err(DeltaError::Gap {
                held: (self.term, self.version),
                base: (delta.term, delta.base),
            });
        }
        if delta.version <= delta.base {
            return Err(DeltaError::Malformed("version not above its base"));
        }
        let mut names: Vec<&str> = delta
            .removed
            .iter()
            .map(String::as_str)
            .chain(delta.upserts.iter().map(|m| m.name.as_str()))
            .collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(DeltaError::Malformed("a member is named twice"));
        }
        let held = |name: &str| {
            self.members
                .binary_search_by(|m| m.name.as_str().cmp(name))
                .ok()
                .map(|i| &self.members[i])
        };
        let mut d = digest;
        for name in &delta.removed {
            match held(name) {
                Some(m) => d = d.wrapping_sub(member_digest(m)),
                None => return Err(DeltaError::Malformed("a removed member is not held")),
            }
        }
        for m in &delta.upserts {
            if let Some(old) = held(&m.name) {
                d = d.wrapping_sub(member_digest(old));
            }
            d = d.wrapping_add(member_digest(m));
        }
        if d != delta.digest {
            return Err(DeltaError::Digest);
        }
        Ok(d)
    }
}

/// Feeds what bincode writes into a hash.
struct HashWriter(xxhash_rust::xxh3::Xxh3);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One member's share of a membership digest ([`NetworkStatus::digest`]): a hash of its
/// encoding on the wire.
pub fn member_digest(m: &Member) -> u64 {
    let mut w = HashWriter(xxhash_rust::xxh3::Xxh3::new());
    // Writing into a hash cannot fail, and every field of a member encodes.
    let _ = bincode::serde::encode_into_std_write(m, &mut w, bincode::config::standard());
    w.0.digest()
}

/// A change of the network status, published by the active manager in place of the whole
/// status: the members that joined or changed (each whole) and the names of those gone.
///
/// A receiver applies it only to the status of the same term and manager whose version is
/// `base`; holding anything older, it has missed a change and asks for the whole status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusDelta {
    /// The Raft term of the publishing manager.
    pub term: u64,
    /// The version this delta makes.
    pub version: u64,
    /// The version it applies to (same term).
    pub base: u64,
    /// The publishing manager.
    pub manager: String,
    /// Members that joined, or whose record changed, whole.
    pub upserts: Vec<Arc<Member>>,
    /// Names of members that are gone.
    pub removed: Vec<String>,
    /// [`NetworkStatus::digest`] of the status after the delta.
    pub digest: u64,
}

/// The periodic heartbeat of the active manager: which status is current, in a few bytes.
/// A receiver holding an older one (or the same version with another digest) has missed a
/// change and asks for the whole status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusBeat {
    /// The Raft term of the publishing manager.
    pub term: u64,
    /// The current version.
    pub version: u64,
    /// The publishing manager.
    pub manager: String,
    /// How many members the status lists.
    pub members: u32,
    /// [`NetworkStatus::digest`] of the current status.
    pub digest: u64,
}

/// Why a delta was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// It does not follow the status held: a change was missed (or it is old).
    #[error("delta for {base:?} does not follow the status held {held:?}")]
    Gap {
        /// `(term, version)` held.
        held: (u64, u64),
        /// `(term, base)` of the delta.
        base: (u64, u64),
    },
    /// It cannot be right (a removed member not held, versions out of order).
    #[error("malformed delta: {0}")]
    Malformed(&'static str),
    /// The result's digest differs from the delta's: the status held was not the manager's.
    #[error("the status after the delta does not match the manager's digest")]
    Digest,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>().unwrap(), k);
        }
        assert!("router".parse::<Kind>().is_err());
    }

    #[test]
    fn role_names_are_checked() {
        assert!(Role::new("sip_proxy").is_ok());
        assert!(Role::new("xcap-server2").is_ok());
        assert!(Role::new("").is_err());
        assert!(Role::new("Registrar").is_err());
        assert!(Role::new("a b").is_err());
        assert!(Role::new(&"x".repeat(33)).is_err());
    }

    #[test]
    fn supersedes_orders_by_term_then_version() {
        let s = |term, version| NetworkStatus {
            term,
            version,
            ..Default::default()
        };
        assert!(s(1, 1).supersedes(None));
        assert!(s(1, 2).supersedes(Some(&s(1, 1))));
        assert!(s(2, 1).supersedes(Some(&s(1, 9))));
        assert!(!s(1, 1).supersedes(Some(&s(1, 1))));
        assert!(!s(1, 9).supersedes(Some(&s(2, 1))));
    }

    fn node(name: &str, n: u8) -> Arc<Member> {
        Arc::new(Member {
            name: name.into(),
            kind: Kind::Node,
            roles: vec![Role::new("registrar").unwrap()],
            endpoints: Vec::new(),
            since: n as u64,
            ip: IpAddr::from([127, 0, 1, n]),
        })
    }

    fn with(version: u64, names: &[(&str, u8)]) -> NetworkStatus {
        NetworkStatus {
            term: 3,
            version,
            manager: "manager1".into(),
            members: names.iter().map(|(n, i)| node(n, *i)).collect(),
        }
    }

    #[test]
    fn a_delta_turns_a_status_into_the_next_one() {
        let a = with(1, &[("a", 1), ("b", 2), ("c", 3)]);
        let b = with(2, &[("a", 1), ("b", 9), ("d", 4)]);
        let d = a.delta_to(&b).unwrap();
        assert_eq!(d.removed, ["c"]);
        assert_eq!(
            d.upserts
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>(),
            ["b", "d"]
        );
        let mut held = a.clone();
        let mut digest = a.digest();
        held.apply_delta(&d, &mut digest).unwrap();
        assert_eq!(held, b);
        assert_eq!(digest, b.digest());
        // Applied once only: the next one must follow version 2.
        assert!(matches!(
            held.apply_delta(&d, &mut digest),
            Err(DeltaError::Gap { .. })
        ));
        // Another term or manager has no delta.
        let mut other = b.clone();
        other.term = 4;
        assert!(a.delta_to(&other).is_none());
    }

    #[test]
    fn a_delta_onto_another_status_is_refused_by_its_digest() {
        let a = with(1, &[("a", 1), ("b", 2)]);
        let b = with(2, &[("a", 1), ("b", 2), ("c", 3)]);
        let d = a.delta_to(&b).unwrap();
        // Same term and version, but the receiver's copy differs (b's address).
        let mut wrong = with(1, &[("a", 1), ("b", 7)]);
        let mut digest = wrong.digest();
        let before = wrong.clone();
        assert_eq!(wrong.apply_delta(&d, &mut digest), Err(DeltaError::Digest));
        assert_eq!(wrong, before, "unchanged on an error");
        assert_eq!(digest, before.digest());
        // Removing a member not held.
        let mut bad = d.clone();
        bad.removed.push("zz".into());
        let mut held = a.clone();
        let mut digest = a.digest();
        assert!(matches!(
            held.apply_delta(&bad, &mut digest),
            Err(DeltaError::Malformed(_))
        ));
        assert_eq!(held, a, "unchanged on an error");
        // A name both removed and upserted, or upserted twice.
        let mut twice = d.clone();
        twice.removed.push("c".into());
        assert_eq!(
            held.apply_delta(&twice, &mut digest),
            Err(DeltaError::Malformed("a member is named twice"))
        );
        let mut twice = d.clone();
        twice.upserts.push(twice.upserts[0].clone());
        assert_eq!(
            held.apply_delta(&twice, &mut digest),
            Err(DeltaError::Malformed("a member is named twice"))
        );
        assert_eq!(
            (held, digest),
            (a.clone(), a.digest()),
            "unchanged on an error"
        );
        // Applied in place: the status and digest the manager made.
        let mut in_place = a.clone();
        let mut d1 = a.digest();
        in_place.apply_delta(&d, &mut d1).unwrap();
        assert_eq!(d1, b.digest());
        assert_eq!(in_place, b);
    }

    #[test]
    fn the_digest_does_not_depend_on_order_and_sees_every_field() {
        let a = with(1, &[("a", 1), ("b", 2)]);
        let mut r = a.clone();
        r.members.reverse();
        assert_eq!(a.digest(), r.digest());
        let mut since = a.clone();
        Arc::make_mut(&mut since.members[0]).since += 1;
        assert_ne!(a.digest(), since.digest());
    }
}
