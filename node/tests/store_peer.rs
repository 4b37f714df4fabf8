//! The peer transport (UDP 8002): calls, typed errors, certificate checks both ways, and bad
//! frames that close one stream while the server goes on serving.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use onehop_certs::testing::TestPki;
use onehop_node::peer::{
    PeerAddr, PeerConfig, PeerError, PeerHandler, PeerNet, Service, PEER_PORT,
};
use onehop_overlay::crl::CrlState;
use onehop_overlay::identity::Identity;
use onehop_overlay::net::{self, ConnTable, Timing};
use onehop_overlay::status::Kind;
use onehop_overlay::tls::Credentials;
use onehop_overlay::wire::CloseCode;
use tokio_util::sync::CancellationToken;

fn ip(host: u8) -> IpAddr {
    IpAddr::from([127, 0, 51, host])
}

fn config() -> PeerConfig {
    PeerConfig {
        connect_timeout: Duration::from_millis(500),
        ..PeerConfig::default()
    }
}

fn start(creds: &Credentials, ip: IpAddr, serve: bool) -> (Arc<PeerNet>, CancellationToken) {
    let port = if serve { PEER_PORT } else { 0 };
    let endpoint = net::endpoint(
        SocketAddr::new(ip, port),
        creds,
        &CrlState::default(),
        Timing::default(),
        serve.then_some(16),
    )
    .unwrap();
    let peer = PeerNet::new(endpoint, ConnTable::default(), config());
    let shutdown = CancellationToken::new();
    if serve {
        peer.spawn_server(shutdown.clone());
    }
    (peer, shutdown)
}

/// Answers `NAME:` followed by the request, where NAME is the caller's certificate name.
struct Echo;

impl PeerHandler for Echo {
    fn handle(&self, from: &Identity, body: Bytes) -> BoxFuture<'_, Bytes> {
        let mut out = format!("{}:", from.name).into_bytes();
        out.extend_from_slice(&body);
        Box::pin(async move { Bytes::from(out) })
    }
}

/// Never answers.
struct Silent;

impl PeerHandler for Silent {
    fn handle(&self, _from: &Identity, _body: Bytes) -> BoxFuture<'_, Bytes> {
        Box::pin(futures::future::pending())
    }
}

fn addr_of(name: &str, ip: IpAddr) -> PeerAddr {
    PeerAddr {
        name: name.into(),
        addr: SocketAddr::new(ip, PEER_PORT),
    }
}

