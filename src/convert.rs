//! OCI → Docker schema2 conversion, as pure functions over bytes.
//!
//! The output is deterministic: fixed structs (so fixed field order) written
//! with a fixed indent, so the same input always gives the same bytes and the
//! same digest. `CONVERSION_VERSION` names this algorithm; persisted
//! original → converted mappings are keyed by it, so a change to the output
//! format bumps it instead of contradicting digests handed out before.
//!
//! Blobs are never touched: config and layers keep their digests, so the
//! image ID is the one a new client gets from the OCI original.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::media::{DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2};

pub const CONVERSION_VERSION: u32 = 1;

const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const ATTESTATION_REF_TYPE: &str = "vnd.docker.reference.type";

/// Why an OCI manifest cannot be served as Docker schema2.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    #[error("layer {0} is zstd-compressed, which Docker schema2 cannot express")]
    ZstdLayer(String),
    #[error("layer {0} is encrypted")]
    EncryptedLayer(String),
    #[error("layer media type {0:?} has no Docker equivalent")]
    UnknownLayerType(String),
    #[error("config media type {0:?} is not an image config (an artifact)")]
    NonImageConfig(String),
    #[error("artifactType {0:?} is set (an artifact, not an image)")]
    Artifact(String),
    #[error("no child of the index can be converted")]
    NoConvertibleChild,
    #[error("the digest names the OCI original, which a client that asked for it by digest would reject if converted")]
    ByDigestNotAcceptable,
    #[error("manifest cannot be parsed: {0}")]
    Invalid(String),
}

impl Refusal {
    /// The stable reason name logged in the event.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::ZstdLayer(_) => "zstd_layer",
            Refusal::EncryptedLayer(_) => "encrypted_layer",
            Refusal::UnknownLayerType(_) => "unknown_layer_type",
            Refusal::NonImageConfig(_) => "non_image_config",
            Refusal::Artifact(_) => "artifact",
            Refusal::NoConvertibleChild => "no_convertible_child",
            Refusal::ByDigestNotAcceptable => "by_digest_not_acceptable",
            Refusal::Invalid(_) => "invalid_manifest",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub urls: Option<Vec<String>>,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: Option<HashMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(rename = "os.version", default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(rename = "os.features", default, skip_serializing_if = "Option::is_none")]
    pub os_features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciManifest {
    #[serde(default)]
    artifact_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct OciIndex {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DockerManifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: DockerDescriptor<'a>,
    layers: Vec<DockerDescriptor<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DockerDescriptor<'a> {
    media_type: &'a str,
    size: u64,
    digest: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    urls: Option<&'a Vec<String>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DockerList<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: Vec<ListEntry<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListEntry<'a> {
    media_type: &'a str,
    size: u64,
    digest: &'a str,
    platform: &'a Platform,
}

/// Docker's own indent (`json.MarshalIndent(m, "", "   ")`).
fn to_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"   ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    // Serialising these plain structs cannot fail.
    let _ = value.serialize(&mut ser);
    out
}

fn layer_type(d: &Descriptor) -> Result<&'static str, Refusal> {
    let t = d.media_type.as_str();
    Ok(match t {
        "application/vnd.oci.image.layer.v1.tar+gzip" | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        }
        "application/vnd.oci.image.layer.v1.tar" | "application/vnd.docker.image.rootfs.diff.tar" => {
            "application/vnd.docker.image.rootfs.diff.tar"
        }
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        }
        "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar" => {
            "application/vnd.docker.image.rootfs.foreign.diff.tar"
        }
        _ if t.contains("encrypted") => return Err(Refusal::EncryptedLayer(d.digest.clone())),
        _ if t.ends_with("+zstd") || t.contains("zstd") => {
            return Err(Refusal::ZstdLayer(d.digest.clone()));
        }
        _ => return Err(Refusal::UnknownLayerType(t.to_string())),
    })
}

