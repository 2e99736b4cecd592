//! The child half of a spawn: what runs between `clone` and `execve`, on
//! the child's own stack, in memory it shares with the daemon. Every line
//! here obeys the rule of the module doc of `spawn` ("Why it is safe"):
//! only raw system calls (`sys::call`), no allocation, no locks, no
//! libc on x86-64, no panics, no return. Each step is a small function
//! marked `#[inline(always)]`, so the child runs the same straight-line
//! code, with the same system calls in the same order, as one long
//! function would; a failed step ends the child through [`fail`].

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use super::slot::{ChildArgs, SlotData, Step, PID_DIGITS};
use crate::plan::{Resource, Rlimit};

/// Raw system calls for the child: they return the result or `-errno` and
/// write nothing else (libc's wrappers store errno, which the child shares
/// with the daemon through its thread-local storage).
pub(super) mod sys {
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
pub(super) extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `SlotData` the parent passed to clone, alive and
    // unchanged until this child has exec'd or exited.
    unsafe { child_main(&*(arg as *const SlotData)) }
}

/// The child half: runs between clone and exec, one step per line, in
/// this order: its own descriptor table, signal dispositions and mask,
/// session, a wait handler's `LISTEN_PID`, the connection on 0–2 (and a
/// wait handler's socket on 3), close-on-exec for the rest, working
/// directory and umask, limits
/// and nice, credentials, no_new_privs, exec. The limits and nice come
/// before the credentials are dropped, because raising a hard limit or
/// lowering nice below 0 needs root; no_new_privs comes last, just
/// before the exec, so that it only governs what the exec may gain. Never returns: it execs, or a step fails and the
/// child exits 127 with the step recorded in its slot.
///
/// # Safety
/// Only call in a child started by `spawn`'s clone, with `d` and its
/// pointers valid until this child execs or exits.
unsafe fn child_main(d: &SlotData) -> ! {
    let a = &d.args;
    own_descriptor_table(d, a.keep_below);
    reset_signals(a);
    empty_signal_mask();
    own_session(d);
    write_own_pid(a.pid_field);
    connection_on_stdio(d, a.conn as usize, a.err);
    let mut exec_fd = a.exec_fd;
    let mut keep = 3;
    if a.listen_fd3 {
        exec_fd = socket_on_fd3(d, exec_fd);
        keep = 4;
    }
    close_on_exec_from(d, keep);
    root_and_umask(d, a.umask);
    limits_and_nice(d, a);
    if let Some(cred) = a.cred {
        drop_privileges(d, cred);
    }
    if a.no_new_privs {
        no_new_privs(d);
    }
    exec(d, a, exec_fd)
}

/// The child's own descriptor table, first of all (until then it may
/// share the daemon's, and must change nothing in it). Cloned with
/// CLONE_FILES (`Spawner::set_many`), so that clone copies no table in the daemon (with one
/// pidfd per running handler there, that copy grew with the number of
/// handlers); `close_range(keep_below, ~0, CLOSE_RANGE_UNSHARE)` makes a
/// table holding only the descriptors below `keep_below` (fs/file.c,
/// `__close_range`: "only copy all file descriptors beneath the lowest
/// file descriptor"): the daemon's own few, the connection and the
/// program's. The pidfds are kept above them (`fd::lift`). On a table of
/// its own already (no CLONE_FILES) the same call closes the copies of
/// the daemon's higher descriptors now rather than at the exec.
///
/// # Safety
/// Only in the child.
#[inline(always)]
unsafe fn own_descriptor_table(d: &SlotData, keep_below: usize) {
    let rc = sys::call(
        libc::SYS_close_range,
        [
            keep_below,
            u32::MAX as usize,
            libc::CLOSE_RANGE_UNSHARE as usize,
            0,
            0,
            0,
        ],
    );
    check(d, Step::UnshareFiles, rc);
    // The daemon may close its copies of our descriptors now.
    d.unshared.store(1, Ordering::Release);
}

/// `rc` as a non-negative result; on `-errno`, records `step` as failed
/// and ends the child ([`fail`]).
///
/// # Safety
/// Only in the child.
#[inline(always)]
unsafe fn check(d: &SlotData, step: Step, rc: isize) -> usize {
    if rc < 0 {
        fail(d, step, rc);
    }
    rc as usize
}

