//! Stress: N connections at concurrency C through echo, every byte checked.
//! CI runs the default size; a longer local run:
//!
//! ```sh
//! TINYINETD_STRESS_N=100000 TINYINETD_STRESS_C=256 \
//!     cargo test --release --test it stress -- --nocapture
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default)]
struct Tally {
    ok: usize,
    /// Connection refused or reset before any byte came back: a clean refusal.
    refused: usize,
    /// Bytes came back wrong or short: lost data. Must stay 0.
    corrupt: Vec<String>,
    latencies_us: Vec<u64>,
}

fn one(addr: std::net::SocketAddr, payload: &[u8], t: &mut Tally) {
    let t0 = Instant::now();
    let r = (|| -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.write_all(payload)?;
        s.shutdown(Shutdown::Write)?;
        let mut out = Vec::with_capacity(payload.len());
        s.read_to_end(&mut out)?;
        Ok(out)
    })();
    match r {
        Ok(out) if out == payload => {
            t.ok += 1;
            t.latencies_us.push(t0.elapsed().as_micros() as u64);
        }
        Ok(out) => t
            .corrupt
            .push(format!("{} bytes back for {}", out.len(), payload.len())),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            t.refused += 1
        }
        Err(e) => t.corrupt.push(e.to_string()),
    }
}

#[test]
fn stress_echo_n_connections_at_concurrency_c() {
    let n = env_usize("TINYINETD_STRESS_N", 20_000);
    let c = env_usize("TINYINETD_STRESS_C", 128);
    let conf = format!(
        "[daemon]\nlog = \"stderr\"\nlog_level = \"warn\"\nhandler_dir = \"{{dir}}\"\nmax_connections = 4096\n\n[[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:{{port:echo}}\"]\nprogram = \"tinyinetd-echo\"\nmax_instances = {}\n",
        c.max(64) * 2
    );
    let d = Daemon::start(&conf);
    let addr = d.addr("echo");
    // Warm up, then take the idle baseline.
    for i in 0..50 {
        let msg = format!("warm {i}\n");
        assert_eq!(roundtrip(addr, msg.as_bytes()), msg.as_bytes());
    }
    assert!(wait_until(Duration::from_secs(10), || d
        .children()
        .is_empty()));
    let fds_idle = d.fd_count();
    let rss_before = d.rss_kib();
    let cpu0 = d.cpu_time();

    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let workers: Vec<_> = (0..c)
        .map(|w| {
            let next = Arc::clone(&next);
            thread::spawn(move || {
                let mut t = Tally::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let payload = format!("conn {i} worker {w} {}\n", "x".repeat(i % 200));
                    one(addr, payload.as_bytes(), &mut t);
                }
                t
            })
        })
        .collect();
    let mut all = Tally::default();
    for w in workers {
        let t = w.join().expect("worker");
        all.ok += t.ok;
        all.refused += t.refused;
        all.corrupt.extend(t.corrupt);
        all.latencies_us.extend(t.latencies_us);
    }
    let wall = t0.elapsed();
    let cpu = d.cpu_time() - cpu0;
    assert!(
        wait_until(Duration::from_secs(30), || d.children().is_empty()),
        "handlers still running: {:?}",
        d.children()
    );
    all.latencies_us.sort_unstable();
    let pct = |p: f64| {
        all.latencies_us
            .get(((all.latencies_us.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    let fds_after = d.fd_count();
    let rss_after = d.rss_kib();
    let zombies = d.zombies();
    eprintln!(
        "stress: n={n} c={c} ok={} refused={} lost={} in {:.1}s = {:.0} conns/s; latency p50={}us p99={}us max={}us; \
         daemon cpu {:.1} ms/1000 conns; zombies={zombies}; fds idle={fds_idle} after={fds_after}; rss before={rss_before}KiB after={rss_after}KiB",
        all.ok,
        all.refused,
        all.corrupt.len(),
        wall.as_secs_f64(),
        all.ok as f64 / wall.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        all.latencies_us.last().copied().unwrap_or(0),
        cpu.as_secs_f64() * 1e6 / n as f64,
    );
    assert!(
        all.corrupt.is_empty(),
        "{} connections lost data, e.g. {:?}",
        all.corrupt.len(),
        &all.corrupt[..all.corrupt.len().min(5)]
    );
    assert_eq!(all.ok + all.refused, n);
    assert_eq!(
        all.refused, 0,
        "no limit was in reach: nothing should be refused"
    );
    assert_eq!(zombies, 0);
    assert_eq!(fds_after, fds_idle, "daemon fd count not back to idle");
    assert!(
        rss_after < rss_before + 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}
