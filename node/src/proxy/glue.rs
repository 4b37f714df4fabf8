//! The proxy's links to the rest of the node: bindings, accounts and number routing in the
//! replicated store (the `registrar` ring), and SIP between nodes over the peer transport.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::debug;

use super::core::CoreHandle;
use super::{BoxFut, LocateError, Locator, PeerLink, Receipt, SipEnvelope};
use crate::peer::{PeerAddr, PeerHandler, PeerNet, Service};
use onehop_overlay::metrics::{Metric, Metrics};
use onehop_overlay::provision::{AccountRecord, NumberRoute, PushOp};

use crate::sip::digest::{verify_at_owner, Algorithm, Ha1, RecentNonces};
use crate::sip::engine::AuthCheck;

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
    /// The credentials were not accepted (`stale`: only the nonce or its count was).
    Unauthorized {
        stale: bool,
    },
    /// No account is held for the AOR: the entry node reloads it from the managers.
    NoAccount,
    /// The account is blocked.
    Blocked,
}

impl RegisterReply {
    /// The outcome for the engine; `NoAccount` is the caller's to handle first.
    fn into_result(self) -> Result<Vec<Binding>, LocateError> {
        match self {
            RegisterReply::Ok(b) => Ok(b),
            RegisterReply::Rejected {
                status,
                reason,
                min_expires,
            } => Err(LocateError::Rejected {
                status,
                reason,
                min_expires,
            }),
            RegisterReply::Unauthorized { stale } => Err(LocateError::Unauthorized { stale }),
            RegisterReply::NoAccount => Err(LocateError::Unauthorized { stale: false }),
            RegisterReply::Blocked => Err(LocateError::Rejected {
                status: 403,
                reason: "Account Blocked".into(),
                min_expires: None,
            }),
        }
    }
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

/// What the registrar keeps under an AOR: its bindings and, once the active manager pushed it,
/// its account, with the nonce counts of the requests authenticated as it. Under an E.164
/// number (`+15550100`, a key of its own on the same ring) it keeps the number's routing.
/// Encoded as the bindings followed by the rest, each version appending its fields, so a node
/// of an earlier version (which decodes what it knows and ignores what follows) still reads
/// the bindings, the account and the alias.
#[derive(Debug, Default, Serialize, Deserialize)]
struct AorEntry {
    bindings: Bindings,
    account: Option<AccountRecord>,
    /// The highest provisioning change version applied (an account put or removal, an alias
    /// change, a number's routing): older changes are ignored.
    seen: u64,
    /// The nonce counts used by this subscriber: a replay is refused at this one place.
    nonces: RecentNonces,
    /// When this AOR is an alias: the account's AOR, whose bindings requests reach.
    alias_of: Option<String>,
    /// For a number's key: its routing as of change `seen` (held, even when it is not
    /// routed, so that an older change or reload cannot bring an earlier routing back).
    number: Option<NumberState>,
}

/// The routing of a number, as the registrar holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct NumberState {
    /// Where calls go; `None`: not routed (released, or allocated with no routing).
    route: Option<NumberRoute>,
}

/// How long a number that is not routed is remembered as such (a pushed unrouting, or a
/// reload that found no routing): long enough that a reload in flight cannot bring an older
/// routing back, and that calls to an unknown number do not each ask the managers.
const UNROUTED_TTL_MS: u64 = 60_000;

/// [`AorEntry`] as the previous version wrote it (no number routing).
#[derive(Debug, Default, Serialize, Deserialize)]
struct AorEntryV2 {
    bindings: Bindings,
    account: Option<AccountRecord>,
    seen: u64,
    nonces: RecentNonces,
    alias_of: Option<String>,
}

/// [`AorEntry`] as the version before that wrote it (no nonce counts).
#[derive(Debug, Default, Serialize, Deserialize)]
struct AorEntryV1 {
    bindings: Bindings,
    account: Option<AccountRecord>,
    seen: u64,
}

fn decode_entry(b: &[u8]) -> Result<AorEntry, String> {
    decode::<AorEntry>(b)
        .or_else(|_| {
            decode::<AorEntryV2>(b).map(|v2| AorEntry {
                bindings: v2.bindings,
                account: v2.account,
                seen: v2.seen,
                nonces: v2.nonces,
                alias_of: v2.alias_of,
                number: None,
            })
        })
        .or_else(|_| {
            decode::<AorEntryV1>(b).map(|v1| AorEntry {
                bindings: v1.bindings,
                account: v1.account,
                seen: v1.seen,
                ..AorEntry::default()
            })
        })
        .or_else(|_| {
            decode::<Bindings>(b).map(|bindings| AorEntry {
                bindings,
                ..AorEntry::default()
            })
        })
}

impl AorEntry {
    /// Checks credentials against the account held: the response with its HA1, then the
    /// nonce count, recorded only when all passed.
    fn authenticate(&mut self, auth: &AuthCheck, now_ms: u64) -> Result<(), RegisterReply> {
        let Some(account) = &self.account else {
            return Err(RegisterReply::NoAccount);
        };
        if !account.enabled {
            return Err(RegisterReply::Blocked);
        }
        let ha1 = |alg: Algorithm| match alg {
            Algorithm::Md5 => Ha1::from_bytes(alg, &account.ha1_md5),
            Algorithm::Sha256 => Ha1::from_bytes(alg, &account.ha1_sha256),
        };
        verify_at_owner(
            &auth.credentials,
            &auth.method,
            ha1,
            auth.issued_ms,
            auth.lifetime_ms,
            &mut self.nonces,
            now_ms,
        )
        .map_err(|e| RegisterReply::Unauthorized {
            stale: e.is_stale(),
        })
    }
}

