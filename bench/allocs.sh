#!/usr/bin/env bash
# Counts the heap allocations tinyinetd makes per connection under load:
# uprobes on malloc, realloc and calloc of an unstripped release build,
# counted with `perf stat` on the daemon alone while the load generator
# runs at concurrency C.
#
#   bench/allocs.sh [--conc C] [--duration SECS]
#
# Needs root (uprobes), perf, nm and readelf (binutils), and what
# compare.sh built under bench/out (run it first, even with --quick). The
# probes are removed at the end; the daemon is stopped by PID. Loopback
# only.
# shellcheck source=bench/common.sh
. "$(dirname "$0")/common.sh"
CONC=8
DURATION=5
while [ $# -gt 0 ]; do
  case "$1" in
    --conc) CONC=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    *) echo "usage: bench/allocs.sh [--conc C] [--duration SECS]" >&2; exit 2 ;;
  esac
done
for tool in perf nm readelf; do
  command -v "$tool" >/dev/null || { echo "allocs.sh: needs $tool" >&2; exit 1; }
done
CONF=$OUT/run/tinyinetd.toml
[ -x "$LOADGEN" ] && [ -f "$CONF" ] || { echo "allocs.sh: run bench/compare.sh first" >&2; exit 1; }
PORT=$(sed -n 's/^listen = \["127.0.0.1:\([0-9]*\)"\]/\1/p' "$CONF")
TRACE=/sys/kernel/tracing
[ -d "$TRACE/events" ] || TRACE=/sys/kernel/debug/tracing
[ -w "$TRACE/uprobe_events" ] || { echo "allocs.sh: cannot write $TRACE/uprobe_events (root and tracefs needed)" >&2; exit 1; }

# The release build with its symbols kept, in a directory of its own.
CARGO_PROFILE_RELEASE_STRIP=false CARGO_TARGET_DIR=$OUT/allocs-target \
  cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --bin tinyinetd
BIN=$OUT/allocs-target/release/tinyinetd

# A uprobe wants a file offset: the symbol's address, moved by the
# difference between the executable segment's address and its offset.
read -r SEG_OFF SEG_VADDR < <(readelf -lW "$BIN" | awk '$1 == "LOAD" && / R E / && !done { print $2, $3; done = 1 }')
GROUP=tinyinetd_allocs
EVENTS=()
cleanup() {
  [ -n "${DAEMON:-}" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
  for e in "${EVENTS[@]}"; do echo "-:$GROUP/$e" >> "$TRACE/uprobe_events" 2>/dev/null || true; done
}
trap cleanup EXIT
for fn in malloc realloc calloc; do
  # (awk reads to the end: an early exit would fail nm with SIGPIPE.)
  addr=$(nm "$BIN" | awk -v f="$fn" '$3 == f && $2 ~ /^[TtWw]$/ && !a { a = $1 } END { print a }')
  [ -n "$addr" ] || { echo "allocs.sh: no symbol $fn in $BIN" >&2; exit 1; }
  off=$(printf '0x%x' $(( 0x$addr - SEG_VADDR + SEG_OFF )))
  echo "p:$GROUP/$fn $BIN:$off" >> "$TRACE/uprobe_events"
  EVENTS+=("$fn")
done

"$BIN" --config "$CONF" 2>"$OUT/run/allocs-tinyinetd.err" &
DAEMON=$!
wait_port "$PORT" || { echo "allocs.sh: tinyinetd did not come up on 127.0.0.1:$PORT" >&2; exit 1; }
perf stat --no-inherit -x, -e "$GROUP:malloc,$GROUP:realloc,$GROUP:calloc" -p "$DAEMON" \
  -o "$OUT/run/allocs.perf" -- sleep "$((DURATION + 1))" &
PERF=$!
sleep 0.3
line=$("$LOADGEN" --addr "127.0.0.1:$PORT" --concurrency "$CONC" --duration "$DURATION" --warmup 0 --label tinyinetd)
wait "$PERF"
IFS=, read -r _ _ _ conns cps _ <<<"$line"
# The count spans the whole load and a little idle time on either side.
awk -F, -v n="$conns" -v c="$CONC" -v cps="$cps" '
  /tinyinetd_allocs:/ { sub(/.*:/, "", $3); v[$3] = $1; t += $1 }
  END { printf "tinyinetd, C=%d, %d connections (%.0f/s): malloc %d, realloc %d, calloc %d: %.4f per connection\n", c, n, cps, v["malloc"], v["realloc"], v["calloc"], t / n }
' "$OUT/run/allocs.perf"
