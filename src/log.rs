//! One log sink (syslog or stderr), a level filter, and `LEVEL: event key=value` lines.
//!
//! Every value is escaped on the way in: text from the network or from a
//! config file can never inject a newline, a control byte or an unbounded
//! amount of data into the log. The line is built in a buffer owned by the
//! logger, so logging an event does not allocate once the buffer has grown.

use std::fmt::{self, Write as _};
use std::io::{IsTerminal, Write as _};
use std::time::{Duration, Instant};

use syslog::{Facility, Formatter3164, LoggerBackend};

use crate::plan::{Level, LogTarget};

/// The longest a single value may be in a log line, in characters.
pub const MAX_VALUE_CHARS: usize = 200;

type Syslog = syslog::Logger<LoggerBackend, Formatter3164>;

enum Sink {
    Stderr,
    Syslog {
        /// `None` after a failed send until a reconnect succeeds.
        logger: Option<Syslog>,
        /// Reconnects are tried at most once a second, so a vanished syslog
        /// socket costs one failed connect per second, not one per line.
        next_attempt: Instant,
    },
}

/// The daemon's logger. Owned by the supervisor; never used in a child.
pub struct Logger {
    sink: Sink,
    level: Level,
    /// The line being built; reused.
    line: String,
    /// Scratch for formatting one value before escaping it; reused.
    scratch: String,
}

impl Logger {
    /// A stderr logger at `level`; what the daemon uses until the config is read.
    pub fn stderr(level: Level) -> Logger {
        Logger {
            sink: Sink::Stderr,
            level,
            line: String::with_capacity(256),
            scratch: String::with_capacity(64),
        }
    }

    /// Opens the sink the config asks for. Returns a warning to log when
    /// syslog was wanted but could not be reached (the logger then uses stderr).
    pub fn open(target: LogTarget, level: Level) -> (Logger, Option<String>) {
        let mut logger = Logger::stderr(level);
        let want_syslog = match target {
            LogTarget::Stderr => false,
            LogTarget::Syslog => true,
            LogTarget::Auto => {
                std::env::var_os("JOURNAL_STREAM").is_none() && !std::io::stderr().is_terminal()
            }
        };
        if !want_syslog {
            return (logger, None);
        }
        match connect_syslog() {
            Ok(s) => {
                logger.sink = Sink::Syslog {
                    logger: Some(s),
                    next_attempt: Instant::now(),
                };
                (logger, None)
            }
            Err(e) => (
                logger,
                Some(format!("syslog is not reachable ({e}); logging to stderr")),
            ),
        }
    }

    pub fn set_level(&mut self, level: Level) {
        self.level = level;
    }

    pub fn enabled(&self, level: Level) -> bool {
        level <= self.level
    }

    /// Starts a line; add values with [`Line::kv`] and finish with [`Line::send`].
    pub fn event(&mut self, level: Level, event: &str) -> Line<'_> {
        let on = self.enabled(level);
        if on {
            self.line.clear();
            self.line.push_str(level.as_str());
            self.line.push_str(": ");
            self.line.push_str(event);
        }
        Line {
            logger: self,
            level,
            on,
        }
    }

    fn write(&mut self, level: Level) {
        if let Sink::Syslog {
            logger,
            next_attempt,
        } = &mut self.sink
        {
            if logger.is_none() && Instant::now() >= *next_attempt {
                *logger = connect_syslog().ok();
                *next_attempt = Instant::now() + Duration::from_secs(1);
            }
            if let Some(l) = logger {
                if send_syslog(l, level, &self.line).is_ok() {
                    return;
                }
                // Lost the socket (syslogd restarted, or gone): reconnect
                // once now, then fall back to stderr for this line.
                *logger = connect_syslog().ok();
                *next_attempt = Instant::now() + Duration::from_secs(1);
                if let Some(l) = logger {
                    if send_syslog(l, level, &self.line).is_ok() {
                        return;
                    }
                    *logger = None;
                }
            }
        }
        // stderr: one write per line so lines from one process never interleave.
        self.line.push('\n');
        let _ = std::io::stderr().lock().write_all(self.line.as_bytes());
    }
}

fn send_syslog(l: &mut Syslog, level: Level, msg: &str) -> syslog::Result<()> {
    match level {
        Level::Error => l.err(msg),
        Level::Warn => l.warning(msg),
        Level::Info => l.info(msg),
        Level::Debug => l.debug(msg),
    }
}

fn connect_syslog() -> Result<Syslog, String> {
    let formatter = Formatter3164 {
        facility: Facility::LOG_DAEMON,
        hostname: None,
        process: "tinyinetd".into(),
        pid: std::process::id(),
    };
    if !std::path::Path::new("/dev/log").exists() {
        return Err("/dev/log does not exist".into());
    }
    syslog::unix_custom(formatter, "/dev/log").map_err(|e| e.to_string())
}

