//! The checker core: walks the spanned TOML tree, records each problem at
//! its key or value, and offers the typed getters (string, array, count,
//! duration, nets), unknown-key handling and "did you mean" suggestions
//! that the daemon and service checks share.

use std::borrow::Cow;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::fields::{parse_duration, parse_net};
use super::{line_col, ConfigError, Problem, System};
use crate::plan::Plan;
pub(super) use crate::text::escape as esc;

/// Walks the document, collecting problems.
pub(super) struct Checker<'t> {
    /// The whole file, to turn a span into a line and column.
    pub(super) text: &'t str,
    /// Every problem found so far; the file is valid only when none is.
    pub(super) problems: Vec<Problem>,
    /// What is valid but likely a mistake; said, never refused.
    pub(super) warnings: Vec<Problem>,
    /// The included file being checked; `None` for the main file.
    pub(super) file: Option<PathBuf>,
    /// `[daemon] include` as written: each glob with the span of its entry.
    pub(super) include: Vec<(String, Range<usize>)>,
}

/// A value of the document with its byte span.
pub(super) type Value<'i> = Spanned<DeValue<'i>>;

impl<'t> Checker<'t> {
    pub(super) fn new(text: &'t str) -> Checker<'t> {
        Checker {
            text,
            problems: Vec::new(),
            warnings: Vec::new(),
            file: None,
            include: Vec::new(),
        }
    }

    pub(super) fn problem(
        &mut self,
        span: Range<usize>,
        context: &str,
        message: impl Into<String>,
    ) {
        let (line, col) = line_col(self.text, span.start);
        self.problems.push(Problem {
            file: self.file.clone(),
            line,
            col,
            context: context.to_string(),
            message: message.into(),
        });
    }

    /// Records a warning at `span`: the file stays valid.
    pub(super) fn warning(&mut self, span: Range<usize>, context: &str, message: String) {
        let (line, col) = line_col(self.text, span.start);
        self.warnings.push(Problem {
            file: self.file.clone(),
            line,
            col,
            context: context.to_string(),
            message: format!("warning: {message}"),
        });
    }

    /// The text as a spanned TOML tree; `None`, with every syntax error
    /// recorded, when it is not TOML.
    pub(super) fn toml(&mut self) -> Option<DeTable<'t>> {
        let (root, errors) = DeTable::parse_recoverable(self.text);
        if errors.is_empty() {
            return Some(root.into_inner());
        }
        for e in errors {
            let span = e.span().unwrap_or(0..0);
            let message = format!("TOML syntax error: {}", e.message().trim());
            self.problem(span, "", message);
        }
        None
    }

    /// Checks the whole document; `None` when it is not even TOML.
    pub(super) fn document(&mut self, path: &Path, sys: &dyn System) -> Option<Plan> {
        let root = self.toml()?;
        let (daemon_table, service_array) = self.top_level(&root);
        let daemon = match daemon_table {
            Some(t) => self.daemon(t, sys),
            None => self.daemon(&DeTable::default(), sys),
        };
        let mut services = match service_array {
            None => Vec::new(),
            Some(array) => self.services(array, &daemon, sys),
        };
        self.cross_check(&services);
        // The drop-ins are read whatever the main file's state, so that one
        // run reports every problem of the whole set.
        let dropins = self.includes(path, &services, &daemon, sys);
        if service_array.is_none() && dropins.defined == 0 {
            self.problem(
                0..0,
                "",
                "no [[service]] is defined: there is nothing to serve",
            );
        }
        let mut origin = std::collections::HashMap::new();
        for (file, checked) in dropins.files {
            for c in checked {
                origin.insert(c.service.name.clone(), file.clone());
                services.push(c);
            }
        }
        let warnings = ConfigError {
            path: path.to_path_buf(),
            problems: std::mem::take(&mut self.warnings),
        };
        Some(Plan {
            path: path.to_path_buf(),
            daemon,
            services: services.into_iter().map(|c| Arc::new(c.service)).collect(),
            warnings: warnings.to_string().lines().map(String::from).collect(),
            origin,
        })
    }

