//! Tests of the engine's registrar front and routing, with no sockets (the harness is in
//! `tests.rs`): REGISTER, lookups, where a binding is reached, Route and strict routes,
//! resolution of other domains, section 16.3's checks, and responses (16.7, 18.2.2).

use bytes::Bytes;

use super::tests::*;
use super::*;
use crate::registrar::{Flow, RegisterError, RegistrarPolicy, Transport};

// ---------------------------------------------------------------------------------------
// REGISTER

#[test]
fn register_over_udp_asks_the_registrar_with_the_flow_then_answers_200_with_expires() {
    let mut h = H::new();
    let text = req("REGISTER", "sip:example.test")
        .to("<sip:alice@example.test>")
        .header("Expires: 3600")
        .text();
    let outs = h.udp(uac(), &text);
    assert_eq!(outs.len(), 1, "only the registrar write: {outs:#?}");
    let Output::Register {
        key, info, policy, ..
    } = &outs[0]
    else {
        panic!("a Register expected: {outs:#?}");
    };
    assert_eq!(info.aor, "alice@example.test");
    let flow = Flow {
        node: ME.into(),
        transport: Transport::Udp,
        remote: uac(),
        local: listen(),
        conn_id: 0,
    };
    assert_eq!(info.flow.as_ref(), Some(&flow));
    assert_eq!(info.received, Some(uac()));
    assert_eq!(info.expires, Some(3600));
    assert_eq!(policy, &RegistrarPolicy::default());
    assert_eq!(h.engine.pending(), 1);

    // The registrar's answer comes 3 ms after the REGISTER (engine time).
    h.now += std::time::Duration::from_millis(3);
    // The registrar answers 1.5 s into the binding's hour: 3598.5 s left, rounded up.
    let b = binding(
        &format!("sip:alice@{}", uac()),
        None,
        Some(flow),
        Some(uac()),
    );
    let ok = one(h.input(Input::Registered {
        key: key.clone(),
        result: Ok(vec![b]),
        at_ms: NOW_MS + 1_500,
    }));
    assert_eq!(ok.hop, udp(uac()));
    assert_eq!(ok.status(), 200, "{}", ok.text());
    let contacts: Vec<&str> = ok.resp().headers.values("Contact").collect();
    assert_eq!(contacts, [format!("<sip:alice@{}>;expires=3599", uac())]);
    assert_eq!(ok.resp().headers.to().unwrap().tag(), Some("oh1"));
    assert_eq!(h.engine.pending(), 0);
    let counts = h.engine.take_counts();
    assert_eq!(counts.registered, 1);
    assert_eq!(counts.by_code, [(200, 1)]);
    assert_eq!(counts.by_method, [("REGISTER", 1)]);
    // Its response time: from the REGISTER's arrival to the 200 sent.
    assert_eq!(
        counts.response_times,
        [("REGISTER", std::time::Duration::from_millis(3))]
    );
    assert!(h.engine.take_counts().response_times.is_empty());
}

#[test]
fn register_over_tcp_records_the_connection_and_a_rejection_answers_423_with_min_expires() {
    let mut h = H::new();
    let text = req("REGISTER", "sip:example.test")
        .via(&format!("SIP/2.0/TCP {};branch=z9hG4bKreg7", uac()))
        .to("<sip:alice@example.test>")
        .header("Expires: 10")
        .text();
    let outs = h.message(tcp(uac(), 7), &text);
    let Some(Output::Register { key, info, .. }) = outs.first() else {
        panic!("a Register expected: {outs:#?}");
    };
    let flow = info.flow.as_ref().unwrap();
    assert_eq!(flow.transport, Transport::Tcp);
    assert_eq!(flow.conn_id, 7);
    assert_eq!(flow.node, ME);
    assert_eq!(flow.remote, uac());
    let r = one(h.input(Input::Registered {
        key: key.clone(),
        result: Err(RegisterError::IntervalTooBrief { min_expires: 60 }.into()),
        at_ms: NOW_MS,
    }));
    assert_eq!(
        r.hop,
        tcp(uac(), 7),
        "answered on the REGISTER's connection"
    );
    assert_eq!(r.status(), 423);
    assert_eq!(r.header("Min-Expires"), Some("60"));
    assert_eq!(h.engine.take_counts().registered, 0);
}

