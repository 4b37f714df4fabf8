//! Tests of the number registry in the provisioning database: carriers and blocks, allocation
//! (exactly once, next free, idempotent retries), authorization by carrier, porting with a PIN
//! (wrong PINs counted and locked out), release, the ENUM feed, and dumps restored elsewhere.

use onehop_overlay::provision::NumberRoute;

use super::db::{Pointers, ProvisionDb};
use super::model::*;
use super::numbers::*;

fn db() -> (tempfile::TempDir, ProvisionDb) {
    let dir = tempfile::tempdir().unwrap();
    let db = ProvisionDb::open(&dir.path().join("p.redb")).unwrap();
    (dir, db)
}

fn run_at(db: &ProvisionDb, at_ms: u64, op: ProvisionOp) -> ProvisionResult {
    let ptr = db.applied().unwrap();
    db.write(|w| w.apply(ProvisionCommand { at_ms, op }), &ptr)
        .unwrap()
}

fn run(db: &ProvisionDb, op: ProvisionOp) -> ProvisionResult {
    run_at(db, 1000, op)
}

fn status(r: &ProvisionResult) -> u16 {
    match &r.outcome {
        Ok(_) => 200,
        Err(e) => e.status,
    }
}

fn farm() -> Actor {
    Actor::farm("admin")
}

fn scoped(ocn: &str) -> Actor {
    Actor {
        name: format!("{ocn}-admin"),
        carriers: Some(vec![ocn.into()]),
    }
}

/// Carriers ACME and BETA, ACME's block +15550100..+15550199, BETA's +15550200..+15550299,
/// domain example.test with account alice.
fn registry() -> (tempfile::TempDir, ProvisionDb) {
    let (d, db) = db();
    for (ocn, name) in [("ACME", "Acme"), ("BETA", "Beta")] {
        let r = run(
            &db,
            ProvisionOp::AddCarrier {
                ocn: ocn.into(),
                name: name.into(),
                actor: farm(),
            },
        );
        assert_eq!(status(&r), 200, "{r:?}");
    }
    for (first, last, c) in [
        ("+15550100", "+15550199", "ACME"),
        ("+15550200", "+15550299", "BETA"),
    ] {
        let r = run(
            &db,
            ProvisionOp::AddBlock {
                first: first.into(),
                last: last.into(),
                carrier: c.into(),
                actor: farm(),
            },
        );
        assert_eq!(status(&r), 200, "{r:?}");
    }
    run(
        &db,
        ProvisionOp::AddDomain {
            name: "example.test".into(),
        },
    );
    let r = run(
        &db,
        ProvisionOp::AddAccount {
            account: NewAccount {
                user: "alice".into(),
                domain: "example.test".into(),
                display_name: None,
                enabled: true,
                ha1: Ha1::from_password("alice", "example.test", "secret-password"),
            },
        },
    );
    assert_eq!(status(&r), 200);
    (d, db)
}

fn allocate(db: &ProvisionDb, want: Want, actor: Actor, request: Option<&str>) -> ProvisionResult {
    run(
        db,
        ProvisionOp::Allocate {
            want,
            patch: NumberPatch::default(),
            actor,
            request: request.map(str::to_string),
        },
    )
}

