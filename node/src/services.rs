//! The node's own services beside the lookup interface: node-to-node requests (QUIC, port
//! 8002), the replicated store on the rings, for `sip_proxy` nodes SIP on port 5060, and for
//! `media_relay` nodes the media relay (UDP ports of `relay_ports`); and, on every node, the
//! farm's settings followed from the managers ([`Services::farm_info`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use onehop_overlay::crl::CrlStore;
use onehop_overlay::farm_client::{self, managers_of, FarmClient};
use onehop_overlay::identity::Identity;
use onehop_overlay::metrics::Metrics;
use onehop_overlay::net::{self, ConnTable};
use onehop_overlay::provision::{AccountRecord, FarmInfo, NumberRoute};
use onehop_overlay::status::{Endpoint, Role};
use onehop_overlay::tls::Credentials;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::peer::{PeerConfig, PeerNet, Service};
use crate::proxy::glue::{AccountSource, NumberSource};
use crate::proxy::glue::{
    PeerSip, PeerSipSettings, RegistrarUpdater, SipHandler, StoreLocator, REGISTRAR,
};
use crate::proxy::transport::{TransportConfig, Transports};
use crate::proxy::{BoxFut, FarmSettings, NonceKeys, ProxyConfig};
use crate::relay::{RelayClient, RelayEngine, RelayHandler, RelaySettings};
use crate::sip::digest::NonceKey;
use crate::sip::registrar::RegistrarPolicy;
use crate::store::{Store, StoreConfig};
use crate::view::View;

/// What is running.
pub struct Services {
    /// The replicated store.
    pub store: Store,
    /// SIP sockets, when this node is a `sip_proxy`.
    pub sip: Option<Arc<Transports>>,
    /// The media relay, when this node is a `media_relay`.
    pub relay: Option<RelayEngine>,
    /// The client of the managers' farm-read service (accounts for a cold registrar cache).
    pub farm: FarmClient,
    /// The farm's settings as followed from the managers: domains and the SIP nonce key
    /// (`FarmInfo::default()` until the first answer).
    pub farm_info: watch::Receiver<Arc<FarmInfo>>,
}

