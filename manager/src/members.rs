//! The manager's picture of who is live, built from the event servers' `members` topic.
//!
//! A member is live while at least one event server holds a session for it. Each event server's
//! sessions are tracked apart: its snapshot (sent when the manager subscribes) replaces what was
//! known of it, joins and departures update it, and when the manager's own session with that
//! event server ends, what it said is forgotten (the other event servers still vouch for the
//! members that are really there). The event servers the manager reaches are members too.
//!
//! A member that leaves says goodbye to every event server, and their `Left` events reach the
//! manager one by one, over links that may lose and resend them. The first `Left` is taken as
//! the member's departure: its sessions at the other event servers are marked as leaving and
//! no longer count, so a late goodbye does not make it look present in between (a departure
//! and a return, which would move its keys twice). A mark ends with what that event server
//! says next of the member: a `Joined` (a new session: the member is back), or the session's
//! end; or with the manager's session with that event server. An event server replaces a
//! member's old session by a newer one without reporting the old one's end, so a `Left`
//! always concerns the session that server holds.
//!
//! This is a plain state machine: feed it events, read [`MemberView::members`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use onehop_overlay::status::{Endpoint, Kind, Member, NetworkStatus};
use onehop_overlay::wire::{MemberEvent, SessionMember};

/// Live members as seen through every reachable event server.
#[derive(Debug, Default)]
pub struct MemberView {
    per_server: BTreeMap<String, BTreeMap<String, SessionMember>>,
    reached: BTreeMap<String, SocketAddr>,
    since: HashMap<String, u64>,
    /// Members that said goodbye (`Left`) since the last [`MemberView::take_departed`].
    departed: BTreeSet<String>,
    /// (event server, member): sessions of members that said goodbye at another event server;
    /// at most one per member and event server, and none for an event server not reached.
    leaving: BTreeSet<(String, String)>,
}

impl MemberView {
    /// The manager's session with event server `server` is up.
    pub fn server_up(&mut self, server: &str, addr: SocketAddr) {
        self.reached.insert(server.to_string(), addr);
        self.per_server.entry(server.to_string()).or_default();
    }

    /// The manager's session with `server` ended: forget what it said.
    pub fn server_down(&mut self, server: &str) {
        self.reached.remove(server);
        self.per_server.remove(server);
        // The event server may come back as a new process, whose sessions are all new: a
        // mark kept for it could hide a member that is really there.
        self.leaving.retain(|(s, _)| s != server);
    }

    /// A `members` event published by event server `origin`.
    pub fn apply(&mut self, origin: &str, ev: &MemberEvent) {
        if !self.reached.contains_key(origin) {
            // Only event servers we hold a session with are believed.
            return;
        }
        let sessions = self.per_server.entry(origin.to_string()).or_default();
        match ev {
            MemberEvent::Snapshot(all) => {
                sessions.clear();
                for m in all {
                    sessions.insert(m.name.clone(), m.clone());
                }
                // A mark on a session this event server no longer holds is over.
                self.leaving
                    .retain(|(server, name)| server != origin || sessions.contains_key(name));
            }
            MemberEvent::Joined(m) => {
                sessions.insert(m.name.clone(), m.clone());
                self.leaving.remove(&(origin.to_string(), m.name.clone()));
            }
            MemberEvent::Left { name } => {
                sessions.remove(name);
                if self.leaving.remove(&(origin.to_string(), name.clone())) {
                    // Its departure was taken from another event server's goodbye already.
                    return;
                }
                self.departed.insert(name.clone());
                for (server, sessions) in &self.per_server {
                    if server != origin && sessions.contains_key(name) {
                        self.leaving.insert((server.clone(), name.clone()));
                    }
                }
            }
            MemberEvent::Lost { name, .. } => {
                sessions.remove(name);
                self.leaving.remove(&(origin.to_string(), name.clone()));
            }
        }
    }

    /// The members that said goodbye since the last call. One that is live again left and
    /// came back (a restart in place): the publisher shows its departure before its return,
    /// and it gets a new `since`.
    pub fn take_departed(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.departed)
    }

    /// Forgets when `names` were first seen: they are stamped anew (a new incarnation).
    pub fn restamp(&mut self, names: &BTreeSet<String>) {
        for n in names {
            self.since.remove(n);
        }
    }

    /// Takes the `since` figures of a status published by a manager (so a new active manager
    /// keeps the times its predecessor published).
    pub fn adopt_since(&mut self, status: &NetworkStatus) {
        for m in &status.members {
            self.since.insert(m.name.clone(), m.since);
        }
    }

    /// Every live member, sorted by name. `now_ms` stamps members seen for the first time.
    pub fn members(&mut self, now_ms: u64) -> Vec<Member> {
        let mut out: BTreeMap<String, Member> = BTreeMap::new();
        let leaving: BTreeSet<(&str, &str)> = self
            .leaving
            .iter()
            .map(|(s, n)| (s.as_str(), n.as_str()))
            .collect();
        for (server, sessions) in &self.per_server {
            for m in sessions.values() {
                if leaving.contains(&(server.as_str(), m.name.as_str())) {
                    continue;
                }
                out.entry(m.name.clone()).or_insert_with(|| Member {
                    name: m.name.clone(),
                    kind: m.kind,
                    roles: m.roles.clone(),
                    endpoints: m.endpoints.clone(),
                    since: 0,
                    ip: m.ip,
                });
            }
        }
        for (name, addr) in &self.reached {
            out.entry(name.clone()).or_insert_with(|| Member {
                name: name.clone(),
                kind: Kind::Eventserver,
                roles: Vec::new(),
                endpoints: vec![Endpoint {
                    service: "eventserver".into(),
                    addr: *addr,
                }],
                since: 0,
                ip: addr.ip(),
            });
        }
        self.since.retain(|name, _| out.contains_key(name));
        for m in out.values_mut() {
            m.since = *self.since.entry(m.name.clone()).or_insert(now_ms);
        }
        out.into_values().collect()
    }

    /// Names of the event servers reached.
    pub fn servers(&self) -> impl Iterator<Item = &str> {
        self.reached.keys().map(|s| s.as_str())
    }
}

