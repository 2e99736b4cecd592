//! `tinyinetd-metrics`: answers `GET /metrics` with the Prometheus text
//! the running daemon's control socket gives; see tinyinetd-metrics(8). A
//! tinyinetd handler: the connection is on fds 0-2, so once serving it
//! never writes to stderr.

#![cfg_attr(not(test), warn(clippy::too_many_lines))]

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tinyinetd::handler::{self, metrics};

const USAGE: &str = "usage: tinyinetd-metrics [-c PATH | --config PATH] [--help | --version]";

/// How long the client has to send its request head.
const READ_DEADLINE: Duration = Duration::from_secs(5);

fn args() -> Result<Option<PathBuf>, String> {
    let mut config = PathBuf::from(tinyinetd::default_config());
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "-c" | "--config" => {
                config = it.next().ok_or_else(|| format!("{a} needs a path"))?.into();
            }
            "-h" | "--help" => {
                println!("{USAGE}\n\nAnswers an HTTP/1.x GET /metrics on fds 0-1 with the Prometheus text of the\ntinyinetd daemon whose control socket the configuration file names (default\n/etc/tinyinetd.toml). Run by tinyinetd; see tinyinetd-metrics(8).");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("tinyinetd-metrics {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            other => return Err(format!("unexpected argument '{other}'")),
        }
    }
    Ok(Some(config))
}

/// Reads the request head from stdin until it is judged, the client stops,
/// or the deadline passes (`None`: 408).
fn read_request() -> Option<metrics::Request> {
    let deadline = Instant::now() + READ_DEADLINE;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let stdin = std::io::stdin();
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return Some(metrics::Request::Bad),
        }
        let n = match handler::read_stdin(&mut chunk) {
            Ok(0) | Err(_) => return Some(metrics::Request::Bad),
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        match metrics::parse(&buf) {
            metrics::Request::Incomplete => {}
            r => return Some(r),
        }
    }
}

fn main() -> ExitCode {
    let config = match args() {
        Ok(Some(c)) => c,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tinyinetd-metrics: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let text = "text/plain; charset=utf-8";
    let reply = match read_request() {
        None => metrics::response(408, text, "no complete request within 5s\n"),
        Some(metrics::Request::Metrics) => match tinyinetd::client::metrics(&config) {
            Ok(body) => metrics::response(200, metrics::CONTENT_TYPE, &body),
            Err(f) => {
                handler::syslog_line(
                    "tinyinetd-metrics",
                    &format!("peer={} error=\"{}\"", handler::peer_text(), f.message),
                );
                metrics::response(503, text, &format!("{}\n", f.message))
            }
        },
        Some(metrics::Request::NotFound) => metrics::response(404, text, "only /metrics is here\n"),
        Some(metrics::Request::Method) => metrics::response(405, text, "only GET is served\n"),
        Some(_) => metrics::response(400, text, "not an HTTP/1.x request\n"),
    };
    match handler::write_stdout(&reply) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if handler::is_disconnect(&e) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(1),
    }
}
