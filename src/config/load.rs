//! Loading: the config file's text (or the embedded default), `BERTH_*`
//! environment overrides and flags on top, then validation; and printing the
//! effective config back, secrets redacted.

use std::path::Path;

use super::raw::RawConfig;
use super::validate::validate;
use super::{Config, ConfigError};

/// The configuration compiled into the binary; `berth serve` with no flags runs it.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/berth.toml");

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
}
