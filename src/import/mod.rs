//! `tinyinetd import`: an inetd.conf or an xinetd configuration turned into
//! `tinyinetd.toml` text. `inetd` and `xinetd` parse their formats into
//! [`Entry`] values (one per service line or block); this file holds what
//! both share: the service ports from `/etc/services`, the checks that keep
//! the output valid input (`tinyinetd --check` accepts whatever is printed
//! as mapped), and the rendering, where every entry appears: mapped, with a
//! comment naming the file and line it came from, or commented out with
//! the reason.

pub mod inetd;
pub mod xinetd;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use crate::config::{check_env_name, parse_listen, valid_name};
use crate::text::escape;

/// Where services are named by port: `/etc/services`.
pub const SERVICES_PATH: &str = "/etc/services";

/// Why a UDP entry that is not `wait` cannot map.
pub const UDP_NOWAIT: &str = "a UDP service is a wait service in tinyinetd (one handler holds the socket); inetd would start a handler per datagram";

/// What becomes of the `.max` of a `wait.max` entry.
pub const WAIT_MAX: &str = "its maximum of starts a minute has no equivalent for a wait service (which has no max_rate): tinyinetd pauses a wait service whose handlers keep exiting at once instead";

/// The ports of service names, as `/etc/services` lists them.
#[derive(Debug, Default)]
pub struct Ports {
    /// `(name or alias, protocol)` → port.
    by_name: HashMap<(String, String), u16>,
}

impl Ports {
    /// Parses the text of a services(5) file: `name port/proto aliases...`.
    pub fn parse(text: &str) -> Ports {
        let mut by_name = HashMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut fields = line.split_whitespace();
            let (Some(name), Some(spec)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Some((port, proto)) = spec.split_once('/') else {
                continue;
            };
            let Ok(port) = port.parse::<u16>() else {
                continue;
            };
            for n in std::iter::once(name).chain(fields) {
                by_name
                    .entry((n.to_string(), proto.to_string()))
                    .or_insert(port);
            }
        }
        Ports { by_name }
    }

    /// Reads the services file at `path` (a file read, never a lookup).
    pub fn load(path: &Path) -> Result<Ports, String> {
        std::fs::read_to_string(path)
            .map(|t| Ports::parse(&t))
            .map_err(|e| format!("reading {}: {}", path.display(), crate::text::io_reason(&e)))
    }

    /// The port of `service` for `proto` (`tcp`), or a number as written.
    pub fn port(&self, service: &str, proto: &str) -> Option<u16> {
        if let Ok(n) = service.parse::<u16>() {
            return (n > 0).then_some(n);
        }
        self.by_name
            .get(&(service.to_string(), proto.to_string()))
            .copied()
    }
}

/// A service as it will be printed.
#[derive(Debug, Default, Clone)]
pub struct Mapped {
    /// The name as the input has it (made valid and unique when rendered).
    pub name: String,
    /// `listen` entries, as tinyinetd writes them.
    pub listen: Vec<String>,
    /// `protocol`, when not tcp (`Some("udp")`).
    pub protocol: Option<&'static str>,
    /// `wait = true`.
    pub wait: bool,
    /// An absolute path, or a shipped handler's bare name.
    pub program: String,
    /// `argv[1..]`.
    pub args: Vec<String>,
    /// `user`, when the input names one.
    pub user: Option<String>,
    /// `group`, when the input names one.
    pub group: Option<String>,
    /// `env`, in input order.
    pub env: Vec<(String, String)>,
    /// `max_instances`.
    pub max_instances: Option<usize>,
    /// `max_per_source`.
    pub max_per_source: Option<usize>,
    /// `max_rate`.
    pub max_rate: Option<usize>,
    /// `allow`.
    pub allow: Vec<String>,
    /// `deny`.
    pub deny: Vec<String>,
    /// `umask`, octal as written.
    pub umask: Option<String>,
    /// `enabled = false` when the input had the entry switched off.
    pub disabled: bool,
    /// Comments on what was translated and how.
    pub notes: Vec<String>,
    /// What the input says that the output does not: the entry is then
    /// only partly mapped (and the exit status 1).
    pub lost: Vec<String>,
}

/// What became of one entry.
#[derive(Debug)]
pub enum Outcome {
    /// Printed as a `[[service]]`.
    Mapped(Box<Mapped>),
    /// Printed as a comment with this reason.
    Skipped(String),
}

/// One service line or block of the input.
#[derive(Debug)]
pub struct Entry {
    /// `PATH:LINE` of its first line.
    pub origin: String,
    /// Its text, to show when it is commented out.
    pub text: Vec<String>,
    /// Mapped or not, and why.
    pub outcome: Outcome,
}

