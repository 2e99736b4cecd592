//! Connections of a `proxy_protocol` service (SPEC §10.6) between accept
//! and admission: from an untrusted peer refused at once, before a byte is
//! read; from a trusted one held as a poll source until its PROXY header
//! is in, with a deadline (`proxy_timeout`). Nothing here waits.
//!
//! Each time one is readable the bytes it has sent are *peeked*
//! (`MSG_PEEK`) after those already taken, and `proxy_header::parse`
//! judges them: a complete header is then read, exactly its bytes, so the
//! client's first bytes stay in the socket for the handler even when they
//! came in the same segment; an incomplete one is read whole (every byte
//! of it is the header's, the parser guarantees it), so the socket is not
//! readable again until more arrives and the loop never spins on it.
//!
//! A pending header counts toward `max_connections` and toward its
//! service's `max_instances` like the handler it becomes (see
//! `ServiceTable::header_pending`): idle connections from a proxy cannot
//! exhaust the daemon, and one whose header completes always has its slot.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags};
use nix::sys::socket::{recv, MsgFlags};

use super::{Source, Supervisor};
use crate::admit::Reason;
use crate::plan::{Client, Level, Proxy, Service};
use crate::proxy_header::{self, Parse, MAX_HEADER};
use crate::shrink::Shrink;
use crate::spawn::{Conn, Proxied};
use crate::text::os_error;

/// How far a pending connection has come.
enum Phase {
    /// Its header is being read: the bytes taken from the socket so far,
    /// all of them the header's (empty until a header comes in pieces).
    Header(Vec<u8>),
    /// A v2 `LOCAL` header was read: the proxy's own connection, a health
    /// check as a rule. It gets a handler once it sends a byte or its
    /// deadline passes; one that closes first (HAProxy's checks send the
    /// header and reset the connection) gets none: starting a handler per
    /// check, every few seconds per proxy, would only feed it a reset.
    Local,
}

/// One connection waiting for its header.
pub(super) struct Pending {
    /// The accepted connection: `peer` is the proxy until the header
    /// names the client.
    conn: Conn,
    /// The service as it was at accept: its `proxy_protocol` says how
    /// the header is read; its name finds the service again after it.
    service: Arc<Service>,
    /// `proxy_timeout` from the accept: refused then (a `Local` one is
    /// served then).
    deadline: Instant,
    /// Header or local.
    phase: Phase,
}

/// What became of a pending connection this time.
enum Step {
    /// Nothing yet: it stays pending.
    Wait,
    /// Its header is in (or a `LOCAL` one has sent a byte): admit it.
    Admit,
    /// A bad, late or cut-off header: refused (`reason=proxy_header`),
    /// with what was wrong.
    Refuse(String),
    /// A `LOCAL` connection closed before sending a byte: closed, no
    /// handler (`proxy-check`), with how it ended.
    Checked(&'static str),
}

/// The pending connections, by connection id.
#[derive(Default)]
pub(super) struct Proxies {
    /// Every connection whose header is awaited.
    pending: HashMap<u64, Pending>,
    /// Reused for every peek: the bytes taken so far, then those peeked.
    scratch: Vec<u8>,
    /// Reused every turn: the ids whose deadline has passed.
    due: Vec<u64>,
}

impl Proxies {
    /// Connections pending: they count toward `max_connections`.
    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Puts every pending connection in the poll set.
    pub(super) fn poll_set<'a>(&'a self, fds: &mut Vec<PollFd<'a>>, sources: &mut Vec<Source>) {
        for (id, p) in &self.pending {
            fds.push(PollFd::new(p.conn.stream.as_fd(), PollFlags::POLLIN));
            sources.push(Source::Proxy(*id));
        }
    }

    /// The nearest `proxy_timeout`.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    /// The service each pending connection belongs to, by name (to count
    /// them again after a reload rebuilt the service table).
    pub(super) fn service_names(&self) -> impl Iterator<Item = &str> {
        self.pending.values().map(|p| p.service.name.as_str())
    }
}

