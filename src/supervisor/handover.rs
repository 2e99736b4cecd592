//! Wait services (SPEC §10.5): a readable socket is handed to one handler
//! (on its fds 0–3, `spawn::Conn` with a `Client::Listener`), leaves the
//! poll set while that handler runs, and comes back when it is reaped;
//! the crash-loop pause of a service whose handlers keep exiting at once
//! (`admit::CrashLoop`).
//!
//! The daemon never accepts or reads on such a socket: whatever arrives
//! while the handler runs is the handler's. The socket is made blocking
//! for the handler (what an inetd or systemd program expects; the flag
//! belongs to the socket, which the daemon's copy shares) and
//! non-blocking again when it comes back, so that every socket the loop
//! may accept from stays non-blocking (a reload may give the address to a
//! service that accepts).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use super::Supervisor;
use crate::admit::CrashStep;
use crate::children::Child;
use crate::plan::{Client, Level};
use crate::spawn::{self, Conn};

impl Supervisor {
    /// Socket `i` of a wait service is readable: hand it to a new handler,
    /// unless one holds it already or the service may not start one now.
    pub(super) fn hand_over(&mut self, i: usize, now: Instant) {
        let svc_i = self.socks[i].svc;
        if self.socks[i].held.is_some() || !self.may_accept(svc_i, now) {
            return;
        }
        self.services.accepted(svc_i);
        let svc = Arc::clone(&self.services.get(svc_i).svc);
        let addr = self.socks[i].addr.clone();
        let id = self.next_conn;
        self.next_conn += 1;
        // The child's copy: spawn closes the daemon's copy of this one
        // when `conn` drops, and the listener itself stays open.
        let stream = match copy_blocking(&self.socks[i].listener) {
            Ok(fd) => fd,
            Err(e) => {
                let delay = self.services.fork_failed(svc_i, now);
                self.log
                    .event(Level::Error, "handover-failed")
                    .kv("service", &svc.name)
                    .kv("addr", &addr)
                    .kv("error", crate::text::os_error(e))
                    .kv("retry_ms", delay.as_millis())
                    .send();
                return;
            }
        };
        let mut conn = Conn {
            stream,
            client: Client::Listener(addr.clone()),
            id,
            err: None,
            proxy: None,
        };
        let Ok(pipe) = self.stderr_for(svc_i, &svc, &mut conn, now) else {
            set_nonblocking(&conn.stream);
            return;
        };
        let spawned = spawn::spawn(&svc, &conn, &mut self.spawner);
        let read_end = pipe.map(|(r, _w)| r);
        match spawned {
            Ok(pid) => {
                if let Some(r) = read_end {
                    self.watch_stderr(r, &svc, id, pid);
                }
                let source = crate::admit::source_key(&svc.limits, &conn.client);
                self.services.started(svc_i, source, now);
                self.starting.started(pid.as_raw(), svc_i, now);
                self.runnable.forget();
                self.socks[i].held = Some(pid);
                // None at the descriptor limit: reaped by the sweep then.
                let pidfd = self.spawner.take_pidfd();
                self.log
                    .event(Level::Debug, "start")
                    .kv("service", &svc.name)
                    .kv("conn", id)
                    .kv("pid", pid)
                    .kv("peer", &conn.client)
                    .kv("addr", &addr)
                    .opt("reaped_by", pidfd.is_none().then_some("sweep"))
                    .send();
                self.insert_child(svc, &conn, pid, pidfd, source, now);
            }
            Err(e) => {
                set_nonblocking(&conn.stream);
                let delay = self.services.fork_failed(svc_i, now);
                self.log
                    .event(Level::Error, "fork-failed")
                    .kv("service", &svc.name)
                    .kv("conn", id)
                    .kv("peer", &conn.client)
                    .kv("error", e)
                    .kv("retry_ms", delay.as_millis())
                    .send();
            }
        }
    }

    /// A wait handler was reaped after `lived`: its socket, if the daemon
    /// still has it, is polled again, and its service's crash loop is
    /// counted (`svc_i`: the service in the current plan, if it still has
    /// one).
    pub(super) fn handed_back(
        &mut self,
        svc_i: Option<usize>,
        c: &Child,
        lived: Duration,
        now: Instant,
    ) {
        if let Some(s) = self.socks.iter_mut().find(|s| s.held == Some(c.pid)) {
            s.held = None;
            set_nonblocking(&s.listener);
        }
        let Some(i) = svc_i.filter(|&i| self.services.get(i).svc.wait) else {
            return;
        };
        match self.services.wait_exited(i, lived, now) {
            CrashStep::Nothing => {}
            CrashStep::Pause(delay) => self
                .log
                .event(Level::Warn, "wait-backoff")
                .kv("service", &c.service.name)
                .kv("delay_ms", delay.as_millis())
                .kv("lived_ms", lived.as_millis())
                .kv(
                    "error",
                    "its handlers exit within a second of their start: not handed over until the delay has passed",
                )
                .send(),
            CrashStep::Resumed { quick } => self
                .log
                .event(Level::Info, "wait-resumed")
                .kv("service", &c.service.name)
                .kv("quick_exits", quick)
                .kv("lived_ms", lived.as_millis())
                .send(),
        }
    }
}

/// A close-on-exec copy of `sock` for the handler, made blocking.
fn copy_blocking(sock: &impl AsFd) -> Result<OwnedFd, nix::errno::Errno> {
    let fd = sock
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
    let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags & !OFlag::O_NONBLOCK))?;
    Ok(fd)
}

/// Makes `sock` non-blocking again. On a socket the daemon holds this
/// cannot fail; were it to, the next accept on it could block the loop,
/// which only a reload that gives a wait service's address to an
/// accepting service would reach, so the failure is not worth a path.
fn set_nonblocking(sock: &impl AsFd) {
    if let Ok(bits) = fcntl(sock, FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_truncate(bits) | OFlag::O_NONBLOCK;
        let _ = fcntl(sock, FcntlArg::F_SETFL(flags));
    }
}
