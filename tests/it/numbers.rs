//! The number registry through the provisioning API: allocation under heavy concurrency
//! through every manager (each number won exactly once), the active manager killed during
//! allocations (nothing acknowledged lost), every manager restarted (the registry whole),
//! porting with the PIN, and the errors: malformed numbers, unknown carriers, a carrier's
//! administrator touching another carrier's number, oversized requests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;
use onehop_admin::{ApiError, Client};
use onehop_overlay::tls::TlsFiles;
use serde_json::{json, Value};

use crate::harness::{wait_for, Farm};
use crate::provisioning::call;

fn managers(farm: &Farm) -> Vec<std::net::SocketAddr> {
    farm.file
        .members
        .iter()
        .filter(|m| m.kind == "manager")
        .map(|m| m.addr("api").expect("ports.api"))
        .collect()
}

fn client_of(farm: &Farm, cert: &str, managers: Vec<std::net::SocketAddr>) -> Client {
    let certs = farm.path().join("certs");
    Client::new(
        managers,
        &TlsFiles {
            ca: farm.file.ca.clone(),
            cert: certs.join(format!("{cert}.pem")),
            key: certs.join(format!("{cert}.key")),
            crl: None,
        },
    )
    .unwrap()
}

/// The farm's (farm-wide) admin certificate, trying `managers` in this order.
fn admin_via(farm: &Farm, managers: Vec<std::net::SocketAddr>) -> Client {
    Client::new(
        managers,
        &farm.file.client_tls(farm.file.admin.as_ref().unwrap()),
    )
    .unwrap()
}

fn farm_admin(farm: &Farm) -> Client {
    Client::for_farm(farm.path()).unwrap()
}

fn ok(c: &Client, method: Method, path: &str, body: Value) -> Value {
    let (s, v) = call(c, method, path, Some(body));
    assert!((200..300).contains(&s), "{path}: {s} {v}");
    v
}

fn leader(c: &Client) -> Option<String> {
    let (s, v) = call(c, Method::GET, "/v1/status", None);
    (s == 200)
        .then(|| v["leader"].as_str().map(str::to_string))
        .flatten()
}

/// Every number of the block starting at `first`, as `c`'s manager lists it.
fn listed(c: &Client, first: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut q = format!("/v1/numbers?block={}&limit=1000", first.replace('+', "%2B"));
        if let Some(a) = &after {
            q.push_str(&format!("&after={}", a.replace('+', "%2B")));
        }
        let (s, v) = call(c, Method::GET, &q, None);
        assert_eq!(s, 200, "{v}");
        out.extend(v["numbers"].as_array().unwrap().iter().cloned());
        match v["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => return out,
        }
    }
}

fn multi_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// What one allocation request got.
enum Got {
    Won(String),
    Lost,
    Failed(String),
}

/// Sends `requests` (number or block, idempotency key) at once through `clients` in turn,
/// each client with at most `per_client` connections open; `on_ack` sees each win as it
/// lands. Returns the outcomes in request order and each request's latency.
fn allocate_all(
    clients: Vec<Client>,
    requests: Vec<(Value, String)>,
    per_client: usize,
    on_ack: impl Fn(usize) + Send + Sync + 'static,
) -> (Vec<Got>, Vec<Duration>) {
    let rt = multi_rt();
    let on_ack = Arc::new(on_ack);
    rt.block_on(async move {
        let clients: Vec<(Arc<Client>, Arc<tokio::sync::Semaphore>)> = clients
            .into_iter()
            .map(|c| {
                (
                    Arc::new(c),
                    Arc::new(tokio::sync::Semaphore::new(per_client)),
                )
            })
            .collect();
        let acks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::with_capacity(requests.len());
        for (i, (body, key)) in requests.into_iter().enumerate() {
            let (c, slots) = clients[i % clients.len()].clone();
            let acks = acks.clone();
            let on_ack = on_ack.clone();
            tasks.push(tokio::spawn(async move {
                let _slot = slots.acquire_owned().await.unwrap();
                let start = Instant::now();
                let r: Result<Value, ApiError> = c
                    .call_idempotent(Method::POST, "/v1/numbers", Some(&body), &key)
                    .await;
                let took = start.elapsed();
                let got = match r {
                    Ok(v) => {
                        let n = acks.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        on_ack(n);
                        Got::Won(v["number"].as_str().unwrap_or("?").to_string())
                    }
                    Err(ApiError::Status { status: 409, body })
                        if body.message.contains("allocated already") =>
                    {
                        Got::Lost
                    }
                    Err(e) => Got::Failed(e.to_string()),
                };
                (got, took)
            }));
        }
        let mut got = Vec::new();
        let mut lat = Vec::new();
        for t in tasks {
            let (g, d) = t.await.unwrap();
            got.push(g);
            lat.push(d);
        }
        (got, lat)
    })
}

