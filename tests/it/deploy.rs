//! The multi-host deployment guide (`docs/deploy.md`) and the systemd units
//! (`examples/systemd/`) held to the code:
//!
//! - the guide's certificate commands run as written (paths moved under a temporary
//!   directory), and each per-host configuration passes its daemon's `--check-config` with
//!   those certificates, whose kind and address fit the configuration;
//! - every unit starts a real daemon with flags that daemon accepts, on the guide's
//!   configuration paths and state directories, and passes `systemd-analyze verify` (when the
//!   tool is there);
//! - the guide's nftables file parses (`nft -c`, when the tool is there);
//! - the nine-host farm of the guide, moved onto loopback addresses, forms, serves the SIP
//!   domain's NAPTR/SRV records, and keeps every registration through the rolling upgrade the
//!   guide describes, step by step with the guide's checks; the guide's certificate rotation and
//!   revocation do what it says; its parent-zone delegation names the name servers the farm
//!   answers with, and its console examples (`dig +short`, the lookup interface) print what the
//!   guide shows.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};

use crate::harness::{farm_bin, parse_status, placement, Farm, Lookup};

/// The daemons a configuration file or a unit can be for.
const DAEMONS: [&str; 4] = ["eventserver", "manager", "dns", "node"];

/// The SIP domain of the guide's example farm.
const DOMAIN: &str = "sip.example.com";

/// The guide's farm network, and where the live test puts it instead (one loopback address per
/// host: 192.0.2.N becomes 127.0.140.N).
const DOC_NET: &str = "192.0.2.";
const LIVE_NET: &str = "127.0.140.";

/// Where the live test's SIP client sends from.
const CLIENT_IP: &str = "127.0.141.1";

/// A member a host runs: daemon, certificate name, Raft id (managers only).
type Runs = &'static [(&'static str, &'static str, u64)];

/// The guide's hosts: name, last octet of the address, and the members each one runs.
const HOSTS: [(&str, u8, Runs); 9] = [
    (
        "es1",
        11,
        &[("eventserver", "es1", 0), ("manager", "manager1", 1)],
    ),
    (
        "es2",
        12,
        &[("eventserver", "es2", 0), ("manager", "manager2", 2)],
    ),
    (
        "es3",
        13,
        &[("eventserver", "es3", 0), ("manager", "manager3", 3)],
    ),
    ("dns1", 21, &[("dns", "dns1", 0)]),
    ("dns2", 22, &[("dns", "dns2", 0)]),
    ("node1", 31, &[("node", "node1", 0)]),
    ("node2", 32, &[("node", "node2", 0)]),
    ("node3", 33, &[("node", "node3", 0)]),
    ("node4", 34, &[("node", "node4", 0)]),
];

// ---------------------------------------------------------------------------------------------
// The guide and its code blocks.

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the farm package sits in the repository")
        .to_path_buf()
}

fn guide() -> String {
    let path = repo().join("docs/deploy.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fenced code block: its info string (language and attributes), its `title="..."` if any,
/// its text, and the line its fence opens on.
#[derive(Debug, Clone)]
struct Block {
    info: String,
    title: Option<String>,
    body: String,
    line: usize,
}

impl Block {
    fn lang(&self) -> &str {
        self.info.split_whitespace().next().unwrap_or("")
    }
}

/// Every fenced (```) code block of a Markdown text, indented ones (in list items) included.
fn code_blocks(md: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(usize, usize, String, Vec<&str>)> = None;
    for (i, line) in md.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut open {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some((i + 1, indent, info.trim().to_string(), Vec::new()));
                }
            }
            Some((start, ind, info, body)) => {
                if trimmed.starts_with("```") {
                    let title = info
                        .split("title=\"")
                        .nth(1)
                        .and_then(|t| t.split('"').next().map(|s| s.to_string()));
                    out.push(Block {
                        info: info.clone(),
                        title,
                        body: body.join("\n") + "\n",
                        line: *start,
                    });
                    open = None;
                } else {
                    let cut = line.len() - line.trim_start().len();
                    body.push(&line[cut.min(*ind)..]);
                }
            }
        }
    }
    assert!(open.is_none(), "a code block of the guide is never closed");
    out
}

/// A configuration file shown in the guide for one host.
#[derive(Debug, Clone)]
struct DocConfig {
    /// The host it is for (from the block title `HOST:PATH`).
    host: String,
    /// Where it goes on the host, e.g. `/etc/onehop/eventserver.toml`.
    path: String,
    /// The daemon that reads it (the file's name).
    daemon: String,
    /// Its text.
    text: String,
    /// The guide's line of the block.
    line: usize,
}

/// The per-host TOML blocks of the guide (titled `HOST:/etc/onehop/DAEMON.toml`).
fn doc_configs(md: &str) -> Vec<DocConfig> {
    let configs: Vec<DocConfig> = code_blocks(md)
        .into_iter()
        .filter(|b| b.lang() == "toml")
        .map(|b| {
            let title = b.title.clone().unwrap_or_else(|| {
                panic!(
                    "the TOML block at line {} has no title=\"HOST:PATH\"",
                    b.line
                )
            });
            let (host, path) = title
                .split_once(':')
                .unwrap_or_else(|| panic!("title {title:?} at line {} is not HOST:PATH", b.line));
            let daemon = Path::new(path)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("")
                .to_string();
            assert!(
                DAEMONS.contains(&daemon.as_str()),
                "line {}: {path} names no daemon (expected one of {DAEMONS:?})",
                b.line
            );
            DocConfig {
                host: host.to_string(),
                path: path.to_string(),
                daemon,
                text: b.body,
                line: b.line,
            }
        })
        .collect();
    let shown: BTreeSet<(String, String)> = configs
        .iter()
        .map(|c| (c.host.clone(), c.daemon.clone()))
        .collect();
    for (host, daemon) in [
        ("es1", "eventserver"),
        ("es1", "manager"),
        ("dns1", "dns"),
        ("node1", "node"),
    ] {
        assert!(
            shown.contains(&(host.to_string(), daemon.to_string())),
            "the guide shows no {daemon} configuration for {host}"
        );
    }
    configs
}

/// The only block with this title.
fn titled<'a>(blocks: &'a [Block], title: &str) -> &'a Block {
    let found: Vec<&Block> = blocks
        .iter()
        .filter(|b| b.title.as_deref() == Some(title))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "the guide should have one block titled {title:?}"
    );
    found[0]
}

// ---------------------------------------------------------------------------------------------
// The programs, and the guide's certificates.

