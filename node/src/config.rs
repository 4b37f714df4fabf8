//! The node's configuration (TOML).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use onehop_overlay::client::QueueLimits;
use onehop_overlay::daemon::{ConfigError, ConfigFlag, DaemonConfig, FlagValue};
use onehop_overlay::net::Timing;
use onehop_overlay::tls::TlsFiles;
use serde::{Deserialize, Serialize};

use crate::proxy::transport;

/// The well-known lookup-interface port (TCP).
pub const LOOKUP_PORT: u16 = 9500;

/// `onehop-node` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The node's own IP address: every socket of the node binds it.
    pub ip: IpAddr,
    /// The event servers' QUIC addresses (port 8000). May be left out (or empty) when
    /// `domain` is set: the node then finds them through DNS.
    #[serde(default)]
    pub eventservers: Vec<SocketAddr>,
    /// The SIP domain whose SRV records `_eventserver._udp.DOMAIN` list the event servers;
    /// used only when `eventservers` is empty.
    #[serde(default)]
    pub domain: Option<String>,
    /// The DNS servers asked for `_eventserver._udp.DOMAIN`, in order (address and port).
    /// Default: the `nameserver` lines of /etc/resolv.conf, port 53.
    #[serde(default)]
    pub dns_servers: Vec<SocketAddr>,
    /// TCP port of the lookup interface.
    #[serde(default = "default_lookup_port")]
    pub lookup_port: u16,
    /// Most lookup-interface connections served at once.
    #[serde(default = "default_lookup_connections")]
    pub lookup_connections: usize,
    /// A lookup-interface connection that sends nothing for this long is closed, in seconds
    /// (connections are bounded by `lookup_connections`; idle clients must not hold them all).
    #[serde(default = "default_lookup_idle_secs")]
    pub lookup_idle_secs: u64,
    /// Points each member places on a role's ring.
    #[serde(default = "default_points")]
    pub points: u32,
    /// UDP and TCP port of SIP (nodes with the `sip_proxy` role).
    #[serde(default = "default_sip_port")]
    pub sip_port: u16,
    /// TCP port of SIP over TLS (served only when `sip_tls_cert` and `sip_tls_key` are set).
    #[serde(default = "default_sips_port")]
    pub sips_port: u16,
    /// The public certificate chain (PEM) SIP clients see on the TLS port. Not the overlay
    /// certificate: phones verify this one against the public CAs they trust.
    #[serde(default)]
    pub sip_tls_cert: Option<std::path::PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub sip_tls_key: Option<std::path::PathBuf>,
    /// UDP port of node-to-node requests (QUIC with mutual TLS): the replicated store and SIP
    /// between nodes.
    #[serde(default = "default_peer_port")]
    pub peer_port: u16,
    /// Members holding each key of the replicated store (R), the owner included.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// Most entries the node's replicated store holds (bindings, accounts, tombstones): a
    /// write of a new key beyond is refused (a REGISTER gets 503), a replication or hand-off
    /// batch is refused and retried by its sender, never dropped.
    #[serde(default = "default_store_max_entries")]
    pub store_max_entries: usize,
    /// Most bytes the node's replicated store holds (keys, values and 128 bytes per entry),
    /// refused the same way.
    #[serde(default = "default_store_max_bytes")]
    pub store_max_bytes: usize,
    /// Shortest registration accepted, in seconds (shorter ones get 423 Interval Too Brief).
    #[serde(default = "default_min_expires")]
    pub min_expires: u32,
    /// Longest registration granted, in seconds (longer ones are shortened).
    #[serde(default = "default_max_expires")]
    pub max_expires: u32,
    /// Most SIP requests waiting for the registrar or a lookup at once; beyond, 503.
    #[serde(default = "default_sip_pending")]
    pub sip_pending: usize,
    /// SIP workers: the node's transactions are sharded over this many tasks by Call-ID, so
    /// SIP uses that many cores. 0 (the default): as many as the node's runtime has threads
    /// (`threads`).
    #[serde(default)]
    pub sip_workers: usize,
    /// Worker threads of the node's runtime (SIP workers, QUIC, the store, lookups). 0 (the
    /// default): one per CPU the process may use. Several nodes sharing one machine each set
    /// their share of its CPUs (`onehop-farm up` does): more runnable threads than CPUs cost
    /// a context switch for every hand-over between them. The media relay's forwarding
    /// threads are apart (one per CPU).
    #[serde(default)]
    pub threads: usize,
    /// How long a batch of SIP messages to another node may wait to be accepted there
    /// (milliseconds). Past it, its requests are answered 503 (with Retry-After) at once.
    #[serde(default = "default_sip_peer_timeout_ms")]
    pub sip_peer_timeout_ms: u64,
    /// Most SIP TCP and TLS connections at once, inbound and outbound; more are refused.
    /// Each open connection also takes a file descriptor: keep RLIMIT_NOFILE above this.
    #[serde(default = "default_sip_max_connections")]
    pub sip_max_connections: usize,
    /// Most inbound SIP TCP and TLS connections at once from one IP address (an IPv6
    /// address counts by its /64 prefix); more are refused. 0: no limit per address.
    #[serde(default = "default_sip_max_connections_per_ip")]
    pub sip_max_connections_per_ip: usize,
    /// An inbound SIP TCP or TLS connection that has delivered no SIP message (CRLF
    /// keep-alives do not count) this long after it was opened is closed, in seconds.
    #[serde(default = "default_sip_tcp_first_message_secs")]
    pub sip_tcp_first_message_secs: u64,
    /// A SIP TCP or TLS connection that receives nothing (not even a CRLF keep-alive) for
    /// this long is closed, in seconds.
    #[serde(default = "default_sip_tcp_idle_secs")]
    pub sip_tcp_idle_secs: u64,
    /// A write to a SIP connection that does not complete in this time (a peer that stopped
    /// reading) closes the connection, and so does a send queue that stays full this long;
    /// in milliseconds.
    #[serde(default = "default_sip_tcp_write_timeout_ms")]
    pub sip_tcp_write_timeout_ms: u64,
    /// Time allowed to open an outbound SIP TCP connection, in milliseconds.
    #[serde(default = "default_sip_tcp_connect_timeout_ms")]
    pub sip_tcp_connect_timeout_ms: u64,
    /// Time allowed for a SIP TLS handshake, in milliseconds.
    #[serde(default = "default_sip_tls_handshake_timeout_ms")]
    pub sip_tls_handshake_timeout_ms: u64,
    /// Most messages queued for sending on one SIP connection; beyond, sends to it fail.
    #[serde(default = "default_sip_tcp_send_queue")]
    pub sip_tcp_send_queue: usize,
    /// Most bytes queued for sending on one SIP connection; beyond, sends to it fail.
    #[serde(default = "default_sip_tcp_send_queue_bytes")]
    pub sip_tcp_send_queue_bytes: usize,
    /// Largest SIP message accepted, in bytes; larger requests are answered 513, a larger
    /// header section on a stream closes the connection.
    #[serde(default = "default_sip_max_message")]
    pub sip_max_message: usize,
    /// Received SIP messages waiting for each SIP worker; beyond, datagrams for that worker
    /// are dropped and stream readers wait.
    #[serde(default = "default_sip_inbound_queue")]
    pub sip_inbound_queue: usize,
    /// Bytes of received SIP messages waiting for each SIP worker (16 MiB; at least
    /// sip_max_message); beyond, datagrams for that worker are dropped (counted in
    /// `sip_inbound_dropped_total{bound="bytes"}`) and stream readers wait.
    #[serde(default = "default_sip_inbound_queue_bytes")]
    pub sip_inbound_queue_bytes: usize,
    /// Bytes of SIP messages each worker holds back behind calls waiting for their media
    /// relay (4 MiB; at least sip_max_message); beyond, such messages are dropped (their
    /// senders retransmit) and counted in `relay_held_dropped_total`.
    #[serde(default = "default_sip_held_bytes")]
    pub sip_held_bytes: usize,
    /// Most SIP messages waiting to be sent to one other node. Past it, a request for that
    /// node is answered 503 (with Retry-After) at once instead of waiting its turn (queues
    /// push back, they never drop in silence). Also bounded at 8 MiB of messages.
    #[serde(default = "default_sip_peer_queue")]
    pub sip_peer_queue: usize,
    /// Bytes of SIP messages waiting to be sent to one other node (8 MiB; at least
    /// sip_max_message); past it, a request for that node is answered 503 at once, as past
    /// sip_peer_queue.
    #[serde(default = "default_sip_peer_queue_bytes")]
    pub sip_peer_queue_bytes: usize,
    /// Bytes of requests from other nodes (and managers) being read or handled at once on the
    /// peer port (64 MiB; at least 1 MiB, one request at the frame cap); past it, a request
    /// is read only when room frees, and QUIC makes its sender wait.
    #[serde(default = "default_peer_inflight_bytes")]
    pub peer_inflight_bytes: usize,
    /// Who may use SIP: `"digest"` (the default) challenges REGISTERs for the farm's
    /// domains (401) and requests from them (407) with digest authentication, and relays
    /// requests from elsewhere only to the farm's own users (403 otherwise); `"off"`
    /// challenges nobody and relays anything, for closed test networks only.
    #[serde(default)]
    pub sip_auth: SipAuth,
    /// The digest algorithms a 401/407 offers, in the order sent: a client takes the first it
    /// supports (RFC 8760). `"MD5"`, `"SHA-256"`, or both. The default, `["MD5", "SHA-256"]`,
    /// puts MD5 first because deployed phones and test tools give up on a SHA-256 challenge
    /// they meet first (SIPp 3.6); some give up on any second challenge (baresip 1.0: a farm
    /// of those sets `["MD5"]`). A farm whose phones all speak RFC 8760 sets
    /// `["SHA-256", "MD5"]`.
    #[serde(default = "default_sip_auth_algorithms")]
    pub sip_auth_algorithms: Vec<String>,
    /// How long a digest nonce stays valid, in seconds; an older one gets `stale=true`.
    #[serde(default = "default_sip_nonce_lifetime_secs")]
    pub sip_nonce_lifetime_secs: u64,
    /// Failed authentications from one source address are counted over this many seconds.
    #[serde(default = "default_sip_auth_window_secs")]
    pub sip_auth_window_secs: u64,
    /// From this many failures in the window, a source may try once per
    /// `sip_auth_slow_interval_ms`; sooner attempts get 403.
    #[serde(default = "default_sip_auth_slow_after")]
    pub sip_auth_slow_after: u32,
    /// The least time between two attempts of a slowed source, in milliseconds.
    #[serde(default = "default_sip_auth_slow_interval_ms")]
    pub sip_auth_slow_interval_ms: u64,
    /// At this many failures in the window, a source is refused (403) for
    /// `sip_auth_block_secs`.
    #[serde(default = "default_sip_auth_block_after")]
    pub sip_auth_block_after: u32,
    /// How long a blocked source stays refused, in seconds.
    #[serde(default = "default_sip_auth_block_secs")]
    pub sip_auth_block_secs: u64,
    /// Where to serve Prometheus metrics over HTTP (optional).
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// Whether calls entering the farm through this node get their media relayed (by a
    /// `media_relay` member, when one is live).
    #[serde(default = "default_true")]
    pub relay_media: bool,
    /// UDP ports of relayed media (nodes with the `media_relay` role), `"LOW-HIGH"`: RTP on
    /// even ports, RTCP on the next; each relayed stream takes four.
    #[serde(default)]
    pub relay_ports: PortRange,
    /// A relay session with no packet and no SIP update for this long is freed (seconds).
    #[serde(default = "default_relay_idle_secs")]
    pub relay_idle_secs: u64,
    /// Most relay sessions (calls) at once; more are refused (the proxy tries the next relay).
    #[serde(default = "default_relay_max_sessions")]
    pub relay_max_sessions: usize,
    /// Certificate, key, CA and CRL.
    pub tls: TlsFiles,
    /// QUIC keep-alive, idle timeout and per-connection buffers.
    #[serde(default)]
    pub quic: Timing,
    /// Bounds on QUIC handshakes at the peer port: in progress at once, per source address,
    /// and when clients must first prove their address.
    #[serde(default)]
    pub quic_admission: onehop_overlay::admission::Admission,
    /// When the certificates and the revocation list are reported as nearing their end.
    #[serde(default)]
    pub cert_warnings: onehop_overlay::certwatch::CertWarnings,
    /// Bounds of the queues between this daemon and the event servers (received events, and
    /// publications per event server), in entries and in bytes.
    #[serde(default)]
    pub eventclient: QueueLimits,
}

