//! `cache.max_size` is kept: when a pull takes the cache over it, whole
//! images go, least recently served first; a layer shared with an image
//! still kept stays; the content just pulled and the content used recently
//! stay, and evicted content is fetched again, verified, when asked.
//! `berth gc --dry-run` names what a run removes, and the run removes that.

mod support;

use std::process::Command;
use std::time::Duration;

use support::images::{push_image_with_layers, push_random_blob, random_bytes};
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
        "[cache]\nmax_size = \"2600KiB\"\nkeep_recent = \"0s\"\n{}",
        UpstreamToml::default_docker_io(&relay.url())
    ));
    let (b0, b1, b2) = (&blobs[0], &blobs[1], &blobs[2]);
    let fetches = |d: &str| relay.count(|r| r.starts_with("GET ") && r.ends_with(d));

    for d in [b0, b1] {
        assert_eq!(sha256_hex(&get(&berth, d).await), *d);
        // Cached means indexed, which follows the file's rename (and the
        // directory's fsync): an eviction in between cannot choose b1 yet.
        eventually_async(COMMIT_WAIT, format!("{d} is cached"), || {
            berth
                .events()
                .iter()
                .any(|e| e["message"] == "blob cached" && e["digest"] == d.as_str())
        })
        .await;
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
                e["message"] == "cache over max_size; least recently served images evicted" && e["evicted"] == 1
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

fn pull(berth: &Berth, reference: &str) -> Result<Vec<String>, String> {
    support::skopeo_pull(&berth.host(), reference)
}

fn gc(args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("gc")
        .args(args)
        .output()
        .expect("run berth gc");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), json, text)
}

