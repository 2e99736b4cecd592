#!/usr/bin/python3
# Test handler for a TCP wait service written for systemd's Accept=no: it
# checks LISTEN_PID and LISTEN_FDS as sd_listen_fds(3) does, then accepts
# on fd 3 and answers each client with one line, until IDLE seconds
# (argv[1], default 1.5) pass without one.
import os
import socket
import sys

idle = float(sys.argv[1]) if len(sys.argv) > 1 else 1.5
if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
    sys.exit(3)
listener = socket.socket(fileno=3)
listener.settimeout(idle)
while True:
    try:
        c, _ = listener.accept()
    except socket.timeout:
        break
    c.settimeout(5)
    line = c.makefile("rb").readline()
    proto = os.environ.get("PROTO", "").encode()
    c.sendall(b"pid=%d proto=%s %s" % (os.getpid(), proto, line))
    c.close()
