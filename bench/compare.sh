#!/usr/bin/env bash
# Benchmarks tinyinetd against the superservers users would pick instead,
# side by side in one run, all exec'ing the same tiny static echo handler.
#
#   bench/compare.sh [--quick] [--rounds N] [--duration SECS] [--conc "1 8 64"]
#                    [--handler nolibc|glibc] [--systems "tinyinetd busybox-inetd ..."]
#
# --handler glibc execs echo1 linked statically against glibc (the kind of
# handler users ship; its start-up runs cpuid, which traps in a VM) instead
# of the libc-free build. --systems measures only the systems named (all
# are built and started either way). Both builds of echo1 are always made:
# bench/idle.sh uses them too.
#
# Needs root (peers run handlers as root; packages are fetched with apt).
# Peers are never installed as services: their Debian packages are
# downloaded and unpacked under bench/out/peers, and busybox (whose Debian
# build lacks the inetd applet) is built from Debian's source package, with
# apt pointed at a private source list and state under bench/out. Every
# process started here is stopped by PID at the end. Loopback only.
#
# Output: a markdown table on stdout, raw CSV in bench/out/results.csv.
# shellcheck source=bench/common.sh
. "$(dirname "$0")/common.sh"
ROUNDS=3
DURATION=5
WARMUP=1
CONCS="1 8 64"
HANDLER=nolibc
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) ROUNDS=1; DURATION=1; WARMUP=0.3 ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --conc) CONCS=$2; shift ;;
    --handler) HANDLER=$2; shift ;;
    --systems) ONLY=$2; shift ;;
    *) echo "usage: bench/compare.sh [--quick] [--rounds N] [--duration SECS] [--conc \"1 8 64\"] [--handler nolibc|glibc] [--systems \"...\"]" >&2; exit 2 ;;
  esac
  shift
done
case "$HANDLER" in nolibc|glibc) ;; *) echo "compare.sh: --handler is nolibc or glibc" >&2; exit 2 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "compare.sh: needs root" >&2; exit 1; }
mkdir -p "$OUT/bin" "$OUT/peers" "$OUT/run"
note() { echo "compare: $*" >&2; }

