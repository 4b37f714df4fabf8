//! SIP URIs (RFC 3261 section 19.1): the raw text kept as written, with the parts located once.
//!
//! A [`Uri`] never rewrites what it was given: [`Uri::as_str`] returns the exact text, so a
//! Request-URI or a Route value is forwarded byte for byte. The parts are found when the URI is
//! parsed and handed out as slices of that text. URIs of other schemes (`tel:`, `urn:`) are kept
//! as opaque text: only [`Uri::scheme`] and [`Uri::as_str`] are meaningful for them.

use std::fmt;

use super::params::Params;

/// A byte range inside the URI's text.
type Span = (u32, u32);

/// A parsed URI: the text as given plus the location of each part.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Uri {
    raw: Box<str>,
    scheme: Span,
    user: Option<Span>,
    host: Span,
    port: Option<u16>,
    /// URI parameters including the leading `;` (empty when none).
    params: Span,
    /// URI headers after `?` (without it; empty when none).
    headers: Span,
}

/// Why a URI could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// There is no `scheme:` prefix.
    #[error("uri has no scheme")]
    NoScheme,
    /// A `sip:`/`sips:` URI without a host.
    #[error("sip uri has no host")]
    NoHost,
    /// The port is not a number from 0 to 65535.
    #[error("sip uri has a bad port")]
    BadPort,
    /// The URI contains whitespace, control characters or angle brackets.
    #[error("uri contains invalid characters")]
    BadChar,
}

impl Uri {
    /// Parses a URI. `sip:` and `sips:` URIs are split into their parts; other schemes are kept
    /// as opaque text.
    pub fn parse(s: &str) -> Result<Uri, UriError> {
        let p = parse_parts(s)?;
        Ok(Uri {
            raw: s.into(),
            scheme: p.scheme,
            user: p.user,
            host: p.host,
            port: p.port,
            params: p.params,
            headers: p.headers,
        })
    }

    fn slice(&self, (a, b): Span) -> &str {
        &self.raw[a as usize..b as usize]
    }

    /// The URI exactly as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The scheme as written (`sip`, `SIP`, `tel`, ...).
    pub fn scheme(&self) -> &str {
        self.slice(self.scheme)
    }

    /// Whether this is a `sip:` or `sips:` URI (whose parts are available).
    pub fn is_sip(&self) -> bool {
        let s = self.scheme();
        s.eq_ignore_ascii_case("sip") || s.eq_ignore_ascii_case("sips")
    }

    /// Whether this is a `sips:` URI.
    pub fn is_sips(&self) -> bool {
        self.scheme().eq_ignore_ascii_case("sips")
    }

    /// The user part as written (escapes kept), without a password.
    pub fn user(&self) -> Option<&str> {
        self.user.map(|s| self.slice(s))
    }

    /// The host as written (IPv6 references keep their brackets). Empty for non-SIP URIs.
    pub fn host(&self) -> &str {
        self.slice(self.host)
    }

