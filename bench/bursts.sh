#!/usr/bin/env bash
# The daemon's resident memory over repeated bursts of long sessions
# (issue 23: under 8 MiB with 10,000 handlers running, and given back
# when they end). For each build given, in turn, one daemon is started and
# sent BURSTS bursts: N sessions opened and kept silent (each handler,
# echo1, blocks reading its line), VmRSS read once the daemon runs a
# handler for every one (and how long that took after the first connect), then all closed and VmRSS read again once every
# handler is reaped.
#
#   bench/bursts.sh [--n N] [--bursts B] BUILD...
#
# BUILD is a tinyinetd binary (the build before a change and the build
# after). Uses echo1 from bench/out (run bench/compare.sh --quick first).
# Raises its soft descriptor limit to the hard one. Every process started
# here is stopped by PID. Loopback only.
CALLER_DIR=$PWD
# shellcheck source=bench/common.sh
. "$(dirname "$0")/common.sh"
N=10000
BURSTS=4
BUILDS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --n) N=$2; shift ;;
    --bursts) BURSTS=$2; shift ;;
    -*) echo "usage: bench/bursts.sh [--n N] [--bursts B] BUILD..." >&2; exit 2 ;;
    *) BUILDS+=("$(cd "$CALLER_DIR" && realpath "$1")") ;;
  esac
  shift
done
[ ${#BUILDS[@]} -gt 0 ] || { echo "usage: bench/bursts.sh [--n N] [--bursts B] BUILD..." >&2; exit 2; }
need_root_and_echo1 bursts.sh nolibc
[ -e "$ECHO1" ] || { echo "bursts.sh: $ECHO1 missing: run bench/compare.sh (--quick will do) first" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)"
RUN=$OUT/run/bursts
mkdir -p "$RUN"
port=19900
while ! port_free $port; do port=$((port + 1)); done
cat >"$RUN/tinyinetd.toml" <<EOF
[daemon]
log = "stderr"
log_level = "warn"
max_connections = 100000
control_socket = ""

[[service]]
name = "idle"
listen = ["127.0.0.1:$port"]
program = "$ECHO1"
user = "root"
max_instances = 100000
EOF
running() { ps -o stat= --ppid "$1" 2>/dev/null | grep -vc '^Z' || true; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# wait_running PID COUNT: until COUNT handlers run (at most 120 s).
wait_running() {
  for _ in $(seq 1 1200); do [ "$(running "$1")" -ge "$2" ] && return 0; sleep 0.1; done
  return 1
}
wait_none() {
  for _ in $(seq 1 1200); do [ "$(ps -o pid= --ppid "$1" | wc -l)" -eq 0 ] && return 0; sleep 0.1; done
  return 1
}
echo "build,burst,n,secs_to_running,rss_kib_idle_before,rss_kib_running,rss_kib_after"
for build in "${BUILDS[@]}"; do
  "$build" --config "$RUN/tinyinetd.toml" 2>"$RUN/daemon.err" &
  pid=$!
  PIDS+=("$pid")
  wait_port "$port" || { echo "bursts.sh: $build did not come up: $(tail -n 3 "$RUN/daemon.err")" >&2; exit 1; }
  for b in $(seq 1 "$BURSTS"); do
    before=$(rss_kib "$pid")
    rm -f "$RUN/close"
    # One process holds the N sessions until told to close them.
    python3 - "$port" "$N" "$RUN/close" <<'EOF' &
import os, socket, sys, time
port, n, flag = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
held = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
for _ in range(3000):
    if os.path.exists(flag):
        break
    time.sleep(0.1)
for s in held:
    s.close()
EOF
    holder=$!
    t0=$(date +%s.%N)
    PIDS+=("$holder")
    wait_running "$pid" "$N" || echo "bursts.sh: only $(running "$pid") of $N running" >&2
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    busy=$(rss_kib "$pid")
    touch "$RUN/close"
    wait "$holder"
    wait_none "$pid" || echo "bursts.sh: handlers still running after 120 s" >&2
    after=$(rss_kib "$pid")
    echo "$build,$b,$N,$secs,$before,$busy,$after"
  done
  kill "$pid"
  wait "$pid" || true
done
