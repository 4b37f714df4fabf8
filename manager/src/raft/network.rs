//! openraft networking over a pluggable request/reply transport ([`RaftTransport`]).
//!
//! The client side ([`Network`] / [`Connection`]) turns each openraft RPC into a [`RaftRpc`]
//! message, sends it with the transport under a timeout and converts the [`RaftReply`] back.
//! The server side is [`handle_rpc`]: feed it every [`RaftRpc`] received from a peer and send the
//! returned [`RaftReply`] back. [`RaftRpc::encode`] / [`RaftReply::decode`] etc. give a bincode
//! wire encoding for byte-stream transports (QUIC).

use std::future::Future;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::RPCTypes;
use openraft::Raft;
use serde::{Deserialize, Serialize};

use super::disk;
use super::types::{LogId, ManagerNode, NodeId, Request, Response, TypeConfig};

/// A Raft RPC sent from one manager to another.
#[derive(Serialize, Deserialize, Debug)]
pub enum RaftRpc {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A client write forwarded by a follower to the leader.
    ClientWrite(Request),
}

/// The reply to a [`RaftRpc`], produced by [`handle_rpc`] on the receiving manager.
#[derive(Serialize, Deserialize, Debug)]
pub enum RaftReply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// What became of a forwarded client write.
    ClientWrite(Forwarded),
}

/// The outcome of a client write forwarded to the leader ([`RaftRpc::ClientWrite`]).
#[derive(Serialize, Deserialize, Debug)]
pub enum Forwarded {
    /// Committed and applied at `log_id`.
    Written { response: Response, log_id: LogId },
    /// The receiver is not the leader; `leader` is the one it knows, if any. Nothing was
    /// written.
    NotLeader {
        leader: Option<(NodeId, ManagerNode)>,
    },
    /// The write failed or its outcome is unknown (no commit within the deadline).
    Failed(String),
}

impl RaftRpc {
    /// bincode (standard config) wire encoding.
    pub fn encode(&self) -> std::io::Result<Vec<u8>> {
        disk::encode(self)
    }

    /// Decode a message produced by [`Self::encode`] (limited to 16 MiB).
    pub fn decode(bytes: &[u8]) -> std::io::Result<Self> {
        disk::decode(bytes)
    }

    /// Short name of the RPC, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            RaftRpc::AppendEntries(_) => "AppendEntries",
            RaftRpc::Vote(_) => "Vote",
            RaftRpc::InstallSnapshot(_) => "InstallSnapshot",
            RaftRpc::ClientWrite(_) => "ClientWrite",
        }
    }
}

impl RaftReply {
    /// bincode (standard config) wire encoding.
    pub fn encode(&self) -> std::io::Result<Vec<u8>> {
        disk::encode(self)
    }

    /// Decode a message produced by [`Self::encode`] (limited to 16 MiB).
    pub fn decode(bytes: &[u8]) -> std::io::Result<Self> {
        disk::decode(bytes)
    }

    fn kind(&self) -> &'static str {
        match self {
            RaftReply::AppendEntries(_) => "AppendEntries",
            RaftReply::Vote(_) => "Vote",
            RaftReply::InstallSnapshot(_) => "InstallSnapshot",
            RaftReply::ClientWrite(_) => "ClientWrite",
        }
    }
}

/// Failure to deliver a [`RaftRpc`] or to obtain its [`RaftReply`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The peer could not be reached (connect failed, connection lost, peer down).
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// No reply within the RPC deadline.
    #[error("rpc timed out after {0:?}")]
    Timeout(Duration),
    /// The exchange failed otherwise (codec error, unexpected message, ...).
    #[error("transport error: {0}")]
    Other(String),
}

/// Request/reply transport between managers. Implement this over QUIC (or anything else); it
/// only has to deliver `rpc` to `target` (listening on `node.addr`), have the peer run
/// [`handle_rpc`], and return its reply. Deadlines are enforced by the caller.
pub trait RaftTransport: Send + Sync + 'static {
    fn call(
        &self,
        target: NodeId,
        node: &ManagerNode,
        rpc: RaftRpc,
    ) -> impl Future<Output = Result<RaftReply, TransportError>> + Send;
}

/// Server side: run a received RPC against the local Raft and build the reply.
pub async fn handle_rpc(raft: &Raft<TypeConfig>, rpc: RaftRpc) -> RaftReply {
    match rpc {
        RaftRpc::AppendEntries(req) => RaftReply::AppendEntries(raft.append_entries(req).await),
        RaftRpc::Vote(req) => RaftReply::Vote(raft.vote(req).await),
        RaftRpc::InstallSnapshot(req) => {
            RaftReply::InstallSnapshot(raft.install_snapshot(req).await)
        }
        RaftRpc::ClientWrite(req) => {
            use openraft::error::ClientWriteError;
            let out = match tokio::time::timeout(MAX_RPC_TIMEOUT, raft.client_write(req)).await {
                Err(_) => Forwarded::Failed(format!(
                    "not committed within {MAX_RPC_TIMEOUT:?}; the outcome is unknown"
                )),
                Ok(Ok(r)) => Forwarded::Written {
                    response: r.data,
                    log_id: r.log_id,
                },
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    Forwarded::NotLeader {
                        leader: f.leader_id.zip(f.leader_node),
                    }
                }
                Ok(Err(e)) => Forwarded::Failed(e.to_string()),
            };
            RaftReply::ClientWrite(out)
        }
    }
}

/// Upper bound for any RPC deadline, whatever openraft asks for.
const MAX_RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Lower bound so that a tiny TTL does not make every RPC fail on a slow network.
const MIN_RPC_TIMEOUT: Duration = Duration::from_millis(20);

