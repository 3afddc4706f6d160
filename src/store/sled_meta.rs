//! `MetaStore` in sled: tag → digest records, manifest media types, tag
//! lists, conversions, repository links, access times. The only file that imports sled.
//! Reads and buffered writes are sled's in-memory work and run inline; the
//! flushes that make a record durable run on the blocking pool.

use std::collections::HashSet;
use std::path::Path;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    IndexedItem, ManifestRecord, MetaStore, ReferrersRecord, StoredItem, TagEntry, TagListRecord, TagRecord,
    now_millis, now_secs,
};
use crate::reference::{Digest, RepoName};

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("cache metadata: {0}")]
    Local(#[from] sled::Error),
    /// The records shared by replicas, in the bucket (`s3_meta.rs`).
    #[error("shared metadata in the bucket: {0}")]
    Shared(String),
}

pub struct SledMetaStore {
    tags: sled::Tree,
    manifests: sled::Tree,
    tag_lists: sled::Tree,
    /// `<upstream>\0<repository>\0<subject digest>` → `ReferrersRecord`.
    referrers: sled::Tree,
    /// digest → when last used (big-endian u64, see `access_ms`).
    access: sled::Tree,
    /// `v<version>\0<original digest>` → converted digest.
    converted: sled::Tree,
    /// converted digest → original digest.
    converted_from: sled::Tree,
    /// `<upstream>\0<repository>\0<digest>` → nothing: that repository is
    /// known to hold that content.
    links: sled::Tree,
    /// digest → size and time stored (two big-endian u64: bytes, ms since
    /// the epoch): the index eviction plans from.
    items: sled::Tree,
    /// Per digest: when its access time was last written to sled, and when
    /// it was last used (kept in memory only); both milliseconds.
    touched: std::sync::Mutex<std::collections::HashMap<String, (u64, u64)>>,
}

/// Access times are written at most this often per digest.
const TOUCH_INTERVAL_MS: u64 = 60_000;

/// An access time as stored: milliseconds since the epoch. Databases written
/// before berth kept milliseconds hold seconds; no millisecond time since
/// 1973 is below this bound and no second time before the year 5138 reaches
/// it, so the two cannot be confused.
const SECONDS_BELOW: u64 = 100_000_000_000;

fn access_ms(v: &[u8]) -> Option<u64> {
    let n = u64::from_be_bytes(v.try_into().ok()?);
    Some(if n < SECONDS_BELOW { n.saturating_mul(1000) } else { n })
}

/// Whether sled's failure to open means the database itself is unreadable.
/// Only that justifies moving it aside; sled reports its lock held by another
/// process as an `Io` error of kind `Other`, which must never count.
fn is_unreadable(e: &sled::Error) -> bool {
    use std::io::ErrorKind;
    match e {
        sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => true,
        sled::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::UnexpectedEof | ErrorKind::InvalidData | ErrorKind::NotADirectory
        ),
        sled::Error::CollectionNotFound(_) | sled::Error::ReportableBug(_) => false,
    }
}

/// Keys join parts with NUL, which no validated name, tag or host contains.
fn key(parts: &[&str]) -> Vec<u8> {
    parts.join("\0").into_bytes()
}

impl SledMetaStore {
    /// Open the metadata; a database that cannot be read (torn by a crash,
    /// from an incompatible version) is moved aside and started afresh, since
    /// everything in it can be learned again from the upstream. Any other
    /// failure (sled's lock held by another process, permissions, out of file
    /// descriptors) says nothing about the database and is returned as is.
    pub fn open(cache_dir: &Path) -> Result<Self, MetaError> {
        let path = cache_dir.join("meta");
        let open = || sled::Config::new().path(&path).flush_every_ms(Some(500)).open();
        let db = match open() {
            Ok(db) => db,
            Err(e) if !is_unreadable(&e) => return Err(e.into()),
            Err(e) => {
                let aside = cache_dir.join(format!("meta.broken-{}", now_secs()));
                tracing::warn!(error = %e, aside = %aside.display(), "cache metadata unreadable; moved aside, starting empty");
                std::fs::rename(&path, &aside).map_err(sled::Error::Io)?;
                open()?
            }
        };
        Ok(Self {
            tags: db.open_tree("tags")?,
            manifests: db.open_tree("manifests")?,
            tag_lists: db.open_tree("tag_lists")?,
            referrers: db.open_tree("referrers")?,
            access: db.open_tree("access")?,
            converted: db.open_tree("converted")?,
            converted_from: db.open_tree("converted_from")?,
            links: db.open_tree("links")?,
            items: db.open_tree("items")?,
            touched: Default::default(),
        })
    }

