//! Answering: a pure function of a zone snapshot, one request and a random source.
//!
//! [`answer_bytes`] takes the raw request as it came off the wire and gives the raw response
//! (or nothing, when no response is possible); [`answer`] does the same for a parsed request.
//! Neither touches a socket, so every DNS behaviour is tested without one:
//!
//! - before the first network status (no zone): SERVFAIL;
//! - a name under none of the apexes served (the configured domain and the provisioned ones),
//!   a class other than IN, a zone transfer: REFUSED; never recursion (RA is always clear);
//! - inside the zone: AA set; a missing name is NXDOMAIN and a name without the type is NODATA,
//!   both with the SOA of the name's apex (the longest one it is under) in the authority
//!   section;
//! - under an ENUM suffix (see `crate::enum_data`): a routed number's name answers its NAPTR
//!   `E2U+sip` record (NAPTR and ANY), NODATA for other types; an ancestor of a routed
//!   number's name (an empty non-terminal) is NODATA; any other name is NXDOMAIN; each with
//!   the suffix's SOA when negative. SERVFAIL until the ENUM data was listed once;
//! - SRV RRsets of proxies are answered as a random slice of at most K records, in random
//!   order; the additional section carries the addresses of the SRV/NS targets (and, for
//!   NAPTR, the SRV slices it points to with their addresses);
//! - malformed requests, requests with no or several questions: FORMERR; other opcodes: NOTIMP;
//!   EDNS versions above 0: BADVERS; requests that are responses, or shorter than a header:
//!   no response at all (no reflection);
//! - EDNS(0): a request with an OPT record gets one back (our payload size); over UDP the
//!   response fits the client's size (512 without EDNS, never above ours). What does not fit
//!   is dropped in this order: additional section, authority section (positive answers only),
//!   then answer records from the end, and only that last step sets TC.

use std::borrow::Cow;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;

use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::NAPTR;
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_proto::ProtoError;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use hickory_server::zone_handler::{MessageRequest, MessageResponseBuilder, Queries};
use rand::Rng;

use crate::enum_data::{EnumLookup, E2U_SIP, MAX_DIGITS, NAPTR_ORDER, NAPTR_PREFERENCE};
use crate::fast::{self, slice_order};
use crate::zone::{Apex, RrSet, Zone};

/// How the request arrived: bounds the size of the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Datagrams: the client's EDNS size, 512 without EDNS.
    Udp,
    /// A stream: up to 65535 bytes.
    Tcp,
}

/// Knobs of the answering that do not come from the zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerOptions {
    /// Largest UDP response; advertised in our OPT record.
    pub max_udp_payload: u16,
}

impl Default for AnswerOptions {
    fn default() -> Self {
        AnswerOptions {
            max_udp_payload: 1232,
        }
    }
}

/// A response ready to send, and what it was, for the metrics.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The encoded response.
    pub bytes: Vec<u8>,
    /// The type asked for, when exactly one question could be read.
    pub qtype: Option<RecordType>,
    /// The response code sent.
    pub rcode: ResponseCode,
    /// Whether TC was set.
    pub truncated: bool,
    /// For a name under an ENUM suffix (not the suffix itself): what was answered.
    pub enum_result: Option<EnumResult>,
}

/// What a query for a name under an ENUM suffix was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnumResult {
    /// The number's NAPTR record.
    Record,
    /// NOERROR with no answer: a number asked for another type, or an empty non-terminal.
    NoData,
    /// NXDOMAIN: no routed number there or below.
    NxDomain,
    /// SERVFAIL: no complete listing of the numbers held yet.
    NotListed,
}

impl EnumResult {
    /// Every result, in a fixed order (for metrics).
    pub const ALL: [EnumResult; 4] = [
        EnumResult::Record,
        EnumResult::NoData,
        EnumResult::NxDomain,
        EnumResult::NotListed,
    ];

    /// A short lowercase label.
    pub fn label(self) -> &'static str {
        match self {
            EnumResult::Record => "record",
            EnumResult::NoData => "nodata",
            EnumResult::NxDomain => "nxdomain",
            EnumResult::NotListed => "not_listed",
        }
    }
}

