//! Proxy helpers (RFC 3261 section 16, RFC 3581) as pure functions.
//!
//! # Call order for a request
//!
//! 1. Parse; stamp the top Via with the source address ([`stamp_received`]).
//! 2. ACK for a 2xx, CANCEL and retransmissions go through the transaction table first
//!    (see [`super::transaction`]); a new request starts a server transaction.
//! 3. [`validate_request`] (section 16.3): answer its [`Rejection`] if any.
//! 4. [`preprocess_route`] (section 16.4): pops our own Route, undoes strict routing.
//! 5. Decide the target(s): [`is_for_us`] tells whether the Request-URI is in our domain (look
//!    the AOR up at the registrar) or elsewhere (forward to the Request-URI as is).
//! 6. For each target (one, or several in turn with [`SerialFork`]):
//!    [`forward_request`] builds the request to send (section 16.6), its branch computed by
//!    [`compute_branch`]; send it in a client transaction to [`next_hop`].
//! 7. Each response the client transaction delivers goes to [`SerialFork::on_response`]
//!    (or, with a single target and no fork bookkeeping, to [`forward_response`]); a client
//!    transaction's `Timeout` or `TransportError` goes to [`SerialFork::on_failure`]. The
//!    caller's own Timer C (section 16.6 step 11, more than 3 minutes after the last
//!    provisional response) is also an `on_failure(408)` after cancelling the branch.
//!
//! # CANCEL (section 16.10)
//!
//! A CANCEL gets its own server transaction and is answered 200 at once when
//! [`TransactionKey::cancelled_invite`](super::transaction::TransactionKey::cancelled_invite)
//! finds the INVITE's server transaction (481 otherwise); that INVITE is answered 487, and
//! each of its pending client transactions sends the request from
//! [`ClientTransaction::cancel_request`](super::transaction::ClientTransaction::cancel_request)
//! in a new non-INVITE client transaction (or, when no provisional response has arrived yet,
//! once one does).
//!
//! # Branches and loop detection
//!
//! Our branch is `z9hG4bKoh`, then 16 hex digits hashing the received request's transaction
//! identity (top Via branch and sent-by, Call-ID, CSeq number, From tag, and the target),
//! then `.` and 16 hex digits hashing the fields section 16.6 step 8 lists for loop
//! detection (the Request-URI as received, To tag, From tag, Call-ID, CSeq number,
//! Proxy-Require and Proxy-Authorization). A retransmission, and the CANCEL or non-2xx ACK
//! of an INVITE forwarded statelessly, get the same branch as the original; a different
//! target gets a different branch. A request that comes back carrying one of our Vias whose
//! loop part equals the loop hash of the request as now received has looped (482); otherwise
//! it is spiralling (for example, retargeted by another proxy) and is processed again.

use std::collections::VecDeque;
use std::net::SocketAddr;

use xxhash_rust::xxh3::Xxh3;

use super::headers::HeaderName;
use super::message::{Method, Request, Response};
use super::registrar::Transport;
use super::typed::NameAddr;
use super::uri::Uri;

/// The start of every branch we generate.
pub const BRANCH_PREFIX: &str = "z9hG4bKoh";

/// The Max-Forwards inserted when a request has none (RFC 3261 section 16.6 step 3).
pub const DEFAULT_MAX_FORWARDS: u32 = 70;

/// The addresses and domains this proxy answers for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalAddrs {
    /// `(host, port)` pairs a URI or Via may use to name this node: its IP addresses and
    /// host names with each SIP port. Hosts compare case-insensitively; IPv6 addresses are
    /// written without brackets.
    pub addrs: Vec<(String, u16)>,
    /// The SIP domains served (`example.test`): a Request-URI with such a host is for the
    /// registrar's bindings.
    pub domains: Vec<String>,
}

impl LocalAddrs {
    /// Our socket addresses and domains.
    pub fn new(sockets: &[SocketAddr], domains: &[&str]) -> LocalAddrs {
        LocalAddrs {
            addrs: sockets
                .iter()
                .map(|s| (s.ip().to_string(), s.port()))
                .collect(),
            domains: domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
        }
    }

