//! Content-addressed files under `<cache_dir>/blobs/<alg>/<2 hex>/<hex>`.
//!
//! Content becomes visible only by `commit`: written to a temp file under
//! `<cache_dir>/tmp`, fsynced, renamed into place, directory fsynced. Paths are
//! built only from a parsed `Digest`, so no input can name a file elsewhere.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::Rng;

use crate::reference::Digest;

pub struct BlobStore {
    root: PathBuf,
    tmp: PathBuf,
}

impl BlobStore {
    /// Open the store; leftover temp files of an earlier run are removed, as
    /// they were never verified.
    pub fn open(cache_dir: &Path) -> std::io::Result<Self> {
        let root = cache_dir.join("blobs");
        let tmp = cache_dir.join("tmp");
        std::fs::create_dir_all(&root)?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        Ok(Self { root, tmp })
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root.join(digest.algorithm().as_str()).join(&hex[..2]).join(hex)
    }

    /// The size of a stored blob, if present.
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        std::fs::metadata(self.path(digest))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// A new, uniquely named temp file for a download in progress.
    pub fn temp_file(&self) -> std::io::Result<(PathBuf, std::fs::File)> {
        let name = format!("{:016x}.part", rand::rng().random::<u64>());
        let path = self.tmp.join(name);
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
        Ok((path, file))
    }

    /// Make a verified temp file visible under its digest. The caller has
    /// fsynced the file; this renames it and fsyncs the directory.
    pub fn commit(&self, temp: &Path, digest: &Digest) -> std::io::Result<PathBuf> {
        let dest = self.path(digest);
        let dir = dest.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir)?;
        std::fs::rename(temp, &dest)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(dest)
    }

    /// Every stored item: digest, size and modification time (ms since the
    /// epoch). Files whose names are not digests are left out.
    pub fn list(&self) -> std::io::Result<Vec<(Digest, u64, u64)>> {
        let mut out = Vec::new();
        for alg in std::fs::read_dir(&self.root)? {
            let alg = alg?;
            let Some(alg_name) = alg.file_name().to_str().map(str::to_string) else {
                continue;
            };
            for shard in std::fs::read_dir(alg.path())? {
                for file in std::fs::read_dir(shard?.path())? {
                    let file = file?;
                    let Some(hex) = file.file_name().to_str().map(str::to_string) else {
                        continue;
                    };
                    let Ok(digest) = Digest::parse(&format!("{alg_name}:{hex}")) else {
                        continue;
                    };
                    let meta = file.metadata()?;
                    let mtime = meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or_default();
                    out.push((digest, meta.len(), mtime));
                }
            }
        }
        Ok(out)
    }

    /// Remove a stored item. A reader that has it open (or mapped) keeps
    /// reading it: unlinking does not disturb open files.
    pub fn remove(&self, digest: &Digest) -> std::io::Result<()> {
        std::fs::remove_file(self.path(digest))
    }

    /// Store small, already verified content (manifests) in one go.
    /// Whether it was written (false: it was there already).
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> std::io::Result<bool> {
        if self.size(digest) == Some(bytes.len() as u64) {
            return Ok(false);
        }
        let (path, mut file) = self.temp_file()?;
        let result = file
            .write_all(bytes)
            .and_then(|_| file.sync_all())
            .and_then(|_| self.commit(&path, digest).map(|_| ()));
        if result.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        result.map(|_| true)
    }
}

