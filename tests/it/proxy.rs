//! The PROXY protocol (SPEC §10.6): headers written by a raw client, the
//! hostile cases (untrusted, slow, malformed, idle floods), and a real
//! HAProxy in front of two daemons (the `haproxy` module below).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// A daemon serving `proxyenv.sh` as service "p" on 127.0.0.1 with the
/// service keys `keys` (and `daemon` added to `[daemon]`). Returns it and
/// the file the handler records its starts in.
fn start(daemon: &str, keys: &str) -> (Daemon, PathBuf) {
    let conf = format!(
        "{DAEMON}{daemon}\n[[service]]\nname = \"p\"\nlisten = [\"127.0.0.1:{{port:p}}\"]\nprogram = \"proxyenv.sh\"\nenv = {{ RECORD = \"{{tmp}}/starts\" }}\n{keys}\n"
    );
    start_recording(&conf)
}

fn starts(record: &Path) -> Vec<String> {
    std::fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// A v1 line for TCP over IPv4 or IPv6.
fn v1(src: &str, dst: &str) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) = (src.parse().expect("src"), dst.parse().expect("dst"));
    let fam = if s.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {fam} {} {} {} {}\r\n",
        s.ip(),
        d.ip(),
        s.port(),
        d.port()
    )
    .into_bytes()
}

const SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 header: `ver_cmd` (0x21 PROXY, 0x20 LOCAL), `fam`, then `block`.
fn v2_raw(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
    let mut h = SIG.to_vec();
    h.extend_from_slice(&[ver_cmd, fam]);
    h.extend_from_slice(&(block.len() as u16).to_be_bytes());
    h.extend_from_slice(block);
    h
}

fn tlv(t: u8, v: &[u8]) -> Vec<u8> {
    let mut out = vec![t];
    out.extend_from_slice(&(v.len() as u16).to_be_bytes());
    out.extend_from_slice(v);
    out
}

/// A v2 PROXY header for TCP over IPv4, with `tlvs` after the addresses.
fn v2(src: &str, dst: &str, tlvs: &[u8]) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) = (src.parse().expect("src"), dst.parse().expect("dst"));
    let (IpAddr::V4(sip), IpAddr::V4(dip)) = (s.ip(), d.ip()) else {
        panic!("IPv4 only")
    };
    let mut block = Vec::new();
    block.extend_from_slice(&sip.octets());
    block.extend_from_slice(&dip.octets());
    block.extend_from_slice(&s.port().to_be_bytes());
    block.extend_from_slice(&d.port().to_be_bytes());
    block.extend_from_slice(tlvs);
    v2_raw(0x21, 0x11, &block)
}

/// Reads until EOF or a reset (a refused connection with unread bytes is
/// reset by the close).
fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("read: {e} after {} bytes", out.len()),
        }
    }
}

/// From `from`: writes `bytes` in ONE write, half-closes, reads the reply.
fn exchange(addr: SocketAddr, from: &str, bytes: &[u8]) -> (Vec<u8>, SocketAddr) {
    let mut s = connect_from(ip(from), addr).expect("connect");
    let me = s.local_addr().expect("local addr");
    assert_eq!(s.write(bytes).expect("write"), bytes.len(), "one write");
    let _ = s.shutdown(Shutdown::Write);
    (read_until_closed(&mut s), me)
}

/// The handler's first line, and the bytes it echoed after it.
fn split_reply(reply: &[u8]) -> (String, Vec<u8>) {
    let nl = reply
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or_else(|| panic!("no line in {:?}", String::from_utf8_lossy(reply)));
    (
        String::from_utf8_lossy(&reply[..nl]).into_owned(),
        reply[nl + 1..].to_vec(),
    )
}

const V1_KEYS: &str = "proxy_protocol = \"v1\"\ntrusted_proxies = [\"127.0.0.1\"]";

