//! The number registry's data: carriers (by their OCN), blocks of E.164 numbers held by a
//! carrier, and the numbers allocated from them, with the rules that check what a request
//! gives.
//!
//! Like the rest of the provisioning model, everything is serde data (bincode in the Raft log
//! and the database, JSON in the API); enum variants are only appended. A porting PIN exists
//! only as a salted PBKDF2 hash ([`PinHash`]); the PIN itself never enters a command, a record
//! or a log.

use std::fmt;

use onehop_overlay::provision::{parse_e164, NumberRoute};
use serde::{Deserialize, Serialize};

use super::model::ProvError;

/// Most characters of an operating company number (OCN).
pub const MAX_OCN: usize = 16;
/// Most characters of a carrier's name, an assignee, a caller name or a location.
pub const MAX_TEXT: usize = 128;
/// Most characters of a routing URI.
pub const MAX_URI: usize = 256;
/// Most numbers in one block.
pub const MAX_BLOCK_SIZE: u64 = 100_000_000;
/// Wrong PINs in a row before porting the number is refused for [`PIN_LOCK_MS`].
pub const PIN_TRIES: u32 = 5;
/// How long porting stays refused after [`PIN_TRIES`] wrong PINs.
pub const PIN_LOCK_MS: u64 = 15 * 60 * 1000;
/// PBKDF2-HMAC-SHA256 iterations of a PIN hash.
pub const PIN_ITERATIONS: u32 = 60_000;
/// The service types a number may have.
pub const SERVICE_TYPES: &[&str] = &[
    "fixed", "mobile", "voip", "tollfree", "premium", "shared", "pager", "other",
];

/// Who asks: the name of the admin certificate and the carriers it administers (`None`: a
/// farm-wide administrator). Carried in every number command, so that the state machine
/// decides with the state it changes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    /// The certificate's name.
    pub name: String,
    /// The OCNs it administers; `None` for a farm-wide administrator.
    pub carriers: Option<Vec<String>>,
}

impl Actor {
    /// A farm-wide administrator named `name`.
    pub fn farm(name: &str) -> Actor {
        Actor {
            name: name.into(),
            carriers: None,
        }
    }

    /// Whether it administers carrier `ocn`.
    pub fn administers(&self, ocn: &str) -> bool {
        match &self.carriers {
            None => true,
            Some(list) => list.iter().any(|c| c == ocn),
        }
    }

    /// 403 unless a farm-wide administrator.
    pub fn farm_wide(&self, what: &str) -> Result<(), ProvError> {
        match &self.carriers {
            None => Ok(()),
            Some(list) => Err(forbidden(
                "carrier",
                format!(
                    "{} administers carriers {} only; {what} takes a farm-wide administrator (a certificate issued without --carriers)",
                    self.name,
                    list.join(",")
                ),
            )),
        }
    }

    /// 403 unless it administers `ocn`.
    pub fn may_change(&self, ocn: &str, field: &str, what: &str) -> Result<(), ProvError> {
        if self.administers(ocn) {
            return Ok(());
        }
        Err(forbidden(
            field,
            format!(
                "{what} belongs to carrier {ocn}, and {} administers {} only",
                self.name,
                self.carriers.as_deref().unwrap_or_default().join(",")
            ),
        ))
    }
}

/// 403: not yours.
pub fn forbidden(field: &str, message: impl Into<String>) -> ProvError {
    ProvError {
        status: 403,
        code: "forbidden".into(),
        field: Some(field.into()),
        message: message.into(),
    }
}

/// A carrier: an operating company that holds blocks and numbers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Carrier {
    /// Its OCN, upper case.
    pub ocn: String,
    /// Its name.
    pub name: String,
    /// Change version that added it.
    pub version: u64,
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
}

/// A block of numbers of one length, `first` to `last`, held by a carrier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The first number (its id).
    pub first: String,
    /// The last number.
    pub last: String,
    /// The OCN of the carrier that holds it.
    pub carrier: String,
    /// No number below this one is free (where the search for the next free one starts).
    pub next_free: String,
    /// Numbers allocated from it now.
    pub allocated: u64,
    /// Change version that added it.
    pub version: u64,
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
}

impl Block {
    /// How many numbers it has.
    pub fn size(&self) -> u64 {
        digits_value(&self.last) - digits_value(&self.first) + 1
    }

