//! Single-flight blob downloads. One task per cold digest fetches from the
//! upstream into a temp file, hashing as it writes; every request for that
//! digest (the first and any that join later) reads the growing file, woken by
//! a `watch` channel rather than by polling. The task is detached from the
//! requests: a client that disconnects does not cancel it.
//!
//! A reader holds back the last byte of its response until the digest is
//! verified, so a corrupt download ends every response early and no client
//! receives a complete-looking corrupt body.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::watch;

use super::error::CacheError;
use super::passthrough::PassThrough;
use crate::reference::{Digest, Hasher, RepoName};
use crate::upstream::Upstream;

/// Bytes read from the file per chunk sent to a client.
const READ_CHUNK: usize = 256 << 10;

#[derive(Debug, Clone)]
pub enum FetchState {
    /// The upstream request is under way; no size known yet.
    Starting,
    Running {
        written: u64,
        total: Option<u64>,
    },
    /// Every byte is in the temp file and hashes to the digest; the commit
    /// (fsync, rename) is still under way. Readers holding the temp file may
    /// finish their responses: durability is the cache's concern, not theirs.
    Verified {
        size: u64,
    },
    /// Verified and committed to `path`.
    Done {
        size: u64,
        path: PathBuf,
    },
    Failed(CacheError),
}

pub struct Fetch {
    temp_path: PathBuf,
    state: watch::Sender<FetchState>,
}

impl Fetch {
    pub fn publish(&self, state: FetchState) {
        self.state.send_replace(state);
    }

    /// Requests still reading this fetch.
    pub fn waiters(&self) -> usize {
        self.state.receiver_count()
    }

    pub fn subscribe(&self) -> watch::Receiver<FetchState> {
        self.state.subscribe()
    }

    pub fn temp_path(&self) -> &std::path::Path {
        &self.temp_path
    }
}

/// A request's handle on a fetch: its state, and the temp file opened while
/// the fetch was still registered (so a later rename does not matter).
pub struct Joined {
    pub state: watch::Receiver<FetchState>,
    file: Option<std::fs::File>,
    /// Where to get the rest of the bytes when the fetch fails because the
    /// cache cannot be written: straight from the upstream.
    pub fallback: Option<Fallback>,
}

#[derive(Clone)]
pub struct Fallback {
    pub upstream: Arc<Upstream>,
    pub repo: RepoName,
    pub digest: Digest,
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
    /// The caller must start the fetch, write to the file and publish progress.
    Leader(Arc<Fetch>, std::fs::File, Joined),
    Follower(Joined),
}

impl Inflight {
    /// Join the fetch of `digest`, or register a new one writing to the temp
    /// file `make_temp` creates.
    pub fn join_or_lead(
        &self,
        digest: &Digest,
        make_temp: impl FnOnce() -> std::io::Result<(PathBuf, std::fs::File)>,
    ) -> std::io::Result<Slot> {
        let mut map = self
            .fetches
            .lock()
            .map_err(|_| std::io::Error::other("inflight lock poisoned"))?;
        if let Some(fetch) = map.get(digest) {
            let file = std::fs::File::open(&fetch.temp_path).ok();
            return Ok(Slot::Follower(Joined {
                state: fetch.subscribe(),
                file,
                fallback: None,
            }));
        }
        let (temp_path, writer) = make_temp()?;
        let (tx, rx) = watch::channel(FetchState::Starting);
        let fetch = Arc::new(Fetch {
            temp_path: temp_path.clone(),
            state: tx,
        });
        map.insert(digest.clone(), fetch.clone());
        let file = std::fs::File::open(&temp_path)?;
        Ok(Slot::Leader(
            fetch,
            writer,
            Joined {
                state: rx,
                file: Some(file),
                fallback: None,
            },
        ))
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

    /// Forget a finished fetch; called after the state is final.
    pub fn finish(&self, digest: &Digest) {
        if let Ok(mut map) = self.fetches.lock() {
            map.remove(digest);
        }
    }
}

impl Joined {
    /// Wait until the fetch knows its size (or failed).
    pub async fn started(&mut self) -> Result<Option<u64>, CacheError> {
        loop {
            match &*self.state.borrow_and_update() {
                FetchState::Starting => {}
                FetchState::Running { total, .. } => return Ok(*total),
                FetchState::Verified { size } | FetchState::Done { size, .. } => return Ok(Some(*size)),
                FetchState::Failed(e) => return Err(e.clone()),
            }
            if self.state.changed().await.is_err() {
                return Err(abandoned());
            }
        }
    }

    /// Wait for the verified end of the fetch.
    pub async fn done(&mut self) -> Result<(u64, PathBuf), CacheError> {
        loop {
            match &*self.state.borrow_and_update() {
                FetchState::Done { size, path } => return Ok((*size, path.clone())),
                FetchState::Failed(e) => return Err(e.clone()),
                _ => {}
            }
            if self.state.changed().await.is_err() {
                return Err(abandoned());
            }
        }
    }

