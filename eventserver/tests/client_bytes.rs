//! The event client's queues are bounded in bytes (issue 11), against a stand-in event server
//! that stops reading (publications past the bound are dropped and counted) or that sends
//! large events faster than the daemon takes them (the session stops reading, and nothing is
//! lost).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use onehop_certs::testing::TestPki;
use onehop_overlay::client::{ClientEvent, ClientOptions, EventClient};
use onehop_overlay::crl::CrlState;
use onehop_overlay::metrics::Metrics;
use onehop_overlay::net::{self, ConnTable, Timing};
use onehop_overlay::status::Kind;
use onehop_overlay::wire::{
    decode_body, encode_frame, read_frame, ClientMsg, Event, Level, LogEvent, Payload, ServerMsg,
    Topic,
};

fn ip(host: u8) -> IpAddr {
    IpAddr::from([127, 0, 213, host])
}

/// Bodies of 900 KiB: under the 1 MiB frame cap, two fill the 2 MiB bounds.
const TEXT: usize = 900 << 10;
/// Events the stand-in sends a subscriber.
const SENT: u64 = 12;

fn log(seq: u64) -> Payload {
    Payload::Log(LogEvent {
        time_ms: seq,
        level: Level::Info,
        text: "x".repeat(TEXT),
    })
}

/// A stand-in event server: welcomes each session; sends a subscriber of `events` the
/// [`SENT`] events; never reads anything else from anyone.
async fn stand_in(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let Ok((mut send, mut recv)) = conn.accept_bi().await else {
                return;
            };
            let first = read_frame(&mut recv, 1 << 20).await.unwrap().unwrap();
            let hello: ClientMsg = decode_body(&first).unwrap();
            let welcome = ServerMsg::Welcome {
                server: "es-fake".into(),
            };
            send.write_all(&encode_frame(&welcome)).await.unwrap();
            if hello == ClientMsg::Subscribe(vec![Topic::Events]) {
                for seq in 1..=SENT {
                    let ev = ServerMsg::Event(Event {
                        origin: "node1".into(),
                        origin_kind: Kind::Node,
                        seq,
                        payload: log(seq),
                    });
                    if send.write_all(&encode_frame(&ev)).await.is_err() {
                        return;
                    }
                }
            }
            // Hold the session, reading nothing more.
            conn.closed().await;
            drop(recv);
        });
    }
}

fn client(
    creds: &onehop_overlay::tls::Credentials,
    host: u8,
    server: SocketAddr,
    subscribe: Vec<Topic>,
    metrics: &Metrics,
) -> (EventClient, onehop_overlay::client::EventReceiver) {
    let ep = net::endpoint(
        SocketAddr::new(ip(host), 0),
        creds,
        &CrlState::default(),
        Timing::default(),
        None,
    )
    .unwrap();
    let opts = ClientOptions {
        eventservers: vec![server],
        subscribe,
        queue_bytes: 2 << 20,
        out_queue_bytes: 2 << 20,
        metrics: Some(metrics.clone()),
        ..Default::default()
    };
    EventClient::start(ep, opts, ConnTable::default(), None)
}

async fn until_up(rx: &mut onehop_overlay::client::EventReceiver) {
    let up = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.recv().await {
                Some(ClientEvent::Up { .. }) => return,
                Some(ClientEvent::Down { reason, .. }) => panic!("session down: {reason}"),
                Some(_) => {}
                None => panic!("client gone"),
            }
        }
    })
    .await;
    assert!(up.is_ok(), "no session in 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_are_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = TestPki::new(dir.path(), "example.test").unwrap();
    let es_creds = pki.issue("es-fake", Kind::Eventserver, ip(1), &[]).unwrap();
    let node_creds = pki.issue("node1", Kind::Node, ip(2), &[]).unwrap();
    let mon_creds = pki.issue("mon", Kind::Monitor, ip(3), &[]).unwrap();
    let server = SocketAddr::new(ip(1), 8000);
    let endpoint = net::endpoint(
        server,
        &es_creds,
        &CrlState::default(),
        Timing::default(),
        Some(4),
    )
    .unwrap();
    tokio::spawn(stand_in(endpoint));

    // Publications to a server that reads none of them: QUIC takes what the server's stream
    // window lets through (1.25 MB), the queue 2 MiB more; the rest is dropped for that
    // server, counted by the byte bound.
    let metrics = Metrics::default();
    let (publisher, mut events) = client(&node_creds, 2, server, Vec::new(), &metrics);
    until_up(&mut events).await;
    let (mut accepted, mut dropped) = (0usize, 0usize);
    for _ in 0..40 {
        match publisher.publish(log(0)) {
            1 => accepted += 1,
            _ => dropped += 1,
        }
        // Let the session's writer hand what it can to QUIC.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }
    let by_bytes = metrics
        .value("eventclient_dropped_total{bound=\"bytes\"}")
        .unwrap();
    let by_entries = metrics
        .value("eventclient_dropped_total{bound=\"entries\"}")
        .unwrap();
    println!(
        "40 publications of {TEXT} bytes to a server that reads none: {accepted} queued, \
         {dropped} dropped ({by_bytes} by the byte bound, {by_entries} by the entry bound)"
    );
    let room = (2 << 20) + 1_250_000;
    assert!(accepted >= 2, "the queue holds two frames at least");
    assert!(
        accepted * TEXT <= room + 2 * TEXT,
        "{accepted} publications of {TEXT} bytes accepted: more than the queue's 2 MiB and \
         QUIC's buffers"
    );
    assert_eq!(
        by_bytes as usize, dropped,
        "every drop counted by the byte bound"
    );
    assert_eq!(by_entries, 0, "16 frames never reached before 2 MiB");
    publisher.stop();

    // Events arriving faster than the daemon takes them: the session stops reading at 2 MiB
    // waiting, and every event arrives, in order, once the daemon reads.
    let metrics = Metrics::default();
    let (subscriber, mut events) = client(&mon_creds, 3, server, vec![Topic::Events], &metrics);
    until_up(&mut events).await;
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while metrics.value("eventclient_full_waits_total").unwrap_or(0) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "the session waited for room under 2 MiB");
    let mut seqs = Vec::new();
    let all = tokio::time::timeout(Duration::from_secs(10), async {
        while seqs.len() < SENT as usize {
            match events.recv().await {
                Some(ClientEvent::Event(ev)) => seqs.push(ev.seq),
                Some(ClientEvent::Down { reason, .. }) => panic!("session down: {reason}"),
                Some(_) => {}
                None => panic!("client gone"),
            }
        }
    })
    .await;
    assert!(all.is_ok(), "got {seqs:?} of {SENT}");
    assert_eq!(
        seqs,
        (1..=SENT).collect::<Vec<_>>(),
        "every event, in order"
    );
    println!(
        "{SENT} events of {TEXT} bytes to a daemon not reading: the session waited {} times, \
         none lost",
        metrics.value("eventclient_full_waits_total").unwrap()
    );
    subscriber.stop();
}
