//! The proxy core on real UDP sockets (loopback), with a registrar that always knows one
//! callee: whole calls (INVITE, 200, ACK, BYE, 200) through it, many more than the
//! transaction table holds at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use onehop_overlay::metrics::Metrics;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::proxy::core;
use crate::proxy::test_support::{recv_sip, NoPeers, OneCallee};
use crate::proxy::transport::{TransportConfig, Transports};
use crate::proxy::ProxyConfig;
use crate::view::View;

fn header<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.split("\r\n")
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .collect()
}

fn status(msg: &str) -> u16 {
    msg.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The UAS's response to `req`: Vias, From, To (with a tag), Call-ID, CSeq and
/// Record-Route copied.
fn answer(req: &str, code: u16, reason: &str, contact: SocketAddr) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for v in header(req, "Via") {
        out.push_str(&format!("Via: {v}\r\n"));
    }
    for rr in header(req, "Record-Route") {
        out.push_str(&format!("Record-Route: {rr}\r\n"));
    }
    out.push_str(&format!("From: {}\r\n", header(req, "From")[0]));
    let to = header(req, "To")[0];
    if to.contains("tag=") {
        out.push_str(&format!("To: {to}\r\n"));
    } else {
        out.push_str(&format!("To: {to};tag=uas\r\n"));
    }
    out.push_str(&format!("Call-ID: {}\r\n", header(req, "Call-ID")[0]));
    out.push_str(&format!("CSeq: {}\r\n", header(req, "CSeq")[0]));
    out.push_str(&format!("Contact: <sip:uas@{contact}>\r\n"));
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

#[allow(clippy::too_many_arguments)]
fn request(
    method: &str,
    ruri: &str,
    route: Option<&str>,
    uac: SocketAddr,
    branch: &str,
    call: &str,
    to_tag: Option<&str>,
    cseq: u32,
) -> String {
    let mut out = format!("{method} {ruri} SIP/2.0\r\n");
    out.push_str(&format!(
        "Via: SIP/2.0/UDP {uac};branch=z9hG4bK{branch};rport\r\n"
    ));
    if let Some(r) = route {
        out.push_str(&format!("Route: {r}\r\n"));
    }
    out.push_str("Max-Forwards: 70\r\n");
    out.push_str(&format!("From: <sip:uac@example.test>;tag=uac-{call}\r\n"));
    match to_tag {
        Some(t) => out.push_str(&format!("To: <sip:uas@example.test>;tag={t}\r\n")),
        None => out.push_str("To: <sip:uas@example.test>\r\n"),
    }
    out.push_str(&format!("Call-ID: {call}\r\n"));
    out.push_str(&format!("CSeq: {cseq} {method}\r\n"));
    out.push_str(&format!("Contact: <sip:uac@{uac}>\r\n"));
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

/// 60 calls, one after the other, through a core that holds at most 20 transactions: a
/// finished call must leave nothing in the count (its INVITE transactions linger lean for
/// 32 s, its BYE's for 5 s), or the eleventh call would get 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_calls_do_not_fill_the_transaction_table() {
    let cancel = CancellationToken::new();
    // An address of our own on loopback: UDP and TCP must both get the same port.
    let listen: SocketAddr = "127.0.93.1:15060".parse().unwrap();
    let tcfg = TransportConfig {
        listen,
        max_connections: 16,
        idle: Duration::from_secs(60),
        max_message: 65_535,
        queue: 1024,
        ..TransportConfig::new(listen)
    };
    let (transports, inbound) = Transports::bind(tcfg, &Metrics::default(), cancel.clone())
        .await
        .expect("bind the proxy's SIP sockets");
    let uac = UdpSocket::bind("127.0.93.2:0").await.unwrap();
    let uas = UdpSocket::bind("127.0.93.3:0").await.unwrap();
    let uac_addr = uac.local_addr().unwrap();
    let uas_addr = uas.local_addr().unwrap();
    let mut cfg = ProxyConfig::new("example.test", listen);
    cfg.auth = crate::proxy::AuthMode::Off;
    cfg.max_transactions = 20;
    let metrics = Metrics::default();
    let (_view_tx, view) = watch::channel(Arc::new(View::default()));
    let _core = core::start(
        cfg,
        "node1".into(),
        transports,
        inbound,
        Arc::new(OneCallee(uas_addr)),
        Arc::new(NoPeers),
        view,
        &metrics,
        cancel.clone(),
    );

    let proxy_route = format!("<sip:{listen};lr>");
    for i in 0..60u32 {
        let call = format!("call-{i}");
        let invite = request(
            "INVITE",
            "sip:uas@example.test",
            None,
            uac_addr,
            &format!("inv{i}"),
            &call,
            None,
            1,
        );
        uac.send_to(invite.as_bytes(), listen).await.unwrap();
        let got = recv_sip(&uas, |m| m.starts_with("INVITE ")).await;
        assert!(
            got.contains(&call),
            "call {i}: the UAS got another call: {got}"
        );
        uas.send_to(answer(&got, 200, "OK", uas_addr).as_bytes(), listen)
            .await
            .unwrap();
        let ok = recv_sip(&uac, |m| m.starts_with("SIP/2.0 ") && status(m) >= 200).await;
        assert_eq!(status(&ok), 200, "call {i}: INVITE answered {ok}");
        let route = header(&ok, "Record-Route").join(", ");
        assert!(
            route.contains(&listen.to_string()),
            "the proxy record-routes: {ok}"
        );
        let target = format!("sip:uas@{uas_addr}");
        let ack = request(
            "ACK",
            &target,
            Some(&proxy_route),
            uac_addr,
            &format!("ack{i}"),
            &call,
            Some("uas"),
            1,
        );
        uac.send_to(ack.as_bytes(), listen).await.unwrap();
        recv_sip(&uas, |m| m.starts_with("ACK ")).await;
        let bye = request(
            "BYE",
            &target,
            Some(&proxy_route),
            uac_addr,
            &format!("bye{i}"),
            &call,
            Some("uas"),
            2,
        );
        uac.send_to(bye.as_bytes(), listen).await.unwrap();
        let got = recv_sip(&uas, |m| m.starts_with("BYE ")).await;
        uas.send_to(answer(&got, 200, "OK", uas_addr).as_bytes(), listen)
            .await
            .unwrap();
        let ok = recv_sip(&uac, |m| m.starts_with("SIP/2.0 ") && m.contains("BYE")).await;
        assert_eq!(status(&ok), 200, "call {i}: BYE answered {ok}");
    }
    // The worker adds its counts to the figures after its turn, which may end after the last
    // 200 has reached the UAC: wait for that turn's figures (at most 5 s).
    let settled = async {
        while metrics.value("sip_requests_total") != Some(180)
            || metrics.value("sip_responses_total{code=\"200\"}") != Some(120)
        {
            tokio::task::yield_now().await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), settled).await;
    assert_eq!(
        metrics.value("sip_overload_total"),
        Some(0),
        "nothing refused"
    );
    for method in ["INVITE", "ACK", "BYE"] {
        let name = format!("sip_requests_by_method_total{{method=\"{method}\"}}");
        assert_eq!(metrics.value(&name), Some(60), "{name}");
    }
    assert_eq!(metrics.value("sip_requests_total"), Some(180));
    assert_eq!(
        metrics.value("sip_responses_total{code=\"200\"}"),
        Some(120),
        "the 200s of 60 INVITEs and 60 BYEs"
    );
    // The core updates its gauges after each event; the last BYE's 200 was its last one.
    let live = metrics.value("sip_transactions").unwrap_or(-1);
    let lingering = metrics.value("sip_transactions_lingering").unwrap_or(-1);
    assert!(
        live <= 2,
        "finished calls hold no full transaction: {live} live"
    );
    assert!(
        lingering >= 120,
        "each call's INVITE server and client transactions linger: {lingering}"
    );
    cancel.cancel();
}

/// A call to a `tel:` number: the worker asks the locator where the number is routed (an
/// account, whose one contact is the UAS), then for the account's bindings, and forwards the
/// INVITE there; a `tel:` URI that names no global number is answered 404 without a lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_a_tel_number_goes_through_the_number_registry() {
    let cancel = CancellationToken::new();
    let listen: SocketAddr = "127.0.50.1:15060".parse().unwrap();
    let (transports, inbound) = Transports::bind(
        TransportConfig::new(listen),
        &Metrics::default(),
        cancel.clone(),
    )
    .await
    .expect("bind the proxy's SIP sockets");
    let uac = UdpSocket::bind("127.0.50.2:0").await.unwrap();
    let uas = UdpSocket::bind("127.0.50.3:0").await.unwrap();
    let (uac_addr, uas_addr) = (uac.local_addr().unwrap(), uas.local_addr().unwrap());
    let mut cfg = ProxyConfig::new("example.test", listen);
    cfg.auth = crate::proxy::AuthMode::Off;
    let (_view_tx, view) = watch::channel(Arc::new(View::default()));
    let _core = core::start(
        cfg,
        "node1".into(),
        transports,
        inbound,
        Arc::new(OneCallee(uas_addr)),
        Arc::new(NoPeers),
        view,
        &Metrics::default(),
        cancel.clone(),
    );
    let invite = request(
        "INVITE",
        "tel:+1-555-0100",
        None,
        uac_addr,
        "tel1",
        "tel-call-1",
        None,
        1,
    );
    uac.send_to(invite.as_bytes(), listen).await.unwrap();
    let got = recv_sip(&uas, |m| m.starts_with("INVITE ")).await;
    assert!(
        got.starts_with(&format!("INVITE sip:uas@{uas_addr} SIP/2.0")),
        "the number's account's contact is the Request-URI: {got}"
    );
    uas.send_to(answer(&got, 486, "Busy Here", uas_addr).as_bytes(), listen)
        .await
        .unwrap();
    let busy = recv_sip(&uac, |m| m.starts_with("SIP/2.0 ") && status(m) >= 200).await;
    assert_eq!(status(&busy), 486, "{busy}");
    // A local number with no context: not a number this farm can place.
    let invite = request(
        "INVITE",
        "tel:5550100",
        None,
        uac_addr,
        "tel2",
        "tel-call-2",
        None,
        1,
    );
    uac.send_to(invite.as_bytes(), listen).await.unwrap();
    let r = recv_sip(&uac, |m| m.starts_with("SIP/2.0 ") && status(m) >= 200).await;
    assert!(r.starts_with("SIP/2.0 404 Number Not Routed"), "{r}");
    cancel.cancel();
}
