//! Stateless nonces that any node holding the farm's keys can check.
//!
//! A nonce is 33 bytes in base64url without padding (44 characters):
//!
//! ```text
//! key id (1) | issued_ms, big-endian (8) | random (8) | HMAC-SHA256(key, the first 17 bytes | realm)[..16]
//! ```
//!
//! The MAC binds the nonce to its realm and issue time, so a node checks one with no shared
//! state: the key named by the id, the MAC, then the age. The random bytes (supplied by the
//! caller, like the time) make nonces issued in the same millisecond differ.
//!
//! # Rotating keys across the farm
//!
//! [`NonceKeys`] holds a current key, which issues and checks, and optionally a previous
//! key, which only checks. To roll a new key out with no refused nonce:
//!
//! 1. give every node `{current: old, previous: new}` (the new key is now accepted
//!    everywhere, though nobody issues with it yet);
//! 2. once all nodes have it, give every node `{current: new, previous: old}`
//!    ([`NonceKeys::rotate`] does this on one node).
//!
//! Nonces from a key no longer held are refused with [`NonceError::UnknownKey`] (the client
//! gets a fresh challenge); after one nonce lifetime none of them is still valid anyway.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// The length of the MACed header: key id, issue time, random.
const BODY_LEN: usize = 1 + 8 + 8;
/// The truncated MAC's length.
const MAC_LEN: usize = 16;
/// The nonce's length in bytes.
const RAW_LEN: usize = BODY_LEN + MAC_LEN;
/// The nonce's length in base64url characters (33 bytes: no padding, no spare bits).
const ENCODED_LEN: usize = RAW_LEN / 3 * 4;

/// How far ahead of our clock a nonce's issue time may be by default (another node's
/// clock may run a little ahead): 5 seconds.
pub const DEFAULT_CLOCK_SKEW_MS: u64 = 5_000;

/// One nonce key: a 1-byte id, carried in each nonce, and a 32-byte secret shared by the
/// farm. The secret never appears in `Debug` output and is zeroed when dropped.
#[derive(Clone)]
pub struct NonceKey {
    id: u8,
    secret: [u8; 32],
}

impl NonceKey {
    /// A key with its id and secret (32 random bytes, the same on every node).
    pub fn new(id: u8, secret: [u8; 32]) -> NonceKey {
        NonceKey { id, secret }
    }

    /// The key's id.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// HMAC-SHA256 over the nonce body and the realm.
    fn mac(&self, body: &[u8], realm: &str) -> [u8; 32] {
        // HMAC accepts keys of any length: this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.secret) else {
            unreachable!("HMAC takes keys of any length")
        };
        mac.update(body);
        mac.update(realm.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonceKey")
            .field("id", &self.id)
            .field("secret", &format_args!("<redacted>"))
            .finish()
    }
}

impl Drop for NonceKey {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

/// The keys a node issues and checks nonces with: the current key and optionally the
/// previous one (see the [module documentation](self) for rotation).
#[derive(Clone, Debug)]
pub struct NonceKeys {
    current: NonceKey,
    previous: Option<NonceKey>,
    max_skew_ms: u64,
}

/// Why a set of nonce keys was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NonceKeyError {
    /// The current and previous keys have the same id, so a nonce could not say which
    /// one made it: give the new key another id.
    #[error("nonce key id {0} is used by both the current and the previous key")]
    SameId(u8),
}

/// What a valid nonce says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NonceInfo {
    /// When it was issued, in wall-clock milliseconds (of the issuing node's clock).
    pub issued_ms: u64,
}

/// Why a nonce was refused. [`NonceError::Expired`] is answered with a fresh challenge
/// and `stale=true` (when the response was right, see [`super::verify()`]); every other
/// variant with a fresh challenge without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NonceError {
    /// Not one of our nonces: wrong length or not base64url.
    #[error("malformed nonce")]
    Malformed,
    /// Made with a key id we do not hold (rotated out, or never ours).
    #[error("nonce key unknown")]
    UnknownKey,
    /// The MAC does not match: the nonce was altered, or is for another realm.
    #[error("nonce mac mismatch")]
    BadMac,
    /// Valid, but older than its lifetime.
    #[error("nonce expired")]
    Expired,
    /// Valid, but issued further in the future than the allowed clock skew.
    #[error("nonce issued in the future")]
    FromFuture,
}

