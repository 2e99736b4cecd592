//! Unix-domain stream services (SPEC §10.4): the peer's credentials in the
//! handler's environment, the socket file's mode and owner, stale files,
//! removal, abstract names, admission per peer uid, limits, adoption.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{SocketAddr as UnixAddr, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::harness::*;
use crate::sockopt::parse_probe;

/// A Unix service on `listen` running the probe handler, with `extra` keys.
fn unix_service(listen: &str, extra: &str) -> String {
    format!(
        "{DAEMON}\n[[service]]\nname = \"local\"\nlisten = [\"{listen}\"]\nprogram = \"sockprobe.py\"\n{extra}\n"
    )
}

fn sock_path(d: &Daemon) -> PathBuf {
    d.dir.path().join("local.sock")
}

/// Connects to a `hold` handler and waits (bounded) for its first bytes:
/// the connection is being served.
fn served(path: &Path) -> UnixStream {
    let mut s = UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    assert!(s.read(&mut buf).expect("first is served") > 0);
    s
}

/// Connects, reads until the handler closes (bounded), returns the probe's lines.
fn probe_unix(path: &Path) -> HashMap<String, String> {
    let mut s = UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // A handler that holds the connection until the client closes ends.
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    parse_probe(&out)
}

/// A user made for one test, removed with its group at drop.
struct TestUser(String);

impl TestUser {
    fn new(name: &str) -> TestUser {
        let _ = Command::new("userdel").arg(name).output();
        let st = Command::new("useradd")
            .args(["-M", "-U", "-s", "/usr/sbin/nologin", name])
            .status()
            .expect("useradd");
        assert!(st.success(), "useradd {name}");
        TestUser(name.to_string())
    }

    fn ids(&self) -> (u32, u32) {
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, &self.0])
                .output()
                .expect("id");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("id")
        };
        (id("-u"), id("-g"))
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).output();
        let _ = Command::new("groupdel").arg(&self.0).output();
    }
}

/// A client run as `uid`/`gid` (setpriv): prints its pid, then what the
/// handler wrote.
fn probe_as(path: &Path, uid: u32, gid: u32) -> (i32, HashMap<String, String>) {
    let script = "import os,socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\nout=b''\nwhile True:\n    b=s.recv(4096)\n    if not b: break\n    out+=b\nsys.stdout.write('clientpid %d\\n' % os.getpid())\nsys.stdout.write(out.decode())\n";
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            script,
            path.to_str().expect("utf8 path"),
        ])
        .output()
        .expect("setpriv");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = parse_probe(&out.stdout);
    let pid = lines["clientpid"].parse().expect("pid");
    (pid, lines)
}

#[test]
fn a_client_of_another_uid_gets_its_credentials_and_the_file_its_mode_and_owner() {
    if !is_root() {
        println!("skipped: creating a user and running a client as it needs root");
        return;
    }
    let user = TestUser::new("tuxunix1");
    let (uid, gid) = user.ids();
    let d = Daemon::start(&unix_service(
        "unix:{tmp}/local.sock",
        "socket_mode = \"0660\"\nsocket_user = \"tuxunix1\"\nsocket_group = \"tuxunix1\"\n",
    ));
    let path = sock_path(&d);
    let m = std::fs::symlink_metadata(&path).expect("socket file");
    assert!(m.file_type().is_socket());
    assert_eq!(m.mode() & 0o7777, 0o660, "{:o}", m.mode());
    assert_eq!((m.uid(), m.gid()), (uid, gid));

    let (pid, env) = probe_as(&path, uid, gid);
    assert_eq!(
        env.get("PROTO").map(String::as_str),
        Some("UNIX"),
        "{env:?}"
    );
    assert_eq!(env.get("UNIXREMOTEUID"), Some(&uid.to_string()), "{env:?}");
    assert_eq!(env.get("UNIXREMOTEGID"), Some(&gid.to_string()), "{env:?}");
    assert_eq!(env.get("UNIXREMOTEPID"), Some(&pid.to_string()), "{env:?}");
    assert_eq!(
        env.get("UNIXLOCALPATH").map(PathBuf::from),
        Some(path.clone()),
        "{env:?}"
    );
    for k in env.keys() {
        assert!(
            !k.starts_with("TCP") && !k.starts_with("REMOTE_"),
            "{k}: {env:?}"
        );
    }
    assert!(
        d.wait_log(
            &format!("peer=uid:{uid}/gid:{gid}/pid:{pid}"),
            Duration::from_secs(5)
        ),
        "{}",
        d.log()
    );
    drop(d);
    drop(user);
}

