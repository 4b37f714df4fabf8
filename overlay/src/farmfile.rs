//! `DIR/farm.json`: what `onehop-farm up` started, for scripts and for the other tools.
//!
//! This file is a contract: fields may be added, never renamed or removed. `cmd` is the exact
//! command line that started a member, so a script can restart one it killed.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tls::TlsFiles;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FarmFile {
    /// The SIP domain.
    pub domain: String,
    /// Every member started.
    pub members: Vec<FarmMember>,
    /// The farm's directory (absolute).
    #[serde(default)]
    pub dir: PathBuf,
    /// The CA certificate.
    #[serde(default)]
    pub ca: PathBuf,
    /// The CRL file.
    #[serde(default)]
    pub crl: PathBuf,
    /// The `monitor` client certificate and key.
    #[serde(default)]
    pub monitor: Option<ClientCert>,
    /// The `admin` client certificate and key.
    #[serde(default)]
    pub admin: Option<ClientCert>,
    /// The process id of a foreground `onehop-farm up` supervising the members (absent when
    /// detached).
    #[serde(default)]
    pub supervisor_pid: Option<u32>,
}

/// A client (non-member) certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCert {
    /// Certificate (PEM).
    pub cert: PathBuf,
    /// Key (PEM).
    pub key: PathBuf,
}

/// One member of the farm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FarmMember {
    /// Unique name (certificate CN).
    pub name: String,
    /// `eventserver`, `manager`, `dns` or `node`.
    pub kind: String,
    /// Roles (nodes only).
    pub roles: Vec<String>,
    /// Process id.
    pub pid: u32,
    /// The member's own loopback address.
    pub ip: IpAddr,
    /// The exact command line that started it.
    pub cmd: Vec<String>,
    /// Service name -> port (`sip`, `lookup`, `eventserver`, `dns`, `raft`, `metrics`).
    pub ports: BTreeMap<String, u16>,
    /// Its configuration file.
    #[serde(default)]
    pub config: PathBuf,
    /// Its log file.
    #[serde(default)]
    pub log: PathBuf,
}

impl FarmMember {
    /// The address of a service, if the member has it.
    pub fn addr(&self, service: &str) -> Option<SocketAddr> {
        self.ports
            .get(service)
            .map(|p| SocketAddr::new(self.ip, *p))
    }
}

/// Reading `farm.json` failed.
#[derive(Debug, thiserror::Error)]
pub enum FarmFileError {
    /// No file, or unreadable.
    #[error("{path}: {source} (is a farm running? start one with `onehop-farm up --dir DIR`)")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not the expected JSON.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

impl FarmFile {
    /// Reads `DIR/farm.json`.
    pub fn load(dir: &Path) -> Result<FarmFile, FarmFileError> {
        let path = dir.join("farm.json");
        let text = std::fs::read_to_string(&path).map_err(|source| FarmFileError::Read {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| FarmFileError::Parse {
            path,
            message: e.to_string(),
        })
    }

    /// The event servers' QUIC addresses.
    pub fn eventservers(&self) -> Vec<SocketAddr> {
        self.members
            .iter()
            .filter(|m| m.kind == "eventserver")
            .filter_map(|m| m.addr("eventserver"))
            .collect()
    }

    /// TLS files for a client certificate of this farm.
    pub fn client_tls(&self, which: &ClientCert) -> TlsFiles {
        TlsFiles {
            ca: self.ca.clone(),
            cert: which.cert.clone(),
            key: which.key.clone(),
            crl: Some(self.crl.clone()),
        }
    }

    /// The member with this name.
    pub fn member(&self, name: &str) -> Option<&FarmMember> {
        self.members.iter().find(|m| m.name == name)
    }
}
