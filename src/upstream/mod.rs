//! The client to one upstream registry: endpoints tried in order, the auth
//! challenge answered, manifests fetched whole (they are small) and verified,
//! blobs returned as streaming responses for the cache to tee and verify.
//! Safe on an open network: tokens are fetched only from allowed realms,
//! redirects are checked, a 429 opens a rate-limit window (not the circuit
//! breaker), and requests in flight are bounded per upstream.
//!
//! This layer knows nothing about the cache or the client's request.

mod auth;
mod breaker;
mod dns;
mod error;
mod limit;
mod proxy;
mod ratelimit;
mod redirect;
mod response;
mod retry;

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RANGE, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;

pub use auth::Challenge;
pub use error::UpstreamError;
pub use limit::BlobResponse;
pub use retry::is_retryable;

use std::sync::Arc;

use crate::config::{Credentials, RetryConfig, UpstreamConfig};
use crate::events::Events;
use crate::failure::FailureCause;
use crate::media::ALL_MANIFEST_TYPES;
use crate::reference::{Digest, RepoName};
use breaker::{Breaker, Open, Transition};
use limit::Limiter;
use ratelimit::RateWindow;
pub(crate) use response::read_limited;
use response::{FreshToken, check_status, header_digest, header_str, next_page};
use retry::Backoff;
use tokio::sync::OwnedSemaphorePermit;

/// Distribution refuses manifests over 4 MiB; so does berth, so a hostile
/// upstream cannot make it buffer without bound.
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;
/// Page size asked of the upstream when listing tags.
const TAG_PAGE_SIZE: usize = 1000;
/// Bound on tag-list pages followed, against a Link loop.
const MAX_TAG_PAGES: usize = 100;
/// Tags of one repository berth accepts from an upstream: the largest real
/// repositories have tens of thousands.
pub const MAX_TAGS: usize = 100_000;
/// Bytes of tag-list pages read for one repository, all pages together.
pub const MAX_TAG_LIST_BYTES: usize = 8 << 20;

pub struct Upstream {
    pub name: String,
    endpoints: Vec<url::Url>,
    /// Per endpoint: whether requests to it go through an HTTP proxy.
    proxied: Vec<bool>,
    http: reqwest::Client,
    tokens: auth::TokenCache,
    realms: auth::RealmPolicy,
    credentials: Option<Credentials>,
    retry: RetryConfig,
    breaker: Breaker,
    rate_window: RateWindow,
    limiter: Limiter,
    offline: bool,
    events: Arc<Events>,
}

/// A manifest as the upstream sent it: exact bytes, type, verified digest.
#[derive(Debug, Clone)]
pub struct UpstreamManifest {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: Digest,
}

/// What a manifest HEAD tells.
#[derive(Debug, Clone)]
pub struct ManifestHead {
    pub digest: Option<Digest>,
    pub media_type: Option<String>,
}

