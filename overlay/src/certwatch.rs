//! Certificates over time: the CA certificate and the member's own certificate nearing the
//! end of their validity, and a revocation list past its next update, reported before they
//! bite.
//!
//! Every daemon runs one [`CertWatch`] ([`CertWatch::spawn`]). Once a second it sets its
//! gauges:
//!
//! | metric | meaning |
//! |---|---|
//! | `cert_expires_in_seconds{cert="ca"}` | seconds until the CA certificate's `notAfter` (negative once past) |
//! | `cert_expires_in_seconds{cert="own"}` | the same for the member's own certificate |
//! | `crl_next_update_in_seconds` | seconds until the revocation list's `nextUpdate` (negative once past; only while a list with one is held) |
//! | `crl_stale` | 1 while the list held is past its `nextUpdate`, else 0 |
//!
//! and a [`Reporter`] decides what to say: a log line (WARN for a certificate within
//! [`CertWarnings::warn_days`] of its end, ERROR for one past it and for a stale list) when a
//! condition starts or changes, and again every [`CertWarnings::repeat_secs`] while it lasts;
//! an INFO line when it ends (a new certificate or list). Each line is also handed to the
//! daemon's `publish` function, which puts it on the `events` topic for the monitor; a line
//! that reached no event server is offered again on the next tick until one takes it.
//!
//! A stale list is still enforced: the serials it names stay refused (rustls's verifiers
//! ignore `nextUpdate` unless told otherwise, and we do not tell them). See the project's
//! decisions (issue 11).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::crl::CrlStore;
use crate::metrics::{Metric, Metrics};
use crate::wire::Level;

/// Default [`CertWarnings::warn_days`].
pub const DEFAULT_WARN_DAYS: u32 = 30;
/// Default [`CertWarnings::repeat_secs`]: hourly.
pub const DEFAULT_REPEAT_SECS: u64 = 3600;
/// How often the gauges are refreshed and the conditions looked at.
pub const TICK: Duration = Duration::from_secs(1);

/// When certificates and the revocation list are reported (the `[cert_warnings]` table of
/// every daemon's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CertWarnings {
    /// A certificate (the CA's or the member's own) is reported this many days before its
    /// end (WARN), and after it (ERROR).
    pub warn_days: u32,
    /// While a condition lasts, its line is repeated every this many seconds (at least 1).
    pub repeat_secs: u64,
}

impl Default for CertWarnings {
    fn default() -> Self {
        CertWarnings {
            warn_days: DEFAULT_WARN_DAYS,
            repeat_secs: DEFAULT_REPEAT_SECS,
        }
    }
}

impl CertWarnings {
    /// Checks the values; the error names the key.
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.repeat_secs == 0 {
            return Err((
                "cert_warnings.repeat_secs".into(),
                "must be at least 1".into(),
            ));
        }
        if self.warn_days > 3650 {
            return Err((
                "cert_warnings.warn_days".into(),
                "must be at most 3650 (ten years)".into(),
            ));
        }
        Ok(())
    }
}

/// What a report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    /// The CA certificate.
    Ca,
    /// The member's own certificate.
    Own,
    /// The revocation list in force.
    Crl,
}

impl Subject {
    const ALL: [Subject; 3] = [Subject::Ca, Subject::Own, Subject::Crl];

    /// The label value of the metrics and log lines: `ca`, `own`, `crl`.
    pub fn label(self) -> &'static str {
        match self {
            Subject::Ca => "ca",
            Subject::Own => "own",
            Subject::Crl => "crl",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How a subject stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// Nothing to say.
    Fine,
    /// A certificate within the warning window of its end.
    Soon,
    /// A certificate past its end, or a revocation list past its next update.
    Over,
}

/// What the watch knows at a moment (all times in unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The member's name (its certificate's CN).
    pub name: String,
    /// The member's own certificate's `notAfter`.
    pub own_not_after: i64,
    /// The CA certificate's `notAfter`.
    pub ca_not_after: i64,
    /// The revocation list held: its number and `nextUpdate`, if any list is held.
    pub crl: Option<(u64, Option<i64>)>,
}

