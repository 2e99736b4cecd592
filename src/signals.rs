//! The signals the daemon acts on, delivered through a self-pipe that the
//! poll loop watches (signal-hook's `SignalDelivery`: no helper thread).
//!
//! The handlers only write a byte; the loop decides what to do, between two
//! polls, with all of its state at hand.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::backend::SignalDelivery;
use signal_hook::iterator::exfiltrator::SignalOnly;

/// What arrived since the last drain. Several deliveries of one signal
/// coalesce, which is what every flag here wants.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// SIGCHLD: some child changed state (the loop reaps every turn anyway).
    pub child: bool,
    /// SIGTERM or SIGINT.
    pub terminate: bool,
    /// SIGHUP: reload.
    pub reload: bool,
    /// SIGUSR1: log the status.
    pub status: bool,
}

/// The installed handlers and the read end of their pipe.
pub struct Signals {
    delivery: SignalDelivery<UnixStream, SignalOnly>,
}

impl Signals {
    /// Installs the handlers. Call once, before any child is forked.
    pub fn install() -> io::Result<Signals> {
        let (rd, wr) = UnixStream::pair()?;
        rd.set_nonblocking(true)?;
        wr.set_nonblocking(true)?;
        let delivery = SignalDelivery::with_pipe(
            rd,
            wr,
            SignalOnly,
            [SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR1],
        )?;
        Ok(Signals { delivery })
    }

    /// The descriptor to poll for `POLLIN`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.delivery.get_read().as_fd()
    }

    /// Empties the pipe and says which signals arrived.
    pub fn drain(&mut self) -> Pending {
        let mut p = Pending::default();
        for sig in self.delivery.pending() {
            match sig {
                SIGCHLD => p.child = true,
                SIGTERM | SIGINT => p.terminate = true,
                SIGHUP => p.reload = true,
                SIGUSR1 => p.status = true,
                _ => {}
            }
        }
        p
    }
}
