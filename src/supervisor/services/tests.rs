//! Unit tests of the service table: no daemon and no sockets; time is one
//! base instant and offsets from it.

use super::*;

/// Services parsed from a real config, one per name.
fn services(names: &[&str]) -> Vec<Arc<Service>> {
    let mut text = String::new();
    for (i, n) in names.iter().enumerate() {
        text.push_str(&format!(
            "[[service]]\nname = \"{n}\"\nlisten = [\"127.0.0.1:{}\"]\nprogram = \"/bin/sh\"\nmax_instances = 2\n",
            9000 + i
        ));
    }
    let plan = crate::config::parse(
        std::path::Path::new("test.toml"),
        &text,
        &crate::config::RealSystem,
    )
    .expect("parse");
    plan.services
}

fn src(s: &str) -> Source {
    Source::Net(s.parse().expect("net"))
}

#[test]
fn a_pause_is_reported_when_entered_and_left_and_rate_pauses_are_quiet() {
    let mut t = ServiceTable::default();
    t.install(services(&["a"]).iter(), &[]);
    let now = Instant::now();
    assert_eq!(t.set_pause(0, None), None, "accepting, as before");
    assert_eq!(
        t.set_pause(0, Some(Pause::Instances)),
        Some(PauseChange {
            from: None,
            to: Some(PauseReason::Instances),
            quiet: false
        })
    );
    assert_eq!(t.set_pause(0, Some(Pause::Instances)), None, "once");
    assert_eq!(t.get(0).paused, Some(PauseReason::Instances));
    assert_eq!(
        t.set_pause(0, None),
        Some(PauseChange {
            from: Some(PauseReason::Instances),
            to: None,
            quiet: false
        })
    );
    let rate = t.set_pause(0, Some(Pause::Rate(now))).expect("entered");
    assert!(rate.quiet);
    assert!(t.set_pause(0, None).expect("left").quiet);
    assert_eq!(t.get(0).paused, None);
}

#[test]
fn capacity_pauses_at_max_instances_and_resumes_when_one_exits() {
    let mut t = ServiceTable::default();
    t.install(services(&["a"]).iter(), &[]);
    let now = Instant::now();
    t.started(0, src("127.0.0.1/32"), now);
    assert_eq!(t.capacity(0, 1, 10, now), None);
    t.started(0, src("127.0.0.2/32"), now);
    assert_eq!(t.capacity(0, 2, 10, now), Some(Pause::Instances));
    t.exited(0, src("127.0.0.1/32"), None);
    assert_eq!(t.capacity(0, 1, 10, now), None);
    assert_eq!(t.get(0).per_source.len(), 1);
}

#[test]
fn counters_and_pause_are_carried_over_a_reload_by_name() {
    let mut t = ServiceTable::default();
    t.install(services(&["a", "b"]).iter(), &[]);
    let now = Instant::now();
    t.accepted(0);
    t.accepted(0);
    t.refused(0, Reason::Deny, now);
    t.fork_failed(0, now);
    t.set_pause(0, Some(Pause::Instances));
    t.accepted(1);
    let running = [("a", src("127.0.0.1/32")), ("gone", src("127.0.0.2/32"))];
    t.install(services(&["c", "a"]).iter(), &running);
    assert_eq!(t.len(), 2);
    assert_eq!(t.position("a"), Some(1));
    assert_eq!(t.position("b"), None, "b left the plan");
    let a = t.get(1);
    assert_eq!(a.counters.accepted, 2);
    assert_eq!(a.counters.refused.deny, 1);
    assert_eq!(a.counters.refused.total(), 1);
    assert_eq!(a.counters.failed, 1);
    assert_eq!(a.paused, Some(PauseReason::Instances));
    assert!(a.backoff_until.is_some(), "the fork back-off stays");
    assert_eq!(a.running, 1, "recounted from the running handlers");
    let c = t.get(0);
    assert_eq!(c.counters.accepted, 0, "a new service starts at zero");
    assert_eq!(c.running, 0);
}

#[test]
fn refusal_lines_are_limited_per_second_and_the_rest_summed_up() {
    let mut t = ServiceTable::default();
    t.install(services(&["a"]).iter(), &[]);
    let now = Instant::now();
    for n in 0..REFUSAL_LINES_PER_SECOND {
        let log = t.refused(0, Reason::Allow, now);
        assert_eq!(
            log,
            RefusalLog {
                summary: None,
                line: true
            },
            "line {n}"
        );
    }
    for _ in 0..5 {
        assert!(!t.refused(0, Reason::Allow, now).line);
    }
    assert_eq!(t.get(0).counters.refused.allow, 15, "all are counted");
    let end = now + Duration::from_secs(1);
    assert_eq!(t.refusal_deadline(0), Some(end));
    assert_eq!(t.refusal_summary_due(0, now), None, "window still open");
    // A refusal after the window logs the summary first.
    let log = t.refused(0, Reason::Deny, end);
    assert_eq!(
        log,
        RefusalLog {
            summary: Some(5),
            line: true
        }
    );
    assert_eq!(t.refusal_deadline(0), None, "nothing suppressed now");
    // Or the loop flushes it when the window ends without one.
    for _ in 0..REFUSAL_LINES_PER_SECOND + 2 {
        t.refused(0, Reason::Deny, end);
    }
    let later = end + Duration::from_secs(1);
    assert_eq!(t.refusal_summary_due(0, later), Some(3));
    assert_eq!(t.refusal_summary_due(0, later), None, "once");
}

