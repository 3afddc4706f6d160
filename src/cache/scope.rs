//! Repository scope. With it on, content stored under its digest is served
//! under a repository only when that repository is known to hold it: the
//! upstream served it under that name, or confirmed it once with a HEAD
//! under that name. Knowing the digest of a private layer then opens
//! nothing under another name, although the store keeps one copy per digest.
//!
//! What is known is a link (upstream, repository, digest) in the
//! `MetaStore`. A missing link costs one upstream HEAD, shared by concurrent
//! identical checks; an upstream that says "unknown" gets its unknown
//! answered, one that cannot be asked gets its error: content that could
//! not be confirmed is never served. Off (the default), nothing here asks
//! the upstream or writes a link.

use super::error::{CacheError, Content, NotInRepository};
use super::{Cache, is_unknown};
use crate::reference::{Digest, Reference};
use crate::routing::Route;

impl Cache {
    /// Serve stored content under a repository only when it is known to hold
    /// it (off by default). On when clients are told apart (`[auth]`), since
    /// only then may one repository be closed to a client another is open to.
    pub fn scope_by_repository(mut self, on: bool) -> Self {
        self.scoped = on;
        self
    }

    /// Record that the route's repository holds `digest` (with scoping on).
    /// Failing to is logged, not fatal: the link is learned again.
    pub(super) async fn link(&self, route: &Route, digest: &Digest) {
        if !self.scoped || self.linked(route, digest).await {
            return;
        }
        let upstream = &route.upstream.name;
        if let Err(e) = self.meta.put_link(upstream, &route.repo, digest).await {
            CacheError::from(e).log_degraded(&self.events, upstream, route.repo.as_str(), &digest.to_string());
        }
    }

    /// An unreadable link counts as missing: it costs a HEAD, never an opening.
    async fn linked(&self, route: &Route, digest: &Digest) -> bool {
        self.meta
            .has_link(&route.upstream.name, &route.repo, digest)
            .await
            .unwrap_or(false)
    }

    /// Whether the stored (or in-flight) blob `digest` may be served under
    /// the route: scoping off, linked, or confirmed now by the upstream's
    /// blob HEAD under that name.
    pub(super) async fn admit_blob(&self, route: &Route, digest: &Digest) -> Result<(), CacheError> {
        if !self.scoped || self.linked(route, digest).await {
            return Ok(());
        }
        match self.blob_head(route, digest).await {
            Ok(_) => {
                self.link(route, digest).await;
                Ok(())
            }
            Err(e) => Err(not_in_repository(e, route, digest, Content::Blob)),
        }
    }

    /// The same for a stored manifest: the upstream's HEAD by digest under
    /// the route's name must name that digest.
    pub(super) async fn admit_manifest(&self, route: &Route, digest: &Digest) -> Result<(), CacheError> {
        if !self.scoped || self.linked(route, digest).await {
            return Ok(());
        }
        let head = self
            .manifest_head(route, &Reference::Digest(digest.clone()))
            .await
            .map_err(|e| not_in_repository(e, route, digest, Content::Manifest))?;
        if head.digest.as_ref() == Some(digest) {
            self.link(route, digest).await;
            return Ok(());
        }
        let answer = match head.digest {
            Some(other) => format!("200 naming {other}"),
            None => "200 without a Docker-Content-Digest".to_string(),
        };
        Err(CacheError::NotInRepository(Box::new(NotInRepository {
            upstream: route.upstream.name.clone(),
            repo: route.repo.to_string(),
            digest: digest.to_string(),
            content: Content::Manifest,
            answer,
            status: Some(200),
        })))
    }
}

/// The upstream's "unknown" for a check becomes the unknown of the content
/// asked for (a HEAD's 404 has no body to say which); anything else (the
/// upstream down, refusing berth) stays what it was.
fn not_in_repository(e: CacheError, route: &Route, digest: &Digest, content: Content) -> CacheError {
    if !is_unknown(&e) {
        return e;
    }
    let status = e.upstream_status();
    CacheError::NotInRepository(Box::new(NotInRepository {
        upstream: route.upstream.name.clone(),
        repo: route.repo.to_string(),
        digest: digest.to_string(),
        content,
        answer: status.map_or_else(|| e.cause().name().to_string(), |s| s.to_string()),
        status,
    }))
}
