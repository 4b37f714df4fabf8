#!/usr/bin/env bash
# The lookup interface over TCP, side by side with Redis GET at the same connections and
# pipeline depth, each server loaded by its own standard client:
#   onehop: bench/lookup-load (this repository) against node1 of a 3-node farm;
#   Redis:  redis-benchmark -t get against a redis-server started here.
#
# usage: bench/lookup.sh [--pinned | --both] [--duration SECS] [--keys N] [--settings "C:D ..."]
#   (default)   unpinned: the kernel places the server and the client on the 2 CPUs
#   --pinned    the server on CPU 1, the client on CPU 0 (taskset)
#   --both      unpinned, then pinned
#   --duration  measured seconds per run (default 5; every run is also killed by `timeout`)
#   --keys      distinct keys (default 100000)
#   --settings  connections:depth pairs (default "1:1 1:16 1:256 4:1 4:16 4:256")
#
# Installs redis-server if missing (apt-get), builds onehop-farm and the load generator in
# release mode, prints one table, and stops the farm and the redis-server it started (nothing
# else). Output: the table on stdout; each run's raw output in $WORK/ (printed at the end).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=5
KEYS=100000
SETTINGS="1:1 1:16 1:256 4:1 4:16 4:256"
MODES="unpinned"
BASE_IP=127.0.40.1
REDIS_HOST=127.0.0.1
REDIS_PORT=6399

while [ $# -gt 0 ]; do
    case "$1" in
    --pinned) MODES="pinned" ;;
    --both) MODES="unpinned pinned" ;;
    --duration) DURATION=$2; shift ;;
    --keys) KEYS=$2; shift ;;
    --settings) SETTINGS=$2; shift ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "lookup.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
case "$DURATION" in '' | *[!0-9]*) echo "lookup.sh: --duration takes whole seconds" >&2; exit 2 ;; esac
[ "$DURATION" -ge 1 ] && [ "$DURATION" -le 120 ] || { echo "lookup.sh: --duration must be 1..120" >&2; exit 2; }
RUN_LIMIT=$((DURATION + 60)) # hard limit of one run, seconds

log() { echo "lookup.sh: $*" >&2; }
load1() { cut -d' ' -f1 /proc/loadavg; }

# --- what the benchmark needs --------------------------------------------------------------
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v jq >/dev/null || need+=(jq)
command -v taskset >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

log "building onehop-farm and lookup-load (release)"
(cd "$ROOT" && cargo build --release -q -p onehop-farm)
cargo build --release -q --manifest-path "$ROOT/bench/lookup-load/Cargo.toml" \
    --target-dir "$ROOT/target/lookup-load"
FARM_BIN=$ROOT/target/release/onehop-farm
LOAD_BIN=$ROOT/target/lookup-load/release/onehop-lookup-load

# --- start the farm and redis, stop them on exit --------------------------------------------
WORK=$(mktemp -d /tmp/onehop-lookup-bench.XXXXXX)
FARM_DIR=$WORK/farm
FARM_UP=0
REDIS_PID=""
cleanup() {
    if [ "$FARM_UP" = 1 ]; then
        timeout 30 "$FARM_BIN" down --dir "$FARM_DIR" >/dev/null 2>&1 || log "onehop-farm down failed"
    fi
    if [ -n "$REDIS_PID" ] && kill -0 "$REDIS_PID" 2>/dev/null; then
        kill "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if timeout 2 bash -c "exec 3<>/dev/tcp/$REDIS_HOST/$REDIS_PORT" 2>/dev/null; then
    log "$REDIS_HOST:$REDIS_PORT is already in use; not starting redis there"
    exit 1
fi

log "starting a farm in $FARM_DIR (base address $BASE_IP)"
FARM_UP=1
timeout 120 "$FARM_BIN" up --detach --dir "$FARM_DIR" --base-ip "$BASE_IP" \
    --nodes 3 --dns 0 --eventservers 1 --managers 1 >"$WORK/farm-up.log" 2>&1 ||
    { cat "$WORK/farm-up.log" >&2; exit 1; }
NODE_IP=$(jq -r '.members[] | select(.name == "node1") | .ip' "$FARM_DIR/farm.json")
NODE_PORT=$(jq -r '.members[] | select(.name == "node1") | .ports.lookup // 9500' "$FARM_DIR/farm.json")
NODE_PID=$(jq -r '.members[] | select(.name == "node1") | .pid' "$FARM_DIR/farm.json")
[ -n "$NODE_IP" ] && [ "$NODE_IP" != null ] || { log "node1 not found in farm.json"; exit 1; }
NODE_ADDR=$NODE_IP:$NODE_PORT
# The farm is ready once every member is in the status; check node1 answers all the same.
answer=$(timeout 5 bash -c "exec 3<>/dev/tcp/$NODE_IP/$NODE_PORT
    printf 'lookup registrar for alice@example.test\r\n' >&3; IFS= read -r line <&3; echo \"\$line\"" | tr -d '\r')
log "node1 (pid $NODE_PID) on $NODE_ADDR answers: $answer"

log "starting redis-server on $REDIS_HOST:$REDIS_PORT"
redis-server --bind "$REDIS_HOST" --port "$REDIS_PORT" --save '' --appendonly no \
    --protected-mode yes --daemonize no --logfile "$WORK/redis.log" &
REDIS_PID=$!
for _ in $(seq 50); do
    redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
done
# The keys redis-benchmark -r asks for (key:000000000000 ...), each holding an IP address, as
# the lookup interface answers: every GET is a hit.
awk -v n="$KEYS" 'BEGIN {
    for (i = 0; i < n; i++) {
        k = sprintf("key:%012d", i); v = sprintf("10.%d.%d.%d", int(i / 65536) % 256, int(i / 256) % 256, i % 256)
        printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length(k), k, length(v), v
    } }' | timeout 60 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" --pipe >"$WORK/redis-load.log" 2>&1
