//! The registrar's binding rules (RFC 3261 section 10.3) over a serialisable binding set.
//!
//! # Call order
//!
//! 1. A REGISTER arrives and is parsed; the proxy core checks the domain (step 1-3) and the
//!    caller finds the AOR's owner on the registrar ring from [`RegisterInfo::aor`].
//! 2. [`RegisterInfo::from_request`] extracts what the rules need, with the flow (the node
//!    holding the client's connection, for reverse outbound) and the source address.
//! 3. On the owner, load the AOR's [`Bindings`] (empty when new), call
//!    [`Bindings::apply_register`] with `now_ms` (wall-clock milliseconds: bindings are
//!    replicated between nodes, so they hold absolute times), and on success store the
//!    updated set (replicating it) before answering 200 with
//!    [`Bindings::to_contact_headers`]; on error answer [`RegisterError::response`].
//! 4. Periodically, and before storing, [`Bindings::purge`] drops expired bindings and old
//!    tombstones; an AOR whose set [`Bindings::is_empty`] can be deleted.
//! 5. When two copies of one AOR's set meet (membership change, replica repair),
//!    [`Bindings::merge`] combines them deterministically.
//!
//! # Removal and merging
//!
//! A binding removed by `expires=0` or `Contact: *` stays for [`TOMBSTONE_KEEP_MS`] as a
//! tombstone (its `expires_at_ms` equals its `updated_at_ms`), so that merging with a stale
//! copy that still holds the binding does not bring it back. Merging keeps, for each contact
//! URI (compared per RFC 3261 section 19.1.4), the binding with the greatest
//! `(updated_at_ms, cseq, call_id, expires_at_ms, ...)`, the whole binding being the final
//! tie-break: the result does not depend on the order of merges, and merging is idempotent.

use std::cmp::Ordering;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::message::{Method, Request, Response};
use super::response::reply;
use super::typed::{format_qvalue, Contact};
use super::uri::Uri;

/// How long a removed binding is kept as a tombstone (milliseconds).
pub const TOMBSTONE_KEEP_MS: u64 = 120_000;

/// The transport of a client's flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl Transport {
    /// The transport as written in a Via (`UDP`, `TCP`, `TLS`).
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// The transport named in a Via (any case); `None` for others (SCTP, WS, ...).
    pub fn from_via(s: &str) -> Option<Transport> {
        [Transport::Udp, Transport::Tcp, Transport::Tls]
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
    }

    /// Whether the transport is reliable (TCP, TLS).
    pub fn is_reliable(self) -> bool {
        self != Transport::Udp
    }
}

/// Where a client's registration came in: the node holding its connection (or receiving its
/// datagrams), so that requests for it are delivered through that node (reverse outbound).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Flow {
    /// The name of the node holding the flow.
    pub node: String,
    /// The transport.
    pub transport: Transport,
    /// The client's address as seen by that node.
    pub remote: SocketAddr,
    /// The node's local address the client reached.
    pub local: SocketAddr,
    /// The node's identifier for the connection (0 for UDP).
    pub conn_id: u64,
}

/// One contact bound to an AOR.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Binding {
    /// The contact URI as the client wrote it (without angle brackets).
    pub uri: String,
    /// When the binding expires (Unix milliseconds). A tombstone has
    /// `expires_at_ms == updated_at_ms`.
    pub expires_at_ms: u64,
    /// The `q` preference in thousandths (`q=0.5` -> 500).
    pub q: Option<u16>,
    /// The Call-ID of the REGISTER that last updated it.
    pub call_id: String,
    /// The CSeq number of that REGISTER.
    pub cseq: u32,
    /// The flow it came in on.
    pub flow: Option<Flow>,
    /// The source address of that REGISTER.
    pub received: Option<SocketAddr>,
    /// When it was last updated (Unix milliseconds): the first key of the merge rule.
    pub updated_at_ms: u64,
}

