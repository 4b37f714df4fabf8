//! Configuration keys given on the command line: `--set KEY=VALUE` and the named flags
//! (`--ip`, `--metrics`, ...) that are shorthands for it.
//!
//! An [`Override`] is a dotted key path into the TOML document and a TOML value. Overrides are
//! applied, in command-line order, to the parsed file *before* it is turned into a daemon's
//! strict config struct and validated, so a key given on the command line is held to the same
//! rules as one in the file: an unknown key or a bad value is refused, and the error names the
//! flag it came from (`--set sip_portt=5070: unknown field ...`).

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::daemon::ConfigError;

/// One configuration key set on the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The key path, one element per table level (`["quic", "idle_timeout_ms"]`). An element
    /// that is a number indexes an array (`peers.0.addr`).
    pub path: Vec<String>,
    /// The value put there (replacing what the file has, a table included).
    pub value: toml::Value,
    /// How it was given, for messages: `--set sip_port=5070`, `--ip 10.0.0.7`.
    pub origin: String,
}

/// How a named flag's argument becomes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagValue {
    /// Always a string (addresses, names, paths).
    String,
    /// A TOML value (numbers, booleans), or a string when it does not parse as one.
    Toml,
    /// Repeatable: every occurrence is one string element of an array, which replaces the
    /// file's array as a whole.
    List,
}

/// A named command-line flag that sets one configuration key: `--ip ADDR` is
/// `--set ip="ADDR"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigFlag {
    /// The flag without its dashes (`ip`).
    pub long: &'static str,
    /// The dotted key it sets (`ip`).
    pub key: &'static str,
    /// The argument's placeholder in `--help` (`ADDR`).
    pub value_name: &'static str,
    /// The help line.
    pub help: &'static str,
    /// How the argument is read.
    pub value: FlagValue,
    /// An example argument, for `--help`.
    pub example: &'static str,
}

impl ConfigFlag {
    /// `--ip ADDR`: the member's own IP address (key `ip`).
    pub const IP: ConfigFlag = ConfigFlag {
        long: "ip",
        key: "ip",
        value_name: "ADDR",
        help: "The member's own IP address (config key `ip`)",
        value: FlagValue::String,
        example: "10.0.0.7",
    };
    /// `--metrics ADDR:PORT`: where Prometheus metrics are served (key `metrics`).
    pub const METRICS: ConfigFlag = ConfigFlag {
        long: "metrics",
        key: "metrics",
        value_name: "ADDR:PORT",
        help: "Where to serve Prometheus metrics over HTTP (config key `metrics`)",
        value: FlagValue::String,
        example: "10.0.0.7:9100",
    };
    /// `--domain DOMAIN`: the SIP domain (key `domain`).
    pub const DOMAIN: ConfigFlag = ConfigFlag {
        long: "domain",
        key: "domain",
        value_name: "DOMAIN",
        help: "The SIP domain (config key `domain`)",
        value: FlagValue::String,
        example: "example.test",
    };
    /// `--eventserver ADDR:PORT`, repeatable: the event servers (key `eventservers`).
    pub const EVENTSERVER: ConfigFlag = ConfigFlag {
        long: "eventserver",
        key: "eventservers",
        value_name: "ADDR:PORT",
        help:
            "An event server's address; repeat for each (replaces the file's `eventservers` list)",
        value: FlagValue::List,
        example: "10.0.0.1:8000",
    };
}

/// Parses a command-line value: a TOML value (`5070`, `true`, `"text"`, `["a", "b"]`,
/// `{ keepalive_ms = 100 }`) or, when it is not one, the text itself as a string
/// (`10.0.0.7`, `example.test`).
pub fn parse_value(text: &str) -> toml::Value {
    toml::Value::deserialize(toml::de::ValueDeserializer::new(text))
        .unwrap_or_else(|_| toml::Value::String(text.to_string()))
}

/// Parses a dotted key (`quic.idle_timeout_ms`, quoted parts allowed: `a."b.c"`) into its
/// parts, with TOML's own rules for keys.
pub fn parse_key(key: &str) -> Result<Vec<String>, String> {
    let not_a_key =
        || format!("`{key}` is not a configuration key (a dotted path like quic.idle_timeout_ms)");
    if key.trim().is_empty() || key.contains(['\n', '\r', '#', '=']) {
        return Err(not_a_key());
    }
    let table: toml::Table = toml::from_str(&format!("{key} = 0")).map_err(|_| not_a_key())?;
    let mut path = Vec::new();
    let mut level = &table;
    loop {
        let mut entries = level.iter();
        let (Some((k, v)), None) = (entries.next(), entries.next()) else {
            return Err(not_a_key());
        };
        path.push(k.clone());
        match v {
            toml::Value::Table(t) => level = t,
            toml::Value::Integer(0) => return Ok(path),
            _ => return Err(not_a_key()),
        }
    }
}

