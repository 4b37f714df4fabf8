//! Rendering: [`draw`] paints an [`App`] on a ratatui frame and reads nothing else, so it is
//! tested on ratatui's `TestBackend`.
//!
//! Screen, top to bottom: a header (active manager, `term`, `version`), the event servers and
//! our sessions with them, the member table, the rings beside the log, the lookup box (while
//! in use), and the key line. `z` gives the focused panel the whole body, for small terminals.

use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};
use ratatui::Frame;

use onehop_overlay::status::{Kind, Member};
use onehop_overlay::wire::Level;

use crate::format::{clock, duration, figure, fit, short_figure, short_kind, short_role, wrap};
use crate::state::{App, Link, Panel};

/// Where each part of the screen goes; `None` for a panel not shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Areas {
    /// Manager, term, version.
    pub header: Rect,
    /// Event servers.
    pub links: Rect,
    /// Member table.
    pub members: Option<Rect>,
    /// Rings and shares.
    pub rings: Option<Rect>,
    /// Log.
    pub log: Option<Rect>,
    /// Lookup box.
    pub lookup: Option<Rect>,
    /// Key line.
    pub footer: Rect,
}

/// The log's time column: `HH:MM:SS `.
const TIME_W: usize = 9;

/// Splits `area` for `app`.
pub fn layout(app: &App, area: Rect) -> Areas {
    let [header, links, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    let (body, lookup) = if app.lookup.visible() {
        let want = 2 + lookup_rows(app) as u16;
        let h = want.min(body.height / 2).max(body.height.min(3));
        let [b, l] = Layout::vertical([Constraint::Fill(1), Constraint::Length(h)]).areas(body);
        (b, Some(l))
    } else {
        (body, None)
    };
    let mut a = Areas {
        header,
        links,
        members: None,
        rings: None,
        log: None,
        lookup,
        footer,
    };
    if app.zoom {
        match app.focus {
            Panel::Members => a.members = Some(body),
            Panel::Rings => a.rings = Some(body),
            Panel::Log => a.log = Some(body),
        }
        return a;
    }
    let want = app.members().len() as u16 + 3;
    let max = (body.height * 60 / 100).max(5);
    let mh = want.clamp(5, max).min(body.height);
    let [members, bottom] =
        Layout::vertical([Constraint::Length(mh), Constraint::Fill(1)]).areas(body);
    let rw = (bottom.width * 2 / 5).clamp(28.min(bottom.width), 60);
    let [rings, log] =
        Layout::horizontal([Constraint::Length(rw), Constraint::Fill(1)]).areas(bottom);
    a.members = Some(members);
    a.rings = Some(rings);
    a.log = Some(log);
    a
}

fn screen(app: &App) -> Rect {
    Rect::new(0, 0, app.size.0, app.size.1)
}

fn panel_area(a: &Areas, p: Panel) -> Option<Rect> {
    match p {
        Panel::Members => a.members,
        Panel::Rings => a.rings,
        Panel::Log => a.log,
    }
}

/// Rows of content a panel shows at the terminal size `app.size` (0 when not shown).
pub fn visible_rows(app: &App, p: Panel) -> usize {
    let Some(r) = panel_area(&layout(app, screen(app)), p) else {
        return 0;
    };
    let inner = r.height.saturating_sub(2) as usize;
    match p {
        // One row is the column header.
        Panel::Members => inner.saturating_sub(1),
        _ => inner,
    }
}

/// Rows of content a panel has (all of them, scrolled or not).
pub fn content_rows(app: &App, p: Panel) -> usize {
    match p {
        Panel::Members => app.members().len(),
        Panel::Rings => ring_lines(app, rings_width(app)).len(),
        Panel::Log => {
            let w = log_width(app);
            app.log.iter().map(|l| log_entry_rows(&l.text, w)).sum()
        }
    }
}

fn inner_width(r: Option<Rect>, app: &App) -> usize {
    r.map_or(app.size.0, |r| r.width).saturating_sub(2) as usize
}

/// The log panel's inner width at the terminal size `app.size` (the zoomed width when the
/// log is not shown).
pub fn log_width(app: &App) -> usize {
    inner_width(layout(app, screen(app)).log, app)
}

fn rings_width(app: &App) -> usize {
    inner_width(layout(app, screen(app)).rings, app)
}

/// How many rows a log line takes in a log panel `width` wide.
pub fn log_entry_rows(text: &str, width: usize) -> usize {
    wrap(text, width.saturating_sub(TIME_W).max(8)).len()
}

/// Paints the whole screen.
pub fn draw(frame: &mut Frame, app: &App) {
    let a = layout(app, frame.area());
    frame.render_widget(Paragraph::new(header_line(app)), a.header);
    frame.render_widget(Paragraph::new(links_line(app)), a.links);
    if let Some(r) = a.members {
        draw_members(frame, app, r);
    }
    if let Some(r) = a.rings {
        draw_rings(frame, app, r);
    }
    if let Some(r) = a.log {
        draw_log(frame, app, r);
    }
    if let Some(r) = a.lookup {
        draw_lookup(frame, app, r);
    }
    frame.render_widget(Paragraph::new(footer_line(app)), a.footer);
    if app.help {
        draw_help(frame);
    }
}

fn dim() -> Style {
    Style::new().fg(Color::DarkGray)
}

fn bold() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

fn header_line(app: &App) -> Line<'static> {
    let mut spans = vec![Span::styled(
        " onehop ",
        Style::new()
            .fg(Color::Black)
            .bg(Color::Cyan)
            .add_modifier(Modifier::BOLD),
    )];
    match &app.status {
        None => spans.push(Span::styled(
            " waiting for the network status…",
            Style::new().fg(Color::Yellow),
        )),
        Some(s) => {
            spans.push(Span::styled(" manager ", dim()));
            spans.push(Span::styled(s.manager.clone(), bold().fg(Color::Green)));
            spans.push(Span::styled("  term ", dim()));
            spans.push(Span::styled(s.term.to_string(), bold()));
            spans.push(Span::styled("  version ", dim()));
            spans.push(Span::styled(s.version.to_string(), bold()));
            spans.push(Span::styled("  members ", dim()));
            spans.push(Span::styled(s.members.len().to_string(), bold()));
            spans.push(Span::styled(
                format!(
                    "  status {} ago",
                    duration(app.now_ms.saturating_sub(app.status_at_ms))
                ),
                dim(),
            ));
        }
    }
    for (level, text) in app.cert_alerts() {
        let color = match level {
            Level::Error => Color::Red,
            _ => Color::Yellow,
        };
        spans.push(Span::raw("  "));
        spans.push(Span::styled(text, bold().fg(color)));
    }
    Line::from(spans)
}

