//! The steps for each endpoint of an upstream, in the order a pull meets
//! them: DNS and TCP (or the proxy, when HTTPS_PROXY / HTTP_PROXY applies to
//! the endpoint: then the proxy resolves and connects), TLS, the `/v2/` ping,
//! the auth challenge, a token with the configured credentials, and the
//! rate-limit headroom on a manifest HEAD.
//!
//! The proxy and TLS are not probed with a client of doctor's own: the
//! `/v2/` request goes through berth's upstream client (its roots, its proxy
//! rules), and a failure is shown at the step its cause names.

use std::time::Instant;

use super::{Outcome, Step, Steps};
use crate::failure::FailureCause;
use crate::image_ref::ImageRef;
use crate::reference::{Reference, RepoName, Tag};
use crate::routing::DOCKER_HUB;
use crate::upstream::{Challenge, Ping, ProbeError, Upstream, UpstreamError};

/// The repository Docker documents for reading Hub's rate limit without
/// spending it (a HEAD is not counted).
const HUB_RATELIMIT_PROBE: &str = "ratelimitpreview/test";
/// Under this share of the limit left, the headroom is a warning.
const LOW_HEADROOM_PERCENT: u64 = 10;

/// Check every endpoint of `upstream`; `image` is the first IMAGE asked of
/// it (its repository scopes the token and the rate-limit HEAD). Returns the
/// index of the first endpoint where every step passed.
pub async fn check(upstream: &Upstream, image: Option<&ImageRef>, out: &mut Vec<Step>) -> Option<usize> {
    let mut healthy = None;
    for (index, endpoint) in upstream.endpoints().iter().enumerate() {
        let mut s = Steps::new(format!(
            "upstream {} {}",
            upstream.name,
            endpoint.as_str().trim_end_matches('/')
        ));
        if upstream.is_offline() {
            s.push(
                "endpoint",
                Outcome::Info,
                None,
                "offline = true: berth never contacts it".into(),
                Instant::now(),
            );
            out.extend(s.into_steps());
            continue;
        }
        let passed = endpoint_steps(upstream, index, image, &mut s).await;
        if passed && healthy.is_none() {
            healthy = Some(index);
        }
        out.extend(s.into_steps());
    }
    healthy
}

/// The steps of one endpoint; true when none failed.
async fn endpoint_steps(upstream: &Upstream, index: usize, image: Option<&ImageRef>, s: &mut Steps) -> bool {
    let endpoint = &upstream.endpoints()[index];
    let https = endpoint.scheme() == "https";
    let proxied = upstream.is_proxied(index);
    let mut rest: Vec<&str> = Vec::new();
    if proxied {
        rest.push("proxy");
    } else {
        rest.extend(["dns", "tcp"]);
    }
    if https {
        rest.push("tls");
    }
    rest.extend(["ping /v2/", "auth challenge", "token", "rate limit"]);
    let mut done = 0;
    let fail = |s: &mut Steps, done: usize, step: &str, e: &ProbeError, started: Instant| {
        s.fail(step, e.cause(), e.to_string(), started);
        s.skip_all(&rest[done + 1..], &format!("not tried: {step} failed"));
    };

    let (host, port) = (
        endpoint.host_str().unwrap_or_default(),
        endpoint.port_or_known_default(),
    );
    if !proxied {
        let started = Instant::now();
        let addrs = match upstream
            .probe_resolve(host.trim_start_matches('[').trim_end_matches(']'))
            .await
        {
            Ok(a) => a,
            Err(e) => {
                fail(s, done, "dns", &e, started);
                return false;
            }
        };
        let detail = if endpoint.host().is_some_and(|h| !matches!(h, url::Host::Domain(_))) {
            format!("{host} is an address: nothing to resolve")
        } else {
            let shown: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
            format!("{host}: {}", shown.join(", "))
        };
        s.pass("dns", detail, started);
        done += 1;
        let started = Instant::now();
        match upstream.probe_connect(&addrs, port.unwrap_or(443)).await {
            Ok(addr) => s.pass("tcp", format!("connected to {addr}"), started),
            Err(e) => {
                fail(s, done, "tcp", &e, started);
                return false;
            }
        }
        done += 1;
    }

    let started = Instant::now();
    let ping = upstream.probe_ping(index).await;
    let cause = ping.as_ref().err().map(ProbeError::cause);
    if proxied {
        if let (Some(FailureCause::ProxyError), Err(e)) = (cause, &ping) {
            fail(s, done, "proxy", e, started);
            return false;
        }
        s.pass("proxy", format!("reached {host} through the proxy"), started);
        done += 1;
    }
    if https {
        if let (Some(FailureCause::TlsError), Err(e)) = (cause, &ping) {
            fail(s, done, "tls", e, started);
            return false;
        }
        s.pass("tls", "handshake completed, certificate trusted".into(), started);
        done += 1;
    }
    let ping = match ping {
        Ok(p) => p,
        Err(e) => {
            fail(s, done, "ping /v2/", &e, started);
            return false;
        }
    };
    s.pass("ping /v2/", format!("answered {}", ping.status), started);
    done += 1;

    let started = Instant::now();
    let Some(challenge) = challenge_step(&ping, s, started) else {
        let e = ProbeError::Upstream(UpstreamError::BadChallenge);
        fail(s, done, "auth challenge", &e, started);
        return false;
    };
    done += 1;
    let started = Instant::now();
    if let Some(challenge) = challenge {
        let scope = image.map_or_else(
            || "registry:catalog:*".to_string(),
            |i| format!("repository:{}:pull", i.repo),
        );
        let who = match &upstream.config.credentials {
            Some(c) => format!("as {}", c.username),
            None => "anonymously".to_string(),
        };
        if let Err(e) = upstream.probe_login(index, &challenge, &scope).await {
            s.fail("token", e.cause(), format!("{e} (asked {who})"), started);
            s.skip_all(&rest[done + 1..], "not tried: token failed");
            return false;
        }
        let what = match challenge {
            Challenge::Basic => "Basic credentials accepted",
            Challenge::Bearer { .. } => "token issued",
        };
        s.pass("token", format!("{what} {who}"), started);
    } else {
        s.pass(
            "token",
            "not needed: the endpoint asks for no authentication".into(),
            started,
        );
    }
    rate_limit_step(upstream, index, image, s).await
}

