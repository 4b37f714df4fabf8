//! The replicated store on several nodes in one process: each node has its own `PeerNet` on
//! its own loopback address (port 8002) with a certificate from a CA made for the test, and
//! a view the test builds and changes (a join, a crash, a rejoin).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use onehop_certs::testing::TestPki;
use onehop_node::peer::{PeerConfig, PeerNet, PEER_PORT};
use onehop_node::store::{Acks, PutOrGet, Store, StoreConfig, StoreError, Updater};
use onehop_node::view::View;
use onehop_overlay::crl::CrlState;
use onehop_overlay::net::{self, ConnTable, Timing};
use onehop_overlay::ring::{position, Rings};
use onehop_overlay::status::{Endpoint, Kind, Member, NetworkStatus, Role};
use onehop_overlay::tls::Credentials;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const ROLE: &str = "registrar";

/// One node: its transport, its store and the sender of its view.
struct Node {
    name: String,
    ip: IpAddr,
    peer: Arc<PeerNet>,
    store: Store,
    view: watch::Sender<Arc<View>>,
    shutdown: CancellationToken,
}

impl Node {
    async fn start(creds: &Arc<Credentials>, ip: IpAddr, cfg: StoreConfig) -> Node {
        let addr = SocketAddr::new(ip, PEER_PORT);
        // A node restarted on the address of a stopped one may find its socket still closing.
        let started = Instant::now();
        let endpoint = loop {
            match net::endpoint(
                addr,
                creds,
                &CrlState::default(),
                Timing::default(),
                Some(256),
            ) {
                Ok(e) => break e,
                Err(e) if started.elapsed() < Duration::from_secs(10) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("bind {addr}: {e}"),
            }
        };
        let peer = PeerNet::new(endpoint, ConnTable::default(), PeerConfig::default());
        let shutdown = CancellationToken::new();
        peer.spawn_server(shutdown.clone());
        let (view, rx) = watch::channel(Arc::new(View::default()));
        let store = Store::start(
            cfg,
            peer.clone(),
            Arc::new(creds.identity.clone()),
            rx,
            shutdown.clone(),
        );
        Node {
            name: creds.identity.name.clone(),
            ip,
            peer,
            store,
            view,
            shutdown,
        }
    }

    /// A crash: the store stops and every connection of the node ends at once.
    fn crash(self) {
        self.shutdown.cancel();
        self.peer.close();
    }
}

fn member(name: &str, ip: IpAddr) -> Member {
    Member {
        name: name.to_string(),
        kind: Kind::Node,
        roles: vec![Role::new(ROLE).unwrap()],
        endpoints: vec![Endpoint {
            service: "peer".into(),
            addr: SocketAddr::new(ip, PEER_PORT),
        }],
        since: 0,
        ip,
    }
}

fn view_of(members: &[(&str, IpAddr)], version: u64) -> Arc<View> {
    let mut members: Vec<Member> = members.iter().map(|(n, ip)| member(n, *ip)).collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let status = NetworkStatus {
        term: 1,
        version,
        manager: "m1".into(),
        members: members.into_iter().map(Arc::new).collect(),
    };
    let rings = Rings::from_status(&status, onehop_overlay::ring::DEFAULT_POINTS);
    Arc::new(View {
        status: Some(Arc::new(status)),
        rings,
    })
}

/// Gives every node in `nodes` the view made of `members`.
fn set_view(nodes: &[&Node], members: &[&Node], version: u64) -> Arc<View> {
    let list: Vec<(&str, IpAddr)> = members.iter().map(|n| (n.name.as_str(), n.ip)).collect();
    let v = view_of(&list, version);
    for n in nodes {
        n.view.send_replace(v.clone());
    }
    v
}

fn ip(net: u8, host: u8) -> IpAddr {
    IpAddr::from([127, 0, net, host])
}

fn test_config() -> StoreConfig {
    StoreConfig {
        purge_interval: Duration::from_millis(100),
        // The machine running the tests may be busy: give requests room.
        request_timeout: Duration::from_secs(10),
        call_timeout: Duration::from_secs(3),
        ..StoreConfig::default()
    }
}

