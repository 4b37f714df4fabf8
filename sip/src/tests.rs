//! Message-level tests: real messages (RFC 3261, RFC 3665, RFC 4475, SIPp's), golden
//! round-trips, malformed inputs, the stream framer, and property tests.

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

/// Joins lines with CRLF and fills in `Content-Length: {len}` with the body's length.
pub(crate) fn msg(head: &[&str], body: &str) -> Vec<u8> {
    let mut s = String::new();
    for line in head {
        s.push_str(&line.replace("{len}", &body.len().to_string()));
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.push_str(body);
    s.into_bytes()
}

const SDP: &str = "v=0\r\no=alice 2890844526 2890844526 IN IP4 pc33.atlanta.com\r\ns=Session SDP\r\nc=IN IP4 pc33.atlanta.com\r\nt=0 0\r\nm=audio 49172 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

/// RFC 3261 section 24.2, F1.
pub(crate) fn rfc3261_invite() -> Vec<u8> {
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
        SDP,
    )
}

/// RFC 3261 section 24.2, F9 (200 OK after two proxies).
pub(crate) fn rfc3261_ok() -> Vec<u8> {
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
        SDP,
    )
}

/// RFC 3665 section 2.1, F1 (REGISTER over TLS).
pub(crate) fn rfc3665_register() -> Vec<u8> {
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
    )
}

/// SIPp's REGISTER as `bench/sipp/register.xml` sends it (user 1000, domain example.test).
pub(crate) fn sipp_register() -> Vec<u8> {
    msg(
        &[
            "REGISTER sip:example.test SIP/2.0",
            "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-4242-1-0",
            "Max-Forwards: 70",
            "From: <sip:1000@example.test>;tag=4242SIPpTag001",
            "To: <sip:1000@example.test>",
            "Call-ID: 1-4242@127.0.0.1",
            "CSeq: 1 REGISTER",
            "Contact: <sip:1000@127.0.0.1:5070;transport=UDP>",
            "Expires: 3600",
            "User-Agent: SIPp-bench",
            "Content-Length: 0",
        ],
        "",
    )
}

const SIPP_SDP: &str = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

/// SIPp's INVITE as `bench/sipp/uac.xml` sends it.
pub(crate) fn sipp_invite() -> Vec<u8> {
    msg(
        &[
            "INVITE sip:2000@example.test SIP/2.0",
            "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-4242-1-0",
            "Max-Forwards: 70",
            "From: <sip:caller@example.test>;tag=4242SIPpTag001",
            "To: <sip:2000@example.test>",
            "Call-ID: 1-4242@127.0.0.1",
            "CSeq: 1 INVITE",
            "Contact: <sip:caller@127.0.0.1:5061;transport=UDP>",
            "Subject: bench",
            "Content-Type: application/sdp",
            "Content-Length: {len}",
        ],
        SIPP_SDP,
    )
}

const TORTURE_SDP: &str = "v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.3\r\ns=-\r\nc=IN IP4 192.0.2.4\r\nt=0 0\r\nm=audio 49217 RTP/AVP 0 12\r\nm=video 3227 RTP/AVP 31\r\na=rtpmap:31 LPC\r\n";

/// RFC 4475 section 3.1.1.1 ("wsinv", a short tortuous INVITE): folding, odd white space,
/// compact forms, mixed case, escaped quotes.
pub(crate) fn torture_invite() -> Vec<u8> {
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
    )
}

fn request(data: &[u8]) -> Request {
    match parse(data) {
        Ok(Message::Request(r)) => r,
        other => panic!("expected a request, got {other:?}"),
    }
}

fn response(data: &[u8]) -> Response {
    match parse(data) {
        Ok(Message::Response(r)) => r,
        other => panic!("expected a response, got {other:?}"),
    }
}

fn text(b: &Bytes) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

