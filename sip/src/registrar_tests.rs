//! Registrar binding rules: RFC 3261 section 10.3 cases, expiry, merging.

use proptest::prelude::*;

use super::*;
use crate::tests::msg;
use crate::{parse, Message};

const NOW: u64 = 1_700_000_000_000;

/// A REGISTER for 1000@example.test with the given Contact lines and headers.
fn register(call_id: &str, cseq: u32, extra: &[&str]) -> Request {
    let cseq_line = format!("CSeq: {cseq} REGISTER");
    let call_line = format!("Call-ID: {call_id}");
    let mut head = vec![
        "REGISTER sip:example.test SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1",
        "Max-Forwards: 70",
        "From: <sip:1000@example.test>;tag=a",
        "To: <sip:1000@Example.TEST>",
        &call_line,
        &cseq_line,
    ];
    head.extend_from_slice(extra);
    head.push("Content-Length: 0");
    match parse(&msg(&head, "")).unwrap() {
        Message::Request(r) => r,
        Message::Response(_) => unreachable!(),
    }
}

fn flow() -> Flow {
    Flow {
        node: "node1".into(),
        transport: Transport::Udp,
        remote: "127.0.0.1:5070".parse().unwrap(),
        local: "127.0.1.7:5060".parse().unwrap(),
        conn_id: 0,
    }
}

fn info(call_id: &str, cseq: u32, extra: &[&str]) -> RegisterInfo {
    RegisterInfo::from_request(
        &register(call_id, cseq, extra),
        Some(flow()),
        Some("127.0.0.1:5070".parse().unwrap()),
    )
    .unwrap()
}

fn apply(b: &mut Bindings, i: &RegisterInfo, now: u64) -> Result<Vec<Binding>, RegisterError> {
    b.apply_register(i, now, &RegistrarPolicy::default())
}

#[test]
fn extracts_the_register() {
    let i = info(
        "c1",
        7,
        &[
            "Contact: <sip:1000@10.0.0.1:5070;transport=UDP>;expires=60;q=0.5",
            "Expires: 300",
        ],
    );
    assert_eq!(i.aor, "1000@example.test");
    assert_eq!(
        i.aor,
        onehop_overlay::ring::canonical_aor("sip:1000@Example.TEST").unwrap()
    );
    assert_eq!(
        (i.call_id.as_str(), i.cseq, i.expires),
        ("c1", 7, Some(300))
    );
    assert_eq!(
        i.contacts,
        RegisterContacts::Set(vec![ContactInfo {
            uri: "sip:1000@10.0.0.1:5070;transport=UDP".into(),
            expires: Some(60),
            q: Some(500),
        }])
    );
    assert_eq!(info("c1", 1, &[]).contacts, RegisterContacts::Fetch);
    assert_eq!(
        info("c1", 1, &["Contact: *", "Expires: 0"]).contacts,
        RegisterContacts::Wildcard
    );
    let err = RegisterInfo::from_request(
        &register("c", 1, &["Contact: *, <sip:a@b>", "Expires: 0"]),
        None,
        None,
    );
    assert_eq!(err.unwrap_err().status(), 400);
    let err = RegisterInfo::from_request(&register("c", 1, &["Contact: <sip:a@b"]), None, None);
    assert_eq!(err.unwrap_err().status(), 400);
}

