//! Streaming a blob from the upstream to one client without storing it: the
//! fallback when the cache cannot be written (disk full, I/O errors), so the
//! pull still succeeds. The upstream's stream resumes itself; the bytes go
//! through the same `Verifier` as a cached fetch, and the response's last
//! byte is held back until the digest matched, so a corrupt transfer never
//! completes normally.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::error::CacheError;
use super::inflight::Fallback;
use super::verify::Verifier;
use crate::events::Events;
use crate::reference::{Digest, Hasher, RepoName};
use crate::upstream::{BlobStream, Upstream};

/// Whether a failure of the cache is answered by streaming the blob from
/// the upstream without storing it: the one place this is decided, asked
/// when a fetch cannot start, when it fails before a reader got anything,
/// and when it fails under a reader.
pub fn falls_back(e: &CacheError) -> bool {
    e.is_storage()
}

pub struct PassThrough {
    stream: BlobStream,
    upstream: String,
    /// Where the rest comes from if this source breaks off: the upstream,
    /// when the source is the replica owning the blob.
    fallback: Option<(Fallback, Arc<Events>)>,
    /// None once the blob is verified.
    verifier: Option<Verifier>,
    /// Blob position of the next byte the verifier releases.
    pos: u64,
    /// The client's window `[start, end)` of the blob.
    start: u64,
    end: Option<u64>,
    pending: VecDeque<Bytes>,
    /// The last byte of the window released so far, sent only once the
    /// whole blob is verified.
    held: Option<Bytes>,
}

impl PassThrough {
    /// Ask the upstream for the blob from byte `from`; `hasher` has already
    /// seen bytes `[0, from)` (read back from a partial download).
    pub async fn open(
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        from: u64,
        hasher: Hasher,
    ) -> Result<Self, CacheError> {
        let stream = upstream
            .blob(repo, digest, from)
            .await
            .map_err(|e| CacheError::upstream(&upstream.name, e))?;
        let verifier = Verifier::new(&upstream.name, digest, stream.total(), from, hasher);
        Ok(Self {
            stream,
            upstream: upstream.name.clone(),
            fallback: None,
            verifier: Some(verifier),
            pos: from,
            start: 0,
            end: None,
            pending: VecDeque::new(),
            held: None,
        })
    }

    /// The blob's size, when the upstream announced it.
    pub fn total(&self) -> Option<u64> {
        self.stream.total()
    }

    /// If this source breaks off (the owner replica went away mid-transfer),
    /// go on from `fallback` at the byte reached, through the same verifier.
    pub fn or_rest_from(mut self, fallback: Fallback, events: Arc<Events>) -> Self {
        self.fallback = Some((fallback, events));
        self
    }

    /// Switch to the fallback after `why` broke this source off; `why` again
    /// when there is none (or it cannot start).
    async fn switch_to_fallback(&mut self, why: CacheError) -> Result<(), CacheError> {
        let (Some((fallback, events)), Some(verifier)) = (self.fallback.take(), &self.verifier) else {
            return Err(why);
        };
        let from = verifier.seen();
        events.upstream_degraded(
            why.cause(),
            &fallback.upstream.name,
            fallback.repo.as_str(),
            &fallback.digest.to_string(),
            "the replica owning this blob broke off its transfer; the rest comes from the upstream",
            &why.to_string(),
        );
        self.stream = fallback
            .upstream
            .blob(&fallback.repo, &fallback.digest, from)
            .await
            .map_err(|e| CacheError::upstream(&fallback.upstream.name, e))?;
        self.upstream = fallback.upstream.name.clone();
        Ok(())
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
            let Some(verifier) = &mut self.verifier else {
                return Ok(self.held.take());
            };
            let mut released = Vec::new();
            match self.stream.next().await {
                Some(Ok(piece)) => verifier.push(piece, &mut released),
                Some(Err(e)) => {
                    let why = CacheError::upstream(&self.upstream, e);
                    self.switch_to_fallback(why).await?;
                    continue;
                }
                None if self.fallback.is_some() && verifier.short() => {
                    let why = verifier.truncated();
                    self.switch_to_fallback(why).await?;
                    continue;
                }
                None => {
                    let verifier = self.verifier.take().ok_or(CacheError::Abandoned)?;
                    let (last, _proof) = verifier.finish()?;
                    released.extend(last);
                }
            }
            for piece in released {
                self.release(piece);
            }
        }
    }

    /// Queue what of a released piece falls in the window, keeping the
    /// window's last byte so far back.
    fn release(&mut self, piece: Bytes) {
        let piece_start = self.pos;
        self.pos = self.pos.saturating_add(piece.len() as u64);
        let lo = piece_start.max(self.start);
        let hi = self.pos.min(self.end.unwrap_or(u64::MAX));
        if lo >= hi {
            return;
        }
        let out = piece.slice((lo - piece_start) as usize..(hi - piece_start) as usize);
        if let Some(h) = self.held.take() {
            self.pending.push_back(h);
        }
        let n = out.len();
        if n > 1 {
            self.pending.push_back(out.slice(..n - 1));
        }
        self.held = Some(out.slice(n - 1..));
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
