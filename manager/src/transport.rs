//! Raft RPCs between managers over QUIC with mutual TLS (UDP 8001).
//!
//! One bidirectional stream per RPC: the caller writes one frame (the request) and finishes;
//! the callee answers with one frame. Only peers holding a `manager` certificate are served
//! Raft; `node` and `dns` certificates are served the farm-read protocol on the same port
//! ([`crate::farm_read`]), and every other kind is refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onehop_overlay::admission::HandshakeGate;
use onehop_overlay::logging::peer_label;
use onehop_overlay::net::{peer_identity, ConnTable};
use onehop_overlay::status::Kind;
use onehop_overlay::wire::{read_frame, CloseCode};
use openraft::Raft;
use tracing::{debug, warn, Instrument};

use crate::raft::{
    handle_rpc, ManagerNode, NodeId, RaftReply, RaftRpc, RaftTransport, TransportError, TypeConfig,
};

/// Largest Raft frame (snapshots of the provisioning store travel whole).
pub const MAX_RAFT_FRAME: usize = 16 << 20;

/// The client side: a cached connection per peer.
pub struct QuicTransport {
    endpoint: quinn::Endpoint,
    conns: Mutex<HashMap<NodeId, quinn::Connection>>,
    table: ConnTable,
}

impl QuicTransport {
    /// Calls go out from `endpoint`; connections are recorded in `table` for CRL enforcement.
    pub fn new(endpoint: quinn::Endpoint, table: ConnTable) -> QuicTransport {
        QuicTransport {
            endpoint,
            conns: Mutex::new(HashMap::new()),
            table,
        }
    }

    async fn connection(
        &self,
        target: NodeId,
        node: &ManagerNode,
    ) -> Result<quinn::Connection, TransportError> {
        if let Some(c) = self.conns.lock().expect("conns").get(&target) {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let addr: std::net::SocketAddr = node
            .addr
            .parse()
            .map_err(|e| TransportError::Other(format!("bad address {}: {e}", node.addr)))?;
        let connecting = self
            .endpoint
            .connect(addr, &addr.ip().to_string())
            .map_err(|e| TransportError::Unreachable(e.to_string()))?;
        let conn = tokio::time::timeout(Duration::from_millis(500), connecting)
            .await
            .map_err(|_| TransportError::Unreachable(format!("{} did not answer", node.name)))?
            .map_err(|e| TransportError::Unreachable(e.to_string()))?;
        let id = peer_identity(&conn).map_err(|e| TransportError::Other(e.to_string()))?;
        if id.kind != Kind::Manager || id.name != node.name {
            conn.close(CloseCode::Forbidden.varint(), b"not the expected manager");
            return Err(TransportError::Other(format!(
                "{} presented the certificate of {} ({}), expected manager {}",
                node.addr, id.name, id.kind, node.name
            )));
        }
        self.table.insert(id, conn.clone());
        self.conns
            .lock()
            .expect("conns")
            .insert(target, conn.clone());
        Ok(conn)
    }

    fn forget(&self, target: NodeId) {
        if let Some(c) = self.conns.lock().expect("conns").remove(&target) {
            self.table.remove(&c);
        }
    }
}

impl RaftTransport for QuicTransport {
    async fn call(
        &self,
        target: NodeId,
        node: &ManagerNode,
        rpc: RaftRpc,
    ) -> Result<RaftReply, TransportError> {
        let conn = self.connection(target, node).await?;
        let result = async {
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| TransportError::Unreachable(e.to_string()))?;
            let body = rpc
                .encode()
                .map_err(|e| TransportError::Other(e.to_string()))?;
            let mut frame = Vec::with_capacity(body.len() + 4);
            frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
            frame.extend_from_slice(&body);
            send.write_all(&frame)
                .await
                .map_err(|e| TransportError::Unreachable(e.to_string()))?;
            let _ = send.finish();
            let reply = read_frame(&mut recv, MAX_RAFT_FRAME)
                .await
                .map_err(|e| TransportError::Unreachable(e.to_string()))?
                .ok_or_else(|| TransportError::Unreachable("no reply".into()))?;
            RaftReply::decode(&reply).map_err(|e| TransportError::Other(e.to_string()))
        }
        .await;
        if matches!(result, Err(TransportError::Unreachable(_))) {
            self.forget(target);
        }
        result
    }
}

/// Handshake refusals logged at WARN: at most 20 per 10 s, whatever a storm sends.
static REFUSALS: std::sync::LazyLock<onehop_overlay::admission::LogBudget> =
    std::sync::LazyLock::new(onehop_overlay::admission::handshake_log_budget);
