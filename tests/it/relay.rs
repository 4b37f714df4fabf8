//! Media relay through a real farm: a callee registered through one node, a caller calling
//! through the other with an SDP offer. The callee's INVITE names the relay (the owner of
//! the Call-ID on the `media_relay` ring) and so does the caller's 200; "RTP" and "RTCP"
//! datagrams each side sends where its SDP says arrive at the other side, both ways, from the
//! relay's addresses; a stranger's packets are dropped; the relay's metrics count them; the
//! session is gone after BYE, and after a call answered 486. One call per relay node, so both
//! the local and the remote relay paths run.
//!
//! Everything is plain UDP on the farm's loopback addresses, each wait bounded.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crate::harness::{client_ip, wait_for, Farm};

const DOMAIN: &str = "example.test";

/// The `onehop_*` figures served on a node's metrics address.
fn metrics(farm: &Farm, node: &str) -> BTreeMap<String, i64> {
    let addr = farm
        .file
        .member(node)
        .and_then(|m| m.addr("metrics"))
        .expect("metrics address");
    let fetch = || -> Option<BTreeMap<String, i64>> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let body = text.split("\r\n\r\n").nth(1)?;
        Some(
            body.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (k, v) = l.rsplit_once(' ')?;
                    Some((k.trim_start_matches("onehop_").to_string(), v.parse().ok()?))
                })
                .collect(),
        )
    };
    wait_for(Duration::from_secs(5), fetch).expect("metrics answered")
}

fn metric(farm: &Farm, node: &str, name: &str) -> i64 {
    metrics(farm, node).get(name).copied().unwrap_or(0)
}

/// Polls a metric until `pred` holds (at most `secs` seconds); returns its last value.
fn until_metric(farm: &Farm, node: &str, name: &str, secs: u64, pred: impl Fn(i64) -> bool) {
    let got = wait_for(Duration::from_secs(secs), || {
        let v = metric(farm, node, name);
        if pred(v) {
            Some(v)
        } else {
            std::thread::sleep(Duration::from_millis(20));
            None
        }
    });
    assert!(
        got.is_some(),
        "{node}: {name} = {} after {secs} s",
        metric(farm, node, name)
    );
}

/// A SIP user agent on UDP with its RTP and RTCP sockets.
struct Ua {
    sip: UdpSocket,
    rtp: UdpSocket,
    rtcp: UdpSocket,
}

impl Ua {
    fn new(ip: IpAddr, rtp_port: u16) -> Ua {
        let bind = |port: u16| {
            let s = UdpSocket::bind(SocketAddr::new(ip, port)).expect("bind a UA socket");
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            s
        };
        Ua {
            sip: bind(0),
            rtp: bind(rtp_port),
            rtcp: bind(rtp_port + 1),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.sip.local_addr().unwrap()
    }

    fn media(&self) -> SocketAddr {
        self.rtp.local_addr().unwrap()
    }

    /// The next SIP message passing `pick` (others are skipped), within 10 s.
    fn recv(&self, what: &str, pick: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 65_535];
        while Instant::now() < deadline {
            if let Ok((n, _)) = self.sip.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if pick(&text) {
                    return text;
                }
            }
        }
        panic!("no {what} within 10 s");
    }

    fn send(&self, to: SocketAddr, msg: &str) {
        self.sip.send_to(msg.as_bytes(), to).expect("send SIP");
    }
}

fn sdp(media: SocketAddr) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=sendrecv\r\n",
        ip = media.ip(),
        port = media.port()
    )
}

/// The address of the (first) audio stream in a message's SDP.
fn media_of(msg: &str) -> SocketAddr {
    let body = msg.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let ip = body
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .unwrap_or_else(|| panic!("no c= line in {msg}"));
    let port = body
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("no m= line in {msg}"));
    format!("{}:{port}", ip.trim()).parse().unwrap()
}

fn headers<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .split("\r\n")
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

fn with_body(head: String, body: &str) -> String {
    let ct = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    format!("{head}{ct}Content-Length: {}\r\n\r\n{body}", body.len())
}

