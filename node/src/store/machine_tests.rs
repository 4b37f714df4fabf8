//! Unit tests of the store's state machine: assertions on the actions it emits, and a small
//! in-memory network of machines (every batch delivered at once, in order).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

use onehop_overlay::status::{Kind, Member, NetworkStatus, Role};

use super::*;

const ROLE: &str = "registrar";
const NOW: u64 = 1_700_000_000_000;
const HOUR: u64 = 3_600_000;

fn rings(names: &[&str]) -> Rings {
    let members = names
        .iter()
        .enumerate()
        .map(|(i, n)| Member {
            name: n.to_string(),
            kind: Kind::Node,
            roles: vec![Role::new(ROLE).unwrap()],
            endpoints: vec![],
            since: 0,
            ip: IpAddr::from([127, 0, 0, i as u8 + 1]),
        })
        .map(std::sync::Arc::new)
        .collect();
    let status = NetworkStatus {
        term: 1,
        version: 1,
        manager: "m1".into(),
        members,
    };
    Rings::from_status(&status, 100)
}

fn key(i: usize) -> StoreKey {
    StoreKey::new(ROLE, format!("user{i}@example.test"))
}

fn value(stamp: u64, v: &str) -> Entry {
    Entry {
        value: Some(Bytes::from(v.to_string())),
        expires_at_ms: NOW + HOUR,
        version: Version { stamp, origin: 0 },
    }
}

fn set(r: &Rings, k: &StoreKey) -> Vec<String> {
    names(r.get(ROLE), k.position(), 2)
        .into_iter()
        .map(str::to_string)
        .collect()
}

fn cfg() -> MachineConfig {
    MachineConfig {
        batch_entries: 64,
        ..MachineConfig::default()
    }
}

/// A machine for `me` on ring `r` holding the keys `0..n` it should hold under `r`.
fn loaded(me: &str, r: &Rings, n: usize, cfg: MachineConfig) -> Machine {
    let mut m = Machine::new(me, cfg);
    let actions = m.handle(Input::Rings(r.clone()), NOW);
    assert!(
        actions.iter().all(|a| !matches!(a, Action::Send(_))),
        "{actions:?}"
    );
    for i in 0..n {
        let k = key(i);
        if set(r, &k).iter().any(|s| s == me) {
            m.merge(k, value(NOW, "v"));
        }
    }
    m
}

fn sends(actions: &[Action]) -> Vec<&Batch> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(b) => Some(b),
            _ => None,
        })
        .collect()
}

fn dropped(actions: &[Action]) -> usize {
    actions
        .iter()
        .map(|a| match a {
            Action::Dropped { keys } => *keys,
            _ => 0,
        })
        .sum()
}

/// Acknowledges every batch of one machine (as if every peer held everything), until it has
/// nothing left to send. Returns every push with its recipient, and the keys dropped.
fn drain(m: &mut Machine, mut actions: Vec<Action>) -> (Vec<(String, Push)>, usize) {
    let mut pushed = Vec::new();
    let mut drops = dropped(&actions);
    loop {
        let batches: Vec<Batch> = sends(&actions).into_iter().cloned().collect();
        if batches.is_empty() {
            return (pushed, drops);
        }
        actions = Vec::new();
        for b in batches {
            for p in &b.pushes {
                pushed.push((b.peer.clone(), p.clone()));
            }
            let more = m.handle(
                Input::Acked {
                    peer: b.peer.clone(),
                    batch: b.id,
                    missing: vec![],
                },
                NOW,
            );
            drops += dropped(&more);
            actions.extend(more);
        }
    }
}

/// Machines on an in-memory network: batches are delivered at once, in order.
struct Sim {
    nodes: BTreeMap<String, Machine>,
    queue: VecDeque<(String, Action)>,
    /// Full pushes delivered, per recipient.
    full: BTreeMap<String, usize>,
}

impl Sim {
    fn new(names: &[&str], r: &Rings, n: usize) -> Sim {
        Sim::with(names, r, n, cfg())
    }

    fn with(names: &[&str], r: &Rings, n: usize, cfg: MachineConfig) -> Sim {
        Sim {
            nodes: names
                .iter()
                .map(|m| (m.to_string(), loaded(m, r, n, cfg.clone())))
                .collect(),
            queue: VecDeque::new(),
            full: BTreeMap::new(),
        }
    }

    fn rings(&mut self, r: &Rings) {
        for (name, m) in self.nodes.iter_mut() {
            for a in m.handle(Input::Rings(r.clone()), NOW) {
                self.queue.push_back((name.clone(), a));
            }
        }
    }

    /// Delivers one queued action; false when nothing is queued.
    fn step(&mut self) -> bool {
        let Some((from, action)) = self.queue.pop_front() else {
            return false;
        };
        let Action::Send(b) = action else {
            return true;
        };
        let answer = match self.nodes.get_mut(&b.peer) {
            Some(to) => {
                *self.full.entry(b.peer.clone()).or_default() += b
                    .pushes
                    .iter()
                    .filter(|p| matches!(p, Push::Full(_)))
                    .count();
                let (missing, acts) = to.receive(&from, b.pushes, NOW).expect("room");
                for a in acts {
                    self.queue.push_back((b.peer.clone(), a));
                }
                Input::Acked {
                    peer: b.peer.clone(),
                    batch: b.id,
                    missing,
                }
            }
            None => Input::Failed {
                peer: b.peer.clone(),
                batch: b.id,
            },
        };
        let acts = self.nodes.get_mut(&from).unwrap().handle(answer, NOW);
        for a in acts {
            self.queue.push_back((from.clone(), a));
        }
        true
    }

    /// Time passes at `name`: what it does then, not yet delivered.
    fn tick(&mut self, name: &str, at: u64) -> Vec<Action> {
        self.nodes.get_mut(name).unwrap().handle(Input::Tick, at)
    }

    /// Delivers everything and lets every walk end.
    fn run(&mut self) {
        let mut steps = 0;
        loop {
            while self.step() {
                steps += 1;
                assert!(steps < 1_000_000, "no quiescence");
            }
            if !self.scan() {
                return;
            }
        }
    }

    /// One chunk of the walk at every node with one under way; false when none is.
    fn scan(&mut self) -> bool {
        let mut any = false;
        for (name, m) in self.nodes.iter_mut() {
            if m.scanning() {
                any = true;
                for a in m.handle(Input::Scan, NOW) {
                    self.queue.push_back((name.clone(), a));
                }
            }
        }
        any
    }

