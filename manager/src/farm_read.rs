//! The farm-read service: members (nodes and DNS servers) read farm-wide provisioning facts
//! from any manager, on the managers' Raft port (UDP 8001).
//!
//! A connection whose certificate is of kind `node` or `dns` is served this protocol only
//! (never Raft): each bidirectional stream carries one [`FarmRequest`] frame and gets one
//! [`FarmReply`] frame back (see `onehop_overlay::farm_client` for the client and the
//! framing). Every manager, leader or follower, answers from its own copy of the state
//! machine ([`ProvisionDb`]), read off the runtime's threads.
//!
//! # Who reads what
//! | certificate | [`FarmRequest::Farm`] | [`FarmRequest::Account`], [`FarmRequest::Number`] | [`FarmRequest::Enum`] |
//! |---|---|---|---|
//! | `node` | version, domains, dial plans and the SIP nonce key | answered | answered |
//! | `dns` | version, domains and dial plans (`nonce_key: None`) | [`FarmReply::Error`] | answered |
//! | any other | (the connection is refused) | (refused) | (refused) |
//!
//! An ENUM read that finds no change after its `since` waits for one (at most its `wait_ms`,
//! capped at 1 s) before answering, so DNS servers follow the registry within milliseconds
//! with one outstanding request each.
//!
//! # The nonce key
//! The farm's SIP digest nonces are MACed with one key shared by every node. The active
//! manager makes it ([`spawn_nonce_keeper`]: 32 bytes from the OS, id 1) when it becomes
//! active and the replicated state holds none, and writes it through Raft
//! ([`crate::raft::Request::SetNonceKey`], write once: the state machine ignores it when a key
//! is set, so a later leader never replaces it). It lives in the state machine's `meta`
//! table and in its snapshots, so every manager has the same one and it survives restarts.

use std::sync::Arc;
use std::time::Duration;

use onehop_overlay::farm_client::{MAX_REPLY, MAX_REQUEST};
use onehop_overlay::identity::Identity;
use onehop_overlay::metrics::{Metric, Metrics};
use onehop_overlay::provision::{FarmInfo, FarmReply, FarmRequest, NonceSecret, MAX_ENUM_WAIT_MS};
use onehop_overlay::status::Kind;
use onehop_overlay::wire::{decode_body, encode_frame, read_frame, CloseCode};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::provision::db::ProvisionDb;
use crate::provision::push::record;
use crate::raft::{RaftHandle, Request};

/// Requests of one connection answered at once; the next stream waits for a free slot.
pub const STREAMS_PER_CONNECTION: usize = 8;
/// Reads of every connection running at once (each holds a blocking thread briefly).
pub const CONCURRENT_READS: usize = 64;
/// Longest AOR answered.
pub const MAX_AOR: usize = 512;
/// The id of the nonce key a manager makes.
pub const NONCE_KEY_ID: u8 = 1;

/// Whether a certificate of `kind` may use the farm-read service.
pub fn may_read(kind: Kind) -> bool {
    matches!(kind, Kind::Node | Kind::Dns)
}

/// The answer to `req` from a peer with a `kind` certificate, read from `db`. Blocking.
pub fn answer(db: &ProvisionDb, kind: Kind, req: &FarmRequest) -> FarmReply {
    if !may_read(kind) {
        return FarmReply::Error(format!("{kind} certificates may not read farm settings"));
    }
    match req {
        FarmRequest::Farm => match db.farm_view() {
            Ok(v) => FarmReply::Farm(FarmInfo {
                version: v.version,
                domains: v.domains,
                nonce_key: if kind == Kind::Node {
                    v.nonce_key
                } else {
                    None
                },
                dial_plans: v.dial_plans,
            }),
            Err(e) => FarmReply::Error(format!("cannot read the farm settings: {e}")),
        },
        FarmRequest::Account { .. } if kind != Kind::Node => {
            FarmReply::Error("account reads are for nodes only".into())
        }
        FarmRequest::Account { aor } if aor.len() > MAX_AOR || !aor.contains('@') => {
            FarmReply::Error(format!("not an AOR user@domain of at most {MAX_AOR} bytes"))
        }
        FarmRequest::Account { aor } => match db.account_at(aor) {
            Ok((version, account)) => FarmReply::Account {
                version,
                account: account.as_ref().map(record),
            },
            Err(e) => FarmReply::Error(format!("cannot read the account: {e}")),
        },
        FarmRequest::Number { .. } if kind != Kind::Node => {
            FarmReply::Error("number reads are for nodes only".into())
        }
        FarmRequest::Number { number } => match onehop_overlay::provision::parse_e164(number) {
            Err(e) => FarmReply::Error(e),
            Ok(n) => match db.number_at(&n) {
                Ok((version, held)) => FarmReply::Number {
                    version,
                    route: held.and_then(|n| n.route),
                },
                Err(e) => FarmReply::Error(format!("cannot read the number: {e}")),
            },
        },
        FarmRequest::Enum { after, .. } if after.as_ref().is_some_and(|a| a.len() > 16) => {
            FarmReply::Error("`after` is not a number".into())
        }
        FarmRequest::Enum { since, after, .. } => match db.enum_update(*since, after.as_deref()) {
            Ok(u) => FarmReply::Enum(u),
            Err(e) => FarmReply::Error(format!("cannot read the ENUM data: {e}")),
        },
    }
}

