//! Resolving an IMAGE as a pull would, on the upstream's first endpoint that
//! passed every step: the manifest (for an index, every child manifest, one
//! per platform), then a HEAD of every blob each manifest names, its config
//! and its layers.

use std::time::Instant;

use serde::Deserialize;

use super::local_steps::size;
use super::{Step, Steps};
use crate::failure::FailureCause;
use crate::image_ref::ImageRef;
use crate::reference::{Digest, Reference, RepoName};
use crate::upstream::{ProbeError, Upstream};

/// Children of an index doctor follows; real indexes have a dozen or two.
const MAX_CHILDREN: usize = 64;

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    size: Option<u64>,
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

#[derive(Deserialize)]
struct SchemaOneLayer {
    #[serde(rename = "blobSum")]
    blob_sum: String,
}

/// What doctor reads of a manifest: children for an index, blobs otherwise.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    fs_layers: Option<Vec<SchemaOneLayer>>,
}

pub async fn resolve(upstream: &Upstream, healthy: Option<usize>, image: &ImageRef) -> Vec<Step> {
    let mut s = Steps::new(format!("image {}", image.text));
    if upstream.is_offline() {
        s.push(
            "manifest",
            super::Outcome::Info,
            None,
            format!(
                "{} is offline: berth serves this image only from its cache",
                upstream.name
            ),
            Instant::now(),
        );
        return s.into_steps();
    }
    let Some(index) = healthy else {
        s.skip_all(
            &["manifest"],
            &format!("not tried: no endpoint of {} passed every step", upstream.name),
        );
        return s.into_steps();
    };
    let via = upstream.endpoints()[index].as_str().trim_end_matches('/').to_string();
    let started = Instant::now();
    let Some(top) = manifest(
        upstream,
        index,
        &image.repo,
        &image.reference,
        "manifest",
        &mut s,
        started,
    )
    .await
    else {
        s.skip_all(&["blobs"], "not tried: manifest failed");
        return s.into_steps();
    };
    if let Some(last) = s.steps.last_mut() {
        last.detail = format!("{} (via {via})", last.detail);
    }
    match top.manifests {
        Some(children) => {
            for child in children.iter().take(MAX_CHILDREN) {
                let platform = child.platform.as_ref().map_or_else(
                    || "unknown platform".to_string(),
                    |p| match &p.variant {
                        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                        None => format!("{}/{}", p.os, p.architecture),
                    },
                );
                let started = Instant::now();
                let name = format!("manifest {platform}");
                let digest = match Digest::parse(&child.digest) {
                    Ok(d) => d,
                    Err(e) => {
                        s.fail(
                            &name,
                            FailureCause::ManifestInvalid,
                            format!("{}: {e}", child.digest),
                            started,
                        );
                        continue;
                    }
                };
                let reference = Reference::Digest(digest);
                if let Some(m) = manifest(upstream, index, &image.repo, &reference, &name, &mut s, started).await {
                    blobs(upstream, index, &image.repo, &m, &platform, &mut s).await;
                }
            }
            if children.len() > MAX_CHILDREN {
                s.push(
                    "manifests",
                    super::Outcome::Info,
                    None,
                    format!("{} more children not checked", children.len() - MAX_CHILDREN),
                    Instant::now(),
                );
            }
        }
        None => blobs(upstream, index, &image.repo, &top, "", &mut s).await,
    }
    s.into_steps()
}

/// GET one manifest and parse what doctor needs of it; the step is recorded.
async fn manifest(
    upstream: &Upstream,
    index: usize,
    repo: &RepoName,
    reference: &Reference,
    name: &str,
    s: &mut Steps,
    started: Instant,
) -> Option<Manifest> {
    let got = match upstream.probe_manifest(index, repo, reference).await {
        Ok(m) => m,
        Err(e) => {
            let (cause, detail) = explain(upstream, repo, reference, e).await;
            s.fail(name, cause, detail, started);
            return None;
        }
    };
    match serde_json::from_slice::<Manifest>(&got.bytes) {
        Ok(m) => {
            s.pass(name, format!("{} {}", got.media_type, got.digest), started);
            Some(m)
        }
        Err(e) => {
            s.fail(
                name,
                FailureCause::ManifestInvalid,
                format!("{}: {e}", got.digest),
                started,
            );
            None
        }
    }
}

/// A by-tag MANIFEST_UNKNOWN told apart as a pull tells it: the tag list
/// answering NAME_UNKNOWN means the repository does not exist; otherwise the
/// closest existing tags are named.
async fn explain(upstream: &Upstream, repo: &RepoName, reference: &Reference, e: ProbeError) -> (FailureCause, String) {
    let detail = format!("{repo}:{reference}: {e}");
    if e.cause() != FailureCause::ManifestUnknown {
        return (e.cause(), detail);
    }
    let Reference::Tag(tag) = reference else {
        return (e.cause(), detail);
    };
    match upstream.tags(repo).await {
        Ok(tags) => {
            let near = crate::suggest::closest(tag.as_str(), &tags);
            if near.is_empty() {
                (FailureCause::ManifestUnknown, detail)
            } else {
                (
                    FailureCause::ManifestUnknown,
                    format!("{detail}; did you mean {}?", near.join(", ")),
                )
            }
        }
        Err(list) if list.cause() == FailureCause::NameUnknown => (
            FailureCause::NameUnknown,
            format!("{repo}: the repository is not known upstream (its tag list answers NAME_UNKNOWN)"),
        ),
        Err(_) => (FailureCause::ManifestUnknown, detail),
    }
}

/// HEAD the config and every layer of `m`.
async fn blobs(upstream: &Upstream, index: usize, repo: &RepoName, m: &Manifest, platform: &str, s: &mut Steps) {
    let prefix = if platform.is_empty() {
        String::new()
    } else {
        format!("{platform} ")
    };
    let mut wanted: Vec<(String, &str, Option<u64>)> = Vec::new();
    if let Some(c) = &m.config {
        wanted.push((format!("{prefix}blob config"), &c.digest, c.size));
    }
    let layers: Vec<(&str, Option<u64>)> = match (&m.layers, &m.fs_layers) {
        (Some(l), _) => l.iter().map(|d| (d.digest.as_str(), d.size)).collect(),
        (None, Some(l)) => l.iter().map(|d| (d.blob_sum.as_str(), None)).collect(),
        (None, None) => Vec::new(),
    };
    let count = layers.len();
    for (i, (digest, size)) in layers.into_iter().enumerate() {
        wanted.push((format!("{prefix}blob layer {}/{count}", i + 1), digest, size));
    }
    for (name, digest, expected) in wanted {
        let started = Instant::now();
        let digest = match Digest::parse(digest) {
            Ok(d) => d,
            Err(e) => {
                s.fail(&name, FailureCause::ManifestInvalid, format!("{digest}: {e}"), started);
                continue;
            }
        };
        match upstream.probe_blob(index, repo, &digest).await {
            Ok(got) if expected.is_some() && got.is_some() && got != expected => s.fail(
                &name,
                FailureCause::ManifestInvalid,
                format!(
                    "{digest}: the upstream has {} bytes, the manifest says {}",
                    got.unwrap_or_default(),
                    expected.unwrap_or_default()
                ),
                started,
            ),
            Ok(got) => {
                let shown = got.map_or_else(|| "size not sent".to_string(), size);
                s.pass(&name, format!("{digest} {shown}"), started);
            }
            Err(e) => s.fail(&name, e.cause(), format!("{digest}: {e}"), started),
        }
    }
}
