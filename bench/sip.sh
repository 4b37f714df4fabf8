#!/usr/bin/env bash
# SIPp against a 3-node onehop farm (R = 2), against one Kamailio as a registrar/proxy and
# against a pair of Kamailio instances that replicate their location table with DMQ, side by
# side in one run, with the same scenarios and the same settings (issues #4 and #9).
#
# usage: bench/sip.sh [--pinned | --both] [--reps N] [--ramp] [--sustained]
#                     [--only "reg calls calls2"] [--workers "1 2"]
#   (default)   unpinned: the kernel places the servers and SIPp on the CPUs
#   --pinned    the server under test on CPU 1 (Kamailio via taskset; every process of the
#               farm and all their threads via taskset -a -p), SIPp (UAC and UAS) on CPU 0
#   --both      unpinned, then pinned
#   --reps      runs per server, benchmark and mode (default 3); the table shows the median
#   --ramp      also run the fixed-rate ramps (max rate with <0.1% failures in 5 s steps;
#               REG_RATES, CALL_RATES override the steps)
#   --sustained also run calls at a fixed SUSTAIN_RATE (default 3000/s) for SUSTAIN_SECS
#               (default 60 s): longer than the 32 s completed transactions are kept
#   --only      a subset of: reg calls calls2 (default all three)
#   --workers "1 2"  scaling: the onehop benchmarks once per number of SIP worker shards, each
#               with a fresh farm whose nodes get `--set sip_workers=W --set threads=W`
#               (onehop-farm up --node-set); prints a scaling table (REGISTER/s, calls/s,
#               server CPU per operation by worker count). Only onehop runs, unless SERVERS names others.
#
# Servers (SERVERS, default "onehop kamailio kamailio-dmq"):
#   onehop        onehop-farm up --nodes 3 --dns 0 (3 event servers, 3 managers, 3 nodes,
#                 R = 2); SIPp sends to node1. SIP_WORKERS=W (unset = the node's default)
#                 passes sip_workers=W to every node; a node that does not know the key stops
#                 at start-up, and the script says so and exits (status 3) before measuring.
#   kamailio      one Kamailio, KAM_CHILDREN (4) UDP workers, usrloc in memory
#   kamailio-dmq  two Kamailio instances (A, B; KAM_CHILDREN UDP workers each, plus 2 DMQ
#                 workers) replicating usrloc to each other with dmq + dmq_usrloc, the
#                 Kamailio clustering that does the registrar's replication; SIPp's load
#                 goes to A. Ports KAM_PAIR_PORT (A), +1 (B), +2 and +3 (their DMQ sockets).
#
# Benchmarks (the peer-baseline harness of shared/bench, copied to bench/sip/):
#   reg     REGISTER closed loop: 150,000 distinct AORs, 200 in flight
#           (MODE=max LIMIT=200 bench/sip/run_register.sh HOST PORT)
#   calls   basic calls INVITE/200/ACK/BYE/200, closed loop, 200 concurrent, 15,000 calls; the
#           UAS registers and the UAC calls through the same proxy
#           (MODE=max LIMIT=200 COUNT=15000 bench/sip/run_calls.sh HOST PORT)
#   calls2  the same calls, the UAS registered via one member, the UAC calling via another:
#           onehop: UAS via node2, UAC via node1 (two nodes in the path, node1 -> node2 over
#           QUIC -> UAS); kamailio-dmq: UAS via B (its contact reaches A over DMQ), UAC via A
#           (A relays straight to the UAS: one proxy in the path); single Kamailio: none
# For kamailio-dmq, `reg` and `calls` load A only; after the REGISTER run the script waits (at
# most DMQ_CATCHUP s) until B holds every contact, before reading the servers' CPU time, so
# the replication is inside the CPU per REGISTER as it is for onehop (whose 200 waits for it).
# Every benchmark group (reg; calls + calls2; each ramp) runs against a freshly started server
# (farm, Kamailio or the Kamailio pair), as the peer harness does (a fresh farm is measured once
# every node answers a REGISTER and no node's hand-off window is open, 10 s after its start:
# the steady state between membership changes); the servers take turns going
# first (the list is rotated by one each repetition). Before each fresh server the script waits (at most LOAD_WAIT_EACH s) for the
# 1-minute load average to fall below LOAD_MAX, and it records the load average next to every
# figure, with the server's CPU time per operation and the UDP receive-buffer drops.
#
# What it does: installs SIPp and Kamailio if missing (bench/sip/install.sh: apt-get,
# idempotent, never starts distro services); builds onehop-farm in release mode; waits (at
# most LOAD_WAIT s) for a quieter machine; runs the matrix; prints one table (one row per mode,
# benchmark and server: ops/s, ratio to the single Kamailio, failures, rtd p50/p99, server CPU
# µs per REGISTER or call, load), with --workers a scaling table as well; writes the raw lines
# (runs.tsv: one row per run; results.log: SIPp's RESULT lines) and the table (summary.md) to
# WORK/results-<time>/; stops the farm and the Kamailio instances it started (nothing else).
# Every step is bounded in time.
# env: BASE_IP=127.0.90.1 (farm; node1 = BASE_IP+6), SIPP_IP=127.0.91.1 (SIPp's address),
#      KAM_HOST=127.0.0.1 KAM_PORT=5060 (the next free even port is taken if busy),
#      KAM_CHILDREN=4, N=150000, LIMIT=200, COUNT=15000, REG_SECS=300 CALL_SECS=120 (safety
#      timeouts only), LOAD_MAX=1.5 LOAD_WAIT=900 LOAD_WAIT_EACH=60,
#      KAM_PAIR_PORT=5062 (the DMQ pair: A, B, DMQ A, DMQ B; the next free block of 4 if
#      busy), DMQ_CATCHUP=60,
#      WORK=/tmp/onehop-bench-sip (farm, Kamailio state, raw SIPp output), SKIP_BUILD=1,
#      SKIP_INSTALL=1, SERVERS="onehop kamailio kamailio-dmq" (any subset),
#      SIP_WORKERS (node settings sip_workers and threads for every onehop run),
#      NODE_SET="KEY=VALUE ..." (more node settings, each passed as --node-set),
#      WORKERS_KEY=sip_workers (the node key that SIP_WORKERS and --workers set; another
#      integer key, e.g. lookup_connections, only to try the script on a build without it),
#      FARM_ROLES=sip_proxy,registrar (the nodes' roles: signalling only, like the Kamailio
#      set-up; add media_relay to measure calls with relay sessions), FARM_BIN (an onehop-farm built elsewhere), PERF=1 (perf record 10 s on
#      each node during the onehop REGISTER run, if perf works here)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE="$ROOT/bench/sip"
REPS=3
MODES="unpinned"
RAMP=0
SUSTAIN=0
ONLY="reg calls calls2"
WORKERS=""
while [ $# -gt 0 ]; do
    case "$1" in
    --pinned) MODES="pinned" ;;
    --both) MODES="unpinned pinned" ;;
    --reps) REPS=$2; shift ;;
    --ramp) RAMP=1 ;;
    --sustained) SUSTAIN=1 ;;
    --only) ONLY=$2; shift ;;
    --workers) WORKERS=$2; shift ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "sip.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
