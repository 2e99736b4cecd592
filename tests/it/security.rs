//! Security properties that need the real daemon: credentials of handlers,
//! refusing what a non-root user could change, and escaped log values.
//! (No leaked descriptors or environment: see core::env_dump_pins_the_child_contract.)

use std::net::Shutdown;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

fn id(args: &[&str]) -> String {
    let out = Command::new("id").args(args).output().expect("run id");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A user that is a member of some supplementary group, if the system has one.
fn user_with_supplementary_groups() -> Option<String> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups
        .lines()
        .filter_map(|l| l.split(':').nth(3))
        .flat_map(|members| members.split(','))
        .find(|m| !m.is_empty() && !id(&["-u", m]).is_empty())
        .map(String::from)
}

fn probe_facts(d: &Daemon, service: &str) -> String {
    let mut s = connect(d.addr(service));
    s.shutdown(Shutdown::Write).expect("shutdown");
    String::from_utf8(read_all(&mut s)).expect("utf8")
}

fn fact(facts: &str, k: &str) -> String {
    facts
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{k} ")))
        .unwrap_or_else(|| panic!("no {k} in {facts}"))
        .to_string()
}

#[test]
fn handlers_get_exactly_the_configured_credentials() {
    if !is_root() {
        eprintln!("SKIPPED: credential switching needs the tests to run as root");
        return;
    }
    let mut users = vec!["nobody".to_string()];
    match user_with_supplementary_groups() {
        Some(u) => users.push(u),
        None => eprintln!(
            "note: no user with supplementary groups on this system; checking nobody and root only"
        ),
    }
    let mut conf = DAEMON.to_string();
    for (i, u) in users.iter().enumerate() {
        conf.push_str(&format!(
            "\n[[service]]\nname = \"u{i}\"\nlisten = [\"127.0.0.1:{{port:u{i}}}\"]\nprogram = \"probe.py\"\nuser = \"{u}\"\n"
        ));
    }
    conf.push_str("\n[[service]]\nname = \"root\"\nlisten = [\"127.0.0.1:{port:root}\"]\nprogram = \"probe.py\"\nuser = \"root\"\n");
    conf.push_str("\n[[service]]\nname = \"grp\"\nlisten = [\"127.0.0.1:{port:grp}\"]\nprogram = \"probe.py\"\nuser = \"nobody\"\ngroup = \"daemon\"\n");
    let d = Daemon::start(&conf);
    for (i, u) in users.iter().enumerate() {
        let facts = probe_facts(&d, &format!("u{i}"));
        let uid = id(&["-u", u]);
        let gid = id(&["-g", u]);
        let mut want: Vec<u32> = id(&["-G", u])
            .split_whitespace()
            .map(|g| g.parse().expect("gid"))
            .collect();
        want.sort();
        want.dedup();
        let want: Vec<String> = want.iter().map(|g| g.to_string()).collect();
        assert_eq!(fact(&facts, "uid"), format!("{uid} {uid}"), "user {u}");
        assert_eq!(fact(&facts, "gid"), format!("{gid} {gid}"), "user {u}");
        assert_eq!(
            fact(&facts, "groups"),
            want.join(" "),
            "supplementary groups of {u}"
        );
    }
    let facts = probe_facts(&d, "root");
    assert_eq!(
        fact(&facts, "uid"),
        "0 0",
        "user = \"root\" written explicitly"
    );
    let facts = probe_facts(&d, "grp");
    let daemon_gid = id(&["-g", "daemon"]);
    assert_eq!(fact(&facts, "uid"), "65534 65534");
    assert_eq!(fact(&facts, "gid"), format!("{daemon_gid} {daemon_gid}"));
    assert!(
        !fact(&facts, "groups").split(' ').any(|g| g == "0"),
        "root group kept"
    );
}

#[test]
fn a_root_daemon_refuses_files_others_can_change() {
    if !is_root() {
        eprintln!("SKIPPED: the ownership rule applies to a root daemon only");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let echo = dir.path().join("echo");
    std::fs::copy(bin_dir().join("tinyinetd-echo"), &echo).expect("copy");
    let conf = dir.path().join("t.toml");
    let text = format!(
        "[[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:{}\"]\nprogram = \"{}\"\n",
        free_port(),
        echo.display()
    );
    std::fs::write(&conf, &text).expect("write");
    let conf_s = conf.to_string_lossy().into_owned();

    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let out = run_tinyinetd(&["--check", "-c", &conf_s], Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("refusing a configuration that a user other than root can change")
            && err.contains("writable by its group and others (mode 0666)"),
        "{err}"
    );

    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::set_permissions(&echo, std::fs::Permissions::from_mode(0o757)).expect("chmod");
    let out = run_tinyinetd(&["-c", &conf_s], Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(":4:11: service \"echo\": program")
            && err.contains("writable by others (mode 0757)"),
        "{err}"
    );

    std::fs::set_permissions(&echo, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = run_tinyinetd(&["--check", "-c", &conf_s], Duration::from_secs(10));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Text that reaches the log from outside (here a program path with an
/// escape sequence and a newline, logged on exec failure) is escaped.
#[test]
fn log_values_are_escaped() {
    let evil = "evil\u{1b}[31m\nname";
    let conf = format!(
        "{DAEMON}\n[[service]]\nname = \"evil\"\nlisten = [\"127.0.0.1:{{port:evil}}\"]\nprogram = \"{{tmp}}/evil\\u001b[31m\\nname\"\n"
    );
    let mut d = Daemon::prepare(&conf);
    let path = d.dir.path().join(evil);
    std::fs::copy(bin_dir().join("tinyinetd-echo"), &path).expect("copy");
    d.spawn(&|_| {});
    d.ready(Duration::from_secs(10)).expect("ready");
    std::fs::remove_file(&path).expect("remove");
    let _ = roundtrip(d.addr("evil"), b"");
    assert!(
        d.wait_log("exec-failed", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    let log = d.log();
    assert!(!log.contains('\u{1b}'), "raw escape byte in the log");
    let line = log
        .lines()
        .find(|l| l.contains("exec-failed"))
        .expect("line");
    assert!(line.contains("evil\\x1b[31m\\nname\""), "{line}");
    assert!(
        line.contains(" error=\"No such file or directory\""),
        "{line}"
    );
}
