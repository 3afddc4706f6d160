//! The detached task that downloads one cold blob: the upstream's blob
//! stream (which resumes itself) → the `Verifier` (hashed on the blocking
//! pool, last byte held back) → the store's upload, committed with the
//! verifier's proof. Progress and the outcome go to every joined request
//! through the fetch's watch channel.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;

use super::error::CacheError;
use super::evict::Evictor;
use super::inflight::{Fetch, FetchState, Inflight};
use super::verify::Verifier;
use crate::reference::{Digest, Hasher, RepoName, Verified};
use crate::store::{BlobUpload, MetaStore};
use crate::upstream::Upstream;

/// Network chunks verified and written in one trip to the blocking pool, at most.
const BATCH_CHUNKS: usize = 64;

pub struct BlobFetch {
    pub fetch: Arc<Fetch>,
    pub upstream: Arc<Upstream>,
    pub repo: RepoName,
    pub digest: Digest,
    pub evictor: Arc<Evictor>,
    pub inflight: Arc<Inflight>,
    /// Keep downloading when every client has gone away.
    pub finish_abandoned: bool,
    /// The most bytes accepted for a blob whose size the upstream did not announce.
    pub max_unannounced: u64,
    pub events: Arc<crate::events::Events>,
    /// With repository scoping: where to record that the fetch's repository
    /// holds the blob, once it verified.
    pub links: Option<Arc<dyn MetaStore>>,
}

/// Fails a fetch that ended abnormally (a panic inside it, or its task
/// dropped): joined readers get an error instead of waiting forever, the
/// upload goes (dropped, it removes itself), and the digest is free for the
/// next request to fetch anew.
struct EndGuard {
    fetch: Arc<Fetch>,
    inflight: Arc<Inflight>,
    evictor: Arc<Evictor>,
    digest: Digest,
    progress: Progress,
    finished: bool,
}

/// What a download holds while it runs, given back when it ends.
#[derive(Default)]
struct Progress {
    /// Whether this fetch holds one of the abandoned-fetch places.
    abandoned: bool,
    /// Bytes in its upload, counted against cache.max_size.
    temp: u64,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.evictor.temp_gone(self.progress.temp);
        if self.progress.abandoned {
            self.inflight.abandoned_ended();
        }
        if self.finished {
            return;
        }
        let why = if std::thread::panicking() {
            "it panicked"
        } else {
            "its task was dropped"
        };
        tracing::error!(digest = %self.digest, "blob download ended abnormally ({why}); its readers fail and the next request starts anew");
        self.fetch.publish(FetchState::Failed(CacheError::Crashed(why.into())));
        self.inflight.finish(&self.digest);
    }
}

impl BlobFetch {
    /// Download into `upload`, then commit it or throw it away.
    pub async fn run(self, mut upload: Box<dyn BlobUpload>) {
        // Under way, the blob is content being read: eviction keeps it, and
        // the image whose manifest references it (already stored, and just
        // served), until the fetch is over.
        let _pin = self.evictor.pin(&self.digest);
        let mut guard = EndGuard {
            fetch: self.fetch.clone(),
            inflight: self.inflight.clone(),
            evictor: self.evictor.clone(),
            digest: self.digest.clone(),
            progress: Progress::default(),
            finished: false,
        };
        let state = match self.download(upload.as_mut(), &mut guard.progress).await {
            Ok((size, proof)) => {
                // Linked before any reader finishes, so a request right after
                // it under the same name finds the link. The upstream served
                // the verified bytes under that name whether or not the
                // commit succeeds.
                self.link().await;
                // The clients may finish now; the commit is for the cache's sake.
                self.fetch.publish(FetchState::Verified { size });
                match upload.commit(proof).await {
                    Ok(()) => {
                        tracing::info!(upstream = %self.upstream.name, repo = %self.repo, digest = %self.digest, size, "blob cached");
                        // The upload's bytes are content now: counted once, not twice.
                        self.evictor.temp_gone(std::mem::take(&mut guard.progress.temp));
                        self.evictor.committed(&self.digest, size).await;
                        FetchState::Done { size }
                    }
                    Err(e) => self.failed(CacheError::from(e)),
                }
            }
            Err(e) => {
                upload.abort().await;
                self.failed(e)
            }
        };
        self.fetch.publish(state);
        self.inflight.finish(&self.digest);
        guard.finished = true;
    }