/// What changed between two member lists, as log lines for the `events` topic.
pub fn describe_changes<M: std::borrow::Borrow<Member>>(before: &[M], after: &[M]) -> Vec<String> {
    let old: BTreeMap<&str, &Member> = before
        .iter()
        .map(|m| (m.borrow().name.as_str(), m.borrow()))
        .collect();
    let new: BTreeMap<&str, &Member> = after
        .iter()
        .map(|m| (m.borrow().name.as_str(), m.borrow()))
        .collect();
    let mut lines = Vec::new();
    for (name, m) in &new {
        if !old.contains_key(name) {
            let roles: Vec<&str> = m.roles.iter().map(|r| r.as_str()).collect();
            if roles.is_empty() {
                lines.push(format!("{name} ({}) joined from {}", m.kind, m.ip));
            } else {
                lines.push(format!(
                    "{name} ({}: {}) joined from {}",
                    m.kind,
                    roles.join(","),
                    m.ip
                ));
            }
        }
    }
    for name in old.keys() {
        if !new.contains_key(name) {
            lines.push(format!("{name} is gone"));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_goodbye_is_remembered_until_taken_and_a_loss_is_not() {
        let mut v = MemberView::default();
        v.server_up("es1", "127.0.0.1:8000".parse().unwrap());
        v.apply(
            "es1",
            &MemberEvent::Left {
                name: "node2".into(),
            },
        );
        v.apply(
            "es1",
            &MemberEvent::Lost {
                name: "node3".into(),
                reason: "idle".into(),
            },
        );
        let taken = v.take_departed();
        assert_eq!(
            taken.into_iter().collect::<Vec<_>>(),
            vec!["node2".to_string()]
        );
        assert!(v.take_departed().is_empty(), "taken once");
    }
    use onehop_overlay::status::Role;

    fn sm(name: &str, ip: &str) -> SessionMember {
        SessionMember {
            name: name.into(),
            kind: Kind::Node,
            roles: vec![Role::new("registrar").unwrap()],
            endpoints: vec![],
            ip: ip.parse().unwrap(),
        }
    }

    fn names(v: &mut MemberView) -> Vec<String> {
        v.members(1).into_iter().map(|m| m.name).collect()
    }

    #[test]
    fn live_while_any_event_server_holds_a_session() {
        let mut v = MemberView::default();
        v.server_up("es1", "127.0.1.1:8000".parse().unwrap());
        v.server_up("es2", "127.0.1.2:8000".parse().unwrap());
        v.apply("es1", &MemberEvent::Joined(sm("node1", "127.0.1.7")));
        v.apply("es2", &MemberEvent::Joined(sm("node1", "127.0.1.7")));
        assert_eq!(names(&mut v), ["es1", "es2", "node1"]);
        v.apply(
            "es1",
            &MemberEvent::Lost {
                name: "node1".into(),
                reason: "idle".into(),
            },
        );
        assert_eq!(names(&mut v), ["es1", "es2", "node1"], "es2 still holds it");
        v.server_down("es2");
        assert_eq!(names(&mut v), ["es1"]);
    }

    #[test]
    fn snapshot_replaces_and_unreached_servers_are_ignored() {
        let mut v = MemberView::default();
        v.apply("es9", &MemberEvent::Joined(sm("ghost", "127.0.1.9")));
        v.server_up("es1", "127.0.1.1:8000".parse().unwrap());
        v.apply("es1", &MemberEvent::Joined(sm("old", "127.0.1.8")));
        v.apply(
            "es1",
            &MemberEvent::Snapshot(vec![sm("node1", "127.0.1.7")]),
        );
        assert_eq!(names(&mut v), ["es1", "node1"]);
    }

    #[test]
    fn since_is_kept_while_live_and_reset_after() {
        let mut v = MemberView::default();
        v.server_up("es1", "127.0.1.1:8000".parse().unwrap());
        v.apply("es1", &MemberEvent::Joined(sm("node1", "127.0.1.7")));
        assert_eq!(v.members(100)[1].since, 100);
        assert_eq!(v.members(200)[1].since, 100);
        v.apply(
            "es1",
            &MemberEvent::Left {
                name: "node1".into(),
            },
        );
        v.members(300);
        v.apply("es1", &MemberEvent::Joined(sm("node1", "127.0.1.7")));
        assert_eq!(v.members(400)[1].since, 400);
    }

    #[test]
    fn changes_are_described() {
        let mut v = MemberView::default();
        v.server_up("es1", "127.0.1.1:8000".parse().unwrap());
        let before = v.members(1);
        v.apply("es1", &MemberEvent::Joined(sm("node1", "127.0.1.7")));
        let after = v.members(2);
        assert_eq!(
            describe_changes(&before, &after),
            ["node1 (node: registrar) joined from 127.0.1.7"]
        );
        assert_eq!(describe_changes(&after, &before), ["node1 is gone"]);
    }

    fn left(name: &str) -> MemberEvent {
        MemberEvent::Left { name: name.into() }
    }

    fn two_servers_holding(name: &str) -> MemberView {
        let mut v = MemberView::default();
        v.server_up("es1", "127.0.1.1:8000".parse().unwrap());
        v.server_up("es2", "127.0.1.2:8000".parse().unwrap());
        v.apply("es1", &MemberEvent::Joined(sm(name, "127.0.1.7")));
        v.apply("es2", &MemberEvent::Joined(sm(name, "127.0.1.7")));
        v
    }

    #[test]
    fn the_first_goodbye_is_the_departure_and_a_late_one_changes_nothing() {
        let mut v = two_servers_holding("node1");
        v.apply("es1", &left("node1"));
        assert_eq!(
            names(&mut v),
            ["es1", "es2"],
            "es2's session is leaving too"
        );
        assert_eq!(v.take_departed().len(), 1);
        v.apply("es2", &left("node1"));
        assert_eq!(names(&mut v), ["es1", "es2"]);
        assert!(v.take_departed().is_empty(), "one departure, not two");
        assert!(v.leaving.is_empty(), "no mark outlives its session");
    }

    #[test]
    fn a_member_back_before_the_late_goodbye_stays() {
        // The member restarts in place: back at es1 while es2 still holds its old session.
        let mut v = two_servers_holding("node1");
        v.apply("es1", &left("node1"));
        v.apply("es1", &MemberEvent::Joined(sm("node1", "127.0.1.7")));
        assert_eq!(names(&mut v), ["es1", "es2", "node1"]);
        // es2 then reports the old session's goodbye: the new one at es1 still counts.
        v.apply("es2", &left("node1"));
        assert_eq!(names(&mut v), ["es1", "es2", "node1"]);
        assert_eq!(v.take_departed().len(), 1, "the one departure");
        // Or es2 is given the new session, which replaces the old one there.
        let mut v = two_servers_holding("node1");
        v.apply("es1", &left("node1"));
        v.apply("es2", &MemberEvent::Joined(sm("node1", "127.0.1.7")));
        assert_eq!(names(&mut v), ["es1", "es2", "node1"]);
        v.apply("es1", &MemberEvent::Joined(sm("node1", "127.0.1.7")));
        v.apply(
            "es1",
            &MemberEvent::Lost {
                name: "node1".into(),
                reason: "idle".into(),
            },
        );
        assert_eq!(
            names(&mut v),
            ["es1", "es2", "node1"],
            "es2 holds the new one"
        );
    }

    #[test]
    fn a_snapshot_keeps_a_mark_and_a_lost_server_ends_it() {
        let mut v = two_servers_holding("node1");
        v.apply("es1", &left("node1"));
        // es2's snapshot may still hold the old session: it stays leaving.
        v.apply(
            "es2",
            &MemberEvent::Snapshot(vec![sm("node1", "127.0.1.7"), sm("node2", "127.0.1.8")]),
        );
        assert_eq!(names(&mut v), ["es1", "es2", "node2"]);
        v.apply(
            "es2",
            &MemberEvent::Snapshot(vec![sm("node2", "127.0.1.8")]),
        );
        assert!(v.leaving.is_empty(), "the snapshot no longer holds it");
        // The manager's session with es2 ends: es2 may come back as a new process, whose
        // snapshot holds only new sessions.
        let mut v = two_servers_holding("node1");
        v.apply("es1", &left("node1"));
        v.server_down("es2");
        assert!(v.leaving.is_empty());
        v.server_up("es2", "127.0.1.2:8000".parse().unwrap());
        v.apply(
            "es2",
            &MemberEvent::Snapshot(vec![sm("node1", "127.0.1.7")]),
        );
        assert_eq!(names(&mut v), ["es1", "es2", "node1"]);
    }

    #[test]
    fn a_loss_marks_nothing() {
        let mut v = two_servers_holding("node1");
        v.apply(
            "es1",
            &MemberEvent::Lost {
                name: "node1".into(),
                reason: "idle".into(),
            },
        );
        assert_eq!(names(&mut v), ["es1", "es2", "node1"]);
        assert!(v.take_departed().is_empty());
    }
}
