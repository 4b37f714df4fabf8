//! The async side of the store: serves requests from peers, replicates writes, routes the
//! node's own requests to owners and carries out the [`Machine`]'s actions over
//! [`PeerNet`]. All decisions about what to send, merge and drop are the machine's.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::{join_all, BoxFuture};
use onehop_overlay::identity::Identity;
use onehop_overlay::metrics::{Histogram, Metrics, FAST_BUCKETS};
use onehop_overlay::wire::{decode_body, encode_frame};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::coalesce::{Coalescer, SendFn};
use super::entry::{Item, StoreKey};
use super::machine::{Action, Batch, Input, Machine, Write};
use super::messages::{Failure, Push, Request, Response, WriteOp};
use super::{Acks, StoreConfig, StoreError, Updater};
use crate::peer::{PeerAddr, PeerError, PeerHandler, PeerNet, Service};
use crate::view::View;

/// How often the machine is ticked (retries after back-off).
const TICK: Duration = Duration::from_millis(50);
/// Pause before retrying a request or a replication when the view did not change.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Longest wait for a hand-off fetch.
const FETCH_TIMEOUT: Duration = Duration::from_millis(500);

/// Milliseconds since the Unix epoch: the store's one clock.
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn encode<T: Serialize>(msg: &T) -> Bytes {
    encode_frame(msg).slice(4..)
}

/// What may be retried after the request may have reached the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// A read: retried, and other replicas are asked when the owner cannot be reached.
    Read,
    /// A write that may be applied twice.
    Idempotent,
    /// A write that must not be applied twice (retried only when surely not delivered).
    Once,
}

pub(super) struct State {
    pub machine: Machine,
    /// The view last fed to the machine.
    pub view: Option<Arc<View>>,
}

impl State {
    /// Feeds `view` to the machine if it is newer than the view it holds (its status
    /// supersedes the held one); returns what to do, or `None` when `view` is not newer.
    ///
    /// Never older: every request catches the store up with the node's latest view, and one
    /// that read it just before a newer one was applied must not put the older rings back
    /// (the store would settle its hand-off on rings no other node holds, and stay there
    /// until the next change). A restarted member (in both views, with a new `since`: the
    /// managers stamp a member anew when it left and came back) starts with an empty store;
    /// the managers publish its departure first, but views arrive through a watch channel
    /// that keeps only the latest, so the departure may never be seen here: the machine is
    /// then shown the rings without it first, so that what it held is copied to others and
    /// handed back to it.
    pub fn advance(&mut self, view: Arc<View>, now: u64) -> Option<Vec<Action>> {
        // The same view again is not newer either: a status does not supersede itself.
        let newer = self.view.as_ref().is_none_or(|held| {
            view.status
                .as_ref()
                .is_some_and(|s| s.supersedes(held.status.as_deref()))
        });
        if !newer {
            return None;
        }
        let mut actions = Vec::new();
        if let Some(interim) = without_restarted(self.view.as_deref(), &view) {
            actions.extend(self.machine.handle(Input::Rings(interim), now));
        }
        actions.extend(self.machine.handle(Input::Rings(view.rings.clone()), now));
        self.view = Some(view);
        Some(actions)
    }
}

pub(super) struct Inner {
    pub cfg: StoreConfig,
    pub me: Arc<Identity>,
    pub peer: Arc<PeerNet>,
    pub view: watch::Receiver<Arc<View>>,
    pub state: Mutex<State>,
    pub updaters: RwLock<HashMap<String, Arc<dyn Updater>>>,
    pub shutdown: CancellationToken,
    /// Replication to each peer, coalesced while calls to it are in flight.
    pub replicas: Arc<Coalescer<Result<Response, PeerError>>>,
    /// Writes and batches refused because the store was full, and when that was last logged.
    pub full: AtomicU64,
    pub full_logged: AtomicU64,
    /// Entries received in other members' `Replicate` calls, and in the answers to this
    /// node's `WriteCopy` writes.
    pub copies_replicated: AtomicU64,
    pub copies_answered: AtomicU64,
    /// Timing histograms, once the node has given the store its metrics.
    pub timers: OnceLock<Timers>,
}

