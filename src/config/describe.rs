//! The `--check` report: one line per service, then a summary line.

use std::fmt::Write as _;

use crate::plan::{Plan, Service};

/// The `--check` report for a valid plan.
pub fn describe(plan: &Plan) -> String {
    let mut out = String::new();
    for s in &plan.services {
        service(&mut out, s);
        // A service of a drop-in says which; the main file's lines stay
        // as they were.
        if let Some(file) = plan.origin.get(&s.name) {
            let _ = write!(
                out,
                " file={}",
                crate::text::escape(&file.to_string_lossy())
            );
        }
        out.push('\n');
    }
    let enabled = plan.enabled().count();
    let n = plan.services.len();
    let control = match plan.daemon.control_socket.path() {
        Some(p) => crate::text::escape(&p.to_string_lossy()),
        None => "off".into(),
    };
    let _ = writeln!(
        out,
        "{}: OK, {n} service{} ({enabled} enabled), control_socket={control} control_group={}",
        plan.path.display(),
        if n == 1 { "" } else { "s" },
        crate::text::escape(&plan.daemon.control_group.name),
    );
    out
}

/// One service's `--check` line (without the drop-in's `file=`): the
/// reload compares them to tell a changed service from a kept one.
pub fn describe_service(s: &Service) -> String {
    let mut out = String::new();
    service(&mut out, s);
    out
}

fn service(out: &mut String, s: &Service) {
    let suffix = s.protocol.suffix();
    let listen: Vec<String> = s.listen.iter().map(|l| format!("{l}{suffix}")).collect();
    let _ = write!(
        out,
        "{} listen={} program={}",
        s.name,
        listen.join(","),
        s.image.path.to_string_lossy()
    );
    if s.image.argv.len() > 1 {
        let args: Vec<String> = s.image.argv[1..]
            .iter()
            .map(|a| crate::text::escape(&a.to_string_lossy()))
            .collect();
        let _ = write!(out, " args=[{}]", args.join(" "));
    }
    match &s.cred {
        Some(c) => {
            let _ = write!(out, " user={} group={}", c.user, c.group);
        }
        None => out.push_str(" user=(daemon's own) group=(daemon's own)"),
    }
    let l = &s.limits;
    let none = || "none".to_string();
    let _ = write!(
        out,
        " max_instances={} max_per_source={} source_prefix=/{},/{} max_rate={} timeout={}",
        l.max_instances,
        l.max_per_source.map_or_else(none, |n| n.to_string()),
        l.source_prefix_v4,
        l.source_prefix_v6,
        l.max_rate.map_or_else(none, |n| format!("{n}/s")),
        l.timeout
            .map_or_else(none, |t| humantime::format_duration(t).to_string()),
    );
    let nets = |v: &[ipnet::IpNet]| {
        if v.is_empty() {
            None
        } else {
            Some(
                v.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            )
        }
    };
    let _ = write!(
        out,
        " allow={} deny={} umask={:03o} {}",
        nets(&s.access.allow).unwrap_or_else(|| "any".into()),
        nets(&s.access.deny).unwrap_or_else(none),
        s.image.umask,
        if s.enabled { "enabled" } else { "disabled" }
    );
    hardening(out, &s.image.hardening);
    let _ = write!(out, " stderr={}", s.stderr.as_str());
    sockopts(out, &s.sockopts);
    // After every older field, and only when not the default, so that
    // the lines of TCP services stay as they were.
    if s.protocol != crate::plan::Protocol::Tcp {
        let _ = write!(out, " protocol={}", s.protocol.as_str());
    }
    if s.wait {
        out.push_str(" wait=true");
    }
    if let Some(p) = &s.proxy {
        let _ = write!(
            out,
            " proxy_protocol={} trusted_proxies={} proxy_timeout={}",
            p.version.as_str(),
            nets(&p.trusted).unwrap_or_default(),
            humantime::format_duration(p.timeout)
        );
    }
}

