//! A test double for the checks that depend on who the daemon is: the
//! real system, as a daemon that is not root sees it.

use std::path::Path;

use crate::config::{RealSystem, System};

/// The real system, seen by a daemon running as uid 1000 (not root): a
/// test double the key checks of the other files share.
pub(in crate::config) struct NotRoot;

impl System for NotRoot {
    fn identity(&self) -> (u32, u32) {
        (1000, 1000)
    }
    fn user(&self, name: &str) -> Result<Option<(u32, u32)>, String> {
        RealSystem.user(name)
    }
    fn user_name(&self, uid: u32) -> Result<Option<String>, String> {
        RealSystem.user_name(uid)
    }
    fn group(&self, name: &str) -> Result<Option<u32>, String> {
        RealSystem.group(name)
    }
    fn group_name(&self, gid: u32) -> Result<Option<String>, String> {
        RealSystem.group_name(gid)
    }
    fn group_list(&self, user: &str, gid: u32) -> Result<Vec<u32>, String> {
        RealSystem.group_list(user, gid)
    }
    fn exe_dir(&self) -> Option<std::path::PathBuf> {
        None
    }
    fn program(
        &self,
        path: &Path,
        mode: crate::trust::Mode,
    ) -> Result<Option<std::os::fd::OwnedFd>, crate::trust::Refusal> {
        RealSystem.program(path, mode)
    }
}