/// The callee's response to `req`.
fn respond(req: &str, code: u16, contact: SocketAddr, body: &str) -> String {
    let mut out = format!("SIP/2.0 {code} Relay Test\r\n");
    for name in ["Via", "Record-Route"] {
        for v in headers(req, name) {
            out.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    out.push_str(&format!("From: {}\r\n", headers(req, "From")[0]));
    let to = headers(req, "To")[0];
    if to.contains("tag=") {
        out.push_str(&format!("To: {to}\r\n"));
    } else {
        out.push_str(&format!("To: {to};tag=bob-tag\r\n"));
    }
    for name in ["Call-ID", "CSeq"] {
        out.push_str(&format!("{name}: {}\r\n", headers(req, name)[0]));
    }
    out.push_str(&format!("Contact: <sip:bob@{contact}>\r\n"));
    with_body(out, body)
}

/// A request of the caller in the dialog set up by `ok` (the 200 to its INVITE).
fn in_dialog(method: &str, ok: &str, uac: SocketAddr, call: &str, cseq: u32) -> String {
    let target = headers(ok, "Contact")[0]
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_string();
    let mut routes: Vec<&str> = headers(ok, "Record-Route")
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    routes.reverse();
    let mut out = format!("{method} {target} SIP/2.0\r\n");
    out.push_str(&format!(
        "Via: SIP/2.0/UDP {uac};branch=z9hG4bK-{call}-{method}-{cseq};rport\r\n"
    ));
    for r in routes {
        out.push_str(&format!("Route: {r}\r\n"));
    }
    out.push_str("Max-Forwards: 70\r\n");
    out.push_str(&format!("From: <sip:alice@{DOMAIN}>;tag=alice-{call}\r\n"));
    out.push_str(&format!("To: {}\r\n", headers(ok, "To")[0]));
    out.push_str(&format!("Call-ID: {call}\r\n"));
    let m = if method == "ACK" { "ACK" } else { method };
    out.push_str(&format!("CSeq: {cseq} {m}\r\n"));
    with_body(out, "")
}

fn invite(uac: &Ua, call: &str) -> String {
    let a = uac.addr();
    let head = format!(
        "INVITE sip:bob@{DOMAIN} SIP/2.0\r\n\
Via: SIP/2.0/UDP {a};branch=z9hG4bK-{call}-inv;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@{DOMAIN}>;tag=alice-{call}\r\n\
To: <sip:bob@{DOMAIN}>\r\n\
Call-ID: {call}\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@{a}>\r\n"
    );
    with_body(head, &sdp(uac.media()))
}

/// Sends from `from` to `to` until `at` has received `n` datagrams (each checked to come from
/// `via`); returns them.
fn flow(from: &UdpSocket, to: SocketAddr, at: &UdpSocket, via: SocketAddr, tag: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = 0;
    let mut buf = [0u8; 2048];
    let mut i = 0;
    while got < n {
        assert!(
            Instant::now() < deadline,
            "{tag}: {got} of {n} datagrams arrived through the relay in 10 s"
        );
        let payload = format!("{tag} {i}");
        i += 1;
        from.send_to(payload.as_bytes(), to).unwrap();
        if let Ok((len, src)) = at.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..len]);
            assert!(text.starts_with(tag), "{tag}: got {text:?}");
            assert_eq!(src, via, "{tag}: relayed from the relay's address");
            got += 1;
        }
    }
}

