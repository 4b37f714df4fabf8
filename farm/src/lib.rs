//! onehop-farm: a whole farm on one machine, for demos, tests and benchmarks.
//!
//! # Layout of a farm directory
//! ```text
//! DIR/ca/          the CA (ca.pem, ca.key, crl.pem, index.json), kept across runs
//! DIR/certs/       one certificate and key per member, plus monitor and admin
//! DIR/config/      one TOML configuration per member (written at every `up`)
//! DIR/data/        the managers' Raft state (kept across runs)
//! DIR/logs/        one log per member
//! DIR/bin/         onehop-<daemon> links to this program (it runs every daemon, by name)
//! DIR/farm.json    what was started: the contract scripts rely on
//! ```
//!
//! Every member binds its own loopback address, from `--base-ip` up in the order event
//! servers, managers, DNS servers, nodes, with the standard ports.

pub mod flood;
pub mod plan;
pub mod process;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use onehop_overlay::farmfile::{FarmFile, FarmMember};
use onehop_overlay::status::Kind;
use onehop_overlay::tls::TlsFiles;

pub use plan::{plan, Planned};

/// Command line of `onehop-farm`.
#[derive(Debug, Parser)]
#[command(
    name = "onehop-farm",
    version,
    about = "Run a whole onehop farm on this machine: event servers, managers, DNS and nodes, each on its own loopback address.",
    long_about = "Run a whole onehop farm on this machine: event servers, managers, DNS and nodes, each a separate process on its own loopback address with the standard ports (event server 8000/udp, manager Raft 8001/udp, DNS 53, SIP 5060, lookup 9500/tcp, metrics 9100/tcp).\n\n`up` creates a CA and certificates in DIR (kept if they exist), starts every daemon, waits until the network status shows them all, writes DIR/farm.json and prints where to point a SIP client, dig and the monitor. In the foreground it supervises the daemons and Ctrl-C stops them all; with --detach it returns once the farm is ready, and `down` stops it."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a farm.
    Up(UpArgs),
    /// Stop a farm started with --detach (or one whose supervisor was killed).
    Down {
        /// The farm directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Flood one member from many source addresses and measure legitimate traffic meanwhile.
    ///
    /// For resilience tests on loopback (bench/floods.sh): binds one socket per source
    /// address (127.0.0.0/8 is all local) and sends only to --target. Prints one JSON object:
    /// the flood's tally, the probe's attempts, successes and latencies, and with --pid the
    /// process's resident memory before, at its peak and after.
    Flood(FloodArgs),
}

/// Options of `onehop-farm flood`.
#[derive(Debug, clap::Args)]
pub struct FloodArgs {
    /// What to send.
    #[arg(long, value_enum)]
    pub kind: flood::Kind,
    /// Where to: the member's address and port (SIP 5060, DNS 53, lookup 9500, QUIC 8000).
    #[arg(long, value_name = "ADDR:PORT")]
    pub target: SocketAddr,
    /// Source addresses: FIRST/COUNT, e.g. 127.77.0.1/200.
    #[arg(long, value_name = "FIRST/COUNT", default_value = "127.77.0.1/100")]
    pub sources: String,
    /// Seconds the flood lasts.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub secs: u64,
    /// Datagrams, connections or handshakes per second in all (default: as fast as it goes).
    #[arg(long, value_name = "N")]
    pub rate: Option<u64>,
    /// Connections or handshakes in flight at once (TCP and QUIC floods).
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub concurrency: usize,
    /// The SIP and DNS domain the messages name.
    #[arg(long, value_name = "DOMAIN", default_value = "example.test")]
    pub domain: String,
    /// QUIC: the farm's CA certificate (the server is checked against it).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// QUIC: the certificate the flood presents (one the farm refuses); none without it.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// QUIC: its key.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Probe from this address while flooding (legitimate traffic of the same kind).
    #[arg(long, value_name = "ADDR")]
    pub probe_from: Option<IpAddr>,
    /// Milliseconds between probe attempts.
    #[arg(long, value_name = "MS", default_value_t = 20)]
    pub probe_every_ms: u64,
    /// QUIC probe: a certificate the farm accepts (a monitor's, say) and its key.
    #[arg(long, value_name = "FILE", requires = "probe_key")]
    pub probe_cert: Option<PathBuf>,
    /// QUIC probe: its key.
    #[arg(long, value_name = "FILE", requires = "probe_cert")]
    pub probe_key: Option<PathBuf>,
    /// Sample this process's resident memory (VmRSS) during the flood.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
}

