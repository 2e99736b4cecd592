//! Unit tests of `trust`.

use super::*;
use std::os::unix::fs::{chown, symlink, PermissionsExt};

/// A uid nobody on the test machine uses, for the attacker's files
/// (root can chown to any number; no account is needed).
const OTHER: u32 = 4242;

fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("SKIPPED: ownership rules need the tests to run as root");
        false
    }
}

/// A root-owned 0755 directory under the system's temporary directory.
fn tree() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    chmod(d.path(), 0o755);
    d
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn mkdir(p: &Path, mode: u32, uid: u32) {
    std::fs::create_dir(p).expect("mkdir");
    chmod(p, mode);
    chown(p, Some(uid), None).expect("chown");
}

fn file(p: &Path, text: &str, mode: u32, uid: u32) {
    std::fs::write(p, text).expect("write");
    chmod(p, mode);
    chown(p, Some(uid), None).expect("chown");
}

fn untrusted(r: Result<Vec<u8>, Refusal>) -> String {
    match r {
        Err(Refusal::Untrusted(why)) => why,
        other => panic!("expected Untrusted, got {other:?}"),
    }
}

#[test]
fn a_root_only_path_is_read() {
    if !root() {
        return;
    }
    let t = tree();
    mkdir(&t.path().join("etc"), 0o755, 0);
    let f = t.path().join("etc/c.toml");
    file(&f, "x = 1\n", 0o644, 0);
    assert_eq!(config(&f, Mode::Root).unwrap(), b"x = 1\n");
    // Relative paths, `.` and `..` resolve through the same walk.
    let odd = t.path().join("etc/./../etc/c.toml");
    assert_eq!(config(&odd, Mode::Root).unwrap(), b"x = 1\n");
}

#[test]
fn an_ancestor_owned_by_another_user_is_refused() {
    if !root() {
        return;
    }
    let t = tree();
    let atk = t.path().join("atk");
    mkdir(&atk, 0o755, OTHER);
    mkdir(&atk.join("bin"), 0o755, 0);
    let f = atk.join("bin/c.toml");
    file(&f, "", 0o644, 0);
    assert_eq!(
        untrusted(config(&f, Mode::Root)),
        format!("{} is owned by uid {OTHER}, not root", atk.display())
    );
    // Not root: the user's own files, no ownership rule.
    assert!(config(&f, Mode::User).is_ok());
}

#[test]
fn a_directory_others_can_write_must_be_sticky() {
    if !root() {
        return;
    }
    let t = tree();
    let open = t.path().join("x");
    mkdir(&open, 0o757, 0);
    let f = open.join("c.toml");
    file(&f, "", 0o644, 0);
    assert_eq!(
        untrusted(config(&f, Mode::Root)),
        format!(
            "{} is writable by others (mode 0757) and not sticky",
            open.display()
        )
    );
    chmod(&open, 0o775);
    assert!(untrusted(config(&f, Mode::Root)).contains("writable by its group (mode 0775)"));
}

