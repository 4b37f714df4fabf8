//! What the terminal UI shows, as a plain struct: [`App`].
//!
//! The event loop feeds every input (a client event, a key, a resize, a clock tick) to
//! [`App::apply`] together with the time; [`crate::ui::draw`] renders the struct and nothing
//! else. So the whole UI is tested without a terminal or a network: build an `App`, apply
//! inputs, draw on ratatui's `TestBackend`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use onehop_overlay::certwatch::{CertWarnings, Facts, Health, Reporter, Subject};
use onehop_overlay::client::ClientEvent;
use onehop_overlay::ring::{lookup_key, position, RingMember, Rings, DEFAULT_POINTS};
use onehop_overlay::status::{Kind, Member, NetworkStatus};
use onehop_overlay::wire::{Event, Level, MemberEvent, Payload};

use crate::ui;

/// Settings of the UI.
#[derive(Debug, Clone)]
pub struct Options {
    /// Points per member on each ring (must match the nodes' `points`).
    pub points: u32,
    /// How many members a lookup shows per role: the owner and the next `copies - 1`.
    pub copies: usize,
    /// How many log lines are kept.
    pub log_capacity: usize,
    /// After how long without new figures a member's load is shown as stale.
    pub stale_stats_ms: u64,
    /// The monitor's own certificate and the CA's ends, to report them nearing; `None`
    /// reports only the revocation list.
    pub certs: Option<OwnCerts>,
    /// When certificates are reported (as the daemons do).
    pub cert_warnings: CertWarnings,
}

/// The monitor's own certificate and the CA's ends (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnCerts {
    /// The monitor certificate's name.
    pub name: String,
    /// Its `notAfter`.
    pub own_not_after: i64,
    /// The CA certificate's `notAfter`.
    pub ca_not_after: i64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            points: DEFAULT_POINTS,
            copies: 2,
            log_capacity: 1000,
            stale_stats_ms: 15_000,
            certs: None,
            cert_warnings: CertWarnings::default(),
        }
    }
}

/// The panels that take the focus with Tab (in that order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Panel {
    /// The member table.
    Members,
    /// Every role's ring and the members' shares.
    Rings,
    /// The network's log.
    Log,
}

impl Panel {
    const ORDER: [Panel; 3] = [Panel::Members, Panel::Rings, Panel::Log];

    fn index(self) -> usize {
        Panel::ORDER.iter().position(|p| *p == self).unwrap_or(0)
    }

    fn next(self) -> Panel {
        Panel::ORDER[(self.index() + 1) % Panel::ORDER.len()]
    }

    fn prev(self) -> Panel {
        Panel::ORDER[(self.index() + Panel::ORDER.len() - 1) % Panel::ORDER.len()]
    }
}

/// Our session with one event server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Not established yet.
    Connecting,
    /// Established since this time (ms since the epoch).
    Up {
        /// When.
        since_ms: u64,
    },
    /// Ended or unreachable, since this time, for this reason.
    Down {
        /// When.
        since_ms: u64,
        /// Why (from the client).
        reason: String,
    },
}

/// One configured event server and our session with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventServerLink {
    /// Its address.
    pub addr: SocketAddr,
    /// Its name, once a session told it.
    pub name: Option<String>,
    /// The session's state.
    pub link: Link,
}

/// A member's latest load figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// When they arrived (ms since the epoch).
    pub at_ms: u64,
    /// Name/value pairs as published.
    pub figures: Vec<(String, f64)>,
    /// The publication's sequence number: a late copy of an older one (through a slower event
    /// server) does not replace them.
    pub seq: u64,
}

/// One line of the log panel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When (ms since the epoch).
    pub time_ms: u64,
    /// Severity.
    pub level: Level,
    /// The text.
    pub text: String,
}

/// Where a key lands on one role's ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleOwners {
    /// The role.
    pub role: String,
    /// The owner first, then its replicas clockwise.
    pub members: Vec<RingMember>,
}

/// The answer to a lookup, recomputed whenever the status changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupResult {
    /// The key as typed.
    pub key: String,
    /// The key the ring hashes (an AOR reduced to `user@host`).
    pub canonical: String,
    /// The key's position on every ring.
    pub position: u64,
    /// Owner and replicas on each role's ring, by role.
    pub roles: Vec<RoleOwners>,
}

