//! The handler-hardening keys of a `[[service]]` (SPEC §10.1): `nice`,
//! `no_new_privs` and the `rlimit_*` limits, each checked into the
//! service's [`Hardening`]. The values are applied by the child between
//! clone and exec (`spawn`).

use toml::de::DeValue;

use super::check::{Checker, Value};
use super::fields::{parse_limit, UNLIMITED};
use crate::plan::{Hardening, Resource};

/// The keys this file checks.
pub(super) const HARDENING_KEYS: &[&str] = &[
    "nice",
    "no_new_privs",
    "rlimit_nofile",
    "rlimit_nproc",
    "rlimit_core",
    "rlimit_fsize",
    "rlimit_as",
    "rlimit_cpu",
];

/// The daemon's own nice value and the lowest one RLIMIT_NICE lets a
/// process that is not root set (`20 - soft limit`, the kernel's
/// `can_nice`), or `None` when either cannot be read (the child then
/// reports the failure as `step=nice`).
fn lowest_nice() -> Option<(i32, i32)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let own: i32 = after.split_whitespace().nth(16)?.parse().ok()?;
    let (soft, _) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NICE).ok()?;
    let lowest = 20 - i32::try_from(soft.min(40)).ok()?;
    Some((own, lowest))
}

/// The most descriptors Linux lets any process have (`fs.nr_open` cannot
/// be set higher): a larger `rlimit_nofile`, `"infinity"` included, would
/// fail in every child, so it is refused at load.
const NOFILE_MAX: u64 = 2_147_483_584;

