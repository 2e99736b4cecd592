//! `(Service, Conn) → Spawned`: start a child, put the connection on its
//! fds 0–2 and exec the handler. The only module with `unsafe` code.
//!
//! # How: clone(CLONE_VM), without waiting for the exec
//!
//! The child is created with `clone(CLONE_VM | CLONE_CHILD_CLEARTID |
//! SIGCHLD)` on a small stack of its own. It shares the daemon's memory, so
//! no page tables are copied (most of what `fork` costs), and the daemon
//! does not wait for it: `clone` returns at once, and the daemon goes back
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
//!   zero; it writes only its own stack and the slot's failure report
//!   (atomics). The daemon touches none of the child's stack, and the
//!   stack has a guard page below it.
//! * **No libc in the child.** The child runs while the daemon runs, and
//!   shares its thread-local storage, `errno` included: anything that
//!   writes errno or takes a lock could corrupt the daemon. So between
//!   clone and exec the child makes raw system calls (`sys::call`, which
//!   returns `-errno` and writes nothing else) and nothing else: no
//!   allocation, no locks, no logging, no panics, no return. The kernel
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
//! * **Descriptors.** The child has its own copy of the descriptor table
//!   (no CLONE_FILES); it puts the connection on 0–2 and marks every
//!   descriptor from 3 up close-on-exec; nothing else survives the exec.
//!   The daemon closes its copy of the connection as soon as clone returns.
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
//! A connection costs the daemon five system calls of its own (six with
//! the `exit` log line written at the default log level): `accept4`;
//! `clone`, which returns as soon as the child exists; `close` of its copy
//! of the connection (after a `getsockname` when the listener is a
//! wildcard address); a zero-timeout `poll` of the listener, which asks
//! whether the next connection is already waiting; and one `wait4` when
//! the exit is read from the signalfd. The listener is drained up to a
//! budget per loop turn, so one full `poll` serves a burst, and one
//! signalfd `read` and one `wait4` loop serve every exit between two
//! turns. The small `poll` stands in for the accept that would fail with
//! EAGAIN, which costs the kernel a socket and a file allocated and freed
//! again.
//!
//! Everything that does not depend on the connection — the exec path,
//! argv, the service's environment, credentials, the list of signals to
//! reset — is built at load time; only the connection's own variables
//! (`TCPREMOTEIP` and friends) are formatted per connection, into the
//! slot's reused buffers. What the daemon is still charged for is mostly
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

use std::ffi::c_char;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};
use std::sync::Arc;

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::plan::Service;

/// One accepted connection, ready to hand to a handler.
pub struct Conn {
    pub stream: OwnedFd,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Unique within this run of the daemon; in the handler's environment
    /// and in every log line about the connection.
    pub id: u64,
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

/// The step of the child contract that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    Setsid = 1,
    Dup = 2,
    CloseFds = 3,
    Chdir = 4,
    Setgroups = 5,
    Setgid = 6,
    Setuid = 7,
    VerifyCred = 8,
    Exec = 9,
}

impl Step {
    fn from_u8(b: u8) -> Option<Step> {
        Some(match b {
            1 => Step::Setsid,
            2 => Step::Dup,
            3 => Step::CloseFds,
            4 => Step::Chdir,
            5 => Step::Setgroups,
            6 => Step::Setgid,
            7 => Step::Setuid,
            8 => Step::VerifyCred,
            9 => Step::Exec,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Setsid => "setsid",
            Step::Dup => "dup2",
            Step::CloseFds => "close_range",
            Step::Chdir => "chdir",
            Step::Setgroups => "setgroups",
            Step::Setgid => "setgid",
            Step::Setuid => "setuid",
            Step::VerifyCred => "verify-credentials",
            Step::Exec => "execve",
        }
    }
}

/// Why a child did not reach its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub step: Step,
    pub errno: Errno,
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

/// The child's stack, below a guard page: the child path uses a few
/// hundred bytes, and only the pages it touches take memory.
const CHILD_STACK: usize = 32 * 1024;

/// A child's stack: its own mapping, with a guard page below it, so that
/// only the pages a child touches are resident.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
    fn new() -> Result<Stack, Errno> {
        let guard = page_size();
        let len = CHILD_STACK + guard;
        // SAFETY: a fresh anonymous mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        let stack = Stack { base, len };
        // SAFETY: the lowest page of the mapping we own.
        if unsafe { libc::mprotect(base, guard, libc::PROT_NONE) } < 0 {
            return Err(Errno::last());
        }
        Ok(stack)
    }

