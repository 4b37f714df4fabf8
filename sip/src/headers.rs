//! Header fields kept as written, with case-insensitive, compact-form-aware lookup.
//!
//! Every [`Header`] holds the exact text of its field (including folded continuation lines)
//! and the location of its name and value in it, so a message re-serialises byte for byte.
//! Editing a header ([`Headers::prepend`], [`Headers::remove_first_value`],
//! [`Headers::replace_first_value`], ...) replaces just that field with newly written text
//! (`Name: value`, keeping the name as it was spelled); all other fields are untouched.
//!
//! The text of a parsed message's header section is shared by its fields (one `Arc<str>`),
//! so parsing allocates once for the whole section rather than once per field.

use std::fmt;
use std::sync::Arc;

use super::params::split_commas;

/// A byte range inside a header's source text.
type Span = (u32, u32);

/// The header names the SIP core knows, resolved once from the spelling in the message
/// (long or compact form, any case). Any other name is [`HeaderName::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HeaderName {
    /// `Via` / `v`.
    Via,
    /// `From` / `f`.
    From,
    /// `To` / `t`.
    To,
    /// `Call-ID` / `i`.
    CallId,
    /// `CSeq`.
    CSeq,
    /// `Contact` / `m`.
    Contact,
    /// `Max-Forwards`.
    MaxForwards,
    /// `Route`.
    Route,
    /// `Record-Route`.
    RecordRoute,
    /// `Content-Length` / `l`.
    ContentLength,
    /// `Content-Type` / `c`.
    ContentType,
    /// `Content-Encoding` / `e`.
    ContentEncoding,
    /// `Expires`.
    Expires,
    /// `Min-Expires`.
    MinExpires,
    /// `Proxy-Require`.
    ProxyRequire,
    /// `Proxy-Authorization`.
    ProxyAuthorization,
    /// `Require`.
    Require,
    /// `Supported` / `k`.
    Supported,
    /// `Unsupported`.
    Unsupported,
    /// `Subject` / `s`.
    Subject,
    /// `Allow`.
    Allow,
    /// `Event` / `o`.
    Event,
    /// `Refer-To` / `r`.
    ReferTo,
    /// `Timestamp`.
    Timestamp,
    /// `User-Agent`.
    UserAgent,
    /// `Server`.
    Server,
    /// `Path`.
    Path,
    /// `Retry-After`.
    RetryAfter,
    /// Any other name: compared by its text, case-insensitively.
    Other,
}

/// Long names (canonical spelling), their compact forms, and the enum value.
const NAMES: &[(&str, Option<u8>, HeaderName)] = &[
    ("Via", Some(b'v'), HeaderName::Via),
    ("From", Some(b'f'), HeaderName::From),
    ("To", Some(b't'), HeaderName::To),
    ("Call-ID", Some(b'i'), HeaderName::CallId),
    ("CSeq", None, HeaderName::CSeq),
    ("Contact", Some(b'm'), HeaderName::Contact),
    ("Max-Forwards", None, HeaderName::MaxForwards),
    ("Route", None, HeaderName::Route),
    ("Record-Route", None, HeaderName::RecordRoute),
    ("Content-Length", Some(b'l'), HeaderName::ContentLength),
    ("Content-Type", Some(b'c'), HeaderName::ContentType),
    ("Content-Encoding", Some(b'e'), HeaderName::ContentEncoding),
    ("Expires", None, HeaderName::Expires),
    ("Min-Expires", None, HeaderName::MinExpires),
    ("Proxy-Require", None, HeaderName::ProxyRequire),
    ("Proxy-Authorization", None, HeaderName::ProxyAuthorization),
    ("Require", None, HeaderName::Require),
    ("Supported", Some(b'k'), HeaderName::Supported),
    ("Unsupported", None, HeaderName::Unsupported),
    ("Subject", Some(b's'), HeaderName::Subject),
    ("Allow", None, HeaderName::Allow),
    ("Event", Some(b'o'), HeaderName::Event),
    ("Refer-To", Some(b'r'), HeaderName::ReferTo),
    ("Timestamp", None, HeaderName::Timestamp),
    ("User-Agent", None, HeaderName::UserAgent),
    ("Server", None, HeaderName::Server),
    ("Path", None, HeaderName::Path),
    ("Retry-After", None, HeaderName::RetryAfter),
];

