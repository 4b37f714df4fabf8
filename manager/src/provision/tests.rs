//! Tests of the provisioning database: every command, its errors, the change log, imports
//! retried after a failover, and dumps restored elsewhere.

use super::db::{Pointers, ProvisionDb};
use super::model::*;

fn db() -> (tempfile::TempDir, ProvisionDb) {
    let dir = tempfile::tempdir().unwrap();
    let db = ProvisionDb::open(&dir.path().join("p.redb")).unwrap();
    (dir, db)
}

fn run(db: &ProvisionDb, op: ProvisionOp) -> ProvisionResult {
    let ptr = db.applied().unwrap();
    db.write(|w| w.apply(ProvisionCommand { at_ms: 1000, op }), &ptr)
        .unwrap()
}

fn new_account(user: &str, domain: &str) -> NewAccount {
    NewAccount {
        user: user.into(),
        domain: domain.into(),
        display_name: Some(format!("{user} display")),
        enabled: true,
        ha1: Ha1::from_password(user, domain, "secret-password"),
    }
}

fn status(r: &ProvisionResult) -> u16 {
    match &r.outcome {
        Ok(_) => 200,
        Err(e) => e.status,
    }
}

#[test]
fn domains_accounts_aliases_and_their_errors() {
    let (_d, db) = db();
    let add = |name: &str| ProvisionOp::AddDomain { name: name.into() };
    assert_eq!(status(&run(&db, add("example.test"))), 200);
    assert_eq!(status(&run(&db, add("example.test"))), 409);
    assert_eq!(status(&run(&db, add("other.test"))), 200);
    // An account needs its domain.
    let r = run(
        &db,
        ProvisionOp::AddAccount {
            account: new_account("alice", "nowhere.test"),
        },
    );
    assert_eq!(status(&r), 404);
    assert_eq!(r.outcome.unwrap_err().field.as_deref(), Some("domain"));
    let r = run(
        &db,
        ProvisionOp::AddAccount {
            account: new_account("alice", "example.test"),
        },
    );
    let Ok(Applied::Account(a)) = r.outcome else {
        panic!("{r:?}")
    };
    assert_eq!(a.aor(), "alice@example.test");
    assert_eq!(a.created_version, r.version);
    let again = run(
        &db,
        ProvisionOp::AddAccount {
            account: new_account("alice", "example.test"),
        },
    );
    assert_eq!(status(&again), 409);
    // User parts are case-sensitive: Alice is another account.
    assert_eq!(
        status(&run(
            &db,
            ProvisionOp::AddAccount {
                account: new_account("Alice", "example.test"),
            }
        )),
        200
    );
    // Read back, case-insensitive domain.
    let got = db.account("alice@EXAMPLE.test").unwrap().unwrap();
    assert_eq!(
        got.ha1,
        Ha1::from_password("alice", "example.test", "secret-password")
    );
    assert!(db.account("bob@example.test").unwrap().is_none());

    // Aliases: to a provisioned domain, never over an account or another alias.
    let alias = |a: &str, to: &str| ProvisionOp::AddAlias {
        alias: a.into(),
        aor: to.into(),
    };
    assert_eq!(
        status(&run(&db, alias("al@other.test", "alice@example.test"))),
        200
    );
    assert_eq!(
        status(&run(&db, alias("al@other.test", "Alice@example.test"))),
        409
    );
    assert_eq!(
        status(&run(&db, alias("Alice@example.test", "alice@example.test"))),
        409
    );
    assert_eq!(
        status(&run(&db, alias("x@nowhere.test", "alice@example.test"))),
        404
    );
    assert_eq!(
        status(&run(&db, alias("y@other.test", "nobody@example.test"))),
        404
    );
    assert_eq!(
        db.alias("al@other.test").unwrap().as_deref(),
        Some("alice@example.test")
    );
    assert_eq!(
        db.account("alice@example.test").unwrap().unwrap().aliases,
        vec!["al@other.test".to_string()]
    );
    // An account alias blocks the alias domain's removal, and an account its own.
    assert_eq!(
        status(&run(
            &db,
            ProvisionOp::RemoveDomain {
                name: "other.test".into()
            }
        )),
        409
    );
    assert_eq!(
        status(&run(
            &db,
            ProvisionOp::RemoveAlias {
                alias: "al@other.test".into()
            }
        )),
        200
    );
    assert_eq!(
        status(&run(
            &db,
            ProvisionOp::RemoveAlias {
                alias: "al@other.test".into()
            }
        )),
        404
    );
    assert!(db
        .account("alice@example.test")
        .unwrap()
        .unwrap()
        .aliases
        .is_empty());
    assert_eq!(
        status(&run(
            &db,
            ProvisionOp::RemoveDomain {
                name: "other.test".into()
            }
        )),
        200
    );
    assert_eq!(
        status(&run(
            &db,
            ProvisionOp::RemoveDomain {
                name: "other.test".into()
            }
        )),
        404
    );
    assert_eq!(
        status(&run(
            &db,
            ProvisionOp::RemoveDomain {
                name: "example.test".into()
            }
        )),
        409
    );

    // Update: a password change and a block.
    let r = run(
        &db,
        ProvisionOp::UpdateAccount {
            aor: "alice@example.test".into(),
            patch: AccountPatch {
                display_name: Some(None),
                enabled: Some(false),
                ha1: Some(Ha1::from_password("alice", "example.test", "new-password")),
            },
        },
    );
    let Ok(Applied::Account(a)) = r.outcome else {
        panic!("{r:?}")
    };
    assert!(!a.enabled);
    assert_eq!(a.display_name, None);
    assert_eq!(
        a.ha1,
        Ha1::from_password("alice", "example.test", "new-password")
    );
    assert_eq!(a.updated_version, r.version);
    assert!(a.created_version < a.updated_version);
    assert_eq!(
        status(&run(
            &db,
            ProvisionOp::UpdateAccount {
                aor: "nobody@example.test".into(),
                patch: AccountPatch::default(),
            }
        )),
        404
    );
    // Removal takes the aliases with it.
    run(&db, alias("al2@example.test", "alice@example.test"));
    assert_eq!(
        status(&run(
            &db,
            ProvisionOp::RemoveAccount {
                aor: "alice@example.test".into()
            }
        )),
        200
    );
    assert!(db.alias("al2@example.test").unwrap().is_none());
    assert_eq!(
        status(&run(
            &db,
            ProvisionOp::RemoveAccount {
                aor: "alice@example.test".into()
            }
        )),
        404
    );

    let c = db.counts().unwrap();
    assert_eq!((c.domains, c.accounts, c.aliases), (1, 1, 0));
}

