//! Server transactions: INVITE (RFC 3261 section 17.2.1, RFC 6026) and non-INVITE (17.2.2).

use std::time::{Duration, Instant};

use super::{due, earliest, Action, Actions, TimerConfig, TransactionKey};
use crate::message::{Message, Method, Request, Response};
use crate::response::reply;

/// The state of a server transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// Non-INVITE: no response sent yet.
    Trying,
    /// A provisional response has been sent (INVITE starts here).
    Proceeding,
    /// A final response (non-2xx for INVITE) has been sent.
    Completed,
    /// INVITE: the ACK has arrived; absorbing ACK retransmissions (Timer I).
    Confirmed,
    /// INVITE: a 2xx has been sent (RFC 6026); INVITE retransmissions are absorbed and
    /// further 2xx responses from the TU are sent, until Timer L.
    Accepted,
    /// Over.
    Terminated,
}

/// A server transaction. See the [module documentation](super) for the call order.
#[derive(Clone, Debug)]
pub struct ServerTransaction {
    key: TransactionKey,
    request: Request,
    invite: bool,
    reliable: bool,
    cfg: TimerConfig,
    state: ServerState,
    /// The most recent response sent: retransmitted on request retransmissions and Timer G.
    last: Option<Response>,
    g: Option<Instant>,
    g_interval: Duration,
    h: Option<Instant>,
    i: Option<Instant>,
    j: Option<Instant>,
    l: Option<Instant>,
}

impl ServerTransaction {
    /// A transaction for a newly received request (not an ACK), with the default timers.
    /// `reliable` is whether the request came over a reliable transport (TCP, TLS).
    pub fn new(request: Request, reliable: bool, now: Instant) -> ServerTransaction {
        ServerTransaction::with_config(request, reliable, now, TimerConfig::default())
    }

    /// Like [`ServerTransaction::new`] with explicit timer values.
    pub fn with_config(
        request: Request,
        reliable: bool,
        now: Instant,
        cfg: TimerConfig,
    ) -> ServerTransaction {
        let key = TransactionKey::server(&request).unwrap_or_else(|| TransactionKey {
            branch: String::new(),
            sent_by: String::new(),
            method: request.method.clone(),
        });
        ServerTransaction::keyed(key, request, reliable, now, cfg)
    }

    /// Like [`ServerTransaction::with_config`] for a request whose key the caller has
    /// computed already ([`TransactionKey::server`] of `request`), so it is not parsed out of
    /// the request again.
    pub fn keyed(
        key: TransactionKey,
        request: Request,
        reliable: bool,
        _now: Instant,
        cfg: TimerConfig,
    ) -> ServerTransaction {
        debug_assert!(TransactionKey::server(&request).is_none_or(|k| k == key));
        let invite = request.method == Method::Invite;
        ServerTransaction {
            key,
            request,
            invite,
            reliable,
            cfg,
            state: if invite {
                ServerState::Proceeding
            } else {
                ServerState::Trying
            },
            last: None,
            g: None,
            g_interval: cfg.t1,
            h: None,
            i: None,
            j: None,
            l: None,
        }
    }

    /// The transaction's key.
    pub fn key(&self) -> &TransactionKey {
        &self.key
    }

    /// The request that created the transaction.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The current state.
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// Whether the transaction is over.
    pub fn is_terminated(&self) -> bool {
        self.state == ServerState::Terminated
    }

    /// The final response sent, if any.
    pub fn final_response(&self) -> Option<&Response> {
        self.last.as_ref().filter(|r| r.status >= 200)
    }

    /// When [`ServerTransaction::on_timer`] must next be called.
    pub fn next_timer(&self) -> Option<Instant> {
        earliest(&[self.g, self.h, self.i, self.j, self.l])
    }

    /// Sends 100 Trying (INVITE, in Proceeding, before any other response).
    pub fn trying(&mut self, now: Instant) -> Actions {
        if self.state != ServerState::Proceeding || self.last.is_some() {
            return Vec::new();
        }
        let resp = reply(&self.request, 100, None, None);
        self.send_response(resp, now)
    }

