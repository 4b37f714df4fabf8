//! Who may start a QUIC handshake: bounds that keep a storm of handshakes (bad certificates,
//! or none at all) from starving good members.
//!
//! Every QUIC server of a daemon (event server, manager, node peer port) passes each
//! incoming connection through one [`HandshakeGate`] before its handshake:
//!
//! 1. **Per source address**, a token bucket: [`Admission::per_source_per_sec`] handshakes a
//!    second with a burst of [`Admission::per_source_burst`]. A handshake that fails (a
//!    certificate from another CA, a revoked one, none) costs [`FAILURE_COST`] more tokens, so
//!    a source that keeps failing is held to a trickle while a member that succeeds is not.
//!    Past the bucket the connection is refused (`incoming.refuse()`, a stateless close: no
//!    crypto spent).
//! 2. **Address validation under load**: once [`Admission::retry_above`] handshakes are in
//!    progress, a client whose address is not yet validated gets a stateless retry first
//!    (`incoming.retry()`), so spoofed sources cost no handshake at all.
//! 3. **Globally**, at most [`Admission::max_handshakes`] handshakes in progress at once; past
//!    it, refused. A refused member retries with its back-off (50 ms doubling to 1 s).
//! 4. **Failures, globally**: a source whose last handshake failed may start another only
//!    while the farm-wide budget of [`Admission::failures_per_sec`] failed handshakes a second
//!    has room, so many sources with bad certificates together cost at most that much crypto a
//!    second, and a member whose handshakes succeed is never held back by them. A source's
//!    mark is cleared by a handshake that succeeds.
//!
//! The per-source table is bounded ([`MAX_SOURCES`] entries). When it is full, entries whose
//! bucket is full again (they hold no debt) are dropped; if every entry still holds debt, a
//! new source is admitted untracked (the global bound still holds).
//!
//! Counted in `quic_handshakes_total{outcome="ok|failed"}`,
//! `quic_handshakes_refused_total{reason="busy|rate"}`, `quic_handshakes_retried_total`, and the
//! gauge `quic_handshakes_in_progress`.
//!
//! Quinn's own buffers for connections not yet taken from the endpoint are bounded too
//! ([`limit_incoming`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::{Metric, Metrics};

/// Most source addresses tracked by one gate.
pub const MAX_SOURCES: usize = 16_384;
/// Extra tokens a failed handshake costs its source.
pub const FAILURE_COST: f64 = 4.0;
/// Longest a handshake may take before it is abandoned (its slot freed).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds on QUIC handshakes (the `[quic_admission]` table of a daemon that serves QUIC).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admission {
    /// Handshakes in progress at once; more are refused (the client retries).
    pub max_handshakes: usize,
    /// Past this many handshakes in progress, a client must first prove its address with a
    /// stateless retry. 0 asks every client for it, always.
    pub retry_above: usize,
    /// Handshakes one source address may start per second, on average.
    pub per_source_per_sec: f64,
    /// Handshakes one source address may start at once after a quiet spell.
    pub per_source_burst: f64,
    /// Failed handshakes a second, across every source, that sources whose last handshake
    /// failed may cost; past it such a source is refused (`rate`) until the budget refills.
    pub failures_per_sec: f64,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            max_handshakes: 128,
            retry_above: 32,
            per_source_per_sec: 20.0,
            per_source_burst: 40.0,
            failures_per_sec: 50.0,
        }
    }
}

impl Admission {
    /// Checks the values; the error names the key (under `quic_admission.`).
    pub fn check(&self) -> Result<(), (String, String)> {
        let key = |k: &str| format!("quic_admission.{k}");
        if self.max_handshakes == 0 {
            return Err((key("max_handshakes"), "must be at least 1".into()));
        }
        if !(self.per_source_per_sec.is_finite() && self.per_source_per_sec > 0.0) {
            return Err((key("per_source_per_sec"), "must be above 0".into()));
        }
        if !(self.per_source_burst.is_finite() && self.per_source_burst >= 1.0) {
            return Err((key("per_source_burst"), "must be at least 1".into()));
        }
        if !(self.failures_per_sec.is_finite() && self.failures_per_sec >= 1.0) {
            return Err((key("failures_per_sec"), "must be at least 1".into()));
        }
        Ok(())
    }
}

/// What to do with an incoming connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead with the handshake.
    Accept,
    /// Ask the client to prove its address first (stateless retry).
    Retry,
    /// Refuse: too many handshakes in progress.
    Busy,
    /// Refuse: this source started too many handshakes lately.
    Rate,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// The source's last handshake failed.
    failing: bool,
}

