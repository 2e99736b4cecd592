//! TOML text → [`Plan`], with every problem reported as `PATH:LINE:COL: CONTEXT: MESSAGE`.
//!
//! The document is parsed into toml's spanned tree (`DeTable`) and walked by
//! hand rather than through serde: serde stops at the first error, and an
//! administrator fixing a file wants all of them at once, each pointing at the
//! key (for key errors) or the value (for value errors).
//!
//! Resolution that needs the system (users, groups, program paths) happens
//! here too, through the [`System`] trait, so the rest of the daemon — and the
//! forked child above all — never looks anything up.
//!
//! This file holds the entry points (load, parse) and the problem types;
//! `check` walks the document, `daemon` and `service` check their tables,
//! `resolve` turns names into credentials and an exec image, `fields` holds
//! the pure parsers, `describe` writes the `--check` report.

mod check;
mod cross;
mod daemon;
mod describe;
mod fields;
mod hardening;
mod include;
mod lookups;
mod proxy;
mod resolve;
mod service;
mod sockopt;
#[cfg(test)]
mod tests;
mod wait;

use std::fmt;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::plan::Plan;
use crate::trust::{self, Refusal};

pub use describe::{describe, describe_service};
pub use fields::{
    check_env_name, parse_duration, parse_limit, parse_listen, parse_net, valid_name, MAX_DURATION,
};
pub use lookups::{Accounts, Answer, Question, Record};

/// The default configuration file.
pub const DEFAULT_PATH: &str = "/etc/tinyinetd.toml";

/// The environment a handler starts from, before the service's `env`.
pub const DEFAULT_HANDLER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The included file it is in; `None`: the main file
    /// ([`ConfigError::path`]).
    pub file: Option<PathBuf>,
    /// 1-based; 0 when the problem has no place in the file (it could not be read).
    pub line: usize,
    /// 1-based, in characters; 0 with `line`.
    pub col: usize,
    /// `daemon`, `service "echo"`, `service #2`, or empty for the document.
    pub context: String,
    /// What is wrong and, where it can, what to write instead.
    pub message: String,
}

