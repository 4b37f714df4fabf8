//! quinn endpoints: the only module of the overlay that touches sockets.
//!
//! Every daemon binds its own IP address. Keep-alives and the idle timeout are set so that a
//! member that dies without a word (kill -9) is noticed well within the design's 1 s budget.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::crl::{CrlState, CrlStore};
use crate::identity::{identity_from_der, Identity, Serial};
use crate::tls::{Credentials, TlsError};
use crate::wire::CloseCode;

/// QUIC timing knobs, and the buffers QUIC keeps per connection (the `[quic]` table).
///
/// What one connection can make a daemon hold, in bytes: data received and not yet read is at
/// most `stream_window_bytes` per stream (and the peer may open only the streams the endpoint
/// allows: the connection's window is that many streams' worth); data written and not yet
/// acknowledged is at most `send_window_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// Keep-alive interval in milliseconds.
    pub keepalive_ms: u64,
    /// A connection with no traffic for this long (milliseconds) is dead: its member is lost.
    pub idle_timeout_ms: u64,
    /// Bytes a peer may send on one stream before we read them (QUIC stream flow control;
    /// quinn's default, 1,250,000).
    pub stream_window_bytes: u64,
    /// Bytes written on a connection and not yet acknowledged by the peer, at most; a writer
    /// waits past it (quinn's default, 10,000,000).
    pub send_window_bytes: u64,
}

/// Default `stream_window_bytes` (quinn's own default).
pub const DEFAULT_STREAM_WINDOW: u64 = 1_250_000;
/// Default `send_window_bytes` (quinn's own default).
pub const DEFAULT_SEND_WINDOW: u64 = 10_000_000;

impl Default for Timing {
    fn default() -> Self {
        Timing {
            keepalive_ms: 100,
            idle_timeout_ms: 600,
            stream_window_bytes: DEFAULT_STREAM_WINDOW,
            send_window_bytes: DEFAULT_SEND_WINDOW,
        }
    }
}

impl Timing {
    /// What is wrong with these settings, as `(key, problem)` with keys under `quic.`.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.idle_timeout_ms <= self.keepalive_ms {
            return Some((
                "quic.idle_timeout_ms",
                "must be greater than quic.keepalive_ms".into(),
            ));
        }
        if !(16 << 10..=1 << 30).contains(&self.stream_window_bytes) {
            return Some((
                "quic.stream_window_bytes",
                "must be between 16384 and 1073741824".into(),
            ));
        }
        let frame = crate::wire::MAX_FRAME as u64 + 4;
        if !(frame..=1 << 30).contains(&self.send_window_bytes) {
            return Some((
                "quic.send_window_bytes",
                format!("must be between {frame} (one frame at the 1 MiB cap) and 1073741824"),
            ));
        }
        None
    }
}

/// An endpoint set-up error.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// TLS material or configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Binding the socket failed.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The peer presented no usable certificate.
    #[error("peer certificate: {0}")]
    PeerIdentity(String),
}

/// The transport settings of one side of our connections. Only the side that connects sends
/// keep-alives (`keep_alive`): its PING every `keepalive_ms` and the acknowledgement it draws
/// keep both sides' idle timers running, so a PING from the accepting side as well would
/// only double the idle traffic (at 1,000 members, 3,000 connections with the event servers
/// alone). A dead peer is still noticed after `idle_timeout_ms` on either side.
fn transport(timing: Timing, max_bidi: u32, keep_alive: bool) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(keep_alive.then(|| Duration::from_millis(timing.keepalive_ms)));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_millis(timing.idle_timeout_ms))
            .expect("idle timeout in range"),
    ));
    t.max_concurrent_bidi_streams(max_bidi.into());
    t.max_concurrent_uni_streams(0u32.into());
    // Received and unread: a window per stream, and for the connection as many windows as
    // the peer may open streams (quinn's default connection window is unlimited: this is the
    // bound it had in effect, written down).
    let stream = timing.stream_window_bytes.min(u32::MAX as u64) as u32;
    t.stream_receive_window(stream.into());
    t.receive_window(
        quinn::VarInt::from_u64(stream as u64 * max_bidi.max(1) as u64)
            .unwrap_or(quinn::VarInt::MAX),
    );
    t.send_window(timing.send_window_bytes);
    Arc::new(t)
}

