//! Losing one event server loses nothing: every member stays in the status.

use std::time::{Duration, Instant};

use crate::harness::{until_all_nodes, wait_for, within_budget, Farm};

#[test]
fn killing_an_event_server_keeps_every_member() {
    let mut farm = Farm::up("127.0.6.1", &["--nodes", "3", "--dns", "0"]);
    let mut lookups = farm.lookups();
    let nodes = farm.names("node");
    let everyone = |a: &str| nodes.iter().all(|n| a.contains(&format!("{n}=")));
    until_all_nodes(
        &mut lookups,
        "registrar",
        Instant::now(),
        Duration::from_secs(5),
        everyone,
    )
    .expect("settled");
    let (t0, v0, _) = lookups[0].1.status().unwrap();

    farm.signal("es1", "-KILL");
    // For two seconds (past the 1 s crash budget), every node keeps every node in its ring.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        for (n, l) in lookups.iter_mut() {
            let a = l.ask("members registrar");
            assert!(everyone(&a), "{n} lost a member after es1 died: {a}");
        }
    }
    // The status moved on (es1 is gone from it) and lookups still agree.
    let moved = wait_for(Duration::from_secs(3), || {
        let (t, v, _) = lookups[0].1.status()?;
        ((t, v) > (t0, v0)).then_some(())
    });
    assert!(moved.is_some(), "a new status after losing es1");
    let names = wait_for(Duration::from_secs(3), || {
        farm.monitor_names()
            .filter(|n| !n.iter().any(|x| x == "es1"))
    })
    .expect("es1 out of the status");
    for m in farm.file.members.iter().filter(|m| m.name != "es1") {
        assert!(names.contains(&m.name), "{} lost with es1", m.name);
    }
    let q: Vec<String> = (0..1000)
        .map(|i| format!("lookup registrar for u{i}@example.test"))
        .collect();
    let a0 = lookups[0].1.ask_many(&q);
    for (n, l) in lookups.iter_mut().skip(1) {
        assert_eq!(l.ask_many(&q), a0, "{n} disagrees after es1 died");
    }

    // es1 comes back and is in the status again within the join budget.
    let started = Instant::now();
    farm.restart("es1");
    let back = wait_for(Duration::from_secs(5), || {
        farm.monitor_names()?
            .iter()
            .any(|m| m == "es1")
            .then(|| started.elapsed())
    });
    // Measured with a monitor process per poll, so only reported, with a loose bound.
    within_budget(
        "event server restart to back in the status (polled with onehop-monitor)",
        back,
        Duration::from_secs(5),
        1.0,
    );
}
