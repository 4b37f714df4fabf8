//! Shared test helpers: statuses, queries, decoding.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use onehop_overlay::status::{Endpoint, Kind, Member, NetworkStatus, Role};

pub const DOMAIN: &str = "example.test";

pub fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

pub fn member(
    name: &str,
    kind: Kind,
    roles: &[&str],
    ip: &str,
    endpoints: &[(&str, u16)],
) -> Member {
    let ip: IpAddr = ip.parse().unwrap();
    Member {
        name: name.into(),
        kind,
        roles: roles.iter().map(|r| Role::new(r).unwrap()).collect(),
        endpoints: endpoints
            .iter()
            .map(|(s, p)| Endpoint {
                service: (*s).into(),
                addr: SocketAddr::new(ip, *p),
            })
            .collect(),
        since: 1,
        ip,
    }
}

/// A status with one DNS server, two event servers, `proxies` sip_proxy nodes
/// (`node001`..), a registrar-only node and an IPv6 proxy when `v6`.
pub fn status(term: u64, version: u64, proxies: usize, v6: bool) -> NetworkStatus {
    let mut members = vec![
        member("dns1", Kind::Dns, &[], "10.0.0.53", &[("dns", 53)]),
        member(
            "es1",
            Kind::Eventserver,
            &[],
            "10.0.0.1",
            &[("eventserver", 8000)],
        ),
        member(
            "es2",
            Kind::Eventserver,
            &[],
            "10.0.0.2",
            &[("eventserver", 8001)],
        ),
        member("mgr1", Kind::Manager, &[], "10.0.0.10", &[("raft", 7000)]),
        member(
            "reg1",
            Kind::Node,
            &["registrar"],
            "10.0.2.1",
            &[("lookup", 9500)],
        ),
    ];
    for i in 1..=proxies {
        let ip = format!("10.1.{}.{}", i / 250, i % 250 + 1);
        let port = if i == 1 { 5070 } else { 5060 };
        members.push(member(
            &format!("node{i:03}"),
            Kind::Node,
            &["sip_proxy", "registrar"],
            &ip,
            &[("sip", port), ("lookup", 9500)],
        ));
    }
    if v6 {
        members.push(member(
            "node6",
            Kind::Node,
            &["sip_proxy"],
            "fd00::6",
            &[("sip", 5060)],
        ));
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    NetworkStatus {
        term,
        version,
        manager: "mgr1".into(),
        members: members.into_iter().map(std::sync::Arc::new).collect(),
    }
}

/// A query for `qname`/`qtype`, with EDNS when `edns` gives a payload size.
pub fn query_msg(qname: &str, qtype: RecordType, edns: Option<u16>) -> Message {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name(qname), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m
}

pub fn query(qname: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    query_msg(qname, qtype, edns).to_vec().unwrap()
}

pub fn decode(bytes: &[u8]) -> Message {
    Message::from_vec(bytes).expect("response decodes")
}

pub fn srv_targets(records: &[Record]) -> Vec<(String, u16)> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.target.to_string(), s.port)),
            _ => None,
        })
        .collect()
}

pub fn of_type(records: &[Record], t: RecordType) -> Vec<&Record> {
    records.iter().filter(|r| r.record_type() == t).collect()
}
