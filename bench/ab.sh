#!/usr/bin/env bash
# Two tinyinetd binaries side by side, for a before/after of one change:
# the same config on two ports, rounds alternating between them, the same
# handler and generator as compare.sh.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY [--rounds N] [--conc C] [--duration SECS]
#               [--new-keys 'KEY = VALUE'] [--new-loadgen 'ARGS']
#
# --new-keys appends a line to the service of the NEW binary's config only
# (the service is the file's last table): `--new-keys 'stderr = "log"'`
# measures a "log" service against the old "socket" one. OLD may equal NEW.
# --new-loadgen adds arguments to the generator for the NEW one only: with
# `--new-keys $'proxy_protocol = "v2"\ntrusted_proxies = ["127.0.0.1"]'
# --new-loadgen --proxy-v2` it measures what the PROXY header costs.
#
# Build the old one from a worktree of the earlier commit (cargo build
# --release there). Uses what compare.sh built under bench/out (run it
# first, even with --quick). Prints each round's conns/s and the daemon's
# CPU per 1,000 connections, then the medians and the ratio new/old. Every
# process started here is stopped by PID. Loopback only.
[ $# -ge 2 ] || { echo "usage: bench/ab.sh OLD_BINARY NEW_BINARY [--rounds N] [--conc C] [--duration SECS] [--new-keys 'KEY = VALUE'] [--new-loadgen 'ARGS']" >&2; exit 2; }
# Before common.sh moves into bench/: the paths are the caller's.
OLD=$(realpath "$1"); NEW=$(realpath "$2"); shift 2
# shellcheck source=bench/common.sh
. "$(dirname "$0")/common.sh"
ROUNDS=6; CONC=8; DURATION=5; NEW_KEYS=; NEW_LOADGEN=
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift ;;
    --conc) CONC=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --new-keys) NEW_KEYS=$2; shift ;;
    --new-loadgen) NEW_LOADGEN=$2; shift ;;
    *) echo "bench/ab.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" -eq 0 ] || { echo "ab.sh: needs root (the handler runs as root, as in compare.sh)" >&2; exit 1; }
for f in "$LOADGEN" "$OLD" "$NEW" "$OUT/run/tinyinetd.toml"; do
  [ -e "$f" ] || { echo "ab.sh: $f missing (run bench/compare.sh --quick first for bench/out)" >&2; exit 1; }
done
base=$(sed -n 's/^listen = \["127\.0\.0\.1:\([0-9]*\)"\]$/\1/p' "$OUT/run/tinyinetd.toml")
declare -A BIN=([old]=$OLD [new]=$NEW) PORT=([old]=$((base + 60)) [new]=$((base + 61))) PID
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
for x in old new; do
  sed "s/127\.0\.0\.1:$base/127.0.0.1:${PORT[$x]}/" "$OUT/run/tinyinetd.toml" >"$OUT/run/ab-$x.toml"
  if [ "$x" = new ] && [ -n "$NEW_KEYS" ]; then printf '%s\n' "$NEW_KEYS" >>"$OUT/run/ab-$x.toml"; fi
  "${BIN[$x]}" --config "$OUT/run/ab-$x.toml" 2>"$OUT/run/ab-$x.err" &
  PID[$x]=$!; PIDS+=($!)
done
for x in old new; do
  wait_port "${PORT[$x]}" || { echo "ab.sh: $x did not come up: $(tail -n 3 "$OUT/run/ab-$x.err")" >&2; exit 1; }
done
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
rows=$OUT/run/ab.rows
: >"$rows"
echo "| round | build | conns/s | daemon CPU ms/1000 conns |"
echo "|---:|---|---:|---:|"
for r in $(seq 1 "$ROUNDS"); do
  for x in old new; do
    extra=()
    if [ "$x" = new ] && [ -n "$NEW_LOADGEN" ]; then read -r -a extra <<<"$NEW_LOADGEN"; fi
    c0=$(cpu "${PID[$x]}")
    line=$("$LOADGEN" --addr "127.0.0.1:${PORT[$x]}" --concurrency "$CONC" --duration "$DURATION" --warmup 0 --label "$x" "${extra[@]}")
    c1=$(cpu "${PID[$x]}")
    IFS=, read -r _ _ _ conns cps _ <<<"$line"
    [ "$conns" -gt 0 ] || { echo "ab.sh: no connection served by $x" >&2; exit 1; }
    ms=$(awk -v c=$((c1 - c0)) -v n="$conns" -v t="$TICK" 'BEGIN { printf "%.1f", c / t * 1e6 / n }')
    printf '| %d | %s | %.0f | %s |\n' "$r" "$x" "$cps" "$ms"
    echo "$x $cps $ms" >>"$rows"
  done
done
median() { sort -n | awk '{a[NR] = $1} END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
for x in old new; do
  printf '%s: median %.0f conns/s, %.1f ms CPU per 1,000 connections\n' "$x" \
    "$(awk -v x=$x '$1 == x {print $2}' "$rows" | median)" "$(awk -v x=$x '$1 == x {print $3}' "$rows" | median)"
done
awk '$1 == "old" {print $2}' "$rows" | median >"$OUT/run/ab.old"
awk '$1 == "new" {print $2}' "$rows" | median >"$OUT/run/ab.new"
awk -v o="$(cat "$OUT/run/ab.old")" -v n="$(cat "$OUT/run/ab.new")" 'BEGIN { printf "new/old conns/s: %.3f\n", n / o }'
