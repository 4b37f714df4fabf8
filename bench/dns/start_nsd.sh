#!/usr/bin/env bash
# Serve one zone file with NSD on ADDR@PORT (UDP+TCP), for bench/dns.sh.
#   start_nsd.sh ZONE_FILE ORIGIN ADDR PORT RUNDIR [SERVERS=1] [CPUSET]
# Adapted from the shared peer-baseline harness (bench/dns/start_nsd.sh there): one zone, any
# loopback address, a run directory of our own. Pid file: RUNDIR/nsd.pid (stop_nsd.sh RUNDIR
# stops exactly that pid).
set -euo pipefail
ZONE="${1:?zone file}"; ORIGIN="${2:?origin}"; ADDR="${3:?address}"; PORT="${4:?port}"
RUN="${5:?run dir}"; SERVERS="${6:-1}"; CPUSET="${7:-}"
case "$ADDR" in 127.*) ;; *) echo "start_nsd.sh: refusing non-loopback address $ADDR" >&2; exit 2;; esac
mkdir -p "$RUN"
RUN="$(cd "$RUN" && pwd)"; ZONE="$(cd "$(dirname "$ZONE")" && pwd)/$(basename "$ZONE")"
PID="$RUN/nsd.pid"
if [ -s "$PID" ] && kill -0 "$(cat "$PID")" 2>/dev/null; then
  echo "start_nsd.sh: nsd already running from $RUN (pid $(cat "$PID"))" >&2; exit 1
fi
cat >"$RUN/nsd.conf" <<CONF
server:
  ip-address: $ADDR@$PORT
  port: $PORT
  do-ip6: no
  server-count: $SERVERS
  username: ""
  chroot: ""
  zonesdir: "$RUN"
  pidfile: "$PID"
  database: ""
  zonelistfile: "$RUN/zone.list"
  xfrdfile: "$RUN/xfrd.state"
  xfrdir: "$RUN"
  logfile: "$RUN/nsd.log"
  verbosity: 0
  hide-version: yes
  hide-identity: yes
  round-robin: no
  # NSD ships with response-rate limiting on (200 qps per source /24): loopback load would
  # be throttled, so it is off for benchmarking.
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: $ORIGIN
  zonefile: "$ZONE"
CONF
nsd-checkconf "$RUN/nsd.conf"
nsd-checkzone "$ORIGIN" "$ZONE" >/dev/null
TS=(); [ -n "$CPUSET" ] && TS=(taskset -c "$CPUSET")
"${TS[@]}" nsd -c "$RUN/nsd.conf"
for _ in $(seq 50); do [ -s "$PID" ] && break; sleep 0.1; done
[ -s "$PID" ] || { echo "nsd failed; see $RUN/nsd.log" >&2; cat "$RUN/nsd.log" >&2; exit 1; }
sleep 0.5
echo "nsd started: $ADDR:$PORT pid $(cat "$PID") server-count=$SERVERS cpuset=${CPUSET:-all}"
