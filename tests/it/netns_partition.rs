//! Partitions between hosts (issue 11): each member in a network namespace of its own, links
//! cut with nftables (see `netns.rs`).
//!
//! - The active manager's host isolated: the majority elects another within the failover
//!   budget, the old one stops publishing, every member follows the higher term; healed, the
//!   old one follows it too.
//! - A node's host isolated: it is out of every ring within the crash budget, its AORs'
//!   bindings are still answered by the others, and after healing it is back with every
//!   binding whole.
//! - The event servers split into two groups that cannot reach each other, members on both
//!   sides; healed, every member converges on the same status and ring.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::harness::{wait_for, within_budget, Lookup};
use crate::netns::{
    contacts, names_in, rings, serial, status_code, until, NsFarm, SipClient, Spec,
};

/// Slack on the design's budgets for a loaded 2-core machine.
const SLACK: f64 = 2.5;
const CRASH_BUDGET: Duration = Duration::from_secs(1);
const FAILOVER_BUDGET: Duration = Duration::from_secs(1);

/// Every member's `(term, version)` (a DNS server's as its zone serial, see `serial`), by name,
/// for the members named.
fn held_by(farm: &NsFarm, names: &[String]) -> BTreeMap<String, Option<(u64, u64)>> {
    names.iter().map(|n| (n.clone(), farm.held(n))).collect()
}

/// Whether every member named holds status `want` (DNS servers its serial).
fn all_hold(farm: &NsFarm, names: &[String], want: (u64, u64)) -> bool {
    names.iter().all(|n| {
        let expect = if farm.member(n).kind == "dns" {
            serial(want)
        } else {
            want
        };
        farm.held(n) == Some(expect)
    })
}

/// The status `(term, version, manager)` every node's lookup interface reports, once they all
/// report the same (a status published a moment ago may not have reached every node yet), or
/// `None` after five seconds.
fn agreed_status(lookups: &mut [(String, Lookup)]) -> Option<(u64, u64, String)> {
    wait_for(Duration::from_secs(5), || common_status(lookups))
}

/// The status `(term, version, manager)` every node's lookup interface reports, if they all
/// report the same.
fn common_status(lookups: &mut [(String, Lookup)]) -> Option<(u64, u64, String)> {
    let all: Vec<_> = lookups.iter_mut().map(|(_, l)| l.status()).collect();
    let first = all.first()?.clone()?;
    all.iter()
        .all(|s| s.as_ref() == Some(&first))
        .then_some(first)
}

/// Members, managers and DNS included, converge on one status that lists all `want` members,
/// and every node's rings are the same. Returns that status.
fn converged(
    farm: &NsFarm,
    lookups: &mut [(String, Lookup)],
    everyone: &[String],
) -> Option<(u64, u64, String)> {
    let (t, v, m) = common_status(lookups)?;
    let n = everyone.len() as i64;
    let nodes_full = lookups
        .iter()
        .all(|(name, _)| farm.metrics(name).get("onehop_members") == Some(&n));
    if !nodes_full || !all_hold(farm, everyone, (t, v)) {
        return None;
    }
    for role in ["registrar", "sip_proxy", "media_relay"] {
        let r = rings(lookups, role);
        let first = r.values().next()?;
        if r.values().any(|x| x != first) {
            return None;
        }
    }
    Some((t, v, m))
}

fn everyone(farm: &NsFarm) -> Vec<String> {
    farm.file.members.iter().map(|m| m.name.clone()).collect()
}

