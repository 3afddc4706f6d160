//! Blobs through the cache: a stored blob, a join on its single-flight
//! fetch (started here if it is cold), or, when the cache cannot store it,
//! a pass-through from the upstream. Whichever it is, the API gets a `Blob`:
//! its size where known and `range` for its bytes, never a file.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::error::CacheError;
use super::fetch::BlobFetch;
use super::inflight::{Fallback, Joined, Slot};
use super::passthrough::{PassThrough, falls_back};
use super::{Cache, reader};
use crate::reference::{Digest, Hasher};
use crate::routing::Route;
use crate::store::{BlobStore, MetaStore, OnDamaged, ReadMode};

/// A blob's bytes as they go to a client; an error item ends the response
/// abnormally.
pub type BlobBody = BoxStream<'static, Result<Bytes, CacheError>>;

/// A blob the cache is serving.
pub struct Blob {
    source: Source,
}

enum Source {
    /// Stored and verified.
    Stored { size: u64, read: StoredRead },
    /// Being fetched; `size` is the upstream's announced length, if any.
    Fetching { joined: Joined, size: Option<u64> },
    /// The cache cannot store it: streamed from the upstream, not stored.
    PassThrough { pass: Box<PassThrough>, size: Option<u64> },
}

/// What reading a stored blob needs, and what to do if it turns out damaged.
struct StoredRead {
    store: Arc<dyn BlobStore>,
    meta: Arc<dyn MetaStore>,
    events: Arc<crate::events::Events>,
    upstream: String,
    repo: String,
    digest: Digest,
    /// Keeps the blob out of eviction while it is read (whoever streams it
    /// holds a clone until the last byte went).
    pin: Arc<super::evict::Pin>,
}

impl StoredRead {
    /// Forget and log a stored blob the store found damaged (and removed),
    /// so the next request fetches it again, verified.
    fn on_damaged(&self) -> OnDamaged {
        let (meta, events) = (self.meta.clone(), self.events.clone());
        let (upstream, repo, digest) = (self.upstream.clone(), self.repo.clone(), self.digest.clone());
        Box::new(move |e: &std::io::Error, removed: bool| {
            let removed = match removed {
                true => "removed; it is fetched again when next asked for",
                false => "could not be removed",
            };
            let err = CacheError::from(std::io::Error::new(e.kind(), e.to_string()));
            events.storage_degraded(
                err.cause(),
                &upstream,
                &repo,
                &digest.to_string(),
                &format!("stored blob unreadable ({err}); {removed}"),
            );
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { meta.forget(&digest).await });
            }
        })
    }
}

impl Blob {
    /// Whether it is served from the cache (not fetched, not passed through).
    pub fn is_stored(&self) -> bool {
        matches!(self.source, Source::Stored { .. })
    }

    /// For a blob being fetched: a wait for its commit.
    pub fn commit_wait(&self) -> Option<super::inflight::CommitWait> {
        match &self.source {
            Source::Fetching { joined, .. } => Some(joined.commit_wait()),
            _ => None,
        }
    }

    /// Whether the cache cannot store it: it is streamed through unstored.
    pub fn is_passing_through(&self) -> bool {
        matches!(self.source, Source::PassThrough { .. })
    }

    /// The blob's size, where known: stored, or announced by the upstream.
    pub fn size(&self) -> Option<u64> {
        match &self.source {
            Source::Stored { size, .. } => Some(*size),
            Source::Fetching { size, .. } | Source::PassThrough { size, .. } => *size,
        }
    }

    /// The size a Range is resolved against. A blob being fetched whose
    /// upstream did not announce its size makes this wait for the whole
    /// (verified) blob; a pass-through without one has none.
    pub async fn size_for_range(&mut self) -> Result<Option<u64>, CacheError> {
        match &mut self.source {
            Source::Fetching { joined, size: None } => Ok(Some(joined.done().await?)),
            _ => Ok(self.size()),
        }
    }

    /// The bytes `[start, end)` of the blob (`end` None: to its end). `mode`
    /// says how stored bytes may be handed out.
    pub async fn range(self, start: u64, end: Option<u64>, mode: ReadMode) -> Result<BlobBody, CacheError> {
        match self.source {
            Source::Stored { size, read } => {
                let end = end.unwrap_or(size);
                let damaged = read.on_damaged();
                let stream = read.store.read_range(&read.digest, start, end, mode, damaged).await?;
                let pin = read.pin.clone();
                Ok(stream
                    .map(move |item| {
                        let _reading = &pin;
                        item.map_err(CacheError::from)
                    })
                    .boxed())
            }
            Source::Fetching { joined, .. } => Ok(reader::stream(joined, start, end).boxed()),
            Source::PassThrough { pass, .. } => Ok((*pass).window(start, end).into_stream().boxed()),
        }
    }
}

impl Cache {
    /// A stored blob, or a join on its (possibly new) single-flight fetch.
    /// With repository scoping, a stored blob, or a fetch under another
    /// name, is served only once the route's repository is known to hold it.
    pub async fn blob(&self, route: &Route, digest: &Digest) -> Result<Blob, CacheError> {
        // A store that cannot say counts as a miss here: the owner (or
        // `blob_here`) passes it through from the upstream.
        if let Some(cluster) = &self.cluster
            && let Some(owner) = cluster.owner(digest)
            && !matches!(self.store.stat(digest).await, Ok(Some(_)))
        {
            match self.blob_of_owner(&owner, route, digest).await {
                Ok(blob) => return Ok(blob),
                Err(e) => self.events.upstream_degraded(
                    e.cause(),
                    &route.upstream.name,
                    route.repo.as_str(),
                    &digest.to_string(),
                    "the replica owning this blob did not serve it; fetching it here",
                    &e.to_string(),
                ),
            }
        }
        self.blob_here(route, digest).await
    }

