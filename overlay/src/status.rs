//! The shared model: kinds of participant, roles, members and the network status that the
//! active manager publishes.
//!
//! Every daemon applies a [`NetworkStatus`] only when its `(term, version)` is greater than the
//! one it holds ([`NetworkStatus::supersedes`]), so a deposed manager can never roll the network
//! back.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

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
    /// Every live member, sorted by name.
    pub members: Vec<Member>,
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
        self.members.iter().find(|m| m.name == name)
    }

    /// Live members bearing `role`.
    pub fn with_role<'a>(&'a self, role: &'a str) -> impl Iterator<Item = &'a Member> + 'a {
        self.members.iter().filter(move |m| m.has_role(role))
    }

    /// Live members of `kind`.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Member> + '_ {
        self.members.iter().filter(move |m| m.kind == kind)
    }
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
}
