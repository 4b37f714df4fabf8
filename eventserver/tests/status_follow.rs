//! An event client following the network status by deltas through two event servers (issue
//! 13), against stand-ins that play what real servers do under load: one server's copies come
//! ahead of the other's, and a change that neither delivers is missed for good.
//!
//! - Change 1 -> 2 only through the slower server, after 2 -> 3 and 3 -> 4 came through the
//!   faster one: the client applies all three in order, without asking for the whole status
//!   (before, its dedupe dropped the late copy and it asked every server for the whole).
//! - Changes 2 -> 3 and 3 -> 4 through no server, 4 -> 5 through one: after the grace, the
//!   client asks one server for the whole status and delivers it; nothing older is delivered
//!   after anything newer.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use onehop_certs::testing::TestPki;
use onehop_overlay::client::{ClientEvent, ClientOptions, EventClient, EventReceiver};
use onehop_overlay::crl::CrlState;
use onehop_overlay::net::{self, ConnTable, Timing};
use onehop_overlay::status::{Kind, Member, NetworkStatus};
use onehop_overlay::tls::Credentials;
use onehop_overlay::wire::{
    decode_body, encode_frame, read_frame, ClientMsg, Event, Payload, ServerMsg, Topic,
};
use tokio::sync::{Mutex, Notify};

fn ip(host: u8) -> IpAddr {
    IpAddr::from([127, 0, 214, host])
}

/// The status of version `v`: members m1 ... mv.
fn status(v: u64) -> NetworkStatus {
    NetworkStatus {
        term: 3,
        version: v,
        manager: "manager1".into(),
        members: (1..=v)
            .map(|i| {
                Arc::new(Member {
                    name: format!("m{i}"),
                    kind: Kind::Node,
                    roles: Vec::new(),
                    endpoints: Vec::new(),
                    since: i,
                    ip: ip(100 + i as u8),
                })
            })
            .collect(),
    }
}

/// The manager's publication with sequence number `seq` (the same through every server).
fn published(seq: u64, payload: Payload) -> Event {
    Event {
        origin: "manager1".into(),
        origin_kind: Kind::Manager,
        seq,
        payload,
    }
}

fn whole(v: u64) -> Payload {
    Payload::Network(status(v))
}

fn delta(from: u64) -> Payload {
    Payload::NetworkDelta(status(from).delta_to(&status(from + 1)).unwrap())
}

/// A step of a stand-in's script.
enum Step {
    /// Send this event to the subscriber.
    Send(Event),
    /// Wait until the other stand-in signals.
    Wait(Arc<Notify>),
    /// Let the other stand-in go on, after a pause (for what was sent to reach the client).
    Signal(Duration, Arc<Notify>),
}

/// What a stand-in event server does for a subscriber of `network`: the steps of `script`,
/// and the whole status `retained` to every `Fetch`, counted.
struct Script {
    script: Vec<Step>,
    retained: Event,
    fetches: Arc<AtomicUsize>,
}

async fn stand_in(endpoint: quinn::Endpoint, script: Script) {
    let script = Arc::new(script);
    while let Some(incoming) = endpoint.accept().await {
        let script = script.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let Ok((mut send, mut recv)) = conn.accept_bi().await else {
                return;
            };
            let first = read_frame(&mut recv, 1 << 20).await.unwrap().unwrap();
            let hello: ClientMsg = decode_body(&first).unwrap();
            send.write_all(&encode_frame(&ServerMsg::Welcome {
                server: "es-stand-in".into(),
            }))
            .await
            .unwrap();
            assert_eq!(hello, ClientMsg::Subscribe(vec![Topic::Network]));
            let send = Arc::new(Mutex::new(send));
            let answers = {
                let (send, script) = (send.clone(), script.clone());
                tokio::spawn(async move {
                    while let Ok(Some(frame)) = read_frame(&mut recv, 1 << 20).await {
                        if let Ok(ClientMsg::Fetch(topics)) = decode_body::<ClientMsg>(&frame) {
                            assert!(topics.contains(&Topic::Network));
                            script.fetches.fetch_add(1, Ordering::SeqCst);
                            let frame = encode_frame(&ServerMsg::Retained(script.retained.clone()));
                            if send.lock().await.write_all(&frame).await.is_err() {
                                return;
                            }
                        }
                    }
                })
            };
            for step in &script.script {
                match step {
                    Step::Send(ev) => {
                        let frame = encode_frame(&ServerMsg::Event(ev.clone()));
                        if send.lock().await.write_all(&frame).await.is_err() {
                            return;
                        }
                    }
                    Step::Wait(n) => n.notified().await,
                    Step::Signal(pause, n) => {
                        tokio::time::sleep(*pause).await;
                        n.notify_one();
                    }
                }
            }
            conn.closed().await;
            answers.abort();
        });
    }
}

fn server(creds: &Credentials, host: u8, script: Script) -> SocketAddr {
    let addr = SocketAddr::new(ip(host), 8000);
    let endpoint = net::endpoint(
        addr,
        creds,
        &CrlState::default(),
        Timing::default(),
        Some(4),
    )
    .unwrap();
    tokio::spawn(stand_in(endpoint, script));
    addr
}