/// Starts the peer transport, the store and SIP; returns the endpoints to announce.
pub async fn start(
    cfg: &Config,
    creds: &Arc<Credentials>,
    crl: &Arc<CrlStore>,
    identity: &Arc<Identity>,
    view: watch::Receiver<Arc<View>>,
    metrics: &Metrics,
    cancel: CancellationToken,
) -> anyhow::Result<(Vec<Endpoint>, Services)> {
    let mut endpoints = Vec::new();
    let peer_addr = SocketAddr::new(cfg.ip, cfg.peer_port);
    let peer_cfg = PeerConfig {
        max_inflight_bytes: cfg.peer_inflight_bytes,
        ..PeerConfig::default()
    };
    let peer_ep = net::endpoint(
        peer_addr,
        creds,
        &crl.current(),
        cfg.quic,
        Some(peer_cfg.max_streams as u32),
    )
    .with_context(|| format!("peer transport on {peer_addr}"))?;
    let peer_conns = ConnTable::default();
    net::spawn_crl_enforcer(
        peer_ep.clone(),
        creds.clone(),
        crl.clone(),
        peer_conns.clone(),
        cfg.quic,
        Some(peer_cfg.max_streams as u32),
    );
    let (farm, farm_info) = follow_farm(
        peer_ep.clone(),
        peer_conns.clone(),
        view.clone(),
        metrics,
        cancel.clone(),
    );
    let gate = onehop_overlay::admission::HandshakeGate::new(cfg.quic_admission, metrics);
    let peer = PeerNet::with_gate(peer_ep, peer_conns, peer_cfg, gate);
    peer.count_in(metrics);
    peer.spawn_server(cancel.clone());
    endpoints.push(Endpoint {
        service: "peer".into(),
        addr: peer_addr,
    });

    let store = Store::start(
        StoreConfig {
            replicas: cfg.replicas,
            max_entries: cfg.store_max_entries,
            max_bytes: cfg.store_max_bytes,
            ..StoreConfig::default()
        },
        peer.clone(),
        identity.clone(),
        view.clone(),
        cancel.clone(),
    );
    store.count_in(metrics);
    if identity.roles.iter().any(|r| r.as_str() == REGISTRAR) {
        store.register_updater(REGISTRAR, Arc::new(RegistrarUpdater));
        crate::provision::serve(&peer, store.clone(), metrics);
    }

    let relay = if identity
        .roles
        .iter()
        .any(|r| r.as_str() == Role::MEDIA_RELAY)
    {
        let settings = RelaySettings {
            ip: cfg.ip,
            ports: (cfg.relay_ports.low, cfg.relay_ports.high),
            idle: Duration::from_secs(cfg.relay_idle_secs),
            max_sessions: cfg.relay_max_sessions,
            max_streams: 8,
        };
        let engine = RelayEngine::start(settings, metrics, cancel.clone());
        peer.register(Service::Relay, Arc::new(RelayHandler::new(engine.clone())));
        info!(ip = %cfg.ip, ports = %String::from(cfg.relay_ports), idle_s = cfg.relay_idle_secs, "media relay ready");
        Some(engine)
    } else {
        None
    };

    let mut sip = None;
    if identity.roles.iter().any(|r| r.as_str() == Role::SIP_PROXY) {
        let domain = cfg.domain.clone().context(
            "a sip_proxy node needs `domain` (the SIP domain it serves) in its configuration",
        )?;
        let listen = SocketAddr::new(cfg.ip, cfg.sip_port);
        let tls = match (&cfg.sip_tls_cert, &cfg.sip_tls_key) {
            (Some(cert), Some(key)) => Some((
                SocketAddr::new(cfg.ip, cfg.sips_port),
                sip_tls_config(cert, key)?,
            )),
            _ => None,
        };
        let tls_port = tls.as_ref().map(|(a, _)| a.port());
        let tcfg = TransportConfig {
            tls,
            listen,
            max_connections: cfg.sip_max_connections,
            max_per_ip: cfg.sip_max_connections_per_ip,
            first_message: Duration::from_secs(cfg.sip_tcp_first_message_secs),
            idle: Duration::from_secs(cfg.sip_tcp_idle_secs),
            max_message: cfg.sip_max_message,
            queue: cfg.sip_inbound_queue,
            write_timeout: Duration::from_millis(cfg.sip_tcp_write_timeout_ms),
            connect_timeout: Duration::from_millis(cfg.sip_tcp_connect_timeout_ms),
            handshake_timeout: Duration::from_millis(cfg.sip_tls_handshake_timeout_ms),
            send_queue: cfg.sip_tcp_send_queue,
            send_queue_bytes: cfg.sip_tcp_send_queue_bytes,
        };
        let mut pcfg = ProxyConfig::new(&domain, listen);
        pcfg.policy = RegistrarPolicy {
            min_expires: cfg.min_expires,
            max_expires: cfg.max_expires,
            ..RegistrarPolicy::default()
        };
        pcfg.max_pending = cfg.sip_pending;
        pcfg.workers = match cfg.sip_workers {
            // One per thread of the runtime the node runs on (`threads`).
            0 => tokio::runtime::Handle::current().metrics().num_workers(),
            n => n,
        };
        pcfg.max_message = cfg.sip_max_message;
        pcfg.auth = match cfg.sip_auth {
            crate::config::SipAuth::Digest => crate::proxy::AuthMode::Digest,
            crate::config::SipAuth::Off => crate::proxy::AuthMode::Off,
        };
        pcfg.nonce_lifetime_ms = cfg.sip_nonce_lifetime_secs * 1000;
        pcfg.algorithms = cfg.auth_algorithms();
        pcfg.guard = crate::proxy::GuardPolicy {
            window_ms: cfg.sip_auth_window_secs * 1000,
            slow_after: cfg.sip_auth_slow_after,
            slow_interval_ms: cfg.sip_auth_slow_interval_ms,
            block_after: cfg.sip_auth_block_after,
            block_ms: cfg.sip_auth_block_secs * 1000,
            ..crate::proxy::GuardPolicy::default()
        };
        // Each worker's inbox holds what the transports' inbound queue held.
        pcfg.queue = cfg.sip_inbound_queue;
        pcfg.queue_bytes = cfg.sip_inbound_queue_bytes;
        pcfg.held_bytes = cfg.sip_held_bytes;
        let (core, inboxes) = crate::proxy::core::inboxes(&pcfg, metrics);
        let transports = Transports::bind_to(tcfg, Arc::new(core.clone()), metrics, cancel.clone())
            .await
            .with_context(|| format!("SIP on {listen}"))?;
        pcfg.dns_servers = cfg.dns_servers.clone();
        pcfg.tls_port = tls_port;
        pcfg.media_relay = Some(crate::proxy::media::MediaRelay {
            control: Arc::new(RelayClient::new(
                identity.name.clone(),
                relay.clone(),
                peer.clone(),
                view.clone(),
            )),
            allocate: cfg.relay_media,
        });
        pcfg.farm = Some(proxy_settings(farm_info.clone(), cancel.clone()));
        let locator = Arc::new(
            StoreLocator::new(store.clone())
                .with_accounts(Arc::new(ManagerAccounts {
                    client: farm.clone(),
                    asked: metrics.counter(
                        "provision_reloads_total",
                        "Accounts a registrar lacked and asked the managers for (a cold cache).",
                    ),
                    found: metrics.counter(
                        "provision_reloads_found_total",
                        "Accounts the managers had when a registrar lacked them.",
                    ),
                }))
                .with_numbers(Arc::new(ManagerNumbers {
                    client: farm.clone(),
                    asked: metrics.counter(
                        "provision_number_reloads_total",
                        "Numbers whose routing a registrar lacked and asked the managers for.",
                    ),
                    routed: metrics.counter(
                        "provision_number_reloads_routed_total",
                        "Numbers the managers had a routing for when a registrar lacked it.",
                    ),
                })),
        );
        let peer_timeout = Duration::from_millis(cfg.sip_peer_timeout_ms);
        let link = Arc::new(
            PeerSip::new(
                peer.clone(),
                view.clone(),
                PeerSipSettings {
                    call_timeout: peer_timeout,
                    queue: cfg.sip_peer_queue,
                    queue_bytes: cfg.sip_peer_queue_bytes,
                },
            )
            .count_in(metrics),
        );
        crate::proxy::core::run(
            pcfg,
            inboxes,
            identity.name.clone(),
            transports.clone(),
            locator,
            link,
            view,
            metrics,
            cancel,
        );
        let workers = core.workers();
        // A receiver waits for its full workers a little less than senders wait for it, so
        // that it answers which messages it refused before the sender gives up on the call.
        peer.register(
            Service::Sip,
            Arc::new(SipHandler::new(core, peer_timeout * 3 / 4)),
        );
        endpoints.push(Endpoint {
            service: "sip".into(),
            addr: listen,
        });
        if let Some(port) = tls_port {
            endpoints.push(Endpoint {
                service: "sips".into(),
                addr: SocketAddr::new(cfg.ip, port),
            });
            info!(port, "SIP over TLS listening");
        }
        info!(%listen, %domain, workers, auth = ?cfg.sip_auth, "SIP proxy and registrar listening (UDP, TCP)");
        sip = Some(transports);
    }
    Ok((
        endpoints,
        Services {
            store,
            sip,
            relay,
            farm,
            farm_info,
        },
    ))
}

