//! Errors of the cache layer. Cloneable (sources behind `Arc`) because one
//! failed upstream fetch is reported to every request that joined it.

use std::sync::Arc;

use thiserror::Error;

use crate::failure::FailureCause;
use crate::store::MetaError;
use crate::upstream::UpstreamError;

/// What kind of content a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Blob,
    Manifest,
}

impl std::fmt::Display for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Content::Blob => "blob",
            Content::Manifest => "manifest",
        })
    }
}

/// Worded as any "unknown" is, so the answer does not tell that berth has
/// the content under another name.
#[derive(Debug, Clone, Error)]
#[error("upstream {upstream} has no {content} {digest} under {repo} (it answered {answer})")]
pub struct NotInRepository {
    pub upstream: String,
    pub repo: String,
    pub digest: String,
    pub content: Content,
    /// What the upstream said: its status, or what its HEAD named.
    pub answer: String,
    pub status: Option<u16>,
}

#[derive(Debug, Clone, Error)]
pub enum CacheError {
    #[error("upstream {upstream}: {source}")]
    Upstream {
        upstream: String,
        #[source]
        source: Arc<UpstreamError>,
    },
    #[error("upstream {upstream} ended the blob after {got} of {expected} bytes")]
    Truncated { upstream: String, expected: u64, got: u64 },
    #[error("every client went away and cache.finish_abandoned is false")]
    Abandoned,
    #[error("every client went away and {0} other abandoned downloads are already being finished")]
    TooManyAbandoned(usize),
    #[error("upstream {upstream} sent more than {limit} bytes for a blob without announcing its length")]
    Oversized { upstream: String, limit: u64 },
    #[error("the blob download ended abnormally: {0}")]
    Crashed(String),
    /// With repository scoping: the upstream did not confirm that the
    /// repository holds content berth has stored for another one.
    #[error("{0}")]
    NotInRepository(Box<NotInRepository>),
    /// A by-tag "unknown" explained by the tag list (see `unknown.rs`).
    #[error("{0}")]
    Unknown(Box<super::unknown::UnknownReference>),
    /// A manifest names content in a way nothing can be pulled from.
    #[error("manifest {digest} cannot be walked: {reason}")]
    Invalid { digest: String, reason: String },
    #[error("cache storage: {0}")]
    Io(#[source] Arc<std::io::Error>),
    #[error("{0}")]
    Meta(#[source] Arc<MetaError>),
    #[error("{0}")]
    Lock(#[source] Arc<super::LockError>),
}

impl CacheError {
    /// Log this failure of the cache as one `storage_degraded` event: the
    /// pull went on without what could not be stored.
    pub(super) fn log_degraded(&self, events: &crate::events::Events, upstream: &str, repo: &str, reference: &str) {
        events.storage_degraded(self.cause(), upstream, repo, reference, &self.to_string());
    }

    pub fn upstream(upstream: &str, source: UpstreamError) -> Self {
        CacheError::Upstream {
            upstream: upstream.to_string(),
            source: Arc::new(source),
        }
    }

    pub fn cause(&self) -> FailureCause {
        match self {
            CacheError::Upstream { source, .. } => source.cause(),
            CacheError::Truncated { .. } => FailureCause::ConnectionReset,
            CacheError::Abandoned | CacheError::TooManyAbandoned(_) => FailureCause::ClientAborted,
            // What arrived cannot be the blob the digest names within the bound.
            CacheError::Oversized { .. } => FailureCause::DigestMismatch,
            CacheError::Crashed(_) => FailureCause::Internal,
            CacheError::NotInRepository(n) => match n.content {
                Content::Blob => FailureCause::BlobUnknown,
                Content::Manifest => FailureCause::ManifestUnknown,
            },
            CacheError::Unknown(u) => u.cause(),
            CacheError::Invalid { .. } => FailureCause::ManifestInvalid,
            CacheError::Io(e) if e.kind() == std::io::ErrorKind::StorageFull => FailureCause::DiskFull,
            CacheError::Io(_) | CacheError::Meta(_) | CacheError::Lock(_) => FailureCause::StorageError,
        }
    }

    /// The upstream's own trouble behind this error (see `UpstreamError::upstream_cause`).
    pub fn upstream_cause(&self) -> FailureCause {
        match self {
            CacheError::Upstream { source, .. } => source.upstream_cause(),
            other => other.cause(),
        }
    }

    /// The cache itself failed (disk full, I/O, metadata), not the upstream.
    pub fn is_storage(&self) -> bool {
        matches!(self, CacheError::Io(_) | CacheError::Meta(_))
    }

    pub fn upstream_name(&self) -> Option<&str> {
        match self {
            CacheError::Upstream { upstream, .. }
            | CacheError::Truncated { upstream, .. }
            | CacheError::Oversized { upstream, .. } => Some(upstream),
            CacheError::NotInRepository(n) => Some(&n.upstream),
            CacheError::Unknown(u) => Some(u.upstream()),
            _ => None,
        }
    }

    /// Upstream attempts behind this error (0: the upstream was not asked).
    pub fn attempts(&self) -> u32 {
        match self {
            CacheError::Upstream { source, .. } => source.attempts(),
            CacheError::Unknown(u) => u.source().attempts(),
            CacheError::Truncated { .. } | CacheError::NotInRepository(_) => 1,
            _ => 0,
        }
    }

    pub fn retry_after(&self) -> Option<u64> {
        match self {
            CacheError::Upstream { source, .. } => source.retry_after(),
            _ => None,
        }
    }

    /// More for the hint than the cause's own line: the closest tags.
    pub fn suggestion(&self) -> Option<String> {
        match self {
            CacheError::Unknown(u) => u.suggestion(),
            _ => None,
        }
    }

    pub fn ratelimit(&self) -> Option<String> {
        match self {
            CacheError::Upstream { source, .. } => source.ratelimit(),
            _ => None,
        }
    }

    pub fn upstream_status(&self) -> Option<u16> {
        match self {
            CacheError::Upstream { source, .. } => source.status(),
            CacheError::NotInRepository(n) => n.status,
            CacheError::Unknown(u) => u.source().status(),
            _ => None,
        }
    }
}

impl From<std::io::Error> for CacheError {
    fn from(e: std::io::Error) -> Self {
        CacheError::Io(Arc::new(e))
    }
}

impl From<MetaError> for CacheError {
    fn from(e: MetaError) -> Self {
        CacheError::Meta(Arc::new(e))
    }
}
