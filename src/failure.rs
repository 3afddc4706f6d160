//! The failure-cause taxonomy: every request that ends in an error is put in
//! exactly one of these, logged once as a `pull_failed` event (by the request
//! middleware in `server.rs`), and named in the client's error message.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCause {
    DnsResolution,
    ConnectionRefused,
    ConnectTimeout,
    TlsError,
    ProxyError,
    ReadTimeout,
    ConnectionReset,
    UpstreamUnavailable,
    RateLimited,
    Unauthorized,
    Forbidden,
    ManifestUnknown,
    NameUnknown,
    BlobUnknown,
    InvalidReference,
    DigestMismatch,
    ManifestInvalid,
    UnsupportedMediaType,
    NotCachedOffline,
    UpstreamNotConfigured,
    DiskFull,
    StorageError,
    ClientUnauthorized,
    ClientForbidden,
    ClientRateLimited,
    UnsupportedOperation,
    InvalidRequest,
    ClientAborted,
    Internal,
}

impl FailureCause {
    /// Every cause, in the order declared.
    pub const ALL: [FailureCause; 29] = [
        FailureCause::DnsResolution,
        FailureCause::ConnectionRefused,
        FailureCause::ConnectTimeout,
        FailureCause::TlsError,
        FailureCause::ProxyError,
        FailureCause::ReadTimeout,
        FailureCause::ConnectionReset,
        FailureCause::UpstreamUnavailable,
        FailureCause::RateLimited,
        FailureCause::Unauthorized,
        FailureCause::Forbidden,
        FailureCause::ManifestUnknown,
        FailureCause::NameUnknown,
        FailureCause::BlobUnknown,
        FailureCause::InvalidReference,
        FailureCause::DigestMismatch,
        FailureCause::ManifestInvalid,
        FailureCause::UnsupportedMediaType,
        FailureCause::NotCachedOffline,
        FailureCause::UpstreamNotConfigured,
        FailureCause::DiskFull,
        FailureCause::StorageError,
        FailureCause::ClientUnauthorized,
        FailureCause::ClientForbidden,
        FailureCause::ClientRateLimited,
        FailureCause::UnsupportedOperation,
        FailureCause::InvalidRequest,
        FailureCause::ClientAborted,
        FailureCause::Internal,
    ];