#[test]
fn rfc3261_invite_fields() {
    let r = request(&rfc3261_invite());
    assert_eq!(r.method, Method::Invite);
    assert_eq!(r.uri.as_str(), "sip:bob@biloxi.com");
    let via = r.headers.via_top().unwrap();
    assert_eq!(via.transport, "UDP");
    assert_eq!(via.host, "pc33.atlanta.com");
    assert_eq!(via.port, None);
    assert_eq!(via.branch(), Some("z9hG4bKnashds8"));
    let from = r.headers.from().unwrap();
    assert_eq!(from.display().as_deref(), Some("Alice"));
    assert_eq!(from.uri_str(), "sip:alice@atlanta.com");
    assert_eq!(from.tag(), Some("1928301774"));
    let to = r.headers.to().unwrap();
    assert_eq!(to.tag(), None);
    assert_eq!(r.headers.call_id(), Some("a84b4c76e66710"));
    let cseq = r.headers.cseq().unwrap();
    assert_eq!((cseq.number, cseq.method), (314159, Method::Invite));
    assert_eq!(r.headers.max_forwards(), Some(70));
    assert_eq!(r.headers.content_type(), Some("application/sdp"));
    assert_eq!(r.headers.content_length(), Some(SDP.len()));
    assert_eq!(&r.body[..], SDP.as_bytes());
    let contacts: Vec<_> = r.headers.contacts().collect();
    assert_eq!(contacts.len(), 1);
    assert_eq!(r.to_aor().as_deref(), Some("bob@biloxi.com"));
}

#[test]
fn rfc3261_ok_three_vias() {
    let r = response(&rfc3261_ok());
    assert_eq!((r.status, r.reason.as_str()), (200, "OK"));
    let vias: Vec<_> = r.headers.vias().collect();
    assert_eq!(vias.len(), 3);
    assert_eq!(vias[2].received(), Some("192.0.2.1"));
    assert_eq!(vias[2].branch(), Some("z9hG4bK776asdhds"));
    assert_eq!(r.headers.to().unwrap().tag(), Some("a6c85cf"));
    let up = proxy::forward_response(&r).unwrap();
    assert_eq!(up.headers.vias().count(), 2);
    assert_eq!(
        up.headers.via_top().unwrap().host,
        "bigbox3.site3.atlanta.com"
    );
}

#[test]
fn sipp_messages_and_aor() {
    let reg = request(&sipp_register());
    assert_eq!(reg.method, Method::Register);
    assert_eq!(reg.headers.expires(), Some(3600));
    assert_eq!(reg.to_aor().as_deref(), Some("1000@example.test"));
    assert_eq!(
        reg.to_aor(),
        onehop_overlay::ring::canonical_aor("<sip:1000@example.test>")
    );
    let c = match reg.headers.contacts().next().unwrap() {
        Contact::Addr(a) => a,
        Contact::Wildcard => panic!("not a wildcard"),
    };
    assert_eq!(c.uri().param("transport"), Some("UDP"));
    let inv = request(&sipp_invite());
    assert_eq!(inv.headers.get("subject"), Some("bench"));
    assert_eq!(inv.to_aor().as_deref(), Some("2000@example.test"));
    let tls = request(&rfc3665_register());
    assert_eq!(tls.to_aor().as_deref(), Some("bob@biloxi.example.com"));
    assert!(tls.headers.via_top().unwrap().is_reliable());
}

#[test]
fn golden_round_trips_are_byte_exact() {
    for data in [
        rfc3261_invite(),
        rfc3261_ok(),
        rfc3665_register(),
        sipp_register(),
        sipp_invite(),
        torture_invite(),
    ] {
        let m = parse(&data).unwrap();
        assert_eq!(
            text(&m.to_bytes()),
            String::from_utf8(data.clone()).unwrap()
        );
        // Zero-copy parsing gives the same message.
        let shared = Bytes::from(data.clone());
        assert_eq!(parse_bytes(&shared, &Limits::default()).unwrap(), m);
    }
}

