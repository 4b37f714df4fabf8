//! Tests of the engine, with no sockets: messages in at a chosen time, outputs checked.
//!
//! The node under test, `node1`, serves `example.test` on 192.0.2.1:5060; another node,
//! `node2`, is live on 192.0.2.2:5060. Clients and servers are on 198.51.100.0/24. Nothing is
//! ever contacted: every message the engine sends is an [`Output::Send`] parsed back here.
//!
//! This file holds the harness; `tests_routing.rs` the tests of registration, routing and
//! responses; `tests_calls.rs` those of forking, CANCEL, ACK, retransmissions, timers,
//! transport errors, overload, lingering and the media hook.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::registrar::{Binding, Flow, Transport};
use crate::transaction::TransactionKey;
use crate::{parse, reply, Message, Request, Response};

pub(super) const ME: &str = "node1";
pub(super) const DOMAIN: &str = "example.test";
/// The wall clock (Unix ms) of the registrar's answers.
pub(super) const NOW_MS: u64 = 1_700_000_000_000;

pub(super) fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}
/// Where the node under test listens.
pub(super) fn listen() -> SocketAddr {
    sa("192.0.2.1:5060")
}
/// The SIP address of node2.
pub(super) fn node2() -> SocketAddr {
    sa("192.0.2.2:5060")
}
/// The caller.
pub(super) fn uac() -> SocketAddr {
    sa("198.51.100.10:5060")
}
/// The callee's first contact.
pub(super) fn uas() -> SocketAddr {
    sa("198.51.100.20:5062")
}
/// The callee's second contact.
pub(super) fn uas2() -> SocketAddr {
    sa("198.51.100.21:5062")
}

pub(super) fn udp(remote: SocketAddr) -> Hop {
    Hop::Net {
        proto: Transport::Udp,
        remote,
        conn: 0,
    }
}

pub(super) fn tcp(remote: SocketAddr, conn: u64) -> Hop {
    Hop::Net {
        proto: Transport::Tcp,
        remote,
        conn,
    }
}

/// The world as the engine sees it: which node is at which address, who is live, which TCP
/// flows are open here.
#[derive(Default)]
pub(super) struct TestEnv {
    pub nodes: HashMap<IpAddr, String>,
    pub live: HashSet<String>,
    pub flows: HashSet<u64>,
    /// What `admit` answers (open when unset).
    pub admit: std::cell::Cell<Option<crate::digest::Admit>>,
    /// The addresses reported by `auth_failed`.
    pub failed: std::cell::RefCell<Vec<IpAddr>>,
}

impl TestEnv {
    /// node2 live at 192.0.2.2, no flow open.
    pub fn farm() -> TestEnv {
        let mut env = TestEnv::default();
        env.nodes.insert(node2().ip(), "node2".into());
        env.live.insert("node2".into());
        env
    }
}

impl Env for TestEnv {
    fn node_at(&self, addr: SocketAddr) -> Option<String> {
        self.nodes.get(&addr.ip()).cloned()
    }
    fn node_is_live(&self, name: &str) -> bool {
        self.live.contains(name)
    }
    fn has_flow(&self, conn: u64) -> bool {
        self.flows.contains(&conn)
    }
    fn admit(&self, _ip: IpAddr) -> crate::digest::Admit {
        self.admit.get().unwrap_or(crate::digest::Admit::Open)
    }
    fn auth_failed(&self, ip: IpAddr) {
        self.failed.borrow_mut().push(ip);
    }
}

/// An engine, its clock and what it sends.
pub(super) struct H {
    pub engine: Engine<TestEnv>,
    pub t0: Instant,
    pub now: Instant,
}

impl H {
    pub fn new() -> H {
        H::with(|_| {})
    }

    /// An engine whose defaults `f` changes.
    pub fn with(f: impl FnOnce(&mut EngineConfig)) -> H {
        let mut cfg = EngineConfig::new(ME, DOMAIN, listen());
        f(&mut cfg);
        let t0 = Instant::now();
        H {
            engine: Engine::new(cfg, TestEnv::farm(), None, t0),
            t0,
            now: t0,
        }
    }

