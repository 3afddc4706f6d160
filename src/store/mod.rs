//! Where bytes and records live: the `BlobStore` seam (content by digest)
//! and the `MetaStore` seam (tags, media types, conversions, tag lists,
//! repository links, access times). The cache talks to these traits only,
//! so a store can be local or remote: every call is async, content goes in
//! and out as streams, and nothing in the interface names a path.
//!
//! First implementations: files under the cache directory (`fs.rs`, reads in
//! `fs_read.rs`) and sled (`sled_meta.rs`, the only file importing sled).
//! Blocking I/O (fsync, rename, unlink, sled flushes) runs on the blocking
//! pool, inside the store, through `blocking` below.

mod fs;
mod fs_read;
mod gate;
mod local_tier;
mod s3;
mod s3_meta;
mod sled_meta;

use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::reference::{Digest, RepoName, Verified};

pub use fs::FsBlobStore;
pub use gate::Gate;
pub use local_tier::LocalTier;
pub use s3::{S3BlobStore, S3Config};
pub use s3_meta::S3MetaStore;
pub use sled_meta::{MetaError, SledMetaStore};

/// The bytes of stored content, in order.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// How a range of stored content is handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Read into buffers: for consumers that look at the bytes (TLS, hashing).
    Copied,
    /// Slices of memory maps, no copy: only for a consumer whose bytes only
    /// the kernel touches (a plain socket), where a page lost to a
    /// truncation fails the socket write instead of raising SIGBUS.
    Mapped,
}

/// Called once when stored content turns out damaged while it is read (a
/// read error, or a file found shorter than the range after the reader went
/// away). The store has already removed it; the cache forgets and logs.
pub type OnDamaged = Box<dyn FnOnce(&io::Error, bool) + Send>;

/// One stored item, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredItem {
    pub digest: Digest,
    pub size: u64,
    /// When it was stored, in milliseconds since the epoch.
    pub stored_ms: u64,
}

/// Content by digest. Content becomes visible under its digest only by a
/// commit that carries the proof it hashed to that digest.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// The size of stored content, if present.
    async fn stat(&self, digest: &Digest) -> io::Result<Option<u64>>;
    /// Small content whole; None when absent or larger than `limit`.
    async fn read(&self, digest: &Digest, limit: u64) -> io::Result<Option<Bytes>>;
    /// `[start, end)` of stored content. A range past its end fails here.
    async fn read_range(
        &self,
        digest: &Digest,
        start: u64,
        end: u64,
        mode: ReadMode,
        damaged: OnDamaged,
    ) -> io::Result<ByteStream>;
    /// Store small content in one go, hashed here first. Whether it was
    /// written (false: it was there already).
    async fn put(&self, digest: &Digest, bytes: Bytes) -> io::Result<bool>;
    /// Start storing a blob that arrives in pieces.
    async fn begin(&self, digest: &Digest) -> io::Result<Box<dyn BlobUpload>>;
    async fn delete(&self, digest: &Digest) -> io::Result<()>;
    async fn list(&self) -> io::Result<Vec<StoredItem>>;
    /// Whether content can be written now: a small temp file is created,
    /// written and removed (the readiness probe asks this).
    async fn writable(&self) -> io::Result<()>;
}

/// A blob being stored. Nothing of it is visible under the digest until
/// `commit`; dropped or aborted, it leaves nothing behind.
#[async_trait]
pub trait BlobUpload: Send {
    /// Append pieces, in order.
    async fn write(&mut self, pieces: Vec<Bytes>) -> io::Result<()>;
    /// A reader of what has been written so far, for requests that join the
    /// download; it stays readable after the commit.
    fn partial(&self) -> Arc<dyn PartialRead>;
    /// Make the blob durable and visible under its digest.
    async fn commit(self: Box<Self>, proof: Verified) -> io::Result<()>;
    async fn abort(self: Box<Self>);
}

/// Reads of an upload in progress.
#[async_trait]
pub trait PartialRead: Send + Sync {
    /// Up to `len` bytes at `pos`, all of them already written.
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes>;
}

/// What a tag resolved to, and when the upstream last confirmed it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TagRecord {
    pub digest: String,
    pub checked_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestRecord {
    pub media_type: String,
    pub size: u64,
    /// What the manifest needs to be pulled whole (config, layers, child
    /// manifests), so eviction keeps an image's content together. None in
    /// records written before berth kept them; the cache fills them in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refs: Option<Vec<String>>,
}

impl ManifestRecord {
    pub fn new(media_type: &str, size: u64, refs: &[Digest]) -> Self {
        Self {
            media_type: media_type.to_string(),
            size,
            refs: Some(refs.iter().map(|d| d.to_string()).collect()),
        }
    }
}

/// Stored content as the metadata indexes it: eviction plans from this
/// index, never from a walk of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedItem {
    pub digest: Digest,
    pub size: u64,
    /// Last use as far as berth knows, else when it was stored (ms since the epoch).
    pub last_used_ms: u64,
}

/// A tag and what it resolved to last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagEntry {
    pub upstream: String,
    pub repo: String,
    pub tag: String,
    pub digest: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TagListRecord {
    pub tags: Vec<String>,
    pub fetched_at: u64,
}

/// The referrers of a subject digest as last computed (an OCI image index,
/// unfiltered), and when.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReferrersRecord {
    /// The index JSON, exactly as served.
    pub index: String,
    pub fetched_at: u64,
}