    /// Whether `number` (canonical) is in it.
    pub fn holds(&self, number: &str) -> bool {
        number.len() == self.first.len()
            && self.first.as_str() <= number
            && number <= self.last.as_str()
    }
}

/// The public properties of a number.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct NumberProps {
    /// The caller name (CNAM) shown for it.
    pub caller_name: Option<String>,
    /// Where it is (a rate centre, a city).
    pub location: Option<String>,
    /// One of [`SERVICE_TYPES`].
    pub service_type: Option<String>,
}

/// A porting PIN as stored: PBKDF2-HMAC-SHA256 over the PIN with a random salt.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct PinHash {
    /// Random, per PIN.
    pub salt: [u8; 16],
    /// The derived key.
    pub hash: [u8; 32],
}

impl fmt::Debug for PinHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PinHash(<redacted>)")
    }
}

impl PinHash {
    /// The hash of `pin` with a fresh random salt. Slow on purpose (about 10-30 ms).
    pub fn new(pin: &str) -> PinHash {
        use rand::RngCore;
        let mut salt = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        PinHash {
            salt,
            hash: pin_derive(&salt, pin),
        }
    }

    /// Whether `proof` was derived from the PIN with this salt (constant time).
    pub fn matches(&self, proof: &PinProof) -> bool {
        let diff = self
            .hash
            .iter()
            .zip(proof.hash.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        self.salt == proof.salt && diff == 0
    }
}

/// What a port request proves the PIN with: the PIN derived with the salt the number held
/// when the request was read (so the PIN itself never enters the Raft log).
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct PinProof {
    /// The salt used.
    pub salt: [u8; 16],
    /// The derived key.
    pub hash: [u8; 32],
}

impl fmt::Debug for PinProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PinProof(<redacted>)")
    }
}

impl PinProof {
    /// Derives `pin` with `salt`. Slow on purpose.
    pub fn derive(salt: [u8; 16], pin: &str) -> PinProof {
        PinProof {
            salt,
            hash: pin_derive(&salt, pin),
        }
    }
}

fn pin_derive(salt: &[u8; 16], pin: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(PIN_ITERATIONS).expect("non-zero"),
        salt,
        pin.as_bytes(),
        &mut out,
    );
    out
}

/// An allocated number, as stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Number {
    /// `+15550100`.
    pub number: String,
    /// The `first` of the block it was allocated from.
    pub block: String,
    /// The OCN of the carrier that serves it now (the block's, until it is ported).
    pub carrier: String,
    /// Who it is assigned to (the carrier's customer reference).
    pub assignee: Option<String>,
    /// Where calls to it go; `None`: not routed.
    pub route: Option<NumberRoute>,
    /// Public properties.
    pub props: NumberProps,
    /// The subscriber's porting PIN.
    pub pin: Option<PinHash>,
    /// Wrong PINs given in a row.
    pub pin_failures: u32,
    /// Porting is refused until then (ms since the Unix epoch; 0: not locked).
    pub locked_until_ms: u64,
    /// Change version that allocated it.
    pub created_version: u64,
    /// Change version of its latest change.
    pub updated_version: u64,
    /// When it was allocated (ms since the Unix epoch).
    pub created_ms: u64,
    /// When it last changed.
    pub updated_ms: u64,
}

impl Number {
    /// The number as the change log and the nodes see it: without its PIN hash and counters.
    pub fn public(&self) -> Number {
        Number {
            pin: None,
            pin_failures: 0,
            locked_until_ms: 0,
            ..self.clone()
        }
    }
}

/// One entry of a number's history.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NumberEvent {
    /// The change version (0 for a refused port, which changes no version).
    pub version: u64,
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// The admin certificate that asked.
    pub by: String,
    /// What happened: `allocated`, `updated`, `ported`, `released`, `port refused`.
    pub action: String,
    /// More, for a person (`from ACME to BETA`, `wrong PIN`).
    pub detail: String,
    /// The carrier after it.
    pub carrier: String,
    /// The routing after it.
    pub route: Option<NumberRoute>,
}

/// Which number to allocate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Want {
    /// This one.
    Number(String),
    /// The lowest free one of the block whose first number this is.
    NextFree(String),
}

