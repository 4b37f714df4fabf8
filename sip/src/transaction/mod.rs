//! SIP transactions (RFC 3261 section 17, with the RFC 6026 "Accepted" state) as pure state
//! machines: no sockets, no timers, no clock. The caller passes `now` into every call,
//! executes the [`Action`]s returned, and calls `on_timer(now)` when
//! `next_timer()` is due.
//!
//! # Call order: server transactions ([`ServerTransaction`])
//!
//! 1. A request arrives that matches no transaction ([`TransactionKey::server`] is not in
//!    the caller's table; an ACK for a 2xx never matches and goes to the TU/proxy core
//!    directly): `ServerTransaction::new(request, reliable, now)`, insert it under its key,
//!    and hand the request to the TU (the proxy or registrar).
//! 2. A request that matches: [`ServerTransaction::on_request`] (retransmission or, for
//!    INVITE, the ACK of a non-2xx final response).
//! 3. The TU answers: [`ServerTransaction::send_response`] for each response (provisional
//!    first if any, then final). For INVITE the TU should send 100 Trying at once
//!    ([`ServerTransaction::trying`]) unless it answers within 200 ms.
//! 4. When `next_timer()` is due: [`ServerTransaction::on_timer`]. A send failure:
//!    [`ServerTransaction::on_transport_error`].
//! 5. On [`Action::Terminated`] (or `is_terminated()`), remove it from the table.
//!
//! # Call order: client transactions ([`ClientTransaction`])
//!
//! 1. `ClientTransaction::new(request, reliable, now)` returns the transaction and the first
//!    `Send` of the request; insert it under [`ClientTransaction::key`].
//! 2. A response whose [`TransactionKey::from_response`] matches:
//!    [`ClientTransaction::on_response`]. `Deliver` actions go to the TU (a proxy forwards
//!    them upstream); retransmitted responses are absorbed; the ACK for a non-2xx final
//!    response to INVITE is generated here (`Send`).
//! 3. When `next_timer()` is due: [`ClientTransaction::on_timer`]; it may yield
//!    [`Action::Timeout`] (the TU acts as if it received 408).
//! 4. To cancel an INVITE, start a separate non-INVITE client transaction for
//!    [`build_cancel`] (or [`ClientTransaction::cancel_request`], which also checks that a
//!    provisional response has been received, RFC 3261 section 9.1).
//! 5. On [`Action::Terminated`], remove it.
//!
//! # Timers
//!
//! | timer | value (unreliable) | reliable | meaning |
//! |---|---|---|---|
//! | A | T1, doubling | not used | INVITE request retransmission |
//! | B | 64*T1 | same | INVITE transaction timeout |
//! | D | 32 s | 0 | wait for response retransmissions after a non-2xx |
//! | E | T1, doubling to T2 (T2 once proceeding) | not used | non-INVITE request retransmission |
//! | F | 64*T1 | same | non-INVITE transaction timeout |
//! | G | T1, doubling to T2 | not used | INVITE final response retransmission |
//! | H | 64*T1 | same | wait for ACK |
//! | I | T4 | 0 | absorb ACK retransmissions |
//! | J | 64*T1 | 0 | absorb non-INVITE request retransmissions |
//! | K | T4 | 0 | absorb non-INVITE response retransmissions |
//! | L, M | 64*T1 | same | RFC 6026: absorb INVITE / pass 2xx retransmissions after a 2xx |

mod client;
mod server;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use xxhash_rust::xxh3::xxh3_64;

pub use client::{build_ack, build_cancel, ClientState, ClientTransaction};
pub use server::{ServerState, ServerTransaction};

use super::message::{Message, Method, Request, Response};
use super::typed::MAGIC_COOKIE;

/// What the caller must do after a transaction call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this message to the transaction's peer (a client transaction's next hop, or a
    /// server transaction's response target).
    Send(Message),
    /// Pass this response to the TU.
    Deliver(Response),
    /// The transaction timed out (Timer B, F or H): the TU acts as if it received a 408.
    Timeout,
    /// The transport reported a failure: the TU acts as if it received a 503 (RFC 3261
    /// section 8.1.3.1 and 17.1.4).
    TransportError,
    /// The transaction is over: remove it from the table.
    Terminated,
}

