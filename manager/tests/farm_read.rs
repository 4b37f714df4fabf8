//! The farm-read service over real QUIC with mutual TLS: a one-manager Raft cluster makes
//! the nonce key on becoming active; a node reads it with the domains and accounts, a DNS
//! server reads domains only, a monitor is refused.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use onehop_certs::testing::TestPki;
use onehop_manager::farm_read::{spawn_nonce_keeper, FarmReads};
use onehop_manager::provision::model::{Ha1, NewAccount, ProvisionCommand, ProvisionOp};
use onehop_manager::raft::{self, ManagerNode, RaftTimings, Request};
use onehop_manager::transport::{serve, QuicTransport};
use onehop_overlay::crl::CrlState;
use onehop_overlay::farm_client::{follow, FarmClient};
use onehop_overlay::metrics::Metrics;
use onehop_overlay::net::{self, ConnTable, Timing};
use onehop_overlay::status::Kind;
use tokio_util::sync::CancellationToken;

fn ip(host: u8) -> IpAddr {
    IpAddr::from([127, 0, 187, host])
}

fn client(pki: &mut TestPki, name: &str, kind: Kind, host: u8, manager: SocketAddr) -> FarmClient {
    let roles: &[&str] = if kind == Kind::Node {
        &["registrar"]
    } else {
        &[]
    };
    let creds = pki.issue(name, kind, ip(host), roles).unwrap();
    let ep = net::endpoint(
        SocketAddr::new(ip(host), 0),
        &creds,
        &CrlState::default(),
        Timing::default(),
        None,
    )
    .unwrap();
    FarmClient::new(ep, Arc::new(move || vec![manager]), ConnTable::default())
}

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_read_what_their_certificate_allows() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = TestPki::new(dir.path(), "example.test").unwrap();
    let addr = SocketAddr::new(ip(1), 8001);
    let creds = pki.issue("m1", Kind::Manager, ip(1), &[]).unwrap();
    let endpoint = net::endpoint(
        addr,
        &creds,
        &CrlState::default(),
        Timing::default(),
        Some(256),
    )
    .unwrap();
    let table = ConnTable::default();
    let data = tempfile::tempdir().unwrap();
    let peers = BTreeMap::from([(1, ManagerNode::new("m1", addr.to_string()))]);
    let raft = raft::start(
        1,
        data.path(),
        peers,
        QuicTransport::new(endpoint.clone(), table.clone()),
        RaftTimings::default(),
    )
    .await
    .unwrap();
    let metrics = Metrics::default();
    tokio::spawn(serve(
        endpoint.clone(),
        raft.raft().clone(),
        table.clone(),
        FarmReads::new(raft.store().db().clone(), &metrics),
        onehop_overlay::admission::HandshakeGate::new(Default::default(), &metrics),
    ));
    let cancel = CancellationToken::new();
    spawn_nonce_keeper(raft.clone(), cancel.clone());

    // A node follows the farm: the key arrives without anyone asking for it.
    let node = client(&mut pki, "node1", Kind::Node, 2, addr);
    let mut farm = follow(node.clone(), true, cancel.clone());
    let key = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(k) = farm.borrow_and_update().nonce_key.clone() {
                return k;
            }
            farm.changed().await.unwrap();
        }
    })
    .await
    .expect("the node got the nonce key within 5 s");
    assert_eq!(key.id, 1);

    // Provisioning shows up in what members read.
    let write = |op| {
        let raft = raft.clone();
        async move {
            raft.write(Request::Provision(Box::new(ProvisionCommand {
                at_ms: 1,
                op,
            })))
            .await
            .unwrap()
        }
    };
    write(ProvisionOp::AddDomain {
        name: "second.test".into(),
    })
    .await;
    write(ProvisionOp::AddAccount {
        account: NewAccount {
            user: "alice".into(),
            domain: "second.test".into(),
            display_name: None,
            enabled: true,
            ha1: Ha1::from_password("alice", "second.test", "pw"),
        },
    })
    .await;
    let info = eventually("the node sees the domain", || async {
        let i = farm.borrow().clone();
        (i.domains == ["second.test"]).then_some(i)
    })
    .await;
    assert_eq!(info.nonce_key.as_ref(), Some(&key), "the key never changes");
    let (version, account) = node.account("alice@second.test").await.unwrap();
    assert_eq!(version, 2);
    assert!(account.unwrap().enabled);
    assert_eq!(node.account("bob@second.test").await.unwrap().1, None);

    // A second key write (a later leader) replaces nothing.
    raft.write(Request::SetNonceKey(
        onehop_overlay::provision::NonceSecret::random(1),
    ))
    .await
    .unwrap();
    assert_eq!(node.farm().await.unwrap().nonce_key, Some(key));

    // A DNS server reads the domains but no key and no account.
    let dns = client(&mut pki, "dns1", Kind::Dns, 3, addr);
    let info = dns.farm().await.unwrap();
    assert_eq!(info.domains, ["second.test"]);
    assert_eq!(info.nonce_key, None);
    let e = dns.account("alice@second.test").await.unwrap_err();
    assert!(e.contains("nodes only"), "{e}");

    // A monitor is refused at the connection.
    let monitor = client(&mut pki, "mon1", Kind::Monitor, 4, addr);
    assert!(monitor.farm().await.is_err());

    assert!(metrics.value("farm_reads_total").unwrap() >= 5);
    assert!(
        metrics
            .value("farm_reads_by_kind_total{kind=\"dns\"}")
            .unwrap()
            >= 2
    );
    cancel.cancel();
    raft.shutdown().await.unwrap();
}
