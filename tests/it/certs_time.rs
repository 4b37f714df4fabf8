//! Certificates over time (issue 11): a CA certificate near its end, a revocation list past
//! its next update and a member whose certificate ends soon are reported by every daemon
//! (log lines, metrics, the `events` topic) and by the monitor; a stale list is still
//! enforced, and a fresh one clears the reports.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::{raw_connect, scrape, wait_for, Farm, Follower};

const DAY: i64 = 86_400;

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn rfc3339(secs: i64) -> String {
    onehop_overlay::certwatch::rfc3339(secs)
}

/// Every daemon's metrics address, by member name.
fn metrics_addrs(farm: &Farm) -> BTreeMap<String, SocketAddr> {
    farm.file
        .members
        .iter()
        .filter_map(|m| Some((m.name.clone(), m.addr("metrics")?)))
        .collect()
}

fn figure(addr: SocketAddr, name: &str) -> Option<i64> {
    scrape(addr)?.get(name).copied()
}

/// Waits until `name` satisfies `pred` on every daemon; returns the values.
fn on_every_daemon(
    farm: &Farm,
    name: &str,
    wait: Duration,
    pred: impl Fn(i64) -> bool,
) -> BTreeMap<String, i64> {
    let addrs = metrics_addrs(farm);
    assert!(addrs.len() >= 4, "every daemon serves metrics: {addrs:?}");
    wait_for(wait, || {
        let values: BTreeMap<String, i64> = addrs
            .iter()
            .filter_map(|(n, a)| Some((n.clone(), figure(*a, name)?)))
            .collect();
        (values.len() == addrs.len() && values.values().all(|v| pred(*v))).then_some(values)
    })
    .unwrap_or_else(|| {
        let now: BTreeMap<String, Option<i64>> = addrs
            .iter()
            .map(|(n, a)| (n.clone(), figure(*a, name)))
            .collect();
        panic!("{name} not as expected on every daemon within {wait:?}: {now:?}")
    })
}

