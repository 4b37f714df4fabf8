//! Starting a manager's Raft node and the handle the rest of the manager uses.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{Config, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::log_store::LogStore;
use super::network::{Forwarded, Network, RaftReply, RaftRpc, RaftTransport, TransportError};
use super::state_machine::{StateMachineStore, StoreReader};
use super::types::{ManagerNode, NodeId, Request, Response, TypeConfig};
use futures::future::BoxFuture;

/// Raft timer settings, in milliseconds.
///
/// `election_min_ms..election_max_ms` is how long a follower that stopped hearing from the
/// leader waits before it campaigns, i.e. the failure-detection part of a failover.
///
/// openraft 0.9 makes such a follower wait `lease + t`, where `lease` is its
/// `election_timeout_max` (a follower that heard from a leader within `lease` refuses to vote for
/// anyone else) and `t` is a per-node random value in `[election_timeout_min,
/// election_timeout_max)`. [`RaftTimings::to_config`] therefore passes half of each bound to
/// openraft, so the wait falls in `[(election_min_ms + election_max_ms) / 2, election_max_ms)`:
/// 450..600 ms with the defaults; a new leader is then in place after that plus at most one
/// openraft tick (`1.5 * heartbeat_ms`) and one Vote round trip. Elections that do not follow a
/// leader (fresh cluster, split vote) wait only `t` (150..300 ms by default).
///
/// Constraints (checked by [`start`]): `election_min_ms / 2 > heartbeat_ms` and
/// `election_max_ms / 2 > election_min_ms / 2`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTimings {
    /// Leader heartbeat interval (also the AppendEntries RPC deadline). openraft ticks every
    /// `1.5 * heartbeat_ms`, so heartbeats actually leave at that period.
    pub heartbeat_ms: u64,
    /// Lower bound of the failure-detection window (see the type docs).
    pub election_min_ms: u64,
    /// Upper bound of the failure-detection window (see the type docs).
    pub election_max_ms: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_min_ms: 300,
            election_max_ms: 600,
        }
    }
}

impl RaftTimings {
    /// Build and validate the openraft configuration for these timings.
    pub fn to_config(&self) -> anyhow::Result<Config> {
        let config = Config {
            cluster_name: "onehop-managers".to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms / 2,
            election_timeout_max: self.election_max_ms / 2,
            install_snapshot_timeout: 2_000,
            // The log only holds elections, membership and rare provisioning writes: snapshot
            // every 1000 entries, keep 100 behind it, purge (= rewrite the log file) in batches.
            snapshot_policy: SnapshotPolicy::LogsSinceLast(1_000),
            max_in_snapshot_log_to_keep: 100,
            purge_batch_size: 256,
            ..Config::default()
        };
        config
            .validate()
            .with_context(|| format!("invalid raft timings {self:?}"))
    }

    /// openraft's leader lease: how long a follower refuses to vote after hearing from a leader.
    fn follower_lease(&self) -> Duration {
        Duration::from_millis(self.election_max_ms / 2)
    }

    /// How often the leadership watcher re-evaluates the lease.
    fn recheck(&self) -> Duration {
        Duration::from_millis((self.heartbeat_ms / 2).max(1))
    }

    /// How long a leader may go without a quorum acknowledgement and still call itself active:
    /// the followers' lease minus the watcher's re-evaluation period, so a deposed leader drops
    /// `is_me` before any follower of its quorum may vote for a new one.
    fn active_lease(&self) -> Duration {
        self.follower_lease().saturating_sub(self.recheck())
    }
}

/// Who leads the manager cluster, as seen by this manager.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leadership {
    /// Current Raft term of this manager.
    pub term: u64,
    /// Leader known to this manager for `term`, if any.
    pub leader: Option<NodeId>,
    /// This manager is the leader of `term` and a quorum acknowledged it recently (within
    /// `(election_max_ms - heartbeat_ms) / 2`): it is the active manager. At most one manager
    /// reports `true` at any time (up to clock-rate differences).
    pub is_me: bool,
}

fn leadership_from(
    m: &RaftMetrics<NodeId, ManagerNode>,
    age: Duration,
    lease: Duration,
) -> Leadership {
    let leader_state =
        m.running_state.is_ok() && m.state == ServerState::Leader && m.current_leader == Some(m.id);
    let acked_recently = m
        .millis_since_quorum_ack
        .is_some_and(|ms| Duration::from_millis(ms) + age <= lease);
    Leadership {
        term: m.current_term,
        leader: m.current_leader,
        is_me: leader_state && acked_recently,
    }
}

/// Sending side of the leadership watch. Once stopped, `is_me` stays false even if a
/// concurrently running watcher publishes afterwards.
struct LeadershipTx {
    tx: watch::Sender<Leadership>,
    stopped: AtomicBool,
}

impl LeadershipTx {
    fn publish(&self, mut l: Leadership) {
        self.tx.send_if_modified(|cur| {
            // Read under the watch lock: ordered with `stop()`'s update.
            l.is_me &= !self.stopped.load(Ordering::SeqCst);
            let changed = *cur != l;
            *cur = l;
            changed
        });
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.tx
            .send_if_modified(|l| std::mem::replace(&mut l.is_me, false));
    }
}

