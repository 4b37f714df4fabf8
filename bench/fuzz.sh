#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, cargo-fuzz with libFuzzer) for a bounded time and prints,
# per target, the executions, executions per second, coverage (edges) and corpus size.
#
#   bench/fuzz.sh [SECONDS]        SECONDS per target (default 120)
#
#   FUZZ_TARGETS="sip_parse dns_answer"   only these targets
#   FUZZ_SANITIZER=none                   no AddressSanitizer (faster; default: address)
#   FUZZ_SEED=1                           a fixed libFuzzer seed (default: random)
#   FUZZ_TIMEOUT=10                       seconds one input may take before it is a hang
#
# Needs a nightly toolchain beside the pinned one (`cargo +nightly`) and cargo-fuzz, which it
# installs when missing. New inputs the fuzzer finds go to fuzz/target/corpus/TARGET (not
# kept); crashes to fuzz/artifacts/TARGET. The kept seeds (fuzz/corpus) and the inputs of
# past faults (fuzz/regressions) are run first. Exits non-zero when a target fails.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-120}
all="sip_parse sip_headers sip_framer sip_engine wire_frame dns_answer sdp_rewrite lookup_line config_toml"
targets=${FUZZ_TARGETS:-$all}
sanitizer=${FUZZ_SANITIZER:-address}
timeout=${FUZZ_TIMEOUT:-10}

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain (cargo +nightly); cargo-fuzz needs one" >&2
  exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo +nightly install cargo-fuzz --version 0.13.2 --locked --quiet
fi

dict_of() {
  case "$1" in
    sip_*) echo fuzz/dict/sip.dict ;;
    sdp_rewrite) echo fuzz/dict/sdp.dict ;;
    lookup_line) echo fuzz/dict/lookup.dict ;;
    config_toml) echo fuzz/dict/config.dict ;;
  esac
}

start=$(date +%s)
cargo +nightly fuzz build --sanitizer "$sanitizer"
echo "fuzz: built in $(( $(date +%s) - start )) s (sanitizer $sanitizer)"

mkdir -p fuzz/target/logs
printf '%-12s %10s %9s %7s %7s %6s  %s\n' target execs execs/s cov ft corpus result
failed=0
for t in $targets; do
  work=fuzz/target/corpus/$t
  mkdir -p "$work"
  dirs=("$work" "fuzz/corpus/$t")
  [ -d "fuzz/regressions/$t" ] && dirs+=("fuzz/regressions/$t")
  args=(-max_total_time="$secs" -timeout="$timeout" -max_len=8192 -rss_limit_mb=2048
        -print_final_stats=1)
  dict=$(dict_of "$t")
  [ -n "$dict" ] && args+=(-dict="$dict")
  [ -n "${FUZZ_SEED:-}" ] && args+=(-seed="$FUZZ_SEED")
  log=fuzz/target/logs/$t.log
  set +e
  cargo +nightly fuzz run --sanitizer "$sanitizer" "$t" "${dirs[@]}" -- "${args[@]}" >"$log" 2>&1
  status=$?
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
  ft=$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
  corp=$(grep -o 'corp: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
  if [ "$status" -eq 0 ]; then
    result=ok
  else
    result="FAILED (exit $status, see $log)"
    failed=1
    grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -5 >&2 || true
  fi
  printf '%-12s %10s %9s %7s %7s %6s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" \
    "${ft:-?}" "${corp:-?}" "$result"
done
echo "fuzz: $(( $(date +%s) - start )) s in all"
exit "$failed"