BASE_IP=${BASE_IP:-127.0.90.1}
SIPP_IP=${SIPP_IP:-127.0.91.1}
KAM_HOST=${KAM_HOST:-127.0.0.1}
KAM_PORT=${KAM_PORT:-5060}
KAM_CHILDREN=${KAM_CHILDREN:-4}
KAM_PAIR_PORT=${KAM_PAIR_PORT:-5062}
WORKERS_KEY=${WORKERS_KEY:-sip_workers}
DMQ_CATCHUP=${DMQ_CATCHUP:-60}
N=${N:-150000}
LIMIT=${LIMIT:-200}
COUNT=${COUNT:-15000}
REG_SECS=${REG_SECS:-300}
CALL_SECS=${CALL_SECS:-120}
LOAD_MAX=${LOAD_MAX:-1.5}
LOAD_WAIT=${LOAD_WAIT:-900}
LOAD_WAIT_EACH=${LOAD_WAIT_EACH:-60}
WORK=${WORK:-/tmp/onehop-bench-sip}
export BENCH_STATE="$WORK"
for w in $WORKERS ${SIP_WORKERS:-}; do
    case "$w" in *[!0-9]*) echo "sip.sh: worker counts must be integers (got $w)" >&2; exit 2 ;; esac
done
if [ -n "$WORKERS" ] && [ -n "${SIP_WORKERS:-}" ]; then
    echo "sip.sh: use either --workers or SIP_WORKERS" >&2; exit 2
fi
# The servers, in the order of the first repetition (later ones rotate it). onehop-wN is onehop
# with sip_workers=N (--workers).
if [ -n "$WORKERS" ]; then
    SERVER_LIST=""
    for w in $WORKERS; do SERVER_LIST="$SERVER_LIST onehop-w$w"; done
    for s in ${SERVERS:-}; do [ "$s" = onehop ] || SERVER_LIST="$SERVER_LIST $s"; done
else
    SERVER_LIST=${SERVERS:-onehop kamailio kamailio-dmq}
fi
for s in $SERVER_LIST; do
    case "$s" in onehop | onehop-w[0-9]* | kamailio | kamailio-dmq) ;;
    *) echo "sip.sh: unknown server $s (want onehop, kamailio, kamailio-dmq)" >&2; exit 2 ;; esac
done
for a in "$BASE_IP" "$SIPP_IP" "$KAM_HOST"; do
    case "$a" in 127.*) ;; *) echo "sip.sh: refusing non-loopback address $a" >&2; exit 2 ;; esac
done

# --- install, build --------------------------------------------------------------------------
if [ -z "${SKIP_INSTALL:-}" ]; then
    timeout 900 "$HERE/install.sh" || { echo "sip.sh: install failed" >&2; exit 1; }
fi
for b in sipp kamailio taskset python3 curl; do
    command -v "$b" >/dev/null || { echo "sip.sh: $b is missing" >&2; exit 1; }
done
if [ -z "${SKIP_BUILD:-}" ]; then
    (cd "$ROOT" && timeout 3600 cargo build --release -p onehop-farm) || { echo "sip.sh: build failed" >&2; exit 1; }
fi
FARM_BIN=${FARM_BIN:-$ROOT/target/release/onehop-farm}
[ -x "$FARM_BIN" ] || { echo "sip.sh: no $FARM_BIN" >&2; exit 1; }

FARM="$WORK/farm"
OUT="$WORK/results-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
ALL="$OUT/runs.tsv"
: >"$ALL"
NCPU=$(nproc)

load1() { cut -d' ' -f1 /proc/loadavg; }
udp_rcvbuf_errors() {  # the kernel's UDP RcvbufErrors counter (machine-wide)
    awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) c[$i] = i; h = 1 } else print $c["RcvbufErrors"] }' /proc/net/snmp
}
# wait_quiet SECS: poll the 1-minute load average every 15 s until it is below LOAD_MAX
wait_quiet() {
    local until=$((SECONDS + $1))
    while awk -v l="$(load1)" -v m="$LOAD_MAX" 'BEGIN{exit !(l >= m)}' && [ $SECONDS -lt $until ]; do
        echo "  load average $(cut -d' ' -f1-3 /proc/loadavg) >= $LOAD_MAX, waiting ($((until - SECONDS)) s left)"
        sleep 15
    done
}

