#!/usr/bin/env bash
# Write on stdout a zone file holding every record a running onehop-dns answers for its
# domain, asked with dig (there is no zone transfer): SOA, NS, NAPTR, the whole SRV RRsets
# (answers are random slices of K, so each SRV name is asked until every proxy / event
# server listed in farm.json was seen), and A/AAAA of every member's NAME.DOMAIN. The lines
# are dig's, which are zone-file syntax with absolute names; the SOA comes first.
#   zone_from_dns.sh ADDR PORT FARM_DIR
set -euo pipefail
ADDR="${1:?address}"; PORT="${2:?port}"; FARM="${3:?farm dir}"
read -r DOMAIN PROXIES ESS NAMES < <(python3 - "$FARM/farm.json" <<'PY'
import json, sys
f = json.load(open(sys.argv[1]))
m = f["members"]
proxies = sum(1 for x in m if x["kind"] == "node" and "sip_proxy" in x["roles"])
ess = sum(1 for x in m if x["kind"] == "eventserver")
print(f["domain"], proxies, ess, ",".join(x["name"] for x in m))
PY
)
q() { dig @"$ADDR" -p "$PORT" +norecurse +noall +answer +time=2 +tries=2 "$@" | grep -v '^;' | grep -v '^$' || true; }
out=$(mktemp); trap 'rm -f "$out"' EXIT
{
  q "$DOMAIN" SOA
  q "$DOMAIN" NS
  q "$DOMAIN" NAPTR
} >>"$out"
whole_srv() {  # whole_srv NAME EXPECTED
  local seen
  for _ in $(seq 200); do
    q "$1" SRV >>"$out"
    seen=$(awk -v n="$1." '$1 == n && $4 == "SRV"' "$out" | sort -u | wc -l)
    [ "$seen" -ge "$2" ] && return 0
  done
  echo "zone_from_dns.sh: $1 SRV: saw $seen of $2 records in 200 answers" >&2; exit 1
}
whole_srv "_sip._udp.$DOMAIN" "$PROXIES"
whole_srv "_sip._tcp.$DOMAIN" "$PROXIES"
whole_srv "_eventserver._udp.$DOMAIN" "$ESS"
# _sips._tcp only when TLS is published (NAPTR SIPS+D2T).
if grep -q '"SIPS+D2T"' "$out"; then whole_srv "_sips._tcp.$DOMAIN" "$PROXIES"; fi
for n in ${NAMES//,/ }; do
  q "$n.$DOMAIN" A >>"$out"
  q "$n.$DOMAIN" AAAA >>"$out"
done
echo "; every record onehop-dns at $ADDR:$PORT answered for $DOMAIN ($(date -u +%FT%TZ))"
awk '!seen[$0]++' "$out"
