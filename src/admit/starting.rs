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
//! # Unless a core is idle
//!
//! The window also counts handlers that finished starting long before it
//! ends: a session that waits for its client, a handler waiting on a slow
//! one. Counted alone, thousands of long sessions opened at once were
//! admitted at about `cap` per window while the cores idled (10,000 took
//! about 6 s on two cores, against under a second for busybox inetd). So
//! when the cap is reached, the daemon asks
//! the machine how many tasks are runnable right now (the fourth field of
//! `/proc/loadavg`, the daemon itself included): while fewer than `cap`
//! are, the cores have room and the next handler starts all the same. When
//! they have none, the listeners wait, and the machine is asked again
//! after [`RECHECK_FIRST`], then twice as long each time it still has no
//! room, up to the window, and from the first again once it had room: a
//! handler that blocks gives no event. Without
//! the count (no `/proc`), the cap holds as if the cores were busy.
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

/// The first wait before the machine is asked again how many tasks are
/// runnable, while the cap holds; it doubles up to [`START_WINDOW`].
pub const RECHECK_FIRST: Duration = Duration::from_millis(1);

/// The number of runnable tasks in `/proc/loadavg`'s text: the part
/// before the `/` of its fourth field (`0.52 1.11 0.84 3/245 1234`).
pub fn runnable_of(loadavg: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(loadavg).ok()?;
    let field = text.split_ascii_whitespace().nth(3)?;
    let (running, total) = field.split_once('/')?;
    total.parse::<u32>().ok()?;
    running.parse().ok()
}

/// What the cap says for a service ([`Starting::pace`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Below the cap, or none of the service's handlers is starting.
    Free,
    /// At the cap, but the cores have room: start it all the same.
    Room,
    /// At the cap and the cores have no room: wait.
    Wait,
}

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

    /// Whether service `svc` may start a handler at `now`. When
    /// [`Starting::full`], `runnable()` is asked (tasks runnable now, the
    /// daemon included): fewer than the cap is room on the cores; as many
    /// or more, or unknown, is none.
    pub fn pace(
        &mut self,
        svc: usize,
        now: Instant,
        runnable: impl FnOnce() -> Option<u32>,
    ) -> Pace {
        if !self.full(svc, now) {
            Pace::Free
        } else if runnable().is_some_and(|n| (n as usize) < self.cap) {
            Pace::Room
        } else {
            Pace::Wait
        }
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

/// When to ask the machine again while the cap holds: [`RECHECK_FIRST`]
/// after the first time it had no room, twice as long after each next
/// time, never longer than [`START_WINDOW`]; back to the first once the
/// machine had room ([`Pace::Room`]). An episode that ends by exits does
/// not reset it, so a machine that stays busy is asked rarely.
#[derive(Debug)]
pub struct Recheck {
    step: Duration,
}

impl Default for Recheck {
    fn default() -> Self {
        Recheck {
            step: RECHECK_FIRST,
        }
    }
}

impl Recheck {
    /// The cap held at `now`: the instant to ask again.
    pub fn held(&mut self, now: Instant) -> Instant {
        let at = now + self.step;
        self.step = (self.step * 2).min(START_WINDOW);
        at
    }

    /// The machine had room: the next wait starts short again.
    pub fn reset(&mut self) {
        self.step = RECHECK_FIRST;
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
    fn the_runnable_count_is_read_from_loadavg() {
        assert_eq!(runnable_of(b"0.52 1.11 0.84 3/245 1234\n"), Some(3));
        assert_eq!(runnable_of(b"12.00 9.50 8.25 17/1032 998877\n"), Some(17));
        for bad in [
            &b""[..],
            b"0.52 1.11 0.84",
            b"0.52 1.11 0.84 3 1234",
            b"0.5 1 1 x/2 1",
            b"0.5 1 1 3/ 1",
            b"\xff",
        ] {
            assert_eq!(runnable_of(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_full_cap_holds_only_while_the_cores_have_no_room() {
        let t0 = Instant::now();
        let mut s = Starting::new(4);
        for pid in 0..4 {
            s.started(pid, 0, t0);
        }
        assert_eq!(
            s.pace(0, t0, || Some(4)),
            Pace::Wait,
            "four runnable: no room"
        );
        assert_eq!(s.pace(0, t0, || Some(9)), Pace::Wait);
        assert_eq!(s.pace(0, t0, || None), Pace::Wait, "unknown counts as busy");
        assert_eq!(s.pace(0, t0, || Some(3)), Pace::Room, "room on the cores");
        assert_eq!(s.pace(0, t0, || Some(1)), Pace::Room);
        // Below the cap the machine is not asked at all.
        s.exited(0);
        assert_eq!(s.pace(0, t0, || panic!("asked below the cap")), Pace::Free);
        // Nor for a service with none starting.
        s.started(4, 0, t0);
        assert_eq!(
            s.pace(1, t0, || panic!("asked for another service")),
            Pace::Free
        );
    }

    #[test]
    fn the_recheck_doubles_up_to_the_window_and_starts_over() {
        let t0 = Instant::now();
        let mut r = Recheck::default();
        let waits: Vec<Duration> = (0..5).map(|_| r.held(t0) - t0).collect();
        assert_eq!(waits, [1, 2, 4, 5, 5].map(Duration::from_millis));
        r.reset();
        assert_eq!(r.held(t0) - t0, RECHECK_FIRST);
    }

    #[test]
    fn the_cap_is_two_per_cpu_and_never_zero() {
        assert_eq!(Starting::for_cpus(2).cap(), 4);
        assert_eq!(Starting::for_cpus(16).cap(), 32);
        assert_eq!(Starting::for_cpus(0).cap(), 2);
        assert_eq!(Starting::new(0).cap(), 1);
    }
}