/// Whether a registrar entry holds bindings (live, or expired and not purged yet), without
/// decoding it: the entry starts with the bindings' count (a bincode varint, 0 for none).
pub fn has_bindings(value: &[u8]) -> bool {
    value.first().is_some_and(|&n| n != 0)
}

/// An entry holding an account never expires (it goes with a removal).
const NEVER: u64 = u64::MAX / 4;

/// First byte of the registrar ops of this version. An earlier version's `RegisterOp` never
/// starts with it (a bincode varint never does), so both are told apart.
const OP_TAG: u8 = 0xFF;

/// A registrar op of this version.
#[derive(Debug, Serialize, Deserialize)]
enum RegistrarOp {
    /// An account change pushed by the active manager.
    Account(PushOp),
    /// A REGISTER whose credentials are checked against the account first.
    Register {
        op: RegisterOp,
        auth: Box<AuthCheck>,
    },
    /// The credentials of a request from this AOR (answered as a `RegisterReply`, with no
    /// bindings when accepted).
    Authenticate(Box<AuthCheck>),
}

fn tagged(op: &RegistrarOp) -> Bytes {
    let mut out = vec![OP_TAG];
    out.extend_from_slice(&encode(op));
    Bytes::from(out)
}

/// The store op applying `op` (an account, alias or number change) to its key's entry.
pub fn account_op(op: &PushOp) -> Bytes {
    tagged(&RegistrarOp::Account(op.clone()))
}

/// Applies REGISTERs (RFC 3261 section 10.3 rules) and account changes at the AOR's owner,
/// atomically per AOR.
pub struct RegistrarUpdater;

fn expiry(b: &Bindings) -> u64 {
    b.contacts
        .iter()
        .map(|c| c.expires_at_ms)
        .max()
        .unwrap_or(0)
}

impl AorEntry {
    /// Whether the entry is kept until a change removes it: an account, an alias, a routed
    /// number.
    fn permanent(&self) -> bool {
        self.account.is_some()
            || self.alias_of.is_some()
            || self.number.as_ref().is_some_and(|n| n.route.is_some())
    }

    /// The expiry of the entry as held.
    fn until(&self, now_ms: u64) -> u64 {
        if self.permanent() {
            return NEVER;
        }
        let bound = expiry(&self.bindings).max(now_ms + 1);
        if self.number.is_some() {
            bound.max(now_ms + UNROUTED_TTL_MS)
        } else {
            bound
        }
    }

    /// The value to store and its expiry; `None` when nothing is left.
    fn stored(&self, now_ms: u64) -> (Option<Bytes>, u64) {
        if self.permanent() {
            return (Some(encode(self)), NEVER);
        }
        let live = self.bindings.current(now_ms);
        if live.is_empty() && self.bindings.is_empty() && self.number.is_none() {
            (None, now_ms)
        } else {
            (Some(encode(self)), self.until(now_ms))
        }
    }
}

impl Updater for RegistrarUpdater {
    fn apply(
        &self,
        _key: &str,
        current: Option<&Bytes>,
        op: &[u8],
        now_ms: u64,
    ) -> Result<(Option<Bytes>, u64, Bytes), String> {
        let mut entry = match current {
            Some(b) => decode_entry(b)?,
            None => AorEntry::default(),
        };
        entry.bindings.purge(now_ms);
        let op: RegisterOp = match op.split_first() {
            Some((&OP_TAG, rest)) => match decode(rest)? {
                RegistrarOp::Account(change) => {
                    let newer = change.version() > entry.seen;
                    if newer {
                        entry.seen = change.version();
                        match change {
                            PushOp::Put { account, .. } => entry.account = Some(account),
                            PushOp::Remove { .. } => entry.account = None,
                            PushOp::Alias { target, .. } => entry.alias_of = Some(target),
                            PushOp::AliasRemove { .. } => entry.alias_of = None,
                            PushOp::Number { route, .. } => {
                                entry.number = Some(NumberState { route })
                            }
                        }
                    }
                    let (value, until) = entry.stored(now_ms);
                    return Ok((value, until, encode(&newer)));
                }
                RegistrarOp::Authenticate(auth) => {
                    return Ok(match entry.authenticate(&auth, now_ms) {
                        Ok(()) => {
                            let (value, until) = entry.stored(now_ms);
                            (value, until, encode(&RegisterReply::Ok(Vec::new())))
                        }
                        Err(reply) => (current.cloned(), entry.until(now_ms), encode(&reply)),
                    });
                }
                RegistrarOp::Register { op, auth } => {
                    if let Err(reply) = entry.authenticate(&auth, now_ms) {
                        return Ok((current.cloned(), entry.until(now_ms), encode(&reply)));
                    }
                    op
                }
            },
            _ => decode(op)?,
        };
        let (info, policy) = op.info();
        match entry.bindings.apply_register(&info, now_ms, &policy) {
            Ok(now_bound) => {
                let reply = encode(&RegisterReply::Ok(now_bound));
                let (value, until) = entry.stored(now_ms);
                Ok((value, until, reply))
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
                Ok((current.cloned(), entry.until(now_ms), reply))
            }
        }
    }
}

