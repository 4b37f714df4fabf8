//! The store's state machine: what a node holds, how writes and incoming entries merge, and
//! what it sends and drops when the rings change. No sockets, no clock: every call takes
//! `now` (milliseconds since the Unix epoch) and returns [`Action`]s for the driver
//! ([`super::Store`]) to carry out.
//!
//! # Call order
//!
//! 1. [`Machine::new`], then [`Input::Rings`] with the first rings (and again with every new
//!    view; rings whose members did not change are ignored).
//! 2. Requests answered at once, under the caller's lock: [`Machine::write`] (at the owner,
//!    after [`Machine::placement`] said it is the owner and [`Machine::handoff_sources`] were
//!    fetched and [`Machine::merge`]d), [`Machine::read`], [`Machine::entry`] and
//!    [`Machine::receive`] (replication and transfer batches from other nodes).
//! 3. Outcomes of what the driver did: [`Input::Acked`] / [`Input::Failed`] for each
//!    [`Action::Send`], [`Input::Missing`] for a replica that did not confirm a write.
//! 4. [`Input::Tick`] often (a few times a second: retries after back-off), [`Input::Purge`]
//!    every purge interval.
//!
//! # Transfers after a ring change
//!
//! For every key held, with `new` the replica set under the new ring (owner and the next
//! R-1 distinct members) and `old` the set under the ring it replaces:
//!
//! - if this node is in `new`, it pushes the entry to each member of `new` that was not in
//!   `old` (a newcomer, or the next member after one that left), and to each member it still
//!   owed the key from a transfer that a newer ring change cancelled (or from a replication
//!   that failed);
//! - if it is not in `new`, it must hand the key over: it pushes the entry to every member of
//!   `new` that was not in `old`, asks those that were whether they hold it (a
//!   [`Push::Check`], answered "missing" if not, and then the entry follows), and drops the
//!   key only once every member of `new` has confirmed holding it.
//!
//! Every holder does this, so a key reaches a new member from each holder that stays (R-1
//! copies at most); merging by version makes the copies harmless. Pushes to one peer travel
//! in batches of at most `batch_entries` entries and about `batch_bytes` bytes; a peer has at
//! most one batch in flight (the next waits for the acknowledgement of the previous), at most
//! `max_parallel` peers have one, and the last batch of a transfer carries the end marker. A
//! failed batch is retried after a back-off. A newer ring change starts a new epoch: the plan
//! is rebuilt from what is held, keeping what was still owed, and the transfers of the old
//! epoch end without their end marker.
//!
//! An entry received for a key whose new replica set does not include this node (sent by a
//! node with an older or newer view) is handed on the same way.
//!
//! # Only what moved
//!
//! Entries are kept per role in ring order (by position, then key). A ring change names the
//! ranges of positions whose replica sets may differ ([`Ring::changed_ranges`]: the arcs
//! next to the points of the members that came or went), and the walk visits the entries in
//! those ranges only; a key outside them has the same replica set before and after, so
//! nothing is owed for it but what a cancelled plan still owed (kept per key and planned at
//! the end of the walk). The repair pass after a hand-off walks the same ranges. With many
//! members changing at once the ranges are "everything", as before.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use bytes::Bytes;
use onehop_overlay::ring::{position, Ring, Rings};
use std::ops::Bound;

use super::entry::{Entry, Item, StoreKey, Version};
use super::messages::{Failure, Outcome, Push};
use super::Updater;

/// The machine's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MachineConfig {
    /// Members holding each key (owner included).
    pub replicas: usize,
    /// Most entries in a transfer batch.
    pub batch_entries: usize,
    /// A batch is closed once it reaches this many bytes.
    pub batch_bytes: usize,
    /// Most peers with a batch in flight.
    pub max_parallel: usize,
    /// Most entries purged per [`Input::Purge`].
    pub purge_batch: usize,
    /// A tombstone is kept at least this long.
    pub tombstone_ttl_ms: u64,
    /// After a ring change, how long a new owner fetches keys it lacks from their previous
    /// holders before answering.
    pub handoff_ms: u64,
    /// First retry delay of a failed batch (doubled on each failure).
    pub retry_base_ms: u64,
    /// Longest retry delay.
    pub retry_max_ms: u64,
    /// Largest value accepted from a write (the updater's result included).
    pub max_value: usize,
    /// Most entries held (tombstones included); a write or a batch that would add more is
    /// refused with [`Failure::Full`].
    pub max_entries: usize,
    /// Most bytes held (keys, values and a fixed overhead per entry, [`cost`]); a write or a
    /// batch that would grow the store past it is refused with [`Failure::Full`].
    pub max_bytes: usize,
    /// How long after a hand-off settles the node checks that the other members of each
    /// replica set it is in hold the keys it holds (a repair pass; see [`Machine::verify`]).
    pub verify_after_ms: u64,
    /// Most entries looked at per call when planning a hand-off or a repair pass: the walk
    /// over everything held goes a chunk per call ([`Input::Scan`]), so that no call holds
    /// the store for longer than this many entries take.
    pub scan_chunk: usize,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            replicas: 2,
            batch_entries: 256,
            batch_bytes: 256 << 10,
            max_parallel: 4,
            purge_batch: 10_000,
            tombstone_ttl_ms: 600_000,
            handoff_ms: 10_000,
            retry_base_ms: 100,
            retry_max_ms: 2_000,
            max_value: 256 << 10,
            max_entries: usize::MAX,
            max_bytes: usize::MAX,
            verify_after_ms: 2_000,
            scan_chunk: 4_096,
        }
    }
}

/// What an entry costs the store: its key, its value, and a fixed overhead for the maps,
/// the expiry index and the version.
pub(crate) fn cost(key: &StoreKey, entry: &Entry) -> usize {
    key.role.len() + 2 * key.key.len() + entry.value.as_ref().map_or(0, Bytes::len) + 128
}

