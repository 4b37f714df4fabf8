//! Lexical helpers shared by the header parsers: `;name=value` parameter lists, splitting a
//! header value at its top-level commas, and quoted strings.

/// A `;name=value;flag` parameter list, read lazily from its text.
///
/// Names compare case-insensitively. Values are returned as written (a quoted value keeps
/// its quotes; see [`unquote`]). Semicolons inside quoted strings do not split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params<'a> {
    text: &'a str,
}

impl<'a> Params<'a> {
    /// Wraps a parameter list; a leading `;` is optional.
    pub fn new(text: &'a str) -> Params<'a> {
        Params { text }
    }

    /// The list exactly as written (with its leading `;` when it had one).
    pub fn as_str(&self) -> &'a str {
        self.text
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// Each parameter as `(name, value)`; `value` is `None` for a flag (`;lr`).
    pub fn iter(&self) -> ParamIter<'a> {
        ParamIter { rest: self.text }
    }

    /// The value of the first parameter named `name`: `Some("")` for a flag, `None` when
    /// absent.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.unwrap_or(""))
    }

    /// Whether a parameter named `name` is present (with or without a value).
    pub fn contains(&self, name: &str) -> bool {
        self.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }
}

/// Iterator over a [`Params`] list.
#[derive(Clone, Debug)]
pub struct ParamIter<'a> {
    rest: &'a str,
}

impl<'a> Iterator for ParamIter<'a> {
    type Item = (&'a str, Option<&'a str>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let s = self.rest.trim_start_matches([' ', '\t', ';']);
            if s.is_empty() {
                self.rest = s;
                return None;
            }
            let end = find_unquoted(s, b';').unwrap_or(s.len());
            let item = &s[..end];
            self.rest = &s[end..];
            let (name, value) = match item.find('=') {
                Some(eq) => (item[..eq].trim(), Some(item[eq + 1..].trim())),
                None => (item.trim(), None),
            };
            if name.is_empty() {
                continue;
            }
            return Some((name, value));
        }
    }
}

/// The index of the first `needle` in `s` that is outside double quotes (honouring `\`
/// escapes inside quotes).
pub fn find_unquoted(s: &str, needle: u8) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if quoted {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = false;
            }
        } else if b == b'"' {
            quoted = true;
        } else if b == needle {
            return Some(i);
        }
    }
    None
}

/// Splits a header value at its top-level commas: commas inside double quotes or inside
/// `<...>` do not split. Each part is trimmed; empty parts are skipped.
pub fn split_commas(value: &str) -> CommaIter<'_> {
    CommaIter { rest: value }
}

/// Iterator returned by [`split_commas`].
#[derive(Clone, Debug)]
pub struct CommaIter<'a> {
    rest: &'a str,
}

impl<'a> Iterator for CommaIter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let s = self.rest;
            let end = top_level_comma(s).unwrap_or(s.len());
            let item = s[..end].trim();
            self.rest = if end < s.len() { &s[end + 1..] } else { "" };
            if !item.is_empty() {
                return Some(item);
            }
        }
    }
}

/// The index of the first comma outside quotes and angle brackets.
pub fn top_level_comma(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    let mut angle = false;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if quoted {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = false;
            }
            continue;
        }
        match b {
            b'"' => quoted = true,
            b'<' => angle = true,
            b'>' => angle = false,
            b',' if !angle => return Some(i),
            _ => {}
        }
    }
    None
}

/// Removes surrounding double quotes and `\` escapes from a quoted string; returns other text
/// unchanged.
pub fn unquote(s: &str) -> std::borrow::Cow<'_, str> {
    let Some(inner) = s.strip_prefix('"').and_then(|rest| rest.strip_suffix('"')) else {
        return s.into();
    };
    if !inner.contains('\\') {
        return inner.into();
    }
    let mut out = String::with_capacity(inner.len());
    let mut escaped = false;
    for c in inner.chars() {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// The bytes allowed in an RFC 3261 `token`.
const TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        i += 1;
    }
    t
};

/// Whether `s` is a non-empty RFC 3261 `token`.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| TOKEN[b as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params() {
        let p = Params::new(";branch=z9hG4bK77;Received=1.2.3.4 ; rport;x=\"a;b\"");
        assert_eq!(p.get("branch"), Some("z9hG4bK77"));
        assert_eq!(p.get("received"), Some("1.2.3.4"));
        assert_eq!(p.get("rport"), Some(""));
        assert_eq!(p.get("x"), Some("\"a;b\""));
        assert_eq!(p.get("y"), None);
        assert_eq!(p.iter().count(), 4);
        assert!(Params::new("").is_empty());
        assert!(Params::new(";;").is_empty());
    }

    #[test]
    fn commas() {
        let v: Vec<_> =
            split_commas("\"Doe, John\" <sip:a@b;x=1,2>;q=0.5 , <sip:c@d>,, sip:e@f").collect();
        assert_eq!(
            v,
            [
                "\"Doe, John\" <sip:a@b;x=1,2>;q=0.5",
                "<sip:c@d>",
                "sip:e@f"
            ]
        );
        let v: Vec<_> = split_commas("\"a\\\",b\" <sip:x@y>").collect();
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn quoting() {
        assert_eq!(unquote("\"Bob \\\"B\\\"\""), "Bob \"B\"");
        assert_eq!(unquote("plain"), "plain");
        assert_eq!(unquote("\""), "\"");
        assert!(is_token("z9hG4bK-1.x"));
        assert!(!is_token("a b"));
        assert!(!is_token(""));
    }
}
