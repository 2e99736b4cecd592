//! Unit tests of `resolver`.

use std::cell::RefCell;
use std::path::PathBuf;

use super::*;
use crate::config::System;

fn sample() -> Record {
    let mut r = Record::new();
    r.insert(
        Question::User("alice".into()),
        Answer::User(Ok(Some((1000, 100)))),
    );
    r.insert(Question::User("x\ty\\z\n".into()), Answer::User(Ok(None)));
    r.insert(
        Question::User("ldap".into()),
        Answer::User(Err("getent passwd ldap: no answer within 10s".into())),
    );
    r.insert(Question::UserName(0), Answer::Name(Ok(Some("root".into()))));
    r.insert(Question::GroupName(7), Answer::Name(Ok(None)));
    r.insert(Question::Group("staff".into()), Answer::Group(Ok(Some(50))));
    r.insert(
        Question::Group("none".into()),
        Answer::Group(Err("e\tf".into())),
    );
    r.insert(
        Question::GroupList("alice".into(), 100),
        Answer::GroupList(Ok(vec![100, 27, 50])),
    );
    r.insert(
        Question::GroupList("bob".into(), 5),
        Answer::GroupList(Ok(vec![])),
    );
    r
}

#[test]
fn records_survive_the_pipe() {
    let r = sample();
    assert_eq!(decode(&encode(&r)), Ok(r));
    assert_eq!(decode(&encode(&Record::new())), Ok(Record::new()));
}

#[test]
fn a_cut_or_garbled_record_is_an_error() {
    let text = encode(&sample());
    let cut = &text[..text.len() - 4];
    assert!(decode(cut).unwrap_err().contains("ended before"));
    assert!(decode("").is_err());
    assert!(decode("q\tx\tok\t1\nend\n")
        .unwrap_err()
        .contains("unreadable"));
    assert!(decode("u\tx\tok\tnot-a-number\nend\n").is_err());
    assert!(decode("end\nu\tx\tnone\n").is_err());
}

#[test]
fn past_its_deadline_a_resolver_is_killed_with_its_group() {
    use std::os::unix::process::CommandExt as _;
    // A stand-in resolver: a process group of its own that never answers.
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .process_group(0)
        .spawn()
        .expect("spawn sleep");
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    nix::fcntl::fcntl(
        &r,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .expect("nonblocking");
    let now = Instant::now();
    let mut p = Pending {
        pid: Pid::from_raw(child.id() as i32),
        pipe: std::fs::File::from(r),
        buf: Vec::new(),
        deadline: now + Duration::from_secs(30),
        again: false,
        ended: false,
    };
    assert!(matches!(p.read(now), Progress::More));
    match p.read(now + DEADLINE) {
        Progress::Failed(why) => assert!(why.contains("did not finish within 30s"), "{why}"),
        _ => panic!("no failure past the deadline"),
    }
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(child.wait().expect("wait").signal(), Some(libc::SIGKILL));
    drop(w);
}

/// Counts what it is asked; knows alice (1000, gid 100) only.
struct Counting {
    asked: RefCell<usize>,
}

impl System for Counting {
    fn identity(&self) -> (u32, u32) {
        (0, 0)
    }
    fn user(&self, name: &str) -> Result<Option<(u32, u32)>, String> {
        *self.asked.borrow_mut() += 1;
        Ok((name == "alice").then_some((1000, 100)))
    }
    fn user_name(&self, _: u32) -> Result<Option<String>, String> {
        *self.asked.borrow_mut() += 1;
        Err("down".into())
    }
    fn group(&self, _: &str) -> Result<Option<u32>, String> {
        *self.asked.borrow_mut() += 1;
        Ok(None)
    }
    fn group_name(&self, _: u32) -> Result<Option<String>, String> {
        *self.asked.borrow_mut() += 1;
        Ok(Some("users".into()))
    }
    fn group_list(&self, _: &str, gid: u32) -> Result<Vec<u32>, String> {
        *self.asked.borrow_mut() += 1;
        Ok(vec![gid])
    }
    fn exe_dir(&self) -> Option<PathBuf> {
        None
    }
    fn program(
        &self,
        _: &Path,
        _: crate::trust::Mode,
    ) -> Result<Option<OwnedFd>, crate::trust::Refusal> {
        Ok(None)
    }
}

#[test]
fn each_question_is_asked_once_and_replayed_exactly() {
    let sys = Counting {
        asked: RefCell::new(0),
    };
    let live = Accounts::live(&sys);
    for _ in 0..11 {
        assert_eq!(live.user("alice"), Ok(Some((1000, 100))));
        assert_eq!(live.group_name(100), Ok(Some("users".into())));
        assert_eq!(live.group_list("alice", 100), Ok(vec![100]));
        assert_eq!(live.user_name(5), Err("down".into()));
    }
    assert_eq!(*sys.asked.borrow(), 4);
    let record = decode(&encode(&live.into_record())).expect("decode");
    let replay = Accounts::replay(&sys, record);
    assert_eq!(replay.user("alice"), Ok(Some((1000, 100))));
    assert_eq!(replay.user_name(5), Err("down".into()));
    assert_eq!(*sys.asked.borrow(), 4, "a replay asks nothing");
    let e = replay.user("bob").unwrap_err();
    assert!(
        e.contains("user \"bob\" was not looked up") && e.contains("changed during the reload"),
        "{e}"
    );
    assert_eq!(*sys.asked.borrow(), 4);
}
