//! Store calls to one peer, coalesced: while [`MAX_IN_FLIGHT`] calls to a peer are in flight,
//! the requests made meanwhile for that peer queue up and leave together in the next call.
//! Used for an owner's `Replicate` writes to each replica (a batch is one `Replicate` with
//! many entries). Coalescing a node's writes to the owners of keys the same way was tried and
//! measured no gain (docs/benchmarks.md), so those go one call each.
//!
//! Under load (thousands of REGISTERs a second, each sent to its AOR's owner and copied to the
//! next registrar) this turns one QUIC stream, a few packets and a wake-up per request into one
//! per batch; below that many calls in flight a request leaves at once, so a lone write waits
//! for nothing. Each waiter gets its own answer from the call that carried its request.
//!
//! Bounds: at most [`MAX_BATCH`] requests or [`MAX_BATCH_BYTES`] (estimated) per call, and at
//! most [`MAX_QUEUED`] waiting per peer; past that, [`Coalescer::submit`] refuses and the
//! caller treats the request as not sent.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::sync::oneshot;

use super::entry::Item;

/// Most entries in one call.
pub const MAX_BATCH: usize = 128;
/// Most (estimated) bytes of entries in one call; well under the peer frame cap (1 MiB).
pub const MAX_BATCH_BYTES: usize = 256 << 10;
/// Most entries waiting for one peer.
pub const MAX_QUEUED: usize = 20_000;
/// Most calls in flight to one peer; more entries wait and coalesce.
pub const MAX_IN_FLIGHT: usize = 4;

/// Sends one batch to a peer and returns the answer every entry of the batch gets.
pub type SendFn<R> = Arc<dyn Fn(String, Vec<Item>) -> BoxFuture<'static, R> + Send + Sync>;

/// An entry's rough size on the wire, for the batch cap.
fn weight(item: &Item) -> usize {
    item.key.role.len() + item.key.key.len() + item.entry.value.as_ref().map_or(0, |v| v.len()) + 64
}

struct Queue<R> {
    waiting: VecDeque<(Item, oneshot::Sender<R>)>,
    /// Senders running (each with at most one call in flight).
    sending: usize,
}

/// Per-peer queues of requests.
pub struct Coalescer<R> {
    queues: Mutex<HashMap<String, Queue<R>>>,
    send: SendFn<R>,
}

/// The entry was not queued: too many are waiting for that peer already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

