//! SIP digest authentication (RFC 3261 section 22) with no IO: challenges, credentials,
//! the RFC 2617 / RFC 7616 response computation with MD5 and SHA-256 (RFC 8760), nonces
//! that every node of the farm can check without shared state, and nonce-count replay
//! protection.
//!
//! Only `qop=auth` is offered and checked (the RFC 2069 form without `qop` is accepted only
//! when [`Policy::allow_rfc2069`] says so); `-sess` algorithms, `auth-int` and `userhash`
//! are not supported.
//!
//! # Layout
//! - this file: [`Algorithm`], [`Ha1`] and [`ha1()`], [`verify()`] with its [`Policy`] and
//!   [`VerifyError`], and [`check_response`] (the arithmetic alone).
//! - [`header`]: [`Credentials`] parsed from an `Authorization` / `Proxy-Authorization` value,
//!   [`credentials_in_headers`] / [`credentials_for_realm`] to pick the one for our realm,
//!   and [`Challenge`] rendered as a
//!   `WWW-Authenticate` / `Proxy-Authenticate` value ([`challenge_values`] for the pair).
//! - [`nonce`]: [`NonceKeys`], stateless nonces MACed with a farm-wide key (with rotation).
//! - [`replay`]: [`NonceCounts`], the bounded record of the `nc` values seen per nonce.
//!
//! # Call order (a registrar or proxy)
//!
//! 1. A request that carries no credentials for our realm
//!    ([`credentials_in_headers`] returns `None`): issue a nonce with
//!    [`NonceKeys::issue`] (the caller supplies the time and 8 random bytes) and answer
//!    401 (registrar, `WWW-Authenticate`) or 407 (proxy, `Proxy-Authenticate`) with the
//!    two values of [`challenge_values`], SHA-256 first.
//! 2. Credentials that do not parse ([`AuthHeaderError`]): answer 400 Bad Request.
//! 3. Otherwise look the subscriber up by `username` and `realm`, then call [`verify()`]
//!    with a closure that returns the stored [`Ha1`] for the algorithm the client chose.
//!    `Ok` means authenticated. On `Err`, answer 401/407 with a fresh challenge, with
//!    `stale=true` when [`VerifyError::is_stale`] says so (the client then retries without
//!    asking its user again).
//!
//! [`verify()`] checks, in order: the realm, the algorithm against the policy, the nonce's
//! MAC and key ([`NonceKeys::check`]), the `qop` rules, the response (in constant time),
//! the nonce's age (an expired nonce with a correct response is [`VerifyError::Stale`]),
//! and last the nonce count ([`NonceCounts::accept`]), so that only requests with a
//! correct response are recorded. For farm-wide replay protection every check of one
//! nonce must reach the same [`NonceCounts`] (for example the one held by the node that
//! owns the nonce on a ring, or the worker a nonce hashes to); a caller that splits the
//! work that way can use [`check_response`] and [`NonceCounts::accept`] directly.
//!
//! The `uri` parameter is covered by the response but is not compared with the
//! Request-URI here: the caller may do so.
//!
//! # Secrets
//!
//! Passwords are never stored by any type here: [`ha1()`] takes one and returns the digest.
//! [`Ha1`] and the nonce keys print as redacted in `Debug` output and are zeroed when
//! dropped; responses are compared with [`subtle`].

pub mod guard;
pub mod header;
pub mod nonce;
pub mod replay;

#[cfg(test)]
mod header_tests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

use md5::Md5;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

pub use guard::{Admit, FailureGuard, GuardPolicy};
pub use header::{
    challenge_values, credentials_for_realm, credentials_in_headers, AuthHeaderError, Challenge,
    Credentials, Param, Qop,
};
pub use nonce::{NonceError, NonceInfo, NonceKey, NonceKeyError, NonceKeys};
pub use replay::{NonceCounts, RecentNonces, Replay, RECENT_NONCES};

/// How long a nonce stays valid by default: 5 minutes. A client holding an older one gets
/// `stale=true` and retries with a fresh nonce without asking its user.
pub const DEFAULT_NONCE_LIFETIME_MS: u64 = 5 * 60 * 1000;

