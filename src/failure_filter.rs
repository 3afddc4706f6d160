//! Which recent failures a person asked for: `client`, `image`, `cause` and
//! `since`, as `/_berth/failures` takes them in its query and `berth failures`
//! takes them as flags. Parsing is strict (a typo names its parameter rather
//! than silently matching everything); matching is pure, over one
//! [`FailureEntry`] and the time now.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use thiserror::Error;

use crate::events::FailureEntry;
use crate::failure::FailureCause;
use crate::reference::{Digest, RepoName, Tag};
use crate::routing::DOCKER_HUB;

/// The query parameters, in the order the usage text gives them.
pub const PARAMETERS: [&str; 4] = ["client", "image", "cause", "since"];

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FilterError {
    #[error("client {value:?} is not an IP address or network (10.0.0.7, fd00::7, 10.0.0.0/24)")]
    Client { value: String },
    #[error("image {value:?}: {reason}")]
    Image { value: String, reason: String },
    #[error("cause {value:?} is not a failure cause; one of: {}", cause_names())]
    Cause { value: String },
    #[error("since {value:?}: {reason}")]
    Since { value: String, reason: String },
    #[error("unknown parameter {name:?} (client, image, cause, since)")]
    Unknown { name: String },
    #[error("parameter {name:?} given twice")]
    Repeated { name: String },
}

impl FilterError {
    /// The parameter the error is about.
    pub fn parameter(&self) -> &str {
        match self {
            FilterError::Client { .. } => "client",
            FilterError::Image { .. } => "image",
            FilterError::Cause { .. } => "cause",
            FilterError::Since { .. } => "since",
            FilterError::Unknown { name } | FilterError::Repeated { name } => name,
        }
    }
}

fn cause_names() -> String {
    FailureCause::ALL.map(FailureCause::name).join(", ")
}

/// The client filter: one address (any port) or a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMatch {
    Addr(IpAddr),
    Net(IpNet),
}

impl ClientMatch {
    pub fn parse(s: &str) -> Result<Self, FilterError> {
        let bad = || FilterError::Client { value: s.to_string() };
        let t = s.trim();
        if t.contains('/') {
            return t
                .parse::<IpNet>()
                .map(|n| ClientMatch::Net(n.trunc()))
                .map_err(|_| bad());
        }
        // `[fd00::7]` as it appears in a socket address.
        let t = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(t);
        t.parse::<IpAddr>()
            .map(|ip| ClientMatch::Addr(ip.to_canonical()))
            .map_err(|_| bad())
    }

    /// Does the entry's client (`ip:port`, `[v6]:port`, a bare address, or
    /// `-` when unknown) fall under this filter?
    pub fn matches(&self, client: &str) -> bool {
        let Some(ip) = client
            .parse::<SocketAddr>()
            .map(|a| a.ip())
            .or_else(|_| client.parse::<IpAddr>())
            .ok()
            .map(|ip| ip.to_canonical())
        else {
            return false;
        };
        match self {
            ClientMatch::Addr(want) => ip == *want,
            ClientMatch::Net(net) => net.contains(&ip),
        }
    }
}

/// An image as a person types it to docker, normalised as docker does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageMatch {
    /// The registry named before the repository, if any (`docker.io` for
    /// `index.docker.io`).
    pub registry: Option<String>,
    /// The repository as its upstream names it (`library/` added for one
    /// component on Docker Hub).
    pub repository: String,
    /// The repository as typed, for a default upstream that is not Docker
    /// Hub and for failures recorded before routing added anything.
    typed: String,
    /// A tag or a digest; a digest wins when both are given, as docker pulls by it.
    pub reference: Option<String>,
    /// `(prefix, upstream name)` of the configured upstreams: a client that
    /// routes by path prefix sends `gh/org/app` for `ghcr.io`'s `org/app`.
    prefixes: Vec<(String, String)>,
}