#[test]
fn own_credentials_and_the_file_is_gone_after_sigterm() {
    let mut d = Daemon::start(&unix_service(
        "unix:{tmp}/local.sock",
        "socket_mode = \"0600\"\n",
    ));
    let path = sock_path(&d);
    let env = probe_unix(&path);
    assert_eq!(
        env.get("PROTO").map(String::as_str),
        Some("UNIX"),
        "{env:?}"
    );
    let me = nix::unistd::getuid().as_raw().to_string();
    assert_eq!(env.get("UNIXREMOTEUID"), Some(&me), "{env:?}");
    assert_eq!(
        env.get("UNIXREMOTEPID"),
        Some(&std::process::id().to_string())
    );
    d.signal(Signal::SIGTERM);
    assert!(
        d.wait_exit(Duration::from_secs(10)).is_some(),
        "did not stop"
    );
    assert!(!path.exists(), "{} left behind", path.display());
}

#[test]
fn a_stale_file_of_a_killed_daemon_is_replaced() {
    let template = unix_service("unix:{tmp}/local.sock", "");
    let mut d = Daemon::start(&template);
    let path = sock_path(&d);
    d.signal(Signal::SIGKILL);
    assert!(d.wait_exit(Duration::from_secs(10)).is_some());
    assert!(path.exists(), "a killed daemon cannot remove its file");
    d.spawn(&|_| {});
    // The first start's READY=1 is among the notes already: wait for the
    // log (a new file for this start).
    assert!(
        d.wait_log("info: ready", Duration::from_secs(10)),
        "{}",
        d.log()
    );
    assert_eq!(
        probe_unix(&path).get("PROTO").map(String::as_str),
        Some("UNIX")
    );
}

#[test]
fn a_regular_file_at_the_path_is_a_start_error_that_names_it() {
    let mut d = Daemon::prepare(&unix_service("unix:{tmp}/local.sock", ""));
    let path = sock_path(&d);
    std::fs::write(&path, b"precious").expect("write");
    d.spawn(&|_| {});
    assert!(d.wait_exit(Duration::from_secs(10)).is_some(), "it started");
    let log = d.log();
    assert!(
        log.contains(&format!(
            "{} is a regular file, not a socket",
            path.display()
        )),
        "{log}"
    );
    assert_eq!(std::fs::read(&path).expect("still there"), b"precious");
}

