//! The zone and the answering, without sockets.

mod common;

use std::collections::BTreeMap;

use common::*;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, RecordType};
use onehop_dns::{
    answer_bytes, serial_of, AnswerOptions, Outcome, Transport, Transports, Zone, ZoneConfig,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn cfg() -> ZoneConfig {
    ZoneConfig::new(DOMAIN).unwrap()
}

fn zone(proxies: usize) -> Zone {
    Zone::from_status(&status(3, 7, proxies, true), &cfg())
}

fn ask_with(zone: Option<&Zone>, bytes: &[u8], t: Transport) -> (Outcome, Message) {
    let mut rng = StdRng::seed_from_u64(1);
    let out =
        answer_bytes(zone, bytes, t, &AnswerOptions::default(), &mut rng).expect("a response");
    let msg = decode(&out.bytes);
    (out, msg)
}

fn ask(zone: &Zone, qname: &str, qtype: RecordType) -> Message {
    ask_with(Some(zone), &query(qname, qtype, Some(1232)), Transport::Udp).1
}

#[test]
fn naptr_per_transport_in_rfc3263_order() {
    let z = zone(6);
    let m = ask(&z, DOMAIN, RecordType::NAPTR);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert!(!m.metadata.recursion_available);
    assert_eq!(m.metadata.id, 0x1234);
    assert!(m.metadata.recursion_desired, "RD is copied");
    let mut naptr: Vec<(u16, u16, String, String, String)> = m
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::NAPTR(n) => (
                n.order,
                n.preference,
                String::from_utf8_lossy(&n.flags).into_owned(),
                String::from_utf8_lossy(&n.services).into_owned(),
                n.replacement.to_string(),
            ),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    naptr.sort();
    assert_eq!(
        naptr,
        vec![
            (
                90,
                50,
                "s".into(),
                "SIP+D2T".into(),
                "_sip._tcp.example.test.".into()
            ),
            (
                100,
                50,
                "s".into(),
                "SIP+D2U".into(),
                "_sip._udp.example.test.".into()
            ),
        ]
    );
    // The additional section saves the client the next lookups: SRV slices and addresses.
    assert!(!of_type(&m.additionals, RecordType::SRV).is_empty());
    assert!(!of_type(&m.additionals, RecordType::A).is_empty());
    assert!(m.edns.is_some(), "an EDNS query gets an OPT record back");

    let mut c = cfg();
    c.transports = Transports {
        udp: false,
        tcp: true,
        tls: true,
    };
    let z = Zone::from_status(&status(1, 1, 3, false), &c);
    let m = ask(&z, DOMAIN, RecordType::NAPTR);
    let services: BTreeMap<u16, String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::NAPTR(n) => Some((n.order, String::from_utf8_lossy(&n.services).into_owned())),
            _ => None,
        })
        .collect();
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        vec![(50, "SIPS+D2T".to_string()), (90, "SIP+D2T".to_string())]
    );
    let m = ask(&z, "_sips._tcp.example.test", RecordType::SRV);
    assert_eq!(m.answers.len(), 3);
    assert!(srv_targets(&m.answers).iter().all(|(_, p)| *p == 5061));
    let m = ask(&z, "_sip._udp.example.test", RecordType::SRV);
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NXDomain,
        "udp not offered"
    );
}

#[test]
fn srv_slice_of_proxies_with_addresses() {
    let z = zone(10);
    for t in ["_sip._udp.example.test", "_sip._tcp.example.test"] {
        let m = ask(&z, t, RecordType::SRV);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        let targets = srv_targets(&m.answers);
        assert_eq!(targets.len(), 4, "K = 4 of 11 proxies");
        let mut unique = targets.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 4, "no proxy twice in one slice");
        for (target, port) in &targets {
            assert!(target.starts_with("node"), "{target}");
            assert!(!target.starts_with("reg1"));
            let expected = if target.starts_with("node001.") {
                5070
            } else {
                5060
            };
            assert_eq!(*port, expected, "port from the member's sip endpoint");
            let addr = m
                .additionals
                .iter()
                .filter(|r| r.name.to_string() == *target)
                .count();
            assert_eq!(addr, 1, "address of {target} in the additional section");
        }
        for r in &m.answers {
            assert_eq!(r.ttl, 5);
        }
    }
    // Only the sip_proxy members: reg1 never.
    let all = z.records(&name("_sip._udp.example.test."), RecordType::SRV);
    assert_eq!(all.len(), 11);
    assert!(srv_targets(all)
        .iter()
        .all(|(t, _)| t != "reg1.example.test."));
}

