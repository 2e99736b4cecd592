//! `(Service, Conn) → Spawned`: start a child, put the connection on its
//! fds 0–2 and exec the handler. The only module with `unsafe` code: the
//! `#![allow(unsafe_code)]` below covers its submodules, and the crate
//! root denies it everywhere else.
//!
//! # Where each part lives
//!
//! * `mod.rs` (this file): the [`Spawner`] and its slot pool, and the
//!   daemon's half of a spawn ([`spawn`]: fill a free slot, then clone).
//! * `slot.rs`: the memory one child shares with the daemon (stack, argv,
//!   envp, variables, failure report: [`Step`], [`Failure`]), when the
//!   daemon may touch it again, the descriptors kept for the child.
//! * `child.rs`: the child's half, between clone and exec, and the raw
//!   system calls it is made of (`child::sys`).
//! * `fd.rs`: descriptor and process-state helpers (the daemon's start,
//!   the resolver fork, a spawn's descriptors, [`pidfd_open`]).
//! * `tests.rs`: the unit tests.
//!
//! `slot` imports nothing else of `spawn`, `child` only `slot`, `fd`
//! neither; `mod.rs` uses all three: no cycle.
//!
//! # How: clone(CLONE_VM), without waiting for the exec
//!
//! The child is created with `clone(CLONE_VM | CLONE_FILES | CLONE_PIDFD
//! | CLONE_CHILD_CLEARTID | SIGCHLD)` on a small stack of its own. It
//! shares the daemon's memory, so no page tables are copied (most of what
//! `fork` costs), and the daemon does not wait for it: `clone` returns at once, and the daemon goes back
//! to its accept loop while the child, on another core, prepares and execs.
//! posix_spawn and busybox inetd add CLONE_VFORK, which suspends the parent
//! until the child's exec: a sleep and a wake-up of the daemon per
//! connection, which measured as a quarter of its CPU (BENCHMARKS.md).
//!
//! Each child gets a `Slot`: its stack, its argv and envp, its failure
//! report, and a reference to the `Service` its pointers lead into. The
//! kernel says when the child no longer needs it: it zeroes the slot's
//! `busy` word (CLONE_CHILD_CLEARTID) as soon as the child's `execve` has
//! replaced its memory, or the child has exited. A slot is written, reused
//! or freed only once that word is zero. A child gets there in tens of
//! microseconds, so a few slots serve any load. The daemon never waits for
//! a slot. Up to [`WARM_SLOTS`] it makes one when none is free; beyond
//! that, while every slot is busy, the supervisor stops accepting for a
//! moment ([`Spawner::room`] says `Busy`; the clients wait in the kernel
//! backlog, and the loop serves everything else), because under load
//! that only means the children have not been scheduled yet, and more
//! slots would only cost memory (about 8 KiB resident each). When every
//! slot has stayed busy for [`GROW_AFTER`], children are stopped before
//! their exec (a debugger, an administrator's SIGSTOP, an exec from a hung
//! NFS mount), and the pool grows by one slot each such time, so that
//! other connections and services go on being served. A busy slot belongs
//! to a child that is not reaped yet, and every such child counts against
//! `max_connections`, which the supervisor checks before it accepts; so
//! `max_connections + 1` slots can never all be busy when a connection is
//! spawned, and that is the pool's hard bound
//! ([`Spawner::set_slot_limit`]). Were the bound reached all the same,
//! `spawn` fails at once (EAGAIN) and the supervisor backs the service off
//! as for a fork failure.
//!
//! # Why it is safe
//!
//! * **Shared memory.** The child reads only its slot and, through the
//!   `Arc<Service>` the slot holds, the service's exec image and
//!   credentials, all built before clone and unchanged until `busy` is
//!   zero; it writes only its own stack, the slot's failure report
//!   (atomics) and, for a wait handler, the digits of its `LISTEN_PID` in
//!   the field the daemon reserved in the slot's variables (its pid exists
//!   only once it does; `child::write_own_pid` gives the argument). The
//!   daemon touches none of the child's stack, and none of the slot until
//!   `busy` is zero; the stack has a guard page below it.
//! * **No libc in the child.** The child runs while the daemon runs, and
//!   shares its thread-local storage, `errno` included: anything that
//!   writes errno or takes a lock could corrupt the daemon. So between
//!   clone and exec the child makes raw system calls
//!   (`child::sys::call`, which returns `-errno` and writes nothing else)
//!   and nothing else: no allocation, no locks, no logging, no panics, no
//!   return (`child.rs` holds that code and nothing else). The kernel
//!   gives a CLONE_VM child no robust-futex list, no rseq area and no
//!   signal stack of its parent's, so it writes nothing of the daemon's
//!   on the child's behalf either, except the zero in `busy`.
//! * **Signals.** The daemon installs no signal handler: the signals it
//!   acts on are blocked for its whole life and read from a signalfd
//!   (`signals`), so no daemon code runs on an asynchronous signal in the
//!   child. The child inherits that mask and gets its own copy of the
//!   dispositions (no CLONE_SIGHAND); it resets every one that is not
//!   `SIG_DFL` (the daemon lists them once: SIGPIPE above all, which Rust
//!   ignores and an ignore survives `execve`; std's SIGSEGV/SIGBUS
//!   stack-overflow handlers; ignores the daemon inherited) to `SIG_DFL`,
//!   then empties its mask.
//! * **Exec failure.** A failed step writes `(step, errno)` into the slot
//!   and exits 127 (`exit_group` ends only the child: it is its own thread
//!   group). The daemon reads the report when it reaps the child
//!   ([`Spawner::take_failure`]) and logs `exec-failed` before the `exit`
//!   line: no report pipe, no descriptor per child, and the accept loop
//!   never waits for a child.
//! * **Descriptors.** The child starts on the daemon's descriptor table
//!   (CLONE_FILES): a table copied per connection cost the daemon
//!   O(handlers), since it holds a pidfd per running handler (`dup_fd`,
//!   BENCHMARKS.md, issue 23). The child's first step
//!   (`child::own_descriptor_table`) makes its own table of the
//!   descriptors below the highest one it needs (`ChildArgs::keep_below`):
//!   the daemon's few; pidfds are kept above them ([`fd::lift`]). Until
//!   then the slot keeps copies of the connection and of fd 2's
//!   descriptor (`Slot::held`), closed once the child says it has its
//!   table ([`Spawner::release`]), so the caller may close its own at once.
//!   In its own table the child puts the connection on 0–2 (on 0–1 and
//!   [`Conn::err`] on 2 for `stderr = "log" | "null"`: a pipe's write end
//!   or the daemon's one `/dev/null`, by the same raw `dup3`; the child
//!   opens nothing) and marks every descriptor from 3 up close-on-exec
//!   (the pidfd CLONE_PIDFD made, if it was copied, included); nothing
//!   else survives the exec. A wait handler's connection is a copy of the
//!   service's socket itself (the daemon keeps its own, close-on-exec, out
//!   of the poll set meanwhile), and it goes on fd 3 too, so only
//!   descriptors from 4 up are marked.
//!   A program that is not a script is exec'd through the `O_PATH`
//!   descriptor its check opened at load (`execveat` with `AT_EMPTY_PATH`),
//!   so the file that runs is the file that was checked; that descriptor
//!   is close-on-exec too (see `plan::ExecImage::fd`).
//! * **Elsewhere.** The raw system calls are written for x86-64. On other
//!   architectures (and when built with `--cfg tinyinetd_vfork`, which the
//!   test suite also runs) the child is started with CLONE_VFORK as well:
//!   the daemon is suspended until the exec, so the child may use libc's
//!   `syscall`; everything else is the same code. The price: a child
//!   stopped before its exec (a debugger, SIGSTOP, an exec from a hung
//!   mount) stops the daemon with it there, as it would posix_spawn's or
//!   busybox inetd's parent.
//!
//! # The hot path, per connection
//!
//! A connection costs the daemon five system calls of its own while few
//! handlers run (six with the `exit` log line at the default log level):
//! `accept4`; `clone`, which returns as soon as the child exists; `close`
//! of its copy of the connection (after a `getsockname` when the listener
//! is a wildcard address); a zero-timeout `poll` of the listener, which
//! asks whether the next connection is already waiting; and one `wait4`
//! when the exit is read from the signalfd. With many running
//! ([`Spawner::set_many`]): an `fcntl` and a `close` for the slot's copy,
//! `epoll_ctl` for the pidfd, and `waitid` and the pidfd's `close` instead
//! of the `wait4`; none of them walks the running handlers. The listener
//! is drained up to a budget per loop turn, so one full `poll` serves a
//! burst, and one signalfd `read` serves every exit between two turns.
//! A `stderr = "log"` service adds `pipe2`, an `fcntl` and a
//! `close` per connection, and the pipe's read at end-of-file and its
//! `close` at reap; `"null"` and `"socket"` add nothing. The small `poll` stands in for the accept that would fail with
//! EAGAIN, which costs the kernel a socket and a file allocated and freed
//! again. The child's own path (on the child's time, not the daemon's)
//! has two calls for the defaults of §10.1: one `prlimit64` for
//! `rlimit_core = 0` and one `prctl` for `no_new_privs`; each other
//! `rlimit_*` or `nice` set adds one.
//!
//! Everything that does not depend on the connection — the exec path,
//! argv, the service's environment, credentials, the limits, nice and
//! `no_new_privs` (`plan::Hardening`), the list of signals to reset — is
//! built at load time; only the connection's own variables
//! (`TCPREMOTEIP` and friends, and behind a proxy `TINYINETD_PROXY_*`
//! from [`Conn::proxy`]) are formatted per connection, into the slot's
//! reused buffers. What the daemon is still charged for is mostly
//! the kernel's work in `clone` and in reaping; BENCHMARKS.md compares it
//! with a bare vfork+exec+wait loop.
//!
//! # The resolver fork
//!
//! One other child is started here: the reload's account resolver
//! ([`fork_resolver`]), a real `fork()` that runs ordinary Rust code and
//! never execs. Its own doc gives the argument; the clone rules above are
//! not needed for it.

