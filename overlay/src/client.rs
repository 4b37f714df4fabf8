//! A participant's sessions with every event server.
//!
//! [`EventClient::start`] keeps one session per configured event server: it connects, checks
//! that the peer's certificate is an `eventserver` one, announces (members only), subscribes,
//! and reconnects with a capped back-off when the session ends. Publications go to every
//! connected event server; received events are deduplicated by `(origin, seq)` (a copy that
//! comes late through a slower server is still taken the first time) and delivered on
//! one bounded channel, together with [`ClientEvent::Up`]/[`ClientEvent::Down`] notices. A CRL
//! received on the `crl` topic is handed to the CRL store (which verifies it) when one is given.
//!
//! # Bounds
//! Both directions are bounded in entries and in bytes ([`QueueLimits`], the `[eventclient]`
//! table of every daemon's configuration):
//! - received events wait for the daemon in one channel of at most `events` events and
//!   `events_bytes` bytes (counted as the frames' lengths); when it is full, the sessions stop
//!   reading, and an event server that has to wait too long for us cuts us off as a slow
//!   subscriber (we reconnect and get its snapshot);
//! - publications wait for each event server in a queue of at most `publish` frames and
//!   `publish_bytes` bytes; beyond, a publication is dropped for that server (the others
//!   still get it, and subscribers dedupe), logged and counted in
//!   `eventclient_dropped_total{bound=...}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn, Instrument};

use crate::budget::{ByteBudget, Charge};
use crate::crl::CrlStore;
use crate::follow::{Followed, Follower};
use crate::logging::peer_label;
use crate::metrics::{Metric, Metrics};
use crate::net::{peer_identity, ConnTable};
use crate::status::{Kind, NetworkStatus};
use crate::wire::{
    decode_body, encode_frame, read_frame, read_msg, Announce, ClientMsg, CloseCode, Event,
    Payload, ServerMsg, Topic, MAX_FRAME,
};

/// The bounds of the client's queues (the `[eventclient]` table of a daemon's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueLimits {
    /// Received events waiting for the daemon, at most.
    pub events: usize,
    /// Bytes of received events waiting for the daemon, at most (at least 2 MiB: two frames at
    /// the frame cap).
    pub events_bytes: usize,
    /// Publications waiting for each event server, at most; beyond, a publication is dropped
    /// for that server.
    pub publish: usize,
    /// Bytes of publications waiting for each event server, at most (at least 2 MiB).
    pub publish_bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            events: 4096,
            events_bytes: 16 << 20,
            publish: 1024,
            publish_bytes: 8 << 20,
        }
    }
}

impl QueueLimits {
    /// The least byte bound accepted: two frames at the frame cap.
    pub const MIN_BYTES: usize = 2 * MAX_FRAME;

    /// What is wrong with these limits, as `(key, problem)` (keys relative to the table).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.events < 16 {
            return Some(("events", "must be at least 16".into()));
        }
        if self.publish < 16 {
            return Some(("publish", "must be at least 16".into()));
        }
        for (key, v) in [
            ("events_bytes", self.events_bytes),
            ("publish_bytes", self.publish_bytes),
        ] {
            if v < Self::MIN_BYTES {
                return Some((
                    key,
                    format!(
                        "must be at least {} (two frames at the 1 MiB frame cap)",
                        Self::MIN_BYTES
                    ),
                ));
            }
        }
        None
    }
}

