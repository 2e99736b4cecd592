//! Unit tests of the handler table: reaping through pidfds, and the
//! deadline heap. They start real children through `spawn` (`/bin/true`,
//! `/bin/sleep`). None of them makes the table sweep: `waitpid(-1)` would
//! reap the children of tests running beside them in this process.

use super::*;
use crate::spawn::{self, Conn, Spawner};
use std::ffi::CString;
use std::os::unix::net::UnixStream;

/// A service running `argv` (parsed from a real config, then its exec
/// path and arguments replaced).
fn service(argv: &[&str]) -> Arc<Service> {
    let text = "[[service]]\nname = \"t\"\nlisten = [\"127.0.0.1:9\"]\nprogram = \"/bin/sh\"\n";
    let mut plan = crate::config::parse(
        std::path::Path::new("test.toml"),
        text,
        &crate::config::RealSystem,
    )
    .expect("parse");
    let mut svc = Arc::try_unwrap(plan.services.remove(0)).expect("sole owner");
    svc.image.path = CString::new(argv[0]).expect("path");
    svc.image.argv = argv
        .iter()
        .map(|a| CString::new(*a).expect("arg"))
        .collect();
    svc.image.fd = None;
    Arc::new(svc)
}

/// Starts a handler of `svc` with deadline `term_at`, and puts it in
/// `table` with the pidfd it was cloned with.
fn start(
    table: &mut Children,
    spawner: &mut Spawner,
    svc: &Arc<Service>,
    id: u64,
    term_at: Option<Instant>,
) -> Pid {
    let (_ours, theirs) = UnixStream::pair().expect("socketpair");
    let client = Client::Inet {
        peer: "127.0.0.1:40000".parse().expect("addr"),
        local: "127.0.0.1:9".parse().expect("addr"),
    };
    let conn = Conn {
        stream: theirs.into(),
        client: client.clone(),
        id,
        err: None,
        proxy: None,
    };
    let pid = spawn::spawn(svc, &conn, spawner).expect("spawn");
    let pidfd = spawner.take_pidfd();
    assert!(pidfd.is_some(), "a handler is cloned with its pidfd");
    table.insert_watched(
        Child {
            pid,
            service: Arc::clone(svc),
            conn_id: id,
            peer: client,
            proxy: None,
            source: crate::plan::Source::Net("127.0.0.1/32".parse().expect("net")),
            started: Instant::now(),
            term_at,
            kill_at: None,
            terminated_for: None,
        },
        pidfd,
    );
    pid
}

/// Reaps until `n` exits are in, bounded.
fn reap_n(table: &mut Children, n: usize) -> Vec<Exit> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} reaped",
            out.len()
        );
        table.reap(Instant::now(), &mut out);
        std::thread::sleep(Duration::from_millis(5));
    }
    out
}

#[test]
fn watched_handlers_are_reaped_through_their_pidfds_without_a_sweep() {
    let (mut table, mut spawner) = (Children::default(), Spawner::new());
    let svc = service(&["/bin/true"]);
    let pids: Vec<Pid> = (0..50)
        .map(|i| start(&mut table, &mut spawner, &svc, i, None))
        .collect();
    assert_eq!(table.reaping(), ((50, 0), 0), "all watched, none swept");
    let exits = reap_n(&mut table, 50);
    let mut reaped: Vec<Pid> = exits.iter().map(|e| e.child.pid).collect();
    reaped.sort();
    let mut want = pids.clone();
    want.sort();
    assert_eq!(reaped, want);
    assert!(exits.iter().all(|e| e.status == Status::Code(0)));
    assert!(table.is_empty());
    // No sweep ran; the pidfds are closed and out of the set.
    assert_eq!(table.reaping(), ((0, 0), 0));
    // A reaped child's pidfd would stay readable: nothing is left to spin on.
    let mut more = Vec::new();
    table.reap(Instant::now(), &mut more);
    assert!(more.is_empty());
}

#[test]
fn deadlines_fire_from_the_heap_in_order_and_exited_handlers_are_stale() {
    let (mut table, mut spawner) = (Children::default(), Spawner::new());
    let sleep = service(&["/bin/sleep", "30"]);
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let late = start(&mut table, &mut spawner, &sleep, 1, Some(t0 + ms(30)));
    let first = start(&mut table, &mut spawner, &sleep, 2, Some(t0 + ms(10)));
    let second = start(&mut table, &mut spawner, &sleep, 3, Some(t0 + ms(20)));
    // One that exits by itself before its deadline.
    let gone = start(
        &mut table,
        &mut spawner,
        &service(&["/bin/true"]),
        4,
        Some(t0),
    );
    assert_eq!(table.next_deadline(), Some(t0));
    let exits = reap_n(&mut table, 1);
    assert_eq!(exits[0].child.pid, gone);

    let mut fired = Vec::new();
    table.fire_deadlines(t0 + ms(25), &mut fired);
    let order: Vec<(Pid, Signal)> = fired.iter().map(|f| (f.pid, f.signal)).collect();
    assert_eq!(
        order,
        [(first, Signal::SIGTERM), (second, Signal::SIGTERM)],
        "due ones in order; the exited one's entry is stale"
    );
    assert!(fired.iter().all(|f| f.reason == Termination::Timeout));
    assert_eq!(table.next_deadline(), Some(t0 + ms(30)));
    // SIGTERM ends sleep: reaped through the pidfds, and their SIGKILL
    // entries are stale from then on.
    let exits = reap_n(&mut table, 2);
    assert!(exits
        .iter()
        .all(|e| e.status == Status::Signal(Signal::SIGTERM)));
    fired.clear();
    table.fire_deadlines(t0 + ms(30), &mut fired);
    assert_eq!(fired.len(), 1);
    assert_eq!((fired[0].pid, fired[0].signal), (late, Signal::SIGTERM));
    reap_n(&mut table, 1);
    fired.clear();
    table.fire_deadlines(t0 + Duration::from_secs(60), &mut fired);
    assert!(fired.is_empty(), "every SIGKILL entry is stale");
    assert_eq!(table.next_deadline(), None);
    assert!(table.timers.is_empty());
}

#[test]
fn stale_entries_of_handlers_that_exited_early_are_dropped() {
    let (mut table, mut spawner) = (Children::default(), Spawner::new());
    let svc = service(&["/bin/true"]);
    let hour = Instant::now() + Duration::from_secs(3600);
    for i in 0..200 {
        start(&mut table, &mut spawner, &svc, i, Some(hour));
    }
    assert_eq!(table.timers.len(), 200);
    reap_n(&mut table, 200);
    let mut fired = Vec::new();
    table.fire_deadlines(Instant::now(), &mut fired);
    assert!(fired.is_empty());
    assert_eq!(
        table.timers.len(),
        0,
        "stale entries outnumbering the live ones are dropped"
    );
    assert_eq!(table.next_deadline(), None);
}