#![allow(unsafe_code)]

mod child;
mod fd;
mod slot;
#[cfg(test)]
mod tests;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::plan::{Client, Service};
use child::{child_entry, sys};
use fd::{dup_low, lift, non_default_signals, pidfd_floor};
pub use fd::{
    fix_malloc_thresholds, fork_resolver, listen, mark_inherited_cloexec, own_inherited,
    peer_groups, pidfd_open, reset_sigchld, set_tcp_defer_accept,
};
use slot::{fill_slot, Slot};
pub use slot::{Failure, Step};
use std::net::SocketAddr;

/// One accepted connection, ready to hand to a handler.
pub struct Conn {
    /// The accepted socket: the child's fds 0–2; the daemon's copy closes
    /// when `Conn` is dropped.
    pub stream: OwnedFd,
    /// Who the client is: the handler's variables are made from it.
    pub client: Client,
    /// Unique within this run of the daemon; in the handler's environment
    /// and in every log line about the connection.
    pub id: u64,
    /// The handler's fd 2 when it is not the connection (`stderr = "log"`:
    /// a pipe's write end; `"null"`: `/dev/null`). Borrowed: the caller
    /// owns it and closes its copy once `spawn` has returned.
    pub err: Option<RawFd>,
    /// The proxy the connection came through (`proxy_protocol`): `peer`
    /// and `local` are then the original client and destination. Boxed,
    /// so a connection without a proxy costs one word and no allocation.
    pub proxy: Option<Box<Proxied>>,
}

