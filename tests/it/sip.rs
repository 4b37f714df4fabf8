//! SIP through the farm (GitHub issue #4), driven by real SIPp processes and raw sockets:
//! 150,000 registrations resolved from every proxy, calls through two proxies with every
//! outcome (answer, CANCEL, busy, no answer, unknown user), a phone that knows only the domain
//! and the DNS server, and bad input and floods. SIPp's exit codes and trace files decide;
//! figures are printed (`SIP ...` lines).
//!
//! SIPp scenarios are in `tests/sipp/`. SIPp processes bind their own loopback addresses in
//! the farm's range (`.100` and up) and are bounded by `-m`, their own `-timeout` and a kill
//! from the test side.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{alive, client_ip, sip_addr, vm_rss_kib, wait_for, Farm};
use crate::sipp::{require_sipp, Outcome, Sipp, Workdir};

const DOMAIN: &str = "example.test";

/// Starts a farm and waits until every node holds every node in its `registrar` and
/// `sip_proxy` rings.
fn farm_up(base_ip: &str, args: &[&str]) -> Farm {
    Farm::up_with_rings(base_ip, args, &["registrar", "sip_proxy"])
}

/// Registers `user` with its contact at `local` through `proxy` (one SIPp REGISTER).
fn register_one(
    dir: &Workdir,
    name: &str,
    user: &str,
    local: SocketAddr,
    proxy: SocketAddr,
    tcp: bool,
) {
    let mut s = Sipp::new(dir, name, "reg_one.xml")
        .service(user)
        .set("domain", DOMAIN)
        .local(local.ip(), local.port())
        .remote(proxy)
        .calls(1)
        .timeout(Duration::from_secs(20));
    if tcp {
        s = s.tcp();
    }
    s.run().assert_all(1);
}

// ---------------------------------------------------------------------------------------------
// 1. 150,000 AORs register through every proxy and resolve from every proxy.

