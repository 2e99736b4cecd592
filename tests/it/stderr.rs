//! `stderr = "socket" | "log" | "null"` (SPEC §10.2): where a handler's
//! fd 2 goes, and how the daemon logs it.

use std::fs;
use std::io::Write;
use std::net::Shutdown;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::harness::*;

/// A daemon serving `service` (one `[[service]]` block) with the given
/// scripts written into its handler directory first.
fn start_with_scripts(service: &str, scripts: &[(&str, &str)]) -> Daemon {
    let mut d = Daemon::prepare(&format!("{DAEMON}\n{service}"));
    for (name, text) in scripts {
        let p = d.handlers.join(name);
        fs::write(&p, text).expect("write script");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod script");
    }
    d.spawn(&|_| {});
    if let Err(e) = d.ready(Duration::from_secs(10)) {
        panic!("daemon did not become ready: {e}\n--- log ---\n{}", d.log());
    }
    d
}

fn block(name: &str, program: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nlisten = [\"127.0.0.1:{{port:{name}}}\"]\nprogram = \"{program}\"\n{extra}\n"
    )
}

/// The index of the first log line containing `needle`.
fn line_index(log: &str, needle: &str) -> Option<usize> {
    log.lines().position(|l| l.contains(needle))
}

const RAISE_PY: &str = "#!/usr/bin/python3\nimport sys\nsys.stdout.write(\"the answer\\n\")\nsys.stdout.flush()\nraise RuntimeError(\"boom from the handler\")\n";

#[test]
fn a_python_traceback_goes_to_the_log_not_the_client() {
    let d = start_with_scripts(
        &block("raise", "raise.py", "stderr = \"log\""),
        &[("raise.py", RAISE_PY)],
    );
    let mut s = connect(d.addr("raise"));
    s.shutdown(Shutdown::Write).expect("shutdown");
    let out = String::from_utf8(read_all(&mut s)).expect("utf8");
    assert_eq!(out, "the answer\n", "only stdout reaches the client");
    assert!(
        d.wait_log("exit service=raise conn=1 ", Duration::from_secs(10)),
        "no exit line:\n{}",
        d.log()
    );
    let log = d.log();
    let exit = &d.log_lines("exit service=raise conn=1 ")[0];
    let pid = exit
        .split(' ')
        .find_map(|f| f.strip_prefix("pid="))
        .expect("pid in exit line");
    let prefix = format!("info: stderr service=raise conn=1 pid={pid} line=");
    let exit_at = line_index(&log, "exit service=raise conn=1 ").expect("exit");
    for needle in [
        "Traceback (most recent call last):",
        "RuntimeError: boom from the handler",
    ] {
        let at = log
            .lines()
            .position(|l| l.contains(&prefix) && l.contains(needle))
            .unwrap_or_else(|| panic!("no stderr line with {needle:?}:\n{log}"));
        assert!(
            at < exit_at,
            "{needle:?} logged after the exit line:\n{log}"
        );
    }
}

#[test]
fn a_line_over_1000_bytes_is_logged_in_parts() {
    let py = "#!/usr/bin/python3\nimport sys\nsys.stderr.write(\"a\" * 1000 + \"b\" * 1000 + \"c\" * 500 + \"\\n\")\nsys.stderr.write(\"short\")\n";
    let d = start_with_scripts(
        &block("long", "long.py", "stderr = \"log\""),
        &[("long.py", py)],
    );
    let mut s = connect(d.addr("long"));
    s.shutdown(Shutdown::Write).expect("shutdown");
    read_all(&mut s);
    assert!(d.wait_log("exit service=long conn=1 ", Duration::from_secs(10)));
    let lines = d.log_lines("info: stderr service=long conn=1 ");
    let want = [
        ("part=1 line=", "a".repeat(1000)),
        ("part=2 line=", "b".repeat(1000)),
        ("part=3 line=", "c".repeat(500)),
        ("line=", "short".to_string()),
    ];
    assert_eq!(lines.len(), want.len(), "{lines:#?}");
    for (line, (key, text)) in lines.iter().zip(want) {
        assert!(
            line.ends_with(&format!(" {key}{text}")),
            "want {key}{}... in {line}",
            &text[..5]
        );
    }
    // The partial last line (no newline) came before the exit line.
    let log = d.log();
    assert!(
        line_index(&log, "line=short").expect("short")
            < line_index(&log, "exit service=long conn=1 ").expect("exit")
    );
}