/// What a PROXY protocol header told about a connection, beyond the
/// client's and destination's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxied {
    /// The proxy itself: the connection's own peer
    /// (`TINYINETD_PROXY_IP`, `TINYINETD_PROXY_PORT`).
    pub addr: SocketAddr,
    /// The exported v2 TLVs: (variable, escaped and bounded value).
    pub vars: Vec<(&'static str, String)>,
}

/// Why a child could not be started at all (nothing was cloned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnError {
    /// `clone` failed (EAGAIN: process limit; ENOMEM).
    Fork(Errno),
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::Fork(e) => write!(f, "fork: {}", crate::text::os_error(*e)),
        }
    }
}

/// The children in flight, and what each reads: the daemon's half of the
/// hot path. Buffers are reused from one spawn to the next, so the hot path
/// does not allocate once they have grown to size.
pub struct Spawner {
    /// The signals whose disposition is not SIG_DFL in the daemon (Rust's
    /// SIGPIPE ignore, std's stack-overflow handlers, ignores it
    /// inherited): the ones the child must reset. Listing them here once
    /// saves the child 60-odd system calls per connection.
    reset: Arc<[libc::c_int]>,
    /// One per child that may still be between clone and exec; reused once
    /// it is free. Never more than `slot_limit`.
    slots: Vec<Slot>,
    /// The most slots (see the module documentation: `max_connections + 1`).
    slot_limit: usize,
    /// Failure reports taken out of a slot that was reused before its
    /// child was reaped: (pid, failure), read by [`Spawner::take_failure`].
    failures: Vec<(Pid, Failure)>,
    /// Since when every slot has been busy (at least [`WARM_SLOTS`] of
    /// them), as [`Spawner::room`] last saw; `None` while one is free.
    all_busy_since: Option<std::time::Instant>,
    /// The pidfd of the child [`spawn`] last started, until
    /// [`Spawner::take_pidfd`] takes it (`None`: it has none).
    pidfd: Option<OwnedFd>,
    /// The lowest number a pidfd is moved to ([`lift`]).
    floor: RawFd,
    /// Whether a slot may hold copies for its child ([`Spawner::release`]).
    holding: bool,
    /// Pidfds and a shared descriptor table ([`Spawner::set_many`]).
    many: bool,
}

