//! The client of the managers' farm-read service, shared by nodes and DNS servers.
//!
//! Every manager answers [`FarmRequest`]s on its Raft port (UDP 8001) from its own copy of the
//! replicated provisioning store: the provisioned domains, for `node` certificates the farm's
//! SIP nonce key, and single accounts (nodes only). What a member may read follows from its
//! certificate alone.
//!
//! # Protocol
//! One bidirectional QUIC stream per request: the client writes one frame (a 4-byte
//! big-endian length and the bincode of a [`FarmRequest`]) and finishes its side; the manager
//! answers with one frame holding a [`FarmReply`] (at most [`MAX_REPLY`] bytes) and finishes.
//!
//! # Which manager
//! [`FarmClient`] keeps one connection. It takes the managers from the network status the
//! member holds ([`managers_of`]: every member of kind `manager` with a `raft` endpoint, the
//! active one first, the others by name) and connects to the first that answers. Any
//! manager answers from its own state; the active one is preferred because it is never
//! behind, so a client on another manager tries the active one again every
//! [`PREFER_ACTIVE_EVERY`].
//!
//! # Following the farm
//! [`follow`] polls [`FarmClient::farm`] ([`FIRST_POLL`] until a first complete answer, then
//! [`POLL`]) and publishes each change on a watch channel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Mutex};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::net::{peer_identity, ConnTable};
use crate::provision::{AccountRecord, EnumUpdate, FarmInfo, FarmReply, FarmRequest, NumberRoute};
use crate::status::{Kind, NetworkStatus};
use crate::wire::{decode_body, encode_frame, read_frame, CloseCode};

/// Largest request frame a manager reads.
pub const MAX_REQUEST: usize = 64 << 10;
/// Largest reply frame a client reads.
pub const MAX_REPLY: usize = 1 << 20;
/// Each call's deadline, connecting included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of one connection attempt (so that a dead manager leaves time for the next).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How often a client connected to a manager other than the active one tries the active one.
pub const PREFER_ACTIVE_EVERY: Duration = Duration::from_secs(5);
/// [`follow`]'s interval until the first complete answer.
pub const FIRST_POLL: Duration = Duration::from_millis(200);
/// [`follow`]'s interval afterwards.
pub const POLL: Duration = Duration::from_secs(1);

/// The managers' farm-read addresses in `status`: the active manager (the status's
/// publisher) first, then the other managers by name. Managers that announce no `raft`
/// endpoint are left out.
pub fn managers_of(status: &NetworkStatus) -> Vec<SocketAddr> {
    let mut managers: Vec<(bool, &str, SocketAddr)> = status
        .of_kind(Kind::Manager)
        .filter_map(|m| {
            m.endpoint("raft")
                .map(|a| (m.name != status.manager, m.name.as_str(), a))
        })
        .collect();
    managers.sort();
    managers.into_iter().map(|(_, _, a)| a).collect()
}

/// Where the client finds the managers: called before each connection attempt, it returns
/// their farm-read addresses in order of preference (see [`managers_of`]).
pub type ManagerSource = Arc<dyn Fn() -> Vec<SocketAddr> + Send + Sync>;

struct Held {
    addr: SocketAddr,
    conn: quinn::Connection,
}

struct Inner {
    endpoint: quinn::Endpoint,
    managers: ManagerSource,
    table: ConnTable,
    held: Mutex<Option<Held>>,
    /// When the active manager was last tried while connected to another.
    tried_active: std::sync::Mutex<Option<Instant>>,
}

/// A client of the managers' farm-read service over the member's own QUIC endpoint (cheap to
/// clone: clones share the connection).
#[derive(Clone)]
pub struct FarmClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FarmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FarmClient").finish_non_exhaustive()
    }
}

