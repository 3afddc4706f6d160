//! `BlobStore` on an S3-compatible bucket (`[storage] kind = "s3"`), through
//! the `object_store` crate: the only file that imports it. Content lives
//! under `blobs/<algorithm>/<hex>`. A blob arriving in pieces goes up as a
//! multipart upload while it is also spooled to a local temp file (joined
//! readers read the spool, not the bucket); the upload is completed only on
//! a commit carrying the proof that the bytes hashed to the digest, and
//! aborted otherwise, so nothing unverified is ever visible under a digest.
//! Ranges are ranged GETs, one window at a time (see `READ_WINDOW`).

use std::io;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{MultipartUpload, ObjectStore, PutPayload};

use super::{BlobStore, BlobUpload, ByteStream, FsBlobStore, OnDamaged, PartialRead, ReadMode, StoredItem};
use crate::reference::{Digest, Verified};

/// S3 parts are at least 5 MiB but the last; pieces are gathered to this.
const PART_BYTES: usize = 8 << 20;

/// A read is a sequence of ranged GETs of this much, each read whole, two
/// in flight. One GET for a whole 2 GiB layer would last as long as its
/// slowest client takes to read it, and the S3 client bounds a request
/// (body included) to 30 s, retried for at most `RETRY_FOR`: a slow client
/// would see its layer fail part-way. A window is done in milliseconds
/// whatever the client does; per stream at most two windows (16 MiB) are
/// held. 8 MiB costs 4 % of a single GET's warm throughput on Garage
/// (benches/fleet.rs: 366 against 383 MB/s); 4 MiB cost 22 %.
const READ_WINDOW: u64 = 8 << 20;

/// How long one S3 request is retried before its error is the answer: a
/// bucket that cannot be reached must not hold a pull for minutes (the
/// client's default is 3 minutes), since the cache then passes the blob
/// through from the upstream instead.
const RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(15);

/// Where and as whom: from `[storage]`.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

pub struct S3BlobStore {
    bucket: Arc<AmazonS3>,
    /// Temp files of uploads under way (what joined readers read).
    spool: FsBlobStore,
}

pub(super) fn to_io(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e.to_string()),
        // A 401 or 403: the credentials (or the bucket's policy), not the network.
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
            io::Error::new(io::ErrorKind::PermissionDenied, e.to_string())
        }
        other => io::Error::other(other.to_string()),
    }
}

/// `[start, end)` cut into `READ_WINDOW`s, in order.
fn windows(start: u64, end: u64) -> impl Iterator<Item = std::ops::Range<u64>> + Send + 'static {
    let mut at = start;
    std::iter::from_fn(move || {
        (at < end).then(|| {
            let next = end.min(at.saturating_add(READ_WINDOW));
            let range = at..next;
            at = next;
            range
        })
    })
}

fn key(digest: &Digest) -> Key {
    Key::from(format!("blobs/{}/{}", digest.algorithm().as_str(), digest.hex()))
}

/// The bucket client, shared by the blob store and the shared metadata.
pub(super) fn bucket(config: &S3Config) -> io::Result<Arc<AmazonS3>> {
    AmazonS3Builder::new()
        // First: these options replace the whole set, `allow_http` included.
        .with_client_options(object_store::ClientOptions::new().with_connect_timeout(std::time::Duration::from_secs(5)))
        .with_endpoint(&config.endpoint)
        .with_bucket_name(&config.bucket)
        .with_region(&config.region)
        .with_access_key_id(&config.access_key_id)
        .with_secret_access_key(&config.secret_access_key)
        .with_allow_http(config.endpoint.starts_with("http://"))
        .with_virtual_hosted_style_request(false)
        .with_retry(object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: RETRY_FOR,
            ..object_store::RetryConfig::default()
        })
        .build()
        .map(Arc::new)
        .map_err(to_io)
}

impl S3BlobStore {
    /// `spool_dir`: a local directory for uploads under way (emptied here).
    pub fn open(config: &S3Config, spool_dir: &Path) -> io::Result<Self> {
        Self::with_bucket(bucket(config)?, spool_dir)
    }

    pub(super) fn with_bucket(bucket: Arc<AmazonS3>, spool_dir: &Path) -> io::Result<Self> {
        Ok(Self {
            bucket,
            spool: FsBlobStore::open(spool_dir)?,
        })
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn stat(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match self.bucket.head(&key(digest)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(to_io(e)),
        }
    }

    async fn read(&self, digest: &Digest, limit: u64) -> io::Result<Option<Bytes>> {
        match self.stat(digest).await? {
            Some(size) if size <= limit => {}
            _ => return Ok(None),
        }
        match self.bucket.get(&key(digest)).await {
            Ok(got) => Ok(Some(got.bytes().await.map_err(to_io)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(to_io(e)),
        }
    }

    async fn read_range(
        &self,
        digest: &Digest,
        start: u64,
        end: u64,
        _mode: ReadMode,
        // A failed GET says nothing of the object: it is never removed here.
        _damaged: OnDamaged,
    ) -> io::Result<ByteStream> {
        if start >= end {
            return Ok(futures_util::stream::empty().boxed());
        }
        // The first window is asked here, so a missing object or an
        // unreachable bucket is this call's error, not the stream's.
        let first_end = end.min(start.saturating_add(READ_WINDOW));
        let path = key(digest);
        let first = self.bucket.get_range(&path, start..first_end).await.map_err(to_io)?;
        let bucket = self.bucket.clone();
        let rest = futures_util::stream::iter(windows(first_end, end))
            .map(move |range| {
                let (bucket, path) = (bucket.clone(), path.clone());
                async move { bucket.get_range(&path, range).await.map_err(to_io) }
            })
            .buffered(2);
        Ok(futures_util::stream::once(async move { Ok(first) }).chain(rest).boxed())
    }

    async fn put(&self, digest: &Digest, bytes: Bytes) -> io::Result<bool> {
        let mut hasher = crate::reference::Hasher::new(digest.algorithm());
        hasher.update(&bytes);
        if hasher.verify(digest).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("content does not hash to {digest}; not stored"),
            ));
        }
        if self.stat(digest).await? == Some(bytes.len() as u64) {
            return Ok(false);
        }
        self.bucket
            .put(&key(digest), PutPayload::from(bytes))
            .await
            .map_err(to_io)?;
        Ok(true)
    }