/// Slots made without question when none is free: under load a handful
/// are busy at once; even at C=256 on two cores, 32 keep the daemon at the
/// spawn ceiling (BENCHMARKS.md).
pub const WARM_SLOTS: usize = 32;

/// How long every slot must have stayed busy before the pool grows past
/// [`WARM_SLOTS`]: far longer than a child takes to reach its exec, even on
/// a loaded machine, so it means children are stopped before it.
pub const GROW_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether a connection can be spawned now (see [`Spawner::room`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// A slot is free, or one may be made.
    Free,
    /// Every slot has been busy for [`GROW_AFTER`]: the next spawn adds
    /// one (`slots` is the pool's size before it).
    Grow { slots: usize },
    /// Every slot is busy: wait a moment before accepting.
    Busy,
}

/// The slot bound until the supervisor sets one: the default
/// `max_connections` (1024) plus one.
const DEFAULT_SLOT_LIMIT: usize = 1025;

impl Spawner {
    /// The signals to reset are read from the dispositions as they are
    /// now. Nothing in the daemon changes a disposition afterwards;
    /// `refresh_signals` is called on every reload all the same. (Not
    /// `Default`: it reads the process's signal state.)
    ///
    /// A root daemon also makes itself non-dumpable here, once and for
    /// all. A handler's `setuid` runs on the memory it shares with the
    /// daemon (CLONE_VM), and the kernel then clears the dumpable flag of
    /// that memory (commit_creds, `suid_dumpable`): left alone, the
    /// daemon's flag would depend on whether a handler with another user
    /// has started yet. Off is the right value for a root daemon: its core
    /// would hold client data and its configuration, and non-dumpable also
    /// means its /proc files and ptrace are root's alone. A non-root
    /// daemon's handlers keep its credentials, so its flag is left as is.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Spawner {
        if nix::unistd::geteuid().is_root() {
            // Only fails for a value other than 0 or 1.
            let _ = nix::sys::prctl::set_dumpable(false);
        }
        Spawner {
            reset: non_default_signals().into(),
            slots: Vec::new(),
            slot_limit: DEFAULT_SLOT_LIMIT,
            failures: Vec::new(),
            all_busy_since: None,
            pidfd: None,
            floor: pidfd_floor(),
            holding: false,
            many: true,
        }
    }

    /// Whether the next children get a pidfd each and start on the
    /// daemon's table (CLONE_FILES, the slot keeping copies), for many
    /// running handlers; or, while few run, are plain children reaped by
    /// the sweep, which then walks only a few (a pidfd costs about a third
    /// of a connection's daemon CPU: BENCHMARKS.md, issue 23). On by
    /// default; `children` decides.
    pub fn set_many(&mut self, many: bool) {
        self.many = many;
    }

    /// Closes the copies slots hold for children that have their own
    /// descriptor tables (`Slot::release`): kept longer, a copy would hide
    /// the connection's end from the client when the handler closes it.
    /// Says whether some are still held (the supervisor looks again soon).
    pub fn release(&mut self) -> bool {
        if self.holding {
            let mut still = false;
            for s in &mut self.slots {
                still |= s.release();
            }
            self.holding = still;
        }
        self.holding
    }

    /// The pidfd of the child the last [`spawn`] started, for `children`'s
    /// reaper; `None`: it has none ([`start_child`]). The next spawn drops
    /// one left untaken.
    pub fn take_pidfd(&mut self) -> Option<OwnedFd> {
        self.pidfd.take()
    }

    /// Bounds the pool at `limit` slots (the supervisor passes
    /// `max_connections + 1`). Slots beyond a lowered bound stay until the
    /// daemon exits; they are only ever reused.
    pub fn set_slot_limit(&mut self, limit: usize) {
        self.slot_limit = limit.max(1);
    }

    /// Whether `spawn` would find a slot at `now` without the pool growing
    /// past what this moment calls for (see the module documentation).
    /// Never waits.
    pub fn room(&mut self, now: std::time::Instant) -> Room {
        if self
            .slots
            .iter()
            .any(|s| s.data().busy.load(Ordering::Acquire) == 0)
            || self.slots.len() < WARM_SLOTS
        {
            self.all_busy_since = None;
            return Room::Free;
        }
        let since = *self.all_busy_since.get_or_insert(now);
        if self.slots.len() < self.slot_limit && now.saturating_duration_since(since) >= GROW_AFTER
        {
            Room::Grow {
                slots: self.slots.len(),
            }
        } else {
            Room::Busy
        }
    }

    /// Re-reads the dispositions (see [`Spawner::new`]).
    pub fn refresh_signals(&mut self) {
        self.reset = non_default_signals().into();
    }

    /// Whether the reaped child `pid` failed before or at `execve` (it
    /// exited 127 then), and how. Call once for every reaped child: it
    /// also forgets the pid, which the kernel may now give another child.
    pub fn take_failure(&mut self, pid: Pid) -> Option<Failure> {
        if let Some(k) = self.failures.iter().position(|(p, _)| *p == pid) {
            return Some(self.failures.swap_remove(k).1);
        }
        let slot = self.slots.iter_mut().find(|s| s.pid == Some(pid))?;
        slot.pid = None;
        slot.release();
        // A reaped child has left the daemon's memory: the slot is free.
        let d = slot.free_data()?;
        d.service = None;
        d.take_failure()
    }

    /// The index of a free slot: the first free one (so that few stacks
    /// stay warm), or a new one. Never waits: with `slot_limit` slots all
    /// busy (which `max_connections` rules out), EAGAIN at once.
    fn free_slot(&mut self) -> Result<usize, Errno> {
        if let Some(i) = self
            .slots
            .iter()
            .position(|s| s.data().busy.load(Ordering::Acquire) == 0)
        {
            return Ok(i);
        }
        if self.slots.len() < self.slot_limit {
            self.slots.push(Slot::new()?);
            return Ok(self.slots.len() - 1);
        }
        Err(Errno::EAGAIN)
    }
}

