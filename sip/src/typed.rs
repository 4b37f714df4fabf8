//! Typed views of the headers the SIP core reads: `Via`, name-addr headers (`From`, `To`,
//! `Contact`, `Route`, `Record-Route`), `CSeq`, and the numeric headers.
//!
//! The views borrow the header text ([`Via<'a>`], [`NameAddr<'a>`]) and are parsed on each
//! access, which is cheap: a few scans of a short string. The parser ([`super::parse()`])
//! checks at the edge that the headers a request cannot do without are well formed, so the
//! accessors on a parsed message return `None` only for absent headers.

use std::borrow::Cow;
use std::net::IpAddr;

use super::headers::{HeaderName, Headers};
use super::message::Method;
use super::params::{is_token, unquote, Params};
use super::uri::{Uri, UriError};

/// The RFC 3261 magic cookie that starts every compliant branch parameter.
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// Why a header value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// A `Via` value that is not `SIP/2.0/TRANSPORT host[:port][;params]`.
    #[error("malformed via: {0}")]
    Via(&'static str),
    /// A name-addr (`From`, `To`, `Contact`, `Route`) that cannot be read.
    #[error("malformed address: {0}")]
    NameAddr(&'static str),
    /// The URI inside a name-addr.
    #[error("malformed uri: {0}")]
    Uri(#[from] UriError),
    /// A `CSeq` that is not `number METHOD`.
    #[error("malformed cseq")]
    CSeq,
}

/// One `Via` value: `SIP/2.0/UDP host:port;branch=...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Via<'a> {
    raw: &'a str,
    /// The transport as written (`UDP`, `tcp`, `TLS`, `WS`, ...).
    pub transport: &'a str,
    /// The sent-by host as written (IPv6 references keep their brackets).
    pub host: &'a str,
    /// The sent-by port, if given.
    pub port: Option<u16>,
    /// The parameters (`;branch=...;received=...`).
    pub params: Params<'a>,
}

impl<'a> Via<'a> {
    /// Parses one Via value (not a comma-separated list).
    pub fn parse(raw: &'a str) -> Result<Via<'a>, HeaderError> {
        let raw = raw.trim();
        let (name, rest) = split_slash(raw).ok_or(HeaderError::Via("no protocol"))?;
        let (version, rest) = split_slash(rest).ok_or(HeaderError::Via("no version"))?;
        if !name.eq_ignore_ascii_case("SIP") || version != "2.0" {
            return Err(HeaderError::Via("protocol is not SIP/2.0"));
        }
        let rest = rest.trim_start();
        let tend = rest
            .find(|c: char| c.is_ascii_whitespace())
            .ok_or(HeaderError::Via("no sent-by"))?;
        let transport = &rest[..tend];
        if !is_token(transport) {
            return Err(HeaderError::Via("bad transport"));
        }
        let rest = rest[tend..].trim_start();
        let end = rest.find(';').unwrap_or(rest.len());
        let sent_by = rest[..end].trim_end();
        let params = &rest[end..];
        let (host, port) = split_host_port(sent_by).ok_or(HeaderError::Via("bad sent-by"))?;
        Ok(Via {
            raw,
            transport,
            host,
            port,
            params: Params::new(params),
        })
    }

    /// The value as written.
    pub fn as_str(&self) -> &'a str {
        self.raw
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&'a str> {
        self.params.get("branch")
    }

    /// Whether the branch starts with the RFC 3261 magic cookie (so it identifies the
    /// transaction by itself).
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch().is_some_and(|b| b.starts_with(MAGIC_COOKIE))
    }

    /// The `received` parameter.
    pub fn received(&self) -> Option<&'a str> {
        self.params.get("received")
    }

    /// The `rport` parameter (RFC 3581): `None` when absent, `Some(None)` when present
    /// without a value (a request asking for it), `Some(Some(port))` when filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.params.get("rport").map(|v| v.parse().ok())
    }

    /// The `maddr` parameter.
    pub fn maddr(&self) -> Option<&'a str> {
        self.params.get("maddr")
    }

    /// The sent-by as `host` or `host:port`, host lower-cased: the form used in
    /// transaction keys and loop detection.
    pub fn sent_by(&self) -> String {
        let mut s = self.host.to_ascii_lowercase();
        if let Some(p) = self.port {
            s.push(':');
            s.push_str(&p.to_string());
        }
        s
    }

    /// Whether the transport is reliable (anything but UDP).
    pub fn is_reliable(&self) -> bool {
        !self.transport.eq_ignore_ascii_case("UDP")
    }

    /// Where a response to this Via goes over an unreliable or new connection (RFC 3261
    /// section 18.2.2 with RFC 3581). The default port is 5061 for TLS, else 5060.
    ///
    /// - `maddr` present: that address, at the sent-by port (or the default); `rport` is
    ///   not used (RFC 3581 section 4 applies only without `maddr`);
    /// - else `received` present: that address, at the `rport` value when filled in, else
    ///   the sent-by port (or the default);
    /// - else the sent-by host (a name may still need RFC 3263 resolving) and port (or the
    ///   default). An `rport` value without `received` is ignored: RFC 3581 servers always
    ///   add `received` with it, and without it the sent-by is where the client listens.
    ///
    /// IPv6 addresses come without brackets.
    pub fn response_target(&self) -> (&'a str, u16) {
        let default = if self.transport.eq_ignore_ascii_case("TLS") {
            5061
        } else {
            5060
        };
        let sent_by_port = self.port.unwrap_or(default);
        let (host, port) = match (self.maddr().filter(|m| !m.is_empty()), self.received()) {
            (Some(maddr), _) => (maddr, sent_by_port),
            (None, Some(received)) if !received.is_empty() => {
                let port = match self.rport() {
                    Some(Some(p)) => p,
                    _ => sent_by_port,
                };
                (received, port)
            }
            _ => (self.host, sent_by_port),
        };
        (host.trim_start_matches('[').trim_end_matches(']'), port)
    }
}

