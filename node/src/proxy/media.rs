//! Media relay in the proxy: which SIP messages get their SDP pointed at a relay, and when a
//! call's relay session is freed. The core calls [`MediaGate`] at three places (a message
//! from the network, an initial INVITE about to be forwarded, a final response) and hands
//! back the [`Done`] events the gate's tasks send it.
//!
//! # Who relays
//! SDP is rewritten by the node where it *enters the farm*: a message that came from the
//! network (a phone, a gateway, another domain), never one that came from another node. A
//! call crossing two nodes therefore has its offer rewritten at the caller's node and its
//! answer at the callee's node; both ask the same relay (the owner of the Call-ID on the
//! `media_relay` ring), so the call is relayed once, with no state shared between the nodes
//! and no marker in the messages. Each request to the relay carries the IP address the
//! message came from (its writer, or the writer's NAT): the relay lets the writer's media come
//! from there as well as from the addresses its SDP names, and from nowhere else.
//!
//! Only the node where a call's initial INVITE enters creates its session (when
//! `relay_media` is on there): it does so when the proxy has found where to send the INVITE,
//! so requests answered at once (404, 503, loops) cost no relay session. Every other SDP
//! (answers in 18x/2xx, re-INVITEs, UPDATE, PRACK, the answer in an ACK after a late offer)
//! only updates an existing session; when no relay holds one, the body goes on untouched.
//!
//! # Freeing
//! A BYE entering the farm frees the call's session (at once, without waiting for the
//! answer). A final failure response to an initial INVITE (busy, declined, CANCEL's 487,
//! Timer C's 408) frees it at the node that created it. Relays free idle sessions on their
//! own.
//!
//! # Order
//! A message waiting for a relay holds back the later messages of the same call that came
//! from the network (a 200 must not overtake the 183 before it); other calls are not held.
//! At most [`MAX_HELD`] messages, and [`DEFAULT_HELD_BYTES`] bytes of them (`sip_held_bytes`),
//! wait in each worker; beyond, new ones are dropped (UDP senders retransmit) and counted in
//! `relay_held_dropped_total`.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use onehop_overlay::metrics::{Metric, Metrics};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::core::{Event, Hop};
use crate::relay::sdp::{is_sdp_type, Sdp};
use crate::relay::{Allocation, RelayControl};
use crate::sip::transaction::TransactionKey;
use crate::sip::{Message, Method, Request};

/// Most messages held back for calls waiting for a relay, over all calls.
pub const MAX_HELD: usize = 4096;
/// Default most bytes of messages held back for calls waiting for a relay, over all calls
/// (`sip_held_bytes`; a message counts its encoded length).
pub const DEFAULT_HELD_BYTES: usize = 4 << 20;
/// Most messages held back for one call.
const MAX_HELD_PER_CALL: usize = 64;
/// Most initial INVITEs waiting for a relay at once; beyond, calls go unrelayed.
const MAX_ALLOCATING: usize = 10_000;
/// Most calls remembered between their relay session's creation and their INVITE's final
/// response (older entries are dropped past this; the relay's idle timeout frees those).
const MAX_TRACKED: usize = 200_000;
/// Seconds between two warnings about calls left unrelayed.
const WARN_EVERY: u64 = 10;

/// The proxy's link to the relays (set in [`super::ProxyConfig`]).
#[derive(Clone)]
pub struct MediaRelay {
    /// The relays.
    pub control: Arc<dyn RelayControl>,
    /// Whether calls entering through this node get a relay session (`relay_media`).
    /// Either way, SDP of calls relayed elsewhere is rewritten when it enters here.
    pub allocate: bool,
}

impl std::fmt::Debug for MediaRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaRelay")
            .field("allocate", &self.allocate)
            .finish_non_exhaustive()
    }
}

pub use crate::sip::engine::Held;

/// What a relay task reports to the core.
pub enum Done {
    /// A message's SDP was handled.
    Inbound {
        /// Its call.
        call_id: String,
        /// The message, rewritten or not.
        held: Held,
    },
    /// An initial INVITE's session was requested.
    Invite {
        /// Its server transaction.
        key: TransactionKey,
        /// Its call.
        call_id: String,
        /// The request with its offer rewritten (`None`: forward it as it is).
        request: Option<Request>,
        /// How it went.
        allocation: Allocation,
    },
}

pub use crate::sip::engine::Resume;

enum Plan {
    Pass,
    Delete(String),
    Update {
        call_id: String,
        from_tag: String,
        response: bool,
        sdp: Sdp,
    },
}

