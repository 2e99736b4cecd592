//! The socket keys of a `[[service]]` (SPEC §10.3 and the Unix socket
//! file's mode and owner, §10.4): each value checked into the service's
//! [`SockOpts`], then, once the whole table is read, whether each key fits
//! the kind of address the service listens on (a TCP option on a Unix
//! service, `allow` on a Unix service, a socket file's owner without a
//! socket file are errors), and the kernel's caps `--check` notes.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::de::DeValue;

use super::check::{esc, Checker, Value};
use super::fields::{parse_limit, UNLIMITED};
use super::System;
use crate::plan::{Keepalive, ListenAddr, SockOpts};

/// The keys this file checks.
pub(super) const SOCKOPT_KEYS: &[&str] = &[
    "backlog",
    "keepalive",
    "keepalive_idle",
    "keepalive_interval",
    "keepalive_count",
    "nodelay",
    "defer_accept",
    "reuse_port",
    "free_bind",
    "bind_device",
    "receive_buffer",
    "send_buffer",
    "socket_mode",
    "socket_user",
    "socket_group",
];

/// Keys that mean nothing on a Unix socket: an error on a Unix service.
const IP_ONLY: &[&str] = &[
    "keepalive",
    "keepalive_idle",
    "keepalive_interval",
    "keepalive_count",
    "nodelay",
    "defer_accept",
    "reuse_port",
    "free_bind",
    "bind_device",
    "proxy_protocol",
    "trusted_proxies",
    "proxy_timeout",
];

/// Keys about a socket file: an error without a `unix:/PATH` address.
const FILE_ONLY: &[&str] = &["socket_mode", "socket_user", "socket_group"];

/// The kernel keeps keepalive times and `TCP_DEFER_ACCEPT` in seconds and
/// refuses keepalive times above this (`MAX_TCP_KEEPIDLE`).
const MAX_SECS: u64 = 32767;

/// The largest buffer size: the kernel doubles the value into an `int`.
const MAX_BUFFER: u64 = (i32::MAX / 2) as u64;

/// Linux's interface names are at most 15 bytes (`IFNAMSIZ` less the NUL).
const IFNAMSIZ: usize = 16;

/// What the socket keys of one table say, with where each was written.
#[derive(Debug, Default)]
pub(super) struct SockDraft {
    /// The options, defaults where not given.
    pub(super) opts: SockOpts,
    /// Each key given (`allow` and `deny` too), with its value's span, for
    /// the checks against the kind of address.
    seen: Vec<(String, Range<usize>)>,
    /// `keepalive = false` written: contradicts any of its three values.
    keepalive_off: bool,
    /// `socket_user` and `socket_group` as written (resolved in `fit`).
    user: Option<(String, Range<usize>)>,
    group: Option<(String, Range<usize>)>,
}

impl SockDraft {
    /// Each socket key given, with its value's span.
    pub(super) fn seen(&self) -> impl Iterator<Item = &(String, Range<usize>)> {
        self.seen.iter()
    }
}

impl SockDraft {
    /// Records that `key` was written at `span` (for keys checked elsewhere,
    /// `allow` and `deny`).
    pub(super) fn saw(&mut self, key: &str, span: Range<usize>) {
        self.seen.push((key.to_string(), span));
    }
}