/// Splits `TOKEN / rest` (white space allowed around the slash).
fn split_slash(s: &str) -> Option<(&str, &str)> {
    let slash = s.find('/')?;
    let token = s[..slash].trim();
    if !is_token(token) {
        return None;
    }
    Some((token, s[slash + 1..].trim_start()))
}

/// Splits `host[:port]`; IPv6 references keep their brackets. `None` when malformed.
pub(crate) fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, rest) = if s.starts_with('[') {
        let end = s.find(']')? + 1;
        (&s[..end], &s[end..])
    } else {
        match s.find(':') {
            Some(c) => (&s[..c], &s[c..]),
            None => (s, ""),
        }
    };
    let host_ok = !host.is_empty()
        && host != "[]"
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'[' | b']' | b':')
        });
    if !host_ok {
        return None;
    }
    let port = match rest.strip_prefix(':') {
        Some(p) => {
            let p = p.trim();
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(p.parse().ok()?)
        }
        None if rest.is_empty() => None,
        None => return None,
    };
    Some((host, port))
}

/// Whether `host` (as written in a URI or Via, brackets allowed) is the IP address `ip`.
pub fn host_is_ip(host: &str, ip: IpAddr) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.parse::<IpAddr>().is_ok_and(|a| a == ip)
}

/// A name-addr or addr-spec with header parameters: the value of `From`, `To`, `Contact`,
/// `Route`, `Record-Route` (`"Bob" <sip:bob@biloxi.com>;tag=a6c85cf`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameAddr<'a> {
    raw: &'a str,
    display: Option<&'a str>,
    uri: &'a str,
    /// The header parameters after the address (`;tag=...`, `;expires=...`).
    pub params: Params<'a>,
}

