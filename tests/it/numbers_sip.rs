//! Calling by number (issue #12, the proxy's side): numbers allocated and routed through the
//! provisioning API, then called with SIPp, a softphone (baresip) and a small UDP client, on
//! farms that authenticate (digest), on 127.0.52.0/24 and 127.0.53.0/24.
//!
//! - A number routed to an account reaches the phone registered for it, called as
//!   `sip:+NUMBER@example.test`, `tel:+NUMBER` or in the domain's local form once it has a
//!   dial plan; the account registers under its number.
//! - A number routed to another network's URI is proxied there (a SIPp UAS on loopback stands
//!   in for it); after a route change the next calls follow within 1 s.
//! - A number that is not routed (or not allocated) gets 404 `Number Not Routed`.
//! - A softphone calls another by number; an account uses its number as caller ID, and
//!   another account may not; a registrar that lost its cache reloads numbers from the
//!   managers.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use onehop_admin::Client;
use onehop_sip::digest::{Challenge, Credentials};
use onehop_sip::{parse, Message, Response};
use serde_json::{json, Value};

use crate::auth::{baresip_dir, digest_farm, have_baresip, metric, Baresip, Phone};
use crate::harness::{client_ip, sip_addr, wait_for, within_budget};
use crate::provisioning::call;
use crate::sipp::{require_sipp, Sipp, Workdir};

const ALICE_PW: &str = "alice-number-pw";
const BOB_PW: &str = "bob-number-pw";
const CAROL_PW: &str = "carol-number-pw";

/// One API request that must answer `want`; its body.
fn api(c: &Client, method: Method, path: &str, body: Option<Value>, want: u16) -> Value {
    let (s, v) = call(c, method.clone(), path, body);
    assert_eq!(s, want, "{method} {path}: {v}");
    v
}

/// The carrier ACME with the block +15550100 to +15550199 (a farm-wide administrator's work).
fn registry(c: &Client) {
    api(
        c,
        Method::POST,
        "/v1/carriers",
        Some(json!({"ocn": "ACME", "name": "Acme Telecom"})),
        201,
    );
    api(
        c,
        Method::POST,
        "/v1/blocks",
        Some(json!({"first": "+15550100", "last": "+15550199", "carrier": "ACME"})),
        201,
    );
}

/// Allocates `number`, routed to `route` (`{"account": ...}`, `{"uri": ...}`) or not routed.
fn allocate(c: &Client, number: &str, route: Option<Value>) {
    let mut body = json!({"number": number});
    if let Some(r) = route {
        body["route"] = r;
    }
    let v = api(c, Method::POST, "/v1/numbers", Some(body), 201);
    assert_eq!(v["number"], number, "{v}");
}

/// Routes `number` to `route` (`null` unroutes it).
fn set_route(c: &Client, number: &str, route: Value) {
    api(
        c,
        Method::PATCH,
        &format!("/v1/numbers/{number}"),
        Some(json!({"route": route})),
        200,
    );
}

/// SIPp's credentials column for an injection file.
fn creds(user: &str, password: &str) -> String {
    format!("[authentication username={user} password={password}]")
}

