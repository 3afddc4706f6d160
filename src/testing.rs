//! In-process fixtures for the cache and API tests: a scripted upstream
//! registry (a real HTTP server on 127.0.0.1:0 inside the test's runtime,
//! counting what it was asked), a config pointing at it, and stores with
//! injected faults. They run in milliseconds without root, Docker or
//! Distribution; the real-client tests in `tests/` cover what only they can.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::config::{Config, Overrides};
use crate::reference::{Digest, RepoName, Verified};
use crate::routing::Route;
use crate::store::{BlobStore, BlobUpload, ByteStream, FsBlobStore, OnDamaged, PartialRead, ReadMode, StoredItem};
use crate::upstream::Upstream;

/// One request the fake upstream saw.
#[derive(Debug, Clone)]
pub struct Hit {
    pub method: Method,
    pub path: String,
    /// The `<from>` of a `Range: bytes=<from>-`.
    pub range_from: Option<u64>,
}

/// What the fake upstream answers.
pub enum Reply {
    /// `status` with `body`; `cut_after`: the body breaks (the connection
    /// is reset) after that many bytes; `gate`: the body waits there until
    /// the gate opens; `content_range` as given.
    Body {
        status: StatusCode,
        body: Bytes,
        content_length: Option<u64>,
        content_range: Option<String>,
        cut_after: Option<usize>,
        gate: Option<Arc<tokio::sync::Notify>>,
    },
    /// A spec error answer.
    Error { status: StatusCode, code: &'static str },
    /// A manifest, with its type and `Docker-Content-Digest`, as a registry
    /// answers a GET or HEAD of one.
    Manifest { body: Bytes, media_type: &'static str },
}

impl Reply {
    /// The whole blob, 200.
    pub fn whole(body: &Bytes) -> Reply {
        Reply::Body {
            status: StatusCode::OK,
            body: body.clone(),
            content_length: Some(body.len() as u64),
            content_range: None,
            cut_after: None,
            gate: None,
        }
    }

    /// 206 with `body[from..]`, its Content-Range saying `start`.
    pub fn partial(body: &Bytes, from: usize, start: usize) -> Reply {
        let part = body.slice(from..);
        Reply::Body {
            status: StatusCode::PARTIAL_CONTENT,
            content_length: Some(part.len() as u64),
            content_range: Some(format!("bytes {start}-{}/{}", body.len() - 1, body.len())),
            body: part,
            cut_after: None,
            gate: None,
        }
    }

    pub fn cut_after(mut self, n: usize) -> Reply {
        if let Reply::Body { cut_after, .. } = &mut self {
            *cut_after = Some(n);
        }
        self
    }

    pub fn gated(mut self, at: usize, g: Arc<tokio::sync::Notify>) -> Reply {
        if let Reply::Body { cut_after, gate, .. } = &mut self {
            *gate = Some(g);
            // The gate sits where a cut would: `cut_after` marks the point.
            cut_after.get_or_insert(at);
        }
        self
    }
}

type Script = dyn Fn(&Hit) -> Reply + Send + Sync;

/// A scripted upstream registry on 127.0.0.1.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeUpstream {
    pub async fn start(script: impl Fn(&Hit) -> Reply + Send + Sync + 'static) -> FakeUpstream {
        let script: Arc<Script> = Arc::new(script);
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let count = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (h, s) = (hits.clone(), script.clone());
        let app = axum::Router::new().fallback(move |method: Method, uri: axum::http::Uri, headers: HeaderMap| {
            let (hits, script, count) = (h.clone(), s.clone(), count.clone());
            async move {
                let hit = Hit {
                    method,
                    path: uri.path().to_string(),
                    range_from: range_from(&headers),
                };
                count.fetch_add(1, Ordering::SeqCst);
                hits.lock().expect("hits").push(hit.clone());
                answer(script(&hit))
            }
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeUpstream { addr, hits, server }
    }

    /// Requests seen whose path ends with `suffix`.
    pub fn hits(&self, suffix: &str) -> Vec<Hit> {
        self.hits
            .lock()
            .expect("hits")
            .iter()
            .filter(|h| h.path.ends_with(suffix))
            .cloned()
            .collect()
    }

    /// A config with this upstream as the default, caching under `dir`.
    pub fn config(&self, dir: &std::path::Path, extra: &str) -> Config {
        let text = format!(
            r#"
listen = "127.0.0.1:0"
cache_dir = "{}"
[[upstream]]
name = "fake"
endpoints = ["http://{}"]
default = true
attempts = 2
retry_base_delay = "1ms"
retry_max_delay = "5ms"
deadline = "10s"
{extra}
"#,
            dir.display(),
            self.addr
        );
        Config::from_toml(&text, "test", Overrides::default()).expect("test config")
    }
}

fn range_from(h: &HeaderMap) -> Option<u64> {
    let v = h.get(header::RANGE)?.to_str().ok()?;
    v.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()
}

fn answer(reply: Reply) -> Response {
    match reply {
        Reply::Manifest { body, media_type } => {
            let digest = Digest::sha256_of(&body).to_string();
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, media_type.to_string()),
                    (header::CONTENT_LENGTH, body.len().to_string()),
                    (header::HeaderName::from_static("docker-content-digest"), digest),
                ],
                body,
            )
                .into_response()
        }
        Reply::Error { status, code } => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            format!(r#"{{"errors":[{{"code":"{code}","message":"scripted"}}]}}"#),
        )
            .into_response(),
        Reply::Body {
            status,
            body,
            content_length,
            content_range,
            cut_after,
            gate,
        } => {
            let stream = async_stream(body, cut_after, gate);
            let mut resp = Response::new(Body::from_stream(stream));
            *resp.status_mut() = status;
            let h = resp.headers_mut();
            if let Some(len) = content_length {
                h.insert(header::CONTENT_LENGTH, len.into());
            }
            if let Some(cr) = content_range.and_then(|c| c.parse().ok()) {
                h.insert(header::CONTENT_RANGE, cr);
            }
            resp
        }
    }
}

