//! The running handlers: pid → [`Child`], and reaping them into [`Exit`]s.
//!
//! Reaping drains `waitpid(-1, WNOHANG)` until nothing is left, on every
//! SIGCHLD: deliveries coalesce, so one signal may stand for many exits.
//!
//! # A handler is its process group
//!
//! Every handler calls `setsid` before its exec, so its pid is also its
//! process group's and its session's id, and everything it starts belongs
//! to that group unless it leaves. The timeout and shutdown signals go to
//! the group (`killpg`). A handler may be reaped while members of its group
//! live on (a background job holding the client's socket); if a signal was
//! still due to the handler, its group is kept as a [`Group`] until that
//! signal has been sent, SIGKILL included, and the daemon's shutdown waits
//! for it. A group that has no member left is dropped (`killpg` says
//! ESRCH).
//!
//! *Pid reuse.* A group's number stays allocated while the group has a
//! member, even after its leader is reaped, so a signal to a group with
//! members cannot reach anyone else. Once the last member is gone the number
//! is free again; the entry is then dropped at its next signal (ESRCH), or
//! as soon as a new handler of ours gets that pid. Between the two, another
//! process could take the number and make itself a group leader; the entry
//! lives at most until its SIGKILL (the timeout plus [`KILL_GRACE`]), and
//! pids are handed out in increasing order, so that needs the pid space to
//! wrap around within that time.
//!
//! *What escapes.* A member that calls `setsid` (or `setpgid`) itself
//! leaves the group, and the daemon no longer reaches it. A group kept for
//! a reaped handler only lives on if a signal was due: without `timeout`, a
//! handler that exits normally and leaves a background job behind is not
//! followed. The shipped systemd unit (`KillMode=mixed`) catches both at
//! stop: once the daemon has exited, systemd SIGKILLs whatever is left in
//! the unit's cgroup.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::plan::{Client, Service, Source};

/// Why the daemon terminated a handler or its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// The service's `timeout` passed.
    Timeout,
    /// The daemon is shutting down.
    Shutdown,
}

impl Termination {
    /// The word the log's `reason=` field shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Termination::Timeout => "timeout",
            Termination::Shutdown => "shutdown",
        }
    }
}

impl std::fmt::Display for Termination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One running handler.
pub struct Child {
    /// The handler's pid, also its process group's id.
    pub pid: Pid,
    /// The service as it was when the handler started; a reload does not
    /// change it.
    pub service: Arc<Service>,
    /// The connection id the log lines of this handler carry.
    pub conn_id: u64,
    /// The client, for the `exit` line.
    pub peer: Client,
    /// The proxy the connection came through, if any (`proxy=`).
    pub proxy: Option<SocketAddr>,
    /// The `max_per_source` slot it holds, released when it is reaped.
    pub source: Source,
    /// When it was started, for `duration_ms` and the exec back-off.
    pub started: Instant,
    /// When to send SIGTERM (the service's `timeout`, or shutdown).
    pub term_at: Option<Instant>,
    /// When to send SIGKILL (2 s after SIGTERM).
    pub kill_at: Option<Instant>,
    /// Why it was terminated, if the daemon did it.
    pub terminated_for: Option<Termination>,
}

/// How a reaped handler ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Code(i32),
    Signal(Signal),
}

/// A reaped handler.
pub struct Exit {
    /// The handler as it ran.
    pub child: Child,
    /// How it ended.
    pub status: Status,
    /// How long it ran.
    pub duration: Duration,
}

/// The grace between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// The process group of a reaped handler that still had a signal due,
/// while that group may have members (see the module documentation).
pub struct Group {
    /// The reaped handler's pid: the group's id.
    pub pgid: Pid,
    /// The service the handler ran for.
    pub service: Arc<Service>,
    /// The handler's connection id.
    pub conn_id: u64,
    /// When the handler started, for the log's `age_ms`.
    pub started: Instant,
    /// When to send SIGTERM to the group (the handler's `timeout`, or
    /// shutdown).
    pub term_at: Option<Instant>,
    /// When to send SIGKILL to the group.
    pub kill_at: Option<Instant>,
    /// Why the group is being signalled (the handler's, or shutdown).
    pub terminated_for: Option<Termination>,
}

/// A signal just sent, for the caller to log.
pub struct Fired {
    /// The handler, or the group of a reaped one.
    pub pid: Pid,
    /// SIGTERM or SIGKILL.
    pub signal: Signal,
    /// True when the handler is gone and only its group was signalled.
    pub leader_gone: bool,
    /// The service of the handler.
    pub service: Arc<Service>,
    /// The handler's connection id.
    pub conn_id: u64,
    /// Why it was signalled.
    pub reason: Termination,
    /// When the handler started, for `age_ms`.
    pub started: Instant,
}

/// The table of running handlers.
#[derive(Default)]
pub struct Children {
    /// The running handlers.
    by_pid: HashMap<Pid, Child>,
    /// Groups of reaped handlers with a signal still due; few, and each
    /// only until its SIGKILL.
    groups: Vec<Group>,
}

