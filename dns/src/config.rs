//! The DNS server's configuration (TOML).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use onehop_overlay::client::QueueLimits;
use onehop_overlay::daemon::{ConfigError, ConfigFlag, DaemonConfig, FlagValue};
use onehop_overlay::net::Timing;
use onehop_overlay::tls::TlsFiles;
use serde::{Deserialize, Serialize};

/// The well-known DNS port.
pub const DNS_PORT: u16 = 53;
/// The ENUM suffix of the public E.164 tree (RFC 6116), served unless configured otherwise.
pub const DEFAULT_ENUM_SUFFIX: &str = "e164.arpa";
/// Most ENUM suffixes one server answers for.
pub const MAX_ENUM_SUFFIXES: usize = 16;

/// `onehop-dns` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The server's own IP address: the DNS sockets (UDP and TCP) and the QUIC endpoint bind it.
    pub ip: IpAddr,
    /// UDP and TCP port DNS is answered on.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The SIP domain this server is authoritative for (the zone apex), e.g. `example.test`.
    pub domain: String,
    /// The event servers' QUIC addresses (port 8000).
    pub eventservers: Vec<SocketAddr>,
    /// TTL in seconds of every record; also the negative-caching TTL (SOA minimum). Keep it
    /// short: it bounds how long a resolver may keep sending clients to a member that left.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// Most SRV records in one answer (K): each answer is a random slice of at most K of the
    /// live proxies, so load spreads with no load balancer.
    #[serde(default = "default_srv_slice")]
    pub srv_slice: usize,
    /// The SIP transports published through NAPTR and SRV.
    #[serde(default)]
    pub transports: Transports,
    /// Port in SIP SRV records (UDP and TCP) for a proxy that announces no `sip` endpoint.
    #[serde(default = "default_sip_port")]
    pub sip_port: u16,
    /// Port in `_sips._tcp` SRV records for a proxy that announces no `sips` endpoint.
    #[serde(default = "default_sips_port")]
    pub sips_port: u16,
    /// Largest UDP response in bytes, advertised in our EDNS OPT record. A client's smaller
    /// EDNS size (or 512 without EDNS) is honoured; 1232 avoids IP fragmentation.
    #[serde(default = "default_max_udp_payload")]
    pub max_udp_payload: u16,
    /// Most DNS-over-TCP connections served at once; more are closed at accept.
    #[serde(default = "default_tcp_connections")]
    pub tcp_connections: usize,
    /// Most DNS-over-TCP connections at once from one client address (an IPv6 address counts
    /// by its /64); more are closed at accept. 0 (the default): no limit per address.
    #[serde(default = "default_tcp_connections_per_ip")]
    pub tcp_connections_per_ip: usize,
    /// A DNS-over-TCP connection idle for this long (milliseconds) is closed.
    #[serde(default = "default_tcp_idle_timeout_ms")]
    pub tcp_idle_timeout_ms: u64,
    /// ENUM (RFC 6116): the suffixes under which every routed E.164 number of the farm is
    /// answered as a NAPTR `E2U+sip` record naming its SIP URI (`+15550100` ->
    /// `0.0.1.0.5.5.5.1.e164.arpa`). Several may be given (a private tree beside the public
    /// one, say); an empty list turns ENUM off. At most 16, none at or under another, none
    /// the domain or above it.
    #[serde(default = "default_enum_suffixes")]
    pub enum_suffixes: Vec<String>,
    /// Where to serve Prometheus metrics over HTTP (optional).
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// Certificate (of kind `dns`), key, CA and CRL.
    pub tls: TlsFiles,
    /// QUIC keep-alive, idle timeout and per-connection buffers.
    #[serde(default)]
    pub quic: Timing,
    /// When the certificates and the revocation list are reported as nearing their end.
    #[serde(default)]
    pub cert_warnings: onehop_overlay::certwatch::CertWarnings,
    /// Bounds of the queues between this daemon and the event servers (received events, and
    /// publications per event server), in entries and in bytes.
    #[serde(default)]
    pub eventclient: QueueLimits,
}

/// Which SIP transports are published (RFC 3263 NAPTR services and SRV names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Transports {
    /// SIP over UDP: NAPTR `SIP+D2U` -> `_sip._udp`.
    pub udp: bool,
    /// SIP over TCP: NAPTR `SIP+D2T` -> `_sip._tcp`.
    pub tcp: bool,
    /// SIP over TLS: NAPTR `SIPS+D2T` -> `_sips._tcp`. Off unless set: publish it only when
    /// the proxies really serve TLS.
    pub tls: bool,
}

impl Default for Transports {
    fn default() -> Self {
        Transports {
            udp: true,
            tcp: true,
            tls: false,
        }
    }
}

