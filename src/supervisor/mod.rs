//! The one poll loop: start, each turn, the poll set and its deadlines,
//! and the end of the drain. The supervisor owns all mutable state
//! (listeners, running handlers, the service table, the logger); its other
//! jobs live beside this file: `conn` (accept, decide, spawn), `reap`
//! (handlers ending, the start of the drain), `reload`, `status`, `proxy`
//! (PROXY headers awaited), `services` (the pure per-service state).
//!
//! Each turn: poll (timeout = the nearest deadline, no periodic wake-ups)
//! → read the signalfd and act on it → on SIGCHLD, reap every exited child
//! → fire due deadlines → PROXY headers → accept, with a budget per listener so
//! one busy port cannot starve the others. A service at capacity simply has
//! its listeners left out of the poll set: the kernel backlog holds its
//! clients and nothing is dropped.

mod conn;
mod control;
mod handover;
mod proxy;
mod reap;
mod reload;
mod runnable;
mod services;
mod setup;
mod status;
mod stderr;

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::admit::{Backoff, Pause};
use crate::children::{Children, Exit, Fired};
use crate::listen::{self, Listener};
use crate::log::Logger;
use crate::notify;
use crate::plan::{Endpoint, Level, Plan, SockOpts};
use crate::resolver;
use crate::signals::Signals;
use crate::spawn::Spawner;

use services::ServiceTable;
use stderr::StderrPipe;

/// Connections accepted from one listener in one loop turn at most.
const ACCEPT_BUDGET: usize = 64;

/// How soon the loop looks again at the descriptors kept for children on
/// their way to their exec (tens of microseconds, as a rule).
const HOLD_RECHECK: Duration = Duration::from_millis(1);

/// One listening socket in the loop.
struct Sock {
    /// The address it was bound (or adopted) for.
    addr: Endpoint,
    /// The socket itself, non-blocking.
    listener: Listener,
    /// The options it has: a reload compares them with the new plan's.
    opts: SockOpts,
    /// Index into `Supervisor::services`.
    svc: usize,
    /// EMFILE and friends: the growing delay of this listener's episode.
    backoff: Backoff,
    /// The listener leaves the poll set until then.
    retry_at: Option<Instant>,
    /// The wait handler this socket is handed to, while it runs: the
    /// socket leaves the poll set until it is reaped (`handover`).
    held: Option<nix::unistd::Pid>,
}

/// What a socket carries over a reload: its back-off, its retry moment
/// and the wait handler holding it.
type SockState = (Backoff, Option<Instant>, Option<nix::unistd::Pid>);

/// The shutdown in progress.
struct Drain {
    /// Handlers are terminated at this moment unless they finish first.
    deadline: Instant,
    /// The handlers have been sent SIGTERM (the deadline passed, or a
    /// second SIGTERM skipped the wait).
    terminated: bool,
}

/// What an entry of the poll set stands for. A new kind of source is a new
/// variant here, its entry in [`Supervisor::poll`] and its arm in
/// [`Supervisor::turn`] (the match there has one arm per variant, so the
/// compiler asks for it).
#[derive(Clone, Copy)]
enum Source {
    /// The signalfd.
    Signals,
    /// A listener: an index into `Supervisor::socks`.
    Listener(usize),
    /// The pipe of a pending reload's resolver child.
    Resolver,
    /// The stderr pipe of a handler (`stderr = "log"`), by its pid.
    Stderr(nix::unistd::Pid),
    /// The control socket's listener.
    Control,
    /// A control client, by its id (`control`).
    ControlClient(u64),
    /// A connection whose PROXY header is awaited, by its id (`proxy`).
    Proxy(u64),
}

