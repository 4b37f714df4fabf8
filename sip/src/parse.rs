//! Parsing SIP messages (RFC 3261 sections 7, 20 and 25) from a datagram or a framed stream
//! message.
//!
//! The parser copies the header section once into a shared `Arc<str>`; every [`Header`] is a
//! range in it. The body is a slice of the input ([`parse_bytes`]) or a copy ([`parse`]).
//! Accepted leniencies: leading blank lines (keep-alives) are skipped, bare LF line ends are
//! accepted, runs of white space in the start line are accepted, folded header lines are
//! joined for reading (and kept as written for serialising). A header section that is not
//! valid UTF-8 is read lossily and answered with 400.
//!
//! What is checked, so that the rest of the core can trust a parsed message:
//! - the request line: `Method SP Request-URI SP SIP-Version`; a wrong token count
//!   (`Malformed Request-Line`), a method that is not a token (`Malformed Method`) or a
//!   version that is not `1*DIGIT "." 1*DIGIT` (`Malformed SIP-Version`) is 400 when the
//!   request has a Via to answer along (dropped otherwise); another version is 505. "SIP" is
//!   case-insensitive (section 7.1), methods are case-sensitive.
//! - requests: `To`, `From`, `Call-ID`, `CSeq`, `Via` (and `Max-Forwards` unless
//!   [`Limits::require_max_forwards`] is off) are present; the single-valued headers (`To`,
//!   `From`, `Call-ID`, `CSeq`, `Max-Forwards`, `Content-Length`, `Content-Type`, `Expires`,
//!   in any spelling, compact forms included) appear at most once (`Duplicate CSeq header`);
//!   every Via, the To, From and Route values, the `Call-ID` (`word ["@" word]`), `CSeq`
//!   (number below 2^31, method equal to the request's), `Max-Forwards` (`1*DIGIT`, at most
//!   255) and `Content-Length` (`1*DIGIT`, not more than the bytes that follow) are well
//!   formed. A failure is [`ParseError::Reject`] with status 400 and a reason phrase naming
//!   the header (505 for another SIP version, 513 for an oversized message) and the request
//!   as far as it could be read, so the caller can answer it with [`ParseError::response`].
//! - responses: the same headers but `Max-Forwards`; a failure is
//!   [`ParseError::Unanswerable`] (responses are never answered).
//!
//! Section 16.3's checks that are not grammar (URI scheme, Max-Forwards 0, loops,
//! Proxy-Require, Require) are [`crate::proxy::validate_request`]'s.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;

use super::headers::{Header, HeaderName, Headers};
use super::message::{Message, Method, Request, Response};
use super::params::is_token;
use super::typed::{CSeq, NameAddr, Via};
use super::uri::Uri;

/// The default cap on a message's size (64 KiB).
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;

/// Limits applied by the parser and the stream framer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest message accepted, header section and body together. Larger requests are
    /// answered 513 (Message Too Large).
    pub max_message: usize,
    /// The most header fields a message may have (more is answered 400).
    pub max_headers: usize,
    /// Whether a request without `Max-Forwards` is answered 400. RFC 3261 section 8.1.1.6
    /// requires UACs to send it; a proxy may instead insert one (section 16.6 step 3).
    pub require_max_forwards: bool,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message: DEFAULT_MAX_MESSAGE,
            max_headers: 256,
            require_max_forwards: true,
        }
    }
}

/// Why a message could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing can be answered: no request line could be read, or the message is a
    /// response. Drop it.
    #[error("unanswerable message: {0}")]
    Unanswerable(Cow<'static, str>),
    /// A request that must be answered with `status` (400, 505 or 513) and `reason` as the
    /// reason phrase. `request` holds what could be read (at least the request line), so
    /// that [`ParseError::response`] can copy its Via, From, To, Call-ID and CSeq.
    #[error("rejected request: {status} {reason}")]
    Reject {
        /// The status code to answer with.
        status: u16,
        /// What is wrong, usable as the reason phrase.
        reason: String,
        /// The request as far as it was read.
        request: Box<Request>,
    },
}

