//! Admission decisions, pure: no sockets, no clock reads, no logging.
//!
//! Two questions, asked at two moments:
//!
//! * [`capacity`], before `accept`: may this service take a connection now?
//!   If not, its listeners leave the poll set until the returned moment (or
//!   until a handler exits) and clients wait in the kernel backlog. Nothing
//!   is refused or closed for capacity or rate.
//! * [`decide`], after `accept`, when the peer is known: serve it, or refuse
//!   it (closed at once, before any fork) for `deny`, `allow` or
//!   `max_per_source`.
//!
//! And one for the whole daemon, before `accept` too: are too many
//! handlers still starting ([`Starting`], `admit/starting.rs`)?

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;

pub use crate::plan::Source;
use crate::plan::{Access, Client, Limits};

mod crashloop;
mod starting;
pub use crashloop::{CrashLoop, CrashStep};
pub use starting::{runnable_of, Pace, Recheck, Starting, START_WINDOW};

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The peer matches `deny`.
    Deny,
    /// `allow` is set and the peer matches none of it.
    Allow,
    /// The peer's source prefix already has `max_per_source` handlers.
    MaxPerSource,
    /// `proxy_protocol`: the peer is not one of `trusted_proxies` (refused
    /// before a byte is read).
    UntrustedProxy,
    /// `proxy_protocol`: no valid header, or none within `proxy_timeout`.
    ProxyHeader,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Deny => "deny",
            Reason::Allow => "allow",
            Reason::MaxPerSource => "max_per_source",
            Reason::UntrustedProxy => "untrusted_proxy",
            Reason::ProxyHeader => "proxy_header",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict on one accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Serve it; count it against this source.
    Admit(Source),
    Refuse(Reason),
}

/// Decides on a connection from `client`. `per_source` counts the running
/// handlers of this service by source. IPv4-mapped IPv6 peers are judged
/// as the IPv4 address they are. `allow`/`deny` list IP networks, which no
/// Unix client is in (the configuration refuses them on a Unix service;
/// were one given, an `allow` would refuse every Unix client).
pub fn decide(
    access: &Access,
    limits: &Limits,
    per_source: &HashMap<Source, usize>,
    client: &Client,
) -> Decision {
    let ip = match client {
        Client::Inet { peer, .. } => Some(peer.ip().to_canonical()),
        Client::Unix { .. } | Client::Listener(_) => None,
    };
    let listed = |nets: &[IpNet]| ip.is_some_and(|ip| nets.iter().any(|n| n.contains(&ip)));
    if listed(&access.deny) {
        return Decision::Refuse(Reason::Deny);
    }
    if !access.allow.is_empty() && !listed(&access.allow) {
        return Decision::Refuse(Reason::Allow);
    }
    let source = source_key(limits, client);
    if let Some(max) = limits.max_per_source {
        if per_source.get(&source).copied().unwrap_or(0) >= max {
            return Decision::Refuse(Reason::MaxPerSource);
        }
    }
    Decision::Admit(source)
}

/// What `client` counts against for `max_per_source`: its source prefix,
/// or its user id. A wait handler has no one client: it counts under the
/// unspecified address of its socket's family, which no client has (and
/// `max_per_source` is refused for a wait service, so the count is never
/// judged).
pub fn source_key(limits: &Limits, client: &Client) -> Source {
    match client {
        Client::Inet { peer, .. } => Source::Net(source_of(limits, peer.ip())),
        Client::Unix { uid, .. } => Source::Uid(*uid),
        Client::Listener(e) => Source::Net(IpNet::from(match e.inet() {
            Some(a) if a.is_ipv6() => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        })),
    }
}

/// The source prefix `peer` counts against: `/source_prefix_v4` or
/// `/source_prefix_v6`, so one IPv6 client owning a /64 is one source.
pub fn source_of(limits: &Limits, peer: IpAddr) -> IpNet {
    let peer = peer.to_canonical();
    let len = match peer {
        IpAddr::V4(_) => limits.source_prefix_v4,
        IpAddr::V6(_) => limits.source_prefix_v6,
    };
    // The prefix lengths were validated at load (≤ 32 / ≤ 128).
    IpNet::new(peer, len)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(peer))
}

/// Why a service is not accepting right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// `max_instances` handlers of this service are running.
    Instances,
    /// `max_connections` handlers run in all.
    Connections,
    /// `max_rate` is spent; the next token is due then.
    Rate(Instant),
    /// accept or fork failed for lack of resources; retry then.
    Backoff(Instant),
    /// A wait service's handlers keep exiting at once ([`CrashLoop`]);
    /// its sockets are handed over again then.
    CrashLoop(Instant),
}

