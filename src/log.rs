//! One log sink (syslog or stderr), a level filter, and `LEVEL: event key=value` lines.
//!
//! Every value is escaped on the way in: text from the network or from a
//! config file can never inject a newline, a control byte or an unbounded
//! amount of data into the log. The line is built in a buffer owned by the
//! logger, so logging an event does not allocate once the buffer has grown.
//!
//! Sending a line never blocks: syslog through a non-blocking socket of our
//! own, stderr by a non-blocking write chosen for what fd 2 is. A line the
//! reader has no room for is dropped and counted, and the count is logged
//! (`log-dropped count=N`) before the next line that goes out.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use syslog::{Facility, Formatter3164, LogFormat, Severity};

use crate::plan::{Level, LogTarget};
use crate::text::escape_into;

/// The bound of [`Line::kv_long`]: a problem message is a few hundred
/// characters at most (it quotes at most 200 of the file).
pub const LONG_VALUE_CHARS: usize = 4096;

/// Writes to a pipe of at most this many bytes are atomic (POSIX PIPE_BUF).
const PIPE_BUF: usize = 4096;

/// syslog: RFC 3164 lines (formatted by the syslog crate) sent through a
/// datagram socket of our own, connected to /dev/log and non-blocking.
///
/// The crate's own logger sends blocking: a syslogd that stops reading
/// (its receive queue is ten datagrams by default) would stall the whole
/// loop in `sendto()`. A line the socket cannot queue at once is dropped
/// and counted, as `notify` drops a message to a full notify socket; the
/// first line that goes out again is preceded by `warn: log-dropped count=N`.
struct Syslog {
    /// `None` after a lost socket until a reconnect succeeds.
    sock: Option<UnixDatagram>,
    /// Reconnects are tried at most once a second, so a vanished syslog
    /// socket costs one failed connect per second, not one per line.
    next_attempt: Instant,
    /// Builds RFC 3164 lines (facility daemon, our name and pid).
    formatter: Formatter3164,
    /// The formatted datagram; reused.
    buf: Vec<u8>,
    /// Lines dropped since the last one that went out.
    dropped: u64,
}

/// What a non-blocking send or write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    All,
    /// Only this many bytes (a stream, or a pipe write above PIPE_BUF).
    Part(usize),
    /// Nothing: the reader is not keeping up (EAGAIN, ENOBUFS), or it is
    /// gone for good (EPIPE); either way the line is dropped and counted.
    Full,
    /// The socket is gone (syslogd restarted or stopped): reconnect.
    Lost,
}

/// How stderr is written without blocking, decided once from what fd 2 is.
enum ErrOut {
    /// A regular file: written as is (a write to a file does not wait for
    /// a reader).
    File,
    /// A socket (the journal's stream): `send` with MSG_DONTWAIT.
    Socket,
    /// A pipe, FIFO or terminal: a file description of our own opened
    /// through /proc/self/fd/2 with O_NONBLOCK. Setting O_NONBLOCK on fd 2
    /// itself would change the description shared with the shell or the
    /// service manager (a terminal left non-blocking breaks the shell).
    Private(OwnedFd),
    /// A pipe or terminal that could not be reopened: a zero-timeout poll
    /// for room before each write of at most PIPE_BUF bytes, which a pipe
    /// with room takes whole.
    Guarded,
    /// fd 2 is closed: nothing to write to.
    Closed,
}

struct Stderr {
    /// Where the lines go (the daemon's stderr).
    out: ErrOut,
    /// The rest of a line that was written in part. A line is never left
    /// without its end: the rest goes out before anything else, and lines
    /// that come while it waits are dropped and counted.
    pending: Vec<u8>,
    /// Lines dropped since the last one that went out.
    dropped: u64,
}

/// The daemon's logger. Owned by the supervisor; never used in a child.
pub struct Logger {
    /// `Some` when logging to syslog; stderr then takes a line only when
    /// syslog is gone.
    syslog: Option<Syslog>,
    /// The fallback, and the target when `log = "stderr"`.
    stderr: Stderr,
    /// The lowest level written.
    level: Level,
    /// The line being built; reused.
    line: String,
    /// Scratch for formatting one value before escaping it; reused.
    scratch: String,
}

impl Logger {
    /// A stderr logger at `level`; what the daemon uses until the config is read.
    pub fn stderr(level: Level) -> Logger {
        Logger {
            syslog: None,
            stderr: Stderr {
                out: ErrOut::detect(),
                pending: Vec::new(),
                dropped: 0,
            },
            level,
            line: String::with_capacity(256),
            scratch: String::with_capacity(64),
        }
    }

