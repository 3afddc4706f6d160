//! In-process tests of the API: the router driven with `oneshot` against a
//! scripted upstream, and every failure cause's spec answer and hint.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request as HttpRequest, StatusCode, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use tower::ServiceExt;

use super::errors::{ApiError, Code, Subject, answer_for};
use super::{AppState, router};
use crate::cache::Cache;
use crate::events::Events;
use crate::failure::FailureCause;
use crate::testing::{FakeUpstream, Reply, blob};
use crate::upstream::Upstream;

struct App {
    router: axum::Router,
    _dir: tempfile::TempDir,
}

async fn app(up: &FakeUpstream) -> App {
    app_scoped(up, false).await
}

/// The router over a cache with repository scoping on or off.
async fn app_scoped(up: &FakeUpstream, scoped: bool) -> App {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = up.config(dir.path(), "");
    let events = Arc::new(Events::default());
    let upstreams = vec![Arc::new(
        Upstream::new(&config.upstreams[0], events.clone()).expect("upstream"),
    )];
    let cache = Cache::open(&config, events.clone())
        .await
        .expect("cache")
        .scope_by_repository(scoped);
    let auth = crate::auth::Authenticator::new(None, &[], 0, 0).expect("no access control");
    let state = Arc::new(AppState {
        config,
        live: std::sync::RwLock::new(Arc::new(super::Live {
            upstreams,
            auth: Arc::new(auth),
        })),
        cache,
        events,
        stopping: Default::default(),
        started: std::time::Instant::now(),
    });
    App {
        router: router(state),
        _dir: dir,
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Bytes,
}

impl Answer {
    /// `errors[0]` of a spec error body: code, cause, hint.
    fn error(&self) -> (String, String, String) {
        let v: serde_json::Value = serde_json::from_slice(&self.body).expect("a JSON error body");
        let e = &v["errors"][0];
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        (s(&e["code"]), s(&e["detail"]["cause"]), s(&e["detail"]["hint"]))
    }
}

async fn send(app: &App, method: &str, uri: &str, range: Option<&str>) -> Answer {
    let mut req = HttpRequest::builder().method(method).uri(uri);
    if let Some(r) = range {
        req = req.header(header::RANGE, r);
    }
    let resp = app
        .router
        .clone()
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 64 << 20).await.expect("body");
    Answer { status, headers, body }
}

#[test]
fn every_cause_from_the_cache_has_its_spec_answer_and_hint() {
    use FailureCause::*;
    let expected = |c: FailureCause| match c {
        ManifestUnknown | BlobUnknown => (Code::BlobUnknown, StatusCode::NOT_FOUND),
        NameUnknown => (Code::NameUnknown, StatusCode::NOT_FOUND),
        Forbidden => (Code::Denied, StatusCode::FORBIDDEN),
        Unauthorized => (Code::Unauthorized, StatusCode::BAD_GATEWAY),
        RateLimited => (Code::TooManyRequests, StatusCode::TOO_MANY_REQUESTS),
        ClientUnauthorized => (Code::Unauthorized, StatusCode::UNAUTHORIZED),
        ClientForbidden => (Code::Denied, StatusCode::FORBIDDEN),
        ClientRateLimited => (Code::TooManyRequests, StatusCode::TOO_MANY_REQUESTS),
        ConnectTimeout | ReadTimeout => (Code::Unavailable, StatusCode::GATEWAY_TIMEOUT),
        DigestMismatch => (Code::DigestInvalid, StatusCode::BAD_GATEWAY),
        ManifestInvalid => (Code::ManifestInvalid, StatusCode::BAD_GATEWAY),
        DiskFull | StorageError | Internal => (Code::Unknown, StatusCode::INTERNAL_SERVER_ERROR),
        DnsResolution
        | ConnectionRefused
        | TlsError
        | ProxyError
        | ConnectionReset
        | UpstreamUnavailable
        | NotCachedOffline
        | InvalidReference
        | UnsupportedMediaType
        | UpstreamNotConfigured
        | UnsupportedOperation
        | InvalidRequest
        | ClientAborted => (Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
    };
    for cause in FailureCause::ALL {
        let (code, status) = answer_for(cause, Subject::Blob);
        assert_eq!((code, status), expected(cause), "{cause:?}");
        let resp = ApiError::new(code, cause, "blob x").with_status(status).into_response();
        assert_eq!(resp.status(), status);
        let body = futures_util::FutureExt::now_or_never(axum::body::to_bytes(resp.into_body(), 1 << 20))
            .expect("a ready body")
            .expect("body");
        let answer = Answer {
            status,
            headers: Default::default(),
            body,
        };
        let (got_code, got_cause, hint) = answer.error();
        assert_eq!(got_code, code.as_str(), "{cause:?}");
        assert_eq!(got_cause, cause.name());
        assert_eq!(hint, cause.hint());
        assert!(!hint.is_empty());
    }
    // The subject decides which "unknown" a 404 is.
    assert_eq!(answer_for(ManifestUnknown, Subject::Manifest).0, Code::ManifestUnknown);
    assert_eq!(answer_for(ManifestUnknown, Subject::Tags).0, Code::NameUnknown);
}

#[tokio::test]
async fn a_cold_blob_range_is_fetched_once_and_served_as_206() {
    let (bytes, digest) = blob(200_000);
    let body = bytes.clone();
    let up = FakeUpstream::start(move |_| Reply::whole(&body)).await;
    let app = app(&up).await;
    let uri = format!("/v2/library/app/blobs/{digest}");
    let a = send(&app, "GET", &uri, Some("bytes=1000-1999")).await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(a.headers[header::CONTENT_RANGE], "bytes 1000-1999/200000");
    assert_eq!(&a.body[..], &bytes[1000..2000]);
    let whole = send(&app, "GET", &uri, None).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert!(whole.body == bytes);
    let head = send(&app, "HEAD", &uri, None).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.headers["docker-content-digest"], digest.to_string().as_str());
    let gets = up.hits(&digest.to_string());
    assert_eq!(
        gets.iter().filter(|h| h.method == "GET").count(),
        1,
        "fetched from the upstream once"
    );
}