# --- Tools ----------------------------------------------------------------
need=()
command -v gcc >/dev/null || need+=(build-essential)
command -v dpkg-source >/dev/null || need+=(dpkg-dev)
command -v systemd-socket-activate >/dev/null || need+=(systemd)
command -v python3 >/dev/null || need+=(python3)
command -v make >/dev/null || need+=(make)
if [ ${#need[@]} -gt 0 ]; then
  note "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --- Build ours ---------------------------------------------------------------
# echo1 without libc where it can be (x86-64): see handler/echo1.c.
if [ "$(uname -m)" = x86_64 ]; then
  gcc -O2 -Wall -static -nostdlib -fno-stack-protector -DECHO1_NOLIBC -o "$OUT/bin/echo1" handler/echo1.c
  ECHO1_KIND="static, no libc"
elif gcc -O2 -Wall -static -o "$OUT/bin/echo1" handler/echo1.c 2>/dev/null; then
  ECHO1_KIND="static glibc"
else
  note "static linking unavailable: echo1 is dynamically linked"
  gcc -O2 -Wall -o "$OUT/bin/echo1" handler/echo1.c
  ECHO1_KIND="dynamic glibc"
fi
printf 'ping\n' | "$OUT/bin/echo1" | grep -qx ping || { echo "compare.sh: echo1 does not echo" >&2; exit 1; }
# The same handler linked statically against glibc (the kind users ship).
if gcc -O2 -Wall -static -o "$OUT/bin/echo1-glibc" handler/echo1.c 2>/dev/null; then
  GLIBC_KIND="static glibc"
else
  gcc -O2 -Wall -o "$OUT/bin/echo1-glibc" handler/echo1.c
  GLIBC_KIND="dynamic glibc"
fi
printf 'ping\n' | "$OUT/bin/echo1-glibc" | grep -qx ping || { echo "compare.sh: echo1-glibc does not echo" >&2; exit 1; }
gcc -O2 -Wall -o "$OUT/bin/tcpserv04" tcpserv04.c
gcc -O2 -Wall -o "$OUT/bin/spawn_ceiling" spawn_ceiling.c
(cd loadgen && cargo build --release --quiet)
(cd "$ROOT" && cargo build --release --quiet)
ECHO1=$OUT/bin/echo1
if [ "$HANDLER" = glibc ]; then
  ECHO1=$OUT/bin/echo1-glibc
  ECHO1_KIND=$GLIBC_KIND
fi

# --- Peers from Debian packages, unpacked, not installed -------------------
# libwrap0: xinetd's and openbsd-inetd's TCP wrappers library, which a
# fresh Debian does not have; unpacked beside them and found through
# LD_LIBRARY_PATH (set for the peers alone).
MULTIARCH=$(gcc -print-multiarch)
PEER_LIBS=$OUT/peers/root/lib/$MULTIARCH:$OUT/peers/root/usr/lib/$MULTIARCH
if [ ! -x "$OUT/peers/root/usr/sbin/xinetd" ] || [ ! -x "$OUT/peers/root/usr/sbin/inetd" ] \
   || [ ! -x "$OUT/peers/root/usr/bin/tcpserver" ] || ! compgen -G "$OUT/peers/root/*lib*/$MULTIARCH/libwrap.so.0" >/dev/null; then
  note "downloading and unpacking xinetd, openbsd-inetd, ucspi-tcp, libwrap0"
  mkdir -p "$OUT/peers/debs"
  (cd "$OUT/peers/debs" && apt-get -o APT::Sandbox::User=root download xinetd openbsd-inetd ucspi-tcp libwrap0 >/dev/null)
  for d in "$OUT"/peers/debs/*.deb; do dpkg-deb -x "$d" "$OUT/peers/root"; done
fi
XINETD=$OUT/peers/root/usr/sbin/xinetd
INETD=$OUT/peers/root/usr/sbin/inetd
TCPSERVER=$OUT/peers/root/usr/bin/tcpserver
for peer in "$XINETD" "$INETD" "$TCPSERVER"; do
  if LD_LIBRARY_PATH=$PEER_LIBS ldd "$peer" | grep -q 'not found'; then
    echo "compare.sh: $peer lacks a library: $(LD_LIBRARY_PATH=$PEER_LIBS ldd "$peer" | grep 'not found')" >&2
    exit 1
  fi
done

# busybox inetd from Debian's source package, with a private apt state.
BUSYBOX=$OUT/peers/busybox/busybox
BUSYBOX_WHY=""
if [ ! -x "$BUSYBOX" ]; then
  note "building busybox with the inetd applet from Debian's source package"
  src=$OUT/peers/bbsrc
  mkdir -p "$src/parts" "$src/lists/partial" "$src/cache/archives/partial"
  cat > "$src/parts/deb-src.sources" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  apt_private=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$src/parts"
               -o "Dir::State::Lists=$src/lists" -o "Dir::Cache=$src/cache" -o APT::Sandbox::User=root)
  if (cd "$src" && apt-get "${apt_private[@]}" update >/dev/null 2>&1 \
        && apt-get "${apt_private[@]}" source --download-only busybox >/dev/null 2>&1 \
        && rm -rf bb && dpkg-source -x busybox_*.dsc bb >/dev/null 2>&1 \
        && cd bb && make defconfig >/dev/null 2>&1 \
        && sed -i 's/^# CONFIG_INETD is not set/CONFIG_INETD=y/' .config \
        && grep -q '^CONFIG_INETD=y' .config \
        && make -j"$(nproc)" busybox >/dev/null 2>&1); then
    mkdir -p "$OUT/peers/busybox" && cp "$src/bb/busybox" "$BUSYBOX"
  else
    BUSYBOX_WHY="could not fetch or build Debian's busybox source (see $src)"
    note "busybox inetd skipped: $BUSYBOX_WHY"
  fi
fi

# --- Configs and start -------------------------------------------------------
# PIDS, cleanup and port_free: common.sh.
base=19900
while ! port_free $base || ! port_free $((base + 6)); do base=$((base + 10)); done

declare -A PORT PID
start() { # start NAME PORT CMD...
  local name=$1 port=$2; shift 2
  LD_LIBRARY_PATH=$PEER_LIBS "$@" >"$OUT/run/$name.out" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  if wait_port "$port"; then
    PORT[$name]=$port
    PID[$name]=$pid
  else
    note "$name did not come up on 127.0.0.1:$port: $(tail -n 3 "$OUT/run/$name.out")"
  fi
}

cat > "$OUT/run/tinyinetd.toml" <<EOF
[daemon]
log = "stderr"
log_level = "warn"       # per-connection lines off, as the peers are configured
max_connections = 100000
control_socket = ""       # no /run/tinyinetd: several bench daemons run at once

[[service]]
name = "bench"
listen = ["127.0.0.1:$base"]
program = "$ECHO1"
user = "root"            # every system runs the handler as root, for parity
max_instances = 100000
EOF
start tinyinetd $base "$ROOT/target/release/tinyinetd" --config "$OUT/run/tinyinetd.toml"

cat > "$OUT/run/xinetd.conf" <<EOF
defaults
{
    instances = UNLIMITED
    per_source = UNLIMITED
    cps = 1000000 1
}
service bench
{
    type = UNLISTED
    socket_type = stream
    protocol = tcp
    wait = no
    user = root
    server = $ECHO1
    port = $((base + 1))
    bind = 127.0.0.1
    instances = UNLIMITED
    per_source = UNLIMITED
    cps = 1000000 1
    log_on_success =
    log_on_failure =
}
EOF
start xinetd $((base + 1)) "$XINETD" -dontfork -f "$OUT/run/xinetd.conf" -pidfile "$OUT/run/xinetd.pid"

echo "127.0.0.1:$((base + 2)) stream tcp nowait.1000000 root $ECHO1 echo1" > "$OUT/run/inetd.conf"
start openbsd-inetd $((base + 2)) "$INETD" -i -q 1024 -R 1000000 "$OUT/run/inetd.conf"

start tcpserver $((base + 3)) "$TCPSERVER" -q -c 100000 -b 1024 -H -R -l 0 127.0.0.1 $((base + 3)) "$ECHO1"

start systemd-socket-activate $((base + 4)) systemd-socket-activate --accept --inetd -l "127.0.0.1:$((base + 4))" "$ECHO1"

if [ -x "$BUSYBOX" ]; then
  echo "127.0.0.1:$((base + 5)) stream tcp nowait root $ECHO1 echo1" > "$OUT/run/busybox-inetd.conf"
  start busybox-inetd $((base + 5)) "$BUSYBOX" inetd -f -e -R 0 -q 1024 "$OUT/run/busybox-inetd.conf"
fi

start tcpserv04 $((base + 6)) "$OUT/bin/tcpserv04" 127.0.0.1 $((base + 6)) "$ECHO1"

SYSTEMS=()
for s in tinyinetd xinetd openbsd-inetd tcpserver systemd-socket-activate busybox-inetd tcpserv04; do
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $s "* ]]; then continue; fi
  [ -n "${PORT[$s]:-}" ] && SYSTEMS+=("$s")
done
note "systems: ${SYSTEMS[*]}"

# --- Measure -------------------------------------------------------------------
HZ=$(getconf CLK_TCK)
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }
zombies() { ps -o stat= --ppid "$1" 2>/dev/null | grep -c '^Z' || true; }

CSV=$OUT/results.csv
echo "round,system,concurrency,seconds,conns,conns_per_s,p50_us,p90_us,p99_us,max_us,err_connect,err_reset,err_timeout,err_short,daemon_cpu_ms" > "$CSV"
declare -A RSS_IDLE
for s in "${SYSTEMS[@]}"; do RSS_IDLE[$s]=$(rss_kib "${PID[$s]}"); done

for round in $(seq 1 "$ROUNDS"); do
  for c in $CONCS; do
    for s in "${SYSTEMS[@]}"; do
      pid=${PID[$s]}
      # The generator reads the daemon's CPU ticks at the start and the end
      # of the measured window itself (last field), so that CPU and
      # connections cover the same seconds, warm-up excluded.
      line=$("$LOADGEN" --addr "127.0.0.1:${PORT[$s]}" --concurrency "$c" --duration "$DURATION" --warmup "$WARMUP" --label "$s" --pid "$pid")
      cpu_ms=$(( ${line##*,} * 1000 / HZ ))
      line=${line%,*}
      echo "$round,${line#*,},$cpu_ms" | sed "s/^$round,/$round,$s,/" >> "$CSV"
      note "round $round C=$c $s: $(echo "$line" | cut -d, -f5) conns/s"
    done
  done
done

sleep 1
AFTER=$OUT/after.csv
echo "system,rss_idle_kib,rss_after_kib,zombies,fds_after" > "$AFTER"
for s in "${SYSTEMS[@]}"; do
  p=${PID[$s]}
  echo "$s,${RSS_IDLE[$s]},$(rss_kib "$p"),$(zombies "$p"),$(fds "$p")" >> "$AFTER"
done

# Ceilings: "RATE CPU_MS_PER_1000" from each loop.
read -r CEIL1 CEIL1_CPU < <("$OUT/bin/spawn_ceiling" "$ECHO1" "$DURATION" fork)
read -r VCEIL1 VCEIL1_CPU < <("$OUT/bin/spawn_ceiling" "$ECHO1" "$DURATION" vfork)
CEILN=0
ceil_pids=()
for i in $(seq 1 "$(nproc)"); do
  "$OUT/bin/spawn_ceiling" "$ECHO1" "$DURATION" fork > "$OUT/run/ceil.$i" &
  ceil_pids+=($!)
done
wait "${ceil_pids[@]}"   # not a bare wait: the systems under test are children too
for i in $(seq 1 "$(nproc)"); do CEILN=$((CEILN + $(cut -d' ' -f1 "$OUT/run/ceil.$i"))); done
SELFTEST=$("$LOADGEN" --selftest --concurrency 8 --duration "$DURATION" --warmup "$WARMUP" --label selftest | cut -d, -f5)

python3 - "$CSV" "$AFTER" "$CEIL1" "$CEILN" "$SELFTEST" "$ROUNDS" "$DURATION" "${BUSYBOX_WHY:-}" "$CEIL1_CPU" "$VCEIL1" "$VCEIL1_CPU" "$ECHO1_KIND" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
after = {r["system"]: r for r in csv.DictReader(open(sys.argv[2]))}
ceil1, ceiln, selftest, rounds, duration, bbwhy, ceil1_cpu, vceil1, vceil1_cpu, echo1_kind = sys.argv[3:13]
systems = list(dict.fromkeys(r["system"] for r in rows))
concs = sorted({int(r["concurrency"]) for r in rows})
med = {}
for s in systems:
    for c in concs:
        rs = [r for r in rows if r["system"] == s and int(r["concurrency"]) == c]
        m = lambda k: statistics.median(float(r[k]) for r in rs)
        conns = sum(float(r["conns"]) for r in rs)
        errs = sum(int(r[k]) for r in rs for k in ("err_connect", "err_reset", "err_timeout", "err_short"))
        cpu = sum(float(r["daemon_cpu_ms"]) for r in rs)
        med[s, c] = dict(cps=m("conns_per_s"), p50=m("p50_us"), p99=m("p99_us"),
                         cpu=cpu / conns * 1000 if conns else float("nan"), errs=errs)
def ratio(s, c, ref):
    r = med.get((ref, c))
    return "%.2f" % (med[s, c]["cps"] / r["cps"]) if r and r["cps"] else "—"
print("| system | C | conns/s | vs xinetd | vs tcpserv04 | p50 ms | p99 ms | daemon CPU ms/1000 conns | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for c in concs:
    for s in systems:
        v = med[s, c]
        print("| %s | %d | %.0f | %s | %s | %.2f | %.2f | %.1f | %d |" % (
            s, c, v["cps"], ratio(s, c, "xinetd"), ratio(s, c, "tcpserv04"),
            v["p50"] / 1000, v["p99"] / 1000, v["cpu"], v["errs"]))
print()
print("| system | RSS idle KiB | RSS after load KiB | zombies after load | fds after load |")
print("|---|---:|---:|---:|---:|")
for s in systems:
    a = after[s]
    print("| %s | %s | %s | %s | %s |" % (s, a["rss_idle_kib"], a["rss_after_kib"], a["zombies"], a["fds_after"]))
print()
print("Spawn ceiling (fork+exec+wait of the handler, no network): %s/s in one loop, %s/s with one loop per core." % (ceil1, ceiln))
print("CPU charged to that loop itself, per 1,000 spawns: fork+exec+wait %s ms; vfork+exec+wait %s ms (%s/s), what a parent that waits for each child's exec (as busybox inetd does) is charged at the least, before any accept or close." % (ceil1_cpu, vceil1_cpu, vceil1))
print("Load generator against an in-process echo server (a pool of threads started up front; no fork, no thread per connection), C=8: %s conns/s." % selftest)
print("Medians of %s interleaved rounds of %s s per cell; CPU is the daemon process's own (not its children's). Handler: echo1, %s." % (rounds, duration, echo1_kind))
if bbwhy:
    print("busybox inetd: not measured: %s." % bbwhy)
if "tinyinetd" in systems:
    c = 8 if 8 in concs else concs[0]
    t = med["tinyinetd", c]["cps"]
    parts = []
    for ref in ("xinetd", "busybox-inetd", "tcpserv04"):
        if (ref, c) in med:
            parts.append("%s %.2fx" % (ref, t / med[ref, c]["cps"]))
    parts.append("spawn ceiling (all cores) %.2fx" % (t / float(ceiln)) if float(ceiln) else "")
    if c == 8 and float(selftest):
        parts.append("in-process echo server (the generator's reach) %.2fx" % (t / float(selftest)))
    print("tinyinetd at C=%d: %s." % (c, ", ".join(p for p in parts if p)))
EOF
