//! One `[[upstream]]` section of berth's config, built instead of written by
//! hand: `UpstreamToml::default_docker_io(url).set("attempts", 1)`. Values go
//! through the `toml` crate, so strings are quoted and escaped the one way.

use std::fmt;

pub struct UpstreamToml {
    name: String,
    endpoints: Vec<String>,
    default: bool,
    keys: Vec<(String, toml::Value)>,
}

impl UpstreamToml {
    /// An upstream `name` at one endpoint (add more with `endpoint`).
    pub fn new(name: &str, endpoint: &str) -> UpstreamToml {
        UpstreamToml {
            name: name.to_string(),
            endpoints: vec![endpoint.to_string()],
            default: false,
            keys: Vec::new(),
        }
    }

    /// The upstream most tests use: `docker.io` at `endpoint`, the default
    /// for names that carry no registry host.
    pub fn default_docker_io(endpoint: &str) -> UpstreamToml {
        UpstreamToml::new("docker.io", endpoint).make_default()
    }

    /// `default = true`.
    pub fn make_default(mut self) -> UpstreamToml {
        self.default = true;
        self
    }

    /// Another endpoint, tried after the ones before it.
    pub fn endpoint(mut self, endpoint: &str) -> UpstreamToml {
        self.endpoints.push(endpoint.to_string());
        self
    }

    /// Retry backoff: `retry_base_delay` and `retry_max_delay` (e.g. "50ms").
    pub fn retry(self, base_delay: &str, max_delay: &str) -> UpstreamToml {
        self.set("retry_base_delay", base_delay)
            .set("retry_max_delay", max_delay)
    }

    /// Any other key of the section.
    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> UpstreamToml {
        self.keys.push((key.to_string(), value.into()));
        self
    }

    pub fn to_toml(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for UpstreamToml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[[upstream]]")?;
        writeln!(f, "name = {}", toml::Value::from(self.name.as_str()))?;
        writeln!(f, "endpoints = {}", toml::Value::from(self.endpoints.clone()))?;
        if self.default {
            writeln!(f, "default = true")?;
        }
        for (key, value) in &self.keys {
            writeln!(f, "{key} = {value}")?;
        }
        Ok(())
    }
}