    fn holders(&self, k: &StoreKey) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, m)| m.read(k, NOW).is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Every key `0..n` is held by exactly its replica set under `r`.
    fn assert_placed(&self, r: &Rings, n: usize) {
        for i in 0..n {
            let k = key(i);
            let mut want = set(r, &k);
            want.sort();
            assert_eq!(self.holders(&k), want, "{k}");
        }
    }
}

#[test]
fn unchanged_members_send_nothing() {
    let r = rings(&["a", "b", "c"]);
    let mut m = loaded("a", &r, 500, cfg());
    assert!(m
        .handle(Input::Rings(rings(&["c", "b", "a"])), NOW)
        .is_empty());
    assert!(m.handle(Input::Tick, NOW).is_empty());
}

#[test]
fn join_moves_keys_to_the_newcomer_and_nowhere_else() {
    let old = rings(&["a", "b", "c"]);
    let new = rings(&["a", "b", "c", "d"]);
    let n = 3000;
    let mut m = loaded("a", &old, n, cfg());
    let actions = m.handle(Input::Rings(new.clone()), NOW);
    assert_eq!(m.epoch(), 2);
    let (pushed, drops) = drain(&mut m, actions);

    let held: Vec<StoreKey> = (0..n)
        .map(key)
        .filter(|k| set(&old, k).contains(&"a".to_string()))
        .collect();
    let mut full_to_d = BTreeSet::new();
    for (peer, push) in &pushed {
        match push {
            Push::Full(item) => {
                assert_eq!(peer, "d", "a full copy went to {peer}");
                full_to_d.insert(item.key.clone());
            }
            Push::Check { key, .. } => {
                // Only asked of members that held the key already, for a key a hands over.
                assert!(set(&old, key).contains(peer), "{key} checked at {peer}");
                assert!(!set(&new, key).contains(&"a".to_string()));
            }
        }
    }
    let want: BTreeSet<StoreKey> = held
        .iter()
        .filter(|k| set(&new, k).contains(&"d".to_string()))
        .cloned()
        .collect();
    assert!(!want.is_empty());
    assert_eq!(full_to_d, want);
    // a keeps exactly what it still should hold.
    let kept: Vec<&StoreKey> = held
        .iter()
        .filter(|k| set(&new, k).contains(&"a".to_string()))
        .collect();
    assert_eq!(drops, held.len() - kept.len());
    assert!(drops > 0);
    for k in &held {
        assert_eq!(
            m.read(k, NOW).is_some(),
            set(&new, k).contains(&"a".to_string())
        );
    }
}

#[test]
fn join_places_every_key_on_its_new_replica_set() {
    let old = rings(&["a", "b", "c"]);
    let new = rings(&["a", "b", "c", "d"]);
    let n = 3000;
    let mut sim = Sim::new(&["a", "b", "c"], &old, n);
    sim.assert_placed(&old, n);
    sim.nodes.insert("d".into(), Machine::new("d", cfg()));
    sim.rings(&new);
    sim.run();
    sim.assert_placed(&new, n);
    // Full copies only went to the newcomer.
    let got: Vec<&String> = sim
        .full
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, _)| k)
        .collect();
    assert_eq!(got, vec!["d"]);
}

#[test]
fn crash_restores_lost_replicas_on_the_next_member() {
    let old = rings(&["a", "b", "c", "d"]);
    let new = rings(&["a", "b", "d"]);
    let n = 3000;
    let mut m = loaded("a", &old, n, cfg());
    let actions = m.handle(Input::Rings(new.clone()), NOW);
    let (pushed, drops) = drain(&mut m, actions);
    assert_eq!(drops, 0, "a member that stays drops nothing on a crash");
    let mut got: BTreeMap<String, BTreeSet<StoreKey>> = BTreeMap::new();
    for (peer, push) in pushed {
        let Push::Full(item) = push else {
            panic!("no checks when nothing is handed over")
        };
        assert_ne!(peer, "c");
        got.entry(peer).or_default().insert(item.key);
    }
    // Every key a held with c among its replicas now has a new replica, and got it from a.
    let mut restored = 0;
    for k in (0..n).map(key) {
        let before = set(&old, &k);
        if !before.contains(&"a".to_string()) || !before.contains(&"c".to_string()) {
            continue;
        }
        for member in set(&new, &k).into_iter().filter(|m| !before.contains(m)) {
            assert!(got[&member].contains(&k), "{k} not restored on {member}");
            restored += 1;
        }
    }
    assert!(restored > 0);

    // And over the whole network: every key back on two members.
    let mut sim = Sim::new(&["a", "b", "c", "d"], &old, n);
    sim.nodes.remove("c");
    sim.rings(&new);
    sim.run();
    sim.assert_placed(&new, n);
}

#[test]
fn rejoin_after_crash_moves_keys_back() {
    let full = rings(&["a", "b", "c", "d"]);
    let without = rings(&["a", "b", "d"]);
    let n = 2000;
    let mut sim = Sim::new(&["a", "b", "c", "d"], &full, n);
    sim.nodes.remove("c");
    sim.rings(&without);
    sim.run();
    sim.assert_placed(&without, n);
    sim.nodes.insert("c".into(), Machine::new("c", cfg()));
    sim.rings(&full);
    sim.run();
    sim.assert_placed(&full, n);
}

#[test]
fn tombstones_win_over_older_values() {
    let r = rings(&["a", "b"]);
    let mut m = loaded("a", &r, 0, cfg());
    let k = key(1);
    assert!(m.merge(k.clone(), value(10, "old")));
    let tomb = Entry {
        value: None,
        expires_at_ms: NOW + HOUR,
        version: Version {
            stamp: 11,
            origin: 0,
        },
    };
    assert!(m.merge(k.clone(), tomb.clone()));
    // A late transfer of the removed value (or an older one) changes nothing.
    assert!(!m.merge(k.clone(), value(10, "old")));
    assert!(!m.merge(k.clone(), value(9, "older")));
    let (missing, _) = m
        .receive(
            "b",
            vec![Push::Full(Item {
                key: k.clone(),
                entry: value(10, "old"),
            })],
            NOW,
        )
        .expect("room");
    assert!(missing.is_empty());
    assert_eq!(m.entry(&k), Some(&tomb));
    assert!(m.read(&k, NOW).is_none());
    // A newer value beats the tombstone.
    assert!(m.merge(k.clone(), value(12, "new")));
    assert_eq!(
        m.read(&k, NOW).and_then(|e| e.value.clone()),
        Some(Bytes::from("new"))
    );
}

