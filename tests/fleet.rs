//! Replicas on shared S3 storage (a real 3-node Garage cluster): what one
//! replica pulled, the others serve by tag and by digest (skopeo, dockerd) when the upstream
//! is gone, and a replica that lost its disk rebuilds nothing.

mod support;

use support::garage::Garage;
use support::images::random_bytes;
use support::registry::Registry;
use support::{Berth, UpstreamToml};

fn pull(berth: &Berth, reference: &str) -> Result<Vec<String>, String> {
    support::skopeo_pull(&berth.host(), reference)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_replica_pulled_the_others_serve_with_the_upstream_gone() {
    let garage = tokio::task::block_in_place(Garage::start);
    let mut registry = Registry::start();
    // Real gzip tar layers (of random files), so dockerd can unpack them.
    let image = tokio::task::block_in_place(|| {
        support::images::push_layered_image(&registry, "fleet/app", "v1", 2, 2 << 20, 61)
    });
    let upstream = UpstreamToml::default_docker_io(&registry.url()).to_toml();
    let replicas: Vec<Berth> = (0..3)
        .map(|i| Berth::start(&format!("{}{upstream}", garage.storage_toml(i))))
        .collect();

    let through_a = tokio::task::block_in_place(|| pull(&replicas[0], "fleet/app:v1")).expect("pull through A");
    assert!(image.blobs.iter().all(|b| through_a.contains(b)), "{through_a:?}");
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
        let by_digest = tokio::task::block_in_place(|| pull(b, &format!("fleet/app@{}", image.digest)))
            .unwrap_or_else(|e| panic!("{name} by digest: {e}"));
        assert_eq!(by_digest, through_a, "{name} by digest");
        // And a real Docker daemon with B (or C) as its registry mirror.
        let dockerd = tokio::task::block_in_place(|| support::daemons::Dockerd::start(&b.host()));
        let want = format!("fleet/app@{}", image.digest);
        for reference in [want.clone(), "fleet/app:v1".to_string()] {
            tokio::task::block_in_place(|| dockerd.docker(&["pull", &reference]));
            let digests = tokio::task::block_in_place(|| dockerd.repo_digests(&reference));
            assert!(
                digests.contains(&want),
                "{name}, docker pull {reference}: RepoDigests {digests:?}"
            );
        }
    }

    // A replica that lost its disk: a fresh cache directory, same bucket.
    let fresh = Berth::start(&format!("{}{upstream}", garage.storage_toml(1)));
    let again = tokio::task::block_in_place(|| pull(&fresh, "fleet/app:v1")).expect("a fresh replica serves it");
    assert_eq!(again, through_a);
}

/// GET a blob through `berth`: its status and the sha256 hex of its body.
async fn get_blob(berth: &Berth, repo: &str, digest: String) -> Result<(u16, String), String> {
    let url = format!("{}/v2/{repo}/blobs/{digest}", berth.url());
    let resp = support::client().get(&url).send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    Ok((status.as_u16(), support::sha256_hex(&body)))
}

/// Three replicas that know each other (`[cluster]`), on one bucket.
fn fleet(garage: &Garage, upstream: &str) -> Vec<Berth> {
    garage.fleet(3, "", upstream)
}

const ALICE: (&str, &str) = ("alice", "correct horse battery staple");

/// `[auth]` letting only alice pull `fleet/*`, and the cluster secret the
/// replicas ask each other with, both as files in `dir`.
fn auth_and_secret(dir: &std::path::Path) -> (String, String) {
    let htpasswd = dir.join("htpasswd");
    let hash = bcrypt::hash(ALICE.1, 5).expect("bcrypt");
    std::fs::write(&htpasswd, format!("{}:{hash}\n", ALICE.0)).expect("htpasswd");
    let secret = dir.join("cluster-secret");
    std::fs::write(&secret, "5b1d0c3e9f2a4b6c8d7e0f1a2b3c4d5e\n").expect("secret");
    (
        format!("secret_file = {:?}\n", secret),
        format!(
            "[auth]\nhtpasswd = {:?}\n[[access]]\nidentities = [\"alice\"]\nrepositories = [\"fleet/*\"]\n",
            htpasswd
        ),
    )
}

