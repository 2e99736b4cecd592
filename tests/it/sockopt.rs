//! Socket options (SPEC §10.3): read back on the accepted socket by a probe
//! handler, the backlog seen by `ss`, reuse_port, free_bind, bind_device,
//! defer_accept, and reloads that change options in place or rebind.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;

/// A service running the probe handler on `{port:p}` with `extra` keys.
fn probe_service(extra: &str) -> String {
    format!(
        "{DAEMON}\n[[service]]\nname = \"probe\"\nlisten = [\"127.0.0.1:{{port:p}}\"]\nprogram = \"sockprobe.py\"\n{extra}\n"
    )
}

/// What the probe handler printed, as name → value.
pub fn probe(addr: std::net::SocketAddr) -> HashMap<String, String> {
    let out = roundtrip(addr, b"");
    parse_probe(&out)
}

pub fn parse_probe(out: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `ss -ltn` for one local address: the Send-Q column of its LISTEN line
/// (the backlog), if it is listed.
fn ss_backlog(local: &str) -> Option<u32> {
    let out = Command::new("ss").args(["-Hltn"]).output().expect("run ss");
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // State Recv-Q Send-Q Local Peer
        (f.len() >= 4 && f[3] == local).then(|| f[2].parse().expect("Send-Q"))
    })
}

fn somaxconn() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("somaxconn")
        .trim()
        .parse()
        .expect("number")
}

#[test]
fn the_accepted_socket_has_the_listeners_options() {
    let d = Daemon::start(&probe_service(
        "keepalive_idle = \"30s\"\nkeepalive_interval = \"7s\"\nkeepalive_count = 4\nnodelay = true\nreceive_buffer = 65536\nsend_buffer = \"128K\"\nbacklog = 77\n",
    ));
    let p = probe(d.addr("p"));
    let want = [
        ("keepalive", "1"),
        ("idle", "30"),
        ("interval", "7"),
        ("count", "4"),
        ("nodelay", "1"),
        // Linux doubles the value given (its bookkeeping overhead).
        ("rcvbuf", "131072"),
        ("sndbuf", "262144"),
        ("PROTO", "TCP"),
    ];
    for (k, v) in want {
        assert_eq!(p.get(k).map(String::as_str), Some(v), "{k}: {p:?}");
    }
    let local = format!("127.0.0.1:{}", d.port("p"));
    assert_eq!(ss_backlog(&local), Some(77), "ss -ltn for {local}");
}

#[test]
fn without_options_the_kernel_defaults_hold_and_the_backlog_is_4096_capped() {
    let d = Daemon::start(&probe_service(""));
    let p = probe(d.addr("p"));
    assert_eq!(p.get("keepalive").map(String::as_str), Some("0"), "{p:?}");
    assert_eq!(p.get("nodelay").map(String::as_str), Some("0"), "{p:?}");
    let local = format!("127.0.0.1:{}", d.port("p"));
    assert_eq!(ss_backlog(&local), Some(4096.min(somaxconn())));
}

#[test]
fn keepalive_alone_turns_it_on() {
    let d = Daemon::start(&probe_service("keepalive = true\n"));
    let p = probe(d.addr("p"));
    assert_eq!(p.get("keepalive").map(String::as_str), Some("1"), "{p:?}");
}

#[test]
fn reuse_port_lets_a_second_daemon_share_the_address_and_both_serve() {
    let port = free_port();
    let svc = |who: &str| {
        format!(
            "{DAEMON}\n[[service]]\nname = \"probe\"\nlisten = [\"127.0.0.1:{port}\"]\nprogram = \"sockprobe.py\"\nreuse_port = true\nenv = {{ WHO = \"{who}\" }}\n"
        )
    };
    let a = Daemon::start(&svc("a"));
    let b = Daemon::start(&svc("b"));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        if let Some(who) = probe(addr).remove("WHO") {
            seen.insert(who);
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "both daemons serve: {seen:?}");
    drop((a, b));
}

/// A documentation address (RFC 5737) no interface has: bound, never
/// connected to.
const ABSENT: &str = "192.0.2.1";

