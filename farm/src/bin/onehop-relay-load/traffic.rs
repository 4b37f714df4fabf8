//! The media of one load step: RTP-sized packets from every caller and callee through the
//! relay, paced, timestamped, and received on the other side.
//!
//! Every packet is a valid RTP packet (version 2, PCMU, 160 bytes of payload) whose payload
//! starts with a magic, the step, the call, the direction, a sequence number and the send time
//! (nanoseconds of the real-time clock, read just before `sendto`), so the receiver knows the
//! latency of each packet and whether it reached the right party. The receive time is the
//! kernel's (`SO_TIMESTAMPNS`, the same clock, stamped when the datagram reached the
//! generator's socket): the latency is the relay's work and loopback, without the time a
//! datagram then waits for the generator's receiving thread.
//!
//! One sending thread paces all flows round-robin at the step's total rate (each flow gets
//! rate / flows); one receiving thread (a current-thread Tokio runtime, one task per socket)
//! drains the generator's sockets.

use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use tokio::io::Interest;

use super::control::Legs;

/// Bytes of every packet: 12 of RTP header and 160 of payload (20 ms of G.711).
pub const PACKET: usize = 172;
const MAGIC: &[u8; 4] = b"OHRL";

/// Latency histogram: 1 us buckets below this many microseconds...
const FINE_US: u64 = 4096;
/// ...then buckets this wide...
const COARSE_US: u64 = 256;
/// ...up to this many of them (about 1 s); slower packets count in the last.
const COARSE: usize = 4000;

/// The generator's sockets, kept across steps: `caller[i]` and `callee[i]`, and the calls
/// spread over them.
pub struct Sockets {
    /// The callers' sockets.
    pub caller: Vec<UdpSocket>,
    /// The callees' sockets.
    pub callee: Vec<UdpSocket>,
}

impl Sockets {
    /// `n` sockets per side, the callers on `caller_ip`, the callees on `callee_ip`.
    pub fn bind(n: usize, caller_ip: IpAddr, callee_ip: IpAddr) -> anyhow::Result<Sockets> {
        let bind = |ip| -> anyhow::Result<Vec<UdpSocket>> {
            (0..n)
                .map(|_| {
                    let s = UdpSocket::bind(SocketAddr::new(ip, 0))?;
                    onehop_overlay::net::size_udp_buffers(&s, 8 << 20);
                    setsockopt(&s, sockopt::ReceiveTimestampns, &true)?;
                    Ok(s)
                })
                .collect()
        };
        Ok(Sockets {
            caller: bind(caller_ip)?,
            callee: bind(callee_ip)?,
        })
    }

    /// The caller's and the callee's address of call `i`.
    pub fn parties(&self, i: usize) -> anyhow::Result<(SocketAddr, SocketAddr)> {
        let n = self.caller.len();
        Ok((
            self.caller[i % n].local_addr()?,
            self.callee[i % n].local_addr()?,
        ))
    }
}

/// One step's timing and rate.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Packets per second per direction per call.
    pub pps: u32,
    /// Sent first and not counted (latching, caches).
    pub warmup: Duration,
    /// Measured.
    pub measure: Duration,
    /// Waited after the last packet for late ones.
    pub drain: Duration,
}

/// What one step measured (packets sent in the measured window only).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Outcome {
    /// Packets sent in the window.
    pub sent: u64,
    /// Of them, received by the right party.
    pub received: u64,
    /// Received by another party than the one they were sent to.
    pub misrouted: u64,
    /// Sends that failed (a full socket buffer).
    pub send_errors: u64,
    /// Datagrams the kernel dropped at the generator's sockets (a full receive buffer: the
    /// generator, not the relay, fell behind), over the whole step.
    pub load_drops: u64,
    /// Datagrams the kernel dropped at the relay's sockets (its address), over the whole step.
    pub relay_drops: u64,
    /// Seconds the window lasted, as sent.
    pub secs: f64,
    /// Added latency (receive minus send time), microseconds.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
}

struct Flow {
    sock: usize,
    caller: bool,
    to: SocketAddr,
    call: u32,
}