#[test]
fn add_refresh_and_fetch() {
    let mut b = Bindings::new();
    let contact = "Contact: <sip:1000@127.0.0.1:5070;transport=UDP>";
    let cur = apply(&mut b, &info("c1", 1, &[contact, "Expires: 3600"]), NOW).unwrap();
    assert_eq!(cur.len(), 1);
    assert_eq!(cur[0].uri, "sip:1000@127.0.0.1:5070;transport=UDP");
    assert_eq!(cur[0].expires_at_ms, NOW + 3_600_000);
    assert_eq!(cur[0].flow, Some(flow()));
    assert_eq!(cur[0].received, Some("127.0.0.1:5070".parse().unwrap()));
    assert_eq!(
        b.to_contact_headers(NOW + 1000),
        ["<sip:1000@127.0.0.1:5070;transport=UDP>;expires=3599"]
    );
    let ok = ok_response(&register("c1", 1, &[contact]), &cur, NOW + 1000);
    assert_eq!(ok.status, 200);
    assert!(ok.headers.to().unwrap().tag().is_some());
    assert_eq!(
        ok.headers.get("Contact"),
        Some("<sip:1000@127.0.0.1:5070;transport=UDP>;expires=3599")
    );
    // Refresh from the same Call-ID with a higher CSeq; the URI compares per 19.1.4.
    let refreshed = "Contact: <sip:1000@127.0.0.1:5070;transport=udp>;expires=600";
    let cur = apply(&mut b, &info("c1", 2, &[refreshed]), NOW + 10_000).unwrap();
    assert_eq!(cur.len(), 1);
    assert_eq!(cur[0].expires_at_ms, NOW + 610_000);
    assert_eq!(cur[0].cseq, 2);
    // A fetch changes nothing.
    let before = b.clone();
    assert_eq!(
        apply(&mut b, &info("c1", 3, &[]), NOW + 20_000).unwrap(),
        cur
    );
    assert_eq!(b, before);
}

#[test]
fn a_contact_listed_twice_is_not_out_of_order() {
    let mut b = Bindings::new();
    let cur = apply(
        &mut b,
        &info(
            "c1",
            1,
            &["Contact: <sip:a@10.0.0.1>;expires=60, <sip:a@10.0.0.1>;expires=120"],
        ),
        NOW,
    )
    .unwrap();
    assert_eq!(cur.len(), 1);
    assert_eq!(cur[0].remaining_secs(NOW), 120);
}

#[test]
fn default_and_maximum_expiry() {
    let mut b = Bindings::new();
    let cur = apply(&mut b, &info("c1", 1, &["Contact: <sip:a@10.0.0.1>"]), NOW).unwrap();
    assert_eq!(cur[0].remaining_secs(NOW), 3600);
    let cur = apply(
        &mut b,
        &info("c1", 2, &["Contact: <sip:a@10.0.0.1>;expires=999999"]),
        NOW,
    )
    .unwrap();
    assert_eq!(cur[0].remaining_secs(NOW), 7200);
}

#[test]
fn out_of_order_cseq_is_refused_without_change() {
    let mut b = Bindings::new();
    let c = "Contact: <sip:a@10.0.0.1>";
    apply(&mut b, &info("c1", 5, &[c]), NOW).unwrap();
    let before = b.clone();
    for cseq in [5, 4] {
        let err = apply(&mut b, &info("c1", cseq, &[c]), NOW + 1).unwrap_err();
        assert_eq!(err, RegisterError::OutOfOrder);
        assert_eq!(err.status(), 500);
        assert_eq!(b, before);
    }
    // Another Call-ID (a rebooted UA) may update it whatever its CSeq.
    let cur = apply(&mut b, &info("c2", 1, &[c]), NOW + 2).unwrap();
    assert_eq!((cur[0].call_id.as_str(), cur[0].cseq), ("c2", 1));
    let resp = RegisterError::OutOfOrder.response(&register("c1", 1, &[c]));
    assert_eq!(resp.status, 500);
}

#[test]
fn remove_with_expires_zero_leaves_a_tombstone() {
    let mut b = Bindings::new();
    apply(
        &mut b,
        &info("c1", 1, &["Contact: <sip:a@10.0.0.1>, <sip:a@10.0.0.2>"]),
        NOW,
    )
    .unwrap();
    let cur = apply(
        &mut b,
        &info("c1", 2, &["Contact: <sip:a@10.0.0.1>;expires=0"]),
        NOW + 1000,
    )
    .unwrap();
    assert_eq!(cur.len(), 1);
    assert_eq!(cur[0].uri, "sip:a@10.0.0.2");
    assert_eq!(b.contacts.len(), 2, "the tombstone stays");
    assert!(b.contacts.iter().any(Binding::is_tombstone));
    // Removing a contact that is not bound is fine.
    apply(
        &mut b,
        &info("c1", 3, &["Contact: <sip:zzz@10.0.0.9>", "Expires: 0"]),
        NOW + 1000,
    )
    .unwrap();
    assert!(!b.purge(NOW + 2000));
    assert!(b.purge(NOW + 1000 + TOMBSTONE_KEEP_MS));
    assert_eq!(b.contacts.len(), 1);
}

