//! sd_notify messages (a no-op without `NOTIFY_SOCKET`) and the watchdog
//! interval. Failures to notify are returned for the caller to log: systemd
//! being unreachable must never stop the daemon.
//!
//! Messages are sent with a non-blocking datagram socket. The sd-notify
//! crate's `notify()` sends blocking, and a notify socket whose queue is
//! full (a service manager that is slow or stopped reading) would then
//! stall the whole accept loop inside `sendto()`. A message that cannot be
//! queued at once is reported (EAGAIN) and dropped; the next one carries
//! the current state anyway.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// `READY=1` with a status line.
pub fn ready(status: &str) -> io::Result<()> {
    send(&format!("READY=1\nSTATUS={}\n", one_line(status)))
}

/// `RELOADING=1` with `MONOTONIC_USEC`, which `Type=notify-reload` requires.
pub fn reloading() -> io::Result<()> {
    let now =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_err(io::Error::from)?;
    let usec = now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1_000;
    send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}\n"))
}

/// `STOPPING=1` with a status line.
pub fn stopping(status: &str) -> io::Result<()> {
    send(&format!("STOPPING=1\nSTATUS={}\n", one_line(status)))
}

/// `STATUS=` alone.
pub fn status(status: &str) -> io::Result<()> {
    send(&format!("STATUS={}\n", one_line(status)))
}

/// `WATCHDOG=1`.
pub fn watchdog() -> io::Result<()> {
    send("WATCHDOG=1\n")
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, when it is set
/// for this process (`WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// A status line must stay one line: the protocol is newline-separated.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// Sends one datagram to `$NOTIFY_SOCKET` without blocking; `Ok` when the
/// variable is unset.
fn send(msg: &str) -> io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket (systemd in a container, or --user).
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(msg.as_bytes(), &addr)?;
    } else {
        sock.send_to(msg.as_bytes(), &path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_stay_single_lines() {
        assert_eq!(one_line("a\nb\rc"), "a b c");
    }
}
