//! Subscribers and digest authentication across the farm (issue #10): phones spoken to over
//! real UDP sockets by a small digest client built on `onehop_sip::digest` (and by SIPp), a
//! farm whose accounts come through the provisioning API.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hyper::Method;
use onehop_admin::Client;
use onehop_sip::digest::{Challenge, Credentials};
use onehop_sip::{parse, Message, Response};
use serde_json::json;

use crate::harness::{client_ip, scrape, sip_addr, wait_for, within_budget, Farm};
use crate::provisioning::call;

const DOMAIN: &str = "example.test";

/// A phone on its own loopback address: sends a request, waits for the final response
/// (retransmitting over UDP as a phone would).
pub(crate) struct Phone {
    sock: UdpSocket,
    me: SocketAddr,
    user: String,
    n: u32,
}

impl Phone {
    pub(crate) fn new(ip: IpAddr, user: &str) -> Phone {
        let sock = UdpSocket::bind((ip, 0)).expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let me = sock.local_addr().unwrap();
        Phone {
            sock,
            me,
            user: user.to_string(),
            n: 0,
        }
    }

    /// Sends `method` to `to` with `extra` header lines; the final response.
    pub(crate) fn request(
        &mut self,
        to: SocketAddr,
        method: &str,
        uri: &str,
        from: &str,
        to_hdr: &str,
        extra: &[String],
    ) -> Response {
        self.n += 1;
        let n = self.n;
        let mut text = format!(
            "{method} {uri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {me};branch=z9hG4bK-auth-{user}-{n}-{pid};rport\r\n\
             Max-Forwards: 70\r\n\
             From: {from};tag=f{n}\r\n\
             To: {to_hdr}\r\n\
             Call-ID: auth-{user}-{n}-{pid}@{ip}\r\n\
             CSeq: {n} {method}\r\n\
             Contact: <sip:{user}@{me}>\r\n",
            me = self.me,
            user = self.user,
            pid = std::process::id(),
            ip = self.me.ip(),
        );
        if method == "REGISTER" {
            text.push_str("Expires: 600\r\n");
        }
        for line in extra {
            text.push_str(line);
            text.push_str("\r\n");
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        let mut buf = vec![0u8; 65_535];
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut sent = 0;
        while Instant::now() < deadline {
            if sent < 6 {
                self.sock.send_to(text.as_bytes(), to).unwrap();
                sent += 1;
            }
            while let Ok((len, _)) = self.sock.recv_from(&mut buf) {
                if let Ok(Message::Response(r)) = parse(&buf[..len]) {
                    let ours = r
                        .headers
                        .get("CSeq")
                        .is_some_and(|c| c.starts_with(&format!("{n} ")));
                    if ours && r.status >= 200 {
                        if method == "INVITE" {
                            self.ack(to, &text, &r);
                        }
                        return r;
                    }
                }
            }
        }
        panic!("no final response to {method} from {to}");
    }

    /// The ACK of a non-2xx final response to an INVITE (same branch, RFC 3261 17.1.1.3).
    fn ack(&self, to: SocketAddr, invite: &str, resp: &Response) {
        let line = |name: &str| {
            invite
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_default()
                .to_string()
        };
        let cseq = line("CSeq:").replace("INVITE", "ACK");
        let to_hdr = format!("To: {}", resp.headers.get("To").unwrap_or_default());
        let uri = invite.split(' ').nth(1).unwrap_or_default();
        let ack = format!(
            "ACK {uri} SIP/2.0\r\n{}\r\nMax-Forwards: 70\r\n{}\r\n{to_hdr}\r\n{}\r\n{cseq}\r\nContent-Length: 0\r\n\r\n",
            line("Via:"),
            line("From:"),
            line("Call-ID:"),
        );
        let _ = self.sock.send_to(ack.as_bytes(), to);
    }

    /// Waits (at most 5 s) for a request sent to this phone, answers it `status` and returns
    /// its text.
    pub(crate) fn answer_request(&self, status: u16) -> String {
        let mut buf = vec![0u8; 65_535];
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let Ok((len, from)) = self.sock.recv_from(&mut buf) else {
                continue;
            };
            if let Ok(Message::Request(req)) = parse(&buf[..len]) {
                let resp = onehop_sip::reply(&req, status, None, Some("ph"));
                self.sock.send_to(&resp.to_bytes(), from).unwrap();
                return String::from_utf8_lossy(&buf[..len]).into_owned();
            }
        }
        panic!("no request reached {}", self.me);
    }