/// The per-source token buckets: pure, with the time as an argument.
#[derive(Debug)]
pub struct Sources {
    rate: f64,
    burst: f64,
    cap: usize,
    table: HashMap<IpAddr, Bucket>,
    /// Failed handshakes a second allowed to failing sources together, and their bucket
    /// (its burst is one second's worth).
    failure_rate: f64,
    failures: Bucket,
}

impl Sources {
    /// Buckets of `rate` tokens a second up to `burst`, for at most `cap` addresses.
    pub fn new(rate: f64, burst: f64, cap: usize) -> Sources {
        Sources {
            rate,
            burst,
            cap: cap.max(1),
            table: HashMap::new(),
            failure_rate: f64::INFINITY,
            failures: Bucket {
                tokens: f64::INFINITY,
                at: Instant::now(),
                failing: false,
            },
        }
    }

    /// The same, with failing sources held to `per_sec` failed handshakes a second together
    /// (see the module documentation).
    pub fn with_failure_budget(mut self, per_sec: f64, now: Instant) -> Sources {
        self.failure_rate = per_sec;
        self.failures = Bucket {
            tokens: per_sec,
            at: now,
            failing: false,
        };
        self
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * self.rate).min(self.burst);
        b.at = now;
    }

    /// Takes one token from `ip`'s bucket at `now`; false when it has none.
    pub fn take(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.table.contains_key(&ip) && self.table.len() >= self.cap {
            self.sweep(now);
            if self.table.len() >= self.cap {
                // Every tracked source is in debt: admit this one untracked (the global
                // bound on handshakes still holds).
                return true;
            }
        }
        let burst = self.burst;
        let mut b = *self.table.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
            failing: false,
        });
        self.refill(&mut b, now);
        let ok = b.tokens >= 1.0 && (!b.failing || self.failure_room(now));
        if ok {
            b.tokens -= 1.0;
            if b.failing {
                // Paid for now: a failing source's handshake is likely to fail again.
                self.spend_failure(now);
            }
        }
        self.table.insert(ip, b);
        ok
    }

    /// Charges `ip` `cost` more tokens (it may go into debt, down to minus one burst) for a
    /// failed handshake: the source is marked failing, and the failure budget shared by
    /// failing sources pays one.
    pub fn charge(&mut self, ip: IpAddr, cost: f64, now: Instant) {
        let floor = -self.burst;
        let mut bucket = self.table.get(&ip).copied();
        let was_failing = bucket.is_some_and(|b| b.failing);
        if let Some(b) = bucket.as_mut() {
            self.refill(b, now);
            b.tokens = (b.tokens - cost).max(floor);
            b.failing = true;
            self.table.insert(ip, *b);
        }
        if !was_failing {
            // A failing source paid when it was let in (see `take`).
            self.spend_failure(now);
        }
    }

    /// Takes one from the failure budget (into debt down to minus one second's worth).
    fn spend_failure(&mut self, now: Instant) {
        if !self.failure_rate.is_finite() {
            return;
        }
        let f = &mut self.failures;
        let dt = now.saturating_duration_since(f.at).as_secs_f64();
        f.tokens = ((f.tokens + dt * self.failure_rate).min(self.failure_rate) - 1.0)
            .max(-self.failure_rate);
        f.at = now;
    }

    /// A handshake from `ip` succeeded: it is no longer a failing source.
    pub fn succeeded(&mut self, ip: IpAddr) {
        if let Some(b) = self.table.get_mut(&ip) {
            b.failing = false;
        }
    }

    /// Whether the failure budget has room for one more failing source's handshake.
    fn failure_room(&self, now: Instant) -> bool {
        let f = &self.failures;
        let dt = now.saturating_duration_since(f.at).as_secs_f64();
        (f.tokens + dt * self.failure_rate).min(self.failure_rate) >= 1.0
    }

    /// Drops the entries whose bucket is full again.
    fn sweep(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        self.table.retain(|_, b| {
            let dt = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens + dt * rate < burst
        });
    }

    /// Addresses tracked.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no address is tracked.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[derive(Debug)]
struct Counters {
    ok: Metric,
    failed: Metric,
    busy: Metric,
    rate: Metric,
    retried: Metric,
    in_progress: Metric,
}

