//! An in-process HTTP relay between berth and the real upstream: it records
//! every request (so tests can count upstream fetches and bytes), can demand
//! the registry Bearer token flow with its own token endpoint, and injects
//! faults into matching requests: error statuses, resets after N bytes,
//! stalls, slow drips, flipped bytes, and pauses a test can release.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures_util::StreamExt;
use tokio::sync::Notify;

#[derive(Clone, Default)]
pub struct RelayOptions {
    /// Require Bearer tokens issued by the relay's `/token` for these credentials.
    pub token_auth: Option<(String, String)>,
    /// Repositories answered 401 even with a valid token, as Docker Hub
    /// answers for a repository that does not exist (or is private).
    pub hub_missing_repos: Vec<String>,
}

/// A fault applied to requests whose "METHOD /path" contains a pattern.
#[derive(Clone)]
pub enum Fault {
    /// Answer `status` (with `Retry-After` if given) to the next `times` requests.
    Status {
        status: u16,
        times: usize,
        retry_after: Option<u64>,
    },
    /// Send the headers and the first `bytes` of the body, then reset.
    ResetAfter { bytes: u64, times: usize },
    /// Send headers, then nothing, until the test ends.
    Stall,
    /// Send the body `chunk` bytes at a time with `delay` between chunks.
    Drip { chunk: usize, delay: Duration },
    /// Answer 307 to `location` instead (a blob sent on to a CDN).
    Redirect { location: String, times: usize },
    /// Answer 200 with this body (and no Docker-Content-Digest) instead.
    Body { bytes: Bytes, times: usize },
    /// Flip the lowest bit of the byte at `offset` of the body.
    FlipByte { offset: u64, times: usize },
    /// Send `bytes`, notify `reached`, wait for `resume`, then the rest (or
    /// reset the connection, with `then_reset`).
    PauseAfter {
        bytes: u64,
        reached: Arc<Notify>,
        resume: Arc<Notify>,
        then_reset: bool,
    },
}

struct Rule {
    pattern: String,
    fault: Fault,
}

struct Shared {
    upstream: String,
    client: reqwest::Client,
    options: RelayOptions,
    addr: String,
    log: Mutex<Vec<String>>,
    tokens: Mutex<Vec<String>>,
    /// The `Range` header of every request that had one.
    ranges: Mutex<Vec<String>>,
    rules: Mutex<Vec<Rule>>,
    body_bytes: AtomicU64,
    /// The token realm named in challenges, when not the relay's own `/token`.
    realm: Mutex<Option<String>>,
}

pub struct Relay {
    pub addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(upstream_url: &str, options: RelayOptions) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let shared = Arc::new(Shared {
            upstream: upstream_url.trim_end_matches('/').to_string(),
            client: super::HttpClient::new().no_redirects().build(),
            options,
            addr: format!("http://{addr}"),
            log: Mutex::default(),
            tokens: Mutex::default(),
            ranges: Mutex::default(),
            rules: Mutex::default(),
            body_bytes: AtomicU64::new(0),
            realm: Mutex::default(),
        });
        let app = Router::new()
            .route("/token", any(token))
            .fallback(relay)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Relay { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far as "METHOD /path?query".
    pub fn requests(&self) -> Vec<String> {
        self.shared.log.lock().expect("relay log").clone()
    }

    pub fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.requests().iter().filter(|r| pred(r)).count()
    }

    /// The `Range` headers sent to the upstream, in order.
    pub fn ranges(&self) -> Vec<String> {
        self.shared.ranges.lock().expect("relay ranges").clone()
    }

    pub fn tokens_issued(&self) -> usize {
        self.shared.tokens.lock().expect("relay tokens").len()
    }

    /// Body bytes relayed from the upstream so far.
    pub fn body_bytes(&self) -> u64 {
        self.shared.body_bytes.load(Ordering::Relaxed)
    }

    /// Apply `fault` to requests whose "METHOD /path" contains `pattern`.
    pub fn fault(&self, pattern: &str, fault: Fault) {
        self.shared.rules.lock().expect("relay rules").push(Rule {
            pattern: pattern.to_string(),
            fault,
        });
    }

    /// Name `realm` as the token realm in challenges from now on.
    pub fn set_realm(&self, realm: &str) {
        *self.shared.realm.lock().expect("relay realm") = Some(realm.to_string());
    }

    pub fn clear_faults(&self) {
        self.shared.rules.lock().expect("relay rules").clear();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn token(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    s.log.lock().expect("relay log").push("GET /token".into());
    let Some((user, pass)) = &s.options.token_auth else {
        return StatusCode::NOT_FOUND.into_response();
    };
    use base64::Engine as _;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    );
    if headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return (StatusCode::UNAUTHORIZED, "bad credentials").into_response();
    }
    let token = format!("tok-{}", rand::random::<u64>());
    s.tokens.lock().expect("relay tokens").push(token.clone());
    axum::Json(serde_json::json!({"token": token, "expires_in": 300})).into_response()
}

/// The fault for this request, consuming one use of counted faults.
fn take_fault(s: &Shared, line: &str) -> Option<Fault> {
    let mut rules = s.rules.lock().expect("relay rules");
    let i = rules.iter().position(|r| line.contains(&r.pattern))?;
    let fault = rules[i].fault.clone();
    let remaining = match &mut rules[i].fault {
        Fault::Status { times, .. }
        | Fault::ResetAfter { times, .. }
        | Fault::FlipByte { times, .. }
        | Fault::Redirect { times, .. }
        | Fault::Body { times, .. } => {
            *times = times.saturating_sub(1);
            Some(*times)
        }
        _ => None,
    };
    if remaining == Some(0) {
        rules.remove(i);
    }
    Some(fault)
}

