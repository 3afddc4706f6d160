//! The fleet benchmark: berth replicas on a real 3-node Garage cluster
//! (`[storage] kind = "s3"`, `[cluster]`), on this machine, in one run.
//!
//! Starts Garage (tests/support/garage.rs), the real upstream (CNCF
//! Distribution) behind a counting relay, three replicas and one berth on
//! the filesystem; then measures
//!
//! 1. a warm 256 MiB blob, 6 curl clients round-robin over 1, 2 and 3
//!    replicas: aggregate MB/s, and the ratio to one replica;
//! 2. the same warm blob through one S3-backed replica, through one with
//!    `local_cache` (once its copy is made) and through the filesystem
//!    berth, 4 clients: MB/s and the ratios;
//! 3. 50 concurrent cold GETs of one 64 MiB blob over the three replicas:
//!    bytes the upstream sent, as a multiple of the blob;
//! 4. a rollout: 100 clients pulling a 20-layer image at once through the
//!    three replicas (manifest, then config and layers 3 at a time, each
//!    verified), cold and then warm: p50 / p99 completion and upstream bytes;
//!
//! and prints a table. Run with `cargo bench --bench fleet` (or
//! `bash benches/run.sh`); needs `garage` (tests/run.sh installs it). Under
//! `cargo test` it does nothing. `BERTH_BENCH_BLOB_MIB` sets the warm blob's
//! size (default 256).

#[path = "../tests/support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "load/measure.rs"]
mod measure;

use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use measure::{cold_fan_out_over, curl_throughput_over, median};
use sha2::Digest as _;
use support::garage::Garage;
use support::registry::Registry;
use support::relay::{Relay, RelayOptions};
use support::{Berth, UpstreamToml};

const DOCKER_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
const WARM_CLIENTS: usize = 6;
const COLD_CLIENTS: usize = 50;
const ROLLOUT_CLIENTS: usize = 100;
const ROUNDS: usize = 3;