#[tokio::test]
async fn a_head_of_a_cold_blob_answers_the_upstream_size() {
    let (bytes, digest) = blob(123_456);
    let body = bytes.clone();
    let up = FakeUpstream::start(move |_| Reply::whole(&body)).await;
    let app = app(&up).await;
    let a = send(&app, "HEAD", &format!("/v2/library/app/blobs/{digest}"), None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers[header::CONTENT_LENGTH], "123456");
    assert_eq!(
        up.hits(&digest.to_string())[0].method,
        "HEAD",
        "asked with a HEAD, not fetched"
    );
}

#[tokio::test]
async fn upstream_answers_become_spec_errors_with_cause_and_hint() {
    let up = FakeUpstream::start(|hit| match hit.path.as_str() {
        p if p.contains("/missing/") => Reply::Error {
            status: StatusCode::NOT_FOUND,
            code: "MANIFEST_UNKNOWN",
        },
        p if p.contains("/limited/") => Reply::Error {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "TOOMANYREQUESTS",
        },
        _ => Reply::Error {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "UNAVAILABLE",
        },
    })
    .await;
    let app = app(&up).await;
    let a = send(&app, "GET", "/v2/missing/app/manifests/1.0", None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(
        a.error(),
        (
            "MANIFEST_UNKNOWN".into(),
            "manifest_unknown".into(),
            FailureCause::ManifestUnknown.hint().into()
        )
    );
    let a = send(&app, "GET", "/v2/down/app/manifests/1.0", None).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.error().1, "upstream_unavailable");
    assert_eq!(
        up.hits("/down/app/manifests/1.0").len(),
        2,
        "retried once (attempts = 2)"
    );
    let a = send(&app, "GET", "/v2/limited/app/manifests/1.0", None).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.error().0, "TOOMANYREQUESTS");
    assert!(a.headers.contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn a_manifest_that_does_not_match_its_digest_is_refused() {
    let up = FakeUpstream::start(|_| Reply::whole(&Bytes::from_static(br#"{"schemaVersion":2}"#))).await;
    let app = app(&up).await;
    let wrong = crate::reference::Digest::sha256_of(b"something else");
    let a = send(&app, "GET", &format!("/v2/library/app/manifests/{wrong}"), None).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_eq!(a.error().0, "DIGEST_INVALID");
    assert_eq!(a.error().1, "digest_mismatch");
}

#[tokio::test]
async fn bad_requests_are_refused_before_the_upstream_is_asked() {
    let up = FakeUpstream::start(|_| Reply::Error {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "UNKNOWN",
    })
    .await;
    let app = app(&up).await;
    let digest = blob(10).1;
    for (method, uri, range, status, code, cause) in [
        (
            "GET",
            "/v2/Bad/manifests/1.0".to_string(),
            None,
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
            "invalid_reference",
        ),
        (
            "GET",
            "/v2/library/app/manifests/sha256:nothex".to_string(),
            None,
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            "invalid_reference",
        ),
        (
            "POST",
            "/v2/library/app/blobs/uploads/".to_string(),
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "unsupported_operation",
        ),
        (
            "GET",
            format!("/v2/library/app/blobs/{digest}"),
            Some("bytes=9-1"),
            StatusCode::RANGE_NOT_SATISFIABLE,
            "RANGE_INVALID",
            "invalid_request",
        ),
        (
            "GET",
            "/v2/library/app/manifests/1.0?ns=quay.io".to_string(),
            None,
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "upstream_not_configured",
        ),
    ] {
        let a = send(&app, method, &uri, range).await;
        assert_eq!(a.status, status, "{method} {uri}");
        let (got_code, got_cause, hint) = a.error();
        assert_eq!((got_code.as_str(), got_cause.as_str()), (code, cause), "{method} {uri}");
        assert!(!hint.is_empty());
    }
    assert!(up.hits("").is_empty(), "nothing reached the upstream");
}

#[tokio::test]
async fn a_private_blob_is_unknown_under_a_repository_the_upstream_does_not_have_it_in() {
    let (bytes, digest) = blob(20_000);
    let body = bytes.clone();
    let up = FakeUpstream::start(move |hit| match hit.path.starts_with("/v2/private/app/") {
        true => Reply::whole(&body),
        false => Reply::Error {
            status: StatusCode::NOT_FOUND,
            code: "BLOB_UNKNOWN",
        },
    })
    .await;
    let app = app_scoped(&up, true).await;
    let a = send(&app, "GET", &format!("/v2/private/app/blobs/{digest}"), None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body == bytes);
    // Stored or still being committed: either way not opened to public/x.
    let uri = format!("/v2/public/x/blobs/{digest}");
    let a = send(&app, "GET", &uri, None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let (code, cause, _) = a.error();
    assert_eq!((code.as_str(), cause.as_str()), ("BLOB_UNKNOWN", "blob_unknown"));
    let head = send(&app, "HEAD", &uri, None).await;
    assert_eq!(head.status, StatusCode::NOT_FOUND);
    let under_public: Vec<_> = up
        .hits("")
        .into_iter()
        .filter(|h| h.path.starts_with("/v2/public/x/"))
        .collect();
    assert!(
        under_public.iter().all(|h| h.method == "HEAD"),
        "only asked, never fetched: {under_public:?}"
    );
    assert_eq!(under_public.len(), 1, "one HEAD, its answer kept for the rest");
}
