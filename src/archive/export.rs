//! `berth export`: each IMAGE is resolved and warmed through the cache
//! (`Cache::walk`, `Cache::warm`), then its manifests (index and children),
//! configs and layers, and its referrers with theirs, are written byte for
//! byte into an OCI image-layout tar. The tar is written next to ARCHIVE
//! under a temporary name and renamed at the end: a failed export leaves no
//! half archive under the name asked for.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::ArchiveError;
use super::layout::{self, BerthSection, Descriptor, Index, ReferrersEntry};
use crate::cache::{Cache, ReadMode, Walked, WarmStep};
use crate::image_ref::{ImageRef, Platform};
use crate::reference::{Digest, Reference};
use crate::routing::Route;
use crate::upstream::Upstream;

/// What to export (the query of `GET /_berth/export`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExportRequest {
    pub images: Vec<String>,
    #[serde(default)]
    pub platform: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExportSummary {
    pub images: usize,
    pub manifests: usize,
    pub blobs: usize,
    pub referrers: usize,
    /// Content bytes written (manifests and blobs).
    pub bytes: u64,
}

impl ExportSummary {
    pub fn render(&self, archive: &str) -> String {
        format!(
            "export: {} images, {} manifests ({} of them referrers), {} blobs, {} to {archive}\n",
            self.images,
            self.manifests,
            self.referrers,
            self.blobs,
            crate::units::format_size(self.bytes)
        )
    }
}

/// A tar being written: headers from the `tar` crate, content streamed.
struct TarOut {
    file: tokio::io::BufWriter<tokio::fs::File>,
    path: PathBuf,
    written: HashSet<String>,
}

impl TarOut {
    fn io(&self, source: std::io::Error) -> ArchiveError {
        ArchiveError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    async fn header(&mut self, name: &str, size: u64) -> Result<(), ArchiveError> {
        let mut header = tar::Header::new_ustar();
        header.set_path(name).map_err(|e| self.io(e))?;
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        self.file.write_all(header.as_bytes()).await.map_err(|e| self.io(e))
    }

    async fn pad(&mut self, size: u64) -> Result<(), ArchiveError> {
        let rest = usize::try_from(size % 512).unwrap_or(0);
        if rest > 0 {
            let zeros = vec![0u8; 512usize.saturating_sub(rest)];
            self.file.write_all(&zeros).await.map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    async fn bytes(&mut self, name: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
        self.header(name, bytes.len() as u64).await?;
        self.file.write_all(bytes).await.map_err(|e| self.io(e))?;
        self.pad(bytes.len() as u64).await
    }

    async fn finish(mut self) -> Result<(), ArchiveError> {
        self.file.write_all(&[0u8; 1024]).await.map_err(|e| self.io(e))?;
        self.file.flush().await.map_err(|e| self.io(e))?;
        self.file.get_ref().sync_all().await.map_err(|e| self.io(e))
    }
}

struct Exporter<'a> {
    cache: &'a Cache,
    out: TarOut,
    summary: ExportSummary,
    progress: &'a (dyn Fn(usize, WarmStep<'_>) + Send + Sync),
}