impl Pending {
    /// Reads what the connection has sent, never past its header.
    fn step(&mut self, scratch: &mut Vec<u8>) -> Step {
        let fd = self.conn.stream.as_raw_fd();
        let got = match &mut self.phase {
            Phase::Local => return local_step(fd),
            Phase::Header(got) => got,
        };
        let have = got.len();
        scratch.clear();
        scratch.extend_from_slice(got);
        scratch.resize(MAX_HEADER, 0);
        if have >= MAX_HEADER {
            // The parser decides within MAX_HEADER bytes; never reached.
            return Step::Refuse("header too long".into());
        }
        let peek = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        let n = match recv(fd, &mut scratch[have..], peek) {
            Ok(0) => return Step::Refuse("closed before a complete header".into()),
            Ok(n) => n,
            Err(Errno::EAGAIN | Errno::EINTR) => return Step::Wait,
            Err(e) => return Step::Refuse(format!("reading the header: {}", os_error(e))),
        };
        let version = self.service.proxy.as_ref().map(|p| p.version);
        let Some(version) = version else {
            return Step::Refuse("the service reads no PROXY header".into());
        };
        match proxy_header::parse(&scratch[..have + n], version) {
            Parse::Invalid(why) => Step::Refuse(why.into()),
            Parse::Incomplete => {
                // Every byte seen is the header's: take them all.
                if let Err(why) = take(fd, &mut scratch[have..have + n]) {
                    return Step::Refuse(why);
                }
                got.extend_from_slice(&scratch[have..have + n]);
                Step::Wait
            }
            Parse::Complete(h) => {
                // The bytes taken were an incomplete header: it is longer.
                let Some(rest) = scratch.get_mut(have..h.len) else {
                    return Step::Refuse("header shorter than the bytes taken".into());
                };
                if let Err(why) = take(fd, rest) {
                    return Step::Refuse(why);
                }
                let Client::Inet { peer: proxy, .. } = self.conn.client else {
                    // The config allows proxy_protocol on IP services only.
                    return Step::Refuse("a PROXY header on a connection that is not TCP".into());
                };
                if let Some((client, destination)) = h.addrs {
                    self.conn.client = Client::Inet {
                        peer: client,
                        local: destination,
                    };
                }
                let vars = h.tlvs.into_iter().map(|(t, v)| (t.var(), v)).collect();
                self.conn.proxy = Some(Box::new(Proxied { addr: proxy, vars }));
                if h.local {
                    self.phase = Phase::Local;
                    return local_step(fd);
                }
                Step::Admit
            }
        }
    }
}

/// Reads exactly `buf.len()` bytes that a peek has just seen.
fn take(fd: RawFd, buf: &mut [u8]) -> Result<(), String> {
    match recv(fd, buf, MsgFlags::MSG_DONTWAIT) {
        Ok(n) if n == buf.len() => Ok(()),
        Ok(n) => Err(format!("read {n} of the {} header bytes seen", buf.len())),
        Err(e) => Err(format!("reading the header: {}", os_error(e))),
    }
}

/// A `LOCAL` connection: has it sent a byte, or closed?
fn local_step(fd: RawFd) -> Step {
    let mut byte = [0u8; 1];
    match recv(fd, &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
        Ok(0) => Step::Checked("closed"),
        Ok(_) => Step::Admit,
        Err(Errno::EAGAIN | Errno::EINTR) => Step::Wait,
        Err(Errno::ECONNRESET) => Step::Checked("reset"),
        Err(_) => Step::Checked("failed"),
    }
}

impl Supervisor {
    /// A connection accepted by `svc_i`, a `proxy` service: refused now if
    /// its peer is not trusted, else pending (and read at once: the
    /// header has often arrived with the handshake).
    pub(super) fn hold_for_header(
        &mut self,
        svc_i: usize,
        conn: Conn,
        proxy: &Proxy,
        now: Instant,
    ) {
        let trusted = match &conn.client {
            Client::Inet { peer, .. } => {
                let peer = peer.ip().to_canonical();
                proxy.trusted.iter().any(|n| n.contains(&peer))
            }
            Client::Unix { .. } | Client::Listener(_) => false,
        };
        if !trusted {
            self.log_refusal(svc_i, &conn, Reason::UntrustedProxy, None, now);
            return; // dropping `conn` closes it, unread
        }
        self.services.header_pending(svc_i);
        let id = conn.id;
        let pending = Pending {
            conn,
            service: Arc::clone(&self.services.get(svc_i).svc),
            deadline: now + proxy.timeout,
            phase: Phase::Header(Vec::new()),
        };
        self.proxies.pending.insert(id, pending);
        self.header_ready(id, now);
    }

