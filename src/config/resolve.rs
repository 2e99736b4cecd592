//! What needs the system: the program (found, opened and checked by
//! `trust`), the credentials a handler runs with, and the exec image built
//! from them once at load.

use std::ffi::CString;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::check::{esc, Checker};
use super::{System, DEFAULT_HANDLER_PATH};
use crate::plan::{Cred, ExecImage};
use crate::trust::{self, Refusal};

/// A value as written with the span its messages point at.
type Spanned = (String, Range<usize>);

/// Which database a `user` or `group` given by number is looked up in.
#[derive(Clone, Copy)]
enum Account {
    User,
    Group,
}

impl Checker<'_> {
    /// Resolves `user`/`group` into credentials, or `Ok(None)` when the
    /// daemon is not root and handlers simply keep its identity.
    pub(super) fn cred(
        &mut self,
        user: Option<&Spanned>,
        group: Option<&Spanned>,
        ctx: &str,
        sys: &dyn System,
        euid: u32,
        span: Range<usize>,
    ) -> Result<Option<Cred>, ()> {
        // Both are resolved before either fails, so both problems are
        // reported; `Some(None)` is one given whose problem was recorded.
        let user = user.map(|u| self.by_number(u, Account::User, ctx, sys));
        let group = group.map(|g| self.by_number(g, Account::Group, ctx, sys));
        if matches!(user, Some(None)) || matches!(group, Some(None)) {
            return Err(());
        }
        let (user, group) = (user.flatten(), group.flatten());
        let (user, group) = (user.as_ref(), group.as_ref());
        if euid != 0 {
            // Both are checked, so that both problems are reported.
            let user_ok = user.is_none_or(|u| self.kept_user(u, ctx, sys, euid));
            let group_ok = group.is_none_or(|g| self.kept_group(g, ctx, sys));
            return if user_ok && group_ok {
                Ok(None)
            } else {
                Err(())
            };
        }
        self.root_cred(user, group, ctx, sys, span).map(Some)
    }

    /// A `user` or `group` written as a number (as xinetd and tcpserver
    /// take it) stands for the account with that id: its name, looked up
    /// here, is what the rest resolves (the supplementary groups are found
    /// by name). Id 0 is refused: root is asked for by the word alone, so
    /// that a reader of the file sees it. `None`: a problem was recorded.
    fn by_number(
        &mut self,
        (v, span): &Spanned,
        kind: Account,
        ctx: &str,
        sys: &dyn System,
    ) -> Option<Spanned> {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Some((v.clone(), span.clone()));
        }
        let (what, id_kind, db) = match kind {
            Account::User => ("user", "uid", "passwd"),
            Account::Group => ("group", "gid", "group"),
        };
        let Ok(id) = v.parse::<u32>() else {
            let m = format!("{what} \"{}\": {id_kind} out of range", esc(v));
            self.problem(span.clone(), ctx, m);
            return None;
        };
        if id == 0 {
            let m = match kind {
                Account::User => format!("user \"{v}\" is root: handlers run as root only when the config says user = \"root\""),
                Account::Group => format!("group \"{v}\" is root: handlers run with group root only when the config says group = \"root\""),
            };
            self.problem(span.clone(), ctx, m);
            return None;
        }
        let name = match kind {
            Account::User => sys.user_name(id),
            Account::Group => sys.group_name(id),
        };
        match name {
            Ok(Some(name)) => Some((name, span.clone())),
            Ok(None) => {
                let m = format!("no {what} has {id_kind} {id} (a {what} given by number must be in the {db} database)");
                self.problem(span.clone(), ctx, m);
                None
            }
            Err(why) => {
                self.problem(span.clone(), ctx, format!("{what} \"{v}\": {why}"));
                None
            }
        }
    }

    /// For a daemon that is not root: `user` may only name the daemon's own.
    fn kept_user(&mut self, (u, uspan): &Spanned, ctx: &str, sys: &dyn System, euid: u32) -> bool {
        match sys.user(u) {
            Err(why) => {
                self.problem(uspan.clone(), ctx, format!("user \"{}\": {why}", esc(u)));
                false
            }
            Ok(None) => {
                self.problem(uspan.clone(), ctx, format!("unknown user \"{}\"", esc(u)));
                false
            }
            Ok(Some((uid, _))) if uid != euid => {
                let me = name_or_number(sys.user_name(euid), euid);
                self.problem(
                    uspan.clone(),
                    ctx,
                    format!(
                        "cannot run handlers as user \"{}\": the daemon runs as \"{me}\" (uid {euid}), not root; remove \"user\" or start the daemon as root",
                        esc(u)
                    ),
                );
                false
            }
            Ok(Some(_)) => true,
        }
    }

    /// For a daemon that is not root: `group` may only name the daemon's own.
    fn kept_group(&mut self, (g, gspan): &Spanned, ctx: &str, sys: &dyn System) -> bool {
        let (_, egid) = sys.identity();
        match sys.group(g) {
            Err(why) => {
                self.problem(gspan.clone(), ctx, format!("group \"{}\": {why}", esc(g)));
                false
            }
            Ok(None) => {
                self.problem(gspan.clone(), ctx, format!("unknown group \"{}\"", esc(g)));
                false
            }
            Ok(Some(gid)) if gid != egid => {
                let mine = name_or_number(sys.group_name(egid), egid);
                self.problem(
                    gspan.clone(),
                    ctx,
                    format!(
                        "cannot run handlers with group \"{}\": the daemon runs with group \"{mine}\" (gid {egid}), not as root; remove \"group\" or start the daemon as root",
                        esc(g)
                    ),
                );
                false
            }
            Ok(Some(_)) => true,
        }
    }

    /// For a root daemon: the user (default `nobody`), its group (or the
    /// one named) and its supplementary groups.
    fn root_cred(
        &mut self,
        user: Option<&Spanned>,
        group: Option<&Spanned>,
        ctx: &str,
        sys: &dyn System,
        span: Range<usize>,
    ) -> Result<Cred, ()> {
        let (uname, uspan) = match user {
            Some((u, s)) => (u.as_str(), s.clone()),
            None => ("nobody", span.clone()),
        };
        let (uid, primary) = self.root_user(uname, uspan, user.is_some(), ctx, sys)?;
        // Messages about the user's groups point at `user`, or the table.
        let at = user.map_or(span, |(_, s)| s.clone());
        let (gid, gname) = match group {
            Some(g) => self.root_group(g, ctx, sys)?,
            // A primary gid without a group entry is valid and shown as its
            // number; a lookup that failed is an error, never that fallback.
            None => match sys.group_name(primary) {
                Ok(name) => (primary, name.unwrap_or_else(|| primary.to_string())),
                Err(why) => {
                    self.problem(
                        at,
                        ctx,
                        format!("primary group {primary} of user \"{}\": {why}", esc(uname)),
                    );
                    return Err(());
                }
            },
        };
        let list = match sys.group_list(uname, gid) {
            Ok(list) => list,
            Err(why) => {
                self.problem(at, ctx, format!("groups of user \"{}\": {why}", esc(uname)));
                return Err(());
            }
        };
        let mut groups = vec![gid];
        for g in list {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        Ok(Cred {
            user: uname.to_string(),
            group: gname,
            uid,
            gid,
            groups,
        })
    }

    /// `(uid, primary gid)` of the user a root daemon runs handlers as.
    fn root_user(
        &mut self,
        uname: &str,
        uspan: Range<usize>,
        named: bool,
        ctx: &str,
        sys: &dyn System,
    ) -> Result<(u32, u32), ()> {
        let found = match sys.user(uname) {
            Ok(found) => found,
            Err(why) => {
                self.problem(uspan, ctx, format!("user \"{}\": {why}", esc(uname)));
                return Err(());
            }
        };
        let Some((uid, primary)) = found else {
            let m = if named {
                format!("unknown user \"{}\"", esc(uname))
            } else {
                "the default user \"nobody\" does not exist on this system; set \"user\""
                    .to_string()
            };
            self.problem(uspan, ctx, m);
            return Err(());
        };
        // Root by another name (`toor`, a uid-0 alias) is root: only the
        // word "root" may ask for it, so that a reader of the file sees it.
        if uid == 0 && uname != "root" {
            self.problem(
                uspan,
                ctx,
                format!(
                    "user \"{}\" has uid 0: handlers run as root only when the config says user = \"root\"",
                    esc(uname)
                ),
            );
            return Err(());
        }
        Ok((uid, primary))
    }

    /// The gid and name of the `group` a root daemon was given.
    fn root_group(
        &mut self,
        (g, gspan): &Spanned,
        ctx: &str,
        sys: &dyn System,
    ) -> Result<(u32, String), ()> {
        match sys.group(g) {
            // The same for a group alias of gid 0 (group root opens
            // root-group files); a user's primary group is not checked.
            Ok(Some(0)) if g != "root" => {
                self.problem(
                    gspan.clone(),
                    ctx,
                    format!(
                        "group \"{}\" has gid 0: handlers run with group root only when the config says group = \"root\"",
                        esc(g)
                    ),
                );
                Err(())
            }
            Ok(Some(gid)) => Ok((gid, g.clone())),
            Err(why) => {
                self.problem(gspan.clone(), ctx, format!("group \"{}\": {why}", esc(g)));
                Err(())
            }
            Ok(None) => {
                self.problem(gspan.clone(), ctx, format!("unknown group \"{}\"", esc(g)));
                Err(())
            }
        }
    }
}