struct Row {
    what: String,
    value: String,
    ratio: String,
    target: &'static str,
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("fleet benchmark: skipped (run `cargo bench --bench fleet`)");
        return;
    }
    let blob_mib: usize = std::env::var("BERTH_BENCH_BLOB_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    eprintln!("starting a 3-node Garage cluster, the upstream and the replicas");
    let garage = Garage::start();
    let registry = Registry::start();
    let relay = rt.block_on(Relay::start(&registry.url(), RelayOptions::default()));
    let upstream = UpstreamToml::default_docker_io(&relay.url()).to_toml();
    let warm_size = blob_mib << 20;
    let (warm, _) = support::images::push_random_blob(&registry, "bench/blob", warm_size, 1);
    let (cold, _) = support::images::push_random_blob(&registry, "bench/cold", 64 << 20, 2);
    support::images::push_layered_image(&registry, "bench/rollout", "v1", 20, 1 << 20, 3);
    let replicas = garage.fleet(3, "", &upstream);
    let filesystem = Berth::start(&upstream);
    let blob_url = |b: &Berth, digest: &str, repo: &str| format!("{}/v2/{repo}/blobs/{digest}", b.url());

    // Warm the blob into the bucket (through replica 0) and into the filesystem berth.
    // With [cluster], the blob's owner stores it, whichever replica was asked.
    let cached = |b: &Berth| {
        b.events()
            .iter()
            .any(|e| e["message"] == "blob cached" && e["digest"] == warm.as_str())
    };
    measure::curl_throughput(&blob_url(&replicas[0], &warm, "bench/blob"), 1, warm_size as u64);
    support::eventually(Duration::from_secs(60), "the warm blob committed to the bucket", || {
        replicas.iter().any(cached)
    });
    measure::curl_throughput(&blob_url(&filesystem, &warm, "bench/blob"), 1, warm_size as u64);
    support::eventually(
        Duration::from_secs(60),
        "the warm blob committed to the filesystem",
        || cached(&filesystem),
    );
    let mut rows = Vec::new();

    // 1. Aggregate through 1, 2, 3 replicas, rounds interleaved.
    let urls: Vec<String> = replicas.iter().map(|b| blob_url(b, &warm, "bench/blob")).collect();
    let mut samples = vec![Vec::new(); 3];
    for round in 0..ROUNDS {
        for (k, s) in samples.iter_mut().enumerate() {
            eprintln!(
                "round {round}: warm blob, {WARM_CLIENTS} clients over {} replica(s)",
                k + 1
            );
            let over: Vec<&str> = urls[..=k].iter().map(String::as_str).collect();
            s.push(curl_throughput_over(&over, &[], WARM_CLIENTS, warm_size as u64));
        }
    }
    let through: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
    for (k, mbs) in through.iter().enumerate() {
        rows.push(Row {
            what: format!(
                "warm {blob_mib} MiB blob, {WARM_CLIENTS} clients over {} replica(s)",
                k + 1
            ),
            value: format!("{mbs:.0} MB/s"),
            ratio: format!("{:.2}x one replica", mbs / through[0]),
            target: if k == 2 { ">= 2.5x one (with the cores)" } else { "-" },
        });
    }

    // 2. S3-backed against the filesystem, one berth each.
    let fs_url = blob_url(&filesystem, &warm, "bench/blob");
    let (mut s3, mut fs) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        eprintln!("round {round}: warm blob, S3-backed replica and filesystem berth");
        s3.push(curl_throughput_over(&[urls[0].as_str()], &[], 4, warm_size as u64));
        fs.push(curl_throughput_over(&[fs_url.as_str()], &[], 4, warm_size as u64));
    }
    let (s3, fs) = (median(&mut s3), median(&mut fs));
    rows.push(Row {
        what: format!("warm {blob_mib} MiB blob, 4 clients: S3-backed replica / filesystem berth"),
        value: format!("{s3:.0} / {fs:.0} MB/s"),
        ratio: format!("{:.2}x filesystem", s3 / fs),
        target: "-",
    });

    // 2b. A replica with `local_cache`, once its copy of the blob is made.
    let local = Berth::start(&format!("{}local_cache = \"2GiB\"\n{upstream}", garage.storage_toml(0)));
    let local_url = blob_url(&local, &warm, "bench/blob");
    measure::curl_throughput(&local_url, 1, warm_size as u64);
    let copy = support::blob_path(&local.cache_dir.join("local"), &warm);
    support::eventually(Duration::from_secs(120), "the local copy is made", || copy.exists());
    let mut with_local = Vec::new();
    for round in 0..ROUNDS {
        eprintln!("round {round}: warm blob, replica with local_cache");
        with_local.push(curl_throughput_over(&[local_url.as_str()], &[], 4, warm_size as u64));
    }
    let with_local = median(&mut with_local);
    rows.push(Row {
        what: format!("warm {blob_mib} MiB blob, 4 clients: replica with local_cache / filesystem berth"),
        value: format!("{with_local:.0} / {fs:.0} MB/s"),
        ratio: format!("{:.2}x filesystem", with_local / fs),
        target: "-",
    });
    drop(local);

    // 3. 50 cold clients over three replicas: what the upstream sent.
    eprintln!("{COLD_CLIENTS} concurrent cold GETs over 3 replicas");
    let before = relay.body_bytes();
    let cold_urls: Vec<String> = replicas.iter().map(|b| blob_url(b, &cold, "bench/cold")).collect();
    let over: Vec<&str> = cold_urls.iter().map(String::as_str).collect();
    let fan = cold_fan_out_over(&over, COLD_CLIENTS, &cold);
    let sent = relay.body_bytes().saturating_sub(before);
    rows.push(Row {
        what: format!(
            "{COLD_CLIENTS} cold GETs of a 64 MiB blob over 3 replicas ({} verified, {:.1} s)",
            fan.verified,
            fan.wall.as_secs_f64()
        ),
        value: format!("{:.1} MiB from the upstream", sent as f64 / f64::from(1u32 << 20)),
        ratio: format!("{:.2}x the blob", sent as f64 / f64::from(64u32 << 20)),
        target: "1.00x",
    });

    // 4. The rollout, cold then warm.
    let bases: Vec<String> = replicas.iter().map(Berth::url).collect();
    for phase in ["cold", "warm"] {
        eprintln!("rollout ({phase}): {ROLLOUT_CLIENTS} clients pulling bench/rollout:v1 over 3 replicas");
        let before = relay.body_bytes();
        let (mut times, image_bytes) = rt.block_on(rollout(&bases, "bench/rollout", "v1"));
        let sent = relay.body_bytes().saturating_sub(before);
        let (p50, p99) = (percentile(&mut times, 50), percentile(&mut times, 99));
        rows.push(Row {
            what: format!(
                "rollout ({phase}): {ROLLOUT_CLIENTS} clients, 20-layer image ({:.1} MiB), 3 replicas",
                image_bytes as f64 / f64::from(1u32 << 20)
            ),
            value: format!("p50 {p50:.2} s, p99 {p99:.2} s"),
            ratio: format!(
                "upstream sent {:.2}x the image",
                sent as f64 / image_bytes.max(1) as f64
            ),
            target: "-",
        });
    }
    print_table(&rows);
}

