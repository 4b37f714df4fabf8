//! Node-to-node requests over QUIC with mutual TLS (UDP [`PEER_PORT`], 8002).
//!
//! Every node serves the peer port and calls other nodes on theirs. A caller checks that the
//! callee presents the `node` certificate of the member it meant to reach. The server accepts
//! `node` certificates for every service and `manager` certificates for the `provision`
//! service alone (the active manager pushes accounts to their owners); it refuses connections
//! from any other kind, and calls of a manager to another service (and says so in its log).
//!
//! # Wire format
//!
//! One bidirectional stream per call. The caller writes one frame and finishes its side:
//!
//! ```text
//! request  = len:u32 (big-endian) | service:u8 | body        len = 1 + |body|
//! response = len:u32 (big-endian) | status:u8  | body        len = 1 + |body|
//! ```
//!
//! `service` is a [`Service`] (appended only, never renumbered). `status` is 0 for an answer
//! (the body is the handler's answer), 1 for a refusal (the body is the reason in UTF-8: no
//! handler for the service, an unknown service) and 2 for an error (the body is the reason).
//! The bodies are opaque here; each service encodes its own messages (the store uses bincode
//! enums, see [`crate::store`]).
//!
//! Frame lengths are checked against a cap ([`PeerConfig::max_frame`], 1 MiB by default)
//! before anything is allocated. A frame over the cap or an empty frame closes that stream
//! with [`CloseCode::Oversized`] or [`CloseCode::Malformed`] (both directions: `STOP_SENDING`
//! and `RESET_STREAM`); the connection and the server go on serving.
//!
//! # Bounds
//!
//! - Incoming connections: at most [`PeerConfig::max_connections`] at once; past that a new
//!   connection is refused before its handshake (`incoming.refuse()`).
//! - Handshakes: each passes the server's [`HandshakeGate`] first (handshakes in progress,
//!   per source address, stateless retry under load; [`PeerNet::with_gate`]).
//! - Concurrent streams per connection: the endpoint's `max_bidi` (set by whoever built the
//!   endpoint with [`onehop_overlay::net::endpoint`]); QUIC makes the caller wait.
//! - Concurrent calls being handled over all connections: [`PeerConfig::max_streams`]; the
//!   server stops accepting streams until a permit frees, which QUIC's stream credit turns into
//!   backpressure on the callers.
//! - Bytes of requests being read or handled over all connections:
//!   [`PeerConfig::max_inflight_bytes`]. A stream's body is read only once its length (from
//!   the frame's prefix) fits under the bound; until then the stream waits unread, and QUIC's
//!   flow control makes its caller wait. Without it, `max_streams` calls of up to the frame
//!   cap each could hold a GiB of requests. Counted in `peer_inflight_bytes` (gauge) and
//!   `peer_inflight_waits_total` (calls that had to wait for room).
//! - Data received and not yet read: QUIC's stream window per stream (`quic.stream_window_bytes`),
//!   for at most the endpoint's `max_bidi` streams per connection.
//! - Outgoing: one cached connection per peer name; concurrent calls to a peer share it and
//!   wait for each other only while it is being (re)established. A handshake runs in a task
//!   of its own (at most [`PeerConfig::connect_timeout`], 2 s by default: one lost handshake
//!   packet costs quinn's first probe timeout, 1 s), so a call that gives up does not abandon
//!   it; at most one handshake per peer is under way.
//!
//! # Use
//!
//! ```ignore
//! let endpoint = net::endpoint(SocketAddr::new(ip, PEER_PORT), &creds, &crl, timing, Some(256))?;
//! let peer = PeerNet::new(endpoint, conns, PeerConfig::default());
//! peer.register(Service::Store, store.handler());
//! let server = peer.spawn_server(shutdown.clone());
//! let answer = peer.call(&PeerAddr { name, addr }, Service::Store, body, timeout).await?;
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::FutureExt;
use onehop_overlay::admission::{Admission, HandshakeGate};
use onehop_overlay::budget::ByteBudget;
use onehop_overlay::identity::Identity;
use onehop_overlay::logging::peer_label;
use onehop_overlay::metrics::{Metric, Metrics};
use onehop_overlay::net::{describe_handshake_error, peer_identity, ConnTable};
use onehop_overlay::status::{Kind, Member};
use onehop_overlay::wire::{read_frame_body, read_frame_len, CloseCode, MAX_FRAME};
use quinn::ConnectionError;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

