//! The media gate alone (with a relay engine of its own in place of the farm's relays), and
//! the proxy core with the gate on real UDP sockets: a whole relayed call.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onehop_overlay::metrics::Metrics;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::proxy::core::{self, Event, Hop};
use crate::proxy::test_support::{recv_sip, NoPeers, OneCallee};
use crate::proxy::transport::{TransportConfig, Transports};
use crate::proxy::{BoxFut, ProxyConfig};
use crate::relay::{Endpoint, RelayEngine, RelaySettings};
use crate::sip::{parse, Message};
use crate::view::View;

/// Relays with one engine of the test's own; every call is logged.
struct Local {
    engine: Option<RelayEngine>,
    log: Mutex<Vec<String>>,
}

impl Local {
    fn new(engine: Option<RelayEngine>) -> Arc<Local> {
        Arc::new(Local {
            engine,
            log: Mutex::new(Vec::new()),
        })
    }
    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
    fn note(&self, s: String) {
        self.log.lock().unwrap().push(s);
    }
}

impl RelayControl for Local {
    fn available(&self, _call_id: &str) -> bool {
        self.engine.is_some()
    }
    fn allocate(
        &self,
        call_id: String,
        from_tag: String,
        media: Vec<Option<Endpoint>>,
        source: Option<IpAddr>,
    ) -> BoxFut<Allocation> {
        self.note(format!("allocate {call_id} {}", media.len()));
        self.note(format!("source {call_id} {source:?}"));
        let r = match self
            .engine
            .as_ref()
            .map(|e| e.allocate(&call_id, &from_tag, &media, source))
        {
            Some(Ok(addrs)) => Allocation::Relayed {
                relay: "local".into(),
                addrs,
                fallback: false,
            },
            Some(Err(e)) => Allocation::Unrelayed(e.as_str().into()),
            None => Allocation::Unrelayed("none".into()),
        };
        Box::pin(async move { r })
    }
    fn update(
        &self,
        call_id: String,
        from_tag: String,
        response: bool,
        media: Vec<Option<Endpoint>>,
        source: Option<IpAddr>,
    ) -> BoxFut<Option<Vec<Option<SocketAddr>>>> {
        self.note(format!("update {call_id} {response}"));
        self.note(format!("source {call_id} {source:?}"));
        let r = self.engine.as_ref().and_then(|e| {
            e.update(&call_id, &from_tag, response, &media, source)
                .ok()
                .flatten()
        });
        Box::pin(async move { r })
    }
    fn delete(&self, call_id: String) -> BoxFut<()> {
        self.note(format!("delete {call_id}"));
        if let Some(e) = &self.engine {
            e.delete(&call_id);
        }
        Box::pin(async {})
    }
}

fn engine(lo: u16, ip: &str) -> RelayEngine {
    RelayEngine::start(
        RelaySettings {
            ip: ip.parse().unwrap(),
            ports: (lo, lo + 199),
            idle: Duration::from_secs(60),
            max_sessions: 100,
            max_streams: 8,
        },
        &Metrics::default(),
        CancellationToken::new(),
    )
}

fn sdp(ip: &str, port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )
}

/// `(address, port)` of the first stream of an SDP body.
fn media_of(body: &str) -> SocketAddr {
    let ip = body
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("c=IN IP4 "))
        .expect("c= line");
    let port = body
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .expect("m= line");
    format!("{ip}:{port}").parse().unwrap()
}

fn msg(text: &str) -> Message {
    parse(text.as_bytes()).expect("test message parses")
}

fn body_of(m: &Message) -> String {
    String::from_utf8_lossy(m.body()).into_owned()
}

