//! The terminal UI drawn on ratatui's `TestBackend` at 80x24 and 120x40: state in, screen
//! text out. Run with `--nocapture` to see the screens.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crossterm::event::{KeyCode, KeyEvent};
use onehop_monitor::state::{App, Input, Options, Panel};
use onehop_monitor::ui;
use onehop_overlay::client::ClientEvent;
use onehop_overlay::ring::{lookup_key, Rings, DEFAULT_POINTS};
use onehop_overlay::status::{Endpoint, Kind, Member, NetworkStatus, Role};
use onehop_overlay::wire::{Event, Level, LogEvent, Payload, Stats};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

const T0: u64 = 1_700_000_000_000;
const SIZES: [(u16, u16); 2] = [(80, 24), (120, 40)];

fn ip(i: u8) -> IpAddr {
    format!("127.0.95.{i}").parse().unwrap()
}

fn es_addr(i: u8) -> SocketAddr {
    SocketAddr::new(ip(i), 8000)
}

fn member(name: &str, kind: Kind, roles: &[&str], i: u8, age_ms: u64) -> Member {
    let endpoints = if kind == Kind::Eventserver {
        vec![Endpoint {
            service: "eventserver".into(),
            addr: es_addr(i),
        }]
    } else {
        vec![]
    };
    Member {
        name: name.into(),
        kind,
        roles: roles.iter().map(|r| Role::new(r).unwrap()).collect(),
        endpoints,
        since: T0 - age_ms,
        ip: ip(i),
    }
}

const ROLES: [&str; 3] = ["media_relay", "registrar", "sip_proxy"];

/// A farm as `onehop-farm up --nodes N --dns 0` starts it: es1-3, manager1-3, node1-N.
fn status(version: u64, nodes: &[&str]) -> NetworkStatus {
    let mut members = vec![
        member("es1", Kind::Eventserver, &[], 1, 3_725_000),
        member("es2", Kind::Eventserver, &[], 2, 3_725_000),
        member("es3", Kind::Eventserver, &[], 3, 3_725_000),
        member("manager1", Kind::Manager, &[], 4, 3_600_000),
        member("manager2", Kind::Manager, &[], 5, 3_600_000),
        member("manager3", Kind::Manager, &[], 6, 3_600_000),
    ];
    for n in nodes {
        let i: u8 = n.trim_start_matches("node").parse().unwrap();
        members.push(member(n, Kind::Node, &ROLES, 6 + i, 65_000));
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    NetworkStatus {
        term: 3,
        version,
        manager: "manager2".into(),
        members: members.into_iter().map(Arc::new).collect(),
    }
}

fn publication(origin: &str, kind: Kind, seq: u64, payload: Payload) -> Input {
    Input::Client(ClientEvent::Event(Arc::new(Event {
        origin: origin.into(),
        origin_kind: kind,
        seq,
        payload,
    })))
}

fn log(seq: u64, text: &str) -> Input {
    publication(
        "manager2",
        Kind::Manager,
        seq,
        Payload::Log(LogEvent {
            time_ms: T0 - 1000 + seq,
            level: Level::Info,
            text: text.into(),
        }),
    )
}

fn key(c: KeyCode) -> Input {
    Input::Key(KeyEvent::from(c))
}

/// A monitor that has watched a farm of three nodes for a while.
fn watched_farm(w: u16, h: u16) -> App {
    let mut app = App::new(&[es_addr(1), es_addr(2), es_addr(3)], Options::default());
    app.apply(T0, Input::Resize(w, h));
    for (i, name) in ["es1", "es2"].into_iter().enumerate() {
        app.apply(
            T0,
            Input::Client(ClientEvent::Up {
                server: name.into(),
                addr: es_addr(i as u8 + 1),
            }),
        );
    }
    app.apply(
        T0,
        Input::Client(ClientEvent::Down {
            server: None,
            addr: es_addr(3),
            reason: "timed out".into(),
        }),
    );
    app.apply(
        T0,
        publication(
            "manager2",
            Kind::Manager,
            1,
            Payload::Network(status(7, &["node1", "node2", "node3"])),
        ),
    );
    app.apply(T0, log(2, "manager2 is the active manager (term 3)"));
    app.apply(
        T0,
        log(
            3,
            "node3 (node: media_relay,registrar,sip_proxy) joined from 127.0.95.9",
        ),
    );
    app.apply(
        T0,
        publication(
            "node1",
            Kind::Node,
            1,
            Payload::Stats(Stats {
                figures: vec![
                    ("bindings".into(), 1234.0),
                    ("calls".into(), 17.0),
                    ("relay_sessions".into(), 9.0),
                ],
            }),
        ),
    );
    app
}

fn screen(app: &App) -> Vec<String> {
    let mut term = Terminal::new(TestBackend::new(app.size.0, app.size.1)).unwrap();
    term.draw(|f| ui::draw(f, app)).unwrap();
    let buf = term.backend().buffer();
    let lines: Vec<String> = (0..buf.area.height)
        .map(|y| {
            (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol())
                .collect::<String>()
        })
        .collect();
    println!(
        "--- {}x{} ---\n{}",
        app.size.0,
        app.size.1,
        lines.join("\n")
    );
    lines
}

fn shows(lines: &[String], text: &str) -> bool {
    lines.iter().any(|l| l.contains(text))
}

fn row_of<'a>(lines: &'a [String], text: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.contains(text))
        .unwrap_or_else(|| panic!("no row shows {text:?}"))
}