fn number_of_result(r: &ProvisionResult) -> String {
    match &r.outcome {
        Ok(Applied::Number(n)) => n.number.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn carriers_and_blocks_are_farm_wide_and_blocks_never_overlap() {
    let (_d, db) = registry();
    let r = run(
        &db,
        ProvisionOp::AddCarrier {
            ocn: "GAMMA".into(),
            name: String::new(),
            actor: scoped("ACME"),
        },
    );
    assert_eq!(status(&r), 403);
    let r = run(
        &db,
        ProvisionOp::AddCarrier {
            ocn: "ACME".into(),
            name: String::new(),
            actor: farm(),
        },
    );
    assert_eq!(status(&r), 409);
    let block = |first: &str, last: &str, carrier: &str| ProvisionOp::AddBlock {
        first: first.into(),
        last: last.into(),
        carrier: carrier.into(),
        actor: farm(),
    };
    // Overlaps on either side, and a block inside another.
    for (f, l) in [
        ("+15550050", "+15550100"),
        ("+15550199", "+15550210"),
        ("+15550150", "+15550160"),
        ("+15550000", "+15550999"),
    ] {
        let r = run(&db, block(f, l, "ACME"));
        assert_eq!(status(&r), 409, "{f}-{l}: {r:?}");
    }
    // Adjacent, and of another length, are fine.
    assert_eq!(
        status(&run(&db, block("+15550300", "+15550399", "ACME"))),
        200
    );
    assert_eq!(
        status(&run(&db, block("+155501000", "+155501999", "ACME"))),
        200
    );
    assert_eq!(
        status(&run(&db, block("+15550400", "+15550499", "NOPE"))),
        404
    );
    // A carrier holding blocks cannot go; an empty block can.
    let r = run(
        &db,
        ProvisionOp::RemoveCarrier {
            ocn: "ACME".into(),
            actor: farm(),
        },
    );
    assert_eq!(status(&r), 409);
    let r = run(
        &db,
        ProvisionOp::RemoveBlock {
            first: "+15550300".into(),
            actor: farm(),
        },
    );
    assert_eq!(status(&r), 200);
    assert_eq!(db.blocks().unwrap().len(), 3);
}

#[test]
fn a_number_is_allocated_once_and_the_next_free_skips_taken_ones() {
    let (_d, db) = registry();
    let n = |s: &str| Want::Number(s.into());
    assert_eq!(
        status(&allocate(&db, n("+15550102"), scoped("ACME"), None)),
        200
    );
    // Taken: the loser is told so.
    let r = allocate(&db, n("+15550102"), farm(), None);
    assert_eq!(status(&r), 409);
    assert!(r.outcome.unwrap_err().message.contains("allocated already"));
    // Outside every block; in another carrier's block.
    assert_eq!(status(&allocate(&db, n("+15559999"), farm(), None)), 404);
    let r = allocate(&db, n("+15550250"), scoped("ACME"), None);
    assert_eq!(status(&r), 403);
    // Next free: 100, 101, then 103 (102 is taken).
    let next = || Want::NextFree("+15550100".into());
    let got: Vec<String> = (0..3)
        .map(|_| number_of_result(&allocate(&db, next(), scoped("ACME"), None)))
        .collect();
    assert_eq!(got, ["+15550100", "+15550101", "+15550103"]);
    // A released number is the next free one again.
    let r = run(
        &db,
        ProvisionOp::ReleaseNumber {
            number: "+15550101".into(),
            actor: scoped("ACME"),
            request: None,
        },
    );
    assert_eq!(status(&r), 200);
    assert_eq!(
        number_of_result(&allocate(&db, next(), scoped("ACME"), None)),
        "+15550101"
    );
    assert_eq!(db.block("+15550100").unwrap().unwrap().allocated, 4);
    // Fill the block: the 101st asks gets 409.
    for _ in 0..96 {
        assert_eq!(status(&allocate(&db, next(), farm(), None)), 200);
    }
    let r = allocate(&db, next(), farm(), None);
    assert_eq!(status(&r), 409, "{r:?}");
    assert_eq!(db.block("+15550100").unwrap().unwrap().allocated, 100);
}

#[test]
fn a_number_released_from_a_full_block_ending_in_nines_is_free_again() {
    let (_d, db) = registry();
    let r = run(
        &db,
        ProvisionOp::AddBlock {
            first: "+9990".into(),
            last: "+9999".into(),
            carrier: "ACME".into(),
            actor: farm(),
        },
    );
    assert_eq!(status(&r), 200);
    let next = || Want::NextFree("+9990".into());
    for _ in 0..10 {
        assert_eq!(status(&allocate(&db, next(), farm(), None)), 200);
    }
    assert_eq!(status(&allocate(&db, next(), farm(), None)), 409, "full");
    let r = run(
        &db,
        ProvisionOp::ReleaseNumber {
            number: "+9995".into(),
            actor: farm(),
            request: None,
        },
    );
    assert_eq!(status(&r), 200);
    assert_eq!(
        number_of_result(&allocate(&db, next(), farm(), None)),
        "+9995"
    );
}

#[test]
fn a_retried_request_is_applied_once() {
    let (_d, db) = registry();
    let next = || Want::NextFree("+15550100".into());
    let first = number_of_result(&allocate(&db, next(), farm(), Some("req-1")));
    let again = number_of_result(&allocate(&db, next(), farm(), Some("req-1")));
    assert_eq!(first, again, "the retry answers the first outcome");
    let other = number_of_result(&allocate(&db, next(), farm(), Some("req-2")));
    assert_ne!(first, other);
    assert_eq!(db.block("+15550100").unwrap().unwrap().allocated, 2);
    // A specific number retried with its key succeeds; without it the retry is a 409.
    let r = allocate(&db, Want::Number("+15550150".into()), farm(), Some("req-3"));
    assert_eq!(status(&r), 200);
    let r = allocate(&db, Want::Number("+15550150".into()), farm(), Some("req-3"));
    assert_eq!(status(&r), 200);
    let r = allocate(&db, Want::Number("+15550150".into()), farm(), None);
    assert_eq!(status(&r), 409);
}

#[test]
fn routes_and_properties_change_by_the_numbers_carrier_only() {
    let (_d, db) = registry();
    allocate(&db, Want::Number("+15550100".into()), farm(), None);
    let patch = |route: Option<NumberRoute>| NumberPatch {
        route: Some(route),
        caller_name: Some(Some("Alice".into())),
        ..NumberPatch::default()
    };
    let update = |actor: Actor, p: NumberPatch| ProvisionOp::UpdateNumber {
        number: "+15550100".into(),
        patch: p,
        actor,
        request: None,
    };
    let r = run(
        &db,
        update(
            scoped("BETA"),
            patch(Some(NumberRoute::Account("alice@example.test".into()))),
        ),
    );
    assert_eq!(status(&r), 403);
    let r = run(
        &db,
        update(
            scoped("ACME"),
            patch(Some(NumberRoute::Account("nobody@example.test".into()))),
        ),
    );
    assert_eq!(status(&r), 404);
    let r = run(
        &db,
        update(
            scoped("ACME"),
            patch(Some(NumberRoute::Account("alice@example.test".into()))),
        ),
    );
    assert_eq!(status(&r), 200);
    let n = db.number("+15550100").unwrap().unwrap();
    assert_eq!(n.props.caller_name.as_deref(), Some("Alice"));
    assert_eq!(
        n.route,
        Some(NumberRoute::Account("alice@example.test".into()))
    );
    // Removing the account unroutes its numbers.
    let r = run(
        &db,
        ProvisionOp::RemoveAccount {
            aor: "alice@example.test".into(),
        },
    );
    assert_eq!(status(&r), 200);
    assert_eq!(db.number("+15550100").unwrap().unwrap().route, None);
    let history = db.number_history("+15550100").unwrap();
    let actions: Vec<&str> = history.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["allocated", "updated", "updated"]);
    assert_eq!(history[1].by, "ACME-admin");
}

#[test]
fn porting_takes_the_pin_and_wrong_pins_lock_it() {
    let (_d, db) = registry();
    let r = run(
        &db,
        ProvisionOp::Allocate {
            want: Want::Number("+15550100".into()),
            patch: NumberPatch {
                route: Some(Some(NumberRoute::Uri("sip:+15550100@acme.example".into()))),
                assignee: Some(Some("cust-1".into())),
                pin: Some(Some(PinHash::new("2468"))),
                ..NumberPatch::default()
            },
            actor: scoped("ACME"),
            request: None,
        },
    );
    assert_eq!(status(&r), 200);
    let salt = db.number("+15550100").unwrap().unwrap().pin.unwrap().salt;
    let port = |pin: &str, actor: Actor, at: u64| {
        run_at(
            &db,
            at,
            ProvisionOp::PortNumber {
                number: "+15550100".into(),
                carrier: "BETA".into(),
                proof: PinProof::derive(salt, pin),
                patch: NumberPatch {
                    route: Some(Some(NumberRoute::Uri("sip:+15550100@beta.example".into()))),
                    ..NumberPatch::default()
                },
                actor,
                request: None,
            },
        )
    };
    // Only the receiving carrier's administrators may ask.
    assert_eq!(status(&port("2468", scoped("ACME"), 1000)), 403);
    // Wrong PINs: refused, counted, and after five the number is locked.
    for i in 1..PIN_TRIES {
        let r = port("1111", scoped("BETA"), 1000 + u64::from(i));
        let e = r.outcome.unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (403, "wrong_pin"));
    }
    let e = port("1111", scoped("BETA"), 2000).outcome.unwrap_err();
    assert!(e.message.contains("refused for"), "{}", e.message);
    // Locked: even the right PIN is refused until the lock ends.
    let e = port("2468", scoped("BETA"), 3000).outcome.unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (429, "locked"));
    let n = db.number("+15550100").unwrap().unwrap();
    assert_eq!(n.carrier, "ACME");
    // After the lock, the right PIN ports it: carrier, routing and assignee change.
    let r = port("2468", scoped("BETA"), 2000 + PIN_LOCK_MS);
    assert_eq!(status(&r), 200, "{r:?}");
    let n = db.number("+15550100").unwrap().unwrap();
    assert_eq!(n.carrier, "BETA");
    assert_eq!(n.assignee, None);
    assert_eq!(
        n.route,
        Some(NumberRoute::Uri("sip:+15550100@beta.example".into()))
    );
    // Now BETA's: ACME may not change it, BETA may; the block stays ACME's.
    let upd = |actor: Actor| ProvisionOp::UpdateNumber {
        number: "+15550100".into(),
        patch: NumberPatch {
            location: Some(Some("Springfield".into())),
            ..NumberPatch::default()
        },
        actor,
        request: None,
    };
    assert_eq!(status(&run(&db, upd(scoped("ACME")))), 403);
    assert_eq!(status(&run(&db, upd(scoped("BETA")))), 200);
    assert_eq!(db.block("+15550100").unwrap().unwrap().carrier, "ACME");
    let history = db.number_history("+15550100").unwrap();
    assert!(history
        .iter()
        .any(|e| e.action == "ported" && e.detail == "from ACME to BETA"));
    assert_eq!(
        history
            .iter()
            .filter(|e| e.action == "port refused")
            .count(),
        PIN_TRIES as usize
    );
    // The change log never holds the PIN hash.
    let changes = db.changes(0, 1000).unwrap();
    for c in &changes.changes {
        if let ChangeKind::NumberPut { number } = &c.what {
            assert!(number.pin.is_none());
        }
    }
}

