//! ENUM (issue 12) seen from outside: numbers provisioned through the provisioning API and
//! `onehop-admin` are answered by `dig NAPTR` of their ENUM names at every DNS member of the farm, under each
//! configured suffix; unrouted and unallocated numbers are NXDOMAIN, a block's prefix and
//! other types NODATA; and a route change (an update, a port with the right PIN) is answered
//! by every DNS member within 1 s of the API's acknowledgement (asserted with 1.5x slack for a
//! loaded 2-core machine; the figures are printed).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use hyper::Method;
use onehop_admin::Client;
use serde_json::json;

use crate::dns::{ask, dig, dns_members, metrics, require_dig, section, status_and_aa, DNS_PORT};
use crate::harness::{wait_for, within_budget, Farm};
use crate::provisioning::call;

/// The budget for an ENUM answer to follow a change, at every DNS member.
const BUDGET: Duration = Duration::from_secs(1);
const SLACK: f64 = 1.5;
const SUFFIXES: [&str; 2] = ["e164.arpa", "e164.example.test"];

/// The ENUM name of `+15550100` under `suffix`.
fn enum_name(number: &str, suffix: &str) -> String {
    let digits: Vec<String> = number
        .trim_start_matches('+')
        .chars()
        .rev()
        .map(String::from)
        .collect();
    format!("{}.{suffix}", digits.join("."))
}

/// What a DNS member answers for a NAPTR query: the SIP URI of an `E2U+sip` record, or the
/// response code of an answer without one.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Uri(String),
    Empty(ResponseCode),
}

fn uri(s: &str) -> Seen {
    Seen::Uri(s.into())
}

/// The URI inside an E2U+sip regexp `!^.*$!URI!` (unescaping `\!` and `\\`).
fn uri_of_regexp(regexp: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(regexp).ok()?;
    let body = text.strip_prefix("!^.*$!")?.strip_suffix('!')?;
    let mut out = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.push(chars.next()?);
        } else {
            out.push(c);
        }
    }
    Some(out)
}

fn seen(m: &Message) -> Seen {
    let uris: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::NAPTR(n) if &*n.services == b"E2U+sip" && &*n.flags == b"u" => {
                uri_of_regexp(&n.regexp)
            }
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] if m.metadata.response_code == ResponseCode::NoError => Seen::Uri(one.clone()),
        _ => Seen::Empty(m.metadata.response_code),
    }
}

/// Waits until every DNS member answers `want` for `number` under every suffix; the time it
/// took from `since`, or what each member answered last.
fn until_every_member(
    members: &[(String, SocketAddr)],
    number: &str,
    want: &Seen,
    since: Instant,
    timeout: Duration,
) -> Result<Duration, String> {
    let mut last = Vec::new();
    let done = wait_for(timeout, || {
        last.clear();
        for (name, addr) in members {
            for suffix in SUFFIXES {
                let got =
                    ask(*addr, &enum_name(number, suffix), RecordType::NAPTR).map(|m| seen(&m));
                if got.as_ref() != Some(want) {
                    last.push(format!("{name} {suffix}: {got:?}"));
                }
            }
        }
        last.is_empty().then(|| since.elapsed())
    });
    done.ok_or_else(|| format!("{number}: wanted {want:?}; {}", last.join("; ")))
}

