//! Outages don't stop pulls: berth in front of a real Distribution upstream,
//! with faults injected by the relay (statuses, resets, flipped bytes, slow
//! bodies), a stopped upstream, a refused first endpoint, `kill -9` of berth
//! itself, and a cache on a full disk. Each scenario asserts what the client
//! got and what is (or is not) in the cache.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::daemons::Dockerd;
use support::images::{push_random_blob, push_tiny_image, seed};
use support::registry::Registry;
use support::relay::{Fault, Relay, RelayOptions};
use support::{
    Berth, COMMIT_WAIT, UpstreamToml, blob_path, client, client_name, eventually_async, sha256_hex, skopeo_try,
    stored_blobs, verify_oci_dir,
};

/// docker.io at `endpoint`, with fast retries so the tests do not wait on
/// production backoff.
fn upstream(endpoint: &str) -> UpstreamToml {
    UpstreamToml::default_docker_io(endpoint).retry("50ms", "200ms")
}

fn events_named(berth: &Berth, name: &str) -> Vec<serde_json::Value> {
    berth.events().into_iter().filter(|e| e["event"] == name).collect()
}

async fn get_blob(berth: &Berth, name: &str, digest: &str) -> reqwest::Result<bytes::Bytes> {
    client()
        .get(format!("{}/v2/{name}/blobs/{digest}", berth.url()))
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await
}

