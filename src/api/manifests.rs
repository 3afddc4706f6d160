//! `GET|HEAD /v2/<name>/manifests/<reference>`. HEAD and GET negotiate the
//! same way; an OCI manifest is converted to Docker schema2 when the client
//! cannot read OCI (or the upstream is `convert = "docker"`).

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Request;
use super::errors::{ApiError, Code, Subject};
use crate::cache::{CachedManifest, ConvertError};
use crate::convert::Refusal;
use crate::failure::FailureCause;
use crate::media::{Accept, Negotiation, is_oci, negotiate};
use crate::reference::{Reference, ReferenceError};

pub async fn get(req: &Request<'_>, name: &str, reference: &str) -> Result<Response, ApiError> {
    let (_, route) = req.route(name)?;
    let reference = Reference::parse(reference).map_err(invalid_reference)?;
    let sep = if matches!(reference, Reference::Digest(_)) {
        '@'
    } else {
        ':'
    };
    let what = format!("manifest {}{sep}{reference}", route.repo);
    let cache = &req.state.cache;
    // Another berth asking (a replica revalidating a tag this one owns):
    // answered here, with the manifest as stored; the asking replica
    // converts for its own clients and counts their pulls.
    let user_agent = req.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
    let from_a_berth = crate::cluster::from_a_berth(user_agent);
    let found = match from_a_berth {
        true => cache.manifest_here(&route, &reference).await,
        false => cache.manifest(&route, &reference).await,
    };
    let m = found.map_err(|e| ApiError::from_cache(e, Subject::Manifest, &what))?;
    let accept = Accept::from_headers(&req.headers);
    if from_a_berth && accept.accepts(&m.media_type) {
        return Ok(respond(&req.method, m));
    }
    // Counted once it resolved: a name nobody can pull is never remembered.
    req.state.events.metrics.top_images.pulled(
        &route.upstream.name,
        route.repo.as_str(),
        &reference.to_string(),
        crate::events::now_ms(),
    );
    let by_tag = matches!(reference, Reference::Tag(_));
    let mode = route.upstream.config.convert;
    let converted_digest = !by_tag && cache.is_converted(&m.digest).await;
    match negotiate(&accept, &m.media_type, by_tag, mode, converted_digest) {
        Negotiation::Original => Ok(respond(&req.method, m)),
        Negotiation::NotAcceptable => Err(not_acceptable(&m, &what)),
        Negotiation::ByDigestNotAcceptable => Err(refused(&Refusal::ByDigestNotAcceptable, &what)),
        Negotiation::Convert => match cache.converted(&route, &m).await {
            Ok(c) => Ok(respond(&req.method, c)),
            // convert = "docker" on a client that can read the original anyway.
            Err(ConvertError::Refused(_)) if accept.accepts(&m.media_type) => Ok(respond(&req.method, m)),
            Err(ConvertError::Refused(r)) => Err(refused(&r, &what)),
            Err(ConvertError::Cache(e)) => Err(ApiError::from_cache(e, Subject::Manifest, &what)),
        },
    }
}

/// A tag that cannot exist names no manifest: the OCI conformance suite asks
/// for `.INVALID_MANIFEST_NAME` and expects 404 MANIFEST_UNKNOWN (as
/// Distribution answers). A malformed digest stays 400 DIGEST_INVALID.
fn invalid_reference(e: ReferenceError) -> ApiError {
    match e {
        ReferenceError::Tag(_) => ApiError::new(Code::ManifestUnknown, FailureCause::InvalidReference, e),
        e => ApiError::reference(e),
    }
}

/// The first half is what Distribution and Docker Hub say, which keeps
/// docker's fallback from a mirror to the origin working.
fn refused(r: &Refusal, what: &str) -> ApiError {
    ApiError::new(
        Code::ManifestUnknown,
        FailureCause::UnsupportedMediaType,
        format!(
            "OCI manifest found, but accept header does not support OCI manifests; \
             conversion to Docker schema2 impossible: {} ({what}: {r})",
            r.reason()
        ),
    )
    .with_status(StatusCode::NOT_FOUND)
    .with_reason(r.reason())
    .with_header(header::VARY, "Accept")
}

/// The client cannot read the stored type and berth will not convert it.
fn not_acceptable(m: &CachedManifest, what: &str) -> ApiError {
    let summary = if is_oci(&m.media_type) {
        format!(
            "OCI manifest found, but accept header does not support OCI manifests ({what} is {})",
            m.media_type
        )
    } else {
        format!("{what} is {}, which the Accept header does not include", m.media_type)
    };
    ApiError::new(Code::ManifestUnknown, FailureCause::UnsupportedMediaType, summary)
        .with_status(StatusCode::NOT_FOUND)
        .with_reason("not_acceptable")
        .with_header(header::VARY, "Accept")
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
