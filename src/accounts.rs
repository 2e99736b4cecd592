//! User and group lookups, through `getent(1)`, at config load only.
//!
//! The daemon is linked statically (see BENCHMARKS.md: it keeps its memory
//! under 2 MiB and its start free of the dynamic loader). A static glibc
//! cannot load the NSS modules a host may name in `nsswitch.conf` (systemd,
//! sss, ldap) without dragging a second, shared libc into the process, so
//! the daemon asks glibc's own `getent`, which every glibc system has
//! (Debian: libc-bin, Essential), and reads its answer. The lookups follow
//! `nsswitch.conf` exactly as `getpwnam`, `getgrnam` and `getgrouplist`
//! would, and happen only while a config is loaded, never per connection.
//!
//! `getent` is run by absolute path, with an empty environment, no input and
//! a time limit; its exit status tells found (0) from not found (2). Its
//! output is read while it runs (an answer may exceed a pipe's capacity),
//! up to a size limit. These lookups wait, so the daemon never makes them
//! in its loop: at start and for `--check` nothing is served yet, and a
//! reload makes them in a resolver child (`resolver`).

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `getent` is looked for, in order. No `PATH` search: the daemon
/// usually runs as root.
const GETENT: [&str; 2] = ["/usr/bin/getent", "/bin/getent"];

/// How long one lookup may take (a directory server may be slow or down).
const LIMIT: Duration = Duration::from_secs(10);

/// The most one lookup may answer, stdout and stderr together. A group
/// of 100,000 members is under 1 MiB; more than this is not an answer.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// A passwd entry: name, uid, primary gid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passwd {
    /// The name as the entry spells it (a lookup by number finds it too).
    pub name: String,
    /// The user's uid.
    pub uid: u32,
    /// The user's primary gid.
    pub gid: u32,
}

/// A group entry: name, gid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The name as the entry spells it.
    pub name: String,
    /// The group's gid.
    pub gid: u32,
}

/// Looks up a user by name or, when `key` is all digits, by uid.
pub fn passwd(key: &str) -> Result<Option<Passwd>, String> {
    lookup("passwd", key, parse_passwd)
}

/// Looks up a group by name or, when `key` is all digits, by gid.
pub fn group(key: &str) -> Result<Option<Group>, String> {
    lookup("group", key, parse_group)
}

/// One entry of `db`, parsed; `None` when getent knows no such key.
fn lookup<T>(db: &str, key: &str, parse: fn(&str) -> Option<T>) -> Result<Option<T>, String> {
    match query(db, key)? {
        None => Ok(None),
        Some(out) => {
            let line = first_line(&out);
            parse(line)
                .map(Some)
                .ok_or_else(|| format!("getent {db} {key}: unexpected answer {line:?}"))
        }
    }
}

/// The supplementary groups of `user` (as `initgroups(3)` would set them;
/// the primary group is not necessarily among them).
pub fn initgroups(user: &str) -> Result<Vec<u32>, String> {
    match query("initgroups", user)? {
        None => Ok(Vec::new()),
        Some(out) => parse_initgroups(first_line(&out)).ok_or_else(|| {
            format!(
                "getent initgroups {user}: unexpected answer {:?}",
                first_line(&out)
            )
        }),
    }
}

fn first_line(out: &str) -> &str {
    out.lines().next().unwrap_or("")
}

/// Runs `getent DB -- KEY`: `Ok(Some(stdout))` when found, `Ok(None)` when
/// not, `Err` with the reason when the lookup itself failed.
fn query(db: &str, key: &str) -> Result<Option<String>, String> {
    if key.is_empty() || key.contains(['\0', '\n', ':']) {
        // Such a name cannot be in any database; do not hand it to getent.
        return Ok(None);
    }
    let Some(getent) = GETENT.iter().map(Path::new).find(|p| p.is_file()) else {
        return Err(format!(
            "looking up {db} \"{key}\" needs getent(1) (glibc's libc-bin), which is not in /usr/bin or /bin"
        ));
    };
    let what = format!("getent {db} {key}");
    let mut child = Command::new(getent)
        .args([db, "--", key])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: {}", crate::text::io_reason(&e)))?;
    let deadline = Instant::now() + LIMIT;
    // Read both pipes while getent runs: an answer may be larger than a
    // pipe holds (a group of 12,000 members is a 130 KB line), and getent
    // cannot exit before it has written it all.
    let read = read_both(&mut child, deadline);
    let (out, err) = match read {
        Ok(x) => x,
        Err(why) => {
            // Our own child, by PID; then reap it.
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what}: {why}"));
        }
    };
    // Both pipes are closed: getent is exiting. Wait for it, still bounded.
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what}: no answer within {}s", LIMIT.as_secs()));
            }
            Err(e) => return Err(format!("{what}: {}", crate::text::io_reason(&e))),
        }
    };
    let out = String::from_utf8_lossy(&out).into_owned();
    let err = String::from_utf8_lossy(&err);
    match status.code() {
        Some(0) => Ok(Some(out)),
        Some(2) => Ok(None),
        _ => {
            let err = err.trim();
            Err(if err.is_empty() {
                format!("{what}: failed ({status})")
            } else {
                format!("{what}: failed ({status}): {err}")
            })
        }
    }
}