    /// The top of the stack, 16-byte aligned, as clone() wants it (the
    /// stack grows down on every architecture Linux runs this on).
    fn top(&self) -> *mut libc::c_void {
        (self.base as usize + self.len) as *mut libc::c_void
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer used by any child (a slot
        // whose child may still run is leaked, never dropped).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf only reads a value.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    }
}

/// A child's slot: who had it last, and the memory it reads.
struct Slot {
    /// The child last started on this slot, until it is reaped or the slot
    /// reused, so that its failure report can be found.
    pid: Option<Pid>,
    /// On the heap, so that it does not move while a child reads it; held
    /// as a raw pointer, not a `Box`, because a `Box` claims sole access,
    /// and a running child reads it too.
    data: NonNull<SlotData>,
}

/// Everything one child reads or writes in the daemon's memory. The
/// daemon writes it only while `busy` is zero, and then only before clone.
struct SlotData {
    /// Non-zero from just before clone until the child no longer uses the
    /// daemon's memory: the kernel zeroes it (CLONE_CHILD_CLEARTID) when
    /// the child's `execve` has replaced its memory, or the child has
    /// exited. A futex word, as the kernel wants it.
    busy: AtomicI32,
    /// Written by the child on failure (a `Step`, 0 for none), read by the
    /// daemon once `busy` is zero.
    failed_step: AtomicU8,
    failed_errno: AtomicI32,
    args: ChildArgs,
    /// The per-connection variables, NUL-terminated one after the other.
    vars: Vec<u8>,
    /// Start offsets of each variable in `vars`.
    offsets: Vec<usize>,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    /// The child's stack. The daemon never makes a reference into it.
    stack: Stack,
    /// Keep alive what `args`, `argv` and `envp` point into while the child
    /// may read it (a reload may drop the daemon's own references).
    service: Option<Arc<Service>>,
    reset: Arc<[libc::c_int]>,
}

/// Everything the child needs, as raw values: the child touches no
/// Rust-owned data except through these pointers, into its `SlotData`
/// and the `Arc<Service>` it holds.
struct ChildArgs {
    path: *const c_char,
    /// The checked program's `O_PATH` descriptor, exec'd with execveat;
    /// -1 to exec `path` (a script: see `ExecImage::fd`).
    exec_fd: RawFd,
    argv: *const *const c_char,
    envp: *const *const c_char,
    conn: RawFd,
    umask: libc::mode_t,
    /// uid, gid, groups pointer and length.
    cred: Option<(u32, u32, *const u32, usize)>,
    /// The signals to reset to SIG_DFL.
    reset: *const libc::c_int,
    reset_len: usize,
}

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
        }
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

impl Slot {
    fn new() -> Result<Slot, Errno> {
        let data = Box::new(SlotData {
            busy: AtomicI32::new(0),
            failed_step: AtomicU8::new(0),
            failed_errno: AtomicI32::new(0),
            args: ChildArgs {
                path: std::ptr::null(),
                exec_fd: -1,
                argv: std::ptr::null(),
                envp: std::ptr::null(),
                conn: -1,
                umask: 0,
                cred: None,
                reset: std::ptr::null(),
                reset_len: 0,
            },
            vars: Vec::new(),
            offsets: Vec::new(),
            argv: Vec::new(),
            envp: Vec::new(),
            stack: Stack::new()?,
            service: None,
            reset: Arc::from(Vec::new()),
        });
        Ok(Slot {
            pid: None,
            data: NonNull::from(Box::leak(data)),
        })
    }

    /// Shared access, at any time: what a child writes is atomic, and the
    /// rest it only reads.
    fn data(&self) -> &SlotData {
        // SAFETY: allocated in `new`, freed only in `drop`; no `&mut` to it
        // exists while `&self` is borrowed (see `free_data`).
        unsafe { self.data.as_ref() }
    }

    /// Sole access, once no child uses the slot (`busy` is zero); `None`
    /// while one may.
    fn free_data(&mut self) -> Option<&mut SlotData> {
        if self.data().busy.load(Ordering::Acquire) != 0 {
            return None;
        }
        // SAFETY: no child reads or writes the slot any more (the kernel
        // zeroed `busy` when its child exec'd or exited, and a new child is
        // started only after this borrow ends), and `&mut self` excludes
        // every other reference the daemon could make.
        Some(unsafe { self.data.as_mut() })
    }
}

impl Drop for Slot {
    /// Frees the slot, unless a child still between clone and exec reads
    /// it: that one is leaked (only on the daemon's way out).
    fn drop(&mut self) {
        if self.free_data().is_some() {
            // SAFETY: made by `Box::leak` in `new`, and no child uses it.
            drop(unsafe { Box::from_raw(self.data.as_ptr()) });
        }
    }
}

impl SlotData {
    /// The child's failure report, cleared. Only once `busy` is zero.
    fn take_failure(&self) -> Option<Failure> {
        let step = self.failed_step.swap(0, Ordering::Relaxed);
        Step::from_u8(step).map(|step| Failure {
            step,
            errno: Errno::from_raw(self.failed_errno.load(Ordering::Relaxed)),
        })
    }
}

/// Signals 1..=64 whose disposition is not SIG_DFL, read with the raw
/// system call (glibc hides 32 and 33).
fn non_default_signals() -> Vec<libc::c_int> {
    let mut out = Vec::new();
    for sig in 1..65 {
        // The kernel's struct sigaction starts with the handler (0 = SIG_DFL).
        let mut old = [0u64; 4];
        // SAFETY: reads one disposition into `old`, which is large enough
        // for the kernel's struct sigaction; changes nothing.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                std::ptr::null::<u64>(),
                old.as_mut_ptr(),
                8usize,
            )
        };
        if rc == 0 && old[0] != libc::SIG_DFL as u64 {
            out.push(sig);
        }
    }
    out
}