/// The IP address a message from the network came from: its source, else its hop's address.
fn source_ip(from: &Hop, source: Option<SocketAddr>) -> Option<IpAddr> {
    match (source, from) {
        (Some(s), _) => Some(s.ip()),
        (None, Hop::Net { remote, .. }) => Some(remote.ip()),
        (None, Hop::Peer { .. }) => None,
    }
}

struct Counters {
    ok: Metric,
    fallback: Metric,
    unrelayed: Metric,
    malformed: Metric,
    held_dropped: Metric,
}

/// The relay-related state of the proxy core.
pub struct MediaGate {
    control: Arc<dyn RelayControl>,
    allocate: bool,
    tx: mpsc::UnboundedSender<Event>,
    /// Calls with a message at a relay now, and the messages that arrived behind it.
    queues: HashMap<String, VecDeque<(Held, usize)>>,
    held: usize,
    held_bytes: usize,
    max_held_bytes: usize,
    /// INVITE server transactions waiting for a session; `true` once they ended meanwhile.
    allocating: HashMap<TransactionKey, bool>,
    /// INVITE server transactions with a session created here, until their final response.
    allocated: HashMap<TransactionKey, (String, Instant)>,
    counters: Counters,
    last_warn: Option<Instant>,
    unwarned: u64,
}

/// The SDP of a message: `None` without one, `Some(None)` when it is malformed.
fn sdp_of(msg_headers: &crate::sip::Headers, body: &bytes::Bytes) -> Option<Option<Sdp>> {
    if body.is_empty() || !msg_headers.content_type().is_some_and(is_sdp_type) {
        return None;
    }
    if msg_headers.contains("Content-Encoding") {
        return Some(None);
    }
    Some(Sdp::parse(body.clone()))
}

fn with_body(mut msg: Message, sdp: &Sdp, addrs: &[Option<SocketAddr>]) -> Message {
    let body = sdp.rewrite(addrs);
    let ct = msg.headers().content_type().map(str::to_string);
    match &mut msg {
        Message::Request(r) => r.set_body(body, ct.as_deref()),
        Message::Response(r) => r.set_body(body, ct.as_deref()),
    }
    msg
}

impl MediaGate {
    /// A gate sending its results to the core through `tx`.
    pub fn new(link: MediaRelay, tx: mpsc::UnboundedSender<Event>, metrics: &Metrics) -> MediaGate {
        const ALLOC: &str = "Media relay sessions requested for calls entering here, by result.";
        MediaGate {
            control: link.control,
            allocate: link.allocate,
            tx,
            queues: HashMap::new(),
            held: 0,
            held_bytes: 0,
            max_held_bytes: DEFAULT_HELD_BYTES,
            allocating: HashMap::new(),
            allocated: HashMap::new(),
            counters: Counters {
                ok: metrics.counter("relay_allocations_total{result=\"ok\"}", ALLOC),
                fallback: metrics.counter("relay_allocations_total{result=\"fallback\"}", ALLOC),
                unrelayed: metrics.counter("relay_allocations_total{result=\"unrelayed\"}", ALLOC),
                malformed: metrics.counter(
                    "relay_sdp_malformed_total",
                    "SDP bodies left untouched because they could not be parsed.",
                ),
                held_dropped: metrics.counter(
                    "relay_held_dropped_total",
                    "Messages dropped while their call waited for a relay (too many waiting).",
                ),
            },
            last_warn: None,
            unwarned: 0,
        }
    }

    fn plan(&self, msg: &Message) -> Plan {
        let h = msg.headers();
        let (response, relevant) = match msg {
            Message::Request(r) => {
                let in_dialog = h.to().is_some_and(|t| t.tag().is_some());
                match r.method {
                    Method::Bye => {
                        return match h.call_id() {
                            Some(c) => Plan::Delete(c.to_string()),
                            None => Plan::Pass,
                        }
                    }
                    Method::Invite => (false, in_dialog),
                    Method::Update | Method::Prack | Method::Ack => (false, true),
                    _ => (false, false),
                }
            }
            Message::Response(r) => {
                let method_ok = h.cseq().is_some_and(|c| {
                    matches!(c.method, Method::Invite | Method::Update | Method::Prack)
                });
                (true, method_ok && (101..300).contains(&r.status))
            }
        };
        if !relevant {
            return Plan::Pass;
        }
        let sdp = match sdp_of(h, msg.body()) {
            None => return Plan::Pass,
            Some(None) => {
                self.counters.malformed.inc();
                return Plan::Pass;
            }
            Some(Some(s)) if s.has_targets() => s,
            Some(Some(_)) => return Plan::Pass,
        };
        let (Some(call_id), Some(from_tag)) = (h.call_id(), h.from().and_then(|f| f.tag())) else {
            return Plan::Pass;
        };
        if !self.control.available(call_id) {
            return Plan::Pass;
        }
        Plan::Update {
            call_id: call_id.to_string(),
            from_tag: from_tag.to_string(),
            response,
            sdp,
        }
    }

