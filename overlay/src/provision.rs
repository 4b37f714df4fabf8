//! Provisioning data as the managers push it to the nodes (the `provision` service on the
//! node peer port, UDP 8002): accounts under their AOR, sent to the AOR's owner on the
//! `registrar` ring, which keeps them beside the AOR's bindings in its replicated store.
//!
//! Wire format: bincode of [`PushBatch`] in, [`PushReply`] out. Enum variants are only
//! appended.
//!
//! The other direction, a member asking a manager, is the farm-read service on the
//! managers' Raft port: [`FarmRequest`] in, [`FarmReply`] out (see [`crate::farm_client`]).

use std::fmt;

use serde::{Deserialize, Serialize};

/// An account as the registrar holds it: what verifying a request needs, nothing else.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    /// The change version of the account's latest change (a holder keeps the highest).
    pub version: u64,
    /// Whether the account may register and call.
    pub enabled: bool,
    /// `MD5(user:realm:password)`.
    pub ha1_md5: [u8; 16],
    /// `SHA-256(user:realm:password)`.
    pub ha1_sha256: [u8; 32],
    /// Shown to callees.
    pub display_name: Option<String>,
}

impl fmt::Debug for AccountRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountRecord")
            .field("version", &self.version)
            .field("enabled", &self.enabled)
            .field("ha1", &"<redacted>")
            .field("display_name", &self.display_name)
            .finish()
    }
}

/// One change pushed to a node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum PushOp {
    /// The account at `aor` is now `account` (applied only if newer than what is held).
    Put {
        /// `user@domain`.
        aor: String,
        /// Its state.
        account: AccountRecord,
    },
    /// The account at `aor` was removed at change `version` (applied only if newer).
    Remove {
        /// `user@domain`.
        aor: String,
        /// The change that removed it.
        version: u64,
    },
    /// Requests for `alias` now reach the account at `target` (applied only if newer).
    Alias {
        /// The alias AOR, `user@domain`.
        alias: String,
        /// The account's AOR.
        target: String,
        /// The change that made it.
        version: u64,
    },
    /// The alias was removed at change `version` (applied only if newer).
    AliasRemove {
        /// The alias AOR.
        alias: String,
        /// The change that removed it.
        version: u64,
    },
    /// The E.164 number `number` (`+` and 1 to 15 digits, the key on the `registrar` ring) is
    /// now routed to `route`, or to nothing (`None`: released, or allocated but not routed),
    /// as of change `version` (applied only if newer).
    Number {
        /// `+15550100`.
        number: String,
        /// Where calls to it go.
        route: Option<NumberRoute>,
        /// The change that made it so.
        version: u64,
    },
}

/// Where calls to an E.164 number go.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum NumberRoute {
    /// One of the farm's accounts, `user@domain`: requests to the number reach its bindings,
    /// and the account may use the number as its own (registration, caller ID).
    Account(String),
    /// A SIP or SIPS URI of any network (`sip:+15550100@carrier.example`).
    Uri(String),
}

impl NumberRoute {
    /// The SIP URI that calls to the number are sent to (what an ENUM `E2U+sip` record
    /// names): `sip:user@domain` for an account, the URI itself otherwise.
    pub fn sip_uri(&self) -> String {
        match self {
            NumberRoute::Account(aor) => format!("sip:{aor}"),
            NumberRoute::Uri(uri) => uri.clone(),
        }
    }
}

impl PushOp {
    /// The AOR the change is about (the alias, for an alias).
    pub fn aor(&self) -> &str {
        match self {
            PushOp::Put { aor, .. } | PushOp::Remove { aor, .. } => aor,
            PushOp::Alias { alias, .. } | PushOp::AliasRemove { alias, .. } => alias,
            PushOp::Number { number, .. } => number,
        }
    }

    /// The change version.
    pub fn version(&self) -> u64 {
        match self {
            PushOp::Put { account, .. } => account.version,
            PushOp::Remove { version, .. }
            | PushOp::Alias { version, .. }
            | PushOp::AliasRemove { version, .. }
            | PushOp::Number { version, .. } => *version,
        }
    }
}

/// Changes for one node, in version order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PushBatch {
    /// The changes.
    pub ops: Vec<PushOp>,
}