#[test]
fn eventserver_srv_lists_every_event_server() {
    let z = zone(3);
    let m = ask(&z, "_eventserver._udp.example.test", RecordType::SRV);
    let mut t = srv_targets(&m.answers);
    t.sort();
    assert_eq!(
        t,
        vec![
            ("es1.example.test.".to_string(), 8000),
            ("es2.example.test.".to_string(), 8001)
        ]
    );
    assert_eq!(of_type(&m.additionals, RecordType::A).len(), 2);
}

#[test]
fn addresses_of_members() {
    let z = zone(3);
    let m = ask(&z, "node002.example.test", RecordType::A);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(
        m.answers[0].data,
        RData::A("10.1.0.3".parse::<std::net::Ipv4Addr>().unwrap().into())
    );
    let m = ask(&z, "node6.example.test", RecordType::AAAA);
    assert_eq!(m.answers.len(), 1);
    assert!(matches!(m.answers[0].data, RData::AAAA(_)));
    let m = ask(&z, "es1.example.test", RecordType::A);
    assert_eq!(m.answers.len(), 1);
    let m = ask(&z, "mgr1.example.test", RecordType::A);
    assert_eq!(m.answers.len(), 1);
    // Case-insensitive, and the question comes back as asked (0x20 randomisation).
    let m = ask(&z, "NoDe002.ExAmple.TEST", RecordType::A);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.queries[0].name().to_string(), "NoDe002.ExAmple.TEST.");
}

#[test]
fn soa_and_ns() {
    let z = zone(3);
    assert_eq!(z.serial(), serial_of(3, 7));
    assert_eq!(z.serial(), (3 << 20) + 7);
    let m = ask(&z, DOMAIN, RecordType::SOA);
    assert_eq!(m.answers.len(), 1);
    match &m.answers[0].data {
        RData::SOA(soa) => {
            assert_eq!(soa.serial, serial_of(3, 7));
            assert_eq!(soa.mname.to_string(), "dns1.example.test.");
            assert_eq!(soa.rname.to_string(), "hostmaster.example.test.");
            assert_eq!(soa.minimum, 5);
        }
        other => panic!("{other:?}"),
    }
    let m = ask(&z, DOMAIN, RecordType::NS);
    assert_eq!(m.answers.len(), 1);
    assert!(
        matches!(&m.answers[0].data, RData::NS(ns) if ns.0.to_string() == "dns1.example.test.")
    );
    assert_eq!(
        of_type(&m.additionals, RecordType::A).len(),
        1,
        "glue for dns1"
    );
    // A newer status gives a greater serial.
    let z2 = Zone::from_status(&status(4, 0, 3, true), &cfg());
    assert!(z2.serial() > z.serial());
}

#[test]
fn nxdomain_and_nodata_carry_the_soa() {
    let z = zone(3);
    for qname in [
        "nope.example.test",
        "x.node001.example.test",
        "_sip._sctp.example.test",
    ] {
        let m = ask(&z, qname, RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{qname}");
        assert!(m.metadata.authoritative);
        assert!(m.answers.is_empty());
        assert_eq!(of_type(&m.authorities, RecordType::SOA).len(), 1, "{qname}");
    }
    for (qname, qtype) in [
        ("node001.example.test", RecordType::TXT),
        ("node001.example.test", RecordType::AAAA),
        ("_udp.example.test", RecordType::A), // empty non-terminal
        ("_sip._udp.example.test", RecordType::A),
        (DOMAIN, RecordType::A),
    ] {
        let m = ask(&z, qname, qtype);
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "{qname} {qtype}"
        );
        assert!(m.metadata.authoritative);
        assert!(m.answers.is_empty(), "{qname} {qtype}");
        assert_eq!(
            of_type(&m.authorities, RecordType::SOA).len(),
            1,
            "{qname} {qtype}"
        );
    }
    // SRV names of offered transports exist even with no proxy live.
    let z = Zone::from_status(&status(1, 1, 0, false), &cfg());
    let m = ask(&z, "_sip._udp.example.test", RecordType::SRV);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
}

