//! Reaping in O(1) per exit: each child's pidfd in one epoll set, asked
//! for the children that have exited, each reaped through its own pidfd;
//! and the `waitpid(-1)` sweep, kept for the children that have no pidfd
//! in the set, and run only while there are such children.
//!
//! # Why not `waitpid(-1)` on every SIGCHLD
//!
//! `waitpid(-1)` makes the kernel walk the whole list of the caller's
//! children (`do_wait_thread` in kernel/exit.c), once for each exit and
//! once more to learn that nothing is left: with 10,000 long sessions
//! running, every short connection paid two walks of 10,000 entries.
//! `waitid(P_PIDFD)` goes straight to the one child (`do_wait_pid`, "make
//! PIDTYPE_PID case O(1) instead of O(n)", Linux 5.13; on 5.11 and 5.12 it
//! still walks the list), and `epoll_wait` returns only the descriptors
//! that are ready, so a turn's reaping costs what its exits cost.
//!
//! A real-time exit signal per child (so that each exit queues its pid)
//! cannot work for a handler: `execve` resets the exit signal to SIGCHLD
//! (fs/exec.c, `de_thread`: "we have changed execution domain",
//! `tsk->exit_signal = SIGCHLD`). And a pidfd per child in the poll set
//! would make every `poll` O(n): the set holds them in one epoll instance
//! instead.
//!
//! # What triggers it
//!
//! Every exit of a child still raises SIGCHLD (`do_notify_parent` wakes the
//! pidfd's waiters and sends the signal in the same call), and the
//! signalfd must be read anyway, so SIGCHLD is what asks the set: one
//! `epoll_wait` with a zero timeout per wake-up, no extra poll source (an
//! exit between that read and the `epoll_wait` is reaped early; its
//! SIGCHLD then finds the set empty, which costs one call). The sweep
//! runs on the same SIGCHLD only while [`Reaper::unwatched`] is not empty
//! or inherited children could not be listed.
//!
//! While fewer than `MANY_FROM` (64) handlers run, they are started
//! without pidfds and swept, by choice: the sweep then walks a few
//! children, and a pidfd costs more than that (`Children::many`).
//!
//! # What the set can miss, and the sweep catches
//!
//! * A handler whose pidfd could not be made. CLONE_PIDFD allocates the
//!   descriptor inside `clone` (`copy_process`, kernel/fork.c), so at the
//!   descriptor limit (EMFILE, ENFILE) the whole clone fails; `spawn`
//!   then clones again without it, and the child is unwatched. (CLONE_PIDFD
//!   is Linux 5.2, pidfd polling 5.3, `waitid(P_PIDFD)` 5.4: the daemon
//!   needs 5.11 anyway, see `lib.rs`.)
//! * A pidfd the epoll set would not take (ENOMEM, or the user's
//!   `max_user_watches`), or no epoll instance at all.
//! * A pidfd that reads ready while `waitid` finds nothing to reap (a
//!   traced child: its tracer sees the exit first). It leaves the set at
//!   once, so it cannot make the loop spin, and is swept.
//! * The reload's resolver, and children inherited across the `execve`
//!   that started the daemon (listed from
//!   `/proc/self/task/PID/children`), are watched through `pidfd_open`;
//!   when that fails they are unwatched. When the list cannot be read
//!   (a kernel without CONFIG_PROC_CHILDREN) and the daemon has children
//!   at start, every SIGCHLD sweeps until the kernel says the daemon has
//!   no child at all (ECHILD).
//!
//! An exited child's pidfd stays readable after the child is reaped (the
//! benchmark issue's prototype spun on one): whoever reaps a child — this
//! set or the sweep — closes its pidfd at once, which also takes it out
//! of the epoll set, since the daemon holds the only reference to it.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::shrink::Shrink;

use super::Status;

/// Events taken from the epoll set per `epoll_wait`; more are taken by
/// calling it again.
const EVENTS: usize = 64;

/// The children to reap and how: by pidfd, or by the sweep.
pub(super) struct Reaper {
    /// One epoll instance holding the pidfd of every watched child, the
    /// pid as its data; `None` if it could not be made (then every child
    /// is unwatched).
    epoll: Option<Epoll>,
    /// Each watched child's pidfd, by pid: for `waitid`, and closed when
    /// the child is reaped.
    pidfds: HashMap<Pid, OwnedFd>,
    /// Children, handlers or not, that have no pidfd in the set: while
    /// there is one, SIGCHLD sweeps.
    unwatched: HashSet<Pid>,
    /// Children at start that could not be listed: SIGCHLD sweeps until
    /// the daemon has no child at all.
    inherited_unknown: bool,
    /// `epoll_wait`'s buffer, reused.
    events: Vec<EpollEvent>,
    /// Sweeps made so far, for the tests.
    sweeps: u64,
}

impl Default for Reaper {
    fn default() -> Self {
        Reaper {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).ok(),
            pidfds: HashMap::new(),
            unwatched: HashSet::new(),
            inherited_unknown: false,
            events: vec![EpollEvent::empty(); EVENTS],
            sweeps: 0,
        }
    }
}

