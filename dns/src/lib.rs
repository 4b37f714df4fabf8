//! onehop-dns: the authoritative DNS server of the SIP domain and of every provisioned
//! domain, kept in sync with the live members through the network status.
//!
//! # Layout
//! - [`config`]: the TOML configuration.
//! - [`zone`]: [`Zone::from_status`], every record answered, a pure function of the status
//!   (the ENUM numbers apart: the zone shares an [`EnumTable`]).
//! - [`enum_data`]: [`EnumTable`], the routed E.164 numbers answered under the ENUM
//!   suffixes, updated in place, and [`EnumFollower`], the state machine that follows the
//!   managers' ENUM feed into it.
//! - [`answer`](mod@answer): [`answer_bytes`]/[`answer()`], the DNS behaviour, a pure function of a zone
//!   and a request.
//! - [`fast`]: the answers pre-encoded with each zone snapshot, which [`answer_bytes`] tries
//!   first ([`answer_fast`]); the slow path ([`answer_bytes_slow`]) answers the rest.
//! - [`server`]: [`DnsHandler`] (the zone snapshot in an `ArcSwap`, metrics, hickory's
//!   `RequestHandler`) and [`DnsServer`] (the UDP and TCP sockets, bounded); `udp`: one
//!   `SO_REUSEPORT` socket per core, read and answered in batches (`recvmmsg`/`sendmmsg`).
//! - [`resolve_eventservers`] (from `onehop_overlay::bootstrap`, re-exported): finding the
//!   event servers from the domain alone.
//! - this file: joining as a `dns` member, applying statuses, following the provisioned
//!   domains and the ENUM numbers from the managers (`onehop_overlay::farm_client`),
//!   staleness, leaving.
//!
//! The server answers SERVFAIL until the first network status arrives. When every event
//! server is unreachable it keeps answering from the last status it applied, logs that once,
//! and sets the `dns_stale` gauge to 1 until a session is back: DNS never goes dark because
//! the control plane is down.

pub mod answer;
pub mod config;
pub mod enum_data;
pub mod fast;
pub mod server;
mod udp;
pub mod zone;

use std::collections::HashSet;
use std::ffi::OsString;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use onehop_overlay::client::{ClientEvent, ClientOptions, EventClient};
use onehop_overlay::crl::CrlStore;
use onehop_overlay::farm_client::{self, FarmClient};
use onehop_overlay::metrics::Metrics;
use onehop_overlay::net::{self, ConnTable};
use onehop_overlay::status::{Endpoint, Kind};
use onehop_overlay::tls::Credentials;
use onehop_overlay::wire::{Announce, Payload, Topic};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use answer::{
    answer, answer_bytes, answer_bytes_slow, answer_fast, AnswerOptions, EnumResult, Outcome,
    Transport,
};
pub use config::{Config, Transports};
pub use enum_data::{enum_name, EnumFollower, EnumLookup, EnumTable};
pub use fast::FastZone;
pub use onehop_overlay::bootstrap::resolve_eventservers;
pub use server::{DnsHandler, DnsMetrics, DnsServer, Limits, DEFAULT_TCP_PER_ADDRESS};
pub use zone::{serial_of, Zone, ZoneConfig};

