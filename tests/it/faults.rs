//! Faults under load: handlers that die or leave early, clients that reset
//! or never speak, fork failure, signals to the daemon while it is busy.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::*;

fn echo_conf(extra: &str) -> String {
    format!("{DAEMON}\n[[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:{{port:echo}}\"]\nprogram = \"tinyinetd-echo\"\n{extra}\n")
}

/// Closes `s` with a reset (SO_LINGER 0) instead of a FIN.
fn reset(s: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&s.as_fd(), nix::sys::socket::sockopt::Linger, &linger)
        .expect("SO_LINGER");
    drop(s);
}

#[test]
fn handlers_killed_mid_session() {
    let d = Daemon::start(&echo_conf(""));
    let addr = d.addr("echo");
    let mut clients: Vec<TcpStream> = (0..20)
        .map(|i| {
            let mut s = connect(addr);
            s.write_all(&[i as u8]).expect("write");
            assert_eq!(read_n(&mut s, 1), [i as u8]);
            s
        })
        .collect();
    let handlers: Vec<i32> = d.children().iter().map(|(p, _)| *p).collect();
    assert_eq!(handlers.len(), 20);
    // Kill every other handler (by pid: they are the daemon's children).
    let victims: Vec<i32> = handlers.iter().copied().step_by(2).collect();
    for &p in &victims {
        kill(Pid::from_raw(p), Signal::SIGKILL).expect("kill handler");
    }
    assert!(
        wait_until(Duration::from_secs(5), || d
            .log_lines("signal=SIGKILL")
            .len()
            == victims.len()),
        "{}",
        d.log()
    );
    let mut cut = 0;
    for (i, s) in clients.iter_mut().enumerate() {
        let _ = s.write_all(b"?");
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(1) => assert_eq!(b[0], b'?', "client {i}"),
            _ => cut += 1,
        }
    }
    assert_eq!(cut, victims.len(), "exactly the killed sessions end");
    drop(clients);
    assert!(wait_until(Duration::from_secs(5), || d
        .children()
        .is_empty()));
    assert_eq!(d.zombies(), 0);
    assert_eq!(roundtrip(addr, b"after"), b"after");
}

#[test]
fn a_handler_that_exits_without_reading() {
    let conf = format!("{DAEMON}\n[[service]]\nname = \"rude\"\nlisten = [\"127.0.0.1:{{port:rude}}\"]\nprogram = \"/bin/true\"\n");
    let d = Daemon::start(&conf);
    for _ in 0..50 {
        let mut s = connect(d.addr("rude"));
        // The handler may be gone before or while we write: EPIPE or a
        // reset are the expected outcomes, never a hang.
        let _ = s.write_all(&[b'x'; 65536]);
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert!(buf.is_empty());
    }
    assert!(
        wait_until(Duration::from_secs(5), || d
            .log_lines("exit service=rude")
            .len()
            == 50),
        "{}",
        d.log()
    );
    assert!(d
        .log_lines("exit service=rude")
        .iter()
        .all(|l| l.contains("status=0")));
    assert_eq!(d.zombies(), 0);
}

#[test]
fn clients_that_reset_before_and_after_accept() {
    let d = Daemon::start(&echo_conf("max_instances = 1"));
    let addr = d.addr("echo");
    // Hold the only slot so that the next connections wait in the backlog.
    let mut holder = connect(addr);
    holder.write_all(b"h").expect("write");
    assert_eq!(read_n(&mut holder, 1), b"h");
    for _ in 0..20 {
        let s = connect(addr);
        reset(s); // reset while still in the kernel's accept queue
    }
    holder.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(read_all(&mut holder), b"");
    // Now resets right after accept: wait for the handler, then reset.
    for i in 0..20 {
        let s = connect(addr);
        let conn = 22 + i;
        assert!(
            d.wait_log(
                &format!("start service=echo conn={conn} "),
                Duration::from_secs(5)
            ),
            "{}",
            d.log()
        );
        reset(s);
    }
    assert_eq!(roundtrip(addr, b"still fine"), b"still fine");
    assert!(wait_until(Duration::from_secs(5), || d
        .children()
        .is_empty()));
    assert_eq!(d.zombies(), 0);
    assert_eq!(
        d.log_lines("info: exit service=echo").len(),
        42,
        "{}",
        d.log()
    );
}

