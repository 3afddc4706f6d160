//! What berth asks an upstream, and what the answers mean: manifests fetched
//! whole (they are small) and verified against their digest, manifest and
//! blob HEADs, the start of a blob download, tag lists walked page by page
//! within bounds. Sending is `send.rs`'s job; blob bodies are `blob_stream.rs`'s.

use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue, RANGE};
use serde::Deserialize;

use super::limit::BlobResponse;
use super::response::{announced_length, check_status, header_digest, header_str, next_page, read_limited};
use super::{MAX_MANIFEST_SIZE, MAX_TAG_LIST_BYTES, MAX_TAGS, ManifestHead, Upstream, UpstreamError, UpstreamManifest};
use crate::media::ALL_MANIFEST_TYPES;
use crate::reference::{Digest, Reference, RepoName};

/// Page size asked of the upstream when listing tags.
const TAG_PAGE_SIZE: usize = 1000;
/// Bound on tag-list pages followed, against a Link loop.
const MAX_TAG_PAGES: usize = 100;

#[derive(Deserialize)]
struct TagList {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

impl Upstream {
    /// GET (or HEAD) a manifest by tag or digest, asking for every known type.
    pub async fn manifest_head(&self, repo: &RepoName, reference: &Reference) -> Result<ManifestHead, UpstreamError> {
        let (resp, _slot) = self
            .send(Method::HEAD, repo, &format!("manifests/{reference}"), manifest_accept())
            .await?;
        let resp = check_status(resp).await?;
        Ok(ManifestHead {
            digest: header_digest(resp.headers()),
            media_type: header_str(resp.headers(), CONTENT_TYPE.as_str()),
        })
    }

    /// GET a manifest by tag or digest; by digest, the bytes must hash to
    /// it, by tag to the digest the upstream announced (if it did).
    pub async fn manifest(&self, repo: &RepoName, reference: &Reference) -> Result<UpstreamManifest, UpstreamError> {
        let (resp, _slot) = self
            .send(Method::GET, repo, &format!("manifests/{reference}"), manifest_accept())
            .await?;
        let resp = check_status(resp).await?;
        verified_manifest(resp, reference).await
    }

    /// Ask for a blob from byte `from`; the answer holds one of the
    /// upstream's concurrency slots until its body is done.
    pub(super) async fn blob_response(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: u64,
    ) -> Result<BlobResponse, UpstreamError> {
        let mut headers = HeaderMap::new();
        if from > 0
            && let Ok(v) = HeaderValue::from_str(&format!("bytes={from}-"))
        {
            headers.insert(RANGE, v);
        }
        let (resp, slot) = self
            .send(Method::GET, repo, &format!("blobs/{digest}"), headers)
            .await?;
        Ok(BlobResponse::new(check_status(resp).await?, slot))
    }

    /// The size of a blob, from a HEAD.
    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, UpstreamError> {
        let (resp, _slot) = self
            .send(Method::HEAD, repo, &format!("blobs/{digest}"), HeaderMap::new())
            .await?;
        let resp = check_status(resp).await?;
        Ok(announced_length(resp.headers()))
    }