#[test]
fn v1_header_and_first_bytes_in_one_write_reach_the_handler_intact() {
    let (d, record) = start("", V1_KEYS);
    let mut msg = v1("192.0.2.7:51000", "198.51.100.1:443");
    let first = b"HELO client\r\nwith a second line\n";
    msg.extend_from_slice(first);
    let (reply, me) = exchange(d.addr("p"), "127.0.0.1", &msg);
    let (line, echoed) = split_reply(&reply);
    assert_eq!(
        line,
        format!("remote=192.0.2.7:51000 local=198.51.100.1:443 addr=192.0.2.7:51000 proxy=127.0.0.1:{} authority=none alpn=none unique_id=none ssl_version=none ssl_cn=none", me.port())
    );
    assert_eq!(echoed, first, "the client's first bytes, intact");
    assert_eq!(starts(&record), vec!["1 192.0.2.7".to_string()]);
    let proxy = format!("peer=192.0.2.7:51000 proxy=127.0.0.1:{}", me.port());
    assert!(
        d.wait_log("info: exit service=p conn=1 pid=", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    for event in [
        "debug: start service=p conn=1 ",
        "info: exit service=p conn=1 ",
    ] {
        let lines = d.log_lines(event);
        assert!(
            lines.len() == 1 && lines[0].contains(&proxy),
            "{event}: {lines:?}"
        );
    }
}

#[test]
fn v2_header_with_tlvs_and_binary_data_in_one_write() {
    let (d, _record) = start(
        "",
        "proxy_protocol = \"any\"\ntrusted_proxies = [\"127.0.0.0/30\"]",
    );
    let mut tlvs = tlv(0x01, b"h2");
    tlvs.extend(tlv(0x02, b"example.org"));
    tlvs.extend(tlv(0x05, b"id-1 \x07"));
    let mut ssl = vec![1, 0, 0, 0, 0];
    ssl.extend(tlv(0x21, b"TLSv1.3"));
    ssl.extend(tlv(0x22, b"client.example.org"));
    tlvs.extend(tlv(0x20, &ssl));
    let mut msg = v2("203.0.113.9:40000", "198.51.100.2:22", &tlvs);
    // Bytes that look like a header again: they are the client's.
    let data: Vec<u8> = SIG.iter().copied().chain(0..=255u8).collect();
    msg.extend_from_slice(&data);
    let (reply, me) = exchange(d.addr("p"), "127.0.0.2", &msg);
    let (line, echoed) = split_reply(&reply);
    assert_eq!(
        line,
        format!("remote=203.0.113.9:40000 local=198.51.100.2:22 addr=203.0.113.9:40000 proxy=127.0.0.2:{} authority=example.org alpn=h2 unique_id=id-1 \\x07 ssl_version=TLSv1.3 ssl_cn=client.example.org", me.port())
    );
    assert_eq!(echoed, data);
}

#[test]
fn a_v2_local_header_keeps_the_connections_own_addresses() {
    let (d, _record) = start(
        "",
        "proxy_protocol = \"v2\"\ntrusted_proxies = [\"127.0.0.1\"]",
    );
    let mut msg = v2_raw(0x20, 0x00, &[]);
    msg.extend_from_slice(b"ping\n");
    let (reply, me) = exchange(d.addr("p"), "127.0.0.1", &msg);
    let (line, echoed) = split_reply(&reply);
    let port = d.port("p");
    assert_eq!(
        line,
        format!("remote=127.0.0.1:{p} local=127.0.0.1:{port} addr=127.0.0.1:{p} proxy=127.0.0.1:{p} authority=none alpn=none unique_id=none ssl_version=none ssl_cn=none", p = me.port())
    );
    assert_eq!(echoed, b"ping\n");
    // UNKNOWN (v1) likewise.
    let (d1, _r) = start("", V1_KEYS);
    let mut msg = b"PROXY UNKNOWN\r\n".to_vec();
    msg.extend_from_slice(b"pong\n");
    let (reply, me) = exchange(d1.addr("p"), "127.0.0.1", &msg);
    let (line, echoed) = split_reply(&reply);
    assert!(
        line.starts_with(&format!("remote=127.0.0.1:{} ", me.port())),
        "{line}"
    );
    assert_eq!(echoed, b"pong\n");
}

#[test]
fn a_local_check_that_closes_starts_no_handler_a_silent_one_waits_for_the_deadline() {
    let (d, record) = start(
        "",
        "proxy_protocol = \"v2\"\ntrusted_proxies = [\"127.0.0.1\"]",
    );
    for _ in 0..3 {
        let mut s = connect(d.addr("p"));
        s.write_all(&v2_raw(0x20, 0x00, &[])).expect("write");
        let _ = s.shutdown(Shutdown::Write);
        assert_eq!(read_until_closed(&mut s), b"");
    }
    assert!(
        wait_until(Duration::from_secs(5), || d
            .log_lines("debug: proxy-check ")
            .len()
            == 3),
        "{}",
        d.log()
    );
    assert_eq!(starts(&record), Vec::<String>::new());
    assert!(d.log_lines("refused").is_empty(), "{}", d.log());

    // One that stays open and silent (a check waiting for the server to
    // speak first) is served at proxy_timeout, as itself.
    let (d, _record) = start(
        "",
        "proxy_protocol = \"v2\"\ntrusted_proxies = [\"127.0.0.1\"]\nproxy_timeout = \"300ms\"",
    );
    let t0 = Instant::now();
    let mut s = connect(d.addr("p"));
    let me = s.local_addr().expect("addr");
    s.write_all(&v2_raw(0x20, 0x00, &[])).expect("write");
    let mut line = [0u8; 7];
    s.read_exact(&mut line).expect("served");
    assert_eq!(&line, b"remote=");
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    assert!(d.wait_log("start service=p conn=1 pid=", Duration::from_secs(5)));
    assert!(d.log_lines("start service=p conn=1 ")[0].contains(&format!("peer={me} proxy={me}")));
}

#[test]
fn an_untrusted_source_is_refused_before_any_read() {
    let (d, record) = start(
        "",
        "proxy_protocol = \"v1\"\ntrusted_proxies = [\"127.0.0.9\"]",
    );
    let mut msg = v1("192.0.2.7:51000", "198.51.100.1:443");
    msg.extend_from_slice(b"data\n");
    let (reply, me) = exchange(d.addr("p"), "127.0.0.1", &msg);
    assert_eq!(reply, b"");
    assert!(
        d.wait_log(
            &format!(
                "info: refused service=p conn=1 peer=127.0.0.1:{} reason=untrusted_proxy",
                me.port()
            ),
            Duration::from_secs(5)
        ),
        "{}",
        d.log()
    );
    assert_eq!(starts(&record), Vec::<String>::new());
}

/// Sends `bytes` and says how long the daemon took to close the
/// connection, and whether the handler ever answered.
fn refused_within(d: &Daemon, bytes: &[u8]) -> Duration {
    let t0 = Instant::now();
    let (reply, _) = exchange(d.addr("p"), "127.0.0.1", bytes);
    assert_eq!(
        reply,
        b"",
        "{:?} was served",
        String::from_utf8_lossy(bytes)
    );
    t0.elapsed()
}

#[test]
fn malformed_headers_are_refused_at_once() {
    let (d, record) = start(
        "",
        "proxy_protocol = \"any\"\ntrusted_proxies = [\"127.0.0.1\"]\nproxy_timeout = \"20s\"",
    );
    let mut bad_len = v2_raw(0x21, 0x11, &[0; 8]); // 8 < 12 address bytes
    bad_len.extend_from_slice(b"data");
    let mut long = b"PROXY UNKNOWN ".to_vec();
    long.resize(120, b'x');
    let cases: Vec<Vec<u8>> = vec![
        bad_len,
        long,
        pseudo_random(4096, 18),
        b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        b"PROXY TCP4 192.0.2.7 198.51.100.1 51000 443\n".to_vec(),
    ];
    for (n, case) in cases.iter().enumerate() {
        let took = refused_within(&d, case);
        assert!(took < Duration::from_secs(5), "case {n} took {took:?}");
    }
    assert!(
        wait_until(Duration::from_secs(5), || d
            .log_lines("reason=proxy_header")
            .len()
            == cases.len()),
        "{}",
        d.log()
    );
    assert_eq!(starts(&record), Vec::<String>::new());
    // EOF before a whole header is refused too.
    assert!(refused_within(&d, b"PROXY TCP4 1.2") < Duration::from_secs(5));
}

#[test]
fn a_header_one_byte_per_100ms_is_refused_at_proxy_timeout_while_others_are_served() {
    let (d, _record) = start(
        "",
        "proxy_protocol = \"v1\"\ntrusted_proxies = [\"127.0.0.1\"]\nproxy_timeout = \"300ms\"",
    );
    let header = v1("192.0.2.7:51000", "198.51.100.1:443");
    let addr = d.addr("p");
    let slow = std::thread::spawn(move || {
        let mut s = connect(addr);
        let t0 = Instant::now();
        for b in &header {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            let mut probe = [0u8; 1];
            s.set_nonblocking(true).expect("nonblocking");
            let closed = matches!(s.read(&mut probe), Ok(0))
                || matches!(s.read(&mut probe), Err(e) if e.kind() == io::ErrorKind::ConnectionReset);
            s.set_nonblocking(false).expect("blocking");
            if closed {
                return t0.elapsed();
            }
        }
        t0.elapsed()
    });
    // Served meanwhile.
    let mut msg = v1("192.0.2.8:1", "198.51.100.1:443");
    msg.extend_from_slice(b"x\n");
    let (reply, _) = exchange(addr, "127.0.0.1", &msg);
    assert!(reply.starts_with(b"remote=192.0.2.8:1 "), "{reply:?}");
    let took = slow.join().expect("slow client");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    assert!(
        d.wait_log("reason=proxy_header", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    let line = &d.log_lines("reason=proxy_header")[0];
    assert!(
        line.contains("error=\"no complete header within 300ms\""),
        "{line}"
    );
}

#[test]
fn admission_judges_the_original_client() {
    let (d, record) = start(
        "",
        "proxy_protocol = \"v1\"\ntrusted_proxies = [\"127.0.0.1\"]\ndeny = [\"192.0.2.66\"]\nmax_per_source = 1",
    );
    let addr = d.addr("p");
    // Denied by its original address, though the proxy is 127.0.0.1.
    let (reply, me) = exchange(
        addr,
        "127.0.0.1",
        &v1("192.0.2.66:5000", "198.51.100.1:443"),
    );
    assert_eq!(reply, b"");
    assert!(
        d.wait_log(
            &format!(
                "refused service=p conn=1 peer=192.0.2.66:5000 proxy=127.0.0.1:{} reason=deny",
                me.port()
            ),
            Duration::from_secs(5)
        ),
        "{}",
        d.log()
    );
    // max_per_source by the original client: a second from 192.0.2.7
    // is refused while its first runs, one from 192.0.2.8 is not.
    let mut first = connect(addr);
    first
        .write_all(&v1("192.0.2.7:5001", "198.51.100.1:443"))
        .expect("write");
    let mut line = [0u8; 8];
    first.read_exact(&mut line).expect("first is served");
    let (second, _) = exchange(addr, "127.0.0.1", &v1("192.0.2.7:5002", "198.51.100.1:443"));
    assert_eq!(second, b"");
    assert!(
        d.wait_log(
            "peer=192.0.2.7:5002 proxy=127.0.0.1:",
            Duration::from_secs(5)
        ),
        "{}",
        d.log()
    );
    assert!(d.log_lines("peer=192.0.2.7:5002 ")[0].contains("reason=max_per_source"));
    let (other, _) = exchange(addr, "127.0.0.1", &v1("192.0.2.8:5003", "198.51.100.1:443"));
    assert!(other.starts_with(b"remote=192.0.2.8:5003 "), "{other:?}");
    drop(first);
    assert!(wait_until(Duration::from_secs(5), || starts(&record).len() == 2));
}

#[test]
fn idle_pending_headers_count_toward_max_connections() {
    let (d, _record) = start(
        "max_connections = 2\n",
        "proxy_protocol = \"v1\"\ntrusted_proxies = [\"127.0.0.1\"]\nproxy_timeout = \"1s\"",
    );
    let addr = d.addr("p");
    let idle: Vec<TcpStream> = (0..2).map(|_| connect(addr)).collect();
    assert!(
        d.wait_log(
            "paused service=p reason=max_connections",
            Duration::from_secs(5)
        ),
        "{}",
        d.log()
    );
    // A complete header waits in the backlog until an idle one is refused.
    let t0 = Instant::now();
    let mut msg = v1("192.0.2.7:51000", "198.51.100.1:443");
    msg.extend_from_slice(b"late\n");
    let (reply, _) = exchange(addr, "127.0.0.1", &msg);
    let waited = t0.elapsed();
    assert!(reply.ends_with(b"\nlate\n"), "{reply:?}");
    assert!(
        waited >= Duration::from_millis(500),
        "served after {waited:?}, before an idle header was refused"
    );
    assert_eq!(d.log_lines("reason=proxy_header").len(), 2, "{}", d.log());
    drop(idle);
}

#[test]
fn a_flood_of_idle_connections_is_bounded_and_cleaned_up() {
    let (mut d, _record) = start(
        "max_connections = 50\n",
        "proxy_protocol = \"v2\"\ntrusted_proxies = [\"127.0.0.1\"]\nproxy_timeout = \"200ms\"",
    );
    let addr = d.addr("p");
    let pid = d.pid().as_raw();
    let fds = move || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |r| r.count());
    let idle_fds = fds();
    let n = 600;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let most = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut most = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(fds());
                std::thread::sleep(Duration::from_millis(2));
            }
            most
        });
        let mut clients: Vec<TcpStream> = (0..n).map(|_| connect(addr)).collect();
        // Every one is closed by the daemon, none is served.
        for c in &mut clients {
            assert_eq!(read_until_closed(c), b"");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sampler.join().expect("sampler")
    });
    assert!(
        most <= idle_fds + 50 + 2,
        "held {most} descriptors, idle {idle_fds}, max_connections 50"
    );
    assert!(
        // At most: the count just after the start may hold one descriptor
        // the daemon closes later, whatever the proxy does.
        wait_until(Duration::from_secs(5), || fds() <= idle_fds),
        "{} descriptors, {idle_fds} when idle",
        fds()
    );
    d.signal(nix::sys::signal::Signal::SIGUSR1);
    assert!(
        d.wait_log(&format!("refused={n} "), Duration::from_secs(5)),
        "{}",
        d.log()
    );
    let status = &d.log_lines("info: status service=p ")[0];
    assert!(
        status.contains(&format!("refused_proxy_header={n}")),
        "{status}"
    );
    assert!(d.log_lines("start service=p").is_empty());
    assert!(d.try_exit().is_none());
}

