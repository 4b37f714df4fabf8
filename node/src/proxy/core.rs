//! The proxy's runtime: N workers, each owning one [`Engine`] (the protocol, in the
//! `onehop-sip` crate) and carrying out what it asks: sockets, the registrar, the resolver,
//! other nodes, timers.
//!
//! # Sharding
//! Every message goes to the worker that its Call-ID hashes to ([`shard_of`]): all the
//! messages of a call (its INVITE, the responses, the CANCEL, the ACK, the BYE) and every
//! retransmission of a transaction meet in one worker, so workers share nothing on the hot
//! path but the network status (a `watch` snapshot), the transports and the metrics' atomic
//! counters. A worker is a tokio task; the runtime spreads the workers over the cores.
//!
//! # Queues
//! Each worker has two inboxes: `events` (messages from the network and from other nodes;
//! bounded in messages, `sip_inbound_queue`, and in bytes, `sip_inbound_queue_bytes`, so a
//! busy worker pushes back on its senders; a datagram that finds either bound full is
//! dropped and counted in `sip_inbound_dropped_total{bound=...}`) and `answers` (the results of work
//! the worker itself started: registrar writes, lookups, number routes, resolutions, relay sessions,
//! failed sends; bounded by what it started, since `max_pending` and the peer queues bound
//! that).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use onehop_overlay::budget::{ByteBudget, Charge};
use onehop_overlay::metrics::{Histogram, Metric, Metrics, SIP_BUCKETS};
use onehop_overlay::status::Role;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::media::{Done, MediaGate};
use super::resolve::SipResolver;
use super::transport::{Inbound, InboundSink, Proto, SendError, Transports};
use super::{FarmSettings, Locator, PeerLink, ProxyConfig, Receipt, SipEnvelope};
use crate::sip::digest::{Admit, FailureGuard, GuardPolicy};
use crate::sip::engine::{Counts, Engine, EngineConfig, Env, Input, MediaHook, Output, Resume};
use crate::sip::registrar::Transport;
use crate::sip::transaction::TransactionKey;
use crate::sip::{Message, Request};
use crate::view::View;

pub use crate::sip::engine::Hop;

/// What a worker receives.
pub enum Event {
    /// A message from the network.
    Net(Inbound),
    /// A message from another node.
    Peer {
        /// The sending node.
        node: String,
        /// The message.
        env: SipEnvelope,
    },
    /// The answer to work the worker started (registrar, lookup, resolution, a failed send).
    Answer(Input<Box<Done>>),
    /// The media relay answered (see [`super::media`]).
    Media(Box<Done>),
}

/// The worker a message belongs to: the hash of its Call-ID (worker 0 when it has none; the
/// parser then answers 400 or drops it).
pub fn shard_of(bytes: &[u8], workers: usize) -> usize {
    if workers <= 1 {
        return 0;
    }
    match crate::sip::shard::call_id(bytes) {
        Some(id) => (xxhash_rust::xxh3::xxh3_64(id) % workers as u64) as usize,
        None => 0,
    }
}

/// An event in a worker's inbox, with the bytes it holds of that inbox's bound.
type Queued = (Event, Option<Charge>);

/// A handle to give the workers messages from other nodes.
#[derive(Clone)]
pub struct CoreHandle {
    workers: Arc<Vec<mpsc::Sender<Queued>>>,
    bytes: Arc<Vec<ByteBudget>>,
    dropped_entries: Metric,
    dropped_bytes: Metric,
}

impl CoreHandle {
    /// Queues a message from node `node` for its worker, waiting while that worker's inbox is
    /// full in messages or bytes (pushing back on the sender); false when the worker is gone.
    ///
    /// Cancel safety: cancel-safe; a message not queued holds no room.
    pub async fn from_peer(&self, node: String, env: SipEnvelope) -> bool {
        let w = shard_of(&env.bytes, self.workers.len());
        let charge = self.bytes[w].take(env.bytes.len()).await;
        self.workers[w]
            .send((Event::Peer { node, env }, Some(charge)))
            .await
            .is_ok()
    }

