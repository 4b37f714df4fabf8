//! The seed corpus, as code: real SIP messages (the ones the unit tests and benchmarks use,
//! RFC 3261, 3665 and 4475 examples), real frames (encoded by the overlay's own codec), real
//! DNS queries (encoded by hickory), real SDP, the example configuration files.
//! `tests/replay.rs` checks that `corpus/` holds exactly these (and writes them with
//! `ONEHOP_WRITE_SEEDS=1`).

use std::net::SocketAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use onehop_overlay::provision::{
    AccountRecord, FarmInfo, FarmReply, FarmRequest, PushBatch, PushOp,
};
use onehop_overlay::status::{Endpoint, Kind, Member, NetworkStatus, Role};
use onehop_overlay::wire::{
    encode_frame, Announce, ClientMsg, Event, Level, LogEvent, MemberEvent, Payload, ServerMsg,
    SessionMember, Stats, Topic,
};

use crate::record;

/// A SIP message from header lines and a body (Content-Length filled in).
fn msg(lines: &[&str], body: &str) -> Vec<u8> {
    let mut out = String::new();
    for l in lines {
        out.push_str(&l.replace("{len}", &body.len().to_string()));
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

const SIPP_SDP: &str = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
const RFC_SDP: &str = "v=0\r\no=alice 2890844526 2890844526 IN IP4 pc33.atlanta.com\r\ns=Session SDP\r\nc=IN IP4 pc33.atlanta.com\r\nt=0 0\r\nm=audio 49172 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
const TORTURE_SDP: &str = "v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.3\r\ns=-\r\nc=IN IP4 192.0.2.4\r\nt=0 0\r\nm=audio 49217 RTP/AVP 0 12\r\nm=video 3227 RTP/AVP 31\r\na=rtpmap:31 LPC\r\n";

/// SIPp's INVITE (`bench/sip/sipp/uac.xml`), from `from` to `to` at example.test.
fn invite(from: &str, to: &str, branch: &str, extra: &[&str]) -> Vec<u8> {
    let mut lines = vec![
        format!("INVITE sip:{to}@example.test SIP/2.0"),
        format!("Via: SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK-{branch};rport"),
        "Max-Forwards: 70".into(),
        format!("From: <sip:{from}@example.test>;tag=4242SIPpTag001"),
        format!("To: <sip:{to}@example.test>"),
        "Call-ID: 1-4242@198.51.100.10".into(),
        "CSeq: 1 INVITE".into(),
        format!("Contact: <sip:{from}@198.51.100.10:5060;transport=UDP>"),
        "Content-Type: application/sdp".into(),
        "Content-Length: {len}".into(),
    ];
    lines.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    msg(&refs, SIPP_SDP)
}

/// SIPp's REGISTER (`bench/sip/sipp/register.xml`) for `user`.
fn register(user: &str, branch: &str, cseq: u32, expires: u32) -> Vec<u8> {
    msg(
        &[
            "REGISTER sip:example.test SIP/2.0",
            &format!("Via: SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK-{branch};rport"),
            "Max-Forwards: 70",
            &format!("From: <sip:{user}@example.test>;tag=4242SIPpTag001"),
            &format!("To: <sip:{user}@example.test>"),
            "Call-ID: reg-4242@198.51.100.10",
            &format!("CSeq: {cseq} REGISTER"),
            &format!("Contact: <sip:{user}@198.51.100.10:5060;transport=UDP>;expires={expires}"),
            "User-Agent: SIPp-bench",
            "Content-Length: 0",
        ],
        "",
    )
}

/// A response from the callee (198.51.100.20:5062) to the INVITE forwarded by node1.
fn callee_response(status: &str, branch: &str) -> Vec<u8> {
    msg(
        &[
            &format!("SIP/2.0 {status}"),
            &format!("Via: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}"),
            "Via: SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK-inv1;rport=5060;received=198.51.100.10",
            "From: <sip:alice@example.test>;tag=4242SIPpTag001",
            "To: <sip:bob@example.test>;tag=bob1",
            "Call-ID: 1-4242@198.51.100.10",
            "CSeq: 1 INVITE",
            "Contact: <sip:bob@198.51.100.20:5062>",
            "Content-Length: 0",
        ],
        "",
    )
}

fn rfc_messages() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "rfc3261-f1-invite",
            msg(
                &[
                    "INVITE sip:bob@biloxi.com SIP/2.0",
                    "Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKnashds8",
                    "Max-Forwards: 70",
                    "To: Bob <sip:bob@biloxi.com>",
                    "From: Alice <sip:alice@atlanta.com>;tag=1928301774",
                    "Call-ID: a84b4c76e66710",
                    "CSeq: 314159 INVITE",
                    "Contact: <sip:alice@pc33.atlanta.com>",
                    "Content-Type: application/sdp",
                    "Content-Length: {len}",
                ],
                RFC_SDP,
            ),
        ),
        (
            "rfc3261-f9-ok",
            msg(
                &[
                    "SIP/2.0 200 OK",
                    "Via: SIP/2.0/UDP server10.biloxi.com;branch=z9hG4bKnashds8;received=192.0.2.3",
                    "Via: SIP/2.0/UDP bigbox3.site3.atlanta.com;branch=z9hG4bK77ef4c2312983.1;received=192.0.2.2",
                    "Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds ;received=192.0.2.1",
                    "To: Bob <sip:bob@biloxi.com>;tag=a6c85cf",
                    "From: Alice <sip:alice@atlanta.com>;tag=1928301774",
                    "Call-ID: a84b4c76e66710@pc33.atlanta.com",
                    "CSeq: 314159 INVITE",
                    "Contact: <sip:bob@192.0.2.4>",
                    "Content-Type: application/sdp",
                    "Content-Length: {len}",
                ],
                RFC_SDP,
            ),
        ),
        (
            "rfc3665-register-tls",
            msg(
                &[
                    "REGISTER sips:ss2.biloxi.example.com SIP/2.0",
                    "Via: SIP/2.0/TLS client.biloxi.example.com:5061;branch=z9hG4bKnashds7",
                    "Max-Forwards: 70",
                    "From: Bob <sips:bob@biloxi.example.com>;tag=a73kszlfl",
                    "To: Bob <sips:bob@biloxi.example.com>",
                    "Call-ID: 1j9FpLxk3uxtm8tn@biloxi.example.com",
                    "CSeq: 1 REGISTER",
                    "Contact: <sips:bob@client.biloxi.example.com>",
                    "Content-Length: 0",
                ],
                "",
            ),
        ),
        (
            "rfc4475-wsinv",
            msg(
                &[
                    "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0",
                    "TO :",
                    " sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n",
                    "from   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>",
                    "  ;",
                    "  tag = 98asjd8",
                    "MaX-fOrWaRdS: 0068",
                    "Call-ID: wsinv.ndaksdj@192.0.2.1",
                    "Content-Length   : {len}",
                    "cseq: 0009",
                    "  INVITE",
                    "Via  : SIP  /   2.0",
                    " /UDP",
                    "    192.0.2.2;branch=390skdjuw",
                    "s :",
                    "NewFangledHeader:   newfangled value",
                    " continued newfangled value",
                    "UnknownHeaderWithUnusualValue: ;;,,;;,;",
                    "Content-Type: application/sdp",
                    "Route:",
                    " <sip:services.example.com;lr;unknownwith=value;unknown-no-value>",
                    "v:  SIP  / 2.0  / TCP     spindle.example.com   ;",
                    "  branch  =   z9hG4bK9ikj8  ,",
                    " SIP  /    2.0   / UDP  192.168.255.111   ; branch=",
                    " z9hG4bK30239",
                    "m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =",
                    "      newvalue ;",
                    "  secondparam ; q = 0.33",
                ],
                TORTURE_SDP,
            ),
        ),
        (
            "compact-options-lf",
            b"OPTIONS sip:carol@chicago.com SIP/2.0\nv: SIP/2.0/TCP h.example.com;branch=z9hG4bKx\nMax-Forwards: 70\nf: <sip:a@b>;tag=1\nt: <sip:carol@chicago.com>\ni: x@y\nCSeq: 7 OPTIONS\nm: <sip:a@10.0.0.2>\nl: 0\nk: path\nc: text/plain\ns: hi\ne: gzip\n\n".to_vec(),
        ),
        (
            "register-digest",
            msg(
                &[
                    "REGISTER sip:example.test SIP/2.0",
                    "Via: SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK-reg2;rport",
                    "Max-Forwards: 70",
                    "From: <sip:alice@example.test>;tag=a1",
                    "To: <sip:alice@example.test>",
                    "Call-ID: reg-1@198.51.100.10",
                    "CSeq: 2 REGISTER",
                    "Contact: <sip:alice@198.51.100.10:5060>;expires=600;q=0.7",
                    "Authorization: Digest username=\"alice\", realm=\"example.test\", nonce=\"AQAAAYvL8wAAAAAAAAAAAABnb2Qtbm9uY2U\", uri=\"sip:example.test\", response=\"6629fae49393a05397450978507c4ef1\", algorithm=MD5, cnonce=\"0a4f113b\", qop=auth, nc=00000001",
                    "Content-Length: 0",
                ],
                "",
            ),
        ),
        (
            "401-challenge",
            msg(
                &[
                    "SIP/2.0 401 Unauthorized",
                    "Via: SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK-reg1;rport=5060;received=198.51.100.10",
                    "From: <sip:alice@example.test>;tag=a1",
                    "To: <sip:alice@example.test>;tag=oh1",
                    "Call-ID: reg-1@198.51.100.10",
                    "CSeq: 1 REGISTER",
                    "WWW-Authenticate: Digest realm=\"example.test\", nonce=\"AQAAAYvL8wAAAAAAAAAAAABnb2Qtbm9uY2U\", algorithm=SHA-256, qop=\"auth\"",
                    "WWW-Authenticate: Digest realm=\"example.test\", nonce=\"AQAAAYvL8wAAAAAAAAAAAABnb2Qtbm9uY2U\", algorithm=MD5, qop=\"auth\", stale=true",
                    "Content-Length: 0",
                ],
                "",
            ),
        ),
        (
            "bye-routes",
            msg(
                &[
                    "BYE sip:bob@198.51.100.20:5062 SIP/2.0",
                    "Via: SIP/2.0/TCP [2001:db8::10]:5060;branch=z9hG4bK-bye1;rport",
                    "Max-Forwards: 69",
                    "Route: <sip:192.0.2.1;lr>, <sip:192.0.2.2:5060;lr;transport=tcp>",
                    "From: <sip:alice@example.test>;tag=4242SIPpTag001",
                    "To: \"Bob\" <sip:bob@example.test>;tag=bob1",
                    "Call-ID: 1-4242@198.51.100.10",
                    "CSeq: 2 BYE",
                    "Content-Length: 0",
                ],
                "",
            ),
        ),
    ]
}

