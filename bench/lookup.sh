#!/usr/bin/env bash
# The lookup interface over TCP, side by side with Redis GET at the same connections and
# pipeline depth, each server loaded by its own standard client:
#   onehop: bench/lookup-load (this repository) against node1 of a 3-node farm;
#   Redis:  redis-benchmark -t get against a redis-server started here.
#
# usage: bench/lookup.sh [--pinned | --both] [--duration SECS] [--reps N] [--keys N] [--settings "C:D ..."]
#   (default)   unpinned: the kernel places the server and the client on the 2 CPUs
#   --pinned    the server on CPU 1, the client on CPU 0 (taskset)
#   --both      unpinned, then pinned
#   --duration  measured seconds per run (default 5; every run is also killed by `timeout`)
#   --reps      runs per setting and server, alternating between the servers (default 3);
#               the table shows the median and the range
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
REPS=3
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
    --reps) REPS=$2; shift ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "lookup.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
case "$REPS" in '' | *[!0-9]* | 0) echo "lookup.sh: --reps takes a positive integer" >&2; exit 2 ;; esac
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
NODE_METRICS=$(jq -r '.members[] | select(.name == "node1") | .ports.metrics // 9100' "$FARM_DIR/farm.json")
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
# What each server spent: CPU time (user + system, all threads, in clock ticks) and requests
# served (the node's lookups_total counter, Redis's total_commands_processed).
HZ=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
node_served() {
    curl -s --max-time 5 "http://$NODE_IP:$NODE_METRICS/metrics" | awk '$1 == "onehop_lookups_total" { print $2 }'
}
redis_served() {
    redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" info stats | tr -d '\r' | awk -F: '$1 == "total_commands_processed" { print $2 }'
}
ns_per() { # ticks requests
    awk -v t="$1" -v n="$2" -v hz="$HZ" 'BEGIN { printf "%.0f", (n > 0 ? t * 1e9 / hz / n : 0) }'
}
set_affinity() { # pid cpu-list: every thread of pid
    taskset -a -p -c "$2" "$1" >/dev/null
}

# --- runs -----------------------------------------------------------------------------------
ROWS=()
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
minmax() { tr ' ' '\n' | grep -v '^$' | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "-" hi }'; }
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
        rb() { # n: one redis-benchmark run, its CSV line without quotes
            timeout "$RUN_LIMIT" "${CLIENT[@]}" redis-benchmark -h "$REDIS_HOST" -p "$REDIS_PORT" \
                -t get -r "$KEYS" -P "$d" -c "$c" -n "$1" --csv 2>/dev/null | grep '^"GET"' | tr -d '"'
        }
        # Redis: a short run to calibrate (and warm up), then about $DURATION s worth of GETs.
        cal=$(rb $((20000 * d < 200000 ? 20000 * d : 200000)))
        n=$(echo "$cal" | awk -F, -v t="$DURATION" '{ n = int($2 * t); print (n < 10000 ? 10000 : n) }')
        oq="" o50="" o99="" oe=0 ocpu="" rq="" r50="" r99="" rcpu="" loads=""
        # The two servers alternate, run by run.
        for rep in $(seq "$REPS"); do
            tag=$mode-c$c-d$d-$rep
            loads="$loads $(load1)"
            t0=$(cpu_ticks "$NODE_PID") s0=$(node_served)
            timeout "$RUN_LIMIT" "${CLIENT[@]}" "$LOAD_BIN" --addr "$NODE_ADDR" --connections "$c" \
                --depth "$d" --duration "$DURATION" --warmup 1 --keys "$KEYS" >"$WORK/$tag-onehop.log" 2>&1 ||
                { cat "$WORK/$tag-onehop.log" >&2; exit 1; }
            t1=$(cpu_ticks "$NODE_PID") s1=$(node_served)
            ocpu="$ocpu $(ns_per $((t1 - t0)) $((s1 - s0)))"
            res=$(grep '^RESULT' "$WORK/$tag-onehop.log")
            kv() { echo "$res" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
            oq="$oq $(kv qps)" o50="$o50 $(kv p50_us)" o99="$o99 $(kv p99_us)" oe=$((oe + $(kv errors)))

            loads="$loads $(load1)"
            t0=$(cpu_ticks "$REDIS_PID") s0=$(redis_served)
            line=$(rb "$n")
            t1=$(cpu_ticks "$REDIS_PID") s1=$(redis_served)
            rcpu="$rcpu $(ns_per $((t1 - t0)) $((s1 - s0)))"
            echo "redis-benchmark -t get -r $KEYS -P $d -c $c -n $n --csv: $line" >"$WORK/$tag-redis.log"
            # redis-benchmark reports milliseconds; the table shows microseconds.
            rq="$rq $(echo "$line" | awk -F, '{ printf "%.0f", $2 }')"
            r50="$r50 $(echo "$line" | awk -F, '{ printf "%.1f", $5 * 1000 }')"
            r99="$r99 $(echo "$line" | awk -F, '{ printf "%.1f", $7 * 1000 }')"
            log "$tag: onehop $(kv qps)/s, redis $(echo "$line" | cut -d, -f2)/s, load$loads"
        done
        [ "$oe" = 0 ] || log "$mode c$c d$d: $oe answers were not IP addresses"
        omed=$(echo "$oq" | median) rmed=$(echo "$rq" | median)
        ratio=$(awk -v a="$omed" -v b="$rmed" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
        ROWS+=("$mode|$c|$d|$omed|$(echo "$oq" | minmax)|$(echo "$o50" | median)|$(echo "$o99" | median)|$(echo "$ocpu" | median)|$oe|$rmed|$(echo "$rq" | minmax)|$(echo "$r50" | median)|$(echo "$r99" | median)|$(echo "$rcpu" | median)|$ratio|$(echo "$loads" | minmax)")
    done
done
set_affinity "$NODE_PID" "$ALL_CPUS" 2>/dev/null || true
set_affinity "$REDIS_PID" "$ALL_CPUS" 2>/dev/null || true

# --- the table ------------------------------------------------------------------------------
echo
echo "lookup interface (onehop node1, lookup-load) vs Redis GET (redis-benchmark): $REPS runs of $DURATION s per setting, alternating; $KEYS keys"
echo "median [min-max] requests/s; p50/p99 (medians over the runs): microseconds, see docs/benchmarks.md for what each client times;"
echo "CPU ns/req: the server's CPU time (all threads, user + system) per request served, median over the runs"
echo
echo "| mode | conns | depth | onehop lookups/s | [min-max] | p50 us | p99 us | CPU ns/req | errors | Redis GET/s | [min-max] | p50 us | p99 us | CPU ns/req | onehop/Redis | load1 [min-max] |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for r in "${ROWS[@]}"; do
    IFS='|' read -r mode c d oq omm o50 o99 ocpu oe rq rmm r50 r99 rcpu ratio lmm <<<"$r"
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
        "$mode" "$c" "$d" "$oq" "$omm" "$o50" "$o99" "$ocpu" "$oe" "$rq" "$rmm" "$r50" "$r99" "$rcpu" "$ratio" "$lmm"
done
echo
echo "raw output: $WORK"
