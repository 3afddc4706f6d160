//! Validation: from the raw file shape to the typed config, collecting every
//! problem at once, each named by its dotted key (`upstream[1].endpoints`).
//! It reads no file and touches nothing outside its argument: the files a
//! config names (TLS keys, password files, htpasswd) come back as `NamedFiles`, for
//! `load` to open, so validation is a pure function of the text.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::PrefetchSchedule;
use super::raw::{RawAccess, RawAuth, RawConfig, RawServer, RawUpstream};
use super::{
    AccessRule, AuthConfig, AuthHost, Config, ConvertMode, Credentials, LogFormat, RetryConfig, ServerLimits,
    TlsConfig, UpstreamConfig,
};
use crate::auth::{IdentityPattern, Network, RepoPattern};
use crate::units::{parse_duration, parse_size};

/// The host Docker Hub's token service lives on (`WWW-Authenticate` realm).
const DOCKER_HUB_AUTH_HOST: &str = "auth.docker.io";

/// What validation hands to `load`.
pub(super) struct Validated {
    /// `Err` holds every problem the text has. An `Ok` config still lacks the
    /// credentials whose password is in one of `files.passwords`.
    pub config: Result<Config, Vec<String>>,
    /// Named whether or not the text is valid, so one run reports bad values
    /// and unreadable files together.
    pub files: NamedFiles,
}

/// The files a config names, each with the key that names it.
#[derive(Debug, Default)]
pub(super) struct NamedFiles {
    /// `tls.cert` and `tls.key`: only checked here, the server reads them.
    pub tls: Vec<(&'static str, PathBuf)>,
    pub passwords: Vec<PasswordFile>,
    /// `auth.htpasswd`: read and parsed by `load`, every bad line reported.
    pub htpasswd: Option<PathBuf>,
    /// `storage.secret_access_key_file` and `cluster.secret_file`, whose
    /// contents (without a line ending) fill in the secret they name.
    pub secrets: Vec<(SecretKey, PathBuf)>,
}

/// A secret a config may keep in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SecretKey {
    S3SecretAccessKey,
    ClusterSecret,
}

impl SecretKey {
    pub fn key(self) -> &'static str {
        match self {
            SecretKey::S3SecretAccessKey => "storage.secret_access_key_file",
            SecretKey::ClusterSecret => "cluster.secret_file",
        }
    }
}

/// An upstream's `password_file`, whose contents become its password.
#[derive(Debug)]
pub(super) struct PasswordFile {
    /// `upstream[i].password_file`.
    pub key: String,
    pub path: PathBuf,
    /// `i`: the upstream's place in `[[upstream]]`, and in
    /// `Config::upstreams` when the config is valid.
    pub upstream: usize,
    /// `None` is already a problem; the file is read anyway, to report it.
    pub username: Option<String>,
}

/// Where an upstream's password comes from.
enum Password {
    Inline(String),
    /// Read by `load`, which then fills in the credentials.
    InFile,
}

