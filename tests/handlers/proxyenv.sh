#!/bin/sh
# Test handler: one line with the client's and the proxy's variables, a
# line in $RECORD when set, then an echo of whatever the client sends.
echo "remote=$TCPREMOTEIP:$TCPREMOTEPORT local=$TCPLOCALIP:$TCPLOCALPORT addr=$REMOTE_ADDR:$REMOTE_PORT proxy=${TINYINETD_PROXY_IP-none}:${TINYINETD_PROXY_PORT-none} authority=${TINYINETD_PROXY_AUTHORITY-none} alpn=${TINYINETD_PROXY_ALPN-none} unique_id=${TINYINETD_PROXY_UNIQUE_ID-none} ssl_version=${TINYINETD_PROXY_SSL_VERSION-none} ssl_cn=${TINYINETD_PROXY_SSL_CN-none}"
if [ -n "$RECORD" ]; then echo "$TINYINETD_CONN_ID $TCPREMOTEIP" >> "$RECORD"; fi
exec cat