/// Options of `onehop-farm up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// The farm directory (created if missing; the CA and certificates in it are kept).
    #[arg(long)]
    pub dir: PathBuf,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Number of event servers (at least 1).
    #[arg(long, default_value_t = 3)]
    pub eventservers: usize,
    /// Number of managers (at least 1; an odd number survives the loss of a minority).
    #[arg(long, default_value_t = 3)]
    pub managers: usize,
    /// Number of DNS servers.
    #[arg(long, default_value_t = 1)]
    pub dns: usize,
    /// The SIP domain.
    #[arg(long, default_value = "example.test")]
    pub domain: String,
    /// The first loopback address; members take the addresses from here up.
    #[arg(long, default_value = "127.0.1.1")]
    pub base_ip: Ipv4Addr,
    /// Return once the farm is ready and leave it running (stop it with `down`).
    #[arg(long)]
    pub detach: bool,
    /// Roles every node gets.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sip_proxy,registrar,media_relay"
    )]
    pub roles: Vec<String>,
    /// UDP/TCP port of the DNS servers (53 needs root or CAP_NET_BIND_SERVICE).
    #[arg(long, default_value_t = 53)]
    pub dns_port: u16,
    /// Seconds to wait for the farm to be ready.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// A configuration key for every node, passed as `--set KEY=VALUE` on each node's command
    /// line (KEY a dotted path, VALUE a TOML value; see the daemons' `--set`). Repeatable, applied
    /// in order after the written configuration file. A key the node does not know stops it at
    /// start-up, and `up` fails with the node's error.
    #[arg(long = "node-set", value_name = "KEY=VALUE", value_parser = parse_node_set)]
    pub node_set: Vec<String>,
    /// Do not provision the demo domain and accounts (alice and bob, passwords printed) once the
    /// farm is ready.
    #[arg(long)]
    pub no_demo_accounts: bool,
}

fn parse_node_set(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.trim().is_empty() => Ok(s.to_string()),
        _ => Err(format!("want KEY=VALUE, got `{s}`")),
    }
}

