//! `cache.max_size` is kept: when a pull takes the cache over it, the least
//! recently used content goes, the content just pulled and the content used
//! recently stay, and evicted content is fetched again, verified, when asked.

mod support;

use support::images::push_random_blob;
use support::registry::Registry;
use support::relay::{Relay, RelayOptions};
use support::{Berth, COMMIT_WAIT, UpstreamToml, blob_path, client, eventually_async, lazy, sha256_hex, stored_blobs};

const MIB: usize = 1 << 20;

fn stored_bytes(berth: &Berth) -> u64 {
    stored_blobs(&berth.cache_dir)
        .iter()
        .map(|p| p.metadata().expect("metadata").len())
        .sum()
}

async fn get(berth: &Berth, digest: &str) -> bytes::Bytes {
    client()
        .get(format!("{}/v2/evict/blobs/{digest}", berth.url()))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("blob response")
        .bytes()
        .await
        .expect("blob body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_recently_used_content_is_evicted_over_max_size() {
    let registry = Registry::start();
    let blobs: Vec<String> = (0..3u64)
        .map(|i| tokio::task::block_in_place(|| push_random_blob(&registry, "library/evict", MIB, 40 + i).0))
        .collect();
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    let max = 2600 * 1024;
    let berth = Berth::start(&format!(
        "[cache]\nmax_size = \"2600KiB\"\n{}",
        UpstreamToml::default_docker_io(&relay.url())
    ));
    let (b0, b1, b2) = (&blobs[0], &blobs[1], &blobs[2]);
    let fetches = |d: &str| relay.count(|r| r.starts_with("GET ") && r.ends_with(d));

    for d in [b0, b1] {
        assert_eq!(sha256_hex(&get(&berth, d).await), *d);
        let path = blob_path(&berth.cache_dir, d);
        eventually_async(COMMIT_WAIT, format!("{d} is cached"), || path.exists()).await;
    }
    // b0 is used again (from the cache), so b1 is now the least recently used.
    assert_eq!(sha256_hex(&get(&berth, b0).await), *b0);
    assert_eq!(fetches(b0), 1, "the second GET of b0 was a hit");
    // b2 takes the cache over 2600 KiB.
    assert_eq!(sha256_hex(&get(&berth, b2).await), *b2);
    let (p0, p1, p2) = (
        blob_path(&berth.cache_dir, b0),
        blob_path(&berth.cache_dir, b1),
        blob_path(&berth.cache_dir, b2),
    );
    eventually_async(
        COMMIT_WAIT,
        lazy(|| format!("b1 evicted, b2 kept: {}", berth.log())),
        || !p1.exists() && p2.exists(),
    )
    .await;
    assert!(p0.exists(), "the recently used b0 stays");
    assert!(stored_bytes(&berth) <= max, "{} bytes stored", stored_bytes(&berth));
    eventually_async(
        COMMIT_WAIT,
        lazy(|| format!("the eviction is logged: {}", berth.log())),
        || {
            berth.events().iter().any(|e| {
                e["message"] == "cache over max_size; least recently used content evicted" && e["evicted"] == 1
            })
        },
    )
    .await;
    // Evicted content comes back from the upstream, verified.
    assert_eq!(sha256_hex(&get(&berth, b1).await), *b1);
    assert_eq!(fetches(b1), 2, "b1 fetched again after its eviction");
    eventually_async(COMMIT_WAIT, format!("at most {max} bytes stored"), || {
        stored_bytes(&berth) <= max
    })
    .await;
}
