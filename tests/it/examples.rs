//! The example handlers under examples/, served by the real daemon.

use std::io::Write;
use std::net::Shutdown;
use std::time::Duration;

use crate::harness::*;

#[test]
fn greet_sh_uses_the_peer_address_and_env() {
    let conf = format!(
        "{DAEMON}\n[[service]]\nname = \"greet\"\nlisten = [\"127.0.0.1:{{port:greet}}\"]\nprogram = \"greet.sh\"\nenv = {{ GREETING = \"welcome\" }}\n"
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
}

#[test]
fn kv_py_keeps_a_session() {
    let conf = format!(
        "{DAEMON}\n[[service]]\nname = \"kv\"\nlisten = [\"127.0.0.1:{{port:kv}}\"]\nprogram = \"kv.py\"\n"
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
