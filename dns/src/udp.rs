//! UDP serving: one socket per worker, all bound to the same address with `SO_REUSEPORT`
//! (the kernel spreads the clients over them by their address and port), each read and
//! answered in batches: up to [`BATCH`] datagrams taken with one `recvmmsg`, answered, and
//! the responses sent with one `sendmmsg`. Where the kernel refuses either call (`ENOSYS`
//! and the like), that worker falls back to one `recv_from`/`send_to` per datagram.
//!
//! A worker is a tokio task: it waits for the socket to be readable, then drains it a batch
//! at a time without waiting until a read finds it empty. The sockets' receive buffers are
//! the queues (bounded by `SO_RCVBUF`); a worker holds at most one batch.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use onehop_overlay::udp::{recv_many, unsupported};
use rustix::net::{
    addr::SocketAddrArg, sendmmsg, AddressFamily, MMsgHdr, SendAncillaryBuffer, SendFlags,
    SocketFlags, SocketType,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::debug;

use crate::answer::Transport;
use crate::server::DnsHandler;

/// Most datagrams read (and responses sent) with one system call.
pub(crate) const BATCH: usize = 32;
/// Largest request read: a DNS message over UDP is at most 65535 bytes, but no request we
/// answer is near 4096 (longer ones are read cut short and answered FORMERR).
const MAX_REQUEST: usize = 4096;

/// Binds one non-blocking UDP socket on `addr` with `SO_REUSEPORT`, so that more can join it.
pub(crate) fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let fd = rustix::net::socket_with(
        family,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    rustix::net::sockopt::set_socket_reuseport(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    Ok(std::net::UdpSocket::from(fd))
}

/// What one worker holds: the request buffers, their sources, the responses.
struct Batch {
    requests: Vec<Vec<u8>>,
    /// Length and source of each request read.
    received: Vec<(usize, Option<SocketAddr>)>,
    responses: Vec<Vec<u8>>,
    /// Destination of each response, in order (as `sendmmsg` takes it, and as is).
    to: Vec<rustix::net::SocketAddrAny>,
    dest: Vec<SocketAddr>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            requests: (0..BATCH).map(|_| vec![0u8; MAX_REQUEST]).collect(),
            received: Vec::with_capacity(BATCH),
            responses: (0..BATCH).map(|_| Vec::with_capacity(512)).collect(),
            to: Vec::with_capacity(BATCH),
            dest: Vec::with_capacity(BATCH),
        }
    }

    /// Reads up to [`BATCH`] datagrams without waiting.
    fn recv_many(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        recv_many(socket.as_raw_fd(), &mut self.requests, &mut self.received)
    }

    /// Sends `self.responses[..n]` to `self.to[..n]` without waiting; returns how many went.
    fn send_many(&self, socket: &UdpSocket, from: usize) -> io::Result<usize> {
        let n = self.to.len();
        let iovs: Vec<[IoSlice<'_>; 1]> = self.responses[from..n]
            .iter()
            .map(|r| [IoSlice::new(r)])
            .collect();
        let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> =
            (from..n).map(|_| SendAncillaryBuffer::default()).collect();
        let mut msgs: Vec<MMsgHdr<'_>> = iovs
            .iter()
            .zip(controls.iter_mut())
            .zip(&self.to[from..n])
            .map(|((iov, control), to)| MMsgHdr::new_with_addr(to, iov, control))
            .collect();
        Ok(sendmmsg(socket, &mut msgs, SendFlags::DONTWAIT)?)
    }
}

/// Serves `socket` until the task is aborted.
pub(crate) async fn serve(socket: UdpSocket, handler: Arc<DnsHandler>) {
    let mut batch = Batch::new();
    let mut batched_recv = true;
    let mut batched_send = true;
    loop {
        if let Err(e) = socket.readable().await {
            debug!(cause = %e, "UDP socket not readable");
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let read = if batched_recv {
            socket.try_io(Interest::READABLE, || batch.recv_many(&socket))
        } else {
            socket
                .try_recv_from(&mut batch.requests[0])
                .map(|(n, src)| {
                    batch.received.clear();
                    batch.received.push((n, Some(src)));
                    1
                })
        };
        match read {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if batched_recv && unsupported(&e) => {
                debug!(cause = %e, "recvmmsg refused: reading one datagram at a time");
                batched_recv = false;
                continue;
            }
            Err(e) => {
                debug!(cause = %e, "UDP receive failed");
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        }
        // One clock read per batch of datagrams (recvmmsg), its time counted for each answer.
        let arrived = std::time::Instant::now();
        batch.to.clear();
        batch.dest.clear();
        for i in 0..batch.received.len() {
            let (len, src) = batch.received[i];
            let Some(src) = src.filter(|s| s.port() != 0) else {
                continue;
            };
            let slot = batch.to.len();
            let request = &batch.requests[i][..len.min(MAX_REQUEST)];
            if handler.respond_into(request, Transport::Udp, &mut batch.responses[slot]) {
                batch.to.push(src.as_any());
                batch.dest.push(src);
            }
        }
        if batched_send {
            batched_send = send_batched(&socket, &batch).await;
            if batched_send {
                handler
                    .answer_time()
                    .observe_n(arrived.elapsed(), batch.to.len() as u64);
                continue;
            }
            debug!("sendmmsg refused: sending one datagram at a time");
        }
        for (response, to) in batch.responses.iter().zip(&batch.dest) {
            if let Err(e) = socket.send_to(response, *to).await {
                debug!(cause = %e, peer = %to, "UDP send failed");
            }
        }
        handler
            .answer_time()
            .observe_n(arrived.elapsed(), batch.dest.len() as u64);
    }
}

/// Sends the batch's responses with `sendmmsg`, waiting while the socket cannot take more;
/// a response the kernel refuses is dropped (as a failed `send_to` would be). Returns false,
/// having sent nothing, when the kernel does not offer `sendmmsg`.
async fn send_batched(socket: &UdpSocket, batch: &Batch) -> bool {
    let mut sent = 0;
    while sent < batch.to.len() {
        match socket.try_io(Interest::WRITABLE, || batch.send_many(socket, sent)) {
            Ok(n) => sent += n.max(1),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if socket.writable().await.is_err() {
                    return true;
                }
            }
            Err(e) if sent == 0 && e.raw_os_error() == Some(nix::libc::ENOSYS) => return false,
            Err(e) => {
                // The first message of the rest failed: drop it, send the others.
                debug!(cause = %e, "UDP send failed");
                sent += 1;
            }
        }
    }
    true
}
