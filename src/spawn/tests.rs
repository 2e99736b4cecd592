//! Unit tests of the spawner: failure reports, the exec of the checked
//! descriptor, credentials, the child's environment and the slot pool.
//! They start real children (`/bin/true`, `/bin/sh`).

use super::child::res_ids;
use super::slot::build_vars;
use super::*;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use std::ffi::CString;
use std::os::unix::net::UnixStream;

/// A service running `program` (parsed from a real config, then its
/// exec path replaced), and a connection on one end of a socket pair.
fn fixture(program: &str) -> (Arc<Service>, Conn, UnixStream) {
    let text = "[[service]]\nname = \"t\"\nlisten = [\"127.0.0.1:9\"]\nprogram = \"/bin/sh\"\n";
    let mut plan = crate::config::parse(
        std::path::Path::new("test.toml"),
        text,
        &crate::config::RealSystem,
    )
    .expect("parse");
    let mut svc = Arc::try_unwrap(plan.services.remove(0)).expect("sole owner");
    svc.image.path = CString::new(program).expect("path");
    svc.image.fd = None;
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let conn = Conn {
        stream: theirs.into(),
        client: crate::plan::Client::Inet {
            peer: "127.0.0.1:40000".parse().expect("addr"),
            local: "127.0.0.1:9".parse().expect("addr"),
        },
        id: 1,
        err: None,
        proxy: None,
    };
    (Arc::new(svc), conn, ours)
}

/// Waits for `pid` to exit without reaping it: its slot is free then.
fn wait_exited(pid: Pid) {
    waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT).expect("waitid");
}

