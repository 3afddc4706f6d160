//! One upstream fetch for any number of concurrent requests on a cold blob;
//! joined requests read the growing file; a failed fetch fails every joined
//! request and stores nothing; a late joiner gets every byte right.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::images::push_random_blob;
use support::registry::Registry;
use support::relay::{Fault, Relay, RelayOptions};
use support::{Berth, COMMIT_WAIT, UpstreamToml, blob_path, client, eventually_async, sha256_hex};
use tokio::sync::Notify;

const CLIENTS: usize = 20;
const SIZE: usize = 32 << 20;

async fn setup(seed: u64) -> (Registry, Relay, Berth, String, Vec<u8>) {
    let registry = Registry::start();
    let (digest, content) = tokio::task::block_in_place(|| push_random_blob(&registry, "library/big", SIZE, seed));
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    let berth = Berth::start(&UpstreamToml::default_docker_io(&relay.url()).to_toml());
    (registry, relay, berth, digest, content)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_clients_one_upstream_fetch() {
    let (_registry, relay, berth, digest, _) = setup(1).await;
    let http = client();
    let url = format!("{}/v2/big/blobs/{digest}", berth.url());
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move { http.get(url).send().await?.error_for_status()?.bytes().await })
        })
        .collect();
    for t in tasks {
        let body = t.await.expect("task").expect("body");
        assert_eq!(body.len(), SIZE);
        assert_eq!(sha256_hex(&body), digest);
    }
    let gets = relay.count(|r| r.starts_with("GET ") && r.contains("/blobs/"));
    assert_eq!(
        gets,
        1,
        "one upstream fetch for {CLIENTS} clients: {:#?}",
        relay.requests()
    );
    assert_eq!(relay.body_bytes(), SIZE as u64);
    let stored = blob_path(&berth.cache_dir, &digest);
    eventually_async(COMMIT_WAIT, "the blob is cached", || stored.exists()).await;
}

/// Blob responses berth has started (their heads went out), from its log.
fn blob_responses(berth: &Berth) -> usize {
    berth
        .events()
        .iter()
        .filter(|e| e["message"] == "request" && e["path"].as_str().is_some_and(|p| p.contains("/blobs/")))
        .count()
}

/// How long a step of these scenarios may take.
const STEP: Duration = Duration::from_secs(30);

fn pause(relay: &Relay, then_reset: bool) -> (Arc<Notify>, Arc<Notify>) {
    let (reached, resume) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    relay.fault(
        "/blobs/",
        Fault::PauseAfter {
            bytes: (SIZE / 2) as u64,
            reached: reached.clone(),
            resume: resume.clone(),
            then_reset,
        },
    );
    (reached, resume)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_fetch_fails_every_joined_client_and_stores_nothing() {
    let (_registry, relay, berth, digest, _) = setup(2).await;
    let (reached, resume) = pause(&relay, true);
    let http = client();
    let url = format!("{}/v2/big/blobs/{digest}", berth.url());
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move { http.get(url).send().await?.bytes().await })
        })
        .collect();
    reached.notified().await;
    eventually_async(STEP, "every client to join the fetch", || {
        blob_responses(&berth) == CLIENTS
    })
    .await;
    // The connection breaks mid-blob, and the resume finds the blob gone: a
    // definite failure that no retry can mend.
    relay.clear_faults();
    relay.fault(
        "/blobs/",
        Fault::Status {
            status: 404,
            times: 100,
            retry_after: None,
        },
    );
    resume.notify_one();
    for (i, t) in tasks.into_iter().enumerate() {
        let outcome = t.await.expect("task");
        assert!(outcome.is_err(), "client {i} gets an error, not a complete body");
    }
    assert_eq!(
        relay.count(|r| r.contains("/blobs/")),
        2,
        "one fetch and its one resume attempt: {:#?}",
        relay.requests()
    );
    assert!(!blob_path(&berth.cache_dir, &digest).exists(), "nothing cached");
    let tmp: Vec<_> = std::fs::read_dir(berth.cache_dir.join("tmp"))
        .expect("tmp dir")
        .collect();
    assert!(tmp.is_empty(), "no temp file left: {tmp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_joining_after_half_the_blob_gets_every_byte() {
    let (_registry, relay, berth, digest, content) = setup(3).await;
    let (reached, resume) = pause(&relay, false);
    let http = client();
    let url = format!("{}/v2/big/blobs/{digest}", berth.url());
    let (progress_tx, progress) = tokio::sync::watch::channel(0usize);
    let first = {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            let mut resp = http.get(url).send().await.expect("response");
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.expect("chunk") {
                body.extend_from_slice(&chunk);
                progress_tx.send_replace(body.len());
            }
            body
        })
    };
    reached.notified().await;
    // The first client has received (nearly) all of the first half.
    let half = SIZE / 2;
    eventually_async(STEP, "the first client to receive half the blob", || {
        *progress.borrow() >= half - 1
    })
    .await;
    let late = {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move { http.get(url).send().await?.error_for_status()?.bytes().await })
    };
    eventually_async(STEP, "the late client to join", || blob_responses(&berth) == 2).await;
    resume.notify_one();
    let late = late.await.expect("task").expect("late body");
    let first = first.await.expect("task");
    assert_eq!(late.len(), SIZE);
    assert!(late[..] == content[..], "the late joiner's bytes are all right");
    assert_eq!(sha256_hex(&first), digest);
    assert_eq!(relay.count(|r| r.contains("/blobs/")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_disconnects_does_not_cancel_the_fetch() {
    let (_registry, relay, berth, digest, _) = setup(4).await;
    let (reached, resume) = pause(&relay, false);
    let http = client();
    let url = format!("{}/v2/big/blobs/{digest}", berth.url());
    let spawn = || {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move { http.get(url).send().await?.error_for_status()?.bytes().await })
    };
    let leaving = spawn();
    let staying = spawn();
    reached.notified().await;
    eventually_async(STEP, "both clients to join", || blob_responses(&berth) == 2).await;
    leaving.abort();
    let _ = leaving.await;
    resume.notify_one();
    let body = staying.await.expect("task").expect("the staying client's body");
    assert_eq!(sha256_hex(&body), digest);
    let stored = blob_path(&berth.cache_dir, &digest);
    eventually_async(COMMIT_WAIT, "the blob is cached", || stored.exists()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abandoned_fetch_completes_into_the_cache_unless_configured_not_to() {
    for finish in [true, false] {
        let registry = Registry::start();
        let (digest, _) = tokio::task::block_in_place(|| push_random_blob(&registry, "library/big", SIZE, 5));
        let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
        let berth = Berth::start(&format!(
            "[cache]\nfinish_abandoned = {finish}\n{}",
            UpstreamToml::default_docker_io(&relay.url())
        ));
        let (reached, resume) = pause(&relay, false);
        let url = format!("{}/v2/big/blobs/{digest}", berth.url());
        let only = tokio::spawn(async move { client().get(url).send().await?.bytes().await });
        reached.notified().await;
        eventually_async(STEP, "the client to start", || blob_responses(&berth) == 1).await;
        only.abort();
        let _ = only.await;
        resume.notify_one();
        if finish {
            eventually_async(STEP, "the abandoned fetch to land in the cache", || {
                blob_path(&berth.cache_dir, &digest).exists()
            })
            .await;
        } else {
            eventually_async(STEP, "the abandoned fetch to stop", || {
                std::fs::read_dir(berth.cache_dir.join("tmp"))
                    .map(|d| d.count() == 0)
                    .unwrap_or(false)
            })
            .await;
            assert!(!blob_path(&berth.cache_dir, &digest).exists());
        }
    }
}
