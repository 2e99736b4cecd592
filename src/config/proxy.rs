//! The PROXY protocol keys of a `[[service]]` (SPEC §10.6):
//! `proxy_protocol`, `trusted_proxies` (required with it) and
//! `proxy_timeout`. Either of the last two without the first would do
//! nothing, so it is an error, not a silent no-op.

use std::borrow::Cow;
use std::ops::Range;
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use super::check::{esc, Checker, Value};
use crate::plan::{Proxy, ProxyVersion, DEFAULT_PROXY_TIMEOUT};

/// The keys this file checks.
pub(super) const PROXY_KEYS: &[&str] = &["proxy_protocol", "trusted_proxies", "proxy_timeout"];

/// The three keys as one `[[service]]` writes them, each with the span of
/// its key (the messages about a missing partner point there).
#[derive(Default)]
pub(super) struct ProxyDraft {
    /// `proxy_protocol`: the key's span, and the version when valid.
    version: Option<(Range<usize>, Option<ProxyVersion>)>,
    /// `trusted_proxies`: the key's span and the valid entries.
    trusted: Option<(Range<usize>, Vec<IpNet>)>,
    /// `proxy_timeout`: the key's span, and the duration when valid.
    timeout: Option<(Range<usize>, Option<Duration>)>,
}

impl Checker<'_> {
    /// Records one of [`PROXY_KEYS`].
    pub(super) fn proxy_key(
        &mut self,
        key: &Spanned<Cow<'_, str>>,
        value: &Value<'_>,
        ctx: &str,
        d: &mut ProxyDraft,
    ) {
        let k = key.get_ref().as_ref();
        let span = key.span();
        match k {
            "proxy_protocol" => {
                let v = self.string(value, ctx, k).and_then(|s| match s {
                    "v1" => Some(ProxyVersion::V1),
                    "v2" => Some(ProxyVersion::V2),
                    "any" => Some(ProxyVersion::Any),
                    _ => {
                        self.problem(
                            value.span(),
                            ctx,
                            format!(
                                "\"proxy_protocol\" must be \"v1\", \"v2\" or \"any\", not \"{}\"",
                                esc(s)
                            ),
                        );
                        None
                    }
                });
                d.version = Some((span, v));
            }
            "trusted_proxies" => d.trusted = Some((span, self.nets(value, ctx, k))),
            _ => d.timeout = Some((span, self.duration(value, ctx, k, false))),
        }
    }

    /// The service's [`Proxy`], or `None` without `proxy_protocol`; a
    /// missing or empty `trusted_proxies`, and a partner key without
    /// `proxy_protocol`, are problems.
    pub(super) fn proxy_done(&mut self, d: ProxyDraft, ctx: &str) -> Option<Proxy> {
        let Some((vspan, version)) = d.version else {
            for (span, key) in [
                d.trusted.map(|(s, _)| (s, "trusted_proxies")),
                d.timeout.map(|(s, _)| (s, "proxy_timeout")),
            ]
            .into_iter()
            .flatten()
            {
                self.problem(
                    span,
                    ctx,
                    format!("\"{key}\" has no effect without \"proxy_protocol\""),
                );
            }
            return None;
        };
        let trusted = match d.trusted {
            None => {
                self.problem(
                    vspan,
                    ctx,
                    "\"proxy_protocol\" needs \"trusted_proxies\": the addresses allowed to send a PROXY header",
                );
                return None;
            }
            Some((span, nets)) if nets.is_empty() => {
                self.problem(
                    span,
                    ctx,
                    "\"trusted_proxies\" needs at least one address or CIDR",
                );
                return None;
            }
            Some((_, nets)) => nets,
        };
        let timeout = match d.timeout {
            None => DEFAULT_PROXY_TIMEOUT,
            Some((_, t)) => t?,
        };
        Some(Proxy {
            version: version?,
            trusted,
            timeout,
        })
    }
}
