//! SIP transports of a node: UDP and TCP on the node's own address (port 5060), TLS on 5061
//! where configured; byte-level.
//!
//! Inbound datagrams and stream messages arrive on one bounded channel as [`Inbound`], each
//! with the [`Source`] it came from. A TCP or TLS connection is a *flow*: it gets an id, and
//! the node can send on it later (reverse outbound: a client behind NAT stays reachable
//! through the connection it opened).
//!
//! Sending never waits and never spawns a task per message: [`Transports::send_now`] sends a
//! datagram with `try_send_to`, or puts a stream message on its connection's queue, which is
//! bounded in messages and in bytes ([`TransportConfig::send_queue`],
//! [`TransportConfig::send_queue_bytes`]). A message to an address with no open connection
//! reuses one to that address, or starts one connect (bounded by
//! [`TransportConfig::max_connections`]) with the message queued for it. Messages on one
//! connection go out in the order they were queued.
//!
//! # One connection
//!
//! Each connection is one task with a reader and a writer half:
//! - the reader frames the stream with the (linear-time) [`StreamFramer`]: messages go to the
//!   inbound channel (the reader waits when it is full: backpressure), a CRLF CRLF keep-alive
//!   ping is answered with a CRLF pong (RFC 5626 section 3.5.1), a lone CRLF is skipped
//!   (RFC 3261 section 7.5), a message over [`TransportConfig::max_message`] whose header
//!   section is complete is passed on cut (the parser answers 513) and its body discarded as
//!   it arrives; a header section over the cap, or a stream that cannot be framed, closes
//!   the connection. No byte for [`TransportConfig::idle`] closes it too.
//! - the writer drains the queue; a write that blocks for [`TransportConfig::write_timeout`]
//!   (a peer that stopped reading) closes the connection, and so does a queue found full for
//!   longer than that by a sender.
//!
//! # Who may hold connections
//!
//! Anyone may connect (SIP phones are not known by address), so the bounds are what keep one
//! client from taking the slots of all others:
//! - at most [`TransportConfig::max_connections`] at once, inbound and outbound;
//! - at most [`TransportConfig::max_per_ip`] inbound ones from one IP address (an office
//!   behind one NAT fits under the default; more are refused at accept and counted in
//!   `sip_tcp_refused_per_ip_total`);
//! - an inbound connection that has delivered no SIP message (CRLF keep-alives do not count)
//!   within [`TransportConfig::first_message`] of being accepted (of its TLS handshake, for
//!   TLS) is closed (`reason="silent"`): a phone sends its request as soon as it connects,
//!   and the long idle timeout is kept for connections that have spoken SIP.
//!
//! An idle connection holds no read buffer (reads go through a buffer on the stack), so
//! thousands of connections cost a few KiB each. Why a connection closed is counted in
//! `sip_tcp_closed_total{reason=...}`; open connections in the gauge `sip_tcp_flows`.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use onehop_overlay::metrics::{Metric, Metrics};
use onehop_overlay::per_address::{AddressSlot, PerAddress};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::sip::{Frame, FrameError, Limits, Message, StreamFramer};

/// Largest UDP datagram accepted.
pub const MAX_DATAGRAM: usize = 65_535;

/// Bytes read from a stream at once (a buffer on the stack of the reading call, so an idle
/// connection holds none).
const READ_CHUNK: usize = 16 * 1024;

/// Datagrams the UDP receiver reads before it lets the runtime's other tasks run.
const UDP_READS_PER_TURN: u32 = 8;

