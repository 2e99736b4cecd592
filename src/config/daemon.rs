//! The `[daemon]` table: one short check per key, each filling its field of
//! [`Daemon`] (which starts from the defaults).

use std::path::{Path, PathBuf};

use toml::de::DeTable;

use super::check::{esc, Checker, Value};
use super::fields::parse_level;
use super::System;
use crate::plan::{ControlGroup, ControlSocket, Daemon, LogTarget, DEFAULT_HANDLER_DIR};

pub(super) const DAEMON_KEYS: &[&str] = &[
    "log",
    "log_level",
    "max_connections",
    "shutdown_timeout",
    "handler_dir",
    "include",
    "control_socket",
    "control_group",
];

/// Every message about the table has this context.
const CTX: &str = "daemon";

impl Checker<'_> {
    pub(super) fn daemon(&mut self, t: &DeTable<'_>, sys: &dyn System) -> Daemon {
        let mut d = Daemon::default();
        let mut control_socket = None;
        let mut control_group_set = false;
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
                "control_socket" => control_socket = Some(self.control_socket(value)),
                "control_group" => {
                    control_group_set = true;
                    self.control_group(value, &mut d, sys);
                }
                _ => self.unknown_key(key, CTX, DAEMON_KEYS),
            }
        }
        // A daemon that is not root cannot give its socket to group root:
        // unless `control_group` is written, the file keeps the daemon's
        // own group (named by its number: no lookup for a default).
        let (euid, egid) = sys.identity();
        if !control_group_set && euid != 0 {
            d.control_group = ControlGroup {
                name: egid.to_string(),
                gid: egid,
            };
        }
        d.control_socket = match control_socket {
            Some(Some(c)) => c,
            // Invalid: reported; the value is never used.
            Some(None) => ControlSocket::Off,
            None => {
                let xdg = std::env::var_os("XDG_RUNTIME_DIR");
                crate::plan::default_control_socket(euid, xdg.as_deref())
                    .map_or(ControlSocket::Off, ControlSocket::Default)
            }
        };
        d
    }

    /// `control_socket`: `""` (off) or an absolute path that fits a
    /// `sockaddr_un`.
    fn control_socket(&mut self, value: &Value<'_>) -> Option<ControlSocket> {
        let s = self.string(value, CTX, "control_socket")?;
        if s.is_empty() {
            return Some(ControlSocket::Off);
        }
        // sun_path holds 108 bytes, the terminating NUL included.
        let why = if !s.starts_with('/') {
            "must be an absolute path, or \"\" to turn the control socket off"
        } else if s.len() > 107 {
            "is longer than a Unix socket path may be (107 bytes)"
        } else if s.ends_with('/') {
            "names a directory; name the socket file, like \"/run/tinyinetd/control.sock\""
        } else {
            return Some(ControlSocket::Explicit(PathBuf::from(s)));
        };
        self.problem(
            value.span(),
            CTX,
            format!("\"control_socket\" \"{}\" {why}", esc(s)),
        );
        None
    }

    /// `control_group`: a group name (looked up) or a gid.
    fn control_group(&mut self, value: &Value<'_>, d: &mut Daemon, sys: &dyn System) {
        let Some(s) = self.string(value, CTX, "control_group") else {
            return;
        };
        if let Ok(gid) = s.parse::<u32>() {
            d.control_group = ControlGroup {
                name: s.to_string(),
                gid,
            };
            return;
        }
        match sys.group(s) {
            Ok(Some(gid)) => {
                d.control_group = ControlGroup {
                    name: s.to_string(),
                    gid,
                }
            }
            Ok(None) => self.problem(
                value.span(),
                CTX,
                format!("\"control_group\": unknown group \"{}\"", esc(s)),
            ),
            Err(why) => self.problem(
                value.span(),
                CTX,
                format!("\"control_group\": group \"{}\": {why}", esc(s)),
            ),
        }
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
