//! Reading stored files: ranges as streams read ahead a little on the
//! blocking pool (`read_range`, with `pread`), or as slices of memory maps
//! for plain sockets (`read_range_mapped`); reads of an upload in progress;
//! and the watch that removes a file found damaged under a reader.

use std::path::PathBuf;

use super::{ByteStream, OnDamaged};

/// Up to `len` bytes at `pos`, fewer only at the end of what is written.
pub fn read_at_most(file: &std::fs::File, pos: u64, len: usize) -> std::io::Result<bytes::Bytes> {
    use std::os::unix::fs::FileExt;
    // A zeroed buffer costs a memset; reading into spare capacity would
    // need unsafe code for a path (joined cold downloads) that is not hot.
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let at = pos
            .checked_add(filled as u64)
            .ok_or_else(|| std::io::Error::other("offset overflow"))?;
        match file.read_at(&mut buf[filled..], at) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(bytes::Bytes::from(buf))
}

/// Watches a stored file's range being read: removes the file when it
/// turns out unreadable (a read error, or, when the reader went away
/// unfinished, a file now shorter than the range it was sending) and tells
/// the cache once. The second case is the mapped path's: there a truncated
/// page fails the socket write inside the kernel, the connection ends, and
/// no read error ever reaches the stream.
pub struct Watch {
    path: PathBuf,
    end: u64,
    damaged: Option<OnDamaged>,
}

impl Watch {
    pub fn new(path: PathBuf, end: u64, damaged: OnDamaged) -> Self {
        Self {
            path,
            end,
            damaged: Some(damaged),
        }
    }

    /// The file is damaged: remove it, tell the cache, hand back the error.
    pub fn damaged(mut self, e: std::io::Error) -> std::io::Error {
        self.fire(&e);
        e
    }

    fn fire(&mut self, e: &std::io::Error) {
        if let Some(damaged) = self.damaged.take() {
            let removed = std::fs::remove_file(&self.path).is_ok();
            damaged(e, removed);
        }
    }

    /// `stream`, watched.
    pub fn guard(self, stream: ByteStream) -> ByteStream {
        Box::pin(Watched {
            inner: stream,
            watch: Some(self),
        })
    }
}

struct Watched {
    inner: ByteStream,
    /// Taken once the body finished or failed.
    watch: Option<Watch>,
}

impl futures_util::Stream for Watched {
    type Item = std::io::Result<bytes::Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        match std::task::ready!(futures_util::StreamExt::poll_next_unpin(&mut self.inner, cx)) {
            Some(Ok(bytes)) => Poll::Ready(Some(Ok(bytes))),
            Some(Err(e)) => {
                if let Some(mut w) = self.watch.take() {
                    w.fire(&e);
                }
                Poll::Ready(Some(Err(e)))
            }
            None => {
                self.watch = None;
                Poll::Ready(None)
            }
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let Some(mut w) = self.watch.take() else {
            return;
        };
        // Most unfinished bodies are clients that left; a stat (on the
        // blocking pool) tells those from a file truncated under them.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn_blocking(move || {
                let len = std::fs::metadata(&w.path).map(|m| m.len());
                if len.is_ok_and(|len| len < w.end) {
                    w.fire(&std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "stored blob was truncated while it was being sent",
                    ));
                }
            });
        }
    }
}

/// Buffers for stored-blob reads, reused once the socket write that carried
/// them is done: a fresh buffer per chunk would cost an allocation and a page
/// fault per 4 KiB, every time.
static READ_BUFFERS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
/// Spare buffers kept (each `READ_CHUNK` bytes): enough for every stream of a
/// busy server to have one in flight, little enough to not matter (32 MiB).
const SPARE_BUFFERS: usize = 32;
/// Bytes read per trip to the blocking pool, and the most a stream reads
/// ahead of what its client took: a client that leaves early cost at most
/// this much beyond what it was sent.
pub const READ_CHUNK: usize = 1 << 20;

