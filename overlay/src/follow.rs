//! Following the network status as the active manager publishes it: whole statuses, deltas
//! and heartbeats (DESIGN.md section 5).
//!
//! The active manager publishes the whole status when it takes office (and to an event
//! server whose session with it starts), then each change as a [`StatusDelta`] from the
//! version before, and every few seconds a [`StatusBeat`](crate::status::StatusBeat) naming the current version and
//! its digest. A [`Follower`] takes all three from the `network` topic and keeps the status:
//!
//! - a whole status is taken when its `(term, version)` is greater than the one held;
//! - a delta is applied when it follows the status held (same term and manager, its base is
//!   the version held) and the result has the manager's digest;
//! - a delta that does not follow yet (its base is ahead of the status held) is kept for
//!   [`Follower::GAP_GRACE`]: the deltas between are usually on their way through another
//!   event server (every publication reaches a member through each of its event servers, and
//!   the servers do not keep each other's pace), and it is applied as soon as they arrive;
//! - a change that is missed for good (a kept delta whose predecessors did not come within
//!   the grace, a heartbeat ahead of the status held, one of the same version with another
//!   digest, a delta of another term) makes the follower ask for the whole status:
//!   [`Followed::Missed`] from [`Follower::take`] or [`Follower::check`] tells the caller to
//!   fetch it ([`crate::client::EventClient::fetch_one`]), at most once per
//!   [`Follower::FETCH_EVERY`], and again until the status is caught up. A caller calls
//!   [`Follower::check`] at [`Follower::due`] while that is set.
//!
//! A receiver thus never applies an older status than the one it holds, and converges on
//! the manager's status after missing any number of deltas.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::status::{NetworkStatus, StatusDelta};
use crate::wire::Payload;

/// What a publication did to the status held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followed {
    /// Nothing new (not a network payload, an old or repeated one, a heartbeat that agrees,
    /// or a delta kept until the ones before it arrive).
    Same,
    /// A newer status is held now ([`Follower::status`]).
    Changed {
        /// Whether it came as a delta (else whole).
        by_delta: bool,
    },
    /// A change was missed: ask the event servers for the whole status.
    Missed,
}

/// The status held and how to bring it up to date. See the module documentation.
#[derive(Debug, Default)]
pub struct Follower {
    status: Option<Arc<NetworkStatus>>,
    /// [`NetworkStatus::digest`] of `status`.
    digest: u64,
    last_fetch: Option<Instant>,
    /// Deltas ahead of the status held, by their base version (same term and manager).
    pending: BTreeMap<u64, StatusDelta>,
    /// When the whole status is to be asked for, unless caught up before.
    fetch_at: Option<Instant>,
    /// Deltas that did not follow the status held when they came (kept or not).
    pub gaps: u64,
    /// Kept deltas that were applied once the ones before them came.
    pub reordered: u64,
    /// Times the whole status was asked for.
    pub fetches: u64,
}

impl Follower {
    /// The shortest time between two requests for the whole status.
    pub const FETCH_EVERY: Duration = Duration::from_millis(250);
    /// How long a delta ahead of the status held waits for the ones before it.
    pub const GAP_GRACE: Duration = Duration::from_millis(100);
    /// Most deltas kept waiting; beyond, the newest are dropped (the whole status covers them).
    pub const MAX_PENDING: usize = 64;

    /// A follower holding nothing.
    pub fn new() -> Follower {
        Follower::default()
    }

    /// The status held.
    pub fn status(&self) -> Option<&Arc<NetworkStatus>> {
        self.status.as_ref()
    }

    /// The digest of the status held (0 when none).
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// When [`Follower::check`] is to be called next (`None`: the status held is current as
    /// far as this follower knows).
    pub fn due(&self) -> Option<Instant> {
        let at = self.fetch_at?;
        Some(match self.last_fetch {
            Some(t) => at.max(t + Self::FETCH_EVERY),
            None => at,
        })
    }

    /// Takes a publication (anything but the `network` topic's payloads is [`Followed::Same`]).
    pub fn take(&mut self, payload: &Payload) -> Followed {
        self.take_at(payload, Instant::now())
    }

    /// [`Follower::check`] at a given time (tests).
    pub fn check_at(&mut self, now: Instant) -> Followed {
        match self.due() {
            Some(t) if t <= now => {
                self.last_fetch = Some(now);
                self.fetches += 1;
                // Asked again after FETCH_EVERY if the answer does not catch us up.
                self.fetch_at = Some(now);
                Followed::Missed
            }
            _ => Followed::Same,
        }
    }

    /// [`Followed::Missed`] when the whole status is to be asked for now (see
    /// [`Follower::due`]).
    pub fn check(&mut self) -> Followed {
        self.check_at(Instant::now())
    }

