//! `protocol` and `wait` (SPEC §10.5): the two keys, what a wait or UDP
//! service may not have, and the variables its handler gets instead of a
//! client's.
//!
//! A wait service hands its socket to one handler, which serves whoever
//! comes until it exits; the daemon never sees those clients. So nothing
//! that judges or counts clients one by one applies (`allow`, `deny`,
//! `max_per_source`, `max_rate`): each is refused rather than silently
//! ignored. `max_instances` is one by nature (one handler per socket);
//! any other value is refused.

use std::ffi::CString;
use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::check::{esc, Checker, Value};
use super::sockopt::SockDraft;
use crate::plan::{ExecImage, Limits, ListenAddr, Protocol};

/// A key's value with where it was written (`None`: not written, the
/// default).
pub(super) type Written<T> = (T, Option<Range<usize>>);

/// The keys that judge or count clients one by one: meaningless for a
/// wait service, whose clients the daemon never sees.
/// (A PROXY header comes with each connection: none for the daemon to read.)
const NOT_FOR_WAIT: &[&str] = &[
    "allow",
    "deny",
    "max_per_source",
    "max_rate",
    "proxy_protocol",
    "trusted_proxies",
    "proxy_timeout",
];

/// The socket keys that only a TCP listener has: an error on a UDP
/// service (its socket does not listen or accept).
const TCP_ONLY: &[&str] = &[
    "backlog",
    "keepalive",
    "keepalive_idle",
    "keepalive_interval",
    "keepalive_count",
    "nodelay",
    "defer_accept",
];

/// The variables of the systemd convention, set by the daemon for a wait
/// handler (`LISTEN_PID` per handler, the others at load).
const LISTEN_VARS: &[&str] = &["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"];

