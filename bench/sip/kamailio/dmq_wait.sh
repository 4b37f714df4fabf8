#!/usr/bin/env bash
# Wait until every given Kamailio (started by start.sh with DMQ_PEER) lists all
# the others as active DMQ nodes, so that replication is on before any load.
#   dmq_wait.sh PORT [PORT...]      env: TIMEOUT=15 (seconds)
# Prints each node list (host:port status local) and exits 1 on timeout.
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: dmq_wait.sh PORT [PORT...]" >&2; exit 2; }
RUN="${BENCH_STATE:-/tmp/onehop-bench-sip}/kamailio"
want=$(( $# - 1 ))
nodes() {  # nodes PORT -> "host:port status local" per DMQ node
  kamcmd -s "unix:$RUN/kamailio-$1.ctl" dmq.list_nodes 2>/dev/null | awk '
    /host:/ {h=$2} /port:/ {p=$2} /status:/ {s=$2} /local:/ {print h ":" p, s, "local=" $2}'
}
end=$(( $(date +%s) + ${TIMEOUT:-15} ))
while :; do
  ok=1
  for p in "$@"; do
    n=$(nodes "$p" | awk '$2=="active" && $3=="local=0"' | wc -l)
    [ "$n" -ge "$want" ] || ok=0
  done
  [ $ok = 1 ] && break
  if [ "$(date +%s)" -ge "$end" ]; then
    for p in "$@"; do echo "port $p:"; nodes "$p" | sed 's/^/  /'; done
    echo "dmq_wait: not all nodes active after ${TIMEOUT:-15}s" >&2; exit 1
  fi
  sleep 0.2
done
for p in "$@"; do echo "dmq nodes seen by :$p: $(nodes "$p" | tr '\n' ';')"; done
