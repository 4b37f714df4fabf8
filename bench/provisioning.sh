#!/usr/bin/env bash
# The provisioning store at scale (issue #10): one farm of 3 managers, N subscriber accounts
# imported through the provisioning API, then what it costs on disk and in memory, the Raft
# snapshot the managers build, and how long a manager takes to come back.
#
# usage: bench/provisioning.sh [--accounts N] [--keep] [--help]
#   --accounts N  accounts to import (default 1,000,000; or N=... in the environment)
#   --keep        leave the farm running and its data in place at the end (for a look at it;
#                 stop it with `onehop-farm down --dir DIR`, DIR printed)
#
# What it does, in order (every wait polls a condition and has a deadline; the whole run is
# bounded by TOTAL_SECS):
#  0. Prints the load average and waits (at most LOAD_WAIT s) for the 1-minute load to fall
#     below LOAD_MAX; it goes on after that, and the summary says it did.
#  1. Starts a farm: onehop-farm up --dir DIR --base-ip BASE_IP --nodes 1 --dns 0
#     --no-demo-accounts --detach (3 event servers, 3 managers, 1 node).
#  2. Writes a CSV of N accounts (user,domain,password,display_name: u0000001@bench.test ...)
#     with python3 (awk if there is none), adds the domain (onehop-admin domains add), then
#     times `onehop-admin --json import FILE --chunk 5000 --import-id bench-1` (rows/s; checks
#     added == N and failed == 0). The managers' CPU time over the import is read from /proc.
#  3. Waits until every manager's own /v1/status shows N accounts (curl with the admin
#     certificate; the time after the import's end is the replication lag).
#  4. Snapshot: a manager builds one every 1000 Raft entries (an import batch of 1000 rows is
#     one entry). If the log reached index 999, waits for each manager's "provisioning
#     snapshot built" line; then waits until the data dirs stop changing (3 equal listings 1 s
#     apart) and reports the logged build time and size. If none was due or built, says so.
#  5. Disk, per manager: provision.redb, the current snapshot file(s), the Raft log files
#     (raft-log, raft-log-meta, raft-vote) and the whole data dir (du -sb).
#  6. Memory: VmRSS and VmHWM (peak) of each manager from /proc/PID/status.
#  7. Plain restart: kill -9 one follower, start it again with its exact `cmd` from farm.json
#     (output appended to its log), and time until its /v1/status answers with N accounts.
#  8. Restore: stop the other follower (SIGTERM), delete the contents of its data dir, start
#     it again the same way, and time until its /v1/status shows N accounts; reports the
#     "provisioning snapshot installed" line it logged. A panic in its log, its exit, or the
#     deadline ends the wait, and the summary shows the log lines that say what happened.
#     (7 runs before 8, so that a failed restore cannot disturb the plain restart's figure.)
#  8b. Only if 8 failed (and unless RESTORE_RETRY=0): stop and empty that follower again,
#     restart the leader (SIGTERM, its exact cmd; this clears what the leader remembers of the
#     follower's log), wait for a leader showing N accounts, start the follower and time it
#     the same way; also counts the leadership changes and dropped Raft streams meanwhile.
#     Step 8 stays FAILED in the summary and the exit status.
#  9. Prints a summary table and writes it to WORK/results-TIME.md (raw files in
#     WORK/run-TIME/); stops the farm and the managers it restarted (nothing else), and
#     deletes the farm's data dirs (large at 1M accounts) unless --keep.
#
# Everything listens on loopback (BASE_IP must be 127.x); nothing is sent elsewhere.
#
# Exit status: 0 when every step succeeded, 1 when a step failed (the summary says which),
# 2 for a usage error.
#
# env: N=1000000, BASE_IP=127.0.78.1, WORK=/tmp/onehop-bench-prov,
#      FARM_BIN (default target/release/onehop-farm; not built here: build it first with
#      cargo build --release -p onehop-farm, or point FARM_BIN at a copy),
#      CHUNK=5000 (rows per import request), DOMAIN=bench.test,
#      TOTAL_SECS=1800 (the whole run), APPLY_SECS=600 (every manager shows N after the
#      import), SNAP_SECS=300 (snapshot lines), SETTLE_SECS=120 (data dirs stop changing),
#      RESTART_SECS=300 (plain restart), RESTORE_SECS=900 (restore from an empty data dir),
#      STOP_SECS=60 (a stopped manager exits),
#      LOAD_MAX=1.5 LOAD_WAIT=300,
#      RESTORE_RUST_LOG (RUST_LOG for the restored manager in steps 8 and 8b, e.g.
#      info,openraft=debug; unset: the farm's default), RESTORE_RETRY=1 (0: no step 8b)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${N:-1000000}
KEEP=0
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
    --accounts)
        [ $# -ge 2 ] || { echo "provisioning.sh: --accounts needs a number" >&2; exit 2; }
        N=$2; shift ;;
    --keep) KEEP=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "provisioning.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
