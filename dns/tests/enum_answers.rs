//! ENUM answers (RFC 6116, RFC 3403, RFC 2308) without sockets: a routed number's NAPTR,
//! NODATA for other types and for empty non-terminals, NXDOMAIN for the rest, each negative
//! answer with the suffix's SOA; several suffixes; the table followed in place.

mod common;

use std::sync::Arc;

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use onehop_dns::{
    answer_bytes, enum_name, AnswerOptions, DnsHandler, EnumFollower, EnumResult, EnumTable,
    Outcome, Transport, Zone, ZoneConfig,
};
use onehop_overlay::metrics::Metrics;
use onehop_overlay::provision::{EnumEntry, EnumUpdate};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn entry(number: &str, uri: Option<&str>) -> EnumEntry {
    EnumEntry {
        number: number.into(),
        uri: uri.map(String::from),
    }
}

/// A table holding `routed` (number, URI), listed at version 7.
fn table(routed: &[(&str, &str)]) -> Arc<EnumTable> {
    let t = Arc::new(EnumTable::new());
    let mut f = EnumFollower::new();
    let entries = routed.iter().map(|(n, u)| entry(n, Some(u))).collect();
    f.apply(
        EnumUpdate {
            version: 7,
            reset: true,
            entries,
            next: None,
        },
        &t,
    )
    .expect("a listing");
    t
}

fn cfg_with(suffixes: &[&str]) -> ZoneConfig {
    let mut cfg = ZoneConfig::new(DOMAIN).unwrap();
    cfg.enum_suffixes = suffixes.iter().map(|s| name(s)).collect();
    cfg
}

fn zone_with(suffixes: &[&str], numbers: Arc<EnumTable>) -> Zone {
    Zone::build(&status(3, 7, 2, false), &cfg_with(suffixes), &[]).with_numbers(numbers)
}

fn ask_full(z: &Zone, qname: &str, qtype: RecordType) -> (Outcome, Message) {
    let mut rng = StdRng::seed_from_u64(1);
    let out = answer_bytes(
        Some(z),
        &query(qname, qtype, Some(1232)),
        Transport::Udp,
        &AnswerOptions::default(),
        &mut rng,
    )
    .expect("a response");
    let m = decode(&out.bytes);
    (out, m)
}

fn ask(z: &Zone, qname: &str, qtype: RecordType) -> Message {
    ask_full(z, qname, qtype).1
}

/// The NAPTR fields of the answers: order, preference, flags, services, regexp, replacement.
fn naptrs(m: &Message) -> Vec<(u16, u16, String, String, String, String)> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::NAPTR(n) => Some((
                n.order,
                n.preference,
                String::from_utf8_lossy(&n.flags).into_owned(),
                String::from_utf8_lossy(&n.services).into_owned(),
                String::from_utf8_lossy(&n.regexp).into_owned(),
                n.replacement.to_string(),
            )),
            _ => None,
        })
        .collect()
}

fn e2u(uri: &str) -> (u16, u16, String, String, String, String) {
    (
        100,
        10,
        "u".into(),
        "E2U+sip".into(),
        format!("!^.*$!{uri}!"),
        ".".into(),
    )
}

/// A negative answer: the rcode, authoritative, no answer, the suffix's SOA alone in the
/// authority section with the zone's TTL.
fn assert_negative(m: &Message, rcode: ResponseCode, suffix: &str, what: &str) {
    assert_eq!(m.metadata.response_code, rcode, "{what}");
    assert!(m.metadata.authoritative, "{what}: AA");
    assert!(m.answers.is_empty(), "{what}: {:?}", m.answers);
    assert_eq!(m.authorities.len(), 1, "{what}: {:?}", m.authorities);
    let soa = &m.authorities[0];
    assert_eq!(soa.record_type(), RecordType::SOA, "{what}");
    assert_eq!(soa.name.to_string(), suffix, "{what}");
    assert_eq!(soa.ttl, 5, "{what}");
}

const ALICE: &str = "sip:alice@example.test";

fn farm_numbers() -> Arc<EnumTable> {
    table(&[
        ("+15550100", ALICE),
        ("+15550101", "sip:+15550101@carrier.example"),
        ("+15550199", "sips:bob@example.test;transport=tcp"),
        ("+4930123456", "sip:+4930123456@berlin.example"),
    ])
}

