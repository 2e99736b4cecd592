//! `[daemon] include`: drop-in files at start, in `--check`, and on reload.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

const INCLUDE: &str = "include = [\"tinyinetd.d/*.toml\"]\n";

fn echo_service(name: &str) -> String {
    format!("\n[[service]]\nname = \"{name}\"\nlisten = [\"127.0.0.1:{{port:{name}}}\"]\nprogram = \"tinyinetd-echo\"\n")
}

/// The drop-in directory beside the daemon's config, created 0755.
fn dropin_dir(d: &Daemon) -> PathBuf {
    let dir = d.config.parent().expect("config dir").join("tinyinetd.d");
    if !dir.exists() {
        fs::create_dir(&dir).expect("mkdir tinyinetd.d");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    dir
}

/// Writes a drop-in from a template (renamed into place, as an editor does).
fn write_dropin(d: &mut Daemon, name: &str, template: &str) -> PathBuf {
    let text = d.expand(template);
    let dir = dropin_dir(d);
    let tmp = dir.join(format!(".{name}.new"));
    fs::write(&tmp, text).expect("write drop-in");
    let path = dir.join(name);
    fs::rename(&tmp, &path).expect("rename drop-in");
    path
}

/// The inode of the socket listening on 127.0.0.1:`port` (/proc/net/tcp):
/// the same inode after a reload is the same socket, kept open.
fn listener_inode(port: u16) -> Option<u64> {
    let table = fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 9 && f[1] == local && f[3] == "0A")
            .then(|| f[9].parse().ok())
            .flatten()
    })
}

#[test]
fn check_shows_the_file_of_each_drop_in_service() {
    let mut d = Daemon::prepare(&format!("{DAEMON}{INCLUDE}{}", echo_service("main")));
    let a = write_dropin(&mut d, "a.toml", &echo_service("ay"));
    let config = d.config.to_string_lossy().to_string();
    let out = run_tinyinetd(&["--check", "-c", &config], Duration::from_secs(10));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with("main listen=")
            && lines[0].contains(" enabled")
            && !lines[0].contains(" file="),
        "{stdout}"
    );
    assert!(lines[1].starts_with("ay listen="), "{stdout}");
    assert!(
        lines[1].contains(" enabled ") && lines[1].ends_with(&format!(" file={}", a.display())),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with(&format!(
            "{config}: OK, 2 services (2 enabled), control_socket="
        )),
        "{stdout}"
    );
}

#[test]
fn two_drop_ins_on_one_port_name_both_files_and_lines() {
    let mut d = Daemon::prepare(&format!("{DAEMON}{INCLUDE}"));
    let a = write_dropin(&mut d, "a.toml", &echo_service("same"));
    let b = write_dropin(
        &mut d,
        "b.toml",
        "[[service]]\nname = \"other\"\nlisten = [\"127.0.0.1:{port:same}\"]\nprogram = \"tinyinetd-echo\"\n",
    );
    let config = d.config.to_string_lossy().to_string();
    let out = run_tinyinetd(&["--check", "-c", &config], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    let port = d.port("same");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "{}:3:11: service \"other\": listen address \"127.0.0.1:{port}\" is already used by service \"same\" at {}:4:11\n",
            b.display(),
            a.display()
        )
    );
}