/// What [`resolve`] decided, before encoding: records borrowed from the zone (answers may
/// also be made for the query: ENUM records).
#[derive(Debug)]
pub(crate) struct Reply<'z> {
    pub(crate) metadata: Metadata,
    pub(crate) answers: Vec<Cow<'z, Record>>,
    pub(crate) authorities: Vec<&'z Record>,
    pub(crate) additionals: Vec<&'z Record>,
    pub(crate) edns: Option<Edns>,
    pub(crate) qtype: Option<RecordType>,
    pub(crate) enum_result: Option<EnumResult>,
    /// Whether the response repeats the request's question section (see [`has_pointer`]).
    pub(crate) echo_questions: bool,
}

impl<'z> Reply<'z> {
    fn new(req: &MessageRequest, opts: &AnswerOptions) -> Reply<'z> {
        let edns = req.edns.as_ref().map(|_| {
            let mut e = Edns::new();
            e.set_max_payload(opts.max_udp_payload.max(512));
            e.set_version(0);
            e
        });
        Reply {
            metadata: Metadata::response_from_request(&req.metadata),
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            edns,
            qtype: None,
            enum_result: None,
            echo_questions: true,
        }
    }

    /// The question section the response carries: `asked`, the request's, or none.
    pub(crate) fn questions<'q>(&self, asked: &'q Queries) -> &'q Queries {
        if self.echo_questions {
            asked
        } else {
            no_questions()
        }
    }

    fn rcode(mut self, rcode: ResponseCode) -> Self {
        self.metadata.response_code = rcode;
        self
    }
}

/// The largest response allowed for `req` over `transport`.
pub fn size_limit(req: &MessageRequest, transport: Transport, opts: &AnswerOptions) -> usize {
    match transport {
        Transport::Tcp => u16::MAX as usize,
        Transport::Udp => match &req.edns {
            Some(e) => e.max_payload().clamp(512, opts.max_udp_payload.max(512)) as usize,
            None => 512,
        },
    }
}

/// A random slice of at most `k` records, in random order.
fn slice<'z, R: Rng + ?Sized>(records: &'z [Record], k: usize, rng: &mut R) -> Vec<&'z Record> {
    slice_order(records.len(), k, rng)
        .into_iter()
        .map(|i| &records[i])
        .collect()
}

fn push_unique<'z>(list: &mut Vec<&'z Record>, r: &'z Record) {
    if !list.iter().any(|x| std::ptr::eq(*x, r)) {
        list.push(r);
    }
}

fn addresses<'z>(zone: &'z Zone, host: &LowerName, out: &mut Vec<&'z Record>) {
    if let Some(node) = zone.node(host) {
        for t in [RecordType::A, RecordType::AAAA] {
            if let Some(set) = node.set(t) {
                for r in &set.records {
                    push_unique(out, r);
                }
            }
        }
    }
}

fn set_records<'z, R: Rng + ?Sized>(
    zone: &'z Zone,
    set: &'z RrSet,
    rng: &mut R,
) -> Vec<&'z Record> {
    if set.sliced {
        slice(&set.records, zone.srv_slice, rng)
    } else {
        set.records.iter().collect()
    }
}

