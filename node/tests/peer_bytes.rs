//! The peer port bounds the bytes of requests it reads and handles at once
//! (`peer_inflight_bytes`): large requests past the bound wait unread, and every one is still
//! answered.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use onehop_certs::testing::TestPki;
use onehop_node::peer::{PeerAddr, PeerConfig, PeerHandler, PeerNet, Service, PEER_PORT};
use onehop_overlay::crl::CrlState;
use onehop_overlay::identity::Identity;
use onehop_overlay::metrics::Metrics;
use onehop_overlay::net::{self, ConnTable, Timing};
use onehop_overlay::status::Kind;
use onehop_overlay::tls::Credentials;
use tokio_util::sync::CancellationToken;

fn ip(host: u8) -> IpAddr {
    IpAddr::from([127, 0, 212, host])
}

/// Bytes of requests its handler holds at once, and the most seen. Each call is held until
/// the handler holds more than 2 MiB (three requests of 700 KiB), or for 300 ms at most: so
/// calls overlap as far as the server lets them.
#[derive(Default)]
struct Held {
    now: AtomicUsize,
    max: AtomicUsize,
    more: tokio::sync::Notify,
}

impl PeerHandler for Held {
    fn handle(&self, _from: &Identity, body: Bytes) -> BoxFuture<'_, Bytes> {
        Box::pin(async move {
            let n = self.now.fetch_add(body.len(), SeqCst) + body.len();
            self.max.fetch_max(n, SeqCst);
            self.more.notify_waiters();
            let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
            loop {
                let more = self.more.notified();
                if self.now.load(SeqCst) > 2 << 20 {
                    break;
                }
                if tokio::time::timeout_at(deadline, more).await.is_err() {
                    break;
                }
            }
            self.now.fetch_sub(body.len(), SeqCst);
            Bytes::from(body.len().to_string())
        })
    }
}

fn endpoint(creds: &Credentials, ip: IpAddr, serve: bool) -> quinn::Endpoint {
    let port = if serve { PEER_PORT } else { 0 };
    net::endpoint(
        SocketAddr::new(ip, port),
        creds,
        &CrlState::default(),
        Timing::default(),
        serve.then_some(64),
    )
    .unwrap()
}

/// Eight concurrent calls of 700 KiB to a server allowing `inflight` bytes: the most bytes
/// its handler held at once, and its metrics.
async fn eight_large_calls(pki: &mut TestPki, host: u8, inflight: usize) -> (usize, Metrics) {
    let name = format!("node-s{host}");
    let server_creds = pki
        .issue(&name, Kind::Node, ip(host), &["registrar"])
        .unwrap();
    let client_creds = pki
        .issue(
            &format!("node-c{host}"),
            Kind::Node,
            ip(host + 1),
            &["registrar"],
        )
        .unwrap();
    let server = PeerNet::new(
        endpoint(&server_creds, ip(host), true),
        ConnTable::default(),
        PeerConfig {
            max_inflight_bytes: inflight,
            ..PeerConfig::default()
        },
    );
    let metrics = Metrics::default();
    server.count_in(&metrics);
    let held = Arc::new(Held::default());
    server.register(Service::Store, held.clone());
    let stop = CancellationToken::new();
    server.spawn_server(stop.clone());
    let client = PeerNet::new(
        endpoint(&client_creds, ip(host + 1), false),
        ConnTable::default(),
        PeerConfig::default(),
    );
    let to = PeerAddr {
        name,
        addr: SocketAddr::new(ip(host), PEER_PORT),
    };
    let body = Bytes::from(vec![7u8; 700 << 10]);
    let calls = (0..8).map(|_| {
        let (client, to, body) = (client.clone(), to.clone(), body.clone());
        async move {
            client
                .call(&to, Service::Store, body, Duration::from_secs(10))
                .await
        }
    });
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.unwrap(), Bytes::from((700 << 10).to_string()), "answered");
    }
    stop.cancel();
    (held.max.load(SeqCst), metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_byte_bound_wait_unread_and_are_all_answered() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = TestPki::new(dir.path(), "example.test").unwrap();

    // 2 MiB: two requests of 700 KiB fit, a third does not.
    let (max, metrics) = eight_large_calls(&mut pki, 1, 2 << 20).await;
    println!("2 MiB bound: at most {max} bytes of requests handled at once");
    assert!(max >= 700 << 10, "the requests were handled: {max}");
    assert!(
        max <= 2 << 20,
        "{max} bytes handled at once past the 2 MiB bound"
    );
    assert!(
        metrics.value("peer_inflight_waits_total").unwrap_or(0) > 0,
        "requests waited for room"
    );
    assert_eq!(
        metrics.value("peer_inflight_bytes"),
        Some(0),
        "every request's room was given back"
    );

    // The same calls with the default bound (64 MiB) overlap past 2 MiB: the bound above is
    // what held them back.
    let (max, metrics) = eight_large_calls(&mut pki, 3, 64 << 20).await;
    println!("64 MiB bound: at most {max} bytes of requests handled at once");
    assert!(max > 2 << 20, "without the bound calls overlap: {max}");
    assert_eq!(metrics.value("peer_inflight_waits_total"), Some(0));
}
