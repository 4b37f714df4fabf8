//! Starting farms of real processes and talking to them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use onehop_overlay::farmfile::FarmFile;

/// Farms start many processes on a 2-core machine: one at a time keeps timings honest.
static FARM_LOCK: Mutex<()> = Mutex::new(());

/// Takes this test's turn to run a farm (see [`FARM_LOCK`]); for farms started without
/// [`Farm::up`] (the network-namespace farms of `netns.rs`).
pub fn farm_turn() -> MutexGuard<'static, ()> {
    FARM_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The farm launcher (which also runs every daemon through its links): this build's, or the
/// one named by `ONEHOP_FARM_BIN` (to run the tests against another build, say the one before
/// a fix, to see a test fail).
pub fn farm_bin() -> PathBuf {
    match std::env::var_os("ONEHOP_FARM_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_onehop-farm")),
    }
}

/// The nodes of a test farm do not authenticate SIP unless the test asks for it (with
/// `--node-set sip_auth="digest"`): most tests register AORs that no account backs, and are
/// about routing, replication and transport. The tests of authentication are in `auth.rs`.
fn open_sip(args: &[&str]) -> Vec<&'static str> {
    if args.iter().any(|a| a.starts_with("sip_auth=")) {
        Vec::new()
    } else {
        vec!["--node-set", "sip_auth=\"off\""]
    }
}

/// A farm started with `--detach`, stopped on drop.
pub struct Farm {
    pub dir: tempfile::TempDir,
    pub file: FarmFile,
    extra: Vec<Child>,
    _lock: Option<MutexGuard<'static, ()>>,
}

impl Farm {
    /// Starts a farm on addresses from `base_ip` up with the extra `up` arguments.
    pub fn up(base_ip: &str, args: &[&str]) -> Farm {
        let lock = FARM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        Farm::start(base_ip, args, Some(lock))
    }

    /// [`Farm::up`], then waits (at most 10 s) until every node lists every node in its ring
    /// of each of `roles` (a node without the status yet answers SIP with 503).
    pub fn up_with_rings(base_ip: &str, args: &[&str], roles: &[&str]) -> Farm {
        let farm = Farm::up(base_ip, args);
        farm.wait_rings(roles);
        farm
    }

    /// Waits (at most 10 s) until every node lists every node in its ring of each of
    /// `roles`.
    pub fn wait_rings(&self, roles: &[&str]) {
        let nodes = self.names("node");
        let mut lookups = self.lookups();
        for role in roles {
            let all = |a: &str| nodes.iter().all(|n| a.contains(&format!("{n}=")));
            until_all_nodes(
                &mut lookups,
                role,
                Instant::now(),
                Duration::from_secs(10),
                all,
            )
            .unwrap_or_else(|| panic!("not every node lists every {role}"));
        }
    }

    /// A second farm beside this one (for tests that need two), started under this one's turn.
    pub fn beside(&self, base_ip: &str, args: &[&str]) -> Farm {
        Farm::start(base_ip, args, None)
    }

    /// [`Farm::up`] in a directory that `prepare` fills first (a CA of its own, say: `up`
    /// keeps what it finds).
    pub fn up_prepared(base_ip: &str, args: &[&str], prepare: impl FnOnce(&Path)) -> Farm {
        let lock = FARM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        Farm::start_with(base_ip, args, Some(lock), prepare)
    }

    fn start(base_ip: &str, args: &[&str], lock: Option<MutexGuard<'static, ()>>) -> Farm {
        Farm::start_with(base_ip, args, lock, |_| {})
    }