fn links_line(app: &App) -> Line<'static> {
    let up = app
        .eventservers
        .iter()
        .filter(|l| matches!(l.link, Link::Up { .. }))
        .count();
    let mut spans = vec![Span::styled(
        format!(" event servers {up}/{}:", app.eventservers.len()),
        dim(),
    )];
    for l in &app.eventservers {
        spans.push(Span::raw(" "));
        spans.push(Span::styled(app.link_name(l), bold()));
        match &l.link {
            Link::Up { .. } => spans.push(Span::styled(" up", Style::new().fg(Color::Green))),
            Link::Connecting => {
                spans.push(Span::styled(" connecting", Style::new().fg(Color::Yellow)))
            }
            Link::Down { reason, since_ms } => spans.push(Span::styled(
                format!(
                    " down {} ({reason})",
                    duration(app.now_ms.saturating_sub(*since_ms))
                ),
                Style::new().fg(Color::Red),
            )),
        }
    }
    Line::from(spans)
}

fn panel_block(app: &App, p: Panel, title: String) -> Block<'static> {
    let focused = app.focus == p;
    let style = if focused {
        Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD)
    } else {
        Style::new()
    };
    Block::bordered()
        .border_style(style)
        .title(Span::styled(title, style))
}

/// Column widths of the member table; `compact` uses short kinds, roles and figure names.
struct MemberCols {
    name: usize,
    kind: usize,
    roles: usize,
    addr: usize,
    uptime: usize,
    state: usize,
    compact: bool,
}

