//! The header values of digest authentication: [`Credentials`] read from `Authorization` and
//! `Proxy-Authorization`, [`Challenge`] written to (and read from) `WWW-Authenticate` and
//! `Proxy-Authenticate`.
//!
//! Grammar (RFC 3261 section 25.1, RFC 7616 section 3.4): `Digest` then a comma-separated
//! list of `name=value`, names case-insensitive, each value a token or a quoted string.
//! Parsing is lenient about quoting (a value may be quoted or not; it is read the same) and
//! strict about content: the mandatory parameters must be there, each known parameter at
//! most once, `response` as hex of the algorithm's length, `nc` as 8 lower-case hex
//! digits, and `nc`/`cnonce` with `qop` only. Unknown parameters are ignored.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use super::{compute_response, decode_hex, ha1, to_hex, Algorithm, UnsupportedAlgorithm};
use crate::headers::{Header, Headers};
use crate::params::{is_token, split_commas, unquote};

/// A parameter of a digest challenge or credentials, for errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Param {
    /// `username`
    Username,
    /// `realm`
    Realm,
    /// `nonce`
    Nonce,
    /// `uri`
    Uri,
    /// `response`
    Response,
    /// `algorithm`
    Algorithm,
    /// `cnonce`
    Cnonce,
    /// `opaque`
    Opaque,
    /// `qop`
    Qop,
    /// `nc`
    Nc,
    /// `stale`
    Stale,
    /// `userhash`
    Userhash,
}

const PARAMS: [Param; 12] = [
    Param::Username,
    Param::Realm,
    Param::Nonce,
    Param::Uri,
    Param::Response,
    Param::Algorithm,
    Param::Cnonce,
    Param::Opaque,
    Param::Qop,
    Param::Nc,
    Param::Stale,
    Param::Userhash,
];

impl Param {
    /// The parameter's name, lower case.
    pub fn as_str(self) -> &'static str {
        match self {
            Param::Username => "username",
            Param::Realm => "realm",
            Param::Nonce => "nonce",
            Param::Uri => "uri",
            Param::Response => "response",
            Param::Algorithm => "algorithm",
            Param::Cnonce => "cnonce",
            Param::Opaque => "opaque",
            Param::Qop => "qop",
            Param::Nc => "nc",
            Param::Stale => "stale",
            Param::Userhash => "userhash",
        }
    }

    /// The parameter for a name, ignoring case; `None` for parameters we do not read.
    fn from_name(name: &str) -> Option<Param> {
        PARAMS
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A quality of protection in credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Qop {
    /// `auth`: the one we offer and check.
    Auth,
    /// `auth-int`: read, but refused by [`super::verify()`] (we never offer it).
    AuthInt,
}

impl Qop {
    /// The token: `auth` or `auth-int`.
    pub fn as_str(self) -> &'static str {
        match self {
            Qop::Auth => "auth",
            Qop::AuthInt => "auth-int",
        }
    }
}

/// Why an `Authorization` or `WWW-Authenticate` value (or their proxy forms) could not be
/// read. Credentials that do not parse are answered 400 Bad Request; an unsupported
/// algorithm with a fresh challenge (it lists what we support).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthHeaderError {
    /// The scheme is not `Digest` (for example `Basic`), or the value is empty.
    #[error("authentication scheme is not digest")]
    NotDigest,
    /// The parameter list is not `name=value, ...` (a name that is not a token, no `=`, or a
    /// bad value of a parameter we do not read).
    #[error("malformed digest parameter list")]
    Syntax,
    /// A mandatory parameter is absent.
    #[error("missing digest parameter {0}")]
    Missing(Param),
    /// A parameter's value is malformed (bad quoting, empty, not hex, not a known token).
    #[error("malformed digest parameter {0}")]
    Bad(Param),
    /// A parameter appears more than once (RFC 7616 section 3.4 forbids it).
    #[error("digest parameter {0} given more than once")]
    Duplicate(Param),
    /// `nc` or `cnonce` without `qop` (RFC 2617 section 3.2.2 forbids them then).
    #[error("digest parameter {0} is not allowed without qop")]
    WithoutQop(Param),
    /// The algorithm is not MD5 or SHA-256.
    #[error(transparent)]
    Algorithm(#[from] UnsupportedAlgorithm),
    /// `userhash=true` (RFC 7616): not supported, and not used in SIP.
    #[error("digest userhash is not supported")]
    Userhash,
}

