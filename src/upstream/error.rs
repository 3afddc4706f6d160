//! Errors talking to an upstream, and their classification into failure causes
//! from typed sources (reqwest/io error kinds, HTTP status, spec error code).

use std::error::Error as _;

use thiserror::Error;

use super::dns::{DnsError, InternalAddress};
use super::redirect::RedirectRefused;
use crate::failure::{Category, FailureCause};

#[derive(Debug, Error)]
pub enum UpstreamError {
    // reqwest names the URL, which may be a signed redirect: redacted.
    #[error("{}", crate::redact::message(&.0.to_string()))]
    Http(#[source] reqwest::Error),
    #[error("HTTP proxy: {}", crate::redact::message(&.0.to_string()))]
    Proxy(#[source] reqwest::Error),
    #[error("upstream answered {status}{}", .code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Status {
        status: u16,
        /// The first spec error code of the body, when there is one.
        code: Option<String>,
        /// `Retry-After` in seconds, when sent.
        retry_after: Option<u64>,
        /// The `ratelimit-*` headers (Docker Hub), as `name=value` pairs.
        ratelimit: Option<String>,
        /// A 401 that came after berth presented a token the token service
        /// had just issued for the repository: Docker Hub's answer for a
        /// repository that does not exist (or is private).
        denied_with_token: bool,
    },
    #[error("token service answered {status}")]
    TokenRefused {
        status: u16,
        /// `Retry-After` in seconds, when sent (a 429).
        retry_after: Option<u64>,
    },
    #[error(
        "token realm {realm} refused: {reason}; berth sends credentials only to the upstream's endpoint hosts and upstream.auth_hosts"
    )]
    RealmRefused { realm: String, reason: &'static str },
    #[error("upstream {0}")]
    RedirectRefused(#[source] RedirectRefused),
    #[error(
        "upstream rate limit: berth does not ask again for {retry_after} s (the upstream answered 429 toomanyrequests); cached content is still served"
    )]
    RateLimitWindow {
        /// Seconds until the window ends, rounded up.
        retry_after: u64,
    },
    #[error(
        "berth's own limit of {limit} concurrent requests to this upstream (upstream.max_concurrent_requests) stayed full for {waited_ms} ms; not asked"
    )]
    Saturated { limit: u32, waited_ms: u64 },
    #[error("upstream sent an authentication challenge berth cannot answer")]
    BadChallenge,
    #[error("upstream asks for Basic credentials and none are configured")]
    NoCredentials,
    #[error("content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("ended the blob after {got} of {expected} bytes")]
    Truncated { expected: u64, got: u64 },
    #[error("sent {got} bytes of a blob it announced as {expected} bytes")]
    Overlong { expected: u64, got: u64 },
    #[error("answered a Range request for a blob from byte {at} with content that does not continue there")]
    RangeMisplaced { at: u64 },
    #[error("upstream manifest is invalid: {0}")]
    ManifestInvalid(String),
    #[error("{last} (after {attempts} attempts)")]
    Retried {
        attempts: u32,
        #[source]
        last: Box<UpstreamError>,
    },
    #[error("no answer from the upstream within the request deadline of {secs} s")]
    DeadlineExceeded { secs: u64 },
    #[error("upstream considered down after repeated failures ({cause}); not asked, content not cached")]
    CircuitOpen { cause: FailureCause },
    #[error("berth runs offline; the upstream is not asked and this content is not cached")]
    Offline,
}

impl UpstreamError {
    /// A failure to send a request: a redirect berth refused is told apart
    /// from a network fault (it is a definite answer, not worth a retry).
    pub fn from_send(e: reqwest::Error) -> UpstreamError {
        let refused = source_chain(&e).find_map(|s| {
            s.downcast_ref::<RedirectRefused>().cloned().or_else(|| {
                s.downcast_ref::<InternalAddress>().map(|i| RedirectRefused {
                    to: i.host.clone(),
                    reason: "it resolves to an internal address; the upstream is not on one",
                })
            })
        });
        match refused {
            Some(refused) => UpstreamError::RedirectRefused(refused),
            None => UpstreamError::Http(e),
        }
    }

    /// The error of the last attempt, under any retry wrapper.
    pub fn root(&self) -> &UpstreamError {
        match self {
            UpstreamError::Retried { last, .. } => last.root(),
            other => other,
        }
    }

