//! Single flight with a short memory: concurrent asks for the same key share
//! one upstream request, and its answer is reused for a moment afterwards.
//! A burst of identical requests (a fleet rolling out, or someone hammering a
//! missing tag) costs the upstream one request per key for as long as the
//! caller's `keep` says its answer holds.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

/// Entries kept before expired ones are swept out.
const SWEEP_ABOVE: usize = 4096;

struct Entry<V> {
    created: Instant,
    cell: Arc<OnceCell<(Instant, V)>>,
}

pub struct Coalesce<K, V> {
    entries: Mutex<HashMap<K, Entry<V>>>,
}

impl<K, V> Default for Coalesce<K, V> {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Coalesce<K, V> {
    /// The answer for `key`: a recent one (younger than what `keep` says for
    /// it), the one being computed, or a new one from `run`. A caller that
    /// goes away while computing leaves it to the next waiter.
    pub async fn get<F, Fut>(&self, key: K, keep: impl Fn(&V) -> Duration, run: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let fresh = |e: &Entry<V>| match e.cell.get() {
                None => true,
                Some((done, v)) => done.elapsed() < keep(v),
            };
            if entries.len() > SWEEP_ABOVE {
                entries.retain(|_, e| fresh(e) || e.created.elapsed() < Duration::from_secs(60));
            }
            match entries.get(&key) {
                Some(e) if fresh(e) => e.cell.clone(),
                _ => {
                    let cell = Arc::new(OnceCell::new());
                    entries.insert(
                        key.clone(),
                        Entry {
                            created: Instant::now(),
                            cell: cell.clone(),
                        },
                    );
                    cell
                }
            }
        };
        let (_, v) = cell.get_or_init(|| async { (Instant::now(), run().await) }).await;
        v.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_asks_share_one_run_and_the_answer_is_kept_briefly() {
        let c: Arc<Coalesce<&str, u32>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (c, runs, gate) = (c.clone(), runs.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                c.get(
                    "k",
                    |_| Duration::from_secs(60),
                    || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        gate.notified().await;
                        7
                    },
                )
                .await
            }));
        }
        // Let every task reach the shared run, then release it.
        while runs.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        gate.notify_waiters();
        gate.notify_one();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 7);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Within the time kept: no new run.
        let again = c.get("k", |_| Duration::from_secs(60), || async { 9 }).await;
        assert_eq!(again, 7);
        // An answer not kept (zero) is computed anew.
        let fresh = c.get("k", |_| Duration::ZERO, || async { 9 }).await;
        assert_eq!(fresh, 9);
    }
}
