//! Reading an upstream's answers: a non-success status turned into an error
//! carrying the spec code, `Retry-After` and the rate-limit headers; bodies
//! read with a bound; the headers berth looks at.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use reqwest::Response;
use reqwest::header::HeaderMap;
use serde::Deserialize;

use super::UpstreamError;
use super::ratelimit;
use crate::reference::{Digest, RepoName};

/// Marks a 401 answered to a token issued a moment ago.
#[derive(Clone, Copy)]
pub(super) struct FreshToken;

#[derive(Deserialize)]
pub(super) struct SpecErrors {
    errors: Vec<SpecError>,
}

#[derive(Deserialize)]
struct SpecError {
    code: String,
}

/// `Retry-After` as seconds from now: delay-seconds, or an HTTP-date.
pub(super) fn parse_retry_after(value: &str) -> Option<u64> {
    let value = value.trim();
    if let Ok(secs) = value.parse() {
        return Some(secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    // A date in the past means "now"; round up so a wait is never cut short.
    let wait = at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    Some(ratelimit::ceil_secs(wait))
}

/// When to ask again, in seconds: `Retry-After`, else `ratelimit-reset`
/// (delta-seconds, as the IETF RateLimit header fields draft has it).
pub(super) fn retry_hint(h: &HeaderMap) -> Option<u64> {
    header_str(h, "retry-after")
        .and_then(|v| parse_retry_after(&v))
        .or_else(|| header_str(h, "ratelimit-reset").and_then(|v| v.trim().parse().ok()))
}

/// The `ratelimit-*` headers (Docker Hub), as `name=value` pairs joined by "; ".
pub(super) fn ratelimit_headers(h: &HeaderMap) -> Option<String> {
    let pairs: Vec<String> = h
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("ratelimit-") || n.as_str() == "docker-ratelimit-source")
        .filter_map(|(n, v)| v.to_str().ok().map(|v| format!("{n}={v}")))
        .collect();
    (!pairs.is_empty()).then(|| pairs.join("; "))
}

/// Turn a non-success answer into an error carrying the spec code.
pub(super) async fn check_status(resp: Response) -> Result<Response, UpstreamError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = retry_hint(resp.headers());
    let ratelimit = ratelimit_headers(resp.headers());
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
        if buf.len().saturating_add(chunk.len()) > limit {
            return Err(UpstreamError::ManifestInvalid(format!("larger than {limit} bytes")));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The size a HEAD announced: the header, not `content_length()`, which for
/// a HEAD is the size of the (empty) body, 0.
pub(super) fn announced_length(h: &HeaderMap) -> Option<u64> {
    h.get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

pub(super) fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

pub(super) fn header_digest(h: &HeaderMap) -> Option<Digest> {
    header_str(h, "docker-content-digest").and_then(|d| Digest::parse(&d).ok())
}

/// The `tags/list?...` tail of a `Link: <...>; rel="next"` header, if it stays
/// within the same repository.
pub(super) fn next_page(h: &HeaderMap, repo: &RepoName) -> Option<String> {
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
    use reqwest::header::HeaderValue;

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
        assert_eq!(parse_retry_after("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_retry_after("99999999999999999999999"), None);
    }

    #[test]
    fn retry_hint_prefers_retry_after_then_ratelimit_reset() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_hint(&h), None);
        h.insert("ratelimit-reset", HeaderValue::from_static("50"));
        assert_eq!(retry_hint(&h), Some(50));
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_hint(&h), Some(7));
    }
}