/// The challenge step: `Some(None)` no authentication, `Some(Some(c))` a
/// challenge to answer, `None` a 401 without one berth can answer.
fn challenge_step(ping: &Ping, s: &mut Steps, started: Instant) -> Option<Option<Challenge>> {
    match (&ping.challenge, ping.status) {
        (None, 401) => None,
        (None, _) => {
            s.pass("auth challenge", "none: anonymous access".into(), started);
            Some(None)
        }
        (Some(c), _) => {
            let detail = match c {
                Challenge::Basic => "Basic".to_string(),
                Challenge::Bearer { realm, service, .. } => {
                    format!("Bearer realm={realm} service={}", service.as_deref().unwrap_or("-"))
                }
            };
            s.pass("auth challenge", detail, started);
            Some(Some(c.clone()))
        }
    }
}

async fn rate_limit_step(upstream: &Upstream, index: usize, image: Option<&ImageRef>, s: &mut Steps) -> bool {
    let started = Instant::now();
    let target = match image {
        Some(i) => Some((i.repo.clone(), i.reference.clone())),
        None if upstream.name == DOCKER_HUB => RepoName::parse(HUB_RATELIMIT_PROBE)
            .ok()
            .zip(Tag::parse("latest").ok().map(Reference::Tag)),
        None => None,
    };
    let Some((repo, reference)) = target else {
        s.push(
            "rate limit",
            Outcome::Info,
            None,
            "not checked: give an IMAGE of this upstream to HEAD".into(),
            started,
        );
        return true;
    };
    match upstream.probe_manifest_head(index, &repo, &reference).await {
        Ok(head) => {
            let (result, cause, detail) = headroom(head.ratelimit.as_deref());
            s.push(
                "rate limit",
                result,
                cause,
                format!("HEAD {repo}:{reference}: {detail}"),
                started,
            );
            result != Outcome::Fail
        }
        Err(e) if e.cause() == FailureCause::RateLimited => {
            let (headers, retry_after) = e.ratelimit();
            let (_, _, left) = headroom(headers.as_deref());
            let retry = retry_after.map(|r| format!("; retry after {r} s")).unwrap_or_default();
            s.fail(
                "rate limit",
                FailureCause::RateLimited,
                format!("{e}; {left}{retry}"),
                started,
            );
            false
        }
        // A missing tag is the image steps' to report; here the answer came.
        Err(e) if e.cause().category() == crate::failure::Category::Reference => {
            s.push(
                "rate limit",
                Outcome::Info,
                None,
                format!("HEAD {repo}:{reference}: {e} (no headroom to read)"),
                started,
            );
            true
        }
        Err(e) => {
            s.fail("rate limit", e.cause(), e.to_string(), started);
            false
        }
    }
}

/// Judge the `ratelimit-*` headers (`ratelimit-limit=100;w=21600;
/// ratelimit-remaining=76;w=21600`): none left fails, little left warns.
fn headroom(headers: Option<&str>) -> (Outcome, Option<FailureCause>, String) {
    let number = |name: &str| -> Option<u64> {
        let at = headers?.find(&format!("{name}="))? + name.len() + 1;
        let digits: String = headers?[at..].chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let window = number("w").map(|w| format!(" per {} h", w / 3600)).unwrap_or_default();
    match (number("ratelimit-limit"), number("ratelimit-remaining")) {
        (Some(limit), Some(0)) => (
            Outcome::Fail,
            Some(FailureCause::RateLimited),
            format!("no headroom: 0 of {limit} pulls left{window}"),
        ),
        (Some(limit), Some(left)) if left.saturating_mul(100) < limit.saturating_mul(LOW_HEADROOM_PERCENT) => (
            Outcome::Warn,
            Some(FailureCause::RateLimited),
            format!("low headroom: {left} of {limit} pulls left{window}"),
        ),
        (Some(limit), Some(left)) => (Outcome::Pass, None, format!("{left} of {limit} pulls left{window}")),
        _ => (Outcome::Pass, None, "no ratelimit-* headers: no announced limit".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headroom_from_hub_headers() {
        let h = |s: &str| headroom(Some(s));
        assert_eq!(
            h("ratelimit-limit=100;w=21600; ratelimit-remaining=76;w=21600").0,
            Outcome::Pass
        );
        let (result, cause, detail) = h("ratelimit-limit=100;w=21600; ratelimit-remaining=0;w=21600");
        assert_eq!((result, cause), (Outcome::Fail, Some(FailureCause::RateLimited)));
        assert!(detail.contains("0 of 100 pulls left per 6 h"), "{detail}");
        assert_eq!(
            h("ratelimit-limit=100;w=21600; ratelimit-remaining=9;w=21600").0,
            Outcome::Warn
        );
        assert_eq!(headroom(None).0, Outcome::Pass);
        assert_eq!(h("ratelimit-limit=x").0, Outcome::Pass);
    }
}