/// The first read of a stream; each next one is as large as everything read
/// before it, up to `READ_CHUNK`.
const FIRST_READ: u64 = 64 << 10;

/// `len` bytes of a pooled buffer, handed to hyper as `Bytes`; it goes back
/// to the pool when the last slice of it is dropped.
struct PooledChunk {
    buf: Vec<u8>,
    len: usize,
}

impl AsRef<[u8]> for PooledChunk {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for PooledChunk {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.len() == READ_CHUNK {
            let mut pool = READ_BUFFERS.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < SPARE_BUFFERS {
                pool.push(buf);
            }
        }
    }
}

fn pooled_buffer() -> Vec<u8> {
    let spare = READ_BUFFERS.lock().unwrap_or_else(|p| p.into_inner()).pop();
    spare.unwrap_or_else(|| vec![0u8; READ_CHUNK])
}

/// Read exactly `[at, at + len)` with positioned reads (no shared file
/// position). A file shorter than that (truncated behind berth's back) is an
/// error for this one read, never a crash: berth reads stored blobs with
/// `pread`, not through a memory map that a truncation turns into SIGBUS.
fn read_exact_at(file: &std::fs::File, at: u64, len: usize) -> std::io::Result<bytes::Bytes> {
    use std::os::unix::fs::FileExt;
    let mut buf = pooled_buffer();
    let len = len.min(buf.len());
    let mut filled = 0;
    while filled < len {
        let offset = at
            .checked_add(filled as u64)
            .ok_or_else(|| std::io::Error::other("offset overflow"))?;
        match file.read_at(&mut buf[filled..len], offset) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "stored blob ends at {offset}, {} bytes short: it was truncated",
                        len - filled
                    ),
                ));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(bytes::Bytes::from_owner(PooledChunk { buf, len }))
}

/// Check that a stored blob holds `[start, end)`, and turn the kernel's own
/// read-ahead off for it: berth reads ahead itself, a little, and only while
/// the client reads, whereas the kernel's (megabytes on many disks) would
/// read far more than a client that leaves early was sent. The advice is
/// only advice; a file system that ignores it changes nothing.
fn prepare_range(file: &std::fs::File, start: u64, end: u64) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    if end > len || start > end {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("stored blob has {len} bytes, {start}..{end} was asked for"),
        ));
    }
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::Random);
    Ok(())
}

/// The bytes `[start, end)` of a committed blob as a stream of chunks of at
/// most `chunk` (≤ `READ_CHUNK`) bytes, read on the blocking pool. One chunk is
/// read ahead while the previous one is sent; nothing more, and nothing once
/// the stream is dropped (the client left), so a short-lived request reads
/// from disk about what it was sent.
pub fn read_range(
    file: std::fs::File,
    start: u64,
    end: u64,
    chunk: usize,
) -> std::io::Result<impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static> {
    prepare_range(&file, start, end)?;
    let file = std::sync::Arc::new(file);
    let chunk = chunk.clamp(1, READ_CHUNK) as u64;
    // Reads start small and double up to `chunk`: a client that reads a
    // little and leaves costs little, a long transfer soon reads in big steps.
    let read_at = move |file: &std::sync::Arc<std::fs::File>, at: u64| {
        let file = file.clone();
        let grown = FIRST_READ.saturating_mul(at.saturating_sub(start) / FIRST_READ + 1);
        let len = (end - at).min(chunk).min(grown) as usize;
        tokio::task::spawn_blocking(move || read_exact_at(&file, at, len))
    };
    let state = Ahead {
        pos: start,
        next: None,
        file,
    };
    Ok(futures_util::stream::try_unfold(state, move |mut w| async move {
        if w.pos >= end {
            return Ok(None);
        }
        let pending = match w.next.take() {
            Some(handle) => handle,
            None => read_at(&w.file, w.pos),
        };
        let piece = pending.await.map_err(std::io::Error::other)??;
        w.pos += piece.len() as u64;
        if w.pos < end {
            w.next = Some(read_at(&w.file, w.pos));
        }
        Ok(Some((piece, w)))
    }))
}

