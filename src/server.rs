//! Listeners (plain TCP or rustls TLS), the request middleware that gives each
//! request an id and logs its one failure event, and shutdown on a signal.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rand::Rng;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::api::{self, AppState, Live, RequestContext};
use crate::cache::{Cache, CacheError};
use crate::config::{Config, ConfigSource};
use crate::events::{Events, RequestFacts};
use crate::failure::FailureRecord;
use crate::upstream::{Upstream, UpstreamError};
use io::{GuardedIo, InFlight, InFlightGuard};
use limits::{AcceptBackoff, PerClient};

mod access;
mod io;
mod limits;
mod prefetch_schedule;
mod reload;
mod tls;

pub use tls::ClientCertificate;

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
    #[error("{0}")]
    Auth(String),
}

/// The application, ready to serve: its router and what the accept loop needs.
pub struct App {
    pub router: Router,
    /// The admin surface, when it has a listener of its own (`admin_listen`);
    /// otherwise it is part of `router`.
    pub admin: Option<Router>,
    pub events: Arc<Events>,
    /// What the handlers share (the cache, to flush at shutdown).
    pub state: Arc<AppState>,
}

/// The whole application as a router, ready to serve (tests use it in-process).
pub async fn build(config: Config) -> Result<App, StartError> {
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
    let auth = crate::auth::Authenticator::new(
        config.auth.as_ref(),
        &config.access,
        config.server.client_requests_per_second,
        config.server.client_burst,
    )
    .map_err(|e| StartError::Auth(e.to_string()))?
    .with_replica_secret(config.cluster.as_ref().and_then(|c| c.secret.as_deref()));
    let cluster = match (&config.cluster, config.upstreams.first()) {
        (Some(c), Some(base)) => Some(Arc::new(crate::cluster::Cluster::new(c, base, &events).map_err(
            |source| StartError::Upstream {
                name: "cluster peer".into(),
                source,
            },
        )?)),
        _ => None,
    };
    if let Some(cluster) = &cluster {
        cluster.resolve().await;
        crate::cluster::Cluster::watch(cluster);
    }
    // With access control, a cached digest is served under a repository
    // only when that repository is known to hold it.
    let cache = Cache::open(&config, events.clone())
        .await
        .map_err(|source| StartError::Cache {
            dir: config.cache_dir.display().to_string(),
            source,
        })?
        .scope_by_repository(config.auth.is_some())
        .in_cluster(cluster);
    let state = Arc::new(AppState {
        config,
        live: std::sync::RwLock::new(Arc::new(Live {
            upstreams,
            auth: Arc::new(auth),
        })),
        cache,
        events: events.clone(),
        stopping: std::sync::atomic::AtomicBool::new(false),
        started: std::time::Instant::now(),
    });
    let admin = crate::admin::router(state.clone());
    let (router, admin) = match state.config.admin_listen {
        Some(_) => (api::router(state.clone()), Some(admin)),
        None => (api::router(state.clone()).merge(admin), None),
    };
    // Outermost first: every request gets its id and its one log line, then
    // the access check, before any handler runs.
    let router = router
        .layer(middleware::from_fn_with_state(state.clone(), access::guard))
        .layer(middleware::from_fn_with_state(state.clone(), observe));
    Ok(App {
        router,
        admin,
        events,
        state,
    })
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
    let method_label = crate::metrics::MethodLabel::of(req.method());
    // Logged as sent, but bounded: a method token can be kilobytes long.
    let method: String = req.method().as_str().chars().take(16).collect();
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
            method: method_label,
            endpoint: endpoint_kind(&path),
            status,
        })
        .inc();
    let identity = resp.extensions().get::<access::Allowed>().map(|a| a.0.to_string());
    if let Some(record) = resp.extensions().get::<FailureRecord>() {
        let mut record = record.clone();
        if record.identity.is_none() {
            record.identity = identity;
        }
        let record = &record;
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

/// The warning for a mirror that lends its upstream credentials to anyone
/// who reaches it: an upstream with credentials, `listen` beyond loopback,
/// and no `[auth]`.
pub fn exposure_warning(config: &Config) -> Option<String> {
    let lent: Vec<&str> = config
        .upstreams
        .iter()
        .filter(|u| u.credentials.is_some())
        .map(|u| u.name.as_str())
        .collect();
    if lent.is_empty() || config.listen.ip().is_loopback() || config.auth.is_some() {
        return None;
    }
    Some(format!(
        "upstream {} has credentials, listen {} is not loopback and there is no [auth]: anyone who reaches berth pulls with them; add [auth] and [[access]], or listen on 127.0.0.1",
        lent.join(", "),
        config.listen
    ))
}

/// Bind, then serve until SIGINT/SIGTERM; on SIGHUP read the config again
/// from `source` (where `config` came from) and apply what can change while
/// serving. The bound address is logged as the `listening` event (tests bind
/// port 0 and read it from there).
pub async fn serve(config: Config, source: ConfigSource) -> Result<(), StartError> {
    if let Some(warning) = exposure_warning(&config) {
        tracing::warn!("{warning}");
    }
    let mut tls_files = config.tls.clone();
    let mut tls = tls_files.as_ref().map(tls::acceptor).transpose()?;
    let listen = config.listen;
    let admin_listen = config.admin_listen;
    let limits = config.server;
    // The admin listener answers from the start: its readiness probe says
    // 503 "starting" while the cache opens (a walk of a large cache or a
    // bucket listing can take a while), rather than refusing connections.
    let early_admin = match admin_listen {
        Some(addr) => Some(bind_starting(addr).await?),
        None => None,
    };
    let app = build(config).await?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Listen { addr: listen, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Listen { addr: listen, source })?;
    // Bound before the API is announced, so once `listening` is logged both are up.
    let _admin = match (early_admin, app.admin.clone()) {
        (Some(starting), Some(admin)) => Some(serve_admin(starting.end().await, admin)),
        _ => None,
    };
    tracing::info!(addr = %addr, tls = tls.is_some(), "listening");
    prefetch_schedule::start(&app.state);
    let connections = Arc::new(Semaphore::new(limits.max_connections as usize));
    let per_client = PerClient::new(limits.max_connections_per_client);
    let mut backoff = AcceptBackoff::default();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    // SIGHUP: read the config again, and with it the TLS certificate, key
    // and client CA (operators rotate them); connections already open keep
    // theirs, and requests in flight their routing (see reload.rs).
    let mut hangup = hangup_signal();
    // Every connection is watched, so a signal can let what is in flight finish.
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        // Beyond max_connections, new clients wait in the listen backlog.
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, remote) = tokio::select! {
            _ = hangup.recv() => {
                reload::reload(&app.state, &source, &mut tls_files, &mut tls).await;
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors (or memory): accepting again at
                    // once fails again. Wait, and say so once per run.
                    let (wait, first) = backoff.failed();
                    if first {
                        tracing::warn!(error = %e, "accept failed; backing off until connections close");
                    }
                    drop(permit);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {},
                        _ = &mut shutdown => break,
                    }
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let failed = backoff.succeeded();
        if failed > 0 {
            tracing::info!(failed_accepts = failed, "accepting connections again");
        }
        let Some(slot) = per_client.admit(remote.ip()) else {
            tracing::debug!(client = %remote, "too many connections from this client; closed");
            app.events.metrics.connections_refused.inc();
            continue;
        };
        // Responses go out as a head and then body chunks smaller than a
        // loopback segment: with Nagle's algorithm each small write after the
        // first waits for the client's (delayed, up to 40 ms) ACK. hyper
        // already gathers what it can into one write, so nothing is gained
        // by holding bytes back. A socket that refuses the option still serves.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(client = %remote, error = %e, "could not set TCP_NODELAY");
        }
        let in_flight = Arc::new(InFlight::default());
        let router = app.router.clone();
        let io = GuardedIo::new(stream, in_flight.clone(), limits.idle_timeout, limits.write_timeout);
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _held = (permit, slot);
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // hyper's head timer needs a timer to run at all; it also bounds
            // how long a kept-alive HTTP/1.1 connection waits for its next request.
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            builder.http2().timer(TokioTimer::new());
            let result = match tls {
                Some(acceptor) => match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(io)).await {
                    Ok(Ok(s)) => {
                        let cert = tls::client_certificate(s.get_ref().1);
                        let service = connection_service(router, remote, in_flight, false, cert);
                        watcher.watch(builder.serve_connection(TokioIo::new(s), service)).await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(client = %remote, error = %e, "tls handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(client = %remote, "tls handshake timed out");
                        return;
                    }
                },
                None => {
                    let service = connection_service(router, remote, in_flight, true, None);
                    watcher.watch(builder.serve_connection(TokioIo::new(io), service)).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(client = %remote, error = %e, "connection ended with an error");
            }
        });
    }
    // Stop accepting at once (new clients are refused, not queued), then
    // let responses in flight finish: idle keep-alive connections close now,
    // busy ones after their response, within the grace period.
    drop(listener);
    app.state.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    let open = graceful.count();
    tracing::info!(
        connections = open,
        grace_secs = limits.shutdown_grace.as_secs(),
        "shutting down: no new connections; letting responses in flight finish"
    );
    match tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await {
        Ok(()) => tracing::info!("every response in flight finished"),
        Err(_) => tracing::warn!(
            grace_secs = limits.shutdown_grace.as_secs(),
            "grace period over: closing the connections still open"
        ),
    }
    // What is still being fetched goes with the process; its temp files are
    // removed as the uploads drop. Metadata is made durable last.
    if let Err(e) = app.state.cache.flush().await {
        tracing::warn!(error = %e, "could not flush the metadata store at shutdown");
    }
    tracing::info!("stopped");
    Ok(())
}