/// Digest credentials from an `Authorization` or `Proxy-Authorization` value. The
/// password is not here: only the `response` computed from it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    /// `username`, unquoted.
    pub username: String,
    /// `realm`, unquoted.
    pub realm: String,
    /// `nonce`, as issued by the server.
    pub nonce: String,
    /// `uri`, the digest-uri (normally the Request-URI), as the client wrote it.
    pub uri: String,
    /// `response`, decoded from hex: 16 bytes (MD5) or 32 (SHA-256).
    pub response: Vec<u8>,
    /// `algorithm`; MD5 when absent (RFC 2617).
    pub algorithm: Algorithm,
    /// `cnonce`: present exactly when `qop` is.
    pub cnonce: Option<String>,
    /// `opaque`, returned unchanged from the challenge.
    pub opaque: Option<String>,
    /// `qop`; `None` for the RFC 2069 form.
    pub qop: Option<Qop>,
    /// `nc`, the nonce count: present exactly when `qop` is.
    pub nc: Option<u32>,
}

impl Credentials {
    /// Parses an `Authorization` or `Proxy-Authorization` value. Never panics.
    pub fn parse(value: &str) -> Result<Credentials, AuthHeaderError> {
        let mut f = Fields::read(digest_params(value)?)?;
        if let Some(u) = f.take(Param::Userhash) {
            if u.eq_ignore_ascii_case("true") {
                return Err(AuthHeaderError::Userhash);
            } else if !u.eq_ignore_ascii_case("false") {
                return Err(AuthHeaderError::Bad(Param::Userhash));
            }
        }
        let username = f.required(Param::Username)?;
        let realm = f.take_owned(Param::Realm).ok_or(missing(Param::Realm))?;
        let nonce = f.required(Param::Nonce)?;
        let uri = f.required(Param::Uri)?;
        let response_hex = f.required(Param::Response)?;
        let algorithm = match f.take(Param::Algorithm) {
            Some(a) => Algorithm::parse(&a)?,
            None => Algorithm::Md5,
        };
        let mut response = vec![0u8; algorithm.output_len()];
        decode_hex(&response_hex, &mut response).ok_or(AuthHeaderError::Bad(Param::Response))?;
        let qop = match f.take(Param::Qop).as_deref() {
            None => None,
            Some("auth") => Some(Qop::Auth),
            Some("auth-int") => Some(Qop::AuthInt),
            Some(_) => return Err(AuthHeaderError::Bad(Param::Qop)),
        };
        let (cnonce, nc) = if qop.is_some() {
            let cnonce = f.required(Param::Cnonce)?;
            let nc = f.take(Param::Nc).ok_or(missing(Param::Nc))?;
            (Some(cnonce), Some(parse_nc(&nc)?))
        } else {
            for p in [Param::Cnonce, Param::Nc] {
                if f.take(p).is_some() {
                    return Err(AuthHeaderError::WithoutQop(p));
                }
            }
            (None, None)
        };
        Ok(Credentials {
            username,
            realm,
            nonce,
            uri,
            response,
            algorithm,
            cnonce,
            opaque: f.take_owned(Param::Opaque),
            qop,
            nc,
        })
    }

    /// What a client sends in answer to `challenge` (for tests and test clients): `qop=auth`
    /// with the given `cnonce` and nonce count, the challenge's algorithm, realm, nonce and
    /// opaque. The password is only read.
    pub fn answer(
        challenge: &Challenge,
        username: &str,
        password: &str,
        method: &str,
        uri: &str,
        cnonce: &str,
        nc: u32,
    ) -> Credentials {
        let mut creds = Credentials {
            username: username.to_owned(),
            realm: challenge.realm.clone(),
            nonce: challenge.nonce.clone(),
            uri: uri.to_owned(),
            response: Vec::new(),
            algorithm: challenge.algorithm,
            cnonce: Some(cnonce.to_owned()),
            opaque: challenge.opaque.clone(),
            qop: Some(Qop::Auth),
            nc: Some(nc),
        };
        let key = ha1(challenge.algorithm, username, &challenge.realm, password);
        let mut out = [0u8; 32];
        if let Some(n) = compute_response(&creds, method, &key, &mut out) {
            creds.response = out[..n].to_vec();
        }
        creds
    }
}

