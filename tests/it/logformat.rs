//! Every line the daemon writes has the one documented form,
//! `LEVEL: EVENT key=value ...` (README, "Logging"; tinyinetd(8)).

use std::net::IpAddr;
use std::time::Duration;

use nix::sys::signal::Signal;
use regex::Regex;

use crate::harness::*;

/// The documented form: a level, an event name, then `key=value` pairs
/// whose value is bare (no space, quote, `=` or backslash) or quoted with
/// `\` escapes.
fn line_form() -> Regex {
    Regex::new(
        r#"^(error|warn|info|debug): [a-z][a-z0-9-]*( [a-z][a-z0-9_]*=([^ "=\\]+|"([^"\\]|\\.)*"))*$"#,
    )
    .expect("regex")
}

fn conf(addr: &str) -> String {
    format!(
        "{DAEMON}\n[[service]]\nname = \"echo\"\nlisten = [\"{addr}\"]\nprogram = \"tinyinetd-echo\"\ndeny = [\"127.0.0.2\"]\n\n[[service]]\nname = \"gone\"\nlisten = [\"127.0.0.1:{{port:gone}}\"]\nprogram = \"gone.sh\"\n"
    )
}

/// One run through start, a session, a refusal, an exec failure, SIGUSR1,
/// a reload that moves a socket, and shutdown.
#[test]
fn every_line_of_a_run_has_the_documented_form() {
    let mut d = Daemon::prepare(&conf("127.0.0.1:{port:echo}"));
    let script = d.handlers.join("gone.sh");
    std::fs::write(&script, "#!/bin/sh\nexec cat\n").expect("write script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    d.spawn(&|_| {});
    d.ready(Duration::from_secs(10)).expect("ready");

    assert_eq!(roundtrip(d.addr("echo"), b"x\n"), b"x\n");
    let denied: IpAddr = "127.0.0.2".parse().expect("ip");
    drop(connect_from(denied, d.addr("echo")).expect("connect"));
    assert!(
        d.wait_log("reason=deny", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    std::fs::remove_file(&script).expect("remove script");
    drop(roundtrip(d.addr("gone"), b""));
    assert!(
        d.wait_log("exec-failed", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    d.signal(Signal::SIGUSR1);
    assert!(
        d.wait_log("info: status ", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    // Put the script back for the reload's check, and move echo's socket.
    std::fs::write(&script, "#!/bin/sh\nexec cat\n").expect("write script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    d.rewrite(&conf("127.0.0.1:{port:echo2}"));
    d.signal(Signal::SIGHUP);
    assert!(
        d.wait_log("info: reload ", Duration::from_secs(10)),
        "{}",
        d.log()
    );
    d.signal(Signal::SIGTERM);
    assert!(
        d.wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success()),
        "{}",
        d.log()
    );

    let log = d.log();
    let form = line_form();
    let bad: Vec<&str> = log.lines().filter(|l| !form.is_match(l)).collect();
    assert!(
        bad.is_empty(),
        "lines not of the documented form:\n{}",
        bad.join("\n")
    );
    for event in [
        "listen",
        "ready",
        "exit",
        "refused",
        "exec-failed",
        "status",
        "reload",
        "unlisten",
        "stopping",
        "stopped",
    ] {
        assert!(
            log.lines().any(|l| l.split(' ').nth(1) == Some(event)),
            "no {event} line in the run:\n{log}"
        );
    }
    // A socket change names its service, at start and at reload alike.
    for l in log
        .lines()
        .filter(|l| l.starts_with("info: listen ") || l.starts_with("info: unlisten "))
    {
        assert!(
            l.contains(" service=echo ") || l.contains(" service=gone "),
            "{l}"
        );
    }
}

/// A start-up failure is a log line too: one per problem, each with the
/// whole message `--check` prints for it.
#[test]
fn a_start_failure_is_a_log_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        format!(
            "[daemon]\nlog = \"stderr\"\nlog_levl = \"info\"\n[[service]]\nname = \"x\"\nlisten = [\"127.0.0.1:9\"]\nprogram = \"/nonexistent/{}\"\n",
            "p".repeat(150),
        ),
    )
    .expect("write");
    let path = path.to_string_lossy();
    let check = run_tinyinetd(&["--check", "-c", &path], Duration::from_secs(10));
    let problems = String::from_utf8_lossy(&check.stderr).into_owned();
    assert_eq!(problems.lines().count(), 2, "{problems}");
    assert!(
        problems.lines().any(|l| l.len() > 200),
        "a message over 200 characters: {problems}"
    );
    let out = run_tinyinetd(&["-c", &path], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let form = line_form();
    for l in err.lines() {
        assert!(form.is_match(l), "not of the documented form: {l}");
    }
    let expected: Vec<String> = problems
        .lines()
        .map(|p| {
            format!(
                "error: start-failed error=\"{}\"",
                p.replace('\\', "\\\\").replace('"', "\\\"")
            )
        })
        .collect();
    assert_eq!(err.lines().collect::<Vec<_>>(), expected);
}

/// Every event name the source can log is listed in the README's
/// "Logging" section, so the documented set is the whole set.
#[test]
fn every_event_the_source_can_log_is_documented() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let logging = readme
        .split("\n## Logging")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Logging section in the README");
    let event_arg = Regex::new(r#"\.event\(\s*[^,()]+,\s*"([a-z0-9-]+)"\s*\)"#).expect("regex");
    let level_pair = Regex::new(r#"\(\s*Level::[A-Za-z]+,\s*"([a-z0-9-]+)"\s*\)"#).expect("regex");
    let event_name = Regex::new(r#"^\s*"([a-z][a-z0-9]*(-[a-z0-9]+)*)"\s*$"#).expect("regex");
    let mut names = std::collections::BTreeSet::new();
    let mut todo = vec![root.join("src")];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") || p.starts_with(root.join("src/handler")) {
                continue;
            }
            if p.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).expect("read");
            // Unit tests log made-up events of their own.
            let text = text.split("#[cfg(test)]").next().unwrap_or_default();
            for c in event_arg
                .captures_iter(text)
                .chain(level_pair.captures_iter(text))
            {
                names.insert(c[1].to_string());
            }
            // `.event(level, if .. { "a" } else { "b" })` and the like: the
            // string literals alone on a line right after `.event(`.
            let lines: Vec<&str> = text.lines().collect();
            for (i, l) in lines.iter().enumerate() {
                if l.trim_end().ends_with(".event(") {
                    for next in lines.iter().skip(i + 1).take(8) {
                        if let Some(c) = event_name.captures(next.trim_end_matches(',')) {
                            names.insert(c[1].to_string());
                        }
                    }
                }
            }
        }
    }
    assert!(names.len() > 20, "too few event names found: {names:?}");
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !logging.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "events the README's Logging section does not list: {missing:?}\nall: {names:?}"
    );
}
