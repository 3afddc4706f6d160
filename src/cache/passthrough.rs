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
use super::verify::Verifier;
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
                Some(Err(e)) => return Err(CacheError::upstream(&self.upstream, e)),
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