impl Children {
    pub fn insert(&mut self, child: Child) {
        // A group entry under this number is stale: the number was free to
        // hand out, so that group has no member left.
        self.groups.retain(|g| g.pgid != child.pid);
        self.by_pid.insert(child.pid, child);
    }

    /// Whether groups of reaped handlers still wait for a signal.
    pub fn has_groups(&self) -> bool {
        !self.groups.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Child> {
        self.by_pid.values()
    }

    /// Reaps every exited child into `out`. Unknown pids (which the daemon
    /// never forked) are reaped and dropped: a zombie must never stay.
    pub fn reap(&mut self, now: Instant, out: &mut Vec<Exit>) {
        loop {
            let status = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Status::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Status::Signal(sig)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                // Stopped/continued are not asked for; anything else is not ours.
                Ok(_) => continue,
                Err(_) => return,
            };
            let (pid, status) = status;
            if let Some(child) = self.by_pid.remove(&pid) {
                let duration = now.saturating_duration_since(child.started);
                // A signal was still due: keep the group while it has
                // members (signal 0 only asks; ESRCH: none left).
                if (child.term_at.is_some() || child.kill_at.is_some())
                    && killpg(pid, None) != Err(Errno::ESRCH)
                {
                    self.groups.push(Group {
                        pgid: pid,
                        service: Arc::clone(&child.service),
                        conn_id: child.conn_id,
                        started: child.started,
                        term_at: child.term_at,
                        kill_at: child.kill_at,
                        terminated_for: child.terminated_for,
                    });
                }
                out.push(Exit {
                    child,
                    status,
                    duration,
                });
            }
        }
    }

    /// The nearest SIGTERM/SIGKILL deadline, of a handler or a group.
    pub fn next_deadline(&self) -> Option<Instant> {
        let handlers = self.by_pid.values().flat_map(|c| [c.term_at, c.kill_at]);
        let groups = self.groups.iter().flat_map(|g| [g.term_at, g.kill_at]);
        handlers.chain(groups).flatten().min()
    }

    /// Sets every handler and group not already on its way to SIGKILL to be
    /// sent SIGTERM now, for `why`.
    pub fn terminate_all(&mut self, now: Instant, why: Termination) {
        for c in self.by_pid.values_mut() {
            if c.kill_at.is_none() {
                c.term_at = Some(now);
                c.terminated_for = Some(why);
            }
        }
        self.terminate_groups(now, why);
    }

    /// Like [`terminate_all`](Self::terminate_all), for the groups of
    /// reaped handlers only.
    pub fn terminate_groups(&mut self, now: Instant, why: Termination) {
        for g in &mut self.groups {
            if g.kill_at.is_none() {
                g.term_at = Some(now);
                g.terminated_for.get_or_insert(why);
            }
        }
    }

    /// Sends due signals and says which, for the caller to log. A handler
    /// terminated at its `timeout` is marked so.
    pub fn fire_deadlines(&mut self, now: Instant, out: &mut Vec<Fired>) {
        for c in self.by_pid.values_mut() {
            let sig = if c.term_at.is_some_and(|t| t <= now) {
                c.term_at = None;
                c.kill_at = Some(now + KILL_GRACE);
                Signal::SIGTERM
            } else if c.kill_at.is_some_and(|t| t <= now) {
                c.kill_at = None;
                Signal::SIGKILL
            } else {
                continue;
            };
            signal(c.pid, sig);
            let reason = *c.terminated_for.get_or_insert(Termination::Timeout);
            out.push(Fired {
                pid: c.pid,
                signal: sig,
                leader_gone: false,
                service: Arc::clone(&c.service),
                conn_id: c.conn_id,
                reason,
                started: c.started,
            });
        }
        self.groups.retain_mut(|g| {
            let sig = if g.term_at.is_some_and(|t| t <= now) {
                g.term_at = None;
                g.kill_at = Some(now + KILL_GRACE);
                Signal::SIGTERM
            } else if g.kill_at.is_some_and(|t| t <= now) {
                g.kill_at = None;
                Signal::SIGKILL
            } else {
                return true;
            };
            // ESRCH: no member left. EPERM: not ours to signal (a daemon
            // that is not root, handlers that are another user). Either
            // way there is nothing more to do for it.
            if killpg(g.pgid, sig).is_err() {
                return false;
            }
            out.push(Fired {
                pid: g.pgid,
                signal: sig,
                leader_gone: true,
                service: Arc::clone(&g.service),
                conn_id: g.conn_id,
                reason: *g.terminated_for.get_or_insert(Termination::Timeout),
                started: g.started,
            });
            g.kill_at.is_some()
        });
    }
}

/// Signals a handler's process group (it is a session leader, so its
/// children go too), falling back to the pid alone when there is no such
/// group: the child has not reached its `setsid` yet (or is stopped before
/// it). The pid cannot have been reused: it is not reaped yet; nor can a
/// group of that number be anyone else's (see the module documentation).
pub fn signal(pid: Pid, sig: Signal) {
    if killpg(pid, sig).is_err() {
        let _ = nix::sys::signal::kill(pid, sig);
    }
}
