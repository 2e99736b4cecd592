//! What the shipped handlers share: who the peer is, one syslog line at the
//! end, and writing whole buffers to stdout. Never the daemon's modules: a
//! handler is an ordinary program that happens to have a socket on fd 0.
//!
//! Once a handler is serving, fd 2 is the client's socket: nothing may be
//! written to stderr. Diagnostics go to syslog, or nowhere.

pub mod daytime;
pub mod echo;
pub mod metrics;
pub mod sum;

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::sys::socket::{getpeername, SockaddrStorage};

/// The client, from `getpeername(0)`; `None` when stdin is not a socket
/// (a terminal or a pipe, when the handler is run by hand).
pub fn peer() -> Option<SocketAddr> {
    let a: SockaddrStorage = getpeername(0).ok()?;
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    if let Some(v6) = a.as_sockaddr_in6() {
        let sa = std::net::SocketAddrV6::from(*v6);
        // Show IPv4-mapped peers as the IPv4 address they are.
        return Some(SocketAddr::new(sa.ip().to_canonical(), sa.port()));
    }
    None
}

/// Logs one line to syslog (facility daemon) when `/dev/log` exists;
/// otherwise does nothing. Never writes to stderr.
pub fn syslog_line(ident: &str, line: &str) {
    if !std::path::Path::new("/dev/log").exists() {
        return;
    }
    let formatter = syslog::Formatter3164 {
        facility: syslog::Facility::LOG_DAEMON,
        hostname: None,
        process: ident.into(),
        pid: std::process::id(),
    };
    if let Ok(mut logger) = syslog::unix_custom(formatter, "/dev/log") {
        let _ = logger.info(line);
    }
}

/// The peer as text for a log line.
pub fn peer_text() -> String {
    match peer() {
        Some(p) => p.to_string(),
        None => "-".into(),
    }
}

/// Reads into `buf` from stdin, retrying EINTR. Unbuffered: a raw read(2)
/// returns as soon as the client has sent anything.
pub fn read_stdin(buf: &mut [u8]) -> io::Result<usize> {
    let stdin = io::stdin();
    loop {
        match nix::unistd::read(stdin.as_fd(), buf) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes all of `buf` to stdout, handling partial writes and EINTR.
pub fn write_stdout(mut buf: &[u8]) -> io::Result<()> {
    let stdout = io::stdout();
    while !buf.is_empty() {
        match nix::unistd::write(stdout.as_fd(), buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The end of a session the client caused: it closed or reset the
/// connection. Not an error worth a non-zero exit.
pub fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}
