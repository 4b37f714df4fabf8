//! No silent loss between nodes: a SIP message that cannot reach the next node is answered at
//! once (503 with Retry-After to the upstream transaction) or retransmitted by its
//! transaction's timers, and queues push back instead of dropping; a caller never waits 32 s
//! because an internal queue was full.
//!
//! Each test starts its own farm of two nodes (roles `sip_proxy,registrar`) and talks to it
//! with hand-written UDP user agents on addresses of the farm's /24:
//!
//! - a full node-to-node queue: node1 restarted with `sip_peer_queue = 4`, the callee's node
//!   (node2) frozen with SIGSTOP, 20 INVITEs through node1: each gets its final answer within
//!   1 s, those over the bound at once;
//! - a node gone (kill -9): an INVITE for a phone registered through it is answered within 1 s
//!   (503 while the dead node is still in the status, delivered straight to the phone after);
//! - a burst of 2,000 MESSAGEs through both nodes with the default settings: every one gets a
//!   final answer (200, or 503 with Retry-After), none is left unanswered.
//!
//! The callee's AOR is picked so that its registrar owner is node1: a lookup then never waits
//! for the frozen or dead node, and what is measured is the SIP path between the nodes.
//! Every wait is bounded; nothing waits by sleeping.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::{client_ip, sip_addr, until_all_nodes, wait_for, Farm};

const DOMAIN: &str = "example.test";
/// Two nodes, SIP proxy and registrar only (no media relay), no DNS server.
const FARM_ARGS: &[&str] = &[
    "--nodes",
    "2",
    "--dns",
    "0",
    "--roles",
    "sip_proxy,registrar",
];
/// The requirement: a final answer within this long.
const BUDGET: Duration = Duration::from_secs(1);

fn farm_up(base_ip: &str) -> Farm {
    Farm::up_with_rings(base_ip, FARM_ARGS, &["registrar", "sip_proxy"])
}

/// A process's state letter from /proc (`T` when stopped), `None` when it is gone.
fn proc_state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    rest.trim_start().chars().next()
}

/// A member frozen with SIGSTOP, thawed with SIGCONT when dropped (also when the test
/// fails, so the farm can be stopped).
struct Frozen(u32);

