//! The stateful proxy and registrar front of RFC 3261 section 16 as a state machine: no
//! socket, clock, task or channel in it (in the style of quinn-proto's `Connection`).
//!
//! # Call order
//! The runtime (the node) owns one [`Engine`] per worker and, for each thing that happens:
//! 1. calls [`Engine::handle`] with an [`Input`] and the current time, or
//!    [`Engine::handle_timeout`] when the deadline from [`Engine::poll_timeout`] has passed;
//! 2. drains [`Engine::poll_output`] and carries out every [`Output`]: send bytes to a
//!    [`Hop`], ask the registrar to apply a REGISTER or look up an AOR, look up where a
//!    telephone number is routed, resolve another domain by RFC 3263. Each answer comes back
//!    later as an [`Input`] with the same
//!    transaction key; a message that could not be sent comes back as
//!    [`Input::SendFailed`], which the client transaction takes as a transport error
//!    (RFC 3261 8.1.3.1: the proxy answers 503 upstream at once);
//! 3. sleeps until the next [`Engine::poll_timeout`] or input.
//!
//! What the engine needs to know of the world outside it (which node serves SIP at an
//! address, whether a node is live, whether a TCP flow is still open) it asks through
//! [`Env`], a read-only view the runtime supplies. SDP rewriting for media relays is a
//! [`MediaHook`] the runtime plugs in; [`NoMedia`] is the hook that does nothing.
//!
//! # Tables
//! Every table is bounded: past `max_transactions` or `max_pending` new requests are
//! answered 503 (requests inside a dialog, such as a BYE, have a reserve of a quarter more,
//! so calls already set up can end; an ACK is never refused). Transactions that have done
//! their work and only wait to absorb retransmissions (an INVITE after its 2xx, RFC 6026's
//! Accepted state, for 32 s; a non-INVITE client transaction after its final response,
//! Timer K) move to lean tables that keep a key and where to send, and do not count against
//! `max_transactions`.
//!
//! # Layout
//! - this file: the types of the interface and the [`Engine`]'s entry points.
//! - `auth.rs`: who may use the farm: digest challenges (401, 407), the check of
//!   credentials split with the subscriber's registrar, and the relaying rules (403).
//! - `requests.rs`: requests (routing, REGISTER, lookups, targets, CANCEL).
//! - `numbers.rs`: requests routed by a telephone number, and an account's own number as its
//!   alias (registration, caller ID).
//! - `responses.rs`: responses, transaction actions, timers and sending.
//! - `tests*.rs`: a test per proxy behaviour, with no sockets (harness in `tests.rs`).

mod auth;
mod numbers;
mod requests;
mod responses;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_auth;
#[cfg(test)]
mod tests_calls;
#[cfg(test)]
mod tests_media;
#[cfg(test)]
mod tests_numbers;
#[cfg(test)]
mod tests_routing;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::numbers::DialPlans;
use crate::proxy::LocalAddrs;
use crate::registrar::{Binding, Flow, RegisterError, RegisterInfo, RegistrarPolicy, Transport};
use crate::transaction::{ClientTransaction, ServerTransaction, TransactionKey};
use crate::{parse_with, Limits, Message, Method, Request, Response, Uri};

pub use onehop_overlay::provision::{DialPlan, NumberRoute};

/// The engine's tables: keyed by what arrives from the network (Via branches), so with a
/// per-process random seed (foldhash), which is several times cheaper than std's SipHash.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Where a message goes (or came from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hop {
    /// A SIP client or server on the network.
    Net {
        /// Transport protocol.
        proto: Transport,
        /// Its address.
        remote: SocketAddr,
        /// The TCP or TLS flow to use, 0 for none.
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
    /// Whether the transactions over this hop rely on the transport and do not retransmit:
    /// TCP and TLS. UDP is not, and neither is the hop to another node: QUIC delivers what
    /// it accepts, but a batch queued for a node can still fail after it left the worker (a
    /// connection found dead, a node frozen and thawed), and a response has no receipt to
    /// report that. So requests between nodes are retransmitted on the UDP timers (A, E),
    /// and the receiving node's transactions absorb the copies and repeat their last
    /// response, as SIP over UDP does.
    pub fn reliable(&self) -> bool {
        matches!(
            self,
            Hop::Net {
                proto: Transport::Tcp | Transport::Tls,
                ..
            }
        )
    }
}

