//! Account lookups made once per load, and made outside the loop on reload.
//!
//! A lookup (`accounts`: getent) can take seconds, or hang until its time
//! limit, when a directory server is slow or down. At start and for
//! `--check` nothing is served yet, so the load makes them itself, through
//! [`Accounts::live`], which asks each question once per load however many
//! services name the same user.
//!
//! A reload must never make the loop wait on one. So on SIGHUP the daemon
//! forks a resolver child ([`Pending::start`]): in its own process group,
//! with every inherited descriptor closed but one pipe, it runs the whole
//! load with a recording [`Accounts`], writes every question it asked and
//! its answer to the pipe, and exits. The daemon reads that pipe as one
//! more poll source, with a deadline ([`DEADLINE`]). At its end the daemon
//! runs the same load itself, in-process, with [`Accounts::replay`]: every
//! account question is answered from the record, and everything else (the
//! file, programs, paths) is checked by the daemon as always, so the plan
//! it applies is the one it checked itself. A question that is not in the
//! record (the file changed between the two loads) is a reload error that
//! says so.
//!
//! Why not send the finished plan back instead: a plan holds what the
//! daemon itself must check and keep (programs, descriptors of them); the
//! answers to account questions are plain values, and replaying them is
//! exact.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::config::{Accounts, Answer, Question, Record};

/// How long a reload's lookups may take in all before the resolver is
/// killed and the reload fails (one lookup may take 10 s: `accounts`).
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The most a resolver may write; far above any real set of answers.
const MAX_RECORD: usize = 16 * 1024 * 1024;

/// The last line a resolver writes: what came before is complete.
const END: &str = "end";

