//! Tests of the relay engine on real UDP sockets. Tests that tell parties apart by address
//! give each its own loopback address (`127.0.95.x`): the relay, the caller, the callee, a
//! stranger.

use super::*;

const STRANGER: &str = "relay_dropped_total{reason=\"stranger\"}";
const FWD: &str = "relay_packets_total{direction=\"caller_to_callee\"}";
const BACK: &str = "relay_packets_total{direction=\"callee_to_caller\"}";

fn settings(lo: u16) -> RelaySettings {
    RelaySettings {
        ip: "127.0.0.1".parse().unwrap(),
        ports: (lo, lo + 99),
        idle: Duration::from_secs(60),
        max_sessions: 4,
        max_streams: 4,
    }
}

/// An engine on `ip` with the ports `lo..=hi`.
fn engine_on(
    ip: &str,
    (lo, hi): (u16, u16),
    max_sessions: usize,
    metrics: &Metrics,
) -> RelayEngine {
    let s = RelaySettings {
        ip: ip.parse().unwrap(),
        ports: (lo, hi),
        idle: Duration::from_secs(60),
        max_sessions,
        max_streams: 4,
    };
    RelayEngine::start(s, metrics, CancellationToken::new())
}

async fn sock() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// A socket on `ip`, any port.
async fn sock_on(ip: &str) -> UdpSocket {
    UdpSocket::bind(SocketAddr::new(ip.parse().unwrap(), 0))
        .await
        .unwrap()
}

fn ip_of(s: &UdpSocket) -> Option<IpAddr> {
    Some(s.local_addr().unwrap().ip())
}

fn ep(s: &UdpSocket) -> Option<Endpoint> {
    let a = s.local_addr().unwrap();
    Some(Endpoint {
        rtp: Some(a),
        rtcp: Some(SocketAddr::new(a.ip(), a.port() + 1)),
    })
}

/// An SDP endpoint at `rtp` (RTCP on the next port).
fn ep_at(rtp: &str) -> Option<Endpoint> {
    let a: SocketAddr = rtp.parse().unwrap();
    Some(Endpoint {
        rtp: Some(a),
        rtcp: Some(SocketAddr::new(a.ip(), a.port() + 1)),
    })
}

/// Receives one datagram, waiting at most 5 s.
async fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf))
        .await
        .expect("a packet within 5 s")
        .unwrap();
    (buf[..n].to_vec(), from)
}