fn sip_parse() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = rfc_messages()
        .into_iter()
        .map(|(n, m)| (n.to_string(), m))
        .collect();
    out.push((
        "sipp-invite".into(),
        invite("caller", "2000", "4242-1-0", &[]),
    ));
    out.push((
        "sipp-register".into(),
        register("1000", "4242-1-0", 1, 3600),
    ));
    out.push((
        "ringing".into(),
        callee_response("180 Ringing", "z9hG4bKoh1"),
    ));
    out
}

fn sip_headers() -> Vec<(String, Vec<u8>)> {
    [
        "SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK-4242-1-0;rport",
        "SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bKx;received=2001:db8::2;maddr=10.0.0.1",
        "\"Bob \\\"B\\\"\" <sips:bob@Biloxi.Example.COM:5061;transport=tls>;tag=a6c85cf;expires=60;q=0.5",
        "<sip:alice@example.test;user=phone?Subject=hi>",
        "sip:+12125551212@gw.example.test;user=phone",
        "*",
        "314159 INVITE",
        "Digest username=\"alice\", realm=\"example.test\", nonce=\"AQAAAYvL8w\", uri=\"sip:example.test\", response=\"6629fae49393a05397450978507c4ef1\", algorithm=MD5, cnonce=\"0a4f113b\", qop=auth, nc=00000001",
        "Digest realm=\"example.test\", nonce=\"AQAAAYvL8w\", algorithm=SHA-256, qop=\"auth\", opaque=\"x\", stale=TRUE",
        "0.75",
    ]
    .iter()
    .enumerate()
    .map(|(i, v)| (format!("value-{i}"), v.as_bytes().to_vec()))
    .collect()
}

