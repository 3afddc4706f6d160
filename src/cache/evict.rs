//! Keeps the store under `cache.max_size`: when a commit takes it over the
//! limit, whole images go, least recently served first, until the store is
//! back under 90 % of the limit (so eviction runs in batches, not on every
//! commit). What goes is planned in `evict_plan.rs` from the metadata's index
//! (no walk of the store): a blob goes only when no kept image needs it, an
//! image served within `cache.keep_recent` is kept whole, and neither the
//! item just committed nor content being read is ever taken (readers pin it
//! here). Nothing half-written is a candidate: temp files are not content.
//! Evicted content is fetched again, verified, the next time it is asked for.

mod fleet;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::evict_plan::{self, Plan, PlanInput};
use super::memo::ManifestMemo;
use crate::reference::Digest;
use crate::store::{BlobStore, MetaStore};

pub struct Evictor {
    max: u64,
    keep_recent_ms: u64,
    used: AtomicU64,
    /// Bytes ever committed (only grows): lets a plan re-account `used`
    /// from the index without losing commits made while it read it.
    committed_total: AtomicU64,
    /// Bytes in temp files of downloads under way: they take disk space now
    /// and become content soon, so they count against the limit.
    temp: AtomicU64,
    /// One run at a time: background runs skip while one is under way, gc waits.
    running: Arc<tokio::sync::Mutex<()>>,
    store: Arc<dyn BlobStore>,
    meta: Arc<dyn MetaStore>,
    memo: Arc<ManifestMemo>,
    pins: Arc<Pins>,
    events: Arc<crate::events::Events>,
    /// Replicas on one bucket: only the one owning eviction evicts, from
    /// every replica's access times and reads (`fleet.rs`).
    fleet: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
}

/// What one eviction run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    pub items: usize,
    pub bytes: u64,
}

/// Content being read now, by digest: how many readers.
#[derive(Default)]
pub struct Pins(Mutex<HashMap<Digest, usize>>);

/// Keeps its digest out of eviction while it lives.
pub struct Pin {
    pins: Arc<Pins>,
    digest: Digest,
}

impl Pins {
    fn held(&self) -> HashSet<Digest> {
        self.0.lock().map(|p| p.keys().cloned().collect()).unwrap_or_default()
    }

    fn holds(&self, digest: &Digest) -> bool {
        self.0.lock().is_ok_and(|p| p.contains_key(digest))
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        if let Ok(mut pins) = self.pins.0.lock()
            && let Some(n) = pins.get_mut(&self.digest)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                pins.remove(&self.digest);
            }
        }
    }
}

/// Where eviction stands, for gc and the status page.
pub struct Limits {
    pub max: u64,
    pub target: u64,
    pub keep_recent_ms: u64,
}

impl Evictor {
    /// `used`: what the store already holds.
    pub fn new(
        max: u64,
        keep_recent: std::time::Duration,
        used: u64,
        store: Arc<dyn BlobStore>,
        meta: Arc<dyn MetaStore>,
        memo: Arc<ManifestMemo>,
        events: Arc<crate::events::Events>,
    ) -> Self {
        Self {
            max,
            keep_recent_ms: u64::try_from(keep_recent.as_millis()).unwrap_or(u64::MAX),
            used: AtomicU64::new(used),
            committed_total: AtomicU64::new(0),
            temp: AtomicU64::new(0),
            running: Arc::default(),
            store,
            meta,
            memo,
            pins: Arc::default(),
            events,
            fleet: std::sync::OnceLock::new(),
        }
    }

