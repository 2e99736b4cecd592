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

/// The most descriptors Linux lets any process have (`fs.nr_open` cannot
/// be set higher): a larger `rlimit_nofile`, `"infinity"` included, would
/// fail in every child, so it is refused at load.
const NOFILE_MAX: u64 = 2_147_483_584;

impl Checker<'_> {
    /// One hardening key (one of [`HARDENING_KEYS`]) into `h`.
    pub(super) fn hardening(&mut self, k: &str, value: &Value<'_>, ctx: &str, h: &mut Hardening) {
        match k {
            "nice" => self.nice(value, ctx, h),
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
                    h.set(resource, v);
                }
            }
        }
    }

    fn nice(&mut self, value: &Value<'_>, ctx: &str, h: &mut Hardening) {
        let n = match value.get_ref() {
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix()).ok(),
            other => {
                let m = format!("\"nice\" must be an integer, not {}", other.type_str());
                self.problem(value.span(), ctx, m);
                return;
            }
        };
        match n {
            Some(n @ -20..=19) => h.nice = Some(n as i32),
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
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config;
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
    fn durations_are_capped_everywhere() {
        assert_eq!(
            err("timeout = \"100000000000h\""),
            "t.toml:5:11: service \"s\": \"timeout\": duration \"100000000000h\" is too long: the most is 100 days (\"100d\")"
        );
    }
}
