//! Control of relays by proxies: the messages on the peer port ([`Service::Relay`]), the
//! relay's handler, and the proxy's client, which picks the relay of a call on the ring.
//!
//! The relay of a call is the owner of its Call-ID on the `media_relay` ring, so every proxy
//! of the farm picks the same one with no shared state. When it refuses (draining, full) or
//! cannot be reached, the next distinct member clockwise is tried, up to [`RELAY_TRIES`]
//! members; updates and deletes walk the same list until one holds the session. A proxy whose
//! node is the relay calls its engine directly.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use onehop_overlay::identity::Identity;
use onehop_overlay::ring::position;
use onehop_overlay::status::Role;
use serde::{Deserialize, Deserializer, Serialize};
use tokio::sync::watch;
use tracing::debug;

use super::engine::RelayEngine;
use super::sdp::Endpoint;
use crate::peer::{PeerAddr, PeerHandler, PeerNet, Service};
use crate::proxy::BoxFut;
use crate::view::View;

/// Members of the `media_relay` ring tried for one call: the owner and the next two.
pub const RELAY_TRIES: usize = 3;

/// How long one relay may take to answer.
pub const RELAY_TIMEOUT: Duration = Duration::from_millis(500);

/// A request to a relay (bincode). Variants are only appended, and so are fields: a field
/// appended to a variant is read leniently (`appended`), so that a request from a node that
/// predates it (the message ends before it) still decodes, with the field absent; a node
/// that predates it reads the fields it knows and ignores the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayRequest {
    /// Create (or find) the session of a call from its initial INVITE and apply the caller's
    /// streams (none when the INVITE has no SDP).
    Allocate {
        /// The call.
        call_id: String,
        /// The caller's From tag.
        from_tag: String,
        /// Per `m=` line, the caller's address, `None` for a stream not relayed.
        media: Vec<Option<Endpoint>>,
        /// The IP address the INVITE came from (the caller, or its NAT), when known: the
        /// caller may send media from there too.
        #[serde(default, deserialize_with = "appended")]
        source: Option<IpAddr>,
    },
    /// Apply an SDP body to the session of a call, if this relay holds it.
    Update {
        /// The call.
        call_id: String,
        /// The From tag of the message (of the request, for a response).
        from_tag: String,
        /// Whether the body came in a response.
        response: bool,
        /// Per `m=` line, the writer's address, `None` for a stream not relayed.
        media: Vec<Option<Endpoint>>,
        /// The IP address the message came from (its writer, or the writer's NAT), when
        /// known: the writer may send media from there too.
        #[serde(default, deserialize_with = "appended")]
        source: Option<IpAddr>,
    },
    /// Free the session of a call.
    Delete {
        /// The call.
        call_id: String,
    },
}

/// A relay's answer. Variants are only appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayReply {
    /// Per `m=` line, the relay's address the other side is to send to.
    Relayed(Vec<Option<SocketAddr>>),
    /// Refused (the reason: `draining`, `full`, `no_ports`, `too_many_streams`).
    Refused(String),
    /// This relay holds no session for the call.
    NoSession,
    /// Deleted (or there was nothing to delete: `false`).
    Deleted(bool),
}

/// Reads a field appended to a message: `None` when the message ends before it (bincode
/// reads a struct as a fixed sequence of fields, so `#[serde(default)]` alone does not cover
/// a message from an older node), or when it cannot be read.
fn appended<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d).unwrap_or(None))
}

/// Encodes a [`RelayRequest`] or [`RelayReply`] as it travels on the peer port.
pub fn encode<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(bincode::serde::encode_to_vec(v, bincode::config::standard()).expect("encode"))
}

/// Decodes a [`RelayRequest`] or [`RelayReply`] from the peer port (at most 64 KiB read).
pub fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    bincode::serde::decode_from_slice(b, bincode::config::standard().with_limit::<{ 1 << 16 }>())
        .map(|(v, _)| v)
        .map_err(|e| e.to_string())
}

impl RelayEngine {
    /// Answers one control request.
    pub fn handle(&self, req: RelayRequest) -> RelayReply {
        match req {
            RelayRequest::Allocate {
                call_id,
                from_tag,
                media,
                source,
            } => match self.allocate(&call_id, &from_tag, &media, source) {
                Ok(a) => RelayReply::Relayed(a),
                Err(r) => RelayReply::Refused(r.as_str().into()),
            },
            RelayRequest::Update {
                call_id,
                from_tag,
                response,
                media,
                source,
            } => match self.update(&call_id, &from_tag, response, &media, source) {
                Ok(Some(a)) => RelayReply::Relayed(a),
                Ok(None) => RelayReply::NoSession,
                Err(r) => RelayReply::Refused(r.as_str().into()),
            },
            RelayRequest::Delete { call_id } => RelayReply::Deleted(self.delete(&call_id)),
        }
    }
}

/// Serves [`Service::Relay`] on the peer port.
pub struct RelayHandler {
    engine: RelayEngine,
}