/// What the supervisor does every turn: closes the slots' copies of the
/// connections once their children have their own descriptor tables
/// (bounded; each child gets there in microseconds).
fn released(spawner: &mut Spawner) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while spawner.release() {
        assert!(
            std::time::Instant::now() < deadline,
            "a child never made its own table"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Starts `program` on a fresh `Spawner`, reaps it and checks its exit
/// code.
fn spawn_and_reap(program: &str, code: i32) -> (Spawner, Pid) {
    let mut spawner = Spawner::new();
    let (svc, conn, _peer) = fixture(program);
    let pid = spawn(&svc, &conn, &mut spawner).expect("spawn");
    assert_eq!(
        waitpid(pid, None).expect("waitpid"),
        WaitStatus::Exited(pid, code)
    );
    (spawner, pid)
}

#[test]
fn a_failed_exec_is_reported_once_when_its_child_is_reaped() {
    let (mut spawner, pid) = spawn_and_reap("/nonexistent/handler", 127);
    assert_eq!(
        spawner.take_failure(pid),
        Some(Failure {
            step: Step::Exec,
            errno: Errno::ENOENT
        })
    );
    assert_eq!(spawner.take_failure(pid), None);
}

/// With a descriptor, the child execs it, not the path (which here
/// names nothing at all).
#[test]
fn the_held_descriptor_is_exec_d_not_the_path() {
    let mut spawner = Spawner::new();
    let (mut svc, conn, _peer) = fixture("/nonexistent/handler");
    let p = crate::trust::program(std::path::Path::new("/bin/true"), crate::trust::Mode::User)
        .expect("open /bin/true");
    assert!(!p.script);
    Arc::get_mut(&mut svc).expect("sole owner").image.fd = Some(p.fd);
    let pid = spawn(&svc, &conn, &mut spawner).expect("spawn");
    assert_eq!(
        waitpid(pid, None).expect("waitpid"),
        WaitStatus::Exited(pid, 0)
    );
    assert_eq!(spawner.take_failure(pid), None);
}

#[test]
fn a_successful_exec_reports_no_failure() {
    let (mut spawner, pid) = spawn_and_reap("/bin/true", 0);
    assert_eq!(spawner.take_failure(pid), None);
}

/// A slot is reused as soon as its child has exited, before the daemon
/// reaps it: the report must survive the reuse, under its own pid.
#[test]
fn a_failure_survives_the_reuse_of_its_slot_before_the_reap() {
    let mut spawner = Spawner::new();
    let (bad, conn, _peer) = fixture("/nonexistent/handler");
    let (good, conn2, _peer2) = fixture("/bin/true");
    let a = spawn(&bad, &conn, &mut spawner).expect("spawn");
    wait_exited(a);
    let b = spawn(&good, &conn2, &mut spawner).expect("spawn");
    assert_eq!(spawner.slots.len(), 1, "the free slot was reused");
    assert_eq!(spawner.failures.len(), 1, "a's report was kept");
    assert_eq!(waitpid(b, None).expect("waitpid"), WaitStatus::Exited(b, 0));
    assert_eq!(spawner.take_failure(b), None);
    assert_eq!(
        waitpid(a, None).expect("waitpid"),
        WaitStatus::Exited(a, 127)
    );
    assert_eq!(spawner.take_failure(a).map(|f| f.step), Some(Step::Exec));
    assert!(spawner.failures.is_empty());
}

/// The credential check reads the real, effective and saved ids the
/// kernel reports (here: the test process's own).
#[test]
fn the_credential_check_reads_the_kernels_ids() {
    let u = nix::unistd::getresuid().expect("getresuid");
    let g = nix::unistd::getresgid().expect("getresgid");
    // SAFETY: getresuid/getresgid write three ids into the buffer.
    let (ru, rg) = unsafe { (res_ids(sys::GETRESUID), res_ids(sys::GETRESGID)) };
    assert_eq!(
        ru,
        Ok([u.real.as_raw(), u.effective.as_raw(), u.saved.as_raw()])
    );
    assert_eq!(
        rg,
        Ok([g.real.as_raw(), g.effective.as_raw(), g.saved.as_raw()])
    );
}

/// A handler's setuid runs on the memory it shares with the daemon, and
/// the kernel then clears the dumpable flag of that memory, the
/// daemon's: so a root daemon decides the flag when its spawner is made,
/// and no handler changes it afterwards.
#[test]
fn a_handler_dropping_privileges_does_not_change_the_daemons_dumpable_flag() {
    use nix::sys::prctl::{get_dumpable, set_dumpable};
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: dropping privileges needs the tests to run as root");
        return;
    }
    set_dumpable(true).expect("set_dumpable");
    let mut spawner = Spawner::new();
    let before = get_dumpable().expect("get_dumpable");
    assert!(!before, "a root daemon is not dumpable from the start");
    let (svc, conn, _peer) = fixture("/bin/true");
    assert!(svc.cred.is_some(), "as root, handlers drop to nobody");
    let pid = spawn(&svc, &conn, &mut spawner).expect("spawn");
    assert_eq!(
        waitpid(pid, None).expect("waitpid"),
        WaitStatus::Exited(pid, 0)
    );
    assert_eq!(get_dumpable().expect("get_dumpable"), before);
}

/// The child gets the connection on 0–2 and the per-connection
/// variables.
#[test]
fn the_child_runs_on_the_connection_with_its_variables() {
    let mut spawner = Spawner::new();
    let (mut svc, conn, mut peer) = fixture("/bin/sh");
    Arc::get_mut(&mut svc).expect("sole owner").image.argv = [
        "sh",
        "-c",
        "echo $TCPREMOTEIP $TCPREMOTEPORT $TINYINETD_CONN_ID",
    ]
    .iter()
    .map(|a| CString::new(*a).expect("arg"))
    .collect();
    let pid = spawn(&svc, &conn, &mut spawner).expect("spawn");
    drop(conn);
    released(&mut spawner);
    let mut out = String::new();
    std::io::Read::read_to_string(&mut peer, &mut out).expect("read");
    assert_eq!(out, "127.0.0.1 40000 1\n");
    assert_eq!(
        waitpid(pid, None).expect("waitpid"),
        WaitStatus::Exited(pid, 0)
    );
    assert_eq!(spawner.take_failure(pid), None);
}

/// A proxied connection adds the proxy's variables after the others; one
/// without a proxy has none of them.
#[test]
fn the_proxy_variables_follow_the_connections() {
    let (_svc, mut conn, _peer) = fixture("/bin/sh");
    let (mut v, mut o) = (Vec::new(), Vec::new());
    let vars = |v: &[u8], o: &[usize]| -> Vec<String> {
        o.iter()
            .map(|&i| {
                let end = v[i..].iter().position(|&b| b == 0).expect("NUL");
                String::from_utf8_lossy(&v[i..i + end]).into_owned()
            })
            .collect()
    };
    build_vars(&mut v, &mut o, &conn);
    assert!(!vars(&v, &o)
        .iter()
        .any(|s| s.starts_with("TINYINETD_PROXY")));
    conn.proxy = Some(Box::new(Proxied {
        addr: "[::ffff:10.0.0.1]:4000".parse().expect("addr"),
        vars: vec![("TINYINETD_PROXY_AUTHORITY", "example.org".into())],
    }));
    build_vars(&mut v, &mut o, &conn);
    let all = vars(&v, &o);
    assert_eq!(
        all[all.len() - 3..],
        [
            "TINYINETD_PROXY_IP=10.0.0.1",
            "TINYINETD_PROXY_PORT=4000",
            "TINYINETD_PROXY_AUTHORITY=example.org"
        ]
    );
    assert_eq!(all[0], "TCPREMOTEIP=127.0.0.1");
}

/// Past the warm slots, a busy pool makes the supervisor wait a moment,
/// and grows only when every slot has stayed busy for `GROW_AFTER`.
#[test]
fn past_the_warm_slots_the_pool_grows_only_when_they_stay_busy() {
    let mut spawner = Spawner::new();
    let t0 = std::time::Instant::now();
    for _ in 0..WARM_SLOTS {
        assert_eq!(spawner.room(t0), Room::Free);
        let i = spawner.free_slot().expect("slot");
        spawner.slots[i].data().busy.store(1, Ordering::Release);
    }
    assert_eq!(spawner.room(t0), Room::Busy, "busy for a moment: wait");
    let later = t0 + GROW_AFTER;
    assert_eq!(spawner.room(later), Room::Grow { slots: WARM_SLOTS });
    let i = spawner.free_slot().expect("the pool grows");
    assert_eq!(spawner.slots.len(), WARM_SLOTS + 1);
    assert_eq!(spawner.room(later), Room::Free, "the new slot is free");
    spawner.slots[i].data().busy.store(1, Ordering::Release);
    assert_eq!(spawner.room(later), Room::Busy, "a new episode starts");
    spawner.slots[0].data().busy.store(0, Ordering::Release);
    assert_eq!(spawner.room(later), Room::Free);
    for s in &spawner.slots {
        s.data().busy.store(0, Ordering::Release);
    }
}

/// With every slot busy and the pool at its bound, `free_slot` fails at
/// once (it used to wait in the loop); below the bound it grows.
#[test]
fn free_slot_never_waits() {
    let mut spawner = Spawner::new();
    spawner.set_slot_limit(2);
    let a = spawner.free_slot().expect("first slot");
    // As if a child stopped before its exec held it.
    spawner.slots[a].data().busy.store(1, Ordering::Release);
    let b = spawner.free_slot().expect("the pool grows");
    assert_ne!(a, b);
    spawner.slots[b].data().busy.store(1, Ordering::Release);
    let t0 = std::time::Instant::now();
    assert_eq!(spawner.free_slot(), Err(Errno::EAGAIN));
    assert!(t0.elapsed() < std::time::Duration::from_millis(50));
    spawner.slots[a].data().busy.store(0, Ordering::Release);
    assert_eq!(spawner.free_slot(), Ok(a));
    spawner.slots[b].data().busy.store(0, Ordering::Release);
}

/// A hardening step that fails is reported as its own step: Linux
/// refuses more descriptors than fs.nr_open, root or not.
#[test]
fn a_failed_limit_is_reported_as_its_own_step() {
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .expect("nr_open")
        .trim()
        .parse()
        .expect("number");
    let (svc, conn, _peer) = fixture("/bin/true");
    let mut svc = Arc::try_unwrap(svc).expect("sole owner");
    svc.image
        .hardening
        .set(crate::plan::Resource::Nofile, nr_open + 1);
    let svc = Arc::new(svc);
    let mut spawner = Spawner::new();
    let pid = spawn(&svc, &conn, &mut spawner).expect("spawn");
    assert_eq!(
        waitpid(pid, None).expect("waitpid"),
        WaitStatus::Exited(pid, 127)
    );
    assert_eq!(
        spawner.take_failure(pid),
        Some(Failure {
            step: Step::RlimitNofile,
            errno: Errno::EPERM
        })
    );
    assert_eq!(Step::RlimitNofile.as_str(), "rlimit_nofile");
}

/// A script that is there, whose exec fails with ENOENT, blames its
/// interpreter; a path that names nothing does not.
#[test]
fn a_missing_interpreter_is_told_from_a_missing_program() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("s.sh");
    std::fs::write(&script, "#!/nonexistent/interp\n").expect("write");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (mut spawner, pid) = spawn_and_reap(script.to_str().expect("utf8"), 127);
    assert_eq!(
        spawner.take_failure(pid),
        Some(Failure {
            step: Step::ExecInterpreter,
            errno: Errno::ENOENT
        })
    );
    assert_eq!(Step::ExecInterpreter.as_str(), "execve");
}