/// A digest algorithm we support.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Algorithm {
    /// `MD5` (RFC 2617), kept for the clients that know nothing else.
    Md5,
    /// `SHA-256` (RFC 7616, RFC 8760), preferred.
    Sha256,
}

/// The algorithms in our order of preference (RFC 8760 section 2.4: the challenges are
/// sent in this order).
pub const PREFERENCE: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Md5];

impl Algorithm {
    /// Reads an `algorithm` parameter value, ignoring case. `-sess` variants and any other
    /// name are refused.
    pub fn parse(name: &str) -> Result<Algorithm, UnsupportedAlgorithm> {
        if name.eq_ignore_ascii_case("MD5") {
            Ok(Algorithm::Md5)
        } else if name.eq_ignore_ascii_case("SHA-256") {
            Ok(Algorithm::Sha256)
        } else {
            Err(UnsupportedAlgorithm::new(name))
        }
    }

    /// The name as sent in challenges: `MD5` or `SHA-256`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// The digest length in bytes: 16 for MD5, 32 for SHA-256 (hex strings are twice as
    /// long).
    pub fn output_len(self) -> usize {
        match self {
            Algorithm::Md5 => 16,
            Algorithm::Sha256 => 32,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = UnsupportedAlgorithm;

    fn from_str(s: &str) -> Result<Algorithm, UnsupportedAlgorithm> {
        Algorithm::parse(s)
    }
}

/// An `algorithm` value we do not support (a `-sess` variant, `SHA-512-256`, anything else).
/// Answer with a fresh challenge: it lists the algorithms we support.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unsupported digest algorithm {name:?} (supported: SHA-256, MD5; no -sess variants)")]
pub struct UnsupportedAlgorithm {
    /// The name as received, cut to 32 bytes.
    pub name: String,
}

impl UnsupportedAlgorithm {
    fn new(name: &str) -> UnsupportedAlgorithm {
        let mut end = name.len().min(32);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        UnsupportedAlgorithm {
            name: name[..end].to_owned(),
        }
    }
}

/// `HA1 = H(username ":" realm ":" password)`: what a subscriber store keeps instead of the
/// password, one per algorithm. It is as good as the password for this realm, so it prints
/// as redacted and is zeroed when dropped.
#[derive(Clone)]
pub struct Ha1 {
    algorithm: Algorithm,
    /// The digest in the first `algorithm.output_len()` bytes, zeros after.
    bytes: [u8; 32],
}

impl Ha1 {
    /// Computes HA1 from a password. The password is only read.
    pub fn compute(algorithm: Algorithm, username: &str, realm: &str, password: &str) -> Ha1 {
        let mut bytes = [0u8; 32];
        hash_into(
            algorithm,
            &[username.as_bytes(), realm.as_bytes(), password.as_bytes()],
            &mut bytes,
        );
        Ha1 { algorithm, bytes }
    }

    /// An HA1 from its raw digest; `None` unless `bytes` has the algorithm's length.
    pub fn from_bytes(algorithm: Algorithm, bytes: &[u8]) -> Option<Ha1> {
        let n = algorithm.output_len();
        if bytes.len() != n {
            return None;
        }
        let mut out = [0u8; 32];
        out[..n].copy_from_slice(bytes);
        Some(Ha1 {
            algorithm,
            bytes: out,
        })
    }

    /// An HA1 from its hex form (either case), as subscriber stores usually keep it; `None`
    /// unless it is exactly twice the algorithm's length of hex digits.
    pub fn from_hex(algorithm: Algorithm, hex: &str) -> Option<Ha1> {
        let n = algorithm.output_len();
        if hex.len() != 2 * n {
            return None;
        }
        let mut out = [0u8; 32];
        decode_hex(hex, &mut out[..n])?;
        Some(Ha1 {
            algorithm,
            bytes: out,
        })
    }

    /// The algorithm this HA1 was computed with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The digest: 16 bytes for MD5, 32 for SHA-256.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.algorithm.output_len()]
    }

    /// The digest in lower-case hex (32 or 64 characters), for a subscriber store.
    pub fn to_hex(&self) -> String {
        let mut buf = [0u8; 64];
        let s = hex_into(self.as_bytes(), &mut buf).to_owned();
        buf.zeroize();
        s
    }
}

impl fmt::Debug for Ha1 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ha1({}, <redacted>)", self.algorithm)
    }
}