    /// A cold blob from the replica that owns it: streamed and verified as
    /// from an upstream, not stored again (the owner stores it in the
    /// shared bucket), joining the owner's one upstream fetch. If the owner
    /// goes away mid-transfer, the rest comes from the upstream.
    async fn blob_of_owner(
        &self,
        owner: &crate::cluster::Peer,
        route: &Route,
        digest: &Digest,
    ) -> Result<Blob, CacheError> {
        let repo = owner
            .repo_for(&route.upstream.config, &route.repo)
            .ok_or_else(|| CacheError::Invalid {
                digest: digest.to_string(),
                reason: format!("{} has no name on the owner", route.repo),
            })?;
        let fallback = Fallback {
            upstream: route.upstream.clone(),
            repo: route.repo.clone(),
            digest: digest.clone(),
        };
        let pass = PassThrough::open(owner.client(), &repo, digest, 0, Hasher::new(digest.algorithm()))
            .await?
            .or_rest_from(fallback, self.events.clone());
        let size = pass.total();
        tracing::debug!(owner = %owner.url, digest = %digest, "blob streamed from its owner replica");
        Ok(Blob {
            source: Source::PassThrough {
                pass: Box::new(pass),
                size,
            },
        })
    }

    /// The blob from this replica's store, or fetched by this replica (a
    /// request from another berth is answered here, never forwarded).
    pub async fn blob_here(&self, route: &Route, digest: &Digest) -> Result<Blob, CacheError> {
        // A store that cannot be asked (S3 unreachable, a failing disk)
        // does not fail the pull: the blob comes from the upstream,
        // verified, and the trouble is logged as `storage_degraded`.
        let stored = match self.store.stat(digest).await {
            Ok(stored) => stored,
            Err(e) => return self.pass_through_degraded(route, digest, e).await,
        };
        if let Some(size) = stored {
            self.admit_blob(route, digest).await?;
            let _ = self.meta.touch(digest).await;
            self.events.metrics.hit("blob");
            let read = StoredRead {
                store: self.store.clone(),
                meta: self.meta.clone(),
                events: self.events.clone(),
                upstream: route.upstream.name.clone(),
                repo: route.repo.to_string(),
                digest: digest.clone(),
                pin: Arc::new(self.evictor.pin(digest)),
            };
            return Ok(Blob {
                source: Source::Stored { size, read },
            });
        }
        self.events.metrics.miss("blob");
        let fallback = Fallback {
            upstream: route.upstream.clone(),
            repo: route.repo.clone(),
            digest: digest.clone(),
        };
        let slot = self.inflight.join_or_lead(fallback, self.store.begin(digest)).await;
        let mut joined = match slot {
            Ok(Slot::Follower(joined)) => {
                // Joined first, then checked: a fetch under another name
                // registered between a check and the join cannot slip in.
                if !joined.asks_as_requested() {
                    self.admit_blob(route, digest).await?;
                }
                joined
            }
            Ok(Slot::Leader(fetch, upload, joined)) => {
                let task = BlobFetch {
                    fetch,
                    upstream: route.upstream.clone(),
                    repo: route.repo.clone(),
                    digest: digest.clone(),
                    evictor: self.evictor.clone(),
                    inflight: self.inflight.clone(),
                    finish_abandoned: self.finish_abandoned,
                    max_unannounced: self.max_size,
                    events: self.events.clone(),
                    links: self.scoped.then(|| self.meta.clone()),
                };
                // The fetch outlives the request that started it; its events
                // name that request.
                tokio::spawn(tracing::Instrument::in_current_span(task.run(upload)));
                joined
            }
            Err(e) => return self.pass_through_degraded(route, digest, e).await,
        };
        match joined.started().await {
            Ok(size) => Ok(Blob {
                source: Source::Fetching { joined, size },
            }),
            // The fetch could not store what it got before this request read
            // anything: stream it from the upstream instead.
            Err(e) if falls_back(&e) => self.pass_through(route, digest).await,
            Err(e) => Err(e),
        }
    }

    /// The store failed us (`e`): log it as `storage_degraded`, and serve
    /// the blob from the upstream, verified, without storing it.
    async fn pass_through_degraded(
        &self,
        route: &Route,
        digest: &Digest,
        e: std::io::Error,
    ) -> Result<Blob, CacheError> {
        CacheError::from(e).log_degraded(
            &self.events,
            &route.upstream.name,
            route.repo.as_str(),
            &digest.to_string(),
        );
        self.pass_through(route, digest).await
    }

    async fn pass_through(&self, route: &Route, digest: &Digest) -> Result<Blob, CacheError> {
        let hasher = Hasher::new(digest.algorithm());
        let pass = PassThrough::open(&route.upstream, &route.repo, digest, 0, hasher).await?;
        let size = pass.total();
        Ok(Blob {
            source: Source::PassThrough {
                pass: Box::new(pass),
                size,
            },
        })
    }
}