impl<'a> NameAddr<'a> {
    /// Parses one value (not a comma-separated list). The URI must parse as a [`Uri`].
    pub fn parse(raw: &'a str) -> Result<NameAddr<'a>, HeaderError> {
        let raw = raw.trim();
        let (display, after_display) = if raw.starts_with('"') {
            let close =
                close_quote(raw).ok_or(HeaderError::NameAddr("unterminated display name"))?;
            (Some(&raw[..=close]), &raw[close + 1..])
        } else {
            (None, raw)
        };
        let (display, uri, params) = match after_display.find('<') {
            Some(lt) => {
                let before = after_display[..lt].trim();
                let display = match display {
                    Some(d) if before.is_empty() => Some(d),
                    Some(_) => return Err(HeaderError::NameAddr("text after display name")),
                    None if before.is_empty() => None,
                    None => Some(before),
                };
                let inner = &after_display[lt + 1..];
                let gt = inner
                    .find('>')
                    .ok_or(HeaderError::NameAddr("unterminated <"))?;
                let params = inner[gt + 1..].trim_start();
                if !params.is_empty() && !params.starts_with(';') {
                    return Err(HeaderError::NameAddr("text after >"));
                }
                (display, inner[..gt].trim(), params)
            }
            None if display.is_some() => {
                return Err(HeaderError::NameAddr("display name without <uri>"))
            }
            None => {
                // addr-spec: parameters after the URI belong to the header.
                let end = after_display.find(';').unwrap_or(after_display.len());
                (None, after_display[..end].trim(), &after_display[end..])
            }
        };
        super::uri::check(uri)?;
        Ok(NameAddr {
            raw,
            display,
            uri,
            params: Params::new(params),
        })
    }

    /// The value as written.
    pub fn as_str(&self) -> &'a str {
        self.raw
    }

    /// The display name, unquoted, if any.
    pub fn display(&self) -> Option<Cow<'a, str>> {
        self.display.map(unquote)
    }

    /// The URI text as written.
    pub fn uri_str(&self) -> &'a str {
        self.uri
    }

    /// The URI, parsed (it was checked when this value was parsed).
    pub fn uri(&self) -> Uri {
        Uri::parse(self.uri).expect("checked by NameAddr::parse")
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&'a str> {
        self.params.get("tag").filter(|t| !t.is_empty())
    }

    /// A header parameter.
    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.params.get(name)
    }

    /// The `expires` parameter of a Contact: `None` when absent; a malformed value reads as
    /// absent. Values beyond `u32` are clamped.
    pub fn expires(&self) -> Option<u32> {
        self.params.get("expires").and_then(parse_delta_seconds)
    }

    /// The `q` parameter of a Contact in thousandths (`q=0.5` -> 500); `None` when absent or
    /// not a valid qvalue (0 to 1 with at most three decimals).
    pub fn q(&self) -> Option<u16> {
        self.params.get("q").and_then(parse_qvalue)
    }

    /// The canonical address of record of this URI, per
    /// `onehop_overlay::ring::canonical_aor`.
    pub fn canonical_aor(&self) -> Option<String> {
        onehop_overlay::ring::canonical_aor(self.uri)
    }
}

/// The index of the quote closing a quoted string that starts at `s[0]`.
fn close_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, &b) in s.as_bytes().iter().enumerate().skip(1) {
        if escaped {
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            return Some(i);
        }
    }
    None
}

/// Parses delta-seconds, clamping values beyond `u32::MAX` (RFC 3261 section 10.3 item 7
/// asks for 2^32-1 for larger values).
pub fn parse_delta_seconds(s: &str) -> Option<u32> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        s.parse::<u64>()
            .map_or(u32::MAX, |v| v.min(u32::MAX as u64) as u32),
    )
}

