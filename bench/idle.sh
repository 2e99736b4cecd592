#!/usr/bin/env bash
# N idle sessions held open on one service while the C=8 load runs on
# another: what each daemon's cost per new connection does when many
# handlers are running (issue 23). tinyinetd, busybox inetd and xinetd, in
# one interleaved run: for each round, each N, each daemon in turn.
#
#   bench/idle.sh [--rounds R] [--duration SECS] [--n "0 1000 10000"]
#                 [--conc C] [--handler nolibc|glibc] [--systems "tinyinetd ..."]
#
# Uses what compare.sh built under bench/out (run it first, even with
# --quick). Every cell: the generator first opens N connections to the
# idle port and keeps them open and silent (each handler blocks reading
# its line), waits until the daemon runs a handler for each (at most
# 120 s, or 3 s without a new one), then runs the load for SECS after a 1 s warm-up; the daemon's
# running handlers and RSS are read in the middle of the measured window.
# A daemon that could not hold N (fewer handlers running than sessions
# asked for) is reported with the number it held. Limits: the script
# raises its soft descriptor limit to the hard one (the generator holds N
# sockets, tinyinetd one pidfd per handler); pid_max and the process
# limits are left as they are. Every process started here is stopped by
# PID. Loopback only.
# shellcheck source=bench/common.sh
. "$(dirname "$0")/common.sh"
ROUNDS=3
DURATION=4
NS="0 1000 10000"
CONC=8
HANDLER=nolibc
ONLY="tinyinetd busybox-inetd xinetd"
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --n) NS=$2; shift ;;
    --conc) CONC=$2; shift ;;
    --handler) HANDLER=$2; shift ;;
    --systems) ONLY=$2; shift ;;
    *) echo "usage: bench/idle.sh [--rounds R] [--duration SECS] [--n \"0 1000 10000\"] [--conc C] [--handler nolibc|glibc] [--systems \"tinyinetd busybox-inetd xinetd\"]" >&2; exit 2 ;;
  esac
  shift
done
need_root_and_echo1 idle.sh "$HANDLER"
# The generator as of this tree (`--hold-wait` is newer than some builds).
(cd loadgen && cargo build --release --quiet)
TINYINETD=$ROOT/target/release/tinyinetd
BUSYBOX=$OUT/peers/busybox/busybox
XINETD=$OUT/peers/root/usr/sbin/xinetd
MULTIARCH=$(gcc -print-multiarch)
PEER_LIBS=$OUT/peers/root/lib/$MULTIARCH:$OUT/peers/root/usr/lib/$MULTIARCH
for f in "$LOADGEN" "$TINYINETD" "$ECHO1"; do
  [ -e "$f" ] || { echo "idle.sh: $f missing: run bench/compare.sh (--quick will do) first" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)"
note() { echo "idle: $*" >&2; }
note "descriptor limit $(ulimit -n), pid_max $(cat /proc/sys/kernel/pid_max), handler $HANDLER"

# PIDS, cleanup and port_free: common.sh.
base=19960
while ! port_free $base || ! port_free $((base + 5)); do base=$((base + 10)); done
RUN=$OUT/run/idle
mkdir -p "$RUN"

declare -A IDLE LOAD PID
start() { # start NAME IDLE_PORT LOAD_PORT CMD...
  local name=$1 idle=$2 load=$3; shift 3
  LD_LIBRARY_PATH=$PEER_LIBS "$@" >"$RUN/$name.out" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  if wait_port "$idle" && wait_port "$load"; then
    IDLE[$name]=$idle; LOAD[$name]=$load; PID[$name]=$pid
  else
    note "$name did not come up: $(tail -n 3 "$RUN/$name.out")"
  fi
}

cat >"$RUN/tinyinetd.toml" <<EOF
[daemon]
log = "stderr"
log_level = "warn"
max_connections = 100000
control_socket = ""  # no /run/tinyinetd: several bench daemons run at once

[[service]]
name = "idle"
listen = ["127.0.0.1:$base"]
program = "$ECHO1"
user = "root"
max_instances = 100000

[[service]]
name = "load"
listen = ["127.0.0.1:$((base + 1))"]
program = "$ECHO1"
user = "root"
max_instances = 100000
EOF
start tinyinetd $base $((base + 1)) "$TINYINETD" --config "$RUN/tinyinetd.toml"

if [ -x "$BUSYBOX" ]; then
  {
    echo "127.0.0.1:$((base + 2)) stream tcp nowait root $ECHO1 echo1"
    echo "127.0.0.1:$((base + 3)) stream tcp nowait root $ECHO1 echo1"
  } >"$RUN/busybox-inetd.conf"
  start busybox-inetd $((base + 2)) $((base + 3)) "$BUSYBOX" inetd -f -e -R 0 -q 1024 "$RUN/busybox-inetd.conf"
else
  note "busybox inetd: not built by compare.sh"
fi

if [ -x "$XINETD" ]; then
  xsvc() { # xsvc NAME PORT
    cat <<EOF
service $1
{
    type = UNLISTED
    socket_type = stream
    protocol = tcp
    wait = no
    user = root
    server = $ECHO1
    port = $2
    bind = 127.0.0.1
    instances = UNLIMITED
    per_source = UNLIMITED
    cps = 1000000 1
    log_on_success =
    log_on_failure =
}
EOF
  }
  {
    printf 'defaults\n{\n    instances = UNLIMITED\n    per_source = UNLIMITED\n    cps = 1000000 1\n}\n'
    xsvc idle $((base + 4))
    xsvc load $((base + 5))
  } >"$RUN/xinetd.conf"
  start xinetd $((base + 4)) $((base + 5)) "$XINETD" -dontfork -f "$RUN/xinetd.conf" -pidfile "$RUN/xinetd.pid"
