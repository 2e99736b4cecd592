//! The daemon core: round trips, the child contract, reaping, exec failures,
//! shutdown, capacity, sd_notify, config errors, EMFILE.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::harness::*;

fn echo_conf() -> String {
    format!(
        "{DAEMON}\n[[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:{{port:echo}}\"]\nprogram = \"tinyinetd-echo\"\n"
    )
}

#[test]
fn echo_round_trip() {
    let d = Daemon::start(&echo_conf());
    assert_eq!(roundtrip(d.addr("echo"), b"hi\n"), b"hi\n");
    assert!(
        d.wait_log("exit service=echo conn=1 ", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    let line = &d.log_lines("info: exit service=echo conn=1 ")[0];
    assert!(line.contains(" status=0 duration_ms="), "{line}");
    assert!(line.contains(" peer=127.0.0.1:"), "{line}");
}

#[test]
fn echo_8_mib_with_half_close() {
    let d = Daemon::start(&echo_conf());
    let data = pseudo_random(8 << 20, 0x5eed);
    let mut s = connect(d.addr("echo"));
    let mut w = s.try_clone().expect("clone");
    let sent = data.clone();
    let writer = thread::spawn(move || {
        w.write_all(&sent).expect("write 8 MiB");
        w.shutdown(Shutdown::Write).expect("half-close");
    });
    let got = read_all(&mut s);
    writer.join().expect("writer");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "echoed bytes differ");
}

#[test]
fn fifty_concurrent_clients_get_their_own_bytes() {
    let d = Daemon::start(&echo_conf());
    let addr = d.addr("echo");
    let clients: Vec<_> = (0..50u64)
        .map(|i| {
            thread::spawn(move || {
                let data = pseudo_random(10_000 + i as usize * 97, i + 1);
                let mut s = connect(addr);
                // Hold the connection open until every client is connected.
                s.write_all(&data[..10]).expect("write");
                thread::sleep(Duration::from_millis(200));
                s.write_all(&data[10..]).expect("write");
                s.shutdown(Shutdown::Write).expect("shutdown");
                (read_all(&mut s), data)
            })
        })
        .collect();
    for c in clients {
        let (got, want) = c.join().expect("client");
        assert!(got == want, "a client got someone else's bytes");
    }
}

/// The exact environment, descriptors, signal state, session, cwd, umask,
/// credentials and peer of a handler (tinyinetd(8), the handler environment), each observed by a
/// program the daemon execs directly.
#[test]
fn env_dump_pins_the_child_contract() {
    let conf = format!(
        "{DAEMON}
[[service]]
name = \"env\"
listen = [\"127.0.0.1:{{port:env}}\"]
program = \"/usr/bin/env\"
env = {{ GREETING = \"hello world\" }}

[[service]]
name = \"sig\"
listen = [\"127.0.0.1:{{port:sig}}\"]
program = \"/bin/grep\"
args = [\"-E\", \"^(SigBlk|SigIgn|NoNewPrivs)\", \"/proc/self/status\"]

[[service]]
name = \"fds\"
listen = [\"127.0.0.1:{{port:fds}}\"]
program = \"/bin/ls\"
args = [\"-l\", \"/proc/self/fd/\"]

[[service]]
name = \"probe\"
listen = [\"127.0.0.1:{{port:probe}}\"]
program = \"probe.py\"
"
    );
    // Start the daemon with stray descriptors open and two signals
    // ignored, as a careless parent would: none of it may reach a handler.
    let d = Daemon::start_with(&conf, |cmd| {
        let script = "trap '' QUIT USR2; exec 7</dev/null 9>/dev/null; exec \"$0\" \"$@\"";
        launch_through(cmd, "/bin/sh", &["-c", script]);
    });

    // Environment: exactly these variables.
    let mut s = connect(d.addr("env"));
    let me = s.local_addr().expect("local");
    s.shutdown(Shutdown::Write).expect("shutdown");
    let env = String::from_utf8(read_all(&mut s)).expect("utf8");
    let mut vars: Vec<&str> = env.lines().collect();
    vars.sort();
    let port = d.port("env");
    let mut want = vec![
        "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
        "PROTO=TCP".to_string(),
        format!("TCPREMOTEIP={}", me.ip()),
        format!("TCPREMOTEPORT={}", me.port()),
        "TCPLOCALIP=127.0.0.1".to_string(),
        format!("TCPLOCALPORT={port}"),
        format!("REMOTE_ADDR={}", me.ip()),
        format!("REMOTE_PORT={}", me.port()),
        "TINYINETD_SERVICE=env".to_string(),
        "TINYINETD_CONN_ID=1".to_string(),
        "GREETING=hello world".to_string(),
    ];
    want.sort();
    assert_eq!(vars, want, "handler environment");
    assert!(!env.contains("must-not-leak") && !env.contains("NOTIFY_SOCKET"));

    // Signals: nothing blocked, nothing ignored (SIGPIPE default).
    let sig = String::from_utf8(roundtrip(d.addr("sig"), b"")).expect("utf8");
    assert!(sig.contains("SigBlk:\t0000000000000000"), "{sig}");
    assert!(sig.contains("SigIgn:\t0000000000000000"), "{sig}");

    // Descriptors: 0, 1, 2 (the socket) and ls's own directory handle only.
    let fds = String::from_utf8(roundtrip(d.addr("fds"), b"")).expect("utf8");
    let open: Vec<(String, String)> = fds
        .lines()
        .filter_map(|l| l.split_once(" -> "))
        .map(|(a, b)| {
            (
                a.rsplit(' ').next().unwrap_or("").to_string(),
                b.to_string(),
            )
        })
        .filter(|(_, target)| !target.starts_with("/proc/"))
        .collect();
    assert_eq!(open.len(), 3, "{fds}");
    for (i, (fd, target)) in open.iter().enumerate() {
        assert_eq!(fd, &i.to_string(), "{fds}");
        assert!(target.starts_with("socket:["), "{fds}");
    }

    // Session, cwd, umask, credentials, and fd 0's peer is this client.
    let mut s = connect(d.addr("probe"));
    let me = s.local_addr().expect("local");
    s.shutdown(Shutdown::Write).expect("shutdown");
    let facts = String::from_utf8(read_all(&mut s)).expect("utf8");
    let fact = |k: &str| -> String {
        facts
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k} ")))
            .unwrap_or_else(|| panic!("no {k} in {facts}"))
            .to_string()
    };
    assert_eq!(fact("cwd"), "/");
    assert_eq!(fact("umask"), "022");
    assert_eq!(fact("sid"), fact("pid"), "handler leads its own session");
    assert_eq!(fact("pgid"), fact("pid"));
    assert_eq!(fact("peer"), format!("{} {}", me.ip(), me.port()));
    assert!(fact("fd0").starts_with("socket:["));
    if is_root() {
        assert_eq!(fact("uid"), "65534 65534", "runs as nobody");
        assert_eq!(fact("gid"), "65534 65534", "runs as nogroup");
        assert_eq!(fact("groups"), "65534");
    } else {
        let uid = nix::unistd::geteuid().as_raw();
        assert_eq!(fact("uid"), format!("{uid} {uid}"));
    }
}

#[test]
fn three_hundred_sequential_connections_leave_no_zombie_and_no_fd() {
    let d = Daemon::start(&echo_conf());
    assert_eq!(roundtrip(d.addr("echo"), b"warm-up"), b"warm-up");
    assert!(wait_until(Duration::from_secs(5), || d
        .children()
        .is_empty()));
    let fds_before = d.fd_count();
    for i in 0..300 {
        let msg = format!("message {i}\n");
        assert_eq!(roundtrip(d.addr("echo"), msg.as_bytes()), msg.as_bytes());
    }
    assert!(
        wait_until(Duration::from_secs(5), || d.children().is_empty()),
        "children left: {:?}",
        d.children()
    );
    assert_eq!(d.zombies(), 0);
    assert!(d.wait_log("conn=301 ", Duration::from_secs(5)));
    assert_eq!(d.fd_count(), fds_before, "daemon fd count changed");
    assert_eq!(d.log_lines("info: exit service=echo").len(), 301);
}

/// A daemon with a service `victim` whose program existed when the
/// daemon started and has been removed since, and the `more` services.
fn start_with_vanished_program(more: &str) -> (Daemon, std::path::PathBuf) {
    let conf = format!(
        "{DAEMON}
[[service]]
name = \"victim\"
listen = [\"127.0.0.1:{{port:victim}}\"]
program = \"{{tmp}}/victim\"
{more}"
    );
    let mut d = Daemon::prepare(&conf);
    let victim = d.dir.path().join("victim");
    // A script, exec'd by its path: a binary would keep running from the
    // descriptor held since load (security::the_checked_program_runs_...).
    std::fs::write(&victim, "#!/bin/sh\nexec cat\n").expect("write");
    std::fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    d.spawn(&|_| {});
    d.ready(Duration::from_secs(10)).expect("ready");
    std::fs::remove_file(&victim).expect("remove program");
    (d, victim)
}

#[test]
fn removed_program_is_logged_and_others_keep_serving() {
    let (d, victim) = start_with_vanished_program(
        "
[[service]]
name = \"echo\"
listen = [\"127.0.0.1:{port:echo}\"]
program = \"tinyinetd-echo\"
",
    );

    let mut s = connect(d.addr("victim"));
    let _ = s.write_all(b"anyone?\n");
    let mut buf = Vec::new();
    // The connection closes without a reply (EOF, or a reset if our bytes
    // were still unread when the child exited).
    let _ = s.read_to_end(&mut buf);
    assert!(buf.is_empty(), "got {buf:?}");
    assert!(
        d.wait_log("exec-failed service=victim", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    let line = &d.log_lines("exec-failed")[0];
    assert!(
        line.contains(&format!("program={}", victim.display())),
        "{line}"
    );
    assert!(line.contains("\"No such file or directory\""), "{line}");
    assert!(d.wait_log("exit service=victim conn=1", Duration::from_secs(5)));
    assert!(d.log_lines("exit service=victim")[0].contains("status=127"));

    assert_eq!(roundtrip(d.addr("echo"), b"still here"), b"still here");
}

/// The daemon does not wait for a child's exec: it learns of a failure
/// when it reaps the child. A burst of failures, started faster than they
/// are reaped, must each be reported once, for its own connection, before
/// that connection's exit line.
#[test]
fn every_exec_failure_in_a_burst_is_reported_once_before_its_exit() {
    const N: usize = 40;
    let (d, _) = start_with_vanished_program("");

    // Queue them all while the daemon is stopped, so that it takes them in
    // one burst: the failures back the service off once they are seen, and
    // only those already started fail together.
    d.signal(Signal::SIGSTOP);
    let conns: Vec<TcpStream> = (0..N).map(|_| connect(d.addr("victim"))).collect();
    d.signal(Signal::SIGCONT);
    let mut conns = conns;
    for s in &mut conns {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert!(buf.is_empty(), "got {buf:?}");
    }
    assert!(
        wait_until(Duration::from_secs(10), || d
            .log_lines("exit service=victim")
            .len()
            == N),
        "{}",
        d.log()
    );
    let log = d.log();
    let lines: Vec<&str> = log.lines().collect();
    for conn in 1..=N {
        let tag = format!(" service=victim conn={conn} ");
        let failed: Vec<usize> = (0..lines.len())
            .filter(|&i| {
                // The first of the episode at error, the rest at debug.
                (lines[i].starts_with("error: exec-failed")
                    || lines[i].starts_with("debug: exec-failed"))
                    && lines[i].contains(&tag)
            })
            .collect();
        let exits: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].starts_with("info: exit") && lines[i].contains(&tag))
            .collect();
        assert_eq!(failed.len(), 1, "conn {conn}:\n{log}");
        assert_eq!(exits.len(), 1, "conn {conn}:\n{log}");
        assert!(failed[0] < exits[0], "conn {conn}:\n{log}");
        assert!(
            lines[failed[0]].contains("step=execve"),
            "{}",
            lines[failed[0]]
        );
        assert!(
            lines[exits[0]].contains("status=127"),
            "{}",
            lines[exits[0]]
        );
        let pid = |l: &str| {
            l.split(' ')
                .find(|kv| kv.starts_with("pid="))
                .map(str::to_owned)
        };
        assert_eq!(pid(lines[failed[0]]), pid(lines[exits[0]]), "conn {conn}");
    }
    assert_eq!(d.log_lines("exec-failed").len(), N, "{log}");
    assert_eq!(d.log_lines("error: exec-failed").len(), 1, "{log}");
    assert_eq!(d.zombies(), 0);
}

#[test]
fn a_crashing_handler_is_logged_with_its_signal() {
    let conf = format!(
        "{DAEMON}\n[[service]]\nname = \"segv\"\nlisten = [\"127.0.0.1:{{port:segv}}\"]\nprogram = \"segv.sh\"\n"
    );
    let d = Daemon::start(&conf);
    let _ = roundtrip(d.addr("segv"), b"");
    assert!(
        d.wait_log("exit service=segv", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    let line = &d.log_lines("exit service=segv")[0];
    assert!(line.contains("signal=SIGSEGV"), "{line}");
}

#[test]
fn sigterm_drains_in_flight_sessions_then_exits_zero() {
    let mut d = Daemon::start(&echo_conf());
    let addr = d.addr("echo");
    let mut s = connect(addr);
    s.write_all(b"one\n").expect("write");
    assert_eq!(read_n(&mut s, 4), b"one\n");

    d.signal(Signal::SIGTERM);
    d.wait_note("STOPPING=1", Duration::from_secs(5))
        .expect("STOPPING=1");
    // New connections are refused: the listener is closed.
    let refused = wait_until(Duration::from_secs(5), || TcpStream::connect(addr).is_err());
    assert!(refused, "listener still accepting after SIGTERM");
    // The session in flight keeps echoing.
    s.write_all(b"two\n").expect("write");
    assert_eq!(read_n(&mut s, 4), b"two\n");
    assert!(d.try_exit().is_none(), "exited with a session in flight");
    s.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(read_all(&mut s), b"");
    let status = d
        .wait_exit(Duration::from_secs(5))
        .expect("daemon did not exit");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn a_handler_that_never_exits_is_terminated_after_shutdown_timeout() {
    let conf = "[daemon]\nlog = \"stderr\"\nshutdown_timeout = \"1s\"\n\n[[service]]\nname = \"sleep\"\nlisten = [\"127.0.0.1:{port:sleep}\"]\nprogram = \"/bin/sleep\"\nargs = [\"1000\"]\n";
    let mut d = Daemon::start(conf);
    let mut s = connect(d.addr("sleep"));
    assert!(wait_until(Duration::from_secs(5), || d.children().len() == 1));
    let handler = d.children()[0].0;
    let t0 = Instant::now();
    d.signal(Signal::SIGTERM);
    let status = d
        .wait_exit(Duration::from_secs(8))
        .expect("daemon did not exit");
    let took = t0.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        took >= Duration::from_millis(900),
        "did not wait for shutdown_timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert!(
        !std::path::Path::new(&format!("/proc/{handler}")).exists(),
        "handler still alive"
    );
    assert_eq!(read_all(&mut s), b"");
    assert!(d.log().contains("signal=SIGTERM"), "{}", d.log());
}

#[test]
fn second_sigterm_skips_the_wait() {
    let conf = "[daemon]\nlog = \"stderr\"\nshutdown_timeout = \"60s\"\n\n[[service]]\nname = \"sleep\"\nlisten = [\"127.0.0.1:{port:sleep}\"]\nprogram = \"/bin/sleep\"\nargs = [\"1000\"]\n";
    let mut d = Daemon::start(conf);
    let _s = connect(d.addr("sleep"));
    assert!(wait_until(Duration::from_secs(5), || d.children().len() == 1));
    d.signal(Signal::SIGTERM);
    d.wait_note("STOPPING=1", Duration::from_secs(5))
        .expect("STOPPING");
    let t0 = Instant::now();
    d.signal(Signal::SIGTERM);
    let status = d
        .wait_exit(Duration::from_secs(5))
        .expect("second SIGTERM did not stop it");
    assert!(status.success());
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[test]
fn max_instances_makes_the_next_client_wait_not_fail() {
    let conf = format!("{}max_instances = 2\n", echo_conf());
    let d = Daemon::start(&conf);
    let addr = d.addr("echo");
    let mut a = connect(addr);
    let mut b = connect(addr);
    for s in [&mut a, &mut b] {
        s.write_all(b"x").expect("write");
        assert_eq!(read_n(s, 1), b"x");
    }
    // The third connects (the kernel backlog holds it) but is not served.
    let mut c = connect(addr);
    c.write_all(b"third").expect("write");
    assert!(
        silent_for(&mut c, Duration::from_millis(700)),
        "third client was served beyond max_instances"
    );
    assert!(
        d.wait_log(
            "paused service=echo reason=max_instances",
            Duration::from_secs(2)
        ),
        "{}",
        d.log()
    );
    // One of the first two leaves: the third is served.
    a.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(read_all(&mut a), b"");
    assert_eq!(read_n(&mut c, 5), b"third");
    assert!(d.wait_log("resumed service=echo", Duration::from_secs(2)));
    assert_eq!(d.log_lines("refused").len(), 0);
}

#[test]
fn ready_and_stopping_reach_the_notify_socket() {
    let mut d = Daemon::start(&echo_conf());
    assert!(d
        .notes()
        .iter()
        .any(|n| n.contains("READY=1") && n.contains("STATUS=")));
    d.signal(Signal::SIGTERM);
    d.wait_note("STOPPING=1", Duration::from_secs(5))
        .expect("STOPPING=1");
    assert!(d.wait_exit(Duration::from_secs(5)).expect("exit").success());
}

#[test]
fn listen_forms_ipv6_and_bare_port() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED: no IPv6 loopback on this machine");
        return;
    }
    let conf = format!(
        "{DAEMON}\n[[service]]\nname = \"echo\"\nlisten = [\"[::1]:{{port:v6}}\", \"{{port:any}}\"]\nprogram = \"tinyinetd-echo\"\n"
    );
    let d = Daemon::start(&conf);
    let v6: SocketAddr = format!("[::1]:{}", d.port("v6")).parse().unwrap();
    assert_eq!(roundtrip(v6, b"six"), b"six");
    let any4 = d.addr("any");
    let any6: SocketAddr = format!("[::1]:{}", d.port("any")).parse().unwrap();
    assert_eq!(roundtrip(any4, b"four"), b"four");
    assert_eq!(roundtrip(any6, b"six again"), b"six again");
    // The IPv6-only socket does not take IPv4 clients.
    assert!(TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], d.port("v6")))).is_err());
    assert!(d.wait_log("peer=[::1]:", Duration::from_secs(5)));
}

fn write_conf(dir: &tempfile::TempDir, text: &str) -> String {
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, text).expect("write");
    p.to_string_lossy().into_owned()
}

#[test]
fn config_errors_have_file_line_col_and_exit_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let echo = bin_dir().join("tinyinetd-echo");
    let good = format!(
        "[[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:1\"]\nprogram = \"{}\"\n",
        echo.display()
    );
    let cases = [
        (format!("{good}max_instance = 3\n"), ":5:1: service \"echo\": unknown key \"max_instance\" (did you mean \"max_instances\"?)"),
        ("[[service]]\nname = \"echo\nlisten = []\n".to_string(), ":2:"),
        (format!("{good}\n[[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:2\"]\nprogram = \"{}\"\n", echo.display()), ":7:8: service \"echo\": duplicate service name \"echo\""),
        (good.replace(&echo.display().to_string(), "/nonexistent/handler"), ":4:11: service \"echo\": program \"/nonexistent/handler\": No such file or directory"),
    ];
    for (text, want) in cases {
        let path = write_conf(&dir, &text);
        for args in [vec!["--check", "-c", &path], vec!["-c", &path]] {
            let out = run_tinyinetd(&args, Duration::from_secs(10));
            // The daemon says it in start-failed log lines: their messages.
            let err = start_failure_messages(&String::from_utf8_lossy(&out.stderr));
            assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
            assert!(err.starts_with(&path), "{args:?}: {err}");
            assert!(err.contains(want), "{args:?}: want {want:?} in:\n{err}");
        }
    }
}

#[test]
fn check_prints_each_service_and_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "[daemon]\nhandler_dir = \"{}\"\n[[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:9\"]\nprogram = \"tinyinetd-echo\"\nmax_instances = 3\n\n[[service]]\nname = \"off\"\nlisten = [\"127.0.0.1:10\"]\nprogram = \"tinyinetd-echo\"\nenabled = false\n",
        bin_dir().display()
    );
    let path = write_conf(&dir, &text);
    let out = run_tinyinetd(&["--check", "--config", &path], Duration::from_secs(10));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("echo listen=127.0.0.1:9 program=")
            && lines[0].contains("max_instances=3")
            && lines[0].contains(" enabled ")
            && lines[0].ends_with(" no_new_privs=true rlimit_core=0 stderr=socket"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("off ") && lines[1].contains(" disabled "),
        "{stdout}"
    );
}

#[test]
fn shipped_config_checks() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/tinyinetd.toml");
    let out = run_tinyinetd(&["--check", "-c", shipped], Duration::from_secs(10));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("echo listen=127.0.0.1:9877 "), "{stdout}");
    assert!(stdout.contains("sum listen=127.0.0.1:9878 "), "{stdout}");
}

#[test]
fn usage_errors_exit_2_and_missing_file_names_it() {
    let out = run_tinyinetd(&["--bogus"], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: tinyinetd"));
    let out = run_tinyinetd(&["-c", "/nonexistent/t.toml"], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/t.toml") && err.contains("No such file or directory"),
        "{err}"
    );
    if !std::path::Path::new("/etc/tinyinetd.toml").exists() {
        let out = run_tinyinetd(&["--check"], Duration::from_secs(10));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            err.contains("/etc/tinyinetd.toml") && err.contains("--config"),
            "{err}"
        );
    }
}

#[test]
fn bind_failure_names_the_address_and_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "[daemon]\nlog = \"stderr\"\n[[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:{port}\"]\nprogram = \"{}\"\n",
        bin_dir().join("tinyinetd-echo").display()
    );
    let path = write_conf(&dir, &text);
    let out = run_tinyinetd(&["-c", &path], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    let err = start_failure_messages(&String::from_utf8_lossy(&out.stderr));
    assert!(
        err.contains(&format!("binding 127.0.0.1:{port}: Address already in use")),
        "{err}"
    );
}

