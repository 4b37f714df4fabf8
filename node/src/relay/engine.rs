//! The relay engine of a `media_relay` node: sessions, their UDP sockets, and forwarding.
//!
//! A session is one call (its Call-ID). Each stream of the call (one `m=` line) gets two
//! socket pairs from the configured port range, each pair an even RTP port and the next
//! (RTCP) port: one pair faces the caller, the other the callee. What the caller sends to its
//! pair goes out of the callee's pair, and back.
//!
//! Who may send (no open relay): a socket accepts packets only from the parties of its call.
//! A side's *allowed* IP addresses, per stream, are the ones its SDP names for that stream
//! (the `c=` address, and the address of `a=rtcp` when it has one) and the source IP of the
//! last signalling message that brought that side's SDP (a phone behind NAT sends media from
//! its NAT's public address, which its SDP does not name). Ports are not checked against the
//! SDP (NAT changes them). A packet from any other IP address is dropped and counted
//! (`stranger`), whether or not the side has latched yet: a third party's packet is never
//! forwarded, not even the first one of a stream.
//!
//! Latching (symmetric RTP): the first allowed packet a socket receives fixes that side's
//! whole address (IP and port) for that socket; from then on packets from any other address
//! are dropped and counted (`stranger`), even from an allowed IP. Until a side has latched,
//! packets for it go to the address its SDP named. When a later offer or answer names another
//! address for a side (a re-INVITE moving the media), or the address it latched onto is no
//! longer allowed, that side latches again, onto its new allowed addresses.
//!
//! Ports: each socket pair is taken at random (a CSPRNG) among the free pairs of the range
//! freed longest ago, so that the ports of the next session cannot be guessed from the last
//! one's, and a pair just freed is not reused at once (late packets of an old call).
//!
//! Forwarding: one task per socket pair (RTP, RTCP), reading both sockets; sends never wait
//! (a full socket buffer drops the packet, counted `send`). The tasks run on the engine's own
//! forwarding threads, one per CPU, each a current-thread Tokio runtime with its own epoll
//! (a shard, as in Seastar or Kamailio's workers): a stream's two tasks stay on one thread
//! for the stream's life, so a packet is received, checked and sent with no lock, no
//! allocation and no hand-over between threads. Streams are dealt to the threads in turn.
//! A task drains each ready socket, up to 4 datagrams a system call
//! (`recvmmsg`); a read that finds fewer than that has emptied the socket, so the task waits
//! for the next datagram without a last read that would only say so (at about one packet a
//! wake-up, one system call in three). It then updates the shared counters and the
//! session's activity once for the packets it relayed (not once per packet).
//!
//! A session ends on [`RelayEngine::delete`], when idle for the idle timeout (no packet and
//! no update), or when the engine stops. A session whose callee has not answered yet waits at least
//! [`SETUP_IDLE`] (a phone may ring that long with no media at all).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onehop_overlay::metrics::{Histogram, Metric, Metrics, FAST_BUCKETS};
use rand::seq::SliceRandom;
use rand::Rng;
use tokio::net::UdpSocket;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::sdp::Endpoint;

/// The shortest idle timeout of a session the callee has not answered yet (Timer C).
pub const SETUP_IDLE: Duration = Duration::from_secs(180);

/// Largest datagram relayed whole (RTP over Ethernet stays well below).
const MAX_PACKET: usize = 4096;

/// Datagrams read from a socket with one system call.
const RECV_BATCH: usize = 4;

/// The receive buffers of a forwarding thread: its tasks never run at once, and none holds
/// them across an await.
struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    /// Length and source of each datagram of the last read.
    got: Vec<(usize, Option<SocketAddr>)>,
    /// The system refused `recvmmsg`: one datagram a read.
    one_at_a_time: bool,
}

