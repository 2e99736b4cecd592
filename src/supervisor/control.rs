//! The control socket (§10.7, docs/CONTROL.md): a Unix stream listener and
//! its clients as poll sources, served without ever blocking the loop.
//!
//! One request per connection, one JSON object per line each way. Every
//! read and write is non-blocking; a client's input is bounded
//! ([`MAX_REQUEST`]) and its output is the one reply it asked for. Bounds:
//! - at most [`MAX_CLIENTS`] clients; one more is accepted, told the daemon
//!   is busy (one non-blocking write) and closed at once, so the listener
//!   never stays readable with nobody served (a busy loop) and a flood
//!   cannot queue in the backlog ahead of the administrator;
//! - [`REQUEST_DEADLINE`] from the connection to a complete request line;
//! - [`REPLY_DEADLINE`] from the reply being ready to its last byte
//!   written: a client that does not read is dropped then;
//! - a client waiting for a reload has no deadline of its own: the reload
//!   ends within the resolver's bound (`resolver::DEADLINE`, 30 s).
//!
//! The peer is checked with `SO_PEERCRED` and `SO_PEERGROUPS`: `status`
//! and `metrics` for root, the daemon's user and members of
//! `control_group`; `reload` for root and the daemon's user alone.

use std::io::{self, Read as _, Write as _};
use std::os::fd::AsFd;
use std::os::unix::fs::{
    DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _,
};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags};
use serde_json::{json, Value};

use super::{Source, StartError, Supervisor};
use crate::plan::{ControlGroup, ControlSocket, Level};

/// Clients served at once (§10.7).
pub const MAX_CLIENTS: usize = 16;

/// The longest request line; a longer one is refused and the client closed.
pub const MAX_REQUEST: usize = 4096;

/// From the connection to a complete request line.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// From the reply being ready to its last byte written.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(5);

/// Connections taken from the listener in one turn at most.
const ACCEPT_BUDGET: usize = 32;

/// The listening socket and its file.
pub(super) struct Control {
    /// Non-blocking.
    listener: UnixListener,
    /// The file, removed when the daemon stops if it is still ours.
    path: PathBuf,
    /// (dev, ino) of the file bound: another file at the path is not ours.
    id: (u64, u64),
    /// Members may read; its name is in the refusal message.
    group: ControlGroup,
    /// The clients being served, in the order they came.
    clients: Vec<Client>,
    /// The next client's id (a `Source` names a client by it).
    next_id: u64,
}

/// Who is at the other end, from the kernel (`SO_PEERCRED`, `SO_PEERGROUPS`).
struct Peer {
    pid: i32,
    uid: u32,
    gid: u32,
    /// Supplementary groups.
    groups: Vec<u32>,
}

/// Where a client is in its one exchange.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Its request line is being read.
    Reading,
    /// It asked for a reload; `skip`: a reload was running then, and the
    /// one it waits for is the next (the file as it is now).
    Reload { skip: bool },
    /// Its reply is being written.
    Writing,
}

/// One control client.
struct Client {
    /// Its `Source::ControlClient` id.
    id: u64,
    /// Non-blocking.
    stream: UnixStream,
    /// Checked against each command.
    peer: Peer,
    /// The request line so far, at most `MAX_REQUEST` bytes.
    input: Vec<u8>,
    /// The reply line.
    output: Vec<u8>,
    /// Bytes of `output` written.
    sent: usize,
    state: State,
    /// Dropped then, unless done (`None` while waiting for a reload).
    deadline: Option<Instant>,
}