#[test]
fn register_with_the_registrar_unreachable_answers_503_with_retry_after() {
    let mut h = H::with(|c| c.retry_after = 7);
    let outs = h.udp(
        uac(),
        &req("REGISTER", "sip:example.test")
            .to("<sip:alice@example.test>")
            .text(),
    );
    let Some(Output::Register { key, .. }) = outs.first() else {
        panic!("a Register expected: {outs:#?}");
    };
    let r = one(h.input(Input::Registered {
        key: key.clone(),
        result: Err(LocateError::Unavailable("no registrar".into())),
        at_ms: NOW_MS,
    }));
    assert_eq!(r.status(), 503);
    assert_eq!(r.header("Retry-After"), Some("7"));
    assert_eq!(r.hop, udp(uac()));
}

// ---------------------------------------------------------------------------------------
// Requests to our domain

#[test]
fn options_to_the_domain_is_answered_200_with_allow() {
    let mut h = H::new();
    let ok = one(h.udp(uac(), &req("OPTIONS", "sip:example.test").text()));
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.hop, udp(uac()));
    assert_eq!(ok.header("Allow"), Some(crate::proxy::ALLOW));
    assert!(ok.header("Allow").unwrap().contains("INVITE"));
    assert_eq!(
        h.engine.transactions(),
        0,
        "UDP: kept only as the completed answer"
    );
}

#[test]
fn invite_to_an_unknown_user_gets_100_then_404_after_an_empty_lookup() {
    let mut h = H::new();
    let outs = h.udp(uac(), &req("INVITE", "sip:bob@example.test").text());
    assert_eq!(outs.len(), 2, "{outs:#?}");
    let trying = sends(&outs[..1]).pop().expect("100 Trying first");
    assert_eq!(trying.status(), 100);
    assert_eq!(trying.hop, udp(uac()));
    assert_eq!(
        trying.resp().headers.to().unwrap().tag(),
        None,
        "100 carries no To tag"
    );
    let (key, aor) = lookup_of(&outs);
    assert_eq!(aor, "bob@example.test");
    assert_eq!(h.engine.pending(), 1);
    let nf = one(h.input(Input::Located {
        key,
        result: Ok(vec![]),
    }));
    assert_eq!(nf.status(), 404);
    assert_eq!(nf.hop, udp(uac()));
    assert_eq!(h.engine.pending(), 0);
}

#[test]
fn invite_is_forwarded_to_the_registered_contact_per_16_6() {
    let mut h = H::new();
    let (_, outs) = call(
        &mut h,
        &req("INVITE", "sip:bob@example.test"),
        vec![plain(uas(), None)],
    );
    assert_eq!(outs.len(), 1, "only the INVITE: {outs:#?}");
    let inv = forwarded_invite(&outs);
    assert_eq!(inv.hop, udp(uas()));
    assert_eq!(inv.req().uri.as_str(), format!("sip:bob@{}", uas()));
    let vias = inv.vias();
    assert_eq!(vias.len(), 2, "{vias:?}");
    assert!(
        vias[0].starts_with("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK"),
        "our Via on top: {vias:?}"
    );
    assert!(vias[0].ends_with(";rport"), "{vias:?}");
    assert!(inv.branch().starts_with(crate::proxy::BRANCH_PREFIX));
    // The caller's Via, stamped (RFC 3581).
    assert!(vias[1].contains("branch=z9hG4bKinvite1"), "{vias:?}");
    assert!(vias[1].contains("rport=5060"), "{vias:?}");
    assert!(vias[1].contains("received=198.51.100.10"), "{vias:?}");
    assert_eq!(inv.req().headers.max_forwards(), Some(69));
    let rr: Vec<&str> = inv.req().headers.values("Record-Route").collect();
    assert_eq!(rr, ["<sip:192.0.2.1:5060;lr>"]);
    let ck = inv.client.clone().expect("sent by a client transaction");
    assert_eq!(ck.branch, inv.branch());
    assert_eq!(
        h.engine.transactions(),
        2,
        "the server and client transactions"
    );
}

