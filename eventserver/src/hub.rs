//! The publish/subscribe hub: sessions, subscriptions, retained values and permissions.
//!
//! The hub holds no sockets: each session gives it a bounded queue of encoded frames and the
//! connection (so the hub can close a slow subscriber or a replaced session). Every decision is
//! made under one lock, without awaiting.
//!
//! # Queue bounds
//! A subscriber's queue is bounded twice: in frames (the channel's depth, `subscriber_queue`)
//! and in bytes (a [`ByteBudget`], `subscriber_queue_bytes`): every queued frame carries a
//! [`Charge`] of its length, given back when the session's writer has handed the frame to
//! QUIC. A subscriber whose queue is full by either bound is disconnected as too slow (never
//! waited for: the hub serves everyone under one lock), with a log line naming the bound and
//! a count in `eventserver_slow_subscribers_by_bound_total{bound=...}`. A broadcast frame is
//! encoded once and shared by every queue it is in (and, written with `write_chunk`, by the
//! QUIC send buffers too), so the memory the queues hold is at most the byte bound per topic
//! for broadcasts plus each session's own frames (its snapshot), whatever the number of
//! subscribers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use onehop_overlay::budget::{ByteBudget, Charge};
use onehop_overlay::client::seq_base;
use onehop_overlay::crl::CrlStore;
use onehop_overlay::identity::Identity;
use onehop_overlay::metrics::{Metric, Metrics};
use onehop_overlay::status::{Kind, NetworkStatus};
use onehop_overlay::wire::{
    encode_frame, Announce, CloseCode, Event, MemberEvent, Payload, ServerMsg, SessionMember, Topic,
};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Most endpoints a member may announce (a node announces five or six).
pub const MAX_ENDPOINTS: usize = 32;
/// Longest service name of an announced endpoint, in bytes.
pub const MAX_SERVICE_NAME: usize = 32;

/// Why a client's message was refused; the session ends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// A frame queued for one session, holding its length of the session's byte budget until it
/// is dropped (after the session's writer handed it to QUIC).
#[derive(Debug)]
pub struct Queued {
    /// The encoded frame (length prefix included).
    pub frame: Bytes,
    _charge: Charge,
}

impl Queued {
    /// `frame` charged to `budget`; `None` when it does not fit.
    pub fn new(frame: Bytes, budget: &ByteBudget) -> Option<Queued> {
        let charge = budget.try_take(frame.len())?;
        Some(Queued {
            frame,
            _charge: charge,
        })
    }
}

/// Which bound of a subscriber's queue a frame did not fit under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overflow {
    /// The queue holds `subscriber_queue` frames.
    Entries,
    /// The queue holds `subscriber_queue_bytes` bytes.
    Bytes,
    /// The session's writer is gone (the session is ending).
    Closed,
}

impl Overflow {
    fn label(self) -> &'static str {
        match self {
            Overflow::Entries => "entries",
            Overflow::Bytes => "bytes",
            Overflow::Closed => "closed",
        }
    }
}

struct Session {
    id: Identity,
    member: Option<SessionMember>,
    topics: u8,
    tx: mpsc::Sender<Queued>,
    budget: ByteBudget,
    conn: Option<quinn::Connection>,
    left: bool,
    /// Disconnected as too slow; nothing more is queued for it.
    cut: bool,
}

impl Session {
    /// Queues `frame` without waiting.
    fn offer(&self, frame: &Bytes) -> Result<(), Overflow> {
        let Some(q) = Queued::new(frame.clone(), &self.budget) else {
            return Err(Overflow::Bytes);
        };
        match self.tx.try_send(q) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(Overflow::Entries),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Overflow::Closed),
        }
    }
}

#[derive(Default)]
struct State {
    sessions: HashMap<u64, Session>,
    by_name: HashMap<String, u64>,
    network: Option<Retained>,
    crl: Option<Bytes>,
}

/// The network status in force, kept whole: taken from the active manager's whole statuses
/// and brought forward by its deltas, so that a subscriber gets all of it at once.
struct Retained {
    status: NetworkStatus,
    /// [`NetworkStatus::digest`] of `status`.
    digest: u64,
    /// The publication it was last brought to, for the event handed out.
    origin: String,
    seq: u64,
    /// `ServerMsg::Event` with the status, encoded when first needed after a change.
    frame: Option<Bytes>,
}

impl Retained {
    fn key(&self) -> (u64, u64) {
        (self.status.term, self.status.version)
    }