impl RelayHandler {
    /// A handler for `engine`.
    pub fn new(engine: RelayEngine) -> RelayHandler {
        RelayHandler { engine }
    }
}

impl PeerHandler for RelayHandler {
    fn handle(&self, _from: &Identity, body: Bytes) -> BoxFuture<'_, Bytes> {
        let reply = match decode::<RelayRequest>(&body) {
            Ok(req) => self.engine.handle(req),
            Err(e) => RelayReply::Refused(format!("bad request: {e}")),
        };
        Box::pin(async move { encode(&reply) })
    }
}

/// How an allocation went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allocation {
    /// A relay took the call.
    Relayed {
        /// The relay (member name).
        relay: String,
        /// Per `m=` line, the address the callee is to send to.
        addrs: Vec<Option<SocketAddr>>,
        /// Whether it was not the first one tried (the owner refused or was unreachable).
        fallback: bool,
    },
    /// No relay took it (why, for the log).
    Unrelayed(String),
}

/// What the proxy needs of relays (a trait, so that the proxy's logic is tested without a
/// farm).
pub trait RelayControl: Send + Sync + 'static {
    /// Whether any relay is live for `call_id`.
    fn available(&self, call_id: &str) -> bool;
    /// Creates the session of a call; `source` is the IP address its INVITE came from.
    fn allocate(
        &self,
        call_id: String,
        from_tag: String,
        media: Vec<Option<Endpoint>>,
        source: Option<IpAddr>,
    ) -> BoxFut<Allocation>;
    /// Applies an SDP body to a call's session; `source` is the IP address the message with
    /// the body came from. `None` when no relay holds the session (or it refused).
    fn update(
        &self,
        call_id: String,
        from_tag: String,
        response: bool,
        media: Vec<Option<Endpoint>>,
        source: Option<IpAddr>,
    ) -> BoxFut<Option<Vec<Option<SocketAddr>>>>;
    /// Frees a call's session wherever it is.
    fn delete(&self, call_id: String) -> BoxFut<()>;
}

/// The proxy's client of the relays of the farm.
pub struct RelayClient {
    me: String,
    local: Option<RelayEngine>,
    peer: Arc<PeerNet>,
    view: watch::Receiver<Arc<View>>,
}

impl RelayClient {
    /// A client for node `me` (whose own engine is `local`, if it is a relay).
    pub fn new(
        me: String,
        local: Option<RelayEngine>,
        peer: Arc<PeerNet>,
        view: watch::Receiver<Arc<View>>,
    ) -> RelayClient {
        RelayClient {
            me,
            local,
            peer,
            view,
        }
    }

    /// The relays to try for `call_id`, in order: the owner, then the next distinct members
    /// clockwise.
    fn candidates(&self, call_id: &str) -> Vec<(String, Option<PeerAddr>)> {
        let view = self.view.borrow();
        let (Some(status), Some(ring)) = (view.status.as_ref(), view.rings.get(Role::MEDIA_RELAY))
        else {
            return Vec::new();
        };
        ring.replicas_at(position(call_id), RELAY_TRIES)
            .map(|m| {
                (
                    m.name.clone(),
                    status.member(&m.name).map(PeerAddr::of_member),
                )
            })
            .collect()
    }

    async fn ask(
        me: &str,
        local: &Option<RelayEngine>,
        peer: &PeerNet,
        name: &str,
        addr: &Option<PeerAddr>,
        req: &RelayRequest,
    ) -> Result<RelayReply, String> {
        if name == me {
            return match local {
                Some(engine) => Ok(engine.handle(req.clone())),
                None => Err("this node runs no relay".into()),
            };
        }
        let Some(addr) = addr else {
            return Err("not in the status".into());
        };
        let answer = peer
            .call(addr, Service::Relay, encode(req), RELAY_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        decode(&answer)
    }

    fn parts(&self) -> (String, Option<RelayEngine>, Arc<PeerNet>) {
        (self.me.clone(), self.local.clone(), self.peer.clone())
    }
}

impl RelayControl for RelayClient {
    fn available(&self, call_id: &str) -> bool {
        !self.candidates(call_id).is_empty()
    }

    fn allocate(
        &self,
        call_id: String,
        from_tag: String,
        media: Vec<Option<Endpoint>>,
        source: Option<IpAddr>,
    ) -> BoxFut<Allocation> {
        let candidates = self.candidates(&call_id);
        let (me, local, peer) = self.parts();
        Box::pin(async move {
            if candidates.is_empty() {
                return Allocation::Unrelayed("no live media_relay member".into());
            }
            let req = RelayRequest::Allocate {
                call_id,
                from_tag,
                media,
                source,
            };
            let mut why = Vec::new();
            for (i, (name, addr)) in candidates.iter().enumerate() {
                match Self::ask(&me, &local, &peer, name, addr, &req).await {
                    Ok(RelayReply::Relayed(addrs)) => {
                        return Allocation::Relayed {
                            relay: name.clone(),
                            addrs,
                            fallback: i > 0,
                        }
                    }
                    Ok(RelayReply::Refused(r)) => why.push(format!("{name} refused ({r})")),
                    Ok(other) => why.push(format!("{name} answered {other:?}")),
                    Err(e) => why.push(format!("{name}: {e}")),
                }
            }
            Allocation::Unrelayed(why.join("; "))
        })
    }