/// openraft network factory over a [`RaftTransport`].
pub struct Network<T> {
    me: NodeId,
    transport: std::sync::Arc<T>,
    backoff: Duration,
}

impl<T: RaftTransport> Network<T> {
    /// The network of manager `me`; `backoff` is how long openraft waits before retrying an
    /// unreachable peer.
    pub fn new(me: NodeId, transport: T, backoff: Duration) -> Self {
        Self::shared(me, std::sync::Arc::new(transport), backoff)
    }

    /// The same over a transport shared with others (the write forwarding of
    /// [`super::RaftHandle::propose`]).
    pub fn shared(me: NodeId, transport: std::sync::Arc<T>, backoff: Duration) -> Self {
        Self {
            me,
            transport,
            backoff,
        }
    }
}

impl<T: RaftTransport> RaftNetworkFactory<TypeConfig> for Network<T> {
    type Network = Connection<T>;

    async fn new_client(&mut self, target: NodeId, node: &ManagerNode) -> Self::Network {
        Connection {
            me: self.me,
            transport: self.transport.clone(),
            target,
            node: node.clone(),
            backoff: self.backoff,
            last_slow_warning: None,
        }
    }
}

/// Client for one peer.
pub struct Connection<T> {
    me: NodeId,
    transport: std::sync::Arc<T>,
    target: NodeId,
    node: ManagerNode,
    backoff: Duration,
    /// When a late heartbeat was last logged (one warning per [`SLOW_WARNING_EVERY`]).
    last_slow_warning: Option<std::time::Instant>,
}

/// A peer whose replies keep missing the heartbeat deadline is logged at most this often.
const SLOW_WARNING_EVERY: Duration = Duration::from_secs(10);

type RpcResult<R, E = openraft::error::Infallible> =
    Result<R, RPCError<NodeId, ManagerNode, RaftError<NodeId, E>>>;

impl<T: RaftTransport> Connection<T> {
    async fn send(&self, rpc: RaftRpc, ttl: Duration) -> Result<RaftReply, TransportError> {
        let ttl = ttl.clamp(MIN_RPC_TIMEOUT, MAX_RPC_TIMEOUT);
        match tokio::time::timeout(ttl, self.transport.call(self.target, &self.node, rpc)).await {
            Ok(res) => res,
            Err(_) => Err(TransportError::Timeout(ttl)),
        }
    }

    /// The openraft error for a failed exchange. A reply that missed its deadline is a
    /// `Timeout`, which openraft retries at its next heartbeat; only a peer that cannot be
    /// reached at all is `Unreachable`, after which openraft leaves it alone for `backoff`
    /// (`election_min_ms`). Reporting a late reply as unreachable stopped the heartbeats to a
    /// slow follower for that long, and the follower, hearing nothing, started an election.
    fn failed<E: std::error::Error>(
        &mut self,
        action: RPCTypes,
        e: TransportError,
    ) -> RPCError<NodeId, ManagerNode, E> {
        match e {
            TransportError::Timeout(timeout) => {
                if action == RPCTypes::AppendEntries
                    && self
                        .last_slow_warning
                        .is_none_or(|t| t.elapsed() >= SLOW_WARNING_EVERY)
                {
                    self.last_slow_warning = Some(std::time::Instant::now());
                    tracing::warn!(
                        target_id = self.target,
                        node = %self.node,
                        "raft heartbeat to manager {} not answered within {timeout:?} (raft.heartbeat_ms, also the deadline of every heartbeat): if the managers are that far apart, raise the [raft] timings (see docs/decisions.md)",
                        self.target
                    );
                }
                RPCError::Timeout(Timeout {
                    action,
                    id: self.me,
                    target: self.target,
                    timeout,
                })
            }
            e => {
                tracing::debug!(target_id = self.target, node = %self.node, "raft rpc failed: {e}");
                RPCError::Unreachable(Unreachable::new(&e))
            }
        }
    }

    fn unexpected<E: std::error::Error>(
        &self,
        want: &str,
        got: &RaftReply,
    ) -> RPCError<NodeId, ManagerNode, E> {
        let e = TransportError::Other(format!("expected {want} reply, got {}", got.kind()));
        RPCError::Network(NetworkError::new(&e))
    }

    fn remote<E: std::error::Error>(
        &self,
        e: RaftError<NodeId, E>,
    ) -> RPCError<NodeId, ManagerNode, RaftError<NodeId, E>> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.node.clone(),
            e,
        ))
    }
}

impl<T: RaftTransport> RaftNetwork<TypeConfig> for Connection<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        match self
            .send(RaftRpc::AppendEntries(rpc), option.hard_ttl())
            .await
        {
            Ok(RaftReply::AppendEntries(res)) => res.map_err(|e| self.remote(e)),
            Ok(other) => Err(self.unexpected("AppendEntries", &other)),
            Err(e) => Err(self.failed(RPCTypes::AppendEntries, e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        match self
            .send(RaftRpc::InstallSnapshot(rpc), option.hard_ttl())
            .await
        {
            Ok(RaftReply::InstallSnapshot(res)) => res.map_err(|e| self.remote(e)),
            Ok(other) => Err(self.unexpected("InstallSnapshot", &other)),
            Err(e) => Err(self.failed(RPCTypes::InstallSnapshot, e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        match self.send(RaftRpc::Vote(rpc), option.hard_ttl()).await {
            Ok(RaftReply::Vote(res)) => res.map_err(|e| self.remote(e)),
            Ok(other) => Err(self.unexpected("Vote", &other)),
            Err(e) => Err(self.failed(RPCTypes::Vote, e)),
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.backoff))
    }
}
