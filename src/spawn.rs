//! `(Service, Conn) → Spawned`: start a child, put the connection on its
//! fds 0–2 and exec the handler. The only module with `unsafe` code.
//!
//! # How: clone(CLONE_VM | CLONE_VFORK), as posix_spawn does
//!
//! The child is created with `clone(CLONE_VM | CLONE_VFORK | SIGCHLD)` on a
//! small stack of its own: it shares the daemon's memory (no page tables are
//! copied, which is most of what `fork` costs) and the daemon is suspended
//! until the child has called `execve` or `_exit`. Measured before and after
//! in BENCHMARKS.md.
//!
//! # Why it is safe
//!
//! * **Shared memory.** The daemon does not run while the child does
//!   (CLONE_VFORK), so nothing the child reads can change under it, and the
//!   only memory the child writes is its own stack and one `Failure` slot
//!   that the daemon reads after `clone` returns.
//! * **Async-signal-safe only.** Between clone and exec the child calls raw
//!   system calls through libc and nothing else: no allocation, no locks, no
//!   logging, no panics, no return. It does share the daemon's thread-local
//!   storage, so `errno` written in the child is the daemon's `errno`; the
//!   daemon reads the child's error from the `Failure` slot, never `errno`.
//!   Everything the child needs — the exec path, argv, envp (with this
//!   connection's variables), credentials — is built by the parent *before*
//!   clone, as plain pointers.
//! * **Signals.** The daemon installs no signal handler: the signals it
//!   acts on are blocked for its whole life and read from a signalfd
//!   (`signals`), so no daemon code runs on an asynchronous signal in the
//!   child, and no mask needs changing around clone (std's stack-overflow
//!   handler runs only on a fault, and the child resets it first). The
//!   child inherits that mask and gets its own copy of the dispositions
//!   (no CLONE_SIGHAND); it resets
//!   every one that is not `SIG_DFL` (the daemon lists them once: SIGPIPE
//!   above all, which Rust ignores and an ignore survives `execve`; std's
//!   SIGSEGV/SIGBUS stack-overflow handlers; ignores the daemon inherited)
//!   to `SIG_DFL`, then empties its mask.
//! * **Exec failure.** A failed step writes `(step, errno)` into the
//!   `Failure` slot and `_exit(127)`s (`exit_group` ends only the child: it
//!   is its own thread group). When `clone` returns, the daemon knows at once
//!   whether the exec happened: no report pipe, no descriptor per child, and
//!   the accept loop never waits for a running handler — only for the
//!   microseconds until its `execve`.
//! * **Descriptors.** The child marks every descriptor from 3 up
//!   close-on-exec before exec; nothing but the connection on 0–2 survives.
//!
//! # The hot path, per connection
//!
//! A connection costs the daemon five system calls of its own (six with
//! the `exit` log line written at the default log level): `accept4`;
//! `clone`, during which the daemon sleeps until the child's `execve`;
//! `close` of its copy of the connection (after a `getsockname` when the
//! listener is a wildcard address); a zero-timeout `poll` of the listener,
//! which asks whether the next connection is already waiting; and one
//! `wait4` when the exit is read from the signalfd. The listener is
//! drained up to a budget per loop turn, so one full `poll` serves a
//! burst, and one signalfd `read` and one `wait4` loop serve every exit
//! between two turns. The small `poll` stands in for the accept that would
//! fail with EAGAIN, which costs the kernel a socket and a file allocated
//! and freed again.
//!
//! Everything that does not depend on the connection — the exec path,
//! argv, the service's environment, credentials, the list of signals to
//! reset — is built at load time; only the connection's own variables
//! (`TCPREMOTEIP` and friends) are formatted per connection, into reused
//! buffers. What the daemon is still charged for is mostly the kernel's
//! work in `clone` and in reaping; BENCHMARKS.md compares it with a bare
//! vfork+exec+wait loop.

#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::ffi::c_char;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
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

/// A child that was started.
pub struct Spawned {
    pub pid: Pid,
    /// Set when the child failed before or at `execve` (it exits 127).
    pub failure: Option<Failure>,
}

/// Why a child could not be started at all (nothing was cloned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnError {
    /// `clone` failed (EAGAIN: process limit; ENOMEM).
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

/// Why a child did not reach its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub step: Step,
    pub errno: Errno,
}