#[test]
fn a_reload_applies_the_keys_to_new_connections_and_keeps_counting_pending_headers() {
    let (mut d, _record) = start("", "max_instances = 1");
    let addr = d.addr("p");
    // Without proxy_protocol a header is just the client's data.
    let (reply, _) = exchange(addr, "127.0.0.1", b"PROXY UNKNOWN\r\n");
    assert!(reply.ends_with(b"\nPROXY UNKNOWN\r\n"), "{reply:?}");
    let keys = "max_instances = 1\nproxy_protocol = \"v1\"\ntrusted_proxies = [\"127.0.0.1\"]\nproxy_timeout = \"1500ms\"";
    d.rewrite(&format!(
        "{DAEMON}\n[[service]]\nname = \"p\"\nlisten = [\"127.0.0.1:{{port:p}}\"]\nprogram = \"proxyenv.sh\"\n{keys}\n"
    ));
    reload(&mut d);
    // An idle connection holds the one instance, across another reload.
    let idle = connect(addr);
    assert!(
        d.wait_log(
            "paused service=p reason=max_instances",
            Duration::from_secs(5)
        ),
        "{}",
        d.log()
    );
    let t0 = Instant::now();
    reload(&mut d);
    let mut msg = v1("192.0.2.7:51000", "198.51.100.1:443");
    msg.extend_from_slice(b"after\n");
    let (reply, _) = exchange(addr, "127.0.0.1", &msg);
    assert!(reply.starts_with(b"remote=192.0.2.7:51000 "), "{reply:?}");
    assert!(
        t0.elapsed() >= Duration::from_millis(800),
        "served after {:?}, while the idle header still held the instance",
        t0.elapsed()
    );
    assert_eq!(d.log_lines("reason=proxy_header").len(), 1, "{}", d.log());
    drop(idle);
}

