//! Client access control: who is asking (`Identity`), and whether they may
//! ask this (`Authenticator::authorize`, one decision per request, made before
//! any cache or upstream work). Pure policy over what the server hands it (the
//! client address, the `Authorization` header, a verified certificate's common
//! name, and what is asked for); it answers a `Decision` and never builds a
//! response: the server maps it to 401 / 403 / 429 and the failure causes.
//! It calls nothing above it and imports no config type; `config` builds its
//! values from the types here.
//!
//! The order, first "no" wins: `allow_networks`, then identity, then the
//! per-client rate limit, then the `[[access]]` rules (or `admins`). A
//! replica of the same fleet (`REPLICA_USER` with the cluster secret) is
//! let through after `allow_networks`: the replica its client asked already
//! made that client's decision.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use thiserror::Error;

use crate::failure::FailureCause;

mod basic;
mod credential_cache;
pub mod htpasswd;
pub mod networks;
pub mod ratelimit;
pub mod rules;

pub use htpasswd::{Htpasswd, HtpasswdFile};
pub use networks::Network;
pub use ratelimit::RateLimiter;
pub use rules::{AccessRule, IdentityPattern, RepoPattern};

/// The `WWW-Authenticate` value of every 401 berth answers itself.
pub const CHALLENGE: &str = "Basic realm=\"berth\"";

/// The user name replicas present to each other, with the cluster secret as
/// its password. With a cluster secret configured, no htpasswd user can
/// sign in under it.
pub const REPLICA_USER: &str = "berth-replica";

/// Who a request comes from. `Display` is the form logs and rules use:
/// `alice`, `cn:node-1`, `anonymous`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// An htpasswd user whose password verified.
    User(String),
    /// The common name of a client certificate rustls verified.
    Cert(String),
    Anonymous,
    /// Another replica of this fleet, by the cluster secret.
    Replica,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::User(u) => f.write_str(u),
            Identity::Cert(cn) => write!(f, "cn:{cn}"),
            Identity::Anonymous => f.write_str("anonymous"),
            Identity::Replica => f.write_str(REPLICA_USER),
        }
    }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// `GET /v2/`: needs only an identity; its 401 is how clients learn to log in.
    Base,
    /// `/metrics`, `/_berth/*`, the status page, when served on `listen`
    /// (on `admin_listen` the server does not ask).
    Admin,
    /// A manifest, blob, tag list or referrers request, HEAD as GET.
    /// `repo` is the path within the upstream (`library/busybox`).
    Repository { upstream: &'a str, repo: &'a str },
}

/// The answer for one request. Reasons name the identity and what was asked,
/// never a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed(Identity),
    /// 401 `UNAUTHORIZED` with `WWW-Authenticate: CHALLENGE`; cause
    /// `client_unauthorized`. Also the answer when *anonymous* is denied a
    /// repository (or the admin surface): a 403 would stop a client that
    /// has credentials from ever sending them, since clients send them only
    /// when challenged.
    Unauthenticated {
        reason: String,
    },
    /// 403 `DENIED`; cause `client_forbidden`.
    Forbidden {
        identity: Identity,
        reason: String,
    },
    /// The client address is outside `allow_networks`: 403 `DENIED`, cause
    /// `client_forbidden` (credentials would not help, so no challenge).
    NetworkDenied,
    /// 429 `TOOMANYREQUESTS` with `Retry-After: retry_after` (seconds);
    /// cause `client_rate_limited`.
    RateLimited {
        identity: Identity,
        retry_after: u64,
    },
}

impl Decision {
    /// The failure cause of a refusal; `None` when allowed.
    pub fn cause(&self) -> Option<FailureCause> {
        match self {
            Decision::Allowed(_) => None,
            Decision::Unauthenticated { .. } => Some(FailureCause::ClientUnauthorized),
            Decision::Forbidden { .. } | Decision::NetworkDenied => Some(FailureCause::ClientForbidden),
            Decision::RateLimited { .. } => Some(FailureCause::ClientRateLimited),
        }
    }
}

