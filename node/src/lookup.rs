//! The lookup interface: a line protocol on TCP 9500, compatible with SIP Thor's.
//!
//! Requests, one per line (CRLF, bare LF accepted), answered in order, so a client may pipeline
//! many requests on one connection:
//!
//! | request | answer |
//! |---|---|
//! | `lookup ROLE for KEY` | the owner's IP address, or a line starting with `error` |
//! | `is_online IP as ROLE` | `Yes` or `No` |
//! | `status` | `term T version V manager NAME` |
//! | `replicas ROLE for KEY [N]` | the owner and the next N-1 distinct members' IPs, space-separated (N defaults to 2) |
//! | `members ROLE` | `NAME=IP` pairs of the role's live members, space-separated (empty line if none) |
//! | `owner ROLE for KEY` | `NAME IP` of the owner |
//! | `holds ROLE for KEY` | `Yes` when this node holds a live value for KEY in ROLE's replicated store, else `No` |
//!
//! Text of the request echoed in an error line (a role, an address) has its control
//! characters escaped (`\0`, `\r`, `\u{85}`), so that an answer is always one line.
//!
//! KEY is hashed as given, except that a `sip:`/`sips:` URI is first reduced to its canonical
//! AOR (`user@host`, host lower-cased), so `lookup registrar for sip:alice@Example.test:5060`
//! and `lookup registrar for alice@example.test` agree. Blank lines get no answer.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use onehop_overlay::metrics::{Histogram, Metric, Metrics, FAST_BUCKETS};
use onehop_overlay::ring::{lookup_key, position};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn, Instrument};

use crate::view::View;

/// The longest request line accepted.
pub const MAX_LINE: usize = 4096;

/// What the lookup interface can see of this node's replicated store.
pub type Holds = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// Appends the answer to one request line (without its line end) to `out`, CRLF-terminated.
/// Returns false for a blank line (no answer).
pub fn answer(line: &str, view: &View, out: &mut String) -> bool {
    answer_with(line, view, None, out)
}

/// [`answer`], with this node's store for `holds`.
pub fn answer_with(line: &str, view: &View, holds: Option<&Holds>, out: &mut String) -> bool {
    let line = line.trim();
    if line.is_empty() {
        return false;
    }
    let mut words = line.splitn(2, ' ');
    let verb = words.next().unwrap_or("");
    let rest = words.next().unwrap_or("").trim();
    match verb {
        "lookup" => match role_for_key(rest) {
            Some((role, key)) => match view.rings.get(role) {
                Some(ring) => match ring.owner_at(position(&lookup_key(key))) {
                    Some(m) => {
                        let _ = write!(out, "{}", m.ip);
                    }
                    None => {
                        let _ =
                            write!(out, "error no live member has role {}", role.escape_debug());
                    }
                },
                None => no_role(view, role, out),
            },
            None => out.push_str("error usage: lookup ROLE for KEY"),
        },
        "owner" => match role_for_key(rest) {
            Some((role, key)) => match view
                .rings
                .get(role)
                .and_then(|r| r.owner_at(position(&lookup_key(key))))
            {
                Some(m) => {
                    let _ = write!(out, "{} {}", m.name, m.ip);
                }
                None => no_role(view, role, out),
            },
            None => out.push_str("error usage: owner ROLE for KEY"),
        },
        "replicas" => {
            let (spec, n) = match rest.rsplit_once(' ') {
                Some((head, tail)) if head.contains(" for ") => match tail.parse::<usize>() {
                    Ok(n) if n >= 1 => (head, n),
                    _ => (rest, 2),
                },
                _ => (rest, 2),
            };
            match role_for_key(spec) {
                Some((role, key)) => match view.rings.get(role) {
                    Some(ring) => {
                        let ips: Vec<String> = ring
                            .replicas_at(position(&lookup_key(key)), n)
                            .map(|m| m.ip.to_string())
                            .collect();
                        out.push_str(&ips.join(" "));
                    }
                    None => no_role(view, role, out),
                },
                None => out.push_str("error usage: replicas ROLE for KEY [N]"),
            }
        }
        "holds" => match (role_for_key(rest), holds) {
            (Some((role, key)), Some(h)) => out.push_str(if h(role, &lookup_key(key)) {
                "Yes"
            } else {
                "No"
            }),
            (Some(_), None) => out.push_str("error this node keeps no store"),
            (None, _) => out.push_str("error usage: holds ROLE for KEY"),
        },
        "is_online" => match rest.split_once(" as ") {
            Some((ip, role)) => match ip.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    let online = view
                        .rings
                        .get(role.trim())
                        .map(|r| r.contains_ip(ip))
                        .unwrap_or(false);
                    out.push_str(if online { "Yes" } else { "No" });
                }
                Err(_) => {
                    let _ = write!(out, "error not an IP address: {}", ip.trim().escape_debug());
                }
            },
            None => out.push_str("error usage: is_online IP as ROLE"),
        },
        "status" if rest.is_empty() => match &view.status {
            Some(s) => {
                let _ = write!(
                    out,
                    "term {} version {} manager {}",
                    s.term, s.version, s.manager
                );
            }
            None => out.push_str("error no network status yet"),
        },
        "members" if !rest.is_empty() => {
            if let Some(ring) = view.rings.get(rest) {
                let pairs: Vec<String> = ring
                    .members()
                    .iter()
                    .map(|m| format!("{}={}", m.name, m.ip))
                    .collect();
                out.push_str(&pairs.join(" "));
            }
        }
        _ => {
            let shown: String = line.chars().take(64).collect();
            let _ = write!(
                out,
                "error unknown request {shown:?} (verbs: lookup, is_online, status, replicas, members, owner, holds)"
            );
        }
    }
    out.push_str("\r\n");
    true
}