    /// Queues a message from the network for its worker; false when the worker's inbox is
    /// full in messages or bytes (a UDP message is then dropped, and counted: its sender
    /// retransmits).
    pub fn try_net(&self, m: Inbound) -> bool {
        let w = shard_of(&m.bytes, self.workers.len());
        let Some(charge) = self.bytes[w].try_take(m.bytes.len()) else {
            self.dropped_bytes.inc();
            return false;
        };
        match self.workers[w].try_send((Event::Net(m), Some(charge))) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped_entries.inc();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues a message from the network for its worker, waiting while the inbox is full in
    /// messages or bytes.
    pub async fn net(&self, m: Inbound) -> bool {
        let w = shard_of(&m.bytes, self.workers.len());
        let charge = self.bytes[w].take(m.bytes.len()).await;
        self.workers[w]
            .send((Event::Net(m), Some(charge)))
            .await
            .is_ok()
    }

    /// How many workers there are.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }
}

/// What the engine asks of the node: the network status and the open flows.
pub struct NodeEnv {
    me: String,
    view: watch::Receiver<Arc<View>>,
    transports: Arc<Transports>,
    guard: Arc<SourceGuard>,
}

/// The failure guard shared by the workers (a source's requests spread over all of them).
/// Looked at only when a request carries credentials, and locked only when some address is
/// tracked.
pub struct SourceGuard {
    guard: std::sync::Mutex<FailureGuard>,
    tracked: std::sync::atomic::AtomicBool,
    failures: Metric,
    refused: Metric,
    blocked: Metric,
}

impl SourceGuard {
    /// A guard with `policy`, counting in `metrics`.
    pub fn new(policy: GuardPolicy, metrics: &Metrics) -> SourceGuard {
        SourceGuard {
            guard: std::sync::Mutex::new(FailureGuard::new(policy)),
            tracked: std::sync::atomic::AtomicBool::new(false),
            failures: metrics.counter(
                "sip_auth_failures_total",
                "SIP requests whose credentials were refused (wrong password, unknown user).",
            ),
            refused: metrics.counter(
                "sip_auth_throttled_total",
                "SIP requests refused without a check because their source failed too often.",
            ),
            blocked: metrics.counter(
                "sip_auth_sources_blocked_total",
                "Source addresses blocked for a while after repeated failures.",
            ),
        }
    }

    fn admit(&self, ip: IpAddr) -> Admit {
        use std::sync::atomic::Ordering;
        if !self.tracked.load(Ordering::Relaxed) {
            return Admit::Open;
        }
        let mut g = self.guard.lock().expect("source guard");
        let admit = g.admit(ip, onehop_overlay::daemon::now_ms());
        self.tracked.store(!g.is_empty(), Ordering::Relaxed);
        if !admit.allowed() {
            self.refused.inc();
        }
        admit
    }

    fn failed(&self, ip: IpAddr) {
        use std::sync::atomic::Ordering;
        self.failures.inc();
        let mut g = self.guard.lock().expect("source guard");
        let now = onehop_overlay::daemon::now_ms();
        if g.len() >= g.policy().max_sources / 2 {
            g.purge(now);
        }
        if g.failed(ip, now) {
            self.blocked.inc();
            warn!(source = %ip, "SIP source blocked after repeated authentication failures");
        }
        self.tracked.store(true, Ordering::Relaxed);
    }
}

impl Env for NodeEnv {
    fn node_at(&self, addr: SocketAddr) -> Option<String> {
        let view = self.view.borrow();
        let status = view.status.as_ref()?;
        status
            .members
            .iter()
            .find(|m| m.ip == addr.ip() && m.has_role(Role::SIP_PROXY) && m.name != self.me)
            .map(|m| m.name.clone())
    }

    fn node_is_live(&self, name: &str) -> bool {
        self.view
            .borrow()
            .status
            .as_ref()
            .and_then(|s| s.member(name))
            .is_some_and(|m| m.has_role(Role::SIP_PROXY))
    }

    fn has_flow(&self, conn: u64) -> bool {
        self.transports.has_flow(conn)
    }

    fn admit(&self, ip: IpAddr) -> Admit {
        self.guard.admit(ip)
    }