/// Error of [`RaftHandle::write`].
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// This manager is not the leader; retry on `leader_id` (unknown during an election).
    #[error("not the leader; forward to {leader_id:?}")]
    ForwardToLeader {
        leader_id: Option<NodeId>,
        leader_node: Option<ManagerNode>,
    },
    /// No outcome within the deadline (leader lost its quorum?). The write may still be applied.
    #[error("raft write not committed within {0:?}")]
    Timeout(Duration),
    /// Raft is shutting down or failed.
    #[error("raft write failed: {0}")]
    Raft(RaftError<NodeId, ClientWriteError<NodeId, ManagerNode>>),
    /// No leader was known within the deadline (an election, or no quorum). Nothing was
    /// written.
    #[error("no active manager within {0:?}")]
    NoLeader(Duration),
    /// The write was forwarded to the leader and failed there, or its outcome is unknown (the
    /// leader or the link to it failed while it was in flight).
    #[error("forwarded write: {0}")]
    Forward(String),
}

/// Sends a client write to the leader (a [`RaftRpc::ClientWrite`] over the managers' transport).
type ForwardFn = Arc<
    dyn Fn(NodeId, ManagerNode, Request) -> BoxFuture<'static, Result<RaftReply, TransportError>>
        + Send
        + Sync,
>;

/// A running Raft member of the manager cluster.
#[derive(Clone)]
pub struct RaftHandle {
    id: NodeId,
    raft: Raft<TypeConfig>,
    store: StoreReader,
    leadership_tx: Arc<LeadershipTx>,
    leadership_rx: watch::Receiver<Leadership>,
    watcher: AbortHandle,
    write_timeout: Duration,
    forward: ForwardFn,
}

impl RaftHandle {
    /// This manager's node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The underlying openraft instance (metrics, `wait`, membership changes, RPC handling).
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Local read access to the applied provisioning store.
    pub fn store(&self) -> &StoreReader {
        &self.store
    }

    /// Leadership updates (changes only).
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership_rx.clone()
    }

    /// Latest leadership value.
    pub fn current_leadership(&self) -> Leadership {
        *self.leadership_rx.borrow()
    }

    /// Replicate `req` through Raft and apply it; only the leader accepts writes.
    pub async fn write(&self, req: Request) -> Result<Response, WriteError> {
        match tokio::time::timeout(self.write_timeout, self.raft.client_write(req)).await {
            Err(_) => Err(WriteError::Timeout(self.write_timeout)),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(WriteError::ForwardToLeader {
                    leader_id: f.leader_id,
                    leader_node: f.leader_node,
                })
            }
            Ok(Err(e)) => Err(WriteError::Raft(e)),
        }
    }

    /// Replicate `req` wherever the leader is: written here when this manager leads, otherwise
    /// forwarded to the leader over the managers' transport; waits through an election (up to
    /// the write timeout). A forwarded write is awaited until this manager has applied it too,
    /// so a read here right after sees it.
    pub async fn propose(&self, req: Request) -> Result<Response, WriteError> {
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        let mut leadership = self.leadership_rx.clone();
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Err(WriteError::NoLeader(self.write_timeout));
            }
            let (id, node) = match self.write(req.clone()).await {
                Err(WriteError::ForwardToLeader {
                    leader_id: Some(id),
                    leader_node: Some(node),
                }) if id != self.id => (id, node),
                Err(WriteError::ForwardToLeader { .. }) => {
                    // No leader known yet: wait for the next change of leadership.
                    let _ = tokio::time::timeout(remaining, leadership.changed()).await;
                    continue;
                }
                other => return other,
            };
            let call = (self.forward)(id, node.clone(), req.clone());
            match tokio::time::timeout(remaining, call).await {
                Err(_) => return Err(WriteError::Timeout(self.write_timeout)),
                Ok(Err(TransportError::Unreachable(e))) => {
                    return Err(WriteError::Forward(format!(
                        "leader {} unreachable ({e}); the outcome is unknown",
                        node.name
                    )))
                }
                Ok(Err(e)) => return Err(WriteError::Forward(e.to_string())),
                Ok(Ok(RaftReply::ClientWrite(Forwarded::Written { response, log_id }))) => {
                    let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let _ = self
                        .raft
                        .wait(Some(wait.max(Duration::from_millis(100))))
                        .applied_index_at_least(Some(log_id.index), "forwarded write")
                        .await;
                    return Ok(response);
                }
                Ok(Ok(RaftReply::ClientWrite(Forwarded::NotLeader { .. }))) => {
                    // Leadership moved under us; nothing was written. Try again.
                    let _ = tokio::time::timeout(
                        Duration::from_millis(50).min(remaining),
                        leadership.changed(),
                    )
                    .await;
                    continue;
                }
                Ok(Ok(RaftReply::ClientWrite(Forwarded::Failed(e)))) => {
                    return Err(WriteError::Forward(e))
                }
                Ok(Ok(_)) => {
                    return Err(WriteError::Forward(
                        "unexpected reply to a forwarded write".into(),
                    ))
                }
            }
        }
    }

    /// Stop the Raft node (idempotent). Leadership reports `is_me: false` afterwards.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        self.leadership_tx.stop();
        self.watcher.abort();
        self.raft
            .shutdown()
            .await
            .map_err(|e| anyhow::anyhow!("raft core task failed: {e}"))
    }
}