/// One report: a line for the log and for the `events` topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// What it is about.
    pub subject: Subject,
    /// How it stands.
    pub health: Health,
    /// Severity: WARN for [`Health::Soon`], ERROR for [`Health::Over`], INFO when fine again.
    pub level: Level,
    /// Seconds until the end (negative: since), for the log line's fields.
    pub remaining: i64,
    /// The sentence.
    pub text: String,
}

/// Decides when to report: a pure state machine driven by [`Reporter::tick`] with the time
/// as an argument.
#[derive(Debug, Clone)]
pub struct Reporter {
    cfg: CertWarnings,
    /// Per subject: the health last reported and when.
    last: [(Health, i64); 3],
}

impl Reporter {
    /// A reporter that has said nothing yet.
    pub fn new(cfg: CertWarnings) -> Reporter {
        Reporter {
            cfg,
            last: [(Health::Fine, i64::MIN); 3],
        }
    }

    /// How `subject` stands at `now` by `facts`, with the seconds left (negative: overdue);
    /// `None` when there is nothing to measure (no revocation list, or one without a next
    /// update).
    pub fn assess(&self, subject: Subject, now: i64, facts: &Facts) -> Option<(Health, i64)> {
        let window = i64::from(self.cfg.warn_days) * 86_400;
        let cert = |end: i64| {
            let left = end - now;
            let h = if left <= 0 {
                Health::Over
            } else if left <= window {
                Health::Soon
            } else {
                Health::Fine
            };
            (h, left)
        };
        match subject {
            Subject::Ca => Some(cert(facts.ca_not_after)),
            Subject::Own => Some(cert(facts.own_not_after)),
            Subject::Crl => {
                let next = facts.crl?.1?;
                let left = next - now;
                Some((if left < 0 { Health::Over } else { Health::Fine }, left))
            }
        }
    }

    /// The reports due at `now`: a subject not fine is reported when its health differs
    /// from the last report or the last report is `repeat_secs` old; a subject fine again
    /// after a report is reported once (INFO).
    pub fn tick(&mut self, now: i64, facts: &Facts) -> Vec<Notice> {
        let mut out = Vec::new();
        for subject in Subject::ALL {
            let (health, left) = self
                .assess(subject, now, facts)
                .unwrap_or((Health::Fine, 0));
            let (last, at) = self.last[subject.index()];
            let due = match health {
                Health::Fine => last != Health::Fine,
                _ => {
                    health != last
                        || now.saturating_sub(at)
                            >= self.cfg.repeat_secs.min(i64::MAX as u64) as i64
                }
            };
            if !due {
                continue;
            }
            self.last[subject.index()] = (health, now);
            out.push(Notice {
                subject,
                health,
                level: match health {
                    Health::Fine => Level::Info,
                    Health::Soon => Level::Warn,
                    Health::Over => Level::Error,
                },
                remaining: left,
                text: sentence(subject, health, left, now, facts),
            });
        }
        out
    }
}

fn sentence(subject: Subject, health: Health, left: i64, now: i64, facts: &Facts) -> String {
    let at = rfc3339(now + left);
    let name = &facts.name;
    match (subject, health) {
        (Subject::Own, Health::Soon) => format!(
            "certificate of {name} expires in {} (at {at}): issue a new one (onehop-certs issue) and restart {name} before then",
            span(left)
        ),
        (Subject::Own, Health::Over) => format!(
            "certificate of {name} expired {} ago (at {at}): other members refuse its new connections; issue a new one and restart {name}",
            span(-left)
        ),
        (Subject::Own, Health::Fine) => {
            format!("certificate of {name} is valid until {at}")
        }
        (Subject::Ca, Health::Soon) => format!(
            "CA certificate expires in {} (at {at}): every member certificate stops working then; move the farm to a new CA before then",
            span(left)
        ),
        (Subject::Ca, Health::Over) => format!(
            "CA certificate expired {} ago (at {at}): no new connection can be verified",
            span(-left)
        ),
        (Subject::Ca, Health::Fine) => format!("CA certificate is valid until {at}"),
        (Subject::Crl, Health::Fine) => match facts.crl {
            Some((number, Some(_))) => format!(
                "revocation list #{number} is current (next update due at {at})"
            ),
            Some((number, None)) => format!("revocation list #{number} is current"),
            None => "no revocation list held".to_string(),
        },
        (Subject::Crl, _) => {
            let number = facts.crl.map(|(n, _)| n).unwrap_or(0);
            format!(
                "revocation list #{number} is stale: its next update was due {} ago (at {at}); it is still enforced; sign and publish a fresh one (onehop-certs crl --dir CA --publish)",
                span(-left)
            )
        }
    }
}