N=${N//,/}
N=${N//_/}
case "$N" in '' | *[!0-9]*) echo "provisioning.sh: the number of accounts must be a positive integer (got $N)" >&2; exit 2 ;; esac
N=$((10#$N))
[ "$N" -gt 0 ] || { echo "provisioning.sh: the number of accounts must be a positive integer" >&2; exit 2; }

BASE_IP=${BASE_IP:-127.0.78.1}
WORK=${WORK:-/tmp/onehop-bench-prov}
FARM_BIN=${FARM_BIN:-$ROOT/target/release/onehop-farm}
CHUNK=${CHUNK:-5000}
DOMAIN=${DOMAIN:-bench.test}
TOTAL_SECS=${TOTAL_SECS:-1800}
APPLY_SECS=${APPLY_SECS:-600}
SNAP_SECS=${SNAP_SECS:-300}
SETTLE_SECS=${SETTLE_SECS:-120}
RESTART_SECS=${RESTART_SECS:-300}
RESTORE_SECS=${RESTORE_SECS:-900}
STOP_SECS=${STOP_SECS:-60}
LOAD_MAX=${LOAD_MAX:-1.5}
LOAD_WAIT=${LOAD_WAIT:-300}
SNAPSHOT_EVERY=1000 # SnapshotPolicy::LogsSinceLast in manager/src/raft/handle.rs

case "$BASE_IP" in 127.*) ;; *) echo "provisioning.sh: refusing non-loopback address $BASE_IP" >&2; exit 2 ;; esac
for b in curl jq awk du stat date; do
    command -v "$b" >/dev/null || { echo "provisioning.sh: $b is missing" >&2; exit 1; }
done
[ -x "$FARM_BIN" ] || {
    echo "provisioning.sh: $FARM_BIN not found; build it (cargo build --release -p onehop-farm) or set FARM_BIN" >&2
    exit 1
}

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RUN=$WORK/run-$STAMP
FARM_DIR=$RUN/farm
RESULTS=$WORK/results-$STAMP.md
mkdir -p "$RUN"
START_TS=$(date +%s)
END_TS=$((START_TS + TOTAL_SECS))
FAILED=()          # one line per failed step
NOTES=()           # remarks for the summary
STARTED_PIDS=()    # managers this script started (restarts)
FARM_UP=0

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$RUN/bench.log" >&2; }
fail() { FAILED+=("$1"); log "FAILED: $1"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
# deadline SECS: the epoch second SECS from now, capped by the whole run's deadline.
deadline() { local d=$(($(date +%s) + $1)); [ "$d" -lt "$END_TS" ] || d=$END_TS; echo "$d"; }
past() { [ "$(date +%s)" -ge "$1" ]; }
# alive PID: a running process (a zombie is not).
alive() {
    local st
    st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ -n "$st" ] && [ "$st" != Z ]
}
load1() { cut -d' ' -f1 /proc/loadavg; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
human() { awk -v b="$1" 'BEGIN { split("B KiB MiB GiB TiB", u, " "); i = 1; while (b >= 1024 && i < 5) { b /= 1024; i++ } printf (i == 1 ? "%d %s" : "%.1f %s"), b, u[i] }'; }
thousands() { sed ':a;s/\B[0-9]\{3\}\>/,&/;ta' <<<"$1"; }

cleanup() {
    local rc=$?
    set +e
    for p in "${STARTED_PIDS[@]}"; do
        # Only the managers this script started, checked by their command line.
        if alive "$p" && tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q "$FARM_DIR/"; then
            if [ "$KEEP" = 1 ]; then continue; fi
            kill -TERM "$p" 2>/dev/null
        fi
    done
    if [ "$FARM_UP" = 1 ] && [ "$KEEP" = 0 ]; then
        local d=$(($(date +%s) + 30))
        for p in "${STARTED_PIDS[@]}"; do
            while alive "$p" && [ "$(date +%s)" -lt "$d" ]; do sleep 0.2; done
            alive "$p" && kill -KILL "$p" 2>/dev/null
        done
        timeout 60 "$FARM_BIN" down --dir "$FARM_DIR" >>"$RUN/farm-down.log" 2>&1 ||
            echo "provisioning.sh: onehop-farm down failed (see $RUN/farm-down.log)" >&2
        # The data dirs hold GBs at 1M accounts; the logs, farm.json and configs stay.
        rm -rf "$FARM_DIR/data"
        rm -f "$RUN/accounts.csv"
    elif [ "$KEEP" = 1 ] && [ "$FARM_UP" = 1 ]; then
        echo "provisioning.sh: --keep: the farm is still running in $FARM_DIR (stop it with $FARM_BIN down --dir $FARM_DIR)" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 0. load ----------------------------------------------------------------------------------
LOAD_BEFORE=$(loadavg)
log "load average before: $LOAD_BEFORE ($(nproc) CPUs); waiting (at most ${LOAD_WAIT}s) for the 1-minute load < $LOAD_MAX"
d=$(deadline "$LOAD_WAIT")
while awk -v l="$(load1)" -v m="$LOAD_MAX" 'BEGIN { exit !(l >= m) }'; do
    if past "$d"; then
        NOTES+=("the 1-minute load average was still $(load1) (>= $LOAD_MAX) after ${LOAD_WAIT}s; measured anyway")
        log "load still $(loadavg) after ${LOAD_WAIT}s; going on"
        break
    fi
    sleep 5
done
LOAD_START=$(loadavg)
log "load average at the start: $LOAD_START"

# --- 1. farm ----------------------------------------------------------------------------------
log "starting a farm in $FARM_DIR (base address $BASE_IP): 3 event servers, 3 managers, 1 node"
FARM_UP=1
timeout 120 "$FARM_BIN" up --dir "$FARM_DIR" --base-ip "$BASE_IP" --nodes 1 --dns 0 \
    --no-demo-accounts --detach >"$RUN/farm-up.log" 2>&1 || {
    cat "$RUN/farm-up.log" >&2
    fail "onehop-farm up failed (see $RUN/farm-up.log)"
    exit 1
}
FJ=$FARM_DIR/farm.json
ADMIN=$FARM_DIR/bin/onehop-admin
CA=$(jq -r .ca "$FJ")
ACERT=$(jq -r .admin.cert "$FJ")
AKEY=$(jq -r .admin.key "$FJ")
mapfile -t MGRS < <(jq -r '.members[] | select(.kind == "manager") | .name' "$FJ")
[ "${#MGRS[@]}" = 3 ] || { fail "expected 3 managers in farm.json, found ${#MGRS[@]}"; exit 1; }
declare -A IP API PID LOGF DATA
for m in "${MGRS[@]}"; do
    IP[$m]=$(jq -r --arg m "$m" '.members[] | select(.name == $m) | .ip' "$FJ")
    API[$m]=$(jq -r --arg m "$m" '.members[] | select(.name == $m) | .ports.api // 8443' "$FJ")
    PID[$m]=$(jq -r --arg m "$m" '.members[] | select(.name == $m) | .pid' "$FJ")
    LOGF[$m]=$(jq -r --arg m "$m" '.members[] | select(.name == $m) | .log' "$FJ")
    cfg=$(jq -r --arg m "$m" '.members[] | select(.name == $m) | .config' "$FJ")
    DATA[$m]=$(sed -n 's/^data_dir *= *"\(.*\)"$/\1/p' "$cfg")
    [ -n "${DATA[$m]}" ] || { fail "no data_dir in $cfg"; exit 1; }
    case "${IP[$m]}" in 127.*) ;; *) fail "$m has a non-loopback address ${IP[$m]}"; exit 1 ;; esac
done

# status M: the manager's own /v1/status (JSON), or nothing.
status() {
    curl -s --max-time 3 --cacert "$CA" --cert "$ACERT" --key "$AKEY" \
        "https://${IP[$1]}:${API[$1]}/v1/status" 2>/dev/null || true
}
field() { jq -r "$1 // empty" 2>/dev/null <<<"$2" || true; }
# cpu PID: user + system seconds of a process.
TICK=$(getconf CLK_TCK)
cpu() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk -v t="$TICK" '{ printf "%.2f", ($12 + $13) / t }' || echo 0; }
rss() { awk -v k="$2" '$1 == k":" { printf "%d", $2 * 1024 }' "/proc/$1/status" 2>/dev/null || echo 0; }
# restart M [ENV=VALUE]: start manager M again with its exact command from farm.json, its
# output appended to its log file; records the new pid (also in farm.json, so that
# `onehop-farm down` stops it if this script cannot).
restart() {
    local m=$1 envset=${2:-} p
    local -a cmd
    mapfile -t cmd < <(jq -r --arg m "$m" '.members[] | select(.name == $m) | .cmd[]' "$FJ")
    if [ -n "$envset" ]; then
        env "$envset" "${cmd[@]}" </dev/null >>"${LOGF[$m]}" 2>&1 &
    else
        "${cmd[@]}" </dev/null >>"${LOGF[$m]}" 2>&1 &
    fi
    p=$!
    STARTED_PIDS+=("$p")
    PID[$m]=$p
    jq --arg m "$m" --argjson p "$p" '(.members[] | select(.name == $m) | .pid) = $p' "$FJ" >"$FJ.tmp" &&
        mv "$FJ.tmp" "$FJ"
}
# wait_exit PID SECS: poll until the process is gone (true) or SECS passed (false).
wait_exit() {
    local d
    d=$(deadline "$2")
    while alive "$1"; do past "$d" && return 1; sleep 0.1; done
    return 0
}
# The log lines of manager M written after byte OFFSET, with the backtrace frames left out.
log_since() { tail -c +"$(($2 + 1))" "${LOGF[$1]}" | grep -v -E '^ +(at |[0-9]+: )' || true; }

