//! What the person who pulled sees when berth fails a pull, client by client,
//! each in its mirror configuration with the origin kept as fallback (and
//! the origin reachable only through a dead proxy): dockerd with
//! `registry-mirrors`, containerd's `ctr` with `hosts.toml`, podman with
//! `registries.conf`. Four failures: a misspelt tag, a repository that does
//! not exist, an upstream 503, and a cold image while the upstream is out of
//! reach (`not_cached_offline`). Each check is the README table "what you
//! see, and where to look": it fails if berth's cause leaves the place the
//! table says it shows.

mod support;

use support::daemons::{Containerd, Dockerd, Podman};
use support::images::{Fixtures, seed};
use support::registry::Registry;
use support::relay::{Fault, Relay, RelayOptions};
use support::{Berth, UpstreamToml};

/// The failures each client is asked to pull, as a person types them, with
/// the cause berth gives. The 503 comes last: repeated, it opens berth's
/// circuit breaker (later misses are `not_cached_offline`).
const CASES: [(&str, &str); 3] = [
    ("library/busybox:v2s3", "manifest_unknown"),
    ("library/no-such-repo:latest", "name_unknown"),
    ("library/busybox:down", "upstream_unavailable"),
];
/// On a berth of its own: a 429 opens the upstream's rate-limit window.
const LIMITED: (&str, &str) = ("library/busybox:limited", "rate_limited");
const OFFLINE: (&str, &str) = ("library/busybox:v2s2", "not_cached_offline");
const UNAUTHORIZED: (&str, &str) = ("library/busybox:v2s2", "client_unauthorized");
const FORBIDDEN: (&str, &str) = ("library/busybox:v2s2", "client_forbidden");

