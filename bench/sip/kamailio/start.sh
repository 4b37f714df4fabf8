#!/usr/bin/env bash
# Start the benchmark Kamailio registrar/proxy on loopback.
#   start.sh [PORT] [CHILDREN] [CPUSET]
# env: FOREGROUND=1 (run in foreground, log to stderr, Ctrl-C to stop)
#      SHM_MB (default 512), PKG_MB (default 16), HOST (default 127.0.0.1)
#      DMQ_PEER=sip:127.0.0.1:P   usrloc replication (KAM_DMQ, dmq + dmq_usrloc)
#                    with the node whose DMQ address is P; needs DMQ_PORT
#      DMQ_PORT      this node's own DMQ (KDMQ) port, a second UDP socket
#      DMQ_CHILDREN  UDP workers on the DMQ socket (default 2)
#   e.g. a replicated pair (as in shared/bench):
#      DMQ_PORT=5062 DMQ_PEER=sip:127.0.0.1:5063 ./kamailio/start.sh 5060 4
#      DMQ_PORT=5063 DMQ_PEER=sip:127.0.0.1:5062 ./kamailio/start.sh 5061 4
#      ./kamailio/dmq_wait.sh 5060 5061
# Pid file: $BENCH_STATE/kamailio/kamailio-PORT.pid  (stop.sh PORT kills exactly that pid)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PORT="${1:-5060}"
CHILDREN="${2:-4}"
CPUSET="${3:-}"
HOST="${HOST:-127.0.0.1}"
case "$HOST" in 127.*|::1|localhost) ;; *) echo "refusing non-loopback HOST=$HOST" >&2; exit 2;; esac
SHM_MB="${SHM_MB:-512}"
PKG_MB="${PKG_MB:-16}"
RUN="${BENCH_STATE:-/tmp/onehop-bench-sip}/kamailio"; mkdir -p "$RUN"
PID="$RUN/kamailio-$PORT.pid"
CTL="$RUN/kamailio-$PORT.ctl"

if [ -s "$PID" ] && kill -0 "$(cat "$PID")" 2>/dev/null; then
  echo "kamailio already running on port $PORT (pid $(cat "$PID"))"; exit 0
fi
rm -f "$PID" "$CTL"

TS=(); [ -n "$CPUSET" ] && TS=(taskset -c "$CPUSET")
ARGS=(-f "$HERE/kamailio.cfg" -P "$PID" -Y "$RUN" -w "$RUN" -m "$SHM_MB" -M "$PKG_MB" -n "$CHILDREN"
      -A "KAM_LISTEN=udp:$HOST:$PORT" -A "KAM_CTL=\"unix:$CTL\"")
EXTRA=""
if [ -n "${DMQ_PEER:-}" ]; then
  [ -n "${DMQ_PORT:-}" ] || { echo "DMQ_PEER needs DMQ_PORT (this node's KDMQ port)" >&2; exit 2; }
  [ "$DMQ_PORT" != "$PORT" ] || { echo "DMQ_PORT must differ from PORT" >&2; exit 2; }
  case "$DMQ_PEER" in sip:127.*:[0-9]*) ;; *) echo "refusing DMQ_PEER=$DMQ_PEER (want sip:127.x.y.z:PORT)" >&2; exit 2;; esac
  ARGS+=(-A KAM_DMQ -A "KAM_DMQ_LISTEN=udp:$HOST:$DMQ_PORT" -A "KAM_DMQ_PORT=$DMQ_PORT"
         -A "KAM_DMQ_ADDR=\"sip:$HOST:$DMQ_PORT\"" -A "KAM_DMQ_PEER=\"$DMQ_PEER\""
         -A "KAM_DMQ_CHILDREN=${DMQ_CHILDREN:-2}")
  EXTRA+=" dmq=sip:$HOST:$DMQ_PORT peer=$DMQ_PEER"
fi

kamailio -c "${ARGS[@]}" >/dev/null 2>"$RUN/check-$PORT.log" || { cat "$RUN/check-$PORT.log" >&2; exit 1; }

if [ "${FOREGROUND:-0}" = 1 ]; then
  exec "${TS[@]}" kamailio "${ARGS[@]}" -DD -E
fi
"${TS[@]}" kamailio "${ARGS[@]}" >"$RUN/kamailio-$PORT.log" 2>&1
for _ in $(seq 50); do [ -s "$PID" ] && break; sleep 0.1; done
[ -s "$PID" ] || { echo "kamailio failed to start; see $RUN/kamailio-$PORT.log" >&2; exit 1; }
sleep 0.5
echo "kamailio started: udp:$HOST:$PORT pid $(cat "$PID") children=$CHILDREN cpuset=${CPUSET:-all} ctl=$CTL$EXTRA"
