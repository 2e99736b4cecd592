//! Handlers' stderr with `stderr = "log"` (SPEC §10.2): the pipe of each
//! such handler is a poll source; what it carries is cut into lines (a
//! line over [`LINE_MAX`] bytes into parts) and logged as `stderr` lines,
//! [`LINES_PER_SECOND`] per service at most, the rest counted in one
//! `stderr-suppressed` line per second.
//!
//! The read end is non-blocking: a read takes what is there and never
//! waits. One pipe is read [`TURN_BUDGET`] bytes per turn at most, so a
//! flood from one handler cannot starve the rest of the loop.
//!
//! When the handler is reaped, what is in its pipe at that moment is read
//! (bounded, non-blocking) and logged with a partial last line, before its
//! `exit` line; then the daemon closes its read end, even if the handler's
//! own children still hold the write end. They get EPIPE (or SIGPIPE) on
//! their next write to fd 2: the daemon does not keep a descriptor, a
//! buffer and a poll entry for a process it does not track, so a handler's
//! children cost nothing but the pipe itself.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::Pid;

use super::services::{Limiter, ServiceTable};
use super::{Source, Supervisor};
use crate::log::Logger;
use crate::plan::{Level, Service};

/// The longest line logged whole; a longer one is logged in parts.
pub const LINE_MAX: usize = 1000;

/// Lines logged per second per service at most.
pub const LINES_PER_SECOND: u32 = 50;

/// Bytes read from one pipe in one loop turn at most (and when its
/// handler is reaped: what a default pipe holds).
const TURN_BUDGET: usize = 64 * 1024;

/// One handler's stderr pipe, owned by the supervisor.
pub(super) struct StderrPipe {
    /// The read end: non-blocking, close-on-exec.
    pub(super) fd: OwnedFd,
    /// The line being gathered.
    lines: LineBuf,
    /// Who the lines are about.
    meta: Meta,
}

/// What each line says it came from, and the limiter of last resort.
struct Meta {
    /// The handler's service (its name, and its limiter in the table).
    service: Arc<Service>,
    /// The connection's id.
    conn: u64,
    /// The handler's pid.
    pid: Pid,
    /// Used only when the service has left the plan (a reload): its
    /// lines stay limited all the same.
    own: Limiter,
}

/// A partial line, bounded at [`LINE_MAX`] bytes.
#[derive(Default)]
struct LineBuf {
    /// The bytes of the current part.
    buf: Vec<u8>,
    /// Parts of the current line already emitted.
    parts: u32,
}

impl LineBuf {
    /// Cuts `data` into complete lines and full parts, calling `emit`
    /// with each (`Some(K)`: part K of a long line); keeps the rest.
    fn feed(&mut self, mut data: &[u8], emit: &mut dyn FnMut(&[u8], Option<u32>)) {
        while let Some(&first) = data.first() {
            if self.buf.len() == LINE_MAX && first != b'\n' {
                self.parts += 1;
                emit(&self.buf, Some(self.parts));
                self.buf.clear();
                continue;
            }
            match data.iter().position(|&b| b == b'\n') {
                Some(n) if self.buf.len() + n <= LINE_MAX => {
                    self.buf.extend_from_slice(&data[..n]);
                    data = &data[n + 1..];
                    self.end_line(emit);
                }
                _ => {
                    let take = (LINE_MAX - self.buf.len()).min(data.len());
                    self.buf.extend_from_slice(&data[..take]);
                    data = &data[take..];
                }
            }
        }
    }

    /// Emits what is gathered as the end of a line (its last part when
    /// parts went before).
    fn end_line(&mut self, emit: &mut dyn FnMut(&[u8], Option<u32>)) {
        let part = (self.parts > 0).then_some(self.parts + 1);
        emit(&self.buf, part);
        self.buf.clear();
        self.parts = 0;
    }

    /// A last line without its newline, if any.
    fn finish(&mut self, emit: &mut dyn FnMut(&[u8], Option<u32>)) {
        if !self.buf.is_empty() {
            self.end_line(emit);
        }
    }
}

/// How a read of a pipe ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Read {
    /// Nothing more for now (or the budget is spent): keep polling.
    Open,
    /// Every writer has closed it (or it failed): it is done.
    Closed,
}