/// Buffers reused from one spawn to the next, so the hot path does not
/// allocate once they have grown to size.
pub struct Scratch {
    /// The signals whose disposition is not SIG_DFL in the daemon (Rust's
    /// SIGPIPE ignore, std's stack-overflow handlers, ignores it
    /// inherited): the ones the child must reset. Listing them here once saves the child 60-odd
    /// system calls per connection, made while the daemon is suspended.
    reset: Vec<libc::c_int>,
    /// The per-connection variables, NUL-terminated one after the other.
    vars: Vec<u8>,
    /// Start offsets of each variable in `vars`.
    offsets: Vec<usize>,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    /// The child's stack, reused: only one child runs on it at a time,
    /// since the daemon is suspended until that child has exec'd.
    stack: Vec<u8>,
}

/// The child's stack: the child path uses a few hundred bytes.
const CHILD_STACK: usize = 64 * 1024;

impl Scratch {
    /// The signals to reset are read from the dispositions as they are
    /// now. Nothing in the daemon changes a disposition afterwards;
    /// `refresh_signals` is called on every reload all the same. (Not
    /// `Default`: it reads the process's signal state.)
    #[allow(clippy::new_without_default)]
    pub fn new() -> Scratch {
        Scratch {
            reset: non_default_signals(),
            vars: Vec::new(),
            offsets: Vec::new(),
            argv: Vec::new(),
            envp: Vec::new(),
            stack: Vec::new(),
        }
    }

    /// Re-reads the dispositions (see [`Scratch::new`]).
    pub fn refresh_signals(&mut self) {
        self.reset = non_default_signals();
    }
}

/// Signals 1..=64 whose disposition is not SIG_DFL, read with the raw
/// system call (glibc hides 32 and 33).
fn non_default_signals() -> Vec<libc::c_int> {
    let mut out = Vec::new();
    for sig in 1..65 {
        // The kernel's struct sigaction starts with the handler (0 = SIG_DFL).
        let mut old = [0u64; 4];
        // SAFETY: reads one disposition into `old`, which is large enough
        // for the kernel's struct sigaction; changes nothing.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                std::ptr::null::<u64>(),
                old.as_mut_ptr(),
                8usize,
            )
        };
        if rc == 0 && old[0] != libc::SIG_DFL as u64 {
            out.push(sig);
        }
    }
    out
}

