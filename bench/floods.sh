#!/usr/bin/env bash
# Floods heavier and longer than the integration tests' (tests/it/floods.rs), at a farm on
# this machine: SIP over UDP and TCP and the lookup interface at node1, DNS at dns1, and a
# storm of QUIC handshakes with certificates from another CA at es1, each from many source
# addresses (127.240.0.1 up; every 127.x.y.z is local) while legitimate traffic of the same
# kind is measured from an address of the farm's own range.
#
# usage: bench/floods.sh [--secs N] [--sources N] [--kinds "sip-udp sip-tcp dns lookup quic"]
#                        [--concurrency N] [--rate N]
#   --secs         seconds of each flood (default 30; every run is also killed by `timeout`)
#   --sources      source addresses (default 1000)
#   --kinds        which floods, in order (default all five)
#   --concurrency  connections or handshakes in flight (TCP and QUIC floods; default 256)
#   --rate         datagrams, connections or handshakes per second (default: as fast as it goes)
#
# Builds onehop-farm in release mode, starts a farm (1 event server, 1 manager, 1 DNS server
# on port 5353, 2 nodes with digest authentication), prints one line per flood (what was sent,
# the legitimate success rate and latencies, the flooded daemon's resident memory before, at
# its peak and after, and the gate's counters for QUIC), and stops the farm. Each flood's JSON
# (from `onehop-farm flood`) is kept in $WORK (printed at the end).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECS=30
SOURCES=1000
KINDS="sip-udp sip-tcp dns lookup quic"
CONCURRENCY=256
RATE=""
BASE_IP=127.0.243.1
FIRST_SOURCE=127.240.0.1

while [ $# -gt 0 ]; do
    case "$1" in
    --secs) SECS=$2; shift ;;
    --sources) SOURCES=$2; shift ;;
    --kinds) KINDS=$2; shift ;;
    --concurrency) CONCURRENCY=$2; shift ;;
    --rate) RATE=$2; shift ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "floods.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
case "$SECS" in '' | *[!0-9]*) echo "floods.sh: --secs takes whole seconds" >&2; exit 2 ;; esac
[ "$SECS" -ge 1 ] && [ "$SECS" -le 600 ] || { echo "floods.sh: --secs must be 1..600" >&2; exit 2; }
case "$SOURCES" in '' | *[!0-9]*) echo "floods.sh: --sources takes a number" >&2; exit 2 ;; esac
[ "$SOURCES" -ge 1 ] && [ "$SOURCES" -le 60000 ] || { echo "floods.sh: --sources must be 1..60000" >&2; exit 2; }
for k in $KINDS; do
    case "$k" in sip-udp | sip-tcp | dns | lookup | quic) ;; *) echo "floods.sh: unknown kind $k" >&2; exit 2 ;; esac
done

log() { echo "floods.sh: $*" >&2; }
command -v jq >/dev/null || {
    log "installing jq"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq jq >/dev/null
}
# Each TCP and QUIC flood task holds a socket; 1000 sources need more than 1024 descriptors.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

log "building onehop-farm (release)"
(cd "$ROOT" && cargo build --release -q -p onehop-farm)
FARM_BIN=$ROOT/target/release/onehop-farm