impl Drop for Control {
    /// Removes the socket file if it is still the one bound (a daemon
    /// started after us may have replaced it).
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Why the socket could not be bound; `held`: another live daemon has it.
pub(super) struct BindError {
    held: bool,
    message: String,
}

/// Binds the control socket at `path`: a stale socket file (nobody accepts
/// on it) is replaced, any other existing file is refused; mode 0660,
/// group `group`. `make_dir`: create a missing parent (the default path).
fn bind(path: &Path, group: &ControlGroup, make_dir: bool) -> Result<Control, BindError> {
    let p = path.display();
    let fail = |held, message| BindError { held, message };
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(fail(
                false,
                format!("control socket {p}: the path exists and is not a socket; refusing to replace it"),
            ));
        }
        match UnixStream::connect(path) {
            Ok(_) => {
                return Err(fail(
                    true,
                    format!("control socket {p}: another daemon is listening on it"),
                ))
            }
            // Stale: nobody accepts on it.
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                std::fs::remove_file(path).map_err(|e| {
                    fail(
                        false,
                        format!(
                            "control socket {p}: removing the stale socket: {}",
                            crate::text::io_reason(&e)
                        ),
                    )
                })?;
            }
            Err(e) => {
                return Err(fail(
                    false,
                    format!("control socket {p}: {}", crate::text::io_reason(&e)),
                ))
            }
        }
    }
    if make_dir {
        if let Some(dir) = path.parent() {
            // 0755: the socket's own mode and group decide who connects.
            let made = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir);
            if let Err(e) = made {
                return Err(fail(
                    false,
                    format!(
                        "control socket {p}: creating {}: {}",
                        dir.display(),
                        crate::text::io_reason(&e)
                    ),
                ));
            }
        }
    }
    let io = |doing: &str, e: io::Error| {
        fail(
            false,
            format!(
                "control socket {p}: {doing}: {}",
                crate::text::io_reason(&e)
            ),
        )
    };
    let listener = UnixListener::bind(path).map_err(|e| io("binding", e))?;
    // Until the chmod the file has the umask's mode (0755 by default):
    // only the daemon's user can connect then, never more.
    std::os::unix::fs::chown(path, None, Some(group.gid))
        .map_err(|e| io("setting its group", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| io("setting its mode", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| io("making it non-blocking", e))?;
    let m = std::fs::symlink_metadata(path).map_err(|e| io("reading it back", e))?;
    Ok(Control {
        listener,
        path: path.to_path_buf(),
        id: (m.dev(), m.ino()),
        group: group.clone(),
        clients: Vec::new(),
        next_id: 1,
    })
}

/// The control socket `setting` asks for: `Ok(None)` when it is off, or
/// when the default path cannot be used (logged as a warning); `Err` when
/// an explicit path cannot be used (a start-up error).
pub(super) fn open(
    setting: &ControlSocket,
    group: &ControlGroup,
    log: &mut crate::log::Logger,
) -> Result<Option<Control>, StartError> {
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
        Err(e) if explicit => Err(StartError::Control(e.message)),
        Err(e) => {
            log.event(Level::Warn, "control-unavailable")
                .kv("path", path.display())
                .kv("held", e.held)
                .kv_long("error", &format!("{}; running without a control socket (set control_socket to choose another path)", e.message))
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
        fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        sources.push(Source::Control);
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

    /// The nearest client deadline.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.clients.iter().filter_map(|c| c.deadline).min()
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
            let stream = match ctl.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the next turn tries again; the
                    // clients' deadlines free descriptors.
                    self.log
                        .event(Level::Error, "control-failed")
                        .kv("error", crate::text::io_reason(&e))
                        .send();
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
                ctl.path.display()
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
        for c in &mut ctl.clients {
            match c.state {
                State::Reload { skip: true } => c.state = State::Reload { skip: false },
                State::Reload { skip: false } => queue(c, line.clone(), now),
                State::Reading | State::Writing => {}
            }
        }
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

/// The client's reply is `line`, due within `REPLY_DEADLINE`.
fn queue(c: &mut Client, line: Vec<u8>, now: Instant) {
    c.output = line;
    c.sent = 0;
    c.state = State::Writing;
    c.deadline = Some(now + REPLY_DEADLINE);
}

/// Writes what the socket takes; true when the client is done (all
/// written, or it went away).
fn flush(c: &mut Client) -> bool {
    while c.sent < c.output.len() {
        match (&c.stream).write(&c.output[c.sent..]) {
            Ok(0) => return true,
            Ok(n) => c.sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
    true
}

/// What a read gave.
enum Input {
    /// No complete line yet.
    More,
    /// EOF or an error: the client is gone.
    Gone,
    /// Over `MAX_REQUEST` without a newline.
    TooLong,
    /// A complete request line (without its newline).
    Line(Vec<u8>),
}

/// Reads what is there. A waiting client's bytes are read and dropped
/// (it has sent its request), so its hang-up is seen.
fn read_line(c: &mut Client) -> Input {
    let mut buf = [0u8; 1024];
    // Bounded: a client that writes as fast as we read gets its turn again
    // at the next poll.
    for _ in 0..8 {
        match (&c.stream).read(&mut buf) {
            Ok(0) => return Input::Gone,
            Ok(n) if c.state != State::Reading => {
                let _ = n;
            }
            Ok(n) => {
                c.input.extend_from_slice(&buf[..n]);
                if let Some(end) = c.input.iter().position(|&b| b == b'\n') {
                    c.input.truncate(end);
                    return Input::Line(std::mem::take(&mut c.input));
                }
                if c.input.len() > MAX_REQUEST {
                    return Input::TooLong;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Input::More,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Input::Gone,
        }
    }
    Input::More
}

/// The peer's pid, uid, gid and supplementary groups.
fn peer_of(s: &UnixStream) -> io::Result<Peer> {
    let cred = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials)?;
    let groups = crate::spawn::peer_groups(s.as_fd())?;
    Ok(Peer {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
        groups,
    })
}
