#!/usr/bin/python3
# Test handler: reports process facts that /usr/bin/env, grep and ls cannot:
# working directory, umask, session, credentials and the socket's peer.
# (Descriptors and signal state are probed by exec'ing ls and grep directly,
# since the Python runtime itself opens files and ignores SIGPIPE.)
import os
import socket

s = socket.socket(fileno=0)
peer = s.getpeername()
local = s.getsockname()
s.detach()
mask = os.umask(0)
facts = [
    ("cwd", os.getcwd()),
    ("umask", "%03o" % mask),
    ("pid", os.getpid()),
    ("sid", os.getsid(0)),
    ("pgid", os.getpgid(0)),
    ("uid", "%d %d" % (os.getuid(), os.geteuid())),
    ("gid", "%d %d" % (os.getgid(), os.getegid())),
    ("groups", " ".join(str(g) for g in sorted(os.getgroups()))),
    ("peer", "%s %d" % (peer[0], peer[1])),
    ("local", "%s %d" % (local[0], local[1])),
    ("fd0", os.readlink("/proc/self/fd/0")),
]
os.write(1, "".join("%s %s\n" % kv for kv in facts).encode())