fn sip_framer() -> Vec<(String, Vec<u8>)> {
    let mut stream = vec![0x2a, 0x00];
    stream.extend_from_slice(b"\r\n\r\n");
    stream.extend(invite("caller", "2000", "4242-1-0", &[]));
    stream.extend_from_slice(b"\r\n");
    stream.extend(register("1000", "4242-1-1", 1, 3600));
    let mut big = vec![0x07, 0x01];
    big.extend(
        String::from_utf8(register("1000", "4242-1-2", 2, 60))
            .unwrap()
            .replace("Content-Length: 0\r\n\r\n", "l: 3000\r\n\r\n")
            .into_bytes(),
    );
    big.extend(std::iter::repeat_n(b'x', 3000));
    big.extend(register("1000", "4242-1-3", 3, 60));
    vec![
        ("two-messages-pings".into(), stream),
        ("oversized-then-one".into(), big),
    ]
}

fn sip_engine() -> Vec<(String, Vec<u8>)> {
    // Control bits: 0-1 where from, 2-4 clock step, 5 answer now, 6 authenticate, 7 fail.
    const ANSWER: u8 = 0x20;
    const AUTH: u8 = 0x40;
    let mut call = Vec::new();
    record(&mut call, ANSWER, &register("bob", "reg1", 1, 600));
    record(
        &mut call,
        ANSWER | AUTH | 3 << 2,
        &register("bob", "reg2", 2, 600),
    );
    record(
        &mut call,
        ANSWER | 1 << 2,
        &invite("alice", "bob", "inv1", &[]),
    );
    record(
        &mut call,
        ANSWER | AUTH,
        &invite("alice", "bob", "inv2", &[]),
    );
    record(
        &mut call,
        3 | 2 << 2,
        &callee_response("180 Ringing", "z9hG4bKoh1"),
    );
    record(&mut call, 3, &callee_response("200 OK", "z9hG4bKoh1"));
    let mut bye = Vec::new();
    record(&mut bye, ANSWER, &register("carol", "reg3", 1, 60));
    record(
        &mut bye,
        ANSWER | AUTH | 1,
        &register("carol", "reg4", 2, 60),
    );
    record(&mut bye, 2, &rfc_messages()[7].1);
    record(
        &mut bye,
        ANSWER | 0x80,
        &invite("dave", "carol", "inv3", &[]),
    );
    record(&mut bye, 0, &rfc_messages()[0].1);
    record(&mut bye, 5 << 2, &rfc_messages()[4].1);
    // Calls by number: alice registered under her number, a call to it (sip: form, and a
    // local form by example.test's dial plan), a call from a number (caller ID).
    let mut numbers = Vec::new();
    record(&mut numbers, ANSWER, &register("+15550101", "reg5", 1, 600));
    record(
        &mut numbers,
        ANSWER | AUTH,
        &register("+15550101", "reg6", 2, 600),
    );
    record(
        &mut numbers,
        ANSWER | AUTH,
        &invite("bob", "+15550101", "inv4", &[]),
    );
    record(
        &mut numbers,
        ANSWER | AUTH | 1 << 2,
        &invite("bob", "5550102", "inv5", &[]),
    );
    record(
        &mut numbers,
        ANSWER | AUTH,
        &invite("+15550101", "bob", "inv6", &[]),
    );
    vec![
        ("register-call".into(), call),
        ("register-bye-failures".into(), bye),
        ("call-by-number".into(), numbers),
    ]
}

