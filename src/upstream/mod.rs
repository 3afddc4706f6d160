//! The client to one upstream registry. `send.rs` is the send loop
//! (endpoints in order, retries, circuit breaker, rate-limit window, auth);
//! `requests.rs` says what berth asks and what the answers mean;
//! `blob_stream.rs` turns a blob download into a typed stream that resumes
//! itself. Safe on an open network: tokens are fetched only from allowed
//! realms, redirects are checked, a 429 opens a rate-limit window (not the
//! circuit breaker), and requests in flight are bounded per upstream.
//!
//! This layer knows nothing about the cache or the client's request, and
//! nothing above it sees a reqwest type.

mod auth;
mod blob_stream;
mod breaker;
mod dns;
mod error;
mod limit;
mod probe;
mod proxy;
mod ratelimit;
mod redirect;
mod requests;
mod response;
mod retry;
mod send;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use auth::Challenge;
pub use blob_stream::BlobStream;
pub use error::UpstreamError;
pub use probe::{Ping, ProbeError, ProbedHead};
pub use retry::is_retryable;

use crate::config::{Credentials, RetryConfig, UpstreamConfig};
use crate::events::Events;
use crate::reference::Digest;
use breaker::Breaker;
use limit::Limiter;
use ratelimit::RateWindow;

/// Distribution refuses manifests over 4 MiB; so does berth, so a hostile
/// upstream cannot make it buffer without bound.
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;
/// Tags of one repository berth accepts from an upstream: the largest real
/// repositories have tens of thousands.
pub const MAX_TAGS: usize = 100_000;
/// Bytes of tag-list pages read for one repository, all pages together.
pub const MAX_TAG_LIST_BYTES: usize = 8 << 20;

pub struct Upstream {
    pub name: String,
    /// As configured: routing and the API read it (prefix, conversion mode).
    pub config: UpstreamConfig,
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
    headroom: ratelimit::Headroom,
    limiter: Limiter,
    offline: bool,
    events: Arc<Events>,
}

/// An upstream's state now, for `/_berth/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpstreamHealth {
    pub circuit_open: Option<crate::failure::FailureCause>,
    pub rate_limited_secs: Option<u64>,
    pub offline: bool,
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

impl Upstream {
    pub fn new(cfg: &UpstreamConfig, events: Arc<Events>) -> Result<Self, UpstreamError> {
        Self::build(cfg, events, false)
    }

    /// A client that never goes through an HTTP proxy whatever the
    /// environment says: for other replicas of the fleet, on the cluster's
    /// own network (a proxy set for reaching upstreams must not carry, nor
    /// see the cluster secret of, replica-to-replica requests).
    pub fn direct(cfg: &UpstreamConfig, events: Arc<Events>) -> Result<Self, UpstreamError> {
        Self::build(cfg, events, true)
    }

    fn build(cfg: &UpstreamConfig, events: Arc<Events>, direct: bool) -> Result<Self, UpstreamError> {
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
        let builder = reqwest::Client::builder();
        let builder = if direct { builder.no_proxy() } else { builder };
        let http = builder
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
            config: cfg.clone(),
            endpoints: cfg.endpoints.clone(),
            proxied: cfg
                .endpoints
                .iter()
                .map(|u| !direct && proxy::is_proxied(u, |k| std::env::var(k).ok()))
                .collect(),
            http,
            tokens: auth::TokenCache::default(),
            realms: auth::RealmPolicy::new(&cfg.endpoints, &cfg.auth_hosts),
            credentials: cfg.credentials.clone(),
            retry: cfg.retry,
            breaker: Breaker::new(cfg.breaker_threshold, cfg.breaker_cooldown),
            rate_window: RateWindow::default(),
            headroom: ratelimit::Headroom::default(),
            limiter: Limiter::new(cfg.max_concurrent_requests),
            offline: cfg.offline,
            events,
        })
    }

    /// Whether this upstream is never to be contacted.
    pub fn is_offline(&self) -> bool {
        self.offline
    }

    /// What the status page shows of this upstream: the cause that opened
    /// its circuit, if open; how long its rate-limit window has left.
    pub fn health(&self) -> UpstreamHealth {
        UpstreamHealth {
            circuit_open: self.breaker.refuses().map(|o| o.cause),
            rate_limited_secs: self.rate_window.remaining().map(ratelimit::ceil_secs),
            offline: self.offline,
        }
    }
}
