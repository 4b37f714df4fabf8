//! Tests of who may use the farm ([`AuthMode::Digest`]): challenges, the split check with
//! the registrar, and the relaying rules.

use super::tests::*;
use super::*;
use crate::digest::{
    verify_at_owner, Admit, Challenge, Credentials, Ha1, NonceKey, NonceKeys, RecentNonces,
};

pub(super) const PASSWORD: &str = "correct horse";

fn keys() -> NonceKeys {
    NonceKeys::new(NonceKey::new(1, [7; 32]), None).unwrap()
}

/// An engine that authenticates, holding the farm's keys, its wall clock at `NOW_MS`.
pub(super) fn authed() -> H {
    authed_with(|_| {})
}

/// [`authed`] with the defaults `f` changes.
fn authed_with(f: impl FnOnce(&mut EngineConfig)) -> H {
    let mut h = H::with(|c| {
        c.auth = AuthMode::Digest;
        c.seed = 42;
        f(c);
    });
    h.engine.set_keys(Some(keys()));
    h.engine.set_wall_clock(h.t0, NOW_MS);
    h
}

pub(super) fn register() -> Req {
    req("REGISTER", "sip:example.test")
        .to("<sip:alice@example.test>")
        .branch("z9hG4bKreg1")
}

/// The challenges of a 401/407, parsed; checks they come SHA-256 first, then MD5.
pub(super) fn challenges(sent: &Sent, header: &str) -> Vec<Challenge> {
    let all: Vec<Challenge> = sent
        .msg
        .headers()
        .all(header)
        .map(|h| Challenge::parse(h.value()).unwrap())
        .collect();
    assert_eq!(all.len(), 2, "{}", sent.text());
    assert_eq!(all[0].algorithm, crate::digest::Algorithm::Sha256);
    assert_eq!(all[1].algorithm, crate::digest::Algorithm::Md5);
    assert_eq!(all[0].nonce, all[1].nonce);
    all
}

pub(super) fn answer_with(
    c: &Challenge,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
) -> String {
    Credentials::answer(c, user, password, method, uri, "cn1", 1).to_string()
}

/// What the registrar does with an [`AuthCheck`] for alice (password [`PASSWORD`]).
pub(super) fn owner_check(check: &AuthCheck, counts: &mut RecentNonces) -> Result<(), LocateError> {
    verify_at_owner(
        &check.credentials,
        &check.method,
        |alg| Some(Ha1::compute(alg, "alice", DOMAIN, PASSWORD)),
        check.issued_ms,
        check.lifetime_ms,
        counts,
        NOW_MS,
    )
    .map_err(|e| LocateError::Unauthorized {
        stale: e.is_stale(),
    })
}

#[test]
fn a_register_is_challenged_then_checked_at_the_registrar() {
    let mut h = authed();
    let r401 = one(h.udp(uac(), &register().text()));
    assert_eq!(r401.status(), 401);
    let ch = challenges(&r401, "WWW-Authenticate");
    assert_eq!(ch[0].realm, DOMAIN);
    assert!(!ch[0].stale);

    let auth = answer_with(&ch[0], "alice", PASSWORD, "REGISTER", "sip:example.test");
    let outs = h.udp(
        uac(),
        &register()
            .branch("z9hG4bKreg2")
            .cseq(2)
            .header(&format!("Authorization: {auth}"))
            .text(),
    );
    let Some(Output::Register {
        key,
        auth: Some(check),
        info,
        ..
    }) = outs.first()
    else {
        panic!("the REGISTER goes to the registrar with its credentials: {outs:#?}");
    };
    assert_eq!(info.aor, "alice@example.test");
    assert_eq!(check.method, "REGISTER");
    assert_eq!(check.issued_ms, Some(NOW_MS));
    let mut counts = RecentNonces::default();
    assert_eq!(owner_check(check, &mut counts), Ok(()));
    // The same credentials again are a replay at the registrar.
    assert_eq!(
        owner_check(check, &mut counts),
        Err(LocateError::Unauthorized { stale: true })
    );
    let ok = one(h.input(Input::Registered {
        key: key.clone(),
        result: Ok(vec![]),
        at_ms: NOW_MS,
    }));
    assert_eq!(ok.status(), 200);
}

