//! The most-pulled images since start, for the status page: manifest
//! requests that resolved to a manifest, counted by upstream, repository and
//! the tag or digest asked for. Memory is bounded whatever clients send:
//! only names that resolved are counted (a client cannot invent them), and
//! past `MAX_KEYS` distinct ones the least-counted is dropped to make room,
//! so images pulled often stay while one-off names replace one another.
//! One short mutex hold per manifest request.

use std::collections::HashMap;
use std::sync::Mutex;

/// Distinct images remembered: a fleet pulls a few hundred; 1000 entries
/// of about 200 bytes are a fifth of a megabyte.
pub const MAX_KEYS: usize = 1000;

/// One image's pulls, as `/_berth/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pulled {
    pub upstream: String,
    pub repository: String,
    /// The tag or digest asked for.
    pub reference: String,
    pub count: u64,
    pub last_pulled_unix_ms: u64,
}

pub struct TopImages {
    max_keys: usize,
    /// Keyed by upstream, repository and reference joined by newlines
    /// (none of them can hold one).
    pulls: Mutex<HashMap<String, Pulled>>,
}

impl Default for TopImages {
    fn default() -> Self {
        Self::with_capacity(MAX_KEYS)
    }
}

impl TopImages {
    pub fn with_capacity(max_keys: usize) -> Self {
        Self {
            max_keys: max_keys.max(1),
            pulls: Mutex::new(HashMap::new()),
        }
    }

    /// Count one pull of `repository` at `reference` from `upstream`.
    pub fn pulled(&self, upstream: &str, repository: &str, reference: &str, now_ms: u64) {
        let key = format!("{upstream}\n{repository}\n{reference}");
        let mut pulls = self.pulls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pulls.get_mut(&key) {
            p.count = p.count.saturating_add(1);
            p.last_pulled_unix_ms = now_ms;
            return;
        }
        if pulls.len() >= self.max_keys {
            // The least pulled, the longest ago among equals: a scan of at
            // most `max_keys`, only when a new name arrives at the bound.
            let least = pulls
                .iter()
                .min_by_key(|(_, p)| (p.count, p.last_pulled_unix_ms))
                .map(|(k, _)| k.clone());
            if let Some(k) = least {
                pulls.remove(&k);
            }
        }
        pulls.insert(
            key,
            Pulled {
                upstream: upstream.to_string(),
                repository: repository.to_string(),
                reference: reference.to_string(),
                count: 1,
                last_pulled_unix_ms: now_ms,
            },
        );
    }

    /// The `n` most pulled, most first (the latest first among equals).
    pub fn top(&self, n: usize) -> Vec<Pulled> {
        let mut all: Vec<Pulled> = self
            .pulls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| {
            (b.count, b.last_pulled_unix_ms, &a.repository, &a.reference).cmp(&(
                a.count,
                a.last_pulled_unix_ms,
                &b.repository,
                &b.reference,
            ))
        });
        all.truncate(n);
        all
    }

    /// Distinct images remembered now.
    pub fn len(&self) -> usize {
        self.pulls.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_orders_by_pulls() {
        let t = TopImages::default();
        for at in 0..3 {
            t.pulled("docker.io", "library/app", "1.0", at);
        }
        t.pulled("docker.io", "library/app", "sha256:ab", 5);
        t.pulled("ghcr.io", "library/app", "1.0", 4);
        let top = t.top(10);
        assert_eq!(top.len(), 3);
        assert_eq!(
            (top[0].reference.as_str(), top[0].count, top[0].last_pulled_unix_ms),
            ("1.0", 3, 2)
        );
        assert_eq!(top[1].reference, "sha256:ab", "the latest first among equals");
        assert_eq!(top[2].upstream, "ghcr.io");
        assert_eq!(t.top(1).len(), 1);
    }

    #[test]
    fn a_flood_of_names_keeps_the_bound_and_the_popular_ones() {
        let t = TopImages::with_capacity(10);
        for at in 0..5 {
            t.pulled("docker.io", "library/popular", "1", at);
        }
        for i in 0..10_000u64 {
            t.pulled("docker.io", &format!("random/{i}"), "latest", 10 + i);
        }
        assert_eq!(t.len(), 10);
        let top = t.top(10);
        assert_eq!((top[0].repository.as_str(), top[0].count), ("library/popular", 5));
        assert!(
            top.iter().any(|p| p.repository == "random/9999"),
            "the newest name is in"
        );
    }
}