/// Parses a qvalue (`0`, `0.5`, `1.000`) into thousandths.
pub fn parse_qvalue(s: &str) -> Option<u16> {
    let s = s.trim();
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths = 0u16;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += (b - b'0') as u16 * [100, 10, 1][i];
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// Formats thousandths as a qvalue (`500` -> `0.5`, `1000` -> `1`).
pub fn format_qvalue(q: u16) -> String {
    if q >= 1000 {
        return "1".into();
    }
    let s = format!("0.{q:03}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// One `Contact` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contact<'a> {
    /// `Contact: *` (only valid in a REGISTER with `Expires: 0`).
    Wildcard,
    /// An address with its parameters.
    Addr(NameAddr<'a>),
}

impl<'a> Contact<'a> {
    /// Parses one Contact value.
    pub fn parse(raw: &'a str) -> Result<Contact<'a>, HeaderError> {
        if raw.trim() == "*" {
            Ok(Contact::Wildcard)
        } else {
            NameAddr::parse(raw).map(Contact::Addr)
        }
    }
}

/// The `CSeq` header: a sequence number and a method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CSeq {
    /// The sequence number (less than 2^31 per RFC 3261 section 8.1.1.5).
    pub number: u32,
    /// The method.
    pub method: Method,
}

impl CSeq {
    /// Parses `number METHOD`.
    pub fn parse(s: &str) -> Result<CSeq, HeaderError> {
        let s = s.trim();
        let sp = s.find([' ', '\t']).ok_or(HeaderError::CSeq)?;
        let num = &s[..sp];
        let method = s[sp..].trim();
        if num.is_empty() || num.len() > 10 || !num.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HeaderError::CSeq);
        }
        let number: u64 = num.parse().map_err(|_| HeaderError::CSeq)?;
        if number >= 1 << 31 || !is_token(method) {
            return Err(HeaderError::CSeq);
        }
        Ok(CSeq {
            number: number as u32,
            method: Method::from_token(method),
        })
    }
}

/// Typed accessors over the headers of any message.
impl Headers {
    /// The topmost Via value.
    pub fn via_top(&self) -> Option<Via<'_>> {
        self.values_kind(HeaderName::Via)
            .next()
            .and_then(|v| Via::parse(v).ok())
    }

    /// Every Via value in order (malformed values skipped; the parser rejects requests with
    /// a malformed Via).
    pub fn vias(&self) -> impl Iterator<Item = Via<'_>> {
        self.values_kind(HeaderName::Via)
            .filter_map(|v| Via::parse(v).ok())
    }

    /// The `From` header.
    pub fn from(&self) -> Option<NameAddr<'_>> {
        self.get_kind(HeaderName::From)
            .and_then(|v| NameAddr::parse(v).ok())
    }

    /// The `To` header.
    pub fn to(&self) -> Option<NameAddr<'_>> {
        self.get_kind(HeaderName::To)
            .and_then(|v| NameAddr::parse(v).ok())
    }

    /// The `Call-ID`.
    pub fn call_id(&self) -> Option<&str> {
        self.get_kind(HeaderName::CallId)
    }

    /// The `CSeq`.
    pub fn cseq(&self) -> Option<CSeq> {
        self.get_kind(HeaderName::CSeq)
            .and_then(|v| CSeq::parse(v).ok())
    }

    /// Every Contact value (malformed values skipped; see [`Headers::contacts_checked`]).
    pub fn contacts(&self) -> impl Iterator<Item = Contact<'_>> {
        self.values_kind(HeaderName::Contact)
            .filter_map(|v| Contact::parse(v).ok())
    }

    /// Every Contact value, failing on the first malformed one.
    pub fn contacts_checked(&self) -> Result<Vec<Contact<'_>>, HeaderError> {
        self.values_kind(HeaderName::Contact)
            .map(Contact::parse)
            .collect()
    }

    /// The `Expires` header in seconds (a malformed value reads as absent).
    pub fn expires(&self) -> Option<u32> {
        self.get_kind(HeaderName::Expires)
            .and_then(parse_delta_seconds)
    }

    /// The `Min-Expires` header in seconds.
    pub fn min_expires(&self) -> Option<u32> {
        self.get_kind(HeaderName::MinExpires)
            .and_then(parse_delta_seconds)
    }

    /// The `Max-Forwards` header.
    pub fn max_forwards(&self) -> Option<u32> {
        self.get_kind(HeaderName::MaxForwards)
            .and_then(parse_delta_seconds)
    }

    /// Every Route value in order.
    pub fn routes(&self) -> impl Iterator<Item = NameAddr<'_>> {
        self.values_kind(HeaderName::Route)
            .filter_map(|v| NameAddr::parse(v).ok())
    }

    /// Every Record-Route value in order.
    pub fn record_routes(&self) -> impl Iterator<Item = NameAddr<'_>> {
        self.values_kind(HeaderName::RecordRoute)
            .filter_map(|v| NameAddr::parse(v).ok())
    }

    /// The `Content-Length` header.
    pub fn content_length(&self) -> Option<usize> {
        self.get_kind(HeaderName::ContentLength)
            .and_then(|v| parse_delta_seconds(v).map(|n| n as usize))
    }

    /// The `Content-Type` header as written.
    pub fn content_type(&self) -> Option<&str> {
        self.get_kind(HeaderName::ContentType)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via() {
        let v = Via::parse("SIP / 2.0 / UDP  PC33.atlanta.com:5066 ;branch=z9hG4bK776asdhds ;received=192.0.2.1;rport=5067").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, "PC33.atlanta.com");
        assert_eq!(v.port, Some(5066));
        assert_eq!(v.branch(), Some("z9hG4bK776asdhds"));
        assert!(v.has_rfc3261_branch());
        assert_eq!(v.received(), Some("192.0.2.1"));
        assert_eq!(v.rport(), Some(Some(5067)));
        assert_eq!(v.sent_by(), "pc33.atlanta.com:5066");
        assert_eq!(v.response_target(), ("192.0.2.1", 5067));
        assert!(!v.is_reliable());

        let v = Via::parse("SIP/2.0/TLS [2001:db8::9];rport;branch=z9hG4bKx").unwrap();
        assert_eq!(v.host, "[2001:db8::9]");
        assert_eq!(v.port, None);
        assert_eq!(v.rport(), Some(None));
        assert_eq!(v.response_target(), ("2001:db8::9", 5061));

        for bad in [
            "",
            "SIP/2.0/UDP",
            "SIP/3.0/UDP host",
            "HTTP/2.0/UDP host",
            "SIP/2.0/UDP host:abc",
            "SIP/2.0/UDP host:70000",
            "SIP/2.0/UDP ho st",
            "SIP/2.0/UDP [::1",
            "SIP/2.0 UDP host",
        ] {
            assert!(Via::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn response_target_18_2_2_and_rfc3581() {
        fn t(v: &str) -> (&str, u16) {
            Via::parse(v).unwrap().response_target()
        }
        // Sent-by alone: its host and port, or the transport's default port.
        assert_eq!(
            t("SIP/2.0/UDP pc33.atlanta.com:5066;branch=z9hG4bK1"),
            ("pc33.atlanta.com", 5066)
        );
        assert_eq!(
            t("SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK1"),
            ("pc33.atlanta.com", 5060)
        );
        assert_eq!(
            t("SIP/2.0/TLS pc33.atlanta.com;branch=z9hG4bK1"),
            ("pc33.atlanta.com", 5061)
        );
        assert_eq!(
            t("SIP/2.0/tls [2001:db8::5];branch=z9hG4bK1"),
            ("2001:db8::5", 5061)
        );
        // maddr: that address at the sent-by port (or 5060); received and rport unused.
        assert_eq!(
            t("SIP/2.0/UDP h.example:5070;maddr=239.255.255.1;received=192.0.2.9;rport=4000"),
            ("239.255.255.1", 5070)
        );
        assert_eq!(
            t("SIP/2.0/UDP h.example;maddr=10.0.0.7"),
            ("10.0.0.7", 5060)
        );
        // received: that address, with the rport value if filled in ...
        assert_eq!(
            t("SIP/2.0/UDP h.example:5070;received=192.0.2.9;rport=4000"),
            ("192.0.2.9", 4000)
        );
        // ... else the sent-by port, else the default.
        assert_eq!(
            t("SIP/2.0/UDP h.example:5070;received=192.0.2.9"),
            ("192.0.2.9", 5070)
        );
        assert_eq!(
            t("SIP/2.0/UDP h.example;received=192.0.2.9;rport"),
            ("192.0.2.9", 5060)
        );
        assert_eq!(
            t("SIP/2.0/TLS h.example;received=2001:db8::7"),
            ("2001:db8::7", 5061)
        );
        // An rport value without received is not used.
        assert_eq!(
            t("SIP/2.0/UDP 10.0.0.1:5070;rport=4000"),
            ("10.0.0.1", 5070)
        );
        // Parameter names are case-insensitive.
        assert_eq!(
            t("SIP/2.0/UDP h.example;RECEIVED=192.0.2.9;RPort=4001"),
            ("192.0.2.9", 4001)
        );
    }

    #[test]
    fn name_addr() {
        let a = NameAddr::parse("\"Bob \\\"B\\\" <x>\" <sip:bob@biloxi.com>;tag=a6c85cf").unwrap();
        assert_eq!(a.display().as_deref(), Some("Bob \"B\" <x>"));
        assert_eq!(a.uri_str(), "sip:bob@biloxi.com");
        assert_eq!(a.tag(), Some("a6c85cf"));
        assert_eq!(a.canonical_aor().as_deref(), Some("bob@biloxi.com"));

        let a = NameAddr::parse("Bob <sip:bob@biloxi.com;transport=tcp>").unwrap();
        assert_eq!(a.display().as_deref(), Some("Bob"));
        assert_eq!(a.uri().param("transport"), Some("tcp"));
        assert_eq!(a.tag(), None);

        // addr-spec: parameters belong to the header.
        let a = NameAddr::parse("sip:alice@atlanta.com;tag=88sja8x").unwrap();
        assert_eq!(a.uri_str(), "sip:alice@atlanta.com");
        assert_eq!(a.tag(), Some("88sja8x"));

        let c = NameAddr::parse("<sip:a@1.2.3.4:5062>;expires=60;q=0.7").unwrap();
        assert_eq!(c.expires(), Some(60));
        assert_eq!(c.q(), Some(700));

        for bad in [
            "\"unterminated <sip:a@b>",
            "\"x\" sip:a@b",
            "<sip:a@b",
            "<sip:a@b> junk",
            "<>",
            "",
            "<sip:>",
        ] {
            assert!(NameAddr::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cseq_and_numbers() {
        let c = CSeq::parse("314159 INVITE").unwrap();
        assert_eq!((c.number, c.method), (314159, Method::Invite));
        assert_eq!(
            CSeq::parse("1\tFOO").unwrap().method,
            Method::Other("FOO".into())
        );
        for bad in [
            "",
            "INVITE",
            "1",
            "x INVITE",
            "2147483648 INVITE",
            "-1 INVITE",
            "1 IN VITE",
        ] {
            assert!(CSeq::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_delta_seconds("99999999999"), Some(u32::MAX));
        assert_eq!(parse_delta_seconds("1x"), None);
        assert_eq!(parse_qvalue("1.000"), Some(1000));
        assert_eq!(parse_qvalue("0.05"), Some(50));
        assert_eq!(parse_qvalue("1.5"), None);
        assert_eq!(parse_qvalue("0.1234"), None);
        assert_eq!(format_qvalue(500), "0.5");
        assert_eq!(format_qvalue(1000), "1");
        assert_eq!(format_qvalue(0), "0");
        assert_eq!(format_qvalue(5), "0.005");
    }

    #[test]
    fn contact_wildcard() {
        assert_eq!(Contact::parse(" * ").unwrap(), Contact::Wildcard);
        assert!(matches!(
            Contact::parse("<sip:a@b>").unwrap(),
            Contact::Addr(_)
        ));
    }
}
