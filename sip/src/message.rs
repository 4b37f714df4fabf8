//! SIP messages: [`Request`], [`Response`], [`Message`], their serialisation, and the header
//! edits a proxy makes.
//!
//! Serialisation writes the start line, then every header field exactly as it is held (so
//! fields that were parsed and not edited come out byte for byte), then the body.
//! `Content-Length` is kept truthful: a field whose value differs from the body's length is
//! rewritten, and one is added when missing (RFC 3261 section 20.14 requires it on streams).

use std::fmt;
use std::net::SocketAddr;

use bytes::{BufMut, Bytes};

use super::headers::{HeaderName, Headers};
use super::params::Params;
use super::typed::Via;
use super::uri::Uri;

/// A request method. Methods are case-sensitive (RFC 3261 section 7.1); unknown ones are
/// kept as [`Method::Other`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `INVITE`
    Invite,
    /// `ACK`
    Ack,
    /// `BYE`
    Bye,
    /// `CANCEL`
    Cancel,
    /// `REGISTER`
    Register,
    /// `OPTIONS`
    Options,
    /// `INFO`
    Info,
    /// `UPDATE`
    Update,
    /// `PRACK`
    Prack,
    /// `SUBSCRIBE`
    Subscribe,
    /// `NOTIFY`
    Notify,
    /// `REFER`
    Refer,
    /// `MESSAGE`
    Message,
    /// `PUBLISH`
    Publish,
    /// Any other token.
    Other(Box<str>),
}

impl Method {
    /// The method for a token (case-sensitive).
    pub fn from_token(s: &str) -> Method {
        match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "REGISTER" => Method::Register,
            "OPTIONS" => Method::Options,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "REFER" => Method::Refer,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            other => Method::Other(other.into()),
        }
    }

    /// The method's token.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Other(s) => s,
            known => known.name().unwrap_or_default(),
        }
    }

    /// The token of a method of RFC 3261 or its extensions, `None` for [`Method::Other`]
    /// (a name that lives as long as the program, for counters keyed by method).
    pub fn name(&self) -> Option<&'static str> {
        Some(match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(_) => return None,
        })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A SIP request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The method of the request line.
    pub method: Method,
    /// The Request-URI.
    pub uri: Uri,
    /// The header fields in order.
    pub headers: Headers,
    /// The body (empty when none).
    pub body: Bytes,
}

/// A SIP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code (100 to 699).
    pub status: u16,
    /// The reason phrase.
    pub reason: String,
    /// The header fields in order.
    pub headers: Headers,
    /// The body (empty when none).
    pub body: Bytes,
}

/// A request or a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A request.
    Request(Request),
    /// A response.
    Response(Response),
}

impl Request {
    /// A request with no headers and no body.
    pub fn new(method: Method, uri: Uri) -> Request {
        Request {
            method,
            uri,
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    /// The serialised request.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.estimated_len());
        self.write_to(&mut out);
        out.into()
    }

    /// Appends the serialised request to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.put_slice(self.method.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(self.uri.as_str().as_bytes());
        out.put_slice(b" SIP/2.0\r\n");
        write_rest(out, &self.headers, &self.body);
    }

    fn estimated_len(&self) -> usize {
        64 + self.uri.as_str().len() + head_len(&self.headers) + self.body.len()
    }

    /// The canonical address of record of the `To` URI (the key of the registrar ring), per
    /// `onehop_overlay::ring::canonical_aor`.
    pub fn to_aor(&self) -> Option<String> {
        self.headers.to().and_then(|t| t.canonical_aor())
    }

    /// Replaces the body and sets `Content-Type` (or removes it when `content_type` is
    /// `None`) and `Content-Length`.
    pub fn set_body(&mut self, body: Bytes, content_type: Option<&str>) {
        set_body(&mut self.headers, &mut self.body, body, content_type);
    }
}

