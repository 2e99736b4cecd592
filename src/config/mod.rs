//! TOML text → [`Plan`], with every problem reported as `PATH:LINE:COL: CONTEXT: MESSAGE`.
//!
//! The document is parsed into toml's spanned tree (`DeTable`) and walked by
//! hand rather than through serde: serde stops at the first error, and an
//! administrator fixing a file wants all of them at once, each pointing at the
//! key (for key errors) or the value (for value errors).
//!
//! Resolution that needs the system (users, groups, program paths) happens
//! here too, through the [`System`] trait, so the rest of the daemon — and the
//! forked child above all — never looks anything up.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::CString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::plan::{
    Access, Cred, Daemon, ExecImage, Level, Limits, ListenAddr, LogTarget, Plan, Service,
};
use crate::trust::{self, Refusal};

/// The default configuration file.
pub const DEFAULT_PATH: &str = "/etc/tinyinetd.toml";

/// The environment a handler starts from, before the service's `env`.
pub const DEFAULT_HANDLER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

const DAEMON_KEYS: &[&str] = &[
    "log",
    "log_level",
    "max_connections",
    "shutdown_timeout",
    "handler_dir",
];

const SERVICE_KEYS: &[&str] = &[
    "name",
    "listen",
    "program",
    "args",
    "user",
    "group",
    "env",
    "max_instances",
    "max_per_source",
    "max_rate",
    "allow",
    "deny",
    "timeout",
    "enabled",
    "source_prefix_v4",
    "source_prefix_v6",
    "umask",
];

/// Keys the specification reserves for later work (SPEC §10). They are
/// refused with a message that says so, rather than accepted and ignored:
/// a setting that silently does nothing is worse than an error.
const RESERVED_SERVICE_KEYS: &[&str] = &[
    "nice",
    "rlimit_nofile",
    "rlimit_as",
    "rlimit_cpu",
    "no_new_privs",
    "stderr",
    "proxy_protocol",
    "trusted_proxies",
    "protocol",
    "wait",
    "socket_mode",
    "socket_user",
    "socket_group",
];
const RESERVED_DAEMON_KEYS: &[&str] = &["control_socket"];

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based; 0 when the problem has no place in the file (it could not be read).
    pub line: usize,
    pub col: usize,
    /// `daemon`, `service "echo"`, `service #2`, or empty for the document.
    pub context: String,
    pub message: String,
}

/// Why a configuration could not be loaded: every problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:", self.path.display())?;
            if p.line > 0 {
                write!(f, "{}:{}:", p.line, p.col)?;
            }
            if !p.context.is_empty() {
                write!(f, " {}:", p.context)?;
            }
            write!(f, " {}", p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// What the loader asks of the system: who we are, who users are, what is
/// executable. A trait so that unit tests can validate configs without
/// depending on the machine's users.
pub trait System {
    /// The effective uid and gid of the daemon.
    fn identity(&self) -> (u32, u32);
    /// `(uid, primary gid)` of a user name; `Err` when the lookup itself
    /// failed (as opposed to: no such user).
    fn user(&self, name: &str) -> Result<Option<(u32, u32)>, String>;
    /// The name of `uid`; `Ok(None)` when it has none (a bare uid is valid).
    fn user_name(&self, uid: u32) -> Result<Option<String>, String>;
    fn group(&self, name: &str) -> Result<Option<u32>, String>;
    /// The name of `gid`; `Ok(None)` when it has none (a bare gid is valid).
    fn group_name(&self, gid: u32) -> Result<Option<String>, String>;
    /// Supplementary groups of `user` with `gid` included.
    fn group_list(&self, user: &str, gid: u32) -> Result<Vec<u32>, String>;
    /// The directory of the running daemon executable.
    fn exe_dir(&self) -> Option<PathBuf>;
    /// Opens and checks the program at `path` (`trust::program`): a regular
    /// file with an execute bit and, for a root daemon (`Mode::Root`), one
    /// that only root can change, as is every directory and symbolic link
    /// on the way to it and to a script's interpreter. Gives the descriptor
    /// to exec, or `None` to exec by path (a script: see `RealSystem`).
    fn program(&self, path: &Path, mode: trust::Mode) -> Result<Option<OwnedFd>, Refusal>;
}

/// The real system: users and groups through NSS (`accounts`: getent),
/// the file system.
pub struct RealSystem;

impl System for RealSystem {
    fn identity(&self) -> (u32, u32) {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    }
    fn user(&self, name: &str) -> Result<Option<(u32, u32)>, String> {
        // getent takes an all-digit key for a uid: only a name match counts.
        Ok(crate::accounts::passwd(name)?
            .filter(|p| p.name == name)
            .map(|p| (p.uid, p.gid)))
    }
    fn user_name(&self, uid: u32) -> Result<Option<String>, String> {
        Ok(crate::accounts::passwd(&uid.to_string())?.map(|p| p.name))
    }
    fn group(&self, name: &str) -> Result<Option<u32>, String> {
        Ok(crate::accounts::group(name)?
            .filter(|g| g.name == name)
            .map(|g| g.gid))
    }
    fn group_name(&self, gid: u32) -> Result<Option<String>, String> {
        Ok(crate::accounts::group(&gid.to_string())?.map(|g| g.name))
    }
    fn group_list(&self, user: &str, gid: u32) -> Result<Vec<u32>, String> {
        let mut list = vec![gid];
        for g in crate::accounts::initgroups(user)? {
            if !list.contains(&g) {
                list.push(g);
            }
        }
        Ok(list)
    }
    fn exe_dir(&self) -> Option<PathBuf> {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
    }
    /// Exec what was checked: a binary is exec'd through the `O_PATH`
    /// descriptor the check opened (`execveat(fd, "", AT_EMPTY_PATH)`),
    /// so a file put at its path later never runs in its place.
    ///
    /// A script (`#!`) is exec'd by its path instead. Through a descriptor
    /// the kernel hands the interpreter `/dev/fd/N` as the script's name:
    /// with `O_CLOEXEC` that descriptor is closed by the exec and the
    /// interpreter fails (ENOENT); without it the descriptor would leak
    /// into the handler and its `$0` would become `/dev/fd/N`. Exec'ing
    /// the checked path is safe for a root daemon because the check walked
    /// all of it: every directory and link on it, and the file, can be
    /// changed by root alone, and the interpreter named on the `#!` line
    /// went through the same walk. What a script runs as is therefore what
    /// root has put at that path (a root's edit takes effect on the next
    /// connection; a binary changes only at the next reload).
    fn program(&self, path: &Path, mode: trust::Mode) -> Result<Option<OwnedFd>, Refusal> {
        let p = trust::program(path, mode)?;
        Ok((!p.script).then_some(p.fd))
    }
}

/// Reads and validates the file at `path`. `default_path` says whether the
/// user named it, so that a missing default file can suggest `--config`.
///
/// The file is opened once and read through that descriptor, after the
/// checks of `trust::config`: a regular file of at most 1 MiB and, for a
/// root daemon, one that only root can change, down every directory and
/// symbolic link on its path. Nothing is looked up by path after the
/// check, so the file cannot be swapped between the check and the read.
///
/// Each account is looked up once (`resolver::Accounts`); the lookups may
/// wait, so the running daemon loads through a resolver child instead.
pub fn load(path: &Path, default_path: bool) -> Result<Plan, ConfigError> {
    load_with(
        path,
        default_path,
        &crate::resolver::Accounts::live(&RealSystem),
    )
}

/// [`load`], asking `sys`.
pub fn load_with(path: &Path, default_path: bool, sys: &dyn System) -> Result<Plan, ConfigError> {
    let whole = |message: String| ConfigError {
        path: path.to_path_buf(),
        problems: vec![Problem {
            line: 0,
            col: 0,
            context: String::new(),
            message,
        }],
    };
    let mode = trust::Mode::for_euid(sys.identity().0);
    let text = trust::config(path, mode).map_err(|r| match r {
        // A root daemon runs what this file says: if anyone but root can
        // change it, anyone can become root.
        Refusal::Untrusted(why) => whole(format!(
            "refusing a configuration that a user other than root can change: {why}"
        )),
        Refusal::Unusable(why, errno) => {
            let mut message = format!("cannot read the configuration: {why}");
            if default_path && errno == Some(nix::errno::Errno::ENOENT) {
                message.push_str(" (name another file with --config PATH)");
            }
            whole(message)
        }
    })?;
    let text = String::from_utf8(text).map_err(|e| {
        let (line, col) = line_col_bytes(e.as_bytes(), e.utf8_error().valid_up_to());
        ConfigError {
            path: path.to_path_buf(),
            problems: vec![Problem {
                line,
                col,
                context: String::new(),
                message: "the file is not valid UTF-8".into(),
            }],
        }
    })?;
    parse(path, &text, sys)
}

/// Validates `text` as the contents of `path`.
pub fn parse(path: &Path, text: &str, sys: &dyn System) -> Result<Plan, ConfigError> {
    let mut ck = Checker {
        text,
        problems: Vec::new(),
    };
    let plan = ck.document(path, sys);
    if ck.problems.is_empty() {
        if let Some(plan) = plan {
            return Ok(plan);
        }
    }
    ck.problems
        .sort_by_key(|p| (p.line == 0, p.line, p.col, p.message.clone()));
    Err(ConfigError {
        path: path.to_path_buf(),
        problems: ck.problems,
    })
}

/// Walks the document, collecting problems.
struct Checker<'t> {
    text: &'t str,
    problems: Vec<Problem>,
}

