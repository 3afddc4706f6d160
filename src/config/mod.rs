//! Configuration: the file (or the embedded default), `BERTH_*` environment
//! overrides, then command-line flags; validated in one pass that reports every
//! bad key at once, by its dotted name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use url::Url;

use crate::units::{parse_duration, parse_size};

/// The configuration compiled into the binary; `berth serve` with no flags runs it.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/berth.toml");

/// Port 5000 is what registries conventionally listen on.
const DEFAULT_LISTEN: &str = "0.0.0.0:5000";
/// Relative to the working directory, so a first run needs no setup.
const DEFAULT_CACHE_DIR: &str = "berth-data";
/// 50 GiB: a few hundred typical images; operators size it to their disk.
const DEFAULT_MAX_SIZE: &str = "50GiB";
/// Docker Hub counts GETs; a 5 minute tag TTL keeps tag pulls fresh while
/// turning a fleet's rollout into one HEAD per tag per TTL.
const DEFAULT_TAG_TTL: &str = "5m";
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
/// Open connections at once; accepting waits beyond this.
const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// Open connections from one client address: a node pulls with a few dozen.
const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: u32 = 256;
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
const DEFAULT_MAX_CONCURRENT_REQUESTS: u32 = 64;
/// The host Docker Hub's token service lives on (`WWW-Authenticate` realm).
const DOCKER_HUB_AUTH_HOST: &str = "auth.docker.io";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("config {origin} is invalid:\n  {}", .problems.join("\n  "))]
    Invalid { origin: String, problems: Vec<String> },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "d_listen")]
    listen: String,
    #[serde(default = "d_cache_dir")]
    cache_dir: String,
    #[serde(default = "d_log_format")]
    log_format: String,
    /// Serve only from the cache; never contact an upstream.
    #[serde(default)]
    offline: bool,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    cache: RawCache,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tls: Option<RawTls>,
    #[serde(default)]
    upstream: Vec<RawUpstream>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default = "d_header_timeout")]
    header_timeout: String,
    #[serde(default = "d_idle_timeout")]
    idle_timeout: String,
    #[serde(default = "d_handshake_timeout")]
    handshake_timeout: String,
    #[serde(default = "d_write_timeout")]
    write_timeout: String,
    #[serde(default = "d_max_connections")]
    max_connections: u32,
    #[serde(default = "d_max_connections_per_client")]
    max_connections_per_client: u32,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            header_timeout: d_header_timeout(),
            idle_timeout: d_idle_timeout(),
            handshake_timeout: d_handshake_timeout(),
            write_timeout: d_write_timeout(),
            max_connections: d_max_connections(),
            max_connections_per_client: d_max_connections_per_client(),
        }
    }
}

fn d_header_timeout() -> String {
    DEFAULT_HEADER_TIMEOUT.into()
}
fn d_idle_timeout() -> String {
    DEFAULT_IDLE_TIMEOUT.into()
}
fn d_handshake_timeout() -> String {
    DEFAULT_HANDSHAKE_TIMEOUT.into()
}
fn d_write_timeout() -> String {
    DEFAULT_WRITE_TIMEOUT.into()
}
fn d_max_connections() -> u32 {
    DEFAULT_MAX_CONNECTIONS
}
fn d_max_connections_per_client() -> u32 {
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    #[serde(default = "d_max_size")]
    max_size: String,
    #[serde(default = "d_tag_ttl")]
    tag_ttl: String,
    #[serde(default = "d_true")]
    finish_abandoned: bool,
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            max_size: d_max_size(),
            tag_ttl: d_tag_ttl(),
            finish_abandoned: true,
        }
    }
}

