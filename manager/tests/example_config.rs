//! The commented example configuration in examples/ loads and validates.

#[test]
fn example_config_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/manager.toml");
    let cfg = onehop_manager::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.tls.crl.is_some());
}

#[test]
fn unknown_keys_are_refused_with_their_name() {
    let dir = std::env::temp_dir().join(format!("onehop-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/manager.toml"),
    )
    .unwrap();
    let path = dir.join("manager-typo.toml");
    std::fs::write(&path, format!("lisen_typo = 1\n{text}")).unwrap();
    let err = onehop_manager::Config::load(&path).unwrap_err().to_string();
    assert!(err.contains("lisen_typo"), "{err}");
}

#[test]
fn flags_override_the_file() {
    use onehop_manager::config::FLAGS;
    use onehop_overlay::daemon::{DaemonConfig, Override};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/manager.toml");
    let flag = |long: &str, args: &[&str]| {
        let f = FLAGS.iter().find(|f| f.long == long).unwrap();
        Override::from_flag(f, &args.iter().map(|a| a.to_string()).collect::<Vec<_>>()).unwrap()
    };
    let cfg = onehop_manager::Config::load_with(
        &path,
        &[
            flag("ip", &["10.9.9.9"]),
            flag("id", &["2"]),
            flag("eventserver", &["10.9.9.1:8000", "10.9.9.2:8000"]),
            Override::parse_set("raft.heartbeat_ms=50").unwrap(),
            Override::parse_set("peers.1.addr=10.9.9.9:8001").unwrap(),
        ],
    )
    .unwrap();
    assert_eq!(cfg.ip, "10.9.9.9".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(cfg.id, 2);
    assert_eq!(cfg.eventservers.len(), 2);
    assert_eq!(cfg.raft.heartbeat_ms, 50);
    assert_eq!(cfg.peers[1].addr, "10.9.9.9:8001".parse().unwrap());

    // Validation sees the overridden values and names the flag.
    let err = onehop_manager::Config::load_with(&path, &[flag("id", &["7"])])
        .unwrap_err()
        .to_string();
    assert_eq!(err, "--id 7: id: 7 is not the id of any [[peers]] entry");
}

#[test]
fn an_unknown_key_from_set_is_refused_with_its_name() {
    use onehop_overlay::daemon::{DaemonConfig, Override};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/manager.toml");
    let err = onehop_manager::Config::load_with(
        &path,
        &[Override::parse_set("raft.heartbeat=50").unwrap()],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("--set raft.heartbeat=50: unknown field `heartbeat`"),
        "{err}"
    );
    // Through the program's command line too (exit status 1, nothing started).
    let code = onehop_manager::cli_main(
        [
            "onehop-manager",
            "--config",
            path.to_str().unwrap(),
            "--set",
            "batch_mss=5",
            "--check-config",
        ]
        .iter()
        .map(Into::into)
        .collect(),
    );
    assert_eq!(code, std::process::ExitCode::FAILURE);
}