/// The lookup box.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LookupBox {
    /// Whether a key is being typed.
    pub editing: bool,
    /// The key typed so far.
    pub input: String,
    /// The cursor, as a character index into `input`.
    pub cursor: usize,
    /// The last lookup's answer.
    pub result: Option<LookupResult>,
}

impl LookupBox {
    /// Whether the box takes room on screen.
    pub fn visible(&self) -> bool {
        self.editing || self.result.is_some()
    }

    fn byte_at(&self, chars: usize) -> usize {
        self.input
            .char_indices()
            .nth(chars)
            .map_or(self.input.len(), |(i, _)| i)
    }
}

/// Scroll offsets, in rows: from the top for members and rings, from the newest row up for the
/// log (0 follows new lines).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scroll {
    /// Member table.
    pub members: usize,
    /// Rings panel.
    pub rings: usize,
    /// Log panel (rows above the newest).
    pub log: usize,
}

/// An input to the UI state.
#[derive(Debug, Clone)]
pub enum Input {
    /// Something from the event-server sessions.
    Client(ClientEvent),
    /// A key press.
    Key(KeyEvent),
    /// The terminal's new size (columns, rows).
    Resize(u16, u16),
    /// The clock moved (uptimes, stale figures).
    Tick,
}

/// The whole state of the terminal UI.
#[derive(Debug, Clone)]
pub struct App {
    /// Settings.
    pub opts: Options,
    /// The time of the latest input (ms since the epoch); every age on screen is from it.
    pub now_ms: u64,
    /// The terminal's size (columns, rows), for scrolling by pages.
    pub size: (u16, u16),
    /// The newest network status.
    pub status: Option<NetworkStatus>,
    /// When it arrived.
    pub status_at_ms: u64,
    /// The rings built from it.
    pub rings: Rings,
    /// Every ring's shares of the keyspace by member name, by role (computed once per status).
    pub shares: BTreeMap<String, Vec<(String, f64)>>,
    /// Latest load figures by member name.
    pub stats: BTreeMap<String, Figures>,
    /// The configured event servers and our sessions with them.
    pub eventservers: Vec<EventServerLink>,
    /// The log, oldest first, at most `opts.log_capacity` lines.
    pub log: VecDeque<LogLine>,
    /// The panel that arrows scroll.
    pub focus: Panel,
    /// Scroll offsets.
    pub scroll: Scroll,
    /// The lookup box.
    pub lookup: LookupBox,
    /// The focused panel fills the screen.
    pub zoom: bool,
    /// The key help is shown.
    pub help: bool,
    /// The user asked to quit.
    pub quit: bool,
    /// Last departure logged per member (to log one line when every event server reports it).
    departures: HashMap<String, u64>,
    /// The revocation list last seen (DER), to log only changes.
    crl: Option<Vec<u8>>,
    /// Its number and next update (unix seconds), for its staleness.
    crl_facts: Option<(u64, Option<i64>)>,
    /// When to report the certificates and the list (the daemons' rules).
    reporter: Reporter,
}

/// Event servers report the same departure within this window; one line is logged.
const DEPARTURE_WINDOW_MS: u64 = 5_000;

/// Longest log line kept, in bytes: a published line may be up to the 1 MiB frame cap, and
/// the log keeps `log_capacity` lines, so each is cut here (with a note of what was cut) to
/// keep the log within `log_capacity` x 2 KiB.
pub const MAX_LOG_TEXT: usize = 2048;
/// Most load figures kept per member, and the longest figure name (bytes); the rest of a
/// publication is ignored.
pub const MAX_FIGURES: usize = 64;
/// See [`MAX_FIGURES`].
pub const MAX_FIGURE_NAME: usize = 64;

/// `text` cut to at most [`MAX_LOG_TEXT`] bytes at a character boundary, saying how much was
/// cut.
pub fn clip_log_text(mut text: String) -> String {
    if text.len() <= MAX_LOG_TEXT {
        return text;
    }
    let total = text.len();
    let mut end = MAX_LOG_TEXT - 40;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&format!(" ... ({} of {total} bytes cut)", total - end));
    text
}