fn default_lookup_port() -> u16 {
    LOOKUP_PORT
}
fn default_lookup_idle_secs() -> u64 {
    crate::lookup::DEFAULT_TIMEOUTS.idle.as_secs()
}
fn default_lookup_connections() -> usize {
    1024
}
fn default_sip_port() -> u16 {
    5060
}
fn default_sips_port() -> u16 {
    5061
}
fn default_peer_port() -> u16 {
    crate::peer::PEER_PORT
}
fn default_replicas() -> usize {
    2
}
fn default_store_max_entries() -> usize {
    4_000_000
}
fn default_store_max_bytes() -> usize {
    2 << 30
}
fn default_min_expires() -> u32 {
    60
}
fn default_max_expires() -> u32 {
    7200
}
fn default_sip_peer_timeout_ms() -> u64 {
    500
}
fn default_sip_peer_queue() -> usize {
    8192
}
fn default_sip_peer_queue_bytes() -> usize {
    8 << 20
}
fn default_peer_inflight_bytes() -> usize {
    crate::peer::DEFAULT_MAX_INFLIGHT_BYTES
}
fn default_sip_held_bytes() -> usize {
    crate::proxy::media::DEFAULT_HELD_BYTES
}
fn default_sip_inbound_queue_bytes() -> usize {
    16 << 20
}
fn default_sip_pending() -> usize {
    10_000
}
fn default_sip_max_connections() -> usize {
    transport::DEFAULT_MAX_CONNECTIONS
}
fn default_sip_max_connections_per_ip() -> usize {
    transport::DEFAULT_MAX_PER_IP
}
fn default_sip_tcp_first_message_secs() -> u64 {
    transport::DEFAULT_FIRST_MESSAGE.as_secs()
}
fn default_sip_tcp_idle_secs() -> u64 {
    transport::DEFAULT_IDLE.as_secs()
}
fn default_sip_tcp_write_timeout_ms() -> u64 {
    transport::DEFAULT_WRITE_TIMEOUT.as_millis() as u64
}
fn default_sip_tcp_connect_timeout_ms() -> u64 {
    transport::DEFAULT_CONNECT_TIMEOUT.as_millis() as u64
}
fn default_sip_tls_handshake_timeout_ms() -> u64 {
    transport::DEFAULT_HANDSHAKE_TIMEOUT.as_millis() as u64
}
fn default_sip_tcp_send_queue() -> usize {
    transport::DEFAULT_SEND_QUEUE
}
fn default_sip_tcp_send_queue_bytes() -> usize {
    transport::DEFAULT_SEND_QUEUE_BYTES
}
fn default_sip_max_message() -> usize {
    transport::DEFAULT_MAX_MESSAGE
}
fn default_sip_inbound_queue() -> usize {
    transport::DEFAULT_INBOUND_QUEUE
}
fn default_sip_nonce_lifetime_secs() -> u64 {
    onehop_sip::digest::DEFAULT_NONCE_LIFETIME_MS / 1000
}
fn default_sip_auth_algorithms() -> Vec<String> {
    vec!["MD5".into(), "SHA-256".into()]
}
fn default_sip_auth_window_secs() -> u64 {
    60
}
fn default_sip_auth_slow_after() -> u32 {
    5
}
fn default_sip_auth_slow_interval_ms() -> u64 {
    1000
}
fn default_sip_auth_block_after() -> u32 {
    20
}
fn default_sip_auth_block_secs() -> u64 {
    300
}