/// Why a configuration could not be loaded: every problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as given: every message line starts with it.
    pub path: PathBuf,
    /// Never empty; sorted by position, placeless ones last.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let file = p.file.as_deref().unwrap_or(&self.path);
            write!(f, "{}:", file.display())?;
            if p.line > 0 {
                write!(f, "{}:{}:", p.line, p.col)?;
            }
            if !p.context.is_empty() {
                write!(f, " {}:", p.context)?;
            }
            write!(f, " {}", p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// What the loader asks of the system: who we are, who users are, what is
/// executable. A trait so that unit tests can validate configs without
/// depending on the machine's users.
pub trait System {
    /// The effective uid and gid of the daemon.
    fn identity(&self) -> (u32, u32);
    /// `(uid, primary gid)` of a user name; `Err` when the lookup itself
    /// failed (as opposed to: no such user).
    fn user(&self, name: &str) -> Result<Option<(u32, u32)>, String>;
    /// The name of `uid`; `Ok(None)` when it has none (a bare uid is valid).
    fn user_name(&self, uid: u32) -> Result<Option<String>, String>;
    /// The gid of a group name; `Err` when the lookup itself failed.
    fn group(&self, name: &str) -> Result<Option<u32>, String>;
    /// The name of `gid`; `Ok(None)` when it has none (a bare gid is valid).
    fn group_name(&self, gid: u32) -> Result<Option<String>, String>;
    /// Supplementary groups of `user` with `gid` included.
    fn group_list(&self, user: &str, gid: u32) -> Result<Vec<u32>, String>;
    /// The directory of the running daemon executable.
    fn exe_dir(&self) -> Option<PathBuf>;
    /// Opens and checks the program at `path` (`trust::program`): a regular
    /// file with an execute bit and, for a root daemon (`Mode::Root`), one
    /// that only root can change, as is every directory and symbolic link
    /// on the way to it and to a script's interpreter. Gives the descriptor
    /// to exec, or `None` to exec by path (a script: see `RealSystem`).
    fn program(&self, path: &Path, mode: trust::Mode) -> Result<Option<OwnedFd>, Refusal>;
    /// For a script, its `#!` interpreter checked for the user its
    /// handler runs as (`trust::interpreter`), `env`'s program looked up
    /// in `path_var`; `Ok(None)` for a binary. What is wrong, naming the
    /// interpreter, otherwise. The default checks nothing (test systems).
    fn interpreter(
        &self,
        _script: &Path,
        _runner: &trust::Runner<'_>,
        _path_var: &str,
    ) -> Result<Option<PathBuf>, String> {
        Ok(None)
    }
}

/// The real system: users and groups through NSS (`accounts`: getent),
/// the file system.
pub struct RealSystem;

impl System for RealSystem {
    fn identity(&self) -> (u32, u32) {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    }
    fn user(&self, name: &str) -> Result<Option<(u32, u32)>, String> {
        // getent takes an all-digit key for a uid: only a name match counts.
        Ok(crate::accounts::passwd(name)?
            .filter(|p| p.name == name)
            .map(|p| (p.uid, p.gid)))
    }
    fn user_name(&self, uid: u32) -> Result<Option<String>, String> {
        Ok(crate::accounts::passwd(&uid.to_string())?.map(|p| p.name))
    }
    fn group(&self, name: &str) -> Result<Option<u32>, String> {
        Ok(crate::accounts::group(name)?
            .filter(|g| g.name == name)
            .map(|g| g.gid))
    }
    fn group_name(&self, gid: u32) -> Result<Option<String>, String> {
        Ok(crate::accounts::group(&gid.to_string())?.map(|g| g.name))
    }
    fn group_list(&self, user: &str, gid: u32) -> Result<Vec<u32>, String> {
        let mut list = vec![gid];
        for g in crate::accounts::initgroups(user)? {
            if !list.contains(&g) {
                list.push(g);
            }
        }
        Ok(list)
    }
    fn exe_dir(&self) -> Option<PathBuf> {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
    }
    /// Exec what was checked: a binary is exec'd through the `O_PATH`
    /// descriptor the check opened (`execveat(fd, "", AT_EMPTY_PATH)`),
    /// so a file put at its path later never runs in its place.
    ///
    /// A script (`#!`) is exec'd by its path instead. Through a descriptor
    /// the kernel hands the interpreter `/dev/fd/N` as the script's name:
    /// with `O_CLOEXEC` that descriptor is closed by the exec and the
    /// interpreter fails (ENOENT); without it the descriptor would leak
    /// into the handler and its `$0` would become `/dev/fd/N`. Exec'ing
    /// the checked path is safe for a root daemon because the check walked
    /// all of it: every directory and link on it, and the file, can be
    /// changed by root alone, and the interpreter named on the `#!` line
    /// went through the same walk. What a script runs as is therefore what
    /// root has put at that path (a root's edit takes effect on the next
    /// connection; a binary changes only at the next reload).
    fn program(&self, path: &Path, mode: trust::Mode) -> Result<Option<OwnedFd>, Refusal> {
        let p = trust::program(path, mode)?;
        Ok((!p.script).then_some(p.fd))
    }
    fn interpreter(
        &self,
        script: &Path,
        runner: &trust::Runner<'_>,
        path_var: &str,
    ) -> Result<Option<PathBuf>, String> {
        trust::interpreter(script, runner, path_var)
    }
}

/// Reads and validates the file at `path`. `default_path` says whether the
/// user named it, so that a missing default file can suggest `--config`.
///
/// The file is opened once and read through that descriptor, after the
/// checks of `trust::config`: a regular file of at most 1 MiB and, for a
/// root daemon, one that only root can change, down every directory and
/// symbolic link on its path. Nothing is looked up by path after the
/// check, so the file cannot be swapped between the check and the read.
///
/// Each account is looked up once ([`Accounts`]); the lookups may
/// wait, so the running daemon loads through a resolver child instead.
pub fn load(path: &Path, default_path: bool) -> Result<Plan, ConfigError> {
    load_with(path, default_path, &Accounts::live(&RealSystem))
}

/// [`load`], asking `sys`.
pub fn load_with(path: &Path, default_path: bool, sys: &dyn System) -> Result<Plan, ConfigError> {
    let whole = |message: String| ConfigError {
        path: path.to_path_buf(),
        problems: vec![Problem {
            file: None,
            line: 0,
            col: 0,
            context: String::new(),
            message,
        }],
    };
    let mode = trust::Mode::for_euid(sys.identity().0);
    let text = trust::config(path, mode).map_err(|r| match r {
        // A root daemon runs what this file says: if anyone but root can
        // change it, anyone can become root.
        Refusal::Untrusted(why) => whole(format!(
            "refusing a configuration that a user other than root can change: {why}"
        )),
        Refusal::Unusable(why, errno) => {
            let mut message = format!("cannot read the configuration: {why}");
            if default_path && errno == Some(nix::errno::Errno::ENOENT) {
                message.push_str(" (name another file with --config PATH)");
            }
            whole(message)
        }
    })?;
    let text = String::from_utf8(text).map_err(|e| {
        let (line, col) = line_col_bytes(e.as_bytes(), e.utf8_error().valid_up_to());
        ConfigError {
            path: path.to_path_buf(),
            problems: vec![Problem {
                file: None,
                line,
                col,
                context: String::new(),
                message: "the file is not valid UTF-8".into(),
            }],
        }
    })?;
    parse(path, &text, sys)
}

/// Validates `text` as the contents of `path`.
pub fn parse(path: &Path, text: &str, sys: &dyn System) -> Result<Plan, ConfigError> {
    let mut ck = check::Checker::new(text);
    let plan = ck.document(path, sys);
    if ck.problems.is_empty() {
        if let Some(plan) = plan {
            return Ok(plan);
        }
    }
    // The main file's problems first, then each drop-in's (by name).
    ck.problems.sort_by_key(|p| {
        (
            p.file.clone(),
            p.line == 0,
            p.line,
            p.col,
            p.message.clone(),
        )
    });
    Err(ConfigError {
        path: path.to_path_buf(),
        problems: ck.problems,
    })
}

/// 1-based line and column (in characters) of byte offset `at`.
pub fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = &text.as_bytes()[..at];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let col = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, col)
}

fn line_col_bytes(bytes: &[u8], at: usize) -> (usize, usize) {
    line_col(&String::from_utf8_lossy(&bytes[..at]), at)
}