impl RecvBatch {
    fn new() -> RecvBatch {
        RecvBatch {
            bufs: (0..RECV_BATCH).map(|_| vec![0u8; MAX_PACKET]).collect(),
            got: Vec::with_capacity(RECV_BATCH),
            one_at_a_time: false,
        }
    }

    /// Reads what is queued, up to [`RECV_BATCH`] datagrams, without waiting (`WouldBlock`
    /// when there is none); returns how many, and whether the read emptied the socket (a
    /// batch shorter than [`RECV_BATCH`]; never known when reading one at a time).
    fn recv(&mut self, sock: &UdpSocket) -> std::io::Result<(usize, bool)> {
        use std::os::fd::AsRawFd;
        if !self.one_at_a_time {
            match onehop_overlay::udp::recv_many(sock.as_raw_fd(), &mut self.bufs, &mut self.got) {
                Ok(n) => return Ok((n, n < RECV_BATCH)),
                Err(e) if onehop_overlay::udp::unsupported(&e) => {
                    debug!(cause = %e, "media relay: recvmmsg refused: reading one datagram at a time");
                    self.one_at_a_time = true;
                }
                Err(e) => return Err(e),
            }
        }
        let (n, src) = sock.try_recv_from(&mut self.bufs[0])?;
        self.got.clear();
        self.got.push((n, Some(src)));
        Ok((1, false))
    }
}

thread_local! {
    static RECV: std::cell::RefCell<RecvBatch> = std::cell::RefCell::new(RecvBatch::new());
}

/// Port pairs tried per socket pair before giving up (ports taken by other programs are
/// skipped).
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

impl Side {
    /// Index of the side in per-side arrays: caller 0, callee 1.
    fn index(self) -> usize {
        match self {
            Side::Caller => 0,
            Side::Callee => 1,
        }
    }
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

/// What the signalling says of one side of a stream: where it wants the media, and the
/// addresses it may send from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Party {
    /// The stream's addresses in that side's SDP.
    sdp: Endpoint,
    /// The source IP address of that side's last signalling message with SDP, when known.
    signalling: Option<IpAddr>,
}

impl Party {
    fn target(&self, rtcp: bool) -> Option<SocketAddr> {
        if rtcp {
            self.sdp.rtcp
        } else {
            self.sdp.rtp
        }
    }

    /// Whether a packet from `ip` may come from this side: an address its SDP names for the
    /// stream (RTP or RTCP), or its signalling source. Ports are not compared (NAT).
    fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        [
            self.sdp.rtp.map(|a| a.ip()),
            self.sdp.rtcp.map(|a| a.ip()),
            self.signalling,
        ]
        .into_iter()
        .flatten()
        .any(|a| a.to_canonical() == ip)
    }
}

/// The two sides of a stream, as the signalling describes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Hints {
    caller: Party,
    callee: Party,
}

impl Hints {
    fn party(&self, side: Side) -> &Party {
        match side {
            Side::Caller => &self.caller,
            Side::Callee => &self.callee,
        }
    }

