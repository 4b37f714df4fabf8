//! The answers of completed non-INVITE server transactions over UDP, kept to absorb the
//! request's retransmissions until Timer J (RFC 3261 section 17.2.2).
//!
//! Every answer is kept for the same time (Timer J), so answers expire in the order they were
//! kept: the table is a queue in that order, and expiring is popping its front. No timer per
//! answer goes on the engine's heap. At 30,000 REGISTERs a second the table holds about
//! 960,000 answers; a heap of that many timers costs a sift through twenty levels of cold
//! memory for every answer that expires, and a hash map holding the answers themselves moves
//! every one of them each time it grows.
//!
//! The queue holds the answers; a hash map from the key's hash to the answer's place in the
//! queue finds them (16 bytes an entry). Two live keys with one 64-bit hash (the hasher's
//! seed is random per table) cannot both be indexed: the older answer is then forgotten
//! early, and a retransmission of its request is processed again, as when the table is full.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::time::Instant;

use bytes::Bytes;

use super::Hop;
use crate::transaction::TransactionKey;

/// One kept answer.
pub(super) struct Answer {
    /// The transaction's key.
    pub(super) key: TransactionKey,
    /// The final response, as sent.
    pub(super) bytes: Bytes,
    /// Where it went.
    pub(super) hop: Hop,
    hash: u64,
    expires: Instant,
    /// False once replaced by a newer answer of the same key (or one whose hash collides).
    live: bool,
}

impl Answer {
    fn cost(&self) -> usize {
        cost(&self.key, &self.bytes)
    }
}

/// What an answer counts against the table's byte bound: the response, the key's strings and
/// the table's own share of an entry (queue and index).
pub(super) fn cost(key: &TransactionKey, bytes: &Bytes) -> usize {
    bytes.len() + key.branch.len() + key.sent_by.len() + 160
}

