//! Building responses from a request (RFC 3261 section 8.2.6), and the status codes the proxy
//! and registrar use.

use xxhash_rust::xxh3::xxh3_64;

use super::headers::HeaderName;
use super::message::{Request, Response};

/// The status codes used by the proxy and registrar.
pub mod status {
    /// 100 Trying
    pub const TRYING: u16 = 100;
    /// 180 Ringing
    pub const RINGING: u16 = 180;
    /// 200 OK
    pub const OK: u16 = 200;
    /// 400 Bad Request
    pub const BAD_REQUEST: u16 = 400;
    /// 403 Forbidden
    pub const FORBIDDEN: u16 = 403;
    /// 404 Not Found
    pub const NOT_FOUND: u16 = 404;
    /// 405 Method Not Allowed
    pub const METHOD_NOT_ALLOWED: u16 = 405;
    /// 408 Request Timeout
    pub const REQUEST_TIMEOUT: u16 = 408;
    /// 416 Unsupported URI Scheme
    pub const UNSUPPORTED_URI_SCHEME: u16 = 416;
    /// 420 Bad Extension
    pub const BAD_EXTENSION: u16 = 420;
    /// 423 Interval Too Brief
    pub const INTERVAL_TOO_BRIEF: u16 = 423;
    /// 480 Temporarily Unavailable
    pub const TEMPORARILY_UNAVAILABLE: u16 = 480;
    /// 481 Call/Transaction Does Not Exist
    pub const CALL_DOES_NOT_EXIST: u16 = 481;
    /// 482 Loop Detected
    pub const LOOP_DETECTED: u16 = 482;
    /// 483 Too Many Hops
    pub const TOO_MANY_HOPS: u16 = 483;
    /// 486 Busy Here
    pub const BUSY_HERE: u16 = 486;
    /// 487 Request Terminated
    pub const REQUEST_TERMINATED: u16 = 487;
    /// 500 Server Internal Error
    pub const SERVER_INTERNAL_ERROR: u16 = 500;
    /// 503 Service Unavailable
    pub const SERVICE_UNAVAILABLE: u16 = 503;
    /// 504 Server Time-out
    pub const SERVER_TIMEOUT: u16 = 504;
    /// 505 Version Not Supported
    pub const VERSION_NOT_SUPPORTED: u16 = 505;
    /// 513 Message Too Large
    pub const MESSAGE_TOO_LARGE: u16 = 513;
    /// 603 Decline
    pub const DECLINE: u16 = 603;
}

/// The standard reason phrase for a status code (RFC 3261 section 21), or a generic one
/// for the code's class.
pub fn reason_phrase(status: u16) -> &'static str {
    known_reason(status).unwrap_or(match status / 100 {
        1 => "Session Progress",
        2 => "OK",
        3 => "Redirection",
        4 => "Client Error",
        5 => "Server Error",
        _ => "Global Failure",
    })
}

fn known_reason(status: u16) -> Option<&'static str> {
    Some(match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        305 => "Use Proxy",
        380 => "Alternative Service",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        493 => "Undecipherable",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => return None,
    })
}

/// Builds a response to `req` per RFC 3261 section 8.2.6: the Via fields (all, in order),
/// From, To, Call-ID and CSeq are copied as written (and `Timestamp` for 100 Trying).
///
/// `reason` defaults to [`reason_phrase`]. When the request's To has no tag, a tag is added
/// for every status but 100: `to_tag` when given, else [`stable_tag`] (the same for
/// retransmissions of the request, as stateless answers need). The response has no body
/// (serialisation adds `Content-Length: 0` after the last field); add headers such as
/// `Min-Expires` with [`Response::with_header`].
pub fn reply(req: &Request, status: u16, reason: Option<&str>, to_tag: Option<&str>) -> Response {
    let mut resp = Response::new(status, reason.unwrap_or_else(|| reason_phrase(status)));
    for h in &req.headers {
        let copy = match h.kind() {
            HeaderName::Via
            | HeaderName::From
            | HeaderName::To
            | HeaderName::CallId
            | HeaderName::CSeq => true,
            HeaderName::Timestamp => status == 100,
            _ => false,
        };
        if copy {
            resp.headers.push_header(h.clone());
        }
    }
    if status > 100 {
        let has_tag = req.headers.to().is_some_and(|t| t.tag().is_some());
        if !has_tag {
            let tag = match to_tag {
                Some(t) => t.to_owned(),
                None => stable_tag(req),
            };
            resp.headers.add_to_tag(&tag);
        }
    }
    resp
}

/// A To tag derived from the request's identity (Call-ID, From tag, top Via branch, CSeq):
/// the same for every retransmission of a request, different across requests.
pub fn stable_tag(req: &Request) -> String {
    let h = &req.headers;
    let mut key = String::with_capacity(128);
    for part in [
        h.call_id().unwrap_or(""),
        h.from().and_then(|f| f.tag()).unwrap_or(""),
        h.via_top().and_then(|v| v.branch()).unwrap_or(""),
        h.get_kind(HeaderName::CSeq).unwrap_or(""),
    ] {
        key.push_str(part);
        key.push('\u{1f}');
    }
    format!("{:016x}", xxh3_64(key.as_bytes()))
}