udp_port_busy() {  # udp_port_busy ADDR PORT
    ss -Hlun 2>/dev/null | awk -v a="$1:$2" -v w="0.0.0.0:$2" -v w6="*:$2" \
        '$4 == a || $4 == w || $4 == w6 || $4 == "[::]:" substr(w, 9) {f=1} END{exit !f}'
}

# --- Kamailio --------------------------------------------------------------------------------
KAM_STARTED=""  # the SIP ports of the Kamailio instances this script runs now
kam_start() {  # kam_start CPUSET
    local p=$KAM_PORT
    while udp_port_busy "$KAM_HOST" "$p"; do
        echo "  $KAM_HOST:$p is taken, trying $((p + 2))"
        p=$((p + 2))
        [ "$p" -gt $((KAM_PORT + 40)) ] && { echo "sip.sh: no free port for Kamailio" >&2; return 1; }
    done
    KAM_USE_PORT=$p
    HOST="$KAM_HOST" timeout 30 "$HERE/kamailio/start.sh" "$p" "$KAM_CHILDREN" "$1" || return 1
    KAM_STARTED=$p
}
# kam_pair_start CPUSET: the DMQ pair, A on KAM_A_PORT and B on KAM_B_PORT, their KDMQ sockets
# on the next two ports; returns once each lists the other as an active DMQ node
kam_pair_start() {
    local p=$KAM_PAIR_PORT i busy
    while :; do
        busy=0
        for i in 0 1 2 3; do udp_port_busy "$KAM_HOST" $((p + i)) && busy=1; done
        [ $busy = 0 ] && break
        echo "  a port of $KAM_HOST:$p-$((p + 3)) is taken, trying $((p + 4))"
        p=$((p + 4))
        [ "$p" -gt $((KAM_PAIR_PORT + 80)) ] && { echo "sip.sh: no free ports for the Kamailio pair" >&2; return 1; }
    done
    KAM_A_PORT=$p; KAM_B_PORT=$((p + 1))
    HOST="$KAM_HOST" DMQ_PORT=$((p + 2)) DMQ_PEER="sip:$KAM_HOST:$((p + 3))" \
        timeout 30 "$HERE/kamailio/start.sh" "$KAM_A_PORT" "$KAM_CHILDREN" "$1" || return 1
    KAM_STARTED=$KAM_A_PORT
    HOST="$KAM_HOST" DMQ_PORT=$((p + 3)) DMQ_PEER="sip:$KAM_HOST:$((p + 2))" \
        timeout 30 "$HERE/kamailio/start.sh" "$KAM_B_PORT" "$KAM_CHILDREN" "$1" || return 1
    KAM_STARTED="$KAM_A_PORT $KAM_B_PORT"
    TIMEOUT=20 timeout 30 "$HERE/kamailio/dmq_wait.sh" "$KAM_A_PORT" "$KAM_B_PORT" ||
        { echo "sip.sh: the Kamailio pair's DMQ nodes did not see each other" >&2; return 1; }
}
kam_stop() {
    local p
    for p in $KAM_STARTED; do
        timeout 30 "$HERE/kamailio/stop.sh" "$p" >/dev/null
    done
    KAM_STARTED=""
}
kam_stat() {  # kam_stat PORT NAME (lib/common.sh's, with this script's state directory)
    (. "$HERE/lib/common.sh" && kam_stat "$@")
}