/// How long the store's steps take, as histograms on the node's metrics endpoint.
pub(super) struct Timers {
    /// A write of this node's, from the call to the owner's answer: owned here, or elsewhere.
    pub write_local: Histogram,
    pub write_remote: Histogram,
    /// An owner's copy of one written entry to the rest of its replica set.
    pub replicate: Histogram,
}

impl Timers {
    pub fn new(metrics: &Metrics) -> Timers {
        const WRITE: &str = "Store writes of this node, from the call to the owner's answer \
                             (the owner's copy to its replicas included), by where the owner was.";
        Timers {
            write_local: metrics.histogram(
                "store_write_seconds{owner=\"self\"}",
                WRITE,
                FAST_BUCKETS,
            ),
            write_remote: metrics.histogram(
                "store_write_seconds{owner=\"peer\"}",
                WRITE,
                FAST_BUCKETS,
            ),
            replicate: metrics.histogram(
                "store_replicate_seconds",
                "An owner's copy of a written entry to the rest of its replica set, until all \
                 of it holds the entry.",
                FAST_BUCKETS,
            ),
        }
    }
}

/// The replica coalescer's sender: one `Replicate` call with the batch, to the member named;
/// its answer is every entry's.
pub(super) fn replicate_sender(inner: Weak<Inner>) -> SendFn<Result<Response, PeerError>> {
    Arc::new(move |peer: String, items: Vec<Item>| {
        let inner = inner.clone();
        let send: BoxFuture<'static, Result<Response, PeerError>> = Box::pin(async move {
            let Some(inner) = inner.upgrade() else {
                return Err(PeerError::Unreachable("the store has stopped".into()));
            };
            let timeout = inner.cfg.call_timeout;
            inner
                .call(&peer, encode(&Request::Replicate { items }), timeout)
                .await
        });
        send
    })
}

/// The rings of `new` without the members that restarted since `old` (in both statuses with a
/// different `since`), or `None` when none did.
fn without_restarted(old: Option<&View>, new: &View) -> Option<onehop_overlay::ring::Rings> {
    let (old, status) = (old?.status.as_deref()?, new.status.as_deref()?);
    let since: HashMap<&str, u64> = old
        .members
        .iter()
        .map(|m| (m.name.as_str(), m.since))
        .collect();
    let restarted: HashSet<&str> = status
        .members
        .iter()
        .filter(|m| since.get(m.name.as_str()).is_some_and(|&s| s != m.since))
        .map(|m| m.name.as_str())
        .collect();
    if restarted.is_empty() {
        return None;
    }
    // Points per member, as the rings of `new` were built.
    let per_member = new
        .rings
        .roles()
        .filter_map(|r| new.rings.get(r))
        .find(|r| !r.is_empty())
        .map(|r| (r.points() / r.len()) as u32)?;
    let mut interim = onehop_overlay::status::NetworkStatus::clone(status);
    interim
        .members
        .retain(|m| !restarted.contains(m.name.as_str()));
    info!(members = ?restarted, "members restarted: their keys are handed back to them");
    Some(new.rings.update(status, &interim, per_member))
}

/// The [`PeerHandler`] of [`Service::Store`].
pub(super) struct StoreHandler {
    inner: Weak<Inner>,
}

impl StoreHandler {
    pub fn new(inner: &Arc<Inner>) -> StoreHandler {
        StoreHandler {
            inner: Arc::downgrade(inner),
        }
    }
}

impl PeerHandler for StoreHandler {
    fn handle(&self, from: &Identity, body: Bytes) -> BoxFuture<'_, Bytes> {
        let from = from.name.clone();
        Box::pin(async move {
            let Some(inner) = self.inner.upgrade() else {
                return encode(&Response::Failed(Failure::Stopped));
            };
            let response = match decode_body::<Request>(&body) {
                Ok(req) => inner.serve(&from, req).await,
                Err(e) => {
                    warn!(peer = %from, cause = %e, "malformed store request");
                    Response::Failed(Failure::Malformed(e.to_string()))
                }
            };
            encode(&response)
        })
    }
}

impl Inner {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // An updater that panicked leaves the machine consistent (it runs before any change).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Feeds the node's latest view to the machine if it has not seen it yet (see
    /// [`State::advance`]). The view is read under the lock, so that views reach the machine
    /// in the order the node applied them.
    pub fn sync(self: &Arc<Self>) {
        let actions = {
            let mut st = self.lock();
            let view = self.view.borrow().clone();
            match st.advance(view, now_ms()) {
                Some(actions) => actions,
                None => return,
            }
        };
        self.execute(actions);
    }

