//! Finding the event servers from the domain alone: SRV `_eventserver._udp.DOMAIN` and the
//! targets' addresses, asked of one DNS server (no recursion, no system resolver). Every
//! member that joins with only its certificate and the domain uses this, so it lives here and
//! no daemon links another daemon's crate for it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{LowerName, Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Parses a domain as an absolute DNS name (a trailing dot is optional).
pub fn parse_domain(domain: &str) -> Result<Name, String> {
    let trimmed = domain.trim();
    if trimmed.is_empty() || trimmed == "." {
        return Err("must be a domain name such as example.test, not empty or the root".into());
    }
    let mut name = Name::from_str(trimmed).map_err(|e| format!("not a domain name: {e}"))?;
    name.set_fqdn(true);
    if name.is_root() {
        return Err("must not be the root".into());
    }
    // Member host names are NAME.DOMAIN with NAME up to 63 octets: keep room for them.
    if name.len() > 255 - 64 {
        return Err("too long: NAME.DOMAIN must stay within 255 octets".into());
    }
    Ok(name.to_lowercase())
}

/// How long one UDP attempt waits for its answer.
const UDP_WAIT: Duration = Duration::from_millis(700);
/// UDP attempts before giving up.
const UDP_TRIES: usize = 3;
/// How long a TCP exchange may take.
const TCP_WAIT: Duration = Duration::from_secs(3);

/// The event servers published for `domain` by the DNS server at `dns`: the SRV records of
/// `_eventserver._udp.DOMAIN` (ordered by priority), each target resolved to its A and AAAA
/// addresses (from the additional section, or asked for), with the SRV port.
pub async fn resolve_eventservers(
    dns: SocketAddr,
    domain: &str,
) -> anyhow::Result<Vec<SocketAddr>> {
    let domain = parse_domain(domain).map_err(|e| anyhow!("domain {domain:?}: {e}"))?;
    let name = Name::from_labels(["_eventserver".as_bytes(), "_udp".as_bytes()])
        .and_then(|n| n.append_domain(&domain))
        .context("event-server SRV name")?;
    let response = query(dns, &name, RecordType::SRV).await?;
    let mut targets: Vec<(u16, u16, u16, Name)> = response
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.priority, u16::MAX - s.weight, s.port, s.target.clone())),
            _ => None,
        })
        .collect();
    if targets.is_empty() {
        bail!("{dns} publishes no event servers under {name}");
    }
    targets.sort();
    let mut addrs: HashMap<LowerName, Vec<IpAddr>> = HashMap::new();
    for r in response.additionals.iter().chain(response.answers.iter()) {
        let ip = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        addrs.entry(LowerName::new(&r.name)).or_default().push(ip);
    }
    let mut out = Vec::new();
    for (_, _, port, target) in targets {
        let key = LowerName::new(&target);
        if !addrs.contains_key(&key) {
            let mut found = Vec::new();
            for rtype in [RecordType::A, RecordType::AAAA] {
                let Ok(resp) = query(dns, &target, rtype).await else {
                    continue;
                };
                for r in &resp.answers {
                    match &r.data {
                        RData::A(a) => found.push(IpAddr::V4(a.0)),
                        RData::AAAA(a) => found.push(IpAddr::V6(a.0)),
                        _ => {}
                    }
                }
            }
            addrs.insert(key.clone(), found);
        }
        for ip in addrs.get(&key).into_iter().flatten() {
            let sa = SocketAddr::new(*ip, port);
            if !out.contains(&sa) {
                out.push(sa);
            }
        }
    }
    if out.is_empty() {
        bail!("{dns}: the event servers under {name} have no addresses");
    }
    Ok(out)
}

fn request(name: &Name, rtype: RecordType) -> (u16, Vec<u8>) {
    let mut msg = Message::query();
    msg.metadata.recursion_desired = false;
    msg.add_query(Query::query(name.clone(), rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    msg.set_edns(edns);
    let id = msg.metadata.id;
    (id, msg.to_vec().unwrap_or_default())
}

/// Whether `msg` answers our question `id`/`name`/`rtype`.
fn matches(msg: &Message, id: u16, name: &Name, rtype: RecordType) -> bool {
    msg.metadata.id == id
        && msg.metadata.message_type == MessageType::Response
        && msg.queries.len() == 1
        && LowerName::new(msg.queries[0].name()) == LowerName::new(name)
        && msg.queries[0].query_type() == rtype
}

fn checked(
    msg: Message,
    dns: SocketAddr,
    name: &Name,
    rtype: RecordType,
) -> anyhow::Result<Message> {
    match msg.metadata.response_code {
        ResponseCode::NoError => Ok(msg),
        code => bail!("{dns} answered {code} to {name} {rtype}"),
    }
}

async fn query(dns: SocketAddr, name: &Name, rtype: RecordType) -> anyhow::Result<Message> {
    let local: SocketAddr = match dns {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.context("UDP socket")?;
    socket
        .connect(dns)
        .await
        .with_context(|| format!("UDP to {dns}"))?;
    let mut buf = vec![0u8; 4096];
    for _ in 0..UDP_TRIES {
        let (id, bytes) = request(name, rtype);
        socket
            .send(&bytes)
            .await
            .with_context(|| format!("UDP to {dns}"))?;
        let deadline = tokio::time::Instant::now() + UDP_WAIT;
        loop {
            let n = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                Err(_) => break,
                // ICMP unreachable and the like: try again after the wait.
                Ok(Err(_)) => {
                    tokio::time::sleep_until(deadline).await;
                    break;
                }
                Ok(Ok(n)) => n,
            };
            let Ok(msg) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if !matches(&msg, id, name, rtype) {
                continue;
            }
            if msg.metadata.truncation {
                return query_tcp(dns, name, rtype).await;
            }
            return checked(msg, dns, name, rtype);
        }
    }
    bail!("no answer from {dns} to {name} {rtype} over UDP")
}

async fn query_tcp(dns: SocketAddr, name: &Name, rtype: RecordType) -> anyhow::Result<Message> {
    let exchange = async {
        let mut stream = TcpStream::connect(dns).await?;
        let (id, bytes) = request(name, rtype);
        let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&bytes);
        stream.write_all(&out).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut msg).await?;
        anyhow::Ok((id, msg))
    };
    let (id, raw) = tokio::time::timeout(TCP_WAIT, exchange)
        .await
        .map_err(|_| anyhow!("no answer from {dns} to {name} {rtype} over TCP"))?
        .with_context(|| format!("TCP to {dns}"))?;
    let msg = Message::from_vec(&raw).with_context(|| format!("malformed answer from {dns}"))?;
    if !matches(&msg, id, name, rtype) {
        bail!("{dns} answered another question over TCP");
    }
    checked(msg, dns, name, rtype)
}
