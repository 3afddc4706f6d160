//! `GET|HEAD /v2/<name>/referrers/<digest>[?artifactType=]` (OCI 1.1): the
//! signatures, SBOMs and attestations of a subject, as an OCI image index.
//! The cache keeps the unfiltered list; a filter is applied here and said
//! so with `OCI-Filters-Applied`. A subject without referrers is a 200 with
//! an empty list, as the spec has it.

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Request;
use super::errors::{ApiError, Subject};
use crate::media::OCI_INDEX;
use crate::reference::Digest;

/// The header naming the filters berth applied.
const FILTERS_APPLIED: &str = "oci-filters-applied";

pub async fn list(req: &Request<'_>, name: &str, digest: &str) -> Result<Response, ApiError> {
    let (_, route) = req.route(name)?;
    let subject = Digest::parse(digest).map_err(ApiError::reference)?;
    let what = format!("referrers of {}@{subject}", route.repo);
    let index = req
        .state
        .cache
        .referrers(&route, &subject)
        .await
        .map_err(|e| ApiError::from_cache(e, Subject::Tags, &what))?;
    // A media type has no spaces; a `+` left unencoded (`spdx+json` typed
    // into curl) reads as one in a query, and is meant as a `+`.
    let artifact_type = req
        .query_param("artifactType")
        .filter(|t| !t.is_empty())
        .map(|t| t.replace(' ', "+"));
    let body = match &artifact_type {
        Some(t) => index.filtered(t),
        None => index.bytes().clone(),
    };
    let headers = [
        (header::CONTENT_TYPE, OCI_INDEX.to_string()),
        (header::CONTENT_LENGTH, body.len().to_string()),
    ];
    let mut resp = if req.method == Method::HEAD {
        (StatusCode::OK, headers).into_response()
    } else {
        (StatusCode::OK, headers, body).into_response()
    };
    if artifact_type.is_some() {
        resp.headers_mut()
            .insert(FILTERS_APPLIED, HeaderValue::from_static("artifactType"));
    }
    Ok(resp)
}
