//! The OCI 1.1 referrers of a subject digest (signatures, SBOMs,
//! attestations), cached like a tag: the upstream's referrers index when it
//! has the API; otherwise one built from the tag schema, the OCI fallback
//! tag `sha256-<hex>` (an index listing the referrers) and cosign's
//! `sha256-<hex>.sig`, `.att`, `.sbom`, each manifest fetched through the
//! cache so it is pullable by digest afterwards. The unfiltered index is
//! recorded per (upstream, repository, subject): served without asking
//! within `tag_ttl`, asked again after it, and served stale (logged as
//! `upstream_degraded`) while the upstream cannot answer.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Cache, CacheError, kept, key, serves_stale};
use crate::media::OCI_INDEX;
use crate::reference::{Digest, Reference, Tag};
use crate::routing::Route;
use crate::store::now_secs;

/// Cosign's tag suffixes, after `sha256-<hex>`.
const COSIGN_SUFFIXES: [&str; 3] = [".sig", ".att", ".sbom"];
/// Referrers listed by one fallback index that berth fetches; more are left out.
const MAX_REFERRERS: usize = 512;

/// An OCI image index of referrers, as served unfiltered, with its descriptors.
#[derive(Debug, Clone)]
pub struct ReferrersIndex {
    bytes: Bytes,
    manifests: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Listed {
    manifests: Vec<serde_json::Value>,
}

impl ReferrersIndex {
    /// None when `bytes` is not an index listing manifests.
    fn parse(bytes: Bytes) -> Option<Self> {
        let listed: Listed = serde_json::from_slice(&bytes).ok()?;
        Some(Self {
            bytes,
            manifests: listed.manifests,
        })
    }

    fn build(descriptors: &[Descriptor]) -> Self {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": descriptors,
        });
        let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
        Self {
            bytes: Bytes::from(index.to_string()),
            manifests,
        }
    }

    /// The index as served: every referrer.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// An index of only the referrers whose `artifactType` is `artifact_type`.
    pub fn filtered(&self, artifact_type: &str) -> Bytes {
        let kept: Vec<&serde_json::Value> = self
            .manifests
            .iter()
            .filter(|d| d["artifactType"].as_str() == Some(artifact_type))
            .collect();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": kept,
        });
        Bytes::from(index.to_string())
    }

    pub fn len(&self) -> usize {
        self.manifests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.manifests.is_empty()
    }
}

/// One referrer, as the referrers API describes it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<String, String>>,
}

/// What a referrer manifest says about itself.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Fields {
    artifact_type: Option<String>,
    config: Option<Config>,
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Config {
    media_type: Option<String>,
}

/// The descriptor of a fetched manifest: its `artifactType`, else its
/// config's media type (cosign's signatures have only that).
fn describe(m: &super::CachedManifest) -> Descriptor {
    let fields: Option<Fields> = serde_json::from_slice(&m.bytes).ok();
    let (artifact_type, annotations) = match fields {
        Some(f) => (
            f.artifact_type
                .filter(|t| !t.is_empty())
                .or_else(|| f.config.and_then(|c| c.media_type)),
            f.annotations.filter(|a| !a.is_empty()),
        ),
        None => (None, None),
    };
    Descriptor {
        media_type: m.media_type.clone(),
        digest: m.digest.to_string(),
        size: m.bytes.len() as u64,
        artifact_type,
        annotations,
    }
}

impl Cache {
    /// The referrers of `subject` under the route (unfiltered).
    pub async fn referrers(&self, route: &Route, subject: &Digest) -> Result<ReferrersIndex, CacheError> {
        let upstream = &route.upstream;
        let repo = &route.repo;
        let known = self
            .meta
            .referrers(&upstream.name, repo, subject)
            .await?
            .and_then(|rec| Some((ReferrersIndex::parse(Bytes::from(rec.index))?, rec.fetched_at)));
        if let Some((index, fetched_at)) = &known
            && (upstream.is_offline() || now_secs().saturating_sub(*fetched_at) < self.tag_ttl.as_secs())
        {
            self.events.metrics.hit("referrers");
            return Ok(index.clone());
        }
        self.events.metrics.miss("referrers");
        let fresh = self
            .flights
            .referrers
            .get(
                key(route, &subject.to_string()),
                |r| kept(r, Duration::ZERO),
                || self.fetch_referrers(route, subject),
            )
            .await;
        match (fresh, known) {
            (Ok(index), _) => {
                if let Err(e) = self
                    .meta
                    .put_referrers(&upstream.name, repo, subject, &String::from_utf8_lossy(index.bytes()))
                    .await
                {
                    CacheError::from(e).log_degraded(&self.events, &upstream.name, repo.as_str(), &subject.to_string());
                }
                Ok(index)
            }
            (Err(e), Some((index, _))) if serves_stale(&e) => {
                self.events.upstream_degraded(
                    e.upstream_cause(),
                    &upstream.name,
                    repo.as_str(),
                    &subject.to_string(),
                    "upstream cannot list the referrers; serving the cached list",
                    &format!("{e}; served {} referrers", index.len()),
                );
                Ok(index)
            }
            (Err(e), _) => Err(e),
        }
    }