/// With RLIMIT_NOFILE lowered under the daemon so that accept fails with
/// EMFILE, it neither spins nor exits, and serves again once it can.
#[test]
fn emfile_backs_off_without_spinning_and_recovers() {
    let d = Daemon::start(&echo_conf());
    let pid = d.pid().as_raw().to_string();
    // READY=1 arrives while the daemon may still hold the socket it sent it
    // on; the "ready" log line is written after that socket is closed, and
    // from then on the daemon opens nothing until a connection comes.
    assert!(d.wait_log("ready", Duration::from_secs(5)), "{}", d.log());
    // accept(2) takes the lowest free descriptor number: a soft limit equal
    // to that number makes it fail with EMFILE.
    let used: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect();
    let open = (0..)
        .find(|n| !used.contains(n))
        .expect("a free descriptor number");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let soft: String = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .expect("soft limit")
        .to_string();
    // Soft limit only: lowering the hard one could not be undone without
    // CAP_SYS_RESOURCE.
    let lower = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={open}:")])
        .status()
        .expect("run prlimit (util-linux)");
    assert!(lower.success());
    let addr = d.addr("echo");
    let mut s = connect(addr); // completes in the kernel backlog
    s.write_all(b"patience").expect("write");
    assert!(
        d.wait_log("accept-paused", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    let cpu0 = d.cpu_time();
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs(2));
    let cpu = d.cpu_time() - cpu0;
    let wall = t0.elapsed();
    assert!(
        cpu * 10 < wall,
        "daemon used {cpu:?} CPU in {wall:?} while out of descriptors"
    );
    assert!(d.try_exit_alive());
    let raise = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={soft}:")])
        .status()
        .expect("prlimit");
    assert!(raise.success());
    s.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(read_all(&mut s), b"patience");
    assert!(d.wait_log("accept-resumed", Duration::from_secs(5)));
    assert_eq!(
        d.log_lines("accept-paused").len(),
        1,
        "episode logged more than once"
    );
    // Recovered and idle: the backoff's deadline is behind it and must not
    // keep the poll timeout at zero (it did: a full core, forever).
    let cpu0 = d.cpu_time();
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs(3));
    let cpu = d.cpu_time() - cpu0;
    let wall = t0.elapsed();
    assert!(
        cpu * 20 < wall,
        "daemon used {cpu:?} CPU in {wall:?} idle after recovering"
    );
    eprintln!("idle after EMFILE recovery: {cpu:?} CPU in {wall:?}");
    assert_eq!(roundtrip(addr, b"after"), b"after");
}

