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
    assert_eq!((c.tcp_connections, c.tcp_connections_per_ip), (256, 0));
    let c = with(&format!("tcp_connections_per_ip = 32\n{MINIMAL}")).unwrap();
    assert_eq!(c.tcp_connections_per_ip, 32);
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

/// Runs the real program with `--check-config` on the example; returns (success, stdout,
/// stderr).
fn check_config(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_onehop-dns"))
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
    let (ok, out, err) = check_config(&[
        "--ip",
        "10.9.9.9",
        "--port",
        "5454",
        "--domain",
        "other.test",
        "--eventserver",
        "10.9.9.1:8000",
        "--set",
        "transports.tls=true",
        "--set",
        "ttl=30",
    ]);
    assert!(ok, "{err}");
    for line in [
        "ip = \"10.9.9.9\"",
        "port = 5454",
        "domain = \"other.test\"",
        "eventservers = [\"10.9.9.1:8000\"]",
        "ttl = 30",
        "tls = true",
    ] {
        assert!(out.lines().any(|l| l == line), "no {line:?} in {out}");
    }
}

#[test]
fn an_unknown_key_from_set_is_refused_with_its_name() {
    let (ok, _, err) = check_config(&["--set", "transports.sctp=true"]);
    assert!(!ok);
    assert!(
        err.contains("--set transports.sctp=true: unknown field `sctp`"),
        "{err}"
    );
    let (ok, _, err) = check_config(&["--domain", ""]);
    assert!(!ok);
    assert!(
        err.contains("--domain : domain: must be a domain name"),
        "{err}"
    );
}

#[test]
fn enum_suffixes_default_to_e164_arpa_and_are_checked() {
    assert_eq!(with(MINIMAL).unwrap().enum_suffixes, ["e164.arpa"]);
    let c = Config::load(&example()).unwrap();
    assert_eq!(c.enum_suffixes, ["e164.arpa"]);
    // Several, or none (ENUM off).
    let several = with(&format!(
        "enum_suffixes = [\"e164.arpa\", \"e164.example.test.\", \"NRENUM.net\"]\n{MINIMAL}"
    ))
    .unwrap();
    let cfg = onehop_dns::ZoneConfig::from_config(&several).unwrap();
    let parsed: Vec<String> = cfg.enum_suffixes.iter().map(|n| n.to_string()).collect();
    assert_eq!(parsed, ["e164.arpa.", "e164.example.test.", "nrenum.net."]);
    let off = with(&format!("enum_suffixes = []\n{MINIMAL}")).unwrap();
    assert!(onehop_dns::ZoneConfig::from_config(&off)
        .unwrap()
        .enum_suffixes
        .is_empty());

    let many: Vec<String> = (0..17).map(|i| format!("\"e{i}.arpa\"")).collect();
    let many = format!("enum_suffixes = [{}]\n", many.join(", "));
    for (line, says) in [
        ("enum_suffixes = [\"bad..name\"]\n", "\"bad..name\": not a domain name"),
        ("enum_suffixes = [\"\"]\n", "not empty or the root"),
        ("enum_suffixes = [\".\"]\n", "not empty or the root"),
        (
            "enum_suffixes = [\"e164.arpa\", \"E164.ARPA.\"]\n",
            "\"E164.ARPA.\" (entry 2) is listed twice (\"e164.arpa\", entry 1)",
        ),
        (
            "enum_suffixes = [\"e164.arpa\", \"1.e164.arpa\"]\n",
            "\"1.e164.arpa\" (entry 2) and another suffix are one under the other (\"e164.arpa\", entry 1)",
        ),
        (
            "enum_suffixes = [\"1.e164.arpa\", \"e164.arpa\"]\n",
            "one under the other",
        ),
        (
            "enum_suffixes = [\"test\"]\n",
            "\"test\": the domain example.test. is at or under it",
        ),
        (
            "enum_suffixes = [\"example.test\"]\n",
            "the domain example.test. is at or under it",
        ),
        (many.as_str(), "17 suffixes given, at most 16"),
    ] {
        let err = with(&format!("{line}{MINIMAL}")).unwrap_err().to_string();
        assert!(err.contains("enum_suffixes"), "{line}: {err}");
        assert!(err.contains(says), "{line}: {err}");
    }
}
