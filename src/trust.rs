//! Opening the files a daemon runs on: the configuration and the programs.
//!
//! A root daemon runs what its configuration says, as whom it says, so a
//! file that a user other than root could change, or put in place, makes
//! that user root. "Could change" covers more than the file: whoever can
//! write a directory on the way to it can rename the file's directory
//! away and put her own in its place, and whoever can write the directory
//! a symbolic link points into can replace the link's target. So, for a
//! root daemon ([`Mode::Root`]):
//!
//! * **The rule.** Every directory from `/` to the file, including those
//!   reached through symbolic links, is owned by root and not writable by
//!   its group or others; the file is owned by root and not writable by
//!   its group or others. The one exception is the one sshd and systemd
//!   make: a directory others can write is safe when it has the sticky bit
//!   and the entry looked up in it is owned by root, since then nobody but
//!   root can rename or remove that entry (`/tmp/x` with `x` a root-owned
//!   0755 directory is fine; `/tmp/x` owned by anyone else is not).
//! * **No window between check and use.** The path is walked one
//!   component at a time: each is opened with `O_PATH | O_NOFOLLOW`
//!   relative to the descriptor of the directory before it, and checked
//!   with `fstat` on that descriptor, so what is checked is what the next
//!   step looks in. A symbolic link is read with `readlinkat` on its own
//!   descriptor and its target walked in turn (from `/` when absolute,
//!   from the link's directory when relative; at most [`MAX_SYMLINKS`]
//!   links, as the kernel's ELOOP limit). The file itself is finally
//!   opened relative to its verified directory with `O_NOFOLLOW`, and
//!   the descriptor opened is the one checked and read: no path is looked
//!   up twice.
//!
//! A daemon that is not root ([`Mode::User`]) runs its own user's files
//! with its own rights, so nobody gains anything from them: it opens the
//! path directly, and still requires a regular file (and, for a program,
//! an execute bit) on the descriptor it opened.
//!
//! Every open is `O_CLOEXEC`, and the configuration is opened
//! `O_NONBLOCK | O_NOCTTY` and only once it is known to be a regular file,
//! so a FIFO or a device given as the configuration never blocks the
//! daemon or becomes its terminal; the configuration is read through its
//! descriptor with a bound ([`CONFIG_LIMIT`]).

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::Read as _;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, OFlag, AT_FDCWD};
use nix::sys::stat::{fstat, FileStat};

/// The most symbolic links followed in one path (the kernel's own limit).
pub const MAX_SYMLINKS: usize = 40;

/// The largest configuration file read. Real ones are a few KiB; the limit
/// only stops a wrong path (a log, a disk image) from filling memory.
pub const CONFIG_LIMIT: u64 = 1024 * 1024;

/// The kernel reads at most this much of a `#!` line (BINPRM_BUF_SIZE).
const SHEBANG_LIMIT: usize = 256;

/// How deep interpreters of interpreters are followed (the kernel stops
/// after 4 levels as well).
const INTERPRETER_DEPTH: usize = 4;

/// Who the daemon runs as, which decides what is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Root: the whole path must be root's alone (see the module doc).
    Root,
    /// Any other user: only that the file is a usable regular file.
    User,
}

impl Mode {
    pub fn for_euid(euid: u32) -> Mode {
        if euid == 0 {
            Mode::Root
        } else {
            Mode::User
        }
    }
}

/// Why a file was not opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It cannot be used (missing, not a regular file, not executable, too
    /// large, unreadable): the reason, and the errno when there is one.
    Unusable(String, Option<Errno>),
    /// A user other than root could change it: which component, and why.
    Untrusted(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Unusable(why, _) | Refusal::Untrusted(why) => f.write_str(why),
        }
    }
}

fn os(e: Errno) -> Refusal {
    Refusal::Unusable(crate::text::os_error(e), Some(e))
}

/// A checked program, opened for exec.
#[derive(Debug)]
pub struct Program {
    /// `O_PATH | O_CLOEXEC`, the file that was checked.
    pub fd: OwnedFd,
    /// Whether it starts with `#!`: the kernel then runs its interpreter
    /// on a path, and an `O_CLOEXEC` descriptor has none to give it (see
    /// `config::exec_image` for what follows).
    pub script: bool,
}

