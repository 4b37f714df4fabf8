//! Nonce-count replay protection: which `nc` values each nonce has been used with.
//!
//! A client counts the requests it sends with one nonce (`nc=00000001`, `00000002`, ...);
//! a request whose count was already used is a replay. Requests can arrive out of order
//! (several transactions at once, UDP), so each nonce keeps the highest count seen and a
//! 64-bit bitmap of the 64 counts ending at it: a count inside the window is accepted once,
//! a count below it is refused.

use std::collections::{BTreeSet, HashMap};

use super::NonceInfo;

/// How many counts below the highest one are remembered.
const WINDOW: u32 = 64;

/// Why a nonce count was refused. The response was right (this check comes last), so
/// answer with a fresh challenge and `stale=true`: a real client retries with the new
/// nonce, a replayed request goes no further.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Replay {
    /// This count was already used with this nonce.
    #[error("nonce count already used")]
    Seen,
    /// The count is 64 or more below the highest seen for this nonce: too old to tell.
    #[error("nonce count below the window")]
    TooOld,
    /// The nonce is not in the table but was issued no later than one evicted for room,
    /// so it may have been used already: it is treated as unknown.
    #[error("nonce no longer tracked")]
    Evicted,
    /// The nonce is past its lifetime.
    #[error("nonce expired")]
    Expired,
    /// `nc=00000000`: counts start at 1.
    #[error("nonce count zero")]
    Zero,
}

/// The counts seen for one nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Window {
    /// The highest count accepted.
    highest: u32,
    /// Bit `k` set: count `highest - k` accepted.
    seen: u64,
}

impl Window {
    fn accept(&mut self, nc: u32) -> Result<(), Replay> {
        if nc > self.highest {
            let shift = nc - self.highest;
            self.seen = if shift >= WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = nc;
            return Ok(());
        }
        let back = self.highest - nc;
        if back >= WINDOW {
            return Err(Replay::TooOld);
        }
        let bit = 1u64 << back;
        if self.seen & bit != 0 {
            return Err(Replay::Seen);
        }
        self.seen |= bit;
        Ok(())
    }
}

/// The nonce counts seen, per nonce, for at most `max_entries` nonces.
///
/// Only nonces that passed [`super::NonceKeys::check`] and a correct response are recorded
/// ([`super::verify()`] calls [`NonceCounts::accept`] last), so the table fills with
/// authenticated use only.
///
/// **Bounded, never accepting twice.** When the table is full, the nonce issued earliest
/// is evicted and its issue time becomes a floor: a nonce that is not in the table and was
/// issued at or before the floor is refused with [`Replay::Evicted`], since it may be an
/// evicted one whose counts are forgotten. Such a request gets a fresh challenge; it is
/// never accepted a second time. Nonces issued after the floor are new and start a window.
/// Entries also leave the table when their nonce passes its lifetime (such a nonce is
/// refused anyway); that does not move the floor.
///
/// For replay protection across the farm, every request with a given nonce must be
/// checked against the same table (for example at the node or worker the nonce maps to).
#[derive(Clone, Debug)]
pub struct NonceCounts {
    max_entries: usize,
    lifetime_ms: u64,
    windows: HashMap<Box<str>, Window>,
    /// The same nonces, ordered by issue time: the eviction and expiry order.
    by_issue: BTreeSet<(u64, Box<str>)>,
    /// The latest issue time of a nonce evicted for room.
    floor_ms: Option<u64>,
}

impl NonceCounts {
    /// A table of at most `max_entries` nonces (at least 1), each kept until
    /// `lifetime_ms` after it was issued (use the nonce lifetime of the
    /// [`super::Policy`]).
    pub fn new(max_entries: usize, lifetime_ms: u64) -> NonceCounts {
        NonceCounts {
            max_entries: max_entries.max(1),
            lifetime_ms,
            windows: HashMap::new(),
            by_issue: BTreeSet::new(),
            floor_ms: None,
        }
    }