    fn party_mut(&mut self, side: Side) -> &mut Party {
        match side {
            Side::Caller => &mut self.caller,
            Side::Callee => &mut self.callee,
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
    /// The source IP address of each side's last signalling message with SDP (caller,
    /// callee), when the proxy knew it.
    signalling: [Option<IpAddr>; 2],
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
    /// `relay_forward_seconds`, one packet in [`SAMPLE_EVERY`].
    forward_time: Histogram,
    refused: Metrics,
}

/// The relay times one packet in this many (a power of two) into `relay_forward_seconds`:
/// the forwarding loop is hot, and a sample is enough for its percentiles.
const SAMPLE_EVERY: u32 = 64;

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
            forward_time: m.histogram(
                "relay_forward_seconds",
                "Time a packet spends in the relay, from its datagram read to its copy sent; \
                 one packet in 64 per stream is timed (a sample).",
                FAST_BUCKETS,
            ),
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

/// Free port pairs (their RTP port), least recently freed first.
struct PortPool {
    free: VecDeque<u16>,
}

impl PortPool {
    fn new((lo, hi): (u16, u16)) -> PortPool {
        let first = lo.saturating_add(lo % 2);
        let mut free: Vec<u16> = (first..hi).step_by(2).collect();
        free.shuffle(&mut rand::thread_rng());
        PortPool { free: free.into() }
    }

    /// Binds an RTP/RTCP pair on `ip`, taken at random among the older half of the free
    /// pairs (the half freed longest ago: a pair just freed is not reused at once). A pair
    /// that will not bind (another program holds a port) goes to the back of the list; at
    /// most [`BIND_TRIES`] pairs are tried.
    fn take(&mut self, ip: IpAddr) -> Option<(u16, std::net::UdpSocket, std::net::UdpSocket)> {
        let mut rng = rand::thread_rng();
        for _ in 0..BIND_TRIES.min(self.free.len()) {
            let older = self.free.len().div_ceil(2);
            let port = self.free.remove(rng.gen_range(0..older))?;
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

/// A non-blocking socket on `ip:port`, registered with no runtime yet: its forwarding task
/// registers it with the runtime of the thread it runs on.
fn bind(ip: IpAddr, port: u16) -> std::io::Result<std::net::UdpSocket> {
    let s = std::net::UdpSocket::bind(SocketAddr::new(ip, port))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// The forwarding threads: one current-thread Tokio runtime each, running until the engine
/// stops (dropping a runtime ends the tasks still on it).
struct Workers {
    handles: Vec<Handle>,
    next: std::sync::atomic::AtomicUsize,
}

impl Workers {
    /// One thread per CPU (at most 64). Threads that cannot be started are done without:
    /// with none, forwarding runs on the caller's runtime.
    fn start(stop: &CancellationToken) -> Workers {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(64);
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            match Workers::spawn(i, stop.clone()) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    tracing::warn!(cause = %e, "media relay: cannot start a forwarding thread");
                    break;
                }
            }
        }
        Workers {
            handles,
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn spawn(i: usize, stop: CancellationToken) -> std::io::Result<Handle> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name(format!("relay-fwd-{i}"))
            .spawn(move || rt.block_on(stop.cancelled()))?;
        Ok(handle)
    }

    /// The runtime of the next stream: the threads in turn.
    fn pick(&self) -> Handle {
        if self.handles.is_empty() {
            return Handle::current();
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].clone()
    }
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
    workers: Workers,
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
                workers: Workers::start(&stop),
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
    /// for an INVITE without SDP). `source` is the IP address the INVITE came from, when the
    /// proxy knows it: the caller may send media from there too. Returns, per stream, the
    /// address the callee is to send to.
    pub fn allocate(
        &self,
        call_id: &str,
        from_tag: &str,
        media: &[Option<Endpoint>],
        source: Option<IpAddr>,
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
                    signalling: [None, None],
                    stop: self.inner.stop.child_token(),
                },
            );
            self.inner.m.sessions.set(st.sessions.len() as i64);
            debug!(%call_id, "relay session created");
        }
        let r = self.apply(&mut st, call_id, Side::Caller, media, source);
        if r.is_err() && created {
            // Nothing to keep of a session that could not take its first streams.
            self.remove(&mut st, call_id);
        }
        r
    }

    /// Applies the streams of an SDP body to the session of `call_id`. The body came in a
    /// request (or, when `response`, in a response to a request) whose From tag is
    /// `from_tag`; comparing it with the caller's tells who wrote it. `source` is the IP
    /// address that message came from, when the proxy knows it (the writer may send media
    /// from there too; when `None`, the writer's last known one stays). Returns `Ok(None)`
    /// when there is no such session, else per stream the address the other side is to send
    /// to.
    pub fn update(
        &self,
        call_id: &str,
        from_tag: &str,
        response: bool,
        media: &[Option<Endpoint>],
        source: Option<IpAddr>,
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
        self.apply(&mut st, call_id, side, media, source).map(Some)
    }

    /// Applies the SDP of `side` (`media`, which came from `source`) to a session: opens the
    /// streams it adds, and sets what each stream's forwarding tasks know of that side.
    fn apply(
        &self,
        st: &mut State,
        call_id: &str,
        side: Side,
        media: &[Option<Endpoint>],
        source: Option<IpAddr>,
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
        let slot = &mut session.signalling[side.index()];
        if let Some(ip) = source {
            *slot = Some(ip.to_canonical());
        }
        let signalling = *slot;
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
            s.hints.send_if_modified(|h| {
                let new = Party {
                    sdp: *target,
                    signalling,
                };
                let changed = *h.party(side) != new;
                *h.party_mut(side) = new;
                changed
            });
            out.push(Some(match side {
                Side::Caller => s.callee_facing,
                Side::Callee => s.caller_facing,
            }));
        }
        // The streams this body left out: the side's signalling source holds for them too.
        for (i, s) in session.streams.iter().enumerate() {
            let Some(s) = s else { continue };
            if media.get(i).is_some_and(Option::is_some) {
                continue;
            }
            s.hints.send_if_modified(|h| {
                let p = h.party_mut(side);
                let changed = p.signalling != signalling;
                p.signalling = signalling;
                changed
            });
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
        // What is known of each side before its SDP names the stream: its signalling source.
        let mut known = Hints::default();
        known.caller.signalling = session.signalling[Side::Caller.index()];
        known.callee.signalling = session.signalling[Side::Callee.index()];
        let (hints, rx) = watch::channel(known);
        let worker = self.inner.workers.pick();
        for (rtcp, a, b) in [(false, a_rtp, b_rtp), (true, a_rtcp, b_rtcp)] {
            worker.spawn(pump(
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

/// What one forwarding task knows of its stream: the sides' latched addresses and what the
/// signalling says of them.
struct Latch {
    hints: watch::Receiver<Hints>,
    cur: Hints,
    latched: [Option<SocketAddr>; 2],
    rtcp: bool,
}

impl Latch {
    /// Where a packet from `src`, received on the socket facing the caller (`from_caller`) or
    /// the callee, goes; `Err(true)` when it is dropped as a stranger's, `Err(false)` when the
    /// other side has no address yet.
    fn route(&mut self, from_caller: bool, src: SocketAddr) -> Result<SocketAddr, bool> {
        if self.hints.has_changed().unwrap_or(false) {
            let new = *self.hints.borrow_and_update();
            // A side whose SDP names another address than before (not a first one), or whose
            // latched address is no longer allowed, latches again.
            for side in [Side::Caller, Side::Callee] {
                let (was, now) = (self.cur.party(side).target(self.rtcp), new.party(side));
                let moved = was.is_some() && now.target(self.rtcp) != was;
                let l = &mut self.latched[side.index()];
                if moved || l.is_some_and(|a| !now.allows(a.ip())) {
                    *l = None;
                }
            }
            self.cur = new;
        }
        let (me, other) = if from_caller {
            (Side::Caller, Side::Callee)
        } else {
            (Side::Callee, Side::Caller)
        };
        match self.latched[me.index()] {
            Some(l) if l == src => {}
            None if self.cur.party(me).allows(src.ip()) => self.latched[me.index()] = Some(src),
            // Another address than the one latched, or one the signalling does not name for
            // this side: never forwarded.
            _ => return Err(true),
        }
        self.latched[other.index()]
            .or(self.cur.party(other).target(self.rtcp))
            .ok_or(false)
    }
}

/// Counts of one drain of a socket, added to the shared counters at once.
#[derive(Default)]
struct Tally {
    packets: i64,
    bytes: i64,
    stranger: i64,
    no_destination: i64,
    send_failed: i64,
}

impl Tally {
    fn flush(&mut self, m: &Counters, from_caller: bool) {
        let (packets, bytes) = if from_caller {
            (&m.packets_fwd, &m.bytes_fwd)
        } else {
            (&m.packets_back, &m.bytes_back)
        };
        for (metric, n) in [
            (packets, self.packets),
            (bytes, self.bytes),
            (&m.stranger, self.stranger),
            (&m.no_destination, self.no_destination),
            (&m.send_failed, self.send_failed),
        ] {
            if n != 0 {
                metric.add(n);
            }
        }
        *self = Tally::default();
    }
}

/// Forwards between the caller-facing socket `a` and the callee-facing socket `b` (registered
/// here, with the runtime this task runs on), until `stop`.
#[allow(clippy::too_many_arguments)]
async fn pump(
    a: std::net::UdpSocket,
    b: std::net::UdpSocket,
    mut hints: watch::Receiver<Hints>,
    rtcp: bool,
    activity: Arc<AtomicU64>,
    epoch: Instant,
    m: Arc<Counters>,
    stop: CancellationToken,
) {
    let (a, b) = match (UdpSocket::from_std(a), UdpSocket::from_std(b)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(cause = %e, "media relay: cannot register a stream's sockets");
            return;
        }
    };
    let cur = *hints.borrow_and_update();
    let mut latch = Latch {
        hints,
        cur,
        latched: [None, None],
        rtcp,
    };
    let mut tally = Tally::default();
    // Packets received by this task, to time one in SAMPLE_EVERY.
    let mut seq: u32 = 0;
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        // Which sockets have datagrams (or the stop); each keeps its one reader waker.
        let ready = std::future::poll_fn(|cx| {
            if stopped.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(None);
            }
            let ra = a.poll_recv_ready(cx).is_ready();
            let rb = b.poll_recv_ready(cx).is_ready();
            if ra || rb {
                std::task::Poll::Ready(Some((ra, rb)))
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        let Some((ra, rb)) = ready else { return };
        for (from_caller, ready, sock, out) in [(true, ra, &a, &b), (false, rb, &b, &a)] {
            if !ready {
                continue;
            }
            let mut relay = |n: usize, src: SocketAddr, data: &[u8], tally: &mut Tally| {
                let timed = (seq & (SAMPLE_EVERY - 1) == 0).then(std::time::Instant::now);
                seq = seq.wrapping_add(1);
                match latch.route(from_caller, src) {
                    Ok(dst) => match out.try_send_to(&data[..n], dst) {
                        Ok(_) => {
                            tally.packets += 1;
                            tally.bytes += n as i64;
                            if let Some(t) = timed {
                                m.forward_time.observe(t.elapsed());
                            }
                        }
                        Err(_) => tally.send_failed += 1,
                    },
                    Err(true) => tally.stranger += 1,
                    Err(false) => tally.no_destination += 1,
                }
            };
            // Drain: every datagram queued, until a read finds the socket empty (which
            // re-arms its readiness). Other errors (an ICMP error reported on the socket)
            // are skipped.
            loop {
                let read = RECV.with(|r| {
                    let mut r = r.borrow_mut();
                    let mut taken = 0;
                    let read = sock.try_io(tokio::io::Interest::READABLE, || {
                        let (n, emptied) = r.recv(sock)?;
                        taken = n;
                        if emptied {
                            // Say so, and Tokio clears the socket's readiness (a datagram that
                            // comes after raises a new event).
                            Err(std::io::ErrorKind::WouldBlock.into())
                        } else {
                            Ok(())
                        }
                    });
                    let r = &*r;
                    for (i, (n, src)) in r.got[..taken].iter().enumerate() {
                        match src {
                            Some(src) => relay(*n, *src, &r.bufs[i], &mut tally),
                            None => tally.stranger += 1,
                        }
                    }
                    read
                });
                if read.is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock) {
                    break;
                }
            }
            if tally.packets + tally.no_destination + tally.send_failed > 0 {
                activity.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
            tally.flush(&m, from_caller);
        }
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
