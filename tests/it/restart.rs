//! A node restarted in place (SIGTERM, then started again at once, as `systemctl restart`
//! does) comes back with an empty store within the managers' batching window. The farm must
//! still see it leave and come back, so that every binding is again on its two registrars.

use std::net::{IpAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::harness::{placement, wait_for, Farm};
use crate::metrics::register;

/// Whether process `pid` is gone (or a zombie).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// SIGTERM to `name`, and as soon as the process is gone, the same command line again (as
/// `systemctl restart` does).
fn restart_in_place(farm: &mut Farm, name: &str) {
    let pid = farm.pid(name);
    farm.signal(name, "-TERM");
    let exited = wait_for(Duration::from_secs(5), || gone(pid).then_some(()));
    assert!(exited.is_some(), "{name} left within 5 s");
    farm.restart(name);
}

#[test]
fn a_node_restarted_in_place_gets_its_bindings_back() {
    let mut farm = Farm::up_with_rings(
        "127.0.152.1",
        &["--nodes", "3", "--dns", "0"],
        &["registrar"],
    );
    let nodes = farm.names("node");

    let node1 = farm
        .file
        .member("node1")
        .and_then(|m| m.addr("sip"))
        .unwrap();
    let sock = UdpSocket::bind("127.0.152.200:0").expect("client socket");
    let aors: Vec<String> = (0..300).map(|i| format!("r{i}@example.test")).collect();
    for (i, aor) in aors.iter().enumerate() {
        let user = aor.split('@').next().unwrap();
        assert!(register(&sock, node1, user, i as u32), "REGISTER {aor}");
    }
    let asks: Vec<String> = aors
        .iter()
        .map(|a| format!("holds registrar for {a}"))
        .collect();
    let copies = |farm: &Farm| -> Vec<usize> {
        let mut n = vec![0; aors.len()];
        for node in &nodes {
            for (i, a) in farm.lookup(node).ask_many(&asks).iter().enumerate() {
                if a == "Yes" {
                    n[i] += 1;
                }
            }
        }
        n
    };
    assert!(
        copies(&farm).iter().all(|c| *c == 2),
        "every AOR on 2 registrars"
    );

    // node2: SIGTERM, and as soon as the process is gone, the same command line again.
    let pid = farm.pid("node2");
    farm.signal("node2", "-TERM");
    let exited = wait_for(Duration::from_secs(5), || gone(pid).then_some(()));
    assert!(exited.is_some(), "node2 left within 5 s");
    let restarted = Instant::now();
    farm.restart("node2");

    let healed = wait_for(Duration::from_secs(15), || {
        let c = copies(&farm);
        c.iter().all(|n| *n == 2).then(|| restarted.elapsed())
    });
    let c = copies(&farm);
    let short = c.iter().filter(|n| **n < 2).count();
    assert!(
        healed.is_some(),
        "{short} of {} AORs still on fewer than 2 registrars 15 s after node2's restart",
        aors.len()
    );
    println!(
        "all {} AORs on 2 registrars again {:?} after node2 restarted in place",
        aors.len(),
        healed.unwrap()
    );
}

/// Membership changes in quick succession, as an operator's rolling work makes them: each
/// node restarted in place in turn (gone and back within a few tens of ms, while the
/// transfers of its departure are still running), twice round, then node2's certificate
/// rotated, then node4's revoked and published. After each change every AOR is again on
/// exactly its two registrars under the status every node holds: no copy is lost to a
/// hand-off cut short by the next change, and no node settles on an older ring than the
/// one it holds.
#[test]
fn bindings_keep_two_copies_through_changes_in_quick_succession() {
    let mut farm = Farm::up_with_rings(
        "127.0.210.1",
        &["--nodes", "4", "--dns", "0"],
        &["registrar"],
    );
    let node1 = farm
        .file
        .member("node1")
        .and_then(|m| m.addr("sip"))
        .unwrap();
    let sock = UdpSocket::bind("127.0.210.200:0").expect("client socket");
    let aors: Vec<String> = (0..1500).map(|i| format!("q{i}@example.test")).collect();
    for (i, aor) in aors.iter().enumerate() {
        let user = aor.split('@').next().unwrap();
        assert!(register(&sock, node1, user, i as u32), "REGISTER {aor}");
    }
    let all = ["node1", "node2", "node3", "node4"];
    let placed = |farm: &Farm, nodes: &[&str]| {
        let at: Vec<(&str, IpAddr)> = nodes.iter().map(|n| (*n, farm.ip(n))).collect();
        placement(&at, &aors)
    };
    assert_eq!(placed(&farm, &all), Ok(()), "placed after the REGISTERs");

    for n in [
        "node2", "node3", "node4", "node1", "node2", "node3", "node4", "node1",
    ] {
        restart_in_place(&mut farm, n);
        let back = wait_for(Duration::from_secs(20), || placed(&farm, &all).ok());
        assert!(
            back.is_some(),
            "after {n}'s restart: {:?}",
            placed(&farm, &all)
        );
    }
    // node2's certificate rotated as on a farm whose daemons all read the CA's list: revoke
    // (the running node2 is cut off at once), issue anew, stop, start with the new files.
    let out = farm.revoke("node2", false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ip2 = farm.ip("node2").to_string();
    farm.issue(
        "node2",
        "node",
        &["--roles", "sip_proxy,registrar,media_relay", "--ip", &ip2],
    );
    restart_in_place(&mut farm, "node2");
    let back = wait_for(Duration::from_secs(20), || placed(&farm, &all).ok());
    assert!(
        back.is_some(),
        "after node2's rotation: {:?}",
        placed(&farm, &all)
    );

    let out = farm.revoke("node4", true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let changed = Instant::now();
    let rest = ["node1", "node2", "node3"];
    let healed = wait_for(Duration::from_secs(20), || {
        placed(&farm, &rest).ok().map(|()| changed.elapsed())
    });
    assert!(
        healed.is_some(),
        "20 s after the revocation: {:?}",
        placed(&farm, &rest)
    );
    println!(
        "8 restarts in place, a rotation and a revocation in quick succession: all {} AORs \
         on their 2 registrars among 3 nodes {:?} after the revocation",
        aors.len(),
        healed.unwrap()
    );
}
