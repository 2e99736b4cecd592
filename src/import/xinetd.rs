//! xinetd.conf(5): `defaults { ... }`, `service NAME { ... }` blocks of
//! `attribute = value...` lines (also `+=` and `-=`), `includedir DIR` and
//! `include FILE`. A directory, named on the command line or by
//! `includedir`, is read in name order, skipping the names xinetd skips
//! (those with a dot or ending in `~`). The defaults apply to every
//! service, the service's own attributes after them.

use std::path::{Path, PathBuf};

use super::{
    internal, listen_for, no_handler, wait_limits, Entry, Mapped, Outcome, Ports, UDP_NOWAIT,
};
use crate::text::escape;

/// How deep `include` and `includedir` may nest (a loop ends here).
const MAX_DEPTH: usize = 8;

/// `=`, `+=` or `-=`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Set,
    Add,
    Remove,
}

/// One `attribute op values` line.
#[derive(Clone, Debug)]
struct Attr {
    /// The attribute's name.
    name: String,
    /// How the values combine with those before.
    op: Op,
    /// The values, split at white space.
    values: Vec<String>,
}

/// A `service` block as read.
struct Block {
    /// `PATH:LINE` of its `service` line.
    origin: String,
    /// Its lines, for the output's comments.
    text: Vec<String>,
    /// The name after `service`.
    name: String,
    /// Its attribute lines, in order.
    attrs: Vec<Attr>,
    /// A line that is not `attribute op value`, or a block left open.
    broken: Option<String>,
}

/// What the files hold: the services and the merged defaults.
#[derive(Default)]
struct Read {
    /// Every service block, in reading order.
    blocks: Vec<Block>,
    /// Every `defaults` attribute, in reading order.
    defaults: Vec<Attr>,
    /// Files and directories read, so that a loop reads each once.
    seen: Vec<PathBuf>,
}

/// Every service of the xinetd files and directories `paths`.
pub fn parse(paths: &[PathBuf], ports: &Ports) -> Result<Vec<Entry>, String> {
    let mut read = Read::default();
    for p in paths {
        read.path(p, 0)?;
    }
    let defaults = read.defaults;
    Ok(read
        .blocks
        .into_iter()
        .map(|b| {
            let outcome = match &b.broken {
                Some(why) => Outcome::Skipped(why.clone()),
                None => match map(&b, &defaults, ports) {
                    Ok(m) => Outcome::Mapped(Box::new(m)),
                    Err(why) => Outcome::Skipped(why),
                },
            };
            Entry {
                origin: b.origin,
                text: b.text,
                outcome,
            }
        })
        .collect())
}

impl Read {
    fn path(&mut self, p: &Path, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "{}: includes nest more than {MAX_DEPTH} deep",
                p.display()
            ));
        }
        if self.seen.iter().any(|s| s == p) {
            return Ok(());
        }
        self.seen.push(p.to_path_buf());
        let reason =
            |e: std::io::Error| format!("reading {}: {}", p.display(), crate::text::io_reason(&e));
        if p.is_dir() {
            let mut names: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(reason)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    let n = f
                        .file_name()
                        .map(|n| n.to_string_lossy().to_string())
                        .unwrap_or_default();
                    !n.contains('.') && !n.ends_with('~') && f.is_file()
                })
                .collect();
            names.sort();
            for f in names {
                self.path(&f, depth + 1)?;
            }
            return Ok(());
        }
        let text = std::fs::read_to_string(p).map_err(reason)?;
        self.file(p, &text, depth)
    }

    fn file(&mut self, p: &Path, text: &str, depth: usize) -> Result<(), String> {
        let shown = p.display().to_string();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i].trim();
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                [] => {}
                [w, ..] if w.starts_with('#') => {}
                ["includedir", dir] | ["include", dir] => {
                    let target = p.parent().unwrap_or(Path::new("")).join(dir);
                    // xinetd goes on without a missing include; so does
                    // the import, with the line in the output.
                    if let Err(why) = self.path(&target, depth + 1) {
                        self.blocks.push(Block {
                            origin: format!("{shown}:{}", i + 1),
                            text: vec![lines[i].trim_end().to_string()],
                            name: String::new(),
                            attrs: Vec::new(),
                            broken: Some(why),
                        });
                    }
                }
                ["defaults", rest @ ..] | ["service", _, rest @ ..]
                    if rest.iter().all(|w| *w == "{") =>
                {
                    let start = i;
                    let (attrs, broken, end) = block(&lines, i, rest.contains(&"{"));
                    i = end;
                    if words[0] == "defaults" {
                        self.defaults.extend(attrs);
                    } else {
                        self.blocks.push(Block {
                            origin: format!("{shown}:{}", start + 1),
                            text: lines[start..=end.min(lines.len() - 1)]
                                .iter()
                                .map(|l| l.trim_end().to_string())
                                .collect(),
                            name: words[1].to_string(),
                            attrs,
                            broken,
                        });
                    }
                }
                _ => {
                    self.blocks.push(Block {
                        origin: format!("{shown}:{}", i + 1),
                        text: vec![lines[i].trim_end().to_string()],
                        name: String::new(),
                        attrs: Vec::new(),
                        broken: Some(format!(
                            "\"{}\" is not a service, defaults, include or includedir line",
                            escape(line)
                        )),
                    });
                }
            }
            i += 1;
        }
        Ok(())
    }
}