    async fn begin(&self, digest: &Digest) -> io::Result<Box<dyn BlobUpload>> {
        let spool = self.spool.begin(digest).await?;
        let multipart = self.bucket.put_multipart(&key(digest)).await.map_err(to_io)?;
        Ok(Box::new(S3Upload {
            digest: digest.clone(),
            spool: Some(spool),
            multipart: Some(multipart),
            pending: Vec::new(),
            pending_bytes: 0,
        }))
    }

    async fn delete(&self, digest: &Digest) -> io::Result<()> {
        self.bucket.delete(&key(digest)).await.map_err(to_io)
    }

    async fn list(&self) -> io::Result<Vec<StoredItem>> {
        let prefix = Key::from("blobs");
        let mut listed = self.bucket.list(Some(&prefix));
        let mut out = Vec::new();
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(to_io)?;
            let text = meta.location.to_string();
            let mut it = text.split('/').skip(1);
            let (Some(algorithm), Some(hex)) = (it.next(), it.next()) else {
                continue;
            };
            let Ok(digest) = Digest::parse(&format!("{algorithm}:{hex}")) else {
                continue;
            };
            let stored_ms = u64::try_from(meta.last_modified.timestamp_millis()).unwrap_or_default();
            out.push(StoredItem {
                digest,
                size: meta.size,
                stored_ms,
            });
        }
        Ok(out)
    }

    async fn writable(&self) -> io::Result<()> {
        let probe = Key::from(format!("tmp/writable-{:016x}", rand::random::<u64>()));
        self.bucket
            .put(&probe, PutPayload::from_static(b"berth"))
            .await
            .map_err(to_io)?;
        self.bucket.delete(&probe).await.map_err(to_io)
    }
}

struct S3Upload {
    digest: Digest,
    spool: Option<Box<dyn BlobUpload>>,
    multipart: Option<Box<dyn MultipartUpload>>,
    /// Pieces not sent yet: a part goes once they reach PART_BYTES.
    pending: Vec<Bytes>,
    pending_bytes: usize,
}

impl S3Upload {
    async fn send_part(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let multipart = self
            .multipart
            .as_mut()
            .ok_or_else(|| io::Error::other("upload already ended"))?;
        let payload: PutPayload = std::mem::take(&mut self.pending).into_iter().collect();
        self.pending_bytes = 0;
        multipart.put_part(payload).await.map_err(to_io)
    }
}

#[async_trait]
impl BlobUpload for S3Upload {
    async fn write(&mut self, pieces: Vec<Bytes>) -> io::Result<()> {
        let spool = self
            .spool
            .as_mut()
            .ok_or_else(|| io::Error::other("upload already ended"))?;
        spool.write(pieces.clone()).await?;
        for piece in pieces {
            self.pending_bytes = self.pending_bytes.saturating_add(piece.len());
            self.pending.push(piece);
        }
        if self.pending_bytes >= PART_BYTES {
            self.send_part().await?;
        }
        Ok(())
    }

    fn partial(&self) -> Arc<dyn PartialRead> {
        match &self.spool {
            Some(spool) => spool.partial(),
            None => Arc::new(Ended),
        }
    }

    async fn commit(mut self: Box<Self>, proof: Verified) -> io::Result<()> {
        if proof.digest() != &self.digest {
            return Err(io::Error::other(format!(
                "commit of {} with the proof of {}",
                self.digest,
                proof.digest()
            )));
        }
        self.send_part().await?;
        let mut multipart = self
            .multipart
            .take()
            .ok_or_else(|| io::Error::other("upload already ended"))?;
        // Verified: only now does the object appear under its digest.
        let completed = multipart.complete().await.map_err(to_io);
        if completed.is_err() {
            let _ = multipart.abort().await;
        }
        if let Some(spool) = self.spool.take() {
            spool.abort().await;
        }
        completed.map(drop)
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(mut multipart) = self.multipart.take() {
            let _ = multipart.abort().await;
        }
        if let Some(spool) = self.spool.take() {
            spool.abort().await;
        }
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        // Dropped without commit or abort: the parts must not linger.
        if let Some(mut multipart) = self.multipart.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = multipart.abort().await;
            });
        }
    }
}

/// Reads of an upload that has ended (its spool is gone).
struct Ended;

#[async_trait]
impl PartialRead for Ended {
    async fn read_at(&self, _pos: u64, _len: usize) -> io::Result<Bytes> {
        Err(io::Error::other("the upload has ended; read the stored blob"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_read_in_windows_that_cover_it_exactly() {
        let w = READ_WINDOW;
        let cut: Vec<_> = windows(10, 10 + 2 * w + 5).collect();
        assert_eq!(cut, vec![10..10 + w, 10 + w..10 + 2 * w, 10 + 2 * w..10 + 2 * w + 5]);
        assert_eq!(windows(0, w).collect::<Vec<_>>(), vec![0..w]);
        assert_eq!(windows(7, 7).count(), 0);
        assert_eq!(
            windows(u64::MAX - 1, u64::MAX).collect::<Vec<_>>(),
            vec![u64::MAX - 1..u64::MAX]
        );
    }
}
