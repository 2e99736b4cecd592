//! Handler hardening (SPEC §10.1): the `rlimit_*` limits, `nice` and
//! `no_new_privs` as the kernel shows them in the handler's /proc files,
//! and a setuid-root helper that gains nothing under `no_new_privs`.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

/// A handler that sends its own /proc limits, status and stat.
const PROC_SCRIPT: &str =
    "#!/bin/sh\ncat /proc/$$/limits /proc/$$/status\necho \"stat $(cat /proc/$$/stat)\"\n";

/// The service `name` with `extra` keys, running proc.sh.
fn service(name: &str, extra: &str) -> String {
    format!(
        "\n[[service]]\nname = \"{name}\"\nlisten = [\"127.0.0.1:{{port:{name}}}\"]\nprogram = \"proc.sh\"\n{extra}\n"
    )
}

/// What the handler of `name` sent.
fn facts(d: &Daemon, name: &str) -> String {
    let mut s = connect(d.addr(name));
    String::from_utf8(read_all(&mut s)).expect("utf8")
}

/// `(soft, hard)` of the /proc limits line starting with `what`.
fn limit(facts: &str, what: &str) -> (String, String) {
    let line = facts
        .lines()
        .find(|l| l.starts_with(what))
        .unwrap_or_else(|| panic!("no {what:?} in {facts}"));
    let mut w = line[what.len()..].split_whitespace();
    let soft = w.next().unwrap_or_default().to_string();
    let hard = w.next().unwrap_or_default().to_string();
    (soft, hard)
}

fn status(facts: &str, key: &str) -> String {
    facts
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in {facts}"))
        .trim()
        .to_string()
}

/// Field 19 of /proc/PID/stat: the nice value.
fn nice(facts: &str) -> i32 {
    let stat = facts
        .lines()
        .find_map(|l| l.strip_prefix("stat "))
        .unwrap_or_else(|| panic!("no stat in {facts}"));
    let after = &stat[stat.rfind(')').expect("comm") + 1..];
    after
        .split_whitespace()
        .nth(16)
        .expect("nice")
        .parse()
        .expect("nice number")
}

fn start(conf: &str) -> Daemon {
    let mut d = Daemon::prepare(conf);
    let script = d.handlers.join("proc.sh");
    std::fs::write(&script, PROC_SCRIPT).expect("write proc.sh");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    d.spawn(&|_| {});
    if let Err(e) = d.ready(Duration::from_secs(10)) {
        panic!("daemon did not become ready: {e}\n--- log ---\n{}", d.log());
    }
    d
}

#[test]
fn every_rlimit_set_is_in_the_handlers_proc_limits() {
    let mut conf = DAEMON.to_string();
    conf.push_str(&service(
        "set",
        "rlimit_nofile = 77\nrlimit_nproc = 500\nrlimit_core = \"1M\"\nrlimit_fsize = \"2M\"\nrlimit_as = \"1G\"\nrlimit_cpu = \"30s\"",
    ));
    conf.push_str(&service("plain", ""));
    let d = start(&conf);
    let f = facts(&d, "set");
    let both = |v: &str| (v.to_string(), v.to_string());
    assert_eq!(limit(&f, "Max open files"), both("77"), "{f}");
    assert_eq!(limit(&f, "Max processes"), both("500"), "{f}");
    assert_eq!(limit(&f, "Max core file size"), both("1048576"), "{f}");
    assert_eq!(limit(&f, "Max file size"), both("2097152"), "{f}");
    assert_eq!(limit(&f, "Max address space"), both("1073741824"), "{f}");
    assert_eq!(limit(&f, "Max cpu time"), both("30"), "{f}");
    // Unset keys keep the daemon's own limits; core dumps are off by default.
    let f = facts(&d, "plain");
    assert_eq!(limit(&f, "Max core file size"), both("0"), "{f}");
    let own = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).expect("limits");
    assert_eq!(limit(&f, "Max open files"), limit(&own, "Max open files"));
}

#[test]
fn no_new_privs_is_on_by_default_and_nice_is_set() {
    let mut conf = DAEMON.to_string();
    conf.push_str(&service("default", ""));
    conf.push_str(&service("off", "no_new_privs = false\nnice = 7"));
    let raise = is_root();
    if raise {
        conf.push_str(&service("raised", "nice = -5"));
    } else {
        eprintln!("note: not root: a negative nice is not tried");
    }
    let d = start(&conf);
    let f = facts(&d, "default");
    assert_eq!(status(&f, "NoNewPrivs"), "1", "{f}");
    assert_eq!(nice(&f), 0, "{f}");
    let f = facts(&d, "off");
    assert_eq!(status(&f, "NoNewPrivs"), "0", "{f}");
    assert_eq!(nice(&f), 7, "{f}");
    if raise {
        // Set before the handler's user (nobody) was taken on.
        let f = facts(&d, "raised");
        assert_eq!(nice(&f), -5, "{f}");
        assert_eq!(status(&f, "Uid").split_whitespace().next(), Some("65534"));
    }
}

