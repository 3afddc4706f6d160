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
    fn rejects_non_manifests() {
        assert!(media_type(b"<html>", None).is_err());
        assert!(media_type(b"{}", Some(OCI_MANIFEST)).is_err());
        assert!(media_type(b"[1,2]", Some(OCI_MANIFEST)).is_err());
    }
}
