//! Reloading: SIGHUP starts the account lookups in a resolver child; when
//! it has answered, the file is loaded with its answers and the new plan is
//! applied (sockets reconciled, services carried over, logging reopened).

use std::collections::HashMap;
use std::time::Instant;

use serde_json::{json, Value};

use super::Supervisor;
use crate::config;
use crate::listen::{self, Change, Sockets};
use crate::log::Logger;
use crate::notify;
use crate::plan::{Endpoint, Level, Plan};
use crate::resolver;

impl Supervisor {
    /// SIGHUP: start a reload. The file is validated, then swapped in; an
    /// invalid file changes nothing. The account lookups the load needs may
    /// wait (a directory server that does not answer), so they are made by a
    /// resolver child ([`resolver::Pending`]) while the loop goes on serving;
    /// [`reload_progress`](Self::reload_progress) loads and applies the plan
    /// once it has answered.
    ///
    /// A SIGHUP while a reload is pending does not restart it (a stream of
    /// them would then never let one finish); it asks for one more reload
    /// when this one ends, so the file as it is then is the one loaded.
    pub(super) fn reload(&mut self, now: Instant) {
        if self.drain.is_some() {
            return;
        }
        if let Some(p) = &mut self.reloading {
            p.again = true;
            return;
        }
        match resolver::Pending::start(&self.plan.path, now) {
            Ok(p) => {
                // Reaped through its pidfd like a handler, and dropped.
                let pid = p.pid();
                self.children.adopt(pid, crate::spawn::pidfd_open(pid).ok());
                self.log
                    .event(Level::Debug, "reload-resolving")
                    .kv("pid", p.pid())
                    .send();
                self.reloading = Some(p);
            }
            Err(e) => self.reload_failed(&format!("starting the account resolver: {e}")),
        }
    }

    /// Reads the pending reload's resolver; at its end, loads the file with
    /// its answers and applies the plan. Returns true when a plan was applied.
    pub(super) fn reload_progress(&mut self, now: Instant) -> bool {
        let Some(p) = &mut self.reloading else {
            return false;
        };
        let applied = match p.read(now) {
            resolver::Progress::More => return false,
            resolver::Progress::Failed(why) => {
                self.reload_failed(&why);
                false
            }
            resolver::Progress::Done(record) => {
                let replay = config::Accounts::replay(&config::RealSystem, record);
                match config::load_with(&self.plan.path, false, &replay) {
                    Ok(plan) => {
                        self.apply(plan);
                        true
                    }
                    Err(e) => {
                        self.reload_failed(&e.to_string());
                        false
                    }
                }
            }
        };
        if self.reloading.take().is_some_and(|p| p.again) {
            self.reload(now);
        }
        applied
    }

    /// A reload that changed nothing: say why, in the log and the status.
    pub(super) fn reload_failed(&mut self, why: &str) {
        for line in why.lines() {
            self.log
                .event(Level::Error, "reload-failed")
                .kv("error", line)
                .send();
        }
        let first = why.lines().next().unwrap_or_default().to_string();
        let status = format!("reload failed, still serving the previous configuration: {first}");
        if let Err(e) = notify::status(&status) {
            self.log_notify_error(e);
        }
        self.status_sent = status;
        // `why` is the config error as `--check` prints it.
        self.reload_answer(&json!({
            "ok": false,
            "error": "the reload failed; the daemon still serves its previous configuration",
            "problems": why,
        }));
    }

    /// Makes a loaded plan current: sockets, services, logging.
    pub(super) fn apply(&mut self, plan: Plan) {
        if let Err(e) = notify::reloading() {
            self.log_notify_error(e);
        }
        self.reopen_log(&plan);
        for w in &plan.warnings {
            self.log
                .event(Level::Warn, "config-warning")
                .kv_long("warning", w)
                .send();
        }
        let mut held = Sockets::default();
        let mut carried = HashMap::new();
        for s in self.socks.drain(..) {
            held.owner
                .insert(s.addr.clone(), self.services.get(s.svc).svc.name.clone());
            held.opts.insert(s.addr.clone(), s.opts);
            held.by_addr.insert(s.addr.clone(), s.listener);
            carried.insert(s.addr, (s.backoff, s.retry_at, s.held));
        }
        // Who had each socket and who will: every listen/unlisten line
        // names its service.
        let owners = Owners {
            old: held.owner.clone(),
            new: plan
                .enabled()
                .flat_map(|s| s.endpoints().map(|(a, _)| (a, s.name.clone())))
                .collect(),
        };
        let changes = listen::reconcile(&mut held, &mut self.spare, &plan);
        let tally = self.log_changes(&changes, &owners);
        let before: Vec<(String, String)> = service_lines(&self.plan);
        let old_daemon = self.plan.daemon.clone();
        let old_addrs: Vec<Endpoint> = owners.old.keys().cloned().collect();
        self.install(plan, held, carried);
        let answer = self.changes(&before, &old_addrs, &tally);
        self.spawner.refresh_signals();
        self.log
            .event(Level::Info, "reload")
            .kv("services", self.services.len())
            .kv("sockets", self.socks.len())
            .kv("opened", tally.opened.len())
            .kv("closed", tally.closed.len())
            .kv("failed", tally.failed.len())
            .kv("kept", tally.kept)
            .send();
        let status = self.summary();
        if let Err(e) = notify::ready(&status) {
            self.log_notify_error(e);
        }
        self.status_sent = status;
        self.reload_answer(&json!({ "ok": true, "reload": answer }));
        // After the answer, which the old socket's clients get first.
        self.reconfigure_control(&old_daemon);
    }