/// The printed configuration and what happened to each entry.
#[derive(Debug)]
pub struct Report {
    /// The `tinyinetd.toml` text for stdout.
    pub toml: String,
    /// The summary and a line per entry not fully mapped, for stderr.
    pub summary: Vec<String>,
    /// Whether every entry mapped whole (exit 0).
    pub complete: bool,
}

/// Renders the entries: checks first (programs and users that exist here,
/// names and addresses unique), so that what is printed as mapped is valid.
pub fn render(mut entries: Vec<Entry>, title: &str) -> Report {
    let mut toml = format!("# tinyinetd.toml written by `tinyinetd import` from {title}.\n# Review it, then see tinyinetd.toml(5).\n");
    let mut names: Vec<String> = Vec::new();
    let mut sockets: Vec<Bound> = Vec::new();
    let (mut whole, mut partly, mut skipped) = (0, 0, 0);
    let mut lines = Vec::new();
    for e in &mut entries {
        if let Outcome::Mapped(m) = &mut e.outcome {
            if let Err(why) = usable(m, &names, &sockets) {
                e.outcome = Outcome::Skipped(why);
            }
        }
        toml.push('\n');
        match &e.outcome {
            Outcome::Mapped(m) => {
                names.push(m.name.clone());
                for l in &m.listen {
                    for s in parse_listen(l).map(|a| a.sockets()).unwrap_or_default() {
                        sockets.push((s, m.protocol, m.name.clone()));
                    }
                }
                write_mapped(&mut toml, e, m);
                if m.lost.is_empty() {
                    whole += 1;
                } else {
                    partly += 1;
                    lines.push(format!(
                        "{}: service {}: partly mapped: {}",
                        e.origin,
                        m.name,
                        m.lost.join("; ")
                    ));
                }
            }
            Outcome::Skipped(why) => {
                skipped += 1;
                let _ = writeln!(toml, "# {}: not mapped: {why}", e.origin);
                for t in &e.text {
                    let _ = writeln!(toml, "#   {t}");
                }
                lines.push(format!("{}: not mapped: {why}", e.origin));
            }
        }
    }
    let n = entries.len();
    let mut summary = vec![format!(
        "tinyinetd import: {n} entr{} from {title}: {whole} mapped, {partly} partly mapped, {skipped} not mapped",
        if n == 1 { "y" } else { "ies" }
    )];
    summary.extend(lines);
    Report {
        toml,
        summary,
        complete: partly == 0 && skipped == 0,
    }
}

/// Whether `m` can be printed as valid input after the services before it;
/// makes its name valid and unique on the way.
fn usable(m: &mut Mapped, names: &[String], sockets: &[Bound]) -> Result<(), String> {
    let base = service_name(&m.name);
    let mut name = base.clone();
    for i in 2..1000 {
        if !names.contains(&name) {
            break;
        }
        name = format!("{base}-{i}");
    }
    if name != m.name {
        m.notes.push(format!(
            "named \"{name}\" (\"{}\" is not a valid or unused name)",
            escape(&m.name)
        ));
        m.name = name;
    }
    for l in &m.listen {
        let addr = parse_listen(l).map_err(|e| format!("listen \"{l}\": {e}"))?;
        for s in addr.sockets() {
            let taken = |(o, p, _): &&Bound| *p == m.protocol && clash(*o, s);
            if let Some((_, _, other)) = sockets.iter().find(taken) {
                return Err(format!(
                    "listen address \"{l}\" is already used by service \"{other}\" above"
                ));
            }
        }
    }
    if m.program.starts_with('/') {
        match std::fs::metadata(&m.program) {
            Ok(md) if md.is_file() => {}
            _ => {
                return Err(format!(
                    "program {} does not exist on this machine",
                    m.program
                ))
            }
        }
    }
    for (kind, who) in [("user", &m.user), ("group", &m.group)] {
        let Some(who) = who else { continue };
        if who.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let found = if kind == "user" {
            crate::accounts::passwd(who).map(|p| p.is_some_and(|p| &p.name == who))
        } else {
            crate::accounts::group(who).map(|g| g.is_some_and(|g| &g.name == who))
        };
        match found {
            Ok(true) => {}
            Ok(false) => {
                return Err(format!(
                    "{kind} \"{}\" does not exist on this machine",
                    escape(who)
                ))
            }
            Err(e) => return Err(format!("looking up {kind} \"{}\": {e}", escape(who))),
        }
    }
    for (k, _) in &m.env {
        check_env_name(k).map_err(|e| format!("env {}: {e}", escape(k)))?;
    }
    Ok(())
}