    fn event(&self) -> Event {
        Event {
            origin: self.origin.clone(),
            origin_kind: Kind::Manager,
            seq: self.seq,
            payload: Payload::Network(self.status.clone()),
        }
    }

    /// The frame given to a new subscriber.
    fn frame(&mut self) -> Bytes {
        match &self.frame {
            Some(f) => f.clone(),
            None => {
                let f = encode_frame(&ServerMsg::Event(self.event()));
                self.frame = Some(f.clone());
                f
            }
        }
    }
}

struct Counters {
    sessions: Metric,
    members: Metric,
    published: Metric,
    delivered: Metric,
    delivered_bytes: Metric,
    slow: Metric,
    refused: Metric,
    slow_entries: Metric,
    slow_bytes: Metric,
    queued: Metric,
    deepest: Metric,
    queued_bytes: Metric,
    deepest_bytes: Metric,
    dropped: Metric,
    term: Metric,
    version: Metric,
}

/// The hub. Cheap to share behind an `Arc`.
pub struct Hub {
    name: String,
    seq: AtomicU64,
    state: Mutex<State>,
    crl: Arc<CrlStore>,
    counters: Counters,
}

/// Which kinds may publish on a topic.
pub fn may_publish(kind: Kind, topic: Topic) -> Result<(), String> {
    let ok = match topic {
        Topic::Members => false,
        Topic::Network | Topic::Manager => kind == Kind::Manager,
        Topic::Crl => kind == Kind::Admin,
        Topic::Stats => kind.is_member(),
        Topic::Events => kind.is_member() || kind == Kind::Admin,
    };
    if ok {
        return Ok(());
    }
    Err(match topic {
        Topic::Members => "only event servers publish on members".to_string(),
        Topic::Network => "only managers may publish network status".to_string(),
        Topic::Manager => "only managers may publish on manager".to_string(),
        Topic::Crl => "only admins may publish revocation lists".to_string(),
        Topic::Stats | Topic::Events => format!("a {kind} may not publish on {topic:?}"),
    })
}

impl Hub {
    /// A hub named after the event server's certificate.
    pub fn new(name: String, crl: Arc<CrlStore>, metrics: &Metrics) -> Hub {
        const SLOW_BY_BOUND: &str =
            "Subscribers disconnected as too slow, by the bound their queue reached.";
        Hub {
            name,
            seq: AtomicU64::new(seq_base()),
            state: Mutex::new(State::default()),
            crl,
            counters: Counters {
                sessions: metrics.gauge("eventserver_sessions", "Sessions held."),
                members: metrics.gauge(
                    "eventserver_members",
                    "Members announced through this event server.",
                ),
                published: metrics.counter("eventserver_published_total", "Publications accepted."),
                delivered: metrics.counter(
                    "eventserver_delivered_total",
                    "Events queued to subscribers.",
                ),
                delivered_bytes: metrics.counter(
                    "eventserver_delivered_bytes_total",
                    "Bytes of events queued to subscribers (frames, as sent), retained values handed to new subscribers and on request included.",
                ),
                slow: metrics.counter(
                    "eventserver_slow_subscribers_total",
                    "Subscribers disconnected for a full queue.",
                ),
                slow_entries: metrics.counter(
                    "eventserver_slow_subscribers_by_bound_total{bound=\"entries\"}",
                    SLOW_BY_BOUND,
                ),
                slow_bytes: metrics.counter(
                    "eventserver_slow_subscribers_by_bound_total{bound=\"bytes\"}",
                    SLOW_BY_BOUND,
                ),
                refused: metrics.counter(
                    "eventserver_refused_total",
                    "Sessions ended for a forbidden message.",
                ),
                queued: metrics.gauge(
                    "eventserver_queued_events",
                    "Events waiting in subscribers' queues, all subscribers together.",
                ),
                deepest: metrics.gauge(
                    "eventserver_queue_depth_max",
                    "Events waiting in the fullest subscriber queue.",
                ),
                queued_bytes: metrics.gauge(
                    "eventserver_queued_bytes",
                    "Bytes waiting in subscribers' queues, all subscribers together (a frame \
                     queued for several subscribers counts once per subscriber).",
                ),
                deepest_bytes: metrics.gauge(
                    "eventserver_queue_bytes_max",
                    "Bytes waiting in the fullest subscriber queue (in bytes).",
                ),
                dropped: metrics.counter(
                    "eventserver_dropped_total",
                    "Events not queued because a subscriber's queue was full.",
                ),
                term: metrics.gauge(
                    "status_term",
                    "Term of the retained network status (0 before the first).",
                ),
                version: metrics.gauge(
                    "status_version",
                    "Version of the retained network status (0 before the first).",
                ),
            },
        }
    }

