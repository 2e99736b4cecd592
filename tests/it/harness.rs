//! Starts the real `tinyinetd` binary on loopback with free ports and its own
//! notify socket, and talks to it over TCP. Every wait is bounded; every
//! process started here is stopped by PID when its `Daemon` drops.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The daemon binary under test.
pub fn daemon_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tinyinetd"))
}

/// Where cargo put the handler binaries.
pub fn bin_dir() -> PathBuf {
    daemon_bin().parent().expect("bin dir").to_path_buf()
}

/// The test handlers under tests/handlers.
pub fn handlers_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/handlers")
}

/// The project's examples.
pub fn examples_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Ports handed out in this test process, so parallel tests never share one.
static PORTS: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A port that was free on 127.0.0.1 a moment ago and not handed out before.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        let mut used = PORTS.lock().unwrap_or_else(|e| e.into_inner());
        if !used.contains(&port) {
            used.push(port);
            return port;
        }
    }
    panic!("no free port found in 100 tries");
}

/// A config template: `{port:NAME}` becomes a free port (the same one for
/// the same NAME), `{dir}` the handler directory, `{tmp}` the daemon's
/// private temporary directory.
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    /// Handler binaries and scripts, copied where any user can run them
    /// (the checkout may live under a 0700 home, and handlers run as nobody).
    pub handlers: PathBuf,
    pub config: PathBuf,
    pub ports: HashMap<String, u16>,
    notify: UnixDatagram,
    /// Every notify datagram received so far.
    notes: Vec<String>,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
}

/// The `[daemon]` table most tests want: stderr logging at debug, handlers
/// from the prepared directory.
pub const DAEMON: &str =
    "[daemon]\nlog = \"stderr\"\nlog_level = \"debug\"\nhandler_dir = \"{dir}\"\n";

impl Daemon {
    /// Starts the daemon on `template` and waits for `READY=1`.
    pub fn start(template: &str) -> Daemon {
        Self::start_with(template, |_| {})
    }

    /// Like [`start`](Self::start), letting the caller adjust the command.
    pub fn start_with(template: &str, adjust: impl Fn(&mut Command)) -> Daemon {
        let mut d = Self::prepare(template);
        d.spawn(&adjust);
        if let Err(e) = d.ready(Duration::from_secs(10)) {
            panic!("daemon did not become ready: {e}\n--- log ---\n{}", d.log());
        }
        d
    }

    /// Writes the config and the handler directory, without starting.
    pub fn prepare(template: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod tempdir");
        let handlers = dir.path().join("handlers");
        fs::create_dir(&handlers).expect("mkdir handlers");
        fs::set_permissions(&handlers, fs::Permissions::from_mode(0o755)).expect("chmod");
        for name in [
            "tinyinetd-echo",
            "tinyinetd-sum",
            "tinyinetd-daytime",
            "tinyinetd-metrics",
        ] {
            let src = bin_dir().join(name);
            if src.exists() {
                link_or_copy(&src, &handlers.join(name));
            }
        }
        for dir in [handlers_src(), examples_src()] {
            if let Ok(entries) = fs::read_dir(&dir) {
                for e in entries.flatten() {
                    let p = e.path();
                    if p.is_file() {
                        link_or_copy(&p, &handlers.join(e.file_name()));
                    }
                }
            }
        }
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        // Writable for a daemon started as another user (fault tests).
        fs::set_permissions(&notify_path, fs::Permissions::from_mode(0o777)).expect("chmod notify");
        let config = dir.path().join("tinyinetd.toml");
        let log_path = dir.path().join("daemon.log");
        let mut d = Daemon {
            child: None,
            handlers,
            config,
            ports: HashMap::new(),
            notify,
            notes: Vec::new(),
            log_path,
            exit: None,
            dir,
        };
        // Daemons started at once must not all try the default control
        // socket (as root, /run/tinyinetd/control.sock): all but the first
        // would warn. It is off unless the test asks for one (tests/it/
        // control.rs puts it in the daemon's directory).
        let text = d.expand(&with_control_socket(template));
        fs::write(&d.config, text).expect("write config");
        d
    }

    /// Replaces the template placeholders.
    pub fn expand(&mut self, template: &str) -> String {
        let mut out = template
            .replace("{dir}", &self.handlers.to_string_lossy())
            .replace("{tmp}", &self.dir.path().to_string_lossy());
        while let Some(start) = out.find("{port:") {
            let end = start + out[start..].find('}').expect("unterminated {port:");
            let name = out[start + 6..end].to_string();
            let port = *self.ports.entry(name).or_insert_with(free_port);
            out.replace_range(start..=end, &port.to_string());
        }
        out
    }

    /// Rewrites the config file from a new template (for reload tests).
    pub fn rewrite(&mut self, template: &str) {
        let text = self.expand(&with_control_socket(template));
        let tmp = self.config.with_extension("new");
        fs::write(&tmp, text).expect("write config");
        fs::rename(&tmp, &self.config).expect("rename config");
    }

