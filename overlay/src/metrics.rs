//! Prometheus text metrics over a minimal HTTP/1.1 endpoint.
//!
//! Each daemon keeps its figures in [`Metrics`] (named counters and gauges) and serves them
//! with [`serve`]. Any `GET` is answered with the text exposition format; the server handles a
//! bounded number of connections at a time and closes each after one answer.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::warn;

/// Whether a figure only goes up or can go both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
}

#[derive(Debug)]
struct Entry {
    help: &'static str,
    ty: MetricType,
    value: Arc<AtomicI64>,
}

/// A set of named figures; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    entries: Arc<Mutex<BTreeMap<String, Entry>>>,
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

impl Metrics {
    /// Registers (or finds) a figure. `name` may carry labels: `sip_responses_total{code="200"}`.
    pub fn register(&self, name: &str, help: &'static str, ty: MetricType) -> Metric {
        let mut map = self.entries.lock().expect("metrics");
        let e = map.entry(name.to_string()).or_insert_with(|| Entry {
            help,
            ty,
            value: Arc::new(AtomicI64::new(0)),
        });
        Metric(e.value.clone())
    }

    /// A counter.
    pub fn counter(&self, name: &str, help: &'static str) -> Metric {
        self.register(name, help, MetricType::Counter)
    }

    /// A gauge.
    pub fn gauge(&self, name: &str, help: &'static str) -> Metric {
        self.register(name, help, MetricType::Gauge)
    }

    /// The current value of a figure (by its full name, labels included), if registered.
    pub fn value(&self, name: &str) -> Option<i64> {
        let map = self.entries.lock().expect("metrics");
        map.get(name).map(|e| e.value.load(Ordering::Relaxed))
    }

    /// The text exposition of every figure, names prefixed with `onehop_`.
    pub fn render(&self) -> String {
        let map = self.entries.lock().expect("metrics");
        let mut out = String::new();
        let mut last_base = String::new();
        for (name, e) in map.iter() {
            let base = name.split('{').next().unwrap_or(name);
            if base != last_base {
                let ty = match e.ty {
                    MetricType::Counter => "counter",
                    MetricType::Gauge => "gauge",
                };
                let _ = writeln!(out, "# HELP onehop_{base} {}", e.help);
                let _ = writeln!(out, "# TYPE onehop_{base} {ty}");
                last_base = base.to_string();
            }
            let _ = writeln!(out, "onehop_{name} {}", e.value.load(Ordering::Relaxed));
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
            let map = self.entries.lock().expect("metrics");
            for name in map.keys() {
                if name.starts_with("members_by_role{") || name.starts_with("members_by_kind{") {
                    values.insert(name.clone(), 0);
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
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
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

    #[test]
    fn renders_help_type_and_labels() {
        let m = Metrics::default();
        m.counter("lookups_total", "Lookups answered.").add(3);
        m.counter("sip_responses_total{code=\"200\"}", "SIP responses.")
            .inc();
        m.counter("sip_responses_total{code=\"404\"}", "SIP responses.")
            .inc();
        let text = m.render();
        assert!(text.contains("# TYPE onehop_lookups_total counter\nonehop_lookups_total 3\n"));
        assert_eq!(text.matches("# HELP onehop_sip_responses_total").count(), 1);
        assert!(text.contains("onehop_sip_responses_total{code=\"404\"} 1"));
    }
}
