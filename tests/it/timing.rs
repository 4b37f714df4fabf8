//! The design's timing budgets (DESIGN.md section 9), measured from outside on every node's
//! lookup interface. Figures are printed (`BUDGET ...` lines); assertions allow 3x slack for a
//! loaded 2-core CI machine.

use std::time::{Duration, Instant};

use crate::harness::{until_all_nodes, within_budget, Farm};

const SLACK: f64 = 3.0;

#[test]
fn join_leave_and_crash_reach_every_ring_within_budget() {
    let mut farm = Farm::up("127.0.4.1", &["--nodes", "3", "--dns", "0"]);
    let mut lookups = farm.lookups();
    let nodes_before = farm.names("node");
    let all_present = |names: &[String]| {
        let names = names.to_vec();
        move |answer: &str| names.iter().all(|n| answer.contains(&format!("{n}=")))
    };
    until_all_nodes(
        &mut lookups,
        "registrar",
        Instant::now(),
        Duration::from_secs(5),
        all_present(&nodes_before),
    )
    .expect("farm settled");

    // Join: from spawning the process to the new node in every ring (its own included).
    let spawned = farm.add_node("node9", "127.0.4.40", "registrar,sip_proxy");
    lookups.push(("node9".into(), farm.lookup("node9")));
    let join = until_all_nodes(
        &mut lookups,
        "registrar",
        spawned,
        Duration::from_secs(5),
        |a| a.contains("node9="),
    );
    within_budget(
        "join (process start to in every ring)",
        join,
        Duration::from_millis(200),
        SLACK,
    );
    // Its roles are exactly its certificate's.
    let (_, l) = &mut lookups[0];
    assert_eq!(l.ask("is_online 127.0.4.40 as sip_proxy"), "Yes");
    assert_eq!(l.ask("is_online 127.0.4.40 as media_relay"), "No");

    // Graceful leave (SIGTERM): out of every other node's ring.
    lookups.pop();
    let sent = Instant::now();
    farm.signal("node9", "-TERM");
    let leave = until_all_nodes(
        &mut lookups,
        "registrar",
        sent,
        Duration::from_secs(5),
        |a| !a.contains("node9="),
    );
    within_budget(
        "graceful leave (SIGTERM to out of every ring)",
        leave,
        Duration::from_millis(200),
        SLACK,
    );

    // Crash (kill -9): out of every other node's ring.
    let victim = "node3";
    lookups.retain(|(n, _)| n != victim);
    let killed = Instant::now();
    farm.signal(victim, "-KILL");
    let crash = until_all_nodes(
        &mut lookups,
        "registrar",
        killed,
        Duration::from_secs(5),
        |a| !a.contains("node3="),
    );
    within_budget(
        "crash (kill -9 to out of every ring)",
        crash,
        Duration::from_secs(1),
        2.0,
    );

    // Restarted with its farm.json command line, it is back everywhere.
    let again = Instant::now();
    farm.restart(victim);
    lookups.push((victim.into(), farm.lookup(victim)));
    let back = until_all_nodes(
        &mut lookups,
        "registrar",
        again,
        Duration::from_secs(5),
        |a| a.contains("node3="),
    );
    within_budget(
        "rejoin after restart (process start to in every ring)",
        back,
        Duration::from_millis(200),
        SLACK,
    );
}