type Value<'i> = Spanned<DeValue<'i>>;

/// A validated service with the spans that cross-service checks point at.
struct Checked {
    service: Service,
    name_span: Range<usize>,
    listen_spans: Vec<Range<usize>>,
}

impl<'t> Checker<'t> {
    fn problem(&mut self, span: Range<usize>, context: &str, message: impl Into<String>) {
        let (line, col) = line_col(self.text, span.start);
        self.problems.push(Problem {
            line,
            col,
            context: context.to_string(),
            message: message.into(),
        });
    }

    fn document(&mut self, path: &Path, sys: &dyn System) -> Option<Plan> {
        let (root, errors) = DeTable::parse_recoverable(self.text);
        if !errors.is_empty() {
            for e in errors {
                let span = e.span().unwrap_or(0..0);
                let message = format!("TOML syntax error: {}", e.message().trim());
                self.problem(span, "", message);
            }
            return None;
        }
        let root = root.into_inner();
        let mut daemon_table = None;
        let mut service_array = None;
        for (key, value) in root.iter() {
            match key.get_ref().as_ref() {
                "daemon" => match value.get_ref() {
                    DeValue::Table(t) => daemon_table = Some(t),
                    other => self.problem(
                        value.span(),
                        "",
                        format!(
                            "\"daemon\" must be a table ([daemon]), not {}",
                            other.type_str()
                        ),
                    ),
                },
                "service" => match value.get_ref() {
                    DeValue::Array(a) => service_array = Some((a, value.span())),
                    other => self.problem(
                        value.span(),
                        "",
                        format!(
                            "\"service\" must be an array of tables ([[service]]), not {}",
                            other.type_str()
                        ),
                    ),
                },
                other => {
                    let hint = suggest(other, &["daemon", "service"]);
                    self.problem(
                        key.span(),
                        "",
                        format!("unknown key \"{}\"{hint}", esc(other)),
                    );
                }
            }
        }

        let daemon = match daemon_table {
            Some(t) => self.daemon(t),
            None => Daemon::default(),
        };

        let (identity_uid, _) = sys.identity();
        let mut services = Vec::new();
        match service_array {
            None => self.problem(
                0..0,
                "",
                "no [[service]] is defined: there is nothing to serve",
            ),
            Some((array, _)) => {
                for (index, item) in array.iter().enumerate() {
                    let context = format!("service #{}", index + 1);
                    match item.get_ref() {
                        DeValue::Table(t) => {
                            if let Some(s) =
                                self.service(t, item.span(), &context, &daemon, sys, identity_uid)
                            {
                                services.push(s);
                            }
                        }
                        other => self.problem(
                            item.span(),
                            &context,
                            format!("must be a table, not {}", other.type_str()),
                        ),
                    }
                }
            }
        }
        self.cross_check(&services);
        Some(Plan {
            path: path.to_path_buf(),
            daemon,
            services: services.into_iter().map(|c| Arc::new(c.service)).collect(),
        })
    }

    fn daemon(&mut self, t: &DeTable<'_>) -> Daemon {
        let ctx = "daemon";
        let mut d = Daemon::default();
        for (key, value) in t.iter() {
            let k = key.get_ref().as_ref();
            match k {
                "log" => {
                    if let Some(s) = self.string(value, ctx, k) {
                        match s {
                            "auto" => d.log = LogTarget::Auto,
                            "stderr" => d.log = LogTarget::Stderr,
                            "syslog" => d.log = LogTarget::Syslog,
                            _ => self.problem(
                                value.span(),
                                ctx,
                                format!(
                                    "\"log\" must be \"auto\", \"stderr\" or \"syslog\", not \"{}\"",
                                    esc(s)
                                ),
                            ),
                        }
                    }
                }
                "log_level" => {
                    if let Some(s) = self.string(value, ctx, k) {
                        match parse_level(s) {
                            Some(l) => d.log_level = l,
                            None => self.problem(
                                value.span(),
                                ctx,
                                format!(
                                    "\"log_level\" must be \"error\", \"warn\", \"info\" or \"debug\", not \"{}\"",
                                    esc(s)
                                ),
                            ),
                        }
                    }
                }
                "max_connections" => {
                    if let Some(n) = self.count(value, ctx, k, 1, 1_000_000) {
                        d.max_connections = n;
                    }
                }
                "shutdown_timeout" => {
                    if let Some(t) = self.duration(value, ctx, k, true) {
                        d.shutdown_timeout = t;
                    }
                }
                "handler_dir" => {
                    if let Some(s) = self.string(value, ctx, k) {
                        if s.starts_with('/') {
                            d.handler_dir = PathBuf::from(s);
                        } else {
                            self.problem(
                                value.span(),
                                ctx,
                                format!(
                                    "\"handler_dir\" must be an absolute path, not \"{}\"",
                                    esc(s)
                                ),
                            );
                        }
                    }
                }
                _ => self.unknown_key(key, ctx, DAEMON_KEYS, RESERVED_DAEMON_KEYS),
            }
        }
        d
    }