fn copy_to_dir(berth: &Berth, reference: &str, dir: &Path) -> std::process::Output {
    let src = format!("docker://{}/{reference}", berth.host());
    let dest = format!("oci:{}", dir.display());
    skopeo_try(&["copy", "--all", "--src-tls-verify=false", &src, &dest])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_stopped_after_a_warm_pull_still_serves_cached_images() {
    let mut registry = Registry::start();
    let fixtures = tokio::task::block_in_place(|| seed(&registry));
    // tag_ttl 0: every tag pull asks the upstream, so the outage is noticed.
    let berth = Berth::start(&format!(
        "[cache]\ntag_ttl = \"0s\"\n{}",
        upstream(&registry.url())
            .set("attempts", 2)
            .set("breaker_threshold", 3)
            .set("breaker_cooldown", "10m")
    ));
    let dockerd = tokio::task::block_in_place(|| Dockerd::start(&berth.host()));
    let v2s2 = format!("{}:{}", client_name(&fixtures.v2s2.repo), fixtures.v2s2.tag);
    let oci = format!("{}:{}", client_name(&fixtures.oci.repo), fixtures.oci.tag);
    let layers_by_digest = format!("{}@{}", client_name(&fixtures.layers.repo), fixtures.layers.digest);
    let work = tempfile::tempdir().expect("work dir");

    // Warm: dockerd pulls one image, skopeo copies one by tag and one by digest.
    tokio::task::block_in_place(|| {
        dockerd.docker(&["pull", &v2s2]);
        for (i, reference) in [&oci, &layers_by_digest].iter().enumerate() {
            let out = copy_to_dir(&berth, reference, &work.path().join(format!("warm{i}")));
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
    });

    registry.stop();

    tokio::task::block_in_place(|| {
        dockerd.docker(&["rmi", &v2s2]);
        dockerd.docker(&["pull", &v2s2]);
        let digests = dockerd.repo_digests(&v2s2);
        let want = format!("{}@{}", client_name(&fixtures.v2s2.repo), fixtures.v2s2.digest);
        assert!(digests.contains(&want), "{digests:?}");
        for (i, reference) in [&oci, &layers_by_digest].iter().enumerate() {
            let dir = work.path().join(format!("offline{i}"));
            let out = copy_to_dir(&berth, reference, &dir);
            assert!(
                out.status.success(),
                "{reference} with the upstream down: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!verify_oci_dir(&dir).is_empty());
        }
    });
    let degraded = events_named(&berth, "upstream_degraded");
    assert!(
        degraded
            .iter()
            .any(|e| e["cause"] == "connection_refused" && e["upstream"] == "docker.io"),
        "stale serving is logged with its cause: {degraded:#?}"
    );

    // A cold image cannot be served; once the breaker is open that is said at
    // once, with the cause that tells the operator to seed the cache.
    let cold = format!(
        "{}/v2/{}/manifests/{}",
        berth.url(),
        fixtures.nested.repo,
        fixtures.nested.tag
    );
    // The first miss may still be the one that opens the circuit.
    let _ = client().get(&cold).send().await;
    let started = Instant::now();
    let resp = client().get(&cold).send().await.expect("response");
    let elapsed = started.elapsed();
    assert_eq!(resp.status(), 503);
    let body = resp.text().await.expect("body");
    assert!(body.contains("not_cached_offline"), "{body}");
    assert!(elapsed < Duration::from_secs(2), "a cold miss fails fast: {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_503s_are_retried_and_the_pull_succeeds() {
    let registry = Registry::start();
    let fixtures = tokio::task::block_in_place(|| seed(&registry));
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    let berth = Berth::start(&upstream(&relay.url()).to_toml());
    relay.fault(
        "/manifests/",
        Fault::Status {
            status: 503,
            times: 2,
            retry_after: None,
        },
    );
    let dir = tempfile::tempdir().expect("dir");
    let reference = format!("{}:{}", client_name(&fixtures.oci.repo), fixtures.oci.tag);
    let out = tokio::task::block_in_place(|| copy_to_dir(&berth, &reference, &dir.path().join("oci")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(verify_oci_dir(&dir.path().join("oci")).contains(&fixtures.oci.blobs[0]));
    let tag_gets = relay.count(|r| r.starts_with("GET ") && r.contains(&format!("/manifests/{}", fixtures.oci.tag)));
    assert_eq!(tag_gets, 3, "two 503s, then the answer: {:#?}", relay.requests());
    let degraded = events_named(&berth, "upstream_degraded");
    assert!(
        degraded.iter().any(|e| e["cause"] == "upstream_unavailable"),
        "{degraded:#?}"
    );
    assert!(events_named(&berth, "pull_failed").is_empty());
}

/// (status, Docker-Content-Digest) of a manifest GET.
async fn manifest_digest(url: &str) -> (u16, String) {
    let r = client()
        .get(url)
        .header("accept", "application/vnd.docker.distribution.manifest.v2+json")
        .send()
        .await
        .expect("request");
    let digest = r
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (r.status().as_u16(), digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cached_tag_is_served_stale_through_5xx_and_429() {
    let registry = Registry::start();
    let (digest, _, _) = tokio::task::block_in_place(|| push_tiny_image(&registry, "library/app", "v1", false));
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    // Every tag request revalidates; one attempt, so each fault is final.
    let berth = Berth::start(&format!(
        "[cache]\ntag_ttl = \"0s\"\n{}",
        upstream(&relay.url()).set("attempts", 1).set("breaker_threshold", 1000)
    ));
    let url = format!("{}/v2/app/manifests/v1", berth.url());
    assert_eq!(manifest_digest(&url).await, (200, digest.clone()));
    for (status, cause) in [
        (503, "upstream_unavailable"),
        (502, "upstream_unavailable"),
        (429, "rate_limited"),
    ] {
        let revalidations = relay.count(|r| r == "HEAD /v2/library/app/manifests/v1");
        relay.fault(
            "/manifests/",
            Fault::Status {
                status,
                times: 1,
                retry_after: None,
            },
        );
        assert_eq!(
            manifest_digest(&url).await,
            (200, digest.clone()),
            "{status}: the cached digest is served"
        );
        assert_eq!(
            relay.count(|r| r == "HEAD /v2/library/app/manifests/v1"),
            revalidations + 1,
            "{status}: the tag was revalidated (and got the fault)"
        );
        let degraded = events_named(&berth, "upstream_degraded");
        let matching = degraded
            .iter()
            .filter(|e| e["cause"] == cause && e["reference"] == "v1")
            .count();
        assert!(
            matching >= 1,
            "{status}: upstream_degraded with cause {cause}: {degraded:#?}"
        );
    }
    assert_eq!(
        events_named(&berth, "upstream_degraded").len(),
        3,
        "one event per hidden fault"
    );
    assert!(events_named(&berth, "pull_failed").is_empty(), "{}", berth.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_with_retry_after_is_waited_out() {
    let registry = Registry::start();
    let (digest, content) = tokio::task::block_in_place(|| push_random_blob(&registry, "library/limited", 1 << 20, 5));
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    let berth = Berth::start(&upstream(&relay.url()).to_toml());
    relay.fault(
        "/blobs/",
        Fault::Status {
            status: 429,
            times: 1,
            retry_after: Some(2),
        },
    );
    let started = Instant::now();
    let body = get_blob(&berth, "limited", &digest).await.expect("blob after the wait");
    let elapsed = started.elapsed();
    assert_eq!(body.len(), content.len());
    assert_eq!(sha256_hex(&body), digest);
    assert!(elapsed >= Duration::from_secs(2), "Retry-After honoured: {elapsed:?}");
    let degraded = events_named(&berth, "upstream_degraded");
    let limited = degraded
        .iter()
        .find(|e| e["cause"] == "rate_limited")
        .unwrap_or_else(|| panic!("a rate_limited upstream_degraded event: {degraded:#?}"));
    // The fetch runs in its own task; its event still names the request.
    assert!(
        limited["span"]["request_id"].as_str().is_some_and(|id| id.len() == 16),
        "the event carries the request id: {limited:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reset_halfway_through_a_64_mib_blob_resumes_with_range() {
    const SIZE: usize = 64 << 20;
    let registry = Registry::start();
    let (digest, _) = tokio::task::block_in_place(|| push_random_blob(&registry, "library/big", SIZE, 6));
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    let berth = Berth::start(&upstream(&relay.url()).to_toml());
    relay.fault(
        "/blobs/",
        Fault::ResetAfter {
            bytes: (SIZE / 2) as u64,
            times: 1,
        },
    );
    let body = get_blob(&berth, "big", &digest).await.expect("one unbroken body");
    assert_eq!(body.len(), SIZE);
    assert_eq!(sha256_hex(&body), digest);
    // Bytes in flight when the connection broke are lost, so the resume starts
    // at what berth had received: at most half, and well past the start.
    let ranges = relay.ranges();
    assert_eq!(ranges.len(), 1, "one resume: {ranges:?}");
    let from: usize = ranges[0]
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("an open-ended range: {ranges:?}"));
    assert!(SIZE / 4 < from && from <= SIZE / 2, "resumed from byte {from}");
    let stored = blob_path(&berth.cache_dir, &digest);
    eventually_async(COMMIT_WAIT, "the resumed blob is cached", || stored.exists()).await;
    let degraded = events_named(&berth, "upstream_degraded");
    assert!(
        degraded.iter().any(|e| e["cause"] == "connection_reset"),
        "{degraded:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flipped_byte_is_an_error_stores_nothing_and_the_next_pull_is_clean() {
    let registry = Registry::start();
    let (digest, _) = tokio::task::block_in_place(|| push_random_blob(&registry, "library/flip", 4 << 20, 7));
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    let berth = Berth::start(&upstream(&relay.url()).to_toml());
    relay.fault("/blobs/", Fault::FlipByte { offset: 1000, times: 1 });
    assert!(
        get_blob(&berth, "flip", &digest).await.is_err(),
        "the client sees an error, not a complete corrupt body"
    );
    assert!(!blob_path(&berth.cache_dir, &digest).exists(), "nothing stored");
    let failed = events_named(&berth, "pull_failed");
    assert!(failed.iter().any(|e| e["cause"] == "digest_mismatch"), "{failed:#?}");
    let body = get_blob(&berth, "flip", &digest).await.expect("clean pull");
    assert_eq!(sha256_hex(&body), digest);
    let stored = blob_path(&berth.cache_dir, &digest);
    eventually_async(COMMIT_WAIT, "the blob is cached", || stored.exists()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_second_endpoint_serves_when_the_first_refuses() {
    let registry = Registry::start();
    let fixtures = tokio::task::block_in_place(|| seed(&registry));
    // A port nothing listens on: connections are refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let berth = Berth::start(
        &upstream(&format!("http://{closed}"))
            .endpoint(&registry.url())
            .to_toml(),
    );
    let dir = tempfile::tempdir().expect("dir");
    let reference = format!("{}:{}", client_name(&fixtures.layers.repo), fixtures.layers.tag);
    let out = tokio::task::block_in_place(|| copy_to_dir(&berth, &reference, &dir.path().join("oci")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = verify_oci_dir(&dir.path().join("oci"));
    for blob in &fixtures.layers.blobs {
        assert!(got.contains(blob), "{blob} copied");
    }
    let degraded = events_named(&berth, "upstream_degraded");
    assert!(
        degraded
            .iter()
            .any(|e| e["cause"] == "connection_refused" && e["message"].as_str().unwrap_or("").contains("failed over")),
        "{degraded:#?}"
    );
    assert!(events_named(&berth, "pull_failed").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_ten_cold_pulls_then_restart_serves_only_verified_content() {
    const BLOBS: usize = 10;
    const SIZE: usize = 8 << 20;
    let registry = Registry::start();
    let blobs: Vec<(String, Vec<u8>)> = tokio::task::block_in_place(|| {
        (0..BLOBS)
            .map(|i| push_random_blob(&registry, "library/crash", SIZE, 100 + i as u64))
            .collect()
    });
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    let work = tempfile::tempdir().expect("work dir");
    let cache = work.path().join("cache");
    let config = upstream(&relay.url()).to_toml();
    let mut berth = Berth::start_in(work.path(), &cache, &config);
    // Slow bodies, so the kill lands in the middle of the transfers.
    relay.fault(
        "/blobs/",
        Fault::Drip {
            chunk: 64 << 10,
            delay: Duration::from_millis(5),
        },
    );
    let pulls: Vec<_> = blobs
        .iter()
        .map(|(digest, _)| {
            let url = format!("{}/v2/crash/blobs/{digest}", berth.url());
            tokio::spawn(async move { client().get(url).send().await?.bytes().await })
        })
        .collect();
    eventually_async(Duration::from_secs(30), "the transfers started", || {
        relay.body_bytes() >= (SIZE as u64) * 2
    })
    .await;
    berth.kill(); // SIGKILL
    for p in pulls {
        let _ = p.await;
    }
    let parts = std::fs::read_dir(cache.join("tmp")).map(|d| d.count()).unwrap_or(0);
    eprintln!("killed with {parts} partial downloads in flight");
    assert!(parts > 0, "the kill landed while downloads were in flight");

    relay.clear_faults();
    let berth = Berth::start_in(work.path(), &cache, &config);
    let leftovers: Vec<_> = std::fs::read_dir(cache.join("tmp")).expect("tmp").collect();
    assert!(leftovers.is_empty(), "temp files cleaned on restart: {leftovers:?}");
    let rehash = || {
        let stored = stored_blobs(&cache);
        for path in &stored {
            let name = path.file_name().and_then(|n| n.to_str()).expect("name").to_string();
            let bytes = std::fs::read(path).expect("read blob");
            assert_eq!(
                sha256_hex(&bytes),
                format!("sha256:{name}"),
                "{} re-hashes",
                path.display()
            );
        }
        stored.len()
    };
    let stored_before = rehash();
    eprintln!("{stored_before} blobs were complete and verified before the kill");
    for (digest, content) in &blobs {
        let body = get_blob(&berth, "crash", digest).await.expect("pull after restart");
        assert_eq!(body.len(), content.len());
        assert_eq!(sha256_hex(&body), *digest);
    }
    let committed = |d: &String| blob_path(&cache, d).exists();
    eventually_async(COMMIT_WAIT, "every pulled blob is committed", || {
        blobs.iter().all(|(d, _)| committed(d))
    })
    .await;
    assert_eq!(rehash(), BLOBS);
}

/// A tmpfs of a few MiB mounted for one test, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("mount point");
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).expect("mount dir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount (the tests run as root)");
        assert!(status.success(), "mount a tmpfs (needs root)");
        SmallDisk { path, _dir: dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_cache_disk_does_not_stop_pulls() {
    let registry = Registry::start();
    let fixtures = tokio::task::block_in_place(|| seed(&registry));
    let (small, _) = tokio::task::block_in_place(|| push_random_blob(&registry, "library/big", 2 << 20, 8));
    let (big, _) = tokio::task::block_in_place(|| push_random_blob(&registry, "library/big", 24 << 20, 9));
    let disk = SmallDisk::mount("8m");
    let work = tempfile::tempdir().expect("work dir");
    let berth = Berth::start_in(
        work.path(),
        &disk.path.join("cache"),
        &upstream(&registry.url()).to_toml(),
    );

    // Fits: cached as usual.
    let body = get_blob(&berth, "big", &small).await.expect("small blob");
    assert_eq!(sha256_hex(&body), small);
    let stored = blob_path(&berth.cache_dir, &small);
    eventually_async(COMMIT_WAIT, "the blob is cached", || stored.exists()).await;

    // Fills the disk halfway through: streamed on from the upstream, verified.
    let body = get_blob(&berth, "big", &big)
        .await
        .unwrap_or_else(|e| panic!("big blob despite the full disk: {e}\n{}", berth.log()));
    assert_eq!(body.len(), 24 << 20);
    assert_eq!(sha256_hex(&body), big);
    assert!(!blob_path(&berth.cache_dir, &big).exists(), "not stored");
    let storage = events_named(&berth, "storage_degraded");
    assert!(storage.iter().any(|e| e["cause"] == "disk_full"), "{storage:#?}");

    // A whole image while the disk is full.
    let dir = tempfile::tempdir().expect("dir");
    let ballast = disk.path.join("ballast");
    let _ = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", ballast.display()),
            "bs=1M",
            "count=64",
        ])
        .stderr(std::process::Stdio::null())
        .status();
    let reference = format!("{}:{}", client_name(&fixtures.layers.repo), fixtures.layers.tag);
    let out = tokio::task::block_in_place(|| copy_to_dir(&berth, &reference, &dir.path().join("oci")));
    assert!(
        out.status.success(),
        "{}\n{:#?}",
        String::from_utf8_lossy(&out.stderr),
        events_named(&berth, "pull_failed")
    );
    assert!(verify_oci_dir(&dir.path().join("oci")).contains(&fixtures.layers.blobs[0]));
    assert!(
        events_named(&berth, "pull_failed").is_empty(),
        "{:#?}",
        events_named(&berth, "pull_failed")
    );
    drop(berth);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_transfer_resumes_even_when_the_cache_cannot_store_it() {
    const SIZE: usize = 16 << 20;
    let registry = Registry::start();
    let (digest, _) = tokio::task::block_in_place(|| push_random_blob(&registry, "library/big", SIZE, 12));
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    let disk = SmallDisk::mount("4m");
    let work = tempfile::tempdir().expect("work dir");
    let berth = Berth::start_in(work.path(), &disk.path.join("cache"), &upstream(&relay.url()).to_toml());
    // Fill the cache disk: the fetch's first write fails, and the client is
    // served by a pass-through straight from the upstream.
    let _ = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", disk.path.join("ballast").display()),
            "bs=1M",
            "count=8",
        ])
        .stderr(std::process::Stdio::null())
        .status();
    // The fetch's GET and the pass-through's GET both break halfway.
    relay.fault(
        "/blobs/",
        Fault::ResetAfter {
            bytes: (SIZE / 2) as u64,
            times: 2,
        },
    );
    let body = get_blob(&berth, "big", &digest)
        .await
        .unwrap_or_else(|e| panic!("one unbroken body: {e}\n{}", berth.log()));
    assert_eq!(body.len(), SIZE);
    assert_eq!(sha256_hex(&body), digest);
    let ranges = relay.ranges();
    assert!(
        ranges.iter().any(|r| r.starts_with("bytes=") && r != "bytes=0-"),
        "the pass-through resumed with a Range: {ranges:?}\n{:#?}",
        relay.requests()
    );
    assert!(!blob_path(&berth.cache_dir, &digest).exists(), "not stored");
    assert!(events_named(&berth, "pull_failed").is_empty(), "{}", berth.log());
    let storage = events_named(&berth, "storage_degraded");
    assert!(storage.iter().any(|e| e["cause"] == "disk_full"), "{storage:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_mode_serves_the_cache_and_never_asks_the_upstream() {
    let registry = Registry::start();
    let fixtures = tokio::task::block_in_place(|| seed(&registry));
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    let work = tempfile::tempdir().expect("work dir");
    let cache = work.path().join("cache");
    let reference = format!("{}:{}", client_name(&fixtures.oci.repo), fixtures.oci.tag);
    {
        let berth = Berth::start_in(work.path(), &cache, &upstream(&relay.url()).to_toml());
        let out = tokio::task::block_in_place(|| copy_to_dir(&berth, &reference, &work.path().join("seed")));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let before = relay.requests().len();
    let berth = Berth::start_in(
        work.path(),
        &cache,
        &format!("offline = true\n[cache]\ntag_ttl = \"0s\"\n{}", upstream(&relay.url())),
    );
    let out = tokio::task::block_in_place(|| copy_to_dir(&berth, &reference, &work.path().join("offline")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cold = format!("{}:{}", client_name(&fixtures.nested.repo), fixtures.nested.tag);
    let out = tokio::task::block_in_place(|| {
        skopeo_try(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/{cold}", berth.host()),
        ])
    });
    assert!(!out.status.success());
    assert_eq!(relay.requests().len(), before, "offline: no upstream request at all");
    let failed = events_named(&berth, "pull_failed");
    assert!(failed.iter().any(|e| e["cause"] == "not_cached_offline"), "{failed:#?}");
}

/// GET through curl inside a namespace: (status, body, elapsed).
fn curl_in(ns: &support::netns::NetNs, url: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let out = tokio::task::block_in_place(|| {
        ns.exec(
            "curl",
            &["-s", "--noproxy", "*", "--max-time", "60", "-w", "\n%{http_code}", url],
        )
    });
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string(), elapsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_behind_drop_opens_the_breaker_and_misses_fail_fast() {
    let ns = support::netns::NetNs::create("breaker");
    ns.iptables(&["-A", "OUTPUT", "-p", "tcp", "--dport", "5998", "-j", "DROP"]);
    let berth = Berth::start_in_netns(
        &ns.name,
        &upstream("http://127.0.0.1:5998")
            .set("connect_timeout", "2s")
            .set("attempts", 2)
            .set("breaker_threshold", 2)
            .set("breaker_cooldown", "10m")
            .to_toml(),
        &[],
    );
    let url = format!("{}/v2/library/app/manifests/v1", berth.url());
    let (status, body, first) = curl_in(&ns, &url);
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("connect_timeout"), "{body}");
    assert!(
        first >= Duration::from_secs(2),
        "the first miss waited for the connect timeout: {first:?}"
    );
    // The breaker is open now: no more waiting on a dead upstream.
    let (status, body, second) = curl_in(&ns, &url);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not_cached_offline"), "{body}");
    assert!(
        second < Duration::from_secs(1),
        "a miss fails fast once the breaker is open: {second:?}"
    );
    assert!(
        berth.log().contains("circuit open"),
        "the breaker opening is logged: {}",
        berth.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_behind_reject_is_refused_and_the_next_endpoint_serves() {
    let content: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let digest = sha256_hex(&content);
    let ns = support::netns::NetNs::create("reject");
    ns.iptables(&[
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "--dport",
        "5997",
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]);
    // The namespace cannot see the host's loopback, so the working endpoint
    // is a Distribution started inside the namespace.
    let inner = tempfile::tempdir().expect("dir");
    let port = 5996;
    let config = inner.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            inner.path().join("data").display()
        ),
    )
    .expect("registry config");
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "docker-registry", "serve"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("docker-registry in the namespace");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    eventually_async(Duration::from_secs(20), "the registry in the namespace started", || {
        if curl_in(&ns, &format!("http://127.0.0.1:{port}/v2/")).0 == 200 {
            return true;
        }
        if let Ok(Some(s)) = child.try_wait() {
            panic!("registry exited: {s}");
        }
        false
    })
    .await;
    let _registry = Kill(child);
    // Push the blob inside the namespace with curl: POST for an upload
    // location, PUT the bytes with the digest.
    let blob_file = inner.path().join("blob");
    std::fs::write(&blob_file, &content).expect("blob file");
    let post = ns.exec(
        "curl",
        &[
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-X",
            "POST",
            &format!("http://127.0.0.1:{port}/v2/library/app/blobs/uploads/"),
        ],
    );
    let headers = String::from_utf8_lossy(&post.stdout).to_string();
    let location = headers
        .lines()
        .find_map(|l| l.strip_prefix("Location: "))
        .unwrap_or_else(|| panic!("upload location: {headers}"))
        .trim()
        .to_string();
    let put = ns.exec(
        "curl",
        &[
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", blob_file.display()),
            &format!("{location}&digest={digest}"),
        ],
    );
    let headers = String::from_utf8_lossy(&put.stdout);
    assert!(headers.starts_with("HTTP/1.1 201"), "push in the namespace: {headers}");

    let berth = Berth::start_in_netns(
        &ns.name,
        &upstream("http://127.0.0.1:5997")
            .endpoint(&format!("http://127.0.0.1:{port}"))
            .to_toml(),
        &[],
    );
    let fetched = inner.path().join("fetched");
    let out = ns.exec(
        "curl",
        &[
            "-s",
            "--noproxy",
            "*",
            "-o",
            &fetched.display().to_string(),
            "-w",
            "%{http_code}",
            &format!("{}/v2/library/app/blobs/{digest}", berth.url()),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{}", berth.log());
    let body = std::fs::read(&fetched).expect("fetched blob");
    assert_eq!(sha256_hex(&body), digest, "a verified body from the second endpoint");
    let degraded = events_named(&berth, "upstream_degraded");
    assert!(
        degraded.iter().any(|e| e["cause"] == "connection_refused"),
        "the refused first endpoint is logged: {degraded:#?}"
    );
}