fn challenge(s: &Shared, path: &str) -> Response {
    let repo = path.trim_start_matches("/v2/");
    let repo = ["/manifests/", "/blobs/", "/tags/"]
        .iter()
        .find_map(|k| repo.rfind(k).map(|i| &repo[..i]))
        .unwrap_or("");
    let realm = s
        .realm
        .lock()
        .expect("relay realm")
        .clone()
        .unwrap_or_else(|| format!("{}/token", s.addr));
    let challenge = format!("Bearer realm=\"{realm}\",service=\"test-registry\",scope=\"repository:{repo}:pull\"");
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, challenge)],
        r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
    )
        .into_response()
}

async fn relay(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let path_q = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let line = format!("{} {path_q}", req.method());
    s.log.lock().expect("relay log").push(line.clone());
    if let Some(range) = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok()) {
        s.ranges.lock().expect("relay ranges").push(range.to_string());
    }
    if s.options.token_auth.is_some() && req.uri().path().starts_with("/v2/") {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let valid = presented.is_some_and(|t| s.tokens.lock().expect("relay tokens").contains(&t));
        if !valid {
            return challenge(&s, req.uri().path());
        }
        let path = req.uri().path();
        if s.options
            .hub_missing_repos
            .iter()
            .any(|r| path.starts_with(&format!("/v2/{r}/")))
        {
            return challenge(&s, path);
        }
    }
    let fault = take_fault(&s, &line);
    if let Some(Fault::Status {
        status, retry_after, ..
    }) = &fault
    {
        let mut resp = (
            StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            r#"{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}"#,
        )
            .into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, (*secs).into());
        }
        if *status == 429 {
            // What Docker Hub sends with its pull-limit answers.
            let h = resp.headers_mut();
            h.insert("ratelimit-limit", header::HeaderValue::from_static("100;w=21600"));
            h.insert("ratelimit-remaining", header::HeaderValue::from_static("0;w=21600"));
            h.insert("docker-ratelimit-source", header::HeaderValue::from_static("127.0.0.1"));
        }
        return resp;
    }
    if let Some(Fault::Redirect { location, .. }) = &fault {
        return (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location.clone())]).into_response();
    }
    if let Some(Fault::Body { bytes, .. }) = &fault {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/vnd.oci.image.manifest.v1+json")],
            bytes.clone(),
        )
            .into_response();
    }
    let mut out = s
        .client
        .request(req.method().clone(), format!("{}{path_q}", s.upstream));
    for name in [header::ACCEPT, header::RANGE] {
        for v in req.headers().get_all(&name) {
            out = out.header(&name, v);
        }
    }
    let resp = match out.send().await {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let mut builder = Response::builder().status(resp.status());
    for (name, value) in resp.headers() {
        if name != header::TRANSFER_ENCODING && name != header::CONNECTION {
            builder = builder.header(name, value.clone());
        }
    }
    let counted = s.clone();
    let upstream = resp.bytes_stream().map(move |chunk| {
        if let Ok(c) = &chunk {
            counted.body_bytes.fetch_add(c.len() as u64, Ordering::Relaxed);
        }
        chunk.map_err(std::io::Error::other)
    });
    let body = match fault {
        None | Some(Fault::Status { .. }) | Some(Fault::Body { .. }) | Some(Fault::Redirect { .. }) => {
            Body::from_stream(upstream)
        }
        Some(fault) => Body::from_stream(faulty(upstream, fault)),
    };
    builder
        .body(body)
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

type Chunk = Result<Bytes, std::io::Error>;

/// Re-chunk the upstream body through a channel, applying the fault.
fn faulty(
    upstream: impl futures_util::Stream<Item = Chunk> + Send + 'static,
    fault: Fault,
) -> impl futures_util::Stream<Item = Chunk> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(4);
    tokio::spawn(async move {
        let mut upstream = std::pin::pin!(upstream);
        let mut sent = 0u64;
        let reset = || {
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "injected reset",
            ))
        };
        if matches!(fault, Fault::Stall) {
            // Keep the sender alive: headers are out, the body never comes.
            tx.closed().await;
            return;
        }
        while let Some(chunk) = upstream.next().await {
            let Ok(mut chunk) = chunk else {
                let _ = tx.send(reset()).await;
                return;
            };
            let start = sent;
            sent += chunk.len() as u64;
            match &fault {
                Fault::ResetAfter { bytes, .. } if sent > *bytes => {
                    let keep = (*bytes - start) as usize;
                    let _ = tx.send(Ok(chunk.slice(..keep))).await;
                    let _ = tx.send(reset()).await;
                    return;
                }
                Fault::FlipByte { offset, .. } if (start..sent).contains(offset) => {
                    let mut v = chunk.to_vec();
                    v[(*offset - start) as usize] ^= 1;
                    chunk = Bytes::from(v);
                }
                Fault::Drip { chunk: size, delay } => {
                    let mut rest = chunk;
                    while !rest.is_empty() {
                        let piece = rest.split_to((*size).min(rest.len()));
                        if tx.send(Ok(piece)).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(*delay).await;
                    }
                    continue;
                }
                Fault::PauseAfter {
                    bytes,
                    reached,
                    resume,
                    then_reset,
                } if start < *bytes && sent >= *bytes => {
                    let keep = (*bytes - start) as usize;
                    let rest = chunk.split_off(keep);
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                    reached.notify_one();
                    resume.notified().await;
                    if *then_reset {
                        let _ = tx.send(reset()).await;
                        return;
                    }
                    chunk = rest;
                }
                _ => {}
            }
            if !chunk.is_empty() && tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    });
    tokio_stream_from(rx)
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Chunk>,
) -> impl futures_util::Stream<Item = Chunk> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
