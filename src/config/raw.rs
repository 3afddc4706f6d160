//! The configuration as the TOML file spells it: serde types with every key's
//! default, unknown keys refused. Nothing here judges a value; `validate` does.
//! The serialised form is what `berth check-config` prints, after `redacted`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Port 5000 is what registries conventionally listen on.
const DEFAULT_LISTEN: &str = "0.0.0.0:5000";
/// The admin surface (metrics, failures with client addresses and
/// repository names) is never public by default: loopback, on
/// Distribution's debug port.
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:5001";
/// Relative to the working directory, so a first run needs no setup.
const DEFAULT_CACHE_DIR: &str = "berth-data";
/// Text is what a person reads on a terminal; log shippers ask for "json".
const DEFAULT_LOG_FORMAT: &str = "text";
/// 50 GiB: a few hundred typical images; operators size it to their disk.
const DEFAULT_MAX_SIZE: &str = "50GiB";
/// Docker Hub counts GETs; a 5 minute tag TTL keeps tag pulls fresh while
/// turning a fleet's rollout into one HEAD per tag per TTL.
const DEFAULT_TAG_TTL: &str = "5m";
/// An image served this recently keeps all its content through eviction: a
/// rollout pulling it on node after node must not find layers gone.
const DEFAULT_KEEP_RECENT: &str = "10m";
/// A blob download whose clients all went away is finished by default, so the
/// next pull is warm (zot's #4393 is the bug of cancelling it).
const DEFAULT_FINISH_ABANDONED: bool = true;
/// Convert only for a client that cannot read what the upstream sent (old
/// docker): it still gets a manifest, and every other client the exact bytes.
const DEFAULT_CONVERT: &str = "auto";
/// Long enough for a slow TLS handshake across continents, short enough that a
/// dropped SYN is noticed before the client gives up.
const DEFAULT_CONNECT_TIMEOUT: &str = "10s";
/// Maximum silence on an open upstream connection before it counts as stalled.
const DEFAULT_READ_TIMEOUT: &str = "30s";
/// Upstream attempts per request: enough to ride out a restart or a brief
/// 503 burst, few enough that a dead upstream is given up on quickly.
const DEFAULT_ATTEMPTS: u32 = 4;
/// First backoff ceiling; doubled per attempt up to the maximum (full jitter).
const DEFAULT_RETRY_BASE: &str = "200ms";
/// Backoff ceiling, reached only when `attempts` is raised: a longer wait
/// would spend much of the deadline idle.
const DEFAULT_RETRY_MAX: &str = "5s";
/// Bound on all attempts of one request, waits included: a client (docker
/// pull) gives up on its own after about a minute.
const DEFAULT_DEADLINE: &str = "45s";
/// A client has this long to send a whole request head (slowloris bound).
const DEFAULT_HEADER_TIMEOUT: &str = "10s";
/// A connection with no traffic and no request in flight is closed after this.
const DEFAULT_IDLE_TIMEOUT: &str = "120s";
/// A TLS client has this long to finish its handshake.
const DEFAULT_HANDSHAKE_TIMEOUT: &str = "10s";
/// A client that accepts no response bytes for this long is dropped.
const DEFAULT_WRITE_TIMEOUT: &str = "60s";
/// Kubernetes' default terminationGracePeriodSeconds is 30 s: finish before it.
const DEFAULT_SHUTDOWN_GRACE: &str = "25s";
/// Open connections at once; accepting waits beyond this.
const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// Open connections from one client address: a node pulls with a few dozen.
const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: u32 = 256;
/// No per-client request limit unless asked for: a mirror's clients are
/// usually a known fleet, and a limit that fits one fleet would throttle another.
const DEFAULT_CLIENT_REQUESTS_PER_SECOND: u32 = 0;
/// 0 = twice the rate: a `docker pull` opens with a burst (manifest, config,
/// a few layers at once) that a bucket of one second's worth would cut.
const DEFAULT_CLIENT_BURST: u32 = 0;
/// Consecutive failed attempts after which the upstream is treated as down.
const DEFAULT_BREAKER_THRESHOLD: u32 = 5;
/// How long a down upstream is left alone before one probe is let through.
const DEFAULT_BREAKER_COOLDOWN: &str = "30s";
/// Requests in flight to one upstream at once, blob bodies included. 64 is
/// well above what one pull needs (docker and containerd fetch 3 layers at a
/// time per image; a node pulls a few images at once, so a rollout over a
/// dozen nodes stays under it) and well below what gets a client IP throttled
/// or leaves berth holding thousands of sockets and temp files when a
/// burst of distinct digests arrives.
pub(super) const DEFAULT_MAX_CONCURRENT_REQUESTS: u32 = 64;