/// `ROLLOUT_CLIENTS` pulls at once, client `i` through `bases[i % n]`: each
/// completion time in seconds, and the image's size (config and layers).
async fn rollout(bases: &[String], repo: &str, tag: &str) -> (Vec<f64>, u64) {
    let http = reqwest::Client::builder().no_proxy().build().expect("http client");
    let tasks: Vec<_> = (0..ROLLOUT_CLIENTS)
        .map(|i| {
            let (http, base) = (http.clone(), bases[i % bases.len()].clone());
            let (repo, tag) = (repo.to_string(), tag.to_string());
            tokio::spawn(async move { pull(&http, &base, &repo, &tag).await })
        })
        .collect();
    let mut times = Vec::new();
    let mut size = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        let (took, bytes) = t.await.expect("pull task").unwrap_or_else(|e| panic!("pull {i}: {e}"));
        times.push(took.as_secs_f64());
        size = bytes;
    }
    (times, size)
}

/// One client's pull as docker does it: the manifest, then config and
/// layers three at a time, each body checked against its digest.
async fn pull(http: &reqwest::Client, base: &str, repo: &str, tag: &str) -> Result<(Duration, u64), String> {
    let started = Instant::now();
    let manifest = http
        .get(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("Accept", DOCKER_V2)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| e.to_string())?
        .bytes()
        .await
        .map_err(|e| e.to_string())?;
    let m: serde_json::Value = serde_json::from_slice(&manifest).map_err(|e| e.to_string())?;
    let mut digests = vec![m["config"]["digest"].as_str().unwrap_or_default().to_string()];
    if let Some(layers) = m["layers"].as_array() {
        digests.extend(
            layers
                .iter()
                .map(|l| l["digest"].as_str().unwrap_or_default().to_string()),
        );
    }
    let sizes: Vec<u64> = futures_util::stream::iter(digests)
        .map(|d| async move {
            let mut resp = http
                .get(format!("{base}/v2/{repo}/blobs/{d}"))
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| format!("{d}: {e}"))?;
            let mut hasher = sha2::Sha256::new();
            let mut n = 0u64;
            while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{d}: {e}"))? {
                n += chunk.len() as u64;
                hasher.update(&chunk);
            }
            let got = format!("sha256:{}", hex::encode(hasher.finalize()));
            if got != d {
                return Err(format!("{d}: body hashes to {got}"));
            }
            Ok::<u64, String>(n)
        })
        .buffer_unordered(3)
        .try_collect()
        .await?;
    Ok((started.elapsed(), sizes.iter().sum()))
}

fn percentile(values: &mut [f64], p: usize) -> f64 {
    values.sort_by(f64::total_cmp);
    let i = (values.len() * p / 100).min(values.len().saturating_sub(1));
    values.get(i).copied().unwrap_or(f64::NAN)
}

fn print_table(rows: &[Row]) {
    println!();
    println!("| measurement | berth | ratio | target |");
    println!("|---|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} | {} |", r.what, r.value, r.ratio, r.target);
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "{cores} cores: the replicas, the three Garage nodes, the upstream and the clients share them, so \
         added replicas add no CPU here"
    );
}
