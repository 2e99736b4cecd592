//! One control client: its state, reading its request line and writing its
//! reply without blocking, and who it is (`SO_PEERCRED`, `SO_PEERGROUPS`).

use std::io::{self, Read as _, Write as _};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// The longest request line; a longer one is refused and the client closed.
pub const MAX_REQUEST: usize = 4096;

/// From the reply being ready to its last byte written.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(5);

/// Who is at the other end, from the kernel (`SO_PEERCRED`, `SO_PEERGROUPS`).
pub(super) struct Peer {
    pub(super) pid: i32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// Supplementary groups.
    pub(super) groups: Vec<u32>,
}

/// Where a client is in its one exchange.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Its request line is being read.
    Reading,
    /// It asked for a reload; `skip`: a reload was running then, and the
    /// one it waits for is the next (the file as it is now).
    Reload { skip: bool },
    /// Its reply is being written.
    Writing,
}

/// One control client.
pub(super) struct Client {
    /// Its `Source::ControlClient` id.
    pub(super) id: u64,
    /// Non-blocking.
    pub(super) stream: UnixStream,
    /// Checked against each command.
    pub(super) peer: Peer,
    /// The request line so far, at most `MAX_REQUEST` bytes.
    pub(super) input: Vec<u8>,
    /// The reply line.
    pub(super) output: Vec<u8>,
    /// Bytes of `output` written.
    pub(super) sent: usize,
    pub(super) state: State,
    /// Dropped then, unless done (`None` while waiting for a reload).
    pub(super) deadline: Option<Instant>,
}

/// The client's reply is `line`, due within `REPLY_DEADLINE`.
pub(super) fn queue(c: &mut Client, line: Vec<u8>, now: Instant) {
    c.output = line;
    c.sent = 0;
    c.state = State::Writing;
    c.deadline = Some(now + REPLY_DEADLINE);
}

/// Writes what the socket takes; true when the client is done (all
/// written, or it went away).
pub(super) fn flush(c: &mut Client) -> bool {
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
pub(super) enum Input {
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
pub(super) fn read_line(c: &mut Client) -> Input {
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
pub(super) fn peer_of(s: &UnixStream) -> io::Result<Peer> {
    let (pid, uid, gid) = crate::unixsock::peer_cred(s.as_fd())?;
    let groups = crate::spawn::peer_groups(s.as_fd())?;
    Ok(Peer {
        pid,
        uid,
        gid,
        groups,
    })
}
