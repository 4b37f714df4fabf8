//! The relay engine of a `media_relay` node: sessions, their UDP sockets, and forwarding.
//!
//! A session is one call (its Call-ID). Each stream of the call (one `m=` line) gets two
//! socket pairs from the configured port range, each pair an even RTP port and the next
//! (RTCP) port: one pair faces the caller, the other the callee. What the caller sends to its
//! pair goes out of the callee's pair, and back.
//!
//! Latching (symmetric RTP): the first packet a socket receives fixes that side's address for
//! that socket; packets from any other address are dropped and counted (`stranger`). Until a
//! side has latched, packets for it go to the address its SDP named. When a later offer or
//! answer names another address for a side (a re-INVITE moving the media), that side latches
//! again.
//!
//! Forwarding: one task per socket pair (RTP, RTCP), reading both sockets; sends never wait
//! (a full socket buffer drops the packet, counted `send`). A session ends on
//! [`RelayEngine::delete`], when idle for the idle timeout (no packet and no update), or when
//! the engine stops. A session whose callee has not answered yet waits at least
//! [`SETUP_IDLE`] (a phone may ring that long with no media at all).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onehop_overlay::metrics::{Metric, Metrics};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::sdp::Endpoint;

/// The shortest idle timeout of a session the callee has not answered yet (Timer C).
pub const SETUP_IDLE: Duration = Duration::from_secs(180);

/// Largest datagram relayed whole (RTP over Ethernet stays well below).
const MAX_PACKET: usize = 4096;

/// Sockets tried per port pair before giving up (ports taken by other programs are skipped).
const BIND_TRIES: usize = 64;

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// The address every relay socket binds (the node's).
    pub ip: IpAddr,
    /// The port range (inclusive): RTP on even ports, RTCP on the next one.
    pub ports: (u16, u16),
    /// A session with no packet and no update for this long is freed.
    pub idle: Duration,
    /// Most sessions at once; more are refused (the proxy tries the next relay).
    pub max_sessions: usize,
    /// Most streams (`m=` lines) per session.
    pub max_streams: usize,
}

/// Which party wrote an SDP body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The party that sent the initial INVITE.
    Caller,
    /// The party it called.
    Callee,
}

/// Why the engine refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node is shutting down: no new session.
    Draining,
    /// `max_sessions` reached.
    Full,
    /// No free port pair in the range.
    NoPorts,
    /// More streams than `max_streams`.
    TooManyStreams,
}

impl Refusal {
    /// A label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Draining => "draining",
            Refusal::Full => "full",
            Refusal::NoPorts => "no_ports",
            Refusal::TooManyStreams => "too_many_streams",
        }
    }
}

/// The two SDP addresses of a stream: where each side said it wants media.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Hints {
    caller: Endpoint,
    callee: Endpoint,
}

impl Hints {
    fn get(&self, side: Side, rtcp: bool) -> Option<SocketAddr> {
        let e = match side {
            Side::Caller => &self.caller,
            Side::Callee => &self.callee,
        };
        if rtcp {
            e.rtcp
        } else {
            e.rtp
        }
    }
}

struct StreamCtl {
    /// RTP address of the pair facing the caller (RTCP: port + 1).
    caller_facing: SocketAddr,
    /// RTP address of the pair facing the callee.
    callee_facing: SocketAddr,
    hints: watch::Sender<Hints>,
}

struct Session {
    caller_tag: String,
    streams: Vec<Option<StreamCtl>>,
    /// Milliseconds since the engine's epoch of the last allocation or update.
    touched_ms: u64,
    /// Of the last packet (shared with the forwarding tasks).
    activity: Arc<AtomicU64>,
    /// Whether the callee's side has sent SDP (the call is past ringing).
    answered: bool,
    stop: CancellationToken,
}

struct Counters {
    sessions: Metric,
    packets_fwd: Metric,
    packets_back: Metric,
    bytes_fwd: Metric,
    bytes_back: Metric,
    stranger: Metric,
    no_destination: Metric,
    send_failed: Metric,
    freed_deleted: Metric,
    freed_idle: Metric,
    refused: Metrics,
}