impl Response {
    /// A response with no headers and no body.
    pub fn new(status: u16, reason: impl Into<String>) -> Response {
        Response {
            status,
            reason: reason.into(),
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    /// The serialised response.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::with_capacity(64 + head_len(&self.headers) + self.body.len());
        self.write_to(&mut out);
        out.into()
    }

    /// Appends the serialised response to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.put_slice(b"SIP/2.0 ");
        out.put_slice(self.status.to_string().as_bytes());
        out.put_u8(b' ');
        out.put_slice(self.reason.as_bytes());
        out.put_slice(b"\r\n");
        write_rest(out, &self.headers, &self.body);
    }

    /// The status class: 1 for provisional, 2 for success, ... 6 for global failure.
    pub fn class(&self) -> u16 {
        self.status / 100
    }

    /// Whether this is a provisional (1xx) response.
    pub fn is_provisional(&self) -> bool {
        self.status < 200
    }

    /// Replaces the body and sets `Content-Type` and `Content-Length`.
    pub fn set_body(&mut self, body: Bytes, content_type: Option<&str>) {
        set_body(&mut self.headers, &mut self.body, body, content_type);
    }

    /// Appends a header field and returns the response (builder style).
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push(name, value);
        self
    }
}

impl Message {
    /// The header fields.
    pub fn headers(&self) -> &Headers {
        match self {
            Message::Request(r) => &r.headers,
            Message::Response(r) => &r.headers,
        }
    }

    /// The header fields, mutable.
    pub fn headers_mut(&mut self) -> &mut Headers {
        match self {
            Message::Request(r) => &mut r.headers,
            Message::Response(r) => &mut r.headers,
        }
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        match self {
            Message::Request(r) => &r.body,
            Message::Response(r) => &r.body,
        }
    }

    /// The serialised message.
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Message::Request(r) => r.to_bytes(),
            Message::Response(r) => r.to_bytes(),
        }
    }

    /// Appends the serialised message to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Message::Request(r) => r.write_to(out),
            Message::Response(r) => r.write_to(out),
        }
    }

    /// The request, if this is one.
    pub fn as_request(&self) -> Option<&Request> {
        match self {
            Message::Request(r) => Some(r),
            Message::Response(_) => None,
        }
    }

    /// The response, if this is one.
    pub fn as_response(&self) -> Option<&Response> {
        match self {
            Message::Request(_) => None,
            Message::Response(r) => Some(r),
        }
    }
}

impl From<Request> for Message {
    fn from(r: Request) -> Message {
        Message::Request(r)
    }
}

impl From<Response> for Message {
    fn from(r: Response) -> Message {
        Message::Response(r)
    }
}

impl fmt::Display for Request {
    /// The serialised request, the body shown lossily as UTF-8 (for logs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

impl fmt::Display for Response {
    /// The serialised response, the body shown lossily as UTF-8 (for logs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Request(r) => r.fmt(f),
            Message::Response(r) => r.fmt(f),
        }
    }
}

fn head_len(headers: &Headers) -> usize {
    headers.iter().map(|h| h.raw().len() + 2).sum::<usize>() + 24
}

