//! Issue 9: strict where RFC 3261 is strict, liberal where it allows it. Each rule of the
//! grammar (section 25) and of the checks of sections 8.2 and 16.3 has a message that breaks
//! it here, with the exact status and reason phrase; each leniency the grammar allows has a
//! message that uses it, with what the typed accessors read from it.

use crate::tests::{msg, sipp_invite, sipp_register};
use crate::{parse, Message, Method, ParseError, Request};

/// The request `data` parses to.
fn request(data: &[u8]) -> Request {
    match parse(data) {
        Ok(Message::Request(r)) => r,
        other => panic!("expected a request, got {other:?}"),
    }
}

/// The status and reason `data` is rejected with; also checks that the response built
/// from the rejection carries them.
fn rejected(data: &[u8]) -> (u16, String) {
    match parse(data) {
        Err(e @ ParseError::Reject { .. }) => {
            let resp = e.response().expect("an answerable rejection");
            let ParseError::Reject { status, reason, .. } = e else {
                unreachable!()
            };
            assert_eq!(
                (resp.status, resp.reason.as_str()),
                (status, reason.as_str())
            );
            (status, reason)
        }
        other => panic!(
            "expected a rejection of {:?}, got {other:?}",
            String::from_utf8_lossy(data)
        ),
    }
}

fn edit(data: Vec<u8>, from: &str, to: &str) -> Vec<u8> {
    let s = String::from_utf8(data).unwrap();
    assert!(s.contains(from), "{from:?}");
    s.replacen(from, to, 1).into_bytes()
}

/// Adds a header line after the request line.
fn with_line(data: Vec<u8>, line: &str) -> Vec<u8> {
    let s = String::from_utf8(data).unwrap();
    let nl = s.find("\r\n").unwrap();
    format!("{}\r\n{line}{}", &s[..nl], &s[nl..]).into_bytes()
}

#[test]
fn repeated_single_valued_headers_get_400_duplicate() {
    for (line, reason) in [
        ("To: <sip:2000@example.test>", "Duplicate To header"),
        ("t: <sip:2000@example.test>", "Duplicate To header"),
        ("From: <sip:x@example.test>;tag=9", "Duplicate From header"),
        ("f: <sip:x@example.test>;tag=9", "Duplicate From header"),
        ("Call-ID: other@host", "Duplicate Call-ID header"),
        ("i: other@host", "Duplicate Call-ID header"),
        ("CALL-id: other@host", "Duplicate Call-ID header"),
        ("CSeq: 1 INVITE", "Duplicate CSeq header"),
        ("Max-Forwards: 70", "Duplicate Max-Forwards header"),
        ("Content-Length: 129", "Duplicate Content-Length header"),
        ("l: 129", "Duplicate Content-Length header"),
        ("c: application/sdp", "Duplicate Content-Type header"),
        ("Expires: 60\r\nExpires: 60", "Duplicate Expires header"),
    ] {
        let data = with_line(sipp_invite(), line);
        assert_eq!(rejected(&data), (400, reason.to_owned()), "{line}");
    }
    // List headers may repeat, in any spelling.
    let data = with_line(sipp_invite(), "v: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKup");
    assert_eq!(request(&data).headers.vias().count(), 2);
    let data = with_line(sipp_invite(), "m: <sip:other@10.0.0.9>");
    assert_eq!(request(&data).headers.contacts().count(), 2);
}

#[test]
fn cseq_rules() {
    for (cseq, reason) in [
        (
            "CSeq: 1 REGISTER",
            "CSeq method does not match request method",
        ),
        // Methods are case-sensitive (section 7.1).
        (
            "CSeq: 1 invite",
            "CSeq method does not match request method",
        ),
        ("CSeq: 4294967296 INVITE", "Malformed CSeq header"),
        ("CSeq: 2147483648 INVITE", "Malformed CSeq header"),
        ("CSeq: -1 INVITE", "Malformed CSeq header"),
        ("CSeq: +1 INVITE", "Malformed CSeq header"),
        ("CSeq: INVITE", "Malformed CSeq header"),
        ("CSeq: 1", "Malformed CSeq header"),
        ("CSeq: 1 INVITE, 2 INVITE", "Malformed CSeq header"),
    ] {
        let data = edit(sipp_invite(), "CSeq: 1 INVITE", cseq);
        assert_eq!(rejected(&data), (400, reason.to_owned()), "{cseq}");
    }
    // The largest number allowed, and LWS between the parts.
    let data = edit(
        sipp_invite(),
        "CSeq: 1 INVITE",
        "CSeq:  2147483647 \t INVITE",
    );
    assert_eq!(request(&data).headers.cseq().unwrap().number, 2_147_483_647);
}

