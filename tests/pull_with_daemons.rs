//! Real daemons pull through berth from real Distribution upstreams: dockerd
//! with `registry-mirrors` (docker/daemon.json), containerd + ctr with
//! `hosts.toml` (docker/containerd/, docker/containerd-prefix/), and skopeo
//! with the CRI-O/podman `registries.conf` (docker/registries.conf).

mod support;

use std::time::Instant;

use support::daemons::{Containerd, Dockerd, snippet};
use support::images::seed;
use support::registry::Registry;
use support::relay::{Relay, RelayOptions};
use support::{Berth, UpstreamToml, client_name, sha256_hex, skopeo};

fn blob_gets(relay: &Relay) -> usize {
    relay.count(|r| r.starts_with("GET ") && r.contains("/blobs/"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dockerd_pulls_through_berth_as_registry_mirror() {
    let registry = Registry::start();
    let fixtures = tokio::task::block_in_place(|| seed(&registry));
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    let berth = Berth::start(&UpstreamToml::default_docker_io(&relay.url()).to_toml());
    let dockerd = tokio::task::block_in_place(|| Dockerd::start(&berth.host()));

    let by_tag = |i: &support::images::Image| format!("{}:{}", client_name(&i.repo), i.tag);
    let layers_by_digest = format!("{}@{}", client_name(&fixtures.layers.repo), fixtures.layers.digest);
    let pulls: Vec<(String, &support::images::Image)> = vec![
        (by_tag(&fixtures.v2s2), &fixtures.v2s2),
        (by_tag(&fixtures.oci), &fixtures.oci),
        (by_tag(&fixtures.nested), &fixtures.nested),
        (by_tag(&fixtures.index), &fixtures.index),
        (layers_by_digest, &fixtures.layers),
    ];
    let pull_all = |round: &str| {
        for (reference, image) in &pulls {
            let started = Instant::now();
            tokio::task::block_in_place(|| dockerd.docker(&["pull", reference]));
            eprintln!("dockerd {round} pull {reference}: {:?}", started.elapsed());
            let digests = tokio::task::block_in_place(|| dockerd.repo_digests(reference));
            let want = format!("{}@{}", client_name(&image.repo), image.digest);
            assert!(
                digests.contains(&want),
                "{round} {reference}: RepoDigests {digests:?} lack {want}"
            );
        }
    };
    pull_all("cold");
    let cold_blobs = blob_gets(&relay);
    assert!(cold_blobs > 0);

    let names: Vec<&str> = pulls.iter().map(|(r, _)| r.as_str()).collect();
    let mut rmi = vec!["rmi", "--force"];
    rmi.extend(&names);
    tokio::task::block_in_place(|| dockerd.docker(&rmi));
    pull_all("warm");
    assert_eq!(
        blob_gets(&relay),
        cold_blobs,
        "the pull after rmi fetched no blob from the upstream: {:#?}",
        relay.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn containerd_pulls_through_berth_with_hosts_toml() {
    let hub = Registry::start();
    let ghcr = Registry::start();
    let hub_images = tokio::task::block_in_place(|| seed(&hub));
    let ghcr_images = tokio::task::block_in_place(|| seed(&ghcr));
    let hub_relay = Relay::start(&hub.url(), RelayOptions::default()).await;
    let berth = Berth::start(&format!(
        "{}{}",
        UpstreamToml::default_docker_io(&hub_relay.url()),
        UpstreamToml::new("ghcr.io", &ghcr.url())
    ));
    let containerd = tokio::task::block_in_place(Containerd::start);
    let hosts = containerd.hosts_dir("containerd", &berth.host());
    let prefixed_hosts = containerd.hosts_dir("containerd-prefix", &berth.host());

    let pull = |hosts: &std::path::Path, reference: &str| {
        let started = Instant::now();
        let hosts = hosts.to_str().expect("utf-8 path");
        tokio::task::block_in_place(|| {
            containerd.ctr(&[
                "images",
                "pull",
                "--hosts-dir",
                hosts,
                "--snapshotter",
                "native",
                "--platform",
                "linux/amd64",
                reference,
            ])
        });
        eprintln!("containerd pull {reference}: {:?}", started.elapsed());
        containerd.image_digest(reference)
    };
    let hub_pulls = [&hub_images.v2s2, &hub_images.oci, &hub_images.index];
    let reference = |i: &support::images::Image| format!("docker.io/{}:{}", i.repo, i.tag);
    for image in hub_pulls {
        assert_eq!(
            pull(&hosts, &reference(image)),
            image.digest,
            "cold {}",
            reference(image)
        );
    }
    // Warm: containerd forgets the images (and, with --sync, their content);
    // berth serves them again without asking the upstream for a blob.
    let cold_blobs = blob_gets(&hub_relay);
    let served_blobs = |b: &Berth| {
        b.events()
            .iter()
            .filter(|e| e["message"] == "request" && e["path"].as_str().is_some_and(|p| p.contains("/blobs/")))
            .count()
    };
    let cold_served = served_blobs(&berth);
    let mut rm = vec!["images".to_string(), "rm".into(), "--sync".into()];
    rm.extend(hub_pulls.iter().map(|i| reference(i)));
    let rm: Vec<&str> = rm.iter().map(String::as_str).collect();
    tokio::task::block_in_place(|| containerd.ctr(&rm));
    for image in hub_pulls {
        assert_eq!(
            pull(&hosts, &reference(image)),
            image.digest,
            "warm {}",
            reference(image)
        );
    }
    assert_eq!(blob_gets(&hub_relay), cold_blobs, "warm pulls fetched no blob upstream");
    assert!(
        served_blobs(&berth) > cold_served,
        "containerd fetched the blobs again, from berth"
    );
    // A second registry host, routed by the ns= parameter containerd sends.
    // Both upstreams hold the same fixtures, so the digests alone cannot tell
    // which one answered: the hub must see nothing, ghcr's log the requests.
    let hub_requests = hub_relay.requests().len();
    let nested = &ghcr_images.nested;
    let reference = format!("ghcr.io/{}:{}", nested.repo, nested.tag);
    assert_eq!(pull(&hosts, &reference), nested.digest);
    // The same through a path prefix (override_path).
    let layers = &ghcr_images.layers;
    let reference = format!("ghcr.io/{}:{}", layers.repo, layers.tag);
    assert_eq!(pull(&prefixed_hosts, &reference), layers.digest);
    assert_eq!(
        hub_relay.requests()[hub_requests..],
        [] as [String; 0],
        "ghcr.io pulls never reached the docker.io upstream"
    );
    let ghcr_log = ghcr.log();
    for path in [
        format!("/v2/{}/manifests/{}", nested.repo, nested.tag),
        format!("/v2/{}/manifests/{}", layers.repo, layers.tag),
    ] {
        assert!(ghcr_log.contains(&path), "the ghcr.io upstream was asked for {path}");
    }
    let ns_requests = berth.events().iter().filter(|e| e["event"] == "pull_failed").count();
    assert_eq!(ns_requests, 0, "no request failed: {}", berth.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skopeo_uses_berth_through_registries_conf() {
    let registry = Registry::start();
    let fixtures = tokio::task::block_in_place(|| seed(&registry));
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    let berth = Berth::start(&UpstreamToml::default_docker_io(&relay.url()).to_toml());
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = dir.path().join("registries.conf");
    std::fs::write(&conf, snippet("registries.conf", &berth.host())).expect("write registries.conf");
    let image = &fixtures.v2s2;
    let conf = conf.to_str().expect("utf-8 path");
    let raw = tokio::task::block_in_place(|| {
        skopeo(&[
            "--registries-conf",
            conf,
            "inspect",
            "--raw",
            &format!("docker://docker.io/{}:{}", image.repo, image.tag),
        ])
        .stdout
    });
    assert_eq!(sha256_hex(&raw), image.digest);
    let path = format!("GET /v2/{}/manifests/{}", image.repo, image.tag);
    assert_eq!(relay.count(|r| r == path), 1, "the mirror in registries.conf was used");
}
