//! inetd.conf(5), as OpenBSD's and GNU inetutils' inetd read it: one
//! service a line, `service socket-type protocol wait/nowait[.max]
//! user[:group] program argv...`, where `service` may be `[addr:]port` or
//! a name from `/etc/services`. A line `addr:` alone sets the address of
//! the lines after it (OpenBSD). An entry commented out by update-inetd
//! (`#<off>#`) or by hand (`#` right before an entry) is an entry too: it
//! is mapped with `enabled = false`.

use super::{
    internal, listen_for, no_handler, Entry, Mapped, Outcome, Ports, UDP_NOWAIT, WAIT_MAX,
};
use crate::text::escape;

/// The socket types inetd knows: a `#` line starting with one of them in
/// the second field is an entry commented out, not prose.
const SOCKET_TYPES: &[&str] = &["stream", "dgram", "raw", "rdm", "seqpacket"];

/// Every entry of the inetd.conf `text`, read from `path`.
pub fn parse(path: &str, text: &str, ports: &Ports) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut host: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let (body, disabled) = match line.strip_prefix("#<off>#") {
            Some(rest) => (rest.trim(), true),
            None => match line.strip_prefix('#') {
                Some(rest) if looks_like_entry(rest) => (rest.trim(), true),
                Some(_) => continue,
                None => (line, false),
            },
        };
        let fields: Vec<&str> = body.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        if fields.len() == 1 && fields[0].ends_with(':') && !disabled {
            let h = fields[0].trim_end_matches(':');
            host = (h != "*").then(|| h.to_string());
            continue;
        }
        let outcome = match entry(&fields, host.as_deref(), ports) {
            Ok(mut m) => {
                m.disabled = disabled;
                if disabled {
                    m.notes
                        .push("commented out in the input: enabled = false".into());
                }
                Outcome::Mapped(Box::new(m))
            }
            Err(why) => Outcome::Skipped(why),
        };
        entries.push(Entry {
            origin: format!("{path}:{}", i + 1),
            text: vec![raw.trim_end().to_string()],
            outcome,
        });
    }
    entries
}

/// Whether the text after a `#` is an entry switched off rather than prose.
fn looks_like_entry(rest: &str) -> bool {
    if rest.starts_with(char::is_whitespace) {
        return false;
    }
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.len() >= 6
        && SOCKET_TYPES.contains(&f[1])
        && (f[3].starts_with("wait") || f[3].starts_with("nowait"))
}

