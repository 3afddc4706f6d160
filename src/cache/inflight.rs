//! Single-flight blob downloads. One task per cold digest fetches from the
//! upstream into the store's upload, verifying as it goes; every request for
//! that digest (the first and any that join later) reads the growing upload,
//! woken by a `watch` channel rather than by polling. The task is detached
//! from the requests: a client that disconnects does not cancel it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::error::CacheError;
use super::received::Received;
use crate::reference::{Digest, RepoName};
use crate::store::{BlobUpload, PartialRead};
use crate::upstream::Upstream;

#[derive(Debug, Clone)]
pub enum FetchState {
    /// The upstream request is under way; no size known yet.
    Starting,
    Running {
        /// Bytes readers may send, each in the fetch's [`Received`] or
        /// already in the upload (which `Received::written` tells). Never
        /// the blob's last byte.
        received: u64,
        total: Option<u64>,
    },
    /// Every byte is written and hashes to the digest; the commit (fsync,
    /// rename) is still under way. Readers may finish their responses:
    /// durability is the cache's concern, not theirs.
    Verified {
        size: u64,
    },
    /// Verified and committed to the store.
    Done {
        size: u64,
    },
    Failed(CacheError),
}

pub struct Fetch {
    state: watch::Sender<FetchState>,
    partial: Arc<dyn PartialRead>,
    received: Arc<Received>,
    origin: Origin,
    /// When it was registered (the status page shows its age).
    started: std::time::Instant,
}

/// One fetch under way, as the status page shows it.
#[derive(Debug, Clone)]
pub struct InflightFetch {
    pub digest: Digest,
    pub upstream: String,
    pub repo: RepoName,
    /// Bytes received (written to the upload) so far.
    pub received: u64,
    /// The size the upstream announced, once known.
    pub expected: Option<u64>,
    /// Requests reading it now.
    pub clients: usize,
    pub age: std::time::Duration,
}

/// The upstream and repository a fetch asks under. With repository scoping,
/// a request under another name joins only once that name is known to hold
/// the digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub upstream: String,
    pub repo: RepoName,
}

impl Fetch {
    /// What the fetch holds in memory, not yet in the upload.
    pub fn received(&self) -> &Received {
        &self.received
    }

    pub fn publish(&self, state: FetchState) {
        self.state.send_replace(state);
    }

    /// Requests still reading this fetch.
    pub fn waiters(&self) -> usize {
        self.state.receiver_count()
    }
}

/// Where a reader gets the rest of a blob when the cache cannot store it:
/// straight from the upstream.
#[derive(Clone)]
pub struct Fallback {
    pub upstream: Arc<Upstream>,
    pub repo: RepoName,
    pub digest: Digest,
}

/// A request's handle on a fetch: its state, a reader of what was written,
/// and its fallback, all given when it joins.
pub struct Joined {
    pub state: watch::Receiver<FetchState>,
    pub partial: Arc<dyn PartialRead>,
    /// What the fetch received and may not have written yet.
    pub received: Arc<Received>,
    pub fallback: Fallback,
    /// Where the fetch joined asks: this request's route, or another's.
    pub origin: Origin,
}

/// Downloads finished with nobody reading them, at most. Each costs a
/// connection to the upstream and disk: a client asking for many large
/// digests and leaving must not start an unbounded number of them.
pub const MAX_ABANDONED: usize = 8;

#[derive(Default)]
pub struct Inflight {
    fetches: Mutex<HashMap<Digest, Arc<Fetch>>>,
    abandoned: std::sync::atomic::AtomicUsize,
}

pub enum Slot {
    /// The caller must run the fetch, writing to the upload and publishing progress.
    Leader(Arc<Fetch>, Box<dyn BlobUpload>, Joined),
    Follower(Joined),
}

