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
pub mod config;
pub mod handler;
pub mod listen;
pub mod log;
pub mod notify;
pub mod plan;
pub mod resolver;
pub mod signals;
pub mod spawn;
pub mod supervisor;
pub mod text;
pub mod trust;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plan::{Level, Plan, Service};

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

/// `--check`: validates the file and describes every service, one line each.
pub fn check(opts: &Options) -> Result<String, Error> {
    // The load waits for `getent`: see `run`.
    spawn::reset_sigchld()
        .map_err(|e| Error::Start(supervisor::StartError::Io("resetting SIGCHLD", e)))?;
    let plan = config::load(&opts.config, opts.default_config).map_err(Error::Config)?;
    Ok(describe(&plan))
}

/// The `--check` report for a valid plan.
pub fn describe(plan: &Plan) -> String {
    let mut out = String::new();
    for s in &plan.services {
        describe_service(&mut out, s);
        out.push('\n');
    }
    let enabled = plan.enabled().count();
    let n = plan.services.len();
    let _ = writeln!(
        out,
        "{}: OK, {n} service{} ({enabled} enabled)",
        plan.path.display(),
        if n == 1 { "" } else { "s" },
    );
    out
}

fn describe_service(out: &mut String, s: &Service) {
    let listen: Vec<String> = s.listen.iter().map(ToString::to_string).collect();
    let _ = write!(
        out,
        "{} listen={} program={}",
        s.name,
        listen.join(","),
        s.image.path.to_string_lossy()
    );
    if s.image.argv.len() > 1 {
        let args: Vec<String> = s.image.argv[1..]
            .iter()
            .map(|a| crate::text::escape(&a.to_string_lossy()))
            .collect();
        let _ = write!(out, " args=[{}]", args.join(" "));
    }
    match &s.cred {
        Some(c) => {
            let _ = write!(out, " user={} group={}", c.user, c.group);
        }
        None => out.push_str(" user=(daemon's own) group=(daemon's own)"),
    }
    let l = &s.limits;
    let none = || "none".to_string();
    let _ = write!(
        out,
        " max_instances={} max_per_source={} source_prefix=/{},/{} max_rate={} timeout={}",
        l.max_instances,
        l.max_per_source.map_or_else(none, |n| n.to_string()),
        l.source_prefix_v4,
        l.source_prefix_v6,
        l.max_rate.map_or_else(none, |n| format!("{n}/s")),
        l.timeout
            .map_or_else(none, |t| humantime::format_duration(t).to_string()),
    );
    let nets = |v: &[ipnet::IpNet]| {
        if v.is_empty() {
            None
        } else {
            Some(
                v.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            )
        }
    };
    let _ = write!(
        out,
        " allow={} deny={} umask={:03o} {}",
        nets(&s.access.allow).unwrap_or_else(|| "any".into()),
        nets(&s.access.deny).unwrap_or_else(none),
        s.image.umask,
        if s.enabled { "enabled" } else { "disabled" }
    );
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
    let inherited = listen::inherited_sockets();

    let plan = config::load(&opts.config, opts.default_config).map_err(Error::Config)?;
    let (mut logger, warning) = log::Logger::open(plan.daemon.log, plan.daemon.log_level);
    if let Some(w) = warning {
        logger
            .event(Level::Warn, "log-fallback")
            .kv("error", w)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(services: usize) -> Plan {
        let mut text = String::new();
        for i in 0..services {
            text.push_str(&format!(
                "[[service]]\nname = \"s{i}\"\nlisten = [\"127.0.0.1:{}\"]\nprogram = \"/bin/sh\"\n",
                9000 + i
            ));
        }
        config::parse(Path::new("t.toml"), &text, &config::RealSystem).expect("valid")
    }

    #[test]
    fn the_check_summary_counts_in_words() {
        let last = |n| describe(&plan_of(n)).lines().last().map(String::from);
        assert_eq!(
            last(1).as_deref(),
            Some("t.toml: OK, 1 service (1 enabled)")
        );
        assert_eq!(
            last(2).as_deref(),
            Some("t.toml: OK, 2 services (2 enabled)")
        );
        assert_eq!(
            describe(&Plan {
                path: "t.toml".into(),
                ..Plan::default()
            }),
            "t.toml: OK, 0 services (0 enabled)\n"
        );
    }
}
