//! Number routing in the replicated store, through the proxy's locator: nodes in one process,
//! each with its own `PeerNet` on its own loopback address (127.0.51.x, port 8002) and a view
//! the test sets, and a stand-in for the managers that counts what it is asked.
//!
//! - A registrar that lacks a number reloads it from the managers once, then answers from the
//!   store (routed or not); a newer push replaces it; a push that overtakes a reload wins.
//! - Numbers move with the store's hand-off: a joining owner answers without asking the
//!   managers.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onehop_certs::testing::TestPki;
use onehop_node::peer::{PeerConfig, PeerNet, PEER_PORT};
use onehop_node::proxy::glue::{account_op, NumberSource, StoreLocator, REGISTRAR};
use onehop_node::proxy::{BoxFut, Locator};
use onehop_node::store::{Store, StoreConfig};
use onehop_node::view::View;
use onehop_overlay::crl::CrlState;
use onehop_overlay::net::{self, ConnTable, Timing};
use onehop_overlay::provision::{NumberRoute, PushOp};
use onehop_overlay::ring::{Rings, DEFAULT_POINTS};
use onehop_overlay::status::{Endpoint, Kind, Member, NetworkStatus, Role};
use onehop_overlay::tls::Credentials;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

struct Node {
    name: String,
    ip: IpAddr,
    store: Store,
    view: watch::Sender<Arc<View>>,
    shutdown: CancellationToken,
}

