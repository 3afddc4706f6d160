//! The get-or-fetch facade: the API asks here for manifests, blobs and tags;
//! this answers from the store when it can and from the upstream when it must.
//! It owns the cache rules (digests immutable, tags revalidated once per TTL,
//! stale-if-error) and never deals with HTTP requests or responses, files or
//! wire formats: below it are the `store` seams and the `upstream` client.
//!
//! Manifests and tags are here; blobs in `blob.rs`, referrers in `referrers.rs`.

mod blob;
mod coalesce;
mod convert;
mod error;
mod evict;
mod evict_plan;
mod fetch;
mod gc;
mod import;
mod inflight;
mod lock;
mod memo;
mod passthrough;
mod reader;
mod received;
mod reconcile;
mod referrers;
mod scope;
mod unknown;
mod verify;
mod warm;

#[cfg(test)]
mod scope_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use crate::store::ReadMode;
pub use blob::{Blob, BlobBody};
pub use convert::ConvertError;
pub use error::CacheError;
pub use import::ImportUpload;
pub use inflight::InflightFetch;
pub use lock::{CacheLock, LockError, LockState, lock_state};
pub use referrers::ReferrersIndex;
pub use unknown::UnknownReference;

use crate::failure::FailureCause;
use crate::reference::{Digest, Reference};
use crate::routing::Route;
use crate::store::{BlobStore, FsBlobStore, MetaStore, SledMetaStore, now_secs};
use crate::upstream::{ManifestHead, UpstreamManifest};
use coalesce::Coalesce;
use evict::Evictor;
pub use gc::{GcRemoval, GcReport};
use inflight::Inflight;
use memo::ManifestMemo;
use reconcile::Listing;
pub use warm::{Walked, WarmStep, Warmed};

#[derive(Debug, Clone)]
pub struct CachedManifest {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: Digest,
}

/// How long an upstream's "unknown" (404) is believed: a burst of requests
/// for something missing costs one upstream request, and something pushed
/// just now is found a few seconds later.
const UNKNOWN_KEPT: Duration = Duration::from_secs(5);
/// How long a fetched tag list is reused for `tags/list` requests.
const TAG_LIST_KEPT: Duration = Duration::from_secs(10);
/// A blob's size never changes; its HEAD answer is reused this long.
const BLOB_SIZE_KEPT: Duration = Duration::from_secs(60);

/// Upstream name, repository, reference.
type Key = (String, String, String);

fn key(route: &Route, reference: &str) -> Key {
    (
        route.upstream.name.clone(),
        route.repo.to_string(),
        reference.to_string(),
    )
}

/// Upstream requests shared by concurrent callers, with their answers.
#[derive(Default)]
struct Flights {
    manifests: Coalesce<Key, Result<CachedManifest, CacheError>>,
    heads: Coalesce<Key, Result<ManifestHead, CacheError>>,
    blob_sizes: Coalesce<Key, Result<Option<u64>, CacheError>>,
    tag_lists: Coalesce<Key, Result<Arc<Vec<String>>, CacheError>>,
    referrers: Coalesce<Key, Result<ReferrersIndex, CacheError>>,
    /// Expired tags revalidated against the upstream, with their answers.
    revalidations: Coalesce<Key, Result<CachedManifest, CacheError>>,
    /// Expired tags asked of the replica owning them.
    owner_heads: Coalesce<Key, Result<ManifestHead, CacheError>>,
}

/// How a tag is checked against the upstream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TagCheck {
    /// The cached digest within `tag_ttl`; then a HEAD, at the replica
    /// owning the tag when there is a cluster.
    Ttl,
    /// A HEAD to the upstream now, whatever the tag's age.
    Now,
    /// As `Ttl`, revalidated by this replica: another berth asked.
    Here,
}

