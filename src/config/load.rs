//! Loading: the config file's text (or the embedded default), `BERTH_*`
//! environment overrides and flags on top, validation, then the files the
//! config names (TLS keys checked, password files read, the htpasswd file
//! checked line by line); and printing the
//! effective config back, secrets redacted. All the config's I/O is here.

use std::path::Path;

use super::raw::RawConfig;
use super::validate::{NamedFiles, SecretKey, Validated, validate};
use super::{Config, ConfigError, Credentials};

/// The configuration compiled into the binary; `berth serve` with no flags runs it.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/berth.toml");

/// Values that override the file: environment first, then flags on top.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub cache_dir: Option<String>,
    pub log_format: Option<String>,
    /// `[cluster] self`: a replica's own address is known only where it
    /// runs (a pod's IP), so one config serves every replica.
    pub cluster_self: Option<String>,
}

impl Overrides {
    /// Read `BERTH_LISTEN`, `BERTH_ADMIN_LISTEN`, `BERTH_CACHE_DIR`,
    /// `BERTH_LOG_FORMAT`, `BERTH_CLUSTER_SELF` through `env`, so tests can
    /// inject an environment.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            listen: env("BERTH_LISTEN"),
            admin_listen: env("BERTH_ADMIN_LISTEN"),
            cache_dir: env("BERTH_CACHE_DIR"),
            log_format: env("BERTH_LOG_FORMAT"),
            cluster_self: env("BERTH_CLUSTER_SELF"),
        }
    }

    /// `other`'s values win where set.
    pub fn then(self, other: Overrides) -> Self {
        Self {
            listen: other.listen.or(self.listen),
            admin_listen: other.admin_listen.or(self.admin_listen),
            cache_dir: other.cache_dir.or(self.cache_dir),
            log_format: other.log_format.or(self.log_format),
            cluster_self: other.cluster_self.or(self.cluster_self),
        }
    }
}

/// Where a running berth's config came from: the file (or the embedded
/// default) and the overrides of its start, so SIGHUP reads it again the
/// same way (the environment as it was at start, not as it is now).
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    pub file: Option<std::path::PathBuf>,
    pub overrides: Overrides,
}

