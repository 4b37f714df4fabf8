//! The active manager pushes every account change to the node that owns the account's AOR on
//! the `registrar` ring (and every number's routing to the owner of the number, `+15550100`) (the `provision` service of the nodes' peer port), so that the node a
//! REGISTER reaches already holds what verifying it needs.
//!
//! The pusher follows the change log from the version pushed last. It sends each node its
//! changes in one batch per round, and advances only once every node of the round has them
//! held by their replica sets; a round that fails is sent again after a pause. Nodes apply a
//! change only if it is newer than what they hold, so sending a range again is harmless. The
//! version pushed is recorded in the Raft map (`provision_pushed`) at most once a second, so a
//! new active manager resumes about where the old one stopped. It pushes again what the old
//! one pushed in its last second, which changes nothing. When the log no longer reaches back
//! to that version, it pushes every account.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use onehop_overlay::metrics::{Metric, Metrics};
use onehop_overlay::net::{peer_identity, ConnTable};
use onehop_overlay::provision::{decode, encode, AccountRecord, PushBatch, PushOp, PushReply};
use onehop_overlay::ring::{Rings, DEFAULT_POINTS};
use onehop_overlay::status::{Kind, NetworkStatus};
use onehop_overlay::wire::{read_frame, CloseCode};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::model::{Account, ChangeKind};
use crate::raft::{RaftHandle, Request};

/// The node peer port's service id of `provision`.
const SERVICE_PROVISION: u8 = 3;
/// Most changes per round.
const ROUND: usize = 2_000;
/// How often the pusher looks for new changes.
const TICK: Duration = Duration::from_millis(20);
/// Pause after a failed round.
const RETRY: Duration = Duration::from_millis(250);
/// A node's answer to a batch must come within this.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The Raft map key recording the version pushed.
pub const PUSHED_KEY: &str = "provision_pushed";

/// What a node holds of an account.
pub(crate) fn record(a: &Account) -> AccountRecord {
    AccountRecord {
        version: a.updated_version,
        enabled: a.enabled,
        ha1_md5: a.ha1.md5,
        ha1_sha256: a.ha1.sha256,
        display_name: a.display_name.clone(),
    }
}

/// The push ops of a change (none for domain changes).
fn ops_of(kind: &ChangeKind, version: u64) -> Vec<PushOp> {
    match kind {
        ChangeKind::AccountPut { account } => vec![PushOp::Put {
            aor: account.aor(),
            account: record(account),
        }],
        ChangeKind::AccountRemoved { aor, aliases } => std::iter::once(PushOp::Remove {
            aor: aor.clone(),
            version,
        })
        .chain(aliases.iter().map(|alias| PushOp::AliasRemove {
            alias: alias.clone(),
            version,
        }))
        .collect(),
        ChangeKind::AliasAdded { alias, aor } => vec![PushOp::Alias {
            alias: alias.clone(),
            target: aor.clone(),
            version,
        }],
        ChangeKind::AliasRemoved { alias, .. } => vec![PushOp::AliasRemove {
            alias: alias.clone(),
            version,
        }],
        ChangeKind::NumberPut { number } => vec![PushOp::Number {
            number: number.number.clone(),
            route: number.route.clone(),
            version,
        }],
        ChangeKind::NumberReleased { number, .. } => vec![PushOp::Number {
            number: number.clone(),
            route: None,
            version,
        }],
        ChangeKind::DomainAdded { .. }
        | ChangeKind::DomainRemoved { .. }
        | ChangeKind::CarrierAdded { .. }
        | ChangeKind::CarrierRemoved { .. }
        | ChangeKind::BlockAdded { .. }
        | ChangeKind::BlockRemoved { .. }
        | ChangeKind::DialPlanSet { .. } => Vec::new(),
    }
}

struct Pusher {
    raft: RaftHandle,
    endpoint: quinn::Endpoint,
    table: ConnTable,
    conns: BTreeMap<String, quinn::Connection>,
    pushed_metric: Metric,
    failures: Metric,
}