impl<R: Clone + Send + 'static> Coalescer<R> {
    /// Coalescer sending its batches with `send`.
    pub fn new(send: SendFn<R>) -> Arc<Coalescer<R>> {
        Arc::new(Coalescer {
            queues: Mutex::new(HashMap::new()),
            send,
        })
    }

    /// Queues `item` for `peer`; the receiver gets the answer to the call that carries it.
    pub fn submit(
        self: &Arc<Self>,
        peer: &str,
        item: Item,
    ) -> Result<oneshot::Receiver<R>, QueueFull> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            let q = queues.entry(peer.to_string()).or_insert_with(|| Queue {
                waiting: VecDeque::new(),
                sending: 0,
            });
            if q.waiting.len() >= MAX_QUEUED {
                return Err(QueueFull);
            }
            q.waiting.push_back((item, tx));
            let start = q.sending < MAX_IN_FLIGHT;
            if start {
                q.sending += 1;
            }
            start
        };
        if start {
            let me = self.clone();
            let peer = peer.to_string();
            tokio::spawn(async move { me.drain(peer).await });
        }
        Ok(rx)
    }

    /// Sends batches to `peer` until its queue is empty.
    async fn drain(self: Arc<Self>, peer: String) {
        loop {
            let batch = {
                let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
                let Some(q) = queues.get_mut(&peer) else {
                    return;
                };
                if q.waiting.is_empty() {
                    // Nothing left: this sender ends (the next submit starts one again).
                    q.sending -= 1;
                    if q.sending == 0 {
                        queues.remove(&peer);
                    }
                    return;
                }
                let mut batch = Vec::new();
                let mut bytes = 0;
                while let Some((item, _)) = q.waiting.front() {
                    let len = weight(item);
                    if !batch.is_empty()
                        && (batch.len() >= MAX_BATCH || bytes + len > MAX_BATCH_BYTES)
                    {
                        break;
                    }
                    bytes += len;
                    if let Some(w) = q.waiting.pop_front() {
                        batch.push(w);
                    }
                }
                batch
            };
            let (items, waiters): (Vec<Item>, Vec<oneshot::Sender<R>>) = batch.into_iter().unzip();
            let answer = (self.send)(peer.clone(), items).await;
            for w in waiters {
                let _ = w.send(answer.clone());
            }
        }
    }

    /// Entries waiting for `peer`.
    #[cfg(test)]
    pub fn queued(&self, peer: &str) -> usize {
        let queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        queues.get(peer).map_or(0, |q| q.waiting.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::entry::{Entry, StoreKey, Version};
    use bytes::Bytes;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn item(i: usize, len: usize) -> Item {
        Item {
            key: StoreKey {
                role: "registrar".into(),
                key: format!("u{i}@example.test"),
            },
            entry: Entry {
                value: Some(Bytes::from(vec![0u8; len])),
                expires_at_ms: 1,
                version: Version {
                    stamp: i as u64,
                    origin: 1,
                },
            },
        }
    }

    /// A sender whose every call waits for a permit of `gate`; records batch sizes and the
    /// most calls in flight at once.
    fn gated(
        gate: Arc<tokio::sync::Semaphore>,
        sizes: Arc<Mutex<Vec<usize>>>,
        most: Arc<AtomicUsize>,
    ) -> SendFn<usize> {
        let now = Arc::new(AtomicUsize::new(0));
        Arc::new(move |_peer, items| {
            let (gate, sizes, most, now) = (gate.clone(), sizes.clone(), most.clone(), now.clone());
            Box::pin(async move {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(n, Ordering::SeqCst);
                gate.acquire().await.unwrap().forget();
                now.fetch_sub(1, Ordering::SeqCst);
                sizes.lock().unwrap().push(items.len());
                items.len()
            })
        })
    }

    #[tokio::test]
    async fn entries_queued_behind_calls_in_flight_leave_together() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let most = Arc::new(AtomicUsize::new(0));
        let c = Coalescer::new(gated(gate.clone(), sizes.clone(), most.clone()));
        let mut answers = Vec::new();
        for i in 0..MAX_IN_FLIGHT {
            answers.push(c.submit("node2", item(i, 10)).unwrap());
            // Let that sender take its entry and wait in its call.
            tokio::task::yield_now().await;
        }
        assert_eq!(most.load(Ordering::SeqCst), MAX_IN_FLIGHT);
        for i in 0..1000 {
            answers.push(c.submit("node2", item(i, 10)).unwrap());
        }
        assert_eq!(
            c.queued("node2"),
            1000,
            "with the senders busy, entries wait"
        );
        gate.add_permits(10_000);
        let mut got = Vec::new();
        for r in answers {
            got.push(r.await.unwrap());
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(
            sizes.iter().sum::<usize>(),
            MAX_IN_FLIGHT + 1000,
            "every entry sent once"
        );
        assert!(
            sizes.iter().all(|n| *n <= MAX_BATCH),
            "batches capped: {sizes:?}"
        );
        assert!(
            sizes.len() <= MAX_IN_FLIGHT + 1000 / MAX_BATCH + MAX_IN_FLIGHT,
            "the waiting entries left in full batches: {sizes:?}"
        );
        assert_eq!(
            most.load(Ordering::SeqCst),
            MAX_IN_FLIGHT,
            "never more calls at once"
        );
        assert_eq!(got[0], 1, "the first entries left at once, alone");
        assert_eq!(c.queued("node2"), 0);
    }

    #[tokio::test]
    async fn batches_respect_the_byte_cap_and_queues_their_bound() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let most = Arc::new(AtomicUsize::new(0));
        let c = Coalescer::new(gated(gate.clone(), sizes.clone(), most.clone()));
        let mut first = Vec::new();
        for i in 0..MAX_IN_FLIGHT {
            first.push(c.submit("node3", item(i, 10)).unwrap());
            tokio::task::yield_now().await;
        }
        // 100 KiB values: at most two fit under the 256 KiB cap.
        let big: Vec<_> = (1..=5)
            .map(|i| c.submit("node3", item(i, 100 << 10)).unwrap())
            .collect();
        for i in 0..MAX_QUEUED {
            assert!(
                c.submit("node4", item(i, 1)).is_ok(),
                "entry {i} fits the queue"
            );
        }
        assert_eq!(c.submit("node4", item(0, 1)).err(), Some(QueueFull));
        gate.add_permits(100_000);
        for r in first.into_iter().chain(big) {
            r.await.unwrap();
        }
        let s = sizes.lock().unwrap().clone();
        assert!(s.contains(&2), "two 100 KiB entries per batch: {s:?}");
        assert!(!s.iter().any(|n| *n > MAX_BATCH));
    }
}
