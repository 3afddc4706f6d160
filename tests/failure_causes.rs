//! The fault matrix: every failure cause that can be provoked on this machine,
//! each provoked for real (a stopped port, a namespace that drops packets or
//! resolves nothing, a self-signed upstream, a dead proxy, relay-injected
//! statuses and broken bodies, a real Distribution's 404s, a full disk), and
//! each asserting: exactly one `pull_failed` event with that cause, the
//! `berth_pull_failures_total` counter up by one, and the client's error body
//! naming the cause.

mod support;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use support::images::push_tiny_image;
use support::netns::NetNs;
use support::registry::Registry;
use support::relay::{Fault, Relay, RelayOptions};
use support::{Berth, UpstreamToml, blob_path, eventually};

/// docker.io at `endpoint`, failing fast: one attempt, a breaker that never
/// opens during a test.
fn upstream(endpoint: &str) -> UpstreamToml {
    UpstreamToml::default_docker_io(endpoint)
        .set("attempts", 1)
        .set("breaker_threshold", 1000)
}

/// Where the client runs: on the host, or inside berth's network namespace.
struct Client<'a> {
    berth: &'a Berth,
    netns: Option<&'a NetNs>,
}

impl Client<'_> {
    fn on_host(berth: &Berth) -> Client<'_> {
        Client { berth, netns: None }
    }

    /// GET with curl; returns (status, body).
    fn get(&self, path: &str, headers: &[&str]) -> (u16, String) {
        let (status, body, _) = self.get_with_headers(path, headers);
        (status, body)
    }

    /// GET with curl; returns (status, body, response headers as text).
    fn get_with_headers(&self, path: &str, headers: &[&str]) -> (u16, String, String) {
        // The admin surface has a listener of its own.
        let base = match path.starts_with("/metrics") || path.starts_with("/_berth/") {
            true => self.berth.admin_url(),
            false => self.berth.url(),
        };
        let url = format!("{base}{path}");
        let mut args = vec![
            "-s",
            "--noproxy",
            "*",
            "-D",
            "/dev/stderr",
            "-w",
            "\n%{http_code}",
            "--max-time",
            "60",
        ];
        for h in headers {
            args.extend(["-H", h]);
        }
        args.push(&url);
        let out = tokio::task::block_in_place(|| match self.netns {
            Some(ns) => ns.exec("curl", &args),
            None => Command::new("curl").args(&args).output().expect("curl"),
        });
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let response_headers = String::from_utf8_lossy(&out.stderr).to_string();
        (code.trim().parse().unwrap_or(0), body.to_string(), response_headers)
    }

    /// `berth_pull_failures_total` for `cause`, summed over upstreams.
    fn failures_metric(&self, cause: &str) -> u64 {
        metric_sum(&self.get("/metrics", &[]).1, "berth_pull_failures_total", cause)
    }
}