    fn update(
        &self,
        call_id: String,
        from_tag: String,
        response: bool,
        media: Vec<Option<Endpoint>>,
        source: Option<IpAddr>,
    ) -> BoxFut<Option<Vec<Option<SocketAddr>>>> {
        let candidates = self.candidates(&call_id);
        let (me, local, peer) = self.parts();
        Box::pin(async move {
            let req = RelayRequest::Update {
                call_id,
                from_tag,
                response,
                media,
                source,
            };
            for (name, addr) in &candidates {
                match Self::ask(&me, &local, &peer, name, addr, &req).await {
                    Ok(RelayReply::Relayed(addrs)) => return Some(addrs),
                    Ok(RelayReply::Refused(r)) => {
                        debug!(relay = %name, reason = %r, "relay refused an update");
                        return None;
                    }
                    Ok(_) => {}
                    Err(e) => debug!(relay = %name, cause = %e, "relay update failed"),
                }
            }
            None
        })
    }

    fn delete(&self, call_id: String) -> BoxFut<()> {
        let candidates = self.candidates(&call_id);
        let (me, local, peer) = self.parts();
        Box::pin(async move {
            let req = RelayRequest::Delete { call_id };
            for (name, addr) in &candidates {
                match Self::ask(&me, &local, &peer, name, addr, &req).await {
                    Ok(RelayReply::Deleted(true)) => return,
                    Ok(_) => {}
                    Err(e) => debug!(relay = %name, cause = %e, "relay delete failed"),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_bytes_are_refused() {
        let req = RelayRequest::Update {
            call_id: "a@b".into(),
            from_tag: "t".into(),
            response: true,
            media: vec![
                None,
                Some(Endpoint {
                    rtp: Some("192.0.2.1:4000".parse().unwrap()),
                    rtcp: None,
                }),
            ],
            source: Some("198.51.100.7".parse().unwrap()),
        };
        assert_eq!(decode::<RelayRequest>(&encode(&req)).unwrap(), req);
        let req = RelayRequest::Allocate {
            call_id: "a@b".into(),
            from_tag: "t".into(),
            media: Vec::new(),
            source: Some("2001:db8::7".parse().unwrap()),
        };
        assert_eq!(decode::<RelayRequest>(&encode(&req)).unwrap(), req);
        assert!(decode::<RelayRequest>(&[9, 9, 9]).is_err());
        let reply = RelayReply::Relayed(vec![Some("192.0.2.2:40000".parse().unwrap()), None]);
        assert_eq!(decode::<RelayReply>(&encode(&reply)).unwrap(), reply);
    }

    /// The requests as nodes sent them before `source` was appended.
    #[derive(Serialize)]
    enum OldRequest {
        Allocate {
            call_id: String,
            from_tag: String,
            media: Vec<Option<Endpoint>>,
        },
        Update {
            call_id: String,
            from_tag: String,
            response: bool,
            media: Vec<Option<Endpoint>>,
        },
    }

    #[test]
    fn requests_of_older_nodes_still_decode_and_older_nodes_read_newer_ones() {
        let media = vec![Some(Endpoint {
            rtp: Some("192.0.2.1:4000".parse().unwrap()),
            rtcp: None,
        })];
        let old = OldRequest::Allocate {
            call_id: "c".into(),
            from_tag: "t".into(),
            media: media.clone(),
        };
        assert_eq!(
            decode::<RelayRequest>(&encode(&old)).unwrap(),
            RelayRequest::Allocate {
                call_id: "c".into(),
                from_tag: "t".into(),
                media: media.clone(),
                source: None,
            }
        );
        let old = OldRequest::Update {
            call_id: "c".into(),
            from_tag: "t".into(),
            response: true,
            media: media.clone(),
        };
        assert_eq!(
            decode::<RelayRequest>(&encode(&old)).unwrap(),
            RelayRequest::Update {
                call_id: "c".into(),
                from_tag: "t".into(),
                response: true,
                media: media.clone(),
                source: None,
            }
        );
        // An older node reads the fields it knows of a newer request (bincode leaves the
        // rest unread): the same bytes, with the new field after them.
        let new = RelayRequest::Update {
            call_id: "c".into(),
            from_tag: "t".into(),
            response: true,
            media,
            source: Some("198.51.100.7".parse().unwrap()),
        };
        let (old_bytes, new_bytes) = (encode(&old), encode(&new));
        assert!(new_bytes.starts_with(&old_bytes));
    }
}
