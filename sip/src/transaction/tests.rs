//! Transaction state machines under a virtual clock: assertions on the emitted actions.

use std::time::{Duration, Instant};

use super::*;
use crate::response::reply;
use crate::tests::{rfc3261_invite, sipp_register};
use crate::{parse, Message, Request};

fn req(data: &[u8]) -> Request {
    match parse(data).unwrap() {
        Message::Request(r) => r,
        Message::Response(_) => unreachable!(),
    }
}

fn invite() -> Request {
    req(&rfc3261_invite())
}

fn register() -> Request {
    req(&sipp_register())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The times (ms after `t0`) at which `on_timer` sent something, driving the clock from
/// deadline to deadline until `until_ms`, with the actions of the last call.
fn drive_client(tx: &mut ClientTransaction, t0: Instant, until_ms: u64) -> (Vec<u64>, Actions) {
    let mut sends = Vec::new();
    let mut last = Vec::new();
    while let Some(at) = tx.next_timer() {
        if at > t0 + ms(until_ms) {
            break;
        }
        last = tx.on_timer(at);
        for a in &last {
            if matches!(a, Action::Send(_)) {
                sends.push((at - t0).as_millis() as u64);
            }
        }
        if tx.is_terminated() {
            break;
        }
    }
    (sends, last)
}

fn sent_request(actions: &Actions) -> Option<&Request> {
    actions.iter().find_map(|a| match a {
        Action::Send(Message::Request(r)) => Some(r),
        _ => None,
    })
}

fn sent_status(actions: &Actions) -> Vec<u16> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(Message::Response(r)) => Some(r.status),
            _ => None,
        })
        .collect()
}