    /// The event server's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Registers a new session whose frames go on `tx`, each charged to `budget` (the session's
    /// bound in bytes; see the module documentation); returns its id.
    pub fn open(
        &self,
        id: Identity,
        tx: mpsc::Sender<Queued>,
        budget: ByteBudget,
        conn: Option<quinn::Connection>,
    ) -> u64 {
        let sid = match &conn {
            Some(c) => c.stable_id() as u64,
            None => self.seq.fetch_add(1, Ordering::Relaxed),
        };
        let mut st = self.state.lock().expect("hub");
        st.sessions.insert(
            sid,
            Session {
                id,
                member: None,
                topics: 0,
                tx,
                budget,
                conn,
                left: false,
                cut: false,
            },
        );
        self.counters.sessions.set(st.sessions.len() as i64);
        sid
    }

    /// The session announces itself as a member.
    pub fn announce(&self, sid: u64, a: Announce, ip: std::net::IpAddr) -> Result<(), Refusal> {
        let mut st = self.state.lock().expect("hub");
        let s = st
            .sessions
            .get(&sid)
            .ok_or_else(|| Refusal("no session".into()))?;
        let id = &s.id;
        if !id.kind.is_member() {
            return Err(Refusal(format!(
                "{} holds a {} certificate and cannot join as a member",
                id.name, id.kind
            )));
        }
        if let Some(r) = a.roles.iter().find(|r| !id.roles.contains(r)) {
            return Err(Refusal(format!(
                "{} announced role {r}, which its certificate does not grant (certificate roles: {})",
                id.name,
                if id.roles.is_empty() {
                    "none".to_string()
                } else {
                    id.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(",")
                }
            )));
        }
        if s.member.is_some() {
            return Err(Refusal(format!(
                "{} announced twice on one session",
                id.name
            )));
        }
        // What a member announces is held for as long as its session lives, sent in every
        // snapshot and put in every status: bounded, so that a member's entry stays small.
        if a.endpoints.len() > MAX_ENDPOINTS {
            return Err(Refusal(format!(
                "{} announced {} endpoints; at most {MAX_ENDPOINTS} are accepted",
                id.name,
                a.endpoints.len()
            )));
        }
        if let Some(e) = a
            .endpoints
            .iter()
            .find(|e| e.service.is_empty() || e.service.len() > MAX_SERVICE_NAME)
        {
            return Err(Refusal(format!(
                "{} announced an endpoint whose service name has {} bytes; 1 to \
                 {MAX_SERVICE_NAME} are accepted",
                id.name,
                e.service.len()
            )));
        }
        let mut roles = a.roles.clone();
        roles.sort();
        roles.dedup();
        let member = SessionMember {
            name: id.name.clone(),
            kind: id.kind,
            roles,
            endpoints: a.endpoints,
            ip,
        };
        let name = member.name.clone();
        // A newer session of the same member replaces the old one without a loss.
        if let Some(old) = st.by_name.insert(name.clone(), sid) {
            if old != sid {
                if let Some(mut o) = st.sessions.remove(&old) {
                    o.member = None;
                    if let Some(c) = &o.conn {
                        c.close(CloseCode::Replaced.varint(), b"replaced by a newer session");
                    }
                    info!(name = %name, "older session replaced");
                }
            }
        }
        if let Some(s) = st.sessions.get_mut(&sid) {
            s.member = Some(member.clone());
        }
        info!(name = %name, kind = %member.kind, ip = %member.ip, "member joined");
        self.counters.members.set(st.by_name.len() as i64);
        self.counters.sessions.set(st.sessions.len() as i64);
        self.emit_locked(&mut st, Payload::Member(MemberEvent::Joined(member)));
        Ok(())
    }

