//! A circuit breaker per upstream: after `threshold` consecutive failed
//! attempts the upstream is considered down, and requests are refused at once
//! (so cached content is served without waiting on timeouts, and cache misses
//! fail fast) until `cooldown` has passed; then one probe is let through, and
//! its outcome closes or reopens the circuit. A probe that never reports (its
//! request was cancelled) stops counting after another `cooldown`, and the
//! next request probes instead: the circuit can never stay shut for good.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::failure::FailureCause;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
        cause: FailureCause,
    },
    /// One probe is out since `since`; everyone else is refused until it
    /// returns or is presumed lost.
    Probing {
        cause: FailureCause,
        since: Instant,
    },
}

/// A cool-down longer than this is taken as this, so `Instant + cooldown`
/// cannot overflow whatever the configuration says.
const MAX_COOLDOWN: Duration = Duration::from_secs(24 * 3600);

pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

/// A refusal: why the upstream is considered down.
#[derive(Debug, Clone, Copy)]
pub struct Open {
    pub cause: FailureCause,
}

/// What a state change means for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Opened,
    Closed,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown: cooldown.min(MAX_COOLDOWN),
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// May a request go to the upstream now?
    pub fn admit(&self) -> Result<(), Open> {
        let Ok(mut state) = self.state.lock() else {
            return Ok(());
        };
        match *state {
            State::Closed { .. } => Ok(()),
            State::Open { until, cause } if Instant::now() >= until => {
                *state = State::Probing {
                    cause,
                    since: Instant::now(),
                };
                Ok(())
            }
            State::Probing { cause, since } if since.elapsed() >= self.cooldown => {
                *state = State::Probing {
                    cause,
                    since: Instant::now(),
                };
                Ok(())
            }
            State::Open { cause, .. } | State::Probing { cause, .. } => Err(Open { cause }),
        }
    }

    /// Would `admit` refuse now? Changes nothing (no probe is taken), so a
    /// request can fail fast before it queues for a concurrency slot.
    pub fn refuses(&self) -> Option<Open> {
        let state = self.state.lock().ok()?;
        match *state {
            State::Open { until, cause } if Instant::now() < until => Some(Open { cause }),
            State::Probing { cause, since } if since.elapsed() < self.cooldown => Some(Open { cause }),
            _ => None,
        }
    }

    pub fn success(&self) -> Transition {
        let Ok(mut state) = self.state.lock() else {
            return Transition::None;
        };
        let was_down = !matches!(*state, State::Closed { .. });
        *state = State::Closed { failures: 0 };
        if was_down { Transition::Closed } else { Transition::None }
    }

    pub fn failure(&self, cause: FailureCause) -> Transition {
        let Ok(mut state) = self.state.lock() else {
            return Transition::None;
        };
        let open = State::Open {
            until: Instant::now() + self.cooldown,
            cause,
        };
        match *state {
            State::Closed { failures } if failures.saturating_add(1) >= self.threshold => {
                *state = open;
                Transition::Opened
            }
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures.saturating_add(1),
                };
                Transition::None
            }
            State::Probing { .. } => {
                *state = open;
                Transition::Opened
            }
            State::Open { .. } => Transition::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_after_cooldown() {
        let b = Breaker::new(3, Duration::ZERO);
        assert_eq!(b.failure(FailureCause::ConnectTimeout), Transition::None);
        assert_eq!(b.failure(FailureCause::ConnectTimeout), Transition::None);
        assert!(b.admit().is_ok());
        assert_eq!(b.failure(FailureCause::ConnectTimeout), Transition::Opened);
        // Cool-down of zero: the next caller is the probe (one probe at a
        // time is `a_lost_probe_is_replaced_after_the_cooldown`).
        assert!(b.admit().is_ok());
        assert_eq!(b.success(), Transition::Closed);
        assert!(b.admit().is_ok());
    }

    #[test]
    fn open_refuses_until_cooldown() {
        let b = Breaker::new(1, Duration::from_secs(3600));
        assert_eq!(b.failure(FailureCause::ConnectionRefused), Transition::Opened);
        let refused = b.admit().expect_err("open");
        assert_eq!(refused.cause, FailureCause::ConnectionRefused);
    }

    #[test]
    fn a_lost_probe_is_replaced_after_the_cooldown() {
        let b = Breaker::new(1, Duration::from_millis(30));
        b.failure(FailureCause::ConnectTimeout);
        // Nothing is admitted before the cool-down, not even a probe.
        assert!(b.admit().is_err());
        let wait_until = |ok: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !ok() {
                assert!(Instant::now() < deadline, "breaker never admitted a probe");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        wait_until(&|| b.admit().is_ok());
        // This probe never reports back (its request was cancelled).
        assert!(b.admit().is_err(), "one probe at a time");
        wait_until(&|| b.admit().is_ok());
        assert_eq!(b.success(), Transition::Closed);
    }

    #[test]
    fn refuses_peeks_without_taking_the_probe() {
        let b = Breaker::new(1, Duration::from_secs(3600));
        assert!(b.refuses().is_none());
        b.failure(FailureCause::ConnectTimeout);
        assert_eq!(b.refuses().map(|o| o.cause), Some(FailureCause::ConnectTimeout));
        let b = Breaker::new(1, Duration::ZERO);
        b.failure(FailureCause::ConnectTimeout);
        assert!(b.refuses().is_none(), "cool-down over: a probe may go");
        assert!(b.admit().is_ok(), "and peeking did not take it");
    }

    #[test]
    fn huge_cooldown_and_threshold_do_not_overflow() {
        let b = Breaker::new(u32::MAX, Duration::MAX);
        for _ in 0..3 {
            assert_eq!(b.failure(FailureCause::ConnectTimeout), Transition::None);
        }
        let b = Breaker::new(1, Duration::MAX);
        assert_eq!(b.failure(FailureCause::ConnectTimeout), Transition::Opened);
        assert!(b.admit().is_err());
    }

    #[test]
    fn a_failed_probe_reopens() {
        let b = Breaker::new(1, Duration::ZERO);
        b.failure(FailureCause::UpstreamUnavailable);
        assert!(b.admit().is_ok());
        assert_eq!(b.failure(FailureCause::UpstreamUnavailable), Transition::Opened);
    }
}