/// Default [`TransportConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default [`TransportConfig::max_per_ip`]: room for an office of phones behind one NAT,
/// while one address alone cannot take more than a few percent of the default
/// [`DEFAULT_MAX_CONNECTIONS`].
pub const DEFAULT_MAX_PER_IP: usize = 256;
/// Default [`TransportConfig::first_message`] (as Asterisk's `tcpauthtimeout`).
pub const DEFAULT_FIRST_MESSAGE: Duration = Duration::from_secs(30);
/// Default [`TransportConfig::idle`].
pub const DEFAULT_IDLE: Duration = Duration::from_secs(3600);
/// Default [`TransportConfig::write_timeout`].
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`TransportConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default [`TransportConfig::handshake_timeout`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`TransportConfig::send_queue`].
pub const DEFAULT_SEND_QUEUE: usize = 256;
/// Default [`TransportConfig::send_queue_bytes`].
pub const DEFAULT_SEND_QUEUE_BYTES: usize = 1 << 20;
/// Default [`TransportConfig::max_message`].
pub const DEFAULT_MAX_MESSAGE: usize = 65_535;
/// Default [`TransportConfig::queue`].
pub const DEFAULT_INBOUND_QUEUE: usize = 8192;

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Proto {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP (accepted connections only: the node opens no TLS connection itself).
    Tls,
}

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// Protocol.
    pub proto: Proto,
    /// The peer's address.
    pub remote: SocketAddr,
    /// Our address it arrived on.
    pub local: SocketAddr,
    /// The TCP connection (flow) id; 0 for UDP.
    pub conn: u64,
}

/// Where received messages go: the proxy's workers, or a channel.
pub trait InboundSink: Send + Sync + 'static {
    /// Hands over a datagram without waiting; false when there is no room (it is dropped:
    /// its sender retransmits).
    fn try_deliver(&self, m: Inbound) -> bool;
    /// Hands over a message read from a stream, waiting for room (the connection is not
    /// read meanwhile: TCP pushes back); false when the receiver is gone.
    fn deliver(&self, m: Inbound) -> super::BoxFut<bool>;
}

impl InboundSink for mpsc::Sender<Inbound> {
    fn try_deliver(&self, m: Inbound) -> bool {
        self.try_send(m).is_ok()
    }
    fn deliver(&self, m: Inbound) -> super::BoxFut<bool> {
        let tx = self.clone();
        Box::pin(async move { tx.send(m).await.is_ok() })
    }
}

/// One inbound SIP message (bytes of exactly one message, or the first
/// `max_message + 1` bytes of one over the cap, for the parser to answer 513).
#[derive(Debug)]
pub struct Inbound {
    /// The message.
    pub bytes: Bytes,
    /// Where it came from.
    pub source: Source,
}

/// Settings of the transports.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Address to listen on (UDP and TCP).
    pub listen: SocketAddr,
    /// Most TCP and TLS connections at once (inbound and outbound); more are refused.
    pub max_connections: usize,
    /// Most inbound TCP and TLS connections at once from one IP address; more are refused.
    /// 0: no limit per address (only `max_connections`).
    pub max_per_ip: usize,
    /// An inbound connection that has delivered no SIP message this long after it was
    /// accepted (after its TLS handshake) is closed.
    pub first_message: Duration,
    /// A connection that receives nothing for this long is closed.
    pub idle: Duration,
    /// Largest stream message; a larger one is answered 513, a larger header section closes
    /// the connection.
    pub max_message: usize,
    /// Depth of the inbound channel.
    pub queue: usize,
    /// SIP over TLS: where to listen (port 5061) and the server certificate.
    pub tls: Option<(SocketAddr, Arc<rustls::ServerConfig>)>,
    /// A write to a connection that does not complete in this time closes it, and so does
    /// a send queue found full for longer.
    pub write_timeout: Duration,
    /// Time allowed to open an outbound TCP connection.
    pub connect_timeout: Duration,
    /// Time allowed for a TLS handshake.
    pub handshake_timeout: Duration,
    /// Most messages queued for sending on one connection.
    pub send_queue: usize,
    /// Most bytes queued for sending on one connection.
    pub send_queue_bytes: usize,
}

impl TransportConfig {
    /// The defaults, listening on `listen`, without TLS.
    pub fn new(listen: SocketAddr) -> TransportConfig {
        TransportConfig {
            listen,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_ip: DEFAULT_MAX_PER_IP,
            first_message: DEFAULT_FIRST_MESSAGE,
            idle: DEFAULT_IDLE,
            max_message: DEFAULT_MAX_MESSAGE,
            queue: DEFAULT_INBOUND_QUEUE,
            tls: None,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            send_queue: DEFAULT_SEND_QUEUE,
            send_queue_bytes: DEFAULT_SEND_QUEUE_BYTES,
        }
    }
}

/// Why a connection was closed (the `reason` label of `sip_tcp_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Close {
    /// The peer closed it.
    Eof = 1,
    /// Nothing received for the idle timeout.
    Idle,
    /// A write blocked for the write timeout.
    WriteTimeout,
    /// The send queue stayed full for the write timeout.
    QueueFull,
    /// A write failed.
    WriteError,
    /// A read failed.
    ReadError,
    /// A stream that cannot be framed (no or bad Content-Length).
    BadFrame,
    /// A header section over the size cap.
    TooLarge,
    /// An outbound connection could not be opened.
    ConnectFailed,
    /// The node is shutting down.
    Shutdown,
    /// An inbound connection delivered no SIP message within its first-message time.
    Silent,
}

impl Close {
    const ALL: [Close; 11] = [
        Close::Eof,
        Close::Idle,
        Close::WriteTimeout,
        Close::QueueFull,
        Close::WriteError,
        Close::ReadError,
        Close::BadFrame,
        Close::TooLarge,
        Close::ConnectFailed,
        Close::Shutdown,
        Close::Silent,
    ];

    fn label(self) -> &'static str {
        match self {
            Close::Eof => "eof",
            Close::Idle => "idle",
            Close::WriteTimeout => "write_timeout",
            Close::QueueFull => "queue_full",
            Close::WriteError => "write_error",
            Close::ReadError => "read_error",
            Close::BadFrame => "bad_frame",
            Close::TooLarge => "too_large",
            Close::ConnectFailed => "connect_failed",
            Close::Shutdown => "shutdown",
            Close::Silent => "silent",
        }
    }

    fn from_frame_error(e: &FrameError) -> Close {
        match e {
            FrameError::TooLarge { .. } => Close::TooLarge,
            _ => Close::BadFrame,
        }
    }
}

/// Why a message could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The flow named is gone (TLS flows are reached only through their connection).
    #[error("flow {0} is closed")]
    FlowGone(u64),
    /// Socket error.
    #[error("send to {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    /// Too many connections to open another.
    #[error("connection limit reached")]
    Busy,
    /// The connection's send queue is full (its peer reads too slowly, or not at all).
    #[error("send queue to {0} is full")]
    QueueFull(SocketAddr),
    /// The UDP socket's send buffer is full.
    #[error("udp send buffer full, datagram to {0} dropped")]
    WouldBlock(SocketAddr),
}