    /// The cause with this `name()`, if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        FailureCause::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The stable snake_case name used in logs, metrics and client messages.
    pub fn name(self) -> &'static str {
        use FailureCause::*;
        match self {
            DnsResolution => "dns_resolution",
            ConnectionRefused => "connection_refused",
            ConnectTimeout => "connect_timeout",
            TlsError => "tls_error",
            ProxyError => "proxy_error",
            ReadTimeout => "read_timeout",
            ConnectionReset => "connection_reset",
            UpstreamUnavailable => "upstream_unavailable",
            RateLimited => "rate_limited",
            Unauthorized => "unauthorized",
            Forbidden => "forbidden",
            ManifestUnknown => "manifest_unknown",
            NameUnknown => "name_unknown",
            BlobUnknown => "blob_unknown",
            InvalidReference => "invalid_reference",
            DigestMismatch => "digest_mismatch",
            ManifestInvalid => "manifest_invalid",
            UnsupportedMediaType => "unsupported_media_type",
            NotCachedOffline => "not_cached_offline",
            UpstreamNotConfigured => "upstream_not_configured",
            DiskFull => "disk_full",
            StorageError => "storage_error",
            ClientUnauthorized => "client_unauthorized",
            ClientForbidden => "client_forbidden",
            ClientRateLimited => "client_rate_limited",
            UnsupportedOperation => "unsupported_operation",
            InvalidRequest => "invalid_request",
            ClientAborted => "client_aborted",
            Internal => "internal",
        }
    }

    pub fn category(self) -> Category {
        use FailureCause::*;
        match self {
            DnsResolution | ConnectionRefused | ConnectTimeout | TlsError | ProxyError | ReadTimeout
            | ConnectionReset => Category::Network,
            UpstreamUnavailable | RateLimited => Category::Registry,
            Unauthorized | Forbidden => Category::Auth,
            ManifestUnknown | NameUnknown | BlobUnknown | InvalidReference => Category::Reference,
            DigestMismatch | ManifestInvalid => Category::Integrity,
            UnsupportedMediaType => Category::Format,
            NotCachedOffline => Category::Availability,
            UpstreamNotConfigured => Category::Config,
            DiskFull | StorageError => Category::Storage,
            ClientUnauthorized | ClientForbidden | ClientRateLimited => Category::Access,
            UnsupportedOperation | InvalidRequest | ClientAborted => Category::Client,
            Internal => Category::Internal,
        }
    }

    /// One line a person can act on.
    pub fn hint(self) -> &'static str {
        use FailureCause::*;
        match self {
            DnsResolution => "check DNS resolution of the upstream host",
            ConnectionRefused => "the upstream refused the connection: a firewall rejects it or the upstream is down",
            ConnectTimeout => {
                "no answer to connect: a firewall or route drops traffic to the upstream; check the route and port"
            }
            TlsError => "TLS handshake failed: check the CA bundle and the upstream host name",
            ProxyError => "the HTTP proxy refused the connection: check HTTPS_PROXY / NO_PROXY",
            ReadTimeout => "the upstream stalled: network loss or an overloaded upstream",
            ConnectionReset => "the connection broke mid-transfer: unstable network",
            UpstreamUnavailable => "upstream outage (5xx); cached content is still served",
            RateLimited => "upstream rate limit: authenticate or pull less; see the ratelimit-* headers",
            Unauthorized => "upstream credentials missing, wrong or rotated",
            Forbidden => "the account or address lacks pull permission upstream",
            ManifestUnknown => "the tag or manifest does not exist upstream: check the spelling",
            NameUnknown => "the repository does not exist upstream, or it is private",
            BlobUnknown => "the upstream does not have this blob",
            InvalidReference => "fix the image reference (lower-case name, valid tag or digest)",
            DigestMismatch => "content did not match its digest: corrupted transfer or upstream; nothing was cached",
            ManifestInvalid => "the upstream manifest is broken",
            UnsupportedMediaType => {
                "the client cannot accept this media type: enable conversion, or the image uses zstd or artifacts"
            }
            NotCachedOffline => "the upstream is unreachable and this content is not cached: seed the cache",
            UpstreamNotConfigured => "add this registry as an [[upstream]] in berth's config",
            DiskFull => "the cache disk is full: free space or lower cache.max_size",
            StorageError => "cache I/O failed: check the cache directory",
            ClientUnauthorized => {
                "no or wrong credentials for berth: `docker login` to berth, or check the htpasswd entry"
            }
            ClientForbidden => {
                "this identity or address may not pull this: add an [[access]] rule (or the network to allow_networks)"
            }
            ClientRateLimited => "per-client request limit reached: slow down; see Retry-After",
            UnsupportedOperation => "berth is a read-only mirror: push to (or delete on) the origin registry",
            InvalidRequest => "fix the request: its Range, pagination or endpoint is not one berth serves",
            ClientAborted => "the client went away mid-transfer",
            Internal => "a bug in berth: please report it",
        }
    }
}

