//! Issue 14, item 6: a log sink that stops reading (a stalled syslog, a
//! stderr pipe nobody drains) never blocks the daemon's loop.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::harness::*;

fn echo_conf(log: &str) -> String {
    format!(
        "{}\n[[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:{{port:echo}}\"]\nprogram = \"tinyinetd-echo\"\n",
        DAEMON.replace("log = \"stderr\"", log)
    )
}

/// One echo round trip that must complete within `within`.
fn echo_within(d: &Daemon, msg: &[u8], within: Duration) {
    let start = Instant::now();
    let mut s = connect(d.addr("echo"));
    s.set_read_timeout(Some(within)).expect("timeout");
    std::io::Write::write_all(&mut s, msg).expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut out = Vec::new();
    let r = s.read_to_end(&mut out);
    assert!(
        r.is_ok() && out == msg && start.elapsed() < within,
        "echo not served within {within:?} ({r:?}, {} bytes, {:?})",
        out.len(),
        start.elapsed()
    );
}

fn can_unshare() -> bool {
    is_root()
        && std::process::Command::new("unshare")
            .args(["-m", "true"])
            .status()
            .is_ok_and(|s| s.success())
}

#[test]
fn a_syslog_that_stops_reading_never_stops_serving() {
    if !can_unshare() {
        eprintln!("SKIPPED: needs root and mount namespaces (unshare -m) to give the daemon a private /dev/log");
        return;
    }
    let mut d = Daemon::prepare(&echo_conf("log = \"syslog\""));
    let sock_path = d.dir.path().join("syslog.sock");
    let scratch = d.dir.path().to_path_buf();
    // Bound and never read: its small receive queue fills after a few lines.
    let syslog = UnixDatagram::bind(&sock_path).expect("bind fake syslog");
    nix::sys::socket::setsockopt(&syslog, nix::sys::socket::sockopt::RcvBuf, &4096)
        .expect("SO_RCVBUF");
    d.spawn(&|cmd| with_private_dev_log(cmd, &scratch, &sock_path));
    d.ready(Duration::from_secs(10)).expect("ready");
    // Each connection logs two lines at debug; 200 are far more than the
    // queue holds (a datagram queue also counts its datagrams).
    for i in 0..200 {
        echo_within(&d, format!("line {i}").as_bytes(), Duration::from_secs(2));
    }
    d.signal(Signal::SIGUSR1);
    echo_within(&d, b"after status", Duration::from_secs(2));

    // Drain the queue: the next line is preceded by the count of the dropped ones.
    syslog.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 4096];
    while syslog.recv(&mut buf).is_ok() {}
    echo_within(&d, b"drained", Duration::from_secs(2));
    let mut got = Vec::new();
    syslog.set_nonblocking(false).expect("blocking");
    syslog
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !got.iter().any(|l: &String| l.contains("log-dropped")) {
        if let Ok(n) = syslog.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let dropped = got
        .iter()
        .find(|l| l.contains("warn: log-dropped count="))
        .unwrap_or_else(|| panic!("no log-dropped line after the drain: {got:?}"));
    assert!(
        dropped.starts_with("<28>"),
        "warning, facility daemon: {dropped}"
    );
    eprintln!("syslog stalled for 200 connections: {dropped}");

    let start = Instant::now();
    d.signal(Signal::SIGTERM);
    let status = d
        .wait_exit(Duration::from_secs(5))
        .expect("exit on SIGTERM");
    assert!(status.success(), "{status}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_stderr_pipe_nobody_reads_never_stops_serving() {
    let mut d = Daemon::prepare(&echo_conf("log = \"stderr\""));
    let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().expect("pipe");
    let mut cmd = d.command();
    cmd.stderr(Stdio::from(w));
    d.child = Some(cmd.spawn().expect("spawn tinyinetd"));
    drop(cmd);
    d.ready(Duration::from_secs(10)).expect("ready");
    // start + exit at debug are about 180 bytes a connection: 500 fill a
    // 64 KiB pipe with room to spare.
    for i in 0..500 {
        echo_within(&d, format!("line {i}").as_bytes(), Duration::from_secs(2));
    }
    d.signal(Signal::SIGUSR1);
    echo_within(&d, b"after status", Duration::from_secs(2));

    // Drain, log once more, stop, and read the rest until EOF.
    nix::fcntl::fcntl(
        &r,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .expect("O_NONBLOCK");
    let mut pipe = std::fs::File::from(r);
    let mut text = Vec::new();
    let mut buf = [0u8; 65536];
    while let Ok(n) = pipe.read(&mut buf) {
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    let before = text.len();
    echo_within(&d, b"drained", Duration::from_secs(2));
    let start = Instant::now();
    d.signal(Signal::SIGTERM);
    let status = d
        .wait_exit(Duration::from_secs(5))
        .expect("exit on SIGTERM");
    assert!(status.success(), "{status}");
    assert!(start.elapsed() < Duration::from_secs(5));
    while let Ok(n) = pipe.read(&mut buf) {
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&text).into_owned();
    assert!(before >= 60_000, "the pipe was filled: {before} bytes");
    // Every line is either there or counted in a `log-dropped` line that
    // followed it. The count goes out with the first line the pipe has
    // room for, which may be before the drain: a pipe that is "full" still
    // takes a short line that fits in its last page.
    let dropped: u64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("warn: log-dropped count="))
        .map(|n| n.parse::<u64>().expect("count"))
        .sum();
    let conn_lines = text
        .lines()
        .filter(|l| l.contains(" service=echo conn="))
        .count() as u64;
    eprintln!(
        "stderr pipe filled ({before} bytes) by 500 connections: {dropped} lines dropped and counted"
    );
    assert!(dropped > 0, "nothing was dropped:\n{text}");
    // start and exit for each of the 502 connections, and at most a few
    // other lines (listen, ready, status, stopping...) among the dropped.
    assert!(
        (2 * 502..=2 * 502 + 10).contains(&(conn_lines + dropped)),
        "{conn_lines} connection lines + {dropped} dropped:\n{text}"
    );
    // Every line is whole: no half line was left without its newline.
    for line in text.lines() {
        assert!(
            line.starts_with("debug: ")
                || line.starts_with("info: ")
                || line.starts_with("warn: ")
                || line.starts_with("error: "),
            "broken line {line:?}"
        );
    }
}

/// `log = "auto"` with stderr a file (as here) or a pipe (a container's, a
/// CI runner's, a supervision tree's log pipe) logs to stderr: someone
/// collects it. No `log-fallback` warning, whether `/dev/log` exists or not.
#[test]
fn auto_logs_to_a_collected_stderr_without_a_warning() {
    let conf = "[daemon]\nlog = \"auto\"\nlog_level = \"info\"\nhandler_dir = \"{dir}\"\n\n[[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:{port:echo}\"]\nprogram = \"tinyinetd-echo\"\n";
    let d = Daemon::start_with(conf, |cmd| {
        cmd.env_remove("JOURNAL_STREAM");
    });
    assert_eq!(roundtrip(d.addr("echo"), b"hi\n"), b"hi\n");
    assert!(
        d.wait_log("info: exit service=echo", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    assert!(d.log().contains("info: ready "), "{}", d.log());
    assert!(!d.log().contains("log-fallback"), "{}", d.log());
}
