//! Tests of the engine's calls, with no sockets (the harness is in `tests.rs`): serial
//! forking, CANCEL, ACK, retransmissions, timers, transport errors, overload and lingering.

use super::tests::*;
use super::*;
use crate::registrar::Transport;

/// bob's contacts: `uas2` at q=0.5 listed first, `uas` at q=1.0 (tried first).
fn two_contacts() -> Vec<crate::registrar::Binding> {
    vec![plain(uas2(), Some(500)), plain(uas(), Some(1000))]
}

/// A call from the caller to bob, forwarded to `uas`: the forwarded INVITE.
fn ringing_call(h: &mut H) -> Sent {
    let (_, outs) = call(
        h,
        &req("INVITE", "sip:bob@example.test"),
        vec![plain(uas(), None)],
    );
    forwarded_invite(&outs)
}

// ---------------------------------------------------------------------------------------
// Serial forking (16.7)

#[test]
fn serial_forking_tries_the_next_contact_by_q_after_a_failure() {
    let mut h = H::new();
    let (_, outs) = call(
        &mut h,
        &req("INVITE", "sip:bob@example.test"),
        two_contacts(),
    );
    let first = forwarded_invite(&outs);
    assert_eq!(first.hop, udp(uas()), "q=1.0 first");
    let outs = h.udp(uas(), &answer(first.req(), 486));
    assert!(responses(&outs).is_empty(), "not final yet: {outs:#?}");
    let acks = requests(&outs, Method::Ack);
    assert_eq!(acks.len(), 1, "the 486 is acknowledged hop by hop");
    assert_eq!(acks[0].hop, udp(uas()));
    assert_eq!(acks[0].branch(), first.branch());
    let second = forwarded_invite(&outs);
    assert_eq!(second.hop, udp(uas2()));
    assert_eq!(second.req().uri.as_str(), format!("sip:bob@{}", uas2()));
    assert_ne!(second.branch(), first.branch(), "a new branch per target");

    // The last one fails worse: the best response (the lowest class) goes up.
    let outs = h.udp(uas2(), &answer(second.req(), 500));
    let up = responses(&outs);
    assert_eq!(up.len(), 1, "{outs:#?}");
    assert_eq!(up[0].status(), 486);
    assert_eq!(up[0].hop, udp(uac()));
    assert_eq!(up[0].vias().len(), 1, "our Via stripped");
}

#[test]
fn serial_forking_prefers_a_response_that_helps_a_resubmission() {
    // 16.7 step 6: within 4xx, 401/407/415/420/484 come before the others (484 over 404).
    let mut h = H::new();
    let (_, outs) = call(
        &mut h,
        &req("INVITE", "sip:bob@example.test"),
        two_contacts(),
    );
    let first = forwarded_invite(&outs);
    let outs = h.udp(uas(), &answer(first.req(), 484));
    let second = forwarded_invite(&outs);
    let up = responses(&h.udp(uas2(), &answer(second.req(), 404)));
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].status(), 484, "484 ranks above 404");
}

#[test]
fn a_503_from_downstream_goes_up_as_500() {
    // 16.7: a 503 received says that server cannot serve; the proxy answers 500 upstream.
    let mut h = H::new();
    let (_, outs) = call(
        &mut h,
        &req("INVITE", "sip:bob@example.test"),
        vec![plain(uas(), None)],
    );
    let first = forwarded_invite(&outs);
    let up = responses(&h.udp(uas(), &answer(first.req(), 503)));
    assert_eq!(up.len(), 1, "{up:#?}");
    assert_eq!(up[0].status(), 500);
    assert_eq!(up[0].hop, udp(uac()));
    assert_eq!(up[0].vias().len(), 1, "our Via stripped");
}

#[test]
fn serial_forking_stops_at_a_6xx() {
    let mut h = H::new();
    let (_, outs) = call(
        &mut h,
        &req("INVITE", "sip:bob@example.test"),
        two_contacts(),
    );
    let first = forwarded_invite(&outs);
    let outs = h.udp(uas(), &answer(first.req(), 603));
    let up = responses(&outs);
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].status(), 603);
    assert_eq!(up[0].hop, udp(uac()));
    assert!(
        requests(&outs, Method::Invite).is_empty(),
        "the second contact is not tried"
    );
}

#[test]
fn serial_forking_forwards_a_2xx_at_once() {
    let mut h = H::new();
    let (_, outs) = call(
        &mut h,
        &req("INVITE", "sip:bob@example.test"),
        two_contacts(),
    );
    let first = forwarded_invite(&outs);
    let ok = one(h.udp(uas(), &answer(first.req(), 200)));
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.hop, udp(uac()));
    assert_eq!(h.engine.transactions(), 0);
}

