//! onehop-monitor: watches the network as a `monitor` (subscribe only, never a member).
//!
//! # Layout
//! - [`watch_status`]: a client session that keeps the newest network status.
//! - [`cli_main`]: `--json` prints one snapshot; without it, a plain summary.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use onehop_overlay::client::{ClientEvent, ClientOptions, EventClient};
use onehop_overlay::crl::CrlStore;
use onehop_overlay::farmfile::FarmFile;
use onehop_overlay::net::{self, ConnTable, Timing};
use onehop_overlay::status::NetworkStatus;
use onehop_overlay::tls::{Credentials, TlsFiles};
use onehop_overlay::wire::{Payload, Topic};
use tokio::sync::watch;

/// A monitor session: the newest status seen, and which event servers are reachable.
pub struct StatusWatch {
    /// The client (for `stop`).
    pub client: EventClient,
    /// The newest status seen (`None` until the first).
    pub status: watch::Receiver<Option<Arc<NetworkStatus>>>,
}

/// Connects to `eventservers` with the certificate in `tls` and keeps the newest status.
pub fn watch_status(tls: &TlsFiles, eventservers: Vec<SocketAddr>) -> anyhow::Result<StatusWatch> {
    let creds = Arc::new(Credentials::load(tls)?);
    let crl = CrlStore::open(creds.ca.to_vec(), None)?;
    let bind: SocketAddr = "0.0.0.0:0".parse().expect("literal");
    let endpoint = net::endpoint(bind, &creds, &crl.current(), Timing::default(), None)?;
    let opts = ClientOptions {
        eventservers,
        announce: None,
        subscribe: vec![Topic::Network],
        ..Default::default()
    };
    let (client, mut events) = EventClient::start(endpoint, opts, ConnTable::default(), Some(crl));
    let (tx, rx) = watch::channel(None::<Arc<NetworkStatus>>);
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if let ClientEvent::Event(ev) = ev {
                if let Payload::Network(s) = &ev.payload {
                    let newer = s.supersedes(tx.borrow().as_deref());
                    if newer {
                        let _ = tx.send(Some(Arc::new(s.clone())));
                    }
                }
            }
        }
    });
    Ok(StatusWatch { client, status: rx })
}

/// Waits up to `timeout` for a status that satisfies `pred`.
pub async fn wait_for(
    w: &mut StatusWatch,
    timeout: Duration,
    mut pred: impl FnMut(&NetworkStatus) -> bool,
) -> Option<Arc<NetworkStatus>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(s) = w.status.borrow().as_ref() {
            if pred(s) {
                return Some(s.clone());
            }
        }
        match tokio::time::timeout_at(deadline, w.status.changed()).await {
            Ok(Ok(())) => {}
            _ => return None,
        }
    }
}

/// Command-line options of `onehop-monitor`.
#[derive(Debug, Parser)]
#[command(
    name = "onehop-monitor",
    version,
    about = "Watch a onehop network as a monitor (subscribe only).",
    long_about = "Watch a onehop network as a monitor: connects to the event servers with a `monitor` certificate (which may subscribe, never publish) and shows the network status published by the active manager.\n\nWith --farm DIR everything is read from DIR/farm.json; otherwise give --ca, --cert, --key and one --eventserver per event server."
)]
pub struct Cli {
    /// A farm directory made by `onehop-farm up` (reads farm.json and the monitor certificate).
    #[arg(long)]
    pub farm: Option<PathBuf>,
    /// The CA certificate (PEM).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// A `monitor` certificate (PEM).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Its key (PEM).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// An event server's address, ip:port (repeat for each).
    #[arg(long = "eventserver")]
    pub eventservers: Vec<SocketAddr>,
    /// Print the current network status once as JSON and exit.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for a status, in seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

fn setup(cli: &Cli) -> anyhow::Result<(TlsFiles, Vec<SocketAddr>)> {
    if let Some(dir) = &cli.farm {
        let farm = FarmFile::load(dir)?;
        let mon = farm
            .monitor
            .clone()
            .ok_or_else(|| anyhow!("{}: farm.json names no monitor certificate", dir.display()))?;
        let mut tls = farm.client_tls(&mon);
        tls.crl = None;
        let es = if cli.eventservers.is_empty() {
            farm.eventservers()
        } else {
            cli.eventservers.clone()
        };
        return Ok((tls, es));
    }
    let (Some(ca), Some(cert), Some(key)) = (&cli.ca, &cli.cert, &cli.key) else {
        bail!("give --farm DIR, or all of --ca, --cert and --key");
    };
    if cli.eventservers.is_empty() {
        bail!("give at least one --eventserver ADDR (or --farm DIR)");
    }
    Ok((
        TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
            crl: None,
        },
        cli.eventservers.clone(),
    ))
}

async fn snapshot(cli: Cli) -> anyhow::Result<()> {
    let (tls, es) = setup(&cli)?;
    let mut w = watch_status(&tls, es.clone()).context("monitor session")?;
    let status = wait_for(&mut w, Duration::from_secs(cli.timeout), |_| true)
        .await
        .ok_or_else(|| {
            anyhow!(
                "no network status within {} s from event servers {:?}",
                cli.timeout,
                es
            )
        })?;
    w.client.stop();
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&*status)?);
    } else {
        println!(
            "term {} version {} manager {}",
            status.term, status.version, status.manager
        );
        println!("{:<16} {:<12} {:<16} roles", "name", "kind", "ip");
        for m in &status.members {
            let roles: Vec<&str> = m.roles.iter().map(|r| r.as_str()).collect();
            println!(
                "{:<16} {:<12} {:<16} {}",
                m.name,
                m.kind,
                m.ip,
                roles.join(",")
            );
        }
    }
    Ok(())
}

/// The `onehop-monitor` program.
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
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("onehop-monitor: error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(snapshot(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("onehop-monitor: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
