#!/usr/bin/python3
# Test handler for a UDP wait service, the inetd convention: the datagram
# socket on fd 0 (socket.socket(fileno=0) finds its family and type).
# Answers each datagram with its bytes, its pid and what it found of the
# contract, and exits after IDLE seconds (argv[1], default 1.5) without
# one, as in.tftpd does after its --timeout.
import os
import socket
import sys

idle = float(sys.argv[1]) if len(sys.argv) > 1 else 1.5
s = socket.socket(fileno=0)
env = os.environ
bad = []
if s.type != socket.SOCK_DGRAM:
    bad.append("type")
if env.get("PROTO") != "UDP":
    bad.append("PROTO=%s" % env.get("PROTO"))
if env.get("LISTEN_FDS") != "1":
    bad.append("LISTEN_FDS")
if env.get("LISTEN_PID") != str(os.getpid()):
    bad.append("LISTEN_PID=%s" % env.get("LISTEN_PID"))
if env.get("LISTEN_FDNAMES") != env.get("TINYINETD_SERVICE"):
    bad.append("LISTEN_FDNAMES")
if "TINYINETD_CONN_ID" not in env:
    bad.append("TINYINETD_CONN_ID")
if any(k.startswith(("TCP", "REMOTE_")) for k in env):
    bad.append("client-vars")
if os.fstat(0).st_ino != os.fstat(3).st_ino:
    bad.append("fd3")
if os.get_blocking(0) is not True:
    bad.append("nonblocking")
verdict = "ok" if not bad else "bad:" + ",".join(bad)
s.settimeout(idle)
while True:
    try:
        data, peer = s.recvfrom(65536)
    except socket.timeout:
        break
    s.sendto(data + (" pid=%d %s" % (os.getpid(), verdict)).encode(), peer)
