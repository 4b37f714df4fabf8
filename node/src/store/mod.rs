//! The replicated store on the ring: put / get / remove / put-or-get with expiry, and a
//! read-modify-write at the owner, for any role (the registrar keeps its bindings here).
//!
//! # Model
//!
//! - A key is `(role, canonical key)`; the role's ring places it. It lives on its owner and
//!   the next R-1 distinct members clockwise (R = [`StoreConfig::replicas`], default 2).
//! - A value is opaque [`Bytes`] with an absolute expiry (`expires_at_ms`) and a [`Version`].
//!   Holders merge by keeping the higher version, so replication and transfers give the same
//!   result in any order. A remove writes a tombstone (a versioned entry without value), kept
//!   until at least the expiry of the value it replaced and [`StoreConfig::tombstone_ttl`], so
//!   a late transfer of the old value cannot bring it back.
//! - Expired entries are never returned, and are purged every
//!   [`StoreConfig::purge_interval`] (at most [`StoreConfig::purge_batch`] per pass).
//!
//! # Requests: one hop to the owner
//!
//! The caller computes the owner from its own ring and calls it directly on the peer port.
//! The owner checks ownership under *its* ring; when the key is not its own (membership moved
//! and the two views differ for a moment) it answers `NotOwner { owner }` and the caller
//! retries with that owner: a redirect, not a forward, so a request never travels more than
//! one extra hop and no loop can form. After two redirects in a row the caller waits for its
//! own view to change (or a short pause) and starts again, until
//! [`StoreConfig::request_timeout`].
//!
//! The owner applies a write under its lock (writes to one key are serialised: none is lost),
//! replicates the entry to the rest of the replica set and answers once `min(R, members of
//! the role)` members hold it (itself included), reported as [`Acks`]. A replica that does not
//! confirm is retried (after a view change or a short pause) until the request timeout; the
//! write then fails with [`StoreError::NotReplicated`] (it stays applied at the owner and is
//! pushed to the missing replica later).
//!
//! Reads go to the owner; if it cannot be reached they fall back to the other replicas.
//!
//! Retries: a request that was surely not delivered (no connection) is retried anywhere.
//! After a timeout or a lost connection, `put`, `remove`, `put_or_get` and `get` are retried
//! too (they are idempotent enough: a repeated put writes the same value again); `update` is
//! not, and fails with [`StoreError::Uncertain`] instead, since applying it twice could count
//! twice.
//!
//! # Membership changes
//!
//! When the node's view brings a ring whose members changed, the node hands over what it
//! holds. For every key held, with `new` its replica set under the new ring and `old` the one
//! under the ring replaced:
//!
//! - a node in `new` pushes the entry to the members of `new` that were not in `old` (the
//!   newcomer, or the member after one that left), and to any member it still owed the key
//!   (a transfer cancelled by a newer change, a replication that failed);
//! - a node not in `new` pushes the entry to the members of `new` that were not in `old`, asks
//!   the others whether they hold it (and sends it if not), and drops the key only once every
//!   member of `new` has confirmed holding it.
//!
//! Pushes travel in batches (at most [`StoreConfig::batch_entries`] entries, about
//! [`StoreConfig::batch_bytes`] bytes), one batch in flight per peer (the next waits for the
//! acknowledgement), at most [`StoreConfig::transfer_peers`] peers at once, the last batch of
//! a transfer carrying an end marker; failed batches are retried after a back-off. A newer
//! ring change starts a new epoch: the plan is rebuilt from what is held (keeping what was
//! still owed) and the older transfers end. These rules are a pure state machine (the
//! `machine` module: `handle(input, now) -> actions`, unit-tested on its actions); the
//! `driver` carries its actions out over [`PeerNet`].
//!
//! During the hand-off (up to [`StoreConfig::handoff_window`] after a change), a new owner
//! that lacks a key fetches it from the key's previous holders before answering for it, so a
//! read or a read-modify-write right after a join sees the value that is still on its way.
//!
//! # Use (for the node's `run`)
//!
//! ```ignore
//! let store = Store::start(StoreConfig::default(), peer.clone(), identity.clone(), view_rx, cancel.clone());
//! // `start` registers the handler for `Service::Store` on `peer`; `store.handler()` gives it
//! // too, to register elsewhere.
//! store.register_updater("registrar", Arc::new(BindingRules));
//! let acks = store.put("registrar", "alice@example.test", value, Duration::from_secs(3600)).await?;
//! let (reply, acks) = store.update("registrar", "alice@example.test", op).await?;
//! ```
//!
//! # Layout
//!
//! - [`entry`]: keys, versions, entries.
//! - `machine`: the pure state machine (merge, plan, batches, drops, purge).
//! - `messages`: the requests and responses on the peer port.
//! - `driver`: the async side: serving requests, replicating, routing to the owner, carrying
//!   out the machine's actions.