#[test]
fn a_remove_outlives_the_value_it_removed() {
    let r = rings(&["a"]);
    let mut m = loaded("a", &r, 0, cfg());
    let k = key(7);
    let put = m
        .write(
            &k,
            Write::Put {
                value: Bytes::from("x"),
                ttl_ms: 10 * HOUR,
            },
            NOW,
        )
        .unwrap();
    let v1 = put.item.unwrap().entry;
    let removed = m.write(&k, Write::Remove, NOW).unwrap();
    assert_eq!(removed.outcome, Outcome::Removed);
    let tomb = removed.item.unwrap().entry;
    assert!(tomb.value.is_none());
    assert!(tomb.version > v1.version);
    assert!(tomb.expires_at_ms >= v1.expires_at_ms);
    assert!(!m.merge(k.clone(), v1));
}

#[test]
fn versions_grow_even_when_the_clock_does_not() {
    let r = rings(&["a"]);
    let mut m = loaded("a", &r, 0, cfg());
    let k = key(3);
    let mut last = Version::default();
    for (i, now) in [NOW, NOW, NOW - 5_000, NOW + 1].into_iter().enumerate() {
        let a = m
            .write(
                &k,
                Write::Put {
                    value: Bytes::from(format!("{i}")),
                    ttl_ms: HOUR,
                },
                now,
            )
            .unwrap();
        let v = a.item.unwrap().entry.version;
        assert!(v > last, "{v:?} after {last:?}");
        last = v;
    }
}

#[test]
fn put_or_get_keeps_the_live_value() {
    let r = rings(&["a"]);
    let mut m = loaded("a", &r, 0, cfg());
    let k = key(4);
    let put = |v: &str| Write::PutOrGet {
        value: Bytes::from(v.to_string()),
        ttl_ms: 1_000,
    };
    let first = m.write(&k, put("first"), NOW).unwrap();
    assert_eq!(first.outcome, Outcome::Stored);
    let second = m.write(&k, put("second"), NOW + 10).unwrap();
    assert_eq!(second.outcome, Outcome::Existing(Bytes::from("first")));
    assert!(second.item.is_none());
    // Once the first has expired, the next one is stored.
    let third = m.write(&k, put("third"), NOW + 1_000).unwrap();
    assert_eq!(third.outcome, Outcome::Stored);
}

struct Counter;

impl Updater for Counter {
    fn apply(
        &self,
        _key: &str,
        current: Option<&Bytes>,
        op: &[u8],
        now_ms: u64,
    ) -> Result<(Option<Bytes>, u64, Bytes), String> {
        if op == b"refuse" {
            return Err("refused".into());
        }
        let n = current.map_or(0, |b| u64::from_be_bytes(b[..8].try_into().unwrap())) + 1;
        let v = Bytes::copy_from_slice(&n.to_be_bytes());
        Ok((Some(v.clone()), now_ms + HOUR, v))
    }
}

#[test]
fn updates_apply_to_the_value_held() {
    let r = rings(&["a"]);
    let mut m = loaded("a", &r, 0, cfg());
    let k = key(5);
    for want in 1..=5u64 {
        let a = m
            .write(
                &k,
                Write::Update {
                    updater: &Counter,
                    op: b"inc",
                },
                NOW,
            )
            .unwrap();
        assert_eq!(
            a.outcome,
            Outcome::Updated(Bytes::copy_from_slice(&want.to_be_bytes()))
        );
    }
    let before = m.entry(&k).cloned();
    let refused = m.write(
        &k,
        Write::Update {
            updater: &Counter,
            op: b"refuse",
        },
        NOW,
    );
    assert_eq!(refused, Err(Failure::Rejected("refused".into())));
    assert_eq!(m.entry(&k).cloned(), before);
}

#[test]
fn flow_control_sends_the_next_batch_only_after_the_ack() {
    let old = rings(&["a", "b", "c"]);
    let new = rings(&["a", "b", "c", "d"]);
    let cfg = MachineConfig {
        batch_entries: 10,
        ..MachineConfig::default()
    };
    let mut m = loaded("a", &old, 2000, cfg);
    let mut actions = m.handle(Input::Rings(new), NOW);
    let mut seq = 0;
    let mut total = 0;
    loop {
        let to_d: Vec<Batch> = sends(&actions)
            .into_iter()
            .filter(|b| b.peer == "d")
            .cloned()
            .collect();
        assert_eq!(to_d.len(), 1, "one batch in flight per peer: {actions:?}");
        let b = &to_d[0];
        assert!(b.pushes.len() <= 10);
        assert_eq!(b.seq, seq);
        assert_eq!(b.epoch, 2);
        total += b.pushes.len();
        // Time passing does not release another batch.
        let idle = m.handle(Input::Tick, NOW + 10_000);
        assert!(sends(&idle).iter().all(|x| x.peer != "d"), "{idle:?}");
        // Others are acked so that only d's flow is observed.
        let mut next = Vec::new();
        for other in sends(&actions).into_iter().filter(|x| x.peer != "d") {
            next.extend(m.handle(
                Input::Acked {
                    peer: other.peer.clone(),
                    batch: other.id,
                    missing: vec![],
                },
                NOW,
            ));
        }
        for other in sends(&idle) {
            next.extend(m.handle(
                Input::Acked {
                    peer: other.peer.clone(),
                    batch: other.id,
                    missing: vec![],
                },
                NOW,
            ));
        }
        if b.last {
            next.extend(m.handle(
                Input::Acked {
                    peer: "d".into(),
                    batch: b.id,
                    missing: vec![],
                },
                NOW,
            ));
            assert!(sends(&next).iter().all(|x| x.peer != "d"));
            break;
        }
        next.extend(m.handle(
            Input::Acked {
                peer: "d".into(),
                batch: b.id,
                missing: vec![],
            },
            NOW,
        ));
        actions = next;
        seq += 1;
    }
    assert!(seq > 2, "several batches");
    assert!(total > 20);
}

