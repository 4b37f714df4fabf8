//! The command line: `--json` prints one snapshot, `--follow` prints the network's changes as
//! lines, and otherwise the terminal UI runs (on a terminal only).

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use onehop_overlay::farmfile::FarmFile;
use onehop_overlay::ring::DEFAULT_POINTS;
use onehop_overlay::tls::TlsFiles;

use crate::follow::Follow;
use crate::format::now_ms;
use crate::state::{App, Options};
use crate::{start_session, wait_for, watch_status, WATCH_TOPICS};

/// Command-line options of `onehop-monitor`.
#[derive(Debug, Parser)]
#[command(
    name = "onehop-monitor",
    version,
    about = "Watch a onehop network as a monitor (subscribe only).",
    long_about = "Watch a onehop network as a monitor: connects to the event servers with a `monitor` certificate (which may subscribe, never publish) and shows the network status published by the active manager, the members' load figures, every role's ring, and the network's log.\n\nOn a terminal it runs a full-screen UI (press ? for the keys). --json prints one snapshot of the status; --follow prints the changes as timestamped lines for scripts.\n\nWith --farm DIR everything is read from DIR/farm.json; otherwise give --ca, --cert, --key and one --eventserver per event server."
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
    #[arg(long, conflicts_with = "follow")]
    pub json: bool,
    /// Print status changes, log events and event-server sessions going up or down as lines
    /// (`TIMESTAMP WHAT ...`), until interrupted or --timeout.
    #[arg(long)]
    pub follow: bool,
    /// Seconds: with --json, how long to wait for a status (default 10); with --follow, when
    /// to stop (default: never).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Points per member on each ring, as the nodes are configured (for shares and lookups).
    #[arg(long, default_value_t = DEFAULT_POINTS)]
    pub points: u32,
    /// How many members a lookup shows per role: the owner and the next N-1.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
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

async fn snapshot(cli: &Cli, tls: TlsFiles, es: Vec<SocketAddr>) -> anyhow::Result<()> {
    let timeout = cli.timeout.unwrap_or(10);
    let mut w = watch_status(&tls, es.clone()).context("monitor session")?;
    let status = wait_for(&mut w, Duration::from_secs(timeout), |_| true)
        .await
        .ok_or_else(|| anyhow!("no network status within {timeout} s from event servers {es:?}"))?;
    w.client.stop();
    println!("{}", serde_json::to_string_pretty(&*status)?);
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// The ends of the monitor's own certificate and of the CA's, read from `tls`.
fn own_certs(tls: &TlsFiles) -> Option<crate::state::OwnCerts> {
    let creds = onehop_overlay::tls::Credentials::load(tls).ok()?;
    Some(crate::state::OwnCerts {
        name: creds.identity.name.clone(),
        own_not_after: creds.identity.not_after,
        ca_not_after: onehop_overlay::certwatch::not_after(&creds.ca)?,
    })
}

async fn follow(cli: &Cli, tls: TlsFiles, es: Vec<SocketAddr>) -> anyhow::Result<()> {
    let mut f = match own_certs(&tls) {
        Some(c) => Follow::with_certs(&c, Default::default()),
        None => Follow::new(),
    };
    let (client, mut events) =
        start_session(&tls, es, WATCH_TOPICS.to_vec()).context("monitor session")?;
    let stop = async {
        match cli.timeout {
            Some(t) => tokio::time::sleep(Duration::from_secs(t)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    let interrupt = interrupted();
    tokio::pin!(interrupt);
    let mut out = std::io::stdout();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let mut closed = false;
                for line in f.certs(now_ms()) {
                    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                        closed = true;
                        break;
                    }
                }
                if closed {
                    break;
                }
            }
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                let mut closed = false;
                let now = now_ms();
                let mut lines = f.lines(now, &ev);
                lines.extend(f.certs(now));
                for line in lines {
                    // A closed pipe (`| head`) ends the program quietly.
                    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                        closed = true;
                        break;
                    }
                }
                if closed {
                    break;
                }
            }
            _ = &mut stop => break,
            _ = &mut interrupt => break,
        }
    }
    client.stop();
    Ok(())
}

async fn ui(cli: &Cli, tls: TlsFiles, es: Vec<SocketAddr>) -> anyhow::Result<()> {
    let (client, events) =
        start_session(&tls, es.clone(), WATCH_TOPICS.to_vec()).context("monitor session")?;
    let app = App::new(
        &es,
        Options {
            points: cli.points,
            copies: cli.replicas,
            certs: own_certs(&tls),
            ..Options::default()
        },
    );
    let result = crate::tui::run(app, events).await;
    client.stop();
    result
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
    let tui = !cli.json && !cli.follow;
    if tui && !(std::io::stdout().is_terminal() && std::io::stdin().is_terminal()) {
        eprintln!(
            "onehop-monitor: the terminal UI needs a terminal (stdin and stdout); \
             use --json for a snapshot or --follow for a stream of lines"
        );
        return ExitCode::from(2);
    }
    let (tls, es) = match setup(&cli) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("onehop-monitor: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("onehop-monitor: error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        if cli.json {
            snapshot(&cli, tls, es).await
        } else if cli.follow {
            follow(&cli, tls, es).await
        } else {
            ui(&cli, tls, es).await
        }
    });
    // The client's tasks may still be closing; do not wait for them.
    rt.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("onehop-monitor: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
