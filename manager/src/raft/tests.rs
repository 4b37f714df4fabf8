//! Tests: storage (openraft suite, vote durability, torn records, purge/truncate, snapshots) and
//! 3-node clusters over an in-memory transport (election, failover, replication, restart).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{
    CommittedLeaderId, EntryPayload, Membership, Raft, RaftLogReader, RaftMetrics,
    RaftSnapshotBuilder, ServerState,
};
use tempfile::TempDir;
use tokio::sync::watch;
use tokio::time::Instant;

use super::types::{Entry, LogId, StorageError, StoredMembership, Vote};
use super::*;

// ---------------------------------------------------------------------------------------------
// helpers

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn set_entry(term: u64, index: u64, key: &str, value: &str) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Request::Set {
            key: key.to_string(),
            value: value.to_string(),
        }),
    }
}

fn entries(term: u64, range: std::ops::Range<u64>) -> Vec<Entry> {
    range
        .map(|i| set_entry(term, i, &format!("k{i}"), &format!("v{i}")))
        .collect()
}

async fn all_entries(store: &mut LogStore) -> Vec<Entry> {
    store.try_get_log_entries(..).await.unwrap()
}

fn indexes(es: &[Entry]) -> Vec<u64> {
    es.iter().map(|e| e.log_id.index).collect()
}

// ---------------------------------------------------------------------------------------------
// in-memory transport

/// All nodes of a test cluster; `cut(id)` isolates a node (both directions).
#[derive(Default)]
struct MemNet {
    nodes: Mutex<HashMap<NodeId, Raft<TypeConfig>>>,
    cut: Mutex<HashSet<NodeId>>,
}

impl MemNet {
    fn transport(self: &Arc<Self>, me: NodeId) -> MemTransport {
        MemTransport {
            me,
            net: self.clone(),
        }
    }

    fn register(&self, id: NodeId, raft: Raft<TypeConfig>) {
        self.nodes.lock().unwrap().insert(id, raft);
    }

    /// Isolate / kill `id`: no RPC reaches it or leaves it any more.
    fn cut(&self, id: NodeId) {
        self.cut.lock().unwrap().insert(id);
        self.nodes.lock().unwrap().remove(&id);
    }

    fn heal(&self, id: NodeId) {
        self.cut.lock().unwrap().remove(&id);
    }
}

/// One node's view of the [`MemNet`]. Messages go through the bincode wire encoding, as they
/// would over QUIC.
struct MemTransport {
    me: NodeId,
    net: Arc<MemNet>,
}

impl RaftTransport for MemTransport {
    fn call(
        &self,
        target: NodeId,
        _node: &ManagerNode,
        rpc: RaftRpc,
    ) -> impl Future<Output = Result<RaftReply, TransportError>> + Send {
        let peer = {
            let cut = self.net.cut.lock().unwrap();
            if cut.contains(&self.me) || cut.contains(&target) {
                None
            } else {
                self.net.nodes.lock().unwrap().get(&target).cloned()
            }
        };
        let wire = rpc.encode();
        async move {
            let raft = peer.ok_or_else(|| TransportError::Unreachable(format!("node {target}")))?;
            let wire = wire.map_err(|e| TransportError::Other(e.to_string()))?;
            let rpc = RaftRpc::decode(&wire).map_err(|e| TransportError::Other(e.to_string()))?;
            let reply = handle_rpc(&raft, rpc).await;
            let wire = reply
                .encode()
                .map_err(|e| TransportError::Other(e.to_string()))?;
            RaftReply::decode(&wire).map_err(|e| TransportError::Other(e.to_string()))
        }
    }
}

type Metrics = RaftMetrics<NodeId, ManagerNode>;

