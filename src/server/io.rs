//! A connection's byte stream with the two timeouts hyper cannot enforce:
//! a client that takes no response bytes for `write_timeout` is dropped, and
//! a connection with no traffic and no request in flight for `idle_timeout`
//! is closed. The timers are armed lazily and re-armed only when they fire,
//! so a busy connection pays one clock read per read or write, nothing more.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Requests of one connection whose response has not been sent whole yet.
#[derive(Debug, Default)]
pub struct InFlight(AtomicUsize);

impl InFlight {
    /// Count one request until the returned guard is dropped (with its body).
    pub fn start(self: &Arc<Self>) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.clone())
    }

    fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }
}

pub struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct GuardedIo<T> {
    inner: T,
    in_flight: Arc<InFlight>,
    idle_timeout: Duration,
    write_timeout: Duration,
    /// Last time bytes moved either way.
    last: Instant,
    idle: Pin<Box<Sleep>>,
    idle_armed: bool,
    write: Pin<Box<Sleep>>,
    write_armed: bool,
}

impl<T> GuardedIo<T> {
    pub fn new(inner: T, in_flight: Arc<InFlight>, idle_timeout: Duration, write_timeout: Duration) -> Self {
        let now = Instant::now();
        Self {
            inner,
            in_flight,
            idle_timeout,
            write_timeout,
            last: now,
            idle: Box::pin(tokio::time::sleep_until(now)),
            idle_armed: false,
            write: Box::pin(tokio::time::sleep_until(now)),
            write_armed: false,
        }
    }

    /// The outcome of a write-side poll: any progress disarms the stall
    /// timer (and bytes written count as traffic); a write stalled for
    /// `write_timeout` is an error.
    fn after_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
        wrote: bool,
    ) -> Poll<io::Result<R>> {
        match polled {
            Poll::Ready(r) => {
                if wrote {
                    self.last = Instant::now();
                }
                self.write_armed = false;
                Poll::Ready(r)
            }
            Poll::Pending if self.write_expired(cx) => Poll::Ready(Err(timed_out("client stopped reading"))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Whether the connection has been idle for `idle_timeout` (registers
    /// the waker when not).
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if !self.idle_armed {
                let deadline = self.last.checked_add(self.idle_timeout).unwrap_or(self.last);
                self.idle.as_mut().reset(deadline);
                self.idle_armed = true;
            }
            if self.idle.as_mut().poll(cx).is_pending() {
                return false;
            }
            self.idle_armed = false;
            if self.in_flight.any() {
                // A response is being worked on: that is not idleness.
                self.last = Instant::now();
                continue;
            }
            if self.last.elapsed() >= self.idle_timeout {
                return true;
            }
        }
    }

    /// Whether a pending write has been stuck for `write_timeout`.
    fn write_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.write_armed {
            let now = Instant::now();
            let deadline = now.checked_add(self.write_timeout).unwrap_or(now);
            self.write.as_mut().reset(deadline);
            self.write_armed = true;
        }
        self.write.as_mut().poll(cx).is_ready()
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_string())
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.last = Instant::now();
                Poll::Ready(r)
            }
            Poll::Pending if this.idle_expired(cx) => Poll::Ready(Err(timed_out("connection idle"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(cx, polled, true)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, polled, true)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.after_write(cx, polled, false)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.after_write(cx, polled, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_times_out_but_not_with_a_request_in_flight() {
        let (a, _b) = tokio::io::duplex(64);
        let in_flight = Arc::new(InFlight::default());
        let mut io = GuardedIo::new(a, in_flight.clone(), Duration::from_secs(5), Duration::from_secs(5));
        let guard = in_flight.start();
        let mut buf = [0u8; 8];
        // With a request in flight, 20 s of silence is fine.
        assert!(
            tokio::time::timeout(Duration::from_secs(20), io.read(&mut buf))
                .await
                .is_err()
        );
        drop(guard);
        let e = io.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_times_out() {
        let (a, _b) = tokio::io::duplex(16);
        let mut io = GuardedIo::new(
            a,
            Arc::new(InFlight::default()),
            Duration::from_secs(600),
            Duration::from_secs(3),
        );
        let e = io.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
