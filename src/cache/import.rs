//! Filing content that arrives from an archive instead of an upstream
//! (`berth import`): blobs are committed only with the proof that they hash
//! to their digest, exactly as a fetch commits them; manifests, links, tags
//! and referrers lists are recorded as if the upstream had served them, so
//! the cache answers for them offline. The archive layer decides what to
//! file and in which order; this only writes.

use bytes::Bytes;

use super::{Cache, CacheError};
use crate::reference::{Digest, Hasher, RepoName};

/// A blob being imported: nothing is visible under its digest until
/// `commit` has checked the bytes hash to it.
pub struct ImportUpload {
    upload: Box<dyn crate::store::BlobUpload>,
    hasher: Hasher,
    digest: Digest,
    size: u64,
}

impl ImportUpload {
    pub async fn write(&mut self, piece: Bytes) -> Result<(), CacheError> {
        self.hasher.update(&piece);
        self.size = self.size.saturating_add(piece.len() as u64);
        Ok(self.upload.write(vec![piece]).await?)
    }

    /// Verify and commit; a mismatch leaves nothing behind.
    pub async fn commit(self, cache: &Cache) -> Result<u64, CacheError> {
        let proof = match self.hasher.verify(&self.digest) {
            Ok(p) => p,
            Err(actual) => {
                self.upload.abort().await;
                return Err(CacheError::Invalid {
                    digest: self.digest.to_string(),
                    reason: format!("its bytes hash to {actual}"),
                });
            }
        };
        self.upload.commit(proof).await?;
        cache.evictor.committed(&self.digest, self.size).await;
        Ok(self.size)
    }

    pub async fn abort(self) {
        self.upload.abort().await;
    }
}

impl Cache {
    /// Whether content is stored under `digest` already.
    pub async fn has_content(&self, digest: &Digest) -> Result<bool, CacheError> {
        Ok(self.store.stat(digest).await?.is_some())
    }

    /// Start importing the blob `digest`.
    pub async fn import_blob(&self, digest: &Digest) -> Result<ImportUpload, CacheError> {
        Ok(ImportUpload {
            upload: self.store.begin(digest).await?,
            hasher: Hasher::new(digest.algorithm()),
            digest: digest.clone(),
            size: 0,
        })
    }

    /// Record a stored manifest (its bytes already committed) under
    /// `repo` on `upstream`, with what it needs to be pulled whole.
    pub async fn import_manifest(
        &self,
        upstream: &str,
        repo: &RepoName,
        digest: &Digest,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<(), CacheError> {
        let refs = crate::manifest::references(bytes);
        self.meta
            .put_manifest(digest, media_type, bytes.len() as u64, &refs)
            .await?;
        self.meta.put_link(upstream, repo, digest).await?;
        for r in &refs {
            self.meta.put_link(upstream, repo, r).await?;
        }
        Ok(())
    }

    /// Point `tag` of `repo` on `upstream` at `digest` (durable).
    pub async fn import_tag(
        &self,
        upstream: &str,
        repo: &RepoName,
        tag: &str,
        digest: &Digest,
    ) -> Result<(), CacheError> {
        self.meta.put_link(upstream, repo, digest).await?;
        Ok(self.meta.put_tag(upstream, repo, tag, digest).await?)
    }

    /// Record the referrers index of `subject` as the upstream's last answer.
    pub async fn import_referrers(
        &self,
        upstream: &str,
        repo: &RepoName,
        subject: &Digest,
        index: &str,
    ) -> Result<(), CacheError> {
        Ok(self.meta.put_referrers(upstream, repo, subject, index).await?)
    }
}