    /// The command that runs the daemon on this config.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(daemon_bin());
        cmd.arg("--config")
            .arg(&self.config)
            .env("NOTIFY_SOCKET", self.dir.path().join("notify.sock"))
            .env("TINYINETD_TEST_CANARY", "must-not-leak")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    }

    pub fn spawn(&mut self, adjust: &dyn Fn(&mut Command)) {
        let log = fs::File::create(&self.log_path).expect("create log");
        let mut cmd = self.command();
        adjust(&mut cmd);
        // After `adjust`, which may have wrapped the command in a launcher.
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        self.child = Some(cmd.spawn().expect("spawn tinyinetd"));
        // A new process: the exit of an earlier one (a test that restarts
        // the daemon) must not stop `Drop` from ending this one.
        self.exit = None;
    }

    /// Waits for `READY=1`, or fails if the daemon exits first.
    pub fn ready(&mut self, within: Duration) -> Result<(), String> {
        self.wait_note("READY=1", within)
    }

    /// Waits until a notify datagram containing `needle` has arrived
    /// (counting those received before).
    pub fn wait_note(&mut self, needle: &str, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        loop {
            if self.notes.iter().any(|n| n.contains(needle)) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "no {needle} within {within:?}; got {:?}",
                    self.notes
                ));
            }
            if let Some(status) = self.try_exit() {
                // What it sent before it exited may still be queued.
                if self.notes().iter().any(|n| n.contains(needle)) {
                    return Ok(());
                }
                return Err(format!("daemon exited with {status} before {needle}"));
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            self.notify
                .set_read_timeout(Some(wait))
                .expect("set timeout");
            match self.notify.recv(&mut buf) {
                Ok(n) => self
                    .notes
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("notify recv: {e}")),
            }
        }
    }

    /// Notify datagrams received so far.
    pub fn notes(&mut self) -> Vec<String> {
        let mut buf = [0u8; 4096];
        self.notify.set_nonblocking(true).expect("nonblocking");
        while let Ok(n) = self.notify.recv(&mut buf) {
            self.notes
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.notify.set_nonblocking(false).expect("blocking");
        self.notes.clone()
    }

    pub fn port(&self, name: &str) -> u16 {
        *self
            .ports
            .get(name)
            .unwrap_or_else(|| panic!("no port named {name}"))
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port(name)))
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("daemon not started").id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("signal daemon");
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; returns whether it did.
    pub fn wait_log(&self, needle: &str, within: Duration) -> bool {
        wait_until(within, || self.log().contains(needle))
    }

    /// Log lines containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(String::from)
            .collect()
    }

    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Some(c) = &mut self.child {
                if let Ok(Some(s)) = c.try_wait() {
                    self.exit = Some(s);
                }
            }
        }
        self.exit
    }

    /// Waits for the daemon to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Descriptors the daemon has open.
    pub fn fd_count(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// `(pid, state)` of the daemon's direct children, from /proc.
    pub fn children(&self) -> Vec<(i32, char)> {
        children_of(self.pid().as_raw())
    }

    /// Zombie children of the daemon right now.
    pub fn zombies(&self) -> usize {
        self.children().iter().filter(|(_, s)| *s == 'Z').count()
    }

    /// The daemon's CPU time (user + system).
    pub fn cpu_time(&self) -> Duration {
        cpu_time(self.pid().as_raw())
    }

    /// The daemon's resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            if self.exit.is_none() && matches!(child.try_wait(), Ok(None)) {
                let pid = Pid::from_raw(child.id() as i32);
                let _ = kill(pid, Signal::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                if let Ok(None) = child.try_wait() {
                    let _ = kill(pid, Signal::SIGKILL);
                    let _ = child.wait();
                }
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "--- tinyinetd log ({}) ---\n{}",
                self.log_path.display(),
                self.log()
            );
        }
    }
}

/// `template` with `control_socket = ""` in its `[daemon]` table (added
/// at the top when it has none), unless it mentions `control_socket`
/// itself (a comment naming it keeps the default).
/// Not a path in the daemon's directory: a daemon started as another user
/// could not bind there.
pub fn with_control_socket(template: &str) -> String {
    const KEY: &str = "control_socket = \"\"\n";
    if template.contains("control_socket") {
        return template.to_string();
    }
    match template.find("[daemon]\n") {
        Some(at) => {
            let after = at + "[daemon]\n".len();
            format!("{}{KEY}{}", &template[..after], &template[after..])
        }
        None => format!("[daemon]\n{KEY}\n{template}"),
    }
}

/// Hard-links (cheap for the large debug binaries) when the file is ours;
/// copies otherwise, so that a root daemon sees root-owned handlers even in
/// a checkout owned by someone else (it refuses programs others can change).
fn link_or_copy(src: &Path, dst: &Path) {
    use std::os::unix::fs::MetadataExt;
    let ours = fs::metadata(src).is_ok_and(|m| m.uid() == nix::unistd::geteuid().as_raw());
    if !ours || fs::hard_link(src, dst).is_err() {
        fs::copy(src, dst)
            .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", src.display(), dst.display()));
    }
}