#[test]
fn sigterm_still_serves_a_header_being_read_and_a_second_one_drops_it() {
    let (mut d, _record) = start("", V1_KEYS);
    let addr = d.addr("p");
    let header = v1("192.0.2.7:51000", "198.51.100.1:443");
    let mut s = connect(addr);
    s.write_all(&header[..10]).expect("write");
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        d.wait_log("info: stopping ", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    // The listener is closed; the header in progress is finished and served.
    assert!(TcpStream::connect(addr).is_err(), "still listening");
    s.write_all(&header[10..]).expect("write");
    s.write_all(b"bye\n").expect("write");
    s.shutdown(Shutdown::Write).expect("shutdown");
    let reply = read_until_closed(&mut s);
    assert!(reply.starts_with(b"remote=192.0.2.7:51000 "), "{reply:?}");
    assert!(reply.ends_with(b"\nbye\n"), "{reply:?}");
    assert!(d
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|st| st.success()));

    // A second SIGTERM stops waiting for headers.
    let (mut d, _record) = start("", &format!("{V1_KEYS}\nproxy_timeout = \"60s\""));
    let mut s = connect(d.addr("p"));
    s.write_all(&header[..10]).expect("write");
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(d.wait_log("info: stopping ", Duration::from_secs(5)));
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        d.wait_exit(Duration::from_secs(5))
            .is_some_and(|st| st.success()),
        "{}",
        d.log()
    );
    assert_eq!(read_until_closed(&mut s), b"");
    assert_eq!(
        d.log_lines("proxy-dropped service=p conn=1 ").len(),
        1,
        "{}",
        d.log()
    );
}

