//! SIP transports of a node: UDP and TCP on the node's own address (port 5060), byte-level.
//!
//! Inbound datagrams and stream messages arrive on one bounded channel as [`Inbound`], each
//! with the [`Source`] it came from. A TCP connection is a *flow*: it gets an id, and the node
//! can send on it later (reverse outbound: a client behind NAT stays reachable through the
//! connection it opened). Outbound messages go through [`Transports::send`]: UDP from the
//! listening socket (so replies reach NATed clients on their source port), TCP on the flow
//! named, or on a connection to the destination opened on demand.
//!
//! Framing of TCP streams is done by the caller-supplied framer function, so this module
//! knows nothing of SIP parsing. Every queue is bounded: when the inbound channel is full,
//! UDP datagrams are dropped (UDP clients retransmit) and TCP readers wait (backpressure).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Largest UDP datagram accepted.
pub const MAX_DATAGRAM: usize = 65_535;

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

/// One inbound SIP message (bytes of exactly one message).
#[derive(Debug)]
pub struct Inbound {
    /// The message.
    pub bytes: Bytes,
    /// Where it came from.
    pub source: Source,
}

/// Finds message boundaries at the front of a stream buffer: `Ok(Some(n))` when the first `n`
/// bytes are one message (known as soon as its header is complete, so `n` may exceed what is
/// buffered yet), `Ok(None)` when more bytes are needed to tell, `Err` when the stream is
/// broken (it is closed).
///
/// A message longer than [`TransportConfig::max_message`] is passed on cut to its first
/// `max_message + 1` bytes, so that the parser sees it is too large and the request is answered
/// (513) on the connection; the rest of it is read and discarded, and the connection goes on.
pub type Framer = fn(&[u8]) -> Result<Option<usize>, String>;

/// Settings of the transports.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Address to listen on (UDP and TCP).
    pub listen: SocketAddr,
    /// Most TCP connections at once (inbound and outbound).
    pub max_connections: usize,
    /// A TCP connection idle this long is closed.
    pub idle: Duration,
    /// Largest buffered, incomplete stream message.
    pub max_message: usize,
    /// Depth of the inbound channel.
    pub queue: usize,
    /// SIP over TLS: where to listen (port 5061) and the server certificate.
    pub tls: Option<(SocketAddr, Arc<rustls::ServerConfig>)>,
}

struct Flow {
    tx: mpsc::Sender<Bytes>,
    remote: SocketAddr,
}

/// The node's SIP sockets.
pub struct Transports {
    udp: Arc<UdpSocket>,
    local: SocketAddr,
    flows: Mutex<HashMap<u64, Flow>>,
    by_remote: Mutex<HashMap<SocketAddr, u64>>,
    next_id: AtomicU64,
    limit: Arc<Semaphore>,
    cfg: TransportConfig,
    inbound: mpsc::Sender<Inbound>,
    framer: Framer,
    cancel: CancellationToken,
}

/// Why a message could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The flow named is gone.
    #[error("flow {0} is closed")]
    FlowGone(u64),
    /// Socket error.
    #[error("send to {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    /// Too many connections.
    #[error("connection limit reached")]
    Busy,
}

