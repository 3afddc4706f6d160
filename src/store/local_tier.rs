//! `[storage] local_cache`: hot blobs on the replica's own disk in front of
//! the shared store, so a warm pull does not cross the network each time.
//!
//! A `BlobStore` over two: the shared one (S3) stays the truth — every write,
//! listing and probe goes there — and a filesystem store under
//! `<cache_dir>/local` holds copies of blobs read from it. A blob read from
//! the shared store is copied in the background, hashed on the way in and
//! committed only with the proof, so a damaged object in the bucket never
//! becomes a local copy. The copies are kept least recently read first out
//! under the budget. The copies are a cache of a cache: losing them costs
//! one read from the bucket each.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use super::{BlobStore, BlobUpload, ByteStream, FsBlobStore, OnDamaged, ReadMode, StoredItem};
use crate::reference::{Digest, Hasher};

/// What is on the local disk: size and a recency tick per blob.
#[derive(Default)]
struct Index {
    blobs: HashMap<Digest, (u64, u64)>,
    used: u64,
    tick: u64,
    /// Copies under way, so concurrent readers start one each at most.
    filling: HashSet<Digest>,
}

impl Index {
    fn touch(&mut self, digest: &Digest) -> Option<u64> {
        self.tick = self.tick.saturating_add(1);
        let tick = self.tick;
        let entry = self.blobs.get_mut(digest)?;
        entry.1 = tick;
        Some(entry.0)
    }

    /// Count `digest` of `size` bytes as held, the most recently read.
    fn insert(&mut self, digest: Digest, size: u64) {
        self.tick = self.tick.saturating_add(1);
        self.used = self.used.saturating_add(size);
        self.blobs.insert(digest, (size, self.tick));
    }

    fn forget(&mut self, digest: &Digest) -> bool {
        match self.blobs.remove(digest) {
            Some((size, _)) => {
                self.used = self.used.saturating_sub(size);
                true
            }
            None => false,
        }
    }

    /// Least recently read first, until `incoming` more bytes fit `budget`.
    fn make_room(&mut self, incoming: u64, budget: u64) -> Vec<Digest> {
        let mut order: Vec<(u64, Digest)> = self.blobs.iter().map(|(d, &(_, t))| (t, d.clone())).collect();
        order.sort_unstable_by_key(|(t, _)| *t);
        let mut out = Vec::new();
        for (_, digest) in order {
            if self.used.saturating_add(incoming) <= budget {
                break;
            }
            if self.forget(&digest) {
                out.push(digest);
            }
        }
        out
    }
}

pub struct LocalTier {
    shared: Arc<dyn BlobStore>,
    local: Arc<FsBlobStore>,
    budget: u64,
    index: Arc<Mutex<Index>>,
}