/// Where a node reloads an account its registrar cache lacks: the managers.
pub trait AccountSource: Send + Sync + 'static {
    /// The account at `aor` as the managers hold it now (`None`: not provisioned).
    fn fetch(&self, aor: String) -> BoxFut<Result<Option<AccountRecord>, String>>;
}

/// Where a node reloads a number's routing its registrar cache lacks: the managers.
pub trait NumberSource: Send + Sync + 'static {
    /// The routing of the E.164 number `number` as the managers hold it now, and the
    /// provisioning change version it was read at (`None`: not routed, or not allocated).
    fn fetch(&self, number: String) -> BoxFut<Result<(u64, Option<NumberRoute>), String>>;
}

/// How long an AOR the managers said was not provisioned is not asked for again (a
/// provisioned account is pushed to its registrar anyway; this only bounds the questions an
/// unprovisioned AOR's REGISTERs cause).
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Most AORs remembered as not provisioned.
const NEGATIVE_MAX: usize = 100_000;

/// Bindings kept in the replicated store.
pub struct StoreLocator {
    store: Store,
    accounts: Option<Arc<dyn AccountSource>>,
    numbers: Option<Arc<dyn NumberSource>>,
    /// AORs recently found not provisioned, and when.
    unknown: Arc<std::sync::Mutex<HashMap<String, std::time::Instant>>>,
}

impl StoreLocator {
    /// A locator over `store`, whose `registrar` updater must be [`RegistrarUpdater`].
    pub fn new(store: Store) -> StoreLocator {
        store.register_updater(REGISTRAR, Arc::new(RegistrarUpdater));
        StoreLocator {
            store,
            accounts: None,
            numbers: None,
            unknown: Arc::default(),
        }
    }

    /// Reload accounts missing at their registrar from `source` before refusing.
    pub fn with_accounts(mut self, source: Arc<dyn AccountSource>) -> StoreLocator {
        self.accounts = Some(source);
        self
    }

    /// Reload the routing of numbers missing at their registrar from `source` before
    /// answering (without one, a number the store lacks is not routed).
    pub fn with_numbers(mut self, source: Arc<dyn NumberSource>) -> StoreLocator {
        self.numbers = Some(source);
        self
    }

    /// Applies `op` at the AOR's owner. When the owner holds no account for it, reloads the
    /// account from the managers, puts it in the store and applies `op` once more, so a
    /// provisioned user is never refused because a cache is cold.
    fn apply(
        &self,
        aor: String,
        op: Bytes,
        need_acks: bool,
    ) -> BoxFut<Result<Vec<Binding>, LocateError>> {
        let store = self.store.clone();
        let accounts = self.accounts.clone();
        let unknown = self.unknown.clone();
        Box::pin(async move {
            let reply = update(&store, &aor, op.clone(), need_acks).await?;
            if !matches!(reply, RegisterReply::NoAccount) {
                return reply.into_result();
            }
            let Some(source) = accounts else {
                return reply.into_result();
            };
            {
                let mut unknown = unknown.lock().expect("unknown AORs");
                if let Some(at) = unknown.get(&aor) {
                    if at.elapsed() < NEGATIVE_TTL {
                        return reply.into_result();
                    }
                    unknown.remove(&aor);
                }
            }
            match source.fetch(aor.clone()).await {
                Ok(Some(account)) => {
                    debug!(%aor, "account reloaded from the managers");
                    let put = account_op(&PushOp::Put {
                        aor: aor.clone(),
                        account,
                    });
                    store
                        .update(REGISTRAR, &aor, put)
                        .await
                        .map_err(|e| LocateError::Unavailable(e.to_string()))?;
                    update(&store, &aor, op, need_acks).await?.into_result()
                }
                Ok(None) => {
                    let mut unknown = unknown.lock().expect("unknown AORs");
                    if unknown.len() >= NEGATIVE_MAX {
                        unknown.retain(|_, at| at.elapsed() < NEGATIVE_TTL);
                        if unknown.len() >= NEGATIVE_MAX {
                            unknown.clear();
                        }
                    }
                    unknown.insert(aor, std::time::Instant::now());
                    reply.into_result()
                }
                // The managers cannot be asked now: say so rather than refuse the user.
                Err(e) => Err(LocateError::Unavailable(format!(
                    "account not cached and the managers did not answer: {e}"
                ))),
            }
        })
    }
}

/// One registrar op at the AOR's owner; with `need_acks`, held by the replica set.
async fn update(
    store: &Store,
    aor: &str,
    op: Bytes,
    need_acks: bool,
) -> Result<RegisterReply, LocateError> {
    match store.update(REGISTRAR, aor, op).await {
        Ok((reply, acks)) => {
            let reply = decode::<RegisterReply>(&reply).map_err(LocateError::Unavailable)?;
            if need_acks && matches!(reply, RegisterReply::Ok(_)) && acks.held < acks.wanted {
                return Err(LocateError::Unavailable(format!(
                    "binding held by {} of {} registrars",
                    acks.held, acks.wanted
                )));
            }
            Ok(reply)
        }
        Err(e) => Err(LocateError::Unavailable(e.to_string())),
    }
}

impl Locator for StoreLocator {
    fn register(
        &self,
        info: RegisterInfo,
        policy: RegistrarPolicy,
        auth: Option<Box<AuthCheck>>,
    ) -> BoxFut<Result<Vec<Binding>, LocateError>> {
        let aor = info.aor.clone();
        let op = RegisterOp::new(info, &policy);
        let op = match auth {
            // Without credentials the op is the earlier version's, which every node reads.
            None => encode(&op),
            Some(auth) => tagged(&RegistrarOp::Register { op, auth }),
        };
        self.apply(aor, op, true)
    }

