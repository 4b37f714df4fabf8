//! What the active manager publishes, and when.
//!
//! Only the Raft leader publishes, with its Raft term as the status's `term` and a `version`
//! that starts at 1 in each term and grows with every change. A manager that is not the leader
//! keeps its member picture current (it follows the `members` topic all along) so it can take
//! over at once.
//!
//! What goes out: the whole status when this manager takes office (and to an event server
//! whose session with it starts, [`Publisher::server_up`]), then each change as a delta from
//! the version before ([`StatusDelta`]), and every republication interval a heartbeat
//! ([`StatusBeat`]: term, version and digest) instead of the whole status again. Receivers
//! that see a gap ask the event servers for the whole status ([`onehop_overlay::follow`]).

use onehop_overlay::client::EventClient;
use onehop_overlay::daemon::now_ms;
use onehop_overlay::metrics::{Metric, Metrics};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use onehop_overlay::status::{Member, NetworkStatus, StatusBeat, StatusDelta};
use onehop_overlay::wire::{Event, Level, LogEvent, Payload};
use tracing::{info, warn};

use crate::members::{describe_changes, MemberView};

/// The publishing state of one manager.
pub struct Publisher {
    name: String,
    /// The live-member picture.
    pub view: MemberView,
    active: bool,
    term: u64,
    version: u64,
    last: Option<NetworkStatus>,
    /// [`NetworkStatus::digest`] of `last`.
    last_digest: u64,
    /// The greatest `(term, version)` of any status seen on `network`, ours included.
    seen: Option<(u64, u64)>,
    /// Event servers whose session came up while this manager was not active (at most one
    /// entry per server): each gets the whole status in force when it is active again.
    missed_up: Vec<SocketAddr>,
    m_active: Metric,
    m_term: Metric,
    m_version: Metric,
    m_members: Metric,
    m_published: Metric,
    m_deltas: Metric,
    m_beats: Metric,
    m_bytes: Metric,
    metrics: Metrics,
}

impl Publisher {
    /// A publisher for the manager `name`.
    pub fn new(name: String, metrics: &Metrics) -> Publisher {
        Publisher {
            name,
            view: MemberView::default(),
            active: false,
            term: 0,
            missed_up: Vec::new(),
            version: 0,
            last: None,
            last_digest: 0,
            seen: None,
            m_active: metrics.gauge("manager_active", "1 while this manager is the active one."),
            m_term: metrics.gauge("status_term", "Term of the last status published or seen."),
            m_version: metrics.gauge(
                "status_version",
                "Version of the last status published or seen.",
            ),
            m_members: metrics.gauge("members", "Live members in the last status."),
            m_published: metrics.counter("status_published_total", "Statuses published."),
            m_deltas: metrics.counter(
                "status_deltas_published_total",
                "Statuses published as a delta from the version before.",
            ),
            m_beats: metrics.counter(
                "status_beats_published_total",
                "Heartbeats published (term, version and digest of the status in force).",
            ),
            m_bytes: metrics.counter(
                "status_bytes_published_total",
                "Bytes of network-status publications (whole, deltas and heartbeats) handed to each event server.",
            ),
            metrics: metrics.clone(),
        }
    }

    /// Whether this manager is the active one.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Takes a leadership update. Returns true when this manager has just become active (in a
    /// new term), so the caller publishes at once.
    pub fn leadership(&mut self, is_me: bool, term: u64) -> bool {
        let became = is_me && (!self.active || term != self.term);
        if is_me && term != self.term {
            self.term = term;
            // A term already seen on the network is ours from before a restart (openraft may
            // give a restarted leader its term back): go on above what it published.
            self.version = match self.seen {
                Some((t, v)) if t == term => v,
                _ => 0,
            };
        }
        self.active = is_me;
        self.m_active.set(is_me as i64);
        became
    }

    /// Publishes on becoming active ([`Publisher::leadership`] returned true): the whole
    /// status in a new term. Active again in the term it already published in (a leader that
    /// lost its quorum's answers for a while and has them again), no other manager can have
    /// published in between, so the receivers hold its last status: a new version goes out
    /// only if the members changed meanwhile, else a heartbeat naming the status in force
    /// (a receiver that missed it asks for it).
    pub fn activate(&mut self, client: &EventClient) {
        if !self.active {
            return;
        }
        let missed = std::mem::take(&mut self.missed_up);
        if self.last.as_ref().is_some_and(|l| l.term == self.term) {
            // An event server that came up meanwhile was sent nothing: it gets the status in
            // force whole first, as `server_up` gives it to an active manager's new session.
            for addr in missed {
                self.server_up(client, addr);
            }
            let before = self.version;
            self.publish(client, false);
            if self.version == before {
                self.republish(client);
            }
        } else {
            self.publish(client, true);
        }
    }