/// The family of a cause: where to look first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Network,
    Registry,
    Auth,
    Reference,
    Integrity,
    Format,
    Availability,
    Config,
    Storage,
    Access,
    Client,
    Internal,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Network => "network",
            Category::Registry => "registry",
            Category::Auth => "auth",
            Category::Reference => "reference",
            Category::Integrity => "integrity",
            Category::Format => "format",
            Category::Availability => "availability",
            Category::Config => "config",
            Category::Storage => "storage",
            Category::Access => "access",
            Category::Client => "client",
            Category::Internal => "internal",
        }
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for FailureCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What an error response carries for the logging middleware; attached as a
/// response extension so the error's conversion itself has no side effects.
#[derive(Debug, Clone)]
pub struct FailureRecord {
    pub cause: FailureCause,
    pub upstream: Option<String>,
    pub upstream_status: Option<u16>,
    pub repository: Option<String>,
    pub reference: Option<String>,
    /// Upstream attempts made (0 when the upstream was not asked).
    pub attempts: u32,
    /// A finer reason within the cause (e.g. why conversion was refused).
    pub reason: Option<&'static str>,
    /// The upstream's `ratelimit-*` / `retry-after` headers, for rate limits.
    pub ratelimit: Option<String>,
    /// Who the client was (`alice`, `cn:node-1`, `anonymous`), when known;
    /// never a credential.
    pub identity: Option<String>,
    /// What this failure adds to its cause's hint ("did you mean 1.36?").
    pub suggestion: Option<String>,
    pub detail: String,
}

impl FailureRecord {
    /// The cause's hint, with this failure's suggestion when it has one.
    pub fn hint(&self) -> std::borrow::Cow<'static, str> {
        match &self.suggestion {
            Some(s) => format!("{}; {s}", self.cause.hint()).into(),
            None => self.cause.hint().into(),
        }
    }

    pub fn new(cause: FailureCause, detail: String) -> Self {
        Self {
            cause,
            upstream: None,
            upstream_status: None,
            repository: None,
            reference: None,
            attempts: 0,
            reason: None,
            ratelimit: None,
            identity: None,
            suggestion: None,
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_snake_case_and_match_serde() {
        for c in [
            FailureCause::DnsResolution,
            FailureCause::UpstreamNotConfigured,
            FailureCause::Internal,
        ] {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.name()));
            assert!(!c.hint().is_empty());
        }
    }
}

#[cfg(test)]
mod all_tests {
    use super::*;

    /// Fails to compile when a cause is added without a place here, and
    /// fails when `ALL` does not list it at that place.
    fn position(c: FailureCause) -> usize {
        use FailureCause::*;
        match c {
            DnsResolution => 0,
            ConnectionRefused => 1,
            ConnectTimeout => 2,
            TlsError => 3,
            ProxyError => 4,
            ReadTimeout => 5,
            ConnectionReset => 6,
            UpstreamUnavailable => 7,
            RateLimited => 8,
            Unauthorized => 9,
            Forbidden => 10,
            ManifestUnknown => 11,
            NameUnknown => 12,
            BlobUnknown => 13,
            InvalidReference => 14,
            DigestMismatch => 15,
            ManifestInvalid => 16,
            UnsupportedMediaType => 17,
            NotCachedOffline => 18,
            UpstreamNotConfigured => 19,
            DiskFull => 20,
            StorageError => 21,
            ClientUnauthorized => 22,
            ClientForbidden => 23,
            ClientRateLimited => 24,
            UnsupportedOperation => 25,
            InvalidRequest => 26,
            ClientAborted => 27,
            Internal => 28,
        }
    }

    #[test]
    fn all_lists_every_cause_once() {
        for (i, c) in FailureCause::ALL.iter().enumerate() {
            assert_eq!(position(*c), i, "{c:?}");
            assert!(!c.hint().is_empty(), "{c:?} has a hint");
        }
    }
}

#[cfg(test)]
mod category_tests {
    use super::*;

    #[test]
    fn categories_are_named_as_in_the_design_table() {
        assert_eq!(FailureCause::ConnectTimeout.category(), Category::Network);
        assert_eq!(FailureCause::UnsupportedOperation.category().as_str(), "client");
        assert_eq!(FailureCause::InvalidRequest.category(), Category::Client);
        for c in [
            FailureCause::ClientUnauthorized,
            FailureCause::ClientForbidden,
            FailureCause::ClientRateLimited,
        ] {
            assert_eq!(c.category().as_str(), "access", "{c:?}");
        }
        assert_eq!(FailureCause::ClientRateLimited.name(), "client_rate_limited");
        assert_eq!(
            serde_json::to_string(&Category::Availability).unwrap(),
            "\"availability\""
        );
    }
}
