//! A listening socket's options (SPEC §10.3): those the kernel reads only
//! at bind (`reuse_port`, `free_bind`, `bind_device`) are set before it;
//! the others on the bound socket before `listen`, once: an accepted
//! connection is a copy of its listener and inherits `SO_KEEPALIVE`, the
//! keepalive times, `TCP_NODELAY` and the buffer sizes, so nothing is set
//! per connection. On reload a kept socket's options are changed in place
//! where the kernel allows it (the same socket: nobody is refused), and
//! the socket is bound again where it does not.
//!
//! # Rebinding the same address
//!
//! When the new socket asks for SO_REUSEPORT, the old one is given it too
//! and the new one is bound while the old still listens, then the old is
//! closed: no connect finds the port closed (those queued on the old
//! socket at that moment are reset, as for an overlap, see `listen`).
//! (The old socket was not in a SO_REUSEPORT group when it started
//! listening, so the option given to it now does not outlive it; if the
//! new bind fails, it is cleared again at once.) Otherwise the kernel
//! refuses a second socket on the address, so the old one is closed first
//! and connects in that gap are refused. If the new
//! socket cannot be bound, the old options are bound again (`listen-kept`),
//! or the address is reported lost.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{self, sockopt};

use super::{backlog, bind, ownership, Change, ListenError, Listener};
use crate::plan::{Endpoint, SockOpts};
use crate::unixsock::Ownership;