#[derive(Deserialize)]
struct TagList {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig, events: Arc<Events>) -> Result<Self, UpstreamError> {
        // An upstream on loopback or a private network may redirect within
        // such networks; a public one may not send berth into them.
        let internal = cfg
            .endpoints
            .iter()
            .any(|e| e.host().is_some_and(|h| redirect::is_internal(&h)));
        let endpoint_hosts = cfg.endpoints.iter().filter_map(|e| e.host_str().map(str::to_string));
        let also = cfg
            .auth_hosts
            .iter()
            .map(|a| a.host.clone())
            .chain(dns::proxy_hosts(|k| std::env::var(k).ok()));
        let guard = Arc::new(dns::AddressGuard::new(endpoint_hosts, also, internal));
        let http = reqwest::Client::builder()
            .redirect(redirect::policy(guard.clone()))
            // A CDN has no business learning which repository and upstream
            // URL a blob was asked for.
            .referer(false)
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.read_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .dns_resolver(Arc::new(dns::SystemResolver { guard }))
            .build()
            .map_err(UpstreamError::Http)?;
        Ok(Self {
            name: cfg.name.clone(),
            endpoints: cfg.endpoints.clone(),
            proxied: cfg
                .endpoints
                .iter()
                .map(|u| proxy::is_proxied(u, |k| std::env::var(k).ok()))
                .collect(),
            http,
            tokens: auth::TokenCache::default(),
            realms: auth::RealmPolicy::new(&cfg.endpoints, &cfg.auth_hosts),
            credentials: cfg.credentials.clone(),
            retry: cfg.retry,
            breaker: Breaker::new(cfg.breaker_threshold, cfg.breaker_cooldown),
            rate_window: RateWindow::default(),
            limiter: Limiter::new(cfg.max_concurrent_requests),
            offline: cfg.offline,
            events,
        })
    }

    /// Whether this upstream is never to be contacted.
    pub fn is_offline(&self) -> bool {
        self.offline
    }

    /// Send a request for `/v2/<repo>/<tail>`: endpoints in order, retries
    /// with backoff for faults that may pass; before every attempt the
    /// rate-limit window and the circuit breaker are consulted and a
    /// concurrency slot is taken. The answer comes with its slot, to be held
    /// while its body is read. A problem hidden by a later success is
    /// reported as `upstream_degraded`.
    async fn send(
        &self,
        method: Method,
        repo: &RepoName,
        tail: &str,
        headers: HeaderMap,
    ) -> Result<(Response, OwnedSemaphorePermit), UpstreamError> {
        if self.offline {
            return Err(UpstreamError::Offline);
        }
        let scope = format!("repository:{repo}:pull");
        let mut backoff = Backoff::new(self.retry);
        let mut hidden: Option<(FailureCause, String)> = None;
        let mut last: Option<UpstreamError> = None;
        let refused = |open: Open, last: Option<UpstreamError>, attempts| match last {
            Some(e) => retried(e, attempts),
            None => UpstreamError::CircuitOpen { cause: open.cause },
        };
        loop {
            if let Some(left) = self.rate_window.remaining() {
                let secs = ratelimit::ceil_secs(left);
                return Err(match last {
                    // This request's own 429: it is the evidence.
                    Some(mut e) if e.is_rate_limited() => {
                        e.set_retry_after(secs);
                        retried(e, backoff.attempts)
                    }
                    // Another request's 429 stops this one.
                    _ => UpstreamError::RateLimitWindow { retry_after: secs },
                });
            }
            // Fail fast on a dead upstream before queueing for a slot; the
            // probe itself is taken (`admit`) only once the slot is held.
            if let Some(open) = self.breaker.refuses() {
                return Err(refused(open, last, backoff.attempts));
            }
            let permit = self.limiter.acquire(backoff.remaining()).await?;
            if let Err(open) = self.breaker.admit() {
                return Err(refused(open, last, backoff.attempts));
            }
            // The deadline bounds the attempts too, not only the waits
            // between them: a request never outlives it by a timeout.
            let remaining = backoff.remaining();
            let attempt = tokio::time::timeout(
                remaining,
                self.try_endpoints(&method, repo, tail, &scope, &headers, &mut backoff),
            )
            .await
            .unwrap_or(Err(UpstreamError::DeadlineExceeded {
                secs: self.retry.deadline.as_secs(),
            }));
            match attempt {
                Ok((resp, endpoint, skipped)) => {
                    if let Some(e) = skipped {
                        hidden.get_or_insert_with(|| (e.cause(), e.to_string()));
                    }
                    if self.breaker.success() == Transition::Closed {
                        tracing::info!(upstream = %self.name, "upstream answers again; circuit closed");
                    }
                    if let Some((cause, detail)) = hidden.take() {
                        let what = if endpoint > 0 {
                            format!("failed over to endpoint {}", endpoint + 1)
                        } else {
                            format!("succeeded after {} attempts", backoff.attempts)
                        };
                        let reference = tail.rsplit('/').next().unwrap_or(tail);
                        self.events
                            .upstream_degraded(cause, &self.name, repo.as_str(), reference, &what, &detail);
                    }
                    return Ok((resp, permit));
                }
                Err(mut e) => {
                    drop(permit);
                    if e.is_rate_limited() {
                        // "Not now", not "down": the window keeps every other
                        // miss away until it ends; this request waits for
                        // that only if its deadline allows (`next_delay`).
                        let left = self.rate_window.open(e.retry_after());
                        e.set_retry_after(ratelimit::ceil_secs(left));
                        tracing::warn!(upstream = %self.name, window_secs = ratelimit::ceil_secs(left), "upstream rate limit (429); misses fail fast until the window ends");
                    }
                    if !counts_against_upstream(&e) {
                        // A definite answer (bad credentials, a refused token):
                        // the upstream is there, so a probe that gets one
                        // closes the circuit rather than leaving it shut.
                        if self.breaker.success() == Transition::Closed {
                            tracing::info!(upstream = %self.name, "upstream answers again; circuit closed");
                        }
                    } else if self.breaker.failure(e.cause()) == Transition::Opened {
                        tracing::warn!(upstream = %self.name, cause = e.cause().name(), "upstream considered down; circuit open");
                    }
                    // Out of time in an attempt after earlier faults: the
                    // earlier fault is the evidence of what is wrong.
                    if matches!(e, UpstreamError::DeadlineExceeded { .. })
                        && let Some(last) = last
                    {
                        return Err(retried(last, backoff.attempts));
                    }
                    let delay = backoff.next_delay(&e);
                    hidden.get_or_insert_with(|| (e.cause(), e.to_string()));
                    match delay {
                        Some(delay) => {
                            last = Some(e);
                            tokio::time::sleep(delay).await;
                        }
                        None => return Err(retried(e, backoff.attempts)),
                    }
                }
            }
        }
    }

    /// One round over the endpoints, in order. Returns the first answer that
    /// is not a fault, with the index of the endpoint that gave it and the
    /// fault of the endpoint before it, if any.
    async fn try_endpoints(
        &self,
        method: &Method,
        repo: &RepoName,
        tail: &str,
        scope: &str,
        headers: &HeaderMap,
        backoff: &mut Backoff,
    ) -> Result<(Response, usize, Option<UpstreamError>), UpstreamError> {
        let operation = tail.split('/').next().unwrap_or("other");
        let mut last_err = None;
        for (index, endpoint) in self.endpoints.iter().enumerate() {
            let url = format!("{}/v2/{repo}/{tail}", endpoint.as_str().trim_end_matches('/'));
            backoff.attempts = backoff.attempts.saturating_add(1);
            let started = std::time::Instant::now();
            let result = self.send_to(method, endpoint, &url, scope, headers).await;
            self.events
                .metrics
                .upstream_latency(&self.name, operation, started.elapsed());
            let err = match result {
                Ok(resp) if retry::is_retryable_status(resp.status().as_u16()) => match check_status(resp).await {
                    Ok(resp) => return Ok((resp, index, last_err)),
                    Err(e) => e,
                },
                Ok(resp) => return Ok((resp, index, last_err)),
                // Through a proxy, failing to connect means failing to reach the proxy.
                Err(UpstreamError::Http(e)) if e.is_connect() && self.proxied.get(index) == Some(&true) => {
                    UpstreamError::Proxy(e)
                }
                Err(e) => e,
            };
            // Another endpoint may answer what this one could not reach, or
            // is not rate-limited; a definite answer (bad credentials) would
            // be the same everywhere.
            if !counts_against_upstream(&err) && !err.is_rate_limited() {
                return Err(err);
            }
            last_err = Some(err);
        }
        Err(last_err.unwrap_or(UpstreamError::BadChallenge))
    }

    async fn send_to(
        &self,
        method: &Method,
        endpoint: &url::Url,
        url: &str,
        scope: &str,
        headers: &HeaderMap,
    ) -> Result<Response, UpstreamError> {
        let attempt = |auth: Option<String>| {
            let mut req = self.http.request(method.clone(), url).headers(headers.clone());
            if let Some(value) = auth.and_then(|a| HeaderValue::from_str(&a).ok()) {
                req = req.header(AUTHORIZATION, value);
            }
            req.send()
        };
        let resp = attempt(self.tokens.get(scope))
            .await
            .map_err(UpstreamError::from_send)?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let Some(challenge) = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(Challenge::parse)
        else {
            return Ok(resp);
        };
        let authorization = auth::answer(
            &self.http,
            &challenge,
            scope,
            self.credentials.as_ref(),
            &self.realms,
            endpoint,
        )
        .await?;
        let header = authorization.header.clone();
        self.tokens.put(scope, authorization);
        let mut resp = attempt(Some(header)).await.map_err(UpstreamError::from_send)?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            // Refused with a token issued for this very scope a moment ago:
            // Docker Hub's way of saying the repository does not exist (or
            // is private), not a credentials problem.
            resp.extensions_mut().insert(FreshToken);
        }
        Ok(resp)
    }

    /// GET (or HEAD) a manifest by tag or digest, asking for every known type.
    pub async fn manifest_head(&self, repo: &RepoName, reference: &str) -> Result<ManifestHead, UpstreamError> {
        let (resp, _slot) = self
            .send(Method::HEAD, repo, &format!("manifests/{reference}"), manifest_accept())
            .await?;
        let resp = check_status(resp).await?;
        Ok(ManifestHead {
            digest: header_digest(resp.headers()),
            media_type: header_str(resp.headers(), CONTENT_TYPE.as_str()),
        })
    }

    pub async fn manifest(&self, repo: &RepoName, reference: &str) -> Result<UpstreamManifest, UpstreamError> {
        let (resp, _slot) = self
            .send(Method::GET, repo, &format!("manifests/{reference}"), manifest_accept())
            .await?;
        let resp = check_status(resp).await?;
        let announced = header_digest(resp.headers());
        let content_type = header_str(resp.headers(), CONTENT_TYPE.as_str());
        let bytes = read_limited(resp, MAX_MANIFEST_SIZE).await?;
        let expected = match Digest::parse(reference) {
            Ok(d) => Some(d),
            Err(_) => announced,
        };
        let digest = match expected {
            Some(d) => {
                let actual = crate::reference::digest_of(d.algorithm(), &bytes);
                if actual != d {
                    return Err(UpstreamError::DigestMismatch {
                        expected: d.to_string(),
                        actual: actual.to_string(),
                    });
                }
                d
            }
            None => Digest::sha256_of(&bytes),
        };
        let media_type =
            crate::manifest::media_type(&bytes, content_type.as_deref()).map_err(UpstreamError::ManifestInvalid)?;
        Ok(UpstreamManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Start a blob download at byte `from`; the body is left to the caller,
    /// and holds one of the upstream's concurrency slots until it is done.
    pub async fn blob(&self, repo: &RepoName, digest: &Digest, from: u64) -> Result<BlobResponse, UpstreamError> {
        let mut headers = HeaderMap::new();
        if from > 0
            && let Ok(v) = HeaderValue::from_str(&format!("bytes={from}-"))
        {
            headers.insert(RANGE, v);
        }
        let (resp, slot) = self
            .send(Method::GET, repo, &format!("blobs/{digest}"), headers)
            .await?;
        Ok(BlobResponse::new(check_status(resp).await?, slot))
    }

    /// The size of a blob, from a HEAD.
    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, UpstreamError> {
        let (resp, _slot) = self
            .send(Method::HEAD, repo, &format!("blobs/{digest}"), HeaderMap::new())
            .await?;
        let resp = check_status(resp).await?;
        Ok(resp.content_length())
    }

    /// Every tag of a repository, following the upstream's pagination, within
    /// bounds: at most `MAX_TAGS` tags and `MAX_TAG_LIST_BYTES` of pages; a
    /// `Link` seen before (a loop) or into another repository ends the walk.
    pub async fn tags(&self, repo: &RepoName) -> Result<Vec<String>, UpstreamError> {
        let mut tags = Vec::new();
        let mut tail = format!("tags/list?n={TAG_PAGE_SIZE}");
        let mut seen = std::collections::HashSet::new();
        let mut bytes = 0usize;
        for _ in 0..MAX_TAG_PAGES {
            seen.insert(tail.clone());
            let (resp, _slot) = self.send(Method::GET, repo, &tail, HeaderMap::new()).await?;
            let resp = check_status(resp).await?;
            let next = next_page(resp.headers(), repo);
            let left = MAX_TAG_LIST_BYTES.saturating_sub(bytes);
            let body = read_limited(resp, left.min(MAX_MANIFEST_SIZE))
                .await
                .map_err(|e| match e {
                    UpstreamError::ManifestInvalid(_) => too_many_tags(repo),
                    other => other,
                })?;
            bytes = bytes.saturating_add(body.len());
            let page: TagList =
                serde_json::from_slice(&body).map_err(|e| UpstreamError::ManifestInvalid(format!("tag list: {e}")))?;
            tags.extend(page.tags.unwrap_or_default());
            if tags.len() > MAX_TAGS {
                return Err(too_many_tags(repo));
            }
            match next {
                Some(n) if seen.contains(&n) => {
                    tracing::debug!(upstream = %self.name, repo = %repo, link = %n, "tag list Link points at a page already read; stopped");
                    break;
                }
                Some(n) => tail = n,
                None => break,
            }
        }
        Ok(tags)
    }
}

fn too_many_tags(repo: &RepoName) -> UpstreamError {
    UpstreamError::ManifestInvalid(format!(
        "the tag list of {repo} is larger than berth accepts ({MAX_TAGS} tags, {} MiB)",
        MAX_TAG_LIST_BYTES >> 20
    ))
}

/// Wrap the last error with the attempt count when there was more than one.
fn retried(e: UpstreamError, attempts: u32) -> UpstreamError {
    if attempts > 1 {
        UpstreamError::Retried {
            attempts,
            last: Box::new(e),
        }
    } else {
        e
    }
}

/// Faults that say the upstream (or the way to it) is not working, as
/// opposed to a definite answer about the content or the credentials. A 429
/// is an answer ("not now"): it opens the rate-limit window, not the circuit.
fn counts_against_upstream(e: &UpstreamError) -> bool {
    match e.root() {
        UpstreamError::Status { status, .. } | UpstreamError::TokenRefused { status, .. } => *status >= 500,
        UpstreamError::Http(_) | UpstreamError::Proxy(_) => e.cause().category() == crate::failure::Category::Network,
        UpstreamError::DeadlineExceeded { .. } => true,
        _ => false,
    }
}

fn manifest_accept() -> HeaderMap {
    let mut h = HeaderMap::new();
    for t in ALL_MANIFEST_TYPES {
        h.append(ACCEPT, HeaderValue::from_static(t));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_429_is_not_a_fault_for_the_breaker() {
        let status = |status| UpstreamError::Status {
            status,
            code: None,
            retry_after: None,
            ratelimit: None,
            denied_with_token: false,
        };
        assert!(!counts_against_upstream(&status(429)));
        assert!(status(429).is_rate_limited());
        assert!(counts_against_upstream(&status(503)));
        let token = UpstreamError::TokenRefused {
            status: 429,
            retry_after: None,
        };
        assert!(!counts_against_upstream(&token));
        assert!(token.is_rate_limited());
        let window = UpstreamError::RateLimitWindow { retry_after: 9 };
        assert_eq!(window.cause(), FailureCause::RateLimited);
        assert_eq!(window.retry_after(), Some(9));
        assert!(window.is_unavailable(), "cached content is served");
        assert_eq!(window.attempts(), 0);
    }

    mod fuzz {
        use super::*;
        use crate::upstream::response::{SpecErrors, parse_retry_after};
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(crate::fuzz_config())]

            /// The upstream's tag list body: arbitrary bytes never panic; a
            /// list of strings comes back as it was sent.
            #[test]
            fn fuzz_tag_list_body(
                bytes in proptest::collection::vec(any::<u8>(), 0..128),
                tags in proptest::collection::vec(any::<String>(), 0..8),
            ) {
                let _ = serde_json::from_slice::<TagList>(&bytes);
                let _ = serde_json::from_slice::<SpecErrors>(&bytes);
                let body = serde_json::to_vec(&serde_json::json!({"name": "x", "tags": tags})).unwrap_or_default();
                let page: TagList = serde_json::from_slice(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(page.tags, Some(tags));
            }

            /// The `Link` header of a tag page: any text never panics, and a
            /// next page is only ever a `tags/list` tail taken from the header.
            #[test]
            fn fuzz_next_page_link(
                link in prop_oneof![
                    any::<String>(),
                    "<(https?://[a-z]{1,5})?(/v2/|/v2/library/busybox/)?[a-z/]{0,20}(/tags/list)?[?a-z=&0-9]{0,12}>; rel=\"next\"",
                ],
                retry_after in any::<String>(),
            ) {
                let repo = RepoName::parse("library/busybox").map_err(|e| TestCaseError::fail(e.to_string()))?;
                let mut h = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_str(&link) {
                    h.insert("link", v);
                }
                if let Some(tail) = next_page(&h, &repo) {
                    prop_assert!(tail.starts_with("tags/list") && link.contains(&tail), "{link:?}: {tail:?}");
                    prop_assert!(link.contains("/v2/library/busybox/tags/list"));
                }
                let _ = parse_retry_after(&retry_after);
            }
        }
    }
}
