#!/usr/bin/env bash
# SIPp REGISTER load against a registrar (Kamailio, or the Rust overlay).
#
#   run_register.sh TARGET_HOST TARGET_PORT [RATE] [SECONDS]
#
# MODE=fixed (default): offer RATE REGISTER/s for SECONDS (-r RATE -m RATE*SECONDS).
#     Without SECONDS: COUNT=N, i.e. every AOR user1..userN registered once.
# MODE=max: closed loop, no rate cap: -r MAX_R -l LIMIT -m COUNT (default N);
#     SECONDS is then only a safety timeout (default 120).
#     Reports the throughput the target sustains with LIMIT requests in flight.
# MODE=ramp: fixed-rate steps over RATES (STEP_SECS each), stop at the first
#     failing step, then BISECT refinement steps.  Pass = failures < FAIL_MAX_PCT
#     (0.1) % and ok/s >= MIN_ACHIEVED (0.95) x offered.  Prints MAXRATE line.
#
# env: N=150000 DOMAIN=example.test SIPP_CPU=(taskset list, empty=unpinned)
#      SIPP_IP=127.0.0.1 (the address SIPp binds) LOCAL_PORT=5070 LIMIT=200 MAX_R=100000 COUNT RATES STEP_SECS=10 BISECT=2
#      OUTDIR=results/register-<timestamp>
# Output: one "RESULT ..." line per run (ok/s, failures, retrans, rtt pctl in ms)
# and per-run files (stat.csv, *_rtt.csv, screen.txt, summary.env) under OUTDIR.
set -uo pipefail
. "$(dirname "$0")/lib/common.sh"

HOST="${1:?usage: run_register.sh TARGET_HOST TARGET_PORT [RATE] [SECONDS]}"
PORT="${2:?target port}"
RATE="${3:-1000}"
SECS="${4:-}"
require_loopback "$HOST"
SIPP_IP="${SIPP_IP:-127.0.0.1}"; require_loopback "$SIPP_IP"
MODE="${MODE:-fixed}"
N="${N:-150000}"
DOMAIN="${DOMAIN:-example.test}"
LOCAL_PORT="${LOCAL_PORT:-5070}"
LIMIT="${LIMIT:-200}"
MAX_R="${MAX_R:-100000}"
STEP_SECS="${STEP_SECS:-10}"
RATES="${RATES:-2000 4000 6000 8000 10000 12000 14000 16000 20000 25000 30000}"
OUTDIR="${OUTDIR:-${BENCH_STATE:-/tmp/onehop-bench-sip}/results/register-$(ts)}"
mkdir -p "$OUTDIR"
CSV="$("$SIPP_DIR/gen_users.sh" "$N" "$DOMAIN")"

common_args=( "$HOST:$PORT" -sf "$SIPP_DIR/register.xml" -inf "$CSV" -i "$SIPP_IP" -p "$LOCAL_PORT"
              -t u1 -max_recv_loops 1000 -buff_size 1048576 )

# one fixed-rate run: RATE DIR [COUNT]
fixed_step() {
  local r="$1" d="$2" m="${3:-}"
  [ -z "$m" ] && m=$(( r * STEP_SECS ))
  local dur=$(( m / r + 1 ))
  run_sipp "$d" $(( dur + 30 )) "${SIPP_CPU:-}" "${common_args[@]}" -r "$r" -l $(( r * 10 )) -m "$m" \
    -timeout "$(( dur + 20 ))s"
  summarize "$d" "register fixed target=$HOST:$PORT sipp_cpu=${SIPP_CPU:-all}" "$r"
}

echo "# run_register mode=$MODE target=$HOST:$PORT N=$N sipp_cpu=${SIPP_CPU:-all} out=$OUTDIR"
case "$MODE" in
  fixed)
    if [ -n "$SECS" ]; then COUNT="${COUNT:-$(( RATE * SECS ))}"; else COUNT="${COUNT:-$N}"; fi
    STEP_SECS=$(( COUNT / RATE )); [ "$STEP_SECS" -lt 1 ] && STEP_SECS=1
    fixed_step "$RATE" "$OUTDIR/fixed-$RATE" "$COUNT"
    ;;
  max)
    COUNT="${COUNT:-$N}"
    # bounded by COUNT; SECONDS (default 120) is only a safety timeout
    hard=$(( ${SECS:-120} + 30 ))
    run_sipp "$OUTDIR/max" "$hard" "${SIPP_CPU:-}" "${common_args[@]}" -r "$MAX_R" -l "$LIMIT" -m "$COUNT" \
      -timeout "$(( hard - 10 ))s"
    summarize "$OUTDIR/max" "register max(closed-loop,l=$LIMIT) target=$HOST:$PORT sipp_cpu=${SIPP_CPU:-all}"
    ;;
  ramp)
    ramp fixed_step "$OUTDIR"
    ;;
  *) echo "unknown MODE=$MODE" >&2; exit 2;;
esac