impl Pusher {
    async fn connection(
        &mut self,
        name: &str,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, String> {
        if let Some(c) = self.conns.get(name) {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let connecting = self
            .endpoint
            .connect(addr, &addr.ip().to_string())
            .map_err(|e| format!("{name}: {e}"))?;
        let conn = tokio::time::timeout(Duration::from_secs(2), connecting)
            .await
            .map_err(|_| format!("{name} did not answer"))?
            .map_err(|e| format!("{name}: {e}"))?;
        let id = peer_identity(&conn).map_err(|e| e.to_string())?;
        if id.kind != Kind::Node || id.name != name {
            conn.close(CloseCode::Forbidden.varint(), b"not the expected node");
            return Err(format!(
                "{addr} is {} ({}), not node {name}",
                id.name, id.kind
            ));
        }
        self.table.insert(id, conn.clone());
        self.conns.insert(name.to_string(), conn.clone());
        Ok(conn)
    }

    /// Sends `ops` to node `name`; Ok when every op is held.
    async fn send(&mut self, name: &str, addr: SocketAddr, ops: Vec<PushOp>) -> Result<(), String> {
        let n = ops.len();
        let conn = self.connection(name, addr).await?;
        let body = encode(&PushBatch { ops });
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let mut frame = Vec::with_capacity(body.len() + 5);
            frame.extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
            frame.push(SERVICE_PROVISION);
            frame.extend_from_slice(&body);
            send.write_all(&frame).await.map_err(|e| e.to_string())?;
            let _ = send.finish();
            let answer = read_frame(&mut recv, 1 << 20)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no answer")?;
            match answer.split_first() {
                Some((0, reply)) => decode::<PushReply>(reply),
                Some((_, why)) => Err(String::from_utf8_lossy(why).into_owned()),
                None => Err("an empty answer".to_string()),
            }
        };
        let reply = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("{name}: no answer within {CALL_TIMEOUT:?}"))??;
        if reply.results.len() != n {
            return Err(format!(
                "{name} answered {} results for {n} changes",
                reply.results.len()
            ));
        }
        match reply.results.iter().flatten().next() {
            None => Ok(()),
            Some(why) => Err(format!("{name}: {why}")),
        }
    }

    /// One round: the changes after `from` (or every account when the log does not reach back
    /// that far). Returns the version pushed.
    async fn round(&mut self, from: u64, status: &NetworkStatus) -> Result<u64, String> {
        let db = self.raft.store().db().clone();
        let page = tokio::task::spawn_blocking(move || db.changes(from, ROUND))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let (ops, upto): (Vec<PushOp>, u64) = if page.truncated {
            info!(
                from,
                first = page.first,
                "the change log no longer reaches the version pushed: pushing every account"
            );
            (self.all_accounts().await?, page.version)
        } else {
            let upto = page.changes.last().map_or(from, |c| c.version);
            (
                page.changes
                    .iter()
                    .flat_map(|c| ops_of(&c.what, c.version))
                    .collect(),
                upto,
            )
        };
        if ops.is_empty() {
            return Ok(upto);
        }
        let rings = Rings::from_status(status, DEFAULT_POINTS);
        let Some(ring) = rings.get("registrar").filter(|r| r.points() > 0) else {
            return Err("no registrar in the network status yet".into());
        };
        let mut by_node: BTreeMap<String, Vec<PushOp>> = BTreeMap::new();
        for op in ops {
            if let Some(owner) = ring.owner(op.aor()) {
                by_node.entry(owner.name.clone()).or_default().push(op);
            }
        }
        let mut failed = Vec::new();
        for (name, ops) in by_node {
            let Some(addr) = status.member(&name).and_then(|m| m.endpoint("peer")) else {
                failed.push(format!("{name} has no peer endpoint"));
                continue;
            };
            if let Err(e) = self.send(&name, addr, ops).await {
                self.conns.remove(&name);
                failed.push(e);
            }
        }
        if failed.is_empty() {
            Ok(upto)
        } else {
            Err(failed.join("; "))
        }
    }

    async fn all_accounts(&self) -> Result<Vec<PushOp>, String> {
        let db = self.raft.store().db().clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = db.accounts(None, "", after.as_deref(), super::db::MAX_PAGE)?;
                for a in &page.accounts {
                    out.push(PushOp::Put {
                        aor: a.aor(),
                        account: record(a),
                    });
                    out.extend(a.aliases.iter().map(|alias| PushOp::Alias {
                        alias: alias.clone(),
                        target: a.aor(),
                        version: a.updated_version,
                    }));
                }
                match page.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            let mut after: Option<String> = None;
            loop {
                let page = db.numbers(None, after.as_deref(), super::db::MAX_PAGE)?;
                out.extend(page.numbers.iter().map(|n| PushOp::Number {
                    number: n.number.clone(),
                    route: n.route.clone(),
                    version: n.updated_version,
                }));
                match page.next {
                    Some(n) => after = Some(n),
                    None => return Ok::<_, std::io::Error>(out),
                }
            }
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }
}

