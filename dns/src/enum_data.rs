//! ENUM (RFC 6116): the routed E.164 numbers and their SIP URIs, held for answering, and the
//! following of the managers' ENUM change feed.
//!
//! [`EnumTable`] is the data the answers read: a map from a number (its digits packed into a
//! `u64`, see below) to the regexp field of its NAPTR `E2U+sip` record, behind a read-write
//! lock. It is updated in place, a change at a time; it is never rebuilt for a change (a
//! provider holds millions of numbers), and it is apart from the zone snapshot, which is
//! rebuilt from each network status. Answering takes the read lock for one ordered-map
//! lookup and a copy of one regexp.
//!
//! [`EnumFollower`] is how the table follows [`FarmClient::enum_update`](
//! onehop_overlay::farm_client::FarmClient::enum_update), as [`EnumUpdate`]'s documentation
//! says: a full listing a page at a time, then the changes after its version, long-polled.
//! It is a state machine with no I/O ([`EnumFollower::ask`] says what to request next,
//! [`EnumFollower::apply`] takes the answer); the daemon's loop (in `lib.rs`) does the calls,
//! the pauses after failures and the logging.
//!
//! # Names and answers
//! The ENUM name of `+15550100` under `e164.arpa` is `0.0.1.0.5.5.5.1.e164.arpa`: one label
//! per digit, the last digit first. Under a suffix, a name that is
//! - a routed number's: NAPTR `100 10 "u" "E2U+sip" "!^.*$!<uri>!" .` for NAPTR (and ANY),
//!   NODATA for other types;
//! - a proper ancestor of a routed number's name (an empty non-terminal, such as a block's
//!   prefix): NODATA;
//! - anything else (other digit sequences, labels that are not one digit, more than 15
//!   digits): NXDOMAIN.
//!
//! # Key order
//! A number's digits d1..dn (n <= 15) are packed as `d_i + 1` in the i-th nibble from the top
//! of a `u64`, the remaining nibbles 0. Keys then sort like the digit strings, and every
//! number whose digits start with a prefix P lies in one contiguous key range that starts at
//! P's own key (`prefix_range`), so whether a name is a number, an empty non-terminal or
//! nothing is one range lookup, with no index of prefixes to keep.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::RwLock;

use onehop_overlay::provision::{EnumEntry, EnumUpdate, MAX_ENUM_WAIT_MS};

/// Most digits of an E.164 number.
pub const MAX_DIGITS: usize = 15;
/// Order of every ENUM NAPTR record.
pub const NAPTR_ORDER: u16 = 100;
/// Preference of every ENUM NAPTR record.
pub const NAPTR_PREFERENCE: u16 = 10;
/// The ENUM service of the records: SIP (RFC 3764).
pub const E2U_SIP: &[u8] = b"E2U+sip";
/// Most changes applied under one write lock: answers wait at most that long for a big page.
const APPLY_CHUNK: usize = 1024;

/// The packed key of a digit sequence (ASCII digits, in number order), or `None` when it is
/// empty, longer than [`MAX_DIGITS`] or holds anything but digits.
pub fn digits_key(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > MAX_DIGITS {
        return None;
    }
    let mut key = 0u64;
    for (i, d) in digits.iter().enumerate() {
        if !d.is_ascii_digit() {
            return None;
        }
        key |= u64::from(d - b'0' + 1) << (60 - 4 * i);
    }
    Some(key)
}

/// Every key whose digits start with the `len` digits of `key`.
fn prefix_range(key: u64, len: usize) -> RangeInclusive<u64> {
    key..=key | (u64::MAX >> (4 * len))
}

/// The digits of an E.164 number written `+` and 1 to 15 digits (the canonical form the
/// managers send), the first not 0.
fn number_digits(number: &str) -> Option<&[u8]> {
    let digits = number.strip_prefix('+')?.as_bytes();
    (!digits.is_empty()
        && digits.len() <= MAX_DIGITS
        && digits[0] != b'0'
        && digits.iter().all(u8::is_ascii_digit))
    .then_some(digits)
}