/// A listener bound before the app is built, and the stand-in that answers
/// on it until then.
struct Starting {
    listener: TcpListener,
    stop: tokio::sync::oneshot::Sender<()>,
    stand_in: tokio::task::JoinHandle<()>,
}

/// Bind `addr` for the admin surface (logged as `admin listening`) and
/// answer every request on it with 503 "starting" until `Starting::end`.
async fn bind_starting(addr: SocketAddr) -> Result<Starting, StartError> {
    let listen_error = |source| StartError::Listen { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(listen_error)?;
    let bound = listener.local_addr().map_err(listen_error)?;
    if !bound.ip().is_loopback() {
        tracing::warn!(addr = %bound, "the admin surface (metrics, failures with client addresses and repository names) listens beyond loopback; keep it off public networks");
    }
    // The stand-in accepts on a second handle of the same socket, so the
    // real surface takes over the socket (and its backlog) without a gap.
    let std = listener.into_std().map_err(listen_error)?;
    let twin = std.try_clone().map_err(listen_error)?;
    let listener = TcpListener::from_std(std).map_err(listen_error)?;
    let twin = TcpListener::from_std(twin).map_err(listen_error)?;
    tracing::info!(addr = %bound, "admin listening");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let starting = Router::new().fallback(|| async {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "1")],
            axum::Json(serde_json::json!({
                "status": "starting",
                "errors": [{"code": "UNAVAILABLE", "message": "berth is starting: the cache is being opened", "detail": null}],
            })),
        )
    });
    let stand_in = tokio::spawn(async move {
        let _ = axum::serve(twin, starting)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(Starting {
        listener,
        stop,
        stand_in,
    })
}

impl Starting {
    /// Stop the stand-in (its open connections get a few seconds to finish)
    /// and hand back the listener.
    async fn end(self) -> TcpListener {
        let _ = self.stop.send(());
        let mut stand_in = self.stand_in;
        if tokio::time::timeout(std::time::Duration::from_secs(5), &mut stand_in)
            .await
            .is_err()
        {
            stand_in.abort();
        }
        self.listener
    }
}

/// Serve the admin surface on its own listener, in a task that ends with
/// the returned guard (when `serve` returns).
fn serve_admin(listener: TcpListener, admin: Router) -> AbortOnDrop {
    let service = admin.into_make_service_with_connect_info::<SocketAddr>();
    AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, service).await {
            tracing::warn!(error = %e, "admin listener stopped");
        }
    }))
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The router for one connection: requests carry the client's address, and
/// each counts as in flight until its response body has been sent or dropped.
fn connection_service(
    router: Router,
    remote: SocketAddr,
    in_flight: Arc<InFlight>,
    plain: bool,
    cert: Option<ClientCertificate>,
) -> TowerToHyperService<
    impl tower::Service<
        Request<hyper::body::Incoming>,
        Response = Response,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone,
