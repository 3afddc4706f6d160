//! The HTTP surface of `/v2/`: one catch-all route, a pure path parser, and a
//! handler per endpoint. Handlers parse and validate input, ask the cache, and
//! shape the response; they never touch files or the upstream directly.

mod blobs;
pub mod errors;
mod manifests;
pub mod path;
mod range;
mod referrers;
mod tags;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

use crate::cache::Cache;
use crate::config::Config;
use crate::events::Events;
use crate::failure::FailureCause;
use crate::reference::{Digest, Reference, RepoName};
use crate::routing::{Route, route};
use crate::upstream::Upstream;
use errors::{ApiError, Code};
use path::Endpoint;

pub const API_VERSION_HEADER: &str = "docker-distribution-api-version";

pub struct AppState {
    /// The config berth started with: what a reload cannot change
    /// (listeners, cache) is read from here.
    pub config: Config,
    /// What SIGHUP swaps whole: read once per request (`live()`), so a
    /// request runs on one routing table and one set of rules to its end.
    pub live: std::sync::RwLock<Arc<Live>>,
    pub cache: Cache,
    pub events: Arc<Events>,
    /// Set when a shutdown began: the readiness probe says so, so load
    /// balancers stop sending while responses in flight finish.
    pub stopping: std::sync::atomic::AtomicBool,
    /// When this berth started (the status page's uptime).
    pub started: std::time::Instant,
}

/// The part of the state a config reload replaces.
pub struct Live {
    /// One client per configured upstream, in the configured order.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Who may pull what (`[auth]`, `[[access]]`, the per-client rate).
    pub auth: Arc<crate::auth::Authenticator>,
}

impl AppState {
    /// The routing table and access rules in force now.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Put `next` in force for requests that start from now on.
    pub fn swap_live(&self, next: Live) {
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
    }
}

/// Set by the server on requests of a plain-TCP connection: nothing in berth
/// reads a response's bytes there (the kernel copies them to the socket), so
/// stored blobs may go out as memory-mapped slices. TLS connections encrypt
/// in berth and get blobs read into buffers instead.
#[derive(Debug, Clone, Copy)]
pub struct PlainConnection;

/// Per-request facts the middleware sets for handlers and streaming bodies.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub id: String,
    pub client: String,
    pub started: std::time::Instant,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v2", any(base))
        .route("/v2/", any(base))
        .route(crate::cluster::IN_USE_PATH, any(in_use))
        .route("/v2/{*rest}", any(dispatch))
        .with_state(state)
}

async fn base(method: Method) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return unsupported(&method);
    }
    let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{}").into_response();
    resp.headers_mut()
        .insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
    resp
}

/// What this replica has served and is reading, for the replica evicting
/// for the fleet; only replicas may ask.
async fn in_use(State(state): State<Arc<AppState>>, method: Method, headers: HeaderMap) -> Response {
    if method != Method::GET {
        return unsupported(&method);
    }
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !state.live().auth.lets_replica(authorization) {
        let e = ApiError::new(
            Code::Unauthorized,
            FailureCause::ClientUnauthorized,
            "authentication required: only a replica of this fleet, with the cluster secret, may ask this",
        );
        return with_version(e.into_response());
    }
    match state.cache.in_use().await {
        Ok(in_use) => axum::Json(in_use).into_response(),
        Err(e) => with_version(
            ApiError::new(
                Code::Unavailable,
                FailureCause::StorageError,
                format!("cannot read this replica's access times: {e}"),
            )
            .into_response(),
        ),
    }
}

/// The request as the handlers see it, already split into its parts.
pub struct Request<'a> {
    pub state: &'a AppState,
    /// The routing table this request started on.
    pub live: Arc<Live>,
    pub method: Method,
    pub headers: HeaderMap,
    pub query: Option<String>,
    pub ctx: Option<RequestContext>,
    /// Whether the connection is plain TCP (see `PlainConnection`).
    pub plain: bool,
}

