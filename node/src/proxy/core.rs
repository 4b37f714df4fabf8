//! The proxy core: one task owns every transaction of the node and decides where each message
//! goes. Slow work (the registrar's write at the AOR's owner, a binding lookup) runs in
//! spawned tasks whose results come back to the core as events, so the core never waits.
//!
//! Timers live in one heap of deadlines; a stale entry (its transaction moved on) is skipped
//! when it fires. Every table is bounded: past `max_transactions` or `max_pending` new
//! requests are answered 503 (requests inside a dialog, such as a BYE, have a reserve of a
//! quarter more, so calls already set up can end; an ACK is never refused).
//!
//! Transactions that have done their work and only wait to absorb retransmissions (an INVITE
//! after its 2xx, RFC 6026's Accepted state, for 32 s; a non-INVITE client transaction after
//! its final response, Timer K) are moved out of the full tables into lean ones that keep a
//! key and where to send, and do not count against `max_transactions`. Without that, every
//! call held two full transactions for 32 s, and one node could not sustain more than
//! `max_transactions / 64` calls a second.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use onehop_overlay::metrics::{Metric, Metrics};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::resolve::SipResolver;
use super::transport::{Inbound, Proto, Transports};
use super::{LocateError, Locator, PeerLink, ProxyConfig, SipEnvelope};
use crate::sip::proxy::{
    forward_request, forward_response, is_our_via, preprocess_route, validate_request, LocalAddrs,
    ViaParams,
};
use crate::sip::registrar::{Binding, Flow, RegisterError, RegisterInfo, Transport};
use crate::sip::transaction::{
    build_cancel, Action, Actions, ClientState, ClientTransaction, ServerState, ServerTransaction,
    TransactionKey,
};
use crate::sip::{parse_with, reply, Limits, Message, Method, Request, Response, Uri};
use crate::view::View;

impl std::fmt::Display for Hop {
    /// For logs (`peer = ...`): the client's address, or the node's name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hop::Net { remote, .. } => write!(f, "{remote}"),
            Hop::Peer { node, .. } => f.write_str(node),
        }
    }
}

/// The core's tables: keyed by what arrives from the network (Via branches), so with a
/// per-process random seed (foldhash), which is several times cheaper than std's SipHash.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Where a message goes (or came from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hop {
    /// A SIP client or server on the network.
    Net {
        /// Protocol.
        proto: Proto,
        /// Its address.
        remote: SocketAddr,
        /// The TCP flow to use, 0 for none.
        conn: u64,
    },
    /// Another node, over the overlay.
    Peer {
        /// Its name.
        node: String,
        /// Deliver the request to this client flow held by that node.
        deliver: Option<Flow>,
    },
}

impl Hop {
    fn reliable(&self) -> bool {
        !matches!(
            self,
            Hop::Net {
                proto: Proto::Udp,
                ..
            }
        )
    }
}

/// Events the core handles.
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
    /// The registrar answered.
    Registered(TransactionKey, Result<Vec<Binding>, LocateError>),
    /// A lookup answered.
    Located(TransactionKey, Result<Vec<Binding>, LocateError>),
    /// An RFC 3263 resolution answered.
    Resolved(TransactionKey, Result<Vec<(Proto, SocketAddr)>, String>),
    /// The media relay answered (see [`super::media`]).
    Media(Box<super::media::Done>),
}

/// A handle to give the core messages from other nodes.
#[derive(Clone)]
pub struct CoreHandle {
    tx: mpsc::Sender<Event>,
}

impl CoreHandle {
    /// Queues a message from node `node`; false when the core is overloaded (dropped).
    pub fn from_peer(&self, node: String, env: SipEnvelope) -> bool {
        self.tx.try_send(Event::Peer { node, env }).is_ok()
    }
}

struct ServerEntry {
    txn: ServerTransaction,
    reply_to: Hop,
    clients: Vec<TransactionKey>,
    /// Further targets to try after a failure (serial forking by q).
    targets: VecDeque<(Uri, Hop)>,
    /// The request as received (after route processing), for forwarding to further targets.
    request: Option<Request>,
    record_route: bool,
    best: Option<Response>,
    done: bool,
}

struct ClientEntry {
    txn: ClientTransaction,
    server: Option<TransactionKey>,
    hop: Hop,
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TimerRef {
    Server(Key),
    Client(Key),
    TimerC(Key),
    Completed(Key),
    LingerServer(Key),
    LingerClient(Key),
}

/// A non-INVITE server transaction over UDP after its final response: only the response is
/// kept, to answer retransmissions until Timer J (64*T1) ends it. At 10,000 REGISTERs a
/// second that is 320,000 of them, so they are kept lean.
struct Completed {
    bytes: Bytes,
    hop: Hop,
}

/// Most completed transactions remembered; beyond, a retransmission is processed again.
const MAX_COMPLETED: usize = 1_000_000;

/// Timer J for UDP (64*T1); also Timers L and M (RFC 6026), the same 64*T1.
const TIMER_J: std::time::Duration = std::time::Duration::from_secs(32);

/// Timer K for UDP (T4): a non-INVITE client transaction absorbs retransmitted responses.
const TIMER_K: std::time::Duration = std::time::Duration::from_secs(5);

/// Most lingering transactions of each side; beyond, a finished one ends at once (its
/// retransmissions are then handled statelessly). 400,000 is 32 s of 12,500 calls a second.
const MAX_LINGERING: usize = 400_000;

/// `TransactionKey` with an order, for the timer heap.
#[derive(Clone, PartialEq, Eq)]
struct Key(TransactionKey);

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.0.branch, &self.0.sent_by, self.0.method.as_str()).cmp(&(
            &other.0.branch,
            &other.0.sent_by,
            other.0.method.as_str(),
        ))
    }
}