/// As in the P2PSIP thesis benchmark: 150,000 distinct AORs register, a third through each of
/// 3 proxies (one closed-loop SIPp per proxy, 200 REGISTERs in flight), all get 200. Then
/// every AOR is resolved from every proxy: an OPTIONS to each AOR through each proxy
/// (450,000) must reach the contact it registered (SIPp UASes on the registering addresses
/// answer 200).
#[test]
fn registrations_of_150000_aors_resolve_from_every_proxy() {
    require_sipp();
    const USERS: usize = 150_000;
    let farm = farm_up("127.0.80.1", &["--nodes", "3", "--dns", "0"]);
    let dir = Workdir::new("onehop-sipp-reg-");
    let nodes = farm.names("node");
    assert_eq!(nodes.len(), 3);
    let proxies: Vec<SocketAddr> = nodes.iter().map(|n| sip_addr(&farm, n)).collect();
    let k = proxies.len();

    // The AORs user1..user150000, a slice per proxy; and all of them for the resolution.
    let users: Vec<String> = (1..=USERS).map(|i| format!("user{i};{DOMAIN}")).collect();
    let slices: Vec<_> = (0..k)
        .map(|p| {
            dir.csv(
                &format!("users{p}.csv"),
                users.iter().skip(p).step_by(k).map(String::as_str),
            )
        })
        .collect();
    let all = dir.csv("users.csv", users.iter().map(String::as_str));
    let per_slice: Vec<usize> = (0..k).map(|p| (USERS - p).div_ceil(k)).collect();
    let contacts: Vec<SocketAddr> = (0..k)
        .map(|p| SocketAddr::new(client_ip(&farm, 100 + p as u8), 5070))
        .collect();

    // Registration.
    let started = Instant::now();
    let runs: Vec<_> = (0..k)
        .map(|p| {
            Sipp::new(&dir, &format!("register{p}"), "register.xml")
                .inf(&slices[p])
                .local(contacts[p].ip(), contacts[p].port())
                .remote(proxies[p])
                .calls(per_slice[p])
                .limit(200)
                .rate(20_000)
                .timeout(Duration::from_secs(600))
                .spawn()
        })
        .collect();
    let outs: Vec<Outcome> = runs.into_iter().map(|r| r.wait()).collect();
    let reg_time = started.elapsed();
    for (p, o) in outs.iter().enumerate() {
        println!(
            "SIP REGISTER via {} ({}): {} x 200 in {:.1} s, {:.0}/s, mean response {:.1} ms, \
             {} retransmissions",
            nodes[p],
            proxies[p],
            o.successful(),
            o.elapsed.as_secs_f64(),
            o.rate(),
            o.response_time_ms(),
            o.stat("Retransmissions(C)")
        );
    }
    for (p, o) in outs.iter().enumerate() {
        o.assert_all(per_slice[p] as u64);
    }
    println!(
        "SIP REGISTER: {USERS} distinct AORs through {k} proxies, all 200, in {:.1} s ({:.0}/s)",
        reg_time.as_secs_f64(),
        USERS as f64 / reg_time.as_secs_f64()
    );

    // Resolution: each registering address answers OPTIONS (for its users, from every proxy);
    // one SIPp per proxy sends an OPTIONS to every AOR.
    let expected_per_uas: Vec<usize> = per_slice.iter().map(|n| n * k).collect();
    let uases: Vec<_> = (0..k)
        .map(|p| {
            Sipp::new(&dir, &format!("options_uas{p}"), "options_uas.xml")
                .local(contacts[p].ip(), contacts[p].port())
                .calls(expected_per_uas[p])
                .timeout(Duration::from_secs(1200))
                .spawn()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let uacs: Vec<_> = (0..k)
        .map(|p| {
            let ip = client_ip(&farm, 110 + p as u8);
            Sipp::new(&dir, &format!("options_uac{p}"), "options_uac.xml")
                .inf(&all)
                .local(ip, 5071)
                .remote(proxies[p])
                .calls(USERS)
                .limit(200)
                .rate(20_000)
                .timeout(Duration::from_secs(1200))
                .spawn()
        })
        .collect();
    let uac_outs: Vec<Outcome> = uacs.into_iter().map(|r| r.wait()).collect();
    let opt_time = started.elapsed();
    let uas_outs: Vec<Outcome> = uases.into_iter().map(|r| r.wait()).collect();
    for (p, o) in uac_outs.iter().enumerate() {
        println!(
            "SIP OPTIONS via {} to all {USERS} AORs: {} x 200 in {:.1} s, {:.0}/s, mean \
             response {:.1} ms, {} retransmissions",
            nodes[p],
            o.successful(),
            o.elapsed.as_secs_f64(),
            o.rate(),
            o.response_time_ms(),
            o.stat("Retransmissions(C)")
        );
    }
    for (p, o) in uas_outs.iter().enumerate() {
        println!(
            "SIP contact {} (users registered via {}): answered {} OPTIONS",
            contacts[p],
            nodes[p],
            o.successful()
        );
    }
    for o in &uac_outs {
        o.assert_all(USERS as u64);
    }
    for (p, o) in uas_outs.iter().enumerate() {
        o.assert_all(expected_per_uas[p] as u64);
    }
    let total: u64 = uac_outs.iter().map(Outcome::successful).sum();
    assert_eq!(total, (USERS * k) as u64);
    println!(
        "SIP OPTIONS: every AOR from every proxy, {total} x 200 from the registered contacts, \
         in {:.1} s ({:.0}/s)",
        opt_time.as_secs_f64(),
        total as f64 / opt_time.as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Calls through two proxies.

/// The `<sip:IP:PORT...;lr>` of a node in Record-Route / Route / the host:port in Via.
fn names_node(value: &str, node: SocketAddr) -> bool {
    value.contains(&node.to_string())
}

/// Every INVITE that reached a callee crossed exactly the caller's and the callee's proxy:
/// 3 Vias (callee's proxy, caller's proxy, caller), at most 2 Record-Route entries (the two
/// proxies), no Route left. Returns the number of calls (retransmissions counted once).
fn check_invites(uas: &Outcome, callee_proxy: SocketAddr, caller_proxy: SocketAddr) -> usize {
    let mut calls = std::collections::BTreeSet::new();
    for m in uas.received().filter(|m| m.method() == Some("INVITE")) {
        calls.insert(m.call_id());
        let via = m.header("Via", Some("v"));
        let rr = m.header("Record-Route", None);
        assert_eq!(
            via.len(),
            3,
            "{}: INVITE Vias {via:#?}\n{}",
            uas.name,
            m.text
        );
        assert!(
            names_node(&via[0], callee_proxy) && names_node(&via[1], caller_proxy),
            "{}: INVITE path {via:#?}",
            uas.name
        );
        assert!(rr.len() <= 2, "{}: Record-Route {rr:#?}", uas.name);
        assert!(
            rr.len() == 2 && names_node(&rr[0], callee_proxy) && names_node(&rr[1], caller_proxy),
            "{}: Record-Route {rr:#?}",
            uas.name
        );
        assert!(
            m.header("Route", None).is_empty(),
            "{}: Route left",
            uas.name
        );
    }
    calls.len()
}

/// Calls from a UAC sending through node1 to UASes registered through node2: answered
/// (INVITE/100/180/200/ACK/BYE/200), cancelled after 180 (200 to the CANCEL, 487, ACK), busy
/// (486 relayed), never answered (408 after the callee's proxy's Timer B, 32 s), unknown
/// (404). Every INVITE crosses exactly the two proxies; ACK and BYE follow the route set.
#[test]
fn calls_through_two_proxies_with_every_outcome() {
    require_sipp();
    let farm = farm_up("127.0.81.1", &["--nodes", "3", "--dns", "0"]);
    let dir = Workdir::new("onehop-sipp-calls-");
    let caller_proxy = sip_addr(&farm, "node1");
    let callee_proxy = sip_addr(&farm, "node2");
    let at = |last: u8, port: u16| SocketAddr::new(client_ip(&farm, last), port);

    // No answer first, in the background: it takes Timer B (32 s).
    let erin = at(140, 5060);
    register_one(&dir, "reg_erin", "erin", erin, callee_proxy, false);
    let silent_uas = Sipp::new(&dir, "uas_silent", "uas_silent.xml")
        .service("erin")
        .local(erin.ip(), erin.port())
        .calls(1)
        .trace_msg()
        .timeout(Duration::from_secs(90))
        .spawn();
    std::thread::sleep(Duration::from_millis(300));
    let timeout_started = Instant::now();
    let timeout_uac = Sipp::new(&dir, "uac_timeout", "uac_timeout.xml")
        .service("erin")
        .set("domain", DOMAIN)
        .local(client_ip(&farm, 141), 5060)
        .remote(caller_proxy)
        .calls(1)
        .trace_msg()
        .timeout(Duration::from_secs(90))
        .spawn();

    // Answered calls.
    const CALLS: usize = 20;
    let bob = at(110, 5060);
    register_one(&dir, "reg_bob", "bob", bob, callee_proxy, false);
    let uas = Sipp::new(&dir, "uas_call", "uas_call.xml")
        .service("bob")
        .local(bob.ip(), bob.port())
        .calls(CALLS)
        .trace_msg()
        .timeout(Duration::from_secs(60))
        .spawn();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let uac = Sipp::new(&dir, "uac_call", "uac_call.xml")
        .service("bob")
        .set("domain", DOMAIN)
        .local(client_ip(&farm, 111), 5060)
        .remote(caller_proxy)
        .calls(CALLS)
        .limit(4)
        .rate(20)
        .trace_msg()
        .timeout(Duration::from_secs(60))
        .run();
    let uas = uas.wait();
    uac.assert_all(CALLS as u64);
    uas.assert_all(CALLS as u64);
    println!(
        "SIP calls: {CALLS} answered calls via node1 to bob@node2 in {:.1} s, mean setup \
         {:.1} ms",
        started.elapsed().as_secs_f64(),
        uac.response_time_ms()
    );
    assert_eq!(check_invites(&uas, callee_proxy, caller_proxy), CALLS);
    let contact = format!("sip:bob@{bob};transport=UDP");
    for method in ["ACK", "BYE"] {
        let got: Vec<_> = uas
            .received()
            .filter(|m| m.method() == Some(method))
            .collect();
        assert_eq!(got.len(), CALLS, "{method}s at the callee");
        for m in got {
            // Sent by the caller to the callee's Contact with Route: node1, node2; each proxy
            // consumed its Route and added its Via.
            let via = m.header("Via", Some("v"));
            assert_eq!(m.request_uri(), Some(contact.as_str()), "{}", m.text);
            assert_eq!(via.len(), 3, "{method} Vias: {via:#?}");
            assert!(names_node(&via[0], callee_proxy) && names_node(&via[1], caller_proxy));
            assert!(m.header("Route", None).is_empty(), "{method}: Route left");
        }
        for m in uac.sent().filter(|m| m.method() == Some(method)) {
            let route = m.header("Route", None);
            assert!(
                route.len() == 2
                    && names_node(&route[0], caller_proxy)
                    && names_node(&route[1], callee_proxy),
                "{method} sent with Route {route:#?}"
            );
        }
    }
    for m in uac.received().filter(|m| m.status() == Some(200)) {
        if m.cseq_method() == "INVITE" {
            assert_eq!(m.header("Record-Route", None).len(), 2, "{}", m.text);
        }
    }
    for code in [100, 180] {
        let n = uac
            .received()
            .filter(|m| m.status() == Some(code))
            .map(|m| m.call_id())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        assert_eq!(n, CALLS, "calls that saw {code}");
    }

    // CANCEL before answer.
    const CANCELS: usize = 10;
    let carol = at(120, 5060);
    register_one(&dir, "reg_carol", "carol", carol, callee_proxy, false);
    let uas = Sipp::new(&dir, "uas_cancel", "uas_cancel.xml")
        .service("carol")
        .local(carol.ip(), carol.port())
        .calls(CANCELS)
        .trace_msg()
        .timeout(Duration::from_secs(60))
        .spawn();
    std::thread::sleep(Duration::from_millis(300));
    let uac = Sipp::new(&dir, "uac_cancel", "uac_cancel.xml")
        .service("carol")
        .set("domain", DOMAIN)
        .local(client_ip(&farm, 121), 5060)
        .remote(caller_proxy)
        .calls(CANCELS)
        .limit(2)
        .rate(20)
        .trace_msg()
        .timeout(Duration::from_secs(60))
        .run();
    let uas = uas.wait();
    uac.assert_all(CANCELS as u64);
    uas.assert_all(CANCELS as u64);
    assert_eq!(check_invites(&uas, callee_proxy, caller_proxy), CANCELS);
    let count = |o: &Outcome, status: u16, cseq: &str| {
        o.received()
            .filter(|m| m.status() == Some(status) && m.cseq_method() == cseq)
            .map(|m| m.call_id())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    assert_eq!(count(&uac, 200, "CANCEL"), CANCELS, "200 to CANCEL");
    assert_eq!(count(&uac, 487, "INVITE"), CANCELS, "487 to INVITE");
    for method in ["CANCEL", "ACK"] {
        let n = uas
            .received()
            .filter(|m| m.method() == Some(method))
            .map(|m| m.call_id())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        assert_eq!(n, CANCELS, "{method}s at the callee");
    }
    println!("SIP calls: {CANCELS} calls cancelled after 180: 200 to CANCEL, 487, ACK");

    // Busy.
    const BUSY: usize = 10;
    let dave = at(130, 5060);
    register_one(&dir, "reg_dave", "dave", dave, callee_proxy, false);
    let uas = Sipp::new(&dir, "uas_busy", "uas_busy.xml")
        .service("dave")
        .local(dave.ip(), dave.port())
        .calls(BUSY)
        .trace_msg()
        .timeout(Duration::from_secs(60))
        .spawn();
    std::thread::sleep(Duration::from_millis(300));
    let uac = Sipp::new(&dir, "uac_busy", "uac_busy.xml")
        .service("dave")
        .set("domain", DOMAIN)
        .local(client_ip(&farm, 131), 5060)
        .remote(caller_proxy)
        .calls(BUSY)
        .limit(2)
        .rate(20)
        .trace_msg()
        .timeout(Duration::from_secs(60))
        .run();
    let uas = uas.wait();
    uac.assert_all(BUSY as u64);
    uas.assert_all(BUSY as u64);
    assert_eq!(check_invites(&uas, callee_proxy, caller_proxy), BUSY);
    assert_eq!(
        count(&uac, 486, "INVITE"),
        BUSY,
        "486 relayed to the caller"
    );
    println!("SIP calls: {BUSY} calls to a busy callee: 486 relayed through both proxies");

    // Unknown user: the caller's proxy answers 404.
    const UNKNOWN: usize = 5;
    let uac = Sipp::new(&dir, "uac_unknown", "uac_unknown.xml")
        .service("nobody")
        .set("domain", DOMAIN)
        .local(client_ip(&farm, 151), 5060)
        .remote(caller_proxy)
        .calls(UNKNOWN)
        .limit(1)
        .rate(20)
        .trace_msg()
        .timeout(Duration::from_secs(60))
        .run();
    uac.assert_all(UNKNOWN as u64);
    assert_eq!(count(&uac, 404, "INVITE"), UNKNOWN);
    println!("SIP calls: {UNKNOWN} calls to an unregistered AOR: 404");

    // No answer: 408 once the callee's proxy gives up (Timer B).
    let uac = timeout_uac.wait();
    let waited = timeout_started.elapsed();
    let uas = silent_uas.wait();
    uac.assert_all(1);
    uas.assert_all(1);
    assert_eq!(check_invites(&uas, callee_proxy, caller_proxy), 1);
    let got = uac
        .received()
        .find(|m| m.status() == Some(408))
        .expect("a 408");
    println!(
        "SIP calls: a callee that never answers: {} after {:.1} s (Timer B is 32 s)",
        got.start_line(),
        waited.as_secs_f64()
    );
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(45),
        "408 after {waited:?}, Timer B is 32 s"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. A phone that knows only the domain and the DNS server.

/// RFC 3263 for a client that supports only `service` (`SIP+D2U` or `SIP+D2T`): the domain's
/// NAPTR rule for it, then SRV (lowest priority, weighted pick), then A. Returns the address
/// and the chain followed.
fn rfc3263(dns: SocketAddr, service: &str, seed: u64) -> Option<(SocketAddr, String)> {
    use hickory_proto::rr::{RData, RecordType};
    use hickory_resolver::config::{
        ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig,
    };
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    use hickory_resolver::Resolver;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut udp = ConnectionConfig::udp();
        udp.port = dns.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = dns.port();
        let ns = NameServerConfig::new(dns.ip(), true, vec![udp, tcp]);
        let mut builder = Resolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns]),
            TokioRuntimeProvider::default(),
        );
        builder.options_mut().use_hosts_file = ResolveHosts::Never;
        builder.options_mut().recursion_desired = false;
        let resolver = builder.build().ok()?;

        let naptr = resolver
            .lookup(format!("{DOMAIN}."), RecordType::NAPTR)
            .await
            .ok()?;
        let mut rules: Vec<_> = naptr
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::NAPTR(n) if n.flags.eq_ignore_ascii_case(b"s") => Some(n.clone()),
                _ => None,
            })
            .filter(|n| String::from_utf8_lossy(&n.services).eq_ignore_ascii_case(service))
            .collect();
        rules.sort_by_key(|n| (n.order, n.preference));
        let rule = rules.first()?.clone();

        let srv = resolver
            .lookup(rule.replacement.clone(), RecordType::SRV)
            .await
            .ok()?;
        let mut targets: Vec<_> = srv
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        let top = targets.iter().map(|s| s.priority).min()?;
        targets.retain(|s| s.priority == top);
        let total: u64 = targets.iter().map(|s| u64::from(s.weight)).sum();
        let mut pick = seed % total.max(1);
        let chosen = targets
            .iter()
            .find(|s| {
                if pick < u64::from(s.weight) {
                    true
                } else {
                    pick -= u64::from(s.weight);
                    false
                }
            })
            .unwrap_or(&targets[0])
            .clone();
        let ips = resolver.lookup_ip(chosen.target.clone()).await.ok()?;
        let ip = ips.iter().next()?;
        let chain = format!(
            "{DOMAIN} NAPTR {service} -> {} SRV -> {}:{} -> A {ip}",
            rule.replacement, chosen.target, chosen.port
        );
        Some((SocketAddr::new(ip, chosen.port), chain))
    })
}