/// The regexp field of the `E2U+sip` record for `uri`: `!^.*$!<uri>!`, a backslash in the
/// URI written `\\` and an exclamation mark `\!` (RFC 3402 section 3.2: the delimiter and the
/// escape character are escaped in the substitution). `Err` when the field would not fit the
/// 255 bytes of a DNS character-string, or the URI is empty or holds a control character.
pub fn naptr_regexp(uri: &str) -> Result<Box<[u8]>, String> {
    if uri.is_empty() {
        return Err("the SIP URI is empty".into());
    }
    if uri.chars().any(char::is_control) {
        return Err("the SIP URI holds a control character".into());
    }
    let mut out = Vec::with_capacity(uri.len() + 8);
    out.extend_from_slice(b"!^.*$!");
    for b in uri.bytes() {
        if b == b'\\' || b == b'!' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'!');
    if out.len() > 255 {
        return Err(format!(
            "the NAPTR regexp for this SIP URI takes {} bytes, more than the 255 a DNS record holds",
            out.len()
        ));
    }
    Ok(out.into_boxed_slice())
}

/// The ENUM name of an E.164 number (`+15550100`) under `suffix` (RFC 6116 section 2.4):
/// `0.0.1.0.5.5.5.1.<suffix>`.
pub fn enum_name(
    number: &str,
    suffix: &hickory_proto::rr::Name,
) -> Result<hickory_proto::rr::Name, String> {
    let digits = number_digits(number).ok_or_else(|| {
        format!("{number:?} is not an E.164 number ('+' and 1 to 15 digits, the first not 0)")
    })?;
    let labels: Vec<[u8; 1]> = digits.iter().rev().map(|d| [*d]).collect();
    hickory_proto::rr::Name::from_labels(labels.iter().map(|l| &l[..]))
        .and_then(|n| n.append_domain(suffix))
        .map_err(|e| format!("the ENUM name of {number} under {suffix}: {e}"))
}

/// What the table holds for a name under an ENUM suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnumLookup {
    /// No complete listing has been received yet: no answer can be given (SERVFAIL).
    NotListed,
    /// A routed number: the regexp field of its record.
    Routed(Box<[u8]>),
    /// The digits start some routed numbers' but are none: an empty non-terminal.
    NonTerminal,
    /// No routed number is there or below.
    Absent,
}

/// Numbers held, by packed key.
type NumberMap = BTreeMap<u64, Box<[u8]>>;

#[derive(Debug, Default)]
struct Held {
    numbers: NumberMap,
    version: u64,
    listed: bool,
}

/// The routed numbers and their records' regexps, shared by the follower (writes) and the
/// answers (reads). See the module documentation.
#[derive(Default)]
pub struct EnumTable {
    held: RwLock<Held>,
}

impl std::fmt::Debug for EnumTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = self.read();
        f.debug_struct("EnumTable")
            .field("numbers", &h.numbers.len())
            .field("version", &h.version)
            .field("listed", &h.listed)
            .finish()
    }
}

/// Why an entry received from a manager was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The number as received.
    pub number: String,
    /// Why (never a secret: numbers and URIs are public data).
    pub problem: String,
}