#[test]
fn an_abstract_socket_serves_and_leaves_no_file() {
    let name = format!("tinyinetd-tux-{}", std::process::id());
    let d = Daemon::start(&unix_service(&format!("unix:@{name}"), ""));
    let addr = UnixAddr::from_abstract_name(name.as_bytes()).expect("addr");
    let mut s = UnixStream::connect_addr(&addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    let env = parse_probe(&out);
    assert_eq!(
        env.get("UNIXLOCALPATH"),
        Some(&format!("@{name}")),
        "{env:?}"
    );
    let files: Vec<_> = std::fs::read_dir(d.dir.path())
        .expect("dir")
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
        .map(|e| e.file_name())
        .collect();
    assert_eq!(files, ["notify.sock"], "only the test's own socket");
}

#[test]
fn max_per_source_counts_per_peer_uid() {
    let d = Daemon::start(&unix_service(
        "unix:{tmp}/local.sock",
        "args = [\"hold\"]\nmax_per_source = 1\n",
    ));
    let path = sock_path(&d);
    let first = served(&path);
    let mut second = UnixStream::connect(&path).expect("connect");
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut out = Vec::new();
    let _ = second.read_to_end(&mut out);
    assert!(
        out.is_empty(),
        "second served: {}",
        String::from_utf8_lossy(&out)
    );
    assert!(
        d.wait_log("reason=max_per_source", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    let uid = nix::unistd::getuid().as_raw();
    assert!(d
        .log()
        .contains(&format!("refused service=local conn=2 peer=uid:{uid}/")));
    drop(first);
    // Once the first has gone, the uid may connect again.
    assert!(wait_until(Duration::from_secs(10), || {
        d.log().contains("exit service=local conn=1 ")
    }));
    assert_eq!(
        probe_unix(&path).get("PROTO").map(String::as_str),
        Some("UNIX")
    );
}

#[test]
fn a_unix_handler_is_timed_out_like_a_tcp_one() {
    let d = Daemon::start(&unix_service(
        "unix:{tmp}/local.sock",
        "args = [\"hold\"]\ntimeout = \"1s\"\n",
    ));
    let mut s = UnixStream::connect(sock_path(&d)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let t0 = Instant::now();
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .expect("read until the handler is stopped");
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    assert!(
        d.wait_log("signal=SIGTERM", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    s.write_all(b"x").ok();
}

#[test]
fn check_and_status_show_unix_addresses_as_written() {
    let name = format!("tinyinetd-tux-st{}", std::process::id());
    let template = format!(
        "{DAEMON}\n[[service]]\nname = \"local\"\nlisten = [\"unix:{{tmp}}/local.sock\", \"unix:@{name}\"]\nprogram = \"sockprobe.py\"\nsocket_mode = \"0660\"\n"
    );
    let d = Daemon::start(&template);
    let listen = format!("unix:{}/local.sock,unix:@{name}", d.dir.path().display());
    let out = run_tinyinetd(
        &["--check", "--config", d.config.to_str().unwrap()],
        Duration::from_secs(10),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("local listen={listen} ")),
        "{stdout}"
    );
    assert!(stdout.contains("socket_mode=0660"), "{stdout}");
    d.signal(Signal::SIGUSR1);
    assert!(
        d.wait_log(
            &format!("status service=local listen={listen} "),
            Duration::from_secs(5)
        ),
        "{}",
        d.log()
    );
}

#[test]
fn misplaced_keys_on_unix_services_are_config_errors() {
    let cases = [
        ("unix:{tmp}/a.sock", "allow = [\"127.0.0.1\"]", "allow"),
        ("unix:{tmp}/a.sock", "deny = [\"10.0.0.0/8\"]", "deny"),
        ("unix:{tmp}/a.sock", "keepalive = true", "keepalive"),
        ("unix:{tmp}/a.sock", "nodelay = true", "nodelay"),
        ("unix:{tmp}/a.sock", "reuse_port = true", "reuse_port"),
        ("unix:{tmp}/a.sock", "bind_device = \"lo\"", "bind_device"),
        ("unix:{tmp}/a.sock", "defer_accept = \"1s\"", "defer_accept"),
        ("unix:{tmp}/a.sock", "free_bind = true", "free_bind"),
        (
            "unix:@tux-abstract",
            "socket_mode = \"0660\"",
            "socket_mode",
        ),
        ("unix:{tmp}/a.sock", "socket_mode = \"99\"", "socket_mode"),
        (
            "unix:{tmp}/a.sock",
            "socket_user = \"tux-nobody-here\"",
            "socket_user",
        ),
        ("unix:relative.sock", "", "absolute"),
    ];
    for (listen, line, key) in cases {
        let d = Daemon::prepare(&unix_service(listen, line));
        let out = run_tinyinetd(
            &["--check", "--config", d.config.to_str().unwrap()],
            Duration::from_secs(10),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{listen} {line}: accepted");
        assert!(
            err.contains(key) && err.contains("service \"local\""),
            "{line}: {err}"
        );
    }
    // One service cannot mix Unix and IP addresses.
    let d = Daemon::prepare(&unix_service(
        "unix:{tmp}/a.sock\", \"127.0.0.1:{port:x}",
        "",
    ));
    let out = run_tinyinetd(
        &["--check", "--config", d.config.to_str().unwrap()],
        Duration::from_secs(10),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let at = format!(":{}:", line_of(&d.config, "a.sock"));
    assert!(!out.status.success() && err.contains(&at), "{err}");
}

#[test]
fn a_unix_socket_passed_by_the_service_manager_is_adopted_by_path() {
    let mut d = Daemon::prepare(&unix_service("unix:{tmp}/local.sock", ""));
    let path = sock_path(&d);
    let launcher = r#"
import os, socket, sys
a = socket.socket(socket.AF_UNIX); a.bind(sys.argv[1]); a.listen(16)
fa = os.dup(a.fileno()); a.close()
os.dup2(fa, 10); os.dup2(10, 3); os.set_inheritable(3, True)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDNAMES"] = "local"
os.execv(sys.argv[2], sys.argv[2:])
"#;
    let p = path.to_str().expect("utf8").to_string();
    d.spawn(&|cmd| launch_through(cmd, "/usr/bin/python3", &["-c", launcher, &p]));
    d.ready(Duration::from_secs(10)).expect("ready");
    assert_eq!(
        probe_unix(&path).get("PROTO").map(String::as_str),
        Some("UNIX")
    );
    let log = d.log();
    assert!(!log.contains("inherited-socket"), "{log}");
    assert!(!log.contains("in use"), "{log}");
    // The file is the service manager's: the daemon leaves it.
    d.signal(Signal::SIGTERM);
    assert!(
        d.wait_exit(Duration::from_secs(10)).is_some(),
        "did not stop"
    );
    assert!(path.exists(), "an inherited socket's file was removed");
}

#[test]
fn a_reload_changes_the_mode_in_place_and_removing_the_service_removes_its_file() {
    let mut d = Daemon::start(&unix_service(
        "unix:{tmp}/local.sock",
        "socket_mode = \"0600\"\n",
    ));
    let path = sock_path(&d);
    let ino = |p: &Path| std::fs::symlink_metadata(p).expect("socket file").ino();
    let before = ino(&path);
    d.rewrite(&unix_service(
        "unix:{tmp}/local.sock",
        "socket_mode = \"0666\"\nbacklog = 8\n",
    ));
    reload(&mut d);
    let m = std::fs::symlink_metadata(&path).expect("socket file");
    assert_eq!(
        (m.ino(), m.mode() & 0o7777),
        (before, 0o666),
        "{:o}",
        m.mode()
    );
    assert!(
        d.log()
            .contains("info: listen-updated service=local addr=unix:"),
        "{}",
        d.log()
    );
    assert_eq!(
        probe_unix(&path).get("PROTO").map(String::as_str),
        Some("UNIX")
    );
    // The service gone: its socket closed and its file removed.
    d.rewrite(&format!(
        "{DAEMON}\n[[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:{{port:e}}\"]\nprogram = \"tinyinetd-echo\"\n"
    ));
    reload(&mut d);
    assert!(
        !path.exists(),
        "{} left behind: {}",
        path.display(),
        d.log()
    );
    assert!(
        d.log().contains("info: unlisten service=local addr=unix:"),
        "{}",
        d.log()
    );
}

#[test]
fn a_unix_service_at_max_instances_waits_in_the_backlog() {
    let d = Daemon::start(&unix_service(
        "unix:{tmp}/local.sock",
        "args = [\"hold\"]\nmax_instances = 1\n",
    ));
    let path = sock_path(&d);
    let first = served(&path);
    let mut buf = [0u8; 64];
    let mut second = UnixStream::connect(&path).expect("queued, not refused");
    second
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    assert!(
        second.read(&mut buf).is_err(),
        "served beyond max_instances"
    );
    assert!(d.wait_log(
        "paused service=local reason=max_instances",
        Duration::from_secs(5)
    ));
    drop(first);
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert!(second.read(&mut buf).expect("served once a slot frees") > 0);
}