impl Frozen {
    fn new(pid: u32) -> Frozen {
        let st = Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .expect("kill -STOP");
        assert!(st.success(), "kill -STOP {pid}");
        let frozen = Frozen(pid);
        assert!(
            wait_for(Duration::from_secs(1), || (proc_state(pid) == Some('T'))
                .then_some(()))
            .is_some(),
            "{pid} not stopped"
        );
        frozen
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// Restarts `node` with `key = value` added to its config file; returns when every node
/// lists every node in its `registrar` and `sip_proxy` rings again (at most 20 s).
fn restart_with(farm: &mut Farm, node: &str, key: &str, value: toml::Value) {
    farm.restart_with_config(node, &[(key, value)]);
    let nodes = farm.names("node");
    let mut lookups = farm.lookups();
    for role in ["registrar", "sip_proxy"] {
        until_all_nodes(
            &mut lookups,
            role,
            Instant::now(),
            Duration::from_secs(20),
            |a| nodes.iter().all(|n| a.contains(&format!("{n}="))),
        )
        .unwrap_or_else(|| panic!("{node} not back in every {role} ring"));
    }
}

/// A user name whose AOR's registrar owner is `node` (so that its lookups stay there).
fn user_owned_by(farm: &Farm, node: &str, prefix: &str) -> String {
    let ip = farm.ip(node).to_string();
    let mut lookup = farm.lookup("node1");
    (0..1000)
        .map(|i| format!("{prefix}{i}"))
        .find(|u| lookup.ask(&format!("lookup registrar for {u}@{DOMAIN}")) == ip)
        .unwrap_or_else(|| panic!("no {prefix}N owned by {node}"))
}

/// Whether `node`'s `sip_proxy` members list `who`.
fn lists(farm: &Farm, node: &str, who: &str) -> bool {
    farm.lookup(node)
        .ask("members sip_proxy")
        .contains(&format!("{who}="))
}

// ---------------------------------------------------------------------------------------------
// A minimal SIP user agent over UDP.

/// A SIP message as received.
#[derive(Clone, Debug)]
struct Sip {
    text: String,
    from: SocketAddr,
    at: Instant,
}

impl Sip {
    fn first(&self) -> &str {
        self.text.lines().next().unwrap_or("")
    }

    /// The status code of a response.
    fn status(&self) -> Option<u16> {
        self.first()
            .strip_prefix("SIP/2.0 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
    }

    /// The method of a request.
    fn method(&self) -> Option<&str> {
        if self.first().starts_with("SIP/2.0") {
            return None;
        }
        self.first().split(' ').next()
    }

    /// Every value of a header (long or compact name).
    fn headers(&self, name: &str, compact: Option<&str>) -> Vec<&str> {
        let head = self.text.split("\r\n\r\n").next().unwrap_or("");
        head.lines()
            .skip(1)
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                let n = n.trim();
                (n.eq_ignore_ascii_case(name) || compact.is_some_and(|c| n.eq_ignore_ascii_case(c)))
                    .then_some(v.trim())
            })
            .collect()
    }

    fn header(&self, name: &str, compact: Option<&str>) -> Option<&str> {
        self.headers(name, compact).first().copied()
    }

    fn call_id(&self) -> String {
        self.header("Call-ID", Some("i")).unwrap_or("").to_string()
    }
}

fn recv(sock: &UdpSocket, buf: &mut [u8]) -> Option<Sip> {
    let (n, from) = sock.recv_from(buf).ok()?;
    Some(Sip {
        text: String::from_utf8_lossy(&buf[..n]).into_owned(),
        from,
        at: Instant::now(),
    })
}

/// An out-of-dialog request from `caller@DOMAIN` at `me` to `user@DOMAIN`; `id` names its
/// Call-ID, branch and tag.
fn request(method: &str, user: &str, me: SocketAddr, id: &str, body: &str) -> String {
    let mut m = format!(
        "{method} sip:{user}@{DOMAIN} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bK-{id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:caller@{DOMAIN}>;tag=c-{id}\r\n\
         To: <sip:{user}@{DOMAIN}>\r\n\
         Call-ID: {id}@lossless\r\n\
         CSeq: 1 {method}\r\n\
         Contact: <sip:caller@{me}>\r\n"
    );
    if !body.is_empty() {
        m.push_str("Content-Type: text/plain\r\n");
    }
    m.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    m
}

/// The ACK for a non-2xx final response to the INVITE `id` (same branch, the response's To).
fn ack(user: &str, me: SocketAddr, id: &str, resp: &Sip) -> String {
    let to = resp.header("To", Some("t")).unwrap_or("");
    format!(
        "ACK sip:{user}@{DOMAIN} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bK-{id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:caller@{DOMAIN}>;tag=c-{id}\r\n\
         To: {to}\r\n\
         Call-ID: {id}@lossless\r\n\
         CSeq: 1 ACK\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// A response to `req`: its Vias, From, Call-ID and CSeq, its To with our tag.
fn response(req: &Sip, code: u16, reason: &str) -> String {
    let mut m = format!("SIP/2.0 {code} {reason}\r\n");
    for v in req.headers("Via", Some("v")) {
        m.push_str(&format!("Via: {v}\r\n"));
    }
    let to = req.header("To", Some("t")).unwrap_or("");
    let to = if to.contains(";tag=") {
        to.to_string()
    } else {
        format!("{to};tag=callee")
    };
    m.push_str(&format!(
        "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
        req.header("From", Some("f")).unwrap_or(""),
        req.call_id(),
        req.header("CSeq", None).unwrap_or("")
    ));
    m
}

/// REGISTERs `user` with its contact at `sock`'s address through `proxy`; waits (at most
/// 5 s, retransmitting every 500 ms) for the 200.
fn register(sock: &UdpSocket, proxy: SocketAddr, user: &str) {
    let me = sock.local_addr().unwrap();
    let id = format!("reg-{user}");
    let msg = format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bK-{id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@{DOMAIN}>;tag={id}\r\n\
         To: <sip:{user}@{DOMAIN}>\r\n\
         Call-ID: {id}@lossless\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: <sip:{user}@{me}>\r\n\
         Expires: 600\r\n\
         Content-Length: 0\r\n\r\n"
    );
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = vec![0u8; 65_535];
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut next = Instant::now();
    while Instant::now() < deadline {
        if Instant::now() >= next {
            sock.send_to(msg.as_bytes(), proxy).expect("send REGISTER");
            next += Duration::from_millis(500);
        }
        if let Some(r) = recv(sock, &mut buf) {
            if r.call_id() == format!("{id}@lossless") && r.status().is_some_and(|s| s >= 200) {
                assert_eq!(r.status(), Some(200), "REGISTER {user}: {}", r.first());
                return;
            }
        }
    }
    panic!("REGISTER {user} through {proxy}: no final answer in 5 s");
}

/// A phone that answers every request it gets: 486 Busy Here to an INVITE, nothing to an
/// ACK, 200 to the rest; it keeps what it received.
struct Callee {
    seen: Arc<Mutex<Vec<Sip>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Callee {
    /// Answers on `sock` (its users already registered) until dropped.
    fn start(sock: UdpSocket) -> Callee {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_535];
                while !stop.load(Ordering::Relaxed) {
                    let Some(m) = recv(&sock, &mut buf) else {
                        continue;
                    };
                    let answer = match m.method() {
                        None | Some("ACK") => None,
                        Some("INVITE") => Some(response(&m, 486, "Busy Here")),
                        Some(_) => Some(response(&m, 200, "OK")),
                    };
                    // Kept before answering: whoever has the answer finds the request here.
                    let to = m.from;
                    seen.lock().unwrap().push(m);
                    if let Some(a) = answer {
                        let _ = sock.send_to(a.as_bytes(), to);
                    }
                }
            })
        };
        Callee {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// The requests received so far with `method` and `call_id`.
    fn received(&self, method: &str, call_id: &str) -> Vec<Sip> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.method() == Some(method) && m.call_id() == call_id)
            .cloned()
            .collect()
    }