> {
    let service = tower::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(remote));
        if plain {
            req.extensions_mut().insert(api::PlainConnection);
        }
        if let Some(cert) = &cert {
            req.extensions_mut().insert(cert.clone());
        }
        let guard = in_flight.start();
        let router = router.clone();
        async move {
            let resp = router.oneshot(req.map(axum::body::Body::new)).await?;
            Ok::<_, std::convert::Infallible>(
                resp.map(|body| axum::body::Body::new(TrackedBody { body, _guard: guard })),
            )
        }
    });
    TowerToHyperService::new(service)
}

/// A response body that keeps its request counted as in flight.
struct TrackedBody {
    body: axum::body::Body,
    _guard: InFlightGuard,
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Swap in a TLS acceptor built from the files again; a bad file keeps the
/// one in use (and says why), so a botched rotation does not take the mirror
/// down. Whether the new one is in use.
fn reload_tls(files: &crate::config::TlsConfig, tls: &mut Option<tokio_rustls::TlsAcceptor>) -> bool {
    match tls::acceptor(files) {
        Ok(fresh) => {
            *tls = Some(fresh);
            tracing::info!(cert = %files.cert.display(), "SIGHUP: TLS certificate and key reloaded");
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: TLS reload failed; still serving the previous certificate");
            false
        }
    }
}

/// SIGHUPs as a stream; one that never yields where there are none.
fn hangup_signal() -> Hangup {
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Hangup(Some(s)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; the config is read only at start");
                Hangup(None)
            }
        }
    }
    #[cfg(not(unix))]
    Hangup(None)
}

#[cfg(unix)]
struct Hangup(Option<tokio::signal::unix::Signal>);
#[cfg(not(unix))]
struct Hangup(Option<std::convert::Infallible>);

impl Hangup {
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(s) = &mut self.0
            && s.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await
    }
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