/// A valid service name from the input's: lower case, anything else `-`.
fn service_name(s: &str) -> String {
    let mut n: String = s
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if !valid_name(&n) {
        n = "service".into();
    }
    n
}

/// A socket of a service printed above: its address, its `protocol` (a
/// TCP and a UDP socket never collide) and the service's name.
type Bound = (SocketAddr, Option<&'static str>, String);

/// Two sockets that would collide on bind (as `config` checks them).
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// A TOML string.
fn q(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| q(s)).collect();
    format!("[{}]", items.join(", "))
}

fn write_mapped(out: &mut String, e: &Entry, m: &Mapped) {
    let first = e.text.first().map(String::as_str).unwrap_or("");
    let _ = writeln!(out, "# {}: {first}", e.origin);
    for n in &m.notes {
        let _ = writeln!(out, "# note: {n}");
    }
    for l in &m.lost {
        let _ = writeln!(out, "# not mapped: {l}");
    }
    let _ = writeln!(out, "[[service]]\nname = {}", q(&m.name));
    let _ = writeln!(out, "listen = {}", list(&m.listen));
    if let Some(p) = m.protocol {
        let _ = writeln!(out, "protocol = {}", q(p));
    }
    if m.wait {
        out.push_str("wait = true\n");
    }
    let _ = writeln!(out, "program = {}", q(&m.program));
    if !m.args.is_empty() {
        let _ = writeln!(out, "args = {}", list(&m.args));
    }
    for (k, v) in [("user", &m.user), ("group", &m.group)] {
        if let Some(v) = v {
            let _ = writeln!(out, "{k} = {}", q(v));
        }
    }
    if !m.env.is_empty() {
        let kv: Vec<String> = m
            .env
            .iter()
            .map(|(k, v)| format!("{} = {}", q(k), q(v)))
            .collect();
        let _ = writeln!(out, "env = {{ {} }}", kv.join(", "));
    }
    for (k, v) in [
        ("max_instances", m.max_instances),
        ("max_per_source", m.max_per_source),
        ("max_rate", m.max_rate),
    ] {
        if let Some(v) = v {
            let _ = writeln!(out, "{k} = {v}");
        }
    }
    for (k, v) in [("allow", &m.allow), ("deny", &m.deny)] {
        if !v.is_empty() {
            let _ = writeln!(out, "{k} = {}", list(v));
        }
    }
    if let Some(u) = &m.umask {
        let _ = writeln!(out, "umask = {}", q(u));
    }
    if m.disabled {
        out.push_str("enabled = false\n");
    }
}

/// The listen entry for `port` on `host` (`None`: every address) and the
/// families of `proto`: `tcp` IPv4, `tcp6` IPv6, `tcp46` both.
pub fn listen_for(host: Option<&str>, port: u16, proto: &str) -> Result<Vec<String>, String> {
    let v6 = |h: &str| {
        format!(
            "[{}]:{port}",
            h.trim_start_matches('[').trim_end_matches(']')
        )
    };
    Ok(match (host, proto) {
        (None, "tcp") => vec![format!("0.0.0.0:{port}")],
        (None, "tcp6") => vec![format!("[::]:{port}")],
        (None, "tcp46") => vec![port.to_string()],
        (Some(h), _) if h.parse::<std::net::Ipv4Addr>().is_ok() => vec![format!("{h}:{port}")],
        (Some(h), _)
            if h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::Ipv6Addr>()
                .is_ok() =>
        {
            vec![v6(h)]
        }
        (Some(h), _) => {
            return Err(format!(
            "the address \"{}\" is a host name: write the address (host names are not resolved)",
            escape(h)
        ))
        }
        (None, p) => return Err(format!("protocol \"{}\" is not served", escape(p))),
    })
}

/// The program for an inetd or xinetd internal service.
pub fn internal(service: &str, m: &mut Mapped) -> Result<(), String> {
    m.program = match service {
        "echo" => "tinyinetd-echo",
        "daytime" => "tinyinetd-daytime",
        other => {
            return Err(format!(
            "internal service \"{}\" has no tinyinetd handler (tinyinetd ships echo and daytime)",
            escape(other)
        ))
        }
    }
    .into();
    m.notes.push(format!(
        "the internal {service} service runs as the shipped {}, as user nobody",
        m.program
    ));
    // It ran inside the superserver, as root; the handler needs nothing.
    m.user = None;
    m.group = None;
    Ok(())
}