#[test]
fn invite_over_tcp_is_record_routed_with_transport_tcp_and_100_goes_on_its_connection() {
    let mut h = H::new();
    let text = req("INVITE", "sip:bob@example.test")
        .via(&format!("SIP/2.0/TCP {};branch=z9hG4bKtcp1", uac()))
        .text();
    let outs = h.message(tcp(uac(), 3), &text);
    let trying = responses(&outs);
    assert_eq!(trying[0].status(), 100);
    assert_eq!(trying[0].hop, tcp(uac(), 3));
    let (key, _) = lookup_of(&outs);
    let outs = h.input(Input::Located {
        key,
        result: Ok(vec![plain(uas(), None)]),
    });
    let inv = forwarded_invite(&outs);
    assert_eq!(inv.hop, udp(uas()));
    let rr: Vec<&str> = inv.req().headers.values("Record-Route").collect();
    assert_eq!(rr, ["<sip:192.0.2.1:5060;transport=tcp;lr>"]);
    assert!(inv.vias()[0].starts_with("SIP/2.0/UDP 192.0.2.1:5060;"));
    assert_eq!(inv.req().headers.max_forwards(), Some(69));
}

#[test]
fn a_malformed_request_is_answered_400_and_counted() {
    let mut h = H::new();
    let text = req("OPTIONS", "sip:example.test").max_forwards(None).text();
    let r = one(h.udp(uac(), &text));
    assert_eq!(r.status(), 400);
    assert_eq!(r.hop, udp(uac()));
    assert_eq!(h.engine.take_counts().malformed, 1);
}

#[test]
fn an_in_dialog_request_is_not_record_routed() {
    let mut h = H::new();
    // A re-INVITE sent to the domain (as a UA without a route set would).
    let reinvite = req("INVITE", "sip:bob@example.test").to("<sip:bob@example.test>;tag=uas");
    let (_, outs) = call(&mut h, &reinvite, vec![plain(uas(), None)]);
    let inv = forwarded_invite(&outs);
    assert_eq!(inv.req().headers.values("Record-Route").count(), 0);
}

// ---------------------------------------------------------------------------------------
// Where a binding is reached

fn flow(node: &str, transport: Transport, conn: u64) -> Flow {
    Flow {
        node: node.into(),
        transport,
        remote: sa("198.51.100.50:40000"),
        local: listen(),
        conn_id: conn,
    }
}

fn hop_of_binding(h: &mut H, f: Flow) -> Sent {
    let b = binding(
        "sip:bob@10.0.0.5:5060;transport=tcp",
        None,
        Some(f),
        Some(sa("198.51.100.50:40000")),
    );
    let (_, outs) = call(h, &req("INVITE", "sip:bob@example.test"), vec![b]);
    forwarded_invite(&outs)
}

#[test]
fn a_binding_held_by_another_live_node_goes_through_that_node() {
    let mut h = H::new();
    let f = flow("node2", Transport::Tcp, 9);
    let inv = hop_of_binding(&mut h, f.clone());
    assert_eq!(
        inv.hop,
        Hop::Peer {
            node: "node2".into(),
            deliver: Some(f),
        }
    );
    assert_eq!(
        inv.req().uri.as_str(),
        "sip:bob@10.0.0.5:5060;transport=tcp"
    );
    let via = &inv.vias()[0];
    assert!(
        via.starts_with("SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKoh"),
        "between nodes: TCP, no rport: {via}"
    );
    assert!(!via.contains("rport"), "{via}");
}

