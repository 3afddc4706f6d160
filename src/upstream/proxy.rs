//! Whether a request to an upstream goes through an HTTP proxy, decided the
//! way reqwest decides it (HTTPS_PROXY / HTTP_PROXY / ALL_PROXY, excluded by
//! NO_PROXY), so that a failure to connect can be blamed on the proxy
//! (`proxy_error`) rather than on the registry.

use url::Url;

/// Read the proxy environment through `env` (so tests can inject one).
pub fn is_proxied(url: &Url, env: impl Fn(&str) -> Option<String>) -> bool {
    let var = |name: &str| {
        env(name)
            .or_else(|| env(&name.to_ascii_lowercase()))
            .filter(|v| !v.trim().is_empty())
    };
    let proxy = match url.scheme() {
        "https" => var("HTTPS_PROXY"),
        _ => var("HTTP_PROXY"),
    }
    .or_else(|| var("ALL_PROXY"));
    if proxy.is_none() {
        return false;
    }
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    let no_proxy = var("NO_PROXY").unwrap_or_default();
    !no_proxy
        .split(',')
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .any(|entry| excludes(&entry, &host))
}

/// One NO_PROXY entry: `*`, an exact host or IP, a domain suffix (`.example.com`
/// or `example.com`, both matching subdomains), or an IP network in CIDR form.
fn excludes(entry: &str, host: &str) -> bool {
    if entry == "*" {
        return true;
    }
    if let (Some((net, bits)), Ok(ip)) = (entry.split_once('/'), host.parse::<std::net::IpAddr>()) {
        return in_network(net, bits, ip);
    }
    let domain = entry.trim_start_matches('.');
    host == domain || host.ends_with(&format!(".{domain}"))
}

fn in_network(net: &str, bits: &str, ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let (Ok(net), Ok(bits)) = (net.parse::<IpAddr>(), bits.parse::<u32>()) else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) if bits <= 32 => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) if bits <= 128 => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn decides_like_reqwest() {
        let hub = Url::parse("https://registry-1.docker.io/v2/").unwrap();
        let local = Url::parse("http://127.0.0.1:5000/v2/").unwrap();
        let vars = [
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("NO_PROXY", "127.0.0.1,.internal"),
        ];
        assert!(is_proxied(&hub, env(&vars)));
        assert!(!is_proxied(&local, env(&vars)), "http URL, only HTTPS_PROXY set");
        assert!(!is_proxied(&Url::parse("https://reg.internal/").unwrap(), env(&vars)));
        assert!(!is_proxied(&Url::parse("https://internal/").unwrap(), env(&vars)));
        assert!(!is_proxied(&hub, env(&[])));
        assert!(!is_proxied(
            &hub,
            env(&[("https_proxy", "http://p:1"), ("no_proxy", "*")])
        ));
        assert!(!is_proxied(
            &Url::parse("https://10.1.2.3/").unwrap(),
            env(&[("ALL_PROXY", "http://p:1"), ("NO_PROXY", "10.0.0.0/8")])
        ));
        assert!(is_proxied(
            &Url::parse("https://11.1.2.3/").unwrap(),
            env(&[("ALL_PROXY", "http://p:1"), ("NO_PROXY", "10.0.0.0/8")])
        ));
    }
}
