//! The control socket (§10.7, tinyinetd(8), CONTROL PROTOCOL): a Unix stream listener and
//! its clients as poll sources, served without ever blocking the loop.
//!
//! One request per connection, one JSON object per line each way. Every
//! read and write is non-blocking; a client's input is bounded
//! (`client::MAX_REQUEST`) and its output is the one reply it asked for. Bounds:
//! - at most [`MAX_CLIENTS`] clients; one more is accepted, told the daemon
//!   is busy (one non-blocking write) and closed at once, so the listener
//!   never stays readable with nobody served (a busy loop) and a flood
//!   cannot queue in the backlog ahead of the administrator;
//! - [`REQUEST_DEADLINE`] from the connection to a complete request line;
//! - `client::REPLY_DEADLINE` from the reply being ready to its last byte
//!   written: a client that does not read is dropped then;
//! - a client waiting for a reload has no deadline of its own: the reload
//!   ends within the resolver's bound (`resolver::DEADLINE`, 30 s).
//!
//! The peer is checked with `SO_PEERCRED` and `SO_PEERGROUPS`: `status`
//! and `metrics` for root, the daemon's user and members of
//! `control_group`; `reload` for root and the daemon's user alone.

use std::io::{self, Write as _};
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags};
use serde_json::{json, Value};

use super::{Source, StartError, Supervisor};
use crate::plan::{ControlGroup, ControlSocket, Level};
use crate::unixsock::{Ownership, UnixName, UnixSocket};
use client::MAX_REQUEST;
use client::{flush, peer_of, queue, read_line, Client, Input, State};

mod client;

/// Clients served at once (§10.7).
pub const MAX_CLIENTS: usize = 16;

/// From the connection to a complete request line.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// Connections taken from the listener in one turn at most.
const ACCEPT_BUDGET: usize = 32;

/// After `accept` failed for want of descriptors or memory, the listener
/// leaves the poll set this long (it would stay readable: a busy loop).
const ACCEPT_RETRY: Duration = Duration::from_millis(250);

/// The listening socket and its file.
pub(super) struct Control {
    /// The listener (non-blocking) and its file, removed when the daemon
    /// stops if it is still the one bound.
    sock: UnixSocket,
    /// Members may read; its name is in the refusal message.
    group: ControlGroup,
    /// The clients being served, in the order they came.
    clients: Vec<Client>,
    /// The next client's id (a `Source` names a client by it).
    next_id: u64,
    /// `accept` failed (EMFILE...): the listener is not polled until then.
    retry_at: Option<Instant>,
}

/// Binds the control socket at `path` (`unixsock`: a stale socket file is
/// replaced, any other file refused, the file removed at the end if it is
/// still ours): mode 0660, group `group`. `make_dir`: create a missing
/// parent first (the default path's; 0755, as the socket's own mode and
/// group decide who may connect).
fn bind(path: &Path, group: &ControlGroup, make_dir: bool) -> Result<Control, String> {
    if make_dir {
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| {
                    format!(
                        "creating the control socket's directory {}: {}",
                        dir.display(),
                        crate::text::io_reason(&e)
                    )
                })?;
        }
    }
    let own = Ownership {
        mode: Some(0o660),
        uid: None,
        gid: Some(group.gid),
    };
    let sock = UnixSocket::bind(&UnixName::Path(path.to_path_buf()), &own, 128)
        .map_err(|e| format!("control socket: {e}"))?;
    Ok(Control {
        sock,
        group: group.clone(),
        clients: Vec::new(),
        next_id: 1,
        retry_at: None,
    })
}

