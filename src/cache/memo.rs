//! Recently served manifests, in memory. Manifests are small, immutable under
//! their digest and asked for far more often than blobs (every pull HEADs or
//! GETs the tag, then GETs by digest); serving them from memory keeps a file
//! read off that path. Bounded by total bytes; the least recently used
//! entries go first.

use std::collections::HashMap;
use std::sync::Mutex;

use super::CachedManifest;
use crate::reference::Digest;

pub struct ManifestMemo {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Digest, (CachedManifest, u64)>,
    bytes: usize,
    clock: u64,
}

impl ManifestMemo {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            inner: Mutex::default(),
        }
    }

    pub fn get(&self, digest: &Digest) -> Option<CachedManifest> {
        let mut inner = self.inner.lock().ok()?;
        inner.clock += 1;
        let now = inner.clock;
        let (m, used) = inner.entries.get_mut(digest)?;
        *used = now;
        Some(m.clone())
    }

    /// Forget an evicted manifest, so it is not served without its content.
    pub fn remove(&self, digest: &Digest) {
        if let Ok(mut inner) = self.inner.lock()
            && let Some((m, _)) = inner.entries.remove(digest)
        {
            inner.bytes = inner.bytes.saturating_sub(m.bytes.len());
        }
    }

    pub fn put(&self, m: &CachedManifest) {
        if m.bytes.len() > self.budget {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.clock += 1;
        let now = inner.clock;
        if let Some((_, used)) = inner.entries.get_mut(&m.digest) {
            *used = now;
            return;
        }
        inner.bytes += m.bytes.len();
        inner.entries.insert(m.digest.clone(), (m.clone(), now));
        if inner.bytes > self.budget {
            // Evict the older half by last use: a sort per eviction round,
            // not per request.
            let mut ages: Vec<u64> = inner.entries.values().map(|(_, used)| *used).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 2];
            inner.entries.retain(|_, (_, used)| *used > cutoff);
            inner.bytes = inner.entries.values().map(|(m, _)| m.bytes.len()).sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(n: u8, len: usize) -> CachedManifest {
        let bytes = bytes::Bytes::from(vec![n; len]);
        CachedManifest {
            digest: Digest::sha256_of(&bytes),
            bytes,
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        }
    }

    #[test]
    fn keeps_recent_entries_within_the_budget() {
        let memo = ManifestMemo::new(1000);
        let all: Vec<_> = (0..20).map(|n| manifest(n, 100)).collect();
        for m in &all {
            memo.put(m);
            // Entry 0 stays in use, so it stays.
            assert!(memo.get(&all[0].digest).is_some());
        }
        let kept = all.iter().filter(|m| memo.get(&m.digest).is_some()).count();
        assert!(kept <= 10, "{kept} entries of 100 bytes in a 1000-byte budget");
        assert!(memo.get(&all[19].digest).is_some(), "the newest is kept");
        let got = memo.get(&all[0].digest).expect("the most used is kept");
        assert_eq!(got.bytes, all[0].bytes);
        // Larger than the whole budget: never kept.
        let big = manifest(99, 2000);
        memo.put(&big);
        assert!(memo.get(&big.digest).is_none());
    }
}
