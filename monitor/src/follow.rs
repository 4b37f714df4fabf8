//! `--follow`: the network's changes as lines, for scripts.
//!
//! Every line starts with an RFC 3339 UTC timestamp (when the monitor saw it) and a word
//! saying what it is:
//!
//! ```text
//! 2025-06-01T12:00:00.123Z status term 2 version 5 manager manager1 members 9
//! 2025-06-01T12:00:03.456Z status term 2 version 6 manager manager1 members 10 joined node4
//! 2025-06-01T12:00:03.457Z log manager1 info node4 (node: registrar) joined from 127.0.1.11
//! 2025-06-01T12:00:09.001Z status term 2 version 7 manager manager1 members 9 gone node4
//! 2025-06-01T12:00:12.000Z eventserver es2 127.0.1.2:8000 down idle timeout
//! 2025-06-01T12:00:12.700Z eventserver es2 127.0.1.2:8000 up
//! 2025-06-01T12:00:13.000Z crl es1 number 5 revoked 1 next-update 2025-06-08T12:00:13Z
//! 2025-06-08T12:00:14.000Z cert crl error revocation list #5 is stale: its next update was due ...
//! ```
//!
//! `crl` lines come for each new revocation list an event server delivers. `cert` lines are
//! the monitor's own checks, by the daemons' rules (`onehop_overlay::certwatch`): its own
//! certificate and the CA's nearing their end (`cert own`, `cert ca`), the list held past
//! its next update (`cert crl`), each when it starts and again hourly while it lasts. What
//! the members say of their own certificates comes as their `log` lines.
//!
//! `status` lines come only for a status newer than the last one (`joined`/`gone` list the
//! differences in member names, comma-separated); `eventserver` lines only when our session
//! with one changes state (a failed retry of a server already down prints nothing).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use onehop_overlay::certwatch::{CertWarnings, Facts, Reporter};
use onehop_overlay::client::ClientEvent;
use onehop_overlay::status::NetworkStatus;
use onehop_overlay::wire::{Level, Payload};

use crate::format::timestamp;

/// Turns client events into `--follow` lines.
#[derive(Debug)]
pub struct Follow {
    held: Option<NetworkStatus>,
    up: HashMap<SocketAddr, bool>,
    crl: Option<Vec<u8>>,
    facts: Facts,
    reporter: Reporter,
}

impl Default for Follow {
    fn default() -> Self {
        Follow {
            held: None,
            up: HashMap::new(),
            crl: None,
            facts: Facts {
                name: "monitor".into(),
                own_not_after: i64::MAX,
                ca_not_after: i64::MAX,
                crl: None,
            },
            reporter: Reporter::new(CertWarnings::default()),
        }
    }
}