impl ConfigSource {
    /// Load and validate again, every problem at once.
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(self.file.as_deref(), self.overrides.clone())
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
        if let Some(v) = ov.admin_listen {
            raw.admin_listen = v;
        }
        if let Some(v) = ov.listen {
            raw.listen = v;
        }
        if let Some(v) = ov.cache_dir {
            raw.cache_dir = v;
        }
        if let Some(v) = ov.log_format {
            raw.log_format = v;
        }
        if let Some(v) = ov.cluster_self {
            match &mut raw.cluster {
                Some(cluster) => cluster.self_url = v,
                None => {
                    return Err(ConfigError::Invalid {
                        origin: origin.to_string(),
                        problems: vec!["BERTH_CLUSTER_SELF: set, but the config has no [cluster]".into()],
                    });
                }
            }
        }
        let Validated { config, files } = validate(raw);
        let mut problems = Vec::new();
        let secrets = read_secret_files(&files.secrets, &mut problems);
        let read = read_named_files(files, &mut problems);
        let invalid = |problems| ConfigError::Invalid {
            origin: origin.to_string(),
            problems,
        };
        match config {
            Err(mut shape) => {
                shape.append(&mut problems);
                Err(invalid(shape))
            }
            Ok(_) if !problems.is_empty() => Err(invalid(problems)),
            Ok(mut config) => {
                for (upstream, credentials) in read {
                    config.upstreams[upstream].credentials = Some(credentials);
                }
                for (key, secret) in secrets {
                    match key {
                        SecretKey::S3SecretAccessKey => {
                            if let Some(s3) = &mut config.s3 {
                                s3.secret_access_key = secret;
                            }
                        }
                        SecretKey::ClusterSecret => {
                            if let Some(cluster) = &mut config.cluster {
                                cluster.secret = Some(secret);
                            }
                        }
                    }
                }
                Ok(config)
            }
        }
    }

    /// The effective configuration as TOML, with secrets redacted.
    pub fn to_toml_redacted(&self) -> String {
        toml::to_string_pretty(&self.raw).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// The shortest cluster secret taken: replicas trust whoever presents it.
const MIN_CLUSTER_SECRET: usize = 16;

/// Reads each secret file (its contents without a line ending), each
/// failure a problem under the key naming the file; never the contents.
fn read_secret_files(
    files: &[(SecretKey, std::path::PathBuf)],
    problems: &mut Vec<String>,
) -> Vec<(SecretKey, String)> {
    let mut read = Vec::new();
    for (key, path) in files {
        match std::fs::read_to_string(path) {
            Ok(s) => {
                let secret = s.trim_end_matches(['\r', '\n']).to_string();
                if secret.is_empty() {
                    problems.push(format!("{}: {} is empty", key.key(), path.display()));
                } else if *key == SecretKey::ClusterSecret && secret.len() < MIN_CLUSTER_SECRET {
                    problems.push(format!(
                        "{}: {} holds {} characters; at least {MIN_CLUSTER_SECRET} expected (e.g. `openssl rand -hex 32`)",
                        key.key(),
                        path.display(),
                        secret.len()
                    ));
                } else {
                    read.push((*key, secret));
                }
            }
            Err(e) => problems.push(format!("{}: cannot read {}: {e}", key.key(), path.display())),
        }
    }
    read
}

/// Opens the TLS files, reads the password files and checks the htpasswd
/// file (every bad line, never a hash), each failure a problem
/// under the key naming the file. Returns the credentials read, by upstream.
fn read_named_files(files: NamedFiles, problems: &mut Vec<String>) -> Vec<(usize, Credentials)> {
    let cannot_read = |key: &str, path: &Path, e: std::io::Error| format!("{key}: cannot read {}: {e}", path.display());
    for (key, path) in &files.tls {
        if let Err(e) = std::fs::File::open(path) {
            problems.push(cannot_read(key, path, e));
        }
    }
    let mut read = Vec::new();
    if let Some(path) = &files.htpasswd
        && let Err(lines) = crate::auth::htpasswd::read(path)
    {
        problems.extend(lines.into_iter().map(|l| format!("auth.htpasswd: {l}")));
    }
    for file in files.passwords {
        match std::fs::read_to_string(&file.path) {
            Ok(s) => read.extend(file.username.map(|username| {
                let password = s.trim_end_matches(['\r', '\n']).to_string();
                (file.upstream, Credentials { username, password })
            })),
            Err(e) => problems.push(cannot_read(&file.key, &file.path, e)),
        }
    }
    read
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

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

    /// One upstream with credentials whose password is in `path`.
    fn with_password_file(path: &Path) -> String {
        format!(
            "[[upstream]]\nname = \"docker.io\"\nendpoints = [\"https://r\"]\nusername = \"me\"\npassword_file = {:?}\n",
            path.display().to_string()
        )
    }

    #[test]
    fn a_missing_password_file_is_reported_by_load() {
        let e = load(&with_password_file(Path::new("/nonexistent/password")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("upstream[0].password_file: cannot read /nonexistent/password: "),
            "{e}"
        );
    }

    #[test]
    fn password_file_is_read_without_its_line_ending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        std::fs::write(&path, "s3cr3t\r\n").unwrap();
        let c = load(&with_password_file(&path)).unwrap();
        let credentials = c.upstreams[0].credentials.as_ref().expect("credentials");
        assert_eq!(
            (credentials.username.as_str(), credentials.password.as_str()),
            ("me", "s3cr3t")
        );
        assert!(!c.to_toml_redacted().contains("s3cr3t"));
    }
    fn with_htpasswd(path: &Path) -> String {
        format!(
            "[auth]\nhtpasswd = {:?}\n[[upstream]]\nname = \"docker.io\"\nendpoints = [\"https://r\"]\n",
            path.display().to_string()
        )
    }

    #[test]
    fn htpasswd_is_checked_at_load_by_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let hash = bcrypt::hash("pw", 4).unwrap();
        std::fs::write(&path, format!("alice:{hash}\nbob:$apr1$x$y\nnocolon\n")).unwrap();
        let e = load(&with_htpasswd(&path)).unwrap_err().to_string();
        let shown = path.display();
        assert!(
            e.contains(&format!("auth.htpasswd: {shown} line 2: user \"bob\"")),
            "{e}"
        );
        assert!(
            e.contains(&format!("auth.htpasswd: {shown} line 3: is not user:hash")),
            "{e}"
        );
        assert!(
            !e.contains(&hash[7..]) && !e.contains("$apr1$x"),
            "no hash in errors: {e}"
        );

        std::fs::write(&path, format!("alice:{hash}\n")).unwrap();
        let c = load(&with_htpasswd(&path)).unwrap();
        assert_eq!(c.auth.as_ref().and_then(|a| a.htpasswd.clone()), Some(path));
        assert!(!c.to_toml_redacted().contains(&hash[7..]));
    }

    #[test]
    fn a_missing_htpasswd_is_reported_with_the_other_problems() {
        let text = with_htpasswd(Path::new("/nonexistent/htpasswd")).replace("[auth]", "log_format = \"xml\"\n[auth]");
        let e = load(&text).unwrap_err().to_string();
        assert!(e.contains("auth.htpasswd: cannot read /nonexistent/htpasswd: "), "{e}");
        assert!(e.contains("log_format"), "{e}");
    }

    #[test]
    fn check_config_prints_auth_and_access() {
        let text = r#"
            [auth]
            anonymous = true
            allow_networks = ["10.0.0.0/8"]
            [[access]]
            identities = ["anonymous"]
            repositories = ["library/*"]
            [[upstream]]
            name = "docker.io"
            endpoints = ["https://r"]
        "#;
        let printed = load(text).unwrap().to_toml_redacted();
        assert!(
            printed.contains("[auth]") && printed.contains("[[access]]"),
            "{printed}"
        );
        let again = load(&printed).unwrap();
        assert_eq!(again.access.len(), 1);
        let default = Config::load(None, Overrides::default()).unwrap().to_toml_redacted();
        assert!(
            !default.contains("[auth]") && !default.contains("[[access]]"),
            "{default}"
        );
    }

    /// `[storage]` on S3 and `[cluster]` with `[auth]`, the secrets given as `secrets`.
    fn fleet_config(storage_secret: &str, cluster_secret: &str) -> String {
        format!(
            r#"
            [auth]
            anonymous = true
            [[upstream]]
            name = "docker.io"
            endpoints = ["https://r"]
            [storage]
            kind = "s3"
            endpoint = "http://127.0.0.1:3900"
            bucket = "berth"
            access_key_id = "GK1"
            {storage_secret}
            [cluster]
            self = "http://10.0.0.1:5000"
            peers = ["http://10.0.0.1:5000", "http://10.0.0.2:5000"]
            {cluster_secret}
            "#
        )
    }

    #[test]
    fn fleet_secrets_are_read_from_files_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let (s3, cluster) = (dir.path().join("s3"), dir.path().join("cluster"));
        std::fs::write(&s3, "s3-secret-value\n").unwrap();
        std::fs::write(&cluster, "0123456789abcdef0123456789abcdef\n").unwrap();
        let text = fleet_config(
            &format!("secret_access_key_file = {:?}", s3),
            &format!("secret_file = {:?}", cluster),
        );
        let c = load(&text).unwrap();
        assert_eq!(
            c.s3.as_ref().map(|s| s.secret_access_key.as_str()),
            Some("s3-secret-value")
        );
        assert_eq!(
            c.cluster.as_ref().and_then(|c| c.secret.as_deref()),
            Some("0123456789abcdef0123456789abcdef")
        );
        let printed = format!("{}{c:?}", c.to_toml_redacted());
        assert!(
            !printed.contains("s3-secret-value") && !printed.contains("0123456789abcdef"),
            "{printed}"
        );
    }

    #[test]
    fn fleet_secrets_missing_short_or_doubled_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "abc\n").unwrap();
        let cases = [
            (String::new(), String::new(), "storage.secret_access_key_file: required"),
            (
                "secret_access_key = \"x\"".to_string(),
                String::new(),
                "cluster.secret_file: required with [auth]",
            ),
            (
                "secret_access_key = \"x\"\nsecret_access_key_file = \"/s\"".to_string(),
                String::new(),
                "not both",
            ),
            (
                "secret_access_key_file = \"/nonexistent/s3\"".to_string(),
                format!("secret_file = {short:?}"),
                "storage.secret_access_key_file: cannot read /nonexistent/s3",
            ),
            (
                "secret_access_key = \"x\"".to_string(),
                format!("secret_file = {short:?}"),
                "cluster.secret_file: ",
            ),
        ];
        for (storage, cluster, expected) in cases {
            let e = load(&fleet_config(&storage, &cluster)).unwrap_err().to_string();
            assert!(e.contains(expected), "{expected:?} not in: {e}");
            assert!(!e.contains("abc\n") && !e.contains("\"abc\""), "never the secret: {e}");
        }
        let e = load(&fleet_config(
            "secret_access_key = \"x\"",
            &format!("secret_file = {short:?}"),
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("holds 3 characters; at least 16"), "{e}");
    }

    #[test]
    fn cluster_self_may_come_from_the_environment_only() {
        // A StatefulSet's one config: every replica its own `self`.
        let text = fleet_config("secret_access_key = \"x\"", "")
            .replace("[auth]\n            anonymous = true", "")
            .replace("self = \"http://10.0.0.1:5000\"", "")
            .replace(
                "peers = [\"http://10.0.0.1:5000\", \"http://10.0.0.2:5000\"]",
                "peers_dns = \"berth-peers:5000\"",
            );
        let e = load(&text).unwrap_err().to_string();
        assert!(
            e.contains("cluster.self: missing") && e.contains("BERTH_CLUSTER_SELF"),
            "{e}"
        );
        let env = Overrides::from_env(|k| (k == "BERTH_CLUSTER_SELF").then(|| "http://10.1.2.3:5000".into()));
        let c = Config::from_toml(&text, "t", env.clone()).unwrap();
        assert_eq!(
            c.cluster.as_ref().map(|c| c.self_url.as_str()),
            Some("http://10.1.2.3:5000/")
        );
        // The environment wins over the file's `self`, and a bad one is named.
        let with_self =
            fleet_config("secret_access_key = \"x\"", "").replace("[auth]\n            anonymous = true", "");
        let bad = Overrides::from_env(|k| (k == "BERTH_CLUSTER_SELF").then(|| "10.1.2.3".into()));
        let e = Config::from_toml(&with_self, "t", bad).unwrap_err().to_string();
        assert!(
            e.contains("cluster.self: \"10.1.2.3\" is not a replica's base URL"),
            "{e}"
        );
        // Without [cluster] the variable is a mistake, not ignored.
        let e = Config::from_toml(EMBEDDED_DEFAULT, "t", env).unwrap_err().to_string();
        assert!(
            e.contains("BERTH_CLUSTER_SELF: set, but the config has no [cluster]"),
            "{e}"
        );
    }

    #[test]
    fn local_cache_is_a_size_for_s3_storage_only() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = dir.path().join("cluster");
        std::fs::write(&cluster, "0123456789abcdef0123456789abcdef\n").unwrap();
        let secret = format!("secret_file = {cluster:?}");
        let c = load(&fleet_config(
            "secret_access_key = \"x\"\nlocal_cache = \"2GiB\"",
            &secret,
        ))
        .unwrap();
        assert_eq!(c.s3.as_ref().map(|s| s.local_cache), Some(2 << 30));
        let c = load(&fleet_config("secret_access_key = \"x\"", &secret)).unwrap();
        assert_eq!(c.s3.as_ref().map(|s| s.local_cache), Some(0), "none unless asked");
        let e = load(&fleet_config(
            "secret_access_key = \"x\"\nlocal_cache = \"lots\"",
            &secret,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("storage.local_cache: \"lots\" is not a size"), "{e}");
        let e = load("[storage]\nkind = \"filesystem\"\nlocal_cache = \"1GiB\"\n[[upstream]]\nname = \"docker.io\"\nendpoints = [\"https://r\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("storage.local_cache: only with kind = \"s3\""), "{e}");
    }
}
