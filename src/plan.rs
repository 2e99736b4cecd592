//! What a validated, resolved configuration *is*: plain values, no I/O.
//!
//! `config::load` produces a [`Plan`]; everything after it (listeners,
//! admission, spawning) reads these values and never re-parses or re-resolves
//! anything. Users, groups, program paths and the exec image are resolved
//! here once, at load, so that nothing between `fork` and `exec` has to.

use std::collections::HashMap;
use std::ffi::CString;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

mod peer;
mod sock;

pub use peer::{Client, Source};
pub use sock::{Keepalive, Protocol, SockOpts, UnixName, DEFAULT_BACKLOG, MAX_NAME};

/// Where the daemon writes its log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogTarget {
    /// stderr when `JOURNAL_STREAM` is set or stderr is a terminal, else syslog.
    Auto,
    Stderr,
    Syslog,
}

/// Log severities, most severe first; a filter keeps levels `<=` its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    /// The level as the config and log lines write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// The `[daemon]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct Daemon {
    /// Where log lines go (`log`).
    pub log: LogTarget,
    /// The least severe level written (`log_level`).
    pub log_level: Level,
    /// Handlers running at once, all services together.
    pub max_connections: usize,
    /// How long SIGTERM waits for handlers before terminating them.
    pub shutdown_timeout: Duration,
    /// Where bare program names are looked up first.
    pub handler_dir: PathBuf,
    /// The control socket (`control_socket`), §10.7.
    pub control_socket: ControlSocket,
    /// Who may read the control socket besides root and the daemon's own
    /// user (`control_group`).
    pub control_group: ControlGroup,
}

/// `[daemon] control_socket`: where `tinyinetd status` and `reload` reach
/// the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlSocket {
    /// `control_socket = ""`, or no default applies (a daemon that is not
    /// root and has no `XDG_RUNTIME_DIR`).
    Off,
    /// The default path: when it cannot be used (held by another live
    /// daemon, no directory) the daemon warns and runs without one.
    Default(PathBuf),
    /// A path written in the config: when it cannot be used the daemon
    /// does not start.
    Explicit(PathBuf),
}

impl ControlSocket {
    /// The path, when there is a socket.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            ControlSocket::Off => None,
            ControlSocket::Default(p) | ControlSocket::Explicit(p) => Some(p),
        }
    }
}

/// `[daemon] control_group`, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlGroup {
    /// As written (or `root`), for messages.
    pub name: String,
    /// Its gid: the socket file's group, and the group a peer must be in.
    pub gid: u32,
}

impl Default for ControlGroup {
    fn default() -> Self {
        ControlGroup {
            name: "root".into(),
            gid: 0,
        }
    }
}

/// The control socket's default path (§10.7): `/run/tinyinetd/control.sock`
/// for a root daemon, `$XDG_RUNTIME_DIR/tinyinetd/control.sock` otherwise,
/// none when that is unset or empty.
pub fn default_control_socket(
    euid: u32,
    xdg_runtime_dir: Option<&std::ffi::OsStr>,
) -> Option<PathBuf> {
    if euid == 0 {
        return Some(PathBuf::from(ROOT_CONTROL_SOCKET));
    }
    let dir = xdg_runtime_dir.filter(|d| !d.is_empty())?;
    Some(PathBuf::from(dir).join("tinyinetd/control.sock"))
}

/// The control socket of a root daemon by default; the shipped unit's
/// `RuntimeDirectory=tinyinetd` creates its directory.
pub const ROOT_CONTROL_SOCKET: &str = "/run/tinyinetd/control.sock";

/// Where the package installs the handlers; `handler_dir`'s default.
pub const DEFAULT_HANDLER_DIR: &str = "/usr/libexec/tinyinetd";

impl Default for Daemon {
    fn default() -> Self {
        Daemon {
            log: LogTarget::Auto,
            log_level: Level::Info,
            max_connections: 1024,
            shutdown_timeout: Duration::from_secs(10),
            handler_dir: PathBuf::from(DEFAULT_HANDLER_DIR),
            control_socket: ControlSocket::Off,
            control_group: ControlGroup::default(),
        }
    }
}