/// Convert an OCI image manifest to Docker schema2 bytes.
pub fn convert_manifest(bytes: &[u8]) -> Result<Vec<u8>, Refusal> {
    let m: OciManifest = serde_json::from_slice(bytes).map_err(|e| Refusal::Invalid(e.to_string()))?;
    if let Some(t) = m.artifact_type.filter(|t| !t.is_empty()) {
        return Err(Refusal::Artifact(t));
    }
    if m.config.media_type != OCI_CONFIG && m.config.media_type != DOCKER_CONFIG {
        return Err(Refusal::NonImageConfig(m.config.media_type));
    }
    let layers = m
        .layers
        .iter()
        .map(|l| {
            let media_type = layer_type(l)?;
            let foreign = media_type.contains(".foreign.");
            Ok(DockerDescriptor {
                media_type,
                size: l.size,
                digest: &l.digest,
                // Only foreign layers carry URLs in schema2.
                urls: l.urls.as_ref().filter(|_| foreign),
            })
        })
        .collect::<Result<Vec<_>, Refusal>>()?;
    Ok(to_bytes(&DockerManifest {
        schema_version: 2,
        media_type: DOCKER_MANIFEST_V2,
        config: DockerDescriptor {
            media_type: DOCKER_CONFIG,
            size: m.config.size,
            digest: &m.config.digest,
            urls: None,
        },
        layers,
    }))
}

/// A child of an index, as the index names it.
pub fn index_children(bytes: &[u8]) -> Result<Vec<Descriptor>, Refusal> {
    let index: OciIndex = serde_json::from_slice(bytes).map_err(|e| Refusal::Invalid(e.to_string()))?;
    Ok(index.manifests)
}

/// Whether an index child is a build attestation (buildx), never an image.
pub fn is_attestation(d: &Descriptor) -> bool {
    let annotated = d
        .annotations
        .as_ref()
        .and_then(|a| a.get(ATTESTATION_REF_TYPE))
        .is_some_and(|t| t == "attestation-manifest");
    let unknown = d
        .platform
        .as_ref()
        .is_some_and(|p| p.os == "unknown" && p.architecture == "unknown");
    annotated || unknown
}

/// What became of one child of an index.
#[derive(Debug, Clone)]
pub enum ChildOutcome {
    /// Kept under this digest, size and type; `platform` read from the
    /// child's config when the index did not say.
    Kept {
        digest: String,
        size: u64,
        media_type: String,
        platform: Option<Platform>,
    },
    Dropped(Refusal),
}

/// Convert an OCI index to a Docker manifest list, given what became of each
/// child (by the child's original digest). Order is kept; dropped children and
/// children without a platform are left out.
pub fn convert_index(bytes: &[u8], outcomes: &HashMap<String, ChildOutcome>) -> Result<Vec<u8>, Refusal> {
    let children = index_children(bytes)?;
    let mut entries = Vec::new();
    for child in &children {
        let Some(ChildOutcome::Kept {
            digest,
            size,
            media_type,
            platform,
        }) = outcomes.get(&child.digest)
        else {
            continue;
        };
        let Some(platform) = child.platform.as_ref().or(platform.as_ref()) else {
            continue;
        };
        entries.push(ListEntry {
            media_type,
            size: *size,
            digest,
            platform,
        });
    }
    if entries.is_empty() {
        return Err(Refusal::NoConvertibleChild);
    }
    Ok(to_bytes(&DockerList {
        schema_version: 2,
        media_type: DOCKER_MANIFEST_LIST,
        manifests: entries,
    }))
}