pub(super) fn validate(raw: RawConfig) -> Validated {
    let mut problems = Vec::new();
    let mut files = NamedFiles::default();
    let admin_listen = match raw.admin_listen.trim() {
        "" => Some(None),
        text => text
            .parse()
            .map(Some)
            .map_err(|_| {
                problems.push(format!(
                    "admin_listen: {:?} is not an address like 127.0.0.1:5001 (or \"\" for the admin surface on listen)",
                    raw.admin_listen
                ))
            })
            .ok(),
    };
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
    let keep_recent = parse_duration(&raw.cache.keep_recent)
        .map_err(|e| problems.push(format!("cache.keep_recent: {e}")))
        .unwrap_or_default();
    let server = validate_server(&raw.server, &mut problems);
    let tls = raw.tls.as_ref().map(|t| {
        files.tls = vec![("tls.cert", t.cert.clone()), ("tls.key", t.key.clone())];
        if let Some(ca) = &t.client_ca {
            files.tls.push(("tls.client_ca", ca.clone()));
        }
        TlsConfig {
            cert: t.cert.clone(),
            key: t.key.clone(),
            client_ca: t.client_ca.clone(),
        }
    });
    if raw.upstream.is_empty() {
        problems.push("upstream: at least one [[upstream]] is required".into());
    }
    let upstreams: Vec<UpstreamConfig> = raw
        .upstream
        .iter()
        .enumerate()
        .filter_map(|(i, u)| validate_upstream(i, u, &mut problems, &mut files.passwords))
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
    let auth = raw.auth.as_ref().map(|a| {
        files.htpasswd = a.htpasswd.clone();
        validate_auth(a, &mut problems)
    });
    if let Some(a) = &raw.auth {
        let client_ca = raw.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if a.htpasswd.is_none() && !client_ca && !a.anonymous {
            problems.push(
                "auth: no client can be identified, so every pull would be refused: set auth.htpasswd, \
                 tls.client_ca, or auth.anonymous = true"
                    .into(),
            );
        }
    }
    let access = validate_access(&raw, &mut problems);
    let prefetch = validate_prefetch(&raw, &upstreams, &mut problems);
    let s3 = validate_storage(&raw, &mut problems, &mut files.secrets);
    let cluster = validate_cluster(&raw, &mut problems, &mut files.secrets);
    // The raw copy is kept only to print the effective config; secrets leave it here.
    let raw = raw.redacted();
    let config = match (listen, admin_listen, log_format, max_size, tag_ttl) {
        (Some(listen), Some(admin_listen), Some(log_format), Some(max_size), Some(tag_ttl)) if problems.is_empty() => {
            Ok(Config {
                listen,
                admin_listen,
                server,
                cache_dir: PathBuf::from(&raw.cache_dir),
                log_format,
                max_size,
                tag_ttl,
                keep_recent,
                finish_abandoned: raw.cache.finish_abandoned,
                tls,
                auth,
                access,
                upstreams,
                prefetch,
                s3,
                cluster,
                raw,
            })
        }
        _ => Err(problems),
    };
    Validated { config, files }
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
    let rate = s.client_requests_per_second;
    let limits = ServerLimits {
        header_timeout: duration("header_timeout", &s.header_timeout),
        idle_timeout: duration("idle_timeout", &s.idle_timeout),
        handshake_timeout: duration("handshake_timeout", &s.handshake_timeout),
        write_timeout: duration("write_timeout", &s.write_timeout),
        shutdown_grace: duration("shutdown_grace", &s.shutdown_grace),
        max_connections: s.max_connections,
        max_connections_per_client: s.max_connections_per_client,
        client_requests_per_second: rate,
        client_burst: match s.client_burst {
            0 => rate.saturating_mul(2),
            burst => burst,
        },
    };
    if rate == 0 && s.client_burst > 0 {
        problems.push("server.client_burst: set without server.client_requests_per_second".into());
    }
    if s.max_connections == 0 {
        problems.push("server.max_connections: must be at least 1".into());
    }
    if s.max_connections_per_client == 0 {
        problems.push("server.max_connections_per_client: must be at least 1".into());
    }
    limits
}

fn validate_auth(a: &RawAuth, problems: &mut Vec<String>) -> AuthConfig {
    if a.htpasswd.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
        problems.push("auth.htpasswd: must not be empty (leave it out for no users)".into());
    }
    let allow_networks = a
        .allow_networks
        .iter()
        .filter_map(|n| {
            Network::parse(n)
                .map_err(|e| problems.push(format!("auth.allow_networks: {e}")))
                .ok()
        })
        .collect();
    let admins = identities("auth.admins", &a.admins, problems);
    AuthConfig {
        htpasswd: a.htpasswd.clone().filter(|p| !p.as_os_str().is_empty()),
        allow_networks,
        anonymous: a.anonymous,
        admins,
    }
}

fn identities(key: &str, list: &[String], problems: &mut Vec<String>) -> Vec<IdentityPattern> {
    list.iter()
        .filter_map(|i| {
            IdentityPattern::parse(i)
                .map_err(|e| problems.push(format!("{key}: {e}")))
                .ok()
        })
        .collect()
}

