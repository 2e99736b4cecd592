//! The running handlers: pid → [`Child`], reaping them into [`Exit`]s,
//! and their deadlines.
//!
//! Reaping runs on every SIGCHLD (deliveries coalesce, so one signal may
//! stand for many exits). From [`MANY_FROM`] running handlers on, each
//! child's pidfd sits in one epoll set, which names the children that have
//! exited, each reaped through its own pidfd; the `waitpid(-1)` sweep runs
//! only while some child has no pidfd there (below that count, by choice).
//! Both, and what the set can miss, are in `children/reaper.rs`.
//!
//! The deadlines (a handler's `timeout`, the shutdown's SIGTERM, the
//! SIGKILL after the grace, the same for the groups below) are kept in a
//! heap ([`crate::timers`]): a turn looks at the nearest one and pops
//! those due, never walking the handlers. Each entry names the handler by
//! pid and connection id; the handler's own `term_at`/`kill_at` say which
//! deadline is meant, and an entry that disagrees with them (the handler
//! exited, or its deadline moved) is stale and ignored. Stale entries are
//! dropped in one pass when they outnumber the live ones.
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

mod reaper;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::plan::{Client, Service, Source};
use crate::shrink::{self, Shrink};
use crate::timers::Timers;
use reaper::Reaper;

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
    /// Groups of reaped handlers with a signal still due, by group id;
    /// few, and each only until its SIGKILL.
    groups: HashMap<Pid, Group>,
    /// Every `term_at`/`kill_at` of a handler or group, nearest first;
    /// stale entries included (see the module documentation).
    timers: Timers<Due>,
    /// The pidfds and the sweep.
    reaper: Reaper,
    /// The reaper's output, a buffer reused every turn.
    reaped: Vec<(Pid, Status)>,
    /// Whether many handlers run ([`Children::many`]).
    many: bool,
}

/// From this many running handlers on, children get pidfds (and the sweep
/// stops); below [`FEW_UNDER`] again, they do not.
pub const MANY_FROM: usize = 64;

/// See [`MANY_FROM`]: the gap keeps a count that hovers from switching
/// back and forth.
pub const FEW_UNDER: usize = 32;

/// What a heap entry is for: the handler (or, once it is reaped, its
/// group) with this pid and this connection id. The connection id makes an
/// entry of a reaped handler stale for a new handler given the same pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Due {
    pid: Pid,
    conn_id: u64,
}

/// Stale heap entries allowed beyond the live ones before they are
/// dropped in one pass: with this slack and a factor of two, the pass
/// costs O(1) per stale entry, amortised.
const STALE_SLACK: usize = 64;

impl Children {
    /// Adds a handler started without a pidfd (the sweep reaps it).
    pub fn insert(&mut self, child: Child) {
        self.insert_watched(child, None);
    }

    /// Adds a handler, reaped through `pidfd` when it has one (see
    /// `spawn::Spawner::take_pidfd`).
    pub fn insert_watched(&mut self, child: Child, pidfd: Option<OwnedFd>) {
        // A group entry under this number is stale: the number was free to
        // hand out, so that group has no member left.
        self.groups.remove(&child.pid);
        let due = Due {
            pid: child.pid,
            conn_id: child.conn_id,
        };
        for at in [child.term_at, child.kill_at].into_iter().flatten() {
            self.timers.push(at, due);
        }
        self.reaper.watch(child.pid, pidfd);
        self.by_pid.insert(child.pid, child);
    }

    /// A child that is not a handler (the reload's resolver): reaped like
    /// one, through `pidfd` when it has one, and dropped without an [`Exit`].
    pub fn adopt(&mut self, pid: Pid, pidfd: Option<OwnedFd>) {
        self.reaper.watch(pid, pidfd);
    }

    /// Adopts the children inherited across the `execve` that started the
    /// daemon, each with the pidfd `open` makes for it. Call once, before
    /// any child is started.
    pub fn adopt_inherited(&mut self, mut open: impl FnMut(Pid) -> Option<OwnedFd>) {
        match reaper::inherited() {
            Some(pids) => {
                for pid in pids {
                    let fd = open(pid);
                    self.reaper.watch(pid, fd);
                }
            }
            None => self.reaper.set_inherited_unknown(),
        }
    }

