//! The server on real loopback sockets: UDP and TCP, zone swaps, garbage floods, event-server
//! discovery, and the handler hosted by hickory's own `Server`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use onehop_dns::{resolve_eventservers, AnswerOptions, DnsHandler, DnsServer, Zone, ZoneConfig};
use onehop_overlay::metrics::Metrics;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const WAIT: Duration = Duration::from_secs(3);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn udp(server: SocketAddr, bytes: &[u8]) -> Message {
    let sock = UdpSocket::bind(loopback()).await.unwrap();
    sock.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, from) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .expect("a UDP answer in time")
        .unwrap();
    assert_eq!(from, server);
    decode(&buf[..n])
}

async fn tcp_exchange(stream: &mut TcpStream, bytes: &[u8]) -> Message {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    stream.write_all(&out).await.unwrap();
    let mut len = [0u8; 2];
    tokio::time::timeout(WAIT, stream.read_exact(&mut len))
        .await
        .expect("a TCP answer in time")
        .unwrap();
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut msg).await.unwrap();
    decode(&msg)
}

/// The answer to `bytes` over TCP from address `from`, connecting again while the server
/// closes the connection unanswered (at most [`WAIT`]): for a test that has just freed a
/// connection slot, which the server gives back only once it has seen the close.
async fn tcp_once_served(from: &str, server: SocketAddr, bytes: &[u8]) -> Message {
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    let served = async {
        loop {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(format!("{from}:0").parse().unwrap()).unwrap();
            let mut s = s.connect(server).await.unwrap();
            let mut len = [0u8; 2];
            if s.write_all(&framed).await.is_ok() && s.read_exact(&mut len).await.is_ok() {
                let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
                s.read_exact(&mut msg).await.unwrap();
                return decode(&msg);
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(WAIT, served)
        .await
        .expect("a TCP answer once a connection slot was free")
}

/// Asserts that the server closes `s` (end of stream or reset) within [`WAIT`].
async fn assert_closed_by_server(s: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 2];
    let r = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what}: not closed in time"));
    assert!(matches!(r, Ok(0) | Err(_)), "{what}: closed, got {r:?}");
}

async fn tcp(server: SocketAddr, bytes: &[u8]) -> Message {
    let mut s = TcpStream::connect(server).await.unwrap();
    tcp_exchange(&mut s, bytes).await
}

async fn check_answers(server: SocketAddr) {
    let m = udp(server, &query(DOMAIN, RecordType::NAPTR, None)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(m.answers.len(), 2);
    let m = udp(
        server,
        &query("_sip._udp.example.test", RecordType::SRV, Some(1232)),
    )
    .await;
    assert_eq!(srv_targets(&m.answers).len(), 4);
    let m = udp(server, &query("node003.example.test", RecordType::A, None)).await;
    assert_eq!(m.answers.len(), 1);
    let m = tcp(
        server,
        &query("_sip._tcp.example.test", RecordType::SRV, None),
    )
    .await;
    assert_eq!(srv_targets(&m.answers).len(), 4);
    let m = tcp(server, &query("nope.example.test", RecordType::A, None)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = udp(server, &query("example.org", RecordType::A, None)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_over_udp_and_tcp() {
    let zone = Zone::from_status(&status(1, 1, 12, false), &ZoneConfig::new(DOMAIN).unwrap());
    let server = DnsServer::with_zone(loopback(), zone).await.unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    check_answers(addr).await;

    // Several questions on one TCP connection.
    let mut s = TcpStream::connect(addr).await.unwrap();
    for i in 1..=5 {
        let m = tcp_exchange(
            &mut s,
            &query(&format!("node{i:03}.example.test"), RecordType::A, None),
        )
        .await;
        assert_eq!(m.answers.len(), 1);
    }

    // A big answer: TC over UDP without EDNS, whole over TCP.
    let mut cfg = ZoneConfig::new(DOMAIN).unwrap();
    cfg.srv_slice = 64;
    server
        .handler()
        .set_zone(Zone::from_status(&status(1, 2, 200, false), &cfg));
    let m = udp(
        addr,
        &query("_sip._udp.example.test", RecordType::SRV, None),
    )
    .await;
    assert!(m.metadata.truncation);
    let m = tcp(
        addr,
        &query("_sip._udp.example.test", RecordType::SRV, None),
    )
    .await;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_swaps_take_effect_at_once() {
    let cfg = ZoneConfig::new(DOMAIN).unwrap();
    let handler = Arc::new(DnsHandler::new(
        cfg,
        AnswerOptions::default(),
        &Metrics::default(),
    ));
    let server = DnsServer::start(loopback(), handler.clone(), Default::default())
        .await
        .unwrap();
    let addr = server.local_addr();
    let m = udp(addr, &query(DOMAIN, RecordType::SOA, None)).await;
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::ServFail,
        "no status yet"
    );

    assert!(handler.apply_status(&status(5, 1, 3, false)));
    let m = udp(addr, &query(DOMAIN, RecordType::SOA, None)).await;
    match &m.answers[0].data {
        RData::SOA(soa) => assert_eq!(soa.serial, onehop_dns::serial_of(5, 1)),
        other => panic!("{other:?}"),
    }
    let mut s = status(5, 2, 3, false);
    s.members.retain(|m| m.name != "node003");
    assert!(handler.apply_status(&s));
    let m = udp(addr, &query("node003.example.test", RecordType::A, None)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_flood_of_garbage() {
    let zone = Zone::from_status(&status(1, 1, 12, false), &ZoneConfig::new(DOMAIN).unwrap());
    let server = DnsServer::with_zone(loopback(), zone).await.unwrap();
    let addr = server.local_addr();
    let mut rng = StdRng::seed_from_u64(7);
    let valid = query("_sip._udp.example.test", RecordType::SRV, Some(1232));

    // UDP: random bytes, truncated queries, flipped bytes, oversize datagrams.
    let sock = UdpSocket::bind(loopback()).await.unwrap();
    for i in 0..3000 {
        let bytes: Vec<u8> = match i % 4 {
            0 => (0..rng.gen_range(0..600)).map(|_| rng.gen()).collect(),
            1 => valid[..rng.gen_range(0..valid.len())].to_vec(),
            2 => {
                let mut b = valid.clone();
                let at = rng.gen_range(0..b.len());
                b[at] = rng.gen();
                b
            }
            _ => (0..rng.gen_range(4000..9000)).map(|_| rng.gen()).collect(),
        };
        let _ = sock.send_to(&bytes, addr).await;
        if i % 200 == 0 {
            tokio::task::yield_now().await;
        }
    }

    // TCP: junk, lying length prefixes, half messages, silent connections.
    let mut held = Vec::new();
    for i in 0..60 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let junk: Vec<u8> = match i % 4 {
            0 => (0..rng.gen_range(1..300)).map(|_| rng.gen()).collect(),
            1 => vec![0xff, 0xff, 1, 2, 3],
            2 => {
                let mut b = (valid.len() as u16).to_be_bytes().to_vec();
                b.extend_from_slice(&valid[..valid.len() / 2]);
                b
            }
            _ => Vec::new(),
        };
        let _ = s.write_all(&junk).await;
        if i % 2 == 0 {
            held.push(s);
        }
    }

    // Still answering, correctly, on both transports.
    check_answers(addr).await;
    drop(held);
    check_answers(addr).await;
}

/// A handler answering from a status (term 1, version 1) with three proxies, and its
/// figures.
fn handler_with_zone() -> (Arc<DnsHandler>, Metrics) {
    let zone = Zone::from_status(&status(1, 1, 3, false), &ZoneConfig::new(DOMAIN).unwrap());
    let metrics = Metrics::default();
    let handler = Arc::new(DnsHandler::new(
        ZoneConfig::new(DOMAIN).unwrap(),
        AnswerOptions::default(),
        &metrics,
    ));
    handler.set_zone(zone);
    (handler, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_are_bounded() {
    let (handler, metrics) = handler_with_zone();
    let limits = onehop_dns::Limits {
        udp_workers: 1,
        tcp_connections: 4,
        tcp_idle_timeout: Duration::from_millis(300),
        ..onehop_dns::Limits::default()
    };
    let server = DnsServer::start(loopback(), handler, limits).await.unwrap();
    let addr = server.local_addr();
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // A fifth is closed at once (the server accepts in order: the four hold the permits).
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_closed_by_server(&mut s, "the fifth connection").await;
    assert!(metrics.render().contains("onehop_dns_tcp_refused_total 1"));
    // The idle ones time out: the server closes them, which makes room again (a connection
    // that comes between a close and its permit's release is closed too: try again).
    for mut c in idle {
        assert_closed_by_server(&mut c, "an idle connection").await;
    }
    let m = tcp_once_served("127.0.0.1", addr, &query(DOMAIN, RecordType::NAPTR, None)).await;
    assert_eq!(m.answers.len(), 2);
    let text = metrics.render();
    println!("{text}");
    assert!(text.contains("onehop_dns_queries_total{qtype=\"NAPTR\"} 1"));
    assert!(text.contains("onehop_dns_responses_total{rcode=\"NOERROR\"} 1"));
    assert!(text.contains(&format!(
        "onehop_dns_zone_serial {}",
        onehop_dns::serial_of(1, 1)
    )));
}

/// One client address holds at most `tcp_per_address` connections: the next from it is
/// closed at accept and counted, while another address is served; a closed connection gives
/// its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_tcp_connection() {
    let (handler, metrics) = handler_with_zone();
    let limits = onehop_dns::Limits {
        udp_workers: 1,
        tcp_connections: 8,
        tcp_per_address: 2,
        ..onehop_dns::Limits::default()
    };
    let server = DnsServer::start(loopback(), handler, limits).await.unwrap();
    let addr = server.local_addr();
    let from = |ip: &str| {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        s.connect(addr)
    };
    let q = query(DOMAIN, RecordType::NAPTR, None);
    // Two from one address, each answered.
    let mut first = from("127.0.0.1").await.unwrap();
    assert_eq!(tcp_exchange(&mut first, &q).await.answers.len(), 2);
    let mut second = from("127.0.0.1").await.unwrap();
    assert_eq!(tcp_exchange(&mut second, &q).await.answers.len(), 2);
    // A third from it is closed at once.
    let mut third = from("127.0.0.1").await.unwrap();
    assert_closed_by_server(&mut third, "the third connection from one address").await;
    let text = metrics.render();
    assert!(
        text.contains("onehop_dns_tcp_refused_per_ip_total 1"),
        "{text}"
    );
    assert!(text.contains("onehop_dns_tcp_refused_total 0"), "{text}");
    // Another address is served meanwhile.
    let mut other = from("127.0.0.2").await.unwrap();
    assert_eq!(tcp_exchange(&mut other, &q).await.answers.len(), 2);
    // Once one of the two closes, the address may connect again (the server notices the
    // close when it next reads: a retry until it has).
    drop(first);
    let m = tcp_once_served("127.0.0.1", addr, &q).await;
    assert_eq!(m.answers.len(), 2);
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_types_and_rcodes() {
    let metrics = Metrics::default();
    let handler = Arc::new(DnsHandler::new(
        ZoneConfig::new(DOMAIN).unwrap(),
        AnswerOptions::default(),
        &metrics,
    ));
    handler.set_zone(Zone::from_status(
        &status(1, 1, 3, false),
        &ZoneConfig::new(DOMAIN).unwrap(),
    ));
    let server = DnsServer::start(loopback(), handler.clone(), Default::default())
        .await
        .unwrap();
    let addr = server.local_addr();
    udp(
        addr,
        &query("_sip._udp.example.test", RecordType::SRV, None),
    )
    .await;
    udp(
        addr,
        &query("_sip._tcp.example.test", RecordType::SRV, None),
    )
    .await;
    udp(addr, &query("gone.example.test", RecordType::A, None)).await;
    udp(addr, &query("example.net", RecordType::MX, None)).await;
    udp(addr, &[0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 9]).await;
    handler.set_stale(true);
    let text = metrics.render();
    println!("{text}");
    for line in [
        "onehop_dns_queries_total{qtype=\"SRV\"} 2",
        "onehop_dns_queries_total{qtype=\"A\"} 1",
        "onehop_dns_queries_total{qtype=\"MX\"} 1",
        "onehop_dns_queries_total{qtype=\"NONE\"} 1",
        "onehop_dns_responses_total{rcode=\"NOERROR\"} 2",
        "onehop_dns_responses_total{rcode=\"NXDOMAIN\"} 1",
        "onehop_dns_responses_total{rcode=\"REFUSED\"} 1",
        "onehop_dns_responses_total{rcode=\"FORMERR\"} 1",
        "onehop_dns_stale 1",
    ] {
        assert!(text.contains(line), "missing {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_servers_from_the_domain_alone() {
    let zone = Zone::from_status(&status(1, 1, 3, true), &ZoneConfig::new(DOMAIN).unwrap());
    let server = DnsServer::with_zone(loopback(), zone).await.unwrap();
    let mut found = resolve_eventservers(server.local_addr(), DOMAIN)
        .await
        .unwrap();
    found.sort();
    assert_eq!(
        found,
        vec![
            "10.0.0.1:8000".parse::<SocketAddr>().unwrap(),
            "10.0.0.2:8001".parse().unwrap()
        ]
    );
    // The trailing dot and case do not matter.
    assert_eq!(
        resolve_eventservers(server.local_addr(), "Example.Test.")
            .await
            .unwrap()
            .len(),
        2
    );
    // A domain it does not serve is refused: an error, not an empty list.
    let err = resolve_eventservers(server.local_addr(), "other.test")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("REFUSED") || err.to_string().contains("Refused"),
        "{err:#}"
    );
    // Nobody there: an error in bounded time.
    let dead = UdpSocket::bind(loopback()).await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        resolve_eventservers(dead_addr, DOMAIN),
    )
    .await;
    assert!(r.expect("gives up in time").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosted_by_hickory_server() {
    let handler = DnsHandler::new(
        ZoneConfig::new(DOMAIN).unwrap(),
        AnswerOptions::default(),
        &Metrics::default(),
    );
    handler.set_zone(Zone::from_status(
        &status(1, 1, 6, false),
        &ZoneConfig::new(DOMAIN).unwrap(),
    ));
    let mut server = hickory_server::Server::new(handler);
    let sock = UdpSocket::bind(loopback()).await.unwrap();
    let addr = sock.local_addr().unwrap();
    server.register_socket(sock);
    let m = udp(
        addr,
        &query("_sip._udp.example.test", RecordType::SRV, None),
    )
    .await;
    assert!(m.metadata.authoritative);
    assert_eq!(srv_targets(&m.answers).len(), 4);
    let m = udp(addr, &query("nope.example.test", RecordType::A, None)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(of_type(&m.authorities, RecordType::SOA).len(), 1);
    server.shutdown_gracefully().await.unwrap();
}
