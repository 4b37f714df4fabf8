#!/usr/bin/env bash
# Make a baresip configuration directory from config.template and accounts.template.
#
#   ADDR=127.0.98.1 SIP_USER=user1 DOMAIN=example.test PASSWORD=... [SIP_PORT=5060] [CTRL_PORT=4444]
#   [DNS_SERVER=IP:PORT | OUTBOUND=sip:IP:PORT;transport=udp] [ANSWERMODE=manual|auto]
#   [TRANSPORT=udp|tcp] tests/baresip/render.sh DIR
#
# DIR gets config and accounts (mode 0600: it holds the password). With DNS_SERVER the
# account has no outbound proxy and baresip finds the domain's servers through that DNS
# server (NAPTR -> SRV -> A); with OUTBOUND every request goes to that proxy and the
# dns_server line is left out. TRANSPORT adds ;transport=... to the AOR (only that
# transport's SRV record is asked for). The password is taken from the environment, never
# from the command line.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${1:?usage: ADDR=... SIP_USER=... DOMAIN=... PASSWORD=... render.sh DIR}
: "${ADDR:?ADDR, the loopback address of this client, is required}"
: "${SIP_USER:?SIP_USER is required}" "${DOMAIN:?DOMAIN is required}" "${PASSWORD:?PASSWORD is required}"
case "$ADDR" in 127.*) ;; *) echo "render.sh: ADDR must be a loopback address" >&2; exit 2 ;; esac
[ -n "${DNS_SERVER:-}" ] || [ -n "${OUTBOUND:-}" ] || { echo "render.sh: set DNS_SERVER or OUTBOUND" >&2; exit 2; }
SIP_PORT=${SIP_PORT:-5060}
CTRL_PORT=${CTRL_PORT:-4444}
ANSWERMODE=${ANSWERMODE:-manual}
case "$ANSWERMODE" in manual | auto | early) ;; *) echo "render.sh: ANSWERMODE is manual, early or auto" >&2; exit 2 ;; esac
for v in SIP_USER DOMAIN PASSWORD; do
    case "${!v}" in *[\;\>\<\"\ \|\&\\]*) echo "render.sh: $v must not contain ; < > \" | & \\ or spaces" >&2; exit 2 ;; esac
done
mkdir -p "$DIR"
if [ -n "${DNS_SERVER:-}" ]; then
    sed -e "s|@ADDR@|$ADDR|g" -e "s|@SIP_PORT@|$SIP_PORT|g" -e "s|@CTRL_PORT@|$CTRL_PORT|g" \
        -e "s|@DNS_SERVER@|$DNS_SERVER|g" "$HERE/config.template" >"$DIR/config"
    outbound=""
else
    sed -e "s|@ADDR@|$ADDR|g" -e "s|@SIP_PORT@|$SIP_PORT|g" -e "s|@CTRL_PORT@|$CTRL_PORT|g" \
        -e '/^dns_server/d' "$HERE/config.template" >"$DIR/config"
    outbound=";outbound=\"$OUTBOUND\""
fi
aor="sip:$SIP_USER@$DOMAIN"
[ -n "${TRANSPORT:-}" ] && aor="$aor;transport=$TRANSPORT"
umask 077
grep -v '^#' "$HERE/accounts.template" | sed -e "s|<sip:@USER@@@DOMAIN@>|<$aor>|" \
    -e "s|@PASSWORD@|$PASSWORD|" -e "s|@ANSWERMODE@|$ANSWERMODE|" -e "s|@OUTBOUND@|$outbound|" >"$DIR/accounts"
chmod 600 "$DIR/accounts"
echo "$DIR"
