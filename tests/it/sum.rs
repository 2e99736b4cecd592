//! tinyinetd-sum through the real daemon, both protocols.

use std::io::Write;
use std::net::Shutdown;
use std::thread;
use std::time::Duration;

use crate::harness::*;

fn sum_conf() -> String {
    format!(
        "{DAEMON}
[[service]]
name = \"sum\"
listen = [\"127.0.0.1:{{port:sum}}\"]
program = \"tinyinetd-sum\"

[[service]]
name = \"bsum\"
listen = [\"127.0.0.1:{{port:bsum}}\"]
program = \"tinyinetd-sum\"
args = [\"--binary\"]
"
    )
}

fn text(d: &Daemon, input: &[u8]) -> String {
    String::from_utf8(roundtrip(d.addr("sum"), input)).expect("ASCII replies")
}

#[test]
fn text_requests() {
    let d = Daemon::start(&sum_conf());
    assert_eq!(text(&d, b"3 4\n"), "7\n");
    assert_eq!(text(&d, b"  -5\t10  \r\n"), "5\n");
    for bad in ["a b\n", "1\n", "1 2 3\n"] {
        assert_eq!(text(&d, bad.as_bytes()), "input error\n", "{bad:?}");
    }
    assert_eq!(text(&d, b"9223372036854775807 1\n"), "overflow\n");
    assert_eq!(text(&d, b"-9223372036854775808 -1\n"), "overflow\n");
    // Pipelined, answered in order; a last line without \n answered at EOF.
    assert_eq!(text(&d, b"1 1\nx\n2 2\n3 3"), "2\ninput error\n4\n6\n");
}

#[test]
fn a_100_kb_line_is_one_error_then_the_next_line_is_answered() {
    let d = Daemon::start(&sum_conf());
    let mut input = vec![b'1'; 100_000];
    input.extend_from_slice(b"\n20 22\n");
    assert_eq!(text(&d, &input), "input error\n42\n");
}

#[test]
fn interactive_replies_come_line_by_line() {
    let d = Daemon::start(&sum_conf());
    let mut s = connect(d.addr("sum"));
    for (q, a) in [(&b"1 2\n"[..], &b"3\n"[..]), (b"10 -20\n", b"-10\n")] {
        s.write_all(q).expect("write");
        assert_eq!(read_n(&mut s, a.len()), a);
    }
}

fn req(a: i64, b: i64) -> Vec<u8> {
    [a.to_be_bytes(), b.to_be_bytes()].concat()
}

fn rep(status: u8, sum: i64) -> Vec<u8> {
    let mut v = vec![status];
    v.extend_from_slice(&sum.to_be_bytes());
    v
}

#[test]
fn binary_requests_split_with_a_pause_and_two_in_one_write() {
    let d = Daemon::start(&sum_conf());
    let mut s = connect(d.addr("bsum"));
    let one = req(3, 4);
    s.write_all(&one[..5]).expect("write");
    thread::sleep(Duration::from_millis(200));
    s.write_all(&one[5..]).expect("write");
    assert_eq!(read_n(&mut s, 9), rep(0, 7));
    let two = [req(-5, 10), req(i64::MAX, 1)].concat();
    s.write_all(&two).expect("write");
    assert_eq!(read_n(&mut s, 18), [rep(0, 5), rep(1, 0)].concat());
    // A trailing partial request is ignored.
    s.write_all(&[1, 2, 3]).expect("write");
    s.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(read_all(&mut s), b"");
    assert!(d.wait_log("exit service=bsum conn=1 ", Duration::from_secs(5)));
    assert!(d.log_lines("exit service=bsum conn=1 ")[0].contains("status=0"));
}

/// The book's binary client (Fig. 5.19's shape: a struct of two longs out,
/// a struct of one long back, in this machine's byte order), compiled here
/// with `cc`, against `tinyinetd-sum --host-order`.
#[test]
fn the_books_host_order_client_gets_correct_sums() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = crate::daytime::compile_client("sum_host_order", dir.path());
    let conf = format!(
        "{DAEMON}\n[[service]]\nname = \"hsum\"\nlisten = [\"127.0.0.1:{{port:hsum}}\"]\nprogram = \"tinyinetd-sum\"\nargs = [\"--host-order\"]\n"
    );
    let d = Daemon::start(&conf);
    let mut run = std::process::Command::new(&client)
        .args(["127.0.0.1", &d.port("hsum").to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the client");
    run.stdin
        .take()
        .expect("stdin")
        .write_all(b"3 4\n-5 10\nnot numbers\n9223372036854775807 1\n-9223372036854775808 -9223372036854775808\n")
        .expect("write");
    let out = run.wait_with_output().expect("client output");
    assert!(
        out.status.success(),
        "client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The sum wraps as two's complement, as the book's server's does.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "7\n5\ninvalid input\n-9223372036854775808\n0\n"
    );
    assert!(d.wait_log("exit service=hsum", Duration::from_secs(5)));
    assert!(
        d.log_lines("exit service=hsum")[0].contains("status=0"),
        "{}",
        d.log()
    );
}
