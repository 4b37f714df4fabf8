//! Floods from many source addresses (issue 11): SIP over UDP and TCP, DNS, the lookup
//! interface and QUIC handshakes with certificates from another CA, each while legitimate
//! traffic of the same kind is measured. The legitimate side must stay served (at least
//! [`MIN_SUCCESS`] of its attempts answered in time) and the flooded daemon's resident memory
//! flat (its peak at most [`RSS_BOUND_MIB`] over where it stood before). Heavier and longer
//! runs: `bench/floods.sh` (figures in docs/reliability.md).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use onehop_farm::flood::{self, probe::Probe, Flood, Kind, ProbeTally, QuicClient, Tally};

use crate::harness::{client_ip, scrape, wait_for, Farm, Follower};

/// Legitimate attempts that must be answered in time, during a flood.
const MIN_SUCCESS: f64 = 0.95;
/// How far the flooded daemon's resident memory may rise over the flood, in MiB.
const RSS_BOUND_MIB: u64 = 64;
/// The floods' source addresses: 200 of them, outside every farm's range.
const SOURCES: &str = "127.240.0.1/200";
/// Fewest legitimate attempts a probe must make for its rate to mean something: UDP probes
/// start one every 20 ms, while the probes over TCP and QUIC run one attempt after another.
const MIN_ATTEMPTS: u64 = 20;
/// Datagrams per second of the UDP floods (SIP and DNS), from all sources together: 100 a
/// second from each of 200 addresses, well beyond what the farm's clients send, and within
/// what one target can read on a machine of two cores that also runs the flood. Unbounded
/// floods, which measure the machine more than the daemon, are `bench/floods.sh`'s.
const UDP_RATE: u64 = 20_000;

struct Outcome {
    flood: Tally,
    probe: ProbeTally,
    rss_before_kib: u64,
    rss_peak_kib: u64,
    rss_after_kib: u64,
}

