#!/usr/bin/env bash
# Stop the benchmark Kamailio started by start.sh on PORT (by its pid file only).
#   stop.sh [PORT]
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PORT="${1:-5060}"
PID="${BENCH_STATE:-/tmp/onehop-bench-sip}/kamailio/kamailio-$PORT.pid"
[ -s "$PID" ] || { echo "no pid file for port $PORT"; exit 0; }
P="$(cat "$PID")"
if kill -0 "$P" 2>/dev/null; then
  kill -TERM "$P"
  for _ in $(seq 50); do kill -0 "$P" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$P" 2>/dev/null && kill -KILL "$P"
  echo "kamailio (pid $P, port $PORT) stopped"
fi
rm -f "$PID"
