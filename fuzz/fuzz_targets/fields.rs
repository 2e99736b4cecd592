//! The small parsers and the log escaper: listen addresses, allow/deny
//! entries, and escaping any text into one bounded log value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyinetd::{config, text};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = config::parse_listen(&text);
    let _ = config::parse_net(&text);
    let mut out = String::new();
    text::escape_into(&mut out, &text);
    assert!(!out.chars().any(char::is_control));
    assert!(out.chars().count() <= 6 * text::MAX_VALUE_CHARS + 5);
});
