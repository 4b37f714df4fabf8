//! Probes: legitimate traffic sent while a flood runs, and how much of it was served.
//!
//! | kind | one attempt | succeeds when |
//! |---|---|---|
//! | `sip-udp` | an OPTIONS to the node, retransmitted at 0.5, 1.5 and 3.5 s (RFC 3261 timer E) | a 2xx arrives within 4 s (a 503 or any other final response fails it) |
//! | `sip-tcp` | a new connection and an OPTIONS on it | a 2xx arrives within 4 s |
//! | `dns` | a SOA query of the domain, retried at 1 and 2 s (as a stub resolver does) | a NOERROR answer arrives within 3 s |
//! | `lookup` | a new connection and `lookup registrar for KEY` | an IP address comes back within 2 s |
//! | `quic` | a session with the event server under a good certificate, retried after a refusal with a member's back-off (50 ms doubling) | the server's welcome arrives within 3 s |
//!
//! Attempts start every [`Probe::every`] (UDP attempts overlap; TCP and QUIC attempts run one
//! after the other, so a slow one delays the next).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};

use super::gen::{dns_query, quic_client_config, sip_request};
use super::{Kind, QuicClient};

/// One probe.
#[derive(Debug, Clone)]
pub struct Probe {
    /// What it sends.
    pub kind: Kind,
    /// Where to.
    pub target: SocketAddr,
    /// Its source address (not one of the flood's).
    pub from: IpAddr,
    /// How long it issues attempts.
    pub duration: Duration,
    /// How often an attempt starts.
    pub every: Duration,
    /// The SIP and DNS domain.
    pub domain: String,
    /// For QUIC probes: the farm's CA and a certificate it accepts.
    pub quic: Option<QuicClient>,
}

/// What a probe saw.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ProbeTally {
    /// Attempts made.
    pub attempts: u64,
    /// Attempts answered within their deadline.
    pub ok: u64,
    /// Time to the answer of each successful attempt, in milliseconds.
    #[serde(skip)]
    pub latencies_ms: Vec<f64>,
}

impl ProbeTally {
    /// Answered attempts over all attempts (1 when there were none).
    pub fn success_rate(&self) -> f64 {
        if self.attempts == 0 {
            1.0
        } else {
            self.ok as f64 / self.attempts as f64
        }
    }

    /// The `p`th percentile (0-100) of the successful attempts' latencies in ms.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return 0.0;
        }
        let mut v = self.latencies_ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[i.min(v.len() - 1)]
    }

    fn hit(&mut self, since: Instant) {
        self.ok += 1;
        self.latencies_ms
            .push(since.elapsed().as_secs_f64() * 1000.0);
    }
}

/// Runs a probe to its end (its last attempts finish or time out).
pub async fn probe(p: &Probe) -> Result<ProbeTally, String> {
    match p.kind {
        Kind::SipUdp | Kind::Dns => datagrams(p).await,
        Kind::SipTcp | Kind::Lookup => sequential(p, |p, n| Box::pin(stream_attempt(p, n))).await,
        Kind::Quic => {
            let q = p
                .quic
                .as_ref()
                .ok_or("a QUIC probe needs the CA and a good certificate")?;
            let mut ep = quinn::Endpoint::client(SocketAddr::new(p.from, 0))
                .map_err(|e| format!("bind {}: {e}", p.from))?;
            ep.set_default_client_config(quic_client_config(q)?);
            let ep2 = ep.clone();
            let t = sequential(p, move |p, _| {
                Box::pin(session_attempt(ep2.clone(), p.target))
            })
            .await;
            ep.close(0u32.into(), b"");
            t
        }
    }
}

type Attempt<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>;

/// Attempts one after the other, each starting at its slot or when the one before ended.
async fn sequential<F>(p: &Probe, attempt: F) -> Result<ProbeTally, String>
where
    F: for<'a> Fn(&'a Probe, u64) -> Attempt<'a>,
{
    let mut t = ProbeTally::default();
    let start = tokio::time::Instant::now();
    let end = start + p.duration;
    let mut n = 0u64;
    loop {
        let slot = start + p.every.mul_f64(n as f64);
        if slot >= end {
            break;
        }
        tokio::time::sleep_until(slot).await;
        let began = Instant::now();
        t.attempts += 1;
        if attempt(p, n).await {
            t.hit(began);
        }
        n = n.max((start.elapsed().as_secs_f64() / p.every.as_secs_f64()) as u64) + 1;
    }
    Ok(t)
}

