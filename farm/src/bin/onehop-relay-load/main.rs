//! `onehop-relay-load`: the load generator of `bench/relay.sh` (benchmarks only, loopback).
//!
//! For each step (a number of concurrent calls) it creates the calls' sessions on a relay,
//! sends RTP-sized packets (172 bytes, `--pps` per direction per call) from every caller and
//! callee through it, receives them on the other side, and prints what it offered and
//! received, the loss, and the latency the relay added (receive minus send time, on one
//! clock: the relay's work plus loopback) at p50, p99, p99.9 and max. Then it deletes the
//! sessions and goes on to the next step.
//!
//! Two relays are driven, the same way but for the control protocol:
//! - `--relay onehop`: a `media_relay` node, asked as a proxy asks it: `Allocate` and `Update`
//!   on the node's peer port (`Service::Relay`, QUIC with mutual TLS), with a `node`
//!   certificate of the farm's CA (`--cert`, `--key`). No other way in exists.
//! - `--relay rtpengine`: rtpengine, asked with its ng protocol (`offer`, `answer`, `delete`,
//!   bencoded over UDP).
//!
//! Output: a human-readable line per step on stderr, a JSON object per step on stdout.

mod bencode;
mod control;
mod traffic;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use onehop_node::peer::{PeerAddr, PEER_PORT};
use onehop_overlay::farmfile::FarmFile;
use onehop_overlay::tls::TlsFiles;

use control::{Legs, Relay};
use traffic::{Outcome, Pace, Sockets};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Which {
    Onehop,
    Rtpengine,
}

/// Load a media relay with calls and measure what it relays and the latency it adds.
#[derive(Debug, Parser)]
#[command(name = "onehop-relay-load", version)]
struct Cli {
    /// The relay under load.
    #[arg(long, value_enum)]
    relay: Which,
    /// onehop: the farm directory (its farm.json and CA).
    #[arg(long, value_name = "DIR", required_if_eq("relay", "onehop"))]
    farm: Option<PathBuf>,
    /// onehop: the media_relay node to load.
    #[arg(long, default_value = "node1")]
    node: String,
    /// onehop: a `node` certificate of the farm's CA, presented to the node.
    #[arg(long, value_name = "FILE", required_if_eq("relay", "onehop"))]
    cert: Option<PathBuf>,
    /// onehop: its key.
    #[arg(long, value_name = "FILE", required_if_eq("relay", "onehop"))]
    key: Option<PathBuf>,
    /// rtpengine: its ng control address (`--listen-ng`).
    #[arg(long, value_name = "ADDR:PORT", required_if_eq("relay", "rtpengine"))]
    ng: Option<SocketAddr>,
    /// Concurrent calls of each step, in order.
    #[arg(long, value_delimiter = ',', default_value = "100,500,1000,2000,4000")]
    calls: Vec<usize>,
    /// Packets per second per direction per call.
    #[arg(long, default_value_t = 50)]
    pps: u32,
    /// Seconds measured per step.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Seconds of traffic before the measured window (not counted).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Stop after a step that lost more than this share of its packets (percent).
    #[arg(long, default_value_t = 5.0)]
    stop_loss: f64,
    /// The callers' address (loopback).
    #[arg(long, default_value = "127.0.72.1")]
    caller_ip: IpAddr,
    /// The callees' address (loopback).
    #[arg(long, default_value = "127.0.72.2")]
    callee_ip: IpAddr,
    /// The address control requests come from.
    #[arg(long, default_value = "127.0.72.3")]
    control_ip: IpAddr,
    /// Sockets per side the calls are spread over.
    #[arg(long, default_value_t = 8)]
    sockets: usize,
    /// The relay's process, whose CPU time is reported per step.
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
}

