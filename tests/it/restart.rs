//! A node restarted in place (SIGTERM, then started again at once, as `systemctl restart`
//! does) comes back with an empty store within the managers' batching window. The farm must
//! still see it leave and come back, so that every binding is again on its two registrars.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use crate::harness::{wait_for, Farm};
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
