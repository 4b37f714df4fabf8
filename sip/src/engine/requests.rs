//! Requests: the checks of section 16.3, REGISTER, lookups at the registrar, resolution of
//! other domains, targets (serial forking by q) and CANCEL.

use std::collections::VecDeque;
use std::net::SocketAddr;

use super::auth::Gate;
use super::{
    uri_addr, AuthCheck, AuthMode, Engine, Env, Hop, LocateError, MediaHook, Output, ServerEntry,
    TimerRef,
};
use crate::proxy::{
    forward_request, next_hop, preprocess_route, validate_request, ViaParams, ACCEPT, ALLOW,
};
use crate::registrar::{Binding, Flow, RegisterInfo, Transport};
use crate::transaction::TransactionKey;
use crate::transaction::{
    build_cancel, Actions, ClientState, ClientTransaction, ServerTransaction, TimerConfig,
};
use crate::{reply, Message, Method, Request, Uri};

impl<E: Env, M: MediaHook> Engine<E, M> {
    pub(super) fn on_request(
        &mut self,
        mut req: Request,
        from: Hop,
        source: Option<SocketAddr>,
        deliver: Option<Flow>,
    ) {
        if let Some(src) = source {
            crate::proxy::stamp_received(&mut req, src);
        }
        let now = self.now;
        let Some(key) = TransactionKey::server(&req) else {
            self.reply_stateless(&req, &from, 400, "Bad Via");
            return;
        };
        if req.method == Method::Ack {
            if let Some(entry) = self.servers.get_mut(&key) {
                let actions = entry.txn.on_ack(now);
                self.server_actions(&key, actions);
            } else if req
                .headers
                .to()
                .and_then(|t| t.tag().map(|tag| tag == self.cfg.tag))
                .unwrap_or(false)
            {
                // The ACK of a final response we sent statelessly (a challenge, a refusal):
                // nothing waits for it.
            } else {
                // The ACK of a 2xx: end to end, forwarded without a transaction.
                self.forward_stateless(req, deliver);
            }
            return;
        }
        if let Some(c) = self.completed.get(&key) {
            let (hop, bytes) = (c.hop.clone(), c.bytes.clone());
            self.send_bytes(hop, bytes, None);
            return;
        }
        if let Some(entry) = self.servers.get_mut(&key) {
            let actions = entry.txn.on_request_retransmission(now);
            self.server_actions(&key, actions);
            return;
        }
        if self.lingering_servers.contains_key(&key) {
            // An INVITE retransmitted after its 2xx went out: absorbed (RFC 6026).
            return;
        }
        if req.method == Method::Cancel {
            self.on_cancel(req, key, from);
            return;
        }
        let in_dialog = req.headers.to().is_some_and(|t| t.tag().is_some());
        let limit = if in_dialog {
            // Requests of calls already set up (BYE above all) get a reserve.
            self.cfg.max_transactions + self.cfg.max_transactions / 4
        } else {
            self.cfg.max_transactions
        };
        if self.servers.len() + self.clients.len() >= limit {
            self.counts.overload += 1;
            self.reply_stateless(&req, &from, 503, "Service Unavailable");
            return;
        }
        if let Err(rejection) = validate_request(&req, &self.local) {
            let resp = rejection.response(&req);
            self.reply_stateless_resp(resp, &from);
            return;
        }
        let mut txn = ServerTransaction::keyed(
            key.clone(),
            req.clone(),
            from.reliable(),
            now,
            TimerConfig::default(),
        );
        let mut first = Actions::new();
        if req.method == Method::Invite {
            first = txn.trying(now);
        }
        let dialog_creating = req.method == Method::Invite && !in_dialog;
        self.servers.insert(
            key.clone(),
            ServerEntry {
                txn,
                reply_to: from.clone(),
                clients: Vec::new(),
                targets: VecDeque::new(),
                request: None,
                record_route: dialog_creating,
                best: None,
                done: false,
                timer_c: None,
                auth: None,
                number: None,
                empty_lookup: None,
                arrived: now,
            },
        );
        self.server_actions(&key, first);

        let mut check = None;
        if self.cfg.auth == AuthMode::Digest && deliver.is_none() && matches!(from, Hop::Net { .. })
        {
            match self.admission(&key, &mut req, source) {
                Gate::Pass => {}
                Gate::Register(c) => check = Some(c),
                Gate::Done => return,
            }
        }
        self.route(key, req, from, source, deliver, check);
    }

