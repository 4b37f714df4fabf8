//! The network status at 1,000 members: its size on the wire, decoding it, and applying it
//! (rebuilding every role's ring, 1,000 points per member).
//!
//! `cargo bench -p onehop-node --bench status`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use onehop_node::view::View;
use onehop_overlay::status::{Endpoint, Kind, Member, NetworkStatus, Role};
use onehop_overlay::wire::{decode_body, encode_frame, Event, Payload, ServerMsg};

fn status(n: usize, version: u64) -> NetworkStatus {
    let roles: Vec<Role> = Role::BUILT_IN
        .iter()
        .map(|r| Role::new(r).unwrap())
        .collect();
    let members = (1..=n)
        .map(|i| {
            let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8));
            Member {
                name: format!("node{i}"),
                kind: Kind::Node,
                roles: roles.clone(),
                endpoints: vec![
                    Endpoint {
                        service: "lookup".into(),
                        addr: (ip, 9500).into(),
                    },
                    Endpoint {
                        service: "sip".into(),
                        addr: (ip, 5060).into(),
                    },
                    Endpoint {
                        service: "metrics".into(),
                        addr: (ip, 9100).into(),
                    },
                ],
                since: 1_795_000_000_000 + i as u64,
                ip,
            }
        })
        .collect();
    NetworkStatus {
        term: 7,
        version,
        manager: "manager1".into(),
        members,
    }
}

fn bench(c: &mut Criterion) {
    let s = status(1000, 1);
    let frame = encode_frame(&ServerMsg::Event(Event {
        origin: "manager1".into(),
        origin_kind: Kind::Manager,
        seq: 1,
        payload: Payload::Network(s.clone()),
    }));
    let json = serde_json::to_vec(&s).unwrap();
    println!(
        "network status, 1000 members x 3 roles x 3 endpoints: {} bytes on the wire (bincode frame), {} bytes as JSON",
        frame.len(),
        json.len()
    );
    let mut g = c.benchmark_group("status_1000_members");
    g.measurement_time(Duration::from_secs(5)).sample_size(20);
    g.bench_function("decode frame", |b| {
        b.iter(|| black_box(decode_body::<ServerMsg>(black_box(&frame[4..])).unwrap()))
    });
    let empty = View::default();
    g.bench_function("apply (rebuild 3 rings of 1000x1000 points)", |b| {
        b.iter(|| black_box(empty.apply(black_box(s.clone()), 1000).unwrap()))
    });
    let held = empty.apply(s.clone(), 1000).unwrap();
    let same_members = status(1000, 2);
    g.bench_function(
        "apply a newer version with the same members (no rebuild)",
        |b| b.iter(|| black_box(held.apply(black_box(same_members.clone()), 1000).unwrap())),
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
