//! The one place failure events are recorded: the structured log line, the
//! metric, and the bounded ring of recent failures behind `/_berth/failures`.
//! `pull_failed` is emitted once per failed request (by the middleware, or by
//! a body that broke after its headers went out); `upstream_degraded` once per
//! upstream problem berth hid from the client.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::failure::{FailureCause, FailureRecord};
use crate::failure_filter::FailureFilter;
use crate::metrics::Metrics;

/// Recent failures kept for `/_berth/failures`.
const RING_SIZE: usize = 256;

/// Facts about the request a failure belongs to.
#[derive(Debug, Clone)]
pub struct RequestFacts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub client: &'a str,
    pub request_id: &'a str,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailureEntry {
    pub at_unix_ms: u64,
    pub cause: FailureCause,
    pub category: crate::failure::Category,
    pub upstream: Option<String>,
    pub upstream_status: Option<u16>,
    pub repository: Option<String>,
    pub reference: Option<String>,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub client: String,
    /// Who the client was, when known (never a credential).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    pub request_id: String,
    pub elapsed_ms: u64,
    pub attempts: u32,
    pub reason: Option<&'static str>,
    pub detail: String,
    pub hint: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailuresReport {
    /// Newest first: the recent failures the filter matched (all of them
    /// without one).
    pub failures: Vec<FailureEntry>,
    /// How many failures the filter matched (the length of `failures`), out
    /// of the recent ones kept.
    pub matched: usize,
    /// Every failure since start, by cause (not only those in the ring, and
    /// whatever the filter).
    pub counts: BTreeMap<&'static str, u64>,
}

#[derive(Default)]
pub struct Events {
    pub metrics: Metrics,
    ring: Mutex<VecDeque<FailureEntry>>,
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

/// Milliseconds since the Unix epoch, as failures are stamped.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl Events {
    pub fn pull_failed(&self, r: &FailureRecord, req: &RequestFacts<'_>) {
        let upstream = r.upstream.as_deref().unwrap_or("-");
        tracing::warn!(
            event = "pull_failed",
            cause = r.cause.name(),
            category = r.cause.category().as_str(),
            upstream,
            upstream_status = r.upstream_status,
            repository = r.repository.as_deref(),
            reference = r.reference.as_deref(),
            attempts = r.attempts,
            reason = r.reason,
            ratelimit = r.ratelimit.as_deref(),
            identity = r.identity.as_deref(),
            method = req.method,
            path = req.path,
            status = req.status,
            client = req.client,
            request_id = req.request_id,
            elapsed_ms = req.elapsed_ms,
            detail = %r.detail,
            hint = %r.hint(),
            "pull failed"
        );
        self.metrics.failure(r.cause.name(), upstream);
        if let Ok(mut counts) = self.counts.lock() {
            *counts.entry(r.cause.name()).or_default() += 1;
        }
        let entry = FailureEntry {
            at_unix_ms: now_ms(),
            cause: r.cause,
            category: r.cause.category(),
            upstream: r.upstream.clone(),
            upstream_status: r.upstream_status,
            repository: r.repository.clone(),
            reference: r.reference.clone(),
            method: req.method.to_string(),
            path: req.path.to_string(),
            status: req.status,
            client: req.client.to_string(),
            identity: r.identity.clone(),
            request_id: req.request_id.to_string(),
            elapsed_ms: req.elapsed_ms,
            attempts: r.attempts,
            reason: r.reason,
            detail: r.detail.clone(),
            hint: r.hint().into_owned(),
        };
        if let Ok(mut ring) = self.ring.lock() {
            if ring.len() == RING_SIZE {
                ring.pop_back();
            }
            ring.push_front(entry);
        }
    }

    /// An upstream problem hidden from the client.
    pub fn upstream_degraded(
        &self,
        cause: FailureCause,
        upstream: &str,
        repository: &str,
        reference: &str,
        what: &str,
        detail: &str,
    ) {
        tracing::warn!(
            event = "upstream_degraded",
            cause = cause.name(),
            category = cause.category().as_str(),
            upstream,
            repository,
            reference,
            detail = %crate::redact::message(detail),
            hint = cause.hint(),
            "{what}"
        );
        self.metrics.degraded(cause.name(), upstream);
    }

    /// The cache could not store something; the pull went on without it.
    pub fn storage_degraded(
        &self,
        cause: FailureCause,
        upstream: &str,
        repository: &str,
        reference: &str,
        detail: &str,
    ) {
        tracing::warn!(
            event = "storage_degraded",
            cause = cause.name(),
            category = cause.category().as_str(),
            upstream,
            repository,
            reference,
            detail = %crate::redact::message(detail),
            hint = cause.hint(),
            "cache write failed; served without storing"
        );
        self.metrics.cache_write_failed(cause.name(), upstream);
    }

    /// The shared bucket did not answer when berth started: berth serves by
    /// pass-through and lists it again until it does.
    pub fn bucket_unanswered(&self, detail: &str) {
        let cause = FailureCause::StorageError;
        tracing::warn!(
            event = "storage_degraded",
            cause = cause.name(),
            category = cause.category().as_str(),
            detail = %crate::redact::message(detail),
            hint = cause.hint(),
            "the bucket did not answer at start: pulls pass through from the upstream, nothing is stored, until it does"
        );
    }

    /// The recent failures `filter` matches, at the time `now_ms`.
    pub fn report(&self, filter: &FailureFilter, now_ms: u64) -> FailuresReport {
        let failures: Vec<FailureEntry> = self
            .ring
            .lock()
            .map(|r| r.iter().filter(|e| filter.matches(e, now_ms)).cloned().collect())
            .unwrap_or_default();
        FailuresReport {
            matched: failures.len(),
            failures,
            counts: self.counts.lock().map(|c| c.clone()).unwrap_or_default(),
        }
    }
}
