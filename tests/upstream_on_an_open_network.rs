//! An upstream on an open network cannot send berth, or berth's credentials,
//! where it likes: a token realm on a host that is neither an endpoint's nor
//! in `auth_hosts` is refused before any connection; a blob redirected to a
//! CDN on another host is fetched there without `Authorization`; a redirect
//! loop ends after a few hops. And a burst of 429s is a rate limit, not an
//! outage: misses fail fast with `rate_limited` and Retry-After, cached
//! content is still served, and the upstream is not asked again meanwhile.

mod support;

use support::images::{push_random_blob, push_tiny_image};
use support::recorder::{Answer, Recorder};
use support::registry::Registry;
use support::relay::{Fault, Relay, RelayOptions};
use support::{Berth, COMMIT_WAIT, UpstreamToml, blob_path, client, eventually_async, lazy, sha256_hex};

const USER: &str = "puller";
const PASSWORD: &str = "s3cret-never-to-a-stranger";

/// docker.io at `endpoint` with credentials, one attempt.
fn upstream(endpoint: &str) -> UpstreamToml {
    UpstreamToml::default_docker_io(endpoint)
        .set("username", USER)
        .set("password", PASSWORD)
        .set("attempts", 1)
}

async fn token_relay(registry: &Registry) -> Relay {
    Relay::start(
        &registry.url(),
        RelayOptions {
            token_auth: Some((USER.into(), PASSWORD.into())),
            ..RelayOptions::default()
        },
    )
    .await
}

