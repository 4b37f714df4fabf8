#!/usr/bin/env bash
# The media relay side by side with rtpengine (Debian's rtpengine-daemon, user-space
# forwarding only: no kernel module, `--table=-1`), both on loopback, loaded by the same
# generator (onehop-relay-load, this repository) at the same rising steps of concurrent calls:
#   onehop:    one node with the media_relay role (onehop-farm), its sessions created over the
#              peer port as a proxy creates them (Allocate, Update; QUIC, mutual TLS, a node
#              certificate issued by the farm's CA for the generator);
#   rtpengine: its sessions created with the ng protocol (offer, answer, delete).
# Each call: one RTP stream, 172-byte packets, --pps per direction (50 = 20 ms G.711).
#
# usage: bench/relay.sh [--pinned | --both] [--calls LIST] [--secs N] [--pps N]
#   (default)  unpinned: the kernel places the relay and the generator on the CPUs
#   --pinned   the relays started on the last CPU, the generator on the others (taskset)
#   --both     unpinned, then pinned
#   --calls    concurrent calls per step (default 250,500,1000,1500,2000,3000,4000); a step that loses
#              more than 5% ends that relay's run
#   --secs     measured seconds per step (default 10, after 1 s of warm-up)
#   --pps      packets per second per direction per call (default 50)
#   PERF=1     perf record onehop's relay through its run ($WORK/perf-MODE.data)
#
# Installs rtpengine-daemon and jq if missing (apt-get), builds onehop-farm (with the
# generator) in release mode, prints one table per mode and the ratios, and stops the farm and
# the rtpengine it started (nothing else). Addresses: the farm on 127.0.70.1-3, rtpengine on
# 127.0.71.1, the generator on 127.0.72.1-3. Raw JSON lines of every step in $WORK/ (printed).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CALLS=250,500,1000,1500,2000,3000,4000
SECS=10
PPS=50
MODES=unpinned
BASE_IP=127.0.70.1
RTPE_IP=127.0.71.1
RTPE_NG_PORT=22222
LOAD_CALLER=127.0.72.1
LOAD_CALLEE=127.0.72.2
LOAD_CONTROL=127.0.72.3

while [ $# -gt 0 ]; do
    case "$1" in
    --pinned) MODES=pinned ;;
    --both) MODES="unpinned pinned" ;;
    --calls) CALLS=$2; shift ;;
    --secs) SECS=$2; shift ;;
    --pps) PPS=$2; shift ;;
    -h | --help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "relay.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
case "$SECS" in '' | *[!0-9]* | 0) echo "relay.sh: --secs takes a positive integer" >&2; exit 2 ;; esac
case "$PPS" in '' | *[!0-9]* | 0) echo "relay.sh: --pps takes a positive integer" >&2; exit 2 ;; esac
case "$CALLS" in '' | *[!0-9,]*) echo "relay.sh: --calls takes numbers separated by commas" >&2; exit 2 ;; esac

log() { echo "relay.sh: $*" >&2; }

# --- what the benchmark needs --------------------------------------------------------------
need=()
command -v rtpengine >/dev/null || need+=(rtpengine-daemon)
command -v jq >/dev/null || need+=(jq)
command -v taskset >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

log "building onehop-farm and onehop-relay-load (release)"
(cd "$ROOT" && cargo build --release -q -p onehop-farm)
FARM_BIN=$ROOT/target/release/onehop-farm
LOAD_BIN=$ROOT/target/release/onehop-relay-load

# --- start the relays, stop them on exit ----------------------------------------------------
WORK=$(mktemp -d /tmp/onehop-relay-bench.XXXXXX)
FARM_DIR=""
RTPE_PID=""
stop_relays() {
    if [ -n "$FARM_DIR" ]; then
        timeout 30 "$FARM_BIN" down --dir "$FARM_DIR" >/dev/null 2>&1 || log "onehop-farm down failed"
        FARM_DIR=""
    fi
    if [ -n "$RTPE_PID" ] && kill -0 "$RTPE_PID" 2>/dev/null; then
        kill "$RTPE_PID" 2>/dev/null || true
        wait "$RTPE_PID" 2>/dev/null || true
    fi
    RTPE_PID=""
}
trap stop_relays EXIT
trap 'exit 130' INT TERM

# Enough ports and sessions for the largest step: 4 ports a call on either relay.
MAX_CALLS=$(echo "$CALLS" | tr ',' '\n' | sort -n | tail -1)
[ "$MAX_CALLS" -le 5000 ] || { log "at most 5000 calls per step (20,000 ports per relay)"; exit 2; }

