//! The admin surface: `/metrics` and `/_berth/*`. It shows other clients'
//! addresses and repository names, so it is served apart from the registry
//! API: on `admin_listen` (loopback by default), or on `listen` when the
//! operator puts it there (`admin_listen = ""`). It only reads state the
//! API layer keeps; it never calls the cache or an upstream.

use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api::AppState;
use crate::failure_filter::{FailureFilter, FilterError};

/// The admin routes, to be served on their own listener or merged into the API's.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/_berth/failures", axum::routing::get(failures))
        .route("/_berth/health", axum::routing::get(health))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
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
            let prefixes = state
                .upstreams
                .iter()
                .map(|u| (u.config.prefix.clone(), u.name.clone()));
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

/// The readiness probe: 200 while serving; 503 once a shutdown began or when
/// the cache cannot be written (pulls would still pass through, but nothing
/// would be kept: a load balancer should prefer another replica).
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
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(
                serde_json::json!({"status": "cache unwritable", "error": e.to_string(), "cause": e.cause().name()}),
            ),
        )
            .into_response(),
    }
}