/// A farm with carriers ACME and BETA and ACME's 100,000-number block.
fn registry_farm(base_ip: &str) -> (Farm, Client) {
    let farm = Farm::up(
        base_ip,
        &["--nodes", "1", "--dns", "0", "--no-demo-accounts"],
    );
    let c = farm_admin(&farm);
    ok(
        &c,
        Method::POST,
        "/v1/carriers",
        json!({"ocn": "ACME", "name": "Acme"}),
    );
    ok(
        &c,
        Method::POST,
        "/v1/carriers",
        json!({"ocn": "BETA", "name": "Beta"}),
    );
    ok(
        &c,
        Method::POST,
        "/v1/blocks",
        json!({"first": "+15550000000", "last": "+15550099999", "carrier": "ACME"}),
    );
    (farm, c)
}

/// 10,000 allocation requests at once from four clients through the three managers, for
/// 2,500 numbers each asked four times: every number won by exactly one request, every other
/// told it lost (409); then the figures.
#[test]
fn concurrent_allocations_through_every_manager_give_each_number_to_exactly_one() {
    const NUMBERS: usize = 2_500;
    const ASKS: usize = 4;
    let (farm, c) = registry_farm("127.0.40.1");
    let ms = managers(&farm);
    // Four clients: one per manager, and one that starts at the last.
    let clients: Vec<Client> = (0..4)
        .map(|i| {
            let mut order = ms.clone();
            order.rotate_left(i % ms.len());
            admin_via(&farm, order)
        })
        .collect();
    // Request k asks for number k % NUMBERS, so each number's askers are spread over clients.
    let requests: Vec<(Value, String)> = (0..NUMBERS * ASKS)
        .map(|k| {
            let n = format!("+155500{:05}", k % NUMBERS);
            (json!({ "number": n }), format!("conc-{k}"))
        })
        .collect();
    let start = Instant::now();
    let (got, mut lat) = allocate_all(clients, requests, 64, |_| {});
    let took = start.elapsed();
    let mut winners: BTreeMap<String, usize> = BTreeMap::new();
    let mut lost = 0;
    let mut failed = Vec::new();
    for g in &got {
        match g {
            Got::Won(n) => *winners.entry(n.clone()).or_default() += 1,
            Got::Lost => lost += 1,
            Got::Failed(e) => failed.push(e.clone()),
        }
    }
    lat.sort();
    println!(
        "NUMBERS allocation: {} requests (4 clients, 3 managers, 64 connections per client) in {:.2} s: {:.0} requests/s, latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} won, {} lost, {} failed",
        got.len(),
        took.as_secs_f64(),
        got.len() as f64 / took.as_secs_f64(),
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        percentile(&lat, 1.0).as_secs_f64() * 1e3,
        winners.len(),
        lost,
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "requests failed: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert_eq!(winners.len(), NUMBERS, "every number allocated");
    assert!(
        winners.values().all(|w| *w == 1),
        "a number won twice: {:?}",
        winners.iter().find(|(_, w)| **w > 1)
    );
    assert_eq!(
        lost,
        NUMBERS * (ASKS - 1),
        "every other request told it lost"
    );
    // Each manager holds exactly those numbers.
    for (i, m) in ms.iter().enumerate() {
        let one = admin_via(&farm, vec![*m]);
        let held = wait_for(Duration::from_secs(10), || {
            let l = listed(&one, "+15550000000");
            (l.len() == NUMBERS).then_some(l)
        });
        let held = held.unwrap_or_else(|| panic!("manager {i} does not list {NUMBERS} numbers"));
        let set: BTreeSet<&str> = held.iter().filter_map(|n| n["number"].as_str()).collect();
        assert!(set.iter().copied().eq(winners.keys().map(String::as_str)));
    }
    let (_, b) = call(&c, Method::GET, "/v1/blocks/+15550000000", None);
    assert_eq!(b["allocated"].as_u64(), Some(NUMBERS as u64), "{b}");
}

/// The active manager killed with -9 while 3,000 next-free allocations are under way: every
/// acknowledged allocation is in the registry, none twice; then every manager killed and
/// restarted: the registry is whole on each.
#[test]
fn the_active_manager_killed_during_allocations_loses_no_acknowledged_one() {
    const REQUESTS: usize = 3_000;
    let (mut farm, c) = registry_farm("127.0.41.1");
    let ms = managers(&farm);
    let clients: Vec<Client> = (0..3)
        .map(|i| {
            let mut order = ms.clone();
            order.rotate_left(i);
            admin_via(&farm, order)
        })
        .collect();
    let requests: Vec<(Value, String)> = (0..REQUESTS)
        .map(|k| (json!({ "block": "+15550000000" }), format!("kill-{k}")))
        .collect();
    let old = leader(&c).expect("a leader");
    let pid = farm.pid(&old);
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let k = killed.clone();
    let (got, _) = allocate_all(clients, requests, 16, move |acked| {
        if acked == 500 && !k.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    });
    assert!(
        killed.load(std::sync::atomic::Ordering::SeqCst),
        "the leader was killed"
    );
    println!("NUMBERS killed the active manager {old} after 500 acknowledged allocations");
    let mut acked = BTreeSet::new();
    let mut failed = Vec::new();
    for g in &got {
        match g {
            Got::Won(n) => assert!(acked.insert(n.clone()), "{n} acknowledged twice"),
            Got::Lost => failed.push("lost a next-free allocation".to_string()),
            Got::Failed(e) => failed.push(e.clone()),
        }
    }
    println!(
        "NUMBERS {} acknowledged, {} failed (a failure is an answer the client got, never a silent loss)",
        acked.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "{:?}", &failed[..failed.len().min(5)]);
    assert_eq!(acked.len(), REQUESTS);
    let check = |c: &Client, who: &str| {
        let held = wait_for(Duration::from_secs(30), || {
            let l = listed(c, "+15550000000");
            (l.len() == REQUESTS).then_some(l)
        })
        .unwrap_or_else(|| panic!("{who}: the registry does not hold {REQUESTS} numbers"));
        let set: BTreeSet<String> = held
            .iter()
            .filter_map(|n| n["number"].as_str().map(str::to_string))
            .collect();
        assert_eq!(set, acked, "{who}: the acknowledged allocations");
    };
    farm.restart(&old);
    check(&c, "after the failover");
    // Every manager killed and restarted: each holds the whole registry.
    let names = farm.names("manager");
    for m in &names {
        farm.signal(m, "-KILL");
    }
    for m in &names {
        farm.restart(m);
    }
    for (i, m) in names.iter().enumerate() {
        let one = admin_via(&farm, vec![ms[i]]);
        check(&one, m);
        let (s, b) = call(&one, Method::GET, "/v1/blocks/+15550000000", None);
        assert_eq!(
            (s, b["allocated"].as_u64()),
            (200, Some(REQUESTS as u64)),
            "{m}"
        );
    }
}

/// Who may do what, and the errors a client gets.
#[test]
fn numbers_refuse_bad_input_other_carriers_and_wrong_pins() {
    let (farm, c) = registry_farm("127.0.42.1");
    ok(
        &c,
        Method::POST,
        "/v1/blocks",
        json!({"first": "+15550200000", "last": "+15550200999", "carrier": "BETA"}),
    );
    farm.issue("acme-ops", "admin", &["--carriers", "ACME"]);
    farm.issue("beta-ops", "admin", &["--carriers", "beta"]);
    let acme = client_of(&farm, "acme-ops", managers(&farm));
    let beta = client_of(&farm, "beta-ops", managers(&farm));
    let code = |r: (u16, Value)| (r.0, r.1["code"].as_str().unwrap_or("").to_string());

    // Malformed numbers: 422 naming the field.
    for bad in [
        "15550000001",
        "+1555abc",
        "+0155500",
        "+1234567890123456",
        "",
    ] {
        let (s, v) = call(
            &acme,
            Method::POST,
            "/v1/numbers",
            Some(json!({"number": bad})),
        );
        assert_eq!(
            (s, v["field"].as_str()),
            (422, Some("number")),
            "{bad:?}: {v}"
        );
    }
    let (s, v) = call(&acme, Method::GET, "/v1/numbers/+1555x", None);
    assert_eq!(s, 422, "{v}");
    // Unknown carriers.
    let (s, v) = call(
        &c,
        Method::POST,
        "/v1/blocks",
        Some(json!({"first": "+4930000", "last": "+4930999", "carrier": "NOPE"})),
    );
    assert_eq!((s, v["field"].as_str()), (404, Some("carrier")), "{v}");
    // A carrier's administrator: its own numbers, not another carrier's, no farm operations.
    let (s, v) = call(
        &acme,
        Method::POST,
        "/v1/numbers",
        Some(json!({"number": "+15550000001", "caller_name": "Alice", "pin": "4321"})),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["has_pin"], json!(true));
    assert!(
        !v.to_string().contains("4321"),
        "the PIN never comes back: {v}"
    );
    assert_eq!(
        code(call(
            &beta,
            Method::POST,
            "/v1/numbers",
            Some(json!({"number": "+15550000002"}))
        )),
        (403, "forbidden".into())
    );
    assert_eq!(
        code(call(
            &beta,
            Method::PATCH,
            "/v1/numbers/+15550000001",
            Some(json!({"caller_name": "Mallory"}))
        )),
        (403, "forbidden".into())
    );
    assert_eq!(
        code(call(
            &beta,
            Method::DELETE,
            "/v1/numbers/+15550000001",
            None
        )),
        (403, "forbidden".into())
    );
    assert_eq!(
        code(call(&beta, Method::GET, "/v1/numbers/+15550000001", None)).0,
        403
    );
    assert_eq!(
        code(call(
            &acme,
            Method::POST,
            "/v1/carriers",
            Some(json!({"ocn": "GAMMA"}))
        )),
        (403, "forbidden".into())
    );
    assert_eq!(code(call(&acme, Method::GET, "/v1/accounts", None)).0, 403);
    // The public properties are anyone's.
    let (s, v) = call(&beta, Method::GET, "/v1/numbers/+15550000001/whois", None);
    assert_eq!(
        (s, v["caller_name"].as_str(), v["carrier"].as_str()),
        (200, Some("Alice"), Some("ACME"))
    );
    // Oversized and malformed bodies.
    let big = "x".repeat(64 << 10);
    let (s, v) = call(
        &acme,
        Method::POST,
        "/v1/numbers",
        Some(json!({"number": "+15550000003", "assignee": big})),
    );
    assert_eq!((s, v["code"].as_str()), (413, Some("too_large")), "{v}");
    let (s, v) = call(
        &acme,
        Method::POST,
        "/v1/numbers",
        Some(json!({"number": "+15550000003", "colour": "red"})),
    );
    assert_eq!(s, 422, "{v}");
    let (s, v) = call(
        &acme,
        Method::POST,
        "/v1/numbers",
        Some(json!({"number": "+15550000003", "route": {"uri": "http://x"}})),
    );
    assert_eq!((s, v["field"].as_str()), (422, Some("route.uri")), "{v}");
    // Porting: only the receiving carrier asks, with the subscriber's PIN.
    let port = |who: &Client, pin: &str| {
        call(
            who,
            Method::POST,
            "/v1/numbers/+15550000001/port",
            Some(
                json!({"carrier": "BETA", "pin": pin, "route": {"uri": "sip:+15550000001@beta.example"}}),
            ),
        )
    };
    assert_eq!(code(port(&acme, "4321")), (403, "forbidden".into()));
    let t = Instant::now();
    assert_eq!(code(port(&beta, "1111")), (403, "wrong_pin".into()));
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "a wrong PIN is answered slowly"
    );
    assert_eq!(code(port(&beta, "12")), (422, "invalid".into()));
    let (s, v) = port(&beta, "4321");
    assert_eq!(
        (s, v["carrier"].as_str(), v["sip_uri"].as_str()),
        (200, Some("BETA"), Some("sip:+15550000001@beta.example")),
        "{v}"
    );
    // Now BETA's: ACME may no longer change it.
    assert_eq!(
        code(call(
            &acme,
            Method::PATCH,
            "/v1/numbers/+15550000001",
            Some(json!({"location": "x"}))
        ))
        .0,
        403
    );
    let (s, v) = call(&beta, Method::GET, "/v1/numbers/+15550000001/history", None);
    assert_eq!(s, 200);
    let actions: Vec<&str> = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, ["allocated", "port refused", "ported"], "{v}");
    // Five wrong PINs lock porting.
    ok(
        &beta,
        Method::PATCH,
        "/v1/numbers/+15550000001",
        json!({"pin": "9999"}),
    );
    for _ in 0..5 {
        let (s, _) = call(
            &acme,
            Method::POST,
            "/v1/numbers/+15550000001/port",
            Some(json!({"carrier": "ACME", "pin": "0000"})),
        );
        assert_eq!(s, 403);
    }
    let (s, v) = call(
        &acme,
        Method::POST,
        "/v1/numbers/+15550000001/port",
        Some(json!({"carrier": "ACME", "pin": "9999"})),
    );
    assert_eq!((s, v["code"].as_str()), (429, Some("locked")), "{v}");
    // The registry's change feed: public fields, never an assignee or a PIN.
    let (s, v) = call(&beta, Method::GET, "/v1/numbers/changes?since=0", None);
    assert_eq!(s, 200);
    let text = v.to_string();
    assert!(text.contains("number_put"), "{text}");
    assert!(
        !text.contains("\"pin") && !text.contains("assignee"),
        "no PIN, no assignee: {text}"
    );
}