/// Links named after every program in `dir/bin` to the farm program, which runs as the program
/// it is started as (as the guide's installation does). Returns `dir/bin`.
fn programs(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for name in DAEMONS.iter().chain(&["monitor", "certs"]) {
        let link = bin.join(format!("onehop-{name}"));
        if !link.exists() {
            std::os::unix::fs::symlink(farm_bin(), &link).unwrap();
        }
    }
    bin
}

/// `p` (absolute) moved under `root`.
fn reroot(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

/// What running the guide's certificate commands produced.
struct Issued {
    /// The CA directory.
    ca: PathBuf,
    /// Every file written, by file name (`es1.pem`, `ca.pem`, `crl.pem`, ...).
    files: BTreeMap<String, PathBuf>,
}

impl Issued {
    fn file(&self, name: &str) -> &Path {
        self.files
            .get(name)
            .unwrap_or_else(|| panic!("the guide's commands issue no {name}"))
    }
}

/// The `onehop-certs` commands of a block of the guide (lines joined at a trailing `\`).
fn certs_commands(block: &Block) -> Vec<Vec<String>> {
    let joined = block.body.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines().map(str::trim) {
        match line.strip_prefix("onehop-certs ") {
            Some(rest) => out.push(rest.split_whitespace().map(String::from).collect()),
            None => assert!(
                line.is_empty() || line.starts_with('#'),
                "unexpected line in the certificate commands (line {}): {line}",
                block.line
            ),
        }
    }
    assert!(
        !out.is_empty(),
        "no onehop-certs command in the block at line {}",
        block.line
    );
    out
}

/// Runs one `onehop-certs` command of the guide: absolute paths moved under `root`, the
/// addresses of `--ip` and `--eventserver` mapped by `ip`, and the file names the guide gives
/// without a directory (`--cert admin.pem`) taken from `files`. Returns the arguments run.
fn run_certs(
    words: &[String],
    root: &Path,
    bin: &Path,
    ip: &dyn Fn(&str) -> String,
    files: &BTreeMap<String, PathBuf>,
) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let prev = if i > 0 { words[i - 1].as_str() } else { "" };
        let arg = match prev {
            "--ip" | "--eventserver" => ip(w),
            "--cert" | "--key" if !w.starts_with('/') => files
                .get(w.as_str())
                .unwrap_or_else(|| panic!("the guide's commands issue no {w}"))
                .display()
                .to_string(),
            _ if w.starts_with('/') => reroot(root, w).display().to_string(),
            _ => w.to_string(),
        };
        args.push(arg);
    }
    let out = Command::new(bin.join("onehop-certs"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "onehop-certs {}: {}{}",
        words.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    args
}

/// Runs the guide's `issue-certificates` block with [`run_certs`].
fn issue_as_documented(md: &str, root: &Path, bin: &Path, ip: &dyn Fn(&str) -> String) -> Issued {
    let blocks = code_blocks(md);
    let block = titled(&blocks, "issue-certificates");
    let mut ca = None;
    let mut outs = BTreeSet::new();
    for words in certs_commands(block) {
        let args = run_certs(&words, root, bin, ip, &BTreeMap::new());
        for w in args.windows(2) {
            match w[0].as_str() {
                "--dir" => ca = Some(PathBuf::from(&w[1])),
                "--out" => {
                    outs.insert(PathBuf::from(&w[1]));
                }
                _ => {}
            }
        }
    }
    let ca = ca.expect("the certificate commands name a CA directory");
    let mut files = BTreeMap::new();
    for dir in outs.iter().chain(std::iter::once(&ca)) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                files.insert(name.clone(), p).is_none() || name == "index.json",
                "{name} is written twice by the guide's commands"
            );
        }
    }
    Issued { ca, files }
}

/// What `onehop-certs show --json` says of a certificate.
fn show(bin: &Path, ca: &Path, cert: &Path) -> serde_json::Value {
    let out = Command::new(bin.join("onehop-certs"))
        .arg("show")
        .arg(cert)
        .arg("--dir")
        .arg(ca)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "onehop-certs show {}: {}",
        cert.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The address a configuration binds (`ip`, or the address of `listen`).
fn own_ip(cfg: &toml::Table) -> IpAddr {
    if let Some(ip) = cfg.get("ip").and_then(|v| v.as_str()) {
        return ip.parse().expect("ip");
    }
    let listen = cfg
        .get("listen")
        .and_then(|v| v.as_str())
        .expect("ip or listen");
    listen.parse::<SocketAddr>().expect("listen").ip()
}

fn tls_mut(cfg: &mut toml::Table) -> &mut toml::Table {
    cfg.get_mut("tls")
        .and_then(|t| t.as_table_mut())
        .expect("a [tls] table")
}

fn str_of<'a>(t: &'a toml::Table, key: &str) -> &'a str {
    t.get(key)
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("no string {key}"))
}

/// Points the certificate files of `cfg` at the issued ones (by file name), its CRL at a copy
/// of the CA's list in `state` (as the guide installs it) and a manager's `data_dir` there too.
fn use_issued(cfg: &mut toml::Table, issued: &Issued, state: &Path) {
    std::fs::create_dir_all(state).unwrap();
    let tls = tls_mut(cfg);
    for key in ["ca", "cert", "key"] {
        let name = Path::new(str_of(tls, key))
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let file = issued.file(&name).display().to_string();
        tls.insert(key.into(), file.into());
    }
    let crl_name = Path::new(str_of(tls, "crl"))
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let crl = state.join(crl_name);
    if !crl.exists() {
        std::fs::copy(issued.file("crl.pem"), &crl).unwrap();
    }
    tls.insert("crl".into(), crl.display().to_string().into());
    if cfg.contains_key("data_dir") {
        cfg.insert(
            "data_dir".into(),
            state.join("manager").display().to_string().into(),
        );
    }
}