    /// Takes an event from the event servers; returns whether the member picture changed.
    /// A whole status is taken as [`Publisher::on_status`] takes it; deltas reach this
    /// manager as the status they make (the caller follows them, [`onehop_overlay::follow`]).
    pub fn on_event(&mut self, ev: &Event) -> bool {
        match &ev.payload {
            Payload::Member(m) => {
                self.view.apply(&ev.origin, m);
                true
            }
            Payload::Network(s) => self.on_status(s),
            _ => false,
        }
    }

    /// Takes the network status in force (ours echoed back, or another manager's); returns
    /// whether this manager must publish (it is active and a newer status of its own term
    /// is out).
    pub fn on_status(&mut self, s: &NetworkStatus) -> bool {
        if self.seen.is_none_or(|seen| (s.term, s.version) > seen) {
            self.seen = Some((s.term, s.version));
        }
        if s.term == self.term && s.version >= self.version && self.last.as_ref() != Some(s) {
            // A status of our term newer than ours can only be ours from before a restart:
            // openraft may give a restarted leader its term back without an election. Go
            // on above it, or every receiver would ignore our statuses as old ones.
            warn!(
                term = s.term,
                version = s.version,
                ours = self.version,
                "a newer status of this term is out (published before a restart): continuing above it"
            );
            self.version = s.version;
            self.last = None;
            self.view.adopt_since(s);
            self.m_term.set(s.term as i64);
            self.m_version.set(s.version as i64);
            self.active
        } else if s.manager != self.name {
            self.view.adopt_since(s);
            self.m_term.set(s.term as i64);
            self.m_version.set(s.version as i64);
            false
        } else {
            false
        }
    }

    /// An event server's session with this manager has started: if active, it is sent the
    /// whole status in force (it may have missed changes while the session was down; its
    /// subscribers get it only if it is news there).
    pub fn server_up(&mut self, client: &EventClient, addr: SocketAddr) {
        if !self.active {
            if !self.missed_up.contains(&addr) {
                self.missed_up.push(addr);
            }
            return;
        }
        if let Some(s) = self.last.as_ref().filter(|s| s.term == self.term) {
            let payload = Payload::Network(s.clone());
            self.count_bytes(&payload, 1);
            client.publish_to(addr, payload);
        }
    }

    fn count_bytes(&self, payload: &Payload, servers: usize) {
        let len = bincode::serde::encode_to_vec(payload, bincode::config::standard())
            .map_or(0, |b| b.len());
        self.m_bytes.add((len * servers) as i64);
    }

    /// Publishes the current picture if this manager is active and it changed (or `force`).
    pub fn publish(&mut self, client: &EventClient, force: bool) {
        if !self.active {
            return;
        }
        let mut members = self.view.members(now_ms());
        let returned: BTreeSet<String> = self
            .view
            .take_departed()
            .into_iter()
            .filter(|n| members.iter().any(|m| &m.name == n))
            .collect();
        if !returned.is_empty() {
            // They left and are back within one batch (restarted in place). Publish their
            // departure first, so that every member sees it (the store copies their keys to the
            // others, then hands them back to the new process, which starts empty); then their
            // return, with a new `since`.
            info!(members = ?returned, "members left and came back: publishing the departure first");
            let interim: Vec<Member> = members
                .iter()
                .filter(|m| !returned.contains(&m.name))
                .cloned()
                .collect();
            self.emit(client, interim, force);
            self.view.restamp(&returned);
            members = self.view.members(now_ms());
            self.emit(client, members, false);
            return;
        }
        if let Some(last) = &self.last {
            if !force
                && last.term == self.term
                && last.members.len() == members.len()
                && last.members.iter().zip(&members).all(|(a, b)| **a == *b)
            {
                return;
            }
        }
        self.emit(client, members, force);
    }

