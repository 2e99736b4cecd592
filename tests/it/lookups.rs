//! Issue 14, items 7 and 8: account lookups (getent) never block the loop,
//! are made once per load, read answers of any size, and a failed one is an
//! error, never a silent fallback to the number.
//!
//! Each test runs the daemon (or `--check`) in a private mount namespace
//! where /etc/group, /etc/passwd or /usr/bin/getent are replaced by files in
//! the test's own directory: nothing of the machine's is changed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::harness::*;

pub fn can_unshare() -> bool {
    is_root()
        && Command::new("unshare")
            .args(["-m", "true"])
            .status()
            .is_ok_and(|s| s.success())
}

/// Runs `cmd` in a private mount namespace after `mounts`: (file, over).
pub fn with_mounts(cmd: &mut Command, mounts: &[(PathBuf, &str)]) {
    let mut script = String::from("set -e\n");
    for (file, over) in mounts {
        script.push_str(&format!("mount --bind {} {over}\n", file.display()));
    }
    script.push_str("exec \"$0\" \"$@\"\n");
    launch_through(
        cmd,
        "unshare",
        &["-m", "--propagation", "private", "sh", "-c", &script],
    );
}

/// A stand-in for /usr/bin/getent: logs `PID ARGS` to `getent.calls` and
/// runs the real one, or, once `getent.hang` exists, hangs (as an NSS
/// module waiting for a directory server that does not answer).
pub fn getent_standin(dir: &Path) -> PathBuf {
    let real = dir.join("getent.real");
    std::fs::copy("/usr/bin/getent", &real).expect("copy getent");
    let script = dir.join("getent.standin");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$$ $*\" >> {d}/getent.calls\nif [ -e {d}/getent.hang ]; then exec /bin/sleep 1000; fi\nexec {d}/getent.real \"$@\"\n",
            d = dir.display()
        ),
    )
    .expect("write stand-in");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

pub fn calls(dir: &Path) -> Vec<(i32, String)> {
    std::fs::read_to_string(dir.join("getent.calls"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pid, args) = l.split_once(' ')?;
            Some((pid.parse().ok()?, args.to_string()))
        })
        .collect()
}

/// `(state, ppid)` of a process, `None` when it is gone.
fn proc_state(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.first()?.chars().next()?, f.get(1)?.parse().ok()?))
}

fn alive(pid: i32) -> bool {
    proc_state(pid).is_some_and(|(s, _)| s != 'Z')
}

pub fn services(n: usize, user: &str) -> String {
    let mut conf = DAEMON.to_string();
    for i in 0..n {
        conf.push_str(&format!(
            "\n[[service]]\nname = \"echo{i}\"\nlisten = [\"127.0.0.1:{{port:echo{i}}}\"]\nprogram = \"tinyinetd-echo\"\nuser = \"{user}\"\n"
        ));
    }
    conf
}

fn echo_within(addr: std::net::SocketAddr, within: Duration) {
    let start = Instant::now();
    let mut s = connect(addr);
    s.set_read_timeout(Some(within)).expect("timeout");
    s.write_all(b"ping").expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut out = Vec::new();
    let r = s.read_to_end(&mut out);
    assert!(
        r.is_ok() && out == b"ping" && start.elapsed() < within,
        "not served within {within:?}: {r:?} after {:?}",
        start.elapsed()
    );
}