    fn auth_failed(&self, ip: IpAddr) {
        self.guard.failed(ip);
    }
}

impl MediaHook for MediaGate {
    type Done = Box<Done>;
    fn inbound(&mut self, msg: Message, from: &Hop, source: Option<SocketAddr>) -> Option<Message> {
        MediaGate::inbound(self, msg, from, source)
    }
    fn invite_out(&mut self, key: &TransactionKey, req: &Request, from: &Hop) -> bool {
        MediaGate::invite_out(self, key, req, from)
    }
    fn final_response(&mut self, key: &TransactionKey, status: u16) {
        MediaGate::final_response(self, key, status)
    }
    fn done(&mut self, done: Box<Done>) -> Resume {
        MediaGate::done(self, *done)
    }
}

/// The transport protocol of the node's sockets for a SIP transport.
pub fn proto_of(t: Transport) -> Proto {
    match t {
        Transport::Udp => Proto::Udp,
        Transport::Tcp => Proto::Tcp,
        Transport::Tls => Proto::Tls,
    }
}

/// The SIP transport of a node's socket protocol.
pub fn transport_of(p: Proto) -> Transport {
    match p {
        Proto::Udp => Transport::Udp,
        Proto::Tcp => Transport::Tcp,
        Proto::Tls => Transport::Tls,
    }
}

/// The figures the workers keep (shared atomics; each worker adds its own counts).
struct Counters {
    metrics: Metrics,
    requests: Metric,
    registered: Metric,
    overload: Metric,
    bad: Metric,
    unreachable: Metric,
    transactions: Metric,
    lingering: Metric,
    /// Per-code and per-method counters, found once and kept (no lock per message).
    by_code: Vec<(u16, Metric)>,
    by_method: Vec<(&'static str, Metric)>,
    /// `sip_response_seconds{method=..}`, made as methods are first seen (a bounded set:
    /// the engine names methods outside RFC 3261 and its extensions `other`).
    response_time: Vec<(&'static str, Histogram)>,
}

impl Counters {
    fn new(metrics: &Metrics) -> Counters {
        Counters {
            metrics: metrics.clone(),
            requests: metrics.counter("sip_requests_total", "SIP requests received."),
            registered: metrics.counter("sip_registrations_total", "REGISTERs answered 200."),
            overload: metrics.counter(
                "sip_overload_total",
                "Requests refused with 503 for overload.",
            ),
            bad: metrics.counter("sip_malformed_total", "Malformed SIP messages received."),
            unreachable: metrics.counter(
                "sip_unreachable_total",
                "Requests answered 503 because their next hop could not be reached.",
            ),
            transactions: metrics.gauge("sip_transactions", "Live SIP transactions."),
            lingering: metrics.gauge(
                "sip_transactions_lingering",
                "Finished SIP transactions kept lean to absorb retransmissions.",
            ),
            by_code: Vec::new(),
            by_method: Vec::new(),
            response_time: Vec::new(),
        }
    }

    fn add(&mut self, c: Counts) {
        for (v, m) in [
            (c.requests, &self.requests),
            (c.registered, &self.registered),
            (c.overload, &self.overload),
            (c.malformed, &self.bad),
            (c.unreachable, &self.unreachable),
        ] {
            if v > 0 {
                m.add(v as i64);
            }
        }
        for (code, n) in c.by_code {
            let m = match self.by_code.iter().find(|(k, _)| *k == code) {
                Some((_, m)) => m.clone(),
                None => {
                    let m = self.metrics.counter(
                        &format!("sip_responses_total{{code=\"{code}\"}}"),
                        "SIP responses sent, by code.",
                    );
                    self.by_code.push((code, m.clone()));
                    m
                }
            };
            m.add(n as i64);
        }
        for (name, n) in c.by_method {
            let m = match self.by_method.iter().find(|(k, _)| *k == name) {
                Some((_, m)) => m.clone(),
                None => {
                    let m = self.metrics.counter(
                        &format!("sip_requests_by_method_total{{method=\"{name}\"}}"),
                        "SIP requests received, by method.",
                    );
                    self.by_method.push((name, m.clone()));
                    m
                }
            };
            m.add(n as i64);
        }
        for (name, took) in c.response_times {
            let h = match self.response_time.iter().find(|(k, _)| *k == name) {
                Some((_, h)) => h,
                None => {
                    let h = self.metrics.histogram(
                        &format!("sip_response_seconds{{method=\"{name}\"}}"),
                        "SIP response time by method: from a request's arrival at its worker to \
                         its final response sent or forwarded.",
                        SIP_BUCKETS,
                    );
                    self.response_time.push((name, h));
                    &self.response_time[self.response_time.len() - 1].1
                }
            };
            h.observe(took);
        }
    }
}

/// One worker: an engine and what it needs to carry out the engine's outputs.
struct Worker {
    id: usize,
    engine: Engine<NodeEnv, MediaGate>,
    listen: SocketAddr,
    transports: Arc<Transports>,
    locator: Arc<dyn Locator>,
    peers: Arc<dyn PeerLink>,
    resolver: Option<SipResolver>,
    answers: mpsc::UnboundedSender<Event>,
    counters: Counters,
    /// The gauges' values this worker added, to add only the change.
    reported: (i64, i64),
    /// The farm's keys and domains as they change.
    farm: Option<watch::Receiver<Arc<FarmSettings>>>,
}

/// Most events a worker takes from its inboxes before it updates its figures and yields.
///
/// The yield lets the runtime poll its sockets: with one thread (the current-thread
/// scheduler), IO is looked at only between task polls, and a worker that took everything
/// queued in one turn (a burst of datagrams is hundreds of messages, each parsed, answered or
/// sent to a registrar) held the other node's answers to its store calls unread for that
/// long. Measured with 64 and no yield against 8 and a yield (docs/benchmarks.md): node1's
/// time to answer a REGISTER 2.4-2.5 -> 1.2-1.4 ms under load, REGISTER/s +15%.
const BATCH: usize = 8;

/// The workers' inboxes, made before the transports so that the transports can hand each
/// message straight to its worker ([`CoreHandle`] is their [`InboundSink`]).
pub struct Inboxes {
    rx: Vec<mpsc::Receiver<Queued>>,
}

/// The inboxes of `cfg.workers` workers (each of `cfg.queue` messages and `cfg.queue_bytes`
/// bytes), and the handle that feeds them; datagrams dropped at a full inbox are counted in
/// `metrics`.
pub fn inboxes(cfg: &ProxyConfig, metrics: &Metrics) -> (CoreHandle, Inboxes) {
    const DROPPED: &str =
        "SIP datagrams dropped because their worker's inbox was full, by the bound reached.";
    let n = cfg.workers.max(1);
    let (tx, rx): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::channel(cfg.queue.max(1024))).unzip();
    let bytes = (0..n)
        .map(|_| ByteBudget::new(cfg.queue_bytes.max(cfg.max_message)))
        .collect();
    (
        CoreHandle {
            workers: Arc::new(tx),
            bytes: Arc::new(bytes),
            dropped_entries: metrics
                .counter("sip_inbound_dropped_total{bound=\"entries\"}", DROPPED),
            dropped_bytes: metrics.counter("sip_inbound_dropped_total{bound=\"bytes\"}", DROPPED),
        },
        Inboxes { rx },
    )
}

impl InboundSink for CoreHandle {
    fn try_deliver(&self, m: Inbound) -> bool {
        self.try_net(m)
    }
    fn deliver(&self, m: Inbound) -> super::BoxFut<bool> {
        let core = self.clone();
        Box::pin(async move { core.net(m).await })
    }
}

/// Starts the workers on `inbound` (a channel the transports feed, as in tests); returns the
/// handle for messages from other nodes. The node itself uses [`inboxes`] and [`run`], so
/// that the transports feed the workers with no task in between.
#[allow(clippy::too_many_arguments)]
pub fn start(
    cfg: ProxyConfig,
    me: String,
    transports: Arc<Transports>,
    inbound: mpsc::Receiver<Inbound>,
    locator: Arc<dyn Locator>,
    peers: Arc<dyn PeerLink>,
    view: watch::Receiver<Arc<View>>,
    metrics: &Metrics,
    cancel: CancellationToken,
) -> CoreHandle {
    let (handle, boxes) = inboxes(&cfg, metrics);
    run(
        cfg,
        boxes,
        me,
        transports,
        locator,
        peers,
        view,
        metrics,
        cancel.clone(),
    );
    tokio::spawn(dispatch(inbound, handle.clone(), cancel));
    handle
}

/// Starts one worker on each inbox.
#[allow(clippy::too_many_arguments)]
pub fn run(
    cfg: ProxyConfig,
    inboxes: Inboxes,
    me: String,
    transports: Arc<Transports>,
    locator: Arc<dyn Locator>,
    peers: Arc<dyn PeerLink>,
    view: watch::Receiver<Arc<View>>,
    metrics: &Metrics,
    cancel: CancellationToken,
) {
    let n = inboxes.rx.len();
    let resolver = match SipResolver::new(&cfg.dns_servers) {
        Ok(r) => Some(r),
        Err(e) => {
            warn!(cause = %e, "no DNS resolver: requests for other domains get 404");
            None
        }
    };
    let tag = format!("oh{:x}", onehop_overlay::ring::position(&me) & 0xffff_ffff);
    let guard = Arc::new(SourceGuard::new(cfg.guard, metrics));
    for (id, rx) in inboxes.rx.into_iter().enumerate() {
        let (answers, answers_rx) = mpsc::unbounded_channel();
        let media = cfg.media_relay.clone().map(|link| {
            MediaGate::new(link, answers.clone(), metrics).with_held_bytes(cfg.held_bytes)
        });
        let mut ecfg = EngineConfig::new(&me, &cfg.domain, cfg.listen);
        ecfg.tag = tag.clone();
        ecfg.tls_port = cfg.tls_port;
        ecfg.policy = cfg.policy.clone();
        // Each worker holds its share of the node's bounds.
        ecfg.max_pending = cfg.max_pending.div_ceil(n);
        ecfg.max_transactions = cfg.max_transactions.div_ceil(n);
        ecfg.max_completed_bytes = crate::sip::engine::DEFAULT_MAX_COMPLETED_BYTES.div_ceil(n);
        ecfg.timer_c = cfg.timer_c;
        ecfg.max_message = cfg.max_message;
        ecfg.auth = cfg.auth;
        ecfg.nonce_lifetime_ms = cfg.nonce_lifetime_ms;
        ecfg.algorithms = cfg.algorithms.clone();
        ecfg.seed = rand::random();
        let env = NodeEnv {
            me: me.clone(),
            view: view.clone(),
            transports: transports.clone(),
            guard: guard.clone(),
        };
        let now = Instant::now();
        let mut engine = Engine::new(ecfg, env, media, now);
        engine.set_wall_clock(now, onehop_overlay::daemon::now_ms());
        if let Some(farm) = &cfg.farm {
            let f = farm.borrow().clone();
            engine.set_keys(f.keys.clone());
            engine.set_domains(&f.domains);
            engine.set_dial_plans(&f.dial_plans);
        }
        let worker = Worker {
            id,
            engine,
            listen: cfg.listen,
            transports: transports.clone(),
            locator: locator.clone(),
            peers: peers.clone(),
            resolver: resolver.clone(),
            answers,
            counters: Counters::new(metrics),
            reported: (0, 0),
            farm: cfg.farm.clone(),
        };
        tokio::spawn(worker.run(rx, answers_rx, cancel.clone()));
    }
}

/// Hands each message from a channel to its worker. A datagram for a full worker is
/// dropped (its sender retransmits); a message from a stream waits.
async fn dispatch(
    mut inbound: mpsc::Receiver<Inbound>,
    core: CoreHandle,
    cancel: CancellationToken,
) {
    loop {
        let m = tokio::select! {
            m = inbound.recv() => match m {
                Some(m) => m,
                None => return,
            },
            _ = cancel.cancelled() => return,
        };
        if m.source.proto == Proto::Udp {
            if !core.try_net(m) {
                debug!("SIP worker busy: datagram dropped");
            }
        } else if !core.net(m).await {
            return;
        }
    }
}

impl Worker {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<Queued>,
        mut answers: mpsc::UnboundedReceiver<Event>,
        cancel: CancellationToken,
    ) {
        let mut farm = self.farm.take();
        let mut clock_set = Instant::now();
        loop {
            let next = self.engine.poll_timeout();
            let sleep = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            let farm_changed = async {
                match farm.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            if clock_set.elapsed() >= std::time::Duration::from_secs(1) {
                clock_set = Instant::now();
                self.engine
                    .set_wall_clock(clock_set, onehop_overlay::daemon::now_ms());
            }
            let mut took_inbox = false;
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                alive = farm_changed => {
                    match (alive, farm.as_ref()) {
                        (true, Some(rx)) => {
                            let f = rx.borrow().clone();
                            self.engine.set_keys(f.keys.clone());
                            self.engine.set_domains(&f.domains);
                            self.engine.set_dial_plans(&f.dial_plans);
                        }
                        _ => farm = None,
                    }
                    continue;
                }
                a = answers.recv() => match a {
                    Some(a) => self.on_event(a),
                    None => return,
                },
                e = events.recv() => match e {
                    Some((e, _charge)) => {
                        took_inbox = true;
                        self.on_event(e);
                        for _ in 1..BATCH {
                            match events.try_recv() {
                                Ok((e, _charge)) => self.on_event(e),
                                Err(_) => break,
                            }
                        }
                    }
                    None => return,
                },
                _ = sleep => {
                    self.engine.handle_timeout(Instant::now());
                    self.drain();
                }
            }
            self.report();
            if took_inbox {
                tokio::task::yield_now().await;
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        let now = Instant::now();
        let input = match ev {
            Event::Net(m) => Input::Message {
                from: Hop::Net {
                    proto: transport_of(m.source.proto),
                    remote: m.source.remote,
                    conn: m.source.conn,
                },
                source: Some(m.source.remote),
                bytes: m.bytes,
                deliver: None,
            },
            Event::Peer { node, env } => Input::Message {
                bytes: Bytes::from(env.bytes),
                from: Hop::Peer {
                    node,
                    deliver: None,
                },
                source: None,
                deliver: env.deliver,
            },
            Event::Answer(input) => input,
            Event::Media(done) => Input::Media(done),
        };
        self.engine.handle(now, input);
        self.drain();
    }

    /// Carries out everything the engine asked for.
    fn drain(&mut self) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Send { hop, bytes, client } => {
                    if let Err(why) = self.send(&hop, bytes, client.as_ref()) {
                        debug!(worker = self.id, peer = %hop, cause = %why, "SIP send failed");
                        if let Some(client) = client {
                            self.engine
                                .handle(Instant::now(), Input::SendFailed { client });
                        }
                    }
                }
                Output::Register {
                    key,
                    info,
                    policy,
                    auth,
                } => {
                    let fut = self.locator.register(info, policy, auth);
                    let tx = self.answers.clone();
                    tokio::spawn(async move {
                        let result = fut.await;
                        let at_ms = onehop_overlay::daemon::now_ms();
                        let _ = tx.send(Event::Answer(Input::Registered { key, result, at_ms }));
                    });
                }
                Output::Authenticate { key, aor, auth } => {
                    let fut = self.locator.authenticate(aor, auth);
                    let tx = self.answers.clone();
                    tokio::spawn(async move {
                        let result = fut.await;
                        let _ = tx.send(Event::Answer(Input::Authenticated { key, result }));
                    });
                }
                Output::Lookup { key, aor } => {
                    let fut = self.locator.lookup(aor);
                    let tx = self.answers.clone();
                    tokio::spawn(async move {
                        let result = fut.await;
                        let _ = tx.send(Event::Answer(Input::Located { key, result }));
                    });
                }
                Output::RouteNumber { key, number } => {
                    let fut = self.locator.number(number);
                    let tx = self.answers.clone();
                    tokio::spawn(async move {
                        let result = fut.await;
                        let _ = tx.send(Event::Answer(Input::NumberRouted { key, result }));
                    });
                }
                Output::Resolve {
                    key,
                    host,
                    port,
                    transport,
                } => {
                    let tx = self.answers.clone();
                    let Some(resolver) = self.resolver.clone() else {
                        let result = Err("no DNS resolver".to_string());
                        let _ = tx.send(Event::Answer(Input::Resolved { key, result }));
                        continue;
                    };
                    tokio::spawn(async move {
                        let result = resolver
                            .locate(&host, port, transport.map(proto_of))
                            .await
                            .map(|v| v.into_iter().map(|(p, a)| (transport_of(p), a)).collect());
                        let _ = tx.send(Event::Answer(Input::Resolved { key, result }));
                    });
                }
            }
        }
    }