#[test]
fn wildcard_removes_everything_only_with_expires_zero() {
    let mut b = Bindings::new();
    apply(
        &mut b,
        &info("c1", 1, &["Contact: <sip:a@10.0.0.1>, <sip:a@10.0.0.2>"]),
        NOW,
    )
    .unwrap();
    let err = apply(&mut b, &info("c1", 2, &["Contact: *"]), NOW).unwrap_err();
    assert_eq!(err.status(), 400);
    let err = apply(&mut b, &info("c1", 2, &["Contact: *", "Expires: 60"]), NOW).unwrap_err();
    assert_eq!(err.status(), 400);
    // Same Call-ID, CSeq not higher: refused.
    let err = apply(&mut b, &info("c1", 1, &["Contact: *", "Expires: 0"]), NOW).unwrap_err();
    assert_eq!(err, RegisterError::OutOfOrder);
    assert!(apply(
        &mut b,
        &info("c9", 1, &["Contact: *", "Expires: 0"]),
        NOW + 5
    )
    .unwrap()
    .is_empty());
    assert!(b.current(NOW + 5).is_empty());
    assert!(b.contacts.iter().all(Binding::is_tombstone));
}

#[test]
fn interval_too_brief() {
    let mut b = Bindings::new();
    let err = apply(
        &mut b,
        &info("c1", 1, &["Contact: <sip:a@10.0.0.1>;expires=30"]),
        NOW,
    )
    .unwrap_err();
    assert_eq!(err, RegisterError::IntervalTooBrief { min_expires: 60 });
    let resp = err.response(&register("c1", 1, &[]));
    assert_eq!((resp.status, resp.headers.min_expires()), (423, Some(60)));
    let err = apply(
        &mut b,
        &info("c1", 1, &["Contact: <sip:a@10.0.0.1>", "Expires: 59"]),
        NOW,
    )
    .unwrap_err();
    assert_eq!(err.status(), 423);
    assert!(b.is_empty());
    // Zero is a removal, never too brief.
    apply(
        &mut b,
        &info("c1", 1, &["Contact: <sip:a@10.0.0.1>;expires=0"]),
        NOW,
    )
    .unwrap();
}

#[test]
fn too_many_contacts_is_atomic() {
    let mut b = Bindings::new();
    let policy = RegistrarPolicy {
        max_contacts: 2,
        ..RegistrarPolicy::default()
    };
    b.apply_register(
        &info("c1", 1, &["Contact: <sip:a@10.0.0.1>, <sip:a@10.0.0.2>"]),
        NOW,
        &policy,
    )
    .unwrap();
    let before = b.clone();
    let err = b
        .apply_register(
            &info(
                "c1",
                2,
                &["Contact: <sip:a@10.0.0.1>;expires=100, <sip:a@10.0.0.3>"],
            ),
            NOW,
            &policy,
        )
        .unwrap_err();
    assert_eq!(err, RegisterError::TooManyContacts { max: 2 });
    assert_eq!(err.status(), 503);
    assert_eq!(
        b, before,
        "the refresh of the first contact was rolled back"
    );
    // Replacing one contact by another in one request fits.
    let cur = b
        .apply_register(
            &info(
                "c1",
                3,
                &["Contact: <sip:a@10.0.0.1>;expires=0, <sip:a@10.0.0.3>"],
            ),
            NOW,
            &policy,
        )
        .unwrap();
    assert_eq!(cur.len(), 2);
}