fn member(name: &str, kind: Kind, roles: &[&str], ip: &str) -> Member {
    Member {
        name: name.into(),
        kind,
        roles: roles.iter().map(|r| Role::new(r).unwrap()).collect(),
        endpoints: vec![Endpoint {
            service: "sip".into(),
            addr: SocketAddr::new(ip.parse().unwrap(), 5060),
        }],
        since: 1_700_000_000_000,
        ip: ip.parse().unwrap(),
    }
}

fn status() -> NetworkStatus {
    NetworkStatus {
        term: 4,
        version: 12,
        manager: "manager1".into(),
        members: [
            member(
                "node1",
                Kind::Node,
                &["sip_proxy", "registrar"],
                "127.0.1.7",
            ),
            member("node2", Kind::Node, &["media_relay"], "fd00::2"),
            member("es1", Kind::Eventserver, &[], "127.0.1.1"),
        ]
        .into_iter()
        .map(std::sync::Arc::new)
        .collect(),
    }
}

fn wire_frame() -> Vec<(String, Vec<u8>)> {
    fn frames(kind: u8, frames: &[bytes::Bytes]) -> Vec<u8> {
        let mut out = vec![kind];
        for f in frames {
            out.extend_from_slice(f);
        }
        out
    }
    let session = SessionMember {
        name: "node1".into(),
        kind: Kind::Node,
        roles: vec![Role::new("registrar").unwrap()],
        endpoints: vec![],
        ip: "127.0.1.7".parse().unwrap(),
    };
    let account = AccountRecord {
        version: 3,
        enabled: true,
        ha1_md5: [1; 16],
        ha1_sha256: [2; 32],
        display_name: Some("Alice".into()),
    };
    vec![
        (
            "client-session".into(),
            frames(
                0,
                &[
                    encode_frame(&ClientMsg::Announce(Announce {
                        roles: vec![Role::new("sip_proxy").unwrap()],
                        endpoints: vec![Endpoint {
                            service: "lookup".into(),
                            addr: "127.0.1.7:9500".parse().unwrap(),
                        }],
                    })),
                    encode_frame(&ClientMsg::Subscribe(vec![Topic::Network, Topic::Crl])),
                    encode_frame(&ClientMsg::Publish {
                        seq: 9,
                        payload: Payload::Stats(Stats {
                            figures: vec![("bindings".into(), 12.0), ("calls".into(), 0.5)],
                        }),
                    }),
                    encode_frame(&ClientMsg::Leave),
                ],
            ),
        ),
        (
            "server-events".into(),
            frames(
                1,
                &[
                    encode_frame(&ServerMsg::Welcome {
                        server: "es1".into(),
                    }),
                    encode_frame(&ServerMsg::Event(Event {
                        origin: "manager1".into(),
                        origin_kind: Kind::Manager,
                        seq: 77,
                        payload: Payload::Network(status()),
                    })),
                    encode_frame(&ServerMsg::Event(Event {
                        origin: "es1".into(),
                        origin_kind: Kind::Eventserver,
                        seq: 78,
                        payload: Payload::Member(MemberEvent::Snapshot(vec![session.clone()])),
                    })),
                    encode_frame(&ServerMsg::Event(Event {
                        origin: "es1".into(),
                        origin_kind: Kind::Eventserver,
                        seq: 79,
                        payload: Payload::Log(LogEvent {
                            time_ms: 1,
                            level: Level::Warn,
                            text: "node3 lost".into(),
                        }),
                    })),
                    encode_frame(&ServerMsg::Refused {
                        reason: "no".into(),
                    }),
                ],
            ),
        ),
        ("status".into(), frames(2, &[encode_frame(&status())])),
        (
            "push-batch".into(),
            frames(
                3,
                &[encode_frame(&PushBatch {
                    ops: vec![
                        PushOp::Put {
                            aor: "alice@example.test".into(),
                            account: account.clone(),
                        },
                        PushOp::Alias {
                            alias: "a@example.test".into(),
                            target: "alice@example.test".into(),
                            version: 4,
                        },
                        PushOp::Remove {
                            aor: "bob@example.test".into(),
                            version: 5,
                        },
                    ],
                })],
            ),
        ),
        (
            "farm-request".into(),
            frames(
                5,
                &[
                    encode_frame(&FarmRequest::Farm),
                    encode_frame(&FarmRequest::Account {
                        aor: "alice@example.test".into(),
                    }),
                ],
            ),
        ),
        (
            "farm-reply".into(),
            frames(
                6,
                &[
                    encode_frame(&FarmReply::Farm(FarmInfo {
                        version: 9,
                        domains: vec!["example.test".into(), "other.test".into()],
                        nonce_key: None,
                        dial_plans: Vec::new(),
                    })),
                    encode_frame(&FarmReply::Account {
                        version: 9,
                        account: Some(account),
                    }),
                ],
            ),
        ),
    ]
}

fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn dns_answer() -> Vec<(String, Vec<u8>)> {
    let asks = [
        ("naptr", "example.test.", RecordType::NAPTR, Some(1232), 0u8),
        (
            "srv-udp",
            "_sip._udp.example.test.",
            RecordType::SRV,
            None,
            0,
        ),
        (
            "srv-tcp-over-tcp",
            "_sip._tcp.example.test.",
            RecordType::SRV,
            None,
            1,
        ),
        (
            "eventserver",
            "_eventserver._udp.example.test.",
            RecordType::SRV,
            Some(4096),
            0,
        ),
        ("a-node", "node001.example.test.", RecordType::A, None, 0),
        (
            "aaaa-node",
            "node6.example.test.",
            RecordType::AAAA,
            Some(512),
            0,
        ),
        ("soa", "example.test.", RecordType::SOA, None, 0),
        ("ns-other-domain", "other.test.", RecordType::NS, None, 0),
        ("nxdomain", "nobody.example.test.", RecordType::A, None, 0),
        ("refused", "example.com.", RecordType::A, None, 0),
        (
            "enum",
            "4.3.2.1.5.5.5.2.1.2.1.e164.arpa.",
            RecordType::NAPTR,
            None,
            0,
        ),
        (
            "enum-routed",
            "5.0.2.1.5.5.5.2.1.2.1.e164.arpa.",
            RecordType::NAPTR,
            Some(1232),
            0,
        ),
        (
            "enum-escaped-over-tcp",
            "6.5.4.3.2.1.0.3.9.4.e164.arpa.",
            RecordType::ANY,
            None,
            1,
        ),
        (
            "enum-block-prefix",
            "2.1.5.5.5.2.1.2.1.e164.arpa.",
            RecordType::NAPTR,
            None,
            0,
        ),
        ("enum-apex", "e164.arpa.", RecordType::NS, None, 0),
        ("before-status", "example.test.", RecordType::NAPTR, None, 2),
    ];
    asks.iter()
        .map(|(n, name, t, edns, sel)| {
            let mut q = vec![*sel];
            q.extend(query(name, *t, *edns));
            (n.to_string(), q)
        })
        .collect()
}

