//! Warming an image: every manifest (an index and the children of the
//! platforms asked for) and every blob it needs, fetched through the cache's
//! normal paths (single flight, verification, links), so a pull at a site
//! that lost its upstream finds it whole. `berth prefetch` and
//! `[[prefetch]]` use it; `berth export` walks an image the same way.

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::{Cache, CacheError, CachedManifest};
use crate::image_ref::Platform;
use crate::manifest::{ContentKind, content};
use crate::reference::{Digest, Reference};
use crate::routing::Route;
use crate::store::ReadMode;

/// What warming one image did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warmed {
    /// The manifest the reference resolved to.
    pub digest: String,
    pub manifests: usize,
    pub blobs: usize,
    /// Blobs (and their bytes) fetched from the upstream now.
    pub fetched_blobs: usize,
    pub fetched_bytes: u64,
    /// Blobs already in the cache.
    pub cached_blobs: usize,
    pub cached_bytes: u64,
    /// Blobs the cache could not keep (served through, e.g. disk full).
    pub unstored_blobs: usize,
}

/// Progress of a warm, as it happens (for a progress display).
#[derive(Debug, Clone)]
pub enum WarmStep<'a> {
    Manifest {
        digest: &'a Digest,
    },
    /// A blob about to be fetched; `size` as the manifest announces it.
    Fetching {
        digest: &'a Digest,
        size: u64,
    },
    Bytes(u64),
    Cached {
        digest: &'a Digest,
        size: u64,
    },
}

/// One manifest and what it holds, as walked.
pub struct Walked {
    pub manifest: CachedManifest,
    pub children: Vec<Walked>,
    /// Config and layers of an image manifest, with their sizes.
    pub blobs: Vec<(Digest, u64)>,
}

impl Cache {
    /// Resolve `reference` and walk what it needs: child manifests of the
    /// platform asked for (all without one), and their blobs. A tag is
    /// revalidated with the upstream now; manifests are fetched (and
    /// cached) on the way; blobs are only listed.
    pub async fn walk(
        &self,
        route: &Route,
        reference: &Reference,
        platform: Option<&Platform>,
    ) -> Result<Walked, CacheError> {
        let top = self.manifest_revalidated(route, reference).await?;
        self.walk_manifest(route, top, platform, 0).await
    }

    async fn walk_manifest(
        &self,
        route: &Route,
        manifest: CachedManifest,
        platform: Option<&Platform>,
        depth: u8,
    ) -> Result<Walked, CacheError> {
        let parts = content(&manifest.bytes).map_err(|reason| CacheError::Invalid {
            digest: manifest.digest.to_string(),
            reason,
        })?;
        let mut walked = Walked {
            manifest,
            children: Vec::new(),
            blobs: Vec::new(),
        };
        for part in parts {
            match part.kind {
                ContentKind::Blob => walked.blobs.push((part.digest, part.size)),
                ContentKind::Manifest { platform: of } => {
                    let wanted = match (platform, &of) {
                        (None, _) => true,
                        (Some(p), Some((os, arch, variant))) => p.matches(os, arch, variant.as_deref()),
                        (Some(_), None) => false,
                    };
                    // An index of indexes is legal but rare; deeper than
                    // that is refused rather than followed without end.
                    if !wanted || depth >= 2 {
                        continue;
                    }
                    let child = self.manifest(route, &Reference::Digest(part.digest)).await?;
                    let child = Box::pin(self.walk_manifest(route, child, platform, depth + 1)).await?;
                    walked.children.push(child);
                }
            }
        }
        Ok(walked)
    }

    /// Make the image whole in the cache: walk it, then fetch every blob
    /// not stored yet (reading it through, as a client would).
    pub async fn warm(
        &self,
        route: &Route,
        reference: &Reference,
        platform: Option<&Platform>,
        progress: &(dyn Fn(WarmStep<'_>) + Send + Sync),
    ) -> Result<Warmed, CacheError> {
        let walked = self.walk(route, reference, platform).await?;
        let mut done = Warmed {
            digest: walked.manifest.digest.to_string(),
            ..Warmed::default()
        };
        let mut todo = vec![&walked];
        let mut seen = std::collections::HashSet::new();
        while let Some(w) = todo.pop() {
            done.manifests += 1;
            progress(WarmStep::Manifest {
                digest: &w.manifest.digest,
            });
            todo.extend(w.children.iter());
            for (digest, size) in &w.blobs {
                if !seen.insert(digest.clone()) {
                    continue;
                }
                done.blobs += 1;
                let blob = self.blob(route, digest).await?;
                if blob.is_stored() {
                    done.cached_blobs += 1;
                    done.cached_bytes = done.cached_bytes.saturating_add(blob.size().unwrap_or(*size));
                    progress(WarmStep::Cached { digest, size: *size });
                    continue;
                }
                let mut unstored = blob.is_passing_through();
                let commit = blob.commit_wait();
                progress(WarmStep::Fetching { digest, size: *size });
                let mut body = blob.range(0, None, ReadMode::Copied).await?;
                let mut got = 0u64;
                while let Some(piece) = body.next().await {
                    let piece = piece?;
                    got = got.saturating_add(piece.len() as u64);
                    progress(WarmStep::Bytes(piece.len() as u64));
                }
                // Durable before the next: a prefetch may exit right after.
                if let Some(commit) = commit {
                    unstored |= !commit.wait().await;
                }
                done.fetched_blobs += 1;
                done.fetched_bytes = done.fetched_bytes.saturating_add(got);
                if unstored {
                    done.unstored_blobs += 1;
                }
            }
        }
        Ok(done)
    }
}
