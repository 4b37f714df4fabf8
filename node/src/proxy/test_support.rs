//! Fixtures shared by the proxy's tests that run the core on loopback sockets.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::proxy::{BoxFut, LocateError, Locator, PeerLink, Receipt, SipEnvelope};
use crate::sip::registrar::{Binding, RegisterInfo, RegistrarPolicy};

/// Every AOR is bound to one contact, the test's UAS.
pub(crate) struct OneCallee(pub SocketAddr);

impl Locator for OneCallee {
    fn register(
        &self,
        _info: RegisterInfo,
        _policy: RegistrarPolicy,
        _auth: Option<Box<crate::proxy::AuthCheck>>,
    ) -> BoxFut<Result<Vec<Binding>, LocateError>> {
        Box::pin(async { Err(LocateError::Unavailable("not in this test".into())) })
    }

    fn authenticate(
        &self,
        _aor: String,
        _auth: Box<crate::proxy::AuthCheck>,
    ) -> BoxFut<Result<(), LocateError>> {
        Box::pin(async { Err(LocateError::Unavailable("not in this test".into())) })
    }

    /// Every number is routed to an account (whose one contact is the UAS).
    fn number(
        &self,
        number: String,
    ) -> BoxFut<Result<Option<onehop_overlay::provision::NumberRoute>, LocateError>> {
        Box::pin(async move {
            Ok(Some(onehop_overlay::provision::NumberRoute::Account(
                format!("{number}-owner@example.test"),
            )))
        })
    }

    fn lookup(&self, _aor: String) -> BoxFut<Result<Vec<Binding>, LocateError>> {
        let uas = self.0;
        Box::pin(async move {
            Ok(vec![Binding {
                uri: format!("sip:uas@{uas}"),
                expires_at_ms: u64::MAX / 2,
                q: None,
                call_id: "reg".into(),
                cseq: 1,
                flow: None,
                received: Some(uas),
                updated_at_ms: 1,
            }])
        })
    }
}

pub(crate) struct NoPeers;

impl PeerLink for NoPeers {
    fn send(
        &self,
        _node: String,
        _env: SipEnvelope,
        _receipt: Option<Receipt>,
    ) -> Result<(), String> {
        Err("no peers in this test".into())
    }
}

/// Receives until a message passes `pick`, within 5 s.
pub(crate) async fn recv_sip(sock: &UdpSocket, pick: impl Fn(&str) -> bool) -> String {
    let mut buf = vec![0u8; 65_536];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (n, _) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf))
            .await
            .expect("a SIP message within 5 s")
            .expect("recv");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if pick(&text) {
            return text;
        }
    }
}