fn sdp_rewrite() -> Vec<(String, Vec<u8>)> {
    let bodies = [
        ("sipp", 0xffu8, SIPP_SDP.to_string()),
        ("rfc4475-two-streams", 0x01, TORTURE_SDP.to_string()),
        (
            "session-and-media-conn-rtcp",
            0x05,
            "v=0\r\no=- 1 1 IN IP4 198.51.100.10\r\ns=-\r\nc=IN IP4 198.51.100.10\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8 101\r\ni=voice\r\na=rtcp:49171 IN IP4 198.51.100.10\r\nm=video 51372 RTP/AVP 99\r\nc=IN IP6 2001:db8::10\r\na=rtcp:51400\r\nm=text 0 RTP/AVP 98\r\nm=audio 49180 TCP/RTP/AVP 0\r\n".into(),
        ),
        (
            "hold-bare-lf",
            0x03,
            "v=0\no=- 2 2 IN IP4 0.0.0.0\ns=-\nc=IN IP4 0.0.0.0\nt=0 0\nm=audio 49170 RTP/AVP 0\na=sendonly\nm=audio 49172 RTP/AVP 0\nc=IN IP4 198.51.100.11\n".into(),
        ),
    ];
    bodies
        .iter()
        .map(|(n, sel, body)| {
            let mut d = vec![*sel];
            d.extend_from_slice(body.as_bytes());
            (n.to_string(), d)
        })
        .collect()
}

fn lookup_line() -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "sip-thor-verbs".into(),
            b"lookup registrar for alice@example.test\r\nis_online 10.0.1.2 as registrar\r\nstatus\r\n"
                .to_vec(),
        ),
        (
            "more-verbs".into(),
            b"replicas registrar for sip:bob@Example.TEST:5060;transport=tcp 3\nmembers xcap-server\nowner media_relay for 1-4242@198.51.100.10\nholds registrar for ab\n\r\nlookup nosuchrole for x\r\nfrobnicate\r\nmembers sip_proxy\r\nlookup registrar for partial"
                .to_vec(),
        ),
    ]
}

fn config_toml() -> Vec<(String, Vec<u8>)> {
    let node = include_str!("../../examples/node.toml");
    let dns = include_str!("../../examples/dns.toml");
    vec![
        ("node-example".into(), node.as_bytes().to_vec()),
        (
            "node-example-overrides".into(),
            format!(
                "--set sip_port=5070\n--set quic.idle_timeout_ms=800\n--set eventservers=[\"127.0.0.1:8000\"]\n{node}"
            )
            .into_bytes(),
        ),
        ("dns-example".into(), format!("#dns\n{dns}").into_bytes()),
    ]
}

/// Every seed: `(target, file name, bytes)`.
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let per_target: [(&'static str, Vec<(String, Vec<u8>)>); 9] = [
        ("sip_parse", sip_parse()),
        ("sip_headers", sip_headers()),
        ("sip_framer", sip_framer()),
        ("sip_engine", sip_engine()),
        ("wire_frame", wire_frame()),
        ("dns_answer", dns_answer()),
        ("sdp_rewrite", sdp_rewrite()),
        ("lookup_line", lookup_line()),
        ("config_toml", config_toml()),
    ];
    per_target
        .into_iter()
        .flat_map(|(t, seeds)| {
            seeds
                .into_iter()
                .map(move |(n, b)| (t, format!("seed-{n}"), b))
        })
        .collect()
}