    /// Publishes `members` as the next version: whole when it is the first of this term
    /// here (or `whole`), else as a delta from the last one.
    fn emit(&mut self, client: &EventClient, members: Vec<Member>, whole: bool) {
        self.version += 1;
        // Members that did not change keep the record the last status shares.
        let mut shared: Vec<Arc<Member>> = Vec::with_capacity(members.len());
        let last = self.last.as_ref().filter(|l| l.term == self.term);
        for m in members {
            let kept = last.and_then(|l| {
                l.members
                    .binary_search_by(|x| x.name.cmp(&m.name))
                    .ok()
                    .map(|i| &l.members[i])
                    .filter(|x| ***x == m)
            });
            shared.push(kept.cloned().unwrap_or_else(|| Arc::new(m)));
        }
        let status = NetworkStatus {
            term: self.term,
            version: self.version,
            manager: self.name.clone(),
            members: shared,
        };
        let before = self
            .last
            .as_ref()
            .map(|s| s.members.as_slice())
            .unwrap_or(&[]);
        let mut lines = describe_changes(before, &status.members);
        if whole {
            lines.insert(
                0,
                format!("{} is the active manager (term {})", self.name, self.term),
            );
        }
        let delta: Option<StatusDelta> = match (&self.last, whole) {
            (Some(last), false) => last.delta_to(&status),
            _ => None,
        };
        info!(
            term = status.term,
            version = status.version,
            members = status.members.len(),
            delta = delta.is_some(),
            "publishing network status"
        );
        let payload = match delta {
            Some(d) => {
                self.last_digest = d.digest;
                self.m_deltas.inc();
                Payload::NetworkDelta(d)
            }
            None => {
                self.last_digest = status.digest();
                Payload::Network(status.clone())
            }
        };
        let servers = client.publish(payload.clone());
        self.count_bytes(&payload, servers);
        for text in lines {
            client.publish(Payload::Log(LogEvent {
                time_ms: now_ms(),
                level: Level::Info,
                text,
            }));
        }
        self.m_term.set(status.term as i64);
        self.m_version.set(status.version as i64);
        self.m_members.set(status.members.len() as i64);
        self.metrics.set_membership(&status);
        self.m_published.inc();
        self.last = Some(status);
    }