#[test]
fn batches_close_on_bytes() {
    let old = rings(&["a", "b"]);
    let new = rings(&["a", "b", "c"]);
    let cfg = MachineConfig {
        batch_entries: 1000,
        batch_bytes: 10_000,
        ..MachineConfig::default()
    };
    let mut m = Machine::new("a", cfg);
    m.handle(Input::Rings(old.clone()), NOW);
    let big = Bytes::from(vec![7u8; 3_000]);
    for i in 0..200 {
        m.merge(
            key(i),
            Entry {
                value: Some(big.clone()),
                expires_at_ms: NOW + HOUR,
                version: Version {
                    stamp: 1,
                    origin: 0,
                },
            },
        );
    }
    let actions = m.handle(Input::Rings(new), NOW);
    let to_c = sends(&actions)
        .into_iter()
        .find(|b| b.peer == "c")
        .expect("a batch to c");
    assert!(
        to_c.pushes.len() >= 3 && to_c.pushes.len() <= 4,
        "{}",
        to_c.pushes.len()
    );
}

#[test]
fn a_newer_ring_change_supersedes_the_transfer() {
    let r1 = rings(&["a", "b", "c"]);
    let r2 = rings(&["a", "b", "c", "d"]);
    let r3 = rings(&["a", "b", "c", "d", "e"]);
    let cfg = MachineConfig {
        batch_entries: 16,
        ..MachineConfig::default()
    };
    let n = 3000;
    let mut m = loaded("a", &r1, n, cfg.clone());
    let a2 = m.handle(Input::Rings(r2), NOW);
    let first = sends(&a2)
        .into_iter()
        .find(|b| b.peer == "d")
        .cloned()
        .expect("a batch to d");
    assert_eq!(first.epoch, 2);
    // e joins before d's first batch is acknowledged.
    let a3 = m.handle(Input::Rings(r3.clone()), NOW);
    assert_eq!(m.epoch(), 3);
    for b in sends(&a3) {
        assert_ne!(b.peer, "d", "d still has a batch in flight");
        assert_eq!(b.epoch, 3);
        assert_eq!(b.seq, 0);
    }
    assert!(sends(&a3).iter().any(|b| b.peer == "e"));
    // The old batch's acknowledgement still counts; d's next batch belongs to epoch 3 and
    // does not repeat what d acknowledged.
    let after = m.handle(
        Input::Acked {
            peer: "d".into(),
            batch: first.id,
            missing: vec![],
        },
        NOW,
    );
    let next = sends(&after).into_iter().find(|b| b.peer == "d").cloned();
    let acked: BTreeSet<StoreKey> = first
        .pushes
        .iter()
        .filter_map(|p| match p {
            Push::Full(i) => Some(i.key.clone()),
            Push::Check { .. } => None,
        })
        .collect();
    if let Some(next) = &next {
        assert_eq!((next.epoch, next.seq), (3, 0));
        for p in &next.pushes {
            if let Push::Full(i) = p {
                assert!(!acked.contains(&i.key), "{} sent again", i.key);
            }
        }
    }

    // Over the whole network the result is the placement of the last ring.
    let mut sim = Sim::new(&["a", "b", "c"], &r1, n);
    sim.nodes.insert("d".into(), Machine::new("d", cfg.clone()));
    sim.rings(&rings(&["a", "b", "c", "d"]));
    // Deliver only part of the first transfer, then the second change.
    for _ in 0..3 {
        sim.step();
    }
    assert!(!sim.queue.is_empty());
    sim.nodes.insert("e".into(), Machine::new("e", cfg));
    sim.rings(&r3);
    sim.run();
    sim.assert_placed(&r3, n);
}

#[test]
fn a_key_is_dropped_only_after_every_new_replica_confirmed() {
    let old = rings(&["a", "b", "c"]);
    let new = rings(&["b", "c", "d"]);
    let mut m = loaded("a", &old, 200, cfg());
    let held = m.local_len(NOW);
    assert!(held > 0);
    let actions = m.handle(Input::Rings(new), NOW);
    let batches: Vec<Batch> = sends(&actions).into_iter().cloned().collect();
    assert!(batches.len() >= 2);
    // All but one acknowledge: nothing may be dropped yet for the keys the last one lacks.
    let (last, rest) = batches.split_last().unwrap();
    let mut outstanding = Vec::new();
    for b in rest {
        outstanding.extend(m.handle(
            Input::Acked {
                peer: b.peer.clone(),
                batch: b.id,
                missing: vec![],
            },
            NOW,
        ));
    }
    for p in &last.pushes {
        let k = match p {
            Push::Full(i) => &i.key,
            Push::Check { key, .. } => key,
        };
        assert!(
            m.entry(k).is_some(),
            "{k} dropped before {} confirmed",
            last.peer
        );
    }
    // The last one fails: retried only after the back-off.
    let failed = m.handle(
        Input::Failed {
            peer: last.peer.clone(),
            batch: last.id,
        },
        NOW,
    );
    assert!(sends(&failed).iter().all(|b| b.peer != last.peer));
    outstanding.extend(failed);
    let early = m.handle(Input::Tick, NOW + 50);
    assert!(sends(&early).iter().all(|b| b.peer != last.peer));
    outstanding.extend(early);
    let retry = m.handle(Input::Tick, NOW + 100);
    let again = sends(&retry)
        .into_iter()
        .find(|b| b.peer == last.peer)
        .cloned()
        .expect("retried after the back-off");
    assert_eq!(again.pushes, last.pushes);
    outstanding.extend(retry);
    // (`drain` counts the drops in what it is given too.)
    let (_, drops) = drain(&mut m, outstanding);
    assert_eq!(drops, held);
    assert_eq!(m.local_len(NOW), 0);
}

#[test]
fn a_check_answered_missing_is_followed_by_the_entry() {
    let old = rings(&["a", "b", "c"]);
    let new = rings(&["b", "c", "d"]);
    let mut m = loaded("a", &old, 300, cfg());
    let actions = m.handle(Input::Rings(new), NOW);
    let b = sends(&actions)
        .into_iter()
        .find(|b| b.pushes.iter().any(|p| matches!(p, Push::Check { .. })))
        .cloned()
        .expect("a batch with checks");
    let (i, checked) = b
        .pushes
        .iter()
        .enumerate()
        .find_map(|(i, p)| match p {
            Push::Check { key, .. } => Some((i, key.clone())),
            _ => None,
        })
        .unwrap();
    let mut next = m.handle(
        Input::Acked {
            peer: b.peer.clone(),
            batch: b.id,
            missing: vec![i as u32],
        },
        NOW,
    );
    let mut found = false;
    for _ in 0..100 {
        let Some(nb) = sends(&next).into_iter().find(|x| x.peer == b.peer).cloned() else {
            break;
        };
        found |= nb
            .pushes
            .iter()
            .any(|p| matches!(p, Push::Full(item) if item.key == checked));
        next = m.handle(
            Input::Acked {
                peer: nb.peer.clone(),
                batch: nb.id,
                missing: vec![],
            },
            NOW,
        );
    }
    assert!(found, "{checked} was never sent in full to {}", b.peer);
}

