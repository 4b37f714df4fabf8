//! Balance of the ring as the contract defines it (members `node1..nodeN`, 1000 points each):
//! how evenly the keyspace is shared, and how many keys move when a member joins.
//!
//! Run in release: `cargo test -p onehop-overlay --test ring_balance --release -- --nocapture`
//! to see the figures.

use std::net::{IpAddr, Ipv4Addr};

use onehop_overlay::ring::{lookup_key, position, Ring, DEFAULT_POINTS};

/// The largest share over the mean that the design accepts.
const MAX_OVER_MEAN: f64 = 1.10;

fn ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8))
}

/// The ring of members `node1..=nodeN`.
fn ring(n: usize) -> Ring {
    ring_with(n, DEFAULT_POINTS)
}

/// The ring of members `node1..=nodeN` with `v` points each.
fn ring_with(n: usize, v: u32) -> Ring {
    Ring::new("registrar", (1..=n).map(|i| (format!("node{i}"), ip(i))), v)
}

/// (largest share / mean, smallest share / mean, name of the largest).
fn spread(ring: &Ring) -> (f64, f64, String) {
    let shares = ring.shares();
    let mean = 1.0 / shares.len() as f64;
    let sum: f64 = shares.iter().map(|s| s.1).sum();
    assert!((sum - 1.0).abs() < 1e-9, "shares sum to {sum}");
    let max = shares.iter().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
    let min = shares.iter().map(|s| s.1).fold(f64::INFINITY, f64::min);
    (max.1 / mean, min / mean, max.0.clone())
}

#[test]
fn keyspace_shares_are_balanced() {
    // Each member's share is a sum of V arcs, so its relative spread is about 1/sqrt(V); the
    // largest of N shares sits near 1 + 3.2/sqrt(V) at N = 1000. With the design's default
    // V = 1000 that is right at the 1.10 bound: N = 1000 gives 1.1042 with these names
    // (confirmed by an independent xxh3 implementation). The bound is asserted as the issue
    // asks for N = 3, 10 and 100 at V = 1000; at N = 1000 it holds from V = 2000 (the `points`
    // setting), and the V = 1000 figure is asserted against the statistical expectation so a
    // change in hashing or placement still fails here.
    let mut failures = Vec::new();
    for (n, v, bound) in [
        (3, DEFAULT_POINTS, MAX_OVER_MEAN),
        (10, DEFAULT_POINTS, MAX_OVER_MEAN),
        (100, DEFAULT_POINTS, MAX_OVER_MEAN),
        (
            1000,
            DEFAULT_POINTS,
            1.0 + 4.0 / (DEFAULT_POINTS as f64).sqrt(),
        ),
        (1000, 2 * DEFAULT_POINTS, MAX_OVER_MEAN),
    ] {
        let ring = ring_with(n, v);
        assert_eq!(ring.len(), n);
        let (max, min, who) = spread(&ring);
        println!(
            "N = {n:4}, V = {v}: largest share / mean = {max:.4} ({who}), \
             smallest share / mean = {min:.4} (asserted largest <= {bound:.3})"
        );
        if max > bound {
            failures.push(format!(
                "N = {n}, V = {v}: largest share / mean = {max:.4} ({who}) > {bound:.3}"
            ));
        }
    }
    assert!(failures.is_empty(), "balance bound exceeded: {failures:?}");
}

/// A deterministic stream of 64-bit numbers (SplitMix64).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[test]
fn joining_moves_about_one_over_n_plus_one_keys_to_the_newcomer() {
    const KEYS: usize = 100_000;
    let mut rng = SplitMix(0x6f6e_6568_6f70);
    // Keys as the lookup interface sees them: AORs and Call-IDs.
    let positions: Vec<u64> = (0..KEYS)
        .map(|i| {
            let key = if i % 2 == 0 {
                format!("sip:user{:x}@example.test", rng.next())
            } else {
                format!("{:016x}@host{}.example.test", rng.next(), i % 7)
            };
            position(&lookup_key(&key))
        })
        .collect();
    for n in [10, 100] {
        let before = ring(n);
        let newcomer = format!("node{}", n + 1);
        let after = ring(n + 1);
        let mut moved = 0usize;
        for &pos in &positions {
            let (o0, o1) = (before.owner_at(pos).unwrap(), after.owner_at(pos).unwrap());
            if o0.name != o1.name {
                assert_eq!(
                    o1.name, newcomer,
                    "a key at {pos:016x} moved from {} to {} rather than to the newcomer",
                    o0.name, o1.name
                );
                moved += 1;
            }
        }
        let fraction = moved as f64 / KEYS as f64;
        let ideal = 1.0 / (n + 1) as f64;
        let share = after
            .shares()
            .into_iter()
            .find(|s| s.0 == newcomer)
            .unwrap()
            .1;
        println!(
            "join N = {n} -> {}: {moved} of {KEYS} keys moved = {fraction:.4} \
             (1/(N+1) = {ideal:.4}, ratio {:.3}; newcomer's keyspace share {share:.4})",
            n + 1,
            fraction / ideal
        );
        assert!(
            (0.5 * ideal..=1.5 * ideal).contains(&fraction),
            "N = {n}: moved fraction {fraction:.4} not within 0.5..1.5 x {ideal:.4}"
        );
    }
}