/// The additional-section records for the answers: addresses of SRV and NS targets, and for
/// NAPTR with flag "s" the SRV slice it points to with its addresses.
fn additionals<'z, R: Rng + ?Sized>(
    zone: &'z Zone,
    answers: &[Cow<'z, Record>],
    rng: &mut R,
) -> Vec<&'z Record> {
    let mut out = Vec::new();
    for r in answers {
        match &r.data {
            RData::SRV(srv) => addresses(zone, &LowerName::new(&srv.target), &mut out),
            RData::NS(ns) => addresses(zone, &LowerName::new(&ns.0), &mut out),
            RData::NAPTR(naptr) if naptr.flags.eq_ignore_ascii_case(b"s") => {
                let target = LowerName::new(&naptr.replacement);
                if let Some(set) = zone.node(&target).and_then(|n| n.set(RecordType::SRV)) {
                    for srv in set_records(zone, set, rng) {
                        push_unique(&mut out, srv);
                        if let RData::SRV(s) = &srv.data {
                            addresses(zone, &LowerName::new(&s.target), &mut out);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Whether a question section (`count` questions, as the client sent them) holds a
/// compression pointer (or a label type other than a plain label).
///
/// The response repeats the question section byte for byte, as hickory keeps it. A pointer
/// there can only point back into the request's header (the first question) or to another
/// question; in the response the header differs, so the copy would point at our flags. Such a
/// request gets a FORMERR without its questions; no client compresses a question.
fn has_pointer(section: &[u8], count: usize) -> bool {
    let mut at = 0;
    for _ in 0..count {
        loop {
            let Some(&len) = section.get(at) else {
                return true;
            };
            if len & 0xc0 != 0 {
                return true;
            }
            at += 1 + usize::from(len);
            if len == 0 {
                break;
            }
        }
        at += 4;
    }
    false
}

/// The question section of a response that does not repeat the request's (see
/// [`has_pointer`]).
fn no_questions() -> &'static Queries {
    static NONE: OnceLock<Queries> = OnceLock::new();
    NONE.get_or_init(|| {
        Queries::read(&mut BinDecoder::new(&[]), 0).unwrap_or_else(|_| unreachable!())
    })
}

/// Decides the response to `req` (without encoding it).
pub(crate) fn resolve<'z, R: Rng + ?Sized>(
    zone: Option<&'z Zone>,
    req: &MessageRequest,
    opts: &AnswerOptions,
    rng: &mut R,
) -> Reply<'z> {
    let mut reply = Reply::new(req, opts);
    if has_pointer(req.queries.as_bytes(), req.queries.len()) {
        reply.echo_questions = false;
        return reply.rcode(ResponseCode::FormErr);
    }
    if req.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return reply.rcode(ResponseCode::BADVERS);
    }
    if req.metadata.op_code != OpCode::Query {
        return reply.rcode(ResponseCode::NotImp);
    }
    let queries = req.queries.queries();
    if queries.len() != 1 {
        return reply.rcode(ResponseCode::FormErr);
    }
    let q = &queries[0];
    let qtype = q.query_type();
    reply.qtype = Some(qtype);
    match qtype {
        RecordType::OPT => return reply.rcode(ResponseCode::FormErr),
        RecordType::AXFR | RecordType::IXFR => return reply.rcode(ResponseCode::Refused),
        _ => {}
    }
    if q.query_class() != DNSClass::IN {
        return reply.rcode(ResponseCode::Refused);
    }
    let Some(zone) = zone else {
        return reply.rcode(ResponseCode::ServFail);
    };
    // The apex is the longest one the name is under: a name the zone holds knows it; for
    // any other, the apexes are looked up (REFUSED when the name is under none).
    let Some(node) = zone.node(q.name()) else {
        if let Some(apex) = zone.enum_apex_of(q.name()) {
            return enum_reply(reply, zone, apex, q.name(), qtype);
        }
        let Some(apex) = zone.apex_of(q.name()) else {
            return reply.rcode(ResponseCode::Refused);
        };
        reply.metadata.authoritative = true;
        reply.authorities.push(&apex.soa);
        return reply.rcode(ResponseCode::NXDomain);
    };
    reply.metadata.authoritative = true;
    for set in &node.sets {
        if qtype == RecordType::ANY || set.rtype == qtype {
            reply
                .answers
                .extend(set_records(zone, set, rng).into_iter().map(Cow::Borrowed));
        }
    }
    if reply.answers.is_empty() {
        reply.authorities.push(&zone.apex_of_node(node).soa);
    } else {
        reply.additionals = additionals(zone, &reply.answers, rng);
    }
    reply.rcode(ResponseCode::NoError)
}

/// The digits (in number order) of a name `labels` labels below its ENUM suffix, when every
/// one of those labels is a single digit and there are at most 15.
fn enum_digits(name: &Name, labels: usize) -> Option<Vec<u8>> {
    if labels == 0 || labels > MAX_DIGITS {
        return None;
    }
    let mut digits = Vec::with_capacity(labels);
    for label in name.iter().take(labels) {
        match label {
            [d] if d.is_ascii_digit() => digits.push(*d),
            _ => return None,
        }
    }
    // The first label is the last digit.
    digits.reverse();
    Some(digits)
}

/// The answer for a name under the ENUM suffix `apex` (see the module documentation).
fn enum_reply<'z>(
    mut reply: Reply<'z>,
    zone: &'z Zone,
    apex: &'z Apex,
    name: &LowerName,
    qtype: RecordType,
) -> Reply<'z> {
    let labels = usize::from(name.num_labels().saturating_sub(apex.name.num_labels()));
    let found = match enum_digits(name, labels) {
        Some(digits) => zone.numbers.lookup(&digits),
        None if zone.numbers.is_listed() => EnumLookup::Absent,
        None => EnumLookup::NotListed,
    };
    let (result, rcode) = match found {
        EnumLookup::NotListed => {
            reply.enum_result = Some(EnumResult::NotListed);
            return reply.rcode(ResponseCode::ServFail);
        }
        EnumLookup::Absent => (EnumResult::NxDomain, ResponseCode::NXDomain),
        EnumLookup::NonTerminal => (EnumResult::NoData, ResponseCode::NoError),
        EnumLookup::Routed(regexp) if matches!(qtype, RecordType::NAPTR | RecordType::ANY) => {
            let naptr = NAPTR::new(
                NAPTR_ORDER,
                NAPTR_PREFERENCE,
                b"u".to_vec().into_boxed_slice(),
                E2U_SIP.to_vec().into_boxed_slice(),
                regexp,
                Name::root(),
            );
            let record = Record::from_rdata((**name).clone(), zone.ttl(), RData::NAPTR(naptr));
            reply.answers.push(Cow::Owned(record));
            (EnumResult::Record, ResponseCode::NoError)
        }
        EnumLookup::Routed(_) => (EnumResult::NoData, ResponseCode::NoError),
    };
    reply.metadata.authoritative = true;
    if reply.answers.is_empty() {
        reply.authorities.push(&apex.soa);
    }
    reply.enum_result = Some(result);
    reply.rcode(rcode)
}