/// Waits (at most 5 s) until a metric reaches `want`.
async fn until_metric(m: &Metrics, name: &str, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while m.value(name).unwrap_or(0) != want {
        assert!(
            Instant::now() < deadline,
            "{name} is {:?}, wanted {want}",
            m.value(name)
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A call through a relay on `127.0.95.1`: the caller on `.2`, the callee on `.3`, each
/// naming its own socket in its SDP and signalling from its own address.
struct Call {
    metrics: Metrics,
    e: RelayEngine,
    caller: UdpSocket,
    callee: UdpSocket,
    /// Where the caller sends (the caller-facing RTP socket).
    to_caller: SocketAddr,
    /// Where the callee sends (the callee-facing RTP socket).
    to_callee: SocketAddr,
}

impl Call {
    /// The call `id`, with relay ports from `lo` (100 of them), offered and answered.
    async fn new(lo: u16) -> Call {
        let metrics = Metrics::default();
        let e = engine_on("127.0.95.1", (lo, lo + 99), 4, &metrics);
        let caller = sock_on("127.0.95.2").await;
        let callee = sock_on("127.0.95.3").await;
        let to_callee = e
            .allocate("call", "caller", &[ep(&caller)], ip_of(&caller))
            .unwrap()[0]
            .unwrap();
        let to_caller = e
            .update("call", "caller", true, &[ep(&callee)], ip_of(&callee))
            .unwrap()
            .unwrap()[0]
            .unwrap();
        Call {
            metrics,
            e,
            caller,
            callee,
            to_caller,
            to_callee,
        }
    }

    /// Sends `data` from `from` to `to`, and checks that the next datagram `at` receives is
    /// it, from `via`. Everything sent to the relay before was handled by then, so a packet
    /// of a stranger sent earlier would have arrived first had it been forwarded.
    async fn relayed(
        &self,
        from: &UdpSocket,
        to: SocketAddr,
        at: &UdpSocket,
        via: SocketAddr,
        data: &[u8],
    ) {
        from.send_to(data, to).await.unwrap();
        let (got, src) = recv(at).await;
        assert_eq!(
            (String::from_utf8_lossy(&got), src),
            (String::from_utf8_lossy(data), via),
            "the next datagram is the one relayed"
        );
    }

    fn value(&self, name: &str) -> i64 {
        self.metrics.value(name).unwrap_or(0)
    }
}

#[tokio::test]
async fn latches_forwards_both_ways_and_drops_strangers() {
    let c = Call::new(42000).await;
    assert_ne!(c.to_callee, c.to_caller);
    assert_eq!(c.to_caller.port() % 2, 0, "RTP on an even port");
    assert_eq!(c.to_caller.ip(), "127.0.95.1".parse::<IpAddr>().unwrap());

    // Caller -> relay -> callee: comes from the callee-facing address. And back.
    c.relayed(
        &c.caller,
        c.to_caller,
        &c.callee,
        c.to_callee,
        b"rtp-from-caller",
    )
    .await;
    c.relayed(
        &c.callee,
        c.to_callee,
        &c.caller,
        c.to_caller,
        b"rtp-from-callee",
    )
    .await;

    // Another address sending to the caller-facing socket after latching: dropped.
    let stranger = sock_on("127.0.95.4").await;
    stranger.send_to(b"intruder", c.to_caller).await.unwrap();
    until_metric(&c.metrics, STRANGER, 1).await;
    // So is another port of the caller's own address: the whole address was latched.
    let caller_other_port = sock_on("127.0.95.2").await;
    caller_other_port
        .send_to(b"intruder", c.to_caller)
        .await
        .unwrap();
    until_metric(&c.metrics, STRANGER, 2).await;
    c.relayed(&c.caller, c.to_caller, &c.callee, c.to_callee, b"again")
        .await;

    // RTCP on port + 1, both ways.
    let caller_rtcp = UdpSocket::bind(SocketAddr::new(
        c.caller.local_addr().unwrap().ip(),
        c.caller.local_addr().unwrap().port() + 1,
    ))
    .await;
    if let Ok(caller_rtcp) = caller_rtcp {
        let rtcp_in = SocketAddr::new(c.to_caller.ip(), c.to_caller.port() + 1);
        let callee_rtcp_addr = SocketAddr::new(
            c.callee.local_addr().unwrap().ip(),
            c.callee.local_addr().unwrap().port() + 1,
        );
        if let Ok(callee_rtcp) = UdpSocket::bind(callee_rtcp_addr).await {
            caller_rtcp.send_to(b"rtcp", rtcp_in).await.unwrap();
            let (data, from) = recv(&callee_rtcp).await;
            assert_eq!(data, b"rtcp");
            assert_eq!(from.port(), c.to_callee.port() + 1);
        }
    }

    assert!(c.value(FWD) >= 2);
    assert_eq!(c.value(BACK), 1);
    assert_eq!(
        c.metrics
            .value("relay_bytes_total{direction=\"callee_to_caller\"}"),
        Some(15)
    );
    assert_eq!(c.value(STRANGER), 2);
    // One packet in 64 per forwarding task is timed, the first among them: the RTP task's
    // first packet (and the RTCP task's, when its ports could be bound); of the RTP task's
    // five datagrams no other.
    let timed = c
        .metrics
        .histogram_of("relay_forward_seconds")
        .expect("relay_forward_seconds registered")
        .count();
    assert!((1..=2).contains(&timed), "timed packets: {timed}");
    assert_eq!(c.metrics.value("relay_sessions"), Some(1));
    assert!(c.e.delete("call"));
    assert!(!c.e.delete("call"));
    assert_eq!(c.metrics.value("relay_sessions"), Some(0));
}

#[tokio::test]
async fn a_stranger_is_never_forwarded_not_even_before_latching() {
    let c = Call::new(42020).await;
    let stranger = sock_on("127.0.95.4").await;
    let rtcp = |a: SocketAddr| SocketAddr::new(a.ip(), a.port() + 1);
    // Before either side sent anything: to both sides' RTP and RTCP sockets.
    for to in [
        c.to_caller,
        c.to_callee,
        rtcp(c.to_caller),
        rtcp(c.to_callee),
    ] {
        stranger.send_to(b"intruder", to).await.unwrap();
    }
    until_metric(&c.metrics, STRANGER, 4).await;
    assert_eq!((c.value(FWD), c.value(BACK)), (0, 0), "nothing forwarded");
    // The stranger latched nothing: the parties' own packets latch and are forwarded, and
    // the next datagram each receives is the other party's.
    c.relayed(&c.caller, c.to_caller, &c.callee, c.to_callee, b"caller")
        .await;
    c.relayed(&c.callee, c.to_callee, &c.caller, c.to_caller, b"callee")
        .await;
    // The stranger never receives anything: the packets for each side went to that side.
    stranger.send_to(b"intruder", c.to_caller).await.unwrap();
    until_metric(&c.metrics, STRANGER, 5).await;
    c.relayed(
        &c.callee,
        c.to_callee,
        &c.caller,
        c.to_caller,
        b"callee again",
    )
    .await;
    let mut buf = [0u8; 64];
    assert!(
        stranger.try_recv_from(&mut buf).is_err(),
        "nothing was sent to the stranger"
    );
    // The counters are added after the packets went: waited for.
    until_metric(&c.metrics, FWD, 1).await;
    until_metric(&c.metrics, BACK, 2).await;
    assert_eq!((c.value(FWD), c.value(BACK)), (1, 2));
}

#[tokio::test]
async fn before_the_answer_the_callee_side_accepts_no_one() {
    let metrics = Metrics::default();
    let e = engine_on("127.0.95.1", (42040, 42059), 4, &metrics);
    let caller = sock_on("127.0.95.2").await;
    let to_callee = e
        .allocate("call", "caller", &[ep(&caller)], ip_of(&caller))
        .unwrap()[0]
        .unwrap();
    // Ringing: the callee has named no address yet, so whoever sends to the callee-facing
    // socket (the address the offer gives away) is a stranger, even from the caller's.
    let stranger = sock_on("127.0.95.4").await;
    stranger.send_to(b"intruder", to_callee).await.unwrap();
    caller.send_to(b"loop", to_callee).await.unwrap();
    until_metric(&metrics, STRANGER, 2).await;
    assert_eq!(metrics.value(BACK).unwrap_or(0), 0);
    let mut buf = [0u8; 64];
    assert!(
        caller.try_recv_from(&mut buf).is_err(),
        "nothing reached the caller"
    );
}

#[tokio::test]
async fn a_party_behind_nat_latches_from_its_signalling_address() {
    let metrics = Metrics::default();
    let e = engine_on("127.0.95.1", (42060, 42079), 4, &metrics);
    // The caller's phone (.2) is behind NAT: its SDP names a private address nobody
    // listens on; its INVITE came from its NAT's public address, where its RTP comes from
    // too, from another port.
    let caller = sock_on("127.0.95.2").await;
    let callee = sock_on("127.0.95.3").await;
    let to_callee = e
        .allocate("c", "t", &[ep_at("10.1.2.3:4000")], ip_of(&caller))
        .unwrap()[0]
        .unwrap();
    let to_caller = e
        .update("c", "t", true, &[ep(&callee)], ip_of(&callee))
        .unwrap()
        .unwrap()[0]
        .unwrap();
    // A stranger first: dropped, latches nothing.
    let stranger = sock_on("127.0.95.4").await;
    stranger.send_to(b"intruder", to_caller).await.unwrap();
    until_metric(&metrics, STRANGER, 1).await;
    // The caller's first packet latches its NAT address...
    caller.send_to(b"hello", to_caller).await.unwrap();
    assert_eq!(recv(&callee).await, (b"hello".to_vec(), to_callee));
    // ...so the callee's packets reach it there, not at the private address.
    callee.send_to(b"reply", to_callee).await.unwrap();
    assert_eq!(recv(&caller).await, (b"reply".to_vec(), to_caller));
    assert_eq!(metrics.value(STRANGER), Some(1));

    // The SDP's own address with another port (a NAT keeping the address): latches too.
    let e = engine_on("127.0.95.1", (42080, 42099), 4, &metrics);
    let caller = sock_on("127.0.95.2").await;
    let callee = sock_on("127.0.95.3").await;
    e.allocate("c", "t", &[ep_at("127.0.95.2:9")], None)
        .unwrap();
    let to_caller = e
        .update("c", "t", true, &[ep(&callee)], None)
        .unwrap()
        .unwrap()[0]
        .unwrap();
    caller.send_to(b"hello", to_caller).await.unwrap();
    assert_eq!(recv(&callee).await.0, b"hello");

    // With neither (a private SDP address, no signalling source known): no one may send.
    e.allocate("d", "t", &[ep_at("10.1.2.3:4000")], None)
        .unwrap();
    let to_caller = e
        .update("d", "t", true, &[ep(&callee)], None)
        .unwrap()
        .unwrap()[0]
        .unwrap();
    caller.send_to(b"hello", to_caller).await.unwrap();
    until_metric(&metrics, STRANGER, 2).await;
}

#[tokio::test]
async fn a_reinvite_moving_a_side_is_followed() {
    let c = Call::new(42100).await;
    c.relayed(&c.caller, c.to_caller, &c.callee, c.to_callee, b"caller")
        .await;
    c.relayed(&c.callee, c.to_callee, &c.caller, c.to_caller, b"callee")
        .await;
    // A re-INVITE from the caller, now on .5 (signalling and media): the same relay
    // addresses for everyone.
    let moved = sock_on("127.0.95.5").await;
    let again =
        c.e.update("call", "caller", false, &[ep(&moved)], ip_of(&moved))
            .unwrap()
            .unwrap();
    assert_eq!(again, [Some(c.to_callee)]);
    // The old address is no longer allowed: a stranger now.
    c.caller.send_to(b"old", c.to_caller).await.unwrap();
    until_metric(&c.metrics, STRANGER, 1).await;
    // Before the new address latches, the callee's packets go where the new SDP says.
    c.relayed(
        &c.callee,
        c.to_callee,
        &moved,
        c.to_caller,
        b"to the new address",
    )
    .await;
    c.relayed(
        &moved,
        c.to_caller,
        &c.callee,
        c.to_callee,
        b"from the new address",
    )
    .await;
    // The callee moves too (its re-INVITE), to .6.
    let callee_moved = sock_on("127.0.95.6").await;
    let again =
        c.e.update(
            "call",
            "callee",
            false,
            &[ep(&callee_moved)],
            ip_of(&callee_moved),
        )
        .unwrap()
        .unwrap();
    assert_eq!(again, [Some(c.to_caller)]);
    c.relayed(
        &moved,
        c.to_caller,
        &callee_moved,
        c.to_callee,
        b"to the callee's new address",
    )
    .await;
    c.relayed(&callee_moved, c.to_callee, &moved, c.to_caller, b"from it")
        .await;
    c.callee.send_to(b"old", c.to_callee).await.unwrap();
    until_metric(&c.metrics, STRANGER, 2).await;
    // The same SDP again (a session refresh): the latched addresses hold.
    c.e.update("call", "caller", false, &[ep(&moved)], ip_of(&moved))
        .unwrap();
    c.relayed(
        &moved,
        c.to_caller,
        &callee_moved,
        c.to_callee,
        b"refreshed",
    )
    .await;
}

#[tokio::test]
async fn a_side_may_send_from_its_signalling_address_on_streams_opened_later() {
    // A late offer: the INVITE has no SDP; the callee's 200 offers a stream; the caller
    // sends RTP from its NAT (its INVITE's source) before its answer in the ACK arrives.
    let metrics = Metrics::default();
    let e = engine_on("127.0.95.1", (42200, 42219), 4, &metrics);
    let caller = sock_on("127.0.95.2").await;
    let callee = sock_on("127.0.95.3").await;
    assert_eq!(e.allocate("c", "t", &[], ip_of(&caller)), Ok(vec![]));
    let to_caller = e
        .update("c", "t", true, &[ep(&callee)], ip_of(&callee))
        .unwrap()
        .unwrap()[0]
        .unwrap();
    caller.send_to(b"early", to_caller).await.unwrap();
    let (data, to_callee) = recv(&callee).await;
    assert_eq!(data, b"early");
    // The answer in the ACK names a private address: the latched NAT address holds.
    e.update("c", "t", false, &[ep_at("10.1.2.3:4000")], ip_of(&caller))
        .unwrap();
    callee.send_to(b"back", to_callee).await.unwrap();
    assert_eq!(recv(&caller).await, (b"back".to_vec(), to_caller));
}

#[tokio::test]
async fn port_pairs_are_random_even_and_within_the_range() {
    let metrics = Metrics::default();
    let range = (50_000, 59_999);
    let e = engine_on("127.0.95.7", range, 20, &metrics);
    let party = sock_on("127.0.95.2").await;
    let mut ports = Vec::new();
    for i in 0..20 {
        let a = e
            .allocate(&format!("c{i}"), "t", &[ep(&party)], None)
            .unwrap()[0]
            .unwrap();
        let b = e
            .update(&format!("c{i}"), "t", true, &[ep(&party)], None)
            .unwrap()
            .unwrap()[0]
            .unwrap();
        ports.push(b.port()); // caller-facing
        ports.push(a.port()); // callee-facing
    }
    for &p in &ports {
        assert!(
            p % 2 == 0 && p >= range.0 && p < range.1,
            "{p}: an even port with its RTCP port in range"
        );
        // The relay holds the RTCP port, the next one.
        let rtcp = SocketAddr::new("127.0.95.7".parse().unwrap(), p + 1);
        assert!(
            std::net::UdpSocket::bind(rtcp).is_err(),
            "{rtcp} is the relay's"
        );
    }
    let mut distinct = ports.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 40, "40 pairs, all different: {ports:?}");
    // Consecutive pairs taken in order would be 2 apart (or close): at random from 5,000
    // pairs, hardly any are.
    let close = ports
        .windows(2)
        .filter(|w| w[0].abs_diff(w[1]) <= 8)
        .count();
    assert!(close < 5, "ports taken in sequence: {ports:?}");
    let span = distinct[39] - distinct[0];
    assert!(span > 1_000, "ports spread over the range: {ports:?}");

    // Another engine over the same range takes other ports (no fixed order).
    let other = engine_on("127.0.95.8", range, 20, &metrics);
    let mut theirs = Vec::new();
    for i in 0..5 {
        let a = other
            .allocate(&format!("c{i}"), "t", &[ep(&party)], None)
            .unwrap()[0]
            .unwrap();
        theirs.push(a.port());
    }
    let ours: Vec<u16> = ports.iter().skip(1).step_by(2).take(5).copied().collect();
    assert_ne!(ours, theirs);
}

#[tokio::test]
async fn sides_by_from_tag_and_unknown_sessions() {
    let metrics = Metrics::default();
    let e = RelayEngine::start(settings(42200), &metrics, CancellationToken::new());
    assert_eq!(e.update("nope", "t", false, &[], None), Ok(None));
    let a = e
        .allocate("c", "caller", &[ep(&sock().await)], None)
        .unwrap();
    // A re-INVITE from the callee (its own tag in From): the callee wrote it, so the
    // caller is to send to the caller-facing address.
    let b = e
        .update("c", "callee", false, &[ep(&sock().await)], None)
        .unwrap()
        .unwrap();
    // Its answer (a response, From still the callee's tag): written by the caller.
    let c = e
        .update("c", "callee", true, &[ep(&sock().await)], None)
        .unwrap()
        .unwrap();
    assert_eq!(
        a, c,
        "the caller's SDP always gets the callee-facing address"
    );
    assert_ne!(a, b);
    // A second allocation of the same call (a retransmission) finds the session.
    assert_eq!(
        e.allocate("c", "caller", &[ep(&sock().await)], None)
            .unwrap(),
        a
    );
    assert_eq!(e.sessions(), 1);
    // Streams not to relay stay None; a stream added later gets ports.
    let two = e
        .update("c", "caller", false, &[None, ep(&sock().await)], None)
        .unwrap()
        .unwrap();
    assert_eq!(two[0], None);
    assert!(two[1].is_some());
}

#[tokio::test]
async fn refusals_draining_full_and_too_many_streams() {
    let metrics = Metrics::default();
    let e = RelayEngine::start(settings(42300), &metrics, CancellationToken::new());
    let many = vec![ep(&sock().await); 5];
    assert_eq!(
        e.allocate("x", "t", &many, None),
        Err(Refusal::TooManyStreams)
    );
    assert!(!e.has("x"), "a refused session is not kept");
    for i in 0..4 {
        e.allocate(&format!("c{i}"), "t", &[], None).unwrap();
    }
    assert_eq!(e.allocate("c5", "t", &[], None), Err(Refusal::Full));
    e.delete("c0");
    e.drain();
    assert_eq!(e.allocate("c6", "t", &[], None), Err(Refusal::Draining));
    assert!(
        e.allocate("c1", "t", &[], None).is_ok(),
        "calls in progress go on"
    );
    assert_eq!(
        metrics.value("relay_refused_total{reason=\"full\"}"),
        Some(1)
    );
    assert_eq!(
        metrics.value("relay_refused_total{reason=\"draining\"}"),
        Some(1)
    );
}

#[tokio::test]
async fn runs_out_of_ports_and_reuses_freed_ones_last() {
    let metrics = Metrics::default();
    let mut s = settings(42400);
    s.ports = (42400, 42407); // four pairs: two streams
    s.max_sessions = 10;
    let e = RelayEngine::start(s, &metrics, CancellationToken::new());
    e.allocate("a", "t", &[ep(&sock().await)], None).unwrap();
    e.allocate("b", "t", &[ep(&sock().await)], None).unwrap();
    assert_eq!(
        e.allocate("c", "t", &[ep(&sock().await)], None),
        Err(Refusal::NoPorts)
    );
    assert_eq!(
        metrics.value("relay_refused_total{reason=\"no_ports\"}"),
        Some(1)
    );
    e.delete("a");
    // The sockets of "a" close as their tasks see the stop; its ports come back.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match e.allocate("c", "t", &[ep(&sock().await)], None) {
            Ok(v) => {
                assert!(v[0].is_some());
                break;
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            Err(r) => panic!("ports never came back: {r:?}"),
        }
    }

    // With ports to spare, the ones just freed are taken last.
    let mut s = settings(42410);
    s.ports = (42410, 42421);
    let e = RelayEngine::start(s, &metrics, CancellationToken::new());
    let x = e.allocate("x", "t", &[ep(&sock().await)], None).unwrap()[0].unwrap();
    e.delete("x");
    let y = e.allocate("y", "t", &[ep(&sock().await)], None).unwrap()[0].unwrap();
    assert_ne!(x, y, "a pair just freed is not the next one taken");
}

#[tokio::test]
async fn idle_sessions_expire() {
    let metrics = Metrics::default();
    let mut s = settings(42500);
    s.idle = Duration::from_secs(20);
    let e = RelayEngine::start(s, &metrics, CancellationToken::new());
    let t0 = e.now_ms();
    // Answered: idle after 20 s.
    e.allocate("answered", "t", &[], None).unwrap();
    e.update("answered", "t", true, &[], None).unwrap();
    // Ringing: kept for the setup time.
    e.allocate("ringing", "t", &[], None).unwrap();
    assert_eq!(e.sweep_at(t0 + 10_000), 0);
    assert_eq!(e.sessions(), 2);
    assert_eq!(e.sweep_at(t0 + 25_000), 1);
    assert!(!e.has("answered"), "idle for 25 s > 20 s");
    assert!(e.has("ringing"), "unanswered calls wait for Timer C");
    assert_eq!(e.sweep_at(t0 + 25_000 + SETUP_IDLE.as_millis() as u64), 1);
    assert_eq!(e.sessions(), 0);
    assert_eq!(
        metrics.value("relay_sessions_freed_total{reason=\"idle\"}"),
        Some(2)
    );
    assert_eq!(metrics.value("relay_sessions"), Some(0));
}

#[tokio::test]
async fn packets_keep_a_session_alive() {
    let metrics = Metrics::default();
    let mut s = settings(42600);
    s.idle = Duration::from_secs(1);
    let e = RelayEngine::start(s, &metrics, CancellationToken::new());
    let caller = sock().await;
    let callee = sock().await;
    e.allocate("c", "t", &[ep(&caller)], None).unwrap();
    let to_caller = e
        .update("c", "t", true, &[ep(&callee)], None)
        .unwrap()
        .unwrap()[0]
        .unwrap();
    // 2.5 s of media at 10 packets a second, longer than the idle timeout.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(2500) {
        caller.send_to(b"x", to_caller).await.unwrap();
        recv(&callee).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(e.has("c"), "a session with media is not idle");
    // Silence: freed within the idle timeout and a sweep.
    let deadline = Instant::now() + Duration::from_secs(5);
    while e.has("c") {
        assert!(Instant::now() < deadline, "never freed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(start.elapsed() >= Duration::from_millis(3500));
}

#[tokio::test]
async fn a_burst_longer_than_one_read_is_relayed_whole_and_in_order() {
    let c = Call::new(42300).await;
    // Latch both sides first.
    c.relayed(&c.caller, c.to_caller, &c.callee, c.to_callee, b"hello")
        .await;
    c.relayed(&c.callee, c.to_callee, &c.caller, c.to_caller, b"back")
        .await;
    // Many more datagrams than one read takes (RECV_BATCH), sent back to back: the relay
    // finds several queued at once, and reads them in batches until the socket is empty.
    let burst = 50 * RECV_BATCH;
    for i in 0..burst {
        c.caller
            .send_to(format!("p{i}").as_bytes(), c.to_caller)
            .await
            .unwrap();
    }
    for i in 0..burst {
        let (got, src) = recv(&c.callee).await;
        assert_eq!(
            (String::from_utf8_lossy(&got).to_string(), src),
            (format!("p{i}"), c.to_callee),
            "datagram {i} of the burst"
        );
    }
    until_metric(&c.metrics, FWD, 1 + burst as i64).await;
    // The relay still waits for the next one after draining.
    c.relayed(&c.caller, c.to_caller, &c.callee, c.to_callee, b"after")
        .await;
}
