//! Any bytes as a configuration file: `Ok` or errors with positions, never a
//! panic. Users and programs are resolved through a fixed fake system, so
//! the fuzzer explores the parser and the validation, not the machine.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use tinyinetd::config::{self, System};

struct Fake;

impl System for Fake {
    fn identity(&self) -> (u32, u32) {
        (0, 0)
    }
    fn user(&self, name: &str) -> Option<(u32, u32)> {
        match name {
            "root" => Some((0, 0)),
            "nobody" => Some((65534, 65534)),
            _ => None,
        }
    }
    fn user_name(&self, _uid: u32) -> Option<String> {
        None
    }
    fn group(&self, name: &str) -> Option<u32> {
        (name == "nogroup").then_some(65534)
    }
    fn group_name(&self, gid: u32) -> Option<String> {
        (gid == 65534).then(|| "nogroup".to_string())
    }
    fn group_list(&self, _user: &str, gid: u32) -> Vec<u32> {
        vec![gid]
    }
    fn exe_dir(&self) -> Option<PathBuf> {
        Some(PathBuf::from("/opt/bin"))
    }
    fn executable(&self, path: &Path) -> Result<(), String> {
        if path.starts_with("/usr/libexec/tinyinetd") || path == Path::new("/bin/cat") {
            Ok(())
        } else {
            Err("No such file or directory".into())
        }
    }
    fn root_only(&self, _path: &Path) -> Result<(), String> {
        Ok(())
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
