//! The one check every blob from an upstream goes through, whether it is
//! stored (the cached fetch) or only streamed on (pass-through): its bytes
//! hashed in order, its length held to what the upstream announced, and its
//! last byte held back until the digest matched. So no consumer of a blob
//! (the temp file readers follow, a client's response) ever holds a
//! complete-looking blob that is not the one its digest names.

use bytes::Bytes;

use super::error::CacheError;
use crate::reference::{Digest, Hasher, Verified};
use crate::upstream::UpstreamError;

pub struct Verifier {
    hasher: Hasher,
    digest: Digest,
    upstream: String,
    /// Blob bytes seen so far.
    seen: u64,
    total: Option<u64>,
    /// The last byte seen, not yet released.
    held: Option<Bytes>,
}

impl Verifier {
    /// Check `digest` (of `total` bytes, if announced) from byte `from`;
    /// `hasher` has seen bytes `[0, from)` already.
    pub fn new(upstream: &str, digest: &Digest, total: Option<u64>, from: u64, hasher: Hasher) -> Self {
        Self {
            hasher,
            digest: digest.clone(),
            upstream: upstream.to_string(),
            seen: from,
            total,
            held: None,
        }
    }

    /// Blob bytes seen so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Take the next piece of the blob; `out` gets what may be released now:
    /// everything seen but its last byte.
    pub fn push(&mut self, piece: Bytes, out: &mut Vec<Bytes>) {
        if piece.is_empty() {
            return;
        }
        self.hasher.update(&piece);
        self.seen = self.seen.saturating_add(piece.len() as u64);
        if let Some(held) = self.held.take() {
            out.push(held);
        }
        let n = piece.len();
        if n > 1 {
            out.push(piece.slice(..n - 1));
        }
        self.held = Some(piece.slice(n - 1..));
    }

    /// The blob ended: its length and digest checked, the held byte and
    /// the proof for the store.
    /// Whether fewer bytes came than the source announced.
    pub fn short(&self) -> bool {
        self.total.is_some_and(|t| t > self.seen)
    }

    /// The error for a source that ended early.
    pub fn truncated(&self) -> CacheError {
        CacheError::Truncated {
            upstream: self.upstream.clone(),
            expected: self.total.unwrap_or(self.seen),
            got: self.seen,
        }
    }

    pub fn finish(self) -> Result<(Option<Bytes>, Verified), CacheError> {
        if let Some(expected) = self.total.filter(|&t| t != self.seen) {
            return Err(CacheError::Truncated {
                upstream: self.upstream,
                expected,
                got: self.seen,
            });
        }
        match self.hasher.verify(&self.digest) {
            Ok(proof) => Ok((self.held, proof)),
            Err(actual) => {
                tracing::warn!(upstream = %self.upstream, expected = %self.digest, actual = %actual, "blob digest mismatch; not stored");
                Err(CacheError::upstream(
                    &self.upstream,
                    UpstreamError::DigestMismatch {
                        expected: self.digest.to_string(),
                        actual: actual.to_string(),
                    },
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(blob: &[u8], total: Option<u64>) -> Verifier {
        let d = Digest::sha256_of(blob);
        Verifier::new("up", &d, total, 0, Hasher::new(d.algorithm()))
    }

    #[test]
    fn the_last_byte_waits_for_the_digest() {
        let blob = b"hello world";
        let mut v = verifier(blob, Some(11));
        let mut out = Vec::new();
        v.push(Bytes::from_static(b"hello "), &mut out);
        v.push(Bytes::from_static(b"w"), &mut out);
        v.push(Bytes::from_static(b"orld"), &mut out);
        assert_eq!(out.concat(), b"hello worl", "all but the last byte");
        let (last, proof) = v.finish().unwrap();
        assert_eq!(last.as_deref(), Some(&b"d"[..]));
        assert_eq!(proof.digest(), &Digest::sha256_of(blob));
    }

    #[test]
    fn a_wrong_or_short_blob_never_releases_its_last_byte() {
        let mut v = verifier(b"hello world", Some(11));
        let mut out = Vec::new();
        v.push(Bytes::from_static(b"hello wOrld"), &mut out);
        assert_eq!(out.concat(), b"hello wOrl");
        assert!(matches!(v.finish(), Err(CacheError::Upstream { .. })));
        let mut v = verifier(b"hello world", Some(11));
        v.push(Bytes::from_static(b"hello"), &mut out);
        assert!(matches!(
            v.finish(),
            Err(CacheError::Truncated {
                expected: 11,
                got: 5,
                ..
            })
        ));
        // An empty blob has nothing to hold back.
        let v = verifier(b"", None);
        assert!(matches!(v.finish(), Ok((None, _))));
    }
}