fn role_for_key(rest: &str) -> Option<(&str, &str)> {
    let (role, key) = rest.split_once(" for ")?;
    let (role, key) = (role.trim(), key.trim());
    if role.is_empty() || key.is_empty() || role.contains(' ') {
        return None;
    }
    Some((role, key))
}

fn no_role(view: &View, role: &str, out: &mut String) {
    if view.status.is_none() {
        out.push_str("error no network status yet");
    } else {
        let _ = write!(out, "error no live member has role {}", role.escape_debug());
    }
}

/// How long a lookup connection may stay silent, and how long a write to it may take, by
/// default: an idle or stalled client gives its slot back (the connections are bounded).
pub const DEFAULT_TIMEOUTS: Timeouts = Timeouts {
    idle: std::time::Duration::from_secs(60),
    write: std::time::Duration::from_secs(10),
};

/// The timeouts of a lookup connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A connection that sends nothing for this long is closed.
    pub idle: std::time::Duration,
    /// A write (answers to a client that stopped reading) that takes longer closes it.
    pub write: std::time::Duration,
}

/// The lookup interface's figures.
#[derive(Debug, Clone)]
pub struct Served {
    /// `lookups_total`: request lines answered.
    pub count: Metric,
    /// `lookup_answer_seconds`: from the read that brought a request line to its answer
    /// written; the lines of one read (pipelined) share its time.
    pub time: Histogram,
}

impl Served {
    /// Registers the figures in `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        Served {
            count: metrics.counter("lookups_total", "Lookup-interface requests answered."),
            time: metrics.histogram(
                "lookup_answer_seconds",
                "Lookup-interface answer time, from the read that brought a request line to \
                 its answer written (the lines of one read share its time).",
                FAST_BUCKETS,
            ),
        }
    }
}

/// Serves the lookup interface on `addr` until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    view: Arc<ArcSwap<View>>,
    max_connections: usize,
    served: Served,
    holds: Option<Holds>,
) -> std::io::Result<()> {
    serve_with(addr, view, max_connections, served, holds, DEFAULT_TIMEOUTS).await
}

/// [`serve`] with the connections' timeouts.
pub async fn serve_with(
    addr: SocketAddr,
    view: Arc<ArcSwap<View>>,
    max_connections: usize,
    served: Served,
    holds: Option<Holds>,
    timeouts: Timeouts,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let limit = Arc::new(Semaphore::new(max_connections));
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(cause = %e, "lookup accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            warn!(%peer, "lookup connection refused: too many connections");
            drop(sock);
            continue;
        };
        let view = view.clone();
        let served = served.clone();
        let holds = holds.clone();
        tokio::spawn(
            async move {
                let _permit = permit;
                if let Err(e) = connection(sock, view, served, holds, timeouts).await {
                    debug!(cause = %e, "lookup connection ended");
                }
            }
            .instrument(tracing::info_span!("lookup", %peer)),
        );
    }
}

