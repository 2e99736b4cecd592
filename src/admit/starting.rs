//! The cap on handlers still starting: at most `cap` handlers started
//! within the last [`START_WINDOW`] and still running; while that many
//! are, the daemon accepts nothing and the clients wait in the kernel's
//! accept queue, first come first served.
//!
//! # Why
//!
//! A handler's start (the exec, the dynamic or static C library's
//! start-up, the program's own) is CPU work. Started all at once, as many
//! handlers as there are waiting clients share the cores in time slices,
//! and one preempted in its start-up waits for the others' slices, several
//! times over: at C=8 on two cores, with a static glibc handler, p99 was
//! 20-30 ms against busybox inetd's 3.4, with a maximum near 200 ms
//! (`perf sched`, BENCHMARKS.md, issue 23). busybox inetd bounds this by
//! waiting for each child's exec (vfork), which also stops its loop.
//! Here the loop goes on (reaping, deadlines, the control socket); only
//! accepting waits, and only until a starting handler exits or its window
//! ends, whichever comes first.
//!
//! # Why a window
//!
//! The daemon cannot see when a handler has finished starting; it sees
//! only when it exits. A handler that runs longer than [`START_WINDOW`]
//! (a session, a server that waits for its client) stops counting then,
//! so long sessions are admitted at `cap` per window (800 a second on two
//! cores) and never block the service. The window is long enough that a
//! start slowed by contention still counts: with 1 ms the glibc handler's
//! starts outlived it at C=8, stopped counting, and the time slicing came
//! back (BENCHMARKS.md).
//!
//! # Per service
//!
//! The cap is the daemon's, since the cores are; but a service none of
//! whose handlers is counting may always start one, so that one service's
//! burst of long sessions (each counting for its window) never holds up
//! the others' clients behind its whole backlog. (The supervisor also
//! leaves unpaced a service whose execs are failing, and the clients
//! queued at SIGTERM.)
//!
//! Pure: the caller passes the clock and says when handlers start and
//! exit. Entries are kept in start order, so the oldest is at the front
//! and expiry pops from there; an exit removes its entry by a scan of at
//! most `cap` entries plus those that started after the cap was reached
//! (handlers started outside `accept`: after a PROXY header, a wait
//! service's), which the window also expires.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long a started handler counts as still starting, unless it exits
/// first.
pub const START_WINDOW: Duration = Duration::from_millis(5);

/// Handlers started within the window and still running.
#[derive(Debug)]
pub struct Starting {
    cap: usize,
    /// (start, pid, service index), oldest first.
    recent: VecDeque<(Instant, i32, usize)>,
}

impl Starting {
    /// A cap of `cap` starting handlers (at least one).
    pub fn new(cap: usize) -> Starting {
        Starting {
            cap: cap.max(1),
            recent: VecDeque::new(),
        }
    }

