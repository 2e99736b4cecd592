//! tinyinetd: a superserver. One daemon binds the configured ports and, for
//! every accepted connection, forks and execs the service's handler with the
//! connection on its fds 0–2.
//!
//! Data flows one way: `config::load` → [`plan::Plan`] → `listen` →
//! `supervisor` (poll → signals → reports → reap → deadlines → accept →
//! `admit::decide` → `spawn::spawn`). See docs/ARCHITECTURE.md for the
//! picture.

#![deny(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

pub mod accounts;
pub mod admit;
pub mod children;
pub mod client;
pub mod config;
pub mod handler;
pub mod import;
pub mod listen;
pub mod log;
pub mod notify;
pub mod plan;
pub mod proxy_header;
pub mod report;
pub mod resolver;
pub mod shrink;
pub mod signals;
pub mod spawn;
pub mod supervisor;
pub mod text;
pub mod timers;
pub mod trust;
pub mod unixsock;

use std::path::{Path, PathBuf};

use plan::Level;

/// What `main` asks of the library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub config: PathBuf,
    /// True when `config` is the default path (not given on the command line).
    pub default_config: bool,
}

/// Why `run` or `check` failed: printed once by `main`, exit status 1.
#[derive(Debug)]
pub enum Error {
    Config(config::ConfigError),
    Start(supervisor::StartError),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Config(e) => write!(f, "{e}"),
            Error::Start(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

/// `--check`: validates the file and describes every service, one line
/// each; returns the report and the warnings (`PATH:LINE:COL: ...` lines).
pub fn check(opts: &Options) -> Result<(String, Vec<String>), Error> {
    // The load waits for `getent`: see `run`.
    spawn::reset_sigchld()
        .map_err(|e| Error::Start(supervisor::StartError::Io("resetting SIGCHLD", e)))?;
    let plan = config::load(&opts.config, opts.default_config).map_err(Error::Config)?;
    Ok((config::describe(&plan), plan.warnings.clone()))
}

/// Runs the daemon in the foreground until SIGTERM/SIGINT.
pub fn run(opts: &Options) -> Result<(), Error> {
    // Before anything forks (the config load runs `getent`): an inherited
    // SIGCHLD ignore would have the kernel reap every child unseen.
    spawn::reset_sigchld()
        .map_err(|e| Error::Start(supervisor::StartError::Io("resetting SIGCHLD", e)))?;
    // Nothing this process inherited may reach a handler. Systemd's passed
    // sockets are marked too (we want them close-on-exec as well). The same
    // call is what every handler's child makes before its exec, so a kernel
    // without it (before Linux 5.11) could serve nobody: refuse to start.
    spawn::mark_inherited_cloexec().map_err(|e| {
        Error::Start(supervisor::StartError::Io(
            "tinyinetd needs Linux 5.11 or later: close_range(CLOSE_RANGE_CLOEXEC)",
            e,
        ))
    })?;
    // Memory freed after a burst goes back to the kernel (src/shrink.rs).
    spawn::fix_malloc_thresholds();
    let inherited = listen::inherited_sockets();

    let plan = config::load(&opts.config, opts.default_config).map_err(Error::Config)?;
    let (mut logger, warning) = log::Logger::open(plan.daemon.log, plan.daemon.log_level);
    if let Some(w) = warning {
        logger
            .event(Level::Warn, "log-fallback")
            .kv("error", w)
            .send();
    }
    for w in &plan.warnings {
        logger
            .event(Level::Warn, "config-warning")
            .kv_long("warning", w)
            .send();
    }
    let signals = signals::Signals::install()
        .map_err(|e| Error::Start(supervisor::StartError::Io("installing signal handlers", e)))?;
    let sup =
        supervisor::Supervisor::start(plan, logger, signals, inherited).map_err(Error::Start)?;
    sup.run();
    Ok(())
}

/// The default configuration path as a `Path`.
pub fn default_config() -> &'static Path {
    Path::new(config::DEFAULT_PATH)
}
