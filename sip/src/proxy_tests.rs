//! Proxy helpers: validation, forwarding, loops and spirals, routes, response selection.

use super::*;
use crate::response::reply;
use crate::tests::{msg, sipp_invite};
use crate::Method;
use crate::{parse, Message};

fn req(data: &[u8]) -> Request {
    match parse(data).unwrap() {
        Message::Request(r) => r,
        Message::Response(_) => unreachable!(),
    }
}

fn local() -> LocalAddrs {
    let mut l = LocalAddrs::new(&["127.0.1.7:5060".parse().unwrap()], &["example.test"]);
    l.add_addr("node1.example.test", 5060);
    l
}

fn our_via(branch: Option<&str>) -> ViaParams {
    ViaParams {
        host: "127.0.1.7".into(),
        port: 5060,
        transport: Transport::Udp,
        branch: branch.map(str::to_owned),
        rport: false,
    }
}

fn uri(s: &str) -> Uri {
    Uri::parse(s).unwrap()
}

#[test]
fn validation() {
    let l = local();
    let mut inv = req(&sipp_invite());
    assert_eq!(validate_request(&inv, &l), Ok(()));
    inv.headers.set("Max-Forwards", "0");
    let err = validate_request(&inv, &l).unwrap_err();
    assert_eq!(err.status, 483);
    assert_eq!(err.response(&inv).status, 483);
    inv.headers.set("Max-Forwards", "1");
    inv.uri = uri("mailto:a@example.test");
    assert_eq!(validate_request(&inv, &l).unwrap_err().status, 416);
    // Proxy-Require with an option tag we do not support: 420 (RFC 3261 16.3 step 5; this
    // test used to assert it was ignored, which 16.3 does not allow).
    let mut inv = req(&sipp_invite());
    inv.headers.push("Proxy-Require", "foo");
    let err = validate_request(&inv, &l).unwrap_err();
    assert_eq!((err.status, err.reason), (420, "Bad Extension"));
    assert_eq!(err.unsupported, ["foo"]);
}

#[test]
fn proxy_require_unknown_gets_420_with_unsupported() {
    let l = local();
    let mut inv = req(&sipp_invite());
    inv.headers.push("Proxy-Require", "sec-agree, foo");
    inv.headers.push("Proxy-Require", "foo");
    let err = validate_request(&inv, &l).unwrap_err();
    assert_eq!(err.status, 420);
    assert_eq!(err.unsupported, ["sec-agree", "foo"]);
    let resp = err.response(&inv);
    assert_eq!((resp.status, resp.reason.as_str()), (420, "Bad Extension"));
    assert_eq!(resp.headers.get("Unsupported"), Some("sec-agree, foo"));
    // Require is end to end: a proxy forwarding the request does not look at it.
    let mut inv = req(&sipp_invite());
    inv.headers.push("Require", "100rel");
    assert_eq!(validate_request(&inv, &l), Ok(()));
}

fn options(uri: &str, extra: &[&str]) -> Request {
    let mut head = vec![
        format!("OPTIONS {uri} SIP/2.0"),
        "Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKopt".to_owned(),
        "Max-Forwards: 70".to_owned(),
        "From: <sip:a@example.test>;tag=o1".to_owned(),
        format!("To: <{uri}>"),
        "Call-ID: opt@10.0.0.5".to_owned(),
        "CSeq: 1 OPTIONS".to_owned(),
    ];
    head.extend(extra.iter().map(|s| (*s).to_owned()));
    head.push("Content-Length: 0".to_owned());
    let refs: Vec<&str> = head.iter().map(String::as_str).collect();
    req(&msg(&refs, ""))
}