    /// Routes a request that passed the checks: to a flow another node asked for, to the
    /// registrar, by the number its Request-URI names, to the bindings of an AOR of ours, or
    /// onward.
    pub(super) fn route(
        &mut self,
        key: TransactionKey,
        mut req: Request,
        from: Hop,
        source: Option<SocketAddr>,
        deliver: Option<Flow>,
        check: Option<Box<AuthCheck>>,
    ) {
        preprocess_route(&mut req, &self.local);
        if let Some(flow) = deliver {
            // Another node routed this request to a client flow we hold.
            let hop = self.flow_hop(&flow);
            let target = req.uri.clone();
            self.start_targets(&key, req, vec![(target, hop)]);
            return;
        }
        let routed = req.headers.routes().next().is_some();
        if !routed && req.method != Method::Register {
            // A telephone number (tel:, or a number of one of our domains): routed by the
            // number registry.
            if let Some(number) = self.plans.uri_number(&req.uri, &self.local.domains) {
                self.start_number_route(key, req, number);
                return;
            }
            if crate::numbers::is_tel(&req.uri) {
                self.respond_status(&key, 404, super::numbers::NOT_ROUTED);
                return;
            }
        }
        let ours = self.local.is_our_domain(&req.uri) || self.local.is_local_uri(&req.uri);
        if !routed && ours {
            match req.method {
                Method::Register => self.start_register(key, req, &from, source, check, None),
                Method::Options if req.uri.user().is_none() => {
                    // A keep-alive ping: answered statelessly, so pings hold no state.
                    let resp = reply(&req, 200, None, Some(&self.cfg.tag))
                        .with_header("Allow", ALLOW)
                        .with_header("Accept", ACCEPT);
                    self.respond_forget(&key, resp);
                }
                _ if req.uri.user().is_none() || self.local.is_local_uri(&req.uri) => {
                    self.respond_status(&key, 404, "Not Found");
                }
                _ => self.start_lookup(key, req),
            }
            return;
        }
        self.route_onward(key, req);
    }

    /// Routes a request onward: to the top Route, or to the Request-URI of another domain or
    /// host.
    pub(super) fn route_onward(&mut self, key: TransactionKey, req: Request) {
        let next = next_hop(&req);
        match self.hop_for_uri(&next) {
            Some(hop) => {
                let target = req.uri.clone();
                self.start_targets(&key, req, vec![(target, hop)]);
            }
            None if uri_addr(&next).is_none() => self.start_resolve(key, req, next),
            None => self.respond_status(&key, 404, "Not Found"),
        }
    }

    /// Whether another request may wait for the registrar or the resolver; answers 503
    /// when not.
    pub(super) fn may_wait(&mut self, key: &TransactionKey) -> bool {
        if self.pending >= self.cfg.max_pending {
            self.counts.overload += 1;
            self.respond_unavailable(key);
            return false;
        }
        true
    }

    /// Another domain: locate its servers by RFC 3263, then forward.
    fn start_resolve(&mut self, key: TransactionKey, req: Request, next: Uri) {
        if !self.may_wait(&key) {
            return;
        }
        if let Some(entry) = self.servers.get_mut(&key) {
            entry.request = Some(req);
        }
        self.pending += 1;
        let transport = match next.transport_param().as_deref() {
            Some("tcp") => Some(Transport::Tcp),
            Some("udp") => Some(Transport::Udp),
            Some("tls") => Some(Transport::Tls),
            _ => None,
        };
        self.out.push_back(Output::Resolve {
            key,
            host: next.host().to_string(),
            port: next.port(),
            transport,
        });
    }