mod coalesce;
mod driver;
pub mod entry;
pub(crate) mod machine;
mod messages;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use onehop_overlay::identity::Identity;
use onehop_overlay::metrics::Metrics;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::peer::{PeerError, PeerHandler, PeerNet, Service};
use crate::view::View;
use coalesce::Coalescer;

pub use entry::{Entry, Item, StoreKey, Version};
pub use machine::LiveCount;

use driver::{Inner, State, StoreHandler};
use machine::{Machine, MachineConfig};
use messages::{Failure, Outcome, Request, Response, WriteOp};

/// A role's read-modify-write rules, applied at the owner of a key by [`Store::update`].
///
/// Called under the store's lock, one call at a time per store: keep it short and never
/// block.
pub trait Updater: Send + Sync {
    /// Applies `op` to the value held for `key` (`None` when there is no live value) at
    /// `now_ms` (milliseconds since the Unix epoch). Returns the new value (`None` removes the
    /// key), its expiry in milliseconds since the Unix epoch (ignored for a removal), and the
    /// reply for the caller; or why the operation is refused (nothing is written then).
    #[allow(clippy::type_complexity)]
    fn apply(
        &self,
        key: &str,
        current: Option<&Bytes>,
        op: &[u8],
        now_ms: u64,
    ) -> Result<(Option<Bytes>, u64, Bytes), String>;
}

/// How many members hold a write when it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acks {
    /// Members of the key's replica set holding it (the owner included).
    pub held: usize,
    /// Members required: `min(R, members bearing the role)`.
    pub wanted: usize,
}

/// The answer of [`Store::put_or_get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOrGet {
    /// No live value was held: ours was stored.
    Stored(Acks),
    /// A live value was held: here it is; ours was not stored.
    Existing(Bytes),
}

/// Why a store request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No live member bears the role: there is nowhere to keep the key.
    #[error("no live member bears role {role}")]
    NoMember {
        /// The role.
        role: String,
    },
    /// The owner could not be reached within the request timeout.
    #[error("the key's owner could not be reached in time: {0}")]
    Unavailable(String),
    /// The write was applied at the owner but fewer members than required hold it.
    #[error("written, but held by {held} of the {wanted} members required")]
    NotReplicated {
        /// Members holding it.
        held: usize,
        /// Members required.
        wanted: usize,
    },
    /// The owner went silent after the request was sent: it may or may not have applied it.
    #[error("the request may or may not have been applied: {0}")]
    Uncertain(String),
    /// No updater is registered for the role at the owner.
    #[error("no updater is registered for role {role} at the owner")]
    NoUpdater {
        /// The role.
        role: String,
    },
    /// The role's updater refused the operation.
    #[error("the updater refused: {0}")]
    Rejected(String),
    /// A value or operation over [`StoreConfig::max_value`].
    #[error("{len} bytes exceed the cap of {max} bytes")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The peer refused or failed the request.
    #[error(transparent)]
    Peer(PeerError),
    /// The store is shutting down.
    #[error("the store is stopped")]
    Stopped,
    /// The answer made no sense for the request.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// The owner's store is full ([`StoreConfig::max_entries`], [`StoreConfig::max_bytes`]):
    /// nothing was written.
    #[error("the owner's store is full ({entries} entries, {bytes} bytes held)")]
    Full {
        /// Entries the owner holds.
        entries: u64,
        /// Bytes the owner holds.
        bytes: u64,
    },
}

impl StoreError {
    fn from_failure(f: Failure, role: &str) -> StoreError {
        match f {
            Failure::NoMember => StoreError::NoMember { role: role.into() },
            Failure::NotReplicated { held, wanted } => StoreError::NotReplicated { held, wanted },
            Failure::NoUpdater => StoreError::NoUpdater { role: role.into() },
            Failure::Rejected(why) => StoreError::Rejected(why),
            Failure::TooLarge { len, max } => StoreError::TooLarge { len, max },
            Failure::Malformed(why) => StoreError::Protocol(why),
            Failure::Stopped => StoreError::Stopped,
            Failure::Full { entries, bytes } => StoreError::Full { entries, bytes },
        }
    }
}

