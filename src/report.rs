//! The daemon's status document (the JSON the control socket sends) rendered
//! for people (an aligned table) and for scrapers (the Prometheus text
//! format), pure. The supervisor builds the document from its one set of
//! counters; `tinyinetd status`, `status --prometheus`, the `metrics`
//! command and `tinyinetd-metrics` all render through this module, so the
//! three views can never disagree.
//!
//! The document (tinyinetd(8), CONTROL PROTOCOL, tinyinetd(8) "CONTROL PROTOCOL"):
//!
//! ```text
//! {"services": [{"name", "listen": [..], "running", "accepted",
//!                "refused": {"deny", "allow", "max_per_source"},
//!                "failed", "paused": null | REASON,
//!                "duration_seconds": {"le": [..], "cumulative": [..],
//!                                     "count", "sum"}}],
//!  "connections": [{"conn", "service", "peer", "pid", "age_seconds"}]}
//! ```

use std::fmt::Write as _;

use serde_json::Value;

/// Why a document could not be rendered: what was missing or malformed.
pub type Error = String;

fn field<'a>(v: &'a Value, key: &str) -> Result<&'a Value, Error> {
    v.get(key)
        .ok_or_else(|| format!("the daemon's status has no \"{key}\""))
}

fn uint(v: &Value, key: &str) -> Result<u64, Error> {
    field(v, key)?
        .as_u64()
        .ok_or_else(|| format!("the daemon's status has a \"{key}\" that is not a count"))
}

fn float(v: &Value, key: &str) -> Result<f64, Error> {
    field(v, key)?
        .as_f64()
        .ok_or_else(|| format!("the daemon's status has a \"{key}\" that is not a number"))
}

fn string<'a>(v: &'a Value, key: &str) -> Result<&'a str, Error> {
    field(v, key)?
        .as_str()
        .ok_or_else(|| format!("the daemon's status has a \"{key}\" that is not a string"))
}

fn list<'a>(v: &'a Value, key: &str) -> Result<&'a [Value], Error> {
    field(v, key)?
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| format!("the daemon's status has a \"{key}\" that is not a list"))
}

/// `paused`: `"no"` or the reason.
fn paused(svc: &Value) -> Result<String, Error> {
    match field(svc, "paused")? {
        Value::Null => Ok("no".into()),
        Value::String(s) => Ok(s.clone()),
        _ => Err("the daemon's status has a \"paused\" that is not a reason".into()),
    }
}

/// Rows of cells as columns: every cell starts at its column's offset, two
/// spaces apart; no trailing blanks.
fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; n];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// An age for people: `850ms`, `12.3s`, `5m07s`, `3h02m`.
fn age(secs: f64) -> String {
    if secs < 1.0 {
        format!("{}ms", (secs * 1000.0) as u64)
    } else if secs < 60.0 {
        format!("{secs:.1}s")
    } else if secs < 3600.0 {
        let s = secs as u64;
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        let m = secs as u64 / 60;
        format!("{}h{:02}m", m / 60, m % 60)
    }
}

/// `tinyinetd status`: the services, then the running connections.
pub fn table(doc: &Value) -> Result<String, Error> {
    let mut rows = vec![[
        "SERVICE",
        "LISTEN",
        "RUNNING",
        "ACCEPTED",
        "REFUSED",
        "DENY",
        "ALLOW",
        "PER_SOURCE",
        "FAILED",
        "PAUSED",
    ]
    .map(String::from)
    .to_vec()];
    for svc in list(doc, "services")? {
        let listen: Vec<String> = list(svc, "listen")?
            .iter()
            .map(|a| a.as_str().map(crate::text::escape).unwrap_or_default())
            .collect();
        let refused = field(svc, "refused")?;
        let (deny, allow, per_source) = (
            uint(refused, "deny")?,
            uint(refused, "allow")?,
            uint(refused, "max_per_source")?,
        );
        rows.push(vec![
            crate::text::escape(string(svc, "name")?),
            if listen.is_empty() {
                "-".into()
            } else {
                listen.join(",")
            },
            uint(svc, "running")?.to_string(),
            uint(svc, "accepted")?.to_string(),
            (deny + allow + per_source).to_string(),
            deny.to_string(),
            allow.to_string(),
            per_source.to_string(),
            uint(svc, "failed")?.to_string(),
            paused(svc)?,
        ]);
    }
    let mut out = columns(&rows);
    let conns = list(doc, "connections")?;
    out.push('\n');
    if conns.is_empty() {
        out.push_str("no running connections\n");
        return Ok(out);
    }
    let mut rows = vec![["CONN", "SERVICE", "PEER", "PID", "AGE"]
        .map(String::from)
        .to_vec()];
    for c in conns {
        rows.push(vec![
            uint(c, "conn")?.to_string(),
            crate::text::escape(string(c, "service")?),
            crate::text::escape(string(c, "peer")?),
            uint(c, "pid")?.to_string(),
            age(float(c, "age_seconds")?),
        ]);
    }
    out.push_str(&columns(&rows));
    Ok(out)
}

