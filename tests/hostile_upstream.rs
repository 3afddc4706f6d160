//! Upstreams anyone can push to: tag lists that loop or never end, configs
//! far larger than their descriptors say, and bursts of requests for things
//! that do not exist must not make berth read without bound or ask the
//! upstream once per client.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::fake_upstream::{Answer, FakeUpstream};
use support::{Berth, UpstreamToml, sha256_hex};

fn berth_for(fake: &FakeUpstream) -> Berth {
    Berth::start(
        &UpstreamToml::default_docker_io(&fake.url())
            .set("attempts", 1)
            .to_toml(),
    )
}

/// One request with extra header lines; (status, head, body).
fn request(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let req = format!("{method} {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n{headers}\r\n");
    s.write_all(req.as_bytes()).expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(out.len());
    let head = String::from_utf8_lossy(&out[..split]).to_string();
    let body = out.get(split + 4..).map(<[u8]>::to_vec).unwrap_or_default();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head, body)
}

/// `n` identical requests at once; their statuses.
fn burst(addr: SocketAddr, n: usize, method: &'static str, path: &str) -> Vec<u16> {
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let path = path.to_string();
            std::thread::spawn(move || request(addr, method, &path, "").0)
        })
        .collect();
    threads.into_iter().map(|t| t.join().expect("request thread")).collect()
}

#[test]
fn a_tag_list_link_pointing_back_at_itself_is_not_followed() {
    let fake = FakeUpstream::start();
    fake.route("/v2/library/loop/tags/list", |_, _| {
        Answer::json(200, r#"{"name":"library/loop","tags":["a","b"]}"#)
            .header("link", "</v2/library/loop/tags/list?n=1000>; rel=\"next\"")
    });
    let berth = berth_for(&fake);
    let (status, _, body) = request(berth.addr, "GET", "/v2/loop/tags/list", "");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let list: serde_json::Value = serde_json::from_slice(&body).expect("tag list json");
    assert_eq!(list["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(fake.count(|r| r.contains("/tags/list")), 1, "{:?}", fake.requests());
}

#[test]
fn an_endless_tag_list_is_refused_after_a_bounded_read() {
    let fake = FakeUpstream::start();
    // Every page is 2 MiB of tags and links to one more page, forever.
    fake.route("/v2/library/endless/tags/list", |_, target| {
        let page: usize = target
            .split("last=t")
            .nth(1)
            .and_then(|v| v.split(['-', '&']).next())
            .and_then(|v| v.parse().ok())
            .map_or(0, |p: usize| p + 1);
        let tags: Vec<String> = (0..20_000).map(|i| format!("t{page:06}-{i:0>90}")).collect();
        let last = tags.last().cloned().unwrap_or_default();
        let body = serde_json::json!({"name": "library/endless", "tags": tags}).to_string();
        Answer::json(200, body).header(
            "link",
            &format!("</v2/library/endless/tags/list?n=1000&last={last}>; rel=\"next\""),
        )
    });
    let berth = berth_for(&fake);
    let (status, _, body) = request(berth.addr, "GET", "/v2/endless/tags/list", "");
    let text = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("MANIFEST_INVALID"), "{text}");
    assert!(text.contains("larger than berth accepts"), "{text}");
    let pages = fake.count(|r| r.contains("/tags/list"));
    assert!(pages <= 5, "berth read {pages} pages of an endless tag list");
}

#[test]
fn concurrent_tag_list_requests_share_one_upstream_walk() {
    let fake = FakeUpstream::start();
    fake.route("/v2/library/slow/tags/list", |_, _| {
        Answer::json(200, r#"{"name":"library/slow","tags":["1","2","3"]}"#).after(Duration::from_millis(500))
    });
    let berth = berth_for(&fake);
    let statuses = burst(berth.addr, 20, "GET", "/v2/slow/tags/list");
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    // And again, a moment later: answered from the short cache.
    assert_eq!(request(berth.addr, "GET", "/v2/slow/tags/list", "").0, 200);
    assert_eq!(fake.count(|r| r.contains("/tags/list")), 1, "{:?}", fake.requests());
}

#[test]
fn a_burst_for_a_missing_tag_costs_one_upstream_request() {
    let fake = FakeUpstream::start();
    fake.route("/v2/library/gone/manifests/nope", |_, _| {
        Answer::json(
            404,
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
        )
        .after(Duration::from_millis(300))
    });
    let berth = berth_for(&fake);
    let statuses = burst(berth.addr, 20, "GET", "/v2/gone/manifests/nope");
    assert!(statuses.iter().all(|&s| s == 404), "{statuses:?}");
    for _ in 0..10 {
        assert_eq!(request(berth.addr, "GET", "/v2/gone/manifests/nope", "").0, 404);
    }
    assert_eq!(
        fake.count(|r| r.contains("/manifests/nope")),
        1,
        "{:?}",
        fake.requests()
    );
}

#[test]
fn concurrent_blob_heads_share_one_upstream_head() {
    let fake = FakeUpstream::start();
    let blob = vec![5u8; 1000];
    let digest = sha256_hex(&blob);
    let path = format!("/v2/library/heads/blobs/{digest}");
    let body = axum::body::Bytes::from(blob);
    fake.route(&path, move |_, _| Answer {
        status: 200,
        headers: vec![("content-type".into(), "application/octet-stream".into())],
        body: body.clone(),
        delay: Duration::from_millis(300),
    });
    let berth = berth_for(&fake);
    let statuses = burst(berth.addr, 20, "HEAD", &format!("/v2/heads/blobs/{digest}"));
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(
        fake.count(|r| r.starts_with("HEAD ") && r.contains("/blobs/")),
        1,
        "{:?}",
        fake.requests()
    );
}

/// An OCI index with one child that has no platform (so berth reads the
/// child's config to learn it) whose config descriptor says `declared` bytes
/// while the blob is `actual` bytes. Returns the config's digest.
fn index_with_config(fake: &FakeUpstream, repo: &str, declared: u64, actual: usize) -> String {
    let config = axum::body::Bytes::from(vec![b' '; actual]);
    let config_digest = sha256_hex(&config);
    let layer = axum::body::Bytes::from_static(b"layer");
    let layer_digest = sha256_hex(&layer);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": declared},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": 5}]
    })
    .to_string();
    let manifest_digest = sha256_hex(manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest.len()}]
    })
    .to_string();
    let index_digest = sha256_hex(index.as_bytes());
    let serve = |media_type: &'static str, bytes: String, digest: String| {
        move |_: &str, _: &str| {
            Answer::json(200, bytes.clone())
                .header("content-type", media_type)
                .header("docker-content-digest", &digest)
        }
    };
    fake.route(
        &format!("/v2/{repo}/manifests/latest"),
        serve(
            "application/vnd.oci.image.index.v1+json",
            index.clone(),
            index_digest.clone(),
        ),
    );
    fake.route(
        &format!("/v2/{repo}/manifests/{index_digest}"),
        serve("application/vnd.oci.image.index.v1+json", index, index_digest.clone()),
    );
    fake.route(
        &format!("/v2/{repo}/manifests/{manifest_digest}"),
        serve(
            "application/vnd.oci.image.manifest.v1+json",
            manifest,
            manifest_digest.clone(),
        ),
    );
    fake.route(&format!("/v2/{repo}/blobs/{config_digest}"), move |_, _| Answer {
        status: 200,
        headers: vec![("content-type".into(), "application/octet-stream".into())],
        body: config.clone(),
        delay: Duration::ZERO,
    });
    config_digest
}

