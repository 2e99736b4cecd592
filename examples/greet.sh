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
#
# The connection is on stdin, stdout and stderr: anything written to stderr
# reaches the client too.

greeting=${GREETING:-hello}
printf '%s %s:%s, this is %s\n' "$greeting" "$TCPREMOTEIP" "$TCPREMOTEPORT" "$TINYINETD_SERVICE"
# `|| [ -n "$line" ]` also answers a last line sent without a newline.
while IFS= read -r line || [ -n "$line" ]; do
    printf '%s\n' "$line" | tr '[:lower:]' '[:upper:]'
done
