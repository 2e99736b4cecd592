//! The one poll loop. Owns all mutable state: listeners, running handlers,
//! counters, the logger. Everything else takes values and returns values.
//!
//! Each turn: poll (timeout = the nearest deadline, no periodic wake-ups)
//! → read the signalfd and act on it → on SIGCHLD, reap every
//! exited child → fire due deadlines → accept, with a budget per listener so
//! one busy port cannot starve the others. A service at capacity simply has
//! its listeners left out of the poll set: the kernel backlog holds its
//! clients and nothing is dropped.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

use crate::admit::{self, Backoff, Bucket, Decision, Load, Pause, Reason};
use crate::children::{Child, Children, Exit, Fired, Status};
use crate::config;
use crate::listen::{self, Change, Sockets};
use crate::log::Logger;
use crate::notify;
use crate::plan::{Level, Plan, Service};
use crate::resolver;
use crate::signals::Signals;
use crate::spawn::{self, Conn, Failure, Room, SpawnError, Spawner};

/// Connections accepted from one listener in one loop turn at most.
const ACCEPT_BUDGET: usize = 64;

/// How long the listeners rest when every spawn slot is busy: children
/// reach their exec in tens of microseconds.
const SLOT_RETRY: Duration = Duration::from_millis(1);

/// Connections taken from one listener at SIGTERM at most: what the kernel
/// had already queued (its default `somaxconn` is 4096), served before the
/// listener closes and would reset them.
const SHUTDOWN_ACCEPT_LIMIT: usize = 4096;

/// Whether a connection is waiting on `listener`, without taking it. Any
/// error reads as "no": the listener stays in the poll set, so the next
/// turn looks again.
fn waiting(listener: &TcpListener) -> bool {
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0].revents().is_some_and(|r| !r.is_empty())
}

/// Refusal log lines per service per second; the rest are counted and
/// summarised, so a flood from a denied address cannot fill the disk.
const REFUSAL_LINES_PER_SECOND: u32 = 10;

/// Per-service counters, reported by SIGUSR1. They survive a reload for
/// services that still exist.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Every accepted connection, refused ones included.
    pub accepted: u64,
    /// Refusals by reason, in `Reason::ALL` order.
    pub refused: [u64; 3],
    /// Fork and exec failures.
    pub failed: u64,
}

/// Runtime state of one service.
struct SvcState {
    svc: Arc<Service>,
    counters: Counters,
    /// Handlers of this service running now.
    running: usize,
    /// Running handlers by source prefix, for `max_per_source`.
    per_source: HashMap<IpNet, usize>,
    bucket: Bucket,
    /// Fork failures back the whole service off.
    backoff: Backoff,
    backoff_until: Option<Instant>,
    /// Exec failures under way (learnt at reap): they back the service off
    /// too, through `backoff_until`.
    exec_failures: Option<ExecEpisode>,
    /// The pause last logged, so entering and leaving are logged once each.
    paused: Option<&'static str>,
    /// The pause computed this turn (drives the poll set).
    pause_now: Option<Pause>,
    refusals: Limiter,
}

/// A run of exec failures of one service, from the first until a handler
/// started after it is reaped without one.
///
/// The daemon learns of an exec failure only when it reaps the child, so
/// a burst accepted in one turn fails as a whole before the first failure
/// is seen. The back-off therefore steps once per *retry*: a failure of a
/// child started before the last step is counted but does not step again;
/// and while the episode lasts, each spawn re-arms the current delay, so
/// one connection at a time tries (the others wait in the backlog) instead
/// of the whole queue failing at each retry.
struct ExecEpisode {
    /// When the first failure was seen.
    began: Instant,
    /// Failures in the episode, for the summary at its end.
    failures: u64,
    backoff: Backoff,
    /// The current delay, and when it was last stepped.
    delay: Duration,
    stepped_at: Instant,
}