/// The gate in front of one QUIC server's handshakes; cheap to clone.
#[derive(Debug, Clone)]
pub struct HandshakeGate {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: Admission,
    slots: Arc<Semaphore>,
    sources: Mutex<Sources>,
    counters: Counters,
}

/// A handshake in progress: holds its slot until dropped. Tell the gate how it ended with
/// [`HandshakePermit::failed`] or [`HandshakePermit::succeeded`].
#[derive(Debug)]
pub struct HandshakePermit {
    gate: HandshakeGate,
    ip: IpAddr,
    _slot: OwnedSemaphorePermit,
}

impl HandshakePermit {
    /// The handshake failed: the source is charged [`FAILURE_COST`] tokens more.
    pub fn failed(self) {
        let g = &self.gate.inner;
        g.counters.failed.inc();
        g.sources
            .lock()
            .expect("sources")
            .charge(self.ip, FAILURE_COST, Instant::now());
    }

    /// The handshake succeeded: the source is no longer a failing one.
    pub fn succeeded(self) {
        let g = &self.gate.inner;
        g.counters.ok.inc();
        g.sources.lock().expect("sources").succeeded(self.ip);
    }
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        self.gate.inner.counters.in_progress.add(-1);
    }
}

impl HandshakeGate {
    /// A gate with these bounds, its figures in `metrics`.
    pub fn new(cfg: Admission, metrics: &Metrics) -> HandshakeGate {
        let refused = "QUIC connections refused before their handshake: busy (too many handshakes in progress) or rate (the source started too many lately).";
        let done = "QUIC handshakes finished: ok, or failed (bad or missing certificate, timeout).";
        HandshakeGate {
            inner: Arc::new(Inner {
                cfg,
                slots: Arc::new(Semaphore::new(cfg.max_handshakes.max(1))),
                sources: Mutex::new(
                    Sources::new(cfg.per_source_per_sec, cfg.per_source_burst, MAX_SOURCES)
                        .with_failure_budget(cfg.failures_per_sec, Instant::now()),
                ),
                counters: Counters {
                    ok: metrics.counter("quic_handshakes_total{outcome=\"ok\"}", done),
                    failed: metrics.counter("quic_handshakes_total{outcome=\"failed\"}", done),
                    busy: metrics
                        .counter("quic_handshakes_refused_total{reason=\"busy\"}", refused),
                    rate: metrics
                        .counter("quic_handshakes_refused_total{reason=\"rate\"}", refused),
                    retried: metrics.counter(
                        "quic_handshakes_retried_total",
                        "QUIC clients asked to prove their address (stateless retry) under load.",
                    ),
                    in_progress: metrics.gauge(
                        "quic_handshakes_in_progress",
                        "QUIC handshakes in progress.",
                    ),
                },
            }),
        }
    }

    /// The verdict for a connection from `ip` whose address is `validated` (or not) at
    /// `now`, and the slot when it is [`Verdict::Accept`].
    pub fn judge(
        &self,
        ip: IpAddr,
        validated: bool,
        now: Instant,
    ) -> (Verdict, Option<HandshakePermit>) {
        let g = &self.inner;
        let busy_now = g.cfg.max_handshakes - g.slots.available_permits();
        if !validated && busy_now >= g.cfg.retry_above {
            g.counters.retried.inc();
            return (Verdict::Retry, None);
        }
        if !g.sources.lock().expect("sources").take(ip, now) {
            g.counters.rate.inc();
            return (Verdict::Rate, None);
        }
        match g.slots.clone().try_acquire_owned() {
            Ok(slot) => {
                g.counters.in_progress.add(1);
                (
                    Verdict::Accept,
                    Some(HandshakePermit {
                        gate: self.clone(),
                        ip,
                        _slot: slot,
                    }),
                )
            }
            Err(_) => {
                g.counters.busy.inc();
                (Verdict::Busy, None)
            }
        }
    }

    /// Screens a quinn incoming connection: refuses it or asks for a retry (and returns
    /// `None`), or returns it with its slot for the handshake.
    pub fn screen(&self, incoming: quinn::Incoming) -> Option<(quinn::Incoming, HandshakePermit)> {
        let ip = incoming.remote_address().ip();
        let validated = incoming.remote_address_validated();
        match self.judge(ip, validated, Instant::now()) {
            (Verdict::Accept, Some(permit)) => Some((incoming, permit)),
            (Verdict::Retry, _) => {
                // Only an unvalidated address gets here, and quinn then always allows retry.
                if let Err(e) = incoming.retry() {
                    e.into_incoming().refuse();
                }
                None
            }
            _ => {
                incoming.refuse();
                None
            }
        }
    }

