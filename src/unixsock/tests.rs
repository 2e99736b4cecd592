use super::*;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn path_name(d: &tempfile::TempDir, file: &str) -> UnixName {
    UnixName::Path(d.path().join(file))
}

#[test]
fn names_parse_and_show_as_written() {
    for s in ["/run/foo.sock", "@tinyinetd-test"] {
        assert_eq!(UnixName::parse(s).unwrap().to_string(), format!("unix:{s}"));
    }
    assert!(UnixName::parse("run/foo.sock")
        .unwrap_err()
        .contains("not an absolute path"));
    assert!(UnixName::parse("@").unwrap_err().contains("needs a name"));
    assert!(UnixName::parse("/run/").unwrap_err().contains("directory"));
    let long = format!("/{}", "a".repeat(MAX_NAME));
    assert!(UnixName::parse(&long)
        .unwrap_err()
        .contains("at most 107 bytes"));
    assert!(UnixName::parse(&format!("/{}", "a".repeat(MAX_NAME - 1))).is_ok());
}

#[test]
fn the_file_gets_exactly_its_mode_whatever_the_umask() {
    let d = dir();
    let name = path_name(&d, "s.sock");
    let own = Ownership {
        mode: Some(0o660),
        ..Ownership::default()
    };
    let s = UnixSocket::bind(&name, &own, 16).unwrap();
    let m = std::fs::symlink_metadata(name.path().unwrap()).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o660);
    assert!(m.file_type().is_socket());
    UnixStream::connect(name.path().unwrap()).expect("it listens");
    drop(s);
}

#[test]
fn without_a_mode_the_file_is_the_owners_alone() {
    let d = dir();
    let name = path_name(&d, "s.sock");
    let _s = UnixSocket::bind(&name, &Ownership::default(), 16).unwrap();
    let m = std::fs::symlink_metadata(name.path().unwrap()).unwrap();
    assert_eq!(
        m.permissions().mode() & 0o077,
        0,
        "{:o}",
        m.permissions().mode()
    );
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let d = dir();
    let name = path_name(&d, "s.sock");
    let old = UnixListener::bind(name.path().unwrap()).unwrap();
    drop(old); // the file stays, nobody accepts: stale
    assert!(name.path().unwrap().exists());
    let s = UnixSocket::bind(&name, &Ownership::default(), 16).unwrap();
    UnixStream::connect(name.path().unwrap()).expect("the new socket listens");
    drop(s);
}

#[test]
fn a_live_socket_is_left_alone() {
    let d = dir();
    let name = path_name(&d, "s.sock");
    let live = UnixListener::bind(name.path().unwrap()).unwrap();
    let e = UnixSocket::bind(&name, &Ownership::default(), 16).unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    assert!(e.to_string().starts_with("binding unix:"), "{e}");
    UnixStream::connect(name.path().unwrap()).expect("still the old one's");
    drop(live);
}

#[test]
fn any_other_file_is_named_and_kept() {
    let d = dir();
    let name = path_name(&d, "s.sock");
    std::fs::write(name.path().unwrap(), b"data").unwrap();
    let e = UnixSocket::bind(&name, &Ownership::default(), 16).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("is a regular file, not a socket"), "{text}");
    assert!(
        text.contains(&name.path().unwrap().display().to_string()),
        "{text}"
    );
    assert_eq!(std::fs::read(name.path().unwrap()).unwrap(), b"data");
    std::fs::remove_file(name.path().unwrap()).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", name.path().unwrap()).unwrap();
    let e = UnixSocket::bind(&name, &Ownership::default(), 16).unwrap_err();
    assert!(e.to_string().contains("a symbolic link"), "{e}");
}

#[test]
fn the_file_goes_with_the_socket_unless_it_was_replaced() {
    let d = dir();
    let name = path_name(&d, "s.sock");
    let s = UnixSocket::bind(&name, &Ownership::default(), 16).unwrap();
    drop(s);
    assert!(!name.path().unwrap().exists(), "removed at drop");

    let s = UnixSocket::bind(&name, &Ownership::default(), 16).unwrap();
    std::fs::remove_file(name.path().unwrap()).unwrap();
    let other = UnixListener::bind(name.path().unwrap()).unwrap();
    drop(s);
    assert!(
        name.path().unwrap().exists(),
        "another's file is not ours to remove"
    );
    drop(other);
}

#[test]
fn an_abstract_socket_has_no_file_and_no_owner() {
    let n = format!("@tinyinetd-unixsock-test-{}", std::process::id());
    let name = UnixName::parse(&n).unwrap();
    let s = UnixSocket::bind(&name, &Ownership::default(), 16).unwrap();
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(&n.as_bytes()[1..]).unwrap();
    let c = UnixStream::connect_addr(&addr).expect("connects by name");
    let (_, uid, _) = peer_cred(c.as_fd()).unwrap();
    assert_eq!(uid, nix::unistd::getuid().as_raw());
    drop(s);
    let own = Ownership {
        mode: Some(0o600),
        ..Ownership::default()
    };
    let e = UnixSocket::bind(&name, &own, 16).unwrap_err();
    assert!(e.to_string().contains("no file"), "{e}");
}

#[test]
fn the_peer_is_the_connecting_process() {
    let d = dir();
    let name = path_name(&d, "s.sock");
    let s = UnixSocket::bind(&name, &Ownership::default(), 16).unwrap();
    let _c = UnixStream::connect(name.path().unwrap()).unwrap();
    let (conn, _) = s.listener().accept().unwrap();
    let (pid, uid, gid) = peer_cred(conn.as_fd()).unwrap();
    assert_eq!(pid as u32, std::process::id());
    assert_eq!(uid, nix::unistd::getuid().as_raw());
    assert_eq!(gid, nix::unistd::getgid().as_raw());
}

#[test]
fn root_gives_the_file_its_owner_and_group() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("skipped: changing a file's owner needs root");
        return;
    }
    let d = dir();
    let name = path_name(&d, "s.sock");
    let own = Ownership {
        mode: Some(0o660),
        uid: Some(65534),
        gid: Some(65534),
    };
    let _s = UnixSocket::bind(&name, &own, 16).unwrap();
    let m = std::fs::symlink_metadata(name.path().unwrap()).unwrap();
    assert_eq!(
        (m.uid(), m.gid(), m.permissions().mode() & 0o7777),
        (65534, 65534, 0o660)
    );
}

#[test]
fn only_a_socket_that_bound_its_file_owns_it() {
    let d = dir();
    let name = path_name(&d, "s.sock");
    let s = UnixSocket::bind(&name, &Ownership::default(), 16).unwrap();
    assert!(s.owns_file());
    let abs = UnixName::Abstract(format!("tinyinetd-tux-own-{}", std::process::id()).into_bytes());
    assert!(!UnixSocket::bind(&abs, &Ownership::default(), 16)
        .unwrap()
        .owns_file());
    let l = UnixListener::bind(d.path().join("other.sock")).unwrap();
    let inherited = UnixSocket::inherited(l, path_name(&d, "other.sock"));
    assert!(!inherited.owns_file());
    drop(inherited);
    assert!(
        d.path().join("other.sock").exists(),
        "an inherited socket's file is the manager's"
    );
}