impl Request<'_> {
    pub fn query_param(&self, key: &str) -> Option<String> {
        let q = self.query.as_deref()?;
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }

    /// Validate the name and pick the upstream that serves it.
    pub fn route(&self, name: &str) -> Result<(RepoName, Route), ApiError> {
        let name = RepoName::parse(name).map_err(ApiError::reference)?;
        let ns = self.query_param("ns");
        let r = route(&self.live.upstreams, &name, ns.as_deref()).map_err(ApiError::not_configured)?;
        Ok((name, r))
    }
}

/// What the server's middleware attached to the request.
struct Attached {
    ctx: Option<RequestContext>,
    plain: bool,
    /// Loaded by the access check; absent on a router without it.
    live: Option<Arc<Live>>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Attached {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Attached {
            ctx: parts.extensions.get::<RequestContext>().cloned(),
            plain: parts.extensions.get::<PlainConnection>().is_some(),
            live: parts.extensions.remove::<Arc<Live>>(),
        })
    }
}

async fn dispatch(
    State(state): State<Arc<AppState>>,
    method: Method,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    attached: Attached,
) -> Response {
    let endpoint = path::parse(&rest);
    if method != Method::GET && method != Method::HEAD && endpoint != Endpoint::Unknown {
        return match push_reference_error(&endpoint) {
            Some(e) => with_version(e.into_response()),
            None => unsupported(&method),
        };
    }
    let Attached { ctx, plain, live } = attached;
    let req = Request {
        state: &state,
        live: live.unwrap_or_else(|| state.live()),
        method,
        headers,
        query,
        ctx,
        plain,
    };
    let about = endpoint.subject();
    let result = match endpoint {
        Endpoint::Base => return base(req.method).await,
        Endpoint::Manifest { name, reference } => manifests::get(&req, name, reference).await,
        Endpoint::Blob { name, digest } => blobs::get(&req, name, digest).await,
        Endpoint::Tags { name } => tags::list(&req, name).await,
        Endpoint::Referrers { name, digest } => referrers::list(&req, name, digest).await,
        Endpoint::Upload { .. } => Err(ApiError::new(
            Code::Unsupported,
            FailureCause::UnsupportedOperation,
            "berth is a read-only mirror; push is not supported",
        )),
        Endpoint::Unknown => Err(ApiError::new(
            Code::Unsupported,
            FailureCause::InvalidRequest,
            format!("no such registry API endpoint: /v2/{rest}"),
        )
        .with_status(StatusCode::NOT_FOUND)),
    };
    let result = result.map_err(|e| match about {
        Some((name, reference)) => e.about(name, reference),
        None => e,
    });
    with_version(result.unwrap_or_else(IntoResponse::into_response))
}

/// A push names its repository and reference like a pull does, and a client
/// learns what is wrong with them before it learns that berth does not take
/// pushes: a malformed name is 400 NAME_INVALID, a malformed digest 400
/// DIGEST_INVALID, a malformed tag 400 TAG_INVALID (for a push the spec's
/// 404 for a bad tag on a pull does not apply), whatever the method.
/// Only syntax is checked: no routing, so a push to an unconfigured registry
/// is still 405.
fn push_reference_error(endpoint: &Endpoint<'_>) -> Option<ApiError> {
    let (name, reference) = endpoint.subject()?;
    let checked = RepoName::parse(name).and_then(|_| match (endpoint, reference) {
        (Endpoint::Manifest { .. }, Some(r)) => Reference::parse(r).map(drop),
        (_, Some(d)) => Digest::parse(d).map(drop),
        (_, None) => Ok(()),
    });
    checked.err().map(|e| ApiError::reference(e).about(name, reference))
}

fn with_version(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
    resp
}

fn unsupported(method: &Method) -> Response {
    let mut resp = ApiError::new(
        Code::Unsupported,
        FailureCause::UnsupportedOperation,
        format!("{method} is not supported: berth is a read-only pull-through mirror"),
    )
    .with_header(header::ALLOW, "GET, HEAD")
    .into_response();
    resp.headers_mut()
        .insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
    resp
}