#[test]
fn refused_outside_the_zone_and_never_recursion() {
    let z = zone(3);
    for qname in ["example.com", "test", "example.test.com", "other.test"] {
        let m = ask(&z, qname, RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{qname}");
        assert!(!m.metadata.authoritative);
        assert!(!m.metadata.recursion_available);
        assert!(m.answers.is_empty());
    }
    // Another class, a zone transfer.
    let mut q = query_msg(DOMAIN, RecordType::TXT, None);
    q.queries[0].set_query_class(DNSClass::CH);
    let (_, m) = ask_with(Some(&z), &q.to_vec().unwrap(), Transport::Udp);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let (_, m) = ask_with(
        Some(&z),
        &query(DOMAIN, RecordType::AXFR, None),
        Transport::Tcp,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn formerr_for_two_questions_and_garbage() {
    let z = zone(3);
    let mut q = query_msg(DOMAIN, RecordType::A, None);
    q.add_query(Query::query(name("node001.example.test."), RecordType::A));
    let (out, m) = ask_with(Some(&z), &q.to_vec().unwrap(), Transport::Udp);
    assert_eq!(out.rcode, ResponseCode::FormErr);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert!(m.answers.is_empty());

    // No question at all.
    let q = Message::new(7, MessageType::Query, OpCode::Query);
    let (_, m) = ask_with(Some(&z), &q.to_vec().unwrap(), Transport::Udp);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);

    // A header announcing a question that is not there, and one cut in the middle.
    let garbage = [
        0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0xff, 0xfe, 0x07,
    ];
    let (_, m) = ask_with(Some(&z), &garbage, Transport::Udp);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(m.metadata.id, 0xabcd);
    let full = query(DOMAIN, RecordType::NAPTR, Some(1232));
    for cut in 12..full.len() {
        let mut rng = StdRng::seed_from_u64(cut as u64);
        let out = answer_bytes(
            Some(&z),
            &full[..cut],
            Transport::Udp,
            &AnswerOptions::default(),
            &mut rng,
        )
        .expect("a header: a response");
        let m = decode(&out.bytes);
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::FormErr,
            "cut at {cut}"
        );
    }

    // Shorter than a header, or a response: no answer at all.
    let mut rng = StdRng::seed_from_u64(0);
    assert!(answer_bytes(
        Some(&z),
        &full[..11],
        Transport::Udp,
        &AnswerOptions::default(),
        &mut rng
    )
    .is_none());
    assert!(answer_bytes(
        Some(&z),
        &[],
        Transport::Udp,
        &AnswerOptions::default(),
        &mut rng
    )
    .is_none());
    let mut resp = query_msg(DOMAIN, RecordType::A, None);
    resp.metadata.message_type = MessageType::Response;
    assert!(answer_bytes(
        Some(&z),
        &resp.to_vec().unwrap(),
        Transport::Udp,
        &AnswerOptions::default(),
        &mut rng
    )
    .is_none());
}

#[test]
fn random_input_never_panics() {
    let z = zone(20);
    let mut rng = StdRng::seed_from_u64(42);
    let valid = query("_sip._udp.example.test", RecordType::SRV, Some(4096));
    for i in 0..20_000 {
        let bytes: Vec<u8> = if i % 2 == 0 {
            let n = rng.gen_range(0..700);
            (0..n).map(|_| rng.gen()).collect()
        } else {
            // Flip bytes of a valid query.
            let mut b = valid.clone();
            for _ in 0..rng.gen_range(1..6) {
                let at = rng.gen_range(0..b.len());
                b[at] = rng.gen();
            }
            b
        };
        for t in [Transport::Udp, Transport::Tcp] {
            if let Some(out) =
                answer_bytes(Some(&z), &bytes, t, &AnswerOptions::default(), &mut rng)
            {
                assert!(out.bytes.len() >= 12);
                if t == Transport::Udp {
                    assert!(out.bytes.len() <= 4096);
                }
            }
        }
    }
}

#[test]
fn opcodes_and_edns_versions() {
    let z = zone(3);
    let mut q = query_msg(DOMAIN, RecordType::SOA, None);
    q.metadata.op_code = OpCode::Notify;
    let (_, m) = ask_with(Some(&z), &q.to_vec().unwrap(), Transport::Udp);
    assert_eq!(m.metadata.response_code, ResponseCode::NotImp);

    let mut q = query_msg(DOMAIN, RecordType::SOA, Some(1232));
    q.edns.as_mut().unwrap().set_version(1);
    let (out, m) = ask_with(Some(&z), &q.to_vec().unwrap(), Transport::Udp);
    assert_eq!(out.rcode, ResponseCode::BADVERS);
    // 16 is BADVERS in an OPT context (BADSIG in a TSIG one): the decoder picks the name.
    assert_eq!(u16::from(m.metadata.response_code), 16);
    assert!(m.edns.is_some());

    // Without EDNS no OPT comes back; with it, ours (1232).
    let (_, m) = ask_with(
        Some(&z),
        &query(DOMAIN, RecordType::SOA, None),
        Transport::Udp,
    );
    assert!(m.edns.is_none());
    let (_, m) = ask_with(
        Some(&z),
        &query(DOMAIN, RecordType::SOA, Some(4096)),
        Transport::Udp,
    );
    assert_eq!(m.edns.unwrap().max_payload(), 1232);
}

/// A question name that ends in a compression pointer (into the header: nothing else comes
/// before the first question) gets a FORMERR that decodes, without the question: repeating
/// the question's bytes would point into the response's own header.
#[test]
fn a_compressed_question_gets_a_formerr_without_it() {
    let z = zone(3);
    let mut raw = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    raw.extend_from_slice(b"\x04e164\x04arpa\xc0\x02");
    raw.extend_from_slice(&[0x00, 0x23, 0x00, 0x01]); // NAPTR IN
    for t in [Transport::Udp, Transport::Tcp] {
        for zone in [Some(&z), None] {
            let (out, m) = ask_with(zone, &raw, t);
            assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
            assert_eq!(out.rcode, ResponseCode::FormErr);
            assert_eq!(m.metadata.id, 0x1234);
            assert!(m.queries.is_empty());
        }
    }
    // The same question written out in full is answered.
    let mut plain = raw[..12].to_vec();
    plain.extend_from_slice(b"\x04e164\x04arpa\x00");
    plain.extend_from_slice(&[0x00, 0x23, 0x00, 0x01]);
    let (_, m) = ask_with(Some(&z), &plain, Transport::Udp);
    assert_ne!(m.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(m.queries.len(), 1);
}

/// A request whose question section alone is over 512 bytes (many questions, as an UPDATE may
/// carry; names without a shared suffix, so none is compressed) gets a header-only answer with
/// TC over UDP, never a datagram over the client's size.
#[test]
fn a_question_section_too_large_for_udp_gets_a_truncated_header() {
    let z = zone(3);
    for op in [OpCode::Query, OpCode::Update] {
        let mut m = Message::new(0x4321, MessageType::Query, op);
        for i in 0..40 {
            m.add_query(Query::query(
                name(&format!(
                    "host-with-a-long-label-{i:02}-of-no-shared-suffix"
                )),
                RecordType::A,
            ));
        }
        let raw = m.to_vec().unwrap();
        assert!(raw.len() > 512, "{} bytes", raw.len());
        for zone in [Some(&z), None] {
            let (out, r) = ask_with(zone, &raw, Transport::Udp);
            assert!(out.bytes.len() <= 512, "{op:?}: {} bytes", out.bytes.len());
            assert!(out.truncated && r.metadata.truncation, "{op:?}: TC");
            assert_eq!(r.metadata.id, 0x4321);
            assert_eq!(r.metadata.message_type, MessageType::Response);
            assert!(r.queries.is_empty() && r.answers.is_empty());
            // Over TCP the same request is answered with its questions.
            let (out, r) = ask_with(zone, &raw, Transport::Tcp);
            assert!(!out.truncated, "{op:?}: no TC over TCP");
            assert_eq!(r.queries.len(), 40);
        }
    }
}

#[test]
fn truncation_on_small_udp_sizes() {
    let mut c = cfg();
    c.srv_slice = 60;
    let z = Zone::from_status(&status(1, 1, 100, false), &c);
    let q = "_sip._udp.example.test";

    // No EDNS: 512 bytes at most, TC set, a shorter answer.
    let (out, m) = ask_with(Some(&z), &query(q, RecordType::SRV, None), Transport::Udp);
    assert!(out.bytes.len() <= 512, "{} bytes", out.bytes.len());
    assert!(out.truncated);
    assert!(m.metadata.truncation);
    assert!(
        !m.answers.is_empty() && m.answers.len() < 60,
        "{} answers",
        m.answers.len()
    );
    assert!(m.additionals.is_empty());
    println!(
        "no EDNS: {} SRV in {} bytes",
        m.answers.len(),
        out.bytes.len()
    );

    // EDNS 1232: more fits, still TC; the OPT record stays.
    let (out, m2) = ask_with(
        Some(&z),
        &query(q, RecordType::SRV, Some(1232)),
        Transport::Udp,
    );
    assert!(out.bytes.len() <= 1232);
    assert!(m2.metadata.truncation);
    assert!(m2.answers.len() > m.answers.len());
    assert!(m2.edns.is_some());
    println!(
        "EDNS 1232: {} SRV in {} bytes",
        m2.answers.len(),
        out.bytes.len()
    );

    // A client's smaller EDNS size is honoured (below 512 counts as 512).
    let (out, _) = ask_with(
        Some(&z),
        &query(q, RecordType::SRV, Some(700)),
        Transport::Udp,
    );
    assert!(out.bytes.len() <= 700);
    let (out, _) = ask_with(
        Some(&z),
        &query(q, RecordType::SRV, Some(100)),
        Transport::Udp,
    );
    assert!(out.bytes.len() <= 512);

    // TCP: everything, no TC.
    let (out, m) = ask_with(Some(&z), &query(q, RecordType::SRV, None), Transport::Tcp);
    assert!(!out.truncated);
    assert_eq!(m.answers.len(), 60);
    assert_eq!(of_type(&m.additionals, RecordType::A).len(), 60);

    // The default K = 4 answers with their addresses fit in 512 bytes: no TC.
    let z = zone(100);
    let (out, m) = ask_with(Some(&z), &query(q, RecordType::SRV, None), Transport::Udp);
    assert!(!out.truncated);
    assert_eq!(m.answers.len(), 4);
    assert!(out.bytes.len() <= 512);
}

#[test]
fn srv_slices_spread_evenly() {
    let z = zone(9); // node001..node009 and node6: 10 proxies, K = 4
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let bytes = query("_sip._udp.example.test", RecordType::SRV, None);
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    let mut firsts: BTreeMap<String, u32> = BTreeMap::new();
    let rounds = 1000;
    for _ in 0..rounds {
        let out = answer_bytes(
            Some(&z),
            &bytes,
            Transport::Udp,
            &AnswerOptions::default(),
            &mut rng,
        )
        .unwrap();
        let m = decode(&out.bytes);
        let t = srv_targets(&m.answers);
        assert!(t.len() <= 4);
        assert_eq!(t.len(), 4);
        *firsts.entry(t[0].0.clone()).or_default() += 1;
        for (target, _) in t {
            *counts.entry(target).or_default() += 1;
        }
    }
    println!("SRV appearances over {rounds} answers (K = 4 of 10): {counts:#?}");
    println!("first place: {firsts:?}");
    assert_eq!(counts.len(), 10, "every proxy appears");
    let expected = (rounds * 4) as f64 / 10.0;
    for (target, n) in &counts {
        let dev = (*n as f64 - expected).abs() / expected;
        assert!(
            dev <= 0.15,
            "{target}: {n} vs {expected} ({:.1}%)",
            dev * 100.0
        );
    }
    assert_eq!(firsts.len(), 10, "order within the slice is random too");
}

#[test]
fn servfail_before_the_first_status() {
    let (out, m) = ask_with(
        None,
        &query(DOMAIN, RecordType::NAPTR, None),
        Transport::Udp,
    );
    assert_eq!(out.rcode, ResponseCode::ServFail);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(!m.metadata.authoritative);
    assert!(m.answers.is_empty());
    // Outside the zone is still refused... once we know the zone; before, SERVFAIL as well.
    let (_, m) = ask_with(
        None,
        &query("example.com", RecordType::A, None),
        Transport::Udp,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}

#[test]
fn a_member_that_leaves_is_out_of_every_answer() {
    let handler = onehop_dns::DnsHandler::new(cfg(), AnswerOptions::default(), &Default::default());
    assert!(handler.apply_status(&status(2, 1, 3, false)));
    let mut s = status(2, 2, 3, false);
    s.members.retain(|m| m.name != "node002");
    assert!(handler.apply_status(&s));
    // An older status is ignored.
    assert!(!handler.apply_status(&status(2, 1, 3, false)));
    assert!(!handler.apply_status(&status(1, 9, 3, false)));
    let z = handler.zone().unwrap();
    assert_eq!(z.status_key(), (2, 2));
    for _ in 0..50 {
        let m = ask(&z, "_sip._udp.example.test", RecordType::SRV);
        assert!(srv_targets(&m.answers)
            .iter()
            .all(|(t, _)| t != "node002.example.test."));
        assert_eq!(m.answers.len(), 2);
    }
    let m = ask(&z, "node002.example.test", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let raw = handler
        .respond(
            &query("node001.example.test", RecordType::A, None),
            Transport::Udp,
        )
        .unwrap();
    assert_eq!(decode(&raw).answers.len(), 1);
}

#[test]
fn any_query_answers_every_rrset_at_the_name() {
    let z = zone(3);
    let m = ask(&z, DOMAIN, RecordType::ANY);
    for t in [RecordType::SOA, RecordType::NS, RecordType::NAPTR] {
        assert!(!of_type(&m.answers, t).is_empty(), "{t}");
    }
}

fn multi(domains: &[&str]) -> Zone {
    let names: Vec<_> = domains.iter().map(|d| name(d)).collect();
    Zone::build(&status(3, 7, 6, false), &cfg(), &names)
}

#[test]
fn provisioned_domains_answer_like_the_farm_domain() {
    let z = multi(&["second.test", "Third.Example", "example.test"]);
    let apexes: Vec<String> = z.apexes().map(|n| n.to_string()).collect();
    assert_eq!(
        apexes,
        ["example.test.", "second.test.", "third.example."],
        "the configured domain once, the others lower-cased"
    );
    for d in ["second.test", "THIRD.example"] {
        let m = ask(&z, d, RecordType::NAPTR);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{d}");
        assert!(m.metadata.authoritative);
        let mut targets: Vec<String> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::NAPTR(n) => Some(n.replacement.to_string()),
                _ => None,
            })
            .collect();
        targets.sort();
        let d = d.to_ascii_lowercase();
        assert_eq!(
            targets,
            [format!("_sip._tcp.{d}."), format!("_sip._udp.{d}.")]
        );
        // The SRV slices and the proxies' addresses come along.
        assert!(!of_type(&m.additionals, RecordType::SRV).is_empty());
        assert!(!of_type(&m.additionals, RecordType::A).is_empty());

        for srv in ["_sip._udp", "_sip._tcp"] {
            let m = ask(&z, &format!("{srv}.{d}"), RecordType::SRV);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            let targets = srv_targets(&m.answers);
            assert_eq!(targets.len(), 4, "a slice of K = 4 of the 6 proxies");
            // Targets are the members' names under the farm domain, with their addresses.
            assert!(
                targets.iter().all(|(t, _)| t.ends_with(".example.test.")),
                "{targets:?}"
            );
            assert_eq!(of_type(&m.additionals, RecordType::A).len(), 4);
        }
        let m = ask(&z, &d, RecordType::SOA);
        let RData::SOA(soa) = &m.answers[0].data else {
            panic!("no SOA for {d}")
        };
        assert_eq!(soa.serial, serial_of(3, 7));
        assert_eq!(soa.mname.to_string(), "dns1.example.test.");
        assert_eq!(soa.rname.to_string(), format!("hostmaster.{d}."));
        let m = ask(&z, &d, RecordType::NS);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(of_type(&m.additionals, RecordType::A).len(), 1);
    }
}

#[test]
fn provisioned_domains_have_their_own_negative_answers() {
    let z = multi(&["second.test"]);
    // No member names, no event servers under a provisioned domain: NXDOMAIN with its SOA.
    for qname in ["node001.second.test", "_eventserver._udp.second.test"] {
        let m = ask(&z, qname, RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{qname}");
        assert!(m.metadata.authoritative);
        assert_eq!(m.authorities[0].name.to_string(), "second.test.");
    }
    // NODATA at an existing name: the apex's SOA.
    let m = ask(&z, "_sip._udp.second.test", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities[0].name.to_string(), "second.test.");
    // The farm domain's names still answer as before.
    let m = ask(&z, "node001.example.test", RecordType::A);
    assert_eq!(m.answers.len(), 1);
    let m = ask(&z, "nothing.example.test", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.authorities[0].name.to_string(), "example.test.");
    // Names under no apex are still refused.
    for qname in ["other.test", "test", "second.test.com", "example.com"] {
        let m = ask(&z, qname, RecordType::NAPTR);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{qname}");
        assert!(!m.metadata.authoritative);
    }
}

#[test]
fn nested_domains_pick_the_longest_apex() {
    // A provisioned domain under the farm domain, and one above it.
    let z = multi(&["eu.example.test", "test"]);
    let m = ask(&z, "eu.example.test", RecordType::NAPTR);
    assert_eq!(m.answers.len(), 2);
    let m = ask(&z, "missing.eu.example.test", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.authorities[0].name.to_string(), "eu.example.test.");
    let m = ask(&z, "missing.example.test", RecordType::A);
    assert_eq!(m.authorities[0].name.to_string(), "example.test.");
    let m = ask(&z, "other.test", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.authorities[0].name.to_string(), "test.");
    let m = ask(&z, "_sip._udp.example.test", RecordType::SRV);
    assert_eq!(srv_targets(&m.answers).len(), 4);
}

#[test]
fn the_handler_follows_domain_changes() {
    let metrics = onehop_overlay::metrics::Metrics::default();
    let h = onehop_dns::DnsHandler::new(cfg(), AnswerOptions::default(), &metrics);
    // Domains before any status are kept for the first zone.
    assert!(h.set_domains(&["second.test".into()]));
    assert!(!h.set_domains(&["second.test".into()]));
    assert!(h.zone().is_none());
    assert!(h.apply_status(&status(1, 1, 2, false)));
    let apexes = |h: &onehop_dns::DnsHandler| -> Vec<String> {
        h.zone().unwrap().apexes().map(|n| n.to_string()).collect()
    };
    assert_eq!(apexes(&h), ["example.test.", "second.test."]);
    // A newer status keeps the domains; bad names and the configured domain are left out.
    assert!(h.apply_status(&status(1, 2, 2, false)));
    assert!(!h.set_domains(&[
        "second.test".into(),
        "bad..name".into(),
        "EXAMPLE.test".into(),
        "x".repeat(300),
    ]));
    assert_eq!(apexes(&h), ["example.test.", "second.test."]);
    assert_eq!(metrics.value("dns_zone_domains"), Some(2));
    assert!(h.set_domains(&[]));
    assert_eq!(apexes(&h), ["example.test."]);
    assert_eq!(h.zone().unwrap().status_key(), (1, 2));
}