impl LocalTier {
    /// The tier over `shared`, its copies under `dir` (made if missing; the
    /// copies already there count against `budget`, the oldest first out).
    pub async fn open(shared: Arc<dyn BlobStore>, dir: &Path, budget: u64) -> io::Result<Self> {
        let local = Arc::new(FsBlobStore::open(dir)?);
        let mut listed = local.list().await?;
        listed.sort_unstable_by_key(|i| i.stored_ms);
        let mut index = Index::default();
        for item in listed {
            index.insert(item.digest, item.size);
        }
        let tier = Self {
            shared,
            local,
            budget,
            index: Arc::new(Mutex::new(index)),
        };
        // A smaller budget than last run: the oldest copies go now.
        let over = tier.lock().make_room(0, budget);
        for digest in over {
            let _ = tier.local.delete(&digest).await;
        }
        Ok(tier)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes of local copies now (for tests and the status of the tier).
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// Start copying `digest` of `size` bytes from the shared store, unless
    /// it cannot fit or a copy is under way.
    fn fill_later(&self, digest: &Digest, size: u64) {
        if size > self.budget {
            return;
        }
        {
            let mut index = self.lock();
            if index.blobs.contains_key(digest) || !index.filling.insert(digest.clone()) {
                return;
            }
        }
        let (shared, local, index, budget, digest) = (
            self.shared.clone(),
            self.local.clone(),
            self.index.clone(),
            self.budget,
            digest.clone(),
        );
        tokio::spawn(async move {
            let copied = copy_verified(shared.as_ref(), local.as_ref(), &digest, size).await;
            let evicted = {
                let mut index = index.lock().unwrap_or_else(|e| e.into_inner());
                index.filling.remove(&digest);
                match &copied {
                    Ok(()) => {
                        let evicted = index.make_room(size, budget);
                        index.insert(digest.clone(), size);
                        evicted
                    }
                    Err(_) => Vec::new(),
                }
            };
            if let Err(e) = &copied {
                tracing::warn!(digest = %digest, error = %e, "local_cache: blob not copied from the shared store; served from there");
            }
            for old in evicted {
                let _ = local.delete(&old).await;
            }
        });
    }
}

/// Read all of `digest` from `shared` into `local`, committed only when it
/// hashed to its digest and had `size` bytes.
async fn copy_verified(shared: &dyn BlobStore, local: &FsBlobStore, digest: &Digest, size: u64) -> io::Result<()> {
    let mut stream = shared
        .read_range(digest, 0, size, ReadMode::Copied, Box::new(|_, _| {}))
        .await?;
    let mut upload = local.begin(digest).await?;
    let mut hasher = Hasher::new(digest.algorithm());
    let mut seen: u64 = 0;
    while let Some(piece) = stream.next().await {
        let piece = match piece {
            Ok(p) => p,
            Err(e) => {
                upload.abort().await;
                return Err(e);
            }
        };
        hasher.update(&piece);
        seen = seen.saturating_add(piece.len() as u64);
        upload.write(vec![piece]).await?;
    }
    if seen != size {
        upload.abort().await;
        return Err(io::Error::other(format!("read {seen} of {size} bytes")));
    }
    match hasher.verify(digest) {
        Ok(proof) => upload.commit(proof).await,
        Err(actual) => {
            upload.abort().await;
            Err(io::Error::other(format!("the shared copy hashes to {actual}")))
        }
    }
}

#[async_trait]
impl BlobStore for LocalTier {
    async fn stat(&self, digest: &Digest) -> io::Result<Option<u64>> {
        let known = self.lock().blobs.get(digest).map(|&(size, _)| size);
        match known {
            Some(size) => Ok(Some(size)),
            None => self.shared.stat(digest).await,
        }
    }

    async fn read(&self, digest: &Digest, limit: u64) -> io::Result<Option<Bytes>> {
        if self.lock().touch(digest).is_some()
            && let Ok(Some(bytes)) = self.local.read(digest, limit).await
        {
            return Ok(Some(bytes));
        }
        self.shared.read(digest, limit).await
    }

    async fn read_range(
        &self,
        digest: &Digest,
        start: u64,
        end: u64,
        mode: ReadMode,
        damaged: OnDamaged,
    ) -> io::Result<ByteStream> {
        if self.lock().touch(digest).is_some() {
            // A damaged local copy is removed by the filesystem store; the
            // index forgets it and the next read goes to the shared store.
            let index = self.index.clone();
            let forget_digest = digest.clone();
            let on_local_damage: OnDamaged = Box::new(move |e, _| {
                index.lock().unwrap_or_else(|e| e.into_inner()).forget(&forget_digest);
                tracing::warn!(digest = %forget_digest, error = %e, "local_cache: local copy damaged and removed");
            });
            match self.local.read_range(digest, start, end, mode, on_local_damage).await {
                Ok(stream) => return Ok(stream),
                Err(_) => {
                    self.lock().forget(digest);
                }
            }
        }
        let stream = self.shared.read_range(digest, start, end, mode, damaged).await?;
        // The blob is at least `end` bytes: past the budget, no copy and
        // no HEAD to learn its size.
        if end <= self.budget
            && !self.lock().filling.contains(digest)
            && let Ok(Some(size)) = self.shared.stat(digest).await
        {
            self.fill_later(digest, size);
        }
        Ok(stream)
    }

    async fn put(&self, digest: &Digest, bytes: Bytes) -> io::Result<bool> {
        self.shared.put(digest, bytes).await
    }

    async fn begin(&self, digest: &Digest) -> io::Result<Box<dyn BlobUpload>> {
        self.shared.begin(digest).await
    }

