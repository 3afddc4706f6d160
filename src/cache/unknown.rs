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
use crate::upstream::UpstreamError;

/// How many existing tags a hint names at most.
const SUGGESTIONS: usize = 3;

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

/// Up to `SUGGESTIONS` tags near `wanted`: by edit distance, a shared prefix
/// breaking ties, and only those close enough to be a slip (at most a third
/// of the longer tag, and at least 1, 2 for tags of 3+ characters).
pub fn closest(wanted: &str, tags: &[String]) -> Vec<String> {
    let mut near: Vec<(usize, usize, &String)> = tags
        .iter()
        .filter(|t| t.as_str() != wanted)
        .filter_map(|t| {
            let distance = strsim::levenshtein(wanted, t);
            let longer = wanted.chars().count().max(t.chars().count());
            let allowed = (longer / 3).max(if longer >= 3 { 2 } else { 1 });
            let prefix = wanted.chars().zip(t.chars()).take_while(|(a, b)| a == b).count();
            (distance <= allowed).then_some((distance, usize::MAX - prefix, t))
        })
        .collect();
    near.sort();
    near.into_iter().take(SUGGESTIONS).map(|(_, _, t)| t.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::closest;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn a_slip_finds_the_tags_it_was_meant_to_be() {
        let all = tags(&["1.35", "1.36", "1.36.1", "latest", "musl", "stable", "1.37-uclibc"]);
        assert_eq!(closest("1.3", &all), ["1.35", "1.36"]);
        assert_eq!(closest("lastest", &all), ["latest"]);
        assert_eq!(closest("1.36.2", &all), ["1.36.1", "1.36"]);
        assert_eq!(closest("stabel", &all), ["stable"]);
    }

    #[test]
    fn nothing_close_suggests_nothing() {
        let all = tags(&["1.35", "latest"]);
        assert!(closest("bookworm-slim", &all).is_empty());
        assert!(closest("x", &tags(&["latest"])).is_empty());
        assert!(closest("v1", &[]).is_empty());
    }
}
