#!/usr/bin/python3
"""kv.py: a tinyinetd handler in Python 3, a line-oriented key/value session.

Commands, one per line (the store lives as long as the connection):

    SET key value   ->  OK
    GET key         ->  VALUE value | NOTFOUND
    DEL key         ->  OK | NOTFOUND
    KEYS            ->  KEYS k1 k2 ...
    QUIT            ->  BYE (and the connection closes)
    anything else   ->  ERROR unknown command

Config snippet:

    [[service]]
    name = "kv"
    listen = ["127.0.0.1:9880"]
    program = "/usr/local/libexec/tinyinetd/kv.py"
    timeout = "5m"
    stderr = "log"        # stderr lines go to the daemon's log

Every reply is written and flushed at once, so an interactive client sees it
immediately; the session ends cleanly on EOF or when the client goes away.

Buffering: Python buffers sys.stdout when it is not a terminal (a socket is
not one), and tinyinetd's clean environment drops PYTHONUNBUFFERED, so a
plain print() would reach the client only at exit. Write with os.write (as
below), print(..., flush=True), or run the interpreter as `python3 -u`.
"""
import os
import sys


def reply(line):
    # Unbuffered, whole line in one write: fd 1 is the client's socket.
    os.write(1, (line + "\n").encode())


def main():
    store = {}
    peer = "%s:%s" % (os.environ.get("TCPREMOTEIP", "?"), os.environ.get("TCPREMOTEPORT", "?"))
    stdin = sys.stdin.buffer
    # To the daemon's log with stderr = "log" (flush: stderr may be a pipe).
    print("kv: session from %s" % peer, file=sys.stderr, flush=True)
    while True:
        raw = stdin.readline(65536)
        if not raw:
            return 0
        words = raw.decode("utf-8", "replace").strip().split(None, 2)
        if not words:
            continue
        cmd = words[0].upper()
        if cmd == "SET" and len(words) == 3:
            store[words[1]] = words[2]
            reply("OK")
        elif cmd == "GET" and len(words) == 2:
            reply("VALUE " + store[words[1]] if words[1] in store else "NOTFOUND")
        elif cmd == "DEL" and len(words) == 2:
            reply("OK" if store.pop(words[1], None) is not None else "NOTFOUND")
        elif cmd == "KEYS" and len(words) == 1:
            reply(" ".join(["KEYS"] + sorted(store)))
        elif cmd == "QUIT":
            reply("BYE from " + peer)
            return 0
        else:
            reply("ERROR unknown command")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BrokenPipeError, ConnectionResetError):
        sys.exit(0)