    pub(super) fn on_resolved(
        &mut self,
        key: TransactionKey,
        result: Result<Vec<(Transport, SocketAddr)>, String>,
    ) {
        let Some(req) = self.waiting_request(&key) else {
            return;
        };
        let servers = match result {
            Ok(s) if !s.is_empty() => s,
            Ok(_) | Err(_) => {
                self.respond_status(&key, 404, "Not Found");
                return;
            }
        };
        let targets = servers
            .into_iter()
            .map(|(proto, addr)| {
                let hop = match self.peer_at(addr) {
                    Some(node) => Hop::Peer {
                        node,
                        deliver: None,
                    },
                    None => Hop::Net {
                        proto,
                        remote: addr,
                        conn: 0,
                    },
                };
                (req.uri.clone(), hop)
            })
            .collect();
        self.start_targets(&key, req, targets);
    }

    /// The request of a server transaction still waiting for its targets.
    fn waiting_request(&self, key: &TransactionKey) -> Option<Request> {
        self.servers
            .get(key)
            .filter(|e| !e.done)
            .and_then(|e| e.request.clone())
    }

    /// Sends a REGISTER to the registrar: the binding of its To's AOR, or of `aor` when
    /// given (an account registering its own number binds the account).
    pub(super) fn start_register(
        &mut self,
        key: TransactionKey,
        req: Request,
        from: &Hop,
        source: Option<SocketAddr>,
        auth: Option<Box<AuthCheck>>,
        aor: Option<String>,
    ) {
        if !self.may_wait(&key) {
            return;
        }
        let flow = match from {
            Hop::Net {
                proto,
                remote,
                conn,
            } => Some(Flow {
                node: self.node_name().to_string(),
                transport: *proto,
                remote: *remote,
                local: self.cfg.listen,
                conn_id: *conn,
            }),
            Hop::Peer { .. } => None,
        };
        let mut info = match RegisterInfo::from_request(&req, flow, source) {
            Ok(i) => i,
            Err(e) => {
                let resp = e.response(&req);
                self.respond(&key, resp);
                return;
            }
        };
        if let Some(aor) = aor {
            info.aor = aor;
        }
        if let Some(entry) = self.servers.get_mut(&key) {
            entry.request = Some(req);
        }
        self.pending += 1;
        self.out.push_back(Output::Register {
            key,
            info,
            policy: self.cfg.policy.clone(),
            auth,
        });
    }

    pub(super) fn on_registered(
        &mut self,
        key: TransactionKey,
        result: Result<Vec<Binding>, LocateError>,
        at_ms: u64,
    ) {
        // Taken: a final response is all that is left to send for it (and `respond` drops it).
        let Some(req) = self.servers.get_mut(&key).and_then(|e| e.request.take()) else {
            return;
        };
        match result {
            Ok(bindings) => {
                let mut resp = reply(&req, 200, None, Some(&self.cfg.tag));
                for b in &bindings {
                    resp = resp.with_header(
                        "Contact",
                        &format!("<{}>;expires={}", b.uri, b.remaining_secs(at_ms)),
                    );
                }
                self.counts.registered += 1;
                self.respond(&key, resp);
            }
            Err(e) => self.respond_error(&key, &req, e),
        }
    }

    pub(super) fn respond_error(&mut self, key: &TransactionKey, req: &Request, e: LocateError) {
        match e {
            LocateError::Rejected {
                status,
                reason,
                min_expires,
            } => {
                let mut resp = reply(req, status, Some(&reason), Some(&self.cfg.tag));
                if let Some(m) = min_expires {
                    resp = resp.with_header("Min-Expires", &m.to_string());
                }
                self.respond(key, resp);
            }
            LocateError::Unavailable(_) => self.respond_unavailable(key),
            LocateError::Unauthorized { stale } => self.auth_refused(key, stale),
        }
    }