    fn get<T: DeserializeOwned>(tree: &sled::Tree, k: &[u8]) -> Result<Option<T>, MetaError> {
        // An undecodable record (from another version) is treated as absent.
        Ok(tree.get(k)?.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    fn put<T: Serialize>(tree: &sled::Tree, k: &[u8], v: &T) -> Result<(), MetaError> {
        let bytes = serde_json::to_vec(v).unwrap_or_default();
        tree.insert(k, bytes)?;
        Ok(())
    }

    /// Make a tree's writes durable, on the blocking pool.
    async fn flush(tree: &sled::Tree) -> Result<(), MetaError> {
        let tree = tree.clone();
        tokio::task::spawn_blocking(move || tree.flush().map(|_| ()))
            .await
            .map_err(|e| MetaError::Local(sled::Error::Io(std::io::Error::other(e))))??;
        Ok(())
    }
}

#[async_trait]
impl MetaStore for SledMetaStore {
    async fn tag(&self, upstream: &str, repo: &RepoName, tag: &str) -> Result<Option<TagRecord>, MetaError> {
        Self::get(&self.tags, &key(&[upstream, repo.as_str(), tag]))
    }

    async fn put_tag(&self, upstream: &str, repo: &RepoName, tag: &str, digest: &Digest) -> Result<(), MetaError> {
        let rec = TagRecord {
            digest: digest.to_string(),
            checked_at: now_secs(),
        };
        Self::put(&self.tags, &key(&[upstream, repo.as_str(), tag]), &rec)?;
        // What a tag resolved to is what an offline restart serves; it must
        // not be lost to a crash in the flush interval. Tags resolve at most
        // once per tag_ttl, so the fsync is rare.
        Self::flush(&self.tags).await
    }

    async fn manifest(&self, digest: &Digest) -> Result<Option<ManifestRecord>, MetaError> {
        Self::get(&self.manifests, digest.to_string().as_bytes())
    }

    async fn put_manifest(
        &self,
        digest: &Digest,
        media_type: &str,
        size: u64,
        refs: &[Digest],
    ) -> Result<(), MetaError> {
        let rec = ManifestRecord::new(media_type, size, refs);
        Self::put(&self.manifests, digest.to_string().as_bytes(), &rec)
    }

    async fn manifest_refs(&self) -> Result<Vec<(Digest, Option<Vec<Digest>>)>, MetaError> {
        let mut all = Vec::new();
        for entry in self.manifests.iter() {
            let (k, v) = entry?;
            let Some(digest) = std::str::from_utf8(&k).ok().and_then(|s| Digest::parse(s).ok()) else {
                continue;
            };
            let rec: Option<ManifestRecord> = serde_json::from_slice(&v).ok();
            let refs = rec
                .and_then(|r| r.refs)
                .map(|refs| refs.iter().filter_map(|d| Digest::parse(d).ok()).collect());
            all.push((digest, refs));
        }
        Ok(all)
    }

    async fn tag_list(&self, upstream: &str, repo: &RepoName) -> Result<Option<TagListRecord>, MetaError> {
        Self::get(&self.tag_lists, &key(&[upstream, repo.as_str()]))
    }

    async fn put_tag_list(&self, upstream: &str, repo: &RepoName, tags: Vec<String>) -> Result<(), MetaError> {
        let rec = TagListRecord {
            tags,
            fetched_at: now_secs(),
        };
        Self::put(&self.tag_lists, &key(&[upstream, repo.as_str()]), &rec)
    }

    async fn referrers(
        &self,
        upstream: &str,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Option<ReferrersRecord>, MetaError> {
        Self::get(&self.referrers, &key(&[upstream, repo.as_str(), &subject.to_string()]))
    }

    async fn put_referrers(
        &self,
        upstream: &str,
        repo: &RepoName,
        subject: &Digest,
        index: &str,
    ) -> Result<(), MetaError> {
        let rec = ReferrersRecord {
            index: index.to_string(),
            fetched_at: now_secs(),
        };
        Self::put(
            &self.referrers,
            &key(&[upstream, repo.as_str(), &subject.to_string()]),
            &rec,
        )
    }

    async fn converted(&self, version: u32, original: &Digest) -> Result<Option<Digest>, MetaError> {
        let k = key(&[&format!("v{version}"), &original.to_string()]);
        Ok(self
            .converted
            .get(k)?
            .and_then(|v| std::str::from_utf8(&v).ok().and_then(|s| Digest::parse(s).ok())))
    }

    async fn put_converted(&self, version: u32, original: &Digest, converted: &Digest) -> Result<(), MetaError> {
        let k = key(&[&format!("v{version}"), &original.to_string()]);
        self.converted.insert(k, converted.to_string().as_bytes())?;
        self.converted_from
            .insert(converted.to_string().as_bytes(), original.to_string().as_bytes())?;
        // Clients are handed the converted digest right away; the fact that
        // berth made it must survive a crash, so it does not wait for the
        // periodic flush. Conversions are rare, so this costs little.
        Self::flush(&self.converted_from).await?;
        Self::flush(&self.converted).await
    }

    /// Whether berth made this digest by conversion.
    async fn is_converted(&self, digest: &Digest) -> Result<bool, MetaError> {
        Ok(self.converted_from.contains_key(digest.to_string().as_bytes())?)
    }

    async fn put_link(&self, upstream: &str, repo: &RepoName, digest: &Digest) -> Result<(), MetaError> {
        // No flush: links are learned again (one upstream HEAD each), and a
        // pull writes one per blob, too many to fsync each.
        let k = key(&[upstream, repo.as_str(), &digest.to_string()]);
        self.links.insert(k, &[])?;
        Ok(())
    }

    async fn has_link(&self, upstream: &str, repo: &RepoName, digest: &Digest) -> Result<bool, MetaError> {
        let k = key(&[upstream, repo.as_str(), &digest.to_string()]);
        Ok(self.links.contains_key(k)?)
    }

    /// Drop records that point at content no longer on disk (a crash between
    /// writing the record and the file, or files removed by hand), so no
    /// request trusts them. Returns how many records were removed.
    async fn repair(&self, present: &HashSet<Digest>) -> Result<usize, MetaError> {
        let missing = |text: &[u8]| {
            std::str::from_utf8(text)
                .ok()
                .and_then(|s| Digest::parse(s).ok())
                .is_none_or(|d| !present.contains(&d))
        };
        let mut removed = 0;
        for entry in self.manifests.iter() {
            let (k, _) = entry?;
            if missing(&k) {
                self.manifests.remove(k)?;
                removed += 1;
            }
        }
        for entry in self.tags.iter() {
            let (k, v) = entry?;
            let rec: Option<TagRecord> = serde_json::from_slice(&v).ok();
            if rec.is_none_or(|r| missing(r.digest.as_bytes())) {
                self.tags.remove(k)?;
                removed += 1;
            }
        }
        for entry in self.converted.iter() {
            let (k, v) = entry?;
            if missing(&v) {
                self.converted.remove(k)?;
                removed += 1;
            }
        }
        for entry in self.converted_from.iter() {
            let (k, _) = entry?;
            if missing(&k) {
                self.converted_from.remove(k)?;
                removed += 1;
            }
        }
        for entry in self.links.iter() {
            let (k, _) = entry?;
            // The digest is the last part of the key.
            let digest = k.rsplit(|&b| b == 0).next().unwrap_or_default();
            if missing(digest) {
                self.links.remove(k)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Record that content was used. The time is kept in memory; the
    /// database gets it at most once per `TOUCH_INTERVAL_MS` per digest and
    /// at `flush` (shutdown), so a hot manifest costs no database write per
    /// request and eviction after a restart orders images as this run did.
    async fn touch(&self, digest: &Digest) -> Result<(), MetaError> {
        let now_ms = now_millis();
        let key = digest.to_string();
        if let Ok(mut touched) = self.touched.lock() {
            let entry = touched.entry(key.clone()).or_insert((0, 0));
            entry.1 = now_ms;
            if entry.0 != 0 && now_ms.saturating_sub(entry.0) < TOUCH_INTERVAL_MS {
                return Ok(());
            }
            entry.0 = now_ms;
        }
        self.access.insert(key.as_bytes(), &now_ms.to_be_bytes())?;
        Ok(())
    }

    /// When content was last used, in milliseconds since the epoch, as far
    /// as berth knows (memory first, then the database).
    async fn last_used_ms(&self, digest: &Digest) -> Option<u64> {
        let key = digest.to_string();
        if let Some(&(_, ms)) = self.touched.lock().ok()?.get(&key) {
            return Some(ms);
        }
        access_ms(self.access.get(key.as_bytes()).ok()??.as_ref())
    }

    /// Forget an evicted digest's access time.
    async fn forget(&self, digest: &Digest) {
        let key = digest.to_string();
        if let Ok(mut touched) = self.touched.lock() {
            touched.remove(&key);
        }
        let _ = self.access.remove(key.as_bytes());
        let _ = self.items.remove(key.as_bytes());
    }

    async fn put_item(&self, digest: &Digest, size: u64) -> Result<(), MetaError> {
        // No flush: the index is made whole again from the store when the
        // cache opens, so an entry lost to a crash costs nothing.
        self.items
            .insert(digest.to_string().as_bytes(), &item_value(size, now_millis()))?;
        Ok(())
    }

    async fn items(&self) -> Result<Vec<IndexedItem>, MetaError> {
        let used = self.access_map()?;
        let mut all = Vec::with_capacity(self.items.len());
        for entry in self.items.iter() {
            let (k, v) = entry?;
            let Some(digest) = std::str::from_utf8(&k).ok().and_then(|s| Digest::parse(s).ok()) else {
                continue;
            };
            let Some((size, stored_ms)) = parse_item_value(&v) else {
                continue;
            };
            let last_used_ms = used.get(k.as_ref()).copied().unwrap_or(0).max(stored_ms);
            all.push(IndexedItem {
                digest,
                size,
                last_used_ms,
            });
        }
        Ok(all)
    }

    async fn access_times(&self) -> Result<Vec<(Digest, u64)>, MetaError> {
        Ok(self
            .access_map()?
            .into_iter()
            .filter_map(|(k, ms)| {
                let digest = std::str::from_utf8(&k).ok().and_then(|s| Digest::parse(s).ok())?;
                Some((digest, ms))
            })
            .collect())
    }

    async fn sync_items(&self, listed: &[StoredItem]) -> Result<(), MetaError> {
        let present: std::collections::HashMap<String, &StoredItem> =
            listed.iter().map(|i| (i.digest.to_string(), i)).collect();
        for entry in self.items.iter() {
            let (k, v) = entry?;
            let keep = std::str::from_utf8(&k)
                .ok()
                .and_then(|d| present.get(d))
                .is_some_and(|i| parse_item_value(&v).is_some_and(|(size, _)| size == i.size));
            if !keep {
                self.items.remove(k)?;
            }
        }
        for (digest, item) in &present {
            if !self.items.contains_key(digest.as_bytes())? {
                self.items
                    .insert(digest.as_bytes(), &item_value(item.size, item.stored_ms))?;
            }
        }
        Ok(())
    }

    async fn tags_all(&self) -> Result<Vec<TagEntry>, MetaError> {
        let mut all = Vec::new();
        for entry in self.tags.iter() {
            let (k, v) = entry?;
            let Ok(key) = std::str::from_utf8(&k) else { continue };
            let mut parts = key.split('\0');
            let (Some(upstream), Some(repo), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let Some(rec) = serde_json::from_slice::<TagRecord>(&v).ok() else {
                continue;
            };
            all.push(TagEntry {
                upstream: upstream.to_string(),
                repo: repo.to_string(),
                tag: tag.to_string(),
                digest: rec.digest,
            });
        }
        Ok(all)
    }

    async fn flush(&self) -> Result<(), MetaError> {
        // Last uses kept only in memory (at most a minute newer than the
        // database's) go in first, to the millisecond, so eviction after a
        // restart orders images exactly as this run saw them.
        let pending: Vec<(String, u64)> = match self.touched.lock() {
            Ok(touched) => touched
                .iter()
                .filter(|(_, (written, ms))| ms > written)
                .map(|(k, (_, ms))| (k.clone(), *ms))
                .collect(),
            Err(_) => Vec::new(),
        };
        for (key, ms) in pending {
            self.access.insert(key.as_bytes(), &ms.to_be_bytes())?;
        }
        // The trees share one database: flushing one flushes them all.
        Self::flush(&self.tags).await
    }
}

impl SledMetaStore {
    /// Access times in the database, then the precise ones in memory.
    fn access_map(&self) -> Result<std::collections::HashMap<Vec<u8>, u64>, MetaError> {
        let mut used = std::collections::HashMap::new();
        for entry in self.access.iter() {
            let (k, v) = entry?;
            if let Some(ms) = access_ms(v.as_ref()) {
                used.insert(k.to_vec(), ms);
            }
        }
        if let Ok(touched) = self.touched.lock() {
            for (k, &(_, ms)) in touched.iter() {
                used.insert(k.as_bytes().to_vec(), ms);
            }
        }
        Ok(used)
    }
}

fn item_value(size: u64, stored_ms: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&size.to_be_bytes());
    v[8..].copy_from_slice(&stored_ms.to_be_bytes());
    v
}

fn parse_item_value(v: &[u8]) -> Option<(u64, u64)> {
    let size = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let stored_ms = u64::from_be_bytes(v.get(8..16)?.try_into().ok()?);
    Some((size, stored_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn repair_drops_records_pointing_at_missing_content() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SledMetaStore::open(dir.path()).unwrap();
        let repo = RepoName::parse("library/app").unwrap();
        let (kept, lost) = (Digest::sha256_of(b"kept"), Digest::sha256_of(b"lost"));
        for d in [&kept, &lost] {
            meta.put_manifest(d, "application/vnd.oci.image.manifest.v1+json", 4, &[])
                .await
                .unwrap();
        }
        meta.put_tag("docker.io", &repo, "ok", &kept).await.unwrap();
        meta.put_tag("docker.io", &repo, "gone", &lost).await.unwrap();
        meta.put_converted(1, &kept, &lost).await.unwrap();
        for d in [&kept, &lost] {
            meta.put_link("docker.io", &repo, d).await.unwrap();
        }

        let removed = meta.repair(&HashSet::from([kept.clone()])).await.unwrap();
        assert_eq!(
            removed, 5,
            "manifest, tag, link and both conversion records of the lost digest"
        );
        assert!(meta.has_link("docker.io", &repo, &kept).await.unwrap());
        assert!(!meta.has_link("docker.io", &repo, &lost).await.unwrap());
        assert!(meta.manifest(&kept).await.unwrap().is_some());
        assert!(meta.manifest(&lost).await.unwrap().is_none());
        assert!(meta.tag("docker.io", &repo, "ok").await.unwrap().is_some());
        assert!(meta.tag("docker.io", &repo, "gone").await.unwrap().is_none());
        assert!(meta.converted(1, &kept).await.unwrap().is_none());
        assert!(!meta.is_converted(&lost).await.unwrap());
    }

    /// Eviction after a restart orders images by these times; two uses in
    /// the same second (a pull, then another image's pull) must keep their
    /// order across a restart, and a database from before milliseconds
    /// reads as the seconds it holds.
    #[tokio::test]
    async fn access_times_survive_a_restart_to_the_millisecond() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second, old) = (
            Digest::sha256_of(b"first"),
            Digest::sha256_of(b"second"),
            Digest::sha256_of(b"old"),
        );
        {
            let meta = SledMetaStore::open(dir.path()).unwrap();
            meta.touch(&first).await.unwrap();
            let t = meta.last_used_ms(&first).await.unwrap();
            while now_millis() <= t {
                std::hint::spin_loop();
            }
            meta.touch(&second).await.unwrap();
            // Both again within the minute: memory only until the flush.
            meta.touch(&first).await.unwrap();
            while now_millis() <= meta.last_used_ms(&first).await.unwrap() {
                std::hint::spin_loop();
            }
            meta.touch(&second).await.unwrap();
            meta.access
                .insert(old.to_string().as_bytes(), &1_796_000_000u64.to_be_bytes())
                .unwrap();
            meta.flush().await.unwrap();
        }
        let meta = SledMetaStore::open(dir.path()).unwrap();
        let (a, b) = (
            meta.last_used_ms(&first).await.unwrap(),
            meta.last_used_ms(&second).await.unwrap(),
        );
        assert!(a < b, "first used at {a}, second at {b}");
        assert_eq!(meta.last_used_ms(&old).await, Some(1_796_000_000_000));
    }

    #[tokio::test]
    async fn an_unreadable_database_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("meta"), b"not a sled database").unwrap();
        let meta = SledMetaStore::open(dir.path()).expect("starts afresh");
        assert!(meta.manifest(&Digest::sha256_of(b"x")).await.unwrap().is_none());
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("meta.broken-"));
        assert!(aside, "the broken database is kept for inspection");
    }

    #[tokio::test]
    async fn a_link_names_its_upstream_repository_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SledMetaStore::open(dir.path()).unwrap();
        let (app, other) = (
            RepoName::parse("private/app").unwrap(),
            RepoName::parse("public/x").unwrap(),
        );
        let digest = Digest::sha256_of(b"layer");
        meta.put_link("docker.io", &app, &digest).await.unwrap();
        assert!(meta.has_link("docker.io", &app, &digest).await.unwrap());
        assert!(!meta.has_link("docker.io", &other, &digest).await.unwrap());
        assert!(!meta.has_link("ghcr.io", &app, &digest).await.unwrap());
        assert!(
            !meta
                .has_link("docker.io", &app, &Digest::sha256_of(b"other"))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn referrers_are_kept_per_upstream_repository_and_subject() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SledMetaStore::open(dir.path()).unwrap();
        let repo = RepoName::parse("library/app").unwrap();
        let subject = Digest::sha256_of(b"image");
        let index = r#"{"schemaVersion":2,"manifests":[]}"#;
        meta.put_referrers("docker.io", &repo, &subject, index).await.unwrap();
        let rec = meta
            .referrers("docker.io", &repo, &subject)
            .await
            .unwrap()
            .expect("recorded");
        assert_eq!(rec.index, index);
        assert!(rec.fetched_at > 0);
        assert!(meta.referrers("ghcr.io", &repo, &subject).await.unwrap().is_none());
        let other = Digest::sha256_of(b"other");
        assert!(meta.referrers("docker.io", &repo, &other).await.unwrap().is_none());
    }

    fn moved_aside(dir: &Path) -> bool {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("meta.broken-"))
    }

    #[test]
    fn a_torn_config_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledMetaStore::open(dir.path()).unwrap());
        std::fs::write(dir.path().join("meta").join("conf"), b"segment_size: x\n").unwrap();
        SledMetaStore::open(dir.path()).expect("starts afresh");
        assert!(moved_aside(dir.path()));
    }

    #[tokio::test]
    async fn a_locked_database_is_reported_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let repo = RepoName::parse("library/busybox").unwrap();
        let digest = Digest::sha256_of(b"m");
        let first = SledMetaStore::open(dir.path()).unwrap();
        first.put_tag("docker.io", &repo, "latest", &digest).await.unwrap();
        // sled's own file lock, held by `first`, refuses the second open.
        let err = SledMetaStore::open(dir.path()).err().expect("the second open fails");
        assert!(err.to_string().contains("lock"), "{err}");
        assert!(!moved_aside(dir.path()), "a lock is not corruption");
        let rec = first
            .tag("docker.io", &repo, "latest")
            .await
            .unwrap()
            .expect("still there");
        assert_eq!(rec.digest, digest.to_string());
    }

    #[test]
    fn lock_permission_and_fd_errors_are_not_corruption() {
        use std::io::{Error, ErrorKind};
        let not = [
            sled::Error::Io(Error::other("could not acquire lock on \"meta/db\": WouldBlock")),
            sled::Error::Io(Error::from(ErrorKind::PermissionDenied)),
            sled::Error::Io(Error::from_raw_os_error(24)), // EMFILE
            sled::Error::Io(Error::from_raw_os_error(23)), // ENFILE
            sled::Error::Io(Error::from(ErrorKind::StorageFull)),
            sled::Error::ReportableBug("x".into()),
        ];
        for e in &not {
            assert!(!is_unreadable(e), "{e:?}");
        }
        for e in [
            sled::Error::Corruption { at: None, bt: () },
            sled::Error::Unsupported("older sled".into()),
            sled::Error::Io(Error::from(ErrorKind::UnexpectedEof)),
        ] {
            assert!(is_unreadable(&e), "{e:?}");
        }
    }
}