/// The `onehop-farm` program.
pub fn cli_main(args: Vec<OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Up(args) => up(args),
        Command::Down { dir } => down(&dir),
        Command::Flood(args) => flood_cmd(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("onehop-farm: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `onehop-farm flood`: the flood and the probe side by side, one JSON object out.
fn flood_cmd(a: FloodArgs) -> anyhow::Result<()> {
    let sources = flood::parse_sources(&a.sources).map_err(anyhow::Error::msg)?;
    if let Some(p) = a.probe_from {
        if sources.contains(&p) {
            bail!("--probe-from {p} is one of the flood's sources");
        }
    }
    let quic = a.ca.clone().map(|ca| flood::QuicClient {
        ca,
        cert: a.cert.clone().zip(a.key.clone()),
    });
    let f = flood::Flood {
        kind: a.kind,
        target: a.target,
        sources,
        duration: Duration::from_secs(a.secs),
        rate: a.rate,
        concurrency: a.concurrency.max(1),
        domain: a.domain.clone(),
        quic: quic.clone(),
    };
    let probe = a.probe_from.map(|from| flood::probe::Probe {
        kind: a.kind,
        target: a.target,
        from,
        duration: Duration::from_secs(a.secs),
        every: Duration::from_millis(a.probe_every_ms.max(1)),
        domain: a.domain.clone(),
        quic: a.ca.clone().map(|ca| flood::QuicClient {
            ca,
            cert: a.probe_cert.clone().zip(a.probe_key.clone()),
        }),
    });
    let rt = tokio::runtime::Runtime::new()?;
    let rss_before = a.pid.map(flood::vm_rss_kib);
    let (peak, (tally, probed)) = rt.block_on(async {
        let both = async {
            let p = async {
                match &probe {
                    Some(p) => Some(flood::probe(p).await),
                    None => None,
                }
            };
            tokio::join!(flood::run(&f), p)
        };
        match a.pid {
            Some(pid) => {
                let (peak, out) = flood::watch_rss(pid, both).await;
                (Some(peak), out)
            }
            None => (None, both.await),
        }
    });
    let tally = tally.map_err(anyhow::Error::msg)?;
    let mut out = serde_json::json!({
        "kind": a.kind,
        "target": a.target.to_string(),
        "sources": f.sources.len(),
        "secs": a.secs,
        "flood": tally,
    });
    if let Some(p) = probed {
        let p = p.map_err(anyhow::Error::msg)?;
        out["probe"] = serde_json::json!({
            "attempts": p.attempts,
            "ok": p.ok,
            "success_rate": p.success_rate(),
            "p50_ms": p.percentile(50.0),
            "p99_ms": p.percentile(99.0),
        });
    }
    if let Some(pid) = a.pid {
        out["rss_kib"] = serde_json::json!({
            "before": rss_before,
            "peak": peak,
            "after": flood::vm_rss_kib(pid),
        });
    }
    println!("{out}");
    Ok(())
}

/// Well-known ports.
pub mod ports {
    /// Event server (UDP, QUIC).
    pub const EVENTSERVER: u16 = 8000;
    /// Manager Raft (UDP, QUIC).
    pub const RAFT: u16 = 8001;
    /// SIP (UDP and TCP).
    pub const SIP: u16 = 5060;
    /// Lookup interface (TCP).
    pub const LOOKUP: u16 = 9500;
    /// Prometheus metrics (TCP, HTTP).
    pub const METRICS: u16 = 9100;
    /// Provisioning API (TCP, HTTPS).
    pub const API: u16 = 8443;
}

fn abs(p: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
    p.canonicalize()
        .with_context(|| format!("cannot resolve {}", p.display()))
}

fn up(args: UpArgs) -> anyhow::Result<()> {
    if args.eventservers == 0 {
        bail!("--eventservers must be at least 1: members join through event servers");
    }
    if args.managers == 0 {
        bail!("--managers must be at least 1: the active manager publishes the network status");
    }
    let dir = abs(&args.dir)?;
    if let Ok(existing) = FarmFile::load(&dir) {
        let running: Vec<&str> = existing
            .members
            .iter()
            .filter(|m| process::alive(m.pid, &m.cmd))
            .map(|m| m.name.as_str())
            .collect();
        if !running.is_empty() {
            bail!(
                "a farm is already running in {} ({}); stop it with `onehop-farm down --dir {}`",
                dir.display(),
                running.join(", "),
                dir.display()
            );
        }
    }
    let members = plan(&args)?;
    println!(
        "onehop-farm: {} event servers, {} managers, {} DNS, {} nodes in {}",
        args.eventservers,
        args.managers,
        args.dns,
        args.nodes,
        dir.display()
    );
    let certs = plan::ensure_certs(&dir, &args.domain, &members)?;
    plan::check_layout(&dir, &args)?;
    let bins = process::link_binaries(&dir)?;
    let mut farm = FarmFile {
        domain: args.domain.clone(),
        members: Vec::new(),
        dir: dir.clone(),
        ca: certs.ca.clone(),
        crl: certs.crl.clone(),
        monitor: Some(certs.monitor.clone()),
        admin: Some(certs.admin.clone()),
        supervisor_pid: if args.detach {
            None
        } else {
            Some(std::process::id())
        },
    };
    let mut children = process::Children::default();
    let started = Instant::now();
    for m in &members {
        let config = plan::write_config(&dir, &args, m, &members, &certs)?;
        let bin = &bins[&m.kind];
        let log = dir.join("logs").join(format!("{}.log", m.name));
        let mut cmd = vec![
            bin.display().to_string(),
            "--config".to_string(),
            config.display().to_string(),
        ];
        if m.kind == Kind::Node {
            for kv in &args.node_set {
                cmd.push("--set".to_string());
                cmd.push(kv.clone());
            }
        }
        let pid = match children.spawn(&m.name, &cmd, &log) {
            Ok(pid) => pid,
            Err(e) => {
                children.stop_all(Duration::from_secs(3));
                return Err(e);
            }
        };
        farm.members.push(FarmMember {
            name: m.name.clone(),
            kind: m.kind.as_str().to_string(),
            roles: m.roles.clone(),
            pid,
            ip: IpAddr::V4(m.ip),
            cmd,
            ports: member_ports(m.kind, args.dns_port),
            config,
            log,
        });
    }
    let rt = tokio::runtime::Runtime::new().context("tokio runtime")?;
    let ready = rt.block_on(wait_ready(
        &farm,
        &mut children,
        Duration::from_secs(args.timeout),
    ));
    if let Err(e) = ready {
        children.stop_all(Duration::from_secs(3));
        return Err(e);
    }
    write_farm_file(&dir, &farm)?;
    print_ready(&farm, started.elapsed(), args.dns_port);
    if !args.no_demo_accounts {
        if let Err(e) = rt.block_on(demo_accounts(&farm)) {
            println!("  Demo accounts: not provisioned: {e:#}");
        }
    }
    if args.detach {
        children.detach();
        return Ok(());
    }
    println!("Supervising; press Ctrl-C to stop the farm.");
    rt.block_on(children.supervise());
    println!("onehop-farm: stopping");
    children.stop_all(Duration::from_secs(5));
    println!("onehop-farm: stopped");
    Ok(())
}

/// The ports a member of `kind` serves (`farm.json`'s `ports`), with DNS on `dns_port`.
pub fn member_ports(kind: Kind, dns_port: u16) -> BTreeMap<String, u16> {
    let mut p = BTreeMap::new();
    match kind {
        Kind::Eventserver => {
            p.insert("eventserver".into(), ports::EVENTSERVER);
        }
        Kind::Manager => {
            p.insert("raft".into(), ports::RAFT);
            p.insert("api".into(), ports::API);
        }
        Kind::Dns => {
            p.insert("dns".into(), dns_port);
        }
        Kind::Node => {
            p.insert("sip".into(), ports::SIP);
            p.insert("lookup".into(), ports::LOOKUP);
        }
        Kind::Monitor | Kind::Admin => {}
    }
    p.insert("metrics".into(), ports::METRICS);
    p
}

fn write_farm_file(dir: &Path, farm: &FarmFile) -> anyhow::Result<()> {
    let path = dir.join("farm.json");
    let tmp = dir.join("farm.json.tmp");
    let text = serde_json::to_string_pretty(farm)?;
    std::fs::write(&tmp, text + "\n").with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

async fn wait_ready(
    farm: &FarmFile,
    children: &mut process::Children,
    timeout: Duration,
) -> anyhow::Result<()> {
    let monitor = farm.monitor.as_ref().expect("farm has a monitor cert");
    let tls = TlsFiles {
        crl: None,
        ..farm.client_tls(monitor)
    };
    let mut watch = onehop_monitor::watch_status(&tls, farm.eventservers())?;
    let expected: Vec<String> = farm.members.iter().map(|m| m.name.clone()).collect();
    let deadline = Instant::now() + timeout;
    let mut last_report = Instant::now();
    let result = loop {
        if let Some((name, status)) = children.first_exited() {
            let log = farm
                .member(&name)
                .map(|m| m.log.clone())
                .unwrap_or_default();
            break Err(anyhow::anyhow!(
                "{name} exited during start-up ({status}); last lines of {}:\n{}",
                log.display(),
                process::tail(&log, 15)
            ));
        }
        let missing: Vec<&str> = {
            let held = watch.status.borrow();
            expected
                .iter()
                .filter(|n| held.as_ref().map(|s| s.member(n).is_none()).unwrap_or(true))
                .map(|s| s.as_str())
                .collect()
        };
        if missing.is_empty() {
            break Ok(());
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "the farm was not ready within {} s: not in the network status: {} (see {}/logs)",
                timeout.as_secs(),
                missing.join(", "),
                farm.dir.display()
            ));
        }
        if last_report.elapsed() > Duration::from_secs(3) {
            println!(
                "  waiting for {} member(s): {}",
                missing.len(),
                missing.join(", ")
            );
            last_report = Instant::now();
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), watch.status.changed()).await;
    };
    watch.client.stop();
    result?;
    nodes_hold_the_key(farm, deadline).await
}

/// Waits until every node says (in its metrics) that it holds the farm's SIP nonce key from
/// the managers: until then a node answers REGISTERs with 503.
async fn nodes_hold_the_key(farm: &FarmFile, deadline: Instant) -> anyhow::Result<()> {
    let nodes: Vec<&FarmMember> = farm.members.iter().filter(|m| m.kind == "node").collect();
    loop {
        let mut missing = Vec::new();
        for n in &nodes {
            let addr = SocketAddr::new(n.ip, ports::METRICS);
            if metric(addr, "onehop_farm_nonce_key").await != Some(1) {
                missing.push(n.name.as_str());
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "nodes without the farm's SIP nonce key (no manager answered them?): {} (see {}/logs)",
                missing.join(", "),
                farm.dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One value of a member's metrics (HTTP on its metrics port), if it answers.
async fn metric(addr: SocketAddr, name: &str) -> Option<i64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).await.ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    };
    tokio::time::timeout(Duration::from_secs(1), fetch)
        .await
        .ok()?
}

fn print_ready(farm: &FarmFile, took: Duration, dns_port: u16) {
    println!(
        "onehop-farm: ready in {:.1} s; {}/farm.json written",
        took.as_secs_f64(),
        farm.dir.display()
    );
    for m in &farm.members {
        let roles = if m.roles.is_empty() {
            String::new()
        } else {
            format!(" [{}]", m.roles.join(","))
        };
        println!(
            "  {:<10} {:<12} {:<12} pid {}{}",
            m.name, m.kind, m.ip, m.pid, roles
        );
    }
    let node = farm.members.iter().find(|m| m.kind == "node");
    let dns = farm.members.iter().find(|m| m.kind == "dns");
    println!();
    if let Some(n) = node {
        println!(
            "  SIP clients:  register as sip:alice@{} via proxy {}:{}",
            farm.domain,
            n.ip,
            ports::SIP
        );
        println!(
            "  Lookups:      printf 'lookup registrar for alice@{}\\r\\n' | nc {} {}",
            farm.domain,
            n.ip,
            ports::LOOKUP
        );
    }
    if let Some(d) = dns {
        println!(
            "  DNS:          dig @{} -p {} NAPTR {}",
            d.ip, dns_port, farm.domain
        );
    }
    println!(
        "  Monitor:      {}/bin/onehop-monitor --farm {}   (terminal UI; --json for a snapshot)",
        farm.dir.display(),
        farm.dir.display()
    );
}

/// The demo accounts `up` provisions.
pub const DEMO_USERS: [&str; 2] = ["alice", "bob"];

/// Provisions the farm's domain and the demo accounts with new passwords, and prints them. A
/// farm restarted in the same directory keeps its accounts (and their passwords).
async fn demo_accounts(farm: &FarmFile) -> anyhow::Result<()> {
    use onehop_admin::client::ApiError;
    use serde_json::json;
    let client = onehop_admin::Client::for_farm(&farm.dir)?;
    let ok_or_exists = |r: Result<serde_json::Value, ApiError>| match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.status() == Some(409) => Ok(None),
        Err(e) => Err(e),
    };
    ok_or_exists(
        client
            .call(
                hyper::Method::POST,
                "/v1/domains",
                Some(&json!({ "name": farm.domain })),
            )
            .await,
    )?;
    let admin = format!(
        "{}/bin/onehop-admin --farm {}",
        farm.dir.display(),
        farm.dir.display()
    );
    for user in DEMO_USERS {
        let password = onehop_admin::generate_password();
        let body = json!({
            "user": user,
            "domain": farm.domain,
            "password": password,
            "display_name": format!("{}{}", user[..1].to_uppercase(), &user[1..]),
        });
        let aor = format!("{user}@{}", farm.domain);
        match ok_or_exists(client.call(hyper::Method::POST, "/v1/accounts", Some(&body)).await)? {
            Some(_) => println!("  Demo account: sip:{aor}  password {password}"),
            None => println!(
                "  Demo account: sip:{aor} exists already (new password: {admin} accounts update {aor} --generate-password)"
            ),
        }
    }
    println!("  Provisioning: {admin} --help");
    Ok(())
}

fn down(dir: &Path) -> anyhow::Result<()> {
    let farm = FarmFile::load(dir)?;
    let mut stopped = 0;
    if let Some(pid) = farm.supervisor_pid {
        process::terminate(pid);
    }
    // Nodes and DNS first (they leave gracefully), then managers, then event servers.
    for kinds in [&["node", "dns"][..], &["manager"], &["eventserver"]] {
        let group: Vec<&FarmMember> = farm
            .members
            .iter()
            .filter(|m| kinds.contains(&m.kind.as_str()) && process::alive(m.pid, &m.cmd))
            .collect();
        for m in &group {
            process::terminate(m.pid);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for m in &group {
            while process::alive(m.pid, &m.cmd) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if process::alive(m.pid, &m.cmd) {
                eprintln!("onehop-farm: {} did not stop in 5 s; killing it", m.name);
                process::kill(m.pid);
            }
            stopped += 1;
        }
    }
    if stopped == 0 {
        println!("onehop-farm: nothing was running in {}", dir.display());
    } else {
        println!(
            "onehop-farm: stopped {stopped} member(s) in {}",
            dir.display()
        );
    }
    Ok(())
}
