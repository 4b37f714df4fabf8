//! `onehop-swarm`: a thousand members against real event servers and managers (benchmarks
//! only, loopback; `bench/swarm.sh` runs it).
//!
//! It starts a farm of event servers and managers with no nodes (`onehop-farm up --nodes 0`),
//! issues a `node` certificate per member from the farm's CA, and runs the members in this
//! process: each has its own QUIC endpoint on its own loopback address, its own certificate
//! and its own sessions with every event server, announces the three built-in roles, and
//! follows the network status as a node does (wholes, deltas and heartbeats, asking for the
//! whole status after a gap). A few of them (`--ring-members`) also keep the rings, changed in
//! place on every status as a node changes them. A few more (`--crash`) run as child processes
//! of this program, so that they can be killed with SIGKILL.
//!
//! Then it makes changes one after the other, at most `--rate` a second: a member leaves
//! gracefully and joins again (two changes), and at the end each child is killed (a crash).
//! For every change it measures the time from the change to each member holding a status
//! that shows it (p50, p99, max over the members, and over the changes), and over the whole
//! run: the bytes each event server delivered per change (its `eventserver_delivered_bytes_total`),
//! the managers' CPU per change (`/proc`), a member's CPU to follow a change (and, for the
//! ring members, to change the rings), and this process's memory per member.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use onehop_certs::{Ca, IssueRequest};
use onehop_overlay::client::{ClientEvent, ClientOptions, EventClient};
use onehop_overlay::crl::CrlStore;
use onehop_overlay::farmfile::FarmFile;
use onehop_overlay::follow::{Followed, Follower};
use onehop_overlay::net::{self, ConnTable, Timing};
use onehop_overlay::ring::Rings;
use onehop_overlay::status::{Endpoint, Kind, NetworkStatus, Role};
use onehop_overlay::tls::{Credentials, TlsFiles};
use onehop_overlay::wire::{Announce, Topic};

/// A thousand members against real event servers and managers: how fast a change reaches
/// them all, and what it costs.
#[derive(Debug, Parser)]
#[command(name = "onehop-swarm", version)]
struct Cli {
    #[command(subcommand)]
    member: Option<MemberCmd>,
    /// The farm directory (created; its CA and certificates are kept for the next run).
    #[arg(long, default_value = "/tmp/onehop-swarm")]
    dir: PathBuf,
    /// Members in all (in this process, and `--crash` of them as child processes).
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// The farm's first loopback address; the members take addresses from the next /24 up.
    #[arg(long, default_value = "127.0.120.1")]
    base_ip: Ipv4Addr,
    /// Event servers of the farm.
    #[arg(long, default_value_t = 3)]
    eventservers: usize,
    /// Managers of the farm.
    #[arg(long, default_value_t = 3)]
    managers: usize,
    /// Members started a second while the swarm joins.
    #[arg(long, default_value_t = 100.0)]
    join_rate: f64,
    /// Leave-and-join cycles (two changes each).
    #[arg(long, default_value_t = 20)]
    cycles: usize,
    /// Members run as child processes and killed with SIGKILL at the end (one crash each).
    #[arg(long, default_value_t = 5)]
    crash: usize,
    /// Changes a second at most.
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// Members that also keep the rings (1,000 points per member and role).
    #[arg(long, default_value_t = 4)]
    ring_members: usize,
    /// Seconds to wait for a change to reach every member.
    #[arg(long, default_value_t = 10)]
    wait: u64,
    /// Nodes of the farm (real `onehop-node` processes with the three built-in roles, whose
    /// rings hold the swarm too).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// After the changes, load node1's lookup interface with this `onehop-lookup-load`
    /// binary (bench/lookup-load): 4 connections x 256 requests in flight over 1,000,000
    /// distinct keys, 5 s, its ring holding every member of the swarm.
    #[arg(long, value_name = "PATH")]
    lookup_load: Option<PathBuf>,
    /// Leave the farm running at the end.
    #[arg(long)]
    keep: bool,
}