impl Checker<'_> {
    /// One socket key (one of [`SOCKOPT_KEYS`]) into `sd`.
    pub(super) fn sockopt(&mut self, k: &str, value: &Value<'_>, ctx: &str, sd: &mut SockDraft) {
        sd.saw(k, value.span());
        let o = &mut sd.opts;
        match k {
            "backlog" => {
                if let Some(n) = self.count(value, ctx, k, 1, i32::MAX as usize) {
                    o.backlog = n as u32;
                }
            }
            "keepalive" => {
                if let Some(b) = self.boolean(value, ctx, k) {
                    sd.keepalive_off = !b;
                    o.keepalive = b.then(|| o.keepalive.unwrap_or_default());
                }
            }
            "keepalive_idle" | "keepalive_interval" => {
                if let Some(s) = self.seconds(value, ctx, k, 1) {
                    let ka = o.keepalive.get_or_insert_with(Keepalive::default);
                    if k == "keepalive_idle" {
                        ka.idle = Some(s);
                    } else {
                        ka.interval = Some(s);
                    }
                }
            }
            "keepalive_count" => {
                if let Some(n) = self.count(value, ctx, k, 1, 127) {
                    o.keepalive.get_or_insert_with(Keepalive::default).count = Some(n as u32);
                }
            }
            "defer_accept" => {
                if let Some(s) = self.seconds(value, ctx, k, 0) {
                    o.defer_accept = s;
                }
            }
            "nodelay" | "reuse_port" | "free_bind" => {
                if let Some(b) = self.boolean(value, ctx, k) {
                    match k {
                        "nodelay" => o.nodelay = b,
                        "reuse_port" => o.reuse_port = b,
                        _ => o.free_bind = b,
                    }
                }
            }
            "bind_device" => {
                if let Some(dev) = self.device(value, ctx) {
                    o.bind_device = Some(dev);
                }
            }
            "receive_buffer" | "send_buffer" => {
                if let Some(n) = self.buffer(value, ctx, k) {
                    if k == "receive_buffer" {
                        o.receive_buffer = Some(n);
                    } else {
                        o.send_buffer = Some(n);
                    }
                }
            }
            _ => self.socket_file(k, value, ctx, sd),
        }
    }

    /// `socket_mode`, `socket_user`, `socket_group` (the names are looked
    /// up in [`sockopt_fit`](Self::sockopt_fit)).
    fn socket_file(&mut self, k: &str, value: &Value<'_>, ctx: &str, sd: &mut SockDraft) {
        let Some(s) = self.string(value, ctx, k) else {
            return;
        };
        match k {
            "socket_mode" => match u32::from_str_radix(s, 8) {
                Ok(m) if m <= 0o777 && !s.is_empty() => sd.opts.socket_mode = Some(m),
                _ => self.problem(
                    value.span(),
                    ctx,
                    format!(
                        "\"socket_mode\" must be an octal mode like \"0660\", not \"{}\"",
                        esc(s)
                    ),
                ),
            },
            "socket_user" => sd.user = Some((s.to_string(), value.span())),
            _ => sd.group = Some((s.to_string(), value.span())),
        }
    }

    /// `true` or `false`.
    fn boolean(&mut self, value: &Value<'_>, ctx: &str, k: &str) -> Option<bool> {
        match value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                let m = format!("\"{k}\" must be true or false, not {}", other.type_str());
                self.problem(value.span(), ctx, m);
                None
            }
        }
    }

    /// A duration in whole seconds, `min` to [`MAX_SECS`] (the kernel's unit
    /// and bound for keepalive times and `TCP_DEFER_ACCEPT`).
    fn seconds(&mut self, value: &Value<'_>, ctx: &str, k: &str, min: u64) -> Option<u32> {
        let d = self.duration(value, ctx, k, min == 0)?;
        if d.subsec_nanos() != 0 || d < Duration::from_secs(min) || d.as_secs() > MAX_SECS {
            let m = format!(
                "\"{k}\" must be whole seconds from {min}s to {MAX_SECS}s (the kernel counts it in seconds), not {}",
                humantime::format_duration(d)
            );
            self.problem(value.span(), ctx, m);
            return None;
        }
        Some(d.as_secs() as u32)
    }

    /// `receive_buffer`, `send_buffer`: bytes, an integer or `"256K"`.
    fn buffer(&mut self, value: &Value<'_>, ctx: &str, k: &str) -> Option<u32> {
        let parsed = match value.get_ref() {
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix())
                .ok()
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| format!("\"{k}\" must be a positive number of bytes")),
            DeValue::String(s) => parse_limit(s, k),
            other => Err(format!(
                "\"{k}\" must be a number of bytes or a size like \"256K\", not {}",
                other.type_str()
            )),
        };
        match parsed {
            Ok(n) if (1..=MAX_BUFFER).contains(&n) && n != UNLIMITED => Some(n as u32),
            Ok(_) => {
                let m = format!("\"{k}\" must be from 1 to {MAX_BUFFER} bytes (1G)");
                self.problem(value.span(), ctx, m);
                None
            }
            Err(m) => {
                self.problem(value.span(), ctx, m);
                None
            }
        }
    }

    /// `bind_device`: an interface that exists now (`/sys/class/net/NAME`).
    fn device(&mut self, value: &Value<'_>, ctx: &str) -> Option<String> {
        let s = self.string(value, ctx, "bind_device")?;
        let valid = !s.is_empty()
            && s.len() < IFNAMSIZ
            && s != "."
            && s != ".."
            && !s
                .bytes()
                .any(|b| b == b'/' || b.is_ascii_whitespace() || b == 0);
        let m = if !valid {
            format!(
                "\"bind_device\" must be a network interface name (1 to 15 characters, no \"/\" or spaces), not \"{}\"",
                esc(s)
            )
        } else if !Path::new("/sys/class/net").join(s).exists() {
            format!(
                "\"bind_device\": this host has no network interface \"{}\" (see `ip link`)",
                esc(s)
            )
        } else {
            return Some(s.to_string());
        };
        self.problem(value.span(), ctx, m);
        None
    }

    /// Once the whole table is read: each key against the kind of address
    /// (`listen` is all Unix or all IP), `socket_user`/`socket_group`
    /// resolved, and the kernel's caps noted as warnings.
    pub(super) fn sockopt_fit(
        &mut self,
        sd: &mut SockDraft,
        listen: &[(ListenAddr, Range<usize>)],
        ctx: &str,
        sys: &dyn System,
    ) {
        let unix = listen.iter().any(|(a, _)| a.is_unix());
        // One kind per service, so that PROTO, allow/deny and
        // max_per_source have one meaning for all its connections.
        let kind = listen.first().map(|(a, _)| a.is_unix());
        if let Some((_, span)) = listen.iter().find(|(a, _)| Some(a.is_unix()) != kind) {
            self.problem(
                span.clone(),
                ctx,
                "a service listens on Unix sockets or on IP addresses, not both (PROTO, allow/deny and max_per_source mean different things for each): make it two services",
            );
        }
        let path = listen
            .iter()
            .any(|(a, _)| matches!(a, ListenAddr::Unix(n) if n.path().is_some()));
        let first = listen
            .first()
            .map(|(a, _)| a.to_string())
            .unwrap_or_default();
        for (k, span) in &sd.seen {
            let m = if unix && (k == "allow" || k == "deny") {
                format!("\"{k}\" cannot be used on a Unix service ({first}): it admits by IP address; use socket_mode, socket_user and socket_group to say who may connect")
            } else if unix && IP_ONLY.contains(&k.as_str()) {
                format!("\"{k}\" is a TCP option and does not apply to a Unix socket ({first})")
            } else if !path && FILE_ONLY.contains(&k.as_str()) {
                format!("\"{k}\" sets a socket file's owner or mode: it needs a \"unix:/PATH\" address (an abstract or IP socket has no file)")
            } else if sd.keepalive_off && k.starts_with("keepalive_") {
                format!("\"{k}\" turns keepalive on, but \"keepalive = false\" is written too")
            } else {
                continue;
            };
            self.problem(span.clone(), ctx, m);
        }
        if let Some((u, span)) = sd.user.take() {
            let (euid, _) = sys.identity();
            match sys.user(&u) {
                // Only root may give a file away (chown(2)).
                Ok(Some((uid, _))) if euid != 0 && uid != euid => {
                    let m = format!("\"socket_user\" = \"{}\": only a daemon running as root can give its socket file another owner", esc(&u));
                    self.problem(span, ctx, m);
                }
                Ok(Some((uid, _))) => sd.opts.socket_user = Some((u, uid)),
                Ok(None) => self.problem(
                    span,
                    ctx,
                    format!("\"socket_user\": unknown user \"{}\"", esc(&u)),
                ),
                Err(why) => {
                    self.problem(span, ctx, format!("\"socket_user\" \"{}\": {why}", esc(&u)))
                }
            }
        }
        if let Some((g, span)) = sd.group.take() {
            match sys.group(&g) {
                Ok(Some(gid)) => sd.opts.socket_group = Some((g, gid)),
                Ok(None) => self.problem(
                    span,
                    ctx,
                    format!("\"socket_group\": unknown group \"{}\"", esc(&g)),
                ),
                Err(why) => self.problem(
                    span,
                    ctx,
                    format!("\"socket_group\" \"{}\": {why}", esc(&g)),
                ),
            }
        }
        self.kernel_caps(sd, ctx);
    }

    /// A backlog above `net.core.somaxconn`, a buffer above
    /// `net.core.rmem_max`/`wmem_max`: valid, but the kernel caps them.
    fn kernel_caps(&mut self, sd: &SockDraft, ctx: &str) {
        let read = |name: &str| -> Option<u64> {
            std::fs::read_to_string(Path::new("/proc/sys/net/core").join(name))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let span = |key: &str| {
            sd.seen
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, s)| s.clone())
        };
        let caps = [
            ("backlog", Some(sd.opts.backlog), "somaxconn"),
            ("receive_buffer", sd.opts.receive_buffer, "rmem_max"),
            ("send_buffer", sd.opts.send_buffer, "wmem_max"),
        ];
        for (key, value, sysctl) in caps {
            let (Some(v), Some(span), Some(cap)) = (value, span(key), read(sysctl)) else {
                continue;
            };
            if u64::from(v) > cap {
                let m = format!(
                    "\"{key}\" = {v} is above net.core.{sysctl} ({cap}): the kernel caps it at {cap}"
                );
                self.warning(span, ctx, m);
            }
        }
    }
}

