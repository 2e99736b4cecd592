#!/usr/bin/python3
# Test handler: reads the options of the accepted socket (fd 0) back with
# getsockopt, and prints the environment's connection variables, one
# "name value" line each. With ARG "hold" it then waits for the client to
# close (for capacity and timeout tests).
import os
import socket
import sys

s = socket.socket(fileno=0)
lines = []
if s.family in (socket.AF_INET, socket.AF_INET6):
    g = lambda level, opt: s.getsockopt(level, opt)
    lines += [
        ("keepalive", g(socket.SOL_SOCKET, socket.SO_KEEPALIVE)),
        ("idle", g(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)),
        ("interval", g(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)),
        ("count", g(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)),
        ("nodelay", g(socket.IPPROTO_TCP, socket.TCP_NODELAY)),
        ("rcvbuf", g(socket.SOL_SOCKET, socket.SO_RCVBUF)),
        ("sndbuf", g(socket.SOL_SOCKET, socket.SO_SNDBUF)),
    ]
else:
    lines.append(("family", "unix"))
for k in sorted(os.environ):
    if k.startswith(("PROTO", "TCP", "REMOTE_", "UNIX", "WHO")):
        lines.append((k, os.environ[k]))
s.detach()
os.write(1, "".join("%s %s\n" % kv for kv in lines).encode())
if sys.argv[1:] == ["hold"]:
    while os.read(0, 4096):
        pass