ng_ping() {
    timeout 1 bash -c "exec 3<>/dev/udp/$RTPE_IP/$RTPE_NG_PORT; printf 'p$1 d7:command4:pinge' >&3; read -r -t 1 l <&3" 2>/dev/null
}

# Starts both relays for one mode, each confined from its start to the CPUs $1 (taskset), as an
# operator dedicating CPUs to a relay would (systemd's CPUAffinity=): each sizes its forwarding
# threads to the CPUs it is given ($2 of them). onehop's node runs one forwarding thread and one
# Tokio worker per CPU it may use; rtpengine gets --num-threads=$2 (its default is every CPU of
# the machine). Moving a running process's threads onto fewer CPUs instead (taskset -a -p)
# would leave several forwarding threads of either relay taking turns on one CPU.
start_relays() {
    local cpus=$1 nthreads=$2
    FARM_DIR=$WORK/farm-$3
    log "starting a one-node farm (media_relay) in $FARM_DIR (base address $BASE_IP), CPUs $cpus"
    timeout 120 taskset -c "$cpus" "$FARM_BIN" up --detach --dir "$FARM_DIR" --base-ip "$BASE_IP" \
        --nodes 1 --dns 0 --eventservers 1 --managers 1 --roles media_relay --no-demo-accounts \
        --node-set 'relay_ports="20000-39999"' --node-set "relay_max_sessions=$((MAX_CALLS + 100))" \
        >"$WORK/farm-up-$3.log" 2>&1 || { cat "$WORK/farm-up-$3.log" >&2; exit 1; }
    NODE_PID=$(jq -r '.members[] | select(.name == "node1") | .pid' "$FARM_DIR/farm.json")
    rm -rf "$WORK/certs"
    "$FARM_DIR/bin/onehop-certs" issue --dir "$FARM_DIR/ca" --name relayload --kind node \
        --ip "$LOAD_CONTROL" --out "$WORK/certs" >"$WORK/certs.log" 2>&1 ||
        { cat "$WORK/certs.log" >&2; exit 1; }

    if ng_ping 0; then
        log "something already answers ng requests on $RTPE_IP:$RTPE_NG_PORT; not starting rtpengine there"
        exit 1
    fi
    log "starting rtpengine (user space, --table=-1) on $RTPE_IP, ng on $RTPE_NG_PORT, CPUs $cpus, $nthreads threads"
    # --delete-delay=0 frees a deleted call's ports at once, as onehop does.
    taskset -c "$cpus" rtpengine --config-file=none --foreground --log-stderr --log-level=4 --table=-1 \
        --interface="$RTPE_IP" --listen-ng="$RTPE_IP:$RTPE_NG_PORT" --port-min=40000 --port-max=59999 \
        --delete-delay=0 --timeout=300 --num-threads="$nthreads" >"$WORK/rtpengine-$3.log" 2>&1 &
    RTPE_PID=$!
    for _ in $(seq 50); do
        ng_ping 1 && break
        kill -0 "$RTPE_PID" 2>/dev/null || { cat "$WORK/rtpengine-$3.log" >&2; exit 1; }
        sleep 0.1
    done
    log "onehop node1 pid $NODE_PID, rtpengine pid $RTPE_PID; load $(cut -d' ' -f1-3 /proc/loadavg)"
}

