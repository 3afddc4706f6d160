//! Signatures and SBOMs through berth: the OCI 1.1 referrers API.
//! Against Distribution 2.8 (no referrers API) berth builds the list from the
//! tag schema oras and cosign push there (the fallback tag `sha256-<hex>`,
//! cosign's `sha256-<hex>.sig`), serves it filtered by `artifactType`, keeps
//! the referrers pullable by digest and serves all of it while the upstream
//! is down. Against an upstream that has the API berth passes its index on,
//! caches it like a tag and filters it itself.

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::fake_upstream::{Answer, FakeUpstream};
use support::images::{push_manifest_with_subject, push_raw_manifest, push_tiny_image};
use support::registry::Registry;
use support::{Berth, UpstreamToml, client, sha256_hex};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";
const SPDX: &str = "application/spdx+json";
const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

struct Answered {
    status: StatusCode,
    content_type: String,
    filters: Option<String>,
    body: Vec<u8>,
}

impl Answered {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

async fn get(url: &str) -> Answered {
    let r = client().get(url).send().await.expect("request");
    let header = |n: &str| r.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (content_type, filters) = (
        header("content-type").unwrap_or_default(),
        header("oci-filters-applied"),
    );
    Answered {
        status: r.status(),
        content_type,
        filters,
        body: r.bytes().await.expect("body").to_vec(),
    }
}

/// (digest, size, artifactType) of each descriptor of a referrers answer.
fn listed(index: &Value) -> Vec<(String, u64, String)> {
    index["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("no manifests list: {index}"))
        .iter()
        .map(|d| {
            (
                d["digest"].as_str().unwrap_or_default().to_string(),
                d["size"].as_u64().unwrap_or_default(),
                d["artifactType"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn events_named(berth: &Berth, name: &str) -> Vec<Value> {
    berth.events().into_iter().filter(|e| e["event"] == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signature_and_sbom_in_the_tag_schema_are_listed_filtered_pulled_and_served_offline() {
    let mut registry = Registry::start();
    let repo = "library/signed";
    let (image, _, _) = tokio::task::block_in_place(|| push_tiny_image(&registry, repo, "v1", true));
    let hex = image.strip_prefix("sha256:").expect("sha256 digest").to_string();
    let image_size = {
        let r = client()
            .get(format!("{}/v2/{repo}/manifests/{image}", registry.url()))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("image manifest");
        r.bytes().await.expect("image bytes").len()
    };
    let subject = json!({"mediaType": OCI_MANIFEST, "digest": image, "size": image_size});
    let (sig, sbom) = tokio::task::block_in_place(|| {
        // cosign: a signature under `sha256-<hex>.sig`, no subject.
        let sig = push_manifest_with_subject(
            &registry,
            repo,
            &format!("sha256-{hex}.sig"),
            OCI_MANIFEST,
            None,
            (
                OCI_CONFIG,
                br#"{"architecture":"","os":"","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#,
            ),
            &[(
                SIMPLESIGNING,
                br#"{"critical":{"type":"cosign container image signature"}}"#,
            )],
            None,
            None,
        );
        // oras: an artifact with `subject`, by digest, then the fallback tag
        // `sha256-<hex>`: an index listing it.
        let sbom = push_manifest_with_subject(
            &registry,
            repo,
            "sbom-by-digest-first",
            OCI_MANIFEST,
            Some(SPDX),
            (EMPTY, b"{}"),
            &[(SPDX, br#"{"spdxVersion":"SPDX-2.3"}"#)],
            Some(subject.clone()),
            Some(json!({"org.opencontainers.image.created": "2026-01-01T00:00:00Z"})),
        );
        let fallback = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": sbom.digest, "size": sbom.size, "artifactType": SPDX}],
        });
        push_raw_manifest(
            &registry,
            repo,
            &format!("sha256-{hex}"),
            OCI_INDEX,
            &serde_json::to_vec(&fallback).expect("index json"),
        );
        (sig, sbom)
    });

    // tag_ttl 0: every referrers request asks the upstream, so the outage is
    // noticed; one failure opens the breaker, so a cold miss says offline.
    let berth = Berth::start(&format!(
        "[cache]\ntag_ttl = \"0s\"\n{}",
        UpstreamToml::default_docker_io(&registry.url())
            .retry("20ms", "50ms")
            .set("attempts", 1)
            .set("breaker_threshold", 1)
            .set("breaker_cooldown", "10m")
    ));
    let referrers = |digest: &str| format!("{}/v2/signed/referrers/{digest}", berth.url());

    let all = get(&referrers(&image)).await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.text());
    assert_eq!(all.content_type, OCI_INDEX);
    assert_eq!(all.filters, None, "nothing filtered, nothing said");
    let index = all.json();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], OCI_INDEX);
    assert_eq!(
        listed(&index),
        vec![
            (sbom.digest.clone(), sbom.size as u64, SPDX.to_string()),
            // No artifactType: the config's media type, as the spec has it.
            (sig.digest.clone(), sig.size as u64, OCI_CONFIG.to_string()),
        ]
    );
    assert_eq!(index["manifests"][0]["mediaType"], sbom.media_type);
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.created"],
        "2026-01-01T00:00:00Z"
    );
    assert_eq!(index["manifests"][1]["mediaType"], sig.media_type);

    // Encoded as clients encode it; the plain `+` form is checked offline below.
    let only = get(&format!("{}?artifactType=application%2Fspdx%2Bjson", referrers(&image))).await;
    assert_eq!(only.status, StatusCode::OK, "{}", only.text());
    assert_eq!(only.filters.as_deref(), Some("artifactType"));
    assert_eq!(
        listed(&only.json()),
        vec![(sbom.digest.clone(), sbom.size as u64, SPDX.to_string())]
    );

    let head = client().head(referrers(&image)).send().await.expect("HEAD");
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers().get("content-length").and_then(|v| v.to_str().ok()),
        Some(all.body.len().to_string().as_str())
    );

    let by_digest = |digest: &str| format!("{}/v2/signed/manifests/{digest}", berth.url());
    for referrer in [&sig.digest, &sbom.digest] {
        let m = get(&by_digest(referrer)).await;
        assert_eq!(m.status, StatusCode::OK, "{referrer}: {}", m.text());
        assert_eq!(&sha256_hex(&m.body), referrer);
    }

    let nothing = get(&referrers(&sha256_hex(b"no image refers to this"))).await;
    assert_eq!(nothing.status, StatusCode::OK, "{}", nothing.text());
    assert_eq!(nothing.json()["manifests"], json!([]), "no referrers: an empty list");

    let bad = get(&referrers("sha256:nothex")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.text().contains("DIGEST_INVALID"), "{}", bad.text());

    let unknown = get(&format!("{}/v2/no/such/repo/referrers/{image}", berth.url())).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text());
    assert!(unknown.text().contains("NAME_UNKNOWN"), "{}", unknown.text());

    // The upstream goes away: the last list is served, and said so once.
    registry.stop();
    let stale = get(&referrers(&image)).await;
    assert_eq!(stale.status, StatusCode::OK, "{}", stale.text());
    assert_eq!(stale.body, all.body, "the cached list, as served before");
    let degraded = events_named(&berth, "upstream_degraded");
    assert_eq!(degraded.len(), 1, "{degraded:#?}");
    assert_eq!(degraded[0]["reference"], image.as_str());
    assert_eq!(degraded[0]["cause"], "connection_refused");
    let only = get(&format!("{}?artifactType={SPDX}", referrers(&image))).await;
    assert_eq!(listed(&only.json()).len(), 1, "filtered offline too");
    for referrer in [&sig.digest, &sbom.digest] {
        let m = get(&by_digest(referrer)).await;
        assert_eq!(m.status, StatusCode::OK, "{referrer} offline: {}", m.text());
    }
    let cold = get(&referrers(&sha256_hex(b"never asked"))).await;
    assert_eq!(cold.status, StatusCode::SERVICE_UNAVAILABLE, "{}", cold.text());
    assert!(cold.text().contains("not_cached_offline"), "{}", cold.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_referrers_index_is_passed_through_cached_and_filtered_by_berth() {
    let fake = FakeUpstream::start();
    let subject = sha256_hex(b"an image");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": sha256_hex(b"sbom"), "size": 4, "artifactType": SPDX},
            {"mediaType": OCI_MANIFEST, "digest": sha256_hex(b"sig"), "size": 3,
             "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json", "annotations": {"k": "v"}},
        ],
    }))
    .expect("index json");
    let served = index.clone();
    fake.route(&format!("/v2/library/app/referrers/{subject}"), move |_, _| Answer {
        status: 200,
        headers: vec![("content-type".into(), OCI_INDEX.into())],
        body: served.clone().into(),
        delay: std::time::Duration::ZERO,
    });
    let not_an_index = sha256_hex(b"broken");
    fake.route(&format!("/v2/library/app/referrers/{not_an_index}"), |_, _| {
        Answer::json(200, r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#)
    });
    let berth = Berth::start(&UpstreamToml::default_docker_io(&fake.url()).to_toml());
    let url = format!("{}/v2/app/referrers/{subject}", berth.url());
    let asked = || fake.count(|r| r.contains("/referrers/") && r.contains(&subject));

    let all = get(&url).await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.text());
    assert_eq!(all.content_type, OCI_INDEX);
    assert_eq!(all.body, index, "the upstream's index, byte for byte");
    assert_eq!(all.filters, None);

    // The upstream applied no filter (no OCI-Filters-Applied): berth does.
    let only = get(&format!("{url}?artifactType={SPDX}")).await;
    assert_eq!(only.filters.as_deref(), Some("artifactType"));
    assert_eq!(listed(&only.json()), vec![(sha256_hex(b"sbom"), 4, SPDX.to_string())]);
    assert_eq!(get(&url).await.body, index);
    assert_eq!(
        asked(),
        1,
        "within tag_ttl the cached list answers: {:?}",
        fake.requests()
    );
    assert!(
        fake.requests().iter().all(|r| !r.contains("artifactType")),
        "berth asks for the whole list and caches that: {:?}",
        fake.requests()
    );
    assert_eq!(
        fake.count(|r| r.contains("tags/list")),
        0,
        "the API answered; no tag schema"
    );

    let broken = get(&format!("{}/v2/app/referrers/{not_an_index}", berth.url())).await;
    assert_eq!(broken.status, StatusCode::BAD_GATEWAY, "{}", broken.text());
    assert!(broken.text().contains("manifest_invalid"), "{}", broken.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_pass_the_same_access_check_as_the_repository() {
    let fake = FakeUpstream::start();
    let subject = sha256_hex(b"a private image");
    let empty = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
    fake.route(&format!("/v2/team/app/referrers/{subject}"), move |_, _| {
        Answer::json(200, empty.clone()).header("content-type", OCI_INDEX)
    });
    let dir = tempfile::tempdir().expect("dir");
    let htpasswd = dir.path().join("htpasswd");
    let entry = |user: &str, password: &str| format!("{user}:{}\n", bcrypt::hash(password, 5).expect("bcrypt"));
    std::fs::write(&htpasswd, entry("alice", "alice-pw") + &entry("bob", "bob-pw")).expect("htpasswd");
    let berth = Berth::start(&format!(
        "[auth]\nhtpasswd = \"{}\"\n[[access]]\nidentities = [\"alice\"]\nrepositories = [\"team/*\"]\n\
         [[access]]\nidentities = [\"bob\"]\nrepositories = [\"other/*\"]\n{}",
        htpasswd.display(),
        UpstreamToml::default_docker_io(&fake.url())
    ));
    let url = format!("{}/v2/team/app/referrers/{subject}", berth.url());
    let as_user = |who: Option<(&str, &str)>| {
        let req = client().get(&url);
        match who {
            Some((u, p)) => req.basic_auth(u, Some(p)),
            None => req,
        }
    };
    let anonymous = as_user(None).send().await.expect("anonymous");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let bob = as_user(Some(("bob", "bob-pw"))).send().await.expect("bob");
    assert_eq!(bob.status(), StatusCode::FORBIDDEN, "bob may not read team/*");
    assert_eq!(
        fake.count(|r| r.contains("/referrers/")),
        0,
        "refused before the upstream: {:?}",
        fake.requests()
    );
    let alice = as_user(Some(("alice", "alice-pw"))).send().await.expect("alice");
    assert_eq!(alice.status(), StatusCode::OK);
}