impl Checker<'_> {
    /// `protocol = "tcp" | "udp"`, with where it was written.
    pub(super) fn protocol(&mut self, value: &Value<'_>, ctx: &str) -> Option<Written<Protocol>> {
        let s = self.string(value, ctx, "protocol")?;
        match s {
            "tcp" => Some((Protocol::Tcp, Some(value.span()))),
            "udp" => Some((Protocol::Udp, Some(value.span()))),
            _ => {
                let m = format!(
                    "\"protocol\" must be \"tcp\" or \"udp\", not \"{}\"",
                    esc(s)
                );
                self.problem(value.span(), ctx, m);
                None
            }
        }
    }

    /// `wait = true | false`, with where it was written.
    pub(super) fn wait(&mut self, value: &Value<'_>, ctx: &str) -> Option<Written<bool>> {
        match value.get_ref() {
            DeValue::Boolean(b) => Some((*b, Some(value.span()))),
            other => {
                let m = format!("\"wait\" must be true or false, not {}", other.type_str());
                self.problem(value.span(), ctx, m);
                None
            }
        }
    }

    /// Once every key of the table `t` is read (`protocol` and `wait` as
    /// [`protocol`](Self::protocol) and [`wait`](Self::wait) gave them): a
    /// UDP service must wait, and a wait service has none of the
    /// per-client keys, `max_instances` 1 (set in `limits`), and no
    /// `LISTEN_*` of its own in `env`.
    pub(super) fn wait_mode(
        &mut self,
        t: &DeTable<'_>,
        ctx: &str,
        (protocol, wait): (&Written<Protocol>, &Written<bool>),
        limits: &mut Limits,
    ) {
        if let (Protocol::Udp, Some(pspan)) = protocol {
            if !wait.0 {
                let span = wait.1.clone().unwrap_or(pspan.clone());
                self.problem(
                    span,
                    ctx,
                    "a UDP service needs \"wait = true\": its socket is handed to one handler (inetd's \"dgram udp wait\"), there are no connections to accept",
                );
            }
        }
        if !wait.0 {
            return;
        }
        limits.max_instances = 1;
        for (key, value) in t.iter() {
            let k = key.get_ref().as_ref();
            if NOT_FOR_WAIT.contains(&k) {
                self.problem(
                    key.span(),
                    ctx,
                    format!("\"{k}\" cannot be used with \"wait = true\": the handler serves the socket itself, and the daemon never sees its clients"),
                );
            } else if k == "max_instances" && !is_one(value) {
                self.problem(
                    value.span(),
                    ctx,
                    "\"max_instances\" of a wait service can only be 1: each socket is handed to one handler at a time",
                );
            } else if k == "env" {
                self.listen_vars(value, ctx);
            }
        }
    }

    /// `protocol` and `wait` against the kind of address and the socket
    /// keys: a Unix service is a stream service that accepts (no UDP, no
    /// wait mode), and a UDP socket takes no TCP option.
    pub(super) fn wait_fit(
        &mut self,
        ctx: &str,
        (protocol, wait): (&Written<Protocol>, &Written<bool>),
        listen: &[(ListenAddr, Range<usize>)],
        sock: &SockDraft,
    ) {
        if listen.iter().any(|(a, _)| a.is_unix()) {
            if let (Protocol::Udp, Some(span)) = protocol {
                self.problem(
                    span.clone(),
                    ctx,
                    "\"protocol\" is for IP addresses: a Unix service is a stream service (Unix datagram sockets are not supported)",
                );
            } else if let (true, Some(span)) = wait {
                self.problem(
                    span.clone(),
                    ctx,
                    "\"wait = true\" is not supported on a Unix socket: tinyinetd accepts Unix connections itself",
                );
            }
            return;
        }
        if protocol.0 != Protocol::Udp {
            return;
        }
        let misplaced: Vec<(String, Range<usize>)> = sock
            .seen()
            .filter(|(k, _)| TCP_ONLY.contains(&k.as_str()))
            .cloned()
            .collect();
        for (k, span) in misplaced {
            self.problem(
                span,
                ctx,
                format!("\"{k}\" is a TCP option and does not apply to a UDP socket"),
            );
        }
    }

    /// `env` redefining a variable the daemon sets for a wait handler.
    fn listen_vars(&mut self, env: &Value<'_>, ctx: &str) {
        let DeValue::Table(vars) = env.get_ref() else {
            return; // reported by the `env` check
        };
        let spans: Vec<(String, Range<usize>)> = vars
            .iter()
            .map(|(k, _)| (k.get_ref().to_string(), k.span()))
            .filter(|(k, _)| LISTEN_VARS.contains(&k.as_str()))
            .collect();
        for (var, span) in spans {
            self.problem(
                span,
                ctx,
                format!("env: \"{var}\" is set by tinyinetd for a wait service's handler and cannot be redefined"),
            );
        }
    }
}

/// Whether a `max_instances` value is the integer 1 (any other type or
/// value is reported by the limit check or by [`Checker::wait_mode`]).
fn is_one(value: &Value<'_>) -> bool {
    match value.get_ref() {
        DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix()) == Ok(1),
        _ => true,
    }
}

