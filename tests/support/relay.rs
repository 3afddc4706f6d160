//! An in-process HTTP relay between berth and the real upstream: it records
//! every request (so tests can count upstream fetches) and can demand the
//! registry Bearer token flow, with its own token endpoint, in front of a
//! registry that has no auth of its own.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

#[derive(Clone, Default)]
pub struct RelayOptions {
    /// Require Bearer tokens issued by the relay's `/token` for these credentials.
    pub token_auth: Option<(String, String)>,
}

struct Shared {
    upstream: String,
    client: reqwest::Client,
    options: RelayOptions,
    addr: String,
    log: Mutex<Vec<String>>,
    tokens: Mutex<Vec<String>>,
}

pub struct Relay {
    pub addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(upstream_url: &str, options: RelayOptions) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let shared = Arc::new(Shared {
            upstream: upstream_url.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("relay client"),
            options,
            addr: format!("http://{addr}"),
            log: Mutex::default(),
            tokens: Mutex::default(),
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

    pub fn tokens_issued(&self) -> usize {
        self.shared.tokens.lock().expect("relay tokens").len()
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
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(expected.as_str())
    {
        return (StatusCode::UNAUTHORIZED, "bad credentials").into_response();
    }
    let token = format!("tok-{}", rand::random::<u64>());
    s.tokens.lock().expect("relay tokens").push(token.clone());
    axum::Json(serde_json::json!({"token": token, "expires_in": 300})).into_response()
}

async fn relay(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let path_q = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    s.log
        .lock()
        .expect("relay log")
        .push(format!("{} {path_q}", req.method()));
    if s.options.token_auth.is_some() && req.uri().path().starts_with("/v2/") {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let valid = presented.is_some_and(|t| s.tokens.lock().expect("relay tokens").contains(&t));
        if !valid {
            let repo = req.uri().path().trim_start_matches("/v2/");
            let repo = ["/manifests/", "/blobs/", "/tags/"]
                .iter()
                .find_map(|k| repo.rfind(k).map(|i| &repo[..i]))
                .unwrap_or("");
            let challenge = format!(
                "Bearer realm=\"{}/token\",service=\"test-registry\",scope=\"repository:{repo}:pull\"",
                s.addr
            );
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, challenge)],
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            )
                .into_response();
        }
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
    builder
        .body(Body::from_stream(resp.bytes_stream()))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}