#[test]
fn a_request_to_another_node_is_retransmitted_until_answered() {
    // Between nodes the transactions retransmit as over UDP: a batch that failed after it
    // left the worker (a response has no receipt) is recovered by Timer A, and a provisional
    // response stops it.
    let mut h = H::new();
    let f = flow("node2", Transport::Tcp, 9);
    let inv = hop_of_binding(&mut h, f.clone());
    let peer = Hop::Peer {
        node: "node2".into(),
        deliver: Some(f),
    };
    assert_eq!(inv.hop, peer);
    let again = requests(&h.run_to(600), Method::Invite);
    assert_eq!(again.len(), 1, "Timer A fired once by 600 ms");
    assert_eq!(again[0].hop, peer);
    assert_eq!(again[0].branch(), inv.branch(), "the same transaction");
    let trying = answer(inv.req(), 100);
    h.message(
        Hop::Peer {
            node: "node2".into(),
            deliver: None,
        },
        &trying,
    );
    assert!(
        requests(&h.run_to(10_000), Method::Invite).is_empty(),
        "a provisional stops the retransmissions"
    );
}

#[test]
fn a_request_from_another_node_retransmitted_gets_the_same_answer() {
    // The receiving side absorbs the copies: a REGISTER answered once is answered again from
    // the completed table, not applied at the registrar twice.
    let mut h = H::new();
    let node2 = Hop::Peer {
        node: "node2".into(),
        deliver: None,
    };
    let reg = req("REGISTER", "sip:example.test").text();
    let key = asked_registrar(&h.message(node2.clone(), &reg));
    let first = one(h.input(Input::Registered {
        key,
        result: Ok(Vec::new()),
        at_ms: NOW_MS,
    }));
    assert_eq!(first.status(), 200);
    let outs = h.message(node2.clone(), &reg);
    assert!(
        !outs.iter().any(|o| matches!(o, Output::Register { .. })),
        "not applied twice: {outs:#?}"
    );
    let again = one(outs);
    assert_eq!(again.hop, node2);
    assert_eq!(
        again.bytes, first.bytes,
        "the same final response, from the table"
    );
}

#[test]
fn a_binding_held_by_a_dead_node_goes_straight_to_its_source_address() {
    let mut h = H::new();
    h.engine.env_mut().live.clear();
    let inv = hop_of_binding(&mut h, flow("node2", Transport::Tcp, 9));
    assert_eq!(inv.hop, tcp(sa("198.51.100.50:40000"), 0));
}

#[test]
fn a_binding_held_here_uses_its_connection_while_it_is_open() {
    let mut h = H::new();
    h.engine.env_mut().flows.insert(9);
    let inv = hop_of_binding(&mut h, flow(ME, Transport::Tcp, 9));
    assert_eq!(inv.hop, tcp(sa("198.51.100.50:40000"), 9));

    let mut h = H::new();
    let inv = hop_of_binding(&mut h, flow(ME, Transport::Tcp, 9));
    assert_eq!(
        inv.hop,
        tcp(sa("198.51.100.50:40000"), 0),
        "closed: a new connection"
    );
}

#[test]
fn a_request_another_node_delivers_to_our_flow_goes_out_on_it() {
    let mut h = H::new();
    h.engine.env_mut().flows.insert(4);
    // node2 forwarded the caller's INVITE with its own Via on top.
    let text = req("INVITE", "sip:bob@198.51.100.50:40000")
        .via("SIP/2.0/TCP 192.0.2.2:5060;branch=z9hG4bKohpeer1")
        .header(&format!(
            "Via: SIP/2.0/UDP {};branch=z9hG4bKx;rport=5060",
            uac()
        ))
        .text();
    let outs = h.input(Input::Message {
        bytes: Bytes::from(text),
        from: Hop::Peer {
            node: "node2".into(),
            deliver: None,
        },
        source: None,
        deliver: Some(flow(ME, Transport::Tcp, 4)),
    });
    let trying = responses(&outs);
    assert_eq!(trying.len(), 1);
    assert_eq!(trying[0].status(), 100);
    assert_eq!(
        trying[0].hop,
        Hop::Peer {
            node: "node2".into(),
            deliver: None
        }
    );
    let inv = forwarded_invite(&outs);
    assert_eq!(inv.hop, tcp(sa("198.51.100.50:40000"), 4));
    assert_eq!(inv.vias().len(), 3);
    assert!(outs.iter().all(|o| !matches!(o, Output::Lookup { .. })));
}

// ---------------------------------------------------------------------------------------
// Routing