/// Every disposition that is not SIG_DFL back to SIG_DFL (the parent
/// listed them: see `Spawner::reset`), through the raw system call:
/// glibc's sigaction() refuses signals 32 and 33 (its own), but a parent
/// may have left them ignored, and an ignore survives execve. A zeroed
/// kernel `struct sigaction` is SIG_DFL with no flags and an empty mask.
///
/// # Safety
/// Only in the child; `a.reset` points at `a.reset_len` signals.
#[inline(always)]
unsafe fn reset_signals(a: &ChildArgs) {
    let dfl = [0u64; 4];
    for i in 0..a.reset_len {
        let sig = *a.reset.add(i) as usize;
        sys::call(
            libc::SYS_rt_sigaction,
            [sig, dfl.as_ptr() as usize, 0, 8, 0, 0],
        );
    }
}

/// Empties the signal mask (it survives execve). Pending signals are not
/// inherited across clone, so nothing fires here. The kernel's sigset is
/// 8 bytes.
///
/// # Safety
/// Only in the child.
#[inline(always)]
unsafe fn empty_signal_mask() {
    let empty = 0u64;
    let set = &empty as *const u64 as usize;
    sys::call(
        libc::SYS_rt_sigprocmask,
        [libc::SIG_SETMASK as usize, set, 0, 8, 0, 0],
    );
}

/// Own session: the handler and its children form one process group that
/// the daemon can signal, detached from the daemon's terminal.
///
/// # Safety
/// Only in the child.
#[inline(always)]
unsafe fn own_session(d: &SlotData) {
    check(d, Step::Setsid, sys::call(libc::SYS_setsid, [0; 6]));
}

/// The connection on 0, 1, 2 (on 0 and 1 when `err` is a descriptor: it
/// goes on 2). dup3 clears FD_CLOEXEC on the copies. Neither the accepted
/// socket nor `err` is ever 0–2 (std reopens closed stdio on /dev/null at
/// start), but if one were, it would be overwritten (and dup3 refuses
/// equal descriptors), so it is moved out of the way first.
///
/// # Safety
/// Only in the child.
#[inline(always)]
unsafe fn connection_on_stdio(d: &SlotData, conn: usize, err: RawFd) {
    let conn = above_stdio(d, conn);
    let err = if err < 0 {
        conn
    } else {
        above_stdio(d, err as usize)
    };
    for (target, fd) in [(0, conn), (1, conn), (2, err)] {
        check(
            d,
            Step::Dup,
            sys::call(libc::SYS_dup3, [fd, target, 0, 0, 0, 0]),
        );
    }
}

/// `fd`, or a close-on-exec copy of it at 3 or above when it is 0–2.
///
/// # Safety
/// Only in the child.
#[inline(always)]
unsafe fn above_stdio(d: &SlotData, fd: usize) -> usize {
    if fd > 2 {
        return fd;
    }
    let dupfd = libc::F_DUPFD_CLOEXEC as usize;
    check(
        d,
        Step::Dup,
        sys::call(libc::SYS_fcntl, [fd, dupfd, 3, 0, 0, 0]),
    )
}

/// A wait handler's `LISTEN_PID`: its own pid, which exists only now that
/// the child does, written into the field the daemon reserved for it in
/// the slot's variables (`pid_field`, null for other handlers; see
/// `ChildArgs::pid_field`).
///
/// Why this is within the child's rules (module doc of `spawn`): the pid
/// comes from the raw `getpid` system call (libc's may answer from a
/// cache that holds the daemon's pid, and writes nothing else anyway);
/// the digits are made by integer division on the stack, no formatting
/// machinery, no allocation, no panic path (the loop is bounded by the
/// field's width and writes through the raw pointer only); and the field
/// is memory of this child's slot that the daemon neither reads nor
/// writes until the kernel has zeroed `busy`, the same rule as the failure
/// report's. The value is NUL-terminated where its digits end, so the
/// variable is exactly `LISTEN_PID=<pid>` (no padding, no leading zeros,
/// which sd_listen_fds would read as octal).
///
/// # Safety
/// Only in the child; `field` is null or points at `PID_DIGITS + 1`
/// writable bytes.
#[inline(always)]
unsafe fn write_own_pid(field: *mut u8) {
    if field.is_null() {
        return;
    }
    // getpid cannot fail.
    let pid = sys::call(libc::SYS_getpid, [0; 6]).max(0) as u64;
    let mut len = 1;
    let mut rest = pid / 10;
    while rest > 0 && len < PID_DIGITS {
        len += 1;
        rest /= 10;
    }
    let (mut n, mut at) = (pid, len);
    while at > 0 {
        at -= 1;
        *field.add(at) = b'0' + (n % 10) as u8;
        n /= 10;
    }
    *field.add(len) = 0;
}

