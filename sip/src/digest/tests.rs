//! Digest tests: the RFC examples, SIP vectors computed independently, and the whole
//! challenge/verify flow with its failures. Header parsing is tested in `header_tests.rs`,
//! the nonce and replay tables next to their code.

use proptest::prelude::*;

use super::*;
use crate::tests::msg;
use crate::Message;

pub(super) const REALM: &str = "atlanta.example.com";
pub(super) const T0: u64 = 1_700_000_000_000;
pub(super) const PASSWORD: &str = "wonderland 2024";

pub(super) fn hex(b: &[u8]) -> String {
    to_hex(b)
}

pub(super) fn keys() -> NonceKeys {
    NonceKeys::new(NonceKey::new(1, [0x5a; 32]), None).unwrap()
}

/// A table of the subscriber store: alice's HA1 per algorithm.
pub(super) fn alice(alg: Algorithm) -> Option<Ha1> {
    Some(ha1(alg, "alice", REALM, PASSWORD))
}

/// What alice's phone sends for `challenge`.
pub(super) fn answer(challenge: &Challenge, password: &str, nc: u32) -> Credentials {
    Credentials::answer(
        challenge,
        "alice",
        password,
        "REGISTER",
        "sip:atlanta.example.com",
        "0a1b2c3d",
        nc,
    )
}

pub(super) fn challenge(keys: &NonceKeys, alg: Algorithm, now: u64) -> Challenge {
    Challenge {
        realm: REALM.into(),
        nonce: keys.issue(now, [7; 8], REALM),
        algorithm: alg,
        stale: false,
        opaque: None,
    }
}

// ---- the RFC examples ----------------------------------------------------------------

/// RFC 2617 section 3.5 (HTTP, method GET).
const RFC2617: &str = "Digest username=\"Mufasa\",\r\n realm=\"testrealm@host.com\",\r\n \
     nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\",\r\n uri=\"/dir/index.html\",\r\n qop=auth,\r\n \
     nc=00000001,\r\n cnonce=\"0a4f113b\",\r\n response=\"6629fae49393a05397450978507c4ef1\",\r\n \
     opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";

/// RFC 7616 section 3.9.1, the SHA-256 credentials (HTTP, method GET). Note the password
/// there is "Circle of Life" (lower-case "of"), unlike RFC 2617's.
const RFC7616_SHA256: &str = r#"Digest username="Mufasa",
       realm="http-auth@example.org",
       uri="/dir/index.html",
       algorithm=SHA-256,
       nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
       nc=00000001,
       cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
       qop=auth,
       response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
       opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#;

/// The same section's MD5 credentials.
const RFC7616_MD5: &str = r#"Digest username="Mufasa", realm="http-auth@example.org",
       uri="/dir/index.html", algorithm=MD5,
       nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001,
       cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth,
       response="8ca523f5e9506fed4657c9700eebdbec",
       opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#;

/// RFC 7616 section 3.9.1, the challenge (offering auth and auth-int).
const RFC7616_CHALLENGE: &str = r#"Digest
       realm="http-auth@example.org",
       qop="auth, auth-int",
       algorithm=SHA-256,
       nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
       opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#;