#[test]
fn a_routed_number_answers_its_e2u_sip_record() {
    let z = zone_with(&["e164.arpa"], farm_numbers());
    let qname = "0.0.1.0.5.5.5.1.e164.arpa";
    let (out, m) = ask_full(&z, qname, RecordType::NAPTR);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(naptrs(&m), [e2u(ALICE)]);
    let r = &m.answers[0];
    assert_eq!(r.name.to_string(), format!("{qname}."));
    assert_eq!(r.ttl, 5, "the configured TTL");
    assert!(m.authorities.is_empty() && m.additionals.is_empty());
    assert_eq!(out.enum_result, Some(EnumResult::Record));
    // The name enum_name gives is the one answered, under any case, for ANY too.
    let name = enum_name("+4930123456", &name("e164.arpa.")).unwrap();
    assert_eq!(name.to_string(), "6.5.4.3.2.1.0.3.9.4.e164.arpa.");
    let m = ask(&z, "6.5.4.3.2.1.0.3.9.4.E164.ARPA", RecordType::ANY);
    assert_eq!(naptrs(&m), [e2u("sip:+4930123456@berlin.example")]);
    let m = ask(&z, "9.9.1.0.5.5.5.1.e164.arpa", RecordType::NAPTR);
    assert_eq!(naptrs(&m), [e2u("sips:bob@example.test;transport=tcp")]);
}

#[test]
fn other_types_at_a_number_and_empty_non_terminals_are_nodata() {
    let z = zone_with(&["e164.arpa"], farm_numbers());
    for t in [
        RecordType::A,
        RecordType::AAAA,
        RecordType::TXT,
        RecordType::SOA,
        RecordType::NS,
    ] {
        let (out, m) = ask_full(&z, "0.0.1.0.5.5.5.1.e164.arpa", t);
        assert_negative(
            &m,
            ResponseCode::NoError,
            "e164.arpa.",
            &format!("{t} at a number"),
        );
        assert_eq!(out.enum_result, Some(EnumResult::NoData));
    }
    // Every ancestor of a routed number below the suffix: the block's prefixes, the
    // country code.
    for qname in [
        "1.e164.arpa",
        "5.1.e164.arpa",
        "5.5.5.1.e164.arpa",
        "1.0.5.5.5.1.e164.arpa",
        "0.1.0.5.5.5.1.e164.arpa",
        "9.1.0.5.5.5.1.e164.arpa",
        "9.4.e164.arpa",
    ] {
        for t in [RecordType::NAPTR, RecordType::A] {
            let (out, m) = ask_full(&z, qname, t);
            assert_negative(
                &m,
                ResponseCode::NoError,
                "e164.arpa.",
                &format!("{qname} {t}"),
            );
            assert_eq!(out.enum_result, Some(EnumResult::NoData), "{qname}");
        }
    }
}

#[test]
fn other_names_under_the_suffix_are_nxdomain() {
    let z = zone_with(&["e164.arpa"], farm_numbers());
    for qname in [
        // Unrouted numbers, in and out of the block.
        "2.0.1.0.5.5.5.1.e164.arpa",
        "0.0.2.0.5.5.5.1.e164.arpa",
        "2.e164.arpa",
        // Longer than a routed number: below it.
        "5.0.0.1.0.5.5.5.1.e164.arpa",
        // Not one digit per label.
        "00.1.0.5.5.5.1.e164.arpa",
        "a.e164.arpa",
        "x.0.0.1.0.5.5.5.1.e164.arpa",
        "_sip._udp.e164.arpa",
        // More than 15 digits.
        "1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.e164.arpa",
    ] {
        let (out, m) = ask_full(&z, qname, RecordType::NAPTR);
        assert_negative(&m, ResponseCode::NXDomain, "e164.arpa.", qname);
        assert_eq!(out.enum_result, Some(EnumResult::NxDomain), "{qname}");
    }
}

#[test]
fn the_suffix_is_an_apex_with_soa_and_ns() {
    let z = zone_with(&["e164.arpa"], farm_numbers());
    let m = ask(&z, "e164.arpa", RecordType::SOA);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    let RData::SOA(soa) = &m.answers[0].data else {
        panic!("no SOA: {m:?}")
    };
    assert_eq!(soa.mname.to_string(), "dns1.example.test.");
    assert_eq!(soa.rname.to_string(), "hostmaster.example.test.");
    assert_eq!(soa.serial, onehop_dns::serial_of(3, 7));
    assert_eq!(soa.minimum, 5);
    let m = ask(&z, "e164.arpa", RecordType::NS);
    let ns: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
    assert_eq!(ns, ["dns1.example.test."]);
    assert_eq!(
        of_type(&m.additionals, RecordType::A).len(),
        1,
        "its address"
    );
    // NAPTR at the apex itself: NODATA.
    let (out, m) = ask_full(&z, "e164.arpa", RecordType::NAPTR);
    assert_negative(&m, ResponseCode::NoError, "e164.arpa.", "NAPTR at the apex");
    assert_eq!(out.enum_result, None, "the apex is no number's name");
    assert_eq!(
        z.enum_suffixes().map(|n| n.to_string()).collect::<Vec<_>>(),
        ["e164.arpa."]
    );
    assert_eq!(
        z.apexes().map(|n| n.to_string()).collect::<Vec<_>>(),
        ["example.test."],
        "apexes() lists the SIP domains"
    );
}