/// The attribute lines of the block whose head is line `head`; gives the
/// index of its closing line.
fn block(lines: &[&str], head: usize, open: bool) -> (Vec<Attr>, Option<String>, usize) {
    let mut attrs = Vec::new();
    let mut broken = None;
    let mut i = head + 1;
    let mut opened = open;
    while i < lines.len() {
        let line = lines[i].trim();
        if line.is_empty() || line.starts_with('#') {
        } else if line == "{" && !opened {
            opened = true;
        } else if line == "}" {
            return (attrs, broken, i);
        } else {
            match attr(line) {
                Some(a) if opened => attrs.push(a),
                _ => {
                    broken.get_or_insert_with(|| {
                        format!(
                            "line {}: \"{}\" is not \"attribute = value\"",
                            i + 1,
                            escape(line)
                        )
                    });
                }
            }
        }
        i += 1;
    }
    (
        attrs,
        Some("the block has no closing }".into()),
        lines.len() - 1,
    )
}

fn attr(line: &str) -> Option<Attr> {
    let (name, op, rest) = if let Some((n, r)) = line.split_once("+=") {
        (n, Op::Add, r)
    } else if let Some((n, r)) = line.split_once("-=") {
        (n, Op::Remove, r)
    } else {
        let (n, r) = line.split_once('=')?;
        (n, Op::Set, r)
    };
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    Some(Attr {
        name: name.to_string(),
        op,
        values: rest.split_whitespace().map(String::from).collect(),
    })
}

/// The attributes of a service after the defaults: `=` replaces, `+=` adds,
/// `-=` takes away. Keyed by name, in the order first seen.
fn merged(defaults: &[Attr], own: &[Attr]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    // Attributes only the defaults section has.
    let defaults_only = ["enabled", "disabled"];
    for a in defaults
        .iter()
        .filter(|a| !defaults_only.contains(&a.name.as_str()))
        .chain(own)
    {
        let i = match out.iter().position(|(n, _)| *n == a.name) {
            Some(i) => i,
            None => {
                out.push((a.name.clone(), Vec::new()));
                out.len() - 1
            }
        };
        let slot = &mut out[i].1;
        match a.op {
            Op::Set => *slot = a.values.clone(),
            Op::Add => slot.extend(a.values.iter().cloned()),
            Op::Remove => slot.retain(|v| !a.values.contains(v)),
        }
    }
    out
}