/// What the client is to do.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The event servers' QUIC addresses.
    pub eventservers: Vec<SocketAddr>,
    /// What to announce (members only; `None` for monitors and admins).
    pub announce: Option<Announce>,
    /// Topics to subscribe to.
    pub subscribe: Vec<Topic>,
    /// Depth of the channel that delivers events.
    pub queue: usize,
    /// Depth of each event server's outgoing queue; publications beyond it are dropped for that
    /// server (the others still get them).
    pub out_queue: usize,
    /// Bytes of the channel that delivers events (the frames' lengths); the sessions stop
    /// reading while it is full.
    pub queue_bytes: usize,
    /// Bytes of each event server's outgoing queue; publications beyond it are dropped for
    /// that server.
    pub out_queue_bytes: usize,
    /// Where to count dropped publications and waits for room (none: not counted).
    pub metrics: Option<Metrics>,
    /// Deliver the network status whole (the default): the client follows the active
    /// manager's deltas and heartbeats itself ([`crate::follow::Follower`]), asks the event
    /// servers for the whole status when it missed a change, and delivers each newer status
    /// as a [`Payload::Network`] (members shared with the one before, so a copy is cheap).
    /// Off, the `network` topic's payloads are delivered as they come.
    pub whole_status: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        let limits = QueueLimits::default();
        ClientOptions {
            eventservers: Vec::new(),
            announce: None,
            subscribe: Vec::new(),
            queue: limits.events,
            out_queue: limits.publish,
            queue_bytes: limits.events_bytes,
            out_queue_bytes: limits.publish_bytes,
            metrics: None,
            whole_status: true,
        }
    }
}

impl ClientOptions {
    /// These options with the queue bounds of `limits`.
    pub fn with_limits(self, limits: QueueLimits) -> ClientOptions {
        ClientOptions {
            queue: limits.events,
            queue_bytes: limits.events_bytes,
            out_queue: limits.publish,
            out_queue_bytes: limits.publish_bytes,
            ..self
        }
    }
}

/// The channel of what the client delivers, bounded in events and bytes.
#[derive(Debug)]
pub struct EventReceiver {
    rx: mpsc::Receiver<(ClientEvent, Option<Charge>)>,
}

impl EventReceiver {
    /// The next event; `None` once every session task has ended.
    ///
    /// Cancel safety: cancel-safe (nothing is taken off the channel unless this completes).
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        self.rx.recv().await.map(|(ev, _charge)| ev)
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Result<ClientEvent, mpsc::error::TryRecvError> {
        self.rx.try_recv().map(|(ev, _charge)| ev)
    }
}

/// What the client delivers.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    /// A session with an event server is established.
    Up {
        /// The event server's name (certificate).
        server: String,
        /// Its address.
        addr: SocketAddr,
    },
    /// A session ended (or could not be established).
    Down {
        /// The event server's name, if the session got that far.
        server: Option<String>,
        /// Its address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A publication, the first time it is seen.
    Event(Arc<Event>),
}

enum Outgoing {
    Frame(Bytes, Charge),
    Leave,
}

/// An event server's outgoing queue.
struct Link {
    server: String,
    tx: mpsc::Sender<Outgoing>,
    bytes: ByteBudget,
}

struct Counters {
    dropped_entries: Option<Metric>,
    dropped_bytes: Option<Metric>,
    waits: Option<Metric>,
}

impl Counters {
    fn new(metrics: Option<&Metrics>) -> Counters {
        const DROPPED: &str =
            "Publications dropped for one event server because its outgoing queue was full, by bound.";
        Counters {
            dropped_entries: metrics
                .map(|m| m.counter("eventclient_dropped_total{bound=\"entries\"}", DROPPED)),
            dropped_bytes: metrics
                .map(|m| m.counter("eventclient_dropped_total{bound=\"bytes\"}", DROPPED)),
            waits: metrics.map(|m| {
                m.counter(
                    "eventclient_full_waits_total",
                    "Times a session stopped reading from its event server because the received \
                     events waiting for the daemon filled their byte bound.",
                )
            }),
        }
    }
}

struct Inner {
    seq: AtomicU64,
    /// The network status followed for [`ClientOptions::whole_status`].
    follower: Mutex<Follower>,
    links: Mutex<HashMap<SocketAddr, Link>>,
    seen: Mutex<HashMap<String, Seen>>,
    /// A task is waiting to call [`Follower::check`].
    checking: AtomicBool,
    /// Which event server [`EventClient::fetch_one`] asks next.
    next_fetch: AtomicU64,
    stopping: AtomicBool,
    stop: Notify,
    conns: ConnTable,
    crl: Option<Arc<CrlStore>>,
    live_sessions: AtomicU64,
    closed: Notify,
    counters: Counters,
}