impl HeaderName {
    /// Resolves a name as spelled in a message (long or compact form, any case).
    pub fn from_name(name: &str) -> HeaderName {
        let b = name.as_bytes();
        let Some(first) = b.first().map(u8::to_ascii_lowercase) else {
            return HeaderName::Other;
        };
        if b.len() == 1 {
            return NAMES
                .iter()
                .find(|(_, compact, _)| *compact == Some(first))
                .map_or(HeaderName::Other, |(_, _, h)| *h);
        }
        use HeaderName as H;
        // Candidates by first letter; then one comparison per candidate of equal length.
        let candidates: &[(&str, HeaderName)] = match first {
            b'a' => &[("Allow", H::Allow)],
            b'c' => &[
                ("CSeq", H::CSeq),
                ("Call-ID", H::CallId),
                ("Contact", H::Contact),
                ("Content-Type", H::ContentType),
                ("Content-Length", H::ContentLength),
                ("Content-Encoding", H::ContentEncoding),
            ],
            b'e' => &[("Event", H::Event), ("Expires", H::Expires)],
            b'f' => &[("From", H::From)],
            b'm' => &[
                ("Min-Expires", H::MinExpires),
                ("Max-Forwards", H::MaxForwards),
            ],
            b'p' => &[
                ("Path", H::Path),
                ("Proxy-Require", H::ProxyRequire),
                ("Proxy-Authorization", H::ProxyAuthorization),
            ],
            b'r' => &[
                ("Route", H::Route),
                ("Require", H::Require),
                ("Refer-To", H::ReferTo),
                ("Retry-After", H::RetryAfter),
                ("Record-Route", H::RecordRoute),
            ],
            b's' => &[
                ("Server", H::Server),
                ("Subject", H::Subject),
                ("Supported", H::Supported),
            ],
            b't' => &[("To", H::To), ("Timestamp", H::Timestamp)],
            b'u' => &[
                ("User-Agent", H::UserAgent),
                ("Unsupported", H::Unsupported),
            ],
            b'v' => &[("Via", H::Via)],
            _ => &[],
        };
        candidates
            .iter()
            .find(|(long, _)| long.len() == b.len() && long.as_bytes().eq_ignore_ascii_case(b))
            .map_or(H::Other, |(_, h)| *h)
    }

    /// The canonical long name (`Call-ID`, `CSeq`, ...); empty for [`HeaderName::Other`].
    pub fn as_str(self) -> &'static str {
        NAMES
            .iter()
            .find(|(_, _, h)| *h == self)
            .map_or("", |(long, _, _)| long)
    }
}

/// One header field: its text as written, its name and its (unfolded, trimmed) value.
#[derive(Clone)]
pub struct Header {
    src: Arc<str>,
    line: Span,
    name: Span,
    value: Span,
    /// For folded fields: the value with each line break and the white space around it
    /// replaced by one space. `value` then indexes this text.
    unfolded: Option<Arc<str>>,
    kind: HeaderName,
}

impl Header {
    /// A new field written as `name: value`.
    pub fn new(name: &str, value: &str) -> Header {
        let value = value.trim();
        let mut text = String::with_capacity(name.len() + 2 + value.len());
        text.push_str(name);
        text.push_str(": ");
        text.push_str(value);
        let nl = name.len() as u32;
        let total = text.len() as u32;
        Header {
            src: text.into(),
            line: (0, total),
            name: (0, nl),
            value: (nl + 2, total),
            unfolded: None,
            kind: HeaderName::from_name(name),
        }
    }

    /// A field found by the parser inside a shared header section. `line` covers the whole
    /// field (continuation lines included, final line break excluded); `name` and `value`
    /// are already trimmed; `unfolded` is given for folded fields.
    pub(crate) fn from_source(
        src: &Arc<str>,
        line: (usize, usize),
        name: (usize, usize),
        value: (usize, usize),
        unfolded: Option<String>,
    ) -> Header {
        let kind = HeaderName::from_name(&src[name.0..name.1]);
        let (value, unfolded) = match unfolded {
            Some(u) => ((0, u.len() as u32), Some(Arc::from(u))),
            None => ((value.0 as u32, value.1 as u32), None),
        };
        Header {
            src: src.clone(),
            line: (line.0 as u32, line.1 as u32),
            name: (name.0 as u32, name.1 as u32),
            value,
            unfolded,
            kind,
        }
    }

    /// The name as spelled in the message.
    pub fn name(&self) -> &str {
        &self.src[self.name.0 as usize..self.name.1 as usize]
    }

    /// The resolved name.
    pub fn kind(&self) -> HeaderName {
        self.kind
    }

    /// The value, trimmed, with folded lines joined by single spaces.
    pub fn value(&self) -> &str {
        let text: &str = self.unfolded.as_deref().unwrap_or(&self.src);
        &text[self.value.0 as usize..self.value.1 as usize]
    }

    /// The whole field exactly as it was written (continuation lines included, without the
    /// final line break). This is what serialisation writes.
    pub fn raw(&self) -> &str {
        &self.src[self.line.0 as usize..self.line.1 as usize]
    }

    /// Whether this field has the given name (long or compact form, any case).
    pub fn is(&self, name: &str) -> bool {
        self.matches(&Key::new(name))
    }