    /// Opens the sink the config asks for. Returns a warning to log when
    /// syslog was wanted but could not be reached (the logger then uses stderr).
    pub fn open(target: LogTarget, level: Level) -> (Logger, Option<String>) {
        let mut logger = Logger::stderr(level);
        let want_syslog = match target {
            LogTarget::Stderr => false,
            LogTarget::Syslog => true,
            LogTarget::Auto => {
                auto_wants_syslog(std::env::var_os("JOURNAL_STREAM").is_some(), stderr_kind())
            }
        };
        if !want_syslog {
            return (logger, None);
        }
        match connect_syslog() {
            Ok(s) => {
                logger.syslog = Some(Syslog {
                    sock: Some(s),
                    next_attempt: Instant::now(),
                    formatter: Formatter3164 {
                        facility: Facility::LOG_DAEMON,
                        hostname: None,
                        process: "tinyinetd".into(),
                        pid: std::process::id(),
                    },
                    buf: Vec::with_capacity(512),
                    dropped: 0,
                });
                (logger, None)
            }
            Err(e) => (
                logger,
                Some(format!("syslog is not reachable ({e}); logging to stderr")),
            ),
        }
    }

    pub fn set_level(&mut self, level: Level) {
        self.level = level;
    }

    pub fn enabled(&self, level: Level) -> bool {
        level <= self.level
    }

    /// Starts a line; add values with [`Line::kv`] and finish with [`Line::send`].
    pub fn event(&mut self, level: Level, event: &str) -> Line<'_> {
        let on = self.enabled(level);
        if on {
            self.line.clear();
            self.line.push_str(level.as_str());
            self.line.push_str(": ");
            self.line.push_str(event);
        }
        Line {
            logger: self,
            level,
            on,
        }
    }

    fn write(&mut self, level: Level) {
        if let Some(s) = &mut self.syslog {
            if s.write(level, &self.line) {
                return;
            }
        }
        // stderr: one write per line so lines from one process never interleave.
        self.line.push('\n');
        self.stderr.write(self.line.as_bytes());
    }
}

impl Syslog {
    /// Sends `line`, preceded by the dropped count if there is one. False
    /// when syslog is gone and the line should go to stderr instead.
    fn write(&mut self, level: Level, line: &str) -> bool {
        if self.sock.is_none() && Instant::now() >= self.next_attempt {
            self.sock = connect_syslog().ok();
            self.next_attempt = Instant::now() + Duration::from_secs(1);
        }
        for attempt in 0..2 {
            let Some(sock) = &self.sock else {
                return false;
            };
            let mut sent = Sent::All;
            if self.dropped > 0 {
                let summary = format!(
                    "{}: log-dropped count={}",
                    Level::Warn.as_str(),
                    self.dropped
                );
                sent = send_formatted(
                    sock,
                    &self.formatter,
                    &mut self.buf,
                    Severity::LOG_WARNING,
                    &summary,
                );
                if sent == Sent::All {
                    self.dropped = 0;
                }
            }
            if sent == Sent::All {
                sent = send_formatted(sock, &self.formatter, &mut self.buf, severity(level), line);
            }
            match sent {
                Sent::All => return true,
                // A datagram goes whole or not at all; a full queue drops
                // the line (counted), it does not send it to stderr.
                Sent::Part(_) | Sent::Full => {
                    self.dropped += 1;
                    return true;
                }
                Sent::Lost => {
                    // Lost the socket (syslogd restarted, or gone): reconnect
                    // once now, then fall back to stderr for this line.
                    self.sock = if attempt == 0 {
                        connect_syslog().ok()
                    } else {
                        None
                    };
                    self.next_attempt = Instant::now() + Duration::from_secs(1);
                }
            }
        }
        false
    }
}

fn severity(level: Level) -> Severity {
    match level {
        Level::Error => Severity::LOG_ERR,
        Level::Warn => Severity::LOG_WARNING,
        Level::Info => Severity::LOG_INFO,
        Level::Debug => Severity::LOG_DEBUG,
    }
}

fn send_formatted(
    sock: &UnixDatagram,
    f: &Formatter3164,
    buf: &mut Vec<u8>,
    sev: Severity,
    msg: &str,
) -> Sent {
    buf.clear();
    if f.format(buf, sev, msg).is_err() {
        return Sent::Full;
    }
    match sock.send(buf) {
        Ok(n) if n == buf.len() => Sent::All,
        Ok(n) => Sent::Part(n),
        Err(e) => match Errno::from_raw(e.raw_os_error().unwrap_or(0)) {
            Errno::EAGAIN | Errno::ENOBUFS | Errno::EINTR | Errno::EMSGSIZE => Sent::Full,
            _ => Sent::Lost,
        },
    }
}

