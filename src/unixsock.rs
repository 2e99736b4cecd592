//! A Unix stream socket the daemon listens on (a `unix:` service, the
//! control socket): a path or an abstract name, bound with a stale file
//! replaced and any other file left alone, given its mode and owner before
//! anyone else may connect, and its file removed when it closes, if the
//! file is still the one it bound.
//!
//! # Nobody connects before the file has its mode and owner
//!
//! The file is given its owner and group, then its mode, after `bind` and
//! before `listen`: until `listen` a connect is refused whatever the mode.
//! Linux creates the file with the socket inode's mode minus the umask, and
//! `fchmod` on the unbound socket sets that mode, so the file also starts
//! as `0600` rather than whatever the umask leaves (changing the process
//! umask instead would change it for every file being created at the time;
//! the tests run threads).
//!
//! # What "stale" means
//!
//! An existing socket file at the path is stale when a connect to it is
//! refused (`ECONNREFUSED`: nobody accepts on it, e.g. a daemon that was
//! killed). It is then removed and bound anew. A socket someone accepts on
//! is left alone (an error: another daemon serves it), and so is any file
//! that is not a socket: it is named in the error, never removed.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::socket::{self, sockopt, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
use nix::sys::stat::{fchmod, fstat, Mode, SFlag};
use nix::unistd::{fchownat, Gid, Uid};

pub use crate::plan::{UnixName, MAX_NAME};

impl UnixName {
    /// The kernel's form of the name.
    fn addr(&self) -> Result<UnixAddr, Errno> {
        match self {
            UnixName::Path(p) => UnixAddr::new(p.as_path()),
            UnixName::Abstract(n) => UnixAddr::new_abstract(n),
        }
    }

    /// The name a bound or accepted socket reports, if it is a Unix one.
    pub fn of(addr: &UnixAddr) -> Option<UnixName> {
        if let Some(p) = addr.path() {
            return Some(UnixName::Path(p.to_path_buf()));
        }
        addr.as_abstract().map(|n| UnixName::Abstract(n.to_vec()))
    }
}

/// The mode and owner a socket file gets; `None` keeps what `bind` gave
/// (the daemon's user and group; mode `0600` less the umask, see the
/// module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ownership {
    /// The file's permission bits (`socket_mode`).
    pub mode: Option<u32>,
    /// The file's owner (`socket_user`).
    pub uid: Option<u32>,
    /// The file's group (`socket_group`, `control_group`).
    pub gid: Option<u32>,
}

/// Why a Unix socket could not be opened or given its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixError {
    /// The socket, as written (`unix:/run/foo.sock`).
    pub name: String,
    /// What we were doing: `binding`, `setting the mode of`, ...
    pub doing: &'static str,
    /// What went wrong, in words.
    pub reason: String,
}

impl fmt::Display for UnixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.doing, self.name, self.reason)
    }
}

impl std::error::Error for UnixError {}

/// A listening Unix stream socket, non-blocking and close-on-exec.
#[derive(Debug)]
pub struct UnixSocket {
    /// The socket.
    listener: UnixListener,
    /// What it is bound to.
    name: UnixName,
    /// The device and inode of the file this socket's `bind` created:
    /// removed at drop if the path still names it. `None` for an abstract
    /// socket, and for one inherited from the service manager (its file is
    /// the manager's to remove).
    file: Option<(u64, u64)>,
}