    /// The session subscribes to topics; the member snapshot and the retained `network` and
    /// `crl` values are queued at once.
    pub fn subscribe(&self, sid: u64, topics: &[Topic]) {
        let mut st = self.state.lock().expect("hub");
        let snapshot: Vec<SessionMember> = st
            .sessions
            .values()
            .filter_map(|s| s.member.clone())
            .collect();
        let net = match topics.contains(&Topic::Network) {
            true => st.network.as_mut().map(Retained::frame),
            false => None,
        };
        let crl = st.crl.clone();
        let Some(s) = st.sessions.get_mut(&sid) else {
            return;
        };
        let mut first = Vec::new();
        for t in topics {
            if s.topics & t.bit() != 0 {
                continue;
            }
            s.topics |= t.bit();
            match t {
                Topic::Members => {
                    let ev = Event {
                        origin: self.name.clone(),
                        origin_kind: Kind::Eventserver,
                        seq: self.seq.fetch_add(1, Ordering::Relaxed),
                        payload: Payload::Member(MemberEvent::Snapshot(snapshot.clone())),
                    };
                    first.push(encode_frame(&ServerMsg::Event(ev)));
                }
                Topic::Network => first.extend(net.clone()),
                Topic::Crl => first.extend(crl.clone()),
                _ => {}
            }
        }
        for f in first {
            match s.offer(&f) {
                Ok(()) => self.counters.delivered_bytes.add(f.len() as i64),
                Err(why) => {
                    self.counters.dropped.inc();
                    warn!(peer = %s.id.name, bound = why.label(), "subscriber queue full at subscription");
                }
            }
        }
        self.sample_queues_locked(&st);
    }

    /// The session asks for the retained values of `topics` again (it missed a change): the
    /// whole network status is queued as [`ServerMsg::Retained`], which receivers take
    /// whether or not they saw its publication. Only topics the session subscribed to count.
    pub fn fetch(&self, sid: u64, topics: &[Topic]) {
        let st = self.state.lock().expect("hub");
        let subscribed = st.sessions.get(&sid).map_or(0, |s| s.topics);
        if subscribed & Topic::Network.bit() == 0 || !topics.contains(&Topic::Network) {
            return;
        }
        let Some(net) = &st.network else { return };
        let frame = encode_frame(&ServerMsg::Retained(net.event()));
        if let Some(s) = st.sessions.get(&sid) {
            match s.offer(&frame) {
                Ok(()) => self.counters.delivered_bytes.add(frame.len() as i64),
                Err(why) => {
                    self.counters.dropped.inc();
                    warn!(peer = %s.id.name, bound = why.label(), "subscriber queue full: retained status not sent");
                }
            }
        }
        self.sample_queues_locked(&st);
    }

    /// Samples the subscribers' queues into the depth gauges (after every broadcast, and
    /// periodically from the server so the figures follow the queues draining).
    pub fn sample_queues(&self) {
        let st = self.state.lock().expect("hub");
        self.sample_queues_locked(&st);
    }

    fn sample_queues_locked(&self, st: &State) {
        let (mut total, mut deepest) = (0usize, 0usize);
        let (mut bytes, mut deepest_bytes) = (0usize, 0usize);
        for s in st.sessions.values() {
            let depth = s.tx.max_capacity() - s.tx.capacity();
            total += depth;
            deepest = deepest.max(depth);
            let b = s.budget.used();
            bytes += b;
            deepest_bytes = deepest_bytes.max(b);
        }
        self.counters.queued.set(total as i64);
        self.counters.deepest.set(deepest as i64);
        self.counters.queued_bytes.set(bytes as i64);
        self.counters.deepest_bytes.set(deepest_bytes as i64);
    }