/// `[auth]`, validated. Its presence turns access control on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// Read (and checked) when the config is loaded, re-read on change.
    pub htpasswd: Option<PathBuf>,
    /// Empty: any address.
    pub allow_networks: Vec<Network>,
    /// Clients without credentials act as `Identity::Anonymous`.
    pub anonymous: bool,
    /// Who may use the admin surface when it is served on `listen`.
    pub admins: Vec<IdentityPattern>,
}

#[derive(Debug, Error)]
#[error("auth.htpasswd: {}", .0.join("; "))]
pub struct StartError(pub Vec<String>);

/// The decision maker, built once from the config.
#[derive(Debug)]
pub struct Authenticator {
    /// `None`: `[auth]` absent, everyone is anonymous and allowed.
    policy: Option<Policy>,
    /// Shared with the authenticator a reload builds, so clients keep their buckets.
    limiter: Option<std::sync::Arc<RateLimiter>>,
    /// `[cluster] secret_file`'s contents: what a replica's password is.
    replica_secret: Option<std::sync::Arc<str>>,
}

#[derive(Debug)]
struct Policy {
    networks: Vec<Network>,
    htpasswd: Option<Htpasswd>,
    anonymous: bool,
    admins: Vec<IdentityPattern>,
    rules: Vec<AccessRule>,
}

impl Authenticator {
    /// From `[auth]` (`None`: off), `[[access]]`, and the per-client rate
    /// (`[server] client_requests_per_second`, 0 = none) with its burst.
    /// Reads the htpasswd file.
    pub fn new(
        auth: Option<&AuthConfig>,
        access: &[AccessRule],
        requests_per_second: u32,
        burst: u32,
    ) -> Result<Authenticator, StartError> {
        Ok(Authenticator {
            policy: Policy::new(auth, access)?,
            limiter: RateLimiter::new(requests_per_second, burst).map(std::sync::Arc::new),
            replica_secret: None,
        })
    }

    /// Let replicas presenting `secret` (as `REPLICA_USER`'s password) in.
    pub fn with_replica_secret(mut self, secret: Option<&str>) -> Authenticator {
        self.replica_secret = secret.map(std::sync::Arc::from);
        self
    }

    /// A new authenticator from reloaded `[auth]` and `[[access]]` (the
    /// htpasswd file read now), keeping this one's per-client rate limits
    /// and their buckets.
    pub fn reloaded(&self, auth: Option<&AuthConfig>, access: &[AccessRule]) -> Result<Authenticator, StartError> {
        Ok(Authenticator {
            policy: Policy::new(auth, access)?,
            limiter: self.limiter.clone(),
            replica_secret: self.replica_secret.clone(),
        })
    }

    /// Users in the htpasswd file as last read (0 without one).
    pub fn users(&self) -> usize {
        self.policy
            .as_ref()
            .and_then(|p| p.htpasswd.as_ref())
            .map_or(0, Htpasswd::users)
    }
}

impl Policy {
    fn new(auth: Option<&AuthConfig>, access: &[AccessRule]) -> Result<Option<Policy>, StartError> {
        let policy = match auth {
            None => None,
            Some(a) => Some(Policy {
                networks: a.allow_networks.clone(),
                htpasswd: a
                    .htpasswd
                    .as_deref()
                    .map(Htpasswd::open)
                    .transpose()
                    .map_err(StartError)?,
                anonymous: a.anonymous,
                admins: a.admins.clone(),
                rules: access.to_vec(),
            }),
        };
        Ok(policy)
    }
}

impl Authenticator {
    /// Whether `[auth]` is configured (else every request is anonymous).
    pub fn is_on(&self) -> bool {
        self.policy.is_some()
    }