/// Starts `svc`'s handler on `conn` and returns its pid at once: it does
/// not wait for the exec. Whether the exec failed is learnt when the
/// child is reaped ([`Spawner::take_failure`]). The connection is closed in
/// the parent when the caller drops `conn`.
pub fn spawn(svc: &Arc<Service>, conn: &Conn, scratch: &mut Spawner) -> Result<Pid, SpawnError> {
    let i = scratch.free_slot().map_err(SpawnError::Fork)?;
    let Spawner {
        reset,
        slots,
        failures,
        ..
    } = scratch;
    let slot = &mut slots[i];
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
    d.service = Some(Arc::clone(svc));
    d.reset = Arc::clone(reset);
    let img = &svc.image;
    build_vars(&mut d.vars, &mut d.offsets, conn);
    d.argv.clear();
    d.argv.extend(img.argv.iter().map(|a| a.as_ptr()));
    d.argv.push(std::ptr::null());
    d.envp.clear();
    d.envp.extend(img.env.iter().map(|e| e.as_ptr()));
    let base = d.vars.as_ptr();
    // SAFETY: every offset is < vars.len() and points at the start of a
    // NUL-terminated string written by build_vars.
    d.envp.extend(
        d.offsets
            .iter()
            .map(|&o| unsafe { base.add(o) } as *const c_char),
    );
    d.envp.push(std::ptr::null());
    d.args = ChildArgs {
        path: img.path.as_ptr(),
        exec_fd: img.fd.as_ref().map_or(-1, |f| f.as_raw_fd()),
        argv: d.argv.as_ptr(),
        envp: d.envp.as_ptr(),
        conn: conn.stream.as_raw_fd(),
        umask: img.umask as libc::mode_t,
        cred: svc
            .cred
            .as_ref()
            .map(|c| (c.uid, c.gid, c.groups.as_ptr(), c.groups.len())),
        reset: d.reset.as_ptr(),
        reset_len: d.reset.len(),
    };
    d.failed_step.store(0, Ordering::Relaxed);
    d.failed_errno.store(0, Ordering::Relaxed);
    d.busy.store(1, Ordering::Relaxed);

    let mut flags = libc::CLONE_VM | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD;
    if !sys::CONCURRENT {
        flags |= libc::CLONE_VFORK;
    }
    // From here the daemon only shares the slot with the child.
    let data = slot.data();
    // SAFETY: `child_entry` runs on its own stack, reads only the slot and
    // what it points into, which stays alive and unchanged until the
    // kernel zeroes `busy` (the slot is not written or reused before, and
    // holds the `Arc<Service>`), writes only its stack and the failure
    // report, and makes only raw system calls (see the module
    // documentation).
    let pid = unsafe {
        libc::clone(
            child_entry,
            data.stack.top(),
            flags,
            slot.data.as_ptr() as *mut libc::c_void,
            std::ptr::null_mut::<libc::pid_t>(),
            std::ptr::null_mut::<libc::c_void>(),
            data.busy.as_ptr(),
        )
    };
    let clone_errno = Errno::last();
    if pid < 0 {
        // No child: the slot is free again.
        data.busy.store(0, Ordering::Release);
        if let Some(d) = slot.free_data() {
            d.service = None;
        }
        return Err(SpawnError::Fork(clone_errno));
    }
    let pid = Pid::from_raw(pid);
    slot.pid = Some(pid);
    Ok(pid)
}

/// Writes this connection's variables into `v`, recording where each
/// starts in `o`. IPv4-mapped IPv6 addresses are shown as IPv4, IPv6
/// without brackets.
fn build_vars(v: &mut Vec<u8>, o: &mut Vec<usize>, conn: &Conn) {
    v.clear();
    o.clear();
    let rip = conn.peer.ip().to_canonical();
    let lip = conn.local.ip().to_canonical();
    let var = |o: &mut Vec<usize>, v: &mut Vec<u8>, name: &str, val: &dyn std::fmt::Display| {
        o.push(v.len());
        // Writing into a Vec cannot fail.
        let _ = write!(v, "{name}={val}\0");
    };
    var(o, v, "TCPREMOTEIP", &rip);
    var(o, v, "TCPREMOTEPORT", &conn.peer.port());
    var(o, v, "TCPLOCALIP", &lip);
    var(o, v, "TCPLOCALPORT", &conn.local.port());
    var(o, v, "REMOTE_ADDR", &rip);
    var(o, v, "REMOTE_PORT", &conn.peer.port());
    var(o, v, "TINYINETD_CONN_ID", &conn.id);
}

