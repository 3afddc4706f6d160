//! The get-or-fetch facade: the API asks here for manifests, blobs and tags;
//! this answers from the store when it can and from the upstream when it must.
//! It owns the cache rules (digests immutable, tags revalidated once per TTL,
//! stale-if-error) and never deals with HTTP requests or responses.

mod blobs;
mod coalesce;
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

pub use convert::ConvertError;
pub use error::CacheError;
pub use inflight::Joined;
pub use lock::{CacheLock, LockError};
pub use passthrough::PassThrough;

use crate::failure::FailureCause;
use crate::reference::{Digest, Reference, RepoName};
use crate::upstream::{Upstream, UpstreamManifest};
use blobs::BlobStore;
use coalesce::Coalesce;
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

impl BlobSource {
    /// The blob's size, where known: stored, or announced by the upstream.
    pub fn size(&self) -> Option<u64> {
        match self {
            BlobSource::Stored { size, .. } => Some(*size),
            BlobSource::Fetching { size, .. } | BlobSource::PassThrough { size, .. } => *size,
        }
    }
}

/// How long an upstream's "unknown" (404) is believed: a burst of requests
/// for something missing costs one upstream request, and something pushed
/// just now is found a few seconds later.
const UNKNOWN_KEPT: Duration = Duration::from_secs(5);
/// How long a fetched tag list is reused for `tags/list` requests.
const TAG_LIST_KEPT: Duration = Duration::from_secs(10);
/// A blob's size never changes; its HEAD answer is reused this long.
const BLOB_SIZE_KEPT: Duration = Duration::from_secs(60);

type Key = (usize, String, String);

/// Upstream requests shared by concurrent callers, with their answers.
#[derive(Default)]
struct Flights {
    manifests: Coalesce<Key, Result<CachedManifest, CacheError>>,
    heads: Coalesce<Key, Result<crate::upstream::ManifestHead, CacheError>>,
    blob_sizes: Coalesce<Key, Result<Option<u64>, CacheError>>,
    tag_lists: Coalesce<Key, Result<Arc<Vec<String>>, CacheError>>,
}

/// How long an answer is kept: successes `ok`, an upstream's definite
/// "unknown" briefly, anything else (a fault) not at all.
fn kept<T>(r: &Result<T, CacheError>, ok: Duration) -> Duration {
    match r {
        Ok(_) => ok,
        Err(e) if is_unknown(e) => UNKNOWN_KEPT,
        Err(_) => Duration::ZERO,
    }
}

fn is_unknown(e: &CacheError) -> bool {
    matches!(
        e,
        CacheError::Upstream { source, .. } if matches!(
            source.cause(),
            FailureCause::ManifestUnknown | FailureCause::BlobUnknown | FailureCause::NameUnknown
        )
    )
}

/// Memory for recently served manifests.
const MANIFEST_MEMO_BYTES: usize = 32 << 20;

pub struct Cache {
    store: Arc<BlobStore>,
    meta: Arc<Meta>,
    evictor: Arc<Evictor>,
    memo: ManifestMemo,
    inflight: Arc<Inflight>,
    flights: Flights,
    upstreams: Vec<Arc<Upstream>>,
    tag_ttl: Duration,
    finish_abandoned: bool,
    /// cache.max_size: nothing larger could be kept anyway.
    max_size: u64,
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
            flights: Flights::default(),
            upstreams,
            tag_ttl: config.tag_ttl,
            finish_abandoned: config.finish_abandoned,
            max_size: config.max_size,
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

    /// GET a manifest from the upstream, shared by concurrent requests for it.
    async fn fetch_manifest(&self, up: usize, repo: &RepoName, reference: &str) -> Result<CachedManifest, CacheError> {
        let key = (up, repo.to_string(), reference.to_string());
        self.flights
            .manifests
            .get(
                key,
                |r| kept(r, Duration::ZERO),
                || self.fetch_manifest_now(up, repo, reference),
            )
            .await
    }

    async fn fetch_manifest_now(
        &self,
        up: usize,
        repo: &RepoName,
        reference: &str,
    ) -> Result<CachedManifest, CacheError> {
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
        let key = (up, repo.to_string(), tag.to_string());
        let head = self
            .flights
            .heads
            .get(
                key,
                |r| kept(r, Duration::ZERO),
                || async {
                    upstream
                        .manifest_head(repo, tag)
                        .await
                        .map_err(|e| CacheError::upstream(&upstream.name, e))
                },
            )
            .await;
        let fresh = match head {
            Ok(head) if head.digest.as_ref() == Some(&cached.digest) => {
                self.events.metrics.hit("manifest");
                Ok(cached.clone())
            }
            Ok(_) => {
                self.events.metrics.miss("manifest");
                self.fetch_manifest(up, repo, tag).await
            }
            Err(e) => Err(e),
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
                    max_unannounced: self.max_size,
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

    /// The bytes `[start, end)` of a stored blob. `mapped`: as slices of
    /// memory maps (no copy; only for a consumer that never reads the bytes
    /// itself, such as a plain socket), else read into buffers. A stored
    /// file that cannot be read whole (truncated or damaged behind berth's
    /// back) fails this one request and is removed, so the next request
    /// fetches the blob again, verified.
    pub async fn stored_body(
        &self,
        up: usize,
        repo: &RepoName,
        digest: &Digest,
        start: u64,
        end: u64,
        mapped: bool,
    ) -> Result<impl futures_util::Stream<Item = Result<Bytes, CacheError>> + Send + 'static + use<>, CacheError> {
        let path = self.store.path(digest);
        let opened = tokio::task::spawn_blocking(move || std::fs::File::open(path))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .and_then(|file| {
                let stream: futures_util::stream::BoxStream<'static, std::io::Result<Bytes>> = if mapped {
                    Box::pin(blobs::read_range_mapped(file, start, end)?)
                } else {
                    Box::pin(blobs::read_range(file, start, end, blobs::READ_CHUNK)?)
                };
                Ok(stream)
            });
        let unreadable = UnreadableBlob {
            store: self.store.clone(),
            meta: self.meta.clone(),
            events: self.events.clone(),
            upstream: self.upstreams[up].name.clone(),
            repo: repo.to_string(),
            digest: digest.clone(),
        };
        let inner = match opened {
            Ok(stream) => stream,
            Err(e) => return Err(unreadable.fail(e)),
        };
        Ok(StoredBody {
            inner,
            watch: Some(Watch {
                unreadable,
                path: self.store.path(digest),
                end,
            }),
        })
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
        let key = (up, repo.to_string(), digest.to_string());
        self.flights
            .blob_sizes
            .get(
                key,
                |r| kept(r, BLOB_SIZE_KEPT),
                || async {
                    upstream
                        .blob_size(repo, digest)
                        .await
                        .map_err(|e| CacheError::upstream(&upstream.name, e))
                },
            )
            .await
    }