/// A memory map of a window of a committed blob, shared by the slices sent
/// out of it.
struct MappedWindow(memmap2::Mmap);

impl AsRef<[u8]> for MappedWindow {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The first mapped window; each next one doubles, up to `MAP_WINDOW`.
const FIRST_WINDOW: u64 = 256 << 10;
/// The largest mapped window.
const MAP_WINDOW: u64 = 8 << 20;
/// Slices handed to the socket out of a window.
const MAP_SLICE: u64 = 4 << 20;

/// Map `[offset, offset + len)` of a committed blob, its pages read in up
/// front. The file's length is checked first: a file truncated behind
/// berth's back fails here, before anything of it is mapped.
fn map_window(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<bytes::Bytes> {
    let have = file.metadata()?.len();
    let end = offset.saturating_add(len);
    if have < end {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("stored blob ends at {have}, {end} expected: it was truncated"),
        ));
    }
    let len = usize::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: the map is of a committed blob, read only. Committed blobs
    // are never written or truncated by berth: they appear by rename and
    // leave by unlink, and an unlinked file stays mapped intact. A
    // truncation behind berth's back makes the lost pages fault; only the
    // kernel touches these pages (the plain-socket write copies from them,
    // and a fault there fails that write with EFAULT instead of raising
    // SIGBUS), which is why `read_range_mapped` is only for connections
    // where nothing in berth reads the bytes (not TLS).
    let map = unsafe { memmap2::MmapOptions::new().offset(offset).len(len).map(file)? };
    // Fault-time read-around would read megabytes beyond the window (the
    // disk's whole read-ahead size); with it off, filling the page tables
    // up front reads the window and nothing else. Kernels without
    // MADV_POPULATE_READ (before 5.14) fault the pages in as they are sent.
    let _ = map.advise(memmap2::Advice::Random);
    let _ = map.advise(memmap2::Advice::PopulateRead);
    Ok(bytes::Bytes::from_owner(MappedWindow(map)))
}

/// `[start, end)` of a committed blob as slices of memory maps, for
/// connections whose bytes only the kernel touches (plain TCP): no copy in
/// berth. Windows start at 256 KiB and double to 8 MiB, and the next one is
/// mapped while the current one is sent, so a client that leaves early
/// cost about what it was sent. Each window checks the file's length first,
/// so a truncated file fails the stream (and is removed by the cache).
pub fn read_range_mapped(
    file: std::fs::File,
    start: u64,
    end: u64,
) -> std::io::Result<impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static> {
    prepare_range(&file, start, end)?;
    let file = std::sync::Arc::new(file);
    const PAGE: u64 = 4096;
    // Windows are page aligned (mmap needs it); a window's size is about
    // what was sent before it, within bounds.
    let map_at = move |file: &std::sync::Arc<std::fs::File>, at: u64| {
        let file = file.clone();
        let size = at
            .saturating_sub(start)
            .clamp(FIRST_WINDOW, MAP_WINDOW)
            .next_multiple_of(PAGE);
        let aligned = at - at % PAGE;
        let len = size.min(end - aligned);
        (
            aligned,
            tokio::task::spawn_blocking(move || map_window(&file, aligned, len)),
        )
    };
    let state = Mapped {
        pos: start,
        current: None,
        next: None,
        file,
    };
    Ok(futures_util::stream::try_unfold(state, move |mut w| async move {
        if w.pos >= end {
            return Ok(None);
        }
        let (at, map) = match w.current.take() {
            Some((at, map)) if w.pos < at + map.len() as u64 => (at, map),
            _ => {
                let (at, pending) = match w.next.take() {
                    Some((at, handle)) if at <= w.pos => (at, handle),
                    _ => map_at(&w.file, w.pos),
                };
                let map = pending.await.map_err(std::io::Error::other)??;
                let following = at + map.len() as u64;
                if following < end {
                    w.next = Some(map_at(&w.file, following));
                }
                (at, map)
            }
        };
        let to = (w.pos + MAP_SLICE).min(at + map.len() as u64).min(end);
        let piece = map.slice((w.pos - at) as usize..(to - at) as usize);
        w.pos = to;
        w.current = Some((at, map));
        Ok(Some((piece, w)))
    }))
}

