#!/usr/bin/env bash
# Authenticated REGISTER/s: a 3-node onehop farm against Kamailio with digest authentication
# and the credentials in memory, side by side in one run, with the same users, the same SIPp
# scenario and the same settings.
#
# usage: bench/auth.sh [--duration SECS] [--users N] [--limit L] [--reps R]
#                      [--servers "kamailio onehop"] [--pinned] [--help]
#   --duration  seconds of load per run (default 20; DURATION)
#   --users     users, the same N for both servers (default 60,000; N)
#   --limit     REGISTER exchanges in flight, SIPp -l (default 200; LIMIT)
#   --reps      runs per server, each against a freshly started server (default 1; REPS);
#               the servers take turns going first; the table shows the median
#   --servers   a subset of "kamailio onehop" (default both; SERVERS)
#   --pinned    the server on CPU 1 (Kamailio via taskset; every thread of the farm via
#               taskset -a -p), SIPp on CPU 0; default: unpinned
#
# One measured "call" is one registration: REGISTER -> 401 -> REGISTER with credentials ->
# 200 (bench/sip/sipp/register_auth.xml; a 407 is handled too). SIPp runs a closed loop
# (-l LIMIT in flight, no rate cap) for DURATION seconds, cycling through the users
# (SEQUENTIAL injection file; after the first pass a registration refreshes a binding), then
# stops creating registrations (SIGUSR1) and lets those in flight finish.
#
# The users: bench/sip/auth_users.py writes, for N users user1..userN of DOMAIN with
# passwords derived from AUTH_SEED: users.csv (SIPp, -inf; "user;password"), the onehop
# import CSV and Kamailio's htable table, all in WORK/users-N-DOMAIN (files mode 0600; no
# password is printed).
#
# The servers (each started fresh for each run, stopped after it):
#   kamailio  bench/sip/kamailio/start.sh with AUTH=htable: one Kamailio 5.6, KAM_CHILDREN (4)
#             UDP workers, usrloc in memory, digest auth (MD5, qop=auth, realm = DOMAIN) with
#             the HA1s in an htable loaded at start (no database on the request path)
#   onehop    onehop-farm up --detach --nodes 3 --dns 0 --no-demo-accounts --domain DOMAIN
#             (3 event servers, 3 managers, 3 nodes with FARM_ROLES, R = 2); the domain and the
#             N accounts provisioned with DIR/bin/onehop-admin (domains add; import of the CSV),
#             then a wait until the active manager has pushed every change to the nodes;
#             SIPp sends to node1 only (one entry node; the realm is the farm's domain)
# Before each measured run, a probe of 5 registrations says what the server does: challenge
# (401/407) and accept the credentials, register at once without a challenge, or fail.
#
# Until onehop's proxy challenges, the onehop half registers without a challenge: the
# scenario accepts a 200 to the first REGISTER and counts it ("unchallenged"), and the table
# marks that figure NOT AUTHENTICATED (plain REGISTER/s, not comparable with Kamailio's
# authenticated figure) and gives no ratio for it. STRICT=1 makes that an error (exit 1).
# SIPp 3.6.1 answers only MD5 challenges: if the first challenge it finds is SHA-256, it stops
# ("authentication must use MD5 or AKAv1-MD5"), and the script says so.
#
# Output: per run one RESULT line (SIPp's figures) and one COUNTS line (challenges, unchallenged
# 200s, failures by cause); at the end a table (REGISTER/s, failures = SIPp calls without a
# final 200, rtd p50/p99 of the whole exchange, server CPU per registration, what the server
# answered) and the ratio onehop / Kamailio; raw files in WORK/results-TIME/ (runs.tsv,
# results.log, summary.md, one directory per run with SIPp's files, the server's counters and,
# for onehop, the farm's logs). Everything listens on loopback addresses of its own; every
# step is bounded in time; on exit (also Ctrl-C) it stops SIPp, Kamailio and the farm it
# started, and nothing else.
#
# Exit status: 0 when every run completed (with STRICT=1: and every server challenged),
# 1 otherwise, 2 for a usage error.
#
# env: N=60000 DURATION=20 LIMIT=200 REPS=1 SERVERS="kamailio onehop" DOMAIN=example.test
#      AUTH_SEED (the password seed; default: auth_users.py's), STRICT=0,
#      BASE_IP=127.0.95.1 (farm; node1 = BASE_IP+6), SIPP_IP=127.0.96.1 SIPP_PORT=5070,
#      KAM_HOST=127.0.97.1 KAM_PORT=5060 KAM_CHILDREN=4,
#      FARM_ROLES=sip_proxy,registrar, FARM_BIN (default target/release/onehop-farm),
#      FARM_NODE_SET (node settings for every node, space-separated KEY=VALUE, each passed as
#      `onehop-farm up --node-set KEY=VALUE`; e.g. FARM_NODE_SET='sip_auth_algorithms=["MD5"]'),
#      SKIP_BUILD=1 SKIP_INSTALL=1, WORK=/tmp/onehop-bench-auth,
#      PUSH_WAIT=180 (s for the accounts to reach the nodes), DRAIN=20 (s for the registrations
#      in flight after the load stops), LOAD_MAX=1.5 LOAD_WAIT=300 LOAD_WAIT_EACH=90 (wait
#      for a 1-minute load average below LOAD_MAX: at most LOAD_WAIT s before the first run,
#      at most LOAD_WAIT_EACH s before each later one; a run's own load takes about a minute
#      to decay)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE="$ROOT/bench/sip"
DURATION=${DURATION:-20}
N=${N:-60000}
LIMIT=${LIMIT:-200}
REPS=${REPS:-1}
SERVERS=${SERVERS:-kamailio onehop}
PINNED=0
usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
    --duration) DURATION=${2:-}; shift ;;
    --users) N=${2:-}; shift ;;
    --limit) LIMIT=${2:-}; shift ;;
    --reps) REPS=${2:-}; shift ;;
    --servers) SERVERS=${2:-}; shift ;;
    --pinned) PINNED=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "auth.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
