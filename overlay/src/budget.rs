//! Byte budgets: the second bound of every queue whose entries vary in size.
//!
//! A queue bounded only in entries holds `entries x largest entry` bytes at worst: 4,096
//! events of up to 1 MiB each is 4 GiB for one slow reader. A [`ByteBudget`] is shared by the
//! producers and the consumer of one queue. A producer takes a [`Charge`] for an item's size
//! before queueing it ([`ByteBudget::try_take`] when it must not wait, [`ByteBudget::take`]
//! when it may) and sends the charge along with the item; dropping the charge, once the
//! consumer is done with the item (or when the queue itself is dropped), gives the bytes back.
//! So the budget counts exactly what is queued, whatever path the item leaves by.
//!
//! An item larger than the whole budget is let through when nothing else is charged, so a
//! budget below the largest item can never wedge its queue; daemons refuse such settings at
//! start anyway (every byte bound must hold at least one frame at the frame cap).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Debug)]
struct Inner {
    cap: usize,
    used: AtomicUsize,
    waiting: AtomicUsize,
    freed: Notify,
}

/// A bound in bytes shared by the producers and the consumer of a queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    inner: Arc<Inner>,
}

/// Bytes taken from a [`ByteBudget`]; they go back when this is dropped.
#[derive(Debug)]
#[must_use = "the bytes go back to the budget when the charge is dropped"]
pub struct Charge {
    budget: ByteBudget,
    bytes: usize,
}

impl ByteBudget {
    /// A budget of `cap` bytes, none taken.
    pub fn new(cap: usize) -> ByteBudget {
        ByteBudget {
            inner: Arc::new(Inner {
                cap,
                used: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
                freed: Notify::new(),
            }),
        }
    }

    /// The bound, in bytes.
    pub fn cap(&self) -> usize {
        self.inner.cap
    }

    /// Bytes taken now (queued, not yet consumed).
    pub fn used(&self) -> usize {
        self.inner.used.load(Ordering::SeqCst)
    }

    /// Takes `bytes` if they fit under the cap (or if nothing is taken at all: an item larger
    /// than the budget passes alone); `None` when the queue is full in bytes.
    pub fn try_take(&self, bytes: usize) -> Option<Charge> {
        let mut used = self.inner.used.load(Ordering::SeqCst);
        loop {
            if used != 0 && used.saturating_add(bytes) > self.inner.cap {
                return None;
            }
            match self.inner.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    return Some(Charge {
                        budget: self.clone(),
                        bytes,
                    })
                }
                Err(now) => used = now,
            }
        }
    }

    /// Takes `bytes`, waiting until they fit (see [`ByteBudget::try_take`]).
    ///
    /// Cancel safety: cancel-safe; nothing is taken unless the future completes.
    pub async fn take(&self, bytes: usize) -> Charge {
        loop {
            if let Some(c) = self.try_take(bytes) {
                return c;
            }
            // Register for the wake-up, then look again: a charge dropped in between either
            // is seen by the second look or sees `waiting` and wakes us (sequentially
            // consistent on both sides, so one of the two always happens).
            let freed = self.inner.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let _waiting = Waiting::new(&self.inner);
            if let Some(c) = self.try_take(bytes) {
                return c;
            }
            freed.await;
        }
    }
}

/// Counts a waiter for as long as it waits (its future may be dropped while waiting).
struct Waiting<'a>(&'a Inner);

impl<'a> Waiting<'a> {
    fn new(inner: &'a Inner) -> Waiting<'a> {
        inner.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(inner)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Charge {
    /// The bytes this charge holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let inner = &self.budget.inner;
        inner.used.fetch_sub(self.bytes, Ordering::SeqCst);
        if inner.waiting.load(Ordering::SeqCst) > 0 {
            inner.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn charges_count_what_is_held_and_give_it_back() {
        let b = ByteBudget::new(100);
        let a = b.try_take(60).unwrap();
        assert!(b.try_take(41).is_none(), "60 + 41 is over 100");
        let c = b.try_take(40).unwrap();
        assert_eq!(b.used(), 100);
        drop(a);
        assert_eq!(b.used(), 40);
        drop(c);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn an_item_larger_than_the_budget_passes_alone() {
        let b = ByteBudget::new(10);
        let big = b
            .try_take(50)
            .expect("an empty budget lets one oversized item by");
        assert!(b.try_take(1).is_none());
        drop(big);
        assert!(b.try_take(10).is_some());
    }

    #[tokio::test]
    async fn take_waits_for_bytes_to_come_back() {
        let b = ByteBudget::new(100);
        let held = b.try_take(90).unwrap();
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.take(20).await.bytes() });
        // The waiter cannot finish while 90 bytes are held.
        let early = tokio::time::timeout(Duration::from_millis(50), async {
            while !waiter.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(early.is_err(), "took 20 bytes with 90 of 100 held");
        drop(held);
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter is woken when bytes come back")
            .unwrap();
        assert_eq!(got, 20);
        assert_eq!(
            b.used(),
            0,
            "the waiter's charge was dropped with its result"
        );
    }
}
