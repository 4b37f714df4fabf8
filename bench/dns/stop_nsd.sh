#!/usr/bin/env bash
# Stop the nsd started by start_nsd.sh with run directory RUNDIR, by its pid file only.
#   stop_nsd.sh RUNDIR
set -uo pipefail
RUN="${1:?run dir}"
PID="$RUN/nsd.pid"
[ -s "$PID" ] || exit 0
P="$(cat "$PID")"
if kill -0 "$P" 2>/dev/null; then
  kill -TERM "$P"; for _ in $(seq 50); do kill -0 "$P" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$P" 2>/dev/null && kill -KILL "$P"
  echo "nsd (pid $P) stopped"
fi
rm -f "$PID"
