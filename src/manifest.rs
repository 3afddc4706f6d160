//! The little berth needs to know about a manifest's JSON: that it is a
//! manifest at all, and its media type. Manifests are stored and served as the
//! upstream's exact bytes; this never re-serialises them.

use serde::Deserialize;

use crate::media::{DOCKER_MANIFEST_V1, DOCKER_MANIFEST_V1_SIGNED};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    schema_version: Option<u32>,
    media_type: Option<String>,
    signatures: Option<serde_json::Value>,
}

/// The media type of a manifest: its own `mediaType` field, else the
/// `Content-Type` the upstream sent, else schema1 by `schemaVersion`.
/// An error says why the bytes are not a manifest.
pub fn media_type(bytes: &[u8], content_type: Option<&str>) -> Result<String, String> {
    let env: Envelope = serde_json::from_slice(bytes).map_err(|e| format!("not a JSON manifest: {e}"))?;
    let Some(version) = env.schema_version else {
        return Err("no schemaVersion field".into());
    };
    if let Some(t) = env.media_type.filter(|t| !t.is_empty()) {
        return Ok(t);
    }
    let content_type = content_type
        .map(|c| c.split(';').next().unwrap_or_default().trim())
        .filter(|c| !c.is_empty() && *c != "application/json" && *c != "text/plain");
    match (content_type, version) {
        (Some(c), _) => Ok(c.to_string()),
        (None, 1) if env.signatures.is_some() => Ok(DOCKER_MANIFEST_V1_SIGNED.into()),
        (None, 1) => Ok(DOCKER_MANIFEST_V1.into()),
        (None, _) => Err("no mediaType field and no Content-Type".into()),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    digest: String,
    #[serde(default)]
    size: u64,
    platform: Option<DescriptorPlatform>,
}

#[derive(Deserialize)]
struct DescriptorPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    variant: Option<String>,
}

/// What pulling a manifest whole needs next: child manifests (an index) or
/// blobs (config and layers), with what the manifest says of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub digest: crate::reference::Digest,
    pub size: u64,
    pub kind: ContentKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentKind {
    Blob,
    /// A child of an index, with its platform if it names one.
    Manifest {
        platform: Option<(String, String, Option<String>)>,
    },
}

/// The content a manifest names: its children for an index or a list, its
/// config and layers (schema1: `fsLayers`) otherwise. Unparseable digests
/// are an error: a manifest naming content that cannot exist cannot be
/// pulled whole.
pub fn content(bytes: &[u8]) -> Result<Vec<Content>, String> {
    let parts: Parts = serde_json::from_slice(bytes).map_err(|e| format!("not a JSON manifest: {e}"))?;
    let digest = |d: &str| crate::reference::Digest::parse(d).map_err(|e| format!("{d:?}: {e}"));
    let mut out = Vec::new();
    for m in parts.manifests {
        out.push(Content {
            digest: digest(&m.digest)?,
            size: m.size,
            kind: ContentKind::Manifest {
                platform: m.platform.map(|p| (p.os, p.architecture, p.variant)),
            },
        });
    }
    for b in parts.config.into_iter().chain(parts.layers) {
        out.push(Content {
            digest: digest(&b.digest)?,
            size: b.size,
            kind: ContentKind::Blob,
        });
    }
    for l in parts.fs_layers {
        out.push(Content {
            digest: digest(&l.blob_sum)?,
            size: 0,
            kind: ContentKind::Blob,
        });
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|c| seen.insert(c.digest.clone()));
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaV1Layer {
    blob_sum: String,
}

/// The parts of a manifest that name other content.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Parts {
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    /// An index's or a manifest list's children.
    #[serde(default)]
    manifests: Vec<Descriptor>,
    /// Schema1's layers.
    #[serde(default)]
    fs_layers: Vec<SchemaV1Layer>,
}

/// The content a manifest needs to be pulled whole: config and layers, or an
/// index's child manifests (schema1: its `fsLayers`). Not `subject`: a
/// signature does not keep the image it signs. Digests that do not parse are
/// left out (nothing stored could have them), so unreadable JSON gives none.
pub fn references(bytes: &[u8]) -> Vec<crate::reference::Digest> {
    let Ok(parts) = serde_json::from_slice::<Parts>(bytes) else {
        return Vec::new();
    };
    let descriptors = parts.config.into_iter().chain(parts.layers).chain(parts.manifests);
    let mut found: Vec<crate::reference::Digest> = descriptors
        .map(|d| d.digest)
        .chain(parts.fs_layers.into_iter().map(|l| l.blob_sum))
        .filter_map(|d| crate::reference::Digest::parse(&d).ok())
        .collect();
    found.sort_unstable_by_key(|d| d.to_string());
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{OCI_INDEX, OCI_MANIFEST};

    #[test]
    fn type_from_field_then_header() {
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        assert_eq!(media_type(m, Some("application/json")).unwrap(), OCI_INDEX);
        let m = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        assert_eq!(media_type(m, Some(OCI_MANIFEST)).unwrap(), OCI_MANIFEST);
        assert!(media_type(m, None).is_err());
    }

    #[test]
    fn references_of_manifests_indexes_and_schema1() {
        let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"sha256:{a}"}},"layers":[{{"digest":"sha256:{b}"}},{{"digest":"sha256:{a}"}}],"subject":{{"digest":"sha256:{c}"}}}}"#
        );
        let got: Vec<String> = references(m.as_bytes()).iter().map(|d| d.to_string()).collect();
        assert_eq!(
            got,
            [format!("sha256:{a}"), format!("sha256:{b}")],
            "deduplicated, subject left out"
        );
        let index = format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"sha256:{c}"}},{{"digest":"nonsense"}}]}}"#);
        assert_eq!(references(index.as_bytes()).len(), 1);
        let v1 = format!(r#"{{"schemaVersion":1,"fsLayers":[{{"blobSum":"sha256:{b}"}}]}}"#);
        assert_eq!(references(v1.as_bytes()).len(), 1);
        assert!(references(b"<html>").is_empty());
    }

    #[test]
    fn rejects_non_manifests() {
        assert!(media_type(b"<html>", None).is_err());
        assert!(media_type(b"{}", Some(OCI_MANIFEST)).is_err());
        assert!(media_type(b"[1,2]", Some(OCI_MANIFEST)).is_err());
    }
}
