#!/usr/bin/env bash
# Basic-call load through a SIP proxy/registrar (Kamailio, or the Rust overlay).
#
#   run_calls.sh TARGET_HOST TARGET_PORT [RATE] [SECONDS]
#
# 1. registers the UAS as CALLEE@DOMAIN (sipp/reg_one.xml from UAS_PORT) via the
#    target, or via REG_HOST:REG_PORT when set (another proxy of the same farm),
# 2. starts a SIPp UAS (sipp/uas.xml) on UAS_PORT in the background,
# 3. runs a SIPp UAC (sipp/uac.xml): INVITE sip:CALLEE@DOMAIN via the target,
#    200 -> ACK -> BYE immediately -> 200,
# 4. stops the UAS by its PID and prints "RESULT ..." lines (UAC: completed
#    calls/s, failures, INVITE->200 and BYE->200 times; UAS: calls seen).
#
# MODE=fixed (default RATE=500 calls/s, SECONDS=20), MODE=max (closed loop, -l LIMIT,
# COUNT calls (default 20000); SECONDS is then only a safety timeout, default 20+30 s), MODE=ramp (RATES steps of STEP_SECS, BISECT refinements; MAXRATE line).
# env: CALLEE=uas DOMAIN=example.test UAS_PORT=5090 UAC_PORT=5091 UAS_CPU UAC_CPU
#      LIMIT=200 MAX_R=50000 RATES STEP_SECS=10 BISECT=2 OUTDIR
#      SIPP_IP=127.0.0.1 (the address SIPp's UAC and UAS bind)
#      REG_HOST REG_PORT (where the UAS registers; default the target)
set -uo pipefail
. "$(dirname "$0")/lib/common.sh"

HOST="${1:?usage: run_calls.sh TARGET_HOST TARGET_PORT [RATE] [SECONDS]}"
PORT="${2:?target port}"
RATE="${3:-500}"
SECS="${4:-20}"
require_loopback "$HOST"
SIPP_IP="${SIPP_IP:-127.0.0.1}"; require_loopback "$SIPP_IP"
REG_HOST="${REG_HOST:-$HOST}"; REG_PORT="${REG_PORT:-$PORT}"; require_loopback "$REG_HOST"
MODE="${MODE:-fixed}"
CALLEE="${CALLEE:-uas}"
DOMAIN="${DOMAIN:-example.test}"
UAS_PORT="${UAS_PORT:-5090}"
UAC_PORT="${UAC_PORT:-5091}"
LIMIT="${LIMIT:-200}"
MAX_R="${MAX_R:-50000}"
STEP_SECS="${STEP_SECS:-10}"
RATES="${RATES:-500 1000 1500 2000 3000 4000 5000 6000 8000}"
OUTDIR="${OUTDIR:-${BENCH_STATE:-/tmp/onehop-bench-sip}/results/calls-$(ts)}"
mkdir -p "$OUTDIR"

# --- 1. register the UAS contact -------------------------------------------
run_sipp "$OUTDIR/uas-register" 20 "" "$REG_HOST:$REG_PORT" -sf "$SIPP_DIR/reg_one.xml" -i "$SIPP_IP" \
  -p "$UAS_PORT" -t u1 -s "$CALLEE" -set domain "$DOMAIN" -m 1 -timeout 15s
if ! grep -q '^OK=1$' <(summarize "$OUTDIR/uas-register" "uas-register" >/dev/null; cat "$OUTDIR/uas-register/summary.env"); then
  echo "UAS registration of $CALLEE@$DOMAIN via $REG_HOST:$REG_PORT failed; see $OUTDIR/uas-register" >&2; exit 1
fi

# --- 2. start the UAS (bounded by -timeout and by 'timeout') ------------------
case "$MODE" in
  ramp) nsteps=$(( $(wc -w <<<"$RATES") + ${BISECT:-2} )); UAS_TTL=$(( nsteps * (STEP_SECS + 35) + 30 ));;
  *)    UAS_TTL=$(( SECS + 90 ));;
esac
mkdir -p "$OUTDIR/uas"
( cd "$OUTDIR/uas" && exec $(pin "${UAS_CPU:-}") timeout -k 5 "$UAS_TTL" sipp -sf "$SIPP_DIR/uas.xml" \
    -i "$SIPP_IP" -p "$UAS_PORT" -t u1 -nostdin -max_recv_loops 1000 -buff_size 1048576 \
    -trace_stat -stf stat.csv -fd 1 -trace_screen -screen_file screen.txt -timeout "$(( UAS_TTL - 5 ))s" \
    >sipp.out 2>&1 ) &
UAS_PID=$!
stop_uas() {
  if kill -0 "$UAS_PID" 2>/dev/null; then
    kill -TERM "$UAS_PID" 2>/dev/null; for _ in $(seq 50); do kill -0 "$UAS_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$UAS_PID" 2>/dev/null && kill -KILL "$UAS_PID" 2>/dev/null
  fi
  wait "$UAS_PID" 2>/dev/null
}
trap stop_uas EXIT
sleep 1
kill -0 "$UAS_PID" 2>/dev/null || { echo "UAS failed to start; see $OUTDIR/uas/sipp.out" >&2; cat "$OUTDIR/uas/sipp.out" >&2; exit 1; }

uac_args=( "$HOST:$PORT" -sf "$SIPP_DIR/uac.xml" -i "$SIPP_IP" -p "$UAC_PORT" -t u1 -s "$CALLEE"
           -set domain "$DOMAIN" -max_recv_loops 1000 -buff_size 1048576 )

fixed_step() {  # RATE DIR [SECONDS]
  local r="$1" d="$2" s="${3:-$STEP_SECS}"
  run_sipp "$d" $(( s + 40 )) "${UAC_CPU:-}" "${uac_args[@]}" -r "$r" -l $(( r * 10 )) -m $(( r * s )) \
    -timeout "$(( s + 30 ))s"
  summarize "$d" "calls fixed target=$HOST:$PORT uac_cpu=${UAC_CPU:-all} uas_cpu=${UAS_CPU:-all}" "$r"
}

echo "# run_calls mode=$MODE target=$HOST:$PORT registrar=$REG_HOST:$REG_PORT callee=$CALLEE@$DOMAIN uas=$SIPP_IP:$UAS_PORT out=$OUTDIR"
case "$MODE" in
  fixed) fixed_step "$RATE" "$OUTDIR/fixed-$RATE" "$SECS" ;;
  max)
    # bounded by call count (COUNT, default 20000); SECONDS is only a safety timeout
    run_sipp "$OUTDIR/max" $(( SECS + 40 )) "${UAC_CPU:-}" "${uac_args[@]}" -r "$MAX_R" -l "$LIMIT" \
      -m "${COUNT:-20000}" -timeout "$(( SECS + 30 ))s"
    summarize "$OUTDIR/max" "calls max(closed-loop,l=$LIMIT) target=$HOST:$PORT uac_cpu=${UAC_CPU:-all} uas_cpu=${UAS_CPU:-all}"
    ;;
  ramp) ramp fixed_step "$OUTDIR" ;;
  *) echo "unknown MODE=$MODE" >&2; exit 2;;
esac

sleep 2; stop_uas; trap - EXIT
summarize "$OUTDIR/uas" "uas (calls seen by callee)" | sed -e "s/ rtd.*//" -e "s/ ok\/s=[0-9.]*//"