/// Runs one step: the calls `legs` (call `i` between the parties of [`Sockets::parties`]),
/// step number `step`; `clock` maps the step's instants to the time packets carry.
pub fn run(
    socks: &Sockets,
    relay_ip: IpAddr,
    legs: &[Legs],
    step: u32,
    pace: Pace,
    clock: Clock,
    during: impl FnOnce(Instant, Instant),
) -> anyhow::Result<Outcome> {
    let n = socks.caller.len();
    let flows: Vec<Flow> = legs
        .iter()
        .enumerate()
        .flat_map(|(i, l)| {
            [
                Flow {
                    sock: i % n,
                    caller: true,
                    to: l.caller_sends_to,
                    call: i as u32,
                },
                Flow {
                    sock: i % n,
                    caller: false,
                    to: l.callee_sends_to,
                    call: i as u32,
                },
            ]
        })
        .collect();
    let rate = f64::from(pace.pps) * flows.len() as f64;
    let start = Instant::now() + Duration::from_millis(20);
    let from = start + pace.warmup;
    let to = from + pace.measure;
    let (from_ns, to_ns) = (clock.ns(from), clock.ns(to));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let receivers: Vec<(UdpSocket, bool, usize)> = socks
        .caller
        .iter()
        .enumerate()
        .map(|(i, s)| (s, true, i))
        .chain(socks.callee.iter().enumerate().map(|(i, s)| (s, false, i)))
        .map(|(s, caller, i)| Ok((s.try_clone()?, caller, i)))
        .collect::<anyhow::Result<_>>()?;
    let window = Window {
        step,
        from_ns,
        to_ns,
        sockets: n,
    };
    let ips = [
        socks.caller[0].local_addr()?.ip(),
        socks.callee[0].local_addr()?.ip(),
    ];
    let drops_before = (udp_drops(&ips), udp_drops(&[relay_ip]));
    let rx = std::thread::spawn(move || receive(receivers, window, stop_rx));

    let senders: Vec<UdpSocket> = socks
        .caller
        .iter()
        .chain(socks.callee.iter())
        .map(UdpSocket::try_clone)
        .collect::<Result<_, _>>()?;
    let tx = std::thread::spawn(move || send(&senders, n, &flows, rate, step, (start, to), window));
    during(from, to);
    let (sent, send_errors, secs) = tx
        .join()
        .map_err(|_| anyhow::anyhow!("the sending thread panicked"))?;
    std::thread::sleep(pace.drain);
    let _ = stop_tx.send(true);
    let got = rx
        .join()
        .map_err(|_| anyhow::anyhow!("the receiving thread panicked"))??;
    let drops_after = (udp_drops(&ips), udp_drops(&[relay_ip]));
    Ok(Outcome {
        sent,
        received: got.received,
        misrouted: got.misrouted,
        send_errors,
        load_drops: drops_after.0.saturating_sub(drops_before.0),
        relay_drops: drops_after.1.saturating_sub(drops_before.1),
        secs,
        p50_us: got.percentile(0.50),
        p99_us: got.percentile(0.99),
        p999_us: got.percentile(0.999),
        max_us: got.max_ns as f64 / 1000.0,
    })
}