    fn authenticate(&self, aor: String, auth: Box<AuthCheck>) -> BoxFut<Result<(), LocateError>> {
        let fut = self.apply(aor, tagged(&RegistrarOp::Authenticate(auth)), false);
        Box::pin(async move { fut.await.map(|_| ()) })
    }

    /// The live bindings of `aor`; for an alias, those of the account it names (one step:
    /// an alias of an alias is not followed).
    fn lookup(&self, aor: String) -> BoxFut<Result<Vec<Binding>, LocateError>> {
        let store = self.store.clone();
        Box::pin(async move {
            let now = onehop_overlay::daemon::now_ms();
            let entry = match store.get(REGISTRAR, &aor).await {
                Ok(Some(bytes)) => decode_entry(&bytes).map_err(LocateError::Unavailable)?,
                Ok(None) => return Ok(Vec::new()),
                Err(e) => return Err(LocateError::Unavailable(e.to_string())),
            };
            let live = entry.bindings.current(now);
            match entry.alias_of {
                Some(target) if live.is_empty() => match store.get(REGISTRAR, &target).await {
                    Ok(Some(bytes)) => Ok(decode_entry(&bytes)
                        .map_err(LocateError::Unavailable)?
                        .bindings
                        .current(now)),
                    Ok(None) => Ok(Vec::new()),
                    Err(e) => Err(LocateError::Unavailable(e.to_string())),
                },
                _ => Ok(live),
            }
        })
    }

    /// The routing of `number` held at its owner on the `registrar` ring; when the owner
    /// holds none (a cold cache: the node restarted, the push has not arrived), reloaded
    /// from the managers and put in the store (applied only if no newer change arrived
    /// meanwhile) before answering.
    fn number(&self, number: String) -> BoxFut<Result<Option<NumberRoute>, LocateError>> {
        let store = self.store.clone();
        let source = self.numbers.clone();
        Box::pin(async move {
            if let Some(held) = held_number(&store, &number).await? {
                return Ok(held.route);
            }
            let Some(source) = source else {
                return Ok(None);
            };
            let (version, route) = source.fetch(number.clone()).await.map_err(|e| {
                LocateError::Unavailable(format!(
                    "number not cached and the managers did not answer: {e}"
                ))
            })?;
            debug!(%number, version, routed = route.is_some(), "number reloaded from the managers");
            let put = account_op(&PushOp::Number {
                number: number.clone(),
                route: route.clone(),
                version,
            });
            match store.update(REGISTRAR, &number, put).await {
                // Not newer: a push overtook the reload; the store holds the later routing.
                Ok((newer, _)) if !decode::<bool>(&newer).unwrap_or(true) => {
                    Ok(held_number(&store, &number).await?.and_then(|n| n.route))
                }
                Ok(_) => Ok(route),
                // The managers' answer stands; the next call reloads again.
                Err(e) => {
                    debug!(%number, cause = %e, "a reloaded number could not be stored");
                    Ok(route)
                }
            }
        })
    }
}

/// The routing of `number` the store holds, if it holds one.
async fn held_number(store: &Store, number: &str) -> Result<Option<NumberState>, LocateError> {
    match store.get(REGISTRAR, number).await {
        Ok(Some(bytes)) => Ok(decode_entry(&bytes)
            .map_err(LocateError::Unavailable)?
            .number),
        Ok(None) => Ok(None),
        Err(e) => Err(LocateError::Unavailable(e.to_string())),
    }
}

/// SIP between nodes over the peer transport, in order, and never lost in silence.
///
/// Each destination node has one queue and one task that sends what is queued, a batch per
/// peer call (`Vec<SipEnvelope>`, bincode), one call at a time. Messages to a node therefore
/// arrive in the order the workers sent them: a 180 cannot overtake the 200 that follows it,
/// nor a CANCEL its INVITE. The queue is bounded in messages and in bytes; when it is full,
/// [`PeerLink::send`] says so at once and the worker answers the request 503. A batch that
/// cannot be delivered (the node left the status, the call failed or timed out, the
/// receiver refused some of it because its workers are full) fails the receipts of its
/// messages, and a failed call fails everything queued behind it too: the node is not
/// answering, so each request gets its 503 now rather than one call timeout after another.
pub struct PeerSip {
    net: Arc<PeerNet>,
    view: watch::Receiver<Arc<View>>,
    settings: PeerSipSettings,
    queues: std::sync::Mutex<HashMap<String, Queue>>,
    full: Option<(Metric, Metric)>,
}

/// Bounds and timeouts of SIP between nodes.
#[derive(Debug, Clone, Copy)]
pub struct PeerSipSettings {
    /// Most messages waiting for one node.
    pub queue: usize,
    /// Most bytes waiting for one node.
    pub queue_bytes: usize,
    /// How long one batch may take to be accepted by the receiving node.
    pub call_timeout: Duration,
}

impl Default for PeerSipSettings {
    fn default() -> Self {
        PeerSipSettings {
            queue: 8192,
            queue_bytes: 8 << 20,
            call_timeout: Duration::from_millis(500),
        }
    }
}

struct Queue {
    tx: mpsc::Sender<(SipEnvelope, Option<Receipt>)>,
    bytes: Arc<std::sync::atomic::AtomicUsize>,
}

/// Most envelopes in one call.
const MAX_BATCH: usize = 256;
/// Most bytes of SIP in one call (under the peer transport's 1 MiB frame cap).
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// A node's sending task ends after this long with nothing to send.
const PEER_IDLE: Duration = Duration::from_secs(60);