/// The control socket `setting` asks for: `Ok(None)` when it is off, or
/// when the default path cannot be used (logged as a warning); `Err` when
/// an explicit path cannot be used (a start-up error).
pub(super) fn open(
    daemon: &crate::plan::Daemon,
    log: &mut crate::log::Logger,
) -> Result<Option<Control>, StartError> {
    let (setting, group) = (&daemon.control_socket, &daemon.control_group);
    let (path, explicit) = match setting {
        ControlSocket::Off => return Ok(None),
        ControlSocket::Default(p) => (p, false),
        ControlSocket::Explicit(p) => (p, true),
    };
    match bind(path, group, !explicit) {
        Ok(c) => {
            log.event(Level::Info, "control-listen")
                .kv("path", path.display())
                .kv("group", &group.name)
                .send();
            Ok(Some(c))
        }
        Err(e) if explicit => Err(StartError::Control(e)),
        Err(e) => {
            log.event(Level::Warn, "control-unavailable")
                .kv("path", path.display())
                .kv_long(
                    "error",
                    &format!("{e}; running without a control socket (set control_socket to choose another path)"),
                )
                .send();
            Ok(None)
        }
    }
}

impl Control {
    /// Its entries of the poll set: the listener (while there is room for
    /// a client: there always is, see `MAX_CLIENTS`), and each client for
    /// what it waits on.
    pub(super) fn poll_set<'a>(&'a self, fds: &mut Vec<PollFd<'a>>, sources: &mut Vec<Source>) {
        if self.retry_at.is_none_or(|t| t <= Instant::now()) {
            fds.push(PollFd::new(self.sock.listener().as_fd(), PollFlags::POLLIN));
            sources.push(Source::Control);
        }
        for c in &self.clients {
            let events = match c.state {
                State::Writing => PollFlags::POLLOUT,
                // A waiting client is watched for its hang-up.
                State::Reading | State::Reload { .. } => PollFlags::POLLIN,
            };
            fds.push(PollFd::new(c.stream.as_fd(), events));
            sources.push(Source::ControlClient(c.id));
        }
    }

    /// The nearest client deadline, or the listener's retry.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let retry = self.retry_at.filter(|t| *t > Instant::now());
        self.clients
            .iter()
            .filter_map(|c| c.deadline)
            .chain(retry)
            .min()
    }
}

impl Supervisor {
    /// A reload's `control_socket` and `control_group`: a new group is
    /// given to the file (the socket stays); a new path is bound first and
    /// the old socket closed once it is (its clients carry over, so a
    /// waiting `reload` still gets its answer). A new socket that cannot
    /// be bound is logged and the old one kept, default path or not: the
    /// daemon is running and must not lose its control socket to a typo.
    pub(super) fn reconfigure_control(&mut self, old: &crate::plan::Daemon) {
        let new = self.plan.daemon.clone();
        if new.control_socket.path() == old.control_socket.path() {
            if new.control_group != old.control_group {
                if let Some(ctl) = &mut self.control {
                    let own = Ownership {
                        mode: Some(0o660),
                        uid: None,
                        gid: Some(new.control_group.gid),
                    };
                    match ctl.sock.set_ownership(&own) {
                        Ok(()) => ctl.group = new.control_group.clone(),
                        Err(e) => self
                            .log
                            .event(Level::Error, "control-failed")
                            .kv("error", e)
                            .send(),
                    }
                }
            }
            return;
        }
        let Some(path) = new.control_socket.path() else {
            self.control = None;
            return;
        };
        match bind(
            path,
            &new.control_group,
            !matches!(new.control_socket, ControlSocket::Explicit(_)),
        ) {
            Ok(mut c) => {
                self.log
                    .event(Level::Info, "control-listen")
                    .kv("path", path.display())
                    .kv("group", &new.control_group.name)
                    .send();
                if let Some(old) = self.control.take() {
                    c.clients = old.clients;
                    c.next_id = old.next_id;
                }
                self.control = Some(c);
            }
            Err(e) => self
                .log
                .event(Level::Error, "control-failed")
                .kv_long("error", &format!("{e}; the previous control socket stays"))
                .send(),
        }
    }
}

/// A reply line: `{"ok": false, "error": ...}`.
fn error_reply(message: &str) -> Value {
    json!({ "ok": false, "error": message })
}