#[test]
fn max_forwards_rules() {
    for bad in ["-1", "+1", "seventy", "256", "99999999999", "1 2", ""] {
        let data = edit(
            sipp_invite(),
            "Max-Forwards: 70",
            &format!("Max-Forwards: {bad}"),
        );
        assert_eq!(
            rejected(&data),
            (400, "Malformed Max-Forwards header".to_owned()),
            "{bad:?}"
        );
    }
    let data = edit(sipp_invite(), "Max-Forwards: 70", "max-forwards: 0255");
    assert_eq!(request(&data).headers.max_forwards(), Some(255));
}

#[test]
fn content_length_rules() {
    for (cl, reason) in [
        ("Content-Length: 130", "Body shorter than Content-Length"),
        ("Content-Length: +129", "Malformed Content-Length header"),
        ("Content-Length: -1", "Malformed Content-Length header"),
        ("Content-Length: 12 9", "Malformed Content-Length header"),
        ("Content-Length: 0x81", "Malformed Content-Length header"),
    ] {
        let data = edit(sipp_invite(), "Content-Length: 129", cl);
        assert_eq!(rejected(&data), (400, reason.to_owned()), "{cl}");
    }
    // A shorter Content-Length frames the body; the extra bytes are dropped (18.3).
    let data = edit(sipp_invite(), "Content-Length: 129", "l: 4");
    assert_eq!(&request(&data).body[..], b"v=0\r");
}

#[test]
fn call_id_grammar() {
    for bad in [
        "a b",
        "a@b@c",
        "@host",
        "x@",
        "caf\u{e9}",
        "a,b",
        "a;b",
        "a#b",
    ] {
        let data = edit(
            sipp_invite(),
            "Call-ID: 1-4242@127.0.0.1",
            &format!("Call-ID: {bad}"),
        );
        assert_eq!(
            rejected(&data),
            (400, "Malformed Call-ID header".to_owned()),
            "{bad:?}"
        );
    }
    // Every character `word` allows.
    let odd = "a-.!%*_+`'~()<>:\\\"/[]?{}9@[2001:db8::1]";
    let data = edit(
        sipp_invite(),
        "Call-ID: 1-4242@127.0.0.1",
        &format!("i: {odd}"),
    );
    assert_eq!(request(&data).headers.call_id(), Some(odd));
}

#[test]
fn from_and_to_must_be_addresses() {
    for (from, to, reason) in [
        (
            "To: <sip:2000@example.test>",
            "To: sip:2000@example.test>",
            "Malformed To header (malformed uri: uri contains invalid characters)",
        ),
        (
            "To: <sip:2000@example.test>",
            "To: Bob",
            "Malformed To header (malformed uri: uri has no scheme)",
        ),
        (
            "From: <sip:caller@example.test>;tag=4242SIPpTag001",
            "From: \"Bob\" sip:bob@example.test",
            "Malformed From header (malformed address: display name without <uri>)",
        ),
        (
            "From: <sip:caller@example.test>;tag=4242SIPpTag001",
            "From: <sip:a@b>, <sip:c@d>",
            "Malformed From header (malformed address: text after >)",
        ),
    ] {
        let data = edit(sipp_invite(), from, to);
        assert_eq!(rejected(&data), (400, reason.to_owned()), "{to}");
    }
}