LEADER=""
d=$(deadline 60)
while [ -z "$LEADER" ]; do
    LEADER=$(field .leader "$(status "${MGRS[0]}")")
    [ -n "$LEADER" ] && break
    past "$d" && { fail "no Raft leader within 60 s"; exit 1; }
    sleep 0.2
done
log "managers: ${MGRS[*]}; leader $LEADER"

# --- 2. CSV, domain, import ---------------------------------------------------------------------
CSV=$RUN/accounts.csv
t0=$(now)
if command -v python3 >/dev/null; then
    python3 - "$N" "$DOMAIN" >"$CSV" <<'EOF'
import sys
n, dom = int(sys.argv[1]), sys.argv[2]
out = sys.stdout
out.write("user,domain,password,display_name\n")
step = 100000
for lo in range(1, n + 1, step):
    hi = min(n, lo + step - 1)
    out.write("".join(f"u{i:07d},{dom},pw-{i:07d}-bench,Bench User {i}\n" for i in range(lo, hi + 1)))
EOF
else
    awk -v n="$N" -v dom="$DOMAIN" 'BEGIN {
        print "user,domain,password,display_name"
        for (i = 1; i <= n; i++) printf "u%07d,%s,pw-%07d-bench,Bench User %d\n", i, dom, i, i }' >"$CSV"