    /// The periodic publication: a heartbeat naming the status in force (receivers that hold
    /// it ignore it; one that missed a change asks for the whole status).
    pub fn republish(&mut self, client: &EventClient) {
        if !self.active {
            return;
        }
        match &self.last {
            Some(s) if s.term == self.term => {
                let payload = Payload::NetworkBeat(StatusBeat {
                    term: s.term,
                    version: s.version,
                    manager: s.manager.clone(),
                    members: s.members.len() as u32,
                    digest: self.last_digest,
                });
                let servers = client.publish(payload.clone());
                self.count_bytes(&payload, servers);
                self.m_beats.inc();
            }
            _ => self.publish(client, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_restarts_in_each_new_term_only() {
        let m = Metrics::default();
        let mut p = Publisher::new("manager1".into(), &m);
        assert!(p.leadership(true, 3));
        p.version = 5;
        assert!(
            !p.leadership(true, 3),
            "same term, still active: nothing new"
        );
        assert_eq!(p.version, 5);
        assert!(!p.leadership(false, 3));
        assert!(p.leadership(true, 3), "active again in the same term");
        assert_eq!(p.version, 5, "a term's versions keep growing");
        assert!(p.leadership(true, 4));
        assert_eq!(p.version, 0);
    }

    /// A leader that drops out of being active and back in its own term (its quorum's
    /// answers late for a while, as on lossy links) publishes no new version unless the
    /// members changed meanwhile: a heartbeat says the status in force is still it.
    #[tokio::test]
    async fn active_again_in_the_same_term_publishes_only_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut pki = onehop_certs::testing::TestPki::new(dir.path(), "example.test").unwrap();
        let ip: std::net::IpAddr = [127, 0, 0, 1].into();
        let creds = pki
            .issue("manager1", onehop_overlay::status::Kind::Manager, ip, &[])
            .unwrap();
        let endpoint = onehop_overlay::net::endpoint(
            SocketAddr::new(ip, 0),
            &creds,
            &onehop_overlay::crl::CrlState::default(),
            onehop_overlay::net::Timing::default(),
            None,
        )
        .unwrap();
        let (client, _events) = EventClient::start(
            endpoint,
            onehop_overlay::client::ClientOptions::default(),
            onehop_overlay::net::ConnTable::default(),
            None,
        );
        let m = Metrics::default();
        let mut p = Publisher::new("manager1".into(), &m);
        p.view.server_up("es1", SocketAddr::new(ip, 8000));
        let counts = |p: &Publisher| (p.version, p.m_published.get(), p.m_beats.get());

        assert!(p.leadership(true, 3));
        p.activate(&client);
        assert_eq!(counts(&p), (1, 1, 0), "a new term: the whole status");

        assert!(!p.leadership(false, 3));
        // An event server's session comes up meanwhile (no sessions here: bytes counted only).
        p.server_up(&client, SocketAddr::new(ip, 8001));
        let bytes = p.m_bytes.get();
        assert!(p.leadership(true, 3));
        p.activate(&client);
        assert_eq!(counts(&p), (1, 1, 1), "nothing changed: a heartbeat only");
        assert!(
            p.m_bytes.get() > bytes,
            "the server that came up meanwhile was sent the status in force"
        );

        assert!(!p.leadership(false, 3));
        p.view.apply(
            "es1",
            &onehop_overlay::wire::MemberEvent::Joined(onehop_overlay::wire::SessionMember {
                name: "node1".into(),
                kind: onehop_overlay::status::Kind::Node,
                roles: Vec::new(),
                endpoints: Vec::new(),
                ip,
            }),
        );
        assert!(p.leadership(true, 3));
        p.activate(&client);
        assert_eq!(
            counts(&p),
            (2, 2, 1),
            "a member joined meanwhile: the next version"
        );
        assert!(p
            .last
            .as_ref()
            .is_some_and(|s| s.members.iter().any(|m| m.name == "node1")));

        assert!(p.leadership(true, 4));
        p.activate(&client);
        assert_eq!(counts(&p), (1, 3, 1), "a new term: the whole status again");
        client.stop();
    }

    fn status_event(manager: &str, term: u64, version: u64) -> Event {
        Event {
            origin: "es1".into(),
            origin_kind: onehop_overlay::status::Kind::Eventserver,
            seq: 1,
            payload: Payload::Network(NetworkStatus {
                term,
                version,
                manager: manager.into(),
                members: Vec::new(),
            }),
        }
    }

    /// The retained status arrives before leadership comes back: the first version published
    /// in that term is above it.
    #[test]
    fn a_term_seen_before_leadership_continues_above_what_was_seen() {
        let m = Metrics::default();
        let mut p = Publisher::new("manager3".into(), &m);
        assert!(
            !p.on_event(&status_event("manager3", 1, 2)),
            "not active yet"
        );
        assert!(p.leadership(true, 1));
        assert_eq!(p.version, 2, "the next status will be version 3");
        assert!(p.leadership(true, 2));
        assert_eq!(p.version, 0, "a new term starts again");
    }

    /// A leader restarted in place may get its term back from openraft; the statuses it
    /// published before (retained by the event servers) have higher versions than its new
    /// counter. It must go on above them.
    #[test]
    fn a_restarted_leader_continues_above_its_earlier_versions() {
        let m = Metrics::default();
        let mut p = Publisher::new("manager1".into(), &m);
        assert!(p.leadership(true, 7));
        assert_eq!(p.version, 0);
        assert!(
            p.on_event(&status_event("manager1", 7, 57)),
            "an active manager republishes at once"
        );
        assert_eq!(p.version, 57, "the next status will be version 58");
        assert!(
            p.last.is_none(),
            "the next publication is not skipped as unchanged"
        );
        // Its own status echoed back changes nothing.
        p.version = 58;
        if let Payload::Network(s) = status_event("manager1", 7, 58).payload {
            p.last = Some(s);
        }
        assert!(!p.on_event(&status_event("manager1", 7, 58)));
        assert_eq!(p.version, 58);
        // One of the same version but not ours (published before the restart): above it.
        let mut other = status_event("manager1", 7, 58);
        if let Payload::Network(s) = &mut other.payload {
            s.members.push(Arc::new(onehop_overlay::status::Member {
                name: "node9".into(),
                kind: onehop_overlay::status::Kind::Node,
                roles: Vec::new(),
                endpoints: Vec::new(),
                since: 1,
                ip: "127.0.0.1".parse().unwrap(),
            }));
        }
        assert!(p.on_event(&other));
        assert!(p.last.is_none());
        // Statuses of other terms do not move the counter.
        assert!(!p.on_event(&status_event("manager2", 6, 900)));
        assert_eq!(p.version, 58);
    }
}