/// A blob download whose clients all went away is finished by default, so the
/// next pull is warm (zot's #4393 is the bug of cancelling it).
fn d_true() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: String,
    #[serde(default)]
    endpoints: Vec<String>,
    #[serde(default)]
    default: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_file: Option<PathBuf>,
    #[serde(default = "d_convert")]
    convert: String,
    #[serde(default = "d_connect_timeout")]
    connect_timeout: String,
    #[serde(default = "d_read_timeout")]
    read_timeout: String,
    #[serde(default = "d_attempts")]
    attempts: u32,
    #[serde(default = "d_retry_base")]
    retry_base_delay: String,
    #[serde(default = "d_retry_max")]
    retry_max_delay: String,
    #[serde(default = "d_deadline")]
    deadline: String,
    #[serde(default = "d_breaker_threshold")]
    breaker_threshold: u32,
    #[serde(default = "d_breaker_cooldown")]
    breaker_cooldown: String,
    #[serde(default)]
    offline: bool,
    /// Hosts (`host` or `host:port`) a token realm may name besides the endpoints'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth_hosts: Option<Vec<String>>,
    #[serde(default = "d_max_concurrent_requests")]
    max_concurrent_requests: u32,
}

fn d_max_concurrent_requests() -> u32 {
    DEFAULT_MAX_CONCURRENT_REQUESTS
}

fn d_listen() -> String {
    DEFAULT_LISTEN.into()
}
fn d_cache_dir() -> String {
    DEFAULT_CACHE_DIR.into()
}
fn d_log_format() -> String {
    "text".into()
}
fn d_max_size() -> String {
    DEFAULT_MAX_SIZE.into()
}
fn d_tag_ttl() -> String {
    DEFAULT_TAG_TTL.into()
}
fn d_convert() -> String {
    "auto".into()
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

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Credentials for an upstream. `Debug` is hand-written so they never reach a log.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

#[derive(Debug, Clone)]
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
#[derive(Debug, Clone, Copy)]
pub struct RetryConfig {
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub deadline: Duration,
}

/// Limits against slow and greedy clients (`[server]`).
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections: u32,
    pub max_connections_per_client: u32,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub server: ServerLimits,
    pub cache_dir: PathBuf,
    pub log_format: LogFormat,
    pub max_size: u64,
    pub tag_ttl: Duration,
    pub finish_abandoned: bool,
    pub tls: Option<TlsConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    raw: RawConfig,
}

/// Values that override the file: environment first, then flags on top.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub cache_dir: Option<String>,
    pub log_format: Option<String>,
}

impl Overrides {
    /// Read `BERTH_LISTEN`, `BERTH_CACHE_DIR`, `BERTH_LOG_FORMAT` through `env`,
    /// so tests can inject an environment.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            listen: env("BERTH_LISTEN"),
            cache_dir: env("BERTH_CACHE_DIR"),
            log_format: env("BERTH_LOG_FORMAT"),
        }
    }

    /// `other`'s values win where set.
    pub fn then(self, other: Overrides) -> Self {
        Self {
            listen: other.listen.or(self.listen),
            cache_dir: other.cache_dir.or(self.cache_dir),
            log_format: other.log_format.or(self.log_format),
        }
    }
}

impl Config {
    /// Load from `file`, or the embedded default when `None`, then apply overrides.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Config, ConfigError> {
        let (text, origin) = match file {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?,
                p.display().to_string(),
            ),
            None => (EMBEDDED_DEFAULT.to_string(), "(embedded default)".into()),
        };
        Self::from_toml(&text, &origin, overrides)
    }

    pub fn from_toml(text: &str, origin: &str, ov: Overrides) -> Result<Config, ConfigError> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        if let Some(v) = ov.listen {
            raw.listen = v;
        }
        if let Some(v) = ov.cache_dir {
            raw.cache_dir = v;
        }
        if let Some(v) = ov.log_format {
            raw.log_format = v;
        }
        validate(raw).map_err(|problems| ConfigError::Invalid {
            origin: origin.to_string(),
            problems,
        })
    }

    /// The effective configuration as TOML, with secrets redacted.
    pub fn to_toml_redacted(&self) -> String {
        toml::to_string_pretty(&self.raw).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    pub fn default_upstream(&self) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.default)
    }
}

