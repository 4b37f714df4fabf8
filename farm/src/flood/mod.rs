//! Floods from many source addresses, and probes that measure legitimate traffic meanwhile:
//! what the integration tests and `bench/floods.sh` (through `onehop-farm flood`) load a farm
//! with.
//!
//! A flood binds one socket (or one QUIC endpoint) per source address, so the target sees
//! traffic from every one of them; on Linux every address of 127.0.0.0/8 is local, so
//! `127.77.0.1` and up serve as sources on one machine. A flood never sends anywhere but its
//! one target address.
//!
//! | kind | what each source sends |
//! |---|---|
//! | `sip-udp` | datagrams: garbage, truncated requests, OPTIONS, REGISTERs and INVITEs with fresh Call-IDs |
//! | `sip-tcp` | connections: pipelined OPTIONS left unread, garbage, half a header held open (slowloris), a request read |
//! | `dns` | queries: random names in the zone, names outside it, SRV and NAPTR, garbage |
//! | `lookup` | connections to the lookup interface: 100 pipelined lookups, garbage and an endless line, half a line held open |
//! | `quic` | QUIC handshakes presenting a certificate the farm does not accept (another CA's) or none |
//!
//! [`probe()`] measures the legitimate side at the same time: SIP OPTIONS over UDP (with RFC 3261
//! retransmissions) or each over a new TCP connection, DNS queries (retried as a stub
//! resolver does), lookups each on a new connection, or event-server sessions opened with a
//! good certificate; each attempt succeeds when answered within its deadline.

pub mod gen;
pub mod probe;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use probe::{probe, ProbeTally};

/// What a flood sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// SIP over UDP.
    SipUdp,
    /// SIP over TCP.
    SipTcp,
    /// DNS over UDP.
    Dns,
    /// The lookup interface (TCP 9500).
    Lookup,
    /// QUIC handshakes.
    Quic,
}

/// The TLS side of a QUIC flood or probe.
#[derive(Debug, Clone)]
pub struct QuicClient {
    /// The CA that signs the server's certificate (the farm's: the server is checked, so
    /// that the handshake goes all the way to the client certificate).
    pub ca: PathBuf,
    /// The certificate and key presented; `None` presents none.
    pub cert: Option<(PathBuf, PathBuf)>,
}

/// One flood.
#[derive(Debug, Clone)]
pub struct Flood {
    /// What it sends.
    pub kind: Kind,
    /// Where to.
    pub target: SocketAddr,
    /// The source addresses, one socket or endpoint each.
    pub sources: Vec<IpAddr>,
    /// How long it lasts.
    pub duration: Duration,
    /// Datagrams, connections or handshakes per second in all; `None`: as fast as it goes.
    pub rate: Option<u64>,
    /// Connections or handshakes in flight at once (TCP and QUIC); UDP floods use one
    /// sending thread per 64 sources, at most 4.
    pub concurrency: usize,
    /// The SIP and DNS domain the messages name.
    pub domain: String,
    /// For QUIC floods.
    pub quic: Option<QuicClient>,
}

/// What a flood did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Datagrams, messages or handshakes sent.
    pub sent: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// TCP connections opened, or QUIC handshakes that completed on our side.
    pub connected: u64,
    /// Connections refused (TCP: reset or refused; QUIC: refused before a handshake).
    pub refused: u64,
    /// QUIC handshakes that failed (the server refused the certificate).
    pub failed: u64,
    /// Anything else: timeouts, full socket buffers.
    pub errors: u64,
}

/// Counters shared by a flood's tasks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub sent: AtomicU64,
    pub bytes: AtomicU64,
    pub connected: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
    pub errors: AtomicU64,
}

impl Counters {
    pub(crate) fn tally(&self) -> Tally {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Tally {
            sent: g(&self.sent),
            bytes: g(&self.bytes),
            connected: g(&self.connected),
            refused: g(&self.refused),
            failed: g(&self.failed),
            errors: g(&self.errors),
        }
    }

