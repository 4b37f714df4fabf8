#!/usr/bin/env bash
# Start the benchmark Kamailio registrar/proxy on loopback.
#   start.sh [PORT] [CHILDREN] [CPUSET]
# env: FOREGROUND=1 (run in foreground, log to stderr, Ctrl-C to stop)
#      SHM_MB (default 512; AUTH=htable: at least N*4 KB + 64 MB), PKG_MB (default 16),
#      HOST (default 127.0.0.1)
#      DOMAIN        served domain (alias, KAM_DOMAIN; the realm with AUTH); unset = example.test
#      AUTH=htable   digest auth (KAM_AUTH): 401 for REGISTER, 407 for an INVITE from
#                    DOMAIN, qop=auth, MD5; the HA1s in an in-memory htable loaded at
#                    start from AUTH_DB; returns once the htable holds all 2N entries
#      AUTH_DB       the db_text directory with the tables "htable" and "version"
#                    (bench/sip/auth_users.py write --out DIR --users N writes DIR/kamailio)
#      N             the number of users in AUTH_DB (sizes the load query and shm)
#      AUTH_SECRET   nonce secret (default: the fixed one in kamailio.cfg)
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
case "${AUTH:-0}" in
  0|"") ;;
  htable)
    [ -n "${AUTH_DB:-}" ] && [ -s "$AUTH_DB/htable" ] && [ -s "$AUTH_DB/version" ] ||
      { echo "AUTH=htable needs AUTH_DB=DIR with the tables htable and version (bench/sip/auth_users.py)" >&2; exit 2; }
    [ -n "${N:-}" ] || N=$(( $(wc -l <"$AUTH_DB/htable") / 2 ))
    # While the htable loads, db_text's cached copy of the table, the query's copy and the
    # htable peak at about 3 KB of shm per user; 1.8 KB stay, and usrloc adds about 1.2 KB per
    # contact.  So at least 4 KB per user + 64 MB (512 MB covers about 114,000 users).
    [ $(( N * 4 / 1024 + 64 )) -gt "$SHM_MB" ] && SHM_MB=$(( N * 4 / 1024 + 64 ))
    ;;
  *) echo "AUTH=$AUTH: only AUTH=htable (credentials in memory) is supported here" >&2; exit 2;;
esac
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
if [ -n "${DOMAIN:-}" ]; then
  ARGS+=(-A "KAM_DOMAIN=\"$DOMAIN\"")
fi
if [ "${AUTH:-0}" = htable ]; then
  # the one load query returns all 2N rows of the htable table
  ARGS+=(-A KAM_AUTH -A "KAM_AUTH_DB=\"text://$(cd "$AUTH_DB" && pwd)\"" -A "KAM_AUTH_ROWS=$(( 2 * N + 16 ))")
  [ -n "${AUTH_SECRET:-}" ] && ARGS+=(-A "KAM_AUTH_SECRET=\"$AUTH_SECRET\"")
  EXTRA+=" auth=htable:$AUTH_DB/htable users=$N shm=${SHM_MB}MB"
fi
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
if [ "${AUTH:-0}" = htable ]; then
  # the workers (and the control socket) start once the htable is loaded: wait for all 2N
  # entries (at most AUTH_LOAD_SECS, default 120)
  want=$(( 2 * N )); have=0
  for _ in $(seq $(( ${AUTH_LOAD_SECS:-120} * 5 ))); do
    have=$(kamcmd -s "unix:$CTL" htable.stats 2>/dev/null | awk '/name: auth/{a=1} a && /all:/{print $2; exit}')
    [ "${have:-0}" -ge "$want" ] && break
    kill -0 "$(cat "$PID")" 2>/dev/null || { echo "kamailio exited while loading the htable; see $RUN/kamailio-$PORT.log" >&2; exit 1; }
    sleep 0.2
  done
  [ "${have:-0}" -ge "$want" ] || { echo "kamailio's htable holds ${have:-0} of $want entries after ${AUTH_LOAD_SECS:-120} s" >&2; exit 1; }
  EXTRA+=" htable_items=$have"
fi
echo "kamailio started: udp:$HOST:$PORT pid $(cat "$PID") children=$CHILDREN cpuset=${CPUSET:-all} ctl=$CTL$EXTRA"