/// A real HAProxy (`/usr/sbin/haproxy`, Debian package `haproxy`) in
/// front of two daemons on 127.0.0.2 and 127.0.0.3: one frontend with a
/// `send-proxy` (v1) backend, one with a `send-proxy-v2` backend whose
/// servers are health-checked. HAProxy connects from 127.0.0.9, the one
/// trusted proxy; clients connect from their own 127.0.0.x.
mod haproxy {
    use super::*;
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::process::{Child, Command, Stdio};

    const HAPROXY: &str = "/usr/sbin/haproxy";

    /// The binary, or `None` (with the reason printed) when this machine
    /// cannot run these tests.
    fn binary() -> Option<&'static str> {
        if Path::new(HAPROXY).exists() {
            return Some(HAPROXY);
        }
        assert!(
            !is_root(),
            "{HAPROXY} is missing: tests/run installs it as root (apt-get install haproxy)"
        );
        eprintln!("skipped: {HAPROXY} is not installed (Debian package haproxy; tests/run installs it when run as root)");
        None
    }

    /// One HAProxy in the foreground (`-db`: one process, no daemon),
    /// stopped by its pid when dropped.
    struct Haproxy {
        child: Child,
        _dir: tempfile::TempDir,
        log: PathBuf,
    }

    impl Drop for Haproxy {
        fn drop(&mut self) {
            let pid = Pid::from_raw(self.child.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            if !wait_until(Duration::from_secs(5), || {
                matches!(self.child.try_wait(), Ok(Some(_)))
            }) {
                let _ = kill(pid, Signal::SIGKILL);
            }
            let _ = self.child.wait();
            if std::thread::panicking() {
                eprintln!(
                    "--- haproxy log ---\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
        }
    }

    /// The daemon of one host of the fleet, on `host` (127.0.0.2 or .3):
    /// service "v1" (`proxy_protocol = "v1"`, `deny` and `max_per_source`
    /// by client) and service "v2".
    fn host(host: &str) -> Daemon {
        let conf = format!(
            "{DAEMON}
[[service]]
name = \"v1\"
listen = [\"{host}:{{port:v1}}\"]
program = \"proxyenv.sh\"
env = {{ RECORD = \"{{tmp}}/starts-v1\" }}
proxy_protocol = \"v1\"
trusted_proxies = [\"127.0.0.9\"]
deny = [\"127.0.0.66\"]
max_per_source = 1

[[service]]
name = \"v2\"
listen = [\"{host}:{{port:v2}}\"]
program = \"proxyenv.sh\"
env = {{ RECORD = \"{{tmp}}/starts-v2\" }}
proxy_protocol = \"v2\"
trusted_proxies = [\"127.0.0.9\"]
"
        );
        let mut d = Daemon::prepare(&conf);
        for f in ["starts-v1", "starts-v2"] {
            let p = d.dir.path().join(f);
            std::fs::write(&p, "").expect("create record");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        }
        d.spawn(&|_| {});
        d.ready(Duration::from_secs(10)).expect("ready");
        d
    }

    /// The haproxy.cfg of README's "Running a fleet behind a load
    /// balancer", with this test's ports (and a health-check interval of
    /// 200 ms so that a few checks happen while it runs).
    fn config(fe_v1: u16, fe_v2: u16, ready: u16, hosts: &[(&str, &Daemon)]) -> String {
        let mut c = format!(
            "global
    maxconn 1000

defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 2
    option redispatch

frontend ready
    bind 127.0.0.1:{ready}
    tcp-request connection reject

frontend fe_v1
    bind 127.0.0.1:{fe_v1}
    default_backend be_v1

frontend fe_v2
    bind 127.0.0.1:{fe_v2}
    default_backend be_v2

backend be_v1
    balance roundrobin
"
        );
        for (i, (ip, d)) in hosts.iter().enumerate() {
            c.push_str(&format!(
                "    server host{i} {ip}:{} send-proxy source 127.0.0.9\n",
                d.port("v1")
            ));
        }
        c.push_str("\nbackend be_v2\n    balance roundrobin\n");
        for (i, (ip, d)) in hosts.iter().enumerate() {
            c.push_str(&format!(
                "    server host{i} {ip}:{} send-proxy-v2 check check-send-proxy inter 200ms fall 2 rise 1 source 127.0.0.9\n",
                d.port("v2")
            ));
        }
        c
    }

    struct Fleet {
        hosts: [Daemon; 2],
        fe_v1: SocketAddr,
        fe_v2: SocketAddr,
        proxy: Haproxy,
    }

    fn fleet() -> Option<Fleet> {
        let bin = binary()?;
        let hosts = [host("127.0.0.2"), host("127.0.0.3")];
        let (fe_v1, fe_v2, ready) = (free_port(), free_port(), free_port());
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("haproxy.cfg");
        let text = config(
            fe_v1,
            fe_v2,
            ready,
            &[("127.0.0.2", &hosts[0]), ("127.0.0.3", &hosts[1])],
        );
        std::fs::write(&cfg, text).expect("write haproxy.cfg");
        let log = dir.path().join("haproxy.log");
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(std::fs::File::create(dir.path().join("haproxy.err")).expect("log"))
            .spawn()
            .expect("spawn haproxy");
        let proxy = Haproxy {
            child,
            _dir: dir,
            log,
        };
        let up = wait_until(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", ready)).is_ok()
        });
        assert!(up, "haproxy did not start listening");
        Some(Fleet {
            hosts,
            fe_v1: SocketAddr::from(([127, 0, 0, 1], fe_v1)),
            fe_v2: SocketAddr::from(([127, 0, 0, 1], fe_v2)),
            proxy,
        })
    }

    fn record(d: &Daemon, service: &str) -> Vec<String> {
        starts(&d.dir.path().join(format!("starts-{service}")))
    }

    /// One session through HAProxy from `from`: the handler's line (after
    /// checking it names this client and the proxy) and the echo.
    fn session(fe: SocketAddr, from: &str, data: &[u8]) -> (String, Vec<u8>) {
        let (reply, me) = exchange(fe, from, data);
        let (line, echoed) = split_reply(&reply);
        let want = format!(
            "remote={from}:{} local=127.0.0.1:{} addr={from}:{} proxy=127.0.0.9:",
            me.port(),
            fe.port(),
            me.port()
        );
        assert!(line.starts_with(&want), "{line}\nwanted {want}...");
        (line, echoed)
    }

    #[test]
    fn v1_round_robin_serves_each_client_as_itself_with_admission_by_client() {
        let Some(f) = fleet() else { return };
        let clients = ["127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.13"];
        for c in clients {
            let (_, echoed) = session(f.fe_v1, c, b"hello\n");
            assert_eq!(echoed, b"hello\n");
        }
        // Round robin: two sessions on each host, each handler saw its
        // client's own address.
        assert!(wait_until(Duration::from_secs(5), || record(
            &f.hosts[0],
            "v1"
        )
        .len()
            + record(&f.hosts[1], "v1").len()
            == 4));
        let (a, b) = (record(&f.hosts[0], "v1"), record(&f.hosts[1], "v1"));
        assert_eq!((a.len(), b.len()), (2, 2), "{a:?} {b:?}");
        let mut seen: Vec<&str> = a
            .iter()
            .chain(&b)
            .map(|l| l.split(' ').nth(1).unwrap_or(""))
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, clients);
        // deny by the client's own address, through the proxy.
        let (reply, _) = exchange(f.fe_v1, "127.0.0.66", b"x\n");
        assert_eq!(reply, b"");
        let denied = |d: &Daemon| d.log_lines("reason=deny");
        assert!(
            wait_until(Duration::from_secs(5), || denied(&f.hosts[0]).len()
                + denied(&f.hosts[1]).len()
                == 1),
            "no deny logged"
        );
        let line = [denied(&f.hosts[0]), denied(&f.hosts[1])]
            .concat()
            .remove(0);
        assert!(
            line.contains(" peer=127.0.0.66:") && line.contains(" proxy=127.0.0.9:"),
            "{line}"
        );
        // max_per_source = 1 is per host: of three concurrent sessions of
        // one client, one per host is served and the third refused; a
        // different client is served meanwhile.
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..3 {
            let mut s = connect_from(ip("127.0.0.20"), f.fe_v1).expect("connect");
            let mut line = [0u8; 7];
            match s.read_exact(&mut line) {
                Ok(()) => {
                    assert_eq!(&line, b"remote=");
                    held.push(s);
                }
                Err(_) => refused += 1,
            }
        }
        assert_eq!((held.len(), refused), (2, 1));
        let (_, echoed) = session(f.fe_v1, "127.0.0.21", b"other\n");
        assert_eq!(echoed, b"other\n");
        let limited = |d: &Daemon| d.log_lines("reason=max_per_source");
        let lines = [limited(&f.hosts[0]), limited(&f.hosts[1])].concat();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains(" peer=127.0.0.20:"), "{}", lines[0]);
        drop(held);
        drop(f.proxy);
    }

    #[test]
    fn v2_health_checks_start_no_handler_and_8_mib_arrive_intact() {
        let Some(f) = fleet() else { return };
        let clients = ["127.0.0.30", "127.0.0.31"];
        for c in clients {
            session(f.fe_v2, c, b"ping\n");
        }
        assert!(wait_until(Duration::from_secs(5), || record(
            &f.hosts[0],
            "v2"
        )
        .len()
            + record(&f.hosts[1], "v2").len()
            == 2));
        let (a, b) = (record(&f.hosts[0], "v2"), record(&f.hosts[1], "v2"));
        assert_eq!((a.len(), b.len()), (1, 1), "{a:?} {b:?}");
        // 8 MiB written as soon as the connection is up, through HAProxy
        // and the header, echoed byte for byte.
        let data = pseudo_random(8 << 20, 8);
        let mut s = connect_from(ip("127.0.0.32"), f.fe_v2).expect("connect");
        let mut w = s.try_clone().expect("clone");
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            w.write_all(&sent).expect("write");
            w.shutdown(Shutdown::Write).expect("shutdown");
        });
        let reply = read_until_closed(&mut s);
        writer.join().expect("writer");
        let (line, echoed) = split_reply(&reply);
        assert!(line.starts_with("remote=127.0.0.32:"), "{line}");
        assert!(
            echoed == data,
            "{} bytes echoed of {}",
            echoed.len(),
            data.len()
        );
        // Health checks (every 200 ms, a LOCAL header then a reset, as
        // HAProxy 2.6 sends them) reached both hosts and started no
        // handler: only the three sessions did.
        let checks = |d: &Daemon| d.log_lines("debug: proxy-check service=v2 ").len();
        assert!(
            wait_until(Duration::from_secs(5), || checks(&f.hosts[0]) >= 3
                && checks(&f.hosts[1]) >= 3),
            "checks seen: {} and {}",
            checks(&f.hosts[0]),
            checks(&f.hosts[1])
        );
        let started: usize = f
            .hosts
            .iter()
            .map(|d| d.log_lines("debug: start service=v2 ").len())
            .sum();
        assert_eq!(started, 3);
        for d in &f.hosts {
            assert!(d.log_lines("refused").is_empty(), "{}", d.log());
            assert!(
                d.log_lines("peer=127.0.0.9:")
                    .iter()
                    .all(|l| l.contains("proxy-check")),
                "only checks come from the proxy's own address"
            );
        }
        drop(f.proxy);
    }

    /// Draining one host (SIGTERM): its listeners close, HAProxy moves new
    /// sessions to the other host, and a session already running on it
    /// finishes.
    #[test]
    fn a_draining_host_finishes_its_sessions_while_the_other_serves() {
        let Some(mut f) = fleet() else { return };
        // A session held open; roundrobin puts the next one on the other
        // host.
        let mut running = connect_from(ip("127.0.0.40"), f.fe_v2).expect("connect");
        let mut line = [0u8; 7];
        running.read_exact(&mut line).expect("served");
        // The handler writes its record after its first line.
        assert!(wait_until(Duration::from_secs(5), || record(
            &f.hosts[0],
            "v2"
        )
        .len()
            + record(&f.hosts[1], "v2").len()
            == 1));
        let on = if record(&f.hosts[0], "v2").is_empty() {
            1
        } else {
            0
        };
        f.hosts[on].signal(nix::sys::signal::Signal::SIGTERM);
        assert!(
            f.hosts[on].wait_log("info: stopping ", Duration::from_secs(5)),
            "{}",
            f.hosts[on].log()
        );
        for i in 0..4 {
            let from = format!("127.0.0.{}", 41 + i);
            session(f.fe_v2, &from, b"x\n");
        }
        assert!(
            wait_until(Duration::from_secs(5), || record(&f.hosts[1 - on], "v2")
                .len()
                == 4),
            "{:?}",
            record(&f.hosts[1 - on], "v2")
        );
        assert_eq!(record(&f.hosts[on], "v2").len(), 1);
        running.write_all(b"last words\n").expect("write");
        running.shutdown(Shutdown::Write).expect("shutdown");
        let rest = read_until_closed(&mut running);
        assert!(rest.ends_with(b"\nlast words\n"), "{rest:?}");
        assert!(f.hosts[on]
            .wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success()));
        drop(f.proxy);
    }
}
