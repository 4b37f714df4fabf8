//! The `onehop-certs` binary, run as a user would.

use std::path::Path;
use std::process::{Command, Output};

use onehop_overlay::identity::{crl_serials, identity_from_pem, Serial};
use onehop_overlay::status::Kind;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

fn certs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_onehop-certs"))
        .args(args)
        .output()
        .expect("run onehop-certs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs and expects success; returns stdout.
fn ok(args: &[&str]) -> String {
    let out = certs(args);
    assert!(
        out.status.success(),
        "onehop-certs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

/// Runs and expects exit code 1 with a one-line error containing `needle`.
fn fails(args: &[&str], needle: &str) {
    let out = certs(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(
        stderr.starts_with("onehop-certs: error: "),
        "{args:?}: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: {stderr:?} lacks {needle:?}"
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn pem_der(path: &Path) -> Vec<u8> {
    pem::parse(std::fs::read(path).unwrap())
        .unwrap()
        .into_contents()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_issue_list_show_revoke() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let out = tmp.path().join("certs");
    let (ca, out) = (s(&ca).to_string(), s(&out).to_string());

    ok(&["init", "--domain", "example.net", "--dir", &ca]);
    for f in ["ca.pem", "ca.key", "crl.pem", "index.json"] {
        assert!(Path::new(&ca).join(f).is_file(), "{f} missing");
    }
    #[cfg(unix)]
    assert_eq!(mode(&Path::new(&ca).join("ca.key")), 0o600);

    ok(&[
        "issue",
        "--dir",
        &ca,
        "--name",
        "node-1",
        "--kind",
        "node",
        "--roles",
        "sip_proxy,registrar",
        "--ip",
        "127.0.0.1",
        "--out",
        &out,
    ]);
    let cert_path = Path::new(&out).join("node-1.pem");
    let key_path = Path::new(&out).join("node-1.key");
    #[cfg(unix)]
    assert_eq!(mode(&key_path), 0o600);
    assert!(std::fs::read_to_string(&key_path)
        .unwrap()
        .contains("BEGIN PRIVATE KEY"));
    let id = identity_from_pem(&std::fs::read_to_string(&cert_path).unwrap()).unwrap();
    assert_eq!(id.name, "node-1");
    assert_eq!(id.kind, Kind::Node);
    let roles: Vec<&str> = id.roles.iter().map(|r| r.as_str()).collect();
    assert_eq!(roles, ["registrar", "sip_proxy"]);
    assert_eq!(id.serial.as_bytes().len(), 16);

    // The leaf is signed by the CA, carries NAME.DOMAIN and the address.
    let ca_der = pem_der(&Path::new(&ca).join("ca.pem"));
    let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
    assert!(ca_cert.is_ca());
    let leaf_der = pem_der(&cert_path);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    leaf.verify_signature(Some(ca_cert.public_key())).unwrap();
    let san = format!("{:?}", leaf.subject_alternative_name().unwrap().unwrap());
    assert!(san.contains("node-1.example.net"), "{san}");

    ok(&[
        "issue", "--dir", &ca, "--name", "mgr-1", "--kind", "manager", "--out", &out,
    ]);

    let list = ok(&["list", "--dir", &ca]);
    let line = list.lines().find(|l| l.starts_with("node-1")).unwrap();
    assert!(line.contains("registrar,sip_proxy"), "{line}");
    assert!(line.contains(&id.serial.to_string()), "{line}");
    assert!(line.ends_with("valid"), "{line}");

    let shown = ok(&["show", s(&cert_path)]);
    assert!(shown.contains("node-1"), "{shown}");
    assert!(shown.contains("registrar,sip_proxy"), "{shown}");
    assert!(shown.contains(&id.serial.to_string()), "{shown}");
    assert!(
        shown.contains("revocation:  unknown (give --dir CA)"),
        "{shown}"
    );
    assert!(!shown.contains("expired"), "{shown}");
    let shown = ok(&["show", s(&cert_path), "--dir", &ca]);
    assert!(shown.contains("revocation:  not revoked"), "{shown}");

    let revoked = ok(&["revoke", "--dir", &ca, "--name", "node-1"]);
    assert!(revoked.contains(&id.serial.to_string()), "{revoked}");

    let shown = ok(&["show", s(&cert_path), "--dir", &ca]);
    assert!(shown.contains("revocation:  revoked"), "{shown}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["show", s(&cert_path), "--dir", &ca, "--json"])).unwrap();
    assert_eq!(json["revocation"], "revoked");
    assert_eq!(json["serial"], id.serial.to_string());
    assert_eq!(json["expired"], false);

    let list = ok(&["list", "--dir", &ca]);
    let line = list.lines().find(|l| l.starts_with("node-1")).unwrap();
    assert!(line.ends_with("revoked"), "{line}");
    let line = list.lines().find(|l| l.starts_with("mgr-1")).unwrap();
    assert!(line.ends_with("valid"), "{line}");

    // The CRL is signed by the CA and lists the serial; the CRL number went up.
    let crl_der = pem_der(&Path::new(&ca).join("crl.pem"));
    let (_, crl) = CertificateRevocationList::from_der(&crl_der).unwrap();
    crl.verify_signature(ca_cert.public_key()).unwrap();
    assert_eq!(crl.crl_number().unwrap().to_string(), "2");
    assert!(crl.next_update().is_some());
    assert_eq!(crl_serials(&crl_der).unwrap(), vec![id.serial.clone()]);

    // The index records the revocation.
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&ca).join("index.json")).unwrap())
            .unwrap();
    assert_eq!(index["domain"], "example.net");
    let entry = &index["certs"][0];
    assert_eq!(entry["name"], "node-1");
    assert_eq!(entry["revoked"], true);
    assert!(entry["revoked_at"].is_string());
    assert_eq!(entry["serial"], id.serial.to_string());

    // Once revoked, the name can be issued again.
    ok(&[
        "issue", "--dir", &ca, "--name", "node-1", "--kind", "node", "--out", &out,
    ]);
    let again = identity_from_pem(&std::fs::read_to_string(&cert_path).unwrap()).unwrap();
    assert_ne!(again.serial, id.serial);
    assert!(again.roles.is_empty());
}

#[test]
fn errors_are_one_line_with_exit_code_1() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let out = tmp.path().join("certs");
    let (ca, out) = (s(&ca).to_string(), s(&out).to_string());

    fails(
        &[
            "issue", "--dir", &ca, "--name", "n", "--kind", "node", "--out", &out,
        ],
        &format!("no CA in {ca}: run `onehop-certs init --domain"),
    );
    fails(&["list", "--dir", &ca], "no CA in");
    fails(&["revoke", "--dir", &ca, "--name", "n"], "no CA in");

    ok(&["init", "--domain", "example.net", "--dir", &ca]);
    fails(
        &["init", "--domain", "example.net", "--dir", &ca],
        &format!("a CA already exists in {ca}"),
    );
    fails(
        &[
            "init",
            "--domain",
            "not a domain",
            "--dir",
            s(&tmp.path().join("ca2")),
        ],
        "invalid domain",
    );

    let issue = |name: &str, kind: &str, extra: &[&str]| {
        let mut args = vec![
            "issue", "--dir", &ca, "--name", name, "--kind", kind, "--out", &out,
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run_fail = |args: Vec<String>, needle: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&args, needle);
    };

    run_fail(issue("x", "router", &[]), "unknown kind \"router\"");
    run_fail(
        issue("x", "node", &["--roles", "sip_proxy,Bad Role"]),
        "invalid role \"Bad Role\"",
    );
    run_fail(
        issue("x", "manager", &["--roles", "registrar"]),
        "only node certificates carry roles",
    );
    run_fail(issue("bad.name", "node", &[]), "invalid member name");
    run_fail(
        issue("x", "node", &["--ip", "300.1.1.1"]),
        "invalid ip address",
    );
    run_fail(
        issue("x", "node", &["--not-after", "yesterday"]),
        "invalid time",
    );
    run_fail(
        issue(
            "x",
            "node",
            &[
                "--not-before",
                "2030-01-01T00:00:00Z",
                "--not-after",
                "2029-01-01T00:00:00Z",
            ],
        ),
        "--not-after must be later than --not-before",
    );

    let args = issue("dup", "dns", &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&args);
    fails(&args, "dup is already issued (serial ");
    fails(&args, "; revoke it first or pick another name");

    fails(
        &["revoke", "--dir", &ca, "--name", "ghost"],
        "ghost was never issued",
    );
    ok(&["revoke", "--dir", &ca, "--name", "dup"]);
    fails(
        &["revoke", "--dir", &ca, "--name", "dup"],
        "dup is already revoked",
    );

    let missing = tmp.path().join("missing.pem");
    fails(
        &["show", s(&missing)],
        &format!("cannot read {}: ", missing.display()),
    );
    let junk = tmp.path().join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    fails(&["show", s(&junk)], "junk.pem");

    // A broken index names the file.
    std::fs::write(Path::new(&ca).join("index.json"), "{").unwrap();
    fails(&["list", "--dir", &ca], "index.json: corrupt index");
}

#[test]
fn expired_certificate_shows_expired() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = s(&tmp.path().join("ca")).to_string();
    let out = s(&tmp.path().join("certs")).to_string();
    ok(&["init", "--domain", "example.net", "--dir", &ca]);
    ok(&[
        "issue",
        "--dir",
        &ca,
        "--name",
        "old",
        "--kind",
        "monitor",
        "--not-after",
        "2020-01-01T00:00:00Z",
        "--out",
        &out,
    ]);
    let cert = Path::new(&out).join("old.pem");
    let shown = ok(&["show", s(&cert), "--dir", &ca]);
    assert!(
        shown.contains("not after:   2020-01-01T00:00:00Z (expired)"),
        "{shown}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&["show", s(&cert), "--json"])).unwrap();
    assert_eq!(json["expired"], true);
    assert_eq!(json["revocation"], "unknown");
    let list = ok(&["list", "--dir", &ca]);
    let line = list.lines().find(|l| l.starts_with("old")).unwrap();
    assert!(line.ends_with("expired"), "{line}");
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&["list", "--dir", &ca, "--json"])).unwrap();
    assert_eq!(listed[0]["state"], "expired");

    // Explicit validity window.
    ok(&[
        "issue", "--dir", &ca, "--name", "later", "--kind", "admin", "--days", "10", "--out", &out,
    ]);
    let id =
        identity_from_pem(&std::fs::read_to_string(Path::new(&out).join("later.pem")).unwrap())
            .unwrap();
    assert_eq!(id.not_after - id.not_before, 10 * 86_400);
}

#[test]
fn publish_without_a_way_to_reach_event_servers_fails_after_writing_the_crl() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = s(&tmp.path().join("ca")).to_string();
    let out = s(&tmp.path().join("certs")).to_string();
    ok(&["init", "--domain", "example.net", "--dir", &ca]);
    ok(&[
        "issue", "--dir", &ca, "--name", "n1", "--kind", "node", "--out", &out,
    ]);
    fails(
        &["revoke", "--dir", &ca, "--name", "n1", "--publish"],
        "--publish needs",
    );
    // The CRL was written before publishing was attempted.
    let crl_der = pem_der(&Path::new(&ca).join("crl.pem"));
    assert_eq!(crl_serials(&crl_der).unwrap().len(), 1);
    let _: Serial = crl_serials(&crl_der).unwrap().remove(0);
    // Publishing flags need --publish.
    let out = certs(&["revoke", "--dir", &ca, "--name", "n1", "--farm", "x"]);
    assert!(!out.status.success());
}

