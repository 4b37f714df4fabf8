//! The lookup interface's request lines, as read from a connection.

use std::sync::{Arc, OnceLock};

use onehop_node::lookup::{answer_lines, Holds, MAX_ANSWER_BYTES, MAX_LINE};
use onehop_node::view::View;
use onehop_overlay::status::{Kind, Member, NetworkStatus, Role};

fn view() -> &'static View {
    static VIEW: OnceLock<View> = OnceLock::new();
    VIEW.get_or_init(|| {
        let members = (1..=40)
            .map(|i| {
                let mut roles = vec!["registrar", "sip_proxy"];
                if i % 2 == 0 {
                    roles.push("media_relay");
                }
                if i % 7 == 0 {
                    roles.push("xcap-server");
                }
                Member {
                    name: format!("node{i}"),
                    kind: Kind::Node,
                    roles: roles.iter().map(|r| Role::new(r).unwrap()).collect(),
                    endpoints: vec![],
                    since: 0,
                    ip: if i % 10 == 0 {
                        format!("fd00::{i}").parse().unwrap()
                    } else {
                        format!("10.0.1.{i}").parse().unwrap()
                    },
                }
            })
            .map(std::sync::Arc::new)
            .collect();
        let status = NetworkStatus {
            term: 3,
            version: 7,
            manager: "manager1".into(),
            members,
        };
        let v = View::default().apply(status, 50).expect("a first status");
        Arc::try_unwrap(v).expect("one owner")
    })
}

/// The input as the bytes read from one lookup connection, answered as the server does:
/// [`answer_lines`] until it consumes nothing more.
///
/// Properties: each answer is one line ending in CRLF, with no other line end or control
/// character in it (a client splitting lines gets one answer per request, in order); the
/// answers gathered before a write stay near [`MAX_ANSWER_BYTES`]; an incomplete line is
/// left for the next read.
pub fn lookup_line(data: &[u8]) {
    let holds: Holds = Arc::new(|_role: &str, key: &str| key.len().is_multiple_of(2));
    let mut at = 0;
    let mut out = String::new();
    loop {
        let (used, answered) = answer_lines(&data[at..], view(), Some(&holds), &mut out);
        assert!(
            out.len() < MAX_ANSWER_BYTES + 2 * MAX_LINE,
            "{} answer bytes gathered",
            out.len()
        );
        assert_eq!(out.matches("\r\n").count(), answered, "{out:?}");
        for line in out.split_terminator("\r\n") {
            assert!(
                !line.chars().any(char::is_control),
                "a control character in an answer: {line:?}"
            );
        }
        at += used;
        out.clear();
        if used == 0 {
            break;
        }
    }
    assert!(
        !data[at..].contains(&b'\n'),
        "a complete line left unanswered"
    );
}