// ---------------------------------------------------------------------------------------
// CANCEL (16.10)

#[test]
fn cancel_is_answered_200_sent_downstream_and_the_invite_ends_487() {
    let mut h = H::new();
    let inv = ringing_call(&mut h);
    one(h.udp(uas(), &answer(inv.req(), 180)));
    let outs = h.udp(
        uac(),
        &req("CANCEL", "sip:bob@example.test")
            .branch("z9hG4bKinvite1")
            .text(),
    );
    let ok = responses(&outs);
    assert_eq!(ok.len(), 1, "{outs:#?}");
    assert_eq!(ok[0].status(), 200);
    assert_eq!(ok[0].hop, udp(uac()));
    assert_eq!(ok[0].resp().headers.cseq().unwrap().method, Method::Cancel);
    let cancels = requests(&outs, Method::Cancel);
    assert_eq!(cancels.len(), 1);
    let c = &cancels[0];
    assert_eq!(c.hop, udp(uas()));
    assert_eq!(c.branch(), inv.branch(), "the INVITE's branch (9.1)");
    assert_eq!(c.req().uri, inv.req().uri);
    assert!(c.client.is_some());
    // The UAS answers the CANCEL (absorbed here), then the INVITE with 487.
    assert!(h.udp(uas(), &answer(c.req(), 200)).is_empty());
    let outs = h.udp(uas(), &answer(inv.req(), 487));
    let up = responses(&outs);
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].status(), 487);
    assert_eq!(up[0].hop, udp(uac()));
    assert_eq!(
        requests(&outs, Method::Ack).len(),
        1,
        "the 487 is acknowledged"
    );
}

#[test]
fn cancel_goes_only_to_branches_still_pending() {
    let mut h = H::new();
    let (_, outs) = call(
        &mut h,
        &req("INVITE", "sip:bob@example.test"),
        two_contacts(),
    );
    let first = forwarded_invite(&outs);
    let outs = h.udp(uas(), &answer(first.req(), 486));
    let second = forwarded_invite(&outs);
    one(h.udp(uas2(), &answer(second.req(), 180)));
    let outs = h.udp(
        uac(),
        &req("CANCEL", "sip:bob@example.test")
            .branch("z9hG4bKinvite1")
            .text(),
    );
    let cancels = requests(&outs, Method::Cancel);
    assert_eq!(
        cancels.len(),
        1,
        "not to the branch that answered 486: {outs:#?}"
    );
    assert_eq!(cancels[0].hop, udp(uas2()));
    assert_eq!(cancels[0].branch(), second.branch());
}

#[test]
fn cancel_waits_for_a_provisional_response_before_going_downstream() {
    let mut h = H::new();
    let inv = ringing_call(&mut h);
    let outs = h.udp(
        uac(),
        &req("CANCEL", "sip:bob@example.test")
            .branch("z9hG4bKinvite1")
            .text(),
    );
    assert_eq!(one(outs).status(), 200, "the CANCEL is answered at once");
    // 9.1: no CANCEL before a provisional response (it could overtake the INVITE).
    assert!(h.run_to(400).is_empty());
    let outs = h.udp(uas(), &answer(inv.req(), 100));
    let c = one(outs);
    assert_eq!(c.req().method, Method::Cancel);
    assert_eq!(c.hop, udp(uas()));
    assert_eq!(c.branch(), inv.branch());
    let outs = h.udp(uas(), &answer(inv.req(), 487));
    assert_eq!(responses(&outs)[0].status(), 487);
    assert_eq!(responses(&outs)[0].hop, udp(uac()));
}

#[test]
fn cancel_for_an_unknown_transaction_is_481() {
    let mut h = H::new();
    let r = one(h.udp(uac(), &req("CANCEL", "sip:bob@example.test").text()));
    assert_eq!(r.status(), 481);
    assert_eq!(r.hop, udp(uac()));
}