impl FarmClient {
    /// A client that connects from `endpoint` (whose default client configuration presents
    /// the member's certificate) to the managers `managers` lists. Its connection is recorded
    /// in `table`, so that the member's CRL enforcement closes it when the manager's
    /// certificate is revoked.
    pub fn new(endpoint: quinn::Endpoint, managers: ManagerSource, table: ConnTable) -> FarmClient {
        FarmClient {
            inner: Arc::new(Inner {
                endpoint,
                managers,
                table,
                held: Mutex::new(None),
                tried_active: std::sync::Mutex::new(None),
            }),
        }
    }

    /// A client that finds the managers in the network status `status` holds (see
    /// [`FarmClient::new`]).
    pub fn with_status(
        endpoint: quinn::Endpoint,
        status: watch::Receiver<Option<NetworkStatus>>,
        table: ConnTable,
    ) -> FarmClient {
        FarmClient::new(
            endpoint,
            Arc::new(move || {
                status
                    .borrow()
                    .as_ref()
                    .map(managers_of)
                    .unwrap_or_default()
            }),
            table,
        )
    }

    /// The farm's settings as one manager holds them now. A `node` gets the nonce key (once
    /// the active manager made one); any other member gets `nonce_key: None`.
    ///
    /// Cancel safety: cancel-safe (a cancelled call loses only its own answer).
    pub async fn farm(&self) -> Result<FarmInfo, String> {
        match self.call(&FarmRequest::Farm).await? {
            FarmReply::Farm(info) => Ok(info),
            FarmReply::Error(e) => Err(format!("the manager refused: {e}")),
            other => Err(format!("unexpected reply {}", reply_kind(&other))),
        }
    }

    /// The account at `aor` (`user@domain`) and the change version it was read at; `None`
    /// when there is no such account. Nodes only: a manager refuses other certificates.
    ///
    /// Cancel safety: cancel-safe.
    pub async fn account(&self, aor: &str) -> Result<(u64, Option<AccountRecord>), String> {
        let req = FarmRequest::Account {
            aor: aor.to_string(),
        };
        match self.call(&req).await? {
            FarmReply::Account { version, account } => Ok((version, account)),
            FarmReply::Error(e) => Err(format!("the manager refused: {e}")),
            other => Err(format!("unexpected reply {}", reply_kind(&other))),
        }
    }

    /// The routing of the E.164 number `number` (`+15550100`) and the change version it was
    /// read at; `None` when the number is not routed. Nodes only.
    ///
    /// Cancel safety: cancel-safe.
    pub async fn number(&self, number: &str) -> Result<(u64, Option<NumberRoute>), String> {
        let req = FarmRequest::Number {
            number: number.to_string(),
        };
        match self.call(&req).await? {
            FarmReply::Number { version, route } => Ok((version, route)),
            FarmReply::Error(e) => Err(format!("the manager refused: {e}")),
            other => Err(format!("unexpected reply {}", reply_kind(&other))),
        }
    }

    /// One read of the ENUM data: see [`FarmRequest::Enum`] and [`EnumUpdate`] for how a
    /// client follows it. `wait_ms` is capped at [`crate::provision::MAX_ENUM_WAIT_MS`].
    ///
    /// Cancel safety: cancel-safe.
    pub async fn enum_update(
        &self,
        since: u64,
        after: Option<String>,
        wait_ms: u32,
    ) -> Result<EnumUpdate, String> {
        let req = FarmRequest::Enum {
            since,
            after,
            wait_ms: wait_ms.min(crate::provision::MAX_ENUM_WAIT_MS),
        };
        match self.call(&req).await? {
            FarmReply::Enum(update) => Ok(update),
            FarmReply::Error(e) => Err(format!("the manager refused: {e}")),
            other => Err(format!("unexpected reply {}", reply_kind(&other))),
        }
    }

