//! Replicas on shared S3 storage (a real 3-node Garage cluster): what one
//! replica pulled, the others serve by tag and by digest when the upstream
//! is gone, and a replica that lost its disk rebuilds nothing.

mod support;

use support::garage::Garage;
use support::images::{push_image_with_layers, random_bytes};
use support::registry::Registry;
use support::{Berth, UpstreamToml, skopeo_try};

fn pull(berth: &Berth, reference: &str) -> Result<Vec<String>, String> {
    let dest = tempfile::tempdir().expect("pull dir");
    let out = skopeo_try(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/{reference}", berth.host()),
        &format!("dir:{}", dest.path().display()),
    ]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let mut names: Vec<String> = std::fs::read_dir(dest.path())
        .expect("pull dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() == 64)
        .map(|n| format!("sha256:{n}"))
        .collect();
    names.sort();
    Ok(names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_replica_pulled_the_others_serve_with_the_upstream_gone() {
    let garage = tokio::task::block_in_place(Garage::start);
    let mut registry = Registry::start();
    let (l1, l2) = (random_bytes(3 << 20, 61), random_bytes(1 << 20, 62));
    let image = tokio::task::block_in_place(|| push_image_with_layers(&registry, "fleet/app", "v1", &[&l1, &l2]));
    let upstream = UpstreamToml::default_docker_io(&registry.url()).to_toml();
    let replicas: Vec<Berth> = (0..3)
        .map(|i| Berth::start(&format!("{}{upstream}", garage.storage_toml(i))))
        .collect();

    let through_a = tokio::task::block_in_place(|| pull(&replicas[0], "fleet/app:v1")).expect("pull through A");
    assert!(through_a.contains(&image.layers[0]), "{through_a:?}");
    // Nothing of it on B's or C's own disk: the bucket holds it.
    for b in &replicas[1..] {
        assert!(
            support::stored_blobs(&b.cache_dir).is_empty(),
            "replica disks hold no blobs"
        );
    }

    registry.stop();
    for (name, b) in [("B", &replicas[1]), ("C", &replicas[2])] {
        let by_tag = tokio::task::block_in_place(|| pull(b, "fleet/app:v1"))
            .unwrap_or_else(|e| panic!("{name} by tag: {e}\n{}", b.log()));
        assert_eq!(by_tag, through_a, "{name} serves the same content by tag");
        let by_digest = tokio::task::block_in_place(|| pull(b, &format!("fleet/app@{}", image.manifest)))
            .unwrap_or_else(|e| panic!("{name} by digest: {e}"));
        assert_eq!(by_digest, through_a, "{name} by digest");
    }

    // A replica that lost its disk: a fresh cache directory, same bucket.
    let fresh = Berth::start(&format!("{}{upstream}", garage.storage_toml(1)));
    let again = tokio::task::block_in_place(|| pull(&fresh, "fleet/app:v1")).expect("a fresh replica serves it");
    assert_eq!(again, through_a);
}