    fn handle(self: &Arc<Self>, input: Input) {
        let actions = self.lock().machine.handle(input, now_ms());
        self.execute(actions);
    }

    fn execute(self: &Arc<Self>, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send(batch) => {
                    if !self.shutdown.is_cancelled() {
                        tokio::spawn(self.clone().send_batch(batch));
                    }
                }
                Action::Dropped { keys } => debug!(keys, "handed over and dropped"),
                Action::Purged { entries } => debug!(entries, "purged expired entries"),
                Action::Settled { epoch } => {
                    let held = self.lock().machine.stored();
                    info!(epoch, held, "store hand-off settled");
                }
            }
        }
    }

    /// Runs until shutdown: follows the view, ticks the machine, purges, walks what is held
    /// after a ring change.
    pub async fn run(self: Arc<Self>, mut view: watch::Receiver<Arc<View>>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_purge = Instant::now();
        let mut view_open = true;
        loop {
            // The walk that plans a hand-off or a repair pass goes a chunk per turn, off the
            // runtime's threads, with the lock given back and whatever else is due handled in
            // between.
            let scanning = self.lock().machine.scanning();
            if scanning {
                let me = self.clone();
                let _ = tokio::task::spawn_blocking(move || me.handle(Input::Scan)).await;
            }
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                r = view.changed(), if view_open => match r {
                    // A new view re-plans the store (the ranges its ring change moved): off
                    // the runtime's threads too.
                    Ok(()) => {
                        let me = self.clone();
                        let _ = tokio::task::spawn_blocking(move || me.sync()).await;
                    }
                    Err(_) => view_open = false,
                },
                _ = tick.tick() => {
                    self.handle(Input::Tick);
                    if last_purge.elapsed() >= self.cfg.purge_interval {
                        last_purge = Instant::now();
                        self.handle(Input::Purge);
                    }
                }
                _ = std::future::ready(()), if scanning => {}
            }
        }
        debug!("store stopped");
    }

    async fn send_batch(self: Arc<Self>, batch: Batch) {
        let Batch {
            peer,
            id,
            epoch,
            seq,
            last,
            pushes,
        } = batch;
        let n = pushes.len();
        let req = Request::Transfer {
            epoch,
            seq,
            pushes,
            last,
        };
        let input = match self
            .call(&peer, encode(&req), self.cfg.transfer_timeout)
            .await
        {
            Ok(Response::Held { missing }) => Input::Acked {
                peer,
                batch: id,
                missing,
            },
            Ok(other) => {
                warn!(%peer, epoch, seq, answer = ?other, "transfer batch not taken");
                Input::Failed { peer, batch: id }
            }
            Err(e) => {
                // A member of the view that does not take its transfer holds the hand-off up
                // (retried with back-off); one that left is expected to fail.
                if self.peer_addr(&peer).is_some() {
                    warn!(%peer, epoch, seq, entries = n, cause = %e, "transfer batch failed, will retry");
                } else {
                    debug!(%peer, epoch, seq, entries = n, cause = %e, "transfer batch failed");
                }
                Input::Failed { peer, batch: id }
            }
        };
        self.handle(input);
    }

    /// The peer address of member `name` in the current view.
    fn peer_addr(&self, name: &str) -> Option<PeerAddr> {
        let view = self.view.borrow();
        view.status.as_ref()?.member(name).map(PeerAddr::of_member)
    }

    /// Calls the store of member `name`.
    async fn call(
        &self,
        name: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Response, PeerError> {
        let Some(addr) = self.peer_addr(name) else {
            return Err(PeerError::Unreachable(format!(
                "{name} is not in the network status"
            )));
        };
        self.call_addr(&addr, body, timeout).await
    }

    async fn call_addr(
        &self,
        addr: &PeerAddr,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Response, PeerError> {
        let answer = self.peer.call(addr, Service::Store, body, timeout).await?;
        decode_body::<Response>(&answer)
            .map_err(|e| PeerError::Remote(format!("bad store answer from {addr}: {e}")))
    }

    // ---- serving ----

    /// Answers one request (from a peer, or from this node for a key it owns).
    pub async fn serve(self: &Arc<Self>, from: &str, req: Request) -> Response {
        if self.shutdown.is_cancelled() {
            return Response::Failed(Failure::Stopped);
        }
        self.sync();
        match req {
            Request::Get { key, replica } => {
                if !replica {
                    if let Err(r) = self.check_owner(&key) {
                        return r;
                    }
                    self.handoff(&key).await;
                }
                Response::Value(self.lock().machine.read(&key, now_ms()).cloned())
            }
            Request::Write { key, op } => self.serve_write(key, op, None).await,
            Request::WriteCopy { key, op } => self.serve_write(key, op, Some(from)).await,
            Request::Replicate { items } => {
                self.copies_replicated
                    .fetch_add(items.len() as u64, Ordering::Relaxed);
                self.receive(from, items.into_iter().map(Push::Full).collect())
            }
            Request::Transfer {
                epoch,
                seq,
                pushes,
                last,
            } => {
                let r = self.receive(from, pushes);
                if last {
                    debug!(peer = %from, epoch, batches = seq + 1, "transfer received");
                }
                r
            }
            Request::Fetch { key } => Response::Entry(self.lock().machine.entry(&key).cloned()),
        }
    }

    fn receive(self: &Arc<Self>, from: &str, pushes: Vec<Push>) -> Response {
        let taken = self.lock().machine.receive(from, pushes, now_ms());
        match taken {
            Ok((missing, actions)) => {
                self.execute(actions);
                Response::Held { missing }
            }
            Err(full) => {
                self.refused_full(&full);
                Response::Failed(full)
            }
        }
    }

    /// Counts and logs (at most once a second) a write or batch refused by a full store.
    pub fn refused_full(&self, full: &Failure) {
        let n = self.full.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        // `full_logged` starts at 0, so the first refusal is always logged.
        if now.saturating_sub(self.full_logged.load(Ordering::Relaxed)) >= 1_000 {
            self.full_logged.store(now, Ordering::Relaxed);
            warn!(answer = ?full, max_entries = self.cfg.max_entries, max_bytes = self.cfg.max_bytes, refused = n + 1, "store full: write refused");
        }
    }

    /// `Ok` when this node owns `key` under its ring, else the answer to give.
    fn check_owner(&self, key: &StoreKey) -> Result<(), Response> {
        let placement = self.lock().machine.placement(key);
        match placement.owner() {
            None => Err(Response::Failed(Failure::NoMember)),
            Some(o) if o == self.me.name => Ok(()),
            Some(o) => Err(Response::NotOwner {
                owner: o.to_string(),
                addr: self.peer_addr(o).map(|p| p.addr),
            }),
        }
    }

    /// During a hand-off, fetches a key this node lacks from its previous holders.
    async fn handoff(self: &Arc<Self>, key: &StoreKey) {
        let sources = self.lock().machine.handoff_sources(key, now_ms());
        let Some(sources) = sources else {
            return;
        };
        let body = encode(&Request::Fetch { key: key.clone() });
        let timeout = self.cfg.call_timeout.min(FETCH_TIMEOUT);
        let answers = join_all(sources.iter().map(|s| self.call(s, body.clone(), timeout))).await;
        let mut st = self.lock();
        for answer in answers {
            if let Ok(Response::Entry(Some(entry))) = answer {
                st.machine.merge(key.clone(), entry);
            }
        }
    }

    /// Applies a write this node owns and replicates it. `copier` is a caller that takes its
    /// own copy ([`Request::WriteCopy`]): when it is in the replica set it gets the entry in
    /// the answer instead of a `Replicate` call.
    async fn serve_write(
        self: &Arc<Self>,
        key: StoreKey,
        op: WriteOp,
        copier: Option<&str>,
    ) -> Response {
        let max = self.cfg.max_value;
        if op.len() > max {
            return Response::Failed(Failure::TooLarge { len: op.len(), max });
        }
        if let Err(r) = self.check_owner(&key) {
            return r;
        }
        self.handoff(&key).await;
        let updater = match &op {
            WriteOp::Update { .. } => {
                let found = self
                    .updaters
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&key.role)
                    .cloned();
                match found {
                    Some(u) => Some(u),
                    None => return Response::Failed(Failure::NoUpdater),
                }
            }
            _ => None,
        };
        let applied = {
            let write = match &op {
                WriteOp::Put { value, ttl_ms } => Write::Put {
                    value: value.clone(),
                    ttl_ms: *ttl_ms,
                },
                WriteOp::PutOrGet { value, ttl_ms } => Write::PutOrGet {
                    value: value.clone(),
                    ttl_ms: *ttl_ms,
                },
                WriteOp::Remove => Write::Remove,
                WriteOp::Update { op } => Write::Update {
                    updater: updater.as_deref().expect("looked up above"),
                    op,
                },
            };
            self.lock().machine.write(&key, write, now_ms())
        };
        let applied = match applied {
            Ok(a) => a,
            Err(f) => {
                if matches!(f, Failure::Full { .. }) {
                    self.refused_full(&f);
                }
                return Response::Failed(f);
            }
        };
        let Some(item) = applied.item else {
            // Put-or-get found a value: nothing written, nothing to replicate.
            return Response::Written {
                outcome: applied.outcome,
                acks: Acks { held: 0, wanted: 0 },
            };
        };
        let started = Instant::now();
        let replicated = self.replicate(&item, copier).await;
        if let Some(t) = self.timers.get() {
            t.replicate.observe(started.elapsed());
        }
        match replicated {
            Ok((acks, false)) => Response::Written {
                outcome: applied.outcome,
                acks,
            },
            Ok((acks, true)) => Response::WrittenCopy {
                outcome: applied.outcome,
                acks,
                item: Box::new(item),
            },
            Err(f) => Response::Failed(f),
        }
    }

    /// The caller's side of [`Response::WrittenCopy`]: merges the entry the owner sent, so
    /// that this node holds it before the write is reported done.
    pub fn hold_copy(self: &Arc<Self>, item: Item) -> Result<(), Failure> {
        self.copies_answered.fetch_add(1, Ordering::Relaxed);
        match self.receive("the owner", vec![Push::Full(item)]) {
            Response::Failed(f) => Err(f),
            _ => Ok(()),
        }
    }

    /// Sends a written entry to the rest of its replica set until all of it holds the entry
    /// (following view changes) or the request timeout passes. `copier`, when it is in the
    /// set the first time it is looked at, takes its copy from the answer and counts as
    /// holding the entry; the answer says whether it did.
    async fn replicate(
        self: &Arc<Self>,
        item: &Item,
        copier: Option<&str>,
    ) -> Result<(Acks, bool), Failure> {
        let deadline = Instant::now() + self.cfg.request_timeout;
        let mut view = self.view.clone();
        view.borrow_and_update();
        let mut acked: HashSet<String> = HashSet::from([self.me.name.clone()]);
        let mut copier = copier.filter(|c| *c != self.me.name);
        let mut copied = false;
        loop {
            self.sync();
            let set = self.lock().machine.placement(&item.key).set;
            if let Some(c) = copier.take() {
                if set.iter().any(|m| m == c) {
                    acked.insert(c.to_string());
                    copied = true;
                }
            }
            let wanted = set.len();
            let pending: Vec<&String> = set.iter().filter(|m| !acked.contains(*m)).collect();
            if pending.is_empty() {
                let acks = Acks {
                    held: wanted,
                    wanted,
                };
                return Ok((acks, copied));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let held = set.iter().filter(|m| acked.contains(*m)).count();
                return Err(Failure::NotReplicated { held, wanted });
            }
            let timeout = self.cfg.call_timeout.min(remaining);
            let answers =
                join_all(pending.iter().map(|p| self.replicate_to(p, item, timeout))).await;
            let mut failed = false;
            for (p, answer) in pending.into_iter().zip(answers) {
                match answer {
                    Ok(Response::Held { .. }) => {
                        acked.insert(p.clone());
                    }
                    other => {
                        failed = true;
                        debug!(peer = %p, key = %item.key, answer = ?other, "replica did not confirm");
                        self.handle(Input::Missing {
                            peer: p.clone(),
                            key: item.key.clone(),
                        });
                    }
                }
            }
            if failed {
                pause(&mut view, deadline).await;
            }
        }
    }

    /// Sends `item` to replica `peer` through the coalescer: with other entries written
    /// meanwhile when a call to that peer is in flight, at once otherwise.
    async fn replicate_to(
        &self,
        peer: &str,
        item: &Item,
        timeout: Duration,
    ) -> Result<Response, PeerError> {
        let rx = self.replicas.submit(peer, item.clone()).map_err(|_| {
            PeerError::Unreachable(format!("{peer}: too many entries waiting to replicate"))
        })?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(PeerError::Lost("the replication batch was dropped".into())),
            Err(_) => Err(PeerError::Timeout),
        }
    }

    // ---- the node's own requests ----

    /// The key's replica set under this node's current view, owner first.
    fn placement(&self, key: &StoreKey) -> Vec<PeerAddr> {
        let view = self.view.borrow();
        let (Some(status), Some(ring)) = (view.status.as_ref(), view.rings.get(&key.role)) else {
            return Vec::new();
        };
        ring.replicas_at(key.position(), self.cfg.replicas.max(1))
            .filter_map(|m| status.member(&m.name).map(PeerAddr::of_member))
            .collect()
    }

    /// Sends `req` for `key` to its owner, following redirects and view changes, until the
    /// request timeout. See the module documentation of [`super`] for the retry rules.
    pub async fn to_owner(
        self: &Arc<Self>,
        key: &StoreKey,
        req: Request,
        retry: Retry,
    ) -> Result<Response, StoreError> {
        let started = Instant::now();
        let deadline = started + self.cfg.request_timeout;
        let mut view = self.view.clone();
        view.borrow_and_update();
        // Encoded for the first call to another node (a write this node owns needs none).
        let mut body: Option<Bytes> = None;
        let mut hint: Option<PeerAddr> = None;
        let mut redirects = 0;
        let mut last;
        loop {
            if self.shutdown.is_cancelled() {
                return Err(StoreError::Stopped);
            }
            let set = self.placement(key);
            let target = match hint.take().or_else(|| set.first().cloned()) {
                Some(t) => t,
                None => {
                    return Err(StoreError::NoMember {
                        role: key.role.clone(),
                    })
                }
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let answer = if target.name == self.me.name {
                Ok(self.serve(&self.me.name, req.clone()).await)
            } else {
                let timeout = if retry == Retry::Read {
                    self.cfg.call_timeout.min(remaining)
                } else {
                    // The owner replicates before answering: give it the whole request time.
                    remaining.max(Duration::from_millis(1))
                };
                let body = body.get_or_insert_with(|| encode(&req)).clone();
                self.call_addr(&target, body, timeout).await
            };
            match answer {
                Ok(Response::NotOwner { owner, addr }) => {
                    last = format!("{} says {owner} owns {key}", target.name);
                    redirects += 1;
                    if redirects <= 2 && owner != target.name {
                        hint = self
                            .peer_addr(&owner)
                            .or(addr.map(|addr| PeerAddr { name: owner, addr }));
                        if hint.is_some() {
                            continue;
                        }
                    }
                }
                Ok(answer) => {
                    if let (Some(t), true) = (self.timers.get(), retry != Retry::Read) {
                        let h = if target.name == self.me.name {
                            &t.write_local
                        } else {
                            &t.write_remote
                        };
                        h.observe(started.elapsed());
                    }
                    return Ok(answer);
                }
                Err(e) => {
                    if retry == Retry::Read {
                        if let Some(found) = self.read_replicas(key, &set, &target, deadline).await
                        {
                            return Ok(found);
                        }
                    }
                    let again = match &e {
                        PeerError::Unreachable(_) | PeerError::Refused(_) => true,
                        PeerError::Timeout | PeerError::Lost(_) => retry != Retry::Once,
                        PeerError::Remote(_) => false,
                    };
                    if !again {
                        return Err(match e {
                            PeerError::Timeout | PeerError::Lost(_) => {
                                StoreError::Uncertain(format!("{}: {e}", target.name))
                            }
                            e => StoreError::Peer(e),
                        });
                    }
                    last = format!("{}: {e}", target.name);
                }
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Unavailable(last));
            }
            pause(&mut view, deadline).await;
            redirects = 0;
        }
    }

    /// Asks the other replicas for a key whose owner could not be reached.
    async fn read_replicas(
        &self,
        key: &StoreKey,
        set: &[PeerAddr],
        owner: &PeerAddr,
        deadline: Instant,
    ) -> Option<Response> {
        let body = encode(&Request::Get {
            key: key.clone(),
            replica: true,
        });
        for r in set.iter().filter(|r| r.name != owner.name) {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return None;
            }
            let answer = if r.name == self.me.name {
                Ok(Response::Value(
                    self.lock().machine.read(key, now_ms()).cloned(),
                ))
            } else {
                self.call_addr(r, body.clone(), self.cfg.call_timeout.min(remaining))
                    .await
            };
            if let Ok(found @ Response::Value(_)) = answer {
                return Some(found);
            }
        }
        None
    }
}

