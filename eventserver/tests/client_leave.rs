//! A member's goodbye reaches an event server whose session was still coming up when the
//! member started to leave.
//!
//! On lossy links a session's handshake or welcome can be late (a lost packet waits for QUIC's
//! probe timeout); a member that leaves meanwhile has already announced itself on that session
//! (the hello goes before the welcome). Before the fix, `EventClient::leave` said goodbye only
//! on the sessions already welcomed and did not wait for the others, so that server kept the
//! member until its idle timeout (and, taking its late announcement for a join, made the
//! manager see the member leave and come back).
//!
//! The event server here is a stand-in speaking the wire protocol, so that the test decides
//! when the welcome goes out.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use onehop_certs::{Ca, IssueRequest};
use onehop_overlay::client::{ClientOptions, EventClient};
use onehop_overlay::crl::CrlState;
use onehop_overlay::net::{self, ConnTable, Timing};
use onehop_overlay::status::Kind;
use onehop_overlay::tls::{Credentials, TlsFiles};
use onehop_overlay::wire::{
    encode_frame, read_msg, Announce, ClientMsg, ServerMsg, Topic, MAX_FRAME,
};
use tokio::sync::oneshot;

fn creds(ca: &Ca, issued: &onehop_certs::Issued) -> Credentials {
    Credentials::load(&TlsFiles {
        ca: ca.cert_path(),
        cert: issued.cert_path.clone(),
        key: issued.key_path.clone(),
        crl: None,
    })
    .unwrap()
}

#[test]
fn a_session_welcomed_after_leave_began_gets_the_goodbye_and_is_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = Ca::init(dir.path().join("ca"), "example.test").unwrap();
    let ip: IpAddr = [127, 0, 0, 1].into();
    let certs = dir.path().join("certs");
    let es = ca
        .issue(
            &IssueRequest::new("es-late", Kind::Eventserver).ips([ip]),
            &certs,
        )
        .unwrap();
    let node = ca
        .issue(
            &IssueRequest::new("node-leaving", Kind::Node).ips([ip]),
            &certs,
        )
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let server = net::endpoint(
            SocketAddr::new(ip, 0),
            &creds(&ca, &es),
            &CrlState::default(),
            Timing::default(),
            Some(16),
        )
        .unwrap();
        let server_addr = server.local_addr().unwrap();
        let (hello_tx, hello_rx) = oneshot::channel();
        let (welcome_tx, welcome_rx) = oneshot::channel::<()>();
        // The stand-in: takes the hello, welcomes only when told, then gathers what the
        // member sends until its side of the stream ends, and closes as a server does after a
        // goodbye.
        let stand_in = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let mut got = Vec::new();
            loop {
                let msg: ClientMsg = read_msg(&mut recv, MAX_FRAME).await.unwrap().unwrap();
                let subscribed = matches!(msg, ClientMsg::Subscribe(_));
                got.push(msg);
                if subscribed {
                    break;
                }
            }
            hello_tx.send(()).unwrap();
            welcome_rx.await.unwrap();
            send.write_all(&encode_frame(&ServerMsg::Welcome {
                server: "es-late".into(),
            }))
            .await
            .unwrap();
            let after = tokio::time::timeout(Duration::from_secs(10), async {
                let mut after = Vec::new();
                while let Ok(Some(msg)) = read_msg::<ClientMsg, _>(&mut recv, MAX_FRAME).await {
                    let leave = matches!(msg, ClientMsg::Leave);
                    after.push(msg);
                    if leave {
                        break;
                    }
                }
                after
            })
            .await
            .unwrap_or_default();
            conn.close(0u32.into(), b"bye");
            (got, after)
        });

        let endpoint = net::endpoint(
            SocketAddr::new(ip, 0),
            &creds(&ca, &node),
            &CrlState::default(),
            Timing::default(),
            None,
        )
        .unwrap();
        let opts = ClientOptions {
            eventservers: vec![server_addr],
            announce: Some(Announce {
                roles: Vec::new(),
                endpoints: Vec::new(),
            }),
            subscribe: vec![Topic::Members],
            ..Default::default()
        };
        let (client, _events) = EventClient::start(endpoint, opts, ConnTable::default(), None);
        tokio::time::timeout(Duration::from_secs(10), hello_rx)
            .await
            .expect("the member's hello in time")
            .unwrap();
        // The member leaves while its session waits for the welcome; the welcome goes out only
        // once `leave` has taken the sessions it knows (none welcomed) and is waiting.
        let leave = tokio::spawn({
            let client = client.clone();
            async move { client.leave(Duration::from_secs(5)).await }
        });
        while !client.is_stopping() {
            tokio::task::yield_now().await;
        }
        welcome_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), leave)
            .await
            .expect("leave ended within its wait")
            .unwrap();
        let (got, after) = stand_in.await.unwrap();
        assert!(
            matches!(got.first(), Some(ClientMsg::Announce(_))),
            "the hello announces the member: {got:?}"
        );
        assert!(
            matches!(after.last(), Some(ClientMsg::Leave)),
            "the member said goodbye on the late session: {after:?}"
        );
    });
}