impl Transports {
    /// Binds UDP and TCP on `cfg.listen` and starts receiving. Returns the transports and the
    /// inbound channel.
    pub async fn bind(
        cfg: TransportConfig,
        framer: Framer,
        cancel: CancellationToken,
    ) -> std::io::Result<(Arc<Transports>, mpsc::Receiver<Inbound>)> {
        let udp = UdpSocket::bind(cfg.listen).await?;
        // Bursts of REGISTERs overflow the default buffer (and cost 500 ms retransmissions).
        onehop_overlay::net::size_udp_buffers(&udp, 4 << 20);
        let udp = Arc::new(udp);
        let tcp = TcpListener::bind(cfg.listen).await?;
        let local = udp.local_addr()?;
        let (tx, rx) = mpsc::channel(cfg.queue.max(16));
        let t = Arc::new(Transports {
            udp,
            local,
            flows: Mutex::new(HashMap::new()),
            by_remote: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            limit: Arc::new(Semaphore::new(cfg.max_connections)),
            cfg,
            inbound: tx,
            framer,
            cancel,
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
        Ok((t, rx))
    }

    /// Our listening address.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// Sends a datagram without waiting; `Err(WouldBlock)` when the socket buffer is full.
    pub fn try_send_udp(&self, dest: SocketAddr, bytes: &[u8]) -> std::io::Result<()> {
        self.udp.try_send_to(bytes, dest).map(|_| ())
    }

    /// Queues a message on an open TCP connection without waiting: flow `conn` when it is
    /// open, else the connection to `dest`. Messages queued this way go out in call order (a
    /// task per message could run them in any order). Gives the bytes back when there is no
    /// such connection or its queue is full; [`Transports::send`] then opens or waits.
    pub fn try_send_stream(&self, conn: u64, dest: SocketAddr, bytes: Bytes) -> Result<(), Bytes> {
        let tx = {
            let flows = self.flows.lock().expect("flows");
            let by_id = (conn != 0).then(|| flows.get(&conn)).flatten();
            let by_remote = || {
                let id = self.by_remote.lock().expect("flows").get(&dest).copied()?;
                flows.get(&id)
            };
            by_id.or_else(by_remote).map(|f| f.tx.clone())
        };
        match tx {
            Some(tx) => tx.try_send(bytes).map_err(|e| match e {
                mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b) => b,
            }),
            None => Err(bytes),
        }
    }

    /// Number of open TCP flows.
    pub fn flows(&self) -> usize {
        self.flows.lock().expect("flows").len()
    }

    /// Whether flow `conn` is open.
    pub fn has_flow(&self, conn: u64) -> bool {
        self.flows.lock().expect("flows").contains_key(&conn)
    }

    async fn udp_loop(self: Arc<Self>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
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
                    if self.inbound.try_send(msg).is_err() {
                        debug!(peer = %remote, "inbound queue full: datagram dropped");
                    }
                }
                Err(e) => debug!(cause = %e, "udp receive"),
            }
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            let r = tokio::select! {
                r = listener.accept() => r,
                _ = self.cancel.cancelled() => return,
            };
            match r {
                Ok((sock, remote)) => {
                    let Ok(permit) = self.limit.clone().try_acquire_owned() else {
                        warn!(peer = %remote, "SIP TCP connection refused: connection limit reached");
                        continue;
                    };
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.run_flow(sock, remote).await;
                        drop(permit);
                    });
                }
                Err(e) => {
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
            let Ok(permit) = self.limit.clone().try_acquire_owned() else {
                warn!(peer = %remote, "SIP TLS connection refused: connection limit reached");
                continue;
            };
            let me = self.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _ = sock.set_nodelay(true);
                let tls = match tokio::time::timeout(Duration::from_secs(5), acceptor.accept(sock))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        debug!(peer = %remote, cause = %e, "SIP TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let (tx, rx) = mpsc::channel::<Bytes>(256);
                let id = me.register_flow(remote, tx);
                me.flow_io(id, tls, local, remote, Proto::Tls, rx).await;
                me.drop_flow(id);
            });
        }
    }

    fn register_flow(&self, remote: SocketAddr, tx: mpsc::Sender<Bytes>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.flows
            .lock()
            .expect("flows")
            .insert(id, Flow { tx, remote });
        self.by_remote.lock().expect("flows").insert(remote, id);
        id
    }

    fn drop_flow(&self, id: u64) {
        if let Some(f) = self.flows.lock().expect("flows").remove(&id) {
            let mut by = self.by_remote.lock().expect("flows");
            if by.get(&f.remote) == Some(&id) {
                by.remove(&f.remote);
            }
        }
    }

    /// Runs one inbound TCP connection until either side ends or it idles out.
    async fn run_flow(self: Arc<Self>, sock: TcpStream, remote: SocketAddr) {
        let _ = sock.set_nodelay(true);
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        let id = self.register_flow(remote, tx);
        let local = sock.local_addr().unwrap_or(self.local);
        self.flow_io(id, sock, local, remote, Proto::Tcp, rx).await;
        self.drop_flow(id);
    }

    async fn flow_io<S>(
        &self,
        id: u64,
        stream: S,
        local: SocketAddr,
        remote: SocketAddr,
        proto: Proto,
        mut rx: mpsc::Receiver<Bytes>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let writer = async {
            while let Some(b) = rx.recv().await {
                if wr.write_all(&b).await.is_err() {
                    break;
                }
            }
        };
        let reader = async {
            let mut buf = BytesMut::with_capacity(8192);
            // Bytes still to drop of an oversized message already passed on (cut).
            let mut discard = 0usize;
            loop {
                match tokio::time::timeout(self.cfg.idle, rd.read_buf(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                    Ok(Ok(_)) => {}
                }
                loop {
                    if discard > 0 {
                        let n = discard.min(buf.len());
                        let _ = buf.split_to(n);
                        discard -= n;
                        if discard > 0 {
                            break;
                        }
                    }
                    // Skip keep-alive CRLFs between messages.
                    let skip = buf
                        .iter()
                        .take_while(|b| **b == b'\r' || **b == b'\n')
                        .count();
                    let _ = buf.split_to(skip);
                    match (self.framer)(&buf) {
                        Ok(Some(len)) => {
                            // Over the cap: pass on the first max_message + 1 bytes (the parser
                            // answers 513), drop the rest as it comes.
                            let take = len.min(self.cfg.max_message + 1);
                            if buf.len() < take {
                                break;
                            }
                            discard = len - take;
                            let msg = buf.split_to(take).freeze();
                            let inbound = Inbound {
                                bytes: msg,
                                source: Source {
                                    proto,
                                    remote,
                                    local,
                                    conn: id,
                                },
                            };
                            if self.inbound.send(inbound).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            debug!(peer = %remote, cause = %e, "closing SIP TCP connection");
                            return;
                        }
                    }
                }
                if buf.len() > self.cfg.max_message {
                    debug!(peer = %remote, "closing SIP TCP connection: message over the size cap");
                    return;
                }
            }
        };
        tokio::select! {
            _ = writer => {}
            _ = reader => {}
            _ = self.cancel.cancelled() => {}
        }
    }

    /// Sends a message: on flow `conn` when given and open, else by `proto` to `dest` (over
    /// an existing connection to `dest`, or a new one, for TCP).
    pub async fn send(
        self: &Arc<Self>,
        proto: Proto,
        dest: SocketAddr,
        conn: u64,
        bytes: Bytes,
    ) -> Result<(), SendError> {
        if conn != 0 {
            let tx = self
                .flows
                .lock()
                .expect("flows")
                .get(&conn)
                .map(|f| f.tx.clone());
            match tx {
                Some(tx) => return tx.send(bytes).await.map_err(|_| SendError::FlowGone(conn)),
                None if proto == Proto::Tcp => {}
                None => return Err(SendError::FlowGone(conn)),
            }
        }
        match proto {
            Proto::Tls => Err(SendError::FlowGone(conn)),
            Proto::Udp => self
                .udp
                .send_to(&bytes, dest)
                .await
                .map(|_| ())
                .map_err(|e| SendError::Io(dest, e)),
            Proto::Tcp => {
                let existing = self.by_remote.lock().expect("flows").get(&dest).copied();
                let tx = existing.and_then(|id| {
                    self.flows
                        .lock()
                        .expect("flows")
                        .get(&id)
                        .map(|f| f.tx.clone())
                });
                if let Some(tx) = tx {
                    return tx
                        .send(bytes)
                        .await
                        .map_err(|_| SendError::FlowGone(existing.unwrap_or(0)));
                }
                let permit = self
                    .limit
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| SendError::Busy)?;
                let sock = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(dest))
                    .await
                    .map_err(|_| SendError::Io(dest, std::io::ErrorKind::TimedOut.into()))?
                    .map_err(|e| SendError::Io(dest, e))?;
                let (tx, rx) = mpsc::channel::<Bytes>(256);
                let id = self.register_flow(dest, tx.clone());
                let me = self.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let local = sock.local_addr().unwrap_or(me.local);
                    me.flow_io(id, sock, local, dest, Proto::Tcp, rx).await;
                    me.drop_flow(id);
                });
                tx.send(bytes).await.map_err(|_| SendError::FlowGone(id))
            }
        }
    }
}

