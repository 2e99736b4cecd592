#!/bin/sh
# Test handler: says which arguments it was started with, then echoes.
echo "args: $*"
exec cat
