//! A script's `#!` interpreter, checked at load for the user its handler
//! runs as: that the interpreter exists and that user may execute it
//! (and, for `#!/usr/bin/env NAME`, that `NAME` is found in the handler's
//! `PATH` and is executable by that user). Without this a script whose
//! interpreter is missing passes `--check` and fails per connection with
//! an `execve` error about a file that exists.
//!
//! The decision is the kernel's permission rule for a process of that
//! uid, gid and groups, in pure Rust on the `stat` of each file and of
//! each directory on its path ([`permits`]); POSIX ACLs and capabilities
//! other than root's are not considered.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

use super::{open, shebang_line, Mode, Refusal};

/// Who a handler runs as, for the checks.
#[derive(Clone, Copy, Debug)]
pub struct Runner<'a> {
    /// How messages name it: `user "nobody"`.
    pub name: &'a str,
    /// Its uid.
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
    /// Its supplementary groups.
    pub groups: &'a [u32],
}

/// Whether a process of `r` may use a file of this `mode`, `owner` and
/// `group` for `want` (0o1 execute/search, 0o4 read): the owner's bits
/// for its owner, else the group's for a member, else the others'. Root
/// reads and searches anything, and executes a file with any execute bit.
pub fn permits(mode: u32, owner: u32, group: u32, want: u32, r: &Runner<'_>) -> bool {
    if r.uid == 0 {
        return want & 0o1 == 0 || mode & 0o040_000 != 0 || mode & 0o111 != 0;
    }
    let bits = if owner == r.uid {
        mode >> 6
    } else if group == r.gid || r.groups.contains(&group) {
        mode >> 3
    } else {
        mode
    };
    bits & want == want
}

/// Why `r` cannot execute `path`, if it cannot: a missing file, a
/// directory on the way it may not search, or the file's own bits.
fn cannot_execute(path: &Path, r: &Runner<'_>) -> Option<String> {
    let real = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) => return Some(format!("does not exist ({})", crate::text::io_reason(&e))),
    };
    for dir in real.ancestors().skip(1) {
        let Ok(m) = std::fs::metadata(dir) else {
            continue;
        };
        if !permits(m.mode(), m.uid(), m.gid(), 0o1, r) {
            return Some(format!(
                "cannot be run by {} (uid {}): it may not search {} (mode {:04o}, owner uid {}, group gid {})",
                r.name,
                r.uid,
                dir.display(),
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            ));
        }
    }
    match std::fs::metadata(&real) {
        Ok(m) if !m.is_file() => Some("is not a regular file".into()),
        Ok(m) if !permits(m.mode(), m.uid(), m.gid(), 0o1, r) => Some(format!(
            "cannot be run by {} (uid {}): it is mode {:04o}, owner uid {}, group gid {}",
            r.name,
            r.uid,
            m.mode() & 0o7777,
            m.uid(),
            m.gid()
        )),
        Ok(_) => None,
        Err(e) => Some(format!("does not exist ({})", crate::text::io_reason(&e))),
    }
}

/// The program `env` runs on a `#!/usr/bin/env ...` line: the first word
/// of the rest that is neither an option (`-S`, `-i`) nor an assignment.
fn env_target(rest: &[u8]) -> Option<&[u8]> {
    rest.split(|&b| b == b' ' || b == b'\t')
        .filter(|w| !w.is_empty())
        .find(|w| w[0] != b'-' && !w.contains(&b'='))
}