    /// [`Follower::take`] at a given time (tests).
    pub fn take_at(&mut self, payload: &Payload, now: Instant) -> Followed {
        match payload {
            Payload::Network(s) => {
                if !s.supersedes(self.status.as_deref()) {
                    return Followed::Same;
                }
                let next = Arc::new(s.clone());
                self.digest = next.digest();
                self.status = Some(next);
                self.caught_up(now);
                Followed::Changed { by_delta: false }
            }
            Payload::NetworkDelta(d) => {
                let Some(current) = &self.status else {
                    return self.behind(now, now);
                };
                if (d.term, d.version) <= (current.term, current.version) {
                    return Followed::Same;
                }
                if d.term == current.term
                    && d.manager == current.manager
                    && d.base > current.version
                {
                    self.gaps += 1;
                    if self.pending.len() < Self::MAX_PENDING {
                        self.pending.entry(d.base).or_insert_with(|| d.clone());
                    }
                    return self.behind(now + Self::GAP_GRACE, now);
                }
                if self.apply(d) {
                    self.caught_up(now);
                    Followed::Changed { by_delta: true }
                } else {
                    // Not the status it was made from (another term, another copy) or one
                    // that cannot be right: ask for the whole status either way.
                    self.gaps += 1;
                    self.behind(now, now)
                }
            }
            Payload::NetworkBeat(b) => {
                let held = self.status.as_ref().map(|s| (s.term, s.version));
                match held {
                    Some(h) if (b.term, b.version) < h => Followed::Same,
                    Some(h) if (b.term, b.version) == h && b.digest == self.digest => {
                        Followed::Same
                    }
                    _ => self.behind(now, now),
                }
            }
            _ => Followed::Same,
        }
    }

    /// Applies `d` to the status held; false when it does not follow it or is wrong. In
    /// place when no one else holds the status (nothing but the changed members is touched),
    /// else on a copy.
    fn apply(&mut self, d: &StatusDelta) -> bool {
        let Some(current) = &mut self.status else {
            return false;
        };
        // Checked before anything changes, so a wrong delta costs no copy.
        let Ok(digest) = current.digest_after(d, self.digest) else {
            return false;
        };
        Arc::make_mut(current).put_delta(d);
        self.digest = digest;
        true
    }

    /// After a newer status is held: applies the kept deltas that follow it, drops those it
    /// covers, and stops asking for the whole status if nothing is missing any more.
    fn caught_up(&mut self, now: Instant) {
        loop {
            let Some(version) = self.status.as_ref().map(|s| s.version) else {
                return;
            };
            // Deltas whose base is older than the status held are covered by it.
            self.pending = self.pending.split_off(&version);
            let Some(d) = self.pending.remove(&version) else {
                break;
            };
            if self.apply(&d) {
                self.reordered += 1;
            } else {
                // It claimed to follow and does not: the whole status will tell.
                self.pending.clear();
                self.fetch_at = Some(now);
                return;
            }
        }
        if self.pending.is_empty() {
            self.fetch_at = None;
        }
    }