// A missing key takes its value from the struct's `Default`, so each default
// is written once. `RawUpstream` is the exception: its `name` has none.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawConfig {
    pub listen: String,
    /// Where /metrics and /_berth/* are served; "" = on `listen`.
    pub admin_listen: String,
    pub cache_dir: String,
    pub log_format: String,
    /// Serve only from the cache; never contact an upstream.
    pub offline: bool,
    pub server: RawServer,
    pub cache: RawCache,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<RawAuth>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<RawAccess>,
    pub upstream: Vec<RawUpstream>,
    /// Images kept warm on a schedule.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prefetch: Vec<RawPrefetch>,
    /// Where content lives: the cache directory, or a bucket shared by replicas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<RawStorage>,
    /// Replicas sharing `[storage]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<RawCluster>,
}

/// `[cluster]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    /// This replica's registry URL, as the others reach it; may be left to
    /// `BERTH_CLUSTER_SELF` (one config for every replica).
    #[serde(rename = "self", default)]
    pub self_url: String,
    #[serde(default)]
    pub peers: Vec<String>,
    /// `name:port` resolving to every replica (a headless Service), instead
    /// of `peers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers_dns: Option<String>,
    /// The shared secret replicas authenticate to each other with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<std::path::PathBuf>,
    /// How often the replica evicting for the fleet sizes the bucket up
    /// (one listing of it) against `cache.max_size`.
    #[serde(default = "d_eviction_check")]
    pub eviction_check: String,
}

fn d_eviction_check() -> String {
    "1m".into()
}

/// `[storage]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    #[serde(default = "d_storage_kind")]
    pub kind: String,
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub bucket: String,
    #[serde(default = "d_storage_region")]
    pub region: String,
    #[serde(default)]
    pub access_key_id: String,
    #[serde(default)]
    pub secret_access_key: String,
    /// The secret key read from a file (a mounted Secret) instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key_file: Option<std::path::PathBuf>,
    /// Hot blobs on the replica's disk in front of S3 ("20GiB"; "0": none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_cache: Option<String>,
}

fn d_storage_kind() -> String {
    "filesystem".into()
}

fn d_storage_region() -> String {
    "us-east-1".into()
}

/// `[[prefetch]]`: images to keep warm.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrefetch {
    pub images: Vec<String>,
    #[serde(default = "d_prefetch_every")]
    pub every: String,
    #[serde(default)]
    pub platforms: Vec<String>,
}

fn d_prefetch_every() -> String {
    "6h".into()
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.into(),
            admin_listen: DEFAULT_ADMIN_LISTEN.into(),
            cache_dir: DEFAULT_CACHE_DIR.into(),
            log_format: DEFAULT_LOG_FORMAT.into(),
            offline: false,
            server: RawServer::default(),
            cache: RawCache::default(),
            tls: None,
            auth: None,
            access: Vec::new(),
            upstream: Vec::new(),
            prefetch: Vec::new(),
            storage: None,
            cluster: None,
        }
    }
}