impl FromStr for Credentials {
    type Err = AuthHeaderError;

    fn from_str(s: &str) -> Result<Credentials, AuthHeaderError> {
        Credentials::parse(s)
    }
}

/// The `Authorization` value: `Digest username="...", realm="...", ...`.
impl fmt::Display for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Digest username=")?;
        write_quoted(f, &self.username)?;
        f.write_str(", realm=")?;
        write_quoted(f, &self.realm)?;
        f.write_str(", nonce=")?;
        write_quoted(f, &self.nonce)?;
        f.write_str(", uri=")?;
        write_quoted(f, &self.uri)?;
        write!(
            f,
            ", response=\"{}\", algorithm={}",
            to_hex(&self.response),
            self.algorithm
        )?;
        if let Some(cnonce) = &self.cnonce {
            f.write_str(", cnonce=")?;
            write_quoted(f, cnonce)?;
        }
        if let Some(opaque) = &self.opaque {
            f.write_str(", opaque=")?;
            write_quoted(f, opaque)?;
        }
        if let Some(qop) = self.qop {
            write!(f, ", qop={}", qop.as_str())?;
        }
        if let Some(nc) = self.nc {
            write!(f, ", nc={nc:08x}")?;
        }
        Ok(())
    }
}

/// Picks, among the `Authorization` (or `Proxy-Authorization`) values of a request, the
/// credentials for `realm` (a client may send one per realm, RFC 3261 section 22.3):
/// `None` when no value is for this realm. For a message's headers see
/// [`credentials_in_headers`].
///
/// When several values are for `realm`, a SHA-256 one that parses is preferred, then the
/// first that parses; when none parses, the error of the first. Values that are not
/// `Digest` or whose realm cannot be read are skipped.
///
/// ```
/// # use onehop_sip::digest::credentials_for_realm;
/// let values = [
///     r#"Digest username="bob", realm="other.example", nonce="n", response="00""#,
///     concat!(
///         r#"Digest username="alice", realm="example.com", nonce="n", uri="sip:example.com", "#,
///         r#"response="0123456789abcdef0123456789abcdef""#,
///     ),
/// ];
/// let creds = credentials_for_realm(values, "example.com").unwrap().unwrap();
/// assert_eq!(creds.username, "alice");
/// assert!(credentials_for_realm(values, "nowhere.example").is_none());
/// ```
pub fn credentials_for_realm<'a>(
    values: impl IntoIterator<Item = &'a str>,
    realm: &str,
) -> Option<Result<Credentials, AuthHeaderError>> {
    let mut first_ok = None;
    let mut first_err = None;
    for value in values {
        match Credentials::parse(value) {
            Ok(c) if c.realm == realm => {
                if c.algorithm == Algorithm::Sha256 {
                    return Some(Ok(c));
                }
                first_ok.get_or_insert(c);
            }
            Ok(_) => {}
            Err(e) => {
                if first_err.is_none() && raw_realm(value).as_deref() == Some(realm) {
                    first_err = Some(e);
                }
            }
        }
    }
    first_ok.map(Ok).or(first_err.map(Err))
}

/// [`credentials_for_realm`] over the header fields named `name` (`Authorization` for a
/// registrar, `Proxy-Authorization` for a proxy) of a message. Use this rather than
/// [`Headers::values`], which splits values at their commas.
pub fn credentials_in_headers(
    headers: &Headers,
    name: &str,
    realm: &str,
) -> Option<Result<Credentials, AuthHeaderError>> {
    credentials_for_realm(headers.all(name).map(Header::value), realm)
}

/// The realm of a value that may not parse: the first well-formed `realm` parameter.
fn raw_realm(value: &str) -> Option<Cow<'_, str>> {
    digest_params(value)
        .ok()?
        .filter_map(Result::ok)
        .find(|(name, _)| name.eq_ignore_ascii_case("realm"))
        .map(|(_, v)| v)
}

