//! The proxy's links to the rest of the node: bindings in the replicated store (the
//! `registrar` ring), and SIP between nodes over the peer transport.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::debug;

use super::core::CoreHandle;
use super::{BoxFut, LocateError, Locator, PeerLink, SipEnvelope};
use crate::peer::{PeerAddr, PeerHandler, PeerNet, Service};
use crate::sip::registrar::{
    Binding, Bindings, ContactInfo, Flow, RegisterContacts, RegisterInfo, RegistrarPolicy,
};
use crate::store::{Store, Updater};
use crate::view::View;

/// The role whose ring holds the bindings.
pub const REGISTRAR: &str = "registrar";

/// A REGISTER as carried to the AOR's owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RegisterOp {
    aor: String,
    call_id: String,
    cseq: u32,
    expires: Option<u32>,
    contacts: OpContacts,
    flow: Option<Flow>,
    received: Option<SocketAddr>,
    min_expires: u32,
    max_expires: u32,
    default_expires: u32,
    max_contacts: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum OpContacts {
    Fetch,
    Wildcard,
    Set(Vec<(String, Option<u32>, Option<u16>)>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum RegisterReply {
    Ok(Vec<Binding>),
    Rejected {
        status: u16,
        reason: String,
        min_expires: Option<u32>,
    },
}

fn encode<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(bincode::serde::encode_to_vec(v, bincode::config::standard()).expect("encode"))
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    bincode::serde::decode_from_slice(b, bincode::config::standard().with_limit::<{ 1 << 20 }>())
        .map(|(v, _)| v)
        .map_err(|e| e.to_string())
}

impl RegisterOp {
    fn new(info: RegisterInfo, policy: &RegistrarPolicy) -> RegisterOp {
        RegisterOp {
            aor: info.aor,
            call_id: info.call_id,
            cseq: info.cseq,
            expires: info.expires,
            contacts: match info.contacts {
                RegisterContacts::Fetch => OpContacts::Fetch,
                RegisterContacts::Wildcard => OpContacts::Wildcard,
                RegisterContacts::Set(v) => {
                    OpContacts::Set(v.into_iter().map(|c| (c.uri, c.expires, c.q)).collect())
                }
            },
            flow: info.flow,
            received: info.received,
            min_expires: policy.min_expires,
            max_expires: policy.max_expires,
            default_expires: policy.default_expires,
            max_contacts: policy.max_contacts,
        }
    }

    fn info(&self) -> (RegisterInfo, RegistrarPolicy) {
        let info = RegisterInfo {
            aor: self.aor.clone(),
            call_id: self.call_id.clone(),
            cseq: self.cseq,
            expires: self.expires,
            contacts: match &self.contacts {
                OpContacts::Fetch => RegisterContacts::Fetch,
                OpContacts::Wildcard => RegisterContacts::Wildcard,
                OpContacts::Set(v) => RegisterContacts::Set(
                    v.iter()
                        .map(|(uri, expires, q)| ContactInfo {
                            uri: uri.clone(),
                            expires: *expires,
                            q: *q,
                        })
                        .collect(),
                ),
            },
            flow: self.flow.clone(),
            received: self.received,
        };
        let policy = RegistrarPolicy {
            min_expires: self.min_expires,
            max_expires: self.max_expires,
            default_expires: self.default_expires,
            max_contacts: self.max_contacts,
        };
        (info, policy)
    }
}

/// Applies REGISTERs at the AOR's owner (RFC 3261 section 10.3 rules), atomically per AOR.
pub struct RegistrarUpdater;

fn expiry(b: &Bindings) -> u64 {
    b.contacts
        .iter()
        .map(|c| c.expires_at_ms)
        .max()
        .unwrap_or(0)
}

impl Updater for RegistrarUpdater {
    fn apply(
        &self,
        _key: &str,
        current: Option<&Bytes>,
        op: &[u8],
        now_ms: u64,
    ) -> Result<(Option<Bytes>, u64, Bytes), String> {
        let op: RegisterOp = decode(op)?;
        let mut bindings: Bindings = match current {
            Some(b) => decode(b)?,
            None => Bindings::new(),
        };
        bindings.purge(now_ms);
        let (info, policy) = op.info();
        match bindings.apply_register(&info, now_ms, &policy) {
            Ok(now_bound) => {
                let reply = encode(&RegisterReply::Ok(now_bound));
                let live = bindings.current(now_ms);
                if live.is_empty() && bindings.is_empty() {
                    Ok((None, now_ms, reply))
                } else {
                    let until = expiry(&bindings).max(now_ms + 1);
                    Ok((Some(encode(&bindings)), until, reply))
                }
            }
            Err(e) => {
                let le: LocateError = e.into();
                let LocateError::Rejected {
                    status,
                    reason,
                    min_expires,
                } = le
                else {
                    return Err("registrar error".into());
                };
                let reply = encode(&RegisterReply::Rejected {
                    status,
                    reason,
                    min_expires,
                });
                // Nothing changes: keep what was held.
                let keep = current.cloned();
                let until = expiry(&bindings).max(now_ms + 1);
                Ok((keep, until, reply))
            }
        }
    }
}

/// Bindings kept in the replicated store.
pub struct StoreLocator {
    store: Store,
}

impl StoreLocator {
    /// A locator over `store`, whose `registrar` updater must be [`RegistrarUpdater`].
    pub fn new(store: Store) -> StoreLocator {
        store.register_updater(REGISTRAR, Arc::new(RegistrarUpdater));
        StoreLocator { store }
    }
}

impl Locator for StoreLocator {
    fn register(
        &self,
        info: RegisterInfo,
        policy: RegistrarPolicy,
    ) -> BoxFut<Result<Vec<Binding>, LocateError>> {
        let aor = info.aor.clone();
        let op = encode(&RegisterOp::new(info, &policy));
        let store = self.store.clone();
        Box::pin(async move {
            match store.update(REGISTRAR, &aor, op).await {
                Ok((reply, acks)) => {
                    if acks.held < acks.wanted {
                        return Err(LocateError::Unavailable(format!(
                            "binding held by {} of {} registrars",
                            acks.held, acks.wanted
                        )));
                    }
                    match decode::<RegisterReply>(&reply) {
                        Ok(RegisterReply::Ok(b)) => Ok(b),
                        Ok(RegisterReply::Rejected {
                            status,
                            reason,
                            min_expires,
                        }) => Err(LocateError::Rejected {
                            status,
                            reason,
                            min_expires,
                        }),
                        Err(e) => Err(LocateError::Unavailable(e)),
                    }
                }
                Err(e) => Err(LocateError::Unavailable(e.to_string())),
            }
        })
    }

    fn lookup(&self, aor: String) -> BoxFut<Result<Vec<Binding>, LocateError>> {
        let store = self.store.clone();
        Box::pin(async move {
            match store.get(REGISTRAR, &aor).await {
                Ok(Some(bytes)) => {
                    let b: Bindings = decode(&bytes).map_err(LocateError::Unavailable)?;
                    Ok(b.current(onehop_overlay::daemon::now_ms()))
                }
                Ok(None) => Ok(Vec::new()),
                Err(e) => Err(LocateError::Unavailable(e.to_string())),
            }
        })
    }
}

/// SIP between nodes over the peer transport, in order.
///
/// Each destination node has one queue and one task that sends what is queued, a batch per
/// peer call (`Vec<SipEnvelope>`, bincode), one call at a time. Messages to a node therefore
/// arrive in the order the core sent them: a 180 cannot overtake the 200 that follows it, nor
/// a CANCEL its INVITE (with a call and a task per message they could, and did). The queue is
/// bounded; when it is full the message is dropped, as a congested UDP hop would drop it.
pub struct PeerSip {
    net: Arc<PeerNet>,
    view: watch::Receiver<Arc<View>>,
    queues: std::sync::Mutex<HashMap<String, mpsc::Sender<SipEnvelope>>>,
}

/// Envelopes waiting for one node.
const PEER_QUEUE: usize = 8192;
/// Most envelopes in one call.
const MAX_BATCH: usize = 256;
/// Most bytes of SIP in one call (under the peer transport's 1 MiB frame cap).
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// A node's sending task ends after this long with nothing to send.
const PEER_IDLE: Duration = Duration::from_secs(60);

impl PeerSip {
    /// SIP over `net`, finding nodes in `view`.
    pub fn new(net: Arc<PeerNet>, view: watch::Receiver<Arc<View>>) -> PeerSip {
        PeerSip {
            net,
            view,
            queues: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn enqueue(&self, node: String, env: SipEnvelope) -> Result<(), String> {
        let mut queues = self.queues.lock().expect("peer queues");
        let mut env = env;
        // Twice at most: a queue whose task ended (idle) is replaced once.
        for _ in 0..2 {
            let tx = match queues.get(&node) {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let (tx, rx) = mpsc::channel(PEER_QUEUE);
                    tokio::spawn(send_loop(
                        self.net.clone(),
                        self.view.clone(),
                        node.clone(),
                        rx,
                    ));
                    queues.insert(node.clone(), tx.clone());
                    tx
                }
            };
            match tx.try_send(env) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(format!("queue to {node} full: message dropped"))
                }
                Err(mpsc::error::TrySendError::Closed(e)) => {
                    queues.remove(&node);
                    env = e;
                }
            }
        }
        Err(format!("no queue to {node}"))
    }
}

