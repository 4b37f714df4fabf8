//! The pre-encoded answers against the slow path: for every query shape, the fast path
//! either declines (and the slow path answers) or gives the same response, decoded with
//! hickory-proto: header flags, rcode, question (as sent, case included), every section in
//! order, the OPT record, and the same figures for the metrics. Both draw SRV slices from
//! the same seeded random source, so the random slices must be the same records in the same
//! order too.

mod common;

use std::sync::Arc;

use common::*;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use onehop_dns::{
    answer_bytes, answer_bytes_slow, answer_fast, AnswerOptions, EnumFollower, EnumTable, Outcome,
    Transport, Zone, ZoneConfig,
};
use onehop_overlay::provision::{EnumEntry, EnumUpdate};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn numbers(listed: bool) -> Arc<EnumTable> {
    let t = Arc::new(EnumTable::new());
    if listed {
        let entries = [
            ("+15550100", "sip:+15550100@carrier.example"),
            ("+15550101", "sip:alice!x@carrier.example"),
            ("+4930123456789", "sip:berlin@carrier.example"),
        ]
        .iter()
        .map(|(n, u)| EnumEntry {
            number: (*n).into(),
            uri: Some((*u).into()),
        })
        .collect();
        let update = EnumUpdate {
            version: 3,
            reset: true,
            entries,
            next: None,
        };
        EnumFollower::new().apply(update, &t).expect("a listing");
    }
    t
}

/// The zone of 6 proxies (one IPv6), a provisioned domain and ENUM numbers.
fn zone(proxies: usize, listed: bool) -> Zone {
    let domains = [name("sip.other.test"), name("second.test")];
    Zone::build(
        &status(3, 7, proxies, true),
        &ZoneConfig::new(DOMAIN).unwrap(),
        &domains,
    )
    .with_numbers(numbers(listed))
}

const NAMES: &[&str] = &[
    "example.test",
    "_sip._udp.example.test",
    "_sip._tcp.example.test",
    "_sips._tcp.example.test",
    "_eventserver._udp.example.test",
    "_udp.example.test",
    "node001.example.test",
    "node002.example.test",
    "node6.example.test",
    "dns1.example.test",
    "es1.example.test",
    "nothere.example.test",
    "deep.below.nothere.example.test",
    "other.invalid",
    "test",
    "sip.other.test",
    "_sip._udp.sip.other.test",
    "nothere.sip.other.test",
    "second.test",
    "e164.arpa",
    "0.0.1.0.5.5.5.1.e164.arpa",
    "1.0.1.0.5.5.5.1.e164.arpa",
    "1.0.5.5.5.1.e164.arpa",
    "9.9.9.9.e164.arpa",
    "x.0.0.1.0.5.5.5.1.e164.arpa",
    "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.e164.arpa",
    "9.8.7.6.5.4.3.2.1.0.3.9.4.e164.arpa",
];

const TYPES: &[RecordType] = &[
    RecordType::A,
    RecordType::AAAA,
    RecordType::NS,
    RecordType::SOA,
    RecordType::SRV,
    RecordType::NAPTR,
    RecordType::TXT,
    RecordType::MX,
    RecordType::CAA,
    RecordType::ANY,
    RecordType::AXFR,
    RecordType::IXFR,
];

/// The name with its letters' case changed: `Upper` all, `Mixed` every other letter.
#[derive(Debug, Clone, Copy)]
enum Case {
    Lower,
    Upper,
    Mixed,
}

fn cased(s: &str, case: Case) -> String {
    match case {
        Case::Lower => s.to_string(),
        Case::Upper => s.to_ascii_uppercase(),
        Case::Mixed => s
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect(),
    }
}