/// Waits for `cond` (polled), up to `limit`; returns how long it took.
async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where each key is held: key -> names of the nodes holding a live entry.
fn holders(nodes: &[&Node]) -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for n in nodes {
        for k in n.store.local_keys(ROLE) {
            map.entry(k).or_default().push(n.name.clone());
        }
    }
    for v in map.values_mut() {
        v.sort();
    }
    map
}

/// Whether every key is held by exactly its replica set under `view` (and nothing else is).
fn placed(nodes: &[&Node], view: &View, keys: &[String], replicas: usize) -> bool {
    let held = holders(nodes);
    let ring = view.rings.get(ROLE).unwrap();
    held.len() == keys.len()
        && keys.iter().all(|k| {
            let mut want: Vec<String> = ring
                .replicas_at(position(k), replicas)
                .map(|m| m.name.clone())
                .collect();
            want.sort();
            held.get(k) == Some(&want)
        })
}

fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

/// Puts `binding of KEY` for an hour for each of `keys`, key i through `nodes[via[i]]`, 64
/// at a time; the results in no particular order.
async fn put_bindings(
    nodes: &[Node],
    keys: &[String],
    via: &[usize],
) -> Vec<Result<Acks, StoreError>> {
    stream::iter(keys.iter().zip(via))
        .map(|(k, &i)| {
            let store = nodes[i].store.clone();
            async move {
                store
                    .put(
                        ROLE,
                        k,
                        Bytes::from(format!("binding of {k}")),
                        Duration::from_secs(3600),
                    )
                    .await
            }
        })
        .buffer_unordered(64)
        .collect()
        .await
}

async fn read_all(nodes: &[&Node], keys: &[String]) {
    let jobs = nodes.iter().flat_map(|n| keys.iter().map(move |k| (*n, k)));
    let missing: Vec<String> = stream::iter(jobs)
        .map(|(n, k)| async move {
            let got = n.store.get(ROLE, k).await;
            match got {
                Ok(Some(v)) if v == format!("binding of {k}") => None,
                other => Some(format!("{k} from {}: {other:?}", n.name)),
            }
        })
        .buffer_unordered(128)
        .filter_map(|x| async move { x })
        .collect()
        .await;
    assert!(
        missing.is_empty(),
        "{} reads failed, first: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_keys_survive_a_crash_and_move_back_after_a_rejoin() {
    const N: usize = 10_000;
    const R: usize = 2;
    let dir = tempfile::tempdir().unwrap();
    let mut pki = TestPki::new(dir.path(), "example.test").unwrap();
    let names = ["node1", "node2", "node3", "node4", "node5"];
    let creds: Vec<Arc<Credentials>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            pki.issue(n, Kind::Node, ip(50, i as u8 + 1), &[ROLE])
                .unwrap()
        })
        .collect();
    let mut nodes = Vec::new();
    for (i, c) in creds.iter().enumerate() {
        nodes.push(Node::start(c, ip(50, i as u8 + 1), test_config()).await);
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let v1 = set_view(&all, &all, 1);

    // 10,000 puts, each through a random node.
    let keys: Vec<String> = (0..N).map(|i| format!("user{i}@example.test")).collect();
    let mut seed = 42u64;
    let via: Vec<usize> = (0..N)
        .map(|_| (lcg(&mut seed) % nodes.len() as u64) as usize)
        .collect();
    let started = Instant::now();
    let results = put_bindings(&nodes, &keys, &via).await;
    let put_time = started.elapsed();
    for r in &results {
        let acks = r.as_ref().expect("put");
        assert_eq!((acks.held, acks.wanted), (R, R));
    }
    eprintln!("10000 puts through random nodes: {put_time:?}");

    // Every key on exactly min(R, N) nodes, its replica set; readable from every node.
    assert!(placed(&all, &v1, &keys, R), "placement after the puts");
    let started = Instant::now();
    read_all(&all, &keys).await;
    eprintln!(
        "50000 reads (every key from every node): {:?}",
        started.elapsed()
    );

    // node3 crashes: out of the view, its transport closed.
    let mut nodes = nodes;
    let crashed = nodes.remove(2);
    let crashed_name = crashed.name.clone();
    let crashed_ip = crashed.ip;
    crashed.crash();
    let live: Vec<&Node> = nodes.iter().collect();
    let v2 = set_view(&live, &live, 2);
    let restore = wait_for(
        "replicas restored after the crash",
        Duration::from_secs(60),
        || placed(&live, &v2, &keys, R),
    )
    .await;
    eprintln!("crash of {crashed_name}: every key back on {R} of 4 nodes in {restore:?}");
    read_all(&live, &keys).await;

    // It comes back empty (same name, same address).
    let idx = names.iter().position(|n| *n == crashed_name).unwrap();
    let back = Node::start(&creds[idx], crashed_ip, test_config()).await;
    assert_eq!(back.store.local_len(), 0);
    nodes.push(back);
    let all: Vec<&Node> = nodes.iter().collect();
    let v3 = set_view(&all, &all, 3);
    let rejoin = wait_for(
        "keys moved back after the rejoin",
        Duration::from_secs(60),
        || placed(&all, &v3, &keys, R),
    )
    .await;
    let back = nodes.last().unwrap();
    eprintln!(
        "rejoin of {crashed_name}: placement whole again in {rejoin:?} ({} keys on it)",
        back.store.local_len()
    );
    assert!(back.store.local_len() > N / 10);
    read_all(&all, &keys).await;
    for n in &nodes {
        n.shutdown.cancel();
    }
}

