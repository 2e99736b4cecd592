//! Text shared by every module: the OS's words for an error, and escaping
//! of outside text (from the network or a config file) for a log line or
//! a message. Imports nothing from the crate.

use std::fmt::Write as _;

/// The longest a single value may be in a log line, in characters.
pub const MAX_VALUE_CHARS: usize = 200;

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
    escape_bounded(out, s, MAX_VALUE_CHARS);
}

/// [`escape_into`] with another bound: for the daemon's own long messages
/// (a configuration problem quotes at most 200 characters of the file, and
/// must reach the administrator whole).
pub fn escape_bounded(out: &mut String, s: &str, max_chars: usize) {
    let quote = s.is_empty()
        || s.chars()
            .any(|c| c == ' ' || c == '"' || c == '\\' || c == '=' || c.is_control());
    if quote {
        out.push('"');
    }
    for (n, c) in s.chars().enumerate() {
        if n == max_chars {
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

/// The OS error text without Rust's " (os error N)" suffix.
pub fn io_reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => os_error(nix::errno::Errno::from_raw(code)),
        None => e.to_string(),
    }
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
}
