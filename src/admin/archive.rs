//! `berth export --url` and `berth import --url`: the running berth owns the
//! cache, so it builds the archive (in its cache directory, then streams it
//! back: the file is unlinked once open, so nothing is left behind) or takes
//! the archive as the request body (written to its cache directory, then
//! imported with the same checks as `--config`, then removed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::api::AppState;
use crate::archive::{ArchiveError, ExportRequest, ImportOptions};

/// Temp archives in the cache directory are told apart by this.
static NEXT: AtomicU64 = AtomicU64::new(0);

fn temp_path(state: &AppState, what: &str) -> std::path::PathBuf {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    state
        .config
        .cache_dir
        .join(format!(".{what}-{}-{n}.tar", std::process::id()))
}

fn refused(e: &ArchiveError) -> Response {
    let status = if e.is_usage() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    (status, axum::Json(serde_json::json!({ "error": e.to_string() }))).into_response()
}

fn pairs(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// `GET /_berth/export?image=…&image=…&platform=…`: the archive as the body,
/// its summary in `x-berth-export-summary`.
pub async fn export(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery) -> Response {
    let mut request = ExportRequest::default();
    for (k, v) in pairs(query.as_deref()) {
        match k.as_str() {
            "image" => request.images.push(v),
            "platform" if !v.is_empty() => request.platform = Some(v),
            "platform" => {}
            other => {
                return refused(&ArchiveError::Usage(format!(
                    "unknown parameter {other:?}: image, platform"
                )));
            }
        }
    }
    let path = temp_path(&state, "export");
    let live = state.live();
    let summary = match crate::archive::export(&state.cache, &live.upstreams, &request, &path, &|_, _| {}).await {
        Ok(s) => s,
        Err(e) => return refused(&e),
    };
    let file = tokio::fs::File::open(&path).await;
    // Open: the name can go, the bytes stay until the stream ends.
    let _ = tokio::fs::remove_file(&path).await;
    let file = match file {
        Ok(f) => f,
        Err(source) => {
            return refused(&ArchiveError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    tracing::info!(
        images = summary.images,
        blobs = summary.blobs,
        bytes = summary.bytes,
        "export served"
    );
    let mut response = Body::from_stream(tokio_util::io::ReaderStream::new(file)).into_response();
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/x-tar"));
    if let Ok(Ok(v)) = serde_json::to_string(&summary).map(HeaderValue::try_from) {
        response.headers_mut().insert("x-berth-export-summary", v);
    }
    response
}

/// `POST /_berth/import?upstream=…&docker_save=true` with the archive as the body.
pub async fn import(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery, body: Body) -> Response {
    let mut options = ImportOptions::default();
    for (k, v) in pairs(query.as_deref()) {
        match k.as_str() {
            "upstream" => options.upstream = Some(v),
            "docker_save" => options.docker_save = v == "true" || v == "1",
            other => {
                return refused(&ArchiveError::Usage(format!(
                    "unknown parameter {other:?}: upstream, docker_save"
                )));
            }
        }
    }
    let path = temp_path(&state, "import");
    let received = receive(&path, body).await;
    let done = match received {
        Ok(()) => crate::archive::import(&state.cache, &state.live().upstreams, &path, &options, &|_| {}).await,
        Err(e) => Err(e),
    };
    let _ = tokio::fs::remove_file(&path).await;
    match done {
        Ok(summary) => {
            tracing::info!(
                images = summary.images.len(),
                blobs_new = summary.blobs_new,
                "archive imported"
            );
            axum::Json(summary).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "archive refused");
            refused(&e)
        }
    }
}

async fn receive(path: &std::path::Path, body: Body) -> Result<(), ArchiveError> {
    let io = |source| ArchiveError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = tokio::fs::File::create(path).await.map_err(io)?;
    let mut stream = body.into_data_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| ArchiveError::Invalid(format!("the upload broke off: {e}")))?;
        file.write_all(&piece).await.map_err(io)?;
    }
    file.flush().await.map_err(io)
}
