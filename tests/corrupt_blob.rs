//! A blob whose bytes do not match its digest is never stored, and the client's
//! response ends abnormally instead of completing. The corrupting upstream is
//! an in-process fake: this is fault injection, not a stand-in registry.

mod support;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use support::{Berth, COMMIT_WAIT, UpstreamToml, blob_path, client, eventually_async, sha256_hex};

/// 3 MiB of deterministic content, so the body spans many chunks.
fn content() -> Vec<u8> {
    (0..3 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect()
}

async fn start_fake(corrupt: bool) -> (std::net::SocketAddr, String, tokio::task::JoinHandle<()>) {
    let good = content();
    let digest = sha256_hex(&good);
    let mut served = good.clone();
    if corrupt {
        let last = served.len() - 1;
        served[last] ^= 0x01;
    }
    let want = digest.clone();
    let app = Router::new().route(
        "/v2/{*rest}",
        get(move |Path(rest): Path<String>, _h: HeaderMap| {
            let served = served.clone();
            let want = want.clone();
            async move {
                if rest == format!("library/blobby/blobs/{want}") {
                    ([("content-type", "application/octet-stream")], served).into_response()
                } else {
                    Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(axum::body::Body::from(
                            r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"x"}]}"#,
                        ))
                        .unwrap_or_default()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, digest, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_blob_is_not_stored_and_the_response_is_aborted() {
    let (addr, digest, task) = start_fake(true).await;
    let mut berth = Berth::start(&UpstreamToml::default_docker_io(&format!("http://{addr}")).to_toml());
    let http = client();
    let url = format!("{}/v2/blobby/blobs/{digest}", berth.url());
    let resp = http.get(&url).send().await.unwrap();
    // Headers may already say 200; the body must not complete.
    let body = resp.bytes().await;
    assert!(body.is_err(), "a corrupt blob must not arrive as a complete body");

    let blob_path = blob_path(&berth.cache_dir, &digest);
    assert!(!blob_path.exists(), "nothing stored under the digest");
    let tmp_left: Vec<_> = std::fs::read_dir(berth.cache_dir.join("tmp")).unwrap().collect();
    assert!(tmp_left.is_empty(), "the temp file is removed: {tmp_left:?}");
    let events = berth.events();
    let failed: Vec<_> = events.iter().filter(|e| e["event"] == "pull_failed").collect();
    assert_eq!(failed.len(), 1, "one pull_failed event: {events:#?}");
    assert_eq!(failed[0]["cause"], "digest_mismatch");
    task.abort();

    // The next pull from a clean upstream succeeds and is stored.
    let (addr2, digest2, task2) = start_fake(false).await;
    assert_eq!(digest, digest2);
    // Same cache dir (owned by `berth`, which must outlive berth2), new process.
    berth.kill();
    let berth2 = Berth::start_in(
        berth.cache_dir.parent().unwrap(),
        &berth.cache_dir,
        &UpstreamToml::default_docker_io(&format!("http://{addr2}")).to_toml(),
    );
    let body = http
        .get(format!("{}/v2/blobby/blobs/{digest}", berth2.url()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256_hex(&body), digest);
    eventually_async(COMMIT_WAIT, "the verified blob is stored", || blob_path.exists()).await;
    task2.abort();
}