/// Where a tag's owner is found among the replicas: its upstream,
/// repository and name hashed like a digest.
fn tag_key(route: &Route, tag: &str) -> Digest {
    let name = format!("tag\0{}\0{}\0{tag}", route.upstream.name, route.repo);
    Digest::sha256_of(name.as_bytes())
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
    store: Arc<dyn BlobStore>,
    meta: Arc<dyn MetaStore>,
    evictor: Arc<Evictor>,
    memo: Arc<ManifestMemo>,
    inflight: Arc<Inflight>,
    flights: Flights,
    tag_ttl: Duration,
    finish_abandoned: bool,
    /// cache.max_size: nothing larger could be kept anyway.
    max_size: u64,
    /// Serve stored content under a repository only when it is known to
    /// hold it (see `scope.rs`).
    scoped: bool,
    events: Arc<crate::events::Events>,
    /// Replicas sharing the storage: who owns which digest.
    cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Whether the store is a bucket every replica shares (its trouble is
    /// every replica's: no other one would serve better).
    shared_store: bool,
    /// Held while the cache is open: one process per cache directory.
    _lock: CacheLock,
}

/// A bucket that cannot be listed at start is waited for, serving by
/// pass-through, unless it refused the credentials: that is the config,
/// and berth says so instead of starting.
async fn refuse_credentials_refused(gate: &crate::store::Gate) -> Result<(), CacheError> {
    let probe = Digest::sha256_of(b"berth: are these credentials taken?");
    match gate.inner().stat(&probe).await {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(CacheError::from(std::io::Error::new(
            e.kind(),
            format!("the bucket refused berth's credentials: {e}"),
        ))),
        _ => Ok(()),
    }
}

impl Cache {
    /// Open the cache directory of `config`: lock it, open the filesystem
    /// and sled stores, and drop records that point at missing content.
    /// Repository scoping is off; `scope_by_repository` turns it on.
    pub async fn open(config: &crate::config::Config, events: Arc<crate::events::Events>) -> Result<Self, CacheError> {
        // First: the blob store empties tmp/ and sled may be repaired.
        let lock = CacheLock::acquire(&config.cache_dir).map_err(|e| CacheError::Lock(Arc::new(e)))?;
        let (store, meta, listing): (Arc<dyn BlobStore>, Arc<dyn MetaStore>, Listing) = match &config.s3 {
            None => {
                let store = Arc::new(FsBlobStore::open(&config.cache_dir)?);
                let items = store.list().await?;
                (
                    store,
                    Arc::new(SledMetaStore::open(&config.cache_dir)?),
                    Listing::Now(items),
                )
            }
            Some(s3) => {
                let bucket = crate::store::S3Config {
                    endpoint: s3.endpoint.clone(),
                    bucket: s3.bucket.clone(),
                    region: s3.region.clone(),
                    access_key_id: s3.access_key_id.clone(),
                    secret_access_key: s3.secret_access_key.clone(),
                };
                let (store, meta, gate) = crate::store::open_s3(&bucket, &config.cache_dir, s3.local_cache).await?;
                let listing = match gate.inner().list().await {
                    Ok(items) => {
                        // Nothing is served before the index matches it.
                        gate.open();
                        Listing::Now(items)
                    }
                    Err(e) => {
                        refuse_credentials_refused(&gate).await?;
                        events.bucket_unanswered(&e.to_string());
                        Listing::Later(gate)
                    }
                };
                (store, meta, listing)
            }
        };
        Self::opened(config, store, meta, lock, events, listing).await
    }

    #[cfg(test)]
    async fn with_stores(
        config: &crate::config::Config,
        store: Arc<dyn BlobStore>,
        meta: Arc<dyn MetaStore>,
        lock: CacheLock,
        events: Arc<crate::events::Events>,
    ) -> Result<Self, CacheError> {
        let items = store.list().await?;
        Self::opened(config, store, meta, lock, events, Listing::Now(items)).await
    }

    async fn opened(
        config: &crate::config::Config,
        store: Arc<dyn BlobStore>,
        meta: Arc<dyn MetaStore>,
        lock: CacheLock,
        events: Arc<crate::events::Events>,
        listing: Listing,
    ) -> Result<Self, CacheError> {
        let (used, later) = match listing {
            Listing::Now(items) => (reconcile::reconcile(store.as_ref(), meta.as_ref(), &items).await?, None),
            Listing::Later(gate) => (0, Some(gate)),
        };
        let memo = Arc::new(ManifestMemo::new(MANIFEST_MEMO_BYTES));
        let evictor = Arc::new(Evictor::new(
            config.max_size,
            config.keep_recent,
            used,
            store.clone(),
            meta.clone(),
            memo.clone(),
            events.clone(),
        ));
        if let Some(gate) = later {
            tokio::spawn(reconcile::open_when_the_bucket_answers(
                gate,
                meta.clone(),
                evictor.clone(),
            ));
        }
        Ok(Self {
            store,
            meta,
            evictor,
            memo,
            inflight: Arc::default(),
            flights: Flights::default(),
            tag_ttl: config.tag_ttl,
            finish_abandoned: config.finish_abandoned,
            max_size: config.max_size,
            shared_store: config.s3.is_some(),
            scoped: false,
            events,
            cluster: None,
            _lock: lock,
        })
    }

    async fn load_manifest(&self, digest: &Digest) -> Option<CachedManifest> {
        if let Some(m) = self.memo.get(digest) {
            let _ = self.meta.touch(digest).await;
            return Some(m);
        }
        let bytes = self
            .store
            .read(digest, crate::upstream::MAX_MANIFEST_SIZE as u64)
            .await
            .ok()??;
        let media_type = match self.meta.manifest(digest).await.ok().flatten() {
            Some(rec) => rec.media_type,
            None => crate::manifest::media_type(&bytes, None).ok()?,
        };
        let _ = self.meta.touch(digest).await;
        let m = CachedManifest {
            bytes,
            media_type,
            digest: digest.clone(),
        };
        self.memo.put(&m);
        Some(m)
    }

    /// Store a fetched manifest. A cache that cannot be written does not fail
    /// the pull: the manifest is served anyway and the problem logged.
    async fn store_manifest(&self, route: &Route, m: &UpstreamManifest) {
        let stored = match self.store.put(&m.digest, m.bytes.clone()).await {
            Ok(written) => {
                // Its references first: eviction keeps them with it.
                let refs = crate::manifest::references(&m.bytes);
                let recorded = self
                    .meta
                    .put_manifest(&m.digest, &m.media_type, m.bytes.len() as u64, &refs)
                    .await
                    .map_err(CacheError::from);
                if written {
                    self.evictor.committed(&m.digest, m.bytes.len() as u64).await;
                }
                recorded
            }
            Err(e) => Err(CacheError::from(e)),
        };
        if let Err(e) = stored {
            e.log_degraded(
                &self.events,
                &route.upstream.name,
                route.repo.as_str(),
                &m.digest.to_string(),
            );
        }
    }

    pub async fn manifest(&self, route: &Route, reference: &Reference) -> Result<CachedManifest, CacheError> {
        self.manifest_checked(route, reference, TagCheck::Ttl).await
    }

    /// `manifest` for another berth (a replica asking the owner of a tag):
    /// an expired tag is revalidated here, never sent on to another owner
    /// (two replicas whose peer lists differ for a moment could otherwise
    /// send it back and forth).
    pub async fn manifest_here(&self, route: &Route, reference: &Reference) -> Result<CachedManifest, CacheError> {
        self.manifest_checked(route, reference, TagCheck::Here).await
    }

    /// `manifest`, with a tag revalidated now whatever its age: prefetch
    /// and export want the upstream's current answer (a `[[prefetch]]`
    /// every minute would otherwise keep a moved tag for `tag_ttl`).
    /// Offline, or with the upstream unreachable, the cached digest still.
    pub async fn manifest_revalidated(
        &self,
        route: &Route,
        reference: &Reference,
    ) -> Result<CachedManifest, CacheError> {
        self.manifest_checked(route, reference, TagCheck::Now).await
    }

    /// A manifest by digest, or by tag, its tag checked as `check` says.
    async fn manifest_checked(
        &self,
        route: &Route,
        reference: &Reference,
        check: TagCheck,
    ) -> Result<CachedManifest, CacheError> {
        match reference {
            Reference::Digest(d) => {
                if let Some(m) = self.load_manifest(d).await {
                    self.admit_manifest(route, d).await?;
                    self.events.metrics.hit("manifest");
                    return Ok(m);
                }
                self.events.metrics.miss("manifest");
                self.fetch_manifest(route, reference).await
            }
            Reference::Tag(tag) => match self.manifest_by_tag(route, reference, tag.as_str(), check).await {
                Err(e) => Err(self.explain_unknown_tag(route, tag.as_str(), e).await),
                found => found,
            },
        }
    }

    /// GET a manifest from the upstream, shared by concurrent requests for it.
    async fn fetch_manifest(&self, route: &Route, reference: &Reference) -> Result<CachedManifest, CacheError> {
        self.flights
            .manifests
            .get(
                key(route, &reference.to_string()),
                |r| kept(r, Duration::ZERO),
                || self.fetch_manifest_now(route, reference),
            )
            .await
    }

    async fn fetch_manifest_now(&self, route: &Route, reference: &Reference) -> Result<CachedManifest, CacheError> {
        let upstream = &route.upstream;
        let m = upstream
            .manifest(&route.repo, reference)
            .await
            .map_err(|e| CacheError::upstream(&upstream.name, e))?;
        self.store_manifest(route, &m).await;
        self.link(route, &m.digest).await;
        Ok(CachedManifest {
            bytes: m.bytes,
            media_type: m.media_type,
            digest: m.digest,
        })
    }

    async fn manifest_by_tag(
        &self,
        route: &Route,
        reference: &Reference,
        tag: &str,
        check: TagCheck,
    ) -> Result<CachedManifest, CacheError> {
        let upstream = &route.upstream;
        let repo = &route.repo;
        let known = self.meta.tag(&upstream.name, repo, tag).await?;
        let cached = match &known {
            Some(rec) => match Digest::parse(&rec.digest) {
                Ok(d) => self.load_manifest(&d).await.map(|m| (m, rec.checked_at)),
                Err(_) => None,
            },
            None => None,
        };
        let Some((cached, checked_at)) = cached else {
            self.events.metrics.miss("manifest");
            let m = self.fetch_manifest(route, reference).await?;
            self.remember_tag(route, tag, &m.digest).await;
            return Ok(m);
        };
        // Offline, the cached digest is the answer: nothing to revalidate against.
        let fresh_enough = check != TagCheck::Now && now_secs().saturating_sub(checked_at) < self.tag_ttl.as_secs();
        if upstream.is_offline() || fresh_enough {
            self.events.metrics.hit("manifest");
            return Ok(cached);
        }
        if check == TagCheck::Ttl
            && let Some(answer) = self.tag_of_owner(route, reference, tag).await
        {
            return self.owner_answered(route, reference, tag, cached, answer).await;
        }
        // One revalidation at a time per tag: a request that read the
        // record just before another's revalidation wrote it joins or
        // re-reads it instead of asking the upstream again.
        self.flights
            .revalidations
            .get(
                key(route, tag),
                |r| kept(r, Duration::ZERO),
                || self.revalidate_tag(route, reference, tag, cached, check),
            )
            .await
    }

    async fn revalidate_tag(
        &self,
        route: &Route,
        reference: &Reference,
        tag: &str,
        cached: CachedManifest,
        check: TagCheck,
    ) -> Result<CachedManifest, CacheError> {
        if check != TagCheck::Now
            && let Ok(Some(rec)) = self.meta.tag(&route.upstream.name, &route.repo, tag).await
            && rec.digest == cached.digest.to_string()
            && now_secs().saturating_sub(rec.checked_at) < self.tag_ttl.as_secs()
        {
            self.events.metrics.hit("manifest");
            return Ok(cached);
        }
        // Revalidate with HEAD: it does not count against Docker Hub's limit.
        let head = self.manifest_head(route, reference).await;
        let fresh = match head {
            Ok(head) if head.digest.as_ref() == Some(&cached.digest) => {
                self.events.metrics.hit("manifest");
                Ok(cached.clone())
            }
            Ok(_) => {
                self.events.metrics.miss("manifest");
                self.fetch_manifest(route, reference).await
            }
            Err(e) => Err(e),
        };
        match fresh {
            Ok(m) => {
                self.remember_tag(route, tag, &m.digest).await;
                Ok(m)
            }
            Err(e) => self.stale_or(route, tag, cached, e),
        }
    }

    /// The cached digest when the upstream could not answer (logged once as
    /// `upstream_degraded`); `e` when it answered "no".
    fn stale_or(
        &self,
        route: &Route,
        tag: &str,
        cached: CachedManifest,
        e: CacheError,
    ) -> Result<CachedManifest, CacheError> {
        if !serves_stale(&e) {
            return Err(e);
        }
        self.events.upstream_degraded(
            e.upstream_cause(),
            &route.upstream.name,
            route.repo.as_str(),
            tag,
            "upstream cannot revalidate the tag; serving the cached digest",
            &format!("{e}; served {}", cached.digest),
        );
        Ok(cached)
    }

    /// An expired tag, as the replica owning it answers (its HEAD): the
    /// fleet revalidates each tag once per `tag_ttl`, at its owner, however
    /// many replicas are asked for it. None when this replica owns the tag,
    /// or when the owner could not answer (logged; this replica then asks
    /// the upstream itself: correct first, one revalidation second).
    async fn tag_of_owner(
        &self,
        route: &Route,
        reference: &Reference,
        tag: &str,
    ) -> Option<Result<ManifestHead, CacheError>> {
        let cluster = self.cluster.as_ref()?;
        let owner = cluster.owner(&tag_key(route, tag))?;
        let repo = owner.repo_for(&route.upstream.config, &route.repo)?;
        let answer = self
            .flights
            .owner_heads
            .get(
                key(route, tag),
                |r| kept(r, Duration::ZERO),
                || async {
                    owner
                        .client()
                        .manifest_head(&repo, reference)
                        .await
                        .map_err(|e| CacheError::upstream(&route.upstream.name, e))
                },
            )
            .await;
        match answer {
            Err(e) if !is_unknown(&e) => {
                self.events.upstream_degraded(
                    e.cause(),
                    &route.upstream.name,
                    route.repo.as_str(),
                    tag,
                    "the replica owning this tag did not revalidate it; revalidating here",
                    &format!("{}: {e}", owner.url),
                );
                None
            }
            answer => Some(answer),
        }
    }

    /// Serve what the tag's owner answered. The owner recorded the tag in
    /// the shared metadata and stored a new manifest in the shared bucket,
    /// so nothing is written here; a manifest missing from the bucket
    /// anyway is fetched by the digest the owner named.
    async fn owner_answered(
        &self,
        route: &Route,
        reference: &Reference,
        tag: &str,
        cached: CachedManifest,
        answer: Result<ManifestHead, CacheError>,
    ) -> Result<CachedManifest, CacheError> {
        let named = match answer {
            Ok(ManifestHead { digest: Some(d), .. }) => d,
            // An owner that names no digest: ask the upstream as without one.
            Ok(ManifestHead { digest: None, .. }) => {
                return match self.fetch_manifest(route, reference).await {
                    Ok(m) => {
                        self.remember_tag(route, tag, &m.digest).await;
                        Ok(m)
                    }
                    Err(e) => self.stale_or(route, tag, cached, e),
                };
            }
            Err(e) => return Err(e),
        };
        if named == cached.digest {
            self.events.metrics.hit("manifest");
            return Ok(cached);
        }
        self.events.metrics.miss("manifest");
        if let Some(m) = self.load_manifest(&named).await {
            self.link(route, &named).await;
            return Ok(m);
        }
        match self.fetch_manifest(route, &Reference::Digest(named)).await {
            Ok(m) => Ok(m),
            Err(e) => self.stale_or(route, tag, cached, e),
        }
    }

    /// A manifest HEAD under the route, shared by concurrent identical asks.
    async fn manifest_head(&self, route: &Route, reference: &Reference) -> Result<ManifestHead, CacheError> {
        let upstream = &route.upstream;
        self.flights
            .heads
            .get(
                key(route, &reference.to_string()),
                |r| kept(r, Duration::ZERO),
                || async {
                    upstream
                        .manifest_head(&route.repo, reference)
                        .await
                        .map_err(|e| CacheError::upstream(&upstream.name, e))
                },
            )
            .await
    }

    /// Record what a tag resolved to; failing to is logged, not fatal.
    async fn remember_tag(&self, route: &Route, tag: &str, digest: &Digest) {
        self.link(route, digest).await;
        let upstream = &route.upstream.name;
        if let Err(e) = self.meta.put_tag(upstream, &route.repo, tag, digest).await {
            CacheError::from(e).log_degraded(&self.events, upstream, route.repo.as_str(), tag);
        }
    }

    /// A blob's size without fetching its body.
    pub async fn blob_size(&self, route: &Route, digest: &Digest) -> Result<Option<u64>, CacheError> {
        if let Some(size) = self.store.stat(digest).await? {
            self.admit_blob(route, digest).await?;
            return Ok(Some(size));
        }
        self.blob_head(route, digest).await
    }

    /// A blob HEAD under the route, shared by concurrent identical asks and
    /// remembered briefly (a blob's size never changes).
    async fn blob_head(&self, route: &Route, digest: &Digest) -> Result<Option<u64>, CacheError> {
        let upstream = &route.upstream;
        self.flights
            .blob_sizes
            .get(
                key(route, &digest.to_string()),
                |r| kept(r, BLOB_SIZE_KEPT),
                || async {
                    upstream
                        .blob_size(&route.repo, digest)
                        .await
                        .map_err(|e| CacheError::upstream(&upstream.name, e))
                },
            )
            .await
    }

    /// Ask the owner replica for cold blobs this one does not own.
    pub fn in_cluster(mut self, cluster: Option<Arc<crate::cluster::Cluster>>) -> Self {
        if let Some(cluster) = &cluster {
            self.evictor.in_fleet(cluster.clone());
        }
        self.cluster = cluster;
        self
    }

    /// What this replica has served and is reading, for the replica
    /// evicting for the fleet.
    pub async fn in_use(&self) -> Result<crate::cluster::InUse, CacheError> {
        Ok(self.evictor.in_use().await?)
    }

    /// Bytes the cache holds now (temp files included) and may hold.
    pub fn usage(&self) -> (u64, u64) {
        (self.evictor.used(), self.max_size)
    }

    /// The blob fetches under way now (for the status page).
    pub fn inflight(&self) -> Vec<InflightFetch> {
        self.inflight.snapshot()
    }

    /// Whether the cache can store content now (for the readiness probe).
    pub async fn writable(&self) -> Result<(), CacheError> {
        Ok(self.store.writable().await?)
    }

    /// Whether the store is one bucket shared by every replica.
    pub fn store_is_shared(&self) -> bool {
        self.shared_store
    }

    /// Make the metadata written so far durable (at shutdown).
    pub async fn flush(&self) -> Result<(), CacheError> {
        Ok(self.meta.flush().await?)
    }

    /// All tags of a repository; the last known list when the upstream is down.
    /// Concurrent requests share one upstream walk, reused for a few seconds.
    pub async fn tags(&self, route: &Route) -> Result<Vec<String>, CacheError> {
        let listed = self
            .flights
            .tag_lists
            .get(key(route, ""), |r| kept(r, TAG_LIST_KEPT), || self.fetch_tags(route))
            .await;
        listed.map(|tags| tags.as_ref().clone())
    }

    async fn fetch_tags(&self, route: &Route) -> Result<Arc<Vec<String>>, CacheError> {
        let (upstream, repo) = (&route.upstream, &route.repo);
        match upstream.tags(repo).await {
            Ok(tags) => {
                // The list is only a fallback for outages: failing to record
                // it does not fail the request. Unchanged lists are not rewritten.
                let known = self.meta.tag_list(&upstream.name, repo).await.ok().flatten();
                let changed = known.is_none_or(|k| k.tags != tags);
                if changed && let Err(e) = self.meta.put_tag_list(&upstream.name, repo, tags.clone()).await {
                    CacheError::from(e).log_degraded(&self.events, &upstream.name, repo.as_str(), "tags/list");
                }
                Ok(Arc::new(tags))
            }
            Err(e) => {
                let e = CacheError::upstream(&upstream.name, e);
                match self.meta.tag_list(&upstream.name, repo).await? {
                    Some(rec) if serves_stale(&e) => Ok(Arc::new(rec.tags)),
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