/// The store's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Members holding each key, the owner included (R). At least 1.
    pub replicas: usize,
    /// Most entries in one transfer batch.
    pub batch_entries: usize,
    /// A transfer batch is closed once it reaches this many bytes.
    pub batch_bytes: usize,
    /// How often expired entries are purged.
    pub purge_interval: Duration,
    /// Most entries purged per pass.
    pub purge_batch: usize,
    /// Largest value (and update operation), in bytes. With `batch_bytes`, must fit in the
    /// peer transport's frame cap.
    pub max_value: usize,
    /// Timeout of one call to a peer (a request's hop, a replication).
    pub call_timeout: Duration,
    /// Timeout of one transfer batch.
    pub transfer_timeout: Duration,
    /// How long a request may take, retries included.
    pub request_timeout: Duration,
    /// Most peers receiving a transfer batch from this node at once (each has at most one
    /// batch in flight).
    pub transfer_peers: usize,
    /// After a ring change, how long a new owner fetches keys it lacks from their previous
    /// holders before answering for them.
    pub handoff_window: Duration,
    /// A tombstone is kept at least this long.
    pub tombstone_ttl: Duration,
    /// Most entries this node holds (tombstones included). A write of a new key, or a
    /// replication or transfer batch, that would go past it is refused (the writer gets
    /// [`StoreError::Full`]; a sender keeps its copies and retries).
    pub max_entries: usize,
    /// Most bytes this node holds (keys, values and 128 bytes of overhead per entry), with
    /// the same refusal as [`StoreConfig::max_entries`].
    pub max_bytes: usize,
    /// How long after a hand-off settles the node checks, key by key, that the other members
    /// of every replica set it is in hold what it holds, and sends what they lack (a repair
    /// pass: a key and a version per key and member, so a few tens of bytes per key).
    pub verify_after: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            replicas: 2,
            batch_entries: 256,
            batch_bytes: 256 << 10,
            purge_interval: Duration::from_secs(1),
            purge_batch: 10_000,
            max_value: 256 << 10,
            call_timeout: Duration::from_secs(1),
            transfer_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(3),
            transfer_peers: 4,
            handoff_window: Duration::from_secs(10),
            tombstone_ttl: Duration::from_secs(600),
            max_entries: 4_000_000,
            max_bytes: 2 << 30,
            verify_after: Duration::from_secs(2),
        }
    }
}

impl StoreConfig {
    fn machine(&self) -> MachineConfig {
        MachineConfig {
            replicas: self.replicas.max(1),
            batch_entries: self.batch_entries.max(1),
            batch_bytes: self.batch_bytes.max(1),
            max_parallel: self.transfer_peers.max(1),
            purge_batch: self.purge_batch.max(1),
            tombstone_ttl_ms: self.tombstone_ttl.as_millis() as u64,
            handoff_ms: self.handoff_window.as_millis() as u64,
            retry_base_ms: 100,
            retry_max_ms: 2_000,
            max_value: self.max_value,
            max_entries: self.max_entries.max(1),
            max_bytes: self.max_bytes.max(1),
            verify_after_ms: self.verify_after.as_millis() as u64,
            scan_chunk: MachineConfig::default().scan_chunk,
        }
    }
}