fn validate(raw: RawConfig) -> Result<Config, Vec<String>> {
    let mut problems = Vec::new();
    let listen = raw
        .listen
        .parse::<SocketAddr>()
        .map_err(|_| problems.push(format!("listen: {:?} is not an address like 0.0.0.0:5000", raw.listen)))
        .ok();
    if raw.cache_dir.trim().is_empty() {
        problems.push("cache_dir: must not be empty".into());
    }
    let log_format = match raw.log_format.as_str() {
        "text" => Some(LogFormat::Text),
        "json" => Some(LogFormat::Json),
        other => {
            problems.push(format!("log_format: {other:?} must be \"text\" or \"json\""));
            None
        }
    };
    let max_size = parse_size(&raw.cache.max_size)
        .map_err(|e| problems.push(format!("cache.max_size: {e}")))
        .ok();
    let tag_ttl = parse_duration(&raw.cache.tag_ttl)
        .map_err(|e| problems.push(format!("cache.tag_ttl: {e}")))
        .ok();
    let server = validate_server(&raw.server, &mut problems);
    let tls = raw.tls.as_ref().map(|t| {
        for (key, path) in [("tls.cert", &t.cert), ("tls.key", &t.key)] {
            if let Err(e) = std::fs::File::open(path) {
                problems.push(format!("{key}: cannot read {}: {e}", path.display()));
            }
        }
        TlsConfig {
            cert: t.cert.clone(),
            key: t.key.clone(),
        }
    });
    if raw.upstream.is_empty() {
        problems.push("upstream: at least one [[upstream]] is required".into());
    }
    let upstreams: Vec<UpstreamConfig> = raw
        .upstream
        .iter()
        .enumerate()
        .filter_map(|(i, u)| validate_upstream(i, u, &mut problems))
        .map(|mut u| {
            u.offline |= raw.offline;
            u
        })
        .collect();
    if raw.upstream.iter().filter(|u| u.default).count() > 1 {
        problems.push("upstream.default: only one upstream may be the default".into());
    }
    for (i, u) in upstreams.iter().enumerate() {
        if upstreams[..i].iter().any(|o| o.name == u.name) {
            problems.push(format!("upstream[{i}].name: {:?} is configured twice", u.name));
        }
        if upstreams[..i].iter().any(|o| o.prefix == u.prefix) {
            problems.push(format!("upstream[{i}].prefix: {:?} is used twice", u.prefix));
        }
    }
    // The raw copy is kept only to print the effective config; secrets leave it here.
    let mut raw = raw;
    for u in &mut raw.upstream {
        if u.password.is_some() {
            u.password = Some("<redacted>".into());
        }
        for e in &mut u.endpoints {
            *e = crate::redact::userinfo(e);
        }
    }
    match (listen, log_format, max_size, tag_ttl) {
        (Some(listen), Some(log_format), Some(max_size), Some(tag_ttl)) if problems.is_empty() => Ok(Config {
            listen,
            server,
            cache_dir: PathBuf::from(&raw.cache_dir),
            log_format,
            max_size,
            tag_ttl,
            finish_abandoned: raw.cache.finish_abandoned,
            tls,
            upstreams,
            raw,
        }),
        _ => Err(problems),
    }
}

fn validate_server(s: &RawServer, problems: &mut Vec<String>) -> ServerLimits {
    let mut duration = |k: &str, v: &str| match parse_duration(v) {
        Ok(d) if d.is_zero() => {
            problems.push(format!("server.{k}: must be more than 0"));
            d
        }
        Ok(d) => d,
        Err(e) => {
            problems.push(format!("server.{k}: {e}"));
            Duration::ZERO
        }
    };
    let limits = ServerLimits {
        header_timeout: duration("header_timeout", &s.header_timeout),
        idle_timeout: duration("idle_timeout", &s.idle_timeout),
        handshake_timeout: duration("handshake_timeout", &s.handshake_timeout),
        write_timeout: duration("write_timeout", &s.write_timeout),
        max_connections: s.max_connections,
        max_connections_per_client: s.max_connections_per_client,
    };
    if s.max_connections == 0 {
        problems.push("server.max_connections: must be at least 1".into());
    }
    if s.max_connections_per_client == 0 {
        problems.push("server.max_connections_per_client: must be at least 1".into());
    }
    limits
}