    /// Records count `nc` for `nonce` (whose check gave `info`) at `now_ms`, or refuses it
    /// as a replay. Also drops the entries of expired nonces.
    pub fn accept(
        &mut self,
        nonce: &str,
        info: NonceInfo,
        nc: u32,
        now_ms: u64,
    ) -> Result<(), Replay> {
        if nc == 0 {
            return Err(Replay::Zero);
        }
        self.purge_expired(now_ms);
        if self.is_expired(info.issued_ms, now_ms) {
            return Err(Replay::Expired);
        }
        if let Some(w) = self.windows.get_mut(nonce) {
            return w.accept(nc);
        }
        if self.floor_ms.is_some_and(|f| info.issued_ms <= f) {
            return Err(Replay::Evicted);
        }
        self.windows.insert(
            nonce.into(),
            Window {
                highest: nc,
                seen: 1,
            },
        );
        self.by_issue.insert((info.issued_ms, nonce.into()));
        while self.windows.len() > self.max_entries {
            let Some((issued_ms, oldest)) = self.by_issue.pop_first() else {
                break;
            };
            self.windows.remove(&oldest);
            self.floor_ms = Some(self.floor_ms.map_or(issued_ms, |f| f.max(issued_ms)));
        }
        Ok(())
    }

    /// Drops the entries of nonces past their lifetime at `now_ms` (also done by
    /// [`NonceCounts::accept`]; call it from a timer to free memory when idle).
    pub fn purge_expired(&mut self, now_ms: u64) {
        while let Some((issued_ms, _)) = self.by_issue.first() {
            if !self.is_expired(*issued_ms, now_ms) {
                break;
            }
            if let Some((_, nonce)) = self.by_issue.pop_first() {
                self.windows.remove(&nonce);
            }
        }
    }

    /// How many nonces are tracked.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether no nonce is tracked.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// The most nonces tracked at once.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    fn is_expired(&self, issued_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(issued_ms) > self.lifetime_ms
    }
}

/// Most nonces [`RecentNonces`] remembers for one subscriber: a phone uses one nonce at a
/// time, two around a refresh.
pub const RECENT_NONCES: usize = 8;

/// The nonce counts of one subscriber, small enough to live in the subscriber's record at
/// the node that owns its AOR (and to be replicated with it): every request authenticated
/// as that subscriber is checked there, so a replay is refused wherever it arrives.
///
/// The same rules as [`NonceCounts`], for at most [`RECENT_NONCES`] nonces: when full, the
/// nonce issued earliest is forgotten and its issue time becomes a floor below which an
/// unknown nonce is refused ([`Replay::Evicted`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecentNonces {
    /// `(nonce, issued_ms, window)`, in no particular order.
    entries: Vec<(String, u64, Window)>,
    /// The latest issue time of a nonce forgotten for room.
    floor_ms: u64,
}