/// The well-known peer port (UDP, QUIC).
pub const PEER_PORT: u16 = 8002;

/// Response status: the handler's answer follows.
const STATUS_OK: u8 = 0;
/// Response status: refused (the reason follows).
const STATUS_REFUSED: u8 = 1;
/// Response status: failed (the reason follows).
const STATUS_ERROR: u8 = 2;

/// The services reachable on the peer port.
///
/// Variants are only appended, never reordered or renumbered: the id is on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Service {
    /// The replicated store ([`crate::store`]).
    Store = 0,
    /// SIP forwarded between nodes.
    Sip = 1,
    /// Media relay sessions ([`crate::relay::control`]).
    Relay = 2,
    /// Provisioning data pushed by the active manager ([`crate::provision`]); the only
    /// service a `manager` certificate may call.
    Provision = 3,
}

impl Service {
    /// Every service, in wire order.
    pub const ALL: [Service; 4] = [
        Service::Store,
        Service::Sip,
        Service::Relay,
        Service::Provision,
    ];

    /// The service with this wire id, if it is one we know.
    pub fn from_u8(id: u8) -> Option<Service> {
        Service::ALL.into_iter().find(|s| *s as u8 == id)
    }

    /// A name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Store => "store",
            Service::Sip => "sip",
            Service::Relay => "relay",
            Service::Provision => "provision",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where to reach a node: its member name (checked against its certificate) and its peer
/// address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    /// The member name the callee's certificate must carry.
    pub name: String,
    /// Its peer endpoint (UDP).
    pub addr: SocketAddr,
}

impl PeerAddr {
    /// The peer address of a member of the status: its `peer` endpoint, or its address with
    /// [`PEER_PORT`] when it announces none.
    pub fn of_member(member: &Member) -> PeerAddr {
        PeerAddr {
            name: member.name.clone(),
            addr: member
                .endpoint("peer")
                .unwrap_or_else(|| SocketAddr::new(member.ip, PEER_PORT)),
        }
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.addr)
    }
}

/// Why a call failed. Each variant says what the caller may do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// No connection could be made (or the request could not be sent on one): the request
    /// was not delivered, so it may be retried anywhere.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// No answer in time: the request may or may not have been handled.
    #[error("no answer in time")]
    Timeout,
    /// The connection failed after the request was sent: it may or may not have been handled.
    #[error("connection lost: {0}")]
    Lost(String),
    /// The peer refused: wrong certificate on either side, or the service is not served there.
    /// Retrying the same peer will not help.
    #[error("refused: {0}")]
    Refused(String),
    /// The peer failed the request, or answered something that is not a valid answer.
    #[error("remote error: {0}")]
    Remote(String),
}

/// A service's request handler on the peer port.
pub trait PeerHandler: Send + Sync {
    /// Answers one request from `from` (the identity in its certificate, always a `node`).
    ///
    /// The future is dropped if the caller goes away; the answer is written back as it is.
    fn handle(&self, from: &Identity, body: Bytes) -> BoxFuture<'_, Bytes>;
}

/// The handlers of the services a node serves, shared between [`PeerNet`] and its server.
#[derive(Clone, Default)]
pub struct Handlers {
    inner: Arc<RwLock<HashMap<Service, Arc<dyn PeerHandler>>>>,
}

impl Handlers {
    /// Registers (or replaces) the handler of `service`.
    pub fn insert(&self, service: Service, handler: Arc<dyn PeerHandler>) {
        self.inner
            .write()
            .expect("handlers")
            .insert(service, handler);
    }

    /// The handler of `service`, if one is registered.
    pub fn get(&self, service: Service) -> Option<Arc<dyn PeerHandler>> {
        self.inner.read().expect("handlers").get(&service).cloned()
    }
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let services: Vec<Service> = self
            .inner
            .read()
            .expect("handlers")
            .keys()
            .copied()
            .collect();
        f.debug_struct("Handlers")
            .field("services", &services)
            .finish()
    }
}