    /// A message from `from`: returns it when the core handles it now, `None` when the gate
    /// holds it (it comes back as a [`Done`]) or dropped it.
    pub fn inbound(
        &mut self,
        msg: Message,
        from: &Hop,
        source: Option<SocketAddr>,
    ) -> Option<Message> {
        if !matches!(from, Hop::Net { .. }) {
            return Some(msg);
        }
        if !self.queues.is_empty() {
            if let Some(q) = msg.headers().call_id().and_then(|c| self.queues.get_mut(c)) {
                // Held messages are few (those behind a call's relay request): encoding one
                // to learn its size costs less than keeping sizes on every message.
                let size = msg.to_bytes().len();
                if q.len() >= MAX_HELD_PER_CALL
                    || self.held >= MAX_HELD
                    || self.held_bytes + size > self.max_held_bytes
                {
                    self.counters.held_dropped.inc();
                    return None;
                }
                q.push_back((
                    Held {
                        msg,
                        from: from.clone(),
                        source,
                    },
                    size,
                ));
                self.held += 1;
                self.held_bytes += size;
                return None;
            }
        }
        let held = Held {
            msg,
            from: from.clone(),
            source,
        };
        match self.start(held) {
            Some(h) => Some(h.msg),
            None => None,
        }
    }

    /// Starts what `held` needs: returns it when it can go on now, else holds its call.
    fn start(&mut self, held: Held) -> Option<Held> {
        match self.plan(&held.msg) {
            Plan::Pass => Some(held),
            Plan::Delete(call_id) => {
                let fut = self.control.delete(call_id);
                tokio::spawn(fut);
                Some(held)
            }
            Plan::Update {
                call_id,
                from_tag,
                response,
                sdp,
            } => {
                self.queues.insert(call_id.clone(), VecDeque::new());
                // Its writer (or the writer's NAT) may send media from where it came from.
                let source = source_ip(&held.from, held.source);
                let fut =
                    self.control
                        .update(call_id.clone(), from_tag, response, sdp.targets(), source);
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let held = match fut.await {
                        Some(addrs) => Held {
                            msg: with_body(held.msg, &sdp, &addrs),
                            ..held
                        },
                        None => held,
                    };
                    let _ = tx.send(Event::Media(Box::new(Done::Inbound { call_id, held })));
                });
                None
            }
        }
    }

    /// An initial INVITE entering the farm from `from` is about to be forwarded: returns
    /// `true` when the gate requested a relay session first (the core forwards on
    /// [`Resume::Forward`]). The caller may send media from the INVITE's source address.
    pub fn invite_out(&mut self, key: &TransactionKey, req: &Request, from: &Hop) -> bool {
        if !self.allocate
            || req.method != Method::Invite
            || req.headers.to().is_some_and(|t| t.tag().is_some())
        {
            return false;
        }
        let (Some(call_id), Some(from_tag)) = (
            req.headers.call_id(),
            req.headers.from().and_then(|f| f.tag()),
        ) else {
            return false;
        };
        let sdp = match sdp_of(&req.headers, &req.body) {
            None => None,
            Some(Some(s)) if s.has_targets() => Some(s),
            Some(Some(_)) => return false,
            Some(None) => {
                self.counters.malformed.inc();
                return false;
            }
        };
        if !self.control.available(call_id) {
            self.counters.unrelayed.inc();
            self.warn_unrelayed(call_id, "no live media_relay member");
            return false;
        }
        if self.allocating.len() >= MAX_ALLOCATING {
            self.counters.unrelayed.inc();
            self.warn_unrelayed(call_id, "too many calls waiting for a relay");
            return false;
        }
        self.allocating.insert(key.clone(), false);
        let media = sdp.as_ref().map(Sdp::targets).unwrap_or_default();
        let fut = self.control.allocate(
            call_id.to_string(),
            from_tag.to_string(),
            media,
            source_ip(from, None),
        );
        let tx = self.tx.clone();
        let key = key.clone();
        let call_id = call_id.to_string();
        let req = sdp.as_ref().map(|_| req.clone());
        tokio::spawn(async move {
            let allocation = fut.await;
            let request = match (&allocation, sdp, req) {
                (Allocation::Relayed { addrs, .. }, Some(sdp), Some(req)) => {
                    match with_body(Message::Request(req), &sdp, addrs) {
                        Message::Request(r) => Some(r),
                        Message::Response(_) => None,
                    }
                }
                _ => None,
            };
            let done = Done::Invite {
                key,
                call_id,
                request,
                allocation,
            };
            let _ = tx.send(Event::Media(Box::new(done)));
        });
        true
    }

    fn warn_unrelayed(&mut self, call_id: &str, why: &str) {
        let now = Instant::now();
        match self.last_warn {
            Some(t) if now.duration_since(t).as_secs() < WARN_EVERY => {
                self.unwarned += 1;
                debug!(%call_id, %why, "call not relayed");
            }
            _ => {
                warn!(%call_id, %why, since_last = self.unwarned, "call not relayed: media goes end to end");
                self.last_warn = Some(now);
                self.unwarned = 0;
            }
        }
    }

    /// A relay task finished: what the core does next.
    pub fn done(&mut self, done: Done) -> Resume {
        match done {
            Done::Invite {
                key,
                call_id,
                request,
                allocation,
            } => {
                let ended = self.allocating.remove(&key).unwrap_or(true);
                match allocation {
                    Allocation::Relayed {
                        relay, fallback, ..
                    } => {
                        if fallback {
                            self.counters.fallback.inc();
                        } else {
                            self.counters.ok.inc();
                        }
                        debug!(%call_id, %relay, fallback, "call relayed");
                        if ended {
                            tokio::spawn(self.control.delete(call_id));
                            return Resume::Nothing;
                        }
                        self.track(key.clone(), call_id);
                    }
                    Allocation::Unrelayed(why) => {
                        self.counters.unrelayed.inc();
                        self.warn_unrelayed(&call_id, &why);
                        if ended {
                            return Resume::Nothing;
                        }
                    }
                }
                Resume::Forward(key, request)
            }
            Done::Inbound { call_id, held } => {
                let mut out = vec![held];
                let mut behind = self.queues.remove(&call_id).unwrap_or_default();
                while let Some((next, size)) = behind.pop_front() {
                    self.held = self.held.saturating_sub(1);
                    self.held_bytes = self.held_bytes.saturating_sub(size);
                    match self.start(next) {
                        Some(h) => out.push(h),
                        None => {
                            // At a relay again (its call holds a new queue): the rest waits
                            // behind it (still counted).
                            self.queues.entry(call_id).or_default().extend(behind);
                            return Resume::Dispatch(out);
                        }
                    }
                }
                Resume::Dispatch(out)
            }
        }
    }

    fn track(&mut self, key: TransactionKey, call_id: String) {
        if self.allocated.len() >= MAX_TRACKED {
            let now = Instant::now();
            self.allocated
                .retain(|_, (_, since)| now.duration_since(*since).as_secs() < 600);
            if self.allocated.len() >= MAX_TRACKED {
                return;
            }
        }
        self.allocated.insert(key, (call_id, Instant::now()));
    }

    /// A server transaction sends its final response `status`: a failure of an initial
    /// INVITE whose session was created here frees it.
    pub fn final_response(&mut self, key: &TransactionKey, status: u16) {
        if self.allocating.is_empty() && self.allocated.is_empty() {
            return;
        }
        if let Some(ended) = self.allocating.get_mut(key) {
            *ended = true;
            return;
        }
        if let Some((call_id, _)) = self.allocated.remove(key) {
            if status >= 300 {
                debug!(%call_id, status, "call failed: relay session freed");
                tokio::spawn(self.control.delete(call_id));
            }
        }
    }

    /// Messages held and sessions being requested (for tests).
    pub fn waiting(&self) -> (usize, usize) {
        (self.held, self.allocating.len())
    }

    /// Bytes of the messages held (for tests).
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Holds at most `bytes` of messages behind calls waiting for a relay (`sip_held_bytes`).
    pub fn with_held_bytes(mut self, bytes: usize) -> MediaGate {
        self.max_held_bytes = bytes;
        self
    }
}

#[cfg(test)]
#[path = "media_tests.rs"]
mod tests;
