//! The provisioning API: HTTPS with JSON on TCP 8443 of every manager (`docs/provisioning.md`).
//!
//! Who may use it: clients presenting a certificate of kind `admin` from the farm's CA that is
//! not revoked (mutual TLS; TLS 1.3). A certificate of another kind completes the handshake and
//! gets 403 on every request; a revoked one is refused at the handshake, and a connection
//! whose certificate is revoked while it is open is closed when the CRL arrives.
//!
//! Reads are answered from this manager's applied state; writes are proposed through Raft
//! (forwarded to the leader when this manager follows) and answered once committed and
//! applied here, so a read on the same manager right after sees them.
//!
//! Bounds: at most `api_max_connections` connections (more wait in the kernel's backlog), a
//! TLS handshake must finish within 10 s and a request's headers within 10 s, bodies at most
//! 16 MiB (an import is sent in chunks).

mod numbers;
mod routes;
mod views;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use onehop_overlay::crl::CrlStore;
use onehop_overlay::identity::{identity_from_der, Identity, Serial};
use onehop_overlay::metrics::{Metric, Metrics};
use onehop_overlay::tls::Credentials;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::raft::RaftHandle;

pub use routes::router;

/// The well-known provisioning API port (TCP, HTTPS).
pub const API_PORT: u16 = 8443;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers (also the idle limit between the
/// requests of a kept-alive connection).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// This manager's Raft.
    pub raft: RaftHandle,
    /// This manager's name.
    pub name: String,
    /// Request counters.
    pub counters: Arc<ApiCounters>,
}

/// Counters of the API, in the manager's metrics.
pub struct ApiCounters {
    /// Requests answered 2xx.
    pub ok: Metric,
    /// Requests answered 4xx.
    pub client_errors: Metric,
    /// Requests answered 5xx.
    pub server_errors: Metric,
    /// Connections refused: a certificate of the wrong kind or a failed handshake.
    pub refused: Metric,
    /// Accounts added by imports.
    pub imported: Metric,
}

impl ApiCounters {
    /// Registers the counters in `m`.
    pub fn new(m: &Metrics) -> ApiCounters {
        ApiCounters {
            ok: m.counter("api_requests_ok_total", "Provisioning API requests answered 2xx."),
            client_errors: m.counter(
                "api_requests_client_error_total",
                "Provisioning API requests answered 4xx.",
            ),
            server_errors: m.counter(
                "api_requests_server_error_total",
                "Provisioning API requests answered 5xx.",
            ),
            refused: m.counter(
                "api_connections_refused_total",
                "Provisioning API connections refused (handshake failed or not an admin certificate).",
            ),
            imported: m.counter(
                "api_imported_accounts_total",
                "Accounts added by imports through this manager.",
            ),
        }
    }
}

/// The caller of a request, from its certificate.
#[derive(Clone, Debug)]
pub struct Caller(pub Identity);

/// Live connections and their certificates' serials, to close the revoked ones.
#[derive(Default)]
struct Live {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, (Serial, CancellationToken)>>,
}

fn tls_config(
    creds: &Credentials,
    crl: &onehop_overlay::crl::CrlState,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut cfg = creds.server_config(crl)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves the API on `addr` until `shutdown` is cancelled. Returns once the listener is bound
/// (errors binding it are returned); the serving runs in a task.
pub async fn serve(
    addr: SocketAddr,
    creds: Arc<Credentials>,
    crl: Arc<CrlStore>,
    state: ApiState,
    max_connections: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("provisioning API on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let tls = Arc::new(ArcSwap::new(tls_config(&creds, &crl.current())?));
    let live = Arc::new(Live::default());
    // A new CRL: new handshakes check it, and open connections of revoked certificates close.
    {
        let (tls, live, creds, crl, shutdown) = (
            tls.clone(),
            live.clone(),
            creds.clone(),
            crl.clone(),
            shutdown.clone(),
        );
        let mut rx = crl.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = rx.changed() => if r.is_err() { break },
                    _ = shutdown.cancelled() => break,
                }
                let state = crl.current();
                match tls_config(&creds, &state) {
                    Ok(cfg) => tls.store(cfg),
                    Err(e) => {
                        warn!(cause = %e, "provisioning API: cannot rebuild TLS for the new CRL")
                    }
                }
                let conns = live.conns.lock().unwrap_or_else(|e| e.into_inner());
                for (serial, token) in conns.values() {
                    if state.is_revoked(serial) {
                        token.cancel();
                    }
                }
            }
        });
    }
    let app = router(state.clone());
    let limit = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    info!(addr = %local, "provisioning API listening (admin certificates only)");
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = shutdown.cancelled() => break,
            };
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors and the like: wait a little instead of spinning.
                        warn!(cause = %e, "provisioning API: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => break,
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
            let (app, live, state, shutdown) =
                (app.clone(), live.clone(), state.clone(), shutdown.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let stream =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            state.counters.refused.inc();
                            info!(%peer, cause = %e, "provisioning API: handshake refused");
                            return;
                        }
                        Err(_) => {
                            state.counters.refused.inc();
                            debug!(%peer, "provisioning API: handshake timed out");
                            return;
                        }
                    };
                let identity = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| identity_from_der(c));
                let identity = match identity {
                    Some(Ok(id)) => id,
                    _ => {
                        state.counters.refused.inc();
                        info!(%peer, "provisioning API: no usable client certificate");
                        return;
                    }
                };
                let token = shutdown.child_token();
                let id = live.next.fetch_add(1, Ordering::Relaxed);
                live.conns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, (identity.serial.clone(), token.clone()));
                debug!(%peer, caller = %identity.name, kind = %identity.kind, "provisioning API connection");
                let svc = TowerToHyperService::new(app.layer(axum::Extension(Caller(identity))));
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    r = conn => if let Err(e) = r {
                        debug!(%peer, cause = %e, "provisioning API connection ended");
                    },
                    _ = token.cancelled() => {
                        info!(%peer, "provisioning API: connection closed (certificate revoked or shutting down)");
                    }
                }
                live.conns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
            });
        }
    });
    Ok(local)
}
