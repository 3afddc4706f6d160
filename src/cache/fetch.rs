//! The detached task that downloads one cold blob: upstream body → temp file,
//! hashed on the way, fsynced, verified, renamed into the store. Progress and
//! the outcome go to every joined request through the fetch's watch channel.

use std::io::Write;
use std::sync::Arc;

use futures_util::StreamExt;

use super::blobs::BlobStore;
use super::error::CacheError;
use super::inflight::{Fetch, FetchState, Inflight};
use crate::reference::{Digest, Hasher, RepoName};
use crate::upstream::{Upstream, UpstreamError, is_retryable};

/// Resumes of one broken blob transfer before giving up.
pub(super) const MAX_RESUMES: u32 = 5;
/// Network chunks written to the temp file in one blocking call, at most.
const BATCH_CHUNKS: usize = 64;
/// Pause before a resume, times the number of resumes so far.
pub(super) const RESUME_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

pub struct BlobFetch {
    pub fetch: Arc<Fetch>,
    pub writer: std::fs::File,
    pub upstream: Arc<Upstream>,
    pub repo: RepoName,
    pub digest: Digest,
    pub store: Arc<BlobStore>,
    pub evictor: Arc<super::evict::Evictor>,
    pub inflight: Arc<Inflight>,
    /// Keep downloading when every client has gone away.
    pub finish_abandoned: bool,
    /// The most bytes accepted for a blob whose size the upstream did not announce.
    pub max_unannounced: u64,
    pub events: Arc<crate::events::Events>,
}

/// Fails a fetch that ended abnormally (a panic inside it, or its task
/// dropped): joined readers get an error instead of waiting forever, the temp
/// file goes, and the digest is free for the next request to fetch anew.
struct EndGuard {
    fetch: Arc<Fetch>,
    inflight: Arc<Inflight>,
    evictor: Arc<super::evict::Evictor>,
    digest: Digest,
    progress: Progress,
    finished: bool,
}

/// What a download holds while it runs, given back when it ends.
#[derive(Default)]
struct Progress {
    /// Whether this fetch holds one of the abandoned-fetch places.
    abandoned: bool,
    /// Bytes in its temp file, counted against cache.max_size.
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
        let _ = std::fs::remove_file(self.fetch.temp_path());
        self.fetch.publish(FetchState::Failed(CacheError::Crashed(why.into())));
        self.inflight.finish(&self.digest);
    }
}

impl BlobFetch {
    pub async fn run(self) {
        let mut guard = EndGuard {
            fetch: self.fetch.clone(),
            inflight: self.inflight.clone(),
            evictor: self.evictor.clone(),
            digest: self.digest.clone(),
            progress: Progress::default(),
            finished: false,
        };
        let downloaded = self.download(&mut guard.progress).await;
        let committed = match downloaded {
            Ok(size) => {
                let (store, temp, digest) = (
                    self.store.clone(),
                    self.fetch.temp_path().to_path_buf(),
                    self.digest.clone(),
                );
                tokio::task::spawn_blocking(move || store.commit(&temp, &digest))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r)
                    .map(|path| (size, path))
                    .map_err(CacheError::from)
            }
            Err(e) => Err(e),
        };
        let state = match committed {
            Ok((size, path)) => {
                tracing::info!(upstream = %self.upstream.name, repo = %self.repo, digest = %self.digest, size, "blob cached");
                // The temp bytes are content now: counted once, not twice.
                self.evictor.temp_gone(std::mem::take(&mut guard.progress.temp));
                self.evictor.committed(&self.digest, size);
                FetchState::Done { size, path }
            }
            Err(e) => {
                let _ = std::fs::remove_file(self.fetch.temp_path());
                if e.is_storage() {
                    // Readers stream on from the upstream; the pull goes on.
                    self.events.storage_degraded(
                        e.cause(),
                        &self.upstream.name,
                        self.repo.as_str(),
                        &self.digest.to_string(),
                        &e.to_string(),
                    );
                }
                FetchState::Failed(e)
            }
        };
        self.fetch.publish(state);
        self.inflight.finish(&self.digest);
        guard.finished = true;
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