/// Starts `svc`'s handler on `conn` and returns its pid at once: it does
/// not wait for the exec. Whether the exec failed is learnt when the
/// child is reaped ([`Spawner::take_failure`]). The connection is closed in
/// the parent when the caller drops `conn`.
pub fn spawn(svc: &Arc<Service>, conn: &Conn, spawner: &mut Spawner) -> Result<Pid, SpawnError> {
    // Earlier children have most likely made their own tables by now.
    spawner.release();
    let i = spawner.free_slot().map_err(SpawnError::Fork)?;
    let Spawner {
        reset,
        slots,
        failures,
        pidfd,
        floor,
        holding,
        many,
        ..
    } = spawner;
    *pidfd = None;
    let slot = &mut slots[i];
    slot.held = [None, None];
    let fds = if *many {
        // The caller closes its copies at once: the slot keeps its own.
        let conn_fd = dup_low(conn.stream.as_raw_fd()).map_err(SpawnError::Fork)?;
        let err_fd = match conn.err {
            Some(fd) => Some(dup_low(fd).map_err(SpawnError::Fork)?),
            None => None,
        };
        let fds = (conn_fd.as_raw_fd(), err_fd.as_ref().map(|f| f.as_raw_fd()));
        slot.held = [Some(conn_fd), err_fd];
        fds
    } else {
        (conn.stream.as_raw_fd(), conn.err)
    };
    let last = slot.pid.take();
    // --- Parent, before clone: build everything the child will use, in a
    //     slot no child uses any more. ---
    let Some(d) = slot.free_data() else {
        // free_slot returned a free slot.
        return Err(SpawnError::Fork(Errno::EAGAIN));
    };
    if let Some(pid) = last {
        // Its child left the slot but has not been reaped yet.
        if let Some(f) = d.take_failure() {
            failures.push((pid, f));
        }
    }
    fill_slot(d, svc, conn, fds, reset);
    let started = start_child(slot, *many, *floor);
    *holding = true;
    let (pid, fd) = started?;
    *pidfd = fd;
    Ok(pid)
}

