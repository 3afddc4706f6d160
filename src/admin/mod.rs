//! The admin surface: `/metrics` and `/_berth/*`. It shows other clients'
//! addresses and repository names, so it is served apart from the registry
//! API: on `admin_listen` (loopback by default), or on `listen` when the
//! operator puts it there (`admin_listen = ""`). It only reads state the
//! API layer keeps, and asks the cache only for its health and for `gc`;
//! it never calls an upstream.

use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api::AppState;

mod archive;
mod status_page;
use crate::failure_filter::{FailureFilter, FilterError};

/// The admin routes, to be served on their own listener or merged into the API's.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/_berth/failures", axum::routing::get(failures))
        .route("/_berth/health", axum::routing::get(health))
        .route("/_berth/live", axum::routing::get(live))
        .route("/_berth/status", axum::routing::get(status))
        .route("/_berth/gc", axum::routing::post(gc))
        .route("/_berth/prefetch", axum::routing::post(prefetch))
        .route("/_berth/export", axum::routing::get(archive::export))
        .route("/_berth/import", axum::routing::post(archive::import))
        .route("/", axum::routing::get(page))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let (used, max) = state.cache.usage();
    let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    state.events.metrics.cache_used_bytes.set(gauge(used));
    state.events.metrics.cache_max_bytes.set(gauge(max));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.events.metrics.encode(),
    )
        .into_response()
}

/// The most recent failures, newest first, with counts by cause; only those
/// matching `?client=&image=&cause=&since=` when given.
async fn failures(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery) -> Response {
    match FailureFilter::from_query(query.as_deref()) {
        Ok(filter) => {
            let live = state.live();
            let prefixes = live.upstreams.iter().map(|u| (u.config.prefix.clone(), u.name.clone()));
            let filter = filter.with_prefixes(prefixes);
            axum::Json(state.events.report(&filter, crate::events::now_ms())).into_response()
        }
        Err(e) => bad_filter(&e),
    }
}

/// A 400 naming the parameter, for the CLI to show as it is.
fn bad_filter(e: &FilterError) -> Response {
    let body = serde_json::json!({ "error": e.to_string(), "parameter": e.parameter() });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// The liveness probe: 200 whenever the process answers. Never the store's
/// or an upstream's state: restarting berth mends neither, and a replica
/// that restarts while its bucket is down serves nothing until it is up.
async fn live() -> Response {
    axum::Json(serde_json::json!({"status": "alive"})).into_response()
}

/// The readiness probe: 200 while serving; 503 once a shutdown began or when
/// the cache cannot be written (pulls would still pass through, but nothing
/// would be kept: a load balancer should prefer another replica). A bucket
/// every replica shares fails them all alike: then 200, "degraded", so a
/// Service keeps its replicas and their pass-through.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    use axum::http::StatusCode;
    if state.stopping.load(std::sync::atomic::Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "stopping"})),
        )
            .into_response();
    }
    match state.cache.writable().await {
        Ok(()) => axum::Json(serde_json::json!({"status": "serving"})).into_response(),
        Err(e) if state.cache.store_is_shared() => {
            axum::Json(serde_json::json!({"status": "degraded", "error": e.to_string(), "cause": e.cause().name()}))
                .into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(
                serde_json::json!({"status": "cache unwritable", "error": e.to_string(), "cause": e.cause().name()}),
            ),
        )
            .into_response(),
    }
}

/// Failures counted by cause over this window, from the ring of recent ones.
const RECENT: std::time::Duration = std::time::Duration::from_secs(3600);

/// What an operator looks at first, as JSON: version and uptime, the cache's
/// use and hit ratios, traffic served against fetched, each upstream's state
/// with its last failure, and the last hour's failures by cause with hints.
async fn status(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(status_of(&state)).into_response()
}

/// The status page: the same as `/_berth/status`, as HTML for a person.
async fn page(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        status_page::render(&status_of(&state)),
    )
        .into_response()
}

/// Images in the status's most-pulled list.
const TOP_IMAGES: usize = 10;
/// Fetches listed at most (the oldest first); the rest are only counted by
/// `berth_cache_misses_total`.
const MAX_INFLIGHT_SHOWN: usize = 50;

/// `sha256:` and the first 12 hex digits, as `docker images` shows an ID.
fn short_digest(digest: &str) -> String {
    let (algorithm, hex) = digest.split_once(':').unwrap_or(("", digest));
    let hex: String = hex.chars().take(12).collect();
    if algorithm.is_empty() {
        hex
    } else {
        format!("{algorithm}:{hex}")
    }
}