/// A failed hardening step is an exec failure that names it: Linux
/// refuses descriptors above fs.nr_open, root or not.
#[test]
fn a_limit_the_kernel_refuses_is_an_exec_failure_naming_the_key() {
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .expect("nr_open")
        .trim()
        .parse()
        .expect("number");
    if nr_open >= 2_147_483_584 {
        eprintln!("SKIPPED: fs.nr_open is at its ceiling, no rlimit_nofile is refused");
        return;
    }
    let mut conf = DAEMON.to_string();
    conf.push_str(&service("big", &format!("rlimit_nofile = {}", nr_open + 1)));
    let d = start(&conf);
    let _ = facts(&d, "big");
    assert!(
        d.wait_log("step=rlimit_nofile", Duration::from_secs(10)),
        "{}",
        d.log()
    );
    let line = d.log_lines("exec-failed").join("\n");
    assert!(line.contains("error=\"Operation not permitted\""), "{line}");
}

/// Removes what the setuid test made.
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_setuid_root_helper_gains_nothing_under_no_new_privs() {
    if !is_root() {
        eprintln!("SKIPPED: a setuid-root helper and a handler as nobody need root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().to_path_buf();
    let _cleanup = Cleanup(base.clone());
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let src = base.join("euid.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\n#include <unistd.h>\nint main(void){printf(\"%d\\n\",(int)geteuid());return 0;}\n",
    )
    .expect("write euid.c");
    let exe = base.join("euid");
    let cc = |extra: &[&str]| {
        Command::new("cc")
            .args(extra)
            .arg("-o")
            .arg(&exe)
            .arg(&src)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !cc(&["-static"]) && !cc(&[]) {
        eprintln!("SKIPPED: no C compiler (cc) to build the setuid helper");
        return;
    }
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o4755)).expect("chmod 4755");
    let st = nix::sys::statvfs::statvfs(&base).expect("statvfs");
    if st.flags().contains(nix::sys::statvfs::FsFlags::ST_NOSUID) {
        eprintln!("SKIPPED: the temporary directory is on a nosuid mount");
        return;
    }
    let script = base.join("run.sh");
    std::fs::write(&script, format!("#!/bin/sh\nexec {}\n", exe.display())).expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let svc = |name: &str, nnp: bool| {
        format!(
            "\n[[service]]\nname = \"{name}\"\nlisten = [\"127.0.0.1:{{port:{name}}}\"]\nprogram = \"{}\"\nuser = \"nobody\"\nno_new_privs = {nnp}\n",
            script.display()
        )
    };
    let conf = format!("{DAEMON}{}{}", svc("on", true), svc("off", false));
    let d = Daemon::start(&conf);
    assert_eq!(facts(&d, "on"), "65534\n", "no_new_privs = true");
    assert_eq!(
        facts(&d, "off"),
        "0\n",
        "no_new_privs = false: the setuid bit works"
    );
}

/// A reload applies a changed limit to the next connection; a bad value
/// keeps the old plan.
#[test]
fn a_reload_applies_the_new_limits_or_keeps_the_old_ones() {
    let conf = |extra: &str| format!("{DAEMON}{}", service("s", extra));
    let mut d = start(&conf("rlimit_nofile = 77"));
    let both = |v: &str| (v.to_string(), v.to_string());
    assert_eq!(limit(&facts(&d, "s"), "Max open files"), both("77"));
    let reload = |d: &mut Daemon, needle: &str| {
        let before = d.log_lines(needle).len();
        d.signal(nix::sys::signal::Signal::SIGHUP);
        assert!(
            wait_until(Duration::from_secs(5), || d.log_lines(needle).len()
                > before),
            "no {needle:?}: {}",
            d.log()
        );
    };
    d.rewrite(&conf("rlimit_nofile = 78\nno_new_privs = false"));
    reload(&mut d, "info: reload ");
    let f = facts(&d, "s");
    assert_eq!(limit(&f, "Max open files"), both("78"));
    assert_eq!(status(&f, "NoNewPrivs"), "0", "{f}");
    d.rewrite(&conf("rlimit_nofile = -1"));
    reload(&mut d, "reload-failed");
    assert!(
        d.log().contains("rlimit_nofile\\\" cannot be negative"),
        "{}",
        d.log()
    );
    assert_eq!(limit(&facts(&d, "s"), "Max open files"), both("78"));
}