/// Wait until `check` accepts the metrics of all `rafts` (re-evaluated on every metrics change).
async fn wait_metrics<T>(
    rafts: &[Raft<TypeConfig>],
    timeout: Duration,
    what: &str,
    mut check: impl FnMut(&[Metrics]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut rxs: Vec<watch::Receiver<Metrics>> = rafts.iter().map(|r| r.metrics()).collect();
    loop {
        let snap: Vec<Metrics> = rxs
            .iter_mut()
            .map(|rx| rx.borrow_and_update().clone())
            .collect();
        if let Some(v) = check(&snap) {
            return v;
        }
        let any_change =
            futures::future::select_all(rxs.iter_mut().map(|rx| Box::pin(rx.changed())));
        match tokio::time::timeout_at(deadline, any_change).await {
            Err(_) => panic!("timed out after {timeout:?} waiting for {what}; metrics: {snap:#?}"),
            Ok((Err(_), i, _)) => panic!("raft {i} shut down while waiting for {what}"),
            Ok((Ok(()), _, _)) => {}
        }
    }
}

/// Wait until `rx` holds a value accepted by `check`.
async fn wait_watch<T: Clone>(
    rx: &mut watch::Receiver<T>,
    timeout: Duration,
    what: &str,
    check: impl FnMut(&T) -> bool,
) -> T {
    match tokio::time::timeout(timeout, rx.wait_for(check)).await {
        Ok(Ok(v)) => v.clone(),
        Ok(Err(_)) => panic!("watch closed while waiting for {what}"),
        Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// The single leader all given nodes agree on, with its term.
fn agreed_leader(ms: &[Metrics]) -> Option<(NodeId, u64)> {
    let leaders: Vec<&Metrics> = ms
        .iter()
        .filter(|m| m.state == ServerState::Leader)
        .collect();
    if leaders.len() != 1 {
        return None;
    }
    let (id, term) = (leaders[0].id, leaders[0].current_term);
    ms.iter()
        .all(|m| m.current_leader == Some(id) && m.current_term == term)
        .then_some((id, term))
}

struct Cluster {
    net: Arc<MemNet>,
    dirs: BTreeMap<NodeId, TempDir>,
    peers: BTreeMap<NodeId, ManagerNode>,
    handles: BTreeMap<NodeId, RaftHandle>,
    timings: RaftTimings,
}

impl Cluster {
    async fn new(n: u64, timings: RaftTimings) -> Self {
        let peers: BTreeMap<NodeId, ManagerNode> = (1..=n)
            .map(|i| {
                (
                    i,
                    ManagerNode::new(format!("mgr{i}"), format!("127.0.0.1:{}", 7000 + i)),
                )
            })
            .collect();
        let mut c = Cluster {
            net: Arc::new(MemNet::default()),
            dirs: peers
                .keys()
                .map(|&i| (i, tempfile::tempdir().unwrap()))
                .collect(),
            peers,
            handles: BTreeMap::new(),
            timings,
        };
        for id in 1..=n {
            c.start_node(id).await;
        }
        c
    }

    /// Start `id` from its directory, still cut off from the network.
    async fn start_isolated(&mut self, id: NodeId) -> RaftHandle {
        self.net.cut(id);
        let h = start(
            id,
            self.dirs[&id].path(),
            self.peers.clone(),
            self.net.transport(id),
            self.timings,
        )
        .await
        .unwrap();
        self.handles.insert(id, h.clone());
        h
    }

    fn connect(&self, id: NodeId) {
        self.net.register(id, self.handles[&id].raft().clone());
        self.net.heal(id);
    }

    async fn start_node(&mut self, id: NodeId) -> RaftHandle {
        let h = self.start_isolated(id).await;
        self.connect(id);
        h
    }

    async fn stop_node(&mut self, id: NodeId) {
        let h = self.handles.remove(&id).unwrap();
        self.net.cut(id);
        h.shutdown().await.unwrap();
    }

    fn rafts(&self) -> Vec<Raft<TypeConfig>> {
        self.handles.values().map(|h| h.raft().clone()).collect()
    }

    async fn leader(&self, timeout: Duration) -> (NodeId, u64) {
        wait_metrics(&self.rafts(), timeout, "one agreed leader", agreed_leader).await
    }

    /// Wait until every running node applied at least what `leader` applied.
    async fn wait_replicated(&self, leader: NodeId) {
        // The state machine's own pointer: metrics may lag behind a just-returned write.
        let applied = self.handles[&leader].store().last_applied();
        wait_metrics(&self.rafts(), Duration::from_secs(2), "replication", |ms| {
            ms.iter().all(|m| m.last_applied >= applied).then_some(())
        })
        .await;
    }

    /// Wait until all running nodes hold the same log (so no survivor of a crash lags).
    async fn wait_logs_in_sync(&self) {
        wait_metrics(
            &self.rafts(),
            Duration::from_secs(3),
            "logs in sync",
            |ms| {
                let first = (ms[0].last_log_index, ms[0].last_applied);
                ms.iter()
                    .all(|m| (m.last_log_index, m.last_applied) == first)
                    .then_some(())
            },
        )
        .await;
    }

    async fn shutdown(self) {
        for h in self.handles.values() {
            h.shutdown().await.unwrap();
        }
    }
}

fn set(key: &str, value: &str) -> Request {
    Request::Set {
        key: key.to_string(),
        value: value.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// storage

struct TempStoreBuilder;

impl openraft::testing::StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir>
    for TempStoreBuilder
{
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::open(dir.path()).unwrap();
        let sm = StateMachineStore::open(dir.path()).unwrap();
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    openraft::testing::Suite::test_all(TempStoreBuilder).unwrap();
}

#[tokio::test]
async fn vote_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.read_vote().await.unwrap(), None);
        store.save_vote(&Vote::new(3, 2)).await.unwrap();
    }
    let mut store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(3, 2)));

    let committed = Vote::new_committed(4, 1);
    store.save_vote(&committed).await.unwrap();
    drop(store);
    let mut store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.read_vote().await.unwrap(), Some(committed));
    assert!(!dir.path().join("raft-vote.tmp").exists());
}

