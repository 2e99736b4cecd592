//! A closed-loop load generator: C client threads, each repeating
//! connect → send one line → read the echo → close for D seconds, after a
//! warm-up. Prints one CSV line:
//! `label,concurrency,seconds,conns,conns_per_s,p50_us,p90_us,p99_us,max_us,err_connect,err_reset,err_timeout,err_short`,
//! and with `--pid PID` one more field, `daemon_ticks`: the user + system
//! clock ticks that process was charged between the start and the end of
//! the measured window (warm-up excluded), read from `/proc/PID/stat`, so
//! that CPU and connections are counted over the same seconds.
//!
//! `--proxy-v2` starts each connection with a PROXY protocol v2 header
//! (TCP over IPv4, the client's own addresses), in the same write as the
//! line, as a load balancer in front of a `proxy_protocol` service would.
//!
//! `--selftest` drives a non-forking, in-process echo server instead (a
//! pool of threads started up front, one connection at a time each), to
//! show how far the generator itself goes on this machine.
//!
//! `--hold ADDR --hold-n N` first opens N connections to ADDR and keeps
//! them open and silent until the end (idle sessions beside the load); it
//! says on stderr how many it could open (`held=N`). With `--hold-wait
//! FILE` it then waits (at most 300 s) until FILE exists before the
//! warm-up: the caller creates it once the server runs every held
//! session's handler, so that the load does not race their starts.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const LINE: &[u8] = b"ping 0123456789\n";

struct Opts {
    addr: Option<SocketAddr>,
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
    label: String,
    selftest: bool,
    pid: Option<u32>,
    proxy_v2: bool,
    hold: Option<SocketAddr>,
    hold_n: usize,
    hold_wait: Option<std::path::PathBuf>,
}

fn usage() -> ! {
    eprintln!(
        "usage: tinyinetd-loadgen (--addr HOST:PORT | --selftest) [--concurrency C] [--duration SECS] [--warmup SECS] [--label NAME] [--pid PID] [--proxy-v2] [--hold HOST:PORT --hold-n N [--hold-wait FILE]]"
    );
    std::process::exit(2)
}

fn parse() -> Opts {
    let mut o = Opts {
        addr: None,
        concurrency: 8,
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
        label: "run".into(),
        selftest: false,
        pid: None,
        proxy_v2: false,
        hold: None,
        hold_n: 0,
        hold_wait: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--addr" => o.addr = Some(val().parse().unwrap_or_else(|_| usage())),
            "--concurrency" => o.concurrency = val().parse().unwrap_or_else(|_| usage()),
            "--duration" => {
                o.duration = Duration::from_secs_f64(val().parse().unwrap_or_else(|_| usage()))
            }
            "--warmup" => {
                o.warmup = Duration::from_secs_f64(val().parse().unwrap_or_else(|_| usage()))
            }
            "--label" => o.label = val(),
            "--selftest" => o.selftest = true,
            "--pid" => o.pid = Some(val().parse().unwrap_or_else(|_| usage())),
            "--proxy-v2" => o.proxy_v2 = true,
            "--hold" => o.hold = Some(val().parse().unwrap_or_else(|_| usage())),
            "--hold-n" => o.hold_n = val().parse().unwrap_or_else(|_| usage()),
            "--hold-wait" => o.hold_wait = Some(val().into()),
            _ => usage(),
        }
    }
    if o.addr.is_none() && !o.selftest || o.concurrency == 0 {
        usage()
    }
    o
}

#[derive(Default)]
struct Tally {
    lat_us: Vec<u32>,
    connect: u64,
    reset: u64,
    timeout: u64,
    short: u64,
}

enum Outcome {
    Ok,
    Connect,
    Reset,
    Timeout,
    Short,
}

/// A PROXY protocol v2 header for `s`: PROXY command, TCP over IPv4, the
/// connection's own source and destination (an IPv6 connection gets none:
/// the bench runs on 127.0.0.1).
fn proxy_v2_header(s: &TcpStream) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    if let (Ok(SocketAddr::V4(src)), Ok(SocketAddr::V4(dst))) = (s.local_addr(), s.peer_addr()) {
        h.extend_from_slice(&src.ip().octets());
        h.extend_from_slice(&dst.ip().octets());
        h.extend_from_slice(&src.port().to_be_bytes());
        h.extend_from_slice(&dst.port().to_be_bytes());
    }
    h
}

fn one(addr: SocketAddr, proxy_v2: bool) -> Outcome {
    let mut s = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(_) => return Outcome::Connect,
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_nodelay(true);
    let classify = |e: std::io::Error| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Outcome::Timeout,
        _ => Outcome::Reset,
    };
    let mut out = if proxy_v2 {
        proxy_v2_header(&s)
    } else {
        Vec::new()
    };
    out.extend_from_slice(LINE);
    if let Err(e) = s.write_all(&out) {
        return classify(e);
    }
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < LINE.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Outcome::Short,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return classify(e),
        }
    }
    if &buf[..got] != LINE {
        return Outcome::Short;
    }
    let _ = s.shutdown(Shutdown::Write);
    Outcome::Ok
}