/// With `err`, fd 2 is that descriptor and fds 0 and 1 stay the
/// connection; without it, fd 2 is the connection (`stderr = "socket"`).
#[test]
fn err_goes_on_fd_2_and_the_connection_on_0_and_1() {
    use std::io::Read;
    let mut spawner = Spawner::new();
    let (mut svc, mut conn, mut peer) = fixture("/bin/sh");
    let img = &mut Arc::get_mut(&mut svc).expect("sole owner").image;
    img.argv = ["sh", "-c", "echo out; echo err >&2"]
        .iter()
        .map(|a| CString::new(*a).expect("arg"))
        .collect();
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    conn.err = Some(w.as_raw_fd());
    let pid = spawn(&svc, &conn, &mut spawner).expect("spawn");
    drop(w);
    drop(conn);
    released(&mut spawner);
    assert_eq!(
        waitpid(pid, None).expect("waitpid"),
        WaitStatus::Exited(pid, 0)
    );
    let mut got = String::new();
    std::fs::File::from(r)
        .read_to_string(&mut got)
        .expect("read pipe");
    assert_eq!(got, "err\n");
    let mut out = String::new();
    peer.read_to_string(&mut out).expect("read socket");
    assert_eq!(out, "out\n", "only stdout on the connection");
}

/// A wait handler: the socket on fds 0–3, and `LISTEN_PID` its own pid,
/// written by the child into the field the daemon reserved.
#[test]
fn a_wait_handler_gets_its_own_pid_and_the_socket_on_fd_3() {
    let text = "[[service]]\nname = \"w\"\nlisten = [\"127.0.0.1:9\"]\nprotocol = \"udp\"\nwait = true\nprogram = \"/bin/sh\"\nargs = [\"-c\", \"echo \\\"$LISTEN_PID $LISTEN_FDS $LISTEN_FDNAMES $PROTO\\\"; ls /proc/self/fd\"]\n";
    let mut plan = crate::config::parse(
        std::path::Path::new("test.toml"),
        text,
        &crate::config::RealSystem,
    )
    .expect("parse");
    let svc = plan.services.remove(0);
    let (mut ours, theirs) = UnixStream::pair().expect("socketpair");
    let conn = Conn {
        stream: theirs.into(),
        client: crate::plan::Client::Listener(crate::plan::Endpoint::Udp(
            "127.0.0.1:9".parse().expect("addr"),
        )),
        id: 7,
        err: None,
        proxy: None,
    };
    let mut spawner = Spawner::new();
    let pid = spawn(&svc, &conn, &mut spawner).expect("spawn");
    drop(conn);
    // The slot's copy of the socket goes once the child has its own table.
    released(&mut spawner);
    let mut out = String::new();
    std::io::Read::read_to_string(&mut ours, &mut out).expect("read");
    assert_eq!(
        waitpid(pid, None).expect("waitpid"),
        WaitStatus::Exited(pid, 0)
    );
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some(format!("{pid} 1 w UDP").as_str()),
        "{out}"
    );
    // ls opens one descriptor of its own for the directory.
    let fds: Vec<u32> = lines.filter_map(|l| l.parse().ok()).collect();
    assert!(fds.starts_with(&[0, 1, 2, 3]) && fds.len() <= 5, "{out}");
}