WORK=$(mktemp -d /tmp/onehop-floods.XXXXXX)
FARM_DIR=$WORK/farm
FARM_UP=0
cleanup() {
    if [ "$FARM_UP" = 1 ]; then
        timeout 30 "$FARM_BIN" down --dir "$FARM_DIR" >/dev/null 2>&1 || log "onehop-farm down failed"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "starting a farm in $FARM_DIR (base address $BASE_IP)"
FARM_UP=1
timeout 120 "$FARM_BIN" up --detach --dir "$FARM_DIR" --base-ip "$BASE_IP" --nodes 2 \
    --eventservers 1 --managers 1 --dns 1 --dns-port 5353 --node-set 'sip_auth="digest"' \
    >"$WORK/farm-up.log" 2>&1 || { cat "$WORK/farm-up.log" >&2; exit 1; }
member() { jq -r --arg n "$1" --arg f "$2" '.members[] | select(.name == $n) | .[$f]' "$FARM_DIR/farm.json"; }
port() { jq -r --arg n "$1" --arg p "$2" '.members[] | select(.name == $n) | .ports[$p]' "$FARM_DIR/farm.json"; }
PROBE_FROM=${BASE_IP%.*}.200

# Another CA, and a node certificate from it, for the QUIC storm.
"$FARM_BIN" --version >/dev/null
CERTS=$FARM_DIR/bin/onehop-certs
"$CERTS" init --domain example.test --dir "$WORK/other-ca" >/dev/null
"$CERTS" issue --dir "$WORK/other-ca" --name node1 --kind node --out "$WORK/other-certs" >/dev/null
MONITOR_CERT=$(jq -r '.monitor.cert' "$FARM_DIR/farm.json")
MONITOR_KEY=$(jq -r '.monitor.key' "$FARM_DIR/farm.json")

metric() { curl -s --max-time 5 "http://$1/metrics" | awk -v n="$2" '$1 == n { print $2 }'; }

printf '%-8s %-22s %12s %10s %14s %9s %9s %24s\n' kind target sent "sent/s" legitimate "p50 ms" "p99 ms" "RSS KiB before/peak/after"
for kind in $KINDS; do
    case "$kind" in
    sip-udp | sip-tcp) who=node1; target=$(member node1 ip):$(port node1 sip) ;;
    lookup) who=node1; target=$(member node1 ip):$(port node1 lookup) ;;
    dns) who=dns1; target=$(member dns1 ip):$(port dns1 dns) ;;
    quic) who=es1; target=$(member es1 ip):$(port es1 eventserver) ;;
    esac
    pid=$(member "$who" pid)
    args=(flood --kind "$kind" --target "$target" --sources "$FIRST_SOURCE/$SOURCES" --secs "$SECS"
        --concurrency "$CONCURRENCY" --probe-from "$PROBE_FROM" --pid "$pid")
    [ -n "$RATE" ] && args+=(--rate "$RATE")
    if [ "$kind" = quic ]; then
        args+=(--ca "$FARM_DIR/ca/ca.pem" --cert "$WORK/other-certs/node1.pem" --key "$WORK/other-certs/node1.key"
            --probe-cert "$MONITOR_CERT" --probe-key "$MONITOR_KEY")
    fi
    timeout $((SECS + 60)) "$FARM_BIN" "${args[@]}" >"$WORK/$kind.json" 2>"$WORK/$kind.err" ||
        { log "$kind flood failed:"; cat "$WORK/$kind.err" >&2; exit 1; }
    jq -r --arg secs "$SECS" '[.kind, .target, .flood.sent, (.flood.sent / ($secs | tonumber) | floor),
        "\(.probe.ok)/\(.probe.attempts) \((.probe.success_rate * 1000 | floor) / 10)%",
        (.probe.p50_ms * 10 | floor) / 10, (.probe.p99_ms * 10 | floor) / 10,
        "\(.rss_kib.before)/\(.rss_kib.peak)/\(.rss_kib.after)"] | @tsv' "$WORK/$kind.json" |
        awk -F'\t' '{ printf "%-8s %-22s %12s %10s %14s %9s %9s %24s\n", $1, $2, $3, $4, $5, $6, $7, $8 }'
    if [ "$kind" = quic ]; then
        m=$(member es1 ip):$(port es1 metrics)
        log "es1 gate: ok $(metric "$m" 'onehop_quic_handshakes_total{outcome="ok"}')" \
            "failed $(metric "$m" 'onehop_quic_handshakes_total{outcome="failed"}')" \
            "refused busy $(metric "$m" 'onehop_quic_handshakes_refused_total{reason="busy"}')" \
            "rate $(metric "$m" 'onehop_quic_handshakes_refused_total{reason="rate"}')" \
            "retried $(metric "$m" 'onehop_quic_handshakes_retried_total')"
        members=$(timeout 20 "$FARM_DIR/bin/onehop-monitor" --farm "$FARM_DIR" --json --timeout 10 | jq '.members | length')
        log "members in the status after the storm: $members of $(jq '.members | length' "$FARM_DIR/farm.json")"
    fi
done
log "raw output in $WORK"
