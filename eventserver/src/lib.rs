//! onehop-eventserver: the publish/subscribe hub every participant connects to.
//!
//! # Layout
//! - [`config`]: the TOML configuration.
//! - [`hub`]: sessions, subscriptions, retained values, permissions (no sockets).
//! - this file: the QUIC accept loop and one task pair (reader, writer) per session.

pub mod config;
pub mod hub;

use std::ffi::OsString;
use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use onehop_overlay::admission::HandshakeGate;
use onehop_overlay::budget::ByteBudget;
use onehop_overlay::certwatch::CertWatch;
use onehop_overlay::crl::CrlStore;
use onehop_overlay::identity::Identity;
use onehop_overlay::logging::peer_label;
use onehop_overlay::metrics::Metrics;
use onehop_overlay::net::{self, ConnTable};
use onehop_overlay::tls::Credentials;
use onehop_overlay::wire::{encode_frame, read_msg, ClientMsg, CloseCode, ServerMsg, MAX_FRAME};
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, warn, Instrument};

pub use config::Config;
use hub::{Hub, Queued};

/// Handshake refusals logged at WARN: at most 20 per 10 s, whatever a storm sends.
static REFUSALS: std::sync::LazyLock<onehop_overlay::admission::LogBudget> =
    std::sync::LazyLock::new(onehop_overlay::admission::handshake_log_budget);

/// Runs the event server until `shutdown` resolves.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let creds = Arc::new(Credentials::load(&cfg.tls)?);
    let crl = CrlStore::open(creds.ca.to_vec(), cfg.tls.crl.clone())?;
    crl.spawn_file_watch(Duration::from_millis(250));
    let metrics = Metrics::default();
    let endpoint = net::endpoint(cfg.listen, &creds, &crl.current(), cfg.quic, Some(4))
        .with_context(|| format!("event server on {}", cfg.listen))?;
    let conns = ConnTable::default();
    net::spawn_crl_enforcer(
        endpoint.clone(),
        creds.clone(),
        crl.clone(),
        conns.clone(),
        cfg.quic,
        Some(4),
    );
    if let Some(addr) = cfg.metrics {
        let m = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = onehop_overlay::metrics::serve(addr, m).await {
                warn!(cause = %e, %addr, "metrics endpoint failed");
            }
        });
    }
    let hub = Arc::new(Hub::new(creds.identity.name.clone(), crl.clone(), &metrics));
    let cert_watch;
    {
        // Our own certificates' lines go to our own subscribers.
        let hub = hub.clone();
        cert_watch = CertWatch::new(&creds, crl.clone(), cfg.cert_warnings, &metrics).spawn(Some(
            Box::new(move |n| {
                hub.log(n.level, n.text.clone());
                true
            }),
        ));
    }
    let gate = HandshakeGate::new(cfg.quic_admission, &metrics);
    let limit = Arc::new(Semaphore::new(cfg.max_connections));
    {
        // The queue gauges between broadcasts, as the subscribers drain them.
        let hub = hub.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                hub.sample_queues();
            }
        });
    }
    info!(name = %creds.identity.name, listen = %cfg.listen, "event server ready");
    let accept = async {
        while let Some(incoming) = endpoint.accept().await {
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                warn!(peer = %incoming.remote_address(), "refused connection: connection limit reached");
                incoming.refuse();
                continue;
            };
            // Refused or asked to retry here cost no crypto (see onehop_overlay::admission).
            let Some((incoming, handshake)) = gate.screen(incoming) else {
                continue;
            };
            let hub = hub.clone();
            let conns = conns.clone();
            let queue = QueueBounds {
                frames: cfg.subscriber_queue,
                bytes: cfg.subscriber_queue_bytes,
            };
            tokio::spawn(async move {
                let _permit = permit;
                handle(incoming, handshake, hub, conns, queue).await;
            });
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = shutdown => info!("shutting down"),
    }
    cert_watch.abort();
    endpoint.close(CloseCode::Shutdown.varint(), b"event server shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    Ok(())
}

/// The bounds of one subscriber's queue.
#[derive(Debug, Clone, Copy)]
struct QueueBounds {
    frames: usize,
    bytes: usize,
}

