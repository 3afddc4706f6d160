//! The rate-limit window of one upstream: a 429 says "not now", not "down".
//! It opens the window until the time the upstream named (`Retry-After`, or
//! `ratelimit-reset`), bounded; while it is open nothing is sent, misses fail
//! at once with `rate_limited` and the window's end, and cached content is
//! served. The circuit breaker never hears of a 429.
//!
//! Before the 429, the upstream's `ratelimit-limit` / `ratelimit-remaining`
//! headers say how much is left: [`Headroom`] reads them, for the gauges and
//! for one warning when the remainder falls low.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Warn when fewer than this share of the upstream's pulls remain: a tenth of
/// Docker Hub's anonymous 100 per 6 h is ten pulls, time to act before the 429.
pub const LOW_HEADROOM_PERCENT: u64 = 10;

/// What an answer's rate-limit headers said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
}

impl Quota {
    /// From the header values, `None` when absent: Docker Hub's `100;w=21600`
    /// gives 100; a value that does not start with a number is ignored.
    pub fn read(limit: Option<&str>, remaining: Option<&str>) -> Quota {
        Quota {
            limit: limit.and_then(leading_number),
            remaining: remaining.and_then(leading_number),
        }
    }

    /// Under [`LOW_HEADROOM_PERCENT`] of the limit; `None` without both.
    fn is_low(self) -> Option<bool> {
        let (limit, remaining) = (self.limit?, self.remaining?);
        (limit > 0).then(|| u128::from(remaining) * 100 < u128::from(limit) * u128::from(LOW_HEADROOM_PERCENT))
    }
}

/// The number a rate-limit field starts with (`76;w=21600`, `76, 100;w=60`).
fn leading_number(value: &str) -> Option<u64> {
    let v = value.trim();
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    let rest = v[digits..].trim_start();
    if digits == 0 || !(rest.is_empty() || rest.starts_with([';', ','])) {
        return None;
    }
    v[..digits].parse().ok()
}

/// Whether the remainder is low, so that one warning goes out per fall
/// below the mark (not one per answer), and another only after it rose again.
#[derive(Default)]
pub struct Headroom {
    low: AtomicBool,
}

impl Headroom {
    /// Take note of an answer's quota; true when it is the one that fell
    /// below the mark (of any number of concurrent answers, one sees true).
    pub fn fell_low(&self, quota: Quota) -> bool {
        match quota.is_low() {
            Some(true) => !self.low.swap(true, Ordering::AcqRel),
            Some(false) => {
                self.low.store(false, Ordering::Release);
                false
            }
            None => false,
        }
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
    fn quota_headers() {
        assert_eq!(
            Quota::read(Some("100;w=21600"), Some("76;w=21600")),
            Quota {
                limit: Some(100),
                remaining: Some(76)
            }
        );
        assert_eq!(Quota::read(Some(" 60 "), Some("0, 60;w=60")).remaining, Some(0));
        for garbage in ["", "w=21600", "-1", "1.5", "12abc", "99999999999999999999999", "; 5"] {
            assert_eq!(leading_number(garbage), None, "{garbage:?}");
        }
        assert_eq!(Quota::read(None, None), Quota::default());
    }

    #[test]
    fn one_warning_per_fall_below_a_tenth() {
        let h = Headroom::default();
        let q = |remaining| Quota {
            limit: Some(100),
            remaining: Some(remaining),
        };
        assert!(!h.fell_low(q(10)), "10 of 100 is not under a tenth");
        assert!(h.fell_low(q(9)));
        assert!(!h.fell_low(q(8)) && !h.fell_low(q(0)), "once per crossing");
        assert!(
            !h.fell_low(Quota::default()),
            "an answer without headers changes nothing"
        );
        assert!(!h.fell_low(Quota {
            limit: None,
            remaining: Some(1)
        }));
        assert!(!h.fell_low(q(7)));
        assert!(!h.fell_low(q(50)), "back above: re-armed");
        assert!(h.fell_low(q(3)));
        let zero = Headroom::default();
        assert!(
            !zero.fell_low(Quota {
                limit: Some(0),
                remaining: Some(0)
            }),
            "no limit, no mark"
        );
        let huge = Headroom::default();
        assert!(!huge.fell_low(Quota {
            limit: Some(u64::MAX),
            remaining: Some(u64::MAX)
        }));
        assert!(huge.fell_low(Quota {
            limit: Some(u64::MAX),
            remaining: Some(u64::MAX / 11)
        }));
    }

    #[test]
    fn rounding_up() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(5)), 5);
        assert_eq!(ceil_secs(Duration::MAX), u64::MAX);
    }
}