/// A [`Pause`] without its moment: what the log and the status line name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseReason {
    Instances,
    Connections,
    Rate,
    Backoff,
    CrashLoop,
}

impl PauseReason {
    /// The word the log's `reason=` and `paused=` fields show.
    pub fn as_str(self) -> &'static str {
        match self {
            PauseReason::Instances => "max_instances",
            PauseReason::Connections => "max_connections",
            PauseReason::Rate => "max_rate",
            PauseReason::Backoff => "backoff",
            PauseReason::CrashLoop => "crash_loop",
        }
    }
}

impl std::fmt::Display for PauseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Pause {
    pub fn reason(self) -> PauseReason {
        match self {
            Pause::Instances => PauseReason::Instances,
            Pause::Connections => PauseReason::Connections,
            Pause::Rate(_) => PauseReason::Rate,
            Pause::Backoff(_) => PauseReason::Backoff,
            Pause::CrashLoop(_) => PauseReason::CrashLoop,
        }
    }

    /// When the pause ends by itself; `None` for those that end when a
    /// handler exits.
    pub fn until(self) -> Option<Instant> {
        match self {
            Pause::Rate(t) | Pause::Backoff(t) | Pause::CrashLoop(t) => Some(t),
            Pause::Instances | Pause::Connections => None,
        }
    }
}

/// What [`capacity`] needs to know about the daemon and the service.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Handlers of this service running, and its connections whose PROXY
    /// header is being read (each becomes a handler or is closed).
    pub running: usize,
    /// The same for all services together.
    pub total: usize,
    /// The daemon's `max_connections`.
    pub max_connections: usize,
    /// A resource backoff in force for this service, if any.
    pub backoff_until: Option<Instant>,
    /// A wait service's crash-loop pause in force, if any.
    pub crash_until: Option<Instant>,
}

/// May the service accept now? `None`: yes. Checked in an order that
/// reports the most lasting reason first.
pub fn capacity(limits: &Limits, load: Load, bucket: &Bucket, now: Instant) -> Option<Pause> {
    if let Some(t) = load.backoff_until {
        if t > now {
            return Some(Pause::Backoff(t));
        }
    }
    if let Some(t) = load.crash_until {
        if t > now {
            return Some(Pause::CrashLoop(t));
        }
    }
    if load.total >= load.max_connections {
        return Some(Pause::Connections);
    }
    if load.running >= limits.max_instances {
        return Some(Pause::Instances);
    }
    if let Some(rate) = limits.max_rate {
        if let Some(t) = bucket.next_token(rate, now) {
            return Some(Pause::Rate(t));
        }
    }
    None
}

/// A token bucket for `max_rate`: up to `rate` tokens (one second's worth
/// of burst), refilled continuously at `rate` per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Tokens available at `at`.
    tokens: f64,
    /// When `tokens` was last computed; `None`: never (the bucket is full).
    at: Option<Instant>,
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket::new()
    }
}

impl Bucket {
    /// A full bucket (its first refill fills it).
    pub fn new() -> Bucket {
        Bucket {
            tokens: f64::INFINITY,
            at: None,
        }
    }

    fn level(&self, rate: u32, now: Instant) -> f64 {
        let cap = f64::from(rate.max(1));
        match self.at {
            None => cap,
            Some(at) => {
                let dt = now.saturating_duration_since(at).as_secs_f64();
                (self.tokens + dt * f64::from(rate)).min(cap)
            }
        }
    }

    /// `None` if a token is available now, else when the next one is due.
    pub fn next_token(&self, rate: u32, now: Instant) -> Option<Instant> {
        let level = self.level(rate, now);
        if level >= 1.0 {
            None
        } else {
            let wait = (1.0 - level) / f64::from(rate.max(1));
            // Round up to the millisecond poll resolution so the loop never
            // wakes a hair too early and spins.
            let ms = (wait * 1000.0).ceil() as u64;
            Some(now + Duration::from_millis(ms.max(1)))
        }
    }

    /// Spends one token (callers check [`Bucket::next_token`] first).
    pub fn take(&mut self, rate: u32, now: Instant) {
        let level = self.level(rate, now);
        self.tokens = level - 1.0;
        self.at = Some(now);
    }
}

