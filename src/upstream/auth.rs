//! Registry authentication toward an upstream: the `WWW-Authenticate`
//! challenge, the Bearer token flow (realm / service / scope), Basic auth, and
//! a token cache keyed by scope. Tokens and passwords never reach a log.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::UpstreamError;
use crate::config::Credentials;

/// Token lifetime the distribution token spec tells clients to assume when the
/// server does not say.
/// The largest token response berth reads.
const TOKEN_RESPONSE_LIMIT: usize = 1 << 20;
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
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
/// Bearer token from the realm (with the credentials when configured).
pub async fn answer(
    http: &reqwest::Client,
    challenge: &Challenge,
    default_scope: &str,
    creds: Option<&Credentials>,
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
            let resp = req.send().await.map_err(UpstreamError::Http)?;
            let status = resp.status();
            if !status.is_success() {
                return Err(UpstreamError::TokenRefused {
                    status: status.as_u16(),
                });
            }
            // Tokens are a few KiB; a token service sending more is broken.
            let bytes = super::read_limited(resp, TOKEN_RESPONSE_LIMIT)
                .await
                .map_err(|e| match e {
                    UpstreamError::Http(e) => UpstreamError::Http(e),
                    _ => UpstreamError::BadChallenge,
                })?;
            let body: TokenResponse = serde_json::from_slice(&bytes).map_err(|_| UpstreamError::BadChallenge)?;
            let token = body.token.or(body.access_token).ok_or(UpstreamError::BadChallenge)?;
            let lifetime = body
                .expires_in
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_TOKEN_LIFETIME)
                .saturating_sub(EXPIRY_MARGIN);
            Ok(Authorization {
                header: format!("Bearer {token}"),
                valid_until: started + lifetime,
            })
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