#[test]
fn silent_clients_hold_slots_only_until_timeout() {
    // Without a timeout, silent clients simply hold their handlers while
    // everyone else is served.
    let d = Daemon::start(&echo_conf(""));
    let silent: Vec<TcpStream> = (0..20).map(|_| connect(d.addr("echo"))).collect();
    assert!(wait_until(Duration::from_secs(5), || d.children().len() == 20));
    assert_eq!(roundtrip(d.addr("echo"), b"served"), b"served");
    drop(silent);
    assert!(wait_until(Duration::from_secs(5), || d
        .children()
        .is_empty()));

    // With a timeout, they are cut at the limit.
    let d = Daemon::start(&echo_conf("timeout = \"500ms\""));
    let mut silent: Vec<TcpStream> = (0..20).map(|_| connect(d.addr("echo"))).collect();
    let t0 = Instant::now();
    for s in &mut silent {
        assert_eq!(read_all(s), b"");
    }
    assert!(t0.elapsed() < Duration::from_secs(4));
    assert!(wait_until(Duration::from_secs(5), || d
        .log_lines("reason=timeout")
        .len()
        >= 20));
}

/// fork() fails with EAGAIN when the daemon's user is at RLIMIT_NPROC: the
/// connection is closed and logged, the service backs off, and it serves
/// again once a process slot frees.
#[test]
fn fork_failure_is_logged_backed_off_and_recovered() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to start the daemon as an unused uid with RLIMIT_NPROC=2");
        return;
    }
    // A uid nothing else on the machine runs as, so the count is ours alone.
    let uid = "64011";
    let mut d = Daemon::prepare(&echo_conf(""));
    d.spawn(&|cmd| {
        let (reuid, regid) = (format!("--reuid={uid}"), format!("--regid={uid}"));
        let args = [
            "--nproc=2:2",
            "--",
            "setpriv",
            &reuid,
            &regid,
            "--clear-groups",
            "--",
        ];
        launch_through(cmd, "prlimit", &args);
    });
    d.ready(Duration::from_secs(10)).expect("ready");
    let addr = d.addr("echo");
    let mut first = connect(addr);
    first.write_all(b"1").expect("write");
    assert_eq!(read_n(&mut first, 1), b"1");
    // Daemon + one handler = 2 processes: the next fork fails.
    let mut second = connect(addr);
    let _ = second.write_all(b"2");
    let mut buf = Vec::new();
    let _ = second.read_to_end(&mut buf);
    assert!(buf.is_empty(), "second client served beyond RLIMIT_NPROC");
    assert!(
        d.wait_log("fork-failed service=echo", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    assert!(
        d.log_lines("fork-failed")[0].contains("error=\"fork: Resource temporarily unavailable\"")
    );
    assert!(
        d.wait_log("paused service=echo reason=backoff", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    // Free the slot: served again after the backoff.
    first.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(read_all(&mut first), b"");
    assert!(wait_until(Duration::from_secs(5), || d
        .children()
        .is_empty()));
    let t0 = Instant::now();
    let served = loop {
        let got = roundtrip(addr, b"3");
        if got == b"3" {
            break true;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            break false;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert!(served, "not recovered: {}", d.log());
    assert!(
        d.log_lines("fork-failed").len() <= 3,
        "fork retried in a loop: {}",
        d.log()
    );
}

/// Client loops that prove every session they started completed.
struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<thread::JoinHandle<(u64, u64, Vec<String>)>>,
}

impl Load {
    /// `c` clients, each: write a line, read its echo (the session is now in
    /// flight), write a second line, read it, half-close, read EOF. A
    /// failure before the first echo is a clean refusal; after it, a cut.
    fn start(addr: SocketAddr, c: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..c)
            .map(|w| {
                let stop = Arc::clone(&stop);
                thread::spawn(move || {
                    let (mut done, mut refused, mut cut) = (0u64, 0u64, Vec::new());
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) && n < 200_000 {
                        n += 1;
                        let a = format!("{w}:{n}:a\n");
                        let b = format!("{w}:{n}:b\n");
                        let Ok(mut s) = TcpStream::connect(addr) else {
                            refused += 1;
                            thread::sleep(Duration::from_millis(5));
                            continue;
                        };
                        let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                        let mut first = vec![0u8; a.len()];
                        if s.write_all(a.as_bytes())
                            .and_then(|_| s.read_exact(&mut first))
                            .is_err()
                        {
                            refused += 1;
                            continue;
                        }
                        let mut second = vec![0u8; b.len()];
                        let mut rest = Vec::new();
                        let r = s
                            .write_all(b.as_bytes())
                            .and_then(|_| s.read_exact(&mut second))
                            .and_then(|_| s.shutdown(Shutdown::Write))
                            .and_then(|_| s.read_to_end(&mut rest));
                        match r {
                            Ok(_)
                                if first == a.as_bytes()
                                    && second == b.as_bytes()
                                    && rest.is_empty() =>
                            {
                                done += 1
                            }
                            Ok(_) => cut.push(format!("wrong bytes in session {w}:{n}")),
                            Err(e) => cut.push(format!("session {w}:{n} cut: {e}")),
                        }
                    }
                    (done, refused, cut)
                })
            })
            .collect();
        Load { stop, workers }
    }

    fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = (0, 0, Vec::new());
        for w in self.workers {
            let (d, r, c) = w.join().expect("worker");
            total.0 += d;
            total.1 += r;
            total.2.extend(c);
        }
        total
    }
}

#[test]
fn fifty_sighups_under_load_refuse_nobody() {
    let d = Daemon::start(&echo_conf(""));
    let load = Load::start(d.addr("echo"), 4);
    for i in 0..50 {
        let before = d.log_lines("info: reload ").len();
        d.signal(Signal::SIGHUP);
        assert!(
            wait_until(Duration::from_secs(5), || d
                .log_lines("info: reload ")
                .len()
                > before),
            "reload {i} did not finish"
        );
    }
    let (done, refused, cut) = load.finish();
    eprintln!(
        "50 SIGHUPs under load: {done} sessions completed, {refused} refused, {} cut",
        cut.len()
    );
    assert!(cut.is_empty(), "{cut:?}");
    assert_eq!(refused, 0);
    assert!(done > 50);
}

#[test]
fn sigterm_under_load_cuts_no_session_in_flight() {
    let mut d = Daemon::start(
        &echo_conf("").replace("[daemon]\n", "[daemon]\nshutdown_timeout = \"20s\"\n"),
    );
    let load = Load::start(d.addr("echo"), 8);
    thread::sleep(Duration::from_millis(1000));
    d.signal(Signal::SIGTERM);
    let status = d
        .wait_exit(Duration::from_secs(25))
        .expect("daemon did not exit");
    let (done, refused, cut) = load.finish();
    eprintln!("SIGTERM under load: {done} sessions completed, {refused} refused after the listener closed, {} cut", cut.len());
    assert!(status.success(), "{status}");
    assert!(cut.is_empty(), "sessions in flight were cut: {cut:?}");
    assert!(done > 0);
}

#[test]
fn sigstop_and_sigcont_lose_nothing() {
    let d = Daemon::start(&echo_conf(""));
    let load = Load::start(d.addr("echo"), 8);
    thread::sleep(Duration::from_millis(500));
    d.signal(Signal::SIGSTOP);
    thread::sleep(Duration::from_millis(1500));
    d.signal(Signal::SIGCONT);
    thread::sleep(Duration::from_millis(1000));
    let (done, refused, cut) = load.finish();
    eprintln!(
        "SIGSTOP 1.5 s under load: {done} sessions completed, {refused} refused, {} cut",
        cut.len()
    );
    assert!(cut.is_empty(), "{cut:?}");
    assert_eq!(
        refused, 0,
        "connections were refused while the daemon was stopped"
    );
    assert!(wait_until(Duration::from_secs(5), || d
        .children()
        .is_empty()));
    assert_eq!(d.zombies(), 0);
}

fn recv_lines(
    sock: &std::os::unix::net::UnixDatagram,
    within: Duration,
    needle: &str,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            if got.iter().any(|l| l.contains(needle)) {
                break;
            }
        }
    }
    got
}