/// Raw system calls for the child: they return the result or `-errno` and
/// write nothing else (libc's wrappers store errno, which the child shares
/// with the daemon through its thread-local storage).
mod sys {
    /// Whether the child may run while the daemon does: only where the
    /// calls below are made without libc. Elsewhere (or built with
    /// `--cfg tinyinetd_vfork`) the child is started with CLONE_VFORK too,
    /// the daemon is suspended until the exec, and libc's `syscall` may
    /// write errno.
    #[cfg(all(target_arch = "x86_64", not(tinyinetd_vfork)))]
    pub const CONCURRENT: bool = true;
    #[cfg(not(all(target_arch = "x86_64", not(tinyinetd_vfork))))]
    pub const CONCURRENT: bool = false;

    #[cfg(not(any(target_arch = "x86", target_arch = "arm", target_arch = "sparc")))]
    pub use libc::{
        SYS_getresgid as GETRESGID, SYS_getresuid as GETRESUID, SYS_setgid as SETGID,
        SYS_setgroups as SETGROUPS, SYS_setuid as SETUID,
    };
    /// The credential calls with 32-bit ids. On 32-bit x86, arm and sparc
    /// the plain numbers are the old 16-bit-id calls (libc's wrappers
    /// pick the `32` ones); everywhere else they are the 32-bit ones.
    #[cfg(any(target_arch = "x86", target_arch = "arm", target_arch = "sparc"))]
    pub use libc::{
        SYS_getresgid32 as GETRESGID, SYS_getresuid32 as GETRESUID, SYS_setgid32 as SETGID,
        SYS_setgroups32 as SETGROUPS, SYS_setuid32 as SETUID,
    };

    /// System call `n` with six arguments (the unused ones are ignored).
    ///
    /// # Safety
    /// As the system call itself: pointer arguments must be valid for it.
    #[cfg(all(target_arch = "x86_64", not(tinyinetd_vfork)))]
    #[inline(always)]
    pub unsafe fn call(n: libc::c_long, a: [usize; 6]) -> isize {
        let ret: isize;
        // The x86-64 system call convention: number in rax, arguments in
        // rdi, rsi, rdx, r10, r8, r9; rcx and r11 are clobbered.
        core::arch::asm!(
            "syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
        ret
    }

    /// System call `n` through libc (the child runs only while the daemon
    /// is suspended, so the errno it writes harms no one).
    ///
    /// # Safety
    /// As the system call itself: pointer arguments must be valid for it.
    #[cfg(not(all(target_arch = "x86_64", not(tinyinetd_vfork))))]
    #[inline(always)]
    pub unsafe fn call(n: libc::c_long, a: [usize; 6]) -> isize {
        let r = libc::syscall(n, a[0], a[1], a[2], a[3], a[4], a[5]);
        if r < 0 {
            -(*libc::__errno_location() as isize)
        } else {
            r as isize
        }
    }
}

/// The entry point clone() calls in the child.
extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `SlotData` the parent passed to clone, alive and
    // unchanged until this child has exec'd or exited.
    unsafe { child_main(&*(arg as *const SlotData)) }
}

