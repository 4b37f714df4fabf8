//! Responses (section 16.7), the transactions' actions, timers and what goes out.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use super::{
    Completed, Engine, Env, Hop, Key, MediaHook, Output, TimerRef, MAX_COMPLETED, MAX_LINGERING,
    TIMER_J, TIMER_K,
};
use crate::proxy::{forward_response, is_our_via, rank};
use crate::registrar::Transport;
use crate::transaction::{Action, Actions, ClientState, ServerState, TransactionKey};
use crate::{reply, Message, Method, Request, Response};

impl<E: Env, M: MediaHook> Engine<E, M> {
    pub(super) fn on_response(&mut self, resp: Response) {
        let now = self.now;
        if let Some(key) = TransactionKey::from_response(&resp) {
            if let Some(c) = self.clients.get_mut(&key) {
                let actions = c.txn.on_response(resp, now);
                self.client_actions(&key, actions);
                let cancel_now = self.clients.get_mut(&key).is_some_and(|c| {
                    c.txn.state() == ClientState::Proceeding
                        && std::mem::take(&mut c.cancel_pending)
                });
                if cancel_now {
                    self.cancel_client(&key);
                }
                return;
            }
            if let Some(server) = self.lingering_clients.get(&key) {
                // A finished client transaction: a retransmitted 2xx of an INVITE goes up
                // (RFC 6026), anything else is absorbed.
                if key.method == Method::Invite && (200..300).contains(&resp.status) {
                    if let Some(server) = server.clone() {
                        self.upstream(&server, resp);
                    }
                }
                return;
            }
        }
        // No transaction (a 2xx retransmission after ours ended, or a stray): forward by Via.
        if !is_our_via(&resp, &self.local) {
            return;
        }
        if let Some(up) = forward_response(&resp) {
            if let Some(hop) = self.response_hop(&up) {
                self.send_to(&hop, Message::Response(up), None);
            }
        }
    }