#[test]
fn cancel_while_the_lookup_is_pending_ends_the_invite_487_at_once() {
    let mut h = H::new();
    let outs = h.udp(uac(), &req("INVITE", "sip:bob@example.test").text());
    let (key, _) = lookup_of(&outs);
    let outs = h.udp(
        uac(),
        &req("CANCEL", "sip:bob@example.test")
            .branch("z9hG4bKinvite1")
            .text(),
    );
    let rs = responses(&outs);
    let codes: Vec<(u16, Method)> = rs
        .iter()
        .map(|s| (s.status(), s.resp().headers.cseq().unwrap().method))
        .collect();
    assert_eq!(codes, [(200, Method::Cancel), (487, Method::Invite)]);
    assert!(rs.iter().all(|s| s.hop == udp(uac())));
    assert!(requests(&outs, Method::Cancel).is_empty());
    // The late lookup answer does nothing.
    let outs = h.input(Input::Located {
        key,
        result: Ok(vec![plain(uas(), None)]),
    });
    assert!(outs.is_empty(), "{outs:#?}");
    assert_eq!(h.engine.pending(), 0);
}

// ---------------------------------------------------------------------------------------
// ACK

#[test]
fn the_ack_of_a_non_2xx_is_absorbed_and_stops_the_retransmissions() {
    let mut h = H::new();
    let inv = ringing_call(&mut h);
    let outs = h.udp(uas(), &answer(inv.req(), 486));
    assert_eq!(responses(&outs)[0].status(), 486);
    // No ACK yet: Timer G resends the 486 after T1.
    let again = responses(&h.run_to(500));
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].status(), 486);
    assert_eq!(again[0].hop, udp(uac()));
    let ack = req("ACK", "sip:bob@example.test")
        .branch("z9hG4bKinvite1")
        .to("<sip:bob@example.test>;tag=uas")
        .text();
    assert!(h.udp(uac(), &ack).is_empty(), "not forwarded");
    assert!(h.run_to(10_000).is_empty(), "no more 486");
}

#[test]
fn the_ack_of_a_2xx_is_forwarded_statelessly_by_its_route() {
    let mut h = H::new();
    let ack = req("ACK", &format!("sip:bob@{}", uas()))
        .branch("z9hG4bKack1")
        .to("<sip:bob@example.test>;tag=uas")
        .header("Route: <sip:192.0.2.1:5060;lr>")
        .text();
    let fwd = one(h.udp(uac(), &ack));
    assert_eq!(fwd.hop, udp(uas()));
    assert_eq!(fwd.req().method, Method::Ack);
    assert_eq!(fwd.client, None, "no transaction");
    assert!(!fwd.req().headers.contains("Route"));
    assert!(fwd.branch().starts_with(crate::proxy::BRANCH_PREFIX));
    assert_eq!(fwd.vias().len(), 2);
    assert_eq!(fwd.req().headers.max_forwards(), Some(69));
    assert_eq!(h.engine.transactions(), 0);
}

// ---------------------------------------------------------------------------------------
// Retransmissions

#[test]
fn a_retransmitted_invite_gets_the_last_provisional_again() {
    let mut h = H::new();
    let invite = req("INVITE", "sip:bob@example.test").text();
    let inv = ringing_call(&mut h);
    let r = one(h.udp(uac(), &invite));
    assert_eq!(r.status(), 100, "our 100 Trying, not a second INVITE");
    let ringing = one(h.udp(uas(), &answer(inv.req(), 180)));
    let r = one(h.udp(uac(), &invite));
    assert_eq!(r.status(), 180);
    assert_eq!(r.bytes, ringing.bytes);
    assert_eq!(r.hop, udp(uac()));
}

