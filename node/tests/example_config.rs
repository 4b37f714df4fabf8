//! The commented example configuration in examples/ loads and validates.

#[test]
fn example_config_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/node.toml");
    let cfg = onehop_node::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.tls.crl.is_some());
}

#[test]
fn unknown_keys_are_refused_with_their_name() {
    let dir = std::env::temp_dir().join(format!("onehop-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/node.toml"),
    )
    .unwrap();
    let path = dir.join("node-typo.toml");
    std::fs::write(&path, format!("lisen_typo = 1\n{text}")).unwrap();
    let err = onehop_node::Config::load(&path).unwrap_err().to_string();
    assert!(err.contains("lisen_typo"), "{err}");
}

fn example_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/node.toml")
}

/// Runs the real program with `--check-config` on the example; returns (success, stdout,
/// stderr).
fn check_config(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_onehop-node"))
        .arg("--config")
        .arg(example_path())
        .args(args)
        .arg("--check-config")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn flags_override_the_file() {
    let (ok, out, err) = check_config(&[
        "--ip",
        "10.9.9.9",
        "--sip-port",
        "5070",
        "--metrics",
        "10.9.9.9:9200",
        "--set",
        "quic.idle_timeout_ms=800",
        "--set",
        "sip_pending=5",
    ]);
    assert!(ok, "{err}");
    for line in [
        "ip = \"10.9.9.9\"",
        "sip_port = 5070",
        "metrics = \"10.9.9.9:9200\"",
        "idle_timeout_ms = 800",
        "sip_pending = 5",
    ] {
        assert!(out.lines().any(|l| l == line), "no {line:?} in {out}");
    }
    assert!(
        out.contains("# overrides: --ip 10.9.9.9, --sip-port 5070"),
        "{out}"
    );
    // The last one given wins.
    let (ok, out, _) = check_config(&["--sip-port", "5070", "--set", "sip_port=5080"]);
    assert!(ok && out.lines().any(|l| l == "sip_port = 5080"), "{out}");
}

#[test]
fn an_unknown_key_from_set_is_refused_with_its_name() {
    let (ok, _, err) = check_config(&["--set", "sip_portt=5070"]);
    assert!(!ok);
    assert!(
        err.contains("--set sip_portt=5070: unknown field `sip_portt`"),
        "{err}"
    );
    let (ok, _, err) = check_config(&["--sip-port", "sixty"]);
    assert!(!ok);
    assert!(
        err.contains("--sip-port sixty: sip_port: invalid type: string \"sixty\", expected u16"),
        "{err}"
    );
    let (ok, _, err) = check_config(&["--set", "replicas=9"]);
    assert!(!ok);
    assert!(
        err.contains("--set replicas=9: replicas: must be between 1 and 5"),
        "{err}"
    );
}
