//! A script's `#!` interpreter, checked at load for the handler's user
//! (missing, not executable by that user, `env NAME` not in the handler's
//! PATH), and named by the exec-failed line when it goes away after load.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

/// A root-owned 0755 temporary directory (tempfile makes it 0700).
fn root_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

fn write_file(p: &Path, text: &str, mode: u32) {
    std::fs::write(p, text).expect("write");
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A config whose line 7, column 11 is the `program` value, and whose
/// service runs as nobody when the daemon is root.
fn config(dir: &Path, script: &Path, extra: &str) -> std::path::PathBuf {
    let conf = dir.join("t.toml");
    let user = if is_root() { "user = \"nobody\"\n" } else { "" };
    write_file(
        &conf,
        &format!(
            "[daemon]\nlog = \"stderr\"\n\n[[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:{}\"]\nprogram = \"{}\"\n{user}{extra}",
            free_port(),
            script.display()
        ),
        0o644,
    );
    conf
}

/// `--check` on `conf` fails, and its first error line is at the
/// program and contains every one of `needles`.
fn check_fails(conf: &Path, needles: &[&str]) {
    let c = conf.to_string_lossy().into_owned();
    let out = run_tinyinetd(&["--check", "-c", &c], Duration::from_secs(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "--check passed: {err}");
    let at = format!("{c}:7:11: service \"s\": program \"");
    let line = err.lines().find(|l| l.starts_with(&at));
    let line = line.unwrap_or_else(|| panic!("no error at the program ({at}) in: {err}"));
    for n in needles {
        assert!(line.contains(n), "no {n:?} in: {line}");
    }
}

/// The same `--check` run as nobody (a daemon that is not root checks
/// for its own user), when setpriv can drop to it.
fn check_fails_as_nobody(conf: &Path, needles: &[&str]) {
    if !is_root() {
        return check_fails(conf, needles);
    }
    let c = conf.to_string_lossy().into_owned();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(daemon_bin())
        .args(["--check", "-c", &c])
        .stdin(Stdio::null())
        .output();
    let Ok(out) = out else {
        eprintln!("note: no setpriv: the check as a user other than root is not tried");
        return;
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "--check as nobody passed: {err}"
    );
    let at = format!("{c}:7:11: service \"s\": program \"");
    let line = err.lines().find(|l| l.starts_with(&at));
    let line = line.unwrap_or_else(|| panic!("no error at the program ({at}) in: {err}"));
    for n in needles {
        assert!(line.contains(n), "no {n:?} in: {line}");
    }
}

#[test]
fn a_script_with_a_missing_interpreter_fails_check() {
    let dir = root_tree();
    let script = dir.path().join("script.sh");
    write_file(
        &script,
        "#!/nonexistent/tinyinetd-interp -x\necho hi\n",
        0o755,
    );
    let conf = config(dir.path(), &script, "");
    check_fails(&conf, &["/nonexistent/tinyinetd-interp"]);
    // A daemon that is not root does not walk the interpreter for
    // ownership; the load checks it all the same.
    check_fails_as_nobody(
        &conf,
        &["its #! interpreter /nonexistent/tinyinetd-interp does not exist (No such file or directory)"],
    );
}

#[test]
fn an_interpreter_the_handlers_user_cannot_execute_fails_check() {
    if !is_root() {
        eprintln!("SKIPPED: a root-owned 0700 interpreter and a handler as nobody need root");
        return;
    }
    let dir = root_tree();
    let sh = dir.path().join("sh0700");
    std::fs::copy("/bin/sh", &sh).expect("copy /bin/sh");
    std::fs::set_permissions(&sh, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let script = dir.path().join("script.sh");
    write_file(&script, &format!("#!{}\necho hi\n", sh.display()), 0o755);
    let conf = config(dir.path(), &script, "");
    check_fails(
        &conf,
        &[&format!(
            "its #! interpreter {} cannot be run by user \"nobody\" (uid 65534): it is mode 0700, owner uid 0, group gid 0",
            sh.display()
        )],
    );
}

#[test]
fn env_with_a_program_not_in_the_handlers_path_fails_check() {
    let dir = root_tree();
    let script = dir.path().join("script.sh");
    write_file(
        &script,
        "#!/usr/bin/env tinyinetd-nosuchprogram\nhi\n",
        0o755,
    );
    let conf = config(dir.path(), &script, "");
    check_fails(
        &conf,
        &["#!/usr/bin/env tinyinetd-nosuchprogram: \"tinyinetd-nosuchprogram\" is not found in the handler's PATH (/usr/local/bin:/usr/bin:/bin)"],
    );
    // The service's own PATH is the one searched.
    write_file(&script, "#!/usr/bin/env sh\necho hi\n", 0o755);
    let conf = config(dir.path(), &script, "env = { PATH = \"/nonexistent\" }\n");
    check_fails(
        &conf,
        &["\"sh\" is not found in the handler's PATH (/nonexistent)"],
    );
    let conf = config(dir.path(), &script, "");
    let c = conf.to_string_lossy().into_owned();
    let out = run_tinyinetd(&["--check", "-c", &c], Duration::from_secs(5));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_interpreter_removed_after_load_is_named_by_exec_failed() {
    let dir = root_tree();
    let interp = dir.path().join("interp");
    std::fs::copy("/bin/sh", &interp).expect("copy /bin/sh");
    std::fs::set_permissions(&interp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let script = dir.path().join("script.sh");
    write_file(
        &script,
        &format!("#!{}\necho hi\n", interp.display()),
        0o755,
    );
    let conf = format!(
        "{DAEMON}\n[[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:{{port:s}}\"]\nprogram = \"{}\"\n",
        script.display()
    );
    let d = Daemon::start(&conf);
    assert_eq!(roundtrip(d.addr("s"), b""), b"hi\n");
    std::fs::remove_file(&interp).expect("remove the interpreter");
    assert_eq!(roundtrip(d.addr("s"), b""), b"");
    assert!(
        d.wait_log("exec-failed", Duration::from_secs(10)),
        "{}",
        d.log()
    );
    let line = d.log_lines("exec-failed").join("\n");
    let want = format!("interpreter={}", interp.display());
    assert!(line.contains(&want), "no {want} in: {line}");
    assert!(line.contains("step=execve"), "{line}");
    assert!(line.contains("No such file or directory"), "{line}");
}

#[test]
fn a_script_the_handlers_user_cannot_run_or_read_fails_check() {
    if !is_root() {
        eprintln!("SKIPPED: a root-owned script and a handler as nobody need root");
        return;
    }
    let dir = root_tree();
    let script = dir.path().join("script.sh");
    write_file(&script, "#!/bin/sh\necho hi\n", 0o700);
    let conf = config(dir.path(), &script, "");
    check_fails(
        &conf,
        &["the script cannot be run by user \"nobody\" (uid 65534): it is mode 0700, owner uid 0, group gid 0"],
    );
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o711)).expect("chmod");
    check_fails(
        &conf,
        &["the script cannot be read by user \"nobody\" (uid 65534), and its interpreter must read it: it is mode 0711"],
    );
}
