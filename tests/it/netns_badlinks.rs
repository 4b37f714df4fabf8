//! Bad links between hosts (issue 11): 5 % loss and 50 ms delay on every link between members
//! (each member in a network namespace of its own, see `netns.rs`). Over a bounded run with
//! SIP registrations going on, no member may be taken for dead; then join, graceful leave,
//! crash and manager failover are measured with the links still bad.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::harness::{until_all_nodes, Lookup};
use crate::netns::{names_in, status_code, until, NsFarm, SipClient, Spec};

const LOSS_PCT: u8 = 5;
const DELAY: Duration = Duration::from_millis(50);
/// How long the farm runs on bad links before the budgets are measured.
const RUN: Duration = Duration::from_secs(20);
/// Slack on the design's budgets for a loaded 2-core machine (and QUIC's retransmissions of
/// the lost packets).
const SLACK: f64 = 3.0;

/// What a lost QUIC handshake packet costs: quinn's first probe timeout, from its initial
/// round-trip estimate of 333 ms (smoothed RTT + 4 x RTT variance, 333 + 4 x 167 ms). Lost
/// packets of an established connection are sent again far sooner, on the measured round
/// trip.
const HANDSHAKE_PTO: Duration = Duration::from_millis(1_000);

/// What a lost packet of an established connection costs on these links: quinn's probe
/// timeout from the measured round trip (smoothed RTT of about 100 ms + 4 x its variance +
/// the peer's ACK delay), about 300-400 ms.
const RESEND_PTO: Duration = Duration::from_millis(400);

/// A budget check with the links' delay added: the design's budgets are for one machine, and
/// a path of `hops` one-way trips between hosts adds `hops` x the delay to it; a path that
/// opens a QUIC connection may lose a handshake packet to the loss (`handshakes` such losses
/// allowed, each costing [`HANDSHAKE_PTO`]; `resends` lost packets of established
/// connections, each costing [`RESEND_PTO`]). Prints the figure and asserts it against
/// `budget` x `slack` + `hops` x delay + the probe timeouts allowed.
fn within_budget_on_bad_links(
    what: &str,
    measured: Option<Duration>,
    budget: Duration,
    hops: u32,
    (handshakes, resends): (u32, u32),
) -> Duration {
    let limit =
        budget.mul_f64(SLACK) + DELAY * hops + HANDSHAKE_PTO * handshakes + RESEND_PTO * resends;
    let d = measured.unwrap_or_else(|| panic!("{what} did not happen at all"));
    println!(
        "BUDGET {what} on bad links: {:.1} ms (design budget {} ms on one machine; {hops} one-way trips of {} ms on this path; {handshakes} lost handshake packet(s) and {resends} other lost packet(s) allowed; asserted <= {} ms)",
        d.as_secs_f64() * 1e3,
        budget.as_millis(),
        DELAY.as_millis(),
        limit.as_millis()
    );
    assert!(d <= limit, "{what} took {d:?}, over {limit:?}");
    d
}

fn status_of_all(lookups: &mut [(String, Lookup)]) -> Vec<Option<(u64, u64, String)>> {
    lookups.iter_mut().map(|(_, l)| l.status()).collect()
}

