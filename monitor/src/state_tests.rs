//! Unit tests of [`App::apply`]: inputs in, state out; no terminal, no network, fixed times.

use super::*;
use onehop_overlay::ring::Rings;
use onehop_overlay::status::{Endpoint, Role};
use onehop_overlay::wire::{LogEvent, SessionMember, Stats};

const T0: u64 = 1_700_000_000_000;

fn es_addr(i: u8) -> SocketAddr {
    format!("127.0.9.{i}:8000").parse().unwrap()
}

fn member(name: &str, kind: Kind, roles: &[&str], ip: &str) -> Member {
    let ip: std::net::IpAddr = ip.parse().unwrap();
    let endpoints = match kind {
        Kind::Eventserver => vec![Endpoint {
            service: "eventserver".into(),
            addr: SocketAddr::new(ip, 8000),
        }],
        _ => vec![],
    };
    Member {
        name: name.into(),
        kind,
        roles: roles.iter().map(|r| Role::new(r).unwrap()).collect(),
        endpoints,
        since: T0 - 65_000,
        ip,
    }
}

fn farm_status(version: u64, nodes: &[&str]) -> NetworkStatus {
    let mut members = vec![
        member("es1", Kind::Eventserver, &[], "127.0.9.1"),
        member("es2", Kind::Eventserver, &[], "127.0.9.2"),
        member("manager1", Kind::Manager, &[], "127.0.9.3"),
        member("manager2", Kind::Manager, &[], "127.0.9.4"),
    ];
    for (i, n) in nodes.iter().enumerate() {
        members.push(member(
            n,
            Kind::Node,
            &["media_relay", "registrar", "sip_proxy"],
            &format!("127.0.9.{}", 10 + i),
        ));
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    NetworkStatus {
        term: 2,
        version,
        manager: "manager1".into(),
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

fn status_input(s: NetworkStatus) -> Input {
    let seq = s.version;
    publication("manager1", Kind::Manager, seq, Payload::Network(s))
}

fn key(c: KeyCode) -> Input {
    Input::Key(KeyEvent::from(c))
}

fn type_text(app: &mut App, text: &str) {
    for c in text.chars() {
        app.apply(T0, key(KeyCode::Char(c)));
    }
}

fn app() -> App {
    let mut a = App::new(&[es_addr(1), es_addr(2)], Options::default());
    a.apply(T0, Input::Resize(100, 30));
    a
}

fn log_texts(app: &App) -> Vec<&str> {
    app.log.iter().map(|l| l.text.as_str()).collect()
}

#[test]
fn a_newer_status_replaces_the_held_one_and_rebuilds_the_rings() {
    let mut a = app();
    a.apply(
        T0,
        status_input(farm_status(5, &["node1", "node2", "node3"])),
    );
    assert_eq!(a.status.as_ref().unwrap().version, 5);
    assert_eq!(a.rings.roles().count(), 3);
    assert_eq!(a.rings.get("registrar").unwrap().len(), 3);
    assert_eq!(
        log_texts(&a),
        vec!["network status from manager1: term 2 version 5, 7 members"]
    );

    // Older or equal statuses are ignored (a deposed manager cannot roll the view back).
    a.apply(T0, status_input(farm_status(4, &["node1"])));
    a.apply(T0, status_input(farm_status(5, &["node1"])));
    assert_eq!(a.rings.get("registrar").unwrap().len(), 3);

    a.apply(T0 + 10, status_input(farm_status(6, &["node1", "node2"])));
    assert_eq!(a.rings.get("registrar").unwrap().len(), 2);
    assert_eq!(a.status_at_ms, T0 + 10);
    // Only the first status is logged by the monitor itself; the manager logs the changes.
    assert_eq!(a.log.len(), 1);
}

#[test]
fn members_are_listed_nodes_first() {
    let mut a = app();
    a.apply(T0, status_input(farm_status(1, &["node2", "node1"])));
    let names: Vec<&str> = a.members().iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["node1", "node2", "manager1", "manager2", "es1", "es2"]
    );
}

#[test]
fn stats_are_kept_per_member_while_it_is_live() {
    let mut a = app();
    a.apply(T0, status_input(farm_status(1, &["node1", "node2"])));
    let figures = vec![("bindings".to_string(), 12.0), ("calls".to_string(), 3.0)];
    a.apply(
        T0 + 5,
        publication(
            "node2",
            Kind::Node,
            1,
            Payload::Stats(Stats {
                figures: figures.clone(),
            }),
        ),
    );
    assert_eq!(
        a.stats.get("node2"),
        Some(&Figures {
            at_ms: T0 + 5,
            figures: figures.clone(),
            seq: 1,
        })
    );
    // A late copy of an older publication (through a slower event server) changes nothing.
    a.apply(
        T0 + 6,
        publication(
            "node2",
            Kind::Node,
            0,
            Payload::Stats(Stats {
                figures: vec![("sip_requests".into(), 1.0)],
            }),
        ),
    );
    assert_eq!(a.stats.get("node2").map(|f| &f.figures), Some(&figures));
    a.apply(T0 + 6, status_input(farm_status(2, &["node1"])));
    assert!(a.stats.is_empty(), "figures of a member gone are dropped");
}

#[test]
fn event_server_sessions_are_tracked_and_logged_on_changes_only() {
    let mut a = app();
    assert!(a.eventservers.iter().all(|l| l.link == Link::Connecting));
    a.apply(
        T0,
        Input::Client(ClientEvent::Up {
            server: "es1".into(),
            addr: es_addr(1),
        }),
    );
    assert_eq!(a.eventservers[0].name.as_deref(), Some("es1"));
    assert_eq!(a.eventservers[0].link, Link::Up { since_ms: T0 });
    let down = |t| ClientEvent::Down {
        server: None,
        addr: es_addr(2),
        reason: format!("timed out {t}"),
    };
    a.apply(T0 + 1, Input::Client(down(1)));
    a.apply(T0 + 2, Input::Client(down(2)));
    assert_eq!(
        a.eventservers[1].link,
        Link::Down {
            since_ms: T0 + 1,
            reason: "timed out 2".into()
        },
        "down since the first failure, with the latest reason"
    );
    a.apply(
        T0 + 3,
        Input::Client(ClientEvent::Down {
            server: Some("es1".into()),
            addr: es_addr(1),
            reason: "idle timeout".into(),
        }),
    );
    assert_eq!(
        log_texts(&a),
        vec![
            "connected to event server es1 (127.0.9.1:8000)",
            "cannot reach event server 127.0.9.2:8000: timed out 1; retrying",
            "lost event server es1 (127.0.9.1:8000): idle timeout; reconnecting",
        ]
    );
    // A session with an address that was not configured changes nothing.
    a.apply(
        T0,
        Input::Client(ClientEvent::Up {
            server: "es9".into(),
            addr: es_addr(9),
        }),
    );
    assert_eq!(a.eventservers.len(), 2);
}

#[test]
fn an_event_server_member_shows_our_session_with_it() {
    let mut a = app();
    a.apply(T0, status_input(farm_status(1, &["node1"])));
    a.apply(
        T0,
        Input::Client(ClientEvent::Up {
            server: "es2".into(),
            addr: es_addr(2),
        }),
    );
    let s = a.status.clone().unwrap();
    let es2 = s.member("es2").unwrap();
    assert_eq!(a.link_of(es2).unwrap().link, Link::Up { since_ms: T0 });
    // Before any session, the name comes from the status.
    assert_eq!(a.link_name(&a.eventservers[0]), "es1");
}

#[test]
fn manager_log_lines_are_shown_as_published_others_with_their_origin() {
    let mut a = app();
    let log = |text: &str, level| {
        Payload::Log(LogEvent {
            time_ms: T0 - 5,
            level,
            text: text.into(),
        })
    };
    a.apply(
        T0,
        publication(
            "manager1",
            Kind::Manager,
            1,
            log("node3 is gone", Level::Info),
        ),
    );
    a.apply(
        T0,
        publication("admin", Kind::Admin, 1, log("maintenance", Level::Warn)),
    );
    assert_eq!(log_texts(&a), vec!["node3 is gone", "admin: maintenance"]);
    assert_eq!(a.log[0].time_ms, T0 - 5, "the publisher's time");
    assert_eq!(a.log[1].level, Level::Warn);
}

#[test]
fn one_departure_reported_by_every_event_server_is_logged_once() {
    let mut a = app();
    let lost = |es: &str, seq| {
        publication(
            es,
            Kind::Eventserver,
            seq,
            Payload::Member(MemberEvent::Lost {
                name: "node3".into(),
                reason: "idle timeout".into(),
            }),
        )
    };
    a.apply(T0, lost("es1", 1));
    a.apply(T0 + 100, lost("es2", 1));
    assert_eq!(log_texts(&a), vec!["node3 lost (es1: idle timeout)"]);
    // It comes back, then leaves gracefully: logged again.
    a.apply(
        T0 + 200,
        publication(
            "es1",
            Kind::Eventserver,
            2,
            Payload::Member(MemberEvent::Joined(SessionMember {
                name: "node3".into(),
                kind: Kind::Node,
                roles: vec![],
                endpoints: vec![],
                ip: "127.0.9.12".parse().unwrap(),
            })),
        ),
    );
    a.apply(
        T0 + 300,
        publication(
            "es2",
            Kind::Eventserver,
            2,
            Payload::Member(MemberEvent::Left {
                name: "node3".into(),
            }),
        ),
    );
    assert_eq!(a.log.len(), 2);
    assert_eq!(a.log[1].text, "node3 left (said goodbye to es2)");
    // Much later, the same member lost again is a new line.
    a.apply(T0 + 60_000, lost("es1", 3));
    assert_eq!(a.log.len(), 3);
}

#[test]
fn an_unreadable_revocation_list_is_logged_as_an_error_once() {
    let mut a = app();
    let crl = |seq| publication("admin", Kind::Admin, seq, Payload::Crl(vec![1, 2, 3]));
    a.apply(T0, crl(1));
    a.apply(T0, crl(2));
    assert_eq!(a.log.len(), 1);
    assert_eq!(a.log[0].level, Level::Error);
    assert!(a.log[0]
        .text
        .starts_with("unreadable revocation list from admin"));
}

#[test]
fn the_log_keeps_its_capacity() {
    let mut a = App::new(
        &[],
        Options {
            log_capacity: 3,
            ..Options::default()
        },
    );
    for i in 0..5 {
        a.apply(
            T0,
            publication(
                "manager1",
                Kind::Manager,
                i,
                Payload::Log(LogEvent {
                    time_ms: T0,
                    level: Level::Info,
                    text: format!("line {i}"),
                }),
            ),
        );
    }
    assert_eq!(log_texts(&a), vec!["line 2", "line 3", "line 4"]);
}

#[test]
fn log_lines_and_figures_near_the_frame_cap_are_clipped() {
    let mut a = app();
    let mut text = "é".repeat(500_000);
    text.push('!');
    a.apply(
        T0,
        publication(
            "manager1",
            Kind::Manager,
            1,
            Payload::Log(LogEvent {
                time_ms: T0,
                level: Level::Info,
                text,
            }),
        ),
    );
    let kept = &a.log[0].text;
    assert!(kept.len() <= crate::state::MAX_LOG_TEXT, "{}", kept.len());
    assert!(kept.starts_with("éé"), "cut at a character boundary");
    assert!(kept.ends_with("of 1000001 bytes cut)"), "{kept}");

    let mut figures: Vec<(String, f64)> = (0..1000).map(|i| (format!("f{i}"), 1.0)).collect();
    figures.insert(0, ("n".repeat(10_000), 2.0));
    a.apply(
        T0,
        publication("node1", Kind::Node, 2, Payload::Stats(Stats { figures })),
    );
    let kept = &a.stats["node1"].figures;
    assert_eq!(kept.len(), crate::state::MAX_FIGURES);
    assert_eq!(kept[0].0, "f0", "a name past the limit is left out");
}

#[test]
fn a_lookup_shows_the_owner_and_replicas_on_every_ring_and_follows_the_status() {
    let mut a = app();
    let s = farm_status(1, &["node1", "node2", "node3"]);
    a.apply(T0, status_input(s.clone()));
    a.apply(T0, key(KeyCode::Char('/')));
    assert!(a.lookup.editing);
    type_text(&mut a, "sip:alice@Example.TEST:5060");
    // Keys typed into the box do not act as commands ('q' is a letter here).
    assert!(!a.quit);
    a.apply(T0, key(KeyCode::Enter));
    assert!(!a.lookup.editing);
    let r = a.lookup.result.clone().expect("a result");
    assert_eq!(r.key, "sip:alice@Example.TEST:5060");
    assert_eq!(r.canonical, "alice@example.test");
    let rings = Rings::from_status(&s, DEFAULT_POINTS);
    let roles: Vec<&str> = r.roles.iter().map(|o| o.role.as_str()).collect();
    assert_eq!(roles, vec!["media_relay", "registrar", "sip_proxy"]);
    for o in &r.roles {
        let ring = rings.get(&o.role).unwrap();
        assert_eq!(
            o.members[0].name,
            ring.owner("alice@example.test").unwrap().name
        );
        assert_eq!(o.members.len(), 2, "owner and one replica by default");
        assert_ne!(o.members[0].name, o.members[1].name);
    }

    // The owner leaves: the answer is redone on the next status.
    let owner = r.roles[1].members[0].name.clone();
    let rest: Vec<&str> = ["node1", "node2", "node3"]
        .into_iter()
        .filter(|n| *n != owner)
        .collect();
    a.apply(T0, status_input(farm_status(2, &rest)));
    let r2 = a.lookup.result.clone().unwrap();
    assert!(r2.roles[1].members.iter().all(|m| m.name != owner));

    // Esc closes the result.
    a.apply(T0, key(KeyCode::Esc));
    assert!(a.lookup.result.is_none());
}

#[test]
fn the_lookup_box_edits_like_a_line_editor() {
    let mut a = app();
    a.apply(T0, key(KeyCode::Char('/')));
    type_text(&mut a, "bob");
    a.apply(T0, key(KeyCode::Left));
    a.apply(T0, key(KeyCode::Backspace));
    assert_eq!(a.lookup.input, "bb");
    a.apply(T0, key(KeyCode::Home));
    a.apply(T0, key(KeyCode::Delete));
    type_text(&mut a, "ca");
    assert_eq!(a.lookup.input, "cab");
    assert_eq!(a.lookup.cursor, 2);
    a.apply(T0, key(KeyCode::Esc));
    assert!(!a.lookup.editing);
    assert!(a.lookup.result.is_none(), "Esc cancels without a lookup");
    // An empty key looks nothing up.
    a.apply(T0, key(KeyCode::Char('/')));
    a.apply(T0, key(KeyCode::Enter));
    assert!(a.lookup.result.is_none());
}

#[test]
fn keys_switch_panels_zoom_help_and_quit() {
    let mut a = app();
    assert_eq!(a.focus, Panel::Members);
    a.apply(T0, key(KeyCode::Tab));
    assert_eq!(a.focus, Panel::Rings);
    a.apply(T0, key(KeyCode::Tab));
    assert_eq!(a.focus, Panel::Log);
    a.apply(T0, key(KeyCode::Tab));
    assert_eq!(a.focus, Panel::Members);
    a.apply(T0, key(KeyCode::BackTab));
    assert_eq!(a.focus, Panel::Log);
    a.apply(T0, key(KeyCode::Char('2')));
    assert_eq!(a.focus, Panel::Rings);
    a.apply(T0, key(KeyCode::Char('z')));
    assert!(a.zoom);
    a.apply(T0, key(KeyCode::Esc));
    assert!(!a.zoom);
    a.apply(T0, key(KeyCode::Char('?')));
    assert!(a.help);
    a.apply(T0, key(KeyCode::Char('x')));
    assert!(!a.help, "any key closes the help");
    assert!(!a.quit);
    a.apply(T0, key(KeyCode::Char('q')));
    assert!(a.quit);

    let mut b = app();
    b.apply(
        T0,
        Input::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
    );
    assert!(b.quit, "Ctrl-C quits");
}

fn many_log_lines(a: &mut App, n: u64) {
    for i in 0..n {
        a.apply(
            T0,
            publication(
                "manager1",
                Kind::Manager,
                1000 + i,
                Payload::Log(LogEvent {
                    time_ms: T0,
                    level: Level::Info,
                    text: format!("line {i}"),
                }),
            ),
        );
    }
}

#[test]
fn scrolling_is_clamped_and_the_log_stays_put_while_scrolled_back() {
    let mut a = app();
    a.apply(T0, status_input(farm_status(1, &["node1", "node2"])));
    // Every member fits at 100x30: nothing to scroll.
    a.apply(T0, key(KeyCode::Down));
    assert_eq!(a.scroll.members, 0);

    many_log_lines(&mut a, 100);
    a.apply(T0, key(KeyCode::Char('3')));
    a.apply(T0, key(KeyCode::Up));
    a.apply(T0, key(KeyCode::Up));
    assert_eq!(a.scroll.log, 2);
    many_log_lines(&mut a, 3);
    assert_eq!(a.scroll.log, 5, "the rows in view stay in view");
    a.apply(T0, key(KeyCode::End));
    assert_eq!(a.scroll.log, 0, "End follows new lines again");
    a.apply(T0, key(KeyCode::Home));
    let max = ui::content_rows(&a, Panel::Log) - ui::visible_rows(&a, Panel::Log);
    assert_eq!(a.scroll.log, max);
    a.apply(T0, key(KeyCode::PageDown));
    assert_eq!(a.scroll.log, max - (ui::visible_rows(&a, Panel::Log) - 1));

    // A smaller terminal: the member table scrolls.
    a.apply(T0, Input::Resize(80, 12));
    a.apply(T0, key(KeyCode::Char('1')));
    a.apply(T0, key(KeyCode::End));
    let visible = ui::visible_rows(&a, Panel::Members);
    assert!(visible < 6);
    assert_eq!(a.scroll.members, 6 - visible);
    // Growing the terminal clamps the offset again.
    a.apply(T0, Input::Resize(120, 40));
    assert_eq!(a.scroll.members, 0);
}