/// A carrier's SIP server standing in on loopback: answers every request 200 and counts them.
struct StandIn {
    got: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StandIn {
    fn start(addr: SocketAddr) -> StandIn {
        let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let got = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_535];
            while !s.load(Ordering::Relaxed) {
                let Ok((len, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Ok(Message::Request(req)) = parse(&buf[..len]) {
                    if req.method != onehop_sip::Method::Ack {
                        g.fetch_add(1, Ordering::SeqCst);
                        let resp = onehop_sip::reply(&req, 200, None, Some("carrier"));
                        let _ = sock.send_to(&resp.to_bytes(), from);
                    }
                }
            }
        });
        StandIn {
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.got.load(Ordering::SeqCst)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A request from outside the farm's domains (no challenge: a number is reached like a user
/// of ours); the final response.
fn from_outside(probe: &mut Phone, proxy: SocketAddr, method: &str, uri: &str) -> Response {
    probe.request(
        proxy,
        method,
        uri,
        "<sip:probe@elsewhere.test>",
        &format!("<{uri}>"),
        &[],
    )
}

/// Numbers called with SIPp on a farm that authenticates: alice's UAS registers under her
/// number and is reached by the number in both forms (and by her name), and in example.test's
/// local form once the domain has a dial plan; a number routed to a
/// carrier's URI reaches a SIPp UAS standing in for the carrier; a route change is followed
/// by the next calls within 1 s; unrouted and unallocated numbers get 404.
#[test]
fn sipp_calls_by_number_reach_the_account_and_a_carrier_and_follow_a_route_change() {
    require_sipp();
    let (farm, c) = digest_farm(
        "127.0.52.1",
        &["--dns", "0"],
        &[("alice", ALICE_PW, true), ("bob", BOB_PW, true)],
    );
    let (n1, n2) = (sip_addr(&farm, "node1"), sip_addr(&farm, "node2"));
    let carrier_a = SocketAddr::new(client_ip(&farm, 210), 5070);
    let carrier_b = SocketAddr::new(client_ip(&farm, 211), 5070);
    registry(&c);
    allocate(
        &c,
        "+15550100",
        Some(json!({"account": "alice@example.test"})),
    );
    allocate(
        &c,
        "+15550101",
        Some(json!({"uri": format!("sip:+15550101@{carrier_a}")})),
    );
    // Its subscriber's porting PIN, and the carrier it will be ported to.
    api(
        &c,
        Method::PATCH,
        "/v1/numbers/+15550101",
        Some(json!({"pin": "2468"})),
        200,
    );
    api(
        &c,
        Method::POST,
        "/v1/carriers",
        Some(json!({"ocn": "BETA", "name": "Beta Networks"})),
        201,
    );
    allocate(&c, "+15550102", None);
    let dir = Workdir::new("onehop-sipp-numbers-");

    // alice's phone registers under her number, authenticated as alice.
    let alice = SocketAddr::new(client_ip(&farm, 200), 5060);
    let reg = dir.csv(
        "alice.csv",
        [format!("+15550100;example.test;{}", creds("alice", ALICE_PW)).as_str()].into_iter(),
    );
    let registered = Sipp::new(&dir, "reg_alice_by_number", "register_auth.xml")
        .inf(&reg)
        .local(alice.ip(), alice.port())
        .remote(n2)
        .calls(1)
        .trace_msg()
        .timeout(Duration::from_secs(20))
        .run();
    registered.assert_all(1);
    let ok = registered
        .received()
        .find(|m| m.status() == Some(200))
        .expect("a 200");
    assert!(
        ok.header("Contact", Some("m"))
            .iter()
            .any(|c| c.contains(&alice.to_string())),
        "the 200 lists the account's binding: {}",
        ok.text
    );

    // bob calls her by number, in both forms, and by name, through node1.
    let uas = Sipp::new(&dir, "alice_uas", "uas_call.xml")
        .service("alice")
        .local(alice.ip(), alice.port())
        .calls(3)
        .trace_msg()
        .timeout(Duration::from_secs(60))
        .spawn();
    let targets = [
        "sip:+15550100@example.test",
        "tel:+15550100",
        "sip:alice@example.test",
    ];
    let rows: Vec<String> = targets
        .iter()
        .map(|t| format!("bob;example.test;{};{t}", creds("bob", BOB_PW)))
        .collect();
    let calls = dir.csv("bob.csv", rows.iter().map(String::as_str));
    let started = Instant::now();
    let uac = Sipp::new(&dir, "bob_calls_alice", "uac_auth_call_uri.xml")
        .inf(&calls)
        .local(client_ip(&farm, 201), 5060)
        .remote(n1)
        .calls(3)
        .limit(1)
        .timeout(Duration::from_secs(60))
        .run();
    let uas = uas.wait();
    uac.assert_all(3);
    uas.assert_all(3);
    let mut to: Vec<String> = uas
        .received()
        .filter(|m| m.method() == Some("INVITE"))
        .map(|m| m.header("To", Some("t")).join(","))
        .collect();
    to.sort();
    assert_eq!(
        to,
        [
            "<sip:+15550100@example.test>",
            "<sip:alice@example.test>",
            "<tel:+15550100>"
        ],
        "each call reached alice's phone as dialled"
    );
    println!(
        "NUMBERS calls to alice by number and name: 3 in {:.0} ms (mean setup {:.1} ms)",
        started.elapsed().as_secs_f64() * 1e3,
        uac.response_time_ms()
    );

    // example.test's local form (NANP: 5550100 is +15550100), once the nodes hold the plan:
    // a number of seven digits that is not routed gets Number Not Routed instead of Not Found.
    api(
        &c,
        Method::PUT,
        "/v1/domains/example.test/dial-plan",
        Some(json!({"country_code": "1", "national_prefix": "", "international_prefix": "011"})),
        200,
    );
    let mut probe = Phone::new(client_ip(&farm, 220), "probe");
    wait_for(Duration::from_secs(10), || {
        let r = from_outside(&mut probe, n1, "INVITE", "sip:5550102@example.test");
        (r.reason == "Number Not Routed").then_some(())
    })
    .expect("node1 reads example.test's local form");
    let uas = Sipp::new(&dir, "alice_uas_local", "uas_call.xml")
        .service("alice")
        .local(alice.ip(), alice.port())
        .calls(1)
        .trace_msg()
        .timeout(Duration::from_secs(60))
        .spawn();
    let row = format!(
        "bob;example.test;{};sip:555-0100@example.test",
        creds("bob", BOB_PW)
    );
    let inf = dir.csv("bob_local.csv", [row.as_str()].into_iter());
    Sipp::new(&dir, "bob_calls_alice_local", "uac_auth_call_uri.xml")
        .inf(&inf)
        .local(client_ip(&farm, 201), 5060)
        .remote(n1)
        .calls(1)
        .timeout(Duration::from_secs(40))
        .run()
        .assert_all(1);
    let uas = uas.wait();
    uas.assert_all(1);
    assert!(uas.received().any(|m| m.method() == Some("INVITE")
        && m.header("To", Some("t")) == ["<sip:555-0100@example.test>"]));

    // A number routed to another network: proxied to its URI.
    let carrier = Sipp::new(&dir, "carrier_a", "uas_call.xml")
        .service("carrier")
        .local(carrier_a.ip(), carrier_a.port())
        .calls(1)
        .trace_msg()
        .timeout(Duration::from_secs(60))
        .spawn();
    let to_carrier = |name: &str| {
        let row = format!("bob;example.test;{};tel:+15550101", creds("bob", BOB_PW));
        let inf = dir.csv(&format!("{name}.csv"), [row.as_str()].into_iter());
        Sipp::new(&dir, name, "uac_auth_call_uri.xml")
            .inf(&inf)
            .local(client_ip(&farm, 201), 5060)
            .remote(n1)
            .calls(1)
            .timeout(Duration::from_secs(40))
            .run()
    };
    to_carrier("bob_calls_carrier_a").assert_all(1);
    let carrier = carrier.wait();
    carrier.assert_all(1);
    let invite = carrier
        .received()
        .find(|m| m.method() == Some("INVITE"))
        .expect("an INVITE");
    assert_eq!(
        invite.request_uri(),
        Some(format!("sip:+15550101@{carrier_a}").as_str()),
        "the Request-URI is the number's route"
    );

    // Not routed, not allocated, not a number we hold: 404 Number Not Routed, in every form.
    for uri in [
        "tel:+15550102",
        "tel:+15550199",
        "tel:+4930123456",
        "sip:+15550103@example.test",
        "sip:5550104@example.test",
    ] {
        let r = from_outside(&mut probe, n1, "INVITE", uri);
        assert_eq!(
            (r.status, r.reason.as_str()),
            (404, "Number Not Routed"),
            "{uri}"
        );
    }

    // A port: the number moves from ACME (routed to carrier A) to BETA (routed to B) with the
    // subscriber's PIN; a wrong PIN changes nothing. Probes (OPTIONS from outside, one at a time) until
    // one reaches B; every later one must too.
    let a = StandIn::start(carrier_a);
    let b = StandIn::start(carrier_b);
    let r = from_outside(&mut probe, n1, "OPTIONS", "tel:+15550101");
    assert_eq!(r.status, 200);
    assert_eq!(
        (a.count(), b.count()),
        (1, 0),
        "carrier A before the change"
    );
    let port = |pin: &str, want: u16| {
        api(
            &c,
            Method::POST,
            "/v1/numbers/+15550101/port",
            Some(json!({"carrier": "BETA", "pin": pin,
                "route": {"uri": format!("sip:+15550101@{carrier_b}")}})),
            want,
        )
    };
    port("1357", 403);
    let r = from_outside(&mut probe, n1, "OPTIONS", "tel:+15550101");
    assert_eq!(r.status, 200);
    assert_eq!((a.count(), b.count()), (2, 0), "a wrong PIN ports nothing");
    let changed = Instant::now();
    let v = port("2468", 200);
    assert_eq!(v["carrier"], "BETA", "{v}");
    let committed = changed.elapsed();
    let followed = wait_for(Duration::from_secs(10), || {
        let before = b.count();
        let r = from_outside(&mut probe, n1, "OPTIONS", "tel:+15550101");
        assert_eq!(r.status, 200, "{} {}", r.status, r.reason);
        (b.count() > before).then(|| changed.elapsed())
    });
    println!(
        "NUMBERS port to another carrier (route changed with it): the API answered in {:.1} ms, calls followed after {:.1} ms",
        committed.as_secs_f64() * 1e3,
        followed.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    );
    within_budget(
        "a number's port (its route changed), to the next calls following it",
        followed,
        Duration::from_secs(1),
        1.5,
    );
    let a_then = a.count();
    for node in farm.names("node") {
        let r = from_outside(
            &mut probe,
            sip_addr(&farm, &node),
            "OPTIONS",
            "tel:+15550101",
        );
        assert_eq!(r.status, 200);
    }
    assert_eq!(a.count(), a_then, "no call goes to A after the change");
    drop(a);
    drop(b);
    // A whole call follows it too.
    let carrier = Sipp::new(&dir, "carrier_b", "uas_call.xml")
        .service("carrier")
        .local(carrier_b.ip(), carrier_b.port())
        .calls(1)
        .timeout(Duration::from_secs(60))
        .spawn();
    to_carrier("bob_calls_carrier_b").assert_all(1);
    carrier.wait().assert_all(1);
    // Unrouted: the next calls get 404 (until then B, standing in again, answers them).
    let b = StandIn::start(carrier_b);
    let changed = Instant::now();
    set_route(&c, "+15550101", Value::Null);
    let unrouted = wait_for(Duration::from_secs(10), || {
        let r = from_outside(&mut probe, n1, "OPTIONS", "tel:+15550101");
        (r.status == 404).then(|| changed.elapsed())
    });
    drop(b);
    within_budget(
        "a number's unrouting, to the next calls getting 404",
        unrouted,
        Duration::from_secs(1),
        1.5,
    );
}

/// The credentials answering the (single, MD5) challenge of `r`.
fn md5_answer(
    r: &Response,
    header: &str,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
) -> String {
    let value = r
        .headers
        .get(header)
        .unwrap_or_else(|| panic!("no {header} in {} {}", r.status, r.reason));
    let ch = Challenge::parse(value).expect("a challenge we can read");
    Credentials::answer(&ch, user, password, method, uri, "c0ffee", 1).to_string()
}

/// A raw phone's INVITE to `uri` with `from` as its From, answering the 407 as `user`; the
/// final response.
fn invite_as(
    phone: &mut Phone,
    proxy: SocketAddr,
    uri: &str,
    from: &str,
    user: &str,
    password: &str,
) -> Response {
    let r = phone.request(proxy, "INVITE", uri, from, &format!("<{uri}>"), &[]);
    assert_eq!(r.status, 407, "{} {}", r.status, r.reason);
    let auth = md5_answer(&r, "Proxy-Authenticate", user, password, "INVITE", uri);
    phone.request(
        proxy,
        "INVITE",
        uri,
        from,
        &format!("<{uri}>"),
        &[format!("Proxy-Authorization: {auth}")],
    )
}

/// Two Debian softphones (baresip) that know only the domain and the farm's DNS: alice calls
/// bob by his number. Then an account uses its number as caller ID (and another account may
/// not), and after every node lost its store the numbers are reloaded from the managers.
#[test]
fn a_softphone_calls_another_by_number_and_numbers_serve_as_caller_id() {
    if !have_baresip() {
        panic!("baresip is not installed: run tests/run (it installs baresip-core)");
    }
    // baresip 1.0 answers only a lone MD5 challenge.
    let (mut farm, c) = digest_farm(
        "127.0.53.1",
        &[
            "--dns",
            "1",
            "--dns-port",
            "5353",
            "--node-set",
            "sip_auth_algorithms=[\"MD5\"]",
        ],
        &[
            ("alice", ALICE_PW, true),
            ("bob", BOB_PW, true),
            ("carol", CAROL_PW, true),
        ],
    );
    let carrier = SocketAddr::new(client_ip(&farm, 210), 5070);
    registry(&c);
    allocate(
        &c,
        "+15550100",
        Some(json!({"account": "alice@example.test"})),
    );
    allocate(
        &c,
        "+15550101",
        Some(json!({"account": "bob@example.test"})),
    );
    allocate(
        &c,
        "+15550102",
        Some(json!({"uri": format!("sip:+15550102@{carrier}")})),
    );

    // alice's softphone dials bob's number; bob's answers.
    let dns_member = farm.names("dns")[0].clone();
    let dns = SocketAddr::new(farm.ip(&dns_member), 5353);
    let root = tempfile::tempdir().unwrap();
    let bob_dir = baresip_dir(
        root.path(),
        "bob",
        BOB_PW,
        client_ip(&farm, 120),
        dns,
        "auto",
    );
    let alice_dir = baresip_dir(
        root.path(),
        "alice",
        ALICE_PW,
        client_ip(&farm, 121),
        dns,
        "manual",
    );
    {
        let bob = Baresip::start(&bob_dir, 40, None);
        bob.wait_for("200 OK () [1 binding]", Duration::from_secs(20));
        let alice = Baresip::start(&alice_dir, 12, Some("/dial sip:+15550101@example.test"));
        alice.wait_for(
            "Call established: sip:+15550101@example.test",
            Duration::from_secs(20),
        );
        bob.wait_for(
            "Call established: sip:alice@example.test",
            Duration::from_secs(10),
        );
        bob.wait_for(
            "Call with sip:alice@example.test terminated",
            Duration::from_secs(30),
        );
    }

    // Caller ID: alice calls carol with her number as the From.
    let n1 = sip_addr(&farm, "node1");
    let mut carol = Phone::new(client_ip(&farm, 130), "carol");
    let aor = "<sip:carol@example.test>";
    let r = carol.request(n1, "REGISTER", "sip:example.test", aor, aor, &[]);
    assert_eq!(r.status, 401);
    let auth = md5_answer(
        &r,
        "WWW-Authenticate",
        "carol",
        CAROL_PW,
        "REGISTER",
        "sip:example.test",
    );
    let r = carol.request(
        n1,
        "REGISTER",
        "sip:example.test",
        aor,
        aor,
        &[format!("Authorization: {auth}")],
    );
    assert_eq!(r.status, 200, "{} {}", r.status, r.reason);
    let got = Arc::new(Mutex::new(String::new()));
    let answering = {
        let got = got.clone();
        std::thread::spawn(move || {
            let invite = carol.answer_request(486);
            *got.lock().unwrap() = invite;
            carol
        })
    };
    let mut alice = Phone::new(client_ip(&farm, 131), "alice");
    let number = "<sip:+15550100@example.test>";
    let r = invite_as(
        &mut alice,
        n1,
        "sip:carol@example.test",
        number,
        "alice",
        ALICE_PW,
    );
    assert_eq!(
        r.status, 486,
        "carol's phone answered: {} {}",
        r.status, r.reason
    );
    let carol = answering.join().unwrap();
    let invite = got.lock().unwrap().clone();
    assert!(
        invite
            .lines()
            .any(|l| l.starts_with("From:") && l.contains("sip:+15550100@example.test")),
        "the caller ID reached carol: {invite}"
    );
    // bob may not use alice's number.
    let mut bob = Phone::new(client_ip(&farm, 132), "bob");
    let r = invite_as(
        &mut bob,
        n1,
        "sip:carol@example.test",
        number,
        "bob",
        BOB_PW,
    );
    assert_eq!(
        (r.status, r.reason.as_str()),
        (403, "Authentication ID Does Not Match")
    );
    drop(carol);

    // Every node loses its store: the numbers come back from the managers on the first call.
    let nodes = farm.names("node");
    for n in &nodes {
        farm.signal(n, "-KILL");
    }
    for n in &nodes {
        farm.restart(n);
    }
    farm.wait_rings(&["registrar", "sip_proxy"]);
    let stand_in = StandIn::start(carrier);
    let mut probe = Phone::new(client_ip(&farm, 220), "probe");
    let r = wait_for(Duration::from_secs(20), || {
        let r = from_outside(&mut probe, n1, "OPTIONS", "tel:+15550102");
        (r.status != 503).then_some(r)
    })
    .expect("the nodes answer again");
    assert_eq!(r.status, 200, "{} {}", r.status, r.reason);
    assert_eq!(stand_in.count(), 1, "the carrier got the request");
    let reloaded: i64 = nodes
        .iter()
        .map(|n| metric(&farm, n, "onehop_provision_number_reloads_routed_total"))
        .sum();
    assert!(reloaded >= 1, "the routing came from the managers");
    // alice's number is routed to her account, which has no binding now: 480.
    let r = from_outside(&mut probe, n1, "INVITE", "tel:+15550100");
    assert_eq!(
        (r.status, r.reason.as_str()),
        (480, "Temporarily Unavailable")
    );
}