/// The actions returned by one call, in the order to carry them out.
pub type Actions = Vec<Action>;

/// The base timer values (RFC 3261 section 17.1.1.1 and table 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate (default 500 ms).
    pub t1: Duration,
    /// Longest retransmit interval for non-INVITE requests and INVITE responses (4 s).
    pub t2: Duration,
    /// Longest time a message remains in the network (5 s).
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> TimerConfig {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl TimerConfig {
    /// 64*T1: timers B, F, H, J (unreliable), L and M.
    pub fn timeout(&self) -> Duration {
        self.t1 * 64
    }
}

/// The identity of a transaction (RFC 3261 sections 17.1.3 and 17.2.3): the branch, the
/// sent-by of the top Via, and the method, with ACK mapped to INVITE so that the ACK of a
/// non-2xx response finds its INVITE server transaction. CANCEL keeps its own method: it is a
/// transaction of its own; [`TransactionKey::cancelled_invite`] gives the INVITE it targets.
///
/// Requests whose branch lacks the magic cookie (RFC 2543 peers) get a synthetic branch: a
/// hash of the Request-URI, From tag, Call-ID, CSeq number and top Via, which is what
/// section 17.2.3 matches on (the To tag is left out so that the ACK matches its INVITE).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TransactionKey {
    /// The branch parameter (or the synthetic one).
    pub branch: String,
    /// The top Via's sent-by, host lower-cased (`host` or `host:port`).
    pub sent_by: String,
    /// The method, ACK mapped to INVITE.
    pub method: Method,
}

impl TransactionKey {
    /// The key of the server transaction a received request belongs to.
    pub fn server(req: &Request) -> Option<TransactionKey> {
        let via = req.headers.via_top()?;
        let method = match req.method {
            Method::Ack => Method::Invite,
            ref m => m.clone(),
        };
        let branch = match via.branch() {
            Some(b) if b.starts_with(MAGIC_COOKIE) => b.to_owned(),
            _ => rfc2543_branch(req)?,
        };
        Some(TransactionKey {
            branch,
            sent_by: via.sent_by(),
            method,
        })
    }

    /// The key of a client transaction for a request we send (its top Via is ours).
    pub fn client(req: &Request) -> Option<TransactionKey> {
        TransactionKey::server(req)
    }

    /// The key of the client transaction a received response belongs to: the top Via's
    /// branch and sent-by, and the CSeq method.
    pub fn from_response(resp: &Response) -> Option<TransactionKey> {
        let via = resp.headers.via_top()?;
        let branch = via.branch()?.to_owned();
        let method = match resp.headers.cseq()?.method {
            Method::Ack => Method::Invite,
            m => m,
        };
        Some(TransactionKey {
            branch,
            sent_by: via.sent_by(),
            method,
        })
    }

    /// For a CANCEL's key, the key of the INVITE transaction it cancels (RFC 3261 section
    /// 9.2: same branch and sent-by).
    pub fn cancelled_invite(&self) -> TransactionKey {
        TransactionKey {
            branch: self.branch.clone(),
            sent_by: self.sent_by.clone(),
            method: Method::Invite,
        }
    }
}

/// The synthetic branch of a request from an RFC 2543 peer.
fn rfc2543_branch(req: &Request) -> Option<String> {
    let h = &req.headers;
    let mut key = String::with_capacity(160);
    key.push_str(req.uri.as_str());
    key.push('\u{1f}');
    key.push_str(h.from().and_then(|f| f.tag()).unwrap_or(""));
    key.push('\u{1f}');
    key.push_str(h.call_id()?);
    key.push('\u{1f}');
    key.push_str(&h.cseq()?.number.to_string());
    key.push('\u{1f}');
    key.push_str(h.via_top()?.as_str());
    Some(format!("rfc2543-{:016x}", xxh3_64(key.as_bytes())))
}

/// The earliest of a set of optional deadlines.
fn earliest(deadlines: &[Option<Instant>]) -> Option<Instant> {
    deadlines.iter().flatten().min().copied()
}

/// Whether a deadline has been reached.
fn due(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|d| d <= now)
}