    /// Also answer to `host:port` (a host name of this node, say).
    pub fn add_addr(&mut self, host: &str, port: u16) {
        self.addrs.push((host.to_ascii_lowercase(), port));
    }

    /// Whether `host[:port]` names this node (the port defaulting to `default_port`).
    pub fn is_local(&self, host: &str, port: Option<u16>, default_port: u16) -> bool {
        let port = port.unwrap_or(default_port);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let ip = bare.parse::<std::net::IpAddr>().ok();
        self.addrs.iter().any(|(h, p)| {
            *p == port
                && match (ip, h.parse::<std::net::IpAddr>().ok()) {
                    (Some(a), Some(b)) => a == b,
                    _ => h.eq_ignore_ascii_case(bare),
                }
        })
    }

    /// Whether a SIP URI points at this node (its host and port are ours).
    pub fn is_local_uri(&self, uri: &Uri) -> bool {
        uri.is_sip() && self.is_local(uri.maddr_or_host(), uri.port(), uri.port_or_default())
    }

    /// Whether a URI's host is one of our domains.
    pub fn is_our_domain(&self, uri: &Uri) -> bool {
        uri.is_sip()
            && self
                .domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(uri.host()))
    }
}

/// The option tags (RFC 3261 section 19.2) this node supports: none. It implements no
/// extension that a `Require` or `Proxy-Require` could ask for (no `path`, `outbound`,
/// `100rel`, `timer`, `gruu`), so any tag there is unknown. Kept in one place so that adding
/// an extension is one line here (and its `Supported` follows).
pub const SUPPORTED_OPTION_TAGS: &[&str] = &[];

/// The methods the node accepts, as its `Allow` header says (OPTIONS answers and 405s).
pub const ALLOW: &str =
    "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, INFO, UPDATE, REFER, NOTIFY, SUBSCRIBE";

/// The body types the node accepts as a UAS (`Accept` of its OPTIONS answers).
pub const ACCEPT: &str = "application/sdp";

/// A request the proxy answers itself instead of forwarding.
///
/// Mostly an error status; `status` 200 is the answer to an `OPTIONS` with
/// `Max-Forwards: 0`, which the node answers as its final recipient (section 16.3 step 3)
/// rather than 483. [`Rejection::response`] builds either.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{status} {reason}")]
pub struct Rejection {
    /// The status code.
    pub status: u16,
    /// The reason phrase.
    pub reason: &'static str,
    /// For 420 (Bad Extension): the option tags not supported, sent back in `Unsupported`
    /// (sections 8.2.2.3 and 16.3 step 5). Empty otherwise.
    pub unsupported: Vec<String>,
}

impl Rejection {
    fn new(status: u16, reason: &'static str) -> Rejection {
        Rejection {
            status,
            reason,
            unsupported: Vec::new(),
        }
    }

    /// The response for `req`: with `Unsupported` listing the unknown tags for 420, and with
    /// `Allow`, `Accept` (and `Supported` when the node supports any tag) for the 200 to an
    /// OPTIONS (section 11.2).
    pub fn response(&self, req: &Request) -> Response {
        let mut resp = super::response::reply(req, self.status, Some(self.reason), None);
        if !self.unsupported.is_empty() {
            resp.headers
                .push("Unsupported", &self.unsupported.join(", "));
        }
        if self.status == 200 {
            resp.headers.push("Allow", ALLOW);
            resp.headers.push("Accept", ACCEPT);
            if !SUPPORTED_OPTION_TAGS.is_empty() {
                resp.headers
                    .push("Supported", &SUPPORTED_OPTION_TAGS.join(", "));
            }
        }
        resp
    }
}

/// The option tags of every `name` field (`Require`, `Proxy-Require`) that this node does
/// not support, in order, each once. Option tags compare case-sensitively (section 19.2
/// does not say otherwise; 20.32 examples are lower case).
fn unsupported_tags(req: &Request, name: HeaderName) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for tag in req.headers.values_kind(name) {
        let tag = tag.trim();
        if tag.is_empty() || SUPPORTED_OPTION_TAGS.contains(&tag) || out.iter().any(|t| t == tag) {
            continue;
        }
        out.push(tag.to_owned());
    }
    out
}