/// A user made for one test, removed when the guard drops.
struct TestUser(&'static str);

impl TestUser {
    fn create(name: &'static str) -> Option<TestUser> {
        let _ = Command::new("userdel").args(["-f", name]).output();
        let out = Command::new("useradd")
            .args(["-M", "-N", "-s", "/usr/sbin/nologin", name])
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!("useradd {name}: {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        Some(TestUser(name))
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").args(["-f", self.0]).output();
    }
}

fn chown(path: &Path, user: &str) {
    let ok = Command::new("chown")
        .arg(user)
        .arg(path)
        .status()
        .expect("run chown");
    assert!(ok.success(), "chown {user} {}", path.display());
}

#[test]
fn a_root_daemon_refuses_a_drop_in_another_user_can_change() {
    if !is_root() {
        eprintln!("skipped: needs root (the ownership checks apply to a root daemon)");
        return;
    }
    let Some(user) = TestUser::create("ti22owner") else {
        eprintln!("skipped: useradd cannot run here");
        return;
    };
    let mut d = Daemon::prepare(&format!("{DAEMON}{INCLUDE}{}", echo_service("main")));
    let a = write_dropin(&mut d, "a.toml", &echo_service("ay"));
    chown(&a, user.0);
    let config = d.config.to_string_lossy().to_string();
    let out = run_tinyinetd(&["--check", "-c", &config], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "{}: refusing an included file that a user other than root can change: ",
            a.display()
        )),
        "{stderr}"
    );
    // The directory is checked as well: a root-owned file in a directory
    // the user owns is refused just the same.
    chown(&a, "root");
    chown(&dropin_dir(&d), user.0);
    let out = run_tinyinetd(&["--check", "-c", &config], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing an included file"), "{stderr}");
    chown(&dropin_dir(&d), "root");
    let out = run_tinyinetd(&["--check", "-c", &config], Duration::from_secs(10));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_reload_with_one_broken_drop_in_keeps_the_whole_old_set() {
    let mut d = Daemon::prepare(&format!("{DAEMON}{INCLUDE}{}", echo_service("main")));
    write_dropin(&mut d, "a.toml", &echo_service("ay"));
    d.spawn(&|_| {});
    d.ready(Duration::from_secs(10)).expect("ready");
    // A new good drop-in and a broken one: neither is applied.
    write_dropin(&mut d, "b.toml", &echo_service("bee"));
    let broken = write_dropin(
        &mut d,
        "c.toml",
        "[[service]]\nname = \"sea\"\nlisten = 5\n",
    );
    // And the good one changed: the change is not applied either.
    write_dropin(&mut d, "a.toml", &echo_service("ay2"));
    reload(&mut d);
    let failed = d.log_lines("reload-failed");
    let at = format!(
        "{}:3:10: service \\\"sea\\\": \\\"listen\\\" must be an array",
        broken.display()
    );
    assert!(failed.iter().any(|l| l.contains(&at)), "{}", d.log());
    assert_eq!(roundtrip(d.addr("main"), b"m"), b"m");
    assert_eq!(roundtrip(d.addr("ay"), b"a"), b"a");
    assert!(
        std::net::TcpStream::connect(d.addr("bee")).is_err(),
        "bee was applied"
    );
    assert!(
        std::net::TcpStream::connect(d.addr("ay2")).is_err(),
        "ay2 was applied"
    );
}

#[test]
fn adding_a_drop_in_serves_it_and_keeps_the_other_sockets() {
    let mut d = Daemon::prepare(&format!("{DAEMON}{INCLUDE}{}", echo_service("main")));
    write_dropin(&mut d, "a.toml", &echo_service("ay"));
    d.spawn(&|_| {});
    d.ready(Duration::from_secs(10)).expect("ready");
    let before = (listener_inode(d.port("main")), listener_inode(d.port("ay")));
    assert!(
        before.0.is_some() && before.1.is_some(),
        "no listener found in /proc/net/tcp"
    );
    let listens = d.log_lines("info: listen ").len();
    write_dropin(&mut d, "b.toml", &echo_service("bee"));
    reload(&mut d);
    assert!(d.log_lines("reload-failed").is_empty(), "{}", d.log());
    assert_eq!(roundtrip(d.addr("bee"), b"new"), b"new");
    assert_eq!(roundtrip(d.addr("main"), b"m"), b"m");
    assert_eq!(roundtrip(d.addr("ay"), b"a"), b"a");
    let after = (listener_inode(d.port("main")), listener_inode(d.port("ay")));
    assert_eq!(before, after, "a socket of the old set was replaced");
    // One new listen line: bee's.
    let new: Vec<String> = d
        .log_lines("info: listen ")
        .into_iter()
        .skip(listens)
        .collect();
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(new[0].contains("service=bee"), "{new:?}");
}