/// Starts `svc`'s handler on `conn`. The connection is closed in the
/// parent when the caller drops `conn`.
pub fn spawn(svc: &Service, conn: &Conn, scratch: &mut Scratch) -> Result<Spawned, SpawnError> {
    let img = &svc.image;

    // --- Parent, before clone: build everything the child will use. ---
    build_vars(scratch, conn);
    scratch.argv.clear();
    scratch.argv.extend(img.argv.iter().map(|a| a.as_ptr()));
    scratch.argv.push(std::ptr::null());
    scratch.envp.clear();
    scratch.envp.extend(img.env.iter().map(|e| e.as_ptr()));
    let base = scratch.vars.as_ptr();
    // SAFETY: every offset is < vars.len() and points at the start of a
    // NUL-terminated string written by build_vars; `vars` is not modified
    // again until the next spawn, after this child has exec'd or exited.
    scratch.envp.extend(
        scratch
            .offsets
            .iter()
            .map(|&o| unsafe { base.add(o) } as *const c_char),
    );
    scratch.envp.push(std::ptr::null());
    if scratch.stack.len() != CHILD_STACK {
        scratch.stack = vec![0u8; CHILD_STACK];
    }
    // The stack grows down on every architecture Linux runs this on;
    // clone() wants its top, 16-byte aligned.
    let top = scratch.stack.as_mut_ptr_range().end as usize & !15;

    let args = ChildArgs {
        path: img.path.as_ptr(),
        argv: scratch.argv.as_ptr(),
        envp: scratch.envp.as_ptr(),
        conn: conn.stream.as_raw_fd(),
        umask: img.umask as libc::mode_t,
        cred: svc
            .cred
            .as_ref()
            .map(|c| (c.uid, c.gid, c.groups.as_ptr(), c.groups.len())),
        reset: scratch.reset.as_ptr(),
        reset_len: scratch.reset.len(),
        failed_step: UnsafeCell::new(0),
        failed_errno: UnsafeCell::new(0),
    };

    // SAFETY: `child_entry` runs on its own stack, touches only `args` (alive
    // until clone returns: CLONE_VFORK suspends us until the child has
    // exec'd or exited) and calls only async-signal-safe functions.
    let pid = unsafe {
        libc::clone(
            child_entry,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &args as *const ChildArgs as *mut libc::c_void,
        )
    };
    let clone_errno = Errno::last();
    if pid < 0 {
        return Err(SpawnError::Fork(clone_errno));
    }
    // The child has exec'd or exited: its failure slot is final.
    let step = args.failed_step.into_inner();
    let failure = Step::from_u8(step).map(|step| Failure {
        step,
        errno: Errno::from_raw(args.failed_errno.into_inner()),
    });
    Ok(Spawned {
        pid: Pid::from_raw(pid),
        failure,
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
/// in the child except through these pointers).
struct ChildArgs {
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    conn: RawFd,
    umask: libc::mode_t,
    /// uid, gid, groups pointer and length.
    cred: Option<(u32, u32, *const u32, usize)>,
    /// The signals to reset to SIG_DFL.
    reset: *const libc::c_int,
    reset_len: usize,
    /// Written by the child on failure (a `Step`, 0 for none), read by the
    /// parent once clone has returned.
    failed_step: UnsafeCell<u8>,
    failed_errno: UnsafeCell<i32>,
}

/// The entry point clone() calls in the child.
extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` the parent passed to clone, alive and
    // unmodified while we run (the parent is suspended).
    unsafe { child_main(&*(arg as *const ChildArgs)) }
}

/// The child half: runs between clone and exec. Never returns.
///
/// # Safety
/// Only call in a child started by `spawn`'s clone, with `a`'s pointers
/// valid (they point into the suspended parent's memory).
unsafe fn child_main(a: &ChildArgs) -> ! {
    // 1. Every disposition that is not SIG_DFL back to SIG_DFL (the parent
    //    listed them: see `Scratch::reset`), through the raw system call:
    //    glibc's sigaction() refuses signals 32 and 33 (its own), but a
    //    parent may have left them ignored, and an ignore survives execve.
    //    A zeroed kernel `struct sigaction` is SIG_DFL with no flags and an
    //    empty mask.
    let dfl = [0u64; 4];
    for i in 0..a.reset_len {
        libc::syscall(
            libc::SYS_rt_sigaction,
            *a.reset.add(i),
            dfl.as_ptr(),
            std::ptr::null_mut::<u64>(),
            8usize,
        );
    }
    // 2. Empty the mask (it survives execve). Pending signals are not
    //    inherited across clone, so nothing fires here.
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

    // 3. Own session: the handler and its children form one process group
    //    that the daemon can signal, detached from the daemon's terminal.
    if libc::setsid() < 0 {
        fail(a, Step::Setsid);
    }

    // 4. The connection on 0, 1, 2. dup2 clears FD_CLOEXEC on the copies.
    //    The accepted socket is never 0–2 (std reopens closed stdio on
    //    /dev/null at start), but if it were, dup2(fd, fd) would keep its
    //    CLOEXEC flag, so move it out of the way first.
    let mut conn = a.conn;
    if conn <= 2 {
        conn = libc::fcntl(conn, libc::F_DUPFD_CLOEXEC, 3);
        if conn < 0 {
            fail(a, Step::Dup);
        }
    }
    for target in 0..3 {
        if libc::dup2(conn, target) < 0 {
            fail(a, Step::Dup);
        }
    }

    // 5. Nothing else may reach the handler: mark every descriptor from 3
    //    up close-on-exec (close_range(2), Linux 5.11). The descriptor table
    //    is the child's own copy (no CLONE_FILES): this never touches the
    //    daemon's descriptors.
    if libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) < 0 {
        fail(a, Step::CloseFds);
    }

    // 6. Working directory and file-creation mask.
    if libc::chdir(c"/".as_ptr()) < 0 {
        fail(a, Step::Chdir);
    }
    libc::umask(a.umask);

    // 7. Drop privileges: supplementary groups, then gid, then uid (after
    //    setuid we could no longer change groups), then verify that none of
    //    the real, effective or saved ids kept the old value.
    if let Some((uid, gid, groups, ngroups)) = a.cred {
        if libc::setgroups(ngroups, groups) < 0 {
            fail(a, Step::Setgroups);
        }
        if libc::setgid(gid) < 0 {
            fail(a, Step::Setgid);
        }
        if libc::setuid(uid) < 0 {
            fail(a, Step::Setuid);
        }
        let (mut r, mut e, mut s) = (0, 0, 0);
        libc::getresuid(&mut r, &mut e, &mut s);
        let (mut rg, mut eg, mut sg) = (0, 0, 0);
        libc::getresgid(&mut rg, &mut eg, &mut sg);
        if r != uid || e != uid || s != uid || rg != gid || eg != gid || sg != gid {
            *libc::__errno_location() = libc::EPERM;
            fail(a, Step::VerifyCred);
        }
    }

    // 8. Exec. It only returns on failure.
    libc::execve(a.path, a.argv, a.envp);
    fail(a, Step::Exec)
}

/// Records `(step, errno)` for the parent and exits 127. Async-signal-safe.
unsafe fn fail(a: &ChildArgs, step: Step) -> ! {
    *a.failed_errno.get() = *libc::__errno_location();
    *a.failed_step.get() = step as u8;
    libc::_exit(127)
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