impl ParseError {
    /// The status to answer with, or `None` when the message must be dropped.
    pub fn status(&self) -> Option<u16> {
        match self {
            ParseError::Unanswerable(_) => None,
            ParseError::Reject { status, .. } => Some(*status),
        }
    }

    /// The response to send back, or `None` when the message must be dropped (it had no
    /// readable request line, or no Via to send a response along).
    pub fn response(&self) -> Option<Response> {
        match self {
            ParseError::Unanswerable(_) => None,
            ParseError::Reject {
                status,
                reason,
                request,
            } => {
                request.headers.via_top()?;
                Some(super::response::reply(request, *status, Some(reason), None))
            }
        }
    }
}

/// Parses a message with the default [`Limits`], copying the body.
pub fn parse(data: &[u8]) -> Result<Message, ParseError> {
    parse_inner(data, None, &Limits::default())
}

/// Parses a message with the given limits, copying the body.
pub fn parse_with(data: &[u8], limits: &Limits) -> Result<Message, ParseError> {
    parse_inner(data, None, limits)
}

/// Parses a message held in `data`; the body is a slice of it (no copy).
pub fn parse_bytes(data: &Bytes, limits: &Limits) -> Result<Message, ParseError> {
    parse_inner(data, Some(data), limits)
}

/// Where the header section ends: `(head_len, body_start)`. The head excludes the line end
/// of its last line. Accepts CRLF CRLF and LF LF (and mixes).
pub(crate) fn find_head_end(data: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(off) = memchr::memchr(b'\n', &data[i..]) {
        let nl = i + off;
        match data.get(nl + 1) {
            Some(b'\n') => return Some((trim_cr(data, nl), nl + 2)),
            Some(b'\r') if data.get(nl + 2) == Some(&b'\n') => {
                return Some((trim_cr(data, nl), nl + 3))
            }
            _ => i = nl + 1,
        }
    }
    None
}

fn trim_cr(data: &[u8], nl: usize) -> usize {
    if nl > 0 && data[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    }
}

/// Skips leading CR and LF bytes (keep-alives before a message).
pub(crate) fn skip_leading_crlf(data: &[u8]) -> usize {
    data.iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(data.len())
}