/// A wait handler: the socket on fd 3 as well (systemd's `LISTEN_FDS=1`
/// starts at 3). Fd 0 is the socket by now ([`connection_on_stdio`]), and
/// never 3, so `dup3(0, 3)` always copies it and clears FD_CLOEXEC on the
/// copy. Whatever fd 3 was is replaced: the daemon's copy of the socket,
/// or of `err` (already on 2), is not needed; the program's own descriptor
/// is, so if it is 3 it is moved above first. Returns the program's
/// descriptor as it is now.
///
/// # Safety
/// Only in the child.
#[inline(always)]
unsafe fn socket_on_fd3(d: &SlotData, exec_fd: RawFd) -> RawFd {
    let exec_fd = if exec_fd == 3 {
        let dupfd = libc::F_DUPFD_CLOEXEC as usize;
        let rc = sys::call(libc::SYS_fcntl, [3, dupfd, 4, 0, 0, 0]);
        check(d, Step::Dup, rc) as RawFd
    } else {
        exec_fd
    };
    check(d, Step::Dup, sys::call(libc::SYS_dup3, [0, 3, 0, 0, 0, 0]));
    exec_fd
}

/// Nothing else may reach the handler: marks every descriptor from
/// `first` up (3, or 4 for a wait handler, whose fd 3 is its socket)
/// close-on-exec (close_range(2), Linux 5.11). The descriptor table is
/// the child's own copy (no CLONE_FILES): this never touches the daemon's
/// descriptors.
///
/// # Safety
/// Only in the child.
#[inline(always)]
unsafe fn close_on_exec_from(d: &SlotData, first: usize) {
    let (all, cloexec) = (u32::MAX as usize, libc::CLOSE_RANGE_CLOEXEC as usize);
    let rc = sys::call(libc::SYS_close_range, [first, all, cloexec, 0, 0, 0]);
    check(d, Step::CloseFds, rc);
}

/// Working directory `/` and the service's file-creation mask.
///
/// # Safety
/// Only in the child.
#[inline(always)]
unsafe fn root_and_umask(d: &SlotData, umask: libc::mode_t) {
    let root = c"/".as_ptr() as usize;
    check(
        d,
        Step::Chdir,
        sys::call(libc::SYS_chdir, [root, 0, 0, 0, 0, 0]),
    );
    sys::call(libc::SYS_umask, [umask as usize, 0, 0, 0, 0, 0]);
}

/// The service's `rlimit_*` (soft and hard limit alike, with prlimit64 on
/// the child itself: one call per limit) and `nice` (setpriority). The
/// kernel's `struct rlimit64` is two u64s, built on the child's stack.
///
/// # Safety
/// Only in the child; `a.rlimits` points at `a.rlimits_len` limits.
#[inline(always)]
unsafe fn limits_and_nice(d: &SlotData, a: &ChildArgs) {
    for i in 0..a.rlimits_len {
        let r: &Rlimit = &*a.rlimits.add(i);
        let (resource, step) = rlimit_of(r.resource);
        let lim = [r.value, r.value];
        let new = lim.as_ptr() as usize;
        let rc = sys::call(libc::SYS_prlimit64, [0, resource, new, 0, 0, 0]);
        check(d, step, rc);
    }
    if let Some(n) = a.nice {
        // The raw call takes the nice value itself (-20..19); `which` and
        // `who` 0 are this process. A negative value is sign-extended,
        // and the kernel reads the low 32 bits as an int.
        let which = libc::PRIO_PROCESS as usize;
        let rc = sys::call(
            libc::SYS_setpriority,
            [which, 0, n as isize as usize, 0, 0, 0],
        );
        check(d, Step::Nice, rc);
    }
}

/// The kernel's number for `r` and the step a failure names.
#[inline(always)]
fn rlimit_of(r: Resource) -> (usize, Step) {
    match r {
        Resource::Nofile => (libc::RLIMIT_NOFILE as usize, Step::RlimitNofile),
        Resource::Nproc => (libc::RLIMIT_NPROC as usize, Step::RlimitNproc),
        Resource::Core => (libc::RLIMIT_CORE as usize, Step::RlimitCore),
        Resource::Fsize => (libc::RLIMIT_FSIZE as usize, Step::RlimitFsize),
        Resource::As => (libc::RLIMIT_AS as usize, Step::RlimitAs),
        Resource::Cpu => (libc::RLIMIT_CPU as usize, Step::RlimitCpu),
    }
}