#[test]
fn receivers_answer_checks_by_version() {
    let r = rings(&["a", "b"]);
    let mut m = loaded("a", &r, 0, cfg());
    let k = key(1);
    m.merge(k.clone(), value(10, "x"));
    let check = |stamp| Push::Check {
        key: k.clone(),
        version: Version { stamp, origin: 0 },
    };
    let other = Push::Check {
        key: key(2),
        version: Version {
            stamp: 1,
            origin: 0,
        },
    };
    let (missing, _) = m
        .receive("b", vec![check(9), check(10), check(11), other], NOW)
        .expect("room");
    assert_eq!(missing, vec![2, 3]);
}

#[test]
fn stray_entries_are_handed_on_and_dropped() {
    let r = rings(&["a", "b", "c"]);
    let mut m = loaded("a", &r, 0, cfg());
    let stray = (0..1000)
        .map(key)
        .find(|k| !set(&r, k).contains(&"a".to_string()))
        .unwrap();
    let (missing, actions) = m
        .receive(
            "x",
            vec![Push::Full(Item {
                key: stray.clone(),
                entry: value(5, "s"),
            })],
            NOW,
        )
        .expect("room");
    assert!(missing.is_empty());
    let targets: BTreeSet<String> = sends(&actions).iter().map(|b| b.peer.clone()).collect();
    assert_eq!(targets, set(&r, &stray).into_iter().collect());
    let (_, drops) = drain(&mut m, actions);
    assert_eq!(drops, 1);
    assert!(m.entry(&stray).is_none());
}

#[test]
fn a_failed_replication_is_pushed_again() {
    let r = rings(&["a", "b", "c"]);
    let mut m = loaded("a", &r, 0, cfg());
    let k = (0..1000).map(key).find(|k| set(&r, k)[0] == "a").unwrap();
    let applied = m
        .write(
            &k,
            Write::Put {
                value: Bytes::from("v"),
                ttl_ms: HOUR,
            },
            NOW,
        )
        .unwrap();
    let replica = set(&r, &k)[1].clone();
    let actions = m.handle(
        Input::Missing {
            peer: replica.clone(),
            key: k.clone(),
        },
        NOW,
    );
    let b = sends(&actions)[0];
    assert_eq!(b.peer, replica);
    assert_eq!(b.pushes, vec![Push::Full(applied.item.unwrap())]);
    assert!(b.last);
}

#[test]
fn expired_entries_are_hidden_then_purged_in_bounded_passes() {
    let r = rings(&["a"]);
    let cfg = MachineConfig {
        purge_batch: 10,
        ..MachineConfig::default()
    };
    let mut m = loaded("a", &r, 0, cfg);
    for i in 0..25 {
        m.merge(
            key(i),
            Entry {
                value: Some(Bytes::from("v")),
                expires_at_ms: NOW + 100,
                version: Version {
                    stamp: 1,
                    origin: 0,
                },
            },
        );
    }
    m.merge(key(99), value(1, "stays"));
    assert_eq!(m.local_len(NOW), 26);
    assert_eq!(m.local_len(NOW + 100), 1);
    assert!(m.read(&key(0), NOW + 100).is_none());
    assert_eq!(m.stored(), 26);
    let purged = |a: Vec<Action>| -> usize {
        a.iter()
            .map(|x| match x {
                Action::Purged { entries } => *entries,
                _ => 0,
            })
            .sum()
    };
    assert_eq!(purged(m.handle(Input::Purge, NOW + 99)), 0);
    assert_eq!(purged(m.handle(Input::Purge, NOW + 100)), 10);
    assert_eq!(purged(m.handle(Input::Purge, NOW + 100)), 10);
    assert_eq!(purged(m.handle(Input::Purge, NOW + 100)), 5);
    assert_eq!(purged(m.handle(Input::Purge, NOW + 100)), 0);
    assert_eq!(m.stored(), 1);
}

#[test]
fn a_new_owner_fetches_what_it_lacks_during_the_handoff() {
    let old = rings(&["a", "b", "c"]);
    let new = rings(&["a", "b", "c", "d"]);
    let mut d = Machine::new("d", cfg());
    d.handle(Input::Rings(old.clone()), NOW);
    assert!(d.handoff_open(NOW), "the first rings are a change too");
    d.handle(Input::Rings(new.clone()), NOW);
    assert!(d.handoff_open(NOW + 9_999));
    assert!(!d.handoff_open(NOW + 10_000), "the window closes");
    // The same rings again change nothing: the window stays closed.
    d.handle(Input::Rings(new.clone()), NOW + 20_000);
    assert!(!d.handoff_open(NOW + 20_000));
    let k = (0..1000).map(key).find(|k| set(&new, k)[0] == "d").unwrap();
    let sources = d
        .handoff_sources(&k, NOW + 10)
        .expect("fetch during the hand-off");
    for s in set(&old, &k) {
        assert!(sources.contains(&s));
    }
    assert!(!sources.contains(&"d".to_string()));
    assert!(d.handoff_sources(&k, NOW + 10_000).is_none(), "window over");
    d.merge(k.clone(), value(1, "v"));
    assert!(d.handoff_sources(&k, NOW + 10).is_none(), "held already");
    // A member that held the key before never fetches.
    let mut a = loaded("a", &old, 1000, cfg());
    a.handle(Input::Rings(new.clone()), NOW);
    for k in (0..1000).map(key) {
        if set(&old, &k).contains(&"a".to_string()) {
            assert!(a.handoff_sources(&k, NOW).is_none());
        }
    }
}