    /// The explicit port, if any.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The URI parameters (`;transport=tcp;lr`).
    pub fn params(&self) -> Params<'_> {
        Params::new(self.slice(self.params))
    }

    /// A URI parameter's value: `Some("")` for a flag such as `lr`, `None` when absent.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params().get(name)
    }

    /// The headers part after `?`, without the `?` (empty when none).
    pub fn headers_part(&self) -> &str {
        self.slice(self.headers)
    }

    /// Whether the URI carries the `lr` (loose routing) parameter.
    pub fn is_loose_route(&self) -> bool {
        self.param("lr").is_some()
    }

    /// The `maddr` parameter if present, else the host.
    pub fn maddr_or_host(&self) -> &str {
        self.param("maddr")
            .filter(|m| !m.is_empty())
            .unwrap_or(self.host())
    }

    /// The `transport` parameter, lower-cased when present.
    pub fn transport_param(&self) -> Option<String> {
        self.param("transport").map(|t| t.to_ascii_lowercase())
    }

    /// The port to use: the explicit one, else 5061 for `sips:`/TLS and 5060 otherwise.
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or_else(|| {
            if self.is_sips() || self.transport_param().as_deref() == Some("tls") {
                5061
            } else {
                5060
            }
        })
    }

    /// The address of record for this URI, per `onehop_overlay::ring::canonical_aor`.
    pub fn canonical_aor(&self) -> Option<String> {
        onehop_overlay::ring::canonical_aor(self.as_str())
    }

    /// URI equivalence per RFC 3261 section 19.1.4.
    ///
    /// Schemes and hosts compare case-insensitively; users case-sensitively; a `%HH` escape
    /// equals the character it encodes unless that character is reserved (so `%61lice` is
    /// `alice`, `%40` is not `@`), and hex digits compare in any case. Ports must both be
    /// absent or equal. The parameters `user`, `ttl`, `method`, `maddr` and `transport` must
    /// match when present in either URI; any other parameter must match when present in both
    /// (values case-insensitively). Header components (`?h=v`) must be present in both and
    /// match, in any order (names case-insensitively). A password is not kept, so not
    /// compared. Non-SIP URIs compare as case-sensitive text.
    pub fn equivalent(&self, other: &Uri) -> bool {
        if !self.is_sip() || !other.is_sip() {
            return self.as_str() == other.as_str();
        }
        if !self.scheme().eq_ignore_ascii_case(other.scheme())
            || !users_equal(self.user(), other.user())
            || !self.host().eq_ignore_ascii_case(other.host())
            || self.port() != other.port()
        {
            return false;
        }
        let same = |a: &str, b: &str| {
            a.eq_ignore_ascii_case(b) || {
                let (a, b) = (normalise_escapes(a), normalise_escapes(b));
                a.eq_ignore_ascii_case(&b)
            }
        };
        const MUST_MATCH: [&str; 5] = ["user", "ttl", "method", "maddr", "transport"];
        for name in MUST_MATCH {
            match (self.param(name), other.param(name)) {
                (None, None) => {}
                (Some(a), Some(b)) if same(a, b) => {}
                _ => return false,
            }
        }
        let mut seen: Vec<&str> = Vec::new();
        for (name, value) in self.params().iter() {
            // A repeated parameter counts once, with its first value (the one `param` gives):
            // otherwise `;user=a;user=b` would not be equivalent to itself.
            if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
                continue;
            }
            seen.push(name);
            if let Some(theirs) = other.param(name) {
                if !same(value.unwrap_or(""), theirs) {
                    return false;
                }
            }
        }
        headers_equal(self.headers_part(), other.headers_part())
    }
}

/// Whether two header components (`h1=v1&h2=v2`) hold the same headers, in any order: names
/// case-insensitive, values compared after normalising escapes.
fn headers_equal(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let split = |s: &str| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = s
            .split('&')
            .filter(|h| !h.is_empty())
            .map(|h| {
                let (n, v) = h.split_once('=').unwrap_or((h, ""));
                (
                    normalise_escapes(n).to_ascii_lowercase(),
                    normalise_escapes(v),
                )
            })
            .collect();
        v.sort();
        v
    };
    split(a) == split(b)
}

/// The parts of a URI, located in its text.
struct Parts {
    scheme: Span,
    user: Option<Span>,
    host: Span,
    port: Option<u16>,
    params: Span,
    headers: Span,
}

/// Checks that `s` parses as a [`Uri`] without allocating.
pub(crate) fn check(s: &str) -> Result<(), UriError> {
    parse_parts(s).map(|_| ())
}

fn parse_parts(s: &str) -> Result<Parts, UriError> {
    if s.bytes()
        .any(|b| b <= b' ' || b == 0x7f || matches!(b, b'<' | b'>' | b'"'))
    {
        return Err(UriError::BadChar);
    }
    let colon = s.find(':').ok_or(UriError::NoScheme)?;
    let scheme = &s[..colon];
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return Err(UriError::NoScheme);
    }
    let len = s.len() as u32;
    let mut uri = Parts {
        scheme: (0, colon as u32),
        user: None,
        host: (len, len),
        port: None,
        params: (len, len),
        headers: (len, len),
    };
    if !(scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips")) {
        return Ok(uri);
    }
    let start = colon + 1;
    let rest = &s[start..];
    // '@' cannot appear unescaped after the host (params and headers exclude it), so the
    // last one ends the user info.
    let host_start = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            // The user part never contains ':'; the first one starts a password.
            let user_len = userinfo.find(':').unwrap_or(userinfo.len());
            uri.user = Some((start as u32, (start + user_len) as u32));
            start + at + 1
        }
        None => start,
    };
    let hp = &s[host_start..];
    let host_len = if hp.starts_with('[') {
        hp.find(']').ok_or(UriError::NoHost)? + 1
    } else {
        hp.find([':', ';', '?']).unwrap_or(hp.len())
    };
    if host_len == 0 || &hp[..host_len] == "[]" {
        return Err(UriError::NoHost);
    }
    uri.host = (host_start as u32, (host_start + host_len) as u32);
    let mut pos = host_start + host_len;
    if s[pos..].starts_with(':') {
        let p = &s[pos + 1..];
        let plen = p.find([';', '?']).unwrap_or(p.len());
        let port = &p[..plen];
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(UriError::BadPort);
        }
        uri.port = Some(port.parse().map_err(|_| UriError::BadPort)?);
        pos += 1 + plen;
    }
    if !s[pos..].is_empty() && !s[pos..].starts_with([';', '?']) {
        return Err(UriError::NoHost);
    }
    match s[pos..].find('?') {
        Some(q) => {
            uri.params = (pos as u32, (pos + q) as u32);
            uri.headers = ((pos + q + 1) as u32, len);
        }
        None => uri.params = (pos as u32, len),
    }
    Ok(uri)
}

