//! The manager's configuration (TOML).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use onehop_overlay::client::QueueLimits;
use onehop_overlay::daemon::{ConfigError, ConfigFlag, DaemonConfig, FlagValue};
use onehop_overlay::net::Timing;
use onehop_overlay::tls::TlsFiles;
use serde::{Deserialize, Serialize};

use crate::raft::RaftTimings;

/// The well-known manager Raft port (UDP, QUIC).
pub const RAFT_PORT: u16 = 8001;

/// A manager of the Raft group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Raft id, unique, from 1.
    pub id: u64,
    /// The manager's name (its certificate CN).
    pub name: String,
    /// Its Raft address (ip:8001).
    pub addr: SocketAddr,
}

/// `onehop-manager` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The manager's own IP address.
    pub ip: IpAddr,
    /// UDP port of the Raft listener (QUIC).
    #[serde(default = "default_raft_port")]
    pub raft_port: u16,
    /// This manager's Raft id (must be one of `peers`).
    pub id: u64,
    /// Where the Raft vote, log and snapshots are kept.
    pub data_dir: PathBuf,
    /// Every manager of the group, this one included; identical on every manager.
    pub peers: Vec<Peer>,
    /// The event servers' QUIC addresses (port 8000).
    pub eventservers: Vec<SocketAddr>,
    /// Changes within this many milliseconds are published as one status.
    #[serde(default = "default_batch_ms")]
    pub batch_ms: u64,
    /// The status is published again this often (milliseconds) even without changes.
    #[serde(default = "default_republish_ms")]
    pub republish_ms: u64,
    /// Where to serve Prometheus metrics over HTTP (optional).
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// Raft heartbeat and election timeouts.
    #[serde(default)]
    pub raft: RaftTimings,
    /// Certificate, key, CA and CRL.
    pub tls: TlsFiles,
    /// QUIC keep-alive, idle timeout and per-connection buffers.
    #[serde(default)]
    pub quic: Timing,
    /// Bounds on QUIC handshakes: in progress at once, per source address, and when clients
    /// must first prove their address.
    #[serde(default)]
    pub quic_admission: onehop_overlay::admission::Admission,
    /// When the certificates and the revocation list are reported as nearing their end.
    #[serde(default)]
    pub cert_warnings: onehop_overlay::certwatch::CertWarnings,
    /// Bounds of the queues between this daemon and the event servers (received events, and
    /// publications per event server), in entries and in bytes.
    #[serde(default)]
    pub eventclient: QueueLimits,
    /// TCP port of the provisioning API (HTTPS, admin certificates only); 0 turns it off.
    #[serde(default = "default_api_port")]
    pub api_port: u16,
    /// Most provisioning API connections at once.
    #[serde(default = "default_api_max_connections")]
    pub api_max_connections: usize,
    /// Page cache of the provisioning database, in MiB: most of its memory (a store larger than
    /// this is read from disk as needed).
    #[serde(default = "default_provision_cache_mib")]
    pub provision_cache_mib: u64,
}

fn default_provision_cache_mib() -> u64 {
    (crate::provision::db::DEFAULT_CACHE >> 20) as u64
}

fn default_api_port() -> u16 {
    crate::api::API_PORT
}
fn default_api_max_connections() -> usize {
    256
}

fn default_raft_port() -> u16 {
    RAFT_PORT
}
fn default_batch_ms() -> u64 {
    20
}
fn default_republish_ms() -> u64 {
    5000
}

/// The named flags of `onehop-manager`, each a shorthand for `--set KEY=VALUE`.
pub const FLAGS: &[ConfigFlag] = &[
    ConfigFlag::IP,
    ConfigFlag {
        long: "id",
        key: "id",
        value_name: "N",
        help: "This manager's Raft id, one of the [[peers]] (config key `id`)",
        value: FlagValue::Toml,
        example: "2",
    },
    ConfigFlag {
        long: "data-dir",
        key: "data_dir",
        value_name: "DIR",
        help: "Where the Raft state is kept (config key `data_dir`)",
        value: FlagValue::String,
        example: "/var/lib/onehop/manager",
    },
    ConfigFlag::EVENTSERVER,
    ConfigFlag::METRICS,
];

impl DaemonConfig for Config {
    fn flags() -> &'static [ConfigFlag] {
        FLAGS
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        self.validate(path)
    }

    fn tls(&self) -> &TlsFiles {
        &self.tls
    }
}

impl Config {
    /// Loads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        <Config as DaemonConfig>::load_with(path, &[])
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, problem: String| ConfigError::Invalid {
            path: path.display().to_string(),
            key: key.into(),
            problem,
        };
        if self.eventservers.is_empty() {
            return Err(bad(
                "eventservers",
                "list at least one event server address".into(),
            ));
        }
        if !self.peers.iter().any(|p| p.id == self.id) {
            return Err(bad(
                "id",
                format!("{} is not the id of any [[peers]] entry", self.id),
            ));
        }
        let ids: BTreeSet<u64> = self.peers.iter().map(|p| p.id).collect();
        if ids.len() != self.peers.len() {
            return Err(bad("peers", "two peers share an id".into()));
        }
        if self.batch_ms > 1000 {
            return Err(bad("batch_ms", "must be at most 1000".into()));
        }
        if !(16..=1 << 20).contains(&self.provision_cache_mib) {
            return Err(bad(
                "provision_cache_mib",
                "must be 16 to 1048576 (MiB)".into(),
            ));
        }
        if self.republish_ms < 100 {
            return Err(bad("republish_ms", "must be at least 100".into()));
        }
        if self.raft.election_min_ms / 2 <= self.raft.heartbeat_ms
            || self.raft.election_max_ms <= self.raft.election_min_ms
        {
            return Err(bad(
                "raft",
                "need heartbeat_ms < election_min_ms / 2 and election_min_ms < election_max_ms"
                    .into(),
            ));
        }
        if let Some((key, problem)) = self.quic.problem() {
            return Err(bad(key, problem));
        }
        if let Some((key, problem)) = self.eventclient.problem() {
            return Err(bad(&format!("eventclient.{key}"), problem));
        }
        if let Err((key, problem)) = self.quic_admission.check() {
            return Err(bad(&key, problem));
        }
        if let Err((key, problem)) = self.cert_warnings.check() {
            return Err(bad(&key, problem));
        }
        Ok(())
    }
}
