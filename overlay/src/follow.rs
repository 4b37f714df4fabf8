//! Following the network status as the active manager publishes it: whole statuses, deltas
//! and heartbeats (DESIGN.md section 5).
//!
//! The active manager publishes the whole status when it takes office (and to an event
//! server whose session with it starts), then each change as a [`StatusDelta`](crate::status::StatusDelta) from the
//! version before, and every few seconds a [`StatusBeat`](crate::status::StatusBeat) naming the current version and
//! its digest. A [`Follower`] takes all three from the `network` topic and keeps the status:
//!
//! - a whole status is taken when its `(term, version)` is greater than the one held;
//! - a delta is applied when it follows the status held (same term and manager, its base is
//!   the version held) and the result has the manager's digest;
//! - anything newer that cannot be applied (a delta past a gap, a heartbeat ahead of the
//!   status held, or one of the same version with another digest) means a change was missed:
//!   [`Followed::Missed`] tells the caller to ask the event servers for the whole status
//!   ([`crate::client::EventClient::fetch`]), at most once per [`Follower::FETCH_EVERY`].
//!
//! A receiver thus never applies an older status than the one it holds, and converges on
//! the manager's status after missing any number of deltas.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::status::NetworkStatus;
use crate::wire::Payload;

/// What a publication did to the status held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followed {
    /// Nothing new (not a network payload, an old or repeated one, or a heartbeat that
    /// agrees).
    Same,
    /// A newer status is held now; `before` is the one it replaced.
    Changed {
        /// The status held before, if any.
        before: Option<Arc<NetworkStatus>>,
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
    /// Deltas that did not follow the status held.
    pub gaps: u64,
}

impl Follower {
    /// The shortest time between two requests for the whole status.
    pub const FETCH_EVERY: Duration = Duration::from_millis(250);

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

    /// Takes a publication (anything but the `network` topic's payloads is [`Followed::Same`]).
    pub fn take(&mut self, payload: &Payload) -> Followed {
        self.take_at(payload, Instant::now())
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
                let before = self.status.replace(next);
                Followed::Changed {
                    before,
                    by_delta: false,
                }
            }
            Payload::NetworkDelta(d) => {
                let held = self.status.as_ref().map(|s| (s.term, s.version));
                if held.is_some_and(|h| (d.term, d.version) <= h) {
                    return Followed::Same;
                }
                let Some(current) = &self.status else {
                    return self.missed(now);
                };
                let mut next = NetworkStatus::clone(current);
                let mut digest = self.digest;
                match next.apply_delta(d, &mut digest) {
                    Ok(()) => {
                        self.digest = digest;
                        let before = self.status.replace(Arc::new(next));
                        Followed::Changed {
                            before,
                            by_delta: true,
                        }
                    }
                    // Not the status it was made from (a gap, another copy) or one that
                    // cannot be right: ask for the whole status either way.
                    Err(_) => {
                        self.gaps += 1;
                        self.missed(now)
                    }
                }
            }
            Payload::NetworkBeat(b) => {
                let held = self.status.as_ref().map(|s| (s.term, s.version));
                match held {
                    Some(h) if (b.term, b.version) < h => Followed::Same,
                    Some(h) if (b.term, b.version) == h && b.digest == self.digest => {
                        Followed::Same
                    }
                    _ => self.missed(now),
                }
            }
            _ => Followed::Same,
        }
    }

    fn missed(&mut self, now: Instant) -> Followed {
        match self.last_fetch {
            Some(t) if now.saturating_duration_since(t) < Self::FETCH_EVERY => Followed::Same,
            _ => {
                self.last_fetch = Some(now);
                Followed::Missed
            }
        }
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
        // 2 -> 3 is missed; 3 -> 4 does not follow.
        let later = t0 + Follower::FETCH_EVERY;
        assert_eq!(
            f.take_at(&Payload::NetworkDelta(s3.delta_to(&s4).unwrap()), later),
            Followed::Missed
        );
        assert_eq!(f.gaps, 1);
        // Asked once per interval, not once per delta.
        assert_eq!(f.take_at(&beat(&s4), later), Followed::Same);
        assert_eq!(
            f.take_at(&beat(&s4), later + Follower::FETCH_EVERY),
            Followed::Missed,
            "a heartbeat ahead of the status held"
        );
        // The whole status (as an event server sends it on request) brings it up to date.
        assert!(matches!(
            f.take_at(&Payload::Network(s4.clone()), later),
            Followed::Changed { .. }
        ));
        assert_eq!(**f.status().unwrap(), s4);
        assert_eq!(f.take_at(&beat(&s4), later), Followed::Same);
        // An older whole status never replaces it.
        assert_eq!(f.take_at(&Payload::Network(s2), later), Followed::Same);
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