/// The sequence numbers seen from one origin: the highest, and which of the 64 before it.
/// Every publication reaches a subscriber once through each of its event servers, and the
/// servers do not keep each other's pace, so a copy of an older publication can come after
/// a newer one through another server; the window lets it through the first time.
#[derive(Debug, Clone, Copy)]
struct Seen {
    last: u64,
    /// Bit i: `last - 1 - i` was seen.
    below: u64,
}

impl Seen {
    fn new(seq: u64) -> Seen {
        Seen {
            last: seq,
            below: 0,
        }
    }

    /// Records `seq`; true when it was not seen before. Publications more than 64 behind the
    /// newest are taken as seen.
    fn first_time(&mut self, seq: u64) -> bool {
        if seq > self.last {
            let shift = seq - self.last;
            self.below = match shift {
                1..=63 => (self.below << shift) | (1 << (shift - 1)),
                64 => 1 << 63,
                _ => 0,
            };
            self.last = seq;
            return true;
        }
        let back = self.last - seq;
        if back == 0 || back > 64 {
            return false;
        }
        let bit = 1u64 << (back - 1);
        let first = self.below & bit == 0;
        self.below |= bit;
        first
    }
}

/// Handle to the sessions; cheap to clone.
#[derive(Clone)]
pub struct EventClient {
    inner: Arc<Inner>,
    endpoint: quinn::Endpoint,
}

/// A sequence number base that increases across restarts: nanoseconds since the epoch.
pub fn seq_base() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

impl EventClient {
    /// Starts a session task per event server on `endpoint` (whose default client config
    /// presents our certificate). Connections are recorded in `conns` so a CRL enforcer can cut
    /// them. Returns the handle and the channel of events.
    pub fn start(
        endpoint: quinn::Endpoint,
        opts: ClientOptions,
        conns: ConnTable,
        crl: Option<Arc<CrlStore>>,
    ) -> (EventClient, EventReceiver) {
        let (tx, rx) = mpsc::channel(opts.queue.max(16));
        let inbound = ByteBudget::new(opts.queue_bytes);
        let inner = Arc::new(Inner {
            seq: AtomicU64::new(seq_base()),
            follower: Mutex::new(Follower::new()),
            links: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            checking: AtomicBool::new(false),
            next_fetch: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            conns,
            crl,
            live_sessions: AtomicU64::new(0),
            closed: Notify::new(),
            counters: Counters::new(opts.metrics.as_ref()),
        });
        let client = EventClient { inner, endpoint };
        for addr in opts.eventservers.clone() {
            let c = client.clone();
            let tx = Delivery {
                tx: tx.clone(),
                bytes: inbound.clone(),
            };
            let opts = opts.clone();
            tokio::spawn(async move { c.session_loop(addr, opts, tx).await });
        }
        (client, EventReceiver { rx })
    }

    /// Publishes to every connected event server; returns to how many it was queued.
    pub fn publish(&self, payload: Payload) -> usize {
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let frame = encode_frame(&ClientMsg::Publish { seq, payload });
        let links = self.inner.links.lock().expect("links");
        links
            .iter()
            .filter(|(addr, link)| self.queue(**addr, link, &frame, "publication"))
            .count()
    }

    /// Publishes to the event server at `addr` only (for example the whole network status to
    /// an event server whose session has just come up); false when it has no session or its
    /// queue is full.
    pub fn publish_to(&self, addr: SocketAddr, payload: Payload) -> bool {
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let frame = encode_frame(&ClientMsg::Publish { seq, payload });
        let links = self.inner.links.lock().expect("links");
        links
            .get(&addr)
            .is_some_and(|link| self.queue(addr, link, &frame, "publication"))
    }

    /// Asks every connected event server for the retained values of `topics` again (see
    /// [`ClientMsg::Fetch`]); they arrive as ordinary events. Returns how many were asked.
    pub fn fetch(&self, topics: &[Topic]) -> usize {
        let frame = encode_frame(&ClientMsg::Fetch(topics.to_vec()));
        let links = self.inner.links.lock().expect("links");
        links
            .iter()
            .filter(|(addr, link)| self.queue(**addr, link, &frame, "request"))
            .count()
    }