#[test]
fn settles_once_the_handoff_is_done() {
    let old = rings(&["a", "b"]);
    let new = rings(&["a", "b", "c"]);
    let mut m = loaded("a", &old, 100, cfg());
    let actions = m.handle(Input::Rings(new), NOW);
    assert!(!actions.iter().any(|a| matches!(a, Action::Settled { .. })));
    let mut all = Vec::new();
    let mut pending = actions;
    while !pending.is_empty() {
        let mut next = Vec::new();
        for b in sends(&pending) {
            next.extend(m.handle(
                Input::Acked {
                    peer: b.peer.clone(),
                    batch: b.id,
                    missing: vec![],
                },
                NOW,
            ));
        }
        all.extend(next.clone());
        pending = next
            .into_iter()
            .filter(|a| matches!(a, Action::Send(_)))
            .collect();
    }
    assert!(all.contains(&Action::Settled { epoch: 2 }), "{all:?}");
}

/// The caps in entries and bytes: a write of a new key and a batch of new entries are
/// refused when they would go past them (nothing of the batch is taken, so its sender keeps
/// its copies); rewriting a held key in place is still allowed; what is handed over or
/// purged gives its room back.
#[test]
fn a_full_store_refuses_new_keys_and_batches_and_frees_room_as_it_drops() {
    let r = rings(&["a"]);
    let mut m = Machine::new(
        "a",
        MachineConfig {
            max_entries: 3,
            ..cfg()
        },
    );
    m.handle(Input::Rings(r.clone()), NOW);
    let put = |m: &mut Machine, i: usize, v: &str| {
        m.write(
            &key(i),
            Write::Put {
                value: Bytes::from(v.to_string()),
                ttl_ms: HOUR,
            },
            NOW,
        )
    };
    for i in 0..3 {
        assert!(put(&mut m, i, "v").is_ok());
    }
    let full = put(&mut m, 3, "v");
    assert!(
        matches!(full, Err(Failure::Full { entries: 3, .. })),
        "{full:?}"
    );
    assert!(
        put(&mut m, 1, "rewritten").is_ok(),
        "a held key is rewritten"
    );
    let batch = vec![Push::Full(Item {
        key: key(7),
        entry: value(5, "x"),
    })];
    assert!(matches!(
        m.receive("b", batch.clone(), NOW),
        Err(Failure::Full { .. })
    ));
    assert!(
        m.entry(&key(7)).is_none(),
        "nothing of a refused batch is taken"
    );
    assert_eq!(m.stored(), 3);
    // A full store still takes a batch of newer versions of keys it holds (its room is
    // counted exactly when the batch does not fit as if every entry were new).
    let newer = vec![Push::Full(Item {
        key: key(2),
        entry: value(NOW + 1_000, "newer"),
    })];
    assert!(m.receive("b", newer, NOW).is_ok());
    assert_eq!(
        m.entry(&key(2)).and_then(|e| e.value.clone()),
        Some(Bytes::from("newer"))
    );
    assert_eq!(m.stored(), 3);

    // Bytes: one entry's cost more than what is held refuses the next one.
    let mut b = Machine::new(
        "a",
        MachineConfig {
            max_bytes: 1_000,
            ..cfg()
        },
    );
    b.handle(Input::Rings(r), NOW);
    assert!(put(&mut b, 0, &"x".repeat(600)).is_ok());
    let held = b.bytes();
    assert_eq!(held, cost(&key(0), b.entry(&key(0)).unwrap()));
    assert!(matches!(
        put(&mut b, 1, &"y".repeat(600)),
        Err(Failure::Full { .. })
    ));
    assert_eq!(b.bytes(), held, "a refused write costs nothing");
    // Expired and purged, the room is back.
    b.handle(Input::Purge, NOW + 2 * HOUR);
    assert_eq!((b.bytes(), b.stored()), (0, 0));
    assert!(b
        .write(
            &key(1),
            Write::Put {
                value: Bytes::from("y".repeat(600)),
                ttl_ms: HOUR,
            },
            NOW + 2 * HOUR,
        )
        .is_ok());
}

/// The repair pass: a member that lost its copies while no ring change showed it (a restart
/// between two views its peers never saw apart) gets them back from the others' check after
/// their hand-off settled; a member that holds them is only asked (no entry is sent again).
#[test]
fn the_repair_pass_after_a_hand_off_restores_a_copy_lost_unseen() {
    let r = rings(&["a", "b", "c"]);
    let mut sim = Sim::new(&["a", "b", "c"], &r, 300);
    let theirs = |m: &str| {
        (0..300)
            .map(key)
            .filter(|k| set(&r, k).iter().any(|s| s == m))
            .count()
    };
    let before_full = sim.full.clone();
    // b comes back empty, on the same rings.
    sim.nodes.insert("b".into(), Machine::new("b", cfg()));
    sim.nodes
        .get_mut("b")
        .unwrap()
        .handle(Input::Rings(r.clone()), NOW);
    assert_eq!(sim.nodes["b"].stored(), 0);
    // Before the pass is due nothing is sent.
    for name in ["a", "c"] {
        let acts = sim.tick(name, NOW + 1_000);
        assert!(sends(&acts).is_empty(), "{acts:?}");
    }
    for name in ["a", "c"] {
        let acts = sim.tick(name, NOW + 3_000);
        assert!(!sends(&acts).is_empty(), "{name} checks its peers");
        for a in acts {
            sim.queue.push_back((name.to_string(), a));
        }
    }
    sim.run();
    assert_eq!(
        sim.nodes["b"].stored(),
        theirs("b"),
        "b holds its keys again"
    );
    assert_eq!(sim.nodes["a"].stored(), theirs("a"));
    assert_eq!(sim.nodes["c"].stored(), theirs("c"));
    // Only b was sent entries; a and c were only asked.
    for name in ["a", "c"] {
        let full = |m: &BTreeMap<String, usize>| m.get(name).copied().unwrap_or(0);
        assert_eq!(
            full(&sim.full),
            full(&before_full),
            "{name} was sent entries"
        );
    }
    // Once done, the pass is not repeated.
    for name in ["a", "c"] {
        let acts = sim.tick(name, NOW + 60_000);
        assert!(sends(&acts).is_empty(), "{acts:?}");
    }
}