    fn matches(&self, key: &Key<'_>) -> bool {
        match key.kind {
            HeaderName::Other => {
                self.kind == HeaderName::Other && self.name().eq_ignore_ascii_case(key.name)
            }
            kind => self.kind == kind,
        }
    }

    /// The same field with a new value, keeping the name as it was spelled.
    fn with_value(&self, value: &str) -> Header {
        Header::new(self.name(), value)
    }
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.raw())
    }
}

impl PartialEq for Header {
    fn eq(&self, other: &Header) -> bool {
        self.raw() == other.raw()
    }
}

impl Eq for Header {}

/// A name to look up, resolved once.
#[derive(Clone, Copy)]
struct Key<'a> {
    kind: HeaderName,
    name: &'a str,
}

impl<'a> Key<'a> {
    fn new(name: &'a str) -> Key<'a> {
        Key {
            kind: HeaderName::from_name(name),
            name,
        }
    }
}

/// The header fields of a message, in order.
///
/// Lookups take a name in any spelling (`"Call-ID"`, `"call-id"`, `"i"`); the `*_kind`
/// variants take a resolved [`HeaderName`] and skip the name comparison.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    list: Vec<Header>,
}

impl Headers {
    /// No fields.
    pub fn new() -> Headers {
        Headers::default()
    }

    pub(crate) fn with_capacity(n: usize) -> Headers {
        Headers {
            list: Vec::with_capacity(n),
        }
    }

    /// The number of fields (lines, not comma-separated values).
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Every field in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Header> {
        self.list.iter()
    }