    fn unknown_key(
        &mut self,
        key: &Spanned<Cow<'_, str>>,
        ctx: &str,
        known: &[&str],
        reserved: &[&str],
    ) {
        let k = key.get_ref().as_ref();
        if reserved.contains(&k) {
            self.problem(
                key.span(),
                ctx,
                format!(
                    "key \"{k}\" is reserved for a later version and not supported by this one"
                ),
            );
        } else {
            let hint = suggest(k, known);
            self.problem(key.span(), ctx, format!("unknown key \"{}\"{hint}", esc(k)));
        }
    }

    /// Validates one `[[service]]`. Returns the service and the spans of its
    /// listen entries (for cross-service checks), or `None` if a required
    /// part is unusable.
    fn service(
        &mut self,
        t: &DeTable<'_>,
        span: Range<usize>,
        fallback_ctx: &str,
        daemon: &Daemon,
        sys: &dyn System,
        identity_uid: u32,
    ) -> Option<Checked> {
        // The name first, so every other message can say which service.
        let mut name = None;
        let mut ctx = fallback_ctx.to_string();
        if let Some((key, value)) = t.iter().find(|(k, _)| k.get_ref() == "name") {
            let _ = key;
            if let Some(n) = self.string(value, &ctx, "name") {
                if valid_name(n) {
                    ctx = format!("service \"{n}\"");
                    name = Some((n.to_string(), value.span()));
                } else {
                    self.problem(
                        value.span(),
                        &ctx,
                        format!(
                            "\"name\" must be 1 to 64 characters of a-z, 0-9, _ and -, not \"{}\"",
                            esc(n)
                        ),
                    );
                }
            }
        }

        let mut listen: Vec<(ListenAddr, Range<usize>)> = Vec::new();
        let mut listen_seen = false;
        let mut program: Option<(String, Range<usize>)> = None;
        let mut args: Vec<String> = Vec::new();
        let mut user: Option<(String, Range<usize>)> = None;
        let mut group: Option<(String, Range<usize>)> = None;
        let mut env: Vec<(String, String)> = Vec::new();
        let mut limits = Limits::default();
        let mut access = Access::default();
        let mut enabled = true;
        let mut umask = 0o022;
        let mut ok = true;

        for (key, value) in t.iter() {
            let k = key.get_ref().as_ref();
            match k {
                "name" => {}
                "listen" => {
                    listen_seen = true;
                    match self.array(value, &ctx, k) {
                        Some([]) => {
                            self.problem(
                                value.span(),
                                &ctx,
                                "\"listen\" needs at least one address",
                            );
                            ok = false;
                        }
                        Some(items) => {
                            for item in items {
                                let Some(s) = self.string(item, &ctx, "listen") else {
                                    ok = false;
                                    continue;
                                };
                                match parse_listen(s) {
                                    Ok(a) => {
                                        if listen.iter().any(|(b, _)| *b == a) {
                                            self.problem(
                                                item.span(),
                                                &ctx,
                                                format!(
                                                    "listen address \"{}\" is given twice",
                                                    esc(s)
                                                ),
                                            );
                                        } else {
                                            listen.push((a, item.span()));
                                        }
                                    }
                                    Err(m) => {
                                        self.problem(item.span(), &ctx, m);
                                        ok = false;
                                    }
                                }
                            }
                        }
                        None => ok = false,
                    }
                }
                "program" => match self.string(value, &ctx, k) {
                    Some(s) => program = Some((s.to_string(), value.span())),
                    None => ok = false,
                },
                "args" => {
                    if let Some(items) = self.array(value, &ctx, k) {
                        for item in items {
                            if let Some(s) = self.string(item, &ctx, "args") {
                                if s.contains('\0') {
                                    self.problem(
                                        item.span(),
                                        &ctx,
                                        "\"args\" entries cannot contain NUL bytes",
                                    );
                                }
                                args.push(s.to_string());
                            }
                        }
                    }
                }
                "user" => {
                    if let Some(s) = self.string(value, &ctx, k) {
                        user = Some((s.to_string(), value.span()));
                    }
                }
                "group" => {
                    if let Some(s) = self.string(value, &ctx, k) {
                        group = Some((s.to_string(), value.span()));
                    }
                }
                "env" => match value.get_ref() {
                    DeValue::Table(vars) => {
                        for (vk, vv) in vars.iter() {
                            let var = vk.get_ref().as_ref();
                            if let Err(m) = check_env_name(var) {
                                self.problem(vk.span(), &ctx, m);
                                continue;
                            }
                            if let Some(s) = self.string(vv, &ctx, &format!("env.{var}")) {
                                if s.contains('\0') {
                                    self.problem(
                                        vv.span(),
                                        &ctx,
                                        format!("env.{var} cannot contain NUL bytes"),
                                    );
                                    continue;
                                }
                                env.push((var.to_string(), s.to_string()));
                            }
                        }
                    }
                    other => self.problem(
                        value.span(),
                        &ctx,
                        format!(
                            "\"env\" must be a table like {{ NAME = \"value\" }}, not {}",
                            other.type_str()
                        ),
                    ),
                },
                "max_instances" => {
                    if let Some(n) = self.count(value, &ctx, k, 1, 1_000_000) {
                        limits.max_instances = n;
                    }
                }
                "max_per_source" => {
                    if let Some(n) = self.count(value, &ctx, k, 1, 1_000_000) {
                        limits.max_per_source = Some(n);
                    }
                }
                "max_rate" => {
                    if let Some(n) = self.count(value, &ctx, k, 1, 1_000_000) {
                        limits.max_rate = Some(n as u32);
                    }
                }
                "source_prefix_v4" => {
                    if let Some(n) = self.count(value, &ctx, k, 0, 32) {
                        limits.source_prefix_v4 = n as u8;
                    }
                }
                "source_prefix_v6" => {
                    if let Some(n) = self.count(value, &ctx, k, 0, 128) {
                        limits.source_prefix_v6 = n as u8;
                    }
                }
                "timeout" => {
                    if let Some(d) = self.duration(value, &ctx, k, false) {
                        limits.timeout = Some(d);
                    }
                }
                "allow" => access.allow = self.nets(value, &ctx, k),
                "deny" => access.deny = self.nets(value, &ctx, k),
                "enabled" => match value.get_ref() {
                    DeValue::Boolean(b) => enabled = *b,
                    other => self.problem(
                        value.span(),
                        &ctx,
                        format!(
                            "\"enabled\" must be true or false, not {}",
                            other.type_str()
                        ),
                    ),
                },
                "umask" => {
                    if let Some(s) = self.string(value, &ctx, k) {
                        match u32::from_str_radix(s, 8) {
                            Ok(m) if m <= 0o777 && !s.is_empty() => umask = m,
                            _ => self.problem(
                                value.span(),
                                &ctx,
                                format!(
                                    "\"umask\" must be an octal mode like \"022\", not \"{}\"",
                                    esc(s)
                                ),
                            ),
                        }
                    }
                }
                _ => self.unknown_key(key, &ctx, SERVICE_KEYS, RESERVED_SERVICE_KEYS),
            }
        }

        if name.is_none() && !t.iter().any(|(k, _)| k.get_ref() == "name") {
            self.problem(span.clone(), &ctx, "missing required key \"name\"");
        }
        if !listen_seen {
            self.problem(span.clone(), &ctx, "missing required key \"listen\"");
        }
        if program.is_none() && !t.iter().any(|(k, _)| k.get_ref() == "program") {
            self.problem(span.clone(), &ctx, "missing required key \"program\"");
        }

        let resolved = program.as_ref().and_then(|(p, pspan)| {
            let mode = trust::Mode::for_euid(identity_uid);
            match resolve_program(p, &daemon.handler_dir, sys, mode) {
                Ok(found) => Some(found),
                Err(m) => {
                    self.problem(pspan.clone(), &ctx, m);
                    None
                }
            }
        });

        let cred = self.cred(
            user.as_ref(),
            group.as_ref(),
            &ctx,
            sys,
            identity_uid,
            span.clone(),
        );

        let (name, name_span) = name?;
        let (program, _) = program?;
        let (path, fd) = resolved?;
        let cred = cred.ok()?;
        if !ok {
            return None;
        }
        let image = exec_image(&name, &program, &path, fd, &args, &env, umask)?;
        let listen_spans = listen.iter().map(|(_, s)| s.clone()).collect();
        Some(Checked {
            service: Service {
                name,
                listen: listen.into_iter().map(|(a, _)| a).collect(),
                program,
                image,
                cred,
                limits,
                access,
                enabled,
            },
            name_span,
            listen_spans,
        })
    }

