//! The `media_relay` role: relaying RTP and RTCP (UDP) of calls through the farm.
//!
//! # Layout
//! - [`sdp`]: parsing SDP offers and answers and pointing them at the relay.
//! - [`engine`]: sessions, their sockets from the port range, latching and forwarding (nodes
//!   with the `media_relay` role).
//! - [`control`]: the requests proxies send relays over the peer port (`Service::Relay`), and
//!   the proxies' client, which picks a call's relay on the `media_relay` ring.
//!
//! The SIP side (which messages are rewritten, when sessions are freed) is in
//! [`crate::proxy::media`].

pub mod control;
pub mod engine;
pub mod sdp;

pub use control::{Allocation, RelayClient, RelayControl, RelayHandler};
pub use engine::{RelayEngine, RelaySettings};
pub use sdp::{Endpoint, Sdp};