/// A daemon started with SIGCHLD ignored (a careless launcher) would have
/// its children reaped by the kernel: no exit would ever be seen, and
/// `getent` would fail with ECHILD. It resets the disposition at start.
#[test]
fn an_inherited_sigchld_ignore_is_reset() {
    let mut d = Daemon::prepare(&echo_conf());
    d.spawn(&|cmd| {
        launch_through(
            cmd,
            "python3",
            &[
                "-c",
                "import signal,os,sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); os.execv(sys.argv[1], sys.argv[1:])",
            ],
        )
    });
    if let Err(e) = d.ready(Duration::from_secs(10)) {
        panic!("not ready: {e}\n{}", d.log());
    }
    // SigIgn in /proc/PID/status: bit 16 is SIGCHLD (17).
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).expect("status");
    let ign = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).expect("hex"))
        .expect("SigIgn");
    assert_eq!(ign & (1 << 16), 0, "SIGCHLD still ignored: {ign:x}");
    for i in 0..3u8 {
        assert_eq!(roundtrip(d.addr("echo"), &[b'a' + i]), [b'a' + i]);
    }
    assert!(
        wait_until(Duration::from_secs(5), || d
            .log_lines("exit service=echo")
            .len()
            == 3),
        "exits not seen: {}",
        d.log()
    );
    assert_eq!(d.zombies(), 0);
    d.signal(Signal::SIGTERM);
    let status = d
        .wait_exit(Duration::from_secs(5))
        .expect("daemon did not exit on SIGTERM");
    assert!(status.success(), "exit status {status}");
}

