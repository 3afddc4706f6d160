//! A shared bucket held shut until the cache has made its index match it.
//!
//! A replica whose bucket does not answer when it starts still serves: every
//! call through the gate fails as the bucket would, so each pull passes
//! through from the upstream, verified, logged as `storage_degraded` (a
//! fleet whose bucket is down would otherwise be a fleet that cannot start).
//! The cache lists the bucket through `inner` until it answers, makes its
//! index match the listing, and only then opens the gate: nothing is stored
//! while the listing runs, so the index cannot lose content committed
//! meanwhile. Open, the gate costs one atomic load per call.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::{BlobStore, BlobUpload, ByteStream, OnDamaged, ReadMode, StoredItem};
use crate::reference::Digest;

pub struct Gate {
    inner: Arc<dyn BlobStore>,
    open: AtomicBool,
}

impl Gate {
    /// Shut over `inner`.
    pub fn shut(inner: Arc<dyn BlobStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            open: AtomicBool::new(false),
        })
    }

    /// The bucket itself, for the listing that opens the gate.
    pub fn inner(&self) -> &Arc<dyn BlobStore> {
        &self.inner
    }

    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    fn check(&self) -> io::Result<()> {
        match self.is_open() {
            true => Ok(()),
            false => Err(io::Error::other(
                "the bucket has not answered since berth started: pulls pass through from the upstream until it does",
            )),
        }
    }
}

#[async_trait]
impl BlobStore for Gate {
    async fn stat(&self, digest: &Digest) -> io::Result<Option<u64>> {
        self.check()?;
        self.inner.stat(digest).await
    }

    async fn read(&self, digest: &Digest, limit: u64) -> io::Result<Option<Bytes>> {
        self.check()?;
        self.inner.read(digest, limit).await
    }

    async fn read_range(
        &self,
        digest: &Digest,
        start: u64,
        end: u64,
        mode: ReadMode,
        damaged: OnDamaged,
    ) -> io::Result<ByteStream> {
        self.check()?;
        self.inner.read_range(digest, start, end, mode, damaged).await
    }

    async fn put(&self, digest: &Digest, bytes: Bytes) -> io::Result<bool> {
        self.check()?;
        self.inner.put(digest, bytes).await
    }

    async fn begin(&self, digest: &Digest) -> io::Result<Box<dyn BlobUpload>> {
        self.check()?;
        self.inner.begin(digest).await
    }

    async fn delete(&self, digest: &Digest) -> io::Result<()> {
        self.check()?;
        self.inner.delete(digest).await
    }

    async fn list(&self) -> io::Result<Vec<StoredItem>> {
        self.check()?;
        self.inner.list().await
    }

    async fn writable(&self) -> io::Result<()> {
        self.check()?;
        self.inner.writable().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FsBlobStore;

    #[tokio::test]
    async fn shut_it_answers_nothing_and_stores_nothing_open_it_passes_every_call_on() {
        let dir = tempfile::tempdir().unwrap();
        let fs: Arc<dyn BlobStore> = Arc::new(FsBlobStore::open(dir.path()).unwrap());
        let gate = Gate::shut(fs.clone());
        let bytes = Bytes::from_static(b"content");
        let digest = Digest::sha256_of(&bytes);
        assert!(gate.put(&digest, bytes.clone()).await.is_err());
        assert!(gate.begin(&digest).await.is_err());
        assert!(gate.writable().await.is_err());
        assert_eq!(fs.stat(&digest).await.unwrap(), None, "nothing reached the store");
        fs.put(&digest, bytes.clone()).await.unwrap();
        assert!(
            gate.stat(&digest).await.is_err(),
            "stored content is not read while shut"
        );
        assert!(gate.list().await.is_err());
        gate.open();
        assert_eq!(gate.stat(&digest).await.unwrap(), Some(bytes.len() as u64));
        assert_eq!(gate.read(&digest, 1 << 20).await.unwrap(), Some(bytes));
        assert_eq!(gate.list().await.unwrap().len(), 1);
        gate.writable().await.unwrap();
    }
}