/// With `[auth]` on: the replicas reach each other by the cluster secret,
/// clients by their own credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_cold_pulls_over_three_replicas_cost_one_upstream_fetch() {
    let garage = tokio::task::block_in_place(Garage::start);
    let registry = Registry::start();
    let (digest, content) =
        tokio::task::block_in_place(|| support::images::push_random_blob(&registry, "fleet/big", 64 << 20, 63));
    let relay = support::relay::Relay::start(&registry.url(), support::relay::RelayOptions::default()).await;
    let upstream = UpstreamToml::default_docker_io(&relay.url()).to_toml();
    let files = tempfile::tempdir().expect("temp dir");
    let (secret, auth) = auth_and_secret(files.path());
    let replicas = garage.fleet(3, &secret, &format!("{auth}{upstream}"));
    let urls: Vec<String> = replicas.iter().map(|b| b.url()).collect();
    let anonymous = support::client()
        .get(format!("{}/v2/fleet/big/blobs/{digest}", urls[0]))
        .send()
        .await
        .expect("response");
    assert_eq!(anonymous.status(), 401, "[auth] is on");
    let mut pulls = Vec::new();
    for n in 0..30 {
        let url = format!("{}/v2/fleet/big/blobs/{digest}", urls[n % 3]);
        pulls.push(tokio::spawn(async move {
            let body = support::client()
                .get(&url)
                .basic_auth(ALICE.0, Some(ALICE.1))
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
        .basic_auth(ALICE.0, Some(ALICE.1))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pulls_joined_to_an_owner_that_dies_mid_transfer_still_complete_verified() {
    use futures_util::StreamExt;
    let garage = tokio::task::block_in_place(Garage::start);
    let registry = Registry::start();
    let (digest, _) =
        tokio::task::block_in_place(|| support::images::push_random_blob(&registry, "fleet/slow", 8 << 20, 80));
    let relay = support::relay::Relay::start(&registry.url(), support::relay::RelayOptions::default()).await;
    // Slow enough that the owner is killed well inside its fetch, even on
    // a loaded machine: 8 MiB in 32 KiB steps 20 ms apart, about 5 s.
    relay.fault(
        &digest,
        support::relay::Fault::Drip {
            chunk: 32 << 10,
            delay: std::time::Duration::from_millis(20),
        },
    );
    let upstream = UpstreamToml::default_docker_io(&relay.url()).to_toml();
    let mut replicas = fleet(&garage, &upstream);
    let d = berth::reference::Digest::parse(&digest).expect("digest");
    let owner = (0..3)
        .max_by_key(|&i| berth::cluster::score(&format!("{}/", replicas[i].url()), &d))
        .unwrap_or_default();
    let others: Vec<usize> = (0..3).filter(|&i| i != owner).collect();

    // Three pulls through each of the two others: all joined to the owner's fetch.
    let (began_tx, mut began_rx) = tokio::sync::mpsc::channel(6);
    let mut pulls = Vec::new();
    for n in 0..6 {
        let url = format!("{}/v2/fleet/slow/blobs/{digest}", replicas[others[n % 2]].url());
        let began = began_tx.clone();
        pulls.push(tokio::spawn(async move {
            let resp = support::client().get(&url).send().await.map_err(|e| e.to_string())?;
            let mut stream = resp.error_for_status().map_err(|e| e.to_string())?.bytes_stream();
            let mut body = Vec::new();
            let mut told = false;
            while let Some(piece) = stream.next().await {
                body.extend_from_slice(&piece.map_err(|e| e.to_string())?);
                if !told && !body.is_empty() {
                    told = true;
                    let _ = began.send(()).await;
                }
            }
            Ok::<_, String>(support::sha256_hex(&body))
        }));
    }
    for _ in 0..6 {
        began_rx.recv().await.expect("a pull began");
    }
    let relayed_before = relay.count(|r| r.starts_with("GET ") && r.ends_with(&digest));
    assert_eq!(
        relayed_before,
        1,
        "joined to the owner's one fetch: {:?}",
        relay.requests()
    );
    replicas[owner].kill();
    for (n, pull) in pulls.into_iter().enumerate() {
        let got = pull
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("pull {n} after the owner died: {e}\n{}", replicas[others[n % 2]].log()));
        assert_eq!(got, digest, "pull {n} verified");
    }
    for &i in &others {
        assert!(
            replicas[i].log().contains("broke off its transfer"),
            "the switch to the upstream is logged: {}",
            replicas[i].log()
        );
    }
    // The rest came from the upstream as ranges, not from byte 0 again.
    let ranges = relay.ranges();
    assert!(!ranges.is_empty(), "{:?}", relay.requests());
}

/// With the whole bucket down (every Garage node killed): a blob read
/// warm before is served from the replica's `local_cache` (copied there,
/// verified, after that read); a new blob passes through from the upstream,
/// verified, logged as `storage_degraded` (fails when a store error fails
/// the pull); and once the upstream is gone too, a blob only ever fetched
/// cold is not served (so the warm answer is the local copy's, not luck).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_bucket_down_warm_blobs_come_from_the_local_cache_and_new_ones_pass_through() {
    let mut garage = tokio::task::block_in_place(Garage::start);
    let mut registry = Registry::start();
    let push = |size: usize, seed: u64| {
        tokio::task::block_in_place(|| support::images::push_random_blob(&registry, "fleet/local", size, seed))
    };
    let ((warm, warm_bytes), (cold, _), (new, _)) = (push(6 << 20, 67), push(3 << 20, 68), push(2 << 20, 69));
    let upstream = UpstreamToml::default_docker_io(&registry.url()).to_toml();
    let berth = Berth::start(&format!(
        "{}local_cache = \"32MiB\"\n{upstream}",
        garage.storage_toml(0)
    ));
    let get = |digest: &str| get_blob(&berth, "fleet/local", digest.to_string());
    // Cold: from the upstream into the bucket. Warm: from the bucket, and
    // copied to the local disk on the side.
    for digest in [&warm, &cold] {
        assert_eq!(get(digest).await, Ok((200, digest.clone())), "cold pull");
    }
    // Committed to the bucket (the client's body can end before that; a
    // read until then joins the fetch instead of reading the bucket).
    support::eventually_async(support::COMMIT_WAIT, "both blobs are in the bucket", || {
        let events = berth.events();
        [&warm, &cold].iter().all(|d| {
            events
                .iter()
                .any(|e| e["message"] == "blob cached" && e["digest"] == d.as_str())
        })
    })
    .await;
    let local_copy = support::blob_path(&berth.cache_dir.join("local"), &warm);
    assert!(
        !local_copy.exists(),
        "a cold pull is not copied (it went to the bucket)"
    );
    assert_eq!(get(&warm).await, Ok((200, warm.clone())), "warm pull");
    support::eventually_async(
        support::COMMIT_WAIT,
        support::lazy(|| format!("the warm blob is copied to the local disk: {}", berth.log())),
        || local_copy.exists(),
    )
    .await;
    assert_eq!(std::fs::read(&local_copy).expect("local copy"), warm_bytes);

    for node in &mut garage.nodes {
        node.kill();
    }
    assert_eq!(get(&warm).await, Ok((200, warm.clone())), "served from the local copy");
    assert_eq!(
        get(&new).await,
        Ok((200, new.clone())),
        "a new blob passes through: {}",
        berth.log()
    );
    assert!(
        berth
            .events()
            .iter()
            .any(|e| e["event"] == "storage_degraded" && e["reference"] == new.as_str()),
        "storage_degraded logged for {new}: {}",
        berth.log()
    );
    registry.stop();
    assert_eq!(
        get(&warm).await,
        Ok((200, warm.clone())),
        "still, with the upstream gone too"
    );
    let (status, _) = get(&cold).await.expect("an answer");
    assert_ne!(status, 200, "a blob never read warm has no local copy");
}

/// `[cluster] peers_dns`: three replicas found by one name that resolves to
/// all of them (as a Kubernetes headless Service does), here in a network
/// namespace whose /etc/hosts gives `berth-peers` the addresses 127.0.0.1,
/// .2 and .3, each replica on the same port of its own address. 12
/// concurrent cold GETs of one blob spread over the three cost one upstream
/// GET and all verify (fails when the name is not resolved: then every
/// replica owns everything and each fetches it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_found_by_peers_dns_fetch_a_cold_blob_once() {
    let registry = Registry::start();
    let (digest, _) =
        tokio::task::block_in_place(|| support::images::push_random_blob(&registry, "fleet/dns", 16 << 20, 64));
    let ns = support::netns::NetNs::create("peers-dns")
        .with_hosts("127.0.0.1 berth-peers\n127.0.0.2 berth-peers\n127.0.0.3 berth-peers\n");
    let upstream = tokio::task::block_in_place(|| registry.serve_in_netns(&ns.name));
    // A port the kernel handed out, used on all three addresses inside the
    // namespace (where nothing else listens).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let upstream_toml = UpstreamToml::default_docker_io(&upstream.url()).to_toml();
    let replicas: Vec<Berth> = (1..=3)
        .map(|i| {
            let listen = format!("127.0.0.{i}:{port}");
            Berth::start_in_netns_on(
                &ns.name,
                &listen,
                &format!("[cluster]\nself = \"http://{listen}\"\npeers_dns = \"berth-peers:{port}\"\n{upstream_toml}"),
            )
        })
        .collect();
    for b in &replicas {
        assert!(
            b.events().iter().any(|e| e["message"] == "cluster: peers from DNS"),
            "peers resolved at start: {}",
            b.log()
        );
    }
    let script = format!(
        "for i in $(seq 0 11); do (curl -sS --noproxy '*' http://127.0.0.$((i % 3 + 1)):{port}/v2/fleet/dns/blobs/{digest} | sha256sum) & done; wait"
    );
    let out = tokio::task::block_in_place(|| ns.exec("sh", &["-c", &script]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let want = digest.trim_start_matches("sha256:");
    let sums: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(sums.len(), 12, "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(sums.iter().all(|s| *s == want), "every body verifies: {text}");
    let log = upstream.log();
    let gets = log
        .lines()
        .filter(|l| {
            l.contains("msg=\"response completed\"")
                && l.contains("http.request.method=GET")
                && l.contains(&format!("http.request.uri=\"/v2/fleet/dns/blobs/{digest}\""))
        })
        .count();
    assert_eq!(
        gets,
        1,
        "one upstream GET for the three replicas:\n{log}\n{}",
        replicas.iter().map(|b| b.log()).collect::<Vec<_>>().join("\n")
    );
}

/// An expired tag asked of all three replicas at once is revalidated once
/// for the fleet, at the replica owning it: one upstream HEAD, not one per
/// replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_tag_asked_of_every_replica_is_revalidated_once_at_its_owner() {
    let garage = tokio::task::block_in_place(Garage::start);
    let registry = Registry::start();
    let image = tokio::task::block_in_place(|| {
        support::images::push_layered_image(&registry, "fleet/tagged", "v1", 1, 4096, 67)
    });
    let relay = support::relay::Relay::start(&registry.url(), support::relay::RelayOptions::default()).await;
    let upstream = UpstreamToml::default_docker_io(&relay.url()).to_toml();
    let replicas = fleet(&garage, &format!("[cache]\ntag_ttl = \"1s\"\n{upstream}"));
    let urls: Vec<String> = replicas.iter().map(|b| b.url()).collect();
    let accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json";
    let get = |url: String| async move {
        let r = support::client()
            .get(format!("{url}/v2/fleet/tagged/manifests/v1"))
            .header("accept", accept)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let digest = r
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Ok::<_, String>((status.as_u16(), digest))
    };
    assert_eq!(
        get(urls[0].clone()).await.expect("first pull"),
        (200, image.digest.clone())
    );
    // Past the 1 s tag_ttl (kept in whole seconds): every replica's record has expired.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let heads_before = relay.count(|r| r.starts_with("HEAD ") && r.contains("/manifests/v1"));
    let asks: Vec<_> = (0..12).map(|n| tokio::spawn(get(urls[n % 3].clone()))).collect();
    for (n, ask) in asks.into_iter().enumerate() {
        let got = ask.await.expect("task").unwrap_or_else(|e| panic!("ask {n}: {e}"));
        assert_eq!(got, (200, image.digest.clone()), "ask {n}");
    }
    let heads = relay.count(|r| r.starts_with("HEAD ") && r.contains("/manifests/v1")) - heads_before;
    let gets = relay.count(|r| r.starts_with("GET ") && r.contains("/manifests/v1"));
    assert_eq!(
        (heads, gets),
        (1, 1),
        "one revalidation for the fleet, one first fetch: {:?}",
        relay.requests()
    );
}

/// A metric's value as `berth`'s admin surface exposes it now.
async fn metric(berth: &Berth, name: &str) -> Option<f64> {
    let text = support::client()
        .get(format!("{}/metrics", berth.admin_url()))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Replicas on one bucket over `cache.max_size`: one replica evicts for the
/// whole fleet, planning from every replica's access times (an image served
/// lately through another replica stays, the least recently served
/// anywhere go), and no other replica deletes, not even one over the limit
/// by its own count.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_replica_evicts_for_the_fleet_by_every_replicas_access_times() {
    use berth::store::BlobStore;
    let garage = tokio::task::block_in_place(Garage::start);
    let registry = Registry::start();
    // A, B and C of 1 MiB, D of 2 MiB.
    let images: Vec<support::images::Image> = [("a", 1 << 20), ("b", 1 << 20), ("c", 1 << 20), ("d", 2 << 20)]
        .iter()
        .zip(71u64..)
        .map(|((name, size), seed)| {
            tokio::task::block_in_place(|| {
                support::images::push_layered_image(&registry, &format!("fleet/evict-{name}"), "v1", 1, *size, seed)
            })
        })
        .collect();
    let upstream = UpstreamToml::default_docker_io(&registry.url()).to_toml();
    // A, B and C fit in 3.5 MiB; D takes the bucket over, and so the
    // replica that stored B, C and D over by its own count too.
    let replicas = garage.fleet(
        3,
        "eviction_check = \"1s\"\n",
        &format!("[cache]\nmax_size = \"3584KiB\"\nkeep_recent = \"0s\"\n{upstream}"),
    );
    // Exactly one replica says it evicts for the fleet.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let evicting = loop {
        let mut said = Vec::new();
        for b in &replicas {
            said.push(metric(b, "berth_cluster_evicting").await);
        }
        if said.iter().all(Option::is_some) {
            break said;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "berth_cluster_evicting on every replica: {said:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let leader = evicting.iter().position(|v| *v == Some(1.0)).expect("one evicts");
    assert_eq!(evicting.iter().filter(|v| **v == Some(1.0)).count(), 1, "{evicting:?}");
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (n1, n2) = (&replicas[others[0]], &replicas[others[1]]);
    let reference = |i: usize| format!("fleet/evict-{}:v1", ["a", "b", "c", "d"][i]);
    let pull_through = |b: &Berth, i: usize| {
        tokio::task::block_in_place(|| pull(b, &reference(i))).unwrap_or_else(|e| panic!("{}: {e}", reference(i)))
    };
    // A through one replica, B and C through another, then A again through
    // that other: served anywhere, B then C are the least recently served.
    pull_through(n1, 0);
    pull_through(n2, 1);
    pull_through(n2, 2);
    pull_through(n2, 0);
    // D takes the bucket over max_size: 5 MiB, down to 90 % of 3.5.
    pull_through(n2, 3);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while metric(&replicas[leader], "berth_cache_evicted_items_total")
        .await
        .unwrap_or(0.0)
        == 0.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the evicting replica evicted nothing:\n{}",
            replicas[leader].log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let spool = tempfile::tempdir().expect("spool");
    let bucket = berth::store::S3BlobStore::open(
        &berth::store::S3Config {
            endpoint: garage.endpoint(0),
            bucket: support::garage::BUCKET.into(),
            region: "garage".into(),
            access_key_id: garage.key_id.clone(),
            secret_access_key: garage.secret.clone(),
        },
        spool.path(),
    )
    .expect("bucket");
    let mut kept = Vec::new();
    for image in &images {
        let mut present = 0;
        for blob in &image.blobs {
            let d = berth::reference::Digest::parse(blob).expect("digest");
            if bucket.stat(&d).await.expect("stat").is_some() {
                present += 1;
            }
        }
        kept.push(present == image.blobs.len());
        assert!(
            present == 0 || present == image.blobs.len(),
            "an image goes whole: {} ({present} of {:?})\n{}",
            image.repo,
            image.blobs,
            replicas[leader].log()
        );
    }
    assert_eq!(
        kept,
        [true, false, false, true],
        "B and C, the least recently served across the fleet, went; A (served lately through another replica) stayed\n{}",
        replicas[leader].log()
    );
    for &i in &others {
        assert_eq!(
            metric(&replicas[i], "berth_cache_evicted_items_total").await,
            Some(0.0),
            "only the evicting replica deletes"
        );
    }
}

/// A replica whose bucket endpoint is down when it starts still starts: it
/// serves by pass-through (verified), logs `storage_degraded` once, stays
/// ready ("degraded": every replica shares the bucket) and alive; once the
/// endpoint answers it lists the bucket and stores again, so a blob pulled
/// then is served from the bucket with the upstream gone (fails when berth
/// refuses to start, or never opens the gate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_with_its_bucket_down_passes_through_then_stores_once_it_answers() {
    let mut garage = tokio::task::block_in_place(Garage::start);
    let mut registry = Registry::start();
    let push = |size: usize, seed: u64| {
        tokio::task::block_in_place(|| support::images::push_random_blob(&registry, "fleet/late", size, seed))
    };
    let ((early, _), (late, _)) = (push(3 << 20, 71), push(2 << 20, 72));
    garage.nodes[0].kill();
    let upstream = UpstreamToml::default_docker_io(&registry.url()).to_toml();
    let berth = Berth::start(&format!("{}{upstream}", garage.storage_toml(0)));
    assert!(
        berth.events().iter().any(|e| e["event"] == "storage_degraded"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("did not answer at start"))),
        "the start says the bucket did not answer: {}",
        berth.log()
    );
    let (status, body) = support::raw_get(berth.admin_addr, "/_berth/health");
    assert!(status == 200 && body.contains("\"degraded\""), "{status} {body}");
    assert_eq!(support::raw_get(berth.admin_addr, "/_berth/live").0, 200);
    let get = |digest: &str| get_blob(&berth, "fleet/late", digest.to_string());
    assert_eq!(get(&early).await, Ok((200, early.clone())), "passed through");

    tokio::task::block_in_place(|| garage.nodes[0].restart());
    support::eventually_async(
        std::time::Duration::from_secs(60),
        support::lazy(|| format!("the bucket is listed once it answers: {}", berth.log())),
        || {
            berth.events().iter().any(|e| {
                e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("the bucket answered"))
            })
        },
    )
    .await;
    assert_eq!(get(&late).await, Ok((200, late.clone())), "cold, now stored");
    support::eventually_async(support::COMMIT_WAIT, "the late blob is in the bucket", || {
        berth
            .events()
            .iter()
            .any(|e| e["message"] == "blob cached" && e["digest"] == late.as_str())
    })
    .await;
    let (status, body) = support::raw_get(berth.admin_addr, "/_berth/health");
    assert!(status == 200 && body.contains("\"serving\""), "{status} {body}");
    registry.stop();
    assert_eq!(
        get(&late).await,
        Ok((200, late.clone())),
        "from the bucket, the upstream gone"
    );
    let (status, _) = get(&early).await.expect("an answer");
    assert_ne!(status, 200, "what passed through was not stored");
}