async fn connection(
    mut sock: TcpStream,
    view: Arc<ArcSwap<View>>,
    served: Served,
    holds: Option<Holds>,
    timeouts: Timeouts,
) -> std::io::Result<()> {
    let _ = sock.set_nodelay(true);
    let timed_out =
        |what: &str| std::io::Error::new(std::io::ErrorKind::TimedOut, what.to_string());
    // Every write is bounded in time: a client that stops reading loses its connection.
    macro_rules! write_all {
        ($bytes:expr) => {
            tokio::time::timeout(timeouts.write, sock.write_all($bytes))
                .await
                .map_err(|_| timed_out("write timed out"))??
        };
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut filled = 0usize;
    let mut out = String::with_capacity(MAX_ANSWER_BYTES);
    loop {
        if filled == buf.len() {
            // A line longer than the buffer cannot be valid.
            write_all!(b"error line too long\r\n");
            return Ok(());
        }
        let n = tokio::time::timeout(timeouts.idle, sock.read(&mut buf[filled..]))
            .await
            .map_err(|_| timed_out("idle"))??;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let arrived = std::time::Instant::now();
        let snapshot = view.load();
        let mut start = 0;
        loop {
            // Answers go out in pieces of about MAX_ANSWER_BYTES: a read full of pipelined
            // requests with long answers (`members`) never builds one unbounded buffer.
            let (used, answered) =
                answer_lines(&buf[start..filled], &snapshot, holds.as_ref(), &mut out);
            start += used;
            let more = out.len() >= MAX_ANSWER_BYTES;
            if !out.is_empty() {
                write_all!(out.as_bytes());
                out.clear();
                served.count.add(answered as i64);
                served.time.observe_n(arrived.elapsed(), answered as u64);
            }
            if !more {
                break;
            }
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled > MAX_LINE {
            write_all!(b"error line too long\r\n");
            return Ok(());
        }
    }
}

/// The answer bytes [`answer_lines`] gathers before it stops so that they can be written.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Answers the complete request lines (ending in LF) at the front of `buf`, the bytes read
/// from a lookup connection, appending the answers to `out`. Stops at the first incomplete
/// line, or once `out` holds [`MAX_ANSWER_BYTES`] or more (write them out and call again with
/// the rest). Returns the bytes consumed (whole lines only) and the number of answers added.
/// A line over [`MAX_LINE`] bytes or not UTF-8 is answered with an error line.
pub fn answer_lines(
    buf: &[u8],
    view: &View,
    holds: Option<&Holds>,
    out: &mut String,
) -> (usize, usize) {
    let mut start = 0;
    let mut answered = 0;
    while out.len() < MAX_ANSWER_BYTES {
        let Some(nl) = memchr::memchr(b'\n', &buf[start..]) else {
            break;
        };
        let line = &buf[start..start + nl];
        start += nl + 1;
        if line.len() > MAX_LINE {
            out.push_str("error line too long\r\n");
            answered += 1;
            continue;
        }
        match std::str::from_utf8(line) {
            Ok(text) => {
                if answer_with(text, view, holds, out) {
                    answered += 1;
                }
            }
            Err(_) => {
                out.push_str("error request is not UTF-8\r\n");
                answered += 1;
            }
        }
    }
    (start, answered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_idle_connection_gives_its_slot_back() {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let metrics = onehop_overlay::metrics::Metrics::default();
        let served = Served::new(&metrics);
        let timeouts = Timeouts {
            idle: std::time::Duration::from_millis(200),
            ..DEFAULT_TIMEOUTS
        };
        tokio::spawn(serve_with(
            addr,
            Arc::new(ArcSwap::from_pointee(view(3))),
            1,
            served,
            None,
            timeouts,
        ));
        let connect = || async {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                if let Ok(s) = TcpStream::connect(addr).await {
                    return s;
                }
                assert!(tokio::time::Instant::now() < deadline, "never listening");
                tokio::task::yield_now().await;
            }
        };
        // The one slot, taken by a client that asks once and then says nothing.
        let mut idle = BufReader::new(connect().await);
        idle.get_mut().write_all(b"status\r\n").await.unwrap();
        let mut line = String::new();
        idle.read_line(&mut line).await.unwrap();
        assert!(
            line.starts_with("term ") || line.starts_with("error"),
            "{line}"
        );
        // The server closes it once idle (read gives end of stream), well within 5 s.
        line.clear();
        let closed =
            tokio::time::timeout(std::time::Duration::from_secs(5), idle.read_line(&mut line))
                .await
                .expect("closed by the server");
        assert_eq!(closed.unwrap(), 0);
        // The slot is free again: a new client is served.
        let mut next = BufReader::new(connect().await);
        next.get_mut().write_all(b"status\r\n").await.unwrap();
        line.clear();
        tokio::time::timeout(std::time::Duration::from_secs(5), next.read_line(&mut line))
            .await
            .expect("answered")
            .unwrap();
        assert!(!line.is_empty());
    }
    #[tokio::test]
    async fn thousands_of_pipelined_requests_with_long_answers_are_all_answered_in_order() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let metrics = onehop_overlay::metrics::Metrics::default();
        let served = Served::new(&metrics);
        tokio::spawn(serve_with(
            addr,
            Arc::new(ArcSwap::from_pointee(view(250))),
            1,
            served.clone(),
            None,
            DEFAULT_TIMEOUTS,
        ));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut sock = loop {
            if let Ok(s) = TcpStream::connect(addr).await {
                break s;
            }
            assert!(tokio::time::Instant::now() < deadline, "never listening");
            tokio::task::yield_now().await;
        };
        // 3,000 requests in one write (57 KB, one read's worth), each answered with 250
        // members (about 4 KB): over 10 MB of answers for one read.
        let n = 3000;
        let requests = "members registrar\r\n".repeat(n);
        let expected = ask(&view(250), "members registrar");
        assert!(expected.len() > 2000, "{}", expected.len());
        let (mut rd, mut wr) = sock.split();
        let write = async {
            wr.write_all(requests.as_bytes()).await.unwrap();
            wr.write_all(b"status\r\n").await.unwrap();
        };
        let read = async {
            let want = expected.len() * n;
            let mut got = Vec::with_capacity(want + 100);
            let mut chunk = vec![0u8; 1 << 16];
            while !got.ends_with(b"manager1\r\n") {
                let k = rd.read(&mut chunk).await.unwrap();
                assert!(k > 0, "closed after {} bytes", got.len());
                got.extend_from_slice(&chunk[..k]);
            }
            got
        };
        let (_, got) = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            futures::future::join(write, read),
        )
        .await
        .expect("answered within 30 s");
        let text = String::from_utf8(got).unwrap();
        let (answers, last) = text.split_at(expected.len() * n);
        assert_eq!(
            answers,
            expected.repeat(n),
            "every answer whole and in order"
        );
        assert!(last.starts_with("term 3 version 7"), "{last}");
        assert_eq!(served.count.get(), n as i64 + 1);
        assert_eq!(served.time.count(), n as u64 + 1, "every line timed");
    }

    use onehop_overlay::status::{Kind, Member, NetworkStatus, Role};

    fn view(n: usize) -> View {
        let members = (1..=n)
            .map(|i| Member {
                name: format!("node{i}"),
                kind: Kind::Node,
                roles: vec![
                    Role::new("registrar").unwrap(),
                    Role::new("sip_proxy").unwrap(),
                ],
                endpoints: vec![],
                since: 0,
                ip: format!("127.0.1.{i}").parse().unwrap(),
            })
            .map(Arc::new)
            .collect();
        let status = NetworkStatus {
            term: 3,
            version: 7,
            manager: "manager1".into(),
            members,
        };
        View::default()
            .apply(status, 100)
            .map(|v| Arc::try_unwrap(v).unwrap())
            .unwrap()
    }

    fn ask(v: &View, line: &str) -> String {
        let mut out = String::new();
        answer(line, v, &mut out);
        out
    }

    #[test]
    fn the_three_sip_thor_verbs() {
        let v = view(5);
        let ip = ask(&v, "lookup registrar for alice@example.test");
        assert!(ip.starts_with("127.0.1.") && ip.ends_with("\r\n"), "{ip:?}");
        assert_eq!(ask(&v, "is_online 127.0.1.2 as registrar"), "Yes\r\n");
        assert_eq!(ask(&v, "is_online 127.0.1.9 as registrar"), "No\r\n");
        assert_eq!(ask(&v, "is_online 127.0.1.2 as media_relay"), "No\r\n");
        assert_eq!(ask(&v, "status"), "term 3 version 7 manager manager1\r\n");
    }

    #[test]
    fn sip_uris_are_canonicalised_other_keys_are_not() {
        let v = view(5);
        assert_eq!(
            ask(
                &v,
                "lookup registrar for sip:alice@Example.TEST:5060;transport=tcp"
            ),
            ask(&v, "lookup registrar for alice@example.test")
        );
        let owner = |k: &str| ask(&v, &format!("owner registrar for {k}"));
        // Call-IDs are hashed as given; the owners of differently-cased IDs may differ.
        let _ = owner("a84b4c76e66710@pc33.atlanta.com");
        let r = ask(&v, "replicas registrar for bob@example.test 3");
        let ips: Vec<&str> = r.trim_end().split(' ').collect();
        assert_eq!(ips.len(), 3);
        assert_eq!(
            ips[0],
            ask(&v, "lookup registrar for bob@example.test").trim_end()
        );
    }

    #[test]
    fn errors_start_with_error() {
        let v = view(2);
        for bad in [
            "lookup nosuchrole for x",
            "lookup registrar",
            "frobnicate",
            "is_online notanip as registrar",
            "is_online 127.0.0.1",
            "status now",
        ] {
            assert!(ask(&v, bad).starts_with("error"), "{bad}");
        }
        assert!(ask(&View::default(), "status").starts_with("error no network status"));
        assert!(ask(&View::default(), "lookup registrar for x").starts_with("error"));
        let mut out = String::new();
        assert!(!answer("  ", &v, &mut out));
        assert!(out.is_empty());
    }

    /// Found by fuzzing (`lookup_line`): text echoed in an error line kept its control
    /// characters, so a NUL, a bare CR or a NEL from the request (which a client splitting
    /// lines on any line break takes for an end of line) came back inside the answer.
    #[test]
    fn echoed_text_is_escaped() {
        let v = view(2);
        for (line, want) in [
            (
                "is_online 10.0.1\0R as registrar",
                "error not an IP address: 10.0.1\\0R\r\n",
            ),
            (
                "lookup reg\ristrar for x",
                "error no live member has role reg\\ristrar\r\n",
            ),
            (
                "replicas a\u{85}b for x",
                "error no live member has role a\\u{85}b\r\n",
            ),
        ] {
            let got = ask(&v, line);
            assert_eq!(got, want, "{line:?}");
            assert!(!got.trim_end().chars().any(char::is_control), "{got:?}");
        }
        assert_eq!(
            ask(&v, "lookup xcap-server for x"),
            "error no live member has role xcap-server\r\n"
        );
    }

    /// A read full of pipelined `members` requests is answered in pieces of about
    /// MAX_ANSWER_BYTES, in order, none lost. The answers of one 64 KiB read used to make
    /// one buffer: 3,600 answers of 1,785 bytes here, 6.4 MB (more with a bigger farm).
    #[test]
    fn pipelined_long_answers_come_in_bounded_pieces() {
        let v = view(100);
        let one = ask(&v, "members registrar");
        assert_eq!(one.len(), 1785, "{one}");
        let request = b"members registrar\r\n";
        let buf: Vec<u8> = request
            .iter()
            .copied()
            .cycle()
            .take(request.len() * 3600)
            .collect();
        let (mut at, mut answers, mut pieces) = (0, 0, 0);
        let mut out = String::new();
        while at < buf.len() {
            let (used, answered) = answer_lines(&buf[at..], &v, None, &mut out);
            assert!(used > 0);
            assert!(out.len() < MAX_ANSWER_BYTES + one.len(), "{}", out.len());
            assert_eq!(out.matches("\r\n").count(), answered);
            assert!(out.split_terminator("\r\n").all(|l| l == one.trim_end()));
            at += used;
            answers += answered;
            pieces += 1;
            out.clear();
        }
        assert_eq!(answers, 3600);
        assert!(pieces >= 3600 * one.len() / MAX_ANSWER_BYTES, "{pieces}");
        // An incomplete line is left for the next read.
        assert_eq!(
            answer_lines(b"status\r\nmembers reg", &v, None, &mut out),
            (8, 1)
        );
    }
}