fn certs_tool(farm: &Farm, args: &[&str]) -> String {
    let out = farm.tool("onehop-certs", args);
    assert!(
        out.status.success(),
        "onehop-certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A farm whose CA ends in 20 days: every daemon warns at start, with the metric. Its
/// revocation list (with one member revoked) is re-signed to go stale 4 s later: every
/// daemon reports it (ERROR line, `crl_stale` 1) and goes on refusing the revoked member; a
/// node whose certificate ends in 10 days joins meanwhile and warns of it, and the monitor
/// shows all three. A fresh list clears the stale reports. No line repeats within the test
/// (the repeat interval is an hour).
#[test]
fn a_stale_crl_and_certificates_near_their_end_are_reported_by_every_daemon() {
    let mut farm = Farm::up_prepared(
        "127.0.240.1",
        &[
            "--nodes",
            "1",
            "--eventservers",
            "1",
            "--managers",
            "1",
            "--dns",
            "1",
        ],
        |dir| {
            onehop_certs::Ca::init_for_days(dir.join("ca"), "example.test", 20).expect("CA");
        },
    );
    let daemons: Vec<String> = metrics_addrs(&farm).into_keys().collect();
    println!("daemons: {daemons:?}");

    // The CA: a WARN line on every daemon at start (20 days, or 19 days and 23 hours once a
    // second has passed), and the metric.
    for name in &daemons {
        let warned = wait_for(Duration::from_secs(5), || {
            farm.log(name)
                .lines()
                .find(|l| {
                    l.contains("WARN")
                        && (l.contains("CA certificate expires in 20 days 0 h")
                            || l.contains("CA certificate expires in 19 days 23 h"))
                })
                .map(str::to_string)
        });
        assert!(
            warned.is_some(),
            "{name} did not warn of the CA:\n{}",
            farm.log(name)
        );
    }
    let ca = on_every_daemon(
        &farm,
        "onehop_cert_expires_in_seconds{cert=\"ca\"}",
        Duration::from_secs(5),
        |v| (19 * DAY..=20 * DAY).contains(&v),
    );
    println!("CERTS ca expires in (s): {ca:?}");
    let own = on_every_daemon(
        &farm,
        "onehop_cert_expires_in_seconds{cert=\"own\"}",
        Duration::from_secs(5),
        |v| v > 800 * DAY,
    );
    println!("CERTS own expires in (s): {own:?}");
    on_every_daemon(&farm, "onehop_crl_stale", Duration::from_secs(5), |v| {
        v == 0
    });

    let monitor = Follower::start(&farm, 120);
    let line = monitor
        .saw(
            &["cert ca warn CA certificate expires in "],
            Duration::from_secs(10),
        )
        .expect("the monitor shows the CA's end");
    println!("MONITOR {line}");

    // A member revoked, then the list re-signed to go stale in 4 s and published.
    let ca_dir = farm.path().join("ca");
    let ca_dir = ca_dir.to_str().unwrap();
    farm.issue(
        "rogue",
        "node",
        &["--roles", "registrar", "--ip", "127.0.240.60"],
    );
    certs_tool(&farm, &["revoke", "--dir", ca_dir, "--name", "rogue"]);
    let stale_at = unix_now() + 4;
    let said = certs_tool(
        &farm,
        &[
            "crl",
            "--dir",
            ca_dir,
            "--next-update",
            &rfc3339(stale_at),
            "--publish",
            "--farm",
            farm.path().to_str().unwrap(),
        ],
    );
    println!("{}", said.trim());
    let number: u64 = said
        .split("crl number ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .expect("crl number");
    on_every_daemon(
        &farm,
        "onehop_crl_next_update_in_seconds",
        Duration::from_secs(5),
        |v| (-1..=4).contains(&v),
    );
    let stale = on_every_daemon(&farm, "onehop_crl_stale", Duration::from_secs(10), |v| {
        v == 1
    });
    println!("CERTS crl_stale: {stale:?}");
    let overdue = on_every_daemon(
        &farm,
        "onehop_crl_next_update_in_seconds",
        Duration::from_secs(5),
        |v| v < 0,
    );
    println!("CERTS crl_next_update_in_seconds once stale: {overdue:?}");
    let stale_line = format!("revocation list #{number} is stale");
    for name in &daemons {
        assert!(
            farm.log_shows(name, &stale_line, Duration::from_secs(5)),
            "{name} did not report the stale list:\n{}",
            farm.log(name)
        );
        let log = farm.log(name);
        let line = log.lines().find(|l| l.contains(&stale_line)).unwrap();
        assert!(
            line.contains("ERROR") && line.contains("still enforced"),
            "{line}"
        );
    }
    let line = monitor
        .saw(
            &[&format!("cert crl error {stale_line}")],
            Duration::from_secs(10),
        )
        .expect("the monitor shows the stale list");
    println!("MONITOR {line}");

    // The stale list is still enforced: the revoked member is refused.
    let certs = farm.path().join("certs");
    let es1: SocketAddr = farm
        .file
        .member("es1")
        .unwrap()
        .addr("eventserver")
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let refused = rt.block_on(async {
        let conn = raw_connect(
            &farm.path().join("ca/ca.pem"),
            &certs.join("rogue.pem"),
            &certs.join("rogue.key"),
            es1,
        )
        .await;
        match conn {
            Err(e) => e,
            Ok(c) => crate::harness::send_raw(&c, b"\0\0\0\x01\0")
                .await
                .err()
                .unwrap_or_default(),
        }
    });
    assert!(
        !refused.is_empty(),
        "a revoked member got a session while the list is stale"
    );
    assert!(
        farm.log_shows(
            "es1",
            "refused connection: certificate revoked",
            Duration::from_secs(5)
        ),
        "es1 did not refuse the revoked certificate"
    );

    // A node whose certificate ends in 10 days joins (the stale list blocks no one) and says
    // so, in its log, its metric and through the monitor.
    // Half an hour short of 10 days: "9 days 23 h" whenever node9 starts within that half hour.
    let not_after = rfc3339(unix_now() + 10 * DAY - 1800);
    farm.add_node_with(
        "node9",
        "127.0.240.50",
        "registrar",
        &["--not-after", &not_after],
        true,
    );
    farm.wait_rings(&["registrar"]);
    assert!(
        farm.log_shows(
            "node9",
            "certificate of node9 expires in 9 days 23 h",
            Duration::from_secs(5)
        ),
        "{}",
        farm.log("node9")
    );
    let addr: SocketAddr = "127.0.240.50:9100".parse().unwrap();
    let left = wait_for(Duration::from_secs(5), || {
        figure(addr, "onehop_cert_expires_in_seconds{cert=\"own\"}")
    })
    .expect("node9's metric");
    assert!((9 * DAY..=10 * DAY).contains(&left), "{left}");
    let line = monitor
        .saw(
            &["log node9 warn certificate of node9 expires in 9 days"],
            Duration::from_secs(10),
        )
        .expect("the monitor shows node9's warning");
    println!("MONITOR {line}");

    // A fresh list: current again everywhere, one INFO line each.
    certs_tool(
        &farm,
        &[
            "crl",
            "--dir",
            ca_dir,
            "--publish",
            "--farm",
            farm.path().to_str().unwrap(),
        ],
    );
    on_every_daemon(&farm, "onehop_crl_stale", Duration::from_secs(10), |v| {
        v == 0
    });
    on_every_daemon(
        &farm,
        "onehop_crl_next_update_in_seconds",
        Duration::from_secs(5),
        |v| (6 * DAY..=7 * DAY).contains(&v),
    );
    let current = format!("revocation list #{} is current", number + 1);
    for name in &daemons {
        assert!(
            farm.log_shows(name, &current, Duration::from_secs(5)),
            "{name}:\n{}",
            farm.log(name)
        );
    }

    // Bounded: within the test every condition was said once per daemon.
    for name in daemons.iter().chain(["node9".to_string()].iter()) {
        let log = farm.log(name);
        for text in ["CA certificate expires in", &stale_line, &current] {
            let n = log.lines().filter(|l| l.contains(text)).count();
            assert_eq!(n, 1, "{name}: {n} lines with {text:?}");
        }
    }
    let lines = monitor.lines();
    let stale_lines = lines
        .iter()
        .filter(|l| l.contains(&format!("cert crl error {stale_line}")))
        .count();
    assert_eq!(stale_lines, 1, "{lines:#?}");
}