#[test]
fn a_primary_group_with_a_huge_line_is_resolved_by_check() {
    if !can_unshare() {
        eprintln!("SKIPPED: needs root and mount namespaces (unshare -m) to give getent a private /etc/group");
        return;
    }
    let d = Daemon::prepare(&services(1, "tlogbig"));
    // 12,000 members: a 130 KB line, twice a pipe's capacity. The members
    // need not exist for `getent group` to print them.
    let mut group = std::fs::read_to_string("/etc/group").expect("read /etc/group");
    let members: Vec<String> = (0..12_000).map(|i| format!("tlogm{i:05}")).collect();
    group.push_str(&format!("tlogbig:x:64990:{}\n", members.join(",")));
    let mut passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd.push_str("tlogbig:x:64990:64990:tinyinetd test:/nonexistent:/usr/sbin/nologin\n");
    let (g, p) = (d.dir.path().join("group"), d.dir.path().join("passwd"));
    std::fs::write(&g, group).expect("write group");
    std::fs::write(&p, passwd).expect("write passwd");

    let mut cmd = Command::new(daemon_bin());
    cmd.arg("--check").arg("--config").arg(&d.config);
    with_mounts(&mut cmd, &[(g, "/etc/group"), (p, "/etc/passwd")]);
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn --check");
    let exited = wait_until(Duration::from_secs(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("output");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("user=tlogbig group=tlogbig "),
        "the group must be resolved by name, not shown as its number:\n{stdout}{stderr}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn lookups_are_made_once_per_load() {
    if !can_unshare() {
        eprintln!("SKIPPED: needs root and mount namespaces (unshare -m) to replace getent for the daemon");
        return;
    }
    let mut d = Daemon::prepare(&services(11, "nobody"));
    let dir = d.dir.path().to_path_buf();
    let standin = getent_standin(&dir);
    d.spawn(&|cmd| with_mounts(cmd, &[(standin.clone(), "/usr/bin/getent")]));
    d.ready(Duration::from_secs(20)).expect("ready");
    let at_start = calls(&dir).len();
    // passwd nobody, group 65534, initgroups nobody: three, not 33.
    assert!(
        (1..=3).contains(&at_start),
        "{at_start} getent runs for 11 services of one user: {:?}",
        calls(&dir)
    );
    d.signal(Signal::SIGHUP);
    assert!(
        d.wait_log("info: reload ", Duration::from_secs(20)),
        "{}",
        d.log()
    );
    let on_reload = calls(&dir).len() - at_start;
    assert!(
        (1..=3).contains(&on_reload),
        "{on_reload} getent runs in a reload: {:?}",
        calls(&dir)
    );
    echo_within(d.addr("echo10"), Duration::from_secs(2));
}

#[test]
fn a_reload_with_hung_lookups_keeps_serving_and_sigterm_ends_it() {
    if !can_unshare() {
        eprintln!("SKIPPED: needs root and mount namespaces (unshare -m) to replace getent for the daemon");
        return;
    }
    let mut d = Daemon::prepare(&services(3, "nobody"));
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
    let hung: Vec<i32> = calls(&dir)[before..].iter().map(|(p, _)| *p).collect();
    // Whoever runs the hung getent (a resolver child) is its parent.
    let resolver = proc_state(hung[0]).map(|(_, ppid)| ppid);

    // The resolver holds none of the daemon's sockets (a removed port
    // would stay bound while it runs) and no other descriptor of the
    // daemon's: 0-2 are /dev/null, the rest are its pipes and what its own
    // load opened (the programs it checked).
    if let Some(r) = resolver {
        let fds: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{r}/fd"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let link = std::fs::read_link(e.path()).ok()?;
                        Some((
                            e.file_name().to_string_lossy().into_owned(),
                            link.to_string_lossy().into_owned(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            fds.len() >= 4
                && fds.iter().all(|(fd, l)| {
                    !l.starts_with("socket:")
                        && !l.starts_with("anon_inode:")
                        && (!["0", "1", "2"].contains(&fd.as_str()) || l == "/dev/null")
                }),
            "the resolver {r} holds {fds:?}"
        );
    }

    // While the lookup hangs, every service is served at once, and
    // SIGUSR1 is answered.
    for i in 0..3 {
        echo_within(d.addr(&format!("echo{i}")), Duration::from_secs(1));
    }
    d.signal(Signal::SIGUSR1);
    assert!(
        d.wait_log("info: status service=echo2", Duration::from_secs(1)),
        "{}",
        d.log()
    );

    let start = Instant::now();
    d.signal(Signal::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(3));
    assert!(
        status.is_some_and(|s| s.success()),
        "no prompt exit on SIGTERM during a reload: {status:?} after {:?}",
        start.elapsed()
    );
    let mut left: Vec<i32> = hung.clone();
    left.extend(resolver.filter(|&p| p != d.pid().as_raw()));
    assert!(
        wait_until(Duration::from_secs(5), || !left.iter().any(|&p| alive(p))),
        "left behind: {:?}",
        left.iter().map(|&p| (p, proc_state(p))).collect::<Vec<_>>()
    );
}

#[test]
fn a_sighup_during_a_pending_reload_reloads_once_more_when_it_ends() {
    if !can_unshare() {
        eprintln!("SKIPPED: needs root and mount namespaces (unshare -m) to replace getent for the daemon");
        return;
    }
    let mut d = Daemon::prepare(&services(1, "nobody"));
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
    // A second service, and a second SIGHUP while the first reload hangs;
    // then the directory answers again.
    d.rewrite(&services(2, "nobody"));
    d.signal(Signal::SIGHUP);
    std::fs::remove_file(dir.join("getent.hang")).expect("unhang");

    // The hung lookup reaches its 10 s limit in the resolver: that reload
    // fails, saying why; the one asked for meanwhile then loads the new file.
    assert!(
        d.wait_log("info: reload ", Duration::from_secs(25)),
        "{}",
        d.log()
    );
    let log = d.log();
    let failed = log
        .lines()
        .find(|l| l.contains("reload-failed"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(failed.contains("no answer within 10s"), "{failed}");
    assert_eq!(d.log_lines("info: reload ").len(), 1, "{log}");
    echo_within(d.addr("echo1"), Duration::from_secs(2));
    echo_within(d.addr("echo0"), Duration::from_secs(2));
}