/// Waits for the view to change or a short pause, whichever comes first, but not past
/// `deadline`.
async fn pause(view: &mut watch::Receiver<Arc<View>>, deadline: Instant) {
    let wait = RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now()));
    tokio::select! {
        r = view.changed() => {
            if r.is_err() {
                tokio::time::sleep(wait).await;
            }
        }
        _ = tokio::time::sleep(wait) => {}
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use onehop_overlay::ring::Rings;
    use onehop_overlay::status::{Kind, Member, NetworkStatus, Role};

    use super::*;
    use crate::store::machine::MachineConfig;

    fn view(names: &[&str], version: u64, since: u64) -> Arc<View> {
        view_since(names, version, |_| since)
    }

    fn view_since(names: &[&str], version: u64, since: impl Fn(&str) -> u64) -> Arc<View> {
        let members = names
            .iter()
            .enumerate()
            .map(|(i, n)| Member {
                name: n.to_string(),
                kind: Kind::Node,
                roles: vec![Role::new("registrar").unwrap()],
                endpoints: vec![],
                since: since(n),
                ip: IpAddr::from([127, 0, 0, i as u8 + 1]),
            })
            .map(Arc::new)
            .collect();
        let status = NetworkStatus {
            term: 1,
            version,
            manager: "m1".into(),
            members,
        };
        let rings = Rings::from_status(&status, 100);
        Arc::new(View {
            status: Some(Arc::new(status)),
            rings,
        })
    }

    fn owners(st: &State) -> Vec<Vec<String>> {
        (0..200)
            .map(|i| {
                let k = StoreKey::new("registrar", format!("user{i}@example.test"));
                st.machine.placement(&k).set
            })
            .collect()
    }

    /// A request that read the node's view just before a newer one reached the machine
    /// hands the older view in afterwards: it is ignored, and the machine keeps the rings of
    /// the newest view (it used to put the older rings back, and settle its hand-off there).
    #[test]
    fn an_older_view_never_replaces_a_newer_one() {
        let mut st = State {
            machine: Machine::new("node1", MachineConfig::default()),
            view: None,
        };
        let v10 = view(&["node1", "node3", "node4"], 10, 5);
        let v11 = view(&["node1", "node2", "node3", "node4"], 11, 5);
        assert!(st.advance(v10.clone(), 1_000).is_some());
        let under_v10 = owners(&st);
        assert!(st.advance(v11.clone(), 2_000).is_some());
        let under_v11 = owners(&st);
        assert_ne!(under_v10, under_v11, "node2 owns some of the keys");
        assert!(
            st.advance(v10.clone(), 3_000).is_none(),
            "the older view is not applied"
        );
        assert_eq!(owners(&st), under_v11);
        assert!(Arc::ptr_eq(st.view.as_ref().unwrap(), &v11));
        // The same view again, or one with the same (term, version), is nothing new either.
        assert!(st.advance(v11.clone(), 4_000).is_none());
        assert!(st.advance(view(&["node1"], 11, 5), 5_000).is_none());
        assert_eq!(owners(&st), under_v11);
    }

    /// A member that restarted between two views (a new `since` in both) is handed its keys
    /// back: the machine sees the rings without it first (a ring change more than the view
    /// itself makes).
    #[test]
    fn a_restarted_member_is_shown_gone_and_back() {
        let mut st = State {
            machine: Machine::new("node1", MachineConfig::default()),
            view: None,
        };
        st.advance(view(&["node1", "node2"], 1, 5), 1_000).unwrap();
        let again = view_since(&["node1", "node2"], 2, |n| if n == "node2" { 7 } else { 5 });
        st.advance(again, 2_000).unwrap();
        assert_eq!(
            st.machine.epoch(),
            3,
            "one change for the interim rings, one back"
        );
    }
}