    /// Requests sent to the upstream for this outcome.
    pub fn attempts(&self) -> u32 {
        match self {
            UpstreamError::Retried { attempts, .. } => *attempts,
            UpstreamError::CircuitOpen { .. }
            | UpstreamError::Offline
            | UpstreamError::RateLimitWindow { .. }
            | UpstreamError::Saturated { .. } => 0,
            _ => 1,
        }
    }

    pub fn retry_after(&self) -> Option<u64> {
        match self.root() {
            UpstreamError::Status { retry_after, .. } | UpstreamError::TokenRefused { retry_after, .. } => *retry_after,
            UpstreamError::RateLimitWindow { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    pub fn ratelimit(&self) -> Option<String> {
        match self.root() {
            UpstreamError::Status { ratelimit, .. } => ratelimit.clone(),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self.root() {
            UpstreamError::Status { status, .. } | UpstreamError::TokenRefused { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn cause(&self) -> FailureCause {
        match self {
            UpstreamError::Retried { last, .. } => UpstreamError::cause(last),
            UpstreamError::CircuitOpen { .. } | UpstreamError::Offline => FailureCause::NotCachedOffline,
            UpstreamError::Http(e) => classify_reqwest(e),
            UpstreamError::Proxy(_) => FailureCause::ProxyError,
            UpstreamError::Status {
                status: 401,
                denied_with_token: true,
                ..
            } => FailureCause::NameUnknown,
            UpstreamError::Status { status, code, .. } => classify_status(*status, code.as_deref()),
            UpstreamError::TokenRefused { status: 429, .. } | UpstreamError::RateLimitWindow { .. } => {
                FailureCause::RateLimited
            }
            UpstreamError::TokenRefused { status, .. } if *status >= 500 => FailureCause::UpstreamUnavailable,
            // A realm berth will not send credentials to: the upstream's
            // auth setup, as far as berth can tell, is wrong (or hostile);
            // the message names the realm and the key that would allow it.
            UpstreamError::TokenRefused { .. }
            | UpstreamError::BadChallenge
            | UpstreamError::NoCredentials
            | UpstreamError::RealmRefused { .. } => FailureCause::Unauthorized,
            // The upstream sent berth somewhere it will not go: as good as
            // no answer. Berth's own bound being full: the upstream cannot
            // be asked now; both leave cached content served.
            UpstreamError::RedirectRefused(_) | UpstreamError::Saturated { .. } => FailureCause::UpstreamUnavailable,
            UpstreamError::DigestMismatch { .. } => FailureCause::DigestMismatch,
            // A body that ends early, runs long or does not continue where
            // it should: the transfer broke.
            UpstreamError::Truncated { .. } | UpstreamError::Overlong { .. } | UpstreamError::RangeMisplaced { .. } => {
                FailureCause::ConnectionReset
            }
            UpstreamError::ManifestInvalid(_) => FailureCause::ManifestInvalid,
            // Waiting on an upstream that sends nothing: a stall.
            UpstreamError::DeadlineExceeded { .. } => FailureCause::ReadTimeout,
        }
    }

    /// The cause behind the upstream's trouble: for a circuit that is open,
    /// the failure that opened it (what an operator needs when stale content
    /// was served), otherwise `cause()`.
    pub fn upstream_cause(&self) -> FailureCause {
        match self.root() {
            UpstreamError::CircuitOpen { cause } => *cause,
            _ => self.cause(),
        }
    }

    /// A 429 from the registry or its token service.
    pub fn is_rate_limited(&self) -> bool {
        matches!(
            self.root(),
            UpstreamError::Status { status: 429, .. } | UpstreamError::TokenRefused { status: 429, .. }
        )
    }

    /// Tell the client to come back when the rate-limit window ends.
    pub(super) fn set_retry_after(&mut self, secs: u64) {
        match self {
            UpstreamError::Retried { last, .. } => last.set_retry_after(secs),
            UpstreamError::Status { retry_after, .. } | UpstreamError::TokenRefused { retry_after, .. } => {
                *retry_after = Some(secs);
            }
            _ => {}
        }
    }

    /// Whether the upstream definitely could not be reached or answered with an
    /// outage, as opposed to a definite "no" about the content.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.cause().category(),
            Category::Network | Category::Registry | Category::Availability
        ) || matches!(self.root(), UpstreamError::TokenRefused { .. })
    }
}

fn classify_status(status: u16, code: Option<&str>) -> FailureCause {
    match (status, code) {
        (404, Some("NAME_UNKNOWN")) => FailureCause::NameUnknown,
        (404, Some("BLOB_UNKNOWN")) => FailureCause::BlobUnknown,
        (404, _) => FailureCause::ManifestUnknown,
        (401, _) => FailureCause::Unauthorized,
        (403, _) => FailureCause::Forbidden,
        (429, _) => FailureCause::RateLimited,
        (s, _) if s >= 500 => FailureCause::UpstreamUnavailable,
        _ => FailureCause::ManifestInvalid,
    }
}

fn classify_reqwest(e: &reqwest::Error) -> FailureCause {
    let flags = Flags {
        timeout: e.is_timeout(),
        connect: e.is_connect(),
        body: e.is_body() || e.is_decode(),
    };
    classify_chain(source_chain(e), flags)
}

/// A failure below HTTP that berth met without reqwest (`berth doctor`'s own
/// lookups and connects), classified by the same rules as reqwest's errors:
/// `connecting` says it happened while connecting.
pub(super) fn classify_transport(e: &(dyn std::error::Error + 'static), connecting: bool) -> FailureCause {
    let chain = std::iter::successors(Some(e), |s: &&(dyn std::error::Error + 'static)| (*s).source());
    let flags = Flags {
        timeout: false,
        connect: connecting,
        body: false,
    };
    classify_chain(chain, flags)
}

/// What reqwest says of an error besides its source chain.
struct Flags {
    timeout: bool,
    connect: bool,
    body: bool,
}

fn classify_chain<'a>(
    chain: impl Iterator<Item = &'a (dyn std::error::Error + 'static)> + Clone,
    flags: Flags,
) -> FailureCause {
    let io_kind = chain
        .clone()
        .find_map(|s| s.downcast_ref::<std::io::Error>().map(|io| io.kind()));
    if chain.clone().any(|s| s.downcast_ref::<DnsError>().is_some()) {
        return FailureCause::DnsResolution;
    }
    // rustls reports through an io::Error wrapping a rustls::Error, which
    // io::Error's `source()` skips over: look inside with `get_ref`.
    let is_tls = chain.clone().any(is_rustls);
    if is_tls {
        return FailureCause::TlsError;
    }
    if flags.timeout {
        return if flags.connect {
            FailureCause::ConnectTimeout
        } else {
            FailureCause::ReadTimeout
        };
    }
    match io_kind {
        Some(std::io::ErrorKind::ConnectionRefused) => FailureCause::ConnectionRefused,
        Some(std::io::ErrorKind::TimedOut) => FailureCause::ConnectTimeout,
        Some(
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::BrokenPipe,
        ) => FailureCause::ConnectionReset,
        _ if flags.connect => FailureCause::ConnectionRefused,
        _ if flags.body => FailureCause::ConnectionReset,
        _ => FailureCause::UpstreamUnavailable,
    }
}

/// A rustls error, possibly inside (nested) io::Errors.
fn is_rustls(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.downcast_ref::<rustls::Error>().is_some() {
        return true;
    }
    match e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
        Some(inner) => is_rustls(inner),
        None => false,
    }
}

fn source_chain<'a>(e: &'a reqwest::Error) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> + Clone {
    std::iter::successors(e.source(), |s: &&'a (dyn std::error::Error + 'static)| (*s).source())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classification() {
        assert_eq!(classify_status(404, Some("NAME_UNKNOWN")), FailureCause::NameUnknown);
        assert_eq!(
            classify_status(404, Some("MANIFEST_UNKNOWN")),
            FailureCause::ManifestUnknown
        );
        assert_eq!(classify_status(404, Some("BLOB_UNKNOWN")), FailureCause::BlobUnknown);
        assert_eq!(classify_status(429, Some("TOOMANYREQUESTS")), FailureCause::RateLimited);
        assert_eq!(classify_status(503, None), FailureCause::UpstreamUnavailable);
        assert_eq!(classify_status(403, Some("DENIED")), FailureCause::Forbidden);
    }
}
