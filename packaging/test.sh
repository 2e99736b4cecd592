#!/usr/bin/env bash
# Packaging test: build the .deb, judge it with Debian's own tools, install
# it, run the installed daemon with the installed config (moved to free
# ports), talk to echo and sum, stop it, purge the package and check that
# nothing is left behind.
#
# Needs root (dpkg -i). Installs what it needs when missing: cargo-deb,
# lintian, mandoc, man-db, systemd (for systemd-analyze).
set -euo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
ok() { echo "ok: $*"; passed=$((passed + 1)); }
fail() { echo "FAILED: $*" >&2; failed=$((failed + 1)); }
die() { fail "$*"; summary; exit 1; }
summary() { echo "packaging: $passed passed, $failed failed"; }

[ "$(id -u)" -eq 0 ] || { echo "packaging/test.sh: needs root (dpkg -i)" >&2; exit 1; }

# --- Tools ---------------------------------------------------------------
missing=()
command -v lintian >/dev/null || missing+=(lintian)
command -v mandoc >/dev/null || missing+=(mandoc)
command -v man >/dev/null || missing+=(man-db)
command -v systemd-analyze >/dev/null || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
  echo "packaging: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! cargo deb --version >/dev/null 2>&1; then
  echo "packaging: installing cargo-deb"
  cargo install cargo-deb --locked --quiet
fi

