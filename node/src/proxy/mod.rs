//! The SIP proxy and registrar of a node: sockets, transactions and routing around the pure
//! SIP logic of [`crate::sip`].
//!
//! # Layout
//! - [`transport`]: UDP and TCP sockets on port 5060; TCP connections are flows.
//! - [`core`]: the workers: each owns the transactions of the calls whose Call-ID hashes to
//!   it, in an [`crate::sip::engine::Engine`], and carries out what the engine decides.
//! - [`media`]: which messages get their SDP pointed at a media relay, and when relay
//!   sessions are freed.
//! - this file: what the core needs from the rest of the node ([`Locator`] for bindings,
//!   [`PeerLink`] for SIP between nodes) and its settings.
//!
//! # Where messages go
//! A REGISTER is answered by the node that received it, after the AOR's registrar owner (one
//! overlay hop) applied it and its replicas hold it. Any other request for an AOR of our
//! domain is routed to the AOR's contacts; a contact registered through another node (its
//! *flow*) is reached through that node, over the overlay's QUIC connection, so a call's
//! messages cross at most two nodes: the caller's and the callee's. Both record-route, so
//! in-dialog requests follow the same path.
//!
//! A request for a telephone number (`tel:+15550100`, `sip:+15550100@D`, or D's local form)
//! first asks the number's owner on the same ring where the number is routed
//! ([`Locator::number`]): to an account (then to that account's contacts) or to a SIP URI
//! (then onward, as for any other domain).

pub mod core;
pub mod glue;
pub mod media;
pub mod resolve;
pub mod transport;

#[cfg(test)]
pub(crate) mod test_support;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sip::registrar::{Binding, Flow, RegisterInfo, RegistrarPolicy};
use onehop_overlay::provision::{DialPlan, NumberRoute};

/// A boxed future, for the object-safe traits below.
pub type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

pub use crate::sip::digest::{GuardPolicy, NonceKeys};
pub use crate::sip::engine::{AuthCheck, AuthMode, LocateError};

/// Where the bindings live: the replicated store on the `registrar` ring.
pub trait Locator: Send + Sync + 'static {
    /// Applies a REGISTER at the AOR's owner; returns the current contacts once min(R, live
    /// registrars) hold them.
    /// With `auth`, the credentials are checked against the AOR's account first (in the
    /// same step, at the owner).
    fn register(
        &self,
        info: RegisterInfo,
        policy: RegistrarPolicy,
        auth: Option<Box<AuthCheck>>,
    ) -> BoxFut<Result<Vec<Binding>, LocateError>>;
    /// Checks the credentials of a request from `aor` at its registrar (the account and the
    /// nonce counts live there).
    fn authenticate(&self, aor: String, auth: Box<AuthCheck>) -> BoxFut<Result<(), LocateError>>;
    /// The live contacts of an AOR (empty when unregistered).
    fn lookup(&self, aor: String) -> BoxFut<Result<Vec<Binding>, LocateError>>;
    /// Where calls to the E.164 number `number` (`+15550100`) go, from the number registry
    /// (`None`: not routed).
    fn number(&self, number: String) -> BoxFut<Result<Option<NumberRoute>, LocateError>>;
}

/// A SIP message carried between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SipEnvelope {
    /// The message as sent.
    pub bytes: Vec<u8>,
    /// For a request: deliver it to this client flow (which the receiving node holds).
    pub deliver: Option<Flow>,
    /// The sending node's SIP address.
    pub from: SocketAddr,
}

/// Who to tell when a request of a client transaction could not be delivered to another
/// node after [`PeerLink::send`] accepted it.
pub struct Receipt {
    /// The client transaction that sent it.
    pub client: crate::sip::transaction::TransactionKey,
    /// Its worker's inbox for answers.
    pub notify: tokio::sync::mpsc::UnboundedSender<core::Event>,
}

impl Receipt {
    /// Tells the worker that the message did not arrive.
    pub fn failed(self) {
        let _ = self
            .notify
            .send(core::Event::Answer(crate::sip::engine::Input::SendFailed {
                client: self.client,
            }));
    }
}

