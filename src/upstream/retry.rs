//! When to try an upstream request again, and how long to wait first:
//! exponential backoff with full jitter, `Retry-After` honoured, everything
//! inside one per-request deadline.

use std::time::{Duration, Instant};

use rand::Rng;

use super::error::UpstreamError;
use crate::config::RetryConfig;
use crate::failure::FailureCause;

/// Whether another attempt could get a different answer. Definite answers
/// (401/403/404, a bad certificate, a bad proxy setting) are never retried.
pub fn is_retryable(e: &UpstreamError) -> bool {
    match e.root() {
        UpstreamError::Status { status, .. } => matches!(status, 429 | 502 | 503 | 504),
        UpstreamError::TokenRefused { status, .. } => *status == 429 || *status >= 500,
        // A body that ended early continues from where it stopped.
        UpstreamError::Truncated { .. } => true,
        UpstreamError::Http(_) => matches!(
            e.cause(),
            FailureCause::ConnectionRefused
                | FailureCause::ConnectTimeout
                | FailureCause::ReadTimeout
                | FailureCause::ConnectionReset
                | FailureCause::UpstreamUnavailable
        ),
        _ => false,
    }
}

/// Whether a status is one to retry (the response is turned into an error first).
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// A deadline longer than this is taken as this: `Instant + Duration` must
/// not overflow on a configured "100000000d".
const MAX_DEADLINE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The schedule of one request's attempts.
pub struct Backoff {
    policy: RetryConfig,
    deadline: Instant,
    /// Attempts made so far.
    pub attempts: u32,
}

impl Backoff {
    pub fn new(policy: RetryConfig) -> Self {
        Self {
            policy,
            deadline: Instant::now() + policy.deadline.min(MAX_DEADLINE),
            attempts: 0,
        }
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// How long to wait before the next attempt after `error`, or `None` when
    /// the attempts or the deadline are used up (or `Retry-After` asks for
    /// longer than the deadline allows: the client is better told at once).
    pub fn next_delay(&self, error: &UpstreamError) -> Option<Duration> {
        if self.attempts >= self.policy.attempts || !is_retryable(error) {
            return None;
        }
        let exp = self.attempts.saturating_sub(1).min(20);
        let ceiling = self
            .policy
            .base_delay
            .saturating_mul(1u32 << exp)
            .min(self.policy.max_delay);
        let ceiling = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        let jitter = Duration::from_micros(rand::rng().random_range(0..=ceiling));
        let delay = match error.retry_after() {
            Some(secs) => jitter.max(Duration::from_secs(secs)),
            None => jitter,
        };
        (delay < self.remaining()).then_some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, retry_after: Option<u64>) -> UpstreamError {
        UpstreamError::Status {
            status,
            code: None,
            retry_after,
            ratelimit: None,
            denied_with_token: false,
        }
    }

    fn policy(attempts: u32) -> RetryConfig {
        RetryConfig {
            attempts,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
            deadline: Duration::from_secs(10),
        }
    }

    #[test]
    fn definite_answers_are_not_retried() {
        let mut b = Backoff::new(policy(5));
        b.attempts = 1;
        for s in [400, 401, 403, 404, 500] {
            assert_eq!(b.next_delay(&status(s, None)), None, "{s}");
        }
        for s in [429, 502, 503, 504] {
            assert!(b.next_delay(&status(s, None)).is_some(), "{s}");
        }
    }

    #[test]
    fn delays_are_bounded_and_attempts_counted() {
        let mut b = Backoff::new(policy(4));
        for attempt in 1..4 {
            b.attempts = attempt;
            let d = b.next_delay(&status(503, None)).expect("a retry");
            assert!(d <= Duration::from_millis(400), "{d:?}");
        }
        b.attempts = 4;
        assert_eq!(b.next_delay(&status(503, None)), None);
    }

    #[test]
    fn retry_after_is_honoured_within_the_deadline() {
        let mut b = Backoff::new(policy(4));
        b.attempts = 1;
        assert!(b.next_delay(&status(429, Some(2))).expect("a retry") >= Duration::from_secs(2));
        assert_eq!(b.next_delay(&status(429, Some(60))), None, "beyond the deadline");
        assert_eq!(b.next_delay(&status(429, Some(u64::MAX))), None, "no overflow");
    }

    #[test]
    fn huge_configured_delays_do_not_overflow() {
        let mut b = Backoff::new(RetryConfig {
            attempts: 4,
            base_delay: Duration::MAX,
            max_delay: Duration::MAX,
            deadline: Duration::MAX,
        });
        b.attempts = 3;
        // No panic; a delay, if any, stays within the (bounded) deadline.
        if let Some(d) = b.next_delay(&status(503, None)) {
            assert!(d < MAX_DEADLINE, "{d:?}");
        }
    }
}