/// The child is cloned with its pidfd (CLONE_PIDFD), which reaps it; and
/// the slot's copy of the connection lives until the child has its own
/// descriptor table, then goes, so that the child's end is the last one.
#[test]
fn a_child_comes_with_its_pidfd_and_the_slots_copy_goes_once_it_has_its_own_table() {
    let mut spawner = Spawner::new();
    let (mut svc, conn, mut peer) = fixture("/bin/sh");
    Arc::get_mut(&mut svc).expect("sole owner").image.argv = ["sh", "-c", "read x; echo got $x"]
        .iter()
        .map(|a| CString::new(*a).expect("arg"))
        .collect();
    let pid = spawn(&svc, &conn, &mut spawner).expect("spawn");
    let pidfd = spawner.take_pidfd().expect("a pidfd");
    assert!(spawner.take_pidfd().is_none(), "taken once");
    drop(conn);
    // The child waits for a line: it has its own table by now or soon.
    released(&mut spawner);
    std::io::Write::write_all(&mut peer, b"x\n").expect("write");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut peer, &mut out).expect("read");
    assert_eq!(out, "got x\n", "EOF once the child exits: no copy is left");
    let st = waitid(
        Id::PIDFd(std::os::fd::AsFd::as_fd(&pidfd)),
        WaitPidFlag::WEXITED,
    )
    .expect("waitid on the pidfd");
    assert_eq!(st, WaitStatus::Exited(pid, 0));
    assert_eq!(spawner.take_failure(pid), None);
}