    /// Something is missing: ask for the whole status at `at` (now or after the grace).
    fn behind(&mut self, at: Instant, now: Instant) -> Followed {
        self.fetch_at = Some(self.fetch_at.map_or(at, |t| t.min(at)));
        self.check_at(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Kind, Member, StatusBeat};
    use std::net::IpAddr;

    fn status(version: u64, names: &[&str]) -> NetworkStatus {
        NetworkStatus {
            term: 2,
            version,
            manager: "manager1".into(),
            members: names
                .iter()
                .map(|n| {
                    Arc::new(Member {
                        name: n.to_string(),
                        kind: Kind::Node,
                        roles: Vec::new(),
                        endpoints: Vec::new(),
                        since: 1,
                        ip: IpAddr::from([127, 0, 0, 1]),
                    })
                })
                .collect(),
        }
    }

    fn beat(s: &NetworkStatus) -> Payload {
        Payload::NetworkBeat(StatusBeat {
            term: s.term,
            version: s.version,
            manager: s.manager.clone(),
            members: s.members.len() as u32,
            digest: s.digest(),
        })
    }

    #[test]
    fn deltas_in_order_are_applied_and_a_gap_asks_for_the_whole_status() {
        let t0 = Instant::now();
        let (s1, s2, s3, s4) = (
            status(1, &["a"]),
            status(2, &["a", "b"]),
            status(3, &["b"]),
            status(4, &["b", "c"]),
        );
        let mut f = Follower::new();
        assert_eq!(
            f.take_at(&Payload::NetworkDelta(s1.delta_to(&s2).unwrap()), t0),
            Followed::Missed,
            "a delta with nothing held"
        );
        assert!(matches!(
            f.take_at(&Payload::Network(s1.clone()), t0),
            Followed::Changed {
                by_delta: false,
                ..
            }
        ));
        assert!(matches!(
            f.take_at(&Payload::NetworkDelta(s1.delta_to(&s2).unwrap()), t0),
            Followed::Changed { by_delta: true, .. }
        ));
        assert_eq!(**f.status().unwrap(), s2);
        assert_eq!(f.take_at(&beat(&s2), t0), Followed::Same);
        // The same delta again (from another event server) is nothing new.
        assert_eq!(
            f.take_at(&Payload::NetworkDelta(s1.delta_to(&s2).unwrap()), t0),
            Followed::Same
        );
        // 2 -> 3 is missed; 3 -> 4 does not follow: it waits for the grace, then the
        // whole status is asked for.
        let later = t0 + Follower::FETCH_EVERY;
        assert_eq!(
            f.take_at(&Payload::NetworkDelta(s3.delta_to(&s4).unwrap()), later),
            Followed::Same,
            "kept while 2 -> 3 may still come through another event server"
        );
        assert_eq!(f.gaps, 1);
        assert_eq!(f.due(), Some(later + Follower::GAP_GRACE));
        assert_eq!(f.check_at(later + Follower::GAP_GRACE / 2), Followed::Same);
        let asked = later + Follower::GAP_GRACE;
        assert_eq!(f.check_at(asked), Followed::Missed);
        assert_eq!(f.fetches, 2, "with the first, when nothing was held");
        // Asked once per interval, not once per delta or heartbeat; again if not caught up.
        assert_eq!(f.take_at(&beat(&s4), asked), Followed::Same);
        assert_eq!(f.check_at(asked), Followed::Same);
        assert_eq!(f.due(), Some(asked + Follower::FETCH_EVERY));
        assert_eq!(
            f.check_at(asked + Follower::FETCH_EVERY),
            Followed::Missed,
            "not caught up: asked again"
        );
        // The whole status (as an event server sends it on request) brings it up to date.
        assert!(matches!(
            f.take_at(&Payload::Network(s4.clone()), asked),
            Followed::Changed { .. }
        ));
        assert_eq!(**f.status().unwrap(), s4);
        assert_eq!(f.due(), None, "nothing missing any more");
        assert_eq!(f.take_at(&beat(&s4), asked), Followed::Same);
        // An older whole status never replaces it.
        assert_eq!(f.take_at(&Payload::Network(s2), asked), Followed::Same);
        assert_eq!(f.fetches, 3);
    }

    #[test]
    fn deltas_out_of_order_through_several_event_servers_need_no_fetch() {
        let t0 = Instant::now();
        let s: Vec<NetworkStatus> = (1..=5)
            .map(|v| {
                let names: Vec<String> = (0..v).map(|i| format!("m{i}")).collect();
                let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
                status(v as u64, &names)
            })
            .collect();
        let delta = |i: usize| Payload::NetworkDelta(s[i].delta_to(&s[i + 1]).unwrap());
        let mut f = Follower::new();
        f.take_at(&Payload::Network(s[0].clone()), t0);
        // One server is ahead: 3 -> 4 and 4 -> 5 come before 1 -> 2 and 2 -> 3.
        assert_eq!(f.take_at(&delta(2), t0), Followed::Same);
        assert_eq!(f.take_at(&delta(3), t0), Followed::Same);
        assert_eq!(f.status().unwrap().version, 1);
        assert!(f.due().is_some());
        assert!(matches!(f.take_at(&delta(0), t0), Followed::Changed { .. }));
        assert_eq!(f.status().unwrap().version, 2);
        assert!(matches!(
            f.take_at(&delta(1), t0),
            Followed::Changed { by_delta: true, .. }
        ));
        assert_eq!(
            **f.status().unwrap(),
            s[4],
            "the kept deltas applied in order"
        );
        assert_eq!((f.gaps, f.reordered, f.fetches), (2, 2, 0));
        assert_eq!(f.due(), None);
        // The slower server's copies are nothing new.
        for i in 0..4 {
            assert_eq!(f.take_at(&delta(i), t0), Followed::Same);
        }
        assert_eq!(
            f.check_at(t0 + Follower::GAP_GRACE + Follower::FETCH_EVERY),
            Followed::Same
        );
    }

    #[test]
    fn a_kept_delta_that_turns_out_wrong_asks_for_the_whole_status() {
        let t0 = Instant::now();
        let (s1, s2, s3) = (
            status(1, &["a"]),
            status(2, &["a", "b"]),
            status(3, &["a", "b", "c"]),
        );
        let mut f = Follower::new();
        f.take_at(&Payload::Network(s1.clone()), t0);
        let mut bad = s2.delta_to(&s3).unwrap();
        bad.digest ^= 1;
        assert_eq!(f.take_at(&Payload::NetworkDelta(bad), t0), Followed::Same);
        assert_eq!(
            f.take_at(&Payload::NetworkDelta(s1.delta_to(&s2).unwrap()), t0),
            Followed::Changed { by_delta: true }
        );
        assert_eq!(f.status().unwrap().version, 2);
        assert_eq!(f.due(), Some(t0), "asked for at once");
        assert_eq!(f.check_at(t0), Followed::Missed);
    }

    #[test]
    fn a_heartbeat_of_the_same_version_with_another_digest_means_a_wrong_copy() {
        let t0 = Instant::now();
        let mut f = Follower::new();
        f.take_at(&Payload::Network(status(5, &["a", "b"])), t0);
        let Payload::NetworkBeat(mut b) = beat(&status(5, &["a"])) else {
            unreachable!()
        };
        b.version = 5;
        assert_eq!(f.take_at(&Payload::NetworkBeat(b), t0), Followed::Missed);
    }
}