fn emit(req: &MessageRequest, reply: &Reply<'_>, n_answers: usize) -> Result<Vec<u8>, ProtoError> {
    let mut buf = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut buf);
    let response = MessageResponseBuilder::new(reply.questions(&req.queries), reply.edns.as_ref())
        .build(
            reply.metadata,
            reply.answers[..n_answers].iter().map(|r| &**r),
            reply.authorities.iter().copied(),
            std::iter::empty(),
            reply.additionals.iter().copied(),
        );
    response.destructive_emit(&mut encoder)?;
    Ok(buf)
}

/// Trims `reply` until its encoding fits in `limit` bytes (see the module documentation) and
/// returns that encoding.
pub(crate) fn fit(
    req: &MessageRequest,
    reply: &mut Reply<'_>,
    limit: usize,
) -> Result<Vec<u8>, ProtoError> {
    let all = reply.answers.len();
    let bytes = emit(req, reply, all)?;
    if bytes.len() <= limit {
        return Ok(bytes);
    }
    reply.additionals.clear();
    let bytes = emit(req, reply, all)?;
    if bytes.len() <= limit {
        return Ok(bytes);
    }
    if all > 0 {
        reply.authorities.clear();
        let bytes = emit(req, reply, all)?;
        if bytes.len() <= limit {
            return Ok(bytes);
        }
    }
    // Largest number of answers that fits: binary search over [0, all).
    reply.metadata.truncation = true;
    let (mut lo, mut hi) = (0usize, all.saturating_sub(1));
    let mut best = emit(req, reply, 0)?;
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        let bytes = emit(req, reply, mid)?;
        if bytes.len() <= limit {
            lo = mid;
            best = bytes;
        } else {
            hi = mid - 1;
        }
    }
    reply.answers.truncate(lo);
    if best.len() > limit {
        // The question section alone does not fit (a request may carry many questions):
        // the header, truncated, tells the client to ask over TCP.
        return Ok(header_bytes(reply.metadata));
    }
    Ok(best)
}

