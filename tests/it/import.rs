//! `tinyinetd import`: Debian's shipped inetd.conf and xinetd.d files, and
//! hand-written inputs against golden files. What is printed as mapped
//! must pass `tinyinetd --check`; nothing may be silently dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::harness::*;

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

/// `tinyinetd ARGS` run from the repository root (so paths print relative).
fn run_in_repo(args: &[&str]) -> Output {
    let mut child = std::process::Command::new(daemon_bin())
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tinyinetd");
    assert!(
        wait_until(Duration::from_secs(20), || matches!(
            child.try_wait(),
            Ok(Some(_))
        )),
        "tinyinetd {args:?} did not exit"
    );
    child.wait_with_output().expect("output")
}

/// Writes `toml` to a file and runs `--check` on it: what import mapped
/// must be valid input.
fn assert_checks(toml: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("imported.toml");
    fs::write(&path, toml).expect("write");
    let out = run_tinyinetd(
        &["--check", "-c", &path.to_string_lossy()],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "--check refused the import:\n{}\n---\n{toml}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every entry of the input is in the output: a `[[service]]` or a
/// `not mapped:` comment, as many as the summary counts and as `expected`.
fn assert_nothing_dropped(out: &Output, expected: usize) -> String {
    let toml = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let services = toml.lines().filter(|l| *l == "[[service]]").count();
    let skipped = toml
        .lines()
        .filter(|l| l.starts_with("# ") && l.contains(": not mapped: "))
        .count();
    assert_eq!(services + skipped, expected, "{toml}");
    assert!(
        stderr.starts_with(&format!("tinyinetd import: {expected} entries from ")),
        "{stderr}"
    );
    toml
}

/// The entries of an inetd.conf, counted without the importer: every line
/// that is a service, switched on or commented out.
fn inetd_entries(path: &Path) -> usize {
    let re = regex::Regex::new(
        r"^(#<off>#\s*|#)?[^#\s]\S*\s+(stream|dgram|raw|rdm|seqpacket)\s+\S+\s+(no)?wait",
    )
    .expect("regex");
    fs::read_to_string(path)
        .expect("read")
        .lines()
        .filter(|l| re.is_match(l.trim()))
        .count()
}

/// The `service` blocks of the files of an xinetd.d directory.
fn xinetd_entries(dir: &Path) -> usize {
    let mut n = 0;
    for e in fs::read_dir(dir).expect("read dir").flatten() {
        let text = fs::read_to_string(e.path()).expect("read");
        n += text
            .lines()
            .filter(|l| l.trim_start().starts_with("service "))
            .count();
    }
    n
}

#[test]
fn debian_inetd_conf_files_import_and_what_maps_is_valid() {
    for name in ["openbsd-inetd.inetd.conf", "inetutils-inetd.inetd.conf"] {
        let path = data(&format!("debian/{name}"));
        let expected = inetd_entries(&path);
        assert!(
            expected >= 4,
            "{name}: the test data has {expected} entries"
        );
        let out = run_in_repo(&["import", "inetd", &path.to_string_lossy()]);
        // discard, time, chargen and udp cannot map: status 1.
        assert_eq!(out.status.code(), Some(1), "{name}");
        let toml = assert_nothing_dropped(&out, expected);
        if toml.contains("[[service]]") {
            assert_checks(&toml);
        }
    }
}

#[test]
fn debian_xinetd_d_imports_and_what_maps_is_valid() {
    let dir = data("debian/xinetd.d");
    let expected = xinetd_entries(&dir);
    assert_eq!(expected, 17, "the test data changed");
    let out = run_in_repo(&["import", "xinetd", &dir.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    let toml = assert_nothing_dropped(&out, expected);
    // echo and daytime (tcp) map, switched off as Debian ships them.
    assert_eq!(toml.matches("[[service]]").count(), 2, "{toml}");
    assert_eq!(toml.matches("enabled = false").count(), 2, "{toml}");
    assert_checks(&toml);
}

#[test]
fn hand_written_inputs_match_the_golden_files() {
    let cases: [(&[&str], &str); 2] = [
        (
            &[
                "import",
                "inetd",
                "--services",
                "tests/data/import/services",
                "tests/data/import/inetd.conf",
            ],
            "inetd",
        ),
        (
            &[
                "import",
                "xinetd",
                "--services",
                "tests/data/import/services",
                "tests/data/import/xinetd/xinetd.conf",
            ],
            "xinetd",
        ),
    ];
    for (args, golden) in cases {
        let out = run_in_repo(args);
        let want = fs::read_to_string(data(&format!("import/{golden}.toml"))).expect("golden");
        let want_err =
            fs::read_to_string(data(&format!("import/{golden}.stderr"))).expect("golden");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            want,
            "{golden}: stdout"
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            want_err,
            "{golden}: stderr"
        );
        assert_eq!(out.status.code(), Some(1), "{golden}");
        assert_checks(&want);
    }
    // The inetd input's entries, counted without the importer.
    let out = run_in_repo(cases[0].0);
    assert_nothing_dropped(&out, inetd_entries(&data("import/inetd.conf")));
}

#[test]
fn everything_mapped_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("inetd.conf");
    fs::write(
        &conf,
        "# one service\n127.0.0.1:discard stream tcp nowait root internal\n",
    )
    .expect("write");
    fs::write(dir.path().join("services"), "echo 7/tcp\ndiscard 9/tcp\n").expect("write");
    let conf = conf.to_string_lossy().to_string();
    let services = dir.path().join("services").to_string_lossy().to_string();
    let out = run_tinyinetd(
        &["import", "inetd", "--services", &services, &conf],
        Duration::from_secs(20),
    );
    // discard has no handler: 1.
    assert_eq!(out.status.code(), Some(1));
    fs::write(&conf, "127.0.0.1:echo stream tcp nowait root internal\n").expect("write");
    let out = run_tinyinetd(
        &["import", "inetd", "--services", &services, &conf],
        Duration::from_secs(20),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("tinyinetd import: 1 entry from {conf}: 1 mapped, 0 partly mapped, 0 not mapped\n")
    );
    assert_checks(&String::from_utf8_lossy(&out.stdout));
}

#[test]
fn bad_import_arguments_are_usage_errors() {
    for args in [
        &["import"][..],
        &["import", "inetdx", "f"],
        &["import", "inetd"],
        &["import", "inetd", "a", "b"],
        &["import", "xinetd", "--bogus", "d"],
        &["import", "xinetd", "--services"],
    ] {
        let out = run_tinyinetd(args, Duration::from_secs(10));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("usage:"),
            "{args:?}"
        );
    }
    // A file that cannot be read is no usage error: 1, naming it.
    let out = run_tinyinetd(
        &["import", "inetd", "/nonexistent/inetd.conf"],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "tinyinetd: reading /nonexistent/inetd.conf: No such file or directory\n"
    );
}
