//! The configuration: the commented example loads, defaults, refusals.

use std::path::{Path, PathBuf};

use onehop_dns::Config;
use onehop_overlay::daemon::ConfigError;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dns.toml")
}

fn with(text: &str) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join(format!("onehop-dns-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.toml", rand_name(text)));
    std::fs::write(&path, text).unwrap();
    let r = Config::load(&path);
    let _ = std::fs::remove_file(&path);
    r
}

fn rand_name(text: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    format!("{:x}", h.finish())
}

const MINIMAL: &str = r#"
ip = "127.0.0.1"
domain = "example.test"
eventservers = ["127.0.0.1:8000"]
[tls]
ca = "ca.pem"
cert = "dns1.pem"
key = "dns1.key"
"#;

#[test]
fn the_example_loads() {
    let c = Config::load(&example()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.domain, "example.test");
    assert_eq!(c.srv_slice, 4);
    assert_eq!(c.ttl, 5);
    assert!(c.transports.udp && c.transports.tcp && !c.transports.tls);
}

#[test]
fn defaults() {
    let c = with(MINIMAL).unwrap();
    assert_eq!(c.port, 53);
    assert_eq!(c.ttl, 5);
    assert_eq!(c.srv_slice, 4);
    assert_eq!((c.sip_port, c.sips_port), (5060, 5061));
    assert!(c.transports.udp && c.transports.tcp && !c.transports.tls);
    assert_eq!(c.max_udp_payload, 1232);
    assert!(c.metrics.is_none());
}

#[test]
fn refusals_name_the_key() {
    let cases = [
        ("srv_slice = 0\n", "srv_slice"),
        ("ttl = 100000\n", "ttl"),
        ("port = 0\n", "port"),
        ("max_udp_payload = 100\n", "max_udp_payload"),
        ("bogus = 1\n", "bogus"),
    ];
    for (line, key) in cases {
        let err = with(&format!("{line}{MINIMAL}")).unwrap_err().to_string();
        assert!(err.contains(key), "{line}: {err}");
    }
    let err = with(&MINIMAL.replace("example.test", "bad..name"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("domain"), "{err}");
    let err = with(&MINIMAL.replace("[\"127.0.0.1:8000\"]", "[]"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("eventservers"), "{err}");
    let none = format!("{MINIMAL}[transports]\nudp = false\ntcp = false\n");
    let err = with(&none).unwrap_err().to_string();
    assert!(err.contains("transports"), "{err}");
}
