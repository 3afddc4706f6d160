//! The detached task that downloads one cold blob: upstream body → temp file,
//! hashed on the way, fsynced, verified, renamed into the store. Progress and
//! the outcome go to every joined request through the fetch's watch channel.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::blobs::BlobStore;
use super::error::CacheError;
use super::inflight::{Fetch, FetchState, Inflight};
use crate::reference::{Digest, Hasher, RepoName};
use crate::upstream::{Upstream, UpstreamError};

pub struct BlobFetch {
    pub fetch: Arc<Fetch>,
    pub writer: std::fs::File,
    pub upstream: Arc<Upstream>,
    pub repo: RepoName,
    pub digest: Digest,
    pub store: Arc<BlobStore>,
    pub inflight: Arc<Inflight>,
    /// Keep downloading when every client has gone away.
    pub finish_abandoned: bool,
    pub events: Arc<crate::events::Events>,
}

impl BlobFetch {
    pub async fn run(self) {
        let result = self.download().await;
        let state = match result.and_then(|size| {
            let path = self.store.commit(self.fetch.temp_path(), &self.digest)?;
            Ok((size, path))
        }) {
            Ok((size, path)) => {
                tracing::info!(upstream = %self.upstream.name, repo = %self.repo, digest = %self.digest, size, "blob cached");
                FetchState::Done { size, path }
            }
            Err(e) => {
                let _ = std::fs::remove_file(self.fetch.temp_path());
                FetchState::Failed(e)
            }
        };
        self.fetch.publish(state);
        self.inflight.finish(&self.digest);
    }

    async fn download(&self) -> Result<u64, CacheError> {
        let name = &self.upstream.name;
        let resp = self
            .upstream
            .blob(&self.repo, &self.digest, 0)
            .await
            .map_err(|e| CacheError::upstream(name, e))?;
        let total = resp.content_length();
        self.fetch.publish(FetchState::Running { written: 0, total });
        let mut writer = tokio::fs::File::from_std(self.writer.try_clone()?);
        let mut hasher = Hasher::new(self.digest.algorithm());
        let mut written = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| CacheError::upstream(name, UpstreamError::Http(e)))?;
            hasher.update(&chunk);
            writer.write_all(&chunk).await?;
            // Readers follow `written`; the bytes must be in the file first.
            writer.flush().await?;
            written += chunk.len() as u64;
            self.events.metrics.upstream_bytes.inc_by(chunk.len() as u64);
            if total.is_some_and(|t| written > t) {
                break;
            }
            self.fetch.publish(FetchState::Running { written, total });
            if !self.finish_abandoned && self.fetch.waiters() == 0 {
                return Err(CacheError::Abandoned);
            }
        }
        if let Some(expected) = total.filter(|&t| t != written) {
            return Err(CacheError::Truncated {
                upstream: name.clone(),
                expected,
                got: written,
            });
        }
        writer.sync_all().await?;
        let actual = hasher.finish();
        if actual != self.digest {
            tracing::warn!(upstream = %name, repo = %self.repo, expected = %self.digest, actual = %actual, "blob digest mismatch; not stored");
            return Err(CacheError::upstream(
                name,
                UpstreamError::DigestMismatch {
                    expected: self.digest.to_string(),
                    actual: actual.to_string(),
                },
            ));
        }
        Ok(written)
    }
}
