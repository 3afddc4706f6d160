//! The client to one upstream registry: endpoints tried in order, the auth
//! challenge answered, manifests fetched whole (they are small) and verified,
//! blobs returned as streaming responses for the cache to tee and verify.
//!
//! This layer knows nothing about the cache or the client's request.

mod auth;
mod breaker;
mod dns;
mod error;
mod proxy;
mod retry;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RANGE, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;

pub use auth::Challenge;
pub use error::UpstreamError;
pub use retry::is_retryable;

use std::sync::Arc;

use crate::config::{Credentials, RetryConfig, UpstreamConfig};
use crate::events::Events;
use crate::failure::FailureCause;
use crate::media::ALL_MANIFEST_TYPES;
use crate::reference::{Digest, RepoName};
use breaker::{Breaker, Transition};
use retry::Backoff;

/// Distribution refuses manifests over 4 MiB; so does berth, so a hostile
/// upstream cannot make it buffer without bound.
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;
/// Page size asked of the upstream when listing tags.
const TAG_PAGE_SIZE: usize = 1000;
/// Bound on tag-list pages followed, against a Link loop.
const MAX_TAG_PAGES: usize = 100;

/// Marks a 401 answered to a token issued a moment ago.
#[derive(Clone, Copy)]
struct FreshToken;

