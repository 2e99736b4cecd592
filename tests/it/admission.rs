//! Admission control through the real daemon: allow/deny before any fork,
//! max_per_source, max_rate pacing (nothing refused), handler timeouts, and
//! a flood from a denied address.

use std::io::Write;
use std::net::{IpAddr, Shutdown};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// A daemon serving `record.sh` (which appends a line to a file for every
/// handler start) with `extra` service keys.
fn recording(extra: &str) -> (Daemon, std::path::PathBuf) {
    let conf = format!(
        "{DAEMON}\n[[service]]\nname = \"rec\"\nlisten = [\"127.0.0.1:{{port:rec}}\"]\nprogram = \"record.sh\"\nenv = {{ RECORD = \"{{tmp}}/starts\" }}\n{extra}\n"
    );
    start_recording(&conf)
}

fn starts(record: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn deny_refuses_before_any_fork_and_serves_others() {
    let (d, record) = recording("deny = [\"127.0.0.2\"]");
    let mut denied = connect_from(ip("127.0.0.2"), d.addr("rec")).expect("connect");
    assert_eq!(read_all(&mut denied), b"", "denied client got data");
    assert!(
        d.wait_log(
            "refused service=rec conn=1 peer=127.0.0.2:",
            Duration::from_secs(5)
        ),
        "{}",
        d.log()
    );
    assert!(d.log_lines("refused")[0].contains("reason=deny"));
    let mut ok = connect_from(ip("127.0.0.1"), d.addr("rec")).expect("connect");
    assert_eq!(read_all(&mut ok), b"hi 127.0.0.1\n");
    // Exactly one handler ever started: the allowed client's.
    assert_eq!(starts(&record), vec!["2 127.0.0.1".to_string()]);
    assert!(
        !d.log().contains("start service=rec conn=1 "),
        "a handler was forked for the denied client"
    );
}

#[test]
fn allow_refuses_everyone_else() {
    let (d, record) = recording("allow = [\"127.0.0.1/32\"]");
    let mut other = connect_from(ip("127.0.0.3"), d.addr("rec")).expect("connect");
    assert_eq!(read_all(&mut other), b"");
    let mut ok = connect_from(ip("127.0.0.1"), d.addr("rec")).expect("connect");
    assert_eq!(read_all(&mut ok), b"hi 127.0.0.1\n");
    assert!(d.wait_log("reason=allow", Duration::from_secs(5)));
    assert_eq!(starts(&record).len(), 1);
}

#[test]
fn max_per_source_refuses_the_second_from_one_address() {
    let conf = format!(
        "{DAEMON}\n[[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:{{port:echo}}\"]\nprogram = \"tinyinetd-echo\"\nmax_per_source = 1\n"
    );
    let d = Daemon::start(&conf);
    let addr = d.addr("echo");
    let mut first = connect_from(ip("127.0.0.1"), addr).expect("connect");
    first.write_all(b"1").expect("write");
    assert_eq!(read_n(&mut first, 1), b"1");
    let mut second = connect_from(ip("127.0.0.1"), addr).expect("connect");
    assert_eq!(
        read_all(&mut second),
        b"",
        "second connection from 127.0.0.1 was served"
    );
    assert!(d.wait_log("reason=max_per_source", Duration::from_secs(5)));
    let mut other = connect_from(ip("127.0.0.2"), addr).expect("connect");
    other.write_all(b"2").expect("write");
    assert_eq!(read_n(&mut other, 1), b"2");
    // The slot is released when the first handler is reaped.
    first.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(read_all(&mut first), b"");
    assert!(d.wait_log("exit service=echo conn=1 ", Duration::from_secs(5)));
    let mut again = connect_from(ip("127.0.0.1"), addr).expect("connect");
    again.write_all(b"3").expect("write");
    assert_eq!(read_n(&mut again, 1), b"3");
}

#[test]
fn max_rate_paces_without_refusing() {
    let conf = format!(
        "{DAEMON}\n[[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:{{port:echo}}\"]\nprogram = \"tinyinetd-echo\"\nmax_rate = 5\n"
    );
    let d = Daemon::start(&conf);
    let addr = d.addr("echo");
    let t0 = Instant::now();
    let clients: Vec<_> = (0..30)
        .map(|i| {
            thread::spawn(move || {
                let msg = format!("client {i}\n");
                roundtrip(addr, msg.as_bytes()) == msg.as_bytes()
            })
        })
        .collect();
    let served = clients
        .into_iter()
        .map(|c| c.join().unwrap_or(false))
        .filter(|ok| *ok)
        .count();
    let took = t0.elapsed();
    assert_eq!(served, 30, "every client must be served");
    // 5 at once (one second of burst), then 25 at 5/s.
    assert!(
        took >= Duration::from_millis(4500),
        "30 connections at max_rate=5 took only {took:?}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert_eq!(d.log_lines("refused").len(), 0);
}

#[test]
fn timeout_terminates_an_idle_handler() {
    let conf = format!(
        "{DAEMON}\n[[service]]\nname = \"idle\"\nlisten = [\"127.0.0.1:{{port:idle}}\"]\nprogram = \"/bin/sleep\"\nargs = [\"1000\"]\ntimeout = \"1s\"\n"
    );
    let d = Daemon::start(&conf);
    let t0 = Instant::now();
    let mut s = connect(d.addr("idle"));
    assert_eq!(read_all(&mut s), b"", "client should see EOF");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "EOF after {took:?}"
    );
    assert!(d.wait_log("exit service=idle conn=1", Duration::from_secs(5)));
    let term = &d.log_lines("terminate service=idle conn=1 ")[0];
    assert!(
        term.contains("signal=SIGTERM") && term.contains("reason=timeout"),
        "{term}"
    );
    let exit = &d.log_lines("exit service=idle conn=1 ")[0];
    assert!(
        exit.contains("signal=SIGTERM") && exit.contains("reason=timeout"),
        "{exit}"
    );
}

#[test]
fn timeout_escalates_to_sigkill() {
    // A handler that ignores SIGTERM is killed 2 s later.
    let conf = format!(
        "{DAEMON}\n[[service]]\nname = \"stubborn\"\nlisten = [\"127.0.0.1:{{port:s}}\"]\nprogram = \"/bin/sh\"\nargs = [\"-c\", \"trap '' TERM; echo ready; while :; do sleep 1; done\"]\ntimeout = \"500ms\"\n"
    );
    let d = Daemon::start(&conf);
    let t0 = Instant::now();
    let mut s = connect(d.addr("s"));
    assert_eq!(read_all(&mut s), b"ready\n");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(2400) && took < Duration::from_secs(6),
        "closed after {took:?}"
    );
    assert!(
        d.wait_log("kill service=stubborn", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    assert!(d.wait_log("signal=SIGKILL", Duration::from_secs(5)));
}

/// 5,000 connections from a denied address: refused cheaply, the log stays
/// small, and an allowed client is served throughout.
#[test]
fn a_flood_from_a_denied_address_stays_cheap() {
    let conf = "[daemon]\nlog = \"stderr\"\nhandler_dir = \"{dir}\"\n\n[[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:{port:echo}\"]\nprogram = \"tinyinetd-echo\"\ndeny = [\"127.0.0.2\"]\n";
    let d = Daemon::start(conf);
    let addr = d.addr("echo");
    let cpu0 = d.cpu_time();
    let t0 = Instant::now();
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                let mut refused = 0;
                for _ in 0..1250 {
                    if let Ok(mut s) = connect_from(ip("127.0.0.2"), addr) {
                        if read_all(&mut s).is_empty() {
                            refused += 1;
                        }
                    }
                }
                refused
            })
        })
        .collect();
    let mut served = 0;
    while flooders.iter().any(|f| !f.is_finished()) && served < 1000 {
        assert_eq!(roundtrip(addr, b"still served\n"), b"still served\n");
        served += 1;
    }
    let refused: usize = flooders
        .into_iter()
        .map(|f| f.join().expect("flooder"))
        .sum();
    let wall = t0.elapsed();
    let cpu = d.cpu_time() - cpu0;
    let log = d.log();
    assert!(d.wait_log("refused-suppressed", Duration::from_secs(3)));
    let refused_lines = log.lines().filter(|l| l.contains(" refused ")).count();
    eprintln!(
        "flood: {refused} refused in {wall:?}; daemon CPU {cpu:?} ({:.1} µs/conn); log {} bytes, {refused_lines} refusal lines; {served} allowed round trips during the flood",
        cpu.as_micros() as f64 / refused.max(1) as f64,
        log.len()
    );
    assert_eq!(
        refused, 5000,
        "every flood connection should be refused cleanly"
    );
    assert!(served > 0, "allowed client not served during the flood");
    // At most 10 refusal lines per second (plus the window in progress).
    let max_lines = 10 * (wall.as_secs() as usize + 2);
    assert!(
        refused_lines <= max_lines,
        "{refused_lines} refusal lines in {wall:?}"
    );
    assert!(
        log.len() < 64 * 1024 + served * 200,
        "log grew to {} bytes",
        log.len()
    );
    // Refusing is an accept and a close: well under a millisecond each.
    assert!(
        cpu < Duration::from_secs(5),
        "daemon used {cpu:?} for 5000 refusals"
    );
}