    pub fn drain(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.engine.poll_output()).collect()
    }

    /// Handles `input` now; what the engine asks for.
    pub fn input(&mut self, input: Input<Infallible>) -> Vec<Output> {
        self.engine.handle(self.now, input);
        self.drain()
    }

    pub fn message(&mut self, from: Hop, text: &str) -> Vec<Output> {
        let source = match &from {
            Hop::Net { remote, .. } => Some(*remote),
            Hop::Peer { .. } => None,
        };
        self.input(Input::Message {
            bytes: Bytes::copy_from_slice(text.as_bytes()),
            from,
            source,
            deliver: None,
        })
    }

    /// A message over UDP from `from`.
    pub fn udp(&mut self, from: SocketAddr, text: &str) -> Vec<Output> {
        self.message(udp(from), text)
    }

    /// Moves the clock to `ms` after the start, firing every timer due on the way at its
    /// own deadline (as the node's runtime does); everything sent meanwhile.
    pub fn run_to(&mut self, ms: u64) -> Vec<Output> {
        let end = self.t0 + Duration::from_millis(ms);
        let mut outs = Vec::new();
        while let Some(t) = self.engine.poll_timeout().filter(|t| *t <= end) {
            self.now = self.now.max(t);
            self.engine.handle_timeout(self.now);
            outs.extend(self.drain());
        }
        self.now = self.now.max(end);
        self.engine.handle_timeout(self.now);
        outs.extend(self.drain());
        outs
    }

    /// Moves the clock `ms` on without firing timers (input times).
    pub fn at(&mut self, ms: u64) {
        self.now = self.t0 + Duration::from_millis(ms);
    }
}

/// One message the engine sent, parsed back.
#[derive(Debug, Clone)]
pub(super) struct Sent {
    pub hop: Hop,
    pub bytes: Bytes,
    pub msg: Message,
    pub client: Option<TransactionKey>,
}

impl Sent {
    pub fn req(&self) -> &Request {
        match &self.msg {
            Message::Request(r) => r,
            Message::Response(r) => panic!("a request expected, got {} {}", r.status, r.reason),
        }
    }
    pub fn resp(&self) -> &Response {
        match &self.msg {
            Message::Response(r) => r,
            Message::Request(r) => panic!("a response expected, got {}", r.method.as_str()),
        }
    }
    pub fn status(&self) -> u16 {
        self.resp().status
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.msg.headers().get(name)
    }
    pub fn vias(&self) -> Vec<String> {
        self.msg
            .headers()
            .values("Via")
            .map(str::to_owned)
            .collect()
    }
    /// The text, for the messages of failed assertions.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
    /// The branch of the top Via.
    pub fn branch(&self) -> String {
        self.msg
            .headers()
            .via_top()
            .and_then(|v| v.branch())
            .unwrap()
            .to_string()
    }
}

/// The sends among `outs`, parsed.
pub(super) fn sends(outs: &[Output]) -> Vec<Sent> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send { hop, bytes, client } => Some(Sent {
                hop: hop.clone(),
                bytes: bytes.clone(),
                msg: parse(bytes).unwrap_or_else(|e| panic!("unparsable output: {e}")),
                client: client.clone(),
            }),
            _ => None,
        })
        .collect()
}

/// The only output, which must be a send.
pub(super) fn one(outs: Vec<Output>) -> Sent {
    assert_eq!(outs.len(), 1, "one output expected: {outs:#?}");
    sends(&outs).pop().expect("a send")
}

/// The requests of `method` sent.
pub(super) fn requests(outs: &[Output], method: Method) -> Vec<Sent> {
    sends(outs)
        .into_iter()
        .filter(|s| matches!(&s.msg, Message::Request(r) if r.method == method))
        .collect()
}

/// The responses sent.
pub(super) fn responses(outs: &[Output]) -> Vec<Sent> {
    sends(outs)
        .into_iter()
        .filter(|s| matches!(s.msg, Message::Response(_)))
        .collect()
}

/// A request as a client writes it; the defaults are alice's INVITE to bob over UDP.
#[derive(Clone)]
pub(super) struct Req {
    method: String,
    uri: String,
    via: String,
    call: String,
    cseq: u32,
    to: String,
    from: String,
    extra: Vec<String>,
    max_forwards: Option<u32>,
}

pub(super) fn req(method: &str, uri: &str) -> Req {
    Req {
        method: method.into(),
        uri: uri.into(),
        via: format!(
            "SIP/2.0/UDP {};branch=z9hG4bK{}1;rport",
            uac(),
            method.to_ascii_lowercase()
        ),
        call: "call-1@198.51.100.10".into(),
        cseq: 1,
        to: "<sip:bob@example.test>".into(),
        from: "<sip:alice@example.test>;tag=a1".into(),
        extra: Vec::new(),
        max_forwards: Some(70),
    }
}

