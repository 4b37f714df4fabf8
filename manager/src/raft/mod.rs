//! Active-manager election and the replicated provisioning store, on openraft 0.9.
//!
//! Three or more `onehop-manager` daemons form a static Raft cluster ([`start`]); the Raft leader
//! whose quorum is current is the active manager ([`Leadership::is_me`]). The replicated state is
//! the farm's durable provisioning store ([`crate::provision`], in redb) and a small string map
//! ([`Request`] / [`StoreReader`]).
//!
//! - [`types`]: openraft type configuration, node description, commands.
//! - [`log_store`]: durable log + vote ([`openraft::storage::RaftLogStorage`]).
//! - [`state_machine`]: the map, snapshots ([`openraft::storage::RaftStateMachine`]).
//! - [`network`]: openraft networking over a pluggable [`RaftTransport`], and [`handle_rpc`].
//! - [`handle`]: [`start`], [`RaftHandle`], [`RaftTimings`], [`Leadership`].

pub(crate) mod disk;
pub mod handle;
pub mod log_store;
pub mod network;
pub mod state_machine;
pub mod types;

#[cfg(test)]
mod tests;

pub use handle::{start, start_with_cache, Leadership, RaftHandle, RaftTimings, WriteError};
pub use log_store::{LogReader, LogStore, OpenReport};
pub use network::{
    handle_rpc, Connection, Forwarded, Network, RaftReply, RaftRpc, RaftTransport, TransportError,
};
pub use state_machine::{StateMachineStore, StoreReader};
pub use types::{ManagerNode, NodeId, Request, Response, TypeConfig};