    /// How many distinct requests with `method` arrived.
    fn distinct(&self, method: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.method() == Some(method))
            .map(Sip::call_id)
            .collect::<HashSet<_>>()
            .len()
    }
}

impl Drop for Callee {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The calling side: sends requests and collects their first final answers.
struct Caller {
    sock: UdpSocket,
    me: SocketAddr,
    buf: Vec<u8>,
}

impl Caller {
    fn bind(ip: IpAddr) -> Caller {
        let sock = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind caller");
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let me = sock.local_addr().unwrap();
        Caller {
            sock,
            me,
            buf: vec![0u8; 65_535],
        }
    }

    /// Sends `method` `id` to `user` through `proxy`; returns when it was sent.
    fn send(&self, proxy: SocketAddr, method: &str, user: &str, id: &str, body: &str) -> Instant {
        let msg = request(method, user, self.me, id, body);
        self.sock.send_to(msg.as_bytes(), proxy).expect("send");
        Instant::now()
    }

    /// Collects the first final answer to each Call-ID of `ids` until all have one or
    /// `deadline` passes (provisional answers ignored); ACKs the INVITEs' finals.
    fn finals(
        &mut self,
        proxy: SocketAddr,
        user: &str,
        ids: &[String],
        deadline: Instant,
    ) -> HashMap<String, Sip> {
        let want: HashSet<String> = ids.iter().map(|i| format!("{i}@lossless")).collect();
        let mut got = HashMap::new();
        while got.len() < want.len() && Instant::now() < deadline {
            let Some(r) = recv(&self.sock, &mut self.buf) else {
                continue;
            };
            let cid = r.call_id();
            if !want.contains(&cid) || got.contains_key(&cid) || r.status().is_none_or(|s| s < 200)
            {
                continue;
            }
            if r.header("CSeq", None)
                .is_some_and(|c| c.ends_with("INVITE"))
            {
                let id = cid.trim_end_matches("@lossless");
                let _ = self
                    .sock
                    .send_to(ack(user, self.me, id, &r).as_bytes(), proxy);
            }
            got.insert(cid, r);
        }
        got
    }
}

/// Sends OPTIONS to `user` through `proxy` and waits (at most 5 s, retransmitting every
/// 500 ms) for its 200; returns the OPTIONS as the callee received it.
fn reachable(caller: &mut Caller, callee: &Callee, proxy: SocketAddr, user: &str, id: &str) -> Sip {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        caller.send(proxy, "OPTIONS", user, id, "");
        let got = caller.finals(
            proxy,
            user,
            &[id.to_string()],
            Instant::now() + Duration::from_millis(500),
        );
        if let Some(r) = got.values().next() {
            assert_eq!(r.status(), Some(200), "OPTIONS to {user}: {}", r.first());
            let seen = callee.received("OPTIONS", &format!("{id}@lossless"));
            return seen.into_iter().next().expect("the callee saw the OPTIONS");
        }
    }
    let seen: Vec<String> = callee
        .received("OPTIONS", &format!("{id}@lossless"))
        .iter()
        .map(|m| m.from.to_string())
        .collect();
    panic!(
        "OPTIONS {id} to {user} through {proxy}: no final answer in 5 s (the phone got it from \
         {seen:?})"
    );
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Checks a final answer to an INVITE: 503 with Retry-After, or (when the INVITE went
/// straight to the phone) the phone's 486 after the phone got the INVITE from `direct_from`.
fn check_final(r: &Sip, callee: &Callee, direct_from: IpAddr) {
    match r.status() {
        Some(503) => assert!(
            r.header("Retry-After", None).is_some(),
            "503 without Retry-After:\n{}",
            r.text
        ),
        Some(486) => {
            let got = callee.received("INVITE", &r.call_id());
            assert!(
                got.iter().any(|m| m.from.ip() == direct_from),
                "486 for {} but the phone did not get it from {direct_from}",
                r.call_id()
            );
        }
        other => panic!("unexpected final answer {other:?}:\n{}", r.text),
    }
}

// ---------------------------------------------------------------------------------------------
// A. A full node-to-node queue.

/// node1 restarted with `sip_peer_queue = 4` (only the sending node's queue matters here);
/// the callee registered through node2, which is then frozen (SIGSTOP); 20 INVITEs to the
/// callee through node1 as fast as a socket sends them. The first batch sent to node2 waits
/// for its call timeout (`sip_peer_timeout_ms`, 500 ms) and fails with the 4 queued behind
/// it; the INVITEs beyond the bound are refused at once. Every INVITE gets its final answer
/// within 1 s of being sent. Should the managers drop the frozen node from the status
/// during the burst, the later INVITEs go straight to the phone, which answers 486 — also a
/// final answer, also counted.
#[test]
fn a_full_queue_to_a_frozen_node_is_answered_within_1s() {
    const INVITES: usize = 20;
    let mut farm = farm_up("127.0.160.1");
    restart_with(
        &mut farm,
        "node1",
        "sip_peer_queue",
        toml::Value::Integer(4),
    );
    let (node1, node2) = (sip_addr(&farm, "node1"), sip_addr(&farm, "node2"));

    let user = user_owned_by(&farm, "node1", "callee");
    // A second user, for an observation of the lookup path: its registrar owner is node2
    // (frozen below), its flow at node1.
    let other = user_owned_by(&farm, "node2", "owned");
    let sock = UdpSocket::bind(SocketAddr::new(client_ip(&farm, 100), 0)).expect("bind");
    register(&sock, node2, &user);
    register(&sock, node1, &other);
    let callee = Callee::start(sock);
    let mut caller = Caller::bind(client_ip(&farm, 101));

    // The way to the phone is through node2 (and node1 has its queue to node2).
    let seen = reachable(&mut caller, &callee, node1, &user, "a-warm");
    assert_eq!(seen.from, node2, "the OPTIONS did not come through node2");

    let frozen = Frozen::new(farm.pid("node2"));
    let frozen_at = Instant::now();
    let ids: Vec<String> = (0..INVITES).map(|i| format!("a-invite-{i}")).collect();
    let sent: Vec<Instant> = ids
        .iter()
        .map(|id| caller.send(node1, "INVITE", &user, id, ""))
        .collect();
    let finals = caller.finals(node1, &user, &ids, Instant::now() + 3 * BUDGET);
    let measured = frozen_at.elapsed();
    let still_listed = lists(&farm, "node1", "node2");
    // Not the queue: a lookup whose registrar owner is the frozen node (shown, not asserted).
    let at = caller.send(node1, "INVITE", &other, "a-owner", "");
    let owner = caller.finals(node1, &other, &["a-owner".to_string()], at + 5 * BUDGET);
    let owner = owner
        .values()
        .next()
        .map(|r| (r.first().to_string(), ms(r.at - at)));
    let owner_listed = lists(&farm, "node1", "node2");
    drop(frozen);

    let mut lat: Vec<(u128, u16)> = Vec::new();
    for (id, at) in ids.iter().zip(&sent) {
        let r = finals
            .get(&format!("{id}@lossless"))
            .unwrap_or_else(|| panic!("{id}: no final answer within 3 s"));
        lat.push((ms(r.at - *at), r.status().unwrap_or(0)));
    }
    let mut codes = BTreeMap::<u16, usize>::new();
    for (_, c) in &lat {
        *codes.entry(*c).or_default() += 1;
    }
    let mut sorted: Vec<u128> = lat.iter().map(|(l, _)| *l).collect();
    sorted.sort_unstable();
    let slowest = *sorted.last().unwrap();
    let fast = sorted.iter().filter(|l| **l < 100).count();
    let codes_text: Vec<String> = codes.iter().map(|(c, n)| format!("{c} x{n}")).collect();
    println!(
        "SIP lossless: an INVITE to a user whose registrar owner is the frozen node, sent {} ms \
         after the SIGSTOP: {owner:?} (final answer, ms); node2 still in node1's status after \
         it: {owner_listed}",
        ms(at - frozen_at)
    );
    println!(
        "SIP lossless: {INVITES} INVITEs to a frozen node (sip_peer_queue = 4): final answers \
         {}, slowest {slowest} ms, {fast} in < 100 ms; all in ms, sorted: {sorted:?}; \
         measured {} ms after the SIGSTOP, node2 still in node1's status then: {still_listed}",
        codes_text.join(", "),
        ms(measured)
    );
    for r in finals.values() {
        check_final(r, &callee, farm.ip("node1"));
    }
    assert!(
        slowest <= BUDGET.as_millis(),
        "an INVITE waited {slowest} ms for its final answer"
    );
    assert!(
        fast >= 1,
        "no INVITE over the queue bound was answered at once: {sorted:?}"
    );

    // After the thaw, node2 reads the batch that was in flight when node1 gave up on it
    // (its request was sent whole; only the answer was abandoned) and may deliver it: the
    // phone then rings for INVITEs whose callers already have their 503 (the phone's 486
    // goes nowhere). Shown, not asserted: waited for at most 2 s.
    reachable(&mut caller, &callee, node1, &user, "a-thawed");
    let late = |callee: &Callee| -> Vec<String> {
        ids.iter()
            .filter(|id| {
                !callee
                    .received("INVITE", &format!("{id}@lossless"))
                    .is_empty()
            })
            .cloned()
            .collect()
    };
    let late = wait_for(Duration::from_secs(2), || {
        let l = late(&callee);
        (!l.is_empty()).then_some(l)
    })
    .unwrap_or_default();
    println!(
        "SIP lossless: after SIGCONT, node2 delivered {} of the {INVITES} INVITEs to the phone \
         {late:?} (sent to it while frozen; their callers already had a 503)",
        late.len()
    );
}

// ---------------------------------------------------------------------------------------------
// B. A node gone.

/// The callee registered through node2; node2 killed (SIGKILL). An INVITE through node1 at
/// once (node2 still in the status: its batch times out, 503) and another once the status
/// has dropped node2 (node1 then delivers straight to the phone's address, which answers
/// 486): each gets a final answer within 1 s.
#[test]
fn a_gone_node_is_answered_within_1s() {
    let farm = farm_up("127.0.161.1");
    let (node1, node2) = (sip_addr(&farm, "node1"), sip_addr(&farm, "node2"));
    let user = user_owned_by(&farm, "node1", "callee");
    let sock = UdpSocket::bind(SocketAddr::new(client_ip(&farm, 100), 0)).expect("bind");
    register(&sock, node2, &user);
    let callee = Callee::start(sock);
    let mut caller = Caller::bind(client_ip(&farm, 101));
    let seen = reachable(&mut caller, &callee, node1, &user, "b-warm");
    assert_eq!(seen.from, node2, "the OPTIONS did not come through node2");

    farm.signal("node2", "-KILL");
    let killed = Instant::now();
    let mut results = Vec::new();
    for (id, when) in [
        ("b-invite-now", "right after the kill"),
        ("b-invite-later", "once node2 is out of node1's status"),
    ] {
        if id == "b-invite-later" {
            let gone = wait_for(Duration::from_secs(5), || {
                (!lists(&farm, "node1", "node2")).then(|| killed.elapsed())
            })
            .expect("node2 still in node1's status 5 s after its kill");
            println!(
                "SIP lossless: node2 out of node1's status {} ms after kill -9",
                ms(gone)
            );
        }
        let at = caller.send(node1, "INVITE", &user, id, "");
        let finals = caller.finals(node1, &user, &[id.to_string()], at + 3 * BUDGET);
        let r = finals
            .values()
            .next()
            .unwrap_or_else(|| panic!("INVITE {when}: no final answer within 3 s"))
            .clone();
        let took = r.at - at;
        let direct = callee
            .received("INVITE", &r.call_id())
            .iter()
            .find(|m| m.from.ip() == farm.ip("node1"))
            .map(|m| ms(m.at - at));
        println!(
            "SIP lossless: INVITE {when} ({} ms after kill -9): {} in {} ms{}",
            ms(at - killed),
            r.first(),
            ms(took),
            direct.map_or(String::new(), |d| format!(
                ", the phone got it straight from node1 in {d} ms"
            ))
        );
        check_final(&r, &callee, farm.ip("node1"));
        results.push((when, took));
    }
    for (when, took) in results {
        assert!(took <= BUDGET, "INVITE {when}: final answer after {took:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// C. Push back, nothing lost.

/// Default settings; 8 users registered through node2 (one phone answering 200 to each
/// MESSAGE); 2,000 MESSAGEs to them through node1, first with at most 200 outstanding, then
/// all at once. The caller retransmits like a UAC (timer E: 500 ms doubling to 4 s, RFC 3261
/// 17.1.2.2) and gives up after 40 s. Every MESSAGE gets a final answer: 200, or 503 with
/// Retry-After when a queue pushed back; none is left without one.
#[test]
fn a_burst_through_two_nodes_loses_nothing() {
    const USERS: usize = 8;
    const BURST: usize = 2_000;
    let farm = farm_up("127.0.162.1");
    let (node1, node2) = (sip_addr(&farm, "node1"), sip_addr(&farm, "node2"));
    let sock = UdpSocket::bind(SocketAddr::new(client_ip(&farm, 100), 0)).expect("bind");
    let users: Vec<String> = (0..USERS).map(|i| format!("burst{i}")).collect();
    for u in &users {
        register(&sock, node2, u);
    }
    let callee = Callee::start(sock);
    let mut caller = Caller::bind(client_ip(&farm, 101));
    let seen = reachable(&mut caller, &callee, node1, &users[0], "c-warm");
    assert_eq!(seen.from, node2, "the OPTIONS did not come through node2");

    for (phase, window) in [("c1", 200), ("c2", BURST)] {
        let before = callee.distinct("MESSAGE");
        let drops_before = udp_rcvbuf_errors();
        let outcome = burst(&mut caller, node1, &users, phase, BURST, window);
        let delivered = callee.distinct("MESSAGE") - before;
        println!(
            "SIP lossless: {BURST} MESSAGEs through node1 to {USERS} users via node2, at most \
             {window} outstanding: in {} ms, final answers {:?}, {} unanswered, {} \
             retransmissions by the caller, {} 503s without Retry-After; the phone got \
             {delivered}; datagrams the kernel dropped on full socket buffers meanwhile \
             (RcvbufErrors, whole machine): {}",
            ms(outcome.took),
            outcome.codes,
            outcome.unanswered,
            outcome.retransmissions,
            outcome.bare_503,
            udp_rcvbuf_errors().saturating_sub(drops_before)
        );
        assert_eq!(
            outcome.unanswered, 0,
            "requests left without a final answer"
        );
        assert_eq!(outcome.bare_503, 0, "503s without Retry-After");
        assert!(
            outcome.codes.keys().all(|c| [200, 503].contains(c)),
            "unexpected answers {:?}",
            outcome.codes
        );
        let ok = outcome.codes.get(&200).copied().unwrap_or(0);
        assert!(
            delivered >= ok,
            "{ok} x 200 but the phone got only {delivered}"
        );
    }
    for node in ["node1", "node2"] {
        let m = sip_figures(&farm, node);
        println!("SIP lossless: {node} after the bursts: {m:?}");
    }
}

/// The machine's count of UDP datagrams dropped on full receive buffers (`/proc/net/snmp`).
fn udp_rcvbuf_errors() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// A node's 503 figures (`sip_unreachable_total`, `sip_overload_total`) from its metrics.
fn sip_figures(farm: &Farm, node: &str) -> BTreeMap<String, i64> {
    use std::io::{Read, Write};
    let addr = farm
        .file
        .member(node)
        .and_then(|m| m.addr("metrics"))
        .unwrap_or_else(|| panic!("{node} serves no metrics"));
    let mut text = String::new();
    if let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
        let _ = s.read_to_string(&mut text);
    }
    text.lines()
        .filter(|l| l.contains("sip_unreachable_total") || l.contains("sip_overload_total"))
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            Some((name.to_string(), v.parse().ok()?))
        })
        .collect()
}

struct Burst {
    took: Duration,
    codes: BTreeMap<u16, usize>,
    unanswered: usize,
    retransmissions: usize,
    bare_503: usize,
}

/// Sends `total` MESSAGEs (ids `PHASE-N`, to the users in turn) through `proxy`, at most
/// `window` without a final answer, retransmitting each on timer E until its final answer
/// or 40 s have passed.
fn burst(
    caller: &mut Caller,
    proxy: SocketAddr,
    users: &[String],
    phase: &str,
    total: usize,
    window: usize,
) -> Burst {
    const T1: Duration = Duration::from_millis(500);
    const T2: Duration = Duration::from_secs(4);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(40);
    // id -> (message, next retransmission, interval)
    let mut open: HashMap<String, (String, Instant, Duration)> = HashMap::new();
    let mut codes = BTreeMap::<u16, usize>::new();
    let (mut next, mut retransmissions, mut bare_503, mut done) = (0, 0, 0, 0);
    while done < total && Instant::now() < deadline {
        while next < total && open.len() < window {
            let id = format!("{phase}-{next}");
            let user = &users[next % users.len()];
            let msg = request("MESSAGE", user, caller.me, &id, &format!("message {next}"));
            caller.sock.send_to(msg.as_bytes(), proxy).expect("send");
            open.insert(format!("{id}@lossless"), (msg, Instant::now() + T1, T1));
            next += 1;
        }
        // Everything that has arrived, then the retransmissions that are due.
        while let Some(r) = recv(&caller.sock, &mut caller.buf) {
            let Some(code) = r.status().filter(|c| *c >= 200) else {
                continue;
            };
            if open.remove(&r.call_id()).is_some() {
                *codes.entry(code).or_default() += 1;
                if code == 503 && r.header("Retry-After", None).is_none() {
                    bare_503 += 1;
                }
                done += 1;
            }
        }
        let now = Instant::now();
        for (msg, due, interval) in open.values_mut() {
            if *due <= now {
                caller.sock.send_to(msg.as_bytes(), proxy).expect("send");
                retransmissions += 1;
                *interval = (*interval * 2).min(T2);
                *due = now + *interval;
            }
        }
    }
    Burst {
        took: started.elapsed(),
        codes,
        unanswered: total - done,
        retransmissions,
        bare_503,
    }
}
