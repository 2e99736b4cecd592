//! Unit tests of `[daemon] control_socket` and `control_group`.

use super::*;

#[test]
fn control_socket_and_group() {
    use crate::plan::{ControlGroup, ControlSocket};
    let with = |keys: &str| MINIMAL.replace("[daemon]\n", &format!("[daemon]\n{keys}\n"));
    let d = check(MINIMAL, 0).unwrap().daemon;
    let root = PathBuf::from("/run/tinyinetd/control.sock");
    assert_eq!(d.control_socket, ControlSocket::Default(root));
    assert_eq!(d.control_group, ControlGroup::default());
    let d = check(&with("control_socket = \"\"\ncontrol_group = \"staff\""), 0)
        .unwrap()
        .daemon;
    assert_eq!(d.control_socket, ControlSocket::Off);
    assert_eq!(
        (d.control_group.name.as_str(), d.control_group.gid),
        ("staff", 50)
    );
    let d = check(
        &with("control_socket = \"/run/x.sock\"\ncontrol_group = \"77\""),
        0,
    )
    .unwrap();
    assert_eq!(
        d.daemon.control_socket,
        ControlSocket::Explicit("/run/x.sock".into())
    );
    assert_eq!(d.daemon.control_group.gid, 77);
    let e = errors(&with(
        "control_socket = \"x.sock\"\ncontrol_group = \"nosuch\"",
    ));
    assert!(
        e.contains("t.toml:3:18: daemon: \"control_socket\" \"x.sock\" must be an absolute path"),
        "{e}"
    );
    assert!(
        e.contains("t.toml:4:17: daemon: \"control_group\": unknown group \"nosuch\""),
        "{e}"
    );
    let long = format!("control_socket = \"/{}\"", "a".repeat(120));
    assert!(errors(&with(&long)).contains("longer than a Unix socket path"));
    assert!(errors(&with("control_socket = 5")).contains("\"control_socket\" must be a string"));
}

#[test]
fn the_default_control_socket_follows_the_identity() {
    use crate::plan::default_control_socket;
    use std::ffi::OsStr;
    let run = Some(OsStr::new("/run/user/1000"));
    assert_eq!(
        default_control_socket(0, run),
        Some("/run/tinyinetd/control.sock".into())
    );
    assert_eq!(
        default_control_socket(1000, run),
        Some("/run/user/1000/tinyinetd/control.sock".into())
    );
    assert_eq!(default_control_socket(1000, None), None);
    assert_eq!(default_control_socket(1000, Some(OsStr::new(""))), None);
}

#[test]
fn a_daemon_that_is_not_root_keeps_its_own_group_by_default() {
    let d = check(MINIMAL, 1000).expect("valid").daemon;
    assert_eq!(d.control_group.gid, 1000);
    let staff = MINIMAL.replace("[daemon]\n", "[daemon]\ncontrol_group = \"staff\"\n");
    assert_eq!(
        check(&staff, 1000).expect("valid").daemon.control_group.gid,
        50
    );
}