    fn register(&mut self, proxy: SocketAddr, auth: Option<&str>) -> Response {
        let aor = format!("<sip:{}@{DOMAIN}>", self.user);
        let extra: Vec<String> = auth
            .map(|a| format!("Authorization: {a}"))
            .into_iter()
            .collect();
        self.request(
            proxy,
            "REGISTER",
            &format!("sip:{DOMAIN}"),
            &aor,
            &aor,
            &extra,
        )
    }

    /// REGISTERs with `password`, answering the challenge of `challenger` at `answerer`.
    fn register_with(
        &mut self,
        challenger: SocketAddr,
        answerer: SocketAddr,
        password: &str,
    ) -> (Response, String) {
        let r = self.register(challenger, None);
        assert_eq!(r.status, 401, "a challenge first");
        let auth = answer(
            &r,
            "WWW-Authenticate",
            &self.user,
            password,
            "REGISTER",
            &format!("sip:{DOMAIN}"),
            1,
        );
        (self.register(answerer, Some(&auth)), auth)
    }
}

/// The challenges of a 401/407: SHA-256 first, then MD5, one nonce, for our domain.
fn challenges(r: &Response, header: &str) -> Vec<Challenge> {
    challenges_in(r, header, DOMAIN)
}

/// The challenges of a 401/407 for `realm`: SHA-256 first, then MD5, one nonce.
fn challenges_in(r: &Response, header: &str, realm: &str) -> Vec<Challenge> {
    let all: Vec<Challenge> = r
        .headers
        .all(header)
        .map(|h| Challenge::parse(h.value()).expect("a challenge we can read"))
        .collect();
    assert_eq!(all.len(), 2, "two challenges: {all:?}");
    assert_eq!(all[0].algorithm.as_str(), "SHA-256");
    assert_eq!(all[1].algorithm.as_str(), "MD5");
    assert_eq!(all[0].nonce, all[1].nonce);
    assert_eq!(all[0].realm, realm);
    all
}

/// Credentials answering the SHA-256 challenge of `r`.
fn answer(
    r: &Response,
    header: &str,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
    nc: u32,
) -> String {
    let ch = &challenges(r, header)[0];
    Credentials::answer(ch, user, password, method, uri, "c0ffee", nc).to_string()
}

pub(crate) fn metric(farm: &Farm, node: &str, name: &str) -> i64 {
    let m = farm.file.member(node).unwrap();
    scrape(m.addr("metrics").unwrap())
        .and_then(|m| m.get(name).copied())
        .unwrap_or(0)
}

/// A farm whose nodes authenticate, with `args` for `up` after `--no-demo-accounts` and
/// `sip_auth="digest"`, the domain example.test provisioned and `accounts` (user, password,
/// enabled) in it; waits until every node holds every registrar and proxy in its rings.
pub(crate) fn digest_farm(
    base_ip: &str,
    args: &[&str],
    accounts: &[(&str, &str, bool)],
) -> (Farm, Client) {
    let mut all = vec!["--no-demo-accounts", "--node-set", "sip_auth=\"digest\""];
    all.extend_from_slice(args);
    let farm = Farm::up_with_rings(base_ip, &all, &["registrar", "sip_proxy"]);
    let c = Client::for_farm(farm.path()).unwrap();
    let (s, v) = call(
        &c,
        Method::POST,
        "/v1/domains",
        Some(json!({"name": DOMAIN})),
    );
    assert_eq!(s, 201, "{v}");
    for (user, password, enabled) in accounts {
        let (s, v) = call(
            &c,
            Method::POST,
            "/v1/accounts",
            Some(json!({"user": user, "domain": DOMAIN, "password": password, "enabled": enabled})),
        );
        assert_eq!(s, 201, "{v}");
    }
    (farm, c)
}