    fn start_with(
        base_ip: &str,
        args: &[&str],
        lock: Option<MutexGuard<'static, ()>>,
        prepare: impl FnOnce(&Path),
    ) -> Farm {
        let dir = tempfile::Builder::new()
            .prefix("onehop-it-")
            .tempdir()
            .expect("tempdir");
        prepare(dir.path());
        let started = Instant::now();
        let out = Command::new(farm_bin())
            .args([
                "up",
                "--detach",
                "--timeout",
                "60",
                "--base-ip",
                base_ip,
                "--dir",
            ])
            .arg(dir.path())
            .args(args)
            .args(open_sip(args))
            .output()
            .expect("run onehop-farm up");
        assert!(
            out.status.success(),
            "onehop-farm up failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let file = FarmFile::load(dir.path()).expect("farm.json");
        println!(
            "farm of {} members at {base_ip} ready in {:?}",
            file.members.len(),
            started.elapsed()
        );
        Farm {
            dir,
            file,
            extra: Vec::new(),
            _lock: lock,
        }
    }

    /// The farm directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Names of members of a kind.
    pub fn names(&self, kind: &str) -> Vec<String> {
        self.file
            .members
            .iter()
            .filter(|m| m.kind == kind)
            .map(|m| m.name.clone())
            .collect()
    }

    /// A member's pid.
    pub fn pid(&self, name: &str) -> u32 {
        self.file.member(name).expect("member").pid
    }

    /// A member's address.
    pub fn ip(&self, name: &str) -> IpAddr {
        self.file.member(name).expect("member").ip
    }

    /// Sends a signal to a member.
    pub fn signal(&self, name: &str, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.pid(name).to_string()])
            .status()
            .expect("kill");
        assert!(st.success(), "kill {sig} {name}");
    }

    /// Stops `name` (SIGTERM, waiting at most 10 s for it to exit), adds `set` to its config
    /// file and starts it again with its command line from farm.json.
    pub fn restart_with_config(&mut self, name: &str, set: &[(&str, toml::Value)]) {
        let m = self.file.member(name).expect("member").clone();
        let text = std::fs::read_to_string(&m.config).expect("config");
        let mut cfg: toml::Table = toml::from_str(&text).expect("toml");
        for (k, v) in set {
            cfg.insert((*k).into(), v.clone());
        }
        std::fs::write(&m.config, toml::to_string(&cfg).unwrap()).expect("write config");
        self.signal(name, "-TERM");
        // `restart` waits for it to exit.
        self.restart(name);
    }

    /// Restarts a member with its exact command line from farm.json; the new process is
    /// stopped with the farm. The member's previous process must be ending (killed or
    /// stopped): its exit is waited for (at most 10 s), since a signal is delivered before the
    /// process is gone, and until then its sockets are bound (a node started again at once
    /// could not bind its lookup port on a loaded machine, and died).
    pub fn restart(&mut self, name: &str) {
        let m = self.file.member(name).expect("member").clone();
        assert!(
            wait_for(Duration::from_secs(10), || (!alive(m.pid)).then_some(())).is_some(),
            "restart {name}: its previous process {} still runs",
            m.pid
        );
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&m.log)
            .expect("log");
        let child = Command::new(&m.cmd[0])
            .args(&m.cmd[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("restart");
        let pid = child.id();
        self.extra.push(child);
        for mm in &mut self.file.members {
            if mm.name == name {
                mm.pid = pid;
            }
        }
    }

    /// Runs one of the farm's programs (`onehop-certs`, `onehop-monitor`, ...).
    pub fn tool(&self, prog: &str, args: &[&str]) -> std::process::Output {
        Command::new(self.path().join("bin").join(prog))
            .args(args)
            .output()
            .expect("run tool")
    }

    /// Revokes `name`'s certificate on the farm's CA (`onehop-certs revoke`); with `publish`,
    /// also pushes the new list through the farm's event servers (`--publish --farm`).
    pub fn revoke(&self, name: &str, publish: bool) -> std::process::Output {
        let ca = self.path().join("ca");
        let farm = self.path().to_str().unwrap().to_string();
        let mut args = vec!["revoke", "--dir", ca.to_str().unwrap(), "--name", name];
        if publish {
            args.extend(["--publish", "--farm", &farm]);
        }
        self.tool("onehop-certs", &args)
    }

    /// Issues a certificate from the farm's CA (extra `onehop-certs issue` arguments allowed).
    pub fn issue(&self, name: &str, kind: &str, extra: &[&str]) {
        let ca = self.path().join("ca");
        let certs = self.path().join("certs");
        let mut args = vec![
            "issue",
            "--dir",
            ca.to_str().unwrap(),
            "--name",
            name,
            "--kind",
            kind,
            "--out",
            certs.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = self.tool("onehop-certs", &args);
        assert!(
            out.status.success(),
            "issue {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts an extra node `name` on `ip` with a fresh certificate for `roles`; returns when
    /// the process is spawned (not when it has joined).
    pub fn add_node(&mut self, name: &str, ip: &str, roles: &str) -> Instant {
        self.add_node_with(name, ip, roles, &[], false)
    }

    /// [`Farm::add_node`], with extra `onehop-certs issue` arguments for its certificate
    /// (`--not-after`, say), and its metrics served on `ip` when `metrics` is set.
    pub fn add_node_with(
        &mut self,
        name: &str,
        ip: &str,
        roles: &str,
        issue: &[&str],
        metrics: bool,
    ) -> Instant {
        let mut args = vec!["--roles", roles, "--ip", ip];
        args.extend_from_slice(issue);
        self.issue(name, "node", &args);
        let template = self
            .file
            .members
            .iter()
            .find(|m| m.kind == "node")
            .expect("a node")
            .clone();
        let text = std::fs::read_to_string(&template.config).expect("node config");
        let mut cfg: toml::Table = toml::from_str(&text).expect("toml");
        cfg.insert("ip".into(), toml::Value::String(ip.into()));
        cfg.remove("metrics");
        if metrics {
            cfg.insert("metrics".into(), toml::Value::String(format!("{ip}:9100")));
        }
        let tls = cfg
            .get_mut("tls")
            .and_then(|t| t.as_table_mut())
            .expect("tls");
        let certs = self.path().join("certs");
        tls.insert(
            "cert".into(),
            certs
                .join(format!("{name}.pem"))
                .display()
                .to_string()
                .into(),
        );
        tls.insert(
            "key".into(),
            certs
                .join(format!("{name}.key"))
                .display()
                .to_string()
                .into(),
        );
        let path = self.path().join("config").join(format!("{name}.toml"));
        std::fs::write(&path, toml::to_string(&cfg).unwrap()).expect("write config");
        let log = std::fs::File::create(self.path().join("logs").join(format!("{name}.log")))
            .expect("log");
        let started = Instant::now();
        let child = Command::new(&template.cmd[0])
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn node");
        let mut member = template.clone();
        member.name = name.into();
        member.pid = child.id();
        member.ip = ip.parse().unwrap();
        member.config = path;
        member.log = self.path().join("logs").join(format!("{name}.log"));
        self.file.members.push(member);
        self.extra.push(child);
        started
    }

    /// A member's log so far.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    /// A lookup-interface client for a node.
    pub fn lookup(&self, node: &str) -> Lookup {
        Lookup::connect(SocketAddr::new(self.ip(node), 9500))
    }

    /// Lookup clients for every node of the farm file.
    pub fn lookups(&self) -> Vec<(String, Lookup)> {
        self.names("node")
            .into_iter()
            .map(|n| {
                let l = self.lookup(&n);
                (n, l)
            })
            .collect()
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        for c in &mut self.extra {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new(farm_bin())
            .args(["down", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .status();
        keep_logs_if_failing(self.dir.path());
    }
}

/// In a test that is failing (panicking), copies `dir/logs` of its farm to
/// `onehop-failed-NAME` in the temporary directory, where a person can read them.
pub fn keep_logs_if_failing(dir: &Path) {
    if !std::thread::panicking() {
        return;
    }
    let keep = std::env::temp_dir().join(format!(
        "onehop-failed-{}",
        dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = Command::new("cp")
        .arg("-r")
        .arg(dir.join("logs"))
        .arg(&keep)
        .status();
    eprintln!("logs of the failed farm kept in {}", keep.display());
}

/// A pipelining client of the lookup interface.
pub struct Lookup {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Lookup {
    /// Connects (retrying for up to 5 s).
    pub fn connect(addr: SocketAddr) -> Lookup {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(s) => {
                    s.set_nodelay(true).ok();
                    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                    let r = BufReader::new(s.try_clone().unwrap());
                    return Lookup { w: s, r };
                }
                Err(e) if Instant::now() > deadline => panic!("connect {addr}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Sends every request, then reads one answer per request.
    pub fn ask_many(&mut self, requests: &[String]) -> Vec<String> {
        let mut buf = String::new();
        for r in requests {
            buf.push_str(r);
            buf.push_str("\r\n");
        }
        self.w.write_all(buf.as_bytes()).expect("write");
        (0..requests.len())
            .map(|_| {
                let mut line = String::new();
                self.r.read_line(&mut line).expect("read");
                assert!(
                    line.ends_with("\r\n"),
                    "answer not CRLF-terminated: {line:?}"
                );
                line.trim_end().to_string()
            })
            .collect()
    }

    /// One request, one answer.
    pub fn ask(&mut self, request: &str) -> String {
        self.ask_many(&[request.to_string()]).remove(0)
    }

    /// `(term, version, manager)` from `status`.
    pub fn status(&mut self) -> Option<(u64, u64, String)> {
        parse_status(&self.ask("status"))
    }
}

/// Where the registrar copies of `aors` are, seen through the lookup interfaces (port 9500)
/// of `nodes` (name and address): `Ok` when every node holds the same status and each AOR
/// is held by exactly its two replicas under it (the `replicas` and `holds` verbs), the
/// hand-off complete; otherwise what is wrong (what each node holds, a few misplaced AORs,
/// the statuses).
pub fn placement(nodes: &[(&str, IpAddr)], aors: &[String]) -> Result<(), String> {
    let lookup = |ip: IpAddr| Lookup::connect(SocketAddr::new(ip, 9500));
    let statuses: std::collections::BTreeSet<_> =
        nodes.iter().map(|(_, ip)| lookup(*ip).status()).collect();
    if statuses.len() != 1 || statuses.contains(&None) {
        return Err(format!("statuses differ: {statuses:?}"));
    }
    let by_ip: BTreeMap<String, &str> = nodes.iter().map(|(n, ip)| (ip.to_string(), *n)).collect();
    let asks: Vec<String> = aors
        .iter()
        .map(|a| format!("replicas registrar for {a}"))
        .collect();
    let want: Vec<std::collections::BTreeSet<&str>> = lookup(nodes[0].1)
        .ask_many(&asks)
        .iter()
        .map(|line| {
            line.split_whitespace()
                .map(|ip| by_ip.get(ip).copied().unwrap_or("?"))
                .collect()
        })
        .collect();
    let holds: Vec<String> = aors
        .iter()
        .map(|a| format!("holds registrar for {a}"))
        .collect();
    let mut have = vec![std::collections::BTreeSet::new(); aors.len()];
    let mut per_node = Vec::new();
    for (n, ip) in nodes {
        let mut held = 0;
        for (i, a) in lookup(*ip).ask_many(&holds).iter().enumerate() {
            if a == "Yes" {
                have[i].insert(*n);
                held += 1;
            }
        }
        per_node.push(format!("{n} holds {held}"));
    }
    let wrong: Vec<usize> = (0..aors.len())
        .filter(|&i| want[i].len() != 2 || want[i] != have[i])
        .collect();
    if wrong.is_empty() {
        return Ok(());
    }
    let examples: Vec<String> = wrong
        .iter()
        .take(3)
        .map(|&i| format!("{} on {:?}, wanted {:?}", aors[i], have[i], want[i]))
        .collect();
    Err(format!(
        "{} of {} AORs misplaced ({}; {}) under {statuses:?}",
        wrong.len(),
        aors.len(),
        per_node.join(", "),
        examples.join("; ")
    ))
}

/// Parses `term T version V manager NAME`.
pub fn parse_status(line: &str) -> Option<(u64, u64, String)> {
    let w: Vec<&str> = line.split(' ').collect();
    match w.as_slice() {
        ["term", t, "version", v, "manager", m] => {
            Some((t.parse().ok()?, v.parse().ok()?, m.to_string()))
        }
        _ => None,
    }
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Polls every node's `members ROLE` until `pred` holds on all of them; returns the time it
/// took from `since`.
pub fn until_all_nodes(
    lookups: &mut [(String, Lookup)],
    role: &str,
    since: Instant,
    timeout: Duration,
    pred: impl Fn(&str) -> bool,
) -> Option<Duration> {
    let q = format!("members {role}");
    wait_for(timeout, || {
        lookups
            .iter_mut()
            .all(|(_, l)| pred(&l.ask(&q)))
            .then(|| since.elapsed())
    })
}

/// A test-side budget check: prints the figure, asserts it against `budget` times `slack`.
pub fn within_budget(
    what: &str,
    measured: Option<Duration>,
    budget: Duration,
    slack: f64,
) -> Duration {
    let limit = budget.mul_f64(slack);
    match measured {
        Some(d) => {
            println!(
                "BUDGET {what}: {:.1} ms (design budget {} ms, asserted <= {} ms)",
                d.as_secs_f64() * 1e3,
                budget.as_millis(),
                limit.as_millis()
            );
            assert!(d <= limit, "{what} took {d:?}, over {limit:?}");
            d
        }
        None => panic!("{what} did not happen at all"),
    }
}

impl Farm {
    /// Member names in the status a fresh `onehop-monitor --json` prints.
    pub fn monitor_names(&self) -> Option<Vec<String>> {
        let out = self.tool(
            "onehop-monitor",
            &[
                "--farm",
                self.path().to_str().unwrap(),
                "--json",
                "--timeout",
                "3",
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(
            v["members"]
                .as_array()?
                .iter()
                .filter_map(|m| m["name"].as_str().map(String::from))
                .collect(),
        )
    }

    /// Waits until `name`'s log contains `text`.
    pub fn log_shows(&self, name: &str, text: &str, timeout: Duration) -> bool {
        wait_for(timeout, || self.log(name).contains(text).then_some(())).is_some()
    }
}

/// A QUIC client that trusts the farm's CA for the server but presents any certificate (so a
/// test can show the server refusing it), with no checks of its own on what it presents.
pub async fn raw_connect(
    ca_pem: &Path,
    cert_pem: &Path,
    key_pem: &Path,
    server: SocketAddr,
) -> Result<quinn::Connection, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca_pem).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let cert = CertificateDer::from_pem_file(cert_pem).map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_file(key_pem).map_err(|e| e.to_string())?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert], key)
        .map_err(|e| e.to_string())?;
    tls.alpn_protocols = vec![b"onehop/1".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut ep =
        quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
    ep.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(quic)));
    let conn = ep
        .connect(server, &server.ip().to_string())
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// Opens the session stream and sends `bytes`; returns what happened when reading the answer:
/// `Ok(first frame)` or `Err(why the stream or connection ended)`.
pub async fn send_raw(conn: &quinn::Connection, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(bytes).await.map_err(|e| e.to_string())?;
    // Read frames until something other than the welcome arrives or the stream ends.
    let mut frames = Vec::new();
    loop {
        match tokio::time::timeout(
            Duration::from_secs(3),
            onehop_overlay::wire::read_frame(&mut recv, 1 << 20),
        )
        .await
        {
            Ok(Ok(Some(f))) => {
                let msg: Result<onehop_overlay::wire::ServerMsg, _> =
                    onehop_overlay::wire::decode_body(&f);
                match msg {
                    Ok(onehop_overlay::wire::ServerMsg::Welcome { .. }) => frames.push(f),
                    _ => return Ok(f),
                }
            }
            Ok(Ok(None)) => return Err("stream finished".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("no answer in 3 s".into()),
        }
    }
}

/// A node's SIP address.
pub fn sip_addr(farm: &Farm, node: &str) -> SocketAddr {
    farm.file
        .member(node)
        .and_then(|m| m.addr("sip"))
        .unwrap_or_else(|| panic!("{node} serves no SIP"))
}

/// An address of the farm's /24 (`127.0.N.last`), for SIPp and raw clients.
pub fn client_ip(farm: &Farm, last: u8) -> IpAddr {
    match farm.ip("node1") {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            IpAddr::from([o[0], o[1], o[2], last])
        }
        IpAddr::V6(_) => panic!("IPv4 farms only"),
    }
}

pub use onehop_farm::flood::vm_rss_kib;

/// Peak resident memory (VmHWM) of a process in KiB; `None` when it cannot be read.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    onehop_farm::flood::proc_status_kib(pid, "VmHWM")
}

/// Every `onehop_*` figure a daemon serves on `addr`.
pub fn scrape(addr: SocketAddr) -> Option<BTreeMap<String, i64>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    Some(
        body.lines()
            .filter(|l| l.starts_with("onehop_"))
            .filter_map(|l| {
                let (name, v) = l.rsplit_once(' ')?;
                Some((name.to_string(), v.parse().ok()?))
            })
            .collect(),
    )
}

/// Whether a process is alive: some thread of it not gone and not a zombie.
pub fn alive(pid: u32) -> bool {
    // Every thread, not the main one alone: after a SIGKILL the main thread can be a zombie
    // while another thread is still exiting and holds the process's sockets (a node
    // restarted then could not bind its lookup port: "Address already in use").
    let running = |stat: &str| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    };
    match std::fs::read_dir(format!("/proc/{pid}/task")) {
        Err(_) => false,
        Ok(tasks) => tasks
            .flatten()
            .any(|t| std::fs::read_to_string(t.path().join("stat")).is_ok_and(|s| running(&s))),
    }
}

/// `onehop-monitor --follow`, its lines gathered as they come.
pub struct Follower {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Follower {
    /// Starts it on `farm`, for at most `secs` seconds.
    pub fn start(farm: &Farm, secs: u64) -> Follower {
        let mut child = Command::new(farm.path().join("bin").join("onehop-monitor"))
            .args(["--farm", farm.path().to_str().unwrap(), "--follow"])
            .args(["--timeout", &secs.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("monitor");
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Follower { child, lines }
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits (at most `wait`) for a line containing every one of `words`.
    pub fn saw(&self, words: &[&str], wait: Duration) -> Option<String> {
        wait_for(wait, || {
            self.lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| words.iter().all(|w| l.contains(w)))
                .cloned()
        })
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