/// Sends what is queued for `node`, in order, one batch per call.
async fn send_loop(
    net: Arc<PeerNet>,
    view: watch::Receiver<Arc<View>>,
    node: String,
    mut rx: mpsc::Receiver<SipEnvelope>,
) {
    let mut batch: Vec<SipEnvelope> = Vec::new();
    loop {
        match tokio::time::timeout(PEER_IDLE, rx.recv()).await {
            Ok(Some(env)) => batch.push(env),
            Ok(None) | Err(_) => return,
        }
        let mut bytes = batch[0].bytes.len();
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(env) => {
                    bytes += env.bytes.len();
                    batch.push(env);
                }
                Err(_) => break,
            }
        }
        let addr = view
            .borrow()
            .status
            .as_ref()
            .and_then(|s| s.member(&node))
            .map(PeerAddr::of_member);
        match addr {
            None => {
                debug!(peer = %node, n = batch.len(), "SIP to a node not in the status dropped")
            }
            Some(addr) => {
                let r = net
                    .call(&addr, Service::Sip, encode(&batch), Duration::from_secs(2))
                    .await;
                match r {
                    Ok(answer) if answer.is_empty() => {}
                    Ok(answer) => {
                        debug!(peer = %node, answer = %String::from_utf8_lossy(&answer), "SIP to peer")
                    }
                    Err(e) => {
                        debug!(peer = %node, cause = %e, n = batch.len(), "SIP to peer failed")
                    }
                }
            }
        }
        batch.clear();
    }
}