/// Runs `onehop-DAEMON --config FILE --check-config`: (success, output).
fn check_config(bin: &Path, daemon: &str, file: &Path) -> (bool, String) {
    let out = Command::new(bin.join(format!("onehop-{daemon}")))
        .arg("--config")
        .arg(file)
        .arg("--check-config")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every per-host configuration of the guide passes its daemon's `--check-config` with the
/// certificates the guide's commands issue, and each certificate fits its configuration: the
/// daemon's kind, the configuration's address, and files where the units let the daemons read
/// (`/etc/onehop`) and write (`/var/lib/onehop`). A configuration with a key the daemon does
/// not know is refused, so the check can fail.
#[test]
fn the_guides_configurations_pass_check_config_with_its_certificates() {
    let md = guide();
    let dir = tempfile::tempdir().unwrap();
    let bin = programs(dir.path());
    let issued = issue_as_documented(&md, dir.path(), &bin, &|ip| ip.to_string());
    let configs = doc_configs(&md);
    for c in &configs {
        let what = format!("{} of {} (guide line {})", c.path, c.host, c.line);
        let mut cfg: toml::Table =
            toml::from_str(&c.text).unwrap_or_else(|e| panic!("{what}: not TOML: {e}"));
        assert!(
            c.path.starts_with("/etc/onehop/"),
            "{what}: configurations live in /etc/onehop"
        );
        {
            let tls = tls_mut(&mut cfg);
            for key in ["ca", "cert", "key"] {
                assert!(
                    str_of(tls, key).starts_with("/etc/onehop/"),
                    "{what}: tls.{key} should be in /etc/onehop"
                );
            }
            assert!(
                str_of(tls, "crl").starts_with("/var/lib/onehop/"),
                "{what}: tls.crl must be in the state directory the daemon may write"
            );
        }
        if c.daemon == "manager" {
            assert_eq!(
                str_of(&cfg, "data_dir"),
                "/var/lib/onehop/manager",
                "{what}: the manager unit's StateDirectory is onehop/manager"
            );
        }
        // The certificate: issued by the guide's commands, of this daemon's kind, with the
        // address the configuration binds.
        let cert_name = Path::new(str_of(tls_mut(&mut cfg), "cert"))
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let info = show(&bin, &issued.ca, issued.file(&cert_name));
        assert_eq!(
            info["kind"],
            c.daemon.as_str(),
            "{what}: kind of {cert_name}"
        );
        let ip = own_ip(&cfg).to_string();
        assert!(
            info["ips"]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v == ip.as_str())),
            "{what}: {cert_name} does not carry the address {ip}: {info}"
        );
        if c.daemon == "node" {
            let roles: Vec<&str> = info["roles"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v.as_str())
                .collect();
            assert!(
                roles.contains(&"sip_proxy") && roles.contains(&"registrar"),
                "{what}: {cert_name} roles {roles:?}"
            );
        }

        let state = dir.path().join("hosts").join(&c.host).join("state");
        use_issued(&mut cfg, &issued, &state);
        let file = dir
            .path()
            .join("hosts")
            .join(&c.host)
            .join(format!("{}.toml", c.daemon));
        std::fs::write(&file, toml::to_string(&cfg).unwrap()).unwrap();
        let (ok, out) = check_config(&bin, &c.daemon, &file);
        assert!(ok, "{what}: onehop-{} --check-config: {out}", c.daemon);
        println!("{what}: {}", out.trim());

        // The same file with a key the daemon does not know must be refused.
        let bad = file.with_extension("bad.toml");
        std::fs::write(
            &bad,
            format!("no_such_key = 1\n{}", toml::to_string(&cfg).unwrap()),
        )
        .unwrap();
        let (ok, out) = check_config(&bin, &c.daemon, &bad);
        assert!(
            !ok && out.contains("no_such_key"),
            "{what}: an unknown key was not refused: {out}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The systemd units.

/// A unit file's `[Service]` (and `[Unit]`) settings: key -> values in order.
fn unit_settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a setting: {line}"));
        out.entry(k.trim().to_string())
            .or_default()
            .push(v.trim().to_string());
    }
    out
}

/// Whether a `--help` text lists `flag` (as a whole word: `--config` is not `--config-dir`).
fn lists_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(i, _)| {
        let before = help[..i].chars().next_back();
        let after = help[i + flag.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '-')
            && !after.is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '_')
    })
}