impl PeerSip {
    /// SIP over `net`, finding nodes in `view`.
    pub fn new(
        net: Arc<PeerNet>,
        view: watch::Receiver<Arc<View>>,
        settings: PeerSipSettings,
    ) -> PeerSip {
        PeerSip {
            net,
            view,
            settings,
            queues: std::sync::Mutex::new(HashMap::new()),
            full: None,
        }
    }

    /// Counts the messages refused at a full queue in `metrics`
    /// (`sip_peer_queue_full_total{bound="entries"|"bytes"}`).
    pub fn count_in(mut self, metrics: &Metrics) -> PeerSip {
        const FULL: &str =
            "SIP messages for another node refused (503) because its queue was full, by bound.";
        self.full = Some((
            metrics.counter("sip_peer_queue_full_total{bound=\"entries\"}", FULL),
            metrics.counter("sip_peer_queue_full_total{bound=\"bytes\"}", FULL),
        ));
        self
    }

    fn enqueue(
        &self,
        node: String,
        env: SipEnvelope,
        receipt: Option<Receipt>,
    ) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        let known = self
            .view
            .borrow()
            .status
            .as_ref()
            .is_some_and(|s| s.member(&node).is_some());
        if !known {
            return Err(format!("{node} is not in the network status"));
        }
        let mut queues = self.queues.lock().expect("peer queues");
        let mut item = (env, receipt);
        // Twice at most: a queue whose task ended (idle) is replaced once.
        for _ in 0..2 {
            let q = match queues.get(&node) {
                Some(q) if !q.tx.is_closed() => q,
                _ => {
                    let (tx, rx) = mpsc::channel(self.settings.queue.max(1));
                    let bytes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                    tokio::spawn(send_loop(
                        self.net.clone(),
                        self.view.clone(),
                        node.clone(),
                        rx,
                        bytes.clone(),
                        self.settings.call_timeout,
                    ));
                    queues.insert(node.clone(), Queue { tx, bytes });
                    &queues[&node]
                }
            };
            let len = item.0.bytes.len();
            if q.bytes.load(Ordering::Relaxed) + len > self.settings.queue_bytes {
                if let Some((_, bytes)) = &self.full {
                    bytes.inc();
                }
                return Err(format!(
                    "queue to {node} full ({} bytes)",
                    self.settings.queue_bytes
                ));
            }
            match q.tx.try_send(item) {
                Ok(()) => {
                    q.bytes.fetch_add(len, Ordering::Relaxed);
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if let Some((entries, _)) = &self.full {
                        entries.inc();
                    }
                    return Err(format!(
                        "queue to {node} full ({} messages)",
                        self.settings.queue
                    ));
                }
                Err(mpsc::error::TrySendError::Closed(e)) => {
                    queues.remove(&node);
                    item = e;
                }
            }
        }
        Err(format!("no queue to {node}"))
    }
}

/// Fails the receipts of `items` (their requests get 503 at their workers).
fn fail_all(items: impl IntoIterator<Item = Option<Receipt>>) -> usize {
    let mut n = 0;
    for r in items.into_iter().flatten() {
        r.failed();
        n += 1;
    }
    n
}

/// Sends what is queued for `node`, in order, one batch per call.
async fn send_loop(
    net: Arc<PeerNet>,
    view: watch::Receiver<Arc<View>>,
    node: String,
    mut rx: mpsc::Receiver<(SipEnvelope, Option<Receipt>)>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    call_timeout: Duration,
) {
    use std::sync::atomic::Ordering;
    let mut batch: Vec<SipEnvelope> = Vec::new();
    let mut receipts: Vec<Option<Receipt>> = Vec::new();
    loop {
        match tokio::time::timeout(PEER_IDLE, rx.recv()).await {
            Ok(Some((env, r))) => {
                batch.push(env);
                receipts.push(r);
            }
            Ok(None) | Err(_) => return,
        }
        let mut bytes = batch[0].bytes.len();
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok((env, r)) => {
                    bytes += env.bytes.len();
                    batch.push(env);
                    receipts.push(r);
                }
                Err(_) => break,
            }
        }
        queued.fetch_sub(bytes, Ordering::Relaxed);
        let addr = view
            .borrow()
            .status
            .as_ref()
            .and_then(|s| s.member(&node))
            .map(PeerAddr::of_member);
        let delivered = match addr {
            None => Err("not in the network status".to_string()),
            Some(addr) => {
                match net
                    .call(&addr, Service::Sip, encode(&batch), call_timeout)
                    .await
                {
                    Ok(answer) => Ok(answer),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        match delivered {
            Ok(answer) if answer.is_empty() => {}
            Ok(answer) => {
                // Some were refused: the receiver's workers were full for too long.
                let refused = refused_indices(&answer);
                let n = fail_all(
                    refused
                        .into_iter()
                        .filter_map(|i| receipts.get_mut(i).map(Option::take)),
                );
                debug!(peer = %node, answer = %String::from_utf8_lossy(&answer), failed = n, "SIP to peer refused in part");
            }
            Err(why) => {
                // The node is not answering: fail this batch and everything queued behind it.
                let mut n = fail_all(receipts.drain(..));
                let mut dropped = batch.len();
                while let Ok((env, r)) = rx.try_recv() {
                    queued.fetch_sub(env.bytes.len(), Ordering::Relaxed);
                    n += fail_all([r]);
                    dropped += 1;
                }
                debug!(peer = %node, cause = %why, dropped, failed = n, "SIP to peer failed");
            }
        }
        batch.clear();
        receipts.clear();
    }
}

/// The indices of an answer `refused I J K` (the messages of a batch the receiver could not
/// take).
fn refused_indices(answer: &[u8]) -> Vec<usize> {
    let text = String::from_utf8_lossy(answer);
    match text.strip_prefix("refused") {
        Some(rest) => rest
            .split_ascii_whitespace()
            .filter_map(|i| i.parse().ok())
            .collect(),
        None => Vec::new(),
    }
}

impl PeerLink for PeerSip {
    fn send(&self, node: String, env: SipEnvelope, receipt: Option<Receipt>) -> Result<(), String> {
        self.enqueue(node, env, receipt)
    }
}

/// Receives SIP from other nodes and hands it to the workers, waiting (at most `wait`)
/// while a worker's inbox is full: the sender's queue then fills and its workers answer
/// 503, instead of messages vanishing here.
pub struct SipHandler {
    core: CoreHandle,
    wait: Duration,
}

impl SipHandler {
    /// A handler feeding `core`, waiting at most `wait` for a full worker.
    pub fn new(core: CoreHandle, wait: Duration) -> SipHandler {
        SipHandler { core, wait }
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
                    let deadline = tokio::time::Instant::now() + self.wait;
                    let mut refused = Vec::new();
                    for (i, env) in batch.into_iter().enumerate() {
                        // After one refusal every later message is refused too, so that
                        // what does go through keeps its order.
                        let queued = refused.is_empty()
                            && matches!(
                                tokio::time::timeout_at(
                                    deadline,
                                    self.core.from_peer(node.clone(), env),
                                )
                                .await,
                                Ok(true)
                            );
                        if !queued {
                            refused.push(i);
                        }
                    }
                    if refused.is_empty() {
                        Bytes::new()
                    } else {
                        let list: Vec<String> = refused.iter().map(|i| i.to_string()).collect();
                        Bytes::from(format!("refused {}", list.join(" ")))
                    }
                }
                Err(e) => Bytes::from(format!("bad envelope: {e}")),
            }
        })
    }
}

