//! The runtime state of every service, pure: handler counts, pause state,
//! counters, back-offs and the refusal-log limiter, and how they are
//! carried over a reload. No sockets, no clock reads, no logging: the loop
//! passes the time in and logs what the methods return.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admit::{self, Backoff, Bucket, CrashLoop, CrashStep, Load, Pause, PauseReason, Reason};
use crate::plan::{Service, Source};
use crate::shrink::Shrink;

/// Refusal log lines per service per second; the rest are counted and
/// summarised, so a flood from a denied address cannot fill the disk.
const REFUSAL_LINES_PER_SECOND: u32 = 10;

/// Refusals of one service, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The peer matched `deny`.
    pub deny: u64,
    /// The peer matched none of `allow`.
    pub allow: u64,
    /// The peer's source prefix was at `max_per_source`.
    pub max_per_source: u64,
    /// The peer was not one of `trusted_proxies`.
    pub untrusted_proxy: u64,
    /// No valid PROXY header, or none within `proxy_timeout`.
    pub proxy_header: u64,
}

impl Refused {
    fn count(&mut self, reason: Reason) {
        let n = match reason {
            Reason::Deny => &mut self.deny,
            Reason::Allow => &mut self.allow,
            Reason::MaxPerSource => &mut self.max_per_source,
            Reason::UntrustedProxy => &mut self.untrusted_proxy,
            Reason::ProxyHeader => &mut self.proxy_header,
        };
        *n += 1;
    }

    /// Every refusal, whatever the reason.
    pub fn total(&self) -> u64 {
        self.deny + self.allow + self.max_per_source + self.untrusted_proxy + self.proxy_header
    }
}

/// Per-service counters: the one set of values SIGUSR1's line, `tinyinetd
/// status` (table and JSON) and the Prometheus text all report. They
/// survive a reload for services that still exist.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Every accepted connection, refused ones included.
    pub accepted: u64,
    /// Refusals by reason.
    pub refused: Refused,
    /// Fork and exec failures.
    pub failed: u64,
    /// How long the handlers that reached their exec ran.
    pub durations: Durations,
}

/// The handler duration histogram's upper bounds in seconds, 1 ms to 1 h:
/// a step of about 5 or 2 per bucket, as short protocol exchanges and long
/// sessions both have their own buckets (docs/RELIABILITY.md, issue 21).
pub const DURATION_BUCKETS: [f64; 15] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// A histogram of handler run times.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Durations {
    /// Handlers per bucket, not cumulative: `per_bucket[i]` ran longer than
    /// bucket `i - 1`'s bound and at most `DURATION_BUCKETS[i]`.
    pub per_bucket: [u64; DURATION_BUCKETS.len()],
    /// Every handler counted, those over the last bound included.
    pub count: u64,
    /// Their run times added up.
    pub sum: Duration,
}

impl Durations {
    /// Counts one handler that ran for `d`.
    pub fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = DURATION_BUCKETS.iter().position(|&b| secs <= b) {
            self.per_bucket[i] += 1;
        }
        self.count += 1;
        self.sum += d;
    }

    /// The cumulative counts, one per bound (Prometheus' `le` buckets; the
    /// `+Inf` bucket is `count`).
    pub fn cumulative(&self) -> [u64; DURATION_BUCKETS.len()] {
        let mut out = self.per_bucket;
        for i in 1..out.len() {
            out[i] += out[i - 1];
        }
        out
    }
}

/// Runtime state of one service.
pub struct SvcState {
    /// The service as the current plan has it.
    pub svc: Arc<Service>,
    /// What SIGUSR1 reports; carried over a reload.
    pub counters: Counters,
    /// Handlers of this service running now.
    pub running: usize,
    /// Connections of this service whose PROXY header is being read: they
    /// count toward `max_instances` (and the daemon's `max_connections`)
    /// like running handlers, which they become.
    pub headers: usize,
    /// Running handlers by source prefix, for `max_per_source`.
    pub per_source: HashMap<Source, usize>,
    /// `max_rate`'s tokens.
    pub bucket: Bucket,
    /// Fork failures back the whole service off.
    backoff: Backoff,
    /// The service accepts nothing before then (a fork or exec back-off).
    pub backoff_until: Option<Instant>,
    /// Exec failures under way (learnt at reap): they back the service off
    /// too, through `backoff_until`.
    exec_failures: Option<ExecEpisode>,
    /// The pause last logged, so entering and leaving are logged once each.
    pub paused: Option<PauseReason>,
    /// The pause computed this turn (drives the poll set).
    pub pause_now: Option<Pause>,
    /// Limits the refusal lines logged.
    refusals: Limiter,
    /// Limits the handlers' stderr lines logged (`stderr = "log"`).
    stderr_lines: Limiter,
    /// A wait service's handlers exiting at once: the crash-loop episode.
    crash: CrashLoop,
    /// The service's sockets are not handed over before then (a crash-loop
    /// pause).
    pub crash_until: Option<Instant>,
}