/// Sends every flow round-robin at `rate` packets/s in all from `start` to `end`; returns the
/// packets sent in the measured window `w` (the receiver tests the same send times), the sends
/// that failed in it, and the window's length as sent (seconds).
#[allow(clippy::too_many_arguments)]
fn send(
    socks: &[UdpSocket],
    per_side: usize,
    flows: &[Flow],
    rate: f64,
    step: u32,
    (start, end): (Instant, Instant),
    w: Window,
) -> (u64, u64, f64) {
    let mut pkt = [0u8; PACKET];
    pkt[0] = 0x80; // RTP version 2, PT 0 (PCMU)
    pkt[12..16].copy_from_slice(MAGIC);
    pkt[16..20].copy_from_slice(&step.to_be_bytes());
    let (mut done, mut sent, mut errors) = (0u64, 0u64, 0u64);
    let (mut first, mut last) = (None, 0);
    while Instant::now() < start {
        std::thread::sleep(Duration::from_micros(200));
    }
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let due = (now.duration_since(start).as_secs_f64() * rate) as u64;
        while done < due {
            let f = &flows[(done % flows.len() as u64) as usize];
            let seq = (done / flows.len() as u64) as u32;
            let ssrc = f.call.wrapping_mul(2) + u32::from(!f.caller);
            pkt[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
            pkt[4..8].copy_from_slice(&seq.wrapping_mul(160).to_be_bytes());
            pkt[8..12].copy_from_slice(&ssrc.to_be_bytes());
            pkt[20..24].copy_from_slice(&f.call.to_be_bytes());
            pkt[24] = u8::from(!f.caller);
            pkt[25..29].copy_from_slice(&seq.to_be_bytes());
            let t = real_ns();
            pkt[29..37].copy_from_slice(&t.to_be_bytes());
            let sock = &socks[if f.caller { f.sock } else { per_side + f.sock }];
            let ok = sock.send_to(&pkt, f.to).is_ok();
            done += 1;
            if t >= w.from_ns && t < w.to_ns {
                first.get_or_insert(t);
                last = t;
                if ok {
                    sent += 1;
                } else {
                    errors += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    let secs = first.map_or(0.0, |f| last.saturating_sub(f) as f64 / 1e9);
    (sent, errors, secs)
}

/// The time packets carry: nanoseconds of the real-time clock (the one the kernel stamps
/// received datagrams with), and the step's instants mapped onto it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    at: Instant,
    real: u64,
}

impl Clock {
    /// The mapping as of now.
    pub fn new() -> Clock {
        Clock {
            at: Instant::now(),
            real: real_ns(),
        }
    }

    fn ns(&self, t: Instant) -> u64 {
        self.real + t.saturating_duration_since(self.at).as_nanos() as u64
    }
}

/// Nanoseconds of the real-time clock.
fn real_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One datagram and the time the kernel received it (`SO_TIMESTAMPNS`; now, when it gave
/// none).
fn recv_stamped(s: &tokio::net::UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, u64)> {
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        s.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(std::io::Error::from)?;
    let at = msg.cmsgs().ok().and_then(kernel_stamp);
    Ok((msg.bytes, at.unwrap_or_else(real_ns)))
}

/// The kernel's receive time (`SO_TIMESTAMPNS`) among a datagram's control messages, in
/// nanoseconds of the real-time clock.
fn kernel_stamp(cmsgs: impl Iterator<Item = ControlMessageOwned>) -> Option<u64> {
    cmsgs
        .filter_map(|c| match c {
            ControlMessageOwned::ScmTimestampns(ts) => {
                Some(ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64)
            }
            _ => None,
        })
        .last()
}

/// Datagrams read with one system call: under load a socket of the generator can hold several
/// when its receiving thread wakes, and one system call each was its cost per packet.
const RECV_BATCH: usize = 32;

/// Buffers for reading up to [`RECV_BATCH`] datagrams at once, with their kernel receive
/// times.
struct StampedBatch {
    bufs: Vec<Vec<u8>>,
    /// Length and receive time of each datagram of the last read.
    got: Vec<(usize, u64)>,
    /// The system refused `recvmmsg`: one datagram a read.
    one_at_a_time: bool,
}

impl StampedBatch {
    fn new() -> StampedBatch {
        StampedBatch {
            bufs: vec![vec![0u8; 2048]; RECV_BATCH],
            got: Vec::with_capacity(RECV_BATCH),
            one_at_a_time: false,
        }
    }

    /// Reads what is queued on `s`, up to [`RECV_BATCH`] datagrams, without waiting
    /// (`WouldBlock` when there is none); returns how many.
    fn recv(&mut self, s: &tokio::net::UdpSocket) -> std::io::Result<usize> {
        use nix::sys::socket::{recvmmsg, MultiHeaders, SockaddrStorage};
        self.got.clear();
        if !self.one_at_a_time {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = self
                .bufs
                .iter_mut()
                .map(|b| [IoSliceMut::new(&mut b[..])])
                .collect();
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(
                iovs.len(),
                Some(nix::cmsg_space!(nix::sys::time::TimeSpec)),
            );
            match recvmmsg(
                s.as_raw_fd(),
                &mut headers,
                iovs.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                Ok(results) => {
                    for r in results {
                        let at = r.cmsgs().ok().and_then(kernel_stamp);
                        self.got.push((r.bytes, at.unwrap_or_else(real_ns)));
                    }
                    return Ok(self.got.len());
                }
                Err(e) => {
                    let e = std::io::Error::from(e);
                    if !onehop_overlay::udp::unsupported(&e) {
                        return Err(e);
                    }
                    self.one_at_a_time = true;
                }
            }
        }
        let (n, at) = recv_stamped(s, &mut self.bufs[0])?;
        self.got.push((n, at));
        Ok(1)
    }
}

#[derive(Clone, Copy)]
struct Window {
    step: u32,
    from_ns: u64,
    to_ns: u64,
    sockets: usize,
}

#[derive(Default)]
struct Got {
    received: u64,
    misrouted: u64,
    max_ns: u64,
    hist: Vec<u64>,
}

impl Got {
    fn record(&mut self, ns: u64) {
        if self.hist.is_empty() {
            self.hist = vec![0; FINE_US as usize + COARSE];
        }
        self.max_ns = self.max_ns.max(ns);
        let us = ns / 1000;
        let i = if us < FINE_US {
            us as usize
        } else {
            FINE_US as usize + (((us - FINE_US) / COARSE_US) as usize).min(COARSE - 1)
        };
        self.hist[i] += 1;
    }

    fn merge(&mut self, o: Got) {
        self.received += o.received;
        self.misrouted += o.misrouted;
        self.max_ns = self.max_ns.max(o.max_ns);
        if self.hist.is_empty() {
            self.hist = o.hist;
        } else {
            for (a, b) in self.hist.iter_mut().zip(o.hist) {
                *a += b;
            }
        }
    }

    /// The `q` quantile in microseconds (the bucket's lower edge).
    fn percentile(&self, q: f64) -> f64 {
        let total: u64 = self.hist.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.hist.iter().enumerate() {
            seen += c;
            if seen >= want {
                let i = i as u64;
                return if i < FINE_US {
                    i as f64
                } else {
                    (FINE_US + (i - FINE_US) * COARSE_US) as f64
                };
            }
        }
        self.max_ns as f64 / 1000.0
    }
}

fn receive(
    socks: Vec<(UdpSocket, bool, usize)>,
    w: Window,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Got> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for (s, caller, i) in socks {
            s.set_nonblocking(true)?;
            let s = tokio::net::UdpSocket::from_std(s)?;
            let mut stop = stop.clone();
            tasks.spawn(async move {
                let mut got = Got::default();
                let mut batch = StampedBatch::new();
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        r = s.readable() => if r.is_err() { break },
                    }
                    while s.try_io(Interest::READABLE, || batch.recv(&s)).is_ok() {
                        for (k, &(n, at)) in batch.got.iter().enumerate() {
                            on_packet(&batch.bufs[k][..n], at, caller, i, w, &mut got);
                        }
                    }
                }
                got
            });
        }
        let mut all = Got::default();
        while let Some(g) = tasks.join_next().await {
            all.merge(g?);
        }
        Ok(all)
    })
}