    /// What a reload changed, for `tinyinetd reload`: services added,
    /// removed and changed (their `--check` line differs), sockets opened,
    /// closed, kept (open before and after), and those that failed.
    fn changes(&self, before: &[(String, String)], old_addrs: &[Endpoint], t: &Tally) -> Value {
        let after = service_lines(&self.plan);
        let names =
            |v: &[(String, String)]| -> Vec<String> { v.iter().map(|(n, _)| n.clone()).collect() };
        let has = |v: &[(String, String)], n: &str| {
            v.iter().find(|(m, _)| m == n).map(|(_, l)| l.clone())
        };
        let added: Vec<String> = names(&after)
            .into_iter()
            .filter(|n| has(before, n).is_none())
            .collect();
        let removed: Vec<String> = names(before)
            .into_iter()
            .filter(|n| has(&after, n).is_none())
            .collect();
        let changed: Vec<String> = after
            .iter()
            .filter(|(n, l)| has(before, n).is_some_and(|old| old != *l))
            .map(|(n, _)| n.clone())
            .collect();
        let addr = |a: &Endpoint| a.to_string();
        let kept: Vec<String> = self
            .socks
            .iter()
            .map(|s| &s.addr)
            .filter(|a| old_addrs.contains(a))
            .map(addr)
            .collect();
        json!({
            "config": self.plan.path.to_string_lossy(),
            "services_added": added,
            "services_removed": removed,
            "services_changed": changed,
            "sockets_opened": t.opened.iter().map(addr).collect::<Vec<_>>(),
            "sockets_closed": t.closed.iter().map(addr).collect::<Vec<_>>(),
            "sockets_kept": kept,
            "sockets_failed": t.failed,
        })
    }

    /// Opens the new log target if it changed, and sets the level.
    fn reopen_log(&mut self, plan: &Plan) {
        if plan.daemon.log != self.plan.daemon.log {
            let (logger, warning) = Logger::open(plan.daemon.log, plan.daemon.log_level);
            self.log = logger;
            if let Some(w) = warning {
                self.log
                    .event(Level::Warn, "log-fallback")
                    .kv("error", w)
                    .send();
            }
        }
        self.log.set_level(plan.daemon.log_level);
    }

    /// Logs each socket change of a reload and counts them for its summary.
    fn log_changes(&mut self, changes: &[Change], owners: &Owners) -> Tally {
        let mut t = Tally::default();
        for c in changes {
            match c {
                Change::Opened(a) => {
                    t.opened.push(a.clone());
                    self.log
                        .event(Level::Info, "listen")
                        .opt("service", owners.new.get(a))
                        .kv("addr", a)
                        .send();
                }
                Change::Closed(a) => {
                    t.closed.push(a.clone());
                    self.log
                        .event(Level::Info, "unlisten")
                        .opt("service", owners.old.get(a))
                        .kv("addr", a)
                        .send();
                }
                Change::Failed(e) => {
                    t.failed.push(format!("{e}"));
                    self.log
                        .event(Level::Error, "listen-failed")
                        .opt("service", owners.new.get(&e.addr))
                        .kv("addr", &e.addr)
                        .kv("error", e.to_string())
                        .send();
                }
                Change::NoIpv6(a) => super::log_no_ipv6(&mut self.log, a),
                Change::Updated(a) => self
                    .log
                    .event(Level::Info, "listen-updated")
                    .opt("service", owners.new.get(a))
                    .kv("addr", a)
                    .send(),
                Change::Rebound { addr, reason } => self
                    .log
                    .event(Level::Info, "listen-rebound")
                    .opt("service", owners.new.get(addr))
                    .kv("addr", addr)
                    .kv("reason", reason)
                    .send(),
                Change::Retained { addr, service } => {
                    t.kept += 1;
                    self.log
                        .event(Level::Warn, "listen-kept")
                        .kv("service", service)
                        .kv("addr", addr)
                        .kv(
                            "error",
                            "a new address of the service could not be opened; its old socket keeps serving",
                        )
                        .send();
                }
                Change::Lost { service, error } => {
                    t.failed.push(format!("{error}"));
                    self.log
                        .event(Level::Error, "listen-lost")
                        .kv("service", service)
                        .kv("addr", &error.addr)
                        .kv("error", error.to_string())
                        .send();
                }
            }
        }
        t
    }
}

/// The service of each socket address, before and after a reload.
struct Owners {
    /// From the sockets held before the reload.
    old: HashMap<Endpoint, String>,
    /// From the new plan's enabled services.
    new: HashMap<Endpoint, String>,
}

/// Each service's name and `--check` line, in plan order.
fn service_lines(plan: &Plan) -> Vec<(String, String)> {
    plan.services
        .iter()
        .map(|s| (s.name.clone(), config::describe_service(s)))
        .collect()
}

/// The socket changes of one reload, for its `reload` line and answer.
#[derive(Default)]
struct Tally {
    /// Addresses bound or adopted.
    opened: Vec<Endpoint>,
    /// Addresses closed.
    closed: Vec<Endpoint>,
    /// Why addresses could not be opened, or were lost.
    failed: Vec<String>,
    /// Old sockets kept for a service whose new address failed.
    kept: usize,
}
