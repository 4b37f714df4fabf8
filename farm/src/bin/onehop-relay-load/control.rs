//! Creating and deleting the relay sessions of the load: onehop's relay asked over the peer
//! port, as a proxy asks it, and rtpengine asked with its ng protocol.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use onehop_node::peer::{PeerAddr, PeerConfig, PeerNet, Service};
use onehop_node::relay::control::{decode, encode, RelayReply, RelayRequest};
use onehop_node::relay::Endpoint;
use onehop_overlay::crl::CrlState;
use onehop_overlay::net::{ConnTable, Timing};
use onehop_overlay::tls::{Credentials, TlsFiles};
use tokio::net::UdpSocket;

use super::bencode;

/// How long one control request may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Where the two parties of one call send their media.
#[derive(Debug, Clone, Copy)]
pub struct Legs {
    /// The relay address the caller sends to.
    pub caller_sends_to: SocketAddr,
    /// The relay address the callee sends to.
    pub callee_sends_to: SocketAddr,
}

/// A relay under load.
pub enum Relay {
    /// onehop's relay, asked as the proxy asks it (`Service::Relay` on the peer port, mutual
    /// TLS with a `node` certificate of the farm's CA).
    Onehop { peer: Arc<PeerNet>, node: PeerAddr },
    /// rtpengine, asked with its ng protocol (bencode over UDP, a cookie per request).
    Rtpengine {
        sock: UdpSocket,
        ng: SocketAddr,
        cookie: AtomicU64,
    },
}

impl Relay {
    /// onehop's relay `node` at `addr` (its peer port), asked with the certificate `tls`
    /// from the local address `local`.
    pub fn onehop(tls: &TlsFiles, local: IpAddr, node: PeerAddr) -> anyhow::Result<Relay> {
        let creds = Credentials::load(tls).context("load the load generator's certificate")?;
        let endpoint = onehop_overlay::net::endpoint(
            SocketAddr::new(local, 0),
            &creds,
            &CrlState::default(),
            Timing::default(),
            None,
        )?;
        let peer = PeerNet::new(endpoint, ConnTable::default(), PeerConfig::default());
        Ok(Relay::Onehop { peer, node })
    }

    /// rtpengine listening for ng requests on `ng`.
    pub async fn rtpengine(local: IpAddr, ng: SocketAddr) -> anyhow::Result<Relay> {
        let sock = UdpSocket::bind(SocketAddr::new(local, 0)).await?;
        Ok(Relay::Rtpengine {
            sock,
            ng,
            cookie: AtomicU64::new(1),
        })
    }

    /// Creates the session of `call_id` between `caller` and `callee` (one audio stream,
    /// each party's RTP address), offered by the caller and answered by the callee.
    pub async fn create(
        &self,
        call_id: &str,
        caller: SocketAddr,
        callee: SocketAddr,
    ) -> anyhow::Result<Legs> {
        match self {
            Relay::Onehop { .. } => {
                let callee_sends_to = self
                    .onehop_call(RelayRequest::Allocate {
                        call_id: call_id.into(),
                        from_tag: "caller".into(),
                        media: vec![Some(endpoint(caller))],
                        source: Some(caller.ip()),
                    })
                    .await?;
                let caller_sends_to = self
                    .onehop_call(RelayRequest::Update {
                        call_id: call_id.into(),
                        from_tag: "caller".into(),
                        response: true,
                        media: vec![Some(endpoint(callee))],
                        source: Some(callee.ip()),
                    })
                    .await?;
                Ok(Legs {
                    caller_sends_to,
                    callee_sends_to,
                })
            }
            Relay::Rtpengine { .. } => {
                let offer = sdp(caller);
                let callee_sends_to = self
                    .ng_media(&[
                        ("command", "offer"),
                        ("call-id", call_id),
                        ("from-tag", "caller"),
                        ("sdp", &offer),
                    ])
                    .await?;
                let answer = sdp(callee);
                let caller_sends_to = self
                    .ng_media(&[
                        ("command", "answer"),
                        ("call-id", call_id),
                        ("from-tag", "caller"),
                        ("to-tag", "callee"),
                        ("sdp", &answer),
                    ])
                    .await?;
                Ok(Legs {
                    caller_sends_to,
                    callee_sends_to,
                })
            }
        }
    }

    /// Frees the session of `call_id`.
    pub async fn delete(&self, call_id: &str) -> anyhow::Result<()> {
        match self {
            Relay::Onehop { peer, node } => {
                let req = RelayRequest::Delete {
                    call_id: call_id.into(),
                };
                let answer = peer
                    .call(node, Service::Relay, encode(&req), TIMEOUT)
                    .await?;
                match decode::<RelayReply>(&answer).map_err(|e| anyhow!(e))? {
                    RelayReply::Deleted(true) => Ok(()),
                    other => bail!("onehop relay answered {other:?} to a delete"),
                }
            }
            Relay::Rtpengine { .. } => {
                self.ng(&[
                    ("command", "delete"),
                    ("call-id", call_id),
                    ("from-tag", "caller"),
                ])
                .await?;
                Ok(())
            }
        }
    }