    /// The value of the first field named `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        let key = Key::new(name);
        self.list
            .iter()
            .find(|h| h.matches(&key))
            .map(Header::value)
    }

    /// The value of the first field of a known kind.
    pub fn get_kind(&self, kind: HeaderName) -> Option<&str> {
        self.list.iter().find(|h| h.kind == kind).map(Header::value)
    }

    /// Whether a field named `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Every field named `name`, in order.
    pub fn all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s Header> + 's {
        let key = Key::new(name);
        self.list.iter().filter(move |h| h.matches(&key))
    }

    /// Every value of a list header (`Via`, `Contact`, `Route`, ...), across all its fields,
    /// split at top-level commas (not inside quotes or `<...>`). Do not use it for headers
    /// whose single value may contain commas (`Date`, authentication headers).
    pub fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.all(name).flat_map(|h| split_commas(h.value()))
    }

    /// Like [`Headers::values`] for a known kind.
    pub fn values_kind(&self, kind: HeaderName) -> impl Iterator<Item = &str> + '_ {
        self.list
            .iter()
            .filter(move |h| h.kind == kind)
            .flat_map(|h| split_commas(h.value()))
    }

    /// Appends a field `name: value`.
    pub fn push(&mut self, name: &str, value: &str) {
        self.list.push(Header::new(name, value));
    }

    /// Appends a field.
    pub fn push_header(&mut self, header: Header) {
        self.list.push(header);
    }

    /// Inserts `name: value` as the topmost value of that header: a new field placed just
    /// before the first field of that name, or, when there is none, after the last `Via`
    /// (or first of all when there is no `Via` either).
    pub fn prepend(&mut self, name: &str, value: &str) {
        let key = Key::new(name);
        let at = match self.list.iter().position(|h| h.matches(&key)) {
            Some(i) => i,
            None => self
                .list
                .iter()
                .rposition(|h| h.kind == HeaderName::Via)
                .map_or(0, |i| i + 1),
        };
        self.list.insert(at, Header::new(name, value));
    }

    /// Removes the topmost value of a list header: the first comma-separated value of its
    /// first field. The field is dropped when that was its only value, otherwise rewritten
    /// with the remaining values as they were written. Returns the removed value.
    pub fn remove_first_value(&mut self, name: &str) -> Option<String> {
        let key = Key::new(name);
        let i = self.list.iter().position(|h| h.matches(&key))?;
        let h = &self.list[i];
        let value = h.value();
        match super::params::top_level_comma(value) {
            Some(comma) => {
                let first = value[..comma].trim().to_owned();
                let rest = value[comma + 1..].trim();
                if rest.is_empty() {
                    self.list.remove(i);
                } else {
                    self.list[i] = h.with_value(rest);
                }
                Some(first)
            }
            None => Some(self.list.remove(i).value().to_owned()),
        }
    }

    /// Replaces the topmost value of a header (the first comma-separated value of its first
    /// field), keeping any further values of that field as written. Appends a new field when
    /// the header is absent.
    pub fn replace_first_value(&mut self, name: &str, value: &str) {
        let key = Key::new(name);
        let Some(i) = self.list.iter().position(|h| h.matches(&key)) else {
            self.push(name, value);
            return;
        };
        let h = &self.list[i];
        let old = h.value();
        let new = match super::params::top_level_comma(old) {
            Some(comma) => format!("{value}, {}", old[comma + 1..].trim()),
            None => value.to_owned(),
        };
        self.list[i] = h.with_value(&new);
    }

    /// Sets a single-valued header: rewrites its first field with `value` (keeping the name
    /// as spelled), removes any further fields of that name, or appends one when absent.
    pub fn set(&mut self, name: &str, value: &str) {
        let key = Key::new(name);
        match self.list.iter().position(|h| h.matches(&key)) {
            Some(i) => {
                let new = self.list[i].with_value(value);
                self.list[i] = new;
                let mut j = 0;
                self.list.retain(|h| {
                    let keep = j <= i || !h.matches(&key);
                    j += 1;
                    keep
                });
            }
            None => self.push(name, value),
        }
    }

    /// Removes every field named `name`; returns how many were removed.
    pub fn remove_all(&mut self, name: &str) -> usize {
        let key = Key::new(name);
        let before = self.list.len();
        self.list.retain(|h| !h.matches(&key));
        before - self.list.len()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.list.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = &'a Header;
    type IntoIter = std::slice::Iter<'a, Header>;
    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Headers {
        let mut h = Headers::new();
        h.push(
            "v",
            "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2",
        );
        h.push("Via", "SIP/2.0/TCP c;branch=z9hG4bK3");
        h.push("call-id", "abc@x");
        h.push("X-Custom", "1");
        h
    }

    #[test]
    fn lookup_any_spelling() {
        let h = sample();
        assert_eq!(h.get("Call-ID"), Some("abc@x"));
        assert_eq!(h.get("i"), Some("abc@x"));
        assert_eq!(h.get("x-custom"), Some("1"));
        assert_eq!(h.get_kind(HeaderName::CallId), Some("abc@x"));
        assert_eq!(h.values("via").count(), 3);
        assert_eq!(h.all("V").count(), 2);
        assert!(!h.contains("Route"));
        assert_eq!(
            HeaderName::from_name("CONTENT-length"),
            HeaderName::ContentLength
        );
        assert_eq!(HeaderName::from_name("L"), HeaderName::ContentLength);
        assert_eq!(HeaderName::CallId.as_str(), "Call-ID");
        assert_eq!(HeaderName::from_name("x"), HeaderName::Other);
        assert_eq!(HeaderName::from_name(""), HeaderName::Other);
        for (long, compact, kind) in NAMES {
            assert_eq!(HeaderName::from_name(long), *kind);
            assert_eq!(HeaderName::from_name(&long.to_ascii_uppercase()), *kind);
            if let Some(c) = compact {
                assert_eq!(HeaderName::from_name(&(*c as char).to_string()), *kind);
            }
        }
    }

    #[test]
    fn remove_and_replace_values() {
        let mut h = sample();
        assert_eq!(
            h.remove_first_value("Via").as_deref(),
            Some("SIP/2.0/UDP a;branch=z9hG4bK1")
        );
        assert_eq!(
            h.iter().next().unwrap().raw(),
            "v: SIP/2.0/UDP b;branch=z9hG4bK2"
        );
        h.replace_first_value("via", "SIP/2.0/UDP z");
        assert_eq!(h.iter().next().unwrap().raw(), "v: SIP/2.0/UDP z");
        assert!(h.remove_first_value("Via").is_some());
        assert_eq!(
            h.values("Via").collect::<Vec<_>>(),
            ["SIP/2.0/TCP c;branch=z9hG4bK3"]
        );
        assert!(h.remove_first_value("Via").is_some());
        assert!(h.remove_first_value("Via").is_none());
    }

    #[test]
    fn prepend_and_set() {
        let mut h = sample();
        h.prepend("Record-Route", "<sip:p;lr>");
        assert_eq!(h.iter().nth(2).unwrap().raw(), "Record-Route: <sip:p;lr>");
        h.prepend("Record-Route", "<sip:q;lr>");
        assert_eq!(
            h.values("Record-Route").collect::<Vec<_>>(),
            ["<sip:q;lr>", "<sip:p;lr>"]
        );
        h.prepend("Via", "SIP/2.0/UDP me");
        assert_eq!(h.iter().next().unwrap().raw(), "Via: SIP/2.0/UDP me");
        h.push("x-custom", "2");
        h.set("X-CUSTOM", "3");
        assert_eq!(
            h.all("x-custom").map(|h| h.raw()).collect::<Vec<_>>(),
            ["X-Custom: 3"]
        );
        h.set("Max-Forwards", "70");
        assert_eq!(h.get("max-forwards"), Some("70"));
        assert_eq!(h.remove_all("x-custom"), 1);
    }
}
