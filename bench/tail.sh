#!/usr/bin/env bash
# The tail at one concurrency: two tinyinetd binaries (a before and an
# after) and busybox inetd side by side, exec'ing the same handler, rounds
# alternating between the three, so that all saw the same machine (issue
# 23: p99 no higher than busybox inetd's, at a throughput no lower than
# the build before).
#
#   bench/tail.sh OLD_BINARY NEW_BINARY [--rounds N] [--conc C]
#                 [--duration SECS] [--handler nolibc|glibc]
#
# Uses what compare.sh built under bench/out (run it first, even with
# --quick). Prints each round, then per system the medians of conns/s,
# p50, p99 and the maximum latency, and the daemon's CPU per 1,000
# connections summed over the rounds; then NEW/OLD throughput and NEW's
# p99 against busybox inetd's. Every process started here is stopped by
# PID. Loopback only.
# shellcheck source=bench/common.sh
OLD=$(realpath "$1") NEW=$(realpath "$2")
shift 2
. "$(dirname "$0")/common.sh"
ROUNDS=5
CONC=8
DURATION=4
HANDLER=nolibc
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift ;;
    --conc) CONC=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --handler) HANDLER=$2; shift ;;
    *) echo "bench/tail.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
need_root_and_echo1 tail.sh "$HANDLER"
BUSYBOX=$OUT/peers/busybox/busybox
for f in "$LOADGEN" "$OLD" "$NEW" "$ECHO1" "$BUSYBOX"; do
  [ -e "$f" ] || { echo "tail.sh: $f missing (run bench/compare.sh --quick first for bench/out)" >&2; exit 1; }
done
RUN=$OUT/run/tail
mkdir -p "$RUN"
base=19930
while ! port_free $base || ! port_free $((base + 1)) || ! port_free $((base + 2)); do base=$((base + 10)); done
declare -A PORT=([old]=$base [new]=$((base + 1)) [busybox-inetd]=$((base + 2))) PID
for x in old new; do
  cat >"$RUN/$x.toml" <<CONF
[daemon]
log = "stderr"
log_level = "warn"
max_connections = 100000
control_socket = ""  # no /run/tinyinetd: several bench daemons run at once

[[service]]
name = "echo"
listen = ["127.0.0.1:${PORT[$x]}"]
program = "$ECHO1"
user = "root"
max_instances = 100000
CONF
done
"$OLD" --config "$RUN/old.toml" 2>"$RUN/old.err" &
PID[old]=$!; PIDS+=($!)
"$NEW" --config "$RUN/new.toml" 2>"$RUN/new.err" &
PID[new]=$!; PIDS+=($!)
echo "127.0.0.1:${PORT[busybox-inetd]} stream tcp nowait root $ECHO1 echo1" >"$RUN/busybox-inetd.conf"
"$BUSYBOX" inetd -f -e -R 0 -q 1024 "$RUN/busybox-inetd.conf" 2>"$RUN/busybox-inetd.err" &
PID[busybox-inetd]=$!; PIDS+=($!)
SYSTEMS=(old new busybox-inetd)
for x in "${SYSTEMS[@]}"; do
  wait_port "${PORT[$x]}" || { echo "tail.sh: $x did not come up: $(tail -n 3 "$RUN/$x.err")" >&2; exit 1; }
done
CSV=$RUN/tail.csv
echo "label,concurrency,seconds,conns,conns_per_s,p50_us,p90_us,p99_us,max_us,err_connect,err_reset,err_timeout,err_short,daemon_ticks" >"$CSV"
echo "| round | system | conns/s | p50 ms | p99 ms | max ms |"
echo "|---:|---|---:|---:|---:|---:|"
for r in $(seq 1 "$ROUNDS"); do
  for x in "${SYSTEMS[@]}"; do
    line=$("$LOADGEN" --addr "127.0.0.1:${PORT[$x]}" --concurrency "$CONC" --duration "$DURATION" --warmup 1 --label "$x" --pid "${PID[$x]}")
    echo "$line" >>"$CSV"
    IFS=, read -r _ _ _ _ cps p50 _ p99 max _ <<<"$line"
    awk -v r="$r" -v x="$x" -v c="$cps" -v a="$p50" -v b="$p99" -v m="$max" \
      'BEGIN { printf "| %d | %s | %.0f | %.2f | %.2f | %.1f |\n", r, x, c, a / 1000, b / 1000, m / 1000 }'
  done
done
python3 - "$CSV" "$(getconf CLK_TCK)" "$CONC" "$HANDLER" <<'PY'
import csv, statistics, sys
rows = list(csv.reader(open(sys.argv[1])))
hz, conc, handler = int(sys.argv[2]), sys.argv[3], sys.argv[4]
med = {}
print()
print("| C=%s, handler %s | conns/s | p50 ms | p99 ms | max ms | daemon CPU ms/1000 conns | errors |" % (conc, handler))
print("|---|---:|---:|---:|---:|---:|---:|")
for x in ("old", "new", "busybox-inetd"):
    rs = [r for r in rows if r[0] == x]
    m = lambda i: statistics.median(float(r[i]) for r in rs)
    conns = sum(int(r[3]) for r in rs)
    cpu = sum(int(r[13]) for r in rs) / hz * 1e6 / conns if conns else float("nan")
    errs = sum(int(v) for r in rs for v in r[9:13])
    med[x] = (m(4), m(7))
    print("| %s | %.0f | %.2f | %.2f | %.1f | %.1f | %d |" % (x, m(4), m(5) / 1000, m(7) / 1000, m(8) / 1000, cpu, errs))
print()
print("new/old conns/s: %.3f; p99 new/busybox inetd: %.2f" % (med["new"][0] / med["old"][0], med["new"][1] / med["busybox-inetd"][1]))
PY