fn metric_sum(text: &str, name: &str, cause: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&format!("cause=\"{cause}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn events_with(berth: &Berth, event: &str, cause: &str) -> Vec<serde_json::Value> {
    berth
        .events()
        .into_iter()
        .filter(|e| e["event"] == event && e["cause"] == cause)
        .collect()
}

/// Request `path` and assert everything the matrix asks of `cause`.
fn expect_cause(client: &Client, path: &str, headers: &[&str], cause: &str, status: u16) -> String {
    let berth = client.berth;
    let before = client.failures_metric(cause);
    let (got, body, response_headers) = client.get_with_headers(path, headers);
    assert_eq!(got, status, "{cause}: status; body {body}\nlog:\n{}", berth.log());
    let json: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{cause}: error body is JSON ({e}): {body}"));
    let entry = &json["errors"][0];
    assert_eq!(
        entry["detail"]["cause"],
        cause,
        "{cause}: detail.cause in {body}\nlog:\n{}",
        berth.log()
    );
    let message = entry["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("(cause={cause})")),
        "{cause}: the message a client prints names the cause: {message}"
    );
    // The event is written before the response goes out; allow the log a moment.
    eventually(Duration::from_secs(5), format!("{cause}: a pull_failed event"), || {
        !events_with(berth, "pull_failed", cause).is_empty()
    });
    let events = events_with(berth, "pull_failed", cause);
    assert_eq!(events.len(), 1, "{cause}: exactly one pull_failed event: {events:#?}");
    let request_id = response_headers
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-request-id")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| panic!("{cause}: X-Request-Id header in {response_headers}"));
    assert!(!request_id.is_empty());
    assert_eq!(
        events[0]["request_id"], request_id,
        "{cause}: the event carries the request id the client got"
    );
    assert_eq!(client.failures_metric(cause), before + 1, "{cause}: metric up by one");
    eprintln!("{cause}: {status} {message}");
    message.to_string()
}

/// A real upstream with one tiny image at `library/app:v1`, behind a relay.
async fn upstream_with_image() -> (Registry, Relay, String) {
    let registry = Registry::start();
    let (digest, _, _) = tokio::task::block_in_place(|| push_tiny_image(&registry, "library/app", "v1", true));
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    (registry, relay, digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_resolution() {
    let ns = NetNs::create("dns").with_dead_resolver();
    let berth = Berth::start_in_netns(
        &ns.name,
        &upstream("https://registry.example.test").to_toml(),
        &[("NO_PROXY", "registry.example.test,127.0.0.1,localhost")],
    );
    let client = Client {
        berth: &berth,
        netns: Some(&ns),
    };
    expect_cause(&client, "/v2/library/app/manifests/v1", &[], "dns_resolution", 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let berth = Berth::start(&upstream(&format!("http://{closed}")).to_toml());
    expect_cause(
        &Client::on_host(&berth),
        "/v2/library/app/manifests/v1",
        &[],
        "connection_refused",
        503,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout() {
    let ns = NetNs::create("drop");
    // Inside the namespace, SYNs to this port vanish.
    ns.iptables(&["-A", "OUTPUT", "-p", "tcp", "--dport", "5999", "-j", "DROP"]);
    let berth = Berth::start_in_netns(
        &ns.name,
        &upstream("http://127.0.0.1:5999").set("connect_timeout", "1s").to_toml(),
        &[],
    );
    let client = Client {
        berth: &berth,
        netns: Some(&ns),
    };
    let message = expect_cause(&client, "/v2/library/app/manifests/v1", &[], "connect_timeout", 504);
    assert!(message.contains("firewall"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_error() {
    // The upstream is another berth serving TLS with a self-signed certificate.
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key) = support::pki::self_signed(dir.path());
    let tls_upstream = Berth::start(&format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n{}",
        cert.display(),
        key.display(),
        upstream("http://127.0.0.1:9")
    ));
    let berth = Berth::start(&upstream(&format!("https://{}", tls_upstream.host())).to_toml());
    expect_cause(
        &Client::on_host(&berth),
        "/v2/library/app/manifests/v1",
        &[],
        "tls_error",
        503,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_error() {
    // Berth runs with HTTPS_PROXY pointing at a closed loopback port (see
    // support::berth); a registry outside NO_PROXY is reached through it.
    let berth = Berth::start(&upstream("https://registry.example.test").to_toml());
    expect_cause(
        &Client::on_host(&berth),
        "/v2/library/app/manifests/v1",
        &[],
        "proxy_error",
        503,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_timeout() {
    let (_registry, relay, _) = upstream_with_image().await;
    relay.fault("/manifests/v1", Fault::Stall);
    let berth = Berth::start(&upstream(&relay.url()).set("read_timeout", "1s").to_toml());
    expect_cause(
        &Client::on_host(&berth),
        "/v2/library/app/manifests/v1",
        &[],
        "read_timeout",
        504,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_reset() {
    let (_registry, relay, _) = upstream_with_image().await;
    relay.fault("/manifests/v1", Fault::ResetAfter { bytes: 5, times: 100 });
    let berth = Berth::start(&upstream(&relay.url()).to_toml());
    expect_cause(
        &Client::on_host(&berth),
        "/v2/library/app/manifests/v1",
        &[],
        "connection_reset",
        503,
    );
}

fn status_fault(status: u16) -> Fault {
    Fault::Status {
        status,
        times: 100,
        retry_after: Some(30),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_unavailable() {
    let (_registry, relay, _) = upstream_with_image().await;
    relay.fault("/manifests/v1", status_fault(503));
    let berth = Berth::start(&upstream(&relay.url()).to_toml());
    expect_cause(
        &Client::on_host(&berth),
        "/v2/library/app/manifests/v1",
        &[],
        "upstream_unavailable",
        503,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited() {
    let (_registry, relay, _) = upstream_with_image().await;
    relay.fault("/manifests/v1", status_fault(429));
    let berth = Berth::start(&upstream(&relay.url()).to_toml());
    expect_cause(
        &Client::on_host(&berth),
        "/v2/library/app/manifests/v1",
        &[],
        "rate_limited",
        429,
    );
    let event = &events_with(&berth, "pull_failed", "rate_limited")[0];
    let ratelimit = event["ratelimit"].as_str().unwrap_or_default();
    assert!(
        ratelimit.contains("ratelimit-remaining=0;w=21600") && ratelimit.contains("ratelimit-limit=100;w=21600"),
        "Docker Hub's rate-limit headers are in the event: {event}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_unknown_from_docker_hubs_401() {
    // Docker Hub answers a repository that does not exist (or is private)
    // with 401 even to a freshly issued token.
    let registry = Registry::start();
    let relay = Relay::start(
        &registry.url(),
        RelayOptions {
            token_auth: Some(("user".into(), "secret".into())),
            hub_missing_repos: vec!["library/ghost".into()],
        },
    )
    .await;
    let berth = Berth::start(
        &upstream(&relay.url())
            .set("username", "user")
            .set("password", "secret")
            .to_toml(),
    );
    let message = expect_cause(
        &Client::on_host(&berth),
        "/v2/library/ghost/manifests/latest",
        &[],
        "name_unknown",
        404,
    );
    assert!(message.contains("private"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized() {
    // The upstream demands a token; its token service refuses berth, which
    // has no credentials configured.
    let registry = Registry::start();
    let relay = Relay::start(
        &registry.url(),
        RelayOptions {
            token_auth: Some(("user".into(), "secret".into())),
            ..RelayOptions::default()
        },
    )
    .await;
    let berth = Berth::start(&upstream(&relay.url()).to_toml());
    expect_cause(
        &Client::on_host(&berth),
        "/v2/library/app/manifests/v1",
        &[],
        "unauthorized",
        502,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden() {
    let (_registry, relay, _) = upstream_with_image().await;
    relay.fault("/manifests/v1", status_fault(403));
    let berth = Berth::start(&upstream(&relay.url()).to_toml());
    expect_cause(
        &Client::on_host(&berth),
        "/v2/library/app/manifests/v1",
        &[],
        "forbidden",
        403,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_unknown() {
    let (_registry, relay, _) = upstream_with_image().await;
    let berth = Berth::start(&upstream(&relay.url()).to_toml());
    expect_cause(
        &Client::on_host(&berth),
        "/v2/library/app/manifests/no-such-tag",
        &[],
        "manifest_unknown",
        404,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_unknown() {
    let (_registry, relay, _) = upstream_with_image().await;
    let berth = Berth::start(&upstream(&relay.url()).to_toml());
    expect_cause(
        &Client::on_host(&berth),
        "/v2/library/no-such-repo/tags/list",
        &[],
        "name_unknown",
        404,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_unknown() {
    let (_registry, relay, _) = upstream_with_image().await;
    let berth = Berth::start(&upstream(&relay.url()).to_toml());
    let missing = format!("sha256:{}", "ab".repeat(32));
    expect_cause(
        &Client::on_host(&berth),
        &format!("/v2/library/app/blobs/{missing}"),
        &[],
        "blob_unknown",
        404,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reference() {
    let berth = Berth::start(&upstream("http://127.0.0.1:9").to_toml());
    expect_cause(
        &Client::on_host(&berth),
        "/v2/Library/App/manifests/v1",
        &[],
        "invalid_reference",
        400,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_mismatch() {
    let (_registry, relay, digest) = upstream_with_image().await;
    relay.fault("/manifests/sha256:", Fault::FlipByte { offset: 10, times: 100 });
    let berth = Berth::start(&upstream(&relay.url()).to_toml());
    expect_cause(
        &Client::on_host(&berth),
        &format!("/v2/library/app/manifests/{digest}"),
        &[],
        "digest_mismatch",
        502,
    );
    assert!(!blob_path(&berth.cache_dir, &digest).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_invalid() {
    let (_registry, relay, _) = upstream_with_image().await;
    relay.fault(
        "/manifests/v1",
        Fault::Body {
            bytes: Bytes::from_static(b"{\"schemaVersion\": 2, \"layers\": [trun"),
            times: 100,
        },
    );
    let berth = Berth::start(&upstream(&relay.url()).to_toml());
    expect_cause(
        &Client::on_host(&berth),
        "/v2/library/app/manifests/v1",
        &[],
        "manifest_invalid",
        502,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_media_type() {
    // An OCI manifest asked for by its own digest by a client that accepts
    // only Docker types: the bytes under that digest cannot be converted.
    let (_registry, relay, digest) = upstream_with_image().await;
    let berth = Berth::start(&upstream(&relay.url()).to_toml());
    let message = expect_cause(
        &Client::on_host(&berth),
        &format!("/v2/library/app/manifests/{digest}"),
        &["Accept: application/vnd.docker.distribution.manifest.v2+json"],
        "unsupported_media_type",
        404,
    );
    assert!(message.contains("by_digest_not_acceptable"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_cached_offline() {
    let (_registry, relay, _) = upstream_with_image().await;
    let berth = Berth::start(&format!("offline = true\n{}", upstream(&relay.url())));
    expect_cause(
        &Client::on_host(&berth),
        "/v2/library/app/manifests/v1",
        &[],
        "not_cached_offline",
        503,
    );
    assert!(relay.requests().is_empty(), "offline: the upstream is never asked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_not_configured() {
    let berth = Berth::start(&upstream("http://127.0.0.1:9").to_toml());
    expect_cause(
        &Client::on_host(&berth),
        "/v2/org/app/manifests/v1?ns=quay.io",
        &[],
        "upstream_not_configured",
        404,
    );
}

/// A full cache disk does not fail the pull (the blob streams through
/// unstored), so its event is `storage_degraded`, counted in
/// `berth_cache_write_failures_total`, and the client gets a verified body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full() {
    let registry = Registry::start();
    let (digest, content) =
        tokio::task::block_in_place(|| support::images::push_random_blob(&registry, "library/app", 4 << 20, 11));
    let dir = tempfile::tempdir().expect("dir");
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).expect("mount point");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&disk)
        .status()
        .expect("mount");
    assert!(mounted.success(), "mount a tmpfs (tests run as root)");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(disk.clone());
    {
        let work = tempfile::tempdir().expect("work");
        let berth = Berth::start_in(work.path(), &disk.join("cache"), &upstream(&registry.url()).to_toml());
        let client = Client::on_host(&berth);
        let metric = |b: &Berth| {
            metric_sum(
                &Client::on_host(b).get("/metrics", &[]).1,
                "berth_cache_write_failures_total",
                "disk_full",
            )
        };
        let before = metric(&berth);
        let resp = support::client()
            .get(format!("{}/v2/library/app/blobs/{digest}", berth.url()))
            .send()
            .await
            .expect("response");
        assert_eq!(resp.status(), 200);
        let body = resp.bytes().await.expect("the whole body despite the full disk");
        assert_eq!(body.as_ref(), content.as_slice());
        let events = events_with(&berth, "storage_degraded", "disk_full");
        assert_eq!(events.len(), 1, "{events:#?}");
        assert_eq!(metric(&berth), before + 1);
        assert!(events_with(&berth, "pull_failed", "disk_full").is_empty());
        assert_eq!(client.failures_metric("disk_full"), 0);
    }
}

/// `berth failures` against a berth that has seen several kinds of failure:
/// the table names each, with counts and hints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_failures_prints_the_recent_failures_as_a_table() {
    let (_registry, relay, digest) = upstream_with_image().await;
    relay.fault("/manifests/limited", status_fault(429));
    relay.fault("/manifests/down", status_fault(503));
    relay.fault("/manifests/sha256:", Fault::FlipByte { offset: 10, times: 100 });
    let berth = Berth::start(&upstream(&relay.url()).to_toml());
    let client = Client::on_host(&berth);
    let missing_blob = format!("sha256:{}", "cd".repeat(32));
    // The 429 comes last of those that reach the upstream: it opens the
    // rate-limit window, and every miss after it is `rate_limited` too.
    let provoked = [
        ("/v2/library/app/manifests/no-such-tag", "manifest_unknown"),
        ("/v2/library/app/manifests/down", "upstream_unavailable"),
        (
            &format!("/v2/library/app/manifests/{digest}") as &str,
            "digest_mismatch",
        ),
        (&format!("/v2/library/app/blobs/{missing_blob}"), "blob_unknown"),
        ("/v2/library/nothing-here/tags/list", "name_unknown"),
        ("/v2/library/app/manifests/no-such-tag", "manifest_unknown"),
        ("/v2/library/app/manifests/limited", "rate_limited"),
        ("/v2/Bad/Name/manifests/v1", "invalid_reference"),
        ("/v2/org/app/manifests/v1?ns=quay.io", "upstream_not_configured"),
    ];
    for (path, cause) in provoked {
        let (status, body) = client.get(path, &[]);
        assert!(status >= 400 && body.contains(cause), "{path}: {status} {body}");
    }
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["failures", "--url", &berth.admin_url()])
            .env("NO_PROXY", "127.0.0.1")
            .output()
            .expect("berth failures")
    });
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{table}");
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("TIME") && header.contains("CAUSE") && header.contains("REQUEST"),
        "{table}"
    );
    let rows: Vec<&str> = table.lines().skip(1).take_while(|l| !l.starts_with('(')).collect();
    assert_eq!(rows.len(), provoked.len(), "one row per failed request: {table}");
    // Newest first.
    assert!(
        rows[0].contains("upstream_not_configured") && rows[1].contains("invalid_reference"),
        "{table}"
    );
    let counts = table.split("Failures by cause since start:").nth(1).unwrap_or_default();
    for (_, cause) in provoked {
        assert!(counts.contains(cause), "{cause} counted: {table}");
    }
    let manifest_unknown = counts
        .lines()
        .find(|l| l.trim_start().starts_with("manifest_unknown"))
        .unwrap_or_default();
    assert!(
        manifest_unknown.split_whitespace().nth(1) == Some("2"),
        "two manifest_unknown: {manifest_unknown}"
    );
}
