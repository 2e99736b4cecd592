//! The pure parsers of single values (what the fuzz targets call): service
//! names, log levels, listen addresses, allow/deny entries, env names. Each
//! gives a message to show, never touches the system.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use crate::plan::{Level, ListenAddr, UnixName};
use crate::text::escape as esc;

/// Whether `n` is a valid service name: 1 to 64 of a-z, 0-9, `_` and `-`.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A `log_level` value.
pub(super) fn parse_level(s: &str) -> Option<Level> {
    match s {
        "error" => Some(Level::Error),
        "warn" => Some(Level::Warn),
        "info" => Some(Level::Info),
        "debug" => Some(Level::Debug),
        _ => None,
    }
}

/// Parses a `listen` entry: `"IPv4:PORT"`, `"[IPv6]:PORT"`, `"PORT"`, or
/// `"unix:/PATH"` / `"unix:@NAME"` (SPEC §10.4).
/// An entry of another shape gets a message that says what to write.
pub fn parse_listen(s: &str) -> Result<ListenAddr, String> {
    let invalid = |why: &str| format!("invalid listen address \"{}\": {why}", esc(s));
    let bad_port = || invalid("the port must be 1 to 65535");
    let port = |p: &str| match p.parse::<u16>() {
        Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(bad_port()),
    };
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return port(s).map(ListenAddr::Any);
    }
    if let Some(name) = s.strip_prefix("unix:") {
        return UnixName::parse(name)
            .map(ListenAddr::Unix)
            .map_err(|why| invalid(&why));
    }
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = s.strip_prefix('[') {
        let Some((ip, p)) = rest.split_once("]:") else {
            return Err(invalid("expected \"[IPv6]:PORT\" such as \"[::1]:9877\""));
        };
        return match ip.parse::<Ipv6Addr>() {
            Ok(_) if ip.contains('%') => Err(invalid("scoped IPv6 addresses are not supported")),
            Ok(ip) if digits(p) => Ok(ListenAddr::Addr(SocketAddr::from((ip, port(p)?)))),
            Ok(_) => Err(bad_port()),
            Err(_) if ip.contains('%') => Err(invalid("scoped IPv6 addresses are not supported")),
            Err(_) => Err(invalid("expected \"[IPv6]:PORT\" such as \"[::1]:9877\"")),
        };
    }
    let generic = || invalid("expected \"IPv4:PORT\", \"[IPv6]:PORT\" or \"PORT\"");
    let Some((host, p)) = s.rsplit_once(':') else {
        return Err(generic());
    };
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return if digits(p) {
            Ok(ListenAddr::Addr(SocketAddr::from((ip, port(p)?))))
        } else {
            Err(bad_port())
        };
    }
    if digits(p) && host.parse::<Ipv6Addr>().is_ok() {
        return Err(invalid(&format!(
            "an IPv6 address needs brackets, as in \"[{host}]:{p}\""
        )));
    }
    let hostname = !host.is_empty()
        && host.bytes().any(|b| b.is_ascii_alphabetic())
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if hostname && digits(p) {
        return Err(invalid(&format!(
            "host names are not accepted; write an address, such as \"127.0.0.1:{p}\" or \"[::1]:{p}\""
        )));
    }
    Err(generic())
}

/// Parses an `allow`/`deny` entry: an address or a CIDR without host bits.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip.to_canonical()));
    }
    match s.parse::<IpNet>() {
        Ok(n) if n.trunc() != n => Err(format!(
            "\"{}\" has host bits set; did you mean \"{}\"?",
            esc(s),
            n.trunc()
        )),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "\"{}\" is not an address or a CIDR such as \"192.0.2.0/24\" or \"2001:db8::/32\"",
            esc(s)
        )),
    }
}

