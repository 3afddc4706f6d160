//! `GET|HEAD /v2/<name>/manifests/<reference>`.

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Request;
use super::errors::{ApiError, Code, Subject};
use crate::cache::CachedManifest;
use crate::failure::FailureCause;
use crate::media::{Accept, is_oci};
use crate::reference::Reference;

pub async fn get(req: &Request<'_>, name: &str, reference: &str) -> Result<Response, ApiError> {
    let (_, route) = req.route(name)?;
    let reference = Reference::parse(reference).map_err(ApiError::reference)?;
    let what = format!("manifest {}:{reference}", route.repo);
    let m = req
        .state
        .cache
        .manifest(route.upstream, &route.repo, &reference)
        .await
        .map_err(|e| ApiError::from_cache(e, Subject::Manifest, &what))?;
    let accept = Accept::from_headers(&req.headers);
    if !accept.accepts(&m.media_type) {
        return Err(not_acceptable(&m, &what));
    }
    Ok(respond(&req.method, m))
}

/// The client cannot read the stored type. For OCI types the message starts
/// as Distribution's and Docker Hub's do, which keeps docker's fallback from
/// a mirror to the origin working.
fn not_acceptable(m: &CachedManifest, what: &str) -> ApiError {
    let summary = if is_oci(&m.media_type) {
        format!(
            "OCI manifest found, but accept header does not support OCI manifests ({what} is {})",
            m.media_type
        )
    } else {
        format!(
            "{what} is {}, which the Accept header does not include",
            m.media_type
        )
    };
    ApiError::new(
        Code::ManifestUnknown,
        FailureCause::UnsupportedMediaType,
        summary,
    )
    .with_status(StatusCode::NOT_FOUND)
}

fn respond(method: &Method, m: CachedManifest) -> Response {
    let digest = m.digest.to_string();
    let headers = [
        (header::CONTENT_TYPE, m.media_type.clone()),
        (header::CONTENT_LENGTH, m.bytes.len().to_string()),
        (header::ETAG, format!("\"{digest}\"")),
        (header::VARY, "Accept".to_string()),
    ];
    let mut resp = if method == Method::HEAD {
        (StatusCode::OK, headers).into_response()
    } else {
        (StatusCode::OK, headers, m.bytes).into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&digest) {
        resp.headers_mut().insert("docker-content-digest", v);
    }
    resp
}