    async fn delete(&self, digest: &Digest) -> io::Result<()> {
        if self.lock().forget(digest) {
            let _ = self.local.delete(digest).await;
        }
        self.shared.delete(digest).await
    }

    async fn list(&self) -> io::Result<Vec<StoredItem>> {
        self.shared.list().await
    }

    async fn writable(&self) -> io::Result<()> {
        self.shared.writable().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn shared_with(dir: &Path, blobs: &[&[u8]]) -> (Arc<FsBlobStore>, Vec<Digest>) {
        let store = Arc::new(FsBlobStore::open(dir).unwrap());
        let mut digests = Vec::new();
        for b in blobs {
            let d = Digest::sha256_of(b);
            store.put(&d, Bytes::copy_from_slice(b)).await.unwrap();
            digests.push(d);
        }
        (store, digests)
    }

    async fn read_all(tier: &LocalTier, d: &Digest, len: u64) -> Vec<u8> {
        let mut s = tier
            .read_range(d, 0, len, ReadMode::Copied, Box::new(|_, _| {}))
            .await
            .unwrap();
        let mut out = Vec::new();
        while let Some(p) = s.next().await {
            out.extend_from_slice(&p.unwrap());
        }
        out
    }

    async fn copied(tier: &LocalTier, bytes: u64) {
        for _ in 0..500 {
            if tier.used() == bytes && tier.lock().filling.is_empty() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("local copies hold {} bytes, {bytes} expected", tier.used());
    }

    #[tokio::test]
    async fn blobs_read_from_the_shared_store_are_kept_within_the_budget_least_recent_out() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (vec![1u8; 400], vec![2u8; 400], vec![3u8; 400]);
        let (shared, d) = shared_with(&dir.path().join("shared"), &[&a, &b, &c]).await;
        let tier = LocalTier::open(shared.clone(), &dir.path().join("local"), 1000)
            .await
            .unwrap();
        assert_eq!(read_all(&tier, &d[0], 400).await, a);
        copied(&tier, 400).await;
        assert_eq!(read_all(&tier, &d[1], 400).await, b);
        copied(&tier, 800).await;
        // a is read again (from the local copy), so b is the least recent.
        assert_eq!(read_all(&tier, &d[0], 400).await, a);
        assert_eq!(read_all(&tier, &d[2], 400).await, c);
        copied(&tier, 800).await;
        let held: HashSet<Digest> = tier.local.list().await.unwrap().into_iter().map(|i| i.digest).collect();
        assert_eq!(held, HashSet::from([d[0].clone(), d[2].clone()]));

        // The shared store loses a: the local copy still serves it.
        shared.delete(&d[0]).await.unwrap();
        assert_eq!(read_all(&tier, &d[0], 400).await, a);
        // Reopened with half the budget, the older copy goes.
        drop(tier);
        let tier = LocalTier::open(shared, &dir.path().join("local"), 500).await.unwrap();
        assert_eq!(tier.used(), 400);
    }

    #[tokio::test]
    async fn a_shared_copy_that_does_not_hash_to_its_digest_is_never_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, d) = shared_with(&dir.path().join("shared"), &[&[7u8; 300]]).await;
        // Damage the shared copy in place (same size, one byte changed).
        let hex = d[0].hex().to_string();
        let path = dir.path().join("shared/blobs/sha256").join(&hex[..2]).join(&hex);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[299] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let tier = LocalTier::open(shared, &dir.path().join("local"), 1000).await.unwrap();
        let _ = read_all(&tier, &d[0], 300).await;
        for _ in 0..500 {
            if tier.lock().filling.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(tier.lock().filling.is_empty());
        assert_eq!(tier.used(), 0);
        assert!(tier.local.list().await.unwrap().is_empty(), "no local copy");
    }

    #[tokio::test]
    async fn a_blob_larger_than_the_budget_is_served_and_not_copied() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![9u8; 2000];
        let (shared, d) = shared_with(&dir.path().join("shared"), &[&big]).await;
        let tier = LocalTier::open(shared, &dir.path().join("local"), 1000).await.unwrap();
        assert_eq!(read_all(&tier, &d[0], 2000).await, big);
        assert!(tier.lock().filling.is_empty());
        assert_eq!(tier.used(), 0);
    }
}
