#!/bin/sh
# Test handler: records that it started (one line in $RECORD), then says hi.
echo "$TINYINETD_CONN_ID $TCPREMOTEIP" >> "$RECORD"
echo "hi $TCPREMOTEIP"
