//! A whole farm: every node holds the same status and answers every lookup the same way.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::harness::{wait_for, Farm};

#[test]
fn five_nodes_agree_on_status_and_on_10000_owners() {
    let farm = Farm::up("127.0.2.1", &["--nodes", "5", "--dns", "0"]);
    let mut lookups = farm.lookups();
    assert_eq!(lookups.len(), 5);
    // The farm is ready when the status names everyone; wait until every node holds one status.
    let status = wait_for(Duration::from_secs(5), || {
        let seen: BTreeSet<_> = lookups.iter_mut().map(|(_, l)| l.status()).collect();
        (seen.len() == 1)
            .then(|| seen.into_iter().next().unwrap())
            .flatten()
    })
    .expect("every node holds the same (term, version)");
    println!(
        "all 5 nodes hold term {} version {} from {}",
        status.0, status.1, status.2
    );
    assert!(farm.names("manager").contains(&status.2));

    for role in ["registrar", "sip_proxy", "media_relay"] {
        let requests: Vec<String> = (0..10_000)
            .map(|i| format!("lookup {role} for user{i}@example.test"))
            .collect();
        let mut answers = Vec::new();
        for (name, l) in lookups.iter_mut() {
            let a = l.ask_many(&requests);
            assert!(
                a.iter().all(|x| x.parse::<std::net::IpAddr>().is_ok()),
                "{name}: non-address answer"
            );
            answers.push((name.clone(), a));
        }
        let (first_name, first) = &answers[0];
        for (name, a) in &answers[1..] {
            let differ = a.iter().zip(first).filter(|(x, y)| x != y).count();
            assert_eq!(
                differ, 0,
                "{name} and {first_name} disagree on {differ} of 10000 {role} owners"
            );
        }
        let owners: BTreeSet<&String> = first.iter().collect();
        println!(
            "{role}: 10000 keys, same owner on all 5 nodes, {} distinct owners",
            owners.len()
        );
        assert_eq!(owners.len(), 5, "every node owns part of the {role} ring");
    }

    // The SIP Thor verbs, exactly.
    let (_, l) = &mut lookups[0];
    let ip = farm.ip("node3").to_string();
    assert_eq!(l.ask(&format!("is_online {ip} as registrar")), "Yes");
    assert_eq!(l.ask(&format!("is_online {ip} as no_such_role")), "No");
    assert!(l
        .ask("lookup no_such_role for alice@example.test")
        .starts_with("error"));
    let canonical = l.ask("lookup registrar for alice@example.test");
    assert_eq!(
        l.ask("lookup registrar for sip:alice@EXAMPLE.test:5060;transport=udp"),
        canonical
    );

    // The monitor prints the same status as JSON.
    let out = farm.tool(
        "onehop-monitor",
        &["--farm", farm.path().to_str().unwrap(), "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("monitor JSON");
    let names: BTreeSet<&str> = json["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    for m in &farm.file.members {
        assert!(
            names.contains(m.name.as_str()),
            "{} missing from the monitor's status",
            m.name
        );
    }
    assert!(
        !names.contains("monitor") && !names.contains("admin"),
        "clients are never members"
    );
}

#[test]
fn farm_json_keeps_its_contract() {
    let farm = Farm::up(
        "127.0.3.1",
        &[
            "--nodes",
            "2",
            "--eventservers",
            "1",
            "--managers",
            "1",
            "--dns",
            "0",
        ],
    );
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(farm.path().join("farm.json")).unwrap())
            .unwrap();
    assert_eq!(raw["domain"], "example.test");
    let members = raw["members"].as_array().unwrap();
    assert_eq!(members.len(), 4);
    for m in members {
        for key in ["name", "kind", "roles", "pid", "ip", "cmd", "ports"] {
            assert!(m.get(key).is_some(), "member lacks {key}: {m}");
        }
        assert!(m["ports"]["metrics"].as_u64() == Some(9100));
        let cmd: Vec<&str> = m["cmd"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert!(std::path::Path::new(cmd[0]).exists(), "cmd[0] exists");
    }
    let node = members.iter().find(|m| m["kind"] == "node").unwrap();
    assert_eq!(node["ports"]["lookup"], 9500);
    assert_eq!(node["ports"]["sip"], 5060);
    assert_eq!(
        node["roles"],
        serde_json::json!(["sip_proxy", "registrar", "media_relay"])
    );
    let es = members.iter().find(|m| m["kind"] == "eventserver").unwrap();
    assert_eq!(es["ports"]["eventserver"], 8000);
    assert_eq!(es["ip"], "127.0.3.1");

    // Every daemon serves Prometheus metrics.
    for m in &farm.file.members {
        let addr = m.addr("metrics").unwrap();
        let mut s = std::net::TcpStream::connect(addr).expect("metrics port");
        use std::io::{Read, Write};
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{}: {body}", m.name);
        assert!(body.contains("# TYPE onehop_"), "{}: no metrics", m.name);
    }

    // Every daemon runs with transparent huge pages off (its allocator's freed runs would
    // otherwise come back as whole zeroed 2 MiB pages; docs/decisions.md).
    for m in members {
        let pid = m["pid"].as_u64().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
            assert_eq!(
                line.split_whitespace().nth(1),
                Some("0"),
                "{}: {line}",
                m["name"]
            );
        }
    }

    // A second `up` on a running farm refuses.
    let out = std::process::Command::new(crate::harness::farm_bin())
        .args(["up", "--detach", "--base-ip", "127.0.3.1", "--dir"])
        .arg(farm.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));
}