    /// Looks up the bindings of the Request-URI's AOR.
    pub(super) fn start_lookup(&mut self, key: TransactionKey, req: Request) {
        let Some(aor) = req.uri.canonical_aor() else {
            self.respond_status(&key, 404, "Not Found");
            return;
        };
        self.lookup_aor(key, req, aor);
    }

    /// Looks up the bindings of `aor` for `req`, which goes to them.
    pub(super) fn lookup_aor(&mut self, key: TransactionKey, req: Request, aor: String) {
        if !self.may_wait(&key) {
            return;
        }
        if let Some(entry) = self.servers.get_mut(&key) {
            entry.request = Some(req);
        }
        self.pending += 1;
        self.out.push_back(Output::Lookup { key, aor });
    }

    pub(super) fn on_located(
        &mut self,
        key: TransactionKey,
        result: Result<Vec<Binding>, LocateError>,
    ) {
        let Some(req) = self.waiting_request(&key) else {
            return;
        };
        match result {
            Ok(mut bindings) if !bindings.is_empty() => {
                bindings.sort_by_key(|b| std::cmp::Reverse(b.q.unwrap_or(1000)));
                let mut targets = Vec::new();
                for b in bindings {
                    let Ok(uri) = Uri::parse(&b.uri) else {
                        continue;
                    };
                    if let Some(hop) = self.binding_hop(&b, &uri) {
                        targets.push((uri, hop));
                    }
                }
                if targets.is_empty() {
                    self.respond_status(&key, 480, "Temporarily Unavailable");
                } else {
                    self.start_targets(&key, req, targets);
                }
            }
            Ok(_) => {
                let (status, reason) = self
                    .servers
                    .get(&key)
                    .and_then(|e| e.empty_lookup)
                    .unwrap_or((404, "Not Found"));
                self.respond_status(&key, status, reason);
            }
            Err(e) => self.respond_error(&key, &req, e),
        }
    }

    /// This node's name, as flows record it (the `node` of [`Flow`]).
    fn node_name(&self) -> &str {
        &self.cfg.node
    }

    /// The other node whose SIP service is at `addr` (our SIP port on a member's address).
    pub(super) fn peer_at(&self, addr: SocketAddr) -> Option<String> {
        if addr.port() != self.cfg.listen.port() {
            return None;
        }
        self.env.node_at(addr)
    }

    /// Where to reach a registered contact: through the node holding its flow when that node
    /// is live (reverse outbound), else straight to the address it registered from.
    fn binding_hop(&self, b: &Binding, uri: &Uri) -> Option<Hop> {
        if let Some(flow) = &b.flow {
            if flow.node == self.cfg.node {
                return Some(self.flow_hop(flow));
            }
            if self.env.node_is_live(&flow.node) {
                return Some(Hop::Peer {
                    node: flow.node.clone(),
                    deliver: Some(flow.clone()),
                });
            }
        }
        let proto = match b.flow.as_ref().map(|f| f.transport) {
            Some(Transport::Tcp) => Transport::Tcp,
            Some(Transport::Tls) => Transport::Tls,
            _ => match uri.transport_param().as_deref() {
                Some("tcp") => Transport::Tcp,
                _ => Transport::Udp,
            },
        };
        let remote = b.received.or_else(|| uri_addr(uri))?;
        Some(Hop::Net {
            proto,
            remote,
            conn: 0,
        })
    }

    pub(super) fn flow_hop(&self, flow: &Flow) -> Hop {
        let conn = if flow.transport != Transport::Udp && self.env.has_flow(flow.conn_id) {
            flow.conn_id
        } else {
            0
        };
        Hop::Net {
            proto: flow.transport,
            remote: flow.remote,
            conn,
        }
    }