#[derive(Debug, clap::Subcommand)]
enum MemberCmd {
    /// Runs one member until killed (the crash victims).
    Member {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        ip: IpAddr,
        #[arg(long, value_delimiter = ',')]
        eventservers: Vec<SocketAddr>,
    },
}

/// The child members, killed when dropped (on every way out).
struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The change being waited for: member `name` shown (`present`) or not in a status.
struct Probe {
    id: u64,
    name: String,
    present: bool,
    at: Instant,
}

/// What the members record, shared.
#[derive(Default)]
struct Shared {
    probe: RwLock<Option<Probe>>,
    /// Per probe id: each member's delay.
    seen: Mutex<HashMap<u64, Vec<Duration>>>,
    /// Members holding a status that lists `target` members.
    complete: AtomicUsize,
    target: AtomicUsize,
    /// Time spent following statuses (all members), and statuses applied.
    follow_ns: AtomicU64,
    follows: AtomicU64,
    /// Time spent changing rings (ring members), and changes.
    ring_ns: Mutex<Vec<u64>>,
    /// Deltas that did not follow the status held when they came; those applied once the
    /// ones before them came (through another event server); whole statuses asked for.
    gaps: AtomicU64,
    reordered: AtomicU64,
    fetches: AtomicU64,
}

struct Member {
    name: String,
    client: EventClient,
}

fn member_ip(base: Ipv4Addr, i: usize) -> Ipv4Addr {
    let [a, b, c, _] = base.octets();
    Ipv4Addr::new(
        a,
        b,
        c.wrapping_add(1 + (i / 250) as u8),
        (i % 250) as u8 + 1,
    )
}

fn roles() -> Vec<Role> {
    Role::BUILT_IN
        .iter()
        .filter_map(|r| Role::new(r).ok())
        .collect()
}

fn tls(ca: &Path, dir: &Path, name: &str) -> TlsFiles {
    TlsFiles {
        ca: ca.to_path_buf(),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
        crl: None,
    }
}

/// Starts one member's sessions: its endpoint on `ip`, its certificate, the built-in roles.
fn start_member(
    files: &TlsFiles,
    ip: IpAddr,
    es: &[SocketAddr],
) -> anyhow::Result<(EventClient, onehop_overlay::client::EventReceiver)> {
    let creds = Arc::new(Credentials::load(files)?);
    let crl = CrlStore::open(creds.ca.to_vec(), None)?;
    let endpoint = net::endpoint(
        SocketAddr::new(ip, 0),
        &creds,
        &crl.current(),
        Timing::default(),
        None,
    )?;
    let opts = ClientOptions {
        eventservers: es.to_vec(),
        announce: Some(Announce {
            roles: roles(),
            endpoints: vec![
                Endpoint {
                    service: "sip".into(),
                    addr: SocketAddr::new(ip, 5060),
                },
                Endpoint {
                    service: "lookup".into(),
                    addr: SocketAddr::new(ip, 9500),
                },
            ],
        }),
        subscribe: vec![Topic::Network],
        // Deltas and heartbeats as they come: the member follows them, as a node does.
        whole_status: false,
        ..Default::default()
    };
    Ok(EventClient::start(
        endpoint,
        opts,
        ConnTable::default(),
        None,
    ))
}