N=${N//,/}; N=${N//_/}
for v in DURATION N LIMIT REPS; do
    case "${!v}" in '' | *[!0-9]*) echo "auth.sh: $v must be a positive integer (got '${!v}')" >&2; exit 2 ;; esac
    [ "${!v}" -gt 0 ] || { echo "auth.sh: $v must be positive" >&2; exit 2; }
done
for s in $SERVERS; do
    case "$s" in kamailio | onehop) ;; *) echo "auth.sh: unknown server $s (want kamailio, onehop)" >&2; exit 2 ;; esac
done
DOMAIN=${DOMAIN:-example.test}
BASE_IP=${BASE_IP:-127.0.95.1}
SIPP_IP=${SIPP_IP:-127.0.96.1}
SIPP_PORT=${SIPP_PORT:-5070}
KAM_HOST=${KAM_HOST:-127.0.97.1}
KAM_PORT=${KAM_PORT:-5060}
KAM_CHILDREN=${KAM_CHILDREN:-4}
FARM_ROLES=${FARM_ROLES:-sip_proxy,registrar}
read -ra FARM_SETS <<<"${FARM_NODE_SET:-}"
PUSH_WAIT=${PUSH_WAIT:-180}
DRAIN=${DRAIN:-20}
LOAD_MAX=${LOAD_MAX:-1.5}
LOAD_WAIT=${LOAD_WAIT:-300}
LOAD_WAIT_EACH=${LOAD_WAIT_EACH:-90}
STRICT=${STRICT:-0}
WORK=${WORK:-/tmp/onehop-bench-auth}
for a in "$BASE_IP" "$SIPP_IP" "$KAM_HOST"; do
    case "$a" in 127.*) ;; *) echo "auth.sh: refusing non-loopback address $a" >&2; exit 2 ;; esac
