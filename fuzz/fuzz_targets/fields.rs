//! The small parsers and the log escaper: listen addresses, allow/deny
//! entries, env names, service names, durations, rlimit values, and
//! escaping any text
//! into one bounded log value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyinetd::{config, text};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = config::parse_listen(&text);
    let _ = config::parse_net(&text);
    for m in [
        config::check_env_name(&text).err(),
        config::parse_duration(&text, "timeout", false).err(),
        config::parse_limit(&text, "rlimit_as").err(),
    ]
    .into_iter()
    .flatten()
    {
        assert!(!m.contains('\n'), "{m:?}");
    }
    if let Ok(d) = config::parse_duration(&text, "timeout", true) {
        assert!(d <= config::MAX_DURATION, "{d:?}");
    }
    if config::valid_name(&text) {
        assert!(!text.is_empty() && text.len() <= 64);
    }
    let mut out = String::new();
    text::escape_into(&mut out, &text);
    assert!(!out.chars().any(char::is_control));
    assert!(out.chars().count() <= 6 * text::MAX_VALUE_CHARS + 5);
});
