//! The status page at the admin listener's `/`, rendered by a real browser
//! (Debian's chromium, headless, in a profile directory of its own): the DOM
//! it builds holds the cache, traffic, upstream, in-flight fetch, top image
//! and failure sections with this berth's figures, and it lays out at a
//! phone's width and a wide screen's (screenshots written where
//! `BERTH_STATUS_SCREENSHOTS` says, for a person to look at). The same
//! figures in `/_berth/status`: a fetch in flight with its progress while an
//! upstream transfer is held mid-way, gone once it ends; the most-pulled
//! images with their counts.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::images::{push_random_blob, push_tiny_image};
use support::registry::Registry;
use support::relay::{Fault, Relay, RelayOptions};
use support::{Berth, UpstreamToml, raw_get, sha256_hex};
use tokio::sync::Notify;

/// The blob held mid-way, and where the relay holds it.
const BLOB: usize = 4 << 20;
const HELD_AT: u64 = 1 << 20;
/// What berth has written of it then: the last byte seen waits for the
/// digest check (no reader ever gets a complete-looking unverified blob).
const WRITTEN_AT_HOLD: u64 = HELD_AT - 1;
/// How long a step may take.
const STEP: Duration = Duration::from_secs(30);

/// `/_berth/status` once `cond` holds of it (bounded: panics after `STEP`).
async fn status_when(berth: &Berth, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let url = format!("{}/_berth/status", berth.admin_url());
    let http = support::client();
    let deadline = Instant::now() + STEP;
    loop {
        let status: Value = http
            .get(&url)
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("status JSON");
        if cond(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {status:#}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A berth in front of a relay in front of Distribution holding `library/app:1.0`
/// and a 4 MiB blob whose upstream transfer the relay holds at 1 MiB until released.
struct Held {
    _registry: Registry,
    _relay: Relay,
    berth: Berth,
    digest: String,
    content: Vec<u8>,
    reached: Arc<Notify>,
    resume: Arc<Notify>,
}

async fn held() -> Held {
    let registry = Registry::start();
    let (digest, content) = tokio::task::block_in_place(|| {
        push_tiny_image(&registry, "library/app", "1.0", false);
        push_random_blob(&registry, "library/app", BLOB, 21)
    });
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    let (reached, resume) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    relay.fault(
        "GET /v2/library/app/blobs/",
        Fault::PauseAfter {
            bytes: HELD_AT,
            reached: reached.clone(),
            resume: resume.clone(),
            then_reset: false,
        },
    );
    let upstream = UpstreamToml::default_docker_io(&relay.url()).set("read_timeout", "120s");
    let berth = tokio::task::block_in_place(|| Berth::start(&upstream.to_toml()));
    Held {
        _registry: registry,
        _relay: relay,
        berth,
        digest,
        content,
        reached,
        resume,
    }
}

impl Held {
    /// A client's pull of the blob, in a task: the body when it ends.
    fn pull(&self) -> tokio::task::JoinHandle<Vec<u8>> {
        let url = format!("{}/v2/app/blobs/{}", self.berth.url(), self.digest);
        tokio::spawn(async move {
            let resp = support::client().get(url).send().await.expect("blob GET");
            assert_eq!(resp.status(), 200);
            resp.bytes().await.expect("blob body").to_vec()
        })
    }

    /// Wait until the relay holds the transfer and berth has every byte sent so far.
    async fn wait_held(&self) -> Value {
        tokio::time::timeout(STEP, self.reached.notified())
            .await
            .expect("the upstream transfer reached the hold");
        status_when(&self.berth, "the fetch at the hold", |s| {
            s["inflight"][0]["received_bytes"] == WRITTEN_AT_HOLD
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_shows_a_fetch_in_flight_with_its_progress_until_it_ends() {
    let h = held().await;
    let client = h.pull();
    let mut seen = Vec::new();
    tokio::time::timeout(STEP, async {
        // Progress as it grows, up to the hold.
        loop {
            let s = status_when(&h.berth, "a fetch in flight", |s| {
                s["inflight"].as_array().is_some_and(|a| !a.is_empty())
            })
            .await;
            let received = s["inflight"][0]["received_bytes"].as_u64().expect("received");
            seen.push(received);
            if received == WRITTEN_AT_HOLD {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the fetch reached the hold");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "received only grows: {seen:?}");
    let s = h.wait_held().await;
    let f = &s["inflight"][0];
    assert_eq!(s["inflight"].as_array().map(Vec::len), Some(1), "{s:#}");
    assert_eq!(f["digest"], h.digest.as_str());
    assert_eq!(f["short_digest"], &h.digest[..19]);
    assert_eq!(
        (f["repository"].as_str(), f["upstream"].as_str()),
        (Some("library/app"), Some("docker.io"))
    );
    assert_eq!(f["expected_bytes"], BLOB as u64, "the size the upstream announced");
    assert_eq!(f["clients"], 1, "{f}");
    assert!(f["age_secs"].is_u64(), "{f}");

    h.resume.notify_one();
    let body = tokio::time::timeout(STEP, client)
        .await
        .expect("the pull ends")
        .expect("task");
    assert_eq!(body.len(), h.content.len());
    assert_eq!(sha256_hex(&body), h.digest);
    status_when(&h.berth, "no fetch in flight once it ended", |s| {
        s["inflight"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
}

#[test]
fn status_counts_the_most_pulled_images() {
    let registry = Registry::start();
    let (app_digest, _, _) = push_tiny_image(&registry, "library/app", "1.0", false);
    push_tiny_image(&registry, "library/other", "2.0", false);
    let berth = Berth::start(&UpstreamToml::default_docker_io(&registry.url()).to_toml());
    let pull = |path: &str| raw_get(berth.addr, path).0;
    for _ in 0..3 {
        assert_eq!(pull("/v2/library/app/manifests/1.0"), 200);
    }
    assert_eq!(pull("/v2/other/manifests/2.0"), 200);
    assert_eq!(pull(&format!("/v2/app/manifests/{app_digest}")), 200);
    // Names that resolve to nothing are not counted (nor kept).
    assert_eq!(pull("/v2/library/app/manifests/1.1"), 404);
    assert_eq!(pull("/v2/library/nope/manifests/latest"), 404);

    let top = berth.status()["top_images"].clone();
    let rows: Vec<(String, String, String, u64)> = top
        .as_array()
        .expect("top_images")
        .iter()
        .map(|i| {
            (
                i["upstream"].as_str().unwrap_or_default().to_string(),
                i["repository"].as_str().unwrap_or_default().to_string(),
                i["reference"].as_str().unwrap_or_default().to_string(),
                i["count"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    let row =
        |repo: &str, reference: &str, n: u64| ("docker.io".to_string(), repo.to_string(), reference.to_string(), n);
    assert_eq!(rows.len(), 3, "{top:#}");
    assert_eq!(rows[0], row("library/app", "1.0", 3), "{top:#}");
    assert!(rows.contains(&row("library/other", "2.0", 1)), "{top:#}");
    assert!(rows.contains(&row("library/app", &app_digest, 1)), "{top:#}");
    assert!(top[0]["last_pulled_unix_ms"].as_u64().is_some_and(|t| t > 0), "{top:#}");
}

/// The `<section id=…>` of the DOM, to its end.
fn section_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("<section id=\"{id}\""))
        .unwrap_or_else(|| panic!("no section {id}: {dom}"));
    let rest = &dom[start..];
    &rest[..rest.find("</section>").unwrap_or(rest.len())]
}

fn chromium(profile: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-proxy-server",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("run chromium (apt-get install chromium)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_browser_renders_the_status_page_with_this_berths_figures() {
    let h = held().await;
    let berth = &h.berth;
    tokio::task::block_in_place(|| {
        for _ in 0..2 {
            assert_eq!(raw_get(berth.addr, "/v2/library/app/manifests/1.0").0, 200);
        }
        assert_eq!(raw_get(berth.addr, "/v2/library/app/manifests/1.1").0, 404);
    });
    // A fetch held mid-way while the browser looks.
    let client = h.pull();
    h.wait_held().await;
    tokio::task::block_in_place(|| browse(berth, &h.digest));
    h.resume.notify_one();
    let body = tokio::time::timeout(STEP, client)
        .await
        .expect("the pull ends")
        .expect("task");
    assert_eq!(sha256_hex(&body), h.digest);
}

fn browse(berth: &Berth, held_digest: &str) {
    let url = format!("{}/", berth.admin_url());
    assert_eq!(raw_get(berth.addr, "/").0, 404, "not on the registry port");

    let dir = tempfile::tempdir().expect("dir");
    let out = chromium(&dir.path().join("profile"), &["--dump-dom", &url]);
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for section in [
        "id=\"cache\"",
        "id=\"traffic\"",
        "id=\"upstreams\"",
        "id=\"inflight\"",
        "id=\"top-images\"",
        "id=\"failures\"",
    ] {
        assert!(dom.contains(section), "{section} in {dom}");
    }
    let inflight = section_of(&dom, "inflight");
    assert!(
        inflight.contains(&held_digest[..19]),
        "the held blob, short: {inflight}"
    );
    assert!(
        inflight.contains("library/app") && inflight.contains("docker.io"),
        "{inflight}"
    );
    assert!(
        inflight.contains("1.0 MiB of 4.0 MiB") && inflight.contains("25 %"),
        "its progress: {inflight}"
    );
    let top = section_of(&dom, "top-images");
    assert!(
        top.contains("<td>library/app:1.0</td><td>docker.io</td><td>2</td>"),
        "pulled twice: {top}"
    );
    assert!(!top.contains("1.1"), "a tag that does not exist is not counted: {top}");
    assert!(dom.contains(&format!("berth {}", env!("CARGO_PKG_VERSION"))), "{dom}");
    assert!(dom.contains("docker.io") && dom.contains("manifest_unknown"), "{dom}");
    assert!(dom.contains("did you mean 1.0?"), "the hint of the failure: {dom}");
    assert!(dom.contains("of 50.0 GiB"), "cache max: {dom}");

    let shots = std::env::var("BERTH_STATUS_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| dir.path().to_path_buf());
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    for (name, size) in [("phone", "390,844"), ("wide", "1400,900")] {
        let png = shots.join(format!("status-{name}.png"));
        let out = chromium(
            &dir.path().join(format!("profile-{name}")),
            &[
                &format!("--screenshot={}", png.display()),
                &format!("--window-size={size}"),
                &url,
            ],
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let bytes = std::fs::read(&png).expect("screenshot written");
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 5_000,
            "{name}: {} bytes",
            bytes.len()
        );
    }
}