/// Accounts for one packet received at `now` on the socket `i` of the caller (or callee).
fn on_packet(p: &[u8], now: u64, at_caller: bool, i: usize, w: Window, got: &mut Got) {
    if p.len() < 37 || &p[12..16] != MAGIC {
        return;
    }
    let step = u32::from_be_bytes(p[16..20].try_into().expect("4 bytes"));
    if step != w.step {
        return;
    }
    let call = u32::from_be_bytes(p[20..24].try_into().expect("4 bytes")) as usize;
    let from_caller = p[24] == 0;
    let sent = u64::from_be_bytes(p[29..37].try_into().expect("8 bytes"));
    if sent < w.from_ns || sent >= w.to_ns {
        return;
    }
    if from_caller == at_caller || call % w.sockets != i {
        got.misrouted += 1;
        return;
    }
    got.received += 1;
    got.record(now.saturating_sub(sent));
}

/// Datagrams dropped so far at the UDP sockets (IPv4) bound to any of `ips`, from
/// `/proc/net/udp` (0 where it cannot be read).
fn udp_drops(ips: &[IpAddr]) -> u64 {
    let Ok(table) = std::fs::read_to_string("/proc/net/udp") else {
        return 0;
    };
    let wanted: Vec<String> = ips
        .iter()
        .filter_map(|ip| match ip {
            // The kernel prints the address as a u32 in host byte order (little-endian here).
            IpAddr::V4(v4) => Some(format!("{:08X}", u32::from_le_bytes(v4.octets()))),
            IpAddr::V6(_) => None,
        })
        .collect();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let ip = f.get(1)?.split(':').next()?;
            wanted
                .iter()
                .any(|w| w == ip)
                .then(|| f.last()?.parse::<u64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_the_latency_histogram() {
        let mut g = Got::default();
        assert_eq!(g.percentile(0.99), 0.0, "no packet, no latency");
        // 98 packets at 10 us, one at 900 us, one at 5 ms (coarse buckets above 4096 us).
        for _ in 0..98 {
            g.record(10_400);
        }
        g.record(900_000);
        g.record(5_000_000);
        assert_eq!(g.percentile(0.50), 10.0);
        assert_eq!(g.percentile(0.98), 10.0);
        assert_eq!(g.percentile(0.99), 900.0);
        assert_eq!(g.percentile(1.0), 4864.0, "the lower edge of 5 ms's bucket");
        assert_eq!(g.max_ns, 5_000_000);
        let mut other = Got::default();
        other.record(2_000_000_000); // past the last bucket: counted in it
        g.merge(other);
        assert_eq!(g.hist.iter().sum::<u64>(), 101);
        assert_eq!(g.max_ns, 2_000_000_000);
    }

    #[test]
    fn packets_count_only_in_their_step_window_and_at_the_right_party() {
        let w = Window {
            step: 3,
            from_ns: 1_000,
            to_ns: 2_000,
            sockets: 4,
        };
        let packet = |step: u32, call: u32, from_callee: bool, sent: u64| {
            let mut p = [0u8; PACKET];
            p[12..16].copy_from_slice(MAGIC);
            p[16..20].copy_from_slice(&step.to_be_bytes());
            p[20..24].copy_from_slice(&call.to_be_bytes());
            p[24] = u8::from(from_callee);
            p[29..37].copy_from_slice(&sent.to_be_bytes());
            p
        };
        let mut g = Got::default();
        // Call 5 is on socket 1 of each side; the caller's packet arrives at the callee's.
        on_packet(&packet(3, 5, false, 1_500), 1_600, false, 1, w, &mut g);
        on_packet(&packet(3, 5, true, 1_500), 1_700, true, 1, w, &mut g);
        assert_eq!((g.received, g.misrouted), (2, 0));
        // At the wrong side, or the wrong socket: misrouted.
        on_packet(&packet(3, 5, false, 1_500), 1_600, true, 1, w, &mut g);
        on_packet(&packet(3, 5, false, 1_500), 1_600, false, 2, w, &mut g);
        assert_eq!((g.received, g.misrouted), (2, 2));
        // Another step, outside the window, truncated or not ours: not counted at all.
        on_packet(&packet(2, 5, false, 1_500), 1_600, false, 1, w, &mut g);
        on_packet(&packet(3, 5, false, 999), 1_600, false, 1, w, &mut g);
        on_packet(&packet(3, 5, false, 2_000), 2_100, false, 1, w, &mut g);
        on_packet(
            &packet(3, 5, false, 1_500)[..30],
            1_600,
            false,
            1,
            w,
            &mut g,
        );
        on_packet(&[0u8; PACKET], 1_600, false, 1, w, &mut g);
        assert_eq!((g.received, g.misrouted), (2, 2));
    }
}