impl Exporter<'_> {
    async fn manifest(&mut self, w: &Walked) -> Result<(), ArchiveError> {
        let name = layout::blob_path(&w.manifest.digest);
        if self.out.written.insert(name.clone()) {
            self.out.bytes(&name, &w.manifest.bytes).await?;
            self.summary.manifests += 1;
            self.summary.bytes = self.summary.bytes.saturating_add(w.manifest.bytes.len() as u64);
        }
        Ok(())
    }

    /// Every manifest and blob of a walked (and warmed) image.
    async fn image(&mut self, n: usize, image: &str, route: &Route, w: &Walked) -> Result<(), ArchiveError> {
        self.manifest(w).await?;
        for child in &w.children {
            Box::pin(self.image(n, image, route, child)).await?;
        }
        for (digest, size) in &w.blobs {
            self.blob(n, image, route, digest, *size).await?;
        }
        Ok(())
    }

    async fn blob(
        &mut self,
        n: usize,
        image: &str,
        route: &Route,
        digest: &Digest,
        size: u64,
    ) -> Result<(), ArchiveError> {
        let name = layout::blob_path(digest);
        if !self.out.written.insert(name.clone()) {
            return Ok(());
        }
        let cached = |e| ArchiveError::cache(image, e);
        let blob = self.cache.blob(route, digest).await.map_err(cached)?;
        let size = blob.size().unwrap_or(size);
        self.out.header(&name, size).await?;
        let mut body = blob.range(0, None, ReadMode::Copied).await.map_err(cached)?;
        let mut got = 0u64;
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(cached)?;
            got = got.saturating_add(piece.len() as u64);
            if got > size {
                break;
            }
            self.out.file.write_all(&piece).await.map_err(|e| self.out.io(e))?;
            (self.progress)(n, WarmStep::Bytes(piece.len() as u64));
        }
        if got != size {
            return Err(ArchiveError::Invalid(format!(
                "{image}: blob {digest} came as {got} bytes, its size is {size}"
            )));
        }
        self.out.pad(size).await?;
        self.summary.blobs += 1;
        self.summary.bytes = self.summary.bytes.saturating_add(size);
        Ok(())
    }

    /// The referrers of `subject`, with their manifests and blobs.
    async fn referrers(
        &mut self,
        n: usize,
        image: &str,
        route: &Route,
        subject: &Digest,
    ) -> Result<Option<ReferrersEntry>, ArchiveError> {
        let cached = |e| ArchiveError::cache(image, e);
        let index = self.cache.referrers(route, subject).await.map_err(cached)?;
        if index.is_empty() {
            return Ok(None);
        }
        let listed = layout::referrer_digests(index.bytes()).map_err(ArchiveError::Invalid)?;
        for d in listed {
            let digest = Digest::parse(&d).map_err(|e| ArchiveError::Invalid(format!("referrer {d}: {e}")))?;
            let reference = Reference::Digest(digest);
            let walked = self.cache.walk(route, &reference, None).await.map_err(cached)?;
            self.manifest(&walked).await?;
            self.summary.referrers += 1;
            for (digest, size) in &walked.blobs {
                self.blob(n, image, route, digest, *size).await?;
            }
        }
        Ok(Some(ReferrersEntry {
            upstream: route.upstream.name.clone(),
            repository: route.repo.to_string(),
            subject: subject.to_string(),
            index: String::from_utf8_lossy(index.bytes()).into_owned(),
        }))
    }
}

/// The name an image goes by in `index.json` (and after `oci-archive:FILE:`):
/// `upstream/repository:tag`, or `…@digest` for an image named by digest.
pub fn ref_name(upstream: &str, repo: &str, reference: &Reference) -> String {
    match reference {
        Reference::Tag(t) => format!("{upstream}/{repo}:{t}"),
        Reference::Digest(d) => format!("{upstream}/{repo}@{d}"),
    }
}

fn temp_next_to(archive: &Path) -> PathBuf {
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "archive".into());
    archive.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