fi
CSV_BYTES=$(stat -c %s "$CSV")
log "wrote $CSV: $(thousands "$N") accounts, $(human "$CSV_BYTES") in $(since "$t0") s"

"$ADMIN" --farm "$FARM_DIR" domains add "$DOMAIN" >>"$RUN/admin.log" 2>&1 || {
    fail "onehop-admin domains add $DOMAIN failed (see $RUN/admin.log)"
    exit 1
}
declare -A CPU0 CPU1
for m in "${MGRS[@]}"; do CPU0[$m]=$(cpu "${PID[$m]}"); done
LOAD_IMPORT0=$(loadavg)
left=$((END_TS - $(date +%s)))
[ "$left" -gt 0 ] || { fail "no time left for the import (TOTAL_SECS=$TOTAL_SECS)"; exit 1; }
log "importing: onehop-admin --json import $CSV --chunk $CHUNK --import-id bench-1 (at most ${left}s)"
t0=$(now)
set +e
timeout "$left" "$ADMIN" --farm "$FARM_DIR" --json import "$CSV" --chunk "$CHUNK" --import-id bench-1 \
    >"$RUN/import.json" 2>"$RUN/import.err"
IMPORT_RC=$?
set -e
IMPORT_S=$(since "$t0")
IMPORT_END=$(now)
LOAD_IMPORT1=$(loadavg)
ADDED=$(jq -r '.added // empty' "$RUN/import.json" 2>/dev/null || true)
IFAILED=$(jq -r '.failed // empty' "$RUN/import.json" 2>/dev/null || true)
IROWS=$(jq -r '.rows // empty' "$RUN/import.json" 2>/dev/null || true)
RATE=$(awk -v n="${ADDED:-0}" -v s="$IMPORT_S" 'BEGIN { printf "%d", (s > 0 ? n / s : 0) }')
log "import: exit $IMPORT_RC in $IMPORT_S s: rows ${IROWS:-?}, added ${ADDED:-?}, failed ${IFAILED:-?} ($RATE rows/s); load $LOAD_IMPORT1"
if [ "$IMPORT_RC" != 0 ] || [ "${ADDED:-}" != "$N" ] || [ "${IFAILED:-}" != 0 ]; then
    fail "import: exit $IMPORT_RC, added ${ADDED:-?} of $N, failed ${IFAILED:-?} (see $RUN/import.json, $RUN/import.err: $(tail -c 300 "$RUN/import.err" | tr '\n' ' '))"
fi

# --- 3. every manager shows N -------------------------------------------------------------------
declare -A LAG APPLIED
d=$(deadline "$APPLY_SECS")
pending=("${MGRS[@]}")
while [ "${#pending[@]}" -gt 0 ]; do
    next=()
    for m in "${pending[@]}"; do
        s=$(status "$m")
        if [ "$(field .accounts "$s")" = "$N" ]; then
            LAG[$m]=$(since "$IMPORT_END")
            APPLIED[$m]=$(field .applied_index "$s")
        else
            next+=("$m")
        fi
    done
    pending=("${next[@]}")
    [ "${#pending[@]}" = 0 ] && break
    if past "$d"; then
        for m in "${pending[@]}"; do
            fail "$m did not show $N accounts within ${APPLY_SECS}s of the import's end (status: $(status "$m"))"
            LAG[$m]="> ${APPLY_SECS}"
        done
        break
    fi
    sleep 0.2
done
for m in "${MGRS[@]}"; do CPU1[$m]=$(cpu "${PID[$m]}"); done
log "applied everywhere: $(for m in "${MGRS[@]}"; do printf '%s +%ss (index %s)  ' "$m" "${LAG[$m]}" "${APPLIED[$m]:-?}"; done)"
LEADER=$(field .leader "$(status "$LEADER")")
[ -n "$LEADER" ] || LEADER=$(field .leader "$(status "${MGRS[0]}")")

# --- 4. snapshots, then the data dirs settle ------------------------------------------------
# A snapshot is due once the log reaches index SNAPSHOT_EVERY - 1 (indexes start at 0).
MAX_APPLIED=0
for m in "${MGRS[@]}"; do
    a=${APPLIED[$m]:-0}
    [ "$a" -gt "$MAX_APPLIED" ] 2>/dev/null && MAX_APPLIED=$a
done
SNAP_DUE=0
[ "$MAX_APPLIED" -ge $((SNAPSHOT_EVERY - 1)) ] && SNAP_DUE=1
if [ "$SNAP_DUE" = 1 ]; then
    log "Raft index $MAX_APPLIED >= $((SNAPSHOT_EVERY - 1)): waiting (at most ${SNAP_SECS}s) for every manager's snapshot"
    d=$(deadline "$SNAP_SECS")
    for m in "${MGRS[@]}"; do
        until grep -q "provisioning snapshot built" "${LOGF[$m]}"; do
            if past "$d"; then
                fail "$m logged no \"provisioning snapshot built\" within ${SNAP_SECS}s (Raft index $MAX_APPLIED)"
                break
            fi
            sleep 0.5
        done
    done
else
    NOTES+=("no snapshot was due: the Raft log reached index $MAX_APPLIED, a snapshot is built every $SNAPSHOT_EVERY entries (one entry per 1000 imported rows)")
