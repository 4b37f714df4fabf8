//! Tests of the engine with a media hook, with no sockets (the harness is in `tests.rs`): an
//! initial INVITE held while its relay is asked, then forwarded as the hook rewrote it, and
//! the hook told of final responses.

use std::time::Instant;

use bytes::Bytes;

use super::tests::*;
use super::*;
use crate::transaction::TransactionKey;

/// Holds every initial INVITE until told, rewrites it (a header stands for the SDP), and
/// notes the final statuses.
#[derive(Default)]
struct HoldInvites {
    held: Vec<(TransactionKey, Request)>,
    /// Where each held INVITE came from.
    from: Vec<Hop>,
    finals: Vec<(TransactionKey, u16)>,
}

impl MediaHook for HoldInvites {
    type Done = TransactionKey;
    fn inbound(&mut self, msg: Message, _: &Hop, _: Option<SocketAddr>) -> Option<Message> {
        Some(msg)
    }
    fn invite_out(&mut self, key: &TransactionKey, req: &Request, from: &Hop) -> bool {
        let mut rewritten = req.clone();
        rewritten.headers.push("X-Relay", "192.0.2.9");
        self.held.push((key.clone(), rewritten));
        self.from.push(from.clone());
        true
    }
    fn final_response(&mut self, key: &TransactionKey, status: u16) {
        self.finals.push((key.clone(), status));
    }
    fn done(&mut self, key: TransactionKey) -> Resume {
        let req = self
            .held
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, r)| r.clone());
        Resume::Forward(key, req)
    }
}

fn engine() -> (Engine<TestEnv, HoldInvites>, Instant) {
    let now = Instant::now();
    let cfg = EngineConfig::new(ME, DOMAIN, listen());
    let e = Engine::new(cfg, TestEnv::farm(), Some(HoldInvites::default()), now);
    (e, now)
}

fn feed(
    e: &mut Engine<TestEnv, HoldInvites>,
    now: Instant,
    input: Input<TransactionKey>,
) -> Vec<Output> {
    e.handle(now, input);
    std::iter::from_fn(|| e.poll_output()).collect()
}

fn from_udp(from: SocketAddr, text: &str) -> Input<TransactionKey> {
    Input::Message {
        bytes: Bytes::copy_from_slice(text.as_bytes()),
        from: udp(from),
        source: Some(from),
        deliver: None,
    }
}

/// An INVITE to bob, looked up: the key of its server transaction (the hook holds it).
fn held_invite(e: &mut Engine<TestEnv, HoldInvites>, now: Instant) -> TransactionKey {
    let outs = feed(
        e,
        now,
        from_udp(uac(), &req("INVITE", "sip:bob@example.test").text()),
    );
    let (key, _) = lookup_of(&outs);
    let located = Input::Located {
        key: key.clone(),
        result: Ok(vec![plain(uas(), None)]),
    };
    let outs = feed(e, now, located);
    assert!(outs.is_empty(), "held while the relay is asked: {outs:#?}");
    let held: Vec<&TransactionKey> = e.media().unwrap().held.iter().map(|(k, _)| k).collect();
    assert_eq!(held, [&key]);
    assert_eq!(
        e.media().unwrap().from,
        [udp(uac())],
        "the hook hears where the INVITE came from (the caller's signalling source)"
    );
    key
}

#[test]
fn an_initial_invite_waits_for_its_relay_and_goes_out_rewritten() {
    let (mut e, now) = engine();
    let key = held_invite(&mut e, now);
    let outs = feed(&mut e, now, Input::Media(key.clone()));
    let inv = forwarded_invite(&outs);
    assert_eq!(inv.hop, udp(uas()));
    assert_eq!(
        inv.header("X-Relay"),
        Some("192.0.2.9"),
        "the rewritten INVITE"
    );
    assert_eq!(inv.req().uri.as_str(), format!("sip:bob@{}", uas()));
    // A failure frees the relay session: the hook hears of the final status.
    let outs = feed(&mut e, now, from_udp(uas(), &answer(inv.req(), 486)));
    assert_eq!(responses(&outs)[0].status(), 486);
    assert_eq!(e.media().unwrap().finals, [(key, 486)]);
}

#[test]
fn an_invite_cancelled_while_its_relay_is_asked_is_never_forwarded() {
    let (mut e, now) = engine();
    let key = held_invite(&mut e, now);
    let cancel = req("CANCEL", "sip:bob@example.test")
        .branch("z9hG4bKinvite1")
        .text();
    let outs = feed(&mut e, now, from_udp(uac(), &cancel));
    let codes: Vec<u16> = responses(&outs).iter().map(Sent::status).collect();
    assert_eq!(codes, [200, 487]);
    let outs = feed(&mut e, now, Input::Media(key.clone()));
    assert!(outs.is_empty(), "{outs:#?}");
    // Told twice: at the 487, and when the relay answered for an INVITE already over.
    assert_eq!(e.media().unwrap().finals, [(key.clone(), 487), (key, 487)]);
}