    /// The bytes `[start, end)` of the blob (to its end when `end` is None),
    /// streamed as they arrive. An error item ends the response abnormally.
    pub fn stream(
        self,
        start: u64,
        end: Option<u64>,
    ) -> impl Stream<Item = Result<Bytes, CacheError>> + Send + 'static {
        let reader = Reader {
            joined: self,
            pos: start,
            end,
            seeked: false,
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
}

fn abandoned() -> CacheError {
    CacheError::Io(Arc::new(std::io::Error::other(
        "blob fetch task ended without a result",
    )))
}

struct Reader {
    joined: Joined,
    pos: u64,
    end: Option<u64>,
    seeked: bool,
    /// The fetch's announced size, as last seen.
    seen_total: Option<u64>,
    /// Set once the fetch failed to store and this reader streams the rest
    /// from the upstream itself.
    pass: Option<PassThrough>,
}

impl Reader {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, CacheError> {
        loop {
            if let Some(pass) = &mut self.pass {
                return pass.next_chunk().await;
            }
            let (limit, done_path, verified) = match &*self.joined.state.borrow_and_update() {
                FetchState::Starting => (self.pos, None, false),
                // Hold back the response's last byte until verification.
                FetchState::Running { written, total } => {
                    self.seen_total = *total;
                    let end = self.end.unwrap_or(u64::MAX);
                    (*written.min(&end.saturating_sub(1)), None, false)
                }
                FetchState::Verified { size } => (self.end.unwrap_or(*size).min(*size), None, true),
                FetchState::Done { size, path } => (self.end.unwrap_or(*size).min(*size), Some(path.clone()), true),
                FetchState::Failed(e) if e.is_storage() && self.joined.fallback.is_some() => (u64::MAX, None, false),
                FetchState::Failed(e) => return Err(e.clone()),
            };
            if limit == u64::MAX {
                self.pass_through().await?;
                continue;
            }
            // A reader that could not open the temp file waits for the
            // committed file rather than reading from nowhere.
            let readable = self.joined.file.is_some() || done_path.is_some();
            if self.pos < limit && readable {
                return self.read(limit - self.pos, done_path).await.map(Some);
            }
            if verified && readable {
                return Ok(None);
            }
            if self.joined.state.changed().await.is_err() {
                return Err(abandoned());
            }
        }
    }

    /// The cache could not store the blob: hash what this reader can still
    /// read of the temp file, and take the rest from the upstream directly.
    async fn pass_through(&mut self) -> Result<(), CacheError> {
        let fallback = self.joined.fallback.clone().ok_or_else(abandoned)?;
        // Verify from what this client already has: the bytes before `pos`
        // came from the temp file (re-read here for the hash), the rest
        // comes from the upstream.
        let mut have = if self.joined.file.is_some() { self.pos } else { 0 };
        // Ask for at least one byte: a Range starting at the end is unsatisfiable.
        if self.seen_total.is_some_and(|t| have >= t) {
            have = have.saturating_sub(1);
        }
        let mut hasher = Hasher::new(fallback.digest.algorithm());
        if have > 0 {
            let mut file = self.joined.file.take().ok_or_else(abandoned)?;
            let (file, hasher_result) = tokio::task::spawn_blocking(move || {
                let r = (|| {
                    file.seek(SeekFrom::Start(0))?;
                    let mut buf = vec![0u8; READ_CHUNK];
                    let mut left = have;
                    while left > 0 {
                        let n = file.read(&mut buf[..left.min(READ_CHUNK as u64) as usize])?;
                        if n == 0 {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "temp file shorter than written",
                            ));
                        }
                        hasher.update(&buf[..n]);
                        left -= n as u64;
                    }
                    Ok::<_, std::io::Error>(hasher)
                })();
                (file, r)
            })
            .await
            .map_err(|e| CacheError::from(std::io::Error::other(e)))?;
            self.joined.file = Some(file);
            self.seeked = false;
            hasher = hasher_result?;
        }
        tracing::info!(repo = %fallback.repo, digest = %fallback.digest, from = have, "cache cannot store this blob; streaming it from the upstream without storing");
        let pass = PassThrough::open(&fallback.upstream, &fallback.repo, &fallback.digest, have, hasher).await?;
        self.pass = Some(pass.window(self.pos, self.end));
        Ok(())
    }

    async fn read(&mut self, available: u64, done_path: Option<PathBuf>) -> Result<Bytes, CacheError> {
        if self.joined.file.is_none() {
            // Joined too late to open the temp file: the blob is committed.
            let path = done_path.ok_or_else(abandoned)?;
            self.joined.file = Some(std::fs::File::open(path)?);
        }
        let mut file = self.joined.file.take().ok_or_else(abandoned)?;
        let (pos, seeked) = (self.pos, self.seeked);
        let len = available.min(READ_CHUNK as u64) as usize;
        let (file, result) = tokio::task::spawn_blocking(move || {
            let r = (|| {
                if !seeked {
                    file.seek(SeekFrom::Start(pos))?;
                }
                super::blobs::read_chunk(&mut file, len)
            })();
            (file, r)
        })
        .await
        .map_err(|e| CacheError::from(std::io::Error::other(e)))?;
        self.joined.file = Some(file);
        self.seeked = true;
        let buf = result?;
        if buf.is_empty() {
            return Err(CacheError::from(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "cache file shorter than announced",
            )));
        }
        self.pos += buf.len() as u64;
        Ok(Bytes::from(buf))
    }
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