# --- the farm --------------------------------------------------------------------------------
FARM_UP=""
farm_down() {
    if [ -n "$FARM_UP" ] || [ -f "$FARM/farm.json" ]; then
        timeout 60 "$FARM_BIN" down --dir "$FARM" >/dev/null 2>&1 || true
        FARM_UP=""
    fi
}
farm_field() {  # farm_field NAME FIELD  (ip | pid | sip | metrics)
    python3 - "$FARM/farm.json" "$1" "$2" <<'PY'
import json, sys
m = [x for x in json.load(open(sys.argv[1]))["members"] if x["name"] == sys.argv[2]][0]
f = sys.argv[3]
if f in ("sip", "metrics"):
    p = m.get("ports", {}).get(f)
    print(p if p is not None else (5060 if f == "sip" else 9100))
else:
    print(m[f])
PY
}
farm_pids() {
    python3 - "$FARM/farm.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
pids = [m["pid"] for m in j["members"] if m.get("pid")]
if j.get("supervisor_pid"):
    pids.append(j["supervisor_pid"])
print(" ".join(str(p) for p in pids))
PY
}
# node_start_failed LOG WORKERS: explain why `onehop-farm up` failed, from its output
node_start_failed() {
    local log=$1 w=$2
    echo "sip.sh: the onehop farm did not start; output of onehop-farm up ($log):" >&2
    sed 's/^/    /' "$log" | tail -25 >&2
    if grep -q "unexpected argument '--node-set'" "$log"; then
        echo "sip.sh: NODE START FAILED: this onehop-farm ($FARM_BIN) has no --node-set flag, so it cannot pass $WORKERS_KEY=$w to the nodes; build onehop-farm from branch bench or later" >&2
    elif grep -q "unknown field \`$WORKERS_KEY\`" "$log"; then
        echo "sip.sh: NODE START FAILED: the node does not know the setting $WORKERS_KEY (SIP_WORKERS / --workers, here $WORKERS_KEY=$w): this build predates it. Run without SIP_WORKERS and --workers, or with a build that has $WORKERS_KEY" >&2
    elif grep -q "exited during start-up" "$log"; then
        echo "sip.sh: NODE START FAILED: $(grep -m1 'exited during start-up' "$log"); its error: $(grep -m1 -E 'error' "$log" | grep -v 'onehop-farm: error' | head -c 400)" >&2
    fi
}
# farm_start LOG [WORKERS]: a fresh farm; WORKERS (or else SIP_WORKERS) sets sip_workers on
# every node. Returns 3 if a node failed to start, 1 if the farm is up but not answering.
farm_start() {
    farm_down
    # Unauthenticated, like the Kamailio it is compared with (bench/auth.sh measures the
    # authenticated rate).
    local log="$1" w="${2:-${SIP_WORKERS:-}}" sets=(--node-set 'sip_auth="off"')
    # The node's runtime gets as many threads as it has SIP workers (onehop-farm up otherwise
    # gives each of the 3 nodes its share of the CPUs). With another WORKERS_KEY (an older
    # build), only that key is set.
    if [ -n "$w" ]; then
        sets+=(--node-set "$WORKERS_KEY=$w")
        [ "$WORKERS_KEY" = sip_workers ] && sets+=(--node-set "threads=$w")
    fi
    local kv
    for kv in ${NODE_SET:-}; do sets+=(--node-set "$kv"); done
    timeout 180 "$FARM_BIN" up --detach --dir "$FARM" --base-ip "$BASE_IP" --nodes 3 --dns 0 \
        --roles "${FARM_ROLES:-sip_proxy,registrar}" "${sets[@]}" >"$log" 2>&1 ||
        { node_start_failed "$log" "$w"; return 3; }
    FARM_UP=1
    NODE1_IP=$(farm_field node1 ip); NODE1_SIP=$(farm_field node1 sip)
    NODE2_IP=$(farm_field node2 ip); NODE2_SIP=$(farm_field node2 sip)
    # ready for SIP: one REGISTER through each node answered with 200 (at most ~20 s)
    local n ip port ok
    for n in node1 node2 node3; do
        ip=$(farm_field $n ip); port=$(farm_field $n sip); ok=0
        for _ in $(seq 10); do
            rm -rf "$OUT/probe"
            (cd "$ROOT" && . "$HERE/lib/common.sh" && run_sipp "$OUT/probe" 10 "" "$ip:$port" \
                -sf "$HERE/sipp/reg_one.xml" -i "$SIPP_IP" -p 5099 -t u1 -s "probe-$n" \
                -set domain example.test -m 1 -timeout 8s) >/dev/null 2>&1
            if python3 "$HERE/lib/sipp_summary.py" "$OUT/probe" probe 2>/dev/null | grep -q ' ok=1 '; then
                ok=1; break
            fi
            sleep 2
        done
        [ $ok = 1 ] || { echo "sip.sh: $n ($ip:$port) does not answer REGISTER with 200" >&2; return 1; }
    done
    rm -rf "$OUT/probe"
    wait_handoffs
}
# wait_handoffs: waits (at most 30 s) until no node has a hand-off window open
# (onehop_store_handoff_open 0 on every node: the farm's last ring change, its start, is
# 10 s old), so that the run measures the farm in its steady state, as it is between
# membership changes, and not a new owner fetching each key it lacks from the previous
# holders. A build without the gauge is not waited for.
wait_handoffs() {
    local n ip port open t0=$SECONDS
    while :; do
        open=0
        for n in node1 node2 node3; do
            ip=$(farm_field $n ip); port=$(farm_field $n metrics)
            timeout 5 curl -s "http://$ip:$port/metrics" | grep -q '^onehop_store_handoff_open 1' && open=1
        done
        [ $open = 0 ] && return 0
        if [ $((SECONDS - t0)) -ge 30 ]; then
            echo "sip.sh: a hand-off window is still open after 30 s; measuring anyway" >&2
            return 0
        fi
        sleep 1
    done
}
pin_farm() {  # pin_farm CPULIST: every thread of every process of the farm
    local p
    for p in $(farm_pids); do taskset -a -p -c "$1" "$p" >/dev/null 2>&1 || true; done
}
farm_metrics() {  # farm_metrics FILE: the sip_/store_ lines of every node's metrics
    local n ip port
    for n in node1 node2 node3; do
        ip=$(farm_field $n ip); port=$(farm_field $n metrics)
        echo "### $n $ip:$port"
        timeout 5 curl -s "http://$ip:$port/metrics" | grep -v '^#' || true
    done >"$1"
}
farm_cpu() {  # farm_cpu: "name=utime+stime seconds/resident MiB" of each member process
    python3 - "$FARM/farm.json" <<'PY'
import json, os, sys
hz = os.sysconf("SC_CLK_TCK")
page = os.sysconf("SC_PAGE_SIZE")
out = []
for m in json.load(open(sys.argv[1]))["members"]:
    try:
        f = open("/proc/%d/stat" % m["pid"]).read().rsplit(")", 1)[1].split()
        rss = int(f[21]) * page / 2**20
        out.append("%s=%.1f/%.0fM" % (m["name"], (int(f[11]) + int(f[12])) / hz, rss))
    except Exception:
        out.append("%s=?" % m["name"])
print(" ".join(out))
PY
}