done
case "$WORK" in /*) ;; *) WORK="$PWD/$WORK" ;; esac
[ "$WORK" != / ] || { echo "auth.sh: WORK must not be /" >&2; exit 2; }
export BENCH_STATE="$WORK"
if [ "$PINNED" = 1 ]; then SRV_CPU=1; GEN_CPU=0; else SRV_CPU=""; GEN_CPU=""; fi

# --- install, build ----------------------------------------------------------------------------
if [ -z "${SKIP_INSTALL:-}" ]; then
    timeout 900 "$HERE/install.sh" || { echo "auth.sh: install failed" >&2; exit 1; }
fi
for b in sipp kamailio kamcmd taskset python3 curl; do
    command -v "$b" >/dev/null || { echo "auth.sh: $b is missing" >&2; exit 1; }
done
FARM_BIN=${FARM_BIN:-$ROOT/target/release/onehop-farm}
if [[ " $SERVERS " == *" onehop "* ]]; then
    if [ -z "${SKIP_BUILD:-}" ]; then
        (cd "$ROOT" && timeout 3600 cargo build --release -p onehop-farm) || { echo "auth.sh: build failed" >&2; exit 1; }
    fi
    [ -x "$FARM_BIN" ] || { echo "auth.sh: no $FARM_BIN (build it, or set FARM_BIN)" >&2; exit 1; }
fi

OUT="$WORK/results-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
ALL="$OUT/runs.tsv"
: >"$ALL"
FARM="$WORK/farm"

load1() { cut -d' ' -f1 /proc/loadavg; }
wait_quiet() {  # wait_quiet SECS: poll the 1-minute load average until it is below LOAD_MAX
    local until=$((SECONDS + $1))
    while awk -v l="$(load1)" -v m="$LOAD_MAX" 'BEGIN{exit !(l >= m)}' && [ $SECONDS -lt $until ]; do
        echo "  load average $(cut -d' ' -f1-3 /proc/loadavg) >= $LOAD_MAX, waiting ($((until - SECONDS)) s left)"
        sleep 15
    done
}
udp_port_busy() {  # udp_port_busy ADDR PORT
    ss -Hlun 2>/dev/null | awk -v a="$1:$2" -v w="0.0.0.0:$2" '$4 == a || $4 == w {f=1} END{exit !f}'
}
# cpu_of PID...: CPU seconds (user + system) used so far by these processes
cpu_of() {
    python3 - "$@" <<'PY'
import os, sys
hz = os.sysconf("SC_CLK_TCK"); t = 0
for p in sys.argv[1:]:
    try:
        f = open("/proc/%s/stat" % p).read().rsplit(")", 1)[1].split()
        t += int(f[11]) + int(f[12])
    except Exception:
        pass
print("%.2f" % (t / hz))
PY
}

# --- the users -----------------------------------------------------------------------------------
USERS="$WORK/users-$N-$DOMAIN"
echo "auth.sh: writing the test users ($N users of $DOMAIN) to $USERS"
timeout 300 python3 "$HERE/auth_users.py" write --out "$USERS" --users "$N" --domain "$DOMAIN" >/dev/null ||
    { echo "auth.sh: auth_users.py failed" >&2; exit 1; }

# --- SIPp ----------------------------------------------------------------------------------------
SIPP_PID=""
# sipp_run DIR TARGET SECONDS|-m COUNT: register_auth.xml against TARGET (ip:port), closed loop
# with LIMIT in flight; for SECONDS (then SIGUSR1: no new registrations, those in flight end,
# at most DRAIN s), or for COUNT registrations (-m, at most 30 s). Leaves SIPp's files in DIR.
sipp_run() {
    local dir=$1 target=$2 secs=$3 count=${4:-} pin=() args rc
    rm -rf "$dir"; mkdir -p "$dir"
    [ -n "$GEN_CPU" ] && pin=(taskset -c "$GEN_CPU")
    args=("$target" -sf "$HERE/sipp/register_auth.xml" -inf "$USERS/users.csv"
          -key domain "$DOMAIN" -auth_uri "$DOMAIN" -i "$SIPP_IP" -p "$SIPP_PORT" -t u1
          -max_recv_loops 1000 -buff_size 1048576 -nostdin
          -trace_stat -stf stat.csv -fd 1 -trace_rtt -rtt_freq 200 -trace_counts
          -trace_screen -screen_file screen.txt -trace_err -error_file errors.log)
    if [ -n "$count" ]; then args+=(-m "$count" -r 10 -l 1); else args+=(-r 100000 -l "$LIMIT"); fi
    ( cd "$dir" && exec "${pin[@]}" sipp "${args[@]}" >sipp.out 2>&1 ) &
    SIPP_PID=$!
    local end=$((SECONDS + secs))
    while kill -0 "$SIPP_PID" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.2; done
    if kill -0 "$SIPP_PID" 2>/dev/null && [ -z "$count" ]; then
        kill -USR1 "$SIPP_PID" 2>/dev/null  # once: a second one aborts the calls in flight
        end=$((SECONDS + DRAIN))
        while kill -0 "$SIPP_PID" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.2; done
    fi
    if kill -0 "$SIPP_PID" 2>/dev/null; then
        echo "  SIPp did not finish in time; stopping it" | tee -a "$dir/notes"
        kill -USR1 "$SIPP_PID" 2>/dev/null; sleep 3
        kill -KILL "$SIPP_PID" 2>/dev/null
    fi
    wait "$SIPP_PID" 2>/dev/null
    rc=$?
    SIPP_PID=""
    echo "$rc" >"$dir/sipp.rc"
    # errors.log can get large when everything fails; keep the head
    if [ -f "$dir/errors.log" ] && [ "$(stat -c %s "$dir/errors.log")" -gt 1000000 ]; then
        head -c 200000 "$dir/errors.log" >"$dir/errors.head.log"; rm -f "$dir/errors.log"
    fi
    return "$rc"
}
# sipp_explain DIR: why SIPp stopped, when it stopped on an error of its own (exit status other
# than 0, all calls succeeded, and 1, some failed)
sipp_explain() {
    local f rc
    rc=$(cat "$1/sipp.rc" 2>/dev/null)
    for f in "$1/sipp.out" "$1/errors.log" "$1/errors.head.log"; do
        [ -f "$f" ] || continue
        if grep -q "authentication must use MD5" "$f"; then
            echo "  SIPp stopped: the challenge's first algorithm is not MD5 (SIPp 3.6.1 answers only MD5 challenges; with several WWW-Authenticate headers it takes the first). Offer MD5 first, or MD5 only, to measure with SIPp."
            return
        fi
    done
    case "$rc" in
    0 | 1 | "") ;;
    *)
        echo "  SIPp exited with status $rc; the end of its output ($1/sipp.out):"
        grep -v '^ *$' "$1/sipp.out" 2>/dev/null | tail -4 | cut -c1-300 | sed 's/^/    /'
        ;;
    esac
}
# verdict DIR: what the server did, from the counts (one word)
verdict() {
    ( . "$1/counts.env"; . "$1/summary.env"
      ch=$(( ${CHALLENGED_401:-0} + ${CHALLENGED_407:-0} ))
      if [ "${OK:-0}" = 0 ]; then echo failed
      elif [ "${UNCHALLENGED:-0}" -gt 0 ] && [ "${AUTH_200:-0}" = 0 ]; then echo unchallenged
      elif [ "${UNCHALLENGED:-0}" -gt 0 ]; then echo mixed
      elif [ "$ch" -gt 0 ]; then echo authenticated
      else echo unknown; fi )
}
summarize_run() {  # summarize_run DIR LABEL: RESULT + COUNTS lines
    python3 "$HERE/lib/sipp_summary.py" "$1" "$2" 2>/dev/null || echo "RESULT $2 no statistics (see $1)"
    python3 "$HERE/lib/auth_counts.py" "$1" 2>/dev/null || echo "COUNTS none"
}

# probe DIR TARGET: 5 registrations, one at a time; prints what the server did
probe() {
    local v
    sipp_run "$1" "$2" 30 5 >/dev/null 2>&1
    summarize_run "$1" probe >/dev/null
    if [ -f "$1/summary.env" ] && [ -f "$1/counts.env" ]; then
        v=$(verdict "$1")
        ( . "$1/counts.env"; . "$1/summary.env"
          echo "  probe: 5 registrations: ok=$OK failed=$FAILED; challenged with 401: $CHALLENGED_401, with 407: $CHALLENGED_407; registered without a challenge: $UNCHALLENGED -> $v" )
    else
        echo "  probe: no result (SIPp exit status $(cat "$1/sipp.rc" 2>/dev/null))"
    fi
    sipp_explain "$1"
}

# --- Kamailio ------------------------------------------------------------------------------------
KAM_STARTED=""
kam_start() {
    local p=$KAM_PORT
    while udp_port_busy "$KAM_HOST" "$p"; do
        p=$((p + 2))
        [ "$p" -gt $((KAM_PORT + 40)) ] && { echo "auth.sh: no free UDP port for Kamailio on $KAM_HOST" >&2; return 1; }
    done
    KAM_USE_PORT=$p
    AUTH=htable AUTH_DB="$USERS/kamailio" N="$N" DOMAIN="$DOMAIN" HOST="$KAM_HOST" \
        timeout 200 "$HERE/kamailio/start.sh" "$p" "$KAM_CHILDREN" "$SRV_CPU" | sed 's/^/  /' || return 1
    [ -s "$WORK/kamailio/kamailio-$p.pid" ] || return 1
    KAM_STARTED=$p
}
kam_stop() {
    [ -n "$KAM_STARTED" ] && timeout 30 "$HERE/kamailio/stop.sh" "$KAM_STARTED" >/dev/null
    KAM_STARTED=""
}
kam_pids() {
    local main
    main=$(cat "$WORK/kamailio/kamailio-$KAM_STARTED.pid" 2>/dev/null) || return 0
    echo "$main $(pgrep -P "$main" | tr '\n' ' ')"
}
kam_counters() {  # the replies Kamailio sent, and its contacts
    local k out=""
    for k in 401_replies 407_replies 200_replies 403_replies rcv_requests_register location_contacts; do
        out+=" $k=$(kamcmd -s "unix:$WORK/kamailio/kamailio-$KAM_STARTED.ctl" stats.get_statistics "$k" 2>/dev/null | awk -F' = ' 'NR==1{print $2}')"
    done
    echo "server:$out"
}

# --- the farm ------------------------------------------------------------------------------------
FARM_UP=""
farm_down() {
    if [ -n "$FARM_UP" ] || [ -f "$FARM/farm.json" ]; then
        timeout 60 "$FARM_BIN" down --dir "$FARM" >/dev/null 2>&1 || true
        FARM_UP=""
    fi
}
fj() {  # fj PYTHON-EXPRESSION over j = farm.json (members by name in m)
    python3 - "$FARM/farm.json" "$1" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
m = {x["name"]: x for x in j["members"]}
v = eval(sys.argv[2])
print(" ".join(map(str, v)) if isinstance(v, list) else v)
PY
}
farm_pids() { fj '[x["pid"] for x in j["members"] if x.get("pid")] + ([j["supervisor_pid"]] if j.get("supervisor_pid") else [])'; }
metrics_sum() {  # metrics_sum KIND REGEX: the sum of the matching metric lines over the members of KIND
    local ip port
    fj "[x['ip'] + ':' + str(x.get('ports', {}).get('metrics', 9100)) for x in j['members'] if x['kind'] == '$1']" |
        tr ' ' '\n' | while read -r a; do [ -n "$a" ] && timeout 5 curl -s "http://$a/metrics"; done |
        awk -v re="$2" '$0 !~ /^#/ && $1 ~ re {s += $NF} END {printf "%d", s}'
}
metrics_max() {
    fj "[x['ip'] + ':' + str(x.get('ports', {}).get('metrics', 9100)) for x in j['members'] if x['kind'] == '$1']" |
        tr ' ' '\n' | while read -r a; do [ -n "$a" ] && timeout 5 curl -s "http://$a/metrics"; done |
        awk -v re="$2" '$0 !~ /^#/ && $1 ~ re && $NF > m {m = $NF} END {printf "%d", m}'
}
farm_counters() {  # the responses the nodes sent, and the AORs they hold
    local c out=""
    for c in 401 407 200 403; do
        out+=" ${c}_replies=$(metrics_sum node "^onehop_sip_responses_total[{].*code=\"$c\"")"
    done
    out+=" registrar_aors=$(metrics_sum node '^onehop_registrar_aors$')"
    echo "server:$out"
}
# farm_start LOG: a fresh farm (its Raft data removed first, so no account survives a run),
# the domain and the N accounts provisioned and pushed to the nodes
farm_start() {
    local log=$1 admin kv sets=()
    for kv in "${FARM_SETS[@]}"; do sets+=(--node-set "$kv"); done
    farm_down
    rm -rf "${FARM:?}/data"
    timeout 180 "$FARM_BIN" up --detach --dir "$FARM" --base-ip "$BASE_IP" --nodes 3 --dns 0 \
        --domain "$DOMAIN" --roles "$FARM_ROLES" --no-demo-accounts "${sets[@]}" >"$log" 2>&1 || {
        echo "auth.sh: onehop-farm up failed; its output ($log):" >&2
        tail -20 "$log" | sed 's/^/    /' >&2
        return 1
    }
    FARM_UP=1
    NODE1_IP=$(fj 'm["node1"]["ip"]'); NODE1_SIP=$(fj 'm["node1"].get("ports", {}).get("sip", 5060)')
    admin="$FARM/bin/onehop-admin"
    timeout 60 "$admin" --farm "$FARM" domains add "$DOMAIN" >>"$log" 2>&1 ||
        { echo "auth.sh: onehop-admin domains add $DOMAIN failed (see $log)" >&2; return 1; }
    local t0=$SECONDS
    timeout 900 "$admin" --farm "$FARM" --json import "$USERS/onehop-import.csv" --chunk 5000 \
        --import-id "authbench-$N" >"$log.import.json" 2>>"$log"
    local rc=$? added
    added=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("added", 0))' "$log.import.json" 2>/dev/null)
    echo "  imported ${added:-0} of $N accounts in $((SECONDS - t0)) s (onehop-admin import, exit $rc)"
    [ "$rc" = 0 ] && [ "${added:-0}" = "$N" ] ||
        { echo "auth.sh: the import did not add every account (see $log.import.json, $log)" >&2; return 1; }
    # every change pushed to the nodes: the active manager's provision_pushed_version reaches the
    # store's version
    local want have=0 until=$((SECONDS + PUSH_WAIT))
    want=$(timeout 30 "$admin" --farm "$FARM" --json status 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin).get("version", 0))' 2>/dev/null)
    while [ $SECONDS -lt $until ]; do
        have=$(metrics_max manager '^onehop_provision_pushed_version$')
        [ "${have:-0}" -ge "${want:-0}" ] && break
        sleep 1
    done
    if [ "${have:-0}" -ge "${want:-1}" ]; then
        echo "  the active manager pushed every change to the nodes (version $have) $((SECONDS - t0)) s after the import began"
    else
        echo "  WARNING: after $PUSH_WAIT s the managers had pushed up to version ${have:-?} of ${want:-?}; measuring anyway (a node reloads a missing account from the managers)"
    fi
    # no hand-off window open on any node (10 s after the farm's last ring change, its start):
    # the steady state, not a new owner fetching each key it lacks from the previous holders
    until=$((SECONDS + 30))
    while [ "$(metrics_max node '^onehop_store_handoff_open$')" != 0 ] && [ $SECONDS -lt $until ]; do
        sleep 1
    done
}

cleanup() {
    if [ -n "$SIPP_PID" ]; then kill -USR1 "$SIPP_PID" 2>/dev/null; sleep 1; kill -KILL "$SIPP_PID" 2>/dev/null; fi
    kam_stop
    farm_down
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the runs ------------------------------------------------------------------------------------
# run_one SERVER REP: a fresh server, a probe, the measured run, the server stopped
run_one() {
    local server=$1 rep=$2 d="$OUT/$1-$2" target pids cb ca lb la label v counters
    mkdir -p "$d"
    if [ "$FIRST_RUN" = 1 ]; then wait_quiet "$LOAD_WAIT"; FIRST_RUN=0; else wait_quiet "$LOAD_WAIT_EACH"; fi
    echo "== $server rep $rep (load $(cut -d' ' -f1-3 /proc/loadavg))"
    case "$server" in
    kamailio)
        kam_start || { echo "auth.sh: Kamailio did not start" >&2; kam_stop; return 1; }
        target="$KAM_HOST:$KAM_USE_PORT"
        label="Kamailio 5.6, $KAM_CHILDREN UDP workers, digest auth, HA1s in an htable"
        ;;
    onehop)
        farm_start "$d/farm-up.log" || { farm_down; return 1; }
        target="$NODE1_IP:$NODE1_SIP"
        label="onehop, 3 nodes ($FARM_ROLES), R=2${FARM_NODE_SET:+, $FARM_NODE_SET}, SIPp via node1"
        [ -n "$SRV_CPU" ] && for p in $(farm_pids); do taskset -a -p -c "$SRV_CPU" "$p" >/dev/null 2>&1; done
        ;;
    esac
    echo "  $label at $target; SIPp at $SIPP_IP:$SIPP_PORT${GEN_CPU:+ on CPU $GEN_CPU}"
    probe "$d/probe" "$target" | tee "$d/probe.txt"
    if [ "$server" = kamailio ]; then pids=$(kam_pids); else pids=$(farm_pids); fi
    lb=$(load1); cb=$(cpu_of $pids)
    sipp_run "$d/load" "$target" "$DURATION"
    ca=$(cpu_of $pids); la=$(load1)
    if [ "$server" = kamailio ]; then counters=$(kam_counters); else counters=$(farm_counters); fi
    summarize_run "$d/load" "auth-register $server rep=$rep target=$target l=$LIMIT duration=${DURATION}s" |
        tee -a "$OUT/results.log"
    echo "$counters (probe included)" | tee -a "$OUT/results.log" "$d/server.txt"
    sipp_explain "$d/load"
    if [ -f "$d/load/summary.env" ] && [ -f "$d/load/counts.env" ]; then
        v=$(verdict "$d/load")
        (
            . "$d/load/summary.env"; . "$d/load/counts.env"
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
                "$server" "$rep" "$OK_PER_S" "$OK" "$FAILED" "$RETRANS" "${RTD1_P50_MS:-nan}" "${RTD1_P99_MS:-nan}" \
                "$CHALLENGED_401" "$CHALLENGED_407" "$UNCHALLENGED" "$AUTH_200" "$LATE_401" \
                "$FAIL_UNEXPECTED_MSG/$FAIL_MAX_RETRANS/$FAIL_RECV_TIMEOUT/$FAIL_OTHER" \
                "$(awk -v a="$ca" -v b="$cb" 'BEGIN{printf "%.2f", a - b}')" "$lb→$la" "$v" "$ELAPSED"
        ) >>"$ALL"
        [ "$v" = unchallenged ] &&
            echo "  NOTE: $server registered every user WITHOUT a challenge: this run measured plain REGISTER/s, not authenticated registrations"
    else
        printf '%s\t%s\tmissing\t\t\t\t\t\t\t\t\t\t\t\t\t%s\tfailed\t\n' "$server" "$rep" "$lb→$la" >>"$ALL"
    fi
    if [ "$server" = onehop ]; then
        mkdir -p "$d/farm-logs"; cp "$FARM"/logs/*.log "$d/farm-logs/" 2>/dev/null
        farm_down
    else
        kam_stop
    fi
}

echo "auth.sh: results in $OUT; $N users, $LIMIT in flight, ${DURATION} s per run, $REPS run(s) per server, $([ "$PINNED" = 1 ] && echo "pinned (server CPU 1, SIPp CPU 0)" || echo unpinned)"
echo "load average now: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"
FAILED_RUNS=0
FIRST_RUN=1
for rep in $(seq "$REPS"); do
    read -ra sl <<<"$SERVERS"
    k=$(((rep - 1) % ${#sl[@]}))
    for server in "${sl[@]:k}" "${sl[@]:0:k}"; do
        run_one "$server" "$rep" || FAILED_RUNS=$((FAILED_RUNS + 1))
    done
done

# --- the table -----------------------------------------------------------------------------------
python3 - "$ALL" "$N" "$LIMIT" "$DURATION" "$KAM_CHILDREN" "$PINNED" "$FARM_ROLES${FARM_NODE_SET:+; $FARM_NODE_SET}" <<'PY' | tee "$OUT/summary.md"
import statistics, sys
path, n, limit, dur, kch, pinned, roles = sys.argv[1:8]
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
def f(x):
    try:
        return float(x)
    except ValueError:
        return float("nan")
names = {"kamailio": f"Kamailio 5.6, 1 instance, {kch} UDP workers, HA1s in an htable",
         "onehop": f"onehop, 3 nodes ({roles}), R=2, via node1"}
runs = {s: [r for r in rows if r[0] == s and r[2] != "missing"] for s in names}
missing = {s: sum(1 for r in rows if r[0] == s and r[2] == "missing") for s in names}
med = {s: statistics.median(f(r[2]) for r in v) for s, v in runs.items() if v}
auth = {s: all(r[16] == "authenticated" for r in v) for s, v in runs.items() if v}
print(f"Authenticated REGISTER (REGISTER -> 401 -> REGISTER with credentials -> 200), SIPp closed "
      f"loop, {limit} in flight, {dur} s per run, {int(n):,} users cycled in order; "
      f"{'pinned: server CPU 1, SIPp CPU 0' if pinned == '1' else 'unpinned'}. "
      f"Median of the runs [min-max]; failures = SIPp calls without a final 200 (by cause: "
      f"unexpected message / UDP retransmissions exhausted / receive timeout / other); "
      f"rtd = first REGISTER sent -> final 200, p50 / p99 in ms (SIPp's ~4 ms clock), median over "
      f"runs; server CPU = user+system time of every server process per registration; load = "
      f"1-min load average before→after each run.")
print()
print("| server | registrations/s | vs Kamailio | failures | rtd p50 / p99 ms | server CPU µs/reg | what the server answered (SIPp's counts) | load |")
print("|---|---|---|---|---|---|---|---|")
for srv, v in runs.items():
    if not v:
        if missing[srv]:
            print(f"| {names[srv]} | no result ({missing[srv]} run(s) failed) | - | - | - | - | - | - |")
        continue
    xs = [f(r[2]) for r in v]
    fig = f"**{med[srv]:,.0f}**" + (f" [{min(xs):,.0f}-{max(xs):,.0f}]" if len(xs) > 1 else "")
    verdicts = sorted(set(r[16] for r in v))
    if not auth[srv]:
        fig += " NOT AUTHENTICATED" if verdicts == ["unchallenged"] else f" ({'/'.join(verdicts)})"
    if missing[srv]:
        fig += f" ({missing[srv]} more run(s) failed)"
    if srv == "kamailio":
        ratio = "1.00"
    elif "kamailio" in med and auth.get("kamailio") and auth[srv]:
        ratio = f"**{med[srv] / med['kamailio']:.2f}**"
    else:
        ratio = "-"
    fails = sum(int(r[4]) for r in v); tot = sum(int(r[3]) + int(r[4]) for r in v)
    causes = [sum(int(r[13].split("/")[i]) for r in v) for i in range(4)]
    fs = f"{fails:,} of {tot:,}" + (f" ({100.0 * fails / tot:.2f}%)" if tot and fails else "") + \
         f" ({'/'.join(map(str, causes))}); retrans {sum(int(r[5]) for r in v):,}"
    lat = "%.0f / %.0f" % (statistics.median(f(r[6]) for r in v), statistics.median(f(r[7]) for r in v))
    cpu = [1e6 * f(r[14]) / int(r[3]) for r in v if int(r[3])]
    cpus = "%.0f" % statistics.median(cpu) if cpu else "-"
    tot_of = lambda i: sum(int(r[i]) for r in v)
    ans = (f"401 {tot_of(8):,}, 407 {tot_of(9):,}, 200 without a challenge {tot_of(10):,}, "
           f"200 to the credentials {tot_of(11):,}" + (" (all runs)" if len(v) > 1 else ""))
    print(f"| {names[srv]} | {fig} | {ratio} | {fs} | {lat} | {cpus} | {ans} | {', '.join(r[15] for r in v)} |")
print()
if "kamailio" not in med or "onehop" not in med:
    print("ratio onehop / Kamailio: - (not both measured)")
elif auth["kamailio"] and auth["onehop"]:
    print(f"ratio onehop / Kamailio, authenticated registrations/s: **{med['onehop'] / med['kamailio']:.2f}**")
else:
    who = " and ".join(s for s in ("kamailio", "onehop") if not auth[s])
    print(f"ratio onehop / Kamailio: not given, since {who} did not challenge every registration "
          f"(that figure is not an authenticated one). For the record only: "
          f"{med['onehop'] / med['kamailio']:.2f}")
PY
echo "raw lines: $ALL (one row per run), $OUT/results.log (SIPp's RESULT and COUNTS lines); SIPp's files, server counters and farm logs: $OUT/<server>-<rep>/"

status=0
[ "$FAILED_RUNS" = 0 ] || { echo "auth.sh: $FAILED_RUNS run(s) did not complete"; status=1; }
if [ "$STRICT" = 1 ] && grep -qvP '\tauthenticated\t[^\t]*$' "$ALL"; then
    echo "auth.sh: STRICT=1: a server did not authenticate every registration"; status=1
fi
exit $status