/// Why the daemon could not start.
#[derive(Debug)]
pub enum StartError {
    Io(&'static str, io::Error),
    Listen(listen::ListenError),
    /// The control socket written in the config cannot be used.
    Control(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Io(doing, e) => write!(f, "{doing}: {}", crate::text::io_reason(e)),
            StartError::Listen(e) => write!(f, "{e}"),
            StartError::Control(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// The daemon's state while it runs.
pub struct Supervisor {
    /// The configuration in force.
    plan: Plan,
    /// The runtime state of each enabled service.
    services: ServiceTable,
    /// The listeners, each serving one entry of `services`.
    socks: Vec<Sock>,
    /// Inherited (socket-activated) listeners not claimed by the plan yet.
    spare: HashMap<Endpoint, Listener>,
    /// The running handlers.
    children: Children,
    /// Connections whose PROXY protocol header is being read.
    proxies: proxy::Proxies,
    /// The signalfd for the signals the daemon acts on.
    signals: Signals,
    /// Where log lines go.
    log: Logger,
    /// The next connection id; ids are unique within this run.
    next_conn: u64,
    /// The shutdown, once SIGTERM has started it.
    drain: Option<Drain>,
    /// The reload whose account lookups are being made, if one is.
    reloading: Option<resolver::Pending>,
    /// The control socket and its clients, when there is one.
    control: Option<control::Control>,
    /// Every spawn slot is busy: no listener is polled until then (see
    /// `spawn::Room`; no event says when a child reaches its exec).
    slot_retry: Option<Instant>,
    /// Handlers still starting, and their cap (`admit::Starting`).
    starting: crate::admit::Starting,
    /// Whether `starting` gates accepting (off once the drain has begun).
    pace_starts: bool,
    /// Tasks the machine has runnable, asked when `starting`'s cap is
    /// reached (`admit::Starting::pace`).
    runnable: runnable::Runnable,
    /// When to ask `runnable` again while the cap holds.
    recheck: crate::admit::Recheck,
    /// Listener indices the next poll watches (a buffer reused every turn).
    polled: Vec<usize>,
    /// `(interval, next ping)` when systemd's watchdog is on.
    watchdog: Option<(Duration, Instant)>,
    /// The last `STATUS=` sent, to send only changes.
    status_sent: String,
    /// Starts handlers; owns the spawn slots.
    spawner: Spawner,
    /// `/dev/null`, opened once: fd 2 of `stderr = "null"` handlers.
    devnull: OwnedFd,
    /// The stderr pipes of `stderr = "log"` handlers, by pid; each is
    /// closed when its handler is reaped.
    stderr_pipes: HashMap<nix::unistd::Pid, StderrPipe>,
    /// Reaped handlers, a buffer reused every turn.
    exits: Vec<Exit>,
    /// Signals sent to handlers, a buffer reused every turn.
    fired: Vec<Fired>,
    /// What each entry of the poll set stands for, a buffer reused every turn.
    sources: Vec<Source>,
    /// The sources the last poll found ready, with their events.
    ready: Vec<(Source, PollFlags)>,
    /// The poll set's memory, kept from one turn to the next (empty between
    /// turns: its entries borrow the descriptors only while a turn polls).
    pollfds: Vec<PollFd<'static>>,
}

impl Supervisor {
    /// Runs until a shutdown completes.
    pub fn run(mut self) {
        let status = self.summary();
        if let Err(e) = notify::ready(&status) {
            self.log_notify_error(e);
        }
        self.status_sent = status;
        self.log
            .event(Level::Info, "ready")
            .kv("services", self.services.len())
            .kv("sockets", self.socks.len())
            .send();
        loop {
            if self.turn() {
                self.log.event(Level::Info, "stopped").send();
                return;
            }
        }
    }

    /// One loop turn. Returns true when the daemon should exit.
    fn turn(&mut self) -> bool {
        let now = Instant::now();
        for s in &mut self.socks {
            expire(&mut s.retry_at, now);
        }
        expire(&mut self.slot_retry, now);
        self.update_pauses(now);
        let mut timeout = self
            .next_deadline()
            .map(|t| t.saturating_duration_since(now));
        // Copies of connections kept for children not at their exec yet
        // (`Spawner::release`): no event says when they get there.
        if self.spawner.release() {
            timeout = Some(timeout.map_or(HOLD_RECHECK, |t| t.min(HOLD_RECHECK)));
        }
        self.poll(timeout);

        let now = Instant::now();
        let (mut signals_ready, mut resolver_ready) = (false, false);
        for (source, _) in &self.ready {
            match source {
                Source::Signals => signals_ready = true,
                Source::Resolver => resolver_ready = true,
                // Served last, after the reaping and the deadlines.
                Source::Listener(_) => {}
                // Read below, before the reaping.
                Source::Stderr(_) => {}
                // Both served after the deadlines (`serve_control`).
                Source::Control => {}
                Source::ControlClient(_) => {}
                // Read after the deadlines, before the accepts.
                Source::Proxy(_) => {}
            }
        }
        let sig = if signals_ready {
            self.signals.drain()
        } else {
            Default::default()
        };
        if sig.terminate {
            self.terminate(now);
            // A pending reload is abandoned: dropping it kills its resolver.
            self.reloading = None;
            self.control_stopping();
        }
        if sig.reload {
            self.reload(now);
        }
        let resolver_due =
            resolver_ready || self.reloading.as_ref().is_some_and(|p| p.deadline <= now);
        if resolver_due && self.reload_progress(now) {
            // The socket list was rebuilt: this turn's readiness refers to
            // the old indices. The next poll reports the listeners again.
            self.ready
                .retain(|(source, _)| !matches!(source, Source::Listener(_)));
        }
        if sig.status {
            self.log_status();
        }

        self.read_stderr(now);
        // Children are reaped when SIGCHLD says one changed state: the
        // signal is blocked and queued, so none can be missed, and any number
        // of exits between two polls cost one read and one `epoll_wait` of
        // the pidfds (`children`: no walk of the running handlers).
        if sig.child {
            self.reap(now);
        }
        self.fire_deadlines(now);
        self.serve_control(now);
        self.read_headers(now);

        // Pidfds for the next handlers only when many run (`children`).
        let many = self.children.many(|pid| crate::spawn::pidfd_open(pid).ok());
        self.spawner.set_many(many);
        if self.drain.is_none() {
            for i in 0..self.ready.len() {
                if let (Source::Listener(s), flags) = self.ready[i] {
                    if flags.intersects(PollFlags::POLLIN | PollFlags::POLLERR | PollFlags::POLLHUP)
                    {
                        if self.services.get(self.socks[s].svc).svc.wait {
                            self.hand_over(s, now);
                        } else {
                            self.accept(s, now, ACCEPT_BUDGET);
                        }
                    }
                }
            }
        }
        self.ping_watchdog(now);
        // A group whose SIGKILL is still due keeps the daemon: once it has
        // exited, nobody would send it.
        let idle = self.children.is_empty() && self.proxies.is_empty();
        self.drain.is_some() && idle && !self.children.has_groups()
    }

    /// Builds the poll set, polls, and records which slots are ready.
    fn poll(&mut self, mut timeout: Option<Duration>) {
        self.sources.clear();
        self.ready.clear();
        let now = Instant::now();
        // The listeners to watch, decided before the set borrows the
        // descriptors. Handlers still starting fill the cap and the cores
        // have no room: those wait, and the machine is asked again soon,
        // since a handler that blocks gives no event (`admit::Starting`).
        self.runnable.forget();
        let mut polled = std::mem::take(&mut self.polled);
        polled.clear();
        let mut held = false;
        if self.drain.is_none() {
            for i in 0..self.socks.len() {
                let s = &self.socks[i];
                let waiting = s.retry_at.is_some_and(|t| t > now)
                    || self.slot_retry.is_some()
                    || s.held.is_some()
                    || self.services.get(s.svc).pause_now.is_some();
                if waiting {
                    continue;
                }
                if self.paced(s.svc, now) {
                    held = true;
                } else {
                    polled.push(i);
                }
            }
        }
        if held {
            let wait = self.recheck.held(now).saturating_duration_since(now);
            timeout = Some(timeout.map_or(wait, |t| t.min(wait)));
        }
        let mut fds: Vec<PollFd<'_>> = recycle(std::mem::take(&mut self.pollfds));
        fds.push(PollFd::new(self.signals.fd(), PollFlags::POLLIN));
        self.sources.push(Source::Signals);
        if let Some(p) = &self.reloading {
            fds.push(PollFd::new(p.fd(), PollFlags::POLLIN));
            self.sources.push(Source::Resolver);
        }
        for (pid, p) in &self.stderr_pipes {
            fds.push(PollFd::new(p.fd.as_fd(), PollFlags::POLLIN));
            self.sources.push(Source::Stderr(*pid));
        }
        (self.control.iter()).for_each(|c| c.poll_set(&mut fds, &mut self.sources));
        self.proxies.poll_set(&mut fds, &mut self.sources);
        for &i in &polled {
            fds.push(PollFd::new(
                self.socks[i].listener.as_fd(),
                PollFlags::POLLIN,
            ));
            self.sources.push(Source::Listener(i));
        }
        let timeout = match timeout {
            None => PollTimeout::NONE,
            // Round up: waking a hair early would only spin once more.
            Some(d) => {
                let ms = d.as_nanos().div_ceil(1_000_000);
                PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        match poll(&mut fds, timeout) {
            Ok(_) => {
                for (fd, slot) in fds.iter().zip(&self.sources) {
                    if let Some(r) = fd.revents() {
                        if !r.is_empty() {
                            self.ready.push((*slot, r));
                        }
                    }
                }
            }
            // Only a stop/continue can interrupt it (the daemon's signals are
            // blocked and come through the signalfd): just poll again.
            Err(Errno::EINTR) => {}
            Err(e) => {
                self.log
                    .event(Level::Error, "poll-failed")
                    .kv("error", crate::text::os_error(e))
                    .send();
            }
        }
        self.pollfds = recycle(fds);
        self.polled = polled;
    }

    /// The nearest moment something is due: a handler signal, the drain,
    /// a listener or service backoff, a rate token, a watchdog ping, a
    /// refusal summary. `None`: nothing is due, sleep until an event.
    fn next_deadline(&self) -> Option<Instant> {
        let mut next = self.children.next_deadline();
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        if let Some(d) = &self.drain {
            if !d.terminated {
                consider(Some(d.deadline));
            }
        } else {
            for s in &self.socks {
                consider(s.retry_at);
            }
            consider(self.slot_retry);
            consider(self.starting.until(Instant::now()));
            for st in self.services.iter() {
                consider(st.pause_now.and_then(Pause::until));
            }
        }
        for i in 0..self.services.len() {
            consider(self.services.refusal_deadline(i));
            consider(self.services.stderr_deadline(i));
        }
        consider(self.watchdog.map(|(_, t)| t));
        consider(self.reloading.as_ref().map(|p| p.deadline));
        consider(self.control.as_ref().and_then(|c| c.next_deadline()));
        consider(self.proxies.next_deadline());
        next
    }

    /// Computes each service's capacity for this turn, logging entering
    /// and leaving a pause once each.
    fn update_pauses(&mut self, now: Instant) {
        let total = self.children.len() + self.proxies.len();
        let max_connections = self.plan.daemon.max_connections;
        let mut changed = false;
        for i in 0..self.services.len() {
            let pause = self.services.capacity(i, total, max_connections, now);
            if let Some(c) = self.services.set_pause(i, pause) {
                changed |= !c.quiet;
                let level = if c.quiet { Level::Debug } else { Level::Info };
                let st = self.services.get(i);
                match c.to {
                    Some(r) => self
                        .log
                        .event(level, "paused")
                        .kv("service", &st.svc.name)
                        .kv("reason", r)
                        .kv("running", st.running)
                        .send(),
                    None => self
                        .log
                        .event(level, "resumed")
                        .kv("service", &st.svc.name)
                        .opt("reason", c.from)
                        .send(),
                }
            }
            // Flush a refusal summary whose window has ended.
            if let Some(count) = self.services.refusal_summary_due(i, now) {
                self.log
                    .event(Level::Warn, "refused-suppressed")
                    .kv("service", &self.services.get(i).svc.name)
                    .kv("count", count)
                    .send();
            }
            if let Some(count) = self.services.stderr_summary_due(i, now) {
                stderr::suppressed(&mut self.log, &self.services.get(i).svc.name, count);
            }
        }
        if changed {
            self.send_status();
        }
    }
}

/// A bare `"PORT"`'s IPv6 half skipped on a host without IPv6.
fn log_no_ipv6(log: &mut Logger, addr: &Endpoint) {
    log.event(Level::Warn, "listen-skipped")
        .kv("addr", addr)
        .kv("error", "no IPv6 on this host; serving IPv4 only")
        .send();
}

/// Clears `deadline` once it has passed and says whether one is still
/// ahead. A deadline left in the past would be the poll timeout forever:
/// zero, a spin.
fn expire(deadline: &mut Option<Instant>, now: Instant) -> bool {
    if deadline.is_some_and(|t| t <= now) {
        *deadline = None;
    }
    deadline.is_some()
}

/// Empties `v` and hands its memory on as a vector of the same type with
/// another lifetime, so that the poll set is not allocated anew every turn.
/// The iterator is empty, so the closure never runs; collecting from a
/// vector's own iterator into one of the same layout reuses its buffer.
#[allow(clippy::unnecessary_filter_map)] // it changes the lifetime, not the items
fn recycle<'a, 'b>(mut v: Vec<PollFd<'a>>) -> Vec<PollFd<'b>> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

#[cfg(test)]
mod tests;
