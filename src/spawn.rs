//! `(Service, Conn) → Spawned`: fork a child, put the connection on its fds
//! 0–2 and exec the handler. The only module with `unsafe` code.
//!
//! # The child contract (SPEC §5.3)
//!
//! Between `fork` and `execve` the child runs in a copy of the daemon's
//! address space in which another thread could have held a lock (there is
//! none — the daemon is single-threaded — but we do not rely on it). So the
//! child calls only async-signal-safe functions: no allocation, no locks, no
//! logging, no panics, no return. Everything it needs — the exec path, argv,
//! envp (with this connection's variables), credentials, the default signal
//! disposition — is built by the parent *before* `fork`, as plain pointers.
//!
//! The parent blocks every signal around `fork`, so a signal that arrives at
//! that instant stays pending in the parent (and is handled there) instead
//! of running signal-hook's handler in the child, where it would write into
//! the parent's self-pipe. The child resets every disposition to `SIG_DFL`
//! (SIGPIPE above all: Rust ignores it, and an ignored disposition survives
//! `execve`) and only then empties its mask.
//!
//! An exec failure is reported on a close-on-exec pipe: a successful
//! `execve` closes it (EOF, "exec happened"), a failure writes
//! `(step, errno)` and `_exit(127)`s. The parent polls the read end with
//! everything else, so the accept loop never waits for a child.

#![allow(unsafe_code)]

use std::ffi::c_char;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::unistd::Pid;

use crate::plan::Service;

/// One accepted connection, ready to hand to a handler.
pub struct Conn {
    pub stream: OwnedFd,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Unique within this run of the daemon; in the handler's environment
    /// and in every log line about the connection.
    pub id: u64,
}

/// A child that was forked; whether its exec succeeded arrives on `report`.
pub struct Spawned {
    pub pid: Pid,
    /// Read end of the exec-report pipe (non-blocking, close-on-exec).
    pub report: OwnedFd,
}

/// Why a child could not be started at all (nothing was forked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnError {
    /// `fork` failed (EAGAIN: process limit; ENOMEM).
    Fork(Errno),
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::Fork(e) => write!(f, "fork: {}", crate::log::os_error(*e)),
        }
    }
}

/// The step of the child contract that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    Setsid = 1,
    Dup = 2,
    CloseFds = 3,
    Chdir = 4,
    Setgroups = 5,
    Setgid = 6,
    Setuid = 7,
    VerifyCred = 8,
    Exec = 9,
}

impl Step {
    fn from_u8(b: u8) -> Option<Step> {
        Some(match b {
            1 => Step::Setsid,
            2 => Step::Dup,
            3 => Step::CloseFds,
            4 => Step::Chdir,
            5 => Step::Setgroups,
            6 => Step::Setgid,
            7 => Step::Setuid,
            8 => Step::VerifyCred,
            9 => Step::Exec,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Setsid => "setsid",
            Step::Dup => "dup2",
            Step::CloseFds => "close_range",
            Step::Chdir => "chdir",
            Step::Setgroups => "setgroups",
            Step::Setgid => "setgid",
            Step::Setuid => "setuid",
            Step::VerifyCred => "verify-credentials",
            Step::Exec => "execve",
        }
    }
}

/// What the child said on its report pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Nothing yet (the child has not reached exec).
    Pending,
    /// EOF: the pipe closed at exec (or the child died before writing).
    Closed,
    /// The child failed at `step` with `errno` and exits 127.
    Failed { step: Step, errno: Errno },
}

/// Buffers reused from one spawn to the next, so the hot path does not
/// allocate once they have grown to size.
#[derive(Default)]
pub struct Scratch {
    /// The per-connection variables, NUL-terminated one after the other.
    vars: Vec<u8>,
    /// Start offsets of each variable in `vars`.
    offsets: Vec<usize>,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
}

/// The exec-report pipe for one child: `(read end, write end)`, both
/// close-on-exec and non-blocking. The supervisor creates the next one
/// *before* it accepts, so that running out of descriptors pauses the
/// listener instead of dropping a connection already taken.
pub struct ReportPipe(OwnedFd, OwnedFd);

