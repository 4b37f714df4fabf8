//! Killing the active manager: a new one publishes within the budget, every member only ever
//! sees `(term, version)` grow, and no two managers ever publish in one term.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onehop_overlay::client::{ClientEvent, ClientOptions, EventClient};
use onehop_overlay::net::{self, ConnTable, Timing};
use onehop_overlay::tls::{Credentials, TlsFiles};
use onehop_overlay::wire::{Payload, Topic};

use crate::harness::{until_all_nodes, wait_for, within_budget, Farm};

/// Every `(term, version, manager)` received, in arrival order.
type Recorded = Arc<Mutex<Vec<(u64, u64, String)>>>;

/// Records every network status published, as a monitor sees it.
fn record_statuses(farm: &Farm, rt: &tokio::runtime::Runtime) -> (EventClient, Recorded) {
    let mon = farm.file.monitor.clone().unwrap();
    let tls = TlsFiles {
        crl: None,
        ..farm.file.client_tls(&mon)
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let es = farm.file.eventservers();
    let client = rt.block_on(async move {
        let creds = Credentials::load(&tls).unwrap();
        let ep = net::endpoint(
            "127.0.0.1:0".parse().unwrap(),
            &creds,
            &Default::default(),
            Timing::default(),
            None,
        )
        .unwrap();
        let opts = ClientOptions {
            eventservers: es,
            subscribe: vec![Topic::Network],
            ..Default::default()
        };
        let (client, mut rx) = EventClient::start(ep, opts, ConnTable::default(), None);
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if let ClientEvent::Event(ev) = ev {
                    if let Payload::Network(s) = &ev.payload {
                        s2.lock()
                            .unwrap()
                            .push((s.term, s.version, s.manager.clone()));
                    }
                }
            }
        });
        client
    });
    (client, seen)
}

#[test]
fn active_manager_killed_new_one_publishes_within_budget() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut farm = Farm::up("127.0.5.1", &["--nodes", "3", "--dns", "0"]);
    let (client, seen) = record_statuses(&farm, &rt);
    let mut lookups = farm.lookups();
    let (_, l0) = &mut lookups[0];
    let (term0, _, active) = wait_for(Duration::from_secs(5), || l0.status()).expect("status");
    println!("active manager {active} in term {term0}");

    // Poll every node's status continuously and check it never goes back.
    let mut last: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut check =
        |lookups: &mut Vec<(String, crate::harness::Lookup)>| -> Vec<(u64, u64, String)> {
            let mut now = Vec::new();
            for (n, l) in lookups.iter_mut() {
                if let Some((t, v, m)) = l.status() {
                    let prev = last.insert(n.clone(), (t, v));
                    if let Some(p) = prev {
                        assert!((t, v) >= p, "{n} went back from {p:?} to {:?}", (t, v));
                    }
                    now.push((t, v, m));
                }
            }
            now
        };
    check(&mut lookups);

    let killed = Instant::now();
    farm.signal(&active, "-KILL");
    let took = wait_for(Duration::from_secs(5), || {
        let now = check(&mut lookups);
        (now.len() == 3 && now.iter().all(|(t, _, m)| *t > term0 && *m != active))
            .then(|| killed.elapsed())
    });
    within_budget("manager failover (kill -9 of the active manager to every node holding the new manager's status)", took, Duration::from_secs(1), 2.0);
    let (_, _, new_active) = lookups[0].1.status().unwrap();

    // The new status no longer lists the dead manager (its sessions idle out).
    let gone = wait_for(Duration::from_secs(3), || {
        farm.monitor_names()
            .filter(|n| !n.contains(&active))
            .map(|_| ())
    });
    assert!(gone.is_some(), "{active} still in the status");

    // The old manager comes back (same Raft state on disk): it does not take over by publishing
    // in an old term, and statuses keep growing.
    farm.restart(&active);
    let back = wait_for(Duration::from_secs(5), || {
        farm.monitor_names()
            .filter(|n| n.contains(&active))
            .map(|_| ())
    });
    assert!(back.is_some(), "restarted {active} rejoined the status");
    for _ in 0..50 {
        check(&mut lookups);
    }
    println!("new active manager: {new_active}");

    client.stop();
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 2, "recorded {} statuses", seen.len());
    let mut by_term: BTreeMap<u64, std::collections::BTreeSet<String>> = BTreeMap::new();
    for (t, _, m) in &seen {
        by_term.entry(*t).or_default().insert(m.clone());
    }
    println!(
        "statuses recorded: {}; publishers by term: {by_term:?}",
        seen.len()
    );
    for (t, ms) in &by_term {
        assert_eq!(ms.len(), 1, "term {t} has two publishers: {ms:?}");
    }
    // What the monitor received, in arrival order, never goes back either.
    let mut prev = (0, 0);
    for (t, v, _) in &seen {
        assert!((*t, *v) >= prev, "monitor saw {:?} after {prev:?}", (t, v));
        prev = (*t, *v);
    }
}

/// The active manager restarted in place (SIGTERM, started again as soon as it is gone, as
/// `systemctl restart` does): openraft may give it its term back without an election, and its version counter
/// starts again. Whoever is active afterwards, the farm must keep following membership: a node
/// that leaves is out of every node's ring within the leave budget (slack for a loaded CI).
#[test]
fn active_manager_restarted_in_place_keeps_the_farm_following_membership() {
    let mut farm = Farm::up("127.0.151.1", &["--nodes", "3", "--dns", "0"]);
    let mut lookups = farm.lookups();
    let (term0, version0, active) =
        wait_for(Duration::from_secs(5), || lookups[0].1.status()).expect("status");
    println!("active manager {active} in term {term0}, version {version0}");
    // As `systemctl restart` does: SIGTERM, and as soon as the process is gone, start it.
    let pid = farm.pid(&active);
    farm.signal(&active, "-TERM");
    let exited = wait_for(Duration::from_secs(5), || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        (stat.is_empty() || zombie).then_some(())
    });
    assert!(exited.is_some(), "{active} stopped within 5 s");
    farm.restart(&active);
    // Wait until a manager is publishing again and the restarted one is back in the status.
    let back = wait_for(Duration::from_secs(10), || {
        farm.monitor_names()
            .filter(|n| n.contains(&active))
            .map(|_| ())
    });
    assert!(back.is_some(), "restarted {active} rejoined the status");
    let after: Vec<_> = lookups.iter_mut().filter_map(|(_, l)| l.status()).collect();
    println!("statuses held after the restart: {after:?}");

    // node3 leaves: every remaining node must drop it from its ring.
    let left = Instant::now();
    farm.signal("node3", "-TERM");
    let remaining: Vec<_> = lookups.into_iter().filter(|(n, _)| n != "node3").collect();
    let mut remaining = remaining;
    let took = until_all_nodes(
        &mut remaining,
        "registrar",
        left,
        Duration::from_secs(5),
        |a| !a.contains("node3="),
    );
    within_budget(
        "graceful leave after an in-place restart of the active manager",
        took,
        Duration::from_millis(200),
        5.0,
    );
}