impl RecentNonces {
    /// Records count `nc` for `nonce` issued at `issued_ms`, or refuses it; entries of
    /// nonces older than `lifetime_ms` at `now_ms` are dropped first.
    pub fn accept(
        &mut self,
        nonce: &str,
        issued_ms: u64,
        nc: u32,
        now_ms: u64,
        lifetime_ms: u64,
    ) -> Result<(), Replay> {
        if nc == 0 {
            return Err(Replay::Zero);
        }
        let expired = |issued: u64| now_ms.saturating_sub(issued) > lifetime_ms;
        self.entries.retain(|(_, issued, _)| !expired(*issued));
        if expired(issued_ms) {
            return Err(Replay::Expired);
        }
        if let Some((_, _, w)) = self.entries.iter_mut().find(|(n, _, _)| n == nonce) {
            return w.accept(nc);
        }
        if self.floor_ms > 0 && issued_ms <= self.floor_ms {
            return Err(Replay::Evicted);
        }
        self.entries.push((
            nonce.to_owned(),
            issued_ms,
            Window {
                highest: nc,
                seen: 1,
            },
        ));
        while self.entries.len() > RECENT_NONCES {
            let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, issued, _))| *issued)
                .map(|(i, _)| i)
            else {
                break;
            };
            let (_, issued, _) = self.entries.swap_remove(oldest);
            self.floor_ms = self.floor_ms.max(issued);
        }
        Ok(())
    }

    /// How many nonces are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    const T0: u64 = 1_700_000_000_000;
    const LIFE: u64 = 300_000;

    fn at(issued_ms: u64) -> NonceInfo {
        NonceInfo { issued_ms }
    }

    #[test]
    fn in_order_and_replayed() {
        let mut c = NonceCounts::new(10, LIFE);
        for nc in 1..=5 {
            assert_eq!(c.accept("n", at(T0), nc, T0), Ok(()));
        }
        for nc in 1..=5 {
            assert_eq!(c.accept("n", at(T0), nc, T0), Err(Replay::Seen));
        }
        assert_eq!(c.accept("n", at(T0), 0, T0), Err(Replay::Zero));
        // Counts are per nonce.
        assert_eq!(c.accept("m", at(T0), 1, T0), Ok(()));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn out_of_order_within_the_window() {
        let mut c = NonceCounts::new(10, LIFE);
        assert_eq!(c.accept("n", at(T0), 3, T0), Ok(()));
        assert_eq!(c.accept("n", at(T0), 1, T0), Ok(()));
        assert_eq!(c.accept("n", at(T0), 2, T0), Ok(()));
        assert_eq!(c.accept("n", at(T0), 1, T0), Err(Replay::Seen));
        assert_eq!(c.accept("n", at(T0), 2, T0), Err(Replay::Seen));
        // A jump ahead: the counts skipped stay usable once while inside the window.
        // The window is now 3..=66: 3 is remembered, 2 and 1 are below it.
        assert_eq!(c.accept("n", at(T0), 66, T0), Ok(()));
        assert_eq!(c.accept("n", at(T0), 3, T0), Err(Replay::Seen));
        assert_eq!(c.accept("n", at(T0), 2, T0), Err(Replay::TooOld));
        assert_eq!(c.accept("n", at(T0), 4, T0), Ok(()));
        assert_eq!(c.accept("n", at(T0), 4, T0), Err(Replay::Seen));
        assert_eq!(c.accept("n", at(T0), 65, T0), Ok(()));
    }

    #[test]
    fn window_edges() {
        let mut c = NonceCounts::new(10, LIFE);
        assert_eq!(c.accept("n", at(T0), 100, T0), Ok(()));
        // 100 - 63 is the lowest count still in the window, 100 - 64 the first below it.
        assert_eq!(c.accept("n", at(T0), 37, T0), Ok(()));
        assert_eq!(c.accept("n", at(T0), 37, T0), Err(Replay::Seen));
        assert_eq!(c.accept("n", at(T0), 36, T0), Err(Replay::TooOld));
        // A jump of more than the window forgets everything below.
        assert_eq!(c.accept("n", at(T0), 1_000, T0), Ok(()));
        assert_eq!(c.accept("n", at(T0), 999, T0), Ok(()));
        assert_eq!(c.accept("n", at(T0), 100, T0), Err(Replay::TooOld));
        assert_eq!(c.accept("n", at(T0), u32::MAX, T0), Ok(()));
        assert_eq!(c.accept("n", at(T0), u32::MAX, T0), Err(Replay::Seen));
    }

    #[test]
    fn bounded_eviction_never_accepts_twice() {
        let mut c = NonceCounts::new(2, LIFE);
        assert_eq!(c.accept("a", at(T0), 1, T0), Ok(()));
        assert_eq!(c.accept("b", at(T0 + 1), 1, T0), Ok(()));
        assert_eq!(c.accept("c", at(T0 + 2), 1, T0), Ok(()));
        // "a" was issued earliest: evicted, and the floor is its issue time.
        assert_eq!(c.len(), 2);
        assert_eq!(c.accept("a", at(T0), 1, T0), Err(Replay::Evicted));
        assert_eq!(c.accept("a", at(T0), 2, T0), Err(Replay::Evicted));
        // A nonce never seen but issued at or before the floor: treated as unknown too.
        assert_eq!(c.accept("z", at(T0 - 5), 1, T0), Err(Replay::Evicted));
        // Those still tracked keep their windows.
        assert_eq!(c.accept("b", at(T0 + 1), 1, T0), Err(Replay::Seen));
        assert_eq!(c.accept("c", at(T0 + 2), 2, T0), Ok(()));
        // A nonce issued later than everything tracked evicts "b".
        assert_eq!(c.accept("d", at(T0 + 3), 1, T0), Ok(()));
        assert_eq!(c.accept("b", at(T0 + 1), 2, T0), Err(Replay::Evicted));
        assert_eq!(c.len(), 2);
        assert_eq!(c.max_entries(), 2);
    }

    #[test]
    fn a_new_entry_older_than_all_others_is_evicted_at_once() {
        let mut c = NonceCounts::new(1, LIFE);
        assert_eq!(c.accept("b", at(T0 + 10), 1, T0), Ok(()));
        // "a" is older than "b": accepted, then evicted itself, which raises the floor.
        assert_eq!(c.accept("a", at(T0), 1, T0), Ok(()));
        assert_eq!(c.accept("a", at(T0), 1, T0), Err(Replay::Evicted));
        assert_eq!(c.accept("b", at(T0 + 10), 1, T0), Err(Replay::Seen));
    }

    #[test]
    fn expiry() {
        let mut c = NonceCounts::new(10, LIFE);
        assert_eq!(c.accept("a", at(T0), 1, T0), Ok(()));
        assert_eq!(c.accept("b", at(T0 + 1_000), 1, T0 + 1_000), Ok(()));
        c.purge_expired(T0 + LIFE);
        assert_eq!(c.len(), 2);
        c.purge_expired(T0 + LIFE + 1);
        assert_eq!(c.len(), 1);
        assert_eq!(
            c.accept("a", at(T0), 2, T0 + LIFE + 1),
            Err(Replay::Expired)
        );
        assert_eq!(c.accept("b", at(T0 + 1_000), 2, T0 + LIFE + 1), Ok(()));
        assert_eq!(
            c.accept("b", at(T0 + 1_000), 3, T0 + 1_000 + LIFE + 1),
            Err(Replay::Expired)
        );
        assert!(c.is_empty());
        // Expiry is not eviction: no floor was set.
        assert_eq!(c.accept("c", at(T0 + LIFE), 1, T0 + LIFE), Ok(()));
    }

    #[test]
    fn recent_nonces_follow_the_same_rules_in_a_small_space() {
        let mut r = RecentNonces::default();
        assert_eq!(r.accept("n", T0, 1, T0, LIFE), Ok(()));
        assert_eq!(r.accept("n", T0, 1, T0, LIFE), Err(Replay::Seen));
        assert_eq!(r.accept("n", T0, 3, T0, LIFE), Ok(()));
        assert_eq!(r.accept("n", T0, 2, T0, LIFE), Ok(()));
        assert_eq!(r.accept("n", T0, 0, T0, LIFE), Err(Replay::Zero));
        // Full: the earliest issued is forgotten and becomes the floor.
        for i in 1..=RECENT_NONCES as u64 {
            assert_eq!(r.accept(&format!("m{i}"), T0 + i, 1, T0 + i, LIFE), Ok(()));
        }
        assert_eq!(r.len(), RECENT_NONCES);
        assert_eq!(r.accept("n", T0, 4, T0 + 9, LIFE), Err(Replay::Evicted));
        assert_eq!(r.accept("m8", T0 + 8, 1, T0 + 9, LIFE), Err(Replay::Seen));
        // Expired nonces leave, and are refused.
        assert_eq!(
            r.accept("late", T0 + LIFE + 100, 1, T0 + LIFE + 100, LIFE),
            Ok(())
        );
        assert_eq!(r.len(), 1);
        assert_eq!(
            r.accept("m1", T0 + 1, 2, T0 + LIFE + 100, LIFE),
            Err(Replay::Expired)
        );
        // It survives a round trip through its encoding (it is replicated with its record).
        let text = serde_json::to_string(&r).unwrap();
        let mut back: RecentNonces = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back.accept("late", T0 + LIFE + 100, 1, T0 + LIFE + 100, LIFE),
            Err(Replay::Seen)
        );
    }

    proptest! {
        /// Against a model that remembers every count: never accepts a count twice, and
        /// accepts exactly the new counts inside the window.
        #[test]
        fn matches_a_model(ncs in prop::collection::vec(1u32..200, 1..200)) {
            let mut c = NonceCounts::new(4, LIFE);
            let mut seen = HashSet::new();
            let mut highest = 0u32;
            for nc in ncs {
                let fresh = !seen.contains(&nc) && (nc > highest || highest - nc < 64);
                let got = c.accept("n", at(T0), nc, T0);
                prop_assert_eq!(got.is_ok(), fresh, "nc {}", nc);
                if got.is_ok() {
                    seen.insert(nc);
                    highest = highest.max(nc);
                }
            }
        }

        /// Across many nonces and a small table: a (nonce, nc) pair is never accepted twice.
        #[test]
        fn never_twice_under_eviction(
            uses in prop::collection::vec((0u8..12, 1u32..6), 1..300),
        ) {
            let mut c = NonceCounts::new(3, LIFE);
            let mut accepted = HashSet::new();
            for (n, nc) in uses {
                let nonce = format!("nonce{n}");
                if c.accept(&nonce, at(T0 + u64::from(n)), nc, T0).is_ok() {
                    prop_assert!(accepted.insert((n, nc)), "{} {} accepted twice", nonce, nc);
                }
                prop_assert!(c.len() <= 3);
            }
        }
    }
}