#[test]
fn names_outside_every_zone_are_refused() {
    let z = zone_with(&["e164.arpa"], farm_numbers());
    for qname in [
        "arpa",
        "0.0.1.0.5.5.5.1.e165.arpa",
        "e164.arpa.example",
        "1.e164",
    ] {
        let m = ask(&z, qname, RecordType::NAPTR);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{qname}");
        assert!(!m.metadata.authoritative, "{qname}");
    }
}

#[test]
fn uris_with_the_delimiter_or_the_escape_character_are_escaped() {
    let z = zone_with(
        &["e164.arpa"],
        table(&[
            ("+15550100", r"sip:wow!@example.test"),
            ("+15550101", r"sip:back\slash@example.test"),
        ]),
    );
    let m = ask(&z, "0.0.1.0.5.5.5.1.e164.arpa", RecordType::NAPTR);
    assert_eq!(naptrs(&m)[0].4, r"!^.*$!sip:wow\!@example.test!");
    let m = ask(&z, "1.0.1.0.5.5.5.1.e164.arpa", RecordType::NAPTR);
    assert_eq!(naptrs(&m)[0].4, r"!^.*$!sip:back\\slash@example.test!");
}

#[test]
fn every_suffix_answers_the_same_numbers() {
    let z = zone_with(
        &["e164.arpa", "e164.example.test", "nrenum.net"],
        farm_numbers(),
    );
    for suffix in ["e164.arpa", "e164.example.test", "nrenum.net"] {
        let m = ask(&z, &format!("0.0.1.0.5.5.5.1.{suffix}"), RecordType::NAPTR);
        assert_eq!(naptrs(&m), [e2u(ALICE)], "{suffix}");
        let m = ask(&z, &format!("5.5.5.1.{suffix}"), RecordType::NAPTR);
        assert_negative(&m, ResponseCode::NoError, &format!("{suffix}."), suffix);
        let m = ask(&z, &format!("7.7.7.{suffix}"), RecordType::NAPTR);
        assert_negative(&m, ResponseCode::NXDomain, &format!("{suffix}."), suffix);
    }
    // A suffix under the farm's domain leaves the domain's own names alone.
    let m = ask(&z, "dns1.example.test", RecordType::A);
    assert_eq!(of_type(&m.answers, RecordType::A).len(), 1);
    let m = ask(&z, "missing.example.test", RecordType::A);
    assert_negative(
        &m,
        ResponseCode::NXDomain,
        "example.test.",
        "a SIP-domain name",
    );
}

#[test]
fn enum_off_and_suffixes_that_cannot_be_served() {
    // No suffix: ENUM names are outside every zone.
    let z = zone_with(&[], farm_numbers());
    let m = ask(&z, "0.0.1.0.5.5.5.1.e164.arpa", RecordType::NAPTR);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert_eq!(z.enum_suffixes().count(), 0);
    // Zone::build drops what the configuration check refuses: a suffix holding the domain,
    // a repeat, a suffix under another.
    let z = zone_with(
        &["test", "e164.arpa", "E164.arpa", "1.e164.arpa"],
        farm_numbers(),
    );
    assert_eq!(
        z.enum_suffixes().map(|n| n.to_string()).collect::<Vec<_>>(),
        ["e164.arpa."]
    );
    // A provisioned domain at or under a suffix is not served: the tree is the numbers'.
    let z = Zone::build(
        &status(3, 7, 2, false),
        &cfg_with(&["e164.arpa"]),
        &[
            name("e164.arpa"),
            name("sip.e164.arpa"),
            name("second.test"),
        ],
    )
    .with_numbers(farm_numbers());
    assert_eq!(
        z.apexes().map(|n| n.to_string()).collect::<Vec<_>>(),
        ["example.test.", "second.test."]
    );
    let m = ask(&z, "0.0.1.0.5.5.5.1.e164.arpa", RecordType::NAPTR);
    assert_eq!(naptrs(&m), [e2u(ALICE)]);
}

