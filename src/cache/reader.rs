//! A request reading a blob that is being fetched: the bytes of its window
//! as the upload grows, the window's last byte held back until the fetch
//! verified the digest (so a corrupt download ends every response early and
//! no client receives a complete-looking corrupt body), and, when the fetch
//! fails because the cache cannot store it, the rest straight from the
//! upstream.

use bytes::Bytes;
use futures_util::Stream;

use super::error::CacheError;
use super::inflight::{FetchState, Joined, abandoned};
use super::passthrough::{PassThrough, falls_back};
use crate::reference::Hasher;

/// Bytes read from the upload per chunk sent to a client.
const READ_CHUNK: usize = 256 << 10;

/// The bytes `[start, end)` of the blob (to its end when `end` is None),
/// streamed as they arrive. An error item ends the response abnormally.
pub fn stream(
    joined: Joined,
    start: u64,
    end: Option<u64>,
) -> impl Stream<Item = Result<Bytes, CacheError>> + Send + 'static {
    let reader = Reader {
        joined,
        pos: start,
        end,
        seen_total: None,
        pass: None,
    };
    futures_util::stream::unfold(Some(reader), |reader| async move {
        let mut reader = reader?;
        match reader.next_chunk().await {
            Ok(Some(bytes)) => Some((Ok(bytes), Some(reader))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    })
}

struct Reader {
    joined: Joined,
    pos: u64,
    end: Option<u64>,
    /// The fetch's announced size, as last seen.
    seen_total: Option<u64>,
    /// Set once the fetch failed to store and this reader streams the rest
    /// from the upstream itself.
    pass: Option<PassThrough>,
}

/// What a reader does next, as the fetch's state says.
enum Next {
    /// Read up to this blob position.
    ReadTo(u64),
    /// Every byte of the window went out, verified.
    End,
    Wait,
    PassThrough,
    Fail(CacheError),
}

impl Reader {
    fn next_step(&mut self) -> Next {
        let (limit, verified) = match &*self.joined.state.borrow_and_update() {
            FetchState::Starting => (self.pos, false),
            // Hold back the response's last byte until verification.
            FetchState::Running { received, total, .. } => {
                self.seen_total = *total;
                let end = self.end.unwrap_or(u64::MAX);
                (*received.min(&end.saturating_sub(1)), false)
            }
            FetchState::Verified { size } | FetchState::Done { size } => (self.end.unwrap_or(*size).min(*size), true),
            FetchState::Failed(e) if falls_back(e) => return Next::PassThrough,
            FetchState::Failed(e) => return Next::Fail(e.clone()),
        };
        if self.pos < limit {
            Next::ReadTo(limit)
        } else if verified {
            Next::End
        } else {
            Next::Wait
        }
    }

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, CacheError> {
        loop {
            if let Some(pass) = &mut self.pass {
                return pass.next_chunk().await;
            }
            match self.next_step() {
                Next::ReadTo(limit) => return self.read(limit - self.pos).await.map(Some),
                Next::End => return Ok(None),
                Next::Fail(e) => return Err(e),
                Next::PassThrough => self.pass_through().await?,
                Next::Wait => {
                    if self.joined.state.changed().await.is_err() {
                        return Err(abandoned());
                    }
                }
            }
        }
    }

    /// The cache could not store the blob: hash what this reader already
    /// sent (read back from the upload), take the rest from the upstream.
    async fn pass_through(&mut self) -> Result<(), CacheError> {
        let fallback = self.joined.fallback.clone();
        // Re-hashed from the upload: what it is known to hold, which is
        // less than `pos` for a window that starts past what was written.
        // The fetch's last write, not the last state this reader saw: one
        // that kept up from memory saw `written` lag behind `pos`, and would
        // otherwise ask the upstream again for bytes the upload holds.
        let mut have = self.pos.min(self.joined.received.written());
        // Ask for at least one byte: a Range starting at the end is unsatisfiable.
        if self.seen_total.is_some_and(|t| have >= t) {
            have = have.saturating_sub(1);
        }
        let mut hasher = Hasher::new(fallback.digest.algorithm());
        let mut at = 0;
        while at < have {
            let len = (have - at).min(READ_CHUNK as u64) as usize;
            let piece = self.joined.partial.read_at(at, len).await?;
            if piece.is_empty() {
                return Err(CacheError::from(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "partial download shorter than written",
                )));
            }
            hasher.update(&piece);
            at += piece.len() as u64;
        }
        tracing::info!(repo = %fallback.repo, digest = %fallback.digest, from = have, "cache cannot store this blob; streaming it from the upstream without storing");
        let pass = PassThrough::open(&fallback.upstream, &fallback.repo, &fallback.digest, have, hasher).await?;
        self.pass = Some(pass.window(self.pos, self.end));
        Ok(())
    }

    async fn read(&mut self, available: u64) -> Result<Bytes, CacheError> {
        let len = available.min(READ_CHUNK as u64) as usize;
        // What the fetch still holds goes out from memory; what it let go
        // of is in the upload (see received.rs for why both hold).
        let buf = match self.joined.received.get(self.pos, len) {
            Some(held) => held,
            None => self.joined.partial.read_at(self.pos, len).await?,
        };
        if buf.is_empty() {
            return Err(CacheError::from(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "cache file shorter than announced",
            )));
        }
        self.pos += buf.len() as u64;
        Ok(buf)
    }
}
