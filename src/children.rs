//! The running handlers: pid → [`Child`], and reaping them into [`Exit`]s.
//!
//! Reaping drains `waitpid(-1, WNOHANG)` until nothing is left, on every
//! SIGCHLD: deliveries coalesce, so one signal may stand for many exits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::plan::Service;

/// One running handler.
pub struct Child {
    pub pid: Pid,
    /// The service as it was when the handler started; a reload does not
    /// change it.
    pub service: Arc<Service>,
    pub conn_id: u64,
    pub peer: SocketAddr,
    /// The `max_per_source` slot it holds, released when it is reaped.
    pub source: IpNet,
    pub started: Instant,
    /// When to send SIGTERM (the service's `timeout`, or shutdown).
    pub term_at: Option<Instant>,
    /// When to send SIGKILL (2 s after SIGTERM).
    pub kill_at: Option<Instant>,
    /// Why it was terminated, if the daemon did it (`timeout`, `shutdown`).
    pub terminated_for: Option<&'static str>,
}

/// How a reaped handler ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Code(i32),
    Signal(Signal),
}

/// A reaped handler.
pub struct Exit {
    pub child: Child,
    pub status: Status,
    pub duration: Duration,
}

/// The grace between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// The table of running handlers.
#[derive(Default)]
pub struct Children {
    by_pid: HashMap<Pid, Child>,
}

impl Children {
    pub fn insert(&mut self, child: Child) {
        self.by_pid.insert(child.pid, child);
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }

    pub fn get_mut(&mut self, pid: Pid) -> Option<&mut Child> {
        self.by_pid.get_mut(&pid)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Child> {
        self.by_pid.values()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Child> {
        self.by_pid.values_mut()
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
                out.push(Exit {
                    child,
                    status,
                    duration,
                });
            }
        }
    }

    /// The nearest SIGTERM/SIGKILL deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_pid
            .values()
            .flat_map(|c| [c.term_at, c.kill_at])
            .flatten()
            .min()
    }

    /// Sends due signals. Returns the children that got SIGTERM or SIGKILL
    /// now, for the caller to log.
    pub fn fire_deadlines(&mut self, now: Instant, out: &mut Vec<(Pid, Signal)>) {
        for c in self.by_pid.values_mut() {
            if c.term_at.is_some_and(|t| t <= now) {
                c.term_at = None;
                signal(c.pid, Signal::SIGTERM);
                c.kill_at = Some(now + KILL_GRACE);
                out.push((c.pid, Signal::SIGTERM));
            } else if c.kill_at.is_some_and(|t| t <= now) {
                c.kill_at = None;
                signal(c.pid, Signal::SIGKILL);
                out.push((c.pid, Signal::SIGKILL));
            }
        }
    }
}

/// Signals a handler's process group (it is a session leader, so its
/// children go too), falling back to the pid alone if the group is gone.
/// The pid cannot have been reused: it is not reaped yet.
pub fn signal(pid: Pid, sig: Signal) {
    if killpg(pid, sig).is_err() {
        let _ = nix::sys::signal::kill(pid, sig);
    }
}