/// `PR_SET_NO_NEW_PRIVS`: from the exec on, a setuid, setgid or
/// file-capability program cannot raise this process's privileges (and
/// the flag is inherited by everything the handler starts).
///
/// # Safety
/// Only in the child.
#[inline(always)]
unsafe fn no_new_privs(d: &SlotData) {
    let opt = libc::PR_SET_NO_NEW_PRIVS as usize;
    let rc = sys::call(libc::SYS_prctl, [opt, 1, 0, 0, 0, 0]);
    check(d, Step::NoNewPrivs, rc);
}

/// Drops privileges: supplementary groups, then gid, then uid (after
/// setuid we could no longer change groups), then verifies that none of
/// the real, effective or saved ids kept the old value. The raw calls
/// change this process only, which is all there is: the child is a thread
/// group of its own.
///
/// # Safety
/// Only in the child; `groups` points at `ngroups` gids.
#[inline(always)]
unsafe fn drop_privileges(
    d: &SlotData,
    (uid, gid, groups, ngroups): (u32, u32, *const u32, usize),
) {
    let rc = sys::call(sys::SETGROUPS, [ngroups, groups as usize, 0, 0, 0, 0]);
    check(d, Step::Setgroups, rc);
    check(
        d,
        Step::Setgid,
        sys::call(sys::SETGID, [gid as usize, 0, 0, 0, 0, 0]),
    );
    check(
        d,
        Step::Setuid,
        sys::call(sys::SETUID, [uid as usize, 0, 0, 0, 0, 0]),
    );
    match (res_ids(sys::GETRESUID), res_ids(sys::GETRESGID)) {
        (Ok(u), Ok(g)) if u == [uid; 3] && g == [gid; 3] => {}
        (Err(rc), _) | (_, Err(rc)) => fail(d, Step::VerifyCred, rc),
        _ => fail(d, Step::VerifyCred, -(libc::EPERM as isize)),
    }
}

/// Execs what was checked at load: the program's own descriptor, whatever
/// its path names now (execveat with an empty path and AT_EMPTY_PATH,
/// Linux 3.19). The descriptor is O_CLOEXEC, which a binary does not mind;
/// a script is exec'd by its checked path instead (exec_fd -1), see
/// `ExecImage::fd`. The descriptor number is valid here: this is a copy of
/// the daemon's table, and the slot's `Arc<Service>` keeps the daemon's
/// copy open until the exec. The call only returns on failure.
///
/// # Safety
/// Only in the child; `a`'s pointers are valid; `exec_fd` is `a.exec_fd`,
/// or where [`socket_on_fd3`] moved it.
#[inline(always)]
unsafe fn exec(d: &SlotData, a: &ChildArgs, exec_fd: RawFd) -> ! {
    let (argv, envp) = (a.argv as usize, a.envp as usize);
    let rc = if exec_fd >= 0 {
        let (fd, empty) = (exec_fd as usize, c"".as_ptr() as usize);
        let flags = libc::AT_EMPTY_PATH as usize;
        sys::call(libc::SYS_execveat, [fd, empty, argv, envp, flags, 0])
    } else {
        sys::call(libc::SYS_execve, [a.path as usize, argv, envp, 0, 0, 0])
    };
    // A script that is there but cannot be exec'd for "not found" or
    // "permission denied": its interpreter is missing or not executable
    // for this user. One more call, on the failure path only.
    let (enoent, eacces) = (-(libc::ENOENT as isize), -(libc::EACCES as isize));
    if exec_fd < 0 && (rc == enoent || rc == eacces) {
        let (cwd, f_ok) = (libc::AT_FDCWD as isize as usize, libc::F_OK as usize);
        let there = sys::call(libc::SYS_faccessat, [cwd, a.path as usize, f_ok, 0, 0, 0]);
        if there == 0 {
            fail(d, Step::ExecInterpreter, rc)
        }
    }
    fail(d, Step::Exec, rc)
}

/// The real, effective and saved ids from `getresuid` or `getresgid`
/// (`n`), or the call's `-errno`. The kernel writes into a mutable buffer
/// the compiler knows may change.
///
/// # Safety
/// `n` must be one of the two calls; safe in the child (a raw call).
pub(super) unsafe fn res_ids(n: libc::c_long) -> Result<[u32; 3], isize> {
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