    /// Runs the handshake of a screened connection (at most [`HANDSHAKE_TIMEOUT`]) and
    /// tells the gate how it went.
    pub async fn handshake(
        incoming: quinn::Incoming,
        permit: HandshakePermit,
    ) -> Result<quinn::Connection, String> {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
            Ok(Ok(conn)) => {
                permit.succeeded();
                Ok(conn)
            }
            Ok(Err(e)) => {
                permit.failed();
                Err(crate::net::describe_handshake_error(&e))
            }
            Err(_) => {
                permit.failed();
                Err("handshake timed out".into())
            }
        }
    }
}

/// A budget of log lines: at most `lines` per `window`, so that a storm of refused
/// handshakes cannot fill the disk with one line each. The first line after a window that
/// suppressed some says how many.
#[derive(Debug)]
pub struct LogBudget {
    window: Duration,
    lines: u32,
    state: Mutex<(Option<Instant>, u32, u64)>,
}

impl LogBudget {
    /// At most `lines` lines per `window`.
    pub fn new(lines: u32, window: Duration) -> LogBudget {
        LogBudget {
            window,
            lines,
            state: Mutex::new((None, 0, 0)),
        }
    }

    /// Whether a line may be logged at `now`; when it may, also how many were suppressed
    /// since the last one logged.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let mut st = self.state.lock().expect("log budget");
        let (start, used, suppressed) = &mut *st;
        if start.is_none_or(|s| now.saturating_duration_since(s) >= self.window) {
            *start = Some(now);
            *used = 0;
        }
        if *used < self.lines {
            *used += 1;
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }
}

/// The budget of the handshake-refusal lines of a QUIC server: 20 per 10 s.
pub fn handshake_log_budget() -> LogBudget {
    LogBudget::new(20, Duration::from_secs(10))
}