/// Records about content. Nothing in it is the only copy of content: a
/// record pointing at missing content is treated as absent.
#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    async fn tag(&self, upstream: &str, repo: &RepoName, tag: &str) -> Result<Option<TagRecord>, MetaError>;
    /// Durable before it returns: what a tag resolved to is what an offline
    /// restart serves.
    async fn put_tag(&self, upstream: &str, repo: &RepoName, tag: &str, digest: &Digest) -> Result<(), MetaError>;
    async fn manifest(&self, digest: &Digest) -> Result<Option<ManifestRecord>, MetaError>;
    /// `refs`: what the manifest needs to be pulled whole (`manifest::references`).
    async fn put_manifest(
        &self,
        digest: &Digest,
        media_type: &str,
        size: u64,
        refs: &[Digest],
    ) -> Result<(), MetaError>;
    /// Every manifest record's digest and references (None: not recorded yet).
    async fn manifest_refs(&self) -> Result<Vec<(Digest, Option<Vec<Digest>>)>, MetaError>;
    async fn tag_list(&self, upstream: &str, repo: &RepoName) -> Result<Option<TagListRecord>, MetaError>;
    async fn put_tag_list(&self, upstream: &str, repo: &RepoName, tags: Vec<String>) -> Result<(), MetaError>;
    /// The referrers index last computed for `subject` under `repo`.
    async fn referrers(
        &self,
        upstream: &str,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Option<ReferrersRecord>, MetaError>;
    /// Not durable before it returns: like a tag list, it is a fallback for
    /// outages and learned again from the upstream.
    async fn put_referrers(
        &self,
        upstream: &str,
        repo: &RepoName,
        subject: &Digest,
        index: &str,
    ) -> Result<(), MetaError>;
    async fn converted(&self, version: u32, original: &Digest) -> Result<Option<Digest>, MetaError>;
    /// Durable before it returns: clients are handed the converted digest.
    async fn put_converted(&self, version: u32, original: &Digest, converted: &Digest) -> Result<(), MetaError>;
    async fn is_converted(&self, digest: &Digest) -> Result<bool, MetaError>;
    /// Record that `repo` on `upstream` holds `digest` (the upstream served
    /// or confirmed it under that name). Not durable before it returns: a
    /// link lost to a crash costs one upstream HEAD to learn again.
    async fn put_link(&self, upstream: &str, repo: &RepoName, digest: &Digest) -> Result<(), MetaError>;
    /// Whether `repo` on `upstream` is known to hold `digest`.
    async fn has_link(&self, upstream: &str, repo: &RepoName, digest: &Digest) -> Result<bool, MetaError>;
    /// Drop records pointing at content not in `present`; how many went.
    async fn repair(&self, present: &std::collections::HashSet<Digest>) -> Result<usize, MetaError>;
    /// Content was used now (for least-recently-used eviction).
    async fn touch(&self, digest: &Digest) -> Result<(), MetaError>;
    /// When content was last used, in milliseconds since the epoch.
    async fn last_used_ms(&self, digest: &Digest) -> Option<u64>;
    /// Forget an evicted (or damaged) digest: its access time and its index entry.
    async fn forget(&self, digest: &Digest);
    /// Index content just committed: `size` bytes, stored now.
    async fn put_item(&self, digest: &Digest, size: u64) -> Result<(), MetaError>;
    /// Every indexed item, with its last use.
    async fn items(&self) -> Result<Vec<IndexedItem>, MetaError>;
    /// Read into the local copy every manifest record another replica put
    /// in the shared bucket (the eviction plan needs what they reference);
    /// how many were new. Nothing to learn without a shared bucket.
    async fn learn_shared_manifests(&self) -> Result<usize, MetaError> {
        Ok(0)
    }
    /// Every access time this berth knows, indexed or not (what a replica
    /// tells the one evicting for the fleet it has served, and when).
    async fn access_times(&self) -> Result<Vec<(Digest, u64)>, MetaError>;
    /// Make the index hold exactly what the store listed (when the cache opens:
    /// content added or removed while berth was not running).
    async fn sync_items(&self, listed: &[StoredItem]) -> Result<(), MetaError>;
    /// Every tag record (to name images in what eviction reports).
    async fn tags_all(&self) -> Result<Vec<TagEntry>, MetaError>;
    /// Make everything written so far durable (at shutdown).
    async fn flush(&self) -> Result<(), MetaError>;
}

/// Run blocking I/O on the blocking pool: the one way this layer does it.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// The stores of `[storage] kind = "s3"`: blobs and shared records in the
/// bucket, this replica's own records (and copies) in sled under
/// `cache_dir`, uploads under way spooled to `cache_dir/tmp`. The bucket is
/// behind a `Gate`, shut: the cache opens it once its index matches the
/// bucket's listing (the local tier in front still serves its copies).
pub async fn open_s3(
    config: &S3Config,
    cache_dir: &std::path::Path,
    local_cache: u64,
) -> io::Result<(Arc<dyn BlobStore>, Arc<dyn MetaStore>, Arc<Gate>)> {
    let bucket = s3::bucket(config)?;
    let gate = Gate::shut(Arc::new(S3BlobStore::with_bucket(bucket.clone(), cache_dir)?));
    let blobs: Arc<dyn BlobStore> = match local_cache {
        0 => gate.clone(),
        budget => Arc::new(LocalTier::open(gate.clone(), &cache_dir.join("local"), budget).await?),
    };
    let local = SledMetaStore::open(cache_dir).map_err(io::Error::other)?;
    Ok((blobs, Arc::new(S3MetaStore::new(bucket, local)), gate))
}