/// For the script at `script` (already checked by [`super::program`]):
/// `Ok(None)` when it is no script, `Ok(Some(interpreter))` when its
/// interpreter (and `env`'s program, searched in `path_var`) can be run
/// by `r`, or a message that names the interpreter and what is wrong.
pub fn interpreter(
    script: &Path,
    r: &Runner<'_>,
    path_var: &str,
) -> Result<Option<PathBuf>, String> {
    let opened = open(script, OFlag::O_PATH, Mode::User).map_err(|e| e.to_string())?;
    let Some(line) = shebang_line(&opened).map_err(|e: Refusal| e.to_string())? else {
        return Ok(None);
    };
    // The kernel checks the script's execute bits for the user, and the
    // interpreter then opens it by path: it must be readable too.
    if let Some(why) = cannot_execute(script, r) {
        return Err(format!("the script {why}"));
    }
    if let Ok(m) = std::fs::metadata(script) {
        if !permits(m.mode(), m.uid(), m.gid(), 0o4, r) {
            return Err(format!(
                "the script cannot be read by {} (uid {}), and its interpreter must read it: it is mode {:04o}, owner uid {}, group gid {}",
                r.name,
                r.uid,
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            ));
        }
    }
    let mut words = line
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|w| !w.is_empty());
    let Some(first) = words.next() else {
        return Err("its #! line names no interpreter".into());
    };
    // The handler runs in "/", where the kernel resolves a relative name.
    let ipath = Path::new("/").join(std::ffi::OsStr::from_bytes(first));
    if let Some(why) = cannot_execute(&ipath, r) {
        return Err(format!("its #! interpreter {} {why}", ipath.display()));
    }
    let start = line
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(0);
    let rest = &line[start + first.len()..];
    if ipath.file_name().is_some_and(|n| n == "env") {
        if let Some(name) = env_target(rest) {
            env_program(name, r, path_var, &line)?;
        }
    }
    Ok(Some(ipath))
}

/// `NAME` of `#!/usr/bin/env NAME`, found in `path_var` the way `env`
/// will look for it, executable by `r`.
fn env_program(name: &[u8], r: &Runner<'_>, path_var: &str, line: &[u8]) -> Result<(), String> {
    let name = std::ffi::OsStr::from_bytes(name);
    let shown = String::from_utf8_lossy(line);
    let shown = crate::text::escape(shown.trim());
    if name.as_bytes().contains(&b'/') {
        return match cannot_execute(Path::new(name), r) {
            None => Ok(()),
            Some(why) => Err(format!("#!{shown}: {} {why}", Path::new(name).display())),
        };
    }
    let mut refused = None;
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(name);
        if !candidate.exists() {
            continue;
        }
        match cannot_execute(&candidate, r) {
            None => return Ok(()),
            Some(why) => {
                refused.get_or_insert(format!("#!{shown}: {} {why}", candidate.display()));
            }
        }
    }
    Err(refused.unwrap_or_else(|| {
        format!(
            "#!{shown}: \"{}\" is not found in the handler's PATH ({})",
            crate::text::escape(&name.to_string_lossy()),
            crate::text::escape(path_var)
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOBODY: Runner<'static> = Runner {
        name: "user \"nobody\"",
        uid: 65534,
        gid: 65534,
        groups: &[65534, 100],
    };

    #[test]
    fn the_permission_bits_that_apply_are_the_first_that_match() {
        let root = Runner {
            name: "user \"root\"",
            uid: 0,
            gid: 0,
            groups: &[0],
        };
        // Owner bits for the owner, even when others may.
        assert!(!permits(0o0007, 65534, 0, 0o1, &NOBODY));
        assert!(permits(0o0100, 65534, 0, 0o1, &NOBODY));
        // Group bits for a member, primary or supplementary.
        assert!(permits(0o0010, 0, 65534, 0o1, &NOBODY));
        assert!(permits(0o0010, 0, 100, 0o1, &NOBODY));
        assert!(!permits(0o0701, 0, 100, 0o1, &NOBODY));
        // Others' bits for the rest.
        assert!(permits(0o0755, 0, 0, 0o1, &NOBODY));
        assert!(!permits(0o0700, 0, 0, 0o1, &NOBODY));
        assert!(!permits(0o0750, 0, 0, 0o1, &NOBODY));
        assert!(permits(0o0744, 0, 0, 0o4, &NOBODY));
        assert!(!permits(0o0740, 0, 0, 0o4, &NOBODY));
        // Root executes a file with any execute bit, searches any directory.
        assert!(permits(0o0700, 1, 1, 0o1, &root));
        assert!(permits(0o0001, 1, 1, 0o1, &root));
        assert!(!permits(0o0600, 1, 1, 0o1, &root));
        assert!(permits(0o040_000, 1, 1, 0o1, &root));
        assert!(permits(0o0000, 1, 1, 0o4, &root));
    }

    #[test]
    fn env_runs_the_first_word_that_is_no_option() {
        assert_eq!(env_target(b" python3"), Some(&b"python3"[..]));
        assert_eq!(env_target(b" -S python3 -u"), Some(&b"python3"[..]));
        assert_eq!(env_target(b" -i A=1 perl"), Some(&b"perl"[..]));
        assert_eq!(env_target(b""), None);
    }
}
