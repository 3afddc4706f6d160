//! The per-client request limit (`[server] client_requests_per_second`): a
//! token bucket per client key (an identity, or an address for anonymous
//! clients). The map of buckets is bounded: a full bucket carries no state (a
//! new one starts full), so full and idle buckets are what is dropped first
//! when the map is at its bound, then the longest-idle ones.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::Instant;

/// Buckets kept at once. A bucket is ~100 bytes; 10 000 of them are a
/// megabyte, and more distinct clients than that within a refill time means
/// the limit should be on a load balancer anyway.
const MAX_BUCKETS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct RateLimiter {
    /// Tokens added per second.
    rate: f64,
    /// Bucket size: requests a client may make at once after being idle.
    burst: f64,
    max_buckets: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// `rate` requests per second, bursts of `burst` (at least 1). `None` for
    /// a rate of 0: no limit.
    pub fn new(rate: u32, burst: u32) -> Option<RateLimiter> {
        Self::with_capacity(rate, burst, MAX_BUCKETS)
    }

    fn with_capacity(rate: u32, burst: u32, max_buckets: usize) -> Option<RateLimiter> {
        (rate > 0).then(|| RateLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            max_buckets: max_buckets.max(1),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Take one token for `key`: `Ok` to go ahead, `Err(seconds)` to wait
    /// (at least 1, what `Retry-After` says).
    pub fn check(&self, key: &str) -> Result<(), u64> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= self.max_buckets {
            self.evict(&mut buckets, now);
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = self.refilled(bucket, now);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate;
            Err((wait.ceil() as u64).max(1))
        }
    }

    fn refilled(&self, b: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        (b.tokens + elapsed * self.rate).min(self.burst)
    }

    /// Make room for one bucket: drop every full one, and if none was full,
    /// the one idle longest.
    fn evict(&self, buckets: &mut HashMap<String, Bucket>, now: Instant) {
        buckets.retain(|_, b| self.refilled(b, now) < self.burst);
        if buckets.len() >= self.max_buckets
            && let Some(oldest) = buckets.iter().min_by_key(|(_, b)| b.at).map(|(k, _)| k.clone())
        {
            buckets.remove(&oldest);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn zero_rate_is_no_limiter() {
        assert!(RateLimiter::new(0, 10).is_none());
    }

    #[test]
    fn burst_then_refill_at_the_rate() {
        let l = RateLimiter::new(2, 3).unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check_at("a", t0), Ok(()));
        }
        assert_eq!(l.check_at("a", t0), Err(1));
        // Another client has its own bucket.
        assert_eq!(l.check_at("b", t0), Ok(()));
        // Half a second at 2/s is one token.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(l.check_at("a", t1), Ok(()));
        assert_eq!(l.check_at("a", t1), Err(1));
        // Idle for long: back to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(l.check_at("a", t2), Ok(()));
        }
        assert!(l.check_at("a", t2).is_err());
    }

    #[test]
    fn retry_after_is_whole_seconds_until_a_token() {
        let l = RateLimiter::with_capacity(1, 1, 10).unwrap();
        let t0 = Instant::now();
        assert_eq!(l.check_at("a", t0), Ok(()));
        assert_eq!(l.check_at("a", t0), Err(1));
        let slow = RateLimiter::new(1, 1).unwrap();
        assert_eq!(slow.check_at("a", t0), Ok(()));
        assert_eq!(slow.check_at("a", t0 + Duration::from_millis(100)), Err(1));
    }

    #[test]
    fn the_map_is_bounded_and_full_buckets_go_first() {
        let l = RateLimiter::with_capacity(1, 2, 3).unwrap();
        let t0 = Instant::now();
        // "busy" drains its bucket; "a" and "b" take one token each.
        assert!(l.check_at("busy", t0).is_ok());
        assert!(l.check_at("busy", t0).is_ok());
        assert!(l.check_at("a", t0).is_ok());
        assert!(l.check_at("b", t0).is_ok());
        assert_eq!(l.len(), 3);
        // One second later "a" and "b" are full again, "busy" is not: a new
        // client evicts the full ones, and "busy" keeps its debt.
        let t1 = t0 + Duration::from_secs(1);
        assert!(l.check_at("c", t1).is_ok());
        assert_eq!(l.len(), 2);
        assert!(l.check_at("busy", t1).is_ok());
        assert!(l.check_at("busy", t1).is_err(), "its bucket was kept");
        // With no full bucket, the longest idle goes.
        assert!(l.check_at("d", t1).is_ok());
        assert!(l.check_at("e", t1 + Duration::from_millis(1)).is_ok());
        assert!(l.len() <= 3);
    }
}
