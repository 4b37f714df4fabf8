//! Who runs where, their certificates and their configuration files.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use onehop_certs::{Ca, IssueRequest};
use onehop_overlay::farmfile::ClientCert;
use onehop_overlay::identity::identity_from_pem;
use onehop_overlay::status::{Kind, Role};
use serde::{Deserialize, Serialize};

use crate::{ports, UpArgs};

/// A member the farm will start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Unique name (certificate CN).
    pub name: String,
    /// Its kind.
    pub kind: Kind,
    /// Its own address (loopback for `onehop-farm up`).
    pub ip: Ipv4Addr,
    /// Roles (nodes only).
    pub roles: Vec<String>,
    /// Raft id (managers only), from 1.
    pub raft_id: Option<u64>,
}

/// Lays out the members: event servers, managers, DNS servers, nodes, addresses from the base up.
/// The base must be a loopback address: `onehop-farm up` runs every member on this machine's
/// loopback interface.
pub fn plan(args: &UpArgs) -> anyhow::Result<Vec<Planned>> {
    if !args.base_ip.is_loopback() {
        bail!(
            "--base-ip {} is not a loopback address (use 127.x.y.z)",
            args.base_ip
        );
    }
    layout(args)
}

/// [`plan`] from any IPv4 base address, for farms whose members live in network namespaces
/// of their own (each with its own interface and address, as the integration tests run them).
pub fn layout(args: &UpArgs) -> anyhow::Result<Vec<Planned>> {
    for r in &args.roles {
        Role::new(r).map_err(|e| anyhow::anyhow!("--roles: {e}"))?;
    }
    let total = args.eventservers + args.managers + args.dns + args.nodes;
    let base = u32::from(args.base_ip);
    if base.checked_add(total as u32).is_none()
        || Ipv4Addr::from(base + total as u32).octets()[0] != args.base_ip.octets()[0]
    {
        bail!(
            "--base-ip {} leaves no room for {total} members",
            args.base_ip
        );
    }
    let mut out = Vec::with_capacity(total);
    let mut next = base;
    let mut take = |name: String, kind: Kind, roles: Vec<String>, raft_id: Option<u64>| {
        out.push(Planned {
            name,
            kind,
            ip: Ipv4Addr::from(next),
            roles,
            raft_id,
        });
        next += 1;
    };
    for i in 1..=args.eventservers {
        take(format!("es{i}"), Kind::Eventserver, vec![], None);
    }
    for i in 1..=args.managers {
        take(format!("manager{i}"), Kind::Manager, vec![], Some(i as u64));
    }
    for i in 1..=args.dns {
        take(format!("dns{i}"), Kind::Dns, vec![], None);
    }
    for i in 1..=args.nodes {
        take(format!("node{i}"), Kind::Node, args.roles.clone(), None);
    }
    Ok(out)
}

/// The certificates of a farm.
#[derive(Debug, Clone)]
pub struct CertSet {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The CRL.
    pub crl: PathBuf,
    /// The monitor's certificate.
    pub monitor: ClientCert,
    /// The admin's certificate.
    pub admin: ClientCert,
}

fn cert_paths(dir: &Path, name: &str) -> ClientCert {
    ClientCert {
        cert: dir.join("certs").join(format!("{name}.pem")),
        key: dir.join("certs").join(format!("{name}.key")),
    }
}