/// The child half: runs between clone and exec. Never returns.
///
/// # Safety
/// Only call in a child started by `spawn`'s clone, with `d` and its
/// pointers valid until this child execs or exits.
unsafe fn child_main(d: &SlotData) -> ! {
    use libc::{c_long, SYS_execve, SYS_fcntl, SYS_setsid};
    let a = &d.args;
    let call = |n: c_long, a: [usize; 6]| sys::call(n, a);

    // 1. Every disposition that is not SIG_DFL back to SIG_DFL (the parent
    //    listed them: see `Spawner::reset`), through the raw system call:
    //    glibc's sigaction() refuses signals 32 and 33 (its own), but a
    //    parent may have left them ignored, and an ignore survives execve.
    //    A zeroed kernel `struct sigaction` is SIG_DFL with no flags and an
    //    empty mask.
    let dfl = [0u64; 4];
    for i in 0..a.reset_len {
        let sig = *a.reset.add(i) as usize;
        call(
            libc::SYS_rt_sigaction,
            [sig, dfl.as_ptr() as usize, 0, 8, 0, 0],
        );
    }
    // 2. Empty the mask (it survives execve). Pending signals are not
    //    inherited across clone, so nothing fires here. The kernel's
    //    sigset is 8 bytes.
    let empty = 0u64;
    call(
        libc::SYS_rt_sigprocmask,
        [
            libc::SIG_SETMASK as usize,
            &empty as *const u64 as usize,
            0,
            8,
            0,
            0,
        ],
    );

    // 3. Own session: the handler and its children form one process group
    //    that the daemon can signal, detached from the daemon's terminal.
    let rc = call(SYS_setsid, [0; 6]);
    if rc < 0 {
        fail(d, Step::Setsid, rc);
    }

    // 4. The connection on 0, 1, 2. dup3 clears FD_CLOEXEC on the copies.
    //    The accepted socket is never 0–2 (std reopens closed stdio on
    //    /dev/null at start), but if it were, it would be overwritten (and
    //    dup3 refuses equal descriptors), so move it out of the way first.
    let mut conn = a.conn as usize;
    if conn <= 2 {
        let rc = call(
            SYS_fcntl,
            [conn, libc::F_DUPFD_CLOEXEC as usize, 3, 0, 0, 0],
        );
        if rc < 0 {
            fail(d, Step::Dup, rc);
        }
        conn = rc as usize;
    }
    for target in 0..3 {
        let rc = call(libc::SYS_dup3, [conn, target, 0, 0, 0, 0]);
        if rc < 0 {
            fail(d, Step::Dup, rc);
        }
    }

    // 5. Nothing else may reach the handler: mark every descriptor from 3
    //    up close-on-exec (close_range(2), Linux 5.11). The descriptor table
    //    is the child's own copy (no CLONE_FILES): this never touches the
    //    daemon's descriptors.
    let rc = call(
        libc::SYS_close_range,
        [
            3,
            u32::MAX as usize,
            libc::CLOSE_RANGE_CLOEXEC as usize,
            0,
            0,
            0,
        ],
    );
    if rc < 0 {
        fail(d, Step::CloseFds, rc);
    }

    // 6. Working directory and file-creation mask.
    let rc = call(libc::SYS_chdir, [c"/".as_ptr() as usize, 0, 0, 0, 0, 0]);
    if rc < 0 {
        fail(d, Step::Chdir, rc);
    }
    call(libc::SYS_umask, [a.umask as usize, 0, 0, 0, 0, 0]);

    // 7. Drop privileges: supplementary groups, then gid, then uid (after
    //    setuid we could no longer change groups), then verify that none of
    //    the real, effective or saved ids kept the old value. The raw calls
    //    change this process only, which is all there is: the child is a
    //    thread group of its own.
    if let Some((uid, gid, groups, ngroups)) = a.cred {
        let rc = call(sys::SETGROUPS, [ngroups, groups as usize, 0, 0, 0, 0]);
        if rc < 0 {
            fail(d, Step::Setgroups, rc);
        }
        let rc = call(sys::SETGID, [gid as usize, 0, 0, 0, 0, 0]);
        if rc < 0 {
            fail(d, Step::Setgid, rc);
        }
        let rc = call(sys::SETUID, [uid as usize, 0, 0, 0, 0, 0]);
        if rc < 0 {
            fail(d, Step::Setuid, rc);
        }
        match (res_ids(sys::GETRESUID), res_ids(sys::GETRESGID)) {
            (Ok(u), Ok(g)) if u == [uid; 3] && g == [gid; 3] => {}
            (Err(rc), _) | (_, Err(rc)) => fail(d, Step::VerifyCred, rc),
            _ => fail(d, Step::VerifyCred, -(libc::EPERM as isize)),
        }
    }

    // 8. Exec what was checked at load: the program's own descriptor,
    //    whatever its path names now (execveat with an empty path and
    //    AT_EMPTY_PATH, Linux 3.19). The descriptor is O_CLOEXEC, which a
    //    binary does not mind; a script is exec'd by its checked path
    //    instead (exec_fd -1), see `ExecImage::fd`. The descriptor number
    //    is valid here: this is a copy of the daemon's table, and the
    //    slot's `Arc<Service>` keeps the daemon's copy open until the
    //    exec. It only returns on failure.
    let rc = if a.exec_fd >= 0 {
        call(
            libc::SYS_execveat,
            [
                a.exec_fd as usize,
                c"".as_ptr() as usize,
                a.argv as usize,
                a.envp as usize,
                libc::AT_EMPTY_PATH as usize,
                0,
            ],
        )
    } else {
        call(
            SYS_execve,
            [a.path as usize, a.argv as usize, a.envp as usize, 0, 0, 0],
        )
    };
    fail(d, Step::Exec, rc)
}

/// The real, effective and saved ids from `getresuid` or `getresgid`
/// (`n`), or the call's `-errno`. The kernel writes into a mutable buffer
/// the compiler knows may change.
///
/// # Safety
/// `n` must be one of the two calls; safe in the child (a raw call).
unsafe fn res_ids(n: libc::c_long) -> Result<[u32; 3], isize> {
    let mut ids = [0u32; 3];
    let p = ids.as_mut_ptr();
    let rc = sys::call(
        n,
        [p as usize, p.add(1) as usize, p.add(2) as usize, 0, 0, 0],
    );
    if rc < 0 {
        Err(rc)
    } else {
        Ok(ids)
    }
}