#[test]
fn a_route_to_us_is_popped_and_the_request_routed_on() {
    let mut h = H::new();
    let text = req("MESSAGE", "sip:carol@198.51.100.30:5070")
        .header("Route: <sip:192.0.2.1:5060;lr>")
        .text();
    let m = one(h.udp(uac(), &text));
    assert_eq!(m.hop, udp(sa("198.51.100.30:5070")));
    assert_eq!(m.req().method, Method::Message);
    assert_eq!(m.req().uri.as_str(), "sip:carol@198.51.100.30:5070");
    assert!(!m.req().headers.contains("Route"), "{}", m.text());
    assert_eq!(
        m.req().headers.values("Record-Route").count(),
        0,
        "only dialog-creating INVITEs are record-routed"
    );
    assert!(m.client.is_some());
}

#[test]
fn a_strict_route_is_undone() {
    let mut h = H::new();
    // The previous hop was a strict router: our URI as Request-URI, the target last.
    let text = req("MESSAGE", "sip:192.0.2.1:5060")
        .header(&format!("Route: <sip:carol@{}>", sa("198.51.100.30:5070")))
        .text();
    let m = one(h.udp(uac(), &text));
    assert_eq!(m.hop, udp(sa("198.51.100.30:5070")));
    assert_eq!(m.req().uri.as_str(), "sip:carol@198.51.100.30:5070");
    assert!(!m.req().headers.contains("Route"), "{}", m.text());
}

#[test]
fn a_route_to_another_nodes_address_goes_to_that_node() {
    let mut h = H::new();
    let text = req("BYE", "sip:bob@198.51.100.20:5062")
        .to("<sip:bob@example.test>;tag=uas")
        .header("Route: <sip:192.0.2.2:5060;lr>")
        .text();
    let m = one(h.udp(uac(), &text));
    assert_eq!(
        m.hop,
        Hop::Peer {
            node: "node2".into(),
            deliver: None
        }
    );
    assert_eq!(
        m.req().headers.values("Route").collect::<Vec<_>>(),
        ["<sip:192.0.2.2:5060;lr>"],
        "the next node pops its own Route"
    );
}

#[test]
fn a_request_for_another_domain_is_resolved_then_forwarded() {
    let mut h = H::new();
    let outs = h.udp(uac(), &req("MESSAGE", "sip:carol@other.test").text());
    assert_eq!(outs.len(), 1, "{outs:#?}");
    let Output::Resolve {
        key,
        host,
        port,
        transport,
    } = &outs[0]
    else {
        panic!("a Resolve expected: {outs:#?}");
    };
    assert_eq!(host, "other.test");
    assert_eq!(*port, None);
    assert_eq!(*transport, None);
    assert_eq!(h.engine.pending(), 1);
    let server = sa("198.51.100.40:5060");
    let m = one(h.input(Input::Resolved {
        key: key.clone(),
        result: Ok(vec![(Transport::Udp, server)]),
    }));
    assert_eq!(m.hop, udp(server));
    assert_eq!(m.req().uri.as_str(), "sip:carol@other.test");
    assert_eq!(h.engine.pending(), 0);
}

#[test]
fn a_resolution_with_port_and_transport_and_its_failure_is_404() {
    let mut h = H::new();
    let outs = h.udp(
        uac(),
        &req("MESSAGE", "sip:carol@other.test:5080;transport=tcp").text(),
    );
    let Some(Output::Resolve {
        key,
        port,
        transport,
        ..
    }) = outs.first()
    else {
        panic!("a Resolve expected: {outs:#?}");
    };
    assert_eq!(*port, Some(5080));
    assert_eq!(*transport, Some(Transport::Tcp));
    let r = one(h.input(Input::Resolved {
        key: key.clone(),
        result: Err("NXDOMAIN".into()),
    }));
    assert_eq!(r.status(), 404);
    assert_eq!(r.hop, udp(uac()));
}

// ---------------------------------------------------------------------------------------
// Validation (section 16.3)

