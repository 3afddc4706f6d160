//! Tag semantics against a real upstream: a tag is revalidated with HEAD once
//! its TTL has passed, re-fetched when it moved, and served stale when the
//! upstream is gone. Routing: path prefix and containerd's `ns=` reach a
//! second configured upstream.

mod support;

use reqwest::StatusCode;
use support::images::seed;
use support::registry::Registry;
use support::relay::{Relay, RelayOptions};
use support::{Berth, UpstreamToml, client, client_name, skopeo};

async fn manifest_digest(http: &reqwest::Client, url: &str) -> (StatusCode, String) {
    let r = http.get(url).header("accept", "*/*").send().await.expect("request");
    let digest = r
        .headers()
        .get("docker-content-digest")
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    (r.status(), digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tags_revalidate_with_head_follow_moves_and_serve_stale() {
    let mut registry = Registry::start();
    let fixtures = tokio::task::block_in_place(|| seed(&registry));
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    // A zero TTL: every tag request revalidates.
    let berth = Berth::start(&format!(
        "[cache]\ntag_ttl = \"0s\"\n{}",
        UpstreamToml::default_docker_io(&relay.url())
    ));
    let http = client();
    let image = &fixtures.layers;
    let url = format!(
        "{}/v2/{}/manifests/{}",
        berth.url(),
        client_name(&image.repo),
        image.tag
    );
    let upstream_path = format!("/v2/{}/manifests/{}", image.repo, image.tag);
    let count = |method: &str| relay.count(|r| r == format!("{method} {upstream_path}"));

    assert_eq!(
        manifest_digest(&http, &url).await,
        (StatusCode::OK, image.digest.clone())
    );
    assert_eq!((count("GET"), count("HEAD")), (1, 0));
    assert_eq!(
        manifest_digest(&http, &url).await,
        (StatusCode::OK, image.digest.clone())
    );
    assert_eq!((count("GET"), count("HEAD")), (1, 1), "unchanged tag: one HEAD, no GET");

    // The tag moves upstream: HEAD sees a new digest, GET fetches it.
    let moved_to = &fixtures.nested;
    tokio::task::block_in_place(|| {
        skopeo(&[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{}/{}:{}", registry.host(), moved_to.repo, moved_to.tag),
            &format!("docker://{}/{}:{}", registry.host(), image.repo, image.tag),
        ])
    });
    assert_eq!(
        manifest_digest(&http, &url).await,
        (StatusCode::OK, moved_to.digest.clone())
    );
    assert_eq!((count("GET"), count("HEAD")), (2, 2));

    // Upstream gone: the last known digest is still served, and said so.
    registry.stop();
    assert_eq!(
        manifest_digest(&http, &url).await,
        (StatusCode::OK, moved_to.digest.clone())
    );
    let degraded: Vec<_> = berth
        .events()
        .into_iter()
        .filter(|e| e["event"] == "upstream_degraded")
        .collect();
    assert_eq!(degraded.len(), 1, "one upstream_degraded event");
    assert_eq!(degraded[0]["reference"], image.tag.as_str());
    // By digest needs no upstream at all.
    let by_digest = format!(
        "{}/v2/{}/manifests/{}",
        berth.url(),
        client_name(&image.repo),
        moved_to.digest
    );
    assert_eq!(manifest_digest(&http, &by_digest).await.0, StatusCode::OK);
    // Something never cached fails with a cause, not a hang.
    let (status, _) = manifest_digest(&http, &format!("{}/v2/busybox/manifests/never-pulled", berth.url())).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefix_and_ns_route_to_a_second_upstream() {
    let hub = Registry::start();
    let ghcr = Registry::start();
    let fixtures = tokio::task::block_in_place(|| seed(&ghcr));
    let ghcr_relay = Relay::start(&ghcr.url(), RelayOptions::default()).await;
    let berth = Berth::start(&format!(
        "{}{}",
        UpstreamToml::default_docker_io(&hub.url()),
        UpstreamToml::new("ghcr.io", &ghcr_relay.url())
    ));
    let http = client();
    let image = &fixtures.nested; // a/b/c:nested, only on "ghcr.io"
    let by_prefix = format!("{}/v2/ghcr.io/{}/manifests/{}", berth.url(), image.repo, image.tag);
    assert_eq!(
        manifest_digest(&http, &by_prefix).await,
        (StatusCode::OK, image.digest.clone())
    );
    let by_ns = format!("{}/v2/{}/manifests/{}?ns=ghcr.io", berth.url(), image.repo, image.tag);
    assert_eq!(
        manifest_digest(&http, &by_ns).await,
        (StatusCode::OK, image.digest.clone())
    );
    let expected = format!("GET /v2/{}/manifests/{}", image.repo, image.tag);
    assert!(ghcr_relay.count(|r| r == expected) >= 1, "{:#?}", ghcr_relay.requests());
    // The default upstream does not have it.
    let on_hub = format!("{}/v2/{}/manifests/{}", berth.url(), image.repo, image.tag);
    assert_eq!(manifest_digest(&http, &on_hub).await.0, StatusCode::NOT_FOUND);
}
