//! Prometheus metrics over a minimal HTTP/1.1 endpoint.
//!
//! Each daemon keeps its figures in [`Metrics`] (named counters, gauges and histograms) and
//! serves them with [`serve`]. The exposition is encoded by the official `prometheus-client`
//! crate (OpenMetrics text, which Prometheus reads); the figures themselves stay plain atomics
//! here, so that the hot paths (SIP workers, the DNS fast path, the relay's per-core loops)
//! pay one relaxed atomic add per observation and never a lock. Any `GET` is answered; the
//! server handles a bounded number of connections at a time and closes each after one answer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::warn;

/// Whether a figure only goes up, can go both ways, or counts observations into buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations (seconds) counted into buckets, with their sum and count.
    Histogram,
}

/// Upper bounds (seconds) for a latency in the sub-millisecond range up to a second or so:
/// DNS answers, lookups, the relay's forwarding.
pub const FAST_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Upper bounds (seconds) for a SIP response: from a locally answered REGISTER (well under a
/// millisecond) to an INVITE answered by a callee after ringing (seconds to a minute).
pub const SIP_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug)]
enum Value {
    Int(Arc<AtomicI64>),
    Hist(Histogram),
}

impl Value {
    /// Another handle to the same figure.
    fn handle(&self) -> Value {
        match self {
            Value::Int(v) => Value::Int(v.clone()),
            Value::Hist(h) => Value::Hist(h.clone()),
        }
    }
}

/// The series of one metric family (one base name), by their label text (`""` for none).
#[derive(Debug)]
struct Family {
    help: &'static str,
    ty: MetricType,
    series: BTreeMap<String, Series>,
}

#[derive(Debug)]
struct Series {
    labels: Labels,
    value: Value,
}

/// A set of named figures; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    families: Arc<Mutex<BTreeMap<String, Family>>>,
}

/// A handle to one figure.
#[derive(Debug, Clone)]
pub struct Metric(Arc<AtomicI64>);

impl Metric {
    /// Adds `n`.
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Adds one.
    pub fn inc(&self) {
        self.add(1)
    }
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// The value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A handle to one histogram series: lock-free, cheap to clone, and one relaxed atomic add
/// per bucket, sum and count on each observation.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    /// Upper bounds in nanoseconds, ascending; the last bucket (+Inf) is implied.
    bounds_ns: Vec<u64>,
    bounds: Vec<f64>,
    /// Observations per bucket (not cumulative): `bounds.len() + 1` of them.
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        let mut bounds: Vec<f64> = bounds
            .iter()
            .copied()
            .filter(|b| b.is_finite() && *b > 0.0)
            .collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        Histogram(Arc::new(HistogramInner {
            bounds_ns: bounds.iter().map(|b| (b * 1e9) as u64).collect(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            bounds,
            sum_ns: AtomicU64::new(0),
        }))
    }

    /// Records one observation of `d`.
    pub fn observe(&self, d: Duration) {
        self.observe_n(d, 1)
    }

    /// Records `n` observations of `d` each (a batch timed once and shared among its
    /// members).
    pub fn observe_n(&self, d: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let h = &self.0;
        let i = h.bounds_ns.partition_point(|b| *b < ns);
        h.counts[i].fetch_add(n, Ordering::Relaxed);
        h.sum_ns.fetch_add(ns.saturating_mul(n), Ordering::Relaxed);
    }