impl App {
    /// A UI for a session with these event servers.
    pub fn new(eventservers: &[SocketAddr], opts: Options) -> App {
        App {
            now_ms: 0,
            size: (80, 24),
            status: None,
            status_at_ms: 0,
            rings: Rings::default(),
            shares: BTreeMap::new(),
            stats: BTreeMap::new(),
            eventservers: eventservers
                .iter()
                .map(|&addr| EventServerLink {
                    addr,
                    name: None,
                    link: Link::Connecting,
                })
                .collect(),
            log: VecDeque::new(),
            focus: Panel::Members,
            scroll: Scroll::default(),
            lookup: LookupBox::default(),
            zoom: false,
            help: false,
            quit: false,
            departures: HashMap::new(),
            crl: None,
            crl_facts: None,
            reporter: Reporter::new(opts.cert_warnings),
            opts,
        }
    }

    /// What the certificate checks know now: the monitor's own certificate and the CA's
    /// (never ending when unknown) and the revocation list last seen.
    pub fn cert_facts(&self) -> Facts {
        let (name, own, ca) = match &self.opts.certs {
            Some(c) => (c.name.clone(), c.own_not_after, c.ca_not_after),
            None => ("monitor".to_string(), i64::MAX, i64::MAX),
        };
        Facts {
            name,
            own_not_after: own,
            ca_not_after: ca,
            crl: self.crl_facts,
        }
    }

    /// What is wrong with the certificates or the list now, in a few words each, for the
    /// header: `(level, text)`, e.g. `(Error, "CRL #4 stale 2h05m")`.
    pub fn cert_alerts(&self) -> Vec<(Level, String)> {
        let facts = self.cert_facts();
        let now = (self.now_ms / 1000) as i64;
        let mut out = Vec::new();
        for subject in [Subject::Ca, Subject::Own, Subject::Crl] {
            let Some((health, left)) = self.reporter.assess(subject, now, &facts) else {
                continue;
            };
            let what = match subject {
                Subject::Ca => "CA".to_string(),
                Subject::Own => format!("cert of {}", facts.name),
                Subject::Crl => format!("CRL #{}", facts.crl.map(|c| c.0).unwrap_or(0)),
            };
            let ms = |s: i64| s.unsigned_abs().saturating_mul(1000);
            match (subject, health) {
                (_, Health::Fine) => {}
                (Subject::Crl, _) => out.push((
                    Level::Error,
                    format!("{what} stale {}", crate::format::duration(ms(left))),
                )),
                (_, Health::Soon) => out.push((
                    Level::Warn,
                    format!("{what} ends in {}", crate::format::duration(ms(left))),
                )),
                (_, Health::Over) => out.push((
                    Level::Error,
                    format!("{what} expired {} ago", crate::format::duration(ms(left))),
                )),
            }
        }
        out
    }

    /// Logs what the certificate checks have to say now (at most one line per subject per
    /// repeat interval, as the daemons do).
    fn check_certs(&mut self) {
        let facts = self.cert_facts();
        let now = self.now_ms;
        for n in self.reporter.tick((now / 1000) as i64, &facts) {
            self.push_log(n.level, now, format!("monitor: {}", n.text));
        }
    }

    /// Applies one input that happened at `now_ms`.
    pub fn apply(&mut self, now_ms: u64, input: Input) {
        self.now_ms = self.now_ms.max(now_ms);
        match input {
            // Figures and log lines change no scroll bound that drawing does not handle, so
            // the frequent inputs stay cheap; a new status changes the rows of two panels.
            Input::Client(ev) => {
                let version = self.status.as_ref().map(|s| (s.term, s.version));
                self.client_event(ev);
                if self.status.as_ref().map(|s| (s.term, s.version)) != version {
                    self.clamp_scroll();
                }
            }
            Input::Key(k) => {
                self.key(k);
                self.clamp_scroll();
            }
            Input::Resize(w, h) => {
                self.size = (w, h);
                self.clamp_scroll();
            }
            Input::Tick => {}
        }
        self.check_certs();
    }