    /// Whether the next handlers should be started with a pidfd
    /// (`spawn::Spawner::set_many`). While few run, the sweep reaps them
    /// and walks only those few, and a pidfd would cost more than it saves.
    /// When their number reaches [`MANY_FROM`], the ones without a pidfd
    /// get one from `open` (`pidfd_open`), so that the sweep stops at once.
    pub fn many(&mut self, open: impl FnMut(Pid) -> Option<OwnedFd>) -> bool {
        if !self.many && self.by_pid.len() >= MANY_FROM {
            self.many = true;
            self.reaper.watch_unwatched(open);
        } else if self.many && self.by_pid.len() < FEW_UNDER {
            self.many = false;
        }
        self.many
    }

    /// Children reaped through a pidfd and by the sweep: (watched,
    /// unwatched), and the sweeps made so far.
    pub fn reaping(&self) -> ((usize, usize), u64) {
        (self.reaper.counts(), self.reaper.sweeps())
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

    /// Reaps every exited child into `out`. Children that are not handlers
    /// (the resolver, inherited ones, any the daemon never forked) are
    /// reaped and dropped: a zombie must never stay.
    pub fn reap(&mut self, now: Instant, out: &mut Vec<Exit>) {
        let mut reaped = std::mem::take(&mut self.reaped);
        self.reaper.reap(&mut reaped);
        for (pid, status) in reaped.drain(..) {
            if let Some(child) = self.by_pid.remove(&pid) {
                self.exited(child, status, now, out);
            }
        }
        reaped.shrink_after_burst();
        self.reaped = reaped;
        // After a burst of sessions, the tables give their memory back.
        self.by_pid.shrink_after_burst();
        self.groups.shrink_after_burst();
    }

    /// A handler was reaped: its [`Exit`], and its group kept if a signal
    /// was still due to it (its heap entries then stand for the group).
    fn exited(&mut self, child: Child, status: Status, now: Instant, out: &mut Vec<Exit>) {
        let pid = child.pid;
        let duration = now.saturating_duration_since(child.started);
        // Signal 0 only asks; ESRCH: no member left.
        if (child.term_at.is_some() || child.kill_at.is_some())
            && killpg(pid, None) != Err(Errno::ESRCH)
        {
            self.groups.insert(
                pid,
                Group {
                    pgid: pid,
                    service: Arc::clone(&child.service),
                    conn_id: child.conn_id,
                    started: child.started,
                    term_at: child.term_at,
                    kill_at: child.kill_at,
                    terminated_for: child.terminated_for,
                },
            );
        }
        out.push(Exit {
            child,
            status,
            duration,
        });
    }

    /// The nearest SIGTERM/SIGKILL deadline, of a handler or a group: the
    /// heap's top, which [`fire_deadlines`](Self::fire_deadlines) leaves
    /// live (an entry made stale since then only wakes the loop once).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|(at, _)| at)
    }

    /// Whether heap entry (`at`, `due`) is still meant.
    fn live(&self, at: Instant, due: Due) -> bool {
        LiveView {
            by_pid: &self.by_pid,
            groups: &self.groups,
        }
        .live(at, due)
    }

    /// Sets every handler and group not already on its way to SIGKILL to be
    /// sent SIGTERM now, for `why`.
    pub fn terminate_all(&mut self, now: Instant, why: Termination) {
        for c in self.by_pid.values_mut() {
            if c.kill_at.is_none() {
                c.term_at = Some(now);
                c.terminated_for = Some(why);
                self.timers.push(
                    now,
                    Due {
                        pid: c.pid,
                        conn_id: c.conn_id,
                    },
                );
            }
        }
        self.terminate_groups(now, why);
    }

    /// Like [`terminate_all`](Self::terminate_all), for the groups of
    /// reaped handlers only.
    pub fn terminate_groups(&mut self, now: Instant, why: Termination) {
        for g in self.groups.values_mut() {
            if g.kill_at.is_none() {
                g.term_at = Some(now);
                g.terminated_for.get_or_insert(why);
                self.timers.push(
                    now,
                    Due {
                        pid: g.pgid,
                        conn_id: g.conn_id,
                    },
                );
            }
        }
    }

