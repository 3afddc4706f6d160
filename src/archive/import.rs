//! `berth import`: pass 1 (`safe_tar::scan`) checks every entry and hashes
//! every file, writing nothing; the plan made from it names every image,
//! its manifests (children first) and the blobs it needs, and fails if any
//! is missing, mismatched or unparseable. Only then does pass 2 commit the
//! blobs (read back from the archive and hashed again by the cache's
//! verified commit), then record, image by image, manifests, links, the tag
//! and the referrers lists. An archive that fails any check leaves nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::ArchiveError;
use super::layout::{self, Index};
use super::safe_tar::{FileInfo, Scanned, scan};
use crate::cache::Cache;
use crate::manifest::{ContentKind, content};
use crate::reference::{Digest, RepoName};
use crate::upstream::Upstream;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImportOptions {
    /// File everything under this upstream instead of the archive's.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Accept a classic `docker save` archive (new digests).
    #[serde(default)]
    pub docker_save: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImportSummary {
    pub images: Vec<String>,
    pub manifests: usize,
    pub referrers: usize,
    pub blobs_new: usize,
    pub blobs_present: usize,
    /// Bytes of the blobs committed now.
    pub bytes_new: u64,
    /// Set for a `docker save` archive: the digests berth made.
    pub docker_save: bool,
}

impl ImportSummary {
    pub fn render(&self) -> String {
        let mut out = String::new();
        for i in &self.images {
            out.push_str(&format!("imported  {i}\n"));
        }
        out.push_str(&format!(
            "import: {} images, {} manifests ({} referrers), {} blobs with the manifests: {} new ({}), {} already present\n",
            self.images.len(),
            self.manifests,
            self.referrers,
            self.blobs_new.saturating_add(self.blobs_present),
            self.blobs_new,
            crate::units::format_size(self.bytes_new),
            self.blobs_present,
        ));
        out
    }
}

/// Where a blob's bytes come from.
#[derive(Debug, Clone)]
pub(super) enum Source {
    /// A file of the archive: `size` bytes at `offset`.
    File { offset: u64, size: u64 },
    /// Made by berth (`docker save` manifests).
    Made(Bytes),
}

/// One image to file, its manifests children first.
#[derive(Debug, Clone)]
pub(super) struct PlannedImage {
    pub shown: String,
    pub upstream: String,
    pub repo: RepoName,
    pub tag: Option<String>,
    pub manifests: Vec<(Digest, String, Bytes)>,
    pub referrer: bool,
}

#[derive(Debug, Default)]
pub(super) struct Plan {
    pub blobs: HashMap<Digest, Source>,
    pub images: Vec<PlannedImage>,
    pub referrers: Vec<(String, RepoName, Digest, String)>,
}

fn file_source(f: &FileInfo) -> Source {
    Source::File {
        offset: f.offset,
        size: f.size,
    }
}

/// Check `upstream` is configured; the name as configured.
fn configured(upstream: &str, upstreams: &[Arc<Upstream>]) -> Result<String, ArchiveError> {
    if upstreams.iter().any(|u| u.name == upstream) {
        return Ok(upstream.to_string());
    }
    let names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
    Err(ArchiveError::UnknownUpstream(upstream.to_string(), names.join(", ")))
}

/// The blob files of an OCI layout, each checked against its name.
fn blob_files(scanned: &Scanned) -> Result<HashMap<Digest, FileInfo>, ArchiveError> {
    let mut blobs = HashMap::new();
    for (name, info) in &scanned.files {
        let Some(rest) = name.strip_prefix("blobs/") else {
            continue;
        };
        let bad = |problem: String| ArchiveError::Entry {
            entry: name.clone(),
            problem,
        };
        let digest = rest
            .split_once('/')
            .and_then(|(alg, hex)| Digest::parse(&format!("{alg}:{hex}")).ok())
            .ok_or_else(|| bad("refused: not blobs/<algorithm>/<hex>".into()))?;
        if info.digest != digest {
            return Err(bad(format!(
                "digest mismatch: its bytes hash to {}, not to the digest it is named by",
                info.digest
            )));
        }
        blobs.insert(digest, info.clone());
    }
    Ok(blobs)
}

struct OciPlanner<'a> {
    blobs: &'a HashMap<Digest, FileInfo>,
    plan: Plan,
}

