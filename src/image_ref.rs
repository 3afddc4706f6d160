//! IMAGE as a person types it to docker, `[registry/]repo[:tag|@digest]`:
//! the registry names an upstream (`docker.io` when absent), a one-component
//! name on Docker Hub gets `library/`, the tag defaults to `latest`.

use thiserror::Error;

use crate::config::UpstreamConfig;
use crate::reference::{Reference, RepoName};
use crate::routing::DOCKER_HUB;

#[derive(Debug, Error)]
pub enum ImageRefError {
    #[error("IMAGE {image:?} is not an image reference: {reason}")]
    Invalid { image: String, reason: String },
    #[error("IMAGE {image:?}: registry {registry:?} is not configured as an upstream")]
    NotConfigured { image: String, registry: String },
}

impl ImageRefError {
    pub fn image(&self) -> &str {
        match self {
            ImageRefError::Invalid { image, .. } | ImageRefError::NotConfigured { image, .. } => image,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ImageRef {
    /// As typed.
    pub text: String,
    /// Index into the config's upstreams.
    pub upstream: usize,
    /// As the upstream names it (`library/` added on Docker Hub).
    pub repo: RepoName,
    pub reference: Reference,
}

impl ImageRef {
    pub fn parse(text: &str, upstreams: &[UpstreamConfig]) -> Result<ImageRef, ImageRefError> {
        let invalid = |reason: String| ImageRefError::Invalid {
            image: text.to_string(),
            reason,
        };
        let (name, reference) = match text.split_once('@') {
            Some((name, digest)) => (name, digest),
            None => match text.rsplit_once(':') {
                // A ':' after the last '/' starts the tag; before it, a port.
                Some((name, tag)) if !tag.contains('/') => (name, tag),
                _ => (text, "latest"),
            },
        };
        let reference = Reference::parse(reference).map_err(|e| invalid(e.to_string()))?;
        // Docker's rule: a first component with a '.' or ':', or `localhost`,
        // is a registry; so is one that names a configured upstream.
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':']) || first == "localhost" || upstreams.iter().any(|u| u.name == first) =>
            {
                (first, rest)
            }
            _ => (DOCKER_HUB, name),
        };
        let found = upstreams.iter().position(|u| u.name == registry).or_else(|| {
            // Without a registry the daemon's mirror case: the default upstream.
            (registry == DOCKER_HUB && path == name)
                .then(|| upstreams.iter().position(|u| u.default))
                .flatten()
        });
        let Some(upstream) = found else {
            return Err(ImageRefError::NotConfigured {
                image: text.to_string(),
                registry: registry.to_string(),
            });
        };
        let mut repo = RepoName::parse(path).map_err(|e| invalid(e.to_string()))?;
        if upstreams[upstream].name == DOCKER_HUB && repo.component_count() == 1 {
            repo = repo.with_prefix("library").map_err(|e| invalid(e.to_string()))?;
        }
        Ok(ImageRef {
            text: text.to_string(),
            upstream,
            repo,
            reference,
        })
    }
}

/// `--platform os/arch[/variant]`, as docker takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn parse(text: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = text.split('/').collect();
        let ok = |p: &&str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(variant.to_string()),
            }),
            _ => Err(format!(
                "platform {text:?} is not os/arch or os/arch/variant (e.g. linux/amd64)"
            )),
        }
    }

    /// Whether an index entry's platform is this one (a variant asked for
    /// must match; none asked for takes any).
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        self.os == os && self.architecture == architecture && self.variant.as_deref().is_none_or(|v| Some(v) == variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstreams() -> Vec<UpstreamConfig> {
        let config = crate::config::Config::from_toml(
            "[[upstream]]\nname = \"docker.io\"\nendpoints = [\"https://registry-1.docker.io\"]\ndefault = true\n\
             [[upstream]]\nname = \"ghcr.io\"\nendpoints = [\"https://ghcr.io\"]\n\
             [[upstream]]\nname = \"local\"\nendpoints = [\"http://127.0.0.1:5000\"]\n",
            "test",
            crate::config::Overrides::default(),
        )
        .expect("config");
        config.upstreams
    }

    #[test]
    fn as_docker_reads_them() {
        let ups = upstreams();
        let parse = |s: &str| {
            let r = ImageRef::parse(s, &ups).expect(s);
            (
                ups[r.upstream].name.clone(),
                r.repo.to_string(),
                r.reference.to_string(),
            )
        };
        let hub = |repo: &str, reference: &str| ("docker.io".to_string(), repo.to_string(), reference.to_string());
        assert_eq!(parse("busybox"), hub("library/busybox", "latest"));
        assert_eq!(parse("busybox:1.36"), hub("library/busybox", "1.36"));
        assert_eq!(parse("docker.io/busybox"), hub("library/busybox", "latest"));
        assert_eq!(parse("team/app:v1"), hub("team/app", "v1"));
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(parse(&format!("busybox@{digest}")), hub("library/busybox", &digest));
        assert_eq!(
            parse("ghcr.io/org/img:2"),
            ("ghcr.io".into(), "org/img".into(), "2".into())
        );
        assert_eq!(parse("local/app"), ("local".into(), "app".into(), "latest".into()));
    }

    #[test]
    fn platforms() {
        let p = Platform::parse("linux/arm64/v8").expect("platform");
        assert!(p.matches("linux", "arm64", Some("v8")));
        assert!(!p.matches("linux", "arm64", None));
        let p = Platform::parse("linux/amd64").expect("platform");
        assert!(p.matches("linux", "amd64", None) && p.matches("linux", "amd64", Some("v2")));
        assert_eq!(p.to_string(), "linux/amd64");
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_registries_and_bad_references() {
        let ups = upstreams();
        assert!(matches!(
            ImageRef::parse("quay.io/a/b", &ups),
            Err(ImageRefError::NotConfigured { registry, .. }) if registry == "quay.io"
        ));
        assert!(matches!(
            ImageRef::parse("localhost:5000/a:1", &ups),
            Err(ImageRefError::NotConfigured { registry, .. }) if registry == "localhost:5000"
        ));
        for bad in ["Busybox", "busybox:", "busybox@sha256:zz", "a//b", ""] {
            assert!(
                matches!(ImageRef::parse(bad, &ups), Err(ImageRefError::Invalid { .. })),
                "{bad}"
            );
        }
    }
}
