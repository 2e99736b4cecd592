//! What the daemon needs of the kernel, and what it says when it lacks it.

use std::time::Duration;

use crate::harness::*;

/// Runs the daemon under a seccomp filter that makes `close_range` fail as
/// a kernel before 5.11 would (`errno`: ENOSYS before 5.9, EINVAL for the
/// CLOSE_RANGE_CLOEXEC flag on 5.9 and 5.10). Without close_range the child
/// could not close the daemon's descriptors before its exec, so every
/// connection would fail: the daemon must refuse to start, saying why.
fn start_without_close_range(errno: &str) {
    let mut d = Daemon::prepare(&format!(
        "{DAEMON}\n[[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:{{port:echo}}\"]\nprogram = \"tinyinetd-echo\"\n"
    ));
    let filter = format!(
        "import errno, os, sys, seccomp\n\
         f = seccomp.SyscallFilter(seccomp.ALLOW)\n\
         f.add_rule(seccomp.ERRNO(errno.{errno}), 'close_range')\n\
         f.load()\n\
         os.execv(sys.argv[1], sys.argv[1:])\n"
    );
    d.spawn(&|cmd| launch_through(cmd, "/usr/bin/python3", &["-c", &filter]));
    let status = d.wait_exit(Duration::from_secs(10));
    let log = d.log();
    assert!(
        status.is_some_and(|s| s.code() == Some(1)),
        "the daemon must exit 1 at start, got {status:?}; log:\n{log}"
    );
    assert!(
        log.contains("Linux 5.11 or later") && log.contains("close_range"),
        "the message must name the requirement; log:\n{log}"
    );
}

#[test]
fn a_kernel_without_close_range_is_refused_at_start() {
    if std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import seccomp"])
        .status()
        .map_or(true, |s| !s.success())
    {
        panic!(
            "python3-seccomp is missing: tests/run installs it (apt-get install python3-seccomp)"
        );
    }
    start_without_close_range("ENOSYS");
    start_without_close_range("EINVAL");
}