#[test]
fn header_shows_the_active_manager_with_term_and_version() {
    for (w, h) in SIZES {
        let lines = screen(&watched_farm(w, h));
        assert!(lines[0].contains("manager manager2"), "{}", lines[0]);
        assert!(lines[0].contains("term 3"), "{}", lines[0]);
        assert!(lines[0].contains("version 7"), "{}", lines[0]);
        // The manager's row says which one is active.
        assert!(row_of(&lines, "│manager2 ").contains("active"));
        assert!(row_of(&lines, "│manager1 ").contains("standby"));
    }
}

#[test]
fn the_member_table_shows_every_member_with_kind_roles_address_uptime_and_load() {
    for (w, h) in SIZES {
        let lines = screen(&watched_farm(w, h));
        let node1 = row_of(&lines, "│node1 ");
        assert!(node1.contains("127.0.95.7"), "{node1}");
        assert!(node1.contains("1m05s"), "uptime from since: {node1}");
        assert!(node1.contains("live"), "{node1}");
        assert!(node1.contains("1234"), "load figures: {node1}");
        assert!(node1.contains("17"), "{node1}");
        if w >= 120 {
            assert!(node1.contains("media_relay,registrar,sip_proxy"), "{node1}");
            assert!(node1.contains("bind 1234 calls 17 relay 9"), "{node1}");
        } else {
            assert!(node1.contains("relay,reg,proxy"), "{node1}");
        }
        assert!(row_of(&lines, "│es1 ").contains("1h02m"));
        // Every member fits at both sizes (nodes first, then managers, then event servers).
        for n in [
            "node1", "node2", "node3", "manager1", "manager2", "manager3", "es1", "es2", "es3",
        ] {
            assert!(shows(&lines, &format!("│{n} ")), "{n} missing at {w}x{h}");
        }
    }
}

#[test]
fn the_event_servers_line_says_which_are_reachable() {
    for (w, h) in SIZES {
        let lines = screen(&watched_farm(w, h));
        let l = &lines[1];
        assert!(l.contains("event servers 2/3"), "{l}");
        assert!(l.contains("es1 up"), "{l}");
        assert!(l.contains("es2 up"), "{l}");
        // Not reached yet: named from the status, shown down with the reason.
        assert!(l.contains("es3 down"), "{l}");
        if w >= 120 {
            assert!(l.contains("timed out"), "{l}");
        }
        assert!(row_of(&lines, "│es3 ").contains("unreach"));
        assert!(row_of(&lines, "│es1 ").contains("reached"));
    }
}

#[test]
fn the_rings_panel_shows_every_members_share_of_each_ring() {
    let s = status(7, &["node1", "node2", "node3"]);
    let rings = Rings::from_status(&s, DEFAULT_POINTS);
    for (w, h) in SIZES {
        let lines = screen(&watched_farm(w, h));
        assert!(shows(&lines, "Rings"));
        for role in ROLES {
            for (name, share) in rings.get(role).unwrap().shares() {
                let cell = format!("{:.1}%", share * 100.0);
                let row = lines
                    .iter()
                    .find(|l| l.contains(&format!("│{name} ")) && l.contains(&cell));
                assert!(row.is_some(), "{role} share {cell} of {name} at {w}x{h}");
            }
        }
        assert!(shows(&lines, "max/mean"));
    }
}

#[test]
fn the_log_shows_network_events_with_their_time() {
    for (w, h) in SIZES {
        let lines = screen(&watched_farm(w, h));
        assert!(shows(&lines, "Log ("));
        assert!(shows(&lines, "22:13:19 manager2 is the active manager"));
        assert!(shows(&lines, "node3 (node:"));
        // A line too long for the panel is wrapped, not cut: the address is on screen.
        assert!(shows(&lines, "127.0.95.9"));
        if w >= 120 {
            assert!(shows(
                &lines,
                "cannot reach event server 127.0.95.3:8000: timed out"
            ));
        }
    }
}

#[test]
fn a_lookup_shows_the_owner_and_replicas_after_typing_a_key() {
    let key_text = "sip:alice@example.test";
    let s = status(7, &["node1", "node2", "node3"]);
    let rings = Rings::from_status(&s, DEFAULT_POINTS);
    for (w, h) in SIZES {
        let mut app = watched_farm(w, h);
        app.apply(T0, key(KeyCode::Char('/')));
        for c in key_text.chars() {
            app.apply(T0, key(KeyCode::Char(c)));
        }
        let lines = screen(&app);
        assert!(shows(&lines, &format!("key: {key_text}")), "typing shows");
        assert!(shows(&lines, "Enter look up"), "the key line changes");
        app.apply(T0, key(KeyCode::Enter));
        let lines = screen(&app);
        assert!(shows(&lines, "hashed as alice@example.test"));
        for role in ROLES {
            let owner = rings
                .get(role)
                .unwrap()
                .owner(&lookup_key(key_text))
                .unwrap()
                .name
                .clone();
            let row = lines.iter().find(|l| {
                l.contains(&format!("│{role} ")) && l.contains(&format!(" owner {owner} "))
            });
            assert!(row.is_some(), "{role} owner {owner} at {w}x{h}");
            assert!(row.unwrap().contains("replicas node"));
        }
        // Members still show above the lookup box.
        assert!(shows(&lines, "│node1 "));
    }
}