#[test]
fn torture_invite_is_read_correctly() {
    let r = request(&torture_invite());
    assert_eq!(r.uri.param("unknownparam"), Some(""));
    let to = r.headers.to().unwrap();
    assert_eq!(to.uri_str(), "sip:vivekg@chair-dnrc.example.com");
    assert_eq!(to.tag(), Some("1918181833n"));
    let from = r.headers.from().unwrap();
    assert_eq!(from.display().as_deref(), Some("J Rosenberg \\\""));
    assert_eq!(from.tag(), Some("98asjd8"));
    assert_eq!(r.headers.max_forwards(), Some(68));
    let cseq = r.headers.cseq().unwrap();
    assert_eq!((cseq.number, cseq.method), (9, Method::Invite));
    let vias: Vec<_> = r.headers.vias().collect();
    assert_eq!(vias.len(), 3);
    assert_eq!((vias[0].transport, vias[0].host), ("UDP", "192.0.2.2"));
    assert_eq!(vias[0].branch(), Some("390skdjuw"));
    assert!(!vias[0].has_rfc3261_branch());
    assert_eq!(vias[1].host, "spindle.example.com");
    assert_eq!(vias[1].branch(), Some("z9hG4bK9ikj8"));
    assert_eq!(vias[2].branch(), Some("z9hG4bK30239"));
    assert_eq!(r.headers.get("Subject"), Some(""));
    assert_eq!(
        r.headers.get("newfangledheader"),
        Some("newfangled value continued newfangled value")
    );
    let routes: Vec<_> = r.headers.routes().collect();
    assert_eq!(routes.len(), 1);
    assert!(routes[0].uri().is_loose_route());
    let Contact::Addr(m) = r.headers.contacts().next().unwrap() else {
        panic!("not a wildcard")
    };
    assert_eq!(m.display().as_deref(), Some("Quoted string \"\""));
    assert_eq!(m.param("newparam"), Some("newvalue"));
    assert_eq!(m.q(), Some(330));
    assert_eq!(&r.body[..], TORTURE_SDP.as_bytes());
    assert_eq!(r.to_aor().as_deref(), Some("vivekg@chair-dnrc.example.com"));
}

#[test]
fn proxy_edits_touch_only_the_edited_fields() {
    let data = torture_invite();
    let original = String::from_utf8(data.clone()).unwrap();
    let mut r = request(&data);
    r.headers.stamp_received("192.0.2.9:5099".parse().unwrap());
    r.headers
        .prepend_via("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKoh1");
    r.headers.prepend_record_route("<sip:10.0.0.1;lr>");
    assert_eq!(r.headers.decrement_max_forwards(), Some(67));
    assert!(r.headers.pop_route().is_some());
    let out = text(&r.to_bytes());
    // Untouched fields, folded ones included, come out exactly as they came in.
    for untouched in [
        "TO :\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\n",
        "cseq: 0009\r\n  INVITE\r\n",
        "NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n",
        "m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =\r\n      newvalue ;\r\n  secondparam ; q = 0.33\r\n",
        "v:  SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8  ,\r\n SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239\r\n",
    ] {
        assert!(original.contains(untouched));
        assert!(out.contains(untouched), "{untouched:?} changed in\n{out}");
    }
    assert!(out.contains("MaX-fOrWaRdS: 67\r\n"));
    assert!(!out.contains("Route:\r\n <sip:services"));
    // The new Via goes before the first Via field (wherever it is), the stamped Via is
    // rewritten in place, the Record-Route follows the last Via field.
    assert!(out.contains(
        "cseq: 0009\r\n  INVITE\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKoh1\r\nVia: SIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw;received=192.0.2.9\r\ns :\r\n"
    ), "{out}");
    assert!(
        out.contains(" z9hG4bK30239\r\nRecord-Route: <sip:10.0.0.1;lr>\r\nm:"),
        "{out}"
    );
    // The edited message parses back to the same fields.
    let again = request(out.as_bytes());
    assert_eq!(again.headers.vias().count(), 4);
    assert_eq!(again.headers.max_forwards(), Some(67));
    assert_eq!(again.body, r.body);
}