/// The answer to a [`PushBatch`]: for each op, `None` when it is held by the AOR's replica
/// set, or why not.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PushReply {
    /// One entry per op, in order.
    pub results: Vec<Option<String>>,
}

/// bincode (standard) of a push message.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).unwrap_or_default()
}

/// Decodes a push message (at most 1 MiB).
pub fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    bincode::serde::decode_from_slice(b, bincode::config::standard().with_limit::<{ 1 << 20 }>())
        .map(|(v, _)| v)
        .map_err(|e| e.to_string())
}

/// A member's request to a manager's farm-read service (nodes and DNS servers, on the
/// manager's Raft port, UDP 8001): one request per bidirectional stream, one
/// [`FarmReply`] back. See [`crate::farm_client`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum FarmRequest {
    /// The farm's settings: provisioned domains and (for `node` certificates only) the SIP
    /// nonce key.
    Farm,
    /// One account by AOR `user@domain`, to fill a cold registrar cache (nodes only).
    Account {
        /// `user@domain`.
        aor: String,
    },
    /// The routing of one E.164 number (`+15550100`), to fill a cold registrar cache (nodes
    /// only).
    Number {
        /// `+` and 1 to 15 digits.
        number: String,
    },
    /// The ENUM data (every routed number and the SIP URI it maps to), for DNS servers and
    /// nodes. With `since` 0, or older than the change log reaches, the answer is a full
    /// listing (`reset`), a page at a time in number order after `after`. Otherwise it holds
    /// the numbers changed after version `since` (a page at most); when there is none yet,
    /// the manager waits up to `wait_ms` (at most [`MAX_ENUM_WAIT_MS`]) for one.
    Enum {
        /// The version the client holds everything up to (0: nothing).
        since: u64,
        /// For the pages of a full listing after the first: the last number received.
        after: Option<String>,
        /// How long to wait for a change when there is none after `since`.
        wait_ms: u32,
    },
}

/// Longest wait of a [`FarmRequest::Enum`] (below the farm client's call deadline).
pub const MAX_ENUM_WAIT_MS: u32 = 1_000;

/// One number of a [`FarmReply::Enum`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EnumEntry {
    /// `+15550100`.
    pub number: String,
    /// The SIP URI of its `E2U+sip` record ([`NumberRoute::sip_uri`]); `None`: the number is
    /// not routed (any record held for it goes).
    pub uri: Option<String>,
}

/// The answer to [`FarmRequest::Enum`].
///
/// A client holding nothing asks with `since: 0`. A `reset` answer is a page of the full
/// listing, read at `version`: the client clears what it holds before the first page, asks for
/// the next page with `after: next` while `next` is set, and then asks for the changes since
/// the `version` of the *first* page (replaying a change is harmless: each entry is the
/// number's whole state). An answer without `reset` holds changes: the client applies them
/// and asks again with `since: version`, at once when `next` is set (more changes wait).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EnumUpdate {
    /// The change version this answer is complete up to.
    pub version: u64,
    /// A page of the full listing, not changes.
    pub reset: bool,
    /// The numbers.
    pub entries: Vec<EnumEntry>,
    /// More to read: for a listing, the `after` of the next page; for changes, `Some` (any
    /// value) when more changes follow `version`.
    pub next: Option<String>,
}

/// A manager's answer to a [`FarmRequest`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum FarmReply {
    /// The answer to [`FarmRequest::Farm`].
    Farm(FarmInfo),
    /// The answer to [`FarmRequest::Account`].
    Account {
        /// The provisioning change version the answer was read at.
        version: u64,
        /// The account, if there is one at that AOR.
        account: Option<AccountRecord>,
    },
    /// The request could not be answered (why; never a secret).
    Error(String),
    /// The answer to [`FarmRequest::Number`].
    Number {
        /// The provisioning change version the answer was read at.
        version: u64,
        /// Where calls to the number go; `None` when it is not routed (or not allocated).
        route: Option<NumberRoute>,
    },
    /// The answer to [`FarmRequest::Enum`].
    Enum(EnumUpdate),
}