/// Acknowledges every batch (as if every peer held everything) and feeds [`Input::Scan`]
/// while the walk is under way, until nothing is left; every push with its recipient. Every
/// input takes a step of the walk, so acknowledgements move it on too. Asserts that no end
/// marker goes out before the walk has ended.
fn walk_and_drain(m: &mut Machine, first: Vec<Action>) -> BTreeSet<(String, String, bool)> {
    let mut pushed = BTreeSet::new();
    let mut actions = first;
    loop {
        let batches: Vec<Batch> = sends(&actions).into_iter().cloned().collect();
        actions = Vec::new();
        if batches.is_empty() {
            if !m.scanning() {
                return pushed;
            }
            actions = m.handle(Input::Scan, NOW);
            continue;
        }
        for b in batches {
            assert!(
                !b.last || !m.scanning(),
                "an end marker to {} before the walk ended",
                b.peer
            );
            for p in b.pushes {
                pushed.insert(match p {
                    Push::Full(i) => (b.peer.clone(), i.key.key, true),
                    Push::Check { key, .. } => (b.peer.clone(), key.key, false),
                });
            }
            actions.extend(m.handle(
                Input::Acked {
                    peer: b.peer.clone(),
                    batch: b.id,
                    missing: vec![],
                },
                NOW,
            ));
        }
    }
}

#[test]
fn a_hand_off_planned_a_chunk_at_a_time_sends_what_one_walk_sends() {
    let old = rings(&["a", "b", "c"]);
    let new = rings(&["a", "b", "d"]);
    let n = 3000;
    let chunked = MachineConfig {
        scan_chunk: 7,
        ..cfg()
    };
    let mut whole = loaded("a", &old, n, cfg());
    let mut parts = loaded("a", &old, n, chunked);
    let held = parts.stored();
    assert!(held > 1000, "{held}");

    let first = whole.handle(Input::Rings(new.clone()), NOW);
    assert!(!whole.scanning(), "3,000 keys fit one chunk of 4,096");
    let want = walk_and_drain(&mut whole, first);

    let first = parts.handle(Input::Rings(new), NOW);
    assert!(parts.scanning(), "7 entries a call cannot walk {held}");
    let got = walk_and_drain(&mut parts, first);
    assert!(!want.is_empty());
    assert_eq!(got, want, "the same pushes and checks to the same members");
    assert_eq!(parts.stored(), whole.stored(), "the same keys handed over");
}

#[test]
fn a_ring_change_during_a_chunked_walk_still_restores_every_lost_copy() {
    // c crashes; while the walks that plan the restoring of its copies have looked at a few
    // chunks only, e joins. Each walk starts again against the rings from before c left:
    // compared with the rings without c, the member that c's departure brought into a
    // replica set would look like an old holder, and the keys not yet looked at would be
    // left with one copy (no holder leaves those sets, so no check would find the gap).
    let r1 = rings(&["a", "b", "c", "d"]);
    let r2 = rings(&["a", "b", "d"]);
    let r3 = rings(&["a", "b", "d", "e"]);
    let n = 2000;
    let cfg = MachineConfig {
        scan_chunk: 16,
        ..cfg()
    };
    let mut sim = Sim::with(&["a", "b", "c", "d"], &r1, n, cfg.clone());
    sim.nodes.remove("c");
    sim.rings(&r2);
    for _ in 0..3 {
        sim.scan();
        sim.step();
    }
    assert!(
        sim.nodes.values().any(|m| m.scanning()),
        "the first walks are still under way"
    );
    sim.nodes.insert("e".into(), Machine::new("e", cfg));
    sim.rings(&r3);
    sim.run();
    sim.assert_placed(&r3, n);
}

#[test]
fn a_walk_over_a_large_store_holds_it_a_chunk_at_a_time() {
    // 300,000 keys, two thirds of them here: the walk after a ring change looks at 4,096
    // entries per call. Prints the longest call and the whole walk (with
    // `cargo test --release -p onehop-node --lib a_walk_over_a_large -- --nocapture`).
    let old = rings(&["a", "b", "c"]);
    let new = rings(&["a", "b", "d"]);
    let mut m = loaded("a", &old, 300_000, MachineConfig::default());
    let held = m.stored();
    let started = std::time::Instant::now();
    let mut took = Vec::new();
    let mut calls = 0;
    let mut input = Input::Rings(new);
    loop {
        let t = std::time::Instant::now();
        let actions = m.handle(input, NOW);
        took.push(t.elapsed());
        calls += 1;
        // Every batch is taken at once, as in `drain`.
        for b in sends(&actions) {
            m.handle(
                Input::Acked {
                    peer: b.peer.clone(),
                    batch: b.id,
                    missing: vec![],
                },
                NOW,
            );
            calls += 1;
        }
        if !m.scanning() {
            break;
        }
        input = Input::Scan;
    }
    let whole = started.elapsed();
    took.sort();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    println!(
        "store walk: {held} entries, {} walk calls (median {:.2} ms, longest {:.2} ms), {calls} calls in all, whole walk {:.0} ms",
        took.len(),
        ms(took[took.len() / 2]),
        ms(took[took.len() - 1]),
        ms(whole)
    );
    assert!(held > 150_000, "{held}");
    // The walk visits the ranges the change moved (one member of three replaced: most of
    // the circle), a chunk per call.
    let walked = m.walked() as usize;
    assert!(walked > 100_000, "{walked}");
    assert!(
        calls >= walked.div_ceil(4_096),
        "{calls} calls for {walked} entries walked"
    );
}

