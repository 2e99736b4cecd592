//! A child's slot: the memory one child reads and writes in the daemon's
//! (its stack, its argv and envp, its failure report), and when the daemon
//! may touch it again, and what the report says ([`Step`], [`Failure`]).
//! The rules are in the module doc of `spawn`. Imports nothing else of
//! `spawn`.

use std::ffi::c_char;
use std::io::Write as _;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};
use std::sync::Arc;

use nix::errno::Errno;
use nix::unistd::Pid;

use super::Conn;
use crate::plan::{Client, Rlimit, Service};

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
    RlimitNofile = 10,
    RlimitNproc = 11,
    RlimitCore = 12,
    RlimitFsize = 13,
    RlimitAs = 14,
    RlimitCpu = 15,
    Nice = 16,
    NoNewPrivs = 17,
    /// `execve` of a script that exists failed with ENOENT or EACCES: its
    /// interpreter is the cause (named as `step=execve`, with the
    /// interpreter the load found).
    ExecInterpreter = 18,
    /// `close_range(CLOSE_RANGE_UNSHARE)`: the child's own descriptor table.
    UnshareFiles = 19,
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
            10 => Step::RlimitNofile,
            11 => Step::RlimitNproc,
            12 => Step::RlimitCore,
            13 => Step::RlimitFsize,
            19 => Step::UnshareFiles,
            14 => Step::RlimitAs,
            15 => Step::RlimitCpu,
            16 => Step::Nice,
            17 => Step::NoNewPrivs,
            18 => Step::ExecInterpreter,
            _ => return None,
        })
    }

    /// The step's name in an exec-failed line: the system call for the
    /// descriptor and credential steps, and for the hardening steps the
    /// config key that asked for it (which is what there is to fix).
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
            Step::Exec | Step::ExecInterpreter => "execve",
            Step::RlimitNofile => "rlimit_nofile",
            Step::RlimitNproc => "rlimit_nproc",
            Step::RlimitCore => "rlimit_core",
            Step::RlimitFsize => "rlimit_fsize",
            Step::RlimitAs => "rlimit_as",
            Step::RlimitCpu => "rlimit_cpu",
            Step::Nice => "nice",
            Step::NoNewPrivs => "no_new_privs",
            Step::UnshareFiles => "unshare_files",
        }
    }
}

/// Why a child did not reach its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// The step that failed.
    pub step: Step,
    /// The errno its system call returned.
    pub errno: Errno,
}

/// Digits reserved for a wait handler's `LISTEN_PID` in its slot's
/// variables: a pid is at most 2^22 (seven digits) on Linux; ten hold any
/// `u32`.
pub(super) const PID_DIGITS: usize = 10;

/// The child's stack, below a guard page: the child path uses a few
/// hundred bytes, and only the pages it touches take memory.
const CHILD_STACK: usize = 32 * 1024;