struct Counters {
    requests: Metric,
    responses_sent: Metrics,
    /// Per-code and per-method counters, found once and kept (no lock per message).
    by_code: std::cell::RefCell<HashMap<u16, Metric>>,
    by_method: std::cell::RefCell<HashMap<String, Metric>>,
    registered: Metric,
    overload: Metric,
    bad: Metric,
    transactions: Metric,
    lingering: Metric,
}

/// The core's state.
pub struct Core {
    cfg: ProxyConfig,
    me: String,
    local: LocalAddrs,
    limits: Limits,
    transports: Arc<Transports>,
    locator: Arc<dyn Locator>,
    peers: Arc<dyn PeerLink>,
    resolver: Option<SipResolver>,
    view: watch::Receiver<Arc<View>>,
    tx: mpsc::Sender<Event>,
    servers: Map<TransactionKey, ServerEntry>,
    clients: Map<TransactionKey, ClientEntry>,
    completed: Map<TransactionKey, Completed>,
    /// INVITE server transactions after a 2xx (RFC 6026 Accepted): where responses go.
    lingering_servers: Map<TransactionKey, Hop>,
    /// Client transactions after their final response (INVITE after a 2xx, non-INVITE in
    /// Completed): the server transaction further 2xx go up to.
    lingering_clients: Map<TransactionKey, Option<TransactionKey>>,
    timers: BinaryHeap<Reverse<(Instant, u64, TimerRef)>>,
    seq: u64,
    pending: usize,
    counters: Counters,
    /// Media relay ([`super::media`]): SDP rewriting and relay sessions, when configured.
    media: Option<super::media::MediaGate>,
}

/// Starts the core on `inbound` (the transports' channel); returns the handle for messages
/// from other nodes.
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
    let (tx, rx) = mpsc::channel(cfg.max_pending.max(1024));
    let local = LocalAddrs::new(&[cfg.listen], &[cfg.domain.as_str()]);
    let limits = Limits {
        max_message: cfg.max_message,
        ..Limits::default()
    };
    let resolver = match SipResolver::new(&cfg.dns_servers) {
        Ok(r) => Some(r),
        Err(e) => {
            warn!(cause = %e, "no DNS resolver: requests for other domains get 404");
            None
        }
    };
    let media = cfg
        .media_relay
        .clone()
        .map(|link| super::media::MediaGate::new(link, tx.clone(), metrics));
    let core = Core {
        counters: Counters {
            requests: metrics.counter("sip_requests_total", "SIP requests received."),
            responses_sent: metrics.clone(),
            by_code: Default::default(),
            by_method: Default::default(),
            registered: metrics.counter("sip_registrations_total", "REGISTERs answered 200."),
            overload: metrics.counter(
                "sip_overload_total",
                "Requests refused with 503 for overload.",
            ),
            bad: metrics.counter("sip_malformed_total", "Malformed SIP messages received."),
            transactions: metrics.gauge("sip_transactions", "Live SIP transactions."),
            lingering: metrics.gauge(
                "sip_transactions_lingering",
                "Finished SIP transactions kept lean to absorb retransmissions.",
            ),
        },
        cfg,
        me,
        local,
        limits,
        transports,
        locator,
        peers,
        resolver,
        view,
        tx: tx.clone(),
        servers: Map::default(),
        clients: Map::default(),
        completed: Map::default(),
        lingering_servers: Map::default(),
        lingering_clients: Map::default(),
        timers: BinaryHeap::new(),
        seq: 0,
        pending: 0,
        media,
    };
    tokio::spawn(core.run(inbound, rx, cancel));
    CoreHandle { tx }
}

fn now_ms() -> u64 {
    onehop_overlay::daemon::now_ms()
}