/// One service as a tinyinetd service, or why not.
fn map(b: &Block, defaults: &[Attr], ports: &Ports) -> Result<Mapped, String> {
    let attrs = merged(defaults, &b.attrs);
    let get = |k: &str| attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let one = |k: &str| get(k).map(|v| v.join(" "));
    let types = get("type").unwrap_or_default();
    let (udp, wait) = shape(&types, &one)?;
    let by = if udp { "udp" } else { "tcp" };
    let port = match one("port") {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("port \"{}\" is not a port number", escape(&p)))?,
        None => ports.port(&b.name, by).ok_or_else(|| {
            format!(
                "service \"{}\" has no port and is not a {by} service in /etc/services",
                escape(&b.name)
            )
        })?,
    };
    let flags = get("flags").unwrap_or_default();
    let family = if flags.iter().any(|f| f == "IPv6") {
        "tcp46"
    } else {
        "tcp"
    };
    let host = one("bind").or_else(|| one("interface"));
    let mut m = Mapped {
        name: b.name.clone(),
        listen: listen_for(host.as_deref(), port, family)?,
        protocol: udp.then_some("udp"),
        wait,
        ..Mapped::default()
    };
    if types.iter().any(|t| t == "INTERNAL") {
        if udp || wait {
            return Err(no_handler(&b.name, udp));
        }
        internal(&b.name, &mut m)?;
    } else {
        let server = one("server").ok_or("no server attribute (and not INTERNAL)")?;
        m.program = server;
        m.args = get("server_args").unwrap_or_default();
        if flags.iter().any(|f| f == "NAMEINARGS") && !m.args.is_empty() {
            let zero = m.args.remove(0);
            m.notes.push(format!(
                "NAMEINARGS: argv[0] \"{}\" becomes the program's file name",
                escape(&zero)
            ));
        }
        m.user = one("user");
        m.group = one("group");
    }
    m.disabled = disabled(&b.name, &attrs, defaults);
    for (name, values) in &attrs {
        attribute(&mut m, name, values)?;
    }
    if wait {
        wait_limits(&mut m, &one)?;
    }
    Ok(m)
}

/// What decides whether the service can be served at all: its type,
/// socket, protocol and wait mode, and forwarding. Says whether it is UDP
/// and whether it waits.
fn shape(types: &[String], one: &dyn Fn(&str) -> Option<String>) -> Result<(bool, bool), String> {
    if types.iter().any(|t| t == "RPC") {
        return Err("RPC services are not served by tinyinetd".into());
    }
    if types.iter().any(|t| t.starts_with("TCPMUX")) {
        return Err("TCPMUX services are not served by tinyinetd".into());
    }
    if let Some(r) = one("redirect") {
        return Err(format!("redirect = {}: xinetd forwards such connections itself; tinyinetd runs a handler per connection and has no forwarding", escape(&r)));
    }
    let socket_type = one("socket_type").unwrap_or_default();
    let udp = socket_type == "dgram";
    let protocol = one("protocol").unwrap_or_else(|| if udp { "udp" } else { "tcp" }.into());
    if !udp && socket_type != "stream" {
        return Err(format!(
            "socket_type \"{}\" is not served (tinyinetd serves stream sockets, and dgram over udp)",
            escape(&socket_type)
        ));
    }
    if protocol != if udp { "udp" } else { "tcp" } {
        return Err(format!(
            "protocol \"{}\" is not served with socket_type \"{}\"",
            escape(&protocol),
            escape(&socket_type)
        ));
    }
    let wait = match one("wait").as_deref() {
        Some("yes") => true,
        Some("no") | None => false,
        Some(other) => {
            return Err(format!(
                "wait = \"{}\" is neither yes nor no",
                escape(other)
            ))
        }
    };
    if udp && !wait {
        return Err(format!(
            "{socket_type}/{protocol} with wait = no: {UDP_NOWAIT}"
        ));
    }
    Ok((udp, wait))
}

/// `disable = yes`, or the defaults' `disabled`/`enabled` lists.
fn disabled(name: &str, attrs: &[(String, Vec<String>)], defaults: &[Attr]) -> bool {
    let listed = |k: &str| {
        let v: Vec<&String> = defaults
            .iter()
            .filter(|a| a.name == k)
            .flat_map(|a| &a.values)
            .collect();
        (!v.is_empty() || defaults.iter().any(|a| a.name == k)).then_some(v)
    };
    attrs
        .iter()
        .any(|(n, v)| n == "disable" && v.first().is_some_and(|v| v == "yes"))
        || listed("disabled").is_some_and(|v| v.iter().any(|n| *n == name))
        || listed("enabled").is_some_and(|v| !v.iter().any(|n| *n == name))
}