    /// Resolves `user`/`group` into credentials, or `Ok(None)` when the
    /// daemon is not root and handlers simply keep its identity.
    #[allow(clippy::result_unit_err)]
    fn cred(
        &mut self,
        user: Option<&(String, Range<usize>)>,
        group: Option<&(String, Range<usize>)>,
        ctx: &str,
        sys: &dyn System,
        euid: u32,
        span: Range<usize>,
    ) -> Result<Option<Cred>, ()> {
        let (_, egid) = sys.identity();
        if euid != 0 {
            let mut bad = false;
            if let Some((u, uspan)) = user {
                match sys.user(u) {
                    Err(why) => {
                        self.problem(uspan.clone(), ctx, format!("user \"{}\": {why}", esc(u)));
                        bad = true;
                    }
                    Ok(None) => {
                        self.problem(uspan.clone(), ctx, format!("unknown user \"{}\"", esc(u)));
                        bad = true;
                    }
                    Ok(Some((uid, _))) if uid != euid => {
                        let me = name_or_number(sys.user_name(euid), euid);
                        self.problem(
                            uspan.clone(),
                            ctx,
                            format!(
                                "cannot run handlers as user \"{}\": the daemon runs as \"{me}\" (uid {euid}), not root; remove \"user\" or start the daemon as root",
                                esc(u)
                            ),
                        );
                        bad = true;
                    }
                    Ok(Some(_)) => {}
                }
            }
            if let Some((g, gspan)) = group {
                match sys.group(g) {
                    Err(why) => {
                        self.problem(gspan.clone(), ctx, format!("group \"{}\": {why}", esc(g)));
                        bad = true;
                    }
                    Ok(None) => {
                        self.problem(gspan.clone(), ctx, format!("unknown group \"{}\"", esc(g)));
                        bad = true;
                    }
                    Ok(Some(gid)) if gid != egid => {
                        let mine = name_or_number(sys.group_name(egid), egid);
                        self.problem(
                            gspan.clone(),
                            ctx,
                            format!(
                                "cannot run handlers with group \"{}\": the daemon runs with group \"{mine}\" (gid {egid}), not as root; remove \"group\" or start the daemon as root",
                                esc(g)
                            ),
                        );
                        bad = true;
                    }
                    Ok(Some(_)) => {}
                }
            }
            return if bad { Err(()) } else { Ok(None) };
        }

        let (uname, uspan) = match user {
            Some((u, s)) => (u.as_str(), s.clone()),
            None => ("nobody", span.clone()),
        };
        let found = match sys.user(uname) {
            Ok(found) => found,
            Err(why) => {
                self.problem(uspan, ctx, format!("user \"{}\": {why}", esc(uname)));
                return Err(());
            }
        };
        let Some((uid, primary)) = found else {
            let m = if user.is_some() {
                format!("unknown user \"{}\"", esc(uname))
            } else {
                "the default user \"nobody\" does not exist on this system; set \"user\""
                    .to_string()
            };
            self.problem(uspan, ctx, m);
            return Err(());
        };
        // Root by another name (`toor`, a uid-0 alias) is root: only the
        // word "root" may ask for it, so that a reader of the file sees it.
        if uid == 0 && uname != "root" {
            self.problem(
                uspan,
                ctx,
                format!(
                    "user \"{}\" has uid 0: handlers run as root only when the config says user = \"root\"",
                    esc(uname)
                ),
            );
            return Err(());
        }
        let (gid, gname) = match group {
            Some((g, gspan)) => match sys.group(g) {
                // The same for a group alias of gid 0 (group root opens
                // root-group files); a user's primary group is not checked.
                Ok(Some(0)) if g != "root" => {
                    self.problem(
                        gspan.clone(),
                        ctx,
                        format!(
                            "group \"{}\" has gid 0: handlers run with group root only when the config says group = \"root\"",
                            esc(g)
                        ),
                    );
                    return Err(());
                }
                Ok(Some(gid)) => (gid, g.clone()),
                Err(why) => {
                    self.problem(gspan.clone(), ctx, format!("group \"{}\": {why}", esc(g)));
                    return Err(());
                }
                Ok(None) => {
                    self.problem(gspan.clone(), ctx, format!("unknown group \"{}\"", esc(g)));
                    return Err(());
                }
            },
            // A primary gid without a group entry is valid and shown as its
            // number; a lookup that failed is an error, never that fallback.
            None => match sys.group_name(primary) {
                Ok(name) => (primary, name.unwrap_or_else(|| primary.to_string())),
                Err(why) => {
                    let at = user.map_or(span.clone(), |(_, s)| s.clone());
                    self.problem(
                        at,
                        ctx,
                        format!("primary group {primary} of user \"{}\": {why}", esc(uname)),
                    );
                    return Err(());
                }
            },
        };
        let list = match sys.group_list(uname, gid) {
            Ok(list) => list,
            Err(why) => {
                let at = user.map_or(span.clone(), |(_, s)| s.clone());
                self.problem(at, ctx, format!("groups of user \"{}\": {why}", esc(uname)));
                return Err(());
            }
        };
        let mut groups = vec![gid];
        for g in list {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        Ok(Some(Cred {
            user: uname.to_string(),
            group: gname,
            uid,
            gid,
            groups,
        }))
    }

    /// Checks across services: unique names, and no address served twice.
    fn cross_check(&mut self, services: &[Checked]) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        for c in services {
            let s = &c.service;
            if let Some(first) = names.insert(&s.name, line_col(self.text, c.name_span.start).0) {
                let ctx = format!("service \"{}\"", s.name);
                let m = format!(
                    "duplicate service name \"{}\" (first defined on line {first})",
                    s.name
                );
                self.problem(c.name_span.clone(), &ctx, m);
            }
        }
        // Every socket seen so far: (socket, service index, service name,
        // the address as that service wrote it). Each entry is compared with
        // those before it, within its own service too: `"127.0.0.1:P"` and
        // `"P"` in one service would fail at bind just the same.
        let mut seen: Vec<(SocketAddr, usize, &str, ListenAddr)> = Vec::new();
        for (index, c) in services.iter().enumerate() {
            let s = &c.service;
            for (addr, span) in s.listen.iter().zip(&c.listen_spans) {
                let clash = addr.sockets().into_iter().find_map(|sock| {
                    seen.iter()
                        .find(|(a, _, _, _)| conflicts(*a, sock))
                        .map(|(_, i, name, wrote)| (*i, *name, *wrote))
                });
                if let Some((other_index, other, wrote)) = clash {
                    let ctx = format!("service \"{}\"", s.name);
                    let m = if other_index == index {
                        format!("listen address \"{addr}\" overlaps \"{wrote}\" of this service")
                    } else if wrote == *addr {
                        format!("listen address \"{addr}\" is already used by service \"{other}\"")
                    } else {
                        format!(
                            "listen address \"{addr}\" conflicts with \"{wrote}\" of service \"{other}\""
                        )
                    };
                    self.problem(span.clone(), &ctx, m);
                }
                for sock in addr.sockets() {
                    seen.push((sock, index, &s.name, *addr));
                }
            }
        }
    }