    async fn onehop_call(&self, req: RelayRequest) -> anyhow::Result<SocketAddr> {
        let Relay::Onehop { peer, node } = self else {
            unreachable!("onehop requests go to onehop")
        };
        let answer = peer
            .call(node, Service::Relay, encode(&req), TIMEOUT)
            .await?;
        match decode::<RelayReply>(&answer).map_err(|e| anyhow!(e))? {
            RelayReply::Relayed(addrs) => addrs
                .first()
                .copied()
                .flatten()
                .ok_or_else(|| anyhow!("onehop relay gave no address for the stream")),
            other => bail!("onehop relay answered {other:?}"),
        }
    }

    /// One ng request whose answer carries an SDP body: the address of its first `m=` line.
    async fn ng_media(&self, entries: &[(&str, &str)]) -> anyhow::Result<SocketAddr> {
        let answer = self.ng(entries).await?;
        let body = answer
            .text("sdp")
            .ok_or_else(|| anyhow!("rtpengine answered without SDP"))?;
        media_addr(&body).ok_or_else(|| anyhow!("no c=/m= address in rtpengine's SDP: {body}"))
    }

    /// One ng request: `COOKIE <bencoded dict>`, answered with the same cookie. Retried on
    /// timeout (it is UDP) up to three times.
    async fn ng(&self, entries: &[(&str, &str)]) -> anyhow::Result<bencode::Value> {
        let Relay::Rtpengine { sock, ng, cookie } = self else {
            unreachable!("ng requests go to rtpengine")
        };
        let cookie = format!("c{}", cookie.fetch_add(1, Ordering::Relaxed));
        let mut msg = format!("{cookie} ").into_bytes();
        msg.extend_from_slice(&bencode::dict(entries));
        let mut buf = vec![0u8; 65536];
        for _ in 0..3 {
            sock.send_to(&msg, ng).await?;
            let deadline = tokio::time::Instant::now() + TIMEOUT;
            loop {
                let Ok(r) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await
                else {
                    break;
                };
                let (n, _) = r?;
                let got = &buf[..n];
                let Some(rest) = got.strip_prefix(cookie.as_bytes()) else {
                    continue; // the late answer to an earlier try
                };
                let v = bencode::decode(rest.strip_prefix(b" ").unwrap_or(rest))
                    .map_err(|e| anyhow!("rtpengine's answer: {e}"))?;
                return match v.text("result").as_deref() {
                    Some("ok") => Ok(v),
                    r => bail!(
                        "rtpengine: {} ({})",
                        r.unwrap_or("no result"),
                        v.text("error-reason").unwrap_or_default()
                    ),
                };
            }
        }
        bail!("rtpengine at {ng} did not answer")
    }
}

fn endpoint(rtp: SocketAddr) -> Endpoint {
    Endpoint {
        rtp: Some(rtp),
        rtcp: None,
    }
}

/// An SDP body with one PCMU stream at `media`.
fn sdp(media: SocketAddr) -> String {
    let ip = media.ip();
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
        media.port()
    )
}

/// The address of the first `m=` line of an SDP body: the last `c=` before it (or the
/// session's) and its port.
fn media_addr(body: &str) -> Option<SocketAddr> {
    let mut ip: Option<IpAddr> = None;
    for line in body.lines() {
        if let Some(c) = line.strip_prefix("c=IN IP4 ") {
            ip = c.trim().parse().ok();
        } else if let Some(m) = line.strip_prefix("m=") {
            let port = m.split_whitespace().nth(1)?.parse().ok()?;
            return Some(SocketAddr::new(ip?, port));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_media_address_of_an_sdp_body() {
        let body = "v=0\r\no=- 1 1 IN IP4 127.0.70.2\r\ns=-\r\nc=IN IP4 127.0.71.1\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\na=rtcp:30001\r\n";
        assert_eq!(media_addr(body), Some("127.0.71.1:30000".parse().unwrap()));
        assert_eq!(media_addr("v=0\r\nm=audio 1 RTP/AVP 0\r\n"), None);
        assert_eq!(media_addr("c=IN IP4 127.0.0.1\r\nm=audio x\r\n"), None);
        let ours = sdp("127.0.70.2:4000".parse().unwrap());
        assert_eq!(media_addr(&ours), Some("127.0.70.2:4000".parse().unwrap()));
    }
}