/// Maps one attribute that does not decide the service's shape.
fn attribute(m: &mut Mapped, name: &str, values: &[String]) -> Result<(), String> {
    let joined = values.join(" ");
    let count = |v: &str| -> Result<Option<usize>, String> {
        if v == "UNLIMITED" {
            return Ok(None);
        }
        v.parse::<usize>()
            .map(|n| Some(n.clamp(1, 1_000_000)))
            .map_err(|_| format!("{name} = \"{}\" is not a number", escape(v)))
    };
    match name {
        "disable" | "type" | "socket_type" | "protocol" | "wait" | "user" | "group" | "server"
        | "server_args" | "port" | "bind" | "interface" | "id" => {}
        "flags" => {
            for f in values {
                if !["IPv4", "IPv6", "NAMEINARGS", "REUSE", "NOLIBWRAP"].contains(&f.as_str()) {
                    m.lost.push(format!("flags {}: no tinyinetd equivalent", escape(f)));
                }
            }
        }
        "only_from" => {
            m.allow = nets(values, m, "only_from", true)?;
            // No address left would be an empty allow: everyone.
            if m.allow.is_empty() {
                return Err(format!("only_from = {}: no address tinyinetd can take is left, and an empty allow lets everyone in", escape(&joined)));
            }
        }
        "no_access" => m.deny = nets(values, m, "no_access", false)?,
        "instances" => m.max_instances = count(&joined)?,
        "per_source" => m.max_per_source = count(&joined)?,
        "cps" => {
            m.max_rate = count(values.first().map(String::as_str).unwrap_or(""))?;
            m.notes.push(format!("cps = {joined}: at max_rate tinyinetd pauses accepting (the kernel queues) instead of switching the service off for a while"));
        }
        "env" => {
            for kv in values {
                match kv.split_once('=') {
                    Some((k, v)) => m.env.push((k.to_string(), v.to_string())),
                    None => m.lost.push(format!("env {}: not NAME=VALUE", escape(kv))),
                }
            }
        }
        "passenv" => m.lost.push(format!("passenv = {}: tinyinetd never passes its own environment to a handler; write the values in env", escape(&joined))),
        "umask" => m.umask = Some(joined),
        "nice" | "rlimit_as" | "rlimit_cpu" | "rlimit_files" | "rlimit_data" | "rlimit_rss" | "rlimit_stack" | "rlimit_core" => {
            m.lost.push(format!("{name} = {}: not supported by this version of tinyinetd (the handler hardening keys are reserved for a later one)", escape(&joined)))
        }
        "log_type" | "log_on_success" | "log_on_failure" => {
            m.notes.push(format!("{name} = {}: tinyinetd logs every connection and exit itself (tinyinetd(8))", escape(&joined)))
        }
        other => m.lost.push(format!("{} = {}: no tinyinetd equivalent", escape(other), escape(&joined))),
    }
    Ok(())
}