/// A 3-node farm that authenticates, with example.test and three accounts: alice (enabled),
/// bob (blocked) and carol; `extra` arguments for `up` (the guard's settings, say).
fn auth_farm(base_ip: &str, extra: &[&str]) -> (Farm, Client) {
    let mut args = vec![
        "--dns",
        "0",
        // SHA-256 first (RFC 8760's preference; this client speaks both). The default order
        // is checked by the SIPp tests, whose SIPp knows MD5 only.
        "--node-set",
        "sip_auth_algorithms=[\"SHA-256\", \"MD5\"]",
    ];
    args.extend_from_slice(extra);
    let (farm, c) = digest_farm(
        base_ip,
        &args,
        &[
            ("alice", "pw-alice-1", true),
            ("bob", "pw-bob-1", false),
            ("carol", "pw-carol-1", true),
        ],
    );
    // Every node holds the farm's nonce key: a REGISTER is challenged, not refused with 503.
    let mut probe = Phone::new(client_ip(&farm, 200), "alice");
    for node in farm.names("node") {
        let proxy = sip_addr(&farm, &node);
        wait_for(Duration::from_secs(10), || {
            (probe.register(proxy, None).status == 401).then_some(())
        })
        .unwrap_or_else(|| panic!("{node} never challenged a REGISTER"));
    }
    (farm, c)
}

