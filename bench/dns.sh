#!/usr/bin/env bash
# dnsperf against onehop-dns (the DNS member of a farm) and against NSD serving the same
# records, side by side in one run, with the ratio.
#
# usage: bench/dns.sh [--pinned | --both] [--duration SECS] [--reps N]
#   (default)   unpinned: the kernel places the servers and dnsperf on the 2 CPUs
#   --pinned    the server under test on CPU 1, dnsperf on CPU 0 (taskset)
#   --both      unpinned, then pinned
#   --duration  dnsperf seconds per run (default 5; every run is also killed by `timeout`)
#   --reps      runs per server and mode (default 3); the table shows the median
#
# What it does: installs dnsperf, nsd and dig if missing (apt-get, idempotent); builds
# onehop-farm in release mode; starts a farm (3 event servers, 3 managers, 1 DNS, 5 nodes
# with sip_proxy, so K=4 SRV slicing happens) on 127.0.64.1.. with DNS on port 5300; writes
# an NSD zone file from what the farm's DNS answers (bench/dns/zone_from_dns.sh: same names,
# same records, same TTLs); starts NSD (1 server process, RRL off) on 127.0.65.1:5301; runs
# dnsperf with bench/dns/queries.txt (NAPTR, SRV, A, SOA, NS, NXDOMAIN for the farm's names)
# and the same client settings against each, alternating; prints one table; stops the farm
# and the nsd it started (nothing else).
# env: CLIENTS=4 THREADS=1 OUTSTANDING=200 (dnsperf -c/-T/-q), QUERIES=bench/dns/queries.txt,
#      BASE_IP=127.0.64.1 DNS_PORT=5300 NSD_ADDR=127.0.65.1 NSD_PORT=5301,
#      WORK=/tmp/onehop-bench-dns (farm, zone, raw dnsperf output), SKIP_BUILD=1, SKIP_INSTALL=1,
#      FARM_BIN (an onehop-farm built elsewhere; implies nothing about SKIP_BUILD)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE="$ROOT/bench/dns"
DURATION=5
REPS=3
MODES="unpinned"
while [ $# -gt 0 ]; do
    case "$1" in
    --pinned) MODES="pinned" ;;
    --both) MODES="unpinned pinned" ;;
    --duration) DURATION=$2; shift ;;
    --reps) REPS=$2; shift ;;
    -h | --help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "dns.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
CLIENTS=${CLIENTS:-4}
THREADS=${THREADS:-1}
OUTSTANDING=${OUTSTANDING:-200}
QUERIES=${QUERIES:-$HERE/queries.txt}
BASE_IP=${BASE_IP:-127.0.64.1}
DNS_PORT=${DNS_PORT:-5300}
NSD_ADDR=${NSD_ADDR:-127.0.65.1}
NSD_PORT=${NSD_PORT:-5301}
WORK=${WORK:-/tmp/onehop-bench-dns}
for a in "$BASE_IP" "$NSD_ADDR"; do
    case "$a" in 127.*) ;; *) echo "dns.sh: refusing non-loopback address $a" >&2; exit 2 ;; esac
done