NCPU=$(nproc)
for mode in $MODES; do
    if [ "$mode" = pinned ]; then
        [ "$NCPU" -ge 2 ] || { log "pinned mode needs 2 CPUs"; continue; }
        RELAY_CPUS=$((NCPU - 1)) RELAY_THREADS=1
        LOAD=(taskset -c "0-$((NCPU - 2))")
    else
        RELAY_CPUS=0-$((NCPU - 1)) RELAY_THREADS=$NCPU
        LOAD=()
    fi
    start_relays "$RELAY_CPUS" "$RELAY_THREADS" "$mode"
    OUT=$WORK/$mode.jsonl
    : >"$OUT"
    COMMON=(--calls "$CALLS" --secs "$SECS" --pps "$PPS" --caller-ip "$LOAD_CALLER"
        --callee-ip "$LOAD_CALLEE" --control-ip "$LOAD_CONTROL")
    log "$mode: onehop (load $(cut -d' ' -f1 /proc/loadavg))"
    if [ "${PERF:-0}" = 1 ]; then
        # perf record on onehop's relay through its whole run (every step)
        perf record -e cpu-clock -F 999 -g -p "$NODE_PID" -o "$WORK/perf-$mode.data" >/dev/null 2>&1 &
        PERF_PID=$!
    fi
    "${LOAD[@]}" "$LOAD_BIN" --relay onehop --farm "$FARM_DIR" --node node1 \
        --cert "$WORK/certs/relayload.pem" --key "$WORK/certs/relayload.key" \
        --pid "$NODE_PID" "${COMMON[@]}" >>"$OUT" 2>"$WORK/$mode-onehop.log" ||
        { cat "$WORK/$mode-onehop.log" >&2; exit 1; }
    if [ "${PERF:-0}" = 1 ]; then
        kill -INT "$PERF_PID" 2>/dev/null || true
        wait "$PERF_PID" 2>/dev/null || true
        log "perf record of onehop's relay in $WORK/perf-$mode.data"
    fi
    log "$mode: rtpengine (load $(cut -d' ' -f1 /proc/loadavg))"
    "${LOAD[@]}" "$LOAD_BIN" --relay rtpengine --ng "$RTPE_IP:$RTPE_NG_PORT" \
        --pid "$RTPE_PID" "${COMMON[@]}" >>"$OUT" 2>"$WORK/$mode-rtpengine.log" ||
        { cat "$WORK/$mode-rtpengine.log" >&2; exit 1; }

    echo
    echo "Media relay, $mode ($NCPU CPUs; relay on CPUs $RELAY_CPUS), ${PPS} packets/s per direction per call, 172 bytes, ${SECS} s per step"
    # A step is sustained by a relay when the generator offered at least 98% of the target rate
    # (else the generator, not the relay, was the limit) and every packet sent in the measured
    # window came back within the drain time (0.5 s after the last one).
    jq -rs '
      def ok(r): r.lost == 0 and r.offered_pps >= 0.98 * r.target_pps;
      def row(r): if r == null then "-|-|-|-|-|-|-"
        else "\(r.received_pps | floor)|\(r.lost) (\(r.loss_pct * 1000 | round / 1000)%)|\(r.p50_us)|\(r.p99_us)|\(r.max_us | floor)|\(if r.relay_cpu_pct == null then "-" else (r.relay_cpu_pct | round | tostring) + "%" end)|\(if ok(r) then "yes" else "no" end)" end;
      (group_by(.calls) | map({calls: .[0].calls, target: .[0].target_pps,
          o: (map(select(.relay == "onehop")) | .[0]),
          r: (map(select(.relay == "rtpengine")) | .[0])})) as $steps
      | "calls|target pps|onehop pps|lost|p50 us|p99 us|max us|cpu|ok|rtpengine pps|lost|p50 us|p99 us|max us|cpu|ok",
        ($steps[] | "\(.calls)|\(.target)|\(row(.o))|\(row(.r))")' "$OUT" | column -t -s '|'
    jq -rs '
      def ok(r): r.lost == 0 and r.offered_pps >= 0.98 * r.target_pps;
      def r2(x): x * 100 | round / 100;
      (map(select(.relay == "onehop" and ok(.))) | max_by(.target_pps)) as $o
      | (map(select(.relay == "rtpengine" and ok(.))) | max_by(.target_pps)) as $r
      | (group_by(.calls) | map(select(length == 2 and all(.[]; ok(.)))) | last) as $both
      | "highest rate sustained: onehop \($o.target_pps // 0) pps (\($o.calls // 0) calls), rtpengine \($r.target_pps // 0) pps (\($r.calls // 0) calls); ratio onehop/rtpengine \(if ($r.target_pps // 0) > 0 then r2(($o.target_pps // 0) / $r.target_pps) else "-" end)",
        (if $both == null then "no step sustained by both" else
          ($both | map({(.relay): .}) | add) as $b
          | "highest step both sustain: \($b.onehop.calls) calls (\($b.onehop.target_pps) pps): p99 onehop \($b.onehop.p99_us) us, rtpengine \($b.rtpengine.p99_us) us; relay CPU onehop \($b.onehop.relay_cpu_pct // 0 | round)%, rtpengine \($b.rtpengine.relay_cpu_pct // 0 | round)%; packets per CPU-second onehop/rtpengine \(if ($b.onehop.relay_cpu_pct // 0) > 0 then r2(($b.rtpengine.relay_cpu_pct // 0) / $b.onehop.relay_cpu_pct) else "-" end)" end)' "$OUT"
    stop_relays
done
echo
log "raw results in $WORK"