fi
listing() { for m in "${MGRS[@]}"; do find "${DATA[$m]}" -maxdepth 1 -type f -printf '%f %s %T@\n'; done | sort; }
d=$(deadline "$SETTLE_SECS")
prev=""
same=0
while [ "$same" -lt 2 ]; do
    cur=$(listing)
    if [ "$cur" = "$prev" ]; then same=$((same + 1)); else same=0; fi
    prev=$cur
    [ "$same" -ge 2 ] && break
    if past "$d"; then
        NOTES+=("the data dirs were still changing ${SETTLE_SECS}s after the import; sizes taken then")
        break
    fi
    sleep 1
done

# Snapshot lines: "provisioning snapshot built bytes=B last=Some(LogId { ..., index: I }) ms=T"
snap_field() { sed -n "s/.*provisioning snapshot $2.* $1=\([0-9]*\).*/\1/p"; }
snap_index() { sed -n 's/.*provisioning snapshot built.* index: \([0-9]*\) }).*/\1/p'; }
declare -A SNAP_N SNAP_BYTES SNAP_MS SNAP_IDX
for m in "${MGRS[@]}"; do
    lines=$(grep "provisioning snapshot built" "${LOGF[$m]}" || true)
    SNAP_N[$m]=$(printf '%s' "$lines" | grep -c . || true)
    last=$(printf '%s\n' "$lines" | tail -n 1)
    SNAP_BYTES[$m]=$(snap_field bytes built <<<"$last")
    SNAP_MS[$m]=$(snap_field ms built <<<"$last")
    SNAP_IDX[$m]=$(snap_index <<<"$last")
    [ -n "$lines" ] && printf '%s\n' "$lines" >>"$RUN/snapshot-lines.txt"
done