#[test]
fn syslog_missing_or_vanishing_never_stops_serving() {
    if !is_root()
        || !std::process::Command::new("unshare")
            .args(["-m", "true"])
            .status()
            .is_ok_and(|s| s.success())
    {
        eprintln!("SKIPPED: needs root and mount namespaces (unshare -m) to give the daemon a private /dev/log");
        return;
    }
    let conf = echo_conf("").replace("log = \"stderr\"", "log = \"syslog\"");

    // Missing from the start: a warning on stderr, then stderr logging.
    let mut d = Daemon::prepare(&conf);
    let sock_path = d.dir.path().join("syslog.sock");
    let scratch = d.dir.path().to_path_buf();
    d.spawn(&|cmd| with_private_dev_log(cmd, &scratch, &sock_path));
    d.ready(Duration::from_secs(10))
        .expect("ready without syslog");
    assert!(
        d.log().contains("warn: log-fallback") && d.log().contains("syslog is not reachable"),
        "{}",
        d.log()
    );
    assert_eq!(roundtrip(d.addr("echo"), b"no syslog"), b"no syslog");
    assert!(d.wait_log("exit service=echo conn=1", Duration::from_secs(5)));
    drop(d);

    // Present, then vanishing, then back.
    let mut d = Daemon::prepare(&conf);
    let sock_path = d.dir.path().join("syslog.sock");
    let scratch = d.dir.path().to_path_buf();
    let syslog = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind fake syslog");
    d.spawn(&|cmd| with_private_dev_log(cmd, &scratch, &sock_path));
    d.ready(Duration::from_secs(10)).expect("ready");
    assert_eq!(roundtrip(d.addr("echo"), b"one"), b"one");
    let lines = recv_lines(&syslog, Duration::from_secs(5), "exit service=echo conn=1 ");
    let exit = lines
        .iter()
        .find(|l| l.contains("exit service=echo conn=1 "))
        .unwrap_or_else(|| panic!("{lines:?}"));
    // <30> is facility daemon (3) * 8 + info (6); ident tinyinetd with pid.
    assert!(
        exit.starts_with("<30>") && exit.contains(&format!("tinyinetd[{}]: info: exit", d.pid())),
        "{exit}"
    );

    drop(syslog);
    std::fs::remove_file(&sock_path).expect("remove syslog socket");
    for i in 0..5 {
        let msg = format!("while syslog is gone {i}");
        assert_eq!(roundtrip(d.addr("echo"), msg.as_bytes()), msg.as_bytes());
    }
    // Lines that could not go to syslog went to stderr: nothing lost.
    assert!(
        d.wait_log("exit service=echo conn=6 ", Duration::from_secs(5)),
        "{}",
        d.log()
    );

    let syslog = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("rebind fake syslog");
    thread::sleep(Duration::from_millis(1100)); // reconnects are tried once a second
    assert_eq!(roundtrip(d.addr("echo"), b"back"), b"back");
    let lines = recv_lines(&syslog, Duration::from_secs(5), "exit service=echo conn=7 ");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("exit service=echo conn=7 ")),
        "syslog not reconnected: {lines:?}\n{}",
        d.log()
    );
}