/// Records `(step, errno)` for the daemon (`rc` is the failed call's
/// `-errno`) and exits 127.
///
/// # Safety
/// Only in the child.
unsafe fn fail(d: &SlotData, step: Step, rc: isize) -> ! {
    d.failed_errno.store(-rc as i32, Ordering::Relaxed);
    d.failed_step.store(step as u8, Ordering::Relaxed);
    loop {
        sys::call(libc::SYS_exit_group, [127, 0, 0, 0, 0, 0]);
    }
}

/// Forks a resolver child (`resolver`): a real `fork()`, not the
/// handlers' clone. The child leads a process group of its own (so that
/// the daemon can SIGKILL it and its getent children together), keeps only
/// `out` of the daemon's descriptors (0–2 become /dev/null; the listeners,
/// the signalfd, the daemon's end of the pipe and everything else are
/// closed), runs `body` and exits with its value. Returns the child's pid;
/// the daemon's copy of `out` is closed.
///
/// SAFETY argument. After `fork` the child is a copy of the daemon with one
/// thread, and the daemon has only one (it never starts a thread), so no
/// lock in the copy is held by a thread that no longer exists: the child
/// may run ordinary Rust code, allocation included. It never returns into
/// the daemon's code: it leaves by `_exit`, so no destructor of the
/// daemon's state (listeners, the signalfd) runs, and no buffered output is
/// flushed. Its signal mask is the daemon's (the signals the daemon reads
/// from its signalfd stay blocked in it, so SIGTERM does not stop it; the
/// daemon uses SIGKILL); `std::process::Command` resets the mask and
/// SIGPIPE for the getent it runs.
pub fn fork_resolver(out: OwnedFd, body: impl FnOnce(OwnedFd) -> i32) -> Result<Pid, Errno> {
    // SAFETY: see above; the daemon is single-threaded.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Errno::last());
    }
    if pid > 0 {
        // Also here, so that the group exists before `fork_resolver`
        // returns, whichever of the two runs first.
        let _ = nix::unistd::setpgid(Pid::from_raw(pid), Pid::from_raw(pid));
        drop(out);
        return Ok(Pid::from_raw(pid));
    }
    // The child.
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    let keep = only_descriptor(out.into_raw_fd());
    // SAFETY: `keep` is open and owned by nothing else: `only_descriptor`
    // closed every other copy of it.
    let code = body(unsafe { OwnedFd::from_raw_fd(keep) });
    // SAFETY: `_exit` ends the child without running anything of the daemon's.
    unsafe { libc::_exit(code) }
}

/// In the resolver child: closes every descriptor from 3 up but `keep`
/// (moved to 3 or above first) and puts /dev/null on 0–2. Returns `keep`'s
/// number.
fn only_descriptor(mut keep: RawFd) -> RawFd {
    // SAFETY: plain system calls on descriptor numbers, in a child whose
    // descriptors nothing else uses (it is single-threaded and never
    // returns into the daemon's code).
    unsafe {
        if keep < 3 {
            keep = libc::fcntl(keep, libc::F_DUPFD_CLOEXEC, 3);
            if keep < 0 {
                libc::_exit(125);
            }
        }
        let mut ok = true;
        if keep > 3 {
            ok &= libc::syscall(libc::SYS_close_range, 3u32, (keep - 1) as u32, 0u32) == 0;
        }
        ok &= libc::syscall(libc::SYS_close_range, (keep + 1) as u32, u32::MAX, 0u32) == 0;
        if !ok {
            // Not reached on a kernel the daemon starts on (it needs 5.11 for
            // close_range); kept so that a listener can never stay open here.
            let mut lim: libc::rlimit = std::mem::zeroed();
            let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                lim.rlim_cur.min(1 << 20) as RawFd
            } else {
                1 << 16
            };
            for fd in 3..max {
                if fd != keep {
                    libc::close(fd);
                }
            }
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                if fd != null {
                    libc::dup2(null, fd);
                }
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
    keep
}

/// Sets SIGCHLD back to SIG_DFL in the daemon. An ignore inherited from
/// whatever started it (ignores survive execve) makes the kernel reap every
/// child at once: `waitpid` then fails with ECHILD, so no exit would ever
/// be seen (and the `getent` lookups at load fail with "No child
/// processes"). Call first thing, before anything is started.
pub fn reset_sigchld() -> std::io::Result<()> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: installs SIG_DFL, no handler: no code of ours can run on the
    // signal, and nothing else in the daemon has a disposition for it.
    unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) }
        .map(drop)
        .map_err(std::io::Error::from)
}