impl std::fmt::Display for Hop {
    /// For logs (`peer = ...`): the client's address, or the node's name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hop::Net { remote, .. } => write!(f, "{remote}"),
            Hop::Peer { node, .. } => f.write_str(node),
        }
    }
}

/// Why a registration or a lookup failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocateError {
    /// The REGISTER breaks a binding rule: answer with this status and reason.
    Rejected {
        /// SIP status.
        status: u16,
        /// Reason phrase.
        reason: String,
        /// Min-Expires to add (423).
        min_expires: Option<u32>,
    },
    /// The registrar ring cannot be reached now: answer 503 with Retry-After.
    Unavailable(String),
    /// The credentials were not accepted (a wrong password, an unknown or unprovisioned
    /// user, a replayed nonce count): answer 401 or 407 with a fresh challenge, with
    /// `stale=true` when `stale` (the client proved its password; only its nonce was
    /// unusable).
    Unauthorized {
        /// The nonce (or its count) was unusable, the response right.
        stale: bool,
    },
}

impl From<RegisterError> for LocateError {
    fn from(e: RegisterError) -> LocateError {
        let status = e.status();
        let reason = match &e {
            RegisterError::BadRequest(why) => why.clone(),
            RegisterError::OutOfOrder => "Out Of Order Register".to_string(),
            RegisterError::TooManyContacts { .. } => "Too Many Registered Contacts".to_string(),
            _ => crate::response::reason_phrase(status).to_string(),
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

/// What the engine is told.
pub enum Input<D> {
    /// A message from a client or server on the network, or from another node.
    Message {
        /// The message as received.
        bytes: Bytes,
        /// Where it came from.
        from: Hop,
        /// Its source address (network messages; stamped as `received`/`rport`).
        source: Option<SocketAddr>,
        /// From another node: deliver this request to a client flow we hold.
        deliver: Option<Flow>,
    },
    /// The registrar applied a REGISTER ([`Output::Register`]); `at_ms` is the wall clock
    /// (ms since the Unix epoch) when the answer came, for the Contact expiries.
    Registered {
        /// The REGISTER's server transaction.
        key: TransactionKey,
        /// The bindings now held, or why not.
        result: Result<Vec<Binding>, LocateError>,
        /// Wall-clock milliseconds now.
        at_ms: u64,
    },
    /// The subscriber's registrar checked credentials ([`Output::Authenticate`]).
    Authenticated {
        /// The request's server transaction.
        key: TransactionKey,
        /// `Ok` when the credentials are right; why not otherwise.
        result: Result<(), LocateError>,
    },
    /// A lookup answered ([`Output::Lookup`]).
    Located {
        /// The request's server transaction.
        key: TransactionKey,
        /// The AOR's live bindings, or why none could be had.
        result: Result<Vec<Binding>, LocateError>,
    },
    /// An RFC 3263 resolution answered ([`Output::Resolve`]).
    Resolved {
        /// The request's server transaction.
        key: TransactionKey,
        /// The servers to try, in order.
        result: Result<Vec<(Transport, SocketAddr)>, String>,
    },
    /// A number's routing was looked up ([`Output::RouteNumber`]).
    NumberRouted {
        /// The request's server transaction.
        key: TransactionKey,
        /// Where calls to the number go (`None`: it is not routed), or why it could not be
        /// learnt.
        result: Result<Option<NumberRoute>, LocateError>,
    },
    /// A request sent by this client transaction could not be delivered to its next hop
    /// (a full queue, an unknown or unreachable node, a refused connection).
    SendFailed {
        /// The client transaction.
        client: TransactionKey,
    },
    /// The media hook finished something it started ([`MediaHook::done`]).
    Media(D),
}

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send `bytes` to `hop`. When `client` is set, the bytes are a request of that client
    /// transaction: a failure to send them is reported with [`Input::SendFailed`].
    Send {
        /// Where to.
        hop: Hop,
        /// The serialised message.
        bytes: Bytes,
        /// The client transaction that sent it, if any.
        client: Option<TransactionKey>,
    },
    /// Apply a REGISTER at the AOR's registrar; answer with [`Input::Registered`].
    Register {
        /// The REGISTER's server transaction.
        key: TransactionKey,
        /// What the REGISTER asks.
        info: RegisterInfo,
        /// The registrar's rules.
        policy: RegistrarPolicy,
        /// The credentials to check against the AOR's account before applying it, when
        /// the engine authenticates.
        auth: Option<Box<AuthCheck>>,
    },
    /// Check credentials at the registrar of `aor` (whose account holds the HA1s and
    /// the nonce counts); answer with [`Input::Authenticated`].
    Authenticate {
        /// The request's server transaction.
        key: TransactionKey,
        /// The canonical AOR the credentials claim (the From of the request).
        aor: String,
        /// What to check.
        auth: Box<AuthCheck>,
    },
    /// Look up the live bindings of `aor`; answer with [`Input::Located`].
    Lookup {
        /// The request's server transaction.
        key: TransactionKey,
        /// The canonical AOR.
        aor: String,
    },
    /// Look up where the E.164 number `number` (`+15550100`) is routed, in the farm's number
    /// registry; answer with [`Input::NumberRouted`].
    RouteNumber {
        /// The request's server transaction.
        key: TransactionKey,
        /// `+` and the digits.
        number: String,
    },
    /// Locate the SIP servers of another domain (RFC 3263); answer with
    /// [`Input::Resolved`].
    Resolve {
        /// The request's server transaction.
        key: TransactionKey,
        /// The host to resolve.
        host: String,
        /// The port, when the URI gave one.
        port: Option<u16>,
        /// The transport, when the URI gave one.
        transport: Option<Transport>,
    },
}

/// What the engine asks of the world around it. Read-only queries, answered from the
/// runtime's current view (the network status, the open flows).
pub trait Env {
    /// The node (other than us) whose SIP service is at `addr`, if any.
    fn node_at(&self, addr: SocketAddr) -> Option<String>;
    /// Whether node `name` is live with the `sip_proxy` role.
    fn node_is_live(&self, name: &str) -> bool;
    /// Whether the TCP or TLS flow `conn` is still open here.
    fn has_flow(&self, conn: u64) -> bool;
    /// Whether a request from `ip` may try authenticating now (see
    /// [`crate::digest::FailureGuard`]); a slowed address's attempt is recorded. The one
    /// query that may change what the environment holds. Open by default.
    fn admit(&self, ip: IpAddr) -> crate::digest::Admit {
        let _ = ip;
        crate::digest::Admit::Open
    }
    /// A request from `ip` failed authentication (counted against it). Nothing by default.
    fn auth_failed(&self, ip: IpAddr) {
        let _ = ip;
    }
}

/// Credentials for the subscriber's registrar to check (the second half of
/// [`crate::digest::verify_at_owner`]); the node that received the request already checked
/// the realm, the user against the AOR, and the nonce.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuthCheck {
    /// The credentials as parsed.
    pub credentials: crate::digest::Credentials,
    /// The request's method (it enters the digest).
    pub method: String,
    /// When the nonce was issued (wall-clock ms); `None` when it had expired.
    pub issued_ms: Option<u64>,
    /// The nonce lifetime, in milliseconds.
    pub lifetime_ms: u64,
}

/// Who may use the farm's SIP service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Nobody is challenged and anything is relayed: for tests and closed networks only.
    Off,
    /// RFC 3261 section 22 digest: REGISTERs for our domains and requests from our domains
    /// are challenged; requests from elsewhere reach only our users (403 otherwise).
    Digest,
}