impl MemberCols {
    fn fixed(&self) -> usize {
        self.name + self.kind + self.roles + self.addr + self.uptime + self.state + 6
    }
}

fn roles_text(m: &Member, compact: bool) -> String {
    let v: Vec<&str> = m
        .roles
        .iter()
        .map(|r| {
            if compact {
                short_role(r.as_str())
            } else {
                r.as_str()
            }
        })
        .collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

fn member_cols(members: &[&Member], width: usize) -> MemberCols {
    let longest = |f: &dyn Fn(&Member) -> usize, min: usize, max: usize| {
        members
            .iter()
            .map(|m| f(m))
            .max()
            .unwrap_or(0)
            .clamp(min, max)
    };
    let name = longest(&|m| m.name.chars().count(), 4, 20);
    let addr = longest(&|m| m.ip.to_string().len(), 7, 39);
    let wide = MemberCols {
        name,
        kind: 11,
        roles: longest(&|m| roles_text(m, false).len(), 5, 32),
        addr,
        uptime: 7,
        state: 9,
        compact: false,
    };
    if width.saturating_sub(wide.fixed()) >= 24 {
        return wide;
    }
    MemberCols {
        name,
        kind: 4,
        roles: longest(&|m| roles_text(m, true).len(), 5, 16),
        addr,
        uptime: 6,
        state: 8,
        compact: true,
    }
}

/// A member's state: what our session says of an event server, active/standby of a manager,
/// `live` otherwise (every member in the status is live).
fn member_state(app: &App, m: &Member) -> (&'static str, Style) {
    match m.kind {
        Kind::Eventserver => match app.link_of(m).map(|l| &l.link) {
            Some(Link::Up { .. }) => ("reached", Style::new().fg(Color::Green)),
            Some(Link::Down { .. }) => ("unreach", Style::new().fg(Color::Red)),
            Some(Link::Connecting) => ("connect", Style::new().fg(Color::Yellow)),
            None => ("live", Style::new().fg(Color::Green)),
        },
        Kind::Manager => {
            let active = app.status.as_ref().is_some_and(|s| s.manager == m.name);
            if active {
                ("active", bold().fg(Color::Green))
            } else {
                ("standby", Style::new())
            }
        }
        _ => ("live", Style::new().fg(Color::Green)),
    }
}

/// A member's load figures in at most `width` characters where possible: full names, else
/// short names.
fn load_text(app: &App, m: &Member, width: usize) -> (String, Style) {
    let Some(f) = app.stats.get(&m.name) else {
        return ("-".into(), dim());
    };
    let join = |compact: bool| {
        f.figures
            .iter()
            .map(|(k, v)| {
                let k = if compact { short_figure(k) } else { k };
                format!("{k} {}", figure(*v))
            })
            .collect::<Vec<_>>()
            .join(if compact { " " } else { "  " })
    };
    let mut text = join(false);
    if text.chars().count() > width {
        text = join(true);
    }
    let stale = app.now_ms.saturating_sub(f.at_ms) > app.opts.stale_stats_ms;
    (text, if stale { dim() } else { Style::new() })
}

fn draw_members(frame: &mut Frame, app: &App, area: Rect) {
    let members = app.members();
    let inner_w = area.width.saturating_sub(2) as usize;
    let c = member_cols(&members, inner_w);
    let load_w = inner_w.saturating_sub(c.fixed());
    let visible = area.height.saturating_sub(3) as usize;
    let first = app.scroll.members.min(members.len());
    let shown = &members[first..(first + visible).min(members.len())];
    let mut title = format!(" Members ({}) ", members.len());
    if members.len() > visible {
        title = format!(
            " Members ({}) {}-{} ",
            members.len(),
            first + 1,
            first + shown.len()
        );
    }
    let mut lines = vec![Line::styled(
        format!(
            "{} {} {} {} {} {} {}",
            fit("name", c.name),
            fit("kind", c.kind),
            fit("roles", c.roles),
            fit("address", c.addr),
            fit("uptime", c.uptime),
            fit("state", c.state),
            fit("load", load_w),
        ),
        bold().fg(Color::Cyan),
    )];
    for m in shown {
        let kind = if c.compact {
            short_kind(m.kind).to_string()
        } else {
            m.kind.as_str().to_string()
        };
        let (state, state_style) = member_state(app, m);
        let (load, load_style) = load_text(app, m, load_w);
        lines.push(Line::from(vec![
            Span::styled(fit(&m.name, c.name), bold()),
            Span::raw(" "),
            Span::raw(fit(&kind, c.kind)),
            Span::raw(" "),
            Span::raw(fit(&roles_text(m, c.compact), c.roles)),
            Span::raw(" "),
            Span::raw(fit(&m.ip.to_string(), c.addr)),
            Span::raw(" "),
            Span::raw(fit(&duration(app.now_ms.saturating_sub(m.since)), c.uptime)),
            Span::raw(" "),
            Span::styled(fit(state, c.state), state_style),
            Span::raw(" "),
            Span::styled(fit(&load, load_w), load_style),
        ]));
    }
    if members.is_empty() {
        lines.push(Line::styled("no network status yet", dim()));
    }
    let block = panel_block(app, Panel::Members, title);
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

/// The rings panel's rows at inner width `width`: a table (members by roles) when it fits,
/// else one block per role with a bar per member.
pub fn ring_lines(app: &App, width: usize) -> Vec<Line<'static>> {
    let roles: Vec<&str> = app.shares.keys().map(String::as_str).collect();
    if roles.is_empty() {
        return vec![Line::styled("no member bears a role", dim())];
    }
    let shares: Vec<&Vec<(String, f64)>> = app.shares.values().collect();
    let mut names: Vec<&str> = shares
        .iter()
        .flat_map(|s| s.iter().map(|(n, _)| n.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    let name_w = names
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(8, 20);
    let ratio = |s: &[(String, f64)]| {
        let max = s.iter().map(|(_, v)| *v).fold(0.0, f64::max);
        max * s.len() as f64
    };
    for short in [false, true] {
        let labels: Vec<&str> = roles
            .iter()
            .map(|r| if short { short_role(r) } else { r })
            .collect();
        let cols: Vec<usize> = labels.iter().map(|l| l.chars().count().max(6)).collect();
        if name_w + cols.iter().map(|c| c + 1).sum::<usize>() > width {
            continue;
        }
        let mut head = fit("member", name_w);
        for (l, w) in labels.iter().zip(&cols) {
            head.push_str(&format!(" {l:>w$}"));
        }
        let mut lines = vec![Line::styled(head, bold().fg(Color::Cyan))];
        for n in &names {
            let mut spans = vec![Span::styled(fit(n, name_w), bold())];
            for (s, w) in shares.iter().zip(&cols) {
                let cell = s
                    .iter()
                    .find(|(m, _)| m == n)
                    .map_or("-".to_string(), |(_, v)| format!("{:.1}%", v * 100.0));
                spans.push(Span::raw(format!(" {cell:>w$}")));
            }
            lines.push(Line::from(spans));
        }
        let mut foot = fit("max/mean", name_w);
        for (s, w) in shares.iter().zip(&cols) {
            foot.push_str(&format!(" {:>w$.2}", ratio(s)));
        }
        lines.push(Line::styled(foot, dim()));
        return lines;
    }
    // Too narrow for a table: one block per role.
    let mut lines = Vec::new();
    let bar_w = width.saturating_sub(name_w + 9);
    for (role, &s) in roles.iter().zip(shares.iter()) {
        lines.push(Line::from(vec![
            Span::styled(role.to_string(), bold().fg(Color::Cyan)),
            Span::styled(
                format!(" {} members, max/mean {:.2}", s.len(), ratio(s)),
                dim(),
            ),
        ]));
        let max = s.iter().map(|(_, v)| *v).fold(0.0, f64::max);
        for (n, v) in s {
            let bar = if max > 0.0 {
                (v / max * bar_w as f64).round() as usize
            } else {
                0
            };
            lines.push(Line::from(vec![
                Span::styled(format!(" {}", fit(n, name_w)), bold()),
                Span::raw(format!(" {:>6.1}%", v * 100.0)),
                Span::styled(
                    format!(" {}", "█".repeat(bar.min(bar_w))),
                    Style::new().fg(Color::Blue),
                ),
            ]));
        }
    }
    lines
}

fn draw_rings(frame: &mut Frame, app: &App, area: Rect) {
    let lines = ring_lines(app, area.width.saturating_sub(2) as usize);
    let visible = area.height.saturating_sub(2) as usize;
    let first = app.scroll.rings.min(lines.len());
    let shown: Vec<Line> = lines.into_iter().skip(first).take(visible).collect();
    let block = panel_block(app, Panel::Rings, " Rings: share of keyspace ".into());
    frame.render_widget(Paragraph::new(shown).block(block), area);
}

fn level_style(level: Level) -> Style {
    match level {
        Level::Info => Style::new(),
        Level::Warn => Style::new().fg(Color::Yellow),
        Level::Error => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
    }
}

/// Every row of the log at inner width `width`, oldest first.
pub fn log_lines(app: &App, width: usize) -> Vec<Line<'static>> {
    let text_w = width.saturating_sub(TIME_W).max(8);
    let mut lines = Vec::new();
    for l in &app.log {
        for (i, row) in wrap(&l.text, text_w).into_iter().enumerate() {
            let time = if i == 0 {
                format!("{} ", clock(l.time_ms))
            } else {
                " ".repeat(TIME_W)
            };
            lines.push(Line::from(vec![
                Span::styled(time, dim()),
                Span::styled(row, level_style(l.level)),
            ]));
        }
    }
    lines
}

fn draw_log(frame: &mut Frame, app: &App, area: Rect) {
    let lines = log_lines(app, area.width.saturating_sub(2) as usize);
    let visible = area.height.saturating_sub(2) as usize;
    let end = lines.len().saturating_sub(app.scroll.log);
    let start = end.saturating_sub(visible);
    let mut block = panel_block(app, Panel::Log, format!(" Log ({}) ", app.log.len()));
    if app.scroll.log > 0 {
        block = block.title_bottom(Span::styled(
            format!(" {} newer rows below: End ", app.scroll.log),
            Style::new().fg(Color::Yellow),
        ));
    }
    let shown: Vec<Line> = lines[start..end].to_vec();
    frame.render_widget(Paragraph::new(shown).block(block), area);
}

fn lookup_rows(app: &App) -> usize {
    if app.lookup.editing {
        return 2;
    }
    match &app.lookup.result {
        Some(r) => 1 + r.roles.len().max(1),
        None => 1,
    }
}

fn draw_lookup(frame: &mut Frame, app: &App, area: Rect) {
    let lb = &app.lookup;
    let title = if lb.editing {
        " Lookup: type a key, Enter looks it up, Esc cancels "
    } else {
        " Lookup: / for another key, Esc closes "
    };
    let block = Block::bordered()
        .border_style(Style::new().fg(Color::Magenta))
        .title(Span::styled(title, Style::new().fg(Color::Magenta)));
    let inner = block.inner(area);
    let mut lines = Vec::new();
    if lb.editing {
        // A key longer than the box scrolls so that the cursor stays in view.
        let room = (inner.width as usize).saturating_sub(6).max(1);
        let skip = (lb.cursor + 1).saturating_sub(room);
        let shown: String = lb.input.chars().skip(skip).take(room).collect();
        lines.push(Line::from(vec![
            Span::styled("key: ", dim()),
            Span::raw(shown),
        ]));
        lines.push(Line::styled(
            "an AOR (alice@example.test, sip:alice@example.test) or a Call-ID, hashed as the nodes do",
            dim(),
        ));
        let x =
            u16::try_from(5 + lb.cursor - skip).map_or(u16::MAX, |dx| inner.x.saturating_add(dx));
        if inner.height > 0 && x < inner.right() {
            frame.set_cursor_position(Position::new(x, inner.y));
        }
    } else if let Some(r) = &lb.result {
        let mut head = vec![
            Span::styled("key ", dim()),
            Span::styled(r.key.clone(), bold()),
        ];
        if r.canonical != r.key {
            head.push(Span::styled(" hashed as ", dim()));
            head.push(Span::raw(r.canonical.clone()));
        }
        head.push(Span::styled(
            format!("  position {:016x}", r.position),
            dim(),
        ));
        lines.push(Line::from(head));
        if r.roles.is_empty() {
            lines.push(Line::styled(
                if app.status.is_none() {
                    "no network status yet"
                } else {
                    "no ring: no live member bears a role"
                },
                Style::new().fg(Color::Yellow),
            ));
        }
        let role_w = r
            .roles
            .iter()
            .map(|o| o.role.chars().count())
            .max()
            .unwrap_or(0);
        for o in &r.roles {
            let mut spans = vec![Span::styled(
                fit(&o.role, role_w),
                Style::new().fg(Color::Cyan),
            )];
            for (i, m) in o.members.iter().enumerate() {
                if i == 0 {
                    spans.push(Span::styled(" owner ", dim()));
                    spans.push(Span::styled(m.name.clone(), bold().fg(Color::Green)));
                } else {
                    spans.push(Span::styled(
                        if i == 1 { "  replicas " } else { ", " },
                        dim(),
                    ));
                    spans.push(Span::styled(m.name.clone(), bold()));
                }
                spans.push(Span::styled(format!(" {}", m.ip), dim()));
            }
            lines.push(Line::from(spans));
        }
    }
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn footer_line(app: &App) -> Line<'static> {
    let keys: &[(&str, &str)] = if app.help {
        &[("any key", "close the help"), ("q", "quit")]
    } else if app.lookup.editing {
        &[
            ("Enter", "look up"),
            ("Esc", "cancel"),
            ("←→ Home End", "move"),
            ("Ctrl-U", "clear"),
        ]
    } else {
        &[
            ("q", "quit"),
            ("Tab", "panel"),
            ("/", "lookup"),
            ("↑↓", "scroll"),
            ("PgUp/Dn", "page"),
            ("z", "zoom"),
            ("?", "help"),
        ]
    };
    let mut spans = Vec::new();
    for (k, what) in keys {
        spans.push(Span::styled(
            format!(" {k}"),
            bold().fg(Color::Black).bg(Color::Gray),
        ));
        spans.push(Span::raw(format!(" {what} ")));
    }
    Line::from(spans)
}

/// Every key, for the help box (and the README).
pub const KEYS: &[(&str, &str)] = &[
    ("q, Ctrl-C", "quit"),
    (
        "Tab, Shift-Tab",
        "next / previous panel (members, rings, log)",
    ),
    ("1 2 3", "members / rings / log panel"),
    ("↑ ↓, k j", "scroll the panel by a row"),
    ("PgUp PgDn", "scroll by a page"),
    ("Home End, g G", "top / bottom (End follows new log lines)"),
    ("/", "look a key up: owner and replicas on every ring"),
    ("Enter, Esc", "in the lookup box: look up / cancel"),
    ("Esc", "close the lookup result, leave zoom"),
    ("z", "zoom: the focused panel fills the screen"),
    ("?, F1", "this help"),
];

fn draw_help(frame: &mut Frame) {
    let area = frame.area();
    let w = area.width.min(72);
    let h = area.height.min(KEYS.len() as u16 + 4);
    let r = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    let mut lines: Vec<Line> = KEYS
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!("{k:>15} "), bold().fg(Color::Cyan)),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::styled(
        "times are UTC; shares are fractions of the hash circle",
        dim(),
    ));
    let block = Block::bordered()
        .border_style(Style::new().fg(Color::Cyan))
        .title(" Keys ");
    frame.render_widget(Clear, r);
    frame.render_widget(Paragraph::new(lines).block(block), r);
}