    /// All tags of a repository; the last known list when the upstream is down.
    /// Concurrent requests share one upstream walk, reused for a few seconds.
    pub async fn tags(&self, up: usize, repo: &RepoName) -> Result<Vec<String>, CacheError> {
        let key = (up, repo.to_string(), String::new());
        let listed = self
            .flights
            .tag_lists
            .get(key, |r| kept(r, TAG_LIST_KEPT), || self.fetch_tags(up, repo))
            .await;
        listed.map(|tags| tags.as_ref().clone())
    }

    async fn fetch_tags(&self, up: usize, repo: &RepoName) -> Result<Arc<Vec<String>>, CacheError> {
        let upstream = &self.upstreams[up];
        match upstream.tags(repo).await {
            Ok(tags) => {
                // The list is only a fallback for outages: failing to record
                // it does not fail the request. Unchanged lists are not rewritten.
                let known = self.meta.tag_list(&upstream.name, repo).ok().flatten();
                let changed = known.is_none_or(|k| k.tags != tags);
                if changed && let Err(e) = self.meta.put_tag_list(&upstream.name, repo, tags.clone()) {
                    let e = CacheError::from(e);
                    self.events
                        .storage_degraded(e.cause(), &upstream.name, repo.as_str(), "tags/list", &e.to_string());
                }
                Ok(Arc::new(tags))
            }
            Err(e) => {
                let e = CacheError::upstream(&upstream.name, e);
                match self.meta.tag_list(&upstream.name, repo)? {
                    Some(rec) if serves_stale(&e) => Ok(Arc::new(rec.tags)),
                    _ => Err(e),
                }
            }
        }
    }
}

/// A stored blob's body that drops the blob when it turns out unreadable:
/// on a read error, or, when the body is dropped unfinished, if the file
/// has become shorter than the range it was sending. The second case is the
/// mapped path's: there a truncated page fails the socket write inside the
/// kernel, the connection ends, and no read error ever reaches the stream.
struct StoredBody {
    inner: futures_util::stream::BoxStream<'static, std::io::Result<Bytes>>,
    /// Taken once the body finished or failed.
    watch: Option<Watch>,
}

struct Watch {
    unreadable: UnreadableBlob,
    path: PathBuf,
    end: u64,
}

impl futures_util::Stream for StoredBody {
    type Item = Result<Bytes, CacheError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        match futures_util::StreamExt::poll_next_unpin(&mut self.inner, cx) {
            Poll::Ready(Some(Ok(bytes))) => Poll::Ready(Some(Ok(bytes))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(match self.watch.take() {
                Some(w) => w.unreadable.fail(e),
                None => CacheError::from(e),
            }))),
            Poll::Ready(None) => {
                self.watch = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for StoredBody {
    fn drop(&mut self) {
        let Some(w) = self.watch.take() else {
            return;
        };
        // Most unfinished bodies are clients that left; a stat (on the
        // blocking pool) tells those from a file truncated under them.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn_blocking(move || {
                let len = std::fs::metadata(&w.path).map(|m| m.len());
                if len.is_ok_and(|len| len < w.end) {
                    w.unreadable.fail(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "stored blob was truncated while it was being sent",
                    ));
                }
            });
        }
    }
}

/// What is needed to drop a stored blob found unreadable while serving it.
struct UnreadableBlob {
    store: Arc<BlobStore>,
    meta: Arc<Meta>,
    events: Arc<crate::events::Events>,
    upstream: String,
    repo: String,
    digest: Digest,
}

impl UnreadableBlob {
    fn fail(&self, e: std::io::Error) -> CacheError {
        let removed = match self.store.remove(&self.digest) {
            Ok(()) => "removed; it is fetched again when next asked for",
            Err(_) => "could not be removed",
        };
        self.meta.forget(&self.digest);
        let e = CacheError::from(e);
        self.events.storage_degraded(
            e.cause(),
            &self.upstream,
            &self.repo,
            &self.digest.to_string(),
            &format!("stored blob unreadable ({e}); {removed}"),
        );
        e
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
