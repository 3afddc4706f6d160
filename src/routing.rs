//! Which upstream serves a request, and under which repository name.
//!
//! Order: containerd's `ns=` query, then a configured path prefix, then the
//! default upstream. A registry that is not configured is refused: berth is a
//! mirror of named registries, never an open proxy.

use std::sync::Arc;

use thiserror::Error;

use crate::config::UpstreamConfig;
use crate::reference::RepoName;
use crate::upstream::Upstream;

/// Docker Hub's canonical name; one-component names there live under `library/`.
pub const DOCKER_HUB: &str = "docker.io";

/// Which upstream serves a request, and the repository it names there.
#[derive(Clone)]
pub struct Route<U = Arc<Upstream>> {
    pub upstream: U,
    /// The repository as the upstream names it (prefix stripped, `library/` added).
    pub repo: RepoName,
}

/// What routing needs to know of an upstream: its configuration.
pub trait Routable: Clone {
    fn config(&self) -> &UpstreamConfig;
}

impl Routable for Arc<Upstream> {
    fn config(&self) -> &UpstreamConfig {
        &self.config
    }
}

impl Routable for UpstreamConfig {
    fn config(&self) -> &UpstreamConfig {
        self
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("registry {registry:?} is not configured as an upstream of this mirror")]
pub struct NotConfigured {
    pub registry: String,
}

pub fn route<U: Routable>(upstreams: &[U], name: &RepoName, ns: Option<&str>) -> Result<Route<U>, NotConfigured> {
    let not_configured = |registry: &str| NotConfigured {
        registry: registry.to_string(),
    };
    let (index, repo) = if let Some(ns) = ns {
        let i = upstreams
            .iter()
            .position(|u| u.config().name == ns)
            .ok_or_else(|| not_configured(ns))?;
        // containerd may also carry the prefix in the path (hosts.toml with a
        // path), in which case it is stripped here too.
        (i, strip_prefix(name, &upstreams[i].config().prefix))
    } else if let Some(i) = prefixed_upstream(upstreams, name) {
        (i, strip_prefix(name, &upstreams[i].config().prefix))
    } else {
        let i = upstreams
            .iter()
            .position(|u| u.config().default)
            .ok_or_else(|| not_configured(name.first_component()))?;
        // Docker Hub namespaces never contain a dot, so a dotted first
        // component names another registry the operator has not configured.
        if upstreams[i].config().name == DOCKER_HUB
            && name.component_count() > 1
            && name.first_component().contains('.')
        {
            return Err(not_configured(name.first_component()));
        }
        (i, name.clone())
    };
    let upstream = upstreams[index].clone();
    let repo = if upstream.config().name == DOCKER_HUB && repo.component_count() == 1 {
        repo.with_prefix("library").unwrap_or(repo)
    } else {
        repo
    };
    Ok(Route { upstream, repo })
}

fn prefixed_upstream<U: Routable>(upstreams: &[U], name: &RepoName) -> Option<usize> {
    if name.component_count() < 2 {
        return None;
    }
    upstreams
        .iter()
        .position(|u| u.config().prefix == name.first_component())
}

fn strip_prefix(name: &RepoName, prefix: &str) -> RepoName {
    match name.strip_first_component() {
        Some(rest) if name.first_component() == prefix => rest,
        _ => name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConvertMode;
    use std::time::Duration;

    fn upstream(name: &str, default: bool) -> UpstreamConfig {
        UpstreamConfig {
            name: name.into(),
            endpoints: vec![format!("https://{name}").parse().unwrap()],
            default,
            prefix: name.into(),
            credentials: None,
            convert: ConvertMode::Auto,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            retry: crate::config::RetryConfig {
                attempts: 1,
                base_delay: Duration::ZERO,
                max_delay: Duration::ZERO,
                deadline: Duration::from_secs(1),
            },
            breaker_threshold: 1,
            breaker_cooldown: Duration::ZERO,
            offline: false,
            auth_hosts: Vec::new(),
            max_concurrent_requests: 1,
        }
    }

    fn ups() -> Vec<UpstreamConfig> {
        vec![upstream("docker.io", true), upstream("ghcr.io", false)]
    }

    fn r(name: &str, ns: Option<&str>) -> Result<(String, String), NotConfigured> {
        let u = ups();
        route(&u, &RepoName::parse(name).unwrap(), ns).map(|r| (r.upstream.name, r.repo.to_string()))
    }

    fn ok(up: &str, repo: &str) -> Result<(String, String), NotConfigured> {
        Ok((up.into(), repo.into()))
    }

    #[test]
    fn table() {
        assert_eq!(r("busybox", None), ok("docker.io", "library/busybox"));
        assert_eq!(r("org/app", None), ok("docker.io", "org/app"));
        assert_eq!(r("a/b/c", None), ok("docker.io", "a/b/c"));
        assert_eq!(r("ghcr.io/org/img", None), ok("ghcr.io", "org/img"));
        assert_eq!(r("docker.io/busybox", None), ok("docker.io", "library/busybox"));
        assert_eq!(r("org/img", Some("ghcr.io")), ok("ghcr.io", "org/img"));
        assert_eq!(r("ghcr.io/org/img", Some("ghcr.io")), ok("ghcr.io", "org/img"));
        assert_eq!(r("busybox", Some("docker.io")), ok("docker.io", "library/busybox"));
        // A one-component name equal to a prefix is a repository, not a prefix.
        assert_eq!(r("ghcr.io", None), ok("docker.io", "library/ghcr.io"));
    }

    #[test]
    fn unconfigured_registries_are_refused() {
        assert_eq!(
            r("org/img", Some("quay.io")),
            Err(NotConfigured {
                registry: "quay.io".into()
            })
        );
        assert_eq!(
            r("quay.io/org/img", None),
            Err(NotConfigured {
                registry: "quay.io".into()
            })
        );
        let only_ghcr = vec![upstream("ghcr.io", false)];
        let name = RepoName::parse("busybox").unwrap();
        assert!(route(&only_ghcr, &name, None).is_err());
    }
}