async fn handle(
    incoming: quinn::Incoming,
    handshake: onehop_overlay::admission::HandshakePermit,
    hub: Arc<Hub>,
    conns: ConnTable,
    queue: QueueBounds,
) {
    let remote = incoming.remote_address();
    let conn = match HandshakeGate::handshake(incoming, handshake).await {
        Ok(c) => c,
        Err(why) => {
            match REFUSALS.allow(std::time::Instant::now()) {
                Some(0) => warn!(peer = %remote, "refused connection: {why}"),
                Some(n) => {
                    warn!(peer = %remote, suppressed = n, "refused connection: {why} ({n} more refusals not logged)")
                }
                None => debug!(peer = %remote, "refused connection: {why}"),
            }
            return;
        }
    };
    let id = match net::peer_identity(&conn) {
        Ok(id) => id,
        Err(e) => {
            warn!(peer = %remote, cause = %e, "refused connection: unusable certificate");
            conn.close(CloseCode::Forbidden.varint(), b"unusable certificate");
            return;
        }
    };
    let span = tracing::info_span!(
        "session",
        peer = %peer_label(Some(&id.name), remote),
        peer_kind = %id.kind
    );
    conns.insert(id.clone(), conn.clone());
    session(conn.clone(), id, hub, queue).instrument(span).await;
    conns.remove(&conn);
}

async fn session(conn: quinn::Connection, id: Identity, hub: Arc<Hub>, queue: QueueBounds) {
    let (mut send, mut recv) =
        match tokio::time::timeout(Duration::from_secs(5), conn.accept_bi()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                info!(cause = %e, "connection ended before a session stream");
                return;
            }
            Err(_) => {
                warn!("no session stream within 5 s; closing");
                conn.close(CloseCode::Protocol.varint(), b"no session stream");
                return;
            }
        };
    let (tx, mut rx) = mpsc::channel::<Queued>(queue.frames);
    let budget = ByteBudget::new(queue.bytes);
    let welcome = encode_frame(&ServerMsg::Welcome {
        server: hub.name().to_string(),
    });
    if send.write_all(&welcome).await.is_err() {
        return;
    }
    let sid = hub.open(id.clone(), tx.clone(), budget.clone(), Some(conn.clone()));
    let writer = tokio::spawn(async move {
        while let Some(q) = rx.recv().await {
            // `write_chunk` hands QUIC the shared frame itself (no copy per subscriber); the
            // frame's bytes go back to the session's budget once QUIC holds it.
            if send.write_chunk(q.frame.clone()).await.is_err() {
                break;
            }
        }
        let _ = send.finish();
    });
    let ip = conn.remote_address().ip();
    let reason = loop {
        let msg = tokio::select! {
            m = read_msg::<ClientMsg, _>(&mut recv, MAX_FRAME) => m,
            e = conn.closed() => break onehop_overlay::client::close_reason_of(&e),
        };
        let result = match msg {
            Ok(Some(ClientMsg::Announce(a))) => hub.announce(sid, a, ip),
            Ok(Some(ClientMsg::Subscribe(topics))) => {
                hub.subscribe(sid, &topics);
                Ok(())
            }
            Ok(Some(ClientMsg::Publish { seq, payload })) => hub.publish(sid, seq, payload),
            Ok(Some(ClientMsg::Fetch(topics))) => {
                hub.fetch(sid, &topics);
                Ok(())
            }
            Ok(Some(ClientMsg::Leave)) => {
                hub.leave(sid);
                break "left".to_string();
            }
            Ok(None) => break "session stream finished".to_string(),
            Err(onehop_overlay::wire::WireError::Io(_)) if conn.close_reason().is_some() => {
                break onehop_overlay::client::close_reason(&conn);
            }
            Err(e) => {
                let code = e.close_code();
                warn!(cause = %e, "closing stream: bad frame");
                let _ = recv.stop(code.varint());
                conn.close(code.varint(), e.to_string().as_bytes());
                break format!("bad frame: {e}");
            }
        };
        if let Err(refusal) = result {
            warn!("refused: {refusal}");
            let refused = encode_frame(&ServerMsg::Refused {
                reason: refusal.0.clone(),
            });
            if let Some(q) = Queued::new(refused, &budget) {
                let _ = tx.try_send(q);
            }
            break format!("refused: {refusal}");
        }
    };
    let refused = reason.starts_with("refused");
    hub.close(sid, &reason);
    drop(tx);
    if refused {
        // Let the refusal reach the client before the connection goes.
        let _ = tokio::time::timeout(Duration::from_millis(200), writer).await;
        conn.close(CloseCode::Forbidden.varint(), reason.as_bytes());
    } else {
        conn.close(CloseCode::Normal.varint(), b"session over");
        writer.abort();
    }
}

/// The `onehop-eventserver` program.
pub fn cli_main(args: Vec<OsString>) -> ExitCode {
    onehop_overlay::daemon::daemon_main(
        "onehop-eventserver",
        "The onehop publish/subscribe hub: every member connects to every event server over QUIC with mutual TLS.",
        args,
        run,
    )
}