/// A label value in the Prometheus text format: `\`, `"` and newline escaped.
pub fn label(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// One metric family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `tinyinetd status --prometheus`, the `metrics` command and
/// `tinyinetd-metrics`: the Prometheus text format, version 0.0.4. Every
/// family is written whole (all its services) before the next, as the
/// format requires.
pub fn prometheus(doc: &Value) -> Result<String, Error> {
    let services = list(doc, "services")?;
    let mut names = Vec::new();
    for svc in services {
        names.push(label(string(svc, "name")?));
    }
    let mut out = String::new();
    family(
        &mut out,
        "tinyinetd_accepted_total",
        "counter",
        "Connections accepted, refused ones included.",
    );
    for (svc, name) in services.iter().zip(&names) {
        let n = uint(svc, "accepted")?;
        let _ = writeln!(out, "tinyinetd_accepted_total{{service=\"{name}\"}} {n}");
    }
    family(
        &mut out,
        "tinyinetd_refused_total",
        "counter",
        "Connections refused, by reason.",
    );
    for (svc, name) in services.iter().zip(&names) {
        let refused = field(svc, "refused")?;
        for reason in ["deny", "allow", "max_per_source"] {
            let n = uint(refused, reason)?;
            let _ = writeln!(
                out,
                "tinyinetd_refused_total{{service=\"{name}\",reason=\"{reason}\"}} {n}"
            );
        }
    }
    family(
        &mut out,
        "tinyinetd_failed_total",
        "counter",
        "Handlers that could not be started (fork or exec failed).",
    );
    for (svc, name) in services.iter().zip(&names) {
        let n = uint(svc, "failed")?;
        let _ = writeln!(out, "tinyinetd_failed_total{{service=\"{name}\"}} {n}");
    }
    family(
        &mut out,
        "tinyinetd_running",
        "gauge",
        "Handlers running now.",
    );
    for (svc, name) in services.iter().zip(&names) {
        let n = uint(svc, "running")?;
        let _ = writeln!(out, "tinyinetd_running{{service=\"{name}\"}} {n}");
    }
    family(
        &mut out,
        "tinyinetd_paused",
        "gauge",
        "1 while the service accepts nothing (at a limit or backing off), else 0.",
    );
    for (svc, name) in services.iter().zip(&names) {
        let p = u8::from(paused(svc)? != "no");
        let _ = writeln!(out, "tinyinetd_paused{{service=\"{name}\"}} {p}");
    }
    durations(&mut out, services, &names)?;
    Ok(out)
}

/// The `tinyinetd_handler_duration_seconds` histogram of every service.
fn durations(out: &mut String, services: &[Value], names: &[String]) -> Result<(), Error> {
    let metric = "tinyinetd_handler_duration_seconds";
    family(
        out,
        metric,
        "histogram",
        "How long handlers ran, from start to exit.",
    );
    for (svc, name) in services.iter().zip(names) {
        let h = field(svc, "duration_seconds")?;
        let (le, cumulative) = (list(h, "le")?, list(h, "cumulative")?);
        if le.len() != cumulative.len() {
            return Err("the daemon's status has a histogram of mismatched lengths".into());
        }
        for (b, n) in le.iter().zip(cumulative) {
            let (Some(b), Some(n)) = (b.as_f64(), n.as_u64()) else {
                return Err("the daemon's status has a malformed histogram".into());
            };
            let _ = writeln!(out, "{metric}_bucket{{service=\"{name}\",le=\"{b}\"}} {n}");
        }
        let count = uint(h, "count")?;
        let _ = writeln!(
            out,
            "{metric}_bucket{{service=\"{name}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "{metric}_sum{{service=\"{name}\"}} {}",
            float(h, "sum")?
        );
        let _ = writeln!(out, "{metric}_count{{service=\"{name}\"}} {count}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "services": [
                {"name": "echo", "listen": ["127.0.0.1:7", "[::1]:7"], "running": 1,
                 "accepted": 12, "refused": {"deny": 2, "allow": 1, "max_per_source": 0},
                 "failed": 3, "paused": null,
                 "duration_seconds": {"le": [0.001, 1.0], "cumulative": [4, 8],
                                      "count": 9, "sum": 12.5}},
                {"name": "a\"b\\c", "listen": [], "running": 0, "accepted": 0,
                 "refused": {"deny": 0, "allow": 0, "max_per_source": 0},
                 "failed": 0, "paused": "max_instances",
                 "duration_seconds": {"le": [0.001, 1.0], "cumulative": [0, 0],
                                      "count": 0, "sum": 0.0}}
            ],
            "connections": [
                {"conn": 17, "service": "echo", "peer": "127.0.0.1:51514", "pid": 4242,
                 "age_seconds": 75.5}
            ]
        })
    }

    /// The offset of each whitespace-separated cell of `line`.
    fn offsets(line: &str) -> Vec<usize> {
        let mut out = Vec::new();
        let mut prev = ' ';
        for (i, c) in line.char_indices() {
            if c != ' ' && prev == ' ' {
                out.push(i);
            }
            prev = c;
        }
        out
    }

    #[test]
    fn the_table_lines_up() {
        let t = table(&doc()).expect("renders");
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("SERVICE  LISTEN "), "{t}");
        assert_eq!(offsets(lines[0]), offsets(lines[1]), "{t}");
        assert_eq!(offsets(lines[0]), offsets(lines[2]), "{t}");
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "echo",
                "127.0.0.1:7,[::1]:7",
                "1",
                "12",
                "3",
                "2",
                "1",
                "0",
                "3",
                "no"
            ]
        );
        assert!(lines[2].ends_with("max_instances"), "{t}");
        assert_eq!(lines[3], "");
        assert!(lines[4].starts_with("CONN  SERVICE  PEER"), "{t}");
        assert_eq!(offsets(lines[4]), offsets(lines[5]), "{t}");
        assert!(lines[5].ends_with("4242  1m15s"), "{t}");
        assert!(t.lines().all(|l| !l.ends_with(' ')), "{t}");
    }

    #[test]
    fn no_connections_says_so() {
        let mut d = doc();
        d["connections"] = json!([]);
        assert!(table(&d)
            .expect("renders")
            .ends_with("\nno running connections\n"));
    }

    #[test]
    fn prometheus_families_come_whole_with_help_and_type() {
        let p = prometheus(&doc()).expect("renders");
        assert!(p.contains("# HELP tinyinetd_accepted_total "), "{p}");
        assert!(p.contains("# TYPE tinyinetd_accepted_total counter\ntinyinetd_accepted_total{service=\"echo\"} 12\ntinyinetd_accepted_total{service=\"a\\\"b\\\\c\"} 0\n"), "{p}");
        assert!(p.contains("tinyinetd_refused_total{service=\"echo\",reason=\"deny\"} 2\n"));
        assert!(p.contains("tinyinetd_paused{service=\"echo\"} 0\n"));
        assert!(p.contains("tinyinetd_paused{service=\"a\\\"b\\\\c\"} 1\n"));
        assert!(
            p.contains(
                "tinyinetd_handler_duration_seconds_bucket{service=\"echo\",le=\"0.001\"} 4\n"
            ),
            "{p}"
        );
        assert!(
            p.contains("tinyinetd_handler_duration_seconds_bucket{service=\"echo\",le=\"1\"} 8\n"),
            "{p}"
        );
        assert!(p.contains(
            "tinyinetd_handler_duration_seconds_bucket{service=\"echo\",le=\"+Inf\"} 9\n"
        ));
        assert!(p.contains("tinyinetd_handler_duration_seconds_sum{service=\"echo\"} 12.5\n"));
        assert!(p.contains("tinyinetd_handler_duration_seconds_count{service=\"echo\"} 9\n"));
        // Each TYPE line appears once: a family is never split.
        assert_eq!(p.matches("# TYPE ").count(), 6);
    }

    #[test]
    fn labels_escape_backslash_quote_and_newline() {
        assert_eq!(label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }

    #[test]
    fn a_malformed_document_is_an_error_not_a_panic() {
        for bad in [
            json!({}),
            json!({"services": 3, "connections": []}),
            json!({"services": [{"name": "x"}], "connections": []}),
        ] {
            assert!(table(&bad).is_err());
            assert!(prometheus(&bad).is_err());
        }
    }

    #[test]
    fn ages_read_as_people_read_them() {
        assert_eq!(age(0.25), "250ms");
        assert_eq!(age(12.34), "12.3s");
        assert_eq!(age(307.0), "5m07s");
        assert_eq!(age(3.0 * 3600.0 + 120.0), "3h02m");
    }
}