/// The body in two parts around `cut`: after the first part it waits for
/// the gate (if any) and sends the rest, or (without a gate) breaks.
fn async_stream(
    body: Bytes,
    cut: Option<usize>,
    gate: Option<Arc<tokio::sync::Notify>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let at = cut.unwrap_or(body.len()).min(body.len());
    let (first, rest) = (body.slice(..at), body.slice(at..));
    let first = futures_util::stream::iter([Ok(first)]);
    let rest = futures_util::stream::once(async move {
        match (cut, gate) {
            (None, _) => Ok(rest),
            (Some(_), Some(gate)) => {
                gate.notified().await;
                Ok(rest)
            }
            // Let the server flush what went before, so the break lands
            // inside the body rather than before the response head.
            (Some(_), None) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Err(std::io::Error::other("scripted break"))
            }
        }
    });
    futures_util::StreamExt::chain(first, rest)
}

/// Wait (bounded) until `check` holds.
pub async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// A blob of `n` bytes that is not all one value.
pub fn blob(n: usize) -> (Bytes, Digest) {
    let bytes: Bytes = (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
    let digest = Digest::sha256_of(&bytes);
    (bytes, digest)
}

/// The route of `repo` on the config's first upstream.
pub fn route(config: &Config, events: &Arc<crate::events::Events>, repo: &str) -> Route {
    let upstream = Upstream::new(&config.upstreams[0], events.clone()).expect("upstream");
    Route {
        upstream: Arc::new(upstream),
        repo: RepoName::parse(repo).expect("repo"),
    }
}

/// Everything of a blob body, or its first error.
pub async fn collect(body: crate::cache::BlobBody) -> (Vec<u8>, Option<crate::cache::CacheError>) {
    use futures_util::StreamExt;
    let mut body = body;
    let mut out = Vec::new();
    while let Some(item) = body.next().await {
        match item {
            Ok(b) => out.extend_from_slice(&b),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

/// A filesystem store whose uploads fail with "disk full" once they hold
/// `fail_after` bytes.
pub struct FullDisk {
    pub inner: FsBlobStore,
    pub fail_after: u64,
}

#[async_trait]
impl BlobStore for FullDisk {
    async fn stat(&self, digest: &Digest) -> std::io::Result<Option<u64>> {
        self.inner.stat(digest).await
    }
    async fn read(&self, digest: &Digest, limit: u64) -> std::io::Result<Option<Bytes>> {
        self.inner.read(digest, limit).await
    }
    async fn read_range(
        &self,
        digest: &Digest,
        start: u64,
        end: u64,
        mode: ReadMode,
        damaged: OnDamaged,
    ) -> std::io::Result<ByteStream> {
        self.inner.read_range(digest, start, end, mode, damaged).await
    }
    async fn put(&self, digest: &Digest, bytes: Bytes) -> std::io::Result<bool> {
        self.inner.put(digest, bytes).await
    }
    async fn begin(&self, digest: &Digest) -> std::io::Result<Box<dyn BlobUpload>> {
        Ok(Box::new(FullUpload {
            inner: self.inner.begin(digest).await?,
            left: self.fail_after,
        }))
    }
    async fn delete(&self, digest: &Digest) -> std::io::Result<()> {
        self.inner.delete(digest).await
    }
    async fn list(&self) -> std::io::Result<Vec<StoredItem>> {
        self.inner.list().await
    }
    async fn writable(&self) -> std::io::Result<()> {
        self.inner.writable().await
    }
}

struct FullUpload {
    inner: Box<dyn BlobUpload>,
    left: u64,
}

#[async_trait]
impl BlobUpload for FullUpload {
    async fn write(&mut self, pieces: Vec<Bytes>) -> std::io::Result<()> {
        let n: u64 = pieces.iter().map(|p| p.len() as u64).sum();
        if n > self.left {
            return Err(std::io::Error::from(std::io::ErrorKind::StorageFull));
        }
        self.left -= n;
        self.inner.write(pieces).await
    }
    fn partial(&self) -> Arc<dyn PartialRead> {
        self.inner.partial()
    }
    async fn commit(self: Box<Self>, proof: Verified) -> std::io::Result<()> {
        self.inner.commit(proof).await
    }
    async fn abort(self: Box<Self>) {
        self.inner.abort().await
    }
}