fn status_of(state: &AppState) -> serde_json::Value {
    use serde_json::json;
    let metrics = &state.events.metrics;
    let now_ms = crate::events::now_ms();
    let report = state
        .events
        .report(&crate::failure_filter::FailureFilter::default(), now_ms);
    let since = now_ms.saturating_sub(RECENT.as_millis() as u64);
    let mut last_hour: std::collections::BTreeMap<&str, (u64, String)> = Default::default();
    for f in report.failures.iter().filter(|f| f.at_unix_ms >= since) {
        let entry = last_hour
            .entry(f.cause.name())
            .or_insert((0, f.cause.hint().to_string()));
        entry.0 += 1;
    }
    let ratio = |kind: &str| {
        let (hits, misses) = metrics.hits_and_misses(kind);
        let total = hits.saturating_add(misses);
        json!({"hits": hits, "misses": misses, "hit_ratio": (total > 0).then(|| hits as f64 / total as f64)})
    };
    let live = state.live();
    let upstreams: Vec<_> = live
        .upstreams
        .iter()
        .map(|u| {
            let last = report
                .failures
                .iter()
                .find(|f| f.upstream.as_deref() == Some(u.name.as_str()));
            let (limit, remaining) = metrics.ratelimit_of(&u.name);
            json!({
                "name": u.name,
                "state": u.health(),
                "ratelimit": {"limit": limit, "remaining": remaining},
                "last_failure": last.map(|f| json!({
                    "at_unix_ms": f.at_unix_ms, "cause": f.cause.name(), "hint": f.hint,
                    "repository": f.repository, "reference": f.reference,
                })),
            })
        })
        .collect();
    let inflight: Vec<_> = state
        .cache
        .inflight()
        .into_iter()
        .take(MAX_INFLIGHT_SHOWN)
        .map(|f| {
            let digest = f.digest.to_string();
            json!({
                "digest": digest,
                "short_digest": short_digest(&digest),
                "upstream": f.upstream,
                "repository": f.repo.as_str(),
                "received_bytes": f.received,
                "expected_bytes": f.expected,
                "clients": f.clients,
                "age_secs": f.age.as_secs(),
            })
        })
        .collect();
    let top_images = metrics.top_images.top(TOP_IMAGES);
    let (reloads_ok, reloads_failed, last_reload) = metrics.reloads();
    let (used, max) = state.cache.usage();
    let served = metrics.served_bytes.get();
    let fetched = metrics.upstream_bytes.get();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.started.elapsed().as_secs(),
        "now_unix_ms": now_ms,
        "stopping": state.stopping.load(std::sync::atomic::Ordering::SeqCst),
        "cache": {"used_bytes": used, "max_bytes": max},
        "manifests": ratio("manifest"),
        "blobs": ratio("blob"),
        "traffic": {"served_bytes": served, "fetched_bytes": fetched, "saved_bytes": served.saturating_sub(fetched)},
        "upstreams": upstreams,
        "inflight": inflight,
        "top_images": top_images,
        "config_reloads": {"ok": reloads_ok, "failed": reloads_failed, "last": last_reload},
        "prefetch": state.events.metrics.prefetches(),
        "failures_last_hour": last_hour.iter().map(|(cause, (n, hint))| json!({"cause": cause, "count": n, "hint": hint})).collect::<Vec<_>>(),
    })
}

/// `berth gc --url`: one eviction run now, or with `?dry_run=true` its plan.
async fn gc(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery) -> Response {
    let dry_run = match query.as_deref().unwrap_or_default() {
        "" => false,
        "dry_run=true" | "dry_run=1" | "dry_run" => true,
        "dry_run=false" | "dry_run=0" => false,
        other => {
            let body = serde_json::json!({ "error": format!("unknown query {other:?}: only dry_run=true|false") });
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
    };
    match state.cache.gc(dry_run).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => {
            let body = serde_json::json!({ "error": e.to_string(), "cause": e.cause().name() });
            (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response()
        }
    }
}

/// `berth prefetch --url`: warm the images of the JSON body
/// (`{"images": [...], "platform": "linux/amd64"}`), then report.
async fn prefetch(
    State(state): State<Arc<AppState>>,
    body: Result<axum::Json<crate::prefetch::PrefetchRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let bad = |message: String| {
        let body = serde_json::json!({ "error": message });
        (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
    };
    let request = match body {
        Ok(axum::Json(r)) => r,
        Err(e) => return bad(format!("not a prefetch request: {e}")),
    };
    let live = state.live();
    match crate::prefetch::run(&state.cache, &live.upstreams, &request, &|_, _| {}).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => bad(e),
    }
}