impl Binding {
    /// Whether the binding is in force at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        !self.is_tombstone() && self.expires_at_ms > now_ms
    }

    /// Whether this is the tombstone of a removed binding.
    pub fn is_tombstone(&self) -> bool {
        self.expires_at_ms <= self.updated_at_ms
    }

    /// The seconds left, rounded up (0 when expired).
    pub fn remaining_secs(&self, now_ms: u64) -> u32 {
        let ms = self.expires_at_ms.saturating_sub(now_ms);
        ms.div_ceil(1000).min(u32::MAX as u64) as u32
    }

    /// The merge order: greater wins.
    fn merge_cmp(&self, other: &Binding) -> Ordering {
        (
            self.updated_at_ms,
            self.cseq,
            &self.call_id,
            self.expires_at_ms,
        )
            .cmp(&(
                other.updated_at_ms,
                other.cseq,
                &other.call_id,
                other.expires_at_ms,
            ))
            .then_with(|| self.cmp(other))
    }

    fn same_contact(&self, uri: &str) -> bool {
        same_uri(&self.uri, uri)
    }
}

/// Contact URIs compare per RFC 3261 section 19.1.4; unparseable ones as text.
fn same_uri(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (Uri::parse(a), Uri::parse(b)) {
        (Ok(x), Ok(y)) => x.equivalent(&y),
        _ => false,
    }
}

/// The registrar's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrarPolicy {
    /// Shortest expiry accepted (shorter ones are answered 423 with `Min-Expires`).
    pub min_expires: u32,
    /// Longest expiry granted (longer ones are shortened).
    pub max_expires: u32,
    /// Expiry when the REGISTER gives none.
    pub default_expires: u32,
    /// Most live contacts per AOR.
    pub max_contacts: usize,
}

impl Default for RegistrarPolicy {
    fn default() -> RegistrarPolicy {
        RegistrarPolicy {
            min_expires: 60,
            max_expires: 7200,
            default_expires: 3600,
            max_contacts: 10,
        }
    }
}

/// What a REGISTER asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterContacts {
    /// No Contact: fetch the current bindings.
    Fetch,
    /// `Contact: *`: remove all bindings (only with `Expires: 0`).
    Wildcard,
    /// Add, refresh or remove these contacts.
    Set(Vec<ContactInfo>),
}

/// One Contact of a REGISTER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactInfo {
    /// The contact URI as written.
    pub uri: String,
    /// Its `expires` parameter.
    pub expires: Option<u32>,
    /// Its `q` parameter in thousandths.
    pub q: Option<u16>,
}

/// What the binding rules need from a REGISTER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterInfo {
    /// The canonical AOR of the To URI (the key on the registrar ring).
    pub aor: String,
    /// The Call-ID.
    pub call_id: String,
    /// The CSeq number.
    pub cseq: u32,
    /// The `Expires` header.
    pub expires: Option<u32>,
    /// The contacts.
    pub contacts: RegisterContacts,
    /// The flow the REGISTER came in on.
    pub flow: Option<Flow>,
    /// Its source address.
    pub received: Option<SocketAddr>,
}

impl RegisterInfo {
    /// Extracts the registration from a parsed REGISTER, with the flow and source address
    /// the transport layer knows.
    pub fn from_request(
        req: &Request,
        flow: Option<Flow>,
        received: Option<SocketAddr>,
    ) -> Result<RegisterInfo, RegisterError> {
        let bad = |why: &str| RegisterError::BadRequest(why.to_owned());
        if req.method != Method::Register {
            return Err(bad("Not a REGISTER"));
        }
        let aor = req
            .to_aor()
            .ok_or_else(|| bad("To is not a SIP address of record"))?;
        let call_id = req
            .headers
            .call_id()
            .ok_or_else(|| bad("Missing Call-ID"))?;
        let cseq = req.headers.cseq().ok_or_else(|| bad("Missing CSeq"))?;
        let contacts = req
            .headers
            .contacts_checked()
            .map_err(|_| bad("Malformed Contact header"))?;
        let expires = req.headers.expires();
        let contacts = if contacts.is_empty() {
            RegisterContacts::Fetch
        } else if contacts.contains(&Contact::Wildcard) {
            if contacts.len() > 1 {
                return Err(bad("Contact: * must be the only contact"));
            }
            RegisterContacts::Wildcard
        } else {
            RegisterContacts::Set(
                contacts
                    .iter()
                    .filter_map(|c| match c {
                        Contact::Addr(a) => Some(ContactInfo {
                            uri: a.uri_str().to_owned(),
                            expires: a.expires(),
                            q: a.q(),
                        }),
                        Contact::Wildcard => None,
                    })
                    .collect(),
            )
        };
        Ok(RegisterInfo {
            aor,
            call_id: call_id.to_owned(),
            cseq: cseq.number,
            expires,
            contacts,
            flow,
            received,
        })
    }
}