#[cfg(test)]
mod account_tests {
    use super::*;

    fn record(version: u64, enabled: bool) -> AccountRecord {
        AccountRecord {
            version,
            enabled,
            ha1_md5: [version as u8; 16],
            ha1_sha256: [version as u8; 32],
            display_name: None,
        }
    }

    fn put(version: u64) -> Bytes {
        account_op(&PushOp::Put {
            aor: "alice@example.test".into(),
            account: record(version, true),
        })
    }

    fn register(cseq: u32) -> Bytes {
        let info = RegisterInfo {
            aor: "alice@example.test".into(),
            call_id: "c1".into(),
            cseq,
            expires: Some(600),
            contacts: RegisterContacts::Set(vec![ContactInfo {
                uri: "sip:alice@192.0.2.1:5060".into(),
                expires: None,
                q: None,
            }]),
            flow: None,
            received: None,
        };
        encode(&RegisterOp::new(info, &RegistrarPolicy::default()))
    }

    fn apply(current: Option<&Bytes>, op: &[u8]) -> (Option<Bytes>, u64, Bytes) {
        RegistrarUpdater
            .apply("alice@example.test", current, op, 1_000_000)
            .unwrap()
    }

    #[test]
    fn an_account_lives_beside_the_bindings_and_only_newer_changes_apply() {
        let (v, until, reply) = apply(None, &put(5));
        assert_eq!(until, NEVER, "an account does not expire");
        assert!(decode::<bool>(&reply).unwrap());
        let v = v.unwrap();
        assert_eq!(decode_entry(&v).unwrap().account, Some(record(5, true)));
        assert!(!has_bindings(&v));
        // A REGISTER keeps the account; the bindings are read as before (an earlier version's
        // reader decodes the bindings at the front and ignores the rest).
        let (v, until, _) = apply(Some(&v), &register(1));
        let v = v.unwrap();
        assert_eq!(until, NEVER);
        let e = decode_entry(&v).unwrap();
        assert_eq!(e.account, Some(record(5, true)));
        assert_eq!(e.bindings.current(1_000_000).len(), 1);
        assert_eq!(decode::<Bindings>(&v).unwrap().current(1_000_000).len(), 1);
        assert!(has_bindings(&v));
        // An older change (a push sent again after a failover) changes nothing.
        let (v2, _, reply) = apply(Some(&v), &put(4));
        assert!(!decode::<bool>(&reply).unwrap());
        assert_eq!(
            decode_entry(&v2.unwrap()).unwrap().account,
            Some(record(5, true))
        );
        // A newer one replaces it.
        let (v, _, _) = apply(
            Some(&v),
            &account_op(&PushOp::Put {
                aor: "alice@example.test".into(),
                account: record(9, false),
            }),
        );
        let v = v.unwrap();
        assert_eq!(decode_entry(&v).unwrap().account, Some(record(9, false)));
        // A removal takes the account and leaves the bindings, which expire as before.
        let (v, until, _) = apply(
            Some(&v),
            &account_op(&PushOp::Remove {
                aor: "alice@example.test".into(),
                version: 10,
            }),
        );
        let e = decode_entry(&v.unwrap()).unwrap();
        assert_eq!((e.account, e.seen), (None, 10));
        assert!(until < NEVER && until > 1_000_000);
        // Removing an account with no bindings leaves nothing.
        let (v, _, _) = apply(None, &put(3));
        let (v, _, _) = apply(
            v.as_ref(),
            &account_op(&PushOp::Remove {
                aor: "alice@example.test".into(),
                version: 4,
            }),
        );
        assert!(v.is_none());
    }

