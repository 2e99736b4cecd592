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
    let err = start_failure_messages(&String::from_utf8_lossy(&out.stderr));
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
    // A script: exec'd by its path, so removing it makes the exec fail (a
    // binary would run from the descriptor held since load).
    std::fs::write(&path, "#!/bin/sh\nexit 0\n").expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
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

// ---- Issue 14: trusted paths (items 1, 2, 3, 9) ----

/// A user created for one test and removed when the guard drops (also when
/// the test fails).
struct TestUser {
    name: String,
    uid: u32,
}

impl TestUser {
    /// `useradd -M -N -s /usr/sbin/nologin NAME EXTRA...`; `None` (with a
    /// skip line printed by the caller) when useradd cannot run here.
    fn create(name: &str, extra: &[&str]) -> Option<TestUser> {
        // A user left over by a run that was killed.
        let _ = Command::new("userdel").args(["-f", name]).output();
        let out = Command::new("useradd")
            .args(["-M", "-N", "-s", "/usr/sbin/nologin"])
            .args(extra)
            .arg(name)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!("useradd {name}: {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        let mut guard = TestUser {
            name: name.to_string(),
            uid: 0,
        };
        guard.uid = id(&["-u", name]).parse().ok()?;
        Some(guard)
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // -f: a uid-0 alias "is used by" every root process.
        let _ = Command::new("userdel").args(["-f", &self.name]).output();
    }
}

/// A root-owned 0755 temporary directory (tempfile makes it 0700).
fn root_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

fn mkdir(p: &std::path::Path, mode: u32, owner: Option<u32>) {
    std::fs::create_dir(p).expect("mkdir");
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    if let Some(uid) = owner {
        std::os::unix::fs::chown(p, Some(uid), None).expect("chown");
    }
}