    /// Where a response goes by its top Via (RFC 3261 18.2.2 with RFC 3581).
    fn response_hop(&self, resp: &Response) -> Option<Hop> {
        let via = resp.headers.via_top()?;
        let (host, port) = via.response_target();
        let ip: IpAddr = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?;
        let addr = SocketAddr::new(ip, port);
        if let Some(node) = self.peer_at(addr) {
            return Some(Hop::Peer {
                node,
                deliver: None,
            });
        }
        let proto = if via.is_reliable() {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        Some(Hop::Net {
            proto,
            remote: addr,
            conn: 0,
        })
    }

    /// A response of a client transaction goes up to its server transaction (16.7).
    fn upstream(&mut self, server: &TransactionKey, resp: Response) {
        let Some(mut up) = forward_response(&resp) else {
            return;
        };
        let code = up.status;
        let Some(entry) = self.servers.get_mut(server) else {
            // The server transaction has its 2xx already (it lingers): a further 2xx (a
            // retransmission or another fork's answer) passes on to where the first went.
            if (200..300).contains(&code) {
                if let Some(hop) = self.lingering_servers.get(server).cloned() {
                    self.send_to(&hop, Message::Response(up), None);
                }
            }
            return;
        };
        if entry.done {
            // A 2xx after the transaction ended (forking race): pass it on statelessly.
            if (200..300).contains(&code) {
                let hop = entry.reply_to.clone();
                self.send_to(&hop, Message::Response(up), None);
            }
            return;
        }
        if code < 200 {
            if code == 100 {
                return; // hop by hop: we sent our own
            }
            let actions = entry.txn.send_response(up, self.now);
            self.server_actions(server, actions);
            self.start_timer_c(server);
            return;
        }
        if (200..300).contains(&code) || code >= 600 || entry.targets.is_empty() {
            if code >= 300 {
                // Keep the best final response of all tries (16.7 step 6).
                if let Some(best) = entry.best.take() {
                    if rank(best.status) < rank(up.status) {
                        up = best;
                    }
                }
            }
            self.respond(server, up);
            return;
        }
        // A failure with more targets left: remember it and try the next.
        if entry
            .best
            .as_ref()
            .is_none_or(|b| rank(up.status) < rank(b.status))
        {
            entry.best = Some(up);
        }
        self.try_next_target(server);
    }

    /// A client transaction's request could not be sent: a transport error (8.1.3.1), which
    /// the proxy answers upstream as a 503 at once (16.7 step 4 treats it as a 503).
    pub(super) fn on_send_failed(&mut self, client: &TransactionKey) {
        let Some(c) = self.clients.get_mut(client) else {
            return;
        };
        if !matches!(c.txn.state(), ClientState::Calling | ClientState::Trying) {
            // The request was answered already (a failed ACK or retransmission): the
            // transaction's own timers and the far end's retransmissions deal with it.
            return;
        }
        let actions = c.txn.on_transport_error();
        self.client_actions(client, actions);
    }

    pub(super) fn respond_status(&mut self, key: &TransactionKey, status: u16, reason: &str) {
        let Some(e) = self.servers.get(key) else {
            return;
        };
        let tag = (status > 100).then_some(self.cfg.tag.as_str());
        let resp = reply(e.txn.request(), status, Some(reason), tag);
        self.respond(key, resp);
    }

    /// Answers the request of `key` and forgets it at once, as a stateless UAS does (RFC 3261
    /// section 8.2.7): no transaction keeps a slot, a timer or the response, and a
    /// retransmitted request is answered again the same way (its ACK, for an INVITE, is
    /// absorbed by our To tag). For what a flood of unauthenticated requests would otherwise
    /// fill the tables with: challenges, refusals of the checks, the 200 to a keep-alive
    /// OPTIONS.
    pub(super) fn respond_forget(&mut self, key: &TransactionKey, resp: Response) {
        if let (true, Some(gate)) = (resp.status >= 200, self.media.as_mut()) {
            gate.final_response(key, resp.status);
        }
        if self.servers.get(key).is_none_or(|e| e.done) {
            // Nothing waits, or the request was answered already and its transaction
            // absorbs the retransmissions.
            return;
        }
        let Some(entry) = self.servers.remove(key) else {
            return;
        };
        if resp.status >= 200 {
            let took = self.now.saturating_duration_since(entry.arrived);
            self.counts.response_time(&entry.txn.request().method, took);
        }
        self.counts.code(resp.status);
        self.send_bytes(entry.reply_to, resp.to_bytes(), None);
    }

    /// [`Self::respond_forget`] with a status and reason.
    pub(super) fn respond_status_forget(
        &mut self,
        key: &TransactionKey,
        status: u16,
        reason: &str,
    ) {
        let Some(e) = self.servers.get(key) else {
            return;
        };
        let resp = reply(
            e.txn.request(),
            status,
            Some(reason),
            Some(self.cfg.tag.as_str()),
        );
        self.respond_forget(key, resp);
    }

    /// 503 with Retry-After: overload, or the next hop (the registrar ring, another node)
    /// cannot be reached now.
    pub(super) fn respond_unavailable(&mut self, key: &TransactionKey) {
        let Some(e) = self.servers.get(key) else {
            return;
        };
        let resp = self.unavailable(e.txn.request());
        self.respond(key, resp);
    }

    pub(super) fn unavailable(&self, req: &Request) -> Response {
        reply(req, 503, Some("Service Unavailable"), Some(&self.cfg.tag))
            .with_header("Retry-After", &self.cfg.retry_after.to_string())
    }

    pub(super) fn respond(&mut self, key: &TransactionKey, resp: Response) {
        if let (true, Some(gate)) = (resp.status >= 200, self.media.as_mut()) {
            // Media relay: a failed initial INVITE frees its relay session.
            gate.final_response(key, resp.status);
        }
        let code = resp.status;
        let Some(entry) = self.servers.get_mut(key) else {
            return;
        };
        if entry.done {
            return;
        }
        if code >= 200 {
            let took = self.now.saturating_duration_since(entry.arrived);
            self.counts.response_time(&entry.txn.request().method, took);
            entry.done = true;
            entry.request = None;
            entry.targets.clear();
            if entry.txn.request().method != Method::Invite && !entry.reply_to.reliable() {
                let hop = entry.reply_to.clone();
                let bytes = resp.to_bytes();
                // The transaction's own key moves to the completed table (no copy of its
                // strings).
                let Some((key, _)) = self.servers.remove_entry(key) else {
                    return;
                };
                self.counts.code(code);
                self.send_bytes(hop.clone(), bytes.clone(), None);
                let done = Completed { bytes, hop };
                let cost = done.cost(&key);
                if self.completed.len() < MAX_COMPLETED
                    && self.completed_bytes + cost <= self.cfg.max_completed_bytes
                {
                    self.completed_bytes += cost;
                    if let Some(old) = self.completed.insert(key.clone(), done) {
                        self.completed_bytes -= old.cost(&key);
                    }
                    let at = self.now + TIMER_J;
                    self.push_timer(at, TimerRef::Completed(Key(key)));
                }
                return;
            }
        }
        let actions = entry.txn.send_response(resp, self.now);
        self.counts.code(code);
        self.server_actions(key, actions);
        self.linger_server(key);
    }

    /// An INVITE server transaction that sent its 2xx (Accepted) only absorbs retransmitted
    /// INVITEs until Timer L: it moves to the lean table.
    fn linger_server(&mut self, key: &TransactionKey) {
        let accepted = self
            .servers
            .get(key)
            .is_some_and(|e| e.txn.state() == ServerState::Accepted);
        if !accepted {
            return;
        }
        let Some(entry) = self.servers.remove(key) else {
            return;
        };
        if self.lingering_servers.len() < MAX_LINGERING {
            self.lingering_servers.insert(key.clone(), entry.reply_to);
            let at = self.now + TIMER_J;
            self.push_timer(at, TimerRef::LingerServer(Key(key.clone())));
        }
    }

    /// A client transaction with its final response (an INVITE after a 2xx, RFC 6026
    /// Accepted; a non-INVITE in Completed) only absorbs retransmitted responses until Timer
    /// M or K: it moves to the lean table.
    fn linger_client(&mut self, key: &TransactionKey) {
        let wait = match self.clients.get(key).map(|c| c.txn.state()) {
            Some(ClientState::Accepted) => TIMER_J,
            Some(ClientState::Completed) if key.method != Method::Invite => TIMER_K,
            _ => return,
        };
        let Some(entry) = self.clients.remove(key) else {
            return;
        };
        if self.lingering_clients.len() < MAX_LINGERING {
            self.lingering_clients.insert(key.clone(), entry.server);
            let at = self.now + wait;
            self.push_timer(at, TimerRef::LingerClient(Key(key.clone())));
        }
    }

    pub(super) fn server_actions(&mut self, key: &TransactionKey, actions: Actions) {
        for a in actions {
            match a {
                Action::Send(m) => {
                    if let Some(hop) = self.servers.get(key).map(|e| e.reply_to.clone()) {
                        self.send_to(&hop, m, None);
                    }
                }
                Action::Terminated => {
                    self.servers.remove(key);
                    return;
                }
                Action::Deliver(_) | Action::Timeout | Action::TransportError => {}
            }
        }
        if let Some(t) = self.servers.get(key).and_then(|e| e.txn.next_timer()) {
            self.push_timer(t, TimerRef::Server(Key(key.clone())));
        }
    }

    pub(super) fn client_actions(&mut self, key: &TransactionKey, actions: Actions) {
        for a in actions {
            match a {
                Action::Send(m) => {
                    if let Some(hop) = self.clients.get(key).map(|c| c.hop.clone()) {
                        self.send_to(&hop, m, Some(key));
                    }
                }
                Action::Deliver(resp) => {
                    let Some((server, req)) = self
                        .clients
                        .get(key)
                        .and_then(|c| c.server.clone().map(|s| (s, c.txn.request())))
                    else {
                        continue;
                    };
                    // A 503 from downstream says that server cannot serve, not that we
                    // cannot: it goes up as a 500 (16.7). Our own 503s (an unreachable next
                    // hop, overload) keep their Retry-After.
                    let resp = if resp.status == 503 {
                        reply(req, 500, Some("Server Internal Error"), Some(&self.cfg.tag))
                    } else {
                        resp
                    };
                    self.upstream(&server, resp);
                }
                Action::Timeout | Action::TransportError => {
                    let timeout = matches!(a, Action::Timeout);
                    if let Some((server, req)) = self
                        .clients
                        .get(key)
                        .and_then(|c| c.server.clone().map(|s| (s, c.txn.request().clone())))
                    {
                        // Our own Via is on top, so `upstream` strips it like any response.
                        let resp = if timeout {
                            reply(&req, 408, None, Some(&self.cfg.tag))
                        } else {
                            self.counts.unreachable += 1;
                            self.unavailable(&req)
                        };
                        self.upstream(&server, resp);
                    }
                }
                Action::Terminated => {
                    self.clients.remove(key);
                    return;
                }
            }
        }
        self.linger_client(key);
        if let Some(t) = self.clients.get(key).and_then(|c| c.txn.next_timer()) {
            self.push_timer(t, TimerRef::Client(Key(key.clone())));
        }
    }

    pub(super) fn fire_timers(&mut self) {
        let now = self.now;
        while let Some(std::cmp::Reverse((at, _, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(std::cmp::Reverse((_, _, r))) = self.timers.pop() else {
                break;
            };
            match r {
                TimerRef::Server(Key(k)) => {
                    let due = self
                        .servers
                        .get(&k)
                        .and_then(|e| e.txn.next_timer())
                        .is_some_and(|t| t <= now);
                    if due {
                        let actions = self
                            .servers
                            .get_mut(&k)
                            .map(|e| e.txn.on_timer(now))
                            .unwrap_or_default();
                        self.server_actions(&k, actions);
                    }
                }
                TimerRef::Client(Key(k)) => {
                    let due = self
                        .clients
                        .get(&k)
                        .and_then(|c| c.txn.next_timer())
                        .is_some_and(|t| t <= now);
                    if due {
                        let actions = self
                            .clients
                            .get_mut(&k)
                            .map(|c| c.txn.on_timer(now))
                            .unwrap_or_default();
                        self.client_actions(&k, actions);
                    }
                }
                TimerRef::Completed(Key(k)) => {
                    if let Some(old) = self.completed.remove(&k) {
                        self.completed_bytes -= old.cost(&k);
                    }
                }
                TimerRef::LingerServer(Key(k)) => {
                    self.lingering_servers.remove(&k);
                }
                TimerRef::LingerClient(Key(k)) => {
                    self.lingering_clients.remove(&k);
                }
                TimerRef::TimerC(Key(k)) => {
                    let deadline = self
                        .servers
                        .get(&k)
                        .filter(|e| !e.done)
                        .and_then(|e| e.timer_c);
                    if let Some(later) = deadline.filter(|t| *t > now) {
                        // Restarted by a provisional response or a new branch.
                        self.push_timer(later, TimerRef::TimerC(Key(k)));
                        continue;
                    }
                    let clients = self
                        .servers
                        .get(&k)
                        .filter(|e| !e.done)
                        .map(|e| e.clients.clone());
                    if let Some(clients) = clients {
                        for ck in clients {
                            self.cancel_client(&ck);
                        }
                        self.respond_status(&k, 408, "Request Timeout");
                    }
                }
            }
        }
    }

    pub(super) fn reply_stateless(&mut self, req: &Request, to: &Hop, status: u16, reason: &str) {
        let mut resp = reply(req, status, Some(reason), Some(&self.cfg.tag));
        if status == 503 {
            resp = resp.with_header("Retry-After", &self.cfg.retry_after.to_string());
        }
        self.reply_stateless_resp(resp, to);
    }

    pub(super) fn reply_stateless_resp(&mut self, resp: Response, to: &Hop) {
        self.counts.code(resp.status);
        self.send_to(to, Message::Response(resp), None);
    }

    pub(super) fn send_to(&mut self, hop: &Hop, msg: Message, client: Option<&TransactionKey>) {
        self.send_bytes(hop.clone(), msg.to_bytes(), client.cloned());
    }

    pub(super) fn send_bytes(&mut self, hop: Hop, bytes: Bytes, client: Option<TransactionKey>) {
        self.out.push_back(Output::Send { hop, bytes, client });
    }
}