impl OciPlanner<'_> {
    fn manifest_bytes(&self, digest: &Digest, named_by: &str) -> Result<Bytes, ArchiveError> {
        let info = self.blobs.get(digest).ok_or_else(|| {
            ArchiveError::Invalid(format!(
                "{named_by} names manifest {digest}, which the archive lacks (missing blob)"
            ))
        })?;
        info.bytes.clone().ok_or_else(|| {
            ArchiveError::Invalid(format!(
                "manifest {digest} is {} bytes: too large for a manifest",
                info.size
            ))
        })
    }

    /// The manifests under `digest`, children first, and the blobs they need.
    fn walk(
        &mut self,
        digest: &Digest,
        media_type: &str,
        named_by: &str,
        partial: bool,
        depth: u8,
        out: &mut Vec<(Digest, String, Bytes)>,
    ) -> Result<(), ArchiveError> {
        let bytes = self.manifest_bytes(digest, named_by)?;
        let parts = content(&bytes).map_err(|e| ArchiveError::Invalid(format!("manifest {digest}: {e}")))?;
        let here = format!("manifest {digest}");
        for part in parts {
            let present = self.blobs.get(&part.digest);
            match (&part.kind, present) {
                (_, Some(info)) if info.size != part.size => {
                    return Err(ArchiveError::Invalid(format!(
                        "{here} gives {} a size of {}; the archive's is {} bytes",
                        part.digest, part.size, info.size
                    )));
                }
                (ContentKind::Blob, Some(info)) => {
                    self.plan.blobs.insert(part.digest.clone(), file_source(info));
                }
                (ContentKind::Blob, None) => {
                    return Err(ArchiveError::Invalid(format!(
                        "{here} references blob {}, which the archive lacks (missing blob)",
                        part.digest
                    )));
                }
                (ContentKind::Manifest { .. }, Some(_)) if depth < 2 => {
                    let child_type = crate::manifest::media_type(&self.manifest_bytes(&part.digest, &here)?, None)
                        .unwrap_or_else(|_| media_type.to_string());
                    self.walk(&part.digest, &child_type, &here, partial, depth.saturating_add(1), out)?;
                }
                // Only the platforms asked for were exported.
                (ContentKind::Manifest { .. }, None) if partial => {}
                (ContentKind::Manifest { .. }, _) => {
                    return Err(ArchiveError::Invalid(format!(
                        "{here} references manifest {}, which the archive lacks (missing blob)",
                        part.digest
                    )));
                }
            }
        }
        if let Some(info) = self.blobs.get(digest) {
            self.plan.blobs.insert(digest.clone(), file_source(info));
        }
        let media_type =
            crate::manifest::media_type(&bytes, Some(media_type)).unwrap_or_else(|_| media_type.to_string());
        out.push((digest.clone(), media_type, bytes));
        Ok(())
    }
}

/// Where an image of `index.json` is filed: berth's annotations, else the
/// name containerd or docker gave it.
fn image_name(
    annotations: &BTreeMap<String, String>,
    upstreams: &[Arc<Upstream>],
    digest: &Digest,
) -> Result<(String, RepoName, Option<String>), ArchiveError> {
    if let (Some(upstream), Some(repo)) = (annotations.get(layout::UPSTREAM), annotations.get(layout::REPOSITORY)) {
        let repo = RepoName::parse(repo).map_err(|e| ArchiveError::Invalid(format!("{}: {e}", layout::REPOSITORY)))?;
        return Ok((upstream.clone(), repo, annotations.get(layout::TAG).cloned()));
    }
    let Some(name) = annotations
        .get(layout::CONTAINERD_NAME)
        .or_else(|| annotations.get(layout::REF_NAME))
    else {
        return Err(ArchiveError::Invalid(format!(
            "index.json: image {digest} has no name (no {} or {} annotation)",
            layout::UPSTREAM,
            layout::CONTAINERD_NAME
        )));
    };
    let configs: Vec<_> = upstreams.iter().map(|u| u.config.clone()).collect();
    let r = crate::image_ref::ImageRef::parse(name, &configs)?;
    let upstream = upstreams.get(r.upstream).map(|u| u.name.clone()).unwrap_or_default();
    let tag = match r.reference {
        crate::reference::Reference::Tag(t) => Some(t.to_string()),
        crate::reference::Reference::Digest(_) => None,
    };
    Ok((upstream, r.repo, tag))
}

