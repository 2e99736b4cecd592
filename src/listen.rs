//! Listening sockets for a [`Plan`]: bind them, or adopt the ones systemd
//! passed; on reload, keep every socket whose address is unchanged.
//!
//! # A reload never loses a service's sockets silently
//!
//! New addresses are bound while the removed ones are still open, so no
//! client is refused during a reload, except where the two overlap: the
//! same port, one of them a wildcard (`127.0.0.1:P` → `0.0.0.0:P`). The
//! kernel refuses the second of those while the first listens, so the old
//! socket is closed first (clients queued on it are reset). If a service
//! cannot open one of its new addresses, it keeps the sockets it had that
//! the new file removed (they are still open, or one closed for an overlap
//! is bound again), and the caller logs `listen-failed` and `listen-kept`:
//! the service goes on serving where it did rather than nowhere. The next
//! reload tries the new addresses again.
//!
//! Closing the old socket frees its address only if no other process holds
//! a copy of its descriptor: a handler stopped between clone and exec does
//! (its descriptor table is a copy of the daemon's until the exec closes
//! it). Then both the new bind and binding the old address again fail, and
//! the old address is reported lost (`listen-lost`), loudly. Binding the
//! new socket first with SO_REUSEPORT on both would avoid the gap, but the
//! kernel keeps the port open to any same-user SO_REUSEPORT socket after
//! the option is cleared, so a second instance could share it unnoticed.
//!
//! Every socket is non-blocking (a connection reset between `poll` and
//! `accept` must not block the loop) and close-on-exec (no handler ever
//! inherits a listener).

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

use nix::errno::Errno;
use nix::sys::socket::{
    self, sockopt, AddressFamily, SockFlag, SockType, SockaddrLike, SockaddrStorage, UnixAddr,
};

use crate::plan::{Endpoint, Plan, SockOpts, UnixName};
use crate::unixsock::{Ownership, UnixError, UnixSocket};

mod opts;

/// One socket the daemon listens on, of any kind; `plan::Endpoint` says
/// what it is bound to. Every one is non-blocking and close-on-exec.
#[derive(Debug)]
pub enum Listener {
    /// A TCP listening socket.
    Tcp(TcpListener),
    /// A Unix stream listening socket (its file removed when it closes).
    Unix(UnixSocket),
    /// A bound UDP socket, for a wait service: the daemon never reads
    /// it, it hands it to a handler when it becomes readable.
    Udp(UdpSocket),
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l) => l.as_fd(),
            Listener::Udp(l) => l.as_fd(),
        }
    }
}

/// Why a socket could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenError {
    /// The address being opened.
    pub addr: Endpoint,
    /// What we were doing: `creating a socket for`, `binding`, `listening on`.
    pub doing: &'static str,
    /// What the kernel said.
    pub errno: Errno,
    /// The cause in words when it is more than an errno (a Unix socket's
    /// path that holds another file); shown instead of the errno's words.
    pub reason: Option<String>,
}

impl ListenError {
    /// A Unix socket's error, as a listen error for `end`.
    fn unix(end: &Endpoint, e: UnixError) -> ListenError {
        ListenError {
            addr: end.clone(),
            doing: e.doing,
            errno: Errno::UnknownErrno,
            reason: Some(e.reason),
        }
    }
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(reason) = &self.reason {
            return write!(f, "{} {}: {reason}", self.doing, self.addr);
        }
        write!(
            f,
            "{} {}: {}",
            self.doing,
            self.addr,
            crate::text::os_error(self.errno)
        )?;
        // The kernel's own word for it (ip_unprivileged_port_start, 1024 by
        // default) gives no hint of the cause.
        if self.errno == Errno::EACCES && self.addr.inet().is_some_and(|a| a.port() < 1024) {
            f.write_str(" (ports below 1024 need root or CAP_NET_BIND_SERVICE)")?;
        }
        Ok(())
    }
}

impl std::error::Error for ListenError {}