#[test]
fn rfc2617_md5_example() {
    let c = Credentials::parse(RFC2617).unwrap();
    assert_eq!(c.username, "Mufasa");
    assert_eq!(c.realm, "testrealm@host.com");
    assert_eq!(c.nonce, "dcd98b7102dd2f0e8b11d0f600bfb0c093");
    assert_eq!(c.uri, "/dir/index.html");
    assert_eq!(c.algorithm, Algorithm::Md5, "MD5 when absent");
    assert_eq!(c.qop, Some(Qop::Auth));
    assert_eq!(c.nc, Some(1));
    assert_eq!(c.cnonce.as_deref(), Some("0a4f113b"));
    assert_eq!(
        c.opaque.as_deref(),
        Some("5ccc069c403ebaf9f0171e9517f40e41")
    );
    assert_eq!(hex(&c.response), "6629fae49393a05397450978507c4ef1");

    let key = ha1(
        Algorithm::Md5,
        "Mufasa",
        "testrealm@host.com",
        "Circle Of Life",
    );
    assert_eq!(key.to_hex(), "939e7578ed9e3c518a452acee763bce9");
    assert_eq!(check_response(&c, "GET", &key, false), Ok(()));
    // The method is part of HA2.
    assert_eq!(
        check_response(&c, "POST", &key, false),
        Err(VerifyError::Mismatch)
    );
    let wrong = ha1(
        Algorithm::Md5,
        "Mufasa",
        "testrealm@host.com",
        "Circle of Life",
    );
    assert_eq!(
        check_response(&c, "GET", &wrong, false),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn rfc7616_examples() {
    let c = Credentials::parse(RFC7616_SHA256).unwrap();
    assert_eq!(c.algorithm, Algorithm::Sha256);
    assert_eq!(c.response.len(), 32);
    let key = ha1(
        Algorithm::Sha256,
        "Mufasa",
        "http-auth@example.org",
        "Circle of Life",
    );
    assert_eq!(
        key.to_hex(),
        "7987c64c30e25f1b74be53f966b49b90f2808aa92faf9a00262392d7b4794232"
    );
    assert_eq!(key.as_bytes().len(), 32);
    assert_eq!(check_response(&c, "GET", &key, false), Ok(()));

    let md5 = Credentials::parse(RFC7616_MD5).unwrap();
    let key = ha1(
        Algorithm::Md5,
        "Mufasa",
        "http-auth@example.org",
        "Circle of Life",
    );
    assert_eq!(check_response(&md5, "GET", &key, false), Ok(()));

    // The client side: answering the RFC's challenge gives the RFC's credentials.
    let ch = Challenge::parse(RFC7616_CHALLENGE).unwrap();
    assert_eq!(ch.algorithm, Algorithm::Sha256);
    assert_eq!(ch.realm, "http-auth@example.org");
    assert!(!ch.stale);
    let ours = Credentials::answer(
        &ch,
        "Mufasa",
        "Circle of Life",
        "GET",
        "/dir/index.html",
        "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        1,
    );
    assert_eq!(ours, c);
}

/// A SIP REGISTER, computed independently of this code:
///
/// ```text
/// python3 -c 'import hashlib
/// for a in ["md5", "sha256"]:
///     H = lambda s: hashlib.new(a, s.encode()).hexdigest()
///     ha1 = H("alice:atlanta.example.com:wonderland 2024"); ha2 = H("REGISTER:sip:atlanta.example.com")
///     print(a, ha1, H(f"{ha1}:bm9uY2UtZXhhbXBsZQ:00000002:0a1b2c3d:auth:{ha2}"),
///           H(f"{ha1}:bm9uY2UtZXhhbXBsZQ:{ha2}"))'
/// ```
#[test]
fn sip_register_vectors() {
    let cases = [
        (
            Algorithm::Md5,
            "b43d597c24f306deb4fa0764ad0b17b4",
            "e1ccf1acca3f81d99e6912f60bcc485f",
            "245d9f41cfac68c25c1d4b0cd58c0876",
        ),
        (
            Algorithm::Sha256,
            "a014976745382b80636fdb3a7192989bb4ee2c4d7fdccab63c832031952bee50",
            "6a572e9d53d1de0602825f98053f17212fc9c9032ff7495a9d87bcd6b0bfba6e",
            "f39d81027a964b3f06a98e9b30d8b519321a0fcd81b09fd0acaade7af526c5eb",
        ),
    ];
    for (alg, ha1_hex, auth, rfc2069) in cases {
        let key = ha1(alg, "alice", REALM, PASSWORD);
        assert_eq!(key.to_hex(), ha1_hex);
        assert_eq!(key.algorithm(), alg);
        let stored = Ha1::from_hex(alg, &ha1_hex.to_uppercase()).unwrap();
        assert_eq!(stored.as_bytes(), key.as_bytes());
        assert_eq!(
            Ha1::from_bytes(alg, key.as_bytes()).unwrap().to_hex(),
            ha1_hex
        );

        let value = format!(
            "Digest username=\"alice\", realm=\"{REALM}\", nonce=\"bm9uY2UtZXhhbXBsZQ\", \
             uri=\"sip:atlanta.example.com\", response=\"{auth}\", algorithm={alg}, \
             cnonce=\"0a1b2c3d\", qop=auth, nc=00000002"
        );
        let c = Credentials::parse(&value).unwrap();
        assert_eq!(c.nc, Some(2));
        assert_eq!(check_response(&c, "REGISTER", &stored, false), Ok(()));
        assert_eq!(
            check_response(&c, "INVITE", &stored, false),
            Err(VerifyError::Mismatch)
        );

        // RFC 2069: no qop, no cnonce, no nc; only when allowed.
        let value = format!(
            "Digest username=\"alice\", realm=\"{REALM}\", nonce=\"bm9uY2UtZXhhbXBsZQ\", \
             uri=\"sip:atlanta.example.com\", response=\"{rfc2069}\", algorithm={alg}"
        );
        let c = Credentials::parse(&value).unwrap();
        assert_eq!((c.qop, c.nc, c.cnonce.as_deref()), (None, None, None));
        assert_eq!(
            check_response(&c, "REGISTER", &stored, false),
            Err(VerifyError::QopRequired)
        );
        assert_eq!(check_response(&c, "REGISTER", &stored, true), Ok(()));
    }
    assert!(Ha1::from_hex(Algorithm::Sha256, "b43d597c24f306deb4fa0764ad0b17b4").is_none());
    assert!(Ha1::from_hex(Algorithm::Md5, "b43d597c24f306deb4fa0764ad0b17bg").is_none());
    assert!(Ha1::from_bytes(Algorithm::Md5, &[0; 32]).is_none());
}

#[test]
fn algorithm_names() {
    assert_eq!(Algorithm::parse("MD5"), Ok(Algorithm::Md5));
    assert_eq!(Algorithm::parse("md5"), Ok(Algorithm::Md5));
    assert_eq!("sha-256".parse(), Ok(Algorithm::Sha256));
    assert_eq!(Algorithm::Sha256.to_string(), "SHA-256");
    assert_eq!(Algorithm::Md5.as_str(), "MD5");
    for bad in [
        "MD5-sess",
        "SHA-256-sess",
        "SHA-512-256",
        "SHA256",
        "",
        "MD5 ",
    ] {
        let err = Algorithm::parse(bad).unwrap_err();
        assert_eq!(err.name, bad);
        assert!(err.to_string().contains("no -sess"), "{err}");
    }
    let long = "x".repeat(1000);
    assert_eq!(Algorithm::parse(&long).unwrap_err().name.len(), 32);
    assert_eq!(
        Algorithm::parse(&"é".repeat(20)).unwrap_err().name.len(),
        32
    );
    assert_eq!(PREFERENCE, [Algorithm::Sha256, Algorithm::Md5]);
}

// ---- the whole flow ------------------------------------------------------------------

/// REGISTER without credentials, the challenge, the client's answer in a real message, and
/// verification of what the parser read.
#[test]
fn register_flow_through_the_parser() {
    let keys = keys();
    let policy = Policy::new(REALM, &keys);
    let mut counts = NonceCounts::new(100, policy.nonce_lifetime_ms);
    let head = [
        "REGISTER sip:atlanta.example.com SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds",
        "Max-Forwards: 70",
        "To: <sip:alice@atlanta.example.com>",
        "From: <sip:alice@atlanta.example.com>;tag=1928301774",
        "Call-ID: a84b4c76e66710@192.0.2.10",
        "CSeq: 1 REGISTER",
        "Contact: <sip:alice@192.0.2.10:5060>",
        "Content-Length: 0",
    ];
    let Message::Request(first) = crate::parse(&msg(&head, "")).unwrap() else {
        panic!("not a request");
    };
    assert!(credentials_in_headers(&first.headers, "Authorization", REALM).is_none());

    // 401 with both challenges; the phone takes the first it supports (SHA-256).
    let nonce = keys.issue(T0, [1, 2, 3, 4, 5, 6, 7, 8], REALM);
    let values = challenge_values(REALM, &nonce, false, None);
    let ch = Challenge::parse(&values[0]).unwrap();
    let creds = Credentials::answer(
        &ch,
        "alice",
        PASSWORD,
        "REGISTER",
        first.uri.as_str(),
        "c0ffee",
        1,
    );

    // The retry carries an unrelated realm's credentials too.
    let other = Credentials {
        realm: "biloxi.example.com".into(),
        ..creds.clone()
    };
    let auth = format!("Authorization: {creds}");
    let other_auth = format!("Authorization: {other}");
    let mut head2 = head.to_vec();
    head2[6] = "CSeq: 2 REGISTER";
    head2.insert(7, &other_auth);
    head2.insert(8, &auth);
    let Message::Request(second) = crate::parse(&msg(&head2, "")).unwrap() else {
        panic!("not a request");
    };
    let got = credentials_in_headers(&second.headers, "Authorization", REALM)
        .unwrap()
        .unwrap();
    assert_eq!(got, creds);
    assert_eq!(
        verify(
            &got,
            second.method.as_str(),
            alice,
            &policy,
            &mut counts,
            T0 + 500
        ),
        Ok(NonceInfo { issued_ms: T0 })
    );
    // The same message again is a replay.
    assert_eq!(
        verify(
            &got,
            second.method.as_str(),
            alice,
            &policy,
            &mut counts,
            T0 + 600
        ),
        Err(VerifyError::Replay(Replay::Seen))
    );
}

#[test]
fn verify_outcomes() {
    let keys = keys();
    let policy = Policy::new(REALM, &keys);
    let life = policy.nonce_lifetime_ms;
    for alg in PREFERENCE {
        let mut counts = NonceCounts::new(100, life);
        let ch = challenge(&keys, alg, T0);
        let run = |creds: &Credentials, counts: &mut NonceCounts, now: u64| {
            verify(creds, "REGISTER", alice, &policy, counts, now)
        };

        // Wrong password.
        let bad = answer(&ch, "wonderland 2025", 1);
        assert_eq!(run(&bad, &mut counts, T0), Err(VerifyError::Mismatch));
        // ... which was not recorded: the right answer with the same nc still goes through.
        let good = answer(&ch, PASSWORD, 1);
        assert_eq!(run(&good, &mut counts, T0), Ok(NonceInfo { issued_ms: T0 }));
        assert_eq!(
            run(&good, &mut counts, T0),
            Err(VerifyError::Replay(Replay::Seen))
        );
        assert!(run(&good, &mut counts, T0).unwrap_err().is_stale());

        // Out of order: 3 then 2, each once.
        let nc3 = answer(&ch, PASSWORD, 3);
        let nc2 = answer(&ch, PASSWORD, 2);
        assert!(run(&nc3, &mut counts, T0 + 10).is_ok());
        assert!(run(&nc2, &mut counts, T0 + 20).is_ok());
        assert_eq!(
            run(&nc2, &mut counts, T0 + 30),
            Err(VerifyError::Replay(Replay::Seen))
        );

        // Another method than the one signed.
        assert_eq!(
            verify(&nc3, "INVITE", alice, &policy, &mut counts, T0),
            Err(VerifyError::Mismatch)
        );

        // A tampered nonce (the attacker recomputes nothing: it cannot).
        let mut tampered = answer(&ch, PASSWORD, 9);
        let mut bytes = tampered.nonce.clone().into_bytes();
        bytes[20] = if bytes[20] == b'A' { b'B' } else { b'A' };
        tampered.nonce = String::from_utf8(bytes).unwrap();
        assert_eq!(
            run(&tampered, &mut counts, T0),
            Err(VerifyError::BadNonce(NonceError::BadMac))
        );
        let mut junk = answer(&ch, PASSWORD, 9);
        junk.nonce = "dcd98b7102dd2f0e8b11d0f600bfb0c093".into();
        assert_eq!(
            run(&junk, &mut counts, T0),
            Err(VerifyError::BadNonce(NonceError::Malformed))
        );

        // Expired: stale only when the response is right.
        let late = T0 + life + 1;
        let nc4 = answer(&ch, PASSWORD, 4);
        assert_eq!(run(&nc4, &mut counts, late), Err(VerifyError::Stale));
        assert!(VerifyError::Stale.is_stale());
        let bad4 = answer(&ch, "guess", 4);
        assert_eq!(run(&bad4, &mut counts, late), Err(VerifyError::Mismatch));
        assert!(!VerifyError::Mismatch.is_stale());

        // From the future (another node's clock far ahead).
        let future = challenge(&keys, alg, T0 + 60_000);
        assert_eq!(
            run(&answer(&future, PASSWORD, 1), &mut counts, T0),
            Err(VerifyError::BadNonce(NonceError::FromFuture))
        );

        // Another realm.
        let mut elsewhere = answer(&ch, PASSWORD, 5);
        elsewhere.realm = "biloxi.example.com".into();
        assert_eq!(
            run(&elsewhere, &mut counts, T0),
            Err(VerifyError::WrongRealm)
        );

        // No such user, or no HA1 for this algorithm.
        assert_eq!(
            verify(&nc3, "REGISTER", |_| None, &policy, &mut counts, T0),
            Err(VerifyError::UnknownUser)
        );
    }
}

#[test]
fn verify_policy() {
    let keys = keys();
    let sha_only = Policy {
        algorithms: &[Algorithm::Sha256],
        ..Policy::new(REALM, &keys)
    };
    let mut counts = NonceCounts::new(10, sha_only.nonce_lifetime_ms);
    let md5 = answer(&challenge(&keys, Algorithm::Md5, T0), PASSWORD, 1);
    assert_eq!(
        verify(&md5, "REGISTER", alice, &sha_only, &mut counts, T0),
        Err(VerifyError::UnsupportedAlgorithm(Algorithm::Md5))
    );

    // An HA1 of the wrong algorithm from the store is refused, not mis-verified.
    let policy = Policy::new(REALM, &keys);
    let sha = answer(&challenge(&keys, Algorithm::Sha256, T0), PASSWORD, 1);
    assert_eq!(
        verify(
            &sha,
            "REGISTER",
            |_| alice(Algorithm::Md5),
            &policy,
            &mut counts,
            T0
        ),
        Err(VerifyError::UnsupportedAlgorithm(Algorithm::Sha256))
    );

    // qop=auth-int is read but refused.
    let mut int = sha.clone();
    int.qop = Some(Qop::AuthInt);
    assert_eq!(
        verify(&int, "REGISTER", alice, &policy, &mut counts, T0),
        Err(VerifyError::UnsupportedQop)
    );

    // qop present without nc and cnonce (only a hand-built value can be like this).
    let mut half = sha.clone();
    half.nc = None;
    half.cnonce = None;
    assert_eq!(
        check_response(&half, "REGISTER", &alice(Algorithm::Sha256).unwrap(), false),
        Err(VerifyError::Mismatch)
    );

    // RFC 2069 credentials: refused by default, accepted when allowed (no nc to record).
    let mut old = sha.clone();
    old.qop = None;
    old.nc = None;
    old.cnonce = None;
    let key = alice(Algorithm::Sha256).unwrap();
    let mut out = [0u8; 32];
    let n = compute_response(&old, "REGISTER", &key, &mut out).unwrap();
    old.response = out[..n].to_vec();
    assert_eq!(
        verify(&old, "REGISTER", alice, &policy, &mut counts, T0),
        Err(VerifyError::QopRequired)
    );
    let lenient = Policy {
        allow_rfc2069: true,
        ..Policy::new(REALM, &keys)
    };
    assert!(verify(&old, "REGISTER", alice, &lenient, &mut counts, T0).is_ok());
    assert!(verify(&old, "REGISTER", alice, &lenient, &mut counts, T0).is_ok());
}

#[test]
fn verify_across_key_rotation() {
    let mut keys = keys();
    let ch_old = challenge(&keys, Algorithm::Sha256, T0);
    keys.rotate(NonceKey::new(2, [0x6b; 32])).unwrap();
    let ch_new = challenge(&keys, Algorithm::Sha256, T0);
    {
        let policy = Policy::new(REALM, &keys);
        let mut counts = NonceCounts::new(10, policy.nonce_lifetime_ms);
        for ch in [&ch_old, &ch_new] {
            let creds = answer(ch, PASSWORD, 1);
            assert!(verify(&creds, "REGISTER", alice, &policy, &mut counts, T0).is_ok());
        }
    }
    keys.rotate(NonceKey::new(3, [0x7c; 32])).unwrap();
    let policy = Policy::new(REALM, &keys);
    let mut counts = NonceCounts::new(10, policy.nonce_lifetime_ms);
    assert_eq!(
        verify(
            &answer(&ch_old, PASSWORD, 2),
            "REGISTER",
            alice,
            &policy,
            &mut counts,
            T0
        ),
        Err(VerifyError::BadNonce(NonceError::UnknownKey))
    );
}

#[test]
fn eviction_through_verify_never_accepts_twice() {
    let keys = keys();
    let policy = Policy::new(REALM, &keys);
    let mut counts = NonceCounts::new(2, policy.nonce_lifetime_ms);
    let chs: Vec<_> = (0..3)
        .map(|i| challenge(&keys, Algorithm::Md5, T0 + i))
        .collect();
    for ch in &chs {
        let c = answer(ch, PASSWORD, 1);
        assert!(verify(&c, "REGISTER", alice, &policy, &mut counts, T0 + 10).is_ok());
    }
    // The first nonce was evicted: neither its old count nor a new one is accepted.
    for nc in [1, 2] {
        let c = answer(&chs[0], PASSWORD, nc);
        assert_eq!(
            verify(&c, "REGISTER", alice, &policy, &mut counts, T0 + 20),
            Err(VerifyError::Replay(Replay::Evicted))
        );
    }
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let keys = NonceKeys::new(NonceKey::new(1, [0xab; 32]), None).unwrap();
    let policy = Policy::new(REALM, &keys);
    let key = ha1(Algorithm::Sha256, "alice", REALM, PASSWORD);
    let ch = challenge(&keys, Algorithm::Sha256, T0);
    let creds = answer(&ch, PASSWORD, 1);
    let debug = format!("{policy:?} {key:?} {creds:?} {ch:?}");
    assert!(!debug.contains(PASSWORD), "{debug}");
    assert!(!debug.contains(&key.to_hex()), "{debug}");
    // The key's bytes (0xab = 171) appear nowhere in the policy's output.
    assert!(!format!("{policy:?}").contains("171"), "{policy:?}");
    assert_eq!(format!("{key:?}"), "Ha1(SHA-256, <redacted>)");
}

proptest! {
    /// Whatever the password, only the right one verifies.
    #[test]
    fn only_the_right_password_verifies(password in "\\PC{0,30}", nc in 1u32..) {
        let keys = keys();
        let policy = Policy::new(REALM, &keys);
        let mut counts = NonceCounts::new(10, policy.nonce_lifetime_ms);
        let ch = challenge(&keys, Algorithm::Sha256, T0);
        let creds = answer(&ch, &password, nc);
        let got = verify(&creds, "REGISTER", alice, &policy, &mut counts, T0);
        if password == PASSWORD {
            prop_assert!(got.is_ok());
        } else {
            prop_assert_eq!(got, Err(VerifyError::Mismatch));
        }
    }
}
