//! SIGHUP reloads, SIGUSR1 status, the watchdog, and socket activation.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::harness::*;

fn echo_service(name: &str) -> String {
    format!("\n[[service]]\nname = \"{name}\"\nlisten = [\"127.0.0.1:{{port:{name}}}\"]\nprogram = \"tinyinetd-echo\"\n")
}

#[test]
fn add_remove_and_change_services() {
    let base = format!("{DAEMON}{}", echo_service("echo"));
    let mut d = Daemon::start(&base);
    // Reserve the second service's port now so that its address is known.
    let with_args = |arg: &str| {
        format!("{base}\n[[service]]\nname = \"args\"\nlisten = [\"127.0.0.1:{{port:args}}\"]\nprogram = \"args.sh\"\nargs = [\"{arg}\"]\n")
    };
    d.rewrite(&with_args("first"));
    reload(&mut d);
    let mut old = connect(d.addr("args"));
    assert_eq!(read_n(&mut old, 12), b"args: first\n");

    d.rewrite(&with_args("second"));
    reload(&mut d);
    let mut new = connect(d.addr("args"));
    assert_eq!(read_n(&mut new, 13), b"args: second\n");
    // The old handler keeps going under its old settings.
    old.write_all(b"still\n").expect("write");
    assert_eq!(read_n(&mut old, 6), b"still\n");

    // Remove it: its port refuses; the running handler still finishes.
    d.rewrite(&base);
    reload(&mut d);
    assert!(
        TcpStream::connect(d.addr("args")).is_err(),
        "removed service still accepts"
    );
    old.write_all(b"bye\n").expect("write");
    assert_eq!(read_n(&mut old, 4), b"bye\n");
    old.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(read_all(&mut old), b"");
    assert!(
        d.wait_log("exit service=args conn=1 ", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    assert_eq!(roundtrip(d.addr("echo"), b"echo lives"), b"echo lives");
}

#[test]
fn a_failed_bind_does_not_stop_the_rest_of_a_reload() {
    let base = format!("{DAEMON}{}", echo_service("echo"));
    let mut d = Daemon::start(&base);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = taken.local_addr().expect("addr").port();
    let next = format!(
        "{base}{}\n[[service]]\nname = \"busy\"\nlisten = [\"127.0.0.1:{busy}\"]\nprogram = \"tinyinetd-echo\"\n",
        echo_service("fresh")
    );
    d.rewrite(&next);
    reload(&mut d);
    let failed = d.log_lines("listen-failed");
    assert_eq!(failed.len(), 1, "{}", d.log());
    assert!(
        failed[0].contains(&format!("binding 127.0.0.1:{busy}: Address already in use")),
        "{}",
        failed[0]
    );
    assert_eq!(roundtrip(d.addr("fresh"), b"new"), b"new");
    assert_eq!(roundtrip(d.addr("echo"), b"old"), b"old");
}

/// Reloads that add and remove a service listed before the busy one shift
/// the positions of the remaining sockets while connections are pending.
#[test]
fn reloads_that_shift_sockets_under_load() {
    let busy = echo_service("busy");
    let with = format!("{DAEMON}{}{}{busy}", echo_service("a"), echo_service("b"));
    let without = format!("{DAEMON}{busy}");
    let mut d = Daemon::start(&with);
    let addr = d.addr("busy");
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let (mut ok, mut failed) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) && ok + failed < 1_000_000 {
                    let r = TcpStream::connect(addr).and_then(|mut s| {
                        s.set_read_timeout(Some(Duration::from_secs(10)))?;
                        s.write_all(b"x")?;
                        s.shutdown(Shutdown::Write)?;
                        let mut out = Vec::new();
                        std::io::Read::read_to_end(&mut s, &mut out)?;
                        Ok(out)
                    });
                    match r {
                        Ok(out) if out == b"x" => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    for i in 0..200 {
        d.rewrite(if i % 2 == 0 { &without } else { &with });
        reload(&mut d);
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for c in clients {
        let (o, f) = c.join().expect("client");
        ok += o;
        failed += f;
    }
    assert!(d.try_exit().is_none(), "daemon died: {}", d.log());
    assert_eq!(
        failed,
        0,
        "{failed} of {} connections to the busy service failed",
        ok + failed
    );
    assert!(ok > 200);
}

#[test]
fn twenty_reloads_under_load_refuse_nobody() {
    let mut d = Daemon::start(&format!("{DAEMON}{}", echo_service("echo")));
    let addr = d.addr("echo");
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|i| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let (mut ok, mut failed) = (0u64, Vec::new());
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 1_000_000 {
                    n += 1;
                    let msg = format!("{i}:{n}\n");
                    let r = TcpStream::connect(addr).and_then(|mut s| {
                        s.set_read_timeout(Some(Duration::from_secs(10)))?;
                        s.write_all(msg.as_bytes())?;
                        s.shutdown(Shutdown::Write)?;
                        let mut out = Vec::new();
                        std::io::Read::read_to_end(&mut s, &mut out)?;
                        Ok(out)
                    });
                    match r {
                        Ok(out) if out == msg.as_bytes() => ok += 1,
                        Ok(out) => failed.push(format!("wrong reply {out:?}")),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    for _ in 0..20 {
        reload(&mut d);
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let (ok, failed) = c.join().expect("client");
        assert!(
            failed.is_empty(),
            "{} connections failed during reloads: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        total += ok;
    }
    eprintln!("reload under load: {total} connections, 0 failed, 20 reloads");
    assert!(total > 20, "client loop made only {total} connections");
    assert_eq!(d.log_lines("info: reload ").len(), 20);
    assert_eq!(
        d.log_lines("unlisten").len(),
        0,
        "a socket was closed during reload"
    );
}

#[test]
fn a_broken_file_keeps_the_old_config_serving() {
    let good = format!("{DAEMON}{}", echo_service("echo"));
    let mut d = Daemon::start(&good);
    let mut broken = good.clone();
    broken.push_str("\n[[service]]\nname = \"oops\"\nlisten = [\"127.0.0.1:1\"\nprogram = \"x\"\n");
    d.rewrite(&broken);
    reload(&mut d);
    let failed = d.log_lines("reload-failed");
    assert!(!failed.is_empty());
    let config = d.config.display().to_string();
    assert!(
        failed[0].contains(&format!("{config}:")) && failed[0].contains("TOML syntax error"),
        "{}",
        failed[0]
    );
    // LINE:COL right after the path.
    let after = failed[0]
        .split(&format!("{config}:"))
        .nth(1)
        .expect("path in message");
    let mut parts = after.split(':');
    assert!(
        parts.next().is_some_and(|l| l.parse::<u32>().is_ok()),
        "{}",
        failed[0]
    );
    assert!(
        parts.next().is_some_and(|c| c.parse::<u32>().is_ok()),
        "{}",
        failed[0]
    );
    assert!(
        d.notes().iter().any(|n| n.contains("STATUS=reload failed")),
        "{:?}",
        d.notes()
    );
    assert_eq!(roundtrip(d.addr("echo"), b"alive"), b"alive");

    let fixed = format!("{good}{}", echo_service("second"));
    d.rewrite(&fixed);
    reload(&mut d);
    assert_eq!(roundtrip(d.addr("second"), b"applied"), b"applied");
}

#[test]
fn reload_notifies_reloading_then_ready() {
    let mut d = Daemon::start(&format!("{DAEMON}{}", echo_service("echo")));
    let readies = d.notes().iter().filter(|n| n.contains("READY=1")).count();
    reload(&mut d);
    d.wait_note("RELOADING=1", Duration::from_secs(5))
        .expect("RELOADING");
    assert!(wait_until(Duration::from_secs(5), || d
        .notes()
        .iter()
        .filter(|n| n.contains("READY=1"))
        .count()
        > readies));
    let notes = d.notes();
    let r = notes
        .iter()
        .position(|n| n.contains("RELOADING=1"))
        .expect("reloading");
    assert!(notes[r].contains("MONOTONIC_USEC="), "{}", notes[r]);
    assert!(
        notes[r + 1..].iter().any(|n| n.contains("READY=1")),
        "{notes:?}"
    );
}

#[test]
fn watchdog_pings_every_half_interval() {
    let mut d = Daemon::prepare(&format!("{DAEMON}{}", echo_service("echo")));
    d.spawn(&|cmd| {
        cmd.env("WATCHDOG_USEC", "200000");
    });
    d.ready(Duration::from_secs(10)).expect("ready");
    thread::sleep(Duration::from_millis(1000));
    let pings = d
        .notes()
        .iter()
        .filter(|n| n.contains("WATCHDOG=1"))
        .count();
    // Every 100 ms: about 10 in a second; allow for a loaded machine.
    assert!((5..=15).contains(&pings), "{pings} watchdog pings in 1 s");
}

#[test]
fn sigusr1_logs_one_status_line_per_service() {
    let d = Daemon::start(&format!(
        "{DAEMON}{}{}",
        echo_service("echo"),
        echo_service("other")
    ));
    assert_eq!(roundtrip(d.addr("echo"), b"x"), b"x");
    assert!(d.wait_log("exit service=echo", Duration::from_secs(5)));
    d.signal(Signal::SIGUSR1);
    assert!(d.wait_log("status service=other", Duration::from_secs(5)));
    let lines = d.log_lines("info: status ");
    assert_eq!(lines.len(), 2, "{lines:?}");
    let echo = format!(
        "info: status service=echo listen=127.0.0.1:{} running=0 accepted=1 refused=0 ",
        d.port("echo")
    );
    assert!(lines[0].starts_with(&echo), "{}", lines[0]);
    assert!(lines[0].ends_with(" failed=0 paused=no"), "{}", lines[0]);
}

/// `systemd-socket-activate` binds the address and execs the daemon with
/// the socket as fd 3: the daemon adopts it instead of binding.
#[test]
fn socket_activation_through_systemd_socket_activate() {
    if which("systemd-socket-activate").is_none() {
        panic!("systemd-socket-activate is missing: tests/run installs the systemd package");
    }
    let mut d = Daemon::prepare(&format!("{DAEMON}{}", echo_service("echo")));
    let port = d.port("echo");
    d.spawn(&|cmd| {
        // It passes on only the variables it is told to (-E).
        let listen = format!("127.0.0.1:{port}");
        let args = ["-l", &listen, "--fdname=echo", "-E", "NOTIFY_SOCKET"];
        launch_through(cmd, "systemd-socket-activate", &args);
    });
    // systemd-socket-activate execs the daemon on the first connection.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut s = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("connect: {e}"),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"activated").expect("write");
    s.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(read_all(&mut s), b"activated");
    d.ready(Duration::from_secs(5)).expect("ready");
    assert!(!d.log().contains("Address already in use"), "{}", d.log());
    assert_eq!(roundtrip(d.addr("echo"), b"again"), b"again");
}

/// A launcher of our own: a listening socket on fd 3 with LISTEN_PID set to
/// the daemon's pid (python execs the daemon in place), plus a stray
/// passed socket that matches no listen address.
#[test]
fn socket_activation_by_a_launcher_adopts_and_rejects() {
    let env = "\n[[service]]\nname = \"env\"\nlisten = [\"127.0.0.1:{port:env}\"]\nprogram = \"/usr/bin/env\"\n";
    let mut d = Daemon::prepare(&format!("{DAEMON}{}{env}", echo_service("echo")));
    let port = d.port("echo");
    let launcher = r#"
import os, socket, sys
port = int(sys.argv[1])
a = socket.socket(); a.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
a.bind(("127.0.0.1", port)); a.listen(16)
b = socket.socket(); b.bind(("127.0.0.1", 0)); b.listen(1)
# Move both out of the way first: dup2(fd, fd) would keep close-on-exec.
fa, fb = os.dup(a.fileno()), os.dup(b.fileno())
a.close(); b.close()
os.dup2(fa, 10); os.dup2(fb, 11)
os.dup2(10, 3); os.dup2(11, 4)
os.set_inheritable(3, True); os.set_inheritable(4, True)
os.environ["LISTEN_FDS"] = "2"
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDNAMES"] = "echo:stray"
os.execv(sys.argv[2], sys.argv[2:])
"#;
    d.spawn(&|cmd| {
        launch_through(
            cmd,
            "/usr/bin/python3",
            &["-c", launcher, &port.to_string()],
        );
    });
    d.ready(Duration::from_secs(10)).expect("ready");
    assert_eq!(roundtrip(d.addr("echo"), b"passed"), b"passed");
    let log = d.log();
    assert!(log.contains("error: inherited-socket-unused"), "{log}");
    assert!(!log.contains("listen-failed"));
    // LISTEN_* never reach a handler.
    let env = String::from_utf8(roundtrip(d.addr("env"), b"")).expect("utf8");
    assert!(env.contains("TINYINETD_SERVICE=env"), "{env}");
    assert!(!env.contains("LISTEN_"), "{env}");
}

/// With `--accept`, systemd passes a *connected* socket: it is rejected
/// with a clear log line instead of an accept loop on it.
#[test]
fn a_passed_connected_socket_is_rejected() {
    if which("systemd-socket-activate").is_none() {
        panic!("systemd-socket-activate is missing: tests/run installs the systemd package");
    }
    let mut d = Daemon::prepare(&format!("{DAEMON}{}", echo_service("echo")));
    let outer = free_port();
    d.spawn(&|cmd| {
        let listen = format!("127.0.0.1:{outer}");
        let args = ["--accept", "-E", "NOTIFY_SOCKET", "-l", &listen];
        launch_through(cmd, "systemd-socket-activate", &args);
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let _conn = loop {
        match TcpStream::connect(("127.0.0.1", outer)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("connect: {e}"),
        }
    };
    assert!(
        d.wait_log("inherited-socket-rejected", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    assert!(d.log().contains("a connected socket, not a listening one"));
    d.ready(Duration::from_secs(5))
        .expect("the daemon keeps running");
    assert_eq!(roundtrip(d.addr("echo"), b"fine"), b"fine");
    // No accept loop: the log stays short.
    thread::sleep(Duration::from_millis(300));
    assert!(d.log().lines().count() < 20, "{}", d.log());
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(tool))
        .find(|p| p.exists())
}

/// One echo service on `listen` (a full address).
fn echo_on(listen: &str) -> String {
    format!("{DAEMON}\n[[service]]\nname = \"echo\"\nlisten = [\"{listen}\"]\nprogram = \"tinyinetd-echo\"\n")
}

/// `127.0.0.1:P` and `0.0.0.0:P` cannot both be bound: a reload from one to
/// the other must close the old socket before binding the new one, and the
/// service must be served after every such reload.
#[test]
fn a_reload_to_an_overlapping_address_keeps_the_service() {
    let port = free_port();
    let mut d = Daemon::start(&echo_on(&format!("127.0.0.1:{port}")));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(roundtrip(addr, b"start"), b"start");
    for ip in ["0.0.0.0", "127.0.0.1", "0.0.0.0", "127.0.0.1"] {
        d.rewrite(&echo_on(&format!("{ip}:{port}")));
        reload(&mut d);
        assert_eq!(roundtrip(addr, ip.as_bytes()), ip.as_bytes(), "{ip}");
    }
    assert!(d.log_lines("listen-failed").is_empty(), "{}", d.log());
    assert_eq!(d.log_lines("info: reload ").len(), 4, "{}", d.log());
}

/// A service whose new address cannot be bound keeps its old socket, and
/// the reload says so loudly: for an overlapping replacement (the old one
/// was closed to make room, and is bound again) and for a disjoint one.
#[test]
fn a_replacement_that_cannot_be_bound_keeps_the_old_socket() {
    let port = free_port();
    let mut d = Daemon::start(&echo_on(&format!("127.0.0.1:{port}")));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // A foreign listener on 127.0.0.2:P: 0.0.0.0:P cannot be bound while it
    // listens, 127.0.0.1:P can.
    let foreign = std::net::TcpListener::bind(("127.0.0.2", port)).expect("bind 127.0.0.2");
    d.rewrite(&echo_on(&format!("0.0.0.0:{port}")));
    reload(&mut d);
    let failed = d.log_lines("listen-failed");
    assert_eq!(failed.len(), 1, "{}", d.log());
    assert!(
        failed[0].contains(&format!("binding 0.0.0.0:{port}: Address already in use")),
        "{}",
        failed[0]
    );
    assert!(
        d.wait_log(
            &format!("listen-kept service=echo addr=127.0.0.1:{port}"),
            Duration::from_secs(2)
        ),
        "{}",
        d.log()
    );
    assert_eq!(roundtrip(addr, b"kept"), b"kept");

    // A disjoint new address that is taken: the old socket stays too.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = taken.local_addr().expect("addr");
    d.rewrite(&echo_on(&busy.to_string()));
    reload(&mut d);
    assert_eq!(d.log_lines("listen-failed").len(), 2, "{}", d.log());
    assert_eq!(roundtrip(addr, b"still"), b"still");

    // Once the address is free, a reload moves the service there.
    drop(foreign);
    d.rewrite(&echo_on(&format!("0.0.0.0:{port}")));
    reload(&mut d);
    assert_eq!(d.log_lines("listen-failed").len(), 2, "{}", d.log());
    assert_eq!(roundtrip(addr, b"moved"), b"moved");
    drop(taken);
}