/// docker 1.13's Accept: no OCI types, so berth converts the index.
const OLD_DOCKER_ACCEPT: &str = "Accept: application/vnd.docker.distribution.manifest.v2+json\r\nAccept: application/vnd.docker.distribution.manifest.list.v2+json\r\n";

#[test]
fn a_config_descriptor_over_the_limit_is_not_fetched() {
    let fake = FakeUpstream::start();
    let config = index_with_config(&fake, "library/bigconfig", 3 << 30, 16);
    let berth = berth_for(&fake);
    let (status, head, body) = request(berth.addr, "GET", "/v2/bigconfig/manifests/latest", OLD_DOCKER_ACCEPT);
    assert!(
        status == 200 || status == 404,
        "{head}\n{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        fake.count(|r| r.contains(&config)),
        0,
        "berth fetched a config announced as 3 GiB: {:?}",
        fake.requests()
    );
    assert_eq!(request(berth.addr, "GET", "/v2/", "").0, 200);
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn a_config_larger_than_its_descriptor_is_not_read_into_memory() {
    let fake = FakeUpstream::start();
    index_with_config(&fake, "library/liar", 1000, 96 << 20);
    let berth = berth_for(&fake);
    assert_eq!(request(berth.addr, "GET", "/v2/", "").0, 200);
    // Reset the peak, then convert.
    std::fs::write(format!("/proc/{}/clear_refs", berth.pid()), "5").expect("reset VmHWM");
    let before = peak_rss_kib(berth.pid());
    let (status, head, _) = request(berth.addr, "GET", "/v2/liar/manifests/latest", OLD_DOCKER_ACCEPT);
    assert!(status == 200 || status == 404, "{head}");
    let grown_mib = peak_rss_kib(berth.pid()).saturating_sub(before) / 1024;
    assert!(
        grown_mib < 48,
        "converting grew berth's memory by {grown_mib} MiB (the config is 96 MiB)"
    );
}
