//! Provisioning data as the managers push it to the nodes (the `provision` service on the
//! node peer port, UDP 8002): accounts under their AOR, sent to the AOR's owner on the
//! `registrar` ring, which keeps them beside the AOR's bindings in its replicated store.
//!
//! Wire format: bincode of [`PushBatch`] in, [`PushReply`] out. Enum variants are only
//! appended.

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
}

impl PushOp {
    /// The AOR the change is about.
    pub fn aor(&self) -> &str {
        match self {
            PushOp::Put { aor, .. } | PushOp::Remove { aor, .. } => aor,
        }
    }

    /// The change version.
    pub fn version(&self) -> u64 {
        match self {
            PushOp::Put { account, .. } => account.version,
            PushOp::Remove { version, .. } => *version,
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