/// The service's shared state: the database, the read bound and the figures.
#[derive(Clone)]
pub struct FarmReads {
    db: ProvisionDb,
    reads: Arc<Semaphore>,
    total: Metric,
    by_node: Metric,
    by_dns: Metric,
    refused: Metric,
}

impl FarmReads {
    /// The service over `db`, with its figures in `metrics`.
    pub fn new(db: ProvisionDb, metrics: &Metrics) -> FarmReads {
        const BY_KIND: &str = "Farm-read requests answered, by the asker's certificate kind.";
        FarmReads {
            db,
            reads: Arc::new(Semaphore::new(CONCURRENT_READS)),
            total: metrics.counter(
                "farm_reads_total",
                "Farm-read requests (domains, nonce key, accounts) answered to nodes and DNS servers.",
            ),
            by_node: metrics.counter("farm_reads_by_kind_total{kind=\"node\"}", BY_KIND),
            by_dns: metrics.counter("farm_reads_by_kind_total{kind=\"dns\"}", BY_KIND),
            refused: metrics.counter(
                "farm_reads_refused_total",
                "Farm-read requests answered with an error (not allowed, malformed, unreadable).",
            ),
        }
    }

    /// Serves the farm-read streams of `conn` (a peer with certificate `id`) until it closes.
    pub async fn serve_connection(&self, conn: quinn::Connection, id: Identity) {
        let slots = Arc::new(Semaphore::new(STREAMS_PER_CONNECTION));
        let span = tracing::info_span!(
            "farm_read",
            peer = %onehop_overlay::logging::peer_label(Some(&id.name), conn.remote_address())
        );
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let Ok((send, recv)) = conn.accept_bi().await else {
                return;
            };
            let this = self.clone();
            let kind = id.kind;
            tokio::spawn(
                async move {
                    let _slot = slot;
                    this.serve_stream(kind, send, recv).await;
                }
                .instrument(span.clone()),
            );
        }
    }

    async fn serve_stream(
        &self,
        kind: Kind,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let body = match read_frame(&mut recv, MAX_REQUEST).await {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                warn!(cause = %e, "closing farm-read stream: bad frame");
                let _ = recv.stop(e.close_code().varint());
                return;
            }
        };
        let req: FarmRequest = match decode_body(&body) {
            Ok(r) => r,
            Err(e) => {
                warn!(cause = %e, "closing farm-read stream: malformed request");
                let _ = send.reset(CloseCode::Malformed.varint());
                return;
            }
        };
        let mut versions = self.db.watch_version();
        let mut reply = self.read_once(kind, &req).await;
        // An ENUM read with nothing new waits (without a read slot) for the next change.
        let wait = match (&req, &reply) {
            (FarmRequest::Enum { since, wait_ms, .. }, FarmReply::Enum(u))
                if *since > 0 && !u.reset && u.entries.is_empty() && u.next.is_none() =>
            {
                Some((*since, u64::from((*wait_ms).min(MAX_ENUM_WAIT_MS))))
            }
            _ => None,
        };
        if let Some((since, wait_ms)) = wait {
            let changed = tokio::time::timeout(Duration::from_millis(wait_ms), async {
                versions.wait_for(|v| *v > since).await.is_ok()
            })
            .await
            .unwrap_or(false);
            if changed {
                reply = self.read_once(kind, &req).await;
            }
        }
        self.count(kind, &reply);
        let mut frame = encode_frame(&reply);
        if frame.len() - 4 > MAX_REPLY {
            warn!(bytes = frame.len(), "farm-read reply over the cap");
            frame = encode_frame(&FarmReply::Error(format!(
                "the answer exceeds {MAX_REPLY} bytes"
            )));
        }
        if let FarmReply::Error(e) = &reply {
            debug!(%kind, cause = %e, "farm read refused");
        }
        let _ = send.write_all(&frame).await;
        let _ = send.finish();
    }

    /// One blocking read of `req`'s answer, within the bound of concurrent reads.
    async fn read_once(&self, kind: Kind, req: &FarmRequest) -> FarmReply {
        match self.reads.clone().acquire_owned().await {
            Ok(permit) => {
                let db = self.db.clone();
                let req = req.clone();
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    answer(&db, kind, &req)
                })
                .await
                .unwrap_or_else(|_| FarmReply::Error("the read failed".into()))
            }
            Err(_) => FarmReply::Error("the manager is shutting down".into()),
        }
    }

    fn count(&self, kind: Kind, reply: &FarmReply) {
        self.total.inc();
        match kind {
            Kind::Node => self.by_node.inc(),
            Kind::Dns => self.by_dns.inc(),
            _ => {}
        }
        if matches!(reply, FarmReply::Error(_)) {
            self.refused.inc();
        }
    }
}