/// Server configuration for quinn.
pub fn quinn_server_config(
    creds: &Credentials,
    crl: &CrlState,
    timing: Timing,
    max_bidi: u32,
) -> Result<quinn::ServerConfig, NetError> {
    let tls = creds.server_config(crl)?;
    let quic = QuicServerConfig::try_from(tls)
        .map_err(|e| NetError::Tls(TlsError::Verifier(e.to_string())))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(transport(timing, max_bidi, false));
    crate::admission::limit_incoming(&mut cfg);
    Ok(cfg)
}

/// Client configuration for quinn.
pub fn quinn_client_config(
    creds: &Credentials,
    crl: &CrlState,
    timing: Timing,
) -> Result<quinn::ClientConfig, NetError> {
    let tls = creds.client_config(crl)?;
    let quic = QuicClientConfig::try_from(tls)
        .map_err(|e| NetError::Tls(TlsError::Verifier(e.to_string())))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport(timing, 64, true));
    Ok(cfg)
}

/// Receive and send buffer asked for every QUIC endpoint's UDP socket (the kernel caps it
/// at `net.core.rmem_max`/`wmem_max`).
pub const QUIC_UDP_BUFFER_BYTES: usize = 4 << 20;

/// An endpoint bound to `addr`; a server too when `serve` is set (accepting up to `max_bidi`
/// streams per connection). Its default client configuration presents our certificate.
pub fn endpoint(
    addr: SocketAddr,
    creds: &Credentials,
    crl: &CrlState,
    timing: Timing,
    serve: Option<u32>,
) -> Result<quinn::Endpoint, NetError> {
    let server = match serve {
        Some(max_bidi) => Some(quinn_server_config(creds, crl, timing, max_bidi)?),
        None => None,
    };
    let socket =
        std::net::UdpSocket::bind(addr).map_err(|source| NetError::Bind { addr, source })?;
    // The socket's receive buffer is the queue in front of the endpoint: in a handshake storm
    // the default (about 200 KiB) overflows within milliseconds of the endpoint falling
    // behind, and a good member's handshake packet dropped there waits for QUIC's first probe
    // timeout (about 1 s).
    size_udp_buffers(&socket, QUIC_UDP_BUFFER_BYTES);
    let runtime = quinn::default_runtime()
        .ok_or_else(|| NetError::PeerIdentity("no async runtime".into()))?;
    let mut ep = quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime)
        .map_err(|source| NetError::Bind { addr, source })?;
    ep.set_default_client_config(quinn_client_config(creds, crl, timing)?);
    Ok(ep)
}

/// The identity in the certificate a connected peer presented.
pub fn peer_identity(conn: &quinn::Connection) -> Result<Identity, NetError> {
    let any = conn
        .peer_identity()
        .ok_or_else(|| NetError::PeerIdentity("none presented".into()))?;
    let certs = any
        .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
        .map_err(|_| NetError::PeerIdentity("not an X.509 chain".into()))?;
    let first = certs
        .first()
        .ok_or_else(|| NetError::PeerIdentity("empty chain".into()))?;
    identity_from_der(first).map_err(|e| NetError::PeerIdentity(e.to_string()))
}

/// Open connections by peer certificate serial, so revoked peers can be cut off.
#[derive(Debug, Default, Clone)]
pub struct ConnTable {
    inner: Arc<Mutex<HashMap<usize, (Identity, quinn::Connection)>>>,
}

impl ConnTable {
    /// Records a connection.
    pub fn insert(&self, id: Identity, conn: quinn::Connection) {
        self.inner
            .lock()
            .expect("conn table")
            .insert(conn.stable_id(), (id, conn));
    }

