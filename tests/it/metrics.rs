//! Every daemon of a real farm serves the Prometheus figures operators rely on (issue #5):
//! status version, members per role and kind, lookups, SIP requests by method and responses
//! by code, bindings, relay sessions, event-server queue depths and drops. The DNS figures
//! (queries by type, responses by rcode) are checked in `dns.rs`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::harness::{scrape, wait_for, Farm};

fn metrics_of(farm: &Farm, name: &str) -> BTreeMap<String, i64> {
    let addr = farm
        .file
        .member(name)
        .and_then(|m| m.addr("metrics"))
        .unwrap_or_else(|| panic!("{name} serves no metrics"));
    wait_for(Duration::from_secs(5), || scrape(addr))
        .unwrap_or_else(|| panic!("{name}: no metrics at {addr}"))
}

/// The SIP address of member `name`.
fn sip_of(farm: &Farm, name: &str) -> SocketAddr {
    farm.file
        .member(name)
        .and_then(|m| m.addr("sip"))
        .unwrap_or_else(|| panic!("{name} has no SIP address"))
}

/// A REGISTER of `user` from `from`, and whether it got 200.
pub(crate) fn register(sock: &UdpSocket, proxy: SocketAddr, user: &str, n: u32) -> bool {
    register_answer(sock, proxy, user, n).starts_with("SIP/2.0 200")
}

/// A REGISTER of `user` from `from` (branch and Call-ID numbered `n`), and its final answer
/// (empty when none came within 5 s).
pub(crate) fn register_answer(sock: &UdpSocket, proxy: SocketAddr, user: &str, n: u32) -> String {
    let from = sock.local_addr().unwrap();
    let msg = format!(
        "REGISTER sip:example.test SIP/2.0\r\n\
         Via: SIP/2.0/UDP {from};branch=z9hG4bK-m{n};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@example.test>;tag=m{n}\r\n\
         To: <sip:{user}@example.test>\r\n\
         Call-ID: m{n}@onehop-it\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: <sip:{user}@{from}>\r\n\
         Expires: 600\r\n\
         Content-Length: 0\r\n\r\n"
    );
    sock.send_to(msg.as_bytes(), proxy).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65_535];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let Ok((len, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..len]);
        if text.contains(&format!("branch=z9hG4bK-m{n};")) && !text.starts_with("SIP/2.0 1") {
            return text.into_owned();
        }
    }
    String::new()
}

#[test]
fn every_daemon_serves_the_operators_figures() {
    let farm = Farm::up_with_rings(
        "127.0.150.1",
        &["--nodes", "3", "--dns", "0"],
        &["registrar"],
    );
    let nodes = farm.names("node");

    // 30 AORs registered through node1, and a lookup answered by node2.
    let node1 = sip_of(&farm, "node1");
    let sock = UdpSocket::bind("127.0.150.200:0").expect("client socket");
    let aors = 30;
    for i in 0..aors {
        assert!(register(&sock, node1, &format!("m{i}"), i), "REGISTER m{i}");
    }
    let answer = farm
        .lookup("node2")
        .ask("lookup registrar for m0@example.test");
    assert!(
        answer.parse::<std::net::IpAddr>().is_ok(),
        "lookup: {answer}"
    );

    // Nodes: status, members by role and kind, lookups, SIP by method and code, bindings
    // (each AOR on R = 2 registrars, counted by the 2 s stats tick), relay sessions.
    let held = wait_for(Duration::from_secs(10), || {
        let total: i64 = nodes
            .iter()
            .map(|n| {
                metrics_of(&farm, n)
                    .get("onehop_registrar_aors")
                    .copied()
                    .unwrap_or(0)
            })
            .sum();
        (total == 2 * aors as i64).then_some(total)
    });
    assert_eq!(held, Some(2 * aors as i64), "every AOR on two registrars");
    let n1 = metrics_of(&farm, "node1");
    assert!(n1["onehop_status_version"] >= 1, "{n1:?}");
    assert_eq!(n1["onehop_members_by_role{role=\"registrar\"}"], 3);
    assert_eq!(n1["onehop_members_by_role{role=\"sip_proxy\"}"], 3);
    assert_eq!(n1["onehop_members_by_kind{kind=\"node\"}"], 3);
    assert_eq!(n1["onehop_members_by_kind{kind=\"eventserver\"}"], 3);
    assert_eq!(
        n1["onehop_sip_requests_by_method_total{method=\"REGISTER\"}"],
        aors as i64
    );
    assert!(n1["onehop_sip_responses_total{code=\"200\"}"] >= aors as i64);
    assert_eq!(n1.get("onehop_sip_overload_total"), Some(&0));
    assert_eq!(
        n1.get("onehop_relay_sessions"),
        Some(&0),
        "no call, no relay session"
    );
    assert!(
        n1.keys()
            .any(|k| k.starts_with("onehop_relay_packets_total")),
        "relay packet counters served: {:?}",
        n1.keys().collect::<Vec<_>>()
    );
    let n2 = metrics_of(&farm, "node2");
    assert!(n2["onehop_lookups_total"] >= 1);

    // Event servers: sessions, queue depths, drops.
    for es in farm.names("eventserver") {
        let m = metrics_of(&farm, &es);
        // 3 nodes and 3 managers; event servers do not connect to each other.
        assert_eq!(m["onehop_eventserver_sessions"], 6, "{es}: {m:?}");
        assert!(m.contains_key("onehop_eventserver_queue_depth_max"), "{es}");
        assert!(m.contains_key("onehop_eventserver_queued_events"), "{es}");
        assert_eq!(m.get("onehop_eventserver_dropped_total"), Some(&0), "{es}");
    }

    // Managers: exactly one active, and the active one counts members by role.
    let managers: Vec<_> = farm
        .names("manager")
        .iter()
        .map(|m| metrics_of(&farm, m))
        .collect();
    let active: Vec<_> = managers
        .iter()
        .filter(|m| m.get("onehop_manager_active") == Some(&1))
        .collect();
    assert_eq!(active.len(), 1, "one active manager");
    assert_eq!(active[0]["onehop_members_by_role{role=\"registrar\"}"], 3);
    assert_eq!(active[0]["onehop_members_by_kind{kind=\"manager\"}"], 3);
}

