//! The `[[service]]` tables: one short check per key group, each filling a
//! [`Draft`]; then the required keys, the resolution of the program and the
//! credentials, and the checks across services (unique names, no address
//! served twice).

use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::check::{esc, Checker, Value};
use super::fields::{check_env_name, parse_listen, valid_name};
use super::hardening::HARDENING_KEYS;
use super::proxy::{ProxyDraft, PROXY_KEYS};
use super::resolve::{exec_image, resolve_program};
use super::sockopt::{SockDraft, SOCKOPT_KEYS};
use super::wait::{handover_env, Written};
use super::System;
use crate::plan::{Access, Daemon, Hardening, Limits, ListenAddr, Protocol, Service, Stderr};
use crate::trust;

pub(super) const SERVICE_KEYS: &[&str] = &[
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
    "nice",
    "no_new_privs",
    "rlimit_nofile",
    "rlimit_nproc",
    "rlimit_core",
    "rlimit_fsize",
    "rlimit_as",
    "rlimit_cpu",
    "stderr",
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
    "protocol",
    "wait",
    "proxy_protocol",
    "trusted_proxies",
    "proxy_timeout",
];

/// A validated service with the spans that cross-service checks point at.
pub(super) struct Checked {
    /// The service itself, ready for the plan.
    pub(super) service: Service,
    /// Where the name was written, for the duplicate-name message.
    pub(super) name_span: Range<usize>,
    /// Where each listen entry was written, in `service.listen` order.
    pub(super) listen_spans: Vec<Range<usize>>,
}

/// What one `[[service]]` table says, key by key, before anything is
/// resolved; each value keeps the span its messages point at.
struct Draft {
    /// `service "NAME"` once the name is known, `service #N` before.
    ctx: String,
    /// The valid name; `None` when missing or unusable.
    name: Option<(String, Range<usize>)>,
    /// The distinct addresses, each with the span of its entry.
    listen: Vec<(ListenAddr, Range<usize>)>,
    /// Whether the key was present at all (an unusable one is not "missing").
    listen_seen: bool,
    /// The program as written (resolved later, in `build`).
    program: Option<(String, Range<usize>)>,
    /// `argv[1..]`.
    args: Vec<String>,
    /// `user` as written (resolved later, in `build`).
    user: Option<(String, Range<usize>)>,
    /// `group` as written, likewise.
    group: Option<(String, Range<usize>)>,
    /// The service's own variables, in file order.
    env: Vec<(String, String)>,
    /// The numeric limits and the timeout, defaults where not given.
    limits: Limits,
    /// `allow` and `deny`.
    access: Access,
    /// `enabled`, true unless the file says otherwise.
    enabled: bool,
    /// `umask`, 022 unless given.
    umask: u32,
    /// `nice`, `no_new_privs`, `rlimit_*`; their defaults where not given.
    hardening: Hardening,
    /// `stderr`, `"socket"` unless given.
    stderr: Stderr,
    /// The socket keys (`sockopt.rs`), with where each was written.
    sock: SockDraft,
    /// `protocol`, with where it was written (`wait.rs`).
    protocol: Written<Protocol>,
    /// `wait`, with where it was written (`wait.rs`).
    wait: Written<bool>,
    /// `proxy_protocol` and its partner keys, as written.
    proxy: ProxyDraft,
    /// False once a required part is unusable: the service is not built.
    ok: bool,
}

impl Draft {
    fn new(ctx: String) -> Draft {
        Draft {
            ctx,
            name: None,
            listen: Vec::new(),
            listen_seen: false,
            program: None,
            args: Vec::new(),
            user: None,
            group: None,
            env: Vec::new(),
            limits: Limits::default(),
            access: Access::default(),
            enabled: true,
            umask: 0o022,
            hardening: Hardening::default(),
            stderr: Stderr::default(),
            sock: SockDraft::default(),
            protocol: (Protocol::Tcp, None),
            wait: (false, None),
            proxy: ProxyDraft::default(),
            ok: true,
        }
    }
}