/// One configured listen address. `Any(port)` (a bare `"PORT"`) expands to
/// one IPv4 and one IPv6 wildcard socket.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// `"IPv4:PORT"` or `"[IPv6]:PORT"`; an IPv6 socket is always `IPV6_V6ONLY`.
    Addr(SocketAddr),
    /// `"PORT"`: all addresses.
    Any(u16),
    /// `"unix:/path"` or `"unix:@name"`: a Unix stream socket (SPEC §10.4).
    Unix(UnixName),
}

impl ListenAddr {
    /// The IP sockets this entry stands for: one, or two for `Any`, none
    /// for a Unix socket.
    pub fn sockets(&self) -> Vec<SocketAddr> {
        match self {
            ListenAddr::Addr(a) => vec![*a],
            ListenAddr::Any(port) => vec![
                SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), *port),
                SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), *port),
            ],
            ListenAddr::Unix(_) => Vec::new(),
        }
    }

    /// Whether this is a Unix socket's address.
    pub fn is_unix(&self) -> bool {
        matches!(self, ListenAddr::Unix(_))
    }
}

/// What one socket of the daemon is bound to: the key by which sockets are
/// kept across reloads, adopted from `LISTEN_FDS` and named in log lines.
/// New kinds of socket are new variants here (and in `listen::Listener`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A TCP listening socket.
    Tcp(SocketAddr),
    /// A Unix stream listening socket, by its path or abstract name.
    Unix(UnixName),
    /// A UDP socket (`protocol = "udp"`), shown as `ADDR/udp` (the
    /// `/etc/services` way of writing it); TCP keeps its bare address.
    Udp(SocketAddr),
}

impl Endpoint {
    /// The IP address and port, for the kinds that have them.
    pub fn inet(&self) -> Option<SocketAddr> {
        match self {
            Endpoint::Tcp(a) | Endpoint::Udp(a) => Some(*a),
            Endpoint::Unix(_) => None,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "{a}"),
            Endpoint::Unix(n) => write!(f, "{n}"),
            Endpoint::Udp(a) => write!(f, "{a}/udp"),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Addr(a) => write!(f, "{a}"),
            ListenAddr::Any(p) => write!(f, "{p}"),
            ListenAddr::Unix(n) => write!(f, "{n}"),
        }
    }
}

/// The credentials a handler runs with, resolved at load (NSS lookups
/// allocate and lock, so they must never run in the forked child).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cred {
    /// The user name, for `--check` and log lines.
    pub user: String,
    /// The group name (or its number when it has none), likewise.
    pub group: String,
    /// What the child passes to `setuid`.
    pub uid: u32,
    /// What the child passes to `setgid`.
    pub gid: u32,
    /// Supplementary groups, `setgroups` order.
    pub groups: Vec<u32>,
}

/// Per-service limits applied by the supervisor and `admit`.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Handlers of this service at once.
    pub max_instances: usize,
    /// Handlers per source prefix; `None` is no limit.
    pub max_per_source: Option<usize>,
    /// New connections per second (token bucket); `None` is no limit.
    pub max_rate: Option<u32>,
    /// Prefix lengths that define "one source" for `max_per_source`.
    pub source_prefix_v4: u8,
    /// The same for IPv6 sources.
    pub source_prefix_v6: u8,
    /// Handler wall-clock limit; SIGTERM at the limit, SIGKILL 2 s later.
    pub timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_instances: 64,
            max_per_source: None,
            max_rate: None,
            source_prefix_v4: 32,
            source_prefix_v6: 64,
            timeout: None,
        }
    }
}

/// Address-based admission: `deny` wins over `allow`; an empty `allow`
/// admits everyone not denied.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Access {
    /// Sources admitted (all when empty).
    pub allow: Vec<IpNet>,
    /// Sources refused, whatever `allow` says.
    pub deny: Vec<IpNet>,
}

/// A resource a handler's limit is set on (`rlimit_*`, SPEC §10.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    /// `rlimit_nofile`: open descriptors.
    Nofile,
    /// `rlimit_nproc`: processes of the handler's user.
    Nproc,
    /// `rlimit_core`: core file size in bytes.
    Core,
    /// `rlimit_fsize`: the largest file it may write, in bytes.
    Fsize,
    /// `rlimit_as`: address space in bytes.
    As,
    /// `rlimit_cpu`: CPU time in seconds.
    Cpu,
}

