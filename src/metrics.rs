//! Prometheus metrics, exposed at `/metrics` in the OpenMetrics text format.
//! Names follow Prometheus conventions: `_total` counters, `_seconds`
//! histograms, `_bytes` units.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

mod top_images;
pub use top_images::{Pulled, TopImages};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    pub cause: String,
    pub upstream: String,
}

/// Every label value comes from a fixed set: a label made from request input
/// (a method token, a path) would be a new series kept forever per request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: MethodLabel,
    /// One of the path parser's endpoint kinds.
    pub endpoint: &'static str,
    pub status: u16,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(clippy::upper_case_acronyms)]
pub enum MethodLabel {
    GET,
    HEAD,
    OTHER,
}

impl MethodLabel {
    pub fn of(method: &axum::http::Method) -> Self {
        match *method {
            axum::http::Method::GET => MethodLabel::GET,
            axum::http::Method::HEAD => MethodLabel::HEAD,
            _ => MethodLabel::OTHER,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// "ok" or "failed".
    pub result: &'static str,
}

/// The last run of one `[[prefetch]]` schedule, for `/_berth/status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PrefetchOutcome {
    /// Its place among the `[[prefetch]]` tables.
    pub schedule: usize,
    pub at_unix_ms: u64,
    pub every_secs: u64,
    pub images: usize,
    pub ok: usize,
    pub failed: usize,
    pub bytes_fetched: u64,
    /// Each failed image with its cause and hint.
    pub failures: Vec<PrefetchFailure>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PrefetchFailure {
    pub image: String,
    pub cause: String,
    pub hint: String,
}

/// The last config reload (SIGHUP), for `/_berth/status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReloadOutcome {
    pub at_unix_ms: u64,
    pub ok: bool,
    /// What changed, or why the reload was refused.
    pub summary: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    pub upstream: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s: loopback answers to slow cross-ocean registries.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub pull_failures: Family<CauseLabels, Counter>,
    pub upstream_degraded: Family<CauseLabels, Counter>,
    pub cache_write_failures: Family<CauseLabels, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    pub cache_hits: Family<KindLabels, Counter>,
    pub cache_misses: Family<KindLabels, Counter>,
    pub served_bytes: Counter,
    pub upstream_bytes: Counter,
    pub connections_refused: Counter,
    /// Set at each scrape from the cache's accounting.
    pub cache_used_bytes: Gauge,
    pub cache_max_bytes: Gauge,
    /// 1 on the replica evicting from the shared bucket for the fleet.
    pub cluster_evicting: Gauge,
    pub evicted_items: Counter,
    pub evicted_bytes: Counter,
    ratelimit_limit: Family<UpstreamLabel, Gauge>,
    ratelimit_remaining: Family<UpstreamLabel, Gauge>,
    upstream_latency: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
    config_reloads: Family<ResultLabel, Counter>,
    last_reload: Mutex<Option<ReloadOutcome>>,
    prefetch_runs: Family<ResultLabel, Counter>,
    prefetch_failed_images: Gauge,
    prefetch_last_run: Gauge,
    last_prefetch: Mutex<std::collections::BTreeMap<usize, PrefetchOutcome>>,
    /// The most-pulled images since start (the status page).
    pub top_images: TopImages,
}

impl Default for Metrics {
    fn default() -> Self {
        let pull_failures = Family::<CauseLabels, Counter>::default();
        let upstream_degraded = Family::<CauseLabels, Counter>::default();
        let cache_write_failures = Family::<CauseLabels, Counter>::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let cache_hits = Family::<KindLabels, Counter>::default();
        let cache_misses = Family::<KindLabels, Counter>::default();
        let served_bytes = Counter::default();
        let upstream_bytes = Counter::default();
        let connections_refused = Counter::default();
        let cache_used_bytes = Gauge::default();
        let cache_max_bytes = Gauge::default();
        let cluster_evicting = Gauge::default();
        let evicted_items = Counter::default();
        let evicted_bytes = Counter::default();
        let ratelimit_limit = Family::<UpstreamLabel, Gauge>::default();
        let ratelimit_remaining = Family::<UpstreamLabel, Gauge>::default();
        let upstream_latency =
            Family::<UpstreamLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let config_reloads = Family::<ResultLabel, Counter>::default();
        let prefetch_runs = Family::<ResultLabel, Counter>::default();
        let prefetch_failed_images = Gauge::default();
        let prefetch_last_run = Gauge::default();
        let mut r = Registry::default();
        r.register(
            "berth_prefetch_runs",
            "Runs of [[prefetch]] schedules, by result (failed: an image of it could not be warmed)",
            prefetch_runs.clone(),
        );
        r.register(
            "berth_prefetch_failed_images",
            "Images of [[prefetch]] that failed to warm in their schedule's last run",
            prefetch_failed_images.clone(),
        );
        r.register(
            "berth_prefetch_last_run_timestamp_seconds",
            "When a [[prefetch]] schedule last finished a run (Unix time)",
            prefetch_last_run.clone(),
        );
        r.register(
            "berth_config_reloads",
            "Config reloads on SIGHUP, by result (a failed one keeps the config in use)",
            config_reloads.clone(),
        );
        r.register(
            "berth_pull_failures",
            "Requests that ended in an error, by failure cause",
            pull_failures.clone(),
        );
        r.register(
            "berth_upstream_degraded",
            "Upstream problems berth hid from clients (stale served, retried, failed over)",
            upstream_degraded.clone(),
        );
        r.register(
            "berth_cache_write_failures",
            "Content served without being stored because the cache could not be written",
            cache_write_failures.clone(),
        );
        r.register("berth_http_requests", "HTTP requests answered", requests.clone());
        r.register(
            "berth_cache_hits",
            "Manifests and blobs served from the cache",
            cache_hits.clone(),
        );
        r.register(
            "berth_cache_misses",
            "Manifests and blobs fetched from an upstream",
            cache_misses.clone(),
        );
        r.register("berth_served_bytes", "Blob bytes sent to clients", served_bytes.clone());
        r.register(
            "berth_upstream_bytes",
            "Blob bytes received from upstreams",
            upstream_bytes.clone(),
        );
        r.register(
            "berth_connections_refused",
            "Connections closed at once because their client had max_connections_per_client open",
            connections_refused.clone(),
        );
        r.register(
            "berth_cache_used_bytes",
            "Bytes the cache holds, downloads under way included",
            cache_used_bytes.clone(),
        );
        r.register("berth_cache_max_bytes", "cache.max_size", cache_max_bytes.clone());
        r.register(
            "berth_cluster_evicting",
            "1 on the one replica evicting from the shared bucket for the fleet, else 0",
            cluster_evicting.clone(),
        );
        r.register(
            "berth_cache_evicted_items",
            "Manifests and blobs removed by eviction (whole images, least recently served first)",
            evicted_items.clone(),
        );
        r.register(
            "berth_cache_evicted_bytes",
            "Bytes removed by eviction",
            evicted_bytes.clone(),
        );
        r.register(
            "berth_upstream_ratelimit_limit",
            "The upstream's pull limit, from the ratelimit-limit header of its last answer that had one",
            ratelimit_limit.clone(),
        );
        r.register(
            "berth_upstream_ratelimit_remaining",
            "Pulls the upstream still allows, from the ratelimit-remaining header of its last answer that had one",
            ratelimit_remaining.clone(),
        );
        r.register(
            "berth_upstream_request_duration_seconds",
            "Time to an upstream's response headers",
            upstream_latency.clone(),
        );
        Metrics {
            registry: r,
            pull_failures,
            upstream_degraded,
            cache_write_failures,
            requests,
            cache_hits,
            cache_misses,
            served_bytes,
            upstream_bytes,
            connections_refused,
            cache_used_bytes,
            cache_max_bytes,
            cluster_evicting,
            evicted_items,
            evicted_bytes,
            ratelimit_limit,
            ratelimit_remaining,
            upstream_latency,
            config_reloads,
            last_reload: Mutex::new(None),
            prefetch_runs,
            prefetch_failed_images,
            prefetch_last_run,
            last_prefetch: Mutex::default(),
            top_images: TopImages::default(),
        }
    }
}

impl Metrics {
    pub fn failure(&self, cause: &str, upstream: &str) {
        self.pull_failures
            .get_or_create(&CauseLabels {
                cause: cause.into(),
                upstream: upstream.into(),
            })
            .inc();
    }