/// Seconds as an operator reads them: `42 s`, `5 min`, `3 h 5 min`, `29 days 23 h`.
pub fn span(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, (s / 60) % 60),
        _ => {
            let days = s / 86_400;
            let unit = if days == 1 { "day" } else { "days" };
            format!("{days} {unit} {} h", (s / 3600) % 24)
        }
    }
}

/// Unix seconds as RFC 3339 UTC.
pub fn rfc3339(secs: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The `notAfter` of a DER certificate in unix seconds.
pub fn not_after(cert_der: &[u8]) -> Option<i64> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Hands a notice to the `events` topic; returns whether any event server took it.
pub type Publish = Box<dyn Fn(&Notice) -> bool + Send + Sync>;

/// A [`Publish`] that puts notices on the `events` topic through a member's event-server
/// sessions (taken when at least one session is up).
pub fn to_events(client: crate::client::EventClient) -> Publish {
    Box::new(move |n| {
        client.publish(crate::wire::Payload::Log(crate::wire::LogEvent {
            time_ms: crate::daemon::now_ms(),
            level: n.level,
            text: n.text.clone(),
        })) > 0
    })
}

/// A daemon's watch over its certificates and revocation list.
pub struct CertWatch {
    name: String,
    own_not_after: i64,
    ca_not_after: i64,
    crl: Arc<CrlStore>,
    reporter: Reporter,
    gauges: Gauges,
}

impl std::fmt::Debug for CertWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertWatch")
            .field("name", &self.name)
            .field("own_not_after", &self.own_not_after)
            .field("ca_not_after", &self.ca_not_after)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Gauges {
    metrics: Metrics,
    ca: Metric,
    own: Metric,
    stale: Metric,
    next_update: Option<Metric>,
}

impl CertWatch {
    /// A watch over the certificates in `creds` and the list in `crl`, reporting as `cfg`
    /// says, its gauges in `metrics`.
    pub fn new(
        creds: &crate::tls::Credentials,
        crl: Arc<CrlStore>,
        cfg: CertWarnings,
        metrics: &Metrics,
    ) -> CertWatch {
        let help = "Seconds until the certificate's end of validity (negative once past): ca, or own (this member's).";
        CertWatch {
            name: creds.identity.name.clone(),
            own_not_after: creds.identity.not_after,
            // Credentials::load parsed the CA already; i64::MAX only if it somehow cannot.
            ca_not_after: not_after(&creds.ca).unwrap_or(i64::MAX),
            crl,
            reporter: Reporter::new(cfg),
            gauges: Gauges {
                metrics: metrics.clone(),
                ca: metrics.gauge("cert_expires_in_seconds{cert=\"ca\"}", help),
                own: metrics.gauge("cert_expires_in_seconds{cert=\"own\"}", help),
                stale: metrics.gauge(
                    "crl_stale",
                    "1 while the revocation list held is past its next update (still enforced), else 0.",
                ),
                next_update: None,
            },
        }
    }

    /// What the watch knows now.
    pub fn facts(&self) -> Facts {
        let crl = self.crl.current();
        Facts {
            name: self.name.clone(),
            own_not_after: self.own_not_after,
            ca_not_after: self.ca_not_after,
            crl: crl.der.as_ref().map(|_| (crl.order.0, crl.next_update)),
        }
    }

    /// One step at `now` (unix seconds): sets the gauges, logs and returns the notices due.
    pub fn step(&mut self, now: i64) -> Vec<Notice> {
        let facts = self.facts();
        self.gauges.ca.set(facts.ca_not_after.saturating_sub(now));
        self.gauges.own.set(facts.own_not_after.saturating_sub(now));
        let crl = self.reporter.assess(Subject::Crl, now, &facts);
        self.gauges
            .stale
            .set(i64::from(matches!(crl, Some((Health::Over, _)))));
        if let Some((_, left)) = crl {
            let g = self.gauges.next_update.get_or_insert_with(|| {
                self.gauges.metrics.gauge(
                    "crl_next_update_in_seconds",
                    "Seconds until the revocation list's next update is due (negative once past: stale).",
                )
            });
            g.set(left);
        }
        let notices = self.reporter.tick(now, &facts);
        for n in &notices {
            log(n);
        }
        notices
    }

    /// Runs the watch until the task is dropped: a step at once and then every [`TICK`].
    /// Each notice goes to `publish` too (when given); one that reached no event server is
    /// offered again on later ticks until one takes it (the newest per subject).
    pub fn spawn(mut self, publish: Option<Publish>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut pending: Vec<Notice> = Vec::new();
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let fresh = self.step(unix_now());
                let Some(publish) = &publish else { continue };
                for n in fresh {
                    pending.retain(|p| p.subject != n.subject);
                    pending.push(n);
                }
                pending.retain(|n| !publish(n));
            }
        })
    }
}