/// A message held by the media hook while its call waits for a relay.
pub struct Held {
    /// The message (its SDP rewritten once the relay answered).
    pub msg: Message,
    /// Where it came from.
    pub from: Hop,
    /// Its source address.
    pub source: Option<SocketAddr>,
}

/// What the engine does when the media hook finished something.
pub enum Resume {
    /// Nothing.
    Nothing,
    /// Handle these messages, in order, as if they had just arrived.
    Dispatch(Vec<Held>),
    /// Forward this INVITE server transaction's request (replaced by the one given, if any).
    Forward(TransactionKey, Option<Request>),
}

/// SDP rewriting for media relays, plugged into the engine by the runtime. The hook may
/// hold a message and start work of its own; it reports the work's end through
/// [`Input::Media`], which the engine hands to [`MediaHook::done`].
pub trait MediaHook {
    /// What the hook's work reports when it ends.
    type Done;
    /// A message from `from`: returns it when the engine handles it now, `None` when the
    /// hook holds it (it comes back through [`Resume::Dispatch`]) or dropped it.
    fn inbound(&mut self, msg: Message, from: &Hop, source: Option<SocketAddr>) -> Option<Message>;
    /// An initial INVITE entering the farm from `from` (the network) is about to be
    /// forwarded: `true` when the hook holds it (it goes on with [`Resume::Forward`]).
    fn invite_out(&mut self, key: &TransactionKey, req: &Request, from: &Hop) -> bool;
    /// The server transaction `key` sends its final response `status`.
    fn final_response(&mut self, key: &TransactionKey, status: u16);
    /// Work the hook started ended: what the engine does next.
    fn done(&mut self, done: Self::Done) -> Resume;
}

