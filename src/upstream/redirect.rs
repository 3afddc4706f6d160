//! Which redirects an upstream may send berth on: the same scheme or an
//! http → https upgrade, a few hops at most, and never into loopback,
//! link-local or private address ranges unless the upstream itself lives
//! there. reqwest drops `Authorization` (and cookies) by itself whenever a
//! hop changes host or port (`remove_sensitive_headers` in reqwest 0.12's
//! redirect.rs), so a blob sent on to a CDN, as Docker Hub does, is fetched
//! there without berth's token or Basic credentials.
//!
//! Literal addresses and `localhost` are checked here; a name that resolves
//! to an internal address is refused by the resolver (`dns::AddressGuard`),
//! which also learns whether the upstream itself is internal.

use std::net::IpAddr;
use std::sync::Arc;

use reqwest::redirect::Policy;
use url::{Host, Url};

/// Hops followed for one request. Docker Hub and GHCR send a blob GET on
/// once (to the CDN); a handful leaves room for a regional hop.
pub const MAX_REDIRECTS: usize = 5;

/// A redirect berth did not follow; the target is named by origin only, as
/// CDN URLs carry signed credentials in their query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("redirect to {to} refused: {reason}")]
pub struct RedirectRefused {
    pub to: String,
    pub reason: &'static str,
}

/// The policy for an upstream's client; the guard says whether the
/// upstream's own hosts are internal (then internal targets are allowed too).
pub fn policy(guard: Arc<super::dns::AddressGuard>) -> Policy {
    Policy::custom(
        move |attempt| match check(attempt.previous(), attempt.url(), guard.internal()) {
            Ok(()) => attempt.follow(),
            Err(refused) => attempt.error(refused),
        },
    )
}

/// Whether a request that went through `previous` may go on to `next`.
pub fn check(previous: &[Url], next: &Url, internal: bool) -> Result<(), RedirectRefused> {
    let refuse = |reason| {
        Err(RedirectRefused {
            to: origin(next),
            reason,
        })
    };
    if previous.len() > MAX_REDIRECTS {
        return refuse("too many redirects");
    }
    let from = previous.last().map(Url::scheme).unwrap_or("https");
    match (from, next.scheme()) {
        ("https", "https") | ("http", "http") | ("http", "https") => {}
        ("https", "http") => return refuse("downgrade from https to http"),
        _ => return refuse("not an http(s) URL"),
    }
    if !internal && next.host().is_some_and(|h| is_internal(&h)) {
        return refuse("internal address; the upstream is not on one");
    }
    Ok(())
}

/// `scheme://host:port` of a URL, nothing that could carry a secret.
pub fn origin(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port_or_known_default() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

/// Loopback, private, link-local, unspecified or unique-local, or `localhost`.
pub fn is_internal<S: AsRef<str>>(host: &Host<S>) -> bool {
    match host {
        Host::Domain(name) => {
            let name = name.as_ref().trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        Host::Ipv4(ip) => is_internal_ip(IpAddr::V4(*ip)),
        Host::Ipv6(ip) => is_internal_ip(IpAddr::V6(*ip)),
    }
}

pub fn is_internal_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                // 100.64.0.0/10, carrier-grade NAT: not the public internet.
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_internal_ip(IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                v6.is_loopback()
                    || v6.is_unspecified()
                    || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                    || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn schemes_upgrade_but_never_downgrade() {
        let https = [u("https://registry-1.docker.io/v2/x/blobs/sha256:a")];
        let http = [u("http://10.0.0.5:5000/v2/x/blobs/sha256:a")];
        assert!(check(&https, &u("https://cdn.example.net/blob?sig=secret"), false).is_ok());
        let refused = check(&https, &u("http://cdn.example.net/blob?sig=secret"), false).unwrap_err();
        assert_eq!(refused.reason, "downgrade from https to http");
        assert_eq!(refused.to, "http://cdn.example.net:80", "no query, no path");
        assert!(check(&http, &u("https://cdn.example.net/b"), true).is_ok());
        assert!(check(&http, &u("http://10.0.0.6/b"), true).is_ok());
        assert!(check(&https, &u("ftp://cdn.example.net/b"), false).is_err());
    }

    #[test]
    fn hops_are_bounded() {
        let mut previous = vec![u("https://a.example/")];
        for _ in 0..MAX_REDIRECTS {
            assert!(check(&previous, &u("https://b.example/"), false).is_ok());
            previous.push(u("https://b.example/"));
        }
        assert_eq!(
            check(&previous, &u("https://b.example/"), false).unwrap_err().reason,
            "too many redirects"
        );
    }

    #[test]
    fn internal_targets_only_from_internal_upstreams() {
        let public = [u("https://registry-1.docker.io/v2/")];
        for target in [
            "https://127.0.0.1/",
            "https://localhost:8080/",
            "https://10.1.2.3/",
            "https://172.16.0.1/",
            "https://192.168.1.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://[::1]/",
            "https://[fe80::1]/",
            "https://[fd00::1]/",
            "https://[::ffff:127.0.0.1]/",
        ] {
            assert!(check(&public, &u(target), false).is_err(), "{target}");
            assert!(check(&public, &u(target), true).is_ok(), "{target}");
        }
        for target in ["https://8.8.8.8/", "https://[2001:db8::1]/", "https://cdn.example.net/"] {
            assert!(check(&public, &u(target), false).is_ok(), "{target}");
        }
    }
}