impl Drop for Ha1 {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

/// `HA1 = H(username ":" realm ":" password)` for `algorithm` (see [`Ha1`] for its bytes
/// and hex form).
pub fn ha1(algorithm: Algorithm, username: &str, realm: &str, password: &str) -> Ha1 {
    Ha1::compute(algorithm, username, realm, password)
}

/// What [`verify()`] checks credentials against: this realm's settings, the same for every
/// request.
#[derive(Clone, Copy, Debug)]
pub struct Policy<'a> {
    /// Our realm: credentials for another realm are refused.
    pub realm: &'a str,
    /// The keys that issued the nonces.
    pub keys: &'a NonceKeys,
    /// How long a nonce is valid after it was issued, in milliseconds. Use the same value
    /// for [`NonceCounts::new`].
    pub nonce_lifetime_ms: u64,
    /// The algorithms accepted (those challenged with).
    pub algorithms: &'a [Algorithm],
    /// Whether to accept the RFC 2069 form (no `qop`, no `nc`, no `cnonce`). Such requests
    /// have no nonce count, so their only replay protection is the nonce lifetime.
    pub allow_rfc2069: bool,
}

impl<'a> Policy<'a> {
    /// A policy for `realm` with the defaults: [`DEFAULT_NONCE_LIFETIME_MS`], both
    /// algorithms, `qop=auth` required.
    pub fn new(realm: &'a str, keys: &'a NonceKeys) -> Policy<'a> {
        Policy {
            realm,
            keys,
            nonce_lifetime_ms: DEFAULT_NONCE_LIFETIME_MS,
            algorithms: &PREFERENCE,
            allow_rfc2069: false,
        }
    }
}

/// Why credentials were not accepted. Every variant is answered with 401 (registrar) or 407
/// (proxy) carrying a fresh challenge; [`VerifyError::is_stale`] says whether to set
/// `stale=true`. Repeated [`VerifyError::Mismatch`] for one user may deserve 403 or a
/// rate limit: that is the caller's policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The credentials are for another realm than the policy's.
    #[error("credentials are for another realm")]
    WrongRealm,
    /// The algorithm is not one the policy accepts, or the [`Ha1`] supplied was computed
    /// with another algorithm than the client's.
    #[error("digest algorithm {0} is not accepted")]
    UnsupportedAlgorithm(Algorithm),
    /// The HA1 lookup returned nothing (no such user, or no HA1 for this algorithm).
    /// Answer exactly as for [`VerifyError::Mismatch`], so as not to reveal which users
    /// exist.
    #[error("no credentials for this user and algorithm")]
    UnknownUser,
    /// The nonce was not issued by our keys for this realm, or is from the future.
    #[error("bad nonce: {0}")]
    BadNonce(NonceError),
    /// The request has no `qop` and the policy requires `qop=auth`.
    #[error("qop=auth is required")]
    QopRequired,
    /// The request uses `qop=auth-int`, which we never offer.
    #[error("qop=auth-int is not supported")]
    UnsupportedQop,
    /// The response is wrong: wrong password, or a request altered on the way.
    #[error("digest response mismatch")]
    Mismatch,
    /// The response is right but the nonce has expired: challenge with `stale=true`.
    #[error("nonce is stale")]
    Stale,
    /// The response is right but this nonce count was already used (or cannot be
    /// checked): challenge with a fresh nonce, `stale=true`.
    #[error("nonce count refused: {0}")]
    Replay(Replay),
}

impl VerifyError {
    /// Whether the fresh challenge should say `stale=true`: the client proved it knows the
    /// password, only its nonce (or nonce count) was unusable.
    pub fn is_stale(&self) -> bool {
        matches!(self, VerifyError::Stale | VerifyError::Replay(_))
    }
}

