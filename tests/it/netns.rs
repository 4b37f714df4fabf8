//! Farms whose members each run in a network namespace of their own, on links the test can
//! cut, make lossy or slow down (issue 11): several hosts on one machine.
//!
//! One test's network, R being the test's own number (so tests can run side by side):
//!
//! ```text
//! ohR-hub       bridge br0, 10.R.0.254/24: the test's probe (lookups, metrics, SIP clients)
//!   v-es1       <-> eth0 10.R.0.1 in ohR-es1
//!   v-manager1  <-> eth0 10.R.0.4 in ohR-manager1
//!   ...             one namespace, one veth and one address per member
//!   dly0        a TUN device, only once a delay is set (see `Relay`)
//! ```
//!
//! No namespace has a route beyond 10.R.0.0/24, so no packet leaves the test's own network,
//! and the nodes' DNS server is the farm's own (`dns_servers`), never the machine's resolver.
//! Members are started with `ip netns exec NS onehop-... --config FILE`, their configuration
//! written by `onehop-farm`'s own `plan::write_config` with their namespace address.
//!
//! Faults are nftables rules in the member's own namespace (table `inet onehop_faults`):
//! [`Lab::cut`], [`Lab::isolate`], [`Lab::split`], [`Lab::loss`] (`numgen random mod 100 < N
//! drop` on what arrives from other members), undone by [`Lab::heal`]. The hub's address is
//! exempt, so the test still watches an isolated member. This kernel has no `netem` qdisc, so
//! [`Lab::delay`] routes a member's packets to the other members through the hub, whose
//! policy routing hands them to a TUN device read by [`Relay`] in this process, which holds
//! each packet for its source's delay and writes it back to be forwarded.
//!
//! The test's thread enters the hub namespace while the farm is up (and goes back on drop), so
//! the harness's clients (`Lookup`, `scrape`, UDP sockets) reach the members as they are.
//! Namespaces are named `ohR-...`, removed on drop (also after a panic), and any left by a
//! killed run of the same test are removed, their processes killed, before it starts.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use onehop_farm::plan;
use onehop_farm::process::{link_binaries_of, tail, Children};
use onehop_farm::{member_ports, UpArgs};
use onehop_overlay::farmfile::{FarmFile, FarmMember};
use onehop_overlay::status::Kind;

use crate::harness::{farm_bin, farm_turn, scrape, wait_for, Lookup};

/// The SIP domain of the namespace farms.
pub const DOMAIN: &str = "example.test";
/// The nftables table of faults in every member's namespace.
const FAULTS: &str = "onehop_faults";
/// Last byte of the hub's (the probe's) address.
const HUB_LAST: u8 = 254;