#[test]
fn a_stderr_flood_is_rate_limited_and_counted_while_others_are_served() {
    let py = "#!/usr/bin/python3\nimport sys\nfor i in range(10000):\n    sys.stderr.write(\"flood line %d\\n\" % i)\n";
    let conf = format!(
        "{}{}",
        block("flood", "flood.py", "stderr = \"log\""),
        block("echo", "tinyinetd-echo", "")
    );
    let d = start_with_scripts(&conf, &[("flood.py", py)]);
    let started = Instant::now();
    let mut s = connect(d.addr("flood"));
    s.shutdown(Shutdown::Write).expect("shutdown");
    // Round trips to another service while the flood is read.
    let mut worst = Duration::ZERO;
    let mut trips = 0;
    while started.elapsed() < Duration::from_millis(1500) && trips < 1000 {
        let t = Instant::now();
        assert_eq!(roundtrip(d.addr("echo"), b"ping\n"), b"ping\n");
        worst = worst.max(t.elapsed());
        trips += 1;
    }
    read_all(&mut s);
    let counted = || {
        let logged = d.log_lines("info: stderr service=flood ").len() as u64;
        let suppressed: u64 = d
            .log_lines("warn: stderr-suppressed service=flood ")
            .iter()
            .filter_map(|l| l.split("count=").nth(1)?.trim().parse::<u64>().ok())
            .sum();
        (logged, suppressed)
    };
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (l, s) = counted();
            l + s == 10000
        }),
        "logged + suppressed != 10000: {:?}",
        counted()
    );
    let secs = started.elapsed().as_secs() + 2;
    let (logged, suppressed) = counted();
    eprintln!(
        "flood: {logged} logged, {suppressed} suppressed; {trips} echo round trips, worst {worst:?}"
    );
    assert!(
        logged <= 50 * secs,
        "{logged} lines logged in about {secs} s"
    );
    assert!(logged >= 50, "the first 50 lines are logged: {logged}");
    assert!(
        worst < Duration::from_millis(500),
        "echo round trip took {worst:?} during the flood"
    );
}

#[test]
fn a_handlers_background_child_does_not_keep_the_pipe() {
    // The child holds fd 2 (the pipe) but not the connection; it writes
    // after its parent is gone, and dies of SIGPIPE then.
    let sh = "#!/bin/sh\necho from the handler >&2\n(sleep 1; echo too late >&2; echo later still >&2) </dev/null >/dev/null &\necho done\n";
    let d = start_with_scripts(&block("bg", "bg.sh", "stderr = \"log\""), &[("bg.sh", sh)]);
    let idle = d.fd_count();
    let t = Instant::now();
    let mut s = connect(d.addr("bg"));
    s.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(read_all(&mut s), b"done\n");
    assert!(
        d.wait_log("exit service=bg conn=1 ", Duration::from_secs(5)),
        "the handler was not reaped:\n{}",
        d.log()
    );
    let reaped = t.elapsed();
    assert!(reaped < Duration::from_millis(900), "exit after {reaped:?}");
    assert!(
        wait_until(Duration::from_secs(5), || d.fd_count() <= idle),
        "daemon fds {} (idle {idle})",
        d.fd_count()
    );
    assert_eq!(d.log_lines("line=\"from the handler\"").len(), 1);
    // Give the background child its write (bounded), then check that the
    // daemon read nothing more.
    wait_until(Duration::from_secs(3), || false);
    assert!(d.log_lines("too late").is_empty(), "{}", d.log());
}

#[test]
fn null_sends_fd_2_nowhere() {
    let sh = "#!/bin/sh\necho secret to stderr >&2\necho out\n";
    let d = start_with_scripts(
        &block("quiet", "quiet.sh", "stderr = \"null\""),
        &[("quiet.sh", sh)],
    );
    let mut s = connect(d.addr("quiet"));
    s.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(read_all(&mut s), b"out\n");
    assert!(d.wait_log("exit service=quiet conn=1 ", Duration::from_secs(5)));
    assert!(d.log_lines("secret").is_empty(), "{}", d.log());
    assert!(d
        .log_lines("status=0")
        .iter()
        .any(|l| l.contains("service=quiet")));
}

#[test]
fn socket_is_the_default_and_fd_2_is_the_connection() {
    let sh = "#!/bin/sh\necho to stderr >&2\n";
    let d = start_with_scripts(&block("loud", "loud.sh", ""), &[("loud.sh", sh)]);
    let mut s = connect(d.addr("loud"));
    s.write_all(b"").expect("write");
    s.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(read_all(&mut s), b"to stderr\n");
}