impl Core {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut events: mpsc::Receiver<Event>,
        cancel: CancellationToken,
    ) {
        loop {
            let next = self.timers.peek().map(|Reverse((t, _, _))| *t);
            let sleep = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                m = inbound.recv() => match m {
                    Some(m) => self.on_event(Event::Net(m)),
                    None => return,
                },
                e = events.recv() => match e {
                    Some(e) => self.on_event(e),
                    None => return,
                },
                _ = sleep => self.fire_timers(Instant::now()),
                _ = cancel.cancelled() => return,
            }
            self.counters
                .transactions
                .set((self.servers.len() + self.clients.len()) as i64);
            self.counters
                .lingering
                .set((self.lingering_servers.len() + self.lingering_clients.len()) as i64);
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Net(m) => {
                let hop = Hop::Net {
                    proto: m.source.proto,
                    remote: m.source.remote,
                    conn: m.source.conn,
                };
                self.on_message(&m.bytes, hop, Some(m.source.remote), None);
            }
            Event::Peer { node, env } => {
                let hop = Hop::Peer {
                    node,
                    deliver: None,
                };
                self.on_message(&env.bytes, hop, None, env.deliver);
            }
            Event::Registered(key, result) => {
                self.pending = self.pending.saturating_sub(1);
                self.on_registered(key, result);
            }
            Event::Located(key, result) => {
                self.pending = self.pending.saturating_sub(1);
                self.on_located(key, result);
            }
            Event::Resolved(key, result) => {
                self.pending = self.pending.saturating_sub(1);
                self.on_resolved(key, result);
            }
            Event::Media(done) => self.on_media(*done),
        }
    }

    fn on_message(
        &mut self,
        bytes: &[u8],
        from: Hop,
        source: Option<SocketAddr>,
        deliver: Option<Flow>,
    ) {
        match parse_with(bytes, &self.limits) {
            Ok(msg) => {
                // Media relay: SDP entering the farm waits for the relay first.
                let msg = match self.media.as_mut() {
                    Some(gate) => match gate.inbound(msg, &from, source) {
                        Some(msg) => msg,
                        None => return,
                    },
                    None => msg,
                };
                self.dispatch(msg, from, source, deliver);
            }
            Err(e) => {
                self.counters.bad.inc();
                debug!(peer = %from, cause = %e, "malformed SIP message");
                if let Some(resp) = e.response() {
                    self.send_to(&from, Message::Response(resp));
                }
            }
        }
    }

    fn dispatch(
        &mut self,
        msg: Message,
        from: Hop,
        source: Option<SocketAddr>,
        deliver: Option<Flow>,
    ) {
        match msg {
            Message::Request(req) => {
                self.counters.requests.inc();
                self.count_request(&req.method);
                self.on_request(req, from, source, deliver);
            }
            Message::Response(resp) => self.on_response(resp, from),
        }
    }

    /// The media relay answered: go on with what waited for it (see [`super::media`]).
    fn on_media(&mut self, done: super::media::Done) {
        use super::media::Resume;
        let Some(gate) = self.media.as_mut() else {
            return;
        };
        match gate.done(done) {
            Resume::Nothing => {}
            Resume::Dispatch(held) => {
                for h in held {
                    self.dispatch(h.msg, h.from, h.source, None);
                }
            }
            Resume::Forward(key, request) => match self.servers.get_mut(&key) {
                Some(entry) if !entry.done => {
                    if request.is_some() {
                        entry.request = request;
                    }
                    self.try_next_target(&key);
                }
                _ => {
                    // The INVITE ended while its relay was asked: free the session.
                    if let Some(gate) = self.media.as_mut() {
                        gate.final_response(&key, 487);
                    }
                }
            },
        }
    }

    // ----- requests -----

    fn on_request(
        &mut self,
        mut req: Request,
        from: Hop,
        source: Option<SocketAddr>,
        deliver: Option<Flow>,
    ) {
        if let Some(src) = source {
            crate::sip::proxy::stamp_received(&mut req, src);
        }
        let now = Instant::now();
        let Some(key) = TransactionKey::server(&req) else {
            self.reply_stateless(&req, &from, 400, "Bad Via");
            return;
        };
        if req.method == Method::Ack {
            if let Some(entry) = self.servers.get_mut(&key) {
                let actions = entry.txn.on_ack(now);
                self.server_actions(&key, actions);
            } else {
                // The ACK of a 2xx: end to end, forwarded without a transaction.
                self.forward_stateless(req, &from, deliver);
            }
            return;
        }
        if let Some(c) = self.completed.get(&key) {
            let (hop, bytes) = (c.hop.clone(), c.bytes.clone());
            self.send_bytes(&hop, bytes);
            return;
        }
        if let Some(entry) = self.servers.get_mut(&key) {
            let actions = entry.txn.on_request_retransmission(now);
            self.server_actions(&key, actions);
            return;
        }
        if self.lingering_servers.contains_key(&key) {
            // An INVITE retransmitted after its 2xx went out: absorbed (RFC 6026).
            return;
        }
        if req.method == Method::Cancel {
            self.on_cancel(req, key, from, now);
            return;
        }
        let in_dialog = req.headers.to().is_some_and(|t| t.tag().is_some());
        let limit = if in_dialog {
            // Requests of calls already set up (BYE above all) get a reserve.
            self.cfg.max_transactions + self.cfg.max_transactions / 4
        } else {
            self.cfg.max_transactions
        };
        if self.servers.len() + self.clients.len() >= limit {
            self.counters.overload.inc();
            self.reply_stateless(&req, &from, 503, "Service Unavailable");
            return;
        }
        if let Err(rejection) = validate_request(&req, &self.local) {
            let resp = rejection.response(&req);
            self.reply_stateless_resp(resp, &from);
            return;
        }
        let mut txn = ServerTransaction::new(req.clone(), from.reliable(), now);
        let mut first = Actions::new();
        if req.method == Method::Invite {
            first = txn.trying(now);
        }
        let dialog_creating = req.method == Method::Invite
            && req.headers.to().and_then(|t| t.tag().map(|_| ())).is_none();
        self.servers.insert(
            key.clone(),
            ServerEntry {
                txn,
                reply_to: from.clone(),
                clients: Vec::new(),
                targets: VecDeque::new(),
                request: None,
                record_route: dialog_creating,
                best: None,
                done: false,
            },
        );
        self.server_actions(&key, first);

        preprocess_route(&mut req, &self.local);
        if let Some(flow) = deliver {
            // Another node routed this request to a client flow we hold.
            let hop = self.flow_hop(&flow);
            let target = req.uri.clone();
            self.start_targets(&key, req, vec![(target, hop)]);
            return;
        }
        let routed = req.headers.routes().next().is_some();
        let ours = self.local.is_our_domain(&req.uri) || self.local.is_local_uri(&req.uri);
        if !routed && ours {
            match req.method {
                Method::Register => self.start_register(key, req, &from, source),
                Method::Options if req.uri.user().is_none() => {
                    let resp = reply(&req, 200, None, Some(&self.me_tag()))
                        .with_header("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, INFO, UPDATE, REFER, NOTIFY, SUBSCRIBE");
                    self.respond(&key, resp);
                }
                _ if req.uri.user().is_none() || self.local.is_local_uri(&req.uri) => {
                    self.respond_status(&key, 404, "Not Found");
                }
                _ => self.start_lookup(key, req),
            }
            return;
        }
        // Routed onward: the top Route, or the Request-URI of another domain or host.
        let next = crate::sip::proxy::next_hop(&req);
        match self.hop_for_uri(&next) {
            Some(hop) => {
                let target = req.uri.clone();
                self.start_targets(&key, req, vec![(target, hop)]);
            }
            None if uri_addr(&next).is_none() => self.start_resolve(key, req, next),
            None => self.respond_status(&key, 404, "Not Found"),
        }
    }

    /// Another domain: locate its servers by RFC 3263, then forward.
    fn start_resolve(&mut self, key: TransactionKey, req: Request, next: Uri) {
        let Some(resolver) = self.resolver.clone() else {
            self.respond_status(&key, 404, "Not Found");
            return;
        };
        if self.pending >= self.cfg.max_pending {
            self.counters.overload.inc();
            self.respond_status(&key, 503, "Service Unavailable");
            return;
        }
        if let Some(entry) = self.servers.get_mut(&key) {
            entry.request = Some(req);
        }
        self.pending += 1;
        let host = next.host().to_string();
        let port = next.port();
        let transport = match next.transport_param().as_deref() {
            Some("tcp") => Some(Proto::Tcp),
            Some("udp") => Some(Proto::Udp),
            _ => None,
        };
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let r = resolver.locate(&host, port, transport).await;
            let _ = tx.send(Event::Resolved(key, r)).await;
        });
    }

    fn on_resolved(
        &mut self,
        key: TransactionKey,
        result: Result<Vec<(Proto, SocketAddr)>, String>,
    ) {
        let Some(req) = self
            .servers
            .get(&key)
            .filter(|e| !e.done)
            .and_then(|e| e.request.clone())
        else {
            return;
        };
        let servers = match result {
            Ok(s) if !s.is_empty() => s,
            Ok(_) | Err(_) => {
                self.respond_status(&key, 404, "Not Found");
                return;
            }
        };
        let targets = servers
            .into_iter()
            .map(|(proto, addr)| {
                let hop = match self.node_at(addr.ip(), addr.port()) {
                    Some(node) => Hop::Peer {
                        node,
                        deliver: None,
                    },
                    None => Hop::Net {
                        proto,
                        remote: addr,
                        conn: 0,
                    },
                };
                (req.uri.clone(), hop)
            })
            .collect();
        self.start_targets(&key, req, targets);
    }

    fn me_tag(&self) -> String {
        format!(
            "oh{:x}",
            onehop_overlay::ring::position(&self.me) & 0xffff_ffff
        )
    }

    fn start_register(
        &mut self,
        key: TransactionKey,
        req: Request,
        from: &Hop,
        source: Option<SocketAddr>,
    ) {
        if self.pending >= self.cfg.max_pending {
            self.counters.overload.inc();
            self.respond_status(&key, 503, "Service Unavailable");
            return;
        }
        let flow = match from {
            Hop::Net {
                proto,
                remote,
                conn,
            } => Some(Flow {
                node: self.me.clone(),
                transport: match proto {
                    Proto::Udp => Transport::Udp,
                    Proto::Tcp => Transport::Tcp,
                    Proto::Tls => Transport::Tls,
                },
                remote: *remote,
                local: self.cfg.listen,
                conn_id: *conn,
            }),
            Hop::Peer { .. } => None,
        };
        let info = match RegisterInfo::from_request(&req, flow, source) {
            Ok(i) => i,
            Err(e) => {
                let resp = e.response(&req);
                self.respond(&key, resp);
                return;
            }
        };
        if let Some(entry) = self.servers.get_mut(&key) {
            entry.request = Some(req);
        }
        self.pending += 1;
        let fut = self.locator.register(info, self.cfg.policy.clone());
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let r = fut.await;
            let _ = tx.send(Event::Registered(key, r)).await;
        });
    }

    fn on_registered(&mut self, key: TransactionKey, result: Result<Vec<Binding>, LocateError>) {
        let Some(req) = self.servers.get(&key).and_then(|e| e.request.clone()) else {
            return;
        };
        match result {
            Ok(bindings) => {
                let now = now_ms();
                let mut resp = reply(&req, 200, None, Some(&self.me_tag()));
                for b in &bindings {
                    resp = resp.with_header(
                        "Contact",
                        &format!("<{}>;expires={}", b.uri, b.remaining_secs(now)),
                    );
                }
                self.counters.registered.inc();
                self.respond(&key, resp);
            }
            Err(e) => self.respond_error(&key, &req, e),
        }
    }

    fn respond_error(&mut self, key: &TransactionKey, req: &Request, e: LocateError) {
        match e {
            LocateError::Rejected {
                status,
                reason,
                min_expires,
            } => {
                let mut resp = reply(req, status, Some(&reason), Some(&self.me_tag()));
                if let Some(m) = min_expires {
                    resp = resp.with_header("Min-Expires", &m.to_string());
                }
                self.respond(key, resp);
            }
            LocateError::Unavailable(why) => {
                warn!(%why, "registrar unavailable");
                let resp = reply(req, 503, Some("Service Unavailable"), Some(&self.me_tag()))
                    .with_header("Retry-After", "5");
                self.respond(key, resp);
            }
        }
    }

    fn start_lookup(&mut self, key: TransactionKey, req: Request) {
        if self.pending >= self.cfg.max_pending {
            self.counters.overload.inc();
            self.respond_status(&key, 503, "Service Unavailable");
            return;
        }
        let Some(aor) = req.uri.canonical_aor() else {
            self.respond_status(&key, 404, "Not Found");
            return;
        };
        if let Some(entry) = self.servers.get_mut(&key) {
            entry.request = Some(req);
        }
        self.pending += 1;
        let fut = self.locator.lookup(aor);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let r = fut.await;
            let _ = tx.send(Event::Located(key, r)).await;
        });
    }

    fn on_located(&mut self, key: TransactionKey, result: Result<Vec<Binding>, LocateError>) {
        let Some(req) = self
            .servers
            .get(&key)
            .filter(|e| !e.done)
            .and_then(|e| e.request.clone())
        else {
            return;
        };
        match result {
            Ok(mut bindings) if !bindings.is_empty() => {
                bindings.sort_by_key(|b| std::cmp::Reverse(b.q.unwrap_or(1000)));
                let mut targets = Vec::new();
                for b in bindings {
                    let Ok(uri) = Uri::parse(&b.uri) else {
                        continue;
                    };
                    if let Some(hop) = self.binding_hop(&b, &uri) {
                        targets.push((uri, hop));
                    }
                }
                if targets.is_empty() {
                    self.respond_status(&key, 480, "Temporarily Unavailable");
                } else {
                    self.start_targets(&key, req, targets);
                }
            }
            Ok(_) => self.respond_status(&key, 404, "Not Found"),
            Err(e) => self.respond_error(&key, &req, e),
        }
    }

    /// Where to reach a registered contact: through the node holding its flow when that node
    /// is live (reverse outbound), else straight to the address it registered from.
    fn binding_hop(&self, b: &Binding, uri: &Uri) -> Option<Hop> {
        if let Some(flow) = &b.flow {
            if flow.node == self.me {
                return Some(self.flow_hop(flow));
            }
            if self.node_is_live(&flow.node) {
                return Some(Hop::Peer {
                    node: flow.node.clone(),
                    deliver: Some(flow.clone()),
                });
            }
        }
        let proto = match b.flow.as_ref().map(|f| f.transport) {
            Some(Transport::Tcp) => Proto::Tcp,
            Some(Transport::Tls) => Proto::Tls,
            _ => match uri.transport_param().as_deref() {
                Some("tcp") => Proto::Tcp,
                _ => Proto::Udp,
            },
        };
        let remote = b.received.or_else(|| uri_addr(uri))?;
        Some(Hop::Net {
            proto,
            remote,
            conn: 0,
        })
    }

    fn flow_hop(&self, flow: &Flow) -> Hop {
        let proto = match flow.transport {
            Transport::Udp => Proto::Udp,
            Transport::Tcp => Proto::Tcp,
            Transport::Tls => Proto::Tls,
        };
        let conn = if proto != Proto::Udp && self.transports.has_flow(flow.conn_id) {
            flow.conn_id
        } else {
            0
        };
        Hop::Net {
            proto,
            remote: flow.remote,
            conn,
        }
    }

    fn node_is_live(&self, name: &str) -> bool {
        self.view
            .borrow()
            .status
            .as_ref()
            .and_then(|s| s.member(name))
            .is_some_and(|m| m.has_role(onehop_overlay::status::Role::SIP_PROXY))
    }

    /// The node (other than us) whose SIP address is `ip:port`, if any.
    fn node_at(&self, ip: IpAddr, port: u16) -> Option<String> {
        if port != self.cfg.listen.port() {
            return None;
        }
        let view = self.view.borrow();
        let status = view.status.as_ref()?;
        status
            .members
            .iter()
            .find(|m| {
                m.ip == ip
                    && m.has_role(onehop_overlay::status::Role::SIP_PROXY)
                    && m.name != self.me
            })
            .map(|m| m.name.clone())
    }

    fn hop_for_uri(&self, uri: &Uri) -> Option<Hop> {
        let addr = uri_addr(uri)?;
        if self.local.is_local_uri(uri) {
            return None;
        }
        if let Some(node) = self.node_at(addr.ip(), addr.port()) {
            return Some(Hop::Peer {
                node,
                deliver: None,
            });
        }
        let proto = match uri.transport_param().as_deref() {
            Some("tcp") => Proto::Tcp,
            _ => Proto::Udp,
        };
        Some(Hop::Net {
            proto,
            remote: addr,
            conn: 0,
        })
    }

    fn start_targets(&mut self, key: &TransactionKey, req: Request, targets: Vec<(Uri, Hop)>) {
        let Some(entry) = self.servers.get_mut(key) else {
            return;
        };
        entry.targets = targets.into();
        // Media relay: an initial INVITE entering the farm gets its relay session first, and
        // is forwarded on `Event::Media`.
        let held = matches!(entry.reply_to, Hop::Net { .. })
            && self.media.as_mut().is_some_and(|g| g.invite_out(key, &req));
        entry.request = Some(req);
        if !held {
            self.try_next_target(key);
        }
    }

    /// Forwards the request to the next target; 480 (or the best response so far) when none
    /// is left.
    fn try_next_target(&mut self, key: &TransactionKey) {
        let now = Instant::now();
        let Some(entry) = self.servers.get_mut(key) else {
            return;
        };
        let Some((target, hop)) = entry.targets.pop_front() else {
            let best = entry.best.take();
            match best {
                Some(resp) => self.respond(key, resp),
                None => self.respond_status(key, 480, "Temporarily Unavailable"),
            }
            return;
        };
        let Some(req) = entry.request.clone() else {
            return;
        };
        let record_route = entry.record_route;
        let inbound_proto = match &entry.reply_to {
            Hop::Net { proto, .. } => Some(*proto),
            Hop::Peer { .. } => None,
        };
        let via = self.via_for(&hop);
        let rr = record_route.then(|| {
            let proto = inbound_proto.unwrap_or(match &hop {
                Hop::Net { proto, .. } => *proto,
                Hop::Peer { .. } => Proto::Udp,
            });
            self.record_route_value(proto)
        });
        let fwd = forward_request(&req, &target, &via, rr.as_deref(), &self.local);
        let is_invite = fwd.method == Method::Invite;
        let (txn, actions) = ClientTransaction::new(fwd, hop.reliable(), now);
        let ckey = txn.key().clone();
        if let Some(entry) = self.servers.get_mut(key) {
            entry.clients.push(ckey.clone());
        }
        self.clients.insert(
            ckey.clone(),
            ClientEntry {
                txn,
                server: Some(key.clone()),
                hop,
            },
        );
        self.client_actions(&ckey, actions);
        if is_invite {
            let at = now + self.cfg.timer_c;
            self.push_timer(at, TimerRef::TimerC(Key(key.clone())));
        }
    }

    fn via_for(&self, hop: &Hop) -> ViaParams {
        let transport = match hop {
            Hop::Net {
                proto: Proto::Udp, ..
            } => Transport::Udp,
            Hop::Net {
                proto: Proto::Tls, ..
            } => Transport::Tls,
            _ => Transport::Tcp,
        };
        ViaParams {
            host: self.cfg.listen.ip().to_string(),
            port: self.cfg.listen.port(),
            transport,
            branch: None,
            rport: transport == Transport::Udp,
        }
    }

    fn record_route_value(&self, proto: Proto) -> String {
        let l = self.cfg.listen;
        match proto {
            Proto::Udp => format!("<sip:{}:{};lr>", l.ip(), l.port()),
            Proto::Tcp => format!("<sip:{}:{};transport=tcp;lr>", l.ip(), l.port()),
            Proto::Tls => format!(
                "<sip:{}:{};transport=tls;lr>",
                l.ip(),
                self.cfg.tls_port.unwrap_or(5061)
            ),
        }
    }

    fn on_cancel(&mut self, req: Request, key: TransactionKey, from: Hop, now: Instant) {
        let invite = key.cancelled_invite();
        let pending: Option<Vec<TransactionKey>> = self
            .servers
            .get(&invite)
            .filter(|e| !e.done)
            .map(|e| e.clients.clone());
        let Some(clients) = pending else {
            self.reply_stateless(&req, &from, 481, "Call/Transaction Does Not Exist");
            return;
        };
        self.reply_stateless(&req, &from, 200, "OK");
        if let Some(e) = self.servers.get_mut(&invite) {
            e.targets.clear();
        }
        for ck in clients {
            self.cancel_client(&ck, now);
        }
        if clients_empty(&self.servers, &invite) {
            // Nothing forwarded yet (lookup in flight): answer the INVITE ourselves.
            self.respond_status(&invite, 487, "Request Terminated");
        }
    }

    fn cancel_client(&mut self, ck: &TransactionKey, now: Instant) {
        let Some(c) = self.clients.get(ck) else {
            return;
        };
        if c.txn.is_terminated() {
            return;
        }
        let Some(cancel) = c
            .txn
            .cancel_request()
            .or_else(|| Some(build_cancel(c.txn.request())))
        else {
            return;
        };
        let hop = c.hop.clone();
        let (txn, actions) = ClientTransaction::new(cancel, hop.reliable(), now);
        let k = txn.key().clone();
        self.clients.insert(
            k.clone(),
            ClientEntry {
                txn,
                server: None,
                hop,
            },
        );
        self.client_actions(&k, actions);
    }

    fn forward_stateless(&mut self, mut req: Request, from: &Hop, deliver: Option<Flow>) {
        preprocess_route(&mut req, &self.local);
        let hop = match deliver {
            Some(flow) => Some(self.flow_hop(&flow)),
            None => self.hop_for_uri(&crate::sip::proxy::next_hop(&req)),
        };
        let Some(hop) = hop else {
            debug!(peer = %from, "ACK with nowhere to go dropped");
            return;
        };
        let _ = from;
        let target = req.uri.clone();
        let via = self.via_for(&hop);
        let fwd = forward_request(&req, &target, &via, None, &self.local);
        self.send_to(&hop, Message::Request(fwd));
    }

    // ----- responses -----

    fn on_response(&mut self, resp: Response, from: Hop) {
        let now = Instant::now();
        if let Some(key) = TransactionKey::from_response(&resp) {
            if let Some(c) = self.clients.get_mut(&key) {
                let actions = c.txn.on_response(resp, now);
                self.client_actions(&key, actions);
                return;
            }
            if let Some(server) = self.lingering_clients.get(&key) {
                // A finished client transaction: a retransmitted 2xx of an INVITE goes up
                // (RFC 6026), anything else is absorbed.
                if key.method == Method::Invite && (200..300).contains(&resp.status) {
                    if let Some(server) = server.clone() {
                        self.upstream(&server, &key, resp);
                    }
                }
                return;
            }
        }
        // No transaction (a 2xx retransmission after ours ended, or a stray): forward by Via.
        if !is_our_via(&resp, &self.local) {
            debug!(peer = %from, "response not for us dropped");
            return;
        }
        if let Some(up) = forward_response(&resp) {
            if let Some(hop) = self.response_hop(&up) {
                self.send_to(&hop, Message::Response(up));
            }
        }
    }

    /// Where a response goes by its top Via (RFC 3261 18.2.2 with RFC 3581).
    fn response_hop(&self, resp: &Response) -> Option<Hop> {
        let via = resp.headers.via_top()?;
        let (host, port) = via.response_target();
        let ip: IpAddr = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?;
        if let Some(node) = self.node_at(ip, port) {
            return Some(Hop::Peer {
                node,
                deliver: None,
            });
        }
        let proto = if via.is_reliable() {
            Proto::Tcp
        } else {
            Proto::Udp
        };
        Some(Hop::Net {
            proto,
            remote: SocketAddr::new(ip, port),
            conn: 0,
        })
    }

    fn upstream(&mut self, server: &TransactionKey, client: &TransactionKey, resp: Response) {
        let Some(mut up) = forward_response(&resp) else {
            return;
        };
        let code = up.status;
        let Some(entry) = self.servers.get_mut(server) else {
            // The server transaction has its 2xx already (it lingers): a further 2xx (a
            // retransmission or another fork's answer) passes on to where the first went.
            if (200..300).contains(&code) {
                if let Some(hop) = self.lingering_servers.get(server).cloned() {
                    self.send_to(&hop, Message::Response(up));
                }
            }
            return;
        };
        if entry.done {
            // A 2xx after the transaction ended (forking race): pass it on statelessly.
            if (200..300).contains(&code) {
                let hop = entry.reply_to.clone();
                self.send_to(&hop, Message::Response(up));
            }
            return;
        }
        if code < 200 {
            if code == 100 {
                return; // hop by hop: we sent our own
            }
            let actions = entry.txn.send_response(up, Instant::now());
            self.server_actions(server, actions);
            return;
        }
        let _ = client;
        if (200..300).contains(&code) || code >= 600 || entry.targets.is_empty() {
            if code >= 300 {
                // Keep the best final response of all tries (the lowest class wins, 6xx first).
                if let Some(best) = entry.best.take() {
                    if best.status < up.status && up.status < 600 {
                        up = best;
                    }
                }
            }
            self.respond(server, up);
            return;
        }
        // A failure with more targets left: remember it and try the next.
        let better = entry.best.as_ref().is_none_or(|b| up.status < b.status);
        if better {
            entry.best = Some(up);
        }
        self.try_next_target(server);
    }

    // ----- transactions -----

    fn respond_status(&mut self, key: &TransactionKey, status: u16, reason: &str) {
        let Some(req) = self.servers.get(key).map(|e| e.txn.request().clone()) else {
            return;
        };
        let tag = (status > 100).then(|| self.me_tag());
        let resp = reply(&req, status, Some(reason), tag.as_deref());
        self.respond(key, resp);
    }

    fn respond(&mut self, key: &TransactionKey, resp: Response) {
        if let (true, Some(gate)) = (resp.status >= 200, self.media.as_mut()) {
            // Media relay: a failed initial INVITE frees its relay session.
            gate.final_response(key, resp.status);
        }
        let final_ = resp.status >= 200;
        let code = resp.status;
        let Some(entry) = self.servers.get_mut(key) else {
            return;
        };
        if entry.done {
            return;
        }
        if final_ {
            entry.done = true;
            entry.request = None;
            entry.targets.clear();
            if entry.txn.request().method != Method::Invite && !entry.reply_to.reliable() {
                let hop = entry.reply_to.clone();
                let bytes = resp.to_bytes();
                self.servers.remove(key);
                self.count_response(code);
                self.send_bytes(&hop, bytes.clone());
                if self.completed.len() < MAX_COMPLETED {
                    self.completed.insert(key.clone(), Completed { bytes, hop });
                    let at = Instant::now() + TIMER_J;
                    self.push_timer(at, TimerRef::Completed(Key(key.clone())));
                }
                return;
            }
        }
        let actions = entry.txn.send_response(resp, Instant::now());
        self.count_response(code);
        self.server_actions(key, actions);
        self.linger_server(key);
    }

    /// An INVITE server transaction that sent its 2xx (Accepted) only absorbs retransmitted
    /// INVITEs until Timer L: it moves to the lean table.
    fn linger_server(&mut self, key: &TransactionKey) {
        let accepted = self
            .servers
            .get(key)
            .is_some_and(|e| e.txn.state() == ServerState::Accepted);
        if !accepted {
            return;
        }
        let Some(entry) = self.servers.remove(key) else {
            return;
        };
        if self.lingering_servers.len() < MAX_LINGERING {
            self.lingering_servers.insert(key.clone(), entry.reply_to);
            let at = Instant::now() + TIMER_J;
            self.push_timer(at, TimerRef::LingerServer(Key(key.clone())));
        }
    }

    /// A client transaction with its final response (an INVITE after a 2xx, RFC 6026
    /// Accepted; a non-INVITE in Completed) only absorbs retransmitted responses until Timer
    /// M or K: it moves to the lean table.
    fn linger_client(&mut self, key: &TransactionKey) {
        let wait = match self
            .clients
            .get(key)
            .map(|c| (c.txn.state(), key.method.clone()))
        {
            Some((ClientState::Accepted, _)) => TIMER_J,
            Some((ClientState::Completed, m)) if m != Method::Invite => TIMER_K,
            _ => return,
        };
        let Some(entry) = self.clients.remove(key) else {
            return;
        };
        if self.lingering_clients.len() < MAX_LINGERING {
            self.lingering_clients.insert(key.clone(), entry.server);
            let at = Instant::now() + wait;
            self.push_timer(at, TimerRef::LingerClient(Key(key.clone())));
        }
    }

    fn count_response(&self, code: u16) {
        let c = &self.counters;
        c.by_code
            .borrow_mut()
            .entry(code)
            .or_insert_with(|| {
                c.responses_sent.counter(
                    &format!("sip_responses_total{{code=\"{code}\"}}"),
                    "SIP responses sent, by code.",
                )
            })
            .inc();
    }

    /// Counts a request by method; methods outside RFC 3261 and its extensions count as
    /// `other`, so a flood of made-up methods cannot grow the metrics.
    fn count_request(&self, method: &Method) {
        let name = match method {
            Method::Other(_) => "other",
            m => m.as_str(),
        };
        let c = &self.counters;
        let mut map = c.by_method.borrow_mut();
        if let Some(m) = map.get(name) {
            m.inc();
            return;
        }
        let m = c.responses_sent.counter(
            &format!("sip_requests_by_method_total{{method=\"{name}\"}}"),
            "SIP requests received, by method.",
        );
        m.inc();
        map.insert(name.to_string(), m);
    }

    fn server_actions(&mut self, key: &TransactionKey, actions: Actions) {
        for a in actions {
            match a {
                Action::Send(m) => {
                    if let Some(hop) = self.servers.get(key).map(|e| e.reply_to.clone()) {
                        self.send_to(&hop, m);
                    }
                }
                Action::Terminated => {
                    self.servers.remove(key);
                    return;
                }
                Action::Deliver(_) | Action::Timeout | Action::TransportError => {}
            }
        }
        if let Some(t) = self.servers.get(key).and_then(|e| e.txn.next_timer()) {
            self.push_timer(t, TimerRef::Server(Key(key.clone())));
        }
    }

    fn client_actions(&mut self, key: &TransactionKey, actions: Actions) {
        for a in actions {
            match a {
                Action::Send(m) => {
                    if let Some(hop) = self.clients.get(key).map(|c| c.hop.clone()) {
                        self.send_to(&hop, m);
                    }
                }
                Action::Deliver(resp) => {
                    if let Some(server) = self.clients.get(key).and_then(|c| c.server.clone()) {
                        self.upstream(&server, key, resp);
                    }
                }
                Action::Timeout | Action::TransportError => {
                    let code = if matches!(a, Action::Timeout) {
                        408
                    } else {
                        503
                    };
                    if let Some((server, req)) = self
                        .clients
                        .get(key)
                        .and_then(|c| c.server.clone().map(|s| (s, c.txn.request().clone())))
                    {
                        let resp = reply(&req, code, None, Some(&self.me_tag()));
                        // Our own Via goes on top so that `upstream` strips it like any response.
                        self.upstream(&server, key, resp);
                    }
                }
                Action::Terminated => {
                    self.clients.remove(key);
                    return;
                }
            }
        }
        self.linger_client(key);
        if let Some(t) = self.clients.get(key).and_then(|c| c.txn.next_timer()) {
            self.push_timer(t, TimerRef::Client(Key(key.clone())));
        }
    }

    fn push_timer(&mut self, at: Instant, r: TimerRef) {
        self.seq += 1;
        self.timers.push(Reverse((at, self.seq, r)));
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, _, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, _, r))) = self.timers.pop() else {
                break;
            };
            match r {
                TimerRef::Server(Key(k)) => {
                    let due = self
                        .servers
                        .get(&k)
                        .and_then(|e| e.txn.next_timer())
                        .is_some_and(|t| t <= now);
                    if due {
                        let actions = self
                            .servers
                            .get_mut(&k)
                            .map(|e| e.txn.on_timer(now))
                            .unwrap_or_default();
                        self.server_actions(&k, actions);
                    }
                }
                TimerRef::Client(Key(k)) => {
                    let due = self
                        .clients
                        .get(&k)
                        .and_then(|c| c.txn.next_timer())
                        .is_some_and(|t| t <= now);
                    if due {
                        let actions = self
                            .clients
                            .get_mut(&k)
                            .map(|c| c.txn.on_timer(now))
                            .unwrap_or_default();
                        self.client_actions(&k, actions);
                    }
                }
                TimerRef::Completed(Key(k)) => {
                    self.completed.remove(&k);
                }
                TimerRef::LingerServer(Key(k)) => {
                    self.lingering_servers.remove(&k);
                }
                TimerRef::LingerClient(Key(k)) => {
                    self.lingering_clients.remove(&k);
                }
                TimerRef::TimerC(Key(k)) => {
                    let clients = self
                        .servers
                        .get(&k)
                        .filter(|e| !e.done)
                        .map(|e| e.clients.clone());
                    if let Some(clients) = clients {
                        for ck in clients {
                            self.cancel_client(&ck, now);
                        }
                        self.respond_status(&k, 408, "Request Timeout");
                    }
                }
            }
        }
    }

    // ----- sending -----

    fn reply_stateless(&mut self, req: &Request, to: &Hop, status: u16, reason: &str) {
        let tag = self.me_tag();
        let resp = reply(req, status, Some(reason), Some(&tag));
        self.reply_stateless_resp(resp, to);
    }

    fn reply_stateless_resp(&mut self, resp: Response, to: &Hop) {
        self.count_response(resp.status);
        self.send_to(to, Message::Response(resp));
    }

    fn send_to(&self, hop: &Hop, msg: Message) {
        self.send_bytes(hop, msg.to_bytes());
    }

    fn send_bytes(&self, hop: &Hop, bytes: Bytes) {
        match hop {
            Hop::Net {
                proto,
                remote,
                conn,
            } => {
                // Sent or queued now, never waited for: messages on one connection keep their
                // order (a 180 must not overtake the 200 sent right after it). The transports
                // count failures by reason.
                if let Err(e) = self.transports.send_now(*proto, *remote, *conn, bytes) {
                    debug!(peer = %remote, cause = %e, "SIP send failed");
                }
            }
            Hop::Peer { node, deliver } => {
                let env = SipEnvelope {
                    bytes: bytes.to_vec(),
                    deliver: deliver.clone(),
                    from: self.cfg.listen,
                };
                let fut = self.peers.send(node.clone(), env);
                let node = node.clone();
                tokio::spawn(async move {
                    if let Err(e) = fut.await {
                        debug!(peer = %node, cause = %e, "SIP to peer failed");
                    }
                });
            }
        }
    }
}

fn clients_empty(servers: &Map<TransactionKey, ServerEntry>, key: &TransactionKey) -> bool {
    servers.get(key).is_some_and(|e| e.clients.is_empty())
}

/// The address of a URI whose host is an IP address.
pub fn uri_addr(uri: &Uri) -> Option<SocketAddr> {
    let host = uri.maddr_or_host();
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    Some(SocketAddr::new(ip, uri.port_or_default()))
}

impl From<RegisterError> for LocateError {
    fn from(e: RegisterError) -> LocateError {
        let status = e.status();
        let reason = match &e {
            RegisterError::BadRequest(why) => why.clone(),
            RegisterError::OutOfOrder => "Out Of Order Register".to_string(),
            RegisterError::TooManyContacts { .. } => "Too Many Registered Contacts".to_string(),
            RegisterError::IntervalTooBrief { .. } => {
                crate::sip::response::reason_phrase(status).to_string()
            }
        };
        let min_expires = match e {
            RegisterError::IntervalTooBrief { min_expires } => Some(min_expires),
            _ => None,
        };
        LocateError::Rejected {
            status,
            reason,
            min_expires,
        }
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