/// Marks every descriptor the daemon inherited beyond 0–2 close-on-exec, so
/// that nothing its parent leaked can reach a handler (or the children of a
/// handler, if one of our own paths ever forgot `CLOEXEC`).
pub fn mark_inherited_cloexec() -> std::io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes flags; it
    // touches no memory.
    let rc = unsafe { libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Takes ownership of a descriptor passed by the service manager
/// (`LISTEN_FDS`), if it is open. Called once per passed descriptor.
pub fn own_inherited(fd: RawFd) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    if fd < 3 {
        return None;
    }
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the descriptor is open, was handed to this process by its
    // parent, and nothing else in the daemon owns it: `LISTEN_FDS` is read
    // once, at start, and each number is adopted once.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
    use std::ffi::CString;
    use std::os::unix::net::UnixStream;

    /// A service running `program` (parsed from a real config, then its
    /// exec path replaced), and a connection on one end of a socket pair.
    fn fixture(program: &str) -> (Arc<Service>, Conn, UnixStream) {
        let text = "[[service]]\nname = \"t\"\nlisten = [\"127.0.0.1:9\"]\nprogram = \"/bin/sh\"\n";
        let mut plan = crate::config::parse(
            std::path::Path::new("test.toml"),
            text,
            &crate::config::RealSystem,
        )
        .expect("parse");
        let mut svc = Arc::try_unwrap(plan.services.remove(0)).expect("sole owner");
        svc.image.path = CString::new(program).expect("path");
        svc.image.fd = None;
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let conn = Conn {
            stream: theirs.into(),
            peer: "127.0.0.1:40000".parse().expect("addr"),
            local: "127.0.0.1:9".parse().expect("addr"),
            id: 1,
        };
        (Arc::new(svc), conn, ours)
    }

    /// Waits for `pid` to exit without reaping it: its slot is free then.
    fn wait_exited(pid: Pid) {
        waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT).expect("waitid");
    }

    /// Starts `program` on a fresh `Spawner`, reaps it and checks its exit
    /// code.
    fn spawn_and_reap(program: &str, code: i32) -> (Spawner, Pid) {
        let mut scratch = Spawner::new();
        let (svc, conn, _peer) = fixture(program);
        let pid = spawn(&svc, &conn, &mut scratch).expect("spawn");
        assert_eq!(
            waitpid(pid, None).expect("waitpid"),
            WaitStatus::Exited(pid, code)
        );
        (scratch, pid)
    }

    #[test]
    fn a_failed_exec_is_reported_once_when_its_child_is_reaped() {
        let (mut scratch, pid) = spawn_and_reap("/nonexistent/handler", 127);
        assert_eq!(
            scratch.take_failure(pid),
            Some(Failure {
                step: Step::Exec,
                errno: Errno::ENOENT
            })
        );
        assert_eq!(scratch.take_failure(pid), None);
    }

    /// With a descriptor, the child execs it, not the path (which here
    /// names nothing at all).
    #[test]
    fn the_held_descriptor_is_exec_d_not_the_path() {
        let mut scratch = Spawner::new();
        let (mut svc, conn, _peer) = fixture("/nonexistent/handler");
        let p = crate::trust::program(std::path::Path::new("/bin/true"), crate::trust::Mode::User)
            .expect("open /bin/true");
        assert!(!p.script);
        Arc::get_mut(&mut svc).expect("sole owner").image.fd = Some(p.fd);
        let pid = spawn(&svc, &conn, &mut scratch).expect("spawn");
        assert_eq!(
            waitpid(pid, None).expect("waitpid"),
            WaitStatus::Exited(pid, 0)
        );
        assert_eq!(scratch.take_failure(pid), None);
    }

    #[test]
    fn a_successful_exec_reports_no_failure() {
        let (mut scratch, pid) = spawn_and_reap("/bin/true", 0);
        assert_eq!(scratch.take_failure(pid), None);
    }

    /// A slot is reused as soon as its child has exited, before the daemon
    /// reaps it: the report must survive the reuse, under its own pid.
    #[test]
    fn a_failure_survives_the_reuse_of_its_slot_before_the_reap() {
        let mut scratch = Spawner::new();
        let (bad, conn, _peer) = fixture("/nonexistent/handler");
        let (good, conn2, _peer2) = fixture("/bin/true");
        let a = spawn(&bad, &conn, &mut scratch).expect("spawn");
        wait_exited(a);
        let b = spawn(&good, &conn2, &mut scratch).expect("spawn");
        assert_eq!(scratch.slots.len(), 1, "the free slot was reused");
        assert_eq!(scratch.failures.len(), 1, "a's report was kept");
        assert_eq!(waitpid(b, None).expect("waitpid"), WaitStatus::Exited(b, 0));
        assert_eq!(scratch.take_failure(b), None);
        assert_eq!(
            waitpid(a, None).expect("waitpid"),
            WaitStatus::Exited(a, 127)
        );
        assert_eq!(scratch.take_failure(a).map(|f| f.step), Some(Step::Exec));
        assert!(scratch.failures.is_empty());
    }

    /// The credential check reads the real, effective and saved ids the
    /// kernel reports (here: the test process's own).
    #[test]
    fn the_credential_check_reads_the_kernels_ids() {
        let u = nix::unistd::getresuid().expect("getresuid");
        let g = nix::unistd::getresgid().expect("getresgid");
        // SAFETY: getresuid/getresgid write three ids into the buffer.
        let (ru, rg) = unsafe { (res_ids(sys::GETRESUID), res_ids(sys::GETRESGID)) };
        assert_eq!(
            ru,
            Ok([u.real.as_raw(), u.effective.as_raw(), u.saved.as_raw()])
        );
        assert_eq!(
            rg,
            Ok([g.real.as_raw(), g.effective.as_raw(), g.saved.as_raw()])
        );
    }

    /// A handler's setuid runs on the memory it shares with the daemon, and
    /// the kernel then clears the dumpable flag of that memory, the
    /// daemon's: so a root daemon decides the flag when its spawner is made,
    /// and no handler changes it afterwards.
    #[test]
    fn a_handler_dropping_privileges_does_not_change_the_daemons_dumpable_flag() {
        use nix::sys::prctl::{get_dumpable, set_dumpable};
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: dropping privileges needs the tests to run as root");
            return;
        }
        set_dumpable(true).expect("set_dumpable");
        let mut scratch = Spawner::new();
        let before = get_dumpable().expect("get_dumpable");
        assert!(!before, "a root daemon is not dumpable from the start");
        let (svc, conn, _peer) = fixture("/bin/true");
        assert!(svc.cred.is_some(), "as root, handlers drop to nobody");
        let pid = spawn(&svc, &conn, &mut scratch).expect("spawn");
        assert_eq!(
            waitpid(pid, None).expect("waitpid"),
            WaitStatus::Exited(pid, 0)
        );
        assert_eq!(get_dumpable().expect("get_dumpable"), before);
    }

    /// The child gets the connection on 0–2 and the per-connection
    /// variables.
    #[test]
    fn the_child_runs_on_the_connection_with_its_variables() {
        let mut scratch = Spawner::new();
        let (mut svc, conn, mut peer) = fixture("/bin/sh");
        Arc::get_mut(&mut svc).expect("sole owner").image.argv = [
            "sh",
            "-c",
            "echo $TCPREMOTEIP $TCPREMOTEPORT $TINYINETD_CONN_ID",
        ]
        .iter()
        .map(|a| CString::new(*a).expect("arg"))
        .collect();
        let pid = spawn(&svc, &conn, &mut scratch).expect("spawn");
        drop(conn);
        let mut out = String::new();
        std::io::Read::read_to_string(&mut peer, &mut out).expect("read");
        assert_eq!(out, "127.0.0.1 40000 1\n");
        assert_eq!(
            waitpid(pid, None).expect("waitpid"),
            WaitStatus::Exited(pid, 0)
        );
        assert_eq!(scratch.take_failure(pid), None);
    }

    /// Past the warm slots, a busy pool makes the supervisor wait a moment,
    /// and grows only when every slot has stayed busy for `GROW_AFTER`.
    #[test]
    fn past_the_warm_slots_the_pool_grows_only_when_they_stay_busy() {
        let mut scratch = Spawner::new();
        let t0 = std::time::Instant::now();
        for _ in 0..WARM_SLOTS {
            assert_eq!(scratch.room(t0), Room::Free);
            let i = scratch.free_slot().expect("slot");
            scratch.slots[i].data().busy.store(1, Ordering::Release);
        }
        assert_eq!(scratch.room(t0), Room::Busy, "busy for a moment: wait");
        let later = t0 + GROW_AFTER;
        assert_eq!(scratch.room(later), Room::Grow { slots: WARM_SLOTS });
        let i = scratch.free_slot().expect("the pool grows");
        assert_eq!(scratch.slots.len(), WARM_SLOTS + 1);
        assert_eq!(scratch.room(later), Room::Free, "the new slot is free");
        scratch.slots[i].data().busy.store(1, Ordering::Release);
        assert_eq!(scratch.room(later), Room::Busy, "a new episode starts");
        scratch.slots[0].data().busy.store(0, Ordering::Release);
        assert_eq!(scratch.room(later), Room::Free);
        for s in &scratch.slots {
            s.data().busy.store(0, Ordering::Release);
        }
    }

    /// With every slot busy and the pool at its bound, `free_slot` fails at
    /// once (it used to wait in the loop); below the bound it grows.
    #[test]
    fn free_slot_never_waits() {
        let mut scratch = Spawner::new();
        scratch.set_slot_limit(2);
        let a = scratch.free_slot().expect("first slot");
        // As if a child stopped before its exec held it.
        scratch.slots[a].data().busy.store(1, Ordering::Release);
        let b = scratch.free_slot().expect("the pool grows");
        assert_ne!(a, b);
        scratch.slots[b].data().busy.store(1, Ordering::Release);
        let t0 = std::time::Instant::now();
        assert_eq!(scratch.free_slot(), Err(Errno::EAGAIN));
        assert!(t0.elapsed() < std::time::Duration::from_millis(50));
        scratch.slots[a].data().busy.store(0, Ordering::Release);
        assert_eq!(scratch.free_slot(), Ok(a));
        scratch.slots[b].data().busy.store(0, Ordering::Release);
    }
}