impl Checker<'_> {
    /// No Unix socket in two services (the IP addresses are compared by
    /// `cross_check`): `entries` is every (service, address, where) in
    /// file order.
    pub(super) fn unix_cross_check<'a>(
        &mut self,
        entries: impl Iterator<Item = (&'a str, &'a ListenAddr, &'a Range<usize>)>,
    ) {
        let mut seen: Vec<(&ListenAddr, &str)> = Vec::new();
        for (name, addr, span) in entries.filter(|(_, a, _)| a.is_unix()) {
            if let Some((_, other)) = seen.iter().find(|(a, _)| *a == addr) {
                let ctx = format!("service \"{name}\"");
                let m = format!("listen address \"{addr}\" is already used by service \"{other}\"");
                self.problem(span.clone(), &ctx, m);
            }
            seen.push((addr, name));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config;
    use crate::config::tests::NotRoot;
    use crate::plan::Service;

    /// One service whose lines from line 4 on are `rest`, checked on this
    /// system; the first line of the error when it is refused.
    fn parse_service(rest: &str) -> Result<std::sync::Arc<Service>, String> {
        let text = format!("[[service]]\nname = \"s\"\nprogram = \"/bin/sh\"\n{rest}\n");
        config::parse(Path::new("t.toml"), &text, &config::RealSystem)
            .map(|mut p| p.services.remove(0))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn every_key_reaches_the_plan() {
        let s = parse_service(
            "listen = [\"127.0.0.1:7\"]\nbacklog = 10\nkeepalive_idle = \"1m\"\nkeepalive_count = 3\nnodelay = true\ndefer_accept = \"5s\"\nreuse_port = true\nfree_bind = true\nbind_device = \"lo\"\nreceive_buffer = \"64K\"\nsend_buffer = 1000\n",
        )
        .expect("valid");
        let o = &s.sockopts;
        assert_eq!(o.backlog, 10);
        let ka = o.keepalive.expect("implied");
        assert_eq!((ka.idle, ka.interval, ka.count), (Some(60), None, Some(3)));
        assert!(o.nodelay && o.reuse_port && o.free_bind);
        assert_eq!(o.defer_accept, 5);
        assert_eq!(o.bind_device.as_deref(), Some("lo"));
        assert_eq!((o.receive_buffer, o.send_buffer), (Some(65536), Some(1000)));
        let plain = parse_service("listen = [\"127.0.0.1:7\"]").expect("valid");
        assert_eq!(plain.sockopts, crate::plan::SockOpts::default());
        assert_eq!(plain.sockopts.backlog, 4096);
    }

    #[test]
    fn unix_services_take_file_keys_and_refuse_tcp_ones() {
        let s = parse_service(
            "listen = [\"unix:/run/tux-x.sock\"]\nsocket_mode = \"0660\"\nsocket_group = \"root\"\nbacklog = 5\nsend_buffer = \"1M\"\n",
        )
        .expect("valid");
        assert_eq!(s.sockopts.socket_mode, Some(0o660));
        assert_eq!(s.sockopts.socket_group, Some(("root".to_string(), 0)));
        assert!(s.is_unix());
        for bad in [
            "keepalive = true",
            "nodelay = false",
            "allow = [\"127.0.0.1\"]",
            "deny = []",
        ] {
            let e = parse_service(&format!("listen = [\"unix:/run/tux-x.sock\"]\n{bad}\n"))
                .unwrap_err();
            assert!(e.contains(":5:"), "{bad}: {e}");
        }
        let e = parse_service("listen = [\"unix:@tux\"]\nsocket_mode = \"0600\"\n").unwrap_err();
        assert!(e.contains(":5:") && e.contains("unix:/PATH"), "{e}");
        let e = parse_service("listen = [\"127.0.0.1:7\"]\nsocket_group = \"root\"\n").unwrap_err();
        assert!(e.contains(":5:") && e.contains("socket_group"), "{e}");
        let e =
            parse_service("listen = [\"unix:/run/tux-x.sock\", \"127.0.0.1:7\"]\n").unwrap_err();
        assert!(e.contains(":4:") && e.contains("not both"), "{e}");
    }

    #[test]
    fn only_a_root_daemon_gives_its_socket_file_another_owner() {
        use config::System as _;
        let text = "[[service]]\nname = \"s\"\nprogram = \"/bin/sh\"\nlisten = [\"unix:/run/tux-o.sock\"]\nsocket_user = \"root\"\n";
        let e = config::parse(Path::new("t.toml"), text, &NotRoot).unwrap_err();
        assert!(e.to_string().contains("t.toml:5:15: service \"s\": \"socket_user\" = \"root\": only a daemon running as root"), "{e}");
        if config::RealSystem.identity().0 == 0 {
            let s = parse_service("listen = [\"unix:/run/tux-o.sock\"]\nsocket_user = \"root\"")
                .expect("root may");
            assert_eq!(s.sockopts.socket_user, Some(("root".to_string(), 0)));
        }
    }

    #[test]
    fn values_out_of_range_are_refused() {
        for bad in [
            "receive_buffer = 0",
            "send_buffer = \"infinity\"",
            "receive_buffer = \"2G\"",
            "keepalive_idle = \"0s\"",
            "keepalive_interval = \"1500ms\"",
            "keepalive_idle = \"32768s\"",
            "keepalive_count = 128",
            "defer_accept = \"-1s\"",
            "backlog = 0",
            "bind_device = \"tux/../lo\"",
            "bind_device = \"tuxnodevice0\"",
            "keepalive = false\nkeepalive_count = 3",
        ] {
            let e = parse_service(&format!("listen = [\"127.0.0.1:7\"]\n{bad}\n")).unwrap_err();
            assert!(e.contains(":5:") || e.contains(":6:"), "{bad}: {e}");
        }
    }
}
