//! The send loop: one request to an upstream, tried on its endpoints in
//! order with retries and backoff inside the request deadline; before every
//! attempt the rate-limit window and the circuit breaker are consulted and a
//! concurrency slot is taken; the auth challenge is answered on the way.
//! What the answer means is for `requests.rs`.

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use tokio::sync::OwnedSemaphorePermit;

use super::breaker::{Open, Transition};
use super::response::{FreshToken, check_status};
use super::retry::{self, Backoff};
use super::{Challenge, Upstream, UpstreamError, auth, ratelimit};
use crate::failure::FailureCause;
use crate::reference::RepoName;

impl Upstream {
    /// Send a request for `/v2/<repo>/<tail>`: endpoints in order, retries
    /// with backoff for faults that may pass; before every attempt the
    /// rate-limit window and the circuit breaker are consulted and a
    /// concurrency slot is taken. The answer comes with its slot, to be held
    /// while its body is read. A problem hidden by a later success is
    /// reported as `upstream_degraded`.
    pub(super) async fn send(
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
            if let Ok(resp) = &result {
                self.note_quota(resp.status(), resp.headers(), repo, tail);
            }
            let err = match result {
                Ok(resp) if retry::is_retryable_status(resp.status().as_u16()) => match check_status(resp).await {
                    Ok(resp) => return Ok((resp, index, last_err)),
                    Err(e) => e,
                },
                Ok(resp) => return Ok((resp, index, last_err)),
                Err(e) => blame_proxy(e, self.proxied.get(index) == Some(&true)),
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

    pub(super) async fn send_to(
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
}

impl Upstream {
    /// Any answer may carry the upstream's rate-limit headers (Docker Hub's
    /// on every manifest request, the 429 included): they set the gauges, and
    /// the answer that takes the remainder below the mark is warned of once.
    /// A 429 is its own event (`rate_limited`, failed or hidden): it marks
    /// the headroom low without a second event for the same problem.
    fn note_quota(&self, status: StatusCode, h: &HeaderMap, repo: &RepoName, tail: &str) {
        let header = |name| h.get(name).and_then(|v| v.to_str().ok());
        let quota = ratelimit::Quota::read(header("ratelimit-limit"), header("ratelimit-remaining"));
        if quota == ratelimit::Quota::default() {
            return;
        }
        self.events.metrics.ratelimit(&self.name, quota.limit, quota.remaining);
        if self.headroom.fell_low(quota) && status != StatusCode::TOO_MANY_REQUESTS {
            let (limit, remaining) = (quota.limit.unwrap_or_default(), quota.remaining.unwrap_or_default());
            let what = format!(
                "upstream rate limit nearly used up: {remaining} of {limit} left (under {}%)",
                ratelimit::LOW_HEADROOM_PERCENT
            );
            let detail = ["ratelimit-limit", "ratelimit-remaining", "docker-ratelimit-source"]
                .iter()
                .filter_map(|n| header(n).map(|v| format!("{n}={v}")))
                .collect::<Vec<_>>()
                .join("; ");
            let reference = tail.rsplit('/').next().unwrap_or(tail);
            self.events.upstream_degraded(
                FailureCause::RateLimited,
                &self.name,
                repo.as_str(),
                reference,
                &what,
                &detail,
            );
        }
    }
}

/// Through a proxy, failing to connect means failing to reach the proxy.
pub(super) fn blame_proxy(e: UpstreamError, proxied: bool) -> UpstreamError {
    match e {
        UpstreamError::Http(e) if proxied && e.is_connect() => UpstreamError::Proxy(e),
        other => other,
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
}