/// A non-blocking datagram socket connected to /dev/log (close-on-exec, as
/// every socket std creates).
fn connect_syslog() -> Result<UnixDatagram, String> {
    if !std::path::Path::new("/dev/log").exists() {
        return Err("/dev/log does not exist".into());
    }
    let sock = UnixDatagram::unbound().map_err(|e| crate::text::io_reason(&e))?;
    sock.connect("/dev/log").map_err(|e| {
        if e.raw_os_error() == Some(libc::EPROTOTYPE) {
            "/dev/log is a stream socket; only datagram syslog is supported".to_string()
        } else {
            format!("/dev/log: {}", crate::text::io_reason(&e))
        }
    })?;
    sock.set_nonblocking(true)
        .map_err(|e| crate::text::io_reason(&e))?;
    Ok(sock)
}

/// What the daemon's fd 2 is, as `log = "auto"` decides by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StderrKind {
    Terminal,
    /// A pipe, FIFO, socket or regular file: something collects it (a
    /// container runtime, a CI runner, a supervision tree's logger, `2>file`).
    Collected,
    /// `/dev/null` or another device: whatever is written is lost.
    Discarded,
    Closed,
}

fn stderr_kind() -> StderrKind {
    use nix::sys::stat::SFlag;
    let fd2 = std::io::stderr();
    if fd2.is_terminal() {
        return StderrKind::Terminal;
    }
    let Ok(st) = nix::sys::stat::fstat(fd2.as_fd()) else {
        return StderrKind::Closed;
    };
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if [SFlag::S_IFREG, SFlag::S_IFIFO, SFlag::S_IFSOCK].contains(&kind) {
        StderrKind::Collected
    } else {
        StderrKind::Discarded
    }
}

/// `log = "auto"`: syslog only when stderr goes nowhere. A journal stream
/// (`JOURNAL_STREAM`), a terminal, or a pipe or file that something reads
/// is where an administrator looks first, so the daemon logs there and
/// does not warn about a `/dev/log` it never wanted.
fn auto_wants_syslog(journal: bool, stderr: StderrKind) -> bool {
    !journal && matches!(stderr, StderrKind::Discarded | StderrKind::Closed)
}

impl ErrOut {
    fn detect() -> ErrOut {
        use nix::sys::stat::SFlag;
        let fd2 = std::io::stderr();
        let Ok(st) = nix::sys::stat::fstat(fd2.as_fd()) else {
            return ErrOut::Closed;
        };
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        if kind == SFlag::S_IFREG {
            ErrOut::File
        } else if kind == SFlag::S_IFSOCK {
            ErrOut::Socket
        } else {
            use nix::fcntl::OFlag;
            match nix::fcntl::open(
                "/proc/self/fd/2",
                OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
                nix::sys::stat::Mode::empty(),
            ) {
                Ok(fd) => ErrOut::Private(fd),
                Err(_) => ErrOut::Guarded,
            }
        }
    }

    /// Writes what it can of `b` now.
    fn put(&self, b: &[u8]) -> Sent {
        let err = std::io::stderr();
        let fd2: BorrowedFd<'_> = err.as_fd();
        let r = match self {
            ErrOut::Closed => return Sent::All,
            ErrOut::File => {
                use std::io::Write as _;
                let _ = std::io::stderr().lock().write_all(b);
                return Sent::All;
            }
            ErrOut::Socket => {
                use std::os::fd::AsRawFd as _;
                nix::sys::socket::send(
                    fd2.as_raw_fd(),
                    b,
                    nix::sys::socket::MsgFlags::MSG_DONTWAIT
                        | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
                )
            }
            ErrOut::Private(fd) => nix::unistd::write(fd, b),
            ErrOut::Guarded => {
                use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
                let mut fds = [PollFd::new(fd2, PollFlags::POLLOUT)];
                let room = matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1))
                    && fds[0]
                        .revents()
                        .is_some_and(|r| r.contains(PollFlags::POLLOUT));
                if !room {
                    return Sent::Full;
                }
                nix::unistd::write(fd2, &b[..b.len().min(PIPE_BUF)])
            }
        };
        match r {
            Ok(n) if n == b.len() => Sent::All,
            Ok(n) => Sent::Part(n),
            Err(_) => Sent::Full,
        }
    }
}

