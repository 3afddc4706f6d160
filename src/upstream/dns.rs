//! Name resolution for upstream connections through the system resolver,
//! with failures as a typed error, so that a lookup failure is classified as
//! `dns_resolution` by type rather than by reading an error message.
//!
//! The resolver also guards against names that lead inside: the upstream's
//! own hosts (endpoints, token hosts, proxies) resolve as they like, and if
//! one of them is internal so may everything; otherwise any other name — a
//! redirect's target — that resolves to a loopback, private or link-local
//! address is refused, as a literal one is by the redirect policy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A host name that did not resolve.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {host}: {source}")]
pub struct DnsError {
    pub host: String,
    #[source]
    pub source: std::io::Error,
}

/// A name berth was sent to that resolves to an internal address.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to an internal address; the upstream is not on one")]
pub struct InternalAddress {
    pub host: String,
}

/// Which names may resolve to internal addresses.
pub struct AddressGuard {
    /// The endpoints' hosts: one resolving inside makes the upstream internal.
    /// Lower case, without IPv6 brackets.
    endpoints: Vec<String>,
    /// Token hosts and proxies: may resolve inside, and say nothing of where
    /// the upstream is (a proxy on the LAN is the usual case).
    also: Vec<String>,
    /// The upstream is internal (known from a literal endpoint address, or
    /// learnt when an endpoint's name resolved to an internal address).
    internal: AtomicBool,
}

fn normalise(hosts: impl IntoIterator<Item = String>) -> Vec<String> {
    hosts
        .into_iter()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase())
        .collect()
}

impl AddressGuard {
    pub fn new(
        endpoints: impl IntoIterator<Item = String>,
        also: impl IntoIterator<Item = String>,
        internal: bool,
    ) -> Self {
        Self {
            endpoints: normalise(endpoints),
            also: normalise(also),
            internal: AtomicBool::new(internal),
        }
    }

    /// Whether the upstream lives on an internal network.
    pub fn internal(&self) -> bool {
        self.internal.load(Ordering::Relaxed)
    }

    fn check(&self, host: &str, addrs: &[SocketAddr]) -> Result<(), InternalAddress> {
        let inside = addrs.iter().any(|a| super::redirect::is_internal_ip(a.ip()));
        if !inside {
            return Ok(());
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if self.endpoints.contains(&host) {
            self.internal.store(true, Ordering::Relaxed);
            return Ok(());
        }
        if self.internal() || self.also.contains(&host) {
            Ok(())
        } else {
            Err(InternalAddress { host })
        }
    }
}

#[derive(Clone)]
pub struct SystemResolver {
    pub guard: Arc<AddressGuard>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        let guard = self.guard.clone();
        Box::pin(async move {
            let addrs = lookup(&host).await.map_err(|e| Box::new(e) as BoxError)?;
            guard.check(&host, &addrs).map_err(|e| Box::new(e) as BoxError)?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The addresses of `host` from the system resolver; none is an error.
pub(super) async fn lookup(host: &str) -> Result<Vec<SocketAddr>, DnsError> {
    // Port 0: reqwest puts the URL's port on the addresses it gets.
    let found: std::io::Result<Vec<SocketAddr>> = tokio::net::lookup_host(format!("{host}:0"))
        .await
        .map(|addrs| addrs.collect());
    let host = host.to_string();
    match found {
        Ok(addrs) if addrs.is_empty() => {
            let source = std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses");
            Err(DnsError { host, source })
        }
        Ok(addrs) => Ok(addrs),
        Err(source) => Err(DnsError { host, source }),
    }
}

/// The hosts of the proxies reqwest will use, from the same variables.
pub fn proxy_hosts(env: impl Fn(&str) -> Option<String>) -> Vec<String> {
    ["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"]
        .iter()
        .flat_map(|name| [env(name), env(&name.to_ascii_lowercase())])
        .flatten()
        .filter_map(|v| {
            let v = v.trim();
            let with_scheme = if v.contains("://") {
                v.to_string()
            } else {
                format!("http://{v}")
            };
            url::Url::parse(&with_scheme).ok()?.host_str().map(str::to_string)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap(), 0)
    }

    #[test]
    fn other_names_may_not_resolve_inside_a_public_upstreams_network() {
        let g = AddressGuard::new(["registry-1.docker.io".to_string()], ["proxy.corp".to_string()], false);
        assert!(g.check("proxy.corp", &[addr("10.9.9.9")]).is_ok(), "a proxy on the LAN");
        assert!(g.check("registry-1.docker.io", &[addr("44.0.0.1")]).is_ok());
        assert!(g.check("cdn.example.net", &[addr("104.16.0.1")]).is_ok());
        let e = g
            .check("metadata.google.internal", &[addr("169.254.169.254")])
            .unwrap_err();
        assert_eq!(e.host, "metadata.google.internal");
        assert!(
            g.check("sneaky.example.", &[addr("8.8.8.8"), addr("10.0.0.1")])
                .is_err()
        );
        assert!(!g.internal(), "and the proxy did not make the upstream internal");
    }

    #[test]
    fn an_upstream_that_resolves_inside_may_redirect_inside() {
        let g = AddressGuard::new(["Harbor.Corp".to_string()], Vec::new(), false);
        assert!(g.check("minio.corp", &[addr("10.0.0.7")]).is_err(), "not known yet");
        assert!(g.check("harbor.corp", &[addr("10.0.0.5")]).is_ok());
        assert!(g.internal());
        assert!(g.check("minio.corp", &[addr("10.0.0.7")]).is_ok());
        let literal = AddressGuard::new(Vec::new(), Vec::new(), true);
        assert!(literal.check("localhost", &[addr("127.0.0.1")]).is_ok());
    }

    #[test]
    fn proxy_hosts_from_the_environment() {
        let env = |k: &str| match k {
            "HTTPS_PROXY" => Some("http://proxy.corp:3128".to_string()),
            "http_proxy" => Some("10.1.1.1:8080".to_string()),
            _ => None,
        };
        assert_eq!(proxy_hosts(env), vec!["proxy.corp".to_string(), "10.1.1.1".to_string()]);
    }
}