impl SvcState {
    fn new(svc: &Arc<Service>) -> SvcState {
        SvcState {
            svc: Arc::clone(svc),
            counters: Counters::default(),
            running: 0,
            headers: 0,
            per_source: HashMap::new(),
            bucket: Bucket::new(),
            backoff: Backoff::default(),
            backoff_until: None,
            exec_failures: None,
            paused: None,
            pause_now: None,
            refusals: Limiter::default(),
            stderr_lines: Limiter::default(),
            crash: CrashLoop::default(),
            crash_until: None,
        }
    }
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
    /// The growing delay between retries.
    backoff: Backoff,
    /// The current delay.
    delay: Duration,
    /// When the delay was last stepped.
    stepped_at: Instant,
}

/// Rate limit for log lines of one kind (refusals, a service's handlers'
/// stderr): a window of one second.
#[derive(Default)]
pub(super) struct Limiter {
    /// When the current window ends; `None` before the first refusal.
    window_end: Option<Instant>,
    /// Lines logged in the window.
    lines: u32,
    /// Refusals not logged in the window, for its summary.
    suppressed: u64,
}

impl Limiter {
    /// One more line at `now`, `per_second` at most: says whether it is
    /// logged, and carries the summary of a window that just ended.
    pub(super) fn note(&mut self, now: Instant, per_second: u32) -> RefusalLog {
        let mut summary = None;
        if self.window_end.is_none_or(|t| t <= now) {
            summary = (self.suppressed > 0).then_some(self.suppressed);
            *self = Limiter {
                window_end: Some(now + Duration::from_secs(1)),
                lines: 0,
                suppressed: 0,
            };
        }
        let line = self.lines < per_second;
        if line {
            self.lines += 1;
        } else {
            self.suppressed += 1;
        }
        RefusalLog { summary, line }
    }

    /// The count of lines not logged, once their window has ended (and the
    /// window is closed then).
    pub(super) fn summary_due(&mut self, now: Instant) -> Option<u64> {
        if self.suppressed > 0 && self.window_end.is_some_and(|t| t <= now) {
            let n = self.suppressed;
            *self = Limiter::default();
            return Some(n);
        }
        None
    }

    /// The count not logged, whatever the window (the end of a source).
    pub(super) fn take_suppressed(&mut self) -> Option<u64> {
        let n = std::mem::take(&mut self.suppressed);
        (n > 0).then_some(n)
    }

    /// When a summary is due, if one is.
    fn deadline(&self) -> Option<Instant> {
        self.window_end.filter(|_| self.suppressed > 0)
    }
}

/// What to log for one refusal (or one rate-limited line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalLog {
    /// The summary of the window that just ended (`refused-suppressed`).
    pub summary: Option<u64>,
    /// Whether this refusal gets its own `refused` line.
    pub line: bool,
}

/// A pause entered or left, for the caller to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PauseChange {
    /// The pause before (`None`: the service was accepting).
    pub from: Option<PauseReason>,
    /// The pause now (`None`: the service accepts again).
    pub to: Option<PauseReason>,
    /// A rate pause comes and goes with every token: it is logged at debug
    /// and does not change the status line.
    pub quiet: bool,
}

/// What became of an exec failure, for the caller to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecFailure {
    /// The first of its episode: logged at error, with `retry`.
    pub first: bool,
    /// The delay set by the first failure.
    pub retry: Option<Duration>,
}

/// The services of the current plan, in plan order.
#[derive(Default)]
pub struct ServiceTable {
    /// One per enabled service; the loop's sockets hold indices into it.
    list: Vec<SvcState>,
}