#[test]
fn the_enum_feed_lists_then_follows_changes() {
    let (_d, db) = registry();
    for i in 0..5 {
        let r = run(
            &db,
            ProvisionOp::Allocate {
                want: Want::Number(format!("+1555010{i}")),
                patch: NumberPatch {
                    route: (i % 2 == 0)
                        .then(|| Some(NumberRoute::Account("alice@example.test".into()))),
                    ..NumberPatch::default()
                },
                actor: farm(),
                request: None,
            },
        );
        assert_eq!(status(&r), 200);
    }
    // A full listing: the routed numbers only.
    let full = db.enum_update(0, None).unwrap();
    assert!(full.reset);
    assert_eq!(full.next, None);
    let numbers: Vec<&str> = full.entries.iter().map(|e| e.number.as_str()).collect();
    assert_eq!(numbers, ["+15550100", "+15550102", "+15550104"]);
    assert_eq!(
        full.entries[0].uri.as_deref(),
        Some("sip:alice@example.test")
    );
    // Nothing new: an empty answer at the same version.
    let none = db.enum_update(full.version, None).unwrap();
    assert!(!none.reset && none.entries.is_empty() && none.next.is_none());
    assert_eq!(none.version, full.version);
    // A reroute and a release show as changes.
    run(
        &db,
        ProvisionOp::UpdateNumber {
            number: "+15550101".into(),
            patch: NumberPatch {
                route: Some(Some(NumberRoute::Uri("sip:x@other.example".into()))),
                ..NumberPatch::default()
            },
            actor: farm(),
            request: None,
        },
    );
    run(
        &db,
        ProvisionOp::ReleaseNumber {
            number: "+15550100".into(),
            actor: farm(),
            request: None,
        },
    );
    let ch = db.enum_update(full.version, None).unwrap();
    assert!(!ch.reset);
    assert_eq!(ch.version, db.version().unwrap());
    assert_eq!(ch.entries.len(), 2);
    assert_eq!(ch.entries[0].uri.as_deref(), Some("sip:x@other.example"));
    assert_eq!(
        (ch.entries[1].number.as_str(), ch.entries[1].uri.as_deref()),
        ("+15550100", None)
    );
}

