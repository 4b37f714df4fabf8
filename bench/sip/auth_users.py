#!/usr/bin/env python3
"""Test users with digest credentials, the same ones for SIPp, onehop and Kamailio.

    auth_users.py write --out DIR [--users N] [--domain D] [--seed S] [--prefix P] [--import-ha1]
    auth_users.py password USER [--seed S]      one user's password, for a test that needs it

`write` makes, in DIR (created; files mode 0600, rewritten only when N, the domain, the seed or
the prefix changed):

  users.csv           SIPp injection file (-inf): "SEQUENTIAL", then "USER;PASSWORD" rows
                      (field0 = user part, field1 = password), for sipp/register_auth.xml
  onehop-import.csv   for `onehop-admin import`: header "user,domain,password" (the manager
                      turns each password into its MD5 and SHA-256 HA1 at once), or with
                      --import-ha1 "user,domain,ha1_md5,ha1_sha256" (no password in the file)
  kamailio/htable     db_text table in the htable module's schema, for kamailio.cfg's KAM_AUTH:
                      key USER -> MD5 HA1 and key USER@DOMAIN -> MD5 HA1 of "USER@DOMAIN"
                      (the digest username some UAs send), both for realm DOMAIN
  kamailio/version    db_text version table (htable:2)
  stamp               what the files were made from (the seed only as a hash)

Users are PREFIX1 .. PREFIXN (default user1 .. userN). A password is a function of the seed and
the user part alone: the first 20 characters of base64url(HMAC-SHA256(seed, user)), so the same
seed gives the same passwords on every run and machine, and a test can derive any user's
password without reading the files. The realm is the domain (onehop's realm is the farm's
domain; the benchmark Kamailio challenges with the From domain).

Nothing here prints a password, except `password USER`, which prints that one.
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import sys

DEFAULT_SEED = "onehop-bench-auth"


def password(seed, user):
    """The password of USER under SEED: 20 characters of [A-Za-z0-9_-]."""
    mac = hmac.new(seed.encode(), user.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode()[:20]


def ha1(algo, user, realm, pw):
    return hashlib.new(algo, f"{user}:{realm}:{pw}".encode()).hexdigest()


def users(n, prefix):
    return (f"{prefix}{i}" for i in range(1, n + 1))


def private_open(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return os.fdopen(fd, "w", newline="")


def write(args):
    out = args.out
    os.makedirs(os.path.join(out, "kamailio"), exist_ok=True)
    stamp = {
        "users": args.users,
        "domain": args.domain,
        "prefix": args.prefix,
        "seed_sha256": hashlib.sha256(args.seed.encode()).hexdigest(),
        "import": "ha1" if args.import_ha1 else "password",
        "format": 1,
    }
    stamp_path = os.path.join(out, "stamp")
    names = ["users.csv", "onehop-import.csv", "kamailio/htable", "kamailio/version"]
    try:
        with open(stamp_path) as f:
            if json.load(f) == stamp and all(os.path.exists(os.path.join(out, x)) for x in names):
                print(out)
                return 0
    except (OSError, ValueError):
        pass
    tmp = {x: os.path.join(out, x + ".tmp") for x in names}
    with private_open(tmp["users.csv"]) as sipp, \
            private_open(tmp["onehop-import.csv"]) as imp, \
            private_open(tmp["kamailio/htable"]) as ht:
        sipp.write("SEQUENTIAL\n")
        imp.write("user,domain,ha1_md5,ha1_sha256\n" if args.import_ha1 else "user,domain,password\n")
        ht.write("id(int,auto) key_name(string) key_type(int) value_type(int) key_value(string) expires(int)\n")
        dom = args.domain
        for i, u in enumerate(users(args.users, args.prefix), 1):
            pw = password(args.seed, u)
            sipp.write(f"{u};{pw}\n")
            if args.import_ha1:
                imp.write(f"{u},{dom},{ha1('md5', u, dom, pw)},{ha1('sha256', u, dom, pw)}\n")
            else:
                imp.write(f"{u},{dom},{pw}\n")
            # key_type 0, value_type 0: one string value; expires 0: never
            ht.write(f"{2 * i - 1}:{u}:0:0:{ha1('md5', u, dom, pw)}:0\n")
            ht.write(f"{2 * i}:{u}@{dom}:0:0:{ha1('md5', u + '@' + dom, dom, pw)}:0\n")
    with private_open(tmp["kamailio/version"]) as v:
        v.write("table_name(string) table_version(int)\nversion:1\nhtable:2\n")
    for x in names:
        os.replace(tmp[x], os.path.join(out, x))
    with open(stamp_path, "w") as f:
        json.dump(stamp, f)
        f.write("\n")
    print(out)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="write the files for N users into DIR")
    w.add_argument("--out", required=True, help="directory (created)")
    w.add_argument("--users", type=int, default=60000, help="number of users (default 60000)")
    w.add_argument("--domain", default="example.test", help="domain and realm (default example.test)")
    w.add_argument("--seed", default=os.environ.get("AUTH_SEED", DEFAULT_SEED),
                   help="password seed (default $AUTH_SEED or %s)" % DEFAULT_SEED)
    w.add_argument("--prefix", default="user", help="user part prefix (default user)")
    w.add_argument("--import-ha1", action="store_true",
                   help="onehop-import.csv with HA1 columns instead of passwords")
    p = sub.add_parser("password", help="print one user's password")
    p.add_argument("user")
    p.add_argument("--seed", default=os.environ.get("AUTH_SEED", DEFAULT_SEED))
    args = ap.parse_args()
    if args.cmd == "password":
        print(password(args.seed, args.user))
        return 0
    if args.users < 1:
        ap.error("--users must be at least 1")
    if any(c in args.domain for c in ":;, ") or any(c in args.prefix for c in ":;,@ "):
        ap.error("the domain and prefix must not contain ':', ';', ',', '@' or spaces")
    return write(args)


if __name__ == "__main__":
    sys.exit(main())
