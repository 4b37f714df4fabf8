//! The messages daemons exchange and their framing.
//!
//! Every message travels on a QUIC stream as a frame: a 4-byte big-endian length followed by
//! that many bytes of bincode (serde, standard config). The length is checked against a hard cap
//! (default [`MAX_FRAME`], 1 MiB) before anything is allocated, and decoding is bounded by the
//! same cap. An unknown variant, a truncated body or an oversized frame is a [`WireError`]; the
//! receiver closes that stream with the matching [`CloseCode`] and goes on serving.
//!
//! Enum variants here are only ever appended, never reordered or removed: bincode encodes a
//! variant by its index.
//!
//! # Sessions with an event server
//! A client opens one bidirectional stream per connection and sends [`ClientMsg`]s on it:
//! optionally [`ClientMsg::Announce`] (members only), [`ClientMsg::Subscribe`], then any number
//! of [`ClientMsg::Publish`], and [`ClientMsg::Leave`] before a graceful close. The event server
//! answers with [`ServerMsg::Welcome`] and then [`ServerMsg::Event`]s for the subscribed topics.

use std::net::IpAddr;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::status::{Endpoint, Kind, NetworkStatus, Role, StatusBeat, StatusDelta};

/// The ALPN protocol of every onehop QUIC connection.
pub const ALPN: &[u8] = b"onehop/1";

/// Default cap on a frame's length, checked before allocation.
pub const MAX_FRAME: usize = 1 << 20;

/// Publish/subscribe topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Topic {
    /// Announcements, leaves and losses of members (published by event servers only).
    Members,
    /// The network status (published by the active manager only).
    Network,
    /// Periodic load figures.
    Stats,
    /// A human-readable log of network events.
    Events,
    /// Certificate revocation lists (published by admins only).
    Crl,
    /// What managers need among themselves.
    Manager,
}

impl Topic {
    /// Every topic.
    pub const ALL: [Topic; 6] = [
        Topic::Members,
        Topic::Network,
        Topic::Stats,
        Topic::Events,
        Topic::Crl,
        Topic::Manager,
    ];

    /// A bit for topic sets.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A member as an event server knows it: its identity from the certificate, what it announced,
/// and the address its connection comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMember {
    /// Certificate CN.
    pub name: String,
    /// Certificate kind.
    pub kind: Kind,
    /// Announced roles (a subset of the certificate's).
    pub roles: Vec<Role>,
    /// Announced services.
    pub endpoints: Vec<Endpoint>,
    /// Source address of the member's connection.
    pub ip: IpAddr,
}

/// What a member announces when it joins through an event server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    /// Roles to announce; each must be in the member's certificate.
    pub roles: Vec<Role>,
    /// Services offered.
    pub endpoints: Vec<Endpoint>,
}

/// Changes of an event server's sessions, published on [`Topic::Members`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberEvent {
    /// Every member this event server holds a session for now (sent to a new subscriber).
    Snapshot(Vec<SessionMember>),
    /// A member announced itself.
    Joined(SessionMember),
    /// A member said goodbye before closing.
    Left {
        /// The member's name.
        name: String,
    },
    /// A member's connection closed or idled out without a goodbye.
    Lost {
        /// The member's name.
        name: String,
        /// Why the connection ended.
        reason: String,
    },
}

/// Load figures of a member, published on [`Topic::Stats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Name/value pairs, for example `bindings`, `calls`, `relay_sessions`, `packets_per_s`.
    pub figures: Vec<(String, f64)>,
}

/// Severity of a log event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Routine.
    Info,
    /// Worth a look.
    Warn,
    /// Something failed.
    Error,
}

/// A human-readable network event, published on [`Topic::Events`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEvent {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Severity.
    pub level: Level,
    /// The text.
    pub text: String,
}

/// The body of a publication; its topic follows from the variant ([`Payload::topic`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Payload {
    /// On [`Topic::Members`].
    Member(MemberEvent),
    /// On [`Topic::Network`].
    Network(NetworkStatus),
    /// On [`Topic::Stats`].
    Stats(Stats),
    /// On [`Topic::Events`].
    Log(LogEvent),
    /// On [`Topic::Crl`]: a DER X.509 CRL signed by the CA.
    Crl(Vec<u8>),
    /// On [`Topic::Manager`]: opaque to everyone but managers.
    Manager(Vec<u8>),
    /// On [`Topic::Network`]: a change of the status, from the one before it.
    NetworkDelta(StatusDelta),
    /// On [`Topic::Network`]: the active manager's periodic heartbeat.
    NetworkBeat(StatusBeat),
}