#[test]
fn a_wrong_password_is_counted_and_challenged_again() {
    let mut h = authed();
    let ch = challenges(&one(h.udp(uac(), &register().text())), "WWW-Authenticate");
    let auth = answer_with(&ch[1], "alice", "wrong", "REGISTER", "sip:example.test");
    let outs = h.udp(
        uac(),
        &register()
            .branch("z9hG4bKreg2")
            .header(&format!("Authorization: {auth}"))
            .text(),
    );
    let Some(Output::Register {
        key,
        auth: Some(check),
        ..
    }) = outs.first()
    else {
        panic!("{outs:#?}");
    };
    let verdict = owner_check(check, &mut RecentNonces::default());
    assert_eq!(verdict, Err(LocateError::Unauthorized { stale: false }));
    let again = one(h.input(Input::Registered {
        key: key.clone(),
        result: verdict.map(|_| vec![]),
        at_ms: NOW_MS,
    }));
    assert_eq!(again.status(), 401);
    assert!(!challenges(&again, "WWW-Authenticate")[0].stale);
    assert_eq!(*h.engine.env().failed.borrow(), vec![uac().ip()]);
}

#[test]
fn a_replayed_count_gets_stale_and_is_not_counted_as_a_failure() {
    let mut h = authed();
    let outs = h.udp(uac(), &register().text());
    let ch = challenges(&one(outs), "WWW-Authenticate");
    let auth = answer_with(&ch[0], "alice", PASSWORD, "REGISTER", "sip:example.test");
    let outs = h.udp(
        uac(),
        &register()
            .branch("z9hG4bKreg2")
            .header(&format!("Authorization: {auth}"))
            .text(),
    );
    let Some(Output::Register { key, .. }) = outs.first() else {
        panic!("{outs:#?}");
    };
    let again = one(h.input(Input::Registered {
        key: key.clone(),
        result: Err(LocateError::Unauthorized { stale: true }),
        at_ms: NOW_MS,
    }));
    assert_eq!(again.status(), 401);
    assert!(challenges(&again, "WWW-Authenticate")[0].stale);
    assert!(h.engine.env().failed.borrow().is_empty());
}

#[test]
fn credentials_must_be_for_the_aor_and_a_nonce_of_ours() {
    let mut h = authed();
    let ch = challenges(&one(h.udp(uac(), &register().text())), "WWW-Authenticate");
    // bob's credentials on alice's REGISTER.
    let auth = answer_with(&ch[0], "bob", PASSWORD, "REGISTER", "sip:example.test");
    let r = one(h.udp(
        uac(),
        &register()
            .branch("z9hG4bKreg2")
            .header(&format!("Authorization: {auth}"))
            .text(),
    ));
    assert_eq!(r.status(), 403);
    // A nonce made with another key: a fresh challenge, not stale.
    let other = NonceKeys::new(NonceKey::new(1, [9; 32]), None).unwrap();
    let forged = Challenge {
        nonce: other.issue(NOW_MS, [1; 8], DOMAIN),
        ..ch[0].clone()
    };
    let auth = answer_with(&forged, "alice", PASSWORD, "REGISTER", "sip:example.test");
    let r = one(h.udp(
        uac(),
        &register()
            .branch("z9hG4bKreg3")
            .header(&format!("Authorization: {auth}"))
            .text(),
    ));
    assert_eq!(r.status(), 401);
    assert!(!challenges(&r, "WWW-Authenticate")[0].stale);
    // Credentials that do not parse: 400.
    let r = one(h.udp(
        uac(),
        &register()
            .branch("z9hG4bKreg4")
            .header("Authorization: Digest realm=\"example.test\", username=")
            .text(),
    ));
    assert_eq!(r.status(), 400);
    // A REGISTER for an AOR of another domain, sent to ours.
    let r = one(h.udp(
        uac(),
        &register()
            .branch("z9hG4bKreg5")
            .to("<sip:alice@elsewhere.test>")
            .text(),
    ));
    assert_eq!(r.status(), 403);
}

#[test]
fn an_expired_nonce_goes_to_the_registrar_marked_expired() {
    let mut h = authed();
    let ch = challenges(&one(h.udp(uac(), &register().text())), "WWW-Authenticate");
    let auth = answer_with(&ch[0], "alice", PASSWORD, "REGISTER", "sip:example.test");
    h.at(crate::digest::DEFAULT_NONCE_LIFETIME_MS + 1_000);
    let outs = h.udp(
        uac(),
        &register()
            .branch("z9hG4bKreg2")
            .header(&format!("Authorization: {auth}"))
            .text(),
    );
    let Some(Output::Register {
        auth: Some(check), ..
    }) = outs.first()
    else {
        panic!("{outs:#?}");
    };
    assert_eq!(check.issued_ms, None);
    assert_eq!(
        owner_check(check, &mut RecentNonces::default()),
        Err(LocateError::Unauthorized { stale: true })
    );
}