impl Checker<'_> {
    /// Checks every entry of the `[[service]]` array, in file order.
    pub(super) fn services(
        &mut self,
        array: &[Value<'_>],
        daemon: &Daemon,
        sys: &dyn System,
    ) -> Vec<Checked> {
        let (identity_uid, _) = sys.identity();
        let mut services = Vec::new();
        for (index, item) in array.iter().enumerate() {
            let context = format!("service #{}", index + 1);
            match item.get_ref() {
                DeValue::Table(t) => {
                    if let Some(s) =
                        self.service(t, item.span(), &context, daemon, sys, identity_uid)
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
        services
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
        let mut d = self.name(t, fallback_ctx);
        for (key, value) in t.iter() {
            let k = key.get_ref().as_ref();
            let ctx = d.ctx.clone();
            match k {
                "name" => {}
                "listen" => self.listen(value, &mut d),
                "program" => match self.string(value, &ctx, k) {
                    Some(s) => d.program = Some((s.to_string(), value.span())),
                    None => d.ok = false,
                },
                "args" => self.args(value, &mut d),
                "user" => {
                    if let Some(u) = self.spanned_string(value, &ctx, k) {
                        d.user = Some(u);
                    }
                }
                "group" => {
                    if let Some(g) = self.spanned_string(value, &ctx, k) {
                        d.group = Some(g);
                    }
                }
                "env" => self.env(value, &mut d),
                "max_instances" | "max_per_source" | "max_rate" | "source_prefix_v4"
                | "source_prefix_v6" | "timeout" => self.limit(k, value, &ctx, &mut d.limits),
                "allow" | "deny" => {
                    d.sock.saw(k, value.span());
                    let nets = self.nets(value, &ctx, k);
                    *if k == "allow" {
                        &mut d.access.allow
                    } else {
                        &mut d.access.deny
                    } = nets;
                }
                "enabled" => self.enabled(value, &mut d),
                "umask" => self.umask(value, &mut d),
                "stderr" => self.stderr(value, &mut d),
                "protocol" => d.protocol = self.protocol(value, &ctx).unwrap_or(d.protocol),
                "wait" => d.wait = self.wait(value, &ctx).unwrap_or(d.wait),
                k if PROXY_KEYS.contains(&k) => {
                    d.sock.saw(k, key.span());
                    self.proxy_key(key, value, &ctx, &mut d.proxy);
                }
                k if HARDENING_KEYS.contains(&k) => {
                    self.hardening(k, value, &ctx, &mut d.hardening, identity_uid)
                }
                k if SOCKOPT_KEYS.contains(&k) => self.sockopt(k, value, &ctx, &mut d.sock),
                _ => self.unknown_key(key, &ctx, SERVICE_KEYS),
            }
        }
        let ctx = d.ctx.clone();
        self.wait_mode(t, &ctx, (&d.protocol, &d.wait), &mut d.limits);
        self.required(t, &d, &span);
        let ctx = d.ctx.clone();
        self.sockopt_fit(&mut d.sock, &d.listen, &ctx, sys);
        self.wait_fit(&ctx, (&d.protocol, &d.wait), &d.listen, &d.sock);
        self.build(d, span, daemon, sys, identity_uid)
    }

    /// A draft with the service's name and context, when the name is valid.
    fn name(&mut self, t: &DeTable<'_>, fallback_ctx: &str) -> Draft {
        let mut d = Draft::new(fallback_ctx.to_string());
        if let Some((_, value)) = t.iter().find(|(k, _)| k.get_ref() == "name") {
            if let Some(n) = self.string(value, &d.ctx, "name") {
                if valid_name(n) {
                    d.ctx = format!("service \"{n}\"");
                    d.name = Some((n.to_string(), value.span()));
                } else {
                    let ctx = d.ctx.clone();
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
        d
    }

    /// A string value with its span, or `None` (and a problem) for another type.
    fn spanned_string(
        &mut self,
        value: &Value<'_>,
        ctx: &str,
        key: &str,
    ) -> Option<(String, Range<usize>)> {
        self.string(value, ctx, key)
            .map(|s| (s.to_string(), value.span()))
    }

    fn listen(&mut self, value: &Value<'_>, d: &mut Draft) {
        let ctx = d.ctx.clone();
        d.listen_seen = true;
        match self.array(value, &ctx, "listen") {
            Some([]) => {
                self.problem(value.span(), &ctx, "\"listen\" needs at least one address");
                d.ok = false;
            }
            Some(items) => {
                for item in items {
                    self.listen_entry(item, &ctx, d);
                }
            }
            None => d.ok = false,
        }
    }

    fn listen_entry(&mut self, item: &Value<'_>, ctx: &str, d: &mut Draft) {
        let Some(s) = self.string(item, ctx, "listen") else {
            d.ok = false;
            return;
        };
        match parse_listen(s) {
            Ok(a) => {
                if d.listen.iter().any(|(b, _)| *b == a) {
                    self.problem(
                        item.span(),
                        ctx,
                        format!("listen address \"{}\" is given twice", esc(s)),
                    );
                } else {
                    d.listen.push((a, item.span()));
                }
            }
            Err(m) => {
                self.problem(item.span(), ctx, m);
                d.ok = false;
            }
        }
    }

    fn args(&mut self, value: &Value<'_>, d: &mut Draft) {
        let ctx = d.ctx.clone();
        let Some(items) = self.array(value, &ctx, "args") else {
            return;
        };
        for item in items {
            if let Some(s) = self.string(item, &ctx, "args") {
                if s.contains('\0') {
                    self.problem(
                        item.span(),
                        &ctx,
                        "\"args\" entries cannot contain NUL bytes",
                    );
                }
                d.args.push(s.to_string());
            }
        }
    }

    fn env(&mut self, value: &Value<'_>, d: &mut Draft) {
        let ctx = d.ctx.clone();
        let vars = match value.get_ref() {
            DeValue::Table(vars) => vars,
            other => {
                self.problem(
                    value.span(),
                    &ctx,
                    format!(
                        "\"env\" must be a table like {{ NAME = \"value\" }}, not {}",
                        other.type_str()
                    ),
                );
                return;
            }
        };
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
                d.env.push((var.to_string(), s.to_string()));
            }
        }
    }

    /// The numeric limits and the timeout: each key its range.
    fn limit(&mut self, k: &str, value: &Value<'_>, ctx: &str, limits: &mut Limits) {
        let count = |ck: &mut Self, min, max| ck.count(value, ctx, k, min, max);
        match k {
            "max_instances" => {
                if let Some(n) = count(self, 1, 1_000_000) {
                    limits.max_instances = n;
                }
            }
            "max_per_source" => {
                if let Some(n) = count(self, 1, 1_000_000) {
                    limits.max_per_source = Some(n);
                }
            }
            "max_rate" => {
                if let Some(n) = count(self, 1, 1_000_000) {
                    limits.max_rate = Some(n as u32);
                }
            }
            "source_prefix_v4" => {
                if let Some(n) = count(self, 0, 32) {
                    limits.source_prefix_v4 = n as u8;
                }
            }
            "source_prefix_v6" => {
                if let Some(n) = count(self, 0, 128) {
                    limits.source_prefix_v6 = n as u8;
                }
            }
            _ => {
                if let Some(t) = self.duration(value, ctx, k, false) {
                    limits.timeout = Some(t);
                }
            }
        }
    }

    fn enabled(&mut self, value: &Value<'_>, d: &mut Draft) {
        match value.get_ref() {
            DeValue::Boolean(b) => d.enabled = *b,
            other => self.problem(
                value.span(),
                &d.ctx,
                format!(
                    "\"enabled\" must be true or false, not {}",
                    other.type_str()
                ),
            ),
        }
    }

    fn umask(&mut self, value: &Value<'_>, d: &mut Draft) {
        let ctx = d.ctx.clone();
        if let Some(s) = self.string(value, &ctx, "umask") {
            match u32::from_str_radix(s, 8) {
                Ok(m) if m <= 0o777 && !s.is_empty() => d.umask = m,
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

    /// `stderr = "socket" | "log" | "null"`.
    fn stderr(&mut self, value: &Value<'_>, d: &mut Draft) {
        let ctx = d.ctx.clone();
        if let Some(s) = self.string(value, &ctx, "stderr") {
            match s {
                "socket" => d.stderr = Stderr::Socket,
                "log" => d.stderr = Stderr::Log,
                "null" => d.stderr = Stderr::Null,
                _ => self.problem(
                    value.span(),
                    &ctx,
                    format!(
                        "\"stderr\" must be \"socket\", \"log\" or \"null\", not \"{}\"",
                        esc(s)
                    ),
                ),
            }
        }
    }

    /// A missing `name`, `listen` or `program` is reported at the table.
    fn required(&mut self, t: &DeTable<'_>, d: &Draft, span: &Range<usize>) {
        let has = |key: &str| t.iter().any(|(k, _)| k.get_ref() == key);
        if d.name.is_none() && !has("name") {
            self.problem(span.clone(), &d.ctx, "missing required key \"name\"");
        }
        if !d.listen_seen {
            self.problem(span.clone(), &d.ctx, "missing required key \"listen\"");
        }
        if d.program.is_none() && !has("program") {
            self.problem(span.clone(), &d.ctx, "missing required key \"program\"");
        }
    }

    /// Resolves the program and the credentials (both reported even when
    /// another part failed), then builds the service if every part is usable.
    fn build(
        &mut self,
        mut d: Draft,
        span: Range<usize>,
        daemon: &Daemon,
        sys: &dyn System,
        identity_uid: u32,
    ) -> Option<Checked> {
        let proxy = self.proxy_done(std::mem::take(&mut d.proxy), &d.ctx);
        let resolved = d.program.as_ref().and_then(|(p, pspan)| {
            let mode = trust::Mode::for_euid(identity_uid);
            match resolve_program(p, &daemon.handler_dir, sys, mode) {
                Ok(found) => Some(found),
                Err(m) => {
                    self.problem(pspan.clone(), &d.ctx, m);
                    None
                }
            }
        });
        let cred = self.cred(
            d.user.as_ref(),
            d.group.as_ref(),
            &d.ctx,
            sys,
            identity_uid,
            span,
        );
        let (name, name_span) = d.name?;
        let (program, pspan) = d.program?;
        let (path, fd) = resolved?;
        let cred = cred.ok()?;
        let interpreter = match fd {
            None => {
                let prog = (program.as_str(), &pspan);
                let found =
                    self.script_interpreter(prog, &path, cred.as_ref(), &d.env, &d.ctx, sys);
                found.ok()?
            }
            Some(_) => None,
        };
        if !d.ok {
            return None;
        }
        let mut image = exec_image(&name, &program, &path, fd, &d.args, &d.env, d.umask)?;
        image.hardening = d.hardening;
        image.interpreter = interpreter;
        let unix = d.listen.iter().any(|(a, _)| a.is_unix());
        let proto = if unix { "UNIX" } else { d.protocol.0.env() };
        handover_env(&mut image, &name, proto, d.wait.0)?;
        let listen_spans = d.listen.iter().map(|(_, s)| s.clone()).collect();
        Some(Checked {
            service: Service {
                name,
                listen: d.listen.into_iter().map(|(a, _)| a).collect(),
                image,
                cred,
                limits: d.limits,
                access: d.access,
                enabled: d.enabled,
                stderr: d.stderr,
                sockopts: d.sock.opts,
                protocol: d.protocol.0,
                wait: d.wait.0,
                proxy,
            },
            name_span,
            listen_spans,
        })
    }
}
