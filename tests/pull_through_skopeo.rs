//! skopeo pulls every fixture image through berth from a real CNCF
//! Distribution upstream; bytes verify, and the second pull never reaches the
//! upstream.

mod support;

use support::images::seed;
use support::registry::Registry;
use support::relay::{Relay, RelayOptions};
use support::{Berth, UpstreamToml, client_name, sha256_hex, skopeo, verify_oci_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skopeo_pulls_through_berth_and_the_second_pull_is_served_from_cache() {
    let registry = Registry::start();
    let fixtures = seed(&registry);
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    let berth = Berth::start(&UpstreamToml::default_docker_io(&relay.url()).to_toml());
    let work = tempfile::tempdir().expect("work dir");

    let pull_all = |round: &str| {
        for (i, image) in fixtures.all().iter().enumerate() {
            let name = client_name(&image.repo);
            let src = format!("docker://{}/{name}:{}", berth.host(), image.tag);
            let raw = tokio::task::block_in_place(|| skopeo(&["inspect", "--raw", "--tls-verify=false", &src]).stdout);
            assert_eq!(sha256_hex(&raw), image.digest, "{round}: manifest bytes of {src}");
            let dir = work.path().join(format!("{round}-{i}"));
            let dest = format!("oci:{}:{}", dir.display(), image.tag);
            let started = std::time::Instant::now();
            let out = tokio::task::block_in_place(|| skopeo(&["copy", "--all", "--src-tls-verify=false", &src, &dest]));
            // What a person sees (run with --nocapture): skopeo's own progress.
            eprintln!(
                "{round} skopeo copy --all {src} ({:?}):\n{}",
                started.elapsed(),
                String::from_utf8_lossy(&out.stdout)
            );
            let blobs = verify_oci_dir(&dir);
            // Writing a Docker image into an OCI layout, skopeo re-encodes
            // the config (it verified the original against its digest while
            // copying), so only the layers keep their digests there.
            let kept: Vec<&String> = if image.media_type.contains(".oci.") {
                image.blobs.iter().chain(&image.children).collect()
            } else {
                image.blobs.iter().skip(1).collect()
            };
            for digest in kept {
                assert!(blobs.contains(digest), "{round}: {src} is missing {digest}");
            }
        }
    };

    pull_all("cold");
    let cold = relay.requests();
    let blob_gets: Vec<_> = cold
        .iter()
        .filter(|r| r.starts_with("GET") && r.contains("/blobs/"))
        .collect();
    let mut distinct = blob_gets.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        blob_gets.len(),
        distinct.len(),
        "each blob is fetched from the upstream once: {blob_gets:#?}"
    );
    assert!(!blob_gets.is_empty());

    pull_all("warm");
    let warm = relay.requests();
    assert_eq!(
        &warm[cold.len()..],
        &[] as &[String],
        "within tag_ttl the second pull sends nothing to the upstream"
    );
}