/// Limits of the peer transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerConfig {
    /// Largest frame (request or response, without its 4-byte length) accepted.
    pub max_frame: usize,
    /// Most incoming connections served at once; more are refused before their handshake.
    pub max_connections: usize,
    /// Most incoming calls being handled at once, over all connections.
    pub max_streams: usize,
    /// Most bytes of incoming requests being read or handled at once, over all connections
    /// (at least `max_frame`, so that a request at the cap is served).
    pub max_inflight_bytes: usize,
    /// How long a connection attempt (handshake included) may take.
    pub connect_timeout: Duration,
}

/// Default [`PeerConfig::max_inflight_bytes`]: 64 MiB.
pub const DEFAULT_MAX_INFLIGHT_BYTES: usize = 64 << 20;

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            max_frame: MAX_FRAME,
            max_connections: 1024,
            max_streams: 1024,
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// The server's figures (when given a registry with [`PeerNet::count_in`]).
#[derive(Clone)]
struct Counters {
    inflight: Metric,
    waits: Metric,
}

/// What every served stream shares: the bound in bytes and the figures.
#[derive(Clone)]
struct Inflight {
    bytes: ByteBudget,
    counters: Option<Counters>,
}

impl Inflight {
    fn sample(&self) {
        if let Some(c) = &self.counters {
            c.inflight.set(self.bytes.used() as i64);
        }
    }
}

/// A request's room under the bound; the gauge follows it in and out.
struct Held<'a> {
    charge: Option<onehop_overlay::budget::Charge>,
    inflight: &'a Inflight,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        drop(self.charge.take());
        self.inflight.sample();
    }
}

/// A handshake under way, shared by every call that waits for it.
type Handshake = futures::future::Shared<BoxFuture<'static, Result<quinn::Connection, PeerError>>>;

/// The cached connection to one peer, or the handshake that will give it.
#[derive(Default)]
enum SlotState {
    /// Nothing: the next call connects.
    #[default]
    Empty,
    /// A handshake runs in a task of its own (numbered `id`), so that a call that gives up
    /// waiting (its own timeout) does not abandon it: the next call waits for the same one.
    Connecting {
        addr: SocketAddr,
        id: u64,
        done: Handshake,
    },
    /// A connection, until it closes or is replaced.
    Ready {
        addr: SocketAddr,
        conn: quinn::Connection,
    },
}

type Slot = Arc<Mutex<SlotState>>;

/// Numbers handshakes, so that a finished one fills its slot only if the slot still waits
/// for it.
static HANDSHAKES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The peer transport of a node: one quinn endpoint that calls other nodes (one cached
/// connection per peer) and serves the registered [`Handlers`].
pub struct PeerNet {
    endpoint: quinn::Endpoint,
    table: ConnTable,
    config: PeerConfig,
    handlers: Handlers,
    conns: Mutex<HashMap<String, Slot>>,
    gate: HandshakeGate,
    counters: std::sync::OnceLock<Counters>,
}

impl fmt::Debug for PeerNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerNet")
            .field("local", &self.endpoint.local_addr().ok())
            .field("handlers", &self.handlers)
            .finish_non_exhaustive()
    }
}

/// How one attempt on a connection failed.
enum Attempt {
    /// Before anything was sent: another connection may be tried.
    Unsent(PeerError),
    /// After the request was (maybe) sent.
    Failed(PeerError),
}

impl PeerNet {
    /// A transport over `endpoint` (bound to the node's peer address, built with
    /// [`onehop_overlay::net::endpoint`] with `Some(max_streams)` so that it also serves).
    /// Connections both ways are recorded in `table` so that revoked peers are cut off.
    pub fn new(endpoint: quinn::Endpoint, table: ConnTable, config: PeerConfig) -> Arc<PeerNet> {
        let gate = HandshakeGate::new(Admission::default(), &Metrics::default());
        PeerNet::with_gate(endpoint, table, config, gate)
    }

    /// [`PeerNet::new`] with the gate its server's handshakes pass (see
    /// [`onehop_overlay::admission`]).
    pub fn with_gate(
        endpoint: quinn::Endpoint,
        table: ConnTable,
        config: PeerConfig,
        gate: HandshakeGate,
    ) -> Arc<PeerNet> {
        Arc::new(PeerNet {
            endpoint,
            table,
            config,
            handlers: Handlers::default(),
            conns: Mutex::new(HashMap::new()),
            gate,
            counters: std::sync::OnceLock::new(),
        })
    }