#[allow(clippy::too_many_arguments)]
fn request(
    method: &str,
    ruri: &str,
    uac: SocketAddr,
    branch: &str,
    call: &str,
    from_tag: &str,
    to_tag: Option<&str>,
    cseq: u32,
    route: Option<&str>,
    body: &str,
) -> String {
    let mut out = format!("{method} {ruri} SIP/2.0\r\n");
    out.push_str(&format!(
        "Via: SIP/2.0/UDP {uac};branch=z9hG4bK{branch};rport\r\n"
    ));
    if let Some(r) = route {
        out.push_str(&format!("Route: {r}\r\n"));
    }
    out.push_str("Max-Forwards: 70\r\n");
    out.push_str(&format!("From: <sip:uac@example.test>;tag={from_tag}\r\n"));
    match to_tag {
        Some(t) => out.push_str(&format!("To: <sip:uas@example.test>;tag={t}\r\n")),
        None => out.push_str("To: <sip:uas@example.test>\r\n"),
    }
    out.push_str(&format!("Call-ID: {call}\r\n"));
    out.push_str(&format!("CSeq: {cseq} {method}\r\n"));
    out.push_str(&format!("Contact: <sip:uac@{uac}>\r\n"));
    if !body.is_empty() {
        out.push_str("Content-Type: application/sdp\r\n");
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    out
}

fn header<'a>(m: &'a str, name: &str) -> Vec<&'a str> {
    m.split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .split("\r\n")
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .collect()
}

/// The UAS's answer to `req`, with `body` as SDP when not empty.
fn answer(req: &str, code: u16, contact: SocketAddr, body: &str) -> String {
    let mut out = format!("SIP/2.0 {code} Whatever\r\n");
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
    if !body.is_empty() {
        out.push_str("Content-Type: application/sdp\r\n");
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    out
}

fn net() -> Hop {
    Hop::Net {
        proto: crate::sip::Transport::Udp,
        remote: "192.0.2.9:5060".parse().unwrap(),
        conn: 0,
    }
}

async fn next_done(rx: &mut mpsc::UnboundedReceiver<Event>) -> Done {
    match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        Ok(Some(Event::Media(d))) => *d,
        Ok(Some(_)) => panic!("another event"),
        _ => panic!("no relay result within 5 s"),
    }
}

fn gate(
    control: Arc<Local>,
    allocate: bool,
) -> (MediaGate, mpsc::UnboundedReceiver<Event>, Metrics) {
    let (tx, rx) = mpsc::unbounded_channel();
    let metrics = Metrics::default();
    let g = MediaGate::new(MediaRelay { control, allocate }, tx, &metrics);
    (g, rx, metrics)
}

const UAC: &str = "198.51.100.7:5060";

#[tokio::test]
async fn messages_held_behind_a_relay_request_are_bounded_in_bytes() {
    let local = Local::new(Some(engine(43100, "127.0.0.1")));
    let uac: SocketAddr = UAC.parse().unwrap();
    let invite = request(
        "INVITE",
        "sip:uas@example.test",
        uac,
        "inv1",
        "call-1",
        "a",
        None,
        1,
        None,
        &sdp("198.51.100.7", 8000),
    );
    let ringing = answer(&invite, 180, uac, "");
    let ok = answer(&invite, 200, uac, "");
    let ringing_len = msg(&ringing).to_bytes().len();
    // Room for the 180 behind the 183, not for the 200 as well.
    let (g, mut rx, metrics) = gate(local.clone(), true);
    let mut g = g.with_held_bytes(ringing_len + 10);
    let Message::Request(req) = msg(&invite) else {
        unreachable!()
    };
    g.inbound(msg(&invite), &net(), None).expect("passes");
    let key = TransactionKey::server(&req).unwrap();
    assert!(g.invite_out(&key, &req, &net()));
    let Resume::Forward(..) = g.done(next_done(&mut rx).await) else {
        panic!("forwarded")
    };
    let early = answer(&invite, 183, uac, &sdp("203.0.113.5", 9000));
    assert!(
        g.inbound(msg(&early), &net(), None).is_none(),
        "at the relay"
    );
    assert!(g.inbound(msg(&ringing), &net(), None).is_none(), "held");
    assert_eq!(g.held_bytes(), ringing_len);
    assert!(g.inbound(msg(&ok), &net(), None).is_none(), "dropped");
    assert_eq!(g.waiting(), (1, 0), "only the 180 is held");
    assert_eq!(metrics.value("relay_held_dropped_total"), Some(1));
    let Resume::Dispatch(out) = g.done(next_done(&mut rx).await) else {
        panic!("released")
    };
    let codes: Vec<u16> = out
        .iter()
        .map(|h| h.msg.as_response().unwrap().status)
        .collect();
    assert_eq!(codes, [183, 180]);
    assert_eq!(g.held_bytes(), 0, "the bytes held are given back");
}

