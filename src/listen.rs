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

use nix::errno::Errno;
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrLike, SockaddrStorage,
};

use crate::plan::{Endpoint, Plan};

/// One socket the daemon listens on, of any kind; `plan::Endpoint` says
/// what it is bound to. Every one is non-blocking and close-on-exec.
#[derive(Debug)]
pub enum Listener {
    /// A TCP listening socket.
    Tcp(TcpListener),
    /// A bound UDP socket, for a wait service: the daemon never reads
    /// it, it hands it to a handler when it becomes readable.
    Udp(UdpSocket),
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
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
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

/// Opens the socket for one endpoint.
pub fn bind(end: &Endpoint) -> Result<Listener, ListenError> {
    match end {
        Endpoint::Tcp(a) => bind_tcp(*a).map(Listener::Tcp),
        Endpoint::Udp(a) => bind_udp(*a).map(Listener::Udp),
    }
}

/// Opens one TCP listening socket: SO_REUSEADDR (a restart must not wait
/// out TIME_WAIT), IPV6_V6ONLY on IPv6 (so `"PORT"`'s two sockets and an
/// explicit IPv4 address never collide), non-blocking, close-on-exec.
fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    let err = |doing, errno| ListenError {
        addr: Endpoint::Tcp(addr),
        doing,
        errno,
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| err("creating a socket for", e))?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)
        .map_err(|e| err("setting SO_REUSEADDR on", e))?;
    if addr.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)
            .map_err(|e| err("setting IPV6_V6ONLY on", e))?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(|e| err("binding", e))?;
    socket::listen(&fd, Backlog::MAXCONN).map_err(|e| err("listening on", e))?;
    Ok(TcpListener::from(fd))
}

/// Opens one UDP socket: IPV6_V6ONLY on IPv6, non-blocking,
/// close-on-exec, like [`bind_tcp`] (the same steps, kept apart so that
/// each kind's options stay its own), but without SO_REUSEADDR. UDP has no
/// TIME_WAIT to wait out, and on a UDP socket the option means something
/// else: any other socket with it set, of any user, may bind the same
/// address too and take the datagrams (Linux delivers each to one of
/// them). Without it, a port in use is refused at bind, as for TCP.
fn bind_udp(addr: SocketAddr) -> Result<UdpSocket, ListenError> {
    let err = |doing, errno| ListenError {
        addr: Endpoint::Udp(addr),
        doing,
        errno,
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = socket::socket(family, SockType::Datagram, flags, None)
        .map_err(|e| err("creating a socket for", e))?;
    if addr.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)
            .map_err(|e| err("setting IPV6_V6ONLY on", e))?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(|e| err("binding", e))?;
    Ok(UdpSocket::from(fd))
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
    /// Not a listening TCP socket; closed. The string says why.
    Rejected {
        fd: RawFd,
        name: String,
        why: String,
    },
}

/// Checks one inherited descriptor: it must be a listening stream socket or
/// a datagram socket of an IP family (its type says which endpoint it can
/// serve: `Tcp` or `Udp`). A connected stream socket (systemd's
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
}

