//! `berth gc`: the report of one eviction run (or its plan, `--dry-run`) as
//! a person reads it, whether it came from a running berth's `/_berth/gc`
//! or from the command's own run on a stopped cache.

use std::fmt::Write;

use thiserror::Error;

use crate::cache::GcReport;
use crate::units::{format_age, format_size};

#[derive(Debug, Error)]
pub enum GcFetchError {
    #[error("{url:?} is not a URL: {source}")]
    BadUrl { url: String, source: url::ParseError },
    #[error("cannot reach {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{url} answered {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("{url}: not a gc report: {reason}")]
    NotReport { url: String, reason: String },
}

impl GcFetchError {
    pub fn is_usage(&self) -> bool {
        matches!(self, GcFetchError::BadUrl { .. })
    }
}

/// Ask the berth whose admin surface is at `base` for a run (or its plan).
pub async fn fetch(base: &str, dry_run: bool) -> Result<(GcReport, String), GcFetchError> {
    let text = format!("{}/_berth/gc", base.trim_end_matches('/'));
    let mut url = url::Url::parse(&text).map_err(|source| GcFetchError::BadUrl {
        url: base.to_string(),
        source,
    })?;
    if dry_run {
        url.query_pairs_mut().append_pair("dry_run", "true");
    }
    let shown = url.to_string();
    let unreachable = |source| GcFetchError::Unreachable {
        url: shown.clone(),
        source,
    };
    let resp = reqwest::Client::new()
        .post(url.clone())
        .send()
        .await
        .map_err(unreachable)?;
    let status = resp.status();
    let body = resp.text().await.map_err(unreachable)?;
    if !status.is_success() {
        return Err(GcFetchError::Status {
            url: shown,
            status: status.as_u16(),
            body,
        });
    }
    let report = serde_json::from_str(&body).map_err(|e| GcFetchError::NotReport {
        url: shown,
        reason: e.to_string(),
    })?;
    Ok((report, body))
}

/// The report as text: what the run is for, each item removed (or that
/// would be) with the image it belonged to and why, and a summary.
pub fn render(report: &GcReport, now_ms: u64) -> String {
    let mut out = String::new();
    let verb = if report.dry_run { "would remove" } else { "removed" };
    let _ = writeln!(
        out,
        "cache: {} in {} items; max_size {}; a run frees down to {} (90 %); keep_recent {}",
        format_size(report.stored),
        report.items,
        format_size(report.max_size),
        format_size(report.target),
        format_age(report.keep_recent_ms),
    );
    if report.removals.is_empty() {
        let why = if report.stored <= report.target {
            "the cache is under the limit"
        } else {
            "everything left was served within keep_recent or is in use"
        };
        let _ = writeln!(out, "nothing to remove: {why}");
    } else {
        let _ = writeln!(out, "{:<71}  {:>10}  {:<8}  WHY", "DIGEST", "SIZE", "KIND");
        for r in &report.removals {
            let age = format_age(now_ms.saturating_sub(r.last_used_ms));
            let why = match &r.image {
                Some(image) => {
                    let name = match r.names.as_slice() {
                        [] => short(image),
                        names => names.join(", "),
                    };
                    format!("image {name}, last served {age} ago; no kept image needs it")
                }
                None => format!("referenced by no cached manifest; last used {age} ago"),
            };
            let kind = if r.manifest { "manifest" } else { "blob" };
            let _ = writeln!(out, "{:<71}  {:>10}  {:<8}  {why}", r.digest, format_size(r.size), kind);
        }
    }
    let images: std::collections::HashSet<&str> = report.removals.iter().filter_map(|r| r.image.as_deref()).collect();
    let _ = writeln!(
        out,
        "{verb} {}, {} ({}); {} kept for images still cached; {} kept as served within keep_recent; planned in {} ms, {} ms in all",
        count(report.removed_items, "item"),
        format_size(report.removed_bytes),
        count(images.len(), "image"),
        count(report.kept_shared, "shared blob"),
        count(report.kept_recent, "image"),
        report.plan_ms,
        report.took_ms,
    );
    if report.short {
        let _ = writeln!(
            out,
            "still over the target after this run: lower cache.keep_recent or raise cache.max_size"
        );
    }
    out
}

/// "1 image", "2 images".
fn count(n: usize, what: &str) -> String {
    match n {
        1 => format!("1 {what}"),
        n => format!("{n} {what}s"),
    }
}

/// `sha256:0123456789ab`: enough of a digest to tell images apart.
fn short(digest: &str) -> String {
    digest.chars().take(19).collect()
}