cleanup() {
    kam_stop
    farm_down
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# udp_sockets FILE PREFIX...: the UDP sockets bound to addresses starting with PREFIX, with
# their receive queue and drop counters (/proc/net/udp; cumulative), appended to FILE
udp_sockets() {
    local f=$1; shift
    python3 - "$@" <<'PY2' >>"$f"
import socket, struct, sys
pre = sys.argv[1:]
for line in open("/proc/net/udp").readlines()[1:]:
    x = line.split()
    ip, port = x[1].split(":")
    addr = socket.inet_ntoa(struct.pack("<I", int(ip, 16)))
    if any(addr.startswith(p) for p in pre):
        rxq = int(x[4].split(":")[1], 16)
        print("udp socket %s:%d rx_queue=%d drops=%s" % (addr, int(port, 16), rxq, x[-1]))
PY2
}

# server_cpu SERVER: CPU seconds (user + system) used so far by every process of the server
server_cpu() {
    local pids=""
    case "$1" in
    onehop*) pids=$(farm_pids) ;;
    *)
        local main p
        for p in $KAM_STARTED; do
            main=$(cat "$WORK/kamailio/kamailio-$p.pid" 2>/dev/null)
            [ -n "$main" ] && pids="$pids $main $(pgrep -P "$main" | tr '\n' ' ')"
        done
        ;;
    esac
    python3 - $pids <<'PY2'
import os, sys
hz = os.sysconf("SC_CLK_TCK"); t = 0
for p in sys.argv[1:]:
    try:
        f = open("/proc/%s/stat" % p).read().rsplit(")", 1)[1].split()
        t += int(f[11]) + int(f[12])
    except Exception:
        pass
print("%.2f" % (t / hz))
PY2
}

# --- one benchmark ---------------------------------------------------------------------------
# record MODE SERVER BENCH REP DIR LOAD_BEFORE RCVBUF_BEFORE CPU_BEFORE: append one row from
# DIR/summary.env to runs.tsv
record() {
    local mode=$1 server=$2 bench=$3 rep=$4 d=$5 lb=$6 rb=$7 cb=$8 la rcv cpu
    la=$(load1)
    rcv=$(( $(udp_rcvbuf_errors) - rb ))
    cpu=$(awk -v a="$(server_cpu "$server")" -v b="$cb" 'BEGIN{printf "%.2f", a - b}')
    if [ ! -f "$d/summary.env" ]; then
        printf '%s\t%s\t%s\t%s\tmissing\t\t\t\t\t\t\t\t\t\t\t%s\t%s\t%s\t%s\n' "$mode" "$server" "$bench" "$rep" "$lb" "$la" "$rcv" "$cpu" >>"$ALL"
        return
    fi
    (
        . "$d/summary.env"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$server" "$bench" "$rep" \
            "$OK_PER_S" "$OK" "$FAILED" "$CREATED" "$RETRANS" \
            "${RTD1_P50_MS:-}" "${RTD1_P95_MS:-}" "${RTD1_P99_MS:-}" \
            "${RTD2_P50_MS:-}" "${RTD2_P95_MS:-}" "${RTD2_P99_MS:-}" "$lb" "$la" "$rcv" "$cpu"
    ) >>"$ALL"
}

# keep_results TAG: stdin to stdout, and appended to results.log with "[TAG] " in front
keep_results() {
    while IFS= read -r l; do
        printf '%s\n' "$l"
        printf '[%s] %s\n' "$1" "$l" >>"$OUT/results.log"
    done
}
# dmq_catchup DIR TAG: after a REGISTER run on A, wait (at most DMQ_CATCHUP s) until B holds as
# many contacts as A; note the counts and the lag in DIR.dmq and on stdout
dmq_catchup() {
    local t0=$SECONDS a b
    while :; do
        a=$(kam_stat "$KAM_A_PORT" location_contacts); b=$(kam_stat "$KAM_B_PORT" location_contacts)
        [ "${b:-0}" -ge "${a:-0}" ] && [ "${a:-0}" -gt 0 ] && break
        [ $((SECONDS - t0)) -ge "$DMQ_CATCHUP" ] && break
        sleep 0.5
    done
    echo "REPLICA contacts_A=$a contacts_B=$b B caught up $((SECONDS - t0)) s after the load ended (limit $DMQ_CATCHUP s); kdmq_uac_transactions_A=$(kam_stat "$KAM_A_PORT" UAC_transactions)" |
        tee "$1.dmq" | keep_results "$2" | sed 's/^/  /'
}