/// Runs `prog ARGS` (with `stdin`); an error carries the command and its stderr.
fn run(prog: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd.spawn().map_err(|e| format!("{prog}: {e}"))?;
    if let Some(text) = stdin {
        let mut w = child.stdin.take().expect("stdin");
        w.write_all(text.as_bytes())
            .map_err(|e| format!("{prog}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{prog}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    if let Err(e) = run("ip", args, None) {
        panic!("{e}");
    }
}

/// Whether this process runs as root (effective uid 0).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Kills (SIGKILL) every process in namespace `ns` but this one, and waits (at most 5 s) until
/// they are gone.
fn kill_in(ns: &str) {
    let me = std::process::id();
    let pids = |ns: &str| -> Vec<u32> {
        run("ip", &["netns", "pids", ns], None)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p| *p != me)
            .collect()
    };
    for pid in pids(ns) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let _ = wait_for(Duration::from_secs(5), || pids(ns).is_empty().then_some(()));
}

/// Removes the namespaces named `prefix...` (processes in them killed first).
fn remove_namespaces(prefix: &str) -> Vec<String> {
    let list = run("ip", &["netns", "list"], None).unwrap_or_default();
    let names: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(String::from)
        .collect();
    for ns in &names {
        kill_in(ns);
        let _ = run("ip", &["netns", "del", ns], None);
    }
    names
}

/// Runs `f` on a thread inside namespace `ns` (sockets and files it opens stay there).
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        setns(&fd, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .expect("thread in a namespace")
}

struct Host {
    ns: String,
    ip: Ipv4Addr,
}

/// One test's network: the hub namespace with its bridge, one namespace per host, the faults.
pub struct Lab {
    prefix: String,
    net: [u8; 2],
    hub: String,
    hosts: BTreeMap<String, Host>,
    relay: Option<Relay>,
    /// The calling thread's own namespace while it is in the hub.
    home: Option<File>,
}

impl Lab {
    /// Creates the hub namespace of test number `r` (network 10.r.0.0/24), after removing any
    /// namespaces a killed run of it left. `Err` says why namespaces cannot be used here (not
    /// root, no `ip`, not permitted): the test then skips. Other failures panic.
    pub fn new(r: u8) -> Result<Lab, String> {
        if !is_root() {
            return Err("not root: network namespaces (ip netns) need root".into());
        }
        if Command::new("ip").arg("-V").output().is_err() {
            return Err("no `ip` command (iproute2)".into());
        }
        let prefix = format!("oh{r}-");
        for ns in remove_namespaces(&prefix) {
            println!("removed namespace {ns} left by an earlier run");
        }
        let hub = format!("{prefix}hub");
        if let Err(e) = run("ip", &["netns", "add", &hub], None) {
            if e.contains("not permitted") || e.contains("Permission denied") {
                return Err(format!("ip netns unavailable: {e}"));
            }
            panic!("{e}");
        }
        let lab = Lab {
            prefix,
            net: [10, r],
            hub,
            hosts: BTreeMap::new(),
            relay: None,
            home: None,
        };
        let hub = lab.hub.as_str();
        let me = format!("{}/24", lab.hub_ip());
        ip(&["-n", hub, "link", "set", "lo", "up"]);
        ip(&["-n", hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", hub, "addr", "add", &me, "dev", "br0"]);
        ip(&["-n", hub, "link", "set", "br0", "up"]);
        Ok(lab)
    }

    /// The address `.last` of this test's network.
    pub fn addr(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], 0, last)
    }

    /// The hub's (the probe's) address.
    pub fn hub_ip(&self) -> Ipv4Addr {
        self.addr(HUB_LAST)
    }

    /// The first member address (members take addresses from here up).
    pub fn base(&self) -> Ipv4Addr {
        self.addr(1)
    }

    /// Namespace of host `name`.
    pub fn ns(&self, name: &str) -> &str {
        &self.host(name).ns
    }

    fn host(&self, name: &str) -> &Host {
        self.hosts
            .get(name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Adds host `name` at `addr`: its namespace with loopback up, a veth from the bridge to
    /// its `eth0`, and an empty table of faults.
    pub fn add_host(&mut self, name: &str, addr: Ipv4Addr) {
        let ns = format!("{}{name}", self.prefix);
        let veth = format!("v-{name}");
        assert!(
            veth.len() <= 15,
            "host name {name} too long for an interface"
        );
        ip(&["netns", "add", &ns]);
        self.hosts.insert(
            name.to_string(),
            Host {
                ns: ns.clone(),
                ip: addr,
            },
        );
        let hub = self.hub.as_str();
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n", hub, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["-n", hub, "link", "set", &veth, "master", "br0", "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        self.nft(
            name,
            &format!(
                "add table inet {FAULTS}\n\
                 add chain inet {FAULTS} input {{ type filter hook input priority 0; policy accept; }}\n\
                 add chain inet {FAULTS} output {{ type filter hook output priority 0; policy accept; }}\n"
            ),
        );
    }

    fn nft(&self, name: &str, script: &str) {
        let ns = self.ns(name);
        if let Err(e) = run("ip", &["netns", "exec", ns, "nft", "-f", "-"], Some(script)) {
            panic!("{e}\n{script}");
        }
    }

    /// Cuts host `a` off from every other host (both ways); the hub still reaches it.
    pub fn isolate(&self, a: &str) {
        let hub = self.hub_ip();
        self.nft(
            a,
            &format!(
                "add rule inet {FAULTS} input iifname \"eth0\" ip saddr != {hub} drop\n\
                 add rule inet {FAULTS} output oifname \"eth0\" ip daddr != {hub} drop\n"
            ),
        );
    }

    /// Cuts the link between hosts `a` and `b` (both ways).
    pub fn cut(&self, a: &str, b: &str) {
        let other = self.host(b).ip;
        self.nft(
            a,
            &format!(
                "add rule inet {FAULTS} input ip saddr {other} drop\n\
                 add rule inet {FAULTS} output ip daddr {other} drop\n"
            ),
        );
    }

    /// Splits the hosts into two groups that cannot reach each other.
    pub fn split(&self, left: &[&str], right: &[&str]) {
        for a in left {
            let mut script = String::new();
            for b in right {
                let other = self.host(b).ip;
                script.push_str(&format!(
                    "add rule inet {FAULTS} input ip saddr {other} drop\n\
                     add rule inet {FAULTS} output ip daddr {other} drop\n"
                ));
            }
            self.nft(a, &script);
        }
    }

    /// Drops `pct` percent of the packets that arrive at host `a` from other hosts (chosen at
    /// random, `numgen random mod 100 < pct`). Set on every host, each packet between two
    /// hosts is lost with that probability.
    pub fn loss(&self, a: &str, pct: u8) {
        assert!(pct <= 100);
        let hub = self.hub_ip();
        self.nft(
            a,
            &format!(
                "add rule inet {FAULTS} input iifname \"eth0\" ip saddr != {hub} numgen random mod 100 < {pct} drop\n"
            ),
        );
    }

    /// Removes every cut and loss (delays stay: see [`Lab::undelay`]).
    pub fn heal(&self) {
        for name in self.hosts.keys() {
            self.nft(
                name,
                &format!("flush chain inet {FAULTS} input\nflush chain inet {FAULTS} output\n"),
            );
        }
    }

    /// Delays every packet host `a` sends to another host by `d` (one way): `a` routes them
    /// through the hub, which passes them through the relay.
    pub fn delay(&mut self, a: &str, d: Duration) {
        if self.relay.is_none() {
            self.relay = Some(self.start_relay());
        }
        let host = self.host(a);
        self.relay.as_ref().expect("relay").set_delay(host.ip, d);
        let hub = self.hub_ip().to_string();
        for (name, other) in &self.hosts {
            if name != a {
                ip(&[
                    "-n",
                    &host.ns,
                    "route",
                    "replace",
                    &format!("{}/32", other.ip),
                    "via",
                    &hub,
                    "dev",
                    "eth0",
                ]);
            }
        }
    }

    /// Takes host `a`'s delay away.
    pub fn undelay(&mut self, a: &str) {
        let host = self.host(a);
        for (name, other) in &self.hosts {
            if name != a {
                let _ = run(
                    "ip",
                    &["-n", &host.ns, "route", "del", &format!("{}/32", other.ip)],
                    None,
                );
            }
        }
        if let Some(r) = &self.relay {
            r.set_delay(host.ip, Duration::ZERO);
        }
    }

    /// Packets the relay passed on and dropped (its queue full), so far.
    pub fn relay_counts(&self) -> (u64, u64) {
        self.relay.as_ref().map_or((0, 0), |r| {
            (
                r.shared.relayed.load(Ordering::Relaxed),
                r.shared.dropped.load(Ordering::Relaxed),
            )
        })
    }

    fn start_relay(&self) -> Relay {
        let hub = self.hub.clone();
        let dev = in_ns(&hub, || tun::open("dly0"))
            .unwrap_or_else(|e| panic!("cannot open a TUN device in {}: {e}", self.hub));
        let hub = self.hub.as_str();
        ip(&["-n", hub, "link", "set", "dly0", "up"]);
        if let Err(e) = run(
            "ip",
            &[
                "netns",
                "exec",
                hub,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                "net.ipv4.conf.br0.rp_filter=0",
                "net.ipv4.conf.dly0.rp_filter=0",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.br0.send_redirects=0",
            ],
            None,
        ) {
            panic!("{e}");
        }
        // What comes back from the relay is forwarded as usual; what a delayed host sends
        // through the hub goes to the relay first. The hub's own traffic is neither (the local
        // table comes first).
        ip(&[
            "-n", hub, "rule", "add", "pref", "100", "iif", "dly0", "lookup", "main",
        ]);
        ip(&[
            "-n", hub, "rule", "add", "pref", "110", "iif", "br0", "lookup", "100",
        ]);
        ip(&[
            "-n", hub, "route", "add", "default", "dev", "dly0", "table", "100",
        ]);
        Relay::start(dev)
    }

    /// Puts the calling thread into the hub namespace (until [`Lab::leave_hub`] or drop): its
    /// sockets, and the processes it starts, are in the test's network.
    pub fn enter_hub(&mut self) {
        if self.home.is_some() {
            return;
        }
        let home = File::open("/proc/thread-self/ns/net").expect("own namespace");
        let hub = File::open(format!("/run/netns/{}", self.hub)).expect("hub namespace");
        setns(&hub, CloneFlags::CLONE_NEWNET).expect("setns into the hub");
        self.home = Some(home);
    }

    /// Takes the calling thread back to its own namespace.
    pub fn leave_hub(&mut self) {
        if let Some(home) = self.home.take() {
            let _ = setns(&home, CloneFlags::CLONE_NEWNET);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.leave_hub();
        if let Some(r) = self.relay.take() {
            r.stop();
        }
        remove_namespaces(&self.prefix);
    }
}

/// Opening a TUN device.
#[allow(unsafe_code)]
mod tun {
    use std::fs::{File, OpenOptions};
    use std::os::fd::AsRawFd;

    const IFF_TUN: i16 = 0x0001;
    const IFF_NO_PI: i16 = 0x1000;

    /// `struct ifreq` as TUNSETIFF reads it: the name, then the flags, 40 bytes in all.
    #[repr(C, align(8))]
    pub struct IfReq {
        name: [u8; 16],
        flags: i16,
        _rest: [u8; 22],
    }

    nix::ioctl_readwrite_bad!(
        tun_set_iff,
        nix::request_code_write!(b'T', 202, std::mem::size_of::<nix::libc::c_int>()),
        IfReq
    );

    /// Creates TUN device `name` (IPv4 packets, no extra header) in the calling thread's
    /// namespace; it lives as long as the returned file.
    pub fn open(name: &str) -> std::io::Result<File> {
        if name.is_empty() || name.len() > 15 {
            return Err(std::io::Error::other("interface names are 1-15 bytes"));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TUN | IFF_NO_PI,
            _rest: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: the descriptor is open (`file` lives across the call); `req` is a fully
        // initialised, writable `struct ifreq` of the kernel's size (40 bytes: a NUL-terminated
        // name of at most 15 bytes, then the flags) that outlives the call, and TUNSETIFF
        // reads and writes only within it.
        unsafe { tun_set_iff(file.as_raw_fd(), &mut req) }.map_err(std::io::Error::from)?;
        Ok(file)
    }
}

/// At most this many packets are held by the relay at once; more are dropped (and counted).
const RELAY_MAX_PACKETS: usize = 20_000;
/// At most this many bytes are held by the relay at once.
const RELAY_MAX_BYTES: usize = 32 << 20;

type HeldPacket = Reverse<(Instant, u64, Vec<u8>)>;

#[derive(Default)]
struct Held {
    heap: BinaryHeap<HeldPacket>,
    bytes: usize,
    seq: u64,
}

#[derive(Default)]
struct RelayShared {
    delays: Mutex<HashMap<Ipv4Addr, Duration>>,
    held: Mutex<Held>,
    due: Condvar,
    stop: AtomicBool,
    relayed: AtomicU64,
    dropped: AtomicU64,
}

/// The delaying relay: reads the packets the hub routes to its TUN device, holds each for its
/// source's delay (bounded in packets and bytes) and writes it back to be forwarded.
struct Relay {
    shared: Arc<RelayShared>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    fn start(dev: File) -> Relay {
        let dev = Arc::new(dev);
        let shared = Arc::new(RelayShared::default());
        let (d, s) = (dev.clone(), shared.clone());
        let reader = std::thread::spawn(move || relay_read(&d, &s));
        let (d, s) = (dev, shared.clone());
        let writer = std::thread::spawn(move || relay_write(&d, &s));
        Relay {
            shared,
            threads: vec![reader, writer],
        }
    }

    fn set_delay(&self, src: Ipv4Addr, d: Duration) {
        self.shared.delays.lock().unwrap().insert(src, d);
    }

    fn stop(self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.due.notify_all();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn relay_read(dev: &File, shared: &RelayShared) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut buf = vec![0u8; 65_536];
    while !shared.stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(dev.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(50u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(_) => return,
        }
        let n = match (&*dev).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let pkt = &buf[..n];
        let delay = if n >= 20 && pkt[0] >> 4 == 4 {
            let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
            shared
                .delays
                .lock()
                .unwrap()
                .get(&src)
                .copied()
                .unwrap_or_default()
        } else {
            Duration::ZERO
        };
        let mut held = shared.held.lock().unwrap();
        if held.heap.len() >= RELAY_MAX_PACKETS || held.bytes + n > RELAY_MAX_BYTES {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        held.seq += 1;
        let seq = held.seq;
        held.bytes += n;
        held.heap
            .push(Reverse((Instant::now() + delay, seq, pkt.to_vec())));
        drop(held);
        shared.due.notify_one();
    }
}

fn relay_write(dev: &File, shared: &RelayShared) {
    loop {
        let mut held = shared.held.lock().unwrap();
        let pkt = loop {
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            let now = Instant::now();
            let wait = match held.heap.peek() {
                Some(Reverse((due, _, _))) if *due <= now => {
                    let Reverse((_, _, pkt)) = held.heap.pop().expect("peeked");
                    break pkt;
                }
                Some(Reverse((due, _, _))) => *due - now,
                None => Duration::from_millis(50),
            };
            held = shared.due.wait_timeout(held, wait).unwrap().0;
        };
        held.bytes -= pkt.len();
        drop(held);
        if (&*dev).write(&pkt).is_ok() {
            shared.relayed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What a namespace farm runs.
pub struct Spec {
    /// Event servers.
    pub eventservers: usize,
    /// Managers.
    pub managers: usize,
    /// DNS servers (at least 1: the nodes' only resolver).
    pub dns: usize,
    /// Nodes (`node1`..).
    pub nodes: usize,
    /// Members laid out (namespace, address, certificate, configuration) but not started by
    /// [`NsFarm::up`]: a test starts them with [`NsFarm::start`].
    pub held_back: Vec<&'static str>,
    /// `--set KEY=VALUE` for every manager (e.g. Raft timings for slow links).
    pub manager_set: Vec<String>,
}

impl Default for Spec {
    fn default() -> Spec {
        Spec {
            eventservers: 3,
            managers: 3,
            dns: 1,
            nodes: 3,
            held_back: Vec::new(),
            manager_set: Vec::new(),
        }
    }
}

/// A farm whose members run each in a namespace of its own on one [`Lab`]; stopped on drop
/// (then the namespaces are removed).
pub struct NsFarm {
    /// Every member laid out (`pid` 0 until started), also written to `DIR/farm.json`.
    pub file: FarmFile,
    children: Children,
    /// The network.
    pub lab: Lab,
    dir: tempfile::TempDir,
    _turn: MutexGuard<'static, ()>,
}

impl NsFarm {
    /// Lays out and starts a farm for test number `r` on 10.r.0.0/24, and waits (at most 60 s)
    /// until every node holds every started member in its status and the farm's SIP key.
    /// `None` when network namespaces cannot be used here (a `SKIPPED:` line says why).
    pub fn up(r: u8, spec: Spec) -> Option<NsFarm> {
        assert!(spec.dns >= 1, "the nodes' resolver is the farm's own DNS");
        let turn = farm_turn();
        let mut lab = match Lab::new(r) {
            Ok(lab) => lab,
            Err(why) => {
                println!("SKIPPED: {why}");
                return None;
            }
        };
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("onehop-netns-")
            .tempdir()
            .expect("tempdir");
        let args = UpArgs {
            dir: dir.path().to_path_buf(),
            nodes: spec.nodes,
            eventservers: spec.eventservers,
            managers: spec.managers,
            dns: spec.dns,
            domain: DOMAIN.into(),
            base_ip: lab.base(),
            detach: true,
            roles: vec!["sip_proxy".into(), "registrar".into(), "media_relay".into()],
            dns_port: 53,
            timeout: 60,
            node_set: Vec::new(),
            no_demo_accounts: true,
        };
        let planned = plan::layout(&args).expect("layout");
        let certs = plan::ensure_certs(dir.path(), DOMAIN, &planned).expect("certificates");
        let bins = link_binaries_of(&farm_bin(), dir.path()).expect("binaries");
        let resolvers: Vec<String> = planned
            .iter()
            .filter(|p| p.kind == Kind::Dns)
            .map(|p| format!("\"{}:53\"", p.ip))
            .collect();
        let mut members = Vec::new();
        for p in &planned {
            lab.add_host(&p.name, p.ip);
            let config =
                plan::write_config(dir.path(), &args, p, &planned, &certs).expect("config");
            let mut cmd: Vec<String> = vec![
                "ip".into(),
                "netns".into(),
                "exec".into(),
                lab.ns(&p.name).into(),
                bins[&p.kind].display().to_string(),
                "--config".into(),
                config.display().to_string(),
            ];
            if p.kind == Kind::Manager {
                for kv in &spec.manager_set {
                    cmd.push("--set".into());
                    cmd.push(kv.clone());
                }
            }
            if p.kind == Kind::Node {
                for kv in [
                    "sip_auth=\"off\"".to_string(),
                    format!("dns_servers=[{}]", resolvers.join(", ")),
                ] {
                    cmd.push("--set".into());
                    cmd.push(kv);
                }
            }
            members.push(FarmMember {
                name: p.name.clone(),
                kind: p.kind.as_str().to_string(),
                roles: p.roles.clone(),
                pid: 0,
                ip: IpAddr::V4(p.ip),
                cmd,
                ports: member_ports(p.kind, 53),
                config,
                log: dir.path().join("logs").join(format!("{}.log", p.name)),
            });
        }
        let file = FarmFile {
            domain: DOMAIN.into(),
            members,
            dir: dir.path().to_path_buf(),
            ca: certs.ca.clone(),
            crl: certs.crl.clone(),
            monitor: Some(certs.monitor.clone()),
            admin: Some(certs.admin.clone()),
            supervisor_pid: None,
        };
        lab.enter_hub();
        let mut farm = NsFarm {
            file,
            children: Children::default(),
            lab,
            dir,
            _turn: turn,
        };
        let names: Vec<String> = farm
            .file
            .members
            .iter()
            .map(|m| m.name.clone())
            .filter(|n| !spec.held_back.contains(&n.as_str()))
            .collect();
        for n in &names {
            farm.start(n);
        }
        farm.wait_ready(&names, Duration::from_secs(60));
        println!(
            "namespace farm of {} members on {}/24 ready in {:.1} s",
            names.len(),
            farm.lab.addr(0),
            started.elapsed().as_secs_f64()
        );
        Some(farm)
    }

    /// Starts member `name` (again) with its command line; returns when it was spawned.
    pub fn start(&mut self, name: &str) -> Instant {
        let m = self.member(name).clone();
        let at = Instant::now();
        let pid = self
            .children
            .spawn(name, &m.cmd, &m.log)
            .unwrap_or_else(|e| panic!("start {name}: {e:#}"));
        for mm in &mut self.file.members {
            if mm.name == name {
                mm.pid = pid;
            }
        }
        let text = serde_json::to_string_pretty(&self.file).expect("farm.json");
        std::fs::write(self.dir.path().join("farm.json"), text).expect("write farm.json");
        at
    }

    fn wait_ready(&mut self, names: &[String], timeout: Duration) {
        let nodes: Vec<String> = names
            .iter()
            .filter(|n| self.member(n).kind == "node")
            .cloned()
            .collect();
        let want = names.len() as i64;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((name, status)) = self.children.first_exited() {
                let log = self.member(&name).log.clone();
                panic!(
                    "{name} exited during start-up ({status}); last lines of its log:\n{}",
                    tail(&log, 20)
                );
            }
            let missing: Vec<&String> = nodes
                .iter()
                .filter(|n| {
                    let m = self.metrics(n);
                    m.get("onehop_members") != Some(&want)
                        || m.get("onehop_farm_nonce_key") != Some(&1)
                })
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "farm not ready in {timeout:?}: {missing:?} do not hold all {want} members and the SIP key"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A member's entry.
    pub fn member(&self, name: &str) -> &FarmMember {
        self.file
            .member(name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }

    /// Names of the members of a kind.
    pub fn names(&self, kind: &str) -> Vec<String> {
        self.file
            .members
            .iter()
            .filter(|m| m.kind == kind)
            .map(|m| m.name.clone())
            .collect()
    }

    /// A member's address.
    pub fn ip(&self, name: &str) -> IpAddr {
        self.member(name).ip
    }

    /// Sends `sig` to a member.
    pub fn signal(&self, name: &str, sig: Signal) {
        let pid = self.member(name).pid;
        assert!(pid != 0, "{name} was not started");
        kill(Pid::from_raw(pid as i32), sig).unwrap_or_else(|e| panic!("kill {name}: {e}"));
    }

    /// Every `onehop_*` figure of a member's metrics (empty when it does not answer).
    pub fn metrics(&self, name: &str) -> BTreeMap<String, i64> {
        scrape(SocketAddr::new(self.ip(name), 9100)).unwrap_or_default()
    }

    /// A lookup-interface client for a node.
    pub fn lookup(&self, node: &str) -> Lookup {
        Lookup::connect(SocketAddr::new(self.ip(node), 9500))
    }

    /// Lookup clients for the nodes named.
    pub fn lookups(&self, nodes: &[String]) -> Vec<(String, Lookup)> {
        nodes.iter().map(|n| (n.clone(), self.lookup(n))).collect()
    }

    /// A node's SIP address.
    pub fn sip(&self, node: &str) -> SocketAddr {
        SocketAddr::new(self.ip(node), 5060)
    }

    /// The `(term, version)` of the status member `name` holds: a node's and a manager's from
    /// their metrics, a DNS server's as its zone serial (compare with [`serial`]).
    pub fn held(&self, name: &str) -> Option<(u64, u64)> {
        let m = self.metrics(name);
        match self.member(name).kind.as_str() {
            "dns" => m.get("onehop_dns_zone_serial").map(|s| (0, *s as u64)),
            _ => Some((
                *m.get("onehop_status_term")? as u64,
                *m.get("onehop_status_version")? as u64,
            )),
        }
    }
}

/// One network status as a monitor received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Its term.
    pub term: u64,
    /// Its version.
    pub version: u64,
    /// The manager that published it.
    pub manager: String,
    /// Its members' names.
    pub members: Vec<String>,
    /// Its members.
    pub full: Vec<onehop_overlay::status::Member>,
}

/// Records every network status published, as a monitor in the hub receives it.
pub struct Recorder {
    client: onehop_overlay::client::EventClient,
    seen: Arc<Mutex<Vec<Seen>>>,
    _rt: tokio::runtime::Runtime,
}

impl Recorder {
    /// Everything received so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The statuses a receiver applies (each greater than the one before), in order.
    pub fn applied(&self) -> Vec<Seen> {
        let mut out: Vec<Seen> = Vec::new();
        for s in self.seen() {
            if out
                .last()
                .is_none_or(|l| (s.term, s.version) > (l.term, l.version))
            {
                out.push(s);
            }
        }
        out
    }

    /// Members that left one applied status for the next, with the status they vanished in.
    pub fn removals(&self) -> Vec<(String, u64, u64)> {
        let applied = self.applied();
        applied
            .windows(2)
            .flat_map(|w| {
                w[0].members
                    .iter()
                    .filter(|m| !w[1].members.contains(m))
                    .map(|m| (m.clone(), w[1].term, w[1].version))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// What changed from one applied status to the next: `(term, version, what)`, `what`
    /// naming each member that left, came, or changed (and in what).
    pub fn changes(&self) -> Vec<(u64, u64, String)> {
        let applied = self.applied();
        applied
            .windows(2)
            .map(|w| {
                let mut what = Vec::new();
                for m in &w[0].full {
                    match w[1].full.iter().find(|n| n.name == m.name) {
                        None => what.push(format!("{} left", m.name)),
                        Some(n) if n != m => {
                            let mut fields = Vec::new();
                            if n.since != m.since {
                                fields.push(format!("since {} -> {}", m.since, n.since));
                            }
                            if n.ip != m.ip {
                                fields.push(format!("ip {} -> {}", m.ip, n.ip));
                            }
                            if n.roles != m.roles {
                                fields.push("roles".to_string());
                            }
                            if n.endpoints != m.endpoints {
                                fields.push("endpoints".to_string());
                            }
                            what.push(format!("{} changed: {}", m.name, fields.join(", ")));
                        }
                        Some(_) => {}
                    }
                }
                for n in &w[1].full {
                    if !w[0].members.contains(&n.name) {
                        what.push(format!("{} came", n.name));
                    }
                }
                if w[0].manager != w[1].manager {
                    what.push(format!("manager {} -> {}", w[0].manager, w[1].manager));
                }
                (w[1].term, w[1].version, what.join("; "))
            })
            .collect()
    }

    /// Every term seen with the managers that published in it.
    pub fn publishers(&self) -> BTreeMap<u64, std::collections::BTreeSet<String>> {
        let mut by_term: BTreeMap<u64, std::collections::BTreeSet<String>> = BTreeMap::new();
        for s in self.seen() {
            by_term.entry(s.term).or_default().insert(s.manager);
        }
        by_term
    }

    /// Stops the client.
    pub fn stop(&self) {
        self.client.stop();
    }
}

impl NsFarm {
    /// Starts recording the statuses published (a monitor client on every event server).
    pub fn record_statuses(&self) -> Recorder {
        use onehop_overlay::client::{ClientEvent, ClientOptions, EventClient};
        use onehop_overlay::net::{self, ConnTable, Timing};
        use onehop_overlay::tls::{Credentials, TlsFiles};
        use onehop_overlay::wire::{Payload, Topic};
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let mon = self.file.monitor.clone().expect("monitor certificate");
        let tls = TlsFiles {
            crl: None,
            ..self.file.client_tls(&mon)
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let es = self.file.eventservers();
        let local = SocketAddr::new(IpAddr::V4(self.lab.hub_ip()), 0);
        let client = rt.block_on(async move {
            let creds = Credentials::load(&tls).expect("monitor credentials");
            let ep = net::endpoint(local, &creds, &Default::default(), Timing::default(), None)
                .expect("endpoint");
            let opts = ClientOptions {
                eventservers: es,
                subscribe: vec![Topic::Network],
                ..Default::default()
            };
            let (client, mut rx) = EventClient::start(ep, opts, ConnTable::default(), None);
            tokio::spawn(async move {
                while let Some(ev) = rx.recv().await {
                    if let ClientEvent::Event(ev) = ev {
                        if let Payload::Network(s) = &ev.payload {
                            s2.lock().unwrap().push(Seen {
                                term: s.term,
                                version: s.version,
                                manager: s.manager.clone(),
                                members: s.members.iter().map(|m| m.name.clone()).collect(),
                                full: s.members.iter().map(|m| (**m).clone()).collect(),
                            });
                        }
                    }
                }
            });
            client
        });
        Recorder {
            client,
            seen,
            _rt: rt,
        }
    }
}

/// The DNS zone serial of a status `(term, version)`, as [`NsFarm::held`] reports a DNS server.
pub fn serial((term, version): (u64, u64)) -> (u64, u64) {
    (0, u64::from(onehop_dns::serial_of(term, version)))
}

impl Drop for NsFarm {
    fn drop(&mut self) {
        self.lab.leave_hub();
        // Thawed first: a stopped process cannot take SIGTERM.
        for m in &self.file.members {
            if m.pid != 0 {
                let _ = kill(Pid::from_raw(m.pid as i32), Signal::SIGCONT);
            }
        }
        self.children.stop_all(Duration::from_secs(3));
        crate::harness::keep_logs_if_failing(self.dir.path());
    }
}

/// A SIP client over UDP (from the hub), for REGISTERs and binding queries.
pub struct SipClient {
    sock: UdpSocket,
    local: SocketAddr,
    seq: u64,
}

impl SipClient {
    /// A client bound to `ip` (the hub's address), any port.
    pub fn bind(ip: Ipv4Addr) -> SipClient {
        let sock = UdpSocket::bind((ip, 0)).expect("bind SIP client");
        let local = sock.local_addr().expect("local address");
        SipClient {
            sock,
            local,
            seq: 0,
        }
    }

    /// The contact this client registers for `user`.
    pub fn contact(&self, user: &str) -> String {
        format!("sip:{user}@{}", self.local)
    }

    /// Sends a REGISTER for `user` through `proxy` (with this client's contact, or none: a
    /// query) and returns the final response (retransmitted every 500 ms, at most 5 s).
    pub fn register(&mut self, proxy: SocketAddr, user: &str, contact: bool) -> Option<String> {
        self.seq += 1;
        let id = format!("{user}-{}-{}", self.local.port(), self.seq);
        let contact_line = if contact {
            format!("Contact: <{}>\r\nExpires: 600\r\n", self.contact(user))
        } else {
            String::new()
        };
        let msg = format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-{id};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@{DOMAIN}>;tag={id}\r\n\
             To: <sip:{user}@{DOMAIN}>\r\n\
             Call-ID: {id}@netns\r\n\
             CSeq: {seq} REGISTER\r\n\
             {contact_line}\
             Content-Length: 0\r\n\r\n",
            local = self.local,
            seq = self.seq
        );
        let call_id = format!("Call-ID: {id}@netns");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = vec![0u8; 65_535];
        while Instant::now() < deadline {
            self.sock.send_to(msg.as_bytes(), proxy).expect("send");
            let resend = Instant::now() + Duration::from_millis(500);
            while Instant::now() < resend {
                let left = resend.saturating_duration_since(Instant::now());
                self.sock
                    .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                    .expect("timeout");
                let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                    break;
                };
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if text.contains(&call_id) && !text.starts_with("SIP/2.0 1") {
                    return Some(text);
                }
            }
        }
        None
    }
}

/// The status line's code of a response.
pub fn status_code(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The contact URIs a REGISTER response lists.
pub fn contacts(response: &str) -> Vec<String> {
    response
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            let name = name.trim();
            (name.eq_ignore_ascii_case("contact") || name == "m").then_some(value)
        })
        .flat_map(|v| v.split(','))
        .filter_map(|c| {
            let (_, rest) = c.split_once('<')?;
            Some(rest.split('>').next()?.to_string())
        })
        .collect()
}

/// `members ROLE` at every node given, by node.
pub fn rings(lookups: &mut [(String, Lookup)], role: &str) -> BTreeMap<String, String> {
    lookups
        .iter_mut()
        .map(|(n, l)| (n.clone(), l.ask(&format!("members {role}"))))
        .collect()
}

/// The names in a `members ROLE` answer (`NAME=IP ...`).
pub fn names_in(answer: &str) -> Vec<String> {
    let mut v: Vec<String> = answer
        .split_whitespace()
        .filter_map(|p| p.split_once('=').map(|(n, _)| n.to_string()))
        .collect();
    v.sort();
    v
}

/// Polls until `f` holds, at most `timeout`; the time it took from `since`.
pub fn until(since: Instant, timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    wait_for(timeout, || f().then(|| since.elapsed()))
}

/// The harness itself: a namespace per host, the bridge, and each fault doing what it says
/// (measured with UDP between two hosts, so a broken fault cannot pass for a healthy farm).
#[test]
fn netns_lab_cuts_drops_and_delays_between_hosts() {
    let _turn = farm_turn();
    let mut lab = match Lab::new(110) {
        Ok(lab) => lab,
        Err(why) => {
            println!("SKIPPED: {why}");
            return;
        }
    };
    let (a, b) = (lab.addr(1), lab.addr(2));
    lab.add_host("a", a);
    lab.add_host("b", b);
    // An echo server on b, and a client on a that sends `n` datagrams one at a time and
    // returns how many came back and the median round trip.
    let echo = in_ns(lab.ns("b"), move || {
        UdpSocket::bind((b, 7000)).expect("bind echo")
    });
    echo.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !stop2.load(Ordering::Relaxed) {
            if let Ok((n, from)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..n], from);
            }
        }
    });
    let client = in_ns(lab.ns("a"), move || {
        UdpSocket::bind((a, 0)).expect("bind client")
    });
    let probe = |n: usize, wait: Duration| -> (usize, Duration) {
        let mut rtts = Vec::new();
        let mut buf = [0u8; 64];
        client.set_read_timeout(Some(wait)).unwrap();
        for i in 0..n {
            let msg = (i as u64).to_be_bytes();
            let sent = Instant::now();
            // A cut refuses the datagram at once (EPERM): lost all the same.
            if client.send_to(&msg, (b, 7000)).is_err() {
                continue;
            }
            // Answers to earlier (late) datagrams are skipped.
            while let Ok((len, _)) = client.recv_from(&mut buf) {
                if buf[..len] == msg {
                    rtts.push(sent.elapsed());
                    break;
                }
            }
        }
        rtts.sort();
        let median = rtts.get(rtts.len() / 2).copied().unwrap_or_default();
        (rtts.len(), median)
    };
    let (ok, rtt) = probe(20, Duration::from_millis(500));
    println!("healthy: {ok}/20 answered, median round trip {rtt:?}");
    assert_eq!(ok, 20);
    assert!(
        rtt < Duration::from_millis(20),
        "healthy link slow: {rtt:?}"
    );

    lab.cut("a", "b");
    let (ok, _) = probe(5, Duration::from_millis(100));
    println!("cut: {ok}/5 answered");
    assert_eq!(ok, 0);
    lab.heal();
    assert_eq!(probe(5, Duration::from_millis(500)).0, 5, "healed");

    lab.isolate("b");
    assert_eq!(probe(5, Duration::from_millis(100)).0, 0, "isolated");
    lab.heal();

    // 10 % loss at each end: a round trip survives with probability 0.81.
    lab.loss("a", 10);
    lab.loss("b", 10);
    // 500 round trips: 405 expected, a standard deviation of 8.8.
    let (ok, _) = probe(500, Duration::from_millis(20));
    println!("10% loss each way: {ok}/500 round trips answered");
    assert!(
        (360..=450).contains(&ok),
        "expected about 405 of 500 round trips with 10% loss each way, got {ok}"
    );
    lab.heal();

    // 50 ms each way: a round trip of about 100 ms, and only through the relay.
    lab.delay("a", Duration::from_millis(50));
    lab.delay("b", Duration::from_millis(50));
    let (ok, rtt) = probe(10, Duration::from_secs(1));
    let (relayed, dropped) = lab.relay_counts();
    println!("50 ms each way: {ok}/10 answered, median round trip {rtt:?}; relay passed {relayed}, dropped {dropped}");
    assert_eq!(ok, 10);
    assert!(
        rtt >= Duration::from_millis(100) && rtt < Duration::from_millis(300),
        "round trip {rtt:?} with 50 ms each way"
    );
    assert!(relayed >= 20, "the relay passed {relayed} packets");
    lab.undelay("a");
    lab.undelay("b");
    let (ok, rtt) = probe(10, Duration::from_millis(500));
    assert_eq!(ok, 10);
    assert!(rtt < Duration::from_millis(20), "undelayed: {rtt:?}");

    // Nothing leaves the test's network: no route beyond it.
    let outside = in_ns(lab.ns("a"), || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.send_to(b"x", "192.0.2.1:9").map_err(|e| e.kind())
    });
    println!("a datagram to an address outside the test's network: {outside:?}");
    assert!(outside.is_err(), "a host could send beyond its network");

    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    drop(lab);
    let left = run("ip", &["netns", "list"], None).unwrap_or_default();
    assert!(
        !left.lines().any(|l| l.starts_with("oh110-")),
        "namespaces left behind: {left}"
    );
}