else
  note "xinetd: not unpacked by compare.sh"
fi

SYSTEMS=()
for s in $ONLY; do [ -n "${PID[$s]:-}" ] && SYSTEMS+=("$s"); done
note "systems: ${SYSTEMS[*]}"
running() { ps -o stat= --ppid "$1" 2>/dev/null | grep -vc '^Z' || true; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)

CSV=$OUT/idle.csv
echo "round,system,n,held,running,conns,conns_per_s,p50_us,p99_us,errors,daemon_cpu_ms,rss_kib" >"$CSV"
for round in $(seq 1 "$ROUNDS"); do
  for n in $NS; do
    for s in "${SYSTEMS[@]}"; do
      pid=${PID[$s]}
      # Nothing of the last cell left running.
      for _ in $(seq 1 300); do [ "$(running "$pid")" -eq 0 ] && break; sleep 0.1; done
      rm -f "$RUN/go"
      "$LOADGEN" --addr "127.0.0.1:${LOAD[$s]}" --concurrency "$CONC" --duration "$DURATION" --warmup 1 \
        --label "$s" --pid "$pid" --hold "127.0.0.1:${IDLE[$s]}" --hold-n "$n" --hold-wait "$RUN/go" \
        >"$RUN/line" 2>"$RUN/held" &
      lg=$!
      # The sessions are opened before the warm-up: wait for them, and for
      # the daemon to run a handler for each (tinyinetd admits long
      # sessions at 2 per CPU per 5 ms: README), at most 120 s, or until
      # it has gained none for 3 s; then the
      # load starts, and the daemon is read in the middle of its window.
      for _ in $(seq 1 600); do grep -q '^held=' "$RUN/held" 2>/dev/null && break; sleep 0.1; done
      t_held=$(date +%s.%N)
      last=-1 still=0
      for _ in $(seq 1 1200); do
        now_running=$(running "$pid")
        [ "$now_running" -ge "$n" ] && break
        # A daemon that stops gaining handlers for 3 s cannot hold N.
        if [ "$now_running" -gt "$last" ]; then last=$now_running still=0; else still=$((still + 1)); fi
        [ "$still" -ge 30 ] && break
        sleep 0.1
      done
      note "$s: $(running "$pid") of $n handlers running $(awk -v a="$t_held" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s after the sessions connected"
      touch "$RUN/go"
      sleep "$(awk -v d="$DURATION" 'BEGIN { print 1 + d / 2 }')"
      run_now=$(( $(running "$pid") ))
      rss=$(rss_kib "$pid")
      wait "$lg"
      line=$(cat "$RUN/line")
      held=$(sed -n 's/^held=\([0-9]*\).*/\1/p' "$RUN/held")
      IFS=, read -r _ _ _ conns cps p50 _ p99 _ e1 e2 e3 e4 ticks <<<"$line"
      cpu_ms=$(( ticks * 1000 / HZ ))
      echo "$round,$s,$n,$held,$run_now,$conns,$cps,$p50,$p99,$((e1 + e2 + e3 + e4)),$cpu_ms,$rss" >>"$CSV"
      note "round $round N=$n $s: held $held, running $run_now, $cps conns/s, RSS $rss KiB"
    done
  done
done

python3 - "$CSV" "$ROUNDS" "$DURATION" "$CONC" "$HANDLER" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
rounds, duration, conc, handler = sys.argv[2:6]
systems = list(dict.fromkeys(r["system"] for r in rows))
ns = sorted({int(r["n"]) for r in rows})
med, cpu = {}, {}
for s in systems:
    for n in ns:
        rs = [r for r in rows if r["system"] == s and int(r["n"]) == n]
        m = lambda k: statistics.median(float(r[k]) for r in rs)
        conns = sum(float(r["conns"]) for r in rs)
        c = sum(float(r["daemon_cpu_ms"]) for r in rs) / conns * 1000 if conns else float("nan")
        cpu[s, n] = c
        med[s, n] = dict(held=min(int(r["held"]) for r in rs), running=min(int(r["running"]) for r in rs),
                         cps=m("conns_per_s"), p99=m("p99_us"), rss=m("rss_kib"),
                         errs=sum(int(r["errors"]) for r in rs))
print("| system | N idle | held | handlers running | conns/s | p99 ms | daemon CPU ms/1000 conns | CPU vs N=0 | daemon RSS KiB | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for n in ns:
    for s in systems:
        v = med[s, n]
        ratio = cpu[s, n] / cpu[s, ns[0]] if cpu.get((s, ns[0])) else float("nan")
        short = " (could not hold %d)" % n if v["running"] < n else ""
        print("| %s | %d | %d | %d%s | %.0f | %.2f | %.1f | %.2fx | %.0f | %d |" % (
            s, n, v["held"], v["running"], short, v["cps"], v["p99"] / 1000, cpu[s, n], ratio, v["rss"], v["errs"]))
print()
print("Medians of %s interleaved rounds of %s s per cell, C=%s, handler echo1 (%s); CPU is the daemon's own, summed over the rounds, per 1,000 connections of the load; handlers running and RSS read in the middle of each measured window (the lowest count of the rounds shown)." % (rounds, duration, conc, handler))
for s in systems:
    if (s, ns[-1]) in cpu and cpu.get((s, ns[0])):
        print("%s: CPU per 1,000 connections at N=%d is %.2fx the figure at N=%d." % (s, ns[-1], cpu[s, ns[-1]] / cpu[s, ns[0]], ns[0]))
EOF