/// While this manager is the active one, makes sure the replicated state holds the farm's
/// SIP nonce key: when it becomes active and none is held, it writes a new one (retrying
/// while it stays active). Stops at `cancel`.
pub fn spawn_nonce_keeper(raft: RaftHandle, cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut leadership = raft.leadership();
        loop {
            let active = leadership.borrow_and_update().is_me;
            if active {
                ensure_nonce_key(&raft, &cancel).await;
            }
            tokio::select! {
                r = leadership.changed() => if r.is_err() { return },
                _ = cancel.cancelled() => return,
            }
        }
    });
}

async fn ensure_nonce_key(raft: &RaftHandle, cancel: &CancellationToken) {
    let mut last_error = String::new();
    while raft.current_leadership().is_me && !cancel.is_cancelled() {
        let db = raft.store().db().clone();
        match tokio::task::spawn_blocking(move || db.nonce_key()).await {
            Ok(Ok(Some(_))) => return,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => warn!(cause = %e, "cannot read the nonce key"),
            Err(e) => warn!(cause = %e, "cannot read the nonce key"),
        }
        match raft
            .write(Request::SetNonceKey(NonceSecret::random(NONCE_KEY_ID)))
            .await
        {
            Ok(_) => {
                info!("the farm's SIP nonce key is set (made now unless another manager had made one)");
                return;
            }
            Err(e) => {
                let e = e.to_string();
                if e != last_error {
                    warn!(cause = %e, "could not write the farm's SIP nonce key; retrying");
                    last_error = e;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::db::Pointers;
    use crate::provision::model::{Ha1, NewAccount, ProvisionCommand, ProvisionOp};

    fn db() -> (tempfile::TempDir, ProvisionDb) {
        let dir = tempfile::tempdir().unwrap();
        let db = ProvisionDb::open(&dir.path().join("p.redb")).unwrap();
        (dir, db)
    }

    fn apply(db: &ProvisionDb, op: ProvisionOp) {
        let ptr = db.applied().unwrap();
        db.write(|w| w.apply(ProvisionCommand { at_ms: 1, op }), &ptr)
            .unwrap()
            .outcome
            .unwrap();
    }

    fn set_key(db: &ProvisionDb, key: &NonceSecret) -> bool {
        let ptr = db.applied().unwrap();
        db.write(|w| w.set_nonce_key_once(key), &ptr).unwrap()
    }

    fn farm() -> (tempfile::TempDir, ProvisionDb, NonceSecret) {
        let (dir, db) = db();
        for name in ["b.test", "a.test"] {
            apply(&db, ProvisionOp::AddDomain { name: name.into() });
        }
        apply(
            &db,
            ProvisionOp::AddAccount {
                account: NewAccount {
                    user: "alice".into(),
                    domain: "a.test".into(),
                    display_name: None,
                    enabled: true,
                    ha1: Ha1::from_password("alice", "a.test", "pw"),
                },
            },
        );
        let key = NonceSecret::random(NONCE_KEY_ID);
        assert!(set_key(&db, &key));
        (dir, db, key)
    }

    #[test]
    fn nodes_read_domains_the_key_and_accounts() {
        let (_d, db, key) = farm();
        let FarmReply::Farm(info) = answer(&db, Kind::Node, &FarmRequest::Farm) else {
            panic!("no farm answer")
        };
        assert_eq!(info.domains, ["a.test", "b.test"]);
        assert_eq!(info.version, 3);
        assert_eq!(info.nonce_key, Some(key));
        let req = FarmRequest::Account {
            aor: "alice@A.test".into(),
        };
        let FarmReply::Account { version, account } = answer(&db, Kind::Node, &req) else {
            panic!("no account answer")
        };
        assert_eq!(version, 3);
        let account = account.unwrap();
        assert_eq!(account.version, 3);
        assert_eq!(
            account.ha1_md5,
            Ha1::from_password("alice", "a.test", "pw").md5
        );
        let req = FarmRequest::Account {
            aor: "bob@a.test".into(),
        };
        assert_eq!(
            answer(&db, Kind::Node, &req),
            FarmReply::Account {
                version: 3,
                account: None
            }
        );
    }

    #[test]
    fn dns_servers_get_domains_without_the_key_and_no_accounts() {
        let (_d, db, _key) = farm();
        let FarmReply::Farm(info) = answer(&db, Kind::Dns, &FarmRequest::Farm) else {
            panic!("no farm answer")
        };
        assert_eq!(info.domains, ["a.test", "b.test"]);
        assert_eq!(info.nonce_key, None);
        let req = FarmRequest::Account {
            aor: "alice@a.test".into(),
        };
        assert!(matches!(answer(&db, Kind::Dns, &req), FarmReply::Error(_)));
    }

    #[test]
    fn other_kinds_read_nothing() {
        let (_d, db, _key) = farm();
        for kind in [Kind::Monitor, Kind::Admin, Kind::Eventserver, Kind::Manager] {
            assert!(!may_read(kind));
            assert!(
                matches!(answer(&db, kind, &FarmRequest::Farm), FarmReply::Error(_)),
                "{kind}"
            );
        }
        assert!(may_read(Kind::Node) && may_read(Kind::Dns));
    }

    #[test]
    fn bad_aors_are_errors_not_panics() {
        let (_d, db, _key) = farm();
        for aor in ["", "no-at-sign", &"x".repeat(MAX_AOR + 1), "@", "a@"] {
            let req = FarmRequest::Account { aor: aor.into() };
            let r = answer(&db, Kind::Node, &req);
            assert!(
                matches!(
                    r,
                    FarmReply::Error(_) | FarmReply::Account { account: None, .. }
                ),
                "{aor}: {r:?}"
            );
        }
    }

    #[test]
    fn the_key_is_written_once_and_survives_a_snapshot() {
        let (dir, db, key) = farm();
        assert!(!set_key(&db, &NonceSecret::random(NONCE_KEY_ID)));
        assert_eq!(db.nonce_key().unwrap(), Some(key.clone()));
        let file = dir.path().join("snap");
        let (ptr, _) = db.dump(&file).unwrap();
        let (_d2, other) = self::db();
        other
            .restore(
                &file,
                &Pointers {
                    last_applied: ptr.last_applied,
                    membership: ptr.membership,
                },
            )
            .unwrap();
        assert_eq!(other.nonce_key().unwrap(), Some(key));
        assert_eq!(other.farm_view().unwrap(), db.farm_view().unwrap());
    }

    #[test]
    fn the_key_never_reaches_debug_output() {
        let key = NonceSecret {
            id: 1,
            secret: [0x5a; 32],
        };
        let text = format!("{:?}", Request::SetNonceKey(key));
        assert!(text.contains("<redacted>"), "{text}");
        assert!(!text.contains("90"), "{text}");
    }
}