/// The farm-wide provisioning facts a member needs, as one manager read them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct FarmInfo {
    /// Provisioning change version this was read at.
    pub version: u64,
    /// Every provisioned domain, lower-case, sorted.
    pub domains: Vec<String>,
    /// The farm-wide key that SIP digest nonces are MACed with (to `node` certificates only;
    /// `None` for others, or before the active manager made one).
    pub nonce_key: Option<NonceSecret>,
    /// How each domain that configures one reads the local forms of numbers in user parts
    /// (sorted by domain). Appended field: a reader of an earlier version ignores it.
    pub dial_plans: Vec<(String, DialPlan)>,
}

/// How a domain's subscribers may write numbers besides the E.164 form (`+15550100`): a user
/// part of digits is read as national (`national_prefix` then the national number) or
/// international (`international_prefix` then country code and number).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct DialPlan {
    /// The domain's country calling code (`1`, `49`).
    pub country_code: String,
    /// The trunk prefix of national numbers (`0` in Germany, `1` in the NANP; empty: none, a
    /// number of digits without an international prefix is national as it stands).
    pub national_prefix: String,
    /// The prefix of international numbers (`00`, `011`; empty: none).
    pub international_prefix: String,
}

impl DialPlan {
    /// The E.164 form (`+4930123456`) of a user part written in this plan (`030123456`,
    /// `004930123456`, `+4930123456`), or `None` when it is not a number. Visual separators
    /// (`-`, `.`, `(`, `)`) are ignored, as RFC 3966 allows.
    pub fn to_e164(&self, user: &str) -> Option<String> {
        let digits: String = user
            .chars()
            .filter(|c| !matches!(c, '-' | '.' | '(' | ')'))
            .collect();
        if let Some(rest) = digits.strip_prefix('+') {
            return e164(rest);
        }
        if !digits.bytes().all(|b| b.is_ascii_digit()) || digits.is_empty() {
            return None;
        }
        if !self.international_prefix.is_empty() {
            if let Some(rest) = digits.strip_prefix(self.international_prefix.as_str()) {
                return e164(rest);
            }
        }
        let national = if self.national_prefix.is_empty() {
            digits.as_str()
        } else {
            digits.strip_prefix(self.national_prefix.as_str())?
        };
        if self.country_code.is_empty() {
            return None;
        }
        e164(&format!("{}{national}", self.country_code))
    }
}

/// `+digits` when `digits` is 1 to 15 ASCII digits not starting with 0 (an E.164 number).
fn e164(digits: &str) -> Option<String> {
    let ok = (1..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    ok.then(|| format!("+{digits}"))
}

/// Checks an E.164 number written `+` and 1 to 15 digits (the first not 0), with visual
/// separators (`-`, `.`, `(`, `)`, space) ignored; the canonical form (`+15550100`) or why not.
pub fn parse_e164(s: &str) -> Result<String, String> {
    let digits: String = s
        .trim()
        .chars()
        .filter(|c| !matches!(c, '-' | '.' | '(' | ')' | ' '))
        .collect();
    let Some(rest) = digits.strip_prefix('+') else {
        return Err(format!(
            "{s:?} is not an E.164 number: it must start with '+' and the country code"
        ));
    };
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{s:?} is not an E.164 number: only digits may follow the '+'"
        ));
    }
    if rest.len() > 15 {
        return Err(format!(
            "{s:?} is not an E.164 number: it has {} digits, at most 15 are allowed",
            rest.len()
        ));
    }
    if rest.starts_with('0') {
        return Err(format!(
            "{s:?} is not an E.164 number: no country code starts with 0"
        ));
    }
    Ok(digits)
}

/// The farm's SIP nonce key: a 1-byte id (carried in every nonce) and a 32-byte secret shared
/// by every node. `Debug` prints the id and `<redacted>`; the secret is zeroed when dropped and
/// compared in constant time.
#[derive(Serialize, Deserialize, Clone)]
pub struct NonceSecret {
    /// The key's id.
    pub id: u8,
    /// The secret: 32 random bytes.
    pub secret: [u8; 32],
}

impl NonceSecret {
    /// A fresh key with id `id` and 32 bytes from the operating system's random source.
    pub fn random(id: u8) -> NonceSecret {
        use rand::RngCore;
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        NonceSecret { id, secret }
    }
}