    /// One request and its reply within [`CALL_TIMEOUT`]. A connection that fails is dropped,
    /// so the next call connects afresh (to the next manager if this one is gone).
    async fn call(&self, req: &FarmRequest) -> Result<FarmReply, String> {
        let work = async {
            let conn = self.connection().await?;
            let result = exchange(&conn, req).await;
            if result.is_err() {
                self.forget(&conn).await;
            }
            result
        };
        match tokio::time::timeout(CALL_TIMEOUT, work).await {
            Ok(r) => r,
            Err(_) => {
                if let Some(h) = self.inner.held.lock().await.take() {
                    self.drop_conn(&h.conn, b"no answer in time");
                }
                Err(format!("no answer within {CALL_TIMEOUT:?}"))
            }
        }
    }

    async fn forget(&self, conn: &quinn::Connection) {
        let mut held = self.inner.held.lock().await;
        if held
            .as_ref()
            .is_some_and(|h| h.conn.stable_id() == conn.stable_id())
        {
            *held = None;
            self.inner.table.remove(conn);
        }
    }

    fn drop_conn(&self, conn: &quinn::Connection, why: &[u8]) {
        conn.close(CloseCode::Normal.varint(), why);
        self.inner.table.remove(conn);
    }

    /// The connection held, or a new one to the first manager that answers.
    async fn connection(&self) -> Result<quinn::Connection, String> {
        let managers = (self.inner.managers)();
        let mut held = self.inner.held.lock().await;
        if let Some((addr, current)) = held.as_ref().map(|h| (h.addr, h.conn.clone())) {
            let alive = current.close_reason().is_none();
            let listed = managers.contains(&addr);
            if alive && listed {
                let on_active = managers.first() == Some(&addr);
                if on_active || !self.time_to_try_active() {
                    return Ok(current);
                }
                // Try the active manager; keep this one if it does not answer.
                if let Some(active) = managers.first() {
                    if let Ok(conn) = self.connect(*active).await {
                        info!(manager = %active, "farm reads: moved to the active manager");
                        if let Some(old) = held.replace(Held {
                            addr: *active,
                            conn: conn.clone(),
                        }) {
                            self.drop_conn(&old.conn, b"moved");
                        }
                        return Ok(conn);
                    }
                }
                return Ok(current);
            }
            if let Some(old) = held.take() {
                self.drop_conn(&old.conn, b"manager gone");
            }
        }
        if managers.is_empty() {
            return Err("no manager known yet (no network status with a manager)".into());
        }
        let mut errors = Vec::new();
        for addr in &managers {
            match self.connect(*addr).await {
                Ok(conn) => {
                    debug!(manager = %addr, "farm reads: connected");
                    *held = Some(Held {
                        addr: *addr,
                        conn: conn.clone(),
                    });
                    if managers.first() != Some(addr) {
                        *self.inner.tried_active.lock().expect("tried_active") =
                            Some(Instant::now());
                    }
                    return Ok(conn);
                }
                Err(e) => errors.push(e),
            }
        }
        Err(errors.join("; "))
    }

    fn time_to_try_active(&self) -> bool {
        let mut last = self.inner.tried_active.lock().expect("tried_active");
        match *last {
            Some(t) if t.elapsed() < PREFER_ACTIVE_EVERY => false,
            _ => {
                *last = Some(Instant::now());
                true
            }
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<quinn::Connection, String> {
        let connecting = self
            .inner
            .endpoint
            .connect(addr, &addr.ip().to_string())
            .map_err(|e| format!("manager {addr}: {e}"))?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| format!("manager {addr} did not answer within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| format!("manager {addr}: {e}"))?;
        let id = peer_identity(&conn).map_err(|e| format!("manager {addr}: {e}"))?;
        if id.kind != Kind::Manager {
            conn.close(CloseCode::Forbidden.varint(), b"not a manager");
            return Err(format!(
                "{addr} presented the certificate of {} ({}), not a manager's",
                id.name, id.kind
            ));
        }
        self.inner.table.insert(id, conn.clone());
        Ok(conn)
    }
}

fn reply_kind(r: &FarmReply) -> &'static str {
    match r {
        FarmReply::Farm(_) => "farm",
        FarmReply::Account { .. } => "account",
        FarmReply::Error(_) => "error",
        FarmReply::Number { .. } => "number",
        FarmReply::Enum(_) => "enum",
    }
}

/// One request on its own stream, one reply.
async fn exchange(conn: &quinn::Connection, req: &FarmRequest) -> Result<FarmReply, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&encode_frame(req))
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    let body = read_frame(&mut recv, MAX_REPLY)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the manager closed the stream without a reply")?;
    decode_body(&body).map_err(|e| e.to_string())
}