/// Where a `read_range_mapped` stream is: the window being sent, and the
/// next one being mapped.
struct Mapped {
    pos: u64,
    current: Option<(u64, bytes::Bytes)>,
    next: Option<(u64, tokio::task::JoinHandle<std::io::Result<bytes::Bytes>>)>,
    file: std::sync::Arc<std::fs::File>,
}

/// Where a `read_range` stream is, and the one chunk being read ahead.
struct Ahead {
    pos: u64,
    next: Option<tokio::task::JoinHandle<std::io::Result<bytes::Bytes>>>,
    file: std::sync::Arc<std::fs::File>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_range_streams_exactly_the_range() {
        use futures_util::TryStreamExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..30_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        for (start, end, chunk) in [
            (0u64, 30_000u64, 4096usize),
            (7, 29_999, 1000),
            (8191, 8193, 64),
            (5, 5, 64),
            (29_999, 30_000, 1),
            (100, 25_000, 1 << 20),
        ] {
            let file = std::fs::File::open(&path).unwrap();
            let parts: Vec<bytes::Bytes> = read_range(file, start, end, chunk)
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            assert!(parts.iter().all(|p| p.len() <= chunk && !p.is_empty()));
            assert_eq!(parts.concat(), &data[start as usize..end as usize], "{start}..{end}");
            let file = std::fs::File::open(&path).unwrap();
            let mapped: Vec<bytes::Bytes> = read_range_mapped(file, start, end)
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            assert!(mapped.iter().all(|p| !p.is_empty()));
            assert_eq!(
                mapped.concat(),
                &data[start as usize..end as usize],
                "mapped {start}..{end}"
            );
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

    #[tokio::test]
    async fn mapped_ranges_cross_growing_windows_exactly() {
        use futures_util::TryStreamExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let size = 21 << 20;
        let data: Vec<u8> = (0..size as u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        for (start, end) in [
            (0u64, size as u64),
            (12_345, (19 << 20) + 7),
            ((8 << 20) - 1, (8 << 20) + 1),
            ((255 << 10) + 3, (800 << 10) + 9),
            (size as u64 - 1, size as u64),
        ] {
            let file = std::fs::File::open(&path).unwrap();
            let parts: Vec<bytes::Bytes> = read_range_mapped(file, start, end)
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            assert!(parts.iter().all(|p| !p.is_empty() && p.len() as u64 <= MAP_SLICE));
            assert!(parts.concat() == data[start as usize..end as usize], "{start}..{end}");
        }
    }

    #[tokio::test]
    async fn a_mapped_blob_truncated_under_a_reader_fails_that_read_only() {
        use futures_util::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 16 << 20]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mut stream = Box::pin(read_range_mapped(file, 0, 16 << 20).unwrap());
        assert!(stream.next().await.unwrap().is_ok());
        truncate_then_expect_eof(&path, stream).await;
    }

    /// Truncate `path` behind the reader's back; the rest of `stream` must
    /// end with an `UnexpectedEof` error.
    async fn truncate_then_expect_eof(
        path: &std::path::Path,
        mut stream: impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
    ) {
        use futures_util::StreamExt;
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(10)
            .unwrap();
        let mut failed = false;
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
                failed = true;
                break;
            }
        }
        assert!(failed, "a truncated blob must end the stream with an error");
    }

    #[tokio::test]
    async fn a_blob_truncated_under_a_reader_fails_that_read_only() {
        use futures_util::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 3 * READ_CHUNK]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mut stream = Box::pin(read_range(file, 0, 3 * READ_CHUNK as u64, READ_CHUNK).unwrap());
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.len() as u64, FIRST_READ);
        truncate_then_expect_eof(&path, stream).await;
    }
}
