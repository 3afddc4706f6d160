//! A blob download as a typed stream: the blob's bytes in order from the
//! position asked for, its announced size, and typed errors. A transfer that
//! breaks (a reset, a short body) continues by itself with a `Range` request,
//! a bounded number of times; every answer to a Range is checked (a 206 must
//! say where it starts, and may not start past the bytes already handed out;
//! a 200 that ignored the Range is skipped up to that point). Nothing above
//! this layer sees a status code, a header or a reqwest type.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use reqwest::StatusCode;
use reqwest::header::CONTENT_RANGE;

use super::limit::BlobResponse;
use super::{Upstream, UpstreamError, is_retryable};
use crate::reference::{Digest, RepoName};

/// Resumes of one broken blob transfer before giving up.
pub const MAX_RESUMES: u32 = 5;
/// Pause before a resume, times the number of resumes so far.
pub const RESUME_PAUSE: Duration = Duration::from_millis(100);

type Reopen = Pin<Box<dyn Future<Output = Result<BlobResponse, UpstreamError>> + Send>>;

/// The bytes of one blob from an upstream, resuming itself when it breaks.
pub struct BlobStream {
    upstream: Arc<Upstream>,
    repo: RepoName,
    digest: Digest,
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    /// A resume under way: the Range request for the rest.
    reopening: Option<Reopen>,
    /// Position in the blob of the next byte handed out.
    pos: u64,
    /// Bytes at the start of the current body that were handed out already
    /// (an upstream that answered a Range with the whole blob).
    skip: u64,
    total: Option<u64>,
    resumes: u32,
    /// What broke the transfer the first time, if it ever broke.
    first_break: Option<UpstreamError>,
    ended: bool,
}

/// Where an answer to a request for the blob from byte `from` starts
/// relative to `from`: the bytes to skip, and the blob's size if it tells.
/// None when it cannot continue at `from` (a 206 without a usable
/// `Content-Range`, or one starting past `from`: a gap nothing can fill).
fn placement(
    status: StatusCode,
    content_length: Option<u64>,
    content_range: Option<&str>,
    from: u64,
) -> Option<(u64, Option<u64>)> {
    if status != StatusCode::PARTIAL_CONTENT {
        return Some((from, content_length));
    }
    let (start, size) = parse_content_range(content_range?)?;
    if start > from {
        return None;
    }
    let total = size.or_else(|| content_length.and_then(|len| start.checked_add(len)));
    Some((from - start, total))
}

/// `bytes <start>-<end>/<size>` → (start, size); `size` may be `*`.
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (span, size) = rest.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let size = match size.trim() {
        "*" => None,
        s => Some(s.parse::<u64>().ok().filter(|&s| s > end)?),
    };
    Some((start, size))
}

impl Upstream {
    /// Download a blob from byte `from`. The stream holds one of the
    /// upstream's concurrency slots while a body is being read.
    pub async fn blob(
        self: &Arc<Self>,
        repo: &RepoName,
        digest: &Digest,
        from: u64,
    ) -> Result<BlobStream, UpstreamError> {
        let resp = self.blob_response(repo, digest, from).await?;
        let Some((skip, total)) = placement(
            resp.status(),
            resp.content_length(),
            resp.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()),
            from,
        ) else {
            return Err(UpstreamError::RangeMisplaced { at: from });
        };
        Ok(BlobStream {
            upstream: self.clone(),
            repo: repo.clone(),
            digest: digest.clone(),
            body: resp.bytes_stream().boxed(),
            reopening: None,
            pos: from,
            skip,
            total,
            resumes: 0,
            first_break: None,
            ended: false,
        })
    }
}

impl BlobStream {
    /// The blob's size, as the upstream announced it.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// How often the transfer broke and went on, with what broke it first.
    pub fn resumed(&self) -> Option<(u32, &UpstreamError)> {
        self.first_break.as_ref().map(|e| (self.resumes, e))
    }