    pub fn degraded(&self, cause: &str, upstream: &str) {
        self.upstream_degraded
            .get_or_create(&CauseLabels {
                cause: cause.into(),
                upstream: upstream.into(),
            })
            .inc();
    }

    pub fn cache_write_failed(&self, cause: &str, upstream: &str) {
        self.cache_write_failures
            .get_or_create(&CauseLabels {
                cause: cause.into(),
                upstream: upstream.into(),
            })
            .inc();
    }

    pub fn hit(&self, kind: &str) {
        self.cache_hits.get_or_create(&KindLabels { kind: kind.into() }).inc();
    }

    pub fn miss(&self, kind: &str) {
        self.cache_misses.get_or_create(&KindLabels { kind: kind.into() }).inc();
    }

    pub fn upstream_latency(&self, upstream: &str, operation: &str, took: Duration) {
        self.upstream_latency
            .get_or_create(&UpstreamLabels {
                upstream: upstream.into(),
                operation: operation.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// What an upstream's rate-limit headers said; an absent one leaves its gauge.
    pub fn ratelimit(&self, upstream: &str, limit: Option<u64>, remaining: Option<u64>) {
        let label = UpstreamLabel {
            upstream: upstream.into(),
        };
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        if let Some(n) = limit {
            self.ratelimit_limit.get_or_create(&label).set(gauge(n));
        }
        if let Some(n) = remaining {
            self.ratelimit_remaining.get_or_create(&label).set(gauge(n));
        }
    }

    /// The OpenMetrics text exposition.
    /// The last limit and remainder an upstream announced, where it did.
    pub fn ratelimit_of(&self, upstream: &str) -> (Option<i64>, Option<i64>) {
        let labels = UpstreamLabel {
            upstream: upstream.to_string(),
        };
        (
            self.ratelimit_limit.get(&labels).map(|g| g.get()),
            self.ratelimit_remaining.get(&labels).map(|g| g.get()),
        )
    }

    /// (hits, misses) of `kind` ("manifest", "blob") since start.
    pub fn hits_and_misses(&self, kind: &str) -> (u64, u64) {
        let labels = KindLabels { kind: kind.to_string() };
        (
            self.cache_hits.get_or_create(&labels).get(),
            self.cache_misses.get_or_create(&labels).get(),
        )
    }

    /// Count a config reload and remember it as the last.
    pub fn reloaded(&self, outcome: ReloadOutcome) {
        let result = if outcome.ok { "ok" } else { "failed" };
        // Counted and remembered under one lock, which `reloads` takes too:
        // a status never counts a reload it cannot show as the last.
        let mut last = self.last_reload.lock().unwrap_or_else(|e| e.into_inner());
        self.config_reloads.get_or_create(&ResultLabel { result }).inc();
        *last = Some(outcome);
    }

    /// A `[[prefetch]]` schedule finished a run.
    pub fn prefetched(&self, outcome: PrefetchOutcome) {
        let result = if outcome.failed == 0 { "ok" } else { "failed" };
        self.prefetch_runs.get_or_create(&ResultLabel { result }).inc();
        let secs = i64::try_from(outcome.at_unix_ms / 1000).unwrap_or(i64::MAX);
        self.prefetch_last_run.set(secs);
        let mut last = self.last_prefetch.lock().unwrap_or_else(|e| e.into_inner());
        last.insert(outcome.schedule, outcome);
        let failed: usize = last.values().map(|o| o.failed).sum();
        self.prefetch_failed_images
            .set(i64::try_from(failed).unwrap_or(i64::MAX));
    }

    /// The last run of each `[[prefetch]]` schedule that ran.
    pub fn prefetches(&self) -> Vec<PrefetchOutcome> {
        let last = self.last_prefetch.lock().unwrap_or_else(|e| e.into_inner());
        last.values().cloned().collect()
    }

    /// (ok, failed) reloads since start, and the last one.
    pub fn reloads(&self) -> (u64, u64, Option<ReloadOutcome>) {
        let last = self.last_reload.lock().unwrap_or_else(|e| e.into_inner());
        let count = |result| self.config_reloads.get_or_create(&ResultLabel { result }).get();
        (count("ok"), count("failed"), last.clone())
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_conventional_names() {
        let m = Metrics::default();
        m.failure("connect_timeout", "docker.io");
        m.degraded("rate_limited", "docker.io");
        m.hit("blob");
        m.upstream_latency("docker.io", "manifest", Duration::from_millis(20));
        m.ratelimit("docker.io", Some(100), Some(76));
        m.ratelimit("docker.io", None, Some(75));
        m.ratelimit("ghcr.io", Some(u64::MAX), None);
        let text = m.encode();
        assert!(
            text.contains(r#"berth_upstream_ratelimit_limit{upstream="docker.io"} 100"#),
            "{text}"
        );
        assert!(
            text.contains(r#"berth_upstream_ratelimit_remaining{upstream="docker.io"} 75"#),
            "{text}"
        );
        assert!(text.contains(&format!(
            r#"berth_upstream_ratelimit_limit{{upstream="ghcr.io"}} {}"#,
            i64::MAX
        )));
        assert!(!text.contains(r#"berth_upstream_ratelimit_remaining{upstream="ghcr.io"}"#));
        assert!(
            text.contains(r#"berth_pull_failures_total{cause="connect_timeout",upstream="docker.io"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"berth_upstream_degraded_total{cause="rate_limited",upstream="docker.io"} 1"#));
        assert!(text.contains(r#"berth_cache_hits_total{kind="blob"} 1"#));
        assert!(text.contains("berth_upstream_request_duration_seconds_bucket"));
    }

    #[test]
    fn request_labels_come_from_fixed_sets() {
        let m = Metrics::default();
        let odd = axum::http::Method::from_bytes(&[b'X'; 2048]).unwrap();
        for method in [odd, axum::http::Method::from_bytes(b"BREW").unwrap()] {
            m.requests
                .get_or_create(&RequestLabels {
                    method: MethodLabel::of(&method),
                    endpoint: "unknown",
                    status: 405,
                })
                .inc();
        }
        let text = m.encode();
        assert!(
            text.contains(r#"berth_http_requests_total{method="OTHER",endpoint="unknown",status="405"} 2"#),
            "{text}"
        );
    }
}
