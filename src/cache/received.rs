//! The bytes a blob fetch received and has not written to its upload yet,
//! kept in memory so the readers that keep up take them from there: they
//! send while the fetch hashes and writes, and do not read back from the
//! upload what the fetch had in hand a moment ago (a copy and a trip to the
//! blocking pool per chunk: ~10 % of berth's CPU for a cold 20-layer pull;
//! the pull's wall time on two shared cores did not measurably change).
//!
//! Invariant, kept by the fetch: every byte below what it published as
//! received is here or in the upload below `written()`.
//! Bytes leave here only once written, so the held set is one batch of
//! network chunks (the fetch's bound), not the blob.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;

#[derive(Default)]
pub struct Received {
    inner: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    /// Blob position of the first held chunk's first byte.
    start: u64,
    chunks: VecDeque<Bytes>,
    /// The upload holds every byte below this.
    written: u64,
}

impl Held {
    #[cfg(test)]
    fn end(&self) -> u64 {
        self.chunks
            .iter()
            .fold(self.start, |end, c| end.saturating_add(c.len() as u64))
    }
}

impl Received {
    /// Hold `pieces`, the bytes right after those held (or written) so far.
    pub fn append(&self, pieces: &[Bytes]) {
        let Ok(mut held) = self.inner.lock() else {
            return;
        };
        held.chunks.extend(pieces.iter().filter(|p| !p.is_empty()).cloned());
    }

    /// Up to `max` bytes from blob position `pos`, when they are held.
    pub fn get(&self, pos: u64, max: usize) -> Option<Bytes> {
        let held = self.inner.lock().ok()?;
        let mut at = held.start;
        for chunk in &held.chunks {
            let len = chunk.len() as u64;
            let end = at.saturating_add(len);
            if pos < at {
                return None;
            }
            if pos < end {
                let from = usize::try_from(pos - at).ok()?;
                let to = from.saturating_add(max).min(chunk.len());
                return Some(chunk.slice(from..to));
            }
            at = end;
        }
        None
    }

    /// The upload holds every byte below `written` now: let go of the chunks
    /// wholly below it (readers behind them read the upload).
    pub fn written_to(&self, written: u64) {
        let Ok(mut held) = self.inner.lock() else {
            return;
        };
        held.written = held.written.max(written);
        while let Some(first) = held.chunks.front() {
            let end = held.start.saturating_add(first.len() as u64);
            if end > written {
                break;
            }
            held.start = end;
            held.chunks.pop_front();
        }
    }

    /// The upload holds every byte below this, as of the fetch's last
    /// write. Kept after the fetch failed: the watch channel then shows
    /// only the failure, and a reader that kept up from memory would
    /// otherwise know of less than the upload holds.
    pub fn written(&self) -> u64 {
        self.inner.lock().map(|h| h.written).unwrap_or(0)
    }

    /// Bytes held now.
    #[cfg(test)]
    fn held(&self) -> u64 {
        self.inner.lock().map(|h| h.end() - h.start).unwrap_or(0)
    }

    /// The blob position after the last held byte.
    #[cfg(test)]
    fn end(&self) -> u64 {
        self.inner.lock().map(|h| h.end()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn reads_come_from_the_chunk_holding_the_position() {
        let r = Received::default();
        r.append(&[b("abc"), b(""), b("defg")]);
        assert_eq!(r.get(0, 10), Some(b("abc")));
        assert_eq!(r.get(1, 1), Some(b("b")));
        assert_eq!(r.get(3, 2), Some(b("de")));
        assert_eq!(r.get(6, 9), Some(b("g")));
        assert_eq!(r.get(7, 1), None, "nothing past what was received");
        assert_eq!(r.end(), 7);
    }

    #[test]
    fn written_chunks_are_let_go_and_straddling_ones_kept() {
        let r = Received::default();
        r.append(&[b("abc"), b("defg")]);
        r.written_to(5);
        assert_eq!(r.get(1, 1), None, "below the written mark: read the upload");
        assert_eq!(r.get(4, 10), Some(b("efg")), "a chunk not wholly written stays");
        assert_eq!(r.written(), 5);
        r.written_to(7);
        assert_eq!(r.held(), 0);
        assert_eq!(r.written(), 7);
        r.append(&[b("hi")]);
        assert_eq!(r.get(7, 10), Some(b("hi")), "positions go on from the blob's");
        assert_eq!(r.end(), 9);
    }
}