/// Open the storage in `dir`, start Raft node `id` and bootstrap the static cluster `peers`
/// (which must contain `id`, and be identical on every manager) if the log is fresh.
pub async fn start<T: RaftTransport>(
    id: NodeId,
    dir: &Path,
    peers: BTreeMap<NodeId, ManagerNode>,
    transport: T,
    timings: RaftTimings,
) -> anyhow::Result<RaftHandle> {
    start_with_cache(
        id,
        dir,
        peers,
        transport,
        timings,
        crate::provision::db::DEFAULT_CACHE,
    )
    .await
}

/// [`start`] with `cache` bytes of page cache for the provisioning database.
pub async fn start_with_cache<T: RaftTransport>(
    id: NodeId,
    dir: &Path,
    peers: BTreeMap<NodeId, ManagerNode>,
    transport: T,
    timings: RaftTimings,
    cache: usize,
) -> anyhow::Result<RaftHandle> {
    anyhow::ensure!(
        peers.contains_key(&id),
        "raft peers {:?} do not contain this manager ({id})",
        peers.keys()
    );
    let config = timings.to_config()?;

    let d = dir.to_path_buf();
    let (log_store, sm) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        Ok((
            LogStore::open(&d)?,
            StateMachineStore::open_with_cache(&d, cache)?,
        ))
    })
    .await
    .context("raft storage open task")?
    .with_context(|| format!("opening raft storage in {}", dir.display()))?;
    let store = sm.reader();

    let backoff = Duration::from_millis(timings.election_min_ms);
    let transport = Arc::new(transport);
    let fwd = transport.clone();
    let forward: ForwardFn = Arc::new(move |id, node, req| {
        let t = fwd.clone();
        Box::pin(async move { t.call(id, &node, RaftRpc::ClientWrite(req)).await })
    });
    let raft = Raft::new(
        id,
        Arc::new(config),
        Network::shared(id, transport, backoff),
        log_store,
        sm,
    )
    .await
    .context("starting raft")?;

    if let Err(e) = bootstrap(&raft, id, &peers).await {
        let _ = raft.shutdown().await;
        return Err(e);
    }

    let lease = timings.active_lease();
    let mut metrics = raft.metrics();
    let (tx, rx) = watch::channel(leadership_from(
        &metrics.borrow_and_update(),
        Duration::ZERO,
        lease,
    ));
    let tx = Arc::new(LeadershipTx {
        tx,
        stopped: AtomicBool::new(false),
    });
    let watcher_tx = tx.clone();
    let recheck = timings.recheck();
    let watcher = tokio::spawn(async move {
        let mut received = Instant::now();
        loop {
            tokio::select! {
                changed = metrics.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    received = Instant::now();
                }
                // Re-evaluate the lease even if the core stops publishing metrics.
                _ = tokio::time::sleep(recheck) => {}
            }
            watcher_tx.publish(leadership_from(
                &metrics.borrow(),
                received.elapsed(),
                lease,
            ));
        }
        watcher_tx.stop();
    });

    Ok(RaftHandle {
        id,
        raft,
        store,
        leadership_tx: tx,
        leadership_rx: rx,
        watcher: watcher.abort_handle(),
        write_timeout: Duration::from_millis(timings.election_max_ms.saturating_mul(10).max(2_000)),
        forward,
    })
}

/// Initialise a pristine node with the full static membership. Every manager does the same with
/// the identical `peers`, which openraft allows (first log entry = that membership at index 0);
/// a node that already has a log or a vote answers `NotAllowed`, which is expected on restart.
async fn bootstrap(
    raft: &Raft<TypeConfig>,
    id: NodeId,
    peers: &BTreeMap<NodeId, ManagerNode>,
) -> anyhow::Result<()> {
    if raft.is_initialized().await.context("raft is_initialized")? {
        let m = raft.metrics().borrow().membership_config.clone();
        let stored: BTreeMap<NodeId, ManagerNode> =
            m.nodes().map(|(k, v)| (*k, v.clone())).collect();
        if &stored != peers {
            tracing::warn!(
                id,
                ?stored,
                configured = ?peers,
                "raft membership on disk differs from the configured peers; keeping the stored one"
            );
        }
        tracing::info!(id, "raft log present, not bootstrapping");
        return Ok(());
    }
    match raft.initialize(peers.clone()).await {
        Ok(()) => {
            tracing::info!(id, peers = ?peers.keys(), "raft cluster bootstrapped");
            Ok(())
        }
        Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
            tracing::info!(id, "raft already initialised: {e}");
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context("raft initialize")),
    }
}