log "redis holds $(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" dbsize) keys"

NCPU=$(nproc)
ALL_CPUS=0-$((NCPU - 1))
set_affinity() { # pid cpu-list: every thread of pid
    taskset -a -p -c "$2" "$1" >/dev/null
}

# --- runs -----------------------------------------------------------------------------------
ROWS=()
for mode in $MODES; do
    if [ "$mode" = pinned ]; then
        [ "$NCPU" -ge 2 ] || { log "pinned mode needs 2 CPUs"; continue; }
        SERVER_CPUS=1
        CLIENT=(taskset -c 0)
    else
        SERVER_CPUS=$ALL_CPUS
        CLIENT=()
    fi
    set_affinity "$NODE_PID" "$SERVER_CPUS"
    set_affinity "$REDIS_PID" "$SERVER_CPUS"
    for s in $SETTINGS; do
        c=${s%%:*}
        d=${s##*:}
        tag=$mode-c$c-d$d

        # onehop: warm up 1 s, measure $DURATION s.
        l_one=$(load1)
        timeout "$RUN_LIMIT" "${CLIENT[@]}" "$LOAD_BIN" --addr "$NODE_ADDR" --connections "$c" \
            --depth "$d" --duration "$DURATION" --warmup 1 --keys "$KEYS" >"$WORK/$tag-onehop.log" 2>&1 ||
            { cat "$WORK/$tag-onehop.log" >&2; exit 1; }
        res=$(grep '^RESULT' "$WORK/$tag-onehop.log")
        kv() { echo "$res" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
        o_qps=$(kv qps) o_p50=$(kv p50_us) o_p99=$(kv p99_us) o_err=$(kv errors)
        [ "$o_err" = 0 ] || log "$tag: $o_err answers were not IP addresses"

        # Redis: a short run to calibrate (and warm up), then about $DURATION s worth of GETs.
        l_red=$(load1)
        rb() { # n
            timeout "$RUN_LIMIT" "${CLIENT[@]}" redis-benchmark -h "$REDIS_HOST" -p "$REDIS_PORT" \
                -t get -r "$KEYS" -P "$d" -c "$c" -n "$1" --csv 2>/dev/null | grep '^"GET"' | tr -d '"'
        }
        cal=$(rb $((20000 * d < 200000 ? 20000 * d : 200000)))
        rps=$(echo "$cal" | cut -d, -f2)
        n=$(awk -v r="$rps" -v t="$DURATION" 'BEGIN { n = int(r * t); print (n < 10000 ? 10000 : n) }')
        line=$(rb "$n")
        echo "redis-benchmark -t get -r $KEYS -P $d -c $c -n $n --csv: $line" >"$WORK/$tag-redis.log"
        r_qps=$(echo "$line" | cut -d, -f2 | cut -d. -f1)
        r_p50=$(echo "$line" | cut -d, -f5)
        r_p99=$(echo "$line" | cut -d, -f7)
        # redis-benchmark reports milliseconds; the table shows microseconds.
        r_p50=$(awk -v x="$r_p50" 'BEGIN { printf "%.1f", x * 1000 }')
        r_p99=$(awk -v x="$r_p99" 'BEGIN { printf "%.1f", x * 1000 }')
        ratio=$(awk -v a="$o_qps" -v b="$r_qps" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
        ROWS+=("$mode|$c|$d|$o_qps|$o_p50|$o_p99|$o_err|$l_one|$r_qps|$r_p50|$r_p99|$l_red|$ratio")
        log "$tag: onehop $o_qps/s (load $l_one), redis $r_qps/s (load $l_red), ratio $ratio"
    done
done
set_affinity "$NODE_PID" "$ALL_CPUS" 2>/dev/null || true
set_affinity "$REDIS_PID" "$ALL_CPUS" 2>/dev/null || true

# --- the table ------------------------------------------------------------------------------
echo
echo "lookup interface (onehop node1, lookup-load) vs Redis GET (redis-benchmark), $DURATION s per run, $KEYS keys"
echo "p50/p99: round trip of a batch of DEPTH pipelined requests, microseconds (see docs/benchmarks.md for what redis-benchmark times)"
echo
echo "| mode | conns | depth | onehop lookups/s | p50 us | p99 us | errors | load1 | Redis GET/s | p50 us | p99 us | load1 | onehop/Redis |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for r in "${ROWS[@]}"; do
    IFS='|' read -r mode c d oq o50 o99 oe l1 rq r50 r99 l2 ratio <<<"$r"
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
        "$mode" "$c" "$d" "$oq" "$o50" "$o99" "$oe" "$l1" "$rq" "$r50" "$r99" "$l2" "$ratio"
done
echo
echo "raw output: $WORK"