impl EnumTable {
    /// An empty table that has no listing yet (answers SERVFAIL under the suffixes).
    pub fn new() -> EnumTable {
        EnumTable::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Held> {
        self.held.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Held> {
        self.held.write().unwrap_or_else(|p| p.into_inner())
    }

    /// What is held for the digits `digits` (ASCII, in number order: `15550100`).
    pub fn lookup(&self, digits: &[u8]) -> EnumLookup {
        let key = digits_key(digits);
        let h = self.read();
        if !h.listed {
            return EnumLookup::NotListed;
        }
        let Some(key) = key else {
            return EnumLookup::Absent;
        };
        match h.numbers.range(prefix_range(key, digits.len())).next() {
            None => EnumLookup::Absent,
            Some((k, regexp)) if *k == key => EnumLookup::Routed(regexp.clone()),
            Some(_) => EnumLookup::NonTerminal,
        }
    }

    /// The regexp held for the number `+15550100`, if it is routed.
    pub fn regexp_of(&self, number: &str) -> Option<Box<[u8]>> {
        let key = digits_key(number_digits(number)?)?;
        self.read().numbers.get(&key).cloned()
    }

    /// How many routed numbers are held.
    pub fn len(&self) -> usize {
        self.read().numbers.len()
    }

    /// Whether no routed number is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The change version the table is complete up to (0 before the first listing).
    pub fn version(&self) -> u64 {
        self.read().version
    }

    /// Whether a complete listing has been received (answers are given from then on).
    pub fn is_listed(&self) -> bool {
        self.read().listed
    }

    /// Applies changes (each entry is the number's whole state: routed to a URI, or not),
    /// in place, a chunk under the write lock at a time; the table is then complete up to
    /// `version` (kept if it is older than the one held). Entries that cannot be held are
    /// returned; an entry whose URI cannot be made a record removes the number (its old
    /// record would be wrong).
    pub fn apply(&self, entries: &[EnumEntry], version: u64) -> Vec<Skipped> {
        let mut skipped = Vec::new();
        for chunk in entries.chunks(APPLY_CHUNK) {
            let prepared: Vec<(u64, Option<Box<[u8]>>)> = chunk
                .iter()
                .filter_map(|e| prepare(e, &mut skipped))
                .collect();
            let mut h = self.write();
            for (key, value) in prepared {
                match value {
                    Some(v) => {
                        h.numbers.insert(key, v);
                    }
                    None => {
                        h.numbers.remove(&key);
                    }
                }
            }
        }
        let mut h = self.write();
        h.version = h.version.max(version);
        skipped
    }

    /// Replaces everything held by a complete listing, complete up to `version`; answers
    /// are given from then on. The old map is freed after the lock is released.
    fn replace(&self, numbers: NumberMap, version: u64) {
        let old = {
            let mut h = self.write();
            h.version = version;
            h.listed = true;
            std::mem::replace(&mut h.numbers, numbers)
        };
        drop(old);
    }
}

/// The key and the new value (`None`: not routed) of one entry, or why it is skipped. An
/// entry with a URI that cannot be a record is removed, and reported.
fn prepare(e: &EnumEntry, skipped: &mut Vec<Skipped>) -> Option<(u64, Option<Box<[u8]>>)> {
    let Some(key) = number_digits(&e.number).and_then(digits_key) else {
        skipped.push(Skipped {
            number: e.number.clone(),
            problem: "not an E.164 number ('+' and 1 to 15 digits, the first not 0)".into(),
        });
        return None;
    };
    match e.uri.as_deref().map(naptr_regexp) {
        None => Some((key, None)),
        Some(Ok(regexp)) => Some((key, Some(regexp))),
        Some(Err(problem)) => {
            skipped.push(Skipped {
                number: e.number.clone(),
                problem: format!("{problem}; not answered"),
            });
            Some((key, None))
        }
    }
}

/// One request of the ENUM feed: the arguments of `FarmClient::enum_update`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnumAsk {
    /// The version held complete (0: ask for a full listing).
    pub since: u64,
    /// The next page of a listing: after this number.
    pub after: Option<String>,
    /// How long the manager may wait for a change (0 while listing).
    pub wait_ms: u32,
}

/// What [`EnumFollower::apply`] did with an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// A listing was completed and replaced what the table held.
    pub listed: bool,
    /// Changes applied in place (0 for a listing page).
    pub changes: usize,
    /// Entries that were not taken, and why.
    pub skipped: Vec<Skipped>,
    /// The answer held no change, nothing more to read at once, and no newer version: the
    /// manager's wait ran out (the caller may pace itself if such answers come back faster
    /// than a wait). An answer woken by a change of something else (an account) is not idle:
    /// its version is newer.
    pub idle: bool,
}

/// A listing being received, built apart from the table (which keeps answering from what it
/// held) and swapped in whole when its last page arrives.
#[derive(Debug)]
struct Listing {
    /// The `after` of the next page.
    after: Option<String>,
    /// The lowest version of the pages received: the changes after it are asked next (a
    /// page read at a later version, or by a manager a little behind, is covered too;
    /// replaying a change is harmless).
    version: u64,
    numbers: NumberMap,
}

/// Follows the managers' ENUM feed into an [`EnumTable`] (see the module documentation).
///
/// Call order: [`EnumFollower::ask`], make the request, then [`EnumFollower::apply`] with the
/// answer (or nothing, after a failure: the same request is asked again); repeat.
#[derive(Debug, Default)]
pub struct EnumFollower {
    /// The version the table is complete up to; 0: nothing yet.
    since: u64,
    listing: Option<Listing>,
}