/// What failed: the step (`setting SO_REUSEPORT on`) and the errno.
type Failure = (&'static str, Errno);

/// The options the kernel reads at bind, on a socket not yet bound.
pub(super) fn before_bind(fd: &OwnedFd, o: &SockOpts) -> Result<(), Failure> {
    if o.reuse_port {
        socket::setsockopt(fd, sockopt::ReusePort, &true)
            .map_err(|e| ("setting SO_REUSEPORT on", e))?;
    }
    if o.free_bind {
        socket::setsockopt(fd, sockopt::IpFreebind, &true)
            .map_err(|e| ("setting IP_FREEBIND on", e))?;
    }
    if let Some(dev) = &o.bind_device {
        socket::setsockopt(fd, sockopt::BindToDevice, &OsString::from(dev))
            .map_err(|e| ("setting SO_BINDTODEVICE on", e))?;
    }
    Ok(())
}

/// Sets the options that can be set on a bound socket: every one for a
/// new or adopted socket (`old` is `None`; it listens last, so nobody
/// connects before they are set), or those that differ from `old`.
pub(super) fn set_in_place(
    l: &Listener,
    end: &Endpoint,
    old: Option<&SockOpts>,
    new: &SockOpts,
) -> Result<(), ListenError> {
    let err = |(doing, errno): Failure| ListenError {
        addr: end.clone(),
        doing,
        errno,
        reason: None,
    };
    let fd = l.as_fd();
    match l {
        Listener::Tcp(_) => tcp(fd, old, new).map_err(err)?,
        // Only the buffers below apply (the config refuses the TCP keys).
        Listener::Udp(_) => {}
        Listener::Unix(u) => {
            let changed = old.is_some_and(|o| ownership(o) != ownership(new));
            // An inherited socket's file is the service manager's.
            if changed && u.owns_file() {
                u.set_ownership(&restored(new))
                    .map_err(|e| ListenError::unix(end, e))?;
            }
        }
    }
    if let Some(n) = new.receive_buffer {
        socket::setsockopt(&fd, sockopt::RcvBuf, &(n as usize))
            .map_err(|e| err(("setting SO_RCVBUF on", e)))?;
    }
    if let Some(n) = new.send_buffer {
        socket::setsockopt(&fd, sockopt::SndBuf, &(n as usize))
            .map_err(|e| err(("setting SO_SNDBUF on", e)))?;
    }
    // A datagram socket does not listen (and has no backlog).
    if !matches!(l, Listener::Udp(_)) && old.is_none_or(|o| o.backlog != new.backlog) {
        crate::spawn::listen(fd, backlog(new)).map_err(|e| err(("listening on", e)))?;
    }
    Ok(())
}

/// An inherited socket the plan has: the service manager bound it, so what
/// it set at bind (`ReusePort=`, `FreeBind=`, `BindToDevice=`) stays; the
/// rest is the plan's (a failure is reported, the socket still serves).
pub(super) fn adopted(sock: &Listener, end: &Endpoint, opts: &SockOpts, changes: &mut Vec<Change>) {
    if let Err(e) = set_in_place(sock, end, None, opts) {
        changes.push(Change::Failed(e));
    }
    changes.push(Change::Opened(end.clone()));
}

/// A reload's ownership: what `socket_*` says, and for a key removed the
/// default it stands for (mode 0600, the daemon's user and group).
fn restored(new: &SockOpts) -> Ownership {
    let own = ownership(new);
    Ownership {
        mode: Some(own.mode.unwrap_or(0o600)),
        uid: Some(own.uid.unwrap_or_else(|| nix::unistd::geteuid().as_raw())),
        gid: Some(own.gid.unwrap_or_else(|| nix::unistd::getegid().as_raw())),
    }
}

/// The TCP options: keepalive and its times, `TCP_NODELAY`,
/// `TCP_DEFER_ACCEPT`. A keepalive time the new plan no longer gives goes
/// back to the kernel's (`net.ipv4.tcp_keepalive_*` as it is now).
fn tcp(fd: BorrowedFd<'_>, old: Option<&SockOpts>, new: &SockOpts) -> Result<(), Failure> {
    socket::setsockopt(&fd, sockopt::KeepAlive, &new.keepalive.is_some())
        .map_err(|e| ("setting SO_KEEPALIVE on", e))?;
    let now = new.keepalive.unwrap_or_default();
    let was = old.and_then(|o| o.keepalive).unwrap_or_default();
    let pick = |now: Option<u32>, was: Option<u32>, sysctl: &str| match (now, was) {
        (Some(v), _) => Some(v),
        (None, Some(_)) => kernel_default(sysctl),
        (None, None) => None,
    };
    if let Some(v) = pick(now.idle, was.idle, "tcp_keepalive_time") {
        socket::setsockopt(&fd, sockopt::TcpKeepIdle, &v)
            .map_err(|e| ("setting TCP_KEEPIDLE on", e))?;
    }
    if let Some(v) = pick(now.interval, was.interval, "tcp_keepalive_intvl") {
        socket::setsockopt(&fd, sockopt::TcpKeepInterval, &v)
            .map_err(|e| ("setting TCP_KEEPINTVL on", e))?;
    }
    if let Some(v) = pick(now.count, was.count, "tcp_keepalive_probes") {
        socket::setsockopt(&fd, sockopt::TcpKeepCount, &v)
            .map_err(|e| ("setting TCP_KEEPCNT on", e))?;
    }
    socket::setsockopt(&fd, sockopt::TcpNoDelay, &new.nodelay)
        .map_err(|e| ("setting TCP_NODELAY on", e))?;
    let defer = i32::try_from(new.defer_accept).unwrap_or(i32::MAX);
    crate::spawn::set_tcp_defer_accept(fd, defer).map_err(|e| ("setting TCP_DEFER_ACCEPT on", e))
}

/// A keepalive sysctl's value (`/proc/sys/net/ipv4/NAME`), if readable.
fn kernel_default(name: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A reload's kept socket: the same one if its options are unchanged or
/// can change in place, else a new one (see the module documentation).
/// Returns the socket and the options it has, or `None` when the address
/// was lost (logged through `changes`).
pub(super) fn keep(
    sock: Listener,
    end: &Endpoint,
    service: &str,
    old: SockOpts,
    new: &SockOpts,
    changes: &mut Vec<Change>,
) -> Option<(Listener, SockOpts)> {
    if old == *new {
        return Some((sock, old));
    }
    let Some(reason) = old.rebind_reason(new) else {
        return match set_in_place(&sock, end, Some(&old), new) {
            Ok(()) => {
                changes.push(Change::Updated(end.clone()));
                Some((sock, new.clone()))
            }
            // What was set stays set; the old options are recorded, so
            // the next reload sets them all again.
            Err(e) => {
                changes.push(Change::Failed(e));
                Some((sock, old))
            }
        };
    };
    let rebound = |changes: &mut Vec<Change>| {
        changes.push(Change::Rebound {
            addr: end.clone(),
            reason,
        })
    };
    // Only for this moment: the old socket closes right after.
    let shared = new.reuse_port && socket::setsockopt(&sock, sockopt::ReusePort, &true).is_ok();
    if shared {
        match bind(end, new) {
            Ok(l) => {
                drop(sock);
                rebound(changes);
                return Some((l, new.clone()));
            }
            Err(e) if e.errno != Errno::EADDRINUSE => {
                let _ = socket::setsockopt(&sock, sockopt::ReusePort, &old.reuse_port);
                changes.push(Change::Failed(e));
                return Some((sock, old));
            }
            Err(_) => {}
        }
    }
    drop(sock);
    match bind(end, new) {
        Ok(l) => {
            rebound(changes);
            Some((l, new.clone()))
        }
        Err(e) => {
            changes.push(Change::Failed(e));
            match bind(end, &old) {
                Ok(l) => {
                    changes.push(Change::Retained {
                        addr: end.clone(),
                        service: service.to_string(),
                    });
                    Some((l, old))
                }
                Err(error) => {
                    changes.push(Change::Lost {
                        service: service.to_string(),
                        error,
                    });
                    None
                }
            }
        }
    }
}