impl Checker<'_> {
    /// One hardening key (one of [`HARDENING_KEYS`]) into `h`; `euid` is
    /// the daemon's, which decides whether a limit may be raised.
    pub(super) fn hardening(
        &mut self,
        k: &str,
        value: &Value<'_>,
        ctx: &str,
        h: &mut Hardening,
        euid: u32,
    ) {
        match k {
            "nice" => self.nice(value, ctx, h, euid),
            "no_new_privs" => match value.get_ref() {
                DeValue::Boolean(b) => h.no_new_privs = *b,
                other => self.problem(
                    value.span(),
                    ctx,
                    format!(
                        "\"no_new_privs\" must be true or false, not {}",
                        other.type_str()
                    ),
                ),
            },
            "rlimit_cpu" => self.rlimit_cpu(value, ctx, h),
            _ => {
                let Some(resource) = Resource::ALL.into_iter().find(|r| r.key() == k) else {
                    return;
                };
                if let Some(v) = self.rlimit(value, ctx, resource) {
                    if euid == 0 || self.within_hard_limit(value, ctx, resource, v) {
                        h.set(resource, v);
                    }
                }
            }
        }
    }

    fn nice(&mut self, value: &Value<'_>, ctx: &str, h: &mut Hardening, euid: u32) {
        let n = match value.get_ref() {
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix()).ok(),
            other => {
                let m = format!("\"nice\" must be an integer, not {}", other.type_str());
                self.problem(value.span(), ctx, m);
                return;
            }
        };
        match n {
            Some(n @ -20..=19) => match (euid, lowest_nice()) {
                (1.., Some((own, lowest))) if (n as i32) < own && (n as i32) < lowest => {
                    let m = format!(
                        "\"nice\" = {n} is below what the daemon may set (it runs at {own}; RLIMIT_NICE allows down to {lowest}): only a daemon running as root can"
                    );
                    self.problem(value.span(), ctx, m);
                }
                _ => h.nice = Some(n as i32),
            },
            _ => self.problem(value.span(), ctx, "\"nice\" must be between -20 and 19"),
        }
    }

    /// A count or a size: an integer, or a string for [`parse_limit`].
    fn rlimit(&mut self, value: &Value<'_>, ctx: &str, resource: Resource) -> Option<u64> {
        let key = resource.key();
        let parsed = match value.get_ref() {
            DeValue::Integer(i) => match i128::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) if n < 0 => Err(format!(
                    "\"{key}\" cannot be negative; write \"infinity\" for no limit"
                )),
                Ok(n) if n < UNLIMITED as i128 => Ok(n as u64),
                _ => Err(format!(
                    "\"{key}\" is too large; write \"infinity\" for no limit"
                )),
            },
            DeValue::String(s) => parse_limit(s, key),
            other => Err(format!(
                "\"{key}\" must be an integer or a string like \"512M\" or \"infinity\", not {}",
                other.type_str()
            )),
        };
        let checked = parsed.and_then(|v| match resource {
            Resource::Nofile if v > NOFILE_MAX => Err(format!(
                "\"rlimit_nofile\" cannot be above {NOFILE_MAX} (Linux's fs.nr_open ceiling; its default is 1048576), nor \"infinity\""
            )),
            _ => Ok(v),
        });
        match checked {
            Ok(v) => Some(v),
            Err(m) => {
                self.problem(value.span(), ctx, m);
                None
            }
        }
    }

    /// `rlimit_cpu`: a duration (whole seconds for the kernel, a fraction
    /// rounded up, so that "500ms" still limits), or `"infinity"`.
    fn rlimit_cpu(&mut self, value: &Value<'_>, ctx: &str, h: &mut Hardening) {
        if let DeValue::String(s) = value.get_ref() {
            if s.as_ref() == "infinity" {
                h.set(Resource::Cpu, UNLIMITED);
                return;
            }
        }
        if let Some(d) = self.duration(value, ctx, "rlimit_cpu", false) {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            h.set(Resource::Cpu, secs);
        }
    }

    /// For a daemon that is not root: whether `v` is within the daemon's
    /// own hard limit, which only root may raise (every child would fail
    /// its exec otherwise). The limit is the daemon's as it is now; one
    /// that cannot be read is left to the child to find out.
    fn within_hard_limit(&mut self, value: &Value<'_>, ctx: &str, r: Resource, v: u64) -> bool {
        use nix::sys::resource::{getrlimit, Resource as R};
        let which = match r {
            Resource::Nofile => R::RLIMIT_NOFILE,
            Resource::Nproc => R::RLIMIT_NPROC,
            Resource::Core => R::RLIMIT_CORE,
            Resource::Fsize => R::RLIMIT_FSIZE,
            Resource::As => R::RLIMIT_AS,
            Resource::Cpu => R::RLIMIT_CPU,
        };
        match getrlimit(which) {
            Ok((_, hard)) if hard != nix::sys::resource::RLIM_INFINITY && v > hard => {
                let m = format!(
                    "\"{}\" is above the daemon's own hard limit ({hard}), which only a daemon running as root can raise",
                    r.key()
                );
                self.problem(value.span(), ctx, m);
                false
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config;
    use crate::config::tests::NotRoot;
    use crate::plan::{Hardening, Resource, Rlimit};

    /// The service `s`, with `extra` lines, checked on this system.
    fn check(extra: &str) -> Result<Hardening, String> {
        let text = format!(
            "[[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:9000\"]\nprogram = \"/bin/sh\"\n{extra}\n"
        );
        config::parse(Path::new("t.toml"), &text, &config::RealSystem)
            .map(|p| p.services[0].image.hardening.clone())
            .map_err(|e| e.to_string())
    }

    fn err(extra: &str) -> String {
        let e = check(extra).expect_err(extra);
        e.lines().next().unwrap_or_default().to_string()
    }

    fn limit(resource: Resource, value: u64) -> Rlimit {
        Rlimit { resource, value }
    }

    #[test]
    fn defaults_are_no_new_privs_and_no_core_dumps() {
        let h = check("").expect("valid");
        assert_eq!(h, Hardening::default());
        assert!(h.no_new_privs);
        assert_eq!(h.nice, None);
        assert_eq!(h.rlimits, vec![limit(Resource::Core, 0)]);
    }

    #[test]
    fn every_key_is_read() {
        let h = check(
            "nice = 5\nno_new_privs = false\nrlimit_nofile = 64\nrlimit_nproc = \"100\"\nrlimit_core = \"infinity\"\nrlimit_fsize = \"1M\"\nrlimit_as = \"2G\"\nrlimit_cpu = \"1m 500ms\"",
        )
        .expect("valid");
        assert_eq!(h.nice, Some(5));
        assert!(!h.no_new_privs);
        assert_eq!(
            h.rlimits,
            vec![
                limit(Resource::Nofile, 64),
                limit(Resource::Nproc, 100),
                limit(Resource::Core, u64::MAX),
                limit(Resource::Fsize, 1 << 20),
                limit(Resource::As, 2 << 30),
                limit(Resource::Cpu, 61),
            ]
        );
        assert_eq!(check("nice = -20").expect("valid").nice, Some(-20));
        assert_eq!(check("nice = 19").expect("valid").nice, Some(19));
        let cpu = check("rlimit_cpu = \"infinity\"").expect("valid");
        assert!(cpu.rlimits.contains(&limit(Resource::Cpu, u64::MAX)));
    }

    #[test]
    fn bad_values_point_at_the_value() {
        let at = |col: usize, m: &str| format!("t.toml:5:{col}: service \"s\": {m}");
        assert_eq!(
            err("nice = 20"),
            at(8, "\"nice\" must be between -20 and 19")
        );
        assert_eq!(
            err("nice = -21"),
            at(8, "\"nice\" must be between -20 and 19")
        );
        assert_eq!(
            err("nice = \"5\""),
            at(8, "\"nice\" must be an integer, not string")
        );
        assert_eq!(
            err("no_new_privs = 1"),
            at(16, "\"no_new_privs\" must be true or false, not integer")
        );
        assert_eq!(
            err("rlimit_nofile = -1"),
            at(
                17,
                "\"rlimit_nofile\" cannot be negative; write \"infinity\" for no limit"
            )
        );
        assert_eq!(
            err("rlimit_nofile = \"infinity\""),
            at(17, "\"rlimit_nofile\" cannot be above 2147483584 (Linux's fs.nr_open ceiling; its default is 1048576), nor \"infinity\"")
        );
        assert_eq!(
            err("rlimit_as = \"2GB\""),
            at(13, "\"rlimit_as\" must be a number, a size like \"512M\" or \"2G\" (K, M, G, T: 1024-based), or \"infinity\", not \"2GB\"")
        );
        assert_eq!(
            err("rlimit_fsize = true"),
            at(
                16,
                "\"rlimit_fsize\" must be an integer or a string like \"512M\" or \"infinity\", not boolean"
            )
        );
        assert_eq!(
            err("rlimit_core = \"20000000T\""),
            at(
                15,
                "\"rlimit_core\": \"20000000T\" is too large; write \"infinity\" for no limit"
            )
        );
        assert_eq!(
            err("rlimit_cpu = \"-5s\""),
            at(
                14,
                "\"rlimit_cpu\": invalid duration \"-5s\": negative durations are not allowed"
            )
        );
        assert_eq!(
            err("rlimit_cpu = \"0s\""),
            at(14, "\"rlimit_cpu\" must be longer than zero")
        );
        assert_eq!(
            err("rlimit_nproc = 1.5"),
            at(
                16,
                "\"rlimit_nproc\" must be an integer or a string like \"512M\" or \"infinity\", not float"
            )
        );
    }

    #[test]
    fn a_daemon_that_is_not_root_cannot_raise_its_hard_limits() {
        use config::System as _;
        let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .expect("getrlimit");
        if hard >= super::NOFILE_MAX {
            eprintln!("SKIPPED: the descriptor hard limit is at Linux's ceiling");
            return;
        }
        let text = |v: u64| {
            format!("[[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:9000\"]\nprogram = \"/bin/sh\"\nrlimit_nofile = {v}\n")
        };
        let e = config::parse(Path::new("t.toml"), &text(hard + 1), &NotRoot)
            .expect_err("above the hard limit")
            .to_string();
        assert_eq!(
            e.lines().next(),
            Some(format!("t.toml:5:17: service \"s\": \"rlimit_nofile\" is above the daemon's own hard limit ({hard}), which only a daemon running as root can raise").as_str())
        );
        let plan = config::parse(Path::new("t.toml"), &text(hard), &NotRoot).expect("at the limit");
        let h = &plan.services[0].image.hardening;
        assert!(h.rlimits.contains(&limit(Resource::Nofile, hard)));
        // A root daemon may raise it.
        assert!(
            config::RealSystem.identity().0 != 0
                || config::parse(Path::new("t.toml"), &text(hard + 1), &config::RealSystem).is_ok()
        );
    }

    #[test]
    fn a_daemon_that_is_not_root_cannot_lower_nice_past_its_limit() {
        let Some((own, lowest)) = super::lowest_nice() else {
            eprintln!("SKIPPED: /proc/self/stat or RLIMIT_NICE cannot be read");
            return;
        };
        let below = own.min(lowest) - 1;
        if below < -20 {
            eprintln!("SKIPPED: RLIMIT_NICE allows every nice value here");
            return;
        }
        let text = |n: i32| {
            format!("[[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:9000\"]\nprogram = \"/bin/sh\"\nnice = {n}\n")
        };
        let e = config::parse(Path::new("t.toml"), &text(below), &NotRoot)
            .expect_err("below the limit")
            .to_string();
        assert_eq!(
            e.lines().next(),
            Some(format!("t.toml:5:8: service \"s\": \"nice\" = {below} is below what the daemon may set (it runs at {own}; RLIMIT_NICE allows down to {lowest}): only a daemon running as root can").as_str())
        );
        let plan =
            config::parse(Path::new("t.toml"), &text(own.min(19)), &NotRoot).expect("own nice");
        assert_eq!(plan.services[0].image.hardening.nice, Some(own.min(19)));
    }

    #[test]
    fn durations_are_capped_everywhere() {
        assert_eq!(
            err("timeout = \"100000000000h\""),
            "t.toml:5:11: service \"s\": \"timeout\": duration \"100000000000h\" is too long: the most is 100 days (\"100d\")"
        );
    }
}