/// Verifies credentials (already parsed, see [`Credentials::parse`]) for a request with
/// `method` (its token, e.g. `REGISTER`). `ha1_for_alg` returns the subscriber's stored
/// HA1 for the algorithm the client chose (`None` when there is none). On success, records
/// the nonce count in `counts` and returns what the nonce says.
///
/// See the [module documentation](self) for the order of the checks.
pub fn verify(
    creds: &Credentials,
    method: &str,
    ha1_for_alg: impl FnOnce(Algorithm) -> Option<Ha1>,
    policy: &Policy<'_>,
    counts: &mut NonceCounts,
    now_ms: u64,
) -> Result<NonceInfo, VerifyError> {
    if creds.realm != policy.realm {
        return Err(VerifyError::WrongRealm);
    }
    if !policy.algorithms.contains(&creds.algorithm) {
        return Err(VerifyError::UnsupportedAlgorithm(creds.algorithm));
    }
    let fresh =
        match policy
            .keys
            .check(&creds.nonce, policy.realm, now_ms, policy.nonce_lifetime_ms)
        {
            Ok(info) => Some(info),
            Err(NonceError::Expired) => None,
            Err(e) => return Err(VerifyError::BadNonce(e)),
        };
    check_qop(creds, policy.allow_rfc2069)?;
    let ha1 = ha1_for_alg(creds.algorithm).ok_or(VerifyError::UnknownUser)?;
    check_response(creds, method, &ha1, policy.allow_rfc2069)?;
    let info = fresh.ok_or(VerifyError::Stale)?;
    if let Some(nc) = creds.nc {
        counts
            .accept(&creds.nonce, info, nc, now_ms)
            .map_err(VerifyError::Replay)?;
    }
    Ok(info)
}

/// The second half of a verification split across the farm. The node that received the
/// request checked the realm, the algorithm and the nonce ([`NonceKeys::check`]) and sends
/// the credentials with what the nonce said (`issued_ms`, or `None` when it had expired) to
/// the node that holds the subscriber's record, which calls this: the `qop` rules, the
/// response (in constant time), the nonce's age, then the count in the subscriber's
/// [`RecentNonces`], recorded only when all else passed. Every request authenticated as
/// one subscriber meets at that node, so a replayed count is refused wherever it arrived.
pub fn verify_at_owner(
    creds: &Credentials,
    method: &str,
    ha1_for_alg: impl FnOnce(Algorithm) -> Option<Ha1>,
    issued_ms: Option<u64>,
    lifetime_ms: u64,
    counts: &mut RecentNonces,
    now_ms: u64,
) -> Result<(), VerifyError> {
    check_qop(creds, false)?;
    let ha1 = ha1_for_alg(creds.algorithm).ok_or(VerifyError::UnknownUser)?;
    check_response(creds, method, &ha1, false)?;
    let issued = issued_ms.ok_or(VerifyError::Stale)?;
    let nc = creds.nc.ok_or(VerifyError::QopRequired)?;
    counts
        .accept(&creds.nonce, issued, nc, now_ms, lifetime_ms)
        .map_err(|r| match r {
            Replay::Expired => VerifyError::Stale,
            r => VerifyError::Replay(r),
        })
}