    async fn fetch_referrers(&self, route: &Route, subject: &Digest) -> Result<ReferrersIndex, CacheError> {
        let upstream = &route.upstream;
        let answer = upstream
            .referrers(&route.repo, subject)
            .await
            .map_err(|e| CacheError::upstream(&upstream.name, e))?;
        match answer.and_then(ReferrersIndex::parse) {
            Some(index) => Ok(index),
            None => self.referrers_from_tags(route, subject).await,
        }
    }

    /// The referrers the tag schema names: the OCI fallback index's entries
    /// first, then cosign's signature, attestation and SBOM, once each.
    async fn referrers_from_tags(&self, route: &Route, subject: &Digest) -> Result<ReferrersIndex, CacheError> {
        let tags = self.tags(route).await?;
        let fallback = format!("{}-{}", subject.algorithm().as_str(), subject.hex());
        let mut found: Vec<Descriptor> = Vec::new();
        if tags.contains(&fallback)
            && let Some(tag) = tag_reference(&fallback)
            && let Some(index) = self.referrer(route, &tag).await?
        {
            let listed = ReferrersIndex::parse(index.bytes.clone())
                .map(|i| i.manifests)
                .unwrap_or_default();
            if listed.len() > MAX_REFERRERS {
                tracing::warn!(upstream = %route.upstream.name, repo = %route.repo, tag = %fallback, listed = listed.len(), "referrers fallback index lists more than berth fetches; the rest left out");
            }
            for d in listed.iter().take(MAX_REFERRERS) {
                let Some(digest) = d["digest"].as_str().and_then(|d| Digest::parse(d).ok()) else {
                    continue;
                };
                if let Some(m) = self.referrer(route, &Reference::Digest(digest)).await? {
                    found.push(describe(&m));
                }
            }
        }
        for suffix in COSIGN_SUFFIXES {
            let tag = format!("{fallback}{suffix}");
            if tags.contains(&tag)
                && let Some(tag) = tag_reference(&tag)
                && let Some(m) = self.referrer(route, &tag).await?
            {
                found.push(describe(&m));
            }
        }
        let mut seen = std::collections::HashSet::new();
        found.retain(|d| seen.insert(d.digest.clone()));
        Ok(ReferrersIndex::build(&found))
    }

    /// A referrer's manifest through the cache; None when the upstream no
    /// longer has it (a tag removed after the list was read).
    async fn referrer(
        &self,
        route: &Route,
        reference: &Reference,
    ) -> Result<Option<super::CachedManifest>, CacheError> {
        match self.manifest(route, reference).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if matches!(e.cause(), crate::failure::FailureCause::ManifestUnknown) => {
                tracing::debug!(upstream = %route.upstream.name, repo = %route.repo, reference = %reference, error = %e, "referrer listed but not found; left out");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// A tag-schema name as a tag; None when it is not a valid one (a sha512
/// subject's name is longer than the tag grammar allows).
fn tag_reference(tag: &str) -> Option<Reference> {
    Tag::parse(tag).ok().map(Reference::Tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(json: serde_json::Value, media_type: &str) -> super::super::CachedManifest {
        let bytes = Bytes::from(json.to_string());
        super::super::CachedManifest {
            digest: Digest::sha256_of(&bytes),
            bytes,
            media_type: media_type.to_string(),
        }
    }

    #[test]
    fn a_descriptor_takes_artifact_type_else_the_config_type() {
        let sbom = manifest(
            serde_json::json!({"schemaVersion": 2, "artifactType": "application/spdx+json",
                "config": {"mediaType": "application/vnd.oci.empty.v1+json"},
                "annotations": {"a": "b"}}),
            "application/vnd.oci.image.manifest.v1+json",
        );
        let d = describe(&sbom);
        assert_eq!(d.artifact_type.as_deref(), Some("application/spdx+json"));
        assert_eq!(d.annotations.map(|a| a.len()), Some(1));
        assert_eq!(d.size, sbom.bytes.len() as u64);
        let sig = manifest(
            serde_json::json!({"schemaVersion": 2,
                "config": {"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json"}}),
            "application/vnd.oci.image.manifest.v1+json",
        );
        let d = describe(&sig);
        assert_eq!(
            d.artifact_type.as_deref(),
            Some("application/vnd.dev.cosign.simplesigning.v1+json")
        );
        assert!(d.annotations.is_none());
    }

    #[test]
    fn a_filter_keeps_only_its_artifact_type() {
        let index = ReferrersIndex::build(&[
            Descriptor {
                media_type: "m".into(),
                digest: "sha256:1".into(),
                size: 1,
                artifact_type: Some("application/spdx+json".into()),
                annotations: None,
            },
            Descriptor {
                media_type: "m".into(),
                digest: "sha256:2".into(),
                size: 2,
                artifact_type: None,
                annotations: None,
            },
        ]);
        assert_eq!(index.len(), 2);
        let only: serde_json::Value =
            serde_json::from_slice(&index.filtered("application/spdx+json")).unwrap_or_default();
        assert_eq!(only["manifests"].as_array().map(Vec::len), Some(1));
        assert_eq!(only["manifests"][0]["digest"], "sha256:1");
        assert_eq!(only["mediaType"], OCI_INDEX);
        let none: serde_json::Value = serde_json::from_slice(&index.filtered("x")).unwrap_or_default();
        assert_eq!(none["manifests"], serde_json::json!([]));
    }
}
