//! Remembered outcomes of password checks, so that a Docker client resending
//! the same Basic credentials on every request costs one bcrypt (~100 ms of
//! CPU) per credential, not per request. Entries are keyed by the user and a
//! salted SHA-256 of the password, never the password itself; both maps are
//! bounded and every entry expires. Failures are remembered too, for less
//! long and in a smaller map, so a client looping on a wrong password cannot
//! make berth burn a bcrypt per request.

use std::collections::HashMap;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// How long a verified credential is trusted without another bcrypt. A
/// password removed from the htpasswd file stops working at the next reload
/// (the cache is cleared then), so this bounds only a rotation done by some
/// other means; 5 minutes is a few hundred requests of one `docker pull`.
const VERIFIED_TTL: Duration = Duration::from_secs(5 * 60);
/// Verified credentials kept: one per user per password in use, so 10 000
/// covers a large fleet with room for rotation.
const MAX_VERIFIED: usize = 10_000;
/// How long a wrong password is answered from memory: long enough that a
/// retry loop costs one bcrypt a minute, short enough not to matter to a
/// person who fixes a typo (a fixed password is a different key anyway).
const FAILED_TTL: Duration = Duration::from_secs(60);
/// Wrong credentials kept: a client spraying passwords gets a bcrypt per
/// distinct guess whatever this is, so it only has to cover the clients
/// stuck on one stale password.
const MAX_FAILED: usize = 1_000;

/// User and salted password digest.
pub(super) type Key = (String, [u8; 32]);

#[derive(Debug)]
pub(super) struct CredentialCache {
    /// Per process, so the digests are useless outside it.
    salt: [u8; 16],
    verified: Bounded,
    failed: Bounded,
}

impl CredentialCache {
    pub fn new() -> Self {
        Self {
            salt: rand::random(),
            verified: Bounded::new(MAX_VERIFIED, VERIFIED_TTL),
            failed: Bounded::new(MAX_FAILED, FAILED_TTL),
        }
    }

    #[cfg(test)]
    fn with_limits(max: usize, ttl: Duration) -> Self {
        Self {
            salt: rand::random(),
            verified: Bounded::new(max, ttl),
            failed: Bounded::new(max, ttl),
        }
    }

    pub fn key(&self, user: &str, password: &str) -> Key {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(password.as_bytes());
        (user.to_string(), h.finalize().into())
    }

    /// The remembered outcome, if still fresh.
    pub fn get(&self, key: &Key, now: Instant) -> Option<bool> {
        if self.verified.fresh(key, now) {
            Some(true)
        } else if self.failed.fresh(key, now) {
            Some(false)
        } else {
            None
        }
    }

    pub fn insert(&mut self, key: Key, ok: bool, now: Instant) {
        if ok {
            self.failed.map.remove(&key);
            self.verified.insert(key, now);
        } else {
            self.failed.insert(key, now);
        }
    }

    pub fn clear(&mut self) {
        self.verified.map.clear();
        self.failed.map.clear();
    }
}

#[derive(Debug)]
struct Bounded {
    max: usize,
    ttl: Duration,
    /// Key to expiry.
    map: HashMap<Key, Instant>,
}

impl Bounded {
    fn new(max: usize, ttl: Duration) -> Self {
        Self {
            max: max.max(1),
            ttl,
            map: HashMap::new(),
        }
    }

    fn fresh(&self, key: &Key, now: Instant) -> bool {
        self.map.get(key).is_some_and(|&expires| now < expires)
    }

    fn insert(&mut self, key: Key, now: Instant) {
        if !self.map.contains_key(&key) && self.map.len() >= self.max {
            self.map.retain(|_, &mut expires| now < expires);
            if self.map.len() >= self.max
                && let Some(soonest) = self.map.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone())
            {
                self.map.remove(&soonest);
            }
        }
        self.map.insert(key, now + self.ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_both_outcomes_until_they_expire() {
        let mut c = CredentialCache::with_limits(10, Duration::from_secs(5));
        let t0 = Instant::now();
        let good = c.key("alice", "right");
        let bad = c.key("alice", "wrong");
        assert_ne!(good, bad);
        assert_eq!(c.get(&good, t0), None);
        c.insert(good.clone(), true, t0);
        c.insert(bad.clone(), false, t0);
        assert_eq!(c.get(&good, t0), Some(true));
        assert_eq!(c.get(&bad, t0), Some(false));
        assert_eq!(c.get(&good, t0 + Duration::from_secs(5)), None, "expired");
        c.insert(good.clone(), true, t0);
        c.clear();
        assert_eq!(c.get(&good, t0), None);
    }

    #[test]
    fn keys_hold_no_password() {
        let c = CredentialCache::new();
        let (user, digest) = c.key("alice", "hunter2");
        assert_eq!(user, "alice");
        assert!(!format!("{digest:?}{c:?}").contains("hunter2"));
        assert_ne!(c.key("bob", "hunter2"), (user, digest));
    }

    #[test]
    fn bounded() {
        let mut c = CredentialCache::with_limits(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..10u64 {
            let k = c.key(&format!("u{i}"), "p");
            c.insert(k, true, t0 + Duration::from_millis(i));
        }
        assert_eq!(c.verified.map.len(), 3);
        // The newest are the ones kept.
        assert_eq!(c.get(&c.key("u9", "p"), t0), Some(true));
        assert_eq!(c.get(&c.key("u0", "p"), t0), None);
    }
}