#[test]
fn the_change_log_lists_every_change_in_order() {
    let (_d, db) = db();
    run(
        &db,
        ProvisionOp::AddDomain {
            name: "example.test".into(),
        },
    );
    for u in ["a", "b", "c"] {
        run(
            &db,
            ProvisionOp::AddAccount {
                account: new_account(u, "example.test"),
            },
        );
    }
    // A refused command changes nothing.
    let r = run(
        &db,
        ProvisionOp::AddAccount {
            account: new_account("a", "example.test"),
        },
    );
    assert_eq!(r.version, 4);
    run(
        &db,
        ProvisionOp::RemoveAccount {
            aor: "b@example.test".into(),
        },
    );
    let page = db.changes(0, 100).unwrap();
    assert_eq!(page.version, 5);
    assert!(!page.truncated);
    let versions: Vec<u64> = page.changes.iter().map(|c| c.version).collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
    assert!(matches!(
        page.changes[0].what,
        ChangeKind::DomainAdded { .. }
    ));
    assert!(matches!(
        &page.changes[4].what,
        ChangeKind::AccountRemoved { aor, .. } if aor == "b@example.test"
    ));
    let page = db.changes(3, 1).unwrap();
    assert_eq!(page.changes.len(), 1);
    assert_eq!(page.changes[0].version, 4);
    assert!(db.changes(5, 10).unwrap().changes.is_empty());
}

#[test]
fn listing_pages_filters_by_domain_and_prefix() {
    let (_d, db) = db();
    for d in ["a.test", "b.test"] {
        run(&db, ProvisionOp::AddDomain { name: d.into() });
        for i in 0..25 {
            run(
                &db,
                ProvisionOp::AddAccount {
                    account: new_account(&format!("u{i:02}"), d),
                },
            );
        }
        run(
            &db,
            ProvisionOp::AddAccount {
                account: new_account("zed", d),
            },
        );
    }
    // Every account of every domain, 10 at a time.
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let p = db.accounts(None, "", after.as_deref(), 10).unwrap();
        all.extend(p.accounts.iter().map(|a| a.aor()));
        match p.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(all.len(), 52);
    assert_eq!(all[0], "u00@a.test");
    assert_eq!(all[51], "zed@b.test");
    let mut sorted = all.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), 52, "no account twice");
    // One domain, a prefix.
    let p = db.accounts(Some("b.test"), "u1", None, 100).unwrap();
    let names: Vec<String> = p.accounts.iter().map(|a| a.user.clone()).collect();
    assert_eq!(names, (10..20).map(|i| format!("u{i}")).collect::<Vec<_>>());
    assert_eq!(p.next, None);
    let p = db.accounts(Some("a.test"), "", None, 30).unwrap();
    assert_eq!(p.accounts.len(), 26);
    assert!(p.accounts.iter().all(|a| a.domain == "a.test"));
    assert!(db
        .accounts(Some("c.test"), "", None, 30)
        .unwrap()
        .accounts
        .is_empty());
}