#[test]
fn digest_registration_is_checked_farm_wide() {
    // The failure guard relaxed: this test fails passwords on purpose, and polls with a new
    // password until it works everywhere; the guard has its own test.
    let (farm, c) = auth_farm(
        "127.0.190.1",
        &[
            "--node-set",
            "sip_auth_slow_after=1000",
            "--node-set",
            "sip_auth_block_after=1000",
        ],
    );
    let nodes: Vec<SocketAddr> = farm
        .names("node")
        .iter()
        .map(|n| sip_addr(&farm, n))
        .collect();
    let (n1, n2, n3) = (nodes[0], nodes[1], nodes[2]);
    let mut alice = Phone::new(client_ip(&farm, 201), "alice");

    // A nonce issued at node1 and answered at node2 is accepted.
    let (r, auth) = alice.register_with(n1, n2, "pw-alice-1");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.headers.get("Contact").is_some());
    // The same Authorization replayed in a new transaction, at node3 and at node2: refused,
    // with a fresh challenge marked stale (the count was used).
    for proxy in [n3, n2] {
        let r = alice.register(proxy, Some(&auth));
        assert_eq!(r.status, 401, "a replay is refused");
        assert!(challenges(&r, "WWW-Authenticate")[0].stale);
    }
    // A wrong password: 401 again, not stale.
    let (r, _) = alice.register_with(n1, n1, "not-the-password");
    assert_eq!(r.status, 401);
    assert!(!challenges(&r, "WWW-Authenticate")[0].stale);
    // An unprovisioned AOR never registers; a blocked one is refused with 403.
    let mut mallory = Phone::new(client_ip(&farm, 202), "mallory");
    for proxy in [n1, n2, n3] {
        let (r, _) = mallory.register_with(proxy, proxy, "guess");
        assert_eq!(r.status, 401, "mallory at {proxy}");
    }
    let mut bob = Phone::new(client_ip(&farm, 203), "bob");
    let (r, _) = bob.register_with(n2, n2, "pw-bob-1");
    assert_eq!(r.status, 403, "a blocked account");
    // Credentials of another user on alice's REGISTER: 403.
    let r = alice.register(n1, None);
    let carol_auth = answer(
        &r,
        "WWW-Authenticate",
        "carol",
        "pw-carol-1",
        "REGISTER",
        &format!("sip:{DOMAIN}"),
        1,
    );
    let r = alice.register(n1, Some(&carol_auth));
    assert_eq!(r.status, 403);

    // Requests from our domain are challenged with 407, whatever their target.
    let from = format!("<sip:alice@{DOMAIN}>");
    let r = alice.request(
        n1,
        "INVITE",
        "sip:carol@example.test",
        &from,
        "<sip:carol@example.test>",
        &[],
    );
    assert_eq!(r.status, 407);
    let auth = answer(
        &r,
        "Proxy-Authenticate",
        "alice",
        "pw-alice-1",
        "INVITE",
        "sip:carol@example.test",
        1,
    );
    let r = alice.request(
        n2,
        "INVITE",
        "sip:carol@example.test",
        &from,
        "<sip:carol@example.test>",
        &[format!("Proxy-Authorization: {auth}")],
    );
    assert!(
        r.status == 404 || r.status == 480,
        "authenticated, then routed (carol has no binding): {} {}",
        r.status,
        r.reason
    );
    // Unauthenticated requests from elsewhere reach only our users.
    let mut stranger = Phone::new(client_ip(&farm, 204), "eve");
    let from = "<sip:eve@elsewhere.test>";
    for target in ["sip:dave@elsewhere.test", "sip:dave@127.0.0.99:5060"] {
        let r = stranger.request(n1, "INVITE", target, from, &format!("<{target}>"), &[]);
        assert_eq!(
            r.status, 403,
            "relaying {target}: {} {}",
            r.status, r.reason
        );
    }
    let r = stranger.request(
        n1,
        "MESSAGE",
        "sip:carol@example.test",
        from,
        "<sip:carol@example.test>",
        &[],
    );
    assert_ne!(r.status, 403, "to our user: {} {}", r.status, r.reason);
    assert_ne!(r.status, 407);

    // An alias reaches its account's phone.
    let (s, v) = call(
        &c,
        Method::POST,
        "/v1/accounts/alice@example.test/aliases",
        Some(json!({"alias": "alice.smith@example.test"})),
    );
    assert_eq!(s, 201, "{v}");
    let alias_version = {
        let (_, v) = call(&c, Method::GET, "/v1/status", None);
        v["version"].as_i64().unwrap()
    };
    wait_for(Duration::from_secs(5), || {
        (pushed_version(&farm) >= alias_version).then_some(())
    })
    .expect("the alias pushed");
    let target = "sip:alice.smith@example.test";
    let sender = std::thread::scope(|scope| {
        let asked = scope
            .spawn(|| stranger.request(n3, "MESSAGE", target, from, &format!("<{target}>"), &[]));
        let got = alice.answer_request(200);
        assert!(got.starts_with("MESSAGE "), "{got}");
        asked.join().unwrap()
    });
    assert_eq!(sender.status, 200, "the alias reached alice's phone");

    // A second domain, provisioned while the farm runs, is served by every proxy with its
    // own realm.
    let (s, v) = call(
        &c,
        Method::POST,
        "/v1/domains",
        Some(json!({"name": "second.test"})),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(
        &c,
        Method::POST,
        "/v1/accounts",
        Some(json!({"user": "erin", "domain": "second.test", "password": "pw-erin-second"})),
    );
    assert_eq!(s, 201, "{v}");
    let mut erin = Phone::new(client_ip(&farm, 205), "erin");
    let aor = "<sip:erin@second.test>";
    for &p in &nodes {
        let challenge = wait_for(Duration::from_secs(5), || {
            let r = erin.request(p, "REGISTER", "sip:second.test", aor, aor, &[]);
            (r.status == 401).then_some(r)
        })
        .unwrap_or_else(|| panic!("{p} never challenged a REGISTER for second.test"));
        let ch = &challenges_in(&challenge, "WWW-Authenticate", "second.test")[0];
        let auth = Credentials::answer(
            ch,
            "erin",
            "pw-erin-second",
            "REGISTER",
            "sip:second.test",
            "c2",
            1,
        );
        let r = erin.request(
            p,
            "REGISTER",
            "sip:second.test",
            aor,
            aor,
            &[format!("Authorization: {auth}")],
        );
        assert_eq!(
            r.status, 200,
            "erin@second.test at {p}: {} {}",
            r.status, r.reason
        );
    }

    // A password change takes effect at every node within a second.
    let start = Instant::now();
    let (s, v) = call(
        &c,
        Method::PATCH,
        "/v1/accounts/alice@example.test",
        Some(json!({"password": "pw-alice-2"})),
    );
    assert_eq!(s, 200, "{v}");
    let took = wait_for(Duration::from_secs(5), || {
        nodes
            .iter()
            .all(|&p| {
                let (r, _) = alice.register_with(p, p, "pw-alice-2");
                r.status == 200
            })
            .then(|| start.elapsed())
    });
    within_budget(
        "password change at every node",
        took,
        Duration::from_secs(1),
        1.5,
    );
    for &p in &nodes {
        let (r, _) = alice.register_with(p, p, "pw-alice-1");
        assert_eq!(r.status, 401, "the old password is refused at {p}");
    }
}