fn units() -> Vec<(String, String)> {
    let dir = repo().join("examples/systemd");
    let mut v: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "service"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Each unit of `examples/systemd/` runs a real daemon (`ExecStart` and the `--check-config`
/// of `ExecStartPre`) with flags that daemon's `--help` lists, on the configuration path the
/// guide gives that daemon; runs as the `onehop` user, leaves with SIGTERM, restarts on failure
/// later than a crash is noticed, writes only its state directory (where the guide's
/// configurations put the CRL and the Raft state), and has a capability only for DNS. The guide
/// names every unit. With `systemd-analyze` installed, each unit also passes `verify` with no
/// warning about it.
#[test]
fn systemd_units_start_real_daemons_with_real_flags() {
    let md = guide();
    let dir = tempfile::tempdir().unwrap();
    let bin = programs(dir.path());
    let config_paths: BTreeMap<String, String> = doc_configs(&md)
        .into_iter()
        .map(|c| (c.daemon, c.path))
        .collect();
    let units = units();
    let names: BTreeSet<&str> = units.iter().map(|(n, _)| n.as_str()).collect();
    for daemon in DAEMONS {
        assert!(
            names.contains(format!("onehop-{daemon}.service").as_str()),
            "examples/systemd has no onehop-{daemon}.service"
        );
    }
    let mut helps: BTreeMap<String, String> = BTreeMap::new();
    for (name, text) in &units {
        assert!(
            md.contains(name.as_str()),
            "the guide does not mention {name}"
        );
        let s = unit_settings(text);
        let one = |k: &str| -> &str {
            match s.get(k).map(|v| v.as_slice()) {
                Some([v]) => v.as_str(),
                other => panic!("{name}: expected one {k}=, found {other:?}"),
            }
        };
        let daemon = name
            .strip_prefix("onehop-")
            .and_then(|n| n.strip_suffix(".service"))
            .map(|n| n.trim_end_matches('@'))
            .unwrap_or_else(|| panic!("{name}: not onehop-DAEMON.service"));
        assert!(DAEMONS.contains(&daemon), "{name}: no such daemon {daemon}");
        let template = name.contains('@');

        let mut commands: Vec<&str> = vec![one("ExecStart")];
        commands.extend(
            s.get("ExecStartPre")
                .into_iter()
                .flatten()
                .map(|v| v.as_str()),
        );
        for cmd in commands {
            let words: Vec<&str> = cmd.split_whitespace().collect();
            assert_eq!(
                words[0],
                format!("/usr/local/bin/onehop-{daemon}"),
                "{name}: {cmd} should run the installed onehop-{daemon}"
            );
            let help = helps.entry(daemon.to_string()).or_insert_with(|| {
                let out = Command::new(bin.join(format!("onehop-{daemon}")))
                    .arg("--help")
                    .output()
                    .unwrap();
                assert!(out.status.success(), "onehop-{daemon} --help");
                String::from_utf8_lossy(&out.stdout).into_owned()
            });
            assert!(
                !lists_flag(help, "--check") && !lists_flag(help, "--no-such-flag"),
                "the flag check cannot fail"
            );
            for flag in words.iter().filter(|w| w.starts_with('-')) {
                assert!(
                    lists_flag(help, flag),
                    "{name}: onehop-{daemon} has no {flag} (its --help:\n{help})"
                );
            }
            let config = words
                .windows(2)
                .find(|w| w[0] == "--config")
                .map(|w| w[1])
                .unwrap_or_else(|| panic!("{name}: {cmd} names no --config"));
            let want = if template {
                format!("/etc/onehop/{daemon}-%i.toml")
            } else {
                config_paths
                    .get(daemon)
                    .cloned()
                    .unwrap_or_else(|| format!("/etc/onehop/{daemon}.toml"))
            };
            assert_eq!(config, want, "{name}: configuration path");
        }
        assert!(
            s.get("ExecStartPre")
                .is_some_and(|v| v.iter().any(|c| c.ends_with("--check-config"))),
            "{name}: no ExecStartPre=... --check-config"
        );

        assert_eq!(one("User"), "onehop", "{name}");
        assert_eq!(one("KillSignal"), "SIGTERM", "{name}");
        assert_eq!(one("Restart"), "on-failure", "{name}");
        let restart_sec: f64 = one("RestartSec").trim_end_matches('s').parse().unwrap();
        assert!(
            restart_sec >= 1.0,
            "{name}: RestartSec must exceed the QUIC idle timeout (600 ms) and the batching"
        );
        assert_eq!(one("ProtectSystem"), "strict", "{name}");
        assert_eq!(one("NoNewPrivileges"), "yes", "{name}");
        assert!(
            one("LimitNOFILE").parse::<u64>().unwrap() >= 16_384,
            "{name}"
        );
        let state: Vec<&str> = one("StateDirectory").split_whitespace().collect();
        assert!(state.contains(&"onehop"), "{name}: StateDirectory=onehop");
        assert_eq!(
            state.contains(&"onehop/manager"),
            daemon == "manager",
            "{name}: only the manager keeps state in onehop/manager"
        );
        let caps = s.get("AmbientCapabilities").cloned().unwrap_or_default();
        if daemon == "dns" {
            assert_eq!(caps, ["CAP_NET_BIND_SERVICE"], "{name}: DNS binds port 53");
            assert_eq!(
                one("CapabilityBoundingSet"),
                "CAP_NET_BIND_SERVICE",
                "{name}"
            );
        } else {
            assert!(caps.is_empty(), "{name}: needs no capability");
            assert_eq!(one("CapabilityBoundingSet"), "", "{name}");
        }
    }

    let have = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        println!("NOTE: systemd-analyze is not installed; units not verified by systemd");
        return;
    }
    // verify wants the programs to exist: point the units at the links made above.
    let units_dir = dir.path().join("units");
    std::fs::create_dir_all(&units_dir).unwrap();
    let mut paths = Vec::new();
    for (name, text) in &units {
        let p = units_dir.join(name);
        let text = text.replace("/usr/local/bin/", &format!("{}/", bin.display()));
        std::fs::write(&p, text).unwrap();
        paths.push(p);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let about_ours: Vec<&str> = text.lines().filter(|l| l.contains("onehop")).collect();
    assert!(
        out.status.success() && about_ours.is_empty(),
        "systemd-analyze verify:\n{text}"
    );
    println!("systemd-analyze verify: {} units clean", paths.len());
}

/// The guide's nftables file parses (`nft -c`), when nft is installed and can check files here.
#[test]
fn the_guides_nftables_file_parses() {
    let md = guide();
    let blocks = code_blocks(&md);
    let nft: Vec<&Block> = blocks.iter().filter(|b| b.lang() == "nft").collect();
    assert_eq!(nft.len(), 1, "the guide should have one nftables file");
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let p = dir.path().join("rules.nft");
        std::fs::write(&p, text).unwrap();
        Command::new("nft").arg("-c").arg("-f").arg(&p).output()
    };
    let known_good =
        "table inet t {\n chain c {\n  type filter hook input priority 0; policy accept;\n }\n}\n";
    match check(known_good) {
        Ok(o) if o.status.success() => {}
        _ => {
            println!("NOTE: nft is missing or cannot check rule files here; nftables not checked");
            return;
        }
    }
    let out = check(&nft[0].body).unwrap();
    assert!(
        out.status.success(),
        "nft -c rejects the guide's file (line {}): {}",
        nft[0].line,
        String::from_utf8_lossy(&out.stderr)
    );
    // And it can fail: a misspelt verdict is refused.
    let out = check(&nft[0].body.replacen("accept", "acept", 1)).unwrap();
    assert!(!out.status.success(), "nft -c accepted a broken file");
}

// ---------------------------------------------------------------------------------------------
// The guide's farm, live on loopback addresses.

fn live_ip(doc_ip: &str) -> String {
    doc_ip.replace(DOC_NET, LIVE_NET)
}

fn host_ip(octet: u8) -> String {
    format!("{LIVE_NET}{octet}")
}

/// `ADDR:PORT` with the address replaced.
fn with_ip(addr: &str, ip: &str) -> String {
    let port = addr.rsplit_once(':').map(|(_, p)| p).expect("ip:port");
    format!("{ip}:{port}")
}

/// A member of the live farm.
struct Member {
    daemon: &'static str,
    host: &'static str,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// The guide's nine hosts as processes on 127.0.140.x.
struct LiveFarm {
    dir: tempfile::TempDir,
    bin: PathBuf,
    members: BTreeMap<&'static str, Member>,
    issued: Issued,
    /// The harness's turn: farms run one at a time (see `harness::Farm`).
    _turn: Farm,
}

impl LiveFarm {
    /// Issues the certificates with the guide's commands and writes every host's files from
    /// the guide's templates, changing only the keys the guide's table of per-host differences
    /// names.
    fn build(md: &str, turn: Farm) -> LiveFarm {
        let dir = tempfile::Builder::new()
            .prefix("onehop-deploy-")
            .tempdir()
            .unwrap();
        let bin = programs(dir.path());
        let issued = issue_as_documented(md, dir.path(), &bin, &|ip| live_ip(ip));
        let templates: BTreeMap<String, DocConfig> = doc_configs(md)
            .into_iter()
            .map(|c| (c.daemon.clone(), c))
            .collect();
        let mut members = BTreeMap::new();
        for (host, octet, runs) in HOSTS {
            let ip = host_ip(octet);
            let state = dir.path().join("hosts").join(host).join("state");
            for &(daemon, name, id) in runs {
                let template = &templates[daemon];
                let mut cfg: toml::Table = toml::from_str(&live_ip(&template.text)).unwrap();
                for key in ["listen", "metrics"] {
                    if let Some(addr) = cfg.get(key).and_then(|v| v.as_str()) {
                        let moved = with_ip(addr, &ip);
                        cfg.insert(key.into(), moved.into());
                    }
                }
                if cfg.contains_key("ip") {
                    cfg.insert("ip".into(), ip.clone().into());
                }
                if daemon == "manager" {
                    cfg.insert("id".into(), (id as i64).into());
                }
                if daemon == "dns" {
                    // 53 needs privileges; the port is not what this test is about.
                    cfg.insert("port".into(), 5353.into());
                }
                if daemon == "node" {
                    // The test registers 400 AORs that no account backs: it is about
                    // bindings through an upgrade, not subscribers (see auth.rs).
                    cfg.insert("sip_auth".into(), "off".into());
                }
                let tls = tls_mut(&mut cfg);
                tls.insert("cert".into(), format!("/etc/onehop/{name}.pem").into());
                tls.insert("key".into(), format!("/etc/onehop/{name}.key").into());
                use_issued(&mut cfg, &issued, &state);
                let config = dir
                    .path()
                    .join("hosts")
                    .join(host)
                    .join(format!("{daemon}.toml"));
                std::fs::write(&config, toml::to_string(&cfg).unwrap()).unwrap();
                let (ok, out) = check_config(&bin, daemon, &config);
                assert!(ok, "{name}: {out}");
                members.insert(
                    name,
                    Member {
                        daemon,
                        host,
                        config,
                        log: dir.path().join(format!("{name}.log")),
                        child: None,
                    },
                );
            }
        }
        LiveFarm {
            dir,
            bin,
            members,
            issued,
            _turn: turn,
        }
    }

    fn start(&mut self, name: &str) {
        let m = self.members.get_mut(name).expect("member");
        assert!(m.child.is_none(), "{name} runs already");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap();
        let child = Command::new(self.bin.join(format!("onehop-{}", m.daemon)))
            .arg("--config")
            .arg(&m.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        m.child = Some(child);
    }

    /// SIGTERM, as systemd stops a unit; waits for the exit (and checks it was clean).
    fn stop(&mut self, name: &str) {
        let m = self.members.get_mut(name).expect("member");
        let mut child = m.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                assert!(st.success(), "{name} exited with {st} on SIGTERM");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} still runs 10 s after SIGTERM (TimeoutStopSec)"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `systemctl restart`: stop, then start at once.
    fn restart(&mut self, name: &str) {
        self.stop(name);
        self.start(name);
    }

    fn addr_of(&self, name: &str, key: &str) -> SocketAddr {
        let cfg: toml::Table =
            toml::from_str(&std::fs::read_to_string(&self.members[name].config).unwrap()).unwrap();
        match key {
            "ip" => SocketAddr::new(own_ip(&cfg), 0),
            _ => str_of(&cfg, key).parse().unwrap(),
        }
    }

    fn ip(&self, name: &str) -> IpAddr {
        self.addr_of(name, "ip").ip()
    }

    fn names(&self, daemon: &str) -> Vec<&'static str> {
        self.members
            .iter()
            .filter(|(_, m)| m.daemon == daemon)
            .map(|(n, _)| *n)
            .collect()
    }

    /// The guide's monitor command: the status as JSON, or `None`.
    fn monitor(&self) -> Option<serde_json::Value> {
        self.monitor_as(
            self.issued.file("monitor.pem"),
            self.issued.file("monitor.key"),
            5,
        )
    }

    /// The monitor's status snapshot with another certificate (waiting up to `wait` seconds).
    fn monitor_as(&self, cert: &Path, key: &Path, wait: u64) -> Option<serde_json::Value> {
        let mut cmd = Command::new(self.bin.join("onehop-monitor"));
        cmd.arg("--ca")
            .arg(self.issued.file("ca.pem"))
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key);
        for es in self.names("eventserver") {
            cmd.arg("--eventserver")
                .arg(self.addr_of(es, "listen").to_string());
        }
        let out = cmd
            .args(["--json", "--timeout", &wait.to_string()])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Names in the status the monitor sees.
    fn status_names(&self) -> BTreeSet<String> {
        self.monitor()
            .and_then(|s| {
                s["members"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|m| m["name"].as_str().map(String::from))
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    /// Waits until the status lists every member of the farm.
    fn until_whole(&self, after: &str) {
        self.until_members(&[], after);
    }

    /// Waits until the status lists every member of the farm but those `left`.
    fn until_members(&self, left: &[&str], after: &str) {
        let want: BTreeSet<String> = self
            .members
            .keys()
            .filter(|n| !left.contains(n))
            .map(|n| n.to_string())
            .collect();
        eventually(
            Duration::from_secs(20),
            &format!("every member but {left:?} in the status after {after}"),
            || self.status_names() == want,
        );
    }

    /// Every host's CRL file (where the guide installs the CA's list).
    fn crl_files(&self) -> Vec<PathBuf> {
        HOSTS
            .iter()
            .map(|(host, _, _)| {
                self.dir
                    .path()
                    .join("hosts")
                    .join(host)
                    .join("state")
                    .join("crl.pem")
            })
            .collect()
    }

    fn lookup(&self, node: &str) -> Lookup {
        Lookup::connect(SocketAddr::new(self.ip(node), 9500))
    }

    /// `(term, version, manager)` a node holds (`None` before its first status).
    fn try_status(&self, node: &str) -> Option<(u64, u64, String)> {
        parse_status(&self.lookup(node).ask("status"))
    }

    /// `(term, version, manager)` a node holds.
    fn status_at(&self, node: &str) -> (u64, u64, String) {
        self.try_status(node)
            .unwrap_or_else(|| panic!("{node} holds no network status"))
    }

    fn metric(&self, name: &str, key: &str, metric: &str) -> Option<i64> {
        metric_value(self.addr_of(name, key), metric)
    }

    /// How many of `nodes` hold each AOR.
    fn copies(&self, nodes: &[&str], aors: &[String]) -> Vec<usize> {
        let mut n = vec![0; aors.len()];
        let asks: Vec<String> = aors
            .iter()
            .map(|a| format!("holds registrar for {a}"))
            .collect();
        for node in nodes {
            for (i, a) in self.lookup(node).ask_many(&asks).iter().enumerate() {
                if a == "Yes" {
                    n[i] += 1;
                }
            }
        }
        n
    }

    /// Waits until every node holds the same status and every AOR is held by exactly its
    /// replica set under that status (the `replicas` verb): the hand-off is complete.
    fn until_placed(&self, nodes: &[&str], aors: &[String], after: &str) {
        let at: Vec<(&str, IpAddr)> = nodes.iter().map(|n| (*n, self.ip(n))).collect();
        let start = Instant::now();
        while let Err(seen) = placement(&at, aors) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "every binding on its 2 replicas among {nodes:?} after {after}: not within 20 s: {seen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for LiveFarm {
    fn drop(&mut self) {
        for m in self.members.values_mut() {
            if let Some(c) = &m.child {
                let pid = nix::unistd::Pid::from_raw(c.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
        }
        for m in self.members.values_mut() {
            if let Some(mut c) = m.child.take() {
                let deadline = Instant::now() + Duration::from_secs(5);
                while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            let keep = std::env::temp_dir().join(format!(
                "onehop-failed-{}",
                self.dir.path().file_name().unwrap().to_string_lossy()
            ));
            let _ = std::fs::create_dir_all(&keep);
            for (name, m) in &self.members {
                let _ = std::fs::copy(&m.log, keep.join(format!("{}-{name}.log", m.host)));
            }
            eprintln!("logs of the failed farm kept in {}", keep.display());
        }
    }
}

/// Polls `f` every 50 ms until it holds; panics naming `what` after `timeout`.
fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A figure from a Prometheus text endpoint.
fn metric_value(addr: SocketAddr, name: &str) -> Option<i64> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// One DNS question over UDP; the answer, if one came.
fn dns_ask(server: SocketAddr, name: &str, rtype: RecordType) -> Option<Message> {
    let socket = UdpSocket::bind((CLIENT_IP, 0)).ok()?;
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    let mut msg = Message::query();
    msg.metadata.id = 4711;
    msg.metadata.recursion_desired = false;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    socket.send_to(&msg.to_vec().unwrap(), server).ok()?;
    let mut buf = [0u8; 4096];
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    Message::from_vec(&buf[..n]).ok()
}

/// The SOA serial a DNS member answers with.
fn soa_serial(server: SocketAddr) -> Option<u32> {
    let m = dns_ask(server, &format!("{DOMAIN}."), RecordType::SOA)?;
    m.answers.iter().find_map(|r| match &r.data {
        RData::SOA(s) => Some(s.serial),
        _ => None,
    })
}

/// The answers' data as text, sorted.
fn answers(server: SocketAddr, name: &str, rtype: RecordType) -> Vec<String> {
    let mut v: Vec<String> = dns_ask(server, name, rtype)
        .map(|m| m.answers.iter().map(|r| r.data.to_string()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// REGISTERs `users` through `proxy` over UDP (one at a time); returns the final status codes.
fn register(proxy: SocketAddr, users: &[String]) -> Vec<u16> {
    let sock = UdpSocket::bind((CLIENT_IP, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let me = sock.local_addr().unwrap();
    let mut codes = Vec::new();
    let mut buf = vec![0u8; 65_535];
    for (i, aor) in users.iter().enumerate() {
        let user = aor.split('@').next().unwrap();
        let msg = format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {me};branch=z9hG4bK-deploy-{i}-{n};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{aor}>;tag=t{i}\r\n\
             To: <sip:{aor}>\r\n\
             Call-ID: deploy-{i}-{n}@{CLIENT_IP}\r\n\
             CSeq: 1 REGISTER\r\n\
             Contact: <sip:{user}@{me}>\r\n\
             Expires: 3600\r\n\
             Content-Length: 0\r\n\r\n",
            n = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        sock.send_to(msg.as_bytes(), proxy).unwrap();
        let code = loop {
            let Ok((n, _)) = sock.recv_from(&mut buf) else {
                break 0;
            };
            let text = String::from_utf8_lossy(&buf[..n]);
            let code: u16 = text
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if code >= 200 {
                break code;
            }
        };
        codes.push(code);
    }
    codes
}

/// The `$ command` lines of the guide's console examples, each with the output shown under it.
fn console_examples(md: &str) -> Vec<(String, Vec<String>, usize)> {
    let mut out: Vec<(String, Vec<String>, usize)> = Vec::new();
    for b in code_blocks(md)
        .into_iter()
        .filter(|b| b.lang() == "console")
    {
        for line in b.body.lines() {
            if let Some(cmd) = line.strip_prefix("$ ") {
                out.push((cmd.to_string(), Vec::new(), b.line));
            } else if let Some(last) = out.last_mut() {
                if !line.trim().is_empty() {
                    last.1.push(line.to_string());
                }
            }
        }
    }
    out
}

/// Runs the guide's console examples of `dig +short` (at the first DNS member, when dig is
/// installed) and of the lookup interface (`printf '...' | nc -q1 ADDR 9500`) against the live
/// farm, and compares what they print with what the guide shows (addresses mapped; SRV answers
/// in any order; a `status` line only by its form, since term, version and manager vary).
fn check_console_examples(md: &str, dns: SocketAddr) -> usize {
    let have_dig = Command::new("dig")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut checked = 0;
    for (cmd, shown, line) in console_examples(md) {
        let shown: Vec<String> = shown.iter().map(|l| live_ip(l)).collect();
        if let Some(q) = cmd.strip_prefix("dig +short ") {
            if !have_dig {
                println!("NOTE: dig is not installed; `{cmd}` (guide line {line}) not run");
                continue;
            }
            let out = Command::new("dig")
                .arg(format!("@{}", dns.ip()))
                .args(["-p", &dns.port().to_string(), "+short", "+norecurse"])
                .args(q.split_whitespace())
                .output()
                .unwrap();
            let mut got: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(String::from)
                .collect();
            let mut want = shown.clone();
            got.sort();
            want.sort();
            assert_eq!(got, want, "`{cmd}` (guide line {line})");
            checked += 1;
        } else if let Some(rest) = cmd.strip_prefix("printf '") {
            let (requests, tail) = rest.split_once("' | nc -q1 ").expect("printf ... | nc");
            let (ip, port) = tail.split_once(' ').expect("nc ADDR PORT");
            assert_eq!(port, "9500", "guide line {line}");
            let requests: Vec<String> = requests
                .split("\\r\\n")
                .filter(|r| !r.is_empty())
                .map(String::from)
                .collect();
            let addr = SocketAddr::new(live_ip(ip).parse().unwrap(), 9500);
            let got = Lookup::connect(addr).ask_many(&requests);
            assert_eq!(
                got.len(),
                shown.len(),
                "`{cmd}` (guide line {line}): {got:?}"
            );
            for ((req, g), w) in requests.iter().zip(&got).zip(&shown) {
                if req == "status" {
                    assert!(
                        parse_status(g).is_some() && parse_status(w).is_some(),
                        "`{req}` (guide line {line}): {g:?}, the guide shows {w:?}"
                    );
                } else {
                    assert_eq!(g, w, "`{req}` (guide line {line})");
                }
            }
            checked += 1;
        } else {
            panic!("guide line {line}: a console example this test does not know: {cmd}");
        }
    }
    checked
}

/// The guide's nine-host farm, on loopback addresses: built from the guide's certificate
/// commands and configuration files (the other hosts' files made by changing only the keys the
/// guide lists), started as the units start it, whole in the monitor's status, with the NS,
/// NAPTR and SRV records the guide shows (the parent zone's NS and glue agree; the console
/// examples print what the guide shows); then 400 registrations, and the guide's rolling
/// upgrade, step by step with the guide's checks: event servers restarted in place (each back
/// with every member), managers not active restarted in place, the active one stopped until
/// another is active in a higher term, DNS servers restarted in place (same SOA serial on both),
/// nodes stopped, waited out, started. After every step the status lists every member and every
/// binding is held by exactly the two nodes its ring says (the `replicas` verb), the restarted
/// node included; at the end every node still registers. Then the guide's certificate rotation
/// of node2 (its old certificate refused once the CA's list is copied to every host, node2
/// still in with its new one) and the guide's `revoke --publish` of node4 (out of the status,
/// its bindings back to two copies on the others).
#[test]
fn the_guides_farm_forms_keeps_every_binding_through_its_rolling_upgrade_and_rotates() {
    let md = guide();
    // Farms run one at a time: a farm of one event server and one manager keeps the harness's
    // turn while this test runs the guide's farm as its own processes.
    let turn = Farm::up(
        "127.0.142.1",
        &[
            "--nodes",
            "0",
            "--dns",
            "0",
            "--eventservers",
            "1",
            "--managers",
            "1",
        ],
    );
    let mut farm = LiveFarm::build(&md, turn);
    let started = Instant::now();
    // The guide's order: event servers, managers, DNS, nodes.
    for daemon in DAEMONS {
        for name in farm.names(daemon) {
            farm.start(name);
        }
    }
    farm.until_whole("start");
    println!(
        "the guide's farm of {} members whole in {:?}",
        farm.members.len(),
        started.elapsed()
    );

    // DNS as the guide shows it.
    let dns: Vec<SocketAddr> = farm
        .names("dns")
        .iter()
        .map(|d| SocketAddr::new(farm.ip(d), 5353))
        .collect();
    let nodes = farm.names("node");
    let want_srv: Vec<String> = {
        let mut v: Vec<String> = nodes
            .iter()
            .map(|n| format!("10 10 5060 {n}.{DOMAIN}."))
            .collect();
        v.sort();
        v
    };
    for server in &dns {
        eventually(Duration::from_secs(10), "SRV of every node", || {
            answers(*server, &format!("_sip._udp.{DOMAIN}."), RecordType::SRV) == want_srv
        });
        let naptr = answers(*server, &format!("{DOMAIN}."), RecordType::NAPTR);
        assert_eq!(
            naptr,
            [
                format!("100 50 \"s\" \"SIP+D2U\" \"\" _sip._udp.{DOMAIN}."),
                format!("90 50 \"s\" \"SIP+D2T\" \"\" _sip._tcp.{DOMAIN}."),
            ],
            "NAPTR at {server}"
        );
        assert_eq!(
            answers(*server, &format!("{DOMAIN}."), RecordType::NS),
            [format!("dns1.{DOMAIN}."), format!("dns2.{DOMAIN}.")],
            "NS at {server}: the names the parent zone's delegation uses"
        );
        assert_eq!(
            answers(*server, &format!("node3.{DOMAIN}."), RecordType::A),
            [farm.ip("node3").to_string()]
        );
    }

    // The parent zone's delegation names the name servers the farm's DNS answers with, and
    // its glue their addresses.
    let blocks = code_blocks(&md);
    let zone = blocks
        .iter()
        .find(|b| b.lang() == "zone")
        .expect("the guide shows the parent zone's lines");
    let mut ns = Vec::new();
    let mut glue = BTreeMap::new();
    for line in zone.body.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            [owner, _ttl, "IN", "NS", target] => {
                assert_eq!(*owner, format!("{DOMAIN}."), "delegation of the SIP domain");
                ns.push(target.to_string());
            }
            [owner, _ttl, "IN", "A", addr] => {
                glue.insert(owner.to_string(), live_ip(addr));
            }
            _ => panic!("parent zone line not understood: {line}"),
        }
    }
    ns.sort();
    assert_eq!(
        ns,
        answers(dns[0], &format!("{DOMAIN}."), RecordType::NS),
        "the parent's NS set and the farm's"
    );
    for target in &ns {
        let name = target.split('.').next().unwrap();
        assert_eq!(
            glue.get(target),
            Some(&farm.ip(name).to_string()),
            "glue of {target}"
        );
    }

    // Registrations through node1, once every node holds the same status.
    eventually(Duration::from_secs(10), "one status on every node", || {
        let statuses: BTreeSet<_> = nodes.iter().map(|n| farm.try_status(n)).collect();
        statuses.len() == 1 && !statuses.contains(&None)
    });
    let aors: Vec<String> = (0..400).map(|i| format!("user{i}@{DOMAIN}")).collect();
    let proxy = SocketAddr::new(farm.ip("node1"), 5060);
    let codes = register(proxy, &aors);
    assert!(
        codes.iter().all(|&c| c == 200),
        "REGISTER answers: {codes:?}"
    );
    farm.until_placed(&nodes, &aors, "registering");

    // The guide's console examples, against this farm (alice registers as in the guide).
    let alice = [format!("alice@{DOMAIN}")];
    assert_eq!(register(proxy, &alice), [200], "REGISTER alice");
    farm.until_placed(&nodes, &alice, "alice registering");
    let checked = check_console_examples(&md, dns[0]);
    println!("{checked} console examples of the guide checked against the farm");

    // Event servers, one at a time, in place.
    let members_per_es = (farm.members.len() - farm.names("eventserver").len()) as i64;
    for es in farm.names("eventserver") {
        farm.restart(es);
        let took = eventually(
            Duration::from_secs(20),
            &format!("members back at {es}"),
            || farm.metric(es, "metrics", "onehop_eventserver_members") == Some(members_per_es),
        );
        println!("{es} restarted: {members_per_es} members back in {took:?}");
        farm.until_whole(es);
        farm.until_placed(&nodes, &aors, es);
    }

    // Managers: those not active in place, then the active one stopped until another is.
    let (_, _, active) = farm.status_at("node1");
    let active: &'static str = farm
        .names("manager")
        .into_iter()
        .find(|m| *m == active)
        .expect("the active manager is one of the guide's");
    for m in farm.names("manager").into_iter().filter(|m| *m != active) {
        farm.restart(m);
        eventually(
            Duration::from_secs(20),
            &format!("{m} follows the status"),
            || {
                let (t, v, _) = farm.status_at("node1");
                farm.metric(m, "metrics", "onehop_status_term") == Some(t as i64)
                    && farm.metric(m, "metrics", "onehop_status_version") == Some(v as i64)
            },
        );
        farm.until_whole(m);
    }
    let (old_term, _, _) = farm.status_at("node1");
    farm.stop(active);
    let took = eventually(Duration::from_secs(10), "another manager active", || {
        let (t, _, m) = farm.status_at("node1");
        m != active && t > old_term
    });
    let (new_term, _, new_active) = farm.status_at("node1");
    println!("{active} stopped: {new_active} active in term {new_term} after {took:?}");
    farm.start(active);
    farm.until_whole(active);
    assert_eq!(
        farm.status_at("node1").2,
        new_active,
        "the restarted manager took over again"
    );
    farm.until_placed(&nodes, &aors, "the managers");

    // DNS servers, one at a time, in place.
    for (i, d) in farm.names("dns").into_iter().enumerate() {
        farm.restart(d);
        let other = dns[1 - i];
        eventually(
            Duration::from_secs(20),
            &format!("{d} answers again"),
            || {
                let mine = soa_serial(dns[i]);
                mine.is_some() && mine == soa_serial(other)
            },
        );
        assert_eq!(farm.metric(d, "metrics", "onehop_dns_stale"), Some(0));
        farm.until_whole(d);
    }

    // Nodes, one at a time: stop, wait until the farm saw it go and the hand-off is done,
    // start, wait until it is back and the hand-off is done.
    for n in nodes.clone() {
        let ip = farm.ip(n);
        let others: Vec<&str> = nodes.iter().copied().filter(|o| *o != n).collect();
        let ask = format!("is_online {ip} as registrar");
        farm.stop(n);
        eventually(Duration::from_secs(10), &format!("{n} out"), || {
            farm.lookup(others[0]).ask(&ask) == "No"
        });
        farm.until_placed(&others, &aors, &format!("{n} stopped"));
        farm.start(n);
        eventually(Duration::from_secs(10), &format!("{n} back"), || {
            farm.lookup(others[0]).ask(&ask) == "Yes"
        });
        farm.until_placed(&nodes, &aors, &format!("{n} started"));
        let held = farm.copies(&[n], &aors).iter().sum::<usize>();
        assert!(held > 0, "{n} got no bindings back");
        farm.until_whole(n);
        println!("{n} restarted: holds {held} bindings again");
    }

    // Still a farm: every node registers, one status everywhere.
    for n in &nodes {
        let codes = register(SocketAddr::new(farm.ip(n), 5060), &aors[..5]);
        assert!(
            codes.iter().all(|&c| c == 200),
            "REGISTER via {n}: {codes:?}"
        );
    }
    let statuses: BTreeSet<(u64, u64, String)> = nodes.iter().map(|n| farm.status_at(n)).collect();
    assert_eq!(statuses.len(), 1, "nodes disagree: {statuses:?}");
    println!(
        "rolling upgrade of {} members done in {:?}",
        farm.members.len(),
        started.elapsed()
    );

    // Certificate rotation, as the guide does it for node2: revoke and issue on the CA (the
    // guide's commands), stop, wait, swap, start; then the CA's new list on every host.
    let old = farm.dir.path().join("old-node2");
    std::fs::create_dir_all(&old).unwrap();
    for f in ["node2.pem", "node2.key"] {
        std::fs::copy(farm.issued.file(f), old.join(f)).unwrap();
    }
    let (old_cert, old_key) = (old.join("node2.pem"), old.join("node2.key"));
    assert!(
        farm.monitor_as(&old_cert, &old_key, 5).is_some(),
        "node2's certificate is accepted before the rotation"
    );
    // The CA issues into the same directory as before; the running node2 read its files at
    // start, as on a host where the new files wait beside the old ones.
    for words in certs_commands(titled(&blocks, "rotate-node2")) {
        run_certs(
            &words,
            farm.dir.path(),
            &farm.bin,
            &|ip| live_ip(ip),
            &farm.issued.files,
        );
    }
    let new_serial =
        show(&farm.bin, &farm.issued.ca, farm.issued.file("node2.pem"))["serial"].clone();
    let old_serial = show(&farm.bin, &farm.issued.ca, &old_cert)["serial"].clone();
    assert_ne!(new_serial, old_serial, "a new certificate for node2");
    let others: Vec<&str> = nodes.iter().copied().filter(|o| *o != "node2").collect();
    farm.stop("node2");
    farm.until_placed(&others, &aors, "node2 stopped for its new certificate");
    farm.start("node2");
    farm.until_placed(&nodes, &aors, "node2 started with its new certificate");
    farm.until_whole("node2's new certificate");
    let ca_crl = farm.issued.file("crl.pem").to_path_buf();
    for crl in farm.crl_files() {
        std::fs::copy(&ca_crl, &crl).unwrap();
    }
    let took = eventually(
        Duration::from_secs(10),
        "old node2 certificate refused",
        || farm.monitor_as(&old_cert, &old_key, 2).is_none(),
    );
    println!("node2's old certificate refused {took:?} after the CRL files were copied");
    farm.until_whole("the CRL files");
    farm.until_placed(&nodes, &aors, "the CRL files");

    // Revocation, as the guide does it for node4: revoke --publish through the event servers.
    for words in certs_commands(titled(&blocks, "revoke-node4")) {
        run_certs(
            &words,
            farm.dir.path(),
            &farm.bin,
            &|ip| live_ip(ip),
            &farm.issued.files,
        );
    }
    let node4 = format!("is_online {} as registrar", farm.ip("node4"));
    let took = eventually(Duration::from_secs(10), "node4 out", || {
        farm.lookup("node1").ask(&node4) == "No"
    });
    println!("node4 out of node1's ring {took:?} after revoke --publish");
    farm.until_members(&["node4"], "revoking node4");
    let rest: Vec<&str> = nodes.iter().copied().filter(|n| *n != "node4").collect();
    farm.until_placed(&rest, &aors, "revoking node4");
}