    /// The transfer broke with `error` at `pos`: ask for the rest, or give up.
    fn broke(&mut self, error: UpstreamError) -> Result<(), UpstreamError> {
        if !is_retryable(&error) || self.resumes >= MAX_RESUMES {
            return Err(error);
        }
        self.resumes += 1;
        tracing::info!(upstream = %self.upstream.name, repo = %self.repo, digest = %self.digest, at = self.pos, error = %error, "blob transfer broke; resuming with Range");
        self.first_break.get_or_insert(error);
        let (upstream, repo, digest, at) = (self.upstream.clone(), self.repo.clone(), self.digest.clone(), self.pos);
        let pause = RESUME_PAUSE * self.resumes;
        self.reopening = Some(Box::pin(async move {
            tokio::time::sleep(pause).await;
            upstream.blob_response(&repo, &digest, at).await
        }));
        Ok(())
    }

    /// A resume was answered: go on reading it where it meets the bytes
    /// handed out, or fail with what broke the transfer.
    fn reopened(&mut self, resp: BlobResponse) -> Result<(), UpstreamError> {
        let range = resp.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok());
        match placement(resp.status(), resp.content_length(), range, self.pos) {
            Some((skip, _)) => {
                self.skip = skip;
                self.body = resp.bytes_stream().boxed();
                Ok(())
            }
            // What broke the transfer is the evidence, not the bad answer.
            None => Err(self
                .first_break
                .take()
                .unwrap_or(UpstreamError::RangeMisplaced { at: self.pos })),
        }
    }

    fn fail(&mut self, e: UpstreamError) -> Poll<Option<Result<Bytes, UpstreamError>>> {
        self.ended = true;
        self.reopening = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl Stream for BlobStream {
    type Item = Result<Bytes, UpstreamError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            if let Some(reopening) = &mut this.reopening {
                let answer = ready!(reopening.as_mut().poll(cx));
                this.reopening = None;
                match answer.and_then(|resp| this.reopened(resp)) {
                    Ok(()) => continue,
                    Err(e) => return this.fail(e),
                }
            }
            let broken = match ready!(this.body.poll_next_unpin(cx)) {
                Some(Ok(mut chunk)) => {
                    if this.skip > 0 {
                        let n = this.skip.min(chunk.len() as u64);
                        chunk = chunk.slice(n as usize..);
                        this.skip -= n;
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    let end = this.pos.saturating_add(chunk.len() as u64);
                    if let Some(total) = this.total.filter(|&t| end > t) {
                        return this.fail(UpstreamError::Overlong {
                            expected: total,
                            got: end,
                        });
                    }
                    this.pos = end;
                    return Poll::Ready(Some(Ok(chunk)));
                }
                Some(Err(e)) => UpstreamError::Http(e),
                None => match this.total {
                    Some(total) if this.pos < total => UpstreamError::Truncated {
                        expected: total,
                        got: this.pos,
                    },
                    _ => {
                        this.ended = true;
                        return Poll::Ready(None);
                    }
                },
            };
            if let Err(e) = this.broke(broken) {
                return this.fail(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_to_a_range_are_placed_or_refused() {
        let ok = StatusCode::OK;
        let partial = StatusCode::PARTIAL_CONTENT;
        // A 200 is the whole blob: everything before `from` is skipped.
        assert_eq!(placement(ok, Some(100), None, 40), Some((40, Some(100))));
        assert_eq!(placement(ok, None, None, 0), Some((0, None)));
        // A 206 from where asked, or from before it (overlapping).
        assert_eq!(
            placement(partial, Some(60), Some("bytes 40-99/100"), 40),
            Some((0, Some(100)))
        );
        assert_eq!(
            placement(partial, Some(70), Some("bytes 30-99/100"), 40),
            Some((10, Some(100)))
        );
        assert_eq!(
            placement(partial, Some(60), Some("bytes 40-99/*"), 40),
            Some((0, Some(100)))
        );
        // A gap, a missing or malformed Content-Range: cannot continue.
        assert_eq!(placement(partial, Some(50), Some("bytes 50-99/100"), 40), None);
        assert_eq!(placement(partial, Some(60), None, 40), None);
        assert_eq!(placement(partial, Some(60), Some("bytes x-99/100"), 40), None);
        assert_eq!(placement(partial, Some(60), Some("bytes 40-99/50"), 40), None);
        assert_eq!(placement(partial, Some(60), Some("bytes 99-40/100"), 40), None);
    }
}