impl SendError {
    const LABELS: [&'static str; 5] = ["flow_gone", "io", "busy", "queue_full", "would_block"];

    fn index(&self) -> usize {
        match self {
            SendError::FlowGone(_) => 0,
            SendError::Io(..) => 1,
            SendError::Busy => 2,
            SendError::QueueFull(_) => 3,
            SendError::WouldBlock(_) => 4,
        }
    }
}

/// What a flow's sender and its connection task share.
struct FlowShared {
    /// Bytes queued and not yet written.
    queued: AtomicUsize,
    /// When a sender first found the queue full (ms since [`Transports::epoch`], plus one);
    /// 0 while it is not.
    full_since: AtomicU64,
    /// Why the flow was closed from outside its task ([`Close`] as u8; 0: not).
    closed_for: AtomicU8,
    /// Closes the connection (a child of the transports' token).
    close: CancellationToken,
}

struct Flow {
    tx: mpsc::Sender<Bytes>,
    shared: Arc<FlowShared>,
    remote: SocketAddr,
}

#[derive(Default)]
struct FlowTable {
    by_id: HashMap<u64, Flow>,
    /// The flow to use for an address (the latest opened to or from it).
    by_remote: HashMap<SocketAddr, u64>,
}

struct Counters {
    /// The proxy's count of malformed messages (oversized ones are answered here).
    malformed: Metric,
    flows: Metric,
    refused: Metric,
    refused_per_ip: Metric,
    pings: Metric,
    closed: Vec<Metric>,
    send_failed: Vec<Metric>,
}

impl Counters {
    fn new(metrics: &Metrics) -> Counters {
        Counters {
            malformed: metrics.counter("sip_malformed_total", "Malformed SIP messages received."),
            flows: metrics.gauge("sip_tcp_flows", "Open SIP TCP and TLS connections."),
            refused: metrics.counter(
                "sip_tcp_refused_total",
                "SIP TCP and TLS connections refused at the connection limit.",
            ),
            refused_per_ip: metrics.counter(
                "sip_tcp_refused_per_ip_total",
                "SIP TCP and TLS connections refused because their IP address held sip_max_connections_per_ip already.",
            ),
            pings: metrics.counter(
                "sip_tcp_pings_total",
                "CRLF CRLF keep-alive pings answered on SIP connections.",
            ),
            closed: Close::ALL
                .iter()
                .map(|c| {
                    metrics.counter(
                        &format!("sip_tcp_closed_total{{reason=\"{}\"}}", c.label()),
                        "SIP TCP and TLS connections closed, by reason.",
                    )
                })
                .collect(),
            send_failed: SendError::LABELS
                .iter()
                .map(|l| {
                    metrics.counter(
                        &format!("sip_send_failed_total{{reason=\"{l}\"}}"),
                        "SIP messages that could not be sent, by reason.",
                    )
                })
                .collect(),
        }
    }

    fn closed(&self, why: Close) {
        if let Some(m) = self.closed.get(why as usize - 1) {
            m.inc();
        }
    }
}

/// The node's SIP sockets.
pub struct Transports {
    udp: Arc<UdpSocket>,
    local: SocketAddr,
    table: Mutex<FlowTable>,
    next_id: AtomicU64,
    limit: Arc<Semaphore>,
    cfg: TransportConfig,
    inbound: Arc<dyn InboundSink>,
    cancel: CancellationToken,
    epoch: Instant,
    counters: Counters,
    per_ip: Arc<PerAddress>,
}

impl Transports {
    /// Binds UDP and TCP on `cfg.listen` (and TLS where configured) and starts receiving.
    /// Returns the transports and the inbound channel (of `cfg.queue` messages).
    pub async fn bind(
        cfg: TransportConfig,
        metrics: &Metrics,
        cancel: CancellationToken,
    ) -> std::io::Result<(Arc<Transports>, mpsc::Receiver<Inbound>)> {
        let (tx, rx) = mpsc::channel(cfg.queue.max(16));
        let t = Transports::bind_to(cfg, Arc::new(tx), metrics, cancel).await?;
        Ok((t, rx))
    }

    /// Binds UDP and TCP on `cfg.listen` (and TLS where configured) and starts receiving,
    /// handing every message to `sink` (a datagram without waiting, a stream's message
    /// waiting for room).
    pub async fn bind_to(
        cfg: TransportConfig,
        sink: Arc<dyn InboundSink>,
        metrics: &Metrics,
        cancel: CancellationToken,
    ) -> std::io::Result<Arc<Transports>> {
        let udp = UdpSocket::bind(cfg.listen).await?;
        // Bursts of REGISTERs overflow the default buffer (and cost 500 ms retransmissions).
        onehop_overlay::net::size_udp_buffers(&udp, 4 << 20);
        let udp = Arc::new(udp);
        let tcp = TcpListener::bind(cfg.listen).await?;
        let local = udp.local_addr()?;
        let t = Arc::new(Transports {
            udp,
            local,
            table: Mutex::new(FlowTable::default()),
            next_id: AtomicU64::new(1),
            limit: Arc::new(Semaphore::new(cfg.max_connections)),
            cfg,
            inbound: sink,
            cancel,
            epoch: Instant::now(),
            counters: Counters::new(metrics),
            per_ip: PerAddress::new(),
        });
        if let Some((addr, config)) = t.cfg.tls.clone() {
            let listener = TcpListener::bind(addr).await?;
            tokio::spawn(
                t.clone()
                    .accept_tls_loop(listener, tokio_rustls::TlsAcceptor::from(config)),
            );
        }
        tokio::spawn(t.clone().udp_loop());
        tokio::spawn(t.clone().accept_loop(tcp));
        Ok(t)
    }

