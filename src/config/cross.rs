//! Checks across the services of one file: unique names, and no address
//! served twice (the same socket, or a wildcard and a specific address of
//! one family and port; a TCP and a UDP socket never collide). The drop-in
//! files are checked against the files before them in `include`.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::check::Checker;
use super::line_col;
use super::service::Checked;
use crate::plan::{ListenAddr, Protocol};

impl Checker<'_> {
    /// Checks across services: unique names, and no address served twice.
    pub(super) fn cross_check(&mut self, services: &[Checked]) {
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
        // A TCP and a UDP socket on one address never collide.
        let mut seen: Vec<(SocketAddr, Protocol, usize, &str, ListenAddr)> = Vec::new();
        for (index, c) in services.iter().enumerate() {
            let s = &c.service;
            for (addr, span) in s.listen.iter().zip(&c.listen_spans) {
                let clash = addr.sockets().into_iter().find_map(|sock| {
                    seen.iter()
                        .find(|(a, p, _, _, _)| *p == s.protocol && conflicts(*a, sock))
                        .map(|(_, _, i, name, wrote)| (*i, *name, wrote.clone()))
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
                    seen.push((sock, s.protocol, index, &s.name, addr.clone()));
                }
            }
        }
        let entries = services.iter().flat_map(|c| {
            let s = &c.service;
            s.listen
                .iter()
                .zip(&c.listen_spans)
                .map(|(a, sp)| (s.name.as_str(), a, sp))
        });
        self.unix_cross_check(entries);
    }
}

/// Whether two sockets would collide on bind: the same address, or a
/// wildcard and a specific address of the same family on the same port.
pub(super) fn conflicts(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