impl NonceKeys {
    /// Keys with `current` issuing and checking, `previous` only checking, and the
    /// [`DEFAULT_CLOCK_SKEW_MS`] allowance. The two ids must differ.
    pub fn new(current: NonceKey, previous: Option<NonceKey>) -> Result<NonceKeys, NonceKeyError> {
        if let Some(p) = &previous {
            if p.id == current.id {
                return Err(NonceKeyError::SameId(p.id));
            }
        }
        Ok(NonceKeys {
            current,
            previous,
            max_skew_ms: DEFAULT_CLOCK_SKEW_MS,
        })
    }

    /// Sets how far in the future (in milliseconds) an issue time may be before the nonce
    /// is refused with [`NonceError::FromFuture`].
    pub fn with_clock_skew(mut self, max_skew_ms: u64) -> NonceKeys {
        self.max_skew_ms = max_skew_ms;
        self
    }

    /// The id of the key that issues.
    pub fn current_id(&self) -> u8 {
        self.current.id
    }

    /// The id of the previous key, if any.
    pub fn previous_id(&self) -> Option<u8> {
        self.previous.as_ref().map(|k| k.id)
    }

    /// Makes `next` the current key and the current one the previous (dropping the
    /// previous). Refused, with nothing changed, when `next` has the current key's id.
    pub fn rotate(&mut self, next: NonceKey) -> Result<(), NonceKeyError> {
        if next.id == self.current.id {
            return Err(NonceKeyError::SameId(next.id));
        }
        let old = std::mem::replace(&mut self.current, next);
        self.previous = Some(old);
        Ok(())
    }

    /// A short tag binding a dialog's Call-ID to the farm's key, for the Record-Route a
    /// proxy inserts (`;ohs=TAG`): a request that comes back inside the dialog with the
    /// tag proves the route was ours for that call, which an outsider cannot forge. 12
    /// base64url characters: the key id and 8 bytes of HMAC-SHA256 over a label and the
    /// Call-ID.
    pub fn route_tag(&self, call_id: &str) -> String {
        Self::tag_with(&self.current, call_id)
    }

    /// Whether `tag` is [`NonceKeys::route_tag`] of `call_id` under the current or the
    /// previous key (compared in constant time). Never panics.
    pub fn check_route_tag(&self, call_id: &str, tag: &str) -> bool {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .any(|k| bool::from(Self::tag_with(k, call_id).as_bytes().ct_eq(tag.as_bytes())))
    }

