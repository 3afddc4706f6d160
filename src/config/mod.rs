//! Configuration: the file (or the embedded default), `BERTH_*` environment
//! overrides, then command-line flags; validated in one pass that reports every
//! bad key at once, by its dotted name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use url::Url;

use crate::units::{parse_duration, parse_size};

mod raw;

#[cfg(test)]
use raw::DEFAULT_MAX_CONCURRENT_REQUESTS;
use raw::{RawConfig, RawServer, RawUpstream};

/// The configuration compiled into the binary; `berth serve` with no flags runs it.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/berth.toml");

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
    let raw = raw.redacted();
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