#[test]
fn netns_isolated_active_manager_is_replaced_and_the_farm_follows_the_higher_term() {
    let Some(farm) = NsFarm::up(111, Spec::default()) else {
        return;
    };
    let recorder = farm.record_statuses();
    let all = everyone(&farm);
    let nodes = farm.names("node");
    let mut lookups = farm.lookups(&nodes);
    // A settled farm first: every node on one status, from a manager that counts itself
    // active. On a loaded machine a manager that starts late can make the others elect again
    // right after the start (a new term, the same manager or another), and a status read in
    // that moment names a manager that is not active yet.
    let settled = wait_for(Duration::from_secs(10), || {
        let (t, v, m) = common_status(&mut lookups)?;
        (farm.metrics(&m).get("onehop_manager_active") == Some(&1)
            && common_status(&mut lookups) == Some((t, v, m.clone())))
        .then_some((t, v, m))
    });
    let (term0, version0, active) = settled.unwrap_or_else(|| {
        panic!(
            "no settled farm in 10 s: statuses {:?}",
            lookups
                .iter_mut()
                .map(|(_, l)| l.status())
                .collect::<Vec<_>>()
        )
    });
    println!("active manager {active}, status ({term0}, {version0})");

    let cut = Instant::now();
    farm.lab.isolate(&active);
    // Watched together: every node holding a new manager's status, and the isolated manager
    // counting itself inactive (its quorum gone, it must stop publishing).
    let (mut failover, mut stepped) = (None, None);
    while (failover.is_none() || stepped.is_none()) && cut.elapsed() < Duration::from_secs(10) {
        if failover.is_none()
            && lookups
                .iter_mut()
                .all(|(_, l)| l.status().is_some_and(|(t, _, m)| t > term0 && m != active))
        {
            failover = Some(cut.elapsed());
        }
        if stepped.is_none() && farm.metrics(&active).get("onehop_manager_active") == Some(&0) {
            stepped = Some(cut.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    within_budget(
        "failover (active manager's host isolated to every node holding a new manager's status)",
        failover,
        FAILOVER_BUDGET,
        SLACK,
    );
    let stepped = stepped.expect("the isolated manager still counts itself active");
    println!(
        "the isolated {active} counts itself inactive {:.0} ms after the cut",
        stepped.as_secs_f64() * 1e3
    );
    let published = farm.metrics(&active)["onehop_status_published_total"];
    let (term1, _, new_active) = agreed_status(&mut lookups).expect("one status");
    // The isolated manager's sessions idle out: it leaves the status (9 of 10 members).
    let others: Vec<String> = all.iter().filter(|n| **n != active).cloned().collect();
    let out = until(cut, Duration::from_secs(10), || {
        let n = (all.len() - 1) as i64;
        nodes
            .iter()
            .all(|x| farm.metrics(x).get("onehop_members") == Some(&n))
    });
    println!(
        "{active} out of the status held by every node after {:?}; new manager {new_active} in term {term1}",
        out.expect("isolated manager left the status")
    );
    // Every member that can hear the farm follows the new term: nodes, the other managers, DNS.
    let followed = until(cut, Duration::from_secs(10), || {
        common_status(&mut lookups)
            .is_some_and(|(t, v, _)| t == term1 && all_hold(&farm, &others, (t, v)))
    });
    let followed = followed.unwrap_or_else(|| {
        panic!(
            "members do not follow term {term1}: nodes {:?}, members {:?}",
            common_status(&mut lookups),
            held_by(&farm, &others)
        )
    });
    println!(
        "every member but the isolated one holds term {term1} after {followed:?}: {:?}",
        held_by(&farm, &others)
    );
    assert_eq!(
        farm.metrics(&active)["onehop_status_published_total"],
        published,
        "the isolated manager published after it stepped down"
    );

    let healed = Instant::now();
    farm.lab.heal();
    let back = until(healed, Duration::from_secs(20), || {
        converged(&farm, &mut lookups, &all).is_some_and(|(t, _, _)| t >= term1)
    });
    let (term2, version2, manager2) = converged(&farm, &mut lookups, &all)
        .unwrap_or_else(|| panic!("no convergence after healing: {:?}", held_by(&farm, &all)));
    println!(
        "healed: every member holds ({term2}, {version2}) from {manager2}, {active} included, {:.0} ms after the heal",
        back.expect("converged").as_secs_f64() * 1e3
    );
    assert!(term2 >= term1, "the farm went back to term {term2}");
    assert_eq!(farm.held(&active), Some((term2, version2)));

    recorder.stop();
    let by_term = recorder.publishers();
    println!(
        "statuses recorded: {}; publishers by term: {by_term:?}",
        recorder.seen().len()
    );
    for (t, ms) in &by_term {
        assert_eq!(ms.len(), 1, "term {t} had two publishers: {ms:?}");
    }
    // After the new term began, nothing older was published.
    let seen = recorder.seen();
    let first_new = seen
        .iter()
        .position(|s| s.term >= term1)
        .expect("the new term was seen");
    assert!(
        seen[first_new..].iter().all(|s| s.term >= term1),
        "a status of an older term after term {term1}: {:?}",
        seen[first_new..]
            .iter()
            .map(|s| (s.term, s.version, s.manager.clone()))
            .collect::<Vec<_>>()
    );
}

/// Registers `n` AORs through `proxy`; returns them.
fn register_many(
    sip: &mut SipClient,
    proxy: std::net::SocketAddr,
    tag: &str,
    n: usize,
) -> Vec<String> {
    let users: Vec<String> = (0..n).map(|i| format!("{tag}{i}")).collect();
    for u in &users {
        let r = sip
            .register(proxy, u, true)
            .unwrap_or_else(|| panic!("no answer to the REGISTER of {u}"));
        assert_eq!(
            status_code(&r),
            200,
            "REGISTER {u}: {}",
            r.lines().next().unwrap_or("")
        );
    }
    users
}

/// How many of `users` a query through `proxy` answers with their contact.
fn bindings_found(sip: &mut SipClient, proxy: std::net::SocketAddr, users: &[String]) -> usize {
    users
        .iter()
        .filter(|u| {
            let want = sip.contact(u);
            sip.register(proxy, u, false)
                .is_some_and(|r| status_code(&r) == 200 && contacts(&r).contains(&want))
        })
        .count()
}

#[test]
fn netns_isolated_node_is_removed_and_returns_with_its_bindings() {
    let Some(farm) = NsFarm::up(112, Spec::default()) else {
        return;
    };
    let all = everyone(&farm);
    let nodes = farm.names("node");
    let victim = "node2";
    let mut sip = SipClient::bind(farm.lab.hub_ip());
    let users = register_many(&mut sip, farm.sip(victim), "iso", 30);
    println!("{} AORs registered through {victim}", users.len());

    let mut lookups = farm.lookups(&nodes);
    let mut others: Vec<(String, Lookup)> = farm.lookups(
        &nodes
            .iter()
            .filter(|n| *n != victim)
            .cloned()
            .collect::<Vec<_>>(),
    );
    let cut = Instant::now();
    farm.lab.isolate(victim);
    let out = until(cut, Duration::from_secs(10), || {
        rings(&mut others, "registrar")
            .values()
            .all(|a| !names_in(a).contains(&victim.to_string()))
    });
    within_budget(
        "isolated node out of every other node's ring",
        out,
        CRASH_BUDGET,
        SLACK,
    );
    // While it is cut off, the other proxies still find every binding (from the replicas).
    let node1 = farm.sip("node1");
    let during = bindings_found(&mut sip, node1, &users);
    println!(
        "while {victim} is isolated: {during}/{} bindings found through node1",
        users.len()
    );
    assert_eq!(
        during,
        users.len(),
        "bindings lost while {victim} was isolated"
    );

    let healed = Instant::now();
    farm.lab.heal();
    let back = until(healed, Duration::from_secs(20), || {
        rings(&mut lookups, "registrar")
            .values()
            .all(|a| names_in(a).contains(&victim.to_string()))
    });
    println!(
        "heal to {victim} in every ring (no design budget): {:.0} ms",
        back.expect("the node came back").as_secs_f64() * 1e3
    );
    let conv = until(healed, Duration::from_secs(20), || {
        converged(&farm, &mut lookups, &all).is_some()
    });
    println!(
        "every member on one status and ring {:.0} ms after the heal",
        conv.expect("converged after healing").as_secs_f64() * 1e3
    );
    // Every binding whole, through every proxy, and held by the owner and its replica.
    for n in &nodes {
        let found = bindings_found(&mut sip, farm.sip(n), &users);
        println!(
            "after the heal: {found}/{} bindings found through {n}",
            users.len()
        );
        assert_eq!(found, users.len(), "bindings lost, asked through {n}");
    }
    let (_, l) = &mut lookups[0];
    for u in &users {
        let key = format!("{u}@{}", crate::netns::DOMAIN);
        let holders = l.ask(&format!("replicas registrar for {key} 2"));
        for ip in holders.split_whitespace() {
            let holder = farm
                .file
                .members
                .iter()
                .find(|m| m.ip.to_string() == ip)
                .unwrap_or_else(|| panic!("no member at {ip}"))
                .name
                .clone();
            let held = farm
                .lookup(&holder)
                .ask(&format!("holds registrar for {key}"));
            assert_eq!(
                held, "Yes",
                "{holder} (owner or replica of {key}) does not hold it"
            );
        }
    }
}

#[test]
fn netns_split_event_servers_then_heal_converges() {
    let Some(farm) = NsFarm::up(113, Spec::default()) else {
        return;
    };
    let recorder = farm.record_statuses();
    let all = everyone(&farm);
    let nodes = farm.names("node");
    let mut lookups = farm.lookups(&nodes);
    let (term0, version0, active) = agreed_status(&mut lookups).expect("one status");
    // Left: one event server, one manager, one node; right: the rest (the managers' majority).
    let left = ["es1", "manager1", "node1"];
    let right: Vec<&str> = all
        .iter()
        .map(|s| s.as_str())
        .filter(|n| !left.contains(n))
        .collect();
    println!("status ({term0}, {version0}) from {active}; splitting {left:?} from {right:?}");
    let cut = Instant::now();
    farm.lab.split(&left, &right);
    // The majority side drops the left side's members (their sessions on es2 and es3 idle out,
    // and es1 leaves the active manager's reach).
    let mut right_nodes: Vec<(String, Lookup)> =
        farm.lookups(&["node2".to_string(), "node3".to_string()]);
    let want = (all.len() - left.len()) as i64;
    let dropped = until(cut, Duration::from_secs(10), || {
        let rings_ok = rings(&mut right_nodes, "registrar")
            .values()
            .all(|a| !names_in(a).contains(&"node1".to_string()));
        rings_ok
            && ["node2", "node3"]
                .iter()
                .all(|n| farm.metrics(n).get("onehop_members") == Some(&want))
    });
    within_budget(
        "split: the left side out of the right side's status and rings",
        dropped,
        CRASH_BUDGET,
        SLACK,
    );
    let right_status = agreed_status(&mut right_nodes).expect("the right side agrees");
    // The left side keeps what it held: never a status older than before the split.
    let left_status = farm.lookup("node1").status().expect("node1 status");
    println!(
        "during the split: right side holds {right_status:?}, node1 holds {left_status:?}, manager1 active={:?}",
        farm.metrics("manager1").get("onehop_manager_active")
    );
    assert!((left_status.0, left_status.1) >= (term0, version0));
    assert_ne!(
        farm.metrics("manager1").get("onehop_manager_active"),
        Some(&1),
        "the minority manager counts itself active"
    );

    let healed = Instant::now();
    farm.lab.heal();
    let back = until(healed, Duration::from_secs(20), || {
        converged(&farm, &mut lookups, &all).is_some()
    });
    let (t, v, m) = converged(&farm, &mut lookups, &all)
        .unwrap_or_else(|| panic!("no convergence after healing: {:?}", held_by(&farm, &all)));
    println!(
        "healed: all {} members hold ({t}, {v}) from {m} and every node the same rings, {:.0} ms after the heal",
        all.len(),
        back.expect("converged").as_secs_f64() * 1e3
    );
    assert!((t, v) > (right_status.0, right_status.1));
    recorder.stop();
    for (term, ms) in recorder.publishers() {
        assert_eq!(ms.len(), 1, "term {term} had two publishers: {ms:?}");
    }
    println!("removals seen by the monitor: {:?}", recorder.removals());
}