/// Makes `cmd` run through a launcher: `LAUNCHER ARGS... PROGRAM PROGRAM-ARGS...`,
/// keeping its environment (a launcher that execs keeps the pid).
pub fn launch_through<S: AsRef<std::ffi::OsStr>>(cmd: &mut Command, launcher: &str, args: &[S]) {
    let mut w = Command::new(launcher);
    w.args(args).arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => w.env(k, v),
            None => w.env_remove(k),
        };
    }
    *cmd = w;
}

/// Polls `cond` every 10 ms until it holds or `within` passes.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn children_of(ppid: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may contain spaces: fields start after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[1].parse::<i32>() == Ok(ppid) {
            out.push((pid, fields[0].chars().next().unwrap_or('?')));
        }
    }
    out
}

pub fn cpu_time(pid: i32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5): 12 and 13 after ')'.
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Connects with a 10 s timeout on every read and write.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// Connects from a chosen source address (e.g. 127.0.0.2).
pub fn connect_from(src: IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    use nix::sys::socket::{
        bind, connect as nconnect, socket, AddressFamily, SockFlag, SockType, SockaddrStorage,
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd: OwnedFd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    bind(
        fd.as_raw_fd(),
        &SockaddrStorage::from(SocketAddr::new(src, 0)),
    )?;
    nconnect(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// Sends `data`, half-closes, and reads everything until EOF.
pub fn roundtrip(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut s = connect(addr);
    s.write_all(data).expect("write");
    s.shutdown(Shutdown::Write).expect("shutdown");
    read_all(&mut s)
}

/// Reads until EOF (bounded by the stream's read timeout).
pub fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("read: {e} after {} bytes", out.len()));
    out
}

/// Reads exactly `n` bytes.
pub fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("read {n} bytes: {e}"));
    buf
}

/// Whether nothing arrives on `s` within `d` (the connection stays open and silent).
pub fn silent_for(s: &mut TcpStream, d: Duration) -> bool {
    s.set_read_timeout(Some(d)).expect("timeout");
    let mut b = [0u8; 1];
    let silent = matches!(s.read(&mut b), Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    silent
}

/// Runs `tinyinetd` with `args` to completion (for --check and start-up failures).
pub fn run_tinyinetd(args: &[&str], within: Duration) -> Output {
    let mut child = Command::new(daemon_bin())
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tinyinetd");
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "tinyinetd {args:?} did not exit within {within:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Runs `cmd` in a private mount namespace whose /dev is a fresh tmpfs with
/// null/zero/urandom/random bound in and `/dev/log` a symlink to `sock`, so
/// the test controls the syslog socket without touching the machine's.
pub fn with_private_dev_log(
    cmd: &mut std::process::Command,
    scratch: &std::path::Path,
    sock: &std::path::Path,
) {
    let script = format!(
        "set -e\nmkdir -p {d}/olddev\nmount --bind /dev {d}/olddev\nmount -t tmpfs tmpfs /dev\n\
         for n in null zero urandom random; do touch /dev/$n; mount --bind {d}/olddev/$n /dev/$n; done\n\
         ln -s {s} /dev/log\nexec \"$0\" \"$@\"\n",
        d = scratch.display(),
        s = sock.display()
    );
    launch_through(
        cmd,
        "unshare",
        &["-m", "--propagation", "private", "sh", "-c", &script],
    );
}

/// The messages of a failed start's `error: start-failed error="..."`
/// lines, unescaped, one per line: the text `--check` prints for the same
/// problems. A line of another form is kept as it is.
pub fn start_failure_messages(stderr: &str) -> String {
    let mut out = String::new();
    for line in stderr.lines() {
        let Some(v) = line.strip_prefix("error: start-failed error=") else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let quoted = v.len() >= 2 && v.starts_with('"') && v.ends_with('"');
        let v = if quoted { &v[1..v.len() - 1] } else { v };
        let mut chars = v.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        }
        out.push('\n');
    }
    out
}

/// Sends SIGHUP and waits for the reload to finish (the next `reload` or
/// `reload-failed` log line).
pub fn reload(d: &mut Daemon) {
    let before = d.log_lines("info: reload ").len() + d.log_lines("reload-failed").len();
    d.signal(Signal::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(5), || {
            d.log_lines("info: reload ").len() + d.log_lines("reload-failed").len() > before
        }),
        "reload did not finish: {}",
        d.log()
    );
}

/// The 1-based number of the first line of the file at `path` that
/// contains `needle` (config error positions, whatever the harness added
/// to the template above it).
pub fn line_of(path: &Path, needle: &str) -> usize {
    let text = std::fs::read_to_string(path).expect("read config");
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in {}", path.display()))
}

/// Starts a daemon on `conf`, whose handler appends a line per start to
/// `{tmp}/starts` (made first, writable by the handler's user); returns
/// the daemon and that file.
pub fn start_recording(conf: &str) -> (Daemon, PathBuf) {
    let mut d = Daemon::prepare(conf);
    let record = d.dir.path().join("starts");
    fs::write(&record, "").expect("create record");
    fs::set_permissions(&record, fs::Permissions::from_mode(0o666)).expect("chmod");
    d.spawn(&|_| {});
    d.ready(Duration::from_secs(10)).expect("ready");
    (d, record)
}