    /// Counts the server's figures (`peer_inflight_bytes`, `peer_inflight_waits_total`) in
    /// `metrics`; call before [`PeerNet::spawn_server`].
    pub fn count_in(&self, metrics: &Metrics) {
        let _ = self.counters.set(Counters {
            inflight: metrics.gauge(
                "peer_inflight_bytes",
                "Bytes of node-to-node requests being read or handled.",
            ),
            waits: metrics.counter(
                "peer_inflight_waits_total",
                "Node-to-node requests whose reading waited for room under peer_inflight_bytes.",
            ),
        });
    }

    /// The limits in force.
    pub fn config(&self) -> &PeerConfig {
        &self.config
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The handlers served by [`PeerNet::spawn_server`].
    pub fn handlers(&self) -> &Handlers {
        &self.handlers
    }

    /// Registers (or replaces) the handler of `service`; takes effect for the next call
    /// served.
    pub fn register(&self, service: Service, handler: Arc<dyn PeerHandler>) {
        self.handlers.insert(service, handler);
    }

    /// Serves the registered handlers on the endpoint until `shutdown` is cancelled or the
    /// endpoint is closed. See [`serve`].
    pub fn spawn_server(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let inflight = Inflight {
            bytes: ByteBudget::new(self.config.max_inflight_bytes),
            counters: self.counters.get().cloned(),
        };
        tokio::spawn(serve_bounded(
            self.endpoint.clone(),
            self.handlers.clone(),
            self.config,
            self.table.clone(),
            shutdown,
            self.gate.clone(),
            inflight,
        ))
    }

    /// Closes the endpoint: every connection, both ways, ends at once and later calls fail.
    pub fn close(&self) {
        self.endpoint
            .close(CloseCode::Shutdown.varint(), b"shutting down");
        self.conns.lock().expect("peer conns").clear();
    }

    /// Forgets the cached connection to `name` (closing it), for example when the member left.
    /// A handshake under way with it is closed when it finishes.
    pub fn forget(&self, name: &str) {
        let slot = self.conns.lock().expect("peer conns").remove(name);
        if let Some(slot) = slot {
            let state = std::mem::take(&mut *slot.lock().expect("peer slot"));
            if let SlotState::Ready { conn, .. } = state {
                self.table.remove(&conn);
                conn.close(CloseCode::Normal.varint(), b"member gone");
            }
        }
    }

    /// Calls `service` on `peer` with `body` and returns its answer.
    ///
    /// One bidirectional stream per call, on the cached connection to `peer` (made or remade
    /// as needed). `timeout` bounds the whole call, connecting included.
    ///
    /// Cancel safety: cancelling drops the stream (the peer sees it reset); the connection
    /// stays cached.
    pub async fn call(
        &self,
        peer: &PeerAddr,
        service: Service,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, PeerError> {
        if body.len() + 1 > self.config.max_frame {
            return Err(PeerError::Refused(format!(
                "request of {} bytes exceeds the frame cap of {} bytes",
                body.len() + 1,
                self.config.max_frame
            )));
        }
        match tokio::time::timeout(timeout, self.call_inner(peer, service, &body)).await {
            Ok(r) => r,
            Err(_) => Err(PeerError::Timeout),
        }
    }

    async fn call_inner(
        &self,
        peer: &PeerAddr,
        service: Service,
        body: &Bytes,
    ) -> Result<Bytes, PeerError> {
        let (conn, cached) = self.connection(peer).await?;
        match self.exchange(&conn, service, body).await {
            Ok(answer) => Ok(answer),
            Err(Attempt::Unsent(e)) if cached => {
                // The cached connection had died: try once on a new one.
                debug!(peer = %peer_label(Some(&peer.name), peer.addr), cause = %e, "cached peer connection was dead; reconnecting");
                self.drop_conn(&peer.name, &conn);
                let (conn, _) = self.connection(peer).await?;
                self.exchange(&conn, service, body)
                    .await
                    .map_err(|a| self.failed(peer, &conn, a))
            }
            Err(a) => Err(self.failed(peer, &conn, a)),
        }
    }

    fn failed(&self, peer: &PeerAddr, conn: &quinn::Connection, a: Attempt) -> PeerError {
        let e = match a {
            Attempt::Unsent(e) | Attempt::Failed(e) => e,
        };
        if conn.close_reason().is_some() {
            self.drop_conn(&peer.name, conn);
        }
        e
    }

    fn drop_conn(&self, name: &str, conn: &quinn::Connection) {
        self.table.remove(conn);
        let slot = self.conns.lock().expect("peer conns").get(name).cloned();
        if let Some(slot) = slot {
            let mut state = slot.lock().expect("peer slot");
            if matches!(&*state, SlotState::Ready { conn: c, .. } if c.stable_id() == conn.stable_id())
            {
                *state = SlotState::Empty;
            }
        }
    }

    /// The connection to `peer`, and whether it came from the cache.
    ///
    /// A handshake runs in a task of its own and fills the slot when it finishes; every call
    /// meanwhile waits for that one handshake (each bounded by its own timeout). A call that
    /// gives up does not abandon it: on a lossy link, where a lost handshake packet is sent
    /// again only after quinn's probe timeout, the handshake still completes (within
    /// [`PeerConfig::connect_timeout`]) for the calls that follow.
    async fn connection(&self, peer: &PeerAddr) -> Result<(quinn::Connection, bool), PeerError> {
        let slot = {
            let mut conns = self.conns.lock().expect("peer conns");
            // The name is copied only for a peer not seen before, not on every call.
            match conns.get(&peer.name) {
                Some(slot) => slot.clone(),
                None => conns.entry(peer.name.clone()).or_default().clone(),
            }
        };
        let done = {
            let mut state = slot.lock().expect("peer slot");
            match &*state {
                SlotState::Ready { addr, conn }
                    if *addr == peer.addr && conn.close_reason().is_none() =>
                {
                    return Ok((conn.clone(), true));
                }
                SlotState::Connecting { addr, done, .. } if *addr == peer.addr => done.clone(),
                _ => {
                    if let SlotState::Ready { conn: old, .. } = std::mem::take(&mut *state) {
                        self.table.remove(&old);
                        old.close(CloseCode::Normal.varint(), b"replaced");
                    }
                    let id = HANDSHAKES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let task = tokio::spawn(handshake(
                        self.endpoint.clone(),
                        self.table.clone(),
                        self.config.connect_timeout,
                        peer.clone(),
                        Arc::downgrade(&slot),
                        id,
                    ));
                    let done: Handshake = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(PeerError::Unreachable(format!("handshake task ended: {e}")))
                        })
                    }
                    .boxed()
                    .shared();
                    *state = SlotState::Connecting {
                        addr: peer.addr,
                        id,
                        done: done.clone(),
                    };
                    done
                }
            }
        };
        done.await.map(|c| (c, false))
    }

    async fn exchange(
        &self,
        conn: &quinn::Connection,
        service: Service,
        body: &Bytes,
    ) -> Result<Bytes, Attempt> {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| Attempt::Unsent(connection_error(&e, true)))?;
        let mut head = [0u8; 5];
        head[..4].copy_from_slice(&((body.len() + 1) as u32).to_be_bytes());
        head[4] = service as u8;
        let mut chunks = [Bytes::copy_from_slice(&head), body.clone()];
        send.write_all_chunks(&mut chunks)
            .await
            .map_err(|e| Attempt::Failed(write_error(e)))?;
        let _ = send.finish();
        let answer = recv
            .read_to_end(self.config.max_frame + 4)
            .await
            .map_err(|e| Attempt::Failed(read_error(e)))?;
        parse_response(answer, self.config.max_frame).map_err(Attempt::Failed)
    }
}

