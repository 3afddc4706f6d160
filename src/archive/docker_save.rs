//! Classic `docker save` archives: a `manifest.json` listing, per image, its
//! config file, its tags (`RepoTags`) and its layer tars — no registry
//! manifest. berth writes a Docker schema2 manifest for each (the config
//! blob is the config file's bytes, each layer tar is a blob as it is,
//! gzip-typed only if it is gzipped), so the image pulls by tag; its digest
//! is berth's, not the origin registry's, and never can be: the origin's
//! manifest (and often its compressed layers) is not in the archive. Only
//! imported when asked for (`--docker-save`), after `DOCKER_SAVE_WARNING`.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use super::ArchiveError;
use super::import::{Plan, PlannedImage, Source};
use super::safe_tar::{FileInfo, Scanned};
use crate::image_ref::ImageRef;
use crate::media::DOCKER_MANIFEST_V2;
use crate::reference::{Digest, Reference};
use crate::upstream::Upstream;

pub const DOCKER_SAVE_WARNING: &str = "warning: a `docker save` archive has no registry manifests; berth writes new ones, so \
     the digests will differ from the origin registry's: nodes can pull these images by tag, but a pull by \
     the origin's digest (image@sha256:…) will not find them (the `docker load` trap)";

const CONFIG_TYPE: &str = "application/vnd.docker.container.image.v1+json";
const LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
const LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Saved {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn file<'a>(scanned: &'a Scanned, name: &str) -> Result<&'a FileInfo, ArchiveError> {
    let normal = super::safe_tar::normalise(name.as_bytes()).map_err(|p| ArchiveError::Entry {
        entry: name.to_string(),
        problem: format!("manifest.json names {p}"),
    })?;
    scanned.files.get(&normal).ok_or_else(|| ArchiveError::Entry {
        entry: name.to_string(),
        problem: "named by manifest.json but not in the archive (missing blob)".into(),
    })
}

fn descriptor(media_type: &str, f: &FileInfo) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "size": f.size, "digest": f.digest.to_string()})
}

/// The images of a `docker save` archive, with manifests berth made.
pub(super) fn plan(
    scanned: &Scanned,
    upstreams: &[Arc<Upstream>],
    upstream: Option<&str>,
) -> Result<Plan, ArchiveError> {
    let listed = scanned
        .files
        .get("manifest.json")
        .and_then(|f| f.bytes.clone())
        .ok_or_else(|| ArchiveError::Invalid("manifest.json is too large".into()))?;
    let saved: Vec<Saved> = serde_json::from_slice(&listed).map_err(|e| ArchiveError::Entry {
        entry: "manifest.json".into(),
        problem: format!("not a docker save manifest: {e}"),
    })?;
    let configs: Vec<_> = upstreams.iter().map(|u| u.config.clone()).collect();
    let mut plan = Plan::default();
    for image in saved {
        let config = file(scanned, &image.config)?;
        let mut layers = Vec::new();
        for l in &image.layers {
            let f = file(scanned, l)?;
            layers.push(descriptor(if f.gzip { LAYER_GZIP } else { LAYER_TAR }, f));
            plan.blobs.insert(
                f.digest.clone(),
                Source::File {
                    offset: f.offset,
                    size: f.size,
                },
            );
        }
        plan.blobs.insert(
            config.digest.clone(),
            Source::File {
                offset: config.offset,
                size: config.size,
            },
        );
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_V2,
            "config": descriptor(CONFIG_TYPE, config),
            "layers": layers,
        });
        let bytes = Bytes::from(serde_json::to_vec(&manifest).map_err(|e| ArchiveError::Invalid(e.to_string()))?);
        let digest = Digest::sha256_of(&bytes);
        plan.blobs.insert(digest.clone(), Source::Made(bytes.clone()));
        let tags = image.repo_tags.unwrap_or_default();
        if tags.is_empty() {
            return Err(ArchiveError::Invalid(format!(
                "image {} of manifest.json has no RepoTags: nothing to name it by",
                image.config
            )));
        }
        for tag in tags {
            let r = ImageRef::parse(&tag, &configs)?;
            let name = match upstream {
                Some(u) => u.to_string(),
                None => upstreams.get(r.upstream).map(|u| u.name.clone()).unwrap_or_default(),
            };
            let Reference::Tag(t) = r.reference else {
                return Err(ArchiveError::Invalid(format!("RepoTags entry {tag:?} is not a tag")));
            };
            plan.images.push(PlannedImage {
                shown: format!("{name}/{}:{t}@{digest} (digest made by berth)", r.repo),
                upstream: name,
                repo: r.repo,
                tag: Some(t.to_string()),
                manifests: vec![(digest.clone(), DOCKER_MANIFEST_V2.to_string(), bytes.clone())],
                referrer: false,
            });
        }
    }
    Ok(plan)
}
