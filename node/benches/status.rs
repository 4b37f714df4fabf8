//! The network status at 1,000 members: its size on the wire, decoding it, and applying it
//! (rebuilding every role's ring, 1,000 points per member); and a one-member change as the
//! active manager publishes it (a delta): its size, following it, and changing the rings in
//! place.
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
        .map(std::sync::Arc::new)
        .collect::<Vec<_>>();
    // Sorted by name, as the active manager publishes them.
    let mut members = members;
    members.sort_by(|a, b| a.name.cmp(&b.name));
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

    // One member joins: node1000 is not in `base` (999 members) and is in `after`.
    let after = status(1000, 3);
    let mut base = status(1000, 2);
    base.members.retain(|m| m.name != "node1000");
    let delta = base.delta_to(&after).unwrap();
    let delta_frame = encode_frame(&ServerMsg::Event(Event {
        origin: "manager1".into(),
        origin_kind: Kind::Manager,
        seq: 2,
        payload: Payload::NetworkDelta(delta.clone()),
    }));
    let beat_frame = encode_frame(&ServerMsg::Event(Event {
        origin: "manager1".into(),
        origin_kind: Kind::Manager,
        seq: 3,
        payload: Payload::NetworkBeat(onehop_overlay::status::StatusBeat {
            term: after.term,
            version: after.version,
            manager: after.manager.clone(),
            members: after.members.len() as u32,
            digest: after.digest(),
        }),
    }));
    println!(
        "one member joining at 1,000 members: the delta is {} bytes on the wire, a heartbeat {} bytes",
        delta_frame.len(),
        beat_frame.len()
    );
    g.bench_function("decode a one-member delta frame", |b| {
        b.iter(|| black_box(decode_body::<ServerMsg>(black_box(&delta_frame[4..])).unwrap()))
    });
    let base_digest = base.digest();
    g.bench_function(
        "follow a one-member delta (apply it to the status, check the digest)",
        |b| {
            b.iter(|| {
                let mut s = base.clone();
                let mut d = base_digest;
                s.apply_delta(black_box(&delta), &mut d).unwrap();
                black_box(s)
            })
        },
    );
    let held = empty.apply(base.clone(), 1000).unwrap();
    let shared = std::sync::Arc::new(after.clone());
    g.bench_function(
        "apply a one-member change: 3 rings of 1000x1000 points changed in place",
        |b| b.iter(|| black_box(held.apply_shared(black_box(shared.clone()), 1000).unwrap())),
    );
    let mut followed = base.clone();
    let mut digest = base_digest;
    g.bench_function(
        "a one-member change whole: follow the delta, then change the rings in place",
        |b| {
            b.iter(|| {
                followed.clone_from(&base);
                digest = base_digest;
                followed
                    .apply_delta(black_box(&delta), &mut digest)
                    .unwrap();
                let s = std::sync::Arc::new(followed.clone());
                black_box(held.apply_shared(s, 1000).unwrap())
            })
        },
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
