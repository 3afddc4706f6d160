//! Streaming a blob from the upstream to one client without storing it: the
//! fallback when the cache cannot be written (disk full, I/O errors), so the
//! pull still succeeds. The bytes are hashed on the way as always, and the
//! response's last byte is held back until the digest is verified, so a
//! corrupt transfer still never completes normally. A body that breaks
//! mid-transfer continues with a Range request, as a cached fetch does.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};

use super::error::CacheError;
use super::fetch::{MAX_RESUMES, RESUME_PAUSE, resumable, resume_skip};
use crate::reference::{Digest, Hasher, RepoName};
use crate::upstream::{Upstream, UpstreamError};

pub struct PassThrough {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    source: Arc<Upstream>,
    repo: RepoName,
    resumes: u32,
    upstream: String,
    digest: Digest,
    hasher: Option<Hasher>,
    /// Blob bytes hashed so far.
    pos: u64,
    /// Bytes at the start of the body already hashed (an upstream that
    /// ignored the Range).
    skip: u64,
    total: Option<u64>,
    /// The client's window `[start, end)` of the blob.
    start: u64,
    end: Option<u64>,
    pending: VecDeque<Bytes>,
    held: Option<Bytes>,
    finished: bool,
}

impl PassThrough {
    /// Ask the upstream for the blob from byte `from`; `hasher` has already
    /// seen bytes `[0, from)` (read back from a partial temp file).
    pub async fn open(
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        from: u64,
        hasher: Hasher,
    ) -> Result<Self, CacheError> {
        let resp = upstream
            .blob(repo, digest, from)
            .await
            .map_err(|e| CacheError::upstream(&upstream.name, e))?;
        let partial = resp.status() == reqwest::StatusCode::PARTIAL_CONTENT;
        let total = match resp.content_length() {
            Some(len) if partial => from.checked_add(len),
            other if from == 0 => other,
            _ => None,
        };
        Ok(Self {
            body: resp.bytes_stream().boxed(),
            source: upstream.clone(),
            repo: repo.clone(),
            resumes: 0,
            upstream: upstream.name.clone(),
            digest: digest.clone(),
            hasher: Some(hasher),
            pos: from,
            skip: if partial { 0 } else { from },
            total,
            start: 0,
            end: None,
            pending: VecDeque::new(),
            held: None,
            finished: false,
        })
    }

    /// The blob's size, when the upstream announced it.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// Send the client only `[start, end)` of the blob.
    pub fn window(mut self, start: u64, end: Option<u64>) -> Self {
        self.start = start;
        self.end = end;
        self
    }

    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, CacheError> {
        loop {
            if let Some(b) = self.pending.pop_front() {
                return Ok(Some(b));
            }
            if self.finished {
                return Ok(self.held.take());
            }
            let mut chunk = match self.body.next().await {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    self.resume(CacheError::upstream(&self.upstream, UpstreamError::Http(e)))
                        .await?;
                    continue;
                }
                None if self.total.is_some_and(|t| self.pos < t) => {
                    let cut = CacheError::Truncated {
                        upstream: self.upstream.clone(),
                        expected: self.total.unwrap_or_default(),
                        got: self.pos,
                    };
                    self.resume(cut).await?;
                    continue;
                }
                None => {
                    self.verify()?;
                    self.finished = true;
                    continue;
                }
            };
            if self.skip > 0 {
                let n = self.skip.min(chunk.len() as u64);
                chunk = chunk.slice(n as usize..);
                self.skip -= n;
            }
            let chunk_start = self.pos;
            if let Some(h) = &mut self.hasher {
                h.update(&chunk);
            }
            self.pos += chunk.len() as u64;
            let lo = chunk_start.max(self.start);
            let hi = self.pos.min(self.end.unwrap_or(u64::MAX));
            if lo >= hi {
                continue;
            }
            let out = chunk.slice((lo - chunk_start) as usize..(hi - chunk_start) as usize);
            // Hold back the last byte sent so far until the digest is checked.
            if let Some(h) = self.held.take() {
                self.pending.push_back(h);
            }
            let n = out.len();
            if n > 1 {
                self.pending.push_back(out.slice(..n - 1));
            }
            self.held = Some(out.slice(n - 1..));
        }
    }

    /// Continue a broken body from the byte reached, or give up with `error`.
    async fn resume(&mut self, error: CacheError) -> Result<(), CacheError> {
        if !resumable(&error) || self.resumes >= MAX_RESUMES {
            return Err(error);
        }
        self.resumes += 1;
        tracing::info!(upstream = %self.upstream, repo = %self.repo, digest = %self.digest, at = self.pos, error = %error, "unstored blob transfer broke; resuming with Range");
        tokio::time::sleep(RESUME_PAUSE * self.resumes).await;
        let resp = self
            .source
            .blob(&self.repo, &self.digest, self.pos)
            .await
            .map_err(|e| CacheError::upstream(&self.upstream, e))?;
        let Some(skip) = resume_skip(&resp, self.pos) else {
            return Err(error);
        };
        self.skip = skip;
        self.body = resp.bytes_stream().boxed();
        Ok(())
    }

    fn verify(&mut self) -> Result<(), CacheError> {
        if let Some(expected) = self.total.filter(|&t| t != self.pos) {
            return Err(CacheError::Truncated {
                upstream: self.upstream.clone(),
                expected,
                got: self.pos,
            });
        }
        let actual = self.hasher.take().map(Hasher::finish);
        if actual.as_ref() != Some(&self.digest) {
            return Err(CacheError::upstream(
                &self.upstream,
                UpstreamError::DigestMismatch {
                    expected: self.digest.to_string(),
                    actual: actual.map(|d| d.to_string()).unwrap_or_default(),
                },
            ));
        }
        Ok(())
    }

    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, CacheError>> + Send + 'static {
        futures_util::stream::unfold(Some(self), |pass| async move {
            let mut pass = pass?;
            match pass.next_chunk().await {
                Ok(Some(bytes)) => Some((Ok(bytes), Some(pass))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
    }
}
