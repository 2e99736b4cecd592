//! The signals the daemon acts on, read from a signalfd that the poll loop
//! watches.
//!
//! The five signals are blocked for the whole life of the daemon and never
//! have a handler: the kernel queues them and the loop reads them, between
//! two polls, with all of its state at hand. That is a self-pipe the kernel
//! keeps for us — and cheaper than one: an exiting child costs no handler
//! frame, no write into a pipe and no `sigreturn`, and any number of exits
//! between two polls coalesce into one pending SIGCHLD and one read (see
//! BENCHMARKS.md). Having no handlers also means no daemon code can ever run
//! on a signal in a child between clone and exec (see `spawn`).

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// What arrived since the last drain. Several deliveries of one signal
/// coalesce, which is what every flag here wants.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// SIGCHLD: some child changed state; the loop reaps.
    pub child: bool,
    /// SIGTERM or SIGINT.
    pub terminate: bool,
    /// SIGHUP: reload.
    pub reload: bool,
    /// SIGUSR1: log the status.
    pub status: bool,
}

/// The signals the daemon handles, blocked, and the signalfd they arrive on.
pub struct Signals {
    fd: SignalFd,
}

/// The set the daemon blocks and reads.
fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
    ] {
        set.add(sig);
    }
    set
}

impl Signals {
    /// Blocks the handled signals and opens the signalfd. Call once, before
    /// any child is started. A signal that was already pending (sent before
    /// this call) stays pending and is read on the first drain.
    pub fn install() -> io::Result<Signals> {
        let set = handled();
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
            .map_err(io::Error::from)?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(io::Error::from)?;
        Ok(Signals { fd })
    }

    /// The descriptor to poll for `POLLIN`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Reads every queued signal and says which arrived. At most five
    /// standard signals can be pending at once, so this ends after a few
    /// reads; the bound only guards against a misbehaving kernel.
    pub fn drain(&mut self) -> Pending {
        let mut p = Pending::default();
        for _ in 0..64 {
            let info = match self.fd.read_signal() {
                Ok(Some(info)) => info,
                // Nothing left (EAGAIN), or a signal interrupted the read.
                Ok(None) | Err(Errno::EINTR) => break,
                // Reading a signalfd cannot fail otherwise; if it ever did,
                // reap anyway: a spurious reap costs one wait4.
                Err(_) => {
                    p.child = true;
                    break;
                }
            };
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => p.child = true,
                Ok(Signal::SIGTERM | Signal::SIGINT) => p.terminate = true,
                Ok(Signal::SIGHUP) => p.reload = true,
                Ok(Signal::SIGUSR1) => p.status = true,
                _ => {}
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handled_set_is_exactly_the_five_signals() {
        let set = handled();
        let got: Vec<Signal> = set.iter().collect();
        assert_eq!(
            got.len(),
            5,
            "handled set should hold 5 signals, has {got:?}"
        );
        for s in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGUSR1,
        ] {
            assert!(set.contains(s), "{s:?} missing from {got:?}");
        }
    }
}