/// Opens the socket for one endpoint with the service's options.
pub fn bind(end: &Endpoint, opts: &SockOpts) -> Result<Listener, ListenError> {
    let l = match end {
        Endpoint::Tcp(a) => bind_tcp(*a, opts).map(Listener::Tcp)?,
        Endpoint::Udp(a) => bind_udp(*a, opts).map(Listener::Udp)?,
        // `socket_*` is for the service's socket files; an abstract name
        // beside them has none.
        Endpoint::Unix(n) if n.path().is_none() => {
            UnixSocket::bind(n, &Ownership::default(), backlog(opts))
                .map(Listener::Unix)
                .map_err(|e| ListenError::unix(end, e))?
        }
        Endpoint::Unix(n) => UnixSocket::bind(n, &ownership(opts), backlog(opts))
            .map(Listener::Unix)
            .map_err(|e| ListenError::unix(end, e))?,
    };
    opts::set_in_place(&l, end, None, opts)?;
    Ok(l)
}

/// The mode and owner a Unix socket file gets from `socket_*`.
fn ownership(opts: &SockOpts) -> Ownership {
    Ownership {
        mode: opts.socket_mode,
        uid: opts.socket_user.as_ref().map(|(_, uid)| *uid),
        gid: opts.socket_group.as_ref().map(|(_, gid)| *gid),
    }
}

/// `backlog` as `listen` takes it.
fn backlog(opts: &SockOpts) -> i32 {
    i32::try_from(opts.backlog).unwrap_or(i32::MAX)
}

/// Opens one TCP socket, bound but not yet listening (`bind` makes it
/// listen with its options): SO_REUSEADDR (a restart must not wait out
/// TIME_WAIT), and the rest of [`bind_inet`].
fn bind_tcp(addr: SocketAddr, opts: &SockOpts) -> Result<TcpListener, ListenError> {
    bind_inet(Endpoint::Tcp(addr), addr, SockType::Stream, opts).map(TcpListener::from)
}

/// Opens one UDP socket like [`bind_tcp`], but without SO_REUSEADDR. UDP
/// has no TIME_WAIT to wait out, and on a UDP socket the option means
/// something else: any other socket with it set, of any user, may bind the
/// same address too and take the datagrams (Linux delivers each to one of
/// them). Without it, a port in use is refused at bind, as for TCP.
fn bind_udp(addr: SocketAddr, opts: &SockOpts) -> Result<UdpSocket, ListenError> {
    bind_inet(Endpoint::Udp(addr), addr, SockType::Datagram, opts).map(UdpSocket::from)
}

/// One IP socket of type `ty` bound to `addr`: IPV6_V6ONLY on IPv6 (so
/// `"PORT"`'s two sockets and an explicit IPv4 address never collide),
/// SO_REUSEADDR for a stream socket only (see [`bind_udp`]), the options
/// the kernel reads at bind (`reuse_port`, `free_bind`, `bind_device`),
/// non-blocking, close-on-exec. Errors name `end`.
fn bind_inet(
    end: Endpoint,
    addr: SocketAddr,
    ty: SockType,
    opts: &SockOpts,
) -> Result<OwnedFd, ListenError> {
    let err = |doing, errno| ListenError {
        addr: end.clone(),
        doing,
        errno,
        reason: None,
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd =
        socket::socket(family, ty, flags, None).map_err(|e| err("creating a socket for", e))?;
    if ty == SockType::Stream {
        socket::setsockopt(&fd, sockopt::ReuseAddr, &true)
            .map_err(|e| err("setting SO_REUSEADDR on", e))?;
    }
    if addr.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)
            .map_err(|e| err("setting IPV6_V6ONLY on", e))?;
    }
    opts::before_bind(&fd, opts).map_err(|(doing, e)| err(doing, e))?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(|e| err("binding", e))?;
    Ok(fd)
}

/// Whether a failure to open a wildcard IPv6 socket means "this host has no
/// IPv6", which a bare `"PORT"` tolerates with a warning.
pub fn no_ipv6(e: &ListenError) -> bool {
    e.addr
        .inet()
        .is_some_and(|a| a.is_ipv6() && a.ip().is_unspecified())
        && matches!(
            e.errno,
            Errno::EAFNOSUPPORT | Errno::EADDRNOTAVAIL | Errno::EPROTONOSUPPORT
        )
}

/// A socket passed by the service manager (`LISTEN_FDS`).
#[derive(Debug)]
pub struct Inherited {
    /// The descriptor, as passed.
    pub fd: RawFd,
    /// Its name (`FileDescriptorName=`), for messages.
    pub name: String,
}