    /// A publication from the session.
    ///
    /// A revocation list is verified and persisted before the hub's lock is taken (signature
    /// checks and a file write must not hold up every other session).
    pub fn publish(&self, sid: u64, seq: u64, payload: Payload) -> Result<(), Refusal> {
        let (origin, kind) = {
            let st = self.state.lock().expect("hub");
            let s = st
                .sessions
                .get(&sid)
                .ok_or_else(|| Refusal("no session".into()))?;
            (s.id.name.clone(), s.id.kind)
        };
        let topic = payload.topic();
        if let Err(why) = may_publish(kind, topic) {
            self.counters.refused.inc();
            return Err(Refusal(format!(
                "publication on {topic:?} from {origin} ({kind}) refused: {why}"
            )));
        }
        if let Payload::Crl(der) = &payload {
            if let Err(e) = self.crl.apply_der(der) {
                self.counters.refused.inc();
                return Err(Refusal(format!(
                    "revocation list from {origin} refused: {e}"
                )));
            }
        }
        let mut st = self.state.lock().expect("hub");
        let ev = Event {
            origin: origin.clone(),
            origin_kind: kind,
            seq,
            payload,
        };
        match &ev.payload {
            Payload::Network(status) => {
                let key = (status.term, status.version);
                match &st.network {
                    Some(held) if key < held.key() => {
                        warn!(%origin, term = key.0, version = key.1, "stale network status dropped");
                        return Ok(());
                    }
                    Some(held) if key == held.key() => {
                        // Sent again (to an event server whose session with the manager has
                        // just started): the subscribers have it already.
                        self.counters.published.inc();
                        return Ok(());
                    }
                    _ => {}
                }
                st.network = Some(Retained {
                    digest: status.digest(),
                    status: status.clone(),
                    origin: origin.clone(),
                    seq,
                    frame: None,
                });
                self.counters.term.set(key.0 as i64);
                self.counters.version.set(key.1 as i64);
            }
            Payload::NetworkDelta(delta) => {
                let key = (delta.term, delta.version);
                if let Some(held) = &mut st.network {
                    if key <= held.key() {
                        warn!(%origin, term = key.0, version = key.1, "stale network delta dropped");
                        return Ok(());
                    }
                    match held.status.apply_delta(delta, &mut held.digest) {
                        Ok(()) => {
                            held.origin = origin.clone();
                            held.seq = seq;
                            held.frame = None;
                            self.counters.term.set(key.0 as i64);
                            self.counters.version.set(key.1 as i64);
                        }
                        // Delivered all the same: receivers that follow it apply it. The
                        // manager sends this event server the whole status when their session
                        // starts again, which is how a change is missed here.
                        Err(e) => {
                            warn!(%origin, cause = %e, "network delta does not follow the retained status")
                        }
                    }
                }
            }
            // Retained only while it is the list in force: of two lists published at once,
            // the older must not be the one handed to new subscribers.
            Payload::Crl(der) if self.crl.current().der.as_deref() == Some(der.as_slice()) => {
                st.crl = Some(encode_frame(&ServerMsg::Event(ev.clone())));
            }
            _ => {}
        }
        self.counters.published.inc();
        self.broadcast_locked(&mut st, &ev);
        Ok(())
    }

    /// The session said goodbye.
    pub fn leave(&self, sid: u64) {
        let mut st = self.state.lock().expect("hub");
        if let Some(s) = st.sessions.get_mut(&sid) {
            s.left = true;
        }
    }

    /// The session ended; its member's departure is published (a leave after a goodbye, a loss
    /// otherwise).
    pub fn close(&self, sid: u64, reason: &str) {
        let mut st = self.state.lock().expect("hub");
        let Some(s) = st.sessions.remove(&sid) else {
            return;
        };
        self.counters.sessions.set(st.sessions.len() as i64);
        let Some(m) = s.member else { return };
        if st.by_name.get(&m.name) == Some(&sid) {
            st.by_name.remove(&m.name);
        }
        self.counters.members.set(st.by_name.len() as i64);
        let ev = if s.left {
            info!(name = %m.name, "member left");
            MemberEvent::Left { name: m.name }
        } else {
            info!(name = %m.name, %reason, "member lost");
            MemberEvent::Lost {
                name: m.name,
                reason: reason.to_string(),
            }
        };
        self.emit_locked(&mut st, Payload::Member(ev));
    }

    /// Names of the members announced here.
    pub fn members(&self) -> Vec<String> {
        let st = self.state.lock().expect("hub");
        let mut v: Vec<String> = st.by_name.keys().cloned().collect();
        v.sort();
        v
    }

    /// Publishes a line of this event server's own on `events` (to the sessions subscribed
    /// now; the topic keeps nothing).
    pub fn log(&self, level: onehop_overlay::wire::Level, text: String) {
        let mut st = self.state.lock().expect("hub");
        self.emit_locked(
            &mut st,
            Payload::Log(onehop_overlay::wire::LogEvent {
                time_ms: onehop_overlay::daemon::now_ms(),
                level,
                text,
            }),
        );
    }

    fn emit_locked(&self, st: &mut State, payload: Payload) {
        let ev = Event {
            origin: self.name.clone(),
            origin_kind: Kind::Eventserver,
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            payload,
        };
        self.broadcast_locked(st, &ev);
    }