/// One handshake with `peer` (in a task of its own, see [`PeerNet::connection`]): the
/// connection, checked to carry `peer`'s node certificate, and recorded in `slot` (number
/// `id`) if the slot still waits for it. A slot forgotten or moved on meanwhile gets nothing:
/// the connection is closed.
async fn handshake(
    endpoint: quinn::Endpoint,
    table: ConnTable,
    connect_timeout: Duration,
    peer: PeerAddr,
    slot: std::sync::Weak<Mutex<SlotState>>,
    id: u64,
) -> Result<quinn::Connection, PeerError> {
    let result = connect(&endpoint, &table, connect_timeout, &peer).await;
    let forgotten = || PeerError::Unreachable(format!("{peer}: forgotten while connecting"));
    let Some(slot) = slot.upgrade() else {
        if let Ok(conn) = &result {
            table.remove(conn);
            conn.close(CloseCode::Normal.varint(), b"member gone");
        }
        return Err(forgotten());
    };
    let mut state = slot.lock().expect("peer slot");
    let waited = matches!(&*state, SlotState::Connecting { id: i, .. } if *i == id);
    match (&result, waited) {
        (Ok(conn), true) => {
            *state = SlotState::Ready {
                addr: peer.addr,
                conn: conn.clone(),
            }
        }
        (Err(_), true) => *state = SlotState::Empty,
        (Ok(conn), false) => {
            table.remove(conn);
            conn.close(CloseCode::Normal.varint(), b"member gone");
            return Err(forgotten());
        }
        (Err(_), false) => {}
    }
    result
}

