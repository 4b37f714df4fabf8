//! Ring benchmarks: lookups per second on a ring of 1,000 members x 1,000 points, and the cost
//! of building rings.
//!
//! `cargo bench -p onehop-overlay --bench ring`; lookup groups report elements (lookups) per
//! second. `lookup_1000x1000` repeats 1,024 keys, so the points they hit stay in cache;
//! `lookup_1000x1000_cold` spreads 256 Ki keys over the whole ring.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use onehop_overlay::ring::{lookup_key, position, Ring, Rings, DEFAULT_POINTS};
use onehop_overlay::status::{Kind, Member, NetworkStatus, Role};

const MEMBERS: usize = 1000;
/// Lookups per benchmark iteration.
const BATCH: usize = 1024;
/// Lookups per iteration of the cold-cache benchmark.
const COLD_BATCH: usize = 1 << 18;

fn ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8))
}

fn members(n: usize) -> Vec<(String, IpAddr)> {
    (1..=n).map(|i| (format!("node{i}"), ip(i))).collect()
}

/// A deterministic stream of 64-bit numbers (SplitMix64).
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn status(n: usize) -> NetworkStatus {
    let roles: Vec<Role> = Role::BUILT_IN
        .iter()
        .map(|r| Role::new(r).unwrap())
        .collect();
    NetworkStatus {
        term: 1,
        version: 1,
        manager: "manager1".into(),
        members: (1..=n)
            .map(|i| Member {
                name: format!("node{i}"),
                kind: Kind::Node,
                roles: roles.clone(),
                endpoints: Vec::new(),
                since: 0,
                ip: ip(i),
            })
            .map(std::sync::Arc::new)
            .collect(),
    }
}

fn lookups(c: &mut Criterion) {
    let ring = Ring::new("registrar", members(MEMBERS), DEFAULT_POINTS);
    let mut state = 42;
    let positions: Vec<u64> = (0..BATCH).map(|_| splitmix(&mut state)).collect();
    let aors: Vec<String> = (0..BATCH)
        .map(|_| {
            format!(
                "sip:user{}@Example.test:5060;transport=udp",
                splitmix(&mut state) % 10_000_000
            )
        })
        .collect();
    let canonical: Vec<String> = aors.iter().map(|a| lookup_key(a).into_owned()).collect();

    let mut g = c.benchmark_group("lookup_1000x1000");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("owner_at(pre-hashed position)", |b| {
        b.iter(|| {
            let mut acc = 0usize;
            for &pos in black_box(&positions) {
                acc += ring.owner_at(pos).unwrap().name.len();
            }
            acc
        })
    });
    g.finish();

    // The same with 256 Ki distinct positions per batch: they touch far more of the 12 MB of
    // points than the caches hold, as a busy lookup server would.
    let many: Vec<u64> = (0..COLD_BATCH).map(|_| splitmix(&mut state)).collect();
    let mut g = c.benchmark_group("lookup_1000x1000_cold");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(COLD_BATCH as u64));
    g.bench_function("owner_at(pre-hashed position)", |b| {
        b.iter(|| {
            let mut acc = 0usize;
            for &pos in black_box(&many) {
                acc += ring.owner_at(pos).unwrap().name.len();
            }
            acc
        })
    });
    g.finish();

    let mut g = c.benchmark_group("lookup_1000x1000");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("replicas_at(position, 3)", |b| {
        b.iter(|| {
            let mut acc = 0usize;
            for &pos in black_box(&positions) {
                acc += ring
                    .replicas_at(pos, 3)
                    .map(|m| m.name.len())
                    .sum::<usize>();
            }
            acc
        })
    });
    g.bench_function("owner(canonical AOR, hashing included)", |b| {
        b.iter(|| {
            let mut acc = 0usize;
            for key in black_box(&canonical) {
                acc += ring.owner(key).unwrap().name.len();
            }
            acc
        })
    });
    g.bench_function("lookup_key + position + owner_at(sip: URI)", |b| {
        b.iter(|| {
            let mut acc = 0usize;
            for key in black_box(&aors) {
                let pos = position(&lookup_key(key));
                acc += ring.owner_at(pos).unwrap().name.len();
            }
            acc
        })
    });
    g.finish();
}

fn builds(c: &mut Criterion) {
    let mut g = c.benchmark_group("build");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(10);
    let list = members(MEMBERS);
    g.bench_function("Ring::new 1000 members x 1000 points", |b| {
        b.iter_batched(
            || list.clone(),
            |m| Ring::new("registrar", m, DEFAULT_POINTS),
            BatchSize::LargeInput,
        )
    });
    let st = status(MEMBERS);
    g.bench_function("Rings::from_status 1000 members x 3 roles", |b| {
        b.iter(|| Rings::from_status(black_box(&st), DEFAULT_POINTS))
    });
    g.finish();
}

criterion_group!(benches, lookups, builds);
criterion_main!(benches);