/// Reads the configuration at `path` through the descriptor it checked.
pub fn config(path: &Path, mode: Mode) -> Result<Vec<u8>, Refusal> {
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let opened = open(path, flags, mode)?;
    let size = opened.stat.st_size as u64;
    let too_big =
        |n: u64| Refusal::Unusable(format!("the file is {n} bytes; the limit is 1 MiB"), None);
    if size > CONFIG_LIMIT {
        return Err(too_big(size));
    }
    let mut text = Vec::with_capacity(size as usize);
    // One byte more than the limit tells a file that grew since the fstat.
    std::fs::File::from(opened.fd)
        .take(CONFIG_LIMIT + 1)
        .read_to_end(&mut text)
        .map_err(|e| match e.raw_os_error() {
            Some(code) => os(Errno::from_raw(code)),
            None => Refusal::Unusable(e.to_string(), None),
        })?;
    if text.len() as u64 > CONFIG_LIMIT {
        return Err(too_big(text.len() as u64));
    }
    Ok(text)
}

/// Opens the program at `path` for exec: a regular file with an execute
/// bit, for a root daemon one only root can change, and, when it is a
/// script, the same for the interpreter its `#!` line names.
pub fn program(path: &Path, mode: Mode) -> Result<Program, Refusal> {
    program_at_depth(path, mode, 0)
}

fn program_at_depth(path: &Path, mode: Mode, depth: usize) -> Result<Program, Refusal> {
    let opened = open(path, OFlag::O_PATH, mode)?;
    if opened.stat.st_mode & 0o111 == 0 {
        return Err(Refusal::Unusable(
            "not executable (no execute permission)".into(),
            None,
        ));
    }
    let interpreter = match shebang(&opened)? {
        None => {
            return Ok(Program {
                fd: opened.fd,
                script: false,
            })
        }
        Some(i) => i,
    };
    if mode == Mode::Root {
        if depth >= INTERPRETER_DEPTH {
            return Err(Refusal::Unusable(
                format!("more than {INTERPRETER_DEPTH} levels of #! interpreters"),
                None,
            ));
        }
        // The handler runs in "/", where the kernel resolves a relative
        // interpreter.
        let ipath = Path::new("/").join(&interpreter);
        if let Err(r) = program_at_depth(&ipath, mode, depth + 1) {
            let shown = ipath.display();
            return Err(match r {
                Refusal::Untrusted(why) => {
                    Refusal::Untrusted(format!("interpreter {shown}: {why}"))
                }
                Refusal::Unusable(why, e) => {
                    Refusal::Unusable(format!("interpreter {shown}: {why}"), e)
                }
            });
        }
    }
    Ok(Program {
        fd: opened.fd,
        script: true,
    })
}

/// The interpreter named on the program's `#!` line, if it has one.
fn shebang(opened: &Opened) -> Result<Option<OsString>, Refusal> {
    let Some(line) = shebang_line(opened)? else {
        return Ok(None);
    };
    let interpreter = line
        .split(|&b| b == b' ' || b == b'\t')
        .find(|w| !w.is_empty())
        .unwrap_or_default();
    if interpreter.is_empty() {
        return Err(Refusal::Unusable(
            "its #! line names no interpreter".into(),
            None,
        ));
    }
    Ok(Some(OsStr::from_bytes(interpreter).to_os_string()))
}

