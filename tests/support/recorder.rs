//! A listener that records what reaches it: every TCP connection accepted and
//! every request's path and headers. It stands for a host berth must not be
//! sent to (a foreign token realm) or may be (a blob CDN): it answers with a
//! fixed body, or sends each request back to itself (a redirect loop).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;

#[derive(Clone)]
pub enum Answer {
    /// 200 with these bytes.
    Body(Bytes),
    /// 307 back to this listener, forever.
    RedirectToSelf,
}

struct Shared {
    answer: Answer,
    connections: AtomicUsize,
    requests: Mutex<Vec<(String, HeaderMap)>>,
}

pub struct Recorder {
    pub addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    pub async fn start(answer: Answer) -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind recorder");
        let addr = listener.local_addr().expect("recorder addr");
        let shared = Arc::new(Shared {
            answer,
            connections: AtomicUsize::new(0),
            requests: Mutex::default(),
        });
        let counted = shared.clone();
        let listener = listener.tap_io(move |_| {
            counted.connections.fetch_add(1, Ordering::SeqCst);
        });
        let app = Router::new().fallback(record).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Recorder { addr, shared, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Every request so far: path with query, and headers.
    pub fn requests(&self) -> Vec<(String, HeaderMap)> {
        self.shared.requests.lock().expect("recorder log").clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    s.requests
        .lock()
        .expect("recorder log")
        .push((path.clone(), req.headers().clone()));
    match &s.answer {
        Answer::Body(bytes) => (StatusCode::OK, bytes.clone()).into_response(),
        Answer::RedirectToSelf => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, format!("http://{host}{path}"))],
        )
            .into_response(),
    }
}
