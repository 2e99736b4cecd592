//! The control socket's client side (`tinyinetd status`, `tinyinetd
//! reload`, `tinyinetd-metrics`): find the socket from the configuration
//! file, send one request line, read one reply line, each bounded in time
//! and size, and say clearly what went wrong (no daemon, no access, no
//! answer). Blocking calls with timeouts: this is never the daemon.
//!
//! The protocol (tinyinetd(8), CONTROL PROTOCOL): one JSON object per line each way, one
//! request per connection: `{"cmd":"status"}`, `{"cmd":"metrics"}`,
//! `{"cmd":"reload"}`; the reply has `"ok": true` and the answer, or
//! `"ok": false` and an `"error"` (and, for a reload the file refused, its
//! `"problems"`, the lines `--check` prints).

use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::plan::{default_control_socket, ROOT_CONTROL_SOCKET};

/// How long `status` and `metrics` wait for the daemon's answer.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `reload` waits: the reload running now and the one asked for
/// after it may each take the resolver's 30 s (`resolver::DEADLINE`).
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(75);

/// The longest reply read (a status of thousands of connections is far
/// below it).
const MAX_REPLY: u64 = 64 * 1024 * 1024;

/// The control socket named by the configuration file at `config`: its
/// `[daemon] control_socket`, or the default. Only that key is read (with
/// a plain TOML parse), so a member of `control_group` can use it without
/// the rights the full check needs. Without the key: the default of a
/// root daemon when the caller is root; otherwise the caller's
/// `$XDG_RUNTIME_DIR/tinyinetd/control.sock` when that socket exists,
/// else the root daemon's.
pub fn socket_path(config: &Path) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(config).map_err(|e| {
        format!(
            "{}: cannot read the configuration to find the control socket: {} (name another file with -c PATH)",
            config.display(),
            crate::text::io_reason(&e)
        )
    })?;
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        format!(
            "{}: cannot find the control socket: {}",
            config.display(),
            e.to_string().trim()
        )
    })?;
    let key = doc
        .get("daemon")
        .and_then(|d| d.as_table())
        .and_then(|d| d.get("control_socket"));
    match key {
        Some(toml::Value::String(s)) if s.is_empty() => Err(format!(
            "{}: the control socket is off (control_socket = \"\")",
            config.display()
        )),
        Some(toml::Value::String(s)) => Ok(PathBuf::from(s)),
        Some(_) => Err(format!(
            "{}: \"control_socket\" must be a string (tinyinetd --check -c {} says more)",
            config.display(),
            config.display()
        )),
        None => {
            let euid = nix::unistd::geteuid().as_raw();
            let xdg = std::env::var_os("XDG_RUNTIME_DIR");
            match default_control_socket(euid, xdg.as_deref()) {
                Some(p) if p.exists() => Ok(p),
                _ => Ok(PathBuf::from(ROOT_CONTROL_SOCKET)),
            }
        }
    }
}

/// Connecting failed: the message for a person.
fn connect_error(path: &Path, e: &io::Error) -> String {
    let p = path.display();
    match e.raw_os_error().map(nix::errno::Errno::from_raw) {
        Some(nix::errno::Errno::ENOENT) => {
            format!("no control socket at {p}: is tinyinetd running?")
        }
        Some(nix::errno::Errno::ECONNREFUSED) => {
            format!("no daemon listens on the control socket {p}: is tinyinetd running?")
        }
        Some(nix::errno::Errno::EACCES | nix::errno::Errno::EPERM) => {
            let group = std::fs::metadata(path)
                .map(|m| m.gid())
                .map(|gid| match crate::accounts::group(&gid.to_string()) {
                    Ok(Some(g)) => format!("group \"{}\"", g.name),
                    _ => format!("gid {gid}"),
                })
                .unwrap_or_else(|_| "its group".into());
            format!(
                "permission denied on the control socket {p}: it is open to root, the daemon's user and {group} (control_group in tinyinetd.toml)"
            )
        }
        _ => format!(
            "connecting to the control socket {p}: {}",
            crate::text::io_reason(e)
        ),
    }
}

/// Why a request got no answer, or a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// For a person, one line.
    pub message: String,
    /// A reload the file refused: its problems, the lines `--check` prints.
    pub problems: Option<String>,
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            message,
            problems: None,
        }
    }
}