    /// alice's credentials (password "pw") for REGISTER, answering a nonce issued at
    /// `NOW_MS` with count `nc`.
    fn creds(password: &str, nc: u32) -> Box<AuthCheck> {
        use crate::sip::digest::{Challenge, Credentials, NonceKey, NonceKeys};
        let keys = NonceKeys::new(NonceKey::new(1, [3; 32]), None).unwrap();
        let challenge = Challenge {
            realm: "example.test".into(),
            nonce: keys.issue(1_000_000, [1; 8], "example.test"),
            algorithm: Algorithm::Sha256,
            stale: false,
            opaque: None,
        };
        Box::new(AuthCheck {
            credentials: Credentials::answer(
                &challenge,
                "alice",
                password,
                "REGISTER",
                "sip:example.test",
                "cn",
                nc,
            ),
            method: "REGISTER".into(),
            issued_ms: Some(1_000_000),
            lifetime_ms: 300_000,
        })
    }

    fn pw_account(version: u64, enabled: bool) -> Bytes {
        account_op(&PushOp::Put {
            aor: "alice@example.test".into(),
            account: AccountRecord {
                version,
                enabled,
                ha1_md5: Ha1::compute(Algorithm::Md5, "alice", "example.test", "pw")
                    .as_bytes()
                    .try_into()
                    .unwrap(),
                ha1_sha256: Ha1::compute(Algorithm::Sha256, "alice", "example.test", "pw")
                    .as_bytes()
                    .try_into()
                    .unwrap(),
                display_name: None,
            },
        })
    }

    fn authed_register(auth: Box<AuthCheck>) -> Bytes {
        let op: RegisterOp = decode(&register(1)).unwrap();
        tagged(&RegistrarOp::Register { op, auth })
    }

    fn reply_of(out: &(Option<Bytes>, u64, Bytes)) -> RegisterReply {
        decode(&out.2).unwrap()
    }

    #[test]
    fn credentials_are_checked_against_the_account_at_the_owner() {
        // No account held: the entry node is told to reload it.
        let out = apply(None, &authed_register(creds("pw", 1)));
        assert!(matches!(reply_of(&out), RegisterReply::NoAccount));
        assert!(out.0.is_none(), "nothing stored");
        let (v, _, _) = apply(None, &pw_account(3, true));
        let v = v.unwrap();
        // A wrong password: refused, nothing changes.
        let out = apply(Some(&v), &authed_register(creds("nope", 1)));
        assert!(matches!(
            reply_of(&out),
            RegisterReply::Unauthorized { stale: false }
        ));
        assert_eq!(out.0.as_ref(), Some(&v));
        // The right one: bound, and the count recorded.
        let out = apply(Some(&v), &authed_register(creds("pw", 1)));
        assert!(matches!(reply_of(&out), RegisterReply::Ok(b) if b.len() == 1));
        let v = out.0.unwrap();
        assert_eq!(decode_entry(&v).unwrap().nonces.len(), 1);
        // The same count again (a replay): stale, wherever it arrived.
        let out = apply(Some(&v), &authed_register(creds("pw", 1)));
        assert!(matches!(
            reply_of(&out),
            RegisterReply::Unauthorized { stale: true }
        ));
        // Requests other than REGISTER are checked the same way.
        let out = apply(
            Some(&v),
            &tagged(&RegistrarOp::Authenticate(creds("pw", 2))),
        );
        assert!(matches!(reply_of(&out), RegisterReply::Ok(b) if b.is_empty()));
        let v = out.0.unwrap();
        assert_eq!(
            decode_entry(&v).unwrap().bindings.current(1_000_000).len(),
            1
        );
        // A blocked account: refused even with the right password.
        let (v, _, _) = apply(Some(&v), &pw_account(4, false));
        let out = apply(v.as_ref(), &authed_register(creds("pw", 3)));
        assert!(matches!(reply_of(&out), RegisterReply::Blocked));
    }

    #[test]
    fn an_alias_names_its_account_until_removed() {
        let alias = |version: u64| {
            account_op(&PushOp::Alias {
                alias: "al@example.test".into(),
                target: "alice@example.test".into(),
                version,
            })
        };
        let (v, until, _) = apply(None, &alias(7));
        assert_eq!(until, NEVER, "an alias does not expire");
        let e = decode_entry(&v.clone().unwrap()).unwrap();
        assert_eq!(e.alias_of.as_deref(), Some("alice@example.test"));
        assert!(!has_bindings(v.as_ref().unwrap()));
        // An older removal changes nothing; a newer one leaves nothing.
        let remove = |version: u64| {
            account_op(&PushOp::AliasRemove {
                alias: "al@example.test".into(),
                version,
            })
        };
        let (v2, _, _) = apply(v.as_ref(), &remove(6));
        assert_eq!(v2, v);
        let (v3, _, _) = apply(v.as_ref(), &remove(8));
        assert!(v3.is_none());
    }

    #[test]
    fn an_entry_of_the_previous_version_keeps_its_account() {
        let v1 = encode(&AorEntryV1 {
            bindings: Bindings::new(),
            account: Some(record(5, true)),
            seen: 5,
        });
        let e = decode_entry(&v1).unwrap();
        assert_eq!(e.account, Some(record(5, true)));
        assert_eq!(e.seen, 5);
        assert!(e.nonces.is_empty());
    }