#[test]
fn max_forwards_zero_is_answered_483() {
    let mut h = H::new();
    let r = one(h.udp(
        uac(),
        &req("INVITE", "sip:bob@example.test")
            .max_forwards(Some(0))
            .text(),
    ));
    assert_eq!(r.status(), 483);
    assert_eq!(r.hop, udp(uac()));
    assert_eq!(h.engine.transactions(), 0);
}

#[test]
fn a_request_that_comes_back_unchanged_is_a_loop_482() {
    let mut h = H::new();
    let next = sa("198.51.100.30:5060");
    let text = req("MESSAGE", "sip:carol@other.test")
        .header(&format!("Route: <sip:{next};lr>"))
        .text();
    let out = one(h.udp(uac(), &text));
    assert_eq!(out.hop, udp(next));
    // The next hop sends it back to us as it was.
    let back = String::from_utf8(out.bytes.to_vec()).unwrap();
    let r = one(h.udp(next, &back));
    assert_eq!(r.status(), 482, "{}", r.text());
    assert_eq!(r.hop, udp(next));
}

// ---------------------------------------------------------------------------------------
// Responses (section 16.7)

#[test]
fn responses_go_upstream_without_our_via_and_100_stops_here() {
    let mut h = H::new();
    let (_, outs) = call(
        &mut h,
        &req("INVITE", "sip:bob@example.test"),
        vec![plain(uas(), None)],
    );
    let inv = forwarded_invite(&outs);
    assert!(
        h.udp(uas(), &answer(inv.req(), 100)).is_empty(),
        "100 is hop by hop"
    );
    let ringing = one(h.udp(uas(), &answer(inv.req(), 180)));
    assert_eq!(ringing.status(), 180);
    assert_eq!(ringing.hop, udp(uac()));
    let vias = ringing.vias();
    assert_eq!(vias.len(), 1, "{vias:?}");
    assert!(vias[0].contains("branch=z9hG4bKinvite1"), "{vias:?}");
    assert_eq!(
        ringing
            .resp()
            .headers
            .values("Record-Route")
            .collect::<Vec<_>>(),
        ["<sip:192.0.2.1:5060;lr>"]
    );
    let ok = one(h.udp(uas(), &answer(inv.req(), 200)));
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.hop, udp(uac()));
    assert_eq!(ok.vias().len(), 1);
    assert_eq!(h.engine.transactions(), 0, "both sides Accepted: lean");
    assert_eq!(h.engine.lingering(), 2);
}

#[test]
fn a_retransmitted_2xx_after_accepted_goes_to_the_same_hop() {
    let mut h = H::new();
    let text = req("INVITE", "sip:bob@example.test")
        .via(&format!("SIP/2.0/TCP {};branch=z9hG4bKtcp2", uac()))
        .text();
    let outs = h.message(tcp(uac(), 5), &text);
    let (key, _) = lookup_of(&outs);
    let outs = h.input(Input::Located {
        key,
        result: Ok(vec![plain(uas(), None)]),
    });
    let inv = forwarded_invite(&outs);
    let ok = answer(inv.req(), 200);
    let first = one(h.udp(uas(), &ok));
    assert_eq!(first.hop, tcp(uac(), 5));
    h.at(2_000);
    let again = one(h.udp(uas(), &ok));
    assert_eq!(
        again.hop,
        tcp(uac(), 5),
        "RFC 6026: to where the first went"
    );
    assert_eq!(again.bytes, first.bytes);
    // After Timers L and M the 2xx is forwarded statelessly, by its Via.
    h.run_to(40_000);
    assert_eq!(h.engine.lingering(), 0);
    let late = one(h.udp(uas(), &ok));
    assert_eq!(late.status(), 200);
    assert_eq!(late.hop, tcp(uac(), 0), "by the Via: TCP to its address");
}

#[test]
fn a_stray_response_without_our_via_is_dropped() {
    let mut h = H::new();
    let stray = "SIP/2.0 200 OK\r\n\
        Via: SIP/2.0/UDP 198.51.100.99:5060;branch=z9hG4bKstray\r\n\
        Via: SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bKx\r\n\
        From: <sip:alice@example.test>;tag=a1\r\n\
        To: <sip:bob@example.test>;tag=b\r\n\
        Call-ID: stray\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    assert!(h.udp(uas(), stray).is_empty());
}