impl Override {
    /// Parses the argument of `--set`: `KEY=VALUE`, the key before the first `=`.
    pub fn parse_set(arg: &str) -> Result<Override, String> {
        let origin = format!("--set {arg}");
        let Some((key, value)) = arg.split_once('=') else {
            return Err(format!(
                "{origin}: expected KEY=VALUE, e.g. --set sip_port=5070"
            ));
        };
        let path = parse_key(key.trim()).map_err(|e| format!("{origin}: {e}"))?;
        Ok(Override {
            path,
            value: parse_value(value),
            origin,
        })
    }

    /// The override a named flag makes from its arguments (all of them for a
    /// [`FlagValue::List`] flag, the last otherwise). `None` without arguments.
    pub fn from_flag(flag: &ConfigFlag, args: &[String]) -> Option<Override> {
        let last = args.last()?;
        let (value, origin) = match flag.value {
            FlagValue::String => (
                toml::Value::String(last.clone()),
                format!("--{} {last}", flag.long),
            ),
            FlagValue::Toml => (parse_value(last), format!("--{} {last}", flag.long)),
            FlagValue::List => (
                toml::Value::Array(args.iter().cloned().map(toml::Value::String).collect()),
                args.iter()
                    .map(|a| format!("--{} {a}", flag.long))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        };
        Some(Override {
            path: flag.key.split('.').map(String::from).collect(),
            value,
            origin,
        })
    }

    /// The dotted key.
    pub fn key(&self) -> String {
        self.path.join(".")
    }

    /// The key with array indexes left out, as serde names keys in its messages
    /// (`peers.0.addr` -> `peers.addr`).
    fn schema_key(&self) -> String {
        self.path
            .iter()
            .filter(|p| p.parse::<usize>().is_err())
            .cloned()
            .collect::<Vec<_>>()
            .join(".")
    }

    /// Whether a problem with `key` (dotted, no array indexes) comes from this override: the
    /// key itself, something inside the value it set, or a table it created on the way.
    fn covers(&self, key: &str) -> bool {
        let mine = self.schema_key();
        key == mine || key.starts_with(&format!("{mine}.")) || mine.starts_with(&format!("{key}."))
    }

    /// Puts the value into `doc` (a table), creating tables on the way.
    pub fn apply(&self, doc: &mut toml::Value) -> Result<(), ConfigError> {
        let fail = |message: String| ConfigError::Override {
            origin: self.origin.clone(),
            message,
        };
        let Some((last, parents)) = self.path.split_last() else {
            return Err(fail("empty key".into()));
        };
        let mut here = doc;
        let mut walked: Vec<&str> = Vec::new();
        for part in parents {
            here = step(here, part, &walked).map_err(fail)?;
            walked.push(part);
        }
        match here {
            toml::Value::Table(t) => {
                t.insert(last.clone(), self.value.clone());
                Ok(())
            }
            toml::Value::Array(_) => {
                let slot = step(here, last, &walked).map_err(fail)?;
                *slot = self.value.clone();
                Ok(())
            }
            other => Err(fail(format!(
                "`{}` is {}, not a table",
                walked.join("."),
                a_type(other)
            ))),
        }
    }
}

/// "an integer", "a string": the value's type with its article.
fn a_type(v: &toml::Value) -> String {
    let t = v.type_str();
    let article = if t.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {t}")
}

/// One step of the walk: into `part` of a table (created when missing) or an array index.
fn step<'v>(
    here: &'v mut toml::Value,
    part: &str,
    walked: &[&str],
) -> Result<&'v mut toml::Value, String> {
    let at = |walked: &[&str]| walked.join(".");
    match here {
        toml::Value::Table(t) => Ok(t
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))),
        toml::Value::Array(a) => {
            let len = a.len();
            match part.parse::<usize>().ok() {
                Some(i) if i < len => Ok(&mut a[i]),
                _ => Err(format!(
                    "`{}` is an array of {len}: give an index from 0 to {}",
                    at(walked),
                    len.saturating_sub(1)
                )),
            }
        }
        other => Err(format!(
            "`{}` is {}, not a table",
            at(walked),
            a_type(other)
        )),
    }
}