#[test]
fn free_bind_binds_an_address_the_host_does_not_have() {
    let port = free_port();
    let svc = |extra: &str| {
        format!(
            "{DAEMON}\n[[service]]\nname = \"absent\"\nlisten = [\"{ABSENT}:{port}\"]\nprogram = \"tinyinetd-echo\"\n{extra}"
        )
    };
    let d = Daemon::start(&svc("free_bind = true\n"));
    let local = format!("{ABSENT}:{port}");
    assert!(ss_backlog(&local).is_some(), "{local} is not listening");
    drop(d);

    let mut d = Daemon::prepare(&svc(""));
    d.spawn(&|_| {});
    assert!(d.wait_exit(Duration::from_secs(10)).is_some(), "it started");
    let log = d.log();
    assert!(
        log.contains(&format!("binding {local}: Cannot assign requested address")),
        "{log}"
    );
}

#[test]
fn bind_device_lo_serves_and_a_missing_device_is_a_config_error() {
    let d = Daemon::start(&probe_service("bind_device = \"lo\"\n"));
    assert_eq!(
        probe(d.addr("p")).get("PROTO").map(String::as_str),
        Some("TCP")
    );
    drop(d);

    let d = Daemon::prepare(&probe_service("bind_device = \"tuxnodev0\"\n"));
    let out = run_tinyinetd(
        &["--check", "--config", d.config.to_str().unwrap()],
        Duration::from_secs(10),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let at = format!(
        ":{}:15: service \"probe\": ",
        line_of(&d.config, "tuxnodev0")
    );
    assert!(err.contains(&at) && err.contains("\"tuxnodev0\""), "{err}");
}

#[test]
fn bad_option_values_are_config_errors_at_their_place() {
    let cases = [
        ("receive_buffer = 0", "receive_buffer"),
        ("send_buffer = \"0K\"", "send_buffer"),
        ("keepalive_count = 0", "keepalive_count"),
        ("keepalive_count = 128", "keepalive_count"),
        ("keepalive_idle = \"500ms\"", "keepalive_idle"),
        ("keepalive_interval = \"40000s\"", "keepalive_interval"),
        ("backlog = 0", "backlog"),
        ("nodelay = \"yes\"", "nodelay"),
        ("socket_mode = \"0660\"", "socket_mode"),
    ];
    for (line, key) in cases {
        let d = Daemon::prepare(&probe_service(line));
        let out = run_tinyinetd(
            &["--check", "--config", d.config.to_str().unwrap()],
            Duration::from_secs(10),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{line}: accepted");
        let at = format!(":{}:", line_of(&d.config, line));
        assert!(err.contains(&at) && err.contains(key), "{line}: {err}");
    }
}

#[test]
fn check_shows_the_options_and_notes_a_backlog_above_somaxconn() {
    let big = somaxconn() + 1;
    let d = Daemon::prepare(&probe_service(&format!(
        "backlog = {big}\nkeepalive_idle = \"1m\"\nnodelay = true\ndefer_accept = \"2s\"\nreceive_buffer = \"256K\"\n"
    )));
    let out = run_tinyinetd(
        &["--check", "--config", d.config.to_str().unwrap()],
        Duration::from_secs(10),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let all = format!("{stdout}{stderr}");
    for want in [
        format!("backlog={big}"),
        "keepalive=idle:60s".to_string(),
        "nodelay=true".to_string(),
        "defer_accept=2s".to_string(),
        "receive_buffer=262144".to_string(),
        "somaxconn".to_string(),
    ] {
        assert!(all.contains(&want), "{want} missing: {all}");
    }
}

#[test]
fn defer_accept_starts_no_handler_for_a_silent_client() {
    let d = Daemon::start(&format!(
        "{DAEMON}\n[[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:{{port:e}}\"]\nprogram = \"tinyinetd-echo\"\ndefer_accept = \"2s\"\n"
    ));
    let silent = connect(d.addr("e"));
    let t0 = Instant::now();
    let mut talker = connect(d.addr("e"));
    talker.write_all(b"hi\n").expect("write");
    assert_eq!(read_n(&mut talker, 3), b"hi\n");
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "not at once: {:?}",
        t0.elapsed()
    );
    // The talker's handler is logged once the daemon is back from the
    // spawn, which may be after the handler has answered.
    assert!(
        d.wait_log("debug: start service=echo", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    // Within the interval the silent client has started no handler.
    while t0.elapsed() < Duration::from_millis(1800) {
        assert_eq!(
            d.log_lines("debug: start service=echo").len(),
            1,
            "{}",
            d.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    drop((silent, talker));
}

/// The inode of the socket listening on 127.0.0.1:`port`
/// (`/proc/net/tcp`), and whether the daemon holds it (`/proc/PID/fd`
/// reads `socket:[INODE]`).
fn listener_inode(d: &Daemon, port: u16) -> u64 {
    let tcp = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let want = format!("0100007F:{port:04X}");
    let inode: u64 = tcp
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f[1] == want && f[3] == "0A")
        .map(|f| f[9].parse().expect("inode"))
        .expect("no listening socket");
    let link = format!("socket:[{inode}]");
    let held = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .expect("fd dir")
        .flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == link));
    assert!(held, "the daemon does not hold {link}");
    inode
}

#[test]
fn reload_changes_keepalive_in_place_and_rebinds_for_reuse_port_refusing_nobody() {
    let mut d = Daemon::start(&probe_service(""));
    let addr = d.addr("p");
    let port = d.port("p");
    let before = listener_inode(&d, port);
    let stop = Arc::new(AtomicBool::new(false));
    let (done, errors) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, done, errors) = (stop.clone(), done.clone(), errors.clone());
        thread::spawn(move || {
            let t0 = Instant::now();
            for _ in 0..5000 {
                if stop.load(Ordering::Relaxed) || t0.elapsed() > Duration::from_secs(60) {
                    break;
                }
                let ok = TcpStream::connect(addr).is_ok_and(|mut s| {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    parse_probe(&read_all(&mut s)).contains_key("keepalive")
                });
                if ok {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let served = |n: usize| {
        wait_until(Duration::from_secs(10), || {
            done.load(Ordering::Relaxed) >= n
        })
    };
    assert!(served(5), "no load served");

    d.rewrite(&probe_service("keepalive = true\n"));
    reload(&mut d);
    assert_eq!(
        listener_inode(&d, port),
        before,
        "keepalive must not rebind"
    );
    assert_eq!(probe(addr).get("keepalive").map(String::as_str), Some("1"));
    let n = done.load(Ordering::Relaxed);
    assert!(served(n + 5), "load stopped after the in-place change");

    d.rewrite(&probe_service("keepalive = true\nreuse_port = true\n"));
    reload(&mut d);
    let after = listener_inode(&d, port);
    assert_ne!(after, before, "reuse_port must rebind");
    assert!(
        d.wait_log("listen-rebound service=probe", Duration::from_secs(5))
            && d.log().contains("reason=reuse_port"),
        "{}",
        d.log()
    );
    let n = done.load(Ordering::Relaxed);
    assert!(served(n + 5), "load stopped after the rebind");
    stop.store(true, Ordering::Relaxed);
    load.join().expect("load thread");
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "clients refused: {}",
        d.log()
    );
    assert_eq!(probe(addr).get("keepalive").map(String::as_str), Some("1"));
}

#[test]
fn reload_rebinds_for_free_bind_closing_the_old_socket_first() {
    let mut d = Daemon::start(&probe_service("nodelay = true\n"));
    let port = d.port("p");
    let before = listener_inode(&d, port);
    d.rewrite(&probe_service(
        "nodelay = true\nfree_bind = true\nbacklog = 9\n",
    ));
    reload(&mut d);
    assert!(
        d.log()
            .contains("info: listen-rebound service=probe addr=127.0.0.1:"),
        "{}",
        d.log()
    );
    assert!(d.log().contains("reason=free_bind"), "{}", d.log());
    assert_ne!(listener_inode(&d, port), before);
    let local = format!("127.0.0.1:{port}");
    assert_eq!(ss_backlog(&local), Some(9));
    assert_eq!(
        probe(d.addr("p")).get("nodelay").map(String::as_str),
        Some("1")
    );
    assert!(!d.log().contains("listen-failed"), "{}", d.log());
}