enum StartLine {
    Request {
        method: Method,
        uri: Result<Uri, String>,
        /// `Ok` for SIP/2.0; otherwise the status and reason to answer with (505 for
        /// another well-formed version, 400 for a request line that breaks the grammar).
        line: Result<(), (u16, &'static str)>,
    },
    Response {
        status: u16,
        reason: String,
    },
}

fn parse_inner(
    data: &[u8],
    shared: Option<&Bytes>,
    limits: &Limits,
) -> Result<Message, ParseError> {
    let start = skip_leading_crlf(data);
    let msg = &data[start..];
    if msg.is_empty() {
        return Err(ParseError::Unanswerable("empty message".into()));
    }
    let too_large = data.len() > limits.max_message;
    let (head_len, body_start) = match find_head_end(msg) {
        Some(found) => found,
        None => {
            // No blank line: everything is header section (lenient for datagrams).
            let mut end = msg.len();
            while end > 0 && matches!(msg[end - 1], b'\r' | b'\n') {
                end -= 1;
            }
            (end, msg.len())
        }
    };
    let mut problem: Option<(u16, String)> = None;
    let head_bytes = &msg[..head_len];
    let src: Arc<str> = match std::str::from_utf8(head_bytes) {
        Ok(s) => Arc::from(s),
        Err(_) => {
            problem = Some((400, "Header section is not valid UTF-8".into()));
            Arc::from(String::from_utf8_lossy(head_bytes).as_ref())
        }
    };

    // Start line.
    let first_end = src.find('\n').unwrap_or(src.len());
    let first = src[..first_end].trim_end_matches('\r');
    let start_line = parse_start_line(first)?;

    // Header fields.
    let mut headers = Headers::with_capacity(16);
    let mut pos = if first_end < src.len() {
        first_end + 1
    } else {
        src.len()
    };
    let mut field: Option<FieldAcc> = None;
    let mut count = 0usize;
    while pos < src.len() {
        let nl = src[pos..].find('\n').map_or(src.len(), |o| pos + o);
        let line_end = if nl > pos && src.as_bytes()[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        let line = &src[pos..line_end];
        if line.starts_with([' ', '\t']) {
            match field.as_mut() {
                Some(f) => {
                    f.line_end = line_end;
                    f.continuations.push((pos, line_end));
                }
                None => {
                    problem.get_or_insert((400, "Continuation line before any header".into()));
                }
            }
        } else {
            if let Some(f) = field.take() {
                headers.push_header(f.finish(&src));
            }
            match line.find(':') {
                Some(colon) if is_token(line[..colon].trim_end()) => {
                    count += 1;
                    let name_end = pos + line[..colon].trim_end().len();
                    let vstart = pos + colon + 1;
                    field = Some(FieldAcc {
                        start: pos,
                        line_end,
                        name_end,
                        value_start: vstart,
                        first_end: line_end,
                        continuations: Vec::new(),
                    });
                }
                _ => {
                    problem.get_or_insert((400, "Malformed header line".into()));
                }
            }
        }
        pos = nl + 1;
    }
    if let Some(f) = field.take() {
        headers.push_header(f.finish(&src));
    }
    if count > limits.max_headers {
        problem.get_or_insert((400, "Too many header fields".into()));
    }

    // Body, framed by Content-Length when present.
    let available = msg.len().saturating_sub(body_start);
    let body_len = match headers.get_kind(HeaderName::ContentLength) {
        Some(v) => match parse_content_length(v) {
            Ok(n) if n <= available => n,
            Ok(_) => {
                problem.get_or_insert((400, "Body shorter than Content-Length".into()));
                available
            }
            Err(_) => {
                problem.get_or_insert((400, "Malformed Content-Length header".into()));
                available
            }
        },
        None => available,
    };
    let body_from = start + body_start;
    let body = match shared {
        Some(b) if body_len > 0 => b.slice(body_from..body_from + body_len),
        _ if body_len > 0 => Bytes::copy_from_slice(&data[body_from..body_from + body_len]),
        _ => Bytes::new(),
    };

    match start_line {
        StartLine::Response { status, reason } => {
            if too_large {
                return Err(ParseError::Unanswerable("response too large".into()));
            }
            if let Some((_, why)) = problem {
                return Err(ParseError::Unanswerable(why.into()));
            }
            if let Some(why) = check_common(&headers, None) {
                return Err(ParseError::Unanswerable(why.into()));
            }
            Ok(Message::Response(Response {
                status,
                reason,
                headers,
                body,
            }))
        }
        StartLine::Request { method, uri, line } => {
            if let Err((status, why)) = line {
                // A request line that breaks the grammar is answered only when there is a
                // Via to answer along; otherwise there is nothing to answer.
                if status == 400 && headers.get_kind(HeaderName::Via).is_none() {
                    return Err(ParseError::Unanswerable(why.to_ascii_lowercase().into()));
                }
            }
            if too_large {
                problem = Some((513, "Message Too Large".into()));
            } else if let Err((status, why)) = line {
                problem = Some((status, why.into()));
            }
            let uri = match uri {
                Ok(u) => u,
                Err(why) => {
                    problem.get_or_insert((400, why));
                    Uri::parse("sip:invalid.invalid").expect("a valid placeholder")
                }
            };
            if problem.is_none() {
                problem = check_common(&headers, Some(&method))
                    .or_else(|| check_request(&headers, limits))
                    .map(|why| (400, why));
            }
            let request = Request {
                method,
                uri,
                headers,
                body,
            };
            match problem {
                None => Ok(Message::Request(request)),
                Some((status, reason)) => Err(ParseError::Reject {
                    status,
                    reason,
                    request: Box::new(request),
                }),
            }
        }
    }
}

/// Reads a Content-Length value: `1*DIGIT` (section 20.14), nothing else.
fn parse_content_length(v: &str) -> Result<usize, ()> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    v.parse::<usize>().map_err(|_| ())
}

/// A header field being accumulated (its continuation lines may follow).
struct FieldAcc {
    start: usize,
    line_end: usize,
    name_end: usize,
    value_start: usize,
    first_end: usize,
    continuations: Vec<(usize, usize)>,
}

impl FieldAcc {
    fn finish(self, src: &Arc<str>) -> Header {
        let first_value = &src[self.value_start..self.first_end];
        let lead = first_value.len() - first_value.trim_start().len();
        let vstart = self.value_start + lead;
        let vend = self.value_start + first_value.trim_end().len();
        let unfolded = if self.continuations.is_empty() {
            None
        } else {
            let mut u = String::from(first_value.trim());
            for &(a, b) in &self.continuations {
                let piece = src[a..b].trim();
                if piece.is_empty() {
                    continue;
                }
                if !u.is_empty() {
                    u.push(' ');
                }
                u.push_str(piece);
            }
            Some(u)
        };
        Header::from_source(
            src,
            (self.start, self.line_end),
            (self.start, self.name_end),
            (vstart, vend.max(vstart)),
            unfolded,
        )
    }
}

fn parse_start_line(line: &str) -> Result<StartLine, ParseError> {
    if line.len() >= 4 && line.as_bytes()[..4].eq_ignore_ascii_case(b"SIP/") {
        let mut parts = line.splitn(2, [' ', '\t']);
        let version = parts.next().unwrap_or("");
        let rest = parts.next().unwrap_or("").trim_start();
        if !version.eq_ignore_ascii_case("SIP/2.0") {
            return Err(ParseError::Unanswerable("unsupported SIP version".into()));
        }
        let (code, reason) = match rest.find([' ', '\t']) {
            Some(sp) => (&rest[..sp], rest[sp..].trim()),
            None => (rest, ""),
        };
        let status = match code.parse::<u16>() {
            Ok(s) if code.len() == 3 && (100..=699).contains(&s) => s,
            _ => return Err(ParseError::Unanswerable("malformed status code".into())),
        };
        return Ok(StartLine::Response {
            status,
            reason: reason.to_owned(),
        });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version (runs of white space accepted).
    // A line that does not end in `SIP/...` is not a SIP request: nothing to answer.
    let mut parts = line.split_ascii_whitespace();
    let (Some(method), Some(uri), Some(mut version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::Unanswerable("malformed start line".into()));
    };
    let mut extra = false;
    for more in parts {
        extra = true;
        version = more;
    }
    if !(version.len() > 4 && version.as_bytes()[..4].eq_ignore_ascii_case(b"SIP/")) {
        return Err(ParseError::Unanswerable("malformed start line".into()));
    }
    let line = if extra {
        Err((400, "Malformed Request-Line"))
    } else if !is_token(method) {
        Err((400, "Malformed Method"))
    } else {
        check_version(&version[4..])
    };
    Ok(StartLine::Request {
        method: Method::from_token(method),
        uri: Uri::parse(uri).map_err(|e| format!("Bad Request-URI ({e})")),
        line,
    })
}

/// Checks the part of a SIP-Version after `SIP/` (RFC 3261 section 25: `1*DIGIT "." 1*DIGIT`;
/// "SIP" is case-insensitive, section 7.1): 2.0 is ours, another version is 505, anything
/// else breaks the grammar (400).
fn check_version(v: &str) -> Result<(), (u16, &'static str)> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match v.split_once('.') {
        Some(("2", "0")) => Ok(()),
        Some((major, minor)) if digits(major) && digits(minor) => {
            Err((505, "Version Not Supported"))
        }
        _ => Err((400, "Malformed SIP-Version")),
    }
}

/// Single-valued headers (RFC 3261 section 7.3.1: only comma-list headers may be repeated),
/// checked for repetition in requests and responses, whatever the spelling (compact forms
/// count as the same header).
const SINGLE: [(HeaderName, &str); 8] = [
    (HeaderName::To, "To"),
    (HeaderName::From, "From"),
    (HeaderName::CallId, "Call-ID"),
    (HeaderName::CSeq, "CSeq"),
    (HeaderName::MaxForwards, "Max-Forwards"),
    (HeaderName::ContentLength, "Content-Length"),
    (HeaderName::ContentType, "Content-Type"),
    (HeaderName::Expires, "Expires"),
];

/// The first single-valued header that appears more than once.
fn duplicate(h: &Headers) -> Option<&'static str> {
    let mut seen = 0u8;
    for field in h {
        let kind = field.kind();
        if kind == HeaderName::Other {
            continue;
        }
        if let Some(i) = SINGLE.iter().position(|(k, _)| *k == kind) {
            let bit = 1u8 << i;
            if seen & bit != 0 {
                return Some(SINGLE[i].1);
            }
            seen |= bit;
        }
    }
    None
}