async fn stream_attempt(p: &Probe, n: u64) -> bool {
    let wait = if p.kind == Kind::Lookup {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(4)
    };
    tokio::time::timeout(wait, async {
        let sock = TcpSocket::new_v4().ok()?;
        sock.bind(SocketAddr::new(p.from, 0)).ok()?;
        let s = sock.connect(p.target).await.ok()?;
        let from = s.local_addr().ok()?;
        let mut s = tokio::io::BufReader::new(s);
        if p.kind == Kind::Lookup {
            let q = format!("lookup registrar for probe{n}@{}\r\n", p.domain);
            s.get_mut().write_all(q.as_bytes()).await.ok()?;
            let mut line = String::new();
            s.read_line(&mut line).await.ok()?;
            return line.trim().parse::<IpAddr>().ok().map(|_| ());
        }
        let id = format!("probe{n}x{}", std::process::id());
        let m = sip_request("OPTIONS", p.target, from, "TCP", &p.domain, "x", &id);
        s.get_mut().write_all(m.as_bytes()).await.ok()?;
        let want = format!("{id}@flood");
        let mut status = None;
        loop {
            let mut line = String::new();
            if s.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            if line.starts_with("SIP/2.0 ") {
                status = line.split(' ').nth(1).map(str::to_string);
            }
            if line.contains(&want) {
                // OPTIONS gets no provisional response: this is the final one.
                return status.filter(|c| c.starts_with('2')).map(|_| ());
            }
        }
    })
    .await
    .ok()
    .flatten()
    .is_some()
}

async fn session_attempt(ep: quinn::Endpoint, target: SocketAddr) -> bool {
    use onehop_overlay::wire::{decode_body, encode_frame, read_frame, ClientMsg, ServerMsg};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut backoff = Duration::from_millis(50);
    loop {
        let once = async {
            let conn = ep
                .connect(target, &target.ip().to_string())
                .ok()?
                .await
                .ok()?;
            let r = async {
                let (mut send, mut recv) = conn.open_bi().await.ok()?;
                send.write_all(&encode_frame(&ClientMsg::Subscribe(Vec::new())))
                    .await
                    .ok()?;
                let f = read_frame(&mut recv, 1 << 20).await.ok()??;
                matches!(decode_body::<ServerMsg>(&f), Ok(ServerMsg::Welcome { .. })).then_some(())
            }
            .await;
            conn.close(0u32.into(), b"probe done");
            r
        };
        match tokio::time::timeout_at(deadline, once).await {
            Ok(Some(())) => return true,
            Ok(None) if tokio::time::Instant::now() + backoff < deadline => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            _ => return false,
        }
    }
}

struct Pending {
    first: Instant,
    next: Instant,
    interval: Duration,
    bytes: Vec<u8>,
}