/// Hashes a `u64` that is already a hash: the index's keys.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Completed answers in the order they were kept, bounded in entries and in bytes.
pub(super) struct CompletedTable {
    queue: VecDeque<Answer>,
    /// The sequence number of `queue[0]`.
    first: u64,
    /// Key hash to sequence number, for the live answers.
    index: HashMap<u64, u64, BuildHasherDefault<Identity>>,
    hasher: foldhash::fast::RandomState,
    /// What the live answers count, as [`Answer::cost`] counts it.
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl CompletedTable {
    /// An empty table holding at most `max_entries` answers and `max_bytes`.
    pub(super) fn new(max_entries: usize, max_bytes: usize) -> CompletedTable {
        CompletedTable {
            queue: VecDeque::new(),
            first: 0,
            index: HashMap::default(),
            hasher: foldhash::fast::RandomState::default(),
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    fn hash(&self, key: &TransactionKey) -> u64 {
        self.hasher.hash_one(key)
    }

    fn at(&self, seq: u64) -> Option<&Answer> {
        let i = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        self.queue.get(i)
    }

    /// The answer kept for `key`.
    pub(super) fn get(&self, key: &TransactionKey) -> Option<&Answer> {
        let seq = *self.index.get(&self.hash(key))?;
        self.at(seq).filter(|a| a.live && a.key == *key)
    }

    /// Keeps `bytes`, sent to `hop`, as the answer to `key` until `expires`; an earlier answer
    /// to `key` is replaced. Returns false, keeping nothing, when the table is full in
    /// entries or in bytes.
    ///
    /// `expires` must not be earlier than that of any answer kept before (one Timer J for
    /// all): the front of the queue is always the first to expire.
    pub(super) fn insert(
        &mut self,
        key: TransactionKey,
        bytes: Bytes,
        hop: Hop,
        expires: Instant,
    ) -> bool {
        let hash = self.hash(&key);
        let answer = Answer {
            key,
            bytes,
            hop,
            hash,
            expires,
            live: true,
        };
        let cost = answer.cost();
        if self.index.len() >= self.max_entries || self.bytes + cost > self.max_bytes {
            return false;
        }
        let seq = self.first + self.queue.len() as u64;
        if let Some(old) = self.index.insert(hash, seq) {
            self.forget(old);
        }
        self.bytes += cost;
        self.queue.push_back(answer);
        true
    }

    /// Marks the answer at `seq` as no longer live (its index entry is gone already).
    fn forget(&mut self, seq: u64) {
        let Some(i) = seq
            .checked_sub(self.first)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return;
        };
        if let Some(a) = self.queue.get_mut(i) {
            if a.live {
                a.live = false;
                self.bytes -= a.cost();
            }
        }
    }

    /// Drops every answer that expired at `now`.
    pub(super) fn expire(&mut self, now: Instant) {
        while let Some(front) = self.queue.front() {
            if front.expires > now {
                break;
            }
            if front.live {
                let cost = front.cost();
                if self.index.get(&front.hash) == Some(&self.first) {
                    self.index.remove(&front.hash);
                }
                self.bytes -= cost;
            }
            self.queue.pop_front();
            self.first += 1;
        }
        if self.queue.is_empty() && self.queue.capacity() > 1024 {
            self.queue.shrink_to(1024);
        }
    }

    /// When the first answer expires.
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.queue.front().map(|a| a.expires)
    }

    /// Live answers.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    /// What the live answers count against the byte bound.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registrar::Transport;
    use crate::Method;
    use std::time::Duration;

    fn key(i: u32) -> TransactionKey {
        TransactionKey {
            branch: format!("z9hG4bK-{i}"),
            sent_by: "192.0.2.1:5060".into(),
            method: Method::Register,
        }
    }

    fn hop() -> Hop {
        Hop::Net {
            proto: Transport::Udp,
            remote: "192.0.2.1:5060".parse().unwrap(),
            conn: 0,
        }
    }

    fn answer(i: u32) -> Bytes {
        Bytes::from(format!("SIP/2.0 200 OK\r\nX: {i}\r\n\r\n"))
    }

    #[test]
    fn answers_are_found_until_they_expire_in_order() {
        let t0 = Instant::now();
        let j = Duration::from_secs(32);
        let mut t = CompletedTable::new(100, 1 << 20);
        for i in 0..10 {
            let at = t0 + Duration::from_millis(u64::from(i) * 100);
            assert!(t.insert(key(i), answer(i), hop(), at + j));
        }
        assert_eq!(t.len(), 10);
        assert_eq!(t.get(&key(3)).unwrap().bytes, answer(3));
        assert!(t.get(&key(10)).is_none());
        assert_eq!(t.next_expiry(), Some(t0 + j));
        // Just before the fifth expires: four are gone.
        t.expire(t0 + j + Duration::from_millis(399));
        assert_eq!(t.len(), 6);
        for i in 0..4 {
            assert!(t.get(&key(i)).is_none(), "{i} expired");
        }
        for i in 4..10 {
            assert_eq!(t.get(&key(i)).unwrap().bytes, answer(i), "{i} kept");
        }
        t.expire(t0 + j + Duration::from_secs(1));
        assert_eq!(t.len(), 0);
        assert_eq!(t.bytes(), 0);
        assert_eq!(t.next_expiry(), None);
    }

    #[test]
    fn a_second_answer_to_a_key_replaces_the_first_and_outlives_its_expiry() {
        let t0 = Instant::now();
        let mut t = CompletedTable::new(100, 1 << 20);
        assert!(t.insert(key(1), answer(1), hop(), t0 + Duration::from_secs(1)));
        let one = t.bytes();
        assert!(t.insert(key(1), answer(2), hop(), t0 + Duration::from_secs(2)));
        assert_eq!(t.len(), 1);
        assert_eq!(t.bytes(), one, "the replaced answer no longer counts");
        assert_eq!(t.get(&key(1)).unwrap().bytes, answer(2));
        // The first answer's expiry does not take the second with it.
        t.expire(t0 + Duration::from_secs(1));
        assert_eq!(t.get(&key(1)).unwrap().bytes, answer(2));
        t.expire(t0 + Duration::from_secs(2));
        assert!(t.get(&key(1)).is_none());
        assert_eq!((t.len(), t.bytes()), (0, 0));
    }

    #[test]
    fn the_table_is_bounded_in_entries_and_in_bytes() {
        let t0 = Instant::now();
        let mut t = CompletedTable::new(3, 1 << 20);
        for i in 0..3 {
            assert!(t.insert(key(i), answer(i), hop(), t0));
        }
        assert!(!t.insert(key(3), answer(3), hop(), t0), "full in entries");
        assert!(t.get(&key(3)).is_none());

        let mut t = CompletedTable::new(100, 0);
        assert!(!t.insert(key(0), answer(0), hop(), t0), "full in bytes");
        let mut probe = CompletedTable::new(100, 1 << 20);
        probe.insert(key(0), answer(0), hop(), t0);
        let mut t = CompletedTable::new(100, probe.bytes() * 2);
        assert!(t.insert(key(0), answer(0), hop(), t0));
        assert!(t.insert(key(1), answer(1), hop(), t0));
        assert!(!t.insert(key(2), answer(2), hop(), t0));
        // Room comes back as answers expire.
        t.expire(t0);
        assert!(t.insert(key(2), answer(2), hop(), t0 + Duration::from_secs(1)));
    }
}