/// Export the images of `request` into the tar `archive`.
pub async fn export(
    cache: &Cache,
    upstreams: &[Arc<Upstream>],
    request: &ExportRequest,
    archive: &Path,
    progress: &(dyn Fn(usize, WarmStep<'_>) + Send + Sync),
) -> Result<ExportSummary, ArchiveError> {
    let platform = request
        .platform
        .as_deref()
        .map(Platform::parse)
        .transpose()
        .map_err(|e| ArchiveError::Usage(format!("--platform: {e}")))?;
    if request.images.is_empty() {
        return Err(ArchiveError::Usage("export: name at least one IMAGE".into()));
    }
    let configs: Vec<_> = upstreams.iter().map(|u| u.config.clone()).collect();
    let images = request
        .images
        .iter()
        .map(|i| ImageRef::parse(i, &configs))
        .collect::<Result<Vec<_>, _>>()?;
    let temp = temp_next_to(archive);
    let file = tokio::fs::File::create(&temp)
        .await
        .map_err(|source| ArchiveError::Io {
            path: temp.display().to_string(),
            source,
        })?;
    let mut exporter = Exporter {
        cache,
        out: TarOut {
            file: tokio::io::BufWriter::with_capacity(1 << 20, file),
            path: temp.clone(),
            written: HashSet::new(),
        },
        summary: ExportSummary::default(),
        progress,
    };
    let written = write_all(&mut exporter, upstreams, &images, platform.as_ref()).await;
    let done = match written {
        Ok(index) => {
            let finished = async {
                exporter.out.bytes(layout::INDEX_FILE, &index).await?;
                exporter.out.finish().await?;
                tokio::fs::rename(&temp, archive)
                    .await
                    .map_err(|source| ArchiveError::Io {
                        path: archive.display().to_string(),
                        source,
                    })
            };
            finished.await.map(|()| exporter.summary)
        }
        Err(e) => Err(e),
    };
    if done.is_err() {
        let _ = tokio::fs::remove_file(&temp).await;
    }
    done
}

/// Write every image; returns the bytes of `index.json`.
async fn write_all(
    ex: &mut Exporter<'_>,
    upstreams: &[Arc<Upstream>],
    images: &[ImageRef],
    platform: Option<&Platform>,
) -> Result<Vec<u8>, ArchiveError> {
    ex.out
        .bytes(layout::OCI_LAYOUT_FILE, layout::OCI_LAYOUT_BODY.as_bytes())
        .await?;
    let mut descriptors = Vec::new();
    let mut referrers = Vec::new();
    for (n, image) in images.iter().enumerate() {
        let Some(upstream) = upstreams.get(image.upstream) else {
            return Err(ArchiveError::Usage(format!("{}: no such upstream", image.text)));
        };
        let route = Route {
            upstream: upstream.clone(),
            repo: image.repo.clone(),
        };
        let cached = |e| ArchiveError::cache(&image.text, e);
        let walked = ex
            .cache
            .walk(&route, &image.reference, platform)
            .await
            .map_err(cached)?;
        let pinned = Reference::Digest(walked.manifest.digest.clone());
        let step = |s: WarmStep<'_>| (ex.progress)(n, s);
        ex.cache.warm(&route, &pinned, platform, &step).await.map_err(cached)?;
        ex.image(n, &image.text, &route, &walked).await?;
        let mut subjects = vec![walked.manifest.digest.clone()];
        subjects.extend(walked.children.iter().map(|c| c.manifest.digest.clone()));
        for subject in &subjects {
            if let Some(entry) = ex.referrers(n, &image.text, &route, subject).await? {
                referrers.push(entry);
            }
        }
        let mut annotations = BTreeMap::new();
        annotations.insert(
            layout::REF_NAME.to_string(),
            ref_name(&upstream.name, image.repo.as_str(), &image.reference),
        );
        annotations.insert(layout::UPSTREAM.to_string(), upstream.name.clone());
        annotations.insert(layout::REPOSITORY.to_string(), image.repo.to_string());
        if let Reference::Tag(t) = &image.reference {
            annotations.insert(layout::TAG.to_string(), t.to_string());
        }
        if let Some(p) = platform {
            annotations.insert(layout::PLATFORM.to_string(), p.to_string());
        }
        descriptors.push(Descriptor {
            media_type: walked.manifest.media_type.clone(),
            digest: walked.manifest.digest.to_string(),
            size: walked.manifest.bytes.len() as u64,
            annotations,
        });
        ex.summary.images += 1;
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(crate::media::OCI_INDEX.to_string()),
        manifests: descriptors,
        berth: Some(BerthSection { referrers }),
    };
    serde_json::to_vec_pretty(&index).map_err(|e| ArchiveError::Invalid(e.to_string()))
}