/// UDP probes: overlapping attempts with their retransmissions, answers matched by Call-ID
/// (SIP) or query id (DNS).
async fn datagrams(p: &Probe) -> Result<ProbeTally, String> {
    let sock = UdpSocket::bind(SocketAddr::new(p.from, 0))
        .await
        .map_err(|e| format!("bind {}: {e}", p.from))?;
    let from = sock.local_addr().map_err(|e| e.to_string())?;
    let dns = p.kind == Kind::Dns;
    let (deadline, first_retx) = if dns {
        (Duration::from_secs(3), Duration::from_secs(1))
    } else {
        (Duration::from_secs(4), Duration::from_millis(500))
    };
    let mut t = ProbeTally::default();
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let start = Instant::now();
    let mut n = 0u64;
    let mut buf = vec![0u8; 65_535];
    loop {
        let now = Instant::now();
        // Issue the attempts due.
        while start + p.every.mul_f64(n as f64) <= now && now < start + p.duration {
            let (key, bytes) = if dns {
                let id = (n % 65_536) as u16;
                (id.to_string(), dns_query(id, &p.domain, 6))
            } else {
                let id = format!("probe{n}x{}", std::process::id());
                let m = sip_request("OPTIONS", p.target, from, "UDP", &p.domain, "x", &id);
                (format!("{id}@flood"), m.into_bytes())
            };
            let _ = sock.send_to(&bytes, p.target).await;
            t.attempts += 1;
            pending.insert(
                key,
                Pending {
                    first: now,
                    next: now + first_retx,
                    interval: first_retx,
                    bytes,
                },
            );
            n += 1;
        }
        // Retransmit, give up.
        pending.retain(|_, a| now < a.first + deadline);
        for a in pending.values_mut() {
            if a.next <= now {
                let _ = sock.send_to(&a.bytes, p.target).await;
                a.interval = (a.interval * 2).min(Duration::from_secs(2));
                a.next = now + a.interval;
            }
        }
        let issuing = now < start + p.duration;
        if !issuing && pending.is_empty() {
            break;
        }
        let mut wake = pending
            .values()
            .map(|a| a.next.min(a.first + deadline))
            .min()
            .unwrap_or(now + p.every);
        if issuing {
            wake = wake.min(start + p.every.mul_f64(n as f64));
        }
        let got = tokio::time::timeout_at(wake.into(), sock.recv_from(&mut buf)).await;
        if let Ok(Ok((len, _))) = got {
            let answer = if dns {
                answered_dns(&buf[..len]).map(|k| (k, true))
            } else {
                answered_sip(&buf[..len]).map(|(k, code)| (k, (200..300).contains(&code)))
            };
            if let Some((key, served)) = answer {
                if let Some(a) = pending.remove(&key) {
                    if served {
                        t.hit(a.first);
                    }
                }
            }
        }
    }
    Ok(t)
}

/// The Call-ID and status code of a final SIP response.
fn answered_sip(b: &[u8]) -> Option<(String, u16)> {
    let text = std::str::from_utf8(b).ok()?;
    let mut lines = text.split("\r\n");
    let code: u16 = lines
        .next()?
        .strip_prefix("SIP/2.0 ")?
        .get(..3)?
        .parse()
        .ok()?;
    if code < 200 {
        return None;
    }
    let id = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        let name = name.trim();
        (name.eq_ignore_ascii_case("call-id") || name == "i").then(|| value.trim().to_string())
    })?;
    Some((id, code))
}

/// The id of a NOERROR DNS answer.
fn answered_dns(b: &[u8]) -> Option<String> {
    if b.len() < 12 || b[2] & 0x80 == 0 || b[3] & 0x0f != 0 {
        return None;
    }
    Some(u16::from_be_bytes([b[0], b[1]]).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_matched() {
        assert_eq!(
            answered_sip(b"SIP/2.0 200 OK\r\nVia: x\r\nCall-ID: a1@flood\r\n\r\n"),
            Some(("a1@flood".to_string(), 200))
        );
        assert_eq!(
            answered_sip(b"SIP/2.0 100 Trying\r\nCall-ID: a\r\n\r\n"),
            None
        );
        assert_eq!(
            answered_sip(b"SIP/2.0 503 Busy\r\ni: b@flood\r\n\r\n"),
            Some(("b@flood".to_string(), 503))
        );
        let mut ok = dns_query(7, "example.test", 6);
        ok[2] |= 0x80;
        assert_eq!(answered_dns(&ok).as_deref(), Some("7"));
        ok[3] |= 0x03;
        assert_eq!(
            answered_dns(&ok),
            None,
            "NXDOMAIN is no answer for SOA of the zone"
        );
    }

    #[test]
    fn percentiles_and_rates() {
        let t = ProbeTally {
            attempts: 4,
            ok: 3,
            latencies_ms: vec![3.0, 1.0, 2.0],
        };
        assert_eq!(t.success_rate(), 0.75);
        assert_eq!(t.percentile(50.0), 2.0);
        assert_eq!(t.percentile(100.0), 3.0);
        assert_eq!(ProbeTally::default().success_rate(), 1.0);
    }
}