# --- 5. disk ----------------------------------------------------------------------------------
declare -A D_REDB D_SNAP D_SNAPFILES D_LOG D_TOTAL
for m in "${MGRS[@]}"; do
    dd=${DATA[$m]}
    D_REDB[$m]=$(stat -c %s "$dd/provision.redb" 2>/dev/null || echo 0)
    D_SNAP[$m]=$(find "$dd" -maxdepth 1 -type f \( -name 'snapshot-*' -o -name snapshot.meta \) -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
    D_SNAPFILES[$m]=$(find "$dd" -maxdepth 1 -type f -name 'snapshot-*' -printf '%f ' | sed 's/ $//')
    D_LOG[$m]=$(find "$dd" -maxdepth 1 -type f -name 'raft-*' -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
    D_TOTAL[$m]=$(du -sb "$dd" | cut -f1)
    ls -la "$dd" >>"$RUN/data-dirs.txt"
done

# --- 6. memory --------------------------------------------------------------------------------
declare -A RSS HWM
for m in "${MGRS[@]}"; do
    RSS[$m]=$(rss "${PID[$m]}" VmRSS)
    HWM[$m]=$(rss "${PID[$m]}" VmHWM)
done
log "disk and memory taken; load $(loadavg)"

# --- 7. plain restart of a follower (kill -9, data intact) ---------------------------------------
FOLLOWERS=()
for m in "${MGRS[@]}"; do [ "$m" != "$LEADER" ] && FOLLOWERS+=("$m"); done
if [ "${#FOLLOWERS[@]}" -lt 2 ]; then
    fail "could not tell the leader from the followers (leader: ${LEADER:-none})"
    exit 1
fi
RM=${FOLLOWERS[0]}
WM=${FOLLOWERS[1]}
RESTART_S="" RESTART_FIRST="" RESTART_LOAD=""
log "plain restart: kill -9 $RM (pid ${PID[$RM]}), start it again with its data"
kill -KILL "${PID[$RM]}"
if wait_exit "${PID[$RM]}" "$STOP_SECS"; then
    off=$(stat -c %s "${LOGF[$RM]}")
    RESTART_LOAD=$(loadavg)
    t0=$(now)
    restart "$RM"
    d=$(deadline "$RESTART_SECS")
    while :; do
        s=$(status "$RM")
        [ -n "$s" ] && [ -z "$RESTART_FIRST" ] && RESTART_FIRST=$(since "$t0")
        if [ "$(field .accounts "$s")" = "$N" ]; then RESTART_S=$(since "$t0"); break; fi
        if ! alive "${PID[$RM]}"; then
            fail "plain restart: $RM exited after its restart; its log: $(log_since "$RM" "$off" | tail -n 5 | tr '\n' ' ')"
            break
        fi
        if past "$d"; then
            fail "plain restart: $RM did not show $N accounts within ${RESTART_SECS}s (status: ${s:-no answer})"
            break
        fi
        sleep 0.1
    done
    log_since "$RM" "$off" >"$RUN/restart-$RM.log"
    RESTART_RSS=$(rss "${PID[$RM]}" VmRSS)
    log "plain restart of $RM: first answer after ${RESTART_FIRST:-?} s, $N accounts after ${RESTART_S:-?} s"
else
    fail "plain restart: $RM (pid ${PID[$RM]}) still running ${STOP_SECS}s after SIGKILL"
fi

# --- 8. restore a follower from an empty data dir ----------------------------------------------
# await_accounts M OFFSET T0 SECS: poll M's /v1/status until it shows N accounts; sets W_S (s
# since T0), W_FIRST (first answer), W_WHY (panic, exit or timeout when it never did) and
# W_STATUS (its last answer). A panic in its log after OFFSET or its exit ends the wait.
await_accounts() {
    local m=$1 off=$2 t0=$3 dl s
    W_S="" W_FIRST="" W_WHY="" W_STATUS=""
    dl=$(deadline "$4")
    while :; do
        s=$(status "$m")
        W_STATUS=$s
        [ -n "$s" ] && [ -z "$W_FIRST" ] && W_FIRST=$(since "$t0")
        if [ "$(field .accounts "$s")" = "$N" ]; then W_S=$(since "$t0"); return 0; fi
        if log_since "$m" "$off" | grep -q panicked; then W_WHY=panic; return 1; fi
        if ! alive "${PID[$m]}"; then W_WHY=exit; return 1; fi
        if past "$dl"; then W_WHY=timeout; return 1; fi
        sleep 0.2
    done
}
# stop_empty M: SIGTERM (SIGKILL after STOP_SECS), then delete the contents of its data dir.
stop_empty() {
    kill -TERM "${PID[$1]}" 2>/dev/null || true
    if ! wait_exit "${PID[$1]}" "$STOP_SECS"; then
        NOTES+=("$1 (pid ${PID[$1]}) was still running ${STOP_SECS}s after SIGTERM; killed with SIGKILL")
        kill -KILL "${PID[$1]}" 2>/dev/null || true
        wait_exit "${PID[$1]}" "$STOP_SECS" || return 1
    fi
    find "${DATA[$1]}" -mindepth 1 -delete
}
max_term() {
    local m t best=0
    for m in "${MGRS[@]}"; do
        t=$(field .term "$(status "$m")")
        [ -n "$t" ] && [ "$t" -gt "$best" ] && best=$t
    done
    echo "$best"
}
RESTORE_S="" RESTORE_FIRST="" RESTORE_LOAD="" INSTALLED="" RESTORE_WHY="" RESTORE_RSS=""
RETRY_DONE=0 RETRY_S="" RETRY_FIRST="" RETRY_WHY="" RETRY_INSTALLED="" RETRY_LEADER_S=""
RETRY_LEADER="" RETRY_LOAD="" RETRY_TERM0="" RETRY_TERM1="" RETRY_ACTIVE=0 RETRY_DROPPED=0
RETRY_RSS="" RETRY_DISK="" RESTORE_STATUS="" RESTORE_DISK=""
# Wait until the restarted manager has caught up, so that the farm is whole again.
d=$(deadline 120)
until [ "$(field .applied_index "$(status "$RM")")" -ge "$(field .applied_index "$(status "$LEADER")")" ] 2>/dev/null; do
    past "$d" && { NOTES+=("$RM had not caught up with the leader 120 s after its restart when $WM was stopped"); break; }
    sleep 0.2
done
log "restore: SIGTERM $WM (pid ${PID[$WM]}), empty ${DATA[$WM]}, start it again"
if stop_empty "$WM"; then
    off=$(stat -c %s "${LOGF[$WM]}")
    RESTORE_LOAD=$(loadavg)
    t0=$(now)
    if [ -n "${RESTORE_RUST_LOG:-}" ]; then restart "$WM" "RUST_LOG=$RESTORE_RUST_LOG"; else restart "$WM"; fi
    if await_accounts "$WM" "$off" "$t0" "$RESTORE_SECS"; then
        RESTORE_S=$W_S
    else
        RESTORE_WHY=$W_WHY
        case "$W_WHY" in
        panic) fail "restore: $WM panicked $(since "$t0") s after its start (status then: ${W_STATUS:-no answer})" ;;
        exit) fail "restore: $WM exited after its start" ;;
        *) fail "restore: $WM did not show $N accounts within ${RESTORE_SECS}s (status: ${W_STATUS:-no answer})" ;;
        esac
    fi
    RESTORE_FIRST=$W_FIRST
    log_since "$WM" "$off" >"$RUN/restore-$WM.log"
    INSTALLED=$(grep "provisioning snapshot installed" "$RUN/restore-$WM.log" | tail -n 1 || true)
    RESTORE_STATUS=$(status "$WM")
    RESTORE_RSS=$(rss "${PID[$WM]}" VmRSS)
    RESTORE_DISK=$(du -sb "${DATA[$WM]}" | cut -f1)
    log "restore of $WM: first answer after ${RESTORE_FIRST:-?} s, $N accounts after ${RESTORE_S:-never} s; ${INSTALLED:-no snapshot installed}"
else
    fail "restore: $WM (pid ${PID[$WM]}) could not be stopped"
fi

