//! Raft type configuration and the replicated command / response types.

use std::fmt;

use onehop_overlay::provision::NonceSecret;
use serde::{Deserialize, Serialize};

use crate::provision::model::{ProvisionCommand, ProvisionResult};

/// Raft node id of a manager.
pub type NodeId = u64;

/// Static description of a manager as a Raft member.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ManagerNode {
    /// Human readable name (e.g. host name), only used in logs and status.
    pub name: String,
    /// `ip:port` of the manager's Raft RPC listener.
    pub addr: String,
}

impl ManagerNode {
    pub fn new(name: impl Into<String>, addr: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            addr: addr.into(),
        }
    }
}

impl fmt::Display for ManagerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

/// A command replicated through the Raft log and applied to the provisioning store.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Insert or replace `key`.
    Set { key: String, value: String },
    /// Remove `key` (no-op when absent).
    Delete { key: String },
    /// A provisioning command (domains, accounts, aliases, imports).
    Provision(Box<ProvisionCommand>),
    /// Sets the farm's SIP nonce key unless one is set already (write once: a later leader
    /// never replaces it). Its `Debug` output redacts the secret.
    SetNonceKey(NonceSecret),
}

/// Result of applying one [`Request`] (and of blank / membership entries, with `previous: None`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// The value the key had before the command was applied.
    pub previous: Option<String>,
    /// What a provisioning command did.
    pub provision: Option<ProvisionResult>,
}

openraft::declare_raft_types!(
    /// openraft type configuration of the manager cluster.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = ManagerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Shorthands for openraft types instantiated with [`TypeConfig`].
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, ManagerNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, ManagerNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