impl Counters {
    fn new(m: &Metrics) -> Counters {
        const PACKETS: &str = "RTP/RTCP packets relayed, by direction.";
        const BYTES: &str = "RTP/RTCP bytes relayed, by direction.";
        const DROPPED: &str = "Packets the relay dropped, by reason.";
        const FREED: &str = "Relay sessions freed, by reason.";
        Counters {
            sessions: m.gauge("relay_sessions", "Media relay sessions held."),
            packets_fwd: m.counter(
                "relay_packets_total{direction=\"caller_to_callee\"}",
                PACKETS,
            ),
            packets_back: m.counter(
                "relay_packets_total{direction=\"callee_to_caller\"}",
                PACKETS,
            ),
            bytes_fwd: m.counter("relay_bytes_total{direction=\"caller_to_callee\"}", BYTES),
            bytes_back: m.counter("relay_bytes_total{direction=\"callee_to_caller\"}", BYTES),
            stranger: m.counter("relay_dropped_total{reason=\"stranger\"}", DROPPED),
            no_destination: m.counter("relay_dropped_total{reason=\"no_destination\"}", DROPPED),
            send_failed: m.counter("relay_dropped_total{reason=\"send\"}", DROPPED),
            freed_deleted: m.counter("relay_sessions_freed_total{reason=\"deleted\"}", FREED),
            freed_idle: m.counter("relay_sessions_freed_total{reason=\"idle\"}", FREED),
            refused: m.clone(),
        }
    }

    fn refused(&self, r: Refusal) {
        self.refused
            .counter(
                &format!("relay_refused_total{{reason=\"{}\"}}", r.as_str()),
                "Relay session requests refused, by reason.",
            )
            .inc();
    }
}

/// Free port pairs, least recently used first (a port just freed is reused last, so late
/// packets of an old call do not latch a new one).
struct PortPool {
    free: VecDeque<u16>,
}

impl PortPool {
    fn new((lo, hi): (u16, u16)) -> PortPool {
        let first = lo + (lo % 2);
        let free = (first..hi).step_by(2).collect();
        PortPool { free }
    }

    /// Binds an RTP/RTCP pair on `ip`.
    fn take(&mut self, ip: IpAddr) -> Option<(u16, UdpSocket, UdpSocket)> {
        for _ in 0..BIND_TRIES.min(self.free.len()) {
            let port = self.free.pop_front()?;
            match (bind(ip, port), bind(ip, port + 1)) {
                (Ok(a), Ok(b)) => return Some((port, a, b)),
                _ => self.free.push_back(port),
            }
        }
        None
    }

    fn give(&mut self, port: u16) {
        self.free.push_back(port);
    }
}

fn bind(ip: IpAddr, port: u16) -> std::io::Result<UdpSocket> {
    let s = std::net::UdpSocket::bind(SocketAddr::new(ip, port))?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

struct State {
    sessions: HashMap<String, Session>,
    pool: PortPool,
}

struct Inner {
    s: RelaySettings,
    state: Mutex<State>,
    draining: AtomicBool,
    epoch: Instant,
    m: Arc<Counters>,
    stop: CancellationToken,
}

/// The relay engine; cheap to clone.
#[derive(Clone)]
pub struct RelayEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RelayEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayEngine")
            .field("ip", &self.inner.s.ip)
            .field("ports", &self.inner.s.ports)
            .field("sessions", &self.sessions())
            .finish()
    }
}