#[test]
fn a_source_that_keeps_failing_is_slowed_then_refused_for_a_while() {
    // The guard tightened, so the test sees it act quickly.
    let (farm, _c) = auth_farm(
        "127.0.191.1",
        &[
            "--node-set",
            "sip_auth_slow_after=3",
            "--node-set",
            "sip_auth_slow_interval_ms=300",
            "--node-set",
            "sip_auth_block_after=6",
            "--node-set",
            "sip_auth_block_secs=3",
        ],
    );
    let n1 = sip_addr(&farm, "node1");
    let mut guesser = Phone::new(client_ip(&farm, 210), "carol");
    // Three failures: slowed (sip_auth_slow_after=3).
    for _ in 0..3 {
        let (r, _) = guesser.register_with(n1, n1, "guess");
        assert_eq!(r.status, 401);
    }
    let (r, _) = guesser.register_with(n1, n1, "guess");
    assert_eq!(r.status, 403, "an attempt too soon: {}", r.reason);
    // Attempts spaced by the slow interval still go through and fail (those sooner get 403
    // unchecked), until the sixth failure blocks the source.
    let blocked = wait_for(Duration::from_secs(10), || {
        let (r, _) = guesser.register_with(n1, n1, "guess");
        (r.status == 403 && metric(&farm, "node1", "onehop_sip_auth_sources_blocked_total") == 1)
            .then_some(())
    });
    assert!(blocked.is_some(), "the source is blocked");
    // Even the right password is refused while blocked; another source is not affected.
    let (r, _) = guesser.register_with(n1, n1, "pw-carol-1");
    assert_eq!(r.status, 403);
    let mut other = Phone::new(client_ip(&farm, 211), "carol");
    assert_eq!(other.register_with(n1, n1, "pw-carol-1").0.status, 200);
    // The block ends (sip_auth_block_secs=3).
    let freed = wait_for(Duration::from_secs(8), || {
        (guesser.register_with(n1, n1, "pw-carol-1").0.status == 200).then_some(())
    });
    assert!(freed.is_some(), "the block ends");
    assert!(metric(&farm, "node1", "onehop_sip_auth_failures_total") >= 6);
    assert!(metric(&farm, "node1", "onehop_sip_auth_throttled_total") >= 1);
}

/// The provisioning version the active manager pushed to the nodes (the highest of the
/// managers' gauges).
fn pushed_version(farm: &Farm) -> i64 {
    farm.names("manager")
        .iter()
        .map(|m| metric(farm, m, "onehop_provision_pushed_version"))
        .max()
        .unwrap_or(0)
}