const T: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_errors_and_bad_frames() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = TestPki::new(dir.path(), "example.test").unwrap();
    let a_creds = pki
        .issue("node-a", Kind::Node, ip(1), &["registrar"])
        .unwrap();
    let b_creds = pki
        .issue("node-b", Kind::Node, ip(2), &["registrar"])
        .unwrap();
    let raw_creds = pki
        .issue("node-raw", Kind::Node, ip(3), &["registrar"])
        .unwrap();
    let mon_creds = pki.issue("mon", Kind::Monitor, ip(4), &[]).unwrap();
    let (a, a_stop) = start(&a_creds, ip(1), true);
    let (b, b_stop) = start(&b_creds, ip(2), true);
    a.register(Service::Store, Arc::new(Echo));
    a.register(Service::Sip, Arc::new(Silent));
    let a_addr = addr_of("node-a", ip(1));

    // A call, and many at once on the cached connection.
    let answer = b
        .call(&a_addr, Service::Store, Bytes::from_static(b"hello"), T)
        .await
        .unwrap();
    assert_eq!(answer, Bytes::from_static(b"node-b:hello"));
    let calls = (0..200).map(|i| {
        let b = b.clone();
        let a_addr = a_addr.clone();
        async move {
            b.call(&a_addr, Service::Store, Bytes::from(format!("{i}")), T)
                .await
        }
    });
    for (i, r) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(r.unwrap(), Bytes::from(format!("node-b:{i}")));
    }

    // Typed errors.
    let r = b
        .call(
            &a_addr,
            Service::Sip,
            Bytes::new(),
            Duration::from_millis(300),
        )
        .await;
    assert_eq!(r, Err(PeerError::Timeout));
    let r = a
        .call(&addr_of("node-b", ip(2)), Service::Store, Bytes::new(), T)
        .await;
    assert!(
        matches!(r, Err(PeerError::Refused(ref why)) if why.contains("not served")),
        "{r:?}"
    );
    let r = b
        .call(&addr_of("node-x", ip(1)), Service::Store, Bytes::new(), T)
        .await;
    assert!(
        matches!(r, Err(PeerError::Refused(ref why)) if why.contains("node-a")),
        "{r:?}"
    );
    let r = b
        .call(&addr_of("node-c", ip(9)), Service::Store, Bytes::new(), T)
        .await;
    assert!(matches!(r, Err(PeerError::Unreachable(_))), "{r:?}");
    let too_big = Bytes::from(vec![0u8; config().max_frame]);
    let r = b.call(&a_addr, Service::Store, too_big, T).await;
    assert!(matches!(r, Err(PeerError::Refused(_))), "{r:?}");

    // Only node certificates may call.
    let (mon, _mon_stop) = start(&mon_creds, ip(4), false);
    let r = mon
        .call(&a_addr, Service::Store, Bytes::from_static(b"x"), T)
        .await;
    assert!(matches!(r, Err(PeerError::Refused(_))), "{r:?}");

    // Bad frames on a raw connection close that stream only.
    let raw = net::endpoint(
        SocketAddr::new(ip(3), 0),
        &raw_creds,
        &CrlState::default(),
        Timing::default(),
        None,
    )
    .unwrap();
    let conn = raw
        .connect(a_addr.addr, &ip(1).to_string())
        .unwrap()
        .await
        .unwrap();
    let reset_code = |r: Result<Vec<u8>, quinn::ReadToEndError>| match r {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            CloseCode::from_varint(code)
        }
        other => panic!("expected a reset stream, got {other:?}"),
    };
    let cases: [(&[u8], CloseCode); 3] = [
        // A length over the cap: refused before anything is allocated.
        (&[0xff, 0xff, 0xff, 0xff, 0], CloseCode::Oversized),
        // An empty frame: no service id.
        (&[0, 0, 0, 0], CloseCode::Malformed),
        // A frame cut short.
        (&[0, 0, 0, 10, 0, 1, 2], CloseCode::Malformed),
    ];
    for (bytes, want) in cases {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let _ = send.write_all(bytes).await;
        let _ = send.finish();
        let got = reset_code(recv.read_to_end(1 << 20).await);
        assert_eq!(got, Some(want), "{bytes:?}");
    }
    // An unknown service id is answered with a refusal, not a reset.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 2, 200, 7]).await.unwrap();
    send.finish().unwrap();
    let answer = recv.read_to_end(1 << 20).await.unwrap();
    assert_eq!(answer[4], 1, "refused status");
    // The same connection, and the server, go on serving.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 3, 0, b'o', b'k']).await.unwrap();
    send.finish().unwrap();
    let answer = recv.read_to_end(1 << 20).await.unwrap();
    assert_eq!(&answer[..], b"\0\0\0\x0c\0node-raw:ok");
    let answer = b
        .call(&a_addr, Service::Store, Bytes::from_static(b"still"), T)
        .await
        .unwrap();
    assert_eq!(answer, Bytes::from_static(b"node-b:still"));

    // A closed peer is unreachable; the caller notices and reconnects once it is back.
    a_stop.cancel();
    a.close();
    drop(a);
    let r = b
        .call(&a_addr, Service::Store, Bytes::from_static(b"gone"), T)
        .await;
    assert!(r.is_err());
    let rebind = std::time::Instant::now();
    let (a2, a2_stop) = loop {
        // The old socket may still be closing.
        assert!(
            rebind.elapsed() < Duration::from_secs(10),
            "cannot bind the peer port again"
        );
        match net::endpoint(
            a_addr.addr,
            &a_creds,
            &CrlState::default(),
            Timing::default(),
            Some(16),
        ) {
            Ok(e) => {
                let p = PeerNet::new(e, ConnTable::default(), config());
                let stop = CancellationToken::new();
                p.spawn_server(stop.clone());
                break (p, stop);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    a2.register(Service::Store, Arc::new(Echo));
    let answer = b
        .call(&a_addr, Service::Store, Bytes::from_static(b"back"), T)
        .await
        .unwrap();
    assert_eq!(answer, Bytes::from_static(b"node-b:back"));
    a2_stop.cancel();
    b_stop.cancel();
}

/// Counts the calls being handled at once, and the most seen.
#[derive(Default)]
struct Gauge {
    now: std::sync::atomic::AtomicUsize,
    max: std::sync::atomic::AtomicUsize,
}

impl PeerHandler for Gauge {
    fn handle(&self, _from: &Identity, body: Bytes) -> BoxFuture<'_, Bytes> {
        use std::sync::atomic::Ordering::SeqCst;
        Box::pin(async move {
            let n = self.now.fetch_add(1, SeqCst) + 1;
            self.max.fetch_max(n, SeqCst);
            // Hold the call a moment so that concurrent calls would overlap.
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.now.fetch_sub(1, SeqCst);
            body
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_calls_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = TestPki::new(dir.path(), "example.test").unwrap();
    let server_creds = pki
        .issue("node-s", Kind::Node, ip(10), &["registrar"])
        .unwrap();
    let c1_creds = pki
        .issue("node-c1", Kind::Node, ip(11), &["registrar"])
        .unwrap();
    let c2_creds = pki
        .issue("node-c2", Kind::Node, ip(12), &["registrar"])
        .unwrap();
    let endpoint = net::endpoint(
        SocketAddr::new(ip(10), PEER_PORT),
        &server_creds,
        &CrlState::default(),
        Timing::default(),
        Some(16),
    )
    .unwrap();
    let limits = PeerConfig {
        max_connections: 1,
        max_streams: 1,
        ..config()
    };
    let server = PeerNet::new(endpoint, ConnTable::default(), limits);
    let gauge = Arc::new(Gauge::default());
    server.register(Service::Store, gauge.clone());
    let stop = CancellationToken::new();
    server.spawn_server(stop.clone());
    let s_addr = addr_of("node-s", ip(10));

    // One connection: many concurrent calls on it are all answered, one at a time.
    let (c1, _c1_stop) = start(&c1_creds, ip(11), false);
    let calls = (0..10).map(|i| {
        let c1 = c1.clone();
        let s_addr = s_addr.clone();
        async move {
            c1.call(&s_addr, Service::Store, Bytes::from(format!("{i}")), T)
                .await
        }
    });
    for (i, r) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(r.unwrap(), Bytes::from(format!("{i}")));
    }
    assert_eq!(gauge.max.load(std::sync::atomic::Ordering::SeqCst), 1);

    // A second connection is refused while the first is open.
    let (c2, _c2_stop) = start(&c2_creds, ip(12), false);
    let r = c2
        .call(&s_addr, Service::Store, Bytes::from_static(b"x"), T)
        .await;
    assert!(
        matches!(
            r,
            Err(PeerError::Refused(_)) | Err(PeerError::Unreachable(_))
        ),
        "{r:?}"
    );
    // Once the first goes away, the second gets in.
    c1.close();
    let started = std::time::Instant::now();
    loop {
        let r = c2
            .call(&s_addr, Service::Store, Bytes::from_static(b"y"), T)
            .await;
        if r.is_ok() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
}