/// What follows `#!` on the program's first line, if it starts so. Read
/// through a second descriptor of the same file (opened relative to the
/// same verified directory, and compared by device and inode), since an
/// `O_PATH` descriptor cannot be read.
fn shebang_line(opened: &Opened) -> Result<Option<Vec<u8>>, Refusal> {
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let fd = match openat(
        opened.dir.as_fd(),
        opened.name.as_os_str(),
        flags | opened.nofollow,
        nix::sys::stat::Mode::empty(),
    ) {
        Ok(fd) => fd,
        // Execute-only (a daemon that is not root): the kernel could not
        // read a script either, so it is run as a binary.
        Err(Errno::EACCES) => return Ok(None),
        Err(e) => return Err(os(e)),
    };
    let st = fstat(&fd).map_err(os)?;
    if (st.st_dev, st.st_ino) != (opened.stat.st_dev, opened.stat.st_ino) {
        return Err(Refusal::Unusable(
            "the file changed while it was being opened".into(),
            None,
        ));
    }
    let mut head = Vec::with_capacity(SHEBANG_LIMIT);
    std::fs::File::from(fd)
        .take(SHEBANG_LIMIT as u64)
        .read_to_end(&mut head)
        .map_err(|e| os(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
    let Some(line) = head.strip_prefix(b"#!") else {
        return Ok(None);
    };
    let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
    Ok(Some(line.to_vec()))
}

/// A regular file opened by [`open`], and where it was found.
struct Opened {
    /// Opened with the caller's flags (and `O_CLOEXEC`).
    fd: OwnedFd,
    /// Its `fstat`, for the owner, mode and size checks.
    stat: FileStat,
    /// The directory it was found in (`O_PATH`), to reopen it by `name`.
    dir: OwnedFd,
    /// Its name in `dir`.
    name: PathBuf,
    /// `O_NOFOLLOW` when `name` is the file itself (the walk resolved
    /// every link); empty when the kernel resolves it (`Mode::User`).
    nofollow: OFlag,
}

/// Opens the regular file at `path` with `flags` (plus `O_CLOEXEC`),
/// walking and checking the path first for [`Mode::Root`].
fn open(path: &Path, flags: OFlag, mode: Mode) -> Result<Opened, Refusal> {
    match mode {
        Mode::Root => walk(path, flags),
        Mode::User => {
            // No walk: the file is opened as the kernel resolves it, its
            // directory by the same path, for the #! read.
            let dir_path = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            let name = PathBuf::from(path.file_name().unwrap_or(path.as_os_str()));
            let pflags = OFlag::O_PATH | OFlag::O_CLOEXEC;
            let dir = openat(
                AT_FDCWD,
                dir_path,
                pflags | OFlag::O_DIRECTORY,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(os)?;
            // Regular first, before an open that could block or have an
            // effect (a device).
            let probe = openat(
                dir.as_fd(),
                name.as_os_str(),
                pflags,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(os)?;
            let st = fstat(&probe).map_err(os)?;
            if !is_regular(&st) {
                return Err(not_regular());
            }
            let fd = if flags.contains(OFlag::O_PATH) {
                probe
            } else {
                openat(
                    dir.as_fd(),
                    name.as_os_str(),
                    flags | OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                )
                .map_err(os)?
            };
            let stat = fstat(&fd).map_err(os)?;
            if !is_regular(&stat) {
                return Err(not_regular());
            }
            Ok(Opened {
                fd,
                stat,
                dir,
                name,
                nofollow: OFlag::empty(),
            })
        }
    }
}

fn is_regular(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

fn not_regular() -> Refusal {
    Refusal::Unusable("not a regular file".into(), None)
}

/// The walk of the module documentation.
fn walk(path: &Path, flags: OFlag) -> Result<Opened, Refusal> {
    let abs = absolute(path)?;
    let pflags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let none = nix::sys::stat::Mode::empty();
    let root = openat(AT_FDCWD, "/", pflags | OFlag::O_DIRECTORY, none).map_err(os)?;
    let root_st = fstat(&root).map_err(os)?;
    let mut via: Option<PathBuf> = None;
    check_dir(&root_st, Path::new("/")).map_err(|w| untrusted(w, &via))?;
    // The directories walked so far, `/` first: a descriptor, the path
    // shown in messages, and the fstat.
    let mut stack: Vec<(OwnedFd, PathBuf, FileStat)> = vec![(root, PathBuf::from("/"), root_st)];
    let mut todo: VecDeque<OsString> = components(&abs);
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let last = todo.is_empty();
        let Some((dir, dir_path, dir_st)) = stack.last() else {
            return Err(Refusal::Unusable("the walk lost its root".into(), None));
        };
        let (dir_path, dir_mode) = (dir_path.clone(), dir_st.st_mode);
        let here = dir_path.join(&name);
        // As the kernel reports a failed lookup: the reason, not which
        // component (the path is in the caller's message).
        let fd = openat(dir.as_fd(), name.as_os_str(), pflags, none).map_err(os)?;
        let st = fstat(&fd).map_err(os)?;
        // The entry rule: in a directory others can write (it passed
        // `check_dir`, so it is sticky), only a root-owned entry is safe.
        if dir_mode & 0o022 != 0 && st.st_uid != 0 {
            return Err(untrusted(
                format!(
                    "{} is owned by uid {}, not root, in {} which others can write",
                    here.display(),
                    st.st_uid,
                    dir_path.display()
                ),
                &via,
            ));
        }
        match st.st_mode & libc::S_IFMT {
            libc::S_IFLNK => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(Refusal::Unusable(
                        format!("more than {MAX_SYMLINKS} symbolic links in the path"),
                        Some(Errno::ELOOP),
                    ));
                }
                let target = readlinkat(&fd, "").map_err(os)?;
                let target = PathBuf::from(target);
                if target.is_absolute() {
                    stack.truncate(1);
                }
                for c in components(&target).into_iter().rev() {
                    todo.push_front(c);
                }
                via = Some(here);
            }
            libc::S_IFDIR if !last => {
                check_dir(&st, &here).map_err(|w| untrusted(w, &via))?;
                stack.push((fd, here, st));
            }
            _ if !last => return Err(os(Errno::ENOTDIR)),
            _ => {
                if !is_regular(&st) {
                    return Err(not_regular());
                }
                check_file(&st, &here).map_err(|w| untrusted(w, &via))?;
                let Some((dir, _, _)) = stack.pop() else {
                    return Err(Refusal::Unusable("the walk lost its root".into(), None));
                };
                return open_last(dir, fd, &st, name, &here, flags);
            }
        }
    }
    // The path named a directory (or `/`).
    Err(not_regular())
}

/// `path` made absolute against the working directory (the walk starts at `/`).
fn absolute(path: &Path) -> Result<PathBuf, Refusal> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(|e| {
        Refusal::Unusable(
            format!("the working directory: {e}"),
            e.raw_os_error().map(Errno::from_raw),
        )
    })?;
    Ok(cwd.join(path))
}

/// An untrusted-path refusal, naming the symbolic link it was reached through.
fn untrusted(why: String, via: &Option<PathBuf>) -> Refusal {
    Refusal::Untrusted(match via {
        Some(link) => format!(
            "{why} (reached through the symbolic link {})",
            link.display()
        ),
        None => why,
    })
}

/// The checked last component `fd` (an `O_PATH` descriptor, stat `st`) in
/// `dir`, opened with `flags`: the same file, or an error.
fn open_last(
    dir: OwnedFd,
    fd: OwnedFd,
    st: &FileStat,
    name: OsString,
    here: &Path,
    flags: OFlag,
) -> Result<Opened, Refusal> {
    let file = if flags.contains(OFlag::O_PATH) {
        fd
    } else {
        let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let none = nix::sys::stat::Mode::empty();
        openat(dir.as_fd(), name.as_os_str(), flags, none).map_err(os)?
    };
    let stat = fstat(&file).map_err(os)?;
    if (stat.st_dev, stat.st_ino) != (st.st_dev, st.st_ino) {
        // Only root can replace an entry here; say so all the same.
        return Err(Refusal::Unusable(
            format!("{} changed while it was being opened", here.display()),
            None,
        ));
    }
    Ok(Opened {
        fd: file,
        stat,
        dir,
        name: PathBuf::from(name),
        nofollow: OFlag::O_NOFOLLOW,
    })
}

/// The names in `p`, in order, without `/` and `.` (`..` kept: the walk
/// goes up its own stack of verified directories).
fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// A directory on the way: root's, and writable by nobody else unless sticky.
fn check_dir(st: &FileStat, path: &Path) -> Result<(), String> {
    if st.st_uid != 0 {
        return Err(format!(
            "{} is owned by uid {}, not root",
            path.display(),
            st.st_uid
        ));
    }
    if st.st_mode & 0o022 != 0 && st.st_mode & 0o1000 == 0 {
        return Err(format!(
            "{} is writable by {} (mode {:04o}) and not sticky",
            path.display(),
            who_writes(st.st_mode),
            st.st_mode & 0o7777
        ));
    }
    Ok(())
}

/// The file itself: root's, and writable by nobody else.
fn check_file(st: &FileStat, path: &Path) -> Result<(), String> {
    if st.st_uid != 0 {
        return Err(format!(
            "{} is owned by uid {}, not root",
            path.display(),
            st.st_uid
        ));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(format!(
            "{} is writable by {} (mode {:04o})",
            path.display(),
            who_writes(st.st_mode),
            st.st_mode & 0o7777
        ));
    }
    Ok(())
}

fn who_writes(mode: u32) -> &'static str {
    match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "its group and others",
        (true, false) => "its group",
        _ => "others",
    }
}

mod interp;
#[cfg(test)]
mod tests;

pub use interp::{interpreter, permits, Runner};