    fn string<'v>(&mut self, v: &'v Value<'_>, ctx: &str, key: &str) -> Option<&'v str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            other => {
                self.problem(
                    v.span(),
                    ctx,
                    format!("\"{key}\" must be a string, not {}", other.type_str()),
                );
                None
            }
        }
    }

    fn array<'v, 'i>(&mut self, v: &'v Value<'i>, ctx: &str, key: &str) -> Option<&'v [Value<'i>]> {
        match v.get_ref() {
            DeValue::Array(a) => Some(a.as_ref()),
            other => {
                self.problem(
                    v.span(),
                    ctx,
                    format!(
                        "\"{key}\" must be an array like [\"...\"], not {}",
                        other.type_str()
                    ),
                );
                None
            }
        }
    }

    fn count(
        &mut self,
        v: &Value<'_>,
        ctx: &str,
        key: &str,
        min: usize,
        max: usize,
    ) -> Option<usize> {
        let n = match v.get_ref() {
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix()).ok(),
            other => {
                self.problem(
                    v.span(),
                    ctx,
                    format!("\"{key}\" must be an integer, not {}", other.type_str()),
                );
                return None;
            }
        };
        match n {
            Some(n) if n >= min as i128 && n <= max as i128 => Some(n as usize),
            _ => {
                self.problem(
                    v.span(),
                    ctx,
                    format!("\"{key}\" must be between {min} and {max}"),
                );
                None
            }
        }
    }

    fn duration(&mut self, v: &Value<'_>, ctx: &str, key: &str, zero_ok: bool) -> Option<Duration> {
        let s = self.string(v, ctx, key)?;
        match humantime::parse_duration(s) {
            Ok(d) if d.is_zero() && !zero_ok => {
                self.problem(v.span(), ctx, format!("\"{key}\" must be longer than zero"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(
                    v.span(),
                    ctx,
                    format!("\"{key}\": invalid duration \"{}\" ({e}); write e.g. \"250ms\", \"10s\", \"5m\"", esc(s)),
                );
                None
            }
        }
    }

    fn nets(&mut self, v: &Value<'_>, ctx: &str, key: &str) -> Vec<IpNet> {
        let mut out = Vec::new();
        let Some(items) = self.array(v, ctx, key) else {
            return out;
        };
        for item in items {
            let Some(s) = self.string(item, ctx, key) else {
                continue;
            };
            match parse_net(s) {
                Ok(n) => out.push(n),
                Err(m) => self.problem(item.span(), ctx, format!("\"{key}\": {m}")),
            }
        }
        out
    }
}

/// Whether two sockets would collide on bind: the same address, or a
/// wildcard and a specific address of the same family on the same port.
fn conflicts(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn parse_level(s: &str) -> Option<Level> {
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

fn check_env_name(var: &str) -> Result<(), String> {
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

/// Finds and opens the program: an absolute path as is, or a bare name in
/// `handler_dir`, then beside the daemon's own executable. A file found but
/// refused as one others can change ends the search (it is an error to
/// fix, not a reason to run another file of the same name).
fn resolve_program(
    p: &str,
    handler_dir: &Path,
    sys: &dyn System,
    mode: trust::Mode,
) -> Result<(PathBuf, Option<OwnedFd>), String> {
    let untrusted = |why: String| {
        format!(
            "program \"{}\": refusing to run a program that a user other than root can change: {why}",
            esc(p)
        )
    };
    if p.is_empty() {
        return Err("\"program\" cannot be empty".into());
    }
    if p.contains('\0') {
        return Err("\"program\" cannot contain NUL bytes".into());
    }
    if p.starts_with('/') {
        let path = PathBuf::from(p);
        return match sys.program(&path, mode) {
            Ok(fd) => Ok((path, fd)),
            Err(Refusal::Untrusted(why)) => Err(untrusted(why)),
            Err(Refusal::Unusable(why, _)) => Err(format!("program \"{}\": {why}", esc(p))),
        };
    }
    if p.contains('/') {
        return Err(format!(
            "program \"{}\" must be an absolute path or a bare file name",
            esc(p)
        ));
    }
    let mut tried = Vec::new();
    let mut dirs = vec![handler_dir.to_path_buf()];
    if let Some(d) = sys.exe_dir() {
        if d != handler_dir {
            dirs.push(d);
        }
    }
    for dir in dirs {
        let path = dir.join(p);
        match sys.program(&path, mode) {
            Ok(fd) => return Ok((path, fd)),
            Err(Refusal::Untrusted(why)) => return Err(untrusted(why)),
            Err(Refusal::Unusable(why, _)) => tried.push(format!("{}: {why}", path.display())),
        }
    }
    Err(format!(
        "program \"{}\" not found or not usable ({})",
        esc(p),
        tried.join("; ")
    ))
}

/// Builds the argv and the fixed environment as C strings, around the
/// checked program (`fd`, or `None` to exec `path`: see `RealSystem::program`).
fn exec_image(
    name: &str,
    program: &str,
    path: &Path,
    fd: Option<OwnedFd>,
    args: &[String],
    env: &[(String, String)],
    umask: u32,
) -> Option<ExecImage> {
    use std::os::unix::ffi::OsStrExt;
    let argv0 = program.rsplit('/').next().unwrap_or(program);
    let mut argv = vec![CString::new(argv0).ok()?];
    for a in args {
        argv.push(CString::new(a.as_str()).ok()?);
    }
    let mut vars = vec![
        ("PATH".to_string(), DEFAULT_HANDLER_PATH.to_string()),
        ("PROTO".to_string(), "TCP".to_string()),
        ("TINYINETD_SERVICE".to_string(), name.to_string()),
    ];
    for (k, v) in env {
        match vars.iter_mut().find(|(vk, _)| vk == k) {
            Some(slot) => slot.1 = v.clone(),
            None => vars.push((k.clone(), v.clone())),
        }
    }
    let env = vars
        .into_iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")).ok())
        .collect::<Option<Vec<_>>>()?;
    Some(ExecImage {
        path: CString::new(path.as_os_str().as_bytes()).ok()?,
        fd,
        argv,
        env,
        umask,
    })
}

/// "Did you mean" for a misspelt key: the known key nearest by edit
/// distance (a swap of two neighbours counts as one edit), when at most a
/// third of its characters differ: a plausible typo, not any short word.
fn suggest(key: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|k| (strsim::osa_distance(key, k), *k))
        .filter(|(d, k)| *d * 3 <= k.chars().count())
        .min()
        .map(|(_, k)| format!(" (did you mean \"{k}\"?)"))
        .unwrap_or_default()
}

/// A name for a message that is already an error: the name, the number
/// when there is none, and why when the lookup itself failed.
fn name_or_number(found: Result<Option<String>, String>, id: u32) -> String {
    match found {
        Ok(Some(name)) => name,
        Ok(None) => id.to_string(),
        Err(why) => format!("{id}, whose name could not be looked up: {why}"),
    }
}

/// Escapes text taken from the file for a message: no control bytes, bounded.
fn esc(s: &str) -> String {
    crate::text::escape(s)
}

/// 1-based line and column (in characters) of byte offset `at`.
pub fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = &text.as_bytes()[..at];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let col = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, col)
}

fn line_col_bytes(bytes: &[u8], at: usize) -> (usize, usize) {
    line_col(&String::from_utf8_lossy(&bytes[..at]), at)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine with users root(0), nobody(65534), alice(1000) and an
    /// executable at /bin/handler and /opt/h/echo.
    struct FakeSystem {
        euid: u32,
    }

    impl System for FakeSystem {
        fn identity(&self) -> (u32, u32) {
            (self.euid, self.euid)
        }
        fn user(&self, name: &str) -> Result<Option<(u32, u32)>, String> {
            Ok(match name {
                "ldapuser" => return Err("getent passwd ldapuser: no answer within 10s".into()),
                "root" => Some((0, 0)),
                "toor" => Some((0, 0)),
                "nobody" => Some((65534, 65534)),
                "alice" => Some((1000, 1000)),
                "slowgroup" => Some((1001, 4242)),
                "bare" => Some((1002, 7777)),
                _ => None,
            })
        }
        fn user_name(&self, uid: u32) -> Result<Option<String>, String> {
            Ok(Some(match uid {
                0 => "root".into(),
                1000 => "alice".into(),
                _ => return Ok(None),
            }))
        }
        fn group(&self, name: &str) -> Result<Option<u32>, String> {
            Ok(match name {
                "root" => Some(0),
                "wheel0" => Some(0),
                "nogroup" => Some(65534),
                "alice" => Some(1000),
                "staff" => Some(50),
                _ => None,
            })
        }
        fn group_name(&self, gid: u32) -> Result<Option<String>, String> {
            Ok(Some(match gid {
                0 => "root".into(),
                65534 => "nogroup".into(),
                1000 => "alice".into(),
                4242 => return Err("getent group 4242: no answer within 10s".into()),
                _ => return Ok(None),
            }))
        }
        fn group_list(&self, user: &str, gid: u32) -> Result<Vec<u32>, String> {
            Ok(if user == "alice" {
                vec![gid, 50]
            } else {
                vec![gid]
            })
        }
        fn exe_dir(&self) -> Option<PathBuf> {
            Some(PathBuf::from("/opt/build"))
        }
        fn program(&self, path: &Path, mode: trust::Mode) -> Result<Option<OwnedFd>, Refusal> {
            match path.to_str() {
                Some("/opt/h/loose") if mode == trust::Mode::Root => Err(Refusal::Untrusted(
                    "/opt/h/loose is writable by others (mode 0777)".into(),
                )),
                Some(
                    "/bin/handler" | "/opt/h/echo" | "/opt/h/loose" | "/opt/build/tinyinetd-sum",
                ) => Ok(None),
                Some("/bin/plain") => Err(Refusal::Unusable(
                    "not executable (no execute permission)".into(),
                    None,
                )),
                _ => Err(Refusal::Unusable(
                    "No such file or directory".into(),
                    Some(nix::errno::Errno::ENOENT),
                )),
            }
        }
    }

    fn check(text: &str, euid: u32) -> Result<Plan, ConfigError> {
        parse(Path::new("t.toml"), text, &FakeSystem { euid })
    }

    fn errors(text: &str) -> String {
        match check(text, 0) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    const MINIMAL: &str = r#"
[daemon]
handler_dir = "/opt/h"

[[service]]
name = "echo"
listen = ["127.0.0.1:9877"]
program = "echo"
"#;

    #[test]
    fn minimal_service_resolves_everything() {
        let plan = check(MINIMAL, 0).unwrap();
        let s = &plan.services[0];
        assert_eq!(s.name, "echo");
        assert_eq!(
            s.listen,
            vec![ListenAddr::Addr("127.0.0.1:9877".parse().unwrap())]
        );
        assert_eq!(s.image.path.to_str().unwrap(), "/opt/h/echo");
        assert_eq!(s.image.argv, vec![CString::new("echo").unwrap()]);
        let cred = s.cred.as_ref().unwrap();
        assert_eq!(
            (cred.uid, cred.gid, cred.user.as_str(), cred.group.as_str()),
            (65534, 65534, "nobody", "nogroup")
        );
        assert_eq!(s.limits, Limits::default());
        assert!(s.enabled);
        assert_eq!(
            s.image.env,
            [
                "PATH=/usr/local/bin:/usr/bin:/bin",
                "PROTO=TCP",
                "TINYINETD_SERVICE=echo"
            ]
            .map(|v| CString::new(v).unwrap())
        );
    }

    #[test]
    fn every_key_is_read() {
        let text = r#"
[daemon]
log = "stderr"
log_level = "debug"
max_connections = 10
shutdown_timeout = "250ms"
handler_dir = "/opt/h"

[[service]]
name = "a-1_b"
listen = ["127.0.0.1:1", "[::1]:2", "3"]
program = "/bin/handler"
args = ["-x", "y z"]
user = "alice"
group = "staff"
env = { GREETING = "hello", PATH = "/opt/bin" }
max_instances = 5
max_per_source = 2
max_rate = 7
allow = ["127.0.0.0/8", "::1"]
deny = ["127.0.0.2"]
timeout = "1m"
enabled = false
source_prefix_v4 = 24
source_prefix_v6 = 48
umask = "077"
"#;
        let plan = check(text, 0).unwrap();
        assert_eq!(plan.daemon.log, LogTarget::Stderr);
        assert_eq!(plan.daemon.log_level, Level::Debug);
        assert_eq!(plan.daemon.max_connections, 10);
        assert_eq!(plan.daemon.shutdown_timeout, Duration::from_millis(250));
        let s = &plan.services[0];
        assert_eq!(s.listen.len(), 3);
        assert_eq!(s.listen[2], ListenAddr::Any(3));
        assert_eq!(s.image.argv.len(), 3);
        assert_eq!(s.image.argv[0].to_str().unwrap(), "handler");
        let cred = s.cred.as_ref().unwrap();
        assert_eq!(
            (cred.uid, cred.gid, cred.groups.clone()),
            (1000, 50, vec![50])
        );
        assert_eq!(
            s.image.env,
            [
                "PATH=/opt/bin",
                "PROTO=TCP",
                "TINYINETD_SERVICE=a-1_b",
                "GREETING=hello"
            ]
            .map(|v| CString::new(v).unwrap())
        );
        assert_eq!(s.limits.max_instances, 5);
        assert_eq!(s.limits.max_per_source, Some(2));
        assert_eq!(s.limits.max_rate, Some(7));
        assert_eq!(s.limits.timeout, Some(Duration::from_secs(60)));
        assert_eq!(
            (s.limits.source_prefix_v4, s.limits.source_prefix_v6),
            (24, 48)
        );
        assert_eq!(s.access.allow.len(), 2);
        assert_eq!(
            s.access.deny,
            vec!["127.0.0.2/32".parse::<IpNet>().unwrap()]
        );
        assert!(!s.enabled);
        assert_eq!(s.image.umask, 0o077);
    }

    #[test]
    fn unknown_key_points_at_the_key_and_suggests() {
        let e = errors(&format!("{MINIMAL}max_instance = 3\n"));
        assert_eq!(
            e,
            "t.toml:9:1: service \"echo\": unknown key \"max_instance\" (did you mean \"max_instances\"?)"
        );
    }

    #[test]
    fn value_errors_point_at_the_value() {
        let e = errors(&MINIMAL.replace("\"127.0.0.1:9877\"", "\"127.0.0.1\""));
        assert!(
            e.starts_with("t.toml:7:11: service \"echo\": invalid listen address \"127.0.0.1\""),
            "{e}"
        );
    }

    #[test]
    fn all_errors_are_reported() {
        let text = r#"
[daemon]
log = "loud"
shutdown_timeout = "5"

[[service]]
name = "Echo!"
listen = ["127.0.0.1:0"]
program = "missing"
allow = ["10.0.0.1/8"]
"#;
        let e = errors(text);
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 6, "{e}");
        assert!(
            lines[0].starts_with("t.toml:3:7: daemon: \"log\" must be"),
            "{e}"
        );
        assert!(
            lines[1].starts_with("t.toml:4:20: daemon: \"shutdown_timeout\": invalid duration"),
            "{e}"
        );
        assert!(
            lines[2].starts_with("t.toml:7:8: service #1: \"name\" must be"),
            "{e}"
        );
        assert!(
            lines[3].contains("8:11") && lines[3].contains("port must be 1 to 65535"),
            "{e}"
        );
        assert!(
            lines[5].contains(
                "\"allow\": \"10.0.0.1/8\" has host bits set; did you mean \"10.0.0.0/8\"?"
            ),
            "{e}"
        );
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let e = errors("[[service]]\nname = \"echo\nlisten = []\n");
        assert!(e.starts_with("t.toml:2:"), "{e}");
        assert!(e.contains("TOML syntax error"), "{e}");
    }

    #[test]
    fn duplicate_names_and_addresses() {
        let text = format!(
            "{MINIMAL}\n[[service]]\nname = \"echo\"\nlisten = [\"9877\"]\nprogram = \"echo\"\n"
        );
        let e = errors(&text);
        assert!(e.contains("t.toml:11:8: service \"echo\": duplicate service name \"echo\" (first defined on line 6)"), "{e}");
        assert!(e.contains("t.toml:12:11: service \"echo\": listen address \"9877\" conflicts with \"127.0.0.1:9877\" of service \"echo\""), "{e}");
    }

    #[test]
    fn missing_required_keys() {
        let e = errors("[[service]]\nname = \"x\"\n");
        assert!(
            e.contains("service \"x\": missing required key \"listen\""),
            "{e}"
        );
        assert!(
            e.contains("service \"x\": missing required key \"program\""),
            "{e}"
        );
        assert_eq!(
            errors("[daemon]\n"),
            "t.toml:1:1: no [[service]] is defined: there is nothing to serve"
        );
    }

    #[test]
    fn programs_are_checked() {
        let e = errors(&MINIMAL.replace("program = \"echo\"", "program = \"/bin/plain\""));
        assert!(
            e.contains("8:11: service \"echo\": program \"/bin/plain\": not executable"),
            "{e}"
        );
        let e = errors(&MINIMAL.replace("program = \"echo\"", "program = \"nope\""));
        assert!(e.contains("program \"nope\" not found or not usable (/opt/h/nope: No such file or directory; /opt/build/nope: No such file or directory)"), "{e}");
        let e = errors(&MINIMAL.replace("program = \"echo\"", "program = \"bin/echo\""));
        assert!(
            e.contains("must be an absolute path or a bare file name"),
            "{e}"
        );
        // Found beside the daemon when not in handler_dir.
        let plan = check(
            &MINIMAL.replace("program = \"echo\"", "program = \"tinyinetd-sum\""),
            0,
        )
        .unwrap();
        assert_eq!(
            plan.services[0].image.path.to_str().unwrap(),
            "/opt/build/tinyinetd-sum"
        );
    }

    #[test]
    fn users_when_not_root() {
        // Not root, no user: handlers keep the daemon's identity.
        assert_eq!(check(MINIMAL, 1000).unwrap().services[0].cred, None);
        let e = parse(
            Path::new("t.toml"),
            &format!("{MINIMAL}user = \"nobody\"\n"),
            &FakeSystem { euid: 1000 },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("9:8: service \"echo\": cannot run handlers as user \"nobody\": the daemon runs as \"alice\""), "{e}");
        let e = parse(
            Path::new("t.toml"),
            &format!("{MINIMAL}user = \"ghost\"\n"),
            &FakeSystem { euid: 1000 },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown user \"ghost\""), "{e}");
        assert!(check(&format!("{MINIMAL}user = \"alice\"\n"), 1000).is_ok());
    }

    #[test]
    fn a_failed_lookup_is_reported_as_such_not_as_unknown() {
        let e = errors(&format!("{MINIMAL}user = \"ldapuser\"\n"));
        assert!(
            e.contains("9:8: service \"echo\": user \"ldapuser\": getent passwd ldapuser: no answer within 10s"),
            "{e}"
        );
        assert!(!e.contains("unknown user"), "{e}");
    }

    #[test]
    fn a_failed_primary_group_lookup_is_an_error_not_the_number() {
        let e = errors(&format!("{MINIMAL}user = \"slowgroup\"\n"));
        assert!(
            e.contains("9:8: service \"echo\": primary group 4242 of user \"slowgroup\": getent group 4242: no answer within 10s"),
            "{e}"
        );
        // A gid that has no group at all is valid, and shown as its number.
        let plan = check(&format!("{MINIMAL}user = \"bare\"\n"), 0).unwrap();
        assert_eq!(plan.services[0].cred.as_ref().unwrap().group, "7777");
    }

    #[test]
    fn a_root_daemon_refuses_programs_others_can_change() {
        let loose = MINIMAL.replace("program = \"echo\"", "program = \"loose\"");
        let e = errors(&loose);
        assert!(e.contains("8:11: service \"echo\": program \"loose\": refusing to run a program that a user other than root can change: /opt/h/loose is writable by others"), "{e}");
        // Not root: the daemon cannot raise anyone's privileges, no check.
        assert!(check(&loose, 1000).is_ok());
    }

    #[test]
    fn root_by_another_name_is_refused() {
        let e = errors(&format!("{MINIMAL}user = \"toor\"\n"));
        assert!(e.contains("9:8: service \"echo\": user \"toor\" has uid 0: handlers run as root only when the config says user = \"root\""), "{e}");
        let e = errors(&format!("{MINIMAL}group = \"wheel0\"\n"));
        assert!(e.contains("9:9: service \"echo\": group \"wheel0\" has gid 0: handlers run with group root only when the config says group = \"root\""), "{e}");
        let plan = check(&format!("{MINIMAL}user = \"root\"\ngroup = \"root\"\n"), 0).unwrap();
        let cred = plan.services[0].cred.as_ref().unwrap();
        assert_eq!((cred.uid, cred.gid), (0, 0));
    }

    #[test]
    fn env_may_not_redefine_connection_variables() {
        let e = errors(&format!("{MINIMAL}env = {{ TCPREMOTEIP = \"x\" }}\n"));
        assert!(
            e.contains("9:9: service \"echo\": env: \"TCPREMOTEIP\" is set by tinyinetd"),
            "{e}"
        );
        let e = errors(&format!("{MINIMAL}env = {{ \"1X\" = \"x\" }}\n"));
        assert!(e.contains("not a valid variable name"), "{e}");
    }

    #[test]
    fn reserved_keys_are_refused_not_ignored() {
        let e = errors(&format!("{MINIMAL}wait = true\n"));
        assert!(
            e.contains("key \"wait\" is reserved for a later version"),
            "{e}"
        );
    }

    #[test]
    fn listen_forms() {
        assert_eq!(parse_listen("80"), Ok(ListenAddr::Any(80)));
        assert_eq!(
            parse_listen("[::1]:7"),
            Ok(ListenAddr::Addr("[::1]:7".parse().unwrap()))
        );
        assert!(parse_listen("[::1]").is_err());
        assert!(parse_listen("localhost:80").is_err());
        assert!(parse_listen("70000").is_err());
        assert!(parse_listen("0").is_err());
        assert!(parse_listen("").is_err());
    }

    #[test]
    fn listen_address_errors_say_what_is_wrong() {
        let err = |s: &str| parse_listen(s).unwrap_err();
        assert_eq!(
            err("127.0.0.1:99999"),
            "invalid listen address \"127.0.0.1:99999\": the port must be 1 to 65535"
        );
        assert_eq!(
            err("[::1]:0"),
            "invalid listen address \"[::1]:0\": the port must be 1 to 65535"
        );
        assert_eq!(
            err("::1:19001"),
            "invalid listen address \"::1:19001\": an IPv6 address needs brackets, as in \"[::1]:19001\""
        );
        assert_eq!(
            err("localhost:19001"),
            "invalid listen address \"localhost:19001\": host names are not accepted; write an address, such as \"127.0.0.1:19001\" or \"[::1]:19001\""
        );
        assert_eq!(
            err("127.0.0.1"),
            "invalid listen address \"127.0.0.1\": expected \"IPv4:PORT\", \"[IPv6]:PORT\" or \"PORT\""
        );
    }

    #[test]
    fn a_conflict_names_what_each_service_wrote() {
        let text = format!(
            "{MINIMAL}\n[[service]]\nname = \"other\"\nlisten = [\"9877\"]\nprogram = \"echo\"\n"
        );
        assert_eq!(
            errors(&text),
            "t.toml:12:11: service \"other\": listen address \"9877\" conflicts with \"127.0.0.1:9877\" of service \"echo\""
        );
    }

    #[test]
    fn overlapping_addresses_within_one_service_are_errors() {
        let text = MINIMAL.replace(
            "listen = [\"127.0.0.1:9877\"]",
            "listen = [\"127.0.0.1:9877\", \"9877\"]",
        );
        assert_eq!(
            errors(&text),
            "t.toml:7:29: service \"echo\": listen address \"9877\" overlaps \"127.0.0.1:9877\" of this service"
        );
    }

    #[test]
    fn suggestions_are_only_close_matches() {
        assert_eq!(
            suggest("max_instance", SERVICE_KEYS),
            " (did you mean \"max_instances\"?)"
        );
        assert_eq!(
            suggest("listne", SERVICE_KEYS),
            " (did you mean \"listen\"?)"
        );
        assert_eq!(suggest("dney", SERVICE_KEYS), " (did you mean \"deny\"?)");
        assert_eq!(suggest("ident", SERVICE_KEYS), "");
        assert_eq!(suggest("xyz", SERVICE_KEYS), "");
    }

    #[test]
    fn wildcard_conflicts_with_specific_same_family() {
        let a: SocketAddr = "0.0.0.0:80".parse().unwrap();
        assert!(conflicts(a, "127.0.0.1:80".parse().unwrap()));
        assert!(!conflicts(a, "[::1]:80".parse().unwrap()));
        assert!(!conflicts(a, "127.0.0.1:81".parse().unwrap()));
    }

    #[test]
    fn nets() {
        assert_eq!(
            parse_net("::ffff:10.1.2.3").unwrap(),
            "10.1.2.3/32".parse::<IpNet>().unwrap()
        );
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("2001:db8::1/32")
            .unwrap_err()
            .contains("host bits"));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// Config-shaped text: known keys (and near misses) with values of
        /// every TOML type, in tables and arrays of tables.
        fn configish() -> impl Strategy<Value = String> {
            let key = prop_oneof![
                proptest::sample::select(SERVICE_KEYS.to_vec()).prop_map(String::from),
                proptest::sample::select(DAEMON_KEYS.to_vec()).prop_map(String::from),
                "[a-z_]{1,12}",
            ];
            let value = prop_oneof![
                "\"[ -~]{0,24}\"",
                "-?[0-9]{1,22}",
                Just("true".to_string()),
                Just("[\"127.0.0.1:80\", \"[::1]:80\", \"80\"]".to_string()),
                Just("{ A = \"b\" }".to_string()),
                Just("\"10s\"".to_string()),
                Just("1.5".to_string()),
                Just("1979-05-27".to_string()),
                "[ -~]{0,16}",
            ];
            let line = (key, value).prop_map(|(k, v)| format!("{k} = {v}"));
            let header = prop_oneof![
                Just("[daemon]".to_string()),
                Just("[[service]]".to_string()),
                Just("[service]".to_string()),
                "\\[[ -~]{0,8}",
            ];
            proptest::collection::vec(prop_oneof![line, header], 0..24).prop_map(|v| v.join("\n"))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn any_text_is_ok_or_errors_never_a_panic(text in "\\PC{0,400}") {
                let _ = parse(Path::new("p.toml"), &text, &FakeSystem { euid: 0 });
            }

            #[test]
            fn configish_text_gives_errors_with_positions(text in configish()) {
                if let Err(e) = parse(Path::new("p.toml"), &text, &FakeSystem { euid: 0 }) {
                    prop_assert!(!e.problems.is_empty());
                    for p in &e.problems {
                        prop_assert!(p.line >= 1 && p.col >= 1, "{:?}", p);
                        prop_assert!(p.line <= text.lines().count().max(1), "{:?}", p);
                        prop_assert!(!p.message.contains('\n'));
                    }
                }
            }

            #[test]
            fn listen_and_net_parsers_never_panic(s in "\\PC{0,40}") {
                let _ = parse_listen(&s);
                let _ = parse_net(&s);
            }
        }
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
        assert_eq!(line_col("", 0), (1, 1));
    }
}