fn client(creds: &Credentials, host: u8, servers: Vec<SocketAddr>) -> (EventClient, EventReceiver) {
    let ep = net::endpoint(
        SocketAddr::new(ip(host), 0),
        creds,
        &CrlState::default(),
        Timing::default(),
        None,
    )
    .unwrap();
    let opts = ClientOptions {
        eventservers: servers,
        subscribe: vec![Topic::Network],
        ..Default::default()
    };
    EventClient::start(ep, opts, ConnTable::default(), None)
}

/// The statuses the client delivers until one of version `want` (at most 10 s).
async fn delivered_until(events: &mut EventReceiver, want: u64) -> Vec<NetworkStatus> {
    let mut seen = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Some(ClientEvent::Event(ev)) => {
                    if let Payload::Network(s) = &ev.payload {
                        seen.push(s.clone());
                        if s.version == want {
                            return;
                        }
                    }
                }
                Some(_) => {}
                None => panic!("client gone"),
            }
        }
    })
    .await;
    let versions: Vec<u64> = seen.iter().map(|s| s.version).collect();
    assert!(
        got.is_ok(),
        "no status {want} within 10 s; delivered {versions:?}"
    );
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "an older status delivered after a newer one: {versions:?}"
    );
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_out_of_order_and_missed_ones_converge_on_the_managers_status() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = TestPki::new(dir.path(), "example.test").unwrap();
    let es = |pki: &mut TestPki, n: u8| {
        pki.issue(&format!("es{n}"), Kind::Eventserver, ip(n), &[])
            .unwrap()
    };
    let (es1, es2, es3, es4) = (
        es(&mut pki, 1),
        es(&mut pki, 2),
        es(&mut pki, 3),
        es(&mut pki, 4),
    );
    let node = pki.issue("node1", Kind::Node, ip(10), &[]).unwrap();
    let send = |seq: u64, payload: Payload| Step::Send(published(seq, payload));

    // 1. The faster server lost 1 -> 2 and delivers 2 -> 3 and 3 -> 4; the slower one
    // delivers 1 -> 2 after those (20 ms after they were sent, well within the follower's
    // 100 ms grace).
    let fetched = Arc::new(AtomicUsize::new(0));
    let ahead = Arc::new(Notify::new());
    let fast = server(
        &es1,
        1,
        Script {
            script: vec![
                send(1, whole(1)),
                send(3, delta(2)),
                send(4, delta(3)),
                Step::Signal(Duration::from_millis(20), ahead.clone()),
            ],
            retained: published(4, whole(4)),
            fetches: fetched.clone(),
        },
    );
    let slow = server(
        &es2,
        2,
        Script {
            script: vec![
                send(1, whole(1)),
                Step::Wait(ahead.clone()),
                send(2, delta(1)),
            ],
            retained: published(4, whole(4)),
            fetches: fetched.clone(),
        },
    );
    let (c, mut events) = client(&node, 10, vec![fast, slow]);
    let seen = delivered_until(&mut events, 4).await;
    assert_eq!(
        seen.last().unwrap(),
        &status(4),
        "the manager's status 4, member for member"
    );
    // The whole status 4 came by deltas: nothing was asked for.
    assert_eq!(
        fetched.load(Ordering::SeqCst),
        0,
        "the whole status was asked for"
    );
    println!(
        "reordered: delivered {:?}, whole statuses asked for: 0",
        seen.iter().map(|s| s.version).collect::<Vec<_>>()
    );
    c.stop();

    // 2. Neither server delivers 2 -> 3 or 3 -> 4; one delivers 4 -> 5. After the grace the
    // client asks one server for the whole status (5) and delivers it.
    let fetched = Arc::new(AtomicUsize::new(0));
    let a = server(
        &es3,
        3,
        Script {
            script: vec![send(1, whole(1)), send(2, delta(1)), send(5, delta(4))],
            retained: published(5, whole(5)),
            fetches: fetched.clone(),
        },
    );
    let b = server(
        &es4,
        4,
        Script {
            script: vec![send(1, whole(1)), send(2, delta(1))],
            retained: published(5, whole(5)),
            fetches: fetched.clone(),
        },
    );
    let (c, mut events) = client(&node, 11, vec![a, b]);
    let seen = delivered_until(&mut events, 5).await;
    assert_eq!(
        seen.last().unwrap(),
        &status(5),
        "the manager's status 5, member for member"
    );
    let asked = fetched.load(Ordering::SeqCst);
    println!(
        "missed: delivered {:?}, whole statuses asked for: {asked}",
        seen.iter().map(|s| s.version).collect::<Vec<_>>()
    );
    assert!(asked >= 1, "status 5 came without being asked for");
    // One server asked at a time (again only if the answer is late, every 250 ms).
    assert!(asked <= 2, "the whole status was asked for {asked} times");
    c.stop();
}