/// Asserts that every member answers `want` for `number` within the budget of `since` (the
/// API's acknowledgement); prints the figure.
fn follows(members: &[(String, SocketAddr)], what: &str, number: &str, want: Seen, since: Instant) {
    let took = until_every_member(members, number, &want, since, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{what}: not answered by every DNS member within 5 s: {e}"));
    within_budget(
        &format!("ENUM {what}, every DNS member, both suffixes"),
        Some(took),
        BUDGET,
        SLACK,
    );
}

/// Runs `onehop-admin --farm DIR ARGS`, which must succeed; returns when it has exited (the
/// API acknowledged its request).
fn admin_ok(farm: &Farm, args: &[&str]) -> Instant {
    let dir = farm.path().to_str().unwrap().to_string();
    let mut all = vec!["--farm", dir.as_str()];
    all.extend_from_slice(args);
    let out = farm.tool("onehop-admin", &all);
    let at = Instant::now();
    assert!(
        out.status.success(),
        "onehop-admin {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    at
}

/// One API write that must succeed (2xx); returns when the manager acknowledged it.
fn write(c: &Client, method: Method, path: &str, body: serde_json::Value) -> Instant {
    let (status, v) = call(c, method, path, Some(body.clone()));
    assert!((200..300).contains(&status), "{path} {body}: {status} {v}");
    Instant::now()
}

/// `dig NAPTR` of a number's ENUM name at a member: status, aa, the answer lines.
fn dig_naptr(addr: SocketAddr, qname: &str) -> (String, bool, Vec<String>, Vec<String>) {
    let out = dig(addr, &[qname, "NAPTR"]);
    let (status, aa) = status_and_aa(&out);
    (
        status,
        aa,
        section(&out, "ANSWER"),
        section(&out, "AUTHORITY"),
    )
}

#[test]
fn enum_answers_follow_provisioning_on_every_dns_member() {
    require_dig();
    let mut farm = Farm::up(
        "127.0.60.1",
        &["--nodes", "2", "--dns", "2", "--dns-port", DNS_PORT],
    );
    // A second suffix (a private ENUM tree under the farm's domain) on every DNS member.
    let suffixes = toml::Value::Array(SUFFIXES.iter().map(|s| (*s).into()).collect());
    for dns in farm.names("dns") {
        farm.restart_with_config(&dns, &[("enum_suffixes", suffixes.clone())]);
    }
    let members = dns_members(&farm);
    assert_eq!(members.len(), 2);
    for (name, addr) in &members {
        for suffix in SUFFIXES {
            wait_for(Duration::from_secs(10), || {
                ask(*addr, suffix, RecordType::SOA)
                    .is_some_and(|m| m.metadata.response_code == ResponseCode::NoError)
                    .then_some(())
            })
            .unwrap_or_else(|| panic!("{name} does not answer the SOA of {suffix}"));
        }
    }

    let c = Client::for_farm(farm.path()).expect("admin client");
    write(
        &c,
        Method::POST,
        "/v1/carriers",
        json!({"ocn": "ACME", "name": "Acme Telecom"}),
    );
    admin_ok(
        &farm,
        &["carriers", "add", "OTHER", "--name", "Other Telecom"],
    );
    write(
        &c,
        Method::POST,
        "/v1/blocks",
        json!({"first": "+15550100", "last": "+15550199", "carrier": "ACME"}),
    );

    // Numbers routed to an account and to a URI through the API, one taken as the next free
    // number of the block, one routed through onehop-admin, one allocated with no route.
    let at = write(
        &c,
        Method::POST,
        "/v1/numbers",
        json!({"number": "+15550100", "route": {"account": "alice@example.test"}, "pin": "1234"}),
    );
    follows(
        &members,
        "allocation (account route, API)",
        "+15550100",
        uri("sip:alice@example.test"),
        at,
    );
    let at = write(
        &c,
        Method::POST,
        "/v1/numbers",
        json!({"number": "+15550101", "route": {"uri": "sip:+15550101@carrier.example"}}),
    );
    follows(
        &members,
        "allocation (URI route, API)",
        "+15550101",
        uri("sip:+15550101@carrier.example"),
        at,
    );
    let (status, v) = call(
        &c,
        Method::POST,
        "/v1/numbers",
        Some(json!({"block": "+15550100", "route": {"uri": "sip:bob@example.test"}})),
    );
    let at = Instant::now();
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        v["number"], "+15550102",
        "the next free number of the block: {v}"
    );
    follows(
        &members,
        "allocation (the next free number of a block)",
        "+15550102",
        uri("sip:bob@example.test"),
        at,
    );
    let at = admin_ok(
        &farm,
        &[
            "numbers",
            "allocate",
            "+15550104",
            "--route-uri",
            "sip:carol@carrier.example",
        ],
    );
    follows(
        &members,
        "allocation (onehop-admin)",
        "+15550104",
        uri("sip:carol@carrier.example"),
        at,
    );
    admin_ok(&farm, &["numbers", "allocate", "+15550103"]);

    // What dig sees at every DNS member.
    for (name, addr) in &members {
        for suffix in SUFFIXES {
            let qname = enum_name("+15550100", suffix);
            let (status, aa, answer, _) = dig_naptr(*addr, &qname);
            assert_eq!((status.as_str(), aa), ("NOERROR", true), "{name} {qname}");
            assert_eq!(
                answer,
                [format!(
                    "{qname}. 5 IN NAPTR 100 10 \"u\" \"E2U+sip\" \"!^.*$!sip:alice@example.test!\" ."
                )],
                "{name}"
            );
            let (_, _, answer, _) = dig_naptr(*addr, &enum_name("+15550101", suffix));
            assert!(
                answer[0].ends_with("\"!^.*$!sip:+15550101@carrier.example!\" ."),
                "{name}: {answer:?}"
            );
            // NXDOMAIN: allocated but unrouted, unallocated in the block, outside any block.
            for n in ["+15550103", "+15550150", "+4930123456"] {
                let (status, aa, answer, authority) = dig_naptr(*addr, &enum_name(n, suffix));
                assert_eq!(
                    (status.as_str(), aa),
                    ("NXDOMAIN", true),
                    "{name} {n} {suffix}"
                );
                assert!(answer.is_empty());
                assert!(
                    authority[0].starts_with(&format!("{suffix}. 5 IN SOA ")),
                    "{name} {n}: {authority:?}"
                );
            }
            // NODATA: the block's prefixes, and other types at a number.
            for prefix in ["+1555010", "+1555", "+1"] {
                let (status, aa, answer, authority) = dig_naptr(*addr, &enum_name(prefix, suffix));
                assert_eq!((status.as_str(), aa), ("NOERROR", true), "{name} {prefix}");
                assert!(answer.is_empty(), "{name} {prefix}: {answer:?}");
                assert!(authority[0].starts_with(&format!("{suffix}. 5 IN SOA ")));
            }
            let out = dig(*addr, &[&enum_name("+15550100", suffix), "A"]);
            assert_eq!(status_and_aa(&out), ("NOERROR".into(), true), "{out}");
            assert!(section(&out, "ANSWER").is_empty(), "{out}");
        }
    }

    // Route changes: an update, a port (a wrong PIN first), unrouting, release.
    let at = write(
        &c,
        Method::PATCH,
        "/v1/numbers/+15550101",
        json!({"route": {"uri": "sip:moved@carrier.example"}}),
    );
    follows(
        &members,
        "route update (API)",
        "+15550101",
        uri("sip:moved@carrier.example"),
        at,
    );
    let at = admin_ok(
        &farm,
        &[
            "numbers",
            "update",
            "+15550102",
            "--route-account",
            "alice@example.test",
        ],
    );
    follows(
        &members,
        "route update to an account (onehop-admin)",
        "+15550102",
        uri("sip:alice@example.test"),
        at,
    );

    let (status, v) = call(
        &c,
        Method::POST,
        "/v1/numbers/+15550100/port",
        Some(
            json!({"carrier": "OTHER", "pin": "9999", "route": {"uri": "sip:+15550100@other.example"}}),
        ),
    );
    assert!(
        (400..500).contains(&status),
        "a wrong PIN is refused: {status} {v}"
    );
    let at = write(
        &c,
        Method::POST,
        "/v1/numbers/+15550100/port",
        json!({"carrier": "OTHER", "pin": "1234", "route": {"uri": "sip:+15550100@other.example"}}),
    );
    follows(
        &members,
        "port with the right PIN",
        "+15550100",
        uri("sip:+15550100@other.example"),
        at,
    );

    let at = write(
        &c,
        Method::PATCH,
        "/v1/numbers/+15550101",
        json!({"route": null}),
    );
    follows(
        &members,
        "unrouting",
        "+15550101",
        Seen::Empty(ResponseCode::NXDomain),
        at,
    );
    let (status, v) = call(&c, Method::DELETE, "/v1/numbers/+15550102", None);
    assert!((200..300).contains(&status), "release: {status} {v}");
    let at = Instant::now();
    follows(
        &members,
        "release",
        "+15550102",
        Seen::Empty(ResponseCode::NXDomain),
        at,
    );

    let at = admin_ok(&farm, &["numbers", "release", "+15550104"]);
    follows(
        &members,
        "release (onehop-admin)",
        "+15550104",
        Seen::Empty(ResponseCode::NXDomain),
        at,
    );

    // Every member holds exactly the routed numbers (only +15550100 is left), and counted
    // the ENUM queries it answered.
    for (name, _) in &members {
        let maddr = farm
            .file
            .member(name)
            .and_then(|m| m.addr("metrics"))
            .unwrap_or_else(|| panic!("{name} serves no metrics"));
        let m = metrics(maddr).unwrap_or_else(|| panic!("{name} metrics"));
        assert_eq!(m.get("onehop_dns_enum_numbers"), Some(&1), "{name}: {m:?}");
        assert_eq!(m.get("onehop_dns_enum_listed"), Some(&1), "{name}");
        let answered: i64 = m
            .iter()
            .filter(|(k, _)| k.starts_with("onehop_dns_enum_queries_total"))
            .map(|(_, v)| *v)
            .sum();
        assert!(answered > 0, "{name}: {m:?}");
        println!(
            "{name}: dns_enum_version {:?}, ENUM queries answered {answered}",
            m.get("onehop_dns_enum_version")
        );
    }
}