#[tokio::test]
async fn log_and_pointers_persist_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = LogStore::open(dir.path()).unwrap();
        store.blocking_append(entries(1, 0..10)).await.unwrap();
        store.truncate(log_id(1, 7)).await.unwrap();
        store.blocking_append(entries(2, 7..9)).await.unwrap();
        store.save_committed(Some(log_id(2, 8))).await.unwrap();
    }
    let mut store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.open_report().dropped_bytes, 0);
    let all = all_entries(&mut store).await;
    assert_eq!(indexes(&all), (0..9).collect::<Vec<_>>());
    assert_eq!(all[6].log_id, log_id(1, 6));
    assert_eq!(all[7].log_id, log_id(2, 7));
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(2, 8)));

    store.purge(log_id(1, 4)).await.unwrap();
    drop(store);
    let mut store = LogStore::open(dir.path()).unwrap();
    assert_eq!(
        indexes(&all_entries(&mut store).await),
        (5..9).collect::<Vec<_>>()
    );
    let st = store.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 4)));
    assert_eq!(st.last_log_id, Some(log_id(2, 8)));

    // Purge everything: the last log id falls back to the purge point.
    store.purge(log_id(2, 8)).await.unwrap();
    drop(store);
    let mut store = LogStore::open(dir.path()).unwrap();
    assert!(all_entries(&mut store).await.is_empty());
    let st = store.get_log_state().await.unwrap();
    assert_eq!(st.last_log_id, Some(log_id(2, 8)));
    store.blocking_append(entries(2, 9..11)).await.unwrap();
    drop(store);
    let mut store = LogStore::open(dir.path()).unwrap();
    assert_eq!(indexes(&all_entries(&mut store).await), vec![9, 10]);
}