/// A node's handle on the replicated store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    handler: Arc<dyn PeerHandler>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("me", &self.inner.me.name)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Starts the store of the node `identity`: registers its handler for
    /// [`Service::Store`] on `peer` (whose server the caller runs), follows `view` (every new
    /// view with changed rings starts a hand-off), and runs until `shutdown` is cancelled.
    ///
    /// Must be called within a tokio runtime.
    pub fn start(
        config: StoreConfig,
        peer: Arc<PeerNet>,
        identity: Arc<Identity>,
        view: watch::Receiver<Arc<View>>,
        shutdown: CancellationToken,
    ) -> Store {
        let machine = Machine::new(&identity.name, config.machine());
        let inner = Arc::new_cyclic(|weak| Inner {
            replicas: Coalescer::new(driver::replicate_sender(weak.clone())),
            cfg: config,
            me: identity,
            peer: peer.clone(),
            view: view.clone(),
            state: Mutex::new(State {
                machine,
                view: None,
            }),
            updaters: RwLock::new(HashMap::new()),
            shutdown,
            full: Default::default(),
            full_logged: Default::default(),
            copies_replicated: Default::default(),
            copies_answered: Default::default(),
            timers: OnceLock::new(),
        });
        let handler: Arc<dyn PeerHandler> = Arc::new(StoreHandler::new(&inner));
        peer.register(Service::Store, handler.clone());
        inner.sync();
        tokio::spawn(inner.clone().run(view));
        Store { inner, handler }
    }

    /// Times the store's writes and replication into histograms on `metrics`
    /// (`store_write_seconds`, `store_replicate_seconds`); the first call counts.
    pub fn count_in(&self, metrics: &Metrics) {
        let _ = self.inner.timers.set(driver::Timers::new(metrics));
    }

    /// The handler serving [`Service::Store`] (already registered on the store's
    /// [`PeerNet`]).
    pub fn handler(&self) -> Arc<dyn PeerHandler> {
        self.handler.clone()
    }

    /// Registers the read-modify-write rules of `role` for [`Store::update`] (applied where
    /// this node owns the key).
    pub fn register_updater(&self, role: &str, updater: Arc<dyn Updater>) {
        self.inner
            .updaters
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(role.to_string(), updater);
    }

    /// Stores `value` under `(role, key)` for `ttl`, replacing any value.
    pub async fn put(
        &self,
        role: &str,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<Acks, StoreError> {
        let op = WriteOp::Put {
            value,
            ttl_ms: ttl.as_millis() as u64,
        };
        match self.write(role, key, op, true).await? {
            (Outcome::Stored, acks) => Ok(acks),
            (other, _) => Err(StoreError::Protocol(format!("{other:?} for a put"))),
        }
    }

    /// The live value of `(role, key)`, if any.
    pub async fn get(&self, role: &str, key: &str) -> Result<Option<Bytes>, StoreError> {
        let key = StoreKey::new(role, key);
        let req = Request::Get {
            key: key.clone(),
            replica: false,
        };
        match self.inner.to_owner(&key, req, driver::Retry::Read).await? {
            Response::Value(entry) => Ok(entry.and_then(|e| e.value)),
            Response::Failed(f) => Err(StoreError::from_failure(f, role)),
            other => Err(StoreError::Protocol(format!("{other:?} for a get"))),
        }
    }

    /// Removes `(role, key)` (writes a tombstone).
    pub async fn remove(&self, role: &str, key: &str) -> Result<Acks, StoreError> {
        match self.write(role, key, WriteOp::Remove, true).await? {
            (Outcome::Removed, acks) => Ok(acks),
            (other, _) => Err(StoreError::Protocol(format!("{other:?} for a remove"))),
        }
    }

    /// Stores `value` under `(role, key)` for `ttl` unless a live value is held, in which
    /// case that value is returned and nothing is written (the P2PSIP put-or-get).
    pub async fn put_or_get(
        &self,
        role: &str,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<PutOrGet, StoreError> {
        let op = WriteOp::PutOrGet {
            value,
            ttl_ms: ttl.as_millis() as u64,
        };
        match self.write(role, key, op, true).await? {
            (Outcome::Stored, acks) => Ok(PutOrGet::Stored(acks)),
            (Outcome::Existing(v), _) => Ok(PutOrGet::Existing(v)),
            (other, _) => Err(StoreError::Protocol(format!("{other:?} for a put-or-get"))),
        }
    }

    /// Applies `op` to `(role, key)` at its owner with the role's [`Updater`], atomically
    /// with respect to every other write of the key; returns the updater's reply and who
    /// holds the result.
    pub async fn update(
        &self,
        role: &str,
        key: &str,
        op: Bytes,
    ) -> Result<(Bytes, Acks), StoreError> {
        match self.write(role, key, WriteOp::Update { op }, false).await? {
            (Outcome::Updated(reply), acks) => Ok((reply, acks)),
            (other, _) => Err(StoreError::Protocol(format!("{other:?} for an update"))),
        }
    }

    /// Live entries held by this node (owned and replicas).
    pub fn local_len(&self) -> usize {
        self.inner.lock().machine.local_len(driver::now_ms())
    }

    /// Live entries held by this node, and those of `role` for which `pred` holds on the
    /// value, counted in passes: goes on with `count` over at most `budget` entries (the
    /// store's lock held for those alone) and, when that finishes a pass over every entry
    /// held, returns the pass's counts and starts the next one. A periodic gauge walks a
    /// bounded number of entries a tick this way, whatever the store holds.
    pub fn count_step(
        &self,
        count: &mut LiveCount,
        role: &str,
        pred: impl Fn(&[u8]) -> bool,
        budget: usize,
    ) -> Option<(usize, usize)> {
        self.inner
            .lock()
            .machine
            .count_live(count, role, pred, budget, driver::now_ms())
    }

    /// Bytes this node's store holds, as [`StoreConfig::max_bytes`] counts them.
    pub fn held_bytes(&self) -> usize {
        self.inner.lock().machine.bytes()
    }

    /// Entries looked at so far by the walks that re-plan the store after ring changes (and
    /// the repair passes after them): each walks only the ranges its change moved.
    pub fn walked(&self) -> u64 {
        self.inner.lock().machine.walked()
    }

    /// Whether a hand-off window is open on this node ([`StoreConfig::handoff_window`] after a
    /// ring change): keys it lacks and now holds are fetched from their previous holders
    /// before it answers for them.
    pub fn handoff_open(&self) -> bool {
        self.inner.lock().machine.handoff_open(driver::now_ms())
    }

    /// Writes and batches refused so far because this node's store was full.
    pub fn full_refusals(&self) -> u64 {
        self.inner.full.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Entries this node has taken as a replica so far: `(replicated, answered)`, those that
    /// owners sent in `Replicate` calls and those that came in the answers to this node's own
    /// writes (a write from a member of the key's replica set carries its copy back).
    pub fn copies_received(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.inner.copies_replicated.load(Relaxed),
            self.inner.copies_answered.load(Relaxed),
        )
    }

    /// Keys of `role` with a live entry on this node, sorted.
    pub fn local_keys(&self, role: &str) -> Vec<String> {
        self.inner.lock().machine.local_keys(role, driver::now_ms())
    }

    /// Whether this node holds a live value for `key` of `role`.
    pub fn holds(&self, role: &str, key: &str) -> bool {
        let key = StoreKey::new(role, key);
        self.inner
            .lock()
            .machine
            .read(&key, driver::now_ms())
            .is_some()
    }

    /// Entries held by this node, tombstones and expired entries not yet purged included.
    pub fn local_stored(&self) -> usize {
        self.inner.lock().machine.stored()
    }

    async fn write(
        &self,
        role: &str,
        key: &str,
        op: WriteOp,
        idempotent: bool,
    ) -> Result<(Outcome, Acks), StoreError> {
        let max = self.inner.cfg.max_value;
        if op.len() > max {
            return Err(StoreError::TooLarge { len: op.len(), max });
        }
        let key = StoreKey::new(role, key);
        let retry = if idempotent {
            driver::Retry::Idempotent
        } else {
            driver::Retry::Once
        };
        let req = Request::WriteCopy {
            key: key.clone(),
            op: op.clone(),
        };
        let mut answer = self.inner.to_owner(&key, req, retry).await?;
        if matches!(answer, Response::Failed(Failure::Malformed(_))) {
            // An owner of an older version, which does not know `WriteCopy` (it decoded
            // nothing, so nothing was applied): the plain write.
            let req = Request::Write {
                key: key.clone(),
                op,
            };
            answer = self.inner.to_owner(&key, req, retry).await?;
        }
        match answer {
            Response::Written { outcome, acks } => Ok((outcome, acks)),
            Response::WrittenCopy {
                outcome,
                acks,
                item,
            } => {
                if item.key != key {
                    return Err(StoreError::Protocol(format!(
                        "the owner sent {} for a write of {key}",
                        item.key
                    )));
                }
                match self.inner.hold_copy(*item) {
                    Ok(()) => Ok((outcome, acks)),
                    Err(f) => Err(StoreError::from_failure(f, role)),
                }
            }
            Response::Failed(f) => Err(StoreError::from_failure(f, role)),
            other => Err(StoreError::Protocol(format!("{other:?} for a write"))),
        }
    }
}
