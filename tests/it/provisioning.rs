//! The provisioning API of the managers, spoken over HTTPS (the `onehop-admin` client library
//! and curl) and through the `onehop-admin` command line: every operation, its errors, who may
//! use it, and that nothing is lost or doubled when managers die.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use onehop_admin::Client;
use onehop_overlay::tls::TlsFiles;
use serde_json::{json, Value};

use crate::harness::{wait_for, within_budget, Farm};

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// One HTTPS request; the status and the JSON body (null when empty).
pub(crate) fn call(c: &Client, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    try_call(c, method.clone(), path, body)
        .unwrap_or_else(|e| panic!("{method} {path}: no answer: {e}"))
}

/// One HTTPS request; the status and the JSON body (null when empty), or why no manager
/// answered (the client has already retried a read on every manager for 15 s).
pub(crate) fn try_call(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), onehop_admin::ApiError> {
    let bytes = body
        .map(|b| Bytes::from(serde_json::to_vec(&b).unwrap()))
        .unwrap_or_default();
    let (status, bytes) = rt().block_on(c.raw(method, path, "application/json", bytes, false))?;
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{path}: not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    Ok((status, v))
}

fn admin(farm: &Farm, args: &[&str]) -> std::process::Output {
    let dir = farm.path().to_str().unwrap().to_string();
    let mut all = vec!["--farm", dir.as_str()];
    all.extend_from_slice(args);
    farm.tool("onehop-admin", &all)
}