#[test]
fn compact_forms_and_lf_only() {
    let data = "OPTIONS sip:carol@chicago.com SIP/2.0\nv: SIP/2.0/TCP h.example.com;branch=z9hG4bKx\nMax-Forwards: 70\nf: <sip:a@b>;tag=1\nt: <sip:carol@chicago.com>\ni: x@y\nCSeq: 7 OPTIONS\nm: <sip:a@10.0.0.2>\nl: 0\nk: path\nc: text/plain\ns: hi\ne: gzip\n\n";
    let r = request(data.as_bytes());
    assert_eq!(r.headers.call_id(), Some("x@y"));
    assert_eq!(r.headers.content_length(), Some(0));
    assert_eq!(r.headers.get("Supported"), Some("path"));
    assert_eq!(r.headers.get("Content-Type"), Some("text/plain"));
    assert_eq!(r.headers.get("Subject"), Some("hi"));
    assert_eq!(r.headers.get("Content-Encoding"), Some("gzip"));
    assert_eq!(r.headers.contacts().count(), 1);
    // Written back with CRLF.
    assert!(text(&r.to_bytes()).contains("\r\nv: SIP/2.0/TCP h.example.com;branch=z9hG4bKx\r\n"));
}

#[test]
fn leading_crlf_and_extra_bytes() {
    let mut data = b"\r\n\r\n".to_vec();
    data.extend(sipp_register());
    data.extend(b"garbage after the body");
    let r = request(&data);
    assert!(r.body.is_empty());
    // A datagram without Content-Length takes the rest as its body.
    let mut nocl = rfc3665_register();
    let s = String::from_utf8(nocl.clone())
        .unwrap()
        .replace("Content-Length: 0\r\n", "");
    nocl = s.into_bytes();
    nocl.extend(b"abc");
    assert_eq!(&request(&nocl).body[..], b"abc");
}