    /// The cap the daemon uses on a machine with `cpus` CPUs available to
    /// it: two per CPU, so that each core has one starting while another
    /// waits on its client (BENCHMARKS.md, issue 23: one per CPU left the
    /// cores idle, three per CPU brought the time slicing back).
    pub fn for_cpus(cpus: usize) -> Starting {
        Starting::new(2 * cpus.max(1))
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Handler `pid` of service `svc` started at `now` (instants passed
    /// in order).
    pub fn started(&mut self, pid: i32, svc: usize, now: Instant) {
        self.recent.push_back((now, pid, svc));
    }

    /// Handler `pid` exited (or was never started): it no longer counts.
    pub fn exited(&mut self, pid: i32) {
        if let Some(k) = self.recent.iter().position(|&(_, p, _)| p == pid) {
            self.recent.remove(k);
        }
    }

    /// How many count at `now`, after dropping those past the window.
    pub fn count(&mut self, now: Instant) -> usize {
        while let Some(&(t, _, _)) = self.recent.front() {
            if now.saturating_duration_since(t) < START_WINDOW {
                break;
            }
            self.recent.pop_front();
        }
        self.recent.len()
    }

    /// Whether service `svc` must wait at `now`: the cap is reached and
    /// one of its own handlers is among those starting. A service none of
    /// whose handlers is starting may always start one, so that a burst on
    /// one service (thousands of long sessions, each counting for its
    /// window) never starves the others.
    pub fn full(&mut self, svc: usize, now: Instant) -> bool {
        self.count(now) >= self.cap && self.recent.iter().any(|&(_, _, s)| s == svc)
    }

    /// While the cap is reached at `now`, the instant the oldest entry
    /// still counting stops counting (an exit may end the wait sooner);
    /// `None` when it is not reached.
    pub fn until(&self, now: Instant) -> Option<Instant> {
        let live = self
            .recent
            .iter()
            .position(|&(t, _, _)| now.saturating_duration_since(t) < START_WINDOW)?;
        (self.recent.len() - live >= self.cap).then(|| self.recent[live].0 + START_WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_cap_counts_starts_within_the_window() {
        let t0 = Instant::now();
        let mut s = Starting::new(2);
        assert!(!s.full(0, t0));
        s.started(10, 0, t0);
        assert!(!s.full(0, t0));
        s.started(11, 0, t0 + ms(1));
        assert!(s.full(0, t0 + ms(1)), "two starting: the cap");
        assert_eq!(s.until(t0 + ms(1)), Some(t0 + START_WINDOW));
        // The first leaves the window: one counts, room for one more.
        assert!(!s.full(0, t0 + START_WINDOW));
        assert_eq!(s.count(t0 + START_WINDOW), 1);
        assert_eq!(s.until(t0 + START_WINDOW), None);
        // The second leaves it too.
        assert_eq!(s.count(t0 + ms(1) + START_WINDOW), 0);
    }

    #[test]
    fn an_exit_frees_its_place_at_once() {
        let t0 = Instant::now();
        let mut s = Starting::new(2);
        s.started(10, 0, t0);
        s.started(11, 0, t0);
        assert!(s.full(0, t0));
        s.exited(10);
        assert!(!s.full(0, t0));
        // An exit of a pid that no longer counts changes nothing.
        s.exited(99);
        s.exited(10);
        assert_eq!(s.count(t0), 1);
    }

    #[test]
    fn starts_past_the_cap_expire_with_the_window() {
        // Handlers started outside accept (after a PROXY header) are
        // counted though the cap was reached, and expire all the same.
        let t0 = Instant::now();
        let mut s = Starting::new(2);
        for pid in 0..10 {
            s.started(pid, 0, t0 + ms(pid as u64 / 4));
        }
        assert_eq!(s.count(t0 + ms(2)), 10);
        assert_eq!(s.until(t0 + ms(2)), Some(t0 + START_WINDOW));
        // Pids 0-3 started at 0 ms, 4-7 at 1 ms, 8 and 9 at 2 ms.
        assert_eq!(s.count(t0 + ms(1) + START_WINDOW), 2, "pids 8 and 9");
        assert_eq!(s.count(t0 + ms(2) + START_WINDOW), 0);
    }

    #[test]
    fn a_service_with_none_starting_may_always_start_one() {
        let t0 = Instant::now();
        let mut s = Starting::new(2);
        // Service 0's burst fills the cap, and more.
        for pid in 0..5 {
            s.started(pid, 0, t0);
        }
        assert!(s.full(0, t0));
        assert!(!s.full(1, t0), "service 1 has none starting");
        s.started(9, 1, t0);
        assert!(s.full(1, t0), "now it has one: it waits like the rest");
        s.exited(9);
        assert!(!s.full(1, t0));
    }

    #[test]
    fn the_cap_is_two_per_cpu_and_never_zero() {
        assert_eq!(Starting::for_cpus(2).cap(), 4);
        assert_eq!(Starting::for_cpus(16).cap(), 32);
        assert_eq!(Starting::for_cpus(0).cap(), 2);
        assert_eq!(Starting::new(0).cap(), 1);
    }
}