/// Whether this node will answer `req` itself as a UAS (and so must check its `Require`,
/// section 8.2.2.3): a REGISTER, or an OPTIONS without a user part, addressed to one of our
/// domains or addresses and routed nowhere else (every Route value, if any, is ours). This
/// mirrors the node's dispatch after [`preprocess_route`].
pub fn answered_here(req: &Request, local: &LocalAddrs) -> bool {
    let uas_method = match req.method {
        Method::Register => true,
        Method::Options => req.uri.user().is_none(),
        _ => false,
    };
    uas_method
        && (local.is_our_domain(&req.uri) || local.is_local_uri(&req.uri))
        && req
            .headers
            .routes()
            .all(|r| Uri::parse(r.uri_str()).is_ok_and(|u| local.is_local_uri(&u)))
}

/// Request validation (RFC 3261 section 16.3, and 8.2.2.3 for what the node answers
/// itself). Syntax was checked by the parser. In the order of section 16.3:
///
/// - a Request-URI that is not `sip:`, `sips:` or `tel:` (which the node routes by the number
///   registry, see [`crate::numbers`]), or a REGISTER whose Request-URI is not `sip:` or
///   `sips:`: 416;
/// - `Max-Forwards: 0`: 483 Too Many Hops, except for an OPTIONS, which the node answers
///   itself: a [`Rejection`] with status 200 whose response carries `Allow` and `Accept`;
/// - a Via of ours whose loop hash matches the request as received: 482;
/// - a `Proxy-Require` with option tags not in [`SUPPORTED_OPTION_TAGS`]: 420 Bad Extension
///   with `Unsupported` listing them;
/// - a request this node answers as a UAS ([`answered_here`], and the OPTIONS answered for
///   Max-Forwards 0) with unknown tags in `Require`: 420 with `Unsupported`. Never for ACK
///   or CANCEL (section 8.2.2.3), which the caller handles before this anyway.
pub fn validate_request(req: &Request, local: &LocalAddrs) -> Result<(), Rejection> {
    let tel = crate::numbers::is_tel(&req.uri) && req.method != Method::Register;
    if !req.uri.is_sip() && !tel {
        return Err(Rejection::new(416, "Unsupported URI Scheme"));
    }
    let no_hops_left = req.headers.max_forwards() == Some(0);
    if no_hops_left && req.method != Method::Options {
        return Err(Rejection::new(483, "Too Many Hops"));
    }
    if is_loop(req, local) {
        return Err(Rejection::new(482, "Loop Detected"));
    }
    let bad_extension = |unsupported: Vec<String>| {
        if unsupported.is_empty() {
            Ok(())
        } else {
            Err(Rejection {
                status: 420,
                reason: "Bad Extension",
                unsupported,
            })
        }
    };
    bad_extension(unsupported_tags(req, HeaderName::ProxyRequire))?;
    let uas = no_hops_left || answered_here(req, local);
    if uas && !matches!(req.method, Method::Ack | Method::Cancel) {
        bad_extension(unsupported_tags(req, HeaderName::Require))?;
    }
    if no_hops_left {
        return Err(Rejection::new(200, "OK"));
    }
    Ok(())
}

/// Whether the request carries a Via of ours whose loop part matches the request as now
/// received (section 16.3 step 4). A Via of ours that does not match is a spiral.
pub fn is_loop(req: &Request, local: &LocalAddrs) -> bool {
    let mut ours = req.headers.vias().filter(|v| {
        v.branch().is_some_and(|b| b.starts_with(BRANCH_PREFIX))
            && local.is_local(v.host, v.port, default_port(v.transport))
    });
    let Some(first) = ours.next() else {
        return false;
    };
    let want = format!("{:016x}", loop_hash(req));
    std::iter::once(first).chain(ours).any(|v| {
        v.branch()
            .and_then(|b| b.rsplit_once('.'))
            .is_some_and(|(_, l)| l == want)
    })
}