#[test]
fn require_unknown_gets_420_where_the_node_is_the_uas() {
    let l = local();
    // A REGISTER for our domain is answered here.
    let mut reg = req(&crate::tests::sipp_register());
    assert!(answered_here(&reg, &l));
    reg.headers.push("Require", "path, gruu");
    let err = validate_request(&reg, &l).unwrap_err();
    assert_eq!(err.status, 420);
    let resp = err.response(&reg);
    assert_eq!(resp.headers.get("Unsupported"), Some("path, gruu"));
    // A REGISTER routed elsewhere is only proxied.
    reg.headers
        .push("Route", "<sip:registrar.elsewhere.test;lr>");
    assert!(!answered_here(&reg, &l));
    assert_eq!(validate_request(&reg, &l), Ok(()));
    // ... but a Route of ours is popped, so the REGISTER is still ours.
    let mut reg = req(&crate::tests::sipp_register());
    reg.headers.push("Route", "<sip:127.0.1.7;lr>");
    reg.headers.push("Require", "path");
    assert_eq!(validate_request(&reg, &l).unwrap_err().status, 420);
    // An OPTIONS to the domain (no user part) is answered here; to a user it is proxied.
    let opt = options("sip:example.test", &["Require: foo"]);
    assert_eq!(validate_request(&opt, &l).unwrap_err().unsupported, ["foo"]);
    let opt = options("sip:2000@example.test", &["Require: foo"]);
    assert_eq!(validate_request(&opt, &l), Ok(()));
    // An empty Require is no requirement.
    let opt = options("sip:example.test", &["Require: "]);
    assert_eq!(validate_request(&opt, &l), Ok(()));
}

#[test]
fn require_never_rejects_ack_or_cancel() {
    let l = local();
    let mut inv = req(&crate::tests::sipp_register());
    inv.headers.push("Require", "foo");
    let cancel = crate::transaction::build_cancel(&inv);
    let mut cancel = cancel;
    cancel.headers.push("Require", "foo");
    cancel.uri = uri("sip:example.test");
    assert_eq!(validate_request(&cancel, &l), Ok(()));
    let mut ack = cancel.clone();
    ack.method = Method::Ack;
    ack.headers.set("CSeq", "1 ACK");
    ack.headers.set("Max-Forwards", "0");
    // Max-Forwards 0 on an ACK is 483 for the caller to drop (ACKs get no response), never
    // a 420.
    assert_eq!(validate_request(&ack, &l).unwrap_err().status, 483);
}

#[test]
fn options_with_max_forwards_0_is_answered_200_here() {
    let l = local();
    for target in ["sip:example.test", "sip:2000@elsewhere.test"] {
        let mut opt = options(target, &[]);
        opt.headers.set("Max-Forwards", "0");
        let answer = validate_request(&opt, &l).unwrap_err();
        assert_eq!((answer.status, answer.reason), (200, "OK"));
        let resp = answer.response(&opt);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.headers.get("Allow"), Some(ALLOW));
        assert_eq!(resp.headers.get("Accept"), Some("application/sdp"));
        assert!(resp.headers.to().unwrap().tag().is_some());
        // With an unknown Require it is a 420 instead (8.2.2.3 comes first).
        opt.headers.push("Require", "foo");
        assert_eq!(validate_request(&opt, &l).unwrap_err().status, 420);
    }
    // Any other method: 483.
    let mut inv = req(&sipp_invite());
    inv.headers.set("Max-Forwards", "0");
    let err = validate_request(&inv, &l).unwrap_err();
    assert_eq!((err.status, err.reason), (483, "Too Many Hops"));
    assert_eq!(err.response(&inv).reason, "Too Many Hops");
}

#[test]
fn other_schemes_get_416() {
    let l = local();
    for scheme in [
        "mailto:a@example.test",
        "http://example.test/",
        "urn:service:sos",
    ] {
        let mut inv = req(&sipp_invite());
        inv.uri = uri(scheme);
        let err = validate_request(&inv, &l).unwrap_err();
        assert_eq!(
            (err.status, err.reason),
            (416, "Unsupported URI Scheme"),
            "{scheme}"
        );
    }
    let mut inv = req(&sipp_invite());
    inv.uri = uri("SIPS:2000@example.test");
    assert_eq!(validate_request(&inv, &l), Ok(()));
    // tel: is routed by the number registry, except for a REGISTER (whose Request-URI names
    // a registrar's domain).
    let mut inv = req(&sipp_invite());
    inv.uri = uri("tel:+15551234");
    assert_eq!(validate_request(&inv, &l), Ok(()));
    inv.uri = uri("TEL:+1-555-1234;phone-context=+1");
    assert_eq!(validate_request(&inv, &l), Ok(()));
    inv.method = Method::Register;
    let err = validate_request(&inv, &l).unwrap_err();
    assert_eq!((err.status, err.reason), (416, "Unsupported URI Scheme"));
}