impl RawConfig {
    /// This copy with its secrets out: inline passwords and the userinfo of
    /// endpoint URLs. Only the redacted copy is kept, to print.
    pub fn redacted(mut self) -> RawConfig {
        if let Some(s) = &mut self.storage
            && !s.secret_access_key.is_empty()
        {
            s.secret_access_key = "<redacted>".into();
        }
        for u in &mut self.upstream {
            if u.password.is_some() {
                u.password = Some("<redacted>".into());
            }
            for e in &mut u.endpoints {
                *e = crate::redact::userinfo(e);
            }
        }
        self
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawServer {
    pub header_timeout: String,
    pub idle_timeout: String,
    pub handshake_timeout: String,
    pub write_timeout: String,
    pub shutdown_grace: String,
    pub max_connections: u32,
    pub max_connections_per_client: u32,
    pub client_requests_per_second: u32,
    pub client_burst: u32,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            header_timeout: DEFAULT_HEADER_TIMEOUT.into(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT.into(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT.into(),
            write_timeout: DEFAULT_WRITE_TIMEOUT.into(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE.into(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            client_requests_per_second: DEFAULT_CLIENT_REQUESTS_PER_SECOND,
            client_burst: DEFAULT_CLIENT_BURST,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawCache {
    pub max_size: String,
    pub tag_ttl: String,
    pub keep_recent: String,
    pub finish_abandoned: bool,
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            max_size: DEFAULT_MAX_SIZE.into(),
            tag_ttl: DEFAULT_TAG_TTL.into(),
            keep_recent: DEFAULT_KEEP_RECENT.into(),
            finish_abandoned: DEFAULT_FINISH_ABANDONED,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Ask clients for certificates signed by this CA (mTLS; `cn:` identities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// `[auth]`: every key optional; the table's presence turns access control on.
/// Anonymous is off by default: whoever writes `[auth]` wants to know who pulls.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawAuth {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub htpasswd: Option<PathBuf>,
    pub allow_networks: Vec<String>,
    pub anonymous: bool,
    pub admins: Vec<String>,
}

/// One `[[access]]` rule. `identities` has no default: a rule for nobody is
/// a mistake. Absent `upstreams` / `repositories` mean every one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccess {
    pub identities: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstreams: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repositories: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub name: String,
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub default: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(default = "d_convert")]
    pub convert: String,
    #[serde(default = "d_connect_timeout")]
    pub connect_timeout: String,
    #[serde(default = "d_read_timeout")]
    pub read_timeout: String,
    #[serde(default = "d_attempts")]
    pub attempts: u32,
    #[serde(default = "d_retry_base")]
    pub retry_base_delay: String,
    #[serde(default = "d_retry_max")]
    pub retry_max_delay: String,
    #[serde(default = "d_deadline")]
    pub deadline: String,
    #[serde(default = "d_breaker_threshold")]
    pub breaker_threshold: u32,
    #[serde(default = "d_breaker_cooldown")]
    pub breaker_cooldown: String,
    #[serde(default)]
    pub offline: bool,
    /// Hosts (`host` or `host:port`) a token realm may name besides the endpoints'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_hosts: Option<Vec<String>>,
    #[serde(default = "d_max_concurrent_requests")]
    pub max_concurrent_requests: u32,
}

// serde's `default = "…"` takes a function, not a constant: one per key of
// `RawUpstream`, whose required `name` rules out a container default.
fn d_convert() -> String {
    DEFAULT_CONVERT.into()
}
fn d_connect_timeout() -> String {
    DEFAULT_CONNECT_TIMEOUT.into()
}
fn d_read_timeout() -> String {
    DEFAULT_READ_TIMEOUT.into()
}
fn d_attempts() -> u32 {
    DEFAULT_ATTEMPTS
}
fn d_retry_base() -> String {
    DEFAULT_RETRY_BASE.into()
}
fn d_retry_max() -> String {
    DEFAULT_RETRY_MAX.into()
}
fn d_deadline() -> String {
    DEFAULT_DEADLINE.into()
}
fn d_breaker_threshold() -> u32 {
    DEFAULT_BREAKER_THRESHOLD
}
fn d_breaker_cooldown() -> String {
    DEFAULT_BREAKER_COOLDOWN.into()
}
fn d_max_concurrent_requests() -> u32 {
    DEFAULT_MAX_CONCURRENT_REQUESTS
}