/// xinetd addresses as `allow`/`deny` entries: an address, a CIDR, an
/// IPv4 address whose trailing zeros are wildcards (`10.0.0.0` is
/// `10.0.0.0/8`), `a.b.c.{d,e}`. A host name (never resolved) is left
/// out of `only_from` (fewer clients get in: noted as lost), and makes a
/// `no_access` unmappable (leaving it out would let it in).
fn nets(
    values: &[String],
    m: &mut Mapped,
    key: &str,
    narrows: bool,
) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for v in values {
        if let Some((head, tail)) = v.split_once('{') {
            for last in tail.trim_end_matches('}').split(',') {
                out.push(format!("{head}{}", last.trim()));
            }
            continue;
        }
        if crate::config::parse_net(v).is_err() {
            if !narrows {
                return Err(format!("{key} address \"{}\": a host name or a form tinyinetd does not take; leaving it out would let it in", escape(v)));
            }
            m.lost.push(format!(
                "address \"{}\": a host name or a form tinyinetd does not take (not resolved)",
                escape(v)
            ));
            continue;
        }
        match v.parse::<std::net::Ipv4Addr>() {
            Ok(a) if !v.contains('/') => {
                let octets = a.octets();
                let zeros = octets.iter().rev().take_while(|o| **o == 0).count();
                out.push(if zeros == 0 {
                    v.clone()
                } else {
                    format!("{a}/{}", 32 - 8 * zeros)
                });
            }
            _ => out.push(v.clone()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports() -> Ports {
        Ports::parse("echo 7/tcp\nfinger 79/tcp\necho 7/udp\ntftp 69/udp\n")
    }

    fn entries(text: &str) -> Vec<Entry> {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("conf");
        std::fs::write(&p, text).expect("write");
        parse(&[p], &ports()).expect("parse")
    }

    #[test]
    fn defaults_and_service_attributes_merge() {
        let e = entries("defaults\n{\n only_from = 10.0.0.0 192.168.1.{1,2}\n instances = 30\n log_type = SYSLOG daemon\n}\nservice finger\n{\n socket_type = stream\n wait = no\n user = nobody\n server = /usr/sbin/in.fingerd\n server_args = -w\n only_from += ::1\n nice = 5\n}\n");
        assert_eq!(e.len(), 1);
        let Outcome::Mapped(m) = &e[0].outcome else {
            panic!("{:?}", e[0].outcome)
        };
        assert_eq!(m.listen, ["0.0.0.0:79"]);
        assert_eq!(m.allow, ["10.0.0.0/8", "192.168.1.1", "192.168.1.2", "::1"]);
        assert_eq!(m.max_instances, Some(30));
        assert_eq!(m.args, ["-w"]);
        assert_eq!(m.lost.len(), 1, "{:?}", m.lost);
        assert!(m.notes.iter().any(|n| n.contains("log_type")));
    }

    #[test]
    fn a_udp_wait_block_maps_and_its_per_client_limits_do_not() {
        let tftp = "service tftp\n{\n socket_type = dgram\n protocol = udp\n wait = yes\n user = root\n server = /usr/sbin/in.tftpd\n server_args = -s /srv/tftp\n instances = 4\n cps = 100 2\n}\n";
        let e = entries(tftp);
        let Outcome::Mapped(m) = &e[0].outcome else {
            panic!("{:?}", e[0].outcome)
        };
        assert_eq!((m.protocol, m.wait), (Some("udp"), true));
        assert_eq!(m.listen, ["0.0.0.0:69"]);
        assert_eq!((m.max_instances, m.max_rate), (None, None));
        assert!(
            m.lost.iter().any(|l| l.starts_with("cps = 100 2: ")),
            "{:?}",
            m.lost
        );
        assert!(
            m.notes.iter().any(|n| n.starts_with("instances = 4: ")),
            "{:?}",
            m.notes
        );
        let e = entries(&tftp.replace(" cps = 100 2\n", " only_from = 10.0.0.0\n"));
        let Outcome::Skipped(why) = &e[0].outcome else {
            panic!("{:?}", e[0].outcome)
        };
        assert!(why.contains("would let everyone in"), "{why}");
        let e = entries(&tftp.replace("wait = yes", "wait = no"));
        assert!(
            matches!(&e[0].outcome, Outcome::Skipped(w) if w.contains("a UDP service is a wait service"))
        );
    }

    #[test]
    fn blocks_that_cannot_map_say_why() {
        let e = entries("service echo\n{\n type = INTERNAL\n socket_type = dgram\n protocol = udp\n wait = yes\n}\nservice x\n{\n redirect = 10.0.0.1 80\n port = 8080\n}\nservice y\n{\n nonsense here\n}\nservice z\n{\n");
        let why: Vec<String> = e
            .iter()
            .map(|e| match &e.outcome {
                Outcome::Skipped(w) => w.clone(),
                Outcome::Mapped(m) => panic!("mapped {m:?}"),
            })
            .collect();
        assert!(why[0].contains("no tinyinetd handler over UDP"), "{why:?}");
        assert!(why[1].contains("redirect"), "{why:?}");
        assert!(why[2].contains("is not \"attribute = value\""), "{why:?}");
        assert!(why[3].contains("no closing"), "{why:?}");
    }
}