/// What happened, for the machine.
#[derive(Debug, Clone)]
pub(crate) enum Input {
    /// The node's rings (from a new view).
    Rings(Rings),
    /// `peer` answered batch `batch`: it holds every entry but the checks at `missing`.
    Acked {
        /// The peer.
        peer: String,
        /// The batch id.
        batch: u64,
        /// Indexes of [`Push::Check`]s the peer lacks.
        missing: Vec<u32>,
    },
    /// Batch `batch` to `peer` failed (unreachable, timeout, refused).
    Failed {
        /// The peer.
        peer: String,
        /// The batch id.
        batch: u64,
    },
    /// `peer` did not confirm a replicated write of `key`: push it again later.
    Missing {
        /// The peer.
        peer: String,
        /// The key.
        key: StoreKey,
    },
    /// Time passed: retry what is due.
    Tick,
    /// Go on with the walk that plans a hand-off or a repair pass (see
    /// [`Machine::scanning`]); every other input takes a step of it as well.
    Scan,
    /// Purge expired entries (bounded).
    Purge,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Send a transfer batch and report [`Input::Acked`] or [`Input::Failed`].
    Send(Batch),
    /// Keys handed over and dropped.
    Dropped {
        /// How many.
        keys: usize,
    },
    /// Expired entries purged.
    Purged {
        /// How many.
        entries: usize,
    },
    /// Nothing is left to send or drop for ring change `epoch`.
    Settled {
        /// The ring-change number.
        epoch: u64,
    },
}

/// One transfer batch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Batch {
    /// To whom.
    pub peer: String,
    /// Unique per machine; echoed in [`Input::Acked`] / [`Input::Failed`].
    pub id: u64,
    /// The ring-change number.
    pub epoch: u64,
    /// The batch's number within this epoch's transfer to `peer`.
    pub seq: u64,
    /// The end marker.
    pub last: bool,
    /// The entries and checks.
    pub pushes: Vec<Push>,
}

/// A write at the owner.
pub(crate) enum Write<'a> {
    /// Store `value` for `ttl_ms`.
    Put { value: Bytes, ttl_ms: u64 },
    /// Store `value` unless a live value is held.
    PutOrGet { value: Bytes, ttl_ms: u64 },
    /// Write a tombstone.
    Remove,
    /// Apply `op` with `updater`.
    Update {
        updater: &'a dyn Updater,
        op: &'a [u8],
    },
}

/// What a write did, and the entry to replicate (none when nothing was written).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Applied {
    pub outcome: Outcome,
    pub item: Option<Item>,
}

/// Where a key belongs under the current ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    /// The replica set, owner first; empty when no member bears the role.
    pub set: Vec<String>,
}

impl Placement {
    /// The owner, if any.
    pub fn owner(&self) -> Option<&str> {
        self.set.first().map(String::as_str)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Check,
    Full,
}

#[derive(Debug)]
struct InFlight {
    id: u64,
    sent: Vec<(StoreKey, Mode, Version)>,
}

#[derive(Debug, Default)]
struct PeerState {
    /// Keys to push, in order; may hold stale keys (not in `queued`), skipped when popped.
    queue: VecDeque<StoreKey>,
    /// The keys owed, and how.
    queued: HashMap<StoreKey, Mode>,
    inflight: Option<InFlight>,
    retry_at: u64,
    failures: u32,
    /// Batches sent in this epoch.
    seq: u64,
    /// A transfer of this epoch was started and its end marker not sent yet.
    open: bool,
}

impl PeerState {
    fn enqueue(&mut self, key: StoreKey, mode: Mode) {
        match self.queued.get_mut(&key) {
            Some(m) => {
                if mode == Mode::Full {
                    *m = Mode::Full;
                }
            }
            None => {
                self.queue.push_back(key.clone());
                self.queued.insert(key, mode);
            }
        }
    }

    fn requeue_front(&mut self, key: StoreKey, mode: Mode) {
        match self.queued.get_mut(&key) {
            Some(m) => {
                if mode == Mode::Full {
                    *m = Mode::Full;
                }
            }
            None => {
                self.queue.push_front(key.clone());
                self.queued.insert(key, mode);
            }
        }
    }

    fn idle(&self) -> bool {
        self.queued.is_empty() && self.inflight.is_none() && !self.open
    }
}

#[derive(Debug, Default)]
struct Plan {
    epoch: u64,
    peers: BTreeMap<String, PeerState>,
    /// Keys to hand over: the members that have not confirmed holding them yet.
    waiting: HashMap<StoreKey, BTreeSet<String>>,
    /// Work was added since the last [`Action::Settled`].
    busy: bool,
    /// What the hand-offs settled since the last repair pass covered: what the next one
    /// walks.
    settled: Cover,
    /// This plan is a repair pass, not a hand-off.
    verifying: bool,
    /// The walk over what is held that builds this plan, while it is under way.
    scan: Option<Scan>,
}

/// A walk over every entry held, a chunk of [`MachineConfig::scan_chunk`] entries per call:
/// the plan of a hand-off after a ring change, or of a repair pass. Until it ends the plan
/// has not settled and no transfer is sent its end marker.
#[derive(Debug, Default)]
struct Scan {
    /// Per role whose rings changed: the rings before the earliest change whose plan has
    /// not been walked over every key. A newer change during the walk restarts it from the
    /// first key against these, so that a member that arrived in a change whose walk was cut
    /// short is still sent every key it lacks (keys already walked may be sent twice;
    /// merging by version makes that harmless).
    before: HashMap<String, Rings>,
    /// What cancelled plans still owed, per key: the members to send it to in full.
    owed: HashMap<StoreKey, Vec<String>>,
    /// The last entry looked at (`None` before the first).
    after: Option<StoreKey>,
    /// What the walk visits: per role, the ranges of positions whose replica sets changed
    /// since `before` (`None`: every entry of the role; roles not named: none).
    cover: Cover,
}

/// Per role, the ranges of positions a walk visits (sorted, disjoint, inclusive); `None`:
/// every position.
type Cover = BTreeMap<String, Option<Vec<(u64, u64)>>>;

/// `a` and `b` together, sorted and merged.
fn union(a: Option<Vec<(u64, u64)>>, b: Option<Vec<(u64, u64)>>) -> Option<Vec<(u64, u64)>> {
    let mut all = a?;
    all.extend(b?);
    Some(onehop_overlay::ring::merge_ranges(all))
}

/// Adds `more` to `cover`.
fn widen(cover: &mut Cover, more: Cover) {
    for (role, ranges) in more {
        let merged = match cover.remove(&role) {
            Some(held) => union(held, ranges),
            None => ranges,
        };
        cover.insert(role, merged);
    }
}

/// Where a count of the live entries in passes has got to
/// ([`Store::count_step`](super::Store::count_step)).
#[derive(Debug, Default)]
pub struct LiveCount {
    /// The last entry looked at in this pass (`None`: the pass starts from the first).
    after: Option<StoreKey>,
    /// Live entries counted so far in this pass.
    all: usize,
    /// Of those, the ones the predicate held for.
    matching: usize,
}

/// One role's entries in ring order: by position, then key.
///
/// Keyed by position alone, each position holding its key (two keys share a 64-bit position
/// almost never): a lookup compares integers down the tree, not (position, key) pairs whose
/// strings sit elsewhere in memory, and a tree node's keys fit in two cache lines instead of
/// six. A point lookup was the largest single item of an owner's CPU under REGISTER load.
#[derive(Debug, Default)]
pub(crate) struct RoleData {
    map: BTreeMap<u64, Slot>,
    len: usize,
}

/// The entries at one position: nearly always one; several in key order.
#[derive(Debug)]
enum Slot {
    One((String, Entry)),
    Many(Vec<(String, Entry)>),
}

impl Slot {
    fn as_slice(&self) -> &[(String, Entry)] {
        match self {
            Slot::One(one) => std::slice::from_ref(one),
            Slot::Many(many) => many,
        }
    }

