//! Old clients pull new images: OCI manifests and indexes converted to Docker
//! schema2 / manifest lists for clients that accept only Docker types, with
//! real content from a real Distribution upstream.

mod support;

use reqwest::StatusCode;
use serde_json::Value;
use support::daemons::Dockerd;
use support::images::{Image, seed, seed_conversion};
use support::registry::Registry;
use support::{Berth, UpstreamToml, client, client_name, sha256_hex, skopeo};

const V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
const LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// What docker 1.13 accepts, one header line each; it sends them in the
/// random order of a Go map, so every request here uses another order.
const DOCKER_1_13: [&str; 5] = [
    V2,
    LIST,
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/json",
];

struct Fetched {
    status: StatusCode,
    content_type: String,
    digest: String,
    vary: String,
    body: bytes::Bytes,
}

async fn fetch(http: &reqwest::Client, method: &str, url: &str, accept: &[&str], rotate: usize) -> Fetched {
    let mut req = http.request(method.parse().expect("method"), url);
    for i in 0..accept.len() {
        req = req.header("accept", accept[(i + rotate) % accept.len()]);
    }
    let r = req.send().await.expect("request");
    let h = |n: &str| {
        r.headers()
            .get(n)
            .map(|v| v.to_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    let (content_type, digest, vary) = (h("content-type"), h("docker-content-digest"), h("vary"));
    let status = r.status();
    Fetched {
        status,
        content_type,
        digest,
        vary,
        body: r.bytes().await.expect("body"),
    }
}

fn json(b: &[u8]) -> Value {
    serde_json::from_slice(b).expect("JSON")
}

/// (digest, size) of config and layers, in order.
fn descriptors(m: &Value) -> Vec<(String, u64)> {
    std::iter::once(&m["config"])
        .chain(m["layers"].as_array().into_iter().flatten())
        .map(|d| {
            (
                d["digest"].as_str().unwrap_or_default().to_string(),
                d["size"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

async fn upstream_manifest(http: &reqwest::Client, registry: &Registry, image: &Image) -> Value {
    let url = format!("{}/v2/{}/manifests/{}", registry.url(), image.repo, image.digest);
    let accept = [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        V2,
        LIST,
    ];
    json(&fetch(http, "GET", &url, &accept, 0).await.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_1_13_gets_schema2_and_lists_from_oci_content() {
    let mut registry = Registry::start();
    let base = tokio::task::block_in_place(|| seed(&registry));
    let conv = tokio::task::block_in_place(|| seed_conversion(&registry));
    let upstreams = UpstreamToml::default_docker_io(&registry.url()).to_toml();
    let mut berth = Berth::start(&upstreams);
    let http = client();
    let url = |image: &Image, reference: &str| {
        format!("{}/v2/{}/manifests/{reference}", berth.url(), client_name(&image.repo))
    };

    // An OCI manifest by tag.
    let oci = &base.oci;
    let got = fetch(&http, "GET", &url(oci, &oci.tag), &DOCKER_1_13, 1).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.content_type, V2);
    assert_eq!(got.digest, sha256_hex(&got.body));
    assert_ne!(got.digest, oci.digest);
    assert_eq!(got.vary, "Accept");
    let converted = json(&got.body);
    let original = upstream_manifest(&http, &registry, oci).await;
    assert_eq!(converted["schemaVersion"], 2);
    assert_eq!(converted["mediaType"], V2);
    assert_eq!(
        converted["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    assert_eq!(descriptors(&converted), descriptors(&original), "blobs unchanged");
    eprintln!(
        "original {}:\n{}\nconverted {}:\n{}",
        oci.digest,
        serde_json::to_string_pretty(&original).unwrap_or_default(),
        got.digest,
        String::from_utf8_lossy(&got.body)
    );
    // HEAD negotiates the same; the bytes are stable.
    let head = fetch(&http, "HEAD", &url(oci, &oci.tag), &DOCKER_1_13, 3).await;
    assert_eq!(
        (head.status, head.digest.as_str(), head.content_type.as_str()),
        (StatusCode::OK, got.digest.as_str(), V2)
    );
    let again = fetch(&http, "GET", &url(oci, &oci.tag), &DOCKER_1_13, 4).await;
    assert_eq!(again.body, got.body);
    let converted_manifest_digest = got.digest.clone();

    // An OCI index with an attestation: a manifest list of the two images.
    let att = &conv.attested;
    let list = fetch(&http, "GET", &url(att, &att.tag), &DOCKER_1_13, 2).await;
    assert_eq!(list.status, StatusCode::OK, "{}", String::from_utf8_lossy(&list.body));
    assert_eq!(list.content_type, LIST);
    assert_eq!(list.digest, sha256_hex(&list.body));
    let l = json(&list.body);
    let entries = l["manifests"].as_array().expect("manifests");
    assert_eq!(entries.len(), 2, "the attestation is dropped: {l}");
    assert_eq!(entries[0]["platform"]["architecture"], "amd64");
    assert_eq!(entries[1]["platform"]["architecture"], "arm64");
    assert_eq!(entries[1]["platform"]["variant"], "v8");
    let mut child_digests = Vec::new();
    for (entry, original_child) in entries.iter().zip(&conv.attested_children) {
        let digest = entry["digest"].as_str().expect("child digest");
        assert_eq!(entry["mediaType"], V2);
        let child = fetch(&http, "GET", &url(att, digest), &DOCKER_1_13, 0).await;
        assert_eq!(child.status, StatusCode::OK);
        assert_eq!(child.content_type, V2);
        assert_eq!(sha256_hex(&child.body), digest);
        assert_eq!(entry["size"], child.body.len());
        let original = upstream_manifest(&http, &registry, original_child).await;
        assert_eq!(descriptors(&json(&child.body)), descriptors(&original));
        child_digests.push(digest.to_string());
    }

    // By the original digest, a Docker-only client is refused, not converted.
    let by_original = fetch(&http, "GET", &url(oci, &oci.digest), &DOCKER_1_13, 0).await;
    assert_eq!(by_original.status, StatusCode::NOT_FOUND);
    let body = json(&by_original.body);
    assert_eq!(body["errors"][0]["code"], "MANIFEST_UNKNOWN");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("by_digest_not_acceptable")
    );

    // What cannot be converted: the documented 404.
    for (image, reason) in [(&conv.zstd, "zstd_layer"), (&conv.artifact, "non_image_config")] {
        let got = fetch(&http, "GET", &url(image, &image.tag), &DOCKER_1_13, 0).await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "{}", image.repo);
        let body = json(&got.body);
        let message = body["errors"][0]["message"].as_str().unwrap_or_default().to_string();
        assert_eq!(body["errors"][0]["code"], "MANIFEST_UNKNOWN");
        assert!(
            message.starts_with(
                "OCI manifest found, but accept header does not support OCI manifests; conversion to Docker schema2 impossible: "
            ) && message.contains(reason),
            "{message}"
        );
    }
    let refusals: Vec<Value> = berth
        .events()
        .into_iter()
        .filter(|e| e["event"] == "pull_failed" && e["cause"] == "unsupported_media_type")
        .collect();
    let reasons: Vec<&str> = refusals.iter().filter_map(|e| e["reason"].as_str()).collect();
    assert_eq!(reasons, ["by_digest_not_acceptable", "zstd_layer", "non_image_config"]);

    // Later, from the cache, with the upstream down, whatever the Accept.
    registry.stop();
    berth.kill();
    let berth2 = Berth::start_in(
        berth.cache_dir.parent().expect("work dir"),
        &berth.cache_dir,
        &upstreams,
    );
    let url2 = |image: &Image, reference: &str| {
        format!("{}/v2/{}/manifests/{reference}", berth2.url(), client_name(&image.repo))
    };
    for (image, digest) in [(oci, &converted_manifest_digest), (att, &list.digest)]
        .into_iter()
        .chain(child_digests.iter().map(|d| (att, d)))
    {
        for accept in [
            &DOCKER_1_13[..],
            &["application/vnd.oci.image.manifest.v1+json"][..],
            &[][..],
        ] {
            let got = fetch(&http, "GET", &url2(image, digest), accept, 0).await;
            assert_eq!(got.status, StatusCode::OK, "{digest} with {accept:?}");
            assert_eq!(sha256_hex(&got.body), *digest);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forced_docker_conversion_with_skopeo_and_dockerd() {
    let mut registry = Registry::start();
    let conv = tokio::task::block_in_place(|| seed_conversion(&registry));
    let upstreams = UpstreamToml::default_docker_io(&registry.url())
        .set("convert", "docker")
        .to_toml();
    let mut berth = Berth::start(&upstreams);
    let att = &conv.attested;
    let name = client_name(&att.repo);

    // skopeo copy --all: every manifest is a Docker type, every blob verifies.
    let dir = tempfile::tempdir().expect("dir");
    let src = format!("docker://{}/{name}:{}", berth.host(), att.tag);
    let dest = format!("dir:{}", dir.path().display());
    tokio::task::block_in_place(|| skopeo(&["copy", "--all", "--src-tls-verify=false", &src, &dest]));
    let mut manifests = 0;
    for entry in std::fs::read_dir(dir.path()).expect("copy dir") {
        let path = entry.expect("entry").path();
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let bytes = std::fs::read(&path).expect("read");
        if file.ends_with("manifest.json") {
            let media_type = json(&bytes)["mediaType"].as_str().unwrap_or_default().to_string();
            assert!(media_type == V2 || media_type == LIST, "{file}: {media_type}");
            manifests += 1;
        } else if file.len() == 64 {
            assert_eq!(sha256_hex(&bytes), format!("sha256:{file}"), "blob {file} verifies");
        }
    }
    assert_eq!(manifests, 3, "the list and its two images");

    // dockerd through the converting mirror.
    let dockerd = tokio::task::block_in_place(|| Dockerd::start(&berth.host()));
    let reference = format!("{name}:{}", att.tag);
    let out = tokio::task::block_in_place(|| dockerd.docker(&["pull", &reference]));
    eprintln!("docker pull {reference}:\n{out}");
    let list_digest = fetch(
        &client(),
        "HEAD",
        &format!("{}/v2/{name}/manifests/{}", berth.url(), att.tag),
        &[],
        0,
    )
    .await
    .digest;
    assert_ne!(list_digest, att.digest);
    let digests = tokio::task::block_in_place(|| dockerd.repo_digests(&reference));
    assert!(
        digests.contains(&format!("{name}@{list_digest}")),
        "{digests:?} lacks the converted digest"
    );
    tokio::task::block_in_place(|| dockerd.docker(&["rmi", &reference]));

    // berth restarts with the upstream stopped: the converted digest still pulls.
    registry.stop();
    berth.kill();
    let berth2 = Berth::start_in(
        berth.cache_dir.parent().expect("work dir"),
        &berth.cache_dir,
        &upstreams,
    );
    drop(dockerd);
    let dockerd = tokio::task::block_in_place(|| Dockerd::start(&berth2.host()));
    let by_digest = format!("{name}@{list_digest}");
    let out = tokio::task::block_in_place(|| dockerd.docker(&["pull", &by_digest]));
    eprintln!("docker pull {by_digest} (upstream stopped):\n{out}");
}