impl Supervisor {
    /// Serves the control socket's ready sources and drops the clients
    /// whose deadline passed.
    pub(super) fn serve_control(&mut self, now: Instant) {
        if self.control.is_none() {
            return;
        }
        for i in 0..self.ready.len() {
            match self.ready[i] {
                (Source::ControlClient(id), flags) => self.control_io(id, flags, now),
                (Source::Control, _) => self.control_accept(now),
                _ => {}
            }
        }
        let Some(ctl) = &mut self.control else {
            return;
        };
        let before = ctl.clients.len();
        ctl.clients.retain(|c| c.deadline.is_none_or(|t| t > now));
        let dropped = before - ctl.clients.len();
        if dropped > 0 {
            self.log
                .event(Level::Debug, "control-dropped")
                .kv("clients", dropped)
                .kv("reason", "deadline")
                .send();
        }
    }

    /// Accepts what is queued, within the budget.
    fn control_accept(&mut self, now: Instant) {
        for _ in 0..ACCEPT_BUDGET {
            let Some(ctl) = &mut self.control else {
                return;
            };
            let stream = match ctl.sock.listener().accept() {
                Ok((s, _)) => {
                    ctl.retry_at = None;
                    s
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ctl.retry_at = None;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the listener rests a moment (the
                    // clients' deadlines free descriptors). Logged once per
                    // episode: the retry is not logged while it fails.
                    let first = ctl.retry_at.is_none();
                    ctl.retry_at = Some(now + ACCEPT_RETRY);
                    if first {
                        self.log
                            .event(Level::Error, "control-failed")
                            .kv(
                                "error",
                                format!("accepting: {}", crate::text::io_reason(&e)),
                            )
                            .send();
                    }
                    return;
                }
            };
            if ctl.clients.len() >= MAX_CLIENTS {
                let line = format!(
                    "{}\n",
                    error_reply(&format!(
                        "the daemon is serving {MAX_CLIENTS} control clients already; try again"
                    ))
                );
                // One try: a fresh socket's buffer takes it, or it is lost.
                let _ = stream.set_nonblocking(true);
                let _ = (&stream).write(line.as_bytes());
                self.log
                    .event(Level::Debug, "control-dropped")
                    .kv("clients", 1)
                    .kv("reason", "busy")
                    .send();
                continue;
            }
            let peer = match peer_of(&stream) {
                Ok(p) => p,
                Err(e) => {
                    self.log
                        .event(Level::Error, "control-failed")
                        .kv(
                            "error",
                            format!(
                                "reading the peer's credentials: {}",
                                crate::text::io_reason(&e)
                            ),
                        )
                        .send();
                    continue;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let id = ctl.next_id;
            ctl.next_id += 1;
            ctl.clients.push(Client {
                id,
                stream,
                peer,
                input: Vec::new(),
                output: Vec::new(),
                sent: 0,
                state: State::Reading,
                deadline: Some(now + REQUEST_DEADLINE),
            });
        }
    }

    /// One client is ready: read its request, or write its reply.
    fn control_io(&mut self, id: u64, flags: PollFlags, now: Instant) {
        let Some(ctl) = &mut self.control else {
            return;
        };
        let Some(at) = ctl.clients.iter().position(|c| c.id == id) else {
            return;
        };
        let c = &mut ctl.clients[at];
        if c.state == State::Writing {
            if flush(c) {
                ctl.clients.remove(at);
            }
            return;
        }
        match read_line(c) {
            Input::More => {
                if flags.intersects(PollFlags::POLLERR | PollFlags::POLLHUP) {
                    ctl.clients.remove(at);
                }
            }
            Input::Gone => {
                ctl.clients.remove(at);
            }
            Input::TooLong => {
                let reply = error_reply(&format!(
                    "a request is one line of at most {MAX_REQUEST} bytes"
                ));
                self.control_reply(id, &reply, now);
            }
            Input::Line(line) => self.control_request(id, &line, now),
        }
    }

    /// A complete request line from client `id`.
    fn control_request(&mut self, id: u64, line: &[u8], now: Instant) {
        let Some(ctl) = &self.control else {
            return;
        };
        let Some(c) = ctl.clients.iter().find(|c| c.id == id) else {
            return;
        };
        let cmd = serde_json::from_slice::<Value>(line)
            .ok()
            .and_then(|v| v.get("cmd").and_then(Value::as_str).map(String::from));
        let Some(cmd) = cmd else {
            let reply = error_reply("a request is a JSON object like {\"cmd\":\"status\"}");
            return self.control_reply(id, &reply, now);
        };
        let euid = nix::unistd::geteuid().as_raw();
        let p = &c.peer;
        let owner = p.uid == 0 || p.uid == euid;
        let member = p.gid == ctl.group.gid || p.groups.contains(&ctl.group.gid);
        let allowed = match cmd.as_str() {
            "status" | "metrics" => owner || member,
            "reload" => owner,
            other => {
                let reply = error_reply(&format!(
                    "unknown command \"{}\": the commands are status, metrics and reload",
                    crate::text::escape(other)
                ));
                return self.control_reply(id, &reply, now);
            }
        };
        if !allowed {
            let who = if cmd == "reload" {
                format!("root and the daemon's user (uid {euid})")
            } else {
                format!(
                    "root, the daemon's user (uid {euid}) and members of group \"{}\" (control_group)",
                    crate::text::escape(&ctl.group.name)
                )
            };
            let message = format!(
                "permission denied: uid {} may not {cmd} through the control socket {}; only {who} may",
                p.uid,
                ctl.sock.name().path().map(|p| p.display().to_string()).unwrap_or_default()
            );
            self.log
                .event(Level::Warn, "control-refused")
                .kv("cmd", &cmd)
                .kv("uid", p.uid)
                .kv("pid", p.pid)
                .send();
            return self.control_reply(id, &error_reply(&message), now);
        }
        match cmd.as_str() {
            "status" => {
                let reply = json!({ "ok": true, "status": self.document(now) });
                self.control_reply(id, &reply, now);
            }
            "metrics" => {
                let reply = match crate::report::prometheus(&self.document(now)) {
                    Ok(text) => json!({ "ok": true, "metrics": text }),
                    Err(e) => error_reply(&e),
                };
                self.control_reply(id, &reply, now);
            }
            _ => self.control_reload(id, now),
        }
    }

    /// `reload`: starts one, or waits for the next when one is running.
    fn control_reload(&mut self, id: u64, now: Instant) {
        if self.drain.is_some() {
            return self.control_reply(id, &error_reply("the daemon is stopping"), now);
        }
        let skip = self.reloading.is_some();
        if let Some(c) = self
            .control
            .as_mut()
            .and_then(|ctl| ctl.clients.iter_mut().find(|c| c.id == id))
        {
            c.state = State::Reload { skip };
            c.deadline = None;
        }
        // Starts it, or asks the running one for another after it. A
        // resolver that cannot start answers at once (`reload_failed`).
        self.reload(now);
    }

    /// A reload ended with `reply`: answers the clients waiting for it.
    pub(super) fn reload_answer(&mut self, reply: &Value) {
        let Some(ctl) = &mut self.control else {
            return;
        };
        let line = format!("{reply}\n").into_bytes();
        let now = Instant::now();
        // Written at once as far as the socket takes it: a reload that
        // turns the control socket off closes the clients right after.
        ctl.clients.retain_mut(|c| match c.state {
            State::Reload { skip: true } => {
                c.state = State::Reload { skip: false };
                true
            }
            State::Reload { skip: false } => {
                queue(c, line.clone(), now);
                !flush(c)
            }
            State::Reading | State::Writing => true,
        });
    }

    /// The daemon is stopping: no reload will end.
    pub(super) fn control_stopping(&mut self) {
        let reply = error_reply("the daemon is stopping; the reload was abandoned");
        if let Some(ctl) = &mut self.control {
            let line = format!("{reply}\n").into_bytes();
            let now = Instant::now();
            for c in &mut ctl.clients {
                if matches!(c.state, State::Reload { .. }) {
                    queue(c, line.clone(), now);
                }
            }
        }
    }

    /// Queues `reply` for client `id` and writes what it can now.
    fn control_reply(&mut self, id: u64, reply: &Value, now: Instant) {
        let Some(ctl) = &mut self.control else {
            return;
        };
        let Some(at) = ctl.clients.iter().position(|c| c.id == id) else {
            return;
        };
        queue(&mut ctl.clients[at], format!("{reply}\n").into_bytes(), now);
        if flush(&mut ctl.clients[at]) {
            ctl.clients.remove(at);
        }
    }
}