    fn get(&self, key: &str) -> Option<&Entry> {
        self.as_slice()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, e)| e)
    }

    /// Stores `entry` under `key`; returns the entry it replaced.
    fn insert(&mut self, key: String, entry: Entry) -> Option<Entry> {
        match self {
            Slot::One((k, e)) if *k == key => Some(std::mem::replace(e, entry)),
            Slot::One(_) => {
                let Slot::One(first) = std::mem::replace(self, Slot::Many(Vec::new())) else {
                    unreachable!("matched One above")
                };
                let mut many = vec![first];
                let at = many.partition_point(|(k, _)| *k < key);
                many.insert(at, (key, entry));
                *self = Slot::Many(many);
                None
            }
            Slot::Many(many) => match many.binary_search_by(|(k, _)| k.as_str().cmp(&key)) {
                Ok(at) => Some(std::mem::replace(&mut many[at].1, entry)),
                Err(at) => {
                    many.insert(at, (key, entry));
                    None
                }
            },
        }
    }
}

impl RoleData {
    fn get(&self, key: &str) -> Option<&Entry> {
        self.map.get(&position(key))?.get(key)
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let pos = position(key);
        let slot = self.map.get_mut(&pos)?;
        let removed = match slot {
            Slot::One((k, _)) if k == key => match self.map.remove(&pos) {
                Some(Slot::One((_, e))) => Some(e),
                _ => None,
            },
            Slot::One(_) => None,
            Slot::Many(many) => {
                let at = many.iter().position(|(k, _)| k == key)?;
                let (_, e) = many.remove(at);
                if many.len() == 1 {
                    let last = many.pop().expect("one left");
                    *slot = Slot::One(last);
                }
                Some(e)
            }
        };
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// Stores `entry` under `key` unless the entry held there is as new or newer; with one
    /// walk of the map (a write used to walk it twice, to compare and then to insert).
    /// `Err` gives `entry` back when it was not newer; `Ok` has the entry it replaced.
    fn merge_newer(&mut self, key: &str, entry: Entry) -> Result<Option<Entry>, Entry> {
        use std::collections::btree_map::Entry as At;
        let slot = match self.map.entry(position(key)) {
            At::Vacant(v) => {
                v.insert(Slot::One((key.to_string(), entry)));
                self.len += 1;
                return Ok(None);
            }
            At::Occupied(o) => o.into_mut(),
        };
        if let Some(held) = slot.get(key) {
            if held.version >= entry.version {
                return Err(entry);
            }
        }
        let old = slot.insert(key.to_string(), entry);
        if old.is_none() {
            self.len += 1;
        }
        Ok(old)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> + '_ {
        self.map
            .values()
            .flat_map(|slot| slot.as_slice().iter().map(|(k, e)| (k.as_str(), e)))
    }

    /// The entries from `lower` (bounded) up to position `last` inclusive.
    fn span(
        &self,
        lower: Bound<(u64, String)>,
        last: u64,
    ) -> impl Iterator<Item = (&str, &Entry)> + '_ {
        // The position the span starts at, and which keys of it are in (all, those from a
        // key on, those after a key).
        let (from, cut) = match lower {
            Bound::Unbounded => (0, None),
            Bound::Included((pos, key)) => (pos, Some((key, true))),
            Bound::Excluded((pos, key)) => (pos, Some((key, false))),
        };
        let within = from <= last;
        let first = within
            .then(|| self.map.get(&from))
            .flatten()
            .into_iter()
            .flat_map(|slot| slot.as_slice().iter())
            .filter(move |(k, _)| match &cut {
                None => true,
                Some((c, true)) => k.as_str() >= c.as_str(),
                Some((c, false)) => k.as_str() > c.as_str(),
            });
        let rest = within
            .then(|| {
                self.map
                    .range((Bound::Excluded(from), Bound::Included(last)))
            })
            .into_iter()
            .flatten()
            .flat_map(|(_, slot)| slot.as_slice().iter());
        first.chain(rest).map(|(k, e)| (k.as_str(), e))
    }
}

impl Plan {
    fn peer(&mut self, name: &str) -> &mut PeerState {
        if !self.peers.contains_key(name) {
            self.peers.insert(name.to_string(), PeerState::default());
        }
        self.peers.get_mut(name).expect("just inserted")
    }
}