/// 100,000 accounts imported through `onehop-admin`, then registered through all three
/// proxies by SIPp with `[authentication]` (its 401 answered, MD5: the default order): all
/// 200. The challenges come from the node SIPp talks to; the credentials are checked at each
/// AOR's registrar, on whichever node that is.
#[test]
fn sipp_registers_100000_provisioned_accounts_with_digest() {
    crate::sipp::require_sipp();
    const USERS: usize = 100_000;
    let (farm, c) = digest_farm("127.0.192.1", &["--dns", "0"], &[]);
    let dir = crate::sipp::Workdir::new("onehop-sipp-auth-");
    let password = |i: usize| {
        format!(
            "pw-{:08x}",
            (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32
        )
    };
    let mut import = String::from("user,domain,password\n");
    for i in 1..=USERS {
        import.push_str(&format!("sub{i},{DOMAIN},{}\n", password(i)));
    }
    let csv = dir.path().join("subscribers.csv");
    std::fs::write(&csv, import).unwrap();
    let started = Instant::now();
    let dir_arg = farm.path().to_str().unwrap().to_string();
    let out = farm.tool(
        "onehop-admin",
        &["--farm", &dir_arg, "import", csv.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "import: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "AUTH import of {USERS} accounts: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Every account pushed to its registrar (a cold one would be reloaded, but the test
    // measures the path a provisioned farm takes).
    let (_, v) = call(&c, Method::GET, "/v1/status", None);
    let version = v["version"].as_i64().expect("a version");
    wait_for(Duration::from_secs(120), || {
        (pushed_version(&farm) >= version).then_some(())
    })
    .expect("every account pushed to the nodes");
    println!(
        "AUTH accounts at their registrars {:.1} s after the import began",
        started.elapsed().as_secs_f64()
    );

    let nodes = farm.names("node");
    let proxies: Vec<SocketAddr> = nodes.iter().map(|n| sip_addr(&farm, n)).collect();
    let k = proxies.len();
    let slices: Vec<_> = (0..k)
        .map(|p| {
            let rows: Vec<String> = (1..=USERS)
                .skip(p)
                .step_by(k)
                .map(|i| {
                    format!(
                        "sub{i};{DOMAIN};[authentication username=sub{i} password={}]",
                        password(i)
                    )
                })
                .collect();
            dir.csv(&format!("users{p}.csv"), rows.iter().map(String::as_str))
        })
        .collect();
    let per_slice: Vec<usize> = (0..k).map(|p| (USERS - p).div_ceil(k)).collect();
    let started = Instant::now();
    let runs: Vec<_> = (0..k)
        .map(|p| {
            crate::sipp::Sipp::new(&dir, &format!("register_auth{p}"), "register_auth.xml")
                .inf(&slices[p])
                .local(client_ip(&farm, 100 + p as u8), 5070)
                .remote(proxies[p])
                .calls(per_slice[p])
                .limit(200)
                .rate(20_000)
                .timeout(Duration::from_secs(600))
                .spawn()
        })
        .collect();
    let outs: Vec<crate::sipp::Outcome> = runs.into_iter().map(|r| r.wait()).collect();
    let took = started.elapsed();
    for (p, o) in outs.iter().enumerate() {
        println!(
            "AUTH REGISTER via {} ({}): {} x 200 in {:.1} s, {:.0}/s, mean response {:.1} ms",
            nodes[p],
            proxies[p],
            o.successful(),
            o.elapsed.as_secs_f64(),
            o.rate(),
            o.response_time_ms(),
        );
    }
    for (p, o) in outs.iter().enumerate() {
        o.assert_all(per_slice[p] as u64);
    }
    println!(
        "AUTH REGISTER: {USERS} accounts through {k} proxies, challenged and all 200, in {:.1} s ({:.0}/s)",
        took.as_secs_f64(),
        USERS as f64 / took.as_secs_f64()
    );
    let failures: i64 = nodes
        .iter()
        .map(|n| metric(&farm, n, "onehop_sip_auth_failures_total"))
        .sum();
    assert_eq!(failures, 0, "no credentials refused");
}

/// An authenticated call between two phones on two nodes, with SIPp: bob registers through
/// node2 (challenged, answered), alice calls him through node1 (407, answered), the call is
/// set up and ended with a BYE that follows the signed route set. bob's phone never sees
/// alice's credentials.
#[test]
fn an_authenticated_call_crosses_two_nodes() {
    crate::sipp::require_sipp();
    const CALLS: usize = 10;
    let (farm, _c) = digest_farm(
        "127.0.193.1",
        &["--dns", "0"],
        &[
            ("alice", "pw-alice-secret", true),
            ("bob", "pw-bob-secret", true),
        ],
    );
    let (n1, n2) = (sip_addr(&farm, "node1"), sip_addr(&farm, "node2"));
    let dir = crate::sipp::Workdir::new("onehop-sipp-authcall-");
    let bob = SocketAddr::new(client_ip(&farm, 110), 5060);
    let reg = dir.csv(
        "bob.csv",
        ["bob;example.test;[authentication username=bob password=pw-bob-secret]"].into_iter(),
    );
    crate::sipp::Sipp::new(&dir, "reg_bob", "register_auth.xml")
        .inf(&reg)
        .local(bob.ip(), bob.port())
        .remote(n2)
        .calls(1)
        .timeout(Duration::from_secs(20))
        .run()
        .assert_all(1);
    let uas = crate::sipp::Sipp::new(&dir, "uas_call", "uas_call.xml")
        .service("bob")
        .local(bob.ip(), bob.port())
        .calls(CALLS)
        .trace_msg()
        .timeout(Duration::from_secs(60))
        .spawn();
    let calls = dir.csv(
        "alice.csv",
        ["alice;example.test;[authentication username=alice password=pw-alice-secret];bob"]
            .into_iter(),
    );
    let uac = crate::sipp::Sipp::new(&dir, "uac_auth_call", "uac_auth_call.xml")
        .inf(&calls)
        .local(client_ip(&farm, 111), 5060)
        .remote(n1)
        .calls(CALLS)
        .limit(2)
        .rate(10)
        .trace_msg()
        .timeout(Duration::from_secs(60))
        .run();
    let uas = uas.wait();
    uac.assert_all(CALLS as u64);
    uas.assert_all(CALLS as u64);
    let invites: Vec<_> = uas
        .received()
        .filter(|m| m.method() == Some("INVITE"))
        .collect();
    assert_eq!(invites.len(), CALLS);
    for m in &invites {
        assert!(
            m.header("Proxy-Authorization", None).is_empty(),
            "our credentials are consumed: {}",
            m.text
        );
        assert!(
            m.header("Record-Route", None)
                .iter()
                .any(|rr| rr.contains(";ohs=")),
            "a signed route: {}",
            m.text
        );
    }
    let failures: i64 = farm
        .names("node")
        .iter()
        .map(|n| metric(&farm, n, "onehop_sip_auth_failures_total"))
        .sum();
    assert_eq!(failures, 0);
    println!(
        "AUTH calls: {CALLS} authenticated calls alice@node1 -> bob@node2, mean setup {:.1} ms",
        uac.response_time_ms()
    );
}

/// Whether Debian's baresip is installed (`tests/run` installs `baresip-core`).
pub(crate) fn have_baresip() -> bool {
    std::process::Command::new("baresip")
        .arg("-h")
        .output()
        .is_ok()
}

/// A baresip configuration directory for `user` at `addr`, finding the farm through the DNS
/// server `dns` alone (RFC 3263: NAPTR, SRV, A), with no sound device.
pub(crate) fn baresip_dir(
    root: &std::path::Path,
    user: &str,
    password: &str,
    addr: IpAddr,
    dns: SocketAddr,
    answer: &str,
) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = root.join(user);
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "poll_method epoll\n\
         sip_listen {addr}:5060\n\
         net_interface {addr}\n\
         dns_server {dns}\n\
         call_local_timeout 120\n\
         audio_source ausine,440\n\
         ausrc_srate 48000\n\
         ausrc_channels 2\n\
         audio_player aubridge,nil\n\
         audio_alert aubridge,nil\n\
         rtp_ports 20000-20999\n\
         module_path /usr/lib/baresip/modules\n\
         module g711.so\n\
         module ausine.so\n\
         module aubridge.so\n\
         module_tmp uuid.so\n\
         module_tmp account.so\n\
         module_app menu.so\n\
         statmode_default off\n"
    );
    std::fs::write(dir.join("config"), config).unwrap();
    let accounts = dir.join("accounts");
    std::fs::write(
        &accounts,
        format!("<sip:{user}@{DOMAIN}>;auth_pass={password};regint=600;answermode={answer}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&accounts, std::fs::Permissions::from_mode(0o600)).unwrap();
    dir
}

/// A baresip process, killed on drop; its output in `log`.
pub(crate) struct Baresip {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Baresip {
    pub(crate) fn start(dir: &std::path::Path, secs: u32, command: Option<&str>) -> Baresip {
        let log = dir.join("out.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = std::process::Command::new("baresip");
        cmd.arg("-f").arg(dir).arg("-t").arg(secs.to_string());
        if let Some(c) = command {
            cmd.arg("-e").arg(c);
        }
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start baresip");
        Baresip { child, log }
    }

    pub(crate) fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most `within`) for a line containing `what`.
    pub(crate) fn wait_for(&self, what: &str, within: Duration) {
        if wait_for(within, || self.text().contains(what).then_some(())).is_none() {
            panic!("baresip never logged `{what}`:\n{}", self.text());
        }
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two Debian softphones (baresip 1.0.0) that know only the domain and the farm's DNS server
/// register with their passwords and call each other: DNS finds the proxies, the REGISTERs are
/// challenged (401), the INVITE too (407), the call is set up with media through the farm's
/// relay and ended with a BYE. A third phone with a wrong password is refused. baresip 1.0
/// answers only a lone MD5 challenge, so this farm offers MD5 alone (`sip_auth_algorithms`).
#[test]
fn baresip_phones_that_know_only_the_domain_register_and_call() {
    if !have_baresip() {
        panic!("baresip is not installed: run tests/run (it installs baresip-core)");
    }
    // baresip 1.0 answers only a lone MD5 challenge.
    let (farm, _c) = digest_farm(
        "127.0.194.1",
        &[
            "--dns",
            "1",
            "--dns-port",
            "5353",
            "--node-set",
            "sip_auth_algorithms=[\"MD5\"]",
        ],
        &[
            ("alice", "alice-secret-pw", true),
            ("bob", "bob-secret-pw", true),
        ],
    );
    let dns_member = farm.names("dns")[0].clone();
    let dns = SocketAddr::new(farm.ip(&dns_member), 5353);
    let root = tempfile::tempdir().unwrap();
    let bob_dir = baresip_dir(
        root.path(),
        "bob",
        "bob-secret-pw",
        client_ip(&farm, 120),
        dns,
        "auto",
    );
    let alice_dir = baresip_dir(
        root.path(),
        "alice",
        "alice-secret-pw",
        client_ip(&farm, 121),
        dns,
        "manual",
    );
    let mallory_dir = baresip_dir(
        root.path(),
        "mallory",
        "guessed-pw",
        client_ip(&farm, 122),
        dns,
        "manual",
    );

    let bob = Baresip::start(&bob_dir, 40, None);
    bob.wait_for("bob@example.test: {0/", Duration::from_secs(20));
    bob.wait_for("200 OK () [1 binding]", Duration::from_secs(20));
    // alice dials at start-up and hangs up when her 12 s are over.
    let alice = Baresip::start(&alice_dir, 12, Some("/dial sip:bob@example.test"));
    alice.wait_for(
        "Call established: sip:bob@example.test",
        Duration::from_secs(20),
    );
    bob.wait_for(
        "Call established: sip:alice@example.test",
        Duration::from_secs(10),
    );
    for phone in [&alice, &bob] {
        phone.wait_for(
            "incoming rtp for 'audio' established",
            Duration::from_secs(10),
        );
    }
    bob.wait_for(
        "Call with sip:alice@example.test terminated",
        Duration::from_secs(30),
    );
    assert!(
        alice.text().contains("200 OK () [1 binding]"),
        "alice registered too:\n{}",
        alice.text()
    );
    // A wrong password: refused (401; baresip tries again at once with each fresh nonce, and
    // the failure guard then answers 403).
    let mallory = Baresip::start(&mallory_dir, 20, None);
    mallory.wait_for("reg: sip:mallory@example.test: 40", Duration::from_secs(15));
    assert!(
        !mallory.text().contains("[1 binding]"),
        "{}",
        mallory.text()
    );
}

/// A registrar whose cache was lost (every node killed and started again, after the accounts
/// were pushed) reloads an account from the managers before it answers: the subscriber
/// registers at once, and an unprovisioned AOR is still refused.
#[test]
fn a_cold_registrar_reloads_accounts_from_the_managers() {
    let (mut farm, _c) = auth_farm("127.0.197.1", &[]);
    let nodes = farm.names("node");
    let version = {
        let c = Client::for_farm(farm.path()).unwrap();
        let (_, v) = call(&c, Method::GET, "/v1/status", None);
        v["version"].as_i64().unwrap()
    };
    wait_for(Duration::from_secs(10), || {
        (pushed_version(&farm) >= version).then_some(())
    })
    .expect("the accounts were pushed");
    for n in &nodes {
        farm.signal(n, "-KILL");
    }
    for n in &nodes {
        farm.restart(n);
    }
    let n1 = sip_addr(&farm, "node1");
    let mut carol = Phone::new(client_ip(&farm, 220), "carol");
    // The nodes are back (challenging again) with empty stores.
    wait_for(Duration::from_secs(20), || {
        (nodes
            .iter()
            .all(|n| metric(&farm, n, "onehop_farm_nonce_key") == 1)
            && carol.register(n1, None).status == 401)
            .then_some(())
    })
    .expect("the nodes are back");
    farm.wait_rings(&["registrar"]);
    let (r, _) = carol.register_with(n1, n1, "pw-carol-1");
    assert_eq!(r.status, 200, "{} {}", r.status, r.reason);
    let asked: i64 = nodes
        .iter()
        .map(|n| metric(&farm, n, "onehop_provision_reloads_found_total"))
        .sum();
    assert!(asked >= 1, "the account came from the managers");
    let mut mallory = Phone::new(client_ip(&farm, 221), "mallory");
    let (r, _) = mallory.register_with(n1, n1, "guess");
    assert_eq!(r.status, 401);
}
