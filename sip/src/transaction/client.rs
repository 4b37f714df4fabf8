//! Client transactions: INVITE (RFC 3261 section 17.1.1, RFC 6026) and non-INVITE (17.1.2),
//! and the ACK (17.1.1.3) and CANCEL (9.1) requests built from an INVITE.

use std::time::{Duration, Instant};

use super::{due, earliest, Action, Actions, TimerConfig, TransactionKey};
use crate::headers::{Header, HeaderName, Headers};
use crate::message::{Message, Method, Request, Response};
use crate::params::top_level_comma;

/// The state of a client transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientState {
    /// INVITE: sent, nothing received yet.
    Calling,
    /// Non-INVITE: sent, nothing received yet.
    Trying,
    /// A provisional response has been received.
    Proceeding,
    /// A final response (non-2xx for INVITE) has been received; absorbing retransmissions.
    Completed,
    /// INVITE: a 2xx has been received (RFC 6026); further 2xx are delivered, until Timer M.
    Accepted,
    /// Over.
    Terminated,
}

/// A client transaction. See the [module documentation](super) for the call order.
#[derive(Clone, Debug)]
pub struct ClientTransaction {
    key: TransactionKey,
    request: Request,
    invite: bool,
    reliable: bool,
    cfg: TimerConfig,
    state: ClientState,
    /// The ACK sent for a non-2xx final response (resent on its retransmissions).
    ack: Option<Request>,
    a: Option<Instant>,
    a_interval: Duration,
    b: Option<Instant>,
    d: Option<Instant>,
    e: Option<Instant>,
    e_interval: Duration,
    f: Option<Instant>,
    k: Option<Instant>,
    m: Option<Instant>,
}

impl ClientTransaction {
    /// Starts a transaction for `request` (whose top Via is ours, with a unique branch):
    /// returns it with the first `Send` of the request. `reliable` is whether the next hop is
    /// reached over a reliable transport.
    pub fn new(request: Request, reliable: bool, now: Instant) -> (ClientTransaction, Actions) {
        ClientTransaction::with_config(request, reliable, now, TimerConfig::default())
    }

    /// Like [`ClientTransaction::new`] with explicit timer values.
    pub fn with_config(
        request: Request,
        reliable: bool,
        now: Instant,
        cfg: TimerConfig,
    ) -> (ClientTransaction, Actions) {
        let invite = request.method == Method::Invite;
        let key = TransactionKey::client(&request).unwrap_or_else(|| TransactionKey {
            branch: String::new(),
            sent_by: String::new(),
            method: request.method.clone(),
        });
        let timeout = Some(now + cfg.timeout());
        let retransmit = (!reliable).then_some(now + cfg.t1);
        let tx = ClientTransaction {
            key,
            invite,
            reliable,
            cfg,
            state: if invite {
                ClientState::Calling
            } else {
                ClientState::Trying
            },
            ack: None,
            a: if invite { retransmit } else { None },
            a_interval: cfg.t1,
            b: if invite { timeout } else { None },
            d: None,
            e: if invite { None } else { retransmit },
            e_interval: cfg.t1,
            f: if invite { None } else { timeout },
            k: None,
            m: None,
            request,
        };
        let send = vec![Action::Send(Message::Request(tx.request.clone()))];
        (tx, send)
    }

    /// The transaction's key (responses are matched with
    /// [`TransactionKey::from_response`]).
    pub fn key(&self) -> &TransactionKey {
        &self.key
    }

    /// The request this transaction sends.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The current state.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// Whether the transaction is over.
    pub fn is_terminated(&self) -> bool {
        self.state == ClientState::Terminated
    }

    /// When [`ClientTransaction::on_timer`] must next be called.
    pub fn next_timer(&self) -> Option<Instant> {
        earliest(&[self.a, self.b, self.d, self.e, self.f, self.k, self.m])
    }

    /// The CANCEL for this INVITE (RFC 3261 section 9.1), or `None` when it must not be
    /// sent: not an INVITE, no provisional response received yet (send it once one arrives),
    /// or a final response already received. Send it in its own non-INVITE client
    /// transaction.
    pub fn cancel_request(&self) -> Option<Request> {
        (self.invite && self.state == ClientState::Proceeding).then(|| build_cancel(&self.request))
    }

    /// A response matching this transaction arrived.
    pub fn on_response(&mut self, resp: Response, now: Instant) -> Actions {
        let status = resp.status;
        if self.invite {
            match self.state {
                ClientState::Calling | ClientState::Proceeding => {
                    self.a = None;
                    if status < 200 {
                        // Timer B only guards the Calling state; the TU (Timer C for a
                        // proxy) bounds Proceeding.
                        self.b = None;
                        self.state = ClientState::Proceeding;
                        vec![Action::Deliver(resp)]
                    } else if status < 300 {
                        self.b = None;
                        self.state = ClientState::Accepted;
                        self.m = Some(now + self.cfg.timeout());
                        vec![Action::Deliver(resp)]
                    } else {
                        self.b = None;
                        let ack = build_ack(&self.request, &resp);
                        self.ack = Some(ack.clone());
                        self.state = ClientState::Completed;
                        let mut actions =
                            vec![Action::Deliver(resp), Action::Send(Message::Request(ack))];
                        if self.reliable {
                            actions.extend(self.terminate());
                        } else {
                            self.d =
                                Some(now + Duration::from_secs(32).max(self.cfg.timeout() / 2));
                        }
                        actions
                    }
                }
                // A retransmitted non-2xx final response: resend the ACK, tell no one.
                ClientState::Completed if status >= 300 => self
                    .ack
                    .iter()
                    .map(|a| Action::Send(Message::Request(a.clone())))
                    .collect(),
                // RFC 6026: 2xx retransmissions and forked 2xx go to the TU.
                ClientState::Accepted if (200..300).contains(&status) => {
                    vec![Action::Deliver(resp)]
                }
                _ => Vec::new(),
            }
        } else {
            match self.state {
                ClientState::Trying | ClientState::Proceeding => {
                    if status < 200 {
                        self.state = ClientState::Proceeding;
                        return vec![Action::Deliver(resp)];
                    }
                    self.e = None;
                    self.f = None;
                    self.state = ClientState::Completed;
                    let mut actions = vec![Action::Deliver(resp)];
                    if self.reliable {
                        actions.extend(self.terminate());
                    } else {
                        self.k = Some(now + self.cfg.t4);
                    }
                    actions
                }
                _ => Vec::new(),
            }
        }
    }