/// An `env` key: a shell-style name that the daemon does not set itself.
pub fn check_env_name(var: &str) -> Result<(), String> {
    let valid = !var.is_empty()
        && var
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Err(format!(
            "env: \"{}\" is not a valid variable name (letters, digits and _, not starting with a digit)",
            esc(var)
        ));
    }
    if var == "PROTO"
        || var.starts_with("TCP")
        || var.starts_with("REMOTE_")
        || var.starts_with("TINYINETD_")
        // A Unix service's peer credentials (SPEC §10.4): a service's own
        // value would come first in the environment and win.
        || var.starts_with("UNIXREMOTE")
        || var.starts_with("UNIXLOCAL")
    {
        return Err(format!(
            "env: \"{var}\" is set by tinyinetd for every connection and cannot be redefined"
        ));
    }
    Ok(())
}

/// The longest duration the file may give (SPEC §10.1): 100 days. Past
/// it a value is a mistake (a unit slip), and the kernel's and the
/// loop's arithmetic on it could overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 24 * 3600);

/// A duration such as `"250ms"` or `"10s"` for `key`; zero only when
/// `zero_ok`; at most [`MAX_DURATION`]. The messages say what is wrong
/// in the config's words, not the parser's (`expected number at 0`).
pub fn parse_duration(s: &str, key: &str, zero_ok: bool) -> Result<Duration, String> {
    let invalid = |why: &str| format!("\"{key}\": invalid duration \"{}\": {why}", esc(s));
    let example = "write e.g. \"250ms\", \"10s\", \"5m\"";
    if s.trim_start().starts_with('-') {
        return Err(invalid("negative durations are not allowed"));
    }
    let too_long = || {
        format!(
            "\"{key}\": duration \"{}\" is too long: the most is 100 days (\"100d\")",
            esc(s)
        )
    };
    let d = match humantime::parse_duration(s) {
        Ok(d) => d,
        Err(humantime::DurationError::Empty) => {
            return Err(invalid(&format!("it is empty; {example}")))
        }
        Err(humantime::DurationError::UnknownUnit { unit, .. }) if unit.is_empty() => {
            return Err(invalid(&format!("a number needs a unit; {example}")))
        }
        Err(humantime::DurationError::UnknownUnit { unit, .. }) => {
            return Err(invalid(&format!(
                "unknown unit \"{}\"; the units are ms, s, m, h and d (also msec, sec, min, hours, days ...)",
                esc(&unit)
            )))
        }
        Err(humantime::DurationError::NumberOverflow) => return Err(too_long()),
        Err(_) => {
            return Err(invalid(&format!(
                "expected numbers each followed by a unit; {example}"
            )))
        }
    };
    if d > MAX_DURATION {
        return Err(too_long());
    }
    if d.is_zero() && !zero_ok {
        return Err(format!("\"{key}\" must be longer than zero"));
    }
    Ok(d)
}

/// `RLIM_INFINITY` as a value of [`parse_limit`]: no limit.
pub const UNLIMITED: u64 = u64::MAX;

