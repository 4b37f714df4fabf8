//! The flood generators: what each kind sends and how ([`super::Flood`]).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use super::{Counters, Flood, Kind, Pacer};

/// Sources one UDP sending thread serves; a flood uses at most 4 threads.
const SOURCES_PER_THREAD: usize = 64;

/// A SIP request of `method` from `from` with Call-ID `id`: a REGISTER names user `user` in
/// its To, an INVITE calls `user`. `proto` is `UDP` or `TCP`.
pub fn sip_request(
    method: &str,
    target: SocketAddr,
    from: SocketAddr,
    proto: &str,
    domain: &str,
    user: &str,
    id: &str,
) -> String {
    let (uri, to) = match method {
        "REGISTER" => (format!("sip:{domain}"), format!("sip:{user}@{domain}")),
        "INVITE" => (
            format!("sip:{user}@{domain}"),
            format!("sip:{user}@{domain}"),
        ),
        _ => (
            format!("sip:{}", target.ip()),
            format!("sip:{}", target.ip()),
        ),
    };
    format!(
        "{method} {uri} SIP/2.0\r\n\
         Via: SIP/2.0/{proto} {from};branch=z9hG4bK{id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:flood@{domain}>;tag=f{id}\r\n\
         To: <{to}>\r\n\
         Call-ID: {id}@flood\r\n\
         CSeq: 1 {method}\r\n\
         Contact: <sip:flood@{from}>\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// A DNS query (RD set) for `name` of record type `qtype`, with `id`.
pub fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        let l = &label.as_bytes()[..label.len().min(63)];
        q.push(l.len() as u8);
        q.extend_from_slice(l);
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

fn garbage(rng: &mut impl Rng, min: usize, max: usize) -> Vec<u8> {
    let n = rng.gen_range(min..=max);
    (0..n).map(|_| rng.gen()).collect()
}

/// The `n`th datagram of a SIP flood from `from`.
fn sip_datagram(n: u64, rng: &mut impl Rng, f: &Flood, from: SocketAddr) -> Vec<u8> {
    let id = format!("{n:x}{:08x}", rng.gen::<u32>());
    let user = format!("u{}", n % 5000);
    let msg = |m: &str| sip_request(m, f.target, from, "UDP", &f.domain, &user, &id).into_bytes();
    match n % 8 {
        0 | 4 => garbage(rng, 40, 1200),
        1 | 5 => msg("OPTIONS"),
        2 | 6 => msg("REGISTER"),
        3 => msg("INVITE"),
        _ => {
            // A request cut short.
            let mut m = msg("REGISTER");
            m.truncate(m.len() / 2);
            m
        }
    }
}

/// The `n`th query of a DNS flood.
fn dns_datagram(n: u64, rng: &mut impl Rng, f: &Flood) -> Vec<u8> {
    let id: u16 = rng.gen();
    let d = &f.domain;
    match n % 6 {
        0 => dns_query(id, &format!("x{:08x}.{d}", rng.gen::<u32>()), 1),
        1 => dns_query(id, &format!("_sip._udp.{d}"), 33),
        2 => dns_query(id, d, 35),
        3 => dns_query(id, &format!("r{:06x}.elsewhere.test", rng.gen::<u32>()), 1),
        4 => garbage(rng, 1, 600),
        _ => {
            let mut q = dns_query(id, &format!("node{}.{d}", n % 7), 1);
            q.truncate(q.len() - 3);
            q
        }
    }
}

/// UDP floods (SIP and DNS): blocking sending threads, each over its share of the sources.
pub(crate) async fn datagrams(f: &Flood, counters: Arc<Counters>) -> Result<(), String> {
    let mut sockets = Vec::new();
    for ip in &f.sources {
        let s = UdpSocket::bind(SocketAddr::new(*ip, 0)).map_err(|e| format!("bind {ip}: {e}"))?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        sockets.push(s);
    }
    let threads = sockets.len().div_ceil(SOURCES_PER_THREAD).clamp(1, 4);
    let mut shares: Vec<Vec<UdpSocket>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, s) in sockets.into_iter().enumerate() {
        shares[i % threads].push(s);
    }
    let pacer = Arc::new(Pacer::new(f.rate));
    let deadline = Instant::now() + f.duration;
    let mut handles = Vec::new();
    for (t, share) in shares.into_iter().enumerate() {
        let f = f.clone();
        let counters = counters.clone();
        let pacer = pacer.clone();
        handles.push(tokio::task::spawn_blocking(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64 + 1);
            let froms: Vec<SocketAddr> = share
                .iter()
                .map(|s| s.local_addr().expect("bound"))
                .collect();
            let mut n = t as u64;
            let mut buf = [0u8; 2048];
            while Instant::now() < deadline {
                if let Some(at) = pacer.slot() {
                    let now = Instant::now();
                    if at > now {
                        std::thread::sleep(at - now);
                    }
                }
                let i = (n / threads as u64) as usize % share.len();
                let bytes = match f.kind {
                    Kind::Dns => dns_datagram(n, &mut rng, &f),
                    _ => sip_datagram(n, &mut rng, &f, froms[i]),
                };
                match share[i].send_to(&bytes, f.target) {
                    Ok(len) => {
                        Counters::add(&counters.sent, 1);
                        Counters::add(&counters.bytes, len as u64);
                    }
                    Err(_) => Counters::add(&counters.errors, 1),
                }
                // Drain what came back so the sockets' buffers never hold us up.
                if n.is_multiple_of(64) {
                    for s in &share {
                        while s.recv_from(&mut buf).is_ok() {}
                    }
                }
                n += threads as u64;
            }
        }));
    }
    for h in handles {
        h.await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// TCP floods (SIP and lookup): `concurrency` tasks, each connecting again and again from
/// its source address and doing one of the kind's behaviours.
pub(crate) async fn streams(f: &Flood, counters: Arc<Counters>) -> Result<(), String> {
    let pacer = Arc::new(Pacer::new(f.rate));
    let deadline = tokio::time::Instant::now() + f.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..f.concurrency.max(1) {
        let f = f.clone();
        let counters = counters.clone();
        let pacer = pacer.clone();
        tasks.spawn(async move {
            let ip = f.sources[t % f.sources.len()];
            let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + t as u64);
            let mut n = t as u64;
            while tokio::time::Instant::now() < deadline {
                if let Some(at) = pacer.slot() {
                    tokio::time::sleep_until(at.into()).await;
                }
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let one = tokio::time::timeout(left, stream_once(&f, ip, n, &mut rng, &counters));
                let _ = one.await;
                n += f.concurrency as u64;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn stream_once(
    f: &Flood,
    ip: IpAddr,
    n: u64,
    rng: &mut rand::rngs::StdRng,
    c: &Counters,
) -> std::io::Result<()> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(ip, 0))?;
    let mut s = match tokio::time::timeout(Duration::from_secs(2), sock.connect(f.target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            Counters::add(&c.refused, 1);
            return Err(e);
        }
        Err(_) => {
            Counters::add(&c.errors, 1);
            return Ok(());
        }
    };
    Counters::add(&c.connected, 1);
    let from = s.local_addr()?;
    let send = |bytes: &[u8], count: u64| {
        Counters::add(&c.sent, count);
        Counters::add(&c.bytes, bytes.len() as u64);
        bytes.to_vec()
    };
    let mut buf = vec![0u8; 16 * 1024];
    match (f.kind, n % 4) {
        (Kind::SipTcp, 0) => {
            // Twenty requests, answers never read.
            let mut all = String::new();
            for k in 0..20 {
                let id = format!("{n:x}-{k}-{:x}", rng.gen::<u32>());
                all.push_str(&sip_request(
                    "OPTIONS", f.target, from, "TCP", &f.domain, "x", &id,
                ));
            }
            s.write_all(&send(all.as_bytes(), 20)).await?;
        }
        (Kind::SipTcp, 1) => {
            s.write_all(&send(&garbage(rng, 512, 8192), 1)).await?;
            let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
        }
        (Kind::SipTcp, 2) => {
            let id = format!("{n:x}-{:x}", rng.gen::<u32>());
            let m = sip_request("OPTIONS", f.target, from, "TCP", &f.domain, "x", &id);
            s.write_all(&send(m.as_bytes(), 1)).await?;
            let _ = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await;
        }
        (Kind::SipTcp, _) => {
            // Half a header, then nothing for a second (a slow client holding a slot).
            s.write_all(&send(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP ", 1))
                .await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        (_, 0) | (_, 2) => {
            let mut all = String::new();
            for k in 0..100 {
                all.push_str(&format!(
                    "lookup registrar for f{:x}{k}@{}\r\n",
                    rng.gen::<u32>(),
                    f.domain
                ));
            }
            s.write_all(&send(all.as_bytes(), 100)).await?;
            if n % 4 == 2 {
                let _ = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await;
            }
        }
        (_, 1) => {
            let mut g = garbage(rng, 256, 4096);
            g.retain(|b| *b != b'\n');
            g.extend(std::iter::repeat_n(b'x', 70_000));
            s.write_all(&send(&g, 1)).await?;
            let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
        }
        _ => {
            s.write_all(&send(b"lookup registrar fo", 1)).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Ok(())
}

/// A QUIC client configuration presenting `q.cert` (or no certificate) and checking the
/// server against `q.ca`.
pub fn quic_client_config(q: &super::QuicClient) -> Result<quinn::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&q.ca).map_err(|e| format!("{}: {e}", q.ca.display()))?)
        .map_err(|e| e.to_string())?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut tls = match &q.cert {
        Some((cert, key)) => {
            let c = CertificateDer::from_pem_file(cert)
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            let k =
                PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(vec![c], k)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![onehop_overlay::wire::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(2)).expect("in range"),
    ));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// QUIC handshake storms: one client endpoint per source, `concurrency` handshakes in
/// flight; each handshake is followed by one stream write, which is where a client learns
/// that the server refused its certificate.
pub(crate) async fn handshakes(f: &Flood, counters: Arc<Counters>) -> Result<(), String> {
    let q = f
        .quic
        .as_ref()
        .ok_or("a QUIC flood needs the CA (and the certificate to present)")?;
    let cfg = quic_client_config(q)?;
    let mut endpoints = Vec::new();
    for ip in &f.sources {
        let mut ep = quinn::Endpoint::client(SocketAddr::new(*ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
        ep.set_default_client_config(cfg.clone());
        endpoints.push(ep);
    }
    let pacer = Arc::new(Pacer::new(f.rate));
    let deadline = tokio::time::Instant::now() + f.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..f.concurrency.max(1) {
        let ep = endpoints[t % endpoints.len()].clone();
        let counters = counters.clone();
        let pacer = pacer.clone();
        let target = f.target;
        tasks.spawn(async move {
            while tokio::time::Instant::now() < deadline {
                if let Some(at) = pacer.slot() {
                    tokio::time::sleep_until(at.into()).await;
                }
                Counters::add(&counters.sent, 1);
                let outcome = tokio::time::timeout(Duration::from_secs(3), async {
                    let conn = ep
                        .connect(target, &target.ip().to_string())
                        .map_err(|e| e.to_string())?
                        .await
                        .map_err(|e| e.to_string())?;
                    Counters::add(&counters.connected, 1);
                    // The server checks our certificate after its own flight: a refusal
                    // shows on the first stream operation.
                    let r = async {
                        let (mut send, mut recv) = conn.open_bi().await?;
                        send.write_all(b"\0\0\0\x01\0").await?;
                        let mut b = [0u8; 8];
                        recv.read(&mut b).await?;
                        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
                    }
                    .await;
                    conn.close(0u32.into(), b"");
                    r.map_err(|e| e.to_string())
                })
                .await;
                match outcome {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if e.contains("refused") => Counters::add(&counters.refused, 1),
                    Ok(Err(_)) => Counters::add(&counters.failed, 1),
                    Err(_) => Counters::add(&counters.errors, 1),
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    for ep in endpoints {
        ep.close(0u32.into(), b"");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_requests_parse() {
        let t: SocketAddr = "127.0.0.5:5060".parse().unwrap();
        let f: SocketAddr = "127.77.0.1:4000".parse().unwrap();
        for m in ["OPTIONS", "REGISTER", "INVITE"] {
            let text = sip_request(m, t, f, "UDP", "example.test", "u1", "abc");
            let parsed = onehop_sip::parse(text.as_bytes());
            assert!(parsed.is_ok(), "{m}: {parsed:?}");
        }
    }

    #[test]
    fn dns_queries_are_well_formed() {
        let q = dns_query(0x1234, "_sip._udp.example.test", 33);
        assert_eq!(&q[..2], &[0x12, 0x34]);
        assert_eq!(&q[4..6], &[0, 1], "one question");
        assert_eq!(q[12], 4);
        assert_eq!(&q[13..17], b"_sip");
        assert_eq!(&q[q.len() - 4..], &[0, 33, 0, 1]);
    }
}