#[test]
fn check_shows_and_validates_stderr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("t.toml");
    let c = conf.to_string_lossy().into_owned();
    let svc = |v: &str| {
        format!("[daemon]\nlog = \"stderr\"\n[[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:9\"]\nprogram = \"/bin/cat\"\nstderr = {v}\n")
    };
    fs::write(&conf, svc("\"log\"")).expect("write");
    let out = run_tinyinetd(&["--check", "-c", &c], Duration::from_secs(5));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines().next().expect("line").ends_with(" stderr=log"),
        "{text}"
    );
    for (v, msg) in [
        (
            "\"syslog\"",
            "\"stderr\" must be \"socket\", \"log\" or \"null\", not \"syslog\"",
        ),
        ("2", "\"stderr\" must be a string"),
    ] {
        fs::write(&conf, svc(v)).expect("write");
        let out = run_tinyinetd(&["--check", "-c", &c], Duration::from_secs(5));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{v}: {err}");
        let at = format!("{c}:7:10: service \"s\": ");
        assert!(
            err.lines().any(|l| l.starts_with(&at) && l.contains(msg)),
            "want {at}{msg} in: {err}"
        );
    }
}

/// Sets the daemon's soft RLIMIT_NOFILE with prlimit(1) (the hard one
/// stays: raising it back needs CAP_SYS_RESOURCE).
fn set_nofile(d: &Daemon, n: usize) {
    let st = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", d.pid()))
        .arg(format!("--nofile={n}:"))
        .status()
        .expect("run prlimit");
    assert!(st.success(), "prlimit failed");
}

#[test]
fn a_failed_pipe_closes_the_connection_and_backs_off() {
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no prlimit(1) on this machine");
        return;
    }
    let d = start_with_scripts(&block("echo", "tinyinetd-echo", "stderr = \"log\""), &[]);
    let addr = d.addr("echo");
    assert_eq!(roundtrip(addr, b"1"), b"1");
    assert!(wait_until(Duration::from_secs(5), || d
        .children()
        .is_empty()));
    // Room for the accepted connection and one more descriptor: the
    // accept succeeds and the pipe (two descriptors) cannot be made.
    // The limit counts descriptor numbers: free numbers below it are what
    // an open can use.
    let fds: Vec<usize> = fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .expect("fd dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let limit = (0..)
        .filter(|n| !fds.contains(n))
        .nth(1)
        .expect("free numbers")
        + 1;
    set_nofile(&d, limit);
    // Nothing written: a connection closed with unread data is reset.
    let mut s = connect(addr);
    assert_eq!(read_all(&mut s), b"", "served without its stderr pipe");
    assert!(
        d.wait_log("stderr-pipe-failed service=echo", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    let line = &d.log_lines("stderr-pipe-failed")[0];
    assert!(
        line.contains("Too many open files") && line.contains("retry_ms="),
        "{line}"
    );
    assert!(d.log_lines("fork-failed").is_empty());
    set_nofile(&d, 1024);
    let t0 = Instant::now();
    let served = loop {
        if roundtrip(addr, b"3") == b"3" {
            break true;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(served, "not served again: {}", d.log());
    assert_eq!(d.log_lines("stderr-pipe-failed").len(), 1, "{}", d.log());
}

#[test]
fn a_reload_switches_a_service_from_socket_to_log() {
    let sh = "#!/bin/sh\necho diag >&2\necho out\n";
    let conf = |extra: &str| format!("{DAEMON}\n{}", block("sw", "sw.sh", extra));
    let mut d = start_with_scripts(&block("sw", "sw.sh", ""), &[("sw.sh", sh)]);
    let mut s = connect(d.addr("sw"));
    s.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(
        read_all(&mut s),
        b"diag\nout\n",
        "socket: fd 2 is the client"
    );
    d.rewrite(&conf("stderr = \"log\""));
    reload(&mut d);
    assert!(d.log_lines("reload-failed").is_empty(), "{}", d.log());
    let mut s = connect(d.addr("sw"));
    s.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(read_all(&mut s), b"out\n", "log: fd 2 is the pipe");
    assert!(
        d.wait_log("stderr service=sw conn=2 ", Duration::from_secs(5)),
        "{}",
        d.log()
    );
}
