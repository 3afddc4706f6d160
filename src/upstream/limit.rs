//! Berth's own bound on requests in flight to one upstream. A permit is held
//! for an attempt and, for a blob, for its body until the body ends or
//! breaks: the bound counts open transfers, not just requests that have not
//! answered yet, so a burst of distinct digests cannot open sockets and temp
//! files without limit. A request waits for a permit no longer than its
//! deadline allows.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::UpstreamError;

pub struct Limiter {
    slots: Arc<Semaphore>,
    max: u32,
}

impl Limiter {
    pub fn new(max: u32) -> Self {
        let max = max.max(1);
        Self {
            slots: Arc::new(Semaphore::new(usize::try_from(max).unwrap_or(usize::MAX))),
            max,
        }
    }

    /// A permit, waiting at most `wait` for one.
    pub async fn acquire(&self, wait: Duration) -> Result<OwnedSemaphorePermit, UpstreamError> {
        let saturated = || UpstreamError::Saturated {
            limit: self.max,
            waited_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        };
        match tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a closed one is a full one.
            Ok(Err(_)) | Err(_) => Err(saturated()),
        }
    }

    #[cfg(test)]
    fn available(&self) -> usize {
        self.slots.available_permits()
    }
}

/// A blob answer holding its permit. It reads like the `reqwest::Response`
/// it wraps; `bytes_stream` hands the permit on to the body.
pub struct BlobResponse {
    resp: reqwest::Response,
    permit: OwnedSemaphorePermit,
}

impl BlobResponse {
    pub fn new(resp: reqwest::Response, permit: OwnedSemaphorePermit) -> Self {
        Self { resp, permit }
    }

    /// The body; the permit goes back when it ends, breaks or is dropped.
    pub fn bytes_stream(self) -> impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static {
        Permitted {
            inner: Box::pin(self.resp.bytes_stream()),
            permit: Some(self.permit),
        }
    }
}

impl std::ops::Deref for BlobResponse {
    type Target = reqwest::Response;
    fn deref(&self) -> &reqwest::Response {
        &self.resp
    }
}

struct Permitted<S> {
    inner: Pin<Box<S>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl<S: Stream<Item = reqwest::Result<Bytes>>> Stream for Permitted<S> {
    type Item = reqwest::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = std::task::ready!(self.inner.poll_next_unpin(cx));
        // A broken or finished body frees its slot at once: a resume asks
        // for a new one while the old stream may still be alive.
        if !matches!(item, Some(Ok(_))) {
            self.permit = None;
        }
        Poll::Ready(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_bound_holds_and_a_queued_request_gives_up_in_time() {
        let limiter = Limiter::new(2);
        let a = limiter.acquire(Duration::from_secs(1)).await.expect("first");
        let _b = limiter.acquire(Duration::from_secs(1)).await.expect("second");
        assert_eq!(limiter.available(), 0);
        let started = std::time::Instant::now();
        let err = limiter.acquire(Duration::from_millis(50)).await.expect_err("full");
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(
            matches!(
                err,
                UpstreamError::Saturated {
                    limit: 2,
                    waited_ms: 50
                }
            ),
            "{err}"
        );
        assert_eq!(err.cause(), crate::failure::FailureCause::UpstreamUnavailable);
        assert!(err.to_string().contains("max_concurrent_requests"), "{err}");
        drop(a);
        drop(limiter.acquire(Duration::from_millis(50)).await.expect("a slot freed"));
    }

    #[tokio::test]
    async fn a_queued_request_gets_the_slot_a_finished_one_frees() {
        let limiter = Arc::new(Limiter::new(1));
        let held = limiter.acquire(Duration::from_secs(1)).await.expect("first");
        let waiter = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.acquire(Duration::from_secs(10)).await.map(drop) })
        };
        drop(held);
        waiter.await.expect("join").expect("the waiter got the slot");
    }

    #[tokio::test]
    async fn a_body_holds_its_permit_until_it_ends() {
        let limiter = Limiter::new(1);
        let permit = limiter.acquire(Duration::from_secs(1)).await.expect("slot");
        let chunks: Vec<reqwest::Result<Bytes>> = vec![Ok(Bytes::from_static(b"ab")), Ok(Bytes::from_static(b"c"))];
        let mut body = Permitted {
            inner: Box::pin(futures_util::stream::iter(chunks)),
            permit: Some(permit),
        };
        assert!(body.next().await.is_some());
        assert_eq!(limiter.available(), 0, "held while the body flows");
        assert!(body.next().await.is_some());
        assert_eq!(limiter.available(), 0);
        assert!(body.next().await.is_none());
        assert_eq!(limiter.available(), 1, "freed when the body ends");
    }
}
