//! Loading the daemons' configuration: a TOML file with `--set KEY=VALUE` overrides.

use std::path::Path;

use onehop_overlay::daemon::{DaemonConfig, Override};

/// Loads, prints and loads again, as `--check-config` prints the effective configuration.
fn round_trip<C: DaemonConfig + PartialEq + std::fmt::Debug>(text: &str, overrides: &[Override]) {
    let path = Path::new("fuzz.toml");
    match C::parse_with(path, text, overrides) {
        Ok(cfg) => {
            let printed = toml::to_string(&cfg)
                .unwrap_or_else(|e| panic!("a valid configuration does not print: {e}"));
            let again = C::parse_with(path, &printed, &[]).unwrap_or_else(|e| {
                panic!("the printed configuration does not load: {e}\n{printed}")
            });
            assert_eq!(again, cfg, "{printed}");
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.is_empty());
        }
    }
}

/// The input as a node's (or, by its first byte, a DNS server's) config file, after up to
/// eight leading lines `--set KEY=VALUE`, the overrides of the command line.
///
/// Properties: errors are errors, never panics; a configuration that loads and validates
/// prints (as `--check-config` does) into TOML that loads again to the same configuration.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut rest = text;
    let mut overrides = Vec::new();
    while overrides.len() < 8 {
        let Some(arg) = rest.strip_prefix("--set ") else {
            break;
        };
        let (line, tail) = arg.split_once('\n').unwrap_or((arg, ""));
        if let Ok(o) = Override::parse_set(line) {
            let _ = o.key();
            overrides.push(o);
        }
        rest = tail;
    }
    if rest.starts_with('#') && rest.as_bytes().get(1) == Some(&b'd') {
        round_trip::<onehop_dns::Config>(rest, &overrides);
    } else {
        round_trip::<onehop_node::Config>(rest, &overrides);
    }
}