impl RelayEngine {
    /// Starts the engine (its idle sweeper); everything stops when `stop` is cancelled.
    /// Must be called within a Tokio runtime.
    pub fn start(s: RelaySettings, metrics: &Metrics, stop: CancellationToken) -> RelayEngine {
        let engine = RelayEngine {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    sessions: HashMap::new(),
                    pool: PortPool::new(s.ports),
                }),
                s,
                draining: AtomicBool::new(false),
                epoch: Instant::now(),
                m: Arc::new(Counters::new(metrics)),
                stop,
            }),
        };
        let e = engine.clone();
        let period = (e.inner.s.idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => { e.sweep(); }
                    _ = e.inner.stop.cancelled() => break,
                }
            }
            e.clear();
        });
        engine
    }

    fn now_ms(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64
    }

    /// Sessions held.
    pub fn sessions(&self) -> usize {
        self.inner.state.lock().expect("relay").sessions.len()
    }

    /// Whether the engine holds a session for `call_id`.
    pub fn has(&self, call_id: &str) -> bool {
        self.inner
            .state
            .lock()
            .expect("relay")
            .sessions
            .contains_key(call_id)
    }

    /// Refuses new sessions from now on (the node is leaving); sessions held go on.
    pub fn drain(&self) {
        if !self.inner.draining.swap(true, Ordering::Relaxed) {
            info!(
                sessions = self.sessions(),
                "media relay draining: new sessions refused"
            );
        }
    }

    /// Creates the session of `call_id` (or finds it: a retransmitted or repeated INVITE),
    /// whose caller has From tag `from_tag`, and applies the caller's streams `media` (empty
    /// for an INVITE without SDP). Returns, per stream, the address the callee is to send to.
    pub fn allocate(
        &self,
        call_id: &str,
        from_tag: &str,
        media: &[Option<Endpoint>],
    ) -> Result<Vec<Option<SocketAddr>>, Refusal> {
        let mut st = self.inner.state.lock().expect("relay");
        let created = !st.sessions.contains_key(call_id);
        if created {
            let refusal = if self.inner.draining.load(Ordering::Relaxed) {
                Some(Refusal::Draining)
            } else if st.sessions.len() >= self.inner.s.max_sessions {
                Some(Refusal::Full)
            } else if wanted_streams(media) > self.inner.s.max_streams {
                Some(Refusal::TooManyStreams)
            } else {
                None
            };
            if let Some(r) = refusal {
                self.inner.m.refused(r);
                return Err(r);
            }
            st.sessions.insert(
                call_id.to_string(),
                Session {
                    caller_tag: from_tag.to_string(),
                    streams: Vec::new(),
                    touched_ms: self.now_ms(),
                    activity: Arc::new(AtomicU64::new(0)),
                    answered: false,
                    stop: self.inner.stop.child_token(),
                },
            );
            self.inner.m.sessions.set(st.sessions.len() as i64);
            debug!(%call_id, "relay session created");
        }
        let r = self.apply(&mut st, call_id, Side::Caller, media);
        if r.is_err() && created {
            // Nothing to keep of a session that could not take its first streams.
            self.remove(&mut st, call_id);
        }
        r
    }

    /// Applies the streams of an SDP body to the session of `call_id`. The body came in a
    /// request (or, when `response`, in a response to a request) whose From tag is
    /// `from_tag`; comparing it with the caller's tells who wrote it. Returns `Ok(None)` when
    /// there is no such session, else per stream the address the other side is to send to.
    pub fn update(
        &self,
        call_id: &str,
        from_tag: &str,
        response: bool,
        media: &[Option<Endpoint>],
    ) -> Result<Option<Vec<Option<SocketAddr>>>, Refusal> {
        let mut st = self.inner.state.lock().expect("relay");
        let Some(s) = st.sessions.get(call_id) else {
            return Ok(None);
        };
        let from_caller = s.caller_tag == from_tag;
        let side = if from_caller != response {
            Side::Caller
        } else {
            Side::Callee
        };
        self.apply(&mut st, call_id, side, media).map(Some)
    }

    fn apply(
        &self,
        st: &mut State,
        call_id: &str,
        side: Side,
        media: &[Option<Endpoint>],
    ) -> Result<Vec<Option<SocketAddr>>, Refusal> {
        if wanted_streams(media) > self.inner.s.max_streams {
            self.inner.m.refused(Refusal::TooManyStreams);
            return Err(Refusal::TooManyStreams);
        }
        let now = self.now_ms();
        let State { sessions, pool } = st;
        let session = sessions.get_mut(call_id).expect("session checked");
        session.touched_ms = now;
        if side == Side::Callee {
            session.answered = true;
        }
        let mut out = Vec::with_capacity(media.len());
        for (i, target) in media.iter().enumerate() {
            let Some(target) = target else {
                out.push(None);
                continue;
            };
            if session.streams.len() <= i {
                session.streams.resize_with(i + 1, || None);
            }
            if session.streams[i].is_none() {
                match self.open_stream(pool, session) {
                    Some(s) => session.streams[i] = Some(s),
                    None => {
                        self.inner.m.refused(Refusal::NoPorts);
                        return Err(Refusal::NoPorts);
                    }
                }
            }
            let s = session.streams[i].as_ref().expect("stream opened");
            s.hints.send_modify(|h| match side {
                Side::Caller => h.caller = *target,
                Side::Callee => h.callee = *target,
            });
            out.push(Some(match side {
                Side::Caller => s.callee_facing,
                Side::Callee => s.caller_facing,
            }));
        }
        Ok(out)
    }

    fn open_stream(&self, pool: &mut PortPool, session: &Session) -> Option<StreamCtl> {
        let ip = self.inner.s.ip;
        let (a_port, a_rtp, a_rtcp) = pool.take(ip)?;
        let Some((b_port, b_rtp, b_rtcp)) = pool.take(ip) else {
            drop((a_rtp, a_rtcp));
            pool.give(a_port);
            return None;
        };
        let (hints, rx) = watch::channel(Hints::default());
        for (rtcp, a, b) in [(false, a_rtp, b_rtp), (true, a_rtcp, b_rtcp)] {
            tokio::spawn(pump(
                a,
                b,
                rx.clone(),
                rtcp,
                session.activity.clone(),
                self.inner.epoch,
                self.inner.m.clone(),
                session.stop.clone(),
            ));
        }
        Some(StreamCtl {
            caller_facing: SocketAddr::new(ip, a_port),
            callee_facing: SocketAddr::new(ip, b_port),
            hints,
        })
    }

    /// Frees the session of `call_id`; whether there was one.
    pub fn delete(&self, call_id: &str) -> bool {
        let mut st = self.inner.state.lock().expect("relay");
        let found = self.remove(&mut st, call_id);
        if found {
            self.inner.m.freed_deleted.inc();
            debug!(%call_id, "relay session freed");
        }
        found
    }

    fn remove(&self, st: &mut State, call_id: &str) -> bool {
        let Some(s) = st.sessions.remove(call_id) else {
            return false;
        };
        s.stop.cancel();
        for stream in s.streams.into_iter().flatten() {
            st.pool.give(stream.caller_facing.port());
            st.pool.give(stream.callee_facing.port());
        }
        self.inner.m.sessions.set(st.sessions.len() as i64);
        true
    }

    /// Frees the sessions idle for too long; returns how many.
    pub fn sweep(&self) -> usize {
        self.sweep_at(self.now_ms())
    }

    /// [`RelayEngine::sweep`] as if the engine's clock read `now` (milliseconds).
    fn sweep_at(&self, now: u64) -> usize {
        let idle = self.inner.s.idle.as_millis() as u64;
        let setup = idle.max(SETUP_IDLE.as_millis() as u64);
        let mut st = self.inner.state.lock().expect("relay");
        let expired: Vec<String> = st
            .sessions
            .iter()
            .filter(|(_, s)| {
                let last = s.touched_ms.max(s.activity.load(Ordering::Relaxed));
                let limit = if s.answered { idle } else { setup };
                now.saturating_sub(last) >= limit
            })
            .map(|(k, _)| k.clone())
            .collect();
        for call_id in &expired {
            self.remove(&mut st, call_id);
            self.inner.m.freed_idle.inc();
            debug!(%call_id, "relay session idle: freed");
        }
        expired.len()
    }

    fn clear(&self) {
        let mut st = self.inner.state.lock().expect("relay");
        let all: Vec<String> = st.sessions.keys().cloned().collect();
        for call_id in all {
            self.remove(&mut st, &call_id);
        }
    }
}

