//! What berth asks an upstream, and what the answers mean: manifests fetched
//! whole (they are small) and verified against their digest, manifest and
//! blob HEADs, the start of a blob download, tag lists walked page by page
//! within bounds. Sending is `send.rs`'s job; blob bodies are `blob_stream.rs`'s.

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue, RANGE};
use serde::Deserialize;

use super::limit::BlobResponse;
use super::response::{announced_length, check_status, header_digest, header_str, next_page, read_limited};
use super::{MAX_MANIFEST_SIZE, MAX_TAG_LIST_BYTES, MAX_TAGS, ManifestHead, Upstream, UpstreamError, UpstreamManifest};
use crate::media::{ALL_MANIFEST_TYPES, OCI_INDEX};
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

    /// The OCI 1.1 referrers of `subject`, unfiltered: the index the
    /// upstream answered (bounded like a manifest, and only an OCI image
    /// index), or None when the upstream has no referrers API: a 404 that is
    /// not NAME_UNKNOWN (Distribution 2.x has no such route), 405 or 400.
    pub async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Option<Bytes>, UpstreamError> {
        let mut accept = HeaderMap::new();
        accept.insert(ACCEPT, HeaderValue::from_static(OCI_INDEX));
        let (resp, _slot) = self
            .send(Method::GET, repo, &format!("referrers/{subject}"), accept)
            .await?;
        let resp = match check_status(resp).await {
            Ok(resp) => resp,
            Err(UpstreamError::Status { status: 404, code, .. }) if code.as_deref() != Some("NAME_UNKNOWN") => {
                return Ok(None);
            }
            Err(UpstreamError::Status { status: 400 | 405, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let content_type = header_str(resp.headers(), CONTENT_TYPE.as_str());
        let bytes = read_limited(resp, MAX_MANIFEST_SIZE).await?;
        referrers_index(&bytes, content_type.as_deref()).map_err(UpstreamError::ManifestInvalid)?;
        Ok(Some(bytes))
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEnvelope {
    media_type: Option<String>,
    manifests: Vec<serde_json::Value>,
}

/// Whether a referrers answer is an OCI image index: its `mediaType` (or,
/// without one, the Content-Type) says so and it lists `manifests`.
fn referrers_index(bytes: &[u8], content_type: Option<&str>) -> Result<(), String> {
    let index: IndexEnvelope =
        serde_json::from_slice(bytes).map_err(|e| format!("referrers answer is not an image index: {e}"))?;
    let content_type = content_type.map(|c| c.split(';').next().unwrap_or_default().trim());
    match index.media_type.as_deref().or(content_type) {
        Some(OCI_INDEX) => Ok(()),
        other => Err(format!(
            "referrers answer is {}, not {OCI_INDEX} ({} descriptors)",
            other.unwrap_or("untyped"),
            index.manifests.len()
        )),
    }
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

impl Upstream {
    /// GET `path` (absolute, e.g. `/v2/_berth/cluster/in-use`) of the first
    /// endpoint, with this client's credentials, once, at most `limit`
    /// bytes: for berth's own replica-to-replica calls, which are answered
    /// by a peer, not a registry (no token dance, no retries: the caller
    /// decides what a peer that does not answer means).
    pub async fn internal_get(&self, path: &str, limit: usize) -> Result<Bytes, UpstreamError> {
        let Some(url) = self.endpoints.first().and_then(|e| e.join(path).ok()) else {
            return Err(UpstreamError::ManifestInvalid(format!("no URL for {path}")));
        };
        // A peer that hangs must not hold up the caller for good.
        let mut req = self.http.get(url).timeout(std::time::Duration::from_secs(30));
        if let Some(creds) = &self.credentials {
            req = req.basic_auth(&creds.username, Some(&creds.password));
        }
        let resp = req.send().await.map_err(UpstreamError::Http)?;
        let resp = check_status(resp).await?;
        read_limited(resp, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_oci_index_is_a_referrers_answer() {
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        assert!(referrers_index(index, None).is_ok());
        let untyped = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(referrers_index(untyped, Some("application/vnd.oci.image.index.v1+json; charset=utf-8")).is_ok());
        assert!(referrers_index(untyped, Some("application/json")).is_err());
        let list = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#;
        assert!(referrers_index(list, None).is_err());
        assert!(referrers_index(b"not json", None).is_err());
        assert!(referrers_index(br#"{"mediaType":"application/vnd.oci.image.index.v1+json"}"#, None).is_err());
    }

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