    fn tag_with(key: &NonceKey, call_id: &str) -> String {
        let mac = key.mac(b"record-route\0", call_id);
        let mut raw = [0u8; 9];
        raw[0] = key.id;
        raw[1..].copy_from_slice(&mac[..8]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// A nonce for `realm` issued at `now_ms` (wall-clock milliseconds) with the current
    /// key; `random` should come from a CSPRNG, fresh for each nonce.
    pub fn issue(&self, now_ms: u64, random: [u8; 8], realm: &str) -> String {
        let mut raw = [0u8; RAW_LEN];
        raw[0] = self.current.id;
        raw[1..9].copy_from_slice(&now_ms.to_be_bytes());
        raw[9..BODY_LEN].copy_from_slice(&random);
        let mac = self.current.mac(&raw[..BODY_LEN], realm);
        raw[BODY_LEN..].copy_from_slice(&mac[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks a nonce for `realm` at `now_ms`: the key, the MAC (in constant time), then
    /// the time. A nonce is expired when more than `lifetime_ms` have passed since it was
    /// issued. Never panics.
    pub fn check(
        &self,
        nonce: &str,
        realm: &str,
        now_ms: u64,
        lifetime_ms: u64,
    ) -> Result<NonceInfo, NonceError> {
        if nonce.len() != ENCODED_LEN {
            return Err(NonceError::Malformed);
        }
        let mut raw = [0u8; RAW_LEN];
        match URL_SAFE_NO_PAD.decode_slice(nonce, &mut raw) {
            Ok(RAW_LEN) => {}
            _ => return Err(NonceError::Malformed),
        }
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == raw[0])
            .ok_or(NonceError::UnknownKey)?;
        let mac = key.mac(&raw[..BODY_LEN], realm);
        if !bool::from(mac[..MAC_LEN].ct_eq(&raw[BODY_LEN..])) {
            return Err(NonceError::BadMac);
        }
        let mut issued = [0u8; 8];
        issued.copy_from_slice(&raw[1..9]);
        let issued_ms = u64::from_be_bytes(issued);
        if issued_ms > now_ms.saturating_add(self.max_skew_ms) {
            return Err(NonceError::FromFuture);
        }
        if now_ms.saturating_sub(issued_ms) > lifetime_ms {
            return Err(NonceError::Expired);
        }
        Ok(NonceInfo { issued_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REALM: &str = "atlanta.example.com";
    const T0: u64 = 1_700_000_000_123;
    const LIFE: u64 = 300_000;

    fn key(id: u8, fill: u8) -> NonceKey {
        NonceKey::new(id, [fill; 32])
    }

    fn keys() -> NonceKeys {
        NonceKeys::new(key(1, 0x11), None).unwrap()
    }

    #[test]
    fn route_tags_bind_the_call_and_the_key() {
        let k = keys();
        let tag = k.route_tag("call-1@host");
        assert_eq!(tag.len(), 12);
        assert!(k.check_route_tag("call-1@host", &tag));
        assert!(!k.check_route_tag("call-2@host", &tag));
        assert!(!k.check_route_tag("call-1@host", "AAAAAAAAAAAA"));
        assert!(!k.check_route_tag("call-1@host", ""));
        let other = NonceKeys::new(key(2, 0x22), None).unwrap();
        assert!(!other.check_route_tag("call-1@host", &tag));
        // After a rotation the previous key's tags still pass.
        let mut rotated = keys();
        rotated.rotate(key(2, 0x22)).unwrap();
        assert!(rotated.check_route_tag("call-1@host", &tag));
    }

    /// Re-encodes `nonce` with byte `i` xor-ed with `mask`.
    fn tamper(nonce: &str, i: usize, mask: u8) -> String {
        let mut raw = URL_SAFE_NO_PAD.decode(nonce).unwrap();
        raw[i] ^= mask;
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The format is fixed (nodes of different versions must agree), so pin it to a value
    /// computed independently:
    ///
    /// ```text
    /// python3 -c 'import hmac, hashlib, base64, struct
    /// key = bytes(range(32)); body = bytes([7]) + struct.pack(">Q", 1700000000123) + bytes(range(0xa0, 0xa8))
    /// mac = hmac.new(key, body + b"atlanta.example.com", hashlib.sha256).digest()[:16]
    /// print(base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode())'
    /// ```
    #[test]
    fn golden_nonce() {
        let secret: [u8; 32] = std::array::from_fn(|i| i as u8);
        let keys = NonceKeys::new(NonceKey::new(7, secret), None).unwrap();
        let random: [u8; 8] = std::array::from_fn(|i| 0xa0 + i as u8);
        let nonce = keys.issue(T0, random, REALM);
        assert_eq!(nonce, "BwAAAYvP5Wh7oKGio6Slpqc0OFaw02kEEu2mEcK2fos0");
        assert_eq!(nonce.len(), ENCODED_LEN);
        assert_eq!(
            keys.check(&nonce, REALM, T0, LIFE),
            Ok(NonceInfo { issued_ms: T0 })
        );
    }

    #[test]
    fn issue_then_check_on_another_node() {
        let a = keys();
        let b = keys();
        let n1 = a.issue(T0, [1; 8], REALM);
        let n2 = a.issue(T0, [2; 8], REALM);
        assert_ne!(
            n1, n2,
            "the random bytes make nonces of one millisecond differ"
        );
        assert!(n1
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(
            b.check(&n1, REALM, T0 + 1_000, LIFE),
            Ok(NonceInfo { issued_ms: T0 })
        );
    }

    #[test]
    fn tampering_is_detected() {
        let k = keys();
        let nonce = k.issue(T0, [9; 8], REALM);
        // The time, the random bytes and the MAC itself: every bit counts.
        for i in 1..RAW_LEN {
            for mask in [0x01, 0x80] {
                assert_eq!(
                    k.check(&tamper(&nonce, i, mask), REALM, T0, LIFE),
                    Err(NonceError::BadMac),
                    "byte {i} mask {mask:#x}"
                );
            }
        }
        // The key id names a key we do not hold.
        assert_eq!(
            k.check(&tamper(&nonce, 0, 0x01), REALM, T0, LIFE),
            Err(NonceError::UnknownKey)
        );
        // Another realm, another MAC.
        assert_eq!(
            k.check(&nonce, "biloxi.example.com", T0, LIFE),
            Err(NonceError::BadMac)
        );
        // Another farm's key with the same id.
        let other = NonceKeys::new(key(1, 0x22), None).unwrap();
        assert_eq!(
            other.check(&nonce, REALM, T0, LIFE),
            Err(NonceError::BadMac)
        );
    }

    #[test]
    fn malformed() {
        let k = keys();
        let nonce = k.issue(T0, [9; 8], REALM);
        for bad in [
            "",
            "abc",
            &nonce[..43],
            &format!("{nonce}A"),
            &format!("{}=", &nonce[..43]),
            &format!("{}+", &nonce[..43]),
            &format!("{}/", &nonce[..43]),
            &format!("{}é", &nonce[..42]),
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        ] {
            assert_eq!(
                k.check(bad, REALM, T0, LIFE),
                Err(NonceError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn lifetime_and_clock_skew() {
        let k = keys();
        let nonce = k.issue(T0, [3; 8], REALM);
        assert!(k.check(&nonce, REALM, T0 + LIFE, LIFE).is_ok());
        assert_eq!(
            k.check(&nonce, REALM, T0 + LIFE + 1, LIFE),
            Err(NonceError::Expired)
        );
        // Issued by a node whose clock is ahead of ours.
        assert!(k
            .check(&nonce, REALM, T0 - DEFAULT_CLOCK_SKEW_MS, LIFE)
            .is_ok());
        assert_eq!(
            k.check(&nonce, REALM, T0 - DEFAULT_CLOCK_SKEW_MS - 1, LIFE),
            Err(NonceError::FromFuture)
        );
        let strict = keys().with_clock_skew(0);
        assert_eq!(
            strict.check(&nonce, REALM, T0 - 1, LIFE),
            Err(NonceError::FromFuture)
        );
        // Times at the ends of the range do not overflow.
        let edge = k.issue(u64::MAX, [0; 8], REALM);
        assert!(k.check(&edge, REALM, u64::MAX, LIFE).is_ok());
        assert_eq!(k.check(&edge, REALM, 0, LIFE), Err(NonceError::FromFuture));
        let zero = k.issue(0, [0; 8], REALM);
        assert_eq!(
            k.check(&zero, REALM, u64::MAX, LIFE),
            Err(NonceError::Expired)
        );
    }

    #[test]
    fn rotation() {
        let mut k = keys();
        let old = k.issue(T0, [4; 8], REALM);
        k.rotate(key(2, 0x22)).unwrap();
        assert_eq!((k.current_id(), k.previous_id()), (2, Some(1)));
        let new = k.issue(T0, [4; 8], REALM);
        assert_ne!(old, new);
        // A nonce from the previous key is still accepted, the new one too.
        assert!(k.check(&old, REALM, T0, LIFE).is_ok());
        assert!(k.check(&new, REALM, T0, LIFE).is_ok());
        // A node still on the old current key that already accepts the new one (step 1).
        let step1 = NonceKeys::new(key(1, 0x11), Some(key(2, 0x22))).unwrap();
        assert!(step1.check(&new, REALM, T0, LIFE).is_ok());
        // After a second rotation key 1 is gone.
        k.rotate(key(3, 0x33)).unwrap();
        assert_eq!(k.check(&old, REALM, T0, LIFE), Err(NonceError::UnknownKey));
        assert!(k.check(&new, REALM, T0, LIFE).is_ok());
        // Ids must differ.
        assert_eq!(k.rotate(key(3, 0x44)), Err(NonceKeyError::SameId(3)));
        assert_eq!(k.current_id(), 3);
        assert_eq!(
            NonceKeys::new(key(5, 1), Some(key(5, 2))).unwrap_err(),
            NonceKeyError::SameId(5)
        );
    }

    #[test]
    fn keys_are_not_printed() {
        let k = NonceKeys::new(key(1, 0xab), Some(key(2, 0xcd))).unwrap();
        let debug = format!("{k:?} {:?}", key(9, 0xef));
        for secret in ["171", "205", "239", "ab", "cd", "ef"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(debug.contains("redacted"), "{debug}");
    }
}