/// Runs the pusher until `shutdown`: it works while this manager is the active one.
pub fn spawn(
    raft: RaftHandle,
    endpoint: quinn::Endpoint,
    table: ConnTable,
    mut status: watch::Receiver<Option<NetworkStatus>>,
    metrics: &Metrics,
    shutdown: CancellationToken,
) {
    let mut p = Pusher {
        raft,
        endpoint,
        table,
        conns: BTreeMap::new(),
        pushed_metric: metrics.gauge(
            "provision_pushed_version",
            "Change version up to which this manager pushed account changes to the nodes (while active).",
        ),
        failures: metrics.counter(
            "provision_push_failures_total",
            "Push rounds to the nodes that failed and were retried.",
        ),
    };
    tokio::spawn(async move {
        let mut pushed: Option<u64> = None;
        let mut recorded = 0u64;
        let mut last_record = Instant::now();
        let mut last_error = String::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.cancelled() => return,
            }
            if !p.raft.current_leadership().is_me {
                pushed = None;
                continue;
            }
            let from = match pushed {
                Some(v) => v,
                None => {
                    let v = p
                        .raft
                        .store()
                        .get(PUSHED_KEY)
                        .await
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    info!(from = v, "active: pushing account changes to the nodes");
                    recorded = v;
                    pushed = Some(v);
                    v
                }
            };
            let Some(st) = status.borrow_and_update().clone() else {
                continue;
            };
            let version = p.raft.store().db().version().unwrap_or(0);
            if version > from {
                match p.round(from, &st).await {
                    Ok(v) => {
                        pushed = Some(v);
                        p.pushed_metric.set(v as i64);
                        last_error.clear();
                        debug!(upto = v, "account changes pushed");
                    }
                    Err(e) => {
                        p.failures.inc();
                        if e != last_error {
                            warn!(cause = %e, "pushing account changes failed; retrying");
                            last_error = e;
                        }
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                }
            }
            let now = pushed.unwrap_or(0);
            if now > recorded && last_record.elapsed() >= Duration::from_secs(1) {
                last_record = Instant::now();
                let raft = p.raft.clone();
                recorded = now;
                tokio::spawn(async move {
                    let req = Request::Set {
                        key: PUSHED_KEY.into(),
                        value: now.to_string(),
                    };
                    if let Err(e) = raft.write(req).await {
                        debug!(cause = %e, "could not record the version pushed");
                    }
                });
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::model::Ha1;

    #[test]
    fn account_changes_become_pushes_and_others_nothing() {
        let a = Account {
            user: "alice".into(),
            domain: "example.test".into(),
            display_name: Some("Alice".into()),
            enabled: false,
            ha1: Ha1::from_password("alice", "example.test", "secret-pass"),
            aliases: vec![],
            created_version: 3,
            updated_version: 7,
            created_ms: 1,
            updated_ms: 2,
        };
        let ops = ops_of(
            &ChangeKind::AccountPut {
                account: Box::new(a.clone()),
            },
            7,
        );
        assert_eq!(
            ops,
            vec![PushOp::Put {
                aor: "alice@example.test".into(),
                account: AccountRecord {
                    version: 7,
                    enabled: false,
                    ha1_md5: a.ha1.md5,
                    ha1_sha256: a.ha1.sha256,
                    display_name: Some("Alice".into()),
                },
            }]
        );
        assert_eq!(
            ops_of(
                &ChangeKind::AccountRemoved {
                    aor: "alice@example.test".into(),
                    aliases: vec![]
                },
                9
            ),
            vec![PushOp::Remove {
                aor: "alice@example.test".into(),
                version: 9
            }]
        );
        assert!(ops_of(
            &ChangeKind::DomainAdded {
                name: "x.test".into()
            },
            1
        )
        .is_empty());
        assert!(format!("{:?}", ops[0]).contains("<redacted>"));
    }
}