    /// Live members in display order: nodes, DNS servers, managers, event servers, each by
    /// name.
    pub fn members(&self) -> Vec<&Member> {
        let rank = |k: Kind| match k {
            Kind::Node => 0,
            Kind::Dns => 1,
            Kind::Manager => 2,
            Kind::Eventserver => 3,
            Kind::Monitor | Kind::Admin => 4,
        };
        let mut v: Vec<&Member> = self
            .status
            .as_ref()
            .map(|s| s.members.iter().map(|m| &**m).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| (rank(a.kind), &a.name).cmp(&(rank(b.kind), &b.name)));
        v
    }

    /// Our session with the event server a member of kind `eventserver` is, if configured.
    pub fn link_of(&self, m: &Member) -> Option<&EventServerLink> {
        let addr = m.endpoint("eventserver");
        self.eventservers
            .iter()
            .find(|l| Some(l.addr) == addr || l.name.as_deref() == Some(m.name.as_str()))
    }

    /// The name to show for an event server: from its session, else from the status, else
    /// its address.
    pub fn link_name(&self, l: &EventServerLink) -> String {
        if let Some(n) = &l.name {
            return n.clone();
        }
        self.status
            .as_ref()
            .and_then(|s| {
                s.of_kind(Kind::Eventserver)
                    .find(|m| m.endpoint("eventserver") == Some(l.addr))
            })
            .map_or_else(|| l.addr.to_string(), |m| m.name.clone())
    }

    fn push_log(&mut self, level: Level, time_ms: u64, text: String) {
        let text = clip_log_text(text);
        let width = ui::log_width(self);
        if self.scroll.log > 0 {
            // Keep the view where the reader scrolled it.
            self.scroll.log += ui::log_entry_rows(&text, width);
        }
        self.log.push_back(LogLine {
            time_ms,
            level,
            text,
        });
        while self.log.len() > self.opts.log_capacity.max(1) {
            self.log.pop_front();
        }
    }

    fn client_event(&mut self, ev: ClientEvent) {
        let now = self.now_ms;
        match ev {
            ClientEvent::Up { server, addr } => {
                let Some(i) = self.eventservers.iter().position(|l| l.addr == addr) else {
                    return;
                };
                self.eventservers[i].name = Some(server.clone());
                self.eventservers[i].link = Link::Up { since_ms: now };
                self.push_log(
                    Level::Info,
                    now,
                    format!("connected to event server {server} ({addr})"),
                );
            }
            ClientEvent::Down {
                server,
                addr,
                reason,
            } => {
                let Some(i) = self.eventservers.iter().position(|l| l.addr == addr) else {
                    return;
                };
                let was = self.eventservers[i].link.clone();
                if server.is_some() {
                    self.eventservers[i].name = server;
                }
                let mut name = self.link_name(&self.eventservers[i]);
                if name != addr.to_string() {
                    name = format!("{name} ({addr})");
                }
                let text = match was {
                    Link::Up { .. } => {
                        Some(format!("lost event server {name}: {reason}; reconnecting"))
                    }
                    Link::Connecting => Some(format!(
                        "cannot reach event server {name}: {reason}; retrying"
                    )),
                    // Already down: a failed retry, logged once.
                    Link::Down { .. } => None,
                };
                let since_ms = match was {
                    Link::Down { since_ms, .. } => since_ms,
                    _ => now,
                };
                self.eventservers[i].link = Link::Down { since_ms, reason };
                if let Some(text) = text {
                    self.push_log(Level::Warn, now, text);
                }
            }
            ClientEvent::Event(ev) => self.publication(ev),
        }
    }

    fn publication(&mut self, ev: Arc<Event>) {
        let now = self.now_ms;
        match &ev.payload {
            Payload::Network(s) => {
                if s.supersedes(self.status.as_ref()) {
                    self.set_status(s.clone());
                }
            }
            Payload::Stats(st) => {
                if self
                    .stats
                    .get(&ev.origin)
                    .is_some_and(|held| held.seq > ev.seq)
                {
                    return;
                }
                self.stats.insert(
                    ev.origin.clone(),
                    Figures {
                        at_ms: now,
                        figures: st
                            .figures
                            .iter()
                            .filter(|(name, _)| name.len() <= MAX_FIGURE_NAME)
                            .take(MAX_FIGURES)
                            .cloned()
                            .collect(),
                        seq: ev.seq,
                    },
                );
            }
            Payload::Log(l) => {
                let text = if ev.origin_kind == Kind::Manager {
                    l.text.clone()
                } else {
                    format!("{}: {}", ev.origin, l.text)
                };
                self.push_log(l.level, l.time_ms, text);
            }
            Payload::Member(m) => self.member_event(&ev.origin, m),
            Payload::Crl(der) => self.revocation_list(&ev.origin, der),
            // The client follows deltas and heartbeats and hands over whole statuses.
            Payload::Manager(_) | Payload::NetworkDelta(_) | Payload::NetworkBeat(_) => {}
        }
    }