# --- 8b. if the restore failed: again, after a restart of the leader ---------------------------
# The leader keeps what it knows of each follower's log (openraft's replication progress) while
# it stays leader; a restart of the leader clears it. Only when step 8 failed, and unless
# RESTORE_RETRY=0: stop and empty the follower again, restart the leader (SIGTERM, its exact
# cmd), wait until the farm has a leader whose status shows N, then start the follower.
if [ -n "$RESTORE_WHY" ] && [ "${RESTORE_RETRY:-1}" != 0 ]; then
    RETRY_DONE=1
    log "restore again: stop and empty $WM, restart the leader $LEADER, then start $WM"
    if stop_empty "$WM"; then
        kill -TERM "${PID[$LEADER]}"
        if wait_exit "${PID[$LEADER]}" "$STOP_SECS"; then
            t1=$(now)
            restart "$LEADER"
            d=$(deadline "$RESTART_SECS")
            newleader=""
            until [ -n "$newleader" ] && [ "$(field .accounts "$(status "$newleader")")" = "$N" ]; do
                newleader=$(field .leader "$(status "$LEADER")")
                if past "$d"; then fail "restore again: no leader showing $N accounts ${RESTART_SECS}s after restarting $LEADER"; break; fi
                sleep 0.2
            done
            RETRY_LEADER_S=$(since "$t1")
            RETRY_LEADER=$newleader
            RETRY_TERM0=$(max_term)
            declare -A OFF
            for m in "${MGRS[@]}"; do OFF[$m]=$(stat -c %s "${LOGF[$m]}"); done
            RETRY_LOAD=$(loadavg)
            t0=$(now)
            if [ -n "${RESTORE_RUST_LOG:-}" ]; then restart "$WM" "RUST_LOG=$RESTORE_RUST_LOG"; else restart "$WM"; fi
            if await_accounts "$WM" "${OFF[$WM]}" "$t0" "$RESTORE_SECS"; then
                RETRY_S=$W_S
            else
                RETRY_WHY=$W_WHY
                fail "restore again (after the leader's restart): $WM: $W_WHY after $(since "$t0") s (status: ${W_STATUS:-no answer})"
            fi
            RETRY_FIRST=$W_FIRST
            RETRY_TERM1=$(max_term)
            RETRY_ACTIVE=0 RETRY_DROPPED=0
            for m in "${MGRS[@]}"; do
                log_since "$m" "${OFF[$m]}" >"$RUN/retry-$m.log"
                RETRY_ACTIVE=$((RETRY_ACTIVE + $(grep -c "now the active manager" "$RUN/retry-$m.log" || true)))
                RETRY_DROPPED=$((RETRY_DROPPED + $(grep -c "closing raft stream" "$RUN/retry-$m.log" || true)))
            done
            RETRY_INSTALLED=$(grep "provisioning snapshot installed" "$RUN/retry-$WM.log" | tail -n 1 || true)
            RETRY_RSS=$(rss "${PID[$WM]}" VmRSS)
            RETRY_DISK=$(du -sb "${DATA[$WM]}" | cut -f1)
            log "restore again of $WM: $N accounts after ${RETRY_S:-never} s; terms $RETRY_TERM0 -> $RETRY_TERM1; ${RETRY_INSTALLED:-no snapshot installed}"
        else
            fail "restore again: the leader $LEADER (pid ${PID[$LEADER]}) still running ${STOP_SECS}s after SIGTERM"
        fi
    else
        fail "restore again: $WM could not be stopped"
    fi
fi
LOAD_END=$(loadavg)