/// Clones the child on the slot `fill_slot` prepared and records its pid;
/// on failure the slot is free again. Returns the pid and the child's
/// pidfd, which CLONE_PIDFD makes (close-on-exec) in the same call. The
/// kernel allocates it inside `clone` (kernel/fork.c, `copy_process`): at
/// the descriptor limit (EMFILE, ENFILE) the whole clone fails, and the
/// child is cloned again without it (no process was made, so that is
/// safe), to be reaped by `children`'s sweep.
#[inline]
fn start_child(
    slot: &mut Slot,
    many: bool,
    floor: RawFd,
) -> Result<(Pid, Option<OwnedFd>), SpawnError> {
    let mut flags = libc::CLONE_VM | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD;
    if !sys::CONCURRENT {
        flags |= libc::CLONE_VFORK;
    }
    let mut pidfd: libc::c_int = -1;
    let mut cloned = if many {
        flags |= libc::CLONE_FILES;
        clone_on(slot, flags | libc::CLONE_PIDFD, &mut pidfd)
    } else {
        clone_on(slot, flags, std::ptr::null_mut())
    };
    if many && matches!(cloned, Err(Errno::EMFILE | Errno::ENFILE)) {
        pidfd = -1;
        cloned = clone_on(slot, flags, std::ptr::null_mut());
    }
    let data = slot.data();
    let pid = match cloned {
        Ok(pid) => Pid::from_raw(pid),
        Err(e) => {
            // No child: the slot is free again.
            data.busy.store(0, Ordering::Release);
            if let Some(d) = slot.free_data() {
                d.service = None;
            }
            return Err(SpawnError::Fork(e));
        }
    };
    slot.pid = Some(pid);
    // SAFETY: on success with CLONE_PIDFD the kernel stored a new
    // descriptor in `pidfd`, owned by nothing else; without it, -1.
    let fd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
    Ok((pid, fd.map(|fd| lift(fd, floor))))
}

/// One `clone` of the child on `slot` with `flags`; with CLONE_PIDFD the
/// kernel writes the pidfd to `pidfd` (clone's `parent_tid` argument).
#[inline]
fn clone_on(
    slot: &Slot,
    flags: libc::c_int,
    pidfd: *mut libc::c_int,
) -> Result<libc::pid_t, Errno> {
    // From here the daemon only shares the slot with the child.
    let data = slot.data();
    // SAFETY: `child_entry` runs on its own stack, reads only the slot and
    // what it points into, which stays alive and unchanged until the
    // kernel zeroes `busy` (the slot is not written or reused before, and
    // holds the `Arc<Service>`), writes only its stack and the failure
    // report, and makes only raw system calls (see the module
    // documentation and `child`). `pidfd` is null or points at a live
    // c_int of the caller's, written by the kernel before clone returns.
    let pid = unsafe {
        libc::clone(
            child_entry,
            data.stack.top(),
            flags,
            slot.data.as_ptr() as *mut libc::c_void,
            pidfd,
            std::ptr::null_mut::<libc::c_void>(),
            data.busy.as_ptr(),
        )
    };
    if pid < 0 {
        return Err(Errno::last());
    }
    Ok(pid)
}