fn oci_plan(scanned: &Scanned, upstreams: &[Arc<Upstream>], options: &ImportOptions) -> Result<Plan, ArchiveError> {
    let index_bytes = scanned
        .files
        .get(layout::INDEX_FILE)
        .and_then(|f| f.bytes.clone())
        .ok_or_else(|| ArchiveError::Invalid("no index.json".into()))?;
    let index: Index = serde_json::from_slice(&index_bytes).map_err(|e| ArchiveError::Entry {
        entry: layout::INDEX_FILE.into(),
        problem: format!("not an OCI image index: {e}"),
    })?;
    let blobs = blob_files(scanned)?;
    let mut planner = OciPlanner {
        blobs: &blobs,
        plan: Plan::default(),
    };
    let pick = |archived: &str| configured(options.upstream.as_deref().unwrap_or(archived), upstreams);
    for d in &index.manifests {
        let digest = Digest::parse(&d.digest).map_err(|e| ArchiveError::Invalid(format!("index.json: {e}")))?;
        let (upstream, repo, tag) = image_name(&d.annotations, upstreams, &digest)?;
        let upstream = pick(&upstream)?;
        let partial = d.annotations.contains_key(layout::PLATFORM);
        let mut manifests = Vec::new();
        planner.walk(&digest, &d.media_type, "index.json", partial, 0, &mut manifests)?;
        let shown = match &tag {
            Some(t) => format!("{upstream}/{repo}:{t}@{digest}"),
            None => format!("{upstream}/{repo}@{digest}"),
        };
        planner.plan.images.push(PlannedImage {
            shown,
            upstream,
            repo,
            tag,
            manifests,
            referrer: false,
        });
    }
    for entry in index.berth.map(|b| b.referrers).unwrap_or_default() {
        let invalid = |e: String| ArchiveError::Invalid(format!("referrers of {}: {e}", entry.subject));
        let upstream = pick(&entry.upstream)?;
        let repo = RepoName::parse(&entry.repository).map_err(|e| invalid(e.to_string()))?;
        let subject = Digest::parse(&entry.subject).map_err(|e| invalid(e.to_string()))?;
        for d in layout::referrer_digests(entry.index.as_bytes()).map_err(invalid)? {
            let digest = Digest::parse(&d).map_err(|e| invalid(e.to_string()))?;
            let mut manifests = Vec::new();
            let named_by = format!("the referrers list of {subject}");
            planner.walk(&digest, crate::media::OCI_MANIFEST, &named_by, false, 2, &mut manifests)?;
            planner.plan.images.push(PlannedImage {
                shown: format!("{upstream}/{repo}@{digest}"),
                upstream: upstream.clone(),
                repo: repo.clone(),
                tag: None,
                manifests,
                referrer: true,
            });
        }
        planner.plan.referrers.push((upstream, repo, subject, entry.index));
    }
    if planner.plan.images.is_empty() {
        return Err(ArchiveError::Invalid("index.json lists no image".into()));
    }
    Ok(planner.plan)
}