async fn connect(
    endpoint: &quinn::Endpoint,
    table: &ConnTable,
    connect_timeout: Duration,
    peer: &PeerAddr,
) -> Result<quinn::Connection, PeerError> {
    let connecting = endpoint
        .connect(peer.addr, &peer.addr.ip().to_string())
        .map_err(|e| PeerError::Unreachable(format!("{peer}: {e}")))?;
    let conn = match tokio::time::timeout(connect_timeout, connecting).await {
        Err(_) => {
            return Err(PeerError::Unreachable(format!(
                "{peer} did not answer within {:?}",
                connect_timeout
            )))
        }
        Ok(Err(e)) => {
            return Err(match e {
                ConnectionError::TimedOut
                | ConnectionError::Reset
                | ConnectionError::LocallyClosed => PeerError::Unreachable(format!("{peer}: {e}")),
                e => PeerError::Refused(format!("{peer}: {}", describe_handshake_error(&e))),
            })
        }
        Ok(Ok(c)) => c,
    };
    let id = match peer_identity(&conn) {
        Ok(id) => id,
        Err(e) => {
            conn.close(CloseCode::Forbidden.varint(), b"unusable certificate");
            return Err(PeerError::Refused(format!("{peer}: {e}")));
        }
    };
    if id.kind != Kind::Node || id.name != peer.name {
        conn.close(CloseCode::Forbidden.varint(), b"not the expected node");
        return Err(PeerError::Refused(format!(
            "{} presented the {} certificate of {}, expected the node certificate of {}",
            peer.addr, id.kind, id.name, peer.name
        )));
    }
    table.insert(id, conn.clone());
    Ok(conn)
}

fn connection_error(e: &ConnectionError, unsent: bool) -> PeerError {
    match e {
        ConnectionError::ApplicationClosed(close)
            if CloseCode::from_varint(close.error_code) == Some(CloseCode::Forbidden) =>
        {
            PeerError::Refused(format!(
                "peer closed the connection: {}",
                String::from_utf8_lossy(&close.reason)
            ))
        }
        ConnectionError::ConnectionClosed(_) | ConnectionError::TransportError(_) => {
            PeerError::Refused(describe_handshake_error(e))
        }
        e if unsent => PeerError::Unreachable(e.to_string()),
        e => PeerError::Lost(e.to_string()),
    }
}

fn write_error(e: quinn::WriteError) -> PeerError {
    match e {
        quinn::WriteError::ConnectionLost(c) => connection_error(&c, false),
        quinn::WriteError::Stopped(code) => {
            PeerError::Remote(format!("peer stopped the stream ({})", code_name(code)))
        }
        e => PeerError::Lost(e.to_string()),
    }
}

fn read_error(e: quinn::ReadToEndError) -> PeerError {
    match e {
        quinn::ReadToEndError::TooLong => PeerError::Remote("answer over the frame cap".into()),
        quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(c)) => {
            connection_error(&c, false)
        }
        quinn::ReadToEndError::Read(quinn::ReadError::Reset(code)) => {
            PeerError::Remote(format!("peer reset the stream ({})", code_name(code)))
        }
        quinn::ReadToEndError::Read(e) => PeerError::Lost(e.to_string()),
    }
}

fn code_name(code: quinn::VarInt) -> String {
    match CloseCode::from_varint(code) {
        Some(c) => format!("{c:?}").to_lowercase(),
        None => format!("code {code}"),
    }
}