#[test]
fn forward_builds_16_6() {
    let l = local();
    let mut inv = req(&sipp_invite());
    stamp_received(&mut inv, "192.0.2.77:5061".parse().unwrap());
    let target = uri("sip:2000@127.0.0.1:5090;transport=UDP");
    let out = forward_request(
        &inv,
        &target,
        &our_via(None),
        Some("<sip:127.0.1.7;lr>"),
        &l,
    );
    assert_eq!(out.uri, target);
    assert_eq!(out.headers.max_forwards(), Some(69));
    let vias: Vec<_> = out.headers.vias().collect();
    assert_eq!(vias.len(), 2);
    assert_eq!(vias[0].host, "127.0.1.7");
    assert_eq!(vias[0].port, Some(5060));
    let branch = vias[0].branch().unwrap().to_owned();
    assert!(branch.starts_with(BRANCH_PREFIX));
    assert_eq!(vias[1].received(), Some("192.0.2.77"));
    assert_eq!(
        out.headers.record_routes().next().unwrap().uri_str(),
        "sip:127.0.1.7;lr"
    );
    // Everything else is as received.
    for name in [
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
        "Subject",
        "Content-Type",
    ] {
        assert_eq!(out.headers.get(name), inv.headers.get(name), "{name}");
    }
    assert_eq!(out.body, inv.body);
    let text = String::from_utf8(out.to_bytes().to_vec()).unwrap();
    assert!(text.starts_with(&format!(
        "INVITE sip:2000@127.0.0.1:5090;transport=UDP SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.1.7:5060;branch={branch}\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-4242-1-0;received=192.0.2.77\r\nRecord-Route: <sip:127.0.1.7;lr>\r\nMax-Forwards: 69\r\n"
    )));
    // A retransmission gets the same branch; another target another branch; a given branch
    // is used as is; the CANCEL forwarded statelessly gets the INVITE's branch.
    assert_eq!(compute_branch(&inv, &target), branch);
    assert_ne!(
        compute_branch(&inv, &uri("sip:2000@127.0.0.1:5091")),
        branch
    );
    let given = forward_request(&inv, &target, &our_via(Some("z9hG4bKgiven")), None, &l);
    assert_eq!(
        given.headers.via_top().unwrap().branch(),
        Some("z9hG4bKgiven")
    );
    let cancel = crate::transaction::build_cancel(&inv);
    assert_eq!(compute_branch(&cancel, &target), branch);
    // Max-Forwards is inserted when missing; rport asked for when wanted.
    let mut no_mf = inv.clone();
    no_mf.headers.remove_all("Max-Forwards");
    let mut v = our_via(None);
    v.rport = true;
    v.host = "::1".into();
    let out = forward_request(&no_mf, &target, &v, None, &l);
    assert_eq!(out.headers.max_forwards(), Some(70));
    assert_eq!(out.headers.via_top().unwrap().host, "[::1]");
    assert_eq!(out.headers.via_top().unwrap().rport(), Some(None));
}

#[test]
fn loop_and_spiral() {
    let l = local();
    let inv = req(&sipp_invite());
    // Forwarded without retargeting (to another domain's proxy, say) ...
    let out = forward_request(&inv, &inv.uri, &our_via(None), None, &l);
    // ... and back to us unchanged: a loop.
    assert!(is_loop(&out, &l));
    assert_eq!(validate_request(&out, &l).unwrap_err().status, 482);
    // Back to us with another Request-URI (retargeted elsewhere): a spiral.
    let mut spiral = out.clone();
    spiral.uri = uri("sip:3000@example.test");
    assert!(!is_loop(&spiral, &l));
    assert_eq!(validate_request(&spiral, &l), Ok(()));
    // Someone else's Via with our prefix is not ours.
    let other = LocalAddrs::new(&["10.9.9.9:5060".parse().unwrap()], &[]);
    assert!(!is_loop(&out, &other));
}

