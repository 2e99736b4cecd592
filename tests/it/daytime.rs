//! tinyinetd-daytime through the real daemon, read by a classic client.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

/// Compiles `tests/clients/NAME.c` into `dir` with `cc`.
pub fn compile_client(name: &str, dir: &Path) -> std::path::PathBuf {
    let out = dir.join(name);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/clients/{name}.c"));
    let cc = Command::new("cc")
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .expect("run cc (gcc is on every machine of this project)");
    assert!(
        cc.status.success(),
        "cc {name}: {}",
        String::from_utf8_lossy(&cc.stderr)
    );
    out
}

#[test]
fn a_classic_daytime_client_prints_the_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = compile_client("daytime", dir.path());
    let conf = format!(
        "{DAEMON}\n[[service]]\nname = \"daytime\"\nlisten = [\"127.0.0.1:{{port:daytime}}\"]\nprogram = \"tinyinetd-daytime\"\nenv = {{ TZ = \"UTC\" }}\n"
    );
    let d = Daemon::start(&conf);
    let before = chrono::Utc::now();
    let out = Command::new(&client)
        .args(["127.0.0.1", &d.port("daytime").to_string()])
        .output()
        .expect("run the client");
    let after = chrono::Utc::now();
    assert!(
        out.status.success(),
        "client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("ASCII");
    let line = text
        .strip_suffix("\r\n")
        .unwrap_or_else(|| panic!("no CR LF: {text:?}"));
    let t = chrono::NaiveDateTime::parse_from_str(line, "%a %b %e %H:%M:%S %Y")
        .unwrap_or_else(|e| panic!("{line:?} is not ctime's format: {e}"))
        .and_utc();
    // Whole seconds: the reply may be up to a second behind `before`.
    assert!(
        t >= before - chrono::Duration::seconds(1) && t <= after,
        "{t} is not between {before} and {after}"
    );
    assert!(d.wait_log("exit service=daytime", Duration::from_secs(5)));
    assert!(
        d.log_lines("exit service=daytime")[0].contains("status=0"),
        "{}",
        d.log()
    );
}