/// Starts following the farm's settings from the managers over the peer endpoint (the
/// managers are those of the status in `view`), and keeps the `farm_version` and
/// `farm_nonce_key` gauges up to date.
fn follow_farm(
    endpoint: quinn::Endpoint,
    table: ConnTable,
    view: watch::Receiver<Arc<View>>,
    metrics: &Metrics,
    cancel: CancellationToken,
) -> (FarmClient, watch::Receiver<Arc<FarmInfo>>) {
    let client = FarmClient::new(
        endpoint,
        Arc::new(move || {
            view.borrow()
                .status
                .as_deref()
                .map(managers_of)
                .unwrap_or_default()
        }),
        table,
    );
    let info = farm_client::follow(client.clone(), true, cancel);
    let version = metrics.gauge(
        "farm_version",
        "Provisioning change version of the farm settings last read from the managers.",
    );
    let has_key = metrics.gauge(
        "farm_nonce_key",
        "1 once this node holds the farm's SIP nonce key from the managers, else 0.",
    );
    let mut rx = info.clone();
    tokio::spawn(async move {
        loop {
            {
                let i = rx.borrow_and_update();
                version.set(i.version as i64);
                has_key.set(i64::from(i.nonce_key.is_some()));
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
    (client, info)
}

/// The proxy's view of the farm's settings: the nonce keys, the provisioned domains and their
/// dial plans, changed only when they change.
fn proxy_settings(
    mut info: watch::Receiver<Arc<FarmInfo>>,
    cancel: CancellationToken,
) -> watch::Receiver<Arc<FarmSettings>> {
    fn settings(i: &FarmInfo) -> FarmSettings {
        FarmSettings {
            keys: i
                .nonce_key
                .as_ref()
                .and_then(|k| NonceKeys::new(NonceKey::new(k.id, k.secret), None).ok()),
            domains: i.domains.clone(),
            dial_plans: i.dial_plans.clone(),
        }
    }
    let first = settings(&info.borrow_and_update());
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        let mut last = info.borrow().as_ref().clone();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = info.changed() => if changed.is_err() { return },
            }
            let now = info.borrow_and_update().as_ref().clone();
            // The version moves with every provisioning change; the proxy cares only for the
            // key, the domains and their dial plans.
            if now.nonce_key != last.nonce_key
                || now.domains != last.domains
                || now.dial_plans != last.dial_plans
            {
                let _ = tx.send(Arc::new(settings(&now)));
            }
            last = now;
        }
    });
    rx
}