/// Sends `{"cmd": cmd}` to the daemon at `path` and returns its reply;
/// `Err` when there is none or it says `"ok": false`.
pub fn request(path: &Path, cmd: &str, timeout: Duration) -> Result<Value, Failure> {
    request_text(path, cmd, timeout)
        .map_err(Failure::from)?
        .map_err(|v| Failure {
            message: v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("the daemon refused the request without saying why")
                .to_string(),
            problems: v.get("problems").and_then(Value::as_str).map(String::from),
        })
}

/// [`request`]'s exchange: `Ok(Err(reply))` when the reply says `"ok": false`.
fn request_text(path: &Path, cmd: &str, timeout: Duration) -> Result<Result<Value, Value>, String> {
    let stream = UnixStream::connect(path).map_err(|e| connect_error(path, &e))?;
    let p = path.display();
    let timed_out = |e: &io::Error| {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            format!(
                "no answer from the daemon on {p} within {}s",
                timeout.as_secs()
            )
        } else {
            format!(
                "talking to the daemon on {p}: {}",
                crate::text::io_reason(e)
            )
        }
    };
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| timed_out(&e))?;
    let mut line = json!({ "cmd": cmd }).to_string();
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .map_err(|e| timed_out(&e))?;
    let mut reply = String::new();
    BufReader::new((&stream).take(MAX_REPLY))
        .read_line(&mut reply)
        .map_err(|e| timed_out(&e))?;
    if !reply.ends_with('\n') {
        return Err(format!(
            "the daemon on {p} closed the connection without a complete answer"
        ));
    }
    let v: Value = serde_json::from_str(&reply)
        .map_err(|e| format!("the daemon on {p} answered something unreadable: {e}"))?;
    if v.get("ok") == Some(&Value::Bool(true)) {
        Ok(Ok(v))
    } else {
        Ok(Err(v))
    }
}

/// How `tinyinetd status` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The aligned table.
    Table,
    /// The status document, pretty-printed.
    Json,
    /// The Prometheus text format.
    Prometheus,
}

/// `tinyinetd status`: the text to print.
pub fn status(config: &Path, format: Format) -> Result<String, Failure> {
    let path = socket_path(config)?;
    let reply = request(&path, "status", STATUS_TIMEOUT)?;
    let doc = reply
        .get("status")
        .ok_or_else(|| format!("the daemon on {} sent no status", path.display()))?;
    match format {
        Format::Table => crate::report::table(doc).map_err(Failure::from),
        Format::Json => serde_json::to_string_pretty(doc)
            .map(|mut s| {
                s.push('\n');
                s
            })
            .map_err(|e| Failure::from(e.to_string())),
        Format::Prometheus => crate::report::prometheus(doc).map_err(Failure::from),
    }
}

/// The Prometheus text from the daemon's `metrics` command
/// (`tinyinetd-metrics`).
pub fn metrics(config: &Path) -> Result<String, Failure> {
    let path = socket_path(config)?;
    let reply = request(&path, "metrics", STATUS_TIMEOUT)?;
    reply
        .get("metrics")
        .and_then(Value::as_str)
        .map(String::from)
        .ok_or_else(|| format!("the daemon on {} sent no metrics", path.display()).into())
}

/// `tinyinetd reload`: what changed, one line each, or (`Err`) why the
/// daemon kept its configuration: the problems as `--check` prints them.
pub fn reload(config: &Path) -> Result<String, Failure> {
    let path = socket_path(config)?;
    let reply = request(&path, "reload", RELOAD_TIMEOUT)?;
    let r = reply
        .get("reload")
        .ok_or_else(|| format!("the daemon on {} sent no reload result", path.display()))?;
    Ok(changes(r))
}

/// A successful reload's changes, one line each (`reloaded` alone when
/// nothing changed).
pub fn changes(r: &Value) -> String {
    let mut out = String::new();
    let items = |key: &str| -> Vec<String> {
        r.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|v| match v.as_str() {
                        Some(s) => crate::text::escape(s),
                        None => crate::text::escape(&v.to_string()),
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    for (key, what) in [
        ("services_added", "service added"),
        ("services_removed", "service removed"),
        ("services_changed", "service changed"),
        ("sockets_opened", "socket opened"),
        ("sockets_closed", "socket closed"),
        ("sockets_kept", "socket kept"),
        ("sockets_failed", "socket failed"),
    ] {
        for item in items(key) {
            out.push_str(what);
            out.push_str(": ");
            out.push_str(&item);
            out.push('\n');
        }
    }
    let config = r.get("config").and_then(Value::as_str).unwrap_or("");
    out.push_str(&format!("reloaded {}\n", crate::text::escape(config)));
    out
}
