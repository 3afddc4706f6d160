//! A by-tag MANIFEST_UNKNOWN split into what a person can fix: the
//! repository does not exist (`name_unknown`), or the tag does not
//! (`manifest_unknown`, with the closest existing tags). CNCF Distribution
//! answers MANIFEST_UNKNOWN for both, so the tag list decides: it answers
//! NAME_UNKNOWN for a repository it does not have. The list comes through the
//! cache's shared, briefly kept tag-list flight: a burst of pulls of a
//! misspelt tag costs one upstream walk.

use std::sync::Arc;

use thiserror::Error;

use super::{Cache, CacheError};
use crate::failure::FailureCause;
use crate::routing::Route;
use crate::suggest::closest;
use crate::upstream::UpstreamError;

#[derive(Debug, Clone, Error)]
pub enum UnknownReference {
    #[error("repository {repo} is not known to upstream {upstream} (its tag list answers NAME_UNKNOWN)")]
    Repository {
        upstream: String,
        repo: String,
        source: Arc<UpstreamError>,
    },
    #[error("tag {tag} is not in {repo} on upstream {upstream}{}", did_you_mean(suggestions))]
    Tag {
        upstream: String,
        repo: String,
        tag: String,
        /// The closest existing tags, closest first (at most `SUGGESTIONS`).
        suggestions: Vec<String>,
        source: Arc<UpstreamError>,
    },
}

impl UnknownReference {
    pub fn cause(&self) -> FailureCause {
        match self {
            UnknownReference::Repository { .. } => FailureCause::NameUnknown,
            UnknownReference::Tag { .. } => FailureCause::ManifestUnknown,
        }
    }

    pub fn upstream(&self) -> &str {
        match self {
            UnknownReference::Repository { upstream, .. } | UnknownReference::Tag { upstream, .. } => upstream,
        }
    }

    /// The upstream's answer to the manifest request.
    pub fn source(&self) -> &UpstreamError {
        match self {
            UnknownReference::Repository { source, .. } | UnknownReference::Tag { source, .. } => source,
        }
    }

    /// "did you mean 1.36, 1.35?", for the hint.
    pub fn suggestion(&self) -> Option<String> {
        match self {
            UnknownReference::Tag { suggestions, .. } if !suggestions.is_empty() => {
                Some(did_you_mean(suggestions).trim_start_matches("; ").to_string())
            }
            _ => None,
        }
    }
}

fn did_you_mean(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        return String::new();
    }
    format!("; did you mean {}?", suggestions.join(", "))
}

impl Cache {
    /// Explain an upstream's MANIFEST_UNKNOWN for `tag` by the repository's
    /// tag list. Any other error, or a tag list that cannot be had, leaves
    /// the error as it was.
    pub(super) async fn explain_unknown_tag(&self, route: &Route, tag: &str, e: CacheError) -> CacheError {
        let CacheError::Upstream { upstream, source } = &e else {
            return e;
        };
        if source.cause() != FailureCause::ManifestUnknown {
            return e;
        }
        let explained = match self.tags(route).await {
            Ok(tags) => UnknownReference::Tag {
                upstream: upstream.clone(),
                repo: route.repo.to_string(),
                tag: tag.to_string(),
                suggestions: closest(tag, &tags),
                source: source.clone(),
            },
            Err(list) if list.cause() == FailureCause::NameUnknown => UnknownReference::Repository {
                upstream: upstream.clone(),
                repo: route.repo.to_string(),
                source: source.clone(),
            },
            Err(_) => return e,
        };
        CacheError::Unknown(Box::new(explained))
    }
}