#[test]
fn an_import_batch_applies_once_and_answers_its_retries_with_the_same_outcomes() {
    let (_d, db) = db();
    run(
        &db,
        ProvisionOp::AddDomain {
            name: "example.test".into(),
        },
    );
    run(
        &db,
        ProvisionOp::AddAccount {
            account: new_account("taken", "example.test"),
        },
    );
    let rows = vec![
        (1, new_account("one", "example.test")),
        (2, new_account("taken", "example.test")),
        (3, new_account("three", "nowhere.test")),
        (4, new_account("four", "example.test")),
    ];
    let op = ProvisionOp::Import {
        batch: "imp-1#0".into(),
        rows: rows.clone(),
    };
    let first = run(&db, op.clone());
    let Ok(Applied::Import {
        rows: out,
        first: true,
    }) = &first.outcome
    else {
        panic!("{first:?}")
    };
    let errs: Vec<(u64, Option<u16>)> = out
        .iter()
        .map(|r| (r.row, r.error.as_ref().map(|e| e.status)))
        .collect();
    assert_eq!(
        errs,
        vec![(1, None), (2, Some(409)), (3, Some(404)), (4, None)]
    );
    let version = first.version;
    // The same batch again (a client retrying after the leader died): nothing new.
    let second = run(&db, op);
    let Ok(Applied::Import {
        rows: out2,
        first: false,
    }) = &second.outcome
    else {
        panic!("{second:?}")
    };
    assert_eq!(out, out2);
    assert_eq!(second.version, version);
    assert_eq!(db.counts().unwrap().accounts, 3);
    // Another batch id with the same rows is a new batch: the rows now exist.
    let third = run(
        &db,
        ProvisionOp::Import {
            batch: "imp-1#1".into(),
            rows,
        },
    );
    let Ok(Applied::Import { rows: out3, .. }) = &third.outcome else {
        panic!("{third:?}")
    };
    assert!(out3.iter().all(|r| r.error.is_some()));
}

#[test]
fn a_dump_restores_the_same_state_elsewhere_and_a_damaged_one_is_refused() {
    let (dir, db) = db();
    run(
        &db,
        ProvisionOp::AddDomain {
            name: "example.test".into(),
        },
    );
    for i in 0..500 {
        run(
            &db,
            ProvisionOp::AddAccount {
                account: new_account(&format!("u{i}"), "example.test"),
            },
        );
    }
    run(
        &db,
        ProvisionOp::AddAlias {
            alias: "al@example.test".into(),
            aor: "u1@example.test".into(),
        },
    );
    run(
        &db,
        ProvisionOp::Import {
            batch: "b#0".into(),
            rows: vec![(1, new_account("imp", "example.test"))],
        },
    );
    let ptr = db.applied().unwrap();
    db.write(|w| w.kv_set("k", "v").map(|_| ()), &ptr).unwrap();
    let path = dir.path().join("dump");
    let (_, bytes) = db.dump(&path).unwrap();
    assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());

    let (_d2, other) = self::db();
    run(
        &other,
        ProvisionOp::AddDomain {
            name: "stale.test".into(),
        },
    );
    other.restore(&path, &Pointers::default()).unwrap();
    assert_eq!(other.counts().unwrap(), db.counts().unwrap());
    assert_eq!(other.domains().unwrap(), db.domains().unwrap());
    assert_eq!(
        other.account("u7@example.test").unwrap(),
        db.account("u7@example.test").unwrap()
    );
    assert_eq!(
        other.alias("al@example.test").unwrap().as_deref(),
        Some("u1@example.test")
    );
    assert_eq!(
        other.changes(0, 10_000).unwrap(),
        db.changes(0, 10_000).unwrap()
    );
    assert_eq!(other.kv_get("k").unwrap().as_deref(), Some("v"));
    // The import batch outcome came along: a retry is still recognised.
    let r = run(
        &other,
        ProvisionOp::Import {
            batch: "b#0".into(),
            rows: vec![(1, new_account("imp", "example.test"))],
        },
    );
    assert!(matches!(
        r.outcome,
        Ok(Applied::Import { first: false, .. })
    ));

    // A cut file and a flipped byte are refused, and the state stays as it was.
    let full = std::fs::read(&path).unwrap();
    let before = other.counts().unwrap();
    for (i, damaged) in [
        full[..full.len() - 3].to_vec(),
        full[..full.len() / 2].to_vec(),
        {
            let mut f = full.clone();
            let n = f.len() / 3;
            f[n] ^= 0x40;
            f
        },
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(&path, &damaged).unwrap();
        assert!(
            other.restore(&path, &Pointers::default()).is_err(),
            "case {i}"
        );
        assert_eq!(other.counts().unwrap(), before, "case {i}");
    }
}