/// Whether `v` is a Call-ID: `word ["@" word]` (RFC 3261 section 25).
fn is_call_id(v: &str) -> bool {
    let word = |w: &str| {
        !w.is_empty()
            && w.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(
                        b,
                        b'-' | b'.'
                            | b'!'
                            | b'%'
                            | b'*'
                            | b'_'
                            | b'+'
                            | b'`'
                            | b'\''
                            | b'~'
                            | b'('
                            | b')'
                            | b'<'
                            | b'>'
                            | b':'
                            | b'\\'
                            | b'"'
                            | b'/'
                            | b'['
                            | b']'
                            | b'?'
                            | b'{'
                            | b'}'
                    )
            })
    };
    match v.split_once('@') {
        Some((a, b)) => word(a) && word(b),
        None => word(v),
    }
}

/// Checks what requests and responses both need. Returns the reason on failure.
fn check_common(h: &Headers, method: Option<&Method>) -> Option<String> {
    if let Some(name) = duplicate(h) {
        return Some(format!("Duplicate {name} header"));
    }
    let mut vias = 0;
    for v in h.values_kind(HeaderName::Via) {
        vias += 1;
        if let Err(e) = Via::parse(v) {
            return Some(format!("Malformed Via header ({e})"));
        }
    }
    if vias == 0 {
        return Some("Missing Via header".into());
    }
    for (kind, name) in [(HeaderName::From, "From"), (HeaderName::To, "To")] {
        match h.get_kind(kind) {
            None => return Some(format!("Missing {name} header")),
            Some(v) => {
                if let Err(e) = NameAddr::parse(v) {
                    return Some(format!("Malformed {name} header ({e})"));
                }
            }
        }
    }
    match h.get_kind(HeaderName::CallId) {
        None => return Some("Missing Call-ID header".into()),
        Some(v) if !is_call_id(v) => return Some("Malformed Call-ID header".into()),
        Some(_) => {}
    }
    match h.get_kind(HeaderName::CSeq).map(CSeq::parse) {
        None => return Some("Missing CSeq header".into()),
        Some(Err(_)) => return Some("Malformed CSeq header".into()),
        Some(Ok(c)) => {
            if let Some(m) = method {
                if &c.method != m {
                    return Some("CSeq method does not match request method".into());
                }
            }
        }
    }
    None
}

/// Checks what only requests need.
fn check_request(h: &Headers, limits: &Limits) -> Option<String> {
    match h.get_kind(HeaderName::MaxForwards) {
        None if limits.require_max_forwards => return Some("Missing Max-Forwards header".into()),
        None => {}
        Some(v) => {
            // 1*DIGIT, "an integer in the range 0-255" (section 20.22).
            let v = v.trim();
            if v.is_empty()
                || v.len() > 10
                || !v.bytes().all(|b| b.is_ascii_digit())
                || v.parse::<u32>().map_or(true, |n| n > 255)
            {
                return Some("Malformed Max-Forwards header".into());
            }
        }
    }
    for v in h.values_kind(HeaderName::Route) {
        if let Err(e) = NameAddr::parse(v) {
            return Some(format!("Malformed Route header ({e})"));
        }
    }
    None
}