    /// Records one observation of `seconds` (negative or not a number counts as 0).
    pub fn observe_seconds(&self, seconds: f64) {
        let s = if seconds.is_finite() && seconds > 0.0 {
            seconds
        } else {
            0.0
        };
        self.observe(Duration::from_secs_f64(s.min(1e9)))
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// The sum of the observations so far, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// `(upper bound, observations in this bucket)`, the last bound `f64::MAX` for +Inf, as
    /// `prometheus-client` encodes them.
    fn buckets(&self) -> Vec<(f64, u64)> {
        let h = &self.0;
        h.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(h.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect()
    }
}

/// A series' labels, as `(name, value)` pairs.
type Labels = Vec<(String, String)>;

/// `name{k="v",...}` split into its base and its labels; `None` when the label text is
/// malformed.
fn split_name(name: &str) -> Option<(&str, &str, Labels)> {
    let Some((base, rest)) = name.split_once('{') else {
        return Some((name, "", Vec::new()));
    };
    let inner = rest.strip_suffix('}')?;
    let mut labels = Vec::new();
    let mut s = inner;
    while !s.is_empty() {
        let (k, v) = s.split_once("=\"")?;
        // Values are ours (method names, codes, reasons): no escaped quotes in them.
        let (v, next) = v.split_once('"')?;
        labels.push((k.to_string(), v.to_string()));
        s = next.strip_prefix(',').unwrap_or(next);
    }
    Some((base, &name[base.len()..], labels))
}

impl Metrics {
    fn series(
        &self,
        name: &str,
        help: &'static str,
        ty: MetricType,
        make: impl FnOnce() -> Value,
    ) -> Option<Value> {
        let (base, label_text, labels) = split_name(name).unwrap_or_else(|| {
            // A programming error in a literal name: keep the figure, unlabelled and renamed.
            warn!(name, "malformed metric name");
            (name, "", Vec::new())
        });
        let base = if label_text.is_empty() && base.contains('{') {
            "malformed_metric_name"
        } else {
            base
        };
        let mut map = self.families.lock().expect("metrics");
        let fam = map.entry(base.to_string()).or_insert_with(|| Family {
            help,
            ty,
            series: BTreeMap::new(),
        });
        if fam.ty != ty {
            warn!(name, "metric registered again with another type");
            return None;
        }
        let s = fam
            .series
            .entry(label_text.to_string())
            .or_insert_with(|| Series {
                labels,
                value: make(),
            });
        Some(s.value.handle())
    }

    /// Registers (or finds) a figure. `name` may carry labels: `sip_responses_total{code="200"}`.
    pub fn register(&self, name: &str, help: &'static str, ty: MetricType) -> Metric {
        match self.series(name, help, ty, || Value::Int(Arc::new(AtomicI64::new(0)))) {
            Some(Value::Int(v)) => Metric(v),
            // Registered under another type: a figure nobody serves, rather than a panic.
            _ => Metric(Arc::new(AtomicI64::new(0))),
        }
    }

    /// A counter.
    pub fn counter(&self, name: &str, help: &'static str) -> Metric {
        self.register(name, help, MetricType::Counter)
    }

    /// A gauge.
    pub fn gauge(&self, name: &str, help: &'static str) -> Metric {
        self.register(name, help, MetricType::Gauge)
    }

    /// A histogram of durations in seconds with upper bounds `buckets` (seconds, e.g.
    /// [`FAST_BUCKETS`]); `name` should end in `_seconds` and may carry labels:
    /// `sip_response_seconds{method="INVITE"}`. The buckets of the first series registered
    /// under a name serve for all of them.
    pub fn histogram(&self, name: &str, help: &'static str, buckets: &[f64]) -> Histogram {
        let base = name.split('{').next().unwrap_or(name);
        let first = {
            let map = self.families.lock().expect("metrics");
            map.get(base)
                .and_then(|f| f.series.values().next())
                .and_then(|s| match &s.value {
                    Value::Hist(h) => Some(h.0.bounds.clone()),
                    Value::Int(_) => None,
                })
        };
        let bounds = first.as_deref().unwrap_or(buckets);
        match self.series(name, help, MetricType::Histogram, || {
            Value::Hist(Histogram::new(bounds))
        }) {
            Some(Value::Hist(h)) => h,
            _ => Histogram::new(buckets),
        }
    }

    /// The series registered under `name` (labels included).
    fn find(&self, name: &str) -> Option<Value> {
        let (base, label_text) = name.split_at(name.find('{').unwrap_or(name.len()));
        let map = self.families.lock().expect("metrics");
        Some(map.get(base)?.series.get(label_text)?.value.handle())
    }

    /// The current value of a counter or gauge (by its full name, labels included), if
    /// registered.
    pub fn value(&self, name: &str) -> Option<i64> {
        match self.find(name)? {
            Value::Int(v) => Some(v.load(Ordering::Relaxed)),
            Value::Hist(_) => None,
        }
    }

    /// The histogram series `name` (labels included), if registered.
    pub fn histogram_of(&self, name: &str) -> Option<Histogram> {
        match self.find(name)? {
            Value::Hist(h) => Some(h),
            Value::Int(_) => None,
        }
    }

    /// The exposition of every figure, names prefixed with `onehop_`, encoded by
    /// `prometheus-client` in the OpenMetrics text format (ending `# EOF`). Sample names are
    /// those registered (`onehop_lookups_total`); a counter's family, on its `# TYPE` line,
    /// is named without `_total`, as OpenMetrics wants.
    pub fn render(&self) -> String {
        let mut registry = Registry::with_prefix("onehop");
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            warn!(cause = %e, "metrics encoding failed");
        }
        out
    }

    /// Sets `members_by_role{role="R"}` and `members_by_kind{kind="K"}` from `status`: the
    /// live members bearing each role and of each kind. A role or kind seen before and gone
    /// from `status` drops to 0 (the series stays, as Prometheus expects).
    pub fn set_membership(&self, status: &crate::status::NetworkStatus) {
        let mut roles: BTreeMap<String, i64> = BTreeMap::new();
        let mut kinds: BTreeMap<String, i64> = BTreeMap::new();
        for m in &status.members {
            *kinds.entry(m.kind.to_string()).or_default() += 1;
            for r in &m.roles {
                *roles.entry(r.as_str().to_string()).or_default() += 1;
            }
        }
        let mut values: BTreeMap<String, i64> = BTreeMap::new();
        {
            let map = self.families.lock().expect("metrics");
            for base in ["members_by_role", "members_by_kind"] {
                for labels in map.get(base).map(|f| f.series.keys()).into_iter().flatten() {
                    values.insert(format!("{base}{labels}"), 0);
                }
            }
        }
        for (r, n) in roles {
            values.insert(format!("members_by_role{{role=\"{r}\"}}"), n);
        }
        for (k, n) in kinds {
            values.insert(format!("members_by_kind{{kind=\"{k}\"}}"), n);
        }
        for (name, v) in values {
            let help = if name.starts_with("members_by_role") {
                "Live members bearing each role, in the status held."
            } else {
                "Live members of each kind, in the status held."
            };
            self.gauge(&name, help).set(v);
        }
    }
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let map = self.families.lock().expect("metrics");
        for (base, fam) in map.iter() {
            // prometheus-client appends `_total` to a counter's samples: name the family
            // without it, so that the samples keep the name registered. A counter named
            // otherwise is served as `unknown`, under its own name.
            let (name, ty) = match fam.ty {
                MetricType::Counter => match base.strip_suffix("_total") {
                    Some(stem) => (stem, prometheus_client::metrics::MetricType::Counter),
                    None => (
                        base.as_str(),
                        prometheus_client::metrics::MetricType::Unknown,
                    ),
                },
                MetricType::Gauge => (base.as_str(), prometheus_client::metrics::MetricType::Gauge),
                MetricType::Histogram => (
                    base.as_str(),
                    prometheus_client::metrics::MetricType::Histogram,
                ),
            };
            let mut me = encoder.encode_descriptor(name, fam.help, None, ty)?;
            for s in fam.series.values() {
                if s.labels.is_empty() {
                    encode_series(&mut me, ty, &s.value)?;
                } else {
                    encode_series(&mut me.encode_family(&s.labels)?, ty, &s.value)?;
                }
            }
        }
        Ok(())
    }
}