impl ImageMatch {
    pub fn parse(s: &str) -> Result<Self, FilterError> {
        let bad = |reason: String| FilterError::Image {
            value: s.to_string(),
            reason,
        };
        let t = s.trim();
        let (rest, digest) = match t.rsplit_once('@') {
            Some((rest, d)) => (rest, Some(Digest::parse(d).map_err(|e| bad(e.to_string()))?)),
            None => (t, None),
        };
        // A ':' after the last '/' starts a tag; one before it is a registry port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let (name, tag) = rest.split_at(last_slash + i);
                (name, Some(Tag::parse(&tag[1..]).map_err(|e| bad(e.to_string()))?))
            }
            None => (rest, None),
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                if !valid_registry(first) {
                    return Err(bad(format!("{first:?} is not a registry host[:port]")));
                }
                let registry = match first {
                    "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
                    other => other,
                };
                (Some(registry.to_string()), path)
            }
            _ => (None, name),
        };
        let typed = RepoName::parse(path).map_err(|e| bad(e.to_string()))?;
        let on_hub = registry.as_deref().is_none_or(|r| r == DOCKER_HUB);
        let repository = if on_hub && typed.component_count() == 1 {
            typed.with_prefix("library").map_err(|e| bad(e.to_string()))?
        } else {
            typed.clone()
        };
        Ok(ImageMatch {
            registry,
            repository: repository.as_str().to_string(),
            typed: typed.as_str().to_string(),
            reference: digest
                .map(|d| d.to_string())
                .or_else(|| tag.map(|t| t.as_str().to_string())),
            prefixes: Vec::new(),
        })
    }

    /// An entry's repository is the name as the client sent it (`busybox`,
    /// `library/busybox`, or with a routing prefix `ghcr.io/org/app`), so it
    /// is normalised the way the filter was before they are compared.
    pub fn matches(&self, upstream: Option<&str>, repository: Option<&str>, reference: Option<&str>) -> bool {
        let Some(repo) = repository else {
            return false;
        };
        let upstream = upstream.filter(|u| *u != "-");
        let (registry, path) = match repo.split_once('/') {
            // The prefix of the upstream that served it, or, refused before
            // routing (`upstream_not_configured`), the registry asked for.
            Some((first, rest)) if upstream == Some(first) || (upstream.is_none() && first.contains(['.', ':'])) => {
                (Some(first), rest)
            }
            Some((first, rest))
                if upstream.is_some_and(|u| self.prefixes.iter().any(|(p, n)| p == first && n == u)) =>
            {
                (upstream, rest)
            }
            _ => (upstream, repo),
        };
        let on_hub = registry.is_none_or(|r| r == DOCKER_HUB);
        let normalised = if on_hub && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        let repo_matches = match &self.registry {
            Some(want) => registry == Some(want.as_str()) && normalised == self.repository,
            // Any upstream; as typed too, for a default upstream that is not
            // Docker Hub (where `app` stays `app`).
            None => normalised == self.repository || path == self.typed,
        };
        repo_matches
            && self
                .reference
                .as_deref()
                .is_none_or(|want| reference.is_some_and(|r| r.eq_ignore_ascii_case(want)))
    }
}

/// `host[:port]` as docker accepts a registry: letters, digits, `.` and
/// `-`, and a numeric port.
fn valid_registry(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    };
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The filters a person asked for; all given ones must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailureFilter {
    pub client: Option<ClientMatch>,
    pub image: Option<ImageMatch>,
    pub cause: Option<FailureCause>,
    pub since: Option<Duration>,
}

impl FailureFilter {
    /// From `(name, value)` pairs (a decoded query string, or the CLI's
    /// flags); an empty value is no filter, as `?client=` in the endpoint's
    /// own usage line.
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, FilterError> {
        let mut f = FailureFilter::default();
        let mut seen: Vec<String> = Vec::new();
        for (name, value) in pairs {
            let (name, value) = (name.as_ref(), value.as_ref());
            if !PARAMETERS.contains(&name) {
                return Err(FilterError::Unknown { name: name.to_string() });
            }
            if seen.iter().any(|s| s == name) {
                return Err(FilterError::Repeated { name: name.to_string() });
            }
            seen.push(name.to_string());
            if value.trim().is_empty() {
                continue;
            }
            match name {
                "client" => f.client = Some(ClientMatch::parse(value)?),
                "image" => f.image = Some(ImageMatch::parse(value)?),
                "cause" => {
                    f.cause = Some(FailureCause::from_name(value.trim()).ok_or_else(|| FilterError::Cause {
                        value: value.to_string(),
                    })?)
                }
                _ => {
                    f.since = Some(
                        crate::units::parse_duration(value).map_err(|reason| FilterError::Since {
                            value: value.to_string(),
                            reason,
                        })?,
                    )
                }
            }
        }
        Ok(f)
    }