    #[test]
    fn an_entry_written_by_an_earlier_version_is_read() {
        let mut b = Bindings::new();
        let info = RegisterOp::new(
            decode::<RegisterOp>(&register(1)).unwrap().info().0,
            &RegistrarPolicy::default(),
        )
        .info()
        .0;
        b.apply_register(&info, 1_000_000, &RegistrarPolicy::default())
            .unwrap();
        let old = encode(&b);
        let (v, _, _) = apply(Some(&old), &put(2));
        let e = decode_entry(&v.unwrap()).unwrap();
        assert_eq!(e.bindings.current(1_000_000).len(), 1);
        assert_eq!(e.account, Some(record(2, true)));
        // Garbage is an error, not a panic.
        assert!(RegistrarUpdater
            .apply("alice@example.test", None, &[OP_TAG, 0xFF, 0xFF], 1)
            .is_err());
    }
}

#[cfg(test)]
mod number_tests {
    use super::*;

    const NOW: u64 = 1_000_000;

    fn push(version: u64, route: Option<NumberRoute>) -> Bytes {
        account_op(&PushOp::Number {
            number: "+15550100".into(),
            route,
            version,
        })
    }

    fn apply(current: Option<&Bytes>, op: &[u8], now: u64) -> (Option<Bytes>, u64, bool) {
        let (v, until, reply) = RegistrarUpdater
            .apply("+15550100", current, op, now)
            .unwrap();
        (v, until, decode::<bool>(&reply).unwrap())
    }

    fn route_of(v: &Option<Bytes>) -> Option<NumberRoute> {
        decode_entry(v.as_ref().expect("an entry"))
            .unwrap()
            .number
            .expect("a number held")
            .route
    }

    fn alice() -> Option<NumberRoute> {
        Some(NumberRoute::Account("alice@example.test".into()))
    }

    fn carrier() -> Option<NumberRoute> {
        Some(NumberRoute::Uri("sip:+15550100@carrier.test".into()))
    }

    #[test]
    fn a_number_is_held_under_its_key_and_only_newer_routings_apply() {
        let (v, until, newer) = apply(None, &push(5, alice()), NOW);
        assert!(newer);
        assert_eq!(until, NEVER, "a routed number does not expire");
        assert_eq!(route_of(&v), alice());
        assert!(!has_bindings(v.as_ref().unwrap()));
        // An older change (a push sent again after a failover, a reload read earlier)
        // changes nothing.
        let (v2, until, newer) = apply(v.as_ref(), &push(4, carrier()), NOW);
        assert!(!newer);
        assert_eq!((route_of(&v2), until), (alice(), NEVER));
        // A newer one moves it to another network.
        let (v, _, newer) = apply(v.as_ref(), &push(7, carrier()), NOW);
        assert!(newer);
        assert_eq!(route_of(&v), carrier());
        // Unrouted: held as such for a while, so that an older routing cannot come back.
        let (v, until, _) = apply(v.as_ref(), &push(8, None), NOW);
        assert_eq!(route_of(&v), None);
        assert_eq!(until, NOW + UNROUTED_TTL_MS);
        let (v2, _, newer) = apply(v.as_ref(), &push(7, carrier()), NOW + 1_000);
        assert!(!newer, "a reload read before the unrouting is refused");
        assert_eq!(route_of(&v2), None);
        // Routed again later: kept for good once more.
        let (v, until, _) = apply(v.as_ref(), &push(9, alice()), NOW + 2_000);
        assert_eq!((route_of(&v), until), (alice(), NEVER));
    }

    #[test]
    fn an_unrouted_number_is_a_fresh_entry_when_nothing_was_held() {
        // A reload that found the number unrouted: held for the same while (a negative
        // cache shared by every node that asks).
        let (v, until, newer) = apply(None, &push(3, None), NOW);
        assert!(newer);
        assert_eq!(route_of(&v), None);
        assert_eq!(until, NOW + UNROUTED_TTL_MS);
        // Version 0 (nothing ever changed) is not newer than an empty entry: nothing held.
        let (v, _, newer) = apply(None, &push(0, None), NOW);
        assert!(!newer);
        assert!(v.is_none());
    }

    #[test]
    fn a_number_entry_keeps_the_format_earlier_versions_read() {
        let (v, _, _) = apply(None, &push(5, alice()), NOW);
        let v = v.unwrap();
        // The previous version's decoder reads its fields and ignores the number after them.
        let v2 = decode::<AorEntryV2>(&v).unwrap();
        assert_eq!(v2.seen, 5);
        assert!(v2.account.is_none() && v2.alias_of.is_none());
        assert!(decode::<Bindings>(&v).unwrap().is_empty());
        // An entry the previous version wrote is read with no number.
        let old = encode(&AorEntryV2 {
            bindings: Bindings::new(),
            account: Some(AccountRecord {
                version: 2,
                enabled: true,
                ha1_md5: [1; 16],
                ha1_sha256: [1; 32],
                display_name: None,
            }),
            seen: 2,
            nonces: RecentNonces::default(),
            alias_of: Some("alice@example.test".into()),
        });
        let e = decode_entry(&old).unwrap();
        assert_eq!(e.seen, 2);
        assert!(e.account.is_some());
        assert_eq!(e.alias_of.as_deref(), Some("alice@example.test"));
        assert!(e.number.is_none());
    }
}
