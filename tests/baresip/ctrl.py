#!/usr/bin/env python3
"""Drive a running baresip through its ctrl_tcp module (netstring-framed JSON) from a test.

    ctrl.py HOST:PORT STEP...

Each STEP is one of
  do:COMMAND[ PARAMS]   send a command, e.g. "do:dial sip:bob@example.test", "do:hangup",
                        "do:reginfo"; prints its response ("response ok=... data=...")
  expect:TYPE           wait for an event of that type, e.g. expect:CALL_ESTABLISHED,
                        expect:CALL_CLOSED, expect:REGISTER_OK (only registrations after
                        the connection was made are seen); an event that arrived during an
                        earlier do: or sleep: step (after the previous expect) counts
  sleep:SECONDS         wait
Every event received is printed as "event TYPE PARAM" (one line, in order). Exit status 0 when
every step succeeded, 1 when an expect timed out (--timeout, default 10 s per step) or a
command was refused, 2 for bad usage.

The wire format (baresip 1.0.0, modules/ctrl_tcp): each message is a netstring
"LEN:JSON," where a command is {"command": "dial", "params": "sip:...", "token": "..."},
its answer {"response": true, "ok": true, "data": "...", "token": "..."} and an event
{"event": true, "type": "CALL_ESTABLISHED", "class": "call", "param": "...", ...}.
"""
import json
import socket
import sys
import time


class Ctrl:
    def __init__(self, addr, timeout):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buf = b""
        self.timeout = timeout
        self.token = 0

    def send(self, command, params=""):
        self.token += 1
        body = json.dumps({"command": command, "params": params, "token": str(self.token)}).encode()
        self.sock.sendall(b"%d:%s," % (len(body), body))
        return str(self.token)

    def recv(self, deadline):
        """The next message (a dict), or None at the deadline."""
        while True:
            colon = self.buf.find(b":")
            if colon > 0:
                n = int(self.buf[:colon])
                if len(self.buf) >= colon + 1 + n + 1:
                    body = self.buf[colon + 1:colon + 1 + n]
                    self.buf = self.buf[colon + 1 + n + 1:]
                    return json.loads(body)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return None
            if not chunk:
                raise ConnectionError("baresip closed the control connection")
            self.buf += chunk


def show(msg):
    if msg.get("event"):
        print("event %s %s" % (msg.get("type"), msg.get("param", "")), flush=True)


def main():
    args = sys.argv[1:]
    timeout = 10.0
    if len(args) >= 2 and args[0] == "--timeout":
        timeout = float(args[1])
        args = args[2:]
    if len(args) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    c = Ctrl(args[0], timeout)
    seen = []  # events that arrived while a command waited for its response
    for step in args[1:]:
        kind, _, arg = step.partition(":")
        deadline = time.monotonic() + timeout
        if kind == "do":
            command, _, params = arg.partition(" ")
            token = c.send(command, params)
            while True:
                msg = c.recv(deadline)
                if msg is None:
                    print("timeout: no response to %s" % command, flush=True)
                    return 1
                show(msg)
                if msg.get("event"):
                    seen.append(msg)
                if msg.get("response") and msg.get("token") == token:
                    data = (msg.get("data") or "").strip().replace("\n", " | ")
                    print("response ok=%s data=%s" % (msg.get("ok"), data), flush=True)
                    if not msg.get("ok"):
                        return 1
                    break
        elif kind == "expect":
            if any(m.get("type") == arg for m in seen):
                while seen.pop(0).get("type") != arg:
                    pass
                continue
            seen.clear()
            while True:
                msg = c.recv(deadline)
                if msg is None:
                    print("timeout: no %s event within %g s" % (arg, timeout), flush=True)
                    return 1
                show(msg)
                if msg.get("event") and msg.get("type") == arg:
                    break
        elif kind == "sleep":
            end = time.monotonic() + float(arg)
            while time.monotonic() < end:
                msg = c.recv(end)
                if msg:
                    show(msg)
                    if msg.get("event"):
                        seen.append(msg)
        else:
            print("unknown step %s" % step, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