    /// Sends `bytes` to `hop` without waiting. An error is a message that will not leave.
    fn send(&self, hop: &Hop, bytes: Bytes, client: Option<&TransactionKey>) -> Result<(), String> {
        match hop {
            Hop::Net {
                proto,
                remote,
                conn,
            } => {
                // Sent or queued now, never waited for: messages on one connection keep their
                // order (a 180 must not overtake the 200 sent right after it). The transports
                // count failures by reason.
                match self
                    .transports
                    .send_now(proto_of(*proto), *remote, *conn, bytes)
                {
                    Ok(()) => Ok(()),
                    // A full UDP send buffer: the transaction's timers retransmit.
                    Err(SendError::WouldBlock(_)) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
            Hop::Peer { node, deliver } => {
                let env = SipEnvelope {
                    bytes: bytes.to_vec(),
                    deliver: deliver.clone(),
                    from: self.listen,
                };
                let receipt = client.map(|c| Receipt {
                    client: c.clone(),
                    notify: self.answers.clone(),
                });
                self.peers.send(node.clone(), env, receipt)
            }
        }
    }

    /// Adds this worker's counts and the change of its gauges to the node's figures.
    fn report(&mut self) {
        let counts = self.engine.take_counts();
        if counts != Counts::default() {
            self.counters.add(counts);
        }
        let now = (
            self.engine.transactions() as i64,
            self.engine.lingering() as i64,
        );
        if now != self.reported {
            self.counters.transactions.add(now.0 - self.reported.0);
            self.counters.lingering.add(now.1 - self.reported.1);
            self.reported = now;
        }
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
