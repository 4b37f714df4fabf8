//! onehop-node: a role-bearing member of the overlay.
//!
//! # Layout
//! - [`config`]: the TOML configuration.
//! - [`discovery`]: finding the event servers through DNS when none are configured.
//! - [`view`]: the status held and the rings built from it.
//! - [`lookup`]: the lookup interface (TCP 9500).
//! - [`roles`]: role modules and what they are given.
//! - this file: joining (announce exactly the certificate's roles), applying statuses, leaving.

pub mod config;
pub mod discovery;
pub mod lookup;
pub mod peer;
pub mod provision;
pub mod proxy;
pub mod relay;
pub mod roles;
pub mod services;
pub mod store;
pub mod view;

/// The SIP protocol, from the `onehop-sip` crate (kept at this path for the node's modules).
pub use onehop_sip as sip;

use std::ffi::OsString;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use onehop_overlay::client::{ClientEvent, ClientOptions, EventClient};
use onehop_overlay::crl::CrlStore;
use onehop_overlay::metrics::Metrics;
use onehop_overlay::net::{self, ConnTable};
use onehop_overlay::status::Endpoint;
use onehop_overlay::tls::Credentials;
use onehop_overlay::wire::{Announce, Payload, Topic};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::Config;
use view::View;

/// Runs the node until `shutdown` resolves, then leaves gracefully.
pub async fn run(mut cfg: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let creds = Arc::new(Credentials::load(&cfg.tls)?);
    let mut shutdown = std::pin::pin!(shutdown);
    if cfg.eventservers.is_empty() {
        tokio::select! {
            found = discovery::discover_eventservers(&cfg) => cfg.eventservers = found,
            _ = &mut shutdown => {
                info!("stopped before any event server was found");
                return Ok(());
            }
        }
    }
    let identity = Arc::new(creds.identity.clone());
    let crl = CrlStore::open(creds.ca.to_vec(), cfg.tls.crl.clone())?;
    crl.spawn_file_watch(Duration::from_millis(250));
    let metrics = Metrics::default();
    let endpoint = net::endpoint(
        SocketAddr::new(cfg.ip, 0),
        &creds,
        &crl.current(),
        cfg.quic,
        None,
    )?;
    let conns = ConnTable::default();
    net::spawn_crl_enforcer(
        endpoint.clone(),
        creds.clone(),
        crl.clone(),
        conns.clone(),
        cfg.quic,
        None,
    );

    let lookup_addr = SocketAddr::new(cfg.ip, cfg.lookup_port);
    let view = Arc::new(ArcSwap::from_pointee(View::default()));
    let (view_tx, view_rx) = watch::channel(Arc::new(View::default()));
    let listener_view = view.clone();
    let served = lookup::Served::new(&metrics);
    let max = cfg.lookup_connections;
    // The store starts after the lookup interface (which must bind first); `holds` sees it once
    // it is there.
    let store_slot: Arc<std::sync::OnceLock<store::Store>> = Arc::new(std::sync::OnceLock::new());
    let slot = store_slot.clone();
    let holds: lookup::Holds =
        Arc::new(move |role: &str, key: &str| slot.get().is_some_and(|s| s.holds(role, key)));
    let timeouts = lookup::Timeouts {
        idle: Duration::from_secs(cfg.lookup_idle_secs),
        ..lookup::DEFAULT_TIMEOUTS
    };
    let lookup_task = tokio::spawn(async move {
        lookup::serve_with(
            lookup_addr,
            listener_view,
            max,
            served,
            Some(holds),
            timeouts,
        )
        .await
    });
    // Fail early if the port is taken.
    tokio::task::yield_now().await;
    if lookup_task.is_finished() {
        return match lookup_task.await {
            Ok(Err(e)) => Err(e).with_context(|| format!("lookup interface on {lookup_addr}")),
            _ => Err(anyhow::anyhow!("lookup interface on {lookup_addr} stopped")),
        };
    }
    let mut endpoints = vec![Endpoint {
        service: "lookup".into(),
        addr: lookup_addr,
    }];
    if let Some(addr) = cfg.metrics {
        endpoints.push(Endpoint {
            service: "metrics".into(),
            addr,
        });
        let m = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = onehop_overlay::metrics::serve(addr, m).await {
                warn!(cause = %e, %addr, "metrics endpoint failed");
            }
        });
    }
    let cancel = CancellationToken::new();
    let (more, services) = services::start(
        &cfg,
        &creds,
        &crl,
        &identity,
        view_rx.clone(),
        &metrics,
        cancel.clone(),
    )
    .await?;
    endpoints.extend(more);
    let _ = store_slot.set(services.store.clone());
    let opts = ClientOptions {
        eventservers: cfg.eventservers.clone(),
        announce: Some(Announce {
            roles: identity.roles.clone(),
            endpoints,
        }),
        subscribe: vec![Topic::Network, Topic::Crl],
        metrics: Some(metrics.clone()),
        ..Default::default()
    }
    .with_limits(cfg.eventclient);
    let (client, mut events) = EventClient::start(endpoint.clone(), opts, conns, Some(crl.clone()));
    let cert_watch =
        onehop_overlay::certwatch::CertWatch::new(&creds, crl.clone(), cfg.cert_warnings, &metrics)
            .spawn(Some(onehop_overlay::certwatch::to_events(client.clone())));
    spawn_stats(
        client.clone(),
        services.store.clone(),
        metrics.clone(),
        cancel.clone(),
    );
    info!(name = %identity.name, roles = ?identity.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(), lookup = %lookup_addr, "node started");

    let mut role_tasks = Vec::new();
    for role in &identity.roles {
        if let Some(module) = roles::built_in(role.as_str()) {
            role_tasks.push(module.start(roles::RoleContext {
                view: view_rx.clone(),
                overlay: client.clone(),
                identity: identity.clone(),
                shutdown: cancel.clone(),
            }));
        }
    }

    let version = metrics.gauge("status_version", "Version of the network status held.");
    let term = metrics.gauge("status_term", "Term of the network status held.");
    let members = metrics.gauge("members", "Live members in the status held.");
    let points = cfg.points;
    let apply = async {
        while let Some(ev) = events.recv().await {
            match ev {
                ClientEvent::Event(ev) => {
                    // The client follows the deltas and hands over each newer status whole.
                    let Payload::Network(status) = &ev.payload else {
                        continue;
                    };
                    let current = view.load_full();
                    if !status.supersedes(current.status.as_deref()) {
                        continue;
                    }
                    let status = Arc::new(status.clone());
                    // Changing the rings of a large farm takes a while: keep it off the
                    // threads that answer lookups.
                    let s = status.clone();
                    let next = tokio::task::spawn_blocking(move || current.apply_shared(s, points))
                        .await
                        .ok()
                        .flatten();
                    if let Some(next) = next {
                        info!(term = status.term, version = status.version, members = status.members.len(), manager = %status.manager, "network status applied");
                        term.set(status.term as i64);
                        version.set(status.version as i64);
                        members.set(status.members.len() as i64);
                        metrics.set_membership(&status);
                        view.store(next.clone());
                        let _ = view_tx.send(next);
                    }
                }
                ClientEvent::Up { server, addr } => {
                    info!(peer = %onehop_overlay::logging::peer_label(Some(&server), addr), "event server session up")
                }
                ClientEvent::Down {
                    server: Some(server),
                    addr,
                    reason,
                } => {
                    warn!(peer = %onehop_overlay::logging::peer_label(Some(&server), addr), %reason, "event server session down")
                }
                ClientEvent::Down { .. } => {}
            }
        }
    };
    tokio::select! {
        _ = apply => {}
        _ = shutdown => info!("leaving"),
        r = lookup_task => warn!(result = ?r, "lookup interface stopped"),
    }
    if let Some(relay) = &services.relay {
        relay.drain();
    }
    cancel.cancel();
    cert_watch.abort();
    client.leave(Duration::from_secs(1)).await;
    for t in role_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    Ok(())
}