#[test]
fn a_retransmitted_non_invite_gets_the_same_final_response_until_timer_j() {
    let mut h = H::new();
    let register = req("REGISTER", "sip:example.test")
        .to("<sip:alice@example.test>")
        .text();
    let outs = h.udp(uac(), &register);
    let Some(Output::Register { key, .. }) = outs.first() else {
        panic!("a Register expected: {outs:#?}");
    };
    let ok = one(h.input(Input::Registered {
        key: key.clone(),
        result: Ok(vec![]),
        at_ms: NOW_MS,
    }));
    assert_eq!(ok.status(), 200);
    h.run_to(1_000);
    let again = one(h.udp(uac(), &register));
    assert_eq!(again.bytes, ok.bytes, "the same bytes");
    assert_eq!(again.hop, udp(uac()));
    h.run_to(31_900);
    assert_eq!(one(h.udp(uac(), &register)).bytes, ok.bytes);
    // Timer J (64*T1) ended the transaction: the request is processed afresh.
    h.run_to(32_100);
    let outs = h.udp(uac(), &register);
    assert!(
        matches!(outs.as_slice(), [Output::Register { .. }]),
        "{outs:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// Timers

#[test]
fn timer_a_retransmits_the_invite_over_udp_and_timer_b_answers_408() {
    let mut h = H::new();
    let inv = ringing_call(&mut h);
    assert!(h.run_to(499).is_empty());
    for (at, label) in [(500, "T1"), (1_500, "+2T1"), (3_500, "+4T1")] {
        let r = one(h.run_to(at));
        assert_eq!(r.bytes, inv.bytes, "the same INVITE at {label}");
        assert_eq!(r.hop, udp(uas()));
        assert_eq!(r.client, inv.client);
        assert!(h.run_to(at + 990).is_empty());
    }
    // 7.5, 15.5 and 31.5 s, then Timer B at 64*T1.
    let outs = h.run_to(31_999);
    assert_eq!(requests(&outs, Method::Invite).len(), 3);
    assert!(responses(&outs).is_empty());
    let r = one(h.run_to(32_000));
    assert_eq!(r.status(), 408);
    assert_eq!(r.hop, udp(uac()));
    assert_eq!(r.vias().len(), 1);
    assert_eq!(
        h.engine.transactions(),
        1,
        "the INVITE server transaction waits for its ACK"
    );
}

#[test]
fn an_invite_over_tcp_is_not_retransmitted() {
    let mut h = H::new();
    let (_, outs) = call(
        &mut h,
        &req("INVITE", "sip:bob@example.test"),
        vec![binding(
            &format!("sip:bob@{};transport=tcp", uas()),
            None,
            None,
            Some(uas()),
        )],
    );
    let inv = forwarded_invite(&outs);
    assert_eq!(inv.hop, tcp(uas(), 0));
    assert!(inv.vias()[0].starts_with("SIP/2.0/TCP "));
    assert!(h.run_to(31_999).is_empty());
    assert_eq!(one(h.run_to(32_000)).status(), 408);
}

#[test]
fn timer_c_cancels_the_branch_and_answers_408() {
    let mut h = H::with(|c| c.timer_c = std::time::Duration::from_secs(10));
    let inv = ringing_call(&mut h);
    h.at(100);
    one(h.udp(uas(), &answer(inv.req(), 180)));
    assert!(h.run_to(9_999).is_empty(), "no Timer A once proceeding");
    let outs = h.run_to(10_100);
    let cancels = requests(&outs, Method::Cancel);
    assert_eq!(cancels.len(), 1, "{outs:#?}");
    assert_eq!(cancels[0].hop, udp(uas()));
    assert_eq!(cancels[0].branch(), inv.branch());
    let up = responses(&outs);
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].status(), 408);
    assert_eq!(up[0].hop, udp(uac()));
}

#[test]
fn timer_c_restarts_on_each_provisional_response() {
    let mut h = H::with(|c| c.timer_c = std::time::Duration::from_secs(10));
    let inv = ringing_call(&mut h);
    h.at(6_000);
    one(h.udp(uas(), &answer(inv.req(), 180)));
    assert!(
        h.run_to(15_999).is_empty(),
        "16.7 step 2: Timer C runs from the last provisional"
    );
    let outs = h.run_to(16_000);
    assert_eq!(requests(&outs, Method::Cancel).len(), 1, "{outs:#?}");
    assert_eq!(responses(&outs)[0].status(), 408);
}

#[test]
fn timer_c_starts_again_for_the_next_branch_of_a_fork() {
    let mut h = H::with(|c| c.timer_c = std::time::Duration::from_secs(10));
    let (_, outs) = call(
        &mut h,
        &req("INVITE", "sip:bob@example.test"),
        two_contacts(),
    );
    let first = forwarded_invite(&outs);
    h.at(100);
    one(h.udp(uas(), &answer(first.req(), 180)));
    h.at(8_000);
    let outs = h.udp(uas(), &answer(first.req(), 486));
    let second = forwarded_invite(&outs);
    h.at(8_100);
    one(h.udp(uas2(), &answer(second.req(), 180)));
    let outs = h.run_to(18_099);
    assert!(
        responses(&outs).is_empty() && requests(&outs, Method::Cancel).is_empty(),
        "the first branch's Timer C does not end the second: {outs:#?}"
    );
    let outs = h.run_to(18_100);
    let cancels = requests(&outs, Method::Cancel);
    assert_eq!(cancels.len(), 1, "{outs:#?}");
    assert_eq!(cancels[0].hop, udp(uas2()));
    assert_eq!(responses(&outs)[0].status(), 408);
}

