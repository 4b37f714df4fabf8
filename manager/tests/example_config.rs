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