/// The platform an image config declares (for index children without one).
pub fn platform_from_config(config: &[u8]) -> Option<Platform> {
    #[derive(Deserialize)]
    struct Config {
        architecture: String,
        os: String,
        #[serde(rename = "os.version", default)]
        os_version: Option<String>,
        #[serde(default)]
        variant: Option<String>,
    }
    let c: Config = serde_json::from_slice(config).ok()?;
    Some(Platform {
        architecture: c.architecture,
        os: c.os,
        os_version: c.os_version,
        os_features: None,
        variant: c.variant,
        features: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{OCI_INDEX, OCI_MANIFEST};

    fn oci(layers: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"sha256:c","size":7}},"layers":[{layers}],"annotations":{{"a":"b"}}}}"#
        )
    }

    #[test]
    fn manifest_maps_types_and_drops_annotations() {
        let m = oci(
            r#"{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:l","size":9,"annotations":{"x":"y"}}"#,
        );
        let out = convert_manifest(m.as_bytes()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["mediaType"], DOCKER_MANIFEST_V2);
        assert_eq!(v["config"]["mediaType"], DOCKER_CONFIG);
        assert_eq!(v["config"]["digest"], "sha256:c");
        assert_eq!(
            v["layers"][0]["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
        assert_eq!(v["layers"][0]["size"], 9);
        assert!(v.get("annotations").is_none() && v["layers"][0].get("annotations").is_none());
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("{\n   \"schemaVersion\": 2,\n   \"mediaType\""),
            "{text}"
        );
    }

    /// The exact bytes of algorithm version 1. Clients pin converted digests
    /// (RepoDigests, image@digest in manifests), so these bytes must never
    /// change under the same `CONVERSION_VERSION`: a change that breaks this
    /// test needs a new version, not a new expectation.
    #[test]
    fn version_1_bytes_are_pinned() {
        assert_eq!(CONVERSION_VERSION, 1);
        let input = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:d8ffaa7f0ea0dda43c853b9f4d83760f1656ffa0cd0c1a383f9f98ba896ee327","size":258},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:54da179c763ddd501097bb5697168373267f6107f0b4f78184d8e77b890ad315","size":1034069,"annotations":{"x":"y"}}],"annotations":{"org.opencontainers.image.created":"2026-01-01T00:00:00Z"}}"#;
        let expected = "{\n   \"schemaVersion\": 2,\n   \"mediaType\": \"application/vnd.docker.distribution.manifest.v2+json\",\n   \"config\": {\n      \"mediaType\": \"application/vnd.docker.container.image.v1+json\",\n      \"size\": 258,\n      \"digest\": \"sha256:d8ffaa7f0ea0dda43c853b9f4d83760f1656ffa0cd0c1a383f9f98ba896ee327\"\n   },\n   \"layers\": [\n      {\n         \"mediaType\": \"application/vnd.docker.image.rootfs.diff.tar.gzip\",\n         \"size\": 1034069,\n         \"digest\": \"sha256:54da179c763ddd501097bb5697168373267f6107f0b4f78184d8e77b890ad315\"\n      }\n   ]\n}";
        let out = convert_manifest(input).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), expected);

        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":500,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}},{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":600,"platform":{"architecture":"unknown","os":"unknown"}}]}"#;
        let outcomes = HashMap::from([
            (
                "sha256:aa".to_string(),
                ChildOutcome::Kept {
                    digest: "sha256:cc".into(),
                    size: 480,
                    media_type: DOCKER_MANIFEST_V2.into(),
                    platform: None,
                },
            ),
            (
                "sha256:bb".to_string(),
                ChildOutcome::Dropped(Refusal::NonImageConfig("application/vnd.in-toto+json".into())),
            ),
        ]);
        let expected = "{\n   \"schemaVersion\": 2,\n   \"mediaType\": \"application/vnd.docker.distribution.manifest.list.v2+json\",\n   \"manifests\": [\n      {\n         \"mediaType\": \"application/vnd.docker.distribution.manifest.v2+json\",\n         \"size\": 480,\n         \"digest\": \"sha256:cc\",\n         \"platform\": {\n            \"architecture\": \"arm64\",\n            \"os\": \"linux\",\n            \"variant\": \"v8\"\n         }\n      }\n   ]\n}";
        let out = convert_index(index, &outcomes).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn foreign_layers_keep_urls() {
        let m = oci(
            r#"{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip","digest":"sha256:l","size":9,"urls":["https://x/l"]}"#,
        );
        let v: serde_json::Value = serde_json::from_slice(&convert_manifest(m.as_bytes()).unwrap()).unwrap();
        assert_eq!(
            v["layers"][0]["mediaType"],
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        );
        assert_eq!(v["layers"][0]["urls"][0], "https://x/l");
    }

    #[test]
    fn refusals() {
        let zstd = oci(r#"{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"sha256:z","size":1}"#);
        assert_eq!(convert_manifest(zstd.as_bytes()).unwrap_err().reason(), "zstd_layer");
        let enc = oci(
            r#"{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip+encrypted","digest":"sha256:e","size":1}"#,
        );
        assert_eq!(
            convert_manifest(enc.as_bytes()).unwrap_err().reason(),
            "encrypted_layer"
        );
        let other = oci(r#"{"mediaType":"application/vnd.in-toto+json","digest":"sha256:i","size":1}"#);
        assert_eq!(
            convert_manifest(other.as_bytes()).unwrap_err().reason(),
            "unknown_layer_type"
        );
        let artifact = oci("").replace(OCI_CONFIG, "application/vnd.example.thing.v1+json");
        assert_eq!(
            convert_manifest(artifact.as_bytes()).unwrap_err().reason(),
            "non_image_config"
        );
        let typed = oci("").replacen("\"config\"", "\"artifactType\":\"application/x\",\"config\"", 1);
        assert_eq!(convert_manifest(typed.as_bytes()).unwrap_err().reason(), "artifact");
        assert_eq!(convert_manifest(b"[]").unwrap_err().reason(), "invalid_manifest");
    }

    #[test]
    fn index_keeps_order_and_drops_unconvertible() {
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:a","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:att","size":1,"platform":{{"architecture":"unknown","os":"unknown"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:b","size":1}}]}}"#
        );
        let children = index_children(index.as_bytes()).unwrap();
        assert!(is_attestation(&children[1]) && !is_attestation(&children[0]));
        let kept = |d: &str, p: Option<Platform>| ChildOutcome::Kept {
            digest: d.into(),
            size: 5,
            media_type: DOCKER_MANIFEST_V2.into(),
            platform: p,
        };
        let arm = Platform {
            architecture: "arm64".into(),
            os: "linux".into(),
            os_version: None,
            os_features: None,
            variant: Some("v8".into()),
            features: None,
        };
        let outcomes = HashMap::from([
            ("sha256:a".to_string(), kept("sha256:a2", None)),
            (
                "sha256:att".to_string(),
                ChildOutcome::Dropped(Refusal::UnknownLayerType("x".into())),
            ),
            ("sha256:b".to_string(), kept("sha256:b2", Some(arm))),
        ]);
        let out = convert_index(index.as_bytes(), &outcomes).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["mediaType"], DOCKER_MANIFEST_LIST);
        let m = v["manifests"].as_array().unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0]["digest"], "sha256:a2");
        assert_eq!(m[1]["digest"], "sha256:b2");
        assert_eq!(m[1]["platform"]["variant"], "v8");
        assert_eq!(
            convert_index(index.as_bytes(), &HashMap::new()).unwrap_err().reason(),
            "no_convertible_child"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const LAYER_TYPES: [&str; 4] = [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ];

        fn digest() -> impl Strategy<Value = String> {
            "[0-9a-f]{64}".prop_map(|h| format!("sha256:{h}"))
        }

        fn layer() -> impl Strategy<Value = serde_json::Value> {
            (
                digest(),
                0u64..u64::MAX / 2,
                0usize..LAYER_TYPES.len(),
                proptest::option::of("[a-z]{1,8}"),
            )
                .prop_map(|(d, size, t, ann)| {
                    let mut l = serde_json::json!({"mediaType": LAYER_TYPES[t], "digest": d, "size": size});
                    if let Some(a) = ann {
                        l["annotations"] = serde_json::json!({"k": a});
                        l["urls"] = serde_json::json!([format!("https://example.com/{a}")]);
                    }
                    l
                })
        }

        fn manifest() -> impl Strategy<Value = serde_json::Value> {
            (
                digest(),
                0u64..1 << 20,
                proptest::collection::vec(layer(), 0..8),
                any::<bool>(),
            )
                .prop_map(|(c, size, layers, annotated)| {
                    let mut m = serde_json::json!({
                        "schemaVersion": 2,
                        "mediaType": OCI_MANIFEST,
                        "config": {"mediaType": OCI_CONFIG, "digest": c, "size": size},
                        "layers": layers,
                    });
                    if annotated {
                        m["annotations"] = serde_json::json!({"org.opencontainers.image.created": "now"});
                    }
                    m
                })
        }

        proptest! {
            #[test]
            fn manifest_conversion_keeps_every_descriptor_and_is_stable(m in manifest()) {
                let input = serde_json::to_vec(&m).unwrap();
                let out = convert_manifest(&input).unwrap();
                prop_assert_eq!(&out, &convert_manifest(&input).unwrap());
                let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
                prop_assert_eq!(&v["schemaVersion"], 2);
                prop_assert_eq!(&v["mediaType"], DOCKER_MANIFEST_V2);
                prop_assert_eq!(&v["config"]["digest"], &m["config"]["digest"]);
                prop_assert_eq!(&v["config"]["size"], &m["config"]["size"]);
                let (inl, outl) = (m["layers"].as_array().unwrap(), v["layers"].as_array().unwrap());
                prop_assert_eq!(inl.len(), outl.len());
                for (i, o) in inl.iter().zip(outl) {
                    prop_assert_eq!(&i["digest"], &o["digest"]);
                    prop_assert_eq!(&i["size"], &o["size"]);
                    let t = o["mediaType"].as_str().unwrap();
                    prop_assert!(t.starts_with("application/vnd.docker.image.rootfs."));
                    prop_assert!(o.get("annotations").is_none());
                }
                prop_assert!(v.get("annotations").is_none());
            }

            #[test]
            fn index_conversion_keeps_kept_children_in_order(
                kept in proptest::collection::vec(
                    (digest(), 1u64..100_000, any::<bool>(), any::<bool>(), any::<bool>()),
                    1..6,
                )
            ) {
                // Each child: kept or dropped; its platform in the index or
                // not; its platform read from its config or not. A kept child
                // with no platform from either is left out (never guessed).
                let platform = |i: usize| serde_json::json!({"architecture": format!("arch{i}"), "os": "linux"});
                let from_config = |i: usize| Platform {
                    architecture: format!("cfg{i}"),
                    os: "linux".into(),
                    os_version: None,
                    os_features: None,
                    variant: None,
                    features: None,
                };
                let manifests: Vec<serde_json::Value> = kept
                    .iter()
                    .enumerate()
                    .map(|(i, (d, size, _, in_index, _))| {
                        let mut c = serde_json::json!({"mediaType": OCI_MANIFEST, "digest": d, "size": size});
                        if *in_index {
                            c["platform"] = platform(i);
                        }
                        c
                    })
                    .collect();
                let index = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})).unwrap();
                let outcomes: HashMap<String, ChildOutcome> = kept
                    .iter()
                    .enumerate()
                    .map(|(i, (d, size, keep, _, in_config))| {
                        let o = if *keep {
                            ChildOutcome::Kept {
                                digest: format!("{d}-c"),
                                size: size + 1,
                                media_type: DOCKER_MANIFEST_V2.into(),
                                platform: in_config.then(|| from_config(i)),
                            }
                        } else {
                            ChildOutcome::Dropped(Refusal::ZstdLayer(d.clone()))
                        };
                        (d.clone(), o)
                    })
                    .collect();
                let expected: Vec<(String, u64, serde_json::Value)> = kept
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, _, keep, in_index, in_config))| *keep && (*in_index || *in_config))
                    .map(|(i, (d, size, _, in_index, _))| {
                        let p = if *in_index {
                            platform(i)
                        } else {
                            serde_json::json!({"architecture": format!("cfg{i}"), "os": "linux"})
                        };
                        (format!("{d}-c"), size + 1, p)
                    })
                    .collect();
                match convert_index(&index, &outcomes) {
                    Ok(out) => {
                        prop_assert_eq!(&out, &convert_index(&index, &outcomes).unwrap());
                        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
                        prop_assert_eq!(&v["mediaType"], DOCKER_MANIFEST_LIST);
                        let got: Vec<(String, u64, serde_json::Value)> = v["manifests"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|e| (e["digest"].as_str().unwrap().to_string(), e["size"].as_u64().unwrap(), e["platform"].clone()))
                            .collect();
                        prop_assert_eq!(got, expected);
                    }
                    Err(r) => {
                        prop_assert!(expected.is_empty());
                        prop_assert_eq!(r.reason(), "no_convertible_child");
                    }
                }
            }
        }
    }
}