impl PartialEq for NonceSecret {
    fn eq(&self, other: &Self) -> bool {
        // Constant time over the secret: no early exit on the first differing byte.
        let diff = self
            .secret
            .iter()
            .zip(other.secret.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        self.id == other.id && diff == 0
    }
}

impl Eq for NonceSecret {}

impl fmt::Debug for NonceSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonceSecret")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Drop for NonceSecret {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.secret.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_secret_debug_is_redacted() {
        let k = NonceSecret {
            id: 1,
            secret: [0xab; 32],
        };
        let text = format!(
            "{k:?} {:?}",
            FarmInfo {
                nonce_key: Some(k.clone()),
                ..FarmInfo::default()
            }
        );
        assert!(text.contains("<redacted>"), "{text}");
        assert!(!text.contains("171") && !text.contains("ab, ab"), "{text}");
    }

    #[test]
    fn nonce_secrets_compare_by_value() {
        let a = NonceSecret::random(1);
        let b = NonceSecret::random(1);
        assert_eq!(a, a.clone());
        assert_ne!(a, b);
        let other_id = NonceSecret {
            id: 2,
            secret: a.secret,
        };
        assert_ne!(a, other_id);
    }

    #[test]
    fn e164_numbers_are_checked() {
        assert_eq!(parse_e164("+1 555-0100").unwrap(), "+15550100");
        assert_eq!(parse_e164("+(49) 30.123456").unwrap(), "+4930123456");
        for bad in [
            "15550100",
            "+",
            "+0123",
            "+1555a",
            &format!("+{}", "1".repeat(16)),
        ] {
            assert!(parse_e164(bad).is_err(), "{bad:?}");
        }
        assert!(parse_e164(&format!("+{}", "1".repeat(15))).is_ok());
    }

    #[test]
    fn dial_plans_read_local_forms() {
        let de = DialPlan {
            country_code: "49".into(),
            national_prefix: "0".into(),
            international_prefix: "00".into(),
        };
        assert_eq!(de.to_e164("030123456").as_deref(), Some("+4930123456"));
        assert_eq!(de.to_e164("004930123456").as_deref(), Some("+4930123456"));
        assert_eq!(de.to_e164("+4930123456").as_deref(), Some("+4930123456"));
        assert_eq!(de.to_e164("0301-23456").as_deref(), Some("+4930123456"));
        assert_eq!(de.to_e164("30123456"), None, "no trunk prefix");
        assert_eq!(de.to_e164("alice"), None);
        assert_eq!(de.to_e164(""), None);
        let nanp = DialPlan {
            country_code: "1".into(),
            national_prefix: String::new(),
            international_prefix: "011".into(),
        };
        assert_eq!(nanp.to_e164("5550100").as_deref(), Some("+15550100"));
        assert_eq!(nanp.to_e164("01149301").as_deref(), Some("+49301"));
        assert_eq!(DialPlan::default().to_e164("5550100"), None);
        assert_eq!(
            DialPlan::default().to_e164("+15550100").as_deref(),
            Some("+15550100")
        );
    }

    #[test]
    fn number_routes_name_their_sip_uri() {
        assert_eq!(
            NumberRoute::Account("alice@example.test".into()).sip_uri(),
            "sip:alice@example.test"
        );
        assert_eq!(
            NumberRoute::Uri("sip:+15550100@carrier.example".into()).sip_uri(),
            "sip:+15550100@carrier.example"
        );
        let op = PushOp::Number {
            number: "+15550100".into(),
            route: None,
            version: 9,
        };
        assert_eq!((op.aor(), op.version()), ("+15550100", 9));
    }

    #[test]
    fn farm_messages_round_trip_and_garbage_is_an_error() {
        let reply = FarmReply::Farm(FarmInfo {
            version: 7,
            domains: vec!["a.test".into(), "b.test".into()],
            nonce_key: Some(NonceSecret::random(1)),
            dial_plans: vec![("a.test".into(), DialPlan::default())],
        });
        let back: FarmReply = decode(&encode(&reply)).unwrap();
        assert_eq!(back, reply);
        for junk in [&b""[..], b"\x07", b"\x01\xff\xff\xff\xff\xff"] {
            assert!(decode::<FarmRequest>(junk).is_err(), "{junk:?}");
        }
    }
}