fn parse_response(frame: Vec<u8>, max: usize) -> Result<Bytes, PeerError> {
    if frame.len() < 5 {
        return Err(PeerError::Remote(format!(
            "answer of {} bytes is too short",
            frame.len()
        )));
    }
    let len = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
    if len > max || len != frame.len() - 4 {
        return Err(PeerError::Remote(format!(
            "answer frame announces {len} bytes but carries {}",
            frame.len() - 4
        )));
    }
    let status = frame[4];
    let body = Bytes::from(frame).slice(5..);
    match status {
        STATUS_OK => Ok(body),
        STATUS_REFUSED => Err(PeerError::Refused(
            String::from_utf8_lossy(&body).into_owned(),
        )),
        STATUS_ERROR => Err(PeerError::Remote(
            String::from_utf8_lossy(&body).into_owned(),
        )),
        other => Err(PeerError::Remote(format!("unknown answer status {other}"))),
    }
}

fn response_frame(status: u8, body: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + body.len());
    buf.put_u32((body.len() + 1) as u32);
    buf.put_u8(status);
    buf.extend_from_slice(body);
    buf.freeze()
}

/// Serves `handlers` on `endpoint` until `shutdown` is cancelled or the endpoint closes.
///
/// Accepts only peers with a `node` certificate (others are refused with
/// [`CloseCode::Forbidden`] and a log line naming them). Connections are recorded in `table`
/// for revocation. Bounds: see the module documentation.
pub async fn serve(
    endpoint: quinn::Endpoint,
    handlers: Handlers,
    config: PeerConfig,
    table: ConnTable,
    shutdown: CancellationToken,
) {
    let gate = HandshakeGate::new(Admission::default(), &Metrics::default());
    let inflight = Inflight {
        bytes: ByteBudget::new(config.max_inflight_bytes),
        counters: None,
    };
    serve_bounded(endpoint, handlers, config, table, shutdown, gate, inflight).await
}

/// Handshake refusals logged at WARN: at most 20 per 10 s, whatever a storm sends.
static REFUSALS: std::sync::LazyLock<onehop_overlay::admission::LogBudget> =
    std::sync::LazyLock::new(onehop_overlay::admission::handshake_log_budget);

async fn serve_bounded(
    endpoint: quinn::Endpoint,
    handlers: Handlers,
    config: PeerConfig,
    table: ConnTable,
    shutdown: CancellationToken,
    gate: HandshakeGate,
    inflight: Inflight,
) {
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let streams = Arc::new(Semaphore::new(config.max_streams));
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            warn!(peer = %incoming.remote_address(), max = config.max_connections, "refused peer connection: too many connections");
            incoming.refuse();
            continue;
        };
        let Some((incoming, handshake)) = gate.screen(incoming) else {
            continue;
        };
        let handlers = handlers.clone();
        let table = table.clone();
        let streams = streams.clone();
        let shutdown = shutdown.clone();
        let inflight = inflight.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let remote = incoming.remote_address();
            let handshake = tokio::time::timeout(
                config.connect_timeout,
                HandshakeGate::handshake(incoming, handshake),
            );
            let conn = match handshake.await {
                Ok(Ok(c)) => c,
                failed => {
                    let why = match failed {
                        Ok(Err(why)) => why,
                        _ => "handshake timed out".to_string(),
                    };
                    match REFUSALS.allow(std::time::Instant::now()) {
                        Some(0) => warn!(peer = %remote, "refused peer connection: {why}"),
                        Some(n) => {
                            warn!(peer = %remote, suppressed = n, "refused peer connection: {why} ({n} more refusals not logged)")
                        }
                        None => debug!(peer = %remote, "refused peer connection: {why}"),
                    }
                    return;
                }
            };
            let id = match peer_identity(&conn) {
                Ok(id) if id.kind == Kind::Node || id.kind == Kind::Manager => id,
                Ok(id) => {
                    warn!(peer = %peer_label(Some(&id.name), remote), peer_kind = %id.kind, "refused peer connection: a {} certificate; only node (and, for provisioning, manager) certificates may use the peer port", id.kind);
                    conn.close(
                        CloseCode::Forbidden.varint(),
                        b"only node and manager certificates may use the peer port",
                    );
                    return;
                }
                Err(e) => {
                    warn!(peer = %remote, cause = %e, "refused peer connection: unusable certificate");
                    conn.close(CloseCode::Forbidden.varint(), b"unusable certificate");
                    return;
                }
            };
            let span = tracing::info_span!("peer", peer = %peer_label(Some(&id.name), remote));
            table.insert(id.clone(), conn.clone());
            serve_connection(
                &conn,
                Arc::new(id),
                &handlers,
                config,
                &streams,
                &shutdown,
                &inflight,
            )
            .instrument(span)
            .await;
            table.remove(&conn);
        });
    }
}