/// The growing delay after a resource failure (EMFILE, fork EAGAIN…):
/// starts near 100 ms, doubles, capped near 5 s (the back-off tinyinetd(8)
/// and docs/RELIABILITY.md describe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backoff {
    /// Failures in the current episode; 0 when none is under way.
    pub failures: u32,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(100);
    pub const CAP: Duration = Duration::from_secs(5);

    /// Records a failure; returns the delay before the next try.
    pub fn fail(&mut self) -> Duration {
        self.fail_from(Self::FIRST, Self::CAP)
    }

    /// [`fail`](Self::fail) on another scale: `first`, doubling, at most
    /// `cap` (reached within six doublings, as `CAP` is from `FIRST`).
    pub fn fail_from(&mut self, first: Duration, cap: Duration) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let shift = (self.failures - 1).min(6);
        (first * (1u32 << shift)).min(cap)
    }

    /// Ends the episode; returns how many failures it had.
    pub fn succeed(&mut self) -> u32 {
        std::mem::take(&mut self.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn client(s: &str) -> Client {
        Client::Inet {
            peer: std::net::SocketAddr::new(ip(s), 40000),
            local: "127.0.0.1:7".parse().unwrap(),
        }
    }
    fn unix(uid: u32) -> Client {
        Client::Unix {
            pid: 42,
            uid,
            gid: uid,
            path: crate::plan::UnixName::Path("/run/x.sock".into()),
        }
    }

    fn access(allow: &[&str], deny: &[&str]) -> Access {
        Access {
            allow: allow.iter().map(|s| net(s)).collect(),
            deny: deny.iter().map(|s| net(s)).collect(),
        }
    }

    #[test]
    fn allow_deny_table() {
        let none = HashMap::new();
        let l = Limits::default();
        type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a str, Option<Reason>);
        let cases: &[Case] = &[
            (&[], &[], "192.0.2.1", None),
            (&[], &["192.0.2.0/24"], "192.0.2.1", Some(Reason::Deny)),
            (&[], &["192.0.2.0/24"], "192.0.3.1", None),
            (&["127.0.0.1/32"], &[], "127.0.0.1", None),
            (&["127.0.0.1/32"], &[], "127.0.0.3", Some(Reason::Allow)),
            // deny wins over allow
            (
                &["127.0.0.0/8"],
                &["127.0.0.2/32"],
                "127.0.0.2",
                Some(Reason::Deny),
            ),
            // IPv4-mapped IPv6 peers are matched as IPv4
            (&["127.0.0.0/8"], &[], "::ffff:127.0.0.9", None),
            (
                &[],
                &["127.0.0.9/32"],
                "::ffff:127.0.0.9",
                Some(Reason::Deny),
            ),
            (&["::1/128"], &[], "::1", None),
            (&["::1/128"], &[], "127.0.0.1", Some(Reason::Allow)),
            (&[], &["2001:db8::/32"], "2001:db8:1::5", Some(Reason::Deny)),
        ];
        for (allow, deny, peer, want) in cases {
            let got = decide(&access(allow, deny), &l, &none, &client(peer));
            match want {
                None => assert!(
                    matches!(got, Decision::Admit(_)),
                    "{allow:?} {deny:?} {peer}: {got:?}"
                ),
                Some(r) => assert_eq!(got, Decision::Refuse(*r), "{allow:?} {deny:?} {peer}"),
            }
        }
    }

    #[test]
    fn per_source_counts_by_prefix() {
        let l = Limits {
            max_per_source: Some(2),
            source_prefix_v4: 24,
            ..Limits::default()
        };
        let mut counts = HashMap::new();
        let a = client("198.51.100.7");
        assert_eq!(
            decide(&Access::default(), &l, &counts, &a),
            Decision::Admit(Source::Net(net("198.51.100.0/24")))
        );
        counts.insert(Source::Net(net("198.51.100.0/24")), 2);
        assert_eq!(
            decide(&Access::default(), &l, &counts, &client("198.51.100.200")),
            Decision::Refuse(Reason::MaxPerSource)
        );
        assert!(matches!(
            decide(&Access::default(), &l, &counts, &client("198.51.101.1")),
            Decision::Admit(_)
        ));
        // A deny is reported as deny even when the source is also full.
        let deny = access(&[], &["198.51.100.0/24"]);
        assert_eq!(
            decide(&deny, &l, &counts, &a),
            Decision::Refuse(Reason::Deny)
        );
    }

    #[test]
    fn unix_clients_count_per_uid_through_the_same_decision() {
        let l = Limits {
            max_per_source: Some(1),
            ..Limits::default()
        };
        let mut counts = HashMap::new();
        let none = Access::default();
        assert_eq!(
            decide(&none, &l, &counts, &unix(1000)),
            Decision::Admit(Source::Uid(1000))
        );
        counts.insert(Source::Uid(1000), 1);
        assert_eq!(
            decide(&none, &l, &counts, &unix(1000)),
            Decision::Refuse(Reason::MaxPerSource)
        );
        assert!(matches!(
            decide(&none, &l, &counts, &unix(1001)),
            Decision::Admit(_)
        ));
        // A uid and an address never share a count.
        assert!(matches!(
            decide(&none, &l, &counts, &client("0.0.3.232")),
            Decision::Admit(Source::Net(_))
        ));
        // allow lists IP networks: no Unix client is in it.
        let allow = access(&["0.0.0.0/0"], &[]);
        assert_eq!(
            decide(&allow, &l, &HashMap::new(), &unix(0)),
            Decision::Refuse(Reason::Allow)
        );
    }

    #[test]
    fn ipv6_sources_default_to_slash_64() {
        let l = Limits::default();
        assert_eq!(
            source_of(&l, ip("2001:db8:1:2:aaaa::1")),
            net("2001:db8:1:2::/64")
        );
        assert_eq!(source_of(&l, ip("::ffff:10.1.2.3")), net("10.1.2.3/32"));
    }

    #[test]
    fn capacity_order_and_limits() {
        let now = Instant::now();
        let l = Limits {
            max_instances: 2,
            max_rate: Some(1),
            ..Limits::default()
        };
        let load = |running, total, backoff_until| Load {
            running,
            total,
            max_connections: 10,
            backoff_until,
            crash_until: None,
        };
        let b = Bucket::new();
        assert_eq!(capacity(&l, load(0, 0, None), &b, now), None);
        assert_eq!(
            capacity(&l, load(2, 2, None), &b, now),
            Some(Pause::Instances)
        );
        assert_eq!(
            capacity(&l, load(1, 10, None), &b, now),
            Some(Pause::Connections)
        );
        let later = now + Duration::from_secs(1);
        assert_eq!(
            capacity(&l, load(0, 0, Some(later)), &b, now),
            Some(Pause::Backoff(later))
        );
        // An expired backoff no longer pauses.
        assert_eq!(capacity(&l, load(0, 0, Some(now)), &b, now), None);
        let mut spent = b;
        spent.take(1, now);
        assert!(matches!(
            capacity(&l, load(0, 0, None), &spent, now),
            Some(Pause::Rate(_))
        ));
    }

    #[test]
    fn bucket_allows_a_burst_then_paces() {
        let t0 = Instant::now();
        let mut b = Bucket::new();
        let rate = 5;
        for _ in 0..5 {
            assert_eq!(b.next_token(rate, t0), None);
            b.take(rate, t0);
        }
        let due = b.next_token(rate, t0).expect("bucket should be empty");
        assert_eq!(due - t0, Duration::from_millis(200));
        assert_eq!(b.next_token(rate, due), None);
        // Refill is capped at one second's worth.
        let much_later = t0 + Duration::from_secs(100);
        for _ in 0..5 {
            assert_eq!(b.next_token(rate, much_later), None);
            b.take(rate, much_later);
        }
        assert!(b.next_token(rate, much_later).is_some());
    }

    #[test]
    fn thirty_connections_at_rate_five_take_five_seconds() {
        // Simulates the loop: take a token whenever one is due.
        let t0 = Instant::now();
        let mut now = t0;
        let mut b = Bucket::new();
        for _ in 0..30 {
            if let Some(t) = b.next_token(5, now) {
                now = t;
            }
            b.take(5, now);
        }
        let took = now - t0;
        assert!(
            took >= Duration::from_millis(4990) && took <= Duration::from_millis(5100),
            "{took:?}"
        );
    }

    #[test]
    fn a_crash_loop_pause_is_reported_as_such() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let load = Load {
            running: 0,
            total: 0,
            max_connections: 10,
            backoff_until: None,
            crash_until: Some(later),
        };
        let p = capacity(&Limits::default(), load, &Bucket::new(), now);
        assert_eq!(p, Some(Pause::CrashLoop(later)));
        assert_eq!(p.map(|p| p.reason().as_str()), Some("crash_loop"));
        assert_eq!(p.and_then(Pause::until), Some(later));
    }

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::default();
        let delays: Vec<u128> = (0..9).map(|_| b.fail().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(b.succeed(), 9);
        assert_eq!(b.fail(), Backoff::FIRST);
    }
}
