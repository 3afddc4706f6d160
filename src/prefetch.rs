//! `berth prefetch` and `[[prefetch]]`: warm images from their upstreams so
//! an outage (or a site cut off on purpose) finds them whole. Each IMAGE is
//! read as docker reads it, warmed through the cache (`cache/warm.rs`), and
//! the outcome, with its failure cause and hint, goes into one report.

use std::fmt::Write;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cache::{Cache, WarmStep, Warmed};
use crate::image_ref::{ImageRef, Platform};
use crate::routing::Route;
use crate::units::format_size;
use crate::upstream::Upstream;

/// What to warm (the body of `POST /_berth/prefetch`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PrefetchRequest {
    pub images: Vec<String>,
    /// `os/arch[/variant]`; none: every platform.
    #[serde(default)]
    pub platform: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PrefetchReport {
    pub images: Vec<ImageOutcome>,
    pub ok: usize,
    pub failed: usize,
    pub blobs_fetched: usize,
    pub bytes_fetched: u64,
    pub blobs_cached: usize,
    pub bytes_cached: u64,
    pub took_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageOutcome {
    pub image: String,
    pub warmed: Option<Warmed>,
    pub cause: Option<String>,
    pub hint: Option<String>,
    pub error: Option<String>,
}

/// The images of a list file: one per line; blank lines and `#` comments skipped.
pub fn read_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Warm every image in turn; a failing one is reported and the rest go on.
/// `progress` hears which image (by index) is at which step.
pub async fn run(
    cache: &Cache,
    upstreams: &[Arc<Upstream>],
    request: &PrefetchRequest,
    progress: &(dyn Fn(usize, WarmStep<'_>) + Send + Sync),
) -> Result<PrefetchReport, String> {
    let platform = request.platform.as_deref().map(Platform::parse).transpose()?;
    let configs: Vec<_> = upstreams.iter().map(|u| u.config.clone()).collect();
    let started = std::time::Instant::now();
    let mut report = PrefetchReport::default();
    for (n, image) in request.images.iter().enumerate() {
        let outcome = match ImageRef::parse(image, &configs) {
            Err(e) => ImageOutcome {
                image: image.clone(),
                warmed: None,
                cause: Some(crate::failure::FailureCause::InvalidRequest.name().to_string()),
                hint: None,
                error: Some(e.to_string()),
            },
            Ok(r) => {
                let route = Route {
                    upstream: upstreams[r.upstream].clone(),
                    repo: r.repo.clone(),
                };
                let step = |s: WarmStep<'_>| progress(n, s);
                match cache.warm(&route, &r.reference, platform.as_ref(), &step).await {
                    Ok(w) => ImageOutcome {
                        image: image.clone(),
                        warmed: Some(w),
                        cause: None,
                        hint: None,
                        error: None,
                    },
                    Err(e) => ImageOutcome {
                        image: image.clone(),
                        warmed: None,
                        cause: Some(e.cause().name().to_string()),
                        hint: Some(e.cause().hint().to_string()),
                        error: Some(e.to_string()),
                    },
                }
            }
        };
        match &outcome.warmed {
            Some(w) => {
                report.ok += 1;
                report.blobs_fetched += w.fetched_blobs;
                report.bytes_fetched = report.bytes_fetched.saturating_add(w.fetched_bytes);
                report.blobs_cached += w.cached_blobs;
                report.bytes_cached = report.bytes_cached.saturating_add(w.cached_bytes);
            }
            None => report.failed += 1,
        }
        report.images.push(outcome);
    }
    report.took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(report)
}

/// The closing summary for a person: a line per image, then the totals.
pub fn render(report: &PrefetchReport) -> String {
    let mut out = String::new();
    for i in &report.images {
        match (&i.warmed, &i.error) {
            (Some(w), _) => {
                let _ = writeln!(
                    out,
                    "ok      {}  {}  {} manifests, {} blobs: {} fetched ({}), {} already cached ({}){}",
                    i.image,
                    short(&w.digest),
                    w.manifests,
                    w.blobs,
                    w.fetched_blobs,
                    format_size(w.fetched_bytes),
                    w.cached_blobs,
                    format_size(w.cached_bytes),
                    match w.unstored_blobs {
                        0 => String::new(),
                        n => format!("; {n} could not be stored (see the log: storage_degraded)"),
                    }
                );
            }
            (None, error) => {
                let _ = writeln!(
                    out,
                    "FAILED  {}  {}: {}{}",
                    i.image,
                    i.cause.as_deref().unwrap_or("error"),
                    error.as_deref().unwrap_or_default(),
                    i.hint
                        .as_deref()
                        .map(|h| format!("\n        hint: {h}"))
                        .unwrap_or_default()
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "prefetch: {} of {} images warm, {} failed; fetched {} blobs ({}), {} already cached ({}); {:.1} s",
        report.ok,
        report.images.len(),
        report.failed,
        report.blobs_fetched,
        format_size(report.bytes_fetched),
        report.blobs_cached,
        format_size(report.bytes_cached),
        report.took_ms as f64 / 1000.0,
    );
    out
}

fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_files_skip_comments_and_blank_lines() {
        let list = "busybox:1.36\n\n# the base\n  ghcr.io/org/app:2  # pinned\n";
        assert_eq!(read_list(list), ["busybox:1.36", "ghcr.io/org/app:2"]);
    }
}