/// Rate limit for refusal log lines.
#[derive(Default)]
struct Limiter {
    window_end: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

/// One listening socket in the loop.
struct Sock {
    addr: SocketAddr,
    listener: TcpListener,
    /// Index into `Supervisor::services`.
    svc: usize,
    /// EMFILE and friends: this listener waits until `retry_at`.
    backoff: Backoff,
    retry_at: Option<Instant>,
}

/// The shutdown in progress.
struct Drain {
    /// Handlers are terminated at this moment unless they finish first.
    deadline: Instant,
    terminated: bool,
}

/// What a poll slot stands for.
#[derive(Clone, Copy)]
enum Slot {
    Signals,
    Sock(usize),
    /// The pipe of a pending reload's resolver child.
    Resolver,
}

/// Why the daemon could not start.
#[derive(Debug)]
pub enum StartError {
    Io(&'static str, io::Error),
    Listen(listen::ListenError),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Io(doing, e) => write!(f, "{doing}: {}", crate::text::io_reason(e)),
            StartError::Listen(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

pub struct Supervisor {
    plan: Plan,
    services: Vec<SvcState>,
    socks: Vec<Sock>,
    /// Inherited (socket-activated) listeners not claimed by the plan yet.
    spare: HashMap<SocketAddr, TcpListener>,
    children: Children,
    signals: Signals,
    log: Logger,
    /// The next connection id; ids are unique within this run.
    next_conn: u64,
    drain: Option<Drain>,
    /// The reload whose account lookups are being made, if one is.
    reloading: Option<resolver::Pending>,
    /// Every spawn slot is busy: no listener is polled until then (see
    /// `spawn::Room`; no event says when a child reaches its exec).
    slot_retry: Option<Instant>,
    /// `(interval, next ping)` when systemd's watchdog is on.
    watchdog: Option<(Duration, Instant)>,
    /// The last `STATUS=` sent, to send only changes.
    status_sent: String,
    // Buffers reused every turn.
    scratch: Spawner,
    exits: Vec<Exit>,
    fired: Vec<Fired>,
    slots: Vec<Slot>,
    ready: Vec<(Slot, PollFlags)>,
    /// The poll set's memory, kept from one turn to the next (empty between
    /// turns: its entries borrow the descriptors only while a turn polls).
    pollfds: Vec<PollFd<'static>>,
}

impl Supervisor {
    /// Binds (or adopts) every socket of `plan`, logs them, and returns a
    /// supervisor ready to [`run`](Self::run). A socket that cannot be bound
    /// is a start-up error.
    pub fn start(
        plan: Plan,
        mut log: Logger,
        signals: Signals,
        inherited: Vec<listen::Inherited>,
    ) -> Result<Supervisor, StartError> {
        let mut spare = HashMap::new();
        for inh in inherited {
            match listen::adopt(inh) {
                listen::Adoption::Listening(addr, l) => {
                    spare.insert(addr, l);
                }
                listen::Adoption::Rejected { fd, name, why } => {
                    log.event(Level::Error, "inherited-socket-rejected")
                        .kv("fd", fd)
                        .kv("name", &name)
                        .kv("error", &why)
                        .send();
                }
            }
        }
        let mut held = Sockets::default();
        for change in listen::reconcile(&mut held, &mut spare, &plan) {
            match change {
                Change::Failed(e) => return Err(StartError::Listen(e)),
                Change::NoIpv6(a) => log
                    .event(Level::Warn, "listen-skipped")
                    .kv("addr", a)
                    .kv("error", "no IPv6 on this host; serving IPv4 only")
                    .send(),
                // Nothing is held before the start, so nothing is retained.
                Change::Kept(_)
                | Change::Opened(_)
                | Change::Closed(_)
                | Change::Retained { .. }
                | Change::Lost { .. } => {}
            }
        }
        let mut sup = Supervisor {
            plan: Plan::default(),
            services: Vec::new(),
            socks: Vec::new(),
            spare,
            children: Children::default(),
            signals,
            log,
            next_conn: 1,
            drain: None,
            reloading: None,
            watchdog: notify::watchdog_interval().map(|i| (i, Instant::now())),
            status_sent: String::new(),
            scratch: Spawner::new(),
            slot_retry: None,
            exits: Vec::new(),
            fired: Vec::new(),
            slots: Vec::new(),
            ready: Vec::new(),
            pollfds: Vec::new(),
        };
        sup.install(plan, held);
        for s in &sup.socks {
            let name = &sup.services[s.svc].svc.name;
            sup.log
                .event(Level::Info, "listen")
                .kv("service", name)
                .kv("addr", s.addr)
                .send();
        }
        sup.reject_spare();
        Ok(sup)
    }

    /// Makes `plan` current with the sockets in `held`: rebuilds the service
    /// states (carrying counters over by name) and the socket list
    /// (carrying backoffs over by address).
    fn install(&mut self, plan: Plan, mut held: Sockets) {
        let mut old: HashMap<String, SvcState> = self
            .services
            .drain(..)
            .map(|s| (s.svc.name.clone(), s))
            .collect();
        let mut services = Vec::new();
        for svc in plan.enabled() {
            let mut st = match old.remove(&svc.name) {
                Some(mut st) => {
                    st.svc = Arc::clone(svc);
                    st
                }
                None => SvcState {
                    svc: Arc::clone(svc),
                    counters: Counters::default(),
                    running: 0,
                    per_source: HashMap::new(),
                    bucket: Bucket::new(),
                    backoff: Backoff::default(),
                    backoff_until: None,
                    exec_failures: None,
                    paused: None,
                    pause_now: None,
                    refusals: Limiter::default(),
                },
            };
            // Recount from the table: handlers of an earlier service of the
            // same name count against this one's limits too.
            st.running = 0;
            st.per_source.clear();
            for c in self.children.iter().filter(|c| c.service.name == svc.name) {
                st.running += 1;
                *st.per_source.entry(c.source).or_insert(0) += 1;
            }
            services.push(st);
        }
        let mut old_socks: HashMap<SocketAddr, (Backoff, Option<Instant>)> = self
            .socks
            .drain(..)
            .map(|s| (s.addr, (s.backoff, s.retry_at)))
            .collect();
        let mut socks = Vec::new();
        for (i, st) in services.iter().enumerate() {
            for l in &st.svc.listen {
                for addr in l.sockets() {
                    if let Some(listener) = held.by_addr.remove(&addr) {
                        let (backoff, retry_at) = old_socks.remove(&addr).unwrap_or_default();
                        socks.push(Sock {
                            addr,
                            listener,
                            svc: i,
                            backoff,
                            retry_at,
                        });
                    }
                }
            }
        }
        // Old sockets kept for a service whose new address failed (see
        // `listen`): not in its `listen`, attached by its name.
        for (addr, name) in held.owner.drain() {
            let svc = services.iter().position(|st| st.svc.name == name);
            if let (Some(i), Some(listener)) = (svc, held.by_addr.remove(&addr)) {
                let (backoff, retry_at) = old_socks.remove(&addr).unwrap_or_default();
                socks.push(Sock {
                    addr,
                    listener,
                    svc: i,
                    backoff,
                    retry_at,
                });
            }
        }
        // Every child holding a slot counts against max_connections, which
        // is checked before accept: one slot more can never all be busy.
        self.scratch
            .set_slot_limit(plan.daemon.max_connections.saturating_add(1));
        self.services = services;
        self.socks = socks;
        self.plan = plan;
    }

    /// Inherited sockets that match no `listen` address are an error: log
    /// and close them (the daemon keeps running).
    fn reject_spare(&mut self) {
        for (addr, l) in self.spare.drain() {
            self.log
                .event(Level::Error, "inherited-socket-unused")
                .kv("addr", addr)
                .kv("error", "matches no listen address; closed")
                .send();
            drop(l);
        }
    }

    /// Runs until a shutdown completes.
    pub fn run(mut self) -> Result<(), StartError> {
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
                return Ok(());
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
        let timeout = self
            .next_deadline()
            .map(|t| t.saturating_duration_since(now));
        self.poll(timeout);

        let now = Instant::now();
        let sig = if self.ready.iter().any(|(s, _)| matches!(s, Slot::Signals)) {
            self.signals.drain()
        } else {
            Default::default()
        };
        if sig.terminate {
            self.terminate(now);
            // A pending reload is abandoned: dropping it kills its resolver.
            self.reloading = None;
        }
        if sig.reload {
            self.reload(now);
        }
        let resolver_due = self.reloading.as_ref().is_some_and(|p| p.deadline <= now)
            || self.ready.iter().any(|(s, _)| matches!(s, Slot::Resolver));
        if resolver_due && self.reload_progress(now) {
            // The socket list was rebuilt: this turn's readiness refers to
            // the old indices. The next poll reports the listeners again.
            self.ready
                .retain(|(slot, _)| !matches!(slot, Slot::Sock(_)));
        }
        if sig.status {
            self.log_status();
        }

        // Children are reaped when SIGCHLD says one changed state: the
        // signal is blocked and queued, so none can be missed, and any number
        // of exits between two polls cost one read and one waitpid loop.
        if sig.child {
            self.reap(now);
        }
        self.fire_deadlines(now);

        if self.drain.is_none() {
            for i in 0..self.ready.len() {
                if let (Slot::Sock(s), flags) = self.ready[i] {
                    if flags.intersects(PollFlags::POLLIN | PollFlags::POLLERR | PollFlags::POLLHUP)
                    {
                        self.accept(s, now, ACCEPT_BUDGET);
                    }
                }
            }
        }
        self.ping_watchdog(now);
        // A group whose SIGKILL is still due keeps the daemon: once it has
        // exited, nobody would send it.
        self.drain.is_some() && self.children.is_empty() && !self.children.has_groups()
    }

    /// Builds the poll set, polls, and records which slots are ready.
    fn poll(&mut self, timeout: Option<Duration>) {
        self.slots.clear();
        self.ready.clear();
        let mut fds: Vec<PollFd<'_>> = recycle(std::mem::take(&mut self.pollfds));
        fds.push(PollFd::new(self.signals.fd(), PollFlags::POLLIN));
        self.slots.push(Slot::Signals);
        if let Some(p) = &self.reloading {
            fds.push(PollFd::new(p.fd(), PollFlags::POLLIN));
            self.slots.push(Slot::Resolver);
        }
        let now = Instant::now();
        if self.drain.is_none() {
            for (i, s) in self.socks.iter().enumerate() {
                let waiting = s.retry_at.is_some_and(|t| t > now) || self.slot_retry.is_some();
                if !waiting && self.services[s.svc].pause_now.is_none() {
                    fds.push(PollFd::new(s.listener.as_fd(), PollFlags::POLLIN));
                    self.slots.push(Slot::Sock(i));
                }
            }
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
                for (fd, slot) in fds.iter().zip(&self.slots) {
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
            for st in &self.services {
                consider(st.pause_now.and_then(Pause::until));
            }
        }
        for st in &self.services {
            if st.refusals.suppressed > 0 {
                consider(st.refusals.window_end);
            }
        }
        consider(self.watchdog.map(|(_, t)| t));
        consider(self.reloading.as_ref().map(|p| p.deadline));
        next
    }

    /// Computes each service's capacity for this turn, logging entering
    /// and leaving a pause once each.
    fn update_pauses(&mut self, now: Instant) {
        let total = self.children.len();
        let max_connections = self.plan.daemon.max_connections;
        let mut changed = false;
        for st in &mut self.services {
            let load = Load {
                running: st.running,
                total,
                max_connections,
                backoff_until: st.backoff_until,
            };
            let p = admit::capacity(&st.svc.limits, load, &st.bucket, now);
            st.pause_now = p;
            let reason = p.map(Pause::reason);
            if reason != st.paused {
                // A rate pause comes and goes with every token; it is logged
                // (at debug) but does not change the status line.
                let level = if matches!(p, Some(Pause::Rate(_))) || st.paused == Some("max_rate") {
                    Level::Debug
                } else {
                    changed = true;
                    Level::Info
                };
                match reason {
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
                        .opt("reason", st.paused)
                        .send(),
                }
                st.paused = reason;
            }
            // Flush a refusal summary whose window has ended.
            if st.refusals.suppressed > 0 && st.refusals.window_end.is_some_and(|t| t <= now) {
                self.log
                    .event(Level::Warn, "refused-suppressed")
                    .kv("service", &st.svc.name)
                    .kv("count", st.refusals.suppressed)
                    .send();
                st.refusals = Limiter::default();
            }
        }
        if changed {
            self.send_status();
        }
    }

    /// Accepts from socket `i` until no connection is waiting, the budget
    /// is spent, or the service reaches capacity.
    ///
    /// The first accept follows the poll that reported the listener
    /// readable; before each further one a zero-timeout poll of this
    /// listener asks whether another connection is waiting. An accept that
    /// finds the queue empty is not cheap: the kernel allocates a socket
    /// and its file before it looks, and frees them again (BENCHMARKS.md).
    fn accept(&mut self, i: usize, now: Instant, budget: usize) {
        for n in 0..budget {
            if n > 0 && !waiting(&self.socks[i].listener) {
                return;
            }
            let svc_i = self.socks[i].svc;
            {
                let st = &self.services[svc_i];
                let load = Load {
                    running: st.running,
                    total: self.children.len(),
                    max_connections: self.plan.daemon.max_connections,
                    backoff_until: st.backoff_until,
                };
                if admit::capacity(&st.svc.limits, load, &st.bucket, now).is_some() {
                    return;
                }
            }
            match self.scratch.room(now) {
                Room::Free => {}
                Room::Grow { slots } => self
                    .log
                    .event(Level::Warn, "spawn-slots-added")
                    .kv("slots", slots + 1)
                    .kv(
                        "error",
                        "every child start has been busy for 100 ms: children stopped before their exec?",
                    )
                    .send(),
                // The clients wait in the backlog a moment; the loop serves
                // everything else meanwhile.
                Room::Busy => {
                    self.slot_retry = Some(now + SLOT_RETRY);
                    return;
                }
            }
            let sock = &mut self.socks[i];
            match sock.listener.accept() {
                Ok((stream, peer)) => {
                    let failures = sock.backoff.succeed();
                    let addr = sock.addr;
                    if failures > 0 {
                        self.log
                            .event(Level::Info, "accept-resumed")
                            .kv("addr", addr)
                            .kv("failures", failures)
                            .send();
                    }
                    let local = if addr.ip().is_unspecified() {
                        stream.local_addr().unwrap_or(addr)
                    } else {
                        addr
                    };
                    let id = self.next_conn;
                    self.next_conn += 1;
                    let conn = Conn {
                        stream: stream.into(),
                        peer,
                        local,
                        id,
                    };
                    self.serve(svc_i, conn, now);
                }
                Err(e) => {
                    let errno = Errno::from_raw(e.raw_os_error().unwrap_or(0));
                    match errno {
                        Errno::EAGAIN => return,
                        // The connection went away before we took it, or
                        // another per-connection network error: go on.
                        Errno::EINTR
                        | Errno::ECONNABORTED
                        | Errno::EPROTO
                        | Errno::ENETDOWN
                        | Errno::ENOPROTOOPT
                        | Errno::EHOSTDOWN
                        | Errno::ENONET
                        | Errno::EHOSTUNREACH
                        | Errno::EOPNOTSUPP
                        | Errno::ENETUNREACH
                        | Errno::ECONNRESET
                        | Errno::ETIMEDOUT
                        | Errno::EPERM => continue,
                        // Out of descriptors or memory: a readable listener
                        // we cannot serve would be a busy loop, so it leaves
                        // the poll set for a growing while.
                        Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM => {
                            self.pause_sock(i, errno, now, false);
                            return;
                        }
                        // Anything else is unexpected (EBADF, EINVAL: the
                        // socket is not listening): log it every time, and
                        // back off the same way so it cannot spin.
                        _ => {
                            self.pause_sock(i, errno, now, true);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Takes socket `i` out of the poll set for a growing backoff after an
    /// accept failure. A resource shortage is logged once per episode, at
    /// its start; an unexpected error every time.
    fn pause_sock(&mut self, i: usize, errno: Errno, now: Instant, unexpected: bool) {
        let sock = &mut self.socks[i];
        let delay = sock.backoff.fail();
        sock.retry_at = Some(now + delay);
        if unexpected || sock.backoff.failures == 1 {
            let addr = sock.addr;
            let (level, event) = if unexpected {
                (Level::Error, "accept-failed")
            } else {
                (Level::Warn, "accept-paused")
            };
            self.log
                .event(level, event)
                .kv("addr", addr)
                .kv("error", crate::text::os_error(errno))
                .kv("retry_ms", delay.as_millis())
                .send();
        }
    }

    /// Admits or refuses one accepted connection, and spawns its handler.
    fn serve(&mut self, svc_i: usize, conn: Conn, now: Instant) {
        let st = &mut self.services[svc_i];
        st.counters.accepted += 1;
        let source = match admit::decide(
            &st.svc.access,
            &st.svc.limits,
            &st.per_source,
            conn.peer.ip(),
        ) {
            Decision::Admit(source) => source,
            Decision::Refuse(reason) => {
                st.counters.refused[reason as usize] += 1;
                self.log_refusal(svc_i, &conn, reason, now);
                return; // dropping `conn` closes it: no fork happened
            }
        };
        if let Some(rate) = st.svc.limits.max_rate {
            st.bucket.take(rate, now);
        }
        let svc = Arc::clone(&st.svc);
        match spawn::spawn(&svc, &conn, &mut self.scratch) {
            Ok(pid) => {
                let st = &mut self.services[svc_i];
                st.running += 1;
                *st.per_source.entry(source).or_insert(0) += 1;
                if st.backoff.failures > 0 {
                    st.backoff.succeed();
                    st.backoff_until = None;
                }
                // Exec failing: this child is the one try until the delay
                // has passed again (see `ExecEpisode`).
                if let Some(ep) = &st.exec_failures {
                    st.backoff_until = Some(now + ep.delay);
                }
                self.log
                    .event(Level::Debug, "start")
                    .kv("service", &svc.name)
                    .kv("conn", conn.id)
                    .kv("pid", pid)
                    .kv("peer", conn.peer)
                    .send();
                let term_at = svc.limits.timeout.map(|t| now + t);
                self.children.insert(Child {
                    pid,
                    service: svc,
                    conn_id: conn.id,
                    peer: conn.peer,
                    source,
                    started: now,
                    term_at,
                    kill_at: None,
                    terminated_for: None,
                });
            }
            Err(e) => {
                let st = &mut self.services[svc_i];
                st.counters.failed += 1;
                let delay = st.backoff.fail();
                st.backoff_until = Some(now + delay);
                let SpawnError::Fork(_) = e;
                self.log
                    .event(Level::Error, "fork-failed")
                    .kv("service", &svc.name)
                    .kv("conn", conn.id)
                    .kv("peer", conn.peer)
                    .kv("error", e)
                    .kv("retry_ms", delay.as_millis())
                    .send();
            }
        }
    }

    fn log_refusal(&mut self, svc_i: usize, conn: &Conn, reason: Reason, now: Instant) {
        let st = &mut self.services[svc_i];
        let lim = &mut st.refusals;
        if lim.window_end.is_none_or(|t| t <= now) {
            if lim.suppressed > 0 {
                self.log
                    .event(Level::Warn, "refused-suppressed")
                    .kv("service", &st.svc.name)
                    .kv("count", lim.suppressed)
                    .send();
            }
            *lim = Limiter {
                window_end: Some(now + Duration::from_secs(1)),
                lines: 0,
                suppressed: 0,
            };
        }
        if lim.lines < REFUSAL_LINES_PER_SECOND {
            lim.lines += 1;
            self.log
                .event(Level::Info, "refused")
                .kv("service", &st.svc.name)
                .kv("conn", conn.id)
                .kv("peer", conn.peer)
                .kv("reason", reason.as_str())
                .send();
        } else {
            lim.suppressed += 1;
        }
    }

    /// A reaped child failed before or at its exec: count it, back the
    /// service off, and log it: the first of an episode at `error` (with
    /// the delay), the rest at `debug`, summed up when the episode ends.
    /// `svc_i`: the child's service in the current plan, if it still has one.
    fn exec_failed(&mut self, svc_i: Option<usize>, c: &Child, f: Failure, now: Instant) {
        let svc = &c.service;
        let mut level = Level::Error;
        let mut retry = None;
        if let Some(st) = svc_i.map(|i| &mut self.services[i]) {
            st.counters.failed += 1;
            match &mut st.exec_failures {
                None => {
                    let mut backoff = Backoff::default();
                    let delay = backoff.fail();
                    st.exec_failures = Some(ExecEpisode {
                        began: now,
                        failures: 1,
                        backoff,
                        delay,
                        stepped_at: now,
                    });
                    retry = Some(delay);
                    st.backoff_until = st.backoff_until.max(Some(now + delay));
                }
                Some(ep) => {
                    ep.failures += 1;
                    level = Level::Debug;
                    if c.started >= ep.stepped_at {
                        ep.delay = ep.backoff.fail();
                        ep.stepped_at = now;
                        st.backoff_until = st.backoff_until.max(Some(now + ep.delay));
                    }
                }
            }
        }
        let (conn, pid, peer) = (c.conn_id, c.pid, c.peer);
        self.log
            .event(level, "exec-failed")
            .kv("service", &svc.name)
            .kv("conn", conn)
            .kv("pid", pid)
            .kv("peer", peer)
            .kv("program", svc.image.path.to_string_lossy())
            .kv("step", f.step.as_str())
            .kv("error", crate::text::os_error(f.errno))
            .opt("retry_ms", retry.map(|d| d.as_millis()))
            .send();
    }

    /// A reaped child reached its handler: if it started after its
    /// service's exec failures began, they are over.
    fn exec_succeeded(&mut self, svc_i: Option<usize>, c: &Child, now: Instant) {
        let Some(st) = svc_i.map(|i| &mut self.services[i]) else {
            return;
        };
        if st
            .exec_failures
            .as_ref()
            .is_some_and(|ep| c.started >= ep.began)
        {
            if let Some(ep) = st.exec_failures.take() {
                st.backoff_until = None;
                self.log
                    .event(Level::Info, "exec-recovered")
                    .kv("service", &c.service.name)
                    .kv("failures", ep.failures)
                    .kv(
                        "duration_ms",
                        now.saturating_duration_since(ep.began).as_millis(),
                    )
                    .send();
            }
        }
    }

    fn reap(&mut self, now: Instant) {
        let mut exits = std::mem::take(&mut self.exits);
        self.children.reap(now, &mut exits);
        for exit in exits.drain(..) {
            let c = &exit.child;
            let svc_i = self
                .services
                .iter()
                .position(|s| s.svc.name == c.service.name);
            match self.scratch.take_failure(c.pid) {
                Some(f) => self.exec_failed(svc_i, c, f, now),
                None => self.exec_succeeded(svc_i, c, now),
            }
            if let Some(st) = svc_i.map(|i| &mut self.services[i]) {
                st.running = st.running.saturating_sub(1);
                if let Some(n) = st.per_source.get_mut(&c.source) {
                    *n -= 1;
                    if *n == 0 {
                        st.per_source.remove(&c.source);
                    }
                }
            }
            let (status, signal) = match exit.status {
                Status::Code(n) => (Some(n), None),
                Status::Signal(s) => (None, Some(s.as_str())),
            };
            self.log
                .event(Level::Info, "exit")
                .kv("service", &c.service.name)
                .kv("conn", c.conn_id)
                .kv("pid", c.pid)
                .kv("peer", c.peer)
                .opt("status", status)
                .opt("signal", signal)
                .kv("duration_ms", exit.duration.as_millis())
                .opt("reason", c.terminated_for)
                .send();
        }
        self.exits = exits;
    }

    fn fire_deadlines(&mut self, now: Instant) {
        if let Some(d) = &mut self.drain {
            if !d.terminated && d.deadline <= now {
                self.terminate_all(now, "shutdown");
            }
        }
        // Every handler is gone: what is left of their groups is not waited
        // for (it gets SIGTERM now, and SIGKILL after the grace).
        if self.drain.is_some() && self.children.is_empty() {
            self.children.terminate_groups(now, "shutdown");
        }
        let mut fired = std::mem::take(&mut self.fired);
        self.children.fire_deadlines(now, &mut fired);
        for f in fired.drain(..) {
            let age = now.saturating_duration_since(f.started);
            self.log
                .event(
                    Level::Warn,
                    if f.signal == Signal::SIGTERM {
                        "terminate"
                    } else {
                        "kill"
                    },
                )
                .kv("service", &f.service.name)
                .kv("conn", f.conn_id)
                .kv("pid", f.pid)
                .kv("signal", f.signal.as_str())
                .opt("reason", f.reason)
                .kv("age_ms", age.as_millis())
                .opt("handler", f.leader_gone.then_some("exited"))
                .send();
        }
        self.fired = fired;
    }

    /// SIGTERM/SIGINT: the first starts a graceful drain, a second skips it.
    fn terminate(&mut self, now: Instant) {
        match &self.drain {
            None => {
                // Closing a listener resets the clients the kernel has
                // queued on it: serve those first, as far as capacity
                // allows. One arriving between the last accept and the
                // close is still reset; nothing can close that window.
                for i in 0..self.socks.len() {
                    self.accept(i, now, SHUTDOWN_ACCEPT_LIMIT);
                }
                // Closing the listeners refuses new clients at once.
                self.socks.clear();
                self.spare.clear();
                let timeout = self.plan.daemon.shutdown_timeout;
                self.drain = Some(Drain {
                    deadline: now + timeout,
                    terminated: false,
                });
                let status = format!("stopping: {} handlers running", self.children.len());
                if let Err(e) = notify::stopping(&status) {
                    self.log_notify_error(e);
                }
                self.log
                    .event(Level::Info, "stopping")
                    .kv("running", self.children.len())
                    .kv("timeout_ms", timeout.as_millis())
                    .send();
            }
            Some(d) if !d.terminated => {
                self.log
                    .event(Level::Info, "stopping")
                    .kv("running", self.children.len())
                    .kv("wait", "skipped")
                    .send();
                self.terminate_all(now, "shutdown");
            }
            Some(_) => {}
        }
    }

    fn terminate_all(&mut self, now: Instant, why: &'static str) {
        if let Some(d) = &mut self.drain {
            d.terminated = true;
        }
        self.children.terminate_all(now, why);
        // Send the SIGTERMs now rather than next turn.
        self.fire_deadlines(now);
    }

    /// SIGHUP: start a reload. The file is validated, then swapped in; an
    /// invalid file changes nothing. The account lookups the load needs may
    /// wait (a directory server that does not answer), so they are made by a
    /// resolver child ([`resolver::Pending`]) while the loop goes on serving;
    /// [`reload_progress`](Self::reload_progress) loads and applies the plan
    /// once it has answered.
    ///
    /// A SIGHUP while a reload is pending does not restart it (a stream of
    /// them would then never let one finish); it asks for one more reload
    /// when this one ends, so the file as it is then is the one loaded.
    fn reload(&mut self, now: Instant) {
        if self.drain.is_some() {
            return;
        }
        if let Some(p) = &mut self.reloading {
            p.again = true;
            return;
        }
        match resolver::Pending::start(&self.plan.path, now) {
            Ok(p) => {
                self.log
                    .event(Level::Debug, "reload-resolving")
                    .kv("pid", p.pid())
                    .send();
                self.reloading = Some(p);
            }
            Err(e) => self.reload_failed(&format!("starting the account resolver: {e}")),
        }
    }

    /// Reads the pending reload's resolver; at its end, loads the file with
    /// its answers and applies the plan. Returns true when a plan was applied.
    fn reload_progress(&mut self, now: Instant) -> bool {
        let Some(p) = &mut self.reloading else {
            return false;
        };
        let applied = match p.read(now) {
            resolver::Progress::More => return false,
            resolver::Progress::Failed(why) => {
                self.reload_failed(&why);
                false
            }
            resolver::Progress::Done(record) => {
                let replay = resolver::Accounts::replay(&config::RealSystem, record);
                match config::load_with(&self.plan.path, false, &replay) {
                    Ok(plan) => {
                        self.apply(plan);
                        true
                    }
                    Err(e) => {
                        self.reload_failed(&e.to_string());
                        false
                    }
                }
            }
        };
        if self.reloading.take().is_some_and(|p| p.again) {
            self.reload(now);
        }
        applied
    }

    /// A reload that changed nothing: say why, in the log and the status.
    fn reload_failed(&mut self, why: &str) {
        for line in why.lines() {
            self.log
                .event(Level::Error, "reload-failed")
                .kv("error", line)
                .send();
        }
        let first = why.lines().next().unwrap_or_default().to_string();
        let status = format!("reload failed, still serving the previous configuration: {first}");
        if let Err(e) = notify::status(&status) {
            self.log_notify_error(e);
        }
        self.status_sent = status;
    }

    /// Makes a loaded plan current: sockets, services, logging.
    fn apply(&mut self, plan: Plan) {
        if let Err(e) = notify::reloading() {
            self.log_notify_error(e);
        }
        if plan.daemon.log != self.plan.daemon.log {
            let (logger, warning) = Logger::open(plan.daemon.log, plan.daemon.log_level);
            self.log = logger;
            if let Some(w) = warning {
                self.log
                    .event(Level::Warn, "log-fallback")
                    .kv("error", w)
                    .send();
            }
        }
        self.log.set_level(plan.daemon.log_level);
        let mut held = Sockets::default();
        for s in self.socks.drain(..) {
            held.by_addr.insert(s.addr, s.listener);
            held.owner
                .insert(s.addr, self.services[s.svc].svc.name.clone());
        }
        let changes = listen::reconcile(&mut held, &mut self.spare, &plan);
        let mut opened = 0;
        let mut closed = 0;
        let mut failed = 0;
        let mut kept = 0;
        for c in &changes {
            match c {
                Change::Opened(a) => {
                    opened += 1;
                    self.log.event(Level::Info, "listen").kv("addr", a).send();
                }
                Change::Closed(a) => {
                    closed += 1;
                    self.log.event(Level::Info, "unlisten").kv("addr", a).send();
                }
                Change::Failed(e) => {
                    failed += 1;
                    self.log
                        .event(Level::Error, "listen-failed")
                        .kv("addr", e.addr)
                        .kv("error", e.to_string())
                        .send();
                }
                Change::NoIpv6(a) => self
                    .log
                    .event(Level::Warn, "listen-skipped")
                    .kv("addr", a)
                    .kv("error", "no IPv6 on this host; serving IPv4 only")
                    .send(),
                Change::Retained { addr, service } => {
                    kept += 1;
                    self.log
                        .event(Level::Warn, "listen-kept")
                        .kv("service", service)
                        .kv("addr", addr)
                        .kv(
                            "error",
                            "a new address of the service could not be opened; its old socket keeps serving",
                        )
                        .send();
                }
                Change::Lost { service, error } => {
                    failed += 1;
                    self.log
                        .event(Level::Error, "listen-lost")
                        .kv("service", service)
                        .kv("addr", error.addr)
                        .kv("error", error.to_string())
                        .send();
                }
                Change::Kept(_) => {}
            }
        }
        self.install(plan, held);
        self.scratch.refresh_signals();
        self.log
            .event(Level::Info, "reload")
            .kv("services", self.services.len())
            .kv("sockets", self.socks.len())
            .kv("opened", opened)
            .kv("closed", closed)
            .kv("failed", failed)
            .kv("kept", kept)
            .send();
        let status = self.summary();
        if let Err(e) = notify::ready(&status) {
            self.log_notify_error(e);
        }
        self.status_sent = status;
    }

    /// SIGUSR1: one line per service.
    fn log_status(&mut self) {
        for st in &self.services {
            let mut listen = String::new();
            for (i, l) in st.svc.listen.iter().enumerate() {
                if i > 0 {
                    listen.push(',');
                }
                let _ = write!(listen, "{l}");
            }
            let refused: u64 = st.counters.refused.iter().sum();
            let c = &st.counters;
            self.log
                .event(Level::Info, "status")
                .kv("service", &st.svc.name)
                .kv("listen", &listen)
                .kv("running", st.running)
                .kv("accepted", c.accepted)
                .kv("refused", refused)
                .kv("refused_deny", c.refused[Reason::Deny as usize])
                .kv("refused_allow", c.refused[Reason::Allow as usize])
                .kv(
                    "refused_max_per_source",
                    c.refused[Reason::MaxPerSource as usize],
                )
                .kv("failed", c.failed)
                .kv("paused", st.paused.unwrap_or("no"))
                .send();
        }
    }

    fn ping_watchdog(&mut self, now: Instant) {
        if let Some((interval, next)) = &mut self.watchdog {
            if *next <= now {
                *next = now + *interval;
                if let Err(e) = notify::watchdog() {
                    self.log_notify_error(e);
                }
            }
        }
    }

    /// The one-line summary for `STATUS=`.
    fn summary(&self) -> String {
        let mut s = format!(
            "serving {} services on {} sockets",
            self.services.len(),
            self.socks.len()
        );
        let paused: Vec<String> = self
            .services
            .iter()
            .filter_map(|st| {
                st.paused
                    .filter(|r| *r != "max_rate")
                    .map(|r| format!("{} ({r})", st.svc.name))
            })
            .collect();
        if !paused.is_empty() {
            let _ = write!(s, "; paused: {}", paused.join(", "));
        }
        s
    }

    fn send_status(&mut self) {
        let status = self.summary();
        if status != self.status_sent {
            if let Err(e) = notify::status(&status) {
                self.log_notify_error(e);
            }
            self.status_sent = status;
        }
    }

    fn log_notify_error(&mut self, e: io::Error) {
        self.log
            .event(Level::Warn, "notify-failed")
            .kv("error", crate::text::io_reason(&e))
            .send();
    }
}

/// Reads the sockets systemd passed (`LISTEN_FDS`, only when `LISTEN_PID`
/// is ours) and removes the `LISTEN_*` variables from the environment.
pub fn inherited_sockets() -> Vec<listen::Inherited> {
    let found: Vec<listen::Inherited> = match sd_notify::listen_fds_with_names() {
        Ok(fds) => fds
            .map(|(fd, name)| listen::Inherited { fd, name })
            .collect(),
        Err(_) => Vec::new(),
    };
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    found
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
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn a_passed_deadline_is_cleared_and_a_future_one_kept() {
        let now = Instant::now();
        let mut none = None;
        assert!(!expire(&mut none, now));
        let mut past = Some(now);
        assert!(!expire(&mut past, now), "a deadline at `now` has passed");
        assert_eq!(past, None);
        let ahead = now + Duration::from_millis(100);
        let mut future = Some(ahead);
        assert!(expire(&mut future, now));
        assert_eq!(future, Some(ahead));
        assert!(!expire(&mut future, ahead + Duration::from_millis(1)));
        assert_eq!(future, None);
    }

    #[test]
    fn recycle_keeps_the_poll_sets_memory() {
        let f = std::fs::File::open("/dev/null").expect("open");
        let mut v: Vec<PollFd<'_>> = Vec::with_capacity(8);
        v.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
        let (ptr, cap) = (v.as_ptr() as usize, v.capacity());
        let back: Vec<PollFd<'static>> = recycle(v);
        assert!(back.is_empty());
        assert_eq!((back.as_ptr() as usize, back.capacity()), (ptr, cap));
    }

    #[test]
    fn waiting_sees_a_queued_connection_without_taking_it() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        assert!(!waiting(&l), "nothing has connected yet");
        let _c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        // The handshake completes in the kernel; allow it a moment, bounded.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !waiting(&l) {
            assert!(Instant::now() < deadline, "queued connection not seen");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(waiting(&l), "looking must not take the connection");
        assert!(l.accept().is_ok());
        assert!(!waiting(&l), "the queue is empty again");
    }
}