fn validate_access(raw: &RawConfig, problems: &mut Vec<String>) -> Vec<AccessRule> {
    if raw.auth.is_none() && !raw.access.is_empty() {
        problems.push("access: [[access]] rules need an [auth] table (without it every pull is anonymous)".into());
    }
    raw.access
        .iter()
        .enumerate()
        .map(|(i, r)| validate_rule(i, r, &raw.upstream, problems))
        .collect()
}

fn validate_rule(i: usize, r: &RawAccess, upstreams: &[RawUpstream], problems: &mut Vec<String>) -> AccessRule {
    let key = |k: &str| format!("access[{i}].{k}");
    if r.identities.is_empty() {
        problems.push(format!("{}: at least one identity is required", key("identities")));
    }
    let identities = identities(&key("identities"), &r.identities, problems);
    if let Some(names) = &r.upstreams {
        if names.is_empty() {
            problems.push(format!("{}: empty; leave it out for every upstream", key("upstreams")));
        }
        for n in names.iter().filter(|n| !upstreams.iter().any(|u| &u.name == *n)) {
            problems.push(format!(
                "{}: {n:?} is not a configured [[upstream]] name",
                key("upstreams")
            ));
        }
    }
    let repositories = r.repositories.as_ref().map(|pats| {
        if pats.is_empty() {
            problems.push(format!(
                "{}: empty; leave it out for every repository",
                key("repositories")
            ));
        }
        pats.iter()
            .filter_map(|p| {
                RepoPattern::parse(p)
                    .map_err(|e| problems.push(format!("{}: {e}", key("repositories"))))
                    .ok()
            })
            .collect()
    });
    AccessRule {
        identities,
        upstreams: r.upstreams.clone(),
        repositories,
    }
}