    /// Reads the pending connections the poll found readable, then ends
    /// those whose deadline has passed.
    pub(super) fn read_headers(&mut self, now: Instant) {
        for i in 0..self.ready.len() {
            if let (Source::Proxy(id), _) = self.ready[i] {
                self.header_ready(id, now);
            }
        }
        let mut due = std::mem::take(&mut self.proxies.due);
        due.extend(
            self.proxies
                .pending
                .iter()
                .filter(|(_, p)| p.deadline <= now)
                .map(|(id, _)| *id),
        );
        for id in due.drain(..) {
            let Some(p) = self.proxies.pending.get(&id) else {
                continue;
            };
            let step = match (&p.phase, &p.service.proxy) {
                // A LOCAL connection that neither spoke nor closed: it may
                // expect the server to speak first.
                (Phase::Local, _) => Step::Admit,
                (Phase::Header(_), Some(proxy)) => Step::Refuse(format!(
                    "no complete header within {}",
                    humantime::format_duration(proxy.timeout)
                )),
                (Phase::Header(_), None) => Step::Refuse("no complete header in time".into()),
            };
            self.finish_header(id, step, now);
        }
        due.shrink_after_burst();
        self.proxies.due = due;
        // After a burst of pending headers, the table gives its memory back.
        self.proxies.pending.shrink_after_burst();
    }

    /// Connection `id` is readable (or just accepted).
    fn header_ready(&mut self, id: u64, now: Instant) {
        let Proxies {
            pending, scratch, ..
        } = &mut self.proxies;
        let Some(p) = pending.get_mut(&id) else {
            return;
        };
        let step = p.step(scratch);
        self.finish_header(id, step, now);
    }

    /// Acts on what `step` found: admission, a refusal, a quiet close.
    fn finish_header(&mut self, id: u64, step: Step, now: Instant) {
        if matches!(step, Step::Wait) {
            return;
        }
        let Some(p) = self.proxies.pending.remove(&id) else {
            return;
        };
        let Some(i) = self.services.position(&p.service.name) else {
            self.log_dropped(&p, "its service was removed by a reload");
            return;
        };
        self.services.header_done(i);
        match step {
            Step::Wait => {}
            Step::Admit => self.admit(i, p.conn, now),
            Step::Refuse(why) => self.log_refusal(i, &p.conn, Reason::ProxyHeader, Some(&why), now),
            Step::Checked(how) => self
                .log
                .event(Level::Debug, "proxy-check")
                .kv("service", &p.service.name)
                .kv("conn", p.conn.id)
                .kv("peer", &p.conn.client)
                .opt("proxy", p.conn.proxy.as_ref().map(|x| x.addr))
                .kv("how", how)
                .send(),
        }
    }

    /// The drain stopped waiting (a second SIGTERM, `shutdown_timeout`):
    /// every pending connection is closed.
    pub(super) fn drop_headers(&mut self) {
        for (_, p) in std::mem::take(&mut self.proxies.pending) {
            if let Some(i) = self.services.position(&p.service.name) {
                self.services.header_done(i);
            }
            self.log_dropped(&p, "shutdown");
        }
    }

    fn log_dropped(&mut self, p: &Pending, why: &str) {
        self.log
            .event(Level::Info, "proxy-dropped")
            .kv("service", &p.service.name)
            .kv("conn", p.conn.id)
            .kv("peer", &p.conn.client)
            .opt("proxy", p.conn.proxy.as_ref().map(|x| x.addr))
            .kv("reason", why)
            .send();
    }
}