/// GET `path` on berth: status, the error body's (code, cause, message), Retry-After.
async fn get_error(berth: &Berth, path: &str) -> (u16, String, String, String, Option<u64>) {
    let resp = client()
        .get(format!("{}{path}", berth.url()))
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let entry = &body["errors"][0];
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    (
        status,
        text(&entry["code"]),
        text(&entry["detail"]["cause"]),
        text(&entry["message"]),
        retry_after,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_realm_on_another_host_gets_no_connection_and_no_credentials() {
    let registry = Registry::start();
    tokio::task::block_in_place(|| push_tiny_image(&registry, "library/app", "v1", false));
    let relay = token_relay(&registry).await;
    // It would hand out a token to whoever asks.
    let stranger = Recorder::start(Answer::Body(r#"{"token":"from-a-stranger"}"#.into())).await;
    let berth = Berth::start(&upstream(&relay.url()).to_toml());
    // The endpoint is http://127.0.0.1:<relay>: `localhost` is another host
    // name, and another port of 127.0.0.1 is another host too.
    for realm in [
        format!("http://localhost:{}/token", stranger.port()),
        format!("http://127.0.0.1:{}/token", stranger.port()),
    ] {
        relay.set_realm(&realm);
        let (status, code, cause, message, _) = get_error(&berth, "/v2/app/manifests/v1").await;
        assert_eq!(
            (status, code.as_str(), cause.as_str()),
            (502, "UNAUTHORIZED", "unauthorized"),
            "{message}"
        );
        let origin = realm.trim_end_matches("/token");
        assert!(
            message.contains(&format!("token realm {origin} refused")) && message.contains("auth_hosts"),
            "the message names the refused realm and the key: {message}"
        );
    }
    assert_eq!(stranger.connections(), 0, "nothing connected to the stranger");
    assert!(!berth.log().contains(PASSWORD));

    // Listed in auth_hosts, the same realm is used (and gets the credentials).
    let realm_host = format!("localhost:{}", stranger.port());
    relay.set_realm(&format!("http://{realm_host}/token"));
    let allowed = Berth::start(&upstream(&relay.url()).set("auth_hosts", vec![realm_host]).to_toml());
    let _ = get_error(&allowed, "/v2/app/manifests/v1").await;
    let asked = stranger.requests();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(asked[0].0.starts_with("/token?"), "{asked:?}");
    assert!(
        asked[0]
            .1
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Basic ")),
        "an allowed realm gets the credentials"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_redirected_to_a_cdn_on_another_host_is_fetched_without_authorization() {
    let registry = Registry::start();
    let (digest, content) = tokio::task::block_in_place(|| push_random_blob(&registry, "library/app", 256 << 10, 7));
    let relay = token_relay(&registry).await;
    let cdn = Recorder::start(Answer::Body(content.clone().into())).await;
    // As Docker Hub does: the blob GET (with a valid token) is sent on.
    relay.fault(
        "/blobs/",
        Fault::Redirect {
            location: format!("http://localhost:{}/cdn/blob?signature=abc", cdn.port()),
            times: 1,
        },
    );
    let berth = Berth::start(&upstream(&relay.url()).to_toml());
    let body = client()
        .get(format!("{}/v2/app/blobs/{digest}", berth.url()))
        .send()
        .await
        .expect("request")
        .error_for_status()
        .expect("the blob")
        .bytes()
        .await
        .expect("body");
    assert_eq!(sha256_hex(&body), digest);
    assert!(relay.tokens_issued() >= 1, "the relay was asked with a token");
    let at_cdn = cdn.requests();
    assert_eq!(at_cdn.len(), 1, "{at_cdn:?}");
    assert!(
        at_cdn[0].1.get("authorization").is_none(),
        "no token or credentials to another host: {:?}",
        at_cdn[0].1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redirect_loop_is_given_up_after_five_hops() {
    let registry = Registry::start();
    let (digest, _) = tokio::task::block_in_place(|| push_random_blob(&registry, "library/app", 1024, 8));
    let relay = token_relay(&registry).await;
    let looping = Recorder::start(Answer::RedirectToSelf).await;
    relay.fault(
        "/blobs/",
        Fault::Redirect {
            location: format!("http://127.0.0.1:{}/loop", looping.port()),
            times: 1,
        },
    );
    let berth = Berth::start(&upstream(&relay.url()).to_toml());
    let (status, _, cause, message, _) = get_error(&berth, &format!("/v2/app/blobs/{digest}")).await;
    assert_eq!((status, cause.as_str()), (503, "upstream_unavailable"), "{message}");
    assert!(message.contains("too many redirects"), "{message}");
    // The relay's redirect was hop 1; hops 2 to 5 went round the loop.
    assert_eq!(looping.requests().len(), 5, "reqwest's own limit is 10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_429s_fails_misses_fast_as_rate_limited_and_serves_the_cache() {
    let registry = Registry::start();
    let (manifest, _, layer) = tokio::task::block_in_place(|| push_tiny_image(&registry, "library/app", "v1", false));
    let (cold, _) = tokio::task::block_in_place(|| push_random_blob(&registry, "library/app", 4096, 9));
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    // A breaker that would open after two faults: a 429 must not be one.
    let berth = Berth::start(&format!(
        "[cache]\ntag_ttl = \"0s\"\n{}",
        UpstreamToml::default_docker_io(&relay.url())
            .set("attempts", 2)
            .set("breaker_threshold", 2)
            .set("breaker_cooldown", "10m")
    ));
    let http = client();
    let tag_url = format!("{}/v2/app/manifests/v1", berth.url());
    let layer_url = format!("{}/v2/app/blobs/{layer}", berth.url());
    let warm = http.get(&tag_url).send().await.expect("tag");
    assert_eq!(warm.status(), 200);
    assert_eq!(http.get(&layer_url).send().await.expect("layer").status(), 200);
    let cache_dir = berth.cache_dir.clone();
    let layer_path = blob_path(&cache_dir, &layer);
    eventually_async(COMMIT_WAIT, "the layer is cached", || layer_path.exists()).await;

    relay.fault(
        "/v2/",
        Fault::Status {
            status: 429,
            times: 1000,
            retry_after: Some(600),
        },
    );
    let asked_before = relay.requests().len();
    let misses: Vec<String> = (0..4)
        .map(|i| format!("/v2/app/manifests/missing-{i}"))
        .chain([format!("/v2/app/blobs/{cold}")])
        .collect();
    for path in &misses {
        let (status, code, cause, message, retry_after) = get_error(&berth, path).await;
        assert_eq!(
            (status, code.as_str(), cause.as_str()),
            (429, "TOOMANYREQUESTS", "rate_limited"),
            "{path}: {message}"
        );
        assert!(
            retry_after.is_some_and(|s| (1..=600).contains(&s)),
            "{path}: Retry-After names the window's end: {retry_after:?}"
        );
    }
    assert_eq!(
        relay.requests().len() - asked_before,
        1,
        "only the first miss asked the upstream: {:#?}",
        relay.requests()
    );

    // Cached content is served all the while: the tag (stale), the layer.
    let stale = http.get(&tag_url).send().await.expect("tag");
    assert_eq!(stale.status(), 200);
    assert_eq!(
        stale
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok()),
        Some(manifest.as_str())
    );
    let body = http.get(&layer_url).send().await.expect("layer");
    assert_eq!(body.status(), 200);
    assert_eq!(sha256_hex(&body.bytes().await.expect("layer body")), layer);

    let failed: Vec<_> = berth
        .events()
        .into_iter()
        .filter(|e| e["event"] == "pull_failed")
        .collect();
    assert_eq!(failed.len(), misses.len(), "{failed:#?}");
    assert!(failed.iter().all(|e| e["cause"] == "rate_limited"), "{failed:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_rate_limit_window_ends_the_upstream_is_asked_again() {
    let registry = Registry::start();
    let (_, _, layer) = tokio::task::block_in_place(|| push_tiny_image(&registry, "library/app", "v1", false));
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    // A breaker that opens on the first fault and stays open for ten
    // minutes: had the 429 counted as one, the miss below would stay failed.
    let berth = Berth::start(
        &UpstreamToml::default_docker_io(&relay.url())
            .set("attempts", 1)
            .set("breaker_threshold", 1)
            .set("breaker_cooldown", "10m")
            .to_toml(),
    );
    relay.fault(
        "/blobs/",
        Fault::Status {
            status: 429,
            times: 1,
            retry_after: Some(1),
        },
    );
    let path = format!("/v2/app/blobs/{layer}");
    let (status, _, cause, message, retry_after) = get_error(&berth, &path).await;
    assert_eq!((status, cause.as_str()), (429, "rate_limited"), "{message}");
    assert_eq!(retry_after, Some(1));
    let addr = berth.addr;
    eventually_async(
        std::time::Duration::from_secs(10),
        lazy(|| format!("the blob is fetched once the window is over: {}", berth.log())),
        || support::raw_get(addr, &path).0 == 200,
    )
    .await;
    let failed: Vec<_> = berth
        .events()
        .into_iter()
        .filter(|e| e["event"] == "pull_failed")
        .collect();
    assert!(failed.iter().all(|e| e["cause"] == "rate_limited"), "{failed:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_concurrency_bound_holds_while_a_blob_body_streams() {
    let registry = Registry::start();
    let (slow, slow_bytes) = tokio::task::block_in_place(|| push_random_blob(&registry, "library/app", 1 << 20, 10));
    let (other, _) = tokio::task::block_in_place(|| push_random_blob(&registry, "library/app", 4096, 11));
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    let reached = std::sync::Arc::new(tokio::sync::Notify::new());
    let resume = std::sync::Arc::new(tokio::sync::Notify::new());
    relay.fault(
        &format!("/blobs/{slow}"),
        Fault::PauseAfter {
            bytes: 64 << 10,
            reached: reached.clone(),
            resume: resume.clone(),
            then_reset: false,
        },
    );
    let berth = Berth::start(
        &UpstreamToml::default_docker_io(&relay.url())
            .set("attempts", 1)
            .set("deadline", "2s")
            .set("max_concurrent_requests", 1)
            .to_toml(),
    );
    let slow_url = format!("{}/v2/app/blobs/{slow}", berth.url());
    let first = tokio::spawn(async move {
        let resp = client().get(slow_url).send().await.expect("slow blob");
        resp.bytes().await.expect("slow body")
    });
    tokio::time::timeout(std::time::Duration::from_secs(20), reached.notified())
        .await
        .expect("the slow body started");
    // Its headers came long ago; its body still holds the one slot.
    let (status, _, cause, message, _) = get_error(&berth, &format!("/v2/app/blobs/{other}")).await;
    assert_eq!((status, cause.as_str()), (503, "upstream_unavailable"), "{message}");
    assert!(message.contains("max_concurrent_requests"), "{message}");
    assert_eq!(relay.count(|r| r.contains(&other)), 0, "the upstream was not asked");
    resume.notify_one();
    let body = first.await.expect("join");
    assert_eq!(body.len(), slow_bytes.len());
    assert_eq!(sha256_hex(&body), slow);
    // The slot is back once the body ended.
    let resp = client()
        .get(format!("{}/v2/app/blobs/{other}", berth.url()))
        .send()
        .await
        .expect("other blob");
    assert_eq!(resp.status(), 200);
}