fn log(n: &Notice) {
    let cert = n.subject.label();
    let remaining_s = n.remaining;
    match n.level {
        Level::Info => info!(cert, remaining_s, "{}", n.text),
        Level::Warn => warn!(cert, remaining_s, "{}", n.text),
        Level::Error => error!(cert, remaining_s, "{}", n.text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const T0: i64 = 1_800_000_000;

    fn facts(own_in: i64, ca_in: i64, crl_in: Option<i64>) -> Facts {
        Facts {
            name: "node9".into(),
            own_not_after: T0 + own_in,
            ca_not_after: T0 + ca_in,
            crl: crl_in.map(|d| (4, Some(T0 + d))),
        }
    }

    fn subjects(n: &[Notice]) -> Vec<(Subject, Health)> {
        n.iter().map(|n| (n.subject, n.health)).collect()
    }

    #[test]
    fn fine_certificates_and_a_current_list_say_nothing() {
        let mut r = Reporter::new(CertWarnings::default());
        let f = facts(31 * DAY, 3000 * DAY, Some(7 * DAY));
        assert!(r.tick(T0, &f).is_empty());
        assert!(
            r.tick(T0 + 6 * DAY, &facts(100 * DAY, 3000 * DAY, Some(7 * DAY)))
                .is_empty(),
            "a day of the list left"
        );
        // No list at all, or one without a next update: nothing to measure.
        assert!(r.tick(T0, &facts(31 * DAY, 3000 * DAY, None)).is_empty());
        let mut no_next = f.clone();
        no_next.crl = Some((4, None));
        assert_eq!(r.assess(Subject::Crl, T0, &no_next), None);
    }

    #[test]
    fn within_the_window_warns_past_the_end_errs() {
        let r = Reporter::new(CertWarnings::default());
        let f = facts(30 * DAY, 29 * DAY, Some(-1));
        assert_eq!(
            r.assess(Subject::Own, T0, &f),
            Some((Health::Soon, 30 * DAY)),
            "the 30th day counts"
        );
        assert_eq!(
            r.assess(Subject::Own, T0 - 1, &f),
            Some((Health::Fine, 30 * DAY + 1))
        );
        assert_eq!(r.assess(Subject::Ca, T0, &f).unwrap().0, Health::Soon);
        assert_eq!(
            r.assess(Subject::Own, T0 + 30 * DAY, &f),
            Some((Health::Over, 0))
        );
        assert_eq!(r.assess(Subject::Crl, T0, &f), Some((Health::Over, -1)));
        assert_eq!(
            r.assess(Subject::Crl, T0 - 1, &f),
            Some((Health::Fine, 0)),
            "due now is not yet stale"
        );
    }

    #[test]
    fn a_condition_is_reported_at_start_on_change_and_at_the_repeat_interval_only() {
        let cfg = CertWarnings {
            warn_days: 30,
            repeat_secs: 3600,
        };
        let mut r = Reporter::new(cfg);
        let f = facts(10 * DAY, 3000 * DAY, Some(5));
        let first = r.tick(T0, &f);
        assert_eq!(subjects(&first), [(Subject::Own, Health::Soon)]);
        assert_eq!(first[0].level, Level::Warn);
        assert!(
            first[0]
                .text
                .contains("certificate of node9 expires in 10 days 0 h"),
            "{}",
            first[0].text
        );
        // Ticks every second for an hour: nothing new until the list goes stale at T0 + 6.
        let mut said = Vec::new();
        for t in 1..3600 {
            said.extend(subjects(&r.tick(T0 + t, &f)));
        }
        assert_eq!(said, [(Subject::Crl, Health::Over)]);
        // The hour is up for the certificate (said at T0), not yet for the list (at T0 + 6).
        assert_eq!(
            subjects(&r.tick(T0 + 3600, &f)),
            [(Subject::Own, Health::Soon)]
        );
        assert_eq!(
            subjects(&r.tick(T0 + 3606, &f)),
            [(Subject::Crl, Health::Over)]
        );
        // A day of ticks: 24 lines each, never more.
        let mut count = 0;
        for t in (3607..3607 + DAY).step_by(1) {
            count += r.tick(T0 + t, &f).len();
        }
        assert_eq!(count, 48);
    }

    #[test]
    fn a_worse_state_is_said_at_once_and_a_cure_once() {
        let mut r = Reporter::new(CertWarnings {
            warn_days: 1,
            repeat_secs: 3600,
        });
        let f = facts(10, 3000 * DAY, Some(100));
        assert_eq!(subjects(&r.tick(T0, &f)), [(Subject::Own, Health::Soon)]);
        let over = r.tick(T0 + 10, &f);
        assert_eq!(subjects(&over), [(Subject::Own, Health::Over)]);
        assert_eq!(over[0].level, Level::Error);
        assert!(over[0].text.contains("expired 0 s ago"), "{}", over[0].text);
        // A renewed certificate and a fresh list: one INFO line each, then silence.
        let mut renewed = facts(400 * DAY, 3000 * DAY, Some(7 * DAY));
        renewed.crl = Some((5, Some(T0 + 7 * DAY)));
        let stale = facts(10, 3000 * DAY, Some(-100));
        assert_eq!(
            subjects(&r.tick(T0 + 11, &stale)),
            [(Subject::Crl, Health::Over)]
        );
        let cured = r.tick(T0 + 12, &renewed);
        assert_eq!(
            subjects(&cured),
            [(Subject::Own, Health::Fine), (Subject::Crl, Health::Fine)]
        );
        assert!(cured.iter().all(|n| n.level == Level::Info));
        assert!(cured[1].text.contains("revocation list #5 is current"));
        assert!(r.tick(T0 + 13, &renewed).is_empty());
    }

    #[test]
    fn the_ca_and_the_list_have_their_own_words() {
        let mut r = Reporter::new(CertWarnings::default());
        let f = facts(400 * DAY, 20 * DAY, Some(-2 * 3600));
        let n = r.tick(T0, &f);
        assert_eq!(
            subjects(&n),
            [(Subject::Ca, Health::Soon), (Subject::Crl, Health::Over)]
        );
        assert!(n[0]
            .text
            .starts_with("CA certificate expires in 20 days 0 h (at "));
        assert!(
            n[1].text.starts_with(
                "revocation list #4 is stale: its next update was due 2 h 0 min ago (at "
            ) && n[1].text.contains("still enforced"),
            "{}",
            n[1].text
        );
        assert_eq!(n[1].remaining, -7200);
    }

    #[test]
    fn spans_and_times_read_well() {
        assert_eq!(span(0), "0 s");
        assert_eq!(span(-5), "0 s");
        assert_eq!(span(59), "59 s");
        assert_eq!(span(61), "1 min");
        assert_eq!(span(3 * 3600 + 5 * 60), "3 h 5 min");
        assert_eq!(span(DAY + 3600), "1 day 1 h");
        assert_eq!(span(29 * DAY + 23 * 3600), "29 days 23 h");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn settings_are_checked() {
        assert!(CertWarnings::default().check().is_ok());
        let bad = CertWarnings {
            repeat_secs: 0,
            ..CertWarnings::default()
        };
        assert_eq!(bad.check().unwrap_err().0, "cert_warnings.repeat_secs");
        let parsed: CertWarnings = toml::from_str("warn_days = 10").unwrap();
        assert_eq!(parsed.warn_days, 10);
        assert_eq!(parsed.repeat_secs, DEFAULT_REPEAT_SECS);
        assert!(toml::from_str::<CertWarnings>("warn_dayz = 10").is_err());
    }
}