    /// A request matching this transaction arrived: an ACK (INVITE transactions), or a
    /// retransmission of the request.
    pub fn on_request(&mut self, req: &Request, now: Instant) -> Actions {
        if req.method == Method::Ack {
            self.on_ack(now)
        } else {
            self.on_request_retransmission(now)
        }
    }

    /// The request was retransmitted: resend the last response (provisional in
    /// Proceeding, final in Completed); absorb it otherwise.
    pub fn on_request_retransmission(&mut self, _now: Instant) -> Actions {
        match self.state {
            ServerState::Proceeding | ServerState::Completed => self
                .last
                .iter()
                .map(|r| Action::Send(Message::Response(r.clone())))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The ACK for a non-2xx final response arrived (INVITE only): stop retransmitting,
    /// absorb further ACKs for Timer I. ACKs in other states are absorbed.
    pub fn on_ack(&mut self, now: Instant) -> Actions {
        if !self.invite || self.state != ServerState::Completed {
            return Vec::new();
        }
        self.g = None;
        self.h = None;
        if self.reliable {
            return self.terminate();
        }
        self.state = ServerState::Confirmed;
        self.i = Some(now + self.cfg.t4);
        Vec::new()
    }

    /// The TU sends a response. Returns the `Send` (and state changes), or nothing when the
    /// response is not allowed in the current state (a second final response, say).
    pub fn send_response(&mut self, resp: Response, now: Instant) -> Actions {
        let status = resp.status;
        let send = Action::Send(Message::Response(resp.clone()));
        match (self.invite, self.state) {
            (true, ServerState::Proceeding) => {
                if status < 200 {
                    self.last = Some(resp);
                    vec![send]
                } else if status < 300 {
                    // RFC 6026: keep the transaction to absorb INVITE retransmissions.
                    self.last = Some(resp);
                    self.state = ServerState::Accepted;
                    self.l = Some(now + self.cfg.timeout());
                    vec![send]
                } else {
                    self.last = Some(resp);
                    self.state = ServerState::Completed;
                    if !self.reliable {
                        self.g_interval = self.cfg.t1;
                        self.g = Some(now + self.g_interval);
                    }
                    self.h = Some(now + self.cfg.timeout());
                    vec![send]
                }
            }
            // Further 2xx responses (forked answers) pass through in Accepted.
            (true, ServerState::Accepted) if (200..300).contains(&status) => vec![send],
            (false, ServerState::Trying | ServerState::Proceeding) => {
                self.last = Some(resp);
                if status < 200 {
                    self.state = ServerState::Proceeding;
                    return vec![send];
                }
                self.state = ServerState::Completed;
                if self.reliable {
                    let mut actions = vec![send];
                    actions.extend(self.terminate());
                    return actions;
                }
                self.j = Some(now + self.cfg.timeout());
                vec![send]
            }
            _ => Vec::new(),
        }
    }

    /// Fires the timers that are due.
    pub fn on_timer(&mut self, now: Instant) -> Actions {
        let mut actions = Vec::new();
        if due(self.g, now) && self.state == ServerState::Completed {
            if let Some(r) = &self.last {
                actions.push(Action::Send(Message::Response(r.clone())));
            }
            self.g_interval = (self.g_interval * 2).min(self.cfg.t2);
            self.g = Some(now + self.g_interval);
        }
        if due(self.h, now) {
            // No ACK: the TU is told of the failure (RFC 3261 section 17.2.1).
            actions.push(Action::Timeout);
            actions.extend(self.terminate());
            return actions;
        }
        if due(self.i, now) || due(self.j, now) || due(self.l, now) {
            actions.extend(self.terminate());
        }
        actions
    }

    /// Sending a response failed (RFC 3261 section 17.2.4; RFC 3263 failover is the
    /// caller's): the transaction ends and the TU is told.
    pub fn on_transport_error(&mut self) -> Actions {
        if self.is_terminated() {
            return Vec::new();
        }
        let mut actions = vec![Action::TransportError];
        actions.extend(self.terminate());
        actions
    }

    fn terminate(&mut self) -> Actions {
        if self.state == ServerState::Terminated {
            return Vec::new();
        }
        self.state = ServerState::Terminated;
        self.g = None;
        self.h = None;
        self.i = None;
        self.j = None;
        self.l = None;
        vec![Action::Terminated]
    }
}
