//! The pure parsers of single values (what the fuzz targets call): service
//! names, log levels, listen addresses, allow/deny entries, env names. Each
//! gives a message to show, never touches the system.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use crate::plan::{Level, ListenAddr};
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

/// Parses a `listen` entry: `"IPv4:PORT"`, `"[IPv6]:PORT"` or `"PORT"`.
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
    {
        return Err(format!(
            "env: \"{var}\" is set by tinyinetd for every connection and cannot be redefined"
        ));
    }
    Ok(())
}

/// A duration such as `"250ms"` or `"10s"` for `key`; zero only when
/// `zero_ok`.
pub fn parse_duration(s: &str, key: &str, zero_ok: bool) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() && !zero_ok => Err(format!("\"{key}\" must be longer than zero")),
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "\"{key}\": invalid duration \"{}\" ({e}); write e.g. \"250ms\", \"10s\", \"5m\"",
            esc(s)
        )),
    }
}
