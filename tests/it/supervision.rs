//! Supervision beyond the direct child: a handler's whole process group
//! under `timeout` and shutdown, and a loop that stays alive while children
//! are stopped before their exec.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::*;

/// `(pid, state)` of every process whose session is `sid`.
fn session_members(sid: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // state ppid pgrp session ...
        if f.len() > 3 && f[3].parse::<i32>() == Ok(sid) {
            out.push((pid, f[0].chars().next().unwrap_or('?')));
        }
    }
    out
}

/// The pid of the handler of connection `conn` of `service`, from the
/// `start` line (logged at debug).
fn handler_pid(d: &Daemon, service: &str, conn: u64) -> i32 {
    let tag = format!("start service={service} conn={conn} ");
    assert!(d.wait_log(&tag, Duration::from_secs(5)), "{}", d.log());
    let line = d.log_lines(&tag).remove(0);
    line.split(' ')
        .find_map(|kv| kv.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line}"))
}

/// Kills, by pid, the processes of session `sid` left when a test ends.
struct Session(Option<i32>);

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(sid) = self.0 {
            for (pid, _) in session_members(sid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// The handler leaves at once, but a background child that ignores SIGTERM
/// keeps the client's socket: the timeout still governs it (SIGTERM to the
/// group at the timeout, SIGKILL 2 s later), and the client sees EOF.
#[test]
fn timeout_reaches_a_group_member_that_outlives_its_handler() {
    let conf = format!(
        "{DAEMON}\n[[service]]\nname = \"bg\"\nlisten = [\"127.0.0.1:{{port:bg}}\"]\nprogram = \"/bin/sh\"\nargs = [\"-c\", \"trap '' TERM; sleep 30 <&0 >&1 & echo started\"]\ntimeout = \"1s\"\n"
    );
    let d = Daemon::start(&conf);
    let t0 = Instant::now();
    let mut s = connect(d.addr("bg"));
    let mut guard = Session(None);
    let leader = handler_pid(&d, "bg", 1);
    guard.0 = Some(leader);
    let mut got = Vec::new();
    let r = s.read_to_end(&mut got);
    let took = t0.elapsed();
    assert!(r.is_ok(), "no EOF after {took:?}: {r:?}\n{}", d.log());
    assert_eq!(got, b"started\n");
    assert!(
        took < Duration::from_secs(5),
        "EOF only after {took:?}: {}",
        d.log()
    );
    assert!(
        wait_until(Duration::from_secs(2), || session_members(leader)
            .is_empty()),
        "left in the handler's session: {:?}",
        session_members(leader)
    );
    assert!(
        d.wait_log("kill service=bg conn=1", Duration::from_secs(2)),
        "{}",
        d.log()
    );
}

/// At shutdown the handler dies of SIGTERM, its background child ignores
/// it: the daemon SIGKILLs the group before it exits.
#[test]
fn shutdown_kills_a_group_member_that_ignores_sigterm() {
    let conf = format!(
        "{DAEMON}shutdown_timeout = \"1s\"\n\n[[service]]\nname = \"bg\"\nlisten = [\"127.0.0.1:{{port:bg}}\"]\nprogram = \"/bin/sh\"\nargs = [\"-c\", \"(trap '' TERM; exec sleep 30) <&0 >&1 & echo started; wait\"]\n"
    );
    let mut d = Daemon::start(&conf);
    let mut s = connect(d.addr("bg"));
    let mut guard = Session(None);
    let leader = handler_pid(&d, "bg", 1);
    guard.0 = Some(leader);
    let mut line = [0u8; 8];
    s.read_exact(&mut line).expect("read");
    assert!(wait_until(Duration::from_secs(5), || session_members(
        leader
    )
    .len()
        == 2));
    let t0 = Instant::now();
    d.signal(Signal::SIGTERM);
    let status = d
        .wait_exit(Duration::from_secs(8))
        .expect("daemon did not exit");
    assert!(status.success(), "exit status {status}");
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    assert!(
        wait_until(Duration::from_secs(2), || session_members(leader)
            .is_empty()),
        "survived the daemon: {:?}\n{}",
        session_members(leader),
        d.log()
    );
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
}

/// Stops every clone child of a process before it runs, with ptrace: the
/// first N children of the daemon stay stopped before their exec.
const TRACER: &str = r#"
import ctypes, errno, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
SEIZE, CONT, DETACH = 0x4206, 7, 17
OPTS = 2 | 4 | 8  # TRACEFORK | TRACEVFORK | TRACECLONE
WALL = 0x40000000
daemon, want = int(sys.argv[1]), int(sys.argv[2])
if libc.ptrace(SEIZE, daemon, None, OPTS) != 0:
    e = ctypes.get_errno()
    print("seize-failed", "EPERM" if e == errno.EPERM else errno.errorcode.get(e, e), flush=True)
    sys.exit(0)
print("seized", flush=True)
done = 0
while done < want:
    pid, status = os.waitpid(-1, WALL)
    if not os.WIFSTOPPED(status):
        if pid == daemon:
            sys.exit(1)
        continue
    sig, event = os.WSTOPSIG(status), status >> 16
    if pid == daemon:
        inject = sig if event == 0 and sig != signal.SIGTRAP else 0
        libc.ptrace(CONT, daemon, None, inject)
    else:
        os.kill(pid, signal.SIGSTOP)
        libc.ptrace(DETACH, pid, None, None)
        done += 1
        print(pid, flush=True)
"#;

/// Kills the tracer and the stopped children it reported, by pid.
struct Stopped {
    tracer: std::process::Child,
    pids: Vec<i32>,
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.tracer.kill();
        let _ = self.tracer.wait();
        for &pid in &self.pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// More children than the old fixed pool of 32 slots stopped before their
/// exec: the loop must not wait for a slot. Other services answer, a
/// timeout still fires, exits are reaped, SIGUSR1 and SIGTERM are obeyed.
#[test]
fn children_stopped_before_exec_do_not_stall_the_loop() {
    const STOPPED: usize = 40;
    if cfg!(tinyinetd_vfork) {
        // With CLONE_VFORK (architectures other than x86-64, and this
        // build) the kernel suspends the daemon until each child's exec, so
        // a child stopped before it stops the daemon too: src/spawn/mod.rs
        // says so.
        eprintln!(
            "SKIPPED: built with --cfg tinyinetd_vfork, where the daemon waits for every exec"
        );
        return;
    }
    let conf = format!(
        "{DAEMON}shutdown_timeout = \"1s\"\n
[[service]]
name = \"stuck\"
listen = [\"127.0.0.1:{{port:stuck}}\"]
program = \"tinyinetd-echo\"

[[service]]
name = \"other\"
listen = [\"127.0.0.1:{{port:other}}\"]
program = \"tinyinetd-echo\"

[[service]]
name = \"slow\"
listen = [\"127.0.0.1:{{port:slow}}\"]
program = \"/bin/sleep\"
args = [\"1000\"]
timeout = \"1s\"
"
    );
    let mut d = Daemon::start(&conf);
    let daemon = d.pid().as_raw();
    let mut tracer = Command::new("python3")
        .args(["-c", TRACER, &daemon.to_string(), &STOPPED.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3");
    let out = tracer.stdout.take().expect("stdout");
    let mut stopped = Stopped {
        tracer,
        pids: Vec::new(),
    };
    let (tx, rx) = mpsc::channel::<String>();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("tracer said nothing");
    if first.starts_with("seize-failed EPERM") {
        eprintln!("SKIPPED: ptrace is not permitted here ({first})");
        return;
    }
    assert_eq!(first, "seized", "tracer: {first}");

    let clients: Vec<TcpStream> = (0..STOPPED).map(|_| connect(d.addr("stuck"))).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    while stopped.pids.len() < STOPPED {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => stopped.pids.push(l.parse().expect("pid from tracer")),
            Err(_) => panic!("only {} children stopped: {}", stopped.pids.len(), d.log()),
        }
    }
    assert!(
        wait_until(Duration::from_secs(5), || {
            stopped
                .pids
                .iter()
                .all(|p| d.children().contains(&(*p, 't')) || d.children().contains(&(*p, 'T')))
        }),
        "children not stopped: {:?}",
        d.children()
    );

    // Another service answers, promptly.
    let mut s = connect(d.addr("other"));
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    s.write_all(b"alive").expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut got = Vec::new();
    let r = s.read_to_end(&mut got);
    assert!(
        r.is_ok() && got == b"alive",
        "other service: {r:?} {got:?}\n{}",
        d.log()
    );
    // A handler's timeout still fires.
    let t0 = Instant::now();
    let mut slow = connect(d.addr("slow"));
    slow.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut rest = Vec::new();
    assert!(slow.read_to_end(&mut rest).is_ok(), "slow not terminated");
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    // Exits are reaped.
    assert!(
        wait_until(Duration::from_secs(5), || d.zombies() == 0),
        "zombies: {:?}",
        d.children()
    );
    assert!(d.wait_log("exit service=other", Duration::from_secs(5)));
    // SIGUSR1 is answered.
    d.signal(Signal::SIGUSR1);
    assert!(
        d.wait_log("status service=stuck", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    // SIGTERM ends it: shutdown_timeout (1 s), then SIGTERM, then SIGKILL
    // 2 s later for the stopped children.
    let t0 = Instant::now();
    d.signal(Signal::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(8));
    assert!(status.is_some(), "daemon ignored SIGTERM: {}", d.log());
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    drop(clients);
    assert!(
        wait_until(Duration::from_secs(5), || stopped.pids.iter().all(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).map_or(true, |st| {
                st.rsplit_once(") ")
                    .is_some_and(|(_, r)| r.starts_with('Z'))
            })
        })),
        "stopped children left behind"
    );
}