#[test]
fn client_invite_udp_retransmits_then_times_out() {
    let t0 = Instant::now();
    let (mut tx, first) = ClientTransaction::new(invite(), false, t0);
    assert_eq!(sent_request(&first).unwrap().method, Method::Invite);
    assert_eq!(tx.state(), ClientState::Calling);
    let (sends, last) = drive_client(&mut tx, t0, 40_000);
    // Timer A: 500 ms, then doubling, until Timer B at 64*T1 = 32 s.
    assert_eq!(sends, [500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!(last, [Action::Timeout, Action::Terminated]);
    assert!(tx.is_terminated());
    assert_eq!(tx.next_timer(), None);
}

#[test]
fn client_invite_tcp_does_not_retransmit() {
    let t0 = Instant::now();
    let (mut tx, _) = ClientTransaction::new(invite(), true, t0);
    assert_eq!(tx.next_timer(), Some(t0 + ms(32_000)));
    let (sends, last) = drive_client(&mut tx, t0, 40_000);
    assert!(sends.is_empty());
    assert_eq!(last, [Action::Timeout, Action::Terminated]);
}

#[test]
fn client_invite_provisional_stops_retransmission_and_timer_b() {
    let t0 = Instant::now();
    let inv = invite();
    let (mut tx, _) = ClientTransaction::new(inv.clone(), false, t0);
    let ringing = reply(&inv, 180, None, Some("callee"));
    assert_eq!(
        tx.on_response(ringing.clone(), t0 + ms(100)),
        [Action::Deliver(ringing)]
    );
    assert_eq!(tx.state(), ClientState::Proceeding);
    assert_eq!(tx.next_timer(), None);
    // Now cancellable.
    let cancel = tx.cancel_request().unwrap();
    assert_eq!(cancel.method, Method::Cancel);
    assert_eq!(
        TransactionKey::client(&cancel).unwrap().cancelled_invite(),
        *tx.key()
    );
}

#[test]
fn client_invite_2xx_passes_through_and_retransmissions_are_delivered() {
    let t0 = Instant::now();
    let inv = invite();
    let (mut tx, _) = ClientTransaction::new(inv.clone(), false, t0);
    assert!(
        tx.cancel_request().is_none(),
        "no CANCEL before a provisional"
    );
    let ok = reply(&inv, 200, None, Some("b"));
    assert_eq!(
        tx.on_response(ok.clone(), t0 + ms(50)),
        [Action::Deliver(ok.clone())]
    );
    assert_eq!(tx.state(), ClientState::Accepted);
    // No ACK from the transaction for a 2xx: that is the UAC core's, end to end.
    assert_eq!(
        tx.on_response(ok.clone(), t0 + ms(60)),
        [Action::Deliver(ok)]
    );
    // Provisional or error responses after the 2xx are absorbed.
    assert!(tx
        .on_response(reply(&inv, 486, None, None), t0 + ms(70))
        .is_empty());
    // Timer M ends it.
    assert_eq!(tx.next_timer(), Some(t0 + ms(50) + ms(32_000)));
    assert_eq!(tx.on_timer(t0 + ms(32_050)), [Action::Terminated]);
}

#[test]
fn client_invite_non_2xx_gets_ack_and_absorbs_retransmissions() {
    let t0 = Instant::now();
    let inv = invite();
    let (mut tx, _) = ClientTransaction::new(inv.clone(), false, t0);
    let busy = reply(&inv, 486, None, Some("callee-tag"));
    let actions = tx.on_response(busy.clone(), t0 + ms(200));
    assert_eq!(actions[0], Action::Deliver(busy.clone()));
    let ack = sent_request(&actions).unwrap().clone();
    assert_eq!(actions.len(), 2);
    // 17.1.1.3: same Request-URI, Call-ID, From, top Via, CSeq number; To from the response.
    assert_eq!(ack.method, Method::Ack);
    assert_eq!(ack.uri, inv.uri);
    assert_eq!(ack.headers.call_id(), inv.headers.call_id());
    assert_eq!(ack.headers.get("From"), inv.headers.get("From"));
    assert_eq!(ack.headers.get("Via"), inv.headers.get("Via"));
    assert_eq!(ack.headers.to().unwrap().tag(), Some("callee-tag"));
    assert_eq!(ack.headers.get("CSeq"), Some("314159 ACK"));
    assert!(ack.body.is_empty());
    assert_eq!(tx.state(), ClientState::Completed);
    // A retransmitted 486: the same ACK again, nothing to the TU.
    assert_eq!(
        tx.on_response(busy, t0 + ms(700)),
        [Action::Send(Message::Request(ack))]
    );
    // Timer D (32 s) ends it; no retransmission of the INVITE meanwhile.
    assert_eq!(tx.next_timer(), Some(t0 + ms(200) + ms(32_000)));
    assert_eq!(tx.on_timer(t0 + ms(32_200)), [Action::Terminated]);
}

#[test]
fn client_invite_non_2xx_over_tcp_terminates_at_once() {
    let t0 = Instant::now();
    let inv = invite();
    let (mut tx, _) = ClientTransaction::new(inv.clone(), true, t0);
    let actions = tx.on_response(reply(&inv, 404, None, None), t0);
    assert_eq!(actions.len(), 3);
    assert!(matches!(actions[1], Action::Send(Message::Request(_))));
    assert_eq!(actions[2], Action::Terminated);
}

#[test]
fn client_non_invite_udp_schedule() {
    let t0 = Instant::now();
    let (mut tx, first) = ClientTransaction::new(register(), false, t0);
    assert_eq!(first.len(), 1);
    assert_eq!(tx.state(), ClientState::Trying);
    let (sends, last) = drive_client(&mut tx, t0, 40_000);
    // Timer E: 500 ms doubling, capped at T2 = 4 s; Timer F at 32 s.
    assert_eq!(
        sends,
        [500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
    );
    assert_eq!(last, [Action::Timeout, Action::Terminated]);
}

#[test]
fn client_non_invite_proceeding_retransmits_every_t2() {
    let t0 = Instant::now();
    let reg = register();
    let (mut tx, _) = ClientTransaction::new(reg.clone(), false, t0);
    let trying = reply(&reg, 100, None, None);
    assert_eq!(
        tx.on_response(trying.clone(), t0 + ms(100)),
        [Action::Deliver(trying)]
    );
    assert_eq!(tx.state(), ClientState::Proceeding);
    let (sends, _) = drive_client(&mut tx, t0, 12_000);
    assert_eq!(sends, [500, 4500, 8500]);
    let ok = reply(&reg, 200, None, None);
    assert_eq!(
        tx.on_response(ok.clone(), t0 + ms(9000)),
        [Action::Deliver(ok.clone())]
    );
    assert_eq!(tx.state(), ClientState::Completed);
    // Retransmitted 200: absorbed. Timer K = T4 = 5 s ends it.
    assert!(tx.on_response(ok, t0 + ms(9100)).is_empty());
    assert_eq!(tx.next_timer(), Some(t0 + ms(14_000)));
    assert_eq!(tx.on_timer(t0 + ms(14_000)), [Action::Terminated]);
}

#[test]
fn client_non_invite_tcp_final_terminates() {
    let t0 = Instant::now();
    let reg = register();
    let (mut tx, _) = ClientTransaction::new(reg.clone(), true, t0);
    assert_eq!(tx.next_timer(), Some(t0 + ms(32_000)));
    let ok = reply(&reg, 200, None, None);
    assert_eq!(
        tx.on_response(ok.clone(), t0),
        [Action::Deliver(ok), Action::Terminated]
    );
}

#[test]
fn client_transport_error() {
    let t0 = Instant::now();
    let (mut tx, _) = ClientTransaction::new(register(), true, t0);
    assert_eq!(
        tx.on_transport_error(),
        [Action::TransportError, Action::Terminated]
    );
    assert!(tx.on_transport_error().is_empty());
}

#[test]
fn server_invite_non_2xx_retransmits_until_ack() {
    let t0 = Instant::now();
    let inv = invite();
    let mut tx = ServerTransaction::new(inv.clone(), false, t0);
    assert_eq!(tx.state(), ServerState::Proceeding);
    // 100 Trying, without To tag.
    let trying = tx.trying(t0);
    assert_eq!(sent_status(&trying), [100]);
    match &trying[0] {
        Action::Send(Message::Response(r)) => assert_eq!(r.headers.to().unwrap().tag(), None),
        other => panic!("{other:?}"),
    }
    assert!(tx.trying(t0).is_empty(), "only once");
    // A retransmitted INVITE gets the provisional again.
    assert_eq!(sent_status(&tx.on_request(&inv, t0 + ms(500))), [100]);
    let busy = reply(&inv, 486, None, Some("t"));
    assert_eq!(sent_status(&tx.send_response(busy, t0 + ms(1000))), [486]);
    assert_eq!(tx.state(), ServerState::Completed);
    // Timer G: 500 ms, 1 s, 2 s, 4 s, 4 s ... (from the final response at 1 s).
    let mut sends = Vec::new();
    while let Some(at) = tx.next_timer() {
        if at > t0 + ms(12_000) {
            break;
        }
        if !sent_status(&tx.on_timer(at)).is_empty() {
            sends.push((at - t0).as_millis());
        }
    }
    assert_eq!(sends, [1500, 2500, 4500, 8500]);
    // The INVITE retransmitted now gets the final response.
    assert_eq!(sent_status(&tx.on_request(&inv, t0 + ms(9000))), [486]);
    // A second final response from the TU is refused.
    assert!(tx
        .send_response(reply(&inv, 500, None, None), t0 + ms(9000))
        .is_empty());
    // The ACK stops G and H; Timer I (T4) ends it.
    let mut ack = inv.clone();
    ack.method = Method::Ack;
    assert_eq!(TransactionKey::server(&ack).as_ref(), Some(tx.key()));
    assert!(tx.on_request(&ack, t0 + ms(9500)).is_empty());
    assert_eq!(tx.state(), ServerState::Confirmed);
    assert_eq!(tx.next_timer(), Some(t0 + ms(14_500)));
    assert!(
        tx.on_request(&ack, t0 + ms(9600)).is_empty(),
        "ACK retransmission absorbed"
    );
    assert!(
        tx.on_request(&inv, t0 + ms(9700)).is_empty(),
        "INVITE absorbed"
    );
    assert_eq!(tx.on_timer(t0 + ms(14_500)), [Action::Terminated]);
}

#[test]
fn server_invite_timer_h_without_ack() {
    let t0 = Instant::now();
    let inv = invite();
    let mut tx = ServerTransaction::new(inv.clone(), false, t0);
    tx.send_response(reply(&inv, 404, None, None), t0);
    let mut last = Vec::new();
    let mut resends = 0;
    while let Some(at) = tx.next_timer() {
        last = tx.on_timer(at);
        resends += sent_status(&last).len();
        if tx.is_terminated() {
            assert_eq!(at, t0 + ms(32_000));
            break;
        }
    }
    // G at 0.5, 1.5, 3.5, 7.5, 11.5, ... 31.5 s: 10 resends before H at 32 s.
    assert_eq!(resends, 10);
    assert_eq!(last, [Action::Timeout, Action::Terminated]);
}

#[test]
fn server_invite_reliable_ack_terminates_at_once() {
    let t0 = Instant::now();
    let inv = invite();
    let mut tx = ServerTransaction::new(inv.clone(), true, t0);
    tx.send_response(reply(&inv, 603, None, None), t0);
    // No Timer G over TCP, only H.
    assert_eq!(tx.next_timer(), Some(t0 + ms(32_000)));
    assert_eq!(tx.on_ack(t0 + ms(10)), [Action::Terminated]);
}

#[test]
fn server_invite_2xx_enters_accepted() {
    let t0 = Instant::now();
    let inv = invite();
    let mut tx = ServerTransaction::new(inv.clone(), false, t0);
    let ok = reply(&inv, 200, None, Some("x"));
    assert_eq!(sent_status(&tx.send_response(ok.clone(), t0)), [200]);
    assert_eq!(tx.state(), ServerState::Accepted);
    // INVITE retransmissions are absorbed (the TU retransmits the 2xx).
    assert!(tx.on_request(&inv, t0 + ms(500)).is_empty());
    // Further 2xx from the TU (retransmission or another fork) are sent.
    assert_eq!(sent_status(&tx.send_response(ok, t0 + ms(500))), [200]);
    assert!(tx
        .send_response(reply(&inv, 486, None, None), t0 + ms(600))
        .is_empty());
    assert_eq!(tx.on_timer(t0 + ms(32_000)), [Action::Terminated]);
}

#[test]
fn server_non_invite_absorbs_and_resends() {
    let t0 = Instant::now();
    let reg = register();
    let mut tx = ServerTransaction::new(reg.clone(), false, t0);
    assert_eq!(tx.state(), ServerState::Trying);
    assert!(
        tx.on_request(&reg, t0 + ms(500)).is_empty(),
        "absorbed while trying"
    );
    assert_eq!(
        sent_status(&tx.send_response(reply(&reg, 100, None, None), t0 + ms(600))),
        [100]
    );
    assert_eq!(tx.state(), ServerState::Proceeding);
    assert_eq!(sent_status(&tx.on_request(&reg, t0 + ms(700))), [100]);
    assert_eq!(
        sent_status(&tx.send_response(reply(&reg, 200, None, None), t0 + ms(800))),
        [200]
    );
    assert_eq!(tx.final_response().map(|r| r.status), Some(200));
    assert_eq!(sent_status(&tx.on_request(&reg, t0 + ms(900))), [200]);
    // No retransmission by timer for non-INVITE responses; Timer J = 64*T1.
    assert_eq!(tx.next_timer(), Some(t0 + ms(32_800)));
    assert!(tx.on_timer(t0 + ms(32_000)).is_empty());
    assert_eq!(tx.on_timer(t0 + ms(32_800)), [Action::Terminated]);
}

#[test]
fn server_non_invite_reliable_terminates_with_final() {
    let t0 = Instant::now();
    let reg = register();
    let mut tx = ServerTransaction::new(reg.clone(), true, t0);
    let actions = tx.send_response(reply(&reg, 200, None, None), t0);
    assert_eq!(sent_status(&actions), [200]);
    assert_eq!(actions.last(), Some(&Action::Terminated));
}

#[test]
fn server_transport_error() {
    let t0 = Instant::now();
    let mut tx = ServerTransaction::new(register(), true, t0);
    assert_eq!(
        tx.on_transport_error(),
        [Action::TransportError, Action::Terminated]
    );
}

#[test]
fn keys_match_per_17_1_3_and_17_2_3() {
    let inv = invite();
    let server = TransactionKey::server(&inv).unwrap();
    assert_eq!(server.branch, "z9hG4bKnashds8");
    assert_eq!(server.sent_by, "pc33.atlanta.com");
    assert_eq!(server.method, Method::Invite);
    // The response to it matches the client transaction that sent it.
    let resp = reply(&inv, 180, None, None);
    assert_eq!(TransactionKey::from_response(&resp).unwrap(), server);
    // CANCEL is its own transaction, with the same branch.
    let cancel = build_cancel(&inv);
    let ck = TransactionKey::server(&cancel).unwrap();
    assert_eq!(ck.method, Method::Cancel);
    assert_ne!(ck, server);
    assert_eq!(ck.cancelled_invite(), server);
    assert_eq!(cancel.headers.get("CSeq"), Some("314159 CANCEL"));
    assert_eq!(cancel.headers.get("To"), inv.headers.get("To"));
    // A different sent-by is a different transaction.
    let mut other = inv.clone();
    other
        .headers
        .set("Via", "SIP/2.0/UDP other.example.com;branch=z9hG4bKnashds8");
    assert_ne!(TransactionKey::server(&other).unwrap(), server);
    // RFC 2543 peers: a synthetic branch, shared by the INVITE and its ACK.
    let mut old = inv.clone();
    old.headers
        .set("Via", "SIP/2.0/UDP pc33.atlanta.com;branch=1234");
    let old_key = TransactionKey::server(&old).unwrap();
    assert!(old_key.branch.starts_with("rfc2543-"));
    let mut old_ack = old.clone();
    old_ack.method = Method::Ack;
    old_ack
        .headers
        .set("To", "Bob <sip:bob@biloxi.com>;tag=xyz");
    old_ack.headers.set("CSeq", "314159 ACK");
    assert_eq!(TransactionKey::server(&old_ack).unwrap(), old_key);
}