    /// Sends due signals and says which, for the caller to log. A handler
    /// terminated at its `timeout` is marked so. Pops only the due entries
    /// (and the stale ones on top), never walks the handlers.
    pub fn fire_deadlines(&mut self, now: Instant, out: &mut Vec<Fired>) {
        while let Some((at, due)) = self.timers.pop_due(now) {
            if let Some(c) = self.by_pid.get_mut(&due.pid) {
                if c.conn_id == due.conn_id {
                    if let Some(f) = fire_handler(c, at, now, &mut self.timers) {
                        out.push(f);
                    }
                }
            } else if let Some(g) = self.groups.get_mut(&due.pid) {
                if g.conn_id == due.conn_id {
                    let (fired, keep) = fire_group(g, at, now, &mut self.timers);
                    out.extend(fired);
                    if !keep {
                        self.groups.remove(&due.pid);
                    }
                }
            }
        }
        // Leave a live entry on top, for next_deadline.
        while let Some((at, due)) = self.timers.peek() {
            if self.live(at, due) {
                break;
            }
            self.timers.pop();
        }
        let live = self.by_pid.len() + self.groups.len();
        if self.timers.len() > 2 * live + STALE_SLACK {
            let view = LiveView {
                by_pid: &self.by_pid,
                groups: &self.groups,
            };
            self.timers.retain(|at, due| view.live(at, due));
        }
        if let Some(keep) = shrink::target(self.timers.len(), self.timers.capacity()) {
            self.timers.shrink_to(keep);
        }
    }
}

/// The tables that say whether a heap entry is live, borrowed apart from
/// the heap so that the heap can be filtered against them.
struct LiveView<'a> {
    by_pid: &'a HashMap<Pid, Child>,
    groups: &'a HashMap<Pid, Group>,
}

impl LiveView<'_> {
    /// Whether heap entry (`at`, `due`) is still meant: its handler (or
    /// the group of its reaped handler) is there, with that deadline.
    fn live(&self, at: Instant, due: Due) -> bool {
        let meant = |term: Option<Instant>, kill| term == Some(at) || kill == Some(at);
        match self.by_pid.get(&due.pid) {
            Some(c) if c.conn_id == due.conn_id => meant(c.term_at, c.kill_at),
            Some(_) => false,
            None => self
                .groups
                .get(&due.pid)
                .is_some_and(|g| g.conn_id == due.conn_id && meant(g.term_at, g.kill_at)),
        }
    }
}

/// Heap entry `at` came due for handler `c`: sends SIGTERM (and sets the
/// SIGKILL after the grace) or SIGKILL, if `at` is still its deadline.
fn fire_handler(
    c: &mut Child,
    at: Instant,
    now: Instant,
    timers: &mut Timers<Due>,
) -> Option<Fired> {
    let due = Due {
        pid: c.pid,
        conn_id: c.conn_id,
    };
    let sig = if c.term_at == Some(at) {
        c.term_at = None;
        let kill = now + KILL_GRACE;
        c.kill_at = Some(kill);
        timers.push(kill, due);
        Signal::SIGTERM
    } else if c.kill_at == Some(at) {
        c.kill_at = None;
        Signal::SIGKILL
    } else {
        return None;
    };
    signal(c.pid, sig);
    let reason = *c.terminated_for.get_or_insert(Termination::Timeout);
    Some(Fired {
        pid: c.pid,
        signal: sig,
        leader_gone: false,
        service: Arc::clone(&c.service),
        conn_id: c.conn_id,
        reason,
        started: c.started,
    })
}

/// Heap entry `at` came due for the group `g` of a reaped handler: signals
/// it if `at` is still its deadline. Returns what was sent and whether the
/// group is still waited for.
fn fire_group(
    g: &mut Group,
    at: Instant,
    now: Instant,
    timers: &mut Timers<Due>,
) -> (Option<Fired>, bool) {
    let sig = if g.term_at == Some(at) {
        g.term_at = None;
        let kill = now + KILL_GRACE;
        g.kill_at = Some(kill);
        timers.push(
            kill,
            Due {
                pid: g.pgid,
                conn_id: g.conn_id,
            },
        );
        Signal::SIGTERM
    } else if g.kill_at == Some(at) {
        g.kill_at = None;
        Signal::SIGKILL
    } else {
        return (None, true);
    };
    // ESRCH: no member left. EPERM: not ours to signal (a daemon that is
    // not root, handlers that are another user). Either way there is
    // nothing more to do for it.
    if killpg(g.pgid, sig).is_err() {
        return (None, false);
    }
    let fired = Fired {
        pid: g.pgid,
        signal: sig,
        leader_gone: true,
        service: Arc::clone(&g.service),
        conn_id: g.conn_id,
        reason: *g.terminated_for.get_or_insert(Termination::Timeout),
        started: g.started,
    };
    (Some(fired), g.kill_at.is_some() || g.term_at.is_some())
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
