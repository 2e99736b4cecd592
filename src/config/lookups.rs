//! Account lookups asked once per load: [`Accounts`] is a [`System`] that
//! asks each account question of the real system once (live) and records
//! it, or answers from such a record only (replay). The reload's resolver
//! child (`crate::resolver`) carries the record from its load to the
//! daemon's; it lives here so that `load` needs nothing above `config`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::System;

/// One account question.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Question {
    User(String),
    UserName(u32),
    Group(String),
    GroupName(u32),
    GroupList(String, u32),
}

/// Its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    User(Result<Option<(u32, u32)>, String>),
    Name(Result<Option<String>, String>),
    Group(Result<Option<u32>, String>),
    GroupList(Result<Vec<u32>, String>),
}

/// Every question asked in one load, with its answer.
pub type Record = HashMap<Question, Answer>;

/// A [`System`] whose account questions are asked of `sys` once each
/// (live) or answered from a record only (replay); file questions go to
/// `sys` either way.
pub struct Accounts<'s> {
    /// Where live questions and all file questions go.
    sys: &'s dyn System,
    /// Every answer so far (live) or the only answers there are (replay).
    record: RefCell<Record>,
    /// Whether a question missing from `record` is an error, not a lookup.
    replay: bool,
}

impl<'s> Accounts<'s> {
    /// Asks `sys`, once per question.
    pub fn live(sys: &'s dyn System) -> Accounts<'s> {
        Accounts {
            sys,
            record: RefCell::new(Record::new()),
            replay: false,
        }
    }

    /// Answers from `record` only.
    pub fn replay(sys: &'s dyn System, record: Record) -> Accounts<'s> {
        Accounts {
            sys,
            record: RefCell::new(record),
            replay: true,
        }
    }

    pub fn into_record(self) -> Record {
        self.record.into_inner()
    }

    fn ask(&self, q: Question, live: impl FnOnce(&dyn System) -> Answer) -> Answer {
        if let Some(a) = self.record.borrow().get(&q) {
            return a.clone();
        }
        let a = if self.replay {
            let why = format!(
                "{} was not looked up by the reload's resolver: the configuration changed during the reload; send SIGHUP again",
                describe(&q)
            );
            match q {
                Question::User(_) => Answer::User(Err(why)),
                Question::UserName(_) | Question::GroupName(_) => Answer::Name(Err(why)),
                Question::Group(_) => Answer::Group(Err(why)),
                Question::GroupList(..) => Answer::GroupList(Err(why)),
            }
        } else {
            live(self.sys)
        };
        if !self.replay {
            self.record.borrow_mut().insert(q, a.clone());
        }
        a
    }
}

fn describe(q: &Question) -> String {
    match q {
        Question::User(n) => format!("user {n:?}"),
        Question::UserName(u) => format!("the name of uid {u}"),
        Question::Group(n) => format!("group {n:?}"),
        Question::GroupName(g) => format!("the name of gid {g}"),
        Question::GroupList(n, g) => format!("the groups of user {n:?} (gid {g})"),
    }
}

// A mismatched answer kind can only come from a record that was tampered
// with; it reads as a failed lookup, never as a panic.
const MISMATCH: &str = "the resolver's record does not match its question";

impl System for Accounts<'_> {
    fn identity(&self) -> (u32, u32) {
        self.sys.identity()
    }
    fn user(&self, name: &str) -> Result<Option<(u32, u32)>, String> {
        match self.ask(Question::User(name.into()), |s| Answer::User(s.user(name))) {
            Answer::User(a) => a,
            _ => Err(MISMATCH.into()),
        }
    }
    fn user_name(&self, uid: u32) -> Result<Option<String>, String> {
        match self.ask(Question::UserName(uid), |s| Answer::Name(s.user_name(uid))) {
            Answer::Name(a) => a,
            _ => Err(MISMATCH.into()),
        }
    }
    fn group(&self, name: &str) -> Result<Option<u32>, String> {
        match self.ask(Question::Group(name.into()), |s| {
            Answer::Group(s.group(name))
        }) {
            Answer::Group(a) => a,
            _ => Err(MISMATCH.into()),
        }
    }
    fn group_name(&self, gid: u32) -> Result<Option<String>, String> {
        match self.ask(Question::GroupName(gid), |s| {
            Answer::Name(s.group_name(gid))
        }) {
            Answer::Name(a) => a,
            _ => Err(MISMATCH.into()),
        }
    }
    fn group_list(&self, user: &str, gid: u32) -> Result<Vec<u32>, String> {
        match self.ask(Question::GroupList(user.into(), gid), |s| {
            Answer::GroupList(s.group_list(user, gid))
        }) {
            Answer::GroupList(a) => a,
            _ => Err(MISMATCH.into()),
        }
    }
    fn exe_dir(&self) -> Option<PathBuf> {
        self.sys.exe_dir()
    }
    fn program(
        &self,
        path: &Path,
        mode: crate::trust::Mode,
    ) -> Result<Option<OwnedFd>, crate::trust::Refusal> {
        self.sys.program(path, mode)
    }
    fn interpreter(
        &self,
        script: &Path,
        runner: &crate::trust::Runner<'_>,
        path_var: &str,
    ) -> Result<Option<PathBuf>, String> {
        self.sys.interpreter(script, runner, path_var)
    }
}
