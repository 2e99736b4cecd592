//! Any bytes as a configuration file: `Ok` or errors with positions, never a
//! panic. Users and programs are resolved through a fixed fake system, so
//! the fuzzer explores the parser and the validation, not the machine.
#![no_main]

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use tinyinetd::config::{self, System};
use tinyinetd::trust::{Mode, Refusal};

struct Fake;

impl System for Fake {
    fn identity(&self) -> (u32, u32) {
        (0, 0)
    }
    fn user(&self, name: &str) -> Result<Option<(u32, u32)>, String> {
        Ok(match name {
            "root" => Some((0, 0)),
            "nobody" => Some((65534, 65534)),
            _ => None,
        })
    }
    fn user_name(&self, _uid: u32) -> Result<Option<String>, String> {
        Ok(None)
    }
    fn group(&self, name: &str) -> Result<Option<u32>, String> {
        Ok((name == "nogroup").then_some(65534))
    }
    fn group_name(&self, gid: u32) -> Result<Option<String>, String> {
        Ok((gid == 65534).then(|| "nogroup".to_string()))
    }
    fn group_list(&self, _user: &str, gid: u32) -> Result<Vec<u32>, String> {
        Ok(vec![gid])
    }
    fn exe_dir(&self) -> Option<PathBuf> {
        Some(PathBuf::from("/opt/bin"))
    }
    fn program(&self, path: &Path, _mode: Mode) -> Result<Option<OwnedFd>, Refusal> {
        // Exec by path: the fuzzer checks the parser and the validation,
        // not the machine's files.
        if path.starts_with("/usr/libexec/tinyinetd") || path == Path::new("/bin/cat") {
            Ok(None)
        } else {
            Err(Refusal::Unusable("No such file or directory".into(), None))
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = config::parse(Path::new("f.toml"), text, &Fake) {
        assert!(!e.problems.is_empty());
        for p in &e.problems {
            assert!(p.line >= 1 && p.col >= 1, "{p:?}");
            assert!(!p.message.contains('\n'), "{p:?}");
        }
        let _ = e.to_string();
    }
});