/// Whether two addresses cannot both be bound: the same protocol, family
/// and port, and one of them a wildcard of that family (IPv6 sockets are
/// IPV6_V6ONLY, so the families never collide; TCP and UDP ports are apart).
fn overlaps(a: &Endpoint, b: &Endpoint) -> bool {
    match (a, b) {
        (Endpoint::Tcp(a), Endpoint::Tcp(b)) | (Endpoint::Udp(a), Endpoint::Udp(b)) => {
            overlaps_inet(a, b)
        }
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
    let mut to_bind = Vec::new();
    for (a, name) in wanted {
        if let Some(sock) = held.by_addr.remove(&a) {
            next.insert(a, sock);
        } else if let Some(sock) = spare.remove(&a) {
            changes.push(Change::Opened(a.clone()));
            next.insert(a, sock);
        } else {
            to_bind.push((a, name));
        }
    }
    // Removed sockets closed to make room, with the service they served.
    let mut made_room: Vec<(Endpoint, Option<String>)> = Vec::new();
    // Services with a new address that could not be opened.
    let mut failed: Vec<&str> = Vec::new();
    for (a, name) in to_bind {
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
        match bind(&a) {
            Ok(sock) => {
                changes.push(Change::Opened(a.clone()));
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
                kept.insert(a, service);
            }
            _ => {
                drop(sock);
                changes.push(Change::Closed(a));
            }
        }
    }
    rebind_made_room(made_room, &failed, &mut next, &mut kept, &mut changes);
    held.by_addr = next;
    held.owner = kept;
    changes
}

/// The addresses `plan` listens on, with the service of each, and those of
/// them that are a bare `"PORT"`'s IPv6 half (which a host without IPv6
/// may skip).
fn wanted(plan: &Plan) -> (Vec<(Endpoint, &str)>, Vec<Endpoint>) {
    let mut wanted = Vec::new();
    let mut optional_v6 = Vec::new();
    for s in plan.enabled() {
        for (a, optional) in s.endpoints() {
            if optional {
                optional_v6.push(a.clone());
            }
            wanted.push((a, s.name.as_str()));
        }
    }
    (wanted, optional_v6)
}

/// The removed sockets [`reconcile`] closed to make room: a service whose
/// new address failed gets its old one back (bound again), or it is
/// reported lost; the others stay closed.
fn rebind_made_room(
    made_room: Vec<(Endpoint, Option<String>)>,
    failed: &[&str],
    next: &mut HashMap<Endpoint, Listener>,
    kept: &mut HashMap<Endpoint, String>,
    changes: &mut Vec<Change>,
) {
    for (a, owner) in made_room {
        match owner {
            Some(service) if failed.contains(&service.as_str()) && !next.contains_key(&a) => {
                match bind(&a) {
                    Ok(sock) => {
                        changes.push(Change::Retained {
                            addr: a.clone(),
                            service: service.clone(),
                        });
                        next.insert(a.clone(), sock);
                        kept.insert(a, service);
                    }
                    Err(error) => changes.push(Change::Lost { service, error }),
                }
            }
            _ => changes.push(Change::Closed(a)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_sets_nonblocking_and_cloexec() {
        let l = bind(&Endpoint::Tcp("127.0.0.1:0".parse().unwrap())).unwrap();
        let fd = l.as_fd().as_raw_fd();
        let flags = nix::fcntl::fcntl(&l, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert!(flags & libc::O_NONBLOCK != 0);
        let fdflags = nix::fcntl::fcntl(&l, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert!(fdflags & libc::FD_CLOEXEC != 0, "fd {fd} not cloexec");
    }

    // `reconcile` itself is tested against the real daemon (tests/it/reload.rs):
    // closing a socket to make room only frees its address if no other
    // process holds a copy of the descriptor, and in this multithreaded
    // test process any concurrent fork (a spawn test, a `getent` run by a
    // config parse) briefly does.

    #[test]
    fn overlapping_addresses_are_same_family_same_port_one_wildcard() {
        let a = |s: &str| Endpoint::Tcp(s.parse().unwrap());
        assert!(overlaps(&a("127.0.0.1:80"), &a("0.0.0.0:80")));
        assert!(overlaps(&a("0.0.0.0:80"), &a("127.0.0.2:80")));
        assert!(overlaps(&a("[::]:80"), &a("[::1]:80")));
        assert!(!overlaps(&a("127.0.0.1:80"), &a("127.0.0.2:80")));
        assert!(!overlaps(&a("0.0.0.0:80"), &a("0.0.0.0:81")));
        assert!(!overlaps(&a("0.0.0.0:80"), &a("[::]:80")), "V6ONLY");
        assert!(!overlaps(&a("0.0.0.0:80"), &a("0.0.0.0:80")), "the same");
    }

    #[test]
    fn a_udp_socket_is_bound_like_a_tcp_one_and_named_with_its_protocol() {
        // A TCP port first, then the same number over UDP: the two are
        // apart. (The other way round, the machine's TCP clients may hold
        // the number a UDP bind to port 0 picked; a UDP port is rarely
        // taken, and a few tries are bounded.)
        let (l, _tcp, addr) = (0..20)
            .find_map(|_| {
                let tcp = bind(&Endpoint::Tcp("127.0.0.1:0".parse().unwrap())).unwrap();
                let Listener::Tcp(t) = &tcp else {
                    unreachable!()
                };
                let addr = t.local_addr().unwrap();
                bind(&Endpoint::Udp(addr)).ok().map(|l| (l, tcp, addr))
            })
            .expect("a UDP socket on a TCP socket's port");
        assert!(matches!(l, Listener::Udp(_)));
        let flags = nix::fcntl::fcntl(&l, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert!(flags & libc::O_NONBLOCK != 0);
        let fdflags = nix::fcntl::fcntl(&l, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert!(fdflags & libc::FD_CLOEXEC != 0);
        // Over UDP the port is taken, even for a socket that asks for
        // SO_REUSEADDR.
        let thief = socket::socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::empty(),
            None,
        )
        .unwrap();
        socket::setsockopt(&thief, sockopt::ReuseAddr, &true).unwrap();
        assert_eq!(
            socket::bind(thief.as_raw_fd(), &SockaddrStorage::from(addr)),
            Err(Errno::EADDRINUSE)
        );
        let e = bind(&Endpoint::Udp(addr)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("binding {addr}/udp: Address already in use")
        );
        let (u6, t4) = (
            |s: &str| Endpoint::Udp(s.parse().unwrap()),
            |s: &str| Endpoint::Tcp(s.parse().unwrap()),
        );
        assert!(overlaps(&u6("0.0.0.0:69"), &u6("127.0.0.1:69")));
        assert!(!overlaps(&u6("0.0.0.0:69"), &t4("127.0.0.1:69")));
    }

    #[test]
    fn adopting_takes_a_datagram_socket_as_udp() {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = u.local_addr().unwrap();
        let inh = Inherited {
            fd: u.as_raw_fd(),
            name: "x".into(),
        };
        match adopt(inh, Some(OwnedFd::from(u))) {
            Adoption::Listening(end, Listener::Udp(_)) => assert_eq!(end, Endpoint::Udp(addr)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_privileged_port_refused_says_what_it_needs() {
        let e = |port: u16| ListenError {
            addr: Endpoint::Tcp(SocketAddr::from(([127, 0, 0, 1], port))),
            doing: "binding",
            errno: Errno::EACCES,
        };
        assert_eq!(
            e(80).to_string(),
            "binding 127.0.0.1:80: Permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        );
        assert_eq!(
            e(8080).to_string(),
            "binding 127.0.0.1:8080: Permission denied"
        );
    }

    #[test]
    fn bind_error_names_the_address() {
        let l = bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let e = bind(&Endpoint::Tcp(addr)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("binding {addr}: Address already in use")
        );
    }
}