impl Checker<'_> {
    /// A script's interpreter, checked for the user its handler runs as
    /// (`cred`, or the daemon's own identity when `None`) and with the
    /// handler's `PATH` (the service's `env` one, or the default):
    /// `Ok(None)` for a binary, `Err` once the problem is recorded at
    /// `program`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn script_interpreter(
        &mut self,
        (program, pspan): (&str, &Range<usize>),
        path: &Path,
        cred: Option<&Cred>,
        env: &[(String, String)],
        ctx: &str,
        sys: &dyn System,
    ) -> Result<Option<PathBuf>, ()> {
        let own_groups: Vec<u32>;
        let (name, uid, gid, groups) = match cred {
            Some(c) => (
                format!("user \"{}\"", esc(&c.user)),
                c.uid,
                c.gid,
                &c.groups[..],
            ),
            None => {
                let (uid, gid) = sys.identity();
                own_groups = nix::unistd::getgroups()
                    .map(|g| g.iter().map(|g| g.as_raw()).collect())
                    .unwrap_or_default();
                ("the daemon's user".to_string(), uid, gid, &own_groups[..])
            }
        };
        let runner = trust::Runner {
            name: &name,
            uid,
            gid,
            groups,
        };
        let path_var = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map_or(DEFAULT_HANDLER_PATH, |(_, v)| v.as_str());
        sys.interpreter(path, &runner, path_var).map_err(|why| {
            let m = format!("program \"{}\": {why}", esc(program));
            self.problem(pspan.clone(), ctx, m);
        })
    }
}