    /// Our listening address.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// Sends a message without waiting: by UDP to `remote`; or, for TCP and TLS, on flow
    /// `conn` when it is open, else on a connection to `remote` (reused when one is open,
    /// else opened, for TCP only, with the message queued for it). Messages queued on one
    /// connection go out in call order. Failures are counted in
    /// `sip_send_failed_total{reason=...}`.
    pub fn send_now(
        self: &Arc<Self>,
        proto: Proto,
        remote: SocketAddr,
        conn: u64,
        bytes: Bytes,
    ) -> Result<(), SendError> {
        let r = self.send_inner(proto, remote, conn, bytes);
        if let Err(e) = &r {
            if let Some(m) = self.counters.send_failed.get(e.index()) {
                m.inc();
            }
        }
        r
    }

    fn send_inner(
        self: &Arc<Self>,
        proto: Proto,
        remote: SocketAddr,
        conn: u64,
        bytes: Bytes,
    ) -> Result<(), SendError> {
        if proto == Proto::Udp {
            return match self.udp.try_send_to(&bytes, remote) {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    Err(SendError::WouldBlock(remote))
                }
                Err(e) => Err(SendError::Io(remote, e)),
            };
        }
        let mut table = self.table.lock().expect("flows");
        let id = match table.by_id.contains_key(&conn) {
            true => Some(conn),
            // A TLS client is reached through its own connection only.
            false if proto == Proto::Tls && conn != 0 => return Err(SendError::FlowGone(conn)),
            false => table.by_remote.get(&remote).copied(),
        };
        if let Some(flow) = id.and_then(|id| table.by_id.get(&id)) {
            return self.enqueue(flow, bytes);
        }
        if proto == Proto::Tls {
            return Err(SendError::FlowGone(conn));
        }
        // No connection to `remote`: open one, with the message queued for it.
        let Ok(permit) = self.limit.clone().try_acquire_owned() else {
            return Err(SendError::Busy);
        };
        let (id, rx, shared) = self.register_flow(&mut table, remote);
        if let Some(flow) = table.by_id.get(&id) {
            self.enqueue(flow, bytes)?;
        }
        drop(table);
        let me = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let connect = async {
                let sock = match remote {
                    SocketAddr::V4(_) => TcpSocket::new_v4()?,
                    SocketAddr::V6(_) => TcpSocket::new_v6()?,
                };
                // From the node's own address, as every socket of the node.
                if me.local.is_ipv4() == remote.is_ipv4() {
                    sock.bind(SocketAddr::new(me.local.ip(), 0))?;
                }
                sock.connect(remote).await
            };
            let why = match tokio::time::timeout(me.cfg.connect_timeout, connect).await {
                Ok(Ok(sock)) => {
                    let local = sock.local_addr().unwrap_or(me.local);
                    me.flow_io(id, sock, local, remote, Proto::Tcp, rx, &shared, None)
                        .await
                }
                Ok(Err(e)) => {
                    debug!(peer = %remote, cause = %e, "SIP TCP connect failed");
                    Close::ConnectFailed
                }
                Err(_) => {
                    debug!(peer = %remote, "SIP TCP connect timed out");
                    Close::ConnectFailed
                }
            };
            me.end_flow(id, why);
        });
        Ok(())
    }

    /// Queues `bytes` on `flow` if its queue has room (in messages and in bytes); a queue
    /// found full for longer than the write timeout closes the flow.
    fn enqueue(&self, flow: &Flow, bytes: Bytes) -> Result<(), SendError> {
        let s = &flow.shared;
        let len = bytes.len();
        let before = s.queued.fetch_add(len, Ordering::AcqRel);
        let fits = before == 0 || before + len <= self.cfg.send_queue_bytes;
        let r = if fits {
            flow.tx.try_send(bytes)
        } else {
            Err(mpsc::error::TrySendError::Full(bytes))
        };
        match r {
            Ok(()) => {
                s.full_since.store(0, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // Its connection has just ended.
                s.queued.fetch_sub(len, Ordering::AcqRel);
                Err(SendError::FlowGone(0))
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                s.queued.fetch_sub(len, Ordering::AcqRel);
                let now = self.epoch.elapsed().as_millis() as u64 + 1;
                if let Err(since) =
                    s.full_since
                        .compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed)
                {
                    if now.saturating_sub(since) > self.cfg.write_timeout.as_millis() as u64 {
                        let _ = s.closed_for.compare_exchange(
                            0,
                            Close::QueueFull as u8,
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        );
                        s.close.cancel();
                    }
                }
                Err(SendError::QueueFull(flow.remote))
            }
        }
    }

    /// Number of open TCP and TLS flows.
    pub fn flows(&self) -> usize {
        self.table.lock().expect("flows").by_id.len()
    }

    /// Whether flow `conn` is open.
    pub fn has_flow(&self, conn: u64) -> bool {
        self.table.lock().expect("flows").by_id.contains_key(&conn)
    }

    fn register_flow(
        &self,
        table: &mut FlowTable,
        remote: SocketAddr,
    ) -> (u64, mpsc::Receiver<Bytes>, Arc<FlowShared>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.cfg.send_queue.max(1));
        let shared = Arc::new(FlowShared {
            queued: AtomicUsize::new(0),
            full_since: AtomicU64::new(0),
            closed_for: AtomicU8::new(0),
            close: self.cancel.child_token(),
        });
        table.by_id.insert(
            id,
            Flow {
                tx,
                shared: shared.clone(),
                remote,
            },
        );
        table.by_remote.insert(remote, id);
        self.counters.flows.set(table.by_id.len() as i64);
        (id, rx, shared)
    }

    /// Forgets flow `id`: nothing more is queued on it (its writer ends once it has written
    /// what is queued).
    fn drop_flow(&self, id: u64) {
        let mut table = self.table.lock().expect("flows");
        if let Some(f) = table.by_id.remove(&id) {
            if table.by_remote.get(&f.remote) == Some(&id) {
                table.by_remote.remove(&f.remote);
            }
        }
        self.counters.flows.set(table.by_id.len() as i64);
    }

    /// Runs an accepted connection as a flow until it ends.
    async fn serve_accepted<S>(
        &self,
        stream: S,
        local: SocketAddr,
        remote: SocketAddr,
        proto: Proto,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (id, rx, shared) = {
            let mut table = self.table.lock().expect("flows");
            self.register_flow(&mut table, remote)
        };
        let why = self
            .flow_io(
                id,
                stream,
                local,
                remote,
                proto,
                rx,
                &shared,
                Some(self.cfg.first_message),
            )
            .await;
        self.end_flow(id, why);
    }

    fn end_flow(&self, id: u64, why: Close) {
        self.drop_flow(id);
        self.counters.closed(why);
    }

    async fn udp_loop(self: Arc<Self>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut read = 0;
        loop {
            // A turn of at most UDP_READS_PER_TURN datagrams, then the other tasks' (the
            // workers that take them, the node's QUIC connections): see the SIP core's BATCH.
            if read == UDP_READS_PER_TURN {
                read = 0;
                tokio::task::yield_now().await;
            }
            read += 1;
            let r = tokio::select! {
                r = self.udp.recv_from(&mut buf) => r,
                _ = self.cancel.cancelled() => return,
            };
            match r {
                Ok((n, remote)) => {
                    let data = &buf[..n];
                    // Keep-alives (CRLF) and empty datagrams carry no message.
                    if data.iter().all(|b| *b == b'\r' || *b == b'\n' || *b == 0) {
                        continue;
                    }
                    let msg = Inbound {
                        bytes: Bytes::copy_from_slice(data),
                        source: Source {
                            proto: Proto::Udp,
                            remote,
                            local: self.local,
                            conn: 0,
                        },
                    };
                    if !self.inbound.try_deliver(msg) {
                        debug!(peer = %remote, "inbound queue full: datagram dropped");
                    }
                }
                Err(e) => debug!(cause = %e, "udp receive"),
            }
        }
    }

    /// Room for an inbound connection from `remote`: its place under the address's limit
    /// and under the node's; `None` (counted and logged) when either is full.
    fn admit(
        &self,
        remote: SocketAddr,
        proto: Proto,
    ) -> Option<(tokio::sync::OwnedSemaphorePermit, AddressSlot)> {
        let what = if proto == Proto::Tls { "TLS" } else { "TCP" };
        let Some(slot) = self.per_ip.take(remote.ip(), self.cfg.max_per_ip) else {
            self.counters.refused_per_ip.inc();
            debug!(peer = %remote, max = self.cfg.max_per_ip, "SIP {what} connection refused: its address holds sip_max_connections_per_ip connections already");
            return None;
        };
        let Ok(permit) = self.limit.clone().try_acquire_owned() else {
            self.counters.refused.inc();
            debug!(peer = %remote, "SIP {what} connection refused: connection limit reached");
            return None;
        };
        Some((permit, slot))
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            let r = tokio::select! {
                r = listener.accept() => r,
                _ = self.cancel.cancelled() => return,
            };
            match r {
                Ok((sock, remote)) => {
                    let Some((permit, slot)) = self.admit(remote, Proto::Tcp) else {
                        continue;
                    };
                    let me = self.clone();
                    tokio::spawn(async move {
                        let _held = (permit, slot);
                        let _ = sock.set_nodelay(true);
                        let local = sock.local_addr().unwrap_or(me.local);
                        me.serve_accepted(sock, local, remote, Proto::Tcp).await;
                    });
                }
                Err(e) => {
                    // Out of file descriptors, most likely: let some close.
                    warn!(cause = %e, "SIP TCP accept");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    async fn accept_tls_loop(
        self: Arc<Self>,
        listener: TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
    ) {
        let local = listener.local_addr().unwrap_or(self.local);
        loop {
            let r = tokio::select! {
                r = listener.accept() => r,
                _ = self.cancel.cancelled() => return,
            };
            let (sock, remote) = match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(cause = %e, "SIP TLS accept");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Some((permit, slot)) = self.admit(remote, Proto::Tls) else {
                continue;
            };
            let me = self.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _held = (permit, slot);
                let _ = sock.set_nodelay(true);
                let handshake = acceptor.accept(sock);
                let tls = match tokio::time::timeout(me.cfg.handshake_timeout, handshake).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        debug!(peer = %remote, cause = %e, "SIP TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        debug!(peer = %remote, "SIP TLS handshake timed out");
                        return;
                    }
                };
                me.serve_accepted(tls, local, remote, Proto::Tls).await;
            });
        }
    }

    /// Runs one connection until either side ends it, it idles out, a write blocks too long
    /// or the node stops; returns why it ended.
    #[allow(clippy::too_many_arguments)]
    async fn flow_io<S>(
        &self,
        id: u64,
        stream: S,
        local: SocketAddr,
        remote: SocketAddr,
        proto: Proto,
        mut rx: mpsc::Receiver<Bytes>,
        shared: &FlowShared,
        first_message: Option<Duration>,
    ) -> Close
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let write_timeout = self.cfg.write_timeout;
        let writer = async {
            while let Some(b) = rx.recv().await {
                let len = b.len();
                let write = async {
                    wr.write_all(&b).await?;
                    if rx.is_empty() {
                        wr.flush().await?;
                    }
                    Ok::<_, std::io::Error>(())
                };
                let r = tokio::time::timeout(write_timeout, write).await;
                shared.queued.fetch_sub(len, Ordering::AcqRel);
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        debug!(peer = %remote, cause = %e, "SIP connection write failed");
                        return Close::WriteError;
                    }
                    Err(_) => {
                        debug!(peer = %remote, "SIP connection closed: write blocked (peer not reading)");
                        return Close::WriteTimeout;
                    }
                }
            }
            // The flow was dropped and its queue is drained.
            Close::Eof
        };
        let reader = async {
            let limits = Limits {
                max_message: self.cfg.max_message,
                ..Limits::default()
            };
            let mut framer = StreamFramer::new(&limits).answer_oversized();
            // The idle timer is re-armed only when it fires (from the last read), not on
            // every read: a peer that drips bytes costs no timer work per byte. Until the
            // first message of an inbound connection, it also fires at its first-message
            // deadline.
            let started = tokio::time::Instant::now();
            let mut last_read = started;
            let mut silent_until = first_message.map(|d| later(started, d));
            // When the timer next fires: the idle deadline, or the first-message one if sooner.
            let deadline = |last_read, silent_until: Option<tokio::time::Instant>| {
                let idle_at = later(last_read, self.cfg.idle);
                silent_until.map_or(idle_at, |t| t.min(idle_at))
            };
            let mut idle = pin!(tokio::time::sleep_until(deadline(started, silent_until)));
            loop {
                loop {
                    let bytes = match framer.next_frame() {
                        Ok(Some(Frame::Message(m))) => m,
                        Ok(Some(Frame::Oversized(m))) => {
                            // Answered here, in the connection's order (513), not by a
                            // worker: the next message on this connection may belong to
                            // another worker, and its answer must not overtake this one.
                            self.answer_oversized(id, &m, &limits);
                            continue;
                        }
                        Ok(Some(Frame::Ping)) => {
                            self.pong(id);
                            continue;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            debug!(peer = %remote, cause = %e, "closing SIP connection");
                            return Close::from_frame_error(&e);
                        }
                    };
                    let source = Source {
                        proto,
                        remote,
                        local,
                        conn: id,
                    };
                    if !self.inbound.deliver(Inbound { bytes, source }).await {
                        return Close::Shutdown;
                    }
                    silent_until = None;
                    // Time spent waiting for the core (backpressure) is not the peer's idling.
                    last_read = tokio::time::Instant::now();
                }
                let read = tokio::select! {
                    r = read_into(&mut rd, &mut framer) => r,
                    _ = &mut idle => {
                        let now = tokio::time::Instant::now();
                        if silent_until.is_some_and(|t| now >= t) {
                            debug!(peer = %remote, "closing SIP connection: no SIP message since it was opened");
                            return Close::Silent;
                        }
                        if now.duration_since(last_read) >= self.cfg.idle {
                            return Close::Idle;
                        }
                        idle.as_mut().reset(deadline(last_read, silent_until));
                        continue;
                    }
                };
                match read {
                    Ok(0) => return Close::Eof,
                    Ok(_) => last_read = tokio::time::Instant::now(),
                    Err(why) => return why,
                }
            }
        };
        let mut writer = pin!(writer);
        let reader = pin!(reader);
        let why = tokio::select! {
            why = &mut writer => why,
            why = reader => {
                // Nothing more is queued; what is (a last response) goes out first, within
                // the write timeout.
                self.drop_flow(id);
                tokio::select! {
                    _ = tokio::time::timeout(write_timeout, &mut writer) => {}
                    _ = shared.close.cancelled() => {}
                }
                why
            }
            _ = shared.close.cancelled() => match shared.closed_for.load(Ordering::Acquire) {
                x if x == Close::QueueFull as u8 => {
                    debug!(peer = %remote, "SIP connection closed: send queue full too long");
                    Close::QueueFull
                }
                _ => Close::Shutdown,
            },
        };
        why
    }

    /// Answers a keep-alive ping on flow `id` with a CRLF (dropped when its queue is full).
    /// Answers a message over `max_message` (its first bytes, as the framer cut them) on its
    /// connection: 513 when its header can be read, nothing otherwise.
    fn answer_oversized(&self, id: u64, cut: &[u8], limits: &Limits) {
        self.counters.malformed.inc();
        let Err(e) = crate::sip::parse_with(cut, limits) else {
            return;
        };
        let Some(resp) = e.response() else {
            return;
        };
        let table = self.table.lock().expect("flows");
        if let Some(flow) = table.by_id.get(&id) {
            let _ = self.enqueue(flow, Message::Response(resp).to_bytes());
        }
    }

    fn pong(&self, id: u64) {
        self.counters.pings.inc();
        let table = self.table.lock().expect("flows");
        if let Some(flow) = table.by_id.get(&id) {
            let _ = self.enqueue(flow, Bytes::from_static(b"\r\n"));
        }
    }
}