    async fn link(&self) {
        let Some(meta) = &self.links else {
            return;
        };
        if let Err(e) = meta.put_link(&self.upstream.name, &self.repo, &self.digest).await {
            CacheError::from(e).log_degraded(
                &self.events,
                &self.upstream.name,
                self.repo.as_str(),
                &self.digest.to_string(),
            );
        }
    }

    fn failed(&self, e: CacheError) -> FetchState {
        if e.is_storage() {
            // Readers stream on from the upstream; the pull goes on.
            e.log_degraded(
                &self.events,
                &self.upstream.name,
                self.repo.as_str(),
                &self.digest.to_string(),
            );
        }
        FetchState::Failed(e)
    }

    /// Whether to go on with nobody reading: only when finish_abandoned is on
    /// and fewer than the bound of abandoned downloads are being finished.
    fn may_continue(&self, abandoned: &mut bool) -> Result<(), CacheError> {
        let alone = self.fetch.waiters() == 0;
        match (alone, *abandoned) {
            (true, false) => {
                if !self.finish_abandoned {
                    return Err(CacheError::Abandoned);
                }
                self.inflight
                    .abandoned_started()
                    .map_err(CacheError::TooManyAbandoned)?;
                *abandoned = true;
            }
            (false, true) => {
                // A client joined again: no longer abandoned.
                self.inflight.abandoned_ended();
                *abandoned = false;
            }
            _ => {}
        }
        Ok(())
    }

    /// Write released bytes to the upload and tell the readers.
    async fn wrote(
        &self,
        upload: &mut dyn BlobUpload,
        pieces: Vec<Bytes>,
        written: &mut u64,
        progress: &mut Progress,
    ) -> Result<(), CacheError> {
        let n: u64 = pieces.iter().map(|c| c.len() as u64).sum();
        if n == 0 {
            return Ok(());
        }
        upload.write(pieces).await?;
        *written += n;
        progress.temp = *written;
        self.evictor.temp_grew(n);
        Ok(())
    }