fn validate_upstream(
    i: usize,
    u: &RawUpstream,
    problems: &mut Vec<String>,
    password_files: &mut Vec<PasswordFile>,
) -> Option<UpstreamConfig> {
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
        (Some(p), None) => Some(Password::Inline(p.clone())),
        (None, Some(path)) => {
            password_files.push(PasswordFile {
                key: key("password_file"),
                path: path.clone(),
                upstream: i,
                username: u.username.clone(),
            });
            Some(Password::InFile)
        }
        (None, None) => None,
    };
    let credentials = match (&u.username, password) {
        (Some(username), Some(Password::Inline(password))) => Some(Credentials {
            username: username.clone(),
            password,
        }),
        (Some(_), Some(Password::InFile)) => None,
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

/// `[[prefetch]]`: every image must name a configured upstream, `every` a
/// duration of at least a minute, each platform `os/arch[/variant]`.
fn validate_prefetch(
    raw: &RawConfig,
    upstreams: &[UpstreamConfig],
    problems: &mut Vec<String>,
) -> Vec<PrefetchSchedule> {
    let mut schedules = Vec::new();
    for (i, p) in raw.prefetch.iter().enumerate() {
        if p.images.is_empty() {
            problems.push(format!("prefetch[{i}].images: name at least one image"));
        }
        for (j, image) in p.images.iter().enumerate() {
            if let Err(e) = crate::image_ref::ImageRef::parse(image, upstreams) {
                problems.push(format!("prefetch[{i}].images[{j}]: {e}"));
            }
        }
        let every = match parse_duration(&p.every) {
            Ok(d) if d >= std::time::Duration::from_secs(60) => Some(d),
            Ok(_) => {
                problems.push(format!("prefetch[{i}].every: {:?} is under a minute", p.every));
                None
            }
            Err(e) => {
                problems.push(format!("prefetch[{i}].every: {e}"));
                None
            }
        };
        for (j, platform) in p.platforms.iter().enumerate() {
            if let Err(e) = crate::image_ref::Platform::parse(platform) {
                problems.push(format!("prefetch[{i}].platforms[{j}]: {e}"));
            }
        }
        if let Some(every) = every {
            schedules.push(PrefetchSchedule {
                images: p.images.clone(),
                every,
                platforms: p.platforms.clone(),
            });
        }
    }
    schedules
}

/// `[storage]`: "filesystem" (the cache directory; "fs" is taken too) or "s3" with its endpoint,
/// bucket and key, each named when missing.
fn validate_storage(
    raw: &RawConfig,
    problems: &mut Vec<String>,
    secrets: &mut Vec<(SecretKey, PathBuf)>,
) -> Option<super::S3Storage> {
    let storage = raw.storage.as_ref()?;
    let local_cache = match storage.local_cache.as_deref().map(parse_size) {
        None => 0,
        Some(Ok(bytes)) => bytes,
        Some(Err(e)) => {
            problems.push(format!("storage.local_cache: {e}"));
            0
        }
    };
    match storage.kind.as_str() {
        "filesystem" | "fs" => {
            if local_cache > 0 {
                problems.push(
                    "storage.local_cache: only with kind = \"s3\" (the filesystem store is local already)".into(),
                );
            }
            None
        }
        "s3" => {
            let mut missing = |key: &str, value: &str| {
                if value.trim().is_empty() {
                    problems.push(format!("storage.{key}: required with kind = \"s3\""));
                }
            };
            missing("endpoint", &storage.endpoint);
            missing("bucket", &storage.bucket);
            missing("access_key_id", &storage.access_key_id);
            match (&storage.secret_access_key_file, storage.secret_access_key.is_empty()) {
                (Some(path), true) => secrets.push((SecretKey::S3SecretAccessKey, path.clone())),
                (Some(_), false) => problems.push(
                    "storage.secret_access_key: give either it or storage.secret_access_key_file, not both".into(),
                ),
                (None, true) => problems.push(
                    "storage.secret_access_key_file: required with kind = \"s3\" (or storage.secret_access_key inline)"
                        .into(),
                ),
                (None, false) => {}
            }
            match Url::parse(&storage.endpoint) {
                Ok(u)
                    if matches!(u.scheme(), "http" | "https") && u.username().is_empty() && u.password().is_none() => {}
                _ if storage.endpoint.trim().is_empty() => {}
                _ => problems.push(format!(
                    "storage.endpoint: {:?} is not an http(s) URL without credentials",
                    crate::redact::userinfo(&storage.endpoint)
                )),
            }
            Some(super::S3Storage {
                endpoint: storage.endpoint.clone(),
                bucket: storage.bucket.clone(),
                region: storage.region.clone(),
                access_key_id: storage.access_key_id.clone(),
                secret_access_key: storage.secret_access_key.clone(),
                local_cache,
            })
        }
        other => {
            problems.push(format!("storage.kind: {other:?} must be \"filesystem\" or \"s3\""));
            None
        }
    }
}

/// `peers_dns`: `name:port`, the name without a scheme or credentials; the
/// error completes a sentence that starts with the value.
fn parse_peers_dns(name: &str) -> Result<(String, u16), &'static str> {
    let Some((host, port)) = name
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty() && !host.contains(['/', '@', ' ']))
    else {
        return Err(" is not name:port (e.g. \"berth-peers.default.svc.cluster.local:5000\")");
    };
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok((host.trim_matches(['[', ']']).to_string(), port)),
        _ => Err(": the port must be 1 to 65535"),
    }
}