pub struct Upstream {
    pub name: String,
    endpoints: Vec<url::Url>,
    /// Per endpoint: whether requests to it go through an HTTP proxy.
    proxied: Vec<bool>,
    http: reqwest::Client,
    tokens: auth::TokenCache,
    credentials: Option<Credentials>,
    retry: RetryConfig,
    breaker: Breaker,
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
struct SpecErrors {
    errors: Vec<SpecError>,
}

#[derive(Deserialize)]
struct SpecError {
    code: String,
}

#[derive(Deserialize)]
struct TagList {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig, events: Arc<Events>) -> Result<Self, UpstreamError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.read_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .dns_resolver(Arc::new(dns::SystemResolver))
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
            credentials: cfg.credentials.clone(),
            retry: cfg.retry,
            breaker: Breaker::new(cfg.breaker_threshold, cfg.breaker_cooldown),
            offline: cfg.offline,
            events,
        })
    }

    /// Whether this upstream is never to be contacted.
    pub fn is_offline(&self) -> bool {
        self.offline
    }

    /// Send a request for `/v2/<repo>/<tail>`: endpoints in order, retries
    /// with backoff for faults that may pass, the circuit breaker consulted
    /// before every attempt. A problem hidden by a later success is reported
    /// as `upstream_degraded`.
    async fn send(
        &self,
        method: Method,
        repo: &RepoName,
        tail: &str,
        headers: HeaderMap,
    ) -> Result<Response, UpstreamError> {
        if self.offline {
            return Err(UpstreamError::Offline);
        }
        let scope = format!("repository:{repo}:pull");
        let mut backoff = Backoff::new(self.retry);
        let mut hidden: Option<(FailureCause, String)> = None;
        let mut last: Option<UpstreamError> = None;
        loop {
            if let Err(open) = self.breaker.admit() {
                return Err(match last {
                    Some(e) => retried(e, backoff.attempts),
                    None => UpstreamError::CircuitOpen { cause: open.cause },
                });
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
                    return Ok(resp);
                }
                Err(e) => {
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
            backoff.attempts += 1;
            let started = std::time::Instant::now();
            let result = self.send_to(method, &url, scope, headers).await;
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
            // Another endpoint may answer what this one could not reach; a
            // definite answer (bad credentials) would be the same everywhere.
            if !counts_against_upstream(&err) {
                return Err(err);
            }
            last_err = Some(err);
        }
        Err(last_err.unwrap_or(UpstreamError::BadChallenge))
    }

    async fn send_to(
        &self,
        method: &Method,
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
        let resp = attempt(self.tokens.get(scope)).await.map_err(UpstreamError::Http)?;
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
        let authorization = auth::answer(&self.http, &challenge, scope, self.credentials.as_ref()).await?;
        let header = authorization.header.clone();
        self.tokens.put(scope, authorization);
        let mut resp = attempt(Some(header)).await.map_err(UpstreamError::Http)?;
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
        let resp = self
            .send(Method::HEAD, repo, &format!("manifests/{reference}"), manifest_accept())
            .await?;
        let resp = check_status(resp).await?;
        Ok(ManifestHead {
            digest: header_digest(resp.headers()),
            media_type: header_str(resp.headers(), CONTENT_TYPE.as_str()),
        })
    }

    pub async fn manifest(&self, repo: &RepoName, reference: &str) -> Result<UpstreamManifest, UpstreamError> {
        let resp = self
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

    /// Start a blob download at byte `from`; the body is left to the caller.
    pub async fn blob(&self, repo: &RepoName, digest: &Digest, from: u64) -> Result<Response, UpstreamError> {
        let mut headers = HeaderMap::new();
        if from > 0
            && let Ok(v) = HeaderValue::from_str(&format!("bytes={from}-"))
        {
            headers.insert(RANGE, v);
        }
        let resp = self
            .send(Method::GET, repo, &format!("blobs/{digest}"), headers)
            .await?;
        check_status(resp).await
    }

    /// The size of a blob, from a HEAD.
    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, UpstreamError> {
        let resp = self
            .send(Method::HEAD, repo, &format!("blobs/{digest}"), HeaderMap::new())
            .await?;
        let resp = check_status(resp).await?;
        Ok(resp.content_length())
    }

    /// Every tag of a repository, following the upstream's pagination.
    pub async fn tags(&self, repo: &RepoName) -> Result<Vec<String>, UpstreamError> {
        let mut tags = Vec::new();
        let mut tail = format!("tags/list?n={TAG_PAGE_SIZE}");
        for _ in 0..MAX_TAG_PAGES {
            let resp = self.send(Method::GET, repo, &tail, HeaderMap::new()).await?;
            let resp = check_status(resp).await?;
            let next = next_page(resp.headers(), repo);
            let body = read_limited(resp, MAX_MANIFEST_SIZE).await?;
            let page: TagList =
                serde_json::from_slice(&body).map_err(|e| UpstreamError::ManifestInvalid(format!("tag list: {e}")))?;
            tags.extend(page.tags.unwrap_or_default());
            match next {
                Some(n) => tail = n,
                None => break,
            }
        }
        Ok(tags)
    }
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
/// opposed to a definite answer about the content or the credentials.
fn counts_against_upstream(e: &UpstreamError) -> bool {
    match e.root() {
        UpstreamError::Status { status, .. } => *status == 429 || *status >= 500,
        UpstreamError::TokenRefused { status } => *status == 429 || *status >= 500,
        UpstreamError::Http(_) | UpstreamError::Proxy(_) => e.cause().category() == "network",
        UpstreamError::DeadlineExceeded { .. } => true,
        _ => false,
    }
}

/// `Retry-After` as seconds from now: delay-seconds, or an HTTP-date.
fn parse_retry_after(value: &str) -> Option<u64> {
    let value = value.trim();
    if let Ok(secs) = value.parse() {
        return Some(secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    // A date in the past means "now"; round up so a wait is never cut short.
    let wait = at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
}

fn manifest_accept() -> HeaderMap {
    let mut h = HeaderMap::new();
    for t in ALL_MANIFEST_TYPES {
        h.append(ACCEPT, HeaderValue::from_static(t));
    }
    h
}

/// Turn a non-success answer into an error carrying the spec code.
async fn check_status(resp: Response) -> Result<Response, UpstreamError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = header_str(resp.headers(), "retry-after").and_then(|v| parse_retry_after(&v));
    let ratelimit: Vec<String> = resp
        .headers()
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("ratelimit-") || n.as_str() == "docker-ratelimit-source")
        .filter_map(|(n, v)| v.to_str().ok().map(|v| format!("{n}={v}")))
        .collect();
    let ratelimit = (!ratelimit.is_empty()).then(|| ratelimit.join("; "));
    let denied_with_token = resp.extensions().get::<FreshToken>().is_some();
    let code = match read_limited(resp, 64 << 10).await {
        Ok(body) => serde_json::from_slice::<SpecErrors>(&body)
            .ok()
            .and_then(|e| e.errors.into_iter().next())
            .map(|e| e.code),
        Err(_) => None,
    };
    Err(UpstreamError::Status {
        status: status.as_u16(),
        code,
        retry_after,
        ratelimit,
        denied_with_token,
    })
}

pub(crate) async fn read_limited(resp: Response, limit: usize) -> Result<Bytes, UpstreamError> {
    let mut buf = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(UpstreamError::Http)?;
        if buf.len() + chunk.len() > limit {
            return Err(UpstreamError::ManifestInvalid(format!("larger than {limit} bytes")));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn header_digest(h: &HeaderMap) -> Option<Digest> {
    header_str(h, "docker-content-digest").and_then(|d| Digest::parse(&d).ok())
}

/// The `tags/list?...` tail of a `Link: <...>; rel="next"` header, if it stays
/// within the same repository.
fn next_page(h: &HeaderMap, repo: &RepoName) -> Option<String> {
    let link = header_str(h, "link")?;
    if !link.contains("rel=\"next\"") {
        return None;
    }
    let target = link.split('<').nth(1)?.split('>').next()?;
    let prefix = format!("/v2/{repo}/");
    let path = match target.find("/v2/") {
        Some(i) => &target[i..],
        None => return None,
    };
    path.strip_prefix(&prefix)
        .filter(|t| t.starts_with("tags/list"))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_page_link() {
        let repo = RepoName::parse("library/busybox").unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "link",
            HeaderValue::from_static("</v2/library/busybox/tags/list?last=b&n=2>; rel=\"next\""),
        );
        assert_eq!(next_page(&h, &repo).as_deref(), Some("tags/list?last=b&n=2"));
        h.insert(
            "link",
            HeaderValue::from_static("</v2/other/tags/list?last=b>; rel=\"next\""),
        );
        assert_eq!(next_page(&h, &repo), None);
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after(" 2 "), Some(2));
        let in_a_minute = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        let wait = parse_retry_after(&httpdate::fmt_http_date(in_a_minute)).expect("HTTP-date");
        assert!((59..=61).contains(&wait), "{wait}");
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(0));
        assert_eq!(parse_retry_after("soon"), None);
    }

    mod fuzz {
        use super::*;
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