/// Both sides of the sticky exception: a root-owned entry in a sticky
/// directory others can write is safe; anyone else's is not.
#[test]
fn a_sticky_directory_is_safe_only_for_root_owned_entries() {
    if !root() {
        return;
    }
    let t = tree();
    let tmp = t.path().join("tmp");
    mkdir(&tmp, 0o1777, 0);
    let mine = tmp.join("x");
    mkdir(&mine, 0o755, 0);
    file(&mine.join("c.toml"), "ok", 0o644, 0);
    assert_eq!(config(&mine.join("c.toml"), Mode::Root).unwrap(), b"ok");

    let theirs = tmp.join("y");
    mkdir(&theirs, 0o755, OTHER);
    file(&theirs.join("c.toml"), "", 0o644, 0);
    let why = untrusted(config(&theirs.join("c.toml"), Mode::Root));
    assert!(
        why.starts_with(&format!(
            "{} is owned by uid {OTHER}, not root",
            theirs.display()
        )),
        "{why}"
    );
    // A file (or a link) of another user's, right in the sticky directory.
    file(&tmp.join("c.toml"), "", 0o644, OTHER);
    assert!(untrusted(config(&tmp.join("c.toml"), Mode::Root)).contains("which others can write"));
    symlink(mine.join("c.toml"), tmp.join("link")).expect("symlink");
    nix::unistd::fchownat(
        AT_FDCWD,
        &tmp.join("link"),
        Some(nix::unistd::Uid::from_raw(OTHER)),
        None,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .expect("lchown");
    assert!(untrusted(config(&tmp.join("link"), Mode::Root)).contains("link is owned by uid 4242"));
}

#[test]
fn symlink_targets_are_walked_too() {
    if !root() {
        return;
    }
    let t = tree();
    let atk = t.path().join("atkbin");
    mkdir(&atk, 0o755, OTHER);
    file(&atk.join("c.toml"), "", 0o644, 0);
    mkdir(&t.path().join("bin"), 0o755, 0);
    let rel = t.path().join("bin/rel");
    symlink("../atkbin/c.toml", &rel).expect("symlink");
    assert_eq!(
        untrusted(config(&rel, Mode::Root)),
        format!(
            "{} is owned by uid {OTHER}, not root (reached through the symbolic link {})",
            atk.display(),
            rel.display()
        )
    );
    let abs = t.path().join("bin/abs");
    symlink(atk.join("c.toml"), &abs).expect("symlink");
    assert!(untrusted(config(&abs, Mode::Root)).contains("atkbin is owned by uid"));
    // A link to a good file is followed.
    mkdir(&t.path().join("etc"), 0o755, 0);
    file(&t.path().join("etc/good"), "g", 0o644, 0);
    symlink("../etc/good", t.path().join("bin/good")).expect("symlink");
    assert_eq!(
        config(&t.path().join("bin/good"), Mode::Root).unwrap(),
        b"g"
    );
}

#[test]
fn a_symlink_loop_is_an_eloop_error() {
    if !root() {
        return;
    }
    let t = tree();
    symlink("b", t.path().join("a")).expect("symlink");
    symlink("a", t.path().join("b")).expect("symlink");
    match config(&t.path().join("a"), Mode::Root) {
        Err(Refusal::Unusable(why, Some(Errno::ELOOP))) => {
            assert!(why.contains("more than 40 symbolic links"), "{why}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn only_small_regular_files_are_configs() {
    // Not root: the temporary directory is the user's, which only
    // Mode::User accepts.
    let modes: &[Mode] = if nix::unistd::geteuid().is_root() {
        &[Mode::Root, Mode::User]
    } else {
        &[Mode::User]
    };
    for &mode in modes {
        let t = tree();
        let r = config(Path::new("/dev/zero"), mode);
        assert_eq!(r, Err(not_regular()), "{mode:?}");
        assert_eq!(config(t.path(), mode), Err(not_regular()));
        let fifo = t.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644))
            .expect("mkfifo");
        assert_eq!(config(&fifo, mode), Err(not_regular()));
        let big = t.path().join("big");
        std::fs::write(&big, vec![b'#'; CONFIG_LIMIT as usize + 1]).expect("write");
        chmod(&big, 0o644);
        assert_eq!(
            config(&big, mode),
            Err(Refusal::Unusable(
                "the file is 1048577 bytes; the limit is 1 MiB".into(),
                None
            ))
        );
        std::fs::write(&big, vec![b'#'; CONFIG_LIMIT as usize]).expect("write");
        assert_eq!(
            config(&big, mode).map(|t| t.len()),
            Ok(CONFIG_LIMIT as usize)
        );
    }
}

#[test]
fn programs_must_be_executable_and_scripts_are_told_apart() {
    if !root() {
        return;
    }
    let t = tree();
    let bin = t.path().join("bin");
    file(&bin, "\x7fELF", 0o755, 0);
    assert!(!program(&bin, Mode::Root).unwrap().script);
    chmod(&bin, 0o644);
    assert_eq!(
        program(&bin, Mode::Root).unwrap_err(),
        Refusal::Unusable("not executable (no execute permission)".into(), None)
    );
    let sh = t.path().join("s.sh");
    file(&sh, "#! /bin/sh -e\necho\n", 0o755, 0);
    assert!(program(&sh, Mode::Root).unwrap().script);
    assert!(program(&sh, Mode::User).unwrap().script);
    // Not root: the path is resolved by the kernel, links included.
    symlink(&sh, t.path().join("link.sh")).expect("symlink");
    assert!(
        program(&t.path().join("link.sh"), Mode::User)
            .unwrap()
            .script
    );
    assert!(
        program(&t.path().join("link.sh"), Mode::Root)
            .unwrap()
            .script
    );
    let bad = t.path().join("bad.sh");
    file(&bad, &format!("#!{}/nope\n", t.path().display()), 0o755, 0);
    let why = program(&bad, Mode::Root).unwrap_err().to_string();
    assert!(
        why.starts_with("interpreter ") && why.ends_with("nope: No such file or directory"),
        "{why}"
    );
}