#[test]
fn rfc3581_stamping() {
    // RFC 3581 section 4 example.
    let data = msg(
        &[
            "INVITE sip:user@example.com SIP/2.0",
            "Via: SIP/2.0/UDP 10.1.1.1:4540;rport;branch=z9hG4bKkjshdyff",
            "Max-Forwards: 70",
            "From: <sip:a@example.com>;tag=1",
            "To: <sip:user@example.com>",
            "Call-ID: x",
            "CSeq: 1 INVITE",
            "Content-Length: 0",
        ],
        "",
    );
    let mut r = req(&data);
    assert!(stamp_received(&mut r, "192.0.2.1:9988".parse().unwrap()));
    assert_eq!(
        r.headers.get("Via"),
        Some("SIP/2.0/UDP 10.1.1.1:4540;rport=9988;branch=z9hG4bKkjshdyff;received=192.0.2.1")
    );
    let resp = reply(&r, 200, None, None);
    assert_eq!(
        resp.headers.via_top().unwrap().response_target(),
        ("192.0.2.1", 9988)
    );
}

#[test]
fn route_preprocessing_and_next_hop() {
    let l = local();
    let mut inv = req(&sipp_invite());
    inv.headers
        .push("Route", "<sip:127.0.1.7;lr>, <sip:node1.example.test;lr>");
    inv.headers.push("Route", "<sip:proxy.other.test;lr>");
    assert!(is_for_us(&inv, &l));
    preprocess_route(&mut inv, &l);
    let routes: Vec<_> = inv
        .headers
        .routes()
        .map(|r| r.uri_str().to_owned())
        .collect();
    assert_eq!(routes, ["sip:proxy.other.test;lr"]);
    assert_eq!(next_hop(&inv).as_str(), "sip:proxy.other.test;lr");
    // Strict routing from the previous hop: the Request-URI is ours; the last Route is the
    // real target.
    let mut strict = req(&sipp_invite());
    strict.uri = uri("sip:127.0.1.7");
    strict
        .headers
        .push("Route", "<sip:next.other.test;lr>, <sip:2000@client.test>");
    preprocess_route(&mut strict, &l);
    assert_eq!(strict.uri.as_str(), "sip:2000@client.test");
    assert_eq!(
        strict
            .headers
            .routes()
            .map(|r| r.uri_str().to_owned())
            .collect::<Vec<_>>(),
        ["sip:next.other.test;lr"]
    );
    // No Route: the Request-URI is the next hop.
    let plain = req(&sipp_invite());
    assert_eq!(next_hop(&plain), plain.uri);
}

#[test]
fn forward_pops_our_route_and_handles_strict_next_hop() {
    let l = local();
    let mut inv = req(&sipp_invite());
    inv.headers.push("Route", "<sip:127.0.1.7:5060;lr>");
    inv.headers.push("Route", "<sip:strict.other.test>");
    let target = inv.uri.clone();
    let out = forward_request(&inv, &target, &our_via(None), None, &l);
    // Our Route popped; the strict router becomes the Request-URI and the original
    // Request-URI goes last in the Route set.
    assert_eq!(out.uri.as_str(), "sip:strict.other.test");
    assert_eq!(
        out.headers
            .routes()
            .map(|r| r.uri_str().to_owned())
            .collect::<Vec<_>>(),
        ["sip:2000@example.test"]
    );
}

#[test]
fn addressed_to_us() {
    let l = local();
    let mut r = req(&sipp_invite());
    assert!(is_for_us(&r, &l), "our domain");
    r.uri = uri("sip:2000@other.test");
    assert!(!is_for_us(&r, &l));
    r.uri = uri("sip:2000@127.0.1.7");
    assert!(is_for_us(&r, &l), "our address, default port");
    r.uri = uri("sip:2000@127.0.1.7:5070");
    assert!(!is_for_us(&r, &l), "another port");
    r.uri = uri("sip:2000@NODE1.example.test:5060");
    assert!(is_for_us(&r, &l), "our host name");
    r.uri = uri("sip:2000@other.test");
    r.headers.push("Route", "<sip:127.0.1.7;lr>");
    assert!(is_for_us(&r, &l), "top Route is ours");
}

