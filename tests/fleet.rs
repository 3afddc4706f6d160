//! Replicas on shared S3 storage (a real 3-node Garage cluster): what one
//! replica pulled, the others serve by tag and by digest when the upstream
//! is gone, and a replica that lost its disk rebuilds nothing.

mod support;

use support::garage::Garage;
use support::images::{push_image_with_layers, random_bytes};
use support::registry::Registry;
use support::{Berth, UpstreamToml};

fn pull(berth: &Berth, reference: &str) -> Result<Vec<String>, String> {
    support::skopeo_pull(&berth.host(), reference)
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

/// Three replicas that know each other (`[cluster]`), on one bucket.
fn fleet(garage: &Garage, upstream: &str) -> Vec<Berth> {
    let listens: Vec<String> = (0..3)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .to_string()
        })
        .collect();
    let peers: Vec<String> = listens.iter().map(|l| format!("\"http://{l}\"")).collect();
    (0..3)
        .map(|i| {
            let cluster = format!(
                "[cluster]\nself = \"http://{}\"\npeers = [{}]\n",
                listens[i],
                peers.join(", ")
            );
            Berth::start_on(&listens[i], &format!("{}{cluster}{upstream}", garage.storage_toml(i)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_cold_pulls_over_three_replicas_cost_one_upstream_fetch() {
    let garage = tokio::task::block_in_place(Garage::start);
    let registry = Registry::start();
    let (digest, content) =
        tokio::task::block_in_place(|| support::images::push_random_blob(&registry, "fleet/big", 64 << 20, 63));
    let relay = support::relay::Relay::start(&registry.url(), support::relay::RelayOptions::default()).await;
    let upstream = UpstreamToml::default_docker_io(&relay.url()).to_toml();
    let replicas = fleet(&garage, &upstream);
    let urls: Vec<String> = replicas.iter().map(|b| b.url()).collect();
    let mut pulls = Vec::new();
    for n in 0..30 {
        let url = format!("{}/v2/fleet/big/blobs/{digest}", urls[n % 3]);
        pulls.push(tokio::spawn(async move {
            let body = support::client()
                .get(&url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| e.to_string())?
                .bytes()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(support::sha256_hex(&body))
        }));
    }
    for (n, pull) in pulls.into_iter().enumerate() {
        let got = pull.await.expect("task").unwrap_or_else(|e| panic!("pull {n}: {e}"));
        assert_eq!(got, digest, "pull {n} verified");
    }
    let gets = relay.count(|r| r.starts_with("GET ") && r.ends_with(&digest));
    assert_eq!(gets, 1, "one upstream fetch for the fleet: {:?}", relay.requests());
    assert_eq!(content.len(), 64 << 20);
    // And the blob is in the bucket for every replica.
    let again = support::client()
        .get(format!("{}/v2/fleet/big/blobs/{digest}", urls[1]))
        .send()
        .await
        .expect("warm pull");
    assert_eq!(again.status(), 200);
}

/// An upstream serving 12 MiB (two multipart parts and more) under a digest
/// whose last byte it flips.
async fn corrupting_upstream() -> (std::net::SocketAddr, String) {
    use axum::extract::Path;
    use axum::response::IntoResponse;
    let good = random_bytes(12 << 20, 64);
    let digest = support::sha256_hex(&good);
    let mut served = good;
    if let Some(last) = served.last_mut() {
        *last ^= 1;
    }
    let want = format!("fleet/bad/blobs/{digest}");
    let app = axum::Router::new().route(
        "/v2/{*rest}",
        axum::routing::get(move |Path(rest): Path<String>| {
            let (served, want) = (served.clone(), want.clone());
            async move {
                if rest == want {
                    ([("content-type", "application/octet-stream")], served).into_response()
                } else {
                    (
                        axum::http::StatusCode::NOT_FOUND,
                        r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"x"}]}"#,
                    )
                        .into_response()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_upstream_blob_leaves_nothing_in_the_bucket() {
    use berth::store::BlobStore;
    let garage = tokio::task::block_in_place(Garage::start);
    let (addr, digest) = corrupting_upstream().await;
    let upstream = UpstreamToml::default_docker_io(&format!("http://{addr}")).to_toml();
    let berth = Berth::start(&format!("{}{upstream}", garage.storage_toml(0)));
    let body = support::client()
        .get(format!("{}/v2/fleet/bad/blobs/{digest}", berth.url()))
        .send()
        .await
        .expect("response")
        .bytes()
        .await;
    assert!(body.is_err(), "a corrupt blob never arrives as a complete body");
    let spool = tempfile::tempdir().expect("spool");
    let bucket = berth::store::S3BlobStore::open(
        &berth::store::S3Config {
            endpoint: garage.endpoint(1),
            bucket: support::garage::BUCKET.into(),
            region: "garage".into(),
            access_key_id: garage.key_id.clone(),
            secret_access_key: garage.secret.clone(),
        },
        spool.path(),
    )
    .expect("bucket");
    let d = berth::reference::Digest::parse(&digest).expect("digest");
    support::eventually_async(support::COMMIT_WAIT, "the failed fetch is over", || {
        berth.events().iter().any(|e| e["cause"] == "digest_mismatch")
    })
    .await;
    assert_eq!(bucket.stat(&d).await.expect("stat"), None, "nothing under the digest");
    let listed = bucket.list().await.expect("list");
    assert!(listed.is_empty(), "no object at all in the bucket: {listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_garage_node_lost_during_pulls_fails_none_of_them() {
    use futures_util::StreamExt;
    let mut garage = tokio::task::block_in_place(Garage::start);
    let registry = Registry::start();
    let blobs: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            tokio::task::block_in_place(|| support::images::push_random_blob(&registry, "fleet/many", 16 << 20, 70 + i))
        })
        .collect();
    let upstream = UpstreamToml::default_docker_io(&registry.url()).to_toml();
    let berth = Berth::start(&format!("{}{upstream}", garage.storage_toml(0)));
    // Four cold pulls, read in small steps; node 1 goes once they all began.
    let (began_tx, mut began_rx) = tokio::sync::mpsc::channel(4);
    let mut pulls = Vec::new();
    for (digest, _) in &blobs {
        let url = format!("{}/v2/fleet/many/blobs/{digest}", berth.url());
        let began = began_tx.clone();
        pulls.push(tokio::spawn(async move {
            let resp = support::client().get(&url).send().await.map_err(|e| e.to_string())?;
            let mut stream = resp.bytes_stream();
            let mut body = Vec::new();
            let mut told = false;
            while let Some(piece) = stream.next().await {
                body.extend_from_slice(&piece.map_err(|e| e.to_string())?);
                if !told && body.len() > 1 << 20 {
                    told = true;
                    let _ = began.send(()).await;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            Ok::<_, String>(support::sha256_hex(&body))
        }));
    }
    for _ in 0..blobs.len() {
        began_rx.recv().await.expect("a pull began");
    }
    garage.nodes[1].kill();
    for (pull, (digest, _)) in pulls.into_iter().zip(&blobs) {
        let got = pull
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("pull of {digest}: {e}"));
        assert_eq!(&got, digest, "verified with a node down");
    }
    // Stored with two of three nodes: served from the bucket, then again
    // once the node is back.
    for (digest, _) in &blobs {
        let path = format!("/v2/fleet/many/blobs/{digest}");
        support::eventually_async(support::COMMIT_WAIT, format!("{digest} in the bucket"), || {
            berth
                .events()
                .iter()
                .any(|e| e["message"] == "blob cached" && e["digest"] == digest.as_str())
        })
        .await;
        let (status, _) = support::raw_get(berth.addr, &path);
        assert_eq!(status, 200);
    }
    garage.nodes[1].restart();
    let (status, _) = support::raw_get(berth.addr, &format!("/v2/fleet/many/blobs/{}", blobs[0].0));
    assert_eq!(status, 200, "after the node came back");
}