trait Alive {
    fn try_exit_alive(&self) -> bool;
}

impl Alive for Daemon {
    fn try_exit_alive(&self) -> bool {
        std::path::Path::new(&format!("/proc/{}", self.pid())).exists()
    }
}

/// A `handler_dir` that does not exist is not an error (bare names are
/// then found beside the daemon, as in a source tree), but it is said: a
/// typo there would otherwise pass unseen.
#[test]
fn a_missing_handler_dir_is_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "[daemon]\nhandler_dir = \"/nonexistent-handlers\"\nlog = \"stderr\"\n[[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:{}\"]\nprogram = \"{}\"\n",
        free_port(),
        bin_dir().join("tinyinetd-echo").display()
    );
    let path = write_conf(&dir, &text);
    let out = run_tinyinetd(&["--check", "-c", &path], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("{path}:2:15: daemon: warning: handler_dir \"/nonexistent-handlers\" does not exist; bare program names are looked up beside the tinyinetd executable only\n")
    );
    let mut d = Daemon::prepare(
        &text.replace("log = \"stderr\"", "log = \"stderr\"\nlog_level = \"info\""),
    );
    d.spawn(&|_| {});
    d.ready(Duration::from_secs(10)).expect("ready");
    assert!(
        d.log().contains("warn: config-warning warning=\"")
            && d.log()
                .contains("handler_dir \\\"/nonexistent-handlers\\\" does not exist"),
        "{}",
        d.log()
    );
}