#[test]
fn request_line_rules() {
    // Wrong token count and a method that is not a token: 400 when there is a Via to
    // answer along.
    for (line, status, reason) in [
        (
            "INVITE sip:2000@example.test extra SIP/2.0",
            400,
            "Malformed Request-Line",
        ),
        (
            "INVITE sip:2000 @example.test SIP/2.0",
            400,
            "Malformed Request-Line",
        ),
        (
            "INV@ITE sip:2000@example.test SIP/2.0",
            400,
            "Malformed Method",
        ),
        (
            "INVITE sip:2000@example.test SIP/2.x",
            400,
            "Malformed SIP-Version",
        ),
        (
            "INVITE sip:2000@example.test SIP/20",
            400,
            "Malformed SIP-Version",
        ),
        (
            "INVITE sip:2000@example.test SIP/3.0",
            505,
            "Version Not Supported",
        ),
        (
            "INVITE sip:2000@example.test SIP/2.1",
            505,
            "Version Not Supported",
        ),
        (
            "INVITE sip:2000@example.test SIP/2.00",
            505,
            "Version Not Supported",
        ),
        (
            "INVITE sip:2000@example.test SIP/1.0",
            505,
            "Version Not Supported",
        ),
    ] {
        let data = edit(sipp_invite(), "INVITE sip:2000@example.test SIP/2.0", line);
        assert_eq!(rejected(&data), (status, reason.to_owned()), "{line}");
    }
    // "SIP" is case-insensitive in the version (section 7.1), and runs of white space
    // are read as one separator.
    let data = edit(
        sipp_invite(),
        "INVITE sip:2000@example.test SIP/2.0",
        "INVITE  sip:2000@example.test \tsip/2.0",
    );
    assert_eq!(request(&data).uri.as_str(), "sip:2000@example.test");
    // Methods are case-sensitive: `invite` is an extension method, not INVITE.
    let data = edit(
        edit(sipp_invite(), "INVITE sip:", "invite sip:"),
        "CSeq: 1 INVITE",
        "CSeq: 1 invite",
    );
    assert_eq!(request(&data).method, Method::Other("invite".into()));
    // Without a Via nothing can be answered: dropped.
    for data in [
        &b"INVITE sip:a@b x SIP/2.0\r\nTo: <sip:a@b>\r\n\r\n"[..],
        b"INV@ITE sip:a@b SIP/2.0\r\n\r\n",
    ] {
        assert!(matches!(parse(data), Err(ParseError::Unanswerable(_))));
    }
}

#[test]
fn missing_headers_in_any_spelling() {
    // A request whose only Call-ID is compact is complete; one without is not.
    let data = edit(sipp_register(), "Call-ID:", "i:");
    assert_eq!(request(&data).headers.call_id(), Some("1-4242@127.0.0.1"));
    let data = edit(sipp_register(), "Call-ID: 1-4242@127.0.0.1\r\n", "");
    assert_eq!(rejected(&data), (400, "Missing Call-ID header".to_owned()));
    let data = edit(
        sipp_register(),
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-4242-1-0\r\n",
        "",
    );
    assert!(parse(&data).unwrap_err().response().is_none());
}

// ----- liberal where the grammar allows -----

#[test]
fn header_names_any_case_and_compact() {
    let data = msg(
        &[
            "MESSAGE sip:2000@example.test SIP/2.0",
            "v: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKc1",
            "mAX-fORWARDS : 10",
            "F: <sip:a@example.test>;TAG=x1",
            "T: <sip:2000@example.test>",
            "I: c1@10.0.0.1",
            "cseq: 3 MESSAGE",
            "C: text/plain",
            "L: {len}",
        ],
        "hi",
    );
    let r = request(&data);
    let h = &r.headers;
    assert_eq!(h.via_top().unwrap().branch(), Some("z9hG4bKc1"));
    assert_eq!(h.max_forwards(), Some(10));
    // Parameter names are case-insensitive, values as written.
    assert_eq!(h.from().unwrap().tag(), Some("x1"));
    assert_eq!(h.call_id(), Some("c1@10.0.0.1"));
    assert_eq!(h.cseq().unwrap().number, 3);
    assert_eq!(h.content_type(), Some("text/plain"));
    assert_eq!(&r.body[..], b"hi");
}

