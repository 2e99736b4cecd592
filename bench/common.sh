# Sourced by the bench scripts: strict mode, where things are, and the
# helpers they share. Leaves the shell in bench/. Loopback only.
set -euo pipefail
BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH/.." && pwd)
OUT=$BENCH/out
LOADGEN=$BENCH/loadgen/target/release/tinyinetd-loadgen
cd "$BENCH"

# wait_port PORT: succeeds once something accepts on 127.0.0.1:PORT, fails
# after 10 s.
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

# port_free PORT: nothing accepts on 127.0.0.1:PORT.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Every process a script starts goes in PIDS; at exit each is sent SIGTERM,
# then SIGKILL half a second later (by PID only).
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# need_root_and_echo1 SCRIPT HANDLER: exits unless root (the handlers run
# as root, as in compare.sh); sets ECHO1 to the build of echo1 compare.sh
# made for HANDLER (nolibc or glibc).
need_root_and_echo1() {
  [ "$(id -u)" -eq 0 ] || { echo "$1: needs root (the handlers run as root, as in compare.sh)" >&2; exit 1; }
  case "$2" in
    nolibc) ECHO1=$OUT/bin/echo1 ;;
    glibc) ECHO1=$OUT/bin/echo1-glibc ;;
    *) echo "$1: --handler is nolibc or glibc" >&2; exit 2 ;;
  esac
}