work=$(mktemp -d)
daemon_pid=""
cleanup() {
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -KILL "$daemon_pid" 2>/dev/null || true
  fi
  if dpkg -s tinyinetd >/dev/null 2>&1; then
    dpkg --purge tinyinetd >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# A package left by an interrupted earlier run would hide problems.
if dpkg -s tinyinetd >/dev/null 2>&1; then
  echo "packaging: purging a tinyinetd package left from before"
  dpkg --purge tinyinetd >/dev/null
fi

# --- Build -------------------------------------------------------------------
# The README's commands, as written (cargo-deb compresses the man pages).
echo "packaging: building the release binaries and the .deb (cargo build --release && cargo deb --no-build)"
cargo build --release --quiet
deb=$(cargo deb --no-build --quiet --output target/debian/ 2>/dev/null | tail -n 1)
[ -f "$deb" ] || deb=$(ls -t target/debian/tinyinetd_*.deb | head -n 1)
[ -f "$deb" ] && ok "built $(basename "$deb")" || die "cargo deb produced no package"

# --- Judges ---------------------------------------------------------------
lintian_out=$(lintian --tag-display-limit 0 "$deb" 2>&1 | grep -v 'running with root privileges' || true)
echo "$lintian_out" | sed 's/^/  lintian: /'
bad=$(echo "$lintian_out" | grep -E '^[EW]: ' | grep -v 'initial-upload-closes-no-bugs' || true)
[ -z "$bad" ] && ok "lintian: no error, no warning beyond initial-upload-closes-no-bugs" || fail "lintian: $bad"

mandoc_out=$(mandoc -T lint -W warning man/*.[58] 2>&1 || true)
[ -z "$mandoc_out" ] && ok "mandoc -T lint -W warning: clean" || fail "mandoc: $mandoc_out"

# --- Install ----------------------------------------------------------------
dpkg -i "$deb" >/dev/null && ok "dpkg -i" || die "dpkg -i failed"
for f in /usr/sbin/tinyinetd /usr/libexec/tinyinetd/tinyinetd-echo /usr/libexec/tinyinetd/tinyinetd-sum \
         /usr/libexec/tinyinetd/tinyinetd-daytime /usr/share/man/man8/tinyinetd-daytime.8.gz \
         /usr/libexec/tinyinetd/tinyinetd-metrics /usr/share/man/man8/tinyinetd-metrics.8.gz \
         /etc/tinyinetd.toml /etc/tinyinetd.d /usr/lib/systemd/system/tinyinetd.service \
         /usr/share/man/man8/tinyinetd.8.gz /usr/share/man/man5/tinyinetd.toml.5.gz \
         /usr/share/doc/tinyinetd/copyright /usr/share/doc/tinyinetd/changelog.Debian.gz; do
  [ -e "$f" ] || fail "not installed: $f"
done
grep -qx /etc/tinyinetd.toml /var/lib/dpkg/info/tinyinetd.conffiles && ok "/etc/tinyinetd.toml is a conffile" \
  || fail "/etc/tinyinetd.toml is not a conffile"
man -w tinyinetd.toml >/dev/null 2>&1 && ok "man finds tinyinetd.toml(5)" || fail "man cannot find tinyinetd.toml(5)"

verify_out=$(systemd-analyze verify /usr/lib/systemd/system/tinyinetd.service 2>&1 || true)
[ -z "$verify_out" ] && ok "systemd-analyze verify: no output" || fail "systemd-analyze verify: $verify_out"
exposure=$(systemd-analyze security --offline=true /usr/lib/systemd/system/tinyinetd.service 2>/dev/null | tail -n 1 || true)
echo "  systemd-analyze security: $exposure"

/usr/sbin/tinyinetd --check >"$work/check" 2>&1 && ok "tinyinetd --check (installed config)" \
  || fail "tinyinetd --check: $(cat "$work/check")"
sed 's/^/  check: /' "$work/check"

# --- Run the installed daemon --------------------------------------------------
# The installed binary and handlers with the installed config, but on free
# ports: the shipped ones (9877, 9878) may be taken, by the daemon the
# README starts from the source tree above all.
read -r echo_port sum_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
# The control socket in the work directory too: the default one may be
# another daemon's.
sed -e "s/127\.0\.0\.1:9877/127.0.0.1:$echo_port/" -e "s/127\.0\.0\.1:9878/127.0.0.1:$sum_port/" \
  -e "s|^#control_socket = .*|control_socket = \"$work/control.sock\"|" \
  /etc/tinyinetd.toml >"$work/tinyinetd.toml"
grep -q "^control_socket = " "$work/tinyinetd.toml" || die "could not move the installed config's control socket"
grep -q ":$sum_port\"" "$work/tinyinetd.toml" || die "could not move the installed config to free ports"
/usr/sbin/tinyinetd --config "$work/tinyinetd.toml" 2>"$work/log" &
daemon_pid=$!
up=""
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$sum_port") 2>/dev/null; then up=yes; break; fi
  sleep 0.05
done
[ -n "$up" ] || die "the installed daemon did not listen within 5 s: $(cat "$work/log")"

talk() { # talk PORT REQUEST -> reply (bounded by timeout)
  timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"; printf "%b" "$2" >&3; cat <&3' _ "$1" "$2"
}
[ "$(talk "$echo_port" 'hello\n')" = "hello" ] && ok "echo answers" || fail "echo: $(talk "$echo_port" 'hello\n')"
[ "$(talk "$sum_port" '3 4\n-5 10\n1 2 3\n')" = "$(printf '7\n5\ninput error')" ] && ok "sum answers" \
  || fail "sum: $(talk "$sum_port" '3 4\n')"

/usr/sbin/tinyinetd status --config "$work/tinyinetd.toml" >"$work/status" 2>&1 \
  && grep -q '^echo ' "$work/status" && ok "tinyinetd status" || fail "status: $(cat "$work/status")"
/usr/sbin/tinyinetd reload --config "$work/tinyinetd.toml" >"$work/reload" 2>&1 \
  && ok "tinyinetd reload" || fail "reload: $(cat "$work/reload")"

kill -TERM "$daemon_pid"
rc=0
wait "$daemon_pid" || rc=$?
daemon_pid=""
[ "$rc" -eq 0 ] && ok "SIGTERM: exit 0" || fail "SIGTERM: exit $rc"
grep -q 'info: exit service=sum' "$work/log" && ok "the daemon logged the sessions" || fail "log: $(cat "$work/log")"

# --- Purge -------------------------------------------------------------------
dpkg --purge tinyinetd >/dev/null && ok "dpkg --purge" || fail "dpkg --purge failed"
left=""
for f in /usr/sbin/tinyinetd /usr/libexec/tinyinetd /etc/tinyinetd.toml /etc/tinyinetd.d /usr/lib/systemd/system/tinyinetd.service \
         /lib/systemd/system/tinyinetd.service /etc/systemd/system/multi-user.target.wants/tinyinetd.service \
         /usr/share/man/man8/tinyinetd.8.gz /usr/share/man/man5/tinyinetd.toml.5.gz /usr/share/doc/tinyinetd; do
  if [ -e "$f" ] || [ -L "$f" ]; then left="$left $f"; fi
done
[ -z "$left" ] && ok "nothing left behind" || fail "left behind:$left"

summary
[ "$failed" -eq 0 ]
