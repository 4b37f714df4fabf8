//! onehop-manager: several run, Raft elects one active manager, which publishes the network
//! status.
//!
//! # Layout
//! - [`config`]: the TOML configuration.
//! - [`raft`]: openraft storage (vote and log on disk), state machine (the provisioning store)
//!   and networking over a pluggable transport.
//! - [`transport`]: that transport over QUIC with mutual TLS (UDP 8001), which also serves
//!   the farm-read protocol to nodes and DNS servers.
//! - [`farm_read`]: the farm-read service (domains, the SIP nonce key, single accounts) and
//!   the making of the farm's nonce key.
//! - [`members`]: the live-member picture built from the event servers' `members` topic.
//! - [`provision`]: the provisioning data (domains, accounts, aliases, changes) in redb.
//! - [`publisher`]: when and what the active manager publishes.
//! - this file: wiring.

pub mod api;
pub mod config;
pub mod farm_read;
pub mod members;
pub mod provision;
pub mod publisher;
pub mod raft;
pub mod transport;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use onehop_overlay::client::{ClientEvent, ClientOptions, EventClient};
use onehop_overlay::crl::CrlStore;
use onehop_overlay::metrics::Metrics;
use onehop_overlay::net::{self, ConnTable};
use onehop_overlay::status::Endpoint;
use onehop_overlay::tls::Credentials;
use onehop_overlay::wire::{Announce, Topic};
use tracing::{info, warn};

pub use config::Config;
use publisher::Publisher;
use raft::ManagerNode;

