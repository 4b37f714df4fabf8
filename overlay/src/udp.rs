//! Reading several UDP datagrams with one system call (`recvmmsg`), for the sockets that see
//! many: the DNS server's and the media relay's.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};

/// Reads up to `bufs.len()` datagrams from the socket `fd` without waiting, one into each
/// buffer (a datagram longer than its buffer is cut), and puts the length and source of each
/// into `got` (cleared first); returns how many. `WouldBlock` when there is none.
///
/// A read that returns fewer than `bufs.len()` datagrams found the socket empty at that
/// moment; every datagram queued after it raises a new readiness event.
pub fn recv_many(
    fd: RawFd,
    bufs: &mut [Vec<u8>],
    got: &mut Vec<(usize, Option<SocketAddr>)>,
) -> io::Result<usize> {
    let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
        .iter_mut()
        .map(|b| [IoSliceMut::new(&mut b[..])])
        .collect();
    // The headers hold raw pointers (not `Send`): made for each call, never kept.
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(iovs.len(), None);
    let results = recvmmsg(
        fd,
        &mut headers,
        iovs.iter_mut(),
        MsgFlags::MSG_DONTWAIT,
        None,
    )
    .map_err(io::Error::from)?;
    got.clear();
    for r in results {
        got.push((r.bytes, r.address.as_ref().and_then(socket_addr)));
    }
    Ok(got.len())
}

/// The address in a socket address storage, if it is an IPv4 or IPv6 one.
pub fn socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    s.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

/// Whether an error says the kernel does not offer the call at all (the caller then reads
/// one datagram at a time).
pub fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == nix::libc::ENOSYS || code == nix::libc::EOPNOTSUPP || code == nix::libc::EINVAL
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn addresses_convert_both_ways() {
        let a: SocketAddr = "127.0.64.9:5300".parse().unwrap();
        let s = SockaddrStorage::from(a);
        assert_eq!(socket_addr(&s), Some(a));
        let b: SocketAddr = "[::1]:53".parse().unwrap();
        assert_eq!(socket_addr(&SockaddrStorage::from(b)), Some(b));
    }

    #[test]
    fn a_short_read_takes_what_is_queued_and_an_empty_socket_would_block() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut bufs = vec![vec![0u8; 16]; 4];
        let mut got = Vec::new();
        let empty = recv_many(rx.as_raw_fd(), &mut bufs, &mut got).unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);
        for d in [&b"one"[..], b"two"] {
            tx.send_to(d, rx.local_addr().unwrap()).unwrap();
        }
        // Loopback delivers at once; wait for both all the same (at most 5 s).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut all = Vec::new();
        while all.len() < 2 && std::time::Instant::now() < deadline {
            if let Ok(n) = recv_many(rx.as_raw_fd(), &mut bufs, &mut got) {
                assert!(n < 4, "a short read");
                all.extend((0..n).map(|i| (bufs[i][..got[i].0].to_vec(), got[i].1)));
            }
        }
        let from = Some(tx.local_addr().unwrap());
        assert_eq!(all, vec![(b"one".to_vec(), from), (b"two".to_vec(), from)]);
    }
}
