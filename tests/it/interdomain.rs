//! Requests for other domains are routed by RFC 3263: a caller in one farm (example.test)
//! calls a user of another farm (other.test); the caller's node finds other.test's proxies
//! through NAPTR, SRV and A records served by the other farm's DNS.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{wait_for, Farm};
use crate::sipp::{require_sipp, Sipp, Workdir};

#[test]
fn a_call_to_another_domain_is_routed_by_rfc3263() {
    require_sipp();
    let other = Farm::up(
        "127.0.110.1",
        &["--nodes", "2", "--dns", "1", "--domain", "other.test"],
    );
    let mut home = other.beside("127.0.111.1", &["--nodes", "2", "--dns", "0"]);
    let dns = other.file.member("dns1").unwrap().addr("dns").unwrap();

    // node1 of the home farm asks the other farm's DNS for other domains.
    let node1 = home.file.member("node1").unwrap().clone();
    let text = std::fs::read_to_string(&node1.config).unwrap();
    let mut cfg: toml::Table = toml::from_str(&text).unwrap();
    cfg.insert(
        "dns_servers".into(),
        toml::Value::Array(vec![dns.to_string().into()]),
    );
    std::fs::write(&node1.config, toml::to_string(&cfg).unwrap()).unwrap();
    home.signal("node1", "-TERM");
    wait_for(Duration::from_secs(10), || {
        let alive = Command::new("kill")
            .args(["-0", &node1.pid.to_string()])
            .status()
            .ok()?
            .success();
        (!alive).then_some(())
    })
    .expect("node1 stopped");
    home.restart("node1");
    let mut l2 = home.lookup("node2");
    wait_for(Duration::from_secs(10), || {
        l2.ask("members sip_proxy").contains("node1=").then_some(())
    })
    .expect("node1 back in the home farm");

    // bob registers with the other farm; a caller of the home farm calls him through node1.
    let dir = Workdir::new("onehop-sipp-interdomain-");
    let bob = SocketAddr::new(IpAddr::from([127, 0, 110, 200]), 5090);
    let other_proxy = SocketAddr::new(other.ip("node1"), 5060);
    Sipp::new(&dir, "register-bob", "reg_one.xml")
        .service("bob")
        .set("domain", "other.test")
        .local(bob.ip(), bob.port())
        .remote(other_proxy)
        .calls(1)
        .timeout(Duration::from_secs(20))
        .run()
        .assert_all(1);
    let uas = Sipp::new(&dir, "bob", "uas_call.xml")
        .local(bob.ip(), bob.port())
        .calls(1)
        .timeout(Duration::from_secs(60))
        .spawn();
    let started = Instant::now();
    let call = Sipp::new(&dir, "caller", "uac_call.xml")
        .service("bob")
        .set("domain", "other.test")
        .local(IpAddr::from([127, 0, 111, 200]), 5091)
        .remote(SocketAddr::new(home.ip("node1"), 5060))
        .calls(1)
        .timeout(Duration::from_secs(40))
        .run();
    let uas = uas.wait();
    println!(
        "call from example.test to bob@other.test via RFC 3263: {} completed in {:.0} ms",
        call.successful(),
        started.elapsed().as_secs_f64() * 1e3
    );
    call.assert_all(1);
    uas.assert_all(1);
    // The unknown domain of nowhere is not found.
    let none = Sipp::new(&dir, "nowhere", "uac_unknown.xml")
        .service("carol")
        .set("domain", "nowhere.invalid")
        .local(IpAddr::from([127, 0, 111, 200]), 5092)
        .remote(SocketAddr::new(home.ip("node1"), 5060))
        .calls(1)
        .timeout(Duration::from_secs(40))
        .run();
    none.assert_all(1);
}