/// The arithmetic alone: whether `creds.response` is right for `method` and `ha1`,
/// compared in constant time. No realm, nonce or replay check (see [`verify()`]).
///
/// With `qop=auth`: `response = KD(HA1, nonce:nc:cnonce:qop:HA2)`; without `qop` (RFC
/// 2069, only if `allow_rfc2069`): `KD(HA1, nonce:HA2)`; `HA2 = H(method:uri)`,
/// `KD(s, d) = H(s:d)`, and digests enter the next step as lower-case hex.
pub fn check_response(
    creds: &Credentials,
    method: &str,
    ha1: &Ha1,
    allow_rfc2069: bool,
) -> Result<(), VerifyError> {
    check_qop(creds, allow_rfc2069)?;
    if ha1.algorithm() != creds.algorithm {
        return Err(VerifyError::UnsupportedAlgorithm(creds.algorithm));
    }
    let mut expected = [0u8; 32];
    let Some(len) = compute_response(creds, method, ha1, &mut expected) else {
        return Err(VerifyError::Mismatch);
    };
    if bool::from(expected[..len].ct_eq(&creds.response)) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

fn check_qop(creds: &Credentials, allow_rfc2069: bool) -> Result<(), VerifyError> {
    match creds.qop {
        Some(Qop::Auth) => Ok(()),
        Some(Qop::AuthInt) => Err(VerifyError::UnsupportedQop),
        None if allow_rfc2069 => Ok(()),
        None => Err(VerifyError::QopRequired),
    }
}

/// The response digest for `creds` (with `qop`, or the RFC 2069 form when `qop` is
/// absent) written into `out`; returns its length, or `None` when `qop` is given without
/// `nc` and `cnonce` (which parsing refuses). Also what a client computes (see
/// [`Credentials::answer`]).
pub(crate) fn compute_response(
    creds: &Credentials,
    method: &str,
    ha1: &Ha1,
    out: &mut [u8; 32],
) -> Option<usize> {
    let alg = creds.algorithm;
    let n = alg.output_len();
    let mut ha2 = [0u8; 32];
    hash_into(alg, &[method.as_bytes(), creds.uri.as_bytes()], &mut ha2);
    let mut ha1_hex = [0u8; 64];
    let mut ha2_hex = [0u8; 64];
    let ha1_hex_str = hex_into(ha1.as_bytes(), &mut ha1_hex);
    let ha2_hex_str = hex_into(&ha2[..n], &mut ha2_hex);
    match (creds.qop, creds.nc, creds.cnonce.as_deref()) {
        (Some(qop), Some(nc), Some(cnonce)) => {
            let nc = format!("{nc:08x}");
            hash_into(
                alg,
                &[
                    ha1_hex_str.as_bytes(),
                    creds.nonce.as_bytes(),
                    nc.as_bytes(),
                    cnonce.as_bytes(),
                    qop.as_str().as_bytes(),
                    ha2_hex_str.as_bytes(),
                ],
                out,
            );
        }
        (None, _, _) => hash_into(
            alg,
            &[
                ha1_hex_str.as_bytes(),
                creds.nonce.as_bytes(),
                ha2_hex_str.as_bytes(),
            ],
            out,
        ),
        (Some(_), _, _) => {
            ha1_hex.zeroize();
            return None;
        }
    }
    ha1_hex.zeroize();
    Some(n)
}

/// `H(parts[0] ":" parts[1] ":" ...)` into the first `output_len` bytes of `out`.
fn hash_into(alg: Algorithm, parts: &[&[u8]], out: &mut [u8; 32]) {
    fn run<D: Digest>(parts: &[&[u8]], out: &mut [u8]) {
        let mut d = D::new();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                d.update(b":");
            }
            d.update(p);
        }
        out.copy_from_slice(&d.finalize());
    }
    match alg {
        Algorithm::Md5 => run::<Md5>(parts, &mut out[..16]),
        Algorithm::Sha256 => run::<Sha256>(parts, &mut out[..]),
    }
}

/// `bytes` in lower-case hex, written into `buf` (at least twice as long).
fn hex_into<'b>(bytes: &[u8], buf: &'b mut [u8]) -> &'b str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let out = &mut buf[..bytes.len() * 2];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
    }
    // Only ASCII hex digits were written.
    std::str::from_utf8(out).unwrap_or_default()
}

/// `bytes` in lower-case hex.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    let mut buf = vec![0u8; bytes.len() * 2];
    hex_into(bytes, &mut buf).to_owned()
}

/// Decodes hex digits (either case) into `out`, which must be half as long as `hex`.
pub(crate) fn decode_hex(hex: &str, out: &mut [u8]) -> Option<()> {
    let h = hex.as_bytes();
    if h.len() != out.len() * 2 {
        return None;
    }
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    for (o, pair) in out.iter_mut().zip(h.chunks_exact(2)) {
        *o = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(())
}