    /// The one decision for a request from `client`. `authorization` is the
    /// `Authorization` header as sent; `cert_cn` the common name of a client
    /// certificate the TLS layer verified against `client_ca`.
    pub async fn authorize(
        &self,
        client: IpAddr,
        authorization: Option<&str>,
        cert_cn: Option<&str>,
        target: Target<'_>,
    ) -> Decision {
        let Some(policy) = &self.policy else {
            return self
                .limit(Identity::Anonymous, client)
                .unwrap_or(Decision::Allowed(Identity::Anonymous));
        };
        if !policy.networks.is_empty() && !networks::any_contains(&policy.networks, client) {
            return Decision::NetworkDenied;
        }
        if let Some(decision) = self.replica(authorization, target) {
            return decision;
        }
        let identity = match policy.identify(authorization, cert_cn).await {
            Ok(identity) => identity,
            Err(reason) => return Decision::Unauthenticated { reason },
        };
        if let Some(limited) = self.limit(identity.clone(), client) {
            return limited;
        }
        policy.decide(identity, target)
    }

    /// Whether a request may ask what replicas ask only of each other
    /// (`cluster::IN_USE_PATH`): with a cluster secret, only a replica
    /// presenting it; without one (and so without `[auth]`), whoever may
    /// pull.
    pub fn lets_replica(&self, authorization: Option<&str>) -> bool {
        let Some(secret) = self.replica_secret.as_deref() else {
            return self.policy.is_none();
        };
        authorization
            .and_then(|a| basic::parse(a).ok())
            .is_some_and(|c| c.user == REPLICA_USER && same_secret(c.password.as_bytes(), secret.as_bytes()))
    }

    /// The decision for a request presenting `REPLICA_USER` while a cluster
    /// secret is configured; None for every other request. Replicas read
    /// repositories (never the admin surface) and are not rate limited.
    fn replica(&self, authorization: Option<&str>, target: Target<'_>) -> Option<Decision> {
        let secret = self.replica_secret.as_deref()?;
        let creds = basic::parse(authorization?).ok()?;
        if creds.user != REPLICA_USER {
            return None;
        }
        if !same_secret(creds.password.as_bytes(), secret.as_bytes()) {
            return Some(Decision::Unauthenticated {
                reason: format!("user {REPLICA_USER:?}: not this fleet's cluster secret"),
            });
        }
        Some(match target {
            Target::Admin => Decision::Forbidden {
                identity: Identity::Replica,
                reason: "replicas are not let onto the admin surface".into(),
            },
            Target::Base | Target::Repository { .. } => Decision::Allowed(Identity::Replica),
        })
    }

    /// The refusal when `identity` is over its rate. Anonymous clients are
    /// counted by address, so one busy node does not slow every other.
    fn limit(&self, identity: Identity, client: IpAddr) -> Option<Decision> {
        let limiter = self.limiter.as_ref()?;
        let key = match &identity {
            Identity::Anonymous => client.to_string(),
            named => named.to_string(),
        };
        let retry_after = limiter.check(&key).err()?;
        Some(Decision::RateLimited { identity, retry_after })
    }
}

impl Policy {
    /// Basic, if sent, must verify (a wrong password is never quietly
    /// anonymous, and it names the identity when both it and a certificate
    /// are presented); then the certificate; then anonymous, if allowed.
    async fn identify(&self, authorization: Option<&str>, cert_cn: Option<&str>) -> Result<Identity, String> {
        if let Some(header) = authorization {
            let creds = basic::parse(header).map_err(|e| e.reason().to_string())?;
            let Some(htpasswd) = &self.htpasswd else {
                return Err(format!("user {:?}: no htpasswd users are configured", creds.user));
            };
            return if htpasswd.verify(&creds.user, &creds.password).await {
                Ok(Identity::User(creds.user))
            } else {
                Err(format!("user {:?}: unknown user or wrong password", creds.user))
            };
        }
        match cert_cn {
            Some(cn) if !cn.is_empty() => Ok(Identity::Cert(cn.to_string())),
            _ if self.anonymous => Ok(Identity::Anonymous),
            _ => Err("credentials required: docker login to berth, or a client certificate".into()),
        }
    }