#[test]
fn a_slowed_or_blocked_source_is_refused_before_any_check() {
    let mut h = authed();
    let ch = challenges(&one(h.udp(uac(), &register().text())), "WWW-Authenticate");
    let auth = answer_with(&ch[0], "alice", PASSWORD, "REGISTER", "sip:example.test");
    for (i, admit) in [Admit::TooSoon, Admit::Blocked(1_000)]
        .into_iter()
        .enumerate()
    {
        h.engine.env().admit.set(Some(admit));
        let r = one(h.udp(
            uac(),
            &register()
                .branch(&format!("z9hG4bKslow{i}"))
                .header(&format!("Authorization: {auth}"))
                .text(),
        ));
        assert_eq!(r.status(), 403, "{}", r.text());
    }
}

#[test]
fn without_the_farms_key_requests_that_need_it_get_503() {
    let mut h = authed();
    h.engine.set_keys(None);
    let r = one(h.udp(uac(), &register().text()));
    assert_eq!(r.status(), 503);
    assert!(r.header("Retry-After").is_some());
}

#[test]
fn a_call_from_our_domain_is_challenged_with_407_then_routed() {
    let mut h = authed();
    let invite = req("INVITE", "sip:bob@example.test");
    let outs = h.udp(uac(), &invite.text());
    let resp = responses(&outs);
    let r407 = resp.iter().find(|s| s.status() == 407).expect("407");
    let ch = challenges(r407, "Proxy-Authenticate");
    h.udp(
        uac(),
        &format!(
            "ACK sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKinvite1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.test>;tag=a1\r\nTo: <sip:bob@example.test>;tag={}\r\nCall-ID: call-1@198.51.100.10\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            uac(),
            h.engine.config().tag
        ),
    );
    let auth = answer_with(&ch[0], "alice", PASSWORD, "INVITE", "sip:bob@example.test");
    let invite2 = invite
        .clone()
        .branch("z9hG4bKinvite2")
        .cseq(2)
        .header(&format!("Proxy-Authorization: {auth}"))
        .header("Proxy-Authorization: Digest username=\"x\", realm=\"upstream.test\", nonce=\"n\", uri=\"sip:bob@example.test\", response=\"00112233445566778899aabbccddeeff\"");
    let outs = h.udp(uac(), &invite2.text());
    let (key, aor, check) = outs
        .iter()
        .find_map(|o| match o {
            Output::Authenticate { key, aor, auth } => {
                Some((key.clone(), aor.clone(), auth.clone()))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("the caller is checked at its registrar: {outs:#?}"));
    assert_eq!(aor, "alice@example.test");
    assert_eq!(owner_check(&check, &mut RecentNonces::default()), Ok(()));
    let outs = h.input(Input::Authenticated {
        key: key.clone(),
        result: Ok(()),
    });
    let (lkey, aor) = lookup_of(&outs);
    assert_eq!((lkey, aor.as_str()), (key.clone(), "bob@example.test"));
    let outs = h.input(Input::Located {
        key,
        result: Ok(vec![plain(uas(), None)]),
    });
    let fwd = forwarded_invite(&outs);
    let creds: Vec<&str> = fwd
        .msg
        .headers()
        .all("Proxy-Authorization")
        .map(|h| h.value())
        .collect();
    assert_eq!(
        creds.len(),
        1,
        "ours are consumed, others kept: {}",
        fwd.text()
    );
    assert!(creds[0].contains("upstream.test"));
    // Our Record-Route is signed for the call.
    let rr = fwd.header("Record-Route").unwrap().to_string();
    let tag = rr
        .split(";ohs=")
        .nth(1)
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or_else(|| panic!("a signed Record-Route: {rr}"));
    assert!(keys().check_route_tag("call-1@198.51.100.10", tag));
}

#[test]
fn a_refused_caller_gets_407_again() {
    let mut h = authed();
    let outs = h.udp(uac(), &req("OPTIONS", "sip:bob@example.test").text());
    let ch = challenges(&one(outs), "Proxy-Authenticate");
    let auth = answer_with(&ch[0], "alice", "wrong", "OPTIONS", "sip:bob@example.test");
    // The OPTIONS again with the credentials (a new transaction), and what the engine answers
    // once the registrar gave `verdict`.
    let mut answered = |branch: &str, verdict: LocateError| {
        let outs = h.udp(
            uac(),
            &req("OPTIONS", "sip:bob@example.test")
                .branch(branch)
                .header(&format!("Proxy-Authorization: {auth}"))
                .text(),
        );
        let Some(Output::Authenticate { key, .. }) = outs.first() else {
            panic!("{outs:#?}");
        };
        one(h.input(Input::Authenticated {
            key: key.clone(),
            result: Err(verdict),
        }))
    };
    let r = answered("z9hG4bKopt2", LocateError::Unauthorized { stale: false });
    assert_eq!(r.status(), 407);
    // A blocked account: 403 from the registrar.
    let blocked = LocateError::Rejected {
        status: 403,
        reason: "Account Blocked".into(),
        min_expires: None,
    };
    let r = answered("z9hG4bKopt3", blocked);
    assert_eq!(r.status(), 403);
    assert_eq!(
        h.engine.env().failed.borrow().len(),
        1,
        "only the wrong password counts"
    );
}

#[test]
fn from_elsewhere_only_our_users_are_reached() {
    let mut h = authed();
    let foreign = "<sip:carol@elsewhere.test>;tag=c1";
    // To one of our users: no challenge.
    let outs = h.udp(
        uac(),
        &req("INVITE", "sip:bob@example.test").from(foreign).text(),
    );
    let (_, aor) = lookup_of(&outs);
    assert_eq!(aor, "bob@example.test");
    // To another domain, an IP address, or through a Route elsewhere: 403.
    for (i, target) in [
        "sip:dave@elsewhere.test",
        "sip:dave@203.0.113.9",
        "sip:dave@192.0.2.2",
    ]
    .iter()
    .enumerate()
    {
        let outs = h.udp(
            uac(),
            &req("INVITE", target)
                .from(foreign)
                .branch(&format!("z9hG4bKrelay{i}"))
                .call(&format!("relay-{i}"))
                .text(),
        );
        let r = responses(&outs);
        assert!(r.iter().any(|s| s.status() == 403), "{target}: {outs:#?}");
        assert!(requests(&outs, Method::Invite).is_empty());
    }
    let outs = h.udp(
        uac(),
        &req("MESSAGE", "sip:bob@example.test")
            .from(foreign)
            .branch("z9hG4bKroute")
            .header("Route: <sip:203.0.113.9;lr>")
            .text(),
    );
    assert_eq!(one(outs).status(), 403);
    // A keep-alive OPTIONS to the node is answered, whoever sends it.
    let r = one(h.udp(
        uac(),
        &req("OPTIONS", "sip:192.0.2.1:5060")
            .from(foreign)
            .branch("z9hG4bKping")
            .text(),
    ));
    assert_eq!(r.status(), 200);
}

#[test]
fn in_dialog_requests_pass_only_with_our_signature() {
    let mut h = authed();
    let tag = keys().route_tag("dlg-1");
    let foreign = "<sip:carol@elsewhere.test>;tag=c1";
    // A BYE from the far end of a call we record-routed, to its contact elsewhere.
    let bye = req("BYE", "sip:dave@203.0.113.9")
        .from(foreign)
        .to("<sip:bob@example.test>;tag=b1")
        .call("dlg-1")
        .branch("z9hG4bKbye1");
    let outs = h.udp(
        uac(),
        &bye.clone()
            .header(&format!("Route: <sip:192.0.2.1:5060;lr;ohs={tag}>"))
            .text(),
    );
    assert_eq!(requests(&outs, Method::Bye).len(), 1, "{outs:#?}");
    // The same with a forged or missing signature, or another call's: relaying refused.
    for (i, route) in [
        "<sip:192.0.2.1:5060;lr;ohs=AAAAAAAAAAAA>".to_string(),
        "<sip:192.0.2.1:5060;lr>".to_string(),
        format!("<sip:192.0.2.1:5060;lr;ohs={}>", keys().route_tag("dlg-2")),
    ]
    .iter()
    .enumerate()
    {
        let outs = h.udp(
            uac(),
            &bye.clone()
                .branch(&format!("z9hG4bKbye-forged{i}"))
                .header(&format!("Route: {route}"))
                .text(),
        );
        assert!(
            requests(&outs, Method::Bye).is_empty(),
            "{route}: {outs:#?}"
        );
        assert_eq!(responses(&outs)[0].status(), 403);
    }
}

#[test]
fn every_provisioned_domain_is_served_with_its_own_realm() {
    let mut h = authed();
    h.engine.set_domains(&["Second.Test".to_string()]);
    assert_eq!(h.engine.domains(), ["example.test", "second.test"]);
    let r = one(h.udp(
        uac(),
        &req("REGISTER", "sip:second.test")
            .to("<sip:erin@second.test>")
            .branch("z9hG4bKsecond")
            .text(),
    ));
    assert_eq!(r.status(), 401);
    assert_eq!(challenges(&r, "WWW-Authenticate")[0].realm, "second.test");
}

#[test]
fn the_challenges_follow_the_configured_algorithms() {
    let mut h = authed_with(|c| {
        c.algorithms = vec![
            crate::digest::Algorithm::Md5,
            crate::digest::Algorithm::Sha256,
        ];
    });
    let r = one(h.udp(uac(), &register().text()));
    let algs: Vec<String> = r
        .msg
        .headers()
        .all("WWW-Authenticate")
        .map(|v| Challenge::parse(v.value()).unwrap().algorithm.to_string())
        .collect();
    assert_eq!(algs, ["MD5", "SHA-256"]);
    // SHA-256 only: MD5 credentials get a fresh challenge, not a check.
    let mut h = authed_with(|c| {
        c.algorithms = vec![crate::digest::Algorithm::Sha256];
    });
    let r = one(h.udp(uac(), &register().text()));
    let ch: Vec<Challenge> = r
        .msg
        .headers()
        .all("WWW-Authenticate")
        .map(|v| Challenge::parse(v.value()).unwrap())
        .collect();
    assert_eq!(ch.len(), 1);
    let md5 = Challenge {
        algorithm: crate::digest::Algorithm::Md5,
        ..ch[0].clone()
    };
    let auth = answer_with(&md5, "alice", PASSWORD, "REGISTER", "sip:example.test");
    let r = one(h.udp(
        uac(),
        &register()
            .branch("z9hG4bKmd5")
            .header(&format!("Authorization: {auth}"))
            .text(),
    ));
    assert_eq!(r.status(), 401);
}

#[test]
fn with_authentication_off_nothing_is_challenged() {
    let mut h = H::new();
    let outs = h.udp(uac(), &register().text());
    assert!(matches!(
        outs.first(),
        Some(Output::Register { auth: None, .. })
    ));
    let outs = h.udp(
        uac(),
        &req("INVITE", "sip:dave@elsewhere.test")
            .branch("z9hG4bKopen")
            .text(),
    );
    assert!(outs.iter().any(|o| matches!(o, Output::Resolve { .. })));
}

/// Challenges, refusals and the 200 to a keep-alive OPTIONS are answered statelessly (RFC
/// 3261 section 8.2.7): a flood of unauthenticated requests holds no transaction, no timer
/// and no response, and a retransmission is answered again (with a fresh nonce).
#[test]
fn unauthenticated_requests_leave_no_state() {
    let mut h = authed();
    let mut nonces = Vec::new();
    for i in 0..1000 {
        let reg = register().branch(&format!("z9hG4bKflood{i}"));
        let r = one(h.udp(uac(), &reg.call(&format!("c{i}@x")).text()));
        assert_eq!(r.status(), 401);
        nonces.push(challenges(&r, "WWW-Authenticate")[0].nonce.clone());
        let invite = req("INVITE", "sip:bob@example.test")
            .branch(&format!("z9hG4bKinv{i}"))
            .call(&format!("i{i}@x"));
        let outs = h.udp(uac(), &invite.text());
        assert!(
            responses(&outs).iter().any(|s| s.status() == 407),
            "{outs:#?}"
        );
        let relay = req("MESSAGE", "sip:someone@elsewhere.test")
            .from("<sip:mallory@elsewhere.test>;tag=m")
            .branch(&format!("z9hG4bKrel{i}"))
            .call(&format!("r{i}@x"));
        assert_eq!(one(h.udp(uac(), &relay.text())).status(), 403);
        let ping = req("OPTIONS", "sip:example.test")
            .branch(&format!("z9hG4bKping{i}"))
            .call(&format!("p{i}@x"));
        assert_eq!(one(h.udp(uac(), &ping.text())).status(), 200);
    }
    assert_eq!(h.engine.transactions(), 0, "no transaction holds a slot");
    assert_eq!(h.engine.lingering(), 0);
    assert!(
        h.engine.poll_timeout().is_none(),
        "no timer waits for any of them"
    );
    // A retransmitted REGISTER is challenged again, with a new nonce.
    let again = one(h.udp(
        uac(),
        &register().branch("z9hG4bKflood0").call("c0@x").text(),
    ));
    assert_eq!(again.status(), 401);
    assert_ne!(challenges(&again, "WWW-Authenticate")[0].nonce, nonces[0]);
    // The ACK of a stateless 407 is absorbed, not routed to the callee.
    let ack = format!(
        "ACK sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKinv0;rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.test>;tag=a1\r\nTo: <sip:bob@example.test>;tag={}\r\nCall-ID: i0@x\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        uac(),
        h.engine.config().tag
    );
    let outs = h.udp(uac(), &ack);
    assert!(outs.is_empty(), "the ACK went somewhere: {outs:#?}");
}