#[tokio::test]
async fn torn_or_corrupt_last_record_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("raft-log");
    {
        let mut store = LogStore::open(dir.path()).unwrap();
        store.blocking_append(entries(1, 0..5)).await.unwrap();
    }
    let full = std::fs::read(&log_path).unwrap();

    assert_eq!(LogStore::open(dir.path()).unwrap().open_report().entries, 5);

    // Where the last record starts = size of a log holding only the first four records.
    let last_start = {
        let d = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(d.path()).unwrap();
        s.blocking_append(entries(1, 0..4)).await.unwrap();
        std::fs::metadata(d.path().join("raft-log")).unwrap().len() as usize
    };
    // Cuts inside the last record (crash mid-append) lose exactly that record.
    for cut in [
        last_start + 1,
        last_start + 7,
        last_start + 8,
        full.len() - 1,
    ] {
        std::fs::write(&log_path, &full[..cut]).unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(
            store.open_report().dropped_bytes as usize,
            cut - last_start,
            "cut at {cut}"
        );
        assert_eq!(
            indexes(&all_entries(&mut store).await),
            vec![0, 1, 2, 3],
            "cut at {cut}"
        );
        // The damaged tail is gone from disk too: new appends land after valid data.
        assert_eq!(
            std::fs::metadata(&log_path).unwrap().len() as usize,
            last_start
        );
    }

    // A flipped bit in the last record fails its checksum.
    let mut bad = full.clone();
    *bad.last_mut().unwrap() ^= 0x40;
    std::fs::write(&log_path, &bad).unwrap();
    let mut store = LogStore::open(dir.path()).unwrap();
    assert!(store
        .open_report()
        .dropped_reason
        .as_deref()
        .unwrap()
        .contains("checksum"));
    assert_eq!(indexes(&all_entries(&mut store).await), vec![0, 1, 2, 3]);
    store.blocking_append(entries(2, 4..6)).await.unwrap();
    drop(store);
    let mut store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.open_report().dropped_bytes, 0);
    let all = all_entries(&mut store).await;
    assert_eq!(indexes(&all), vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(all[4].log_id, log_id(2, 4));
    drop(store);

    // Garbage with an absurd length after valid records.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&log_path)
        .unwrap();
    f.write_all(&[0xff; 13]).unwrap();
    drop(f);
    let mut store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.open_report().dropped_bytes, 13);
    assert_eq!(
        indexes(&all_entries(&mut store).await),
        vec![0, 1, 2, 3, 4, 5]
    );
}

#[tokio::test]
async fn snapshot_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let membership = Membership::new(vec![[1u64, 2, 3].into_iter().collect()], None);
    let built = {
        let mut sm = StateMachineStore::open(dir.path()).unwrap();
        let mut es = vec![Entry {
            log_id: log_id(1, 0),
            payload: EntryPayload::Membership(membership.clone()),
        }];
        es.extend(entries(1, 1..4));
        es.push(Entry {
            log_id: log_id(1, 4),
            payload: EntryPayload::Normal(Request::Delete { key: "k2".into() }),
        });
        let out = sm.apply(es).await.unwrap();
        assert_eq!(out.len(), 5);
        assert_eq!(out[4].previous.as_deref(), Some("v2"));
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap()
    };
    assert_eq!(built.meta.last_log_id, Some(log_id(1, 4)));

    let mut sm = StateMachineStore::open(dir.path()).unwrap();
    let (applied, m) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 4)));
    assert_eq!(m, StoredMembership::new(Some(log_id(1, 0)), membership));
    let reader = sm.reader();
    assert_eq!(reader.get("k1").await.as_deref(), Some("v1"));
    assert_eq!(reader.get("k2").await, None);
    assert_eq!(reader.snapshot_map().len(), 2);
    let cur = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(cur.meta, built.meta);

    // Install it on a fresh store: it is persisted there too.
    let dir2 = tempfile::tempdir().unwrap();
    {
        let mut sm2 = StateMachineStore::open(dir2.path()).unwrap();
        sm2.install_snapshot(&cur.meta, cur.snapshot).await.unwrap();
    }
    let sm2 = StateMachineStore::open(dir2.path()).unwrap();
    assert_eq!(sm2.reader().snapshot_map(), reader.snapshot_map());
    assert_eq!(sm2.reader().last_applied(), Some(log_id(1, 4)));
}

#[test]
fn rpc_wire_roundtrip() {
    let rpc = RaftRpc::Vote(openraft::raft::VoteRequest::new(
        Vote::new(7, 2),
        Some(log_id(6, 41)),
    ));
    let back = RaftRpc::decode(&rpc.encode().unwrap()).unwrap();
    assert_eq!(format!("{rpc:?}"), format!("{back:?}"));
    let reply = RaftReply::Vote(Err(openraft::error::RaftError::Fatal(
        openraft::error::Fatal::Stopped,
    )));
    let back = RaftReply::decode(&reply.encode().unwrap()).unwrap();
    assert_eq!(format!("{reply:?}"), format!("{back:?}"));
}