impl Node {
    async fn start(creds: &Arc<Credentials>, ip: IpAddr) -> Node {
        let addr = SocketAddr::new(ip, PEER_PORT);
        let endpoint = net::endpoint(
            addr,
            creds,
            &CrlState::default(),
            Timing::default(),
            Some(256),
        )
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let peer = PeerNet::new(endpoint, ConnTable::default(), PeerConfig::default());
        let shutdown = CancellationToken::new();
        peer.spawn_server(shutdown.clone());
        let (view, rx) = watch::channel(Arc::new(View::default()));
        let cfg = StoreConfig {
            request_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(3),
            ..StoreConfig::default()
        };
        let store = Store::start(
            cfg,
            peer,
            Arc::new(creds.identity.clone()),
            rx,
            shutdown.clone(),
        );
        Node {
            name: creds.identity.name.clone(),
            ip,
            store,
            view,
            shutdown,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Gives every node of `nodes` the view whose registrars are `members`.
fn set_view(nodes: &[&Node], members: &[&Node], version: u64) {
    let mut list: Vec<Member> = members
        .iter()
        .map(|n| Member {
            name: n.name.clone(),
            kind: Kind::Node,
            roles: vec![Role::new(REGISTRAR).unwrap()],
            endpoints: vec![Endpoint {
                service: "peer".into(),
                addr: SocketAddr::new(n.ip, PEER_PORT),
            }],
            since: 0,
            ip: n.ip,
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    let status = NetworkStatus {
        term: 1,
        version,
        manager: "m1".into(),
        members: list.into_iter().map(Arc::new).collect(),
    };
    let rings = Rings::from_status(&status, DEFAULT_POINTS);
    let view = Arc::new(View {
        status: Some(Arc::new(status)),
        rings,
    });
    for n in nodes {
        n.view.send_replace(view.clone());
    }
}

/// Work a stand-in read does before it answers.
type Hook = Box<dyn FnOnce() -> BoxFut<()> + Send>;

/// The managers as the test sets them: each number's routing and the version it is read at;
/// counts the reads. `before_answer` runs inside a read (a push that overtakes it).
#[derive(Default)]
struct Managers {
    numbers: Mutex<Vec<(String, Option<NumberRoute>)>>,
    version: Mutex<u64>,
    asked: AtomicUsize,
    before_answer: Mutex<Option<Hook>>,
}

impl NumberSource for Managers {
    fn fetch(&self, number: String) -> BoxFut<Result<(u64, Option<NumberRoute>), String>> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let route = self
            .numbers
            .lock()
            .unwrap()
            .iter()
            .find(|(n, _)| *n == number)
            .and_then(|(_, r)| r.clone());
        let version = *self.version.lock().unwrap();
        let hook = self.before_answer.lock().unwrap().take();
        Box::pin(async move {
            if let Some(hook) = hook {
                hook().await;
            }
            Ok((version, route))
        })
    }
}

struct Shared(Arc<Managers>);

impl NumberSource for Shared {
    fn fetch(&self, number: String) -> BoxFut<Result<(u64, Option<NumberRoute>), String>> {
        self.0.fetch(number)
    }
}

fn alice() -> Option<NumberRoute> {
    Some(NumberRoute::Account("alice@example.test".into()))
}

fn carrier(n: &str) -> Option<NumberRoute> {
    Some(NumberRoute::Uri(format!("sip:{n}@carrier.test")))
}

/// A push of the active manager, as the provisioning handler applies it.
async fn push(store: &Store, number: &str, route: Option<NumberRoute>, version: u64) {
    let op = account_op(&PushOp::Number {
        number: number.into(),
        route,
        version,
    });
    let (_, acks) = store.update(REGISTRAR, number, op).await.expect("pushed");
    assert!(acks.held >= acks.wanted);
}

fn ip(host: u8) -> IpAddr {
    IpAddr::from([127, 0, 51, host])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_registrar_reloads_a_number_once_and_newer_pushes_win() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = TestPki::new(dir.path(), "example.test").unwrap();
    let c1 = pki.issue("node1", Kind::Node, ip(1), &[REGISTRAR]).unwrap();
    let n1 = Node::start(&c1, ip(1)).await;
    set_view(&[&n1], &[&n1], 1);
    let managers = Arc::new(Managers::default());
    *managers.numbers.lock().unwrap() = vec![("+15550100".into(), alice())];
    *managers.version.lock().unwrap() = 10;
    let locator =
        StoreLocator::new(n1.store.clone()).with_numbers(Arc::new(Shared(managers.clone())));
    let asked = || managers.asked.load(Ordering::SeqCst);

    // Not held: reloaded once, then answered from the store.
    assert_eq!(locator.number("+15550100".into()).await.unwrap(), alice());
    assert_eq!(asked(), 1);
    assert_eq!(locator.number("+15550100".into()).await.unwrap(), alice());
    assert_eq!(asked(), 1, "the second call is answered by the store");
    // Unknown to the managers: not routed, and remembered as such.
    assert_eq!(locator.number("+15550199".into()).await.unwrap(), None);
    assert_eq!(locator.number("+15550199".into()).await.unwrap(), None);
    assert_eq!(asked(), 2);
    // A newer push moves the number to another network; the next call follows it.
    push(&n1.store, "+15550100", carrier("+15550100"), 11).await;
    assert_eq!(
        locator.number("+15550100".into()).await.unwrap(),
        carrier("+15550100")
    );
    // A push that arrives while a reload is in flight (the reload read at version 10, the
    // push is version 12): the push wins, the reload's older answer is not stored.
    let store = n1.store.clone();
    *managers.before_answer.lock().unwrap() = Some(Box::new(move || {
        Box::pin(async move { push(&store, "+15550177", carrier("+15550177"), 12).await })
    }));
    *managers.numbers.lock().unwrap() = vec![("+15550177".into(), alice())];
    assert_eq!(
        locator.number("+15550177".into()).await.unwrap(),
        carrier("+15550177"),
        "the pushed routing, not the reload's"
    );
    assert_eq!(
        locator.number("+15550177".into()).await.unwrap(),
        carrier("+15550177")
    );
    assert_eq!(asked(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_move_to_a_joining_owner_with_the_hand_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = TestPki::new(dir.path(), "example.test").unwrap();
    let c1 = pki
        .issue("node1", Kind::Node, ip(11), &[REGISTRAR])
        .unwrap();
    let c2 = pki
        .issue("node2", Kind::Node, ip(12), &[REGISTRAR])
        .unwrap();
    let n1 = Node::start(&c1, ip(11)).await;
    set_view(&[&n1], &[&n1], 1);
    // The numbers' routings, pushed while node1 is alone; every third one not routed.
    let numbers: Vec<String> = (0..200).map(|i| format!("+1555020{i:04}")).collect();
    let _l1 = StoreLocator::new(n1.store.clone());
    for (i, n) in numbers.iter().enumerate() {
        let route = (i % 3 != 0).then(|| NumberRoute::Account(format!("user{i}@example.test")));
        push(&n1.store, n, route, 5).await;
    }
    let n2 = Node::start(&c2, ip(12)).await;
    set_view(&[&n1, &n2], &[&n1, &n2], 2);
    let managers = Arc::new(Managers::default());
    let l2 = StoreLocator::new(n2.store.clone()).with_numbers(Arc::new(Shared(managers.clone())));
    // Once the hand-off settled, node2 holds what it owns; reads through it find every
    // number (a new owner that lacks a key fetches it from its previous holder meanwhile).
    let start = Instant::now();
    while n2.store.local_keys(REGISTRAR).len() < numbers.len() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "node2 never held every number (R = 2)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (i, n) in numbers.iter().enumerate() {
        let want = (i % 3 != 0).then(|| NumberRoute::Account(format!("user{i}@example.test")));
        assert_eq!(l2.number(n.clone()).await.unwrap(), want, "{n}");
    }
    assert_eq!(
        managers.asked.load(Ordering::SeqCst),
        0,
        "nothing was asked of the managers"
    );
}