    fn hop_for_uri(&self, uri: &Uri) -> Option<Hop> {
        let addr = uri_addr(uri)?;
        if self.local.is_local_uri(uri) {
            return None;
        }
        if let Some(node) = self.peer_at(addr) {
            return Some(Hop::Peer {
                node,
                deliver: None,
            });
        }
        let proto = match uri.transport_param().as_deref() {
            Some("tcp") => Transport::Tcp,
            _ => Transport::Udp,
        };
        Some(Hop::Net {
            proto,
            remote: addr,
            conn: 0,
        })
    }

    fn start_targets(&mut self, key: &TransactionKey, req: Request, targets: Vec<(Uri, Hop)>) {
        let Some(entry) = self.servers.get_mut(key) else {
            return;
        };
        entry.targets = targets.into();
        // Media relay: an initial INVITE entering the farm gets its relay session first, and
        // is forwarded on `Resume::Forward`.
        let held = matches!(entry.reply_to, Hop::Net { .. })
            && self
                .media
                .as_mut()
                .is_some_and(|g| g.invite_out(key, &req, &entry.reply_to));
        entry.request = Some(req);
        if !held {
            self.try_next_target(key);
        }
    }

    /// Forwards the request to the next target; 480 (or the best response so far) when none
    /// is left.
    pub(super) fn try_next_target(&mut self, key: &TransactionKey) {
        let now = self.now;
        let Some(entry) = self.servers.get_mut(key) else {
            return;
        };
        let Some((target, hop)) = entry.targets.pop_front() else {
            match entry.best.take() {
                Some(resp) => self.respond(key, resp),
                None => self.respond_status(key, 480, "Temporarily Unavailable"),
            }
            return;
        };
        let Some(req) = entry.request.clone() else {
            return;
        };
        let record_route = entry.record_route;
        let inbound_proto = match &entry.reply_to {
            Hop::Net { proto, .. } => Some(*proto),
            Hop::Peer { .. } => None,
        };
        let via = self.via_for(&hop);
        let rr = record_route.then(|| {
            let proto = inbound_proto.unwrap_or(match &hop {
                Hop::Net { proto, .. } => *proto,
                Hop::Peer { .. } => Transport::Udp,
            });
            let call_id = req.headers.call_id().unwrap_or_default();
            self.record_route_value(proto, call_id)
        });
        let fwd = forward_request(&req, &target, &via, rr.as_deref(), &self.local);
        let is_invite = fwd.method == Method::Invite;
        let (txn, actions) = ClientTransaction::new(fwd, hop.reliable(), now);
        let ckey = txn.key().clone();
        if let Some(entry) = self.servers.get_mut(key) {
            entry.clients.push(ckey.clone());
        }
        self.clients.insert(
            ckey.clone(),
            super::ClientEntry {
                txn,
                server: Some(key.clone()),
                hop,
                cancel_pending: false,
            },
        );
        if is_invite {
            self.start_timer_c(key);
        }
        self.client_actions(&ckey, actions);
    }

    /// (Re)starts Timer C of an INVITE server transaction: when a branch starts, and on
    /// each provisional response but 100 (16.7 step 2). Only the deadline moves: the one
    /// entry in the timer heap, when it fires early, goes back in at the deadline (so a UAS
    /// sending provisional responses in a loop does not fill the heap).
    pub(super) fn start_timer_c(&mut self, key: &TransactionKey) {
        let at = self.now + self.cfg.timer_c;
        let Some(entry) = self.servers.get_mut(key) else {
            return;
        };
        if entry.txn.request().method != Method::Invite {
            return;
        }
        if entry.timer_c.replace(at).is_none() {
            self.push_timer(at, TimerRef::TimerC(super::Key(key.clone())));
        }
    }