#[test]
fn a_response_with_our_via_and_no_transaction_goes_by_the_next_via() {
    let mut h = H::new();
    let resp = |next_via: &str| {
        format!(
            "SIP/2.0 200 OK\r\n\
             Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKoh0123456789abcdef.0123456789abcdef\r\n\
             Via: {next_via}\r\n\
             From: <sip:alice@example.test>;tag=a1\r\n\
             To: <sip:bob@example.test>;tag=b\r\n\
             Call-ID: gone\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
    };
    // RFC 3581: received and rport.
    let up = one(h.udp(
        uas(),
        &resp("SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bKa;received=198.51.100.11;rport=40000"),
    ));
    assert_eq!(up.hop, udp(sa("198.51.100.11:40000")));
    assert_eq!(up.vias().len(), 1);
    assert_eq!(up.status(), 200);
    // 18.2.2: the sent-by when nothing else is given; TCP by the Via's transport.
    let up = one(h.udp(
        uas(),
        &resp("SIP/2.0/TCP 198.51.100.12:5070;branch=z9hG4bKb"),
    ));
    assert_eq!(up.hop, tcp(sa("198.51.100.12:5070"), 0));
    // Another node's Via: over the overlay.
    let up = one(h.udp(uas(), &resp("SIP/2.0/TCP 192.0.2.2:5060;branch=z9hG4bKohc")));
    assert_eq!(
        up.hop,
        Hop::Peer {
            node: "node2".into(),
            deliver: None
        }
    );
}

/// The key of the transaction that asked the registrar among `outs`.
fn asked_registrar(outs: &[Output]) -> TransactionKey {
    outs.iter()
        .find_map(|o| match o {
            Output::Register { key, .. } => Some(key.clone()),
            _ => None,
        })
        .expect("the registrar asked")
}

/// A completed REGISTER over UDP, answered: its key and the 200 sent.
fn registered_over_udp(h: &mut H, text: &str) -> (TransactionKey, Sent) {
    let key = asked_registrar(&h.udp(uac(), text));
    let ok = one(h.input(Input::Registered {
        key: key.clone(),
        result: Ok(Vec::new()),
        at_ms: NOW_MS,
    }));
    assert_eq!(ok.status(), 200);
    (key, ok)
}

/// Whether a retransmission of `text` is answered from the completed table (not sent to the
/// registrar again).
fn answered_from_the_table(h: &mut H, text: &str) -> bool {
    let outs = h.udp(uac(), text);
    !outs.iter().any(|o| matches!(o, Output::Register { .. }))
}

#[test]
fn completed_answers_are_kept_within_their_byte_bound() {
    // The bound measured on a first engine: one answer's cost, as the table counts it.
    let first = req("REGISTER", "sip:example.test")
        .branch("z9hG4bK-001")
        .text();
    let second = req("REGISTER", "sip:example.test")
        .branch("z9hG4bK-002")
        .text();
    let (key, ok) = registered_over_udp(&mut H::new(), &first);
    let one_answer = Completed {
        bytes: ok.bytes,
        hop: udp(uac()),
    }
    .cost(&key);

    // Room for one: the first is kept and absorbs its retransmission; the second is not
    // kept, and its retransmission goes to the registrar again.
    let mut h = H::with(|c| c.max_completed_bytes = one_answer);
    registered_over_udp(&mut h, &first);
    registered_over_udp(&mut h, &second);
    assert!(answered_from_the_table(&mut h, &first));
    assert!(!answered_from_the_table(&mut h, &second), "over the bound");

    // Timer J ends the first: its room is given back, and the next answer is kept.
    h.run_to(40_000);
    let third = req("REGISTER", "sip:example.test")
        .branch("z9hG4bK-003")
        .text();
    registered_over_udp(&mut h, &third);
    assert!(answered_from_the_table(&mut h, &third), "room given back");

    // No room at all: nothing is kept.
    let mut h = H::with(|c| c.max_completed_bytes = 0);
    registered_over_udp(&mut h, &first);
    assert!(!answered_from_the_table(&mut h, &first));
}
