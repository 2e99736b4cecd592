//! Handlers ending: reaping them (and what an exec failure or success
//! means for their service's back-off), sending the signals that are due
//! (a `timeout`, the shutdown), and SIGTERM's start of the drain.

use std::time::Instant;

use nix::sys::signal::Signal;

use super::{Drain, Supervisor};
use crate::children::{Child, Status, Termination};
use crate::notify;
use crate::plan::Client;
use crate::plan::Level;
use crate::shrink::Shrink;
use crate::spawn::{Failure, Step};

/// Connections taken from one listener at SIGTERM at most: what the kernel
/// had already queued (its default `somaxconn` is 4096), served before the
/// listener closes and would reset them.
const SHUTDOWN_ACCEPT_LIMIT: usize = 4096;

impl Supervisor {
    /// A reaped child failed before or at its exec: count it, back the
    /// service off, and log it: the first of an episode at `error` (with
    /// the delay), the rest at `debug`, summed up when the episode ends.
    /// `svc_i`: the child's service in the current plan, if it still has one.
    fn exec_failed(&mut self, svc_i: Option<usize>, c: &Child, f: Failure, now: Instant) {
        let svc = &c.service;
        let noted = svc_i.map(|i| self.services.exec_failed(i, c.started, now));
        let level = match noted {
            Some(n) if !n.first => Level::Debug,
            _ => Level::Error,
        };
        let retry = noted.and_then(|n| n.retry);
        // The script is there: the kernel's ENOENT or EACCES was about its
        // interpreter, which the line names (as the load found it).
        let interpreter = match (f.step, &svc.image.interpreter) {
            (Step::ExecInterpreter, Some(i)) => Some(i.display().to_string()),
            _ => None,
        };
        self.log
            .event(level, "exec-failed")
            .kv("service", &svc.name)
            .kv("conn", c.conn_id)
            .kv("pid", c.pid)
            .kv("peer", &c.peer)
            .opt("proxy", c.proxy)
            .kv("program", svc.image.path.to_string_lossy())
            .kv("step", f.step.as_str())
            .kv("error", crate::text::os_error(f.errno))
            .opt("interpreter", interpreter)
            .opt("retry_ms", retry.map(|d| d.as_millis()))
            .send();
    }

    /// A reaped child reached its handler: if it started after its
    /// service's exec failures began, they are over.
    fn exec_succeeded(&mut self, svc_i: Option<usize>, c: &Child, now: Instant) {
        let Some(i) = svc_i else {
            return;
        };
        if let Some((failures, duration)) = self.services.exec_succeeded(i, c.started, now) {
            self.log
                .event(Level::Info, "exec-recovered")
                .kv("service", &c.service.name)
                .kv("failures", failures)
                .kv("duration_ms", duration.as_millis())
                .send();
        }
    }

    pub(super) fn reap(&mut self, now: Instant) {
        let mut exits = std::mem::take(&mut self.exits);
        self.children.reap(now, &mut exits);
        for exit in exits.drain(..) {
            let c = &exit.child;
            self.starting.exited(c.pid.as_raw());
            let svc_i = self.services.position(&c.service.name);
            let ran = match self.spawner.take_failure(c.pid) {
                Some(f) => {
                    self.exec_failed(svc_i, c, f, now);
                    None
                }
                None => {
                    self.exec_succeeded(svc_i, c, now);
                    Some(exit.duration)
                }
            };
            if let Some(i) = svc_i {
                self.services.exited(i, c.source, ran);
            }
            if let Client::Listener(_) = c.peer {
                self.handed_back(svc_i, c, exit.duration, now);
            }
            // Its last stderr lines come before its `exit` line.
            self.finish_stderr(c.pid, now);
            let (status, signal) = match exit.status {
                Status::Code(n) => (Some(n), None),
                Status::Signal(s) => (None, Some(s.as_str())),
            };
            self.log
                .event(Level::Info, "exit")
                .kv("service", &c.service.name)
                .kv("conn", c.conn_id)
                .kv("pid", c.pid)
                .kv("peer", &c.peer)
                .opt("proxy", c.proxy)
                .opt("status", status)
                .opt("signal", signal)
                .kv("duration_ms", exit.duration.as_millis())
                .opt("reason", c.terminated_for)
                .send();
        }
        exits.shrink_after_burst();
        self.exits = exits;
        self.stderr_pipes.shrink_after_burst();
    }

    pub(super) fn fire_deadlines(&mut self, now: Instant) {
        if let Some(d) = &mut self.drain {
            if !d.terminated && d.deadline <= now {
                self.terminate_all(now, Termination::Shutdown);
            }
        }
        // Every handler is gone: what is left of their groups is not waited
        // for (it gets SIGTERM now, and SIGKILL after the grace).
        if self.drain.is_some() && self.children.is_empty() {
            self.children.terminate_groups(now, Termination::Shutdown);
        }
        let mut fired = std::mem::take(&mut self.fired);
        self.children.fire_deadlines(now, &mut fired);
        for f in fired.drain(..) {
            let age = now.saturating_duration_since(f.started);
            self.log
                .event(
                    Level::Warn,
                    if f.signal == Signal::SIGTERM {
                        "terminate"
                    } else {
                        "kill"
                    },
                )
                .kv("service", &f.service.name)
                .kv("conn", f.conn_id)
                .kv("pid", f.pid)
                .kv("signal", f.signal.as_str())
                .kv("reason", f.reason)
                .kv("age_ms", age.as_millis())
                .opt("handler", f.leader_gone.then_some("exited"))
                .send();
        }
        self.fired = fired;
    }

    /// SIGTERM/SIGINT: the first starts a graceful drain, a second skips it.
    pub(super) fn terminate(&mut self, now: Instant) {
        match &self.drain {
            None => {
                // Closing a listener resets the clients the kernel has
                // queued on it: serve those first, as far as capacity
                // allows. One arriving between the last accept and the
                // close is still reset; nothing can close that window.
                // A wait service's socket is not accepted from: a handler
                // holding it finishes on its own copy.
                // Not paced (`admit::Starting`): they are served now or
                // never.
                self.pace_starts = false;
                for i in 0..self.socks.len() {
                    if !self.services.get(self.socks[i].svc).svc.wait {
                        self.accept(i, now, SHUTDOWN_ACCEPT_LIMIT);
                    }
                }
                // Closing the listeners refuses new clients at once.
                self.socks.clear();
                self.spare.clear();
                let timeout = self.plan.daemon.shutdown_timeout;
                self.drain = Some(Drain {
                    deadline: now + timeout,
                    terminated: false,
                });
                let status = format!("stopping: {} handlers running", self.children.len());
                if let Err(e) = notify::stopping(&status) {
                    self.log_notify_error(e);
                }
                self.log
                    .event(Level::Info, "stopping")
                    .kv("running", self.children.len())
                    .kv("timeout_ms", timeout.as_millis())
                    .send();
            }
            Some(d) if !d.terminated => {
                self.log
                    .event(Level::Info, "stopping")
                    .kv("running", self.children.len())
                    .kv("wait", "skipped")
                    .send();
                self.terminate_all(now, Termination::Shutdown);
            }
            Some(_) => {}
        }
    }

    fn terminate_all(&mut self, now: Instant, why: Termination) {
        if let Some(d) = &mut self.drain {
            d.terminated = true;
        }
        // Headers still awaited are not waited for any longer.
        self.drop_headers();
        self.children.terminate_all(now, why);
        // Send the SIGTERMs now rather than next turn.
        self.fire_deadlines(now);
    }
}
