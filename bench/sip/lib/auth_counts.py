#!/usr/bin/env python3
"""What happened in one run of sipp/register_auth.xml, from SIPp's message counts
(-trace_counts: *_counts.csv) and its statistics (-trace_stat: stat.csv).

usage: auth_counts.py RUNDIR

Prints one line and writes RUNDIR/counts.env (shell variables):
  CHALLENGED_401 / CHALLENGED_407  challenges received to the first REGISTER
  UNCHALLENGED   first REGISTERs answered 200 at once (a server that does not authenticate)
  AUTH_200       REGISTERs with credentials answered 200 (authenticated registrations)
  LATE_401       401s after the credentials were sent: a late 401 to a retransmitted first
                 REGISTER (ignored), or a refusal of the credentials (wrong password, unknown
                 user: that call fails when its 8 s receive timeout ends, FAIL_RECV_TIMEOUT)
  UNEXPECTED     messages that matched no step (each one failed its call)
  FAIL_*         SIPp's failure counters (stat.csv), by cause; FAIL_OTHER is the rest
The steps are found by their position in the file: the first "N_200_Recv" column is the
unchallenged 200, the last one the 200 to the credentials.
"""
import csv, glob, os, re, shlex, sys


def last_row(path, delim=";"):
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f, delimiter=delim) if r]
    return rows[0], rows[-1]


def main():
    d = sys.argv[1]
    env = {}
    files = sorted(glob.glob(os.path.join(d, "*_counts.csv")))
    if files:
        hdr, last = last_row(files[-1])
        val = {h: int(v) if v.isdigit() else 0 for h, v in zip(hdr, last)}
        cols = [(int(m.group(1)), m.group(2), m.group(3), h) for h in hdr
                for m in [re.match(r"^(\d+)_(\w+)_(Recv|Sent|Unexp)$", h)] if m]
        recv = lambda code: sorted(i_h for i_h in ((i, h) for i, c, k, h in cols if c == code and k == "Recv"))
        r200, r401, r407 = recv("200"), recv("401"), recv("407")
        env["UNCHALLENGED"] = val[r200[0][1]] if len(r200) > 1 else 0
        env["AUTH_200"] = val[r200[-1][1]] if r200 else 0
        env["CHALLENGED_401"] = val[r401[0][1]] if r401 else 0
        env["LATE_401"] = val[r401[-1][1]] if len(r401) > 1 else 0
        env["CHALLENGED_407"] = val[r407[0][1]] if r407 else 0
        env["UNEXPECTED"] = sum(v for h, v in val.items() if h.endswith("_Unexp"))
    else:
        env.update(UNCHALLENGED="", AUTH_200="", CHALLENGED_401="", LATE_401="",
                   CHALLENGED_407="", UNEXPECTED="")
    causes = {
        "FAIL_UNEXPECTED_MSG": "FailedUnexpectedMessage(C)",
        "FAIL_MAX_RETRANS": "FailedMaxUDPRetrans(C)",
        "FAIL_RECV_TIMEOUT": "FailedTimeoutOnRecv(C)",
        "FAIL_REGEXP": "FailedRegexpDoesntMatch(C)",
    }
    stat = os.path.join(d, "stat.csv")
    if os.path.exists(stat):
        hdr, last = last_row(stat)
        col = dict(zip(hdr, last))
        num = lambda k: int(col.get(k, "0") or 0) if str(col.get(k, "0")).isdigit() else 0
        total = num("FailedCall(C)")
        for k, name in causes.items():
            env[k] = num(name)
        env["FAIL_OTHER"] = total - sum(env[k] for k in causes)
    with open(os.path.join(d, "counts.env"), "w") as f:
        for k, v in env.items():
            f.write("%s=%s\n" % (k, shlex.quote(str(v))))
    print("COUNTS " + " ".join("%s=%s" % (k.lower(), v) for k, v in env.items()))


if __name__ == "__main__":
    main()