fn wanted_streams(media: &[Option<Endpoint>]) -> usize {
    media
        .iter()
        .rposition(Option::is_some)
        .map(|i| i + 1)
        .unwrap_or(0)
}

/// Forwards between the caller-facing socket `a` and the callee-facing socket `b`.
#[allow(clippy::too_many_arguments)]
async fn pump(
    a: UdpSocket,
    b: UdpSocket,
    mut hints: watch::Receiver<Hints>,
    rtcp: bool,
    activity: Arc<AtomicU64>,
    epoch: Instant,
    m: Arc<Counters>,
    stop: CancellationToken,
) {
    let mut buf_a = vec![0u8; MAX_PACKET];
    let mut buf_b = vec![0u8; MAX_PACKET];
    let mut latched: [Option<SocketAddr>; 2] = [None, None];
    let mut cur = *hints.borrow_and_update();
    loop {
        let (from_caller, n, src) = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = a.recv_from(&mut buf_a) => match r {
                Ok((n, src)) => (true, n, src),
                Err(_) => continue,
            },
            r = b.recv_from(&mut buf_b) => match r {
                Ok((n, src)) => (false, n, src),
                Err(_) => continue,
            },
        };
        if hints.has_changed().unwrap_or(false) {
            let new = *hints.borrow_and_update();
            // A side whose SDP names a new address latches again.
            for (i, side) in [Side::Caller, Side::Callee].into_iter().enumerate() {
                if new.get(side, rtcp) != cur.get(side, rtcp) {
                    latched[i] = None;
                }
            }
            cur = new;
        }
        let (me, other) = if from_caller { (0, 1) } else { (1, 0) };
        match latched[me] {
            None => latched[me] = Some(src),
            Some(l) if l != src => {
                m.stranger.inc();
                continue;
            }
            Some(_) => {}
        }
        activity.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        let other_side = if from_caller {
            Side::Callee
        } else {
            Side::Caller
        };
        let Some(dst) = latched[other].or(cur.get(other_side, rtcp)) else {
            m.no_destination.inc();
            continue;
        };
        let (out, data) = if from_caller {
            (&b, &buf_a[..n])
        } else {
            (&a, &buf_b[..n])
        };
        match out.try_send_to(data, dst) {
            Ok(_) if from_caller => {
                m.packets_fwd.inc();
                m.bytes_fwd.add(n as i64);
            }
            Ok(_) => {
                m.packets_back.inc();
                m.bytes_back.add(n as i64);
            }
            Err(_) => m.send_failed.inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(lo: u16) -> RelaySettings {
        RelaySettings {
            ip: "127.0.0.1".parse().unwrap(),
            ports: (lo, lo + 99),
            idle: Duration::from_secs(60),
            max_sessions: 4,
            max_streams: 4,
        }
    }

    async fn sock() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").await.unwrap()
    }

    fn ep(s: &UdpSocket) -> Option<Endpoint> {
        let a = s.local_addr().unwrap();
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
        while m.value(name) != Some(want) {
            assert!(
                Instant::now() < deadline,
                "{name} is {:?}, wanted {want}",
                m.value(name)
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn latches_forwards_both_ways_and_drops_strangers() {
        let metrics = Metrics::default();
        let stop = CancellationToken::new();
        let e = RelayEngine::start(settings(42000), &metrics, stop.clone());
        let caller = sock().await;
        let callee = sock().await;
        let to_callee = e.allocate("call-1", "tagA", &[ep(&caller)]).unwrap()[0].unwrap();
        let to_caller = e
            .update("call-1", "tagA", true, &[ep(&callee)])
            .unwrap()
            .unwrap()[0]
            .unwrap();
        assert_ne!(to_callee, to_caller);
        assert_eq!(to_caller.port() % 2, 0, "RTP on an even port");

        // Caller -> relay -> callee: comes from the callee-facing address.
        caller.send_to(b"rtp-from-caller", to_caller).await.unwrap();
        let (data, from) = recv(&callee).await;
        assert_eq!(
            (data.as_slice(), from),
            (&b"rtp-from-caller"[..], to_callee)
        );
        // And back.
        callee.send_to(b"rtp-from-callee", to_callee).await.unwrap();
        let (data, from) = recv(&caller).await;
        assert_eq!(
            (data.as_slice(), from),
            (&b"rtp-from-callee"[..], to_caller)
        );

        // Another address sending to the caller-facing socket after latching: dropped.
        let stranger = sock().await;
        stranger.send_to(b"intruder", to_caller).await.unwrap();
        until_metric(&metrics, "relay_dropped_total{reason=\"stranger\"}", 1).await;
        caller.send_to(b"again", to_caller).await.unwrap();
        let (data, _) = recv(&callee).await;
        assert_eq!(data, b"again", "the intruder's packet never arrived");

        // RTCP on port + 1, both ways.
        let caller_rtcp = UdpSocket::bind(SocketAddr::new(
            caller.local_addr().unwrap().ip(),
            caller.local_addr().unwrap().port() + 1,
        ))
        .await;
        if let Ok(caller_rtcp) = caller_rtcp {
            let rtcp_in = SocketAddr::new(to_caller.ip(), to_caller.port() + 1);
            let callee_rtcp_addr = SocketAddr::new(
                callee.local_addr().unwrap().ip(),
                callee.local_addr().unwrap().port() + 1,
            );
            if let Ok(callee_rtcp) = UdpSocket::bind(callee_rtcp_addr).await {
                caller_rtcp.send_to(b"rtcp", rtcp_in).await.unwrap();
                let (data, from) = recv(&callee_rtcp).await;
                assert_eq!(data, b"rtcp");
                assert_eq!(from.port(), to_callee.port() + 1);
            }
        }

        assert!(metrics
            .value("relay_packets_total{direction=\"caller_to_callee\"}")
            .is_some_and(|n| n >= 2));
        assert_eq!(
            metrics.value("relay_packets_total{direction=\"callee_to_caller\"}"),
            Some(1)
        );
        assert_eq!(
            metrics.value("relay_bytes_total{direction=\"callee_to_caller\"}"),
            Some(15)
        );
        assert_eq!(metrics.value("relay_sessions"), Some(1));
        assert!(e.delete("call-1"));
        assert!(!e.delete("call-1"));
        assert_eq!(metrics.value("relay_sessions"), Some(0));
        stop.cancel();
    }

    #[tokio::test]
    async fn latching_holds_a_nat_address_before_the_sdp_one() {
        let metrics = Metrics::default();
        let e = RelayEngine::start(settings(42100), &metrics, CancellationToken::new());
        let caller = sock().await;
        let callee = sock().await;
        // The caller's SDP names a private address nobody listens on (behind NAT).
        let private = Some(Endpoint {
            rtp: Some("127.0.0.1:9".parse().unwrap()),
            rtcp: None,
        });
        let to_callee = e.allocate("c", "t", &[private]).unwrap()[0].unwrap();
        let to_caller = e.update("c", "t", true, &[ep(&callee)]).unwrap().unwrap()[0].unwrap();
        // The caller's first packet latches its real address...
        caller.send_to(b"hello", to_caller).await.unwrap();
        assert_eq!(recv(&callee).await.0, b"hello");
        // ...so the callee's packets reach it there.
        callee.send_to(b"reply", to_callee).await.unwrap();
        assert_eq!(recv(&caller).await.0, b"reply");
    }

    #[tokio::test]
    async fn sides_by_from_tag_and_unknown_sessions() {
        let metrics = Metrics::default();
        let e = RelayEngine::start(settings(42200), &metrics, CancellationToken::new());
        assert_eq!(e.update("nope", "t", false, &[]), Ok(None));
        let a = e.allocate("c", "caller", &[ep(&sock().await)]).unwrap();
        // A re-INVITE from the callee (its own tag in From): the callee wrote it, so the
        // caller is to send to the caller-facing address.
        let b = e
            .update("c", "callee", false, &[ep(&sock().await)])
            .unwrap()
            .unwrap();
        // Its answer (a response, From still the callee's tag): written by the caller.
        let c = e
            .update("c", "callee", true, &[ep(&sock().await)])
            .unwrap()
            .unwrap();
        assert_eq!(
            a, c,
            "the caller's SDP always gets the callee-facing address"
        );
        assert_ne!(a, b);
        // A second allocation of the same call (a retransmission) finds the session.
        assert_eq!(e.allocate("c", "caller", &[ep(&sock().await)]).unwrap(), a);
        assert_eq!(e.sessions(), 1);
        // Streams not to relay stay None; a stream added later gets ports.
        let two = e
            .update("c", "caller", false, &[None, ep(&sock().await)])
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
        assert_eq!(e.allocate("x", "t", &many), Err(Refusal::TooManyStreams));
        assert!(!e.has("x"), "a refused session is not kept");
        for i in 0..4 {
            e.allocate(&format!("c{i}"), "t", &[]).unwrap();
        }
        assert_eq!(e.allocate("c5", "t", &[]), Err(Refusal::Full));
        e.delete("c0");
        e.drain();
        assert_eq!(e.allocate("c6", "t", &[]), Err(Refusal::Draining));
        assert!(
            e.allocate("c1", "t", &[]).is_ok(),
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
        e.allocate("a", "t", &[ep(&sock().await)]).unwrap();
        e.allocate("b", "t", &[ep(&sock().await)]).unwrap();
        assert_eq!(
            e.allocate("c", "t", &[ep(&sock().await)]),
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
            match e.allocate("c", "t", &[ep(&sock().await)]) {
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
        let x = e.allocate("x", "t", &[ep(&sock().await)]).unwrap()[0].unwrap();
        e.delete("x");
        let y = e.allocate("y", "t", &[ep(&sock().await)]).unwrap()[0].unwrap();
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
        e.allocate("answered", "t", &[]).unwrap();
        e.update("answered", "t", true, &[]).unwrap();
        // Ringing: kept for the setup time.
        e.allocate("ringing", "t", &[]).unwrap();
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
        e.allocate("c", "t", &[ep(&caller)]).unwrap();
        let to_caller = e.update("c", "t", true, &[ep(&callee)]).unwrap().unwrap()[0].unwrap();
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
}
