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
/// the cause berth gives.
const CASES: [(&str, &str); 3] = [
    ("library/busybox:v2s3", "manifest_unknown"),
    ("library/no-such-repo:latest", "name_unknown"),
    ("library/busybox:down", "upstream_unavailable"),
];
const OFFLINE: (&str, &str) = ("library/busybox:v2s2", "not_cached_offline");

struct World {
    _registry: Registry,
    _relay: Relay,
    /// In front of the relay, which answers 503 for `busybox:down`.
    berth: Berth,
    /// `offline = true`: nothing is cached, nothing can be fetched.
    offline: Berth,
    _fixtures: Fixtures,
}

async fn world() -> World {
    let registry = Registry::start();
    let fixtures = tokio::task::block_in_place(|| seed(&registry));
    let relay = Relay::start(&registry.url(), RelayOptions::default()).await;
    relay.fault(
        "/manifests/down",
        Fault::Status {
            status: 503,
            times: 1000,
            retry_after: None,
        },
    );
    let upstream = UpstreamToml::default_docker_io(&relay.url()).to_toml();
    let berth = Berth::start(&upstream);
    let offline = Berth::start(&format!("offline = true\n{upstream}"));
    World {
        _registry: registry,
        _relay: relay,
        berth,
        offline,
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
    for (berth, cases) in [(&w.berth, &CASES[..]), (&w.offline, &[OFFLINE][..])] {
        let dockerd = tokio::task::block_in_place(|| Dockerd::start(&berth.host()));
        for (reference, cause) in cases {
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
    for (berth, cases) in [(&w.berth, &CASES[..]), (&w.offline, &[OFFLINE][..])] {
        let hosts = containerd.hosts_dir("containerd", &berth.host());
        let hosts = hosts.to_str().expect("utf-8").to_string();
        for (reference, cause) in cases {
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
                assert!(
                    last.contains(&format!(": 503 Service Unavailable (berth: {cause}: ")),
                    "{seen}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn podman_pull_shows_berths_message_among_the_mirrors() {
    let w = world().await;
    for (berth, cases) in [(&w.berth, &CASES[..]), (&w.offline, &[OFFLINE][..])] {
        let podman = Podman::new(&berth.host());
        for (reference, cause) in cases {
            let (ok, seen) = tokio::task::block_in_place(|| podman.run(&["pull", &format!("docker.io/{reference}")]));
            show("podman", cause, &seen, "");
            assert!(!ok);
            // Its error quotes each mirror's: berth's message for a GET with a
            // body, its status line for a HEAD or a 5xx.
            assert!(
                seen.contains(&format!("cause={cause}")) || seen.contains(&format!("(berth: {cause}: ")),
                "{cause}: {seen}"
            );
        }
    }
}