/// Reads the sockets systemd passed (`LISTEN_FDS`, only when `LISTEN_PID`
/// is ours) and removes the `LISTEN_*` variables from the environment.
pub fn inherited_sockets() -> Vec<Inherited> {
    let found: Vec<Inherited> = match sd_notify::listen_fds_with_names() {
        Ok(fds) => fds.map(|(fd, name)| Inherited { fd, name }).collect(),
        Err(_) => Vec::new(),
    };
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    found
}

/// What became of one inherited socket.
#[derive(Debug)]
pub enum Adoption {
    /// Usable; it will serve `addr` if the plan has it.
    Listening(Endpoint, Listener),
    /// Not a listening TCP or Unix stream socket; closed. The string says why.
    Rejected {
        fd: RawFd,
        name: String,
        why: String,
    },
}

/// Checks one inherited descriptor: it must be a listening stream socket
/// of an IP family, a Unix one with a name (matched by its path), or a
/// datagram socket of an IP family (its type says which endpoint it can
/// serve: `Tcp`, `Unix` or `Udp`). A connected stream socket (systemd's
/// `Accept=yes`) is refused: accepting on it would fail with EINVAL
/// forever. `owned` is the
/// descriptor taken over (`spawn::own_inherited`, called by the caller so
/// that this module stays below `spawn`), `None` if it was not open.
pub fn adopt(inh: Inherited, owned: Option<OwnedFd>) -> Adoption {
    let fd = match owned {
        Some(fd) => fd,
        None => {
            return Adoption::Rejected {
                fd: inh.fd,
                name: inh.name,
                why: "not an open descriptor".into(),
            }
        }
    };
    let reject = |why: String| Adoption::Rejected {
        fd: inh.fd,
        name: inh.name.clone(),
        why,
    };
    let datagram = match socket::getsockopt(&fd, sockopt::SockType) {
        Ok(SockType::Stream) => false,
        Ok(SockType::Datagram) => true,
        Ok(t) => return reject(format!("not a stream or datagram socket ({t:?})")),
        Err(e) => return reject(format!("not a socket ({})", crate::text::os_error(e))),
    };
    match socket::getsockopt(&fd, sockopt::AcceptConn) {
        Ok(_) if datagram => {}
        Ok(true) => {}
        Ok(false) => {
            return reject(
                "a connected socket, not a listening one (Accept=yes or --accept is not supported: tinyinetd accepts itself)".into(),
            )
        }
        Err(e) => return reject(format!("SO_ACCEPTCONN: {}", crate::text::os_error(e))),
    }
    let addr = match socket::getsockname::<SockaddrStorage>(fd.as_raw_fd()) {
        Ok(a) => match (a.as_sockaddr_in(), a.as_sockaddr_in6()) {
            (Some(v4), _) => SocketAddr::V4((*v4).into()),
            (_, Some(v6)) => SocketAddr::V6((*v6).into()),
            _ if a.family() == Some(AddressFamily::Unix) => return adopt_unix(fd, reject),
            _ => return reject(format!("not an IP socket (family {:?})", a.family())),
        },
        Err(e) => return reject(format!("getsockname: {}", crate::text::os_error(e))),
    };
    if datagram {
        let sock = UdpSocket::from(fd);
        if let Err(e) = sock.set_nonblocking(true) {
            return reject(format!("setting O_NONBLOCK: {e}"));
        }
        return Adoption::Listening(Endpoint::Udp(addr), Listener::Udp(sock));
    }
    let listener = TcpListener::from(fd);
    if let Err(e) = listener.set_nonblocking(true) {
        return reject(format!("setting O_NONBLOCK: {e}"));
    }
    Adoption::Listening(Endpoint::Tcp(addr), Listener::Tcp(listener))
}

/// [`adopt`] for a Unix socket: matched by its path or abstract name. Its
/// file stays the service manager's (not removed at close).
fn adopt_unix(fd: OwnedFd, reject: impl Fn(String) -> Adoption) -> Adoption {
    let name = match socket::getsockname::<UnixAddr>(fd.as_raw_fd()) {
        Ok(a) => UnixName::of(&a),
        Err(e) => return reject(format!("getsockname: {}", crate::text::os_error(e))),
    };
    let Some(name) = name else {
        return reject("an unnamed Unix socket".into());
    };
    let listener = UnixListener::from(fd);
    if let Err(e) = listener.set_nonblocking(true) {
        return reject(format!("setting O_NONBLOCK: {e}"));
    }
    Adoption::Listening(
        Endpoint::Unix(name.clone()),
        Listener::Unix(UnixSocket::inherited(listener, name)),
    )
}