impl Payload {
    /// The topic this payload belongs to.
    pub fn topic(&self) -> Topic {
        match self {
            Payload::Member(_) => Topic::Members,
            Payload::Network(_) => Topic::Network,
            Payload::Stats(_) => Topic::Stats,
            Payload::Log(_) => Topic::Events,
            Payload::Crl(_) => Topic::Crl,
            Payload::Manager(_) => Topic::Manager,
            Payload::NetworkDelta(_) | Payload::NetworkBeat(_) => Topic::Network,
        }
    }
}

/// One publication as delivered to subscribers. Subscribers dedupe by `(origin, seq)`, since
/// every member publishes to every event server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The publisher's name (certificate CN).
    pub origin: String,
    /// The publisher's kind (certificate).
    pub origin_kind: Kind,
    /// Increases with every publication of `origin`, across restarts.
    pub seq: u64,
    /// The body.
    pub payload: Payload,
}

/// Client -> event server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// Join as a member (event servers refuse this from monitors and admins).
    Announce(Announce),
    /// Receive these topics from now on (adds to earlier subscriptions).
    Subscribe(Vec<Topic>),
    /// Publish; the event server checks that the sender's kind may publish on the topic.
    Publish {
        /// Increases with every publication of this sender, across restarts.
        seq: u64,
        /// The body.
        payload: Payload,
    },
    /// A graceful goodbye: the member's departure is published as a leave, not a loss.
    Leave,
    /// Send the retained values of these subscribed topics again (as
    /// [`ServerMsg::Retained`]): a receiver that missed a change of the network status asks
    /// for the whole of it.
    Fetch(Vec<Topic>),
}

/// Event server -> client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// First message of a session: who the event server is.
    Welcome {
        /// The event server's name.
        server: String,
    },
    /// A publication on a subscribed topic.
    Event(Event),
    /// Something the client sent was refused; the session ends after this.
    Refused {
        /// Why, for the client's log.
        reason: String,
    },
    /// A retained value (the whole network status), sent on subscribing and on
    /// [`ClientMsg::Fetch`]. Not a new publication: receivers take it whether or not they
    /// saw its `(origin, seq)` before.
    Retained(Event),
}

/// Application error codes used when closing a stream or a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// Orderly close.
    Normal = 0,
    /// A frame that does not decode.
    Malformed = 1,
    /// A frame over the size cap.
    Oversized = 2,
    /// A subscriber that could not keep up with its queue.
    SlowSubscriber = 3,
    /// The peer did something its certificate does not allow.
    Forbidden = 4,
    /// The peer's certificate was revoked.
    Revoked = 5,
    /// The daemon is shutting down.
    Shutdown = 6,
    /// A protocol step out of order (for example no stream opened in time).
    Protocol = 7,
    /// Replaced by a newer session of the same member.
    Replaced = 8,
    /// Too many connections.
    Busy = 9,
}

impl CloseCode {
    /// The QUIC varint for this code.
    pub fn varint(self) -> quinn::VarInt {
        quinn::VarInt::from_u32(self as u32)
    }

    /// The code for a QUIC varint, if it is one of ours.
    pub fn from_varint(v: quinn::VarInt) -> Option<CloseCode> {
        use CloseCode::*;
        [
            Normal,
            Malformed,
            Oversized,
            SlowSubscriber,
            Forbidden,
            Revoked,
            Shutdown,
            Protocol,
            Replaced,
            Busy,
        ]
        .into_iter()
        .find(|c| *c as u64 == v.into_inner())
    }
}

/// A framing or decoding error.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The frame's length exceeds the cap.
    #[error("frame of {len} bytes exceeds the cap of {cap} bytes")]
    Oversized {
        /// Announced length.
        len: usize,
        /// The cap.
        cap: usize,
    },
    /// The body does not decode as the expected message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The stream failed.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
}

impl WireError {
    /// The close code to send the peer for this error.
    pub fn close_code(&self) -> CloseCode {
        match self {
            WireError::Oversized { .. } => CloseCode::Oversized,
            WireError::Malformed(_) | WireError::Truncated => CloseCode::Malformed,
            WireError::Io(_) => CloseCode::Protocol,
        }
    }
}

const CAP_LIMIT: usize = MAX_FRAME;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a message as one frame (length prefix included).
pub fn encode_frame<T: Serialize>(msg: &T) -> Bytes {
    let body = bincode::serde::encode_to_vec(msg, config())
        .expect("encoding our own message types into a Vec cannot fail");
    let mut buf = BytesMut::with_capacity(4 + body.len());
    buf.put_u32(body.len() as u32);
    buf.extend_from_slice(&body);
    buf.freeze()
}

/// Decodes a frame body (without its length prefix). The whole body must be consumed.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    if body.len() > CAP_LIMIT {
        return Err(WireError::Oversized {
            len: body.len(),
            cap: CAP_LIMIT,
        });
    }
    let cfg = config().with_limit::<CAP_LIMIT>();
    let (msg, used) = bincode::serde::decode_from_slice(body, cfg)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(WireError::Malformed(format!(
            "{} trailing bytes after the message",
            body.len() - used
        )));
    }
    Ok(msg)
}

