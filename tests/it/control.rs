//! The control socket (§10.7): `tinyinetd status` (table, JSON,
//! Prometheus), `tinyinetd reload`, `tinyinetd-metrics`, who may use it,
//! and stuck clients that must cost the accept path nothing.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::harness::*;

/// An echo service (127.0.0.2 denied) and a control socket in the
/// daemon's directory (the harness turns it off otherwise).
fn conf() -> String {
    format!("{DAEMON}control_socket = \"{{tmp}}/control.sock\"\n\n[[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:{{port:echo}}\"]\nprogram = \"tinyinetd-echo\"\ndeny = [\"127.0.0.2\"]\n")
}

/// Runs `tinyinetd ARGS -c CONFIG` (optionally as another user through
/// setpriv), bounded in time.
fn cli(d: &Daemon, args: &[&str], prefix: &[&str]) -> Output {
    let bin = daemon_bin();
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    cmd.args(args)
        .arg("-c")
        .arg(&d.config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn tinyinetd");
    let deadline = Instant::now() + Duration::from_secs(90);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
    }
    child.wait_with_output().expect("output")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Holds an echo connection open with its handler running.
fn hold(d: &Daemon) -> std::net::TcpStream {
    let mut s = connect(d.addr("echo"));
    s.write_all(b"x").expect("write");
    assert_eq!(read_n(&mut s, 1), b"x");
    s
}

#[test]
fn status_json_parses_and_lists_a_held_connection() {
    let d = Daemon::start(&conf());
    let held = hold(&d);
    let out = cli(&d, &["status", "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut tool = Command::new("python3")
        .args(["-m", "json.tool"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("python3");
    tool.stdin
        .take()
        .expect("stdin")
        .write_all(&out.stdout)
        .expect("write");
    assert!(
        tool.wait().expect("wait").success(),
        "{}",
        text(&out.stdout)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
    let conns = doc["connections"].as_array().expect("connections");
    let mine = held.local_addr().expect("local").to_string();
    let c = conns
        .iter()
        .find(|c| c["peer"] == mine.as_str())
        .unwrap_or_else(|| panic!("no connection from {mine}: {doc}"));
    let pid = c["pid"].as_i64().expect("pid") as i32;
    assert!(d.children().iter().any(|(p, _)| *p == pid), "{doc}");
    assert_eq!(c["service"], "echo");
    assert_eq!(doc["services"][0]["running"], 1, "{doc}");
}

/// The start offset of every cell of a line (cells are runs of non-blanks).
fn offsets(line: &str) -> Vec<usize> {
    let b = line.as_bytes();
    (0..b.len())
        .filter(|&i| b[i] != b' ' && (i == 0 || b[i - 1] == b' '))
        .collect()
}

#[test]
fn the_status_table_lines_up() {
    let d = Daemon::start(&conf());
    let _held = hold(&d);
    let out = cli(&d, &["status"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    let lines: Vec<&str> = t.lines().collect();
    assert!(lines[0].starts_with("SERVICE  LISTEN"), "{t}");
    assert_eq!(offsets(lines[0]), offsets(lines[1]), "{t}");
    let conn = lines
        .iter()
        .position(|l| l.starts_with("CONN "))
        .expect("connections");
    assert_eq!(offsets(lines[conn]), offsets(lines[conn + 1]), "{t}");
}

/// `key=N` of a log line.
fn field(line: &str, key: &str) -> u64 {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

/// The value of the sample `name` in Prometheus text.
fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
}

/// Some traffic: two sessions and a refusal.
fn traffic(d: &Daemon) {
    assert_eq!(roundtrip(d.addr("echo"), b"a"), b"a");
    assert_eq!(roundtrip(d.addr("echo"), b"b"), b"b");
    let mut r = connect_from("127.0.0.2".parse().expect("ip"), d.addr("echo")).expect("connect");
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf);
    assert!(
        d.wait_log("reason=deny", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    assert!(
        wait_until(Duration::from_secs(5), || d.children().is_empty()),
        "handlers did not end"
    );
}

#[test]
fn prometheus_passes_promtool_and_equals_the_sigusr1_line() {
    if !Path::new("/usr/bin/promtool").exists() {
        eprintln!("skipped: /usr/bin/promtool is missing (Debian package prometheus)");
        return;
    }
    let d = Daemon::start(&conf());
    traffic(&d);
    let out = cli(&d, &["status", "--prometheus"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let prom = text(&out.stdout);
    let mut check = Command::new("/usr/bin/promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(prom.as_bytes())
        .expect("write");
    let checked = check.wait_with_output().expect("promtool");
    assert!(
        checked.status.success(),
        "{}{}\n{prom}",
        text(&checked.stdout),
        text(&checked.stderr)
    );
    d.signal(Signal::SIGUSR1);
    assert!(d.wait_log("info: status service=echo", Duration::from_secs(5)));
    let line = d
        .log_lines("info: status service=echo")
        .pop()
        .expect("line");
    let svc = "{service=\"echo\"}";
    assert_eq!(
        sample(&prom, &format!("tinyinetd_accepted_total{svc}")),
        field(&line, "accepted")
    );
    assert_eq!(field(&line, "accepted"), 3, "{line}");
    assert_eq!(
        sample(&prom, &format!("tinyinetd_failed_total{svc}")),
        field(&line, "failed")
    );
    assert_eq!(
        sample(&prom, &format!("tinyinetd_running{svc}")),
        field(&line, "running")
    );
    assert_eq!(
        sample(
            &prom,
            "tinyinetd_refused_total{service=\"echo\",reason=\"deny\"}"
        ),
        field(&line, "refused_deny")
    );
    assert_eq!(field(&line, "refused_deny"), 1, "{line}");
    // The two sessions that ran are in the histogram.
    assert_eq!(
        sample(
            &prom,
            &format!("tinyinetd_handler_duration_seconds_count{svc}")
        ),
        2
    );
}

/// `curl -s URL` → (status code, body).
fn curl(url: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "20", "-w", "\n%{http_code}", url])
        .output()
        .expect("run curl");
    let t = text(&out.stdout);
    let (body, code) = t.rsplit_once('\n').unwrap_or(("", &t));
    (code.to_string(), body.to_string())
}

#[test]
fn tinyinetd_metrics_serves_the_same_counters_over_http() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("skipped: curl is missing");
        return;
    }
    // A root daemon runs handlers as nobody: its group may read.
    let group = if is_root() {
        "[daemon]\ncontrol_group = \"nogroup\"\n"
    } else {
        "[daemon]\n"
    };
    let c = format!(
        "{}\n[[service]]\nname = \"metrics\"\nlisten = [\"127.0.0.1:{{port:metrics}}\"]\nprogram = \"tinyinetd-metrics\"\nargs = [\"-c\", \"{{tmp}}/tinyinetd.toml\"]\n",
        conf().replace("[daemon]\n", group)
    );
    let d = Daemon::start(&c);
    traffic(&d);
    let url = format!("http://127.0.0.1:{}", d.port("metrics"));
    let (code, body) = curl(&format!("{url}/metrics"));
    assert_eq!(code, "200", "{body}\n{}", d.log());
    let status = text(&cli(&d, &["status", "--prometheus"], &[]).stdout);
    for name in [
        "tinyinetd_accepted_total{service=\"echo\"}",
        "tinyinetd_refused_total{service=\"echo\",reason=\"deny\"}",
        "tinyinetd_failed_total{service=\"echo\"}",
    ] {
        assert_eq!(sample(&body, name), sample(&status, name), "{name}");
    }
    assert_eq!(
        sample(&body, "tinyinetd_accepted_total{service=\"echo\"}"),
        3
    );
    let (code, _) = curl(&format!("{url}/other"));
    assert_eq!(code, "404");
}

#[test]
fn reload_prints_check_errors_and_exits_1_then_the_changes_and_exits_0() {
    let mut d = Daemon::start(&conf());
    d.rewrite(&format!("{}maximum = 3\n", conf()));
    let out = cli(&d, &["reload"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let check = run_tinyinetd(
        &["--check", "-c", &d.config.to_string_lossy()],
        Duration::from_secs(10),
    );
    let problems = text(&check.stderr);
    assert!(problems.contains(".toml:"), "{problems}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&problems),
        "reload said:\n{stderr}\n--check said:\n{problems}"
    );
    assert!(
        stderr.contains("still serves its previous configuration"),
        "{stderr}"
    );
    // The old configuration serves on.
    assert_eq!(roundtrip(d.addr("echo"), b"ok"), b"ok");

    d.rewrite(&format!(
        "{}\n[[service]]\nname = \"two\"\nlisten = [\"127.0.0.1:{{port:two}}\"]\nprogram = \"tinyinetd-echo\"\n",
        conf()
    ));
    let out = cli(&d, &["reload"], &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("service added: two\n"), "{stdout}");
    assert!(
        stdout.contains(&format!("socket opened: {}\n", d.addr("two"))),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("socket kept: {}\n", d.addr("echo"))),
        "{stdout}"
    );
    assert_eq!(roundtrip(d.addr("two"), b"2"), b"2");
}

#[test]
fn no_daemon_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("none.sock");
    let cfg = dir.path().join("t.toml");
    std::fs::write(
        &cfg,
        format!("[daemon]\ncontrol_socket = \"{}\"\n", sock.display()),
    )
    .expect("write");
    let out = run_tinyinetd(
        &["status", "-c", &cfg.to_string_lossy()],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "tinyinetd: no control socket at {}: is tinyinetd running?\n",
            sock.display()
        )
    );
    // A stale file: nobody accepts on it.
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind"));
    let out = run_tinyinetd(
        &["status", "-c", &cfg.to_string_lossy()],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is tinyinetd running?"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_explicit_control_socket_in_use_or_not_a_socket_stops_the_start() {
    let d = Daemon::start(&conf());
    let taken = d.dir.path().join("control.sock");
    let other = tempfile::tempdir().expect("tempdir");
    let file = other.path().join("plain");
    std::fs::write(&file, "x").expect("write");
    for (path, says) in [(&taken, "in use"), (&file, "not a socket")] {
        let cfg = other.path().join("t.toml");
        std::fs::write(
            &cfg,
            format!(
                "[daemon]\nlog = \"stderr\"\ncontrol_socket = \"{}\"\n[[service]]\nname = \"e\"\nlisten = [\"127.0.0.1:{}\"]\nprogram = \"/bin/cat\"\n",
                path.display(),
                free_port()
            ),
        )
        .expect("write");
        let out = run_tinyinetd(&["-c", &cfg.to_string_lossy()], Duration::from_secs(10));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&path.display().to_string()) && err.contains(says),
            "{err}"
        );
    }
    assert_eq!(std::fs::read_to_string(&file).expect("kept"), "x");
    // The running daemon's socket is still its own.
    assert!(cli(&d, &["status"], &[]).status.success());
}

/// Users and a group the access test creates, removed when it ends.
struct Accounts;

impl Accounts {
    fn create() -> Accounts {
        let g = Accounts;
        g.remove();
        let run = |args: &[&str]| {
            let ok = Command::new(args[0])
                .args(&args[1..])
                .status()
                .expect(args[0]);
            assert!(ok.success(), "{args:?}");
        };
        run(&["groupadd", "--system", "tctlgrp"]);
        for (user, extra) in [("tctlout", None), ("tctlin", Some("tctlgrp"))] {
            let mut a = vec![
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ];
            if let Some(e) = extra {
                a.extend(["-G", e]);
            }
            a.push(user);
            run(&a);
        }
        g
    }

    fn remove(&self) {
        for u in ["tctlout", "tctlin"] {
            let _ = Command::new("userdel")
                .arg(u)
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("groupdel")
            .arg("tctlgrp")
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        self.remove();
    }
}

#[test]
fn a_group_member_may_read_but_not_reload_and_others_may_not_read() {
    if !is_root() {
        eprintln!("skipped: creating test users needs root");
        return;
    }
    let _accounts = Accounts::create();
    let d = Daemon::start(&conf().replace("[daemon]\n", "[daemon]\ncontrol_group = \"tctlgrp\"\n"));
    // The binary where those users can run it.
    let bin: PathBuf = d.handlers.join("tinyinetd");
    std::fs::copy(daemon_bin(), &bin).expect("copy tinyinetd");
    let as_user = |user: &str, args: &[&str]| -> Output {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--init-groups",
        ])
        .arg(&bin)
        .args(args)
        .arg("-c")
        .arg(&d.config)
        .env_remove("XDG_RUNTIME_DIR");
        c.output().expect("setpriv")
    };
    let out = as_user("tctlout", &["status"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("permission denied")
            && err.contains("tctlgrp")
            && err.contains("control.sock"),
        "{err}"
    );
    let out = as_user("tctlin", &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = as_user("tctlin", &["reload"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("permission denied")
            && err.contains("may not reload")
            && err.contains("control.sock"),
        "{err}"
    );
    assert!(d.wait_log("control-refused cmd=reload", Duration::from_secs(5)));
}

#[test]
fn stuck_control_clients_cost_the_accept_path_nothing_and_are_dropped() {
    let d = Daemon::start(&conf());
    assert_eq!(roundtrip(d.addr("echo"), b"warm"), b"warm");
    let idle = d.fd_count();
    let path = d.dir.path().join("control.sock");
    // One that asks for the status and never reads it, then 50 that say nothing.
    let mut stuck = UnixStream::connect(&path).expect("connect");
    stuck.write_all(b"{\"cmd\":\"status\"}\n").expect("write");
    let silent: Vec<UnixStream> = (0..50)
        .map(|_| UnixStream::connect(&path).expect("connect"))
        .collect();
    let started = Instant::now();
    // C=8 echo load meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, errors) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let addr = d.addr("echo");
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (stop, ok, errors) = (stop.clone(), ok.clone(), errors.clone());
            std::thread::spawn(move || {
                let end = Instant::now() + Duration::from_secs(20);
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    let r = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                        .and_then(|mut s| {
                            s.set_read_timeout(Some(Duration::from_secs(2)))?;
                            s.write_all(b"ping")?;
                            s.shutdown(Shutdown::Write)?;
                            let mut b = Vec::new();
                            s.read_to_end(&mut b)?;
                            Ok(b)
                        });
                    match r {
                        Ok(b) if b == b"ping" => ok.fetch_add(1, Ordering::Relaxed),
                        _ => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker");
    }
    assert_eq!(errors.load(Ordering::Relaxed), 0, "{}", d.log());
    assert!(
        ok.load(Ordering::Relaxed) > 50,
        "only {} sessions",
        ok.load(Ordering::Relaxed)
    );
    // Dropped at the request deadline (5 s) or, for those over 16, at once.
    assert!(
        wait_until(Duration::from_secs(10), || d
            .log()
            .contains("control-dropped")
            && d.fd_count() <= idle),
        "fds {} (idle {idle})\n{}",
        d.fd_count(),
        d.log()
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "dropped before the deadline"
    );
    assert!(d.log().contains("reason=deadline"), "{}", d.log());
    assert!(d.log().contains("reason=busy"), "{}", d.log());
    // The silent ones see their end.
    let mut s = silent.into_iter().next().expect("one");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut b = Vec::new();
    let _ = s.read_to_end(&mut b);
    drop(stuck);
    assert!(cli(&d, &["status"], &[]).status.success());
}

#[test]
fn sighup_moves_the_control_socket_and_the_exit_removes_it() {
    let mut d = Daemon::start(&conf());
    let old = d.dir.path().join("control.sock");
    let new = d.dir.path().join("moved.sock");
    d.rewrite(&conf().replace("control.sock", "moved.sock"));
    // The command would look at the new path already: SIGHUP moves it.
    let out = cli(&d, &["reload"], &[]);
    assert!(
        text(&out.stderr).contains("moved.sock: is tinyinetd running?"),
        "{}",
        text(&out.stderr)
    );
    reload(&mut d);
    assert!(!old.exists() && new.exists(), "{}", d.log());
    assert!(cli(&d, &["status"], &[]).status.success());
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(10)).is_some());
    assert!(!new.exists(), "the socket file outlived the daemon");
}

#[test]
fn a_control_accept_out_of_descriptors_backs_off_instead_of_spinning() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: no prlimit(1) on this machine");
        return;
    }
    let d = Daemon::start(&conf());
    let nofile = |n: String| {
        let ok = Command::new("prlimit")
            .arg(format!("--pid={}", d.pid()))
            .arg(format!("--nofile={n}:"))
            .status()
            .expect("prlimit");
        assert!(ok.success());
    };
    // No descriptor number below the limit is free: accept fails EMFILE.
    let used: Vec<usize> = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .expect("fds")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let lowest_free = (0..).find(|n| !used.contains(n)).expect("a free number");
    nofile(lowest_free.to_string());
    let path = d.dir.path().join("control.sock");
    let waiting = UnixStream::connect(&path).expect("connect (the backlog takes it)");
    assert!(
        d.wait_log(
            "control-failed error=\"accepting: Too many open files\"",
            Duration::from_secs(5)
        ),
        "{}",
        d.log()
    );
    let cpu = d.cpu_time();
    std::thread::sleep(Duration::from_secs(1));
    let spent = d.cpu_time() - cpu;
    assert!(
        spent < Duration::from_millis(300),
        "the daemon spun: {spent:?} of CPU in 1 s"
    );
    assert_eq!(d.log_lines("control-failed").len(), 1, "{}", d.log());
    nofile("1024".into());
    drop(waiting);
    assert!(cli(&d, &["status"], &[]).status.success(), "{}", d.log());
}

#[test]
fn the_default_path_unusable_is_a_warning_and_usable_is_found_by_status() {
    // Not root: the default is $XDG_RUNTIME_DIR/tinyinetd/control.sock.
    // As root, the daemon runs as a uid nothing else on the machine uses.
    let uid = "64012";
    // Mentions control_socket, so the harness leaves the default alone.
    let template = format!("{DAEMON}# control_socket: the default\n\n[[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:{{port:echo}}\"]\nprogram = \"tinyinetd-echo\"\n");
    let mut d = Daemon::prepare(&template);
    let xdg = d.dir.path().join("xdg");
    std::fs::create_dir_all(xdg.join("tinyinetd")).expect("mkdir");
    let sock = xdg.join("tinyinetd/control.sock");
    std::fs::write(&sock, "not a socket").expect("write");
    let bin = d.handlers.join("tinyinetd");
    std::fs::copy(daemon_bin(), &bin).expect("copy tinyinetd");
    let as_uid: Vec<String> = if is_root() {
        for p in [&xdg, &xdg.join("tinyinetd")] {
            std::os::unix::fs::chown(p, Some(64012), Some(64012)).expect("chown");
        }
        [
            "setpriv",
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "--",
        ]
        .map(String::from)
        .to_vec()
    } else {
        Vec::new()
    };
    let (xdg_env, prefix) = (xdg.clone(), as_uid.clone());
    let start = move |d: &mut Daemon| {
        let (xdg_env, prefix) = (xdg_env.clone(), prefix.clone());
        d.spawn(&move |cmd| {
            cmd.env("XDG_RUNTIME_DIR", &xdg_env);
            if !prefix.is_empty() {
                launch_through(cmd, &prefix[0], &prefix[1..]);
            }
        });
        d.ready(Duration::from_secs(10)).expect("ready");
    };
    start(&mut d);
    assert!(
        d.wait_log("warn: control-unavailable", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    assert!(d.log().contains("not a socket"), "{}", d.log());
    assert_eq!(
        std::fs::read_to_string(&sock).expect("left alone"),
        "not a socket"
    );
    assert_eq!(roundtrip(d.addr("echo"), b"up"), b"up");
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(10)).is_some());

    std::fs::remove_file(&sock).expect("rm");
    let mut d2 = Daemon::prepare(&template);
    std::fs::copy(daemon_bin(), d2.handlers.join("tinyinetd")).expect("copy tinyinetd");
    start(&mut d2);
    assert!(
        d2.wait_log("control-listen path=", Duration::from_secs(5)),
        "{}",
        d2.log()
    );
    let mut status = Command::new(prefix_or(&as_uid, &d2.handlers.join("tinyinetd")));
    if !as_uid.is_empty() {
        status.args(&as_uid[1..]).arg(d2.handlers.join("tinyinetd"));
    }
    let out = status
        .args(["status", "-c"])
        .arg(&d2.config)
        .env("XDG_RUNTIME_DIR", &xdg)
        .output()
        .expect("status");
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), d2.log());
    assert!(
        text(&out.stdout).starts_with("SERVICE"),
        "{}",
        text(&out.stdout)
    );
}

/// The launcher when there is one, else the program itself.
fn prefix_or(prefix: &[String], program: &Path) -> PathBuf {
    prefix
        .first()
        .map_or_else(|| program.to_path_buf(), PathBuf::from)
}

#[test]
fn a_reload_asked_while_one_hangs_waits_for_the_next_and_status_answers_meanwhile() {
    use crate::lookups::{calls, can_unshare, getent_standin, services, with_mounts};
    if !can_unshare() {
        eprintln!("SKIPPED: needs root and mount namespaces (unshare -m) to replace getent for the daemon");
        return;
    }
    let with_socket = |n| {
        services(n, "nobody").replace(
            "[daemon]\n",
            "[daemon]\ncontrol_socket = \"{tmp}/control.sock\"\n",
        )
    };
    let mut d = Daemon::prepare(&with_socket(1));
    let dir = d.dir.path().to_path_buf();
    let standin = getent_standin(&dir);
    d.spawn(&|cmd| with_mounts(cmd, &[(standin.clone(), "/usr/bin/getent")]));
    d.ready(Duration::from_secs(20)).expect("ready");
    let before = calls(&dir).len();
    std::fs::write(dir.join("getent.hang"), "").expect("hang");
    d.signal(Signal::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(5), || calls(&dir).len() > before),
        "no lookup started: {}",
        d.log()
    );
    d.rewrite(&with_socket(2));
    let waiting = Command::new(daemon_bin())
        .args(["reload", "-c"])
        .arg(&d.config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn reload");
    // The loop serves the control socket while the lookups hang.
    let t0 = Instant::now();
    assert!(cli(&d, &["status"], &[]).status.success(), "{}", d.log());
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "status took {:?}",
        t0.elapsed()
    );
    std::fs::remove_file(dir.join("getent.hang")).expect("unhang");
    // The hung reload fails at the lookup's 10 s limit; the command waits
    // for the one it asked for, which loads the new file.
    let out = waiting.wait_with_output().expect("reload");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}\n{}",
        text(&out.stderr),
        d.log()
    );
    assert!(stdout.contains("service added: echo1\n"), "{stdout}");
    assert!(d.log().contains("reload-failed"), "{}", d.log());
}
