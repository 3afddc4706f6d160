//! Pulling from an upstream that counts down its rate limit (Docker Hub's
//! `ratelimit-limit: 100;w=21600` / `ratelimit-remaining: 76;w=21600`): the
//! headroom shows in `/metrics`, and falling under a tenth of the limit is
//! one warning, not one per pull, until it rises above again.

mod support;

use std::time::Duration;

use support::fake_upstream::{Answer, FakeUpstream};
use support::{Berth, UpstreamToml, eventually, lazy, raw_get, sha256_hex};

/// A small OCI image manifest and its digest.
fn manifest() -> (String, String) {
    let config = sha256_hex(b"config");
    let layer = sha256_hex(b"layer");
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 6},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": 5}]
    })
    .to_string();
    let digest = sha256_hex(body.as_bytes());
    (body, digest)
}

/// Tag `t` of `library/app` answers with `ratelimit-remaining: <remaining>`.
fn serve_tag(fake: &FakeUpstream, tag: &str, remaining: &str) {
    let (body, digest) = manifest();
    let remaining = remaining.to_string();
    fake.route(&format!("/v2/library/app/manifests/{tag}"), move |_, _| {
        Answer::json(200, body.clone())
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .header("docker-content-digest", &digest)
            .header("ratelimit-limit", "100;w=21600")
            .header("ratelimit-remaining", &remaining)
            .header("docker-ratelimit-source", "192.0.2.1")
    });
}

fn low_headroom_warnings(berth: &Berth) -> usize {
    berth
        .events()
        .iter()
        .filter(|e| e["event"] == "upstream_degraded" && e["cause"] == "rate_limited")
        .count()
}

fn metrics(berth: &Berth) -> String {
    let (status, body) = raw_get(berth.admin_addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

fn gauge(berth: &Berth, name: &str) -> Option<String> {
    let line = format!("{name}{{upstream=\"docker.io\"}} ");
    metrics(berth)
        .lines()
        .find_map(|l| l.strip_prefix(&line).map(str::to_string))
}

#[test]
fn headroom_is_a_gauge_and_falling_low_is_one_warning_per_crossing() {
    let fake = FakeUpstream::start();
    let steps = [
        ("above", "76;w=21600"),
        ("low1", "9;w=21600"),
        ("low2", "8;w=21600"),
        ("low3", "7;w=21600"),
        ("garbage", "lots"),
        ("rearm", "60;w=21600"),
        ("lowagain", "5;w=21600"),
    ];
    for (tag, remaining) in steps {
        serve_tag(&fake, tag, remaining);
    }
    serve_tag(&fake, "rearm2", "60;w=21600");
    fake.route("/v2/library/app/manifests/limited", |_, _| {
        Answer::json(
            429,
            r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit"}]}"#,
        )
        .header("ratelimit-limit", "100;w=21600")
        .header("ratelimit-remaining", "0;w=21600")
    });
    let berth = Berth::start(
        &UpstreamToml::default_docker_io(&fake.url())
            .set("attempts", 1)
            .to_toml(),
    );
    let pull = |tag: &str| {
        let (status, body) = raw_get(berth.addr, &format!("/v2/app/manifests/{tag}"));
        assert_eq!(status, 200, "{tag}: {body} {}", berth.log());
    };

    assert_eq!(
        gauge(&berth, "berth_upstream_ratelimit_remaining"),
        None,
        "nothing heard yet"
    );
    pull("above");
    assert_eq!(gauge(&berth, "berth_upstream_ratelimit_limit").as_deref(), Some("100"));
    assert_eq!(
        gauge(&berth, "berth_upstream_ratelimit_remaining").as_deref(),
        Some("76")
    );
    assert_eq!(low_headroom_warnings(&berth), 0, "76 of 100 is plenty");

    for tag in ["low1", "low2", "low3", "garbage"] {
        pull(tag);
    }
    assert!(
        fake.count(|r| r.contains("/manifests/low3")) > 0 && fake.count(|r| r.contains("/manifests/garbage")) > 0,
        "every step reached the upstream: {:?}",
        fake.requests()
    );
    assert_eq!(
        gauge(&berth, "berth_upstream_ratelimit_remaining").as_deref(),
        Some("7"),
        "a value that is not a number leaves the gauge"
    );
    eventually(
        Duration::from_secs(5),
        lazy(|| format!("one low-headroom warning: {}", berth.log())),
        || low_headroom_warnings(&berth) >= 1,
    );
    assert_eq!(low_headroom_warnings(&berth), 1, "once per crossing: {}", berth.log());
    let warning = berth
        .events()
        .into_iter()
        .find(|e| e["event"] == "upstream_degraded" && e["cause"] == "rate_limited")
        .expect("the warning");
    assert_eq!(warning["upstream"], "docker.io", "{warning}");
    assert_eq!(warning["repository"], "library/app", "{warning}");
    assert!(
        warning["message"].as_str().is_some_and(|m| m.contains("9 of 100")),
        "{warning}"
    );
    assert!(
        warning["detail"].as_str().is_some_and(|d| d.contains("192.0.2.1")),
        "{warning}"
    );

    pull("rearm");
    assert_eq!(
        gauge(&berth, "berth_upstream_ratelimit_remaining").as_deref(),
        Some("60")
    );
    pull("lowagain");
    eventually(
        Duration::from_secs(5),
        lazy(|| format!("a second warning after rising above: {}", berth.log())),
        || low_headroom_warnings(&berth) == 2,
    );
    assert_eq!(
        gauge(&berth, "berth_upstream_ratelimit_remaining").as_deref(),
        Some("5")
    );
    assert!(
        metrics(&berth).contains(r#"berth_upstream_degraded_total{cause="rate_limited",upstream="docker.io"} 2"#),
        "{}",
        metrics(&berth)
    );

    // The 429 itself is the pull's `rate_limited` failure: it sets the
    // gauges but is not warned of a second time as low headroom.
    pull("rearm2");
    let (status, body) = raw_get(berth.addr, "/v2/app/manifests/limited");
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        gauge(&berth, "berth_upstream_ratelimit_remaining").as_deref(),
        Some("0")
    );
    eventually(
        Duration::from_secs(5),
        lazy(|| format!("the 429's pull_failed: {}", berth.log())),
        || {
            berth
                .events()
                .iter()
                .any(|e| e["event"] == "pull_failed" && e["cause"] == "rate_limited")
        },
    );
    assert_eq!(low_headroom_warnings(&berth), 2, "{}", berth.log());
}