impl PeerLink for PeerSip {
    fn send(&self, node: String, env: SipEnvelope) -> BoxFut<Result<(), String>> {
        // Queued now, not when the future runs: the order of calls is the order on the wire.
        let r = self.enqueue(node, env);
        Box::pin(async move { r })
    }
}

/// Receives SIP from other nodes and hands it to the core.
pub struct SipHandler {
    core: CoreHandle,
}

impl SipHandler {
    /// A handler feeding `core`.
    pub fn new(core: CoreHandle) -> SipHandler {
        SipHandler { core }
    }
}

impl PeerHandler for SipHandler {
    fn handle(
        &self,
        from: &onehop_overlay::identity::Identity,
        body: Bytes,
    ) -> futures::future::BoxFuture<'_, Bytes> {
        let node = from.name.clone();
        Box::pin(async move {
            match decode::<Vec<SipEnvelope>>(&body) {
                Ok(batch) => {
                    let n = batch.len();
                    let dropped = batch
                        .into_iter()
                        .map(|env| self.core.from_peer(node.clone(), env))
                        .filter(|queued| !queued)
                        .count();
                    if dropped == 0 {
                        Bytes::new()
                    } else {
                        Bytes::from(format!("busy: {dropped} of {n} dropped"))
                    }
                }
                Err(e) => Bytes::from(format!("bad envelope: {e}")),
            }
        })
    }
}