/// Floods `target` (a member with pid `pid`) for `secs` while probing it from `from`.
#[allow(clippy::too_many_arguments)]
fn flood_and_probe(
    kind: Kind,
    target: SocketAddr,
    pid: u32,
    from: IpAddr,
    secs: u64,
    rate: Option<u64>,
    concurrency: usize,
    quic: Option<(QuicClient, QuicClient)>,
) -> Outcome {
    let duration = Duration::from_secs(secs);
    let (flood_tls, probe_tls) = match quic {
        Some((f, p)) => (Some(f), Some(p)),
        None => (None, None),
    };
    let f = Flood {
        kind,
        target,
        sources: flood::parse_sources(SOURCES).unwrap(),
        duration,
        rate,
        concurrency,
        domain: "example.test".into(),
        quic: flood_tls,
    };
    let p = Probe {
        kind,
        target,
        from,
        duration,
        every: Duration::from_millis(20),
        domain: "example.test".into(),
        quic: probe_tls,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let before = flood::vm_rss_kib(pid);
    let (peak, (tally, probed)) = rt.block_on(flood::watch_rss(pid, async {
        tokio::join!(flood::run(&f), flood::probe(&p))
    }));
    let out = Outcome {
        flood: tally.expect("flood"),
        probe: probed.expect("probe"),
        rss_before_kib: before,
        rss_peak_kib: peak,
        rss_after_kib: flood::vm_rss_kib(pid),
    };
    println!(
        "FLOOD {kind:?} at {target} from 200 sources for {secs} s: {:?}; legitimate {}/{} = {:.1}% (p50 {:.1} ms, p99 {:.1} ms); RSS {} -> peak {} -> {} KiB",
        out.flood,
        out.probe.ok,
        out.probe.attempts,
        out.probe.success_rate() * 100.0,
        out.probe.percentile(50.0),
        out.probe.percentile(99.0),
        out.rss_before_kib,
        out.rss_peak_kib,
        out.rss_after_kib
    );
    out
}

fn check(what: &str, o: &Outcome) {
    assert!(o.flood.sent > 0, "{what}: the flood sent nothing");
    assert!(
        o.probe.attempts >= MIN_ATTEMPTS,
        "{what}: only {} legitimate attempts",
        o.probe.attempts
    );
    assert!(
        o.probe.success_rate() >= MIN_SUCCESS,
        "{what}: legitimate traffic served {}/{} ({:.1}%), under {:.0}%",
        o.probe.ok,
        o.probe.attempts,
        o.probe.success_rate() * 100.0,
        MIN_SUCCESS * 100.0
    );
    let rise = o.rss_peak_kib.saturating_sub(o.rss_before_kib);
    assert!(
        rise <= RSS_BOUND_MIB * 1024,
        "{what}: resident memory rose {rise} KiB ({} -> peak {} KiB), over {RSS_BOUND_MIB} MiB",
        o.rss_before_kib,
        o.rss_peak_kib
    );
}

/// SIP over UDP and TCP, DNS queries and the lookup interface, flooded in turn from 200
/// addresses (SIP over UDP and DNS at [`UDP_RATE`], the TCP floods as fast as 64 connections
/// at once go; each flood preceded by a one-second round that warms the allocator up): the
/// legitimate probe of each kind stays served and the flooded daemon's memory flat.
#[test]
fn sip_dns_and_lookup_floods_leave_legitimate_traffic_served_with_flat_memory() {
    let farm = Farm::up_with_rings(
        "127.0.241.1",
        &[
            "--nodes",
            "2",
            "--eventservers",
            "1",
            "--managers",
            "1",
            "--dns",
            "1",
            "--node-set",
            "sip_auth=\"digest\"",
        ],
        &["sip_proxy", "registrar"],
    );
    let node = farm.file.member("node1").unwrap();
    let dns = farm.file.member("dns1").unwrap();
    let from = client_ip(&farm, 200);
    // UDP floods at UDP_RATE; TCP floods as fast as 64 connections at once go.
    let sip = node.addr("sip").unwrap();
    let cases = [
        (Kind::SipUdp, sip, node.pid, Some(UDP_RATE)),
        (Kind::SipTcp, sip, node.pid, None),
        (Kind::Dns, dns.addr("dns").unwrap(), dns.pid, Some(UDP_RATE)),
        (Kind::Lookup, node.addr("lookup").unwrap(), node.pid, None),
    ];
    for (kind, target, pid, rate) in cases {
        flood_and_probe(kind, target, pid, from, 1, rate, 64, None);
        let o = flood_and_probe(kind, target, pid, from, 4, rate, 64, None);
        check(&format!("{kind:?}"), &o);
    }
    // Every member is still there.
    let names = farm.monitor_names().expect("a status");
    assert_eq!(names.len(), farm.file.members.len(), "{names:?}");
}

/// A storm of QUIC handshakes presenting certificates from another CA, from 200 addresses,
/// at the event server: handshakes in progress stay bounded, sessions with a good
/// certificate keep being opened, a node started during the storm joins, no member is lost,
/// and the event server's memory stays flat.
#[test]
fn a_handshake_storm_with_foreign_certificates_does_not_starve_good_members() {
    let mut farm = Farm::up_with_rings(
        "127.0.242.1",
        &[
            "--nodes",
            "2",
            "--eventservers",
            "1",
            "--managers",
            "1",
            "--dns",
            "0",
        ],
        &["registrar"],
    );
    // Another CA, and a node certificate from it.
    let foreign = tempfile::tempdir().unwrap();
    let mut other = onehop_certs::Ca::init(foreign.path().join("ca"), "example.test").unwrap();
    other
        .issue(
            &onehop_certs::IssueRequest::new("node1", onehop_overlay::status::Kind::Node),
            foreign.path().join("certs"),
        )
        .unwrap();
    let ca = farm.path().join("ca/ca.pem");
    let stormer = QuicClient {
        ca: ca.clone(),
        cert: Some((
            foreign.path().join("certs/node1.pem"),
            foreign.path().join("certs/node1.key"),
        )),
    };
    let monitor = farm.file.monitor.clone().expect("monitor certificate");
    let good = QuicClient {
        ca,
        cert: Some((monitor.cert.clone(), monitor.key.clone())),
    };
    let es = farm.file.member("es1").unwrap().clone();
    let target = es.addr("eventserver").unwrap();
    let metrics = es.addr("metrics").unwrap();
    let members_before = farm.file.members.len();
    // The network's log, as the monitor sees it: a member lost would show there.
    let follower = Follower::start(&farm, 60);
    follower
        .saw(&[" status term "], Duration::from_secs(10))
        .expect("the monitor's first status");

    // The storm and the probe run in a thread; a node starts meanwhile.
    let from = client_ip(&farm, 200);
    let storm = std::thread::spawn(move || {
        flood_and_probe(
            Kind::Quic,
            target,
            es.pid,
            from,
            6,
            None,
            256,
            Some((stormer, good)),
        )
    });
    // Let the storm build up, then start a node.
    let built = wait_for(Duration::from_secs(5), || {
        let m = scrape(metrics)?;
        let failed = m
            .get("onehop_quic_handshakes_total{outcome=\"failed\"}")
            .copied()
            .unwrap_or(0);
        let refused: i64 = m
            .iter()
            .filter(|(k, _)| k.starts_with("onehop_quic_handshakes_refused_total"))
            .map(|(_, v)| *v)
            .sum();
        (failed + refused > 200).then_some((failed, refused))
    });
    println!("storm under way (failed, refused): {built:?}");
    assert!(built.is_some(), "the storm never reached the event server");
    farm.add_node("node3", "127.0.242.30", "registrar");
    let joined = wait_for(Duration::from_secs(10), || {
        farm.lookup("node1")
            .ask("members registrar")
            .contains("node3=")
            .then_some(())
    });
    let still_storming = !storm.is_finished();
    println!("node3 joined during the storm: {joined:?} (storm still running: {still_storming})");
    assert!(joined.is_some(), "node3 did not join during the storm");
    assert!(
        still_storming,
        "the storm ended before node3 joined: nothing shown"
    );
    let o = storm.join().expect("storm thread");
    check("QUIC handshake storm", &o);

    // The gate's figures: bounded handshakes, the storm refused.
    let m = scrape(metrics).expect("metrics");
    let get = |k: &str| m.get(k).copied().unwrap_or(0);
    println!(
        "QUIC gate: ok {} failed {} refused busy {} rate {} retried {}; in progress now {}",
        get("onehop_quic_handshakes_total{outcome=\"ok\"}"),
        get("onehop_quic_handshakes_total{outcome=\"failed\"}"),
        get("onehop_quic_handshakes_refused_total{reason=\"busy\"}"),
        get("onehop_quic_handshakes_refused_total{reason=\"rate\"}"),
        get("onehop_quic_handshakes_retried_total"),
        get("onehop_quic_handshakes_in_progress"),
    );
    assert!(get("onehop_quic_handshakes_total{outcome=\"failed\"}") > 0);
    assert!(get("onehop_quic_handshakes_refused_total{reason=\"rate\"}") > 0);

    // No member was lost: every member (node3 too) is in the status, and the network's log
    // names no departure.
    let names = farm.monitor_names().expect("a status");
    assert_eq!(names.len(), members_before + 1, "{names:?}");
    let lines = follower.lines();
    let gone: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(" is gone") || l.contains(" lost (") || l.contains(" gone "))
        .collect();
    assert!(gone.is_empty(), "members lost during the storm: {gone:#?}");
    println!(
        "network log during the storm: {} lines, no departure",
        lines.len()
    );
}