/// Number routing reloaded from the managers when a registrar's cache lacks it.
struct ManagerNumbers {
    client: FarmClient,
    asked: onehop_overlay::metrics::Metric,
    routed: onehop_overlay::metrics::Metric,
}

impl NumberSource for ManagerNumbers {
    fn fetch(&self, number: String) -> BoxFut<Result<(u64, Option<NumberRoute>), String>> {
        let client = self.client.clone();
        let routed = self.routed.clone();
        self.asked.inc();
        Box::pin(async move {
            let (version, route) = client.number(&number).await?;
            if route.is_some() {
                routed.inc();
            }
            Ok((version, route))
        })
    }
}

/// Accounts reloaded from the managers when a registrar's cache lacks one.
struct ManagerAccounts {
    client: FarmClient,
    asked: onehop_overlay::metrics::Metric,
    found: onehop_overlay::metrics::Metric,
}

impl AccountSource for ManagerAccounts {
    fn fetch(&self, aor: String) -> BoxFut<Result<Option<AccountRecord>, String>> {
        let client = self.client.clone();
        let found = self.found.clone();
        self.asked.inc();
        Box::pin(async move {
            let account = client.account(&aor).await.map(|(_, account)| account)?;
            if account.is_some() {
                found.inc();
            }
            Ok(account)
        })
    }
}

/// The TLS server configuration of SIP from a PEM chain and key (TLS 1.2 and 1.3: phones
/// still speak 1.2).
fn sip_tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("sip_tls_cert {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("sip_tls_cert {}", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "sip_tls_cert {}: no certificate in it",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("sip_tls_key {}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(onehop_overlay::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("SIP TLS certificate and key")?;
    Ok(Arc::new(config))
}