impl ReportPipe {
    pub fn new() -> Result<ReportPipe, Errno> {
        let (rd, wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        Ok(ReportPipe(rd, wr))
    }
}

/// Forks and execs `svc`'s handler on `conn`, with `pipe` as its exec
/// report. The connection is closed in the parent when the caller drops
/// `conn`.
pub fn spawn(
    svc: &Service,
    conn: &Conn,
    pipe: ReportPipe,
    scratch: &mut Scratch,
) -> Result<Spawned, SpawnError> {
    let img = &svc.image;

    // --- Parent, before fork: build everything the child will use. ---
    build_vars(scratch, conn);
    scratch.argv.clear();
    scratch.argv.extend(img.argv.iter().map(|a| a.as_ptr()));
    scratch.argv.push(std::ptr::null());
    scratch.envp.clear();
    scratch.envp.extend(img.env.iter().map(|e| e.as_ptr()));
    let base = scratch.vars.as_ptr();
    // SAFETY: every offset is < vars.len() and points at the start of a
    // NUL-terminated string written by build_vars; `vars` is not modified
    // again until the next spawn, after the child has exec'd or exited.
    scratch.envp.extend(
        scratch
            .offsets
            .iter()
            .map(|&o| unsafe { base.add(o) } as *const c_char),
    );
    scratch.envp.push(std::ptr::null());

    let ReportPipe(report_rd, report_wr) = pipe;

    let child = ChildArgs {
        path: img.path.as_ptr(),
        argv: scratch.argv.as_ptr(),
        envp: scratch.envp.as_ptr(),
        conn: conn.stream.as_raw_fd(),
        report: report_wr.as_raw_fd(),
        umask: img.umask as libc::mode_t,
        cred: svc
            .cred
            .as_ref()
            .map(|c| (c.uid, c.gid, c.groups.as_ptr(), c.groups.len())),
    };

    // Block every signal across fork: see the module comment.
    let mut old = SigSet::empty();
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut old));
    // SAFETY: the daemon is single-threaded; the child branch calls only
    // async-signal-safe functions on memory prepared above and never returns.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: we are the forked child; `child` upholds the contract.
        unsafe { child_main(&child) }
    }
    let fork_errno = Errno::last();
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    drop(report_wr);
    if pid < 0 {
        return Err(SpawnError::Fork(fork_errno));
    }
    Ok(Spawned {
        pid: Pid::from_raw(pid),
        report: report_rd,
    })
}

/// Writes this connection's variables into `scratch.vars`, recording where
/// each starts. IPv4-mapped IPv6 addresses are shown as IPv4, IPv6 without
/// brackets.
fn build_vars(scratch: &mut Scratch, conn: &Conn) {
    let v = &mut scratch.vars;
    let o = &mut scratch.offsets;
    v.clear();
    o.clear();
    let rip = conn.peer.ip().to_canonical();
    let lip = conn.local.ip().to_canonical();
    let var = |o: &mut Vec<usize>, v: &mut Vec<u8>, name: &str, val: &dyn std::fmt::Display| {
        o.push(v.len());
        // Writing into a Vec cannot fail.
        let _ = write!(v, "{name}={val}\0");
    };
    var(o, v, "TCPREMOTEIP", &rip);
    var(o, v, "TCPREMOTEPORT", &conn.peer.port());
    var(o, v, "TCPLOCALIP", &lip);
    var(o, v, "TCPLOCALPORT", &conn.local.port());
    var(o, v, "REMOTE_ADDR", &rip);
    var(o, v, "REMOTE_PORT", &conn.peer.port());
    var(o, v, "TINYINETD_CONN_ID", &conn.id);
}

/// Everything the child needs, as raw values (no Rust-owned data is touched
/// after fork except through these pointers).
struct ChildArgs {
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    conn: RawFd,
    report: RawFd,
    umask: libc::mode_t,
    /// uid, gid, groups pointer and length.
    cred: Option<(u32, u32, *const u32, usize)>,
}