/// Runs a member in this process: follows the status, records what the probes wait for.
fn spawn_member(
    name: String,
    files: TlsFiles,
    ip: IpAddr,
    es: Vec<SocketAddr>,
    rings: bool,
    shared: Arc<Shared>,
) -> anyhow::Result<Member> {
    let (client, mut events) = start_member(&files, ip, &es)?;
    let fetcher = client.clone();
    let me = name.clone();
    tokio::spawn(async move {
        let mut follower = Follower::new();
        let mut held_rings: Option<(Arc<NetworkStatus>, Rings)> = None;
        let mut done_probe = 0u64;
        let mut was_complete = false;
        let (mut gaps, mut reordered) = (0, 0);
        loop {
            // A missing change is asked for when the follower says it is due.
            let due = follower.due();
            let ev = tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => ev,
                    None => break,
                },
                _ = async {
                    match due {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if follower.check() == Followed::Missed {
                        shared.fetches.fetch_add(1, Ordering::Relaxed);
                        fetcher.fetch_one(&[Topic::Network]);
                    }
                    continue;
                }
            };
            let ClientEvent::Event(ev) = ev else { continue };
            let t = Instant::now();
            let followed = follower.take(&ev.payload);
            shared
                .gaps
                .fetch_add(follower.gaps - gaps, Ordering::Relaxed);
            shared
                .reordered
                .fetch_add(follower.reordered - reordered, Ordering::Relaxed);
            (gaps, reordered) = (follower.gaps, follower.reordered);
            let status = match followed {
                Followed::Changed { .. } => match follower.status() {
                    Some(s) => s.clone(),
                    None => continue,
                },
                Followed::Missed => {
                    shared.fetches.fetch_add(1, Ordering::Relaxed);
                    fetcher.fetch_one(&[Topic::Network]);
                    continue;
                }
                Followed::Same => continue,
            };
            shared
                .follow_ns
                .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            shared.follows.fetch_add(1, Ordering::Relaxed);
            if rings {
                let t = Instant::now();
                let next = match &held_rings {
                    Some((old, r)) => r.update(old, &status, 1000),
                    None => Rings::from_status(&status, 1000),
                };
                let took = t.elapsed().as_nanos() as u64;
                if held_rings.is_some() {
                    shared.ring_ns.lock().expect("ring_ns").push(took);
                }
                held_rings = Some((status.clone(), next));
            }
            let now = Instant::now();
            let complete = status.members.len() >= shared.target.load(Ordering::Relaxed);
            if complete != was_complete {
                if complete {
                    shared.complete.fetch_add(1, Ordering::Relaxed);
                } else {
                    shared.complete.fetch_sub(1, Ordering::Relaxed);
                }
                was_complete = complete;
            }
            let probe = shared.probe.read().expect("probe");
            if let Some(p) = probe.as_ref().filter(|p| p.id > done_probe && p.name != me) {
                let listed = status
                    .members
                    .binary_search_by(|m| m.name.as_str().cmp(&p.name))
                    .is_ok();
                if listed == p.present {
                    done_probe = p.id;
                    shared
                        .seen
                        .lock()
                        .expect("seen")
                        .entry(p.id)
                        .or_default()
                        .push(now - p.at);
                }
            }
        }
    });
    Ok(Member { name, client })
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A counter or gauge of a daemon's metrics page (summed over its label sets).
fn scrape(addr: SocketAddr, name: &str) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let mut total = 0.0;
    let mut found = false;
    for line in body.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            total += v;
            found = true;
        }
    }
    if !found {
        bail!("{addr} has no metric {name}");
    }
    Ok(total)
}

/// CPU time (user + system) of a process, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).context("stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).context("utime")?.parse::<f64>()? + f.get(12).context("stime")?.parse::<f64>()?;
    Ok(ticks / 100.0)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Waits until every member but the subject recorded probe `id`; returns the delays.