    fn member_event(&mut self, eventserver: &str, ev: &MemberEvent) {
        let now = self.now_ms;
        let (name, text, level) = match ev {
            MemberEvent::Joined(m) => {
                self.departures.remove(&m.name);
                return;
            }
            MemberEvent::Snapshot(_) => return,
            MemberEvent::Left { name } => (
                name,
                format!("{name} left (said goodbye to {eventserver})"),
                Level::Info,
            ),
            MemberEvent::Lost { name, reason } => (
                name,
                format!("{name} lost ({eventserver}: {reason})"),
                Level::Warn,
            ),
        };
        match self.departures.get(name) {
            Some(&t) if now.saturating_sub(t) < DEPARTURE_WINDOW_MS => {}
            _ => {
                self.departures.insert(name.clone(), now);
                self.push_log(level, now, text);
            }
        }
        let old = now.saturating_sub(DEPARTURE_WINDOW_MS);
        self.departures.retain(|_, t| *t >= old);
    }

    fn revocation_list(&mut self, origin: &str, der: &[u8]) {
        if self.crl.as_deref() == Some(der) {
            return;
        }
        let first = self.crl.is_none();
        self.crl = Some(der.to_vec());
        self.crl_facts = x509_parser::parse_x509_crl(der).ok().map(|(_, crl)| {
            (
                crl.crl_number()
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0),
                crl.next_update().map(|t| t.timestamp()),
            )
        });
        let now = self.now_ms;
        let (level, text) = match x509_parser::parse_x509_crl(der) {
            Ok((_, crl)) => {
                let n = crl.iter_revoked_certificates().count();
                let number = crl
                    .crl_number()
                    .map(|n| format!(" #{n}"))
                    .unwrap_or_default();
                if first {
                    (
                        Level::Info,
                        format!("revocation list{number} in force: {n} certificate(s) revoked"),
                    )
                } else {
                    (
                        Level::Warn,
                        format!(
                            "new revocation list{number} from {origin}: {n} certificate(s) revoked"
                        ),
                    )
                }
            }
            Err(e) => (
                Level::Error,
                format!("unreadable revocation list from {origin}: {e}"),
            ),
        };
        self.push_log(level, now, text);
    }

    /// Takes a newer status: rebuilds the rings, drops figures of members gone, redoes the
    /// lookup.
    fn set_status(&mut self, s: NetworkStatus) {
        let now = self.now_ms;
        if self.status.is_none() {
            self.push_log(
                Level::Info,
                now,
                format!(
                    "network status from {}: term {} version {}, {} members",
                    s.manager,
                    s.term,
                    s.version,
                    s.members.len()
                ),
            );
        }
        self.rings = Rings::from_status(&s, self.opts.points);
        self.shares = self
            .rings
            .roles()
            .filter_map(|r| Some((r.to_string(), self.rings.get(r)?.shares())))
            .collect();
        self.stats.retain(|name, _| s.member(name).is_some());
        self.status = Some(s);
        self.status_at_ms = now;
        if let Some(r) = &self.lookup.result {
            let key = r.key.clone();
            self.lookup.result = Some(self.look_up(&key));
        }
    }

    /// Where `key` lands on every ring of the current status.
    pub fn look_up(&self, key: &str) -> LookupResult {
        let canonical = lookup_key(key).into_owned();
        let pos = position(&canonical);
        let roles = self
            .rings
            .roles()
            .filter_map(|role| {
                let ring = self.rings.get(role)?;
                Some(RoleOwners {
                    role: role.to_string(),
                    members: ring
                        .replicas_at(pos, self.opts.copies.max(1))
                        .cloned()
                        .collect(),
                })
            })
            .collect();
        LookupResult {
            key: key.to_string(),
            canonical,
            position: pos,
            roles,
        }
    }

    fn key(&mut self, k: KeyEvent) {
        if k.kind == KeyEventKind::Release {
            return;
        }
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(k.code, KeyCode::Char('c')) {
            self.quit = true;
            return;
        }
        if self.help {
            match k.code {
                KeyCode::Char('q') => self.quit = true,
                _ => self.help = false,
            }
            return;
        }
        if self.lookup.editing {
            self.edit_key(k, ctrl);
            return;
        }
        match k.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Tab => self.focus = self.focus.next(),
            KeyCode::BackTab => self.focus = self.focus.prev(),
            KeyCode::Char('1') => self.focus = Panel::Members,
            KeyCode::Char('2') => self.focus = Panel::Rings,
            KeyCode::Char('3') => self.focus = Panel::Log,
            KeyCode::Char('/') => {
                self.lookup.editing = true;
                self.lookup.input.clear();
                self.lookup.cursor = 0;
            }
            KeyCode::Char('z') => self.zoom = !self.zoom,
            KeyCode::Char('?') | KeyCode::F(1) => self.help = true,
            KeyCode::Esc => {
                if self.lookup.result.is_some() {
                    self.lookup.result = None;
                } else {
                    self.zoom = false;
                }
            }
            KeyCode::Up | KeyCode::Char('k') => self.scroll_by(-1),
            KeyCode::Down | KeyCode::Char('j') => self.scroll_by(1),
            KeyCode::PageUp => self.scroll_by(-(self.page() as isize)),
            KeyCode::PageDown => self.scroll_by(self.page() as isize),
            KeyCode::Home | KeyCode::Char('g') => self.scroll_by(isize::MIN / 2),
            KeyCode::End | KeyCode::Char('G') => self.scroll_by(isize::MAX / 2),
            _ => {}
        }
    }

    fn edit_key(&mut self, k: KeyEvent, ctrl: bool) {
        let lb = &mut self.lookup;
        match k.code {
            KeyCode::Enter => {
                lb.editing = false;
                let key = lb.input.trim().to_string();
                if !key.is_empty() {
                    self.lookup.result = Some(self.look_up(&key));
                }
            }
            KeyCode::Esc => lb.editing = false,
            KeyCode::Char('u') if ctrl => {
                lb.input.clear();
                lb.cursor = 0;
            }
            KeyCode::Char(c) if !ctrl => {
                let at = lb.byte_at(lb.cursor);
                lb.input.insert(at, c);
                lb.cursor += 1;
            }
            KeyCode::Backspace if lb.cursor > 0 => {
                lb.cursor -= 1;
                let at = lb.byte_at(lb.cursor);
                lb.input.remove(at);
            }
            KeyCode::Delete if lb.cursor < lb.input.chars().count() => {
                let at = lb.byte_at(lb.cursor);
                lb.input.remove(at);
            }
            KeyCode::Left => lb.cursor = lb.cursor.saturating_sub(1),
            KeyCode::Right => lb.cursor = (lb.cursor + 1).min(lb.input.chars().count()),
            KeyCode::Home => lb.cursor = 0,
            KeyCode::End => lb.cursor = lb.input.chars().count(),
            _ => {}
        }
    }

    /// Rows of the focused panel on screen (for PgUp/PgDn).
    fn page(&self) -> usize {
        ui::visible_rows(self, self.focus).max(2) - 1
    }

    /// Scrolls the focused panel by `delta` rows (negative: towards the top / older lines).
    fn scroll_by(&mut self, delta: isize) {
        let s = match self.focus {
            Panel::Members => &mut self.scroll.members,
            Panel::Rings => &mut self.scroll.rings,
            // The log counts from the newest row up: up is older.
            Panel::Log => {
                self.scroll.log = self.scroll.log.saturating_add_signed(-delta);
                return;
            }
        };
        *s = s.saturating_add_signed(delta);
    }

    fn clamp_scroll(&mut self) {
        for p in Panel::ORDER {
            let max = ui::content_rows(self, p).saturating_sub(ui::visible_rows(self, p));
            let s = match p {
                Panel::Members => &mut self.scroll.members,
                Panel::Rings => &mut self.scroll.rings,
                Panel::Log => &mut self.scroll.log,
            };
            *s = (*s).min(max);
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
