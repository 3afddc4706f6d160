//! `BlobStore` on an S3-compatible bucket (`[storage] kind = "s3"`), through
//! the `object_store` crate: the only file that imports it. Content lives
//! under `blobs/<algorithm>/<hex>`. A blob arriving in pieces goes up as a
//! multipart upload while it is also spooled to a local temp file (joined
//! readers read the spool, not the bucket); the upload is completed only on
//! a commit carrying the proof that the bytes hashed to the digest, and
//! aborted otherwise, so nothing unverified is ever visible under a digest.
//! Ranges are ranged GETs.

use std::io;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{GetOptions, GetRange, MultipartUpload, ObjectStore, PutPayload};

use super::{BlobStore, BlobUpload, ByteStream, FsBlobStore, OnDamaged, PartialRead, ReadMode, StoredItem};
use crate::reference::{Digest, Verified};

/// S3 parts are at least 5 MiB but the last; pieces are gathered to this.
const PART_BYTES: usize = 8 << 20;

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
        other => io::Error::other(other.to_string()),
    }
}

fn key(digest: &Digest) -> Key {
    Key::from(format!("blobs/{}/{}", digest.algorithm().as_str(), digest.hex()))
}

/// The bucket client, shared by the blob store and the shared metadata.
pub(super) fn bucket(config: &S3Config) -> io::Result<Arc<AmazonS3>> {
    AmazonS3Builder::new()
        .with_endpoint(&config.endpoint)
        .with_bucket_name(&config.bucket)
        .with_region(&config.region)
        .with_access_key_id(&config.access_key_id)
        .with_secret_access_key(&config.secret_access_key)
        .with_allow_http(config.endpoint.starts_with("http://"))
        .with_virtual_hosted_style_request(false)
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
        let options = GetOptions {
            range: Some(GetRange::Bounded(start..end)),
            ..GetOptions::default()
        };
        let got = self.bucket.get_opts(&key(digest), options).await.map_err(to_io)?;
        Ok(got.into_stream().map_err(to_io).boxed())
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
