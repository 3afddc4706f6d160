//! Keeps the store under `cache.max_size`: when a commit takes it over the
//! limit, the least recently used content is removed until it is back under
//! 90 % of the limit (so eviction runs in batches, not on every commit).
//! Nothing half-written is ever a candidate (temp files live elsewhere), the
//! item just committed is kept, and content being read stays readable: its
//! reader holds it open, and unlinking does not disturb open files. Evicted
//! content is fetched again, verified, the next time it is asked for.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::blobs::BlobStore;
use super::meta::Meta;
use crate::reference::Digest;

pub struct Evictor {
    max: u64,
    used: AtomicU64,
    /// Bytes in temp files of downloads under way: they take disk space now
    /// and become content soon, so they count against the limit.
    temp: AtomicU64,
    running: AtomicBool,
    store: Arc<BlobStore>,
    meta: Arc<Meta>,
}

/// What one eviction run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    pub items: usize,
    pub bytes: u64,
}

impl Evictor {
    /// Account for what the store already holds.
    pub fn open(max: u64, store: Arc<BlobStore>, meta: Arc<Meta>) -> std::io::Result<Self> {
        let used = store.list()?.iter().map(|(_, size, _)| size).sum();
        Ok(Self {
            max,
            used: AtomicU64::new(used),
            temp: AtomicU64::new(0),
            running: AtomicBool::new(false),
            store,
            meta,
        })
    }

    /// Bytes the store holds, as accounted.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// A download wrote `n` more bytes to its temp file.
    pub fn temp_grew(self: &Arc<Self>, n: u64) {
        self.temp.fetch_add(n, Ordering::Relaxed);
        self.evict_if_over(None);
    }

    /// A download's temp file (of `n` bytes) was committed or removed.
    pub fn temp_gone(&self, n: u64) {
        let _ = self
            .temp
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| Some(t.saturating_sub(n)));
    }

    /// `size` bytes were committed under `digest`; evict (on the blocking
    /// pool, one run at a time) if that took the store over the limit.
    pub fn committed(self: &Arc<Self>, digest: &Digest, size: u64) {
        self.used.fetch_add(size, Ordering::Relaxed);
        self.evict_if_over(Some(digest.clone()));
    }

    fn evict_if_over(self: &Arc<Self>, keep: Option<Digest>) {
        let total = self.used().saturating_add(self.temp.load(Ordering::Relaxed));
        if total <= self.max || self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            match this.run(keep.as_ref()) {
                Ok(done) if done.items > 0 => {
                    tracing::info!(
                        evicted = done.items,
                        bytes = done.bytes,
                        used = this.used(),
                        max = this.max,
                        "cache over max_size; least recently used content evicted"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cache eviction failed"),
            }
            this.running.store(false, Ordering::Release);
        });
    }

    /// Remove least recently used items, never `keep`, until the store and
    /// the downloads under way are under 90 % of the limit.
    pub fn run(&self, keep: Option<&Digest>) -> std::io::Result<Evicted> {
        let mut items = self.store.list()?;
        // Re-account from what is really there (crashes, outside changes).
        let total: u64 = items.iter().map(|(_, size, _)| size).sum();
        self.used.store(total, Ordering::Relaxed);
        let target = (self.max / 10 * 9).saturating_sub(self.temp.load(Ordering::Relaxed));
        if total <= target {
            return Ok(Evicted::default());
        }
        // Last use as berth knows it, else the commit time.
        let mut aged: Vec<(u64, Digest, u64)> = items
            .drain(..)
            .filter(|(d, _, _)| Some(d) != keep)
            .map(|(d, size, mtime)| {
                let used = self.meta.last_used_ms(&d).unwrap_or(0).max(mtime);
                (used, d, size)
            })
            .collect();
        aged.sort_by_key(|(used, _, _)| *used);
        let mut done = Evicted::default();
        let mut left = total;
        for (_, digest, size) in aged {
            if left <= target {
                break;
            }
            match self.store.remove(&digest) {
                Ok(()) => {
                    self.meta.forget(&digest);
                    left -= size;
                    done.items += 1;
                    done.bytes += size;
                }
                // Gone already: nothing to free.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.used.store(left, Ordering::Relaxed);
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_first_and_keeps_the_new_item() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlobStore::open(dir.path()).unwrap());
        let meta = Arc::new(Meta::open(dir.path()).unwrap());
        let put = |n: u8| {
            let bytes = vec![n; 1000];
            let d = Digest::sha256_of(&bytes);
            store.put(&d, &bytes).unwrap();
            d
        };
        let (a, b, c) = (put(1), put(2), put(3));
        let evictor = Evictor::open(2500, store.clone(), meta.clone()).unwrap();
        assert_eq!(evictor.used(), 3000);
        // `a` is used after `b` and `c` were written: `b` is now the oldest.
        std::thread::sleep(std::time::Duration::from_millis(5));
        meta.touch(&a).unwrap();
        let done = evictor.run(Some(&c)).unwrap();
        assert_eq!(done, Evicted { items: 1, bytes: 1000 });
        assert_eq!(store.size(&b), None, "least recently used goes");
        assert!(store.size(&a).is_some() && store.size(&c).is_some());
        assert_eq!(evictor.used(), 2000);
        // Under 90 %: nothing more to do.
        assert_eq!(evictor.run(Some(&c)).unwrap(), Evicted::default());
        // The item just committed is never evicted, even when it is the oldest.
        let small = Evictor::open(500, store.clone(), meta.clone()).unwrap();
        let done = small.run(Some(&c)).unwrap();
        assert_eq!(done.items, 1);
        assert!(store.size(&c).is_some());
    }

    #[test]
    fn bytes_of_downloads_under_way_count_against_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlobStore::open(dir.path()).unwrap());
        let meta = Arc::new(Meta::open(dir.path()).unwrap());
        for n in 1..=3u8 {
            let bytes = vec![n; 1000];
            store.put(&Digest::sha256_of(&bytes), &bytes).unwrap();
        }
        // 3000 stored, limit 4000: under it, until 1500 more are being written.
        let evictor = Evictor::open(4000, store.clone(), meta).unwrap();
        assert_eq!(evictor.run(None).unwrap(), Evicted::default());
        evictor.temp.fetch_add(1500, Ordering::Relaxed);
        let done = evictor.run(None).unwrap();
        assert_eq!(done.items, 1, "3000 + 1500 > 3600: one item makes room");
        evictor.temp_gone(1500);
        assert_eq!(evictor.temp.load(Ordering::Relaxed), 0);
    }
}