# --- 9. summary -------------------------------------------------------------------------------
MIB() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
{
    echo "# Provisioning store: $(thousands "$N") accounts"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, onehop-farm $FARM_BIN"
    echo "($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?') checked out in $ROOT)."
    echo "Load average (1, 5, 15 min): before $LOAD_BEFORE; at the start $LOAD_START; import $LOAD_IMPORT0 -> $LOAD_IMPORT1;"
    echo "plain restart ${RESTART_LOAD:-?}; restore ${RESTORE_LOAD:-?}; end $LOAD_END."
    echo "Farm: $FARM_DIR (3 managers: ${MGRS[*]}; leader $LEADER). Raw files: $RUN"
    echo
    echo "## Import"
    echo
    echo "| accounts | CSV | chunk | time | rows/s | added | failed | exit |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
    echo "| $(thousands "$N") | $(human "$CSV_BYTES") | $CHUNK | ${IMPORT_S} s | **$(thousands "$RATE")** | ${ADDED:-?} | ${IFAILED:-?} | $IMPORT_RC |"
    echo
    echo "## Per manager"
    echo
    echo "| | ${MGRS[0]} | ${MGRS[1]} | ${MGRS[2]} |"
    echo "|---|---:|---:|---:|"
    row() { local label=$1; shift; printf '| %s |' "$label"; for v in "$@"; do printf ' %s |' "$v"; done; echo; }
    roles=(); for m in "${MGRS[@]}"; do
        r=follower; [ "$m" = "$LEADER" ] && r=leader; [ "$m" = "$RM" ] && r="$r, kill -9 restart"; [ "$m" = "$WM" ] && r="$r, restored"; roles+=("$r"); done
    row "role" "${roles[@]}"
    v=(); for m in "${MGRS[@]}"; do v+=("+${LAG[$m]:-?} s"); done; row "shows N accounts, after the import's end" "${v[@]}"
    v=(); for m in "${MGRS[@]}"; do v+=("${APPLIED[$m]:-?}"); done; row "Raft applied index" "${v[@]}"
    v=(); for m in "${MGRS[@]}"; do v+=("$(awk -v a="${CPU0[$m]}" -v b="${CPU1[$m]}" 'BEGIN { printf "%.1f s", b - a }')"); done
    row "CPU (user+sys) during import + apply" "${v[@]}"
    v=(); for m in "${MGRS[@]}"; do v+=("$(MIB "${D_REDB[$m]}") MiB"); done; row "provision.redb" "${v[@]}"
    v=(); for m in "${MGRS[@]}"; do v+=("$(MIB "${D_SNAP[$m]}") MiB"); done; row "snapshot file(s) + snapshot.meta" "${v[@]}"
    v=(); for m in "${MGRS[@]}"; do v+=("$(MIB "${D_LOG[$m]}") MiB"); done; row "Raft log (raft-log, -meta, -vote)" "${v[@]}"
    v=(); for m in "${MGRS[@]}"; do v+=("**$(MIB "${D_TOTAL[$m]}") MiB**"); done; row "data dir, du -sb" "${v[@]}"
    v=(); for m in "${MGRS[@]}"; do v+=("$(awk -v b="${D_TOTAL[$m]}" -v n="$N" 'BEGIN { printf "%d", b / n }') B"); done; row "data dir per account" "${v[@]}"
    v=(); for m in "${MGRS[@]}"; do v+=("$(awk -v b="${D_REDB[$m]}" -v n="$N" 'BEGIN { printf "%d", b / n }') B"); done; row "provision.redb per account" "${v[@]}"
    v=(); for m in "${MGRS[@]}"; do v+=("$(MIB "${RSS[$m]}") MiB"); done; row "VmRSS after the import" "${v[@]}"
    v=(); for m in "${MGRS[@]}"; do v+=("$(MIB "${HWM[$m]}") MiB"); done; row "VmHWM (peak RSS) by then" "${v[@]}"
    v=(); for m in "${MGRS[@]}"; do v+=("${SNAP_N[$m]:-0}"); done; row "snapshots built (log lines)" "${v[@]}"
    v=(); for m in "${MGRS[@]}"; do if [ -n "${SNAP_BYTES[$m]}" ]; then v+=("$(MIB "${SNAP_BYTES[$m]}") MiB at index ${SNAP_IDX[$m]:-?}"); else v+=("none"); fi; done
    row "last snapshot built: size" "${v[@]}"
    v=(); for m in "${MGRS[@]}"; do if [ -n "${SNAP_MS[$m]}" ]; then v+=("${SNAP_MS[$m]} ms"); else v+=("none"); fi; done
    row "last snapshot built: time" "${v[@]}"
    echo
    echo "## Restarts"
    echo
    echo "| what | manager | first /v1/status answer | /v1/status shows $(thousands "$N") accounts | RSS after |"
    echo "|---|---|---:|---:|---:|"
    echo "| kill -9, restart with its data | $RM | ${RESTART_FIRST:-none} s | **${RESTART_S:-never}** s | $(MIB "${RESTART_RSS:-0}") MiB |"
    echo "| SIGTERM, empty data dir, restart | $WM | ${RESTORE_FIRST:-none} s | **${RESTORE_S:-never}** s | $(MIB "${RESTORE_RSS:-0}") MiB |"
    if [ "$RETRY_DONE" = 1 ]; then
        echo "| the same again after a restart of the leader (workaround) | $WM | ${RETRY_FIRST:-none} s | **${RETRY_S:-never}** s | $(MIB "${RETRY_RSS:-0}") MiB |"
    fi
    echo
    if [ -n "$INSTALLED" ]; then
        echo "Snapshot installed by $WM: \`$(sed 's/^.*INFO //' <<<"$INSTALLED")\`"
    else
        echo "$WM logged no \"provisioning snapshot installed\" line after its restart from an empty data dir."
    fi
    if [ "$RETRY_DONE" = 1 ]; then
        echo
        echo "Restore again, after a restart of the leader: $LEADER was stopped and started again (a leader"
        echo "($RETRY_LEADER) showing $N accounts ${RETRY_LEADER_S:-?} s later; load ${RETRY_LOAD:-?}); then $WM, emptied again, was started:"
        if [ -n "$RETRY_INSTALLED" ]; then
            echo "it logged \`$(sed 's/^.*INFO //' <<<"$RETRY_INSTALLED")\`."
        else
            echo "it logged no \"provisioning snapshot installed\" line."
        fi
        echo "While it caught up the Raft term went from $RETRY_TERM0 to ${RETRY_TERM1:-?}; the managers logged \"now the active manager\""
        echo "$RETRY_ACTIVE times and \"closing raft stream\" $RETRY_DROPPED times (logs: $RUN/retry-*.log). Its data dir then: $(human "${RETRY_DISK:-0}")."
    fi
    if [ -n "$RESTORE_WHY" ]; then
        echo
        echo "### The restore failed ($RESTORE_WHY)"
        echo
        echo "$WM's status afterwards: \`${RESTORE_STATUS:-no answer}\`; its data dir: $(human "${RESTORE_DISK:-0}")."
        echo "Its log from the restart (backtrace frames left out; whole log in $RUN/restore-$WM.log):"
        echo
        echo '```'
        grep -E "panicked|unwrap|snapshot|raft|WARN|ERROR|shutting" "$RUN/restore-$WM.log" | cut -c1-400 | head -n 30
        echo '```'
    fi
    echo
    if [ "${#NOTES[@]}" -gt 0 ]; then
        echo "Notes:"
        for n in "${NOTES[@]}"; do echo "- $n"; done
        echo
    fi
    if [ "${#FAILED[@]}" -gt 0 ]; then
        echo "**FAILED steps:**"
        for f in "${FAILED[@]}"; do echo "- $f"; done
    else
        echo "Every step succeeded."
    fi
} >"$RESULTS"
cp "$RESULTS" "$RUN/summary.md"
echo
cat "$RESULTS"
echo
echo "results: $RESULTS"
[ "${#FAILED[@]}" = 0 ]