impl ServiceTable {
    /// Makes `enabled` the table, carrying each service's counters, pause
    /// and back-offs over by name. `running` lists the running handlers as
    /// (service name, source prefix): the counts are rebuilt from it, so
    /// handlers of an earlier service of the same name count against this
    /// one's limits too.
    pub fn install<'a>(
        &mut self,
        enabled: impl Iterator<Item = &'a Arc<Service>>,
        running: &[(&str, Source)],
    ) {
        let mut old: HashMap<String, SvcState> = self
            .list
            .drain(..)
            .map(|s| (s.svc.name.clone(), s))
            .collect();
        for svc in enabled {
            let mut st = match old.remove(&svc.name) {
                Some(mut st) => {
                    st.svc = Arc::clone(svc);
                    // A reload is how an administrator says "try again": a
                    // crash-loop pause ends now. The episode goes on, so a
                    // handler still broken pauses again at its first quick
                    // exit, for the next, longer delay.
                    st.crash_until = None;
                    st
                }
                None => SvcState::new(svc),
            };
            st.running = 0;
            // The supervisor counts the pending headers again.
            st.headers = 0;
            st.per_source.clear();
            for (_, source) in running.iter().filter(|(name, _)| *name == svc.name) {
                st.running += 1;
                *st.per_source.entry(*source).or_insert(0) += 1;
            }
            self.list.push(st);
        }
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &SvcState> {
        self.list.iter()
    }

    pub fn get(&self, i: usize) -> &SvcState {
        &self.list[i]
    }

    /// The index of the service called `name`, if the plan has it.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|s| s.svc.name == name)
    }

    /// The load [`admit::capacity`] judges service `i` by.
    fn load(&self, i: usize, total: usize, max_connections: usize) -> Load {
        let st = &self.list[i];
        Load {
            // A wait service's `max_instances` (1) is per socket: each
            // socket leaves the poll set while its handler runs, and
            // another socket of the service is served meanwhile.
            running: if st.svc.wait {
                0
            } else {
                st.running + st.headers
            },
            total,
            max_connections,
            backoff_until: st.backoff_until,
            crash_until: st.crash_until,
        }
    }

    /// Whether service `i` is in an episode of exec failures (its program
    /// fails before it runs: nothing of it starts, nothing to pace).
    pub fn exec_failing(&self, i: usize) -> bool {
        self.list[i].exec_failures.is_some()
    }

    /// Whether service `i` may accept now.
    pub fn capacity(
        &self,
        i: usize,
        total: usize,
        max_connections: usize,
        now: Instant,
    ) -> Option<Pause> {
        let st = &self.list[i];
        let load = self.load(i, total, max_connections);
        admit::capacity(&st.svc.limits, load, &st.bucket, now)
    }

    /// Records this turn's pause of service `i`; says whether it entered
    /// or left one (each is logged once).
    pub fn set_pause(&mut self, i: usize, pause: Option<Pause>) -> Option<PauseChange> {
        let st = &mut self.list[i];
        st.pause_now = pause;
        let to = pause.map(Pause::reason);
        if to == st.paused {
            return None;
        }
        let from = std::mem::replace(&mut st.paused, to);
        // A rate pause comes and goes with every token; a crash-loop pause
        // has its own lines (`wait-backoff`, `wait-resumed`) with its delay.
        let quiet = [to, from]
            .iter()
            .any(|r| matches!(r, Some(PauseReason::Rate | PauseReason::CrashLoop)));
        Some(PauseChange { from, to, quiet })
    }

    /// A connection of service `i` waits for its PROXY header.
    pub fn header_pending(&mut self, i: usize) {
        self.list[i].headers += 1;
    }

    /// A connection of service `i` no longer waits for its header.
    pub fn header_done(&mut self, i: usize) {
        let st = &mut self.list[i];
        st.headers = st.headers.saturating_sub(1);
    }

    /// An accepted connection, before the admission decision.
    pub fn accepted(&mut self, i: usize) {
        self.list[i].counters.accepted += 1;
    }

    /// A refused connection: counts it and says what to log.
    pub fn refused(&mut self, i: usize, reason: Reason, now: Instant) -> RefusalLog {
        let st = &mut self.list[i];
        st.counters.refused.count(reason);
        st.refusals.note(now, REFUSAL_LINES_PER_SECOND)
    }

    /// The count of refusals not logged, once their window has ended (and
    /// the window is closed then).
    pub fn refusal_summary_due(&mut self, i: usize, now: Instant) -> Option<u64> {
        self.list[i].refusals.summary_due(now)
    }

    /// When a refusal summary is due, if one is.
    pub fn refusal_deadline(&self, i: usize) -> Option<Instant> {
        self.list[i].refusals.deadline()
    }

    /// A stderr line of one of service `i`'s handlers: whether to log it.
    pub fn stderr_line(&mut self, i: usize, now: Instant, per_second: u32) -> RefusalLog {
        self.list[i].stderr_lines.note(now, per_second)
    }

    /// The count of stderr lines not logged, once their window has ended.
    pub fn stderr_summary_due(&mut self, i: usize, now: Instant) -> Option<u64> {
        self.list[i].stderr_lines.summary_due(now)
    }

    /// When a stderr summary is due, if one is.
    pub fn stderr_deadline(&self, i: usize) -> Option<Instant> {
        self.list[i].stderr_lines.deadline()
    }

    /// Spends a `max_rate` token of service `i` for a connection it admitted
    /// (before the spawn, so a failed one costs a token too).
    pub fn take_token(&mut self, i: usize, now: Instant) {
        let st = &mut self.list[i];
        if let Some(rate) = st.svc.limits.max_rate {
            st.bucket.take(rate, now);
        }
    }

    /// A handler of service `i` started for `source`.
    pub fn started(&mut self, i: usize, source: Source, now: Instant) {
        let st = &mut self.list[i];
        st.running += 1;
        *st.per_source.entry(source).or_insert(0) += 1;
        if st.backoff.failures > 0 {
            st.backoff.succeed();
            st.backoff_until = None;
        }
        // Exec failing: this child is the one try until the delay has
        // passed again (see `ExecEpisode`).
        if let Some(ep) = &st.exec_failures {
            st.backoff_until = Some(now + ep.delay);
        }
    }

    /// A fork for service `i` failed: counts it and backs the service off;
    /// returns the delay.
    pub fn fork_failed(&mut self, i: usize, now: Instant) -> Duration {
        let st = &mut self.list[i];
        st.counters.failed += 1;
        let delay = st.backoff.fail();
        st.backoff_until = Some(now + delay);
        delay
    }

    /// A handler of service `i`, started at `started`, failed at its exec.
    pub fn exec_failed(&mut self, i: usize, started: Instant, now: Instant) -> ExecFailure {
        let st = &mut self.list[i];
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
                st.backoff_until = st.backoff_until.max(Some(now + delay));
                ExecFailure {
                    first: true,
                    retry: Some(delay),
                }
            }
            Some(ep) => {
                ep.failures += 1;
                if started >= ep.stepped_at {
                    ep.delay = ep.backoff.fail();
                    ep.stepped_at = now;
                    st.backoff_until = st.backoff_until.max(Some(now + ep.delay));
                }
                ExecFailure {
                    first: false,
                    retry: None,
                }
            }
        }
    }

    /// A handler of service `i`, started at `started`, reached its exec: if
    /// it started after the exec failures began, they are over. Returns
    /// the episode's failures and length then.
    pub fn exec_succeeded(
        &mut self,
        i: usize,
        started: Instant,
        now: Instant,
    ) -> Option<(u64, Duration)> {
        let st = &mut self.list[i];
        if st
            .exec_failures
            .as_ref()
            .is_none_or(|ep| started < ep.began)
        {
            return None;
        }
        let ep = st.exec_failures.take()?;
        st.backoff_until = None;
        Some((ep.failures, now.saturating_duration_since(ep.began)))
    }

    /// A wait handler of service `i` exited after `lived`: a crash-loop
    /// pause starts (or grows), or an episode ends (see [`CrashLoop`]).
    pub fn wait_exited(&mut self, i: usize, lived: Duration, now: Instant) -> CrashStep {
        let st = &mut self.list[i];
        let step = st.crash.exited(lived);
        if let CrashStep::Pause(delay) = step {
            st.crash_until = Some(now + delay);
        }
        step
    }

    /// A handler of service `i` that held `source` was reaped; `ran`: how
    /// long, when it had reached its exec (for the duration histogram).
    pub fn exited(&mut self, i: usize, source: Source, ran: Option<Duration>) {
        let st = &mut self.list[i];
        if let Some(d) = ran {
            st.counters.durations.observe(d);
        }
        st.running = st.running.saturating_sub(1);
        if let Some(n) = st.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                st.per_source.remove(&source);
                st.per_source.shrink_after_burst();
            }
        }
    }
}

#[cfg(test)]
mod tests;
