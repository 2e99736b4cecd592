//! The plain values of SPEC §10.3, §10.4 and §10.5: a Unix socket's name,
//! the options of a service's listening sockets, and the protocol of its
//! IP addresses.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::Endpoint;

/// A Unix socket's name: a path in the filesystem, or a name in Linux's
/// abstract namespace (no file; `unix:@name`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UnixName {
    /// `unix:/run/foo.sock`: an absolute path.
    Path(PathBuf),
    /// `unix:@name`: the name's bytes, without the leading NUL.
    Abstract(Vec<u8>),
}

/// The most bytes of a socket address's path (`sun_path` holds 108,
/// one of them the terminating NUL; an abstract name has the leading NUL).
pub const MAX_NAME: usize = 107;

impl UnixName {
    /// Parses what follows `unix:` in a listen address: an absolute path,
    /// or `@` and an abstract name.
    pub fn parse(s: &str) -> Result<UnixName, String> {
        if let Some(name) = s.strip_prefix('@') {
            if name.is_empty() {
                return Err("an abstract socket needs a name after \"@\"".into());
            }
            if name.len() > MAX_NAME - 1 {
                return Err(format!(
                    "an abstract name may have at most {} bytes, this one has {}",
                    MAX_NAME - 1,
                    name.len()
                ));
            }
            return Ok(UnixName::Abstract(name.as_bytes().to_vec()));
        }
        if !s.starts_with('/') {
            return Err(format!(
                "\"{s}\" is not an absolute path (write unix:/PATH, or unix:@NAME for an abstract socket)"
            ));
        }
        if s.len() > MAX_NAME {
            return Err(format!(
                "a socket path may have at most {MAX_NAME} bytes, this one has {}",
                s.len()
            ));
        }
        if s.ends_with('/') {
            return Err(format!("\"{s}\" names a directory, not a socket file"));
        }
        Ok(UnixName::Path(PathBuf::from(s)))
    }

    /// The filesystem path, for a path socket.
    pub fn path(&self) -> Option<&Path> {
        match self {
            UnixName::Path(p) => Some(p),
            UnixName::Abstract(_) => None,
        }
    }
}

impl fmt::Display for UnixName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnixName::Path(p) => write!(f, "unix:{}", p.display()),
            UnixName::Abstract(n) => write!(f, "unix:@{}", String::from_utf8_lossy(n)),
        }
    }
}

/// `keepalive` and its three values; `None` values keep the kernel's
/// (`net.ipv4.tcp_keepalive_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Keepalive {
    /// `keepalive_idle`: `TCP_KEEPIDLE`, in seconds.
    pub idle: Option<u32>,
    /// `keepalive_interval`: `TCP_KEEPINTVL`, in seconds.
    pub interval: Option<u32>,
    /// `keepalive_count`: `TCP_KEEPCNT`.
    pub count: Option<u32>,
}

/// The socket options of a service's listeners (SPEC §10.3) and the mode
/// and owner of its Unix socket files (§10.4). Set on the listening socket:
/// what accepted connections inherit from it is never set per connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SockOpts {
    /// `backlog`: the listen queue (the kernel caps it at somaxconn).
    pub backlog: u32,
    /// `keepalive` (or any of its three values): `SO_KEEPALIVE`; `None` off.
    pub keepalive: Option<Keepalive>,
    /// `nodelay`: `TCP_NODELAY`.
    pub nodelay: bool,
    /// `defer_accept`: `TCP_DEFER_ACCEPT`, in seconds; 0 is off.
    pub defer_accept: u32,
    /// `reuse_port`: `SO_REUSEPORT` (set before bind).
    pub reuse_port: bool,
    /// `free_bind`: `IP_FREEBIND` (set before bind).
    pub free_bind: bool,
    /// `bind_device`: `SO_BINDTODEVICE` (set before bind).
    pub bind_device: Option<String>,
    /// `receive_buffer`: `SO_RCVBUF`, bytes (the kernel doubles it).
    pub receive_buffer: Option<u32>,
    /// `send_buffer`: `SO_SNDBUF`, bytes (likewise).
    pub send_buffer: Option<u32>,
    /// `socket_mode`: a Unix socket file's permission bits.
    pub socket_mode: Option<u32>,
    /// `socket_user`: its owner, as written and resolved.
    pub socket_user: Option<(String, u32)>,
    /// `socket_group`: its group, as written and resolved.
    pub socket_group: Option<(String, u32)>,
}

/// `backlog`'s default.
pub const DEFAULT_BACKLOG: u32 = 4096;

impl Default for SockOpts {
    fn default() -> Self {
        SockOpts {
            backlog: DEFAULT_BACKLOG,
            keepalive: None,
            nodelay: false,
            defer_accept: 0,
            reuse_port: false,
            free_bind: false,
            bind_device: None,
            receive_buffer: None,
            send_buffer: None,
            socket_mode: None,
            socket_user: None,
            socket_group: None,
        }
    }
}

impl SockOpts {
    /// Why a socket with options `self` cannot become one with `new` in
    /// place: the options the kernel reads only at `bind` differ, or a
    /// buffer size is no longer given. `None`:
    /// every difference can be set on the bound socket.
    pub fn rebind_reason(&self, new: &SockOpts) -> Option<&'static str> {
        if self.reuse_port != new.reuse_port {
            Some("reuse_port")
        } else if self.free_bind != new.free_bind {
            Some("free_bind")
        } else if self.bind_device != new.bind_device {
            Some("bind_device")
        } else if self.receive_buffer.is_some() && new.receive_buffer.is_none() {
            // Once set, the kernel no longer sizes the buffer itself, and
            // nothing turns that back on.
            Some("receive_buffer")
        } else if self.send_buffer.is_some() && new.send_buffer.is_none() {
            Some("send_buffer")
        } else {
            None
        }
    }
}

/// The `protocol` key: what an IP `listen` address is bound for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Stream sockets (the default).
    #[default]
    Tcp,
    /// Datagram sockets; a UDP service is always a wait service.
    Udp,
}

impl Protocol {
    /// The key's value as written, and shown by `--check`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// `PROTO=` in a handler's environment.
    pub fn env(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }

    /// The endpoint of an IP address bound for this protocol.
    pub fn endpoint(self, a: SocketAddr) -> Endpoint {
        match self {
            Protocol::Tcp => Endpoint::Tcp(a),
            Protocol::Udp => Endpoint::Udp(a),
        }
    }

    /// What status lines and `--check` append to an address of this
    /// protocol (as [`Endpoint`]'s `Display` does).
    pub fn suffix(self) -> &'static str {
        match self {
            Protocol::Tcp => "",
            Protocol::Udp => "/udp",
        }
    }
}