/// The media hook that relays nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoMedia;

impl MediaHook for NoMedia {
    type Done = std::convert::Infallible;
    fn inbound(&mut self, msg: Message, _: &Hop, _: Option<SocketAddr>) -> Option<Message> {
        Some(msg)
    }
    fn invite_out(&mut self, _: &TransactionKey, _: &Request, _: &Hop) -> bool {
        false
    }
    fn final_response(&mut self, _: &TransactionKey, _: u16) {}
    fn done(&mut self, done: Self::Done) -> Resume {
        match done {}
    }
}

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This node's name (flows registered here carry it).
    pub node: String,
    /// The SIP domain served (requests for it are routed by registration).
    pub domain: String,
    /// Where SIP listens (the node's address and SIP port).
    pub listen: SocketAddr,
    /// The port of SIP over TLS, when it is served.
    pub tls_port: Option<u16>,
    /// The To tag of the responses this node makes.
    pub tag: String,
    /// The registrar's expiry limits.
    pub policy: RegistrarPolicy,
    /// Most requests waiting for the registrar, a lookup or a resolution at once; beyond,
    /// 503.
    pub max_pending: usize,
    /// Most live transactions; beyond, new requests get 503.
    pub max_transactions: usize,
    /// Timer C: an INVITE proxied without a final response for this long is cancelled (408).
    pub timer_c: Duration,
    /// Largest SIP message accepted (513 beyond).
    pub max_message: usize,
    /// Most bytes of answers kept for the retransmissions of completed non-INVITE
    /// transactions over UDP (until Timer J), counted with their keys; beyond (and beyond
    /// a million of them), a retransmission is processed again.
    pub max_completed_bytes: usize,
    /// Seconds in the Retry-After of a 503 (overload, an unreachable next hop).
    pub retry_after: u32,
    /// Who is challenged and what is relayed.
    pub auth: AuthMode,
    /// How long a nonce stays valid, in milliseconds.
    pub nonce_lifetime_ms: u64,
    /// The digest algorithms challenged with, in the order the challenges are sent (the
    /// client takes the first it supports); credentials with another are challenged again.
    pub algorithms: Vec<crate::digest::Algorithm>,
    /// Mixed into the nonces this engine issues, with a counter, so that nonces differ
    /// (supply a random value per engine).
    pub seed: u64,
}