    async fn download(
        &self,
        upload: &mut dyn BlobUpload,
        progress: &mut Progress,
    ) -> Result<(u64, Verified), CacheError> {
        let name = self.upstream.name.clone();
        let mut stream = self
            .upstream
            .blob(&self.repo, &self.digest, 0)
            .await
            .map_err(|e| CacheError::upstream(&name, e))?;
        let total = stream.total();
        self.fetch.publish(FetchState::Running { received: 0, total });
        let mut verifier = Verifier::new(&name, &self.digest, total, 0, Hasher::new(self.digest.algorithm()));
        let mut written = 0u64;
        // Bytes from the upstream, hashed or not: the readers send them
        // (all but the last) while the batch is hashed and written.
        let mut received = 0u64;
        let mut batches = stream.by_ref().ready_chunks(BATCH_CHUNKS);
        while let Some(batch) = batches.next().await {
            let mut pieces = Vec::with_capacity(batch.len());
            let mut failed = None;
            for item in batch {
                match item {
                    Ok(piece) => pieces.push(piece),
                    Err(e) => {
                        failed = Some(CacheError::upstream(&name, e));
                        break;
                    }
                }
            }
            if !pieces.is_empty() {
                let n: u64 = pieces.iter().map(|c| c.len() as u64).sum();
                self.fetch.received().append(&pieces);
                received = received.saturating_add(n);
                self.fetch.publish(FetchState::Running {
                    received: received.saturating_sub(1),
                    total,
                });
                // Hashing stays off the async workers: one hop per batch.
                let (v, released) = tokio::task::spawn_blocking(move || {
                    let mut released = Vec::with_capacity(pieces.len() + 1);
                    for piece in pieces {
                        verifier.push(piece, &mut released);
                    }
                    (verifier, released)
                })
                .await
                .map_err(std::io::Error::other)?;
                verifier = v;
                self.events.metrics.upstream_bytes.inc_by(n);
                self.wrote(upload, released, &mut written, progress).await?;
                self.fetch.received().written_to(written);
                if total.is_none() && verifier.seen() > self.max_unannounced {
                    return Err(CacheError::Oversized {
                        upstream: name,
                        limit: self.max_unannounced,
                    });
                }
                self.may_continue(&mut progress.abandoned)?;
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
        let (last, proof) = verifier.finish()?;
        self.wrote(upload, last.into_iter().collect(), &mut written, progress)
            .await?;
        if let Some((resumes, e)) = stream.resumed() {
            self.events.upstream_degraded(
                e.cause(),
                &name,
                self.repo.as_str(),
                &self.digest.to_string(),
                &format!("blob transfer resumed with Range {resumes} time(s)"),
                &e.to_string(),
            );
        }
        Ok((written, proof))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::inflight::{Fallback, Slot};
    use crate::store::{BlobStore, FsBlobStore, SledMetaStore};

    #[tokio::test]
    async fn a_fetch_that_panics_fails_its_readers_and_frees_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn BlobStore> = Arc::new(FsBlobStore::open(dir.path()).unwrap());
        let meta = Arc::new(SledMetaStore::open(dir.path()).unwrap());
        let evictor = Arc::new(Evictor::new(
            1 << 30,
            std::time::Duration::ZERO,
            0,
            store.clone(),
            meta,
            Arc::new(crate::cache::memo::ManifestMemo::new(1 << 20)),
            Arc::default(),
        ));
        let inflight = Arc::new(Inflight::default());
        let digest = Digest::sha256_of(b"never arrives");
        let text = format!(
            "cache_dir = \"{}\"\n[[upstream]]\nname = \"x\"\nendpoints = [\"http://127.0.0.1:9\"]\ndefault = true\n",
            dir.path().display()
        );
        let config = crate::config::Config::from_toml(&text, "test", Default::default()).unwrap();
        let events = Arc::new(crate::events::Events::default());
        let fallback = || Fallback {
            upstream: crate::testing::route(&config, &events, "library/x").upstream,
            repo: RepoName::parse("library/x").unwrap(),
            digest: digest.clone(),
        };
        let Ok(Slot::Leader(fetch, upload, mut joined)) = inflight.join_or_lead(fallback(), store.begin(&digest)).await
        else {
            panic!("the first request leads");
        };
        let guard = EndGuard {
            fetch,
            inflight: inflight.clone(),
            evictor: evictor.clone(),
            digest: digest.clone(),
            progress: Progress {
                abandoned: false,
                temp: 10,
            },
            finished: false,
        };
        evictor.temp_grew(10);
        let task = tokio::spawn(async move {
            let (_guard, _upload) = (guard, upload);
            panic!("injected panic inside a blob fetch");
        });
        assert!(task.await.is_err(), "the task panicked");
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), joined.started()).await;
        assert!(
            matches!(outcome, Ok(Err(CacheError::Crashed(_)))),
            "a reader of a crashed fetch gets an error, not a wait"
        );
        let temps = std::fs::read_dir(dir.path().join("tmp")).unwrap().count();
        assert_eq!(temps, 0, "the upload's temp file is removed");
        assert!(
            matches!(
                inflight.join_or_lead(fallback(), store.begin(&digest)).await,
                Ok(Slot::Leader(..))
            ),
            "the next request starts anew"
        );
    }
}