/// A digest challenge, for a `WWW-Authenticate` (401) or `Proxy-Authenticate` (407)
/// value. It always offers `qop="auth"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// `realm`: the farm's domain the client authenticates to.
    pub realm: String,
    /// `nonce`, from [`super::NonceKeys::issue`].
    pub nonce: String,
    /// `algorithm`.
    pub algorithm: Algorithm,
    /// `stale=true`: the client's last nonce expired, but its response was right.
    pub stale: bool,
    /// `opaque`, returned unchanged by the client.
    pub opaque: Option<String>,
}

impl Challenge {
    /// Parses a `WWW-Authenticate` or `Proxy-Authenticate` value (as a test client does).
    /// `realm` and `nonce` are required, `qop` must offer `auth`; never panics.
    pub fn parse(value: &str) -> Result<Challenge, AuthHeaderError> {
        let mut f = Fields::read(digest_params(value)?)?;
        let realm = f.take_owned(Param::Realm).ok_or(missing(Param::Realm))?;
        let nonce = f.required(Param::Nonce)?;
        let algorithm = match f.take(Param::Algorithm) {
            Some(a) => Algorithm::parse(&a)?,
            None => Algorithm::Md5,
        };
        let qop = f.take(Param::Qop).ok_or(missing(Param::Qop))?;
        if !qop.split(',').any(|q| q.trim() == "auth") {
            return Err(AuthHeaderError::Bad(Param::Qop));
        }
        let stale = match f.take(Param::Stale) {
            None => false,
            Some(s) if s.eq_ignore_ascii_case("true") => true,
            Some(s) if s.eq_ignore_ascii_case("false") => false,
            Some(_) => return Err(AuthHeaderError::Bad(Param::Stale)),
        };
        Ok(Challenge {
            realm,
            nonce,
            algorithm,
            stale,
            opaque: f.take_owned(Param::Opaque),
        })
    }
}

impl FromStr for Challenge {
    type Err = AuthHeaderError;

    fn from_str(s: &str) -> Result<Challenge, AuthHeaderError> {
        Challenge::parse(s)
    }
}

/// The header value: `Digest realm="...", nonce="...", algorithm=SHA-256, qop="auth"`, with
/// `opaque` after the nonce when set and `stale=true` last when set. Quotes and backslashes
/// in the values are escaped; control characters (CR, LF, ...) are left out, so a value can
/// never end the header.
impl fmt::Display for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Digest realm=")?;
        write_quoted(f, &self.realm)?;
        f.write_str(", nonce=")?;
        write_quoted(f, &self.nonce)?;
        if let Some(opaque) = &self.opaque {
            f.write_str(", opaque=")?;
            write_quoted(f, opaque)?;
        }
        write!(f, ", algorithm={}, qop=\"auth\"", self.algorithm)?;
        if self.stale {
            f.write_str(", stale=true")?;
        }
        Ok(())
    }
}

/// The two challenge values a 401/407 carries, one header each, SHA-256 first and MD5
/// second (RFC 8760 section 2.4: in our order of preference), with the same nonce.
pub fn challenge_values(
    realm: &str,
    nonce: &str,
    stale: bool,
    opaque: Option<&str>,
) -> [String; 2] {
    super::PREFERENCE.map(|algorithm| {
        Challenge {
            realm: realm.to_owned(),
            nonce: nonce.to_owned(),
            algorithm,
            stale,
            opaque: opaque.map(str::to_owned),
        }
        .to_string()
    })
}

/// Writes `s` as a quoted string: `"` and `\` escaped, a tab as it is, CR and LF left out,
/// other control characters as quoted pairs.
fn write_quoted(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    // Runs of characters written as they are go out in one write (a nonce or a realm is
    // nearly always one run); only the characters below are written one by one.
    let special = |c: char| c == '"' || c == '\\' || (c.is_ascii_control() && c != '\t');
    let mut rest = s;
    while let Some(at) = rest.find(special) {
        f.write_str(&rest[..at])?;
        let c = rest[at..].chars().next().unwrap_or_default();
        match c {
            // CR and LF cannot be written in a header value (a parsed value never holds
            // them); other controls go as quoted pairs (RFC 3261 section 25.1), so that a
            // parsed value is written back unchanged. A tab is quoted text as it is.
            '\r' | '\n' => {}
            c => {
                f.write_str("\\")?;
                fmt::Write::write_char(f, c)?;
            }
        }
        rest = &rest[at + c.len_utf8()..];
    }
    f.write_str(rest)?;
    f.write_str("\"")
}