/// Whether `info` is complete enough to slow down polling: for nodes, once it has a key.
fn settled(info: &FarmInfo, nodes_need_key: bool) -> bool {
    !nodes_need_key || info.nonce_key.is_some()
}

/// Follows the farm's settings: polls [`FarmClient::farm`] every [`FIRST_POLL`] until a first
/// answer (with `need_key`, as nodes pass: until it carries the nonce key), then every
/// [`POLL`], and publishes each change. The receiver holds `FarmInfo::default()` until the
/// first answer; failures keep the last value (logged once per streak). Stops at `cancel`.
pub fn follow(
    client: FarmClient,
    need_key: bool,
    cancel: CancellationToken,
) -> watch::Receiver<Arc<FarmInfo>> {
    let (tx, rx) = watch::channel(Arc::new(FarmInfo::default()));
    tokio::spawn(async move {
        let mut settled_once = false;
        let mut failing = false;
        loop {
            match client.farm().await {
                Ok(info) => {
                    if failing {
                        info!("farm reads answered again");
                        failing = false;
                    }
                    if **tx.borrow() != info {
                        debug!(
                            version = info.version,
                            domains = info.domains.len(),
                            nonce_key = info.nonce_key.is_some(),
                            "farm settings changed"
                        );
                    }
                    settled_once = settled(&info, need_key);
                    tx.send_if_modified(|held| {
                        if **held != info {
                            *held = Arc::new(info);
                            true
                        } else {
                            false
                        }
                    });
                }
                Err(e) => {
                    if !failing {
                        // Before the first status no manager is known: not worth a warning.
                        if settled_once {
                            warn!(cause = %e, "farm reads failing; keeping the last settings");
                        } else {
                            debug!(cause = %e, "farm reads not answered yet");
                        }
                        failing = true;
                    }
                }
            }
            let pause = if settled_once { POLL } else { FIRST_POLL };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = cancel.cancelled() => return,
                _ = tx.closed() => return,
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::NonceSecret;
    use crate::status::{Endpoint, Member};

    fn member(name: &str, kind: Kind, raft: Option<&str>) -> std::sync::Arc<Member> {
        std::sync::Arc::new(Member {
            name: name.into(),
            kind,
            roles: Vec::new(),
            endpoints: raft
                .map(|a| {
                    vec![Endpoint {
                        service: "raft".into(),
                        addr: a.parse().unwrap(),
                    }]
                })
                .unwrap_or_default(),
            since: 0,
            ip: "127.0.0.1".parse().unwrap(),
        })
    }

    #[test]
    fn the_active_manager_comes_first_then_the_others_by_name() {
        let status = NetworkStatus {
            term: 1,
            version: 1,
            manager: "m2".into(),
            members: vec![
                member("m3", Kind::Manager, Some("127.0.0.3:8001")),
                member("n1", Kind::Node, Some("127.0.0.9:8001")),
                member("m1", Kind::Manager, Some("127.0.0.1:8001")),
                member("m2", Kind::Manager, Some("127.0.0.2:8001")),
                member("m4", Kind::Manager, None),
            ],
        };
        let got: Vec<String> = managers_of(&status).iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["127.0.0.2:8001", "127.0.0.1:8001", "127.0.0.3:8001"]);
    }

    #[test]
    fn nodes_settle_only_with_a_key() {
        let mut info = FarmInfo::default();
        assert!(settled(&info, false));
        assert!(!settled(&info, true));
        info.nonce_key = Some(NonceSecret::random(1));
        assert!(settled(&info, true));
    }
}