# run_one MODE SERVER BENCH REP HOST PORT [REG_HOST REG_PORT]
run_one() {
    local mode=$1 server=$2 bench=$3 rep=$4 host=$5 port=$6 rh=${7:-} rp=${8:-}
    local d="$OUT/$mode-$server-$bench-$rep" lb rb cb
    lb=$(load1); rb=$(udp_rcvbuf_errors); cb=$(server_cpu "$server")
    echo "== $bench $server $mode rep $rep  ($host:$port${rh:+, UAS registered via $rh:$rp}; load $(cut -d' ' -f1-3 /proc/loadavg))"
    case "$bench" in
    reg)
        SIPP_IP="$SIPP_IP" SIPP_CPU="$GEN_CPU" MODE=max LIMIT="$LIMIT" N="$N" COUNT="$N" OUTDIR="$d" \
            timeout $((REG_SECS + 60)) "$HERE/run_register.sh" "$host" "$port" 0 "$REG_SECS" |
            grep -E '^(RESULT|MAXRATE)' | keep_results "$mode $server $bench $rep"
        [ "$server" = kamailio-dmq ] && dmq_catchup "$d" "$mode $server $bench $rep"
        record "$mode" "$server" "$bench" "$rep" "$d/max" "$lb" "$rb" "$cb"
        ;;
    calls | calls2)
        SIPP_IP="$SIPP_IP" UAC_CPU="$GEN_CPU" UAS_CPU="$GEN_CPU" MODE=max LIMIT="$LIMIT" COUNT="$COUNT" \
            REG_HOST="$rh" REG_PORT="$rp" OUTDIR="$d" \
            timeout $((CALL_SECS + 150)) "$HERE/run_calls.sh" "$host" "$port" 0 "$CALL_SECS" |
            grep -E '^(RESULT|MAXRATE)' | keep_results "$mode $server $bench $rep"
        record "$mode" "$server" "$bench" "$rep" "$d/max" "$lb" "$rb" "$cb"
        ;;
    sustained)
        SIPP_IP="$SIPP_IP" UAC_CPU="$GEN_CPU" UAS_CPU="$GEN_CPU" MODE=fixed OUTDIR="$d" \
            timeout $((${SUSTAIN_SECS:-60} + 200)) "$HERE/run_calls.sh" "$host" "$port" \
            "${SUSTAIN_RATE:-3000}" "${SUSTAIN_SECS:-60}" | grep -E '^RESULT' | keep_results "$mode $server $bench $rep"
        record "$mode" "$server" "$bench" "$rep" "$d/fixed-${SUSTAIN_RATE:-3000}" "$lb" "$rb" "$cb"
        ;;
    reg-ramp)
        SIPP_IP="$SIPP_IP" SIPP_CPU="$GEN_CPU" MODE=ramp STEP_SECS=5 BISECT=2 \
            RATES="${REG_RATES:-2000 4000 8000 12000 16000 20000 24000 28000 32000 40000}" OUTDIR="$d" \
            timeout 900 "$HERE/run_register.sh" "$host" "$port" | grep -E '^(RESULT|MAXRATE)' | tee "$d.maxrate"
        ;;
    calls-ramp)
        SIPP_IP="$SIPP_IP" UAC_CPU="$GEN_CPU" UAS_CPU="$GEN_CPU" MODE=ramp STEP_SECS=5 BISECT=2 \
            RATES="${CALL_RATES:-500 1000 2000 3000 4000 5000 6000 8000}" OUTDIR="$d" \
            timeout 900 "$HERE/run_calls.sh" "$host" "$port" | grep -E '^(RESULT|MAXRATE)' | tee "$d.maxrate"
        ;;
    esac
    if [[ "$server" == onehop* ]]; then
        farm_metrics "$d.metrics"
        udp_sockets "$d.metrics" "${BASE_IP%.*}."
        grep -E "drops=[1-9]" "$d.metrics" | sed 's/^/  /' | head
        echo "  farm CPU seconds / resident memory so far: $(farm_cpu)" | tee -a "$d.metrics"
        grep -hE '^onehop_sip_[a-z_]*(malformed|overload|fail|timeout|drop|reject|error)|code="[3-6]' "$d.metrics" 2>/dev/null |
            awk '$NF != 0' | sed 's/^/  /' | head -20
    fi
}

perf_nodes() {  # perf_nodes DIR: 10 s of perf record on each node (background)
    [ "${PERF:-0}" = 1 ] || return 0
    perf stat -e cpu-clock true >/dev/null 2>&1 || { echo "  perf does not work here"; return 0; }
    local n pid
    mkdir -p "$1"
    for n in node1 node2 node3; do
        pid=$(farm_field $n pid)
        (sleep 5; timeout 30 perf record -e cpu-clock -F 499 -g -p "$pid" -o "$1/perf-$n.data" -- sleep 10 >/dev/null 2>&1) &
    done
}

# --- the matrix ------------------------------------------------------------------------------
echo "sip.sh: results in $OUT"
echo "load average now: $(cut -d' ' -f1-3 /proc/loadavg); waiting at most $LOAD_WAIT s for < $LOAD_MAX"
wait_quiet "$LOAD_WAIT"
# Benchmark groups; each group runs against a freshly started server (as the peer harness does:
# a fresh Kamailio for the REGISTER run and another for the calls).
BGROUPS=()
[[ " $ONLY " == *" reg "* ]] && BGROUPS+=("reg")
calls_group=""
[[ " $ONLY " == *" calls "* ]] && calls_group="calls"
[[ " $ONLY " == *" calls2 "* ]] && calls_group="$calls_group calls2"
[ -n "$calls_group" ] && BGROUPS+=("$calls_group")
[ $RAMP = 1 ] && BGROUPS+=("reg-ramp" "calls-ramp")
[ $SUSTAIN = 1 ] && BGROUPS+=("sustained")

# workers_of SERVER: the sip_workers value of an onehop server ("" = SIP_WORKERS or the default)
workers_of() {
    case "$1" in onehop-w*) echo "${1#onehop-w}" ;; *) echo "" ;; esac
}