fn default_port(transport: &str) -> u16 {
    if transport.eq_ignore_ascii_case("TLS") {
        5061
    } else {
        5060
    }
}

/// The branch for forwarding `req` (as received, before any change) to `target` (RFC 3261
/// section 16.6 step 8); see the module documentation.
pub fn compute_branch(req: &Request, target: &Uri) -> String {
    let h = &req.headers;
    let mut t = Xxh3::new();
    match h.via_top() {
        Some(v) if v.has_rfc3261_branch() => {
            feed(&mut t, v.branch().unwrap_or(""));
            feed(&mut t, &v.sent_by());
        }
        Some(v) => feed(&mut t, v.as_str()),
        None => feed(&mut t, ""),
    }
    feed(&mut t, h.call_id().unwrap_or(""));
    feed(&mut t, &h.cseq().map_or(0, |c| c.number).to_string());
    feed(&mut t, h.from().and_then(|f| f.tag()).unwrap_or(""));
    feed(&mut t, target.as_str());
    format!("{BRANCH_PREFIX}{:016x}.{:016x}", t.digest(), loop_hash(req))
}

/// The loop-detection hash of a request as received.
fn loop_hash(req: &Request) -> u64 {
    let h = &req.headers;
    let mut t = Xxh3::new();
    feed(&mut t, req.uri.as_str());
    feed(&mut t, h.to().and_then(|x| x.tag()).unwrap_or(""));
    feed(&mut t, h.from().and_then(|x| x.tag()).unwrap_or(""));
    feed(&mut t, h.call_id().unwrap_or(""));
    feed(&mut t, &h.cseq().map_or(0, |c| c.number).to_string());
    for v in h.all("Proxy-Require") {
        feed(&mut t, v.value());
    }
    for v in h.all("Proxy-Authorization") {
        feed(&mut t, v.value());
    }
    t.digest()
}

fn feed(t: &mut Xxh3, s: &str) {
    t.update(s.as_bytes());
    t.update(&[0x1f]);
}

/// Stamps the top Via of a received request with `received` and `rport` (RFC 3581, RFC 3261
/// section 18.2.1). Returns whether it changed.
pub fn stamp_received(req: &mut Request, source: SocketAddr) -> bool {
    req.headers.stamp_received(source)
}

/// Route information preprocessing (RFC 3261 section 16.4):
/// - if the Request-URI is ours and there are Route values (the previous hop is a strict
///   router), the last Route value becomes the Request-URI;
/// - then, while the top Route points at us, it is removed.
pub fn preprocess_route(req: &mut Request, local: &LocalAddrs) {
    if local.is_local_uri(&req.uri) && req.headers.contains("Route") {
        let last = req
            .headers
            .values_kind(HeaderName::Route)
            .last()
            .map(str::to_owned);
        if let Some(uri) = last
            .as_deref()
            .and_then(|v| NameAddr::parse(v).ok())
            .and_then(|a| Uri::parse(a.uri_str()).ok())
        {
            req.uri = uri;
            remove_last_route(req);
        }
    }
    pop_own_routes(req, local);
}

fn remove_last_route(req: &mut Request) {
    let values: Vec<String> = req
        .headers
        .values_kind(HeaderName::Route)
        .map(str::to_owned)
        .collect();
    req.headers.remove_all("Route");
    for v in &values[..values.len().saturating_sub(1)] {
        req.headers.push("Route", v);
    }
}

fn pop_own_routes(req: &mut Request, local: &LocalAddrs) {
    // Bounded: each pass removes one value.
    for _ in 0..16 {
        let top_is_ours = req
            .headers
            .routes()
            .next()
            .and_then(|r| Uri::parse(r.uri_str()).ok())
            .is_some_and(|u| local.is_local_uri(&u));
        if !top_is_ours {
            break;
        }
        req.headers.pop_route();
    }
}

