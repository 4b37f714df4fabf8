#!/usr/bin/env python3
"""The numbers of the ENUM benchmark (bench/enum.sh): provisioning them through a farm's
provisioning API, the same records as an NSD zone file, and the dnsperf query file.

The numbers are FIRST, FIRST+1, ... FIRST+N-1 (E.164, '+' and digits), routed to
sip:<number>@carrier.example; they lie in one block of the carrier BENCH.

  numbers.py provision FARM_DIR FIRST N [THREADS]   carrier, block, N numbers (POST /v1/...)
  numbers.py zone FIRST N SOA_LINE NS_LINE...        an NSD zone file for e164.arpa on stdout
  numbers.py queries FIRST N COUNT                   a dnsperf query file on stdout

Provisioning uses the farm's admin certificate (farm.json) over HTTPS with mutual TLS, one
keep-alive connection per thread spread over the managers; a number that exists already
(409) counts as done, so a second run completes an interrupted one. Only loopback managers
are accepted.
"""

import http.client
import json
import random
import ssl
import sys
import threading
import time

SUFFIX = "e164.arpa."
CARRIER = "BENCH"


def number(first, i):
    return "+%d" % (int(first.lstrip("+")) + i)


def uri(n):
    return "sip:%s@carrier.example" % n


def enum_name(n):
    return ".".join(reversed(n.lstrip("+"))) + "." + SUFFIX


def managers(farm):
    out = []
    for m in farm["members"]:
        if m["kind"] != "manager":
            continue
        ip = m["ip"]
        if not ip.startswith("127."):
            sys.exit("numbers.py: refusing non-loopback manager %s" % ip)
        out.append((ip, m.get("ports", {}).get("api", 8443)))
    if not out:
        sys.exit("numbers.py: no manager in farm.json")
    return out


class Api:
    def __init__(self, farm, which):
        ctx = ssl.create_default_context(cafile=farm["ca"])
        ctx.load_cert_chain(farm["admin"]["cert"], farm["admin"]["key"])
        self.ctx = ctx
        self.host, self.port = which
        self.conn = None

    def call(self, method, path, body):
        data = json.dumps(body).encode()
        for attempt in range(3):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPSConnection(
                        self.host, self.port, context=self.ctx, timeout=30)
                self.conn.request(method, path, body=data,
                                  headers={"Content-Type": "application/json"})
                r = self.conn.getresponse()
                text = r.read()
                return r.status, text
            except (OSError, http.client.HTTPException) as e:
                self.conn = None
                if attempt == 2:
                    return 0, str(e).encode()
                time.sleep(0.2)
        return 0, b""


def provision(farm_dir, first, n, threads):
    farm = json.load(open(farm_dir + "/farm.json"))
    mgrs = managers(farm)
    api = Api(farm, mgrs[0])
    last = number(first, n - 1)
    for path, body in [
        ("/v1/carriers", {"ocn": CARRIER, "name": "Benchmark carrier"}),
        ("/v1/blocks", {"first": first, "last": last, "carrier": CARRIER}),
    ]:
        status, text = api.call("POST", path, body)
        if status not in (200, 201, 409):
            sys.exit("numbers.py: POST %s: %d %s" % (path, status, text.decode(errors="replace")))
    counts = {"ok": 0, "exists": 0, "failed": 0}
    errors = []
    lock = threading.Lock()

    def work(t):
        a = Api(farm, mgrs[t % len(mgrs)])
        for i in range(t, n, threads):
            num = number(first, i)
            status, text = a.call("POST", "/v1/numbers",
                                  {"number": num, "route": {"uri": uri(num)}})
            with lock:
                if status in (200, 201):
                    counts["ok"] += 1
                elif status == 409:
                    counts["exists"] += 1
                else:
                    counts["failed"] += 1
                    if len(errors) < 5:
                        errors.append("%s: %d %s" % (num, status, text.decode(errors="replace")))

    start = time.monotonic()
    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    took = time.monotonic() - start
    print("PROVISIONED numbers=%d added=%d existed=%d failed=%d seconds=%.1f per_s=%.0f threads=%d"
          % (n, counts["ok"], counts["exists"], counts["failed"], took, n / took, threads))
    for e in errors:
        print("  error: " + e, file=sys.stderr)
    if counts["failed"]:
        sys.exit(1)


def zone(first, n, soa, ns):
    print("; ENUM benchmark: %d numbers from %s, the records onehop-dns answers" % (n, first))
    print("$ORIGIN " + SUFFIX)
    print(soa)
    for line in ns:
        print(line)
    for i in range(n):
        num = number(first, i)
        print('%s 5 IN NAPTR 100 10 "u" "E2U+sip" "!^.*$!%s!" .' % (enum_name(num), uri(num)))


def queries(first, n, count):
    """80% routed numbers (NOERROR with a record), 15% unrouted numbers just past the block's
    numbers (NXDOMAIN), 5% prefixes of the routed numbers (NODATA); shuffled, fixed seed."""
    rnd = random.Random(1)
    out = []
    hits = count * 80 // 100
    nx = count * 15 // 100
    for _ in range(hits):
        out.append(enum_name(number(first, rnd.randrange(n))))
    for _ in range(nx):
        out.append(enum_name(number(first, n + rnd.randrange(max(n, 1000)))))
    while len(out) < count:
        num = number(first, rnd.randrange(n)).lstrip("+")
        cut = rnd.randrange(1, len(num) - 1)
        out.append(".".join(reversed(num[:-cut])) + "." + SUFFIX)
    rnd.shuffle(out)
    for q in out:
        print(q + " NAPTR")


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    cmd = argv[1]
    if cmd == "provision" and len(argv) in (5, 6):
        provision(argv[2], argv[3], int(argv[4]), int(argv[5]) if len(argv) == 6 else 8)
    elif cmd == "zone" and len(argv) >= 6:
        zone(argv[2], int(argv[3]), argv[4], argv[5:])
    elif cmd == "queries" and len(argv) == 5:
        queries(argv[2], int(argv[3]), int(argv[4]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
