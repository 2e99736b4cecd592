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
    /// Readable when one of the blocked signals is pending.
    fd: SignalFd,
}

/// The signals the daemon blocks and reads.
const HANDLED: [Signal; 5] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
];

/// [`HANDLED`] as a set.
fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for sig in HANDLED {
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

    /// Reads every queued signal, in one `read`, and says which arrived.
    /// At most five standard signals can be pending at once (one each),
    /// and the buffer holds eight: one read takes them all, and a second
    /// would only fail with EAGAIN. Should one ever be left, the
    /// signalfd stays readable and the next poll returns at once.
    pub fn drain(&mut self) -> Pending {
        const RECORD: usize = std::mem::size_of::<libc::signalfd_siginfo>();
        let mut buf = [0u8; 8 * RECORD];
        let n = match nix::unistd::read(&self.fd, &mut buf) {
            Ok(n) => n,
            // Nothing queued (EAGAIN), or a signal interrupted the read.
            Err(Errno::EAGAIN | Errno::EINTR) => 0,
            // Reading a signalfd cannot fail otherwise; if it ever did,
            // reap anyway: a spurious reap costs one wait4.
            Err(_) => {
                return Pending {
                    child: true,
                    ..Pending::default()
                }
            }
        };
        decode(&buf[..n - n % RECORD])
    }
}

/// Which signals a run of `signalfd_siginfo` records holds (each starts
/// with `ssi_signo`, a native-endian u32).
fn decode(records: &[u8]) -> Pending {
    let mut p = Pending::default();
    for r in records.chunks_exact(std::mem::size_of::<libc::signalfd_siginfo>()) {
        let signo = u32::from_ne_bytes([r[0], r[1], r[2], r[3]]);
        match Signal::try_from(signo as i32) {
            Ok(Signal::SIGCHLD) => p.child = true,
            Ok(Signal::SIGTERM | Signal::SIGINT) => p.terminate = true,
            Ok(Signal::SIGHUP) => p.reload = true,
            Ok(Signal::SIGUSR1) => p.status = true,
            _ => {}
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(signo: u32) -> Vec<u8> {
        let mut r = vec![0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        r[..4].copy_from_slice(&signo.to_ne_bytes());
        r
    }

    #[test]
    fn decode_reads_the_signal_of_every_record() {
        assert_eq!(decode(&[]), Pending::default());
        let mut run = record(libc::SIGCHLD as u32);
        run.extend(record(libc::SIGHUP as u32));
        run.extend(record(libc::SIGUSR2 as u32)); // not handled: ignored
        assert_eq!(
            decode(&run),
            Pending {
                child: true,
                reload: true,
                ..Pending::default()
            }
        );
        let mut run = record(libc::SIGINT as u32);
        run.extend(record(libc::SIGUSR1 as u32));
        assert_eq!(
            decode(&run),
            Pending {
                terminate: true,
                status: true,
                ..Pending::default()
            }
        );
    }

    /// One read takes every pending signal: sent to ourselves, blocked,
    /// all five are read at once and the signalfd is then empty.
    #[test]
    fn one_drain_takes_every_pending_signal() {
        // The test harness runs tests on threads: block the set on this
        // one, then raise on this thread (tgkill) so the signals stay
        // pending for it.
        let mut s = Signals::install().expect("install");
        for sig in HANDLED {
            nix::sys::signal::raise(sig).expect("raise");
        }
        assert_eq!(
            s.drain(),
            Pending {
                child: true,
                terminate: true,
                reload: true,
                status: true,
            }
        );
        assert_eq!(s.drain(), Pending::default());
    }

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