fn default_enum_suffixes() -> Vec<String> {
    vec![DEFAULT_ENUM_SUFFIX.to_string()]
}
fn default_port() -> u16 {
    DNS_PORT
}
fn default_ttl() -> u32 {
    5
}
fn default_srv_slice() -> usize {
    4
}
fn default_sip_port() -> u16 {
    5060
}
fn default_sips_port() -> u16 {
    5061
}
fn default_max_udp_payload() -> u16 {
    1232
}
fn default_tcp_connections() -> usize {
    256
}
fn default_tcp_connections_per_ip() -> usize {
    crate::server::DEFAULT_TCP_PER_ADDRESS
}
fn default_tcp_idle_timeout_ms() -> u64 {
    5000
}

/// Parses a domain as an absolute DNS name (a trailing dot is optional).
pub use onehop_overlay::bootstrap::parse_domain;

/// Checks the ENUM suffixes of a server whose domain is `domain`: each a domain name (a
/// trailing dot optional), at most [`MAX_ENUM_SUFFIXES`], no two the same or one under the
/// other (a name under both would be two numbers at once), none the domain or above it (the
/// domain's names would be read as numbers). Returns them parsed, lowercase, in order; or
/// what is wrong.
pub fn parse_enum_suffixes(
    domain: &hickory_proto::rr::Name,
    suffixes: &[String],
) -> Result<Vec<hickory_proto::rr::Name>, String> {
    if suffixes.len() > MAX_ENUM_SUFFIXES {
        return Err(format!(
            "{} suffixes given, at most {MAX_ENUM_SUFFIXES} are allowed",
            suffixes.len()
        ));
    }
    let mut out: Vec<hickory_proto::rr::Name> = Vec::with_capacity(suffixes.len());
    for (i, s) in suffixes.iter().enumerate() {
        let name = parse_domain(s).map_err(|p| format!("{s:?}: {p}"))?;
        if name.zone_of(domain) {
            return Err(format!(
                "{s:?}: the domain {domain} is at or under it; an ENUM suffix needs a tree of its own"
            ));
        }
        if let Some((j, other)) = out
            .iter()
            .enumerate()
            .find(|(_, o)| o.zone_of(&name) || name.zone_of(o))
        {
            let how = if *other == name {
                "is listed twice"
            } else {
                "and another suffix are one under the other"
            };
            return Err(format!(
                "{s:?} (entry {}) {how} ({:?}, entry {}): the names under both would be two numbers at once",
                i + 1,
                suffixes[j],
                j + 1
            ));
        }
        out.push(name);
    }
    Ok(out)
}

/// The named flags of `onehop-dns`, each a shorthand for `--set KEY=VALUE`.
pub const FLAGS: &[ConfigFlag] = &[
    ConfigFlag::IP,
    ConfigFlag {
        long: "port",
        key: "port",
        value_name: "PORT",
        help: "UDP and TCP port DNS is answered on (config key `port`)",
        value: FlagValue::Toml,
        example: "5353",
    },
    ConfigFlag::DOMAIN,
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
        let bad = |key: &str, problem: &str| ConfigError::Invalid {
            path: path.display().to_string(),
            key: key.into(),
            problem: problem.into(),
        };
        if self.port == 0 {
            return Err(bad("port", "must be a fixed port (53 unless testing)"));
        }
        let domain = parse_domain(&self.domain).map_err(|p| bad("domain", &p))?;
        parse_enum_suffixes(&domain, &self.enum_suffixes).map_err(|p| bad("enum_suffixes", &p))?;
        if self.eventservers.is_empty() {
            return Err(bad(
                "eventservers",
                "list at least one event server address",
            ));
        }
        if self.ttl > 86_400 {
            return Err(bad("ttl", "must be at most 86400 seconds (keep it short)"));
        }
        if self.srv_slice == 0 || self.srv_slice > 64 {
            return Err(bad("srv_slice", "must be between 1 and 64"));
        }
        if !(self.transports.udp || self.transports.tcp || self.transports.tls) {
            return Err(bad("transports", "offer at least one of udp, tcp, tls"));
        }
        if self.sip_port == 0 {
            return Err(bad("sip_port", "must not be 0"));
        }
        if self.sips_port == 0 {
            return Err(bad("sips_port", "must not be 0"));
        }
        if !(512..=4096).contains(&self.max_udp_payload) {
            return Err(bad("max_udp_payload", "must be between 512 and 4096"));
        }
        if self.tcp_connections == 0 {
            return Err(bad("tcp_connections", "must be at least 1"));
        }
        if self.tcp_idle_timeout_ms < 100 {
            return Err(bad("tcp_idle_timeout_ms", "must be at least 100"));
        }
        if let Some((key, problem)) = self.quic.problem() {
            return Err(bad(key, &problem));
        }
        if let Some((key, problem)) = self.eventclient.problem() {
            return Err(bad(&format!("eventclient.{key}"), &problem));
        }
        if let Err((key, problem)) = self.cert_warnings.check() {
            return Err(bad(&key, &problem));
        }
        Ok(())
    }
}