#[test]
fn timer_f_answers_408_for_a_non_invite() {
    let mut h = H::new();
    let text = req("MESSAGE", "sip:carol@198.51.100.30:5070")
        .header("Route: <sip:192.0.2.1:5060;lr>")
        .text();
    let m = one(h.udp(uac(), &text));
    // Timer E: T1, 2T1, 4T1, then every T2 (4 s).
    let outs = h.run_to(31_999);
    let resent = requests(&outs, Method::Message);
    assert_eq!(resent.len(), 10, "0.5 1.5 3.5 7.5 11.5 ... 31.5: {outs:#?}");
    assert!(resent.iter().all(|s| s.bytes == m.bytes));
    let r = one(h.run_to(32_000));
    assert_eq!(r.status(), 408);
    assert_eq!(r.hop, udp(uac()));
    assert_eq!(r.resp().headers.cseq().unwrap().method, Method::Message);
}

// ---------------------------------------------------------------------------------------
// Transport errors

#[test]
fn a_failed_send_is_answered_503_at_once_and_counted() {
    let mut h = H::new();
    let f = crate::registrar::Flow {
        node: "node2".into(),
        transport: Transport::Tcp,
        remote: sa("198.51.100.50:40000"),
        local: node2(),
        conn_id: 9,
    };
    let b = binding("sip:bob@10.0.0.5:5060", None, Some(f), None);
    let (_, outs) = call(&mut h, &req("INVITE", "sip:bob@example.test"), vec![b]);
    let inv = forwarded_invite(&outs);
    assert!(matches!(inv.hop, Hop::Peer { .. }));
    h.engine.take_counts();
    let r = one(h.input(Input::SendFailed {
        client: inv.client.clone().unwrap(),
    }));
    assert_eq!(r.status(), 503);
    assert_eq!(r.header("Retry-After"), Some("5"));
    assert_eq!(r.hop, udp(uac()));
    assert_eq!(r.vias().len(), 1);
    assert_eq!(h.engine.take_counts().unreachable, 1);
}

#[test]
fn a_failed_send_moves_on_to_the_next_contact() {
    let mut h = H::new();
    let (_, outs) = call(
        &mut h,
        &req("INVITE", "sip:bob@example.test"),
        two_contacts(),
    );
    let first = forwarded_invite(&outs);
    let outs = h.input(Input::SendFailed {
        client: first.client.clone().unwrap(),
    });
    assert!(responses(&outs).is_empty(), "{outs:#?}");
    let second = forwarded_invite(&outs);
    assert_eq!(second.hop, udp(uas2()));
    // The second's answer beats the 503 the failure stood for.
    let outs = h.udp(uas2(), &answer(second.req(), 486));
    assert_eq!(responses(&outs)[0].status(), 486);
}

#[test]
fn a_failed_send_after_a_provisional_is_ignored() {
    let mut h = H::new();
    let inv = ringing_call(&mut h);
    one(h.udp(uas(), &answer(inv.req(), 180)));
    let outs = h.input(Input::SendFailed {
        client: inv.client.clone().unwrap(),
    });
    assert!(outs.is_empty(), "{outs:#?}");
    assert_eq!(h.engine.transactions(), 2);
    assert_eq!(h.engine.take_counts().unreachable, 0);
    // The call goes on.
    assert_eq!(one(h.udp(uas(), &answer(inv.req(), 200))).status(), 200);
}

// ---------------------------------------------------------------------------------------
// Overload

#[test]
fn a_full_transaction_table_refuses_new_requests_but_not_byes_or_acks() {
    let mut h = H::with(|c| c.max_transactions = 4);
    for i in 0..4 {
        let outs = h.udp(
            uac(),
            &req("INVITE", "sip:bob@example.test")
                .branch(&format!("z9hG4bKfill{i}"))
                .call(&format!("fill-{i}"))
                .text(),
        );
        lookup_of(&outs);
    }
    assert_eq!(h.engine.transactions(), 4);
    let r = one(h.udp(
        uac(),
        &req("INVITE", "sip:bob@example.test")
            .branch("z9hG4bKmore")
            .call("more")
            .text(),
    ));
    assert_eq!(r.status(), 503);
    assert_eq!(r.header("Retry-After"), Some("5"));
    assert_eq!(h.engine.take_counts().overload, 1);
    // A BYE of a call already set up has a reserve.
    let bye = req("BYE", &format!("sip:bob@{}", uas()))
        .branch("z9hG4bKbye")
        .to("<sip:bob@example.test>;tag=uas")
        .cseq(2)
        .header("Route: <sip:192.0.2.1:5060;lr>")
        .text();
    let fwd = one(h.udp(uac(), &bye));
    assert_eq!(fwd.req().method, Method::Bye);
    assert_eq!(fwd.hop, udp(uas()));
    // An ACK is never refused.
    let ack = req("ACK", &format!("sip:bob@{}", uas()))
        .branch("z9hG4bKack")
        .to("<sip:bob@example.test>;tag=uas")
        .header("Route: <sip:192.0.2.1:5060;lr>")
        .text();
    assert_eq!(one(h.udp(uac(), &ack)).req().method, Method::Ack);
    assert_eq!(h.engine.take_counts().overload, 0);
}

