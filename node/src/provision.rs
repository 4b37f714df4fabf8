//! Accounts, aliases and number routing pushed by the active manager (the `provision` service
//! of the peer port).
//!
//! The manager sends each account change to the owner of the account's AOR on the
//! `registrar` ring, and each change of a number's routing to the owner of the number's E.164
//! form (`+15550100`) on the same ring. The node applies it to the key's entry in the
//! replicated store, beside the AOR's bindings (a read-modify-write at the owner, replicated
//! like a REGISTER). The store's
//! hand-off then moves it with its key when membership changes. A change is applied only if
//! it is newer than what the entry has seen, so a manager that pushes a range again after a
//! failover changes nothing. Only `manager` certificates may push.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use onehop_overlay::identity::Identity;
use onehop_overlay::metrics::{Metric, Metrics};
use onehop_overlay::provision::{decode, encode, PushBatch, PushOp, PushReply};
use onehop_overlay::status::Kind;
use tracing::warn;

use crate::peer::PeerHandler;
use crate::proxy::glue::{account_op, REGISTRAR};
use crate::store::Store;

/// AORs whose changes are applied at once (each AOR's changes in order).
const PARALLEL: usize = 32;

/// The handler of the `provision` service.
pub struct ProvisionHandler {
    store: Store,
    version: Metric,
    applied: Metric,
    failed: Metric,
}

impl ProvisionHandler {
    /// Applies pushes to `store`; its figures go to `metrics`.
    pub fn new(store: Store, metrics: &Metrics) -> ProvisionHandler {
        ProvisionHandler {
            store,
            version: metrics.gauge(
                "provision_version",
                "Highest provisioning change version this node applied as an AOR's owner.",
            ),
            applied: metrics.counter(
                "provision_changes_applied_total",
                "Account, alias and number changes pushed by the active manager and held by their key's replica set.",
            ),
            failed: metrics.counter(
                "provision_changes_failed_total",
                "Account, alias and number changes pushed by the active manager that could not be held (the manager retries).",
            ),
        }
    }

    async fn apply(&self, op: &PushOp) -> Option<String> {
        match self.store.update(REGISTRAR, op.aor(), account_op(op)).await {
            Ok((_, acks)) if acks.held >= acks.wanted => None,
            Ok((_, acks)) => Some(format!(
                "held by {} of {} registrars",
                acks.held, acks.wanted
            )),
            Err(e) => Some(e.to_string()),
        }
    }

    /// One AOR's changes, in order.
    async fn apply_all(&self, ops: Vec<(usize, PushOp)>) -> Vec<(usize, Option<String>, u64)> {
        let mut out = Vec::with_capacity(ops.len());
        for (i, op) in ops {
            out.push((i, self.apply(&op).await, op.version()));
        }
        out
    }

    async fn batch(&self, batch: PushBatch) -> PushReply {
        let mut results = vec![None; batch.ops.len()];
        let mut by_aor: BTreeMap<String, Vec<(usize, PushOp)>> = BTreeMap::new();
        for (i, op) in batch.ops.into_iter().enumerate() {
            by_aor
                .entry(op.aor().to_string())
                .or_default()
                .push((i, op));
        }
        let groups: Vec<Vec<(usize, PushOp)>> = by_aor.into_values().collect();
        let done: Vec<Vec<(usize, Option<String>, u64)>> = futures::stream::iter(groups)
            .map(|ops| self.apply_all(ops))
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        for (i, r, version) in done.into_iter().flatten() {
            match &r {
                None => {
                    self.applied.inc();
                    if version as i64 > self.version.get() {
                        self.version.set(version as i64);
                    }
                }
                Some(why) => {
                    self.failed.inc();
                    warn!(cause = %why, "a pushed account change is not held yet");
                }
            }
            results[i] = r;
        }
        PushReply { results }
    }
}

impl PeerHandler for ProvisionHandler {
    fn handle(&self, from: &Identity, body: Bytes) -> BoxFuture<'_, Bytes> {
        let from = from.clone();
        Box::pin(async move {
            if from.kind != Kind::Manager {
                warn!(peer = %from.name, kind = %from.kind, "refused a provisioning push: only managers push");
                return Bytes::from(encode(&PushReply {
                    results: Vec::new(),
                }));
            }
            match decode::<PushBatch>(&body) {
                Ok(batch) => Bytes::from(encode(&self.batch(batch).await)),
                Err(e) => {
                    warn!(peer = %from.name, cause = %e, "a malformed provisioning push");
                    Bytes::from(encode(&PushReply {
                        results: Vec::new(),
                    }))
                }
            }
        })
    }
}

/// Registers the handler on `peer` (a node with the `registrar` role).
pub fn serve(peer: &crate::peer::PeerNet, store: Store, metrics: &Metrics) {
    peer.register(
        crate::peer::Service::Provision,
        Arc::new(ProvisionHandler::new(store, metrics)),
    );
}