#[test]
fn netns_bad_links_remove_no_one_and_budgets_hold_with_the_delay() {
    let spec = Spec {
        nodes: 4,
        held_back: vec!["node4"],
        ..Spec::default()
    };
    let Some(mut farm) = NsFarm::up(114, spec) else {
        return;
    };
    let recorder = farm.record_statuses();
    let hosts: Vec<String> = farm.file.members.iter().map(|m| m.name.clone()).collect();
    for h in &hosts {
        farm.lab.loss(h, LOSS_PCT);
        farm.lab.delay(h, DELAY);
    }
    let nodes: Vec<String> = ["node1", "node2", "node3"].map(String::from).to_vec();
    let mut lookups = farm.lookups(&nodes);
    let first = status_of_all(&mut lookups);
    let (term0, version0, active) = first[0].clone().expect("status");
    assert!(first.iter().all(|s| s.as_ref() == first[0].as_ref()));
    println!(
        "{LOSS_PCT}% loss and {} ms delay on every link between {} hosts; status ({term0}, {version0}) from {active}",
        DELAY.as_millis(),
        hosts.len()
    );

    // The bounded run: REGISTERs through each node in turn, every node's ring and status
    // watched all along.
    let mut sip = SipClient::bind(farm.lab.hub_ip());
    let started = Instant::now();
    let (mut registered, mut failed, mut polls, mut short_rings) = (0, 0, 0, 0);
    let mut i = 0;
    while started.elapsed() < RUN {
        let node = &nodes[i % nodes.len()];
        match sip.register(farm.sip(node), &format!("bad{i}"), true) {
            Some(r) if status_code(&r) == 200 => registered += 1,
            other => {
                failed += 1;
                println!(
                    "REGISTER bad{i} through {node}: {:?}",
                    other.map(|r| r.lines().next().unwrap_or("").to_string())
                );
            }
        }
        i += 1;
        for (_, l) in lookups.iter_mut() {
            polls += 1;
            if names_in(&l.ask("members registrar")).len() != nodes.len() {
                short_rings += 1;
            }
        }
    }
    let (relayed, relay_dropped) = farm.lab.relay_counts();
    let removals = recorder.removals();
    let now = status_of_all(&mut lookups);
    println!(
        "after {} s on bad links: {registered} REGISTERs answered 200, {failed} not; {polls} ring polls, {short_rings} missing a node; removals in the status history: {removals:?}; statuses held {now:?}; relay passed {relayed} packets (dropped {relay_dropped})",
        RUN.as_secs()
    );
    assert!(
        removals.is_empty(),
        "members taken for dead on bad links: {removals:?}"
    );
    assert_eq!(short_rings, 0, "a ring lacked a node during the run");
    // At most one election: the managers keep their leader (before the fix in the managers'
    // Raft transport, a late heartbeat reply stopped heartbeats to that follower for 300 ms
    // and elections followed: terms 3 to 9 in one 20 s run). One is allowed: 5 % loss each
    // way can eat a follower's heartbeats for a whole election timeout (seen once in a
    // whole-suite run, 2026-12-07). The leader counts itself active only while a quorum
    // answered its heartbeats within 250 ms, and on these links a round trip is about the
    // heartbeat deadline (100 ms), so it drops out and comes back; it used to publish the same
    // members again each time (docs/reliability.md).
    let changes = recorder.changes();
    let terms: std::collections::BTreeSet<u64> = changes
        .iter()
        .map(|(t, _, _)| *t)
        .filter(|t| *t != term0)
        .collect();
    let republished = changes
        .iter()
        .filter(|(_, _, what)| what.is_empty())
        .count();
    println!(
        "during the run: {} elections (new terms {terms:?}), {republished} statuses with no change of members (the leader active again)",
        terms.len()
    );
    assert!(
        terms.len() <= 1,
        "the managers changed leader more than once on bad links: {changes:?}"
    );
    // A leader active again in its own term publishes a new version only for a change of
    // members (before, 43-50 such statuses per run); a new term's first status may repeat
    // the members.
    assert!(
        republished <= terms.len(),
        "statuses with no change of members: {republished} ({changes:?})"
    );
    // Every node follows one manager and term: the first, or the one elected.
    let held = now[0].clone();
    assert!(
        now.iter().all(|s| *s == held)
            && held.as_ref().is_some_and(|(t, _, m)| {
                (*t == term0 && *m == active) || (terms.contains(t) && *t > term0)
            }),
        "the nodes follow different managers or terms: {now:?}"
    );
    assert_eq!(failed, 0, "REGISTERs failed on bad links");
    assert!(relayed > 1000, "the relay passed only {relayed} packets");

    // Join: node4 started (its links as bad) to in every ring, its own included.
    let spawned = farm.start("node4");
    lookups.push(("node4".into(), farm.lookup("node4")));
    let join = until_all_nodes(
        &mut lookups,
        "registrar",
        spawned,
        Duration::from_secs(10),
        |a| a.contains("node4="),
    );
    // Handshake (a round trip), announce, event server to manager, manager to event
    // server, event server to nodes: about 6 one-way trips.
    within_budget_on_bad_links(
        "join (process start to in every ring)",
        join,
        Duration::from_millis(200),
        6,
        (1, 0),
    );

    // Graceful leave: SIGTERM to out of every other ring (leave, to manager, to server, to nodes).
    lookups.pop();
    let sent = Instant::now();
    farm.signal("node4", Signal::SIGTERM);
    let leave = until_all_nodes(
        &mut lookups,
        "registrar",
        sent,
        Duration::from_secs(10),
        |a| !a.contains("node4="),
    );
    // One lost packet allowed: the goodbye goes to three event servers and the change back
    // through the manager and the servers to the nodes, and at 5 % loss each way one of those
    // packets is often lost (docs/reliability.md, "Bad links": before the manager took the
    // first goodbye as the departure, 4 of 29 runs took 603-751 ms).
    within_budget_on_bad_links(
        "graceful leave (SIGTERM to out of every ring)",
        leave,
        Duration::from_millis(200),
        4,
        (0, 1),
    );
    // One departure: a goodbye reported late by one event server does not make the member
    // look present in between (before, the manager then published a departure and a return,
    // and the store handed node4's keys around twice).
    // The recorder may get the last status after the nodes: wait for it (the count follows).
    until(Instant::now(), Duration::from_secs(5), || {
        recorder
            .applied()
            .last()
            .is_none_or(|s| !s.members.iter().any(|m| m == "node4"))
    });
    let departures: Vec<_> = recorder
        .removals()
        .into_iter()
        .filter(|(m, _, _)| m == "node4")
        .collect();
    assert_eq!(
        departures.len(),
        1,
        "node4's graceful leave: departures in the status history {departures:?} ({:?})",
        recorder.changes()
    );

    // Crash: kill -9 to out of every other ring (idle timeout at the event servers, then to
    // manager, to server, to nodes).
    lookups.retain(|(n, _)| n != "node3");
    let killed = Instant::now();
    farm.signal("node3", Signal::SIGKILL);
    let crash = until_all_nodes(
        &mut lookups,
        "registrar",
        killed,
        Duration::from_secs(10),
        |a| !a.contains("node3="),
    );
    within_budget_on_bad_links(
        "crash (kill -9 to out of every ring)",
        crash,
        Duration::from_secs(1),
        3,
        (0, 0),
    );

    // Failover: kill -9 of the active manager to every node holding a new manager's status
    // (vote round trip, the new leader's quorum round trip, to server, to nodes).
    let (term1, _, active) = lookups[0].1.status().expect("status");
    let killed = Instant::now();
    farm.signal(&active, Signal::SIGKILL);
    let failover = until(killed, Duration::from_secs(10), || {
        lookups
            .iter_mut()
            .all(|(_, l)| l.status().is_some_and(|(t, _, m)| t > term1 && m != active))
    });
    within_budget_on_bad_links(
        "manager failover (kill -9 of the active manager to every node holding the new manager's status)",
        failover,
        Duration::from_secs(1),
        6,
        (0, 0),
    );
    recorder.stop();
    for (t, ms) in recorder.publishers() {
        assert_eq!(ms.len(), 1, "term {t} had two publishers: {ms:?}");
    }
}
