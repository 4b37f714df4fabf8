//! Log lines of a daemon: human-readable text or JSON objects, each naming the member.
//!
//! The member (its certificate's name and kind) is set once with [`set_member`], before or
//! after [`init_tracing`], and written by the formatter itself on every line, so lines from
//! every task carry it with no span to propagate:
//!
//! - human: `node1 2025-01-01T12:00:00.000000Z  INFO conn{peer=node2@10.0.0.8:40412}: ...`
//! - JSON: `{"timestamp":"...","level":"INFO","member":"node1","member_kind":"node",
//!   "span":"conn","peer":"node2@10.0.0.8:40412","message":"..."}`: one flat object per
//!   line, with the fields of the spans the event is in (outermost first) and then the
//!   event's own fields. A field whose name is taken by one of the fixed keys (`timestamp`,
//!   `level`, `member`, `member_kind`, `span`) is written as `field_NAME`.
//!
//! Lines about another party carry `peer`: its address, prefixed with its certificate name
//! where known (`node2@10.0.0.8:40412`, see [`peer_label`]).

use std::fmt;
use std::net::SocketAddr;
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{DefaultFields, Format, JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event, starting with the member's name.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

#[derive(Debug)]
struct Member {
    name: String,
    kind: String,
}

static MEMBER: OnceLock<Member> = OnceLock::new();

/// Names the member every log line of this process carries (its certificate's name and
/// kind). Only the first call takes effect; returns whether this one did.
pub fn set_member(name: &str, kind: &str) -> bool {
    MEMBER
        .set(Member {
            name: name.to_string(),
            kind: kind.to_string(),
        })
        .is_ok()
}

/// The member set with [`set_member`]: its name and kind.
pub fn member() -> Option<(&'static str, &'static str)> {
    MEMBER.get().map(|m| (m.name.as_str(), m.kind.as_str()))
}

/// The `peer` field of a line about another party: `NAME@ADDR` when its certificate is
/// known, the address alone otherwise.
pub fn peer_label(name: Option<&str>, addr: SocketAddr) -> String {
    match name {
        Some(n) => format!("{n}@{addr}"),
        None => addr.to_string(),
    }
}

/// Sets up `tracing` on stderr in `format`, filtered by `RUST_LOG` (default `info`, with
/// openraft's own lines off); text is coloured only on a terminal. Does nothing if a
/// subscriber is already set.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=off"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder
            .with_ansi(colour())
            .event_format(HumanLines {
                inner: Format::default().with_target(false),
            })
            .fmt_fields(DefaultFields::new())
            .try_init(),
        LogFormat::Json => builder
            .with_ansi(false)
            .event_format(JsonLines)
            .fmt_fields(JsonFields::new())
            .try_init(),
    };
}

/// Colours only on a terminal, and not with `NO_COLOR` set: log files and journals get plain
/// text.
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Text lines: the member's name, then tracing-subscriber's usual line.
#[derive(Debug)]
pub struct HumanLines {
    inner: Format,
}

impl<S, N> FormatEvent<S, N> for HumanLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if let Some((name, _)) = member() {
            write!(writer, "{name} ")?;
        }
        self.inner.format_event(ctx, writer, event)
    }
}

/// JSON lines: one flat object per event (see the module's documentation).
#[derive(Debug, Default)]
pub struct JsonLines;

const FIXED: [&str; 5] = ["timestamp", "level", "member", "member_kind", "span"];

/// Key/value pairs in insertion order; a later value of a key replaces the earlier one in
/// place.
#[derive(Default)]
struct Object(Vec<(String, serde_json::Value)>);

impl Object {
    fn put(&mut self, key: &str, value: serde_json::Value) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key.to_string(), value)),
        }
    }

    /// A field of a span or the event: kept clear of the fixed keys.
    fn field(&mut self, key: &str, value: serde_json::Value) {
        if FIXED.contains(&key) {
            self.put(&format!("field_{key}"), value);
        } else {
            self.put(key, value);
        }
    }

    fn write(&self, out: &mut impl fmt::Write) -> fmt::Result {
        out.write_char('{')?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.write_char(',')?;
            }
            let k = serde_json::to_string(k).map_err(|_| fmt::Error)?;
            let v = serde_json::to_string(v).map_err(|_| fmt::Error)?;
            write!(out, "{k}:{v}")?;
        }
        out.write_str("}\n")
    }
}

struct Fields<'a>(&'a mut Object);