struct World {
    _registry: Registry,
    _relay: Relay,
    _dir: tempfile::TempDir,
    /// Each berth with the failures asked of it: in front of the relay
    /// (503 for `busybox:down`); again (429 for `busybox:limited`); `offline = true`
    /// with nothing cached; `[auth]` with users only (no credentials: 401);
    /// `[auth]` allowing only 10.0.0.0/8 (403).
    berths: Vec<(Berth, &'static [(&'static str, &'static str)])>,
    _fixtures: Fixtures,
}

async fn world() -> World {
    let registry = Registry::start();
    let fixtures = tokio::task::block_in_place(|| seed(&registry));
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    // A short Retry-After: podman waits it out before each of its retries.
    for (pattern, status, retry_after) in [("/manifests/down", 503, None), ("/manifests/limited", 429, Some(1))] {
        relay.fault(
            pattern,
            Fault::Status {
                status,
                times: 1000,
                retry_after,
            },
        );
    }
    let upstream = UpstreamToml::default_docker_io(&relay.url()).to_toml();
    let dir = tempfile::tempdir().expect("dir");
    let htpasswd = dir.path().join("htpasswd");
    let hash = bcrypt::hash("a password", 4).expect("bcrypt");
    std::fs::write(&htpasswd, format!("alice:{hash}\n")).expect("htpasswd");
    let users_only = format!(
        "[auth]\nhtpasswd = \"{}\"\n[[access]]\nidentities = [\"alice\"]\n{upstream}",
        htpasswd.display()
    );
    let elsewhere = format!(
        "[auth]\nallow_networks = [\"10.0.0.0/8\"]\nanonymous = true\n[[access]]\nidentities = [\"anonymous\"]\n{upstream}"
    );
    let berths: Vec<(Berth, &'static [(&'static str, &'static str)])> = vec![
        (Berth::start(&upstream), &CASES),
        (Berth::start(&upstream), &[LIMITED]),
        (Berth::start(&format!("offline = true\n{upstream}")), &[OFFLINE]),
        (Berth::start(&users_only), &[UNAUTHORIZED]),
        (Berth::start(&elsewhere), &[FORBIDDEN]),
    ];
    World {
        _registry: registry,
        _relay: relay,
        _dir: dir,
        berths,
        _fixtures: fixtures,
    }
}

fn short(reference: &str) -> &str {
    reference.strip_prefix("library/").unwrap_or(reference)
}

fn show(client: &str, case: &str, seen: &str, log: &str) {
    eprintln!("===== {client} / {case}\n--- what the person sees ---\n{seen}\n--- log ---\n{log}\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_pull_shows_the_origin_and_dockerd_logs_berths_cause() {
    let w = world().await;
    for (berth, cases) in &w.berths {
        let dockerd = tokio::task::block_in_place(|| Dockerd::start(&berth.host()));
        for (reference, cause) in cases.iter() {
            let before = dockerd.log().len();
            let out = tokio::task::block_in_place(|| dockerd.docker_try(&["pull", short(reference)]));
            let seen = String::from_utf8_lossy(&out.stderr).to_string();
            let log = dockerd.log().get(before..).unwrap_or_default().to_string();
            show("dockerd", cause, &seen, &log);
            assert!(!out.status.success());
            // The first endpoint dockerd tried for this pull is berth.
            let attempt = log
                .lines()
                .find(|l| l.contains("Attempting next endpoint for pull after error"))
                .unwrap_or_default()
                .to_string();
            if *cause == "client_unauthorized" {
                // A 401 with a Basic challenge: dockerd has no login for
                // berth and says only that; berth's cause is not in its log.
                assert!(attempt.contains("no basic auth credentials"), "{attempt}\n{log}");
                continue;
            }
            // In the body's message for a GET, in the reason phrase for a HEAD.
            assert!(
                attempt.contains(&format!("cause={cause}")) || attempt.contains(&format!("(berth: {cause}: ")),
                "{cause}: {attempt}\n{log}"
            );
            assert!(
                seen.contains("registry-1.docker.io"),
                "the person sees the origin's error: {seen}"
            );
            assert!(!seen.contains(cause), "{seen}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ctr_pull_shows_berths_status_line_for_failures_other_than_404() {
    let w = world().await;
    let containerd = tokio::task::block_in_place(Containerd::start);
    for (berth, cases) in &w.berths {
        let hosts = containerd.hosts_dir("containerd", &berth.host());
        let hosts = hosts.to_str().expect("utf-8").to_string();
        for (reference, cause) in cases.iter() {
            let image = format!("docker.io/{reference}");
            let out =
                tokio::task::block_in_place(|| containerd.ctr_try(&["images", "pull", "--hosts-dir", &hosts, &image]));
            let seen = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            show("ctr", cause, &seen, "");
            assert!(!out.status.success());
            let last = seen.lines().last().unwrap_or_default();
            if cause.ends_with("_unknown") {
                // A 404 is the answer: ctr moves on to the origin and says nothing of berth's.
                assert!(
                    seen.contains("trying next host - response was http.StatusNotFound"),
                    "{seen}"
                );
                assert!(!seen.contains(cause) && last.contains("registry-1.docker.io"), "{seen}");
            } else {
                // Any other failure: ctr's error is berth's status line.
                assert!(last.contains(&format!(" (berth: {cause}: ")), "{seen}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn podman_pull_shows_berths_message_among_the_mirrors() {
    let w = world().await;
    for (berth, cases) in &w.berths {
        let podman = Podman::new(&berth.host());
        for (reference, cause) in cases.iter() {
            let (ok, seen) = tokio::task::block_in_place(|| podman.run(&["pull", &format!("docker.io/{reference}")]));
            show("podman", cause, &seen, "");
            assert!(!ok);
            if *cause == "client_forbidden" {
                // allow_networks refuses `/v2/` too: podman's ping fails and
                // it names only the status.
                assert!(
                    seen.contains("invalid status code from registry 403 (Forbidden)"),
                    "{seen}"
                );
                continue;
            }
            // Its error quotes each mirror's: berth's message for a GET with a
            // body, its status line for a HEAD or a 5xx.
            assert!(
                seen.contains(&format!("cause={cause}")) || seen.contains(&format!("(berth: {cause}: ")),
                "{cause}: {seen}"
            );
        }
    }
}