/// The sockets the daemon holds, by address.
#[derive(Debug, Default)]
pub struct Sockets {
    /// The open sockets.
    pub by_addr: HashMap<Endpoint, Listener>,
    /// Before [`reconcile`]: the service each held socket serves (by name).
    /// After: the old sockets kept for a service whose new address failed
    /// (they are not in the plan's `listen`, so the caller attaches them by
    /// this name).
    pub owner: HashMap<Endpoint, String>,
    /// The options each held socket has now (after [`reconcile`]: those
    /// set), compared with the plan's on the next reload.
    pub opts: HashMap<Endpoint, SockOpts>,
}

/// One event of [`reconcile`], for the caller to log.
#[derive(Debug)]
pub enum Change {
    /// A new address, bound or adopted from the inherited sockets.
    Opened(Endpoint),
    /// An address the plan no longer has, closed.
    Closed(Endpoint),
    /// A new address that could not be bound; the rest still applies.
    Failed(ListenError),
    /// A bare `"PORT"`'s IPv6 half on a host without IPv6.
    NoIpv6(Endpoint),
    /// An old socket of `service`, which the new plan removed, kept because
    /// one of the service's new addresses failed.
    Retained { addr: Endpoint, service: String },
    /// Like `Retained`, but the old socket had been closed to make room for
    /// an overlapping new address, and binding it again failed too.
    Lost { service: String, error: ListenError },
    /// A kept socket whose options changed where the kernel allows it on
    /// a bound socket: the same socket, nobody refused.
    Updated(Endpoint),
    /// A kept socket closed and bound again for an option the kernel reads
    /// only at bind (`reason` names it).
    Rebound {
        addr: Endpoint,
        reason: &'static str,
    },
}

/// Whether two addresses cannot both be bound: the same protocol, family
/// and port, and one of them a wildcard of that family (IPv6 sockets are
/// IPV6_V6ONLY, so the families never collide; TCP and UDP ports are apart).
fn overlaps(a: &Endpoint, b: &Endpoint) -> bool {
    match (a, b) {
        (Endpoint::Tcp(a), Endpoint::Tcp(b)) | (Endpoint::Udp(a), Endpoint::Udp(b)) => {
            overlaps_inet(a, b)
        }
        // A Unix name is one socket; the same name is not an overlap.
        (Endpoint::Unix(_), _) | (_, Endpoint::Unix(_)) => false,
        (Endpoint::Tcp(_), Endpoint::Udp(_)) | (Endpoint::Udp(_), Endpoint::Tcp(_)) => false,
    }
}