/// Reads one frame body from a stream, with the length checked against `max` before
/// allocation. `Ok(None)` when the stream ends cleanly between frames.
///
/// Cancel safety: not cancel-safe (a partly read frame is lost); use it from one task.
pub async fn read_frame<R>(stream: &mut R, max: usize) -> Result<Option<Vec<u8>>, WireError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    match read_frame_len(stream, max).await? {
        None => Ok(None),
        Some(len) => read_frame_body(stream, len).await.map(Some),
    }
}

/// Reads a frame's length prefix and checks it against `max`; `Ok(None)` when the stream ends
/// cleanly before it. With [`read_frame_body`], lets a reader reserve room for the body (a
/// byte budget) between the two.
///
/// Cancel safety: not cancel-safe (a partly read prefix is lost).
pub async fn read_frame_len<R>(stream: &mut R, max: usize) -> Result<Option<usize>, WireError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = stream.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(WireError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(WireError::Oversized { len, cap: max });
    }
    Ok(Some(len))
}

/// Reads a frame body of `len` bytes (its prefix read and checked by [`read_frame_len`]).
///
/// Cancel safety: not cancel-safe (a partly read body is lost).
pub async fn read_frame_body<R>(stream: &mut R, len: usize) -> Result<Vec<u8>, WireError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            WireError::Truncated
        } else {
            WireError::Io(e)
        }
    })?;
    Ok(body)
}

/// Reads and decodes one message; `Ok(None)` at a clean end of stream.
pub async fn read_msg<T, R>(stream: &mut R, max: usize) -> Result<Option<T>, WireError>
where
    T: DeserializeOwned,
    R: tokio::io::AsyncRead + Unpin,
{
    match read_frame(stream, max).await? {
        None => Ok(None),
        Some(body) => decode_body(&body).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClientMsg {
        ClientMsg::Announce(Announce {
            roles: vec![Role::new("registrar").unwrap()],
            endpoints: vec![Endpoint {
                service: "lookup".into(),
                addr: "127.0.1.7:9500".parse().unwrap(),
            }],
        })
    }

    #[test]
    fn round_trip() {
        let frame = encode_frame(&sample());
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        let back: ClientMsg = decode_body(&frame[4..]).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for junk in [&b""[..], b"\xff\xff\xff\xff\xff", b"\x09", b"\x00\x05abc"] {
            let r: Result<ClientMsg, _> = decode_body(junk);
            assert!(matches!(r, Err(WireError::Malformed(_))), "{junk:?}: {r:?}");
        }
    }

    #[test]
    fn truncated_body_is_malformed() {
        let frame = encode_frame(&sample());
        let body = &frame[4..frame.len() - 3];
        assert!(decode_body::<ClientMsg>(body).is_err());
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let frame = encode_frame(&ClientMsg::Leave);
        let mut body = frame[4..].to_vec();
        body.push(0);
        assert!(decode_body::<ClientMsg>(&body).is_err());
    }

    #[tokio::test]
    async fn read_frame_checks_the_cap_before_allocating() {
        let mut data: &[u8] = &[0xff, 0xff, 0xff, 0xf0, 1, 2, 3];
        let r = read_frame(&mut data, MAX_FRAME).await;
        assert!(matches!(r, Err(WireError::Oversized { .. })));
    }

    #[tokio::test]
    async fn read_frame_reports_truncation() {
        let frame = encode_frame(&sample());
        let mut data: &[u8] = &frame[..frame.len() - 1];
        assert!(matches!(
            read_frame(&mut data, MAX_FRAME).await,
            Err(WireError::Truncated)
        ));
        let mut empty: &[u8] = &[];
        assert!(read_frame(&mut empty, MAX_FRAME).await.unwrap().is_none());
    }

    #[test]
    fn huge_length_inside_a_body_does_not_allocate() {
        // A Vec length claiming 2^60 elements must fail on the limit, not try to allocate.
        let mut body = vec![3u8]; // Payload::Stats? no: ClientMsg::Publish is variant 2
        body[0] = 2;
        body.push(7); // seq
        body.push(2); // Payload::Stats
        body.extend_from_slice(&[0xff, 0, 0, 0, 0, 0, 0, 0x10]); // varint u64 length
        assert!(decode_body::<ClientMsg>(&body).is_err());
    }

    #[test]
    fn close_codes_round_trip() {
        for c in [CloseCode::Normal, CloseCode::Busy, CloseCode::Revoked] {
            assert_eq!(CloseCode::from_varint(c.varint()), Some(c));
        }
        assert_eq!(CloseCode::from_varint(quinn::VarInt::from_u32(999)), None);
    }
}
