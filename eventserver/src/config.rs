//! The event server's configuration (TOML).

use std::net::SocketAddr;
use std::path::Path;

use onehop_overlay::admission::Admission;
use onehop_overlay::certwatch::CertWarnings;
use onehop_overlay::daemon::{ConfigError, ConfigFlag, DaemonConfig, FlagValue};
use onehop_overlay::net::Timing;
use onehop_overlay::tls::TlsFiles;
use serde::{Deserialize, Serialize};

/// The well-known event-server port (UDP, QUIC).
pub const PORT: u16 = 8000;

/// `onehop-eventserver` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where to listen for QUIC (the event server's own IP, port 8000).
    pub listen: SocketAddr,
    /// Where to serve Prometheus metrics over HTTP (optional).
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// Most connections held at once; more are refused at the QUIC level.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Events queued for one subscriber before it is disconnected as too slow.
    #[serde(default = "default_subscriber_queue")]
    pub subscriber_queue: usize,
    /// Bytes of events queued for one subscriber before it is disconnected as too slow
    /// (16 MiB by default; at least 4 MiB: what a new subscriber is sent at once, the member
    /// snapshot and the retained `network` and `crl` values, may be three frames at the 1 MiB
    /// cap, and one event more).
    #[serde(default = "default_subscriber_queue_bytes")]
    pub subscriber_queue_bytes: usize,
    /// Certificate, key, CA and CRL.
    pub tls: TlsFiles,
    /// QUIC keep-alive, idle timeout and per-connection buffers.
    #[serde(default)]
    pub quic: Timing,
    /// Bounds on QUIC handshakes: in progress at once, per source address, and when clients
    /// must first prove their address.
    #[serde(default)]
    pub quic_admission: Admission,
    /// When the certificates and the revocation list are reported as nearing their end.
    #[serde(default)]
    pub cert_warnings: CertWarnings,
}

fn default_max_connections() -> usize {
    4096
}

fn default_subscriber_queue() -> usize {
    4096
}

fn default_subscriber_queue_bytes() -> usize {
    16 << 20
}

/// The least `subscriber_queue_bytes` accepted: the three frames a new subscriber is sent at
/// once and one more, at the frame cap.
pub const MIN_SUBSCRIBER_QUEUE_BYTES: usize = 4 * onehop_overlay::wire::MAX_FRAME;

/// The named flags of `onehop-eventserver`, each a shorthand for `--set KEY=VALUE`.
pub const FLAGS: &[ConfigFlag] = &[
    ConfigFlag {
        long: "listen",
        key: "listen",
        value_name: "ADDR:PORT",
        help: "Where to listen for QUIC (config key `listen`)",
        value: FlagValue::String,
        example: "10.0.0.1:8000",
    },
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
        let bad = |key: &str, problem: &str| ConfigError::Invalid {
            path: path.display().to_string(),
            key: key.into(),
            problem: problem.into(),
        };
        if self.max_connections == 0 {
            return Err(bad("max_connections", "must be at least 1"));
        }
        if self.subscriber_queue < 16 {
            return Err(bad("subscriber_queue", "must be at least 16"));
        }
        if self.subscriber_queue_bytes < MIN_SUBSCRIBER_QUEUE_BYTES {
            return Err(bad(
                "subscriber_queue_bytes",
                &format!(
                    "must be at least {MIN_SUBSCRIBER_QUEUE_BYTES} (four frames at the 1 MiB frame cap)"
                ),
            ));
        }
        if let Err((key, problem)) = self.quic_admission.check() {
            return Err(bad(&key, &problem));
        }
        if let Err((key, problem)) = self.cert_warnings.check() {
            return Err(bad(&key, &problem));
        }
        if let Some((key, problem)) = self.quic.problem() {
            return Err(bad(key, &problem));
        }
        Ok(())
    }
}