#[test]
fn exec_failures_back_off_once_per_retry_until_a_handler_succeeds() {
    let mut t = ServiceTable::default();
    t.install(services(&["a"]).iter(), &[]);
    let t0 = Instant::now();
    let first = t.exec_failed(0, t0, t0);
    assert_eq!(
        first,
        ExecFailure {
            first: true,
            retry: Some(Backoff::FIRST)
        }
    );
    assert_eq!(t.get(0).backoff_until, Some(t0 + Backoff::FIRST));
    // A child started before the first failure does not step it again.
    let before = t0 - Duration::from_millis(1);
    let later = t0 + Duration::from_millis(10);
    assert!(!t.exec_failed(0, before, later).first);
    assert_eq!(t.get(0).backoff_until, Some(t0 + Backoff::FIRST));
    // One started after it does.
    assert!(!t.exec_failed(0, later, later).first);
    assert_eq!(t.get(0).backoff_until, Some(later + Backoff::FIRST * 2));
    assert_eq!(t.get(0).counters.failed, 3);
    assert_eq!(
        t.exec_succeeded(0, t0 - Duration::from_millis(1), later),
        None
    );
    let done = t.exec_succeeded(0, later, later + Duration::from_millis(5));
    assert_eq!(done, Some((3, Duration::from_millis(15))));
    assert_eq!(t.get(0).backoff_until, None);
}

#[test]
fn durations_fall_in_their_bucket_and_survive_a_reload() {
    let mut t = ServiceTable::default();
    t.install(services(&["a"]).iter(), &[]);
    let ms = Duration::from_millis;
    for d in [ms(0), ms(1), ms(2), ms(700), Duration::from_secs(7200)] {
        t.started(0, src("127.0.0.1/32"), Instant::now());
        t.exited(0, src("127.0.0.1/32"), Some(d));
    }
    // An exec failure is no handler run.
    t.exited(0, src("127.0.0.1/32"), None);
    t.install(services(&["a"]).iter(), &[]);
    let h = &t.get(0).counters.durations;
    assert_eq!(h.count, 5);
    assert_eq!(h.sum, ms(703) + Duration::from_secs(7200));
    let cum = h.cumulative();
    // 0 and 1 ms are in le=0.001; 2 ms in le=0.005; 700 ms in le=1.
    assert_eq!(&cum[..7], &[2, 3, 3, 3, 3, 3, 4]);
    // Two hours is over the last bound: only in +Inf (the count).
    assert_eq!(cum[DURATION_BUCKETS.len() - 1], 4);
}

/// A wait service: its handlers do not count against `max_instances`
/// (each socket has its own, see `handover`); five quick exits pause it,
/// a reload lifts the pause but keeps the episode, so the next quick exit
/// pauses it for the next, longer delay.
#[test]
fn a_crash_loop_pauses_a_wait_service_and_a_reload_lifts_the_pause_only() {
    let text = "[[service]]\nname = \"w\"\nlisten = [\"69\"]\nprotocol = \"udp\"\nwait = true\nprogram = \"/bin/sh\"\n";
    let plan = crate::config::parse(
        std::path::Path::new("test.toml"),
        text,
        &crate::config::RealSystem,
    )
    .expect("parse");
    let mut t = ServiceTable::default();
    t.install(plan.services.iter(), &[]);
    let now = Instant::now();
    let any = src("0.0.0.0/32");
    t.started(0, any, now);
    t.started(0, any, now);
    assert_eq!(t.capacity(0, 2, 10, now), None, "two sockets, two handlers");
    let quick = Duration::from_millis(3);
    for _ in 0..4 {
        assert_eq!(t.wait_exited(0, quick, now), CrashStep::Nothing);
    }
    let second = Duration::from_secs(1);
    assert_eq!(t.wait_exited(0, quick, now), CrashStep::Pause(second));
    assert_eq!(
        t.capacity(0, 0, 10, now),
        Some(Pause::CrashLoop(now + second))
    );
    assert!(
        t.set_pause(0, t.capacity(0, 0, 10, now))
            .expect("entered")
            .quiet
    );
    t.install(plan.services.iter(), &[]);
    assert_eq!(t.capacity(0, 0, 10, now), None, "the reload lifted it");
    assert_eq!(
        t.wait_exited(0, quick, now),
        CrashStep::Pause(Duration::from_secs(2))
    );
    assert_eq!(
        t.wait_exited(0, Duration::from_secs(2), now),
        CrashStep::Resumed { quick: 6 }
    );
}

#[test]
fn pending_headers_count_toward_max_instances_until_done_or_reinstalled() {
    let mut t = ServiceTable::default();
    let svcs = services(&["a"]);
    t.install(svcs.iter(), &[]);
    let now = Instant::now();
    t.header_pending(0);
    assert_eq!(t.capacity(0, 1, 10, now), None);
    t.started(0, src("10.0.0.1/32"), now);
    assert_eq!(t.capacity(0, 2, 10, now), Some(Pause::Instances));
    assert_eq!(t.get(0).running, 1, "a pending header is not a handler");
    t.header_done(0);
    assert_eq!(t.capacity(0, 1, 10, now), None);
    t.header_done(0);
    assert_eq!(t.get(0).headers, 0, "never below zero");
    // A reload rebuilds the counts: the supervisor adds its pending ones.
    t.header_pending(0);
    t.install(svcs.iter(), &[("a", src("10.0.0.1/32"))]);
    assert_eq!((t.get(0).running, t.get(0).headers), (1, 0));
    // Every refusal reason is counted in the total.
    for r in [Reason::UntrustedProxy, Reason::ProxyHeader, Reason::Deny] {
        t.refused(0, r, now);
    }
    let c = &t.get(0).counters.refused;
    assert_eq!((c.untrusted_proxy, c.proxy_header, c.total()), (1, 1, 3));
}