impl Req {
    pub fn branch(mut self, b: &str) -> Req {
        self.via = format!("SIP/2.0/UDP {};branch={b};rport", uac());
        self
    }
    pub fn via(mut self, v: &str) -> Req {
        self.via = v.into();
        self
    }
    pub fn call(mut self, c: &str) -> Req {
        self.call = c.into();
        self
    }
    pub fn cseq(mut self, n: u32) -> Req {
        self.cseq = n;
        self
    }
    pub fn to(mut self, to: &str) -> Req {
        self.to = to.into();
        self
    }
    pub fn from(mut self, from: &str) -> Req {
        self.from = from.into();
        self
    }
    pub fn max_forwards(mut self, n: Option<u32>) -> Req {
        self.max_forwards = n;
        self
    }
    /// Adds a header line (`Name: value`).
    pub fn header(mut self, line: &str) -> Req {
        self.extra.push(line.into());
        self
    }
    /// The request as text (the CSeq method is the request's).
    pub fn text(&self) -> String {
        let mut s = format!(
            "{} {} SIP/2.0\r\nVia: {}\r\n",
            self.method, self.uri, self.via
        );
        if let Some(n) = self.max_forwards {
            s.push_str(&format!("Max-Forwards: {n}\r\n"));
        }
        s.push_str(&format!("From: {}\r\n", self.from));
        s.push_str(&format!("To: {}\r\n", self.to));
        s.push_str(&format!("Call-ID: {}\r\n", self.call));
        s.push_str(&format!("CSeq: {} {}\r\n", self.cseq, self.method));
        s.push_str(&format!("Contact: <sip:alice@{}>\r\n", uac()));
        for line in &self.extra {
            s.push_str(line);
            s.push_str("\r\n");
        }
        s.push_str("Content-Length: 0\r\n\r\n");
        s
    }
}

/// The answer of a UAS to a request it received: Vias, From, To (tagged `uas`), Call-ID,
/// CSeq and Record-Route copied, with its Contact.
pub(super) fn answer(req: &Request, code: u16) -> String {
    let mut resp = reply(req, code, None, (code > 100).then_some("uas"));
    for rr in req.headers.values("Record-Route") {
        resp.headers.push("Record-Route", rr);
    }
    if (200..300).contains(&code) {
        resp.headers
            .push("Contact", &format!("<sip:bob@{}>", uas()));
    }
    String::from_utf8(resp.to_bytes().to_vec()).unwrap()
}

/// A binding of bob's, valid for an hour.
pub(super) fn binding(
    uri: &str,
    q: Option<u16>,
    flow: Option<Flow>,
    received: Option<SocketAddr>,
) -> Binding {
    Binding {
        uri: uri.into(),
        expires_at_ms: NOW_MS + 3_600_000,
        q,
        call_id: "reg-1".into(),
        cseq: 1,
        flow,
        received,
        updated_at_ms: NOW_MS,
    }
}

/// bob's plain binding at `addr` (no flow: reached straight at its address).
pub(super) fn plain(addr: SocketAddr, q: Option<u16>) -> Binding {
    binding(&format!("sip:bob@{addr}"), q, None, Some(addr))
}

/// The lookup among `outs`.
pub(super) fn lookup_of(outs: &[Output]) -> (TransactionKey, String) {
    outs.iter()
        .find_map(|o| match o {
            Output::Lookup { key, aor } => Some((key.clone(), aor.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("a lookup expected: {outs:#?}"))
}

/// Sends `invite` from the caller (UDP) and answers its lookup with `bindings`: the key of
/// the INVITE's server transaction and what the engine sent after the lookup.
pub(super) fn call(
    h: &mut H,
    invite: &Req,
    bindings: Vec<Binding>,
) -> (TransactionKey, Vec<Output>) {
    let outs = h.udp(uac(), &invite.text());
    let trying = responses(&outs);
    assert_eq!(trying.len(), 1, "100 Trying at once: {outs:#?}");
    assert_eq!(trying[0].status(), 100);
    let (key, aor) = lookup_of(&outs);
    assert_eq!(aor, "bob@example.test");
    let outs = h.input(Input::Located {
        key: key.clone(),
        result: Ok(bindings),
    });
    (key, outs)
}

/// The one INVITE forwarded among `outs`.
pub(super) fn forwarded_invite(outs: &[Output]) -> Sent {
    let mut inv = requests(outs, Method::Invite);
    assert_eq!(inv.len(), 1, "one INVITE forwarded: {outs:#?}");
    inv.pop().unwrap()
}