/// Two phones configured with nothing but the domain and the DNS server find a proxy the RFC
/// 3263 way (NAPTR, SRV, A) against the farm's DNS member, register there and make calls: the
/// callee supports UDP only, the caller TCP only.
#[test]
fn phones_that_know_only_the_domain_register_and_call() {
    require_sipp();
    let farm = farm_up(
        "127.0.82.1",
        &["--nodes", "3", "--dns", "1", "--dns-port", "5353"],
    );
    let dir = Workdir::new("onehop-sipp-dns-");
    let dns = farm
        .file
        .member("dns1")
        .and_then(|m| m.addr("dns"))
        .expect("dns1");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    // The DNS member publishes the proxies once it holds a network status.
    let resolve = |service: &str, seed: u64| {
        wait_for(Duration::from_secs(10), || rfc3263(dns, service, seed))
            .unwrap_or_else(|| panic!("{service}: no RFC 3263 answer from {dns}"))
    };
    let proxy_name = |addr: SocketAddr| {
        farm.file
            .members
            .iter()
            .find(|m| m.addr("sip") == Some(addr))
            .map(|m| m.name.clone())
            .unwrap_or_else(|| panic!("{addr} is no proxy of the farm"))
    };

    // The callee: UDP.
    let (callee_proxy, chain) = resolve("SIP+D2U", seed);
    println!(
        "SIP phone bob (UDP): {chain} = {}",
        proxy_name(callee_proxy)
    );
    let bob = SocketAddr::new(client_ip(&farm, 110), 5060);
    register_one(&dir, "reg_bob", "bob", bob, callee_proxy, false);

    // The caller: TCP; registers too, then calls.
    let (caller_proxy, chain) = resolve("SIP+D2T", seed / 7 + 1);
    println!(
        "SIP phone alice (TCP): {chain} = {}",
        proxy_name(caller_proxy)
    );
    let alice = SocketAddr::new(client_ip(&farm, 111), 5060);
    register_one(&dir, "reg_alice", "alice", alice, caller_proxy, true);

    const CALLS: usize = 5;
    let uas = Sipp::new(&dir, "uas_call", "uas_call.xml")
        .service("bob")
        .local(bob.ip(), bob.port())
        .calls(CALLS)
        .trace_msg()
        .timeout(Duration::from_secs(60))
        .spawn();
    std::thread::sleep(Duration::from_millis(300));
    let uac = Sipp::new(&dir, "uac_call", "uac_call.xml")
        .service("bob")
        .set("domain", DOMAIN)
        .local(client_ip(&farm, 112), 5060)
        .remote(caller_proxy)
        .tcp()
        .calls(CALLS)
        .limit(1)
        .rate(10)
        .trace_msg()
        .timeout(Duration::from_secs(60))
        .run();
    let uas = uas.wait();
    uac.assert_all(CALLS as u64);
    uas.assert_all(CALLS as u64);
    // At most the two proxies found (one, when both phones found the same).
    let hops = if caller_proxy == callee_proxy { 1 } else { 2 };
    for m in uas.received().filter(|m| m.method() == Some("INVITE")) {
        assert_eq!(m.header("Via", Some("v")).len(), hops + 1, "{}", m.text);
        assert!(m.header("Record-Route", None).len() <= hops, "{}", m.text);
    }
    println!(
        "SIP phones: alice (TCP via {}) called bob (UDP via {}) {CALLS} times, mean setup \
         {:.1} ms",
        proxy_name(caller_proxy),
        proxy_name(callee_proxy),
        uac.response_time_ms()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Bad input and floods.

/// A request with the usual headers from `from`, less those named in `omit`, with `first` as
/// its start line and `body` as its body.
fn request(first: &str, from: SocketAddr, id: &str, omit: &[&str], body: &str) -> String {
    let proto = "UDP";
    let headers = [
        (
            "Via",
            format!("SIP/2.0/{proto} {from};branch=z9hG4bK-{id};rport"),
        ),
        ("Max-Forwards", "70".into()),
        ("From", format!("<sip:tester@{DOMAIN}>;tag={id}")),
        ("To", format!("<sip:tester@{DOMAIN}>")),
        ("Call-ID", format!("{id}@onehop-it")),
        (
            "CSeq",
            format!("1 {}", first.split(' ').next().unwrap_or("OPTIONS")),
        ),
        ("Contact", format!("<sip:tester@{from}>")),
        ("Content-Length", body.len().to_string()),
    ];
    let mut m = format!("{first}\r\n");
    for (name, value) in headers {
        if !omit.contains(&name) {
            m.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    m.push_str("\r\n");
    m.push_str(body);
    m
}

/// Sends `msg` over UDP and returns the first final response's start line (`None` if nothing
/// came within `wait`).
fn udp_ask(sock: &UdpSocket, to: SocketAddr, msg: &[u8], wait: Duration) -> Option<String> {
    sock.send_to(msg, to).expect("send");
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 65_535];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            break;
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let first = text.lines().next().unwrap_or("").to_string();
        if !first.starts_with("SIP/2.0 1") {
            return Some(first);
        }
    }
    None
}

/// A REGISTER of `user` with its contact at `from`.
fn register_msg(user: &str, from: SocketAddr, id: &str) -> String {
    let first = format!("REGISTER sip:{DOMAIN} SIP/2.0");
    request(&first, from, id, &[], "")
        .replace("sip:tester@", &format!("sip:{user}@"))
        .replace("\r\nContent-Length", "\r\nExpires: 600\r\nContent-Length")
}

/// Malformed SIP gets 400, a request missing a mandatory header 400 (one missing Via gets
/// nothing: a response has to travel along the request's Via), a message over 64 KiB on TCP
/// 513 (and the connection goes on), garbage nothing; a flood of REGISTERs at a node with a
/// small `sip_pending` is answered 503 while its memory stays bounded; every node lives on.
#[test]
fn bad_sip_is_answered_or_dropped_and_floods_get_503() {
    let mut farm = farm_up("127.0.83.1", &["--nodes", "3", "--dns", "0"]);
    let node = sip_addr(&farm, "node1");
    let me = SocketAddr::new(client_ip(&farm, 100), 0);
    let sock = UdpSocket::bind(me).expect("bind");
    let me = sock.local_addr().unwrap();
    let wait = Duration::from_secs(2);
    let options = |id: &str| request(&format!("OPTIONS sip:{DOMAIN} SIP/2.0"), me, id, &[], "");
    assert_eq!(
        udp_ask(&sock, node, options("ok0").as_bytes(), wait).as_deref(),
        Some("SIP/2.0 200 OK"),
        "OPTIONS to the node itself"
    );

    // Malformed: 400 (505 for another SIP version).
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "CSeq not a number",
            options("m1").replace("CSeq: 1 OPTIONS", "CSeq: one OPTIONS"),
            "400",
        ),
        (
            "CSeq method not the request's",
            options("m2").replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE"),
            "400",
        ),
        (
            "To without its closing >",
            options("m3").replace(&format!("To: <sip:tester@{DOMAIN}>"), "To: <sip:x@y"),
            "400",
        ),
        (
            "Max-Forwards not a number",
            options("m4").replace("Max-Forwards: 70", "Max-Forwards: many"),
            "400",
        ),
        (
            "body shorter than Content-Length",
            options("m5").replace("Content-Length: 0", "Content-Length: 500"),
            "400",
        ),
        (
            "Call-ID with a space",
            options("m6").replace("Call-ID: m6@onehop-it", "Call-ID: m6 onehop"),
            "400",
        ),
        (
            "Request-URI without a host",
            options("m7").replace(&format!("OPTIONS sip:{DOMAIN} "), "OPTIONS sip:@@ "),
            "400",
        ),
        (
            "Request-URI without a scheme",
            options("m8").replace(&format!("OPTIONS sip:{DOMAIN} "), "OPTIONS nonsense "),
            "400",
        ),
        (
            "SIP/3.0",
            options("m9").replace("SIP/2.0\r\n", "SIP/3.0\r\n"),
            "505",
        ),
    ];
    for (what, msg, want) in &cases {
        let got = udp_ask(&sock, node, msg.as_bytes(), wait);
        println!("SIP bad input: {what}: {got:?}");
        assert!(
            got.as_deref()
                .is_some_and(|l| l.starts_with(&format!("SIP/2.0 {want} "))),
            "{what}: expected {want}, got {got:?}"
        );
    }

    // Missing mandatory headers.
    for header in ["To", "From", "Call-ID", "CSeq", "Max-Forwards", "Via"] {
        let id = format!("h{}", header.len());
        let msg = request(
            &format!("OPTIONS sip:{DOMAIN} SIP/2.0"),
            me,
            &id,
            &[header],
            "",
        );
        let got = udp_ask(&sock, node, msg.as_bytes(), wait);
        println!("SIP bad input: no {header}: {got:?}");
        if header == "Via" {
            assert_eq!(got, None, "a request without Via cannot be answered");
        } else {
            assert_eq!(
                got.as_deref(),
                Some(format!("SIP/2.0 400 Missing {header} header").as_str())
            );
        }
    }

    // Over 64 KiB, on TCP: 513, and the connection serves the next request.
    let mut tcp = TcpStream::connect_timeout(&node, Duration::from_secs(2)).expect("tcp");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let tme = tcp.local_addr().unwrap();
    let big_body = "x".repeat(70_000);
    let big = request(
        &format!("OPTIONS sip:{DOMAIN} SIP/2.0"),
        tme,
        "big",
        &[],
        &big_body,
    )
    .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    let next = request(
        &format!("OPTIONS sip:{DOMAIN} SIP/2.0"),
        tme,
        "after",
        &[],
        "",
    )
    .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    tcp.write_all(big.as_bytes()).expect("write big");
    tcp.write_all(next.as_bytes()).expect("write next");
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && got.matches("SIP/2.0 ").count() < 2 {
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    let starts: Vec<&str> = got.lines().filter(|l| l.starts_with("SIP/2.0 ")).collect();
    println!(
        "SIP bad input: {} bytes on TCP: {:?}, then {:?} on the same connection",
        big.len(),
        starts.first(),
        starts.get(1)
    );
    assert_eq!(
        starts,
        ["SIP/2.0 513 Message Too Large", "SIP/2.0 200 OK"],
        "{got}"
    );
    assert!(got.contains("Call-ID: big@onehop-it"));

    // Garbage: no answer, on UDP and on TCP.
    let garbage: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02garbage".to_vec(),
        b"hello world\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        (0..=255u8).cycle().take(1400).collect(),
        b"SIP/2.0 200 OK\r\n\r\n".to_vec(),
        b"INVITE\r\n\r\n".to_vec(),
        b"OPTIONS sip:example.test\r\n\r\n".to_vec(),
    ];
    for g in &garbage {
        let got = udp_ask(&sock, node, g, Duration::from_millis(500));
        assert_eq!(
            got,
            None,
            "garbage {:?} answered",
            String::from_utf8_lossy(g)
        );
    }
    let mut t = TcpStream::connect_timeout(&node, Duration::from_secs(2)).expect("tcp");
    t.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let _ = t.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff garbage");
    let mut b = [0u8; 100];
    let answered = matches!(t.read(&mut b), Ok(n) if n > 0);
    assert!(!answered, "TCP garbage answered: {:?}", &b[..]);
    println!(
        "SIP bad input: {} kinds of garbage: no answer",
        garbage.len() + 1
    );
    assert_eq!(
        udp_ask(
            &sock,
            node,
            register_msg("after-garbage", me, "g1").as_bytes(),
            wait
        )
        .as_deref(),
        Some("SIP/2.0 200 OK"),
        "REGISTER after the garbage"
    );

    // Flood: node1 restarted with sip_pending = 8, then 50,000 REGISTERs as fast as a socket
    // can send them.
    farm.restart_with_config("node1", &[("sip_pending", toml::Value::Integer(8))]);
    let pid = farm.pid("node1");
    let back = wait_for(Duration::from_secs(20), || {
        let s = UdpSocket::bind(SocketAddr::new(me.ip(), 0)).ok()?;
        let from = s.local_addr().ok()?;
        let got = udp_ask(
            &s,
            node,
            register_msg("probe", from, "probe").as_bytes(),
            Duration::from_millis(500),
        );
        (got.as_deref() == Some("SIP/2.0 200 OK")).then_some(())
    });
    assert!(
        back.is_some(),
        "node1 did not serve REGISTER after its restart"
    );
    std::thread::sleep(Duration::from_secs(1));
    let rss_before = vm_rss_kib(pid);

    const FLOOD: usize = 50_000;
    let flood = UdpSocket::bind(SocketAddr::new(client_ip(&farm, 101), 0)).expect("bind");
    let from = flood.local_addr().unwrap();
    let rx = flood.try_clone().unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(vm_rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let receiver = std::thread::spawn(move || {
        let mut counts = std::collections::BTreeMap::<u16, u64>::new();
        let mut buf = vec![0u8; 65_535];
        let mut last = Instant::now();
        loop {
            match rx.recv_from(&mut buf) {
                Ok((n, _)) => {
                    last = Instant::now();
                    let code = std::str::from_utf8(&buf[..n.min(12)])
                        .ok()
                        .and_then(|s| s.strip_prefix("SIP/2.0 "))
                        .and_then(|s| s.get(..3))
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    *counts.entry(code).or_default() += 1;
                }
                Err(_) if last.elapsed() > Duration::from_secs(3) => return counts,
                Err(_) => {}
            }
        }
    });
    let started = Instant::now();
    let mut sent = 0;
    for i in 0..FLOOD {
        let msg = register_msg(&format!("flood{i}"), from, &format!("f{i}"));
        if flood.send_to(msg.as_bytes(), node).is_ok() {
            sent += 1;
        }
    }
    let send_time = started.elapsed();
    let counts = receiver.join().unwrap();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let rss_after = vm_rss_kib(pid);
    let peak = peak.load(Ordering::Relaxed);
    let answered: u64 = counts.values().sum();
    println!(
        "SIP flood: {sent} REGISTERs sent in {:.2} s ({:.0}/s) to node1 (sip_pending = 8): \
         answers by code {counts:?} ({answered} answered, the rest dropped at the full inbound \
         queue)",
        send_time.as_secs_f64(),
        sent as f64 / send_time.as_secs_f64()
    );
    println!(
        "SIP flood: node1 VmRSS {} MiB before, peak {} MiB, {} MiB after",
        rss_before / 1024,
        peak / 1024,
        rss_after / 1024
    );
    let c503 = counts.get(&503).copied().unwrap_or(0);
    assert!(c503 > 0, "no 503 in the flood: {counts:?}");
    assert!(
        counts.keys().all(|c| [200, 503].contains(c)),
        "unexpected answers {counts:?}"
    );
    assert!(
        peak < rss_before + 128 * 1024,
        "node1 grew from {rss_before} KiB to {peak} KiB in the flood"
    );

    // Everyone lives on, and node1 serves again.
    let back = wait_for(Duration::from_secs(10), || {
        let got = udp_ask(
            &sock,
            node,
            register_msg(
                "after-flood",
                me,
                &format!("a{}", started.elapsed().as_nanos()),
            )
            .as_bytes(),
            Duration::from_millis(500),
        );
        (got.as_deref() == Some("SIP/2.0 200 OK")).then_some(())
    });
    assert!(
        back.is_some(),
        "node1 does not serve REGISTER after the flood"
    );
    for n in farm.names("node") {
        assert!(alive(farm.pid(&n)), "{n} died");
    }
}