    fn broadcast_locked(&self, st: &mut State, ev: &Event) {
        let bit = ev.payload.topic().bit();
        let frame = encode_frame(&ServerMsg::Event(ev.clone()));
        let mut slow = Vec::new();
        for (sid, s) in st.sessions.iter() {
            if s.topics & bit == 0 || s.cut {
                continue;
            }
            match s.offer(&frame) {
                Ok(()) => {
                    self.counters.delivered.inc();
                    self.counters.delivered_bytes.add(frame.len() as i64);
                }
                Err(Overflow::Closed) => {}
                Err(why) => {
                    self.counters.dropped.inc();
                    slow.push((*sid, why))
                }
            }
        }
        self.sample_queues_locked(st);
        for (sid, why) in slow {
            if let Some(s) = st.sessions.get_mut(&sid) {
                s.cut = true;
                self.counters.slow.inc();
                let (queued, queued_bytes) =
                    (s.tx.max_capacity() - s.tx.capacity(), s.budget.used());
                let reason: &[u8] = match why {
                    Overflow::Bytes => {
                        self.counters.slow_bytes.inc();
                        warn!(
                            peer = %s.id.name, bound = "bytes", queued, queued_bytes,
                            max_bytes = s.budget.cap(), frame = frame.len(),
                            "subscriber too slow: its queue is full in bytes; disconnecting it"
                        );
                        b"subscriber too slow: event queue full (bytes)"
                    }
                    _ => {
                        self.counters.slow_entries.inc();
                        warn!(
                            peer = %s.id.name, bound = "entries", queued, queued_bytes,
                            "subscriber too slow: its queue is full; disconnecting it"
                        );
                        b"subscriber too slow: event queue full"
                    }
                };
                if let Some(c) = &s.conn {
                    c.close(CloseCode::SlowSubscriber.varint(), reason);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onehop_overlay::identity::Serial;
    use onehop_overlay::status::Role;

    fn id(name: &str, kind: Kind, roles: &[&str]) -> Identity {
        Identity {
            name: name.into(),
            kind,
            roles: roles.iter().map(|r| Role::new(r).unwrap()).collect(),
            carriers: None,
            serial: Serial(vec![1]),
            not_before: 0,
            not_after: i64::MAX,
        }
    }

    fn hub() -> (Hub, Metrics) {
        let ca = rcgen_ca();
        let crl = CrlStore::open(ca, None).unwrap();
        let m = Metrics::default();
        (Hub::new("es1".into(), crl, &m), m)
    }

    fn rcgen_ca() -> Vec<u8> {
        let params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn announce(roles: &[&str]) -> Announce {
        Announce {
            roles: roles.iter().map(|r| Role::new(r).unwrap()).collect(),
            endpoints: vec![],
        }
    }

    fn metric(m: &Metrics, name: &str) -> i64 {
        m.render()
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("onehop_{name} "))
                    .map(|v| v.parse().unwrap())
            })
            .unwrap()
    }

    #[test]
    fn a_slow_subscriber_is_cut_off_and_its_queue_stays_bounded() {
        let (hub, m) = hub();
        let (tx, rx) = mpsc::channel(16);
        let slow = hub.open(
            id("watcher", Kind::Monitor, &[]),
            tx,
            ByteBudget::new(1 << 30),
            None,
        );
        hub.subscribe(slow, &[Topic::Members]);
        for i in 0..100 {
            let (t, _r) = mpsc::channel(16);
            let s = hub.open(
                id(&format!("node{i}"), Kind::Node, &["registrar"]),
                t,
                ByteBudget::new(1 << 30),
                None,
            );
            hub.announce(s, announce(&["registrar"]), "127.0.0.1".parse().unwrap())
                .unwrap();
        }
        assert_eq!(rx.len(), 16, "the queue never grows past its bound");
        assert!(metric(&m, "eventserver_slow_subscribers_total") > 0);
        assert!(
            metric(&m, "eventserver_dropped_total") > 0,
            "the lost events are counted"
        );
        assert_eq!(metric(&m, "eventserver_queue_depth_max"), 16);
        assert!(metric(&m, "eventserver_queued_events") >= 16);
    }

    fn log(text: &str) -> Payload {
        Payload::Log(onehop_overlay::wire::LogEvent {
            time_ms: 1,
            level: onehop_overlay::wire::Level::Info,
            text: text.into(),
        })
    }

    #[test]
    fn a_subscriber_over_its_byte_bound_is_cut_off_and_the_others_keep_getting_events() {
        let (hub, m) = hub();
        // Room for 4,096 frames but only 8 KiB: large events fill it in bytes first.
        let (tx, slow_rx) = mpsc::channel(4096);
        let slow = hub.open(
            id("watcher", Kind::Monitor, &[]),
            tx,
            ByteBudget::new(8 << 10),
            None,
        );
        hub.subscribe(slow, &[Topic::Events]);
        let (tx, mut fast_rx) = mpsc::channel(4096);
        let fast = hub.open(
            id("reader", Kind::Monitor, &[]),
            tx,
            ByteBudget::new(8 << 10),
            None,
        );
        hub.subscribe(fast, &[Topic::Events]);
        let (tx, _r) = mpsc::channel(16);
        let publisher = hub.open(
            id("node1", Kind::Node, &[]),
            tx,
            ByteBudget::new(1 << 20),
            None,
        );
        let text = "x".repeat(3000);
        let mut read = 0;
        for seq in 0..20 {
            hub.publish(publisher, seq, log(&text)).unwrap();
            // The fast subscriber's writer takes each frame off at once.
            while let Ok(q) = fast_rx.try_recv() {
                assert!(q.frame.len() > 3000);
                read += 1;
            }
        }
        assert_eq!(read, 20, "the subscriber that reads got every event");
        let held: usize = {
            let mut rx = slow_rx;
            let mut n = 0;
            while let Ok(q) = rx.try_recv() {
                n += q.frame.len();
            }
            n
        };
        assert!(held <= 8 << 10, "{held} bytes queued past the 8 KiB bound");
        assert!(
            held > 4 << 10,
            "the queue filled up to its bound first: {held} bytes"
        );
        assert_eq!(
            metric(
                &m,
                "eventserver_slow_subscribers_by_bound_total{bound=\"bytes\"}"
            ),
            1,
            "cut once, not at every later event"
        );
        assert_eq!(
            metric(
                &m,
                "eventserver_slow_subscribers_by_bound_total{bound=\"entries\"}"
            ),
            0
        );
        assert_eq!(metric(&m, "eventserver_slow_subscribers_total"), 1);
        assert_eq!(metric(&m, "eventserver_dropped_total"), 1);
    }

    #[test]
    fn byte_gauges_follow_the_queues() {
        let (hub, m) = hub();
        let (tx, mut rx) = mpsc::channel(64);
        let w = hub.open(
            id("watcher", Kind::Monitor, &[]),
            tx,
            ByteBudget::new(1 << 20),
            None,
        );
        hub.subscribe(w, &[Topic::Events]);
        let (tx, _r) = mpsc::channel(16);
        let p = hub.open(
            id("node1", Kind::Node, &[]),
            tx,
            ByteBudget::new(1 << 20),
            None,
        );
        hub.publish(p, 1, log(&"y".repeat(1000))).unwrap();
        hub.publish(p, 2, log(&"y".repeat(2000))).unwrap();
        let queued = metric(&m, "eventserver_queue_bytes_max");
        assert!((3000..3200).contains(&queued), "{queued}");
        assert_eq!(metric(&m, "eventserver_queued_bytes"), queued);
        let first = rx.try_recv().unwrap();
        drop(first);
        hub.sample_queues();
        let left = metric(&m, "eventserver_queue_bytes_max");
        assert!(
            (2000..2100).contains(&left),
            "the first frame's bytes came back: {left}"
        );
        while rx.try_recv().is_ok() {}
        hub.sample_queues();
        assert_eq!(metric(&m, "eventserver_queue_bytes_max"), 0);
    }

    #[test]
    fn queue_gauges_follow_a_draining_queue() {
        let (hub, m) = hub();
        let (tx, mut rx) = mpsc::channel(64);
        let w = hub.open(
            id("watcher", Kind::Monitor, &[]),
            tx,
            ByteBudget::new(1 << 30),
            None,
        );
        hub.subscribe(w, &[Topic::Members]);
        for i in 0..5 {
            let (t, _r) = mpsc::channel(16);
            let s = hub.open(
                id(&format!("node{i}"), Kind::Node, &["registrar"]),
                t,
                ByteBudget::new(1 << 30),
                None,
            );
            hub.announce(s, announce(&["registrar"]), "127.0.0.1".parse().unwrap())
                .unwrap();
        }
        let queued = rx.len() as i64;
        assert!(queued >= 5, "a snapshot and five announcements: {queued}");
        assert_eq!(metric(&m, "eventserver_queue_depth_max"), queued);
        while rx.try_recv().is_ok() {}
        hub.sample_queues();
        assert_eq!(metric(&m, "eventserver_queue_depth_max"), 0);
        assert_eq!(metric(&m, "eventserver_queued_events"), 0);
        assert_eq!(metric(&m, "eventserver_dropped_total"), 0);
    }

    #[test]
    fn roles_outside_the_certificate_and_forbidden_topics_are_refused() {
        let (hub, _) = hub();
        let (tx, _rx) = mpsc::channel(16);
        let s = hub.open(
            id("node1", Kind::Node, &["registrar"]),
            tx,
            ByteBudget::new(1 << 30),
            None,
        );
        let err = hub.announce(
            s,
            announce(&["registrar", "sip_proxy"]),
            "127.0.0.1".parse().unwrap(),
        );
        assert!(err.unwrap_err().0.contains("sip_proxy"));
        let status = onehop_overlay::status::NetworkStatus::default();
        let err = hub.publish(s, 1, Payload::Network(status)).unwrap_err();
        assert!(err.0.contains("only managers may publish network status"));
        let (tx, _rx) = mpsc::channel(16);
        let mon = hub.open(
            id("mon", Kind::Monitor, &[]),
            tx,
            ByteBudget::new(1 << 30),
            None,
        );
        assert!(hub
            .announce(mon, announce(&[]), "127.0.0.1".parse().unwrap())
            .is_err());
        assert!(hub.publish(mon, 1, Payload::Crl(vec![1])).is_err());
    }

    #[test]
    fn announcements_are_bounded_in_size() {
        let (hub, _) = hub();
        let ep = |service: &str| onehop_overlay::status::Endpoint {
            service: service.into(),
            addr: "127.0.0.1:9".parse().unwrap(),
        };
        let (tx, _rx) = mpsc::channel(16);
        let s = hub.open(
            id("node1", Kind::Node, &[]),
            tx,
            ByteBudget::new(1 << 20),
            None,
        );
        let many = Announce {
            roles: vec![],
            endpoints: (0..=MAX_ENDPOINTS).map(|i| ep(&format!("s{i}"))).collect(),
        };
        let err = hub
            .announce(s, many, "127.0.0.1".parse().unwrap())
            .unwrap_err();
        assert!(err.0.contains("33 endpoints; at most 32"), "{}", err.0);
        let long = Announce {
            roles: vec![],
            endpoints: vec![ep(&"x".repeat(MAX_SERVICE_NAME + 1))],
        };
        let err = hub
            .announce(s, long, "127.0.0.1".parse().unwrap())
            .unwrap_err();
        assert!(err.0.contains("33 bytes"), "{}", err.0);
        let fine = Announce {
            roles: vec![],
            endpoints: vec![ep("lookup"), ep("peer"), ep("sip")],
        };
        hub.announce(s, fine, "127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(hub.members(), vec!["node1".to_string()]);
    }

    #[test]
    fn retained_network_status_only_moves_forward() {
        let (hub, m) = hub();
        assert_eq!(metric(&m, "status_term"), 0);
        let (tx, _rx) = mpsc::channel(64);
        let mgr = hub.open(
            id("manager1", Kind::Manager, &[]),
            tx,
            ByteBudget::new(1 << 30),
            None,
        );
        let st = |term, version| {
            Payload::Network(onehop_overlay::status::NetworkStatus {
                term,
                version,
                manager: "manager1".into(),
                members: vec![],
            })
        };
        hub.publish(mgr, 1, st(2, 5)).unwrap();
        hub.publish(mgr, 2, st(1, 9)).unwrap();
        // The metrics show the retained status, not the stale one.
        assert_eq!(
            (metric(&m, "status_term"), metric(&m, "status_version")),
            (2, 5)
        );
        let (tx, mut rx) = mpsc::channel(64);
        let late = hub.open(
            id("node1", Kind::Node, &[]),
            tx,
            ByteBudget::new(1 << 30),
            None,
        );
        hub.subscribe(late, &[Topic::Network]);
        let frame = rx.try_recv().unwrap().frame;
        let msg: ServerMsg = onehop_overlay::wire::decode_body(&frame[4..]).unwrap();
        match msg {
            ServerMsg::Event(Event {
                payload: Payload::Network(s),
                ..
            }) => assert_eq!((s.term, s.version), (2, 5)),
            other => panic!("{other:?}"),
        }
        assert!(rx.try_recv().is_err(), "only the retained value");
    }
}
