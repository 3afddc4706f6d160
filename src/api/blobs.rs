//! `GET|HEAD /v2/<name>/blobs/<digest>`, with a single `Range`.
//!
//! The cache hands over a `Blob` (stored, being fetched, or passed through);
//! this resolves the Range against its size and sends the bytes. A fetch
//! that fails after the headers went out ends the body abnormally, so the
//! client never sees a complete response.

use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::Request;
use super::errors::{ApiError, Code, Subject};
use super::range::{ByteRange, RangeError};
use crate::cache::{CacheError, ReadMode};
use crate::events::RequestFacts;
use crate::failure::{FailureCause, FailureRecord};
use crate::reference::Digest;

pub async fn get(req: &Request<'_>, name: &str, digest: &str) -> Result<Response, ApiError> {
    let (_, route) = req.route(name)?;
    let digest = Digest::parse(digest).map_err(ApiError::reference)?;
    let what = format!("blob {digest} of {}", route.repo);
    let cache = &req.state.cache;
    let range = match req.headers.get(header::RANGE) {
        Some(v) => {
            let text = v.to_str().unwrap_or_default().to_string();
            Some((ByteRange::parse(&text).map_err(|e| range_error(e, None))?, text))
        }
        None => None,
    };
    if req.method == Method::HEAD {
        let size = cache
            .blob_size(&route, &digest)
            .await
            .map_err(|e| ApiError::from_cache(e, Subject::Blob, &what))?;
        return Ok(head_response(&digest, size));
    }
    // Another berth asking (a replica whose owner this is): answered here.
    let user_agent = req.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
    let found = match crate::cluster::from_a_berth(user_agent) {
        true => cache.blob_here(&route, &digest).await,
        false => cache.blob(&route, &digest).await,
    };
    let mut blob = found.map_err(|e| ApiError::from_cache(e, Subject::Blob, &what))?;
    let size = match range {
        Some(_) => blob.size_for_range().await,
        None => Ok(blob.size()),
    }
    .map_err(|e| ApiError::from_cache(e, Subject::Blob, &what))?;
    let span = match (&range, size) {
        (Some((r, text)), Some(size)) => Some(r.resolve(size, text).map_err(|e| range_error(e, Some(size)))?),
        _ => None,
    };
    let (start, end) = match span {
        Some((s, e)) => (s, Some(e)),
        None => (0, size),
    };
    let mode = if req.plain { ReadMode::Mapped } else { ReadMode::Copied };
    let body = blob
        .range(start, end, mode)
        .await
        .map_err(|e| ApiError::from_cache(e, Subject::Blob, &what))?;
    let body = Body::from_stream(record_failures(req, name, &route.repo, &digest, body));
    Ok(body_response(&digest, size, span, body))
}

/// Record a failure that happens after the status went out: the body ends
/// abnormally, and this is the only place the `pull_failed` event can come from.
fn record_failures(
    req: &Request<'_>,
    name: &str,
    repo: &crate::reference::RepoName,
    digest: &Digest,
    stream: impl futures_util::Stream<Item = Result<bytes::Bytes, CacheError>> + Send + 'static,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, CacheError>> + Send + 'static {
    let ctx = req.ctx.clone();
    let events = req.state.events.clone();
    let path = format!("/v2/{name}/blobs/{digest}");
    let (repo, reference) = (repo.to_string(), digest.to_string());
    let served = req.state.events.metrics.served_bytes.clone();
    stream.map(move |item| {
        count_served(&served, &item);
        item.inspect_err(|e| {
            let mut record = FailureRecord::new(e.cause(), format!("{path}: {e}"));
            record.upstream = e.upstream_name().map(str::to_string);
            record.upstream_status = e.upstream_status();
            record.attempts = e.attempts();
            record.repository = Some(repo.clone());
            record.reference = Some(reference.clone());
            if let Some(ctx) = &ctx {
                let facts = RequestFacts {
                    method: "GET",
                    path: &path,
                    status: 200,
                    client: &ctx.client,
                    request_id: &ctx.id,
                    elapsed_ms: ctx.started.elapsed().as_millis() as u64,
                };
                events.pull_failed(&record, &facts);
            }
        })
    })
}

fn count_served<E>(counter: &prometheus_client::metrics::counter::Counter, chunk: &Result<bytes::Bytes, E>) {
    if let Ok(bytes) = chunk {
        counter.inc_by(bytes.len() as u64);
    }
}

fn range_error(e: RangeError, size: Option<u64>) -> ApiError {
    let err = ApiError::new(Code::RangeInvalid, FailureCause::InvalidRequest, &e);
    match size {
        Some(size) => err.with_header(header::CONTENT_RANGE, &format!("bytes */{size}")),
        None => err,
    }
}

fn common_headers(resp: &mut Response, digest: &Digest) {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert("docker-content-digest", v.clone());
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{digest}\"")) {
            h.insert(header::ETAG, etag);
        }
    }
    // Content under a digest never changes.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=31536000"));
}

fn head_response(digest: &Digest, size: Option<u64>) -> Response {
    let mut resp = StatusCode::OK.into_response();
    common_headers(&mut resp, digest);
    if let Some(size) = size {
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    resp
}

fn body_response(digest: &Digest, size: Option<u64>, span: Option<(u64, u64)>, body: Body) -> Response {
    let mut resp = body.into_response();
    common_headers(&mut resp, digest);
    let h = resp.headers_mut();
    match (span, size) {
        // A resolved range is never empty (`resolve` refuses those).
        (Some((start, end)), Some(size)) if end > start => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = resp.headers_mut();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(end.saturating_sub(start)));
            // `resolve` never yields an empty span; saturating all the same.
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end.saturating_sub(1))) {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
        (_, Some(size)) => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        }
        _ => {}
    }
    resp
}