fn validate_upstream(i: usize, u: &RawUpstream, problems: &mut Vec<String>) -> Option<UpstreamConfig> {
    let key = |k: &str| format!("upstream[{i}].{k}");
    let before = problems.len();
    if crate::reference::RepoName::parse(&u.name).is_err() || u.name.contains('/') {
        problems.push(format!(
            "{}: {:?} must be a registry host name like docker.io or ghcr.io",
            key("name"),
            u.name
        ));
    }
    let prefix = u.prefix.clone().unwrap_or_else(|| u.name.clone());
    if crate::reference::RepoName::parse(&prefix).is_err() || prefix.contains('/') {
        problems.push(format!(
            "{}: {prefix:?} must be a single lower-case path component",
            key("prefix")
        ));
    }
    if u.endpoints.is_empty() {
        problems.push(format!("{}: at least one endpoint URL is required", key("endpoints")));
    }
    let mut endpoints = Vec::new();
    for e in &u.endpoints {
        match Url::parse(e) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => endpoints.push(url),
            _ => problems.push(format!(
                "{}: {:?} is not an http(s) URL",
                key("endpoints"),
                crate::redact::userinfo(e)
            )),
        }
    }
    let convert = match u.convert.as_str() {
        "auto" => ConvertMode::Auto,
        "docker" => ConvertMode::Docker,
        "never" => ConvertMode::Never,
        other => {
            problems.push(format!("{}: {other:?} must be auto, docker or never", key("convert")));
            ConvertMode::Auto
        }
    };
    let mut duration = |k: &str, v: &str| {
        parse_duration(v)
            .map_err(|e| problems.push(format!("{}: {e}", key(k))))
            .unwrap_or_default()
    };
    let connect_timeout = duration("connect_timeout", &u.connect_timeout);
    let read_timeout = duration("read_timeout", &u.read_timeout);
    let retry = RetryConfig {
        attempts: u.attempts,
        base_delay: duration("retry_base_delay", &u.retry_base_delay),
        max_delay: duration("retry_max_delay", &u.retry_max_delay),
        deadline: duration("deadline", &u.deadline),
    };
    let breaker_cooldown = duration("breaker_cooldown", &u.breaker_cooldown);
    if u.attempts == 0 {
        problems.push(format!("{}: must be at least 1", key("attempts")));
    }
    if u.breaker_threshold == 0 {
        problems.push(format!("{}: must be at least 1", key("breaker_threshold")));
    }
    if u.max_concurrent_requests == 0 {
        problems.push(format!("{}: must be at least 1", key("max_concurrent_requests")));
    }
    let auth_hosts = match &u.auth_hosts {
        Some(list) => list
            .iter()
            .filter_map(|h| {
                let parsed = AuthHost::parse(h);
                if parsed.is_none() {
                    problems.push(format!(
                        "{}: {h:?} must be a host name or host:port, like auth.docker.io",
                        key("auth_hosts")
                    ));
                }
                parsed
            })
            .collect(),
        // Docker Hub's registry sends its clients to a token service on
        // another host; every other registry berth knows of serves tokens
        // from its own host (allowed as an endpoint host anyway).
        None if u.name == "docker.io" => vec![AuthHost {
            host: DOCKER_HUB_AUTH_HOST.into(),
            port: None,
        }],
        None => Vec::new(),
    };
    let password = match (&u.password, &u.password_file) {
        (Some(_), Some(_)) => {
            problems.push(format!("{}: set password or password_file, not both", key("password")));
            None
        }
        (Some(p), None) => Some(p.clone()),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(s) => Some(s.trim_end_matches(['\r', '\n']).to_string()),
            Err(e) => {
                problems.push(format!("{}: cannot read {}: {e}", key("password_file"), path.display()));
                None
            }
        },
        (None, None) => None,
    };
    let credentials = match (&u.username, password) {
        (Some(username), Some(password)) => Some(Credentials {
            username: username.clone(),
            password,
        }),
        (None, None) => None,
        (Some(_), None) if problems.len() == before => {
            problems.push(format!(
                "{}: username set without password or password_file",
                key("username")
            ));
            None
        }
        (None, Some(_)) => {
            problems.push(format!("{}: password set without username", key("username")));
            None
        }
        _ => None,
    };
    (problems.len() == before).then(|| UpstreamConfig {
        name: u.name.clone(),
        endpoints,
        default: u.default,
        prefix,
        credentials,
        convert,
        connect_timeout,
        read_timeout,
        retry,
        breaker_threshold: u.breaker_threshold,
        breaker_cooldown,
        offline: u.offline,
        auth_hosts,
        max_concurrent_requests: u.max_concurrent_requests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, "test", Overrides::default())
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::load(None, Overrides::default()).expect("embedded default");
        let up = c.default_upstream().expect("a default upstream");
        assert_eq!(up.name, "docker.io");
        assert_eq!(up.endpoints[0].as_str(), "https://registry-1.docker.io/");
        assert_eq!(c.cache_dir, PathBuf::from("berth-data"));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = load("listen = \"127.0.0.1:1\"\nlisten_port = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen_port"), "{e}");
    }

    #[test]
    fn every_bad_value_is_reported_by_key() {
        let text = r#"
            log_format = "xml"
            [cache]
            max_size = "lots"
            tag_ttl = "5 fortnights"
            [tls]
            cert = "/nonexistent/cert.pem"
            key = "/nonexistent/key.pem"
            [[upstream]]
            name = "docker.io"
            endpoints = ["ftp://x"]
            connect_timeout = "soon"
        "#;
        let e = load(text).unwrap_err().to_string();
        for key in [
            "log_format",
            "cache.max_size",
            "cache.tag_ttl",
            "tls.cert",
            "tls.key",
            "upstream[0].endpoints",
            "upstream[0].connect_timeout",
        ] {
            assert!(e.contains(key), "{key} missing from: {e}");
        }
    }

    #[test]
    fn no_upstream() {
        let e = load("listen = \"127.0.0.1:0\"\n").unwrap_err().to_string();
        assert!(e.contains("upstream"), "{e}");
    }

    #[test]
    fn overrides_apply_in_order() {
        let env = Overrides::from_env(|k| match k {
            "BERTH_LISTEN" => Some("127.0.0.1:7000".into()),
            "BERTH_CACHE_DIR" => Some("/env/dir".into()),
            _ => None,
        });
        let flags = Overrides {
            listen: Some("127.0.0.1:8000".into()),
            ..Default::default()
        };
        let c = Config::from_toml(EMBEDDED_DEFAULT, "t", env.then(flags)).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(c.cache_dir, PathBuf::from("/env/dir"));
    }

    #[test]
    fn auth_hosts_default_and_explicit() {
        let c = load("[[upstream]]\nname = \"docker.io\"\nendpoints = [\"https://registry-1.docker.io\"]\n").unwrap();
        let up = &c.upstreams[0];
        assert_eq!(up.auth_hosts, vec![AuthHost::parse("auth.docker.io").unwrap()]);
        assert_eq!(up.max_concurrent_requests, DEFAULT_MAX_CONCURRENT_REQUESTS);
        let c = load(
            "[[upstream]]\nname = \"ghcr.io\"\nendpoints = [\"https://ghcr.io\"]\nauth_hosts = [\"Auth.Example.com:8443\"]\nmax_concurrent_requests = 3\n",
        )
        .unwrap();
        let up = &c.upstreams[0];
        assert_eq!(
            up.auth_hosts,
            vec![AuthHost {
                host: "auth.example.com".into(),
                port: Some(8443)
            }]
        );
        assert_eq!(up.max_concurrent_requests, 3);
        let e = load(
            "[[upstream]]\nname = \"ghcr.io\"\nendpoints = [\"https://ghcr.io\"]\nauth_hosts = [\"https://x/token\"]\nmax_concurrent_requests = 0\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("upstream[0].auth_hosts"), "{e}");
        assert!(e.contains("upstream[0].max_concurrent_requests"), "{e}");
    }

    #[test]
    fn password_is_redacted() {
        let text = r#"
            [[upstream]]
            name = "docker.io"
            endpoints = ["https://registry-1.docker.io"]
            username = "me"
            password = "hunter2"
        "#;
        let c = load(text).unwrap();
        assert!(!c.to_toml_redacted().contains("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