/// Reads a TOML config file, applies `overrides` in order and deserializes the result into
/// the (strict) config type. Errors name the file, or the flag when the bad key came from one.
pub fn load_with<T: DeserializeOwned>(
    path: &Path,
    overrides: &[Override],
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_with(path, &text, overrides)
}

/// [`load_with`] on a config file's text already read (`path` only names it in errors): parses
/// the TOML, applies `overrides` in order and deserializes the result into the config type.
pub fn parse_with<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    overrides: &[Override],
) -> Result<T, ConfigError> {
    if overrides.is_empty() {
        return toml::from_str(text).map_err(|e| parse_error(path, &e));
    }
    let table: toml::Table = toml::from_str(text).map_err(|e| parse_error(path, &e))?;
    let mut doc = toml::Value::Table(table);
    for o in overrides {
        o.apply(&mut doc)?;
    }
    T::deserialize(doc).map_err(|e| explain::<T>(path, text, &e, overrides))
}

/// Names the flag behind a validation error ([`ConfigError::Invalid`]) when the key it is
/// about was set on the command line; other errors are returned as they are.
pub fn attribute(err: ConfigError, overrides: &[Override]) -> ConfigError {
    match err {
        ConfigError::Invalid { path, key, problem } => {
            match overrides.iter().rev().find(|o| o.covers(&key)) {
                Some(o) => ConfigError::Override {
                    origin: o.origin.clone(),
                    message: format!("{key}: {problem}"),
                },
                None => ConfigError::Invalid { path, key, problem },
            }
        }
        other => other,
    }
}

fn parse_error(path: &Path, e: &toml::de::Error) -> ConfigError {
    ConfigError::Parse {
        path: path.display().to_string(),
        message: e.to_string().trim().replace('\n', " "),
    }
}

/// Splits serde's message about a value into the problem and the key it is about:
/// `unknown field `idle`, expected ...\nin `quic`` -> (`unknown field ...`, `quic.idle`).
fn split_message(full: &str) -> (String, Option<String>) {
    let full = full.trim();
    let (message, context) = match full.rfind("\nin `") {
        Some(at) => {
            let ctx = full[at + 5..].trim_end_matches('`');
            (full[..at].trim(), Some(ctx.to_string()))
        }
        None => (full, None),
    };
    let message = message.replace('\n', " ");
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field.to_string());
    let key = match (unknown, context) {
        (Some(f), Some(ctx)) => Some(format!("{ctx}.{f}")),
        (Some(f), None) => Some(f),
        (None, ctx) => ctx,
    };
    (message, key)
}