#[test]
fn the_enum_listing_pages() {
    let (_d, db) = registry();
    let r = run(
        &db,
        ProvisionOp::AddBlock {
            first: "+4930000000".into(),
            last: "+4930099999".into(),
            carrier: "ACME".into(),
            actor: farm(),
        },
    );
    assert_eq!(status(&r), 200);
    let total = super::number_store::ENUM_PAGE + 10;
    let ptr = db.applied().unwrap();
    db.write(
        |w| {
            for _ in 0..total {
                let r = w.apply(ProvisionCommand {
                    at_ms: 1,
                    op: ProvisionOp::Allocate {
                        want: Want::NextFree("+4930000000".into()),
                        patch: NumberPatch {
                            route: Some(Some(NumberRoute::Uri("sip:a@b.example".into()))),
                            ..NumberPatch::default()
                        },
                        actor: farm(),
                        request: None,
                    },
                })?;
                assert!(r.outcome.is_ok());
            }
            Ok(())
        },
        &ptr,
    )
    .unwrap();
    let first = db.enum_update(0, None).unwrap();
    assert_eq!(first.entries.len(), super::number_store::ENUM_PAGE);
    let next = first.next.clone().expect("a second page");
    let second = db.enum_update(0, Some(&next)).unwrap();
    assert_eq!(second.entries.len(), 10);
    assert_eq!(second.next, None);
    assert!(second.entries[0].number > next);
    // The changes since 1 exceed a page: `next` says more follow.
    let ch = db.enum_update(1, None).unwrap();
    assert!(ch.next.is_some());
    assert!(ch.version < db.version().unwrap());
}