    /// Every tag of a repository, following the upstream's pagination, within
    /// bounds: at most `MAX_TAGS` tags and `MAX_TAG_LIST_BYTES` of pages; a
    /// `Link` seen before (a loop) or into another repository ends the walk.
    pub async fn tags(&self, repo: &RepoName) -> Result<Vec<String>, UpstreamError> {
        let mut tags = Vec::new();
        let mut tail = format!("tags/list?n={TAG_PAGE_SIZE}");
        let mut seen = std::collections::HashSet::new();
        let mut bytes = 0usize;
        for _ in 0..MAX_TAG_PAGES {
            seen.insert(tail.clone());
            let (resp, _slot) = self.send(Method::GET, repo, &tail, HeaderMap::new()).await?;
            let resp = check_status(resp).await?;
            let next = next_page(resp.headers(), repo);
            let left = MAX_TAG_LIST_BYTES.saturating_sub(bytes);
            let body = read_limited(resp, left.min(MAX_MANIFEST_SIZE))
                .await
                .map_err(|e| match e {
                    UpstreamError::ManifestInvalid(_) => too_many_tags(repo),
                    other => other,
                })?;
            bytes = bytes.saturating_add(body.len());
            let page: TagList =
                serde_json::from_slice(&body).map_err(|e| UpstreamError::ManifestInvalid(format!("tag list: {e}")))?;
            tags.extend(page.tags.unwrap_or_default());
            if tags.len() > MAX_TAGS {
                return Err(too_many_tags(repo));
            }
            match next {
                Some(n) if seen.contains(&n) => {
                    tracing::debug!(upstream = %self.name, repo = %repo, link = %n, "tag list Link points at a page already read; stopped");
                    break;
                }
                Some(n) => tail = n,
                None => break,
            }
        }
        Ok(tags)
    }
}

/// Read a manifest answer; by digest, the bytes must hash to it, by tag to
/// the digest the upstream announced (if it did).
pub(super) async fn verified_manifest(
    resp: reqwest::Response,
    reference: &Reference,
) -> Result<UpstreamManifest, UpstreamError> {
    let announced = header_digest(resp.headers());
    let content_type = header_str(resp.headers(), CONTENT_TYPE.as_str());
    let bytes = read_limited(resp, MAX_MANIFEST_SIZE).await?;
    let expected = match reference {
        Reference::Digest(d) => Some(d.clone()),
        Reference::Tag(_) => announced,
    };
    let digest = match expected {
        Some(d) => {
            let actual = crate::reference::digest_of(d.algorithm(), &bytes);
            if actual != d {
                return Err(UpstreamError::DigestMismatch {
                    expected: d.to_string(),
                    actual: actual.to_string(),
                });
            }
            d
        }
        None => Digest::sha256_of(&bytes),
    };
    let media_type =
        crate::manifest::media_type(&bytes, content_type.as_deref()).map_err(UpstreamError::ManifestInvalid)?;
    Ok(UpstreamManifest {
        bytes,
        media_type,
        digest,
    })
}

fn too_many_tags(repo: &RepoName) -> UpstreamError {
    UpstreamError::ManifestInvalid(format!(
        "the tag list of {repo} is larger than berth accepts ({MAX_TAGS} tags, {} MiB)",
        MAX_TAG_LIST_BYTES >> 20
    ))
}

pub(super) fn manifest_accept() -> HeaderMap {
    let mut h = HeaderMap::new();
    for t in ALL_MANIFEST_TYPES {
        h.append(ACCEPT, HeaderValue::from_static(t));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    mod fuzz {
        use super::*;
        use crate::upstream::response::{SpecErrors, parse_retry_after};
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(crate::fuzz_config())]

            /// The upstream's tag list body: arbitrary bytes never panic; a
            /// list of strings comes back as it was sent.
            #[test]
            fn fuzz_tag_list_body(
                bytes in proptest::collection::vec(any::<u8>(), 0..128),
                tags in proptest::collection::vec(any::<String>(), 0..8),
            ) {
                let _ = serde_json::from_slice::<TagList>(&bytes);
                let _ = serde_json::from_slice::<SpecErrors>(&bytes);
                let body = serde_json::to_vec(&serde_json::json!({"name": "x", "tags": tags})).unwrap_or_default();
                let page: TagList = serde_json::from_slice(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(page.tags, Some(tags));
            }

            /// The `Link` header of a tag page: any text never panics, and a
            /// next page is only ever a `tags/list` tail taken from the header.
            #[test]
            fn fuzz_next_page_link(
                link in prop_oneof![
                    any::<String>(),
                    "<(https?://[a-z]{1,5})?(/v2/|/v2/library/busybox/)?[a-z/]{0,20}(/tags/list)?[?a-z=&0-9]{0,12}>; rel=\"next\"",
                ],
                retry_after in any::<String>(),
            ) {
                let repo = RepoName::parse("library/busybox").map_err(|e| TestCaseError::fail(e.to_string()))?;
                let mut h = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_str(&link) {
                    h.insert("link", v);
                }
                if let Some(tail) = next_page(&h, &repo) {
                    prop_assert!(tail.starts_with("tags/list") && link.contains(&tail), "{link:?}: {tail:?}");
                    prop_assert!(link.contains("/v2/library/busybox/tags/list"));
                }
                let _ = parse_retry_after(&retry_after);
            }
        }
    }
}