#[test]
fn a_member_that_leaves_disappears_from_the_table_and_the_rings() {
    for (w, h) in SIZES {
        let mut app = watched_farm(w, h);
        app.apply(
            T0 + 700,
            publication(
                "manager2",
                Kind::Manager,
                10,
                Payload::Network(status(8, &["node1", "node2"])),
            ),
        );
        app.apply(T0 + 700, log(11, "node3 is gone"));
        let lines = screen(&app);
        assert!(lines[0].contains("version 8"));
        assert!(!shows(&lines, "│node3 "), "node3 still listed at {w}x{h}");
        assert!(shows(&lines, "node3 is gone"));
        // Two nodes share each ring now.
        let ring_rows = lines
            .iter()
            .filter(|l| (l.contains("│node1 ") || l.contains("│node2 ")) && l.contains('%'))
            .count();
        assert_eq!(ring_rows, 2, "at {w}x{h}");
    }
}

#[test]
fn before_any_status_the_screen_says_it_is_waiting() {
    for (w, h) in SIZES {
        let mut app = App::new(&[es_addr(1)], Options::default());
        app.apply(T0, Input::Resize(w, h));
        let lines = screen(&app);
        assert!(lines[0].contains("waiting for the network status"));
        assert!(lines[1].contains("127.0.95.1:8000 connecting"));
        assert!(shows(&lines, "no network status yet"));
        assert!(shows(&lines, "no member bears a role"));
    }
}

#[test]
fn the_key_line_and_the_help_name_the_keys() {
    for (w, h) in SIZES {
        let mut app = watched_farm(w, h);
        let lines = screen(&app);
        let footer = lines.last().unwrap();
        for k in ["q quit", "Tab panel", "/ lookup", "↑↓ scroll", "? help"] {
            assert!(footer.contains(k), "{k:?} not in {footer:?}");
        }
        app.apply(T0, key(KeyCode::Char('?')));
        let lines = screen(&app);
        assert!(shows(&lines, "Keys"));
        assert!(shows(&lines, "next / previous panel"));
        assert!(shows(&lines, "zoom"));
    }
}

#[test]
fn zoom_gives_the_focused_panel_the_whole_body() {
    let mut app = watched_farm(80, 24);
    for i in 0..40 {
        app.apply(T0, log(100 + i, &format!("event number {i}")));
    }
    app.apply(T0, key(KeyCode::Char('3')));
    app.apply(T0, key(KeyCode::Char('z')));
    assert_eq!(app.focus, Panel::Log);
    let lines = screen(&app);
    assert!(!shows(&lines, "Members ("));
    assert!(!shows(&lines, "Rings"));
    // 24 rows: header, event servers, key line and the log's borders leave 19 rows.
    assert!(shows(&lines, "event number 39"));
    assert!(shows(&lines, "event number 21"));
    assert!(!shows(&lines, "event number 20 "));
    // Scrolling back shows older lines and says how to come back.
    app.apply(T0, key(KeyCode::PageUp));
    let lines = screen(&app);
    assert!(shows(&lines, "event number 3 ") || shows(&lines, "event number 2 "));
    assert!(shows(&lines, "newer rows below"));
}

#[test]
fn tiny_and_odd_terminals_draw_without_panicking() {
    for (w, h) in [(1, 1), (10, 3), (20, 6), (40, 10), (80, 8), (300, 100)] {
        let mut app = watched_farm(w, h);
        for i in 0..30 {
            app.apply(T0, log(100 + i, &"a long line of log text ".repeat(5)));
        }
        screen(&app);
        for k in [KeyCode::Char('/'), KeyCode::Char('x'), KeyCode::Enter] {
            app.apply(T0, key(k));
        }
        for k in [
            KeyCode::Char('3'),
            KeyCode::PageUp,
            KeyCode::Home,
            KeyCode::Char('z'),
            KeyCode::Char('?'),
        ] {
            app.apply(T0, key(k));
            screen(&app);
        }
    }
}

#[test]
fn a_long_key_scrolls_in_the_lookup_box() {
    let mut app = watched_farm(80, 24);
    app.apply(T0, key(KeyCode::Char('/')));
    let long = format!("{}-end", "x".repeat(200));
    for c in long.chars() {
        app.apply(T0, key(KeyCode::Char(c)));
    }
    let lines = screen(&app);
    assert!(
        shows(&lines, "xxxx-end"),
        "the end of the key, where the cursor is"
    );
}