# run_group MODE SERVER REP "BENCH..." : fresh server, the benchmarks, server stopped
run_group() {
    local mode=$1 server=$2 rep=$3 b rc
    wait_quiet "$LOAD_WAIT_EACH"
    case "$server" in
    onehop*)
        farm_start "$OUT/farm-up-$mode-$server-$rep.log" "$(workers_of "$server")"
        rc=$?
        [ $rc = 0 ] || exit $rc
        pin_farm "${SRV_CPU:-0-$((NCPU - 1))}"
        echo "farm up ($server${SIP_WORKERS:+, $WORKERS_KEY=$SIP_WORKERS}): node1 $NODE1_IP:$NODE1_SIP, node2 $NODE2_IP:$NODE2_SIP (pids $(farm_pids); cpus ${SRV_CPU:-all})"
        for b in $4; do
            [ "$b" = reg ] && [ "$rep" = 1 ] && perf_nodes "$OUT/$mode-$server"
            if [ "$b" = calls2 ]; then
                run_one "$mode" "$server" calls2 "$rep" "$NODE1_IP" "$NODE1_SIP" "$NODE2_IP" "$NODE2_SIP"
            else
                run_one "$mode" "$server" "$b" "$rep" "$NODE1_IP" "$NODE1_SIP"
            fi
        done
        mkdir -p "$OUT/farm-logs-$mode-$server-$rep"
        cp "$FARM"/logs/*.log "$OUT/farm-logs-$mode-$server-$rep/" 2>/dev/null || true
        farm_down
        ;;
    kamailio)
        kam_start "$SRV_CPU" || exit 1
        for b in $4; do
            [ "$b" = calls2 ] && continue
            run_one "$mode" kamailio "$b" "$rep" "$KAM_HOST" "$KAM_USE_PORT"
            udp_sockets "$OUT/$mode-kamailio-$b-$rep.sockets" "$KAM_HOST"
            grep -E ":$KAM_USE_PORT .*drops=[1-9]" "$OUT/$mode-kamailio-$b-$rep.sockets" | sed 's/^/  /'
        done
        kam_stop
        ;;
    kamailio-dmq)
        kam_pair_start "$SRV_CPU" || { kam_stop; exit 1; }
        echo "Kamailio pair up: A $KAM_HOST:$KAM_A_PORT, B $KAM_HOST:$KAM_B_PORT (DMQ on $((KAM_A_PORT + 2)), $((KAM_A_PORT + 3)))"
        for b in $4; do
            if [ "$b" = calls2 ]; then
                run_one "$mode" kamailio-dmq calls2 "$rep" "$KAM_HOST" "$KAM_A_PORT" "$KAM_HOST" "$KAM_B_PORT"
            else
                run_one "$mode" kamailio-dmq "$b" "$rep" "$KAM_HOST" "$KAM_A_PORT"
            fi
            udp_sockets "$OUT/$mode-kamailio-dmq-$b-$rep.sockets" "$KAM_HOST"
            grep -E ":($KAM_A_PORT|$KAM_B_PORT|$((KAM_A_PORT + 2))|$((KAM_A_PORT + 3))) .*drops=[1-9]" \
                "$OUT/$mode-kamailio-dmq-$b-$rep.sockets" | sed 's/^/  /'
        done
        kam_stop
        ;;
    esac
}

# A node setting (SIP_WORKERS, --workers) that the build does not know stops the nodes at
# start-up: find out before measuring anything.
if [ -n "${SIP_WORKERS:-}$WORKERS" ] && [[ " $SERVER_LIST " == *" onehop"* ]]; then
    for s in $SERVER_LIST; do
        [[ "$s" == onehop* ]] || continue
        echo "checking that the nodes start with $WORKERS_KEY=$(workers_of "$s")${SIP_WORKERS:-}"
        farm_start "$OUT/farm-up-check-$s.log" "$(workers_of "$s")"
        rc=$?
        farm_down
        [ $rc = 0 ] || exit $rc
    done
fi

for mode in $MODES; do
    if [ "$mode" = pinned ]; then SRV_CPU=1; GEN_CPU=0; else SRV_CPU=""; GEN_CPU=""; fi
    for rep in $(seq "$REPS"); do
        # the servers take turns going first: rotate the list by one each repetition
        read -ra sl <<<"$SERVER_LIST"
        k=$(((rep - 1) % ${#sl[@]}))
        order="${sl[*]:k} ${sl[*]:0:k}"
        for group in "${BGROUPS[@]}"; do
            for server in $order; do
                run_group "$mode" "$server" "$rep" "$group"
            done
        done
    done
done

# --- the table -------------------------------------------------------------------------------
python3 - "$ALL" "$N" "$LIMIT" "$COUNT" "$OUT" "$KAM_CHILDREN" "$WORKERS_KEY" <<'PY' | tee "$OUT/summary.md"
import glob, os, re, statistics, sys
path, n, limit, count, out, kch, wkey = sys.argv[1:8]
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
by = {}
servers = []
for r in rows:
    mode, server, bench, rep = r[:4]
    if server not in servers:
        servers.append(server)
    if r[4] == "missing":
        by.setdefault((mode, bench, server), []).append(None)
        continue
    f = lambda x: float(x) if x not in ("", "nan") else float("nan")
    by.setdefault((mode, bench, server), []).append(dict(
        okps=f(r[4]), ok=int(r[5]), failed=int(r[6]), created=int(r[7]), retrans=int(r[8]),
        p50=f(r[9]), p95=f(r[10]), p99=f(r[11]), b50=f(r[12]), b95=f(r[13]), b99=f(r[14]),
        lb=r[15], la=r[16], rcv=int(r[17] or 0), cpu=f(r[18]) if len(r) > 18 else float("nan")))
# The number of copies: 2 unless NODE_SET says otherwise (replicas=K).
reps = next((kv.split("=", 1)[1] for kv in os.environ.get("NODE_SET", "").split()
             if kv.startswith("replicas=")), "2")
def sname(s):
    if s == "onehop":
        return f"onehop, 3 nodes, R={reps}, via node1"
    if s.startswith("onehop-w"):
        return f"onehop, 3 nodes, R={reps}, {wkey}={s[8:]}"
    if s == "kamailio":
        return f"Kamailio, 1 instance, {kch} workers"
    if s == "kamailio-dmq":
        return f"Kamailio DMQ pair ({kch} workers each), load on A"
    return s
order = sorted(servers, key=lambda s: (0 if s.startswith("onehop") else 1 if s == "kamailio" else 2,
                                       int(s[8:]) if s.startswith("onehop-w") else -1))
names = {
    "reg": f"REGISTER/s, closed loop, {int(n):,} distinct AORs, {limit} in flight",
    "calls": f"calls/s (INVITE/200/ACK/BYE/200), closed loop, {limit} concurrent, {int(count):,} calls; UAS and UAC via one proxy",
    "calls2": "calls/s, same, UAS registered via one member, UAC via another (onehop: node2 / node1; DMQ pair: B / A)",
    "sustained": "calls/s at a fixed offered rate (SUSTAIN_RATE for SUSTAIN_SECS), one proxy",
}
def med(v, k):
    xs = [x[k] for x in v if x and x[k] == x[k]]
    return statistics.median(xs) if xs else float("nan")
def fig(v):
    ok = [x for x in v if x]
    if not ok:
        return "no result", float("nan")
    xs = [x["okps"] for x in ok]
    m = statistics.median(xs)
    s = f"**{m:,.0f}**"
    if len(xs) > 1:
        s += f" [{min(xs):,.0f}-{max(xs):,.0f}]"
    return s, m
def fails(v):
    ok = [x for x in v if x]
    f = sum(x["failed"] for x in ok); a = sum(x["ok"] + x["failed"] for x in ok)
    missing = len(v) - len(ok)
    s = f"{f:,} / {a:,}"
    if a and f:
        s += f" ({100.0 * f / a:.2f}%)"
    s += f", retrans {sum(x['retrans'] for x in ok):,}, rcvbuf drops {sum(x['rcv'] for x in ok):,}"
    if missing:
        s += f", {missing} run(s) without result"
    return s
def lat(v, call):
    s = "%.0f / %.0f" % (med(v, "p50"), med(v, "p99"))
    if call:
        s += " (BYE %.0f / %.0f)" % (med(v, "b50"), med(v, "b99"))
    return s
def cpu_val(v):
    xs = [1e6 * x["cpu"] / x["ok"] for x in v if x and x["ok"] and x["cpu"] == x["cpu"]]
    return statistics.median(xs) if xs else float("nan")
def cpu(v):
    c = cpu_val(v)
    return "%.0f" % c if c == c else "-"
def loads(v):
    return ", ".join(f"{x['lb']}→{x['la']}" for x in v if x) or "-"
print(f"SIPp closed loop; each figure: median of the runs [min-max]; rtd = SIPp -trace_rtt "
      f"p50 / p99 in ms (median over runs; REGISTER->200 or INVITE->200, then BYE->200); "
      f"failures = failed / attempted SIPp calls (a REGISTER or a call), SIPp retransmissions, "
      f"the kernel's UDP receive-buffer drops (machine-wide); server CPU = CPU time (user+system) "
      f"of every server process (all 9 farm processes; Kamailio's main process and children, "
      f"both instances for the pair) per successful REGISTER or call, in µs (median over runs); "
      f"load = 1-min load average before→after each run")
print()
print("| mode | benchmark | server | ops/s | vs Kamailio (1 instance) | failures | rtd p50 / p99 ms | server CPU µs/op | load |")
print("|---|---|---|---|---|---|---|---|---|")
for mode in ("unpinned", "pinned"):
    for bench in ("reg", "calls", "calls2", "sustained"):
        kref = by.get((mode, "calls" if bench == "calls2" else bench, "kamailio"))
        _, mk = fig(kref) if kref else ("", float("nan"))
        for srv in order:
            v = by.get((mode, bench, srv))
            if not v:
                continue
            fv, mv = fig(v)
            ratio = f"{mv / mk:.2f}" if mk == mk and mv == mv and mk else "-"
            if bench == "calls2" and ratio != "-":
                ratio += " (vs Kamailio's one-proxy calls)"
            print(f"| {mode} | {names[bench]} | {sname(srv)} | {fv} | {ratio} | {fails(v)} | "
                  f"{lat(v, bench != 'reg')} | {cpu(v)} | {loads(v)} |")
# scaling by SIP worker shards (--workers)
ws = [s for s in order if s.startswith("onehop-w")]
if ws:
    print()
    print(f"Scaling by SIP worker shards (onehop, 3 nodes, R={reps}, every node with {wkey}=W; median of the runs):")
    print()
    print(f"| mode | {wkey} | REGISTER/s | calls/s, one proxy | calls/s, node2 / node1 | CPU µs/REGISTER | CPU µs/call, one proxy | CPU µs/call, two nodes | failures (reg, calls, calls2) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode in ("unpinned", "pinned"):
        base = {}
        for srv in ws:
            cells = []; fl = []
            if not any(by.get((mode, b, srv)) for b in ("reg", "calls", "calls2")):
                continue
            for b in ("reg", "calls", "calls2"):
                v = by.get((mode, b, srv)) or []
                fv, mv = fig(v) if v else ("-", float("nan"))
                if b in base and base[b] == base[b] and mv == mv and base[b]:
                    fv += f" (x{mv / base[b]:.2f})"
                base.setdefault(b, mv)
                cells.append(fv)
                ok = [x for x in v if x]
                fl.append(f"{sum(x['failed'] for x in ok):,}" if ok else "-")
            cp = [cpu(by.get((mode, b, srv)) or []) for b in ("reg", "calls", "calls2")]
            print(f"| {mode} | {srv[8:]} | {cells[0]} | {cells[1]} | {cells[2]} | {cp[0]} | {cp[1]} | {cp[2]} | {', '.join(fl)} |")
dmq = sorted(glob.glob(os.path.join(out, "*-kamailio-dmq-reg-*.dmq")))
if dmq:
    print()
    print("DMQ pair, replication after each REGISTER run (contacts on A and B, B's lag):")
    for f in dmq:
        print(f"- {os.path.basename(f)[:-4]}: {open(f).read().strip()}")
ramps = sorted(glob.glob(os.path.join(out, "*-ramp-*.maxrate")))
if ramps:
    print()
    print("Ramps (highest fixed rate with <0.1% failures and >=95% of offered achieved):")
    for f in ramps:
        for line in open(f):
            if line.startswith("MAXRATE"):
                print(f"- {os.path.basename(f)[:-8]}: {line.strip()}")
PY
echo "raw lines: $ALL (one row per run), $OUT/results.log (SIPp's RESULT lines); raw SIPp output, node metrics and farm logs: $OUT"