impl Visit for Fields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.field(field.name(), serde_json::json!(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.field(field.name(), serde_json::json!(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.field(field.name(), serde_json::json!(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.field(field.name(), serde_json::json!(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.field(field.name(), serde_json::json!(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .field(field.name(), serde_json::json!(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .field(field.name(), serde_json::json!(format!("{value:?}")));
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut obj = Object::default();
        let mut time = String::new();
        SystemTime.format_time(&mut Writer::new(&mut time))?;
        obj.put("timestamp", time.into());
        obj.put("level", event.metadata().level().as_str().into());
        if let Some((name, kind)) = member() {
            obj.put("member", name.into());
            obj.put("member_kind", kind.into());
        }
        if let Some(scope) = ctx.event_scope() {
            let mut names = Vec::new();
            let mut fields = Object::default();
            for span in scope.from_root() {
                names.push(span.name());
                let ext = span.extensions();
                let Some(formatted) = ext.get::<FormattedFields<N>>() else {
                    continue;
                };
                // With JsonFields, a span's fields are stored as one JSON object.
                if let Ok(serde_json::Value::Object(map)) =
                    serde_json::from_str::<serde_json::Value>(formatted.fields.as_str())
                {
                    for (k, v) in map {
                        fields.field(&k, v);
                    }
                }
            }
            if !names.is_empty() {
                obj.put("span", names.join(":").into());
            }
            obj.0.extend(fields.0);
        }
        let mut own = Object::default();
        event.record(&mut Fields(&mut own));
        for (k, v) in own.0 {
            // Already kept clear of the fixed keys by `Fields`.
            obj.put(&k, v);
        }
        obj.write(&mut writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    impl Buf {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(String::from)
                .collect()
        }
    }

    fn log_some_lines() {
        let addr: SocketAddr = "10.0.0.8:40412".parse().unwrap();
        tracing::info!("no span");
        let span = tracing::info_span!("conn", peer = %peer_label(Some("node2"), addr));
        let _g = span.enter();
        let inner = tracing::info_span!("call", service = "store");
        let _i = inner.enter();
        tracing::warn!(member = "node3", n = 3, ok = true, "joined");
    }

    #[test]
    fn json_lines_are_flat_objects_naming_member_and_peer() {
        set_member("node1", "node");
        let buf = Buf::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(buf.clone())
            .event_format(JsonLines)
            .fmt_fields(JsonFields::new())
            .finish();
        tracing::subscriber::with_default(sub, log_some_lines);
        let lines: Vec<serde_json::Value> = buf
            .lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        for l in &lines {
            assert_eq!(l["member"], "node1");
            assert_eq!(l["member_kind"], "node");
            assert!(l["timestamp"].is_string());
        }
        assert_eq!(lines[0]["message"], "no span");
        assert!(lines[0].get("peer").is_none());
        let l = &lines[1];
        assert_eq!(l["level"], "WARN");
        assert_eq!(l["span"], "conn:call");
        assert_eq!(l["peer"], "node2@10.0.0.8:40412");
        assert_eq!(l["service"], "store");
        assert_eq!(l["n"], 3);
        assert_eq!(l["ok"], true);
        assert_eq!(l["message"], "joined");
        // A field named like a fixed key does not overwrite it.
        assert_eq!(l["field_member"], "node3");
        // The fixed keys come first.
        let text = &buf.lines()[1];
        assert!(
            text.starts_with("{\"timestamp\":") && text.contains("\"level\":\"WARN\",\"member\":"),
            "{text}"
        );
    }

    #[test]
    fn human_lines_start_with_the_member() {
        set_member("node1", "node");
        let buf = Buf::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(buf.clone())
            .with_ansi(false)
            .event_format(HumanLines {
                inner: Format::default().with_target(false).with_ansi(false),
            })
            .fmt_fields(DefaultFields::new())
            .finish();
        tracing::subscriber::with_default(sub, log_some_lines);
        let lines = buf.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines.iter().all(|l| l.starts_with("node1 ")), "{lines:?}");
        assert!(
            lines[1].contains("conn{peer=node2@10.0.0.8:40412}:call{service=\"store\"}: joined"),
            "{lines:?}"
        );
    }

    #[test]
    fn peer_labels() {
        let addr: SocketAddr = "[::1]:5060".parse().unwrap();
        assert_eq!(peer_label(Some("es1"), addr), "es1@[::1]:5060");
        assert_eq!(peer_label(None, addr), "[::1]:5060");
    }
}