fn level_word(l: Level) -> &'static str {
    match l {
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

impl Follow {
    /// A formatter that has seen nothing yet.
    pub fn new() -> Follow {
        Follow::default()
    }

    /// A formatter that also checks the monitor's own certificate and the CA's.
    pub fn with_certs(certs: &crate::state::OwnCerts, warnings: CertWarnings) -> Follow {
        Follow {
            facts: Facts {
                name: certs.name.clone(),
                own_not_after: certs.own_not_after,
                ca_not_after: certs.ca_not_after,
                crl: None,
            },
            reporter: Reporter::new(warnings),
            ..Follow::default()
        }
    }

    /// The `cert` lines due at `now_ms` (call it after every event and once a second).
    pub fn certs(&mut self, now_ms: u64) -> Vec<String> {
        let ts = timestamp(now_ms);
        self.reporter
            .tick((now_ms / 1000) as i64, &self.facts)
            .into_iter()
            .map(|n| {
                format!(
                    "{ts} cert {} {} {}",
                    n.subject.label(),
                    level_word(n.level),
                    n.text
                )
            })
            .collect()
    }

    fn crl_line(&mut self, ts: &str, origin: &str, der: &[u8]) -> Vec<String> {
        if self.crl.as_deref() == Some(der) {
            return vec![];
        }
        self.crl = Some(der.to_vec());
        match x509_parser::parse_x509_crl(der) {
            Ok((_, crl)) => {
                let number = crl
                    .crl_number()
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0);
                let next = crl.next_update().map(|t| t.timestamp());
                self.facts.crl = Some((number, next));
                let next = next
                    .map(onehop_overlay::certwatch::rfc3339)
                    .unwrap_or_else(|| "none".into());
                vec![format!(
                    "{ts} crl {origin} number {number} revoked {} next-update {next}",
                    crl.iter_revoked_certificates().count()
                )]
            }
            Err(e) => vec![format!("{ts} crl {origin} unreadable {e}")],
        }
    }

    /// The lines (without newline) for `ev`, seen at `now_ms`; often none.
    pub fn lines(&mut self, now_ms: u64, ev: &ClientEvent) -> Vec<String> {
        let ts = timestamp(now_ms);
        match ev {
            ClientEvent::Up { server, addr } => {
                if self.up.insert(*addr, true) == Some(true) {
                    return vec![];
                }
                vec![format!("{ts} eventserver {server} {addr} up")]
            }
            ClientEvent::Down {
                server,
                addr,
                reason,
            } => {
                if self.up.insert(*addr, false) == Some(false) {
                    return vec![];
                }
                let name = server.as_deref().unwrap_or("-");
                vec![format!("{ts} eventserver {name} {addr} down {reason}")]
            }
            ClientEvent::Event(e) => match &e.payload {
                Payload::Network(s) if s.supersedes(self.held.as_ref()) => {
                    let mut line = format!(
                        "{ts} status term {} version {} manager {} members {}",
                        s.term,
                        s.version,
                        s.manager,
                        s.members.len()
                    );
                    if let Some(old) = &self.held {
                        let before: BTreeSet<&str> =
                            old.members.iter().map(|m| m.name.as_str()).collect();
                        let after: BTreeSet<&str> =
                            s.members.iter().map(|m| m.name.as_str()).collect();
                        let joined: Vec<&str> = after.difference(&before).copied().collect();
                        let gone: Vec<&str> = before.difference(&after).copied().collect();
                        if !joined.is_empty() {
                            line.push_str(&format!(" joined {}", joined.join(",")));
                        }
                        if !gone.is_empty() {
                            line.push_str(&format!(" gone {}", gone.join(",")));
                        }
                    }
                    self.held = Some(s.clone());
                    vec![line]
                }
                Payload::Crl(der) => self.crl_line(&ts, &e.origin, der),
                Payload::Log(l) => {
                    let text = l.text.replace(['\r', '\n'], " ");
                    vec![format!(
                        "{ts} log {} {} {text}",
                        e.origin,
                        level_word(l.level)
                    )]
                }
                _ => vec![],
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onehop_overlay::status::{Kind, Member};
    use onehop_overlay::wire::{Event, LogEvent};
    use std::sync::Arc;

    fn member(name: &str) -> Member {
        Member {
            name: name.into(),
            kind: Kind::Node,
            roles: vec![],
            endpoints: vec![],
            since: 0,
            ip: "127.0.0.1".parse().unwrap(),
        }
    }

    fn status(version: u64, names: &[&str]) -> ClientEvent {
        ClientEvent::Event(Arc::new(Event {
            origin: "manager1".into(),
            origin_kind: Kind::Manager,
            seq: version,
            payload: Payload::Network(NetworkStatus {
                term: 2,
                version,
                manager: "manager1".into(),
                members: names.iter().map(|n| Arc::new(member(n))).collect(),
            }),
        }))
    }

    #[test]
    fn status_lines_name_the_differences() {
        let mut f = Follow::new();
        assert_eq!(
            f.lines(0, &status(1, &["a", "b"])),
            vec!["1970-01-01T00:00:00.000Z status term 2 version 1 manager manager1 members 2"]
        );
        assert_eq!(
            f.lines(1, &status(2, &["a", "c", "d"])),
            vec!["1970-01-01T00:00:00.001Z status term 2 version 2 manager manager1 members 3 joined c,d gone b"]
        );
        assert!(f.lines(2, &status(2, &["a"])).is_empty(), "not newer");
        assert!(f.lines(2, &status(1, &["a"])).is_empty(), "older");
    }

    #[test]
    fn log_lines_are_one_line_each() {
        let mut f = Follow::new();
        let ev = ClientEvent::Event(Arc::new(Event {
            origin: "manager1".into(),
            origin_kind: Kind::Manager,
            seq: 1,
            payload: Payload::Log(LogEvent {
                time_ms: 5,
                level: Level::Warn,
                text: "two\nlines".into(),
            }),
        }));
        assert_eq!(
            f.lines(1000, &ev),
            vec!["1970-01-01T00:00:01.000Z log manager1 warn two lines"]
        );
    }

    #[test]
    fn event_server_lines_only_on_changes() {
        let mut f = Follow::new();
        let addr: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let down = ClientEvent::Down {
            server: None,
            addr,
            reason: "timed out".into(),
        };
        let up = ClientEvent::Up {
            server: "es1".into(),
            addr,
        };
        assert_eq!(
            f.lines(0, &down),
            vec!["1970-01-01T00:00:00.000Z eventserver - 127.0.0.1:8000 down timed out"]
        );
        assert!(f.lines(0, &down).is_empty(), "a failed retry says nothing");
        assert_eq!(
            f.lines(0, &up),
            vec!["1970-01-01T00:00:00.000Z eventserver es1 127.0.0.1:8000 up"]
        );
        assert!(f.lines(0, &up).is_empty());
    }
}
