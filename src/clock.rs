//! Time, from one place. Every component is handed a [`Clock`] and reads the wall clock and the
//! monotonic clock through it; nothing else in the crate reads either (`clippy.toml` bans
//! `Timestamp::now`, `SystemTime::now` and both `Instant::now`s outside this module). So a test
//! can stand the wall clock wherever it likes ([`Clock::manual`]), and tokio's paused clock
//! governs the monotonic one.
//!
//! A leaf: it imports nothing from the crate.

// The one place allowed to read the clocks.
#![allow(clippy::disallowed_methods)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// The wall clock (event and alert times, deadlines) and the monotonic clock (timeouts,
/// elapsed time). Cheap to clone; clones share a manual clock's setting.
#[derive(Clone, Default)]
pub struct Clock {
    manual: Option<Arc<Mutex<Timestamp>>>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.manual {
            None => f.write_str("Clock(system)"),
            Some(at) => write!(f, "Clock(manual at {})", *at.lock().expect("clock lock")),
        }
    }
}

impl Clock {
    /// The machine's clocks.
    pub fn system() -> Self {
        Self::default()
    }

    /// A wall clock that stands at `at` until [`Clock::set`] or [`Clock::advance`] moves it
    /// (the monotonic clock stays tokio's, which a test may pause).
    pub fn manual(at: Timestamp) -> Self {
        Self {
            manual: Some(Arc::new(Mutex::new(at))),
        }
    }

    /// Now, by the wall clock.
    pub fn now(&self) -> Timestamp {
        match &self.manual {
            None => Timestamp::now(),
            Some(at) => *at.lock().expect("clock lock"),
        }
    }

    /// Now, by the monotonic clock (paused with tokio's test clock).
    pub fn instant(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }

    /// How long from now until `t` by the wall clock; zero when it has passed.
    pub fn until(&self, t: Timestamp) -> Duration {
        let now = self.now();
        if t <= now {
            Duration::ZERO
        } else {
            Duration::try_from(t.duration_since(now)).unwrap_or(Duration::MAX)
        }
    }

    /// Moves a manual clock to `at` (a system clock cannot be moved: ignored).
    pub fn set(&self, at: Timestamp) {
        if let Some(now) = &self.manual {
            *now.lock().expect("clock lock") = at;
        }
    }

    /// Moves a manual clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        if let Some(now) = &self.manual {
            let mut now = now.lock().expect("clock lock");
            *now = now
                .saturating_add(SignedDuration::try_from(by).unwrap_or(SignedDuration::MAX))
                .unwrap_or(Timestamp::MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_stands_still_until_moved_and_its_clones_move_with_it() {
        let t0: Timestamp = "2026-12-07T09:00:00Z".parse().unwrap();
        let clock = Clock::manual(t0);
        let clone = clock.clone();
        assert_eq!(clock.now(), t0);
        clock.advance(Duration::from_secs(90));
        assert_eq!(clone.now(), t0 + SignedDuration::from_secs(90));
        assert_eq!(
            clock.until(t0 + SignedDuration::from_secs(100)),
            Duration::from_secs(10)
        );
        assert_eq!(clock.until(t0), Duration::ZERO, "a time passed is due now");
        clone.set(t0);
        assert_eq!(clock.now(), t0);
    }

    #[test]
    fn the_system_clock_reads_the_machine() {
        let clock = Clock::system();
        let (a, b) = (Timestamp::now(), clock.now());
        assert!(b >= a && b.duration_since(a) < SignedDuration::from_secs(5));
        clock.set(Timestamp::UNIX_EPOCH);
        assert!(
            clock.now() > Timestamp::UNIX_EPOCH,
            "a system clock cannot be moved"
        );
    }
}