fn encode_series(
    me: &mut MetricEncoder,
    ty: prometheus_client::metrics::MetricType,
    value: &Value,
) -> Result<(), std::fmt::Error> {
    use prometheus_client::metrics::MetricType as T;
    match (value, ty) {
        (Value::Int(v), T::Counter) => {
            let v = u64::try_from(v.load(Ordering::Relaxed)).unwrap_or(0);
            me.encode_counter::<NoLabelSet, u64, u64>(&v, None)
        }
        (Value::Int(v), _) => me.encode_gauge(&v.load(Ordering::Relaxed)),
        (Value::Hist(h), _) => {
            let buckets = h.buckets();
            let count = buckets.iter().map(|(_, n)| n).sum();
            me.encode_histogram::<NoLabelSet>(h.sum_seconds(), count, &buckets, None)
        }
    }
}

/// Serves `metrics` on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    loop {
        let (mut sock, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning on the error.
                warn!(cause = %e, "metrics accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let m = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut buf = [0u8; 2048];
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(2), sock.read(&mut buf)).await;
            let body = m.render();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            // A scraper that stops reading loses the connection (and its slot) after 10 s.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
                sock.write_all(head.as_bytes()).await?;
                sock.write_all(body.as_bytes()).await?;
                sock.shutdown().await
            })
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_gauges_by_role_and_kind_drop_to_zero_when_gone() {
        use crate::status::{Kind, Member, NetworkStatus, Role};
        let member = |name: &str, kind: Kind, roles: &[&str]| {
            std::sync::Arc::new(Member {
                name: name.into(),
                kind,
                roles: roles.iter().map(|r| Role::new(r).unwrap()).collect(),
                endpoints: Vec::new(),
                since: 0,
                ip: "127.0.0.1".parse().unwrap(),
            })
        };
        let mut status = NetworkStatus {
            members: vec![
                member("node1", Kind::Node, &["sip_proxy", "registrar"]),
                member("node2", Kind::Node, &["registrar"]),
                member("dns1", Kind::Dns, &[]),
            ],
            ..NetworkStatus::default()
        };
        let m = Metrics::default();
        m.set_membership(&status);
        assert_eq!(m.value("members_by_role{role=\"registrar\"}"), Some(2));
        assert_eq!(m.value("members_by_role{role=\"sip_proxy\"}"), Some(1));
        assert_eq!(m.value("members_by_kind{kind=\"node\"}"), Some(2));
        assert_eq!(m.value("members_by_kind{kind=\"dns\"}"), Some(1));
        status.members.retain(|x| x.name == "node2");
        m.set_membership(&status);
        assert_eq!(m.value("members_by_role{role=\"sip_proxy\"}"), Some(0));
        assert_eq!(m.value("members_by_role{role=\"registrar\"}"), Some(1));
        assert_eq!(m.value("members_by_kind{kind=\"dns\"}"), Some(0));
        assert!(m.render().contains("# TYPE onehop_members_by_role gauge"));
    }

    /// The exposition parsed as Prometheus text: `# TYPE` per family and `name value` per
    /// sample, every sample line well formed.
    fn parse(text: &str) -> (BTreeMap<String, String>, BTreeMap<String, f64>) {
        let mut types = BTreeMap::new();
        let mut samples = BTreeMap::new();
        assert!(text.ends_with("# EOF\n"), "{text}");
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (name, ty) = t.split_once(' ').expect("type line");
                assert!(
                    types.insert(name.to_string(), ty.to_string()).is_none(),
                    "{name} twice"
                );
            } else if line.starts_with("# HELP ") || line == "# EOF" {
            } else {
                let (k, v) = line.rsplit_once(' ').expect("sample line");
                let base = k.split('{').next().unwrap();
                assert!(
                    base.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                    "{line}"
                );
                if let Some((_, labels)) = k.split_once('{') {
                    assert!(labels.ends_with('}') && labels.contains("=\""), "{line}");
                }
                let v: f64 = v.parse().unwrap_or_else(|_| panic!("value of {line}"));
                samples.insert(k.to_string(), v);
            }
        }
        (types, samples)
    }

    #[test]
    fn renders_help_type_and_labels() {
        let m = Metrics::default();
        m.counter("lookups_total", "Lookups answered.").add(3);
        m.counter("sip_responses_total{code=\"200\"}", "SIP responses.")
            .inc();
        m.counter("sip_responses_total{code=\"404\"}", "SIP responses.")
            .inc();
        m.gauge("relay_sessions", "Sessions.").set(-2);
        m.counter(
            "sip_inbound_dropped_total{bound=\"bytes\",x=\"y\"}",
            "Dropped.",
        )
        .add(5);
        let text = m.render();
        // Sample names as registered; a counter's family named without `_total`.
        assert!(
            text.contains("# TYPE onehop_lookups counter\nonehop_lookups_total 3\n"),
            "{text}"
        );
        assert_eq!(text.matches("# HELP onehop_sip_responses").count(), 1);
        assert!(text.contains("onehop_sip_responses_total{code=\"404\"} 1\n"));
        assert!(text.contains("# TYPE onehop_relay_sessions gauge\nonehop_relay_sessions -2\n"));
        let (types, samples) = parse(&text);
        assert_eq!(types["onehop_sip_responses"], "counter");
        assert_eq!(
            samples["onehop_sip_inbound_dropped_total{bound=\"bytes\",x=\"y\"}"],
            5.0
        );
        assert_eq!(m.value("sip_responses_total{code=\"200\"}"), Some(1));
        assert_eq!(m.value("relay_sessions"), Some(-2));
        assert_eq!(m.value("nothing"), None);
    }

    #[test]
    fn histograms_render_buckets_sum_and_count() {
        let m = Metrics::default();
        m.counter("lookups_total", "Lookups answered.").inc();
        let reg = m.histogram(
            "sip_response_seconds{method=\"REGISTER\"}",
            "SIP response time.",
            SIP_BUCKETS,
        );
        let inv = m.histogram(
            "sip_response_seconds{method=\"INVITE\"}",
            "SIP response time.",
            &[1.0],
        );
        for _ in 0..99 {
            reg.observe(Duration::from_micros(300));
        }
        reg.observe(Duration::from_secs(3));
        inv.observe_seconds(120.0);
        inv.observe_seconds(f64::NAN);
        assert_eq!(reg.count(), 100);
        let text = m.render();
        let (types, s) = parse(&text);
        assert_eq!(types["onehop_sip_response_seconds"], "histogram");
        assert_eq!(types["onehop_lookups"], "counter");
        assert_eq!(s["onehop_lookups_total"], 1.0);
        let b = |m: &str, le: &str| {
            let k = format!("onehop_sip_response_seconds_bucket{{le=\"{le}\",method=\"{m}\"}}");
            *s.get(&k).unwrap_or_else(|| panic!("no {k} in {text}"))
        };
        assert_eq!(b("REGISTER", "0.00025"), 0.0);
        assert_eq!(b("REGISTER", "0.0005"), 99.0);
        assert_eq!(b("REGISTER", "2.5"), 99.0);
        assert_eq!(b("REGISTER", "5.0"), 100.0);
        assert_eq!(b("REGISTER", "+Inf"), 100.0);
        assert_eq!(
            s["onehop_sip_response_seconds_count{method=\"REGISTER\"}"],
            100.0
        );
        let sum = s["onehop_sip_response_seconds_sum{method=\"REGISTER\"}"];
        assert!((sum - (99.0 * 0.0003 + 3.0)).abs() < 1e-6, "{sum}");
        // The second series shares the first's buckets; 120 s lands in +Inf, NaN in the first.
        assert_eq!(b("INVITE", "60.0"), 1.0);
        assert_eq!(b("INVITE", "+Inf"), 2.0);
        assert_eq!(b("INVITE", "0.0001"), 1.0);
        assert!(m
            .histogram_of("sip_response_seconds{method=\"INVITE\"}")
            .is_some());
        assert_eq!(m.value("sip_response_seconds{method=\"INVITE\"}"), None);
    }

    #[test]
    fn a_name_registered_under_two_types_does_not_panic() {
        let m = Metrics::default();
        m.counter("x_total", "X.").inc();
        let g = m.gauge("x_total", "X.");
        g.set(7);
        let h = m.histogram("x_total", "X.", FAST_BUCKETS);
        h.observe(Duration::from_millis(1));
        assert_eq!(m.value("x_total"), Some(1));
        let (_, s) = parse(&m.render());
        assert_eq!(s["onehop_x_total"], 1.0);
    }
}
