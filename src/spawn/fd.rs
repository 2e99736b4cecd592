//! Descriptor and process-state helpers with `unsafe` inside: the
//! daemon's start (SIGCHLD back to SIG_DFL, inherited descriptors marked
//! close-on-exec or adopted, the signals a child must reset), the reload's
//! resolver fork, the descriptors of a spawn (the slot's copies, the
//! pidfds moved up, `pidfd_open`), and the two socket calls nix has no
//! safe form for (`listen` with a backlog above 4096, `TCP_DEFER_ACCEPT`,
//! used by `listen`). None of them
//! runs in a handler's child; each carries its own safety argument.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::unistd::Pid;

/// Forks a resolver child (`resolver`): a real `fork()`, not the
/// handlers' clone. The child leads a process group of its own (so that
/// the daemon can SIGKILL it and its getent children together), keeps only
/// `out` of the daemon's descriptors (0–2 become /dev/null; the listeners,
/// the signalfd, the daemon's end of the pipe and everything else are
/// closed), runs `body` and exits with its value. Returns the child's pid;
/// the daemon's copy of `out` is closed.
///
/// SAFETY argument. After `fork` the child is a copy of the daemon with one
/// thread, and the daemon has only one (it never starts a thread), so no
/// lock in the copy is held by a thread that no longer exists: the child
/// may run ordinary Rust code, allocation included. It never returns into
/// the daemon's code: it leaves by `_exit`, so no destructor of the
/// daemon's state (listeners, the signalfd) runs, and no buffered output is
/// flushed. Its signal mask is the daemon's (the signals the daemon reads
/// from its signalfd stay blocked in it, so SIGTERM does not stop it; the
/// daemon uses SIGKILL); `std::process::Command` resets the mask and
/// SIGPIPE for the getent it runs.
pub fn fork_resolver(out: OwnedFd, body: impl FnOnce(OwnedFd) -> i32) -> Result<Pid, Errno> {
    // SAFETY: see above; the daemon is single-threaded.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Errno::last());
    }
    if pid > 0 {
        // Also here, so that the group exists before `fork_resolver`
        // returns, whichever of the two runs first.
        let _ = nix::unistd::setpgid(Pid::from_raw(pid), Pid::from_raw(pid));
        drop(out);
        return Ok(Pid::from_raw(pid));
    }
    // The child.
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    let keep = only_descriptor(out.into_raw_fd());
    // SAFETY: `keep` is open and owned by nothing else: `only_descriptor`
    // closed every other copy of it.
    let code = body(unsafe { OwnedFd::from_raw_fd(keep) });
    // SAFETY: `_exit` ends the child without running anything of the daemon's.
    unsafe { libc::_exit(code) }
}

/// In the resolver child: closes every descriptor from 3 up but `keep`
/// (moved to 3 or above first) and puts /dev/null on 0–2. Returns `keep`'s
/// number.
fn only_descriptor(mut keep: RawFd) -> RawFd {
    // SAFETY: plain system calls on descriptor numbers, in a child whose
    // descriptors nothing else uses (it is single-threaded and never
    // returns into the daemon's code).
    unsafe {
        if keep < 3 {
            keep = libc::fcntl(keep, libc::F_DUPFD_CLOEXEC, 3);
            if keep < 0 {
                libc::_exit(125);
            }
        }
        let mut ok = true;
        if keep > 3 {
            ok &= libc::syscall(libc::SYS_close_range, 3u32, (keep - 1) as u32, 0u32) == 0;
        }
        ok &= libc::syscall(libc::SYS_close_range, (keep + 1) as u32, u32::MAX, 0u32) == 0;
        if !ok {
            // Not reached on a kernel the daemon starts on (it needs 5.11 for
            // close_range); kept so that a listener can never stay open here.
            let mut lim: libc::rlimit = std::mem::zeroed();
            let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                lim.rlim_cur.min(1 << 20) as RawFd
            } else {
                1 << 16
            };
            for fd in 3..max {
                if fd != keep {
                    libc::close(fd);
                }
            }
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                if fd != null {
                    libc::dup2(null, fd);
                }
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
    keep
}

/// A pidfd for child `pid` that was not cloned with one (the reload's
/// resolver, children inherited across the daemon's exec), for
/// `children`'s epoll set. Close-on-exec (pidfd_open(2)).
pub fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new
    // descriptor or -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0u32) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a descriptor just made, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sets SIGCHLD back to SIG_DFL in the daemon. An ignore inherited from
/// whatever started it (ignores survive execve) makes the kernel reap every
/// child at once: `waitpid` then fails with ECHILD, so no exit would ever
/// be seen (and the `getent` lookups at load fail with "No child
/// processes"). Call first thing, before anything is started.
pub fn reset_sigchld() -> std::io::Result<()> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: installs SIG_DFL, no handler: no code of ours can run on the
    // signal, and nothing else in the daemon has a disposition for it.
    unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) }
        .map(drop)
        .map_err(std::io::Error::from)
}

/// Blocks of this size and more get a mapping of their own from the
/// allocator, given back to the kernel when they are freed.
pub const MMAP_THRESHOLD: usize = 128 * 1024;