fn removed(report: &serde_json::Value) -> Vec<String> {
    let mut r: Vec<String> = report["removals"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["digest"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    r.sort();
    r
}

fn sorted(digests: &[&String]) -> Vec<String> {
    let mut v: Vec<String> = digests.iter().map(|d| d.to_string()).collect();
    v.sort();
    v
}

/// The failure class of Distribution's #2367: blob-by-blob LRU takes an old
/// layer of an image whose tag is still served, and the image breaks. Image
/// A = base + a, B = base + b, C = c. A is pulled first (its own layer is
/// the oldest blob), then B, then A's manifest is served again (a node
/// checking for an update), then C takes the cache over max_size. By image,
/// B goes (its layer b, config, manifest), base stays for A, and A still
/// pulls whole with the upstream stopped. C is served after that; then, on
/// the stopped cache with a lower max_size, `gc --dry-run` names A's content
/// (the least recently served) and the real run removes exactly that,
/// leaving C whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_takes_whole_images_and_keeps_a_shared_base_layer() {
    let mut registry = Registry::start();
    let (base, la, lb, lc) = (
        random_bytes(MIB, 71),
        random_bytes(MIB / 2, 72),
        random_bytes(MIB + MIB / 2, 73),
        random_bytes(MIB + MIB / 2, 74),
    );
    let (a, b, c) = tokio::task::block_in_place(|| {
        (
            push_image_with_layers(&registry, "evict/a", "v1", &[&base, &la]),
            push_image_with_layers(&registry, "evict/b", "v1", &[&base, &lb]),
            push_image_with_layers(&registry, "evict/c", "v1", &[&lc]),
        )
    });
    let work = tempfile::tempdir().expect("work dir");
    let cache_dir = work.path().join("cache");
    let upstream = UpstreamToml::default_docker_io(&registry.url());
    let config = |max: &str| format!("[cache]\nmax_size = \"{max}\"\nkeep_recent = \"0s\"\n{upstream}");
    let mut berth = Berth::start_in(work.path(), &cache_dir, &config("3600KiB"));
    let image_a = sorted(&[&a.manifest, &a.config, &a.layers[0], &a.layers[1]]);
    let image_b_own = sorted(&[&b.manifest, &b.config, &b.layers[1]]);
    let all_of = |m: &String, cfg: &String, layers: &[String]| {
        let mut v: Vec<&String> = vec![m, cfg];
        v.extend(layers.iter());
        v.into_iter()
            .map(|d| blob_path(&berth.cache_dir, d))
            .collect::<Vec<_>>()
    };
    let a_paths = all_of(&a.manifest, &a.config, &a.layers);
    let c_paths = all_of(&c.manifest, &c.config, &c.layers);

    let pulled_a = tokio::task::block_in_place(|| pull(&berth, "evict/a:v1")).expect("pull a");
    assert!(pulled_a.contains(&a.layers[1]), "{pulled_a:?}");
    tokio::task::block_in_place(|| pull(&berth, "evict/b:v1")).expect("pull b");
    eventually_async(COMMIT_WAIT, "a and b are cached", || {
        a_paths.iter().all(|p| p.exists()) && blob_path(&berth.cache_dir, &b.layers[1]).exists()
    })
    .await;
    // A's manifest is served again: A is now the most recently served image,
    // though its own layer is the least recently used blob.
    let resp = client()
        .get(format!("{}/v2/evict/a/manifests/v1", berth.url()))
        .header("Accept", "application/vnd.docker.distribution.manifest.v2+json")
        .send()
        .await
        .expect("manifest of a");
    assert_eq!(resp.status(), 200);
    tokio::task::block_in_place(|| pull(&berth, "evict/c:v1")).expect("pull c");
    eventually_async(
        COMMIT_WAIT,
        lazy(|| format!("b's own content evicted: {}", berth.log())),
        || image_b_own.iter().all(|d| !blob_path(&berth.cache_dir, d).exists()),
    )
    .await;
    assert!(
        a_paths.iter().all(|p| p.exists()),
        "all of A stays, base layer included"
    );
    assert!(c_paths.iter().all(|p| p.exists()), "C, just pulled, stays");
    assert!(
        stored_bytes(&berth) <= 3600 * 1024,
        "{} bytes stored",
        stored_bytes(&berth)
    );
    assert!(
        berth
            .events()
            .iter()
            .any(|e| e["message"] == "cache over max_size; least recently served images evicted"),
        "{}",
        berth.log()
    );

    let metrics = client()
        .get(format!("http://{}/metrics", berth.admin_addr))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    assert_eq!(
        value("berth_cache_evicted_items_total"),
        3.0,
        "B's manifest, config and layer"
    );
    assert_eq!(value("berth_cache_max_bytes"), 3600.0 * 1024.0);
    // A commit during a plan's read of the index may count twice until the
    // next plan (over, never under); gc's plan below re-accounts exactly.
    assert!(value("berth_cache_used_bytes") >= stored_bytes(&berth) as f64);

    // The upstream goes away: A pulls whole from the cache, B does not.
    registry.stop();
    let offline_a = tokio::task::block_in_place(|| pull(&berth, "evict/a:v1")).expect("A pulls offline");
    assert_eq!(offline_a, pulled_a, "the same content as online");
    let offline_b = tokio::task::block_in_place(|| pull(&berth, "evict/b:v1"));
    assert!(offline_b.is_err(), "B was evicted: {offline_b:?}");
    // C is served last, so A is now the least recently served image: the
    // order gc below must still see after berth stops (its last uses are
    // flushed to the millisecond; in whole seconds, A and C tied or swapped
    // by which second the pulls fell in).
    tokio::task::block_in_place(|| pull(&berth, "evict/c:v1")).expect("C pulls offline");

    // While berth runs, gc on its cache is refused (naming --url); through
    // the admin surface, the dry run finds nothing to do under max_size.
    let config_path = work.path().join("berth.toml");
    let (code, _, text) = gc(&["--config", &config_path.display().to_string(), "--dry-run"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--url"), "{text}");
    let admin = format!("http://{}", berth.admin_addr);
    let (code, report, text) = gc(&["--url", &admin, "--dry-run", "--json"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(removed(&report), Vec::<String>::new(), "{text}");
    let (code, _, text) = gc(&["--url", &admin, "--dry-run"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("nothing to remove: the cache is under the limit"),
        "{text}"
    );
    berth.signal("TERM");
    assert!(berth.wait_exit(Duration::from_secs(30)).is_some(), "berth stops");

    // On the stopped cache, with room for one image: the dry run names all of
    // A (the least recently served) and nothing of C; the run removes that.
    let lower = work.path().join("lower.toml");
    std::fs::write(
        &lower,
        format!(
            "cache_dir = \"{}\"\nlog_format = \"json\"\n{}",
            cache_dir.display(),
            config("2000KiB")
        ),
    )
    .expect("write config");
    let lower = lower.display().to_string();
    let (code, plan, text) = gc(&["--config", &lower, "--dry-run", "--json"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(removed(&plan), image_a, "{text}");
    assert!(a_paths.iter().all(|p| p.exists()), "a dry run removes nothing");
    let (code, _, text) = gc(&["--config", &lower, "--dry-run"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("image docker.io/evict/a:v1, last served"), "{text}");
    assert!(text.contains("would remove 4 items"), "{text}");
    println!("$ berth gc --config lower.toml --dry-run\n{text}");
    let (code, done, text) = gc(&["--config", &lower, "--json"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(removed(&done), removed(&plan), "the run removes what the dry run named");
    assert_eq!(done["removed_items"], 4, "{text}");
    assert!(a_paths.iter().all(|p| !p.exists()), "A is gone");
    assert!(c_paths.iter().all(|p| p.exists()), "C stays whole");

    // And C still pulls whole, offline, on the cache gc left.
    let berth = Berth::start_in(work.path(), &cache_dir, &config("2000KiB"));
    let offline_c = tokio::task::block_in_place(|| pull(&berth, "evict/c:v1")).expect("C pulls offline");
    assert!(offline_c.contains(&c.layers[0]), "{offline_c:?}");
}
