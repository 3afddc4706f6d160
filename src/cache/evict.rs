//! Keeps the store under `cache.max_size`: when a commit takes it over the
//! limit, the least recently used content is removed until it is back under
//! 90 % of the limit (so eviction runs in batches, not on every commit).
//! Nothing half-written is ever a candidate (temp files live elsewhere), the
//! item just committed is kept, and content being read stays readable: its
//! reader holds it open, and unlinking does not disturb open files. Evicted
//! content is fetched again, verified, the next time it is asked for.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::reference::Digest;
use crate::store::{BlobStore, MetaStore};

pub struct Evictor {
    max: u64,
    used: AtomicU64,
    /// Bytes in temp files of downloads under way: they take disk space now
    /// and become content soon, so they count against the limit.
    temp: AtomicU64,
    running: AtomicBool,
    store: Arc<dyn BlobStore>,
    meta: Arc<dyn MetaStore>,
}

/// What one eviction run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    pub items: usize,
    pub bytes: u64,
}

impl Evictor {
    /// `used`: what the store already holds.
    pub fn new(max: u64, used: u64, store: Arc<dyn BlobStore>, meta: Arc<dyn MetaStore>) -> Self {
        Self {
            max,
            used: AtomicU64::new(used),
            temp: AtomicU64::new(0),
            running: AtomicBool::new(false),
            store,
            meta,
        }
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

    /// `size` bytes were committed under `digest`; evict (in a task of its
    /// own, one run at a time) if that took the store over the limit.
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
        tokio::spawn(async move {
            match this.run(keep.as_ref()).await {
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
    pub async fn run(&self, keep: Option<&Digest>) -> std::io::Result<Evicted> {
        let items = self.store.list().await?;
        // Re-account from what is really there (crashes, outside changes).
        let total: u64 = items.iter().map(|i| i.size).sum();
        self.used.store(total, Ordering::Relaxed);
        let target = (self.max / 10 * 9).saturating_sub(self.temp.load(Ordering::Relaxed));
        if total <= target {
            return Ok(Evicted::default());
        }
        // Last use as berth knows it, else the commit time.
        let mut aged: Vec<(u64, Digest, u64)> = Vec::with_capacity(items.len());
        for item in items.into_iter().filter(|i| Some(&i.digest) != keep) {
            let used = self
                .meta
                .last_used_ms(&item.digest)
                .await
                .unwrap_or(0)
                .max(item.stored_ms);
            aged.push((used, item.digest, item.size));
        }
        aged.sort_by_key(|(used, _, _)| *used);
        let mut done = Evicted::default();
        let mut left = total;
        for (_, digest, size) in aged {
            if left <= target {
                break;
            }
            match self.store.delete(&digest).await {
                Ok(()) => {
                    self.meta.forget(&digest).await;
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
    use crate::store::{FsBlobStore, SledMetaStore};

    async fn stores(dir: &std::path::Path) -> (Arc<dyn BlobStore>, Arc<dyn MetaStore>) {
        (
            Arc::new(FsBlobStore::open(dir).unwrap()),
            Arc::new(SledMetaStore::open(dir).unwrap()),
        )
    }

    async fn put(store: &Arc<dyn BlobStore>, n: u8) -> Digest {
        let bytes = vec![n; 1000];
        let d = Digest::sha256_of(&bytes);
        store.put(&d, bytes.into()).await.unwrap();
        d
    }

    async fn evictor(max: u64, store: &Arc<dyn BlobStore>, meta: &Arc<dyn MetaStore>) -> Evictor {
        let used = store.list().await.unwrap().iter().map(|i| i.size).sum();
        Evictor::new(max, used, store.clone(), meta.clone())
    }

    #[tokio::test]
    async fn evicts_least_recently_used_first_and_keeps_the_new_item() {
        let dir = tempfile::tempdir().unwrap();
        let (store, meta) = stores(dir.path()).await;
        let (a, b, c) = (put(&store, 1).await, put(&store, 2).await, put(&store, 3).await);
        let evictor = evictor(2500, &store, &meta).await;
        assert_eq!(evictor.used(), 3000);
        // `a` is used after `b` and `c` were written: `b` is now the oldest.
        std::thread::sleep(std::time::Duration::from_millis(5));
        meta.touch(&a).await.unwrap();
        let done = evictor.run(Some(&c)).await.unwrap();
        assert_eq!(done, Evicted { items: 1, bytes: 1000 });
        assert_eq!(store.stat(&b).await.unwrap(), None, "least recently used goes");
        assert!(store.stat(&a).await.unwrap().is_some() && store.stat(&c).await.unwrap().is_some());
        assert_eq!(evictor.used(), 2000);
        // Under 90 %: nothing more to do.
        assert_eq!(evictor.run(Some(&c)).await.unwrap(), Evicted::default());
        // The item just committed is never evicted, even when it is the oldest.
        let small = self::evictor(500, &store, &meta).await;
        let done = small.run(Some(&c)).await.unwrap();
        assert_eq!(done.items, 1);
        assert!(store.stat(&c).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn bytes_of_downloads_under_way_count_against_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let (store, meta) = stores(dir.path()).await;
        for n in 1..=3u8 {
            put(&store, n).await;
        }
        // 3000 stored, limit 4000: under it, until 1500 more are being written.
        let evictor = evictor(4000, &store, &meta).await;
        assert_eq!(evictor.run(None).await.unwrap(), Evicted::default());
        evictor.temp.fetch_add(1500, Ordering::Relaxed);
        let done = evictor.run(None).await.unwrap();
        assert_eq!(done.items, 1, "3000 + 1500 > 3600: one item makes room");
        evictor.temp_gone(1500);
        assert_eq!(evictor.temp.load(Ordering::Relaxed), 0);
    }
}