#[test]
fn too_many_pending_lookups_are_refused_503() {
    let mut h = H::with(|c| c.max_pending = 1);
    lookup_of(&h.udp(uac(), &req("INVITE", "sip:bob@example.test").text()));
    let outs = h.udp(
        uac(),
        &req("INVITE", "sip:bob@example.test")
            .branch("z9hG4bKsecond")
            .call("second")
            .text(),
    );
    let rs = responses(&outs);
    let codes: Vec<u16> = rs.iter().map(Sent::status).collect();
    assert_eq!(codes, [100, 503], "{outs:#?}");
    assert_eq!(rs[1].header("Retry-After"), Some("5"));
    assert!(outs.iter().all(|o| !matches!(o, Output::Lookup { .. })));
    assert_eq!(h.engine.pending(), 1);
}

// ---------------------------------------------------------------------------------------
// Lingering

/// 60 calls, one after the other, through an engine that holds at most 20 transactions: a
/// finished call leaves nothing in the count (its INVITE transactions linger lean for 32 s,
/// its BYE's client for 5 s), or the eleventh call would get 503.
#[test]
fn finished_calls_do_not_fill_the_transaction_table() {
    let mut h = H::with(|c| c.max_transactions = 20);
    let route = "Route: <sip:192.0.2.1:5060;lr>";
    for i in 0..60u64 {
        h.at(i * 10);
        let call_id = format!("call-{i}");
        let invite = req("INVITE", "sip:bob@example.test")
            .branch(&format!("z9hG4bKinv{i}"))
            .call(&call_id);
        let (_, outs) = call(&mut h, &invite, vec![plain(uas(), None)]);
        let inv = forwarded_invite(&outs);
        assert!(inv.text().contains(&call_id));
        let ok = one(h.udp(uas(), &answer(inv.req(), 200)));
        assert_eq!(ok.status(), 200, "call {i}");
        assert_eq!(
            ok.resp().headers.values("Record-Route").collect::<Vec<_>>(),
            ["<sip:192.0.2.1:5060;lr>"]
        );
        let target = format!("sip:bob@{}", uas());
        let ack = req("ACK", &target)
            .branch(&format!("z9hG4bKack{i}"))
            .call(&call_id)
            .to("<sip:bob@example.test>;tag=uas")
            .header(route);
        assert_eq!(one(h.udp(uac(), &ack.text())).req().method, Method::Ack);
        let bye = req("BYE", &target)
            .branch(&format!("z9hG4bKbye{i}"))
            .call(&call_id)
            .cseq(2)
            .to("<sip:bob@example.test>;tag=uas")
            .header(route);
        let fwd = one(h.udp(uac(), &bye.text()));
        assert_eq!(fwd.req().method, Method::Bye);
        let ok = one(h.udp(uas(), &answer(fwd.req(), 200)));
        assert_eq!(ok.status(), 200, "call {i}: BYE answered");
        assert_eq!(ok.resp().headers.cseq().unwrap().method, Method::Bye);
        assert_eq!(h.engine.transactions(), 0, "call {i}");
    }
    let counts = h.engine.take_counts();
    assert_eq!(counts.overload, 0);
    assert_eq!(counts.requests, 180);
    for method in ["INVITE", "ACK", "BYE"] {
        assert!(counts.by_method.contains(&(method, 60)), "{counts:?}");
    }
    assert!(counts.by_code.contains(&(200, 120)), "{counts:?}");
    // Each call's INVITE server and client transactions and its BYE client linger.
    assert_eq!(h.engine.lingering(), 180);
    h.run_to(5_700);
    assert_eq!(
        h.engine.lingering(),
        120,
        "Timer K ended the BYEs' client side"
    );
    h.run_to(32_700);
    assert_eq!(h.engine.lingering(), 0, "Timers L and M ended the INVITEs'");
    assert_eq!(h.engine.transactions(), 0);
}
