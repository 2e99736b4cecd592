//! Who is at the other end of a connection (`Client`: what the handler's
//! environment and the log lines say of it), and what `max_per_source`
//! counts it by (`Source`).

use std::fmt;
use std::net::SocketAddr;

use ipnet::IpNet;

use super::{Endpoint, UnixName};

/// Who is at the other end of a connection, as the handler's environment
/// and the log lines tell it. New kinds of connection are new variants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Client {
    /// An IP connection: the client's address and the one it connected to.
    Inet {
        /// `TCPREMOTEIP`, `TCPREMOTEPORT`.
        peer: SocketAddr,
        /// `TCPLOCALIP`, `TCPLOCALPORT`.
        local: SocketAddr,
    },
    /// A wait service's handler: it gets the socket itself (`Endpoint`),
    /// serves whoever comes, and has no per-client variables; its
    /// environment has `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`
    /// instead.
    Listener(Endpoint),
    /// A Unix stream connection: the peer's credentials as the kernel
    /// recorded them at connect (`SO_PEERCRED`), and the socket it
    /// connected to.
    Unix {
        /// `UNIXREMOTEPID`.
        pid: i32,
        /// `UNIXREMOTEUID`; also what `max_per_source` counts by.
        uid: u32,
        /// `UNIXREMOTEGID`.
        gid: u32,
        /// The listening socket: `UNIXLOCALPATH` (see [`Client::local_path`]).
        path: UnixName,
    },
}

impl Client {
    /// `UNIXLOCALPATH` of a Unix connection: the socket's path, or for an
    /// abstract socket `@` and its name, as written after `unix:` (an
    /// abstract name has no path; the `@` form is what `ss` shows and what
    /// the file said, and it cannot be mistaken for a path, which is
    /// absolute).
    pub fn local_path(&self) -> Option<String> {
        match self {
            Client::Unix { path, .. } => Some(match path {
                UnixName::Path(p) => p.display().to_string(),
                UnixName::Abstract(n) => format!("@{}", String::from_utf8_lossy(n)),
            }),
            Client::Inet { .. } | Client::Listener(_) => None,
        }
    }
}

/// What `max_per_source` counts by (`admit::decide`): one key per kind of
/// client, so TCP and Unix connections go through the one decision and
/// the one count. Here, not in `admit`, because a running handler
/// (`children::Child`) holds the key it was counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IP client's source prefix (`source_prefix_v4`/`_v6`).
    Net(IpNet),
    /// A Unix client's user id (`SO_PEERCRED`), SPEC §10.4.
    Uid(u32),
}

/// The `peer=` of log lines: `-` for a wait handler, which has no one
/// client.
impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Client::Inet { peer, .. } => write!(f, "{peer}"),
            // One token, no spaces and no `=`: `peer=uid:1000/gid:1000/pid:4242`.
            Client::Unix { pid, uid, gid, .. } => write!(f, "uid:{uid}/gid:{gid}/pid:{pid}"),
            Client::Listener(_) => f.write_str("-"),
        }
    }
}