/// Who may use SIP (config key `sip_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SipAuth {
    /// Digest authentication and no open relay.
    #[default]
    Digest,
    /// Nobody challenged, anything relayed (closed test networks only).
    Off,
}

fn default_points() -> u32 {
    onehop_overlay::ring::DEFAULT_POINTS
}
fn default_true() -> bool {
    true
}
fn default_relay_idle_secs() -> u64 {
    60
}
fn default_relay_max_sessions() -> usize {
    2000
}

/// An inclusive range of ports, written `"LOW-HIGH"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange {
    /// The first port.
    pub low: u16,
    /// The last port.
    pub high: u16,
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange {
            low: 40000,
            high: 49999,
        }
    }
}

impl TryFrom<String> for PortRange {
    type Error = String;
    fn try_from(s: String) -> Result<PortRange, String> {
        let bad = || format!("`{s}` is not a port range such as \"40000-49999\"");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let low = a.trim().parse().map_err(|_| bad())?;
        let high = b.trim().parse().map_err(|_| bad())?;
        Ok(PortRange { low, high })
    }
}

impl From<PortRange> for String {
    fn from(r: PortRange) -> String {
        format!("{}-{}", r.low, r.high)
    }
}

/// The named flags of `onehop-node`, each a shorthand for `--set KEY=VALUE`.
pub const FLAGS: &[ConfigFlag] = &[
    ConfigFlag::IP,
    ConfigFlag::DOMAIN,
    ConfigFlag::EVENTSERVER,
    ConfigFlag {
        long: "sip-port",
        key: "sip_port",
        value_name: "PORT",
        help: "UDP and TCP port of SIP (config key `sip_port`)",
        value: FlagValue::Toml,
        example: "5060",
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

    fn threads(&self) -> usize {
        self.threads
    }
}

impl Config {
    /// The digest algorithms to challenge with, in order (validated by [`Config::validate`]).
    pub fn auth_algorithms(&self) -> Vec<onehop_sip::digest::Algorithm> {
        let mut out = Vec::new();
        for a in &self.sip_auth_algorithms {
            if let Ok(a) = onehop_sip::digest::Algorithm::parse(a) {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        out
    }

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
        match &self.domain {
            None if self.eventservers.is_empty() => {
                return Err(bad(
                    "eventservers",
                    "list at least one event server address, or set `domain` to find them \
                     through DNS (SRV _eventserver._udp.DOMAIN)",
                ));
            }
            Some(d) => {
                onehop_overlay::bootstrap::parse_domain(d).map_err(|p| bad("domain", &p))?;
            }
            None => {}
        }
        if self.points == 0 || self.points > 10_000 {
            return Err(bad("points", "must be between 1 and 10000"));
        }
        if self.threads > 1024 {
            return Err(bad("threads", "must be at most 1024 (0: one per CPU)"));
        }
        if self.sip_workers > 1024 {
            return Err(bad(
                "sip_workers",
                "must be at most 1024 (0: one per thread)",
            ));
        }
        if self.sip_tls_cert.is_some() != self.sip_tls_key.is_some() {
            return Err(bad(
                "sip_tls_cert",
                "set both sip_tls_cert and sip_tls_key, or neither",
            ));
        }
        if self.replicas == 0 || self.replicas > 5 {
            return Err(bad("replicas", "must be between 1 and 5"));
        }
        if self.store_max_entries < 100 {
            return Err(bad("store_max_entries", "must be at least 100"));
        }
        if self.store_max_bytes < 1 << 20 {
            return Err(bad("store_max_bytes", "must be at least 1048576 (1 MiB)"));
        }
        if self.min_expires > self.max_expires {
            return Err(bad("min_expires", "must not exceed max_expires"));
        }
        if self.sip_auth_algorithms.is_empty()
            || self
                .sip_auth_algorithms
                .iter()
                .any(|a| onehop_sip::digest::Algorithm::parse(a).is_err())
        {
            return Err(bad(
                "sip_auth_algorithms",
                "list \"MD5\", \"SHA-256\" or both, in the order to offer them",
            ));
        }
        if self.sip_nonce_lifetime_secs < 10 || self.sip_nonce_lifetime_secs > 86_400 {
            return Err(bad(
                "sip_nonce_lifetime_secs",
                "must be between 10 and 86400 seconds",
            ));
        }
        if self.sip_auth_slow_after == 0 || self.sip_auth_block_after < self.sip_auth_slow_after {
            return Err(bad(
                "sip_auth_block_after",
                "must be at least sip_auth_slow_after, which must be at least 1",
            ));
        }
        if self.sip_peer_queue == 0 {
            return Err(bad("sip_peer_queue", "must be at least 1"));
        }
        if self.lookup_idle_secs == 0 {
            return Err(bad("lookup_idle_secs", "must be at least 1"));
        }
        if self.lookup_connections == 0 {
            return Err(bad("lookup_connections", "must be at least 1"));
        }
        for (key, value) in [
            ("sip_max_connections", self.sip_max_connections as u64),
            ("sip_tcp_idle_secs", self.sip_tcp_idle_secs),
            (
                "sip_tcp_first_message_secs",
                self.sip_tcp_first_message_secs,
            ),
            ("sip_tcp_send_queue", self.sip_tcp_send_queue as u64),
            ("sip_inbound_queue", self.sip_inbound_queue as u64),
        ] {
            if value == 0 {
                return Err(bad(key, "must be at least 1"));
            }
        }
        for (key, ms) in [
            ("sip_tcp_write_timeout_ms", self.sip_tcp_write_timeout_ms),
            (
                "sip_tcp_connect_timeout_ms",
                self.sip_tcp_connect_timeout_ms,
            ),
            (
                "sip_tls_handshake_timeout_ms",
                self.sip_tls_handshake_timeout_ms,
            ),
        ] {
            if !(100..=600_000).contains(&ms) {
                return Err(bad(key, "must be between 100 and 600000 (ms)"));
            }
        }
        if !(1024..=1 << 20).contains(&self.sip_max_message) {
            return Err(bad("sip_max_message", "must be between 1024 and 1048576"));
        }
        for (key, bytes) in [
            ("sip_tcp_send_queue_bytes", self.sip_tcp_send_queue_bytes),
            ("sip_inbound_queue_bytes", self.sip_inbound_queue_bytes),
            ("sip_peer_queue_bytes", self.sip_peer_queue_bytes),
            ("sip_held_bytes", self.sip_held_bytes),
        ] {
            if bytes < self.sip_max_message {
                return Err(bad(key, "must be at least sip_max_message"));
            }
        }
        if self.peer_inflight_bytes < onehop_overlay::wire::MAX_FRAME {
            return Err(bad(
                "peer_inflight_bytes",
                "must be at least 1048576 (one request at the frame cap)",
            ));
        }
        let r = self.relay_ports;
        if r.low < 1024 || r.high < r.low || r.high - r.low < 3 {
            return Err(bad(
                "relay_ports",
                "must be LOW-HIGH with 1024 <= LOW and at least 4 ports (one stream)",
            ));
        }
        if self.relay_idle_secs == 0 || self.relay_idle_secs > 86_400 {
            return Err(bad("relay_idle_secs", "must be between 1 and 86400"));
        }
        if self.relay_max_sessions == 0 {
            return Err(bad("relay_max_sessions", "must be at least 1"));
        }
        if let Some((key, problem)) = self.quic.problem() {
            return Err(bad(key, &problem));
        }
        if let Some((key, problem)) = self.eventclient.problem() {
            return Err(bad(&format!("eventclient.{key}"), &problem));
        }
        if let Err((key, problem)) = self.quic_admission.check() {
            return Err(bad(&key, &problem));
        }
        if let Err((key, problem)) = self.cert_warnings.check() {
            return Err(bad(&key, &problem));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        toml::from_str(&format!(
            "ip = \"127.0.0.1\"\n{text}\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n"
        ))
        .unwrap()
    }

    #[test]
    fn event_servers_or_a_domain() {
        let p = Path::new("node.toml");
        let err = parse("").validate(p).unwrap_err().to_string();
        assert!(
            err.contains("eventservers") && err.contains("domain"),
            "{err}"
        );
        parse("eventservers = [\"127.0.0.1:8000\"]")
            .validate(p)
            .unwrap();
        let dns = parse("domain = \"example.test\"\ndns_servers = [\"127.0.0.1:53\"]");
        dns.validate(p).unwrap();
        assert!(dns.eventservers.is_empty());
        let err = parse("domain = \"\"").validate(p).unwrap_err().to_string();
        assert!(err.contains("domain"), "{err}");
    }
    #[test]
    fn sip_transport_keys() {
        let p = Path::new("node.toml");
        let es = "eventservers = [\"127.0.0.1:8000\"]\n";
        let c = parse(es);
        c.validate(p).unwrap();
        assert_eq!(
            (
                c.sip_max_connections,
                c.sip_tcp_idle_secs,
                c.sip_tcp_write_timeout_ms
            ),
            (10_000, 3600, 10_000)
        );
        assert_eq!(
            (c.sip_max_connections_per_ip, c.sip_tcp_first_message_secs),
            (256, 30)
        );
        assert_eq!(
            (
                c.sip_tcp_send_queue,
                c.sip_tcp_send_queue_bytes,
                c.sip_max_message
            ),
            (256, 1 << 20, 65_535)
        );
        let c = parse(&format!(
            "{es}sip_tcp_idle_secs = 1\nsip_tcp_write_timeout_ms = 500\nsip_max_connections = 12000"
        ));
        c.validate(p).unwrap();
        // 0: no limit per address.
        let c = parse(&format!("{es}sip_max_connections_per_ip = 0"));
        c.validate(p).unwrap();
        assert_eq!(c.sip_max_connections_per_ip, 0);
        for bad in [
            "sip_tcp_idle_secs = 0",
            "sip_tcp_write_timeout_ms = 10",
            "sip_max_message = 10",
            "sip_tcp_send_queue_bytes = 1000",
            "sip_max_connections = 0",
            "sip_tcp_first_message_secs = 0",
        ] {
            assert_refused(es, bad);
        }
    }
    /// `ASSIGNMENT` (one `key = value` line) after `es` fails validation, naming the key.
    fn assert_refused(es: &str, assignment: &str) {
        let key = assignment.split(' ').next().unwrap();
        let err = parse(&format!("{es}{assignment}"))
            .validate(Path::new("node.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{assignment}: {err}");
    }
    #[test]
    fn sip_peer_queue_key() {
        let p = Path::new("node.toml");
        let es = "eventservers = [\"127.0.0.1:8000\"]\n";
        assert_eq!(parse(es).sip_peer_queue, 8192);
        let c = parse(&format!("{es}sip_peer_queue = 4"));
        c.validate(p).unwrap();
        assert_eq!(c.sip_peer_queue, 4);
        let err = parse(&format!("{es}sip_peer_queue = 0"))
            .validate(p)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sip_peer_queue"), "{err}");
    }
    #[test]
    fn threads_key() {
        let p = Path::new("node.toml");
        let es = "eventservers = [\"127.0.0.1:8000\"]\n";
        let c = parse(es);
        assert_eq!((c.threads, c.sip_workers, c.threads()), (0, 0, 0));
        let c = parse(&format!("{es}threads = 2"));
        c.validate(p).unwrap();
        assert_eq!(c.threads(), 2);
        assert_refused(es, "threads = 5000");
        assert_refused(es, "sip_workers = 5000");
    }
    #[test]
    fn relay_keys() {
        let p = Path::new("node.toml");
        let es = "eventservers = [\"127.0.0.1:8000\"]\n";
        let c = parse(es);
        assert_eq!(c.relay_ports, PortRange::default());
        assert!(c.relay_media);
        assert_eq!((c.relay_idle_secs, c.relay_max_sessions), (60, 2000));
        let c = parse(&format!(
            "{es}relay_ports = \"30000-30099\"\nrelay_media = false\nrelay_idle_secs = 30"
        ));
        c.validate(p).unwrap();
        assert_eq!((c.relay_ports.low, c.relay_ports.high), (30000, 30099));
        assert!(!c.relay_media);
        for bad in ["\"100-200\"", "\"5000-5001\"", "\"6000-5000\""] {
            let err = parse(&format!("{es}relay_ports = {bad}"))
                .validate(p)
                .unwrap_err()
                .to_string();
            assert!(err.contains("relay_ports"), "{err}");
        }
        let text = format!(
            "ip = \"127.0.0.1\"\n{es}relay_ports = \"x\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n"
        );
        assert!(toml::from_str::<Config>(&text).is_err());
    }
}