#[test]
fn a_one_member_change_walks_only_the_ranges_it_moved() {
    // 40 members, 20,000 keys: one member leaves, another joins. Every key ends up with its
    // replica set, and the walks together look at a small part of what is held.
    let names: Vec<String> = (0..40).map(|i| format!("n{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let r1 = rings(&refs);
    let n = 20_000;
    let mut sim = Sim::new(&refs, &r1, n);
    let held: usize = sim.nodes.values().map(Machine::stored).sum();
    let mut after = refs.clone();
    after.retain(|m| *m != "n17");
    after.push("zz");
    let r2 = rings(&after);
    sim.nodes.remove("n17");
    sim.nodes.insert("zz".into(), Machine::new("zz", cfg()));
    sim.rings(&r2);
    sim.run();
    sim.assert_placed(&r2, n);
    let walked: u64 = sim.nodes.values().map(Machine::walked).sum();
    println!("one member left and one joined: {walked} of {held} entries walked");
    assert!(walked > 0);
    assert!(
        (walked as usize) < held / 5,
        "{walked} of {held} entries walked"
    );
}

#[test]
fn live_entries_are_counted_in_bounded_passes() {
    let r = rings(&["a"]);
    let mut m = loaded("a", &r, 0, cfg());
    for i in 0..25 {
        m.merge(
            key(i),
            Entry {
                value: Some(Bytes::from(if i % 5 == 0 { "x" } else { "v" })),
                expires_at_ms: NOW + 100,
                version: Version {
                    stamp: 1,
                    origin: 0,
                },
            },
        );
    }
    m.merge(key(99), value(1, "x stays"));
    let starts_x = |v: &[u8]| v.first() == Some(&b'x');
    let role = key(0).role;
    // 26 entries, 10 a step: two steps go on, the third ends the pass with its counts.
    let mut count = LiveCount::default();
    assert_eq!(m.count_live(&mut count, &role, starts_x, 10, NOW), None);
    assert_eq!(m.count_live(&mut count, &role, starts_x, 10, NOW), None);
    assert_eq!(
        m.count_live(&mut count, &role, starts_x, 10, NOW),
        Some((26, 6))
    );
    // The next pass starts over; expired entries are not counted.
    assert_eq!(
        m.count_live(&mut count, &role, starts_x, 100, NOW + 100),
        Some((1, 1))
    );
    assert_eq!(
        m.count_live(&mut count, &role, |_| false, 26, NOW),
        Some((26, 0))
    );
}

/// A role's entries by position: lookups, replacement, removal and spans give what a map
/// keyed by (position, key) gives.
#[test]
fn role_data_matches_a_map_by_position_and_key() {
    let mut data = RoleData::default();
    let mut model: BTreeMap<(u64, String), Entry> = BTreeMap::new();
    for i in 0..400 {
        let k = format!("user{i}@example.test");
        assert_eq!(data.merge_newer(&k, value(1, "a")), Ok(None));
        model.insert((position(&k), k), value(1, "a"));
    }
    // Replacing keeps the count and returns the old entry.
    let k7 = "user7@example.test".to_string();
    assert_eq!(
        data.merge_newer(&k7, value(2, "b")),
        Ok(Some(value(1, "a")))
    );
    // Not newer: refused and given back, the held entry unchanged.
    assert_eq!(data.merge_newer(&k7, value(2, "c")), Err(value(2, "c")));
    assert_eq!(data.merge_newer(&k7, value(1, "d")), Err(value(1, "d")));
    model.insert((position(&k7), k7.clone()), value(2, "b"));
    assert_eq!(data.get(&k7), Some(&value(2, "b")));
    // Removing: present once, then absent.
    let k9 = "user9@example.test";
    assert_eq!(data.remove(k9), Some(value(1, "a")));
    assert_eq!(data.remove(k9), None);
    assert!(data.get(k9).is_none());
    model.remove(&(position(k9), k9.to_string()));
    assert_eq!(data.len(), model.len());
    let all: Vec<(String, Entry)> = data
        .iter()
        .map(|(k, e)| (k.to_string(), e.clone()))
        .collect();
    let want: Vec<(String, Entry)> = model
        .iter()
        .map(|((_, k), e)| (k.clone(), e.clone()))
        .collect();
    assert_eq!(all, want);
    // Spans from every kind of lower bound, to positions inside and at the ends.
    let keys: Vec<(u64, String)> = model.keys().cloned().collect();
    let lasts = [0, keys[10].0, keys[200].0, keys[200].0 - 1, u64::MAX];
    for (i, (pos, key)) in keys.iter().enumerate().step_by(37) {
        let lowers = [
            Bound::Unbounded,
            Bound::Included((*pos, String::new())),
            Bound::Included((*pos, key.clone())),
            Bound::Excluded((*pos, key.clone())),
            Bound::Included((pos.wrapping_add(1), String::new())),
        ];
        for lower in lowers {
            for last in lasts {
                let got: Vec<&str> = data.span(lower.clone(), last).map(|(k, _)| k).collect();
                let upper = match last.checked_add(1) {
                    Some(n) => Bound::Excluded((n, String::new())),
                    None => Bound::Unbounded,
                };
                let start_after_end = match &lower {
                    Bound::Included((p, _)) | Bound::Excluded((p, _)) => *p > last,
                    Bound::Unbounded => false,
                };
                let want: Vec<&str> = if start_after_end {
                    Vec::new()
                } else {
                    model
                        .range((lower.clone(), upper))
                        .map(|((_, k), _)| k.as_str())
                        .collect()
                };
                assert_eq!(got, want, "key {i}, lower {lower:?}, last {last}");
            }
        }
    }
}

/// Keys that share a position (a 64-bit hash collision) are kept apart, in key order.
#[test]
fn keys_at_one_position_are_kept_apart() {
    let mut slot = Slot::One(("m".to_string(), value(1, "m")));
    assert_eq!(slot.insert("z".into(), value(1, "z")), None);
    assert_eq!(slot.insert("a".into(), value(1, "a")), None);
    assert_eq!(slot.insert("m".into(), value(2, "m2")), Some(value(1, "m")));
    let keys: Vec<&str> = slot.as_slice().iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["a", "m", "z"]);
    assert_eq!(slot.get("m"), Some(&value(2, "m2")));
    assert_eq!(slot.get("b"), None);
    // In a role's data: "b" is put at "a"'s position, as a collision would put it.
    let at = position("a");
    let mut data = RoleData::default();
    data.map.insert(
        at,
        Slot::Many(vec![
            ("a".to_string(), value(1, "a")),
            ("b".to_string(), value(1, "b")),
        ]),
    );
    data.len = 2;
    let span: Vec<&str> = data
        .span(Bound::Excluded((at, "a".to_string())), at)
        .map(|(k, _)| k)
        .collect();
    assert_eq!(span, ["b"]);
    let span: Vec<&str> = data
        .span(Bound::Unbounded, u64::MAX)
        .map(|(k, _)| k)
        .collect();
    assert_eq!(span, ["a", "b"]);
    // Removing one of the two leaves the other, alone at that position.
    assert_eq!(data.remove("a"), Some(value(1, "a")));
    assert_eq!(data.len(), 1);
    assert!(data.get("a").is_none());
    assert!(matches!(&data.map[&at], Slot::One((k, _)) if k == "b"));
    assert_eq!(data.merge_newer("a", value(3, "a")), Ok(None));
    assert_eq!(data.get("a"), Some(&value(3, "a")));
    assert_eq!(data.len(), 2);
}
