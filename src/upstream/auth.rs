//! Registry authentication toward an upstream: the `WWW-Authenticate`
//! challenge, the Bearer token flow (realm / service / scope), Basic auth, and
//! a token cache keyed by scope. Tokens and passwords never reach a log, and
//! go only to the realms the upstream may name: https (http only for an http
//! endpoint) on an endpoint's host and port or one of `auth_hosts`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use url::Url;

use super::UpstreamError;
use crate::config::{AuthHost, Credentials};

/// The largest token response berth reads.
const TOKEN_RESPONSE_LIMIT: usize = 1 << 20;
/// Token lifetime the distribution token spec tells clients to assume when the
/// server does not say.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// The longest berth reuses a token, whatever `expires_in` says: fetching one
/// an hour is nothing, and a huge value must not overflow the clock.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Renew a little early so a token never expires between check and use.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    pub fn parse(header: &str) -> Option<Challenge> {
        let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(params);
        let get = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        })
    }
}

/// `key="value", key2=value2` — values may be quoted and contain commas.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(stripped) = rest.strip_prefix('"') {
            let end = stripped.find('"').unwrap_or(stripped.len());
            value = stripped[..end].to_string();
            rest = stripped.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        out.push((key, value));
        rest = rest.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// Where a token realm may point: the endpoints' hosts (with their ports) and
/// the configured `auth_hosts`.
pub struct RealmPolicy {
    allowed: Vec<AuthHost>,
}

impl RealmPolicy {
    pub fn new(endpoints: &[Url], auth_hosts: &[AuthHost]) -> Self {
        let endpoint_hosts = endpoints.iter().filter_map(|e| {
            Some(AuthHost {
                host: e.host_str()?.to_string(),
                port: e.port_or_known_default(),
            })
        });
        Self {
            allowed: endpoint_hosts.chain(auth_hosts.iter().cloned()).collect(),
        }
    }