#[tokio::test]
async fn offer_and_answer_are_rewritten_in_order_and_a_failure_frees() {
    let local = Local::new(Some(engine(43000, "127.0.0.1")));
    let (mut g, mut rx, metrics) = gate(local.clone(), true);
    let uac: SocketAddr = UAC.parse().unwrap();
    let invite = request(
        "INVITE",
        "sip:uas@example.test",
        uac,
        "inv1",
        "call-1",
        "a",
        None,
        1,
        None,
        &sdp("198.51.100.7", 8000),
    );
    let Message::Request(req) = msg(&invite) else {
        unreachable!()
    };
    // The initial INVITE passes the inbound gate (its session is made when it is forwarded).
    let m = g.inbound(msg(&invite), &net(), None).expect("passes");
    assert_eq!(body_of(&m), sdp("198.51.100.7", 8000));
    let key = TransactionKey::server(&req).unwrap();
    assert!(g.invite_out(&key, &req, &net()));
    assert_eq!(g.waiting(), (0, 1));
    let Resume::Forward(k, Some(fwd)) = g.done(next_done(&mut rx).await) else {
        panic!("forwarded with a new offer")
    };
    assert_eq!(k, key);
    let to_callee = media_of(&String::from_utf8_lossy(&fwd.body));
    assert_eq!(
        to_callee.ip().to_string(),
        "127.0.0.1",
        "the relay's address"
    );
    assert_eq!(
        fwd.headers.content_length(),
        Some(fwd.body.len()),
        "Content-Length follows the body"
    );
    assert_eq!(
        metrics.value("relay_allocations_total{result=\"ok\"}"),
        Some(1)
    );

    // The 183 with an answer waits for the relay; the 180 and 200 behind it keep their order.
    let ringing = answer(&invite, 180, uac, "");
    let early = answer(&invite, 183, uac, &sdp("203.0.113.5", 9000));
    let ok = answer(&invite, 200, uac, "");
    assert!(g.inbound(msg(&early), &net(), None).is_none(), "held");
    assert!(
        g.inbound(msg(&ringing), &net(), None).is_none(),
        "behind it"
    );
    assert!(g.inbound(msg(&ok), &net(), None).is_none(), "behind it");
    assert_eq!(g.waiting(), (2, 0));
    // Another call is not held.
    let other = request(
        "OPTIONS",
        "sip:uas@example.test",
        uac,
        "o1",
        "call-2",
        "x",
        None,
        1,
        None,
        "",
    );
    assert!(g.inbound(msg(&other), &net(), None).is_some());
    let Resume::Dispatch(out) = g.done(next_done(&mut rx).await) else {
        panic!("released")
    };
    let codes: Vec<u16> = out
        .iter()
        .map(|h| h.msg.as_response().unwrap().status)
        .collect();
    assert_eq!(codes, [183, 180, 200]);
    let to_caller = media_of(&body_of(&out[0].msg));
    assert_eq!(to_caller.ip().to_string(), "127.0.0.1");
    assert_ne!(to_caller, to_callee);
    assert_eq!(g.waiting(), (0, 0));
    // The relay heard where the INVITE and the 183 came from (their writers may send media
    // from there).
    let sources: Vec<String> = local
        .log()
        .into_iter()
        .filter(|l| l.starts_with("source call-1"))
        .collect();
    assert_eq!(
        sources,
        [
            "source call-1 Some(192.0.2.9)",
            "source call-1 Some(192.0.2.9)"
        ]
    );

    // From another node: not ours to rewrite.
    let peer = Hop::Peer {
        node: "node2".into(),
        deliver: None,
    };
    assert_eq!(
        body_of(&g.inbound(msg(&early), &peer, None).unwrap()),
        sdp("203.0.113.5", 9000)
    );

    // The INVITE's 2xx ends the tracking; a later failure does not free anything.
    g.final_response(&key, 200);
    g.final_response(&key, 486);
    assert!(!local.log().iter().any(|l| l.starts_with("delete")));
    // A BYE frees the session and goes on at once.
    let bye = request(
        "BYE",
        "sip:uas@198.51.100.8",
        uac,
        "bye1",
        "call-1",
        "a",
        Some("uas"),
        2,
        None,
        "",
    );
    assert!(g.inbound(msg(&bye), &net(), None).is_some());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !local.log().contains(&"delete call-1".to_string()) {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(!local.engine.as_ref().unwrap().has("call-1"));
}

#[tokio::test]
async fn failed_calls_free_their_session_and_untouched_cases() {
    let local = Local::new(Some(engine(43200, "127.0.0.1")));
    let (mut g, mut rx, metrics) = gate(local.clone(), true);
    let uac: SocketAddr = UAC.parse().unwrap();
    let inv = |call: &str, body: &str| {
        let text = request(
            "INVITE",
            "sip:uas@example.test",
            uac,
            call,
            call,
            "a",
            None,
            1,
            None,
            body,
        );
        let Message::Request(r) = msg(&text) else {
            unreachable!()
        };
        r
    };
    // Busy: the final failure frees the session.
    let r = inv("busy", &sdp("198.51.100.7", 8000));
    let key = TransactionKey::server(&r).unwrap();
    assert!(g.invite_out(&key, &r, &net()));
    assert!(matches!(
        g.done(next_done(&mut rx).await),
        Resume::Forward(..)
    ));
    assert!(local.engine.as_ref().unwrap().has("busy"));
    g.final_response(&key, 486);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while local.engine.as_ref().unwrap().has("busy") {
        assert!(tokio::time::Instant::now() < deadline, "never freed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    // Cancelled while the relay was being asked: freed when the answer comes, not forwarded.
    let r = inv("cancelled", &sdp("198.51.100.7", 8000));
    let key = TransactionKey::server(&r).unwrap();
    assert!(g.invite_out(&key, &r, &net()));
    g.final_response(&key, 487);
    assert!(matches!(g.done(next_done(&mut rx).await), Resume::Nothing));
    while local.engine.as_ref().unwrap().has("cancelled") {
        assert!(tokio::time::Instant::now() < deadline, "never freed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    // A late offer (no SDP): the session is made; nothing to rewrite yet.
    let r = inv("late", "");
    let key = TransactionKey::server(&r).unwrap();
    assert!(g.invite_out(&key, &r, &net()));
    assert!(matches!(
        g.done(next_done(&mut rx).await),
        Resume::Forward(_, None)
    ));
    assert!(local.log().contains(&"allocate late 0".to_string()));

    // Malformed SDP, hold (nothing to relay): forwarded untouched, no session.
    let r = inv("bad", "v=0\r\nm=audio x\r\n");
    assert!(!g.invite_out(&TransactionKey::server(&r).unwrap(), &r, &net()));
    assert_eq!(metrics.value("relay_sdp_malformed_total"), Some(1));
    let r = inv("hold", &sdp("0.0.0.0", 8000));
    assert!(!g.invite_out(&TransactionKey::server(&r).unwrap(), &r, &net()));
    // A re-INVITE is not an allocation (it is an update at the inbound gate).
    let mut r = inv("re", &sdp("198.51.100.7", 8000));
    r.headers.set("To", "<sip:uas@example.test>;tag=uas");
    assert!(!g.invite_out(&TransactionKey::server(&r).unwrap(), &r, &net()));
    assert!(!local
        .log()
        .iter()
        .any(|l| l.contains(" bad ") || l.contains(" hold ") || l.starts_with("allocate re")));

    // relay_media off: no session made here...
    let (mut off, _rx, _) = gate(local.clone(), false);
    let r = inv("off", &sdp("198.51.100.7", 8000));
    assert!(!off.invite_out(&TransactionKey::server(&r).unwrap(), &r, &net()));
    // ...and no relay live: none anywhere, counted.
    let (mut none, _rx, metrics) = gate(Local::new(None), true);
    assert!(!none.invite_out(&TransactionKey::server(&r).unwrap(), &r, &net()));
    assert_eq!(
        metrics.value("relay_allocations_total{result=\"unrelayed\"}"),
        Some(1)
    );
    // An answer for a call no relay holds goes on untouched.
    let (mut g2, mut rx2, _) = gate(local.clone(), true);
    let text = request(
        "INVITE",
        "sip:uas@example.test",
        uac,
        "z",
        "unknown-call",
        "a",
        None,
        1,
        None,
        "",
    );
    let ans = answer(&text, 200, uac, &sdp("203.0.113.5", 9000));
    assert!(g2.inbound(msg(&ans), &net(), None).is_none());
    let Resume::Dispatch(out) = g2.done(next_done(&mut rx2).await) else {
        panic!()
    };
    assert_eq!(body_of(&out[0].msg), sdp("203.0.113.5", 9000));
}

// ---------------------------------------------------------------------------------------------
// The core with the gate: a call through a proxy on loopback, its media through the relay.

async fn recv_media(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("media within 5 s")
        .unwrap();
    (buf[..n].to_vec(), from)
}

fn sdp_body(m: &str) -> &str {
    m.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_the_core_is_relayed_and_freed() {
    let cancel = CancellationToken::new();
    let listen: SocketAddr = "127.0.94.1:15060".parse().unwrap();
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
    let uac = UdpSocket::bind("127.0.94.2:0").await.unwrap();
    let uas = UdpSocket::bind("127.0.94.3:0").await.unwrap();
    let uac_rtp = UdpSocket::bind("127.0.94.2:0").await.unwrap();
    let uas_rtp = UdpSocket::bind("127.0.94.3:0").await.unwrap();
    let (uac_addr, uas_addr) = (uac.local_addr().unwrap(), uas.local_addr().unwrap());
    let relay_metrics = Metrics::default();
    let engine = RelayEngine::start(
        RelaySettings {
            ip: "127.0.94.1".parse().unwrap(),
            ports: (43400, 43499),
            idle: Duration::from_secs(60),
            max_sessions: 10,
            max_streams: 8,
        },
        &relay_metrics,
        cancel.clone(),
    );
    let mut cfg = ProxyConfig::new("example.test", listen);
    cfg.auth = crate::proxy::AuthMode::Off;
    cfg.media_relay = Some(MediaRelay {
        control: Local::new(Some(engine.clone())),
        allocate: true,
    });
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

    let offer = sdp("127.0.94.2", uac_rtp.local_addr().unwrap().port());
    let invite = request(
        "INVITE",
        "sip:uas@example.test",
        uac_addr,
        "inv",
        "relayed-call",
        "caller",
        None,
        1,
        None,
        &offer,
    );
    uac.send_to(invite.as_bytes(), listen).await.unwrap();
    let got = recv_sip(&uas, |m| m.starts_with("INVITE ")).await;
    let to_callee = media_of(sdp_body(&got));
    assert_eq!(
        to_callee.ip(),
        listen.ip(),
        "the offer names the relay: {got}"
    );
    assert_eq!(
        header(&got, "Content-Length"),
        [sdp_body(&got).len().to_string().as_str()]
    );
    let answer_sdp = sdp("127.0.94.3", uas_rtp.local_addr().unwrap().port());
    uas.send_to(answer(&got, 200, uas_addr, &answer_sdp).as_bytes(), listen)
        .await
        .unwrap();
    let ok = recv_sip(&uac, |m| m.starts_with("SIP/2.0 200")).await;
    let to_caller = media_of(sdp_body(&ok));
    assert_eq!(
        to_caller.ip(),
        listen.ip(),
        "the answer names the relay: {ok}"
    );
    assert_ne!(to_caller, to_callee);

    // Media both ways, each side sending where its SDP says.
    uac_rtp.send_to(b"from caller", to_caller).await.unwrap();
    assert_eq!(
        recv_media(&uas_rtp).await,
        (b"from caller".to_vec(), to_callee)
    );
    uas_rtp.send_to(b"from callee", to_callee).await.unwrap();
    assert_eq!(
        recv_media(&uac_rtp).await,
        (b"from callee".to_vec(), to_caller)
    );
    assert_eq!(relay_metrics.value("relay_sessions"), Some(1));

    // BYE through the proxy frees the session.
    let route = format!("<sip:{listen};lr>");
    let bye = request(
        "BYE",
        &format!("sip:uas@{uas_addr}"),
        uac_addr,
        "bye",
        "relayed-call",
        "caller",
        Some("uas"),
        2,
        Some(&route),
        "",
    );
    uac.send_to(bye.as_bytes(), listen).await.unwrap();
    let got = recv_sip(&uas, |m| m.starts_with("BYE ")).await;
    uas.send_to(answer(&got, 200, uas_addr, "").as_bytes(), listen)
        .await
        .unwrap();
    recv_sip(&uac, |m| m.starts_with("SIP/2.0 200")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while relay_metrics.value("relay_sessions") != Some(0) {
        assert!(tokio::time::Instant::now() < deadline, "session not freed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // A call answered 486: its session is freed with the failure.
    let invite = request(
        "INVITE",
        "sip:uas@example.test",
        uac_addr,
        "inv2",
        "busy-call",
        "caller",
        None,
        1,
        None,
        &offer,
    );
    uac.send_to(invite.as_bytes(), listen).await.unwrap();
    let got = recv_sip(&uas, |m| m.starts_with("INVITE ")).await;
    assert!(engine.has("busy-call"));
    uas.send_to(answer(&got, 486, uas_addr, "").as_bytes(), listen)
        .await
        .unwrap();
    recv_sip(&uac, |m| m.starts_with("SIP/2.0 486")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while engine.has("busy-call") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "busy call not freed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // A caller behind NAT: its SDP names a private address, its RTP comes from the address
    // its INVITE came from. A stranger's packets, even the first of the call, go nowhere.
    let private = sdp("10.0.0.2", 4000);
    let invite = request(
        "INVITE",
        "sip:uas@example.test",
        uac_addr,
        "inv3",
        "nat-call",
        "caller",
        None,
        1,
        None,
        &private,
    );
    uac.send_to(invite.as_bytes(), listen).await.unwrap();
    let got = recv_sip(&uas, |m| m.starts_with("INVITE ")).await;
    let to_callee = media_of(sdp_body(&got));
    uas.send_to(answer(&got, 200, uas_addr, &answer_sdp).as_bytes(), listen)
        .await
        .unwrap();
    let ok = recv_sip(&uac, |m| m.starts_with("SIP/2.0 200")).await;
    let to_caller = media_of(sdp_body(&ok));
    let stranger = UdpSocket::bind("127.0.94.4:0").await.unwrap();
    let strangers = |m: &Metrics| {
        m.value("relay_dropped_total{reason=\"stranger\"}")
            .unwrap_or(0)
    };
    let before = strangers(&relay_metrics);
    stranger.send_to(b"intruder", to_caller).await.unwrap();
    stranger.send_to(b"intruder", to_callee).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while strangers(&relay_metrics) < before + 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "strangers not counted"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The next datagrams each side receives are the other's: nothing of the stranger's.
    uac_rtp
        .send_to(b"from behind nat", to_caller)
        .await
        .unwrap();
    assert_eq!(
        recv_media(&uas_rtp).await,
        (b"from behind nat".to_vec(), to_callee)
    );
    uas_rtp.send_to(b"to the nat", to_callee).await.unwrap();
    assert_eq!(
        recv_media(&uac_rtp).await,
        (b"to the nat".to_vec(), to_caller)
    );
    cancel.cancel();
}