impl Resource {
    /// Every resource, in the order the child sets them.
    pub const ALL: [Resource; 6] = [
        Resource::Nofile,
        Resource::Nproc,
        Resource::Core,
        Resource::Fsize,
        Resource::As,
        Resource::Cpu,
    ];

    /// The config key (and the `step` an exec-failed line names).
    pub fn key(self) -> &'static str {
        match self {
            Resource::Nofile => "rlimit_nofile",
            Resource::Nproc => "rlimit_nproc",
            Resource::Core => "rlimit_core",
            Resource::Fsize => "rlimit_fsize",
            Resource::As => "rlimit_as",
            Resource::Cpu => "rlimit_cpu",
        }
    }
}

/// One limit the child sets, soft and hard alike, before its exec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rlimit {
    /// Which resource.
    pub resource: Resource,
    /// The limit (`u64::MAX`: `RLIM_INFINITY`, no limit).
    pub value: u64,
}

/// What the child does to its own process before exec beyond the
/// descriptors and credentials (`nice`, `no_new_privs`, `rlimit_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hardening {
    /// `setpriority` value (-20..19); `None` keeps the daemon's.
    pub nice: Option<i32>,
    /// `prctl(PR_SET_NO_NEW_PRIVS)` just before exec: a setuid or
    /// file-capability program cannot raise the handler's privileges.
    pub no_new_privs: bool,
    /// The limits set, one per resource at most, in [`Resource::ALL`]
    /// order; a resource not listed keeps the daemon's own limit.
    pub rlimits: Vec<Rlimit>,
}

impl Default for Hardening {
    /// `no_new_privs = true`, `rlimit_core = 0` (no core dumps of handlers
    /// that may hold client data), nothing else.
    fn default() -> Self {
        Hardening {
            nice: None,
            no_new_privs: true,
            rlimits: vec![Rlimit {
                resource: Resource::Core,
                value: 0,
            }],
        }
    }
}

impl Hardening {
    /// Sets `resource` to `value`, keeping the list in order.
    pub fn set(&mut self, resource: Resource, value: u64) {
        self.rlimits.retain(|r| r.resource != resource);
        self.rlimits.push(Rlimit { resource, value });
        self.rlimits.sort_by_key(|r| r.resource);
    }
}

/// Everything `execve` needs that does not depend on the connection, built
/// once at load as C strings.
#[derive(Debug)]
pub struct ExecImage {
    /// The resolved, absolute program path (shown by `--check` and in log
    /// lines; exec'd only when `fd` is `None`).
    pub path: CString,
    /// The checked program, `O_PATH | O_CLOEXEC`, exec'd with
    /// `execveat(fd, "", AT_EMPTY_PATH)` so that what runs is what was
    /// checked at load; `None` for a script, which is exec'd by `path`
    /// (why: `config::RealSystem::program`).
    pub fd: Option<OwnedFd>,
    /// `argv[0]` (the program's file name as written) and the service's args.
    pub argv: Vec<CString>,
    /// The fixed part of the environment, in order, with the per-connection
    /// variables left out: `PATH`, `PROTO`, `TINYINETD_SERVICE` and the
    /// service's `env` (a `PATH` there replaces the default one).
    pub env: Vec<CString>,
    /// The file-creation mask set in the child.
    pub umask: u32,
    /// `nice`, `no_new_privs` and the `rlimit_*` keys, set in the child.
    pub hardening: Hardening,
    /// A script's `#!` interpreter as the load found it (for `env`, the
    /// program found in the handler's `PATH`), named by an exec-failed
    /// line whose cause it is; `None` for a binary.
    pub interpreter: Option<PathBuf>,
}