/// The handler's fixed variables for its kind of socket: `PROTO=` `proto`
/// (`UDP` for a UDP service, `UNIX` for a Unix one), and for a wait service `LISTEN_FDS=1` and
/// `LISTEN_FDNAMES=<name>` (systemd's `Accept=no`; `LISTEN_PID` is only
/// known once the handler exists, and the child writes it: see
/// `spawn::child`). `exec_image` wrote `PROTO=TCP`, which `env` cannot
/// redefine, so it is there to replace. `None` only for a name with a NUL,
/// which the name check has refused already.
pub(super) fn handover_env(
    image: &mut ExecImage,
    name: &str,
    proto: &str,
    wait: bool,
) -> Option<()> {
    let proto = CString::new(format!("PROTO={proto}")).ok()?;
    for var in &mut image.env {
        if var.as_bytes().starts_with(b"PROTO=") {
            *var = proto.clone();
        }
    }
    if wait {
        image.env.push(CString::new("LISTEN_FDS=1").ok()?);
        image
            .env
            .push(CString::new(format!("LISTEN_FDNAMES={name}")).ok()?);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config;
    use crate::plan::{Endpoint, Protocol};

    fn service(extra: &str) -> String {
        format!("[[service]]\nname = \"w\"\nlisten = [\"127.0.0.1:69\"]\nprogram = \"/bin/sh\"\n{extra}")
    }

    fn parse(text: &str) -> Result<crate::plan::Plan, String> {
        config::parse(Path::new("t.toml"), text, &config::RealSystem).map_err(|e| e.to_string())
    }

    #[test]
    fn udp_takes_no_tcp_option_and_a_unix_service_neither_udp_nor_wait() {
        for key in [
            "backlog = 16",
            "keepalive = true",
            "nodelay = true",
            "defer_accept = \"2s\"",
        ] {
            let e = parse(&service(&format!(
                "protocol = \"udp\"\nwait = true\n{key}\n"
            )))
            .unwrap_err();
            assert!(
                e.contains(":7:") && e.contains("does not apply to a UDP socket"),
                "{key}: {e}"
            );
        }
        let ok = service("protocol = \"udp\"\nwait = true\nreceive_buffer = \"1M\"\n");
        assert!(parse(&ok).is_ok(), "buffers apply to UDP");
        let unix = |extra: &str| {
            parse(&format!("[[service]]\nname = \"u\"\nlisten = [\"unix:/run/tinyinetd-w.sock\"]\nprogram = \"/bin/sh\"\n{extra}"))
                .unwrap_err()
        };
        let e = unix("protocol = \"udp\"\nwait = true\n");
        assert!(
            e.contains(":5:") && e.contains("Unix datagram sockets are not supported"),
            "{e}"
        );
        let e = unix("wait = true\n");
        assert!(
            e.contains(":5:") && e.contains("not supported on a Unix socket"),
            "{e}"
        );
        let proxy = "proxy_protocol = \"v2\"\ntrusted_proxies = [\"127.0.0.1\"]\n";
        let e = unix(proxy);
        assert!(
            e.contains(":5:") && e.contains("does not apply to a Unix socket"),
            "{e}"
        );
        let e = parse(&service(&format!(
            "protocol = \"udp\"\nwait = true\n{proxy}"
        )))
        .unwrap_err();
        assert!(
            e.contains(":7:") && e.contains("cannot be used with \"wait = true\""),
            "{e}"
        );
    }

    #[test]
    fn a_udp_wait_service_is_planned_with_its_endpoints_and_variables() {
        let plan = parse(&service("protocol = \"udp\"\nwait = true\n")).expect("valid");
        let s = &plan.services[0];
        assert_eq!((s.protocol, s.wait), (Protocol::Udp, true));
        assert_eq!(s.limits.max_instances, 1);
        let ends: Vec<Endpoint> = s.endpoints().map(|(e, _)| e).collect();
        assert_eq!(ends, [Endpoint::Udp("127.0.0.1:69".parse().unwrap())]);
        assert_eq!(ends[0].to_string(), "127.0.0.1:69/udp");
        let env: Vec<String> = s
            .image
            .env
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        assert!(env.contains(&"PROTO=UDP".to_string()), "{env:?}");
        assert!(!env.contains(&"PROTO=TCP".to_string()), "{env:?}");
        assert!(env.contains(&"LISTEN_FDS=1".to_string()), "{env:?}");
        assert!(env.contains(&"LISTEN_FDNAMES=w".to_string()), "{env:?}");
    }

    #[test]
    fn the_defaults_are_tcp_without_wait() {
        let plan = parse(&service("")).expect("valid");
        let s = &plan.services[0];
        assert_eq!((s.protocol, s.wait), (Protocol::Tcp, false));
        assert!(!s
            .image
            .env
            .iter()
            .any(|v| v.to_bytes().starts_with(b"LISTEN_")));
        let plan = parse(&service("wait = true\n")).expect("a TCP wait service");
        let s = &plan.services[0];
        assert_eq!((s.protocol, s.wait), (Protocol::Tcp, true));
        assert!(s.image.env.iter().any(|v| v.to_bytes() == b"PROTO=TCP"));
    }

    #[test]
    fn udp_without_wait_is_refused_where_it_is_written() {
        assert_eq!(
            parse(&service("protocol = \"udp\"\nwait = false\n")).unwrap_err(),
            "t.toml:6:8: service \"w\": a UDP service needs \"wait = true\": its socket is handed to one handler (inetd's \"dgram udp wait\"), there are no connections to accept"
        );
        let e = parse(&service("protocol = \"udp\"\n")).unwrap_err();
        assert!(
            e.starts_with("t.toml:5:12: service \"w\": a UDP service needs"),
            "{e}"
        );
        let e = parse(&service("protocol = \"sctp\"\nwait = \"yes\"\n")).unwrap_err();
        assert!(
            e.contains(
                "t.toml:5:12: service \"w\": \"protocol\" must be \"tcp\" or \"udp\", not \"sctp\""
            ),
            "{e}"
        );
        assert!(
            e.contains("t.toml:6:8: service \"w\": \"wait\" must be true or false, not string"),
            "{e}"
        );
    }

    #[test]
    fn a_wait_service_refuses_the_per_client_keys() {
        let e = parse(&service(
            "wait = true\nmax_per_source = 2\nallow = [\"127.0.0.1\"]\ndeny = []\nmax_rate = 5\nmax_instances = 2\nenv = { LISTEN_PID = \"1\", OK = \"x\" }\n",
        ))
        .unwrap_err();
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 6, "{e}");
        for (line, key) in [
            (6, "max_per_source"),
            (7, "allow"),
            (8, "deny"),
            (9, "max_rate"),
        ] {
            assert!(
                e.contains(&format!(
                    "t.toml:{line}:1: service \"w\": \"{key}\" cannot be used with \"wait = true\""
                )),
                "{key}: {e}"
            );
        }
        assert!(
            e.contains(
                "t.toml:10:17: service \"w\": \"max_instances\" of a wait service can only be 1"
            ),
            "{e}"
        );
        assert!(
            e.contains("t.toml:11:9: service \"w\": env: \"LISTEN_PID\" is set by tinyinetd"),
            "{e}"
        );
        parse(&service(
            "wait = true\nmax_instances = 1\ntimeout = \"1m\"\n",
        ))
        .expect("max_instances = 1 and a timeout are fine");
        parse(&service(
            "max_per_source = 2\nenv = { LISTEN_PID = \"1\" }\n",
        ))
        .expect("not a wait service: its own business");
    }

    #[test]
    fn udp_and_tcp_on_one_port_do_not_conflict_but_two_udp_do() {
        let two = |p1: &str, p2: &str| {
            format!(
                "[[service]]\nname = \"a\"\nlisten = [\"69\"]\nprogram = \"/bin/sh\"\n{p1}\n[[service]]\nname = \"b\"\nlisten = [\"127.0.0.1:69\"]\nprogram = \"/bin/sh\"\n{p2}\n"
            )
        };
        let udp = "protocol = \"udp\"\nwait = true";
        parse(&two(udp, "")).expect("udp and tcp");
        parse(&two("", udp)).expect("tcp and udp");
        let e = parse(&two(udp, udp)).unwrap_err();
        assert!(
            e.contains("service \"b\": listen address \"127.0.0.1:69\" conflicts with \"69\" of service \"a\""),
            "{e}"
        );
        parse(&two("", "")).expect_err("two tcp");
    }

    #[test]
    fn check_shows_the_protocol_and_wait() {
        let plan = parse(&service("protocol = \"udp\"\nwait = true\n")).expect("valid");
        let line = config::describe(&plan);
        assert!(
            line.starts_with("w listen=127.0.0.1:69/udp program=/bin/sh "),
            "{line}"
        );
        assert!(line.contains(" max_instances=1 "), "{line}");
        assert!(
            line.lines()
                .next()
                .unwrap()
                .ends_with(" stderr=socket protocol=udp wait=true"),
            "{line}"
        );
        let plan = parse(&service("")).expect("valid");
        let line = config::describe(&plan);
        assert!(
            line.lines().next().unwrap().ends_with(" stderr=socket"),
            "{line}"
        );
    }
}
