//! The commented example configuration in examples/ loads and validates.

#[test]
fn example_config_loads() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/eventserver.toml");
    let cfg = onehop_eventserver::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.tls.crl.is_some());
}

#[test]
fn unknown_keys_are_refused_with_their_name() {
    let dir = std::env::temp_dir().join(format!("onehop-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/eventserver.toml"),
    )
    .unwrap();
    let path = dir.join("eventserver-typo.toml");
    std::fs::write(&path, format!("lisen_typo = 1\n{text}")).unwrap();
    let err = onehop_eventserver::Config::load(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("lisen_typo"), "{err}");
}

fn example() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/eventserver.toml")
}

/// Runs the real program with `--check-config`; returns (success, stdout, stderr).
fn check_config(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_onehop-eventserver"))
        .arg("--config")
        .arg(example())
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
    use onehop_overlay::daemon::{DaemonConfig, Override};
    let sets = [
        Override::parse_set("quic.idle_timeout_ms=800").unwrap(),
        Override::from_flag(
            &onehop_eventserver::config::FLAGS[0],
            &["10.9.9.9:8001".into()],
        )
        .unwrap(),
    ];
    let cfg = onehop_eventserver::Config::load_with(&example(), &sets).unwrap();
    assert_eq!(cfg.listen, "10.9.9.9:8001".parse().unwrap());
    assert_eq!(cfg.quic.idle_timeout_ms, 800);
    assert_eq!(cfg.quic.keepalive_ms, 100);

    let (ok, out, err) = check_config(&["--listen", "10.9.9.9:8001", "--metrics", "10.9.9.9:9200"]);
    assert!(ok, "{err}");
    assert!(out.contains("listen = \"10.9.9.9:8001\""), "{out}");
    assert!(out.contains("metrics = \"10.9.9.9:9200\""), "{out}");
}

#[test]
fn an_unknown_key_from_set_is_refused_with_its_name() {
    let (ok, _, err) = check_config(&["--set", "lisen=10.9.9.9:8000"]);
    assert!(!ok);
    assert!(
        err.contains("--set lisen=10.9.9.9:8000: unknown field `lisen`"),
        "{err}"
    );
    let (ok, _, err) = check_config(&["--set", "subscriber_queue=2"]);
    assert!(!ok);
    assert!(
        err.contains("--set subscriber_queue=2: subscriber_queue: must be at least 16"),
        "{err}"
    );
}