impl EngineConfig {
    /// Defaults for node `node` serving `domain` on `listen`.
    pub fn new(node: &str, domain: &str, listen: SocketAddr) -> EngineConfig {
        EngineConfig {
            node: node.to_string(),
            domain: domain.to_ascii_lowercase(),
            listen,
            tls_port: None,
            tag: "oh1".into(),
            policy: RegistrarPolicy::default(),
            max_pending: 10_000,
            max_transactions: 200_000,
            timer_c: Duration::from_secs(180),
            max_message: 65_535,
            max_completed_bytes: DEFAULT_MAX_COMPLETED_BYTES,
            retry_after: 5,
            auth: AuthMode::Off,
            nonce_lifetime_ms: crate::digest::DEFAULT_NONCE_LIFETIME_MS,
            algorithms: crate::digest::PREFERENCE.to_vec(),
            seed: 0,
        }
    }
}

/// Counts since the last [`Engine::take_counts`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Requests received (well-formed).
    pub requests: u64,
    /// Requests by method (`other` for methods outside RFC 3261 and its extensions).
    pub by_method: Vec<(&'static str, u64)>,
    /// Responses sent by this node or forwarded, by code.
    pub by_code: Vec<(u16, u64)>,
    /// REGISTERs answered 200.
    pub registered: u64,
    /// Requests refused with 503 for overload.
    pub overload: u64,
    /// Malformed messages received.
    pub malformed: u64,
    /// Requests answered 503 because their next hop could not be reached.
    pub unreachable: u64,
    /// Response times: per request given a final response (sent by this node or forwarded),
    /// its method (`other` as in `by_method`) and the time from its arrival at the engine to
    /// that response; at most [`MAX_RESPONSE_TIMES`] between two [`Engine::take_counts`].
    pub response_times: Vec<(&'static str, Duration)>,
}

/// Most response times [`Counts`] keeps between two [`Engine::take_counts`] (the node takes
/// them after every batch of events); later ones are not kept.
pub const MAX_RESPONSE_TIMES: usize = 4096;

impl Counts {
    fn method(&mut self, m: &Method) {
        let name = m.name().unwrap_or("other");
        match self.by_method.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => self.by_method.push((name, 1)),
        }
    }

    fn response_time(&mut self, m: &Method, took: Duration) {
        if self.response_times.len() < MAX_RESPONSE_TIMES {
            self.response_times
                .push((m.name().unwrap_or("other"), took));
        }
    }

    fn code(&mut self, code: u16) {
        match self.by_code.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => self.by_code.push((code, 1)),
        }
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
    /// When Timer C fires for the INVITE forwarded now: set when a branch starts, moved on
    /// by each provisional response (16.7 step 2). Earlier heap entries are stale.
    timer_c: Option<Instant>,
    /// Waiting for the subscriber's registrar to check credentials.
    auth: Option<auth::AuthWait>,
    /// Waiting for a number's routing, and what for.
    number: Option<numbers::NumberWait>,
    /// How a lookup that finds no binding is answered (`None`: 404 Not Found).
    empty_lookup: Option<(u16, &'static str)>,
    /// When the request reached the engine, for its response time.
    arrived: Instant,
}

struct ClientEntry {
    txn: ClientTransaction,
    server: Option<TransactionKey>,
    hop: Hop,
    /// Cancelled before any provisional response: the CANCEL goes out when one arrives
    /// (RFC 3261 9.1), or never when a final response comes first.
    cancel_pending: bool,
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

impl Completed {
    /// What `key` and this answer count against [`EngineConfig::max_completed_bytes`]: the
    /// answer, the key's strings and the table's own share of an entry.
    fn cost(&self, key: &TransactionKey) -> usize {
        self.bytes.len() + key.branch.len() + key.sent_by.len() + 160
    }
}

/// Most completed transactions remembered; beyond, a retransmission is processed again.
const MAX_COMPLETED: usize = 1_000_000;

/// Default [`EngineConfig::max_completed_bytes`]: 256 MiB (about 500,000 answers of a
/// typical REGISTER, 16 s of Timer J at 30,000 a second).
pub const DEFAULT_MAX_COMPLETED_BYTES: usize = 256 << 20;

/// Timer J for UDP (64*T1); also Timers L and M (RFC 6026), the same 64*T1.
const TIMER_J: Duration = Duration::from_secs(32);

/// Timer K for UDP (T4): a non-INVITE client transaction absorbs retransmitted responses.
const TIMER_K: Duration = Duration::from_secs(5);

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

/// The proxy and registrar front of one worker: every transaction whose messages the runtime
/// hands it. See the module documentation for the call order.
pub struct Engine<E: Env, M: MediaHook = NoMedia> {
    cfg: EngineConfig,
    local: LocalAddrs,
    limits: Limits,
    env: E,
    media: Option<M>,
    now: Instant,
    servers: Map<TransactionKey, ServerEntry>,
    clients: Map<TransactionKey, ClientEntry>,
    completed: Map<TransactionKey, Completed>,
    /// What `completed` holds, as [`Completed::cost`] counts it.
    completed_bytes: usize,
    /// INVITE server transactions after a 2xx (RFC 6026 Accepted): where responses go.
    lingering_servers: Map<TransactionKey, Hop>,
    /// Client transactions after their final response (INVITE after a 2xx, non-INVITE in
    /// Completed): the server transaction further 2xx go up to.
    lingering_clients: Map<TransactionKey, Option<TransactionKey>>,
    timers: BinaryHeap<Reverse<(Instant, u64, TimerRef)>>,
    seq: u64,
    pending: usize,
    out: VecDeque<Output>,
    counts: Counts,
    /// The farm's nonce keys, once known (until then authenticated requests get 503).
    keys: Option<crate::digest::NonceKeys>,
    /// The wall clock at an instant: nonces carry wall-clock times.
    wall: (Instant, u64),
    /// Nonces issued, for their uniqueness.
    nonce_seq: u64,
    /// How the domains' subscribers write numbers in user parts.
    plans: DialPlans,
}

impl<E: Env, M: MediaHook> Engine<E, M> {
    /// An engine with `cfg`, asking `env` about the world and rewriting SDP with `media`.
    /// `now` is the time of creation (the engine's clock only moves with its inputs).
    pub fn new(cfg: EngineConfig, env: E, media: Option<M>, now: Instant) -> Self {
        let local = LocalAddrs::new(&[cfg.listen], &[cfg.domain.as_str()]);
        let limits = Limits {
            max_message: cfg.max_message,
            ..Limits::default()
        };
        Engine {
            cfg,
            local,
            limits,
            env,
            media,
            now,
            servers: Map::default(),
            clients: Map::default(),
            completed: Map::default(),
            completed_bytes: 0,
            lingering_servers: Map::default(),
            lingering_clients: Map::default(),
            timers: BinaryHeap::new(),
            seq: 0,
            pending: 0,
            out: VecDeque::new(),
            counts: Counts::default(),
            keys: None,
            wall: (now, 0),
            nonce_seq: 0,
            plans: DialPlans::default(),
        }
    }

    /// Sets the farm's nonce keys (see [`crate::digest::NonceKeys`]); with none, requests
    /// that need authenticating get 503.
    pub fn set_keys(&mut self, keys: Option<crate::digest::NonceKeys>) {
        self.keys = keys;
    }

    /// Whether the engine holds nonce keys.
    pub fn has_keys(&self) -> bool {
        self.keys.is_some()
    }

    /// The domains served besides the configured one (provisioned domains): requests for
    /// them are routed by registration and their subscribers authenticated.
    pub fn set_domains(&mut self, domains: &[String]) {
        let mut all = vec![self.cfg.domain.clone()];
        for d in domains {
            let d = d.to_ascii_lowercase();
            if !all.contains(&d) {
                all.push(d);
            }
        }
        self.local.domains = all;
    }

    /// The domains served.
    pub fn domains(&self) -> &[String] {
        &self.local.domains
    }

    /// How each domain that has one reads the local forms of numbers in user parts
    /// (`(domain, plan)`; see [`crate::numbers`]). Numbers in the E.164 form need none.
    pub fn set_dial_plans(&mut self, plans: &[(String, DialPlan)]) {
        self.plans = DialPlans::new(plans);
    }

    /// Tells the engine the wall-clock time (`unix_ms`, milliseconds since the Unix epoch)
    /// at instant `at`; nonces carry wall-clock times. Call it at start and now and then.
    pub fn set_wall_clock(&mut self, at: Instant, unix_ms: u64) {
        self.wall = (at, unix_ms);
    }

    /// The wall clock now, in milliseconds since the Unix epoch.
    fn wall_ms(&self) -> u64 {
        let (at, ms) = self.wall;
        ms + self.now.saturating_duration_since(at).as_millis() as u64
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The environment the engine asks.
    pub fn env(&self) -> &E {
        &self.env
    }

    /// The environment, to update it.
    pub fn env_mut(&mut self) -> &mut E {
        &mut self.env
    }

    /// The media hook, if any.
    pub fn media(&self) -> Option<&M> {
        self.media.as_ref()
    }

    /// Handles `input` at `now`. Drain [`Engine::poll_output`] afterwards.
    pub fn handle(&mut self, now: Instant, input: Input<M::Done>) {
        self.now = self.now.max(now);
        match input {
            Input::Message {
                bytes,
                from,
                source,
                deliver,
            } => self.on_message(&bytes, from, source, deliver),
            Input::Registered { key, result, at_ms } => {
                self.pending = self.pending.saturating_sub(1);
                self.on_registered(key, result, at_ms);
            }
            Input::Authenticated { key, result } => {
                self.pending = self.pending.saturating_sub(1);
                self.on_authenticated(key, result);
            }
            Input::Located { key, result } => {
                self.pending = self.pending.saturating_sub(1);
                self.on_located(key, result);
            }
            Input::Resolved { key, result } => {
                self.pending = self.pending.saturating_sub(1);
                self.on_resolved(key, result);
            }
            Input::NumberRouted { key, result } => {
                self.pending = self.pending.saturating_sub(1);
                self.on_number_routed(key, result);
            }
            Input::SendFailed { client } => self.on_send_failed(&client),
            Input::Media(done) => self.on_media(done),
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.fire_timers();
    }

    /// When [`Engine::handle_timeout`] should be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    /// The next thing to do, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Live transactions (those counted against `max_transactions`).
    pub fn transactions(&self) -> usize {
        self.servers.len() + self.clients.len()
    }

    /// Finished transactions kept lean to absorb retransmissions.
    pub fn lingering(&self) -> usize {
        self.lingering_servers.len() + self.lingering_clients.len()
    }

    /// Requests waiting for the registrar, a lookup or a resolution.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// The counts since the last call, reset.
    pub fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.counts)
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
                // Media relay: SDP entering the farm may wait for the relay first.
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
                self.counts.malformed += 1;
                if let Some(resp) = e.response() {
                    self.send_to(&from, Message::Response(resp), None);
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
                self.counts.requests += 1;
                self.counts.method(&req.method);
                self.on_request(req, from, source, deliver);
            }
            Message::Response(resp) => self.on_response(resp),
        }
    }

    /// The media hook finished something: go on with what waited for it.
    fn on_media(&mut self, done: M::Done) {
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

    fn push_timer(&mut self, at: Instant, r: TimerRef) {
        self.seq += 1;
        self.timers.push(Reverse((at, self.seq, r)));
    }
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