#[test]
fn calls_through_two_nodes_have_their_media_relayed() {
    let farm = Farm::up_with_rings(
        "127.0.140.1",
        &["--nodes", "2", "--dns", "0"],
        &["registrar", "sip_proxy", "media_relay"],
    );
    let nodes = farm.names("node");
    let mut lookups = farm.lookups();
    let sip = |n: &str| SocketAddr::new(farm.ip(n), 5060);
    let node_of_ip = |ip: IpAddr| {
        nodes
            .iter()
            .find(|n| farm.ip(n) == ip)
            .cloned()
            .unwrap_or_else(|| panic!("{ip} is no node"))
    };

    // The callee registers through node2.
    let uas = Ua::new(client_ip(&farm, 200), 30_002);
    let uac = Ua::new(client_ip(&farm, 201), 30_000);
    let reg = with_body(
        format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\n\
Via: SIP/2.0/UDP {a};branch=z9hG4bK-reg-1;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:bob@{DOMAIN}>;tag=reg\r\n\
To: <sip:bob@{DOMAIN}>\r\n\
Call-ID: reg-bob@relay-it\r\n\
CSeq: 1 REGISTER\r\n\
Contact: <sip:bob@{a}>\r\n\
Expires: 600\r\n",
            a = uas.addr()
        ),
        "",
    );
    uas.send(sip("node2"), &reg);
    let ok = uas.recv("200 to REGISTER", |m| {
        m.starts_with("SIP/2.0 ") && status(m) >= 200
    });
    assert_eq!(status(&ok), 200, "{ok}");

    // One call whose relay is node1 (local to the caller's node), one whose relay is node2.
    let mut owner = |call: &str| {
        let line = lookups[0].1.ask(&format!("owner media_relay for {call}"));
        line.split(' ').next().unwrap_or("").to_string()
    };
    let mut calls = Vec::new();
    for want in ["node1", "node2"] {
        let call = (0..1000)
            .map(|i| format!("relay-{i}@relay-it"))
            .find(|c| owner(c) == want && !calls.contains(c))
            .expect("a Call-ID for each relay");
        calls.push(call);
    }
    let stranger = UdpSocket::bind(SocketAddr::new(client_ip(&farm, 202), 0)).unwrap();

    for call in &calls {
        let relay = owner(call);
        let packets_before = metric(
            &farm,
            &relay,
            "relay_packets_total{direction=\"caller_to_callee\"}",
        );
        uac.send(sip("node1"), &invite(&uac, call));
        let inv = uas.recv("INVITE", |m| m.starts_with("INVITE "));
        // The callee is to send to the relay, not to the caller.
        let to_callee_side = media_of(&inv);
        assert_eq!(
            node_of_ip(to_callee_side.ip()),
            relay,
            "{call}: the offer names the owner of the Call-ID on the media_relay ring:\n{inv}"
        );
        assert_ne!(to_callee_side, uac.media());
        assert_eq!(to_callee_side.port() % 2, 0, "RTP on an even port");
        let cl: usize = headers(&inv, "Content-Length")[0].parse().unwrap();
        assert_eq!(cl, inv.split_once("\r\n\r\n").unwrap().1.len());
        until_metric(&farm, &relay, "relay_sessions", 5, |v| v == 1);

        uas.send(sip("node2"), &respond(&inv, 180, uas.addr(), ""));
        uas.send(
            sip("node2"),
            &respond(&inv, 200, uas.addr(), &sdp(uas.media())),
        );
        let ok = uac.recv("200 to INVITE", |m| m.starts_with("SIP/2.0 200"));
        let to_caller_side = media_of(&ok);
        assert_eq!(
            to_caller_side.ip(),
            to_callee_side.ip(),
            "{call}: one relay"
        );
        assert_ne!(to_caller_side, to_callee_side);
        uac.send(sip("node1"), &in_dialog("ACK", &ok, uac.addr(), call, 1));

        // A stranger sending to both sides before either latched: dropped, and it latches
        // nothing (the flows below check every datagram that arrives).
        let strangers = metric(&farm, &relay, "relay_dropped_total{reason=\"stranger\"}");
        stranger.send_to(b"intruder", to_caller_side).unwrap();
        stranger.send_to(b"intruder", to_callee_side).unwrap();
        until_metric(
            &farm,
            &relay,
            "relay_dropped_total{reason=\"stranger\"}",
            5,
            |v| v >= strangers + 2,
        );

        // RTP both ways, then RTCP both ways (port + 1).
        flow(
            &uac.rtp,
            to_caller_side,
            &uas.rtp,
            to_callee_side,
            "caller-rtp",
            5,
        );
        flow(
            &uas.rtp,
            to_callee_side,
            &uac.rtp,
            to_caller_side,
            "callee-rtp",
            5,
        );
        let rtcp = |a: SocketAddr| SocketAddr::new(a.ip(), a.port() + 1);
        flow(
            &uac.rtcp,
            rtcp(to_caller_side),
            &uas.rtcp,
            rtcp(to_callee_side),
            "caller-rtcp",
            2,
        );
        flow(
            &uas.rtcp,
            rtcp(to_callee_side),
            &uac.rtcp,
            rtcp(to_caller_side),
            "callee-rtcp",
            2,
        );
        // A stranger sending to the caller's side after it latched: dropped.
        let strangers = metric(&farm, &relay, "relay_dropped_total{reason=\"stranger\"}");
        stranger.send_to(b"intruder", to_caller_side).unwrap();
        until_metric(
            &farm,
            &relay,
            "relay_dropped_total{reason=\"stranger\"}",
            5,
            |v| v > strangers,
        );
        flow(
            &uac.rtp,
            to_caller_side,
            &uas.rtp,
            to_callee_side,
            "caller-rtp",
            1,
        );
        let m = metrics(&farm, &relay);
        println!(
            "media_relay: {call} through {relay}: {:?} caller->callee, {:?} callee->caller packets, {:?} bytes",
            m.get("relay_packets_total{direction=\"caller_to_callee\"}"),
            m.get("relay_packets_total{direction=\"callee_to_caller\"}"),
            m.get("relay_bytes_total{direction=\"caller_to_callee\"}"),
        );
        assert!(
            m["relay_packets_total{direction=\"caller_to_callee\"}"] >= packets_before + 8,
            "{m:?}"
        );
        assert!(m["relay_packets_total{direction=\"callee_to_caller\"}"] >= 7);
        assert!(m["relay_bytes_total{direction=\"callee_to_caller\"}"] > 0);

        // BYE from the caller: the session is gone.
        uac.send(sip("node1"), &in_dialog("BYE", &ok, uac.addr(), call, 2));
        let bye = uas.recv("BYE", |m| m.starts_with("BYE "));
        uas.send(sip("node2"), &respond(&bye, 200, uas.addr(), ""));
        uac.recv("200 to BYE", |m| {
            m.starts_with("SIP/2.0 200") && m.contains("BYE\r\n")
        });
        until_metric(&farm, &relay, "relay_sessions", 5, |v| v == 0);
    }
    let allocated: i64 = nodes
        .iter()
        .map(|n| metric(&farm, n, "relay_allocations_total{result=\"ok\"}"))
        .sum();
    assert_eq!(allocated, 2, "one relay session per call, made by one node");

    // A call the callee refuses: its session is freed with the 486.
    let call = &calls[0];
    let busy = format!("busy-{call}");
    let relay = owner(&busy);
    uac.send(sip("node1"), &invite(&uac, &busy));
    let inv = uas.recv("INVITE", |m| m.starts_with("INVITE "));
    assert_eq!(node_of_ip(media_of(&inv).ip()), relay);
    until_metric(&farm, &relay, "relay_sessions", 5, |v| v == 1);
    uas.send(sip("node2"), &respond(&inv, 486, uas.addr(), ""));
    let busy_here = uac.recv("486", |m| m.starts_with("SIP/2.0 486"));
    uac.send(sip("node1"), &in_dialog_ack_for(&busy_here, &uac, &busy));
    until_metric(&farm, &relay, "relay_sessions", 5, |v| v == 0);
    println!("media_relay: a call answered 486 freed its session on {relay}");
}

/// The ACK of a non-2xx final response (hop by hop: the INVITE's branch and the response's
/// To tag).
fn in_dialog_ack_for(resp: &str, uac: &Ua, call: &str) -> String {
    let a = uac.addr();
    with_body(
        format!(
            "ACK sip:bob@{DOMAIN} SIP/2.0\r\n\
Via: SIP/2.0/UDP {a};branch=z9hG4bK-{call}-inv;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@{DOMAIN}>;tag=alice-{call}\r\n\
To: {}\r\n\
Call-ID: {call}\r\n\
CSeq: 1 ACK\r\n",
            headers(resp, "To")[0]
        ),
        "",
    )
}