/// Creates the CA if missing and issues every certificate that is missing or no longer fits
/// (another address, kind or roles: the old one is revoked first).
pub fn ensure_certs(dir: &Path, domain: &str, members: &[Planned]) -> anyhow::Result<CertSet> {
    let ca_dir = dir.join("ca");
    let mut ca = if ca_dir.join("ca.pem").exists() {
        Ca::open(&ca_dir)?
    } else {
        println!("  creating the CA for {domain} in {}", ca_dir.display());
        Ca::init(&ca_dir, domain)?
    };
    if ca.domain() != domain {
        bail!(
            "the CA in {} is for domain {}, not {domain}: use --domain {} or another --dir",
            ca_dir.display(),
            ca.domain(),
            ca.domain()
        );
    }
    let out = dir.join("certs");
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut wanted: Vec<(String, Kind, Vec<String>, Vec<Ipv4Addr>)> = members
        .iter()
        .map(|m| (m.name.clone(), m.kind, m.roles.clone(), vec![m.ip]))
        .collect();
    wanted.push(("monitor".into(), Kind::Monitor, vec![], vec![]));
    wanted.push(("admin".into(), Kind::Admin, vec![], vec![]));
    let mut issued = 0;
    for (name, kind, roles, ips) in wanted {
        let paths = cert_paths(dir, &name);
        if fits(&paths, kind, &roles, &ips) && ca.live(&name).is_some() {
            continue;
        }
        if ca.live(&name).is_some() {
            ca.revoke(&name)?;
            println!("  revoked the old certificate of {name} (it no longer fits)");
        }
        let roles: Vec<Role> = roles
            .iter()
            .map(|r| Role::new(r))
            .collect::<Result<_, _>>()?;
        let req = IssueRequest::new(name.clone(), kind)
            .roles(roles)
            .ips(ips.into_iter().map(Into::into));
        ca.issue(&req, &out)?;
        issued += 1;
    }
    if issued > 0 {
        println!("  issued {issued} certificate(s) in {}", out.display());
    }
    Ok(CertSet {
        ca: ca.cert_path(),
        crl: ca.crl_path(),
        monitor: cert_paths(dir, "monitor"),
        admin: cert_paths(dir, "admin"),
    })
}

fn fits(paths: &ClientCert, kind: Kind, roles: &[String], ips: &[Ipv4Addr]) -> bool {
    let (Ok(pem), true) = (std::fs::read_to_string(&paths.cert), paths.key.exists()) else {
        return false;
    };
    let Ok(id) = identity_from_pem(&pem) else {
        return false;
    };
    let mut want: Vec<&str> = roles.iter().map(|s| s.as_str()).collect();
    want.sort();
    let have: Vec<&str> = id.roles.iter().map(|r| r.as_str()).collect();
    let cert_ips = x509_ips(&pem);
    id.kind == kind
        && want == have
        && ips
            .iter()
            .all(|ip| cert_ips.contains(&std::net::IpAddr::V4(*ip)))
        && id.not_after > now_secs() + 86_400
}

fn x509_ips(pem: &str) -> Vec<std::net::IpAddr> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, block)) = x509_parser::pem::parse_x509_pem(pem.as_bytes()) else {
        return Vec::new();
    };
    let Ok(cert) = block.parse_x509() else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::IPAddress(b) if b.len() == 4 => {
                Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).ok()?))
            }
            GeneralName::IPAddress(b) if b.len() == 16 => {
                Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).ok()?))
            }
            _ => None,
        })
        .collect()
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Layout {
    domain: String,
    managers: usize,
}