    fn decide(&self, identity: Identity, target: Target<'_>) -> Decision {
        let refusal = match target {
            Target::Base => None,
            Target::Admin => (!self.admins.iter().any(|p| p.matches(&identity)))
                .then(|| ("the admin surface".to_string(), "[auth] admins does not list")),
            Target::Repository { upstream, repo } => rules::first_match(&self.rules, &identity, upstream, repo)
                .is_none()
                .then(|| (format!("{upstream}/{repo}"), "no [[access]] rule allows")),
        };
        match (refusal, &identity) {
            (None, _) => Decision::Allowed(identity),
            (Some((what, _)), Identity::Anonymous) => Decision::Unauthenticated {
                reason: format!("anonymous clients may not pull {what}: log in"),
            },
            (Some((what, why)), _) => Decision::Forbidden {
                reason: format!("{why} {identity} for {what}"),
                identity,
            },
        }
    }
}

/// Equal secrets, in a time that depends only on their lengths.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn basic(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    fn rule(identities: &[&str], repositories: &[&str]) -> AccessRule {
        AccessRule {
            identities: identities.iter().map(|i| IdentityPattern::parse(i).unwrap()).collect(),
            upstreams: None,
            repositories: Some(repositories.iter().map(|r| RepoPattern::parse(r).unwrap()).collect()),
        }
    }

    const REPO: Target<'static> = Target::Repository {
        upstream: "docker.io",
        repo: "library/busybox",
    };
    const PRIVATE: Target<'static> = Target::Repository {
        upstream: "docker.io",
        repo: "private/app",
    };

    /// `[auth]` with alice:right in an htpasswd file, 10.0.0.0/8 and fd00::/8 allowed.
    struct Setup {
        _dir: tempfile::TempDir,
        auth: AuthConfig,
        rules: Vec<AccessRule>,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, format!("alice:{}\n", bcrypt::hash("right", 4).unwrap())).unwrap();
        Setup {
            auth: AuthConfig {
                htpasswd: Some(path),
                allow_networks: vec![
                    Network::parse("10.0.0.0/8").unwrap(),
                    Network::parse("fd00::/8").unwrap(),
                ],
                anonymous: false,
                admins: vec![IdentityPattern::parse("cn:ops-*").unwrap()],
            },
            rules: vec![
                rule(&["alice", "cn:node-*"], &["library/*"]),
                rule(&["anonymous"], &["public/**"]),
            ],
            _dir: dir,
        }
    }

    impl Setup {
        fn build(&self, rate: u32, burst: u32) -> Authenticator {
            Authenticator::new(Some(&self.auth), &self.rules, rate, burst).unwrap()
        }
    }

    fn forbidden(d: &Decision) -> bool {
        matches!(d, Decision::Forbidden { .. })
    }

    #[tokio::test]
    async fn a_replica_with_the_cluster_secret_reads_every_repository_and_nothing_else() {
        let s = setup();
        let secret = "0123456789abcdef0123456789abcdef";
        let a = s.build(1, 1).with_replica_secret(Some(secret));
        let (inside, outside) = (ip("10.1.2.3"), ip("192.0.2.1"));
        let replica = basic(REPLICA_USER, secret);
        // No [[access]] rule names it, and the rate limit (1/s) does not count it.
        for _ in 0..3 {
            let d = a.authorize(inside, Some(&replica), None, PRIVATE).await;
            assert_eq!(d, Decision::Allowed(Identity::Replica));
        }
        assert!(forbidden(
            &a.authorize(inside, Some(&replica), None, Target::Admin).await
        ));
        assert_eq!(
            a.authorize(outside, Some(&replica), None, REPO).await,
            Decision::NetworkDenied,
            "allow_networks still applies"
        );
        let wrong = basic(REPLICA_USER, "0123456789abcdef0123456789abcdeX");
        assert!(unauthenticated(&a.authorize(inside, Some(&wrong), None, REPO).await));
        assert!(unauthenticated(
            &a.authorize(inside, Some(&basic(REPLICA_USER, "")), None, REPO).await
        ));
        // Without a cluster secret the name is an htpasswd user like any other.
        let plain = s.build(0, 0);
        assert!(unauthenticated(
            &plain.authorize(inside, Some(&replica), None, REPO).await
        ));
        assert_eq!(Identity::Replica.to_string(), REPLICA_USER);
        assert!(same_secret(b"abc", b"abc") && !same_secret(b"abc", b"abd") && !same_secret(b"abc", b"abcd"));
    }

    fn unauthenticated(d: &Decision) -> bool {
        matches!(d, Decision::Unauthenticated { .. })
    }

    #[tokio::test]
    async fn without_auth_everyone_is_anonymous_and_allowed() {
        let a = Authenticator::new(None, &[], 0, 0).unwrap();
        assert!(!a.is_on());
        for target in [Target::Base, Target::Admin, REPO] {
            let d = a
                .authorize(ip("203.0.113.1"), Some("Basic garbage"), None, target)
                .await;
            assert_eq!(d, Decision::Allowed(Identity::Anonymous), "{target:?}");
        }
    }

    #[tokio::test]
    async fn without_auth_the_rate_limit_is_per_address() {
        let a = Authenticator::new(None, &[], 1, 2).unwrap();
        let (x, y) = (ip("10.0.0.1"), ip("10.0.0.2"));
        assert!(matches!(a.authorize(x, None, None, REPO).await, Decision::Allowed(_)));
        assert!(matches!(a.authorize(x, None, None, REPO).await, Decision::Allowed(_)));
        let d = a.authorize(x, None, None, REPO).await;
        assert_eq!(
            d,
            Decision::RateLimited {
                identity: Identity::Anonymous,
                retry_after: 1
            }
        );
        assert_eq!(d.cause(), Some(FailureCause::ClientRateLimited));
        assert!(matches!(a.authorize(y, None, None, REPO).await, Decision::Allowed(_)));
    }

    #[tokio::test]
    async fn networks_come_first() {
        let s = setup();
        let a = s.build(0, 0);
        let right = basic("alice", "right");
        let d = a.authorize(ip("192.0.2.1"), Some(&right), None, Target::Base).await;
        assert_eq!(d, Decision::NetworkDenied);
        assert_eq!(d.cause(), Some(FailureCause::ClientForbidden));
        // Before credentials are even looked at.
        let d = a.authorize(ip("192.0.2.1"), Some("Bearer x"), None, REPO).await;
        assert_eq!(d, Decision::NetworkDenied);
        // Mapped IPv4 and IPv6 clients inside.
        for client in ["::ffff:10.1.1.1", "fd00::9", "10.2.3.4"] {
            let d = a.authorize(ip(client), Some(&right), None, REPO).await;
            assert_eq!(d, Decision::Allowed(Identity::User("alice".into())), "{client}");
        }
    }

    #[tokio::test]
    async fn identity_order() {
        let s = setup();
        let a = s.build(0, 0);
        let c = ip("10.0.0.1");
        // No credentials, anonymous off: 401 even on /v2/.
        let d = a.authorize(c, None, None, Target::Base).await;
        assert!(unauthenticated(&d), "{d:?}");
        assert_eq!(d.cause(), Some(FailureCause::ClientUnauthorized));
        // A wrong password is 401, with a certificate too, and the reason has no password.
        for cn in [None, Some("node-1")] {
            let d = a.authorize(c, Some(&basic("alice", "hunter2")), cn, Target::Base).await;
            let Decision::Unauthenticated { reason } = &d else {
                panic!("{d:?}")
            };
            assert!(reason.contains("alice") && !reason.contains("hunter2"), "{reason}");
        }
        let d = a.authorize(c, Some("Bearer abc"), None, Target::Base).await;
        assert!(unauthenticated(&d), "{d:?}");
        // The certificate identifies when no header is sent.
        let d = a.authorize(c, None, Some("node-1"), REPO).await;
        assert_eq!(d, Decision::Allowed(Identity::Cert("node-1".into())));
        // Verified Basic names the identity even beside a certificate.
        let d = a
            .authorize(c, Some(&basic("alice", "right")), Some("node-1"), REPO)
            .await;
        assert_eq!(d, Decision::Allowed(Identity::User("alice".into())));
        // An empty common name is no certificate.
        assert!(unauthenticated(&a.authorize(c, None, Some(""), Target::Base).await));
    }

    #[tokio::test]
    async fn anonymous_when_allowed_and_a_certificate_beats_it() {
        let mut s = setup();
        s.auth.anonymous = true;
        let a = s.build(0, 0);
        let c = ip("10.0.0.1");
        let public = Target::Repository {
            upstream: "docker.io",
            repo: "public/x/y",
        };
        assert_eq!(
            a.authorize(c, None, None, Target::Base).await,
            Decision::Allowed(Identity::Anonymous)
        );
        assert_eq!(
            a.authorize(c, None, None, public).await,
            Decision::Allowed(Identity::Anonymous)
        );
        // Anonymous denied a repository is challenged, so a client with credentials sends them.
        assert!(unauthenticated(&a.authorize(c, None, None, REPO).await));
        // A certificate beats anonymous: node-1 may pull library/*, not public/**.
        assert!(matches!(
            a.authorize(c, None, Some("node-1"), REPO).await,
            Decision::Allowed(_)
        ));
        assert!(forbidden(&a.authorize(c, None, Some("node-1"), public).await));
        // And a wrong password is never quietly anonymous.
        assert!(unauthenticated(
            &a.authorize(c, Some(&basic("alice", "nope")), None, public).await
        ));
    }

    #[tokio::test]
    async fn rules_and_admins() {
        let s = setup();
        let a = s.build(0, 0);
        let c = ip("10.0.0.1");
        let alice = basic("alice", "right");
        let d = a.authorize(c, Some(&alice), None, PRIVATE).await;
        let Decision::Forbidden { identity, reason } = &d else {
            panic!("{d:?}")
        };
        assert_eq!(identity, &Identity::User("alice".into()));
        assert!(
            reason.contains("alice") && reason.contains("docker.io/private/app"),
            "{reason}"
        );
        assert_eq!(d.cause(), Some(FailureCause::ClientForbidden));
        // /v2/ needs only an identity.
        assert!(matches!(
            a.authorize(c, None, Some("web-9"), Target::Base).await,
            Decision::Allowed(_)
        ));
        assert!(forbidden(&a.authorize(c, None, Some("web-9"), REPO).await));
        // The admin surface is for `admins` only.
        assert!(forbidden(&a.authorize(c, Some(&alice), None, Target::Admin).await));
        assert_eq!(
            a.authorize(c, None, Some("ops-1"), Target::Admin).await,
            Decision::Allowed(Identity::Cert("ops-1".into()))
        );
    }

    #[tokio::test]
    async fn the_rate_limit_comes_after_identity_and_before_rules() {
        let s = setup();
        let a = s.build(1, 1);
        let c = ip("10.0.0.1");
        let alice = basic("alice", "right");
        // Unauthenticated requests do not spend alice's tokens.
        assert!(unauthenticated(&a.authorize(c, None, None, REPO).await));
        assert!(unauthenticated(&a.authorize(c, None, None, REPO).await));
        // A denied request spends one: the limit is checked before the rules.
        assert!(forbidden(&a.authorize(c, Some(&alice), None, PRIVATE).await));
        let d = a.authorize(c, Some(&alice), None, REPO).await;
        assert!(
            matches!(d, Decision::RateLimited { ref identity, .. } if identity.to_string() == "alice"),
            "{d:?}"
        );
        // Keyed by identity, not address: node-1 from the same address is not limited.
        assert!(matches!(
            a.authorize(c, None, Some("node-1"), REPO).await,
            Decision::Allowed(_)
        ));
    }

    #[test]
    fn identities_display_as_logged() {
        assert_eq!(Identity::User("alice".into()).to_string(), "alice");
        assert_eq!(Identity::Cert("node-1".into()).to_string(), "cn:node-1");
        assert_eq!(Identity::Anonymous.to_string(), "anonymous");
    }

    #[test]
    fn an_unreadable_htpasswd_is_a_start_error() {
        let auth = AuthConfig {
            htpasswd: Some("/nonexistent/htpasswd".into()),
            ..AuthConfig::default()
        };
        let e = Authenticator::new(Some(&auth), &[], 0, 0).unwrap_err().to_string();
        assert!(e.starts_with("auth.htpasswd: cannot read /nonexistent/htpasswd"), "{e}");
    }
}
