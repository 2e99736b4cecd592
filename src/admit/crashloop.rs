//! A wait service's crash loop, pure: quick exits counted, the pause that
//! grows with them, the end of an episode (SPEC §10.5).

use std::time::Duration;

use super::Backoff;

/// A wait service's crash loop (SPEC §10.5): a handler that exits within
/// [`CrashLoop::QUICK`] of its start, [`CrashLoop::TRIES`] times in a row,
/// pauses the service for a delay that starts at 1 s and doubles up to 60 s
/// with each further quick exit; a handler that lives longer ends the
/// episode. The service is never disabled for good: it is tried again
/// after every delay (and at a reload).
///
/// Why it is needed: a wait handler is started when its socket is
/// readable, and one that exits without reading leaves it readable, so
/// without a pause the daemon would start it again at once, forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CrashLoop {
    /// Quick exits in a row.
    pub quick: u32,
    /// The growing delay; `failures > 0` while an episode lasts.
    backoff: Backoff,
}

/// What one wait handler's exit means for its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashStep {
    /// Nothing to do or log.
    Nothing,
    /// Pause the service this long (logged, with the delay).
    Pause(Duration),
    /// A handler lived past [`CrashLoop::QUICK`]: the episode, which had
    /// this many quick exits, is over (logged once).
    Resumed { quick: u32 },
}

impl CrashLoop {
    /// A handler that exits sooner than this is a quick exit.
    pub const QUICK: Duration = Duration::from_secs(1);
    /// Quick exits in a row before the first pause.
    pub const TRIES: u32 = 5;
    /// The first pause.
    pub const FIRST: Duration = Duration::from_secs(1);
    /// The longest pause.
    pub const CAP: Duration = Duration::from_secs(60);

    /// A wait handler exited after `lived`.
    pub fn exited(&mut self, lived: Duration) -> CrashStep {
        if lived > Self::QUICK {
            let quick = std::mem::take(&mut self.quick);
            return match self.backoff.succeed() {
                0 => CrashStep::Nothing,
                _ => CrashStep::Resumed { quick },
            };
        }
        self.quick = self.quick.saturating_add(1);
        if self.quick < Self::TRIES {
            return CrashStep::Nothing;
        }
        CrashStep::Pause(self.backoff.fail_from(Self::FIRST, Self::CAP))
    }

    /// Whether an episode is under way (the service has paused for it).
    pub fn in_episode(&self) -> bool {
        self.backoff.failures > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_loop_pauses_after_five_quick_exits_doubling_to_a_minute() {
        let mut c = CrashLoop::default();
        let quick = Duration::from_millis(5);
        for _ in 0..4 {
            assert_eq!(c.exited(quick), CrashStep::Nothing);
        }
        assert!(!c.in_episode());
        let delays: Vec<u64> = (0..9)
            .map(|_| match c.exited(quick) {
                CrashStep::Pause(d) => d.as_secs(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert!(c.in_episode());
        // Exactly one second is still quick; past it ends the episode.
        assert!(matches!(c.exited(CrashLoop::QUICK), CrashStep::Pause(_)));
        assert_eq!(
            c.exited(Duration::from_millis(1001)),
            CrashStep::Resumed { quick: 14 }
        );
        assert!(!c.in_episode());
        // A new episode starts from scratch: five quick exits, then 1 s.
        for _ in 0..4 {
            assert_eq!(c.exited(quick), CrashStep::Nothing);
        }
        assert_eq!(c.exited(quick), CrashStep::Pause(Duration::from_secs(1)));
    }

    #[test]
    fn a_long_lived_handler_between_quick_ones_resets_the_count() {
        let mut c = CrashLoop::default();
        let quick = Duration::from_millis(5);
        for _ in 0..4 {
            c.exited(quick);
        }
        assert_eq!(c.exited(Duration::from_secs(2)), CrashStep::Nothing);
        for _ in 0..4 {
            assert_eq!(c.exited(quick), CrashStep::Nothing);
        }
    }
}
