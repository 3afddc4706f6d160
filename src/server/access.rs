//! The access check every request on `listen` passes before any cache or
//! upstream work: which target it asks for (the `/v2/` base, the admin
//! surface when it is on `listen`, or a repository of an upstream, HEAD as
//! GET), and the one decision of `crate::auth` about it. A refusal is a spec
//! error answered here (401 with the Basic challenge, 403, 429) whose
//! failure record the request middleware logs once, with the identity and
//! never the credential. An allowed request carries its identity on.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ClientCertificate;
use crate::api::errors::{ApiError, Code};
use crate::api::{API_VERSION_HEADER, AppState, Live, path};
use crate::auth::{CHALLENGE, Decision, Identity, Target};
use crate::reference::RepoName;
use crate::routing::route;

/// The identity a request was allowed as; set on the request for the
/// handlers and on the response for the request log.
#[derive(Debug, Clone)]
pub struct Allowed(pub Identity);

pub async fn guard(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let cert = req
        .extensions()
        .get::<ClientCertificate>()
        .map(|c| c.common_name.clone());
    // The one load of the reloadable state for this request; the handler
    // gets the same one, so a reload never splits a request across two.
    let live = state.live();
    // Without [auth] the target decides nothing: no routing on that path.
    let routed = match live.auth.is_on() {
        true => repository_of(&live, req.uri()),
        false => None,
    };
    let target = match (&routed, req.uri().path()) {
        (Some((upstream, repo)), _) => Target::Repository { upstream, repo },
        (None, p) if p == "/" || p == "/metrics" || p.starts_with("/_berth/") => Target::Admin,
        _ => Target::Base,
    };
    let decision = live
        .auth
        .authorize(client, authorization.as_deref(), cert.as_deref(), target)
        .await;
    match decision {
        Decision::Allowed(identity) => {
            req.extensions_mut().insert(Allowed(identity.clone()));
            req.extensions_mut().insert(live);
            let mut resp = next.run(req).await;
            resp.extensions_mut().insert(Allowed(identity));
            resp
        }
        refused => {
            // The failure record names what was asked for, [auth] or not.
            let routed = routed.or_else(|| repository_of(&live, req.uri()));
            let (upstream, repo) = match &routed {
                Some((u, r)) => (Some(u.as_str()), Some(r.as_str())),
                None => (None, None),
            };
            refusal(refused, upstream, repo)
        }
    }
}

/// The upstream and repository a `/v2/<name>/…` request names, routed as the
/// handlers will route it; None for the base, other paths, and names that
/// do not route (the handler answers those; the client still needs an identity).
fn repository_of(live: &Live, uri: &axum::http::Uri) -> Option<(String, String)> {
    let rest = uri.path().strip_prefix("/v2/")?;
    let (name, _) = path::parse(rest).subject()?;
    let name = RepoName::parse(name).ok()?;
    let ns = uri.query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "ns")
            .map(|(_, v)| v.into_owned())
    });
    let r = route(&live.upstreams, &name, ns.as_deref()).ok()?;
    Some((r.upstream.name.clone(), r.repo.to_string()))
}

fn refusal(decision: Decision, upstream: Option<&str>, repo: Option<&str>) -> Response {
    let cause = match decision.cause() {
        Some(c) => c,
        None => return ().into_response(),
    };
    let (err, identity) = match decision {
        Decision::Unauthenticated { reason } => (
            ApiError::new(Code::Unauthorized, cause, format!("authentication required: {reason}"))
                .with_header(header::WWW_AUTHENTICATE, CHALLENGE),
            None,
        ),
        Decision::Forbidden { identity, reason } => (
            ApiError::new(Code::Denied, cause, format!("access denied: {reason}")),
            Some(identity),
        ),
        Decision::NetworkDenied => (
            ApiError::new(
                Code::Denied,
                cause,
                "access denied: the client address is outside auth.allow_networks",
            ),
            None,
        ),
        Decision::RateLimited { identity, retry_after } => (
            ApiError::new(
                Code::TooManyRequests,
                cause,
                format!("too many requests from {identity}; retry after {retry_after} s"),
            )
            .with_header(header::RETRY_AFTER, &retry_after.to_string()),
            Some(identity),
        ),
        Decision::Allowed(_) => return ().into_response(),
    };
    let mut err = err;
    err.record.upstream = upstream.map(str::to_string);
    err.record.repository = repo.map(str::to_string);
    err.record.identity = identity.as_ref().map(Identity::to_string);
    let mut resp = err.into_response();
    resp.headers_mut()
        .insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
    resp
}