/// An `rlimit_*` value given as a string: a number, a number of bytes
/// with a binary suffix (`"512K"`, `"512M"`, `"2G"`, `"1T"`: 1024-based),
/// or `"infinity"` ([`UNLIMITED`]). Integers in the file are read by the
/// checker and never come here.
pub fn parse_limit(s: &str, key: &str) -> Result<u64, String> {
    let invalid = || {
        format!(
            "\"{key}\" must be a number, a size like \"512M\" or \"2G\" (K, M, G, T: 1024-based), or \"infinity\", not \"{}\"",
            esc(s)
        )
    };
    if s == "infinity" || s == "unlimited" {
        return Ok(UNLIMITED);
    }
    let (digits, shift) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 30),
        Some(b'T' | b't') => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let too_big = || {
        format!(
            "\"{key}\": \"{}\" is too large; write \"infinity\" for no limit",
            esc(s)
        )
    };
    let n: u64 = digits.parse().map_err(|_| too_big())?;
    match n.checked_mul(1u64 << shift) {
        Some(v) if v < UNLIMITED => Ok(v),
        _ => Err(too_big()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unix_connection_variables_cannot_be_redefined() {
        for var in ["UNIXREMOTEUID", "UNIXREMOTEPID", "UNIXLOCALPATH"] {
            assert!(
                check_env_name(var)
                    .unwrap_err()
                    .contains("cannot be redefined"),
                "{var}"
            );
        }
        assert_eq!(check_env_name("UNIX_SOCKET_DIR"), Ok(()));
    }

    #[test]
    fn durations_say_what_is_wrong() {
        let e = |s: &str| parse_duration(s, "timeout", false).unwrap_err();
        assert_eq!(
            e("-5s"),
            "\"timeout\": invalid duration \"-5s\": negative durations are not allowed"
        );
        assert_eq!(
            e("5 parsecs"),
            "\"timeout\": invalid duration \"5 parsecs\": unknown unit \"parsecs\"; the units are ms, s, m, h and d (also msec, sec, min, hours, days ...)"
        );
        assert_eq!(
            e("10"),
            "\"timeout\": invalid duration \"10\": a number needs a unit; write e.g. \"250ms\", \"10s\", \"5m\""
        );
        assert_eq!(
            e(""),
            "\"timeout\": invalid duration \"\": it is empty; write e.g. \"250ms\", \"10s\", \"5m\""
        );
        assert_eq!(
            e("ten s"),
            "\"timeout\": invalid duration \"ten s\": expected numbers each followed by a unit; write e.g. \"250ms\", \"10s\", \"5m\""
        );
        assert_eq!(e("0s"), "\"timeout\" must be longer than zero");
    }

    #[test]
    fn durations_are_capped_at_100_days() {
        let too_long = |s: &str| {
            format!("\"timeout\": duration \"{s}\" is too long: the most is 100 days (\"100d\")")
        };
        assert_eq!(parse_duration("100d", "timeout", false), Ok(MAX_DURATION));
        assert_eq!(
            parse_duration("100d 1s", "timeout", false),
            Err(too_long("100d 1s"))
        );
        assert_eq!(
            parse_duration("100000000000h", "timeout", false),
            Err(too_long("100000000000h"))
        );
        let huge = "99999999999999999999999s";
        assert_eq!(parse_duration(huge, "timeout", false), Err(too_long(huge)));
        assert_eq!(
            parse_duration("250ms", "timeout", false),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(parse_duration("0s", "t", true), Ok(Duration::ZERO));
    }

    #[test]
    fn limits_are_counts_sizes_or_infinity() {
        let ok = |s: &str| parse_limit(s, "rlimit_as");
        assert_eq!(ok("0"), Ok(0));
        assert_eq!(ok("1024"), Ok(1024));
        assert_eq!(ok("512K"), Ok(512 << 10));
        assert_eq!(ok("512M"), Ok(512 << 20));
        assert_eq!(ok("2G"), Ok(2 << 30));
        assert_eq!(ok("2g"), Ok(2 << 30));
        assert_eq!(ok("1T"), Ok(1 << 40));
        assert_eq!(ok("infinity"), Ok(UNLIMITED));
        let bad = |s: &str| {
            format!("\"rlimit_as\" must be a number, a size like \"512M\" or \"2G\" (K, M, G, T: 1024-based), or \"infinity\", not \"{s}\"")
        };
        for s in ["", "M", "-1", "1.5G", "2GB", "2 G", "lots", " 5"] {
            assert_eq!(parse_limit(s, "rlimit_as"), Err(bad(s)), "{s:?}");
        }
        let big = |s: &str| {
            format!("\"rlimit_as\": \"{s}\" is too large; write \"infinity\" for no limit")
        };
        for s in ["99999999999999999999", "16777216T", "18446744073709551615"] {
            assert_eq!(parse_limit(s, "rlimit_as"), Err(big(s)), "{s:?}");
        }
    }
}