impl UnixSocket {
    /// Binds `name` and listens with `backlog`, replacing a stale socket
    /// file (see the module documentation), then gives the file `own`.
    pub fn bind(name: &UnixName, own: &Ownership, backlog: i32) -> Result<UnixSocket, UnixError> {
        let err = |doing, reason: String| UnixError {
            name: name.to_string(),
            doing,
            reason,
        };
        let os = |doing, e: Errno| err(doing, crate::text::os_error(e));
        if name.path().is_none() && *own != Ownership::default() {
            return Err(err(
                "binding",
                "an abstract socket has no file, so no mode or owner can be set".into(),
            ));
        }
        let addr = name.addr().map_err(|e| os("binding", e))?;
        if let Some(path) = name.path() {
            clear_stale(path).map_err(|reason| err("binding", reason))?;
        }
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| os("creating a socket for", e))?;
        fchmod(&fd, Mode::from_bits_truncate(0o600)).map_err(|e| os("restricting", e))?;
        socket::bind(fd.as_raw_fd(), &addr).map_err(|e| match e {
            Errno::EADDRINUSE => err(
                "binding",
                format!(
                    "{} (another process bound it just now)",
                    crate::text::os_error(e)
                ),
            ),
            e => os("binding", e),
        })?;
        let backlog = Backlog::new(backlog).unwrap_or(Backlog::MAXCONN);
        let mut sock = UnixSocket {
            listener: UnixListener::from(fd),
            name: name.clone(),
            file: None,
        };
        if let Some(path) = name.path() {
            // From here the file is ours: removed on drop, also on error.
            sock.file = Some(file_id(path).map_err(|e| os("inspecting", e))?);
            sock.set_ownership(own)?;
        }
        socket::listen(&sock.listener, backlog).map_err(|e| os("listening on", e))?;
        Ok(sock)
    }

    /// A listening Unix socket the service manager passed: served, but its
    /// file is not removed at drop (it is the manager's).
    pub fn inherited(listener: UnixListener, name: UnixName) -> UnixSocket {
        UnixSocket {
            listener,
            name,
            file: None,
        }
    }

    /// The socket.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// What it is bound to.
    pub fn name(&self) -> &UnixName {
        &self.name
    }

    /// Whether its file is the one this socket's `bind` created (removed
    /// at drop, given `socket_*` on reload): not for an abstract socket,
    /// nor for one inherited from the service manager.
    pub fn owns_file(&self) -> bool {
        self.file.is_some()
    }

    /// Gives the socket's file its owner, then its mode (a reload that
    /// changes only these keeps the socket). The file is opened without
    /// following a symlink and must still be the one this socket bound.
    pub fn set_ownership(&self, own: &Ownership) -> Result<(), UnixError> {
        let os = |doing, e: Errno| UnixError {
            name: self.name.to_string(),
            doing,
            reason: crate::text::os_error(e),
        };
        let Some(path) = self.name.path() else {
            return Ok(());
        };
        let fd = open(
            path,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| os("opening", e))?;
        let st = fstat(&fd).map_err(|e| os("inspecting", e))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK
            || Some((st.st_dev, st.st_ino)) != self.file
        {
            return Err(UnixError {
                name: self.name.to_string(),
                doing: "setting the owner of",
                reason:
                    "the file at the path is no longer this socket's (replaced by another process?)"
                        .into(),
            });
        }
        if own.uid.is_some() || own.gid.is_some() {
            fchownat(
                &fd,
                "",
                own.uid.map(Uid::from_raw),
                own.gid.map(Gid::from_raw),
                nix::fcntl::AtFlags::AT_EMPTY_PATH,
            )
            .map_err(|e| os("setting the owner of", e))?;
        }
        if let Some(mode) = own.mode {
            // chmod cannot take an O_PATH descriptor; its /proc name is the
            // very file opened above, not whatever the path names now.
            let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
            nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                proc.as_str(),
                Mode::from_bits_truncate(mode),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| os("setting the mode of", e))?;
        }
        Ok(())
    }
}

impl AsFd for UnixSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let (Some(path), Some(id)) = (self.name.path(), self.file) else {
            return;
        };
        // Only our own file: another daemon may have replaced it since.
        if file_id(path) == Ok(id) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The device and inode of the socket file at `path` (not following a
/// symlink).
fn file_id(path: &Path) -> Result<(u64, u64), Errno> {
    let m = std::fs::symlink_metadata(path)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    if !m.file_type().is_socket() {
        return Err(Errno::ENOTSOCK);
    }
    Ok((m.dev(), m.ino()))
}

/// Makes way for binding `path`: nothing there is fine; a stale socket is
/// removed; a live socket or any other file is an error that says what it
/// is.
fn clear_stale(path: &Path) -> Result<(), String> {
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(crate::text::io_reason(&e)),
    };
    let t = m.file_type();
    if !t.is_socket() {
        let what = if t.is_file() {
            "a regular file"
        } else if t.is_dir() {
            "a directory"
        } else if t.is_symlink() {
            "a symbolic link"
        } else if t.is_fifo() {
            "a FIFO"
        } else {
            "a device or other special file"
        };
        return Err(format!(
            "{} is {what}, not a socket; not replacing it (remove it or choose another path)",
            path.display()
        ));
    }
    match probe(path) {
        Ok(()) | Err(Errno::EAGAIN) => Err(format!(
            "{} is in use: another process accepts connections on it",
            path.display()
        )),
        Err(Errno::ECONNREFUSED) => std::fs::remove_file(path).or_else(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(format!(
                    "removing the stale socket {}: {}",
                    path.display(),
                    crate::text::io_reason(&e)
                ))
            }
        }),
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(format!(
            "testing the existing socket {}: {}",
            path.display(),
            crate::text::os_error(e)
        )),
    }
}

/// A non-blocking connect to the socket at `path`: `Ok` or `EAGAIN` (a full
/// backlog) when someone accepts on it, `ECONNREFUSED` when nobody does.
fn probe(path: &Path) -> Result<(), Errno> {
    let fd: OwnedFd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(OsStr::from_bytes(path.as_os_str().as_bytes()))?;
    socket::connect(fd.as_raw_fd(), &addr)
}

/// The credentials of the process at the other end of a connected Unix
/// socket, as the kernel recorded them at connect: `(pid, uid, gid)`.
pub fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<(i32, u32, u32)> {
    let c = socket::getsockopt(&fd, sockopt::PeerCredentials).map_err(io::Error::from)?;
    Ok((c.pid(), c.uid(), c.gid()))
}

#[cfg(test)]
mod tests;