fn admin_ok(farm: &Farm, args: &[&str]) -> String {
    let out = admin(farm, args);
    assert!(
        out.status.success(),
        "onehop-admin {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn managers(farm: &Farm) -> Vec<SocketAddr> {
    farm.file
        .members
        .iter()
        .filter(|m| m.kind == "manager")
        .map(|m| m.addr("api").expect("ports.api in farm.json"))
        .collect()
}

fn client_as(farm: &Farm, name: &str) -> Client {
    let certs = farm.path().join("certs");
    Client::new(
        managers(farm),
        &TlsFiles {
            ca: farm.file.ca.clone(),
            cert: certs.join(format!("{name}.pem")),
            key: certs.join(format!("{name}.key")),
            crl: None,
        },
    )
    .expect("client")
}

fn csv(rows: std::ops::Range<u32>, extra: &str) -> String {
    let mut s = String::from("user,domain,password,display_name\n");
    for i in rows {
        s.push_str(&format!("u{i:05},example.test,pass-{i:08},User {i}\n"));
    }
    s.push_str(extra);
    s
}

#[test]
fn every_provisioning_operation_over_https_and_onehop_admin() {
    let farm = Farm::up("127.0.180.1", &["--nodes", "1", "--dns", "0"]);
    let c = Client::for_farm(farm.path()).expect("client");

    // The demo accounts of `onehop-farm up`.
    let listed = admin_ok(&farm, &["accounts", "list"]);
    assert!(
        listed.contains("alice@example.test") && listed.contains("bob@example.test"),
        "{listed}"
    );

    // Domains.
    let (s, v) = call(
        &c,
        Method::POST,
        "/v1/domains",
        Some(json!({"name": "Other.TEST"})),
    );
    assert_eq!((s, v["name"].as_str()), (201, Some("other.test")), "{v}");
    let out = admin(&farm, &["domains", "add", "other.test"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("409"),
        "{out:?}"
    );
    let (s, v) = call(
        &c,
        Method::POST,
        "/v1/domains",
        Some(json!({"name": "bad_domain"})),
    );
    assert_eq!((s, v["field"].as_str()), (422, Some("name")), "{v}");
    assert_eq!(
        admin_ok(&farm, &["domains", "list"]),
        "example.test\nother.test\n"
    );
    assert_eq!(call(&c, Method::GET, "/v1/domains/other.test", None).0, 200);

    // Accounts: created, refused with the status and the field that say why.
    let (s, v) = call(
        &c,
        Method::POST,
        "/v1/accounts",
        Some(
            json!({"user": "carol", "domain": "example.test", "password": "carol-secret", "display_name": "Carol"}),
        ),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["aor"], "carol@example.test");
    let text = v.to_string();
    assert!(
        !text.contains("ha1") && !text.contains("carol-secret"),
        "{text}"
    );
    for (body, status, field) in [
        (
            json!({"user": "carol", "domain": "example.test", "password": "carol-secret"}),
            409,
            "user",
        ),
        (
            json!({"user": "dave", "domain": "nowhere.test", "password": "dave-secret"}),
            404,
            "domain",
        ),
        (
            json!({"user": "da ve", "domain": "example.test", "password": "dave-secret"}),
            422,
            "user",
        ),
        (
            json!({"user": "dave", "domain": "example.test", "pasword": "dave-secret"}),
            422,
            "pasword",
        ),
        (
            json!({"user": "dave", "domain": "example.test", "password": "short"}),
            422,
            "password",
        ),
        (
            json!({"user": "dave", "domain": "example.test"}),
            422,
            "password",
        ),
        (
            json!({"domain": "example.test", "password": "dave-secret"}),
            422,
            "user",
        ),
        (
            json!({"user": "dave", "domain": "example.test", "password": "dave-secret", "ha1_md5": "00"}),
            422,
            "password",
        ),
        (
            json!({"user": "dave", "domain": "example.test", "ha1_md5": "00", "ha1_sha256": "11"}),
            422,
            "ha1_md5",
        ),
    ] {
        let (s, v) = call(&c, Method::POST, "/v1/accounts", Some(body.clone()));
        assert_eq!(
            (s, v["field"].as_str()),
            (status, Some(field)),
            "{body} -> {v}"
        );
        assert!(!v["message"].as_str().unwrap_or("").is_empty(), "{v}");
    }
    // HA1 digests instead of a password (as exported from another registrar).
    let (s, v) = call(
        &c,
        Method::POST,
        "/v1/accounts",
        Some(json!({"user": "erin", "domain": "example.test",
            "ha1_md5": "0".repeat(32), "ha1_sha256": "1".repeat(64), "enabled": false})),
    );
    assert_eq!((s, v["enabled"].as_bool()), (201, Some(false)), "{v}");
    let (s, v) = call(&c, Method::GET, "/v1/accounts/carol@EXAMPLE.test", None);
    assert_eq!((s, v["display_name"].as_str()), (200, Some("Carol")), "{v}");
    assert_eq!(
        call(&c, Method::GET, "/v1/accounts/nobody@example.test", None).0,
        404
    );
    assert_eq!(
        call(&c, Method::GET, "/v1/accounts/not-an-aor", None).0,
        422
    );

    // Update through onehop-admin: a new password from standard input, blocked.
    let mut child = Command::new(farm.path().join("bin/onehop-admin"))
        .args([
            "--farm",
            farm.path().to_str().unwrap(),
            "accounts",
            "update",
            "carol@example.test",
            "--password-stdin",
            "--disable",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"carol-new-secret\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("[blocked]"),
        "{out:?}"
    );
    let (_, v) = call(&c, Method::GET, "/v1/accounts/carol@example.test", None);
    assert_eq!(v["enabled"], false);
    assert!(
        v["updated_version"].as_u64() > v["created_version"].as_u64(),
        "{v}"
    );
    // A null display name clears it; an unknown account is 404.
    let (s, v) = call(
        &c,
        Method::PATCH,
        "/v1/accounts/carol@example.test",
        Some(json!({"display_name": null})),
    );
    assert_eq!((s, v["display_name"].clone()), (200, Value::Null), "{v}");
    assert_eq!(
        call(
            &c,
            Method::PATCH,
            "/v1/accounts/zed@example.test",
            Some(json!({"enabled": true}))
        )
        .0,
        404
    );
    // A generated password is printed once.
    let out = admin_ok(
        &farm,
        &[
            "accounts",
            "add",
            "frank@example.test",
            "--generate-password",
        ],
    );
    assert!(out.contains("password for frank@example.test: "), "{out}");

    // Listing, a page at a time and filtered.
    let (_, v) = call(&c, Method::GET, "/v1/accounts?limit=2", None);
    assert_eq!(v["accounts"].as_array().unwrap().len(), 2);
    let next = v["next"].as_str().expect("a next page").to_string();
    let (_, v2) = call(
        &c,
        Method::GET,
        &format!("/v1/accounts?limit=100&after={next}"),
        None,
    );
    let total = 2 + v2["accounts"].as_array().unwrap().len();
    assert_eq!(total, 5, "alice, bob, carol, erin and frank: {v} {v2}");
    assert_eq!(v2["next"], Value::Null);
    let (_, v) = call(
        &c,
        Method::GET,
        "/v1/accounts?domain=example.test&prefix=b",
        None,
    );
    let aors: Vec<&str> = v["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["aor"].as_str())
        .collect();
    assert_eq!(aors, vec!["bob@example.test"]);
    assert_eq!(call(&c, Method::GET, "/v1/accounts?limit=0", None).0, 422);

    // Aliases.
    let out = admin_ok(
        &farm,
        &[
            "aliases",
            "add",
            "+15550100@other.test",
            "carol@example.test",
        ],
    );
    assert!(out.contains("+15550100@other.test"), "{out}");
    let (s, v) = call(&c, Method::GET, "/v1/aliases/+15550100@other.test", None);
    assert_eq!(
        (s, v["aor"].as_str()),
        (200, Some("carol@example.test")),
        "{v}"
    );
    let (s, _) = call(
        &c,
        Method::POST,
        "/v1/accounts/carol@example.test/aliases",
        Some(json!({"alias": "bob@example.test"})),
    );
    assert_eq!(s, 409, "an alias over an account");
    let (s, _) = call(&c, Method::DELETE, "/v1/domains/other.test", None);
    assert_eq!(s, 409, "a domain with an alias");
    assert_eq!(
        call(&c, Method::DELETE, "/v1/aliases/+15550100@other.test", None).0,
        204
    );
    assert_eq!(
        call(&c, Method::DELETE, "/v1/aliases/+15550100@other.test", None).0,
        404
    );
    assert_eq!(
        call(&c, Method::DELETE, "/v1/domains/other.test", None).0,
        204
    );
    assert_eq!(
        call(&c, Method::DELETE, "/v1/domains/other.test", None).0,
        404
    );

    // A bulk import: the dry run adds nothing, the import adds each good row once, a second
    // run of the same import adds nothing more and reports the same.
    let file = farm.path().join("subs.csv");
    std::fs::write(
        &file,
        csv(0..50, "bad user,example.test,pass-bad-1,x\nu00001,example.test,pass-dup-1,dup\nzz,nowhere.test,pass-zz-12,x\n"),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let out = admin(
        &farm,
        &["--json", "import", f, "--dry-run", "--chunk", "20"],
    );
    assert_eq!(out.status.code(), Some(2), "rows were refused: {out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["rows"].as_u64(), v["added"].as_u64()),
        (Some(53), Some(50)),
        "{v}"
    );
    let rows: Vec<u64> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["row"].as_u64())
        .collect();
    assert_eq!(rows, vec![51, 52, 53], "{v}");
    assert_eq!(
        call(&c, Method::GET, "/v1/status", None).1["accounts"],
        5,
        "a dry run adds nothing"
    );
    for run in 0..2 {
        let out = admin(
            &farm,
            &[
                "--json",
                "import",
                f,
                "--chunk",
                "20",
                "--import-id",
                "subs-1",
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (v["added"].as_u64(), v["failed"].as_u64()),
            (Some(50), Some(3)),
            "run {run}: {v}"
        );
        assert_eq!(
            v["replayed_batches"].as_u64(),
            Some(if run == 0 { 0 } else { 4 }),
            "run {run}: {v}"
        );
        let fields: Vec<&str> = v["errors"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["code"].as_str())
            .collect();
        assert_eq!(
            fields,
            vec!["invalid", "exists", "not_found"],
            "run {run}: {v}"
        );
    }
    assert_eq!(call(&c, Method::GET, "/v1/status", None).1["accounts"], 55);

    // The change log: every change once, in order, with no credentials in it.
    let (_, v) = call(&c, Method::GET, "/v1/changes?since=0&limit=1000", None);
    let versions: Vec<u64> = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["version"].as_u64())
        .collect();
    assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());
    assert_eq!(v["version"].as_u64(), Some(versions.len() as u64));
    assert!(
        !v.to_string().contains("ha1"),
        "credentials in the change log"
    );
    let (_, later) = call(
        &c,
        Method::GET,
        &format!("/v1/changes?since={}", versions.len() - 2),
        None,
    );
    assert_eq!(later["changes"].as_array().unwrap().len(), 2);

    // Removal.
    assert_eq!(
        call(&c, Method::DELETE, "/v1/accounts/carol@example.test", None).0,
        204
    );
    assert_eq!(
        call(&c, Method::GET, "/v1/accounts/carol@example.test", None).0,
        404
    );
    assert_eq!(
        call(&c, Method::DELETE, "/v1/accounts/carol@example.test", None).0,
        404
    );

    // curl, with the admin certificate, with a node's, and with none.
    let api = managers(&farm)[1];
    let certs = farm.path().join("certs");
    let curl = |cert: Option<&str>| {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--max-time",
            "10",
            "--cacert",
        ])
        .arg(&farm.file.ca);
        if let Some(name) = cert {
            cmd.arg("--cert").arg(certs.join(format!("{name}.pem")));
            cmd.arg("--key").arg(certs.join(format!("{name}.key")));
        }
        cmd.arg(format!("https://{api}/v1/status"));
        let out = cmd.output().expect("curl (apt-get install curl)");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = curl(Some("admin"));
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.ends_with("\n200") && text.contains("\"leader\""),
        "{text}"
    );
    let (_, text) = curl(Some("node1"));
    assert!(
        text.ends_with("\n403") && text.contains("forbidden"),
        "{text}"
    );
    let (code, text) = curl(None);
    assert_ne!(
        code,
        Some(0),
        "no client certificate must fail the handshake: {text}"
    );
    let (s, v) = call(
        &client_as(&farm, "monitor"),
        Method::GET,
        "/v1/accounts",
        None,
    );
    assert_eq!((s, v["code"].as_str()), (403, Some("forbidden")), "{v}");
}

#[test]
fn a_revoked_admin_certificate_is_refused_within_a_second() {
    let farm = Farm::up(
        "127.0.181.1",
        &["--nodes", "1", "--dns", "0", "--no-demo-accounts"],
    );
    farm.issue("ops", "admin", &[]);
    let ops = client_as(&farm, "ops");
    assert_eq!(call(&ops, Method::GET, "/v1/status", None).0, 200);
    let out = farm.revoke("ops", true);
    assert!(out.status.success(), "{out:?}");
    let start = Instant::now();
    let refused = wait_for(Duration::from_secs(5), || {
        let r = rt().block_on(ops.raw(
            Method::GET,
            "/v1/status",
            "application/json",
            Bytes::new(),
            false,
        ));
        let took = start.elapsed();
        r.map_err(|e| println!("refused after {took:?}: {e}"))
            .is_err()
            .then_some(took)
    });
    within_budget(
        "revoked admin refused by the provisioning API",
        refused,
        Duration::from_secs(1),
        1.5,
    );
    // The farm's own admin still works.
    let c = Client::for_farm(farm.path()).unwrap();
    assert_eq!(call(&c, Method::GET, "/v1/status", None).0, 200);
}

/// A farm of one node without the demo accounts, its admin client, and the domain
/// example.test provisioned.
fn farm_with_domain(base_ip: &str) -> (Farm, Client) {
    let farm = Farm::up(
        base_ip,
        &["--nodes", "1", "--dns", "0", "--no-demo-accounts"],
    );
    let c = Client::for_farm(farm.path()).unwrap();
    let (s, v) = call(
        &c,
        Method::POST,
        "/v1/domains",
        Some(json!({"name": "example.test"})),
    );
    assert_eq!(s, 201, "{v}");
    (farm, c)
}

fn leader(c: &Client) -> Option<String> {
    let (s, v) = call(c, Method::GET, "/v1/status", None);
    (s == 200)
        .then(|| v["leader"].as_str().map(str::to_string))
        .flatten()
}

#[test]
fn the_leader_killed_during_an_import_and_every_manager_restarted_lose_no_account() {
    let (mut farm, c) = farm_with_domain("127.0.182.1");
    let file = farm.path().join("big.csv");
    std::fs::write(&file, csv(0..10_000, "")).unwrap();

    // Import 10,000 rows in chunks of 250; kill -9 the leader once some have landed.
    let import = |farm: &Farm| {
        Command::new(farm.path().join("bin/onehop-admin"))
            .args(["--farm", farm.path().to_str().unwrap(), "--json", "import"])
            .arg(&file)
            .args(["--chunk", "250", "--import-id", "big-1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let child = import(&farm);
    let landed = wait_for(Duration::from_secs(60), || {
        let (_, v) = call(&c, Method::GET, "/v1/status", None);
        v["accounts"].as_u64().filter(|n| *n >= 1_000)
    });
    assert!(landed.is_some(), "the import did not start");
    let old = leader(&c).expect("a leader");
    farm.signal(&old, "-KILL");
    println!("killed the leader {old} with {landed:?} accounts in");
    let out = child.wait_with_output().unwrap();
    let report: Value = if out.status.success() {
        serde_json::from_slice(&out.stdout).unwrap()
    } else {
        // The import says which rows are done; the same command resumes it.
        println!(
            "import interrupted: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = import(&farm).wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(
        (report["added"].as_u64(), report["failed"].as_u64()),
        (Some(10_000), Some(0)),
        "no row lost, none refused as a double: {}",
        {
            let mut r = report.clone();
            r["errors"] = json!(r["errors"].as_array().map(|e| e.len()));
            r
        }
    );
    farm.restart(&old);
    let count = |c: &Client| call(c, Method::GET, "/v1/status", None).1["accounts"].as_u64();
    assert_eq!(count(&c), Some(10_000));
    // Every account was written once: one account_put per row in the change log.
    let mut puts = std::collections::BTreeMap::<String, u32>::new();
    let mut since = 0;
    loop {
        let (_, v) = call(
            &c,
            Method::GET,
            &format!("/v1/changes?since={since}&limit=10000"),
            None,
        );
        let changes = v["changes"].as_array().unwrap().clone();
        if changes.is_empty() {
            break;
        }
        for ch in &changes {
            if ch["kind"] == "account_put" {
                *puts
                    .entry(ch["account"]["aor"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
            since = ch["version"].as_u64().unwrap();
        }
    }
    assert_eq!(puts.len(), 10_000);
    assert!(puts.values().all(|n| *n == 1), "an account written twice");

    // Every manager killed and restarted: every account is still there, on each of them.
    let names = farm.names("manager");
    for m in &names {
        farm.signal(m, "-KILL");
    }
    for m in &names {
        farm.restart(m);
    }
    for (i, m) in names.iter().enumerate() {
        let one = Client::new(
            vec![managers(&farm)[i]],
            &farm.file.client_tls(farm.file.admin.as_ref().unwrap()),
        )
        .unwrap();
        // A manager just started may not listen yet: an error here is a "not yet".
        let mut last = None;
        let n = wait_for(Duration::from_secs(30), || {
            match try_call(&one, Method::GET, "/v1/status", None) {
                Ok((_, v)) => v["accounts"].as_u64().filter(|n| *n == 10_000),
                Err(e) => {
                    last = Some(e.to_string());
                    None
                }
            }
        });
        assert_eq!(
            n,
            Some(10_000),
            "{m} after the restart (last error: {last:?})"
        );
        let (s, v) = call(&one, Method::GET, "/v1/accounts/u09999@example.test", None);
        assert_eq!(
            (s, v["display_name"].as_str()),
            (200, Some("User 9999")),
            "{m}: {v}"
        );
    }
    assert!(leader(&c).is_some(), "a leader after the restart");
}

/// The node that owns `aor` on the registrar ring, by the lookup interface.
pub(crate) fn owner_of(farm: &Farm, aor: &str) -> String {
    let ip = farm
        .lookup("node1")
        .ask(&format!("lookup registrar for {aor}"));
    farm.file
        .members
        .iter()
        .find(|m| m.ip.to_string() == ip)
        .unwrap_or_else(|| panic!("no member at {ip:?}"))
        .name
        .clone()
}

pub(crate) fn provision_version(farm: &Farm, node: &str) -> i64 {
    let m = farm.file.member(node).unwrap();
    crate::harness::scrape(m.addr("metrics").unwrap())
        .and_then(|m| m.get("onehop_provision_version").copied())
        .unwrap_or(0)
}

#[test]
fn an_account_change_reaches_its_owner_within_a_second() {
    let farm = Farm::up_with_rings(
        "127.0.183.1",
        &["--dns", "0", "--no-demo-accounts"],
        &["registrar"],
    );
    let c = Client::for_farm(farm.path()).unwrap();
    assert_eq!(
        call(
            &c,
            Method::POST,
            "/v1/domains",
            Some(json!({"name": "example.test"}))
        )
        .0,
        201
    );
    for (i, user) in ["dora", "emil", "fay", "gus"].iter().enumerate() {
        let start = Instant::now();
        let (s, v) = call(
            &c,
            Method::POST,
            "/v1/accounts",
            Some(
                json!({"user": user, "domain": "example.test", "password": format!("secret-{user}-1")}),
            ),
        );
        assert_eq!(s, 201, "{v}");
        let version = v["updated_version"].as_i64().unwrap();
        let aor = format!("{user}@example.test");
        let owner = owner_of(&farm, &aor);
        let took = wait_for(Duration::from_secs(5), || {
            (provision_version(&farm, &owner) >= version).then(|| start.elapsed())
        });
        within_budget(
            &format!("account {i} at its owner {owner}"),
            took,
            Duration::from_secs(1),
            1.5,
        );
        // A password change, the same way.
        let start = Instant::now();
        let (s, v) = call(
            &c,
            Method::PATCH,
            &format!("/v1/accounts/{aor}"),
            Some(json!({"password": format!("secret-{user}-2")})),
        );
        assert_eq!(s, 200, "{v}");
        let version = v["updated_version"].as_i64().unwrap();
        let took = wait_for(Duration::from_secs(5), || {
            (provision_version(&farm, &owner) >= version).then(|| start.elapsed())
        });
        within_budget(
            &format!("password change {i} at {owner}"),
            took,
            Duration::from_secs(1),
            1.5,
        );
    }
    // Every push was held by its replica set; none failed for good.
    let applied: i64 = farm
        .names("node")
        .iter()
        .map(|n| {
            let m = farm.file.member(n).unwrap();
            crate::harness::scrape(m.addr("metrics").unwrap())
                .and_then(|m| m.get("onehop_provision_changes_applied_total").copied())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(applied, 8, "each of the 8 changes applied once at an owner");
}

#[test]
fn a_manager_that_was_down_catches_up_from_a_snapshot() {
    let (mut farm, c) = farm_with_domain("127.0.184.1");
    let leader_name = leader(&c).expect("a leader");
    let names = farm.names("manager");
    let down = names.iter().find(|n| **n != leader_name).unwrap().clone();
    let down_i = names.iter().position(|n| *n == down).unwrap();
    farm.signal(&down, "-KILL");
    // 1,200 Raft entries (one import batch per row) while it is down: the others take a
    // snapshot after 1,000 and drop the log behind it.
    let file = farm.path().join("rows.csv");
    std::fs::write(&file, csv(0..1_200, "")).unwrap();
    let out = admin(
        &farm,
        &[
            "--json",
            "import",
            file.to_str().unwrap(),
            "--chunk",
            "1",
            "--import-id",
            "lag",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let snapshots = wait_for(Duration::from_secs(20), || {
        names
            .iter()
            .filter(|n| **n != down)
            .all(|n| farm.log(n).contains("provisioning snapshot built"))
            .then_some(())
    });
    assert!(snapshots.is_some(), "no snapshot was built");
    farm.restart(&down);
    let start = Instant::now();
    let one = Client::new(
        vec![managers(&farm)[down_i]],
        &farm.file.client_tls(farm.file.admin.as_ref().unwrap()),
    )
    .unwrap();
    let caught = wait_for(Duration::from_secs(60), || {
        let (s, v) = call(&one, Method::GET, "/v1/status", None);
        (s == 200 && v["accounts"].as_u64() == Some(1_200)).then(|| start.elapsed())
    });
    println!(
        "{down} caught up in {caught:?}; its log: {}",
        farm.log(&down)
            .lines()
            .filter(|l| l.contains("snapshot"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    assert!(caught.is_some(), "{down} did not catch up");
    assert!(
        farm.log(&down).contains("provisioning snapshot installed"),
        "it caught up from the log, not a snapshot"
    );
    let (s, v) = call(&one, Method::GET, "/v1/accounts/u01199@example.test", None);
    assert_eq!(
        (s, v["display_name"].as_str()),
        (200, Some("User 1199")),
        "{v}"
    );
    assert!(!farm.log(&down).contains("panicked"), "{}", farm.log(&down));
}

#[test]
fn pushed_accounts_keep_two_copies_when_a_node_dies() {
    let mut farm = Farm::up_with_rings(
        "127.0.185.1",
        &["--dns", "0", "--no-demo-accounts"],
        &["registrar"],
    );
    let c = Client::for_farm(farm.path()).unwrap();
    let (s, _) = call(
        &c,
        Method::POST,
        "/v1/domains",
        Some(json!({"name": "example.test"})),
    );
    assert_eq!(s, 201);
    let file = farm.path().join("rows.csv");
    std::fs::write(&file, csv(0..300, "")).unwrap();
    let out = admin(&farm, &["--json", "import", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    // Nothing is registered: the store entries are the accounts, each on R = 2 registrars.
    let entries = |farm: &Farm, nodes: &[String]| -> i64 {
        nodes
            .iter()
            .map(|n| {
                let m = farm.file.member(n).unwrap();
                crate::harness::scrape(m.addr("metrics").unwrap())
                    .and_then(|m| m.get("onehop_store_entries").copied())
                    .unwrap_or(0)
            })
            .sum()
    };
    let nodes = farm.names("node");
    let held = wait_for(Duration::from_secs(20), || {
        (entries(&farm, &nodes) == 600).then_some(())
    });
    assert!(
        held.is_some(),
        "300 accounts on 2 registrars each: {}",
        entries(&farm, &nodes)
    );
    // A node dies: the two left hold every account twice again.
    farm.signal("node3", "-KILL");
    let left: Vec<String> = nodes.iter().filter(|n| *n != "node3").cloned().collect();
    let restored = wait_for(Duration::from_secs(30), || {
        (entries(&farm, &left) == 600).then_some(())
    });
    assert!(
        restored.is_some(),
        "after node3 died: {} copies on node1 and node2",
        entries(&farm, &left)
    );
    // It comes back: two copies in all again, some of them its.
    farm.restart("node3");
    let back = wait_for(Duration::from_secs(30), || {
        (entries(&farm, &nodes) == 600 && entries(&farm, &["node3".to_string()]) > 0).then_some(())
    });
    assert!(
        back.is_some(),
        "after node3 came back: {} copies, {} on node3",
        entries(&farm, &nodes),
        entries(&farm, &["node3".to_string()])
    );
}