/// Reads the child's stdout and stderr until both are closed, polling both
/// with `deadline`; at most [`MAX_ANSWER`] bytes in all.
fn read_both(child: &mut Child, deadline: Instant) -> Result<(Vec<u8>, Vec<u8>), String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut pipes = [
        child.stdout.take().map(OwnedFd::from),
        child.stderr.take().map(OwnedFd::from),
    ];
    let mut got: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut buf = vec![0u8; 64 * 1024];
    while pipes.iter().any(Option::is_some) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no answer within {}s", LIMIT.as_secs()));
        }
        let open: Vec<usize> = (0..2).filter(|&i| pipes[i].is_some()).collect();
        let mut fds: Vec<PollFd<'_>> = open
            .iter()
            .filter_map(|&i| pipes[i].as_ref())
            .map(|p| PollFd::new(p.as_fd(), PollFlags::POLLIN))
            .collect();
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("poll: {}", crate::text::os_error(e))),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        for (k, &i) in open.iter().enumerate() {
            if !ready[k] {
                continue;
            }
            let Some(p) = &pipes[i] else { continue };
            match nix::unistd::read(p, &mut buf) {
                Ok(0) => pipes[i] = None,
                Ok(n) => {
                    if got[0].len() + got[1].len() + n > MAX_ANSWER {
                        return Err(format!(
                            "the answer is larger than {} MiB",
                            MAX_ANSWER / (1024 * 1024)
                        ));
                    }
                    got[i].extend_from_slice(&buf[..n]);
                }
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Err(e) => return Err(format!("reading its answer: {}", crate::text::os_error(e))),
            }
        }
    }
    let [out, err] = got;
    Ok((out, err))
}

/// `name:password:uid:gid:gecos:home:shell`.
pub fn parse_passwd(line: &str) -> Option<Passwd> {
    let mut f = line.split(':');
    let name = f.next()?;
    let _password = f.next()?;
    let uid = f.next()?.parse().ok()?;
    let gid = f.next()?.parse().ok()?;
    if name.is_empty() {
        return None;
    }
    Some(Passwd {
        name: name.to_string(),
        uid,
        gid,
    })
}

/// `name:password:gid:members`.
pub fn parse_group(line: &str) -> Option<Group> {
    let mut f = line.split(':');
    let name = f.next()?;
    let _password = f.next()?;
    let gid = f.next()?.parse().ok()?;
    if name.is_empty() {
        return None;
    }
    Some(Group {
        name: name.to_string(),
        gid,
    })
}

/// `name gid gid …` (white-space separated; no gids at all is valid).
pub fn parse_initgroups(line: &str) -> Option<Vec<u32>> {
    let mut f = line.split_whitespace();
    f.next()?;
    f.map(|g| g.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lines() {
        assert_eq!(
            parse_passwd("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin"),
            Some(Passwd {
                name: "nobody".into(),
                uid: 65534,
                gid: 65534
            })
        );
        assert_eq!(parse_passwd(""), None);
        assert_eq!(parse_passwd("a:x:1"), None);
        assert_eq!(parse_passwd("a:x:-1:0::/:/bin/sh"), None);
        assert_eq!(parse_passwd("a:x:1:4294967296::/:/bin/sh"), None);
        assert_eq!(parse_passwd(":x:1:1::/:/bin/sh"), None);
    }

    #[test]
    fn group_lines() {
        assert_eq!(
            parse_group("nogroup:x:65534:"),
            Some(Group {
                name: "nogroup".into(),
                gid: 65534
            })
        );
        assert_eq!(parse_group("staff:x:50:alice,bob").map(|g| g.gid), Some(50));
        assert_eq!(parse_group("staff:x:"), None);
        assert_eq!(parse_group("staff"), None);
    }

    #[test]
    fn initgroups_lines() {
        assert_eq!(parse_initgroups("root                 "), Some(vec![]));
        assert_eq!(
            parse_initgroups("alice                 1000 27 100"),
            Some(vec![1000, 27, 100])
        );
        assert_eq!(parse_initgroups("alice 1000 x"), None);
        assert_eq!(parse_initgroups(""), None);
    }

    #[test]
    fn impossible_names_are_not_found_without_asking() {
        assert_eq!(query("passwd", ""), Ok(None));
        assert_eq!(query("passwd", "a:b"), Ok(None));
        assert_eq!(query("passwd", "a\nroot"), Ok(None));
    }

    /// Against the machine itself: root exists everywhere getent does.
    #[test]
    fn root_is_found_and_a_nonsense_name_is_not() {
        if !GETENT.iter().any(|p| Path::new(p).is_file()) {
            assert!(passwd("root").is_err());
            return;
        }
        let root = passwd("root")
            .expect("lookup of root")
            .expect("root exists");
        assert_eq!((root.name.as_str(), root.uid), ("root", 0));
        assert_eq!(
            passwd("0").expect("lookup of uid 0").map(|p| p.name),
            Some("root".into())
        );
        assert_eq!(passwd("no-such-user-tinyinetd-x").expect("lookup"), None);
        let g = group("root")
            .expect("lookup of group root")
            .expect("group root exists");
        assert_eq!(g.gid, 0);
        assert!(initgroups("root").is_ok());
    }
}