/// The state machine. See the module documentation.
#[derive(Debug)]
pub(crate) struct Machine {
    me: String,
    origin: u64,
    cfg: MachineConfig,
    data: BTreeMap<String, RoleData>,
    expiry: BTreeSet<(u64, StoreKey)>,
    rings: Rings,
    /// Per role: the rings before its last change, and when it changed.
    prev: HashMap<String, (Rings, u64)>,
    plan: Plan,
    next_batch: u64,
    dropped: usize,
    /// Entries held, and what they cost ([`cost`]).
    entries: usize,
    bytes: usize,
    /// When the repair pass after the last hand-off is due.
    verify_at: Option<u64>,
    /// Entries looked at by the walks of hand-offs and repair passes, all told.
    walked: u64,
}

fn names(ring: Option<&Ring>, pos: u64, n: usize) -> Vec<&str> {
    match ring {
        Some(r) => r.replicas_at(pos, n).map(|m| m.name.as_str()).collect(),
        None => Vec::new(),
    }
}

/// Every entry held after `from` (all of them when `None`) in `cover` (everything when
/// `None`), role after role, in ring order.
fn entries_after<'a>(
    data: &'a BTreeMap<String, RoleData>,
    cover: Option<&'a Cover>,
    from: Option<&'a StoreKey>,
) -> impl Iterator<Item = (&'a str, &'a str, &'a Entry)> + 'a {
    let first = from.map_or(Bound::Unbounded, |k| Bound::Included(k.role.as_str()));
    let start = from.map(|k| (k.position(), k.key.as_str()));
    data.range::<str, _>((first, Bound::Unbounded))
        .filter_map(move |(role, keys)| match cover {
            None => Some((role, keys, None)),
            Some(c) => c.get(role).map(|r| (role, keys, r.as_deref())),
        })
        .flat_map(move |(role, keys, ranges)| {
            // Resume after `from` within its own role.
            let cursor = match from {
                Some(k) if k.role == *role => start,
                _ => None,
            };
            let whole = [(0u64, u64::MAX)];
            let ranges: Vec<(u64, u64)> = ranges.unwrap_or(&whole).to_vec();
            ranges.into_iter().flat_map(move |(a, b)| {
                let lower = match cursor {
                    Some((pos, _)) if pos > b => None,
                    Some((pos, key)) if pos >= a => Some(Bound::Excluded((pos, key.to_string()))),
                    _ => Some(Bound::Included((a, String::new()))),
                };
                lower
                    .into_iter()
                    .flat_map(move |lower| keys.span(lower, b))
                    .map(move |(k, e)| (role.as_str(), k, e))
            })
        })
}

/// Plans what one key held needs after a ring change (or in a repair pass); see the module
/// documentation. `owed` names the members a cancelled plan still owed it to.
#[allow(clippy::too_many_arguments)]
fn plan_key(
    me: &str,
    cfg: &MachineConfig,
    rings: &Rings,
    plan: &mut Plan,
    scan: &Scan,
    k: StoreKey,
    entry: &Entry,
    owed: Option<&[String]>,
    now: u64,
) {
    let Some(ring) = rings.get(&k.role).filter(|r| r.points() > 0) else {
        return;
    };
    if entry.is_expired(now) {
        return;
    }
    let pos = k.position();
    let new = names(Some(ring), pos, cfg.replicas);
    if plan.verifying {
        if new.contains(&me) {
            for p in new.iter().filter(|p| **p != me) {
                plan.peer(p).enqueue(k.clone(), Mode::Check);
            }
        }
        return;
    }
    let before = match scan.before.get(&k.role) {
        Some(old) => old.get(&k.role),
        None => Some(ring),
    };
    let old = names(before, pos, cfg.replicas);
    let owed_to = |p: &str| owed.is_some_and(|o| o.iter().any(|n| n == p));
    if new.contains(&me) {
        for p in new.iter().filter(|p| **p != me) {
            if !old.contains(p) || owed_to(p) {
                plan.peer(p).enqueue(k.clone(), Mode::Full);
            }
        }
    } else {
        let mut waiting = BTreeSet::new();
        for p in &new {
            let mode = if old.contains(p) && !owed_to(p) {
                Mode::Check
            } else {
                Mode::Full
            };
            plan.peer(p).enqueue(k.clone(), mode);
            waiting.insert(p.to_string());
        }
        plan.waiting.insert(k, waiting);
    }
}

fn same_members(a: Option<&Ring>, b: Option<&Ring>) -> bool {
    let names = |r: Option<&Ring>| -> Vec<String> {
        r.filter(|r| r.points() > 0)
            .map(|r| r.members().iter().map(|m| m.name.clone()).collect())
            .unwrap_or_default()
    };
    names(a) == names(b)
}

impl Machine {
    /// A machine for the member `me`, holding nothing, with no ring.
    pub fn new(me: &str, cfg: MachineConfig) -> Machine {
        Machine {
            me: me.to_string(),
            origin: position(me),
            cfg,
            data: BTreeMap::new(),
            expiry: BTreeSet::new(),
            rings: Rings::default(),
            prev: HashMap::new(),
            plan: Plan::default(),
            next_batch: 0,
            dropped: 0,
            entries: 0,
            bytes: 0,
            verify_at: None,
            walked: 0,
        }
    }

    /// Entries looked at by the walks that plan hand-offs and repair passes, all told (a
    /// walk visits only the ranges a ring change moved).
    pub fn walked(&self) -> u64 {
        self.walked
    }

    /// Bytes held, as [`cost`] counts them.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether `added` more entries costing `grown` more bytes fit under the caps; the
    /// refusal to give when not.
    fn room(&self, added: usize, grown: usize) -> Result<(), Failure> {
        if added > 0 && self.entries.saturating_add(added) > self.cfg.max_entries
            || grown > 0 && self.bytes.saturating_add(grown) > self.cfg.max_bytes
        {
            return Err(Failure::Full {
                entries: self.entries as u64,
                bytes: self.bytes as u64,
            });
        }
        Ok(())
    }

    /// Forgets `key`'s entry (handed over, or purged), with its place in the expiry index;
    /// returns whether one was held.
    fn forget(&mut self, key: &StoreKey) -> bool {
        let Some(e) = self
            .data
            .get_mut(&key.role)
            .and_then(|m| m.remove(&key.key))
        else {
            return false;
        };
        self.entries -= 1;
        self.bytes -= cost(key, &e);
        self.expiry.remove(&(e.expires_at_ms, key.clone()));
        true
    }

    /// The current ring-change number.
    #[cfg(test)]
    pub fn epoch(&self) -> u64 {
        self.plan.epoch
    }

    /// Feeds an input; returns what to do.
    pub fn handle(&mut self, input: Input, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Rings(rings) => self.on_rings(rings, now),
            Input::Acked {
                peer,
                batch,
                missing,
            } => self.on_acked(&peer, batch, &missing),
            Input::Failed { peer, batch } => self.on_failed(&peer, batch, now),
            Input::Missing { peer, key } => {
                if self.entry(&key).is_some() && self.in_set(&key, &peer) && peer != self.me {
                    self.plan.peer(&peer).enqueue(key, Mode::Full);
                    self.plan.busy = true;
                }
            }
            Input::Tick => {
                if self.verify_at.is_some_and(|at| now >= at) && !self.plan.busy && self.drained() {
                    self.verify_at = None;
                    self.verify();
                }
            }
            Input::Purge => self.purge(now, &mut out),
            Input::Scan => {}
        }
        self.scan_step(now);
        self.finish(now, &mut out);
        out
    }

    /// Where `key` belongs under the current ring.
    pub fn placement(&self, key: &StoreKey) -> Placement {
        let ring = self.ring(&key.role);
        Placement {
            set: names(ring, key.position(), self.cfg.replicas)
                .into_iter()
                .map(str::to_string)
                .collect(),
        }
    }

    /// The entry held for `key`, tombstones and expired entries included.
    pub fn entry(&self, key: &StoreKey) -> Option<&Entry> {
        self.data.get(&key.role)?.get(&key.key)
    }

    /// The live entry held for `key` (a value that has not expired).
    pub fn read(&self, key: &StoreKey, now: u64) -> Option<&Entry> {
        self.entry(key).filter(|e| e.live_value(now).is_some())
    }

    /// The members to fetch `key` from before answering for it as its owner, when this node
    /// lacks it and became one of its holders in a ring change less than `handoff_ms` ago
    /// (its transfer may still be on its way). `None` when no fetch is needed.
    pub fn handoff_sources(&self, key: &StoreKey, now: u64) -> Option<Vec<String>> {
        // The cheap test first: outside a hand-off (nearly always) no entry is looked up.
        let (prev, at) = self.prev.get(&key.role)?;
        if now >= at.saturating_add(self.cfg.handoff_ms) || self.entry(key).is_some() {
            return None;
        }
        let pos = key.position();
        let old = names(prev.get(&key.role), pos, self.cfg.replicas);
        if old.contains(&self.me.as_str()) {
            return None;
        }
        let new = names(self.ring(&key.role), pos, self.cfg.replicas);
        let mut sources: Vec<String> = Vec::new();
        for m in old.into_iter().chain(new) {
            if m != self.me && !sources.iter().any(|s| s == m) {
                sources.push(m.to_string());
            }
        }
        (!sources.is_empty()).then_some(sources)
    }

    /// Whether a hand-off window is open: a ring change less than `handoff_ms` ago, during
    /// which a new holder of a key fetches it from the previous holders before answering for
    /// it (see [`Machine::handoff_sources`]).
    pub fn handoff_open(&self, now: u64) -> bool {
        self.prev
            .values()
            .any(|(_, at)| now < at.saturating_add(self.cfg.handoff_ms))
    }

    /// Applies a write as the owner: assigns the next version, stores the entry and returns
    /// what to replicate. Writes to one key are serialised by the caller's lock on the
    /// machine, so none is lost.
    pub fn write(&mut self, key: &StoreKey, op: Write<'_>, now: u64) -> Result<Applied, Failure> {
        let held = self.entry(key);
        let (added, before) = held.map_or((1, 0), |e| (0, cost(key, e)));
        let version = Version::next(held.map(|e| e.version), now, self.origin);
        let tombstone = |held: Option<&Entry>| Entry {
            value: None,
            expires_at_ms: held
                .map_or(0, |e| e.expires_at_ms)
                .max(now.saturating_add(self.cfg.tombstone_ttl_ms)),
            version,
        };
        let (entry, outcome) = match op {
            Write::Put { value, ttl_ms } => (
                Entry {
                    value: Some(value),
                    expires_at_ms: now.saturating_add(ttl_ms),
                    version,
                },
                Outcome::Stored,
            ),
            Write::PutOrGet { value, ttl_ms } => {
                if let Some(v) = held.and_then(|e| e.live_value(now)) {
                    return Ok(Applied {
                        outcome: Outcome::Existing(v.clone()),
                        item: None,
                    });
                }
                (
                    Entry {
                        value: Some(value),
                        expires_at_ms: now.saturating_add(ttl_ms),
                        version,
                    },
                    Outcome::Stored,
                )
            }
            Write::Remove => (tombstone(held), Outcome::Removed),
            Write::Update { updater, op } => {
                let current = held.and_then(|e| e.live_value(now));
                let (value, expires_at_ms, reply) = updater
                    .apply(&key.key, current, op, now)
                    .map_err(Failure::Rejected)?;
                let entry = match value {
                    Some(v) => Entry {
                        value: Some(v),
                        expires_at_ms,
                        version,
                    },
                    None => tombstone(held),
                };
                (entry, Outcome::Updated(reply))
            }
        };
        let len = entry.value.as_ref().map_or(0, Bytes::len);
        if len > self.cfg.max_value {
            return Err(Failure::TooLarge {
                len,
                max: self.cfg.max_value,
            });
        }
        self.room(added, cost(key, &entry).saturating_sub(before))?;
        self.merge(key.clone(), entry.clone());
        Ok(Applied {
            outcome,
            item: Some(Item {
                key: key.clone(),
                entry,
            }),
        })
    }

    /// Keeps `entry` for `key` if it is newer than what is held; returns whether it was.
    pub fn merge(&mut self, key: StoreKey, entry: Entry) -> bool {
        if !self.data.contains_key(&key.role) {
            self.data.insert(key.role.clone(), RoleData::default());
        }
        let slot = self.data.get_mut(&key.role).expect("inserted above");
        let expires = entry.expires_at_ms;
        let added = cost(&key, &entry);
        match slot.merge_newer(&key.key, entry) {
            Err(_) => return false,
            Ok(Some(old)) => {
                self.bytes = self.bytes + added - cost(&key, &old);
                if old.expires_at_ms == expires {
                    return true;
                }
                self.expiry.remove(&(old.expires_at_ms, key.clone()));
            }
            Ok(None) => {
                self.bytes += added;
                self.entries += 1;
            }
        }
        self.expiry.insert((expires, key));
        true
    }

    /// Takes a batch of entries and checks from `_from` (replication or transfer). Returns
    /// the indexes of the checks for keys not held at that version, and what to do (entries
    /// for keys this node should not hold are handed on).
    ///
    /// A batch whose new entries would not fit under the caps is refused whole
    /// ([`Failure::Full`]): the sender keeps its copies and tries again later, so nothing is
    /// lost to a full store.
    pub fn receive(
        &mut self,
        _from: &str,
        pushes: Vec<Push>,
        now: u64,
    ) -> Result<(Vec<u32>, Vec<Action>), Failure> {
        // Room first, for the whole batch. Counted as if every entry were new (no lookup)
        // when that fits; else exactly: under load the lookups were a tenth of an owner's
        // CPU time, and a store far from its bounds needs none of them.
        let (fulls, upper) = pushes.iter().fold((0usize, 0usize), |(n, b), p| match p {
            Push::Full(item) => (n + 1, b + cost(&item.key, &item.entry)),
            Push::Check { .. } => (n, b),
        });
        if self.room(fulls, upper).is_err() {
            let (mut added, mut grown) = (0usize, 0usize);
            for push in &pushes {
                if let Push::Full(item) = push {
                    match self.entry(&item.key) {
                        Some(held) if held.version >= item.entry.version => {}
                        Some(held) => {
                            grown +=
                                cost(&item.key, &item.entry).saturating_sub(cost(&item.key, held))
                        }
                        None => {
                            added += 1;
                            grown += cost(&item.key, &item.entry);
                        }
                    }
                }
            }
            self.room(added, grown)?;
        }
        let mut missing = Vec::new();
        for (i, push) in pushes.into_iter().enumerate() {
            match push {
                Push::Full(item) => {
                    let changed = self.merge(item.key.clone(), item.entry);
                    self.hand_on_stray(&item.key, changed, now);
                }
                Push::Check { key, version } => {
                    if self.entry(&key).is_none_or(|e| e.version < version) {
                        missing.push(i as u32);
                    }
                }
            }
        }
        let mut out = Vec::new();
        self.finish(now, &mut out);
        Ok((missing, out))
    }

    /// Live entries held.
    pub fn local_len(&self, now: u64) -> usize {
        self.data
            .values()
            .flat_map(|m| m.iter())
            .filter(|(_, e)| e.live_value(now).is_some())
            .count()
    }

    /// Keys of `role` with a live entry here, sorted.
    pub fn local_keys(&self, role: &str, now: u64) -> Vec<String> {
        self.data
            .get(role)
            .map(|m| {
                let mut keys: Vec<String> = m
                    .iter()
                    .filter(|(_, e)| e.live_value(now).is_some())
                    .map(|(k, _)| k.to_string())
                    .collect();
                keys.sort_unstable();
                keys
            })
            .unwrap_or_default()
    }

    /// Entries held, tombstones and expired entries included.
    pub fn stored(&self) -> usize {
        self.data.values().map(RoleData::len).sum()
    }

    fn ring(&self, role: &str) -> Option<&Ring> {
        self.rings.get(role).filter(|r| r.points() > 0)
    }

    fn in_set(&self, key: &StoreKey, member: &str) -> bool {
        names(self.ring(&key.role), key.position(), self.cfg.replicas).contains(&member)
    }

    fn on_rings(&mut self, rings: Rings, now: u64) {
        let old = std::mem::replace(&mut self.rings, rings);
        let roles: BTreeSet<String> = old
            .roles()
            .chain(self.rings.roles())
            .map(str::to_string)
            .collect();
        let changed: BTreeSet<String> = roles
            .into_iter()
            .filter(|r| !same_members(old.get(r), self.rings.get(r)))
            .collect();
        if changed.is_empty() {
            return;
        }
        for role in &changed {
            self.prev.insert(role.clone(), (old.clone(), now));
        }
        // The positions whose replica sets this change may move, per role.
        let cover: Cover = changed
            .iter()
            .map(|role| {
                let ranges = match (old.get(role), self.rings.get(role)) {
                    (Some(a), Some(b)) => Ring::changed_ranges(a, b, self.cfg.replicas),
                    _ => None,
                };
                (role.clone(), ranges)
            })
            .collect();
        self.replan(&changed, &old, cover);
    }

    /// Starts a new transfer plan after a ring change (a new epoch): what a cancelled plan
    /// still owed is kept, and the walk over every key held starts (or starts again, see
    /// [`Scan::before`]).
    fn replan(&mut self, changed: &BTreeSet<String>, old: &Rings, cover: Cover) {
        let plan = &mut self.plan;
        plan.epoch += 1;
        plan.busy = true;
        let mut scan = match plan.scan.take() {
            // A repair pass is cut short: what it was to cover is covered by the next.
            Some(cut) if plan.verifying => {
                widen(&mut plan.settled, cut.cover);
                Scan::default()
            }
            cut => cut.unwrap_or_default(),
        };
        plan.verifying = false;
        // Changes whose walks have not ended add up: the walk covers all of them.
        widen(&mut scan.cover, cover);
        for role in changed {
            scan.before
                .entry(role.clone())
                .or_insert_with(|| old.clone());
        }
        scan.after = None;
        // What the cancelled plan still owed is owed under the new one too.
        for (name, p) in plan.peers.iter_mut() {
            for (k, _) in p.queued.drain() {
                scan.owed.entry(k).or_default().push(name.clone());
            }
            p.queue.clear();
            if let Some(f) = &p.inflight {
                for (k, _, _) in &f.sent {
                    scan.owed.entry(k.clone()).or_default().push(name.clone());
                }
            }
            p.seq = 0;
            p.open = false;
            p.retry_at = 0;
            p.failures = 0;
        }
        plan.waiting.clear();
        plan.scan = Some(scan);
    }

    /// A walk that plans a hand-off or a repair pass is under way: feed [`Input::Scan`]
    /// until it is not.
    pub fn scanning(&self) -> bool {
        self.plan.scan.is_some()
    }

    /// Looks at the next [`MachineConfig::scan_chunk`] entries of the walk under way, if
    /// any, and plans what they need: for a hand-off, the pushes and checks of the module
    /// documentation; for a repair pass, a check to every other member of each replica set
    /// this node is in.
    fn scan_step(&mut self, now: u64) {
        let Machine {
            me,
            cfg,
            data,
            rings,
            plan,
            walked,
            ..
        } = self;
        let Some(mut scan) = plan.scan.take() else {
            return;
        };
        let me = me.as_str();
        let from = scan.after.take();
        let mut walk = entries_after(data, Some(&scan.cover), from.as_ref());
        let mut last = None;
        let mut looked = Vec::with_capacity(cfg.scan_chunk.max(1));
        for (role, key, entry) in walk.by_ref().take(cfg.scan_chunk.max(1)) {
            last = Some((role, key));
            looked.push((role, key, entry));
        }
        let more = walk.next().is_some();
        drop(walk);
        *walked += looked.len() as u64;
        for (role, key, entry) in looked {
            let k = StoreKey::new(role, key);
            let owed = scan.owed.remove(&k);
            plan_key(me, cfg, rings, plan, &scan, k, entry, owed.as_deref(), now);
        }
        if more {
            scan.after = last.map(|(role, key)| StoreKey::new(role, key));
            plan.scan = Some(scan);
            return;
        }
        // The walk is over. What cancelled plans owed for keys outside it is planned now.
        for (k, owed) in std::mem::take(&mut scan.owed) {
            if let Some(entry) = data.get(&k.role).and_then(|m| m.get(&k.key)) {
                plan_key(me, cfg, rings, plan, &scan, k, entry, Some(&owed), now);
            }
        }
        if !plan.verifying {
            widen(&mut plan.settled, std::mem::take(&mut scan.cover));
        }
        plan.peers.retain(|_, p| !p.idle());
    }

    /// Calls `f` with the role and value of each live entry, at most `budget` entries from
    /// the one after `after` (from the first when `None`); returns where to go on from, or
    /// `None` when every entry has been looked at. Counting a large store this way never
    /// holds it for longer than `budget` entries take.
    pub fn walk_live(
        &self,
        after: Option<&StoreKey>,
        budget: usize,
        now: u64,
        mut f: impl FnMut(&str, &[u8]),
    ) -> Option<StoreKey> {
        let mut walk = entries_after(&self.data, None, after);
        let mut last = None;
        for (role, key, entry) in walk.by_ref().take(budget.max(1)) {
            if let Some(v) = entry.live_value(now) {
                f(role, v);
            }
            last = Some((role, key));
        }
        walk.next()?;
        last.map(|(role, key)| StoreKey::new(role, key))
    }

    /// Goes on with `count` over at most `budget` entries (see [`Machine::walk_live`]);
    /// when that finishes a pass over every entry held, returns the live entries it counted
    /// and those of `role` for which `pred` holds on the value, and starts the next pass.
    pub fn count_live(
        &self,
        count: &mut LiveCount,
        role: &str,
        pred: impl Fn(&[u8]) -> bool,
        budget: usize,
        now: u64,
    ) -> Option<(usize, usize)> {
        let (mut all, mut matching) = (count.all, count.matching);
        let after = self.walk_live(count.after.as_ref(), budget, now, |r, v| {
            all += 1;
            if r == role && pred(v) {
                matching += 1;
            }
        });
        match after {
            Some(after) => {
                *count = LiveCount {
                    after: Some(after),
                    all,
                    matching,
                };
                None
            }
            None => {
                *count = LiveCount::default();
                Some((all, matching))
            }
        }
    }

    /// Nothing is left to send, hand over or wait for (the plan may still have to report
    /// that it settled).
    fn drained(&self) -> bool {
        self.plan.scan.is_none()
            && self.plan.waiting.is_empty()
            && self.plan.peers.values().all(PeerState::idle)
    }

    /// The repair pass, run once after each hand-off settles: for every key held whose
    /// replica set includes this node, the other members of the set are asked whether they
    /// hold it at this version ([`Push::Check`], a key and a version each), and those that do
    /// not get it. A copy that a hand-off missed (a transfer cut short by the next change, a
    /// member that came back empty between two views this node never saw apart) is restored
    /// within seconds instead of at the next membership change.
    pub fn verify(&mut self) {
        let plan = &mut self.plan;
        plan.epoch += 1;
        plan.busy = true;
        plan.verifying = true;
        plan.scan = Some(Scan {
            cover: std::mem::take(&mut plan.settled),
            ..Scan::default()
        });
    }

    /// An entry for a key whose replica set does not include this node is handed on to that
    /// set (and dropped once all of it confirmed).
    fn hand_on_stray(&mut self, key: &StoreKey, changed: bool, now: u64) {
        let Some(ring) = self.ring(&key.role) else {
            return;
        };
        // Not on our own ring at all: our view is behind the sender's (we are joining and the
        // status with us in it has not reached us yet). Keep the entry; handing it on and
        // dropping it would lose the copy the sender counts on us to hold.
        let me = self.me.as_str();
        if ring
            .members()
            .binary_search_by(|m| m.name.as_str().cmp(me))
            .is_err()
        {
            return;
        }
        let set = names(Some(ring), key.position(), self.cfg.replicas);
        if set.contains(&me) || self.entry(key).is_none_or(|e| e.is_expired(now)) {
            return;
        }
        if !changed && self.plan.waiting.contains_key(key) {
            return;
        }
        let set: Vec<String> = set.into_iter().map(str::to_string).collect();
        for p in &set {
            self.plan.peer(p).enqueue(key.clone(), Mode::Full);
        }
        self.plan
            .waiting
            .insert(key.clone(), set.into_iter().collect());
        self.plan.busy = true;
    }

    fn on_acked(&mut self, peer: &str, batch: u64, missing: &[u32]) {
        let Some(p) = self.plan.peers.get_mut(peer) else {
            return;
        };
        if p.inflight.as_ref().map(|f| f.id) != Some(batch) {
            return;
        }
        let sent = p.inflight.take().expect("checked").sent;
        p.failures = 0;
        p.retry_at = 0;
        let missing: HashSet<u32> = missing.iter().copied().collect();
        let mut done = Vec::new();
        for (i, (key, mode, version)) in sent.into_iter().enumerate() {
            if mode == Mode::Check && missing.contains(&(i as u32)) {
                self.plan.peer(peer).enqueue(key, Mode::Full);
                continue;
            }
            let newer = self.entry(&key).is_some_and(|e| e.version > version);
            if newer {
                // Changed since it was sent: what the peer acknowledged is not enough.
                if self.in_set(&key, peer) {
                    self.plan.peer(peer).enqueue(key, Mode::Full);
                }
            } else {
                done.push(key);
            }
        }
        for key in done {
            self.mark_done(&key, peer);
        }
    }

    fn on_failed(&mut self, peer: &str, batch: u64, now: u64) {
        let Some(p) = self.plan.peers.get_mut(peer) else {
            return;
        };
        if p.inflight.as_ref().map(|f| f.id) != Some(batch) {
            return;
        }
        let sent = p.inflight.take().expect("checked").sent;
        p.failures = p.failures.saturating_add(1);
        let shift = (p.failures - 1).min(16);
        let delay = self
            .cfg
            .retry_base_ms
            .saturating_mul(1 << shift)
            .min(self.cfg.retry_max_ms);
        p.retry_at = now.saturating_add(delay);
        for (key, mode, _) in sent.into_iter().rev() {
            p.requeue_front(key, mode);
        }
    }

    /// `peer` holds `key` (or there is nothing left to hold).
    fn mark_done(&mut self, key: &StoreKey, peer: &str) {
        if let Some(p) = self.plan.peers.get_mut(peer) {
            p.queued.remove(key);
        }
        let Some(w) = self.plan.waiting.get_mut(key) else {
            return;
        };
        w.remove(peer);
        if !w.is_empty() {
            return;
        }
        self.plan.waiting.remove(key);
        let placed = self.ring(&key.role).is_some();
        if placed && !self.in_set(key, &self.me) && self.forget(key) {
            self.dropped += 1;
        }
    }

    fn purge(&mut self, now: u64, out: &mut Vec<Action>) {
        let mut purged = 0;
        while purged < self.cfg.purge_batch {
            match self.expiry.first() {
                Some((exp, _)) if *exp <= now => {}
                _ => break,
            }
            let (exp, key) = self.expiry.pop_first().expect("checked");
            if self.entry(&key).is_some_and(|e| e.expires_at_ms == exp) {
                self.forget(&key);
                purged += 1;
            }
            self.plan.waiting.remove(&key);
        }
        if purged > 0 {
            out.push(Action::Purged { entries: purged });
        }
    }

    /// Starts the batches that may start, then reports drops and settling.
    fn finish(&mut self, now: u64, out: &mut Vec<Action>) {
        self.pump(now, out);
        if self.dropped > 0 {
            out.push(Action::Dropped { keys: self.dropped });
            self.dropped = 0;
        }
        if self.plan.busy && self.drained() {
            self.plan.busy = false;
            self.plan.peers.clear();
            if !self.plan.verifying {
                self.verify_at = Some(now.saturating_add(self.cfg.verify_after_ms));
            }
            out.push(Action::Settled {
                epoch: self.plan.epoch,
            });
        }
    }

    fn pump(&mut self, now: u64, out: &mut Vec<Action>) {
        let mut active = self
            .plan
            .peers
            .values()
            .filter(|p| p.inflight.is_some())
            .count();
        let ready: Vec<String> = self
            .plan
            .peers
            .iter()
            .filter(|(_, p)| {
                p.inflight.is_none() && p.retry_at <= now && (!p.queued.is_empty() || p.open)
            })
            .map(|(n, _)| n.clone())
            .collect();
        let mut gone = Vec::new();
        for name in ready {
            if active >= self.cfg.max_parallel {
                break;
            }
            let Machine {
                cfg,
                data,
                plan,
                next_batch,
                ..
            } = self;
            let p = plan.peers.get_mut(&name).expect("listed");
            let mut pushes = Vec::new();
            let mut sent = Vec::new();
            let mut bytes = 0;
            while pushes.len() < cfg.batch_entries && bytes < cfg.batch_bytes {
                let Some(key) = p.queue.pop_front() else {
                    break;
                };
                let Some(mode) = p.queued.remove(&key) else {
                    continue;
                };
                let entry = data.get(&key.role).and_then(|m| m.get(&key.key));
                match entry {
                    Some(e) if !e.is_expired(now) => {
                        bytes += key.key.len() + key.role.len();
                        match mode {
                            Mode::Full => {
                                bytes += e.wire_size();
                                pushes.push(Push::Full(Item {
                                    key: key.clone(),
                                    entry: e.clone(),
                                }));
                            }
                            Mode::Check => {
                                bytes += 24;
                                pushes.push(Push::Check {
                                    key: key.clone(),
                                    version: e.version,
                                });
                            }
                        }
                        sent.push((key, mode, e.version));
                    }
                    // Gone or expired: nothing left to hold.
                    _ => gone.push((key, name.clone())),
                }
            }
            while p.queue.front().is_some_and(|k| !p.queued.contains_key(k)) {
                p.queue.pop_front();
            }
            // The end marker only once the walk has planned every key.
            let last = p.queued.is_empty() && plan.scan.is_none();
            if pushes.is_empty() && !p.open {
                continue;
            }
            *next_batch += 1;
            let id = *next_batch;
            out.push(Action::Send(Batch {
                peer: name.clone(),
                id,
                epoch: plan.epoch,
                seq: p.seq,
                last,
                pushes,
            }));
            p.seq += 1;
            p.open = !last;
            p.inflight = Some(InFlight { id, sent });
            active += 1;
        }
        for (key, peer) in gone {
            self.mark_done(&key, &peer);
        }
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
