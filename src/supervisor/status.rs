//! What the daemon says about itself: the `STATUS=` line and the other
//! notifications to the service manager, the watchdog ping, and SIGUSR1's
//! status lines.

use std::fmt::Write as _;
use std::io;
use std::time::Instant;

use serde_json::{json, Value};

use super::services::DURATION_BUCKETS;
use super::Supervisor;
use crate::admit::PauseReason;
use crate::notify;
use crate::plan::Level;

impl Supervisor {
    /// SIGUSR1: one line per service.
    pub(super) fn log_status(&mut self) {
        for st in self.services.iter() {
            let mut listen = String::new();
            for (i, l) in st.svc.listen.iter().enumerate() {
                if i > 0 {
                    listen.push(',');
                }
                let _ = write!(listen, "{l}{}", st.svc.protocol.suffix());
            }
            let c = &st.counters;
            let proxied = st.svc.proxy.is_some();
            self.log
                .event(Level::Info, "status")
                .kv("service", &st.svc.name)
                .kv("listen", &listen)
                .kv("running", st.running)
                .kv("accepted", c.accepted)
                .kv("refused", c.refused.total())
                .kv("refused_deny", c.refused.deny)
                .kv("refused_allow", c.refused.allow)
                .kv("refused_max_per_source", c.refused.max_per_source)
                // Only a `proxy_protocol` service can refuse for these.
                .opt(
                    "refused_untrusted_proxy",
                    proxied.then_some(c.refused.untrusted_proxy),
                )
                .opt(
                    "refused_proxy_header",
                    proxied.then_some(c.refused.proxy_header),
                )
                .kv("failed", c.failed)
                .kv("paused", st.paused.map_or("no", PauseReason::as_str))
                .send();
        }
    }

    /// The status document the control socket sends (`crate::report`
    /// describes it): the same counters as SIGUSR1's lines, and the running
    /// connections by connection id.
    pub(super) fn document(&self, now: Instant) -> Value {
        let services: Vec<Value> = self
            .services
            .iter()
            .map(|st| {
                let c = &st.counters;
                // As written, with the protocol (`/udp`) as SIGUSR1 shows it.
                let suffix = st.svc.protocol.suffix();
                let listen: Vec<String> = st
                    .svc
                    .listen
                    .iter()
                    .map(|l| format!("{l}{suffix}"))
                    .collect();
                json!({
                    "name": st.svc.name,
                    "listen": listen,
                    "running": st.running,
                    "accepted": c.accepted,
                    "refused": {
                        "deny": c.refused.deny,
                        "allow": c.refused.allow,
                        "max_per_source": c.refused.max_per_source,
                    },
                    "failed": c.failed,
                    "paused": st.paused.map(PauseReason::as_str),
                    "duration_seconds": {
                        "le": DURATION_BUCKETS.to_vec(),
                        "cumulative": c.durations.cumulative().to_vec(),
                        "count": c.durations.count,
                        "sum": c.durations.sum.as_secs_f64(),
                    },
                })
            })
            .collect();
        let mut children: Vec<_> = self.children.iter().collect();
        children.sort_by_key(|c| c.conn_id);
        let connections: Vec<Value> = children
            .iter()
            .map(|c| {
                json!({
                    "conn": c.conn_id,
                    "service": c.service.name,
                    "peer": c.peer.to_string(),
                    "pid": c.pid.as_raw(),
                    "age_seconds": now.saturating_duration_since(c.started).as_secs_f64(),
                })
            })
            .collect();
        json!({
            "pid": std::process::id(),
            "config": self.plan.path.to_string_lossy(),
            "services": services,
            "connections": connections,
        })
    }

    pub(super) fn ping_watchdog(&mut self, now: Instant) {
        if let Some((interval, next)) = &mut self.watchdog {
            if *next <= now {
                *next = now + *interval;
                if let Err(e) = notify::watchdog() {
                    self.log_notify_error(e);
                }
            }
        }
    }

    /// The one-line summary for `STATUS=`.
    pub(super) fn summary(&self) -> String {
        let mut s = format!(
            "serving {} services on {} sockets",
            self.services.len(),
            self.socks.len()
        );
        let paused: Vec<String> = self
            .services
            .iter()
            .filter_map(|st| {
                st.paused
                    .filter(|r| *r != PauseReason::Rate)
                    .map(|r| format!("{} ({r})", st.svc.name))
            })
            .collect();
        if !paused.is_empty() {
            let _ = write!(s, "; paused: {}", paused.join(", "));
        }
        s
    }

    pub(super) fn send_status(&mut self) {
        let status = self.summary();
        if status != self.status_sent {
            if let Err(e) = notify::status(&status) {
                self.log_notify_error(e);
            }
            self.status_sent = status;
        }
    }

    pub(super) fn log_notify_error(&mut self, e: io::Error) {
        self.log
            .event(Level::Warn, "notify-failed")
            .kv("error", crate::text::io_reason(&e))
            .send();
    }
}