/// Import the archive at `path` into the cache.
pub async fn import(
    cache: &Cache,
    upstreams: &[Arc<Upstream>],
    path: &Path,
    options: &ImportOptions,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<ImportSummary, ArchiveError> {
    if let Some(u) = &options.upstream {
        configured(u, upstreams)?;
    }
    let owned = path.to_path_buf();
    let scanned = tokio::task::spawn_blocking(move || scan(&owned))
        .await
        .map_err(|e| ArchiveError::Invalid(format!("the archive reader failed: {e}")))??;
    progress(&format!("{}: {} files checked", path.display(), scanned.files.len()));
    let oci = scanned.files.contains_key(layout::INDEX_FILE);
    let plan = if oci {
        oci_plan(&scanned, upstreams, options)?
    } else if scanned.files.contains_key("manifest.json") {
        if !options.docker_save {
            return Err(ArchiveError::DockerSaveRefused);
        }
        super::docker_save::plan(&scanned, upstreams, options.upstream.as_deref())?
    } else {
        return Err(ArchiveError::Invalid(
            "neither index.json (an OCI layout) nor manifest.json (docker save) in it".into(),
        ));
    };
    let mut summary = ImportSummary {
        docker_save: !oci,
        ..ImportSummary::default()
    };
    commit_blobs(cache, path, &plan, &mut summary, progress).await?;
    for image in &plan.images {
        let failed = |e| ArchiveError::cache(&image.shown, e);
        for (digest, media_type, bytes) in &image.manifests {
            cache
                .import_manifest(&image.upstream, &image.repo, digest, media_type, bytes)
                .await
                .map_err(failed)?;
            summary.manifests += 1;
        }
        let Some((top, _, _)) = image.manifests.last() else {
            continue;
        };
        if let Some(tag) = &image.tag {
            cache
                .import_tag(&image.upstream, &image.repo, tag, top)
                .await
                .map_err(failed)?;
        }
        if image.referrer {
            summary.referrers += 1;
        } else {
            progress(&format!("imported {}", image.shown));
            summary.images.push(image.shown.clone());
        }
    }
    for (upstream, repo, subject, index) in &plan.referrers {
        cache
            .import_referrers(upstream, repo, subject, index)
            .await
            .map_err(|e| ArchiveError::cache(&format!("{upstream}/{repo}@{subject}"), e))?;
    }
    cache.flush().await.map_err(|e| ArchiveError::cache("flush", e))?;
    Ok(summary)
}

/// Pass 2: each blob not stored yet, read back and committed verified.
async fn commit_blobs(
    cache: &Cache,
    path: &Path,
    plan: &Plan,
    summary: &mut ImportSummary,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<(), ArchiveError> {
    let io = |source| ArchiveError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    let mut done = HashSet::new();
    for (digest, source) in &plan.blobs {
        if !done.insert(digest.clone()) {
            continue;
        }
        let failed = |e| ArchiveError::cache(&digest.to_string(), e);
        if cache.has_content(digest).await.map_err(failed)? {
            summary.blobs_present += 1;
            continue;
        }
        let mut upload = cache.import_blob(digest).await.map_err(failed)?;
        let written = match source {
            Source::Made(bytes) => upload.write(bytes.clone()).await.map_err(failed),
            Source::File { offset, size } => copy(&mut file, *offset, *size, &mut upload).await.map_err(|e| match e {
                Copy::Io(e) => io(e),
                Copy::Cache(e) => failed(e),
            }),
        };
        if let Err(e) = written {
            upload.abort().await;
            return Err(e);
        }
        let size = upload.commit(cache).await.map_err(failed)?;
        progress(&format!("stored {digest} ({})", crate::units::format_size(size)));
        summary.blobs_new += 1;
        summary.bytes_new = summary.bytes_new.saturating_add(size);
    }
    Ok(())
}

enum Copy {
    Io(std::io::Error),
    Cache(crate::cache::CacheError),
}

async fn copy(
    file: &mut tokio::fs::File,
    offset: u64,
    size: u64,
    upload: &mut crate::cache::ImportUpload,
) -> Result<(), Copy> {
    file.seek(std::io::SeekFrom::Start(offset)).await.map_err(Copy::Io)?;
    let mut left = size;
    while left > 0 {
        let want = usize::try_from(left.min(1 << 20)).unwrap_or(1 << 20);
        let mut buf = vec![0u8; want];
        file.read_exact(&mut buf).await.map_err(Copy::Io)?;
        upload.write(Bytes::from(buf)).await.map_err(Copy::Cache)?;
        left = left.saturating_sub(want as u64);
    }
    Ok(())
}