/// Runs the DNS server until `shutdown` resolves, then leaves gracefully.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let creds = Arc::new(Credentials::load(&cfg.tls)?);
    let identity = creds.identity.clone();
    if identity.kind != Kind::Dns {
        bail!(
            "{}: the certificate of {} is a {} certificate; onehop-dns needs a dns one",
            cfg.tls.cert.display(),
            identity.name,
            identity.kind
        );
    }
    let crl = CrlStore::open(creds.ca.to_vec(), cfg.tls.crl.clone())?;
    crl.spawn_file_watch(Duration::from_millis(250));
    let metrics = Metrics::default();

    let zone_config = ZoneConfig::from_config(&cfg).map_err(|e| anyhow!("domain: {e}"))?;
    let opts = AnswerOptions {
        max_udp_payload: cfg.max_udp_payload,
    };
    let handler = Arc::new(DnsHandler::new(zone_config, opts, &metrics));
    handler.set_stale(true);
    let limits = Limits {
        tcp_connections: cfg.tcp_connections,
        tcp_per_address: cfg.tcp_connections_per_ip,
        tcp_idle_timeout: Duration::from_millis(cfg.tcp_idle_timeout_ms),
        ..Limits::default()
    };
    let dns_addr = SocketAddr::new(cfg.ip, cfg.port);
    let server = DnsServer::start(dns_addr, handler.clone(), limits)
        .await
        .with_context(|| format!("DNS on {dns_addr} (UDP and TCP)"))?;

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

    let mut endpoints = vec![Endpoint {
        service: "dns".into(),
        addr: dns_addr,
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
    let opts = ClientOptions {
        eventservers: cfg.eventservers.clone(),
        announce: Some(Announce {
            roles: Vec::new(),
            endpoints,
        }),
        subscribe: vec![Topic::Network, Topic::Crl],
        metrics: Some(metrics.clone()),
        ..Default::default()
    }
    .with_limits(cfg.eventclient);
    let (status_tx, status_rx) = watch::channel(None);
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let farm = FarmClient::with_status(endpoint.clone(), status_rx, conns.clone());
    follow_domains(farm.clone(), handler.clone(), cancel.clone());
    if !cfg.enum_suffixes.is_empty() {
        tokio::spawn(follow_enum(farm, handler.clone(), cancel.clone()));
    }
    let (client, mut events) = EventClient::start(endpoint.clone(), opts, conns, Some(crl.clone()));
    let cert_watch =
        onehop_overlay::certwatch::CertWatch::new(&creds, crl.clone(), cfg.cert_warnings, &metrics)
            .spawn(Some(onehop_overlay::certwatch::to_events(client.clone())));
    info!(name = %identity.name, domain = %cfg.domain, dns = %dns_addr, "dns server started; SERVFAIL until the first network status");

    let apply = async {
        let mut up: HashSet<SocketAddr> = HashSet::new();
        let mut stale = true;
        while let Some(ev) = events.recv().await {
            match ev {
                ClientEvent::Event(ev) => {
                    if let Payload::Network(status) = &ev.payload {
                        // Building the zone takes milliseconds at a thousand members: off the
                        // runtime's threads, one status at a time.
                        let (h, e) = (handler.clone(), ev.clone());
                        let applied = tokio::task::spawn_blocking(move || match &e.payload {
                            Payload::Network(status) => h.apply_status(status),
                            _ => false,
                        })
                        .await
                        .unwrap_or_else(|e| {
                            warn!(cause = %e, "building the zone failed");
                            false
                        });
                        if applied {
                            status_tx.send_replace(Some(status.clone()));
                            let zone = handler.zone();
                            info!(
                                term = status.term,
                                version = status.version,
                                members = status.members.len(),
                                serial = zone.as_ref().map(|z| z.serial()).unwrap_or(0),
                                manager = %status.manager,
                                "network status applied to the zone"
                            );
                        }
                    }
                }
                ClientEvent::Up { server, addr } => {
                    info!(peer = %onehop_overlay::logging::peer_label(Some(&server), addr), "event server session up");
                    up.insert(addr);
                    if stale {
                        stale = false;
                        handler.set_stale(false);
                        if handler.zone().is_some() {
                            info!("an event server is reachable again: the zone follows the network status");
                        }
                    }
                }
                ClientEvent::Down {
                    server,
                    addr,
                    reason,
                } => {
                    if let Some(server) = server {
                        warn!(peer = %onehop_overlay::logging::peer_label(Some(&server), addr), %reason, "event server session down");
                    }
                    up.remove(&addr);
                    if up.is_empty() && !stale {
                        stale = true;
                        handler.set_stale(true);
                        match handler.zone() {
                            Some(z) => {
                                let (term, version) = z.status_key();
                                warn!(term, version, serial = z.serial(), "every event server is unreachable: answering from the last network status held (stale)");
                            }
                            None => warn!("every event server is unreachable and no network status was ever received: answering SERVFAIL"),
                        }
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = apply => {}
        _ = shutdown => info!("leaving"),
    }
    cert_watch.abort();
    client.leave(Duration::from_secs(1)).await;
    server.shutdown();
    Ok(())
}

/// Follows the provisioned domains from the managers' farm-read service and makes the
/// server authoritative for each of them too (a change is served within about a second).
fn follow_domains(client: FarmClient, handler: Arc<DnsHandler>, cancel: CancellationToken) {
    let mut farm = farm_client::follow(client, false, cancel);
    tokio::spawn(async move {
        loop {
            let domains = farm.borrow_and_update().domains.clone();
            let (h, d) = (handler.clone(), domains.clone());
            let changed = tokio::task::spawn_blocking(move || h.set_domains(&d))
                .await
                .unwrap_or(false);
            if changed {
                info!(domains = domains.len(), "provisioned domains served");
            }
            if farm.changed().await.is_err() {
                return;
            }
        }
    });
}

/// Pause after a failed read of the ENUM feed.
pub const ENUM_RETRY: Duration = Duration::from_millis(250);
/// Least time between two answers that held nothing new, not even a newer version (a manager
/// waits for changes, so such answers come
/// [`MAX_ENUM_WAIT_MS`](onehop_overlay::provision::MAX_ENUM_WAIT_MS) apart; this only keeps
/// a manager that does not wait from being asked in a tight loop).
pub const ENUM_IDLE_PACE: Duration = Duration::from_millis(100);

/// Follows the managers' ENUM feed into the handler's [`EnumTable`] until `cancel`: a full
/// listing, then the changes, long-polled, as `EnumUpdate`'s documentation says (see
/// [`EnumFollower`]). A failed read is retried after [`ENUM_RETRY`] with the same request,
/// logged once per streak of failures. Changes are applied in place, so they are answered
/// as soon as they are read.
pub async fn follow_enum(client: FarmClient, handler: Arc<DnsHandler>, cancel: CancellationToken) {
    let table = handler.numbers().clone();
    let mut follower = EnumFollower::new();
    let mut reads = Reads::Never;
    loop {
        let ask = follower.ask();
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            r = client.enum_update(ask.since, ask.after.clone(), ask.wait_ms) => r,
            _ = cancel.cancelled() => return,
        };
        let pause = match result.and_then(|update| follower.apply(update, &table)) {
            Ok(applied) => {
                if reads == Reads::Failing {
                    info!(version = follower.since(), "ENUM reads answered again");
                }
                reads = Reads::Answering;
                if let Some(first) = applied.skipped.first() {
                    warn!(
                        skipped = applied.skipped.len(),
                        number = %first.number,
                        problem = %first.problem,
                        "ENUM entries from the managers not answered"
                    );
                }
                if applied.listed {
                    info!(
                        numbers = table.len(),
                        version = table.version(),
                        "ENUM numbers listed; answering from them"
                    );
                } else if applied.changes > 0 {
                    debug!(
                        changes = applied.changes,
                        version = table.version(),
                        numbers = table.len(),
                        "ENUM changes applied"
                    );
                }
                handler.enum_changed();
                applied
                    .idle
                    .then(|| ENUM_IDLE_PACE.saturating_sub(started.elapsed()))
                    .filter(|p| !p.is_zero())
            }
            Err(e) => {
                reads = match reads {
                    // Before the first answer (no manager is known before the first status):
                    // not worth a warning.
                    Reads::Never => {
                        debug!(cause = %e, "ENUM reads not answered yet");
                        Reads::NeverFailing
                    }
                    Reads::Answering => {
                        warn!(
                            cause = %e,
                            version = follower.since(),
                            "ENUM reads failing; answering from the numbers held"
                        );
                        Reads::Failing
                    }
                    same => same,
                };
                Some(ENUM_RETRY)
            }
        };
        if let Some(pause) = pause {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }
}

/// Where [`follow_enum`] stands, for logging once per streak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reads {
    /// No answer and no failure yet.
    Never,
    /// Failing, and never answered yet.
    NeverFailing,
    /// The last read was answered.
    Answering,
    /// Failing since the last answer.
    Failing,
}

/// The `onehop-dns` program.
pub fn cli_main(args: Vec<OsString>) -> ExitCode {
    onehop_overlay::daemon::daemon_main(
        "onehop-dns",
        "The authoritative DNS server of the SIP domain: NAPTR, SRV (a random slice of the live proxies per answer), A/AAAA, SOA and NS, built from the network status it follows through the event servers.",
        args,
        run,
    )
}