// ---------------------------------------------------------------------------------------------
// clusters

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_elect_exactly_one_leader() {
    let t0 = Instant::now();
    let c = Cluster::new(3, RaftTimings::default()).await;
    let (leader, term) = c.leader(Duration::from_secs(2)).await;
    let elapsed = t0.elapsed();
    println!("initial election: leader {leader} term {term} after {elapsed:?}");
    assert!(elapsed < Duration::from_secs(2));

    let mut rx = c.handles[&leader].leadership();
    let l = wait_watch(&mut rx, Duration::from_secs(1), "leader is_me", |l| l.is_me).await;
    assert_eq!(l.leader, Some(leader));
    assert!(l.term >= term);
    for (&id, h) in &c.handles {
        let l = h.current_leadership();
        if id != leader {
            assert!(!l.is_me, "follower {id} claims leadership: {l:?}");
        }
    }

    // Leadership stays stable and with the same holder for a while (heartbeats keep the lease).
    let rafts = c.rafts();
    let res = tokio::time::timeout(
        Duration::from_millis(1500),
        wait_metrics(&rafts, Duration::from_secs(3), "leader change", |ms| {
            (agreed_leader(ms) != Some((leader, term))).then_some(())
        }),
    )
    .await;
    assert!(res.is_err(), "leadership changed in a healthy cluster");
    assert!(c.handles[&leader].current_leadership().is_me);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_after_leader_stops() {
    let mut c = Cluster::new(3, RaftTimings::default()).await;
    let mut times = Vec::new();
    for round in 0..3 {
        let (old, old_term) = c.leader(Duration::from_secs(3)).await;
        let mut old_rx = c.handles[&old].leadership();
        wait_watch(
            &mut old_rx,
            Duration::from_secs(1),
            "old leader is_me",
            |l| l.is_me,
        )
        .await;

        // A survivor with a shorter log cannot win; that case (slower) is not what we time here.
        c.wait_logs_in_sync().await;

        let t0 = Instant::now();
        c.stop_node(old).await;
        assert!(!old_rx.borrow().is_me, "stopped leader still reports is_me");

        let survivors = c.rafts();
        let (new, new_term) =
            wait_metrics(&survivors, Duration::from_secs(3), "new leader", |ms| {
                agreed_leader(ms).filter(|&(_, t)| t > old_term)
            })
            .await;
        let elected = t0.elapsed();
        let mut new_rx = c.handles[&new].leadership();
        wait_watch(
            &mut new_rx,
            Duration::from_secs(1),
            "new leader is_me",
            |l| l.is_me,
        )
        .await;
        let active = t0.elapsed();
        println!(
            "failover round {round}: leader {old} (term {old_term}) stopped; leader {new} (term {new_term}) \
             elected after {elected:?}, is_me after {active:?}"
        );
        assert_ne!(new, old);
        assert!(new_term > old_term);
        assert!(
            elected < Duration::from_secs(1),
            "failover took {elected:?}"
        );
        times.push(elected);

        // Bring the old leader back from its directory; it rejoins as a follower.
        c.start_node(old).await;
        let (l, t) = c.leader(Duration::from_secs(3)).await;
        assert!(t >= new_term);
        assert!(!c.handles[&old].current_leadership().is_me || l == old);
    }
    println!("failover times: {times:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_on_leader_is_readable_everywhere() {
    let c = Cluster::new(3, RaftTimings::default()).await;
    let (leader, _) = c.leader(Duration::from_secs(2)).await;
    let lh = &c.handles[&leader];

    let r = lh.write(set("+15551234", "sip:alice@farm")).await.unwrap();
    assert_eq!(r.previous, None);
    let r = lh.write(set("+15551234", "sip:alice@farm2")).await.unwrap();
    assert_eq!(r.previous.as_deref(), Some("sip:alice@farm"));
    lh.write(set("+15559999", "sip:bob@farm")).await.unwrap();
    let r = lh
        .write(Request::Delete {
            key: "+15559999".into(),
        })
        .await
        .unwrap();
    assert_eq!(r.previous.as_deref(), Some("sip:bob@farm"));

    c.wait_replicated(leader).await;
    for (id, h) in &c.handles {
        assert_eq!(
            h.store().get("+15551234").await.as_deref(),
            Some("sip:alice@farm2"),
            "node {id}"
        );
        assert_eq!(h.store().get("+15559999").await, None, "node {id}");
        assert_eq!(h.store().snapshot_map().len(), 1, "node {id}");
    }

    // Followers refuse writes and name the leader.
    let follower = c.handles.keys().copied().find(|&id| id != leader).unwrap();
    match c.handles[&follower].write(set("x", "y")).await {
        Err(WriteError::ForwardToLeader {
            leader_id,
            leader_node,
        }) => {
            assert_eq!(leader_id, Some(leader));
            assert_eq!(leader_node.as_ref(), c.peers.get(&leader));
        }
        other => panic!("expected ForwardToLeader, got {other:?}"),
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_forwards_a_proposal_and_reads_it_back_at_once() {
    use crate::provision::model::{ProvisionCommand, ProvisionOp};
    let c = Cluster::new(3, RaftTimings::default()).await;
    let (leader, _) = c.leader(Duration::from_secs(2)).await;
    let follower = c.handles.keys().copied().find(|&id| id != leader).unwrap();
    let fh = &c.handles[&follower];
    let add = || {
        Request::Provision(Box::new(ProvisionCommand {
            at_ms: 1,
            op: ProvisionOp::AddDomain {
                name: "example.test".into(),
            },
        }))
    };
    let r = fh.propose(add()).await.unwrap();
    let result = r.provision.expect("a provisioning result");
    assert!(result.outcome.is_ok(), "{result:?}");
    assert_eq!(result.version, 1);
    // Read-your-writes on the follower that forwarded it.
    assert!(fh.store().db().domain("example.test").unwrap().is_some());
    // The same again: the leader's state machine refuses it, and the follower says so.
    let r = fh.propose(add()).await.unwrap();
    assert_eq!(r.provision.unwrap().outcome.unwrap_err().status, 409);
    // On the leader, propose writes locally.
    let lh = &c.handles[&leader];
    let r = lh.propose(set("k", "v")).await.unwrap();
    assert_eq!(r.previous, None);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_node_recovers_vote_log_and_state() {
    let mut c = Cluster::new(3, RaftTimings::default()).await;
    let (leader, _) = c.leader(Duration::from_secs(2)).await;
    c.handles[&leader].write(set("k", "v")).await.unwrap();
    c.wait_replicated(leader).await;

    for victim in [
        c.handles.keys().copied().find(|&id| id != leader).unwrap(),
        leader,
    ] {
        let before = c.handles[&victim].raft().metrics().borrow().clone();
        c.stop_node(victim).await;

        // Restart while still isolated: whatever it knows now came from its directory.
        let h = c.start_isolated(victim).await;
        let after = h.raft().metrics().borrow().clone();
        // An isolated manager never claims to be active, even if it was the leader before.
        assert!(!h.current_leadership().is_me);
        println!(
            "node {victim} restarted: term {} -> {}, vote {} -> {}, last log {:?} -> {:?}",
            before.current_term,
            after.current_term,
            before.vote,
            after.vote,
            before.last_log_index,
            after.last_log_index
        );
        assert!(after.current_term >= before.current_term);
        assert!(
            after.vote >= before.vote,
            "vote went back: {} -> {}",
            before.vote,
            after.vote
        );
        assert!(after.last_log_index >= before.last_log_index);
        assert_eq!(
            after.membership_config.membership(),
            before.membership_config.membership()
        );
        wait_metrics(
            &[h.raft().clone()],
            Duration::from_secs(2),
            "re-applied log",
            |ms| (ms[0].last_applied >= before.last_applied).then_some(()),
        )
        .await;
        assert_eq!(h.store().get("k").await.as_deref(), Some("v"));

        c.connect(victim);
        let (l, _) = c.leader(Duration::from_secs(3)).await;
        let key = format!("after-restart-of-{victim}");
        c.handles[&l].write(set(&key, "ok")).await.unwrap();
        c.wait_replicated(l).await;
        for h in c.handles.values() {
            assert_eq!(h.store().get(&key).await.as_deref(), Some("ok"));
            assert_eq!(h.store().get("k").await.as_deref(), Some("v"));
        }
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_and_purge_survive_restart() {
    let mut c = Cluster::new(3, RaftTimings::default()).await;
    let (leader, _) = c.leader(Duration::from_secs(2)).await;
    for i in 0..20 {
        c.handles[&leader]
            .write(set(&format!("n{i}"), &i.to_string()))
            .await
            .unwrap();
    }
    c.wait_replicated(leader).await;

    let victim = c.handles.keys().copied().find(|&id| id != leader).unwrap();
    let raft = c.handles[&victim].raft().clone();
    let applied = raft.metrics().borrow().last_applied;
    raft.trigger().snapshot().await.unwrap();
    wait_metrics(
        std::slice::from_ref(&raft),
        Duration::from_secs(2),
        "snapshot",
        |ms| (ms[0].snapshot >= applied).then_some(()),
    )
    .await;
    let upto = applied.unwrap().index;
    raft.trigger().purge_log(upto).await.unwrap();
    wait_metrics(
        std::slice::from_ref(&raft),
        Duration::from_secs(2),
        "purge",
        |ms| (ms[0].purged.map(|p| p.index) == Some(upto)).then_some(()),
    )
    .await;

    c.stop_node(victim).await;
    let h = c.start_isolated(victim).await;
    let m = h.raft().metrics().borrow().clone();
    assert_eq!(m.purged.map(|p| p.index), Some(upto));
    assert_eq!(m.snapshot, applied);
    wait_metrics(
        &[h.raft().clone()],
        Duration::from_secs(2),
        "applied",
        |ms| (ms[0].last_applied >= applied).then_some(()),
    )
    .await;
    for i in 0..20 {
        assert_eq!(h.store().get(&format!("n{i}")).await, Some(i.to_string()));
    }
    c.connect(victim);
    let (l, _) = c.leader(Duration::from_secs(3)).await;
    c.handles[&l].write(set("post", "purge")).await.unwrap();
    c.wait_replicated(l).await;
    assert_eq!(h.store().get("post").await.as_deref(), Some("purge"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_leader_is_inactive_before_a_new_one_is() {
    let c = Cluster::new(3, RaftTimings::default()).await;
    let (old, old_term) = c.leader(Duration::from_secs(2)).await;
    let mut old_rx = c.handles[&old].leadership();
    wait_watch(&mut old_rx, Duration::from_secs(1), "leader is_me", |l| {
        l.is_me
    })
    .await;

    // Watch every survivor for the first moment one of them becomes active.
    let mut first_active = Vec::new();
    for (&id, h) in &c.handles {
        if id != old {
            let mut rx = h.leadership();
            first_active.push(tokio::spawn(async move {
                wait_watch(&mut rx, Duration::from_secs(5), "new active", |l| l.is_me).await;
                Instant::now()
            }));
        }
    }

    let t0 = Instant::now();
    c.net.cut(old); // partition: the old leader keeps running
    wait_watch(
        &mut old_rx,
        Duration::from_secs(2),
        "old leader inactive",
        |l| !l.is_me,
    )
    .await;
    let old_inactive = Instant::now();
    let (new_active, _, others) = futures::future::select_all(first_active).await;
    let new_active = new_active.unwrap();
    others.iter().for_each(|t| t.abort());
    println!(
        "partition: old leader {old} inactive after {:?}, new leader active after {:?}",
        old_inactive - t0,
        new_active - t0
    );
    assert!(old_inactive < new_active, "two active managers at once");
    let survivors: Vec<_> = c
        .handles
        .iter()
        .filter(|(&id, _)| id != old)
        .map(|(_, h)| h.raft().clone())
        .collect();
    let (new, new_term) = wait_metrics(&survivors, Duration::from_secs(1), "new leader", |ms| {
        agreed_leader(ms).filter(|&(_, t)| t > old_term)
    })
    .await;

    // Heal: the old leader learns the higher term and follows.
    c.connect(old);
    let (l, t) = c.leader(Duration::from_secs(3)).await;
    assert_eq!((l, t), (new, new_term));
    assert!(!c.handles[&old].current_leadership().is_me);
    c.shutdown().await;
}

#[tokio::test]
async fn start_rejects_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let net = Arc::new(MemNet::default());
    let peers: BTreeMap<NodeId, ManagerNode> = [(1, ManagerNode::new("a", "127.0.0.1:1"))].into();
    let err = start(
        2,
        dir.path(),
        peers.clone(),
        net.transport(2),
        RaftTimings::default(),
    )
    .await;
    assert!(err.is_err());
    let bad = RaftTimings {
        heartbeat_ms: 200,
        ..RaftTimings::default()
    };
    assert!(start(1, dir.path(), peers, net.transport(1), bad)
        .await
        .is_err());
}

// ---------------------------------------------------------------------------------------------
// the client side of the network: what openraft is told when an RPC fails

/// A transport whose every call takes `delay` and then answers `result`.
struct SlowTransport {
    delay: Duration,
    unreachable: bool,
}

impl RaftTransport for SlowTransport {
    fn call(
        &self,
        target: NodeId,
        _node: &ManagerNode,
        _rpc: RaftRpc,
    ) -> impl Future<Output = Result<RaftReply, TransportError>> + Send {
        let (delay, unreachable) = (self.delay, self.unreachable);
        async move {
            tokio::time::sleep(delay).await;
            if unreachable {
                Err(TransportError::Unreachable(format!("node {target}")))
            } else {
                Ok(RaftReply::AppendEntries(Ok(
                    openraft::raft::AppendEntriesResponse::Success,
                )))
            }
        }
    }
}

async fn heartbeat_over(
    transport: SlowTransport,
) -> Result<
    openraft::raft::AppendEntriesResponse<NodeId>,
    openraft::error::RPCError<NodeId, ManagerNode, openraft::error::RaftError<NodeId>>,
> {
    use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
    let mut net = network::Network::new(1, transport, Duration::from_millis(300));
    let mut conn = net
        .new_client(2, &ManagerNode::new("manager2", "127.0.0.1:8001"))
        .await;
    let req = openraft::raft::AppendEntriesRequest {
        vote: Vote::new_committed(3, 1),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    conn.append_entries(req, RPCOption::new(Duration::from_millis(100)))
        .await
}

/// A reply later than the RPC deadline is a timeout (openraft sends the next heartbeat at its
/// next tick), not an unreachable peer (openraft then stops replicating to it for `backoff`,
/// 300 ms by default, and the follower, hearing nothing, starts an election). On links with
/// a round trip near `heartbeat_ms` the managers changed leader every few seconds.
#[tokio::test]
async fn a_late_reply_is_a_timeout_not_an_unreachable_peer() {
    use openraft::error::RPCError;
    let late = heartbeat_over(SlowTransport {
        delay: Duration::from_millis(150),
        unreachable: false,
    })
    .await;
    match late {
        Err(RPCError::Timeout(t)) => {
            assert_eq!((t.id, t.target), (1, 2));
            assert_eq!(t.timeout, Duration::from_millis(100));
        }
        other => panic!("a late reply gave {other:?}, not a timeout"),
    }
    // A peer that cannot be reached is still reported so (openraft backs off from it).
    let down = heartbeat_over(SlowTransport {
        delay: Duration::from_millis(1),
        unreachable: true,
    })
    .await;
    assert!(
        matches!(down, Err(RPCError::Unreachable(_))),
        "an unreachable peer gave {down:?}"
    );
    // In time: the reply.
    let ok = heartbeat_over(SlowTransport {
        delay: Duration::from_millis(50),
        unreachable: false,
    })
    .await;
    assert!(ok.is_ok(), "{ok:?}");
}