/// A child's stack: its own mapping, with a guard page below it, so that
/// only the pages a child touches are resident.
pub(super) struct Stack {
    /// The start of the mapping: the guard page.
    base: *mut libc::c_void,
    /// The mapping's length, guard page included.
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
    pub(super) fn top(&self) -> *mut libc::c_void {
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
pub(super) struct Slot {
    /// The child last started on this slot, until it is reaped or the slot
    /// reused, so that its failure report can be found.
    pub(super) pid: Option<Pid>,
    /// On the heap, so that it does not move while a child reads it; held
    /// as a raw pointer, not a `Box`, because a `Box` claims sole access,
    /// and a running child reads it too.
    pub(super) data: NonNull<SlotData>,
    /// The daemon's copies of the connection and of fd 2's descriptor for
    /// the child last started here: the child shares the daemon's
    /// descriptor table until it has made its own (CLONE_FILES), and reads
    /// them there, so they stay open until `busy` is zero, whatever the
    /// caller of `spawn` closes meanwhile ([`Slot::release`]).
    pub(super) held: [Option<OwnedFd>; 2],
}

/// Everything one child reads or writes in the daemon's memory. The
/// daemon writes it only while `busy` is zero, and then only before clone.
pub(super) struct SlotData {
    /// Non-zero from just before clone until the child no longer uses the
    /// daemon's memory: the kernel zeroes it (CLONE_CHILD_CLEARTID) when
    /// the child's `execve` has replaced its memory, or the child has
    /// exited. A futex word, as the kernel wants it.
    pub(super) busy: AtomicI32,
    /// Written by the child on failure (a `Step`, 0 for none), read by the
    /// daemon once `busy` is zero.
    pub(super) failed_step: AtomicU8,
    /// The failed call's errno, written with `failed_step`.
    pub(super) failed_errno: AtomicI32,
    /// Set by the child once it has its own descriptor table: from then
    /// on the daemon's copies of its descriptors ([`Slot::held`]) may go.
    pub(super) unshared: AtomicI32,
    /// What the child reads, as raw pointers into this slot and the service.
    pub(super) args: ChildArgs,
    /// The per-connection variables, NUL-terminated one after the other.
    /// A wait handler's child writes its pid into the `LISTEN_PID` value
    /// reserved here (`ChildArgs::pid_field`); nothing else in the slot
    /// but the failure report is written by a child.
    pub(super) vars: Vec<u8>,
    /// Start offsets of each variable in `vars`.
    pub(super) offsets: Vec<usize>,
    /// The handler's argv, NULL-terminated: pointers into the service's
    /// exec image.
    pub(super) argv: Vec<*const c_char>,
    /// The handler's environment, NULL-terminated: the service's variables,
    /// then the ones in `vars`.
    pub(super) envp: Vec<*const c_char>,
    /// The child's stack. The daemon never makes a reference into it.
    pub(super) stack: Stack,
    /// Keep alive what `args`, `argv` and `envp` point into while the child
    /// may read it (a reload may drop the daemon's own references).
    pub(super) service: Option<Arc<Service>>,
    /// Keeps alive the list of signals `args.reset` points into, which
    /// `Spawner::refresh_signals` may replace while the child reads it.
    pub(super) reset: Arc<[libc::c_int]>,
}

/// Everything the child needs, as raw values: the child touches no
/// Rust-owned data except through these pointers, into its `SlotData`
/// and the `Arc<Service>` it holds.
pub(super) struct ChildArgs {
    /// The program's checked path, exec'd when `exec_fd` is -1.
    pub(super) path: *const c_char,
    /// The checked program's `O_PATH` descriptor, exec'd with execveat;
    /// -1 to exec `path` (a script: see `ExecImage::fd`).
    pub(super) exec_fd: RawFd,
    /// The descriptors the child copies into its own table: those below
    /// this number (`conn`, `err` and `exec_fd` are).
    pub(super) keep_below: usize,
    /// The slot's `argv`.
    pub(super) argv: *const *const c_char,
    /// The slot's `envp`.
    pub(super) envp: *const *const c_char,
    /// The connection, which the child puts on its fds 0–2.
    pub(super) conn: RawFd,
    /// What the child puts on fd 2 instead of the connection (a pipe's
    /// write end or `/dev/null`, `stderr = "log" | "null"`); -1: the
    /// connection.
    pub(super) err: RawFd,
    /// The handler's file-creation mask.
    pub(super) umask: libc::mode_t,
    /// uid, gid, groups pointer and length.
    pub(super) cred: Option<(u32, u32, *const u32, usize)>,
    /// The signals to reset to SIG_DFL.
    pub(super) reset: *const libc::c_int,
    /// How many signals `reset` points at.
    pub(super) reset_len: usize,
    /// The limits to set (the service's `Hardening::rlimits`).
    pub(super) rlimits: *const Rlimit,
    /// How many limits `rlimits` points at.
    pub(super) rlimits_len: usize,
    /// The `setpriority` value, if the service sets `nice`.
    pub(super) nice: Option<i32>,
    /// Whether to set `PR_SET_NO_NEW_PRIVS` just before exec.
    pub(super) no_new_privs: bool,
    /// A wait handler: the socket goes on fd 3 too (systemd's
    /// `LISTEN_FDS=1`), and only descriptors from 4 up are closed.
    pub(super) listen_fd3: bool,
    /// A wait handler: where in `SlotData::vars` its `LISTEN_PID` value
    /// goes, [`PID_DIGITS`] + 1 bytes the daemon reserved; the child
    /// writes its pid there, NUL-terminated. Null for every other handler.
    pub(super) pid_field: *mut u8,
}

impl Slot {
    pub(super) fn new() -> Result<Slot, Errno> {
        let data = Box::new(SlotData {
            busy: AtomicI32::new(0),
            failed_step: AtomicU8::new(0),
            failed_errno: AtomicI32::new(0),
            unshared: AtomicI32::new(0),
            args: ChildArgs {
                path: std::ptr::null(),
                exec_fd: -1,
                keep_below: 3,
                argv: std::ptr::null(),
                envp: std::ptr::null(),
                conn: -1,
                err: -1,
                umask: 0,
                cred: None,
                reset: std::ptr::null(),
                reset_len: 0,
                rlimits: std::ptr::null(),
                rlimits_len: 0,
                nice: None,
                no_new_privs: false,
                listen_fd3: false,
                pid_field: std::ptr::null_mut(),
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
            held: [None, None],
        })
    }

    /// Closes the held descriptors once the child no longer reads the
    /// daemon's table (it has its own, or `busy` is zero). Returns whether
    /// some are still held. The sooner the better: while the child runs,
    /// closing the daemon's copy only drops a reference, and the child's
    /// exit does the connection's last close, on the child's time.
    pub(super) fn release(&mut self) -> bool {
        if self.held.iter().all(Option::is_none) {
            return false;
        }
        let d = self.data();
        if d.unshared.load(Ordering::Acquire) == 0 && d.busy.load(Ordering::Acquire) != 0 {
            return true;
        }
        self.held = [None, None];
        false
    }

    /// Shared access, at any time: what a child writes is atomic, and the
    /// rest it only reads.
    pub(super) fn data(&self) -> &SlotData {
        // SAFETY: allocated in `new`, freed only in `drop`; no `&mut` to it
        // exists while `&self` is borrowed (see `free_data`).
        unsafe { self.data.as_ref() }
    }

    /// Sole access, once no child uses the slot (`busy` is zero); `None`
    /// while one may.
    pub(super) fn free_data(&mut self) -> Option<&mut SlotData> {
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
    pub(super) fn take_failure(&self) -> Option<Failure> {
        let step = self.failed_step.swap(0, Ordering::Relaxed);
        Step::from_u8(step).map(|step| Failure {
            step,
            errno: Errno::from_raw(self.failed_errno.load(Ordering::Relaxed)),
        })
    }
}

/// Writes into a free slot everything its child will read: the
/// references that keep it alive, the per-connection variables, argv,
/// envp and the child's arguments; then marks it busy. `fds`: the slot's
/// copies of the connection and of fd 2's descriptor.
#[inline]
pub(super) fn fill_slot(
    d: &mut SlotData,
    svc: &Arc<Service>,
    conn: &Conn,
    fds: (RawFd, Option<RawFd>),
    reset: &Arc<[libc::c_int]>,
) {
    d.service = Some(Arc::clone(svc));
    d.reset = Arc::clone(reset);
    let img = &svc.image;
    d.argv.clear();
    d.argv.extend(img.argv.iter().map(|a| a.as_ptr()));
    d.argv.push(std::ptr::null());
    let pid_at = build_vars(&mut d.vars, &mut d.offsets, conn);
    d.envp.clear();
    d.envp.extend(img.env.iter().map(|e| e.as_ptr()));
    // One pointer for the variables: the envp entries read through it, and
    // a wait handler's child writes its pid through it.
    let base = d.vars.as_mut_ptr();
    // SAFETY: every offset is < vars.len() and points at the start of a
    // NUL-terminated string written by build_vars.
    d.envp.extend(
        d.offsets
            .iter()
            .map(|&o| unsafe { base.add(o) } as *const c_char),
    );
    // SAFETY: build_vars reserved PID_DIGITS + 1 bytes at this offset.
    let pid_field = pid_at.map_or(std::ptr::null_mut(), |o| unsafe { base.add(o) });
    d.envp.push(std::ptr::null());
    let exec_fd = img.fd.as_ref().map_or(-1, |f| f.as_raw_fd());
    let (conn_fd, err_fd) = (fds.0, fds.1.unwrap_or(-1));
    d.args = ChildArgs {
        path: img.path.as_ptr(),
        exec_fd,
        keep_below: (conn_fd.max(err_fd).max(exec_fd).max(2) + 1) as usize,
        argv: d.argv.as_ptr(),
        envp: d.envp.as_ptr(),
        conn: conn_fd,
        err: err_fd,
        umask: img.umask as libc::mode_t,
        cred: svc
            .cred
            .as_ref()
            .map(|c| (c.uid, c.gid, c.groups.as_ptr(), c.groups.len())),
        reset: d.reset.as_ptr(),
        reset_len: d.reset.len(),
        rlimits: img.hardening.rlimits.as_ptr(),
        rlimits_len: img.hardening.rlimits.len(),
        nice: img.hardening.nice,
        no_new_privs: img.hardening.no_new_privs,
        listen_fd3: matches!(conn.client, Client::Listener(_)),
        pid_field,
    };
    d.failed_step.store(0, Ordering::Relaxed);
    d.failed_errno.store(0, Ordering::Relaxed);
    d.unshared.store(0, Ordering::Relaxed);
    d.busy.store(1, Ordering::Relaxed);
}

/// Writes this connection's variables into `v`, recording where each
/// starts in `o`. IPv4-mapped IPv6 addresses are shown as IPv4, IPv6
/// without brackets. For a wait handler, returns where in `v` the value of
/// `LISTEN_PID` goes: [`PID_DIGITS`] bytes and a NUL reserved, which
/// its child fills in (`child::write_own_pid`).
pub(super) fn build_vars(v: &mut Vec<u8>, o: &mut Vec<usize>, conn: &Conn) -> Option<usize> {
    v.clear();
    o.clear();
    let mut pid_at = None;
    let var = |o: &mut Vec<usize>, v: &mut Vec<u8>, name: &str, val: &dyn std::fmt::Display| {
        o.push(v.len());
        // Writing into a Vec cannot fail.
        let _ = write!(v, "{name}={val}\0");
    };
    match &conn.client {
        Client::Inet { peer, local } => {
            let rip = peer.ip().to_canonical();
            let lip = local.ip().to_canonical();
            var(o, v, "TCPREMOTEIP", &rip);
            var(o, v, "TCPREMOTEPORT", &peer.port());
            var(o, v, "TCPLOCALIP", &lip);
            var(o, v, "TCPLOCALPORT", &local.port());
            var(o, v, "REMOTE_ADDR", &rip);
            var(o, v, "REMOTE_PORT", &peer.port());
        }
        Client::Unix { pid, uid, gid, .. } => {
            var(o, v, "UNIXREMOTEPID", pid);
            var(o, v, "UNIXREMOTEUID", uid);
            var(o, v, "UNIXREMOTEGID", gid);
            if let Some(path) = conn.client.local_path() {
                var(o, v, "UNIXLOCALPATH", &path);
            }
        }
        // No client: the systemd variables, LISTEN_FDS and LISTEN_FDNAMES
        // being in the service's fixed environment.
        Client::Listener(_) => {
            o.push(v.len());
            v.extend_from_slice(b"LISTEN_PID=");
            pid_at = Some(v.len());
            v.extend_from_slice(&[b'0'; PID_DIGITS]);
            v.push(0);
        }
    }
    var(o, v, "TINYINETD_CONN_ID", &conn.id);
    if let Some(p) = &conn.proxy {
        var(o, v, "TINYINETD_PROXY_IP", &p.addr.ip().to_canonical());
        var(o, v, "TINYINETD_PROXY_PORT", &p.addr.port());
        for (name, value) in &p.vars {
            var(o, v, name, value);
        }
    }
    pid_at
}