    /// From a raw query string (`client=10.0.0.7&image=busybox`).
    pub fn from_query(query: Option<&str>) -> Result<Self, FilterError> {
        FailureFilter::from_pairs(url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()))
    }

    /// Tell the image filter the routing prefixes of the configured
    /// upstreams, as `(prefix, upstream name)`.
    pub fn with_prefixes(mut self, prefixes: impl IntoIterator<Item = (String, String)>) -> Self {
        if let Some(image) = &mut self.image {
            image.prefixes = prefixes.into_iter().collect();
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        *self == FailureFilter::default()
    }

    pub fn matches(&self, e: &FailureEntry, now_ms: u64) -> bool {
        self.cause.is_none_or(|c| c == e.cause)
            && self.client.as_ref().is_none_or(|c| c.matches(&e.client))
            && self
                .image
                .as_ref()
                .is_none_or(|i| i.matches(e.upstream.as_deref(), e.repository.as_deref(), e.reference.as_deref()))
            && self.since.is_none_or(|s| {
                let since_ms = u64::try_from(s.as_millis()).unwrap_or(u64::MAX);
                e.at_unix_ms >= now_ms.saturating_sub(since_ms)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

    fn entry(client: &str, upstream: &str, repo: &str, reference: &str) -> FailureEntry {
        FailureEntry {
            at_unix_ms: 1_000_000,
            cause: FailureCause::ManifestUnknown,
            category: FailureCause::ManifestUnknown.category(),
            upstream: Some(upstream.into()),
            upstream_status: Some(404),
            repository: Some(repo.into()),
            reference: Some(reference.into()),
            method: "GET".into(),
            path: format!("/v2/{repo}/manifests/{reference}"),
            status: 404,
            client: client.into(),
            identity: None,
            request_id: "r".into(),
            elapsed_ms: 1,
            attempts: 1,
            reason: None,
            detail: String::new(),
            hint: String::new(),
        }
    }

    fn filter(pairs: &[(&str, &str)]) -> FailureFilter {
        FailureFilter::from_pairs(pairs.iter().copied()).expect("valid filter")
    }

    #[test]
    fn images_normalise_like_docker() {
        let hub = |s: &str| ImageMatch::parse(s).expect(s);
        for s in [
            "busybox",
            "library/busybox",
            "docker.io/busybox",
            "index.docker.io/library/busybox",
        ] {
            let m = hub(s);
            assert_eq!(m.repository, "library/busybox", "{s}");
            assert_eq!(m.reference, None, "{s}");
        }
        let m = hub("docker.io/library/busybox:1.36");
        assert_eq!(
            (m.registry.as_deref(), m.repository.as_str(), m.reference.as_deref()),
            (Some("docker.io"), "library/busybox", Some("1.36"))
        );
        let m = hub(&format!("ghcr.io/org/app@{DIGEST}"));
        assert_eq!(
            (m.registry.as_deref(), m.repository.as_str(), m.reference.as_deref()),
            (Some("ghcr.io"), "org/app", Some(DIGEST))
        );
        assert_eq!(hub("ghcr.io/app").repository, "app", "library/ is Docker Hub's alone");
        let m = hub("localhost:5000/app:v1");
        assert_eq!(
            (m.registry.as_deref(), m.repository.as_str()),
            (Some("localhost:5000"), "app")
        );
        assert_eq!(
            hub(&format!("busybox:1.36@{DIGEST}")).reference.as_deref(),
            Some(DIGEST)
        );
        assert_eq!(hub("org/app").repository, "org/app");
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox@sha256:12",
            "a//b",
            "busybox:bad/tag",
            ":1.36",
        ] {
            let e = ImageMatch::parse(bad).expect_err(bad);
            assert_eq!(e.parameter(), "image", "{bad}");
        }
    }

    #[test]
    fn image_matches_repository_and_reference() {
        let short = entry("127.0.0.1:4000", "docker.io", "busybox", "1.36");
        for yes in [
            "busybox",
            "busybox:1.36",
            "docker.io/library/busybox:1.36",
            "library/busybox",
        ] {
            assert!(
                filter(&[("image", yes)]).matches(&short, 0),
                "{yes} as the client sent it"
            );
        }
        let prefixed = entry("127.0.0.1:4000", "docker.io", "docker.io/busybox", "1.36");
        assert!(filter(&[("image", "docker.io/library/busybox")]).matches(&prefixed, 0));
        assert!(filter(&[("image", "busybox")]).matches(&prefixed, 0));
        let internal = entry("127.0.0.1:4000", "registry.internal", "app", "v1");
        assert!(
            filter(&[("image", "app:v1")]).matches(&internal, 0),
            "a default upstream off Docker Hub"
        );
        assert!(filter(&[("image", "registry.internal/app")]).matches(&internal, 0));
        assert!(!filter(&[("image", "docker.io/app")]).matches(&internal, 0));
        let e = entry("127.0.0.1:4000", "docker.io", "library/busybox", "1.36");
        for yes in [
            "busybox",
            "busybox:1.36",
            "docker.io/library/busybox:1.36",
            "library/busybox",
        ] {
            assert!(filter(&[("image", yes)]).matches(&e, 0), "{yes}");
        }
        let by_digest = format!("busybox@{DIGEST}");
        for no in ["busybox:1.37", "alpine", "ghcr.io/library/busybox", by_digest.as_str()] {
            assert!(!filter(&[("image", no)]).matches(&e, 0), "{no}");
        }
        let g = entry("127.0.0.1:4000", "ghcr.io", "org/app", DIGEST);
        assert!(filter(&[("image", &format!("ghcr.io/org/app@{DIGEST}"))]).matches(&g, 0));
        assert!(
            filter(&[("image", "org/app")]).matches(&g, 0),
            "no registry: any upstream"
        );
        assert!(!filter(&[("image", "docker.io/org/app")]).matches(&g, 0));
        let routed = entry("127.0.0.1:4000", "ghcr.io", "gh/org/app", "v1");
        let ghcr = filter(&[("image", "ghcr.io/org/app:v1")]);
        assert!(!ghcr.matches(&routed, 0), "a prefix berth was not told of");
        let ghcr = ghcr.with_prefixes([("gh".to_string(), "ghcr.io".to_string())]);
        assert!(ghcr.matches(&routed, 0), "gh/ is ghcr.io's prefix");
        let other = filter(&[("image", "ghcr.io/org/app")]).with_prefixes([("gh".into(), "quay.io".into())]);
        assert!(!other.matches(&routed, 0), "gh/ is another upstream's prefix");
        let refused = entry("127.0.0.1:4000", "-", "quay.io/org/app", "v1");
        assert!(filter(&[("image", "quay.io/org/app:v1")]).matches(&refused, 0));
        assert!(
            filter(&[("image", "org/app")]).matches(&refused, 0),
            "no registry: any upstream"
        );
        assert!(!filter(&[("image", "ghcr.io/org/app")]).matches(&refused, 0));
    }

    #[test]
    fn clients_match_any_port_v6_and_networks() {
        let v4 = entry("10.0.0.7:51234", "docker.io", "library/busybox", "1.36");
        let v6 = entry("[fd00::7]:443", "docker.io", "library/busybox", "1.36");
        let mapped = entry("[::ffff:10.0.0.7]:9", "docker.io", "library/busybox", "1.36");
        let unknown = entry("-", "docker.io", "library/busybox", "1.36");
        let f = filter(&[("client", "10.0.0.7")]);
        assert!(f.matches(&v4, 0) && f.matches(&mapped, 0));
        assert!(!f.matches(&v6, 0) && !f.matches(&unknown, 0));
        assert!(!filter(&[("client", "10.0.0.70")]).matches(&v4, 0));
        assert!(filter(&[("client", "fd00::7")]).matches(&v6, 0));
        assert!(filter(&[("client", "[fd00::7]")]).matches(&v6, 0));
        assert!(filter(&[("client", "10.0.0.0/24")]).matches(&v4, 0));
        assert!(
            filter(&[("client", "10.0.0.9/24")]).matches(&v4, 0),
            "host bits ignored"
        );
        assert!(!filter(&[("client", "10.0.1.0/24")]).matches(&v4, 0));
        assert!(filter(&[("client", "fd00::/8")]).matches(&v6, 0));
        for bad in ["10.0.0", "node7", "10.0.0.7:80", "10.0.0.0/33", "::1/129"] {
            let e = FailureFilter::from_pairs([("client", bad)]).expect_err(bad);
            assert_eq!(e.parameter(), "client", "{bad}");
        }
    }

    #[test]
    fn cause_since_and_all_together() {
        let mut e = entry("10.0.0.7:1", "docker.io", "library/busybox", "1.36");
        assert!(filter(&[("cause", "manifest_unknown")]).matches(&e, 0));
        assert!(!filter(&[("cause", "rate_limited")]).matches(&e, 0));
        let err = FailureFilter::from_pairs([("cause", "nope")]).expect_err("unknown cause");
        assert_eq!(err.parameter(), "cause");
        assert!(
            err.to_string().contains("rate_limited") && err.to_string().contains("internal"),
            "{err}"
        );
        let now = e.at_unix_ms + 90_000;
        assert!(filter(&[("since", "90s")]).matches(&e, now), "at now - since is in");
        assert!(!filter(&[("since", "89s")]).matches(&e, now));
        assert!(filter(&[("since", "2d")]).matches(&e, now));
        assert!(
            filter(&[("since", "3650d")]).matches(&e, 5),
            "a clock before since saturates"
        );
        for bad in ["1y", "ten", "-1h", "9999d"] {
            assert_eq!(
                FailureFilter::from_pairs([("since", bad)]).expect_err(bad).parameter(),
                "since"
            );
        }
        let all = filter(&[
            ("client", "10.0.0.7"),
            ("image", "busybox:1.36"),
            ("cause", "manifest_unknown"),
            ("since", "1h"),
        ]);
        assert!(all.matches(&e, now));
        e.client = "10.0.0.8:1".into();
        assert!(!all.matches(&e, now), "every filter must hold");
    }

    #[test]
    fn queries() {
        assert!(FailureFilter::from_query(None).expect("none").is_empty());
        assert!(
            FailureFilter::from_query(Some("client=&image="))
                .expect("empty")
                .is_empty()
        );
        let f = FailureFilter::from_query(Some("image=docker.io%2Flibrary%2Fbusybox%3A1.36&client=%3A%3A1"))
            .expect("encoded");
        assert_eq!(f.image.map(|i| i.reference), Some(Some("1.36".into())));
        assert_eq!(f.client, Some(ClientMatch::Addr("::1".parse().expect("ip"))));
        let e = FailureFilter::from_query(Some("clinet=10.0.0.7")).expect_err("typo");
        assert_eq!(e.parameter(), "clinet");
        let e = FailureFilter::from_query(Some("cause=internal&cause=disk_full")).expect_err("twice");
        assert_eq!(e.parameter(), "cause");
        // Not UTF-8 after decoding: replaced, then rejected as a bad value.
        let e = FailureFilter::from_query(Some("client=%FF")).expect_err("garbage");
        assert_eq!(e.parameter(), "client");
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz_config())]

        /// Any query, however garbled, is a filter or an error with a
        /// message, and a filter matches or not: never a panic.
        #[test]
        fn fuzz_queries_never_panic(query in "[a-z=&%:/@.\\[\\]0-9A-F+-]{0,60}", client in "\\PC{0,30}") {
            let e = entry(&client, "docker.io", "library/busybox", "1.36");
            match FailureFilter::from_query(Some(&query)) {
                Ok(f) => {
                    let _ = f.matches(&e, u64::MAX);
                    let _ = f.matches(&e, 0);
                }
                Err(err) => proptest::prop_assert!(!err.to_string().is_empty()),
            }
            for name in PARAMETERS {
                let _ = FailureFilter::from_pairs([(name, client.as_str())]).map(|f| f.matches(&e, 0));
            }
        }
    }
}
