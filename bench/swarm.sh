#!/usr/bin/env bash
# A thousand members against real event servers and managers (issue 13): onehop-swarm starts
# a farm of 3 event servers and 3 managers with no nodes on 127.0.120.1-6, issues a node
# certificate per member from the farm's CA (kept in the farm directory for the next run),
# and runs the members in one process, each with its own QUIC endpoint on its own loopback
# address (127.0.121.1 upward) and its own sessions with every event server; a few run as
# child processes so that they can be killed with SIGKILL. It then makes changes one after
# the other (graceful leaves, joins, crashes) and prints, per kind of change, the time from
# the change to every member holding it (p50, p99, max), the bytes each event server
# delivered per change, the managers' CPU per change, a member's cost to follow a change and
# to change its rings in place, and the memory per member.
#
# usage: bench/swarm.sh [onehop-swarm options: --members N --cycles N --crash N --rate R ...]
#   (see `onehop-swarm --help`; defaults: 1,000 members, 20 leave-and-join cycles, 5 crashes,
#   at most 2 changes a second)
#
# Builds onehop-farm and onehop-swarm in release mode; stops the farm it started at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
cargo build --release -q --bin onehop-farm --bin onehop-swarm
# 1,000 members hold about 3,000 connections and sockets.
ulimit -n 20000 2>/dev/null || true
exec "$ROOT/target/release/onehop-swarm" "$@"