fn write_file(p: &std::path::Path, text: &str, mode: u32) {
    std::fs::write(p, text).expect("write");
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A config with one service running `program` as root.
fn root_service_config(path: &std::path::Path, program: &std::path::Path, port: u16) {
    write_file(
        path,
        &format!(
            "[daemon]\nlog = \"stderr\"\n\n[[service]]\nname = \"status\"\nlisten = [\"127.0.0.1:{port}\"]\nprogram = \"{}\"\nuser = \"root\"\n",
            program.display()
        ),
        0o644,
    );
}

/// `--check` and a start on `conf` both exit 1 at once, and stderr contains
/// every one of `needles`.
fn refused(conf: &std::path::Path, needles: &[&str]) {
    let conf = conf.to_string_lossy().into_owned();
    for args in [vec!["--check", "-c", &conf], vec!["-c", &conf]] {
        let out = run_tinyinetd(&args, Duration::from_secs(5));
        // The daemon says it in start-failed log lines: their messages.
        let err = start_failure_messages(&String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: no {n:?} in: {err}");
        }
    }
}

/// Item 1: `atk/` owned by the attacker, `atk/bin/` and the program root's.
/// The attacker could rename `bin` away and put her own in its place.
#[test]
fn a_program_under_a_directory_another_user_owns_is_refused() {
    if !is_root() {
        eprintln!("SKIPPED: the ownership rule applies to a root daemon only");
        return;
    }
    let Some(atk) = TestUser::create("tpathsatk1", &[]) else {
        eprintln!("SKIPPED: cannot create a test user (useradd failed)");
        return;
    };
    let dir = root_tree();
    let atk_dir = dir.path().join("atk");
    mkdir(&atk_dir, 0o755, Some(atk.uid));
    mkdir(&atk_dir.join("bin"), 0o755, None);
    let prog = atk_dir.join("bin/status.sh");
    write_file(&prog, "#!/bin/sh\necho ok\n", 0o755);
    let conf = dir.path().join("t.toml");
    root_service_config(&conf, &prog, free_port());
    refused(
        &conf,
        &[
            "refusing to run a program that a user other than root can change",
            &format!(
                "{} is owned by uid {}, not root",
                atk_dir.display(),
                atk.uid
            ),
        ],
    );
    // The same directory, root's: accepted.
    std::os::unix::fs::chown(&atk_dir, Some(0), None).expect("chown");
    let out = run_tinyinetd(
        &["--check", "-c", &conf.to_string_lossy()],
        Duration::from_secs(5),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Item 2: a symbolic link into a directory the attacker owns, for a
/// program and for the configuration itself.
#[test]
fn a_symlink_into_a_directory_another_user_owns_is_refused() {
    if !is_root() {
        eprintln!("SKIPPED: the ownership rule applies to a root daemon only");
        return;
    }
    let Some(atk) = TestUser::create("tpathsatk2", &[]) else {
        eprintln!("SKIPPED: cannot create a test user (useradd failed)");
        return;
    };
    let dir = root_tree();
    let atkbin = dir.path().join("atkbin");
    mkdir(&atkbin, 0o755, Some(atk.uid));
    std::fs::copy(bin_dir().join("tinyinetd-echo"), atkbin.join("handler")).expect("copy");
    mkdir(&dir.path().join("bin"), 0o755, None);
    let linked = dir.path().join("bin/linked");
    std::os::unix::fs::symlink("../atkbin/handler", &linked).expect("symlink");
    let conf = dir.path().join("t.toml");
    root_service_config(&conf, &linked, free_port());
    let owned = format!("{} is owned by uid {}, not root", atkbin.display(), atk.uid);
    refused(&conf, &[&owned, "linked"]);

    // The configuration: a root-owned file behind a link into atkbin.
    let good = dir.path().join("good");
    std::fs::copy(bin_dir().join("tinyinetd-echo"), &good).expect("copy");
    root_service_config(&atkbin.join("real.toml"), &good, free_port());
    let conf_link = dir.path().join("linked.toml");
    std::os::unix::fs::symlink(atkbin.join("real.toml"), &conf_link).expect("symlink");
    refused(
        &conf_link,
        &[
            "refusing a configuration that a user other than root can change",
            &owned,
        ],
    );
}

/// Item 3: the configuration is read from the descriptor that was checked,
/// and the check covers every directory above it: a root-owned file in a
/// directory another user owns is refused (she could swap it between any
/// check and any read).
#[test]
fn a_config_in_a_directory_another_user_owns_is_refused() {
    if !is_root() {
        eprintln!("SKIPPED: the ownership rule applies to a root daemon only");
        return;
    }
    let Some(atk) = TestUser::create("tpathsatk3", &[]) else {
        eprintln!("SKIPPED: cannot create a test user (useradd failed)");
        return;
    };
    let dir = root_tree();
    let good = dir.path().join("good");
    std::fs::copy(bin_dir().join("tinyinetd-echo"), &good).expect("copy");
    let atk_dir = dir.path().join("atk");
    mkdir(&atk_dir, 0o755, Some(atk.uid));
    mkdir(&atk_dir.join("etc"), 0o755, None);
    let conf = atk_dir.join("etc/t.toml");
    root_service_config(&conf, &good, free_port());
    refused(
        &conf,
        &[
            "refusing a configuration that a user other than root can change",
            &format!(
                "{} is owned by uid {}, not root",
                atk_dir.display(),
                atk.uid
            ),
        ],
    );
}

/// Item 9: a device, a FIFO nobody writes and a file over the size limit
/// fail at once with a clear message. Run under a 1 GiB address-space
/// limit, so that a regression reading /dev/zero fails fast rather than
/// eating the machine's memory.
#[test]
fn a_device_a_fifo_or_a_huge_config_fails_at_once() {
    let dir = root_tree();
    let fifo = dir.path().join("fifo.toml");
    let st = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(st.success());
    let big = dir.path().join("big.toml");
    let mut text = String::from("# padding\n");
    while text.len() < 2 * 1024 * 1024 {
        text.push_str("# ......................................................................\n");
    }
    text.truncate(2 * 1024 * 1024 - 1);
    text.push('\n');
    write_file(&big, &text, 0o644);
    let cases = [
        ("/dev/zero".to_string(), "not a regular file".to_string()),
        (
            fifo.to_string_lossy().into_owned(),
            "not a regular file".to_string(),
        ),
        (
            big.to_string_lossy().into_owned(),
            "is 2097152 bytes; the limit is 1 MiB".to_string(),
        ),
    ];
    for (path, want) in &cases {
        for check in [true, false] {
            let mut args = vec!["--as=1073741824", "--"];
            let bin = daemon_bin().to_string_lossy().into_owned();
            args.push(&bin);
            if check {
                args.push("--check");
            }
            args.extend(["-c", path.as_str()]);
            let start = std::time::Instant::now();
            let mut child = Command::new("prlimit")
                .args(&args)
                .env_remove("NOTIFY_SOCKET")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn prlimit");
            let exited = wait_until(Duration::from_secs(5), || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
            if !exited {
                let _ = child.kill();
            }
            let out = child.wait_with_output().expect("output");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(exited, "{args:?} still running after 5 s: {err}");
            assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
            assert!(
                err.contains(&format!("{path}: cannot read the configuration: "))
                    && err.contains(want.as_str()),
                "{args:?}: {err}"
            );
            assert!(start.elapsed() < Duration::from_secs(5));
        }
    }
}

/// Item 1's fix, the other side: a program that passed the check is the
/// one that runs. It is held open from load, so a file put at its path
/// later (here by root, in a root-owned directory) does not run; a script
/// is exec'd by its checked path, so a replacement there (only root can
/// make one) does.
#[test]
fn the_checked_program_runs_even_when_its_path_is_replaced() {
    let dir = root_tree();
    let prog = dir.path().join("prog");
    std::fs::copy(bin_dir().join("tinyinetd-echo"), &prog).expect("copy");
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let script = dir.path().join("script.sh");
    write_file(&script, "#!/bin/sh\necho one\n", 0o755);
    let conf = format!(
        "{DAEMON}\n[[service]]\nname = \"elf\"\nlisten = [\"127.0.0.1:{{port:elf}}\"]\nprogram = \"{}\"\n\n[[service]]\nname = \"script\"\nlisten = [\"127.0.0.1:{{port:script}}\"]\nprogram = \"{}\"\n",
        prog.display(),
        script.display()
    );
    let d = Daemon::start(&conf);
    assert_eq!(roundtrip(d.addr("elf"), b"hello\n"), b"hello\n");
    assert_eq!(roundtrip(d.addr("script"), b""), b"one\n");
    std::fs::rename(&prog, dir.path().join("prog.orig")).expect("rename");
    write_file(&prog, "#!/bin/sh\necho swapped\n", 0o755);
    let new_script = dir.path().join("script.new");
    write_file(&new_script, "#!/bin/sh\necho two\n", 0o755);
    std::fs::rename(&new_script, &script).expect("rename");
    assert_eq!(
        roundtrip(d.addr("elf"), b"hello\n"),
        b"hello\n",
        "the file put at the checked path ran"
    );
    assert_eq!(roundtrip(d.addr("script"), b""), b"two\n");
}

/// A script's interpreter is walked like the program: one in a directory
/// another user owns is refused.
#[test]
fn a_script_whose_interpreter_another_user_can_change_is_refused() {
    if !is_root() {
        eprintln!("SKIPPED: the ownership rule applies to a root daemon only");
        return;
    }
    let Some(atk) = TestUser::create("tpathsatk4", &[]) else {
        eprintln!("SKIPPED: cannot create a test user (useradd failed)");
        return;
    };
    let dir = root_tree();
    let atk_dir = dir.path().join("atk");
    mkdir(&atk_dir, 0o755, Some(atk.uid));
    std::fs::copy("/bin/sh", atk_dir.join("sh")).expect("copy");
    let script = dir.path().join("script.sh");
    write_file(
        &script,
        &format!("#!{}/sh\necho hi\n", atk_dir.display()),
        0o755,
    );
    let conf = dir.path().join("t.toml");
    root_service_config(&conf, &script, free_port());
    refused(
        &conf,
        &[
            "interpreter",
            &format!(
                "{} is owned by uid {}, not root",
                atk_dir.display(),
                atk.uid
            ),
        ],
    );
}

/// Item 1's last point: a user with uid 0 under another name runs handlers
/// as root only when the config says `user = "root"`.
#[test]
fn a_uid_0_alias_is_refused() {
    if !is_root() {
        eprintln!("SKIPPED: user switching needs the tests to run as root");
        return;
    }
    let Some(_toor) = TestUser::create("tpathstoor", &["-o", "-u", "0"]) else {
        eprintln!("SKIPPED: cannot create a uid-0 alias (useradd -o -u 0 failed)");
        return;
    };
    let dir = root_tree();
    let good = dir.path().join("good");
    std::fs::copy(bin_dir().join("tinyinetd-echo"), &good).expect("copy");
    let conf = dir.path().join("t.toml");
    write_file(
        &conf,
        &format!(
            "[[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:{}\"]\nprogram = \"{}\"\nuser = \"tpathstoor\"\n",
            free_port(),
            good.display()
        ),
        0o644,
    );
    refused(
        &conf,
        &["5:8: service \"s\": user \"tpathstoor\" has uid 0: handlers run as root only when the config says user = \"root\""],
    );
}
