//! The DNS server's answer path: one raw request, as it came off the wire, answered from a
//! zone built from a network status, with routed numbers under the ENUM suffix.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use hickory_proto::op::{Message, MessageType};
use onehop_dns::{
    answer_bytes, AnswerOptions, EnumFollower, EnumTable, Transport, Zone, ZoneConfig,
};
use onehop_overlay::provision::{EnumEntry, EnumUpdate};
use onehop_overlay::status::{Endpoint, Kind, Member, NetworkStatus, Role};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// The domain served.
pub const DOMAIN: &str = "example.test";

fn member(name: &str, kind: Kind, roles: &[&str], ip: &str, endpoints: &[(&str, u16)]) -> Member {
    let ip: IpAddr = ip.parse().expect("an address");
    Member {
        name: name.into(),
        kind,
        roles: roles
            .iter()
            .map(|r| Role::new(r).expect("a role"))
            .collect(),
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

/// Routed numbers: a block's worth, one with a URI that needs escaping, a short one that is
/// also the prefix of others.
fn numbers() -> Arc<EnumTable> {
    let mut entries: Vec<EnumEntry> = (0..20)
        .map(|i| EnumEntry {
            number: format!("+121255512{i:02}"),
            uri: Some(format!("sip:+121255512{i:02}@carrier.example")),
        })
        .collect();
    entries.push(EnumEntry {
        number: "+4930123456".into(),
        uri: Some(r"sip:odd!user\x@example.test".into()),
    });
    entries.push(EnumEntry {
        number: "+1212".into(),
        uri: Some("sip:short@example.test".into()),
    });
    let table = Arc::new(EnumTable::new());
    EnumFollower::new()
        .apply(
            EnumUpdate {
                version: 9,
                reset: true,
                entries,
                next: None,
            },
            &table,
        )
        .expect("a listing");
    table
}

/// A farm: a DNS server, two event servers, a manager, twelve proxies (one on IPv6), a
/// registrar-only node; a provisioned domain; routed numbers under `e164.arpa`.
fn zone() -> &'static Zone {
    static ZONE: OnceLock<Zone> = OnceLock::new();
    ZONE.get_or_init(|| {
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
                &[("eventserver", 8000)],
            ),
            member("mgr1", Kind::Manager, &[], "10.0.0.10", &[("raft", 8001)]),
            member(
                "reg1",
                Kind::Node,
                &["registrar"],
                "10.0.2.1",
                &[("lookup", 9500)],
            ),
            member(
                "node6",
                Kind::Node,
                &["sip_proxy"],
                "fd00::6",
                &[("sip", 5060)],
            ),
        ];
        for i in 1..=11 {
            members.push(member(
                &format!("node{i:03}"),
                Kind::Node,
                &["sip_proxy", "registrar", "media_relay"],
                &format!("10.1.0.{i}"),
                &[("sip", 5060), ("sips", 5061), ("lookup", 9500)],
            ));
        }
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let status = NetworkStatus {
            term: 3,
            version: 7,
            manager: "mgr1".into(),
            members: members.into_iter().map(std::sync::Arc::new).collect(),
        };
        let cfg = ZoneConfig::new(DOMAIN).expect("a domain");
        let other = hickory_proto::rr::Name::from_ascii("other.test.").expect("a name");
        Zone::build(&status, &cfg, &[other]).with_numbers(numbers())
    })
}

/// [`answer_bytes`] on a raw request; the first input byte picks UDP or TCP (bit 0) and
/// whether a zone is held yet (bit 1), the rest is the request.
///
/// Properties: fewer bytes than a header, or a response, get no answer; every answer decodes
/// as a DNS response with the request's ID; over UDP it fits 512 bytes without EDNS and never
/// exceeds our payload size; over TCP it fits a 16-bit length.
pub fn dns_answer(data: &[u8]) {
    let Some((&sel, raw)) = data.split_first() else {
        return;
    };
    let transport = if sel & 1 == 0 {
        Transport::Udp
    } else {
        Transport::Tcp
    };
    let zone = (sel & 2 == 0).then(zone);
    let opts = AnswerOptions::default();
    let mut rng = StdRng::seed_from_u64(u64::from(sel));
    let out = answer_bytes(zone, raw, transport, &opts, &mut rng);
    let Some(out) = out else {
        return;
    };
    assert!(raw.len() >= 12, "an answer to {} bytes", raw.len());
    assert_eq!(raw[2] & 0x80, 0, "an answer to a response");
    let limit = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => match Message::from_vec(raw) {
            Ok(req) if req.edns.is_none() => 512,
            _ => usize::from(opts.max_udp_payload),
        },
    };
    assert!(
        out.bytes.len() <= limit,
        "{} bytes over {transport:?} (limit {limit})",
        out.bytes.len()
    );
    let resp =
        Message::from_vec(&out.bytes).unwrap_or_else(|e| panic!("our answer does not decode: {e}"));
    assert_eq!(resp.metadata.message_type, MessageType::Response);
    assert_eq!(resp.metadata.id, u16::from_be_bytes([raw[0], raw[1]]));
    assert!(!resp.metadata.recursion_available);
}