impl Inflight {
    fn lock(&self) -> std::io::Result<std::sync::MutexGuard<'_, HashMap<Digest, Arc<Fetch>>>> {
        self.fetches
            .lock()
            .map_err(|_| std::io::Error::other("inflight lock poisoned"))
    }

    fn joined(fetch: &Fetch, fallback: Fallback) -> Joined {
        Joined {
            state: fetch.state.subscribe(),
            partial: fetch.partial.clone(),
            received: fetch.received.clone(),
            fallback,
            origin: fetch.origin.clone(),
        }
    }

    /// Join the fetch of `fallback.digest`, or register a new one writing
    /// to the upload `begin` starts.
    pub async fn join_or_lead<F>(&self, fallback: Fallback, begin: F) -> std::io::Result<Slot>
    where
        F: std::future::Future<Output = std::io::Result<Box<dyn BlobUpload>>>,
    {
        if let Some(fetch) = self.lock()?.get(&fallback.digest) {
            return Ok(Slot::Follower(Self::joined(fetch, fallback)));
        }
        // Started outside the lock (it may do I/O); a fetch registered in
        // the meantime wins and this upload is dropped unused.
        let upload = begin.await?;
        let mut map = self.lock()?;
        if let Some(fetch) = map.get(&fallback.digest) {
            return Ok(Slot::Follower(Self::joined(fetch, fallback)));
        }
        let (tx, _) = watch::channel(FetchState::Starting);
        let fetch = Arc::new(Fetch {
            state: tx,
            partial: upload.partial(),
            received: Arc::default(),
            origin: Origin {
                upstream: fallback.upstream.name.clone(),
                repo: fallback.repo.clone(),
            },
            started: std::time::Instant::now(),
        });
        map.insert(fallback.digest.clone(), fetch.clone());
        let joined = Self::joined(&fetch, fallback);
        Ok(Slot::Leader(fetch, upload, joined))
    }

    /// Take a place for a download that goes on with nobody reading it; the
    /// number already taken when none is left.
    pub fn abandoned_started(&self) -> Result<(), usize> {
        use std::sync::atomic::Ordering;
        self.abandoned
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_ABANDONED).then_some(n + 1)
            })
            .map(|_| ())
    }

    pub fn abandoned_ended(&self) {
        use std::sync::atomic::Ordering;
        let _ = self
            .abandoned
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(1)));
    }

    /// The fetches under way, oldest first. The map's lock is held only to
    /// copy out the handles; each state is read after it is released.
    pub fn snapshot(&self) -> Vec<InflightFetch> {
        let fetches: Vec<(Digest, Arc<Fetch>)> = match self.lock() {
            Ok(map) => map.iter().map(|(d, f)| (d.clone(), f.clone())).collect(),
            Err(_) => return Vec::new(),
        };
        let mut out: Vec<InflightFetch> = fetches
            .into_iter()
            .map(|(digest, f)| {
                let (received, expected) = match &*f.state.borrow() {
                    FetchState::Starting | FetchState::Failed(_) => (0, None),
                    FetchState::Running { received, total, .. } => (*received, *total),
                    FetchState::Verified { size } | FetchState::Done { size } => (*size, Some(*size)),
                };
                InflightFetch {
                    digest,
                    upstream: f.origin.upstream.clone(),
                    repo: f.origin.repo.clone(),
                    received,
                    expected,
                    clients: f.waiters(),
                    age: f.started.elapsed(),
                }
            })
            .collect();
        out.sort_by_key(|f| std::cmp::Reverse(f.age));
        out
    }

    /// Forget a finished fetch; called after the state is final.
    pub fn finish(&self, digest: &Digest) {
        if let Ok(mut map) = self.fetches.lock() {
            map.remove(digest);
        }
    }
}

impl Joined {
    /// Whether the fetch asks the upstream under this request's own name.
    pub fn asks_as_requested(&self) -> bool {
        self.origin.upstream == self.fallback.upstream.name && self.origin.repo == self.fallback.repo
    }

    /// Wait until the fetch knows its size (or failed).
    pub async fn started(&mut self) -> Result<Option<u64>, CacheError> {
        loop {
            match &*self.state.borrow_and_update() {
                FetchState::Starting => {}
                FetchState::Running { total, .. } => return Ok(*total),
                FetchState::Verified { size } | FetchState::Done { size } => return Ok(Some(*size)),
                FetchState::Failed(e) => return Err(e.clone()),
            }
            if self.state.changed().await.is_err() {
                return Err(abandoned());
            }
        }
    }

    /// Wait for the verified end of the fetch; its size.
    pub async fn done(&mut self) -> Result<u64, CacheError> {
        loop {
            match &*self.state.borrow_and_update() {
                FetchState::Verified { size } | FetchState::Done { size } => return Ok(*size),
                FetchState::Failed(e) => return Err(e.clone()),
                _ => {}
            }
            if self.state.changed().await.is_err() {
                return Err(abandoned());
            }
        }
    }
}

/// Waits for a fetch's commit: readers finish at verification, but whoever
/// warms the cache (and exits after) must know the blob is durable.
pub struct CommitWait(watch::Receiver<FetchState>);

impl CommitWait {
    /// Whether the blob was committed (false: the fetch ended without it).
    pub async fn wait(mut self) -> bool {
        loop {
            match &*self.0.borrow_and_update() {
                FetchState::Done { .. } => return true,
                FetchState::Failed(_) => return false,
                _ => {}
            }
            if self.0.changed().await.is_err() {
                return matches!(&*self.0.borrow(), FetchState::Done { .. });
            }
        }
    }
}

impl Joined {
    pub fn commit_wait(&self) -> CommitWait {
        CommitWait(self.state.clone())
    }
}

pub fn abandoned() -> CacheError {
    CacheError::Io(Arc::new(std::io::Error::other(
        "blob fetch task ended without a result",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abandoned_downloads_are_bounded() {
        let inflight = Inflight::default();
        for _ in 0..MAX_ABANDONED {
            assert!(inflight.abandoned_started().is_ok());
        }
        assert_eq!(inflight.abandoned_started(), Err(MAX_ABANDONED));
        inflight.abandoned_ended();
        assert!(inflight.abandoned_started().is_ok());
    }
}
