//! sd_notify messages (a no-op without `NOTIFY_SOCKET`) and the watchdog
//! interval. Failures to notify are returned for the caller to log: systemd
//! being unreachable must never stop the daemon.

use std::io;
use std::time::Duration;

use sd_notify::NotifyState;

/// `READY=1` with a status line.
pub fn ready(status: &str) -> io::Result<()> {
    sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)])
}

/// `RELOADING=1` with `MONOTONIC_USEC`, which `Type=notify-reload` requires.
pub fn reloading() -> io::Result<()> {
    sd_notify::notify(&[NotifyState::Reloading, NotifyState::monotonic_usec_now()?])
}

/// `STOPPING=1` with a status line.
pub fn stopping(status: &str) -> io::Result<()> {
    sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status(status)])
}

/// `STATUS=` alone.
pub fn status(status: &str) -> io::Result<()> {
    sd_notify::notify(&[NotifyState::Status(status)])
}

/// `WATCHDOG=1`.
pub fn watchdog() -> io::Result<()> {
    sd_notify::notify(&[NotifyState::Watchdog])
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, when it is set
/// for this process (`WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}