/// One entry's fields as a service, or why it cannot be one.
fn entry(f: &[&str], default_host: Option<&str>, ports: &Ports) -> Result<Mapped, String> {
    if f.len() < 6 {
        return Err(format!(
            "{} fields; an entry has at least 6 (service, socket type, protocol, wait/nowait, user, program)",
            f.len()
        ));
    }
    let (service, socket_type, proto, wait, user, program) = (f[0], f[1], f[2], f[3], f[4], f[5]);
    let (host, service) = match service.rsplit_once(':') {
        Some((h, s)) => ((h != "*").then_some(h), s),
        None => (default_host, service),
    };
    if proto.starts_with("rpc/") {
        return Err("RPC services are not served by tinyinetd".into());
    }
    let udp = socket_type == "dgram" && proto.starts_with("udp");
    if !udp && socket_type != "stream" {
        return Err(format!(
            "socket type \"{}\" is not served (tinyinetd serves stream sockets, and dgram over udp)",
            escape(socket_type)
        ));
    }
    let (mode, max) = wait
        .split_once('.')
        .map_or((wait, None), |(w, m)| (w, Some(m)));
    let waits = match mode {
        "nowait" if udp => return Err(format!("{socket_type}/{proto} nowait: {UDP_NOWAIT}")),
        "nowait" => false,
        "wait" => true,
        other => return Err(format!("\"{}\" is neither wait nor nowait", escape(other))),
    };
    let family = match (udp, proto) {
        (false, "tcp" | "tcp4") | (true, "udp" | "udp4") => "tcp",
        (false, "tcp6") | (true, "udp6") => "tcp6",
        (false, "tcp46") | (true, "udp46") => "tcp46",
        (_, other) => return Err(format!("protocol \"{}\" is not served", escape(other))),
    };
    let by = if udp { "udp" } else { "tcp" };
    let port = ports.port(service, by).ok_or_else(|| {
        format!(
            "service \"{}\" is not a port number nor a {by} service in /etc/services",
            escape(service)
        )
    })?;
    let mut m = Mapped {
        name: if service.parse::<u16>().is_ok() {
            format!("port-{service}")
        } else {
            service.to_string()
        },
        listen: listen_for(host, port, family)?,
        protocol: udp.then_some("udp"),
        wait: waits,
        ..Mapped::default()
    };
    match max {
        Some(_) if waits => m
            .notes
            .push(format!("{wait}: {WAIT_MAX}", wait = escape(wait))),
        Some(max) => rate(&mut m, max)?,
        None => {}
    }
    let (u, g) = match user.split_once([':', '.']) {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    m.user = Some(u.to_string());
    m.group = g.map(String::from);
    if program == "internal" {
        if udp || waits {
            return Err(no_handler(service, udp));
        }
        internal(service, &mut m)?;
        return Ok(m);
    }
    server(&mut m, program, &f[6..]);
    Ok(m)
}

/// `nowait.max`: at most `max` starts a minute in inetd; tinyinetd counts
/// a second.
fn rate(m: &mut Mapped, max: &str) -> Result<(), String> {
    let n: usize = max
        .parse()
        .map_err(|_| format!("nowait.{}: the maximum is not a number", escape(max)))?;
    if n == 0 {
        return Ok(());
    }
    let per_second = n.div_ceil(60).min(1_000_000);
    m.max_rate = Some(per_second);
    m.notes.push(format!(
        "nowait.{n} allowed {n} starts a minute; max_rate is per second (and pauses instead of refusing)"
    ));
    Ok(())
}

/// The program and its arguments; a `tcpd` wrapper is unwrapped.
fn server(m: &mut Mapped, program: &str, argv: &[&str]) {
    let mut program = program.to_string();
    let mut argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    if program.rsplit('/').next() == Some("tcpd") && !argv.is_empty() {
        // tcpd runs its argv[0], a bare name from its REAL_DAEMON_DIR
        // (/usr/sbin on Debian) or a path.
        let real = argv[0].clone();
        program = if real.starts_with('/') {
            real.clone()
        } else {
            format!("/usr/sbin/{real}")
        };
        argv[0] = real.rsplit('/').next().unwrap_or(&real).to_string();
        m.notes.push(
            "tcpd unwrapped: the tcpwrappers rules (/etc/hosts.allow, /etc/hosts.deny) are not read; write them as allow and deny".into(),
        );
    }
    let base = program.rsplit('/').next().unwrap_or(&program).to_string();
    match argv.split_first() {
        Some((zero, rest)) => {
            if *zero != base {
                m.notes.push(format!(
                    "argv[0] \"{}\" becomes \"{base}\": tinyinetd passes the program's file name",
                    escape(zero)
                ));
            }
            m.args = rest.to_vec();
        }
        None => m.args = Vec::new(),
    }
    m.program = program;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports() -> Ports {
        Ports::parse("echo 7/tcp\nfinger 79/tcp\ntelnet 23/tcp\ndaytime 13/tcp\nchargen 19/tcp\necho 7/udp\ntftp 69/udp\n")
    }

    fn one(line: &str) -> Outcome {
        let mut e = parse("t", line, &ports());
        assert_eq!(e.len(), 1, "{line}");
        e.remove(0).outcome
    }

    fn mapped(line: &str) -> Mapped {
        match one(line) {
            Outcome::Mapped(m) => *m,
            Outcome::Skipped(why) => panic!("{line}: {why}"),
        }
    }

    fn skipped(line: &str) -> String {
        match one(line) {
            Outcome::Skipped(why) => why,
            Outcome::Mapped(m) => panic!("{line} mapped: {m:?}"),
        }
    }

    #[test]
    fn fields_map_to_keys() {
        let m = mapped(
            "127.0.0.1:finger stream tcp nowait.120 nobody:nogroup /usr/sbin/tcpd in.fingerd -w",
        );
        assert_eq!(m.listen, ["127.0.0.1:79"]);
        assert_eq!(m.program, "/usr/sbin/in.fingerd");
        assert_eq!(m.args, ["-w"]);
        assert_eq!(
            (m.user.as_deref(), m.group.as_deref()),
            (Some("nobody"), Some("nogroup"))
        );
        assert_eq!(m.max_rate, Some(2));
        assert!(m.notes.iter().any(|n| n.contains("tcpwrappers rules")));
        assert_eq!(
            mapped("2323 stream tcp6 nowait root.wheel /bin/login login").listen,
            ["[::]:2323"]
        );
        assert_eq!(
            mapped("telnet stream tcp46 nowait root /bin/login login").listen,
            ["23"]
        );
        assert_eq!(
            mapped("[::1]:echo stream tcp6 nowait root internal").program,
            "tinyinetd-echo"
        );
    }

    #[test]
    fn what_cannot_map_says_why() {
        assert!(
            skipped("echo dgram udp wait root internal").contains("no tinyinetd handler over UDP")
        );
        assert!(skipped("echo stream tcp wait root internal").contains("in wait mode"));
        assert!(
            skipped("tftp dgram udp nowait root /usr/sbin/in.tftpd in.tftpd")
                .contains("a UDP service is a wait service")
        );
        assert!(
            skipped("tftp stream tcp wait root /usr/sbin/in.tftpd in.tftpd")
                .contains("nor a tcp service in /etc/services")
        );
        assert!(skipped("chargen stream tcp nowait root internal").contains("no tinyinetd handler"));
        assert!(skipped("nosuch stream tcp nowait root /bin/x x").contains("/etc/services"));
        assert!(skipped("echo stream tcp nowait root").contains("5 fields"));
        assert!(skipped("rstatd/1-3 dgram rpc/udp wait root /x x").contains("RPC"));
        assert!(skipped("host.example:echo stream tcp nowait root internal").contains("host name"));
    }

    #[test]
    fn wait_and_udp_entries_map_to_protocol_and_wait() {
        let m = mapped("tftp dgram udp wait root /usr/sbin/in.tftpd in.tftpd -s /srv/tftp");
        assert_eq!((m.protocol, m.wait), (Some("udp"), true));
        assert_eq!(m.listen, ["0.0.0.0:69"]);
        assert_eq!(
            (m.program.as_str(), m.args.as_slice()),
            (
                "/usr/sbin/in.tftpd",
                &["-s".to_string(), "/srv/tftp".to_string()][..]
            )
        );
        assert_eq!(m.user.as_deref(), Some("root"));
        let m = mapped("tftp dgram udp46 wait.100 root /usr/sbin/in.tftpd in.tftpd");
        assert_eq!(
            (m.listen.as_slice(), m.max_rate),
            (&["69".to_string()][..], None)
        );
        assert!(
            m.notes.iter().any(|n| n.contains("wait.100")),
            "{:?}",
            m.notes
        );
        let m = mapped("7000 stream tcp wait nobody /usr/local/bin/acceptor acceptor");
        assert_eq!((m.protocol, m.wait), (None, true));
        assert_eq!(m.listen, ["0.0.0.0:7000"]);
    }

    #[test]
    fn a_udp_and_a_tcp_entry_on_one_port_both_map() {
        let text = "7000 stream tcp nowait nobody /bin/cat cat\n7000 dgram udp wait nobody /bin/cat cat\n7000 dgram udp wait nobody /bin/cat cat\n";
        let r = crate::import::render(parse("t", text, &ports()), "t");
        assert!(
            r.toml.contains("listen = [\"0.0.0.0:7000\"]\nprotocol = \"udp\"\nwait = true\nprogram = \"/bin/cat\"\n"),
            "{}",
            r.toml
        );
        assert!(
            r.toml.contains("# t:3: not mapped: listen address \"0.0.0.0:7000\" is already used by service \"port-7000-2\" above"),
            "{}",
            r.toml
        );
    }

    #[test]
    fn commented_entries_are_disabled_and_prose_is_not_an_entry() {
        let text = "# <service_name> <sock_type> <proto> <flags> <user> <server_path> <args>\n#echo\t\tstream\ttcp\tnowait\troot\tinternal\n#<off># daytime stream tcp nowait root internal\n#:OTHER: Other services\n";
        let e = parse("t", text, &ports());
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].origin, "t:2");
        assert!(
            matches!(&e[1].outcome, Outcome::Mapped(m) if m.disabled && m.program == "tinyinetd-daytime")
        );
    }

    #[test]
    fn a_host_line_sets_the_address_of_the_lines_after_it() {
        let e = parse("t", "127.0.0.2:\necho stream tcp nowait root internal\n*:\ndaytime stream tcp nowait root internal\n", &ports());
        let listen: Vec<Vec<String>> = e
            .iter()
            .map(|e| match &e.outcome {
                Outcome::Mapped(m) => m.listen.clone(),
                Outcome::Skipped(w) => panic!("{w}"),
            })
            .collect();
        assert_eq!(
            listen,
            [
                vec!["127.0.0.2:7".to_string()],
                vec!["0.0.0.0:13".to_string()]
            ]
        );
    }
}