fn request(
    qname: &str,
    qtype: RecordType,
    edns: Option<(u16, bool)>,
    options: &[EdnsOption],
) -> Vec<u8> {
    let mut m = Message::new(0xbeef, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.metadata.checking_disabled = true;
    m.add_query(Query::query(name(qname), qtype));
    if let Some((size, dnssec_ok)) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        e.set_dnssec_ok(dnssec_ok);
        for o in options {
            e.options_mut().insert(o.clone());
        }
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

/// Answers `raw` both ways from the same random draws; returns whether the fast path
/// answered. Panics (with `what`) where the two differ.
fn same(zone: Option<&Zone>, raw: &[u8], t: Transport, seed: u64, what: &str) -> bool {
    let opts = AnswerOptions::default();
    let fast = answer_fast(zone, raw, t, &opts, &mut StdRng::seed_from_u64(seed));
    let slow = answer_bytes_slow(zone, raw, t, &opts, &mut StdRng::seed_from_u64(seed));
    // What the server sends is the fast answer when there is one.
    let sent = answer_bytes(zone, raw, t, &opts, &mut StdRng::seed_from_u64(seed));
    let Some(fast) = fast else {
        // The fast path may have drawn slices before it declined: the slow path answers
        // from the draws after those.
        let mut rng = StdRng::seed_from_u64(seed);
        let _ = answer_fast(zone, raw, t, &opts, &mut rng);
        let expected = answer_bytes_slow(zone, raw, t, &opts, &mut rng);
        assert_eq!(
            sent.map(|o| o.bytes),
            expected.map(|o| o.bytes),
            "{what}: the slow path answers"
        );
        return false;
    };
    let slow = slow.unwrap_or_else(|| panic!("{what}: the slow path gives no response"));
    assert_eq!(sent.map(|o| o.bytes), Some(fast.bytes.clone()), "{what}");
    compare(&fast, &slow, what);
    if t == Transport::Udp {
        let limit = Message::from_vec(raw)
            .unwrap()
            .edns
            .as_ref()
            .map(|e| e.max_payload().clamp(512, 1232) as usize)
            .unwrap_or(512);
        assert!(
            fast.bytes.len() <= limit,
            "{what}: {} bytes",
            fast.bytes.len()
        );
    }
    true
}

fn compare(fast: &Outcome, slow: &Outcome, what: &str) {
    assert_eq!(fast.qtype, slow.qtype, "{what}: qtype");
    assert_eq!(fast.rcode, slow.rcode, "{what}: rcode");
    assert_eq!(fast.truncated, slow.truncated, "{what}: truncated");
    assert_eq!(fast.enum_result, slow.enum_result, "{what}: ENUM result");
    let f = decode(&fast.bytes);
    let s = decode(&slow.bytes);
    assert_eq!(f.metadata, s.metadata, "{what}: header");
    assert_eq!(f.queries.len(), 1, "{what}");
    assert_eq!(
        f.queries[0].name().to_string(),
        s.queries[0].name().to_string(),
        "{what}: the question as sent"
    );
    assert_eq!(f.queries, s.queries, "{what}: question");
    assert_eq!(f.answers, s.answers, "{what}: answers");
    assert_eq!(f.authorities, s.authorities, "{what}: authority");
    assert_eq!(f.additionals, s.additionals, "{what}: additional");
    assert_eq!(f.edns, s.edns, "{what}: EDNS");
}

#[test]
fn every_query_shape_answers_as_the_slow_path() {
    let zones = [
        ("6 proxies", zone(6, true)),
        ("no proxy", zone(0, true)),
        ("ENUM not listed", zone(2, false)),
    ];
    let edns_shapes: &[(&str, Option<(u16, bool)>)] = &[
        ("no EDNS", None),
        ("EDNS 512", Some((512, false))),
        ("EDNS 1232", Some((1232, false))),
        ("EDNS 4096 DO", Some((4096, true))),
    ];
    let mut fast = 0;
    let mut total = 0;
    for (zname, z) in &zones {
        for qname in NAMES {
            for qtype in TYPES {
                for (ename, edns) in edns_shapes {
                    for case in [Case::Lower, Case::Upper, Case::Mixed] {
                        for t in [Transport::Udp, Transport::Tcp] {
                            let raw = request(&cased(qname, case), *qtype, *edns, &[]);
                            for seed in 0..3 {
                                let what = format!(
                                    "{zname}: {qname} {qtype} {ename} {case:?} {t:?} seed {seed}"
                                );
                                total += 1;
                                if same(Some(z), &raw, t, seed, &what) {
                                    fast += 1;
                                } else {
                                    // Only what the module documentation leaves to the
                                    // slow path.
                                    let ok = matches!(
                                        qtype,
                                        RecordType::ANY | RecordType::AXFR | RecordType::IXFR
                                    ) || (*qtype == RecordType::NAPTR
                                        && t == Transport::Udp
                                        && !matches!(edns, Some((1232 | 4096, _))));
                                    assert!(ok, "{what}: not answered by the fast path");
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    println!("{fast} of {total} query shapes answered by the fast path");
    assert!(fast * 10 > total * 7, "{fast} of {total}");
}

#[test]
fn edns_options_cookies_and_nsid() {
    let z = zone(6, true);
    let cookie = EdnsOption::Unknown(u16::from(EdnsCode::Cookie), vec![1, 2, 3, 4, 5, 6, 7, 8]);
    let raw = request(
        "node001.example.test",
        RecordType::A,
        Some((1232, false)),
        &[cookie],
    );
    assert!(same(Some(&z), &raw, Transport::Udp, 1, "cookie"));
    let nsid = EdnsOption::Unknown(u16::from(EdnsCode::NSID), Vec::new());
    let raw = request(
        "node001.example.test",
        RecordType::A,
        Some((1232, false)),
        &[nsid],
    );
    assert!(
        !same(Some(&z), &raw, Transport::Udp, 1, "NSID"),
        "NSID is left to the slow path"
    );
}

#[test]
fn what_is_not_a_plain_query_goes_to_the_slow_path() {
    let z = zone(6, true);
    let base = request("node001.example.test", RecordType::A, None, &[]);
    let mut shapes: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut notify = base.clone();
    notify[2] |= 4 << 3;
    shapes.push(("NOTIFY: NOTIMP", notify));
    let mut badvers = request(
        "node001.example.test",
        RecordType::A,
        Some((1232, false)),
        &[],
    );
    let at = badvers.len() - 11 + 6; // the OPT record's version byte
    badvers[at] = 1;
    shapes.push(("EDNS version 1: BADVERS", badvers));
    let mut chaos = base.clone();
    let at = chaos.len() - 1;
    chaos[at] = u16::from(DNSClass::CH) as u8;
    shapes.push(("class CH: REFUSED", chaos));
    let mut two = Message::new(1, MessageType::Query, OpCode::Query);
    two.add_query(Query::query(name("node001.example.test"), RecordType::A));
    two.add_query(Query::query(name("node002.example.test"), RecordType::A));
    shapes.push(("two questions: FORMERR", two.to_vec().unwrap()));
    let mut garbage = base.clone();
    garbage.extend_from_slice(&[0xff; 7]);
    shapes.push(("trailing bytes", garbage));
    let mut opt_query = base.clone();
    let at = opt_query.len() - 3;
    opt_query[at] = 41;
    shapes.push(("qtype OPT: FORMERR", opt_query));
    let mut pointer = base.clone();
    pointer.truncate(12);
    pointer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    shapes.push(("compressed question: FORMERR", pointer));
    for (what, raw) in &shapes {
        for t in [Transport::Udp, Transport::Tcp] {
            assert!(!same(Some(&z), raw, t, 1, what), "{what}");
        }
    }
    // A response is never answered, by either path.
    let mut response = base.clone();
    response[2] |= 0x80;
    assert!(answer_bytes(
        Some(&z),
        &response,
        Transport::Udp,
        &AnswerOptions::default(),
        &mut StdRng::seed_from_u64(1)
    )
    .is_none());
    // No zone yet: SERVFAIL, from the slow path.
    assert!(!same(None, &base, Transport::Udp, 1, "no zone"));
}

#[test]
fn answers_too_large_for_udp_are_truncated_by_the_slow_path() {
    let mut cfg = ZoneConfig::new(DOMAIN).unwrap();
    cfg.srv_slice = 40;
    let z = Zone::from_status(&status(1, 1, 60, false), &cfg);
    let opts = AnswerOptions::default();
    let raw = request("_sip._udp.example.test", RecordType::SRV, None, &[]);
    assert!(!same(Some(&z), &raw, Transport::Udp, 5, "40 SRV over UDP"));
    let out = answer_bytes(
        Some(&z),
        &raw,
        Transport::Udp,
        &opts,
        &mut StdRng::seed_from_u64(5),
    )
    .unwrap();
    assert!(out.truncated && out.bytes.len() <= 512);
    assert!(decode(&out.bytes).metadata.truncation);
    // Over TCP the whole slice fits, fast.
    assert!(same(Some(&z), &raw, Transport::Tcp, 5, "40 SRV over TCP"));
    let m = decode(
        &answer_bytes(
            Some(&z),
            &raw,
            Transport::Tcp,
            &opts,
            &mut StdRng::seed_from_u64(5),
        )
        .unwrap()
        .bytes,
    );
    assert_eq!(m.answers.len(), 40);
    assert_eq!(m.additionals.len(), 40);
}

/// The fast path's answer over UDP (it must give one).
fn fast_udp(z: &Zone, raw: &[u8], seed: u64) -> Outcome {
    let opts = AnswerOptions::default();
    answer_fast(
        Some(z),
        raw,
        Transport::Udp,
        &opts,
        &mut StdRng::seed_from_u64(seed),
    )
    .expect("answered by the fast path")
}

#[test]
fn a_naptr_answer_too_large_for_512_bytes_drops_its_additional_section_fast() {
    let z = zone(6, true);
    for case in [Case::Lower, Case::Mixed] {
        let raw = request(&cased(DOMAIN, case), RecordType::NAPTR, None, &[]);
        let what = format!("NAPTR without EDNS, {case:?}");
        assert!(
            same(Some(&z), &raw, Transport::Udp, 2, &what),
            "{what}: fast"
        );
        let out = fast_udp(&z, &raw, 2);
        let m = decode(&out.bytes);
        let naptrs = z.records(&name("example.test."), RecordType::NAPTR).len();
        assert!(naptrs >= 2);
        assert_eq!(m.answers.len(), naptrs, "{what}");
        assert!(m.additionals.is_empty() && !m.metadata.truncation, "{what}");
        // With room, the slices and addresses come along.
        let raw = request(
            &cased(DOMAIN, case),
            RecordType::NAPTR,
            Some((1232, false)),
            &[],
        );
        let out = fast_udp(&z, &raw, 2);
        let m = decode(&out.bytes);
        let srv = of_type(&m.additionals, RecordType::SRV).len();
        assert_eq!(srv, naptrs * 4, "{what}, EDNS 1232");
        assert!(m.additionals.len() >= srv + 4, "{what}, EDNS 1232");
    }
}

#[test]
fn the_zone_holds_every_name_pre_encoded() {
    let z = zone(6, true);
    let held = z.fast().names();
    assert!(held >= NAMES.len() / 2, "{held} names pre-encoded");
    assert!(z.fast().bytes() > 0);
    // Names with different case in the question share one entry.
    let q = request("NODE001.Example.TEST", RecordType::A, None, &[]);
    let m = decode(&fast_udp(&z, &q, 1).bytes);
    assert_eq!(m.queries[0].name().to_string(), "NODE001.Example.TEST.");
    assert_eq!(
        m.answers[0].name,
        Name::from_ascii("node001.example.test.").unwrap()
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
}