/// Bounds what quinn buffers for connections not yet taken from the endpoint: at most 4,096
/// such connections, 64 KiB of early packets each and 16 MiB in all (quinn's defaults are
/// 65,536, 10 MiB and 100 MiB).
pub fn limit_incoming(cfg: &mut quinn::ServerConfig) {
    cfg.max_incoming(4096)
        .incoming_buffer_size(64 << 10)
        .incoming_buffer_size_total(16 << 20);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut s = Sources::new(10.0, 20.0, 100);
        let took = (0..30).filter(|_| s.take(ip(1), t0)).count();
        assert_eq!(took, 20, "the burst");
        assert!(!s.take(ip(1), t0 + Duration::from_millis(50)));
        assert!(
            s.take(ip(1), t0 + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert!(!s.take(ip(1), t0 + Duration::from_millis(150)));
        // Another source is not affected.
        assert!(s.take(ip(2), t0));
    }

    #[test]
    fn failures_cost_more_and_debt_is_bounded() {
        let t0 = Instant::now();
        let mut s = Sources::new(10.0, 20.0, 100);
        // Each failed handshake costs 1 + 4 tokens: a burst of 20 lasts 4 failures.
        for _ in 0..4 {
            assert!(s.take(ip(1), t0));
            s.charge(ip(1), FAILURE_COST, t0);
        }
        assert!(!s.take(ip(1), t0));
        // More failures deepen the debt only down to minus one burst: 2.1 s to get a token.
        s.charge(ip(1), 100.0, t0);
        assert!(!s.take(ip(1), t0 + Duration::from_millis(2000)));
        assert!(s.take(ip(1), t0 + Duration::from_millis(2100)));
        // A source that succeeds is only charged its one token.
        for _ in 0..20 {
            assert!(s.take(ip(2), t0));
        }
    }

    #[test]
    fn failing_sources_share_one_failure_budget_and_others_are_not_held_back() {
        let t0 = Instant::now();
        // Generous per-source buckets: only the shared failure budget (10 a second) binds.
        let mut s = Sources::new(1000.0, 1000.0, 1000).with_failure_budget(10.0, t0);
        // 100 sources each fail once: the first failure of a source is not held back.
        for i in 0..100u8 {
            assert!(s.take(ip(i), t0), "a first handshake from {i}");
            s.charge(ip(i), FAILURE_COST, t0);
        }
        // The budget is spent: none of them may try again at once...
        let again = (0..100u8).filter(|&i| s.take(ip(i), t0)).count();
        assert_eq!(again, 0);
        // ...while a source that never failed goes ahead.
        assert!(s.take(ip(200), t0));
        // The budget is in debt by one second's worth at most: after two seconds about ten
        // failing sources a second are let through again.
        let later = t0 + Duration::from_secs(2);
        let through = (0..100u8).filter(|&i| s.take(ip(i), later)).count();
        assert_eq!(through, 10);
        // A success clears the mark: that source is no longer held to the budget.
        s.succeeded(ip(50));
        assert!(s.take(ip(50), later));
    }

    #[test]
    fn the_table_is_bounded_and_keeps_only_debtors() {
        let t0 = Instant::now();
        let mut s = Sources::new(10.0, 2.0, 4);
        for i in 0..4 {
            assert!(s.take(ip(i), t0));
        }
        assert_eq!(s.len(), 4);
        // Full of debtors: a fifth source is admitted untracked.
        assert!(s.take(ip(9), t0));
        assert_eq!(s.len(), 4);
        // A second later every bucket is full again: swept, and the new source tracked.
        assert!(s.take(ip(9), t0 + Duration::from_secs(1)));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn the_gate_bounds_handshakes_and_asks_for_retries_under_load() {
        let metrics = Metrics::default();
        let gate = HandshakeGate::new(
            Admission {
                max_handshakes: 3,
                retry_above: 2,
                per_source_per_sec: 1000.0,
                per_source_burst: 1000.0,
                ..Admission::default()
            },
            &metrics,
        );
        let now = Instant::now();
        let a = gate.judge(ip(1), false, now);
        let b = gate.judge(ip(2), false, now);
        assert_eq!((a.0, b.0), (Verdict::Accept, Verdict::Accept));
        // Two in progress: unvalidated clients are asked to retry, validated ones go on.
        assert_eq!(gate.judge(ip(3), false, now).0, Verdict::Retry);
        let c = gate.judge(ip(3), true, now);
        assert_eq!(c.0, Verdict::Accept);
        assert_eq!(gate.judge(ip(4), true, now).0, Verdict::Busy);
        assert_eq!(metrics.value("quic_handshakes_in_progress"), Some(3));
        a.1.unwrap().failed();
        b.1.unwrap().succeeded();
        assert_eq!(metrics.value("quic_handshakes_in_progress"), Some(1));
        assert_eq!(gate.judge(ip(4), true, now).0, Verdict::Accept);
        assert_eq!(
            metrics.value("quic_handshakes_refused_total{reason=\"busy\"}"),
            Some(1)
        );
        assert_eq!(metrics.value("quic_handshakes_retried_total"), Some(1));
        assert_eq!(
            metrics.value("quic_handshakes_total{outcome=\"failed\"}"),
            Some(1)
        );
        drop(c);
    }

    #[test]
    fn the_gate_refuses_a_source_past_its_rate() {
        let metrics = Metrics::default();
        let gate = HandshakeGate::new(
            Admission {
                max_handshakes: 100,
                retry_above: 100,
                per_source_per_sec: 1.0,
                per_source_burst: 2.0,
                ..Admission::default()
            },
            &metrics,
        );
        let now = Instant::now();
        let held: Vec<_> = (0..2).map(|_| gate.judge(ip(1), true, now)).collect();
        assert!(held.iter().all(|(v, _)| *v == Verdict::Accept));
        assert_eq!(gate.judge(ip(1), true, now).0, Verdict::Rate);
        assert_eq!(gate.judge(ip(2), true, now).0, Verdict::Accept);
    }

    #[test]
    fn the_log_budget_says_what_it_suppressed() {
        let b = LogBudget::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(b.allow(t0), Some(0));
        assert_eq!(b.allow(t0), Some(0));
        assert_eq!(b.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(b.allow(t0 + Duration::from_secs(2)), None);
        assert_eq!(b.allow(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(b.allow(t0 + Duration::from_secs(10)), Some(0));
    }

    #[test]
    fn settings_are_checked() {
        assert!(Admission::default().check().is_ok());
        let bad = Admission {
            per_source_burst: 0.5,
            ..Admission::default()
        };
        assert_eq!(
            bad.check().unwrap_err().0,
            "quic_admission.per_source_burst"
        );
        let bad = Admission {
            max_handshakes: 0,
            ..Admission::default()
        };
        assert_eq!(bad.check().unwrap_err().0, "quic_admission.max_handshakes");
    }
}
