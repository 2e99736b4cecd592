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
