//! The example handlers under examples/, served by the real daemon.

use std::io::Write;
use std::net::Shutdown;
use std::time::Duration;

use crate::harness::*;

#[test]
fn greet_sh_uses_the_peer_address_and_env() {
    let conf = format!(
        "{DAEMON}\n[[service]]\nname = \"greet\"\nlisten = [\"127.0.0.1:{{port:greet}}\"]\nprogram = \"greet.sh\"\nenv = {{ GREETING = \"welcome\" }}\nstderr = \"log\"\n"
    );
    let d = Daemon::start(&conf);
    let mut s = connect(d.addr("greet"));
    let me = s.local_addr().expect("local");
    s.write_all(b"hi there\nlast").expect("write");
    s.shutdown(Shutdown::Write).expect("shutdown");
    let out = String::from_utf8(read_all(&mut s)).expect("utf8");
    assert_eq!(
        out,
        format!(
            "welcome {}:{}, this is greet\nHI THERE\nLAST\n",
            me.ip(),
            me.port()
        )
    );
    // Its stderr line is in the daemon's log, not in the reply.
    let want = "stderr service=greet conn=1 ";
    assert!(d.wait_log(want, Duration::from_secs(5)), "{}", d.log());
    assert!(d.log_lines(want)[0].contains(&format!("line=\"greet: greeted {}\"", me.ip())));
}

#[test]
fn kv_py_keeps_a_session() {
    let conf = format!(
        "{DAEMON}\n[[service]]\nname = \"kv\"\nlisten = [\"127.0.0.1:{{port:kv}}\"]\nprogram = \"kv.py\"\nstderr = \"log\"\n"
    );
    let d = Daemon::start(&conf);
    let mut s = connect(d.addr("kv"));
    // Interactive: each reply arrives before the next command is sent.
    for (q, a) in [
        ("SET a 1 2\n", "OK\n"),
        ("GET a\n", "VALUE 1 2\n"),
        ("DEL b\n", "NOTFOUND\n"),
        ("KEYS\n", "KEYS a\n"),
    ] {
        s.write_all(q.as_bytes()).expect("write");
        assert_eq!(
            String::from_utf8(read_n(&mut s, a.len())).expect("utf8"),
            a,
            "{q:?}"
        );
    }
    let me = s.local_addr().expect("local");
    s.write_all(b"QUIT\n").expect("write");
    assert_eq!(
        String::from_utf8(read_all(&mut s)).expect("utf8"),
        format!("BYE from {}:{}\n", me.ip(), me.port())
    );
    assert!(d.wait_log("exit service=kv conn=1 ", Duration::from_secs(5)));
    assert!(d.log_lines("exit service=kv conn=1 ")[0].contains("status=0"));
    let logged = d.log_lines("stderr service=kv conn=1 ");
    assert!(
        logged.iter().any(|l| l.contains(&format!(
            "line=\"kv: session from {}:{}\"",
            me.ip(),
            me.port()
        ))),
        "{logged:?}"
    );
}

/// A daemon serving one example with `stderr = "log"`; `before` runs on
/// the prepared handler directory before the daemon starts.
fn serve_example(name: &str, program: &str, before: impl FnOnce(&std::path::Path)) -> Daemon {
    let conf = format!(
        "{DAEMON}\n[[service]]\nname = \"{name}\"\nlisten = [\"127.0.0.1:{{port:{name}}}\"]\nprogram = \"{program}\"\nstderr = \"log\"\n"
    );
    let mut d = Daemon::prepare(&conf);
    before(&d.handlers);
    d.spawn(&|_| {});
    if let Err(e) = d.ready(Duration::from_secs(10)) {
        panic!("daemon did not become ready: {e}\n--- log ---\n{}", d.log());
    }
    d
}

/// Sends each question and reads its answer before the next: a reply
/// stuck in the handler's buffer would time out here.
fn interactive(s: &mut std::net::TcpStream, pairs: &[(&str, &str)]) {
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    for (q, a) in pairs {
        s.write_all(q.as_bytes()).expect("write");
        assert_eq!(
            String::from_utf8(read_n(s, a.len())).expect("utf8"),
            *a,
            "{q:?}"
        );
    }
}

