//! Spec error codes, declared once with their status, and the one place where
//! errors become `{"errors":[{"code","message","detail"}]}` responses.
//!
//! `IntoResponse` has no side effects: the failure record rides along as a
//! response extension and the request middleware logs it exactly once.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::cache::CacheError;
use crate::failure::{FailureCause, FailureRecord};
use crate::reference::ReferenceError;
use crate::routing::NotConfigured;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    NameInvalid,
    NameUnknown,
    TagInvalid,
    DigestInvalid,
    ManifestUnknown,
    ManifestInvalid,
    BlobUnknown,
    RangeInvalid,
    PaginationNumberInvalid,
    Unauthorized,
    Denied,
    TooManyRequests,
    Unsupported,
    Unavailable,
    Unknown,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::TagInvalid => "TAG_INVALID",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::RangeInvalid => "RANGE_INVALID",
            Code::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::TooManyRequests => "TOOMANYREQUESTS",
            Code::Unsupported => "UNSUPPORTED",
            Code::Unavailable => "UNAVAILABLE",
            Code::Unknown => "UNKNOWN",
        }
    }

    /// The status a client gets when berth itself decides (not an upstream).
    pub fn status(self) -> StatusCode {
        match self {
            Code::NameInvalid
            | Code::TagInvalid
            | Code::DigestInvalid
            | Code::ManifestInvalid
            | Code::PaginationNumberInvalid => StatusCode::BAD_REQUEST,
            Code::NameUnknown | Code::ManifestUnknown | Code::BlobUnknown => StatusCode::NOT_FOUND,
            Code::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Denied => StatusCode::FORBIDDEN,
            Code::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Code::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// What kind of object a request was after; decides e.g. which "unknown" code
/// an upstream 404 becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Manifest,
    Blob,
    Tags,
}

#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    pub status: StatusCode,
    pub message: String,
    /// Everything the failure event needs; `detail` is the client's message.
    pub record: Box<FailureRecord>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(code: Code, cause: FailureCause, summary: impl std::fmt::Display) -> Self {
        Self::suggesting(code, cause, summary, None)
    }

    /// As `new`, with what this failure adds to the cause's hint.
    fn suggesting(
        code: Code,
        cause: FailureCause,
        summary: impl std::fmt::Display,
        suggestion: Option<String>,
    ) -> Self {
        let mut record = FailureRecord::new(cause, String::new());
        record.suggestion = suggestion;
        // Whatever the summary quotes (an upstream error naming a signed
        // redirect URL) reaches the client and the failure log redacted.
        let message = crate::redact::message(&format!("{summary} (cause={}): {}", cause.name(), record.hint()));
        record.detail = message.clone();
        Self {
            code,
            status: code.status(),
            record: Box::new(record),
            message,
            headers: Vec::new(),
        }
    }

    /// Name the repository and reference the request was about.
    pub fn about(mut self, repository: &str, reference: Option<&str>) -> Self {
        self.record.repository = Some(repository.to_string());
        self.record.reference = reference.map(str::to_string);
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.record.reason = Some(reason);
        self
    }

    pub fn reference(e: ReferenceError) -> Self {
        let code = match e {
            ReferenceError::Name(..) => Code::NameInvalid,
            ReferenceError::Tag(_) => Code::TagInvalid,
            ReferenceError::Digest(..) => Code::DigestInvalid,
        };
        ApiError::new(code, FailureCause::InvalidReference, e)
    }

    pub fn not_configured(e: NotConfigured) -> Self {
        ApiError::new(Code::NameUnknown, FailureCause::UpstreamNotConfigured, e)
    }

    /// Map a cache failure for a request about `subject` named `what`.
    pub fn from_cache(e: CacheError, subject: Subject, what: &str) -> Self {
        let cause = e.cause();
        let (code, status) = answer_for(cause, subject);
        let mut err = ApiError::suggesting(code, cause, format!("{what}: {e}"), e.suggestion()).with_status(status);
        err.record.upstream = e.upstream_name().map(str::to_string);
        err.record.upstream_status = e.upstream_status();
        err.record.attempts = e.attempts();
        err.record.ratelimit = e.ratelimit();
        if let Some(retry_after) = e.retry_after() {
            err = err.with_header(axum::http::header::RETRY_AFTER, &retry_after.to_string());
        }
        err
    }
}