/// The child half: runs between fork and exec. Never returns.
///
/// # Safety
/// Only call in a freshly forked child of a single-threaded parent, with
/// `a`'s pointers valid (they point into the parent's memory, copied by fork).
unsafe fn child_main(a: &ChildArgs) -> ! {
    // 1. Every disposition back to SIG_DFL, through the raw system call:
    //    glibc's sigaction() refuses signals 32 and 33 (its own), but a
    //    parent may have left them ignored, and an ignore survives execve.
    //    A zeroed kernel `struct sigaction` is SIG_DFL with no flags and an
    //    empty mask. SIGKILL and SIGSTOP refuse with EINVAL, harmlessly.
    let dfl = [0u64; 4];
    for sig in 1..65 {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            dfl.as_ptr(),
            std::ptr::null_mut::<u64>(),
            8usize,
        );
    }
    // 2. Empty the mask (it survives execve). Pending signals are not
    //    inherited across fork, so nothing fires here.
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

    // 3. Own session: the handler and its children form one process group
    //    that the daemon can signal, detached from the daemon's terminal.
    if libc::setsid() < 0 {
        fail(a.report, Step::Setsid);
    }

    // 4. The connection on 0, 1, 2. dup2 clears FD_CLOEXEC on the copies.
    //    The accepted socket is never 0–2 (std reopens closed stdio on
    //    /dev/null at start), but if it were, dup2(fd, fd) would keep its
    //    CLOEXEC flag, so move it out of the way first.
    let mut conn = a.conn;
    if conn <= 2 {
        conn = libc::fcntl(conn, libc::F_DUPFD_CLOEXEC, 3);
        if conn < 0 {
            fail(a.report, Step::Dup);
        }
    }
    for target in 0..3 {
        if libc::dup2(conn, target) < 0 {
            fail(a.report, Step::Dup);
        }
    }

    // 5. Nothing else may reach the handler: mark every descriptor from 3
    //    up close-on-exec (close_range(2), Linux 5.11). Marking rather than
    //    closing keeps the report pipe open until the exec itself.
    if libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) < 0 {
        fail(a.report, Step::CloseFds);
    }

    // 6. Working directory and file-creation mask.
    if libc::chdir(c"/".as_ptr()) < 0 {
        fail(a.report, Step::Chdir);
    }
    libc::umask(a.umask);

    // 7. Drop privileges: supplementary groups, then gid, then uid (after
    //    setuid we could no longer change groups), then verify that none of
    //    the real, effective or saved ids kept the old value.
    if let Some((uid, gid, groups, ngroups)) = a.cred {
        if libc::setgroups(ngroups, groups) < 0 {
            fail(a.report, Step::Setgroups);
        }
        if libc::setgid(gid) < 0 {
            fail(a.report, Step::Setgid);
        }
        if libc::setuid(uid) < 0 {
            fail(a.report, Step::Setuid);
        }
        let (mut r, mut e, mut s) = (0, 0, 0);
        libc::getresuid(&mut r, &mut e, &mut s);
        let (mut rg, mut eg, mut sg) = (0, 0, 0);
        libc::getresgid(&mut rg, &mut eg, &mut sg);
        if r != uid || e != uid || s != uid || rg != gid || eg != gid || sg != gid {
            *libc::__errno_location() = libc::EPERM;
            fail(a.report, Step::VerifyCred);
        }
    }

    // 8. Exec. It only returns on failure.
    libc::execve(a.path, a.argv, a.envp);
    fail(a.report, Step::Exec)
}

/// Reports `(step, errno)` on the pipe and exits 127. Async-signal-safe.
unsafe fn fail(report: RawFd, step: Step) -> ! {
    let errno = *libc::__errno_location();
    let e = errno.to_le_bytes();
    let msg = [step as u8, e[0], e[1], e[2], e[3]];
    // A 5-byte write to an empty pipe is atomic and cannot block.
    libc::write(report, msg.as_ptr().cast(), msg.len());
    libc::_exit(127)
}

/// Reads what the child wrote on its report pipe, without blocking.
pub fn read_report(fd: &OwnedFd) -> Report {
    let mut buf = [0u8; 8];
    loop {
        match nix::unistd::read(fd.as_fd(), &mut buf) {
            Ok(0) => return Report::Closed,
            Ok(n) if n >= 5 => {
                let errno = i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
                return match Step::from_u8(buf[0]) {
                    Some(step) => Report::Failed {
                        step,
                        errno: Errno::from_raw(errno),
                    },
                    None => Report::Closed,
                };
            }
            // A write of 5 bytes to a pipe is atomic: a short one cannot happen.
            Ok(_) => return Report::Closed,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Report::Pending,
            Err(_) => return Report::Closed,
        }
    }
}

/// Marks every descriptor the daemon inherited beyond 0–2 close-on-exec, so
/// that nothing its parent leaked can reach a handler (or the children of a
/// handler, if one of our own paths ever forgot `CLOEXEC`).
pub fn mark_inherited_cloexec() -> std::io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes flags; it
    // touches no memory.
    let rc = unsafe { libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Takes ownership of a descriptor passed by the service manager
/// (`LISTEN_FDS`), if it is open. Called once per passed descriptor.
pub fn own_inherited(fd: RawFd) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    if fd < 3 {
        return None;
    }
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the descriptor is open, was handed to this process by its
    // parent, and nothing else in the daemon owns it: `LISTEN_FDS` is read
    // once, at start, and each number is adopted once.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}