/// `t` + `d`, or a century after `t` where that would overflow (a timeout configured
/// absurdly long).
fn later(t: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    t.checked_add(d)
        .unwrap_or_else(|| t + Duration::from_secs(100 * 365 * 86_400))
}

/// Reads once from `rd` into `framer`, through a buffer on the stack: an idle connection
/// waiting here holds no buffer. Returns the bytes read (0 at the end of the stream).
/// Cancel-safe: nothing is lost when the future is dropped before it completes.
async fn read_into<R>(rd: &mut R, framer: &mut StreamFramer) -> Result<usize, Close>
where
    R: AsyncRead + Unpin,
{
    std::future::poll_fn(|cx| {
        // Not zeroed: a one-byte read must not cost a 16 KiB memset.
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut *rd).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(_)) => Poll::Ready(Err(Close::ReadError)),
            Poll::Ready(Ok(())) => {
                let data = buf.filled();
                Poll::Ready(
                    framer
                        .feed(data)
                        .map(|()| data.len())
                        .map_err(|e| Close::from_frame_error(&e)),
                )
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    const MSG: &[u8] = b"OPTIONS sip:a@example.test SIP/2.0\r\nContent-Length: 0\r\n\r\n";

    async fn start(
        ip: &str,
        f: impl FnOnce(&mut TransportConfig),
    ) -> (Arc<Transports>, mpsc::Receiver<Inbound>, Metrics) {
        let mut cfg = TransportConfig::new(format!("{ip}:15060").parse().unwrap());
        f(&mut cfg);
        let metrics = Metrics::default();
        let (t, rx) = Transports::bind(cfg, &metrics, CancellationToken::new())
            .await
            .expect("bind");
        (t, rx, metrics)
    }

    async fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        buf
    }

    /// Pings get a CRLF, lone CRLFs nothing; messages arrive with their flow; what is sent on
    /// the flow comes back in order.
    #[tokio::test]
    async fn pings_messages_and_ordered_replies() {
        let (t, mut rx, metrics) = start("127.0.97.1", |_| {}).await;
        let mut c = TcpStream::connect(t.local()).await.unwrap();
        c.write_all(b"\r\n\r\n").await.unwrap();
        assert_eq!(read_exact(&mut c, 2).await, b"\r\n");
        c.write_all(b"\r\n").await.unwrap();
        c.write_all(MSG).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&m.bytes[..], MSG);
        assert_eq!(m.source.proto, Proto::Tcp);
        assert!(t.has_flow(m.source.conn));
        let mut want = Vec::new();
        for i in 0..200 {
            let b = format!("reply {i:03}\n");
            want.extend_from_slice(b.as_bytes());
            t.send_now(Proto::Tcp, m.source.remote, m.source.conn, Bytes::from(b))
                .unwrap();
        }
        assert_eq!(read_exact(&mut c, want.len()).await, want);
        assert_eq!(metrics.value("sip_tcp_pings_total"), Some(1));
        assert_eq!(metrics.value("sip_tcp_flows"), Some(1));
        drop(c);
        let gone = async {
            while t.flows() > 0 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), gone)
            .await
            .unwrap();
        assert_eq!(
            metrics.value("sip_tcp_closed_total{reason=\"eof\"}"),
            Some(1)
        );
    }

    /// A client that sends nothing is closed after the idle timeout; one that stops reading
    /// is closed once a write blocks for the write timeout, and sends to it fail meanwhile
    /// (never wait).
    #[tokio::test]
    async fn idle_and_non_reading_clients_are_closed() {
        let (t, _rx, metrics) = start("127.0.97.2", |c| {
            c.idle = Duration::from_millis(300);
            c.write_timeout = Duration::from_millis(300);
            c.send_queue = 8;
        })
        .await;
        let mut idle = TcpStream::connect(t.local()).await.unwrap();
        let started = Instant::now();
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut b))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)));
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert_eq!(
            metrics.value("sip_tcp_closed_total{reason=\"idle\"}"),
            Some(1)
        );

        // Stops reading: its node-side send buffer fills, a write blocks, the flow closes.
        let (t, mut rx, metrics) = start("127.0.97.6", |c| {
            c.write_timeout = Duration::from_millis(300);
            c.send_queue = 8;
        })
        .await;
        let sock = TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut deaf = sock.connect(t.local()).await.unwrap();
        deaf.write_all(MSG).await.unwrap();
        let m = rx.recv().await.unwrap();
        let big = Bytes::from(vec![b'x'; 60_000]);
        let mut full = 0;
        let closed = async {
            while t.has_flow(m.source.conn) {
                let r = t.send_now(Proto::Tcp, m.source.remote, m.source.conn, big.clone());
                if r.is_err() {
                    full += 1;
                    // Pacing only: the loop ends on the condition, not on time.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                } else {
                    tokio::task::yield_now().await;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), closed)
            .await
            .unwrap();
        assert!(full > 0);
        let closed_for =
            |r: &str| metrics.value(&format!("sip_tcp_closed_total{{reason=\"{r}\"}}"));
        assert_eq!(
            closed_for("write_timeout").unwrap_or(0) + closed_for("queue_full").unwrap_or(0),
            1
        );
        assert!(metrics.value("sip_send_failed_total{reason=\"queue_full\"}") > Some(0));
        drop(deaf);
    }
    /// A TCP connection from `from` to `to` that has had its CRLF keep-alive answered.
    async fn ponged(from: &str, to: SocketAddr) -> TcpStream {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let mut c = sock.connect(to).await.unwrap();
        c.write_all(b"\r\n\r\n").await.unwrap();
        assert_eq!(read_exact(&mut c, 2).await, b"\r\n");
        c
    }

    /// Whether the node closed `c` (EOF or reset) within 5 s.
    async fn closed_by_node(c: &mut TcpStream) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), c.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    /// One address holds at most `max_per_ip` inbound connections: the next is closed at
    /// once and counted, other addresses are still served, and a closed connection gives
    /// its place back.
    #[tokio::test]
    async fn connections_per_ip_are_bounded() {
        let (t, _rx, metrics) = start("127.0.97.7", |c| c.max_per_ip = 2).await;
        let a1 = ponged("127.0.97.8", t.local()).await;
        let _a2 = ponged("127.0.97.8", t.local()).await;
        let ip = "127.0.97.8".parse().unwrap();
        assert_eq!(t.per_ip.held(ip), 2);
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind("127.0.97.8:0".parse().unwrap()).unwrap();
        let mut a3 = sock.connect(t.local()).await.unwrap();
        assert!(closed_by_node(&mut a3).await, "a third connection was kept");
        assert_eq!(metrics.value("sip_tcp_refused_per_ip_total"), Some(1));
        assert_eq!(metrics.value("sip_tcp_refused_total"), Some(0));
        // Another address is served meanwhile.
        let _b = ponged("127.0.97.9", t.local()).await;
        assert_eq!(t.flows(), 3);
        // A closed connection frees its place.
        drop(a1);
        let freed = async {
            while t.per_ip.held(ip) > 1 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), freed)
            .await
            .expect("the closed connection's place was not given back");
        let _a4 = ponged("127.0.97.8", t.local()).await;
        assert_eq!(t.per_ip.held(ip), 2);
        assert_eq!(metrics.value("sip_tcp_refused_per_ip_total"), Some(1));
    }

    /// An inbound connection that sends only keep-alives is closed at its first-message
    /// time; one that has sent a SIP message is kept (its idle timeout is much longer).
    #[tokio::test]
    async fn silent_connections_are_closed() {
        let (t, mut rx, metrics) = start("127.0.97.10", |c| {
            c.first_message = Duration::from_millis(300);
            c.idle = Duration::from_secs(60);
        })
        .await;
        let mut spoke = ponged("127.0.97.11", t.local()).await;
        spoke.write_all(MSG).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        let started = Instant::now();
        let mut silent = ponged("127.0.97.11", t.local()).await;
        assert!(
            closed_by_node(&mut silent).await,
            "the silent connection was kept"
        );
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert_eq!(
            metrics.value("sip_tcp_closed_total{reason=\"silent\"}"),
            Some(1)
        );
        // The one that spoke is still served, well past its first-message time.
        let mut b = [0u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_millis(500), spoke.read(&mut b))
                .await
                .is_err(),
            "the connection that sent a message was closed"
        );
        assert!(t.has_flow(m.source.conn));
        t.send_now(
            Proto::Tcp,
            m.source.remote,
            m.source.conn,
            Bytes::from_static(b"ok\n"),
        )
        .unwrap();
        assert_eq!(read_exact(&mut spoke, 3).await, b"ok\n");
        assert_eq!(
            metrics.value("sip_tcp_closed_total{reason=\"idle\"}"),
            Some(0)
        );
    }

    /// A message to an address with no connection opens one (from the node's address) and
    /// the next message reuses it.
    #[tokio::test]
    async fn outbound_connections_are_opened_once_and_reused() {
        let (t, _rx, _metrics) = start("127.0.97.3", |_| {}).await;
        let peer = TcpListener::bind("127.0.97.4:0").await.unwrap();
        let to = peer.local_addr().unwrap();
        t.send_now(Proto::Tcp, to, 0, Bytes::from_static(b"one\n"))
            .unwrap();
        t.send_now(Proto::Tcp, to, 0, Bytes::from_static(b"two\n"))
            .unwrap();
        let (mut s, from) = peer.accept().await.unwrap();
        assert_eq!(from.ip(), t.local().ip());
        assert_eq!(read_exact(&mut s, 8).await, b"one\ntwo\n");
        t.send_now(Proto::Tcp, to, 0, Bytes::from_static(b"three\n"))
            .unwrap();
        assert_eq!(read_exact(&mut s, 6).await, b"three\n");
        assert_eq!(t.flows(), 1);
        // TLS is never opened by the node.
        assert!(matches!(
            t.send_now(
                Proto::Tls,
                "127.0.97.5:5061".parse().unwrap(),
                0,
                Bytes::new()
            ),
            Err(SendError::FlowGone(0))
        ));
    }
}