#[test]
fn folded_headers_are_joined() {
    let data = msg(
        &[
            "OPTIONS sip:example.test SIP/2.0",
            "Via: SIP/2.0/UDP 10.0.0.1:5060",
            "\t;branch=z9hG4bKfold",
            "Max-Forwards:",
            "  70",
            "From:",
            " \"A\"",
            "\t<sip:a@example.test>;tag=f1",
            "To: <sip:example.test>",
            "Call-ID: fold@10.0.0.1",
            "CSeq: 1",
            "  OPTIONS",
            "Content-Length: 0",
        ],
        "",
    );
    let r = request(&data);
    let h = &r.headers;
    assert_eq!(h.via_top().unwrap().branch(), Some("z9hG4bKfold"));
    assert_eq!(h.max_forwards(), Some(70));
    let from = h.from().unwrap();
    assert_eq!(from.display().as_deref(), Some("A"));
    assert_eq!(from.tag(), Some("f1"));
    assert_eq!(h.cseq().unwrap().method, Method::Options);
    // Written back as received.
    assert_eq!(&r.to_bytes()[..], &data[..]);
}

#[test]
fn list_headers_in_one_field_or_many() {
    let data = msg(
        &[
            "BYE sip:2000@10.0.0.2 SIP/2.0",
            "Via: SIP/2.0/UDP p1.example.test;branch=z9hG4bK1, SIP/2.0/TCP p2.example.test:5070;branch=z9hG4bK2",
            "v: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK3",
            "Max-Forwards: 70",
            "Route: <sip:p3.example.test;lr>, <sip:p4.example.test;lr>",
            "Route: <sip:p5.example.test;lr>",
            "Record-Route: <sip:r1.example.test;lr>,<sip:r2.example.test;lr>",
            "From: <sip:a@example.test>;tag=1",
            "To: <sip:2000@example.test>;tag=2",
            "Call-ID: list@10.0.0.1",
            "CSeq: 2 BYE",
            "Content-Length: 0",
        ],
        "",
    );
    let r = request(&data);
    let h = &r.headers;
    let vias: Vec<_> = h.vias().map(|v| v.host).collect();
    assert_eq!(vias, ["p1.example.test", "p2.example.test", "10.0.0.1"]);
    let routes: Vec<_> = h.routes().map(|a| a.uri_str()).collect();
    assert_eq!(
        routes,
        [
            "sip:p3.example.test;lr",
            "sip:p4.example.test;lr",
            "sip:p5.example.test;lr"
        ]
    );
    assert_eq!(h.record_routes().count(), 2);
}

#[test]
fn quoted_display_names_with_escapes() {
    let data = edit(
        sipp_invite(),
        "From: <sip:caller@example.test>;tag=4242SIPpTag001",
        "From: \"Call \\\"me\\\" \\\\ <maybe>; ok, fine\" <sip:caller@example.test>;tag=q1",
    );
    let r = request(&data);
    let from = r.headers.from().unwrap();
    assert_eq!(
        from.display().as_deref(),
        Some("Call \"me\" \\ <maybe>; ok, fine")
    );
    assert_eq!(from.uri_str(), "sip:caller@example.test");
    assert_eq!(from.tag(), Some("q1"));
    // An unquoted display name (tokens and LWS) is fine too.
    let data = edit(
        sipp_invite(),
        "To: <sip:2000@example.test>",
        "To: Bob  Smith <sip:2000@example.test>",
    );
    assert_eq!(
        request(&data).headers.to().unwrap().display().as_deref(),
        Some("Bob  Smith")
    );
}

#[test]
fn escaped_request_uri_is_kept_and_compared_per_19_1_4() {
    let data = edit(
        sipp_invite(),
        "INVITE sip:2000@example.test SIP/2.0",
        "INVITE sip:%32000@EXAMPLE.test;Transport=UDP SIP/2.0",
    );
    let r = request(&data);
    assert_eq!(r.uri.user(), Some("%32000"));
    assert!(r
        .uri
        .equivalent(&crate::Uri::parse("sip:2000@example.test;transport=udp").unwrap()));
}
