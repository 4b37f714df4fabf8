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
}

impl PushOp {
    /// The AOR the change is about (the alias, for an alias).
    pub fn aor(&self) -> &str {
        match self {
            PushOp::Put { aor, .. } | PushOp::Remove { aor, .. } => aor,
            PushOp::Alias { alias, .. } | PushOp::AliasRemove { alias, .. } => alias,
        }
    }

    /// The change version.
    pub fn version(&self) -> u64 {
        match self {
            PushOp::Put { account, .. } => account.version,
            PushOp::Remove { version, .. }
            | PushOp::Alias { version, .. }
            | PushOp::AliasRemove { version, .. } => *version,
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
    fn farm_messages_round_trip_and_garbage_is_an_error() {
        let reply = FarmReply::Farm(FarmInfo {
            version: 7,
            domains: vec!["a.test".into(), "b.test".into()],
            nonce_key: Some(NonceSecret::random(1)),
        });
        let back: FarmReply = decode(&encode(&reply)).unwrap();
        assert_eq!(back, reply);
        for junk in [&b""[..], b"\x07", b"\x01\xff\xff\xff\xff\xff"] {
            assert!(decode::<FarmRequest>(junk).is_err(), "{junk:?}");
        }
    }
}