/// The fields of a number set at allocation and changed by updates; absent fields stay.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct NumberPatch {
    /// `Some(None)` clears it.
    pub assignee: Option<Option<String>>,
    /// `Some(None)` unroutes it.
    pub route: Option<Option<NumberRoute>>,
    /// `Some(None)` clears it.
    pub caller_name: Option<Option<String>>,
    /// `Some(None)` clears it.
    pub location: Option<Option<String>>,
    /// `Some(None)` clears it.
    pub service_type: Option<Option<String>>,
    /// A new porting PIN (hashed); `Some(None)` removes it.
    pub pin: Option<Option<PinHash>>,
}

impl NumberPatch {
    /// Applies to `n`.
    pub fn apply(self, n: &mut Number) {
        if let Some(v) = self.assignee {
            n.assignee = v;
        }
        if let Some(v) = self.route {
            n.route = v;
        }
        if let Some(v) = self.caller_name {
            n.props.caller_name = v;
        }
        if let Some(v) = self.location {
            n.props.location = v;
        }
        if let Some(v) = self.service_type {
            n.props.service_type = v;
        }
        if let Some(v) = self.pin {
            n.pin = v;
            n.pin_failures = 0;
            n.locked_until_ms = 0;
        }
    }

    /// What it changes, for the history (`route, caller_name`).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.assignee.is_some() {
            parts.push("assignee");
        }
        if self.route.is_some() {
            parts.push("route");
        }
        if self.caller_name.is_some() {
            parts.push("caller_name");
        }
        if self.location.is_some() {
            parts.push("location");
        }
        if self.service_type.is_some() {
            parts.push("service_type");
        }
        if self.pin.is_some() {
            parts.push("pin");
        }
        parts.join(", ")
    }
}

/// Checks an E.164 number given in `field`; its canonical form.
pub fn check_number(field: &str, s: &str) -> Result<String, ProvError> {
    parse_e164(s).map_err(|e| ProvError::invalid(field, e))
}

/// Checks and upper-cases an OCN (1 to [`MAX_OCN`] letters, digits, `-` or `_`).
pub fn check_ocn(field: &str, s: &str) -> Result<String, ProvError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_OCN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(ProvError::invalid(
            field,
            format!(
                "{s:?} is not an OCN: 1 to {MAX_OCN} letters, digits, '-' or '_' (e.g. \"1234\", \"ACME\")"
            ),
        ));
    }
    Ok(s.to_ascii_uppercase())
}