/// One `[[service]]`, validated and resolved. Running handlers hold an
/// `Arc<Service>`, so a reload never changes what they were started with.
#[derive(Debug)]
pub struct Service {
    /// Unique in the plan: how log lines, reloads and `--check` name it.
    pub name: String,
    /// Where it is served, in file order.
    pub listen: Vec<ListenAddr>,
    /// What each connection's child execs.
    pub image: ExecImage,
    /// `None`: handlers keep the daemon's own credentials (daemon not root).
    pub cred: Option<Cred>,
    /// Applied by the supervisor and `admit`.
    pub limits: Limits,
    /// Who may connect.
    pub access: Access,
    /// `false`: validated, never bound (`enabled = false`).
    pub enabled: bool,
    /// Where the handler's fd 2 goes (`stderr`, SPEC §10.2).
    pub stderr: Stderr,
    /// The options of its listening sockets (SPEC §10.3, §10.4).
    pub sockopts: SockOpts,
    /// What the IP `listen` addresses are bound for (`protocol`, SPEC §10.5).
    pub protocol: Protocol,
    /// `wait = true`: each socket is handed to one handler, which serves
    /// it until it exits, instead of a handler per connection (SPEC §10.5).
    pub wait: bool,
    /// `proxy_protocol` and its keys (SPEC §10.6); `None`: connections
    /// are taken as they come, no header is read.
    pub proxy: Option<Proxy>,
}

/// The PROXY protocol versions a service reads (`proxy_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// `"v1"`: the text line only.
    V1,
    /// `"v2"`: the binary header only.
    V2,
    /// `"any"`: either, told apart by its first bytes.
    Any,
}

impl ProxyVersion {
    /// The key's value as written in the file and shown by `--check`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyVersion::V1 => "v1",
            ProxyVersion::V2 => "v2",
            ProxyVersion::Any => "any",
        }
    }
}

/// A service behind a load balancer: every connection starts with a PROXY
/// protocol header from one of `trusted`, which names the real client.
#[derive(Debug, Clone, PartialEq)]
pub struct Proxy {
    /// Which header versions are accepted.
    pub version: ProxyVersion,
    /// `trusted_proxies`: a connection from anywhere else is refused
    /// before a byte of it is read (never empty).
    pub trusted: Vec<IpNet>,
    /// `proxy_timeout`: a header not complete by then is refused.
    pub timeout: Duration,
}

/// `proxy_timeout`'s default: the PROXY protocol specification asks for
/// at least 3 s, to cover a TCP retransmission.
pub const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_secs(5);

/// The `stderr` key: what a handler's fd 2 is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Stderr {
    /// The connection, like fds 0 and 1 (the inetd convention).
    #[default]
    Socket,
    /// A pipe the daemon reads and logs line by line.
    Log,
    /// `/dev/null`.
    Null,
}

impl Stderr {
    /// The key's value as written in the file and shown by `--check`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stderr::Socket => "socket",
            Stderr::Log => "log",
            Stderr::Null => "null",
        }
    }
}

/// A whole validated configuration.
#[derive(Debug, Default)]
pub struct Plan {
    /// The file it came from, as given on the command line.
    pub path: PathBuf,
    /// The `[daemon]` table, or its defaults.
    pub daemon: Daemon,
    /// In file order; disabled services included (validated, never bound).
    pub services: Vec<Arc<Service>>,
    /// What the file has that is valid but likely a mistake, one
    /// `PATH:LINE:COL: CONTEXT: warning: MESSAGE` line each, for `--check`
    /// and the log to say.
    pub warnings: Vec<String>,
    /// The drop-in (`[daemon] include`) each service came from, by service
    /// name; a service of the main file has no entry.
    pub origin: HashMap<String, PathBuf>,
}

impl Service {
    /// The sockets this service listens on, each with whether it is a bare
    /// `"PORT"`'s IPv6 half (which a host without IPv6 may skip).
    pub fn endpoints(&self) -> impl Iterator<Item = (Endpoint, bool)> + '_ {
        let protocol = self.protocol;
        self.listen.iter().flat_map(move |l| {
            let any = matches!(l, ListenAddr::Any(_));
            let unix = match l {
                ListenAddr::Unix(n) => Some((Endpoint::Unix(n.clone()), false)),
                _ => None,
            };
            l.sockets()
                .into_iter()
                .map(move |a| (protocol.endpoint(a), any && a.is_ipv6()))
                .chain(unix)
        })
    }

    /// Whether it listens on Unix sockets (the config makes a service's
    /// addresses all Unix or all IP).
    pub fn is_unix(&self) -> bool {
        self.listen.iter().any(ListenAddr::is_unix)
    }
}

impl Plan {
    /// The services to bind and serve.
    pub fn enabled(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.iter().filter(|s| s.enabled)
    }
}