/// Whether a request is addressed to this proxy's domain or to this node: the Request-URI
/// names one of our domains or addresses, or the top Route names one of our addresses.
pub fn is_for_us(req: &Request, local: &LocalAddrs) -> bool {
    local.is_our_domain(&req.uri)
        || local.is_local_uri(&req.uri)
        || req
            .headers
            .routes()
            .next()
            .and_then(|r| Uri::parse(r.uri_str()).ok())
            .is_some_and(|u| local.is_local_uri(&u))
}

/// Where to send a request: the top Route's URI if any, else the Request-URI (section 16.6
/// step 7, RFC 3263 resolution of it is the caller's).
pub fn next_hop(req: &Request) -> Uri {
    req.headers
        .routes()
        .next()
        .and_then(|r| Uri::parse(r.uri_str()).ok())
        .unwrap_or_else(|| req.uri.clone())
}

/// The Via this proxy adds when forwarding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViaParams {
    /// Our host (IP address or name) as the next hop should reach us.
    pub host: String,
    /// Our port.
    pub port: u16,
    /// The transport the request is sent over.
    pub transport: Transport,
    /// The branch; `None` computes it with [`compute_branch`].
    pub branch: Option<String>,
    /// Whether to ask the next hop for `rport` (RFC 3581).
    pub rport: bool,
}

/// Builds the request to forward to `target` (RFC 3261 section 16.6 steps 1 to 8): a copy
/// with the Request-URI set to `target`, Max-Forwards decremented (70 inserted when absent),
/// `record_route` (a name-addr such as `<sip:10.0.0.1;lr>`) prepended as Record-Route when
/// given, our own top Route values removed (loose routing; a strict-routing next hop gets the
/// Request-URI appended as the last Route and its URI as the Request-URI), and our Via on
/// top. `req` must be the request as received (after [`stamp_received`]), so that the
/// computed branch is stable across retransmissions.
pub fn forward_request(
    req: &Request,
    target: &Uri,
    via: &ViaParams,
    record_route: Option<&str>,
    local: &LocalAddrs,
) -> Request {
    let branch = via
        .branch
        .clone()
        .unwrap_or_else(|| compute_branch(req, target));
    let mut out = req.clone();
    out.uri = target.clone();
    if out.headers.decrement_max_forwards().is_none() {
        // Already 0: validate_request answers 483 before this; keep it at 0.
    }
    if let Some(rr) = record_route {
        out.headers.prepend_record_route(rr);
    }
    pop_own_routes(&mut out, local);
    // Strict routing towards the next hop (section 16.6 step 6).
    let top_route = out
        .headers
        .routes()
        .next()
        .and_then(|r| Uri::parse(r.uri_str()).ok());
    if let Some(route_uri) = top_route {
        if !route_uri.is_loose_route() {
            let old = std::mem::replace(&mut out.uri, route_uri);
            out.headers.pop_route();
            out.headers.push("Route", &format!("<{old}>"));
        }
    }
    let host = if via.host.contains(':') && !via.host.starts_with('[') {
        format!("[{}]", via.host)
    } else {
        via.host.clone()
    };
    let mut value = format!(
        "SIP/2.0/{} {}:{};branch={}",
        via.transport.as_str(),
        host,
        via.port,
        branch
    );
    if via.rport {
        value.push_str(";rport");
    }
    out.headers.prepend_via(&value);
    out
}

/// A response received by a client transaction, made ready to forward upstream (section
/// 16.7 steps 3 and 9): our top Via removed. `None` when no Via remains (the response was
/// for a request this node originated).
pub fn forward_response(resp: &Response) -> Option<Response> {
    let mut out = resp.clone();
    out.headers.remove_top_via()?;
    out.headers.via_top()?;
    Some(out)
}

/// Whether a response's top Via was written by us (its branch has our prefix and its
/// sent-by is ours).
pub fn is_our_via(resp: &Response, local: &LocalAddrs) -> bool {
    resp.headers.via_top().is_some_and(|v| {
        v.branch().is_some_and(|b| b.starts_with(BRANCH_PREFIX))
            && local.is_local(v.host, v.port, default_port(v.transport))
    })
}