/// The `onehop-node` program.
pub fn cli_main(args: Vec<OsString>) -> ExitCode {
    onehop_overlay::daemon::daemon_main(
        "onehop-node",
        "A onehop member bearing the roles of its certificate: it joins through the event servers, keeps one hash ring per role and answers the lookup interface (TCP 9500).",
        args,
        run,
    )
}

/// Every 2 s: refreshes the store gauge and publishes the node's load figures on `stats`
/// (store entries, lookups, SIP requests and registrations, live SIP transactions, and for a
/// media relay its sessions and packets relayed per second).
fn spawn_stats(
    client: EventClient,
    store: store::Store,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let stored = metrics.gauge("store_entries", "Entries held in the replicated store.");
    let aors = metrics.gauge(
        "registrar_aors",
        "AORs with live bindings held on this node (as their owner or a replica).",
    );
    let bytes = metrics.gauge(
        "store_bytes",
        "Bytes held in the replicated store (keys, values and 128 bytes per entry), bounded by store_max_bytes.",
    );
    let full = metrics.counter(
        "store_full_refusals_total",
        "Writes and replication or transfer batches refused because the store held store_max_entries or store_max_bytes.",
    );
    let walked = metrics.counter(
        "store_walked_entries_total",
        "Entries looked at by the walks that re-plan the store after ring changes and by the repair passes after them (only the ranges a change moved are walked).",
    );
    let handoff = metrics.gauge(
        "store_handoff_open",
        "1 while a hand-off window is open (10 s after a ring change): keys this node lacks and now holds are fetched from their previous holders before it answers for them.",
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        // Relayed packets counted at the last tick, for packets_per_s.
        let mut relayed: Option<(i64, tokio::time::Instant)> = None;
        // The store's entries are counted in passes of at most COUNT_PER_TICK entries a
        // tick (a chunk at a time, other tasks run between chunks): the gauges follow the
        // last whole pass, every tick for a store of up to that many entries, every few
        // ticks for a larger one, at a bounded cost per tick whatever the store holds.
        const COUNT_CHUNK: usize = 4_096;
        const COUNT_PER_TICK: usize = 8 * COUNT_CHUNK;
        let mut count = crate::store::LiveCount::default();
        let (mut live, mut registered) = (0, 0);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            for _ in 0..COUNT_PER_TICK / COUNT_CHUNK {
                if let Some(done) = store.count_step(
                    &mut count,
                    "registrar",
                    crate::proxy::glue::has_bindings,
                    COUNT_CHUNK,
                ) {
                    (live, registered) = done;
                    break;
                }
                tokio::task::yield_now().await;
            }
            stored.set(live as i64);
            bytes.set(store.held_bytes() as i64);
            full.set(store.full_refusals() as i64);
            walked.set(store.walked() as i64);
            handoff.set(store.handoff_open() as i64);
            aors.set(registered as i64);
            let mut figures = vec![
                ("store_entries".to_string(), live as f64),
                ("bindings".to_string(), registered as f64),
            ];
            for name in [
                "lookups_total",
                "sip_requests_total",
                "sip_registrations_total",
                "sip_transactions",
            ] {
                if let Some(v) = metrics.value(name) {
                    figures.push((name.to_string(), v as f64));
                }
            }
            if let Some(sessions) = metrics.value("relay_sessions") {
                // A media relay: its sessions and the packets it relayed per second.
                let packets: i64 = ["caller_to_callee", "callee_to_caller"]
                    .iter()
                    .filter_map(|d| {
                        metrics.value(&format!("relay_packets_total{{direction=\"{d}\"}}"))
                    })
                    .sum();
                let now = tokio::time::Instant::now();
                let rate = relayed.map_or(0.0, |(before, at)| {
                    (packets - before) as f64 / now.duration_since(at).as_secs_f64().max(0.001)
                });
                relayed = Some((packets, now));
                figures.push(("relay_sessions".to_string(), sessions as f64));
                figures.push(("packets_per_s".to_string(), rate.round()));
            }
            client.publish(Payload::Stats(onehop_overlay::wire::Stats { figures }));
        }
    });
}