fn reject(data: &[u8]) -> (u16, String, Box<Request>) {
    match parse(data) {
        Err(ParseError::Reject {
            status,
            reason,
            request,
        }) => (status, reason, request),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn without(data: Vec<u8>, header_prefix: &str) -> Vec<u8> {
    let s = String::from_utf8(data).unwrap();
    s.split("\r\n")
        .filter(|l| !l.starts_with(header_prefix))
        .collect::<Vec<_>>()
        .join("\r\n")
        .into_bytes()
}

fn replace(data: Vec<u8>, from: &str, to: &str) -> Vec<u8> {
    let s = String::from_utf8(data).unwrap();
    assert!(s.contains(from), "{from:?}");
    s.replacen(from, to, 1).into_bytes()
}

#[test]
fn missing_mandatory_headers_get_400_with_reason() {
    for (name, reason) in [
        ("To:", "Missing To header"),
        ("From:", "Missing From header"),
        ("Call-ID:", "Missing Call-ID header"),
        ("CSeq:", "Missing CSeq header"),
        ("Via:", "Missing Via header"),
        ("Max-Forwards:", "Missing Max-Forwards header"),
    ] {
        let (status, why, req) = reject(&without(sipp_register(), name));
        assert_eq!((status, why.as_str()), (400, reason));
        assert_eq!(req.method, Method::Register);
    }
    // Without Max-Forwards is fine when the limits allow it.
    let lenient = Limits {
        require_max_forwards: false,
        ..Limits::default()
    };
    assert!(parse_with(&without(sipp_register(), "Max-Forwards:"), &lenient).is_ok());
}

#[test]
fn bad_headers_get_400() {
    let cases = [
        (
            "CSeq: 1 REGISTER",
            "CSeq: 1 INVITE",
            "CSeq method does not match request method",
        ),
        (
            "CSeq: 1 REGISTER",
            "CSeq: one REGISTER",
            "Malformed CSeq header",
        ),
        (
            "CSeq: 1 REGISTER",
            "CSeq: 4294967296 REGISTER",
            "Malformed CSeq header",
        ),
        (
            "Max-Forwards: 70",
            "Max-Forwards: seventy",
            "Malformed Max-Forwards header",
        ),
        (
            "Content-Length: 0",
            "Content-Length: zero",
            "Malformed Content-Length header",
        ),
        (
            "Content-Length: 0",
            "Content-Length: 10",
            "Body shorter than Content-Length",
        ),
        (
            "To: <sip:1000@example.test>",
            "To: <sip:1000@example.test",
            "Malformed To header (malformed address: unterminated <)",
        ),
        (
            "From: <sip:1000@example.test>",
            "From: \"x <sip:a@b>",
            "Malformed From header (malformed address: unterminated display name)",
        ),
        (
            "Via: SIP/2.0/UDP 127.0.0.1:5070",
            "Via: SIP/2.0/UDP 127.0.0.1:70000",
            "Malformed Via header (malformed via: bad sent-by)",
        ),
        (
            "Call-ID: 1-4242@127.0.0.1",
            "Call-ID: a b",
            "Malformed Call-ID header",
        ),
        (
            "User-Agent: SIPp-bench",
            "User-Agent SIPp-bench",
            "Malformed header line",
        ),
        (
            "REGISTER sip:example.test SIP/2.0",
            "REGISTER sip: SIP/2.0",
            "Bad Request-URI (sip uri has no host)",
        ),
    ];
    for (from, to, reason) in cases {
        let (status, why, _) = reject(&replace(sipp_register(), from, to));
        assert_eq!((status, why.as_str()), (400, reason), "{to}");
    }
    let (status, _, _) = reject(&replace(sipp_register(), "SIP/2.0\r\n", "SIP/3.0\r\n"));
    assert_eq!(status, 505);
    let bad_utf8 = replace(sipp_register(), "SIPp-bench", "SIPp-\u{1}bench")
        .into_iter()
        .map(|b| if b == 1 { 0xff } else { b })
        .collect::<Vec<_>>();
    let (status, why, _) = reject(&bad_utf8);
    assert_eq!(
        (status, why.as_str()),
        (400, "Header section is not valid UTF-8")
    );
}

#[test]
fn rejection_response_copies_the_request() {
    let err = parse(&without(sipp_register(), "Max-Forwards:")).unwrap_err();
    assert_eq!(err.status(), Some(400));
    let resp = err.response().unwrap();
    assert_eq!(resp.status, 400);
    assert_eq!(resp.reason, "Missing Max-Forwards header");
    assert_eq!(resp.headers.call_id(), Some("1-4242@127.0.0.1"));
    assert!(resp.headers.to().unwrap().tag().is_some());
    // No Via: nothing can be sent back.
    assert!(parse(&without(sipp_register(), "Via:"))
        .unwrap_err()
        .response()
        .is_none());
}

#[test]
fn unanswerable_inputs() {
    for data in [
        &b""[..],
        b"\r\n\r\n",
        b"hello",
        b"INVITE sip:a@b\r\n\r\n",
        b"INVITE sip:a@b HTTP/1.1\r\n\r\n",
        b"IN VITE sip:a@b SIP/2.0 x\r\n\r\n",
        b"SIP/2.0 2000 OK\r\n\r\n",
        b"SIP/1.0 200 OK\r\n\r\n",
        b"\xff\xfe\r\n\r\n",
        // Found by the property test: a multi-byte character across byte 4.
        "abc\u{e9} sip:x SIP/2.0\r\n\r\n".as_bytes(),
        "SIP/2.0 200 \u{e9}\r\n\r\n".as_bytes(),
    ] {
        assert!(
            matches!(parse(data), Err(ParseError::Unanswerable(_))),
            "{:?}",
            String::from_utf8_lossy(data)
        );
    }
    // A response missing a mandatory header is dropped, never answered.
    let err = parse(&without(rfc3261_ok(), "CSeq:")).unwrap_err();
    assert_eq!(err.status(), None);
    assert!(err.response().is_none());
}

#[test]
fn oversized_request_gets_513() {
    let body = "x".repeat(70 * 1024);
    let data = msg(
        &[
            "MESSAGE sip:a@example.test SIP/2.0",
            "Via: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKbig",
            "Max-Forwards: 70",
            "From: <sip:b@example.test>;tag=1",
            "To: <sip:a@example.test>",
            "Call-ID: big",
            "CSeq: 1 MESSAGE",
            "Content-Length: {len}",
        ],
        &body,
    );
    let err = parse(&data).unwrap_err();
    assert_eq!(err.status(), Some(513));
    assert_eq!(err.response().unwrap().status, 513);
    let small = Limits {
        max_message: 128,
        ..Limits::default()
    };
    assert_eq!(
        parse_with(&sipp_register(), &small).unwrap_err().status(),
        Some(513)
    );
    assert!(matches!(
        parse_with(&rfc3261_ok(), &small),
        Err(ParseError::Unanswerable(_))
    ));
}

#[test]
fn reply_follows_8_2_6() {
    let mut data = sipp_invite();
    data = replace(data, "Subject: bench", "Timestamp: 54");
    let inv = request(&data);
    let trying = reply(&inv, status::TRYING, None, None);
    assert_eq!(trying.reason, "Trying");
    assert_eq!(trying.headers.to().unwrap().tag(), None);
    assert_eq!(trying.headers.get("Timestamp"), Some("54"));
    let busy = reply(&inv, status::BUSY_HERE, None, None);
    assert_eq!(busy.reason, "Busy Here");
    assert!(busy.headers.get("Timestamp").is_none());
    let tag = busy.headers.to().unwrap().tag().unwrap().to_owned();
    // The same tag for a retransmission; the given tag when one is given.
    assert_eq!(
        reply(&inv, 486, None, None).headers.to().unwrap().tag(),
        Some(&*tag)
    );
    assert_eq!(
        reply(&inv, 404, None, Some("abc"))
            .headers
            .to()
            .unwrap()
            .tag(),
        Some("abc")
    );
    let text = text(&busy.to_bytes());
    let expected_prefix = "SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-4242-1-0\r\nFrom: <sip:caller@example.test>;tag=4242SIPpTag001\r\nTo: <sip:2000@example.test>;tag=";
    assert!(text.starts_with(expected_prefix), "{text}");
    assert!(
        text.ends_with("Call-ID: 1-4242@127.0.0.1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    );
    // A To tag already present is kept.
    let ok = response(&rfc3261_ok());
    let mut req = inv.clone();
    req.headers.set("To", ok.headers.get("To").unwrap());
    assert_eq!(
        reply(&req, 200, None, None).headers.to().unwrap().tag(),
        Some("a6c85cf")
    );
    for code in [
        100, 200, 400, 403, 404, 408, 423, 480, 482, 483, 486, 487, 500, 503, 513,
    ] {
        assert!(!response::reason_phrase(code).is_empty());
    }
}

#[test]
fn framer_splits_a_stream() {
    let mut stream = b"\r\n\r\n".to_vec();
    stream.extend(rfc3261_invite());
    stream.extend(b"\r\n");
    stream.extend(sipp_register());
    let mut f = StreamFramer::new(&Limits::default());
    // Byte by byte.
    let mut frames = Vec::new();
    for b in &stream {
        f.feed(&[*b]).unwrap();
        while let Some(frame) = f.next_frame().unwrap() {
            frames.push(frame);
        }
    }
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[0], Frame::Ping);
    assert_eq!(frames[1], Frame::Message(Bytes::from(rfc3261_invite())));
    assert_eq!(frames[2], Frame::Message(Bytes::from(sipp_register())));
    assert_eq!(f.buffered(), 0);
    // All at once.
    let mut f = StreamFramer::new(&Limits::default());
    f.feed(&stream).unwrap();
    let mut n = 0;
    while let Some(frame) = f.next_frame().unwrap() {
        if let Frame::Message(m) = frame {
            parse_bytes(&m, &Limits::default()).unwrap();
            n += 1;
        }
    }
    assert_eq!(n, 2);
}

#[test]
fn framer_ping_split_across_reads() {
    let mut f = StreamFramer::new(&Limits::default());
    f.feed(b"\r\n").unwrap();
    assert_eq!(f.next_frame(), Ok(None));
    f.feed(b"\r\n").unwrap();
    assert_eq!(f.next_frame(), Ok(Some(Frame::Ping)));
    assert_eq!(f.next_frame(), Ok(None));
    // A lone CRLF before a message is skipped.
    f.feed(b"\r\n").unwrap();
    f.feed(&sipp_register()).unwrap();
    assert_eq!(
        f.next_frame(),
        Ok(Some(Frame::Message(Bytes::from(sipp_register()))))
    );
}

#[test]
fn list_headers_split_at_top_level_commas() {
    let data = replace(
        sipp_register(),
        "Contact: <sip:1000@127.0.0.1:5070;transport=UDP>",
        "Contact: \"Doe, John\" <sip:a@10.0.0.1>;expires=60, <sip:a@10.0.0.2>;x=\"1,2\"\r\nm: sip:a@10.0.0.3;q=0.1",
    );
    let r = request(&data);
    let uris: Vec<_> = r
        .headers
        .contacts()
        .map(|c| match c {
            Contact::Addr(a) => a.uri_str().to_owned(),
            Contact::Wildcard => "*".into(),
        })
        .collect();
    assert_eq!(uris, ["sip:a@10.0.0.1", "sip:a@10.0.0.2", "sip:a@10.0.0.3"]);
}

#[test]
fn framer_errors() {
    let mut f = StreamFramer::new(&Limits::default());
    f.feed(&without(sipp_register(), "Content-Length:"))
        .unwrap();
    assert_eq!(f.next_frame(), Err(FrameError::MissingContentLength));

    let mut f = StreamFramer::new(&Limits::default());
    f.feed(&replace(sipp_register(), "Content-Length: 0", "l: -1"))
        .unwrap();
    assert_eq!(f.next_frame(), Err(FrameError::BadContentLength));

    let small = Limits {
        max_message: 200,
        ..Limits::default()
    };
    let mut f = StreamFramer::new(&small);
    f.feed(&sipp_register()).unwrap();
    assert_eq!(f.next_frame(), Err(FrameError::TooLarge { limit: 200 }));

    // A header section that never ends.
    let mut f = StreamFramer::new(&small);
    f.feed(&[b'a'; 201]).unwrap();
    assert_eq!(f.next_frame(), Err(FrameError::TooLarge { limit: 200 }));

    // The buffer itself is bounded.
    let mut f = StreamFramer::new(&small);
    assert_eq!(
        f.feed(&[b'a'; 401]),
        Err(FrameError::TooLarge { limit: 400 })
    );

    // A body larger than the cap is refused before it is buffered.
    let mut f = StreamFramer::new(&small);
    f.feed(b"MESSAGE sip:a@b SIP/2.0\r\nl: 100000\r\n\r\n")
        .unwrap();
    assert_eq!(f.next_frame(), Err(FrameError::TooLarge { limit: 200 }));
}

fn goldens() -> Vec<Vec<u8>> {
    vec![
        rfc3261_invite(),
        rfc3261_ok(),
        rfc3665_register(),
        sipp_register(),
        sipp_invite(),
        torture_invite(),
    ]
}

/// Parses, and for what parses checks that serialising and parsing again is stable.
fn check_no_panic_and_stable(data: &[u8]) {
    if let Ok(m) = parse(data) {
        let once = m.to_bytes();
        let again = parse(&once).expect("a serialised message parses");
        assert_eq!(again.to_bytes(), once);
        // The accessors never panic either.
        let h = again.headers();
        let _ = (h.via_top(), h.from(), h.to(), h.cseq(), h.expires());
        let _ = h.contacts().count() + h.routes().count() + h.record_routes().count();
        if let Message::Request(r) = &again {
            let _ = reply(r, 400, None, None);
            let _ = r.to_aor();
            check_request_paths(r);
        }
    }
    // A rejected request is answered from what could be read.
    if let Err(e) = parse(data) {
        let _ = e.response();
        if let ParseError::Reject { request, .. } = &e {
            check_request_paths(request);
        }
    }
    let mut f = StreamFramer::new(&Limits::default());
    if f.feed(data).is_ok() {
        while let Ok(Some(_)) = f.next_frame() {}
    }
}

/// The core's entry points after parsing (section 16.3 validation, the registrar's reading
/// of a REGISTER) and the responses they build never panic.
fn check_request_paths(r: &Request) {
    let local = proxy::LocalAddrs::new(&["127.0.0.1:5060".parse().unwrap()], &["example.test"]);
    if let Err(rejection) = proxy::validate_request(r, &local) {
        let _ = rejection.response(r);
    }
    let _ = proxy::answered_here(r, &local);
    let _ = proxy::compute_branch(r, &r.uri);
    let source = "192.0.2.1:5060".parse().ok();
    if let Err(e) = registrar::RegisterInfo::from_request(r, None, source) {
        let _ = e.response(r);
    }
    let mut stamped = r.clone();
    if let Some(src) = source {
        proxy::stamp_received(&mut stamped, src);
    }
    if let Some(v) = stamped.headers.via_top() {
        let _ = v.response_target();
    }
    let _ = stamped.uri.equivalent(&r.uri);
}

proptest! {
    // Failures are reported, not persisted to a regressions file: shrunk cases are added
    // to the unit tests above instead.
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        check_no_panic_and_stable(&data);
    }

    #[test]
    fn mutated_messages_never_panic(
        which in 0usize..6,
        edits in proptest::collection::vec((any::<usize>(), 0u8..3, any::<u8>()), 1..12),
    ) {
        let mut data = goldens().swap_remove(which);
        for (pos, op, byte) in edits {
            if data.is_empty() {
                break;
            }
            let i = pos % data.len();
            // Bias the inserted bytes toward the characters the grammar cares about.
            let b = b" \t\r\n:;,<>\"=@/\\*0123456789z"[byte as usize % 26];
            match op {
                0 => data[i] = b,
                1 => data.insert(i, b),
                _ => {
                    data.remove(i);
                }
            }
        }
        check_no_panic_and_stable(&data);
    }

    #[test]
    fn inserted_headers_never_panic(
        which in 0usize..6,
        name in 0usize..16,
        value in "[ -~\t]{0,40}",
    ) {
        // Any value under a header the core reads (long or compact spelling).
        const NAMES: [&str; 16] = [
            "Via", "v", "From", "t", "i", "CSeq", "Max-Forwards", "l", "m", "Route",
            "Record-Route", "Require", "Proxy-Require", "Expires", "Contact", "Supported",
        ];
        let data = String::from_utf8_lossy(&goldens().swap_remove(which)).into_owned();
        let nl = data.find("\r\n").unwrap_or(0);
        let data = format!("{}\r\n{}: {value}{}", &data[..nl], NAMES[name], &data[nl..]);
        check_no_panic_and_stable(data.as_bytes());
    }

    #[test]
    fn sliced_streams_frame_the_same(cuts in proptest::collection::vec(1usize..50, 1..40)) {
        let mut stream = Vec::new();
        for g in [rfc3261_invite(), sipp_register(), sipp_invite(), torture_invite()] {
            stream.extend(g);
        }
        let mut f = StreamFramer::new(&Limits::default());
        let mut got = Vec::new();
        let mut rest = &stream[..];
        let mut cuts = cuts.into_iter().cycle();
        while !rest.is_empty() {
            let n = cuts.next().unwrap().min(rest.len());
            f.feed(&rest[..n]).unwrap();
            rest = &rest[n..];
            while let Some(Frame::Message(m)) = f.next_frame().unwrap() {
                got.push(m);
            }
        }
        prop_assert_eq!(got.len(), 4);
        prop_assert_eq!(got.concat(), stream);
    }
}