/// The managers' Raft state is kept across runs, so their number must not change under it.
pub fn check_layout(dir: &Path, args: &UpArgs) -> anyhow::Result<()> {
    let path = dir.join("layout.json");
    let want = Layout {
        domain: args.domain.clone(),
        managers: args.managers,
    };
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(have) = serde_json::from_str::<Layout>(&text) {
            if have != want && dir.join("data").exists() {
                bail!(
                    "{} was made with {} manager(s) for {}; their Raft state is in {}/data. \
                     Use --managers {} --domain {}, or another --dir",
                    dir.display(),
                    have.managers,
                    have.domain,
                    dir.display(),
                    have.managers,
                    have.domain
                );
            }
        }
    }
    std::fs::write(&path, serde_json::to_string_pretty(&want)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn q(p: &Path) -> String {
    toml_str(&p.display().to_string())
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The CPUs this process may use (the farm's members inherit its affinity).
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runtime threads for each of `nodes` nodes sharing `cpus` CPUs: an equal share, at least 1.
/// Twice as many runnable threads as CPUs cost a context switch at every hand-over between
/// them (docs/decisions.md).
pub fn node_threads(cpus: usize, nodes: usize) -> usize {
    (cpus / nodes.max(1)).max(1)
}

/// Writes the member's configuration file; returns its path.
pub fn write_config(
    dir: &Path,
    args: &UpArgs,
    m: &Planned,
    all: &[Planned],
    certs: &CertSet,
) -> anyhow::Result<PathBuf> {
    let es: Vec<String> = all
        .iter()
        .filter(|p| p.kind == Kind::Eventserver)
        .map(|p| toml_str(&format!("{}:{}", p.ip, ports::EVENTSERVER)))
        .collect();
    let es = format!("[{}]", es.join(", "));
    let mine = cert_paths(dir, &m.name);
    let metrics = toml_str(&format!("{}:{}", m.ip, ports::METRICS));
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Written by onehop-farm up for {} ({}); rewritten at every start.",
        m.name, m.kind
    );
    match m.kind {
        Kind::Eventserver => {
            let _ = writeln!(
                t,
                "listen = {}",
                toml_str(&format!("{}:{}", m.ip, ports::EVENTSERVER))
            );
            let _ = writeln!(t, "metrics = {metrics}");
        }
        Kind::Manager => {
            let data = dir.join("data").join(&m.name);
            std::fs::create_dir_all(&data)
                .with_context(|| format!("cannot create {}", data.display()))?;
            let _ = writeln!(t, "ip = {}", toml_str(&m.ip.to_string()));
            let _ = writeln!(t, "raft_port = {}", ports::RAFT);
            let _ = writeln!(t, "id = {}", m.raft_id.unwrap_or(1));
            let _ = writeln!(t, "data_dir = {}", q(&data));
            let _ = writeln!(t, "eventservers = {es}");
            let _ = writeln!(t, "metrics = {metrics}");
            for p in all.iter().filter(|p| p.kind == Kind::Manager) {
                let _ = writeln!(t, "\n[[peers]]");
                let _ = writeln!(t, "id = {}", p.raft_id.unwrap_or(1));
                let _ = writeln!(t, "name = {}", toml_str(&p.name));
                let _ = writeln!(
                    t,
                    "addr = {}",
                    toml_str(&format!("{}:{}", p.ip, ports::RAFT))
                );
            }
        }
        Kind::Dns => {
            let _ = writeln!(t, "ip = {}", toml_str(&m.ip.to_string()));
            let _ = writeln!(t, "port = {}", args.dns_port);
            let _ = writeln!(t, "domain = {}", toml_str(&args.domain));
            let _ = writeln!(t, "eventservers = {es}");
            let _ = writeln!(t, "metrics = {metrics}");
        }
        Kind::Node => {
            let nodes = all.iter().filter(|p| p.kind == Kind::Node).count();
            let _ = writeln!(t, "ip = {}", toml_str(&m.ip.to_string()));
            let _ = writeln!(t, "domain = {}", toml_str(&args.domain));
            let _ = writeln!(t, "eventservers = {es}");
            let _ = writeln!(t, "metrics = {metrics}");
            let _ = writeln!(
                t,
                "# The farm's {nodes} node(s) share this machine's CPUs: each runs this many threads."
            );
            let _ = writeln!(t, "threads = {}", node_threads(cpus(), nodes));
        }
        Kind::Monitor | Kind::Admin => bail!("{} is not a member kind", m.kind),
    }
    let _ = writeln!(t, "\n[tls]");
    let _ = writeln!(t, "ca = {}", q(&certs.ca));
    let _ = writeln!(t, "cert = {}", q(&mine.cert));
    let _ = writeln!(t, "key = {}", q(&mine.key));
    let _ = writeln!(t, "crl = {}", q(&certs.crl));
    let cfg_dir = dir.join("config");
    std::fs::create_dir_all(&cfg_dir)
        .with_context(|| format!("cannot create {}", cfg_dir.display()))?;
    let path = cfg_dir.join(format!("{}.toml", m.name));
    std::fs::write(&path, t).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::node_threads;

    #[test]
    fn nodes_share_the_cpus() {
        assert_eq!(node_threads(2, 3), 1);
        assert_eq!(node_threads(2, 1), 2);
        assert_eq!(node_threads(16, 5), 3);
        assert_eq!(node_threads(1, 0), 1);
    }
}
