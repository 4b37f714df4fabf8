//! Nanoseconds per answer: one query answered from a zone like the benchmark farm's (1 DNS
//! member, 2 event servers, 5 proxies, so SRV answers are slices of K=4 of 5), by the
//! pre-encoded fast path, by the handler the sockets call (fast path and metrics), and by the
//! slow path (hickory's parser and encoder) for comparison; and by the handler with the answer
//! timed into `dns_answer_seconds` per query, to show what the timing costs.
//!
//! Also the time to build a zone, pre-encoded answers included, at 5 and 1,000 proxies.
//!
//! `cargo bench -p onehop-dns --bench answer`

#[path = "../tests/common/mod.rs"]
mod common;

use common::query;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hickory_proto::rr::RecordType;
use onehop_dns::{
    answer_bytes_slow, answer_fast, AnswerOptions, DnsHandler, Transport, Zone, ZoneConfig,
};
use onehop_overlay::metrics::Metrics;
use rand::rngs::StdRng;
use rand::SeedableRng;

fn zone() -> Zone {
    Zone::from_status(
        &common::status(1, 1, 5, false),
        &ZoneConfig::new("example.test").unwrap(),
    )
}

fn bench(c: &mut Criterion) {
    let zone = zone();
    let opts = AnswerOptions::default();
    let handler = DnsHandler::new(
        ZoneConfig::new("example.test").unwrap(),
        opts,
        &Metrics::default(),
    );
    handler.set_zone(zone.clone());
    let queries = [
        ("A", query("node003.example.test.", RecordType::A, None)),
        ("SOA", query("example.test.", RecordType::SOA, None)),
        (
            "SRV 4 of 5",
            query("_sip._udp.example.test.", RecordType::SRV, None),
        ),
        (
            "NAPTR+EDNS",
            query("example.test.", RecordType::NAPTR, Some(1232)),
        ),
        (
            "NXDOMAIN",
            query("nothere.example.test.", RecordType::A, None),
        ),
    ];
    let mut rng = StdRng::seed_from_u64(7);
    let mut g = c.benchmark_group("answer");
    for (label, q) in &queries {
        assert!(
            answer_fast(Some(&zone), q, Transport::Udp, &opts, &mut rng).is_some(),
            "{label} is answered by the fast path"
        );
        g.bench_with_input(BenchmarkId::new("fast", label), q, |b, q| {
            b.iter(|| answer_fast(Some(&zone), q, Transport::Udp, &opts, &mut rng))
        });
        let mut out = Vec::with_capacity(1232);
        g.bench_with_input(BenchmarkId::new("handler", label), q, |b, q| {
            b.iter(|| handler.respond_into(q, Transport::Udp, &mut out))
        });
        // The handler with the answer timed per query (one clock read and one histogram
        // observation each): the most the timing can cost, as the UDP loop reads the clock
        // once per batch of datagrams.
        g.bench_with_input(BenchmarkId::new("handler+timed", label), q, |b, q| {
            b.iter(|| {
                let t = std::time::Instant::now();
                let sent = handler.respond_into(q, Transport::Udp, &mut out);
                handler.answer_time().observe(t.elapsed());
                sent
            })
        });
        g.bench_with_input(BenchmarkId::new("slow", label), q, |b, q| {
            b.iter(|| answer_bytes_slow(Some(&zone), q, Transport::Udp, &opts, &mut rng))
        });
    }
    g.finish();
}

/// Building a zone (with its pre-encoded answers) from a status of `proxies` proxies.
fn build(c: &mut Criterion) {
    let cfg = ZoneConfig::new("example.test").unwrap();
    let mut g = c.benchmark_group("zone_build");
    g.sample_size(20);
    for proxies in [5, 1000] {
        let status = common::status(1, 1, proxies, false);
        let z = Zone::from_status(&status, &cfg);
        eprintln!(
            "{proxies} proxies: {} names pre-encoded in about {} bytes",
            z.fast().names(),
            z.fast().bytes()
        );
        g.bench_with_input(BenchmarkId::new("proxies", proxies), &status, |b, s| {
            b.iter(|| Zone::from_status(s, &cfg))
        });
    }
    g.finish();
}

criterion_group!(benches, bench, build);
criterion_main!(benches);