/// `[cluster]`: http(s) URLs of the replicas' registry listeners, `self`
/// among them.
fn validate_cluster(
    raw: &RawConfig,
    problems: &mut Vec<String>,
    secrets: &mut Vec<(SecretKey, PathBuf)>,
) -> Option<super::ClusterConfig> {
    let cluster = raw.cluster.as_ref()?;
    let parse = |key: String, text: &str, problems: &mut Vec<String>| match Url::parse(text) {
        Ok(u)
            if matches!(u.scheme(), "http" | "https")
                && u.host_str().is_some()
                && u.path() == "/"
                && u.username().is_empty() =>
        {
            Some(u)
        }
        _ => {
            problems.push(format!(
                "{key}: {:?} is not a replica's base URL (http://host:port)",
                crate::redact::userinfo(text)
            ));
            None
        }
    };
    let self_url = match cluster.self_url.is_empty() {
        true => {
            problems.push(
                "cluster.self: missing: this replica's URL as the others reach it (or set BERTH_CLUSTER_SELF)".into(),
            );
            None
        }
        false => parse("cluster.self".into(), &cluster.self_url, problems),
    };
    let peers: Vec<Url> = cluster
        .peers
        .iter()
        .enumerate()
        .filter_map(|(i, p)| parse(format!("cluster.peers[{i}]"), p, problems))
        .collect();
    let peers_dns = match &cluster.peers_dns {
        None => {
            if let Some(me) = &self_url
                && !peers.contains(me)
            {
                problems.push("cluster.self: must be one of cluster.peers (every replica lists them all)".into());
            }
            None
        }
        Some(_) if !cluster.peers.is_empty() => {
            problems.push("cluster.peers_dns: give either it or cluster.peers, not both".into());
            None
        }
        Some(name) => match parse_peers_dns(name) {
            Ok(found) => Some(found),
            Err(problem) => {
                problems.push(format!("cluster.peers_dns: {name:?}{problem}"));
                None
            }
        },
    };
    match &cluster.secret_file {
        Some(path) => secrets.push((SecretKey::ClusterSecret, path.clone())),
        None if raw.auth.is_some() => problems.push(
            "cluster.secret_file: required with [auth] (replicas authenticate to each other with its contents)".into(),
        ),
        None => {}
    }
    let eviction_check = match parse_duration(&cluster.eviction_check) {
        Ok(d) if !d.is_zero() => Some(d),
        Ok(_) => {
            problems.push("cluster.eviction_check: must be more than 0s".into());
            None
        }
        Err(e) => {
            problems.push(format!("cluster.eviction_check: {e}"));
            None
        }
    };
    Some(super::ClusterConfig {
        self_url: self_url?,
        peers,
        peers_dns,
        secret: None,
        eviction_check: eviction_check?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::raw::DEFAULT_MAX_CONCURRENT_REQUESTS;
    use super::*;

    /// Parse and validate `text` as `Config::from_toml` does, without its overrides.
    fn validated(text: &str) -> Result<Config, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        validate(raw).config.map_err(|problems| problems.join("\n"))
    }

    #[test]
    fn peers_dns_is_name_and_port_instead_of_a_list() {
        let up = "[[upstream]]\nname = \"docker.io\"\nendpoints = [\"https://r\"]\n";
        let with = |cluster: &str| validated(&format!("{up}[cluster]\nself = \"http://10.0.0.1:5000\"\n{cluster}"));
        let c = with("peers_dns = \"berth-peers.ns.svc.cluster.local:5000\"").unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(
            cluster.peers_dns,
            Some(("berth-peers.ns.svc.cluster.local".into(), 5000))
        );
        assert!(cluster.peers.is_empty());
        for (bad, expected) in [
            ("peers_dns = \"berth-peers\"", "is not name:port"),
            ("peers_dns = \"berth-peers:0\"", "the port must be 1 to 65535"),
            ("peers_dns = \"berth-peers:http\"", "the port must be 1 to 65535"),
            ("peers_dns = \"http://berth-peers:5000\"", "is not name:port"),
            ("peers_dns = \"b:5000\"\npeers = [\"http://10.0.0.1:5000\"]", "not both"),
            ("", "cluster.self: must be one of cluster.peers"),
        ] {
            let e = with(bad).unwrap_err();
            assert!(e.contains("cluster.") && e.contains(expected), "{bad}: {e}");
        }
    }

    #[test]
    fn no_upstream() {
        let e = validated("listen = \"127.0.0.1:0\"\n").unwrap_err().to_string();
        assert!(e.contains("upstream"), "{e}");
    }

    #[test]
    fn auth_hosts_default_and_explicit() {
        let c =
            validated("[[upstream]]\nname = \"docker.io\"\nendpoints = [\"https://registry-1.docker.io\"]\n").unwrap();
        let up = &c.upstreams[0];
        assert_eq!(up.auth_hosts, vec![AuthHost::parse("auth.docker.io").unwrap()]);
        assert_eq!(up.max_concurrent_requests, DEFAULT_MAX_CONCURRENT_REQUESTS);
        let c = validated(
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
        let e = validated(
            "[[upstream]]\nname = \"ghcr.io\"\nendpoints = [\"https://ghcr.io\"]\nauth_hosts = [\"https://x/token\"]\nmax_concurrent_requests = 0\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("upstream[0].auth_hosts"), "{e}");
        assert!(e.contains("upstream[0].max_concurrent_requests"), "{e}");
    }

    #[test]
    fn named_files_are_left_to_load() {
        let raw: RawConfig = toml::from_str(
            r#"
            [tls]
            cert = "/nonexistent/cert.pem"
            key = "/nonexistent/key.pem"
            [[upstream]]
            name = "docker.io"
            endpoints = ["https://registry-1.docker.io"]
            username = "me"
            password_file = "/nonexistent/password"
        "#,
        )
        .unwrap();
        let Validated { config, files } = validate(raw);
        let config = config.expect("missing files are not validation's business");
        assert!(config.upstreams[0].credentials.is_none());
        assert_eq!(
            files.tls,
            [
                ("tls.cert", PathBuf::from("/nonexistent/cert.pem")),
                ("tls.key", PathBuf::from("/nonexistent/key.pem"))
            ]
        );
        let [p] = &files.passwords[..] else {
            panic!("one password file: {:?}", files.passwords)
        };
        assert_eq!(
            (p.key.as_str(), p.path.as_path(), p.upstream, p.username.as_deref()),
            (
                "upstream[0].password_file",
                std::path::Path::new("/nonexistent/password"),
                0,
                Some("me")
            )
        );
    }

    #[test]
    fn files_of_an_invalid_config_are_still_named() {
        let raw: RawConfig = toml::from_str(
            "log_format = \"xml\"\n[tls]\ncert = \"c\"\nkey = \"k\"\n[[upstream]]\nname = \"docker.io\"\nendpoints = [\"https://r\"]\npassword_file = \"p\"\n",
        )
        .unwrap();
        let Validated { config, files } = validate(raw);
        let problems = config.unwrap_err();
        assert!(problems.iter().any(|p| p.starts_with("log_format")), "{problems:?}");
        assert!(
            problems.contains(&"upstream[0].username: password set without username".to_string()),
            "{problems:?}"
        );
        assert_eq!((files.tls.len(), files.passwords.len()), (2, 1));
    }
    const UPSTREAMS: &str = "[[upstream]]\nname = \"docker.io\"\nendpoints = [\"https://r\"]\n[[upstream]]\nname = \"ghcr.io\"\nendpoints = [\"https://ghcr.io\"]\n";

    #[test]
    fn auth_and_access_are_off_by_default() {
        let c = validated(UPSTREAMS).unwrap();
        assert!(c.auth.is_none() && c.access.is_empty());
        assert_eq!((c.server.client_requests_per_second, c.server.client_burst), (0, 0));
    }

    #[test]
    fn auth_and_access_validated() {
        let raw: RawConfig = toml::from_str(&format!(
            r#"
            [auth]
            htpasswd = "/etc/berth/htpasswd"
            allow_networks = ["10.0.0.0/8", "fd00::/8", "192.0.2.7"]
            anonymous = true
            admins = ["cn:ops-*", "root"]
            [[access]]
            identities = ["alice", "cn:node-*"]
            upstreams = ["docker.io"]
            repositories = ["library/*", "team/**"]
            [[access]]
            identities = ["anonymous"]
            {UPSTREAMS}
        "#
        ))
        .unwrap();
        let Validated { config, files } = validate(raw);
        let c = config.unwrap();
        assert_eq!(files.htpasswd, Some(PathBuf::from("/etc/berth/htpasswd")));
        let auth = c.auth.unwrap();
        assert!(auth.anonymous);
        assert_eq!(auth.allow_networks.len(), 3);
        assert_eq!(auth.admins[0].to_string(), "cn:ops-*");
        assert_eq!(c.access.len(), 2);
        assert_eq!(c.access[0].upstreams.as_deref(), Some(&["docker.io".to_string()][..]));
        assert_eq!(c.access[0].repositories.as_ref().map(Vec::len), Some(2));
        assert!(c.access[1].upstreams.is_none() && c.access[1].repositories.is_none());
        let anon = crate::auth::Identity::Anonymous;
        assert!(c.access[1].matches(&anon, "ghcr.io", "any/thing"));
    }

    #[test]
    fn every_bad_auth_key_is_named() {
        let e = validated(&format!(
            r#"
            [auth]
            htpasswd = ""
            allow_networks = ["10.0.0.0/33", "fd00::/8", "not-a-net"]
            admins = ["cn:", "a:b"]
            [[access]]
            identities = []
            upstreams = ["quay.io"]
            repositories = ["team/***", "/x"]
            [[access]]
            identities = ["ok", "x y"]
            upstreams = []
            repositories = []
            {UPSTREAMS}
        "#
        ))
        .unwrap_err();
        for want in [
            "auth.htpasswd: must not be empty",
            "auth.allow_networks: \"10.0.0.0/33\"",
            "auth.allow_networks: \"not-a-net\"",
            "auth.admins: \"cn:\"",
            "auth.admins: \"a:b\"",
            "access[0].identities: at least one identity",
            "access[0].upstreams: \"quay.io\" is not a configured [[upstream]] name",
            "access[0].repositories: \"team/***\"",
            "access[0].repositories: \"/x\"",
            "access[1].identities: \"x y\"",
            "access[1].upstreams: empty",
            "access[1].repositories: empty",
        ] {
            assert!(e.contains(want), "{want} missing from:\n{e}");
        }
        assert!(
            !e.contains("\"fd00::/8\"") && !e.contains("\"ok\""),
            "good values are not reported: {e}"
        );
    }

    #[test]
    fn access_without_auth_is_refused() {
        let e = validated(&format!("[[access]]\nidentities = [\"alice\"]\n{UPSTREAMS}")).unwrap_err();
        assert!(e.contains("access: [[access]] rules need an [auth] table"), "{e}");
        let e = validated(&format!("[auth]\nallow_networks = [\"10.0.0.0/8\"]\n{UPSTREAMS}")).unwrap_err();
        assert!(e.contains("auth: no client can be identified"), "{e}");
        for admits in [
            "[auth]\nanonymous = true\n",
            "[auth]\nhtpasswd = \"/dev/null\"\n",
            "[tls]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"\n[auth]\n",
        ] {
            let e = validated(&format!("{admits}{UPSTREAMS}")).err().unwrap_or_default();
            assert!(!e.contains("no client can be identified"), "{admits}: {e}");
        }
        let e = validated(&format!("[[access]]\nrepositories = [\"x\"]\n[auth]\n{UPSTREAMS}")).unwrap_err();
        assert!(
            e.contains("identities"),
            "a rule without identities does not parse: {e}"
        );
    }

    #[test]
    fn client_rate_and_burst() {
        let rate = |server: &str| validated(&format!("[server]\n{server}\n{UPSTREAMS}")).map(|c| c.server);
        let s = rate("client_requests_per_second = 50").unwrap();
        assert_eq!(
            (s.client_requests_per_second, s.client_burst),
            (50, 100),
            "burst defaults to twice the rate"
        );
        let s = rate("client_requests_per_second = 50\nclient_burst = 10").unwrap();
        assert_eq!((s.client_requests_per_second, s.client_burst), (50, 10));
        let s = rate(&format!("client_requests_per_second = {}", u32::MAX)).unwrap();
        assert_eq!(s.client_burst, u32::MAX);
        let e = rate("client_burst = 10").unwrap_err();
        assert!(
            e.contains("server.client_burst: set without server.client_requests_per_second"),
            "{e}"
        );
        assert!(rate("client_requests_per_second = -1").is_err());
    }
}