/// Frames SIP messages on a stream (RFC 3261 section 18.3): the header ends at the first
/// blank line and `Content-Length` (or `l`) gives the body's length; it is mandatory on
/// streams. Returns the message's whole length once its header is complete (see [`Framer`]).
pub fn sip_frame(buf: &[u8]) -> Result<Option<usize>, String> {
    const MAX_HEAD: usize = 65_535;
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Err("header over 64 KiB".into())
        } else {
            Ok(None)
        };
    };
    let head = &buf[..end];
    let mut length = None;
    for line in head.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = std::str::from_utf8(&line[..colon]).unwrap_or("").trim();
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l") {
            let value = std::str::from_utf8(&line[colon + 1..]).unwrap_or("").trim();
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        }
    }
    let length = length.ok_or("no Content-Length on a stream")?;
    let total = (end + 4)
        .checked_add(length)
        .ok_or_else(|| format!("Content-Length {length} too large"))?;
    Ok(Some(total))
}

#[cfg(test)]
mod tests {
    use super::sip_frame;

    #[test]
    fn frames_by_content_length() {
        let m = b"OPTIONS sip:a@b SIP/2.0\r\nl: 3\r\n\r\nabcREGISTER";
        assert_eq!(sip_frame(m), Ok(Some(m.len() - 8)));
        assert_eq!(sip_frame(&m[..20]), Ok(None));
        // Known from the header on, before the body is all there.
        let partial = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 5\r\n\r\nab";
        assert_eq!(sip_frame(partial), Ok(Some(partial.len() + 3)));
        let huge = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 70000\r\n\r\n";
        assert_eq!(sip_frame(huge), Ok(Some(huge.len() + 70_000)));
        assert!(sip_frame(b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n").is_err());
        assert!(sip_frame(b"X\r\nContent-Length: zz\r\n\r\n").is_err());
    }
}
