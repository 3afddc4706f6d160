//! The rate-limit window of one upstream: a 429 says "not now", not "down".
//! It opens the window until the time the upstream named (`Retry-After`, or
//! `ratelimit-reset`), bounded; while it is open nothing is sent, misses fail
//! at once with `rate_limited` and the window's end, and cached content is
//! served. The circuit breaker never hears of a 429.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A 429 that says nothing of when to come back: a minute covers the
/// per-minute burst limits most registries have, and is longer than a
/// request's deadline, so the request that met the 429 is answered at once.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// The longest berth stays away on an upstream's word: Docker Hub's pull
/// limit resets over six hours, but an hour bounds what a wrong or hostile
/// header can do, and a request an hour on finds out afresh.
pub const MAX_WINDOW: Duration = Duration::from_secs(3600);

#[derive(Default)]
pub struct RateWindow {
    until: Mutex<Option<Instant>>,
}

impl RateWindow {
    /// Open (or extend) the window for `secs` from now, `DEFAULT_WINDOW`
    /// when the upstream did not say; returns the time left, bounded.
    pub fn open(&self, secs: Option<u64>) -> Duration {
        let wait = secs.map_or(DEFAULT_WINDOW, Duration::from_secs).min(MAX_WINDOW);
        let now = Instant::now();
        // `now + MAX_WINDOW` cannot overflow on any clock; `checked_add`
        // keeps it so on a clock that starts near its end.
        let Some(end) = now.checked_add(wait) else {
            return wait;
        };
        if let Ok(mut until) = self.until.lock() {
            let end = until.filter(|&u| u > end).unwrap_or(end);
            *until = Some(end);
            return end.saturating_duration_since(now);
        }
        wait
    }

    /// Time left while the window is open.
    pub fn remaining(&self) -> Option<Duration> {
        let until = (*self.until.lock().ok()?)?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }
}

/// Whole seconds, rounded up, so a client told to wait never comes back early.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_until_a_429() {
        let w = RateWindow::default();
        assert_eq!(w.remaining(), None);
        let left = w.open(Some(30));
        assert!(
            left <= Duration::from_secs(30) && left > Duration::from_secs(29),
            "{left:?}"
        );
        let open = w.remaining().expect("open");
        assert!(open <= left);
        assert_eq!(ceil_secs(open), 30);
    }

    #[test]
    fn default_when_unsaid_and_bounded_when_huge() {
        let w = RateWindow::default();
        assert!(w.open(None) <= DEFAULT_WINDOW);
        assert!(w.open(None) > DEFAULT_WINDOW - Duration::from_secs(1));
        let w = RateWindow::default();
        assert!(w.open(Some(u64::MAX)) <= MAX_WINDOW);
        assert!(w.remaining().expect("open") <= MAX_WINDOW);
    }

    #[test]
    fn a_shorter_429_does_not_shorten_the_window() {
        let w = RateWindow::default();
        w.open(Some(600));
        assert!(w.open(Some(1)) > Duration::from_secs(599));
    }

    #[test]
    fn zero_closes_at_once() {
        let w = RateWindow::default();
        w.open(Some(0));
        assert_eq!(w.remaining(), None);
    }

    #[test]
    fn rounding_up() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(5)), 5);
        assert_eq!(ceil_secs(Duration::MAX), u64::MAX);
    }
}