# --- install (idempotent) ---------------------------------------------------------------
if [ -z "${SKIP_INSTALL:-}" ]; then
    missing=()
    for p in dnsperf nsd bind9-dnsutils util-linux python3; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "dns.sh: installing ${missing[*]}"
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
        created_policy=0
        # Keep package scripts from starting a distro nsd on port 53.
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
            $SUDO chmod +x /usr/sbin/policy-rc.d; created_policy=1
        fi
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
        [ $created_policy -eq 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d
    fi
fi
for b in dnsperf nsd dig taskset python3; do
    command -v "$b" >/dev/null || { echo "dns.sh: $b is missing" >&2; exit 1; }
done

# --- build, farm, zone, nsd ---------------------------------------------------------------
if [ -z "${SKIP_BUILD:-}" ]; then
    (cd "$ROOT" && cargo build --release -p onehop-farm)
fi
FARM_BIN=${FARM_BIN:-$ROOT/target/release/onehop-farm}
mkdir -p "$WORK"
FARM="$WORK/farm"
NSD_RUN="$WORK/nsd"
OUT="$WORK/results-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"

cleanup() {
    "$HERE/stop_nsd.sh" "$NSD_RUN" >/dev/null 2>&1 || true
    [ -f "$FARM/farm.json" ] && "$FARM_BIN" down --dir "$FARM" >/dev/null 2>&1 || true
}
trap cleanup EXIT
[ -f "$FARM/farm.json" ] && "$FARM_BIN" down --dir "$FARM" >/dev/null 2>&1 || true
"$HERE/stop_nsd.sh" "$NSD_RUN" >/dev/null 2>&1 || true

"$FARM_BIN" up --detach --dir "$FARM" --base-ip "$BASE_IP" --nodes 5 --dns 1 \
    --dns-port "$DNS_PORT" --roles sip_proxy,registrar,media_relay >"$OUT/farm-up.log"
read -r ONEHOP_ADDR ONEHOP_PID < <(python3 - "$FARM/farm.json" <<'PY'
import json, sys
m = [x for x in json.load(open(sys.argv[1]))["members"] if x["name"] == "dns1"][0]
print(m["ip"], m["pid"])
PY
)
echo "farm up: onehop-dns (dns1) at $ONEHOP_ADDR:$DNS_PORT pid $ONEHOP_PID"
# The DNS applies the status a moment after the farm reports ready.
for _ in $(seq 50); do
    [ -n "$(dig @"$ONEHOP_ADDR" -p "$DNS_PORT" +short +norecurse +time=1 +tries=1 node5.example.test A)" ] && break
    sleep 0.1
done
"$HERE/zone_from_dns.sh" "$ONEHOP_ADDR" "$DNS_PORT" "$FARM" >"$WORK/example.test.zone"
echo "zone for NSD: $(grep -vc '^;' "$WORK/example.test.zone") records from onehop-dns -> $WORK/example.test.zone"

# Same rcode from both for every query of the mix, and the same answer RRset (SRV: onehop's
# slice of K must be part of NSD's whole RRset).
check_same() {
    local bad=0 name type a b sa sb
    while read -r name type; do
        a=$(dig @"$ONEHOP_ADDR" -p "$DNS_PORT" +norecurse +time=2 +tries=1 "$name" "$type")
        b=$(dig @"$NSD_ADDR" -p "$NSD_PORT" +norecurse +time=2 +tries=1 "$name" "$type")
        sa=$(awk '/status:/{print $6}' <<<"$a"); sb=$(awk '/status:/{print $6}' <<<"$b")
        if [ "$sa" != "$sb" ]; then echo "  $name $type: onehop $sa, nsd $sb" >&2; bad=1; fi
        a=$(dig @"$ONEHOP_ADDR" -p "$DNS_PORT" +norecurse +short +time=2 +tries=1 "$name" "$type" | sort)
        b=$(dig @"$NSD_ADDR" -p "$NSD_PORT" +norecurse +short +time=2 +tries=1 "$name" "$type" | sort)
        if [ "$type" = SRV ]; then
            [ -z "$(comm -23 <(echo "$a") <(echo "$b"))" ] || { echo "  $name SRV: onehop answers records NSD lacks" >&2; bad=1; }
        elif [ "$a" != "$b" ]; then
            echo "  $name $type: different answers" >&2; bad=1
        fi
    done <"$QUERIES"
    return $bad
}

pin_onehop() {  # pin_onehop CPULIST: every thread of the onehop-dns process
    taskset -a -p -c "$1" "$ONEHOP_PID" >/dev/null
}

# run_dnsperf LABEL ADDR PORT CPUSET -> prints "qps avg_lat_ms lost completed rcodes"
run_dnsperf() {
    local label=$1 addr=$2 port=$3 cpus=$4 f="$OUT/$1.out"
    local TS=(); [ -n "$cpus" ] && TS=(taskset -c "$cpus")
    "${TS[@]}" timeout -k 5 $((DURATION + 20)) dnsperf -s "$addr" -p "$port" -d "$QUERIES" \
        -l "$DURATION" -c "$CLIENTS" -T "$THREADS" -q "$OUTSTANDING" -t 2 >"$f" 2>&1 || true
    awk '
      /Queries completed:/ {done=$3}
      /Queries lost:/      {lost=$3}
      /Response codes:/    {sub(/^ *Response codes: */, ""); gsub(/ [0-9]+ \(/, ":"); gsub(/[) ]/, ""); rc=$0}
      /Queries per second:/{qps=$4}
      /Average Latency/    {lat=$4}
      END { printf "%s %.3f %s %s %s\n", qps, lat*1000, lost, done, rc }' "$f"
}

ALL="$OUT/runs.tsv"
: >"$ALL"
NCPU=$(nproc)
for mode in $MODES; do
    if [ "$mode" = pinned ]; then SRV_CPU=1; GEN_CPU=0; else SRV_CPU=""; GEN_CPU=""; fi
    "$HERE/stop_nsd.sh" "$NSD_RUN" >/dev/null
    "$HERE/start_nsd.sh" "$WORK/example.test.zone" example.test "$NSD_ADDR" "$NSD_PORT" "$NSD_RUN" 1 "$SRV_CPU"
    pin_onehop "${SRV_CPU:-0-$((NCPU - 1))}"
    check_same || { echo "dns.sh: onehop-dns and NSD disagree on the query mix" >&2; exit 1; }
    for rep in $(seq "$REPS"); do
        for server in onehop nsd; do
            if [ "$server" = onehop ]; then a=$ONEHOP_ADDR; p=$DNS_PORT; else a=$NSD_ADDR; p=$NSD_PORT; fi
            r=$(run_dnsperf "$server-$mode-$rep" "$a" "$p" "$GEN_CPU")
            echo "RESULT dns server=$server mode=$mode rep=$rep qps/avg_ms/lost/completed/rcodes: $r"
            printf '%s\t%s\t%s\t%s\n' "$mode" "$server" "$rep" "$r" >>"$ALL"
            sleep 1
        done
    done
done
RSS=$(awk '/VmRSS/{print $2}' "/proc/$ONEHOP_PID/status" 2>/dev/null || echo "?")

python3 - "$ALL" "$CLIENTS" "$OUTSTANDING" "$DURATION" "$RSS" <<'PY' | tee "$OUT/summary.md"
import sys, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
clients, outstanding, secs, rss = sys.argv[2:6]
by = {}
for mode, server, rep, rest in rows:
    qps, lat, lost, done, rc = (rest.split(" ") + [""] * 5)[:5]
    by.setdefault((mode, server), []).append((float(qps or 0), float(lat or 0), int(lost or 0), int(done or 0), rc))
print(f"dnsperf: {clients} clients, {outstanding} outstanding, {secs} s per run; median of the runs [min-max]")
print()
print("| mode | server | qps median [min-max] | avg latency ms (median) | lost / completed (all runs) | response codes (last run) |")
print("|---|---|---|---|---|---|")
med = {}
for (mode, server), v in sorted(by.items(), key=lambda kv: (kv[0][0] != "unpinned", kv[0][1] != "onehop")):
    q = [x[0] for x in v]
    med[(mode, server)] = statistics.median(q)
    name = "onehop-dns" if server == "onehop" else "NSD 1 server"
    print(f"| {mode} | {name} | **{statistics.median(q):,.0f}** [{min(q):,.0f}-{max(q):,.0f}] | "
          f"{statistics.median(x[1] for x in v):.3f} | {sum(x[2] for x in v)} / {sum(x[3] for x in v)} | {v[-1][4]} |")
print()
for mode in sorted({m for m, _ in by}, key=lambda m: m != "unpinned"):
    if (mode, "onehop") in med and (mode, "nsd") in med and med[(mode, "nsd")]:
        print(f"{mode}: onehop-dns / NSD = {med[(mode, 'onehop')] / med[(mode, 'nsd')]:.2f}")
print(f"onehop-dns VmRSS after the runs: {rss} KiB")
PY
echo "raw dnsperf output: $OUT"