#[test]
fn servfail_until_the_numbers_are_listed() {
    let z = zone_with(&["e164.arpa"], Arc::new(EnumTable::new()));
    for qname in ["0.0.1.0.5.5.5.1.e164.arpa", "x.e164.arpa"] {
        let (out, m) = ask_full(&z, qname, RecordType::NAPTR);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{qname}");
        assert!(m.answers.is_empty());
        assert_eq!(out.enum_result, Some(EnumResult::NotListed));
    }
    // The apex answers: it comes from the status.
    let m = ask(&z, "e164.arpa", RecordType::SOA);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    // An empty listing is a listing: NXDOMAIN from then on.
    let z = zone_with(&["e164.arpa"], table(&[]));
    let m = ask(&z, "0.0.1.0.5.5.5.1.e164.arpa", RecordType::NAPTR);
    assert_negative(&m, ResponseCode::NXDomain, "e164.arpa.", "an empty listing");
}

/// The handler's zones share its table: a change is answered at once, with no new zone, and
/// survives new statuses; the figures follow.
#[test]
fn the_handler_answers_changes_in_place_and_counts_them() {
    let metrics = Metrics::default();
    let h = DnsHandler::new(cfg_with(&["e164.arpa"]), AnswerOptions::default(), &metrics);
    assert!(h.apply_status(&status(1, 1, 2, false)));
    let q = query("0.0.1.0.5.5.5.1.e164.arpa", RecordType::NAPTR, Some(1232));
    let rcode = |h: &DnsHandler| {
        decode(&h.respond(&q, Transport::Udp).unwrap())
            .metadata
            .response_code
    };
    assert_eq!(rcode(&h), ResponseCode::ServFail);

    let mut f = EnumFollower::new();
    let listing = EnumUpdate {
        version: 20,
        reset: true,
        entries: vec![entry("+15550101", Some("sip:b@x"))],
        next: None,
    };
    f.apply(listing, h.numbers()).unwrap();
    h.enum_changed();
    let zone_before = h.zone().unwrap();
    assert_eq!(rcode(&h), ResponseCode::NXDomain);
    let change = EnumUpdate {
        version: 21,
        reset: false,
        entries: vec![entry("+15550100", Some(ALICE))],
        next: None,
    };
    f.apply(change, h.numbers()).unwrap();
    h.enum_changed();
    assert!(Arc::ptr_eq(&zone_before, &h.zone().unwrap()), "no new zone");
    let m = decode(&h.respond(&q, Transport::Udp).unwrap());
    assert_eq!(naptrs(&m), [e2u(ALICE)]);
    // A new status keeps the numbers.
    assert!(h.apply_status(&status(1, 2, 3, false)));
    let m = decode(&h.respond(&q, Transport::Udp).unwrap());
    assert_eq!(naptrs(&m), [e2u(ALICE)]);
    // Unrouted: NXDOMAIN again (its block prefix stays NODATA while +15550101 is routed).
    f.apply(
        EnumUpdate {
            version: 22,
            reset: false,
            entries: vec![entry("+15550100", None)],
            next: None,
        },
        h.numbers(),
    )
    .unwrap();
    h.enum_changed();
    assert_eq!(rcode(&h), ResponseCode::NXDomain);
    let q2 = query("0.1.0.5.5.5.1.e164.arpa", RecordType::NAPTR, Some(1232));
    let m = decode(&h.respond(&q2, Transport::Udp).unwrap());
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);

    let v = |n: &str| metrics.value(n);
    assert_eq!(v("dns_enum_numbers"), Some(1));
    assert_eq!(v("dns_enum_version"), Some(22));
    assert_eq!(v("dns_enum_listed"), Some(1));
    assert_eq!(v("dns_enum_queries_total{result=\"not_listed\"}"), Some(1));
    assert_eq!(v("dns_enum_queries_total{result=\"nxdomain\"}"), Some(2));
    assert_eq!(v("dns_enum_queries_total{result=\"record\"}"), Some(2));
    assert_eq!(v("dns_enum_queries_total{result=\"nodata\"}"), Some(1));
    assert_eq!(
        v("dns_zone_domains"),
        Some(1),
        "ENUM suffixes are not SIP domains"
    );
}

/// A NAPTR answer is small: it fits a 512-byte UDP answer without EDNS, with the longest URI
/// a record can hold.
#[test]
fn the_longest_record_fits_without_edns() {
    let uri = format!("sip:{}@x.example", "a".repeat(255 - 7 - 14));
    let z = zone_with(&["e164.arpa"], table(&[("+123456789012345", &uri)]));
    let mut rng = StdRng::seed_from_u64(1);
    let out = answer_bytes(
        Some(&z),
        &query(
            "5.4.3.2.1.0.9.8.7.6.5.4.3.2.1.e164.arpa",
            RecordType::NAPTR,
            None,
        ),
        Transport::Udp,
        &AnswerOptions::default(),
        &mut rng,
    )
    .unwrap();
    let m = decode(&out.bytes);
    assert!(out.bytes.len() <= 512);
    assert!(!m.metadata.truncation);
    assert_eq!(naptrs(&m), [e2u(&uri)]);
}
