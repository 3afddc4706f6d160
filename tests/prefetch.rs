//! `berth prefetch`: warms images from the upstream so a berth cut off from
//! it serves them whole. The summary's figures are what the upstream really
//! sent (a counting relay in front of a real Distribution); a second run
//! fetches nothing; a failing image shows its cause and hint and exits 1; on
//! a terminal a progress bar is drawn; `--url` asks a running berth.

mod support;

use std::process::Command;

use support::images::{push_image_with_layers, random_bytes};
use support::registry::Registry;
use support::relay::{Relay, RelayOptions};
use support::{Berth, UpstreamToml, skopeo_try};

const KIB: usize = 1 << 10;

fn prefetch(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("prefetch")
        .args(args)
        .output()
        .expect("run berth prefetch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn blob_gets(relay: &Relay) -> usize {
    relay.count(|r| r.starts_with("GET ") && r.contains("/blobs/sha256:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_warms_images_and_its_summary_counts_what_the_upstream_sent() {
    let mut registry = Registry::start();
    let (base, a, b) = (
        random_bytes(300 * KIB, 81),
        random_bytes(200 * KIB, 82),
        random_bytes(100 * KIB, 83),
    );
    tokio::task::block_in_place(|| {
        push_image_with_layers(&registry, "warm/one", "v1", &[&base, &a]);
        push_image_with_layers(&registry, "warm/two", "v1", &[&base, &b]);
    });
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    let work = tempfile::tempdir().expect("work");
    let cache = work.path().join("cache");
    let upstream = UpstreamToml::default_docker_io(&relay.url()).to_toml();
    let config = work.path().join("prefetch.toml");
    std::fs::write(&config, format!("cache_dir = \"{}\"\n{upstream}", cache.display())).expect("config");
    let config = config.display().to_string();
    let list = work.path().join("images.txt");
    std::fs::write(&list, "# what the site needs\nwarm/two:v1\n").expect("list");

    // Cold: both images, one from the list file; the shared base once.
    let (code, out, err) = tokio::task::block_in_place(|| {
        prefetch(&[
            "--config",
            &config,
            "--file",
            &list.display().to_string(),
            "warm/one:v1",
        ])
    });
    assert_eq!(code, 0, "{out}{err}");
    let gets = blob_gets(&relay);
    assert_eq!(gets, 5, "configs of both, base once, a, b: {:?}", relay.requests());
    let bytes = 300 * KIB + 200 * KIB + 100 * KIB;
    assert!(
        out.contains("prefetch: 2 of 2 images warm, 0 failed; fetched 5 blobs"),
        "{out}"
    );
    let (code, json, err) =
        tokio::task::block_in_place(|| prefetch(&["--config", &config, "--json", "warm/one:v1", "warm/two:v1"]));
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&json).expect("json report");
    assert_eq!(report["blobs_fetched"], 0, "a second run fetches nothing: {json}");
    assert_eq!(report["blobs_cached"], 6, "each image's config and two layers: {json}");
    assert_eq!(blob_gets(&relay), gets, "no blob asked for again");
    // Not a plain-text run (stderr is no terminal): lines, no bar.
    assert!(
        err.lines().all(|l| l.starts_with("warm/")) && err.contains("already cached"),
        "{err}"
    );
    // The first run's byte count is the layers and configs the upstream sent.
    let (_, cold_json, _) = {
        // Again on a fresh cache, as JSON, for the bytes.
        let fresh = work.path().join("fresh.toml");
        std::fs::write(
            &fresh,
            format!("cache_dir = \"{}\"\n{upstream}", work.path().join("cache2").display()),
        )
        .expect("config");
        tokio::task::block_in_place(|| {
            prefetch(&[
                "--config",
                &fresh.display().to_string(),
                "--json",
                "warm/one:v1",
                "warm/two:v1",
            ])
        })
    };
    let cold: serde_json::Value = serde_json::from_str(&cold_json).expect("json report");
    let fetched = cold["bytes_fetched"].as_u64().expect("bytes_fetched");
    assert!(
        fetched >= bytes as u64 && fetched < bytes as u64 + 4 * KIB as u64,
        "{cold_json}"
    );

    // A misspelt tag fails with its cause and hint; the others still warm.
    let (code, out, err) =
        tokio::task::block_in_place(|| prefetch(&["--config", &config, "warm/one:v2", "warm/one:v1"]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("FAILED  warm/one:v2  manifest_unknown"), "{out}");
    assert!(out.contains("hint: "), "{out}");
    assert!(out.contains("prefetch: 1 of 2 images warm, 1 failed"), "{out}");

    // Warm on its own: with the upstream gone, berth serves both whole.
    registry.stop();
    let berth = Berth::start_in(work.path(), &cache, &upstream);
    for image in ["warm/one:v1", "warm/two:v1"] {
        let dest = tempfile::tempdir().expect("dest");
        let out = tokio::task::block_in_place(|| {
            skopeo_try(&[
                "copy",
                "--src-tls-verify=false",
                &format!("docker://{}/{image}", berth.host()),
                &format!("dir:{}", dest.path().display()),
            ])
        });
        assert!(
            out.status.success(),
            "{image} offline: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A prefetch against the running berth goes through --url (the
    // cache's lock is named otherwise); the upstream is gone: its cause.
    let (code, _, err) = tokio::task::block_in_place(|| prefetch(&["--config", &config, "warm/one:v1"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--url"), "{err}");
    let admin = format!("http://{}", berth.admin_addr);
    let (code, out, err) = tokio::task::block_in_place(|| prefetch(&["--url", &admin, "warm/one:v1", "other/img:v1"]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("ok      warm/one:v1"), "cached: warm offline: {out}");
    assert!(out.contains("FAILED  other/img:v1  "), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_prefetch_draws_a_progress_bar() {
    let registry = Registry::start();
    let layer = random_bytes(2 << 20, 91);
    tokio::task::block_in_place(|| push_image_with_layers(&registry, "warm/tty", "v1", &[&layer]));
    let work = tempfile::tempdir().expect("work");
    let config = work.path().join("prefetch.toml");
    std::fs::write(
        &config,
        format!(
            "cache_dir = \"{}\"\n{}",
            work.path().join("cache").display(),
            UpstreamToml::default_docker_io(&registry.url()).to_toml()
        ),
    )
    .expect("config");
    // `script` gives the command a pseudo-terminal and records what it drew.
    let typescript = work.path().join("typescript");
    let command = format!(
        "{} prefetch --config {} warm/tty:v1",
        env!("CARGO_BIN_EXE_berth"),
        config.display()
    );
    let out = tokio::task::block_in_place(|| {
        Command::new("script")
            .args(["-qec", &command, &typescript.display().to_string()])
            .env("TERM", "xterm")
            .output()
            .expect("run script")
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let drawn = String::from_utf8_lossy(&std::fs::read(&typescript).expect("typescript")).into_owned();
    assert!(drawn.contains("warm/tty:v1 ["), "the bar names the image: {drawn:?}");
    assert!(
        drawn.contains("MiB/2.00 MiB") || drawn.contains("/2.00 MiB"),
        "bytes of the total: {drawn:?}"
    );
    assert!(
        !drawn.contains("fetching sha256:"),
        "no plain lines on a terminal: {drawn:?}"
    );
    assert!(drawn.contains("prefetch: 1 of 1 images warm"), "{drawn:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_tables_keep_images_warm_and_report_their_last_run() {
    let mut registry = Registry::start();
    let layer = random_bytes(300 * KIB, 95);
    tokio::task::block_in_place(|| push_image_with_layers(&registry, "warm/sched", "v1", &[&layer]));
    let upstream = UpstreamToml::default_docker_io(&registry.url()).to_toml();
    let berth = Berth::start(&format!(
        "[[prefetch]]\nimages = [\"warm/sched:v1\", \"warm/sched:nope\"]\nevery = \"1h\"\n{upstream}"
    ));
    let status = || {
        let (code, body) = support::raw_get(berth.admin_addr, "/_berth/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).expect("status json")
    };
    let ran = support::poll(std::time::Duration::from_secs(20), || {
        let s = status();
        (s["prefetch"].as_array().is_some_and(|a| !a.is_empty())).then_some(s)
    })
    .unwrap_or_else(|| panic!("no prefetch run: {}", berth.log()));
    let run = &ran["prefetch"][0];
    assert_eq!(
        (run["images"].clone(), run["ok"].clone(), run["failed"].clone()),
        (2.into(), 1.into(), 1.into()),
        "{run}"
    );
    assert_eq!(run["failures"][0]["image"], "warm/sched:nope", "{run}");
    assert_eq!(run["failures"][0]["cause"], "manifest_unknown", "{run}");
    assert_eq!(run["every_secs"], 3600);
    let (_, metrics) = support::raw_get(berth.admin_addr, "/metrics");
    assert!(
        metrics.contains("berth_prefetch_runs_total{result=\"failed\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("berth_prefetch_failed_images 1"), "{metrics}");
    // Never pulled by a client, yet whole with the upstream gone.
    registry.stop();
    let dest = tempfile::tempdir().expect("dest");
    let out = tokio::task::block_in_place(|| {
        skopeo_try(&[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{}/warm/sched:v1", berth.host()),
            &format!("dir:{}", dest.path().display()),
        ])
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_bad_prefetch_table_is_named_at_startup() {
    let work = tempfile::tempdir().expect("work");
    let config = work.path().join("bad.toml");
    std::fs::write(
        &config,
        "[[prefetch]]\nimages = [\"quay.io/a/b:1\", \"Bad:Name\"]\nevery = \"10s\"\nplatforms = [\"linux\"]\n\
         [[upstream]]\nname = \"docker.io\"\nendpoints = [\"http://127.0.0.1:9\"]\ndefault = true\n",
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["check-config", "--config", &config.display().to_string()])
        .output()
        .expect("check-config");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for key in [
        "prefetch[0].images[0]",
        "prefetch[0].images[1]",
        "prefetch[0].every",
        "prefetch[0].platforms[0]",
    ] {
        assert!(err.contains(key), "{key} in {err}");
    }
}

/// Each prefetch asks the upstream what a tag is now, whatever `tag_ttl`
/// says: a tag moved upstream between two runs (an hour's tag_ttl apart
/// from nothing) is followed, and the site serves the new image offline.
/// Fails when a run answers a tag from the cache within its tag_ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_prefetch_follows_a_tag_moved_upstream_within_the_tag_ttl() {
    let mut registry = Registry::start();
    let (old_layer, new_layer) = (random_bytes(100 * KIB, 96), random_bytes(100 * KIB, 97));
    let first = tokio::task::block_in_place(|| push_image_with_layers(&registry, "warm/moved", "v1", &[&old_layer]));
    let upstream = UpstreamToml::default_docker_io(&registry.url()).to_toml();
    let berth = Berth::start(&format!("[cache]\ntag_ttl = \"1h\"\n{upstream}"));
    let admin = berth.admin_url();
    let (code, out, err) = tokio::task::block_in_place(|| prefetch(&["--url", &admin, "warm/moved:v1"]));
    assert_eq!(code, 0, "{out}{err}");
    let second = tokio::task::block_in_place(|| push_image_with_layers(&registry, "warm/moved", "v1", &[&new_layer]));
    assert_ne!(first.manifest, second.manifest, "the tag moved");
    let (code, out, err) = tokio::task::block_in_place(|| prefetch(&["--url", &admin, "warm/moved:v1"]));
    assert_eq!(code, 0, "{out}{err}");

    registry.stop();
    let resp = support::client()
        .get(format!("{}/v2/warm/moved/manifests/v1", berth.url()))
        .header(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .expect("manifest");
    assert_eq!(resp.status(), 200);
    let digest = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    assert_eq!(digest, Some(second.manifest.clone()), "the moved tag, offline");
    let layer = support::client()
        .get(format!("{}/v2/warm/moved/blobs/{}", berth.url(), second.layers[0]))
        .send()
        .await
        .expect("layer");
    assert_eq!(layer.status(), 200, "the new layer was fetched by the second run");
}