    /// Fires the timers that are due.
    pub fn on_timer(&mut self, now: Instant) -> Actions {
        let mut actions = Vec::new();
        if due(self.b, now) || due(self.f, now) {
            actions.push(Action::Timeout);
            actions.extend(self.terminate());
            return actions;
        }
        if due(self.a, now) && self.state == ClientState::Calling {
            actions.push(Action::Send(Message::Request(self.request.clone())));
            self.a_interval *= 2;
            self.a = Some(now + self.a_interval);
        }
        if due(self.e, now) {
            actions.push(Action::Send(Message::Request(self.request.clone())));
            self.e_interval = if self.state == ClientState::Proceeding {
                self.cfg.t2
            } else {
                (self.e_interval * 2).min(self.cfg.t2)
            };
            self.e = Some(now + self.e_interval);
        }
        if due(self.d, now) || due(self.k, now) || due(self.m, now) {
            actions.extend(self.terminate());
        }
        actions
    }

    /// Sending the request failed (RFC 3261 section 17.1.4): the transaction ends and the
    /// TU is told (it acts as if it received a 503).
    pub fn on_transport_error(&mut self) -> Actions {
        if self.is_terminated() {
            return Vec::new();
        }
        let mut actions = vec![Action::TransportError];
        actions.extend(self.terminate());
        actions
    }

    fn terminate(&mut self) -> Actions {
        if self.state == ClientState::Terminated {
            return Vec::new();
        }
        self.state = ClientState::Terminated;
        self.a = None;
        self.b = None;
        self.d = None;
        self.e = None;
        self.f = None;
        self.k = None;
        self.m = None;
        vec![Action::Terminated]
    }
}

/// Copies the topmost Via value of `from` into `to` as a single field.
fn copy_top_via(from: &Headers, to: &mut Headers) {
    if let Some(h) = from.iter().find(|h| h.kind() == HeaderName::Via) {
        let value = h.value();
        match top_level_comma(value) {
            None => to.push_header(h.clone()),
            Some(comma) => to.push_header(Header::new(h.name(), value[..comma].trim())),
        }
    }
}

/// Copies every field of a kind.
fn copy_all(from: &Headers, to: &mut Headers, kind: HeaderName) {
    for h in from.iter().filter(|h| h.kind() == kind) {
        to.push_header(h.clone());
    }
}

/// The ACK for a non-2xx final response to `invite` (RFC 3261 section 17.1.1.3): same
/// Request-URI, Call-ID, From, top Via (only), Route set and CSeq number as the INVITE; the
/// To of the response (with its tag); CSeq method ACK; no body.
pub fn build_ack(invite: &Request, resp: &Response) -> Request {
    let mut ack = Request::new(Method::Ack, invite.uri.clone());
    let h = &invite.headers;
    copy_top_via(h, &mut ack.headers);
    match h.iter().find(|x| x.kind() == HeaderName::MaxForwards) {
        Some(mf) => ack.headers.push_header(mf.clone()),
        None => ack.headers.push("Max-Forwards", "70"),
    }
    copy_all(&invite.headers, &mut ack.headers, HeaderName::Route);
    copy_all(&invite.headers, &mut ack.headers, HeaderName::From);
    match resp.headers.iter().find(|x| x.kind() == HeaderName::To) {
        Some(to) => ack.headers.push_header(to.clone()),
        None => copy_all(&invite.headers, &mut ack.headers, HeaderName::To),
    }
    copy_all(&invite.headers, &mut ack.headers, HeaderName::CallId);
    let number = h.cseq().map_or(1, |c| c.number);
    ack.headers.push("CSeq", &format!("{number} ACK"));
    ack.headers.push("Content-Length", "0");
    ack
}

/// The CANCEL for `invite` (RFC 3261 section 9.1): same Request-URI, Call-ID, From, To,
/// CSeq number, top Via (only, so it carries the INVITE's branch) and Route set; CSeq method
/// CANCEL; no body.
pub fn build_cancel(invite: &Request) -> Request {
    let mut cancel = Request::new(Method::Cancel, invite.uri.clone());
    let h = &invite.headers;
    copy_top_via(h, &mut cancel.headers);
    match h.iter().find(|x| x.kind() == HeaderName::MaxForwards) {
        Some(mf) => cancel.headers.push_header(mf.clone()),
        None => cancel.headers.push("Max-Forwards", "70"),
    }
    copy_all(h, &mut cancel.headers, HeaderName::Route);
    copy_all(h, &mut cancel.headers, HeaderName::From);
    copy_all(h, &mut cancel.headers, HeaderName::To);
    copy_all(h, &mut cancel.headers, HeaderName::CallId);
    let number = h.cseq().map_or(1, |c| c.number);
    cancel.headers.push("CSeq", &format!("{number} CANCEL"));
    cancel.headers.push("Content-Length", "0");
    cancel
}