impl StderrPipe {
    /// Takes the read end of a fresh pipe (made non-blocking here) for the
    /// handler `pid` of `service`, connection `conn`.
    pub(super) fn new(
        fd: OwnedFd,
        service: Arc<Service>,
        conn: u64,
        pid: Pid,
    ) -> Result<StderrPipe, Errno> {
        fcntl(&fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        Ok(StderrPipe {
            fd,
            lines: LineBuf::default(),
            meta: Meta {
                service,
                conn,
                pid,
                own: Limiter::default(),
            },
        })
    }

    /// Reads what is there now (up to [`TURN_BUDGET`] bytes) and logs its
    /// complete lines. Never blocks.
    pub(super) fn read(
        &mut self,
        log: &mut Logger,
        table: &mut ServiceTable,
        now: Instant,
    ) -> Read {
        let mut chunk = [0u8; 4096];
        let mut got = 0;
        while got < TURN_BUDGET {
            match nix::unistd::read(self.fd.as_fd(), &mut chunk) {
                Ok(0) => return Read::Closed,
                Ok(n) => {
                    got += n;
                    let meta = &mut self.meta;
                    self.lines.feed(&chunk[..n], &mut |text, part| {
                        meta.emit(log, table, text, part, now)
                    });
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return Read::Open,
                // EIO and the like: nothing more will come of it.
                Err(_) => return Read::Closed,
            }
        }
        Read::Open
    }

    /// The handler was reaped (or the pipe closed): logs what is left, a
    /// partial last line and what its own limiter held back. The caller
    /// then drops the pipe, which closes the read end.
    pub(super) fn finish(&mut self, log: &mut Logger, table: &mut ServiceTable, now: Instant) {
        self.read(log, table, now);
        let meta = &mut self.meta;
        self.lines
            .finish(&mut |text, part| meta.emit(log, table, text, part, now));
        if let Some(count) = self.meta.own.take_suppressed() {
            suppressed(log, &self.meta.service.name, count);
        }
    }
}

impl Meta {
    /// Logs one line (or part), within the service's rate.
    fn emit(
        &mut self,
        log: &mut Logger,
        table: &mut ServiceTable,
        text: &[u8],
        part: Option<u32>,
        now: Instant,
    ) {
        let decision = match table.position(&self.service.name) {
            Some(i) => table.stderr_line(i, now, LINES_PER_SECOND),
            None => self.own.note(now, LINES_PER_SECOND),
        };
        if let Some(count) = decision.summary {
            suppressed(log, &self.service.name, count);
        }
        if decision.line {
            log.event(Level::Info, "stderr")
                .kv("service", &self.service.name)
                .kv("conn", self.conn)
                .kv("pid", self.pid)
                .opt("part", part)
                .kv_long("line", &String::from_utf8_lossy(text))
                .send();
        }
    }
}

/// The `stderr-suppressed` line of one window.
pub(super) fn suppressed(log: &mut Logger, service: &str, count: u64) {
    log.event(Level::Warn, "stderr-suppressed")
        .kv("service", service)
        .kv("count", count)
        .send();
}

impl Supervisor {
    /// Reads every stderr pipe the poll found ready; one whose writers
    /// have all closed it is finished and closed.
    pub(super) fn read_stderr(&mut self, now: Instant) {
        for i in 0..self.ready.len() {
            let Source::Stderr(pid) = self.ready[i].0 else {
                continue;
            };
            let Some(p) = self.stderr_pipes.get_mut(&pid) else {
                continue;
            };
            if p.read(&mut self.log, &mut self.services, now) == Read::Closed {
                self.finish_stderr(pid, now);
            }
        }
    }

    /// Logs what is left in `pid`'s stderr pipe, if it has one, and closes
    /// it (see `stderr` on the handler's children).
    pub(super) fn finish_stderr(&mut self, pid: Pid, now: Instant) {
        if let Some(mut p) = self.stderr_pipes.remove(&pid) {
            p.finish(&mut self.log, &mut self.services, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each emitted piece: its bytes and its part number.
    type Pieces = Vec<(Vec<u8>, Option<u32>)>;

    fn cut(chunks: &[&[u8]]) -> (Pieces, Vec<u8>) {
        let mut b = LineBuf::default();
        let mut out = Vec::new();
        for c in chunks {
            b.feed(c, &mut |t, p| out.push((t.to_vec(), p)));
        }
        let rest = b.buf.clone();
        (out, rest)
    }

    #[test]
    fn lines_are_cut_at_newlines_across_reads() {
        let (out, rest) = cut(&[b"one\ntw", b"o\n\nthr", b"ee"]);
        let want: Pieces = vec![
            (b"one".to_vec(), None),
            (b"two".to_vec(), None),
            (b"".to_vec(), None),
        ];
        assert_eq!(out, want);
        assert_eq!(rest, b"three");
    }

    #[test]
    fn a_long_line_comes_in_parts_of_at_most_line_max() {
        let long = vec![b'x'; 2 * LINE_MAX + 5];
        let mut data = long.clone();
        data.push(b'\n');
        data.extend_from_slice(b"next\n");
        let (out, rest) = cut(&[&data[..700], &data[700..]]);
        assert!(rest.is_empty());
        let parts: Vec<(usize, Option<u32>)> = out.iter().map(|(t, p)| (t.len(), *p)).collect();
        assert_eq!(
            parts,
            vec![
                (LINE_MAX, Some(1)),
                (LINE_MAX, Some(2)),
                (5, Some(3)),
                (4, None)
            ]
        );
    }

    #[test]
    fn a_line_of_exactly_line_max_is_one_line() {
        let mut data = vec![b'y'; LINE_MAX];
        data.push(b'\n');
        let (out, _) = cut(&[&data[..LINE_MAX], &data[LINE_MAX..]]);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].0.len(), out[0].1), (LINE_MAX, None));
    }

    #[test]
    fn finish_emits_a_partial_last_line() {
        let mut b = LineBuf::default();
        let mut out = Vec::new();
        b.feed(b"a\nbc", &mut |t, p| out.push((t.to_vec(), p)));
        b.finish(&mut |t, p| out.push((t.to_vec(), p)));
        b.finish(&mut |t, p| out.push((t.to_vec(), p)));
        assert_eq!(out, vec![(b"a".to_vec(), None), (b"bc".to_vec(), None)]);
    }
}
