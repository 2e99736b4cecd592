#!/usr/bin/env bash
# Runs tinyinetd and busybox inetd alone, one after the other, and reports
# what each daemon is charged per connection: the quieter companion of
# compare.sh for looking at one figure closely.
#
#   bench/solo.sh [--rounds N] [--duration SECS] [--conc C] [--syscalls]
#
# Uses what compare.sh built and wrote under bench/out (run it first, even
# with --quick). Each round runs each daemon for SECS at concurrency C and
# prints conns/s, the daemon's user and system CPU per connection (µs) and
# its context switches per connection. With --syscalls, one more pass per
# daemon counts its own system calls per connection with `perf stat`
# (needs perf; the counting itself slows the daemon, so the CPU figures of
# that pass are not printed). Every process started here is stopped by PID.
# Loopback only.
# shellcheck source=bench/common.sh
. "$(dirname "$0")/common.sh"
ROUNDS=3
DURATION=5
CONC=8
SYSCALLS=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --conc) CONC=$2; shift ;;
    --syscalls) SYSCALLS=1 ;;
    *) echo "usage: bench/solo.sh [--rounds N] [--duration SECS] [--conc C] [--syscalls]" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" -eq 0 ] || { echo "solo.sh: needs root (the handler runs as root, as in compare.sh)" >&2; exit 1; }
TINYINETD=$ROOT/target/release/tinyinetd
BUSYBOX=$OUT/peers/busybox/busybox
for f in "$LOADGEN" "$TINYINETD" "$OUT/run/tinyinetd.toml"; do
  [ -e "$f" ] || { echo "solo.sh: $f missing: run bench/compare.sh (--quick will do) first" >&2; exit 1; }
done
if [ "$SYSCALLS" = 1 ] && ! command -v perf >/dev/null; then
  echo "solo.sh: --syscalls needs perf (Debian: linux-perf)" >&2; exit 1
fi

port_of() { sed -n 's/^listen = \["127\.0\.0\.1:\([0-9]*\)"\]$/\1/p' "$OUT/run/tinyinetd.toml"; }
TPORT=$(port_of)
BPORT=$((TPORT + 5))

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT


declare -A PID PORT
"$TINYINETD" --config "$OUT/run/tinyinetd.toml" 2>"$OUT/run/solo-tinyinetd.err" &
PID[tinyinetd]=$!; PIDS+=($!); PORT[tinyinetd]=$TPORT
SYSTEMS=(tinyinetd)
if [ -x "$BUSYBOX" ] && [ -f "$OUT/run/busybox-inetd.conf" ]; then
  "$BUSYBOX" inetd -f -e -R 0 -q 1024 "$OUT/run/busybox-inetd.conf" 2>"$OUT/run/solo-busybox.err" &
  PID[busybox-inetd]=$!; PIDS+=($!); PORT[busybox-inetd]=$BPORT
  SYSTEMS+=(busybox-inetd)
fi
for s in "${SYSTEMS[@]}"; do
  wait_port "${PORT[$s]}" || { echo "solo.sh: $s did not come up on 127.0.0.1:${PORT[$s]}" >&2; exit 1; }
done

# stat fields 14 and 15 (utime, stime) in clock ticks; the command name
# cannot hold a space here, so plain field splitting is safe.
cpu() { awk '{print $14, $15}' "/proc/$1/stat"; }
ctx() { awk '/^(voluntary|nonvoluntary)_ctxt_switches/ {s += $2} END {print s}' "/proc/$1/status"; }
TICK=$(getconf CLK_TCK)

echo "| round | system | C | conns/s | user µs/conn | sys µs/conn | CPU ms/1000 conns | ctx switches/conn |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|"
for r in $(seq 1 "$ROUNDS"); do
  for s in "${SYSTEMS[@]}"; do
    p=${PID[$s]}
    read -r u0 s0 < <(cpu "$p"); c0=$(ctx "$p")
    line=$("$LOADGEN" --addr "127.0.0.1:${PORT[$s]}" --concurrency "$CONC" --duration "$DURATION" --warmup 0 --label "$s")
    read -r u1 s1 < <(cpu "$p"); c1=$(ctx "$p")
    IFS=, read -r _ _ _ conns cps _ <<<"$line"
    [ "$conns" -gt 0 ] || { echo "solo.sh: no connection served by $s" >&2; exit 1; }
    awk -v r="$r" -v s="$s" -v c="$CONC" -v n="$conns" -v cps="$cps" -v u="$((u1 - u0))" -v k="$((s1 - s0))" -v x="$((c1 - c0))" -v t="$TICK" 'BEGIN {
      printf "| %d | %s | %d | %.0f | %.1f | %.1f | %.1f | %.2f |\n", r, s, c, cps, u / t * 1e6 / n, k / t * 1e6 / n, (u + k) / t * 1e6 / n, x / n }'
  done
done

if [ "$SYSCALLS" = 1 ]; then
  echo
  for s in "${SYSTEMS[@]}"; do
    p=${PID[$s]}
    perf stat --no-inherit -e 'syscalls:sys_enter_*' -p "$p" -o "$OUT/run/solo-$s.perf" -- sleep "$((DURATION + 1))" &
    sp=$!
    sleep 0.3
    line=$("$LOADGEN" --addr "127.0.0.1:${PORT[$s]}" --concurrency "$CONC" --duration "$DURATION" --warmup 0 --label "$s")
    wait "$sp"
    IFS=, read -r _ _ _ conns _ <<<"$line"
    printf '%s, C=%s, system calls per connection:' "$s" "$CONC"
    awk -v n="$conns" '/syscalls:sys_enter_/ && $1 + 0 > 0 { gsub(/,/, "", $1); sub(/syscalls:sys_enter_/, "", $2); printf " %s %.2f", $2, $1 / n; t += $1 } END { printf " (total %.1f)\n", t / n }' "$OUT/run/solo-$s.perf"
  done
fi