    /// May berth fetch a token (with its credentials) from `realm`, named in
    /// a challenge from `endpoint`?
    pub fn check(&self, realm: &Url, endpoint: &Url) -> Result<(), UpstreamError> {
        let refuse = |reason| {
            Err(UpstreamError::RealmRefused {
                realm: super::redirect::origin(realm),
                reason,
            })
        };
        match (realm.scheme(), endpoint.scheme()) {
            ("https", _) | ("http", "http") => {}
            ("http", _) => return refuse("plain http from an https endpoint"),
            _ => return refuse("not an http(s) URL"),
        }
        let (Some(host), Some(port)) = (realm.host_str(), realm.port_or_known_default()) else {
            return refuse("no host");
        };
        let default_port = if realm.scheme() == "https" { 443 } else { 80 };
        let allowed = self
            .allowed
            .iter()
            .any(|a| a.host == host && a.port.unwrap_or(default_port) == port);
        if allowed {
            Ok(())
        } else {
            refuse("host and port are not an endpoint's nor in auth_hosts")
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// The header value to send, plus how long it may be reused.
#[derive(Clone)]
pub struct Authorization {
    pub header: String,
    valid_until: Instant,
}

impl Authorization {
    /// A token fetched at `started`, valid for `expires_in` seconds (the
    /// spec's default when unsaid), renewed a little early, bounded.
    fn bearer(token: &str, started: Instant, expires_in: Option<u64>) -> Self {
        let lifetime = expires_in
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs)
            .min(MAX_TOKEN_LIFETIME)
            .saturating_sub(EXPIRY_MARGIN);
        Self {
            header: format!("Bearer {token}"),
            valid_until: started.checked_add(lifetime).unwrap_or(started),
        }
    }
}

/// Per-upstream cache of authorizations, keyed by repository scope.
#[derive(Default)]
pub struct TokenCache {
    by_scope: Mutex<HashMap<String, Authorization>>,
}

impl TokenCache {
    pub fn get(&self, scope: &str) -> Option<String> {
        let map = self.by_scope.lock().ok()?;
        map.get(scope)
            .filter(|a| a.valid_until > Instant::now())
            .map(|a| a.header.clone())
    }

    pub fn put(&self, scope: &str, auth: Authorization) {
        if let Ok(mut map) = self.by_scope.lock() {
            map.retain(|_, a| a.valid_until > Instant::now());
            map.insert(scope.to_string(), auth);
        }
    }
}

pub fn basic_header(creds: &Credentials) -> String {
    use base64::Engine as _;
    let raw = format!("{}:{}", creds.username, creds.password);
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
}

/// Answer a challenge: Basic with the configured credentials, or fetch a
/// Bearer token from the realm (with the credentials when configured) once
/// `realms` allows it for the `endpoint` that sent the challenge.
pub async fn answer(
    http: &reqwest::Client,
    challenge: &Challenge,
    default_scope: &str,
    creds: Option<&Credentials>,
    realms: &RealmPolicy,
    endpoint: &Url,
) -> Result<Authorization, UpstreamError> {
    match challenge {
        Challenge::Basic => {
            let creds = creds.ok_or(UpstreamError::NoCredentials)?;
            Ok(Authorization {
                header: basic_header(creds),
                // Basic credentials do not expire; re-check hourly anyway so a
                // rotated password file takes effect on restart-free reloads.
                valid_until: Instant::now() + Duration::from_secs(3600),
            })
        }
        Challenge::Bearer { realm, service, scope } => {
            let mut url = url::Url::parse(realm).map_err(|_| UpstreamError::BadChallenge)?;
            realms.check(&url, endpoint)?;
            {
                let mut q = url.query_pairs_mut();
                if let Some(service) = service {
                    q.append_pair("service", service);
                }
                q.append_pair("scope", scope.as_deref().unwrap_or(default_scope));
            }
            let mut req = http.get(url);
            if let Some(creds) = creds {
                req = req.basic_auth(&creds.username, Some(&creds.password));
            }
            let started = Instant::now();
            let resp = req.send().await.map_err(UpstreamError::from_send)?;
            let status = resp.status();
            if !status.is_success() {
                return Err(UpstreamError::TokenRefused {
                    status: status.as_u16(),
                    retry_after: super::response::retry_hint(resp.headers()),
                });
            }
            // Tokens are a few KiB; a token service sending more is broken.
            let bytes = super::response::read_limited(resp, TOKEN_RESPONSE_LIMIT)
                .await
                .map_err(|e| match e {
                    UpstreamError::Http(e) => UpstreamError::Http(e),
                    _ => UpstreamError::BadChallenge,
                })?;
            let body: TokenResponse = serde_json::from_slice(&bytes).map_err(|_| UpstreamError::BadChallenge)?;
            let token = body.token.or(body.access_token).ok_or(UpstreamError::BadChallenge)?;
            Ok(Authorization::bearer(&token, started, body.expires_in))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_challenge() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
    }

    #[test]
    fn parses_scope_with_commas_and_basic() {
        let c = Challenge::parse(r#"Bearer realm="http://x/t", scope="repository:a:pull,push""#);
        assert!(matches!(c, Some(Challenge::Bearer { scope: Some(s), .. }) if s == "repository:a:pull,push"));
        assert_eq!(Challenge::parse(r#"Basic realm="registry""#), Some(Challenge::Basic));
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(Challenge::parse("Bearer service=x"), None);
    }

    #[test]
    fn huge_expires_in_is_capped_not_overflowed() {
        let started = Instant::now();
        for expires_in in [u64::MAX, u64::MAX - 1, u64::MAX / 1000] {
            let a = Authorization::bearer("t", started, Some(expires_in));
            assert!(a.valid_until <= started + MAX_TOKEN_LIFETIME, "{expires_in}");
            assert!(a.valid_until > started + Duration::from_secs(60), "{expires_in}");
        }
        let a = Authorization::bearer("t", started, None);
        assert_eq!(a.valid_until, started + DEFAULT_TOKEN_LIFETIME - EXPIRY_MARGIN);
        let a = Authorization::bearer("t", started, Some(1));
        assert_eq!(a.valid_until, started, "shorter than the margin: not reused");
    }

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn realms_only_on_endpoint_hosts_and_auth_hosts() {
        let hub = RealmPolicy::new(
            &[u("https://registry-1.docker.io")],
            &[AuthHost::parse("auth.docker.io").unwrap()],
        );
        let ep = u("https://registry-1.docker.io/");
        assert!(hub.check(&u("https://auth.docker.io/token"), &ep).is_ok());
        assert!(hub.check(&u("https://registry-1.docker.io/token"), &ep).is_ok());
        for (realm, why) in [
            ("http://auth.docker.io/token", "plain http"),
            ("https://evil.example/token", "host"),
            ("https://auth.docker.io:8443/token", "host and port"),
            ("https://auth.docker.io.evil.example/token", "host"),
            ("file:///etc/passwd", "not an http"),
        ] {
            let e = hub.check(&u(realm), &ep).expect_err(realm);
            assert!(e.to_string().contains(why), "{realm}: {e}");
            assert_eq!(e.cause(), crate::failure::FailureCause::Unauthorized);
        }
        let e = hub
            .check(&u("https://evil.example/t?x=1"), &ep)
            .unwrap_err()
            .to_string();
        assert!(e.contains("https://evil.example:443"), "the realm is named: {e}");

        // An http endpoint may name an http realm on its own host and port
        // only: another port, or `localhost` for 127.0.0.1, is another host.
        let local = RealmPolicy::new(&[u("http://127.0.0.1:5000")], &[]);
        let ep = u("http://127.0.0.1:5000/");
        assert!(local.check(&u("http://127.0.0.1:5000/token"), &ep).is_ok());
        assert!(local.check(&u("http://127.0.0.1:5001/token"), &ep).is_err());
        assert!(local.check(&u("http://localhost:5000/token"), &ep).is_err());
        let listed = RealmPolicy::new(
            &[u("http://127.0.0.1:5000")],
            &[AuthHost::parse("localhost:5001").unwrap()],
        );
        assert!(listed.check(&u("http://localhost:5001/token"), &ep).is_ok());
        assert!(listed.check(&u("http://localhost:5002/token"), &ep).is_err());
    }

    #[test]
    fn expired_tokens_are_not_returned() {
        let cache = TokenCache::default();
        cache.put(
            "s",
            Authorization {
                header: "Bearer t".into(),
                valid_until: Instant::now() - Duration::from_secs(1),
            },
        );
        assert_eq!(cache.get("s"), None);
        cache.put(
            "s",
            Authorization {
                header: "Bearer u".into(),
                valid_until: Instant::now() + Duration::from_secs(60),
            },
        );
        assert_eq!(cache.get("s").as_deref(), Some("Bearer u"));
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(crate::fuzz_config())]

            #[test]
            fn fuzz_challenge_never_panics(
                header in prop_oneof![
                    any::<String>(),
                    "(Bearer|Basic|bearer|BEARER) ?[a-z=\",\\ ]{0,40}",
                    "Bearer (realm|service|scope)=\"?[^\"]{0,10}\"?(, ?(realm|service|scope)=\"?[a-z,=]{0,10}\"?){0,4}",
                ]
            ) {
                if let Some(Challenge::Bearer { realm, service, scope }) = Challenge::parse(&header) {
                    // Every value is a piece of the header.
                    for v in [Some(realm), service, scope].into_iter().flatten() {
                        prop_assert!(header.contains(v.as_str()), "{header:?}: {v:?}");
                    }
                }
            }

            /// A challenge written with quoted values (any text but a quote,
            /// commas and '=' included), in any order, parses back to itself.
            #[test]
            fn fuzz_challenge_round_trips(
                realm in "[^\"]{0,40}",
                service in proptest::option::of("[^\"]{0,20}"),
                scope in proptest::option::of("[a-z:/,=_.-]{0,40}"),
                reversed in any::<bool>(),
                sep in prop_oneof![Just(","), Just(", "), Just(" , ")],
            ) {
                let mut params = vec![format!("realm=\"{realm}\"")];
                params.extend(service.iter().map(|s| format!("service=\"{s}\"")));
                params.extend(scope.iter().map(|s| format!("scope=\"{s}\"")));
                if reversed {
                    params.reverse();
                }
                let header = format!("Bearer {}", params.join(sep));
                prop_assert_eq!(Challenge::parse(&header), Some(Challenge::Bearer { realm, service, scope }));
            }
        }
    }
}