fn explain<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    e: &toml::de::Error,
    overrides: &[Override],
) -> ConfigError {
    let (message, key) = split_message(&e.to_string());
    let named = |key: &Option<String>| match key {
        Some(k) if !message.starts_with("unknown field") => format!("{k}: {message}"),
        _ => message.clone(),
    };
    if let Some(k) = &key {
        if let Some(o) = overrides.iter().rev().find(|o| o.covers(k)) {
            return ConfigError::Override {
                origin: o.origin.clone(),
                message: named(&key),
            };
        }
    }
    // Not a key from the command line: when the file alone has the same problem, its own
    // message says on which line.
    if let Err(fe) = toml::from_str::<T>(text) {
        if fe.message().trim().replace('\n', " ") == message {
            return parse_error(path, &fe);
        }
    }
    ConfigError::Parse {
        path: path.display().to_string(),
        message: named(&key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Quic {
        keepalive_ms: u64,
        #[serde(default)]
        idle_timeout_ms: u64,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Peer {
        id: u64,
        addr: String,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        ip: std::net::IpAddr,
        #[serde(default)]
        sip_port: u16,
        #[serde(default)]
        domain: Option<String>,
        #[serde(default)]
        eventservers: Vec<String>,
        #[serde(default)]
        quic: Option<Quic>,
        #[serde(default)]
        peers: Vec<Peer>,
    }

    const FILE: &str = "ip = \"10.0.0.1\"\nsip_port = 5060\neventservers = [\"10.0.0.9:8000\"]\n\n\
                        [quic]\nkeepalive_ms = 100\nidle_timeout_ms = 600\n\n\
                        [[peers]]\nid = 1\naddr = \"a\"\n\n[[peers]]\nid = 2\naddr = \"b\"\n";

    fn file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn sets(args: &[&str]) -> Vec<Override> {
        args.iter()
            .map(|a| Override::parse_set(a).unwrap())
            .collect()
    }

    fn load(args: &[&str]) -> Result<Cfg, String> {
        let (_dir, path) = file(FILE);
        load_with::<Cfg>(&path, &sets(args)).map_err(|e| e.to_string())
    }

    #[test]
    fn values_are_toml_or_else_strings() {
        assert_eq!(parse_value("5070"), toml::Value::Integer(5070));
        assert_eq!(parse_value("true"), toml::Value::Boolean(true));
        assert_eq!(parse_value("\"5070\""), toml::Value::String("5070".into()));
        assert_eq!(
            parse_value("10.0.0.1"),
            toml::Value::String("10.0.0.1".into())
        );
        assert_eq!(
            parse_value("example.test"),
            toml::Value::String("example.test".into())
        );
        assert_eq!(parse_value(""), toml::Value::String(String::new()));
        assert_eq!(
            parse_value("[\"a:1\", \"b:2\"]"),
            toml::Value::Array(vec!["a:1".into(), "b:2".into()])
        );
        // Not one value: the whole text, as a string, never a second key.
        assert_eq!(
            parse_value("1\nb = 2"),
            toml::Value::String("1\nb = 2".into())
        );
    }

    #[test]
    fn keys_are_dotted_paths() {
        assert_eq!(parse_key("sip_port").unwrap(), vec!["sip_port"]);
        assert_eq!(
            parse_key("quic.idle_timeout_ms").unwrap(),
            vec!["quic", "idle_timeout_ms"]
        );
        assert_eq!(parse_key("a.\"b.c\"").unwrap(), vec!["a", "b.c"]);
        assert_eq!(
            parse_key("peers.1.addr").unwrap(),
            vec!["peers", "1", "addr"]
        );
        for bad in ["", " ", "a b", "a.", ".a", "a\nb", "a#b", "[a]"] {
            assert!(parse_key(bad).is_err(), "{bad:?} accepted");
        }
        let e = Override::parse_set("sip_port").unwrap_err();
        assert!(
            e.contains("--set sip_port") && e.contains("KEY=VALUE"),
            "{e}"
        );
        let e = Override::parse_set("a b=1").unwrap_err();
        assert!(e.contains("`a b` is not a configuration key"), "{e}");
        // The key ends at the first `=`: the value may hold more.
        let o = Override::parse_set("domain=a=b").unwrap();
        assert_eq!(o.value, toml::Value::String("a=b".into()));
    }

    #[test]
    fn flags_override_the_file_in_order() {
        let c = load(&[]).unwrap();
        assert_eq!(c.sip_port, 5060);
        let c = load(&["sip_port=5070", "ip=10.0.0.7", "domain=example.test"]).unwrap();
        assert_eq!(c.sip_port, 5070);
        assert_eq!(c.ip, "10.0.0.7".parse::<std::net::IpAddr>().unwrap());
        assert_eq!(c.domain.as_deref(), Some("example.test"));
        // The later one wins.
        assert_eq!(load(&["sip_port=1", "sip_port=2"]).unwrap().sip_port, 2);
    }

    #[test]
    fn nested_tables_and_arrays() {
        let c = load(&["quic.idle_timeout_ms=800"]).unwrap();
        assert_eq!(
            c.quic,
            Some(Quic {
                keepalive_ms: 100,
                idle_timeout_ms: 800
            })
        );
        // A whole table replaces the file's.
        let c = load(&["quic={keepalive_ms = 50}"]).unwrap();
        assert_eq!(c.quic.unwrap().idle_timeout_ms, 0);
        // An array replaces the file's as a whole.
        let c = load(&["eventservers=[\"10.0.0.1:8000\", \"10.0.0.2:8000\"]"]).unwrap();
        assert_eq!(c.eventservers, vec!["10.0.0.1:8000", "10.0.0.2:8000"]);
        // An element of an array of tables, by index.
        let c = load(&["peers.1.addr=c"]).unwrap();
        assert_eq!(c.peers[1].addr, "c");
        assert_eq!(c.peers[0].addr, "a");
        let e = load(&["peers.2.addr=c"]).unwrap_err();
        assert!(
            e.starts_with("--set peers.2.addr=c: `peers` is an array of 2"),
            "{e}"
        );
        // Tables are created as needed.
        let (_dir, path) = file("ip = \"10.0.0.1\"\n");
        let c: Cfg = load_with(&path, &sets(&["quic.keepalive_ms=5"])).unwrap();
        assert_eq!(c.quic.unwrap().keepalive_ms, 5);
        // A key below a value that is not a table.
        let e = load(&["sip_port.x=1"]).unwrap_err();
        assert_eq!(
            e,
            "--set sip_port.x=1: `sip_port` is an integer, not a table"
        );
    }

    #[test]
    fn strings_and_numbers() {
        // A number where a string is wanted: refused, naming the flag and the key.
        let e = load(&["domain=5"]).unwrap_err();
        assert!(
            e.starts_with("--set domain=5: domain: invalid type: integer `5`, expected a string"),
            "{e}"
        );
        assert_eq!(
            load(&["domain=\"5\""]).unwrap().domain.as_deref(),
            Some("5")
        );
        let e = load(&["sip_port=high"]).unwrap_err();
        assert!(
            e.starts_with("--set sip_port=high: sip_port: invalid type: string"),
            "{e}"
        );
        let e = load(&["sip_port=70000"]).unwrap_err();
        assert!(e.contains("sip_port") && e.contains("70000"), "{e}");
        let e = load(&["ip=10.0.0"]).unwrap_err();
        assert!(e.starts_with("--set ip=10.0.0: ip: "), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_flag() {
        let e = load(&["sip_portt=5070"]).unwrap_err();
        assert!(
            e.starts_with("--set sip_portt=5070: unknown field `sip_portt`, expected one of"),
            "{e}"
        );
        let e = load(&["quic.idle=1"]).unwrap_err();
        assert!(
            e.starts_with("--set quic.idle=1: unknown field `idle`"),
            "{e}"
        );
        let e = load(&["peers.0.name=x"]).unwrap_err();
        assert!(
            e.starts_with("--set peers.0.name=x: unknown field `name`"),
            "{e}"
        );
    }

    #[test]
    fn problems_of_the_file_still_name_the_file_and_line() {
        let (_dir, path) = file("ip = \"10.0.0.1\"\nsip_portt = 1\n");
        let e = load_with::<Cfg>(&path, &sets(&["sip_port=5"]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(&path.display().to_string()), "{e}");
        assert!(e.contains("line 2") && e.contains("sip_portt"), "{e}");
        // A missing key may come from the command line.
        let (_dir, path) = file("sip_port = 1\n");
        let e = load_with::<Cfg>(&path, &[]).unwrap_err().to_string();
        assert!(e.contains("missing field `ip`"), "{e}");
        let c: Cfg = load_with(&path, &sets(&["ip=10.0.0.3"])).unwrap();
        assert_eq!(c.ip.to_string(), "10.0.0.3");
    }

    #[test]
    fn validation_errors_name_the_flag() {
        let invalid = |key: &str| ConfigError::Invalid {
            path: "x.toml".into(),
            key: key.into(),
            problem: "must be at least 1".into(),
        };
        let o = sets(&["quic.idle_timeout_ms=0"]);
        assert_eq!(
            attribute(invalid("quic.idle_timeout_ms"), &o).to_string(),
            "--set quic.idle_timeout_ms=0: quic.idle_timeout_ms: must be at least 1"
        );
        // A problem with a table the flag changed a key of.
        assert!(attribute(invalid("quic"), &o)
            .to_string()
            .starts_with("--set quic.idle_timeout_ms=0"));
        // Another key: the file's problem.
        assert_eq!(
            attribute(invalid("sip_port"), &o).to_string(),
            "x.toml: sip_port: must be at least 1"
        );
    }

    #[test]
    fn named_flags() {
        let o = Override::from_flag(&ConfigFlag::IP, &["10.0.0.7".into()]).unwrap();
        assert_eq!(o.origin, "--ip 10.0.0.7");
        assert_eq!(o.value, toml::Value::String("10.0.0.7".into()));
        let list = Override::from_flag(
            &ConfigFlag::EVENTSERVER,
            &["10.0.0.1:8000".into(), "10.0.0.2:8000".into()],
        )
        .unwrap();
        assert_eq!(list.key(), "eventservers");
        assert_eq!(
            list.value,
            toml::Value::Array(vec!["10.0.0.1:8000".into(), "10.0.0.2:8000".into()])
        );
        assert!(Override::from_flag(&ConfigFlag::IP, &[]).is_none());
        let (_dir, path) = file(FILE);
        let e = load_with::<Cfg>(
            &path,
            &[Override::from_flag(&ConfigFlag::IP, &["nowhere".into()]).unwrap()],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("--ip nowhere: ip: invalid IP address syntax"),
            "{e}"
        );
    }
}
