//! Configuration: the file (or the embedded default), `BERTH_*` environment
//! overrides, then command-line flags; validated in one pass that reports every
//! bad key at once, by its dotted name. This file holds the validated types the
//! rest of berth reads; `raw` is the file's shape, `validate` turns it into
//! these types without touching the disk, `load` is the pipeline (and the one
//! place config files and the files they name are read).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;
use url::Url;

mod load;
mod raw;
mod validate;

pub use crate::auth::{AccessRule, AuthConfig};
pub use load::{ConfigSource, EMBEDDED_DEFAULT, Overrides};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("config {origin} is invalid:\n  {}", .problems.join("\n  "))]
    Invalid { origin: String, problems: Vec<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvertMode {
    Auto,
    Docker,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates signed by this CA are asked for and verified;
    /// clients without one may still connect (and use Basic).
    pub client_ca: Option<PathBuf>,
}

/// Credentials for an upstream. `Debug` is hand-written so they never reach a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

/// Equal when a reload would build the same client (so it keeps its breaker and tokens).
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: String,
    pub endpoints: Vec<Url>,
    pub default: bool,
    pub prefix: String,
    pub credentials: Option<Credentials>,
    pub convert: ConvertMode,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub retry: RetryConfig,
    pub breaker_threshold: u32,
    pub breaker_cooldown: Duration,
    /// Never contact this upstream (set per upstream or globally).
    pub offline: bool,
    /// Where a token realm may point besides the endpoints themselves.
    pub auth_hosts: Vec<AuthHost>,
    /// Requests in flight to this upstream at once (blob bodies included).
    pub max_concurrent_requests: u32,
}

/// A host a token realm may name. With a port, exactly that port; without,
/// the default port of the realm's scheme (443 for https): "host" means host
/// and port, as a browser's origin does, so a realm on another port of an
/// allowed host is refused unless that port is listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthHost {
    /// As `url` normalises it: lower case, IPv6 in brackets.
    pub host: String,
    pub port: Option<u16>,
}

impl AuthHost {
    /// Parse `host` or `host:port` (no scheme, path or credentials).
    pub fn parse(entry: &str) -> Option<AuthHost> {
        if entry.is_empty() || entry.contains(['/', '@', '?', '#']) || entry.chars().any(char::is_whitespace) {
            return None;
        }
        let url = Url::parse(&format!("https://{entry}/")).ok()?;
        Some(AuthHost {
            host: url.host_str()?.to_string(),
            port: url.port(),
        })
    }
}

/// How hard berth tries one upstream request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub deadline: Duration,
}

/// Limits against slow and greedy clients (`[server]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub write_timeout: Duration,
    /// On SIGTERM: how long responses in flight may take to finish.
    pub shutdown_grace: Duration,
    pub max_connections: u32,
    pub max_connections_per_client: u32,
    /// Requests per second one client may make (a token bucket per
    /// identity, or per address for anonymous clients); 0 = no limit.
    pub client_requests_per_second: u32,
    /// The bucket's size, resolved: `client_burst`, or twice the rate when
    /// that is 0. 0 when there is no limit.
    pub client_burst: u32,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// The admin listener; None: the admin surface is on `listen`.
    pub admin_listen: Option<SocketAddr>,
    pub server: ServerLimits,
    pub cache_dir: PathBuf,
    pub log_format: LogFormat,
    pub max_size: u64,
    pub tag_ttl: Duration,
    /// Images served within this keep all their content through eviction.
    pub keep_recent: Duration,
    pub finish_abandoned: bool,
    pub tls: Option<TlsConfig>,
    /// `[auth]`; `None`: anonymous pulls, as without access control.
    pub auth: Option<AuthConfig>,
    /// `[[access]]` in order (empty without `[auth]`).
    pub access: Vec<AccessRule>,
    pub upstreams: Vec<UpstreamConfig>,
    /// `[[prefetch]]` in order.
    pub prefetch: Vec<PrefetchSchedule>,
    /// `[storage] kind = "s3"`; None: content in the cache directory.
    pub s3: Option<S3Storage>,
    /// `[cluster]`; None: a single berth.
    pub cluster: Option<ClusterConfig>,
    raw: raw::RawConfig,
}

/// `[cluster]`: this replica and all of them (itself included), as
/// registry URLs the replicas reach each other at.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub self_url: Url,
    /// The replicas as listed; empty with `peers_dns`.
    pub peers: Vec<Url>,
    /// `peers_dns`: a name and port resolving to every replica; each
    /// address found is a peer `<scheme of self>://<address>:<port>`.
    pub peers_dns: Option<(String, u16)>,
    /// Read from `secret_file`: replicas present it to each other (as the
    /// password of `auth::REPLICA_USER`); required with `[auth]`.
    pub secret: Option<String>,
    /// How often the replica evicting for the fleet sizes the bucket up.
    pub eviction_check: std::time::Duration,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("self_url", &self.self_url)
            .field("peers", &self.peers)
            .field("peers_dns", &self.peers_dns)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("eviction_check", &self.eviction_check)
            .finish()
    }
}

/// `[storage] kind = "s3"`: the bucket replicas share.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Storage {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// `local_cache`: bytes of hot blobs kept on this replica's disk (0: none).
    pub local_cache: u64,
}

impl std::fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Storage")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("local_cache", &self.local_cache)
            .finish()
    }
}

/// `[[prefetch]]`: these images are warmed at start and every `every`
/// (tags revalidated, new digests fetched).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchSchedule {
    pub images: Vec<String>,
    pub every: Duration,
    /// `os/arch[/variant]`; empty: every platform.
    pub platforms: Vec<String>,
}

impl Config {
    pub fn default_upstream(&self) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.default)
    }
}