/// The in-process echo server: `workers` threads started up front, each
/// accepting on the shared listener and serving one connection at a time,
/// so that a connection costs it no more than accept, read, write and
/// close (no thread, no process per connection).
fn selftest_server(workers: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind selftest server");
    let addr = l.local_addr().expect("addr");
    for _ in 0..workers {
        let l = l.try_clone().expect("clone selftest listener");
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            for mut s in l.incoming().flatten() {
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        });
    }
    addr
}

fn main() {
    let o = parse();
    let addr = if o.selftest {
        selftest_server(o.concurrency + 1)
    } else {
        o.addr.unwrap_or_else(|| usage())
    };
    let held = hold(o.hold, o.hold_n);
    if let Some(file) = &o.hold_wait {
        // The caller creates the file once the server runs a handler for
        // every held session; at most 300 s.
        let deadline = Instant::now() + Duration::from_secs(300);
        while !file.exists() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
    let start = Instant::now();
    let measure_from = start + o.warmup;
    let end = measure_from + o.duration;
    let stop = Arc::new(AtomicBool::new(false));
    let proxy_v2 = o.proxy_v2;
    let workers: Vec<_> = (0..o.concurrency)
        .map(|_| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut t = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let r = one(addr, proxy_v2);
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    if t0 < measure_from {
                        continue;
                    }
                    match r {
                        Outcome::Ok => t
                            .lat_us
                            .push((now - t0).as_micros().min(u32::MAX as u128) as u32),
                        Outcome::Connect => t.connect += 1,
                        Outcome::Reset => t.reset += 1,
                        Outcome::Timeout => t.timeout += 1,
                        Outcome::Short => t.short += 1,
                    }
                    if matches!(r, Outcome::Connect) {
                        // Do not spin on a refusing server.
                        thread::sleep(Duration::from_millis(1));
                    }
                }
                t
            })
        })
        .collect();
    let until = |t: Instant| thread::sleep(t.saturating_duration_since(Instant::now()));
    let ticks = o.pid.map(|pid| {
        until(measure_from);
        let t0 = cpu_ticks(pid);
        until(end);
        cpu_ticks(pid).saturating_sub(t0)
    });
    until(end);
    stop.store(true, Ordering::Relaxed);
    let mut all = Tally::default();
    for w in workers {
        let t = w.join().expect("worker");
        all.lat_us.extend(t.lat_us);
        all.connect += t.connect;
        all.reset += t.reset;
        all.timeout += t.timeout;
        all.short += t.short;
    }
    drop(held);
    all.lat_us.sort_unstable();
    let n = all.lat_us.len();
    let pct = |p: f64| {
        if n == 0 {
            0
        } else {
            all.lat_us[((n - 1) as f64 * p).round() as usize]
        }
    };
    let secs = o.duration.as_secs_f64();
    let ticks = ticks.map(|t| format!(",{t}")).unwrap_or_default();
    println!(
        "{},{},{:.1},{},{:.0},{},{},{},{},{},{},{},{}{}",
        o.label,
        o.concurrency,
        secs,
        n,
        n as f64 / secs,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        all.lat_us.last().copied().unwrap_or(0),
        all.connect,
        all.reset,
        all.timeout,
        all.short,
        ticks
    );
}

/// Opens `n` connections to `addr` (if given) and returns them, to be held
/// open and silent; reports on stderr how many opened.
fn hold(addr: Option<SocketAddr>, n: usize) -> Vec<TcpStream> {
    let Some(addr) = addr else {
        return Vec::new();
    };
    let mut held = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => held.push(s),
            Err(_) => failed += 1,
        }
    }
    eprintln!("held={} failed={failed}", held.len());
    held
}

/// utime + stime of `pid`, in clock ticks (fields 14 and 15 of
/// `/proc/PID/stat`, counted after the parenthesised command name, which
/// may itself hold spaces). Exits with a message if it cannot be read.
fn cpu_ticks(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        eprintln!("tinyinetd-loadgen: reading {path}: {e}");
        std::process::exit(1)
    });
    let after = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    // After ") ": state is field 3, so utime (14) and stime (15) are the
    // 12th and 13th.
    let f: Vec<&str> = after.split_whitespace().collect();
    match (
        f.get(11).and_then(|v| v.parse::<u64>().ok()),
        f.get(12).and_then(|v| v.parse::<u64>().ok()),
    ) {
        (Some(u), Some(s)) => u + s,
        _ => {
            eprintln!("tinyinetd-loadgen: {path}: unexpected format");
            std::process::exit(1)
        }
    }
}