async fn await_probe(shared: &Shared, id: u64, expect: usize, wait: Duration) -> Vec<Duration> {
    let deadline = Instant::now() + wait;
    loop {
        let n = shared
            .seen
            .lock()
            .expect("seen")
            .get(&id)
            .map_or(0, Vec::len);
        if n >= expect || Instant::now() >= deadline {
            let mut v = shared
                .seen
                .lock()
                .expect("seen")
                .remove(&id)
                .unwrap_or_default();
            v.sort();
            return v;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn report(kind: &str, per_change: &[Vec<Duration>], expect: usize) {
    let mut all: Vec<Duration> = per_change.iter().flatten().copied().collect();
    all.sort();
    let worst: Vec<Duration> = per_change
        .iter()
        .map(|v| v.last().copied().unwrap_or_default())
        .collect();
    let short = per_change.iter().filter(|v| v.len() < expect).count();
    println!(
        "{kind:<14} changes {:>3}  to every member: p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  (last member per change: worst {:>7.1} ms){}",
        per_change.len(),
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        ms(all.last().copied().unwrap_or_default()),
        ms(worst.iter().max().copied().unwrap_or_default()),
        if short > 0 { format!("  INCOMPLETE in {short} changes") } else { String::new() }
    );
}

fn run_member(
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    ip: IpAddr,
    es: Vec<SocketAddr>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let files = TlsFiles {
            ca,
            cert,
            key,
            crl: None,
        };
        let (_client, mut events) = start_member(&files, ip, &es)?;
        while events.recv().await.is_some() {}
        Ok(())
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(MemberCmd::Member {
        ca,
        cert,
        key,
        ip,
        eventservers,
    }) = cli.member
    {
        return match run_member(ca, cert, key, ip, eventservers) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("onehop-swarm member: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("onehop-swarm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let bin = exe.parent().context("no directory")?;
    let farm_bin = bin.join("onehop-farm");
    eprintln!(
        "starting a farm of {} event servers and {} managers in {}",
        cli.eventservers,
        cli.managers,
        cli.dir.display()
    );
    let status = Command::new(&farm_bin)
        .args(["up", "--detach", "--no-demo-accounts", "--dns", "0"])
        .args(["--nodes", &cli.nodes.to_string()])
        .args([
            "--eventservers",
            &cli.eventservers.to_string(),
            "--managers",
            &cli.managers.to_string(),
        ])
        .args(["--base-ip", &cli.base_ip.to_string(), "--dir"])
        .arg(&cli.dir)
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("running {}", farm_bin.display()))?;
    if !status.success() {
        bail!("onehop-farm up failed");
    }
    let result = swarm(&cli, &exe);
    if !cli.keep {
        let _ = Command::new(&farm_bin)
            .args(["down", "--dir"])
            .arg(&cli.dir)
            .stdout(Stdio::null())
            .status();
    }
    result
}

fn swarm(cli: &Cli, exe: &Path) -> anyhow::Result<()> {
    let farm = FarmFile::load(&cli.dir)?;
    let es = farm.eventservers();
    let farm_members = farm.members.len();
    let ca_dir = farm.ca.parent().context("CA directory")?.to_path_buf();
    let certs = cli.dir.join("swarm");
    std::fs::create_dir_all(&certs)?;
    let names: Vec<String> = (0..cli.members).map(|i| format!("sw{i:04}")).collect();
    let mut ca = Ca::open(&ca_dir)?;
    let t = Instant::now();
    let mut issued = 0;
    for (i, name) in names.iter().enumerate() {
        if certs.join(format!("{name}.pem")).exists() {
            continue;
        }
        let req = IssueRequest::new(name.clone(), Kind::Node)
            .roles(roles())
            .ips([IpAddr::V4(member_ip(cli.base_ip, i))]);
        ca.issue(&req, &certs)?;
        issued += 1;
    }
    eprintln!(
        "{issued} certificates issued in {:.1} s ({} kept from an earlier run)",
        t.elapsed().as_secs_f64(),
        cli.members - issued
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let shared = Arc::new(Shared::default());
        let total = farm_members + cli.members;
        shared.target.store(total, Ordering::Relaxed);
        // The crash victims: child processes, the last names.
        let mut children = Children(Vec::new());
        let in_process = cli.members - cli.crash.min(cli.members);
        let es_list = es.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
        let t0 = Instant::now();
        let mut members: Vec<Member> = Vec::with_capacity(in_process);
        let pause = Duration::from_secs_f64(1.0 / cli.join_rate.max(1.0));
        for (i, name) in names.iter().enumerate() {
            let ip = IpAddr::V4(member_ip(cli.base_ip, i));
            let files = tls(&farm.ca, &certs, name);
            if i < in_process {
                members.push(spawn_member(name.clone(), files, ip, es.clone(), i < cli.ring_members, shared.clone())?);
            } else {
                let child = Command::new(exe)
                    .args(["member", "--ip", &ip.to_string(), "--eventservers", &es_list, "--ca"])
                    .arg(&files.ca)
                    .arg("--cert")
                    .arg(&files.cert)
                    .arg("--key")
                    .arg(&files.key)
                    .stdout(Stdio::null())
                    .spawn()?;
                children.0.push((name.clone(), child));
            }
            tokio::time::sleep(pause).await;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while shared.complete.load(Ordering::Relaxed) < in_process {
            if Instant::now() > deadline {
                bail!("only {} of {in_process} members hold a status with all {total} members after 60 s", shared.complete.load(Ordering::Relaxed));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let joined = t0.elapsed();
        let rss = rss_kib();
        println!("{} members joined (+{} of the farm; {} in this process, {} as child processes) in {:.1} s at {} a second",
            cli.members, farm_members, in_process, children.0.len(), joined.as_secs_f64(), cli.join_rate);
        println!("memory: {:.0} MiB resident for {in_process} members: {:.0} KiB a member (each with its own endpoint, sessions with {} event servers and status; the rings of {} of them)",
            rss as f64 / 1024.0, rss as f64 / in_process as f64, es.len(), cli.ring_members);

        // Counters before the changes.
        let es_metrics: Vec<SocketAddr> = farm.members.iter().filter(|m| m.kind == "eventserver").filter_map(|m| m.addr("metrics")).collect();
        let managers: Vec<u32> = farm.members.iter().filter(|m| m.kind == "manager").map(|m| m.pid).collect();
        let bytes0: Vec<f64> = es_metrics.iter().map(|a| scrape(*a, "onehop_eventserver_delivered_bytes_total")).collect::<anyhow::Result<_>>()?;
        let cpu0: Vec<f64> = managers.iter().map(|p| cpu_seconds(*p)).collect::<anyhow::Result<_>>()?;
        let follow0 = (shared.follow_ns.load(Ordering::Relaxed), shared.follows.load(Ordering::Relaxed));
        shared.ring_ns.lock().expect("ring_ns").clear();

        let wait = Duration::from_secs(cli.wait);
        let gap = Duration::from_secs_f64(1.0 / cli.rate.max(0.01));
        let mut probe_id = 0u64;
        let (mut leaves, mut joins, mut crashes) = (Vec::new(), Vec::new(), Vec::new());
        let changes_start = Instant::now();
        for c in 0..cli.cycles {
            // A member past the ring members leaves gracefully, then joins again.
            let i = cli.ring_members + (c * 37) % (in_process - cli.ring_members).max(1);
            let name = members[i].name.clone();
            let started = Instant::now();
            probe_id += 1;
            *shared.probe.write().expect("probe") = Some(Probe { id: probe_id, name: name.clone(), present: false, at: Instant::now() });
            shared.target.store(total - 1, Ordering::Relaxed);
            members[i].client.leave(Duration::from_secs(1)).await;
            leaves.push(await_probe(&shared, probe_id, in_process - 1, wait).await);
            tokio::time::sleep(gap.saturating_sub(started.elapsed())).await;
            let started = Instant::now();
            probe_id += 1;
            *shared.probe.write().expect("probe") = Some(Probe { id: probe_id, name: name.clone(), present: true, at: Instant::now() });
            shared.target.store(total, Ordering::Relaxed);
            let ip = IpAddr::V4(member_ip(cli.base_ip, i));
            members[i] = spawn_member(name.clone(), tls(&farm.ca, &certs, &name), ip, es.clone(), false, shared.clone())?;
            joins.push(await_probe(&shared, probe_id, in_process - 1, wait).await);
            tokio::time::sleep(gap.saturating_sub(started.elapsed())).await;
        }
        for (name, mut child) in children.0.drain(..) {
            let started = Instant::now();
            probe_id += 1;
            *shared.probe.write().expect("probe") = Some(Probe { id: probe_id, name: name.clone(), present: false, at: Instant::now() });
            child.kill()?;
            let _ = child.wait();
            crashes.push(await_probe(&shared, probe_id, in_process, wait).await);
            tokio::time::sleep(gap.saturating_sub(started.elapsed())).await;
        }
        let changes = leaves.len() + joins.len() + crashes.len();
        let took = changes_start.elapsed();
        let bytes1: Vec<f64> = es_metrics.iter().map(|a| scrape(*a, "onehop_eventserver_delivered_bytes_total")).collect::<anyhow::Result<_>>()?;
        let cpu1: Vec<f64> = managers.iter().map(|p| cpu_seconds(*p)).collect::<anyhow::Result<_>>()?;
        let follow1 = (shared.follow_ns.load(Ordering::Relaxed), shared.follows.load(Ordering::Relaxed));

        println!("\n{changes} changes in {:.1} s, one after the other (at most {} a second), each waited for until every member held it:", took.as_secs_f64(), cli.rate);
        report("graceful leave", &leaves, in_process - 1);
        report("join", &joins, in_process - 1);
        report("crash (kill -9)", &crashes, in_process);
        for (i, (a, b)) in bytes0.iter().zip(&bytes1).enumerate() {
            println!("event server {}: {:.0} bytes delivered per change ({:.0} per change per member)", i + 1, (b - a) / changes as f64, (b - a) / changes as f64 / in_process as f64);
        }
        for (pid, (a, b)) in managers.iter().zip(cpu0.iter().zip(&cpu1)) {
            println!("manager pid {pid}: {:.2} ms of CPU per change (all its work during the changes, heartbeats and Raft included)", (b - a) * 1e3 / changes as f64);
        }
        let (ns, n) = (follow1.0 - follow0.0, follow1.1 - follow0.1);
        println!("a member following a change (delta, digest, status): {:.1} us on average over {n} applications", ns as f64 / n.max(1) as f64 / 1e3);
        let mut ring = shared.ring_ns.lock().expect("ring_ns").clone();
        ring.sort_unstable();
        if !ring.is_empty() {
            let q = |p: f64| ring[((ring.len() - 1) as f64 * p).round() as usize] as f64 / 1e3;
            println!("a member changing its 3 rings in place ({} members x 1,000 points): p50 {:.0} us, p99 {:.0} us, max {:.0} us over {} changes", total, q(0.5), q(0.99), q(1.0), ring.len());
        }
        println!(
            "deltas that did not follow when they came: {}, of which applied once the ones before came through another event server: {}; whole statuses asked for: {}",
            shared.gaps.load(Ordering::Relaxed),
            shared.reordered.load(Ordering::Relaxed),
            shared.fetches.load(Ordering::Relaxed)
        );
        if let (Some(load), Some(node)) = (&cli.lookup_load, farm.member("node1")) {
            let addr = node.addr("lookup").context("node1 has no lookup port")?;
            println!("\nlookups at node1 ({addr}) with {total} members on its rings:");
            let out = Command::new(load)
                .args(["--addr", &addr.to_string(), "--connections", "4", "--depth", "256"])
                .args(["--duration", "5", "--warmup", "1", "--keys", "1000000"])
                .output()
                .with_context(|| format!("running {}", load.display()))?;
            print!("{}", String::from_utf8_lossy(&out.stdout));
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
        }
        for m in &members {
            m.client.stop();
        }
        Ok(())
    })
}