/// Counts: the value is a big-endian u64, every operation adds one and replies the new count.
struct Counter;

impl Updater for Counter {
    fn apply(
        &self,
        _key: &str,
        current: Option<&Bytes>,
        op: &[u8],
        now_ms: u64,
    ) -> Result<(Option<Bytes>, u64, Bytes), String> {
        if op != b"+1" {
            return Err(format!("unknown op {op:?}"));
        }
        let n = match current {
            Some(b) => u64::from_be_bytes(b[..].try_into().map_err(|_| "not a counter")?),
            None => 0,
        } + 1;
        let v = Bytes::copy_from_slice(&n.to_be_bytes());
        Ok((Some(v.clone()), now_ms + 3_600_000, v))
    }
}

fn count(b: &Bytes) -> u64 {
    u64::from_be_bytes(b[..].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_from_several_nodes_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = TestPki::new(dir.path(), "example.test").unwrap();
    let mut nodes = Vec::new();
    for i in 0..3u8 {
        let c = pki
            .issue(
                &format!("node{}", i + 1),
                Kind::Node,
                ip(52, i + 1),
                &[ROLE],
            )
            .unwrap();
        nodes.push(Node::start(&c, ip(52, i + 1), test_config()).await);
    }
    for n in &nodes {
        n.store.register_updater(ROLE, Arc::new(Counter));
    }
    let all: Vec<&Node> = nodes.iter().collect();
    set_view(&all, &all, 1);

    let keys: Vec<String> = (0..4).map(|i| format!("counter{i}@example.test")).collect();
    const PER_TASK: usize = 40;
    // Enough tasks that an owner has more than 4 writes to replicate to one replica at once:
    // replication leaves in batches.
    const TASKS_PER_NODE: usize = 8;
    let mut tasks = Vec::new();
    for n in &nodes {
        for t in 0..TASKS_PER_NODE {
            let store = n.store.clone();
            let keys = keys.clone();
            tasks.push(tokio::spawn(async move {
                let mut replies = Vec::new();
                for i in 0..PER_TASK {
                    let k = &keys[(i + t) % keys.len()];
                    let (reply, acks) = store
                        .update(ROLE, k, Bytes::from_static(b"+1"))
                        .await
                        .expect("update");
                    assert_eq!((acks.held, acks.wanted), (2, 2));
                    replies.push((k.clone(), count(&reply)));
                }
                replies
            }));
        }
    }
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for t in tasks {
        for (k, c) in t.await.unwrap() {
            seen.entry(k).or_default().push(c);
        }
    }
    let total: usize = seen.values().map(Vec::len).sum();
    assert_eq!(total, nodes.len() * TASKS_PER_NODE * PER_TASK);
    for (k, mut counts) in seen {
        counts.sort_unstable();
        let n = counts.len() as u64;
        // Every update saw a distinct count: 1..=n, none lost, none applied twice.
        assert_eq!(counts, (1..=n).collect::<Vec<_>>(), "{k}");
        for node in &nodes {
            let v = node.store.get(ROLE, &k).await.unwrap().unwrap();
            assert_eq!(count(&v), n, "{k} read from {}", node.name);
        }
    }
    // A refused operation writes nothing and says why.
    let err = nodes[0]
        .store
        .update(ROLE, &keys[0], Bytes::from_static(b"*2"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Rejected(_)), "{err}");
    // A role no member bears.
    let err = nodes[0]
        .store
        .update("media_relay", "x", Bytes::from_static(b"+1"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NoMember { .. }), "{err}");
    for n in &nodes {
        n.shutdown.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_put_or_get_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = TestPki::new(dir.path(), "example.test").unwrap();
    let mut nodes = Vec::new();
    for i in 0..3u8 {
        let c = pki
            .issue(
                &format!("node{}", i + 1),
                Kind::Node,
                ip(53, i + 1),
                &[ROLE],
            )
            .unwrap();
        nodes.push(Node::start(&c, ip(53, i + 1), test_config()).await);
    }
    let all: Vec<&Node> = nodes.iter().collect();
    set_view(&all, &all, 1);

    // Expiry: short-lived entries disappear from reads, then from every node's memory.
    let ttl = Duration::from_secs(2);
    let written = Instant::now();
    let puts = (0..50).map(|i| {
        let store = nodes[i % 3].store.clone();
        async move {
            store
                .put(
                    ROLE,
                    &format!("short{i}@example.test"),
                    Bytes::from_static(b"soon gone"),
                    ttl,
                )
                .await
        }
    });
    for r in futures::future::join_all(puts).await {
        r.unwrap();
    }
    let got = nodes[1]
        .store
        .get(ROLE, "short7@example.test")
        .await
        .unwrap();
    let held: usize = nodes.iter().map(|n| n.store.local_len()).sum();
    // (Unless the machine was so slow that they expired already.)
    if written.elapsed() < ttl {
        assert_eq!(got, Some(Bytes::from_static(b"soon gone")));
        assert_eq!(held, 100, "50 entries on 2 nodes each");
    }
    wait_for("expired entries hidden", Duration::from_secs(10), || {
        nodes.iter().all(|n| n.store.local_len() == 0)
    })
    .await;
    assert_eq!(
        nodes[2]
            .store
            .get(ROLE, "short7@example.test")
            .await
            .unwrap(),
        None
    );
    wait_for("expired entries purged", Duration::from_secs(10), || {
        nodes.iter().all(|n| n.store.local_stored() == 0)
    })
    .await;

    // Put-or-get: the first stores, the next ones (from any node) get the existing value.
    let key = "session-42";
    let first = nodes[0]
        .store
        .put_or_get(
            ROLE,
            key,
            Bytes::from_static(b"first"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(
        matches!(first, PutOrGet::Stored(a) if a.held == 2),
        "{first:?}"
    );
    for n in &nodes {
        let again = n
            .store
            .put_or_get(
                ROLE,
                key,
                Bytes::from_static(b"second"),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert_eq!(again, PutOrGet::Existing(Bytes::from_static(b"first")));
    }

    // Remove: gone from every node's reads; a put-or-get then stores again.
    let acks = nodes[2].store.remove(ROLE, key).await.unwrap();
    assert_eq!((acks.held, acks.wanted), (2, 2));
    for n in &nodes {
        assert_eq!(n.store.get(ROLE, key).await.unwrap(), None);
    }
    let third = nodes[1]
        .store
        .put_or_get(
            ROLE,
            key,
            Bytes::from_static(b"third"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(matches!(third, PutOrGet::Stored(_)));
    assert_eq!(
        nodes[0].store.get(ROLE, key).await.unwrap(),
        Some(Bytes::from_static(b"third"))
    );

    // Too large a value is refused before it leaves the node.
    let big = Bytes::from(vec![0u8; StoreConfig::default().max_value + 1]);
    let err = nodes[0]
        .store
        .put(ROLE, "big", big, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
    for n in &nodes {
        n.shutdown.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_holds_everything_and_hands_over_to_a_joiner() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = TestPki::new(dir.path(), "example.test").unwrap();
    let c1 = pki.issue("node1", Kind::Node, ip(54, 1), &[ROLE]).unwrap();
    let c2 = pki.issue("node2", Kind::Node, ip(54, 2), &[ROLE]).unwrap();
    let n1 = Node::start(&c1, ip(54, 1), test_config()).await;
    set_view(&[&n1], &[&n1], 1);
    let keys: Vec<String> = (0..500).map(|i| format!("solo{i}@example.test")).collect();
    for k in &keys {
        let acks = n1
            .store
            .put(
                ROLE,
                k,
                Bytes::from(format!("binding of {k}")),
                Duration::from_secs(600),
            )
            .await
            .unwrap();
        // min(R, live members) = 1.
        assert_eq!((acks.held, acks.wanted), (1, 1));
    }
    let n2 = Node::start(&c2, ip(54, 2), test_config()).await;
    let v = set_view(&[&n1, &n2], &[&n1, &n2], 2);
    // Right after the join, reads through the newcomer already find everything (the new
    // owner fetches what it lacks during the hand-off).
    read_all(&[&n2], &keys).await;
    wait_for("both nodes hold every key", Duration::from_secs(30), || {
        placed(&[&n1, &n2], &v, &keys, 2)
    })
    .await;
    n1.shutdown.cancel();
    n2.shutdown.cancel();
}

/// Views that follow each other quickly while requests keep arriving: every request makes the
/// store catch up with the node's latest view, and one that read the view just before a newer
/// one was applied must not put the older rings back (the store would then settle its
/// hand-off on rings no other node holds, leaving keys on too few of their replicas until the
/// next change). Membership flips forty times between four nodes and three, under reads;
/// after the last view every key is on exactly its replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_view_changes_under_requests_never_roll_the_rings_back() {
    const N: usize = 2_000;
    const R: usize = 2;
    let dir = tempfile::tempdir().unwrap();
    let mut pki = TestPki::new(dir.path(), "example.test").unwrap();
    let mut nodes = Vec::new();
    for i in 0..4u8 {
        let c = pki
            .issue(
                &format!("node{}", i + 1),
                Kind::Node,
                ip(55, i + 1),
                &[ROLE],
            )
            .unwrap();
        nodes.push(Node::start(&c, ip(55, i + 1), test_config()).await);
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let three: Vec<&Node> = nodes[..3].iter().collect();
    set_view(&all, &all, 1);
    let keys: Vec<String> = (0..N).map(|i| format!("flip{i}@example.test")).collect();
    let via: Vec<usize> = (0..N).map(|i| i % nodes.len()).collect();
    let results = put_bindings(&nodes, &keys, &via).await;
    assert!(results.iter().all(Result::is_ok), "every put stored");
    wait_for(
        "placed under the first view",
        Duration::from_secs(20),
        || placed(&all, &set_view(&[], &all, 1), &keys, R),
    )
    .await;

    // Readers on every node while the views flip.
    let stop = CancellationToken::new();
    let mut readers = Vec::new();
    for (r, n) in nodes.iter().enumerate() {
        let store = n.store.clone();
        let keys = keys.clone();
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut i = r;
            while !stop.is_cancelled() {
                let batch = (0..16).map(|j| {
                    let store = store.clone();
                    let k = keys[(i + j * 97) % keys.len()].clone();
                    async move { store.get(ROLE, &k).await }
                });
                futures::future::join_all(batch).await;
                i += 16;
            }
        }));
    }
    let mut version = 1;
    for round in 0..40 {
        version += 1;
        let members = if round % 2 == 0 { &three } else { &all };
        set_view(&all, members, version);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    version += 1;
    let last = set_view(&all, &all, version);
    stop.cancel();
    for r in readers {
        r.await.unwrap();
    }
    let took = wait_for(
        "every key on exactly its replicas after the last view",
        Duration::from_secs(30),
        || placed(&all, &last, &keys, R),
    )
    .await;
    println!("{N} keys placed {took:?} after 40 view changes under reads");
}

async fn put_one(store: &Store, k: &str) -> Result<Acks, StoreError> {
    let value = Bytes::from(format!("binding of {k}"));
    store.put(ROLE, k, value, Duration::from_secs(3600)).await
}

/// A write from a member of its key's replica set (not the owner) takes its copy from the
/// owner's answer: it holds the entry when the write returns, and the owner sends it no
/// `Replicate` call. A write from the owner, or from outside the set, is replicated as
/// before. Each kind of writer is checked on keys placed for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_in_the_replica_set_takes_its_copy_from_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = TestPki::new(dir.path(), "example.test").unwrap();
    let mut nodes = Vec::new();
    for i in 0..3u8 {
        let name = format!("node{}", i + 1);
        let c = pki
            .issue(&name, Kind::Node, ip(57, i + 1), &[ROLE])
            .unwrap();
        nodes.push(Node::start(&c, ip(57, i + 1), test_config()).await);
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let view = set_view(&all, &all, 1);
    let ring = view.rings.get(ROLE).unwrap();
    let writer = &nodes[0];
    // 60 keys of each kind, seen from node1: owned, replica but not owner, neither.
    let (mut owned, mut replica, mut neither) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0.. {
        if owned.len() >= 60 && replica.len() >= 60 && neither.len() >= 60 {
            break;
        }
        let k = format!("user{i}@example.test");
        let set: Vec<String> = ring
            .replicas_at(position(&k), 2)
            .map(|m| m.name.clone())
            .collect();
        let list = if set[0] == writer.name {
            &mut owned
        } else if set.contains(&writer.name) {
            &mut replica
        } else {
            &mut neither
        };
        if list.len() < 60 {
            list.push(k);
        }
    }
    let others =
        |nodes: &[Node]| -> u64 { nodes[1..].iter().map(|n| n.store.copies_received().0).sum() };

    for k in &replica {
        let acks = put_one(&writer.store, k)
            .await
            .expect("write from a replica");
        assert_eq!((acks.held, acks.wanted), (2, 2));
        assert!(
            writer.store.holds(ROLE, k),
            "{k} held by the writer when the write returns"
        );
    }
    assert_eq!(
        writer.store.copies_received(),
        (0, 60),
        "every copy came in an answer, none in a Replicate call"
    );
    assert_eq!(others(&nodes), 0, "the owners replicated to nobody else");

    for k in &owned {
        put_one(&writer.store, k)
            .await
            .expect("write from the owner");
    }
    assert_eq!(others(&nodes), 60, "the owner replicates its own writes");
    for k in &neither {
        put_one(&writer.store, k)
            .await
            .expect("write from outside the set");
        assert!(
            !writer.store.holds(ROLE, k),
            "{k} is not the writer's to hold"
        );
    }
    assert_eq!(
        others(&nodes),
        120,
        "an outsider's write is replicated by its owner"
    );
    assert_eq!(writer.store.copies_received(), (0, 60));
    let keys: Vec<String> = owned
        .iter()
        .chain(&replica)
        .chain(&neither)
        .cloned()
        .collect();
    assert!(
        placed(&all, &view, &keys, 2),
        "every key held by its replica set alone"
    );
    read_all(&all, &keys).await;
    for n in &nodes {
        n.shutdown.cancel();
    }
}