#[test]
fn a_dump_carries_the_registry() {
    let (_d, db) = registry();
    allocate(&db, Want::Number("+15550100".into()), farm(), Some("r1"));
    run(
        &db,
        ProvisionOp::SetDialPlan {
            domain: "example.test".into(),
            plan: Some(onehop_overlay::provision::DialPlan {
                country_code: "1".into(),
                national_prefix: String::new(),
                international_prefix: "011".into(),
            }),
            actor: farm(),
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snap");
    let (ptr, _) = db.dump(&path).unwrap();
    let (_d2, other) = self::db();
    other.restore(&path, &ptr).unwrap();
    assert_eq!(other.carriers().unwrap(), db.carriers().unwrap());
    assert_eq!(other.blocks().unwrap(), db.blocks().unwrap());
    assert_eq!(
        other.number("+15550100").unwrap(),
        db.number("+15550100").unwrap()
    );
    assert_eq!(
        other.number_history("+15550100").unwrap(),
        db.number_history("+15550100").unwrap()
    );
    assert_eq!(other.dial_plans().unwrap(), db.dial_plans().unwrap());
    assert_eq!(other.farm_view().unwrap().dial_plans.len(), 1);
    // The idempotency record came along: the retry answers the same number.
    let r = allocate(
        &other,
        Want::NextFree("+15550100".into()),
        farm(),
        Some("r1"),
    );
    assert_eq!(number_of_result(&r), "+15550100");
    let _ = Pointers::default();
}
