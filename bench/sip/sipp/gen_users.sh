#!/usr/bin/env bash
# Generate a SIPp injection file with N distinct AORs user1..userN@DOMAIN.
#   gen_users.sh [N=150000] [DOMAIN=example.test] [OUT=users-N.csv]
# Format: first line SEQUENTIAL, then "userI;DOMAIN" (field0;field1).
set -euo pipefail
N="${1:-150000}"; DOMAIN="${2:-example.test}"
OUT="${3:-${BENCH_STATE:-/tmp/onehop-bench-sip}/users-$N-$DOMAIN.csv}"; mkdir -p "$(dirname "$OUT")"
if [ -s "$OUT" ] && [ "$(wc -l <"$OUT")" -eq $((N+1)) ]; then echo "$OUT"; exit 0; fi
{ echo SEQUENTIAL; awk -v n="$N" -v d="$DOMAIN" 'BEGIN{for(i=1;i<=n;i++) printf "user%d;%s\n", i, d}'; } >"$OUT"
echo "$OUT"