impl Reaper {
    /// Starts watching child `pid` through `pidfd`; without one (or if the
    /// set will not take it), the sweep reaps it.
    pub(super) fn watch(&mut self, pid: Pid, pidfd: Option<OwnedFd>) {
        self.forget(pid);
        if let (Some(ep), Some(fd)) = (&self.epoll, pidfd) {
            let ev = EpollEvent::new(EpollFlags::EPOLLIN, pid.as_raw() as u32 as u64);
            if ep.add(fd.as_fd(), ev).is_ok() {
                self.pidfds.insert(pid, fd);
                return;
            }
        }
        self.unwatched.insert(pid);
    }

    /// Gives every unwatched child the pidfd `open` makes for it, if it
    /// makes one.
    pub(super) fn watch_unwatched(&mut self, mut open: impl FnMut(Pid) -> Option<OwnedFd>) {
        let pids: Vec<Pid> = self.unwatched.iter().copied().collect();
        for pid in pids {
            if let Some(fd) = open(pid) {
                self.watch(pid, Some(fd));
            }
        }
    }

    /// Children at start could not be listed (see the module doc).
    pub(super) fn set_inherited_unknown(&mut self) {
        self.inherited_unknown = true;
    }

    /// Watched and unwatched children: (by pidfd, by the sweep).
    pub(super) fn counts(&self) -> (usize, usize) {
        (self.pidfds.len(), self.unwatched.len())
    }

    pub(super) fn sweeps(&self) -> u64 {
        self.sweeps
    }

    /// Reaps every exited child into `out`: those the epoll set reports,
    /// then, if any child is unwatched, everything `waitpid(-1)` finds.
    pub(super) fn reap(&mut self, out: &mut Vec<(Pid, Status)>) {
        self.reap_ready(out);
        if !self.unwatched.is_empty() || self.inherited_unknown {
            self.sweep(out);
        }
        self.pidfds.shrink_after_burst();
        self.unwatched.shrink_after_burst();
    }

    /// The watched children that have exited, each reaped by its pidfd.
    fn reap_ready(&mut self, out: &mut Vec<(Pid, Status)>) {
        let Some(ep) = &self.epoll else {
            return;
        };
        loop {
            let n = match ep.wait(&mut self.events, EpollTimeout::ZERO) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                // EBADF/EFAULT/EINVAL cannot happen on our own set.
                Err(_) => return,
            };
            for ev in &self.events[..n] {
                let pid = Pid::from_raw(ev.data() as u32 as i32);
                let Some(fd) = self.pidfds.get(&pid) else {
                    continue;
                };
                let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG;
                match waitid(Id::PIDFd(fd.as_fd()), flags).map(status_of) {
                    Ok(Some(status)) => {
                        self.pidfds.remove(&pid);
                        out.push((pid, status));
                    }
                    // Reaped elsewhere: nothing left to wait for.
                    Err(Errno::ECHILD) => {
                        self.pidfds.remove(&pid);
                    }
                    // Ready but nothing to reap (see the module doc): it
                    // leaves the set, so that it cannot spin, and is swept.
                    _ => {
                        if let Some(fd) = self.pidfds.remove(&pid) {
                            let _ = ep.delete(fd.as_fd());
                        }
                        self.unwatched.insert(pid);
                    }
                }
            }
            if n < self.events.len() {
                return;
            }
        }
    }

    /// `waitpid(-1, WNOHANG)` until nothing is left; a watched child it
    /// reaps has its pidfd closed.
    fn sweep(&mut self, out: &mut Vec<(Pid, Status)>) {
        self.sweeps += 1;
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => return,
                Ok(ws) => {
                    if let Some(status) = status_of(ws) {
                        let pid = ws.pid().unwrap_or(Pid::from_raw(0));
                        self.forget(pid);
                        out.push((pid, status));
                    }
                    // Stopped/continued are not asked for.
                }
                Err(Errno::ECHILD) => {
                    // No child at all: none is unwatched or inherited.
                    self.inherited_unknown = false;
                    self.unwatched.clear();
                    return;
                }
                Err(Errno::EINTR) => continue,
                Err(_) => return,
            }
        }
    }

    /// `pid` was reaped or replaced: closes its pidfd (which takes it out
    /// of the epoll set) or drops it from the unwatched.
    fn forget(&mut self, pid: Pid) {
        if self.pidfds.remove(&pid).is_none() {
            self.unwatched.remove(&pid);
        }
    }
}

/// How an exited child ended; `None` for anything that is not an exit.
fn status_of(ws: WaitStatus) -> Option<Status> {
    match ws {
        WaitStatus::Exited(_, code) => Some(Status::Code(code)),
        WaitStatus::Signaled(_, sig, _) => Some(Status::Signal(sig)),
        _ => None,
    }
}

/// The daemon's children as it starts, before it has started any: those
/// inherited across the `execve` that started it. `None` when they cannot
/// be listed (no CONFIG_PROC_CHILDREN) and the kernel says there are some.
pub(super) fn inherited() -> Option<Vec<Pid>> {
    let me = std::process::id();
    match std::fs::read_to_string(format!("/proc/self/task/{me}/children")) {
        Ok(text) => Some(
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .map(Pid::from_raw)
                .collect(),
        ),
        Err(_) => {
            // WNOWAIT: look without reaping.
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            match waitid(Id::All, flags) {
                Err(Errno::ECHILD) => Some(Vec::new()),
                _ => None,
            }
        }
    }
}
