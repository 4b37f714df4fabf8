//! A handshake with a peer outlives the call that started it.
//!
//! On a lossy link a lost handshake packet is sent again only after quinn's first probe
//! timeout (1 s, from its initial round-trip estimate of 333 ms), often later than a store
//! call's own timeout. Before the fix, the handshake was abandoned with the call, and the next
//! call started a new one that again had to lose nothing: on 5 % loss the first REGISTER
//! through a node could get 503. Now the handshake runs in a task of its own and the next
//! call waits for that same one.
//!
//! The link is a forwarder in front of the callee that drops the caller's first datagram
//! and counts the caller's connection attempts by the source connection ID of the long-header
//! (handshake) packets.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
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
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

fn ip(host: u8) -> IpAddr {
    IpAddr::from([127, 0, 23, host])
}

/// Answers the request as it came.
struct Echo;

impl PeerHandler for Echo {
    fn handle(&self, _from: &Identity, body: Bytes) -> BoxFuture<'_, Bytes> {
        Box::pin(async move { body })
    }
}

/// The source connection ID of a QUIC long-header packet (RFC 9000, 17.2): first byte with
/// the high bit set, version (4), DCID length and DCID, SCID length and SCID.
fn long_header_scid(p: &[u8]) -> Option<Vec<u8>> {
    if p.first()? & 0x80 == 0 {
        return None;
    }
    let dcid_len = *p.get(5)? as usize;
    let scid_at = 6 + dcid_len;
    let scid_len = *p.get(scid_at)? as usize;
    p.get(scid_at + 1..scid_at + 1 + scid_len)
        .map(<[u8]>::to_vec)
}

/// A one-client UDP forwarder to `server`: drops the client's first `drop` datagrams and
/// records the source connection IDs of the client's long-header packets.
async fn forwarder(
    front: SocketAddr,
    server: SocketAddr,
    drop: usize,
) -> (SocketAddr, Arc<Mutex<HashSet<Vec<u8>>>>) {
    let front = UdpSocket::bind(front).await.unwrap();
    let addr = front.local_addr().unwrap();
    let up = UdpSocket::bind(SocketAddr::new(server.ip(), 0))
        .await
        .unwrap();
    up.connect(server).await.unwrap();
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let scids = seen.clone();
    tokio::spawn(async move {
        let (mut a, mut b) = ([0u8; 2048], [0u8; 2048]);
        let mut client = None;
        let mut to_drop = drop;
        loop {
            tokio::select! {
                r = front.recv_from(&mut a) => {
                    let Ok((n, from)) = r else { return };
                    client = Some(from);
                    if let Some(scid) = long_header_scid(&a[..n]) {
                        scids.lock().unwrap().insert(scid);
                    }
                    if to_drop > 0 {
                        to_drop -= 1;
                        continue;
                    }
                    let _ = up.send(&a[..n]).await;
                }
                r = up.recv(&mut b) => {
                    let Ok(n) = r else { return };
                    if let Some(c) = client {
                        let _ = front.send_to(&b[..n], c).await;
                    }
                }
            }
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_gives_up_leaves_its_handshake_to_the_next_call() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = TestPki::new(dir.path(), "example.test").unwrap();
    let a_creds = pki
        .issue("node-a", Kind::Node, ip(1), &["registrar"])
        .unwrap();
    let b_creds = pki
        .issue("node-b", Kind::Node, ip(2), &["registrar"])
        .unwrap();
    let a_endpoint = net::endpoint(
        SocketAddr::new(ip(1), PEER_PORT),
        &a_creds,
        &CrlState::default(),
        Timing::default(),
        Some(16),
    )
    .unwrap();
    let a = PeerNet::new(a_endpoint, ConnTable::default(), PeerConfig::default());
    a.register(Service::Store, Arc::new(Echo));
    let stop = CancellationToken::new();
    a.spawn_server(stop.clone());
    let b_endpoint = net::endpoint(
        SocketAddr::new(ip(2), 0),
        &b_creds,
        &CrlState::default(),
        Timing::default(),
        None,
    )
    .unwrap();
    let b = PeerNet::new(b_endpoint, ConnTable::default(), PeerConfig::default());

    // The link loses the caller's first handshake packet.
    let (link, attempts) = forwarder(
        SocketAddr::new(ip(1), 0),
        SocketAddr::new(ip(1), PEER_PORT),
        1,
    )
    .await;
    let a_addr = PeerAddr {
        name: "node-a".into(),
        addr: link,
    };

    // The first call gives up before quinn's probe timeout sends the packet again.
    let first = b
        .call(
            &a_addr,
            Service::Store,
            Bytes::from_static(b"first"),
            Duration::from_millis(300),
        )
        .await;
    assert_eq!(first, Err(PeerError::Timeout));
    // The next call waits for the same handshake, which completes after the probe timeout.
    let second = b
        .call(
            &a_addr,
            Service::Store,
            Bytes::from_static(b"second"),
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(second, Ok(Bytes::from_static(b"second")));
    let attempts = attempts.lock().unwrap().len();
    assert_eq!(
        attempts, 1,
        "one handshake for both calls, not one per call ({attempts} connection attempts)"
    );
    stop.cancel();
}
