//! The `[daemon]` table: one short check per key, each filling its field of
//! [`Daemon`] (which starts from the defaults).

use std::path::{Path, PathBuf};

use toml::de::DeTable;

use super::check::{esc, Checker, Value};
use super::fields::parse_level;
use crate::plan::{Daemon, LogTarget, DEFAULT_HANDLER_DIR};

pub(super) const DAEMON_KEYS: &[&str] = &[
    "log",
    "log_level",
    "max_connections",
    "shutdown_timeout",
    "handler_dir",
    "include",
];

/// Keys reserved for later work: refused with a message that says so.
const RESERVED_DAEMON_KEYS: &[&str] = &["control_socket"];

/// Every message about the table has this context.
const CTX: &str = "daemon";

impl Checker<'_> {
    pub(super) fn daemon(&mut self, t: &DeTable<'_>) -> Daemon {
        let mut d = Daemon::default();
        for (key, value) in t.iter() {
            let k = key.get_ref().as_ref();
            match k {
                "log" => self.log_target(value, &mut d),
                "log_level" => self.log_level(value, &mut d),
                "max_connections" => {
                    if let Some(n) = self.count(value, CTX, k, 1, 1_000_000) {
                        d.max_connections = n;
                    }
                }
                "shutdown_timeout" => {
                    if let Some(t) = self.duration(value, CTX, k, true) {
                        d.shutdown_timeout = t;
                    }
                }
                "handler_dir" => self.handler_dir(value, &mut d),
                "include" => self.include_key(value),
                _ => self.unknown_key(key, CTX, DAEMON_KEYS, RESERVED_DAEMON_KEYS),
            }
        }
        d
    }

    fn log_target(&mut self, value: &Value<'_>, d: &mut Daemon) {
        if let Some(s) = self.string(value, CTX, "log") {
            match s {
                "auto" => d.log = LogTarget::Auto,
                "stderr" => d.log = LogTarget::Stderr,
                "syslog" => d.log = LogTarget::Syslog,
                _ => self.problem(
                    value.span(),
                    CTX,
                    format!(
                        "\"log\" must be \"auto\", \"stderr\" or \"syslog\", not \"{}\"",
                        esc(s)
                    ),
                ),
            }
        }
    }

    fn log_level(&mut self, value: &Value<'_>, d: &mut Daemon) {
        if let Some(s) = self.string(value, CTX, "log_level") {
            match parse_level(s) {
                Some(l) => d.log_level = l,
                None => self.problem(
                    value.span(),
                    CTX,
                    format!(
                        "\"log_level\" must be \"error\", \"warn\", \"info\" or \"debug\", not \"{}\"",
                        esc(s)
                    ),
                ),
            }
        }
    }

    fn handler_dir(&mut self, value: &Value<'_>, d: &mut Daemon) {
        if let Some(s) = self.string(value, CTX, "handler_dir") {
            if s.starts_with('/') {
                d.handler_dir = PathBuf::from(s);
                // The package's own directory is missing in a source tree,
                // where the fallback beside the executable is meant; any
                // other missing directory is likely a typo.
                if s != DEFAULT_HANDLER_DIR && !Path::new(s).is_dir() {
                    self.warning(
                        value.span(),
                        CTX,
                        format!(
                            "handler_dir \"{}\" does not exist; bare program names are looked up beside the tinyinetd executable only",
                            esc(s)
                        ),
                    );
                }
            } else {
                self.problem(
                    value.span(),
                    CTX,
                    format!(
                        "\"handler_dir\" must be an absolute path, not \"{}\"",
                        esc(s)
                    ),
                );
            }
        }
    }
}