/// Read up to `len` bytes at the file's position into a new buffer, in as
/// few `read` calls as the kernel allows. Shorter only at end of file.
pub fn read_chunk(file: &mut std::fs::File, len: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    // A zeroed buffer costs a memset; `read_to_end` into spare capacity
    // would avoid it but reads in small, growing steps (many syscalls).
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// A memory map of a committed blob, shared by the slices sent out of it.
struct MappedBlob(memmap2::Mmap);

impl AsRef<[u8]> for MappedBlob {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The size of one memory-mapped window of a blob being served.
const MAP_WINDOW: u64 = 64 << 20;

/// Map `[offset, offset + len)` of a committed blob, page tables filled in
/// up front (fewer faults while the socket writes copy out of it).
fn map_window(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<bytes::Bytes> {
    // SAFETY: the map is of a committed blob. Committed blobs are never
    // written or truncated in place: they appear by rename and leave by
    // unlink, and an unlinked file stays mapped intact. Only a change made
    // behind berth's back (truncating a file in the cache directory) could
    // invalidate the mapping.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(len as usize)
            .populate()
            .map(file)?
    };
    Ok(bytes::Bytes::from_owner(MappedBlob(map)))
}

/// The bytes `[start, end)` of a committed blob as a stream of slices of
/// memory maps, at most `chunk` bytes each. No copy happens in berth: the
/// socket write copies straight out of the page cache, as `sendfile` would,
/// and no buffer is allocated per chunk. The blob is mapped a window at a
/// time, on the blocking pool, so a large blob costs neither a long wait
/// before its first byte nor an async worker blocked on the disk.
pub fn read_range(
    file: std::fs::File,
    start: u64,
    end: u64,
    chunk: usize,
) -> std::io::Result<impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static> {
    read_range_in_windows(file, start, end, chunk, MAP_WINDOW)
}

/// `read_range` with a given window size (a multiple of the page size).
fn read_range_in_windows(
    file: std::fs::File,
    start: u64,
    end: u64,
    chunk: usize,
    window: u64,
) -> std::io::Result<impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static> {
    let len = file.metadata()?.len();
    if end > len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("stored blob has {len} bytes, {end} were asked for"),
        ));
    }
    let file = std::sync::Arc::new(file);
    let chunk = chunk.max(1) as u64;
    // Map the window at `at` on the blocking pool.
    let map_at = move |file: std::sync::Arc<std::fs::File>, at: u64| {
        let len = (end - at).min(window);
        tokio::task::spawn_blocking(move || map_window(&file, at, len))
    };
    let state = Windows {
        pos: start,
        current: None,
        next: None,
    };
    Ok(futures_util::stream::try_unfold(state, move |mut w| {
        let file = file.clone();
        async move {
            if w.pos >= end {
                return Ok(None);
            }
            let (at, map) = match w.current.take() {
                Some((at, map)) if w.pos < at + map.len() as u64 => (at, map),
                _ => {
                    // Window offsets are multiples of the window, so page aligned.
                    let at = w.pos - w.pos % window;
                    let pending = match w.next.take() {
                        Some((next_at, handle)) if next_at == at => handle,
                        _ => map_at(file.clone(), at),
                    };
                    let map = pending.await.map_err(std::io::Error::other)??;
                    // Map the following window while this one is sent.
                    if at + window < end {
                        w.next = Some((at + window, map_at(file, at + window)));
                    }
                    (at, map)
                }
            };
            let to = (w.pos + chunk).min(at + map.len() as u64);
            let piece = map.slice((w.pos - at) as usize..(to - at) as usize);
            w.pos = to;
            w.current = Some((at, map));
            Ok(Some((piece, w)))
        }
    }))
}

/// Where a `read_range` stream is: the window being sent, and the next one
/// being mapped.
struct Windows {
    pos: u64,
    current: Option<(u64, bytes::Bytes)>,
    next: Option<(u64, tokio::task::JoinHandle<std::io::Result<bytes::Bytes>>)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_read_and_temp_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"hello");
        store.put(&d, b"hello").unwrap();
        assert_eq!(std::fs::read(store.path(&d)).unwrap(), b"hello");
        assert!(store.path(&d).starts_with(dir.path().join("blobs/sha256")));
        let (stale, _) = store.temp_file().unwrap();
        drop(store);
        let store = BlobStore::open(dir.path()).unwrap();
        assert!(!stale.exists(), "temp files are removed on open");
        assert_eq!(store.size(&d), Some(5));
    }

    #[tokio::test]
    async fn read_range_streams_exactly_the_range() {
        use futures_util::TryStreamExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..30_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        // Two-page windows, so ranges cross window boundaries.
        let window = 8192;
        for (start, end, chunk) in [
            (0u64, 30_000u64, 4096usize),
            (7, 29_999, 1000),
            (8191, 8193, 64),
            (5, 5, 64),
            (29_999, 30_000, 1),
            (100, 25_000, 1 << 20),
        ] {
            let file = std::fs::File::open(&path).unwrap();
            let parts: Vec<bytes::Bytes> = read_range_in_windows(file, start, end, chunk, window)
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            assert!(parts.iter().all(|p| p.len() <= chunk && !p.is_empty()));
            assert_eq!(parts.concat(), &data[start as usize..end as usize], "{start}..{end}");
        }
        // A file shorter than the range asked for is an error, not a short body.
        let file = std::fs::File::open(&path).unwrap();
        assert!(read_range(file, 0, 40_000, 4096).is_err());
        // An empty blob maps nothing.
        std::fs::write(&path, b"").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let parts: Vec<bytes::Bytes> = read_range(file, 0, 0, 4096).unwrap().try_collect().await.unwrap();
        assert!(parts.is_empty());
    }
}
