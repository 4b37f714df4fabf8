//! Tests of calling by number: requests routed by the number registry, and an account's own
//! number as its alias (registration, caller ID).

use super::tests::*;
use super::tests_auth::{answer_with, authed, challenges, owner_check, register, PASSWORD};
use super::*;
use crate::digest::RecentNonces;

const ALICE: &str = "alice@example.test";

fn account(aor: &str) -> Option<NumberRoute> {
    Some(NumberRoute::Account(aor.into()))
}

fn uri_route(uri: &str) -> Option<NumberRoute> {
    Some(NumberRoute::Uri(uri.into()))
}

/// The number lookup among `outs`.
fn number_of(outs: &[Output]) -> (TransactionKey, String) {
    outs.iter()
        .find_map(|o| match o {
            Output::RouteNumber { key, number } => Some((key.clone(), number.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("a number lookup expected: {outs:#?}"))
}

fn no_number_lookup(outs: &[Output]) -> bool {
    !outs.iter().any(|o| matches!(o, Output::RouteNumber { .. }))
}

/// The final response among `outs` (there must be exactly one).
fn final_response(outs: &[Output]) -> Sent {
    let finals: Vec<Sent> = responses(outs)
        .into_iter()
        .filter(|s| s.status() >= 200)
        .collect();
    assert_eq!(finals.len(), 1, "one final response: {outs:#?}");
    finals.into_iter().next().unwrap()
}

/// An INVITE to `uri` from the caller (over UDP): its key and the number it asks for.
fn invite_number(h: &mut H, uri: &str, branch: &str) -> (TransactionKey, String) {
    let outs = h.udp(
        uac(),
        &req("INVITE", uri)
            .to(&format!("<{uri}>"))
            .branch(branch)
            .call(branch)
            .text(),
    );
    assert_eq!(responses(&outs)[0].status(), 100, "{outs:#?}");
    number_of(&outs)
}

#[test]
fn a_number_routed_to_an_account_reaches_its_bindings() {
    for (i, uri) in [
        "tel:+15550100",
        "tel:+1-555-0100",
        "sip:+15550100@example.test",
        "sips:+1.555.0100@Example.Test;user=phone",
    ]
    .iter()
    .enumerate()
    {
        let mut h = H::new();
        let (key, number) = invite_number(&mut h, uri, &format!("z9hG4bKnum{i}"));
        assert_eq!(number, "+15550100", "{uri}");
        assert_eq!(h.engine.pending(), 1);
        let outs = h.input(Input::NumberRouted {
            key: key.clone(),
            result: Ok(account(ALICE)),
        });
        let (lkey, aor) = lookup_of(&outs);
        assert_eq!((lkey, aor.as_str()), (key.clone(), ALICE), "{uri}");
        let outs = h.input(Input::Located {
            key,
            result: Ok(vec![plain(uas(), None)]),
        });
        let fwd = forwarded_invite(&outs);
        assert_eq!(fwd.hop, udp(uas()));
        assert_eq!(
            fwd.req().uri.as_str(),
            format!("sip:bob@{}", uas()),
            "the Request-URI is the contact"
        );
        assert_eq!(fwd.header("To"), Some(format!("<{uri}>").as_str()));
        assert_eq!(h.engine.pending(), 0);
    }
}

#[test]
fn a_number_whose_account_has_no_binding_gets_480() {
    let mut h = H::new();
    let (key, _) = invite_number(&mut h, "tel:+15550100", "z9hG4bKnone");
    let outs = h.input(Input::NumberRouted {
        key: key.clone(),
        result: Ok(account(ALICE)),
    });
    lookup_of(&outs);
    let r = final_response(&h.input(Input::Located {
        key,
        result: Ok(vec![]),
    }));
    assert_eq!(
        (r.status(), r.resp().reason.as_str()),
        (480, "Temporarily Unavailable")
    );
}

#[test]
fn a_number_routed_to_a_uri_is_proxied_there_by_rfc3263() {
    let mut h = H::new();
    let (key, _) = invite_number(&mut h, "tel:+15550100", "z9hG4bKuri");
    let outs = h.input(Input::NumberRouted {
        key: key.clone(),
        result: Ok(uri_route("sip:+15550100@carrier.test;user=phone")),
    });
    let Some(Output::Resolve {
        key: rkey, host, ..
    }) = outs.first()
    else {
        panic!("a Resolve expected: {outs:#?}");
    };
    assert_eq!((rkey, host.as_str()), (&key, "carrier.test"));
    let server = sa("198.51.100.50:5060");
    let outs = h.input(Input::Resolved {
        key,
        result: Ok(vec![(Transport::Udp, server)]),
    });
    let fwd = forwarded_invite(&outs);
    assert_eq!(fwd.hop, udp(server));
    assert_eq!(
        fwd.req().uri.as_str(),
        "sip:+15550100@carrier.test;user=phone",
        "the Request-URI is rewritten to the route"
    );
    // A route to an address is sent there with no resolution.
    let (key, _) = invite_number(&mut h, "sip:+15550100@example.test", "z9hG4bKip");
    let outs = h.input(Input::NumberRouted {
        key,
        result: Ok(uri_route("sip:+15550100@198.51.100.51:5070")),
    });
    let fwd = forwarded_invite(&outs);
    assert_eq!(fwd.hop, udp(sa("198.51.100.51:5070")));
    assert_eq!(fwd.req().uri.as_str(), "sip:+15550100@198.51.100.51:5070");
}

#[test]
fn a_uri_route_into_our_own_domain_is_looked_up_as_an_aor_once() {
    let mut h = H::new();
    let (key, _) = invite_number(&mut h, "tel:+15550100", "z9hG4bKself");
    // Routed to our own domain, even to the number's own AOR: no second number step.
    let outs = h.input(Input::NumberRouted {
        key: key.clone(),
        result: Ok(uri_route("sip:+15550100@example.test")),
    });
    assert!(no_number_lookup(&outs), "{outs:#?}");
    let (_, aor) = lookup_of(&outs);
    assert_eq!(aor, "+15550100@example.test");
    let r = final_response(&h.input(Input::Located {
        key,
        result: Ok(vec![]),
    }));
    assert_eq!((r.status(), r.resp().reason.as_str()), (404, "Not Found"));
}

#[test]
fn an_unrouted_number_gets_404_number_not_routed() {
    let mut h = H::new();
    let (key, _) = invite_number(&mut h, "tel:+15550199", "z9hG4bKunrouted");
    let r = final_response(&h.input(Input::NumberRouted {
        key,
        result: Ok(None),
    }));
    assert_eq!(
        (r.status(), r.resp().reason.as_str()),
        (404, "Number Not Routed")
    );
    assert_eq!(h.engine.pending(), 0);
    // A tel: URI that names no number we can place: the same, without asking.
    for (i, uri) in [
        "tel:5550100",
        "tel:+1555abc",
        "tel:5550100;phone-context=nowhere.test",
    ]
    .iter()
    .enumerate()
    {
        let outs = h.udp(
            uac(),
            &req("INVITE", uri)
                .branch(&format!("z9hG4bKbad{i}"))
                .call(&format!("bad{i}"))
                .text(),
        );
        assert!(no_number_lookup(&outs), "{uri}: {outs:#?}");
        let r = final_response(&outs);
        assert_eq!(
            (r.status(), r.resp().reason.as_str()),
            (404, "Number Not Routed")
        );
    }
}

#[test]
fn an_unrouted_sip_number_falls_back_to_the_aor_it_is() {
    let mut h = H::new();
    // An alias written as a number (provisioned before numbers existed) keeps working.
    let (key, _) = invite_number(&mut h, "sip:+15550100@example.test", "z9hG4bKalias");
    let outs = h.input(Input::NumberRouted {
        key: key.clone(),
        result: Ok(None),
    });
    let (_, aor) = lookup_of(&outs);
    assert_eq!(aor, "+15550100@example.test");
    let outs = h.input(Input::Located {
        key,
        result: Ok(vec![plain(uas(), None)]),
    });
    assert_eq!(forwarded_invite(&outs).hop, udp(uas()));
    // With nothing there either: 404 Number Not Routed.
    let (key, _) = invite_number(&mut h, "sip:+15550101@example.test", "z9hG4bKnothing");
    let outs = h.input(Input::NumberRouted {
        key: key.clone(),
        result: Ok(None),
    });
    lookup_of(&outs);
    let r = final_response(&h.input(Input::Located {
        key,
        result: Ok(vec![]),
    }));
    assert_eq!(
        (r.status(), r.resp().reason.as_str()),
        (404, "Number Not Routed")
    );
}

#[test]
fn local_forms_follow_the_domains_dial_plan() {
    let mut h = H::new();
    // No plan: a user of digits is an AOR, as before.
    let outs = h.udp(uac(), &req("INVITE", "sip:5550100@example.test").text());
    assert!(no_number_lookup(&outs));
    assert_eq!(lookup_of(&outs).1, "5550100@example.test");
    h.engine.set_dial_plans(&[(
        "example.test".into(),
        DialPlan {
            country_code: "1".into(),
            national_prefix: String::new(),
            international_prefix: "011".into(),
        },
    )]);
    let (_, number) = invite_number(&mut h, "sip:555-0100@example.test", "z9hG4bKnanp");
    assert_eq!(number, "+15550100");
    let (_, number) = invite_number(&mut h, "sip:01149301234@example.test", "z9hG4bKintl");
    assert_eq!(number, "+49301234");
    // A name is still a name.
    let outs = h.udp(
        uac(),
        &req("INVITE", "sip:bob@example.test")
            .branch("z9hG4bKname")
            .call("name")
            .text(),
    );
    assert!(no_number_lookup(&outs));
}

#[test]
fn a_registry_that_cannot_answer_gets_503() {
    let mut h = H::new();
    let (key, _) = invite_number(&mut h, "tel:+15550100", "z9hG4bKdown");
    let r = final_response(&h.input(Input::NumberRouted {
        key,
        result: Err(LocateError::Unavailable("managers unreachable".into())),
    }));
    assert_eq!(r.status(), 503);
    assert!(r.header("Retry-After").is_some());
}

#[test]
fn a_cancel_while_the_number_is_looked_up_ends_the_invite() {
    let mut h = H::new();
    let (key, _) = invite_number(&mut h, "tel:+15550100", "z9hG4bKcancel");
    let cancel = format!(
        "CANCEL tel:+15550100 SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKcancel;rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.test>;tag=a1\r\nTo: <tel:+15550100>\r\nCall-ID: z9hG4bKcancel\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
        uac()
    );
    let outs = h.udp(uac(), &cancel);
    let codes: Vec<u16> = responses(&outs).iter().map(Sent::status).collect();
    assert_eq!(codes, [200, 487]);
    // The answer that comes later changes nothing.
    let outs = h.input(Input::NumberRouted {
        key,
        result: Ok(account(ALICE)),
    });
    assert!(outs.is_empty(), "{outs:#?}");
}

#[test]
fn a_register_to_a_tel_uri_is_416() {
    let mut h = H::new();
    let r = one(h.udp(uac(), &req("REGISTER", "tel:+15550100").text()));
    assert_eq!(r.status(), 416);
}

#[test]
fn from_elsewhere_a_tel_number_is_reached_without_a_challenge() {
    let mut h = authed();
    let outs = h.udp(
        uac(),
        &req("INVITE", "tel:+15550100")
            .from("<sip:carol@elsewhere.test>;tag=c1")
            .text(),
    );
    assert!(
        !responses(&outs).iter().any(|s| s.status() == 407),
        "{outs:#?}"
    );
    assert_eq!(number_of(&outs).1, "+15550100");
    // A caller of ours is challenged first, as for any request.
    let outs = h.udp(
        uac(),
        &req("INVITE", "tel:+15550100")
            .branch("z9hG4bKours")
            .call("ours")
            .text(),
    );
    assert!(no_number_lookup(&outs));
    assert!(responses(&outs).iter().any(|s| s.status() == 407));
}

/// alice's REGISTER of her number `+15550100` (To), answering a challenge as `user`.
fn register_number(h: &mut H, user: &str, branch: &str) -> Vec<Output> {
    let number = register().to("<sip:+15550100@example.test>");
    let r401 = one(h.udp(uac(), &number.clone().branch(&format!("{branch}a")).text()));
    assert_eq!(r401.status(), 401);
    let ch = challenges(&r401, "WWW-Authenticate");
    assert_eq!(ch[0].realm, DOMAIN);
    let auth = answer_with(&ch[0], user, PASSWORD, "REGISTER", "sip:example.test");
    h.udp(
        uac(),
        &number
            .branch(&format!("{branch}b"))
            .cseq(2)
            .header(&format!("Authorization: {auth}"))
            .text(),
    )
}

#[test]
fn an_account_registering_its_own_number_binds_the_account() {
    let mut h = authed();
    let outs = register_number(&mut h, "alice", "z9hG4bKown");
    let (key, number) = number_of(&outs);
    assert_eq!(number, "+15550100");
    let outs = h.input(Input::NumberRouted {
        key: key.clone(),
        result: Ok(account("alice@EXAMPLE.test")),
    });
    let Some(Output::Register {
        key: rkey,
        info,
        auth: Some(check),
        ..
    }) = outs.first()
    else {
        panic!("the REGISTER goes to the account's registrar: {outs:#?}");
    };
    assert_eq!(rkey, &key);
    assert_eq!(info.aor, ALICE, "the account is bound, not the number");
    assert_eq!(info.received, Some(uac()));
    assert_eq!(owner_check(check, &mut RecentNonces::default()), Ok(()));
    let ok = final_response(&h.input(Input::Registered {
        key,
        result: Ok(vec![plain(uac(), None)]),
        at_ms: NOW_MS,
    }));
    assert_eq!(ok.status(), 200);
    assert!(
        ok.header("To")
            .is_some_and(|t| t.starts_with("<sip:+15550100@example.test>")),
        "{}",
        ok.text()
    );
    assert!(ok.header("Contact").is_some(), "{}", ok.text());
}

#[test]
fn another_accounts_number_is_not_yours_to_register() {
    for (i, route) in [
        account("bob@example.test"),
        None,
        uri_route("sip:x@carrier.test"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut h = authed();
        let outs = register_number(&mut h, "alice", &format!("z9hG4bKnot{i}"));
        let (key, _) = number_of(&outs);
        let outs = h.input(Input::NumberRouted {
            key,
            result: Ok(route.clone()),
        });
        assert!(
            !outs.iter().any(|o| matches!(o, Output::Register { .. })),
            "{route:?}: {outs:#?}"
        );
        let r = final_response(&outs);
        assert_eq!(
            (r.status(), r.resp().reason.as_str()),
            (403, "Authentication ID Does Not Match"),
            "{route:?}"
        );
        assert_eq!(h.engine.transactions(), 0, "refused with no state kept");
    }
    // An account whose user part is the number itself registers as before, with no lookup.
    let mut h = authed();
    let outs = register_number(&mut h, "+15550100", "z9hG4bKself");
    assert!(no_number_lookup(&outs));
    let Some(Output::Register { info, .. }) = outs.first() else {
        panic!("{outs:#?}");
    };
    assert_eq!(info.aor, "+15550100@example.test");
    // A name that is not a number still needs matching credentials.
    let mut h = authed();
    let r401 = one(h.udp(uac(), &register().to("<sip:carol@example.test>").text()));
    let ch = challenges(&r401, "WWW-Authenticate");
    let auth = answer_with(&ch[0], "alice", PASSWORD, "REGISTER", "sip:example.test");
    let r = one(h.udp(
        uac(),
        &register()
            .to("<sip:carol@example.test>")
            .branch("z9hG4bKcarol")
            .header(&format!("Authorization: {auth}"))
            .text(),
    ));
    assert_eq!(r.status(), 403);
}

/// alice's INVITE to bob with her number as the From, answering the 407 as `user`.
fn call_from_number(h: &mut H, user: &str, branch: &str) -> Vec<Output> {
    let invite = req("INVITE", "sip:bob@example.test")
        .from("<sip:+15550100@example.test>;tag=n1")
        .branch(&format!("{branch}a"))
        .call(branch);
    let outs = h.udp(uac(), &invite.text());
    let r407 = responses(&outs)
        .into_iter()
        .find(|s| s.status() == 407)
        .expect("407");
    let ch = challenges(&r407, "Proxy-Authenticate");
    let auth = answer_with(&ch[0], user, PASSWORD, "INVITE", "sip:bob@example.test");
    h.udp(
        uac(),
        &invite
            .branch(&format!("{branch}b"))
            .cseq(2)
            .header(&format!("Proxy-Authorization: {auth}"))
            .text(),
    )
}

#[test]
fn an_account_may_call_with_its_own_number_as_caller_id() {
    let mut h = authed();
    let outs = call_from_number(&mut h, "alice", "z9hG4bKcid");
    let (key, number) = number_of(&outs);
    assert_eq!(number, "+15550100");
    let outs = h.input(Input::NumberRouted {
        key: key.clone(),
        result: Ok(account(ALICE)),
    });
    let (akey, aor, check) = outs
        .iter()
        .find_map(|o| match o {
            Output::Authenticate { key, aor, auth } => Some((key.clone(), aor.clone(), auth)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the credentials are checked at the account: {outs:#?}"));
    assert_eq!((akey, aor.as_str()), (key.clone(), ALICE));
    assert_eq!(owner_check(check, &mut RecentNonces::default()), Ok(()));
    let outs = h.input(Input::Authenticated {
        key: key.clone(),
        result: Ok(()),
    });
    assert_eq!(lookup_of(&outs).1, "bob@example.test");
    let outs = h.input(Input::Located {
        key,
        result: Ok(vec![plain(uas(), None)]),
    });
    let fwd = forwarded_invite(&outs);
    assert_eq!(
        fwd.header("From"),
        Some("<sip:+15550100@example.test>;tag=n1"),
        "the caller ID goes on"
    );
    assert!(fwd.header("Proxy-Authorization").is_none());
}

#[test]
fn another_accounts_number_is_not_yours_to_call_from() {
    let mut h = authed();
    let outs = call_from_number(&mut h, "mallory", "z9hG4bKspoof");
    let (key, _) = number_of(&outs);
    let outs = h.input(Input::NumberRouted {
        key,
        result: Ok(account(ALICE)),
    });
    assert!(!outs
        .iter()
        .any(|o| matches!(o, Output::Authenticate { .. } | Output::Lookup { .. })));
    let r = final_response(&outs);
    assert_eq!(
        (r.status(), r.resp().reason.as_str()),
        (403, "Authentication ID Does Not Match")
    );
    assert_eq!(h.engine.transactions(), 0, "refused with no state kept");
}