/// A system user the test creates and removes (also when it fails).
struct TestUser {
    name: &'static str,
    uid: u32,
    gid: u32,
}

impl TestUser {
    fn create(name: &'static str) -> TestUser {
        let _ = std::process::Command::new("userdel")
            .arg(name)
            .stderr(std::process::Stdio::null())
            .status();
        let ok = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ])
            .status()
            .expect("run useradd");
        assert!(ok.success(), "useradd {name}");
        let id = |flag: &str| -> u32 {
            let out = std::process::Command::new("id")
                .args([flag, name])
                .output()
                .expect("run id");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("numeric id")
        };
        TestUser {
            name,
            uid: id("-u"),
            gid: id("-g"),
        }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel")
            .arg(self.name)
            .status();
    }
}

/// Processes started by the test, killed by pid when it ends.
struct Started(Vec<std::process::Child>);

impl Drop for Started {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// With the handler's user at RLIMIT_NPROC, execve fails with EAGAIN in
/// every child. The service backs off as it does for a fork failure, the
/// episode is logged once (then summarised with its count), and the service
/// serves again once the user has a process to spare.
#[test]
fn exec_failures_at_the_process_limit_back_off_and_log_once() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to create a user and start handlers as it");
        return;
    }
    const N: usize = 40;
    let user = TestUser::create("tsupnproc");
    let conf = format!(
        "{DAEMON}\n[[service]]\nname = \"nproc\"\nlisten = [\"127.0.0.1:{{port:nproc}}\"]\nprogram = \"tinyinetd-echo\"\nuser = \"{}\"\n",
        user.name
    );
    let mut d = Daemon::prepare(&conf);
    // The daemon is root, which RLIMIT_NPROC does not bind; its handlers,
    // once they are tsupnproc, are held to 2 processes of that user.
    d.spawn(&|cmd| launch_through(cmd, "prlimit", &["--nproc=2:2", "--"]));
    d.ready(Duration::from_secs(10)).expect("ready");
    // Two processes of the user: every handler is over the limit.
    let (reuid, regid) = (
        format!("--reuid={}", user.uid),
        format!("--regid={}", user.gid),
    );
    let mut sleepers = Started(Vec::new());
    for _ in 0..2 {
        sleepers.0.push(
            std::process::Command::new("setpriv")
                .args([&reuid, &regid, "--clear-groups", "--", "sleep", "60"])
                .spawn()
                .expect("spawn sleeper"),
        );
    }
    let addr = d.addr("nproc");
    let conns: Vec<TcpStream> = (0..N).map(|_| connect(addr)).collect();
    assert!(
        d.wait_log("exec-failed service=nproc", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    let first = &d.log_lines("error: exec-failed")[0];
    assert!(
        first.contains("Resource temporarily unavailable"),
        "{first}"
    );
    assert!(
        d.wait_log(
            "paused service=nproc reason=backoff",
            Duration::from_secs(5)
        ),
        "{}",
        d.log()
    );
    // Let the daemon work through what it can for a while.
    thread::sleep(Duration::from_secs(2));
    let errors = d.log_lines("error: exec-failed").len();
    assert!(
        errors <= 2,
        "{errors} exec-failed lines for {N} connections: {}",
        d.log()
    );
    // Give the user its processes back: the queued clients, closed now, and
    // a new one are served.
    drop(conns);
    drop(sleepers);
    let t0 = Instant::now();
    let served = loop {
        let mut s = connect(addr);
        s.set_read_timeout(Some(Duration::from_secs(8)))
            .expect("timeout");
        let _ = s.write_all(b"back");
        let _ = s.shutdown(Shutdown::Write);
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        if got == b"back" {
            break true;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            break false;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert!(served, "not recovered: {}", d.log());
    assert!(
        d.wait_log("exec-recovered service=nproc", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    let summary = &d.log_lines("exec-recovered service=nproc")[0];
    assert!(summary.contains("failures="), "{summary}");
    // The episode is the failures up to the first recovery. The queued
    // clients are then started a few at a time (`admit::Starting`), more
    // at once than the user's 2 processes, so a later one may fail again:
    // a new episode, with its own first line.
    let log = d.log();
    let episode = log
        .split("exec-recovered service=nproc")
        .next()
        .unwrap_or("");
    let at_error = episode.matches("error: exec-failed").count();
    assert!(
        at_error <= 2,
        "{at_error} lines at error in one episode: {log}"
    );
    eprintln!(
        "{N} connections at the limit: {at_error} exec-failed lines at error in the episode, {} in all; {summary}",
        d.log_lines("exec-failed").len()
    );
    drop(d);
    drop(user);
}

/// The state letter of `pid` from /proc (`T` when stopped).
fn proc_state(pid: Pid) -> char {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
        })
        .unwrap_or('?')
}

/// Clients the kernel has already queued in a listener's backlog when
/// SIGTERM arrives are served: closing the listener with them still in the
/// queue would reset them.
#[test]
fn clients_queued_at_sigterm_are_served_not_reset() {
    let mut d = Daemon::start(&echo_conf(""));
    d.signal(Signal::SIGSTOP);
    assert!(
        wait_until(Duration::from_secs(5), || proc_state(d.pid()) == 'T'),
        "the daemon did not stop"
    );
    // The kernel completes these handshakes and queues them while the
    // daemon is stopped; the SIGTERM then waits for it with them.
    let mut clients: Vec<TcpStream> = (0..20).map(|_| connect(d.addr("echo"))).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("queued {i}\n").as_bytes())
            .expect("write");
        c.shutdown(Shutdown::Write).expect("shutdown");
    }
    d.signal(Signal::SIGTERM);
    d.signal(Signal::SIGCONT);
    let mut lost = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let mut got = Vec::new();
        match c.read_to_end(&mut got) {
            Ok(_) if got == format!("queued {i}\n").as_bytes() => {}
            other => lost.push((i, format!("{other:?} {:?}", String::from_utf8_lossy(&got)))),
        }
    }
    assert!(
        lost.is_empty(),
        "clients queued at SIGTERM were not served: {lost:?}"
    );
    let status = d.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit: {status:?}\n{}",
        d.log()
    );
}