    /// Bytes the store holds, as accounted.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// What the store holds, listed after the evictor was made (a bucket
    /// that did not answer at start, nothing stored meanwhile).
    pub fn reaccount(&self, used: u64) {
        self.used.store(used, Ordering::SeqCst);
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max: self.max,
            target: self.target(),
            keep_recent_ms: self.keep_recent_ms,
        }
    }

    /// Keep `digest` while the returned pin lives (a reader of it).
    pub fn pin(&self, digest: &Digest) -> Pin {
        if let Ok(mut pins) = self.pins.0.lock() {
            *pins.entry(digest.clone()).or_insert(0) += 1;
        }
        Pin {
            pins: self.pins.clone(),
            digest: digest.clone(),
        }
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

    /// `size` bytes were committed under `digest`: index them, and evict (in
    /// a task of its own, one run at a time) if that took the store over the limit.
    pub async fn committed(self: &Arc<Self>, digest: &Digest, size: u64) {
        if let Err(e) = self.meta.put_item(digest, size).await {
            // Found again when the cache next opens (the index is synced then).
            tracing::warn!(error = %e, digest = %digest, "cache index not updated");
        }
        // In this order: a plan re-accounting meanwhile sees the total first.
        self.committed_total.fetch_add(size, Ordering::SeqCst);
        self.used.fetch_add(size, Ordering::SeqCst);
        self.evict_if_over(Some(digest.clone()));
    }

    fn target(&self) -> u64 {
        (self.max / 10 * 9).saturating_sub(self.temp.load(Ordering::Relaxed))
    }

    fn evict_if_over(self: &Arc<Self>, keep: Option<Digest>) {
        if self.fleet.get().is_some_and(|c| !c.evicts_here()) {
            return;
        }
        let total = self.used().saturating_add(self.temp.load(Ordering::Relaxed));
        if total <= self.max {
            return;
        }
        let Ok(running) = self.running.clone().try_lock_owned() else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let _running = running;
            match this.run(keep.as_ref()).await {
                Ok((plan, done)) => {
                    if done.items > 0 {
                        tracing::info!(
                            evicted = done.items,
                            bytes = done.bytes,
                            used = this.used(),
                            max = this.max,
                            shared_kept = plan.kept_shared,
                            "cache over max_size; least recently served images evicted"
                        );
                    }
                    if plan.short {
                        tracing::warn!(
                            used = this.used(),
                            max = this.max,
                            kept_recent = plan.kept_recent,
                            "cache over max_size, but what is left was served within cache.keep_recent or is in use; kept"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cache eviction failed"),
            }
        });
    }

    /// What a run would remove now, never `keep` nor content being read, to
    /// bring the store and the downloads under way under 90 % of the limit.
    pub async fn plan(&self, keep: Option<&Digest>) -> std::io::Result<Plan> {
        let started = std::time::Instant::now();
        let committed_before = self.committed_total.load(Ordering::SeqCst);
        let mut kept = self.pins.held();
        kept.extend(keep.cloned());
        let items = match self.fleet.get() {
            Some(cluster) => self.fleet_items(cluster, &mut kept).await?,
            None => self.meta.items().await.map_err(std::io::Error::other)?,
        };
        let refs: HashMap<Digest, Vec<Digest>> = self
            .meta
            .manifest_refs()
            .await
            .map_err(std::io::Error::other)?
            .into_iter()
            .map(|(m, refs)| (m, refs.unwrap_or_default()))
            .collect();
        let mut plan = evict_plan::plan(&PlanInput {
            items: &items,
            refs: &refs,
            keep: &kept,
            now_ms: crate::store::now_millis(),
            keep_recent_ms: self.keep_recent_ms,
            target: self.target(),
        });
        plan.plan_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Re-account from the index (content found damaged and removed),
        // keeping what was committed while the index was read. Those may
        // be counted twice until the next plan: over, never under.
        let _ = self.used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |_| {
            let since = self
                .committed_total
                .load(Ordering::SeqCst)
                .saturating_sub(committed_before);
            Some(plan.stored.saturating_add(since))
        });
        Ok(plan)
    }

    /// A run now, after any under way (for `berth gc`); or with `dry_run`,
    /// only its plan.
    pub async fn run_now(&self, dry_run: bool) -> std::io::Result<(Plan, Evicted)> {
        let _running = self.running.lock().await;
        match dry_run {
            true => Ok((self.plan(None).await?, Evicted::default())),
            false => self.run(None).await,
        }
    }

    /// Plan, then remove what the plan names (skipping content a reader
    /// pinned since). The plan and what it really removed.
    pub async fn run(&self, keep: Option<&Digest>) -> std::io::Result<(Plan, Evicted)> {
        let plan = self.plan(keep).await?;
        let mut done = Evicted::default();
        for removal in &plan.removals {
            let Ok(digest) = Digest::parse(&removal.digest) else {
                continue;
            };
            if self.pins.holds(&digest) {
                continue;
            }
            match self.store.delete(&digest).await {
                Ok(()) => {
                    done.items += 1;
                    done.bytes = done.bytes.saturating_add(removal.size);
                }
                // Gone already: nothing to free, but the index forgets it too.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            self.meta.forget(&digest).await;
            if removal.manifest {
                self.memo.remove(&digest);
            }
        }
        let _ = self.used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
            Some(u.saturating_sub(done.bytes))
        });
        let metrics = &self.events.metrics;
        metrics.evicted_items.inc_by(done.items as u64);
        metrics.evicted_bytes.inc_by(done.bytes);
        Ok((plan, done))
    }

    /// Tagged names of each image's top manifest (`upstream/repo:tag`), to
    /// say which image a removal belongs to.
    pub async fn image_names(&self) -> HashMap<String, Vec<String>> {
        let mut names: HashMap<String, Vec<String>> = HashMap::new();
        for t in self.meta.tags_all().await.unwrap_or_default() {
            names
                .entry(t.digest)
                .or_default()
                .push(format!("{}/{}:{}", t.upstream, t.repo, t.tag));
        }
        for list in names.values_mut() {
            list.sort();
        }
        names
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

    async fn put(store: &Arc<dyn BlobStore>, meta: &Arc<dyn MetaStore>, n: u8) -> Digest {
        let bytes = vec![n; 1000];
        let d = Digest::sha256_of(&bytes);
        store.put(&d, bytes.into()).await.unwrap();
        meta.put_item(&d, 1000).await.unwrap();
        d
    }

    async fn evictor(max: u64, store: &Arc<dyn BlobStore>, meta: &Arc<dyn MetaStore>) -> Evictor {
        let used = store.list().await.unwrap().iter().map(|i| i.size).sum();
        Evictor::new(
            max,
            std::time::Duration::ZERO,
            used,
            store.clone(),
            meta.clone(),
            Arc::new(ManifestMemo::new(1 << 20)),
            Arc::default(),
        )
    }

    #[tokio::test]
    async fn evicts_least_recently_used_first_and_keeps_the_new_item() {
        let dir = tempfile::tempdir().unwrap();
        let (store, meta) = stores(dir.path()).await;
        let (a, b, c) = (
            put(&store, &meta, 1).await,
            put(&store, &meta, 2).await,
            put(&store, &meta, 3).await,
        );
        let evictor = evictor(2500, &store, &meta).await;
        assert_eq!(evictor.used(), 3000);
        // `a` is used after `b` and `c` were written: `b` is now the oldest.
        std::thread::sleep(std::time::Duration::from_millis(5));
        meta.touch(&a).await.unwrap();
        let (_, done) = evictor.run(Some(&c)).await.unwrap();
        assert_eq!(done, Evicted { items: 1, bytes: 1000 });
        assert_eq!(store.stat(&b).await.unwrap(), None, "least recently used goes");
        assert!(store.stat(&a).await.unwrap().is_some() && store.stat(&c).await.unwrap().is_some());
        assert_eq!(evictor.used(), 2000);
        // Under 90 %: nothing more to do.
        assert_eq!(evictor.run(Some(&c)).await.unwrap().1, Evicted::default());
        // The item just committed is never evicted, even when it is the oldest.
        let small = self::evictor(500, &store, &meta).await;
        let (_, done) = small.run(Some(&c)).await.unwrap();
        assert_eq!(done.items, 1);
        assert!(store.stat(&c).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn bytes_of_downloads_under_way_count_against_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let (store, meta) = stores(dir.path()).await;
        for n in 1..=3u8 {
            put(&store, &meta, n).await;
        }
        // 3000 stored, limit 4000: under it, until 1500 more are being written.
        let evictor = evictor(4000, &store, &meta).await;
        assert_eq!(evictor.run(None).await.unwrap().1, Evicted::default());
        evictor.temp.fetch_add(1500, Ordering::Relaxed);
        let (_, done) = evictor.run(None).await.unwrap();
        assert_eq!(done.items, 1, "3000 + 1500 > 3600: one item makes room");
        evictor.temp_gone(1500);
        assert_eq!(evictor.temp.load(Ordering::Relaxed), 0);
    }
}
