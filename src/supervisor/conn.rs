//! One connection's way through the loop: accept → decide → spawn, with
//! the classification of accept errors (go on, back off, unexpected).

use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::Pid;

use super::stderr::StderrPipe;
use super::Supervisor;
use crate::admit::{self, Decision, Pace, Reason};
use crate::children::Child;
use crate::listen::Listener;
use crate::plan::{Client, Level, Service, Source, Stderr, UnixName};
use crate::spawn::{self, Conn, Room, SpawnError};

/// How long the listeners rest when every spawn slot is busy: children
/// reach their exec in tens of microseconds.
const SLOT_RETRY: Duration = Duration::from_millis(1);

/// A connection just taken from a listener, of the listener's kind.
enum Taken {
    /// From a TCP listener, with the client's address.
    Tcp(TcpStream, SocketAddr),
    /// From a Unix listener, with the listener's name (the credentials are
    /// read from the socket).
    Unix(UnixStream, UnixName),
}

/// What an accept error means for the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptError {
    /// Nothing is queued: stop accepting this turn.
    Empty,
    /// The connection went away before we took it, or another
    /// per-connection network error: take the next one.
    GoOn,
    /// Out of descriptors or memory: a readable listener we cannot serve
    /// would be a busy loop, so it leaves the poll set for a growing while
    /// (logged once per episode).
    BackOff,
    /// Anything else (EBADF, EINVAL: the socket is not listening): logged
    /// every time, and backed off the same way so it cannot spin.
    Unexpected,
}

/// Classifies the errno of a failed `accept`.
pub fn classify(errno: Errno) -> AcceptError {
    match errno {
        Errno::EAGAIN => AcceptError::Empty,
        Errno::EINTR
        | Errno::ECONNABORTED
        | Errno::EPROTO
        | Errno::ENETDOWN
        | Errno::ENOPROTOOPT
        | Errno::EHOSTDOWN
        | Errno::ENONET
        | Errno::EHOSTUNREACH
        | Errno::EOPNOTSUPP
        | Errno::ENETUNREACH
        | Errno::ECONNRESET
        | Errno::ETIMEDOUT
        | Errno::EPERM => AcceptError::GoOn,
        Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM => AcceptError::BackOff,
        _ => AcceptError::Unexpected,
    }
}

/// Whether a connection is waiting on `listener`, without taking it. Any
/// error reads as "no": the listener stays in the poll set, so the next
/// turn looks again.
fn waiting(listener: &impl AsFd) -> bool {
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0].revents().is_some_and(|r| !r.is_empty())
}

