//! Listeners (plain TCP or rustls TLS), the request middleware that gives each
//! request an id and logs its one failure event, and shutdown on a signal.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rand::Rng;
use thiserror::Error;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::api::{self, AppState, RequestContext};
use crate::cache::{Cache, CacheError};
use crate::config::{Config, TlsConfig};
use crate::events::{Events, RequestFacts};
use crate::failure::FailureRecord;
use crate::upstream::{Upstream, UpstreamError};

#[derive(Debug, Error)]
pub enum StartError {
    #[error("cannot open the cache in {dir}: {source}")]
    Cache { dir: String, source: CacheError },
    #[error("cannot set up upstream {name}: {source}")]
    Upstream { name: String, source: UpstreamError },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("tls: {0}")]
    Tls(String),
}

/// The whole application as a router, ready to serve (tests use it in-process).
pub fn build(config: Config) -> Result<Router, StartError> {
    let events = Arc::new(Events::default());
    let upstreams = config
        .upstreams
        .iter()
        .map(|u| {
            Upstream::new(u, events.clone())
                .map(Arc::new)
                .map_err(|source| StartError::Upstream {
                    name: u.name.clone(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cache = Cache::open(&config, upstreams, events.clone()).map_err(|source| StartError::Cache {
        dir: config.cache_dir.display().to_string(),
        source,
    })?;
    let state = Arc::new(AppState { config, cache, events });
    Ok(api::router(state.clone()).layer(middleware::from_fn_with_state(state, observe)))
}

/// Give the request an id, and log the failure the response carries, once.
async fn observe(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let id = format!("{:016x}", rand::rng().random::<u64>());
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "-".into());
    let ctx = RequestContext {
        id: id.clone(),
        client: client.clone(),
        started: std::time::Instant::now(),
    };
    req.extensions_mut().insert(ctx.clone());
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    // Events logged while the request is handled (upstream_degraded,
    // storage_degraded) carry its id and client through this span.
    let span = tracing::info_span!("request", request_id = %id, client = %client);
    let mut resp = tracing::Instrument::instrument(next.run(req), span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status().as_u16();
    let elapsed_ms = ctx.started.elapsed().as_millis() as u64;
    state
        .events
        .metrics
        .requests
        .get_or_create(&crate::metrics::RequestLabels {
            method: method.clone(),
            endpoint: endpoint_kind(&path).into(),
            status,
        })
        .inc();
    if let Some(record) = resp.extensions().get::<FailureRecord>() {
        let facts = RequestFacts {
            method: &method,
            path: &path,
            status,
            client: &client,
            request_id: &id,
            elapsed_ms,
        };
        state.events.pull_failed(record, &facts);
    } else {
        tracing::debug!(method, path, status, client, request_id = %id, elapsed_ms, "request");
    }
    resp
}

/// A bounded label for the request metric (paths themselves are unbounded).
fn endpoint_kind(path: &str) -> &'static str {
    match api::path::parse(path.strip_prefix("/v2/").unwrap_or("")) {
        _ if !path.starts_with("/v2") => "other",
        api::path::Endpoint::Base => "base",
        api::path::Endpoint::Manifest { .. } => "manifest",
        api::path::Endpoint::Blob { .. } => "blob",
        api::path::Endpoint::Tags { .. } => "tags",
        api::path::Endpoint::Referrers { .. } => "referrers",
        api::path::Endpoint::Upload { .. } => "upload",
        api::path::Endpoint::Unknown => "unknown",
    }
}

/// Bind, then serve until SIGINT/SIGTERM. The bound address is logged as the
/// `listening` event (tests bind port 0 and read it from there).
pub async fn serve(config: Config) -> Result<(), StartError> {
    let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
    let listen = config.listen;
    let app = build(config)?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Listen { addr: listen, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Listen { addr: listen, source })?;
    tracing::info!(addr = %addr, tls = tls.is_some(), "listening");
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let service = app.clone().map_request(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(remote));
            req
        });
        let service = TowerToHyperService::new(service);
        let tls = tls.clone();
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let result = match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => builder.serve_connection(TokioIo::new(s), service).await,
                    Err(e) => {
                        tracing::debug!(client = %remote, error = %e, "tls handshake failed");
                        return;
                    }
                },
                None => builder.serve_connection(TokioIo::new(stream), service).await,
            };
            if let Err(e) = result {
                tracing::debug!(client = %remote, error = %e, "connection ended with an error");
            }
        });
    }
    tracing::info!("shutting down");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn tls_acceptor(tls: &TlsConfig) -> Result<tokio_rustls::TlsAcceptor, StartError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| StartError::Tls(format!("cannot read {}: {e}", p.display())))
    };
    let cert_pem = read(&tls.cert)?;
    let key_pem = read(&tls.key)?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError::Tls(format!("tls.cert {}: {e}", tls.cert.display())))?;
    if certs.is_empty() {
        return Err(StartError::Tls(format!(
            "tls.cert {}: no PEM certificate found",
            tls.cert.display()
        )));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| StartError::Tls(format!("tls.key {}: {e}", tls.key.display())))?
        .ok_or_else(|| StartError::Tls(format!("tls.key {}: no PEM private key found", tls.key.display())))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartError::Tls(format!("tls.cert/tls.key do not form a usable pair: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