/// Compares two user parts after normalising `%HH` escapes.
fn users_equal(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a == b || normalise_escapes(a) == normalise_escapes(b),
        _ => false,
    }
}

/// The form of `s` in which equivalent texts are equal (RFC 3261 section 19.1.4): escapes
/// of unreserved characters decoded, other escapes kept with upper-case hex digits;
/// malformed escapes are kept as written.
fn normalise_escapes(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(b.len());
    let hex = |c: u8| (c as char).to_digit(16);
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                let c = (h * 16 + l) as u8;
                if c.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&c) {
                    out.push(c as char);
                } else {
                    out.push('%');
                    out.push(b[i + 1].to_ascii_uppercase() as char);
                    out.push(b[i + 2].to_ascii_uppercase() as char);
                }
                i += 3;
                continue;
            }
        }
        // Copy one character (the text is UTF-8; non-ASCII is kept as is).
        let ch = s[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl fmt::Debug for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uri({:?})", &*self.raw)
    }
}

impl std::str::FromStr for Uri {
    type Err = UriError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uri::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`sip_headers`): a URI repeating a parameter with another value was
    /// not equivalent to itself, since each repetition was compared with the first value of
    /// the other URI's.
    #[test]
    fn a_repeated_parameter_keeps_a_uri_equivalent_to_itself() {
        let u = Uri::parse("sip:+1212@gw.example.test;user=phone;foo=1;user=ip;FOO=2").unwrap();
        assert!(u.equivalent(&u));
        let first = Uri::parse("sip:+1212@gw.example.test;user=phone;foo=1").unwrap();
        assert!(u.equivalent(&first) && first.equivalent(&u));
        let other = Uri::parse("sip:+1212@gw.example.test;user=ip").unwrap();
        assert!(!u.equivalent(&other) && !other.equivalent(&u));
    }

    #[test]
    fn parts() {
        let u = Uri::parse("sip:alice:secret@Atlanta.com:5070;transport=TCP;lr?subject=x").unwrap();
        assert_eq!(u.scheme(), "sip");
        assert_eq!(u.user(), Some("alice"));
        assert_eq!(u.host(), "Atlanta.com");
        assert_eq!(u.port(), Some(5070));
        assert_eq!(u.param("transport"), Some("TCP"));
        assert!(u.is_loose_route());
        assert_eq!(u.headers_part(), "subject=x");
        assert_eq!(u.canonical_aor().as_deref(), Some("alice@atlanta.com"));
        assert_eq!(u.port_or_default(), 5070);
    }

    #[test]
    fn ipv6_and_no_user() {
        let u = Uri::parse("sips:[2001:db8::1]:5061").unwrap();
        assert_eq!(u.user(), None);
        assert_eq!(u.host(), "[2001:db8::1]");
        assert_eq!(u.port(), Some(5061));
        assert!(u.is_sips());
        let u = Uri::parse("sip:example.com").unwrap();
        assert_eq!(u.host(), "example.com");
        assert_eq!(u.port_or_default(), 5060);
    }

    #[test]
    fn user_params_and_other_schemes() {
        let u = Uri::parse("sip:alice;day=tue@example.com").unwrap();
        assert_eq!(u.user(), Some("alice;day=tue"));
        assert_eq!(u.host(), "example.com");
        let t = Uri::parse("tel:+1-201-555-0123").unwrap();
        assert!(!t.is_sip());
        assert_eq!(t.host(), "");
        assert_eq!(t.as_str(), "tel:+1-201-555-0123");
    }

    #[test]
    fn errors() {
        assert_eq!(Uri::parse("nocolon"), Err(UriError::NoScheme));
        assert_eq!(Uri::parse("sip:"), Err(UriError::NoHost));
        assert_eq!(Uri::parse("sip:a@"), Err(UriError::NoHost));
        assert_eq!(Uri::parse("sip:a@b:99999"), Err(UriError::BadPort));
        assert_eq!(Uri::parse("sip:a@b:"), Err(UriError::BadPort));
        assert_eq!(Uri::parse("sip:a b@c"), Err(UriError::BadChar));
        assert_eq!(Uri::parse("sip:[::1"), Err(UriError::NoHost));
        assert_eq!(Uri::parse("sip:[::1]x"), Err(UriError::NoHost));
    }

    #[test]
    fn equivalence_rfc3261_examples() {
        let eq = |a: &str, b: &str| Uri::parse(a).unwrap().equivalent(&Uri::parse(b).unwrap());
        assert!(eq(
            "sip:%61lice@atlanta.com;transport=TCP",
            "sip:alice@AtLanTa.CoM;Transport=tcp"
        ));
        assert!(eq(
            "sip:carol@chicago.com",
            "sip:carol@chicago.com;newparam=5"
        ));
        assert!(eq(
            "sip:carol@chicago.com;security=on",
            "sip:carol@chicago.com;newparam=5"
        ));
        assert!(eq(
            "sip:alice@AtLanTa.CoM;Transport=tcp",
            "sip:alice@atlanta.com;transport=TCP"
        ));
        assert!(!eq(
            "SIP:ALICE@AtLanTa.CoM;Transport=udp",
            "sip:alice@AtLanTa.CoM;Transport=UDP"
        ));
        assert!(!eq("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"));
        assert!(!eq(
            "sip:bob@biloxi.com",
            "sip:bob@biloxi.com;transport=udp"
        ));
        assert!(!eq(
            "sip:carol@chicago.com;security=on",
            "sip:carol@chicago.com;security=off"
        ));
    }

    #[test]
    fn equivalence_escapes_and_headers_19_1_4() {
        let eq = |a: &str, b: &str| Uri::parse(a).unwrap().equivalent(&Uri::parse(b).unwrap());
        // Escaped unreserved characters equal the characters; hex digits in any case.
        assert!(eq("sip:%41lice@a.test", "sip:Alice@a.test"));
        assert!(eq("sip:a%2a@a.test", "sip:a*@a.test"));
        assert!(eq("sip:a%3b@a.test", "sip:a%3B@a.test"));
        // The user part stays case-sensitive.
        assert!(!eq("sip:%61lice@a.test", "sip:Alice@a.test"));
        // An escaped reserved character is not that character.
        assert!(!eq("sip:a%40b@a.test", "sip:a@b@a.test"));
        assert!(!eq("sip:a%3Bb@a.test", "sip:a;b@a.test"));
        // Parameter values with escapes.
        assert!(eq(
            "sip:a@a.test;transport=%74cp",
            "sip:a@a.test;transport=TCP"
        ));
        // Header components must be present in both and match, in any order.
        assert!(eq(
            "sip:carol@chicago.com?Subject=next%20meeting&Priority=urgent",
            "sip:carol@chicago.com?priority=urgent&subject=next%20meeting"
        ));
        assert!(!eq(
            "sip:carol@chicago.com?Subject=next",
            "sip:carol@chicago.com"
        ));
        assert!(!eq(
            "sip:carol@chicago.com?Subject=next",
            "sip:carol@chicago.com?Subject=last"
        ));
        // RFC 3261 19.1.4's last example: different headers, not equivalent.
        assert!(!eq(
            "sip:carol@chicago.com?Subject=next%20meeting",
            "sip:carol@chicago.com?Subject=another%20meeting"
        ));
        // Malformed escapes compare as written and never panic.
        assert!(eq("sip:a%4@a.test", "sip:a%4@a.test"));
        assert!(!eq("sip:a%zz@a.test", "sip:a%ZZ@a.test"));
        assert!(eq("sip:\u{e9}%@a.test", "sip:\u{e9}%@a.test"));
    }
}