/// Finds and opens the program: an absolute path as is, or a bare name in
/// `handler_dir`, then beside the daemon's own executable. A file found but
/// refused as one others can change ends the search (it is an error to
/// fix, not a reason to run another file of the same name).
pub(super) fn resolve_program(
    p: &str,
    handler_dir: &Path,
    sys: &dyn System,
    mode: trust::Mode,
) -> Result<(PathBuf, Option<OwnedFd>), String> {
    let untrusted = |why: String| {
        format!(
            "program \"{}\": refusing to run a program that a user other than root can change: {why}",
            esc(p)
        )
    };
    if p.is_empty() {
        return Err("\"program\" cannot be empty".into());
    }
    if p.contains('\0') {
        return Err("\"program\" cannot contain NUL bytes".into());
    }
    if p.starts_with('/') {
        let path = PathBuf::from(p);
        return match sys.program(&path, mode) {
            Ok(fd) => Ok((path, fd)),
            Err(Refusal::Untrusted(why)) => Err(untrusted(why)),
            Err(Refusal::Unusable(why, _)) => Err(format!("program \"{}\": {why}", esc(p))),
        };
    }
    if p.contains('/') {
        return Err(format!(
            "program \"{}\" must be an absolute path or a bare file name",
            esc(p)
        ));
    }
    let mut tried = Vec::new();
    let mut dirs = vec![handler_dir.to_path_buf()];
    if let Some(d) = sys.exe_dir() {
        if d != handler_dir {
            dirs.push(d);
        }
    }
    for dir in dirs {
        let path = dir.join(p);
        match sys.program(&path, mode) {
            Ok(fd) => return Ok((path, fd)),
            Err(Refusal::Untrusted(why)) => return Err(untrusted(why)),
            Err(Refusal::Unusable(why, _)) => tried.push(format!("{}: {why}", path.display())),
        }
    }
    Err(format!(
        "program \"{}\" not found or not usable ({})",
        esc(p),
        tried.join("; ")
    ))
}

/// Builds the argv and the fixed environment as C strings, around the
/// checked program (`fd`, or `None` to exec `path`: see `RealSystem::program`).
pub(super) fn exec_image(
    name: &str,
    program: &str,
    path: &Path,
    fd: Option<OwnedFd>,
    args: &[String],
    env: &[(String, String)],
    umask: u32,
) -> Option<ExecImage> {
    use std::os::unix::ffi::OsStrExt;
    let argv0 = program.rsplit('/').next().unwrap_or(program);
    let mut argv = vec![CString::new(argv0).ok()?];
    for a in args {
        argv.push(CString::new(a.as_str()).ok()?);
    }
    let mut vars = vec![
        ("PATH".to_string(), DEFAULT_HANDLER_PATH.to_string()),
        ("PROTO".to_string(), "TCP".to_string()),
        ("TINYINETD_SERVICE".to_string(), name.to_string()),
    ];
    for (k, v) in env {
        match vars.iter_mut().find(|(vk, _)| vk == k) {
            Some(slot) => slot.1 = v.clone(),
            None => vars.push((k.clone(), v.clone())),
        }
    }
    let env = vars
        .into_iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")).ok())
        .collect::<Option<Vec<_>>>()?;
    Some(ExecImage {
        path: CString::new(path.as_os_str().as_bytes()).ok()?,
        fd,
        argv,
        env,
        umask,
        hardening: crate::plan::Hardening::default(),
        interpreter: None,
    })
}

/// A name for a message that is already an error: the name, the number
/// when there is none, and why when the lookup itself failed.
fn name_or_number(found: Result<Option<String>, String>, id: u32) -> String {
    match found {
        Ok(Some(name)) => name,
        Ok(None) => id.to_string(),
        Err(why) => format!("{id}, whose name could not be looked up: {why}"),
    }
}