/// Why an internal service over UDP (`udp`) or in wait mode cannot map.
pub fn no_handler(service: &str, udp: bool) -> String {
    let how = if udp { "over UDP" } else { "in wait mode" };
    format!(
        "internal service \"{}\" has no tinyinetd handler {how} (the shipped handlers serve one TCP connection each)",
        escape(service)
    )
}

/// A wait service takes none of the per-client keys: tinyinetd never sees
/// its clients (its handler holds the socket). An address restriction
/// cannot be left out (everyone would get in); the limits are lost, and
/// `instances` is one per socket.
pub fn wait_limits(m: &mut Mapped, one: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
    if !m.allow.is_empty() || !m.deny.is_empty() {
        return Err("only_from or no_access on a wait service: tinyinetd cannot restrict the clients of a wait service (its handler holds the socket), and leaving them out would let everyone in".into());
    }
    let why = "a wait service's clients are not seen by tinyinetd (its handler holds the socket)";
    for (key, limit) in [
        ("per_source", &mut m.max_per_source),
        ("cps", &mut m.max_rate),
    ] {
        if limit.take().is_some() {
            let v = one(key).unwrap_or_default();
            m.lost.push(format!("{key} = {}: {why}", escape(&v)));
        }
    }
    if m.max_instances.take().is_some() {
        let v = one("instances").unwrap_or_default();
        m.notes.push(format!(
            "instances = {}: a wait service runs one handler per socket",
            escape(&v)
        ));
    }
    Ok(())
}

/// Which format `tinyinetd import` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One inetd.conf file.
    Inetd,
    /// xinetd files or directories (`/etc/xinetd.conf`, `/etc/xinetd.d`).
    Xinetd,
}

/// `tinyinetd import FORMAT PATH...`: reads the input and `services` (the
/// services(5) file) and renders the report; `Err` when an input cannot be
/// read at all.
pub fn run(
    format: Format,
    paths: &[std::path::PathBuf],
    services: &Path,
) -> Result<Report, String> {
    let ports = Ports::load(services)?;
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let entries = match format {
        Format::Inetd => {
            let mut all = Vec::new();
            for (p, s) in paths.iter().zip(&shown) {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("reading {s}: {}", crate::text::io_reason(&e)))?;
                all.extend(inetd::parse(s, &text, &ports));
            }
            all
        }
        Format::Xinetd => xinetd::parse(paths, &ports)?,
    };
    Ok(render(entries, &shown.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_files_give_ports_by_name_alias_and_protocol() {
        let p = Ports::parse(
            "# comment\nauth\t113/tcp\t\tident tap # trailing\ntftp 69/udp\nbad x/tcp\n",
        );
        assert_eq!(p.port("auth", "tcp"), Some(113));
        assert_eq!(p.port("ident", "tcp"), Some(113));
        assert_eq!(p.port("tftp", "tcp"), None);
        assert_eq!(p.port("2323", "tcp"), Some(2323));
        assert_eq!(p.port("0", "tcp"), None);
        assert_eq!(p.port("bad", "tcp"), None);
    }

    fn entry(name: &str, listen: &str) -> Entry {
        Entry {
            origin: format!("t:{name}"),
            text: vec![format!("{name} line")],
            outcome: Outcome::Mapped(Box::new(Mapped {
                name: name.into(),
                listen: vec![listen.into()],
                program: "tinyinetd-echo".into(),
                ..Mapped::default()
            })),
        }
    }

    #[test]
    fn names_are_made_valid_and_unique_and_an_address_used_twice_is_not_mapped() {
        let r = render(
            vec![
                entry("Echo.Svc", "127.0.0.1:7"),
                entry("echo-svc", "127.0.0.2:7"),
                entry("other", "7"),
            ],
            "t",
        );
        assert!(r.toml.contains("name = \"echo-svc\"\n"), "{}", r.toml);
        assert!(r.toml.contains("name = \"echo-svc-2\"\n"), "{}", r.toml);
        assert!(
            r.toml.contains("# t:other: not mapped: listen address \"7\" is already used by service \"echo-svc\" above\n#   other line\n"),
            "{}",
            r.toml
        );
        assert!(!r.complete);
        assert_eq!(
            r.summary[0],
            "tinyinetd import: 3 entries from t: 2 mapped, 0 partly mapped, 1 not mapped"
        );
    }

    #[test]
    fn strings_are_toml_strings() {
        assert_eq!(q("a\"b\\c\td"), "\"a\\\"b\\\\c\\u0009d\"");
    }
}
