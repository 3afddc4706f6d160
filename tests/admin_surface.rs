//! The admin surface (metrics, failures with other clients' addresses and
//! repository names) is not on the registry port: it has a listener of its
//! own, loopback by default, and is on `listen` only when configured so.

mod support;

use support::{Berth, UpstreamToml, raw_get};

fn no_upstream() -> String {
    UpstreamToml::default_docker_io("http://127.0.0.1:9").to_toml()
}

#[test]
fn metrics_and_failures_are_on_the_admin_listener_only() {
    let berth = Berth::start(&no_upstream());
    assert_ne!(berth.addr, berth.admin_addr);
    for path in ["/metrics", "/_berth/failures"] {
        let (status, _) = raw_get(berth.addr, path);
        assert_eq!(status, 404, "{path} is not on the registry port");
        let (status, body) = raw_get(berth.admin_addr, path);
        assert_eq!(status, 200, "{path} on the admin listener: {body}");
    }
    assert_eq!(raw_get(berth.addr, "/v2/").0, 200, "the registry API is on listen");
    assert_eq!(raw_get(berth.admin_addr, "/v2/").0, 404, "and only there");
}

#[test]
fn an_empty_admin_listen_puts_the_admin_surface_on_listen() {
    // The support config sets admin_listen first; a later key would be a
    // duplicate, so this berth gets its own config through the environment.
    let berth = Berth::start_with_env(&no_upstream(), &[("BERTH_ADMIN_LISTEN", "")]);
    let (status, body) = raw_get(berth.addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("berth_"), "{body}");
}

/// While the cache opens (here: a bucket that accepts connections and never
/// answers, so the listing at startup hangs), the readiness probe answers
/// 503 "starting" instead of refusing the connection; the registry API is
/// not up yet. Fails when the admin surface binds only once berth is ready.
#[test]
fn health_says_starting_while_the_cache_opens() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = silent.local_addr().expect("addr");
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let holder = held.clone();
    std::thread::spawn(move || {
        for conn in silent.incoming().flatten() {
            holder.lock().expect("held connections").push(conn);
        }
    });
    let berth = Berth::start_until_admin(&format!(
        "[storage]\nkind = \"s3\"\nendpoint = \"http://{endpoint}\"\nbucket = \"b\"\naccess_key_id = \"k\"\nsecret_access_key = \"s\"\n{}",
        UpstreamToml::new("docker.io", "http://127.0.0.1:9")
    ));
    let (status, body) = raw_get(berth.admin_addr, "/_berth/health");
    assert_eq!(status, 503, "{body}");
    let json: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(json["status"], "starting", "{body}");
    assert_eq!(json["errors"][0]["code"], "UNAVAILABLE", "{body}");
    assert!(
        !berth.events().iter().any(|e| e["message"] == "listening"),
        "not serving yet: {}",
        berth.log()
    );
    let asked = support::poll(std::time::Duration::from_secs(10), || {
        (!held.lock().expect("held").is_empty()).then_some(())
    });
    assert!(asked.is_some(), "berth is asking the bucket: {}", berth.log());
}

#[test]
fn health_is_ready_while_the_cache_can_be_written() {
    let berth = Berth::start(&no_upstream());
    let (status, body) = raw_get(berth.admin_addr, "/_berth/health");
    assert_eq!((status, body.contains("\"serving\"")), (200, true), "{body}");
    assert_eq!(raw_get(berth.addr, "/_berth/health").0, 404, "not on the registry port");
    // The temp directory made a file: nothing can be written (as root a
    // read-only mode would not stop it).
    let tmp = berth.cache_dir.join("tmp");
    std::fs::remove_dir_all(&tmp).expect("remove tmp");
    std::fs::write(&tmp, b"not a directory").expect("tmp as a file");
    let (status, body) = raw_get(berth.admin_addr, "/_berth/health");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("cache unwritable") && body.contains("storage_error"),
        "{body}"
    );
    std::fs::remove_file(&tmp).expect("remove the file");
    std::fs::create_dir(&tmp).expect("tmp again");
    assert_eq!(raw_get(berth.admin_addr, "/_berth/health").0, 200);
}

#[test]
fn status_shows_the_cache_traffic_upstreams_and_the_last_hours_failures() {
    let registry = support::registry::Registry::start();
    support::images::push_tiny_image(&registry, "library/app", "1.0", false);
    let berth = Berth::start(&UpstreamToml::default_docker_io(&registry.url()).to_toml());
    for _ in 0..2 {
        assert_eq!(raw_get(berth.addr, "/v2/library/app/manifests/1.0").0, 200);
    }
    assert_eq!(raw_get(berth.addr, "/v2/library/app/manifests/1.1").0, 404);
    let (status, body) = raw_get(berth.admin_addr, "/_berth/status");
    assert_eq!(status, 200, "{body}");
    let s: serde_json::Value = serde_json::from_str(&body).expect("status is JSON");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["manifests"]["hits"], 1, "{s:#}");
    assert!(s["manifests"]["misses"].as_u64() >= Some(1), "{s:#}");
    assert!(s["cache"]["used_bytes"].as_u64() > Some(0), "{s:#}");
    assert_eq!(s["cache"]["max_bytes"], 50u64 << 30);
    let up = &s["upstreams"][0];
    assert_eq!(up["name"], "docker.io");
    assert_eq!(up["state"]["circuit_open"], serde_json::Value::Null);
    assert_eq!(up["last_failure"]["cause"], "manifest_unknown", "{s:#}");
    assert!(
        up["last_failure"]["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("did you mean 1.0?"),
        "{s:#}"
    );
    let failures = s["failures_last_hour"].as_array().expect("failures");
    assert_eq!(failures.len(), 1, "{s:#}");
    assert_eq!(
        (failures[0]["cause"].as_str(), failures[0]["count"].as_u64()),
        (Some("manifest_unknown"), Some(1))
    );
    assert_eq!(raw_get(berth.addr, "/_berth/status").0, 404, "not on the registry port");
}