    fn via_for(&self, hop: &Hop) -> ViaParams {
        let transport = match hop {
            Hop::Net {
                proto: Transport::Udp,
                ..
            } => Transport::Udp,
            Hop::Net {
                proto: Transport::Tls,
                ..
            } => Transport::Tls,
            _ => Transport::Tcp,
        };
        ViaParams {
            host: self.cfg.listen.ip().to_string(),
            port: self.cfg.listen.port(),
            transport,
            branch: None,
            rport: transport == Transport::Udp,
        }
    }

    /// Our Record-Route for a dialog of `call_id`; when we authenticate, signed for that
    /// Call-ID (`;ohs=`, see [`crate::digest::NonceKeys::route_tag`]), so that requests
    /// inside the dialog are told from forged ones.
    fn record_route_value(&self, proto: Transport, call_id: &str) -> String {
        let l = self.cfg.listen;
        let sig = match (&self.keys, self.cfg.auth) {
            (Some(keys), AuthMode::Digest) => {
                format!(";{}={}", super::auth::ROUTE_TAG, keys.route_tag(call_id))
            }
            _ => String::new(),
        };
        match proto {
            Transport::Udp => format!("<sip:{}:{};lr{sig}>", l.ip(), l.port()),
            Transport::Tcp => format!("<sip:{}:{};transport=tcp;lr{sig}>", l.ip(), l.port()),
            Transport::Tls => format!(
                "<sip:{}:{};transport=tls;lr{sig}>",
                l.ip(),
                self.cfg.tls_port.unwrap_or(5061)
            ),
        }
    }

    fn on_cancel(&mut self, req: Request, key: TransactionKey, from: Hop) {
        let invite = key.cancelled_invite();
        let pending: Option<Vec<TransactionKey>> = self
            .servers
            .get(&invite)
            .filter(|e| !e.done)
            .map(|e| e.clients.clone());
        let Some(clients) = pending else {
            self.reply_stateless(&req, &from, 481, "Call/Transaction Does Not Exist");
            return;
        };
        self.reply_stateless(&req, &from, 200, "OK");
        if let Some(e) = self.servers.get_mut(&invite) {
            e.targets.clear();
        }
        let nothing_forwarded = clients.is_empty();
        for ck in clients {
            self.cancel_client(&ck);
        }
        if nothing_forwarded {
            // Nothing forwarded yet (lookup in flight): answer the INVITE ourselves.
            self.respond_status(&invite, 487, "Request Terminated");
        }
    }

    pub(super) fn cancel_client(&mut self, ck: &TransactionKey) {
        let Some(c) = self.clients.get_mut(ck) else {
            return;
        };
        match c.txn.state() {
            ClientState::Proceeding => {}
            ClientState::Calling => {
                // 9.1: not before a provisional response, which it could overtake.
                c.cancel_pending = true;
                return;
            }
            // Its final response came already: nothing to cancel (16.10, pending branches).
            _ => return,
        }
        let cancel = c
            .txn
            .cancel_request()
            .unwrap_or_else(|| build_cancel(c.txn.request()));
        let hop = c.hop.clone();
        let (txn, actions) = ClientTransaction::new(cancel, hop.reliable(), self.now);
        let k = txn.key().clone();
        self.clients.insert(
            k.clone(),
            super::ClientEntry {
                txn,
                server: None,
                hop,
                cancel_pending: false,
            },
        );
        self.client_actions(&k, actions);
    }

    fn forward_stateless(&mut self, mut req: Request, deliver: Option<Flow>) {
        preprocess_route(&mut req, &self.local);
        let hop = match deliver {
            Some(flow) => Some(self.flow_hop(&flow)),
            None => self.hop_for_uri(&next_hop(&req)),
        };
        let Some(hop) = hop else {
            // An ACK with nowhere to go: dropped (the UAS retransmits its 2xx).
            return;
        };
        let target = req.uri.clone();
        let via = self.via_for(&hop);
        let fwd = forward_request(&req, &target, &via, None, &self.local);
        self.send_to(&hop, Message::Request(fwd), None);
    }
}
