//! The OCI image layout inside a berth archive: `oci-layout`, `index.json`
//! and `blobs/<algorithm>/<hex>`. `index.json` has one descriptor per
//! exported image, named with `org.opencontainers.image.ref.name` (what
//! `skopeo … oci-archive:FILE:REF` looks up) and berth's own annotations
//! (upstream, repository, tag), and a `io.github.berth` section with the
//! referrers lists per subject, so an import files everything by name.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const OCI_LAYOUT_FILE: &str = "oci-layout";
pub const OCI_LAYOUT_BODY: &str = "{\"imageLayoutVersion\":\"1.0.0\"}";
pub const INDEX_FILE: &str = "index.json";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's (and docker's) name for an image in an OCI archive.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
pub const UPSTREAM: &str = "io.github.berth.upstream";
pub const REPOSITORY: &str = "io.github.berth.repository";
pub const TAG: &str = "io.github.berth.tag";
/// Set when only one platform of an index was exported.
pub const PLATFORM: &str = "io.github.berth.platform";

/// The tar path of a blob.
pub fn blob_path(digest: &crate::reference::Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm().as_str(), digest.hex())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    /// berth's section; other tools ignore a field they do not know.
    #[serde(default, rename = "io.github.berth", skip_serializing_if = "Option::is_none")]
    pub berth: Option<BerthSection>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BerthSection {
    #[serde(default)]
    pub referrers: Vec<ReferrersEntry>,
}

/// The referrers of one subject under one repository, as the cache served
/// them (an OCI image index, as text, byte for byte).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReferrersEntry {
    pub upstream: String,
    pub repository: String,
    pub subject: String,
    pub index: String,
}

/// The digests an (unfiltered) referrers index lists.
pub fn referrer_digests(index: &[u8]) -> Result<Vec<String>, String> {
    #[derive(Deserialize)]
    struct Listed {
        manifests: Vec<Descriptor>,
    }
    let listed: Listed = serde_json::from_slice(index).map_err(|e| format!("not a referrers index: {e}"))?;
    Ok(listed.manifests.into_iter().map(|d| d.digest).collect())
}