impl EnumFollower {
    /// A follower holding nothing: its first request asks for a full listing.
    pub fn new() -> EnumFollower {
        EnumFollower::default()
    }

    /// The next request to make.
    pub fn ask(&self) -> EnumAsk {
        match &self.listing {
            Some(l) => EnumAsk {
                since: 0,
                after: l.after.clone(),
                wait_ms: 0,
            },
            None => EnumAsk {
                since: self.since,
                after: None,
                wait_ms: if self.since == 0 { 0 } else { MAX_ENUM_WAIT_MS },
            },
        }
    }

    /// Whether a listing is under way (pages received, more to come).
    pub fn listing(&self) -> bool {
        self.listing.is_some()
    }

    /// The version the table is complete up to.
    pub fn since(&self) -> u64 {
        self.since
    }

    /// Takes the answer to the last [`EnumFollower::ask`]. `Err` when the answer does not
    /// follow the protocol (changes where a listing page was asked for, a listing page that
    /// names the same next page again): a listing under way is dropped and the next request
    /// starts over from what the table holds.
    pub fn apply(&mut self, update: EnumUpdate, table: &EnumTable) -> Result<Applied, String> {
        let mut skipped = Vec::new();
        if update.reset {
            let asked_after = self.listing.as_ref().and_then(|l| l.after.clone());
            if update.next.is_some() && update.next == asked_after {
                self.listing = None;
                return Err(format!(
                    "the listing page after {asked_after:?} names itself as the next one"
                ));
            }
            let listing = self.listing.get_or_insert_with(|| Listing {
                after: None,
                version: update.version,
                numbers: NumberMap::new(),
            });
            listing.version = listing.version.min(update.version);
            for e in &update.entries {
                if let Some((key, Some(value))) = prepare(e, &mut skipped) {
                    listing.numbers.insert(key, value);
                }
            }
            listing.after = update.next;
            if listing.after.is_some() {
                return Ok(Applied {
                    listed: false,
                    changes: 0,
                    skipped,
                    idle: false,
                });
            }
            let done = self.listing.take().expect("a listing under way");
            self.since = done.version;
            table.replace(done.numbers, done.version);
            return Ok(Applied {
                listed: true,
                changes: 0,
                skipped,
                idle: false,
            });
        }
        if self.listing.take().is_some() || self.since == 0 {
            return Err("the manager answered changes where a listing page was asked for".into());
        }
        let changes = update.entries.len();
        let newer = update.version > self.since;
        skipped.extend(table.apply(&update.entries, update.version));
        self.since = self.since.max(update.version);
        Ok(Applied {
            listed: false,
            changes,
            skipped,
            idle: changes == 0 && update.next.is_none() && !newer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: &str, uri: Option<&str>) -> EnumEntry {
        EnumEntry {
            number: n.into(),
            uri: uri.map(String::from),
        }
    }

    fn update(
        version: u64,
        reset: bool,
        entries: Vec<EnumEntry>,
        next: Option<&str>,
    ) -> EnumUpdate {
        EnumUpdate {
            version,
            reset,
            entries,
            next: next.map(String::from),
        }
    }

    fn uri_of(t: &EnumTable, n: &str) -> Option<String> {
        t.regexp_of(n)
            .map(|r| String::from_utf8(r.to_vec()).unwrap())
    }

    #[test]
    fn keys_sort_like_digit_strings_and_prefixes_are_ranges() {
        let mut v: Vec<&[u8]> = vec![b"15550100", b"1555", b"2", b"155501009", b"15550101", b"9"];
        let mut by_key = v.clone();
        by_key.sort_by_key(|d| digits_key(d).unwrap());
        v.sort();
        assert_eq!(by_key, v);
        let p = digits_key(b"1555").unwrap();
        let r = prefix_range(p, 4);
        for inside in [&b"1555"[..], b"15550", b"155599999999999"] {
            assert!(r.contains(&digits_key(inside).unwrap()), "{inside:?}");
        }
        for outside in [&b"1554"[..], b"1556", b"155", b"2"] {
            assert!(!r.contains(&digits_key(outside).unwrap()), "{outside:?}");
        }
        assert_eq!(digits_key(b""), None);
        assert_eq!(digits_key(b"1234567890123456"), None);
        assert_eq!(digits_key(b"12a"), None);
        assert!(digits_key(b"999999999999999").is_some());
    }

    #[test]
    fn regexps_escape_the_delimiter_and_the_backslash() {
        assert_eq!(
            &*naptr_regexp("sip:+15550100@carrier.example").unwrap(),
            b"!^.*$!sip:+15550100@carrier.example!"
        );
        assert_eq!(
            &*naptr_regexp(r"sip:a!b\c@x.example").unwrap(),
            br"!^.*$!sip:a\!b\\c@x.example!"
        );
        assert!(naptr_regexp("").is_err());
        assert!(naptr_regexp("sip:a\nb@x").is_err());
        // 255 bytes at most: 7 bytes of delimiters and anchors plus the URI.
        let fits = format!("sip:{}", "a".repeat(255 - 7 - 4));
        assert_eq!(naptr_regexp(&fits).unwrap().len(), 255);
        let over = format!("sip:{}", "a".repeat(255 - 7 - 3));
        assert!(naptr_regexp(&over).unwrap_err().contains("256 bytes"));
    }

    #[test]
    fn enum_names_reverse_the_digits() {
        let suffix = hickory_proto::rr::Name::from_ascii("e164.arpa.").unwrap();
        assert_eq!(
            enum_name("+15550100", &suffix).unwrap().to_string(),
            "0.0.1.0.5.5.5.1.e164.arpa."
        );
        for bad in ["15550100", "+", "+0123", "+1234567890123456", "+1-555"] {
            assert!(enum_name(bad, &suffix).is_err(), "{bad}");
        }
    }

    #[test]
    fn lookups_tell_numbers_non_terminals_and_nothing_apart() {
        let t = EnumTable::new();
        assert_eq!(t.lookup(b"15550100"), EnumLookup::NotListed);
        let mut f = EnumFollower::new();
        f.apply(
            update(
                4,
                true,
                vec![
                    entry("+15550100", Some("sip:alice@example.test")),
                    entry("+1555", Some("sip:short@example.test")),
                ],
                None,
            ),
            &t,
        )
        .unwrap();
        assert_eq!(
            t.lookup(b"15550100"),
            EnumLookup::Routed(naptr_regexp("sip:alice@example.test").unwrap())
        );
        // A number that is also an ancestor of another is a number.
        assert!(matches!(t.lookup(b"1555"), EnumLookup::Routed(_)));
        for ent in [&b"1"[..], b"155", b"15550", b"155501", b"1555010"] {
            assert_eq!(t.lookup(ent), EnumLookup::NonTerminal, "{ent:?}");
        }
        for absent in [
            &b"2"[..],
            b"15551",
            b"155501000",
            b"15550101",
            b"0",
            b"1234567890123456",
        ] {
            assert_eq!(t.lookup(absent), EnumLookup::Absent, "{absent:?}");
        }
    }

    #[test]
    fn a_listing_in_pages_then_changes_in_place() {
        let t = EnumTable::new();
        let mut f = EnumFollower::new();
        assert_eq!(
            f.ask(),
            EnumAsk {
                since: 0,
                after: None,
                wait_ms: 0
            }
        );
        let a = f
            .apply(
                update(
                    10,
                    true,
                    vec![entry("+15550100", Some("sip:a@x"))],
                    Some("+15550100"),
                ),
                &t,
            )
            .unwrap();
        assert!(!a.listed);
        assert!(
            !t.is_listed(),
            "nothing is answered before the listing is whole"
        );
        assert_eq!(
            f.ask(),
            EnumAsk {
                since: 0,
                after: Some("+15550100".into()),
                wait_ms: 0
            }
        );
        // The second page was read a little earlier (another manager): the changes are asked
        // after the lowest version.
        let a = f
            .apply(
                update(9, true, vec![entry("+15550101", Some("sip:b@x"))], None),
                &t,
            )
            .unwrap();
        assert!(a.listed);
        assert!(t.is_listed());
        assert_eq!((t.len(), t.version(), f.since()), (2, 9, 9));
        assert_eq!(
            f.ask(),
            EnumAsk {
                since: 9,
                after: None,
                wait_ms: MAX_ENUM_WAIT_MS
            }
        );
        // Changes: a new route, an unrouted number, a replay of a known state.
        let a = f
            .apply(
                update(
                    12,
                    false,
                    vec![
                        entry("+15550100", Some("sip:new@x")),
                        entry("+15550101", None),
                        entry("+15550102", Some("sip:c@x")),
                    ],
                    Some("more"),
                ),
                &t,
            )
            .unwrap();
        assert_eq!((a.changes, a.idle), (3, false));
        assert_eq!(uri_of(&t, "+15550100").as_deref(), Some("!^.*$!sip:new@x!"));
        assert_eq!(uri_of(&t, "+15550101"), None);
        assert_eq!(uri_of(&t, "+15550102").as_deref(), Some("!^.*$!sip:c@x!"));
        assert_eq!((t.version(), f.ask().since), (12, 12));
        // An answer whose wait ran out.
        let a = f.apply(update(12, false, vec![], None), &t).unwrap();
        assert!(a.idle);
        // One woken by a change of something else: newer, so not idle (asked again at once).
        let a = f.apply(update(13, false, vec![], None), &t).unwrap();
        assert!(!a.idle);
        assert_eq!((t.version(), f.since()), (13, 13));
        // A manager behind never takes the version back.
        f.apply(update(11, false, vec![], None), &t).unwrap();
        assert_eq!((t.version(), f.since()), (13, 13));
    }

    #[test]
    fn a_new_listing_is_built_apart_and_swapped_in_whole() {
        let t = EnumTable::new();
        let mut f = EnumFollower::new();
        f.apply(
            update(5, true, vec![entry("+15550100", Some("sip:a@x"))], None),
            &t,
        )
        .unwrap();
        // The change log no longer reaches 5: the manager answers with a listing.
        let a = f
            .apply(
                update(
                    50,
                    true,
                    vec![entry("+4930123", Some("sip:b@x"))],
                    Some("+4930123"),
                ),
                &t,
            )
            .unwrap();
        assert!(!a.listed);
        assert!(f.listing());
        assert!(
            uri_of(&t, "+15550100").is_some(),
            "the old data answers meanwhile"
        );
        assert_eq!(f.ask().after.as_deref(), Some("+4930123"));
        f.apply(update(50, true, vec![], None), &t).unwrap();
        assert_eq!(uri_of(&t, "+15550100"), None, "gone from the new listing");
        assert!(uri_of(&t, "+4930123").is_some());
        assert_eq!((t.len(), t.version()), (1, 50));
    }

    #[test]
    fn answers_out_of_protocol_are_errors_and_restart_cleanly() {
        let t = EnumTable::new();
        let mut f = EnumFollower::new();
        // Changes to a first request (which asks for a listing).
        assert!(f.apply(update(3, false, vec![], None), &t).is_err());
        assert_eq!(f.ask().since, 0);
        // A page that names itself as the next one.
        f.apply(update(3, true, vec![], Some("+1")), &t).unwrap();
        assert!(f.apply(update(3, true, vec![], Some("+1")), &t).is_err());
        assert!(!f.listing());
        assert_eq!(
            f.ask(),
            EnumAsk {
                since: 0,
                after: None,
                wait_ms: 0
            }
        );
        // Changes where a listing page was asked for.
        f.apply(update(3, true, vec![], Some("+1")), &t).unwrap();
        assert!(f.apply(update(3, false, vec![], None), &t).is_err());
        assert!(!f.listing());
        assert!(!t.is_listed());
    }

    #[test]
    fn bad_entries_are_reported_and_never_answered() {
        let t = EnumTable::new();
        let mut f = EnumFollower::new();
        let a = f
            .apply(
                update(
                    2,
                    true,
                    vec![
                        entry("15550100", Some("sip:a@x")),
                        entry("+15550100", Some("sip:a@x")),
                    ],
                    None,
                ),
                &t,
            )
            .unwrap();
        assert_eq!(a.skipped.len(), 1);
        assert_eq!(a.skipped[0].number, "15550100");
        let long = format!("sip:{}@x", "a".repeat(300));
        let a = f
            .apply(
                update(3, false, vec![entry("+15550100", Some(&long))], None),
                &t,
            )
            .unwrap();
        assert_eq!(a.skipped.len(), 1);
        assert!(a.skipped[0].problem.contains("255"), "{:?}", a.skipped);
        assert_eq!(uri_of(&t, "+15550100"), None, "the old record is not kept");
    }
}
