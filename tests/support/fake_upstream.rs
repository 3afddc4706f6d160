//! A scripted upstream registry for fault injection: each path answers what
//! the test set (status, headers, body, a delay), or a handler computes the
//! answer; every request is recorded. For hostile-upstream behaviour that a
//! real registry will not produce (Link loops, endless tag lists, configs far
//! larger than their descriptors say).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

pub type Handler = Arc<dyn Fn(&str, &str) -> Answer + Send + Sync>;

#[derive(Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub delay: Duration,
}

impl Answer {
    pub fn json(status: u16, body: impl Into<Bytes>) -> Answer {
        Answer {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Answer {
        self.delay = delay;
        self
    }
}

#[derive(Default)]
struct Shared {
    /// Path (without query) → its answer.
    routes: Mutex<HashMap<String, Handler>>,
    log: Mutex<Vec<String>>,
}

pub struct FakeUpstream {
    pub addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    /// Its own runtime, so sync tests can use it too; `None` once dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeUpstream {
    pub fn start() -> FakeUpstream {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime for the fake upstream");
        let shared = Arc::new(Shared::default());
        // Bound here and handed to the runtime, not bound by `block_on`:
        // an async test may start it too, and may not block its thread.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake upstream");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().expect("fake upstream addr");
        let app = axum::Router::new().fallback(answer).with_state(shared.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("fake upstream listener");
            let _ = axum::serve(listener, app).await;
        });
        let fake = FakeUpstream {
            addr,
            shared,
            runtime: Some(runtime),
        };
        fake.route("/v2/", |_, _| Answer::json(200, "{}"));
        fake
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answer requests for `path` (any query) with `handler(method, path_and_query)`.
    pub fn route(&self, path: &str, handler: impl Fn(&str, &str) -> Answer + Send + Sync + 'static) {
        self.shared
            .routes
            .lock()
            .expect("routes")
            .insert(path.to_string(), Arc::new(handler));
    }

    /// Every request so far, as "METHOD /path?query".
    pub fn requests(&self) -> Vec<String> {
        self.shared.log.lock().expect("log").clone()
    }

    pub fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.requests().iter().filter(|r| pred(r)).count()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        // Without blocking: an async test may drop it on its runtime, where
        // a blocking runtime shutdown panics.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn answer(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().to_string();
    let target = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    shared.log.lock().expect("log").push(format!("{method} {target}"));
    let handler = shared.routes.lock().expect("routes").get(req.uri().path()).cloned();
    let Some(handler) = handler else {
        return (
            StatusCode::NOT_FOUND,
            [("content-type", "application/json")],
            r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#,
        )
            .into_response();
    };
    let a = handler(&method, &target);
    if !a.delay.is_zero() {
        tokio::time::sleep(a.delay).await;
    }
    let mut headers = HeaderMap::new();
    for (k, v) in &a.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
            headers.insert(k, v);
        }
    }
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if method == "HEAD" {
        if let Ok(v) = HeaderValue::from_str(&a.body.len().to_string()) {
            headers.insert("content-length", v);
        }
        return (status, headers).into_response();
    }
    (status, headers, a.body).into_response()
}