/// The spec code and status a cache failure of `cause` becomes, for a
/// request about `subject`.
pub fn answer_for(cause: FailureCause, subject: Subject) -> (Code, StatusCode) {
    match cause {
        FailureCause::ManifestUnknown | FailureCause::BlobUnknown | FailureCause::NameUnknown => {
            let code = match (cause, subject) {
                (FailureCause::NameUnknown, _) => Code::NameUnknown,
                (_, Subject::Blob) => Code::BlobUnknown,
                (_, Subject::Manifest) => Code::ManifestUnknown,
                (_, Subject::Tags) => Code::NameUnknown,
            };
            (code, StatusCode::NOT_FOUND)
        }
        FailureCause::Forbidden => (Code::Denied, StatusCode::FORBIDDEN),
        // Upstream credentials are berth's problem, not the client's: a
        // 401 here would send the client looking for a token service.
        FailureCause::Unauthorized => (Code::Unauthorized, StatusCode::BAD_GATEWAY),
        FailureCause::RateLimited => (Code::TooManyRequests, StatusCode::TOO_MANY_REQUESTS),
        // berth's own client access control: these are the client's to fix.
        FailureCause::ClientUnauthorized => (Code::Unauthorized, StatusCode::UNAUTHORIZED),
        FailureCause::ClientForbidden => (Code::Denied, StatusCode::FORBIDDEN),
        FailureCause::ClientRateLimited => (Code::TooManyRequests, StatusCode::TOO_MANY_REQUESTS),
        FailureCause::ConnectTimeout | FailureCause::ReadTimeout => (Code::Unavailable, StatusCode::GATEWAY_TIMEOUT),
        FailureCause::DigestMismatch => (Code::DigestInvalid, StatusCode::BAD_GATEWAY),
        FailureCause::ManifestInvalid => (Code::ManifestInvalid, StatusCode::BAD_GATEWAY),
        FailureCause::DiskFull | FailureCause::StorageError | FailureCause::Internal => {
            (Code::Unknown, StatusCode::INTERNAL_SERVER_ERROR)
        }
        _ => (Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
    }
}

#[derive(Serialize)]
struct Body<'a> {
    errors: [Entry<'a>; 1],
}

#[derive(Serialize)]
struct Entry<'a> {
    code: &'a str,
    message: &'a str,
    detail: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    cause: &'a str,
    hint: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let hint = self.record.hint();
        let body = Body {
            errors: [Entry {
                code: self.code.as_str(),
                message: &self.message,
                detail: Detail {
                    cause: self.record.cause.name(),
                    hint: &hint,
                    upstream: self.record.upstream.as_deref(),
                },
            }],
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = (
            self.status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            json,
        )
            .into_response();
        for (name, value) in self.headers {
            resp.headers_mut().insert(name, value);
        }
        let cause = self.record.cause;
        // HEAD answers have no body: the cause and hint ride in headers too.
        resp.headers_mut()
            .insert(CAUSE_HEADER, HeaderValue::from_static(cause.name()));
        if let Ok(hint) = HeaderValue::from_str(&visible_ascii(&hint)) {
            resp.headers_mut().insert(HINT_HEADER, hint);
        }
        // containerd quotes the status line of a failed non-404 answer in
        // its error (and so in kubelet's events): name the cause there, the
        // status code itself unchanged. HTTP/1.1 only; h2 has no phrase.
        if let Some(phrase) = reason_phrase(self.status, cause, &hint) {
            resp.extensions_mut().insert(phrase);
        }
        resp.extensions_mut().insert(*self.record);
        resp
    }
}

/// The header naming the failure cause on every error answer.
pub const CAUSE_HEADER: HeaderName = HeaderName::from_static("berth-cause");
/// The header carrying the cause's hint on every error answer.
pub const HINT_HEADER: HeaderName = HeaderName::from_static("berth-hint");

/// `Not Found (berth: manifest_unknown: …)`: the canonical phrase first, so
/// a client that prints the status line still reads what the status means.
fn reason_phrase(status: StatusCode, cause: FailureCause, hint: &str) -> Option<hyper::ext::ReasonPhrase> {
    let canonical = status.canonical_reason().unwrap_or("Error");
    let phrase = visible_ascii(&format!("{canonical} (berth: {}: {hint})", cause.name()));
    hyper::ext::ReasonPhrase::try_from(phrase.into_bytes()).ok()
}

/// Only what a header value and a reason phrase may hold: printable ASCII
/// and spaces; anything else becomes `?`.
fn visible_ascii(text: &str) -> String {
    text.chars()
        .map(|c| if c == ' ' || c.is_ascii_graphic() { c } else { '?' })
        .collect()
}