/// A log line being built.
pub struct Line<'a> {
    logger: &'a mut Logger,
    level: Level,
    /// False when the level is filtered out: every call is then a no-op.
    on: bool,
}

impl Line<'_> {
    /// Appends ` key=value`, the value escaped (see [`escape_into`]).
    pub fn kv(self, key: &str, value: impl fmt::Display) -> Self {
        if self.on {
            let l = &mut *self.logger;
            l.scratch.clear();
            let _ = write!(l.scratch, "{value}");
            l.line.push(' ');
            l.line.push_str(key);
            l.line.push('=');
            escape_into(&mut l.line, &l.scratch);
        }
        self
    }

    /// Appends ` key=value` only when `value` is present.
    pub fn opt(self, key: &str, value: Option<impl fmt::Display>) -> Self {
        match value {
            Some(v) => self.kv(key, v),
            None => self,
        }
    }

    pub fn send(self) {
        if self.on {
            self.logger.write(self.level);
        }
    }
}

/// The C library's text for an OS error (strerror), as administrators see
/// it from every other tool: "Resource temporarily unavailable", not nix's
/// "Try again".
pub fn os_error(errno: nix::errno::Errno) -> String {
    let text = std::io::Error::from_raw_os_error(errno as i32).to_string();
    match text.rfind(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Escapes `s` for a log value: printable text as is; a value with spaces,
/// quotes, `=` or backslashes is quoted; control characters become `\xNN`
/// or `\u{…}`; more than [`MAX_VALUE_CHARS`] characters are cut and marked `...`.
pub fn escape_into(out: &mut String, s: &str) {
    let quote = s.is_empty()
        || s.chars()
            .any(|c| c == ' ' || c == '"' || c == '\\' || c == '=' || c.is_control());
    if quote {
        out.push('"');
    }
    for (n, c) in s.chars().enumerate() {
        if n == MAX_VALUE_CHARS {
            out.push_str("...");
            break;
        }
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    if quote {
        out.push('"');
    }
}

/// [`escape_into`] into a new string.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    escape_into(&mut out, s);
    // Quotes are for key=value lines; in a sentence the caller adds its own.
    if out.len() >= 2 && out.starts_with('"') && out.ends_with('"') && !s.starts_with('"') {
        out = out[1..out.len() - 1].to_string();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(s: &str) -> String {
        let mut out = String::new();
        escape_into(&mut out, s);
        out
    }

    #[test]
    fn os_errors_read_like_strerror() {
        assert_eq!(
            os_error(nix::errno::Errno::EAGAIN),
            "Resource temporarily unavailable"
        );
        assert_eq!(
            os_error(nix::errno::Errno::EADDRINUSE),
            "Address already in use"
        );
    }

    #[test]
    fn plain_values_are_unquoted() {
        assert_eq!(esc("127.0.0.1:80"), "127.0.0.1:80");
        assert_eq!(esc("échø"), "échø");
    }

    #[test]
    fn control_bytes_and_spaces_are_escaped() {
        assert_eq!(esc("a b"), "\"a b\"");
        assert_eq!(esc("x\ny"), "\"x\\ny\"");
        assert_eq!(esc("\u{1b}[31m"), "\"\\x1b[31m\"");
        assert_eq!(esc("\u{85}"), "\"\\u{85}\"");
        assert_eq!(esc("k=v"), "\"k=v\"");
        assert_eq!(esc(""), "\"\"");
        assert_eq!(esc("\"\\"), "\"\\\"\\\\\"");
    }

    #[test]
    fn long_values_are_capped() {
        let long = "a".repeat(10_000);
        let out = esc(&long);
        assert_eq!(out.len(), MAX_VALUE_CHARS + 3);
        assert!(out.ends_with("..."));
    }

    #[test]
    fn escape_for_sentences_drops_quotes_but_not_escapes() {
        assert_eq!(escape("a b"), "a b");
        assert_eq!(escape("a\nb"), "a\\nb");
    }

    proptest::proptest! {
        #[test]
        fn escaped_values_are_one_bounded_line_without_control_bytes(s in "\\PC{0,300}|[\\x00-\\x7f]{0,300}") {
            let out = esc(&s);
            proptest::prop_assert!(!out.chars().any(char::is_control), "{:?}", out);
            // At most 6 characters per input character (`\u{9f}`), quotes and "...".
            proptest::prop_assert!(out.chars().count() <= 6 * MAX_VALUE_CHARS + 5);
        }
    }

    #[test]
    fn lines_are_formatted_and_filtered() {
        let mut l = Logger::stderr(Level::Info);
        l.event(Level::Info, "exit")
            .kv("service", "echo")
            .kv("peer", "1.2.3.4:5")
            .opt("status", Some(0))
            .opt("signal", None::<&str>)
            .send();
        assert_eq!(l.line, "info: exit service=echo peer=1.2.3.4:5 status=0\n");
        l.line.clear();
        l.event(Level::Debug, "noise").kv("x", 1).send();
        assert_eq!(l.line, "");
    }
}