    async fn download(&self, progress: &mut Progress) -> Result<u64, CacheError> {
        let name = &self.upstream.name;
        let mut writer = self.writer.try_clone()?;
        let mut hasher = Hasher::new(self.digest.algorithm());
        let mut written = 0u64;
        let mut total = None;
        let mut resumes = 0u32;
        let mut first_break: Option<CacheError> = None;
        loop {
            let resp = self
                .upstream
                .blob(&self.repo, &self.digest, written)
                .await
                .map_err(|e| CacheError::upstream(name, e))?;
            // Bytes at the start of this body that were already written.
            let mut skip = if written == 0 {
                total = resp.content_length();
                self.fetch.publish(FetchState::Running { written: 0, total });
                0
            } else {
                match resume_skip(&resp, written) {
                    Some(skip) => skip,
                    None => {
                        return Err(first_break.unwrap_or(CacheError::Truncated {
                            upstream: name.clone(),
                            expected: total.unwrap_or_default(),
                            got: written,
                        }));
                    }
                }
            };
            // Whatever chunks have already arrived are written and hashed in
            // one trip to the blocking pool: one hop per batch rather than per
            // network read, and the hashing stays off the async workers.
            let mut body = resp.bytes_stream().ready_chunks(BATCH_CHUNKS);
            let broke = loop {
                let Some(batch) = body.next().await else {
                    break None;
                };
                let mut chunks = Vec::with_capacity(batch.len());
                let mut failed = None;
                for item in batch {
                    match item {
                        Ok(mut chunk) => {
                            if skip > 0 {
                                let n = skip.min(chunk.len() as u64);
                                chunk = chunk.slice(n as usize..);
                                skip -= n;
                            }
                            if !chunk.is_empty() {
                                chunks.push(chunk);
                            }
                        }
                        Err(e) => {
                            failed = Some(CacheError::upstream(name, UpstreamError::Http(e)));
                            break;
                        }
                    }
                }
                if !chunks.is_empty() {
                    let n: u64 = chunks.iter().map(|c| c.len() as u64).sum();
                    let (w, h, result) = tokio::task::spawn_blocking(move || {
                        let result = chunks.iter().try_for_each(|c| {
                            hasher.update(c);
                            writer.write_all(c)
                        });
                        (writer, hasher, result)
                    })
                    .await
                    .map_err(std::io::Error::other)?;
                    (writer, hasher) = (w, h);
                    // Readers follow `written`; the bytes are in the file now.
                    result?;
                    written += n;
                    progress.temp = written;
                    self.evictor.temp_grew(n);
                    self.events.metrics.upstream_bytes.inc_by(n);
                    if total.is_some_and(|t| written > t) {
                        break None;
                    }
                    if total.is_none() && written > self.max_unannounced {
                        return Err(CacheError::Oversized {
                            upstream: name.clone(),
                            limit: self.max_unannounced,
                        });
                    }
                    self.fetch.publish(FetchState::Running { written, total });
                    self.may_continue(&mut progress.abandoned)?;
                }
                if failed.is_some() {
                    break failed;
                }
            };
            let error = match broke {
                None if total.is_none_or(|t| written >= t) => break,
                None => CacheError::Truncated {
                    upstream: name.clone(),
                    expected: total.unwrap_or_default(),
                    got: written,
                },
                Some(e) => e,
            };
            if !resumable(&error) || resumes >= MAX_RESUMES {
                return Err(error);
            }
            resumes += 1;
            tracing::info!(upstream = %name, repo = %self.repo, digest = %self.digest, written, error = %error, "blob transfer broke; resuming with Range");
            first_break.get_or_insert(error);
            tokio::time::sleep(RESUME_PAUSE * resumes).await;
        }
        if let Some(total) = total.filter(|&t| t != written) {
            return Err(CacheError::Truncated {
                upstream: name.clone(),
                expected: total,
                got: written,
            });
        }
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
        if let Some(e) = first_break {
            self.events.upstream_degraded(
                e.cause(),
                name,
                self.repo.as_str(),
                &self.digest.to_string(),
                &format!("blob transfer resumed with Range {resumes} time(s)"),
                &e.to_string(),
            );
        }
        // The clients may finish now; the fsync is for the cache's sake.
        self.fetch.publish(FetchState::Verified { size: written });
        tokio::task::spawn_blocking(move || writer.sync_all())
            .await
            .map_err(std::io::Error::other)??;
        Ok(written)
    }
}

/// Whether a transfer that broke this way may continue with a Range request.
pub(super) fn resumable(error: &CacheError) -> bool {
    match error {
        CacheError::Truncated { .. } => true,
        CacheError::Upstream { source, .. } => is_retryable(source),
        _ => false,
    }
}

/// Bytes at the start of the answer to `Range: bytes=<from>-` that were
/// already received: those before `from` when the upstream honoured the
/// Range, all `from` when it ignored it and sent the whole blob again. None
/// when its `Content-Range` starts past `from` (a gap nothing can fill).
pub(super) fn resume_skip(resp: &reqwest::Response, from: u64) -> Option<u64> {
    if resp.status() != reqwest::StatusCode::PARTIAL_CONTENT {
        return Some(from);
    }
    content_range_start(resp.headers())
        .filter(|&start| start <= from)
        .map(|start| from - start)
}

/// The first byte position of a `Content-Range: bytes <start>-<end>/<size>`.
fn content_range_start(h: &reqwest::header::HeaderMap) -> Option<u64> {
    let v = h.get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    v.strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::inflight::Slot;

    #[tokio::test]
    async fn a_fetch_that_panics_fails_its_readers_and_frees_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlobStore::open(dir.path()).unwrap());
        let meta = Arc::new(super::super::meta::Meta::open(dir.path()).unwrap());
        let evictor = Arc::new(super::super::evict::Evictor::open(1 << 30, store.clone(), meta).unwrap());
        let inflight = Arc::new(Inflight::default());
        let digest = Digest::sha256_of(b"never arrives");
        let Ok(Slot::Leader(fetch, _writer, mut joined)) = inflight.join_or_lead(&digest, || store.temp_file()) else {
            panic!("the first request leads");
        };
        let temp = fetch.temp_path().to_path_buf();
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
            let _guard = guard;
            panic!("injected panic inside a blob fetch");
        });
        assert!(task.await.is_err(), "the task panicked");
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), joined.started()).await;
        assert!(
            matches!(outcome, Ok(Err(CacheError::Crashed(_)))),
            "a reader of a crashed fetch gets an error, not a wait"
        );
        assert!(!temp.exists(), "the temp file is removed");
        assert!(
            matches!(
                inflight.join_or_lead(&digest, || store.temp_file()),
                Ok(Slot::Leader(..))
            ),
            "the next request starts anew"
        );
    }
}
