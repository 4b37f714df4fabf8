//! The store's messages on the peer port ([`crate::peer::Service::Store`]): bincode enums,
//! one request and one response per call. Variants are only appended, never reordered.

use std::net::SocketAddr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::entry::{raw_bytes, Entry, Item, StoreKey, Version};
use super::Acks;

/// Caller -> callee.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Read a key. At the owner unless `replica` is set (then any holder answers from what it
    /// holds, as a fallback when the owner is unreachable).
    Get {
        /// The key.
        key: StoreKey,
        /// Answer from the local copy without checking ownership.
        replica: bool,
    },
    /// A write, applied by the owner and replicated before the answer.
    Write {
        /// The key.
        key: StoreKey,
        /// What to do.
        op: WriteOp,
    },
    /// Owner -> replica: hold these entries (merged by version).
    Replicate {
        /// The entries.
        items: Vec<Item>,
    },
    /// One batch of a transfer after a ring change. The callee answers only once the batch is
    /// merged, and the caller sends the next batch only after that answer.
    Transfer {
        /// The sender's ring-change number (a transfer is identified by sender and epoch).
        epoch: u64,
        /// The batch's number within the transfer.
        seq: u64,
        /// The entries, or checks that the callee holds them.
        pushes: Vec<Push>,
        /// The end marker: the last batch of this transfer.
        last: bool,
    },
    /// New owner -> previous holders, during the hand-off after a ring change: the entry held
    /// for a key (tombstones included), whatever the callee's ring says.
    Fetch {
        /// The key.
        key: StoreKey,
    },
    /// A [`Request::Write`] whose caller takes its own copy: when the caller is in the key's
    /// replica set, the owner counts it as holding the entry, replicates only to the rest of
    /// the set and answers [`Response::WrittenCopy`]; the caller merges the entry before it
    /// reports the write done. Saves the owner's `Replicate` to the caller and its answer.
    WriteCopy {
        /// The key.
        key: StoreKey,
        /// What to do.
        op: WriteOp,
    },
}

/// One element of a transfer batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Push {
    /// Hold this entry.
    Full(Item),
    /// Say whether you hold this key at this version or a newer one (sent to members that
    /// already held the key under the previous ring, so nothing is copied to them needlessly).
    Check {
        /// The key.
        key: StoreKey,
        /// The version the sender holds.
        version: Version,
    },
}

/// The write operations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum WriteOp {
    /// Store a value for `ttl_ms`.
    Put {
        /// The value.
        #[serde(with = "raw_bytes")]
        value: Bytes,
        /// Time to live in milliseconds, from the owner's clock.
        ttl_ms: u64,
    },
    /// Store a value unless a live one is held; answer the held one then.
    PutOrGet {
        /// The value.
        #[serde(with = "raw_bytes")]
        value: Bytes,
        /// Time to live in milliseconds.
        ttl_ms: u64,
    },
    /// Remove (write a tombstone).
    Remove,
    /// Read-modify-write by the role's registered updater, at the owner.
    Update {
        /// The operation, opaque to the store.
        #[serde(with = "raw_bytes")]
        op: Bytes,
    },
}

impl WriteOp {
    /// The size of the caller's data in the operation.
    pub(crate) fn len(&self) -> usize {
        match self {
            WriteOp::Put { value, .. } | WriteOp::PutOrGet { value, .. } => value.len(),
            WriteOp::Update { op } => op.len(),
            WriteOp::Remove => 0,
        }
    }
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// The value was stored.
    Stored,
    /// Put-or-get found a live value: here it is; nothing was written.
    Existing(#[serde(with = "raw_bytes")] Bytes),
    /// A tombstone was written.
    Removed,
    /// The updater's reply.
    Updated(#[serde(with = "raw_bytes")] Bytes),
}

/// Callee -> caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Response {
    /// The answer to [`Request::Get`]: the live entry, if any.
    Value(Option<Entry>),
    /// The answer to [`Request::Write`].
    Written {
        /// What the write did.
        outcome: Outcome,
        /// Who holds it.
        acks: Acks,
    },
    /// The callee does not own the key under its ring: ask `owner`.
    NotOwner {
        /// The owner under the callee's ring.
        owner: String,
        /// Its peer address, if the callee knows it.
        addr: Option<SocketAddr>,
    },
    /// The answer to [`Request::Replicate`] and [`Request::Transfer`]: everything is held
    /// except the [`Push::Check`]s at these indexes.
    Held {
        /// Indexes of checks for keys the callee lacks (or holds at an older version).
        missing: Vec<u32>,
    },
    /// The answer to [`Request::Fetch`].
    Entry(Option<Entry>),
    /// The request failed.
    Failed(Failure),
    /// The answer to a [`Request::WriteCopy`] whose caller is in the key's replica set: the
    /// write's outcome, its holders counting the caller, and the entry for the caller to hold.
    WrittenCopy {
        /// What the write did.
        outcome: Outcome,
        /// Who holds it, the caller included once it has merged `item`.
        acks: Acks,
        /// The entry as written.
        item: Box<Item>,
    },
}

/// Why a request failed at the callee.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Failure {
    /// No member bears the key's role in the callee's view.
    NoMember,
    /// The write was applied but is held by fewer members than required.
    NotReplicated {
        /// Members holding it.
        held: usize,
        /// Members required.
        wanted: usize,
    },
    /// No updater is registered for the role at the owner.
    NoUpdater,
    /// The updater refused the operation.
    Rejected(String),
    /// A value over the size cap.
    TooLarge {
        /// Its size.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The request did not decode.
    Malformed(String),
    /// The store is shutting down.
    Stopped,
    /// The store holds as many entries or bytes as it may (`store_max_entries`,
    /// `store_max_bytes`): nothing was written.
    Full {
        /// Entries held.
        entries: u64,
        /// Bytes held.
        bytes: u64,
    },
}
