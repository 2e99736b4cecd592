#!/bin/sh
# Test handler: dies of SIGSEGV, as a crashing handler would.
kill -SEGV $$
