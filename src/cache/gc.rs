//! `berth gc`: one eviction run on demand, or with `--dry-run` only its plan,
//! as a report naming every item that goes (or would) and why. The same
//! report comes from a running server (`/_berth/gc`) and from a stopped
//! cache opened by the command itself.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::evict_plan::Why;
use super::{Cache, CacheError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Bytes stored when the run began, as the index has them.
    pub stored: u64,
    pub max_size: u64,
    /// A run removes content until the store holds at most this.
    pub target: u64,
    pub keep_recent_ms: u64,
    pub items: u64,
    /// In removal order.
    pub removals: Vec<GcRemoval>,
    /// What was removed (a dry run: what would be).
    pub removed_items: usize,
    pub removed_bytes: u64,
    /// Images (and loose blobs) kept because served within keep_recent.
    pub kept_recent: usize,
    /// Blobs of removed images kept because a kept image needs them.
    pub kept_shared: usize,
    /// Everything allowed to go still leaves the store over the target.
    pub short: bool,
    /// Time to plan (read the index, decide), and the whole run.
    pub plan_ms: u64,
    pub took_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GcRemoval {
    pub digest: String,
    pub size: u64,
    pub manifest: bool,
    /// The image's top manifest; None: referenced by no cached manifest.
    pub image: Option<String>,
    /// The image's tags as `upstream/repo:tag`.
    pub names: Vec<String>,
    /// When the image was last served (or the loose blob last used), ms since the epoch.
    pub last_used_ms: u64,
}

impl Cache {
    pub async fn gc(&self, dry_run: bool) -> Result<GcReport, CacheError> {
        let started = Instant::now();
        let (plan, done) = self.evictor.run_now(dry_run).await?;
        let took_ms = elapsed_ms(started);
        let names = self.evictor.image_names().await;
        let limits = self.evictor.limits();
        let removals: Vec<GcRemoval> = plan
            .removals
            .iter()
            .map(|r| {
                let (image, last_used_ms) = match &r.why {
                    Why::Image { image, last_served_ms } => (Some(image.clone()), *last_served_ms),
                    Why::Unreferenced { last_used_ms } => (None, *last_used_ms),
                };
                let names = image.as_ref().and_then(|i| names.get(i)).cloned().unwrap_or_default();
                GcRemoval {
                    digest: r.digest.clone(),
                    size: r.size,
                    manifest: r.manifest,
                    image,
                    names,
                    last_used_ms,
                }
            })
            .collect();
        let (removed_items, removed_bytes) = match dry_run {
            true => (plan.removals.len(), plan.bytes()),
            false => (done.items, done.bytes),
        };
        Ok(GcReport {
            dry_run,
            stored: plan.stored,
            max_size: limits.max,
            target: limits.target,
            keep_recent_ms: limits.keep_recent_ms,
            items: plan.items,
            removals,
            removed_items,
            removed_bytes,
            kept_recent: plan.kept_recent,
            kept_shared: plan.kept_shared,
            short: plan.short,
            plan_ms: plan.plan_ms,
            took_ms,
        })
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}