/// One step's line of output.
#[derive(Debug, serde::Serialize)]
struct Row {
    relay: &'static str,
    calls: usize,
    /// Packets per second asked for (calls x 2 directions x pps).
    target_pps: u64,
    offered_pps: f64,
    received_pps: f64,
    lost: u64,
    loss_pct: f64,
    /// CPU of the relay's process during the window, percent of one core.
    relay_cpu_pct: Option<f64>,
    /// CPU of this generator during the window, percent of one core.
    load_cpu_pct: Option<f64>,
    /// Seconds to create the step's sessions.
    setup_secs: f64,
    #[serde(flatten)]
    outcome: Outcome,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("onehop-relay-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    for ip in [cli.caller_ip, cli.callee_ip, cli.control_ip] {
        if !ip.is_loopback() {
            bail!("{ip} is not a loopback address: this generator loads loopback only");
        }
    }
    if cli.sockets == 0 || cli.pps == 0 || cli.secs == 0 {
        bail!("--sockets, --pps and --secs must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (relay, relay_ip) = rt.block_on(relay_of(&cli))?;
    let socks = Sockets::bind(cli.sockets, cli.caller_ip, cli.callee_ip)?;
    let clock = traffic::Clock::new();
    let name = match cli.relay {
        Which::Onehop => "onehop",
        Which::Rtpengine => "rtpengine",
    };
    for (step, &calls) in cli.calls.iter().enumerate() {
        let t = Instant::now();
        let legs = rt
            .block_on(create(&relay, &socks, step, calls))
            .with_context(|| format!("creating {calls} sessions"))?;
        let setup_secs = t.elapsed().as_secs_f64();
        let pace = Pace {
            pps: cli.pps,
            warmup: Duration::from_secs(cli.warmup),
            measure: Duration::from_secs(cli.secs),
            drain: Duration::from_millis(500),
        };
        let mut cpu = (None, None);
        let outcome = traffic::run(
            &socks,
            relay_ip,
            &legs,
            step as u32,
            pace,
            clock,
            |from, to| {
                cpu = sample_cpu(cli.pid, from, to);
            },
        )?;
        rt.block_on(delete(&relay, step, calls))
            .with_context(|| format!("deleting {calls} sessions"))?;
        let target_pps = calls as u64 * 2 * u64::from(cli.pps);
        let lost = outcome.sent.saturating_sub(outcome.received);
        let per_sec = |n: u64| {
            if outcome.secs > 0.0 {
                n as f64 / outcome.secs
            } else {
                0.0
            }
        };
        let row = Row {
            relay: name,
            calls,
            target_pps,
            offered_pps: per_sec(outcome.sent),
            received_pps: per_sec(outcome.received),
            lost,
            loss_pct: if outcome.sent > 0 {
                100.0 * lost as f64 / outcome.sent as f64
            } else {
                0.0
            },
            relay_cpu_pct: cpu.0,
            load_cpu_pct: cpu.1,
            setup_secs,
            outcome,
        };
        eprintln!(
            "{name:>9} {calls:>6} calls: offered {:>9.0} pps, received {:>9.0} pps, lost {} ({:.3}%), latency p50 {} us p99 {} us max {:.0} us, relay cpu {}%, drops at relay {} at generator {}",
            row.offered_pps,
            row.received_pps,
            row.lost,
            row.loss_pct,
            row.outcome.p50_us,
            row.outcome.p99_us,
            row.outcome.max_us,
            row.relay_cpu_pct.map_or("?".into(), |c| format!("{c:.0}")),
            row.outcome.relay_drops,
            row.outcome.load_drops,
        );
        println!("{}", serde_json::to_string(&row)?);
        if row.loss_pct > cli.stop_loss {
            eprintln!(
                "onehop-relay-load: stopping: more than {}% lost",
                cli.stop_loss
            );
            break;
        }
    }
    Ok(())
}

/// The relay to load and its address (whose sockets' drops are counted).
async fn relay_of(cli: &Cli) -> anyhow::Result<(Relay, IpAddr)> {
    match cli.relay {
        Which::Onehop => {
            let dir = cli.farm.as_ref().expect("required by clap");
            let farm = FarmFile::load(dir).with_context(|| format!("{}", dir.display()))?;
            let node = farm
                .member(&cli.node)
                .with_context(|| format!("no member {} in the farm", cli.node))?;
            let tls = TlsFiles {
                ca: farm.ca.clone(),
                cert: cli.cert.clone().expect("required by clap"),
                key: cli.key.clone().expect("required by clap"),
                crl: None,
            };
            let addr = PeerAddr {
                name: node.name.clone(),
                addr: SocketAddr::new(node.ip, PEER_PORT),
            };
            Ok((Relay::onehop(&tls, cli.control_ip, addr)?, node.ip))
        }
        Which::Rtpengine => {
            let ng = cli.ng.expect("required by clap");
            Ok((Relay::rtpengine(cli.control_ip, ng).await?, ng.ip()))
        }
    }
}

fn call_id(step: usize, i: usize) -> String {
    format!("load-{}-{step}-{i}", std::process::id())
}

async fn create(
    relay: &Relay,
    socks: &Sockets,
    step: usize,
    calls: usize,
) -> anyhow::Result<Vec<Legs>> {
    let mut legs = Vec::with_capacity(calls);
    for i in 0..calls {
        let (caller, callee) = socks.parties(i)?;
        legs.push(relay.create(&call_id(step, i), caller, callee).await?);
    }
    Ok(legs)
}

async fn delete(relay: &Relay, step: usize, calls: usize) -> anyhow::Result<()> {
    for i in 0..calls {
        relay.delete(&call_id(step, i)).await?;
    }
    Ok(())
}

/// CPU seconds (user + system) of a process so far, from `/proc/PID/stat`.
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, closed by the last ')').
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Waits for the window `from..to` and returns the CPU use (percent of one core) of `pid` and
/// of this process during it.
fn sample_cpu(pid: Option<u32>, from: Instant, to: Instant) -> (Option<f64>, Option<f64>) {
    let pid = pid.map(|p| p.to_string());
    let wait = |t: Instant| std::thread::sleep(t.saturating_duration_since(Instant::now()));
    wait(from);
    let a = (pid.as_deref().and_then(cpu_secs), cpu_secs("self"));
    wait(to);
    let b = (pid.as_deref().and_then(cpu_secs), cpu_secs("self"));
    let secs = to.duration_since(from).as_secs_f64();
    let pct = |x: Option<f64>, y: Option<f64>| Some(100.0 * (y? - x?) / secs);
    (pct(a.0, b.0), pct(a.1, b.1))
}