fn missing(p: Param) -> AuthHeaderError {
    AuthHeaderError::Missing(p)
}

/// `nc`: exactly 8 lower-case hex digits (RFC 2617 `8LHEX`): the response is computed over
/// the digits as sent, and we compute it over `{nc:08x}`.
fn parse_nc(s: &str) -> Result<u32, AuthHeaderError> {
    let ok = s.len() == 8 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !ok {
        return Err(AuthHeaderError::Bad(Param::Nc));
    }
    u32::from_str_radix(s, 16).map_err(|_| AuthHeaderError::Bad(Param::Nc))
}

/// The parameters after a `Digest` scheme, each `(name, value)` with the value unquoted,
/// or an error for an item that is not `token=token` / `token=quoted-string`.
fn digest_params(value: &str) -> Result<ParamScan<'_>, AuthHeaderError> {
    let v = value.trim_start();
    let end = v.find(|c: char| c.is_ascii_whitespace()).unwrap_or(v.len());
    if !v[..end].eq_ignore_ascii_case("Digest") {
        return Err(AuthHeaderError::NotDigest);
    }
    Ok(ParamScan {
        items: split_commas(&v[end..]),
    })
}

/// Iterator over the `name=value` items of a digest parameter list.
struct ParamScan<'a> {
    items: crate::params::CommaIter<'a>,
}

impl<'a> Iterator for ParamScan<'a> {
    type Item = Result<(&'a str, Cow<'a, str>), AuthHeaderError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.items.next()?;
        let Some(eq) = item.find('=') else {
            return Some(Err(AuthHeaderError::Syntax));
        };
        let name = item[..eq].trim();
        if !is_token(name) {
            return Some(Err(AuthHeaderError::Syntax));
        }
        let raw = item[eq + 1..].trim();
        let value = if raw.starts_with('"') {
            is_quoted_string(raw).then(|| unquote(raw))
        } else {
            is_token(raw).then_some(Cow::Borrowed(raw))
        };
        Some(match value {
            Some(v) => Ok((name, v)),
            None => {
                Err(Param::from_name(name).map_or(AuthHeaderError::Syntax, AuthHeaderError::Bad))
            }
        })
    }
}

/// Whether `s` is exactly one quoted string: opening quote, no control characters other
/// than tab, `\` escaping the next byte, and the closing quote as the last byte.
fn is_quoted_string(s: &str) -> bool {
    let b = s.as_bytes();
    if b.first() != Some(&b'"') {
        return false;
    }
    let mut i = 1;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                // An escaped CR or LF could still end a header line.
                if matches!(b.get(i + 1), None | Some(b'\r' | b'\n')) {
                    return false;
                }
                i += 2;
            }
            b'"' => return i == b.len() - 1,
            c if (c < 0x20 && c != b'\t') || c == 0x7f => return false,
            _ => i += 1,
        }
    }
    false
}

/// The known parameters of one value, each at most once.
struct Fields<'a> {
    values: [Option<Cow<'a, str>>; PARAMS.len()],
}

impl<'a> Fields<'a> {
    fn read(scan: ParamScan<'a>) -> Result<Fields<'a>, AuthHeaderError> {
        let mut values: [Option<Cow<'a, str>>; PARAMS.len()] = Default::default();
        for item in scan {
            let (name, value) = item?;
            let Some(p) = Param::from_name(name) else {
                continue;
            };
            let slot = &mut values[p as usize];
            if slot.is_some() {
                return Err(AuthHeaderError::Duplicate(p));
            }
            *slot = Some(value);
        }
        Ok(Fields { values })
    }

    fn take(&mut self, p: Param) -> Option<Cow<'a, str>> {
        self.values[p as usize].take()
    }

    fn take_owned(&mut self, p: Param) -> Option<String> {
        self.take(p).map(Cow::into_owned)
    }

    /// A mandatory parameter that must not be empty.
    fn required(&mut self, p: Param) -> Result<String, AuthHeaderError> {
        match self.take(p) {
            None => Err(missing(p)),
            Some(v) if v.is_empty() => Err(AuthHeaderError::Bad(p)),
            Some(v) => Ok(v.into_owned()),
        }
    }
}
