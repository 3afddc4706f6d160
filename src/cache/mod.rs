//! The get-or-fetch facade: the API asks here for manifests, blobs and tags;
//! this answers from the store when it can and from the upstream when it must.
//! It owns the cache rules (digests immutable, tags revalidated once per TTL,
//! stale-if-error) and never deals with HTTP requests or responses.

mod blobs;
mod convert;
mod error;
mod evict;
mod fetch;
mod inflight;
mod lock;
mod memo;
mod meta;
mod passthrough;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use blobs::read_range;
pub use convert::ConvertError;
pub use error::CacheError;
pub use inflight::Joined;
pub use lock::{CacheLock, LockError};
pub use passthrough::PassThrough;

use crate::failure::FailureCause;
use crate::reference::{Digest, Reference, RepoName};
use crate::upstream::{Upstream, UpstreamManifest};
use blobs::BlobStore;
use evict::Evictor;
use inflight::{Fallback, Inflight, Slot};
use memo::ManifestMemo;
use meta::{Meta, now_secs};

#[derive(Debug, Clone)]
pub struct CachedManifest {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: Digest,
}

/// Where a blob's bytes come from.
pub enum BlobSource {
    /// Stored and verified.
    Stored { path: PathBuf, size: u64 },
    /// Being fetched; `size` is the upstream's announced length, if any.
    Fetching { joined: Joined, size: Option<u64> },
    /// The cache cannot store it: streamed from the upstream, not stored.
    PassThrough { pass: Box<PassThrough>, size: Option<u64> },
}

/// Memory for recently served manifests.
const MANIFEST_MEMO_BYTES: usize = 32 << 20;

pub struct Cache {
    store: Arc<BlobStore>,
    meta: Arc<Meta>,
    evictor: Arc<Evictor>,
    memo: ManifestMemo,
    inflight: Arc<Inflight>,
    upstreams: Vec<Arc<Upstream>>,
    tag_ttl: Duration,
    finish_abandoned: bool,
    events: Arc<crate::events::Events>,
    /// Held while the cache is open: one process per cache directory.
    _lock: CacheLock,
}

impl Cache {
    pub fn open(
        config: &crate::config::Config,
        upstreams: Vec<Arc<Upstream>>,
        events: Arc<crate::events::Events>,
    ) -> Result<Self, CacheError> {
        // First: the blob store empties tmp/ and sled may be repaired.
        let lock = CacheLock::acquire(&config.cache_dir).map_err(|e| CacheError::Lock(Arc::new(e)))?;
        let store = Arc::new(BlobStore::open(&config.cache_dir)?);
        let meta = Meta::open(&config.cache_dir)?;
        let removed = meta.repair(|d| store.size(d).is_some())?;
        if removed > 0 {
            tracing::warn!(
                removed,
                "cache metadata pointed at missing content; those records were dropped"
            );
        }
        let meta = Arc::new(meta);
        let evictor = Arc::new(Evictor::open(config.max_size, store.clone(), meta.clone())?);
        Ok(Self {
            store,
            meta,
            evictor,
            memo: ManifestMemo::new(MANIFEST_MEMO_BYTES),
            inflight: Arc::default(),
            upstreams,
            tag_ttl: config.tag_ttl,
            finish_abandoned: config.finish_abandoned,
            events,
            _lock: lock,
        })
    }

    pub fn upstream_name(&self, index: usize) -> &str {
        &self.upstreams[index].name
    }

    async fn load_manifest(&self, digest: &Digest) -> Option<CachedManifest> {
        if let Some(m) = self.memo.get(digest) {
            let _ = self.meta.touch(digest);
            return Some(m);
        }
        // Blobs share the store: a manifest request naming a large layer's
        // digest must not read the layer into memory.
        if self.store.size(digest)? > crate::upstream::MAX_MANIFEST_SIZE as u64 {
            return None;
        }
        let bytes = tokio::fs::read(self.store.path(digest)).await.ok()?;
        let media_type = match self.meta.manifest(digest).ok().flatten() {
            Some(rec) => rec.media_type,
            None => crate::manifest::media_type(&bytes, None).ok()?,
        };
        let _ = self.meta.touch(digest);
        let m = CachedManifest {
            bytes: Bytes::from(bytes),
            media_type,
            digest: digest.clone(),
        };
        self.memo.put(&m);
        Some(m)
    }