impl Stderr {
    /// Writes one line (ending in a newline) without blocking: first the
    /// rest of a line written in part, then the dropped count, then the line.
    fn write(&mut self, line: &[u8]) {
        if !self.pending.is_empty() {
            match self.out.put(&self.pending) {
                Sent::All => self.pending.clear(),
                Sent::Part(n) => {
                    self.pending.drain(..n);
                    self.dropped += 1;
                    return;
                }
                Sent::Full | Sent::Lost => {
                    self.dropped += 1;
                    return;
                }
            }
        }
        if self.dropped > 0 {
            let summary = format!(
                "{}: log-dropped count={}\n",
                Level::Warn.as_str(),
                self.dropped
            );
            match self.out.put(summary.as_bytes()) {
                Sent::All => self.dropped = 0,
                Sent::Part(n) => {
                    self.pending.extend_from_slice(&summary.as_bytes()[n..]);
                    self.dropped = 1;
                    return;
                }
                Sent::Full | Sent::Lost => {
                    self.dropped += 1;
                    return;
                }
            }
        }
        match self.out.put(line) {
            Sent::All => {}
            Sent::Part(n) => self.pending.extend_from_slice(&line[n..]),
            Sent::Full | Sent::Lost => self.dropped += 1,
        }
    }
}

/// A log line being built.
pub struct Line<'a> {
    /// Where the line goes when sent.
    logger: &'a mut Logger,
    /// Its level.
    level: Level,
    /// False when the level is filtered out: every call is then a no-op.
    on: bool,
}

impl Line<'_> {
    /// Appends ` key=value`, the value escaped (see [`escape_into`]).
    pub fn kv(self, key: &str, value: impl fmt::Display) -> Self {
        if self.on {
            let l = &mut *self.logger;
            l.scratch.clear();
            let _ = write!(l.scratch, "{value}");
            l.line.push(' ');
            l.line.push_str(key);
            l.line.push('=');
            escape_into(&mut l.line, &l.scratch);
        }
        self
    }

    /// Appends ` key=value` for a long message of the daemon's own (a
    /// configuration problem): escaped like [`Line::kv`], but bounded at
    /// [`LONG_VALUE_CHARS`], not [`crate::text::MAX_VALUE_CHARS`].
    pub fn kv_long(self, key: &str, value: &str) -> Self {
        if self.on {
            let l = &mut *self.logger;
            l.line.push(' ');
            l.line.push_str(key);
            l.line.push('=');
            crate::text::escape_bounded(&mut l.line, value, LONG_VALUE_CHARS);
        }
        self
    }

    /// Appends ` key=value` only when `value` is present.
    pub fn opt(self, key: &str, value: Option<impl fmt::Display>) -> Self {
        match value {
            Some(v) => self.kv(key, v),
            None => self,
        }
    }

    pub fn send(self) {
        if self.on {
            self.logger.write(self.level);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_logs_to_syslog_only_when_stderr_goes_nowhere() {
        use StderrKind::*;
        for kind in [Terminal, Collected, Discarded, Closed] {
            assert!(
                !auto_wants_syslog(true, kind),
                "a journal stream wins: {kind:?}"
            );
        }
        assert!(!auto_wants_syslog(false, Terminal));
        assert!(!auto_wants_syslog(false, Collected));
        assert!(auto_wants_syslog(false, Discarded));
        assert!(auto_wants_syslog(false, Closed));
    }

    #[test]
    fn a_line_written_in_part_is_finished_before_the_next_and_drops_are_counted() {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        use std::io::Read as _;
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe");
        // One page: a 6,000-byte line goes out in part.
        fcntl(&w, FcntlArg::F_SETPIPE_SZ(4096)).expect("F_SETPIPE_SZ");
        fcntl(&w, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).expect("O_NONBLOCK");
        fcntl(&r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).expect("O_NONBLOCK");
        let mut e = Stderr {
            out: ErrOut::Private(w),
            pending: Vec::new(),
            dropped: 0,
        };
        let long = format!("info: long {}\n", "x".repeat(6000));
        e.write(long.as_bytes());
        assert!(!e.pending.is_empty(), "written in part");
        e.write(b"info: second\n");
        assert_eq!(e.dropped, 1, "the pipe is full: dropped and counted");
        let mut r = std::fs::File::from(r);
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        let mut drain = |got: &mut Vec<u8>| {
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
        };
        drain(&mut got);
        e.write(b"info: third\n");
        drain(&mut got);
        drain(&mut got);
        e.write(b"info: fourth\n");
        drain(&mut got);
        let text = String::from_utf8(got).expect("utf-8");
        assert_eq!(
            text,
            format!("{long}warn: log-dropped count=1\ninfo: third\ninfo: fourth\n"),
        );
    }

    #[test]
    fn lines_are_formatted_and_filtered() {
        let mut l = Logger::stderr(Level::Info);
        l.event(Level::Info, "exit")
            .kv("service", "echo")
            .kv("peer", "1.2.3.4:5")
            .opt("status", Some(0))
            .opt("signal", None::<&str>)
            .send();
        assert_eq!(l.line, "info: exit service=echo peer=1.2.3.4:5 status=0\n");
        l.line.clear();
        l.event(Level::Debug, "noise").kv("x", 1).send();
        assert_eq!(l.line, "");
    }
}