/// Runs the manager until `shutdown` resolves.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let creds = Arc::new(Credentials::load(&cfg.tls)?);
    let name = creds.identity.name.clone();
    let crl = CrlStore::open(creds.ca.to_vec(), cfg.tls.crl.clone())?;
    crl.spawn_file_watch(Duration::from_millis(250));
    let metrics = Metrics::default();
    let raft_addr = SocketAddr::new(cfg.ip, cfg.raft_port);
    let endpoint = net::endpoint(raft_addr, &creds, &crl.current(), cfg.quic, Some(256))
        .with_context(|| format!("raft listener on {raft_addr}"))?;
    let conns = ConnTable::default();
    net::spawn_crl_enforcer(
        endpoint.clone(),
        creds.clone(),
        crl.clone(),
        conns.clone(),
        cfg.quic,
        Some(256),
    );
    if let Some(addr) = cfg.metrics {
        let m = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = onehop_overlay::metrics::serve(addr, m).await {
                warn!(cause = %e, %addr, "metrics endpoint failed");
            }
        });
    }
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
    let peers: BTreeMap<u64, ManagerNode> = cfg
        .peers
        .iter()
        .map(|p| {
            (
                p.id,
                ManagerNode {
                    name: p.name.clone(),
                    addr: p.addr.to_string(),
                },
            )
        })
        .collect();
    let transport = transport::QuicTransport::new(endpoint.clone(), conns.clone());
    let raft = raft::start_with_cache(
        cfg.id,
        &cfg.data_dir,
        peers,
        transport,
        cfg.raft,
        (cfg.provision_cache_mib as usize) << 20,
    )
    .await
    .context("starting raft")?;
    tokio::spawn(transport::serve(
        endpoint.clone(),
        raft.raft().clone(),
        conns.clone(),
        farm_read::FarmReads::new(raft.store().db().clone(), &metrics),
        onehop_overlay::admission::HandshakeGate::new(cfg.quic_admission, &metrics),
    ));

    let api_token = tokio_util::sync::CancellationToken::new();
    let _stop_api = api_token.clone().drop_guard();
    farm_read::spawn_nonce_keeper(raft.clone(), api_token.clone());
    let mut endpoints = vec![Endpoint {
        service: "raft".into(),
        addr: raft_addr,
    }];
    if cfg.api_port != 0 {
        let state = api::ApiState {
            raft: raft.clone(),
            name: name.clone(),
            counters: Arc::new(api::ApiCounters::new(&metrics)),
        };
        let addr = api::serve(
            SocketAddr::new(cfg.ip, cfg.api_port),
            creds.clone(),
            crl.clone(),
            state,
            cfg.api_max_connections,
            api_token.clone(),
        )
        .await?;
        endpoints.push(Endpoint {
            service: "api".into(),
            addr,
        });
    }
    if let Some(addr) = cfg.metrics {
        endpoints.push(Endpoint {
            service: "metrics".into(),
            addr,
        });
    }
    let opts = ClientOptions {
        eventservers: cfg.eventservers.clone(),
        announce: Some(Announce {
            roles: Vec::new(),
            endpoints,
        }),
        subscribe: vec![Topic::Members, Topic::Network, Topic::Crl, Topic::Manager],
        metrics: Some(metrics.clone()),
        ..Default::default()
    }
    .with_limits(cfg.eventclient);
    let (status_tx, status_rx) = tokio::sync::watch::channel(None);
    provision::push::spawn(
        raft.clone(),
        endpoint.clone(),
        conns.clone(),
        status_rx,
        &metrics,
        api_token.clone(),
    );
    let (client, mut events) = EventClient::start(endpoint.clone(), opts, conns, Some(crl.clone()));
    let cert_watch =
        onehop_overlay::certwatch::CertWatch::new(&creds, crl.clone(), cfg.cert_warnings, &metrics)
            .spawn(Some(onehop_overlay::certwatch::to_events(client.clone())));
    info!(%name, id = cfg.id, raft = %raft_addr, "manager started");

    let mut publisher = Publisher::new(name.clone(), &metrics);
    let mut leadership = raft.leadership();
    let batch = Duration::from_millis(cfg.batch_ms);
    let mut republish = tokio::time::interval(Duration::from_millis(cfg.republish_ms));
    republish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut due: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);
    {
        let l = *leadership.borrow_and_update();
        publisher.leadership(l.is_me, l.term);
    }
    loop {
        let sleep_until =
            due.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                let changed = match ev {
                    ClientEvent::Up { server, addr } => {
                        info!(peer = %onehop_overlay::logging::peer_label(Some(&server), addr), "event server session up");
                        publisher.server_up(&client, addr);
                        publisher.view.server_up(&server, addr);
                        true
                    }
                    ClientEvent::Down { server: Some(server), addr, reason } => {
                        warn!(peer = %onehop_overlay::logging::peer_label(Some(&server), addr), %reason, "event server session down");
                        publisher.view.server_down(&server);
                        true
                    }
                    ClientEvent::Down { .. } => false,
                    ClientEvent::Event(ev) => {
                        // The client follows the deltas and hands over each newer status whole.
                        if let onehop_overlay::wire::Payload::Network(s) = &ev.payload {
                            status_tx.send_if_modified(|held| {
                                let newer = s.supersedes(held.as_ref());
                                if newer {
                                    *held = Some(s.clone());
                                }
                                newer
                            });
                        }
                        publisher.on_event(&ev)
                    }
                };
                if changed && publisher.is_active() && due.is_none() {
                    due = Some(tokio::time::Instant::now() + batch);
                }
            }
            r = leadership.changed() => {
                if r.is_err() { break; }
                let l = *leadership.borrow_and_update();
                if publisher.leadership(l.is_me, l.term) {
                    info!(term = l.term, "this manager is now the active manager");
                    publisher.activate(&client);
                    due = None;
                }
            }
            _ = tokio::time::sleep_until(sleep_until), if due.is_some() => {
                due = None;
                publisher.publish(&client, false);
            }
            _ = republish.tick() => publisher.republish(&client),
            _ = &mut shutdown => {
                info!("shutting down");
                break;
            }
        }
    }
    cert_watch.abort();
    client.leave(Duration::from_secs(1)).await;
    if let Err(e) = raft.shutdown().await {
        warn!(cause = %e, "raft shutdown");
    }
    endpoint.close(
        onehop_overlay::wire::CloseCode::Shutdown.varint(),
        b"manager shutting down",
    );
    Ok(())
}

/// The `onehop-manager` program.
pub fn cli_main(args: Vec<OsString>) -> ExitCode {
    onehop_overlay::daemon::daemon_main(
        "onehop-manager",
        "A onehop manager: managers elect one active manager with Raft (state on disk); the active one publishes the network status built from the event servers' member sessions.",
        args,
        run,
    )
}
