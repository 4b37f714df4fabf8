//! onehop-overlay: what every onehop daemon shares.
//!
//! # Layout
//! - [`status`]: the shared model: kinds, roles, members, the network status, and its deltas;
//!   [`follow`]: how a receiver keeps the status from wholes, deltas and heartbeats.
//! - [`ring`]: the hash circle, one ring per role; a pure function of the status.
//! - [`identity`]: our certificate extension (kind and roles) and the peer identity read back
//!   from a certificate.
//! - [`wire`]: the messages and the length-prefixed codec with a size cap.
//! - [`tls`]: rustls configurations from the CA, a certificate, a key and the CRL.
//! - [`net`]: quinn endpoints, the only module here that touches sockets;
//!   [`admission`]: the bounds on QUIC handshakes every server applies.
//! - [`bootstrap`]: finding the event servers through DNS from the domain alone.
//! - [`client`]: a member's (or monitor's) sessions with every event server.
//! - [`crl`]: the revocation list in force, verified, persisted and hot-swapped;
//!   [`certwatch`]: the certificates and the list over time, reported before they bite.
//! - [`provision`]: what managers push to nodes and what members read from managers;
//!   [`farm_client`]: the members' client of the managers' farm-read service.
//! - [`budget`]: byte bounds shared by the producers and the consumer of a queue.
//! - [`daemon`], [`metrics`], [`farmfile`]: config loading and logging, Prometheus metrics,
//!   and the `farm.json` contract; [`overrides`] (configuration keys given on the command
//!   line) and [`logging`] (log lines naming the member and the peer) serve [`daemon`].

#![deny(missing_docs)]

pub mod admission;
pub mod bootstrap;
pub mod budget;
pub mod certwatch;
pub mod client;
pub mod crl;
pub mod daemon;
pub mod farm_client;
pub mod farmfile;
pub mod follow;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod overrides;
pub mod per_address;
pub mod provision;
pub mod ring;
pub mod status;
pub mod tls;
pub mod udp;
pub mod wire;