/// Why a REGISTER was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// Malformed or contradictory request: 400.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// An expiry shorter than the minimum: 423 with `Min-Expires`.
    #[error("interval too brief (minimum {min_expires} s)")]
    IntervalTooBrief {
        /// The minimum, sent back in `Min-Expires`.
        min_expires: u32,
    },
    /// A REGISTER with the Call-ID of a binding and a CSeq not above the binding's: the
    /// update is aborted (section 10.3 steps 6 and 7): 500.
    #[error("out-of-order register (cseq not above the binding's)")]
    OutOfOrder,
    /// More live contacts than allowed: 503 (as Kamailio answers).
    #[error("too many contacts (maximum {max})")]
    TooManyContacts {
        /// The maximum.
        max: usize,
    },
}

impl RegisterError {
    /// The status code to answer with.
    pub fn status(&self) -> u16 {
        match self {
            RegisterError::BadRequest(_) => 400,
            RegisterError::IntervalTooBrief { .. } => 423,
            RegisterError::OutOfOrder => 500,
            RegisterError::TooManyContacts { .. } => 503,
        }
    }

    /// The response to send for `req`.
    pub fn response(&self, req: &Request) -> Response {
        match self {
            RegisterError::BadRequest(why) => reply(req, 400, Some(why), None),
            RegisterError::IntervalTooBrief { min_expires } => {
                let mut r = reply(req, 423, None, None);
                r.headers.push("Min-Expires", &min_expires.to_string());
                r
            }
            RegisterError::OutOfOrder => {
                let mut r = reply(req, 500, Some("Out Of Order Register"), None);
                r.headers.push("Retry-After", "1");
                r
            }
            RegisterError::TooManyContacts { .. } => {
                reply(req, 503, Some("Too Many Registered Contacts"), None)
            }
        }
    }
}

/// The bindings of one AOR.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bindings {
    /// Live bindings, expired ones not yet purged, and tombstones.
    pub contacts: Vec<Binding>,
}

impl Bindings {
    /// No bindings.
    pub fn new() -> Bindings {
        Bindings::default()
    }

    /// Whether nothing is held (not even tombstones): the AOR's record can be deleted.
    pub fn is_empty(&self) -> bool {
        self.contacts.is_empty()
    }

    /// The live bindings at `now_ms`, highest `q` first (no `q` counts as 1.0), then in
    /// the order they were added.
    pub fn current(&self, now_ms: u64) -> Vec<Binding> {
        let mut live: Vec<Binding> = self
            .contacts
            .iter()
            .filter(|b| b.is_live(now_ms))
            .cloned()
            .collect();
        live.sort_by_key(|b| std::cmp::Reverse(b.q.unwrap_or(1000)));
        live
    }

    /// Applies a REGISTER per RFC 3261 section 10.3 steps 6 to 8, atomically: on error
    /// nothing changes. Returns the live bindings to list in the 200.
    pub fn apply_register(
        &mut self,
        req: &RegisterInfo,
        now_ms: u64,
        policy: &RegistrarPolicy,
    ) -> Result<Vec<Binding>, RegisterError> {
        match &req.contacts {
            RegisterContacts::Fetch => {}
            RegisterContacts::Wildcard => {
                if req.expires != Some(0) {
                    return Err(RegisterError::BadRequest(
                        "Contact: * requires Expires: 0".into(),
                    ));
                }
                if self
                    .contacts
                    .iter()
                    .any(|b| b.is_live(now_ms) && b.call_id == req.call_id && req.cseq <= b.cseq)
                {
                    return Err(RegisterError::OutOfOrder);
                }
                for b in self.contacts.iter_mut().filter(|b| b.is_live(now_ms)) {
                    tombstone(b, req, now_ms);
                }
            }
            RegisterContacts::Set(list) => {
                let mut work = self.contacts.clone();
                // Bindings written by this request: a contact listed twice is not "out of
                // order" against itself.
                let mut touched: Vec<usize> = Vec::new();
                for c in list {
                    let requested = c.expires.or(req.expires).unwrap_or(policy.default_expires);
                    if requested > 0 && requested < 3600 && requested < policy.min_expires {
                        return Err(RegisterError::IntervalTooBrief {
                            min_expires: policy.min_expires,
                        });
                    }
                    let expires = requested.min(policy.max_expires);
                    let existing = work
                        .iter()
                        .position(|b| b.is_live(now_ms) && b.same_contact(&c.uri));
                    if let Some(i) = existing.filter(|i| !touched.contains(i)) {
                        let b = &work[i];
                        if b.call_id == req.call_id && req.cseq <= b.cseq {
                            return Err(RegisterError::OutOfOrder);
                        }
                    }
                    // Any expired binding or tombstone for this contact is replaced.
                    let slot =
                        existing.or_else(|| work.iter().position(|b| b.same_contact(&c.uri)));
                    if expires == 0 {
                        if let Some(i) = existing {
                            tombstone(&mut work[i], req, now_ms);
                            touched.push(i);
                        }
                        continue;
                    }
                    let binding = Binding {
                        uri: c.uri.clone(),
                        expires_at_ms: now_ms.saturating_add(expires as u64 * 1000),
                        q: c.q,
                        call_id: req.call_id.clone(),
                        cseq: req.cseq,
                        flow: req.flow.clone(),
                        received: req.received,
                        updated_at_ms: now_ms,
                    };
                    match slot {
                        Some(i) => {
                            work[i] = binding;
                            touched.push(i);
                        }
                        None => {
                            work.push(binding);
                            touched.push(work.len() - 1);
                        }
                    }
                }
                let live = work.iter().filter(|b| b.is_live(now_ms)).count();
                if live > policy.max_contacts {
                    return Err(RegisterError::TooManyContacts {
                        max: policy.max_contacts,
                    });
                }
                self.contacts = work;
            }
        }
        self.purge(now_ms);
        Ok(self.current(now_ms))
    }