    /// Asks one connected event server (each in turn, call after call) for the retained
    /// values of `topics` again; false when none could be asked. A follower that is still
    /// behind asks again after a while, so a server that does not answer is passed over.
    pub fn fetch_one(&self, topics: &[Topic]) -> bool {
        let frame = encode_frame(&ClientMsg::Fetch(topics.to_vec()));
        let links = self.inner.links.lock().expect("links");
        if links.is_empty() {
            return false;
        }
        let mut addrs: Vec<&SocketAddr> = links.keys().collect();
        addrs.sort();
        let first = self.inner.next_fetch.fetch_add(1, Ordering::Relaxed) as usize;
        (0..addrs.len()).any(|i| {
            let addr = addrs[(first + i) % addrs.len()];
            self.queue(*addr, &links[addr], &frame, "request")
        })
    }

    /// Queues `frame` for one event server, within its bounds; false (logged and counted)
    /// when they are reached.
    fn queue(&self, addr: SocketAddr, link: &Link, frame: &Bytes, what: &str) -> bool {
        let Some(charge) = link.bytes.try_take(frame.len()) else {
            if let Some(m) = &self.inner.counters.dropped_bytes {
                m.inc();
            }
            warn!(
                peer = %peer_label(Some(&link.server), addr),
                queued_bytes = link.bytes.used(),
                max_bytes = link.bytes.cap(),
                "outgoing queue full in bytes: {what} dropped"
            );
            return false;
        };
        match link.tx.try_send(Outgoing::Frame(frame.clone(), charge)) {
            Ok(()) => true,
            Err(_) => {
                if let Some(m) = &self.inner.counters.dropped_entries {
                    m.inc();
                }
                warn!(
                    peer = %peer_label(Some(&link.server), addr),
                    "outgoing queue full: {what} dropped"
                );
                false
            }
        }
    }