/// Fixes glibc's malloc thresholds at their defaults (blocks of
/// [`MMAP_THRESHOLD`] or more are mapped on their own; the heap's free top
/// is given back past 128 KiB). Left dynamic, glibc raises both to the size
/// of each mapped block freed, up to 32 MiB: after a burst of thousands of
/// handlers, the tables regrown in the next burst came from the heap, and
/// their memory stayed with the daemon when they were cut
/// ([`crate::shrink`]; BENCHMARKS.md, issue 23). glibc refuses a value
/// only above 32 MiB, so its answer is not looked at. Other C libraries
/// are left as they are.
pub fn fix_malloc_thresholds() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets two of malloc's parameters; it touches no
    // memory of ours, and the daemon has one thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
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

/// `listen(fd, backlog)` with any backlog the kernel takes (nix's
/// `Backlog` stops at 4096; the kernel caps the value at
/// `net.core.somaxconn`, which an administrator may have raised). On a
/// listening socket it changes the backlog in place.
pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> Result<(), Errno> {
    // SAFETY: listen reads no memory of ours; the descriptor is borrowed,
    // so it is open for the call.
    let rc = unsafe { libc::listen(fd.as_raw_fd(), backlog) };
    Errno::result(rc).map(drop)
}

/// `TCP_DEFER_ACCEPT` (seconds; 0 is off), which nix has no option for.
pub fn set_tcp_defer_accept(fd: BorrowedFd<'_>, secs: i32) -> Result<(), Errno> {
    // SAFETY: the kernel reads `size_of::<c_int>()` bytes from `&secs`, a
    // live local of that type; the descriptor is borrowed, so it is open.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const i32).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    Errno::result(rc).map(drop)
}

/// Takes ownership of a descriptor passed by the service manager
/// (`LISTEN_FDS`), if it is open. Called once per passed descriptor.
pub fn own_inherited(fd: RawFd) -> Option<OwnedFd> {
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

/// The supplementary groups of a Unix socket's peer, as the kernel saw them
/// when it connected (`SO_PEERGROUPS`, Linux 4.13; nix has no wrapper). A
/// value the kernel holds, unlike `/proc/PID/status`, whose pid may have
/// been reused by the time it is read.
pub fn peer_groups(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Vec<u32>> {
    use std::os::fd::AsRawFd;
    // NGROUPS_MAX is 65536; start small and grow to what the kernel asks.
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    for _ in 0..2 {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` has room for `len` bytes; the kernel writes at
        // most that many and sets `len` to what it wrote, or (ERANGE) to
        // what it needs.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) || n <= groups.len() {
            return Err(e);
        }
        groups.resize(n, 0);
    }
    Err(std::io::Error::from_raw_os_error(libc::ERANGE))
}

/// A close-on-exec copy of `fd` at the lowest free number from 3.
pub(super) fn dup_low(fd: RawFd) -> Result<OwnedFd, Errno> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) makes a new descriptor or fails; it
    // touches no memory.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a descriptor just made, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Moves a pidfd numbered [`LOW_PIDFDS`] or more to the lowest free
/// number from `floor` up, so that the descriptors every child copies
/// (`child::own_descriptor_table`: those below the highest it needs) stay
/// few however many handlers run. A connection is accepted at the lowest
/// free number; without this the pidfds of long sessions would fill the
/// low numbers, and each child would copy (and close at its exec) one
/// descriptor per running handler. Below [`LOW_PIDFDS`] a pidfd stays
/// where it is (two system calls saved per connection while few handlers
/// run), so a child copies at most that many of them. If it cannot be
/// moved (the limit is below `floor`, or full above it), it stays:
/// children then copy more, nothing else changes.
pub(super) fn lift(fd: OwnedFd, floor: RawFd) -> OwnedFd {
    if fd.as_raw_fd() < LOW_PIDFDS || fd.as_raw_fd() >= floor {
        return fd;
    }
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) makes a new descriptor or fails; it
    // touches no memory.
    let high = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor) };
    if high < 0 {
        return fd;
    }
    // SAFETY: a descriptor just made, owned by nothing else; `fd` is
    // closed when it is dropped here.
    unsafe { OwnedFd::from_raw_fd(high) }
}

/// Pidfds below this number are left there by [`lift`].
const LOW_PIDFDS: RawFd = 64;

/// Where [`lift`] puts the pidfds: 1024 when the soft descriptor limit
/// leaves room above it for thousands of them (the shipped unit sets
/// 16384), a quarter of the limit below that. What lies below it is the
/// daemon's own: listeners, programs, `/dev/null`, connections on their
/// way to a child, stderr pipes.
pub(super) fn pidfd_floor() -> RawFd {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    if soft >= 4096 {
        1024
    } else {
        (soft / 4).max(16) as RawFd
    }
}

/// Signals 1..=64 whose disposition is not SIG_DFL, read with the raw
/// system call (glibc hides 32 and 33).
pub(super) fn non_default_signals() -> Vec<libc::c_int> {
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