/// Checks a free text (carrier name, assignee, caller name, location).
pub fn check_text(field: &str, s: &str) -> Result<(), ProvError> {
    if s.chars().count() > MAX_TEXT {
        return Err(ProvError::invalid(
            field,
            format!("longer than {MAX_TEXT} characters"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(ProvError::invalid(
            field,
            "control characters are not allowed",
        ));
    }
    Ok(())
}

/// Checks a service type (one of [`SERVICE_TYPES`]); lower-cased.
pub fn check_service_type(field: &str, s: &str) -> Result<String, ProvError> {
    let t = s.to_ascii_lowercase();
    if SERVICE_TYPES.contains(&t.as_str()) {
        Ok(t)
    } else {
        Err(ProvError::invalid(
            field,
            format!(
                "{s:?} is not a service type: one of {}",
                SERVICE_TYPES.join(", ")
            ),
        ))
    }
}

/// Checks a porting PIN: 4 to 12 digits.
pub fn check_pin(field: &str, pin: &str) -> Result<(), ProvError> {
    if !(4..=12).contains(&pin.len()) || !pin.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProvError::invalid(field, "a PIN is 4 to 12 digits"));
    }
    Ok(())
}

/// Checks a routing URI: a `sip:` or `sips:` URI with a host, as RFC 3261 writes one.
pub fn check_route_uri(field: &str, s: &str) -> Result<String, ProvError> {
    if s.len() > MAX_URI {
        return Err(ProvError::invalid(
            field,
            format!("longer than {MAX_URI} characters"),
        ));
    }
    let lower = s.to_ascii_lowercase();
    if !(lower.starts_with("sip:") || lower.starts_with("sips:")) {
        return Err(ProvError::invalid(
            field,
            format!("{s:?} is not a sip: or sips: URI"),
        ));
    }
    match onehop_sip::uri::Uri::parse(s) {
        Ok(_) => Ok(s.to_string()),
        Err(e) => Err(ProvError::invalid(
            field,
            format!("{s:?} is not a SIP URI: {e}"),
        )),
    }
}

/// The value of a canonical number's digits.
pub fn digits_value(number: &str) -> u64 {
    number
        .trim_start_matches('+')
        .bytes()
        .fold(0u64, |acc, b| acc * 10 + u64::from(b - b'0'))
}

/// The number of `len` characters (`+` included) whose digits have value `v`.
pub fn number_of(v: u64, len: usize) -> String {
    format!("+{v:0width$}", width = len - 1)
}

/// Checks a block's bounds: both numbers, the same length, `first <= last`, at most
/// [`MAX_BLOCK_SIZE`] numbers. The canonical bounds.
pub fn check_block(first: &str, last: &str) -> Result<(String, String), ProvError> {
    let first = check_number("first", first)?;
    let last = check_number("last", last)?;
    if first.len() != last.len() {
        return Err(ProvError::invalid(
            "last",
            format!("{first} and {last} have different lengths; a block's numbers all have one"),
        ));
    }
    if last < first {
        return Err(ProvError::invalid(
            "last",
            format!("{last} is below {first}"),
        ));
    }
    let size = digits_value(&last) - digits_value(&first) + 1;
    if size > MAX_BLOCK_SIZE {
        return Err(ProvError::invalid(
            "last",
            format!("the block has {size} numbers; at most {MAX_BLOCK_SIZE} are allowed"),
        ));
    }
    Ok((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_salted_and_checked() {
        let h = PinHash::new("1234");
        assert!(h.matches(&PinProof::derive(h.salt, "1234")));
        assert!(!h.matches(&PinProof::derive(h.salt, "1235")));
        assert!(!h.matches(&PinProof::derive([0; 16], "1234")));
        let other = PinHash::new("1234");
        assert_ne!(h.hash, other.hash, "a fresh salt each time");
        assert_eq!(format!("{h:?}"), "PinHash(<redacted>)");
        check_pin("pin", "1234").unwrap();
        for bad in ["123", "12a4", "1234567890123", ""] {
            assert!(check_pin("pin", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn blocks_are_checked() {
        assert_eq!(
            check_block("+1 555 0100", "+15550199").unwrap(),
            ("+15550100".to_string(), "+15550199".to_string())
        );
        assert_eq!(
            check_block("+15550100", "+155501")
                .unwrap_err()
                .field
                .as_deref(),
            Some("last")
        );
        assert!(check_block("+15550199", "+15550100").is_err());
        assert!(
            check_block("+1000000000", "+1999999999").is_err(),
            "too big"
        );
        assert_eq!(
            check_block("15550100", "+15550199")
                .unwrap_err()
                .field
                .as_deref(),
            Some("first")
        );
        let b = Block {
            first: "+15550100".into(),
            last: "+15550199".into(),
            carrier: "A".into(),
            next_free: "+15550100".into(),
            allocated: 0,
            version: 1,
            at_ms: 0,
        };
        assert_eq!(b.size(), 100);
        assert!(b.holds("+15550150"));
        assert!(!b.holds("+155501500"));
        assert!(!b.holds("+15550200"));
        assert_eq!(number_of(15550101, 9), "+15550101");
        assert_eq!(number_of(7, 4), "+007");
    }

    #[test]
    fn fields_are_checked() {
        assert_eq!(check_ocn("ocn", "acme-1").unwrap(), "ACME-1");
        for bad in ["", "a b", "x".repeat(17).as_str(), "é"] {
            assert!(check_ocn("ocn", bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_service_type("t", "Mobile").unwrap(), "mobile");
        assert!(check_service_type("t", "satellite").is_err());
        check_route_uri("uri", "sip:+15550100@carrier.example").unwrap();
        check_route_uri("uri", "sips:bob@example.test;transport=tcp").unwrap();
        for bad in ["http://x", "sip:", "tel:+1555", "sip:a b@c"] {
            assert!(check_route_uri("uri", bad).is_err(), "{bad:?}");
        }
        assert!(check_text("name", "a\u{7}").is_err());
    }

    #[test]
    fn actors_are_scoped() {
        let farm = Actor::farm("admin");
        let acme = Actor {
            name: "acme-admin".into(),
            carriers: Some(vec!["ACME".into()]),
        };
        assert!(farm.farm_wide("adding a carrier").is_ok());
        let e = acme.farm_wide("adding a carrier").unwrap_err();
        assert_eq!(e.status, 403);
        assert!(acme.may_change("ACME", "number", "+1").is_ok());
        let e = acme.may_change("BETA", "number", "+15550100").unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (403, "forbidden"));
        assert!(e.message.contains("BETA"), "{}", e.message);
    }
}