    /// Whether [`EventClient::leave`] or [`EventClient::stop`] has begun.
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::SeqCst)
    }

    /// Names of the event servers with an established session.
    pub fn connected(&self) -> Vec<String> {
        let links = self.inner.links.lock().expect("links");
        let mut v: Vec<String> = links.values().map(|l| l.server.clone()).collect();
        v.sort();
        v
    }

    /// Says goodbye to every event server (so the departure is a leave, not a loss), waits up
    /// to `wait` for the sessions to close, then stops reconnecting.
    ///
    /// A session that has sent its hello (announcing us) but not yet had the server's welcome
    /// when this is called says goodbye by itself once welcomed, and is waited for too:
    /// `stopping` is set under the lock of the links, so each session is either among the
    /// links taken here or sees it when it adds its link. A session not that far never
    /// announces us.
    pub async fn leave(&self, wait: Duration) {
        let senders: Vec<_> = {
            let links = self.inner.links.lock().expect("links");
            self.inner.stopping.store(true, Ordering::SeqCst);
            links.values().map(|l| l.tx.clone()).collect()
        };
        for tx in senders {
            let _ = tx.send(Outgoing::Leave).await;
        }
        let deadline = tokio::time::Instant::now() + wait;
        while self.inner.live_sessions.load(Ordering::SeqCst) > 0 {
            let notified = self.inner.closed.notified();
            if self.inner.live_sessions.load(Ordering::SeqCst) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        self.inner.stop.notify_waiters();
        self.endpoint
            .close(CloseCode::Shutdown.varint(), b"leaving");
    }

    /// Stops every session without a goodbye.
    pub fn stop(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.stop.notify_waiters();
        self.endpoint
            .close(CloseCode::Shutdown.varint(), b"stopping");
    }

    fn first_time(&self, ev: &Event) -> bool {
        let mut seen = self.inner.seen.lock().expect("seen");
        match seen.get_mut(&ev.origin) {
            Some(window) => window.first_time(ev.seq),
            None => {
                if seen.len() >= 100_000 {
                    seen.clear();
                }
                seen.insert(ev.origin.clone(), Seen::new(ev.seq));
                true
            }
        }
    }

    /// A `network` publication as the whole status it makes, if that is news; a missed
    /// change is asked for.
    fn whole(&self, ev: Event) -> Option<Event> {
        let mut follower = self.inner.follower.lock().expect("follower");
        let followed = follower.take(&ev.payload);
        let due = follower.due();
        let out = match followed {
            Followed::Changed { .. } => {
                let status = NetworkStatus::clone(follower.status()?);
                Some(Event {
                    payload: Payload::Network(status),
                    ..ev
                })
            }
            Followed::Missed => {
                drop(follower);
                info!("a change of the network status was missed: asking an event server for the whole status");
                self.fetch_one(&[Topic::Network]);
                None
            }
            Followed::Same => None,
        };
        if due.is_some() {
            self.watch_follower();
        }
        out
    }

    /// While the follower waits for a missing change, calls [`Follower::check`] when due and
    /// asks for the whole status when it says so (one such task at a time).
    fn watch_follower(&self) {
        if self.inner.checking.swap(true, Ordering::SeqCst) {
            return;
        }
        let client = self.clone();
        tokio::spawn(async move {
            loop {
                let due = client.inner.follower.lock().expect("follower").due();
                let Some(at) = due else { break };
                if client.inner.stopping.load(Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                let followed = client.inner.follower.lock().expect("follower").check();
                if followed == Followed::Missed {
                    info!("a change of the network status did not come through any event server: asking one for the whole status");
                    client.fetch_one(&[Topic::Network]);
                }
            }
            client.inner.checking.store(false, Ordering::SeqCst);
            // A change may have been missed between the last look and the flag's reset.
            if client
                .inner
                .follower
                .lock()
                .expect("follower")
                .due()
                .is_some()
            {
                client.watch_follower();
            }
        });
    }

    async fn session_loop(self, addr: SocketAddr, opts: ClientOptions, tx: Delivery) {
        let mut backoff = Duration::from_millis(50);
        while !self.inner.stopping.load(Ordering::SeqCst) {
            let started = tokio::time::Instant::now();
            let (server, reason) = self.session(addr, &opts, &tx).await;
            if tx
                .tx
                .send((
                    ClientEvent::Down {
                        server: server.clone(),
                        addr,
                        reason: reason.clone(),
                    },
                    None,
                ))
                .await
                .is_err()
            {
                return;
            }
            if self.inner.stopping.load(Ordering::SeqCst) {
                return;
            }
            if server.is_some() {
                info!(peer = %peer_label(server.as_deref(), addr), %reason, "event server session ended");
            } else {
                debug!(peer = %addr, %reason, "cannot reach event server");
            }
            if started.elapsed() > Duration::from_secs(5) {
                backoff = Duration::from_millis(50);
            }
            let stop = self.inner.stop.notified();
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// One session; returns the server's name (if it got that far) and why it ended.
    async fn session(
        &self,
        addr: SocketAddr,
        opts: &ClientOptions,
        tx: &Delivery,
    ) -> (Option<String>, String) {
        let connecting = match self.endpoint.connect(addr, &addr.ip().to_string()) {
            Ok(c) => c,
            Err(e) => return (None, format!("connect: {e}")),
        };
        let conn = match tokio::time::timeout(Duration::from_secs(2), connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return (None, format!("handshake: {e}")),
            Err(_) => return (None, "handshake timed out".into()),
        };
        let id = match peer_identity(&conn) {
            Ok(id) => id,
            Err(e) => {
                conn.close(CloseCode::Forbidden.varint(), b"bad certificate");
                return (None, e.to_string());
            }
        };
        if id.kind != Kind::Eventserver {
            conn.close(CloseCode::Forbidden.varint(), b"not an event server");
            return (
                None,
                format!(
                    "refused {}: its certificate is a {} certificate, not an eventserver one",
                    id.name, id.kind
                ),
            );
        }
        let server = id.name.clone();
        self.inner.conns.insert(id, conn.clone());
        let span = tracing::info_span!("eventserver", peer = %peer_label(Some(&server), addr));
        let result = self
            .run_session(&conn, &server, addr, opts, tx)
            .instrument(span)
            .await;
        self.inner.conns.remove(&conn);
        self.inner.links.lock().expect("links").remove(&addr);
        conn.close(CloseCode::Normal.varint(), b"bye");
        (Some(server), result)
    }

    async fn run_session(
        &self,
        conn: &quinn::Connection,
        server: &str,
        addr: SocketAddr,
        opts: &ClientOptions,
        tx: &Delivery,
    ) -> String {
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => return format!("open stream: {e}"),
        };
        // From the hello on, the server may know us: `leave` waits for this session.
        {
            let _links = self.inner.links.lock().expect("links");
            if self.inner.stopping.load(Ordering::SeqCst) {
                // Leaving: a session that has not announced us yet never will.
                return "stopping".into();
            }
            self.inner.live_sessions.fetch_add(1, Ordering::SeqCst);
        }
        let _guard = SessionGuard(&self.inner);
        let mut hello = Vec::new();
        if let Some(a) = &opts.announce {
            hello.extend_from_slice(&encode_frame(&ClientMsg::Announce(a.clone())));
        }
        if !opts.subscribe.is_empty() {
            hello.extend_from_slice(&encode_frame(&ClientMsg::Subscribe(opts.subscribe.clone())));
        }
        if hello.is_empty() {
            hello.extend_from_slice(&encode_frame(&ClientMsg::Subscribe(Vec::new())));
        }
        if let Err(e) = send.write_all(&hello).await {
            return format!("send: {e}");
        }
        // The server's refusal of our certificate shows on the first read.
        match tokio::time::timeout(
            Duration::from_secs(3),
            read_msg::<ServerMsg, _>(&mut recv, MAX_FRAME),
        )
        .await
        {
            Ok(Ok(Some(ServerMsg::Welcome { .. }))) => {}
            Ok(Ok(Some(ServerMsg::Refused { reason }))) => {
                warn!(%server, %reason, "event server refused the session");
                return format!("refused: {reason}");
            }
            Ok(Ok(Some(other))) => return format!("unexpected first message {other:?}"),
            Ok(Ok(None)) => return "closed before welcome".into(),
            Ok(Err(e)) => return format!("no welcome: {e} ({})", close_reason(conn)),
            Err(_) => return "no welcome in time".into(),
        }
        let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(opts.out_queue.max(16));
        let leaving = {
            let mut links = self.inner.links.lock().expect("links");
            let leaving = self.inner.stopping.load(Ordering::SeqCst);
            if leaving {
                // `leave` ran while this session was coming up and did not see it: the server
                // has our announcement, so it gets our goodbye too (and `leave` waits for it).
                let _ = out_tx.try_send(Outgoing::Leave);
            }
            links.insert(
                addr,
                Link {
                    server: server.to_string(),
                    tx: out_tx,
                    bytes: ByteBudget::new(opts.out_queue_bytes),
                },
            );
            leaving
        };
        // A session welcomed after `leave` is not news to the member: it is going.
        if !leaving
            && tx
                .tx
                .send((
                    ClientEvent::Up {
                        server: server.to_string(),
                        addr,
                    },
                    None,
                ))
                .await
                .is_err()
        {
            return "client dropped".into();
        }
        let writer = async {
            while let Some(out) = out_rx.recv().await {
                // The frame's bytes go back to the queue's budget once QUIC holds it.
                let frame = match &out {
                    Outgoing::Frame(f, _charge) => f.clone(),
                    Outgoing::Leave => encode_frame(&ClientMsg::Leave),
                };
                if let Err(e) = send.write_chunk(frame).await {
                    return format!("send: {e}");
                }
                if matches!(out, Outgoing::Leave) {
                    let _ = send.finish();
                    // Wait for the server to close after our goodbye.
                    let _ = conn.closed().await;
                    return "left".to_string();
                }
            }
            "outgoing queue closed".to_string()
        };
        let reader = async {
            loop {
                let (msg, len) = match read_frame(&mut recv, MAX_FRAME).await {
                    Ok(Some(body)) => (decode_body::<ServerMsg>(&body).map(Some), body.len()),
                    Ok(None) => (Ok(None), 0),
                    Err(e) => (Err(e), 0),
                };
                let ev = match msg {
                    Ok(Some(ServerMsg::Event(ev))) if !self.first_time(&ev) => continue,
                    // A retained value sent again (on request or on subscribing) is not a
                    // publication to dedupe: the receiver decides whether it is news.
                    Ok(Some(ServerMsg::Event(ev) | ServerMsg::Retained(ev))) => ev,
                    Ok(Some(ServerMsg::Refused { reason })) => {
                        warn!(%server, %reason, "event server refused");
                        return format!("refused: {reason}");
                    }
                    Ok(Some(ServerMsg::Welcome { .. })) => continue,
                    Ok(None) => return format!("stream ended ({})", close_reason(conn)),
                    Err(e) => return format!("{e} ({})", close_reason(conn)),
                };
                let ev = match ev.payload.topic() {
                    Topic::Network if opts.whole_status => match self.whole(ev) {
                        Some(ev) => ev,
                        None => continue,
                    },
                    _ => ev,
                };
                if let (Payload::Crl(der), Some(store)) = (&ev.payload, &self.inner.crl) {
                    // Signature checks and a file write: off the runtime's threads.
                    let (store, der) = (store.clone(), der.clone());
                    let taken = tokio::task::spawn_blocking(move || store.apply_der(&der)).await;
                    match taken {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            warn!(origin = %ev.origin, cause = %e, "published CRL refused")
                        }
                        Err(e) => warn!(cause = %e, "revocation list check failed"),
                    }
                }
                let charge = match tx.bytes.try_take(len) {
                    Some(c) => c,
                    None => {
                        if let Some(m) = &self.inner.counters.waits {
                            m.inc();
                        }
                        tx.bytes.take(len).await
                    }
                };
                if tx
                    .tx
                    .send((ClientEvent::Event(Arc::new(ev)), Some(charge)))
                    .await
                    .is_err()
                {
                    return "client dropped".to_string();
                }
            }
        };
        let stop = self.inner.stop.notified();
        tokio::select! {
            r = writer => r,
            r = reader => r,
            _ = stop => "stopped".to_string(),
        }
    }
}

/// Where the sessions deliver: the channel and its byte budget.
#[derive(Clone)]
struct Delivery {
    tx: mpsc::Sender<(ClientEvent, Option<Charge>)>,
    bytes: ByteBudget,
}

struct SessionGuard<'a>(&'a Inner);

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        self.0.live_sessions.fetch_sub(1, Ordering::SeqCst);
        self.0.closed.notify_waiters();
    }
}