/// A SERVFAIL for `metadata`, header only: the last resort when encoding fails.
fn servfail_bytes(request: &Metadata) -> Vec<u8> {
    header_only(request, ResponseCode::ServFail)
}

fn header_only(request: &Metadata, rcode: ResponseCode) -> Vec<u8> {
    let mut metadata = Metadata::response_from_request(request);
    metadata.response_code = rcode;
    header_bytes(metadata)
}

/// A message of `metadata` and no records.
fn header_bytes(metadata: Metadata) -> Vec<u8> {
    let header = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    let mut buf = Vec::with_capacity(12);
    let mut encoder = BinEncoder::new(&mut buf);
    match header.emit(&mut encoder) {
        Ok(()) => buf,
        Err(_) => Vec::new(),
    }
}

/// Answers a parsed request.
pub fn answer<R: Rng + ?Sized>(
    zone: Option<&Zone>,
    req: &MessageRequest,
    transport: Transport,
    opts: &AnswerOptions,
    rng: &mut R,
) -> Outcome {
    let mut reply = resolve(zone, req, opts, rng);
    let limit = size_limit(req, transport, opts);
    match fit(req, &mut reply, limit) {
        Ok(bytes) => Outcome {
            bytes,
            qtype: reply.qtype,
            rcode: reply.metadata.response_code,
            truncated: reply.metadata.truncation,
            enum_result: reply.enum_result,
        },
        Err(_) => Outcome {
            bytes: servfail_bytes(&req.metadata),
            qtype: reply.qtype,
            rcode: ResponseCode::ServFail,
            truncated: false,
            enum_result: reply.enum_result,
        },
    }
}

/// Answers a request as it came off the wire: from the zone's pre-encoded answers when it
/// can ([`answer_fast`]), else by the slow path ([`answer_bytes_slow`]); both answer alike.
/// `None` when no response may be sent: fewer bytes than a header, or a message that is
/// itself a response.
pub fn answer_bytes<R: Rng + ?Sized>(
    zone: Option<&Zone>,
    raw: &[u8],
    transport: Transport,
    opts: &AnswerOptions,
    rng: &mut R,
) -> Option<Outcome> {
    answer_fast(zone, raw, transport, opts, rng)
        .or_else(|| answer_bytes_slow(zone, raw, transport, opts, rng))
}

/// Answers a request from the zone's pre-encoded answers (see [`crate::fast`]); `None` when
/// the slow path must answer it.
pub fn answer_fast<R: Rng + ?Sized>(
    zone: Option<&Zone>,
    raw: &[u8],
    transport: Transport,
    opts: &AnswerOptions,
    rng: &mut R,
) -> Option<Outcome> {
    let mut bytes = Vec::with_capacity(512);
    let out = fast::answer(zone?, raw, transport, opts, rng, &mut bytes)?;
    Some(Outcome {
        bytes,
        qtype: Some(out.qtype),
        rcode: out.rcode,
        truncated: false,
        enum_result: out.enum_result,
    })
}

/// Answers a request as it came off the wire with hickory's parser and encoder, the
/// reference behaviour (see the module documentation). `None` when no response may be
/// sent: fewer bytes than a header, or a message that is itself a response.
pub fn answer_bytes_slow<R: Rng + ?Sized>(
    zone: Option<&Zone>,
    raw: &[u8],
    transport: Transport,
    opts: &AnswerOptions,
    rng: &mut R,
) -> Option<Outcome> {
    let header = Header::read(&mut BinDecoder::new(raw)).ok()?;
    if header.metadata.message_type == MessageType::Response {
        return None;
    }
    let protocol = match transport {
        Transport::Udp => Protocol::Udp,
        Transport::Tcp => Protocol::Tcp,
    };
    let nowhere = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    match Request::from_bytes(raw.to_vec(), nowhere, protocol) {
        Ok(req) => Some(answer(zone, &req, transport, opts, rng)),
        Err(_) => Some(Outcome {
            bytes: header_only(&header.metadata, ResponseCode::FormErr),
            qtype: None,
            rcode: ResponseCode::FormErr,
            truncated: false,
            enum_result: None,
        }),
    }
}
