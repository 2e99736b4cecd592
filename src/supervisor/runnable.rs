//! How many tasks the machine has runnable right now, for the cap on
//! handlers still starting (`admit::Starting::pace`): the fourth field of
//! `/proc/loadavg`, opened once at start and read from its start again
//! (`pread`) when the cap is reached. A procfs read never waits: the
//! kernel sums its run queues and formats one line.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::admit::runnable_of;

/// Where the count comes from.
pub const LOADAVG: &str = "/proc/loadavg";

/// The open `/proc/loadavg`, and the count last read from it.
pub struct Runnable {
    file: Option<File>,
    /// The last answer, until [`Runnable::forget`]: the count does not
    /// change for the daemon's purpose until it starts a handler or a new
    /// turn begins.
    last: Option<Option<u32>>,
    /// Why the first read that gave no count gave none, until the
    /// caller takes it to log ([`Runnable::take_problem`]).
    problem: Option<String>,
    /// Whether a problem was ever found: only the first is told.
    told: bool,
}

impl Runnable {
    /// Opens `/proc/loadavg`; without it (no `/proc`) the count is
    /// unknown and the cap holds as if the cores were busy. The error is
    /// the caller's to log.
    pub fn open() -> (Runnable, Option<std::io::Error>) {
        let (file, err) = match File::open(LOADAVG) {
            Ok(f) => (Some(f), None),
            Err(e) => (None, Some(e)),
        };
        let r = Runnable {
            file,
            last: None,
            problem: None,
            told: false,
        };
        (r, err)
    }

    /// Tasks runnable now, the daemon itself included; `None`: unknown.
    pub fn get(&mut self) -> Option<u32> {
        if let Some(v) = self.last {
            return v;
        }
        let Some(f) = &self.file else {
            self.last = Some(None);
            return None;
        };
        let mut buf = [0u8; 128];
        let v = match f.read_at(&mut buf, 0) {
            Ok(n) => runnable_of(&buf[..n]).ok_or_else(|| {
                let text = String::from_utf8_lossy(&buf[..n]);
                format!("no count of runnable tasks in {:?}", text.trim_end())
            }),
            Err(e) => Err(crate::text::io_reason(&e)),
        };
        let v = match v {
            Ok(n) => Some(n),
            Err(why) => {
                if !self.told {
                    self.told = true;
                    self.problem = Some(why);
                }
                None
            }
        };
        self.last = Some(v);
        v
    }

    /// Why the count could not be read, the first time only: the cap then
    /// holds as if the cores had no room.
    pub fn take_problem(&mut self) -> Option<String> {
        self.problem.take()
    }

    /// The next [`Runnable::get`] reads the file again.
    pub fn forget(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_read_and_kept_until_forgotten() {
        let (mut r, err) = Runnable::open();
        assert!(err.is_none(), "{err:?}");
        // This test's own thread is running.
        let n = r.get().expect("a count");
        assert!(n >= 1, "{n}");
        // Kept: a file that is gone does not change the answer.
        r.file = None;
        assert_eq!(r.get(), Some(n));
        r.forget();
        assert_eq!(r.get(), None);
        assert_eq!(r.take_problem(), None, "no file: told at open");
    }

    #[test]
    fn a_file_without_the_count_is_told_once() {
        let (mut r, _) = Runnable::open();
        r.file = File::open("/dev/null").ok();
        assert_eq!(r.get(), None);
        let why = r.take_problem().expect("a problem");
        assert!(why.contains("no count of runnable tasks"), "{why}");
        r.forget();
        assert_eq!(r.get(), None);
        assert_eq!(r.take_problem(), None, "once");
    }
}
