#!/bin/sh
# greet.sh: a tinyinetd handler in POSIX shell.
#
# Greets the client by its address (from TCPREMOTEIP/TCPREMOTEPORT, set by
# tinyinetd), then answers every line with the same line in upper case,
# until the client closes the connection.
#
#   [[service]]
#   name = "greet"
#   listen = ["127.0.0.1:9879"]
#   program = "/usr/local/libexec/tinyinetd/greet.sh"
#   env = { GREETING = "welcome" }
#   stderr = "log"        # stderr lines go to the daemon's log
#
# stdin and stdout are the connection. With `stderr = "log"` what it writes
# to stderr is logged by the daemon (without it, the default "socket",
# stderr is the connection too and reaches the client).
#
# Buffering: printf is a shell builtin and writes at once; tr runs once per
# line and flushes as it exits. A filter that stays running (sed, awk, tr
# over the whole stream) buffers its output when it is not a terminal: run
# it as `stdbuf -oL sed ...` (or `sed -u`) so each reply goes out at once.

greeting=${GREETING:-hello}
printf '%s %s:%s, this is %s\n' "$greeting" "$TCPREMOTEIP" "$TCPREMOTEPORT" "$TINYINETD_SERVICE"
echo "greet: greeted $TCPREMOTEIP" >&2
# `|| [ -n "$line" ]` also answers a last line sent without a newline.
while IFS= read -r line || [ -n "$line" ]; do
    printf '%s\n' "$line" | tr '[:lower:]' '[:upper:]'
done