async fn serve_connection(
    conn: &quinn::Connection,
    id: Arc<Identity>,
    handlers: &Handlers,
    config: PeerConfig,
    streams: &Arc<Semaphore>,
    shutdown: &CancellationToken,
    inflight: &Inflight,
) {
    debug!("peer connection up");
    loop {
        // Take a permit before accepting: past the bound, callers wait on QUIC stream credit.
        let permit = tokio::select! {
            p = streams.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.cancelled() => return,
        };
        let (send, recv) = tokio::select! {
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(e) => {
                    debug!(cause = %e, "peer connection ended");
                    return;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let id = id.clone();
        let handlers = handlers.clone();
        let conn = conn.clone();
        let shutdown = shutdown.clone();
        let inflight = inflight.clone();
        tokio::spawn(
            async move {
                let _permit = permit;
                // A call ends with its connection or the server: its handler is dropped.
                tokio::select! {
                    _ = serve_stream(send, recv, &id, &handlers, config.max_frame, &inflight) => {}
                    _ = conn.closed() => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            .in_current_span(),
        );
    }
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    from: &Identity,
    handlers: &Handlers,
    max_frame: usize,
    inflight: &Inflight,
) {
    let close = |send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, code: CloseCode| {
        let _ = recv.stop(code.varint());
        let _ = send.reset(code.varint());
    };
    let len = match read_frame_len(&mut recv, max_frame).await {
        Ok(Some(len)) => len,
        Ok(None) => return,
        Err(e) => {
            warn!(cause = %e, "closing peer stream: bad frame");
            close(&mut send, &mut recv, e.close_code());
            return;
        }
    };
    // Room for the body before reading it; held until the answer is written.
    let charge = match inflight.bytes.try_take(len) {
        Some(c) => c,
        None => {
            if let Some(c) = &inflight.counters {
                c.waits.inc();
            }
            inflight.bytes.take(len).await
        }
    };
    let _held = Held {
        charge: Some(charge),
        inflight,
    };
    inflight.sample();
    let body = match read_frame_body(&mut recv, len).await {
        Ok(b) => b,
        Err(e) => {
            warn!(cause = %e, "closing peer stream: bad frame");
            close(&mut send, &mut recv, e.close_code());
            return;
        }
    };
    let Some((&id, _)) = body.split_first() else {
        warn!("closing peer stream: empty frame");
        close(&mut send, &mut recv, CloseCode::Malformed);
        return;
    };
    let answer = match Service::from_u8(id) {
        None => response_frame(STATUS_REFUSED, format!("unknown service {id}").as_bytes()),
        Some(service) if from.kind != Kind::Node && service != Service::Provision => {
            warn!(%service, peer_kind = %from.kind, "refused a peer call: the service is for nodes only");
            response_frame(
                STATUS_REFUSED,
                format!("service {service} is for nodes only").as_bytes(),
            )
        }
        Some(service) => match handlers.get(service) {
            None => response_frame(
                STATUS_REFUSED,
                format!("service {service} is not served here").as_bytes(),
            ),
            Some(handler) => {
                let answer = handler.handle(from, Bytes::from(body).slice(1..)).await;
                if answer.len() + 1 > max_frame {
                    warn!(%service, len = answer.len(), "peer answer over the frame cap");
                    response_frame(STATUS_ERROR, b"answer over the frame cap")
                } else {
                    response_frame(STATUS_OK, &answer)
                }
            }
        },
    };
    if let Err(e) = send.write_all(&answer).await {
        debug!(cause = %e, "peer went away before its answer");
        return;
    }
    // A finished stream is still delivered after it is dropped.
    let _ = send.finish();
}