    /// The Contact values for a 200 to REGISTER: each live binding as
    /// `<uri>;expires=SECONDS[;q=Q]` with its remaining time.
    pub fn to_contact_headers(&self, now_ms: u64) -> Vec<String> {
        self.current(now_ms)
            .iter()
            .map(|b| contact_value(b, now_ms))
            .collect()
    }

    /// Drops expired bindings and tombstones older than [`TOMBSTONE_KEEP_MS`]. Returns
    /// whether anything was dropped.
    pub fn purge(&mut self, now_ms: u64) -> bool {
        let before = self.contacts.len();
        self.contacts.retain(|b| {
            if b.is_tombstone() {
                b.updated_at_ms.saturating_add(TOMBSTONE_KEEP_MS) > now_ms
            } else {
                b.expires_at_ms > now_ms
            }
        });
        self.contacts.len() != before
    }

    /// Merges another copy of the same AOR's bindings: for each contact the newer binding
    /// wins (see the module documentation). Commutative, associative and idempotent.
    pub fn merge(&mut self, other: &Bindings) {
        for theirs in &other.contacts {
            match self
                .contacts
                .iter()
                .position(|b| b.same_contact(&theirs.uri))
            {
                Some(i) => {
                    if theirs.merge_cmp(&self.contacts[i]) == Ordering::Greater {
                        self.contacts[i] = theirs.clone();
                    }
                }
                None => self.contacts.push(theirs.clone()),
            }
        }
        // A canonical order, so that equal sets compare equal whatever the merge order.
        self.contacts
            .sort_by(|a, b| a.uri.cmp(&b.uri).then_with(|| a.merge_cmp(b)));
    }
}

/// One binding as a Contact value for a 200: `<uri>;expires=SECONDS[;q=Q]`.
pub fn contact_value(b: &Binding, now_ms: u64) -> String {
    let mut s = format!("<{}>;expires={}", b.uri, b.remaining_secs(now_ms));
    if let Some(q) = b.q {
        s.push_str(";q=");
        s.push_str(&format_qvalue(q));
    }
    s
}

/// The 200 to a REGISTER (RFC 3261 section 10.3 step 8): the request's Via, From, To (with
/// a tag), Call-ID and CSeq, and one Contact per current binding (as returned by
/// [`Bindings::apply_register`]) with its remaining time.
pub fn ok_response(req: &Request, current: &[Binding], now_ms: u64) -> Response {
    let mut resp = reply(req, 200, None, None);
    for b in current {
        resp.headers.push("Contact", &contact_value(b, now_ms));
    }
    resp
}

fn tombstone(b: &mut Binding, req: &RegisterInfo, now_ms: u64) {
    b.expires_at_ms = now_ms;
    b.updated_at_ms = now_ms;
    b.call_id = req.call_id.clone();
    b.cseq = req.cseq;
}

#[cfg(test)]
#[path = "registrar_tests.rs"]
mod tests;
