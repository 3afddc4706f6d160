//! The admin surface: `/metrics` and `/_berth/*`. It shows other clients'
//! addresses and repository names, so it is served apart from the registry
//! API: on `admin_listen` (loopback by default), or on `listen` when the
//! operator puts it there (`admin_listen = ""`). It only reads state the
//! API layer keeps; it never calls the cache or an upstream.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::api::AppState;

/// The admin routes, to be served on their own listener or merged into the API's.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/_berth/failures", axum::routing::get(failures))
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

/// The most recent failures, newest first, with counts by cause.
async fn failures(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(state.events.report()).into_response()
}