/// What to do after a branch of a [`SerialFork`] answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForkStep {
    /// Forward this response upstream now (a provisional other than 100, or a 2xx; after a
    /// 2xx the fork is over).
    Forward(Response),
    /// Nothing to do (100 Trying is hop by hop, or a response with no Via left).
    Absorb,
    /// The branch failed; start a client transaction to this next target.
    TryNext(Uri),
    /// All branches are done: forward this best final response upstream.
    Final(Response),
    /// All branches are done with no response worth forwarding: answer the server
    /// transaction with this status (408 on timeout, 500 for a 503, section 16.7 step 6).
    Generate(u16),
}

/// Serial forking over a list of targets with a response context (RFC 3261 section 16.7):
/// one branch at a time; a 2xx or 6xx ends the fork; other final responses move to the next
/// target; when none is left the best response is chosen.
#[derive(Clone, Debug, Default)]
pub struct SerialFork {
    pending: VecDeque<Uri>,
    best: Option<Response>,
    generated: Option<u16>,
    done: bool,
}

impl SerialFork {
    /// A fork over `targets`, tried in order.
    pub fn new(targets: impl IntoIterator<Item = Uri>) -> SerialFork {
        SerialFork {
            pending: targets.into_iter().collect(),
            ..SerialFork::default()
        }
    }

    /// The first target to try (`None` when there is none: answer 480).
    pub fn start(&mut self) -> Option<Uri> {
        self.pending.pop_front()
    }

    /// Whether a final answer has been given.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// A response delivered by the current branch's client transaction (with our Via still
    /// on top).
    pub fn on_response(&mut self, resp: Response) -> ForkStep {
        if self.done {
            // Late 2xx from a branch (forked 2xx): forward too, as 16.7 step 5 asks.
            return match forward_response(&resp) {
                Some(r) if (200..300).contains(&r.status) => ForkStep::Forward(r),
                _ => ForkStep::Absorb,
            };
        }
        let Some(up) = forward_response(&resp) else {
            return ForkStep::Absorb;
        };
        match up.status {
            100 => ForkStep::Absorb,
            101..=199 => ForkStep::Forward(up),
            200..=299 => {
                self.done = true;
                ForkStep::Forward(up)
            }
            600..=699 => {
                self.pending.clear();
                self.remember(up);
                self.finish()
            }
            _ => {
                self.remember(up);
                self.next_or_finish()
            }
        }
    }

    /// The current branch timed out or could not be reached: `status` is 408 (Timer B or C)
    /// or 503 (transport error).
    pub fn on_failure(&mut self, status: u16) -> ForkStep {
        if self.done {
            return ForkStep::Absorb;
        }
        if self.best.is_none() && self.generated.is_none_or(|g| rank(status) < rank(g)) {
            self.generated = Some(status);
        }
        self.next_or_finish()
    }

    fn remember(&mut self, resp: Response) {
        let better = self
            .best
            .as_ref()
            .is_none_or(|b| rank(resp.status) < rank(b.status));
        if better {
            self.best = Some(resp);
        }
    }

    fn next_or_finish(&mut self) -> ForkStep {
        match self.pending.pop_front() {
            Some(next) => ForkStep::TryNext(next),
            None => self.finish(),
        }
    }

    fn finish(&mut self) -> ForkStep {
        self.done = true;
        match self.best.take() {
            Some(r) if r.status == 503 => ForkStep::Generate(500),
            Some(r) => ForkStep::Final(r),
            None => ForkStep::Generate(match self.generated {
                Some(503) => 500,
                Some(s) => s,
                None => 408,
            }),
        }
    }
}

/// Lower is better (section 16.7 step 6): 6xx first, then the lowest class; within 4xx,
/// responses that help a resubmission (401, 407, 415, 420, 484) first.
pub(crate) fn rank(status: u16) -> u32 {
    let class = status / 100;
    let base = if class == 6 { 0 } else { class as u32 * 1000 };
    let preferred = matches!(status, 401 | 407 | 415 | 420 | 484);
    base + if preferred { 0 } else { 500 } + (status % 100) as u32
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