    /// Forgets a connection.
    pub fn remove(&self, conn: &quinn::Connection) {
        self.inner
            .lock()
            .expect("conn table")
            .remove(&conn.stable_id());
    }

    /// Number of open connections recorded.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("conn table").len()
    }

    /// Whether no connection is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every connection whose peer serial is revoked; returns their names.
    /// Returns each closed peer as `NAME@ADDR` (see [`crate::logging::peer_label`]).
    pub fn close_revoked(&self, crl: &CrlState) -> Vec<String> {
        let mut closed = Vec::new();
        let mut map = self.inner.lock().expect("conn table");
        map.retain(|_, (id, conn)| {
            if crl.is_revoked(&id.serial) {
                conn.close(CloseCode::Revoked.varint(), b"certificate revoked");
                closed.push(crate::logging::peer_label(
                    Some(&id.name),
                    conn.remote_address(),
                ));
                false
            } else {
                true
            }
        });
        closed
    }

    /// Whether a peer with this serial is connected.
    pub fn has_serial(&self, serial: &Serial) -> bool {
        self.inner
            .lock()
            .expect("conn table")
            .values()
            .any(|(id, _)| &id.serial == serial)
    }
}

/// Watches the CRL store: on every change rebuilds the endpoint's TLS configurations (so new
/// handshakes see the new CRL) and closes every recorded connection whose peer is revoked.
pub fn spawn_crl_enforcer(
    mut endpoint: quinn::Endpoint,
    creds: Arc<Credentials>,
    crl: Arc<CrlStore>,
    conns: ConnTable,
    timing: Timing,
    serve: Option<u32>,
) -> tokio::task::JoinHandle<()> {
    let mut rx = crl.subscribe();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let state = crl.current();
            if let Some(max_bidi) = serve {
                match quinn_server_config(&creds, &state, timing, max_bidi) {
                    Ok(cfg) => endpoint.set_server_config(Some(cfg)),
                    Err(e) => warn!(cause = %e, "cannot rebuild server config for new CRL"),
                }
            }
            match quinn_client_config(&creds, &state, timing) {
                Ok(cfg) => endpoint.set_default_client_config(cfg),
                Err(e) => warn!(cause = %e, "cannot rebuild client config for new CRL"),
            }
            for peer in conns.close_revoked(&state) {
                info!(%peer, "closed connection: peer certificate revoked");
            }
        }
    })
}

/// Why a handshake failed, in an operator's words.
pub fn describe_handshake_error(err: &quinn::ConnectionError) -> String {
    let text = err.to_string();
    let t = text.to_lowercase().replace(' ', "");
    let why = if t.contains("revoked") {
        "certificate revoked"
    } else if t.contains("notvalidyet") {
        "certificate not valid yet"
    } else if t.contains("expired") {
        "certificate expired"
    } else if t.contains("unknownissuer") || t.contains("badsignature") {
        "certificate not issued by this farm's CA"
    } else if t.contains("nocertificate") || t.contains("certificaterequired") {
        "no client certificate"
    } else {
        "handshake failed"
    };
    format!("{why} ({text})")
}

/// Asks the kernel for `bytes` of receive and send buffer on a UDP socket (a server under load
/// drops datagrams once the default ~200 KiB fill up); logs what was granted.
pub fn size_udp_buffers<S: std::os::fd::AsFd>(socket: &S, bytes: usize) {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    for (which, set, get) in [
        (
            "receive",
            setsockopt(socket, sockopt::RcvBuf, &bytes),
            getsockopt(socket, sockopt::RcvBuf),
        ),
        (
            "send",
            setsockopt(socket, sockopt::SndBuf, &bytes),
            getsockopt(socket, sockopt::SndBuf),
        ),
    ] {
        match (set, get) {
            (Ok(()), Ok(granted)) => tracing::debug!(asked = bytes, granted, "UDP {which} buffer"),
            (Err(e), _) | (_, Err(e)) => {
                warn!(cause = %e, asked = bytes, "cannot size the UDP {which} buffer")
            }
        }
    }
}