/// Writes the header fields (with a truthful Content-Length), the blank line and the body.
fn write_rest(out: &mut Vec<u8>, headers: &Headers, body: &[u8]) {
    let mut wrote_length = false;
    for h in headers {
        if h.kind() == HeaderName::ContentLength {
            if wrote_length {
                // A second Content-Length would contradict the first: drop it.
                continue;
            }
            wrote_length = true;
            if h.value().parse::<usize>().ok() != Some(body.len()) {
                out.put_slice(h.name().as_bytes());
                out.put_slice(b": ");
                out.put_slice(body.len().to_string().as_bytes());
                out.put_slice(b"\r\n");
                continue;
            }
        }
        out.put_slice(h.raw().as_bytes());
        out.put_slice(b"\r\n");
    }
    if !wrote_length {
        out.put_slice(b"Content-Length: ");
        out.put_slice(body.len().to_string().as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    out.put_slice(body);
}

fn set_body(headers: &mut Headers, slot: &mut Bytes, body: Bytes, content_type: Option<&str>) {
    match content_type {
        Some(ct) => headers.set("Content-Type", ct),
        None => {
            headers.remove_all("Content-Type");
        }
    }
    headers.set("Content-Length", &body.len().to_string());
    *slot = body;
}

/// The edits a proxy makes (RFC 3261 section 16.6 and 16.7, RFC 3581). Each rewrites only
/// the field it changes.
impl Headers {
    /// Adds `value` as the new topmost Via (a new field before the first Via).
    pub fn prepend_via(&mut self, value: &str) {
        self.prepend("Via", value);
    }

    /// Removes the topmost Via value and returns it.
    pub fn remove_top_via(&mut self) -> Option<String> {
        self.remove_first_value("Via")
    }

    /// Stamps the topmost Via of a received request per RFC 3581 and RFC 3261 section
    /// 18.2.1: adds `received=IP` when the sent-by host differs from the source address, or
    /// always when the Via asks for `rport`, and fills in `rport=PORT` when it is present
    /// without a value. Returns whether the Via changed.
    pub fn stamp_received(&mut self, source: SocketAddr) -> bool {
        let Some(top) = self.values_kind(HeaderName::Via).next() else {
            return false;
        };
        let Ok(via) = Via::parse(top) else {
            return false;
        };
        let ip = source.ip();
        let wants_rport = via.rport() == Some(None);
        let host_is_source = super::typed::host_is_ip(via.host, ip);
        let need_received = (wants_rport || !host_is_source) && via.received().is_none();
        if !need_received && !wants_rport {
            return false;
        }
        // RFC 3261 grammar: `received` holds an IPv6address, without brackets.
        let ip_text = ip.to_string();
        let new = rewrite_params(via.as_str(), via.params, |name, value, out| {
            if name.eq_ignore_ascii_case("rport") && value.is_none() {
                out.push_str(";rport=");
                out.push_str(&source.port().to_string());
                true
            } else {
                false
            }
        });
        let new = if need_received {
            format!("{new};received={ip_text}")
        } else {
            new
        };
        self.replace_first_value("Via", &new);
        true
    }

    /// Adds `value` (a name-addr such as `<sip:10.0.0.1;lr>`) as the new topmost
    /// Record-Route.
    pub fn prepend_record_route(&mut self, value: &str) {
        self.prepend("Record-Route", value);
    }

    /// Removes the topmost Route value and returns it.
    pub fn pop_route(&mut self) -> Option<String> {
        self.remove_first_value("Route")
    }

    /// Decrements Max-Forwards, inserting `Max-Forwards: 70` when absent (RFC 3261 section
    /// 16.6 step 3). Returns the new value, or `None` when it was already 0 (nothing is
    /// changed then: the request must not be forwarded).
    pub fn decrement_max_forwards(&mut self) -> Option<u32> {
        match self.max_forwards() {
            Some(0) => None,
            Some(n) => {
                self.set("Max-Forwards", &(n - 1).to_string());
                Some(n - 1)
            }
            None => {
                self.push("Max-Forwards", "70");
                Some(70)
            }
        }
    }

    /// Adds `;tag=TAG` to the `To` header when it has no tag yet. Returns whether it did.
    pub fn add_to_tag(&mut self, tag: &str) -> bool {
        let Some(to) = self.get_kind(HeaderName::To) else {
            return false;
        };
        let Ok(addr) = super::typed::NameAddr::parse(to) else {
            return false;
        };
        if addr.tag().is_some() {
            return false;
        }
        let mut value = to.trim().to_owned();
        if addr.params.contains("tag") {
            // An empty `;tag=`: rebuild without it.
            value = rewrite_params(addr.as_str(), addr.params, |name, _, _| {
                name.eq_ignore_ascii_case("tag")
            });
        }
        value.push_str(";tag=");
        value.push_str(tag);
        self.set("To", &value);
        true
    }
}

/// Rewrites a value's trailing parameter list: `edit(name, value, out)` may write a
/// replacement for a parameter into `out` and return true, or return false to keep the
/// parameter as it was. The text before the parameters is kept as written.
fn rewrite_params(
    whole: &str,
    params: Params<'_>,
    mut edit: impl FnMut(&str, Option<&str>, &mut String) -> bool,
) -> String {
    let p = params.as_str();
    let prefix_len = whole.len() - p.len();
    let mut out = String::with_capacity(whole.len() + 32);
    out.push_str(whole[..prefix_len].trim_end());
    for (name, value) in params.iter() {
        if !edit(name, value, &mut out) {
            out.push(';');
            out.push_str(name);
            if let Some(v) = value {
                out.push('=');
                out.push_str(v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> Request {
        let mut r = Request::new(Method::Invite, Uri::parse("sip:bob@biloxi.com").unwrap());
        r.headers.push(
            "Via",
            "SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds;rport",
        );
        r.headers.push("Max-Forwards", "70");
        r.headers.push("To", "Bob <sip:bob@biloxi.com>");
        r
    }

    #[test]
    fn serialise_adds_content_length() {
        let r = req();
        let text = String::from_utf8(r.to_bytes().to_vec()).unwrap();
        assert!(text.starts_with("INVITE sip:bob@biloxi.com SIP/2.0\r\nVia: "));
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn stamp_received_and_rport() {
        let mut r = req();
        assert!(r.headers.stamp_received("192.0.2.4:5066".parse().unwrap()));
        assert_eq!(
            r.headers.get("via"),
            Some("SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds;rport=5066;received=192.0.2.4")
        );
        let v = r.headers.via_top().unwrap();
        assert_eq!(v.response_target(), ("192.0.2.4", 5066));
        // Already stamped: nothing more to do.
        assert!(!r.headers.stamp_received("192.0.2.4:5066".parse().unwrap()));

        let mut h = Headers::new();
        h.push("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1");
        assert!(!h.stamp_received("10.0.0.1:5060".parse().unwrap()));
        assert!(h.stamp_received("[2001:db8::1]:5060".parse().unwrap()));
        assert_eq!(
            h.get("via"),
            Some("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;received=2001:db8::1")
        );
    }

    #[test]
    fn max_forwards_and_to_tag() {
        let mut r = req();
        assert_eq!(r.headers.decrement_max_forwards(), Some(69));
        r.headers.set("Max-Forwards", "0");
        assert_eq!(r.headers.decrement_max_forwards(), None);
        r.headers.remove_all("Max-Forwards");
        assert_eq!(r.headers.decrement_max_forwards(), Some(70));
        assert!(r.headers.add_to_tag("abc"));
        assert_eq!(
            r.headers.get("To"),
            Some("Bob <sip:bob@biloxi.com>;tag=abc")
        );
        assert!(!r.headers.add_to_tag("def"));
        r.headers.set("To", "<sip:bob@biloxi.com>;tag=;x=1");
        assert!(r.headers.add_to_tag("q"));
        assert_eq!(r.headers.get("To"), Some("<sip:bob@biloxi.com>;x=1;tag=q"));
    }

    #[test]
    fn set_body_updates_length() {
        let mut r = req();
        r.set_body(Bytes::from_static(b"v=0\r\n"), Some("application/sdp"));
        assert_eq!(r.headers.get("Content-Length"), Some("5"));
        assert_eq!(r.headers.content_type(), Some("application/sdp"));
        // A stale Content-Length is corrected on output.
        r.headers.set("Content-Length", "99");
        let text = String::from_utf8(r.to_bytes().to_vec()).unwrap();
        assert!(text.contains("Content-Length: 5\r\n"));
    }
}