/// Sends SIP messages to other nodes.
pub trait PeerLink: Send + Sync + 'static {
    /// Queues `env` for the node `node`, without waiting. Messages to one node arrive in the
    /// order of the calls to `send`, as SIP over one connection would. An error means the
    /// message will not be sent (the queue is full, the node is unknown); a message accepted
    /// here that then cannot be delivered is reported through its `receipt`, if it has one.
    fn send(&self, node: String, env: SipEnvelope, receipt: Option<Receipt>) -> Result<(), String>;
}

/// Settings of the proxy.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The SIP domain served (requests for it are routed by registration).
    pub domain: String,
    /// Where SIP listens (the node's address, port 5060).
    pub listen: SocketAddr,
    /// The registrar's expiry limits.
    pub policy: RegistrarPolicy,
    /// Most requests waiting for the registrar or a lookup at once; beyond, 503.
    pub max_pending: usize,
    /// Most live transactions; beyond, new requests get 503.
    pub max_transactions: usize,
    /// Workers the transactions are sharded over (by Call-ID); at least 1.
    pub workers: usize,
    /// Depth of each worker's inbox of messages.
    pub queue: usize,
    /// Bytes of SIP messages in each worker's inbox, at most (datagrams beyond are dropped,
    /// stream and node-to-node messages wait).
    pub queue_bytes: usize,
    /// Bytes of messages each worker holds back behind calls waiting for their media relay,
    /// at most (beyond, they are dropped and counted; UDP senders retransmit).
    pub held_bytes: usize,
    /// Timer C: an INVITE proxied without a final response for this long is cancelled (408).
    pub timer_c: Duration,
    /// Largest SIP message accepted (513 beyond).
    pub max_message: usize,
    /// DNS servers for RFC 3263 lookups of other domains (none: the system's).
    pub dns_servers: Vec<SocketAddr>,
    /// The port of SIP over TLS, when it is served.
    pub tls_port: Option<u16>,
    /// The media relays, when calls' media is relayed (see [`media`]).
    pub media_relay: Option<media::MediaRelay>,
    /// Who is challenged and what is relayed.
    pub auth: AuthMode,
    /// How long a digest nonce stays valid, in milliseconds.
    pub nonce_lifetime_ms: u64,
    /// The digest algorithms challenged with, in order.
    pub algorithms: Vec<crate::sip::digest::Algorithm>,
    /// How failed authentications slow, then refuse, their source address.
    pub guard: GuardPolicy,
    /// The farm's nonce keys and provisioned domains as they change (none: neither).
    pub farm: Option<tokio::sync::watch::Receiver<Arc<FarmSettings>>>,
}

/// What the farm tells the proxy at run time.
#[derive(Debug, Clone, Default)]
pub struct FarmSettings {
    /// The keys nonces are issued and checked with (the same on every node).
    pub keys: Option<NonceKeys>,
    /// The provisioned domains (besides the configured one).
    pub domains: Vec<String>,
    /// How the domains that configure one read the local forms of numbers in user parts.
    pub dial_plans: Vec<(String, DialPlan)>,
}

impl ProxyConfig {
    /// Defaults for `domain` on `listen`.
    pub fn new(domain: &str, listen: SocketAddr) -> ProxyConfig {
        ProxyConfig {
            domain: domain.to_ascii_lowercase(),
            listen,
            policy: RegistrarPolicy::default(),
            max_pending: 10_000,
            max_transactions: 200_000,
            workers: 1,
            queue: 8192,
            queue_bytes: 16 << 20,
            held_bytes: media::DEFAULT_HELD_BYTES,
            timer_c: Duration::from_secs(180),
            max_message: 65_535,
            dns_servers: Vec::new(),
            tls_port: None,
            media_relay: None,
            auth: AuthMode::Digest,
            nonce_lifetime_ms: crate::sip::digest::DEFAULT_NONCE_LIFETIME_MS,
            algorithms: vec![
                crate::sip::digest::Algorithm::Md5,
                crate::sip::digest::Algorithm::Sha256,
            ],
            guard: GuardPolicy::default(),
            farm: None,
        }
    }
}