/// A field, escaped so that it holds no tab and no newline.
fn field(out: &mut String, s: &str) {
    out.push('\t');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn unfield(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            out.push(match it.next()? {
                '\\' => '\\',
                't' => '\t',
                'n' => '\n',
                _ => return None,
            });
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// The record as text: one line per question, `END` last.
pub fn encode(record: &Record) -> String {
    let mut out = String::new();
    for (q, a) in record {
        match q {
            Question::User(n) => {
                out.push('u');
                field(&mut out, n);
            }
            Question::UserName(u) => {
                out.push('U');
                field(&mut out, &u.to_string());
            }
            Question::Group(n) => {
                out.push('g');
                field(&mut out, n);
            }
            Question::GroupName(g) => {
                out.push('G');
                field(&mut out, &g.to_string());
            }
            Question::GroupList(n, g) => {
                out.push('l');
                field(&mut out, n);
                field(&mut out, &g.to_string());
            }
        }
        let ok = match a {
            Answer::User(Ok(Some((u, g)))) => Some(format!("{u} {g}")),
            Answer::Name(Ok(Some(n))) => Some(n.clone()),
            Answer::Group(Ok(Some(g))) => Some(g.to_string()),
            Answer::GroupList(Ok(l)) => {
                let mut s = String::new();
                for (i, g) in l.iter().enumerate() {
                    if i > 0 {
                        s.push(' ');
                    }
                    let _ = write!(s, "{g}");
                }
                Some(s)
            }
            Answer::User(Ok(None)) | Answer::Name(Ok(None)) | Answer::Group(Ok(None)) => None,
            Answer::User(Err(e))
            | Answer::Name(Err(e))
            | Answer::Group(Err(e))
            | Answer::GroupList(Err(e)) => {
                field(&mut out, "err");
                field(&mut out, e);
                out.push('\n');
                continue;
            }
        };
        match ok {
            Some(v) => {
                field(&mut out, "ok");
                field(&mut out, &v);
            }
            None => field(&mut out, "none"),
        }
        out.push('\n');
    }
    out.push_str(END);
    out.push('\n');
    out
}

/// The text of [`encode`] back; `Err` when it is cut short or malformed.
pub fn decode(text: &str) -> Result<Record, String> {
    let mut record = Record::new();
    let mut ended = false;
    for line in text.lines() {
        if ended {
            return Err("the resolver wrote after its end".into());
        }
        if line == END {
            ended = true;
            continue;
        }
        let bad = || format!("the resolver wrote an unreadable line: {:?}", line);
        let f: Vec<String> = line
            .split('\t')
            .map(unfield)
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        let keys = if f[0] == "l" { 2 } else { 1 };
        if f.len() < 2 + keys {
            return Err(bad());
        }
        let id = |s: &str| s.parse::<u32>().map_err(|_| bad());
        let q = match f[0].as_str() {
            "u" => Question::User(f[1].clone()),
            "U" => Question::UserName(id(&f[1])?),
            "g" => Question::Group(f[1].clone()),
            "G" => Question::GroupName(id(&f[1])?),
            "l" => Question::GroupList(f[1].clone(), id(&f[2])?),
            _ => return Err(bad()),
        };
        let rest = &f[1 + keys..];
        let found: Result<Option<&str>, String> = match (rest[0].as_str(), rest.len()) {
            ("ok", 2) => Ok(Some(rest[1].as_str())),
            ("none", 1) => Ok(None),
            ("err", 2) => Err(rest[1].clone()),
            _ => return Err(bad()),
        };
        let num = |s: &str| s.parse::<u32>().map_err(|_| bad());
        let a = match &q {
            Question::User(_) => Answer::User(match found {
                Ok(Some(v)) => {
                    let (u, g) = v.split_once(' ').ok_or_else(bad)?;
                    Ok(Some((num(u)?, num(g)?)))
                }
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            }),
            Question::UserName(_) | Question::GroupName(_) => {
                Answer::Name(found.map(|v| v.map(String::from)))
            }
            Question::Group(_) => Answer::Group(match found {
                Ok(Some(v)) => Ok(Some(num(v)?)),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            }),
            Question::GroupList(..) => Answer::GroupList(match found {
                Ok(Some(v)) => Ok(v.split_whitespace().map(num).collect::<Result<_, _>>()?),
                Ok(None) => return Err(bad()),
                Err(e) => Err(e),
            }),
        };
        record.insert(q, a);
    }
    if !ended {
        return Err("the resolver ended before it had answered every lookup".into());
    }
    Ok(record)
}

/// What reading a resolver's pipe came to.
pub enum Progress {
    /// Not at its end yet.
    More,
    /// Every answer: the daemon may now load with [`Accounts::replay`].
    Done(Record),
    /// It failed, was killed or wrote garbage: why, for the reload error.
    Failed(String),
}

/// A reload whose lookups are being made by a resolver child.
pub struct Pending {
    /// The resolver; also its process group (it leads one of its own).
    pid: Pid,
    /// The read end of its pipe, non-blocking.
    pipe: std::fs::File,
    /// What it has written so far (the record ends with [`END`]).
    buf: Vec<u8>,
    /// When it is killed and the reload fails ([`DEADLINE`] after the start).
    pub deadline: Instant,
    /// A SIGHUP came while this reload was pending: reload again when it
    /// ends, so that the file as it is by then is the one loaded.
    pub again: bool,
    /// The pipe reached its end: the resolver has exited, its group may be
    /// gone and its pid reaped, so it must not be signalled any more.
    ended: bool,
}

impl Pending {
    /// Forks the resolver for a load of `path`.
    pub fn start(path: &Path, now: Instant) -> Result<Pending, String> {
        let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| format!("pipe: {}", crate::text::os_error(e)))?;
        nix::fcntl::fcntl(
            &r,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| format!("pipe: {}", crate::text::os_error(e)))?;
        let path = path.to_path_buf();
        let pid = crate::spawn::fork_resolver(w, move |out| resolve(&path, out))
            .map_err(|e| format!("fork: {}", crate::text::os_error(e)))?;
        Ok(Pending {
            pid,
            pipe: std::fs::File::from(r),
            buf: Vec::new(),
            deadline: now + DEADLINE,
            again: false,
            ended: false,
        })
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.pipe.as_fd()
    }

    /// Reads what the pipe holds now, without waiting; past the deadline,
    /// kills the resolver and fails.
    pub fn read(&mut self, now: Instant) -> Progress {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.pipe.read(&mut chunk) {
                Ok(0) => {
                    self.ended = true;
                    let text = String::from_utf8_lossy(&self.buf);
                    return match decode(&text) {
                        Ok(r) => Progress::Done(r),
                        Err(e) => Progress::Failed(e),
                    };
                }
                Ok(n) => {
                    if self.buf.len() + n > MAX_RECORD {
                        self.kill();
                        return Progress::Failed(format!(
                            "the account resolver wrote more than {} MiB",
                            MAX_RECORD / (1024 * 1024)
                        ));
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.kill();
                    return Progress::Failed(format!(
                        "reading the account resolver: {}",
                        crate::text::io_reason(&e)
                    ));
                }
            }
        }
        if now >= self.deadline {
            self.kill();
            return Progress::Failed(format!(
                "the account lookups (users, groups) did not finish within {}s: a user or group database is not answering",
                DEADLINE.as_secs()
            ));
        }
        Progress::More
    }

    /// SIGKILL to the resolver's whole group (its getent children with it).
    ///
    /// Sound only while the pipe has not ended: the write end is open only
    /// in the resolver (and, for a moment, in a child it is forking), so the
    /// group still has a member, and Linux does not reuse an id in use as a
    /// process group's.
    fn kill(&mut self) {
        if !self.ended {
            let _ = nix::sys::signal::killpg(self.pid, nix::sys::signal::Signal::SIGKILL);
            self.ended = true;
        }
    }
}

impl Drop for Pending {
    /// An abandoned reload (SIGTERM, or a failure) leaves nothing running.
    fn drop(&mut self) {
        self.kill();
    }
}

/// The resolver child's work: the load with a recording [`Accounts`], the
/// record to `out`. Returns the exit status.
fn resolve(path: &Path, out: OwnedFd) -> i32 {
    let sys = crate::config::RealSystem;
    let accounts = Accounts::live(&sys);
    // The load's verdict does not matter here: the daemon loads again and
    // reports it. Only its questions and their answers are wanted.
    let _ = crate::config::load_with(path, false, &accounts);
    let text = encode(&accounts.into_record());
    let mut out = std::fs::File::from(out);
    match out.write_all(text.as_bytes()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

#[cfg(test)]
mod tests;