#[test]
fn expiry_and_q_ordering() {
    let mut b = Bindings::new();
    apply(
        &mut b,
        &info("c1", 1, &["Contact: <sip:a@10.0.0.1>;expires=100;q=0.1, <sip:a@10.0.0.2>;expires=200, <sip:a@10.0.0.3>;q=0.7;expires=300"]),
        NOW,
    )
    .unwrap();
    let order: Vec<_> = b.current(NOW).into_iter().map(|c| c.uri).collect();
    assert_eq!(
        order,
        ["sip:a@10.0.0.2", "sip:a@10.0.0.3", "sip:a@10.0.0.1"]
    );
    assert_eq!(
        b.to_contact_headers(NOW + 50_500),
        [
            "<sip:a@10.0.0.2>;expires=150",
            "<sip:a@10.0.0.3>;expires=250;q=0.7",
            "<sip:a@10.0.0.1>;expires=50;q=0.1"
        ]
    );
    assert_eq!(b.current(NOW + 100_000).len(), 2);
    assert!(b.purge(NOW + 100_000));
    assert_eq!(b.contacts.len(), 2);
    assert!(b.purge(NOW + 300_000));
    assert!(b.is_empty());
}

#[test]
fn serde_round_trip() {
    let mut b = Bindings::new();
    apply(
        &mut b,
        &info("c1", 1, &["Contact: <sip:a@10.0.0.1>;q=0.5"]),
        NOW,
    )
    .unwrap();
    let json = serde_json::to_string(&b).unwrap();
    assert_eq!(serde_json::from_str::<Bindings>(&json).unwrap(), b);
}

#[test]
fn merge_newer_wins_and_tombstones_hold() {
    let c = "Contact: <sip:a@10.0.0.1>";
    let mut a = Bindings::new();
    apply(&mut a, &info("c1", 1, &[c]), NOW).unwrap();
    // A stale copy still holds the binding; the other removed it later.
    let stale = a.clone();
    apply(
        &mut a,
        &info("c1", 2, &["Contact: <sip:a@10.0.0.1>;expires=0"]),
        NOW + 10,
    )
    .unwrap();
    let mut m1 = stale.clone();
    m1.merge(&a);
    let mut m2 = a.clone();
    m2.merge(&stale);
    assert_eq!(m1, m2);
    assert!(m1.current(NOW + 20).is_empty(), "the removal wins");
    // A newer registration elsewhere wins over both.
    let mut other = stale.clone();
    apply(
        &mut other,
        &info("c2", 1, &["Contact: <sip:a@10.0.0.1>;expires=500"]),
        NOW + 20,
    )
    .unwrap();
    m1.merge(&other);
    assert_eq!(m1.current(NOW + 30).len(), 1);
    assert_eq!(m1.current(NOW + 30)[0].call_id, "c2");
}

fn arb_binding() -> impl Strategy<Value = Binding> {
    (
        0u8..4,
        0u64..50,
        0u64..50,
        0u32..4,
        0u8..3,
        proptest::option::of(0u16..1001),
    )
        .prop_map(|(host, updated, life, cseq, call, q)| Binding {
            uri: format!("sip:a@10.0.0.{host}"),
            expires_at_ms: NOW + updated + life,
            q,
            call_id: format!("c{call}"),
            cseq,
            flow: None,
            received: None,
            updated_at_ms: NOW + updated,
        })
}

fn arb_bindings() -> impl Strategy<Value = Bindings> {
    proptest::collection::vec(arb_binding(), 0..6).prop_map(|v| {
        // A set holds one binding per contact.
        let mut b = Bindings::new();
        for x in v {
            b.merge(&Bindings { contacts: vec![x] });
        }
        b
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn merge_is_commutative_associative_idempotent(
        x in arb_bindings(),
        y in arb_bindings(),
        z in arb_bindings(),
    ) {
        let merged = |a: &Bindings, b: &Bindings| {
            let mut m = a.clone();
            m.merge(b);
            m
        };
        prop_assert_eq!(merged(&x, &y), merged(&y, &x));
        prop_assert_eq!(merged(&merged(&x, &y), &z), merged(&x, &merged(&y, &z)));
        let xy = merged(&x, &y);
        prop_assert_eq!(merged(&xy, &xy), xy.clone());
        prop_assert_eq!(merged(&xy, &x), xy);
    }
}
