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