    /// Store a fetched manifest. A cache that cannot be written does not fail
    /// the pull: the manifest is served anyway and the problem logged.
    fn store_manifest(&self, upstream: &str, repo: &RepoName, m: &UpstreamManifest) {
        let stored = self
            .store
            .put(&m.digest, &m.bytes)
            .map_err(CacheError::from)
            .and_then(|written| {
                if written {
                    self.evictor.committed(&m.digest, m.bytes.len() as u64);
                }
                Ok(self.meta.put_manifest(&m.digest, &m.media_type, m.bytes.len() as u64)?)
            });
        if let Err(e) = stored {
            self.events.storage_degraded(
                e.cause(),
                upstream,
                repo.as_str(),
                &m.digest.to_string(),
                &e.to_string(),
            );
        }
    }

    pub async fn manifest(
        &self,
        up: usize,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<CachedManifest, CacheError> {
        match reference {
            Reference::Digest(d) => {
                if let Some(m) = self.load_manifest(d).await {
                    self.events.metrics.hit("manifest");
                    return Ok(m);
                }
                self.events.metrics.miss("manifest");
                self.fetch_manifest(up, repo, &d.to_string()).await
            }
            Reference::Tag(tag) => self.manifest_by_tag(up, repo, tag.as_str()).await,
        }
    }

    async fn fetch_manifest(&self, up: usize, repo: &RepoName, reference: &str) -> Result<CachedManifest, CacheError> {
        let upstream = &self.upstreams[up];
        let m = upstream
            .manifest(repo, reference)
            .await
            .map_err(|e| CacheError::upstream(&upstream.name, e))?;
        self.store_manifest(&upstream.name, repo, &m);
        Ok(CachedManifest {
            bytes: m.bytes,
            media_type: m.media_type,
            digest: m.digest,
        })
    }

    async fn manifest_by_tag(&self, up: usize, repo: &RepoName, tag: &str) -> Result<CachedManifest, CacheError> {
        let upstream = &self.upstreams[up];
        let known = self.meta.tag(&upstream.name, repo, tag)?;
        let cached = match &known {
            Some(rec) => match Digest::parse(&rec.digest) {
                Ok(d) => self.load_manifest(&d).await.map(|m| (m, rec.checked_at)),
                Err(_) => None,
            },
            None => None,
        };
        let Some((cached, checked_at)) = cached else {
            self.events.metrics.miss("manifest");
            let m = self.fetch_manifest(up, repo, tag).await?;
            self.remember_tag(&upstream.name, repo, tag, &m.digest);
            return Ok(m);
        };
        // Offline, the cached digest is the answer: nothing to revalidate against.
        if upstream.is_offline() || now_secs().saturating_sub(checked_at) < self.tag_ttl.as_secs() {
            self.events.metrics.hit("manifest");
            return Ok(cached);
        }
        // Revalidate with HEAD: it does not count against Docker Hub's limit.
        let fresh = match upstream.manifest_head(repo, tag).await {
            Ok(head) if head.digest.as_ref() == Some(&cached.digest) => {
                self.events.metrics.hit("manifest");
                Ok(cached.clone())
            }
            Ok(_) => {
                self.events.metrics.miss("manifest");
                self.fetch_manifest(up, repo, tag).await
            }
            Err(e) => Err(CacheError::upstream(&upstream.name, e)),
        };
        match fresh {
            Ok(m) => {
                self.remember_tag(&upstream.name, repo, tag, &m.digest);
                Ok(m)
            }
            Err(e) if serves_stale(&e) => {
                self.events.upstream_degraded(
                    e.upstream_cause(),
                    &upstream.name,
                    repo.as_str(),
                    tag,
                    "upstream cannot revalidate the tag; serving the cached digest",
                    &format!("{e}; served {}", cached.digest),
                );
                Ok(cached)
            }
            Err(e) => Err(e),
        }
    }

    /// Record what a tag resolved to; failing to is logged, not fatal.
    fn remember_tag(&self, upstream: &str, repo: &RepoName, tag: &str, digest: &Digest) {
        if let Err(e) = self.meta.put_tag(upstream, repo, tag, digest) {
            let e = CacheError::from(e);
            self.events
                .storage_degraded(e.cause(), upstream, repo.as_str(), tag, &e.to_string());
        }
    }

    /// A stored blob, or a join on its (possibly new) single-flight fetch.
    pub async fn blob(&self, up: usize, repo: &RepoName, digest: &Digest) -> Result<BlobSource, CacheError> {
        if let Some(size) = self.store.size(digest) {
            let _ = self.meta.touch(digest);
            self.events.metrics.hit("blob");
            return Ok(BlobSource::Stored {
                path: self.store.path(digest),
                size,
            });
        }
        self.events.metrics.miss("blob");
        let upstream = &self.upstreams[up];
        let slot = match self.inflight.join_or_lead(digest, || self.store.temp_file()) {
            Ok(slot) => slot,
            Err(e) => {
                let e = CacheError::from(e);
                self.events.storage_degraded(
                    e.cause(),
                    &upstream.name,
                    repo.as_str(),
                    &digest.to_string(),
                    &e.to_string(),
                );
                return self.pass_through(up, repo, digest).await;
            }
        };
        let mut joined = match slot {
            Slot::Follower(joined) => joined,
            Slot::Leader(fetch, writer, joined) => {
                let task = fetch::BlobFetch {
                    fetch,
                    writer,
                    upstream: self.upstreams[up].clone(),
                    repo: repo.clone(),
                    digest: digest.clone(),
                    store: self.store.clone(),
                    evictor: self.evictor.clone(),
                    inflight: self.inflight.clone(),
                    finish_abandoned: self.finish_abandoned,
                    events: self.events.clone(),
                };
                // The fetch outlives the request that started it; its events
                // name that request.
                tokio::spawn(tracing::Instrument::in_current_span(task.run()));
                joined
            }
        };
        joined.fallback = Some(Fallback {
            upstream: upstream.clone(),
            repo: repo.clone(),
            digest: digest.clone(),
        });
        match joined.started().await {
            Ok(size) => Ok(BlobSource::Fetching { joined, size }),
            // The fetch could not store what it got before this request read
            // anything: stream it from the upstream instead.
            Err(e) if e.is_storage() => self.pass_through(up, repo, digest).await,
            Err(e) => Err(e),
        }
    }

    async fn pass_through(&self, up: usize, repo: &RepoName, digest: &Digest) -> Result<BlobSource, CacheError> {
        let hasher = crate::reference::Hasher::new(digest.algorithm());
        let pass = PassThrough::open(&self.upstreams[up], repo, digest, 0, hasher).await?;
        let size = pass.total();
        Ok(BlobSource::PassThrough {
            pass: Box::new(pass),
            size,
        })
    }

    /// A blob's size without fetching its body.
    pub async fn blob_size(&self, up: usize, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, CacheError> {
        if let Some(size) = self.store.size(digest) {
            return Ok(Some(size));
        }
        let upstream = &self.upstreams[up];
        upstream
            .blob_size(repo, digest)
            .await
            .map_err(|e| CacheError::upstream(&upstream.name, e))
    }

    /// All tags of a repository; the last known list when the upstream is down.
    pub async fn tags(&self, up: usize, repo: &RepoName) -> Result<Vec<String>, CacheError> {
        let upstream = &self.upstreams[up];
        match upstream.tags(repo).await {
            Ok(tags) => {
                // The list is only a fallback for outages: failing to record
                // it does not fail the request.
                if let Err(e) = self.meta.put_tag_list(&upstream.name, repo, tags.clone()) {
                    let e = CacheError::from(e);
                    self.events
                        .storage_degraded(e.cause(), &upstream.name, repo.as_str(), "tags/list", &e.to_string());
                }
                Ok(tags)
            }
            Err(e) => {
                let e = CacheError::upstream(&upstream.name, e);
                match self.meta.tag_list(&upstream.name, repo)? {
                    Some(rec) if serves_stale(&e) => Ok(rec.tags),
                    _ => Err(e),
                }
            }
        }
    }
}

/// Whether an upstream failure is one where cached content should be served
/// instead: the upstream could not answer, as opposed to answering "no".
fn serves_stale(e: &CacheError) -> bool {
    match e {
        CacheError::Upstream { source, .. } => {
            source.is_unavailable() || matches!(source.cause(), FailureCause::Unauthorized)
        }
        CacheError::Truncated { .. } => true,
        _ => false,
    }
}