/// The buckets of histogram `name` (its full sample prefix, e.g.
/// `onehop_sip_response_seconds_bucket{` with a trailing label filter `method="REGISTER"`),
/// as `(upper bound, cumulative count)` ascending, +Inf last as `f64::INFINITY`.
fn buckets(m: &BTreeMap<String, i64>, name: &str, filter: &str) -> Vec<(f64, i64)> {
    let prefix = format!("{name}_bucket{{");
    let mut v: Vec<(f64, i64)> = m
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix) && k.contains(filter))
        .map(|(k, n)| {
            let le = k.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            (le, *n)
        })
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// The upper bound of the bucket holding quantile `q` (what `histogram_quantile` would
/// interpolate within), or `None` with no observation.
fn quantile(b: &[(f64, i64)], q: f64) -> Option<f64> {
    let total = b.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil() as i64;
    b.iter().find(|(_, n)| *n >= rank).map(|(le, _)| *le)
}

/// Operators' latency figures (issue #13): after SIP requests, DNS queries (UDP and TCP) and
/// lookups, the response-time histograms of node and DNS daemons have grown, their bucket
/// counts are cumulative and agree with `_count`, and p50/p99 can be read from the buckets.
#[test]
fn latency_histograms_grow_and_give_percentiles() {
    use crate::dns::{ask, ask_tcp};
    use hickory_proto::rr::RecordType;

    let farm = Farm::up_with_rings(
        "127.0.66.1",
        &[
            "--nodes",
            "2",
            "--dns",
            "1",
            "--dns-port",
            crate::dns::DNS_PORT,
        ],
        &["registrar"],
    );
    let before = metrics_of(&farm, "node1");
    let count = |m: &BTreeMap<String, i64>, k: &str| m.get(k).copied().unwrap_or(0);
    let sip_before = count(
        &before,
        "onehop_sip_response_seconds_count{method=\"REGISTER\"}",
    );
    let lookups_before = count(&before, "onehop_lookup_answer_seconds_count");

    let node1 = sip_of(&farm, "node1");
    let sock = UdpSocket::bind("127.0.66.200:0").expect("client socket");
    let registers = 20;
    for i in 0..registers {
        assert!(register(&sock, node1, &format!("h{i}"), i), "REGISTER h{i}");
    }
    let lookups = 10;
    let mut lookup = farm.lookup("node1");
    for _ in 0..lookups {
        let answer = lookup.ask("lookup registrar for h0@example.test");
        assert!(
            answer.parse::<std::net::IpAddr>().is_ok(),
            "lookup: {answer}"
        );
    }
    let dns = farm.file.member("dns1").unwrap().addr("dns").unwrap();
    let dns_before = count(
        &metrics_of(&farm, "dns1"),
        "onehop_dns_answer_seconds_count",
    );
    let queries = 10;
    for _ in 0..queries {
        assert!(
            ask(dns, "example.test.", RecordType::SOA).is_some(),
            "UDP query"
        );
    }
    assert!(
        ask_tcp(dns, "example.test.", RecordType::SOA).is_some(),
        "TCP query"
    );

    // The SIP figures are added after each batch of a worker, the others at once.
    let after = wait_for(Duration::from_secs(5), || {
        let m = metrics_of(&farm, "node1");
        (count(&m, "onehop_sip_response_seconds_count{method=\"REGISTER\"}")
            >= sip_before + registers as i64)
            .then_some(m)
    })
    .expect("REGISTER response times counted");
    let dns_after = metrics_of(&farm, "dns1");

    for (m, name, filter, grew) in [
        (
            &after,
            "onehop_sip_response_seconds",
            "method=\"REGISTER\"",
            registers as i64,
        ),
        (&after, "onehop_lookup_answer_seconds", "", lookups),
        (&dns_after, "onehop_dns_answer_seconds", "", queries + 1),
    ] {
        let b = buckets(m, name, filter);
        assert!(b.len() > 5, "{name}: buckets {b:?}");
        assert_eq!(b.last().unwrap().0, f64::INFINITY, "{name}: +Inf bucket");
        assert!(
            b.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name}: cumulative {b:?}"
        );
        let key = if filter.is_empty() {
            format!("{name}_count")
        } else {
            format!("{name}_count{{{filter}}}")
        };
        let total = count(m, &key);
        assert_eq!(b.last().unwrap().1, total, "{name}: +Inf bucket = count");
        let old = match name {
            "onehop_sip_response_seconds" => sip_before,
            "onehop_lookup_answer_seconds" => lookups_before,
            _ => dns_before,
        };
        assert!(
            total >= old + grew,
            "{name}: {old} -> {total}, {grew} expected more"
        );
        let (p50, p99) = (quantile(&b, 0.5).unwrap(), quantile(&b, 0.99).unwrap());
        assert!(p50 <= p99, "{name}: p50 {p50} p99 {p99}");
        eprintln!("{name}{{{filter}}}: {total} observations, p50 <= {p50} s, p99 <= {p99} s");
    }
    // The relay's histogram is served before any media flows (all buckets 0).
    assert_eq!(after.get("onehop_relay_forward_seconds_count"), Some(&0));
}