/// The socket keys (SPEC §10.3, §10.4), after every older field, each only
/// when it is not its default (so a line without them reads as before).
fn sockopts(out: &mut String, o: &crate::plan::SockOpts) {
    if o.backlog != crate::plan::DEFAULT_BACKLOG {
        let _ = write!(out, " backlog={}", o.backlog);
    }
    if let Some(k) = o.keepalive {
        let times: Vec<String> = [
            ("idle", k.idle, "s"),
            ("interval", k.interval, "s"),
            ("count", k.count, ""),
        ]
        .iter()
        .filter_map(|(name, v, unit)| v.map(|v| format!("{name}:{v}{unit}")))
        .collect();
        let shown = if times.is_empty() {
            "on".to_string()
        } else {
            times.join(",")
        };
        let _ = write!(out, " keepalive={shown}");
    }
    let flags = [
        ("nodelay", o.nodelay),
        ("reuse_port", o.reuse_port),
        ("free_bind", o.free_bind),
    ];
    for (key, on) in flags {
        if on {
            let _ = write!(out, " {key}=true");
        }
    }
    if o.defer_accept > 0 {
        let _ = write!(out, " defer_accept={}s", o.defer_accept);
    }
    let texts = [
        ("bind_device", o.bind_device.clone()),
        ("receive_buffer", o.receive_buffer.map(|n| n.to_string())),
        ("send_buffer", o.send_buffer.map(|n| n.to_string())),
        ("socket_mode", o.socket_mode.map(|m| format!("{m:04o}"))),
        (
            "socket_user",
            o.socket_user.as_ref().map(|(n, _)| n.clone()),
        ),
        (
            "socket_group",
            o.socket_group.as_ref().map(|(n, _)| n.clone()),
        ),
    ];
    for (key, v) in texts {
        if let Some(v) = v {
            let _ = write!(out, " {key}={}", crate::text::escape(&v));
        }
    }
}

/// The hardening keys, after every older field (which stay as they were,
/// for scripts that read the line): `nice` when set, `no_new_privs`, and
/// each limit set (`rlimit_core=0` by default).
fn hardening(out: &mut String, h: &crate::plan::Hardening) {
    if let Some(n) = h.nice {
        let _ = write!(out, " nice={n}");
    }
    let _ = write!(out, " no_new_privs={}", h.no_new_privs);
    for r in &h.rlimits {
        let _ = match (r.value, r.resource) {
            (u64::MAX, _) => write!(out, " {}=infinity", r.resource.key()),
            (v, crate::plan::Resource::Cpu) => write!(out, " {}={v}s", r.resource.key()),
            (v, _) => write!(out, " {}={v}", r.resource.key()),
        };
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config;

    fn plan_of(services: usize) -> Plan {
        let mut text = String::new();
        for i in 0..services {
            text.push_str(&format!(
                "[[service]]\nname = \"s{i}\"\nlisten = [\"127.0.0.1:{}\"]\nprogram = \"/bin/sh\"\n",
                9000 + i
            ));
        }
        config::parse(Path::new("t.toml"), &text, &config::RealSystem).expect("valid")
    }

    #[test]
    fn the_hardening_keys_are_appended() {
        let line = |extra: &str| {
            let text = format!("[[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:9000\"]\nprogram = \"/bin/sh\"\n{extra}\n");
            let plan =
                config::parse(Path::new("t.toml"), &text, &config::RealSystem).expect("valid");
            describe(&plan)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        };
        assert!(
            line("").ends_with(" umask=022 enabled no_new_privs=true rlimit_core=0 stderr=socket"),
            "{}",
            line("")
        );
        let all = line("nice = -3\nno_new_privs = false\nrlimit_nofile = 64\nrlimit_as = \"infinity\"\nrlimit_cpu = \"90s\"");
        assert!(
            all.ends_with(" enabled nice=-3 no_new_privs=false rlimit_nofile=64 rlimit_core=0 rlimit_as=infinity rlimit_cpu=90s stderr=socket"),
            "{all}"
        );
    }

    #[test]
    fn the_proxy_keys_come_last_when_set() {
        let text = "[[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:9000\"]\nprogram = \"/bin/sh\"\nproxy_protocol = \"v2\"\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n";
        let plan = config::parse(Path::new("t.toml"), text, &config::RealSystem).expect("valid");
        let out = describe(&plan);
        assert!(
            out.lines().next().unwrap_or_default().ends_with(
                " stderr=socket proxy_protocol=v2 trusted_proxies=10.0.0.0/8,::1/128 proxy_timeout=5s"
            ),
            "{out}"
        );
        assert!(!describe(&plan_of(1)).contains("proxy"));
    }

    #[test]
    fn the_check_summary_counts_in_words() {
        let last = |n| describe(&plan_of(n)).lines().last().map(String::from);
        let tail = if nix::unistd::geteuid().is_root() {
            "control_socket=/run/tinyinetd/control.sock control_group=root"
        } else {
            "control_socket="
        };
        let one = last(1).unwrap_or_default();
        assert!(
            one.starts_with("t.toml: OK, 1 service (1 enabled), ") && one.contains(tail),
            "{one}"
        );
        let two = last(2).unwrap_or_default();
        assert!(
            two.starts_with("t.toml: OK, 2 services (2 enabled), "),
            "{two}"
        );
        assert_eq!(
            describe(&Plan {
                path: "t.toml".into(),
                ..Plan::default()
            }),
            "t.toml: OK, 0 services (0 enabled), control_socket=off control_group=root\n"
        );
    }
}
