//! One request to one endpoint, for `berth doctor`: no retry, no circuit
//! breaker, no failover, no rate-limit window, so each step shows what that
//! one endpoint said. The requests go through berth's own client (timeouts,
//! TLS roots, proxy variables, DNS guard), its challenge answering and token
//! cache; errors are `UpstreamError`s and their causes come from the same
//! classification as a pull's. Lookups and connects made here without reqwest
//! are classified by the same rules (`error::classify_transport`).

use std::net::SocketAddr;

use reqwest::header::{CONTENT_TYPE, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use thiserror::Error;
use url::Url;

use super::dns::{DnsError, lookup};
use super::requests::{manifest_accept, verified_manifest};
use super::response::{announced_length, check_status, header_digest, header_str, ratelimit_headers};
use super::send::blame_proxy;
use super::{Challenge, Upstream, UpstreamError, UpstreamManifest, auth, error};
use crate::failure::FailureCause;
use crate::reference::{Digest, Reference, RepoName};

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A bug in the caller: an endpoint or address list that is not there.
    #[error("nothing to probe: {0}")]
    Nothing(&'static str),
}

impl ProbeError {
    pub fn cause(&self) -> FailureCause {
        match self {
            ProbeError::Upstream(e) => e.cause(),
            ProbeError::Dns(e) => error::classify_transport(e, true),
            ProbeError::Connect { source, .. } => error::classify_transport(source, true),
            ProbeError::Nothing(_) => FailureCause::Internal,
        }
    }

    /// The upstream's `ratelimit-*` headers and `Retry-After`, for a 429.
    pub fn ratelimit(&self) -> (Option<String>, Option<u64>) {
        match self {
            ProbeError::Upstream(e) => (e.ratelimit(), e.retry_after()),
            _ => (None, None),
        }
    }
}

/// What `GET /v2/` without credentials said.
#[derive(Debug, Clone)]
pub struct Ping {
    pub status: u16,
    /// The challenge of a 401, when it is one berth can parse.
    pub challenge: Option<Challenge>,
}

/// What a manifest HEAD said, with the rate-limit headers of the answer.
#[derive(Debug, Clone)]
pub struct ProbedHead {
    pub digest: Option<Digest>,
    pub media_type: Option<String>,
    /// `ratelimit-*` headers as `name=value` pairs joined by "; ".
    pub ratelimit: Option<String>,
}

impl Upstream {
    /// The endpoints, in the order pulls try them.
    pub fn endpoints(&self) -> &[Url] {
        &self.endpoints
    }

    /// Whether requests to endpoint `index` go through an HTTP proxy.
    pub fn is_proxied(&self, index: usize) -> bool {
        self.proxied.get(index) == Some(&true)
    }

    /// Resolve `host` with the system resolver, within the connect timeout.
    pub async fn probe_resolve(&self, host: &str) -> Result<Vec<SocketAddr>, ProbeError> {
        let timeout = self.config.connect_timeout;
        match tokio::time::timeout(timeout, lookup(host)).await {
            Ok(found) => Ok(found?),
            Err(_) => Err(ProbeError::Dns(DnsError {
                host: host.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within connect_timeout ({} ms)", timeout.as_millis()),
                ),
            })),
        }
    }

    /// Open a TCP connection to the first of `addrs` that accepts one within
    /// the connect timeout (each), on `port`; the last failure otherwise.
    pub async fn probe_connect(&self, addrs: &[SocketAddr], port: u16) -> Result<SocketAddr, ProbeError> {
        let timeout = self.config.connect_timeout;
        let mut last = None;
        for addr in addrs {
            let addr = SocketAddr::new(addr.ip(), port);
            let source = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_stream)) => return Ok(addr),
                Ok(Err(e)) => e,
                Err(_) => std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within connect_timeout ({} ms)", timeout.as_millis()),
                ),
            };
            last = Some(ProbeError::Connect { addr, source });
        }
        Err(last.unwrap_or(ProbeError::Nothing("no address")))
    }

    /// `GET /v2/` on endpoint `index`, without credentials: 200, or a 401
    /// with its challenge; anything else is an error.
    pub async fn probe_ping(&self, index: usize) -> Result<Ping, ProbeError> {
        let endpoint = self.endpoint(index)?;
        let url = format!("{}/v2/", endpoint.as_str().trim_end_matches('/'));
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| blame_proxy(UpstreamError::from_send(e), self.is_proxied(index)))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(Challenge::parse);
            return Ok(Ping { status: 401, challenge });
        }
        let resp = check_status(resp).await?;
        Ok(Ping {
            status: resp.status().as_u16(),
            challenge: None,
        })
    }

    /// Answer `challenge` from endpoint `index` with the configured
    /// credentials (a token for `scope`, or Basic checked against `/v2/`);
    /// the answer is kept, as a pull keeps it, for the requests that follow.
    pub async fn probe_login(&self, index: usize, challenge: &Challenge, scope: &str) -> Result<(), ProbeError> {
        let endpoint = self.endpoint(index)?;
        let authorization = auth::answer(
            &self.http,
            challenge,
            scope,
            self.credentials.as_ref(),
            &self.realms,
            endpoint,
        )
        .await
        .map_err(|e| blame_proxy(e, self.is_proxied(index)))?;
        if *challenge == Challenge::Basic {
            let url = format!("{}/v2/", endpoint.as_str().trim_end_matches('/'));
            let resp = self
                .http
                .get(url)
                .header(reqwest::header::AUTHORIZATION, authorization.header.as_str())
                .send()
                .await
                .map_err(|e| blame_proxy(UpstreamError::from_send(e), self.is_proxied(index)))?;
            check_status(resp).await?;
        }
        // Kept for the requests of `scope` only when issued for it (a
        // challenge may name a scope of its own).
        let issued_for_scope = match challenge {
            Challenge::Bearer { scope: Some(named), .. } => named == scope,
            _ => true,
        };
        if issued_for_scope {
            self.tokens.put(scope, authorization);
        }
        Ok(())
    }

    /// HEAD a manifest on endpoint `index`.
    pub async fn probe_manifest_head(
        &self,
        index: usize,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ProbedHead, ProbeError> {
        let resp = self
            .probe_send(
                index,
                Method::HEAD,
                repo,
                &format!("manifests/{reference}"),
                manifest_accept(),
            )
            .await?;
        let ratelimit = ratelimit_headers(resp.headers());
        let resp = check_status(resp).await?;
        Ok(ProbedHead {
            digest: header_digest(resp.headers()),
            media_type: header_str(resp.headers(), CONTENT_TYPE.as_str()),
            ratelimit,
        })
    }

    /// GET a manifest on endpoint `index`, verified as a pull verifies it.
    pub async fn probe_manifest(
        &self,
        index: usize,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<UpstreamManifest, ProbeError> {
        let resp = self
            .probe_send(
                index,
                Method::GET,
                repo,
                &format!("manifests/{reference}"),
                manifest_accept(),
            )
            .await?;
        let resp = check_status(resp).await?;
        Ok(verified_manifest(resp, reference).await?)
    }

    /// HEAD a blob on endpoint `index`: its size, when the upstream says.
    pub async fn probe_blob(&self, index: usize, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, ProbeError> {
        let resp = self
            .probe_send(index, Method::HEAD, repo, &format!("blobs/{digest}"), HeaderMap::new())
            .await?;
        let resp = check_status(resp).await?;
        Ok(announced_length(resp.headers()))
    }

    async fn probe_send(
        &self,
        index: usize,
        method: Method,
        repo: &RepoName,
        tail: &str,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, ProbeError> {
        let endpoint = self.endpoint(index)?;
        let url = format!("{}/v2/{repo}/{tail}", endpoint.as_str().trim_end_matches('/'));
        let scope = format!("repository:{repo}:pull");
        self.send_to(&method, endpoint, &url, &scope, &headers)
            .await
            .map_err(|e| ProbeError::Upstream(blame_proxy(e, self.is_proxied(index))))
    }

    fn endpoint(&self, index: usize) -> Result<&Url, ProbeError> {
        self.endpoints.get(index).ok_or(ProbeError::Nothing("no such endpoint"))
    }
}