fn crl_times(path: &Path) -> (u64, i64, i64) {
    let der = pem_der(path);
    let (_, crl) = CertificateRevocationList::from_der(&der).unwrap();
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap();
    (
        number,
        crl.last_update().timestamp(),
        crl.next_update().unwrap().timestamp(),
    )
}

#[test]
fn crl_re_signs_with_a_chosen_next_update_and_keeps_the_revocations() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let out = tmp.path().join("out");
    ok(&["init", "--domain", "example.test", "--dir", s(&ca)]);
    ok(&[
        "issue",
        "--dir",
        s(&ca),
        "--name",
        "node1",
        "--kind",
        "node",
        "--out",
        s(&out),
    ]);
    ok(&["revoke", "--dir", s(&ca), "--name", "node1"]);
    let crl = ca.join("crl.pem");
    let (n1, _, _) = crl_times(&crl);
    let revoked = crl_serials(&pem_der(&crl)).unwrap();
    assert_eq!(revoked.len(), 1);

    // Default: seven days ahead.
    let said = ok(&["crl", "--dir", s(&ca)]);
    let (n2, this2, next2) = crl_times(&crl);
    assert_eq!(n2, n1 + 1);
    assert_eq!(next2 - this2, 7 * 86_400);
    assert!(
        said.contains(&format!("crl number {n2}, next update ")),
        "{said}"
    );
    assert_eq!(crl_serials(&pem_der(&crl)).unwrap(), revoked);

    // --days.
    ok(&["crl", "--dir", s(&ca), "--days", "2"]);
    let (n3, this3, next3) = crl_times(&crl);
    assert_eq!((n3, next3 - this3), (n2 + 1, 2 * 86_400));

    // A next update in the past: a stale list, one day of validity before it.
    ok(&[
        "crl",
        "--dir",
        s(&ca),
        "--next-update",
        "2020-01-02T00:00:00Z",
    ]);
    let (n4, this4, next4) = crl_times(&crl);
    assert_eq!(n4, n3 + 1);
    assert_eq!(next4, 1_577_923_200);
    assert_eq!(this4, next4 - 86_400);
    assert_eq!(crl_serials(&pem_der(&crl)).unwrap(), revoked);

    fails(
        &["crl", "--dir", s(&ca), "--days", "0"],
        "--days must be at least 1",
    );
    fails(
        &["crl", "--dir", s(&ca), "--next-update", "tomorrow"],
        "tomorrow",
    );
    let both = certs(&[
        "crl",
        "--dir",
        s(&ca),
        "--days",
        "1",
        "--next-update",
        "2030-01-01T00:00:00Z",
    ]);
    assert_eq!(
        both.status.code(),
        Some(2),
        "--days and --next-update conflict"
    );
}

#[test]
fn init_days_makes_a_short_lived_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    ok(&[
        "init",
        "--domain",
        "example.test",
        "--dir",
        s(&ca),
        "--days",
        "20",
    ]);
    let der = pem_der(&ca.join("ca.pem"));
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let v = cert.validity();
    assert_eq!(
        v.not_after.timestamp() - v.not_before.timestamp(),
        20 * 86_400
    );
    fails(
        &[
            "init",
            "--domain",
            "example.test",
            "--dir",
            s(&tmp.path().join("ca2")),
            "--days",
            "0",
        ],
        "--days must be at least 1",
    );
}