    pub(crate) fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

/// Spreads `rate` units a second evenly from the start: each unit takes the next slot.
#[derive(Debug)]
pub(crate) struct Pacer {
    start: Instant,
    every: Option<Duration>,
    next: AtomicU64,
}

impl Pacer {
    pub(crate) fn new(rate: Option<u64>) -> Pacer {
        Pacer {
            start: Instant::now(),
            every: rate
                .filter(|r| *r > 0)
                .map(|r| Duration::from_secs_f64(1.0 / r as f64)),
            next: AtomicU64::new(0),
        }
    }

    /// When the next unit may go (now when unpaced).
    pub(crate) fn slot(&self) -> Option<Instant> {
        let every = self.every?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.start + every.mul_f64(n as f64))
    }
}

/// Parses `FIRST/COUNT` (COUNT consecutive IPv4 addresses from FIRST) or one address.
pub fn parse_sources(spec: &str) -> Result<Vec<IpAddr>, String> {
    let (first, count) = match spec.split_once('/') {
        Some((a, n)) => (
            a,
            n.parse::<u32>()
                .map_err(|_| format!("{spec}: COUNT after / must be a number"))?,
        ),
        None => (spec, 1),
    };
    let first: Ipv4Addr = first
        .parse()
        .map_err(|_| format!("{spec}: not an IPv4 address"))?;
    if count == 0 || count > 65_536 {
        return Err(format!("{spec}: COUNT must be 1 to 65536"));
    }
    let base = u32::from(first);
    if base.checked_add(count - 1).is_none() {
        return Err(format!("{spec}: runs past 255.255.255.255"));
    }
    Ok((0..count)
        .map(|i| IpAddr::V4(Ipv4Addr::from(base + i)))
        .collect())
}

/// Runs `flood` to its end; returns what it did.
pub async fn run(flood: &Flood) -> Result<Tally, String> {
    if flood.sources.is_empty() {
        return Err("a flood needs at least one source address".into());
    }
    let counters = Arc::new(Counters::default());
    match flood.kind {
        Kind::SipUdp | Kind::Dns => gen::datagrams(flood, counters.clone()).await?,
        Kind::SipTcp | Kind::Lookup => gen::streams(flood, counters.clone()).await?,
        Kind::Quic => gen::handshakes(flood, counters.clone()).await?,
    }
    Ok(counters.tally())
}

/// A figure in KiB of a process's `/proc/PID/status` (`field` is `VmRSS`, `VmHWM`, ...);
/// `None` when it cannot be read.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resident memory of a process in KiB (0 when it cannot be read).
pub fn vm_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS").unwrap_or(0)
}

/// The largest resident memory of `pid` seen while `f` runs (sampled every 50 ms), and `f`'s
/// result.
pub async fn watch_rss<F: std::future::Future>(pid: u32, f: F) -> (u64, F::Output) {
    let peak = Arc::new(AtomicU64::new(vm_rss_kib(pid)));
    let p = peak.clone();
    let sampler = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            p.fetch_max(vm_rss_kib(pid), Ordering::Relaxed);
        }
    });
    let out = f.await;
    sampler.abort();
    peak.fetch_max(vm_rss_kib(pid), Ordering::Relaxed);
    (peak.load(Ordering::Relaxed), out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_ranges_of_addresses() {
        let s = parse_sources("127.77.0.254/4").unwrap();
        assert_eq!(
            s,
            ["127.77.0.254", "127.77.0.255", "127.77.1.0", "127.77.1.1"]
                .map(|a| a.parse::<IpAddr>().unwrap())
        );
        assert_eq!(parse_sources("127.0.0.9").unwrap().len(), 1);
        assert!(parse_sources("127.0.0.9/0").is_err());
        assert!(parse_sources("255.255.255.255/2").is_err());
        assert!(parse_sources("nowhere/3").is_err());
    }

    #[test]
    fn a_pacer_spreads_units_evenly() {
        let p = Pacer::new(Some(100));
        let a = p.slot().unwrap();
        let b = p.slot().unwrap();
        assert_eq!(b - a, Duration::from_millis(10));
        assert!(Pacer::new(None).slot().is_none());
    }
}