/// Connections of other managers (Raft) at once. Counted apart from members', so that many
/// nodes never crowd Raft out.
pub const MAX_MANAGER_CONNECTIONS: usize = 64;
/// Connections of nodes and DNS servers (farm reads) at once; one per member is the norm.
pub const MAX_MEMBER_CONNECTIONS: usize = 1024;

/// The server side until the endpoint closes: Raft RPCs from other managers, and the
/// farm-read service ([`crate::farm_read`]) for nodes and DNS servers. Any other certificate
/// kind is refused with [`CloseCode::Forbidden`]; revoked certificates never get past the
/// handshake (the endpoint's verifier holds the CRL) and connections are recorded in `table`
/// so that a later revocation closes them. Handshakes pass the `gate` first (bounded in
/// progress and per source address, see [`onehop_overlay::admission`]).
pub async fn serve(
    endpoint: quinn::Endpoint,
    raft: Raft<TypeConfig>,
    table: ConnTable,
    farm: crate::farm_read::FarmReads,
    gate: HandshakeGate,
) {
    let managers = Arc::new(tokio::sync::Semaphore::new(MAX_MANAGER_CONNECTIONS));
    let members = Arc::new(tokio::sync::Semaphore::new(MAX_MEMBER_CONNECTIONS));
    while let Some(incoming) = endpoint.accept().await {
        let Some((incoming, handshake)) = gate.screen(incoming) else {
            continue;
        };
        let raft = raft.clone();
        let table = table.clone();
        let farm = farm.clone();
        let (managers, members) = (managers.clone(), members.clone());
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match HandshakeGate::handshake(incoming, handshake).await {
                Ok(c) => c,
                Err(why) => {
                    match REFUSALS.allow(std::time::Instant::now()) {
                        Some(0) => warn!(peer = %remote, "refused raft connection: {why}"),
                        Some(n) => {
                            warn!(peer = %remote, suppressed = n, "refused raft connection: {why} ({n} more refusals not logged)")
                        }
                        None => debug!(peer = %remote, "refused raft connection: {why}"),
                    }
                    return;
                }
            };
            let id = match peer_identity(&conn) {
                Ok(id) => id,
                Err(e) => {
                    warn!(peer = %remote, cause = %e, "refused raft connection");
                    conn.close(CloseCode::Forbidden.varint(), b"unusable certificate");
                    return;
                }
            };
            let pool = match id.kind {
                Kind::Manager => managers,
                k if crate::farm_read::may_read(k) => members,
                _ => {
                    warn!(peer = %peer_label(Some(&id.name), remote), peer_kind = %id.kind, "refused raft connection: neither a manager nor a member that may read farm settings");
                    conn.close(
                        CloseCode::Forbidden.varint(),
                        b"only managers speak raft; only nodes and dns servers read farm settings",
                    );
                    return;
                }
            };
            let Ok(_permit) = pool.try_acquire_owned() else {
                warn!(peer = %peer_label(Some(&id.name), remote), peer_kind = %id.kind, "refused connection: too many connections of its kind");
                conn.close(CloseCode::Busy.varint(), b"too many connections");
                return;
            };
            if id.kind != Kind::Manager {
                table.insert(id.clone(), conn.clone());
                farm.serve_connection(conn.clone(), id).await;
                table.remove(&conn);
                return;
            }
            table.insert(id.clone(), conn.clone());
            let span = tracing::info_span!("raft", peer = %peer_label(Some(&id.name), remote));
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let raft = raft.clone();
                tokio::spawn(
                    async move {
                        let body = match read_frame(&mut recv, MAX_RAFT_FRAME).await {
                            Ok(Some(b)) => b,
                            Ok(None) => return,
                            Err(e) => {
                                warn!(cause = %e, "closing raft stream: bad frame");
                                let _ = recv.stop(e.close_code().varint());
                                return;
                            }
                        };
                        let rpc = match RaftRpc::decode(&body) {
                            Ok(r) => r,
                            Err(e) => {
                                warn!(cause = %e, "closing raft stream: malformed rpc");
                                let _ = send.reset(CloseCode::Malformed.varint());
                                return;
                            }
                        };
                        let reply = handle_rpc(&raft, rpc).await;
                        match reply.encode() {
                            Ok(b) => {
                                let mut frame = Vec::with_capacity(b.len() + 4);
                                frame.extend_from_slice(&(b.len() as u32).to_be_bytes());
                                frame.extend_from_slice(&b);
                                let _ = send.write_all(&frame).await;
                                let _ = send.finish();
                            }
                            Err(e) => debug!(cause = %e, "cannot encode raft reply"),
                        }
                    }
                    .instrument(span.clone()),
                );
            }
            table.remove(&conn);
        });
    }
}