fn response_via(inv: &Request, status: u16) -> Response {
    let l = local();
    let out = forward_request(inv, &inv.uri, &our_via(None), None, &l);
    reply(&out, status, None, Some("callee"))
}

#[test]
fn responses_lose_our_via() {
    let l = local();
    let inv = req(&sipp_invite());
    let resp = response_via(&inv, 180);
    assert!(is_our_via(&resp, &l));
    let up = forward_response(&resp).unwrap();
    assert_eq!(up.headers.vias().count(), 1);
    assert!(!is_our_via(&up, &l));
    // Only one Via left: it was ours, nothing to forward.
    assert!(forward_response(&up).is_none());
}

#[test]
fn serial_fork() {
    let inv = req(&sipp_invite());
    let t1 = uri("sip:2000@10.0.0.1");
    let t2 = uri("sip:2000@10.0.0.2");
    let mut fork = SerialFork::new([t1.clone(), t2.clone()]);
    assert_eq!(fork.start(), Some(t1));
    assert_eq!(fork.on_response(response_via(&inv, 100)), ForkStep::Absorb);
    match fork.on_response(response_via(&inv, 180)) {
        ForkStep::Forward(r) => assert_eq!((r.status, r.headers.vias().count()), (180, 1)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        fork.on_response(response_via(&inv, 486)),
        ForkStep::TryNext(t2)
    );
    match fork.on_response(response_via(&inv, 404)) {
        // 404 and 486 are both 4xx; the lower code is kept.
        ForkStep::Final(r) => assert_eq!(r.status, 404),
        other => panic!("{other:?}"),
    }
    assert!(fork.is_done());

    // A 2xx ends the fork at once; a late 2xx is still forwarded.
    let mut fork = SerialFork::new([uri("sip:a@1.1.1.1"), uri("sip:a@2.2.2.2")]);
    fork.start();
    assert!(matches!(
        fork.on_response(response_via(&inv, 200)),
        ForkStep::Forward(_)
    ));
    assert!(matches!(
        fork.on_response(response_via(&inv, 200)),
        ForkStep::Forward(_)
    ));
    assert_eq!(fork.on_response(response_via(&inv, 486)), ForkStep::Absorb);

    // A 6xx ends it without trying the rest.
    let mut fork = SerialFork::new([uri("sip:a@1.1.1.1"), uri("sip:a@2.2.2.2")]);
    fork.start();
    assert!(
        matches!(fork.on_response(response_via(&inv, 603)), ForkStep::Final(r) if r.status == 603)
    );

    // Timeouts and 503s are answered by us: 408, and 500 for a 503.
    let mut fork = SerialFork::new([uri("sip:a@1.1.1.1"), uri("sip:a@2.2.2.2")]);
    fork.start();
    assert!(matches!(fork.on_failure(408), ForkStep::TryNext(_)));
    assert_eq!(fork.on_failure(408), ForkStep::Generate(408));
    let mut fork = SerialFork::new([uri("sip:a@1.1.1.1")]);
    fork.start();
    assert_eq!(
        fork.on_response(response_via(&inv, 503)),
        ForkStep::Generate(500)
    );
    // A real response beats a generated timeout.
    let mut fork = SerialFork::new([uri("sip:a@1.1.1.1"), uri("sip:a@2.2.2.2")]);
    fork.start();
    fork.on_failure(408);
    assert!(
        matches!(fork.on_response(response_via(&inv, 480)), ForkStep::Final(r) if r.status == 480)
    );
    // 401/407 are preferred within 4xx.
    let mut fork = SerialFork::new([uri("sip:a@1.1.1.1"), uri("sip:a@2.2.2.2")]);
    fork.start();
    fork.on_response(response_via(&inv, 407));
    assert!(
        matches!(fork.on_response(response_via(&inv, 404)), ForkStep::Final(r) if r.status == 407)
    );
    // No targets at all.
    assert_eq!(SerialFork::new([]).start(), None);
}