#[test]
fn rot13_pl_flushes_each_reply_and_logs_to_stderr() {
    if !std::path::Path::new("/usr/bin/perl").exists() {
        eprintln!("skipped: no /usr/bin/perl on this machine");
        return;
    }
    let d = serve_example("rot13", "rot13.pl", |_| {});
    let mut s = connect(d.addr("rot13"));
    let me = s.local_addr().expect("local");
    let hello = format!("rot13 for {}: send lines, close to end\n", me.ip());
    interactive(
        &mut s,
        &[
            ("", &hello),
            ("Hello\n", "Uryyb\n"),
            ("abc XYZ\n", "nop KLM\n"),
        ],
    );
    s.shutdown(Shutdown::Write).expect("shutdown");
    assert!(read_all(&mut s).is_empty());
    let want = "stderr service=rot13 conn=1 ";
    assert!(d.wait_log(want, Duration::from_secs(5)), "{}", d.log());
    assert!(
        d.log_lines(want)[0].contains(&format!("line=\"rot13: served 2 lines to {}\"", me.ip())),
        "{}",
        d.log()
    );
}

#[test]
fn add_c_compiled_with_cc_answers_line_by_line() {
    let cc_works = std::process::Command::new("cc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !cc_works {
        eprintln!("skipped: no C compiler (cc) on this machine");
        return;
    }
    let d = serve_example("add", "add", |dir| {
        let out = std::process::Command::new("cc")
            .args(["-O2", "-Wall", "-Werror", "-o"])
            .arg(dir.join("add"))
            .arg(examples_src().join("add.c"))
            .output()
            .expect("run cc");
        assert!(
            out.status.success(),
            "cc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    let mut s = connect(d.addr("add"));
    let me = s.local_addr().expect("local");
    interactive(
        &mut s,
        &[
            ("1 2 3\n", "6\n"),
            ("-5 10\n", "5\n"),
            ("two\n", "ERROR not a number\n"),
        ],
    );
    s.shutdown(Shutdown::Write).expect("shutdown");
    assert!(read_all(&mut s).is_empty());
    let want = "stderr service=add conn=1 ";
    assert!(d.wait_log(want, Duration::from_secs(5)), "{}", d.log());
    assert!(
        d.log_lines(want)[0].contains(&format!("line=\"add: answered 3 lines for {}\"", me.ip())),
        "{}",
        d.log()
    );
}

#[test]
fn sum_client_py_talks_to_the_binary_sum_service() {
    let conf = format!(
        "{DAEMON}\n[[service]]\nname = \"bsum\"\nlisten = [\"127.0.0.1:{{port:bsum}}\"]\nprogram = \"tinyinetd-sum\"\nargs = [\"--binary\"]\n"
    );
    let d = Daemon::start(&conf);
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(examples_src().join("sum_client.py"))
        .args([
            "127.0.0.1",
            &d.port("bsum").to_string(),
            "3",
            "4",
            "9223372036854775807",
            "1",
            "-5",
            "10",
        ])
        .output()
        .expect("run sum_client.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "3 + 4 = 7\n9223372036854775807 + 1: overflow\n-5 + 10 = 5\n"
    );
}

#[test]
fn sum_client_py_says_when_the_server_speaks_text() {
    let conf = format!(
        "{DAEMON}\n[[service]]\nname = \"tsum\"\nlisten = [\"127.0.0.1:{{port:tsum}}\"]\nprogram = \"tinyinetd-sum\"\n"
    );
    let d = Daemon::start(&conf);
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(examples_src().join("sum_client.py"))
        .args(["127.0.0.1", &d.port("tsum").to_string(), "3", "4"])
        .output()
        .expect("run sum_client.py");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "sum_client.py: the server answered in text (\"input error\"): it looks like \
         tinyinetd-sum in text mode, and this client speaks the binary protocol; \
         give the service args = [\"--binary\"]\n"
    );
}