/// A readable reason from a connection's close state.
pub fn close_reason(conn: &quinn::Connection) -> String {
    match conn.close_reason() {
        Some(e) => close_reason_of(&e),
        None => "connection open".to_string(),
    }
}

/// A readable reason from a connection error.
pub fn close_reason_of(err: &quinn::ConnectionError) -> String {
    match err {
        quinn::ConnectionError::ApplicationClosed(a) => {
            format!("closed by peer: {}", String::from_utf8_lossy(&a.reason))
        }
        quinn::ConnectionError::TimedOut => "idle timeout".to_string(),
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::Seen;

    #[test]
    fn a_copy_that_comes_late_through_another_server_is_taken_once() {
        let mut s = Seen::new(100);
        assert!(!s.first_time(100), "the first one again");
        assert!(s.first_time(102), "ahead through a fast server");
        assert!(s.first_time(101), "the one before, through a slower server");
        assert!(!s.first_time(101));
        assert!(!s.first_time(102));
        assert!(s.first_time(170));
        assert!(s.first_time(106), "64 behind the newest: still known");
        assert!(!s.first_time(106));
        assert!(!s.first_time(105), "more than 64 behind: taken as seen");
        assert!(s.first_time(234), "a jump of exactly 64");
        assert!(!s.first_time(170), "the old newest, now in the window");
        assert!(s.first_time(1_000), "a jump past the window");
        assert!(!s.first_time(234));
        assert!(s.first_time(999));
    }
}