    /// The two top-level keys, `[daemon]` and `[[service]]`, each when it
    /// has the right type; any other key is a problem.
    fn top_level<'r, 'i>(
        &mut self,
        root: &'r DeTable<'i>,
    ) -> (Option<&'r DeTable<'i>>, Option<&'r [Value<'i>]>) {
        let mut daemon_table = None;
        let mut service_array = None;
        for (key, value) in root.iter() {
            match key.get_ref().as_ref() {
                "daemon" => match value.get_ref() {
                    DeValue::Table(t) => daemon_table = Some(t),
                    other => self.problem(
                        value.span(),
                        "",
                        format!(
                            "\"daemon\" must be a table ([daemon]), not {}",
                            other.type_str()
                        ),
                    ),
                },
                "service" => match value.get_ref() {
                    DeValue::Array(a) => service_array = Some(a.as_ref()),
                    other => self.problem(
                        value.span(),
                        "",
                        format!(
                            "\"service\" must be an array of tables ([[service]]), not {}",
                            other.type_str()
                        ),
                    ),
                },
                other => {
                    let hint = suggest(other, &["daemon", "service"]);
                    self.problem(
                        key.span(),
                        "",
                        format!("unknown key \"{}\"{hint}", esc(other)),
                    );
                }
            }
        }
        (daemon_table, service_array)
    }

    /// A key that is not one of `known`: an error with the nearest known
    /// key as a hint.
    pub(super) fn unknown_key(&mut self, key: &Spanned<Cow<'_, str>>, ctx: &str, known: &[&str]) {
        let k = key.get_ref().as_ref();
        let hint = suggest(k, known);
        self.problem(key.span(), ctx, format!("unknown key \"{}\"{hint}", esc(k)));
    }

    pub(super) fn string<'v>(&mut self, v: &'v Value<'_>, ctx: &str, key: &str) -> Option<&'v str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            other => {
                self.problem(
                    v.span(),
                    ctx,
                    format!("\"{key}\" must be a string, not {}", other.type_str()),
                );
                None
            }
        }
    }

    pub(super) fn array<'v, 'i>(
        &mut self,
        v: &'v Value<'i>,
        ctx: &str,
        key: &str,
    ) -> Option<&'v [Value<'i>]> {
        match v.get_ref() {
            DeValue::Array(a) => Some(a.as_ref()),
            other => {
                self.problem(
                    v.span(),
                    ctx,
                    format!(
                        "\"{key}\" must be an array like [\"...\"], not {}",
                        other.type_str()
                    ),
                );
                None
            }
        }
    }

    pub(super) fn count(
        &mut self,
        v: &Value<'_>,
        ctx: &str,
        key: &str,
        min: usize,
        max: usize,
    ) -> Option<usize> {
        let n = match v.get_ref() {
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix()).ok(),
            other => {
                self.problem(
                    v.span(),
                    ctx,
                    format!("\"{key}\" must be an integer, not {}", other.type_str()),
                );
                return None;
            }
        };
        match n {
            Some(n) if n >= min as i128 && n <= max as i128 => Some(n as usize),
            _ => {
                self.problem(
                    v.span(),
                    ctx,
                    format!("\"{key}\" must be between {min} and {max}"),
                );
                None
            }
        }
    }

    pub(super) fn duration(
        &mut self,
        v: &Value<'_>,
        ctx: &str,
        key: &str,
        zero_ok: bool,
    ) -> Option<Duration> {
        let s = self.string(v, ctx, key)?;
        match parse_duration(s, key, zero_ok) {
            Ok(d) => Some(d),
            Err(m) => {
                self.problem(v.span(), ctx, m);
                None
            }
        }
    }

    pub(super) fn nets(&mut self, v: &Value<'_>, ctx: &str, key: &str) -> Vec<IpNet> {
        let mut out = Vec::new();
        let Some(items) = self.array(v, ctx, key) else {
            return out;
        };
        for item in items {
            let Some(s) = self.string(item, ctx, key) else {
                continue;
            };
            match parse_net(s) {
                Ok(n) => out.push(n),
                Err(m) => self.problem(item.span(), ctx, format!("\"{key}\": {m}")),
            }
        }
        out
    }
}

/// "Did you mean" for a misspelt key: the known key nearest by edit
/// distance (a swap of two neighbours counts as one edit), when at most a
/// third of its characters differ: a plausible typo, not any short word.
pub(super) fn suggest(key: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|k| (strsim::osa_distance(key, k), *k))
        .filter(|(d, k)| *d * 3 <= k.chars().count())
        .min()
        .map(|(_, k)| format!(" (did you mean \"{k}\"?)"))
        .unwrap_or_default()
}