/// [`overlaps`] for two IP addresses of one protocol.
fn overlaps_inet(a: &SocketAddr, b: &SocketAddr) -> bool {
    a != b
        && a.is_ipv4() == b.is_ipv4()
        && a.port() == b.port()
        && (a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Makes `held` match `plan`: sockets whose address is unchanged stay open
/// (the very same socket: no client is refused during a reload), new ones
/// are bound *before* removed ones are closed, except that a removed socket
/// overlapping a new address is closed just before that bind, and a failed
/// bind is reported without stopping the rest; the service it belongs to
/// keeps its removed sockets (see the module documentation). `spare` holds
/// inherited sockets not yet used; a planned address found there is
/// adopted instead of bound.
pub fn reconcile(
    held: &mut Sockets,
    spare: &mut HashMap<Endpoint, Listener>,
    plan: &Plan,
) -> Vec<Change> {
    let mut changes = Vec::new();
    let (wanted, optional_v6) = wanted(plan);
    let mut next = HashMap::new();
    let mut next_opts = HashMap::new();
    let mut to_bind = Vec::new();
    for (a, name, opts) in wanted {
        if let Some(sock) = held.by_addr.remove(&a) {
            let old = held.opts.remove(&a).unwrap_or_default();
            if let Some((sock, now)) = opts::keep(sock, &a, name, old, opts, &mut changes) {
                next.insert(a.clone(), sock);
                next_opts.insert(a, now);
            }
        } else if let Some(sock) = spare.remove(&a) {
            opts::adopted(&sock, &a, opts, &mut changes);
            next.insert(a.clone(), sock);
            next_opts.insert(a, opts.clone());
        } else {
            to_bind.push((a, name, opts));
        }
    }
    // Removed sockets closed to make room, with the service they served.
    let mut made_room: Vec<(Endpoint, Option<String>)> = Vec::new();
    // Services with a new address that could not be opened.
    let mut failed: Vec<&str> = Vec::new();
    for (a, name, opts) in to_bind {
        let clashing: Vec<Endpoint> = held
            .by_addr
            .keys()
            .filter(|h| overlaps(h, &a))
            .cloned()
            .collect();
        for h in clashing {
            drop(held.by_addr.remove(&h));
            let owner = held.owner.remove(&h);
            made_room.push((h, owner));
        }
        match bind(&a, opts) {
            Ok(sock) => {
                changes.push(Change::Opened(a.clone()));
                next_opts.insert(a.clone(), opts.clone());
                next.insert(a, sock);
            }
            Err(e) if optional_v6.contains(&a) && no_ipv6(&e) => {
                changes.push(Change::NoIpv6(a));
            }
            Err(e) => {
                changes.push(Change::Failed(e));
                failed.push(name);
            }
        }
    }
    // Whatever is left was removed from the plan: close it now, after every
    // new socket is open, unless its service failed to open a new one.
    let mut kept = HashMap::new();
    for (a, sock) in held.by_addr.drain() {
        match held.owner.remove(&a) {
            Some(service) if failed.contains(&service.as_str()) => {
                changes.push(Change::Retained {
                    addr: a.clone(),
                    service: service.clone(),
                });
                next.insert(a.clone(), sock);
                let old = held.opts.remove(&a).unwrap_or_default();
                next_opts.insert(a.clone(), old);
                kept.insert(a, service);
            }
            _ => {
                drop(sock);
                changes.push(Change::Closed(a));
            }
        }
    }
    let mut room = Room {
        next: &mut next,
        opts: &mut next_opts,
        old_opts: &held.opts,
        kept: &mut kept,
    };
    rebind_made_room(made_room, &failed, &mut room, &mut changes);
    held.by_addr = next;
    held.owner = kept;
    held.opts = next_opts;
    changes
}

/// The addresses `plan` listens on, with the service of each, and those of
/// them that are a bare `"PORT"`'s IPv6 half (which a host without IPv6
/// may skip).
type Wanted<'p> = Vec<(Endpoint, &'p str, &'p SockOpts)>;

fn wanted(plan: &Plan) -> (Wanted<'_>, Vec<Endpoint>) {
    let mut wanted = Vec::new();
    let mut optional_v6 = Vec::new();
    for s in plan.enabled() {
        for (a, optional) in s.endpoints() {
            if optional {
                optional_v6.push(a.clone());
            }
            wanted.push((a, s.name.as_str(), &s.sockopts));
        }
    }
    (wanted, optional_v6)
}

/// Where [`rebind_made_room`] puts the sockets it binds again.
struct Room<'a> {
    /// The sockets after the reconcile.
    next: &'a mut HashMap<Endpoint, Listener>,
    /// Their options.
    opts: &'a mut HashMap<Endpoint, SockOpts>,
    /// The options the removed sockets had, to bind them again with.
    old_opts: &'a HashMap<Endpoint, SockOpts>,
    /// The old sockets kept for a failed service, by service.
    kept: &'a mut HashMap<Endpoint, String>,
}

/// The removed sockets [`reconcile`] closed to make room: a service whose
/// new address failed gets its old one back (bound again), or it is
/// reported lost; the others stay closed.
fn rebind_made_room(
    made_room: Vec<(Endpoint, Option<String>)>,
    failed: &[&str],
    room: &mut Room<'_>,
    changes: &mut Vec<Change>,
) {
    for (a, owner) in made_room {
        match owner {
            Some(service) if failed.contains(&service.as_str()) && !room.next.contains_key(&a) => {
                let opts = room.old_opts.get(&a).cloned().unwrap_or_default();
                match bind(&a, &opts) {
                    Ok(sock) => {
                        changes.push(Change::Retained {
                            addr: a.clone(),
                            service: service.clone(),
                        });
                        room.next.insert(a.clone(), sock);
                        room.opts.insert(a.clone(), opts);
                        room.kept.insert(a, service);
                    }
                    Err(error) => changes.push(Change::Lost { service, error }),
                }
            }
            _ => changes.push(Change::Closed(a)),
        }
    }
}

#[cfg(test)]
mod tests;
