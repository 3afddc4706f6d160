//! What one eviction run costs at scale: a cache of `BERTH_BENCH_EVICT_BLOBS`
//! items (default 100 000) in images of 20 (a manifest, a config and 18
//! layers, the first layer shared by every 10 images, as a base is), stored
//! through the real filesystem store and sled metadata. It prints, in one
//! table:
//!
//! - opening the cache (the one directory walk, syncing the item index);
//! - `gc --dry-run` planned from the index (no walk), with what it would remove;
//! - a real run over max_size (removing about a tenth);
//! - for comparison, what blob-by-blob LRU paid on every run before: a walk of
//!   the blob directory plus one access-time lookup per blob.
//!
//! `cargo bench --bench eviction`. Under `cargo test` it runs once at 2 000
//! items as a smoke test, asserting nothing about time.

use std::sync::Arc;
use std::time::Instant;

use berth::cache::Cache;
use berth::config::{Config, Overrides};
use berth::reference::Digest;
use berth::store::{BlobStore, FsBlobStore, MetaStore, SledMetaStore};

const PER_IMAGE: usize = 20;
const ITEM_BYTES: usize = 512;

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn content(seed: u64) -> Vec<u8> {
    let mut v = seed.to_be_bytes().repeat(ITEM_BYTES / 8);
    v.truncate(ITEM_BYTES);
    v
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let total: usize = match bench {
        true => std::env::var("BERTH_BENCH_EVICT_BLOBS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000),
        false => 2_000,
    };
    // Each image adds 19 items of its own and a tenth of a shared base.
    let images = (total * 10).div_ceil((PER_IMAGE - 1) * 10 + 1);
    let dir = tempfile::tempdir().expect("temp dir");
    let cache_dir = dir.path().join("cache");

    // Fill the cache the way pulls do: content, its index entry, a manifest
    // record with its references.
    let filled = Instant::now();
    let (stored, bytes) = {
        let store: Arc<dyn BlobStore> = Arc::new(FsBlobStore::open(&cache_dir).expect("store"));
        let meta: Arc<dyn MetaStore> = Arc::new(SledMetaStore::open(&cache_dir).expect("meta"));
        let mut stored = 0usize;
        let mut bytes = 0u64;
        let mut put = async |data: Vec<u8>| -> Digest {
            let d = Digest::sha256_of(&data);
            let n = data.len() as u64;
            if store.put(&d, data.into()).await.expect("put") {
                meta.put_item(&d, n).await.expect("index");
                stored += 1;
                bytes += n;
            }
            d
        };
        for image in 0..images {
            let base = put(content(1_000_000 + (image / 10) as u64)).await;
            let mut refs = vec![base];
            for layer in 1..PER_IMAGE - 1 {
                refs.push(put(content((image * PER_IMAGE + layer) as u64)).await);
            }
            let manifest = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"digest": refs[PER_IMAGE - 2].to_string()},
                "layers": refs[..PER_IMAGE - 2].iter().map(|d| serde_json::json!({"digest": d.to_string()})).collect::<Vec<_>>(),
            }))
            .expect("manifest");
            let size = manifest.len() as u64;
            let m = put(manifest).await;
            meta.put_manifest(&m, "application/vnd.oci.image.manifest.v1+json", size, &refs)
                .await
                .expect("manifest record");
        }
        meta.flush().await.expect("flush");
        (stored, bytes)
    };
    let fill_ms = ms(filled);

    // What every run cost before: walk the store, look up each access time.
    let walked = Instant::now();
    let listed = {
        let store = FsBlobStore::open(&cache_dir).expect("store");
        let meta = SledMetaStore::open(&cache_dir).expect("meta");
        let items = store.list().await.expect("list");
        for item in &items {
            std::hint::black_box(meta.last_used_ms(&item.digest).await);
        }
        items.len()
    };
    let walk_ms = ms(walked);

    // max_size = what is stored: a run frees down to 90 % of it.
    let max = bytes;
    let toml = format!(
        "cache_dir = \"{}\"\n[cache]\nmax_size = \"{max}B\"\nkeep_recent = \"0s\"\n[[upstream]]\nname = \"docker.io\"\nendpoints = [\"http://127.0.0.1:9\"]\ndefault = true\n",
        cache_dir.display()
    );
    let config: Config = Config::from_toml(&toml, "bench", Overrides::default()).expect("config");
    let opened = Instant::now();
    let cache = Cache::open(&config, Arc::default()).await.expect("open cache");
    let open_ms = ms(opened);
    let dry = cache.gc(true).await.expect("dry run");
    let dry_again = cache.gc(true).await.expect("dry run");
    let run = cache.gc(false).await.expect("run");
    let after = cache.gc(true).await.expect("dry run after");
    assert_eq!(
        run.removed_items, dry.removed_items,
        "the run removes what the dry run planned"
    );
    assert!(after.removals.is_empty(), "under the target after the run");
    assert_eq!(listed, stored, "every stored item listed");

    println!(
        "eviction at {stored} items ({images} images of {PER_IMAGE}, base layer shared by 10), {ITEM_BYTES} B each"
    );
    println!("{:<58} {:>10}", "measurement", "ms");
    println!(
        "{:<58} {:>10.0}",
        "fill (put + index + manifest records; setup)", fill_ms
    );
    println!(
        "{:<58} {:>10.0}",
        "open: one walk of the store, item index synced", open_ms
    );
    println!(
        "{:<58} {:>10} (twice: {} ms)",
        format!("gc --dry-run: plan from the index ({} to remove)", dry.removed_items),
        dry.plan_ms,
        dry_again.plan_ms
    );
    println!(
        "{:<58} {:>10} (plan {} ms)",
        format!(
            "gc: one run removing {} items, {} B",
            run.removed_items, run.removed_bytes
        ),
        run.took_ms,
        run.plan_ms
    );
    println!(
        "{:<58} {:>10.0}",
        "before: walk + access-time lookup per blob (per run)", walk_ms
    );
    println!(
        "ratio plan / walk-per-run: {:.2}x",
        dry_again.plan_ms as f64 / walk_ms.max(0.001)
    );
}
