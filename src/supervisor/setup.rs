//! Starting the supervisor and installing a plan: the sockets bound or
//! adopted from the service manager, the service table rebuilt with the
//! counters carried over, the socket list with each socket's state.

use std::collections::HashMap;
use std::time::Instant;

use super::services::ServiceTable;
use super::{control, proxy, runnable};
use super::{log_no_ipv6, Sock, SockState, StartError, Supervisor};
use crate::children::Children;
use crate::listen::{self, Change, Sockets};
use crate::log::Logger;
use crate::notify;
use crate::plan::{Endpoint, Level, Plan};
use crate::signals::Signals;
use crate::spawn::Spawner;

impl Supervisor {
    /// Binds (or adopts) every socket of `plan`, logs them, and returns a
    /// supervisor ready to [`run`](Self::run). A socket that cannot be bound
    /// is a start-up error.
    pub fn start(
        plan: Plan,
        mut log: Logger,
        signals: Signals,
        inherited: Vec<listen::Inherited>,
    ) -> Result<Supervisor, StartError> {
        let mut spare = HashMap::new();
        for inh in inherited {
            let owned = crate::spawn::own_inherited(inh.fd);
            match listen::adopt(inh, owned) {
                listen::Adoption::Listening(addr, l) => {
                    spare.insert(addr, l);
                }
                listen::Adoption::Rejected { fd, name, why } => {
                    log.event(Level::Error, "inherited-socket-rejected")
                        .kv("fd", fd)
                        .kv("name", &name)
                        .kv("error", &why)
                        .send();
                }
            }
        }
        let mut held = Sockets::default();
        for change in listen::reconcile(&mut held, &mut spare, &plan) {
            match change {
                Change::Failed(e) => return Err(StartError::Listen(e)),
                Change::NoIpv6(a) => log_no_ipv6(&mut log, &a),
                // Nothing is held before the start, so nothing is retained.
                Change::Opened(_)
                | Change::Closed(_)
                | Change::Retained { .. }
                | Change::Lost { .. }
                | Change::Updated(_)
                | Change::Rebound { .. } => {}
            }
        }
        // After the listeners: a daemon that cannot serve keeps off it.
        let control = control::open(&plan.daemon, &mut log)?;
        // std opens it close-on-exec.
        let devnull = std::fs::File::open("/dev/null")
            .map_err(|e| StartError::Io("opening /dev/null", e))?
            .into();
        let runnable = open_runnable(&mut log);
        let mut sup = Supervisor {
            plan: Plan::default(),
            services: ServiceTable::default(),
            socks: Vec::new(),
            spare,
            children: Children::default(),
            proxies: proxy::Proxies::default(),
            signals,
            log,
            next_conn: 1,
            drain: None,
            reloading: None,
            control,
            watchdog: notify::watchdog_interval().map(|i| (i, Instant::now())),
            status_sent: String::new(),
            spawner: Spawner::new(),
            devnull,
            stderr_pipes: HashMap::new(),
            slot_retry: None,
            pace_starts: true,
            runnable,
            recheck: Default::default(),
            polled: Vec::new(),
            starting: crate::admit::Starting::for_cpus(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            ),
            exits: Vec::new(),
            fired: Vec::new(),
            sources: Vec::new(),
            ready: Vec::new(),
            pollfds: Vec::new(),
        };
        // Before any child is started: whatever runs now was inherited
        // across the exec that started the daemon, and must be reaped too.
        sup.children
            .adopt_inherited(|pid| crate::spawn::pidfd_open(pid).ok());
        sup.install(plan, held, HashMap::new());
        for s in &sup.socks {
            let name = &sup.services.get(s.svc).svc.name;
            sup.log
                .event(Level::Info, "listen")
                .kv("service", name)
                .kv("addr", &s.addr)
                .send();
        }
        sup.reject_spare();
        Ok(sup)
    }

    /// Makes `plan` current with the sockets in `held`: rebuilds the service
    /// states (carrying counters over by name) and the socket list
    /// (carrying each socket's state over by address: its back-off, and
    /// the wait handler holding it). `carried` is that state of the sockets
    /// a reload took out of the list to reconcile them.
    pub(super) fn install(
        &mut self,
        plan: Plan,
        mut held: Sockets,
        carried: HashMap<Endpoint, SockState>,
    ) {
        let running: Vec<(&str, crate::plan::Source)> = self
            .children
            .iter()
            .map(|c| (c.service.name.as_str(), c.source))
            .collect();
        self.services.install(plan.enabled(), &running);
        drop(running);
        for name in self.proxies.service_names() {
            if let Some(i) = self.services.position(name) {
                self.services.header_pending(i);
            }
        }
        // A socket handed to a wait handler stays its handler's across the
        // reload, whatever the new plan says of its service.
        let mut old_socks = carried;
        let state = |s: Sock| (s.addr, (s.backoff, s.retry_at, s.held));
        old_socks.extend(self.socks.drain(..).map(state));
        let mut socks = Vec::new();
        // A held socket becomes service `svc`'s, keeping its back-off.
        let mut attach = |addr: Endpoint, svc: usize, held: &mut Sockets| {
            if let Some(listener) = held.by_addr.remove(&addr) {
                let opts = held.opts.remove(&addr).unwrap_or_default();
                let (backoff, retry_at, holder) = old_socks.remove(&addr).unwrap_or_default();
                socks.push(Sock {
                    addr,
                    listener,
                    opts,
                    svc,
                    backoff,
                    retry_at,
                    held: holder,
                });
            }
        };
        for (i, st) in self.services.iter().enumerate() {
            for (addr, _) in st.svc.endpoints() {
                attach(addr, i, &mut held);
            }
        }
        // Old sockets kept for a service whose new address failed (see
        // `listen`): not in its `listen`, attached by its name.
        for (addr, name) in std::mem::take(&mut held.owner) {
            if let Some(i) = self.services.position(&name) {
                attach(addr, i, &mut held);
            }
        }
        // Every child holding a slot counts against max_connections, which
        // is checked before accept: one slot more can never all be busy.
        self.spawner
            .set_slot_limit(plan.daemon.max_connections.saturating_add(1));
        self.socks = socks;
        self.plan = plan;
    }

    /// Inherited sockets that match no `listen` address are an error: log
    /// and close them (the daemon keeps running).
    fn reject_spare(&mut self) {
        for (addr, l) in self.spare.drain() {
            self.log
                .event(Level::Error, "inherited-socket-unused")
                .kv("addr", addr)
                .kv("error", "matches no listen address; closed")
                .send();
            drop(l);
        }
    }
}

/// The count of runnable tasks, for the cap on handlers still starting,
/// which gives way while the cores have room; without it (logged) the cap
/// holds as if they had none.
fn open_runnable(log: &mut Logger) -> runnable::Runnable {
    let (runnable, no_count) = runnable::Runnable::open();
    if let Some(e) = no_count {
        log.event(Level::Warn, "pacing-without-load")
            .kv("path", runnable::LOADAVG)
            .kv("error", crate::text::io_reason(&e))
            .send();
    }
    runnable
}