impl Supervisor {
    /// Accepts from socket `i` until no connection is waiting, the budget
    /// is spent, or the service reaches capacity.
    ///
    /// The first accept follows the poll that reported the listener
    /// readable; before each further one a zero-timeout poll of this
    /// listener asks whether another connection is waiting. An accept that
    /// finds the queue empty is not cheap: the kernel allocates a socket
    /// and its file before it looks, and frees them again (BENCHMARKS.md).
    pub(super) fn accept(&mut self, i: usize, now: Instant, budget: usize) {
        for n in 0..budget {
            if n > 0 && !waiting(&self.socks[i].listener) {
                return;
            }
            if !self.may_accept(self.socks[i].svc, now) {
                return;
            }
            let accepted = match &self.socks[i].listener {
                Listener::Tcp(l) => l.accept().map(|(s, peer)| Taken::Tcp(s, peer)),
                Listener::Unix(l) => {
                    let accepted = l.listener().accept();
                    accepted.map(|(s, _)| Taken::Unix(s, l.name().clone()))
                }
                // A UDP socket is a wait service's: handed over
                // (`handover`), never accepted from.
                Listener::Udp(_) => return,
            };
            match accepted {
                Ok(taken) => {
                    if let Some(conn) = self.accepted(i, taken) {
                        self.serve(self.socks[i].svc, conn, now);
                    }
                }
                Err(e) => {
                    let errno = Errno::from_raw(e.raw_os_error().unwrap_or(0));
                    match classify(errno) {
                        AcceptError::Empty => return,
                        AcceptError::GoOn => continue,
                        AcceptError::BackOff => {
                            self.pause_sock(i, errno, now, false);
                            return;
                        }
                        AcceptError::Unexpected => {
                            self.pause_sock(i, errno, now, true);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Whether service `svc_i` has capacity and a spawn slot is free.
    pub(super) fn may_accept(&mut self, svc_i: usize, now: Instant) -> bool {
        let total = self.children.len() + self.proxies.len();
        let max = self.plan.daemon.max_connections;
        if self.services.capacity(svc_i, total, max, now).is_some() {
            return false;
        }
        if self.paced(svc_i, now) {
            return false;
        }
        match self.spawner.room(now) {
            Room::Free => true,
            Room::Grow { slots } => {
                self.log
                    .event(Level::Warn, "spawn-slots-added")
                    .kv("slots", slots + 1)
                    .kv(
                        "error",
                        "every child start has been busy for 100 ms: children stopped before their exec?",
                    )
                    .send();
                true
            }
            // The clients wait in the backlog a moment; the loop serves
            // everything else meanwhile.
            Room::Busy => {
                self.slot_retry = Some(now + SLOT_RETRY);
                false
            }
        }
    }

    /// Whether service `svc_i`'s clients wait for handlers still starting:
    /// the cap is reached and the cores have no room (`admit::Starting`).
    /// They wait in the accept queue, the listeners out of the poll set
    /// until a handler exits, leaves the window, or the machine has room
    /// again. Not while the service's execs fail (those clients are
    /// closed at once after each back-off, not a few per back-off), nor
    /// once the drain has begun.
    pub(super) fn paced(&mut self, svc_i: usize, now: Instant) -> bool {
        if !self.pace_starts || self.services.exec_failing(svc_i) {
            return false;
        }
        let runnable = &mut self.runnable;
        let pace = self.starting.pace(svc_i, now, || runnable.get());
        if let Some(why) = self.runnable.take_problem() {
            self.log
                .event(Level::Warn, "pacing-without-load")
                .kv("path", super::runnable::LOADAVG)
                .kv("error", why)
                .send();
        }
        match pace {
            Pace::Free => false,
            // The next wait, if any, starts short again.
            Pace::Room => {
                self.recheck.reset();
                false
            }
            Pace::Wait => true,
        }
    }

    /// A connection taken from socket `i`: ends its accept back-off and
    /// gives the connection its id and who its client is. `None`: a Unix
    /// peer whose credentials cannot be read (closed, logged).
    fn accepted(&mut self, i: usize, taken: Taken) -> Option<Conn> {
        let sock = &mut self.socks[i];
        let failures = sock.backoff.succeed();
        if failures > 0 {
            self.log
                .event(Level::Info, "accept-resumed")
                .kv("addr", &sock.addr)
                .kv("failures", failures)
                .send();
        }
        let id = self.next_conn;
        self.next_conn += 1;
        let (stream, client): (OwnedFd, Client) = match taken {
            Taken::Tcp(stream, peer) => {
                let bound = sock.addr.inet().unwrap_or(peer);
                let local = if bound.ip().is_unspecified() {
                    stream.local_addr().unwrap_or(bound)
                } else {
                    bound
                };
                (stream.into(), Client::Inet { peer, local })
            }
            Taken::Unix(stream, path) => {
                match crate::unixsock::peer_cred(stream.as_fd()) {
                    Ok((pid, uid, gid)) => (
                        stream.into(),
                        Client::Unix {
                            pid,
                            uid,
                            gid,
                            path,
                        },
                    ),
                    // SO_PEERCRED of an accepted Unix socket cannot fail
                    // short of a kernel bug; without it there is no uid to
                    // admit by, so the connection is closed.
                    Err(e) => {
                        self.log
                            .event(Level::Error, "peer-credentials-failed")
                            .kv("addr", &sock.addr)
                            .kv("conn", id)
                            .kv("error", crate::text::io_reason(&e))
                            .send();
                        return None;
                    }
                }
            }
        };
        Some(Conn {
            stream,
            client,
            id,
            err: None,
            proxy: None,
        })
    }

    /// Takes socket `i` out of the poll set for a growing backoff after an
    /// accept failure. A resource shortage is logged once per episode, at
    /// its start; an unexpected error every time.
    fn pause_sock(&mut self, i: usize, errno: Errno, now: Instant, unexpected: bool) {
        let sock = &mut self.socks[i];
        let delay = sock.backoff.fail();
        sock.retry_at = Some(now + delay);
        if unexpected || sock.backoff.failures == 1 {
            let addr = sock.addr.clone();
            let (level, event) = if unexpected {
                (Level::Error, "accept-failed")
            } else {
                (Level::Warn, "accept-paused")
            };
            self.log
                .event(level, event)
                .kv("addr", addr)
                .kv("error", crate::text::os_error(errno))
                .kv("retry_ms", delay.as_millis())
                .send();
        }
    }

    /// Takes one accepted connection on: a `proxy_protocol` service's
    /// waits for its header first (`proxy`), any other is admitted now.
    fn serve(&mut self, svc_i: usize, conn: Conn, now: Instant) {
        self.services.accepted(svc_i);
        if self.services.get(svc_i).svc.proxy.is_none() {
            return self.admit(svc_i, conn, now);
        }
        let svc = Arc::clone(&self.services.get(svc_i).svc);
        if let Some(p) = &svc.proxy {
            self.hold_for_header(svc_i, conn, p, now);
        }
    }

    /// Admits or refuses a connection by its client (the original one,
    /// behind a proxy), and spawns its handler.
    pub(super) fn admit(&mut self, svc_i: usize, mut conn: Conn, now: Instant) {
        let st = self.services.get(svc_i);
        // Wait handlers are started by `hand_over`, never here.
        if matches!(conn.client, Client::Listener(_)) {
            return;
        }
        let source =
            match admit::decide(&st.svc.access, &st.svc.limits, &st.per_source, &conn.client) {
                Decision::Admit(source) => source,
                Decision::Refuse(reason) => {
                    self.log_refusal(svc_i, &conn, reason, None, now);
                    return; // dropping `conn` closes it: no fork happened
                }
            };
        self.services.take_token(svc_i, now);
        let svc = Arc::clone(&self.services.get(svc_i).svc);
        let Ok(pipe) = self.stderr_for(svc_i, &svc, &mut conn, now) else {
            return; // dropping `conn` closes it: no fork happened
        };
        let spawned = spawn::spawn(&svc, &conn, &mut self.spawner);
        // The write end is the child's alone now (or nobody's).
        let read_end = pipe.map(|(r, _w)| r);
        match spawned {
            Ok(pid) => {
                if let Some(r) = read_end {
                    self.watch_stderr(r, &svc, conn.id, pid);
                }
                self.services.started(svc_i, source, now);
                self.starting.started(pid.as_raw(), svc_i, now);
                self.runnable.forget();
                // None at the descriptor limit: reaped by the sweep then.
                let pidfd = self.spawner.take_pidfd();
                self.log
                    .event(Level::Debug, "start")
                    .kv("service", &svc.name)
                    .kv("conn", conn.id)
                    .kv("pid", pid)
                    .kv("peer", &conn.client)
                    .opt("proxy", proxy_of(&conn))
                    .opt("reaped_by", pidfd.is_none().then_some("sweep"))
                    .send();
                self.insert_child(svc, &conn, pid, pidfd, source, now);
            }
            Err(e) => {
                let delay = self.services.fork_failed(svc_i, now);
                let SpawnError::Fork(_) = e;
                self.log
                    .event(Level::Error, "fork-failed")
                    .kv("service", &svc.name)
                    .kv("conn", conn.id)
                    .kv("peer", &conn.client)
                    .opt("proxy", proxy_of(&conn))
                    .kv("error", e)
                    .kv("retry_ms", delay.as_millis())
                    .send();
            }
        }
    }

    /// Sets the handler's fd 2 for `svc`'s `stderr`: `"null"` is the
    /// daemon's `/dev/null`; `"log"` a new pipe, returned as (read end,
    /// write end). A pipe that cannot be made (EMFILE, ENFILE) is handled
    /// like a failed fork: the connection is closed (by the caller), the
    /// failure logged and the service backed off. It never falls back to
    /// the socket.
    pub(super) fn stderr_for(
        &mut self,
        svc_i: usize,
        svc: &Service,
        conn: &mut Conn,
        now: Instant,
    ) -> Result<Option<(OwnedFd, OwnedFd)>, ()> {
        match svc.stderr {
            Stderr::Socket => Ok(None),
            Stderr::Null => {
                conn.err = Some(self.devnull.as_raw_fd());
                Ok(None)
            }
            Stderr::Log => match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
                Ok((r, w)) => {
                    conn.err = Some(w.as_raw_fd());
                    Ok(Some((r, w)))
                }
                Err(e) => {
                    let delay = self.services.fork_failed(svc_i, now);
                    self.log
                        .event(Level::Error, "stderr-pipe-failed")
                        .kv("service", &svc.name)
                        .kv("conn", conn.id)
                        .kv("peer", &conn.client)
                        .opt("proxy", proxy_of(conn))
                        .kv("error", crate::text::os_error(e))
                        .kv("retry_ms", delay.as_millis())
                        .send();
                    Err(())
                }
            },
        }
    }

    /// Makes a started handler's stderr pipe a poll source.
    pub(super) fn watch_stderr(
        &mut self,
        read_end: OwnedFd,
        svc: &Arc<Service>,
        conn: u64,
        pid: Pid,
    ) {
        match StderrPipe::new(read_end, Arc::clone(svc), conn, pid) {
            Ok(p) => {
                self.stderr_pipes.insert(pid, p);
            }
            // F_SETFL on a descriptor just made cannot fail; were it to,
            // the pipe is closed (the handler's writes to fd 2 then fail)
            // rather than read in a way that could block the loop.
            Err(e) => self
                .log
                .event(Level::Error, "stderr-pipe-failed")
                .kv("service", &svc.name)
                .kv("conn", conn)
                .kv("pid", pid)
                .kv("error", crate::text::os_error(e))
                .send(),
        }
    }

    /// Puts a started handler in the table, with its `timeout`, reaped
    /// through `pidfd` when it has one.
    pub(super) fn insert_child(
        &mut self,
        service: Arc<Service>,
        conn: &Conn,
        pid: Pid,
        pidfd: Option<OwnedFd>,
        source: Source,
        now: Instant,
    ) {
        let term_at = service.limits.timeout.map(|t| now + t);
        let child = Child {
            pid,
            service,
            conn_id: conn.id,
            peer: conn.client.clone(),
            proxy: proxy_of(conn),
            source,
            started: now,
            term_at,
            kill_at: None,
            terminated_for: None,
        };
        self.children.insert_watched(child, pidfd);
    }

    /// Counts a refusal and logs it (within the refusal lines' rate),
    /// with what was wrong when there is more to say than the reason.
    pub(super) fn log_refusal(
        &mut self,
        svc_i: usize,
        conn: &Conn,
        reason: Reason,
        error: Option<&str>,
        now: Instant,
    ) {
        let log = self.services.refused(svc_i, reason, now);
        let name = &self.services.get(svc_i).svc.name;
        if let Some(count) = log.summary {
            self.log
                .event(Level::Warn, "refused-suppressed")
                .kv("service", name)
                .kv("count", count)
                .send();
        }
        if log.line {
            self.log
                .event(Level::Info, "refused")
                .kv("service", name)
                .kv("conn", conn.id)
                .kv("peer", &conn.client)
                .opt("proxy", proxy_of(conn))
                .kv("reason", reason)
                .opt("error", error)
                .send();
        }
    }
}

/// The proxy a connection came through, for the `proxy=` of its lines.
fn proxy_of(conn: &Conn) -> Option<SocketAddr> {
    conn.proxy.as_ref().map(|p| p.addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_are_classified() {
        assert_eq!(classify(Errno::EAGAIN), AcceptError::Empty);
        for e in [
            Errno::EINTR,
            Errno::ECONNABORTED,
            Errno::EPROTO,
            Errno::ECONNRESET,
            Errno::ETIMEDOUT,
            Errno::ENETUNREACH,
            Errno::EPERM,
        ] {
            assert_eq!(classify(e), AcceptError::GoOn, "{e}");
        }
        for e in [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM] {
            assert_eq!(classify(e), AcceptError::BackOff, "{e}");
        }
        for e in [
            Errno::EBADF,
            Errno::EINVAL,
            Errno::ENOTSOCK,
            Errno::from_raw(0),
        ] {
            assert_eq!(classify(e), AcceptError::Unexpected, "{e}");
        }
    }

    #[test]
    fn waiting_sees_a_queued_connection_without_taking_it() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        assert!(!waiting(&l), "nothing has connected yet");
        let _c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        // The handshake completes in the kernel; allow it a moment, bounded.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !waiting(&l) {
            assert!(Instant::now() < deadline, "queued connection not seen");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(waiting(&l), "looking must not take the connection");
        assert!(l.accept().is_ok());
        assert!(!waiting(&l), "the queue is empty again");
    }
}
