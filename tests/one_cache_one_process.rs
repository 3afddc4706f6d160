//! A second `berth serve` started by mistake on a cache directory that a
//! running berth owns stops at once, naming the owner's pid and the
//! directory, and leaves the owner's database and downloads alone.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::images::seed;
use support::registry::Registry;
use support::{Berth, DEAD_PROXY, NO_PROXY, UpstreamToml, client, client_name, poll};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_berth_on_the_same_cache_exits_naming_the_first() {
    let mut registry = Registry::start();
    let fixtures = tokio::task::block_in_place(|| seed(&registry));
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let upstream = UpstreamToml::default_docker_io(&registry.url()).to_toml();
    let first = Berth::start_in(work.path(), &cache, &upstream);
    let image = &fixtures.v2s2;
    let manifest_url = format!(
        "{}/v2/{}/manifests/{}",
        first.url(),
        client_name(&image.repo),
        image.digest
    );
    let http = client();
    let r = http.get(&manifest_url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let served = r.bytes().await.unwrap();
    // The upstream goes away: from now on only the cache can answer.
    registry.stop();

    // A download in progress of the first berth, and its metadata.
    let partial = cache.join("tmp").join("0123456789abcdef.part");
    std::fs::write(&partial, b"half a layer").unwrap();
    let meta_before = listing(&cache.join("meta"));
    assert!(!meta_before.is_empty(), "the first berth has a database");

    let second_dir = tempfile::tempdir().unwrap();
    let config = second_dir.path().join("berth.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ncache_dir = \"{}\"\n{upstream}",
            cache.display()
        ),
    )
    .unwrap();
    let stderr_path = second_dir.path().join("stderr");
    let mut second = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("HTTP_PROXY", DEAD_PROXY)
        .env("HTTPS_PROXY", DEAD_PROXY)
        .env("NO_PROXY", NO_PROXY)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let exited = poll(Duration::from_secs(20), || second.try_wait().ok().flatten()).is_some();
    if !exited {
        let _ = second.kill();
    }
    let status = second.wait().unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(exited, "the second berth keeps running: {stderr}");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", first.pid())),
        "names the holder's pid: {stderr}"
    );
    assert!(
        stderr.contains(&cache.display().to_string()),
        "names the directory: {stderr}"
    );

    // Nothing of the first berth's was moved or emptied.
    assert_eq!(
        std::fs::read(&partial).ok().as_deref(),
        Some(&b"half a layer"[..]),
        "tmp/ kept"
    );
    let aside: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("meta.broken"))
        .collect();
    assert!(aside.is_empty(), "database moved aside: {aside:?}");
    assert!(listing(&cache.join("meta")).is_superset(&meta_before), "database kept");

    // And the first berth still serves what it cached.
    let r = http.get(&manifest_url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), served);
}

fn listing(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect()
}
