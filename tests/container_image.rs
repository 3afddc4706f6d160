//! The container image of `docker/Dockerfile`, built and run for real with
//! no network: its runtime base made from Debian's packages
//! (tests/runtime_base.sh: mmdebstrap, then `docker import`), its
//! `runtime-prebuilt` target given the berth this test suite built, all in a
//! dockerd of the test's own. The container runs as uid 10001 on the host's
//! network with its cache in a volume, serves a skopeo pull from a real
//! Distribution, and on `docker stop` (SIGTERM) drains and exits 0, its
//! blob in the volume.

// Berth as a process is not used here.
#[allow(unused_imports)]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::daemons::Dockerd;
use support::registry::Registry;
use support::{UpstreamToml, poll, raw_get, sha256_hex, skopeo};

const BASE_IMAGE: &str = "berth-test-base:bookworm";
const IMAGE: &str = "berth-test:kits";
/// The uid docker/Dockerfile gives the user berth.
const BERTH_UID: &str = "10001";

/// The runtime base's root file system: named by tests/run.sh, or built
/// (once per machine) by tests/runtime_base.sh, which reaches the Debian
/// mirror, so the dead proxy is not passed on.
fn runtime_base_tar() -> PathBuf {
    if let Some(tar) = std::env::var_os("BERTH_RUNTIME_BASE_TAR") {
        return tar.into();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/runtime_base.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .output()
        .expect("run tests/runtime_base.sh (apt-get install mmdebstrap)");
    assert!(
        out.status.success(),
        "tests/runtime_base.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// What the test made in the dockerd, removed however the test ends.
struct Made<'a> {
    docker: &'a Dockerd,
    container: String,
    volume: String,
}

impl Drop for Made<'_> {
    fn drop(&mut self) {
        let _ = self.docker.docker_try(&["rm", "-f", &self.container]);
        let _ = self.docker.docker_try(&["volume", "rm", "-f", &self.volume]);
        let _ = self.docker.docker_try(&["rmi", "-f", IMAGE, BASE_IMAGE]);
        self.docker.release_host_netns();
    }
}

impl Made<'_> {
    /// The container's log (berth writes to stderr).
    fn log(&self) -> String {
        let out = self.docker.docker_try(&["logs", &self.container]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn events(&self) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn logged_addr(&self, message: &str) -> Option<std::net::SocketAddr> {
        self.events().iter().find_map(|e| {
            (e["message"] == message)
                .then(|| e["addr"].as_str()?.parse().ok())
                .flatten()
        })
    }

    fn inspect(&self, format: &str) -> String {
        self.docker
            .docker(&["inspect", "--format", format, &self.container])
            .trim()
            .to_string()
    }
}

#[test]
fn the_image_builds_offline_runs_as_non_root_serves_a_pull_and_stops_cleanly_on_sigterm() {
    let started = Instant::now();
    let registry = Registry::start();
    let (manifest, _config, layer) = support::images::push_tiny_image(&registry, "library/app", "1.0", false);
    let rootfs = runtime_base_tar();
    eprintln!("runtime base {} ready after {:?}", rootfs.display(), started.elapsed());

    let docker = Dockerd::start_for_images();
    let made = Made {
        docker: &docker,
        container: format!("berth-kits-{}", std::process::id()),
        volume: format!("berth-kits-cache-{}", std::process::id()),
    };
    docker.docker(&["import", rootfs.to_str().expect("utf-8 path"), BASE_IMAGE]);
    // The build context holds only the binary: nothing else is sent, and
    // nothing is fetched (the legacy builder stops at the target stage).
    let context = tempfile::tempdir().expect("build context");
    std::fs::copy(env!("CARGO_BIN_EXE_berth"), context.path().join("berth")).expect("copy berth");
    let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/Dockerfile");
    let built = Instant::now();
    let build = docker.docker(&[
        "build",
        "--file",
        dockerfile.to_str().expect("utf-8 path"),
        "--target",
        "runtime-prebuilt",
        "--build-arg",
        &format!("RUNTIME_BASE={BASE_IMAGE}"),
        "--build-arg",
        "BERTH_BINARY=berth",
        "--tag",
        IMAGE,
        context.path().to_str().expect("utf-8 path"),
    ]);
    eprintln!("docker build ({:?}):\n{build}", built.elapsed());
    assert_eq!(
        docker
            .docker(&["image", "inspect", "--format", "{{.Config.User}}", IMAGE])
            .trim(),
        "berth"
    );

    // listen on port 0: berth says where in its log, so no port is guessed.
    let config_dir = tempfile::tempdir().expect("config dir");
    let config = config_dir.path().join("berth.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nlog_format = \"json\"\n{}",
            UpstreamToml::default_docker_io(&registry.url())
        ),
    )
    .expect("berth.toml");
    docker.docker(&["volume", "create", &made.volume]);
    docker.docker(&[
        "run",
        "--detach",
        "--name",
        &made.container,
        "--network",
        "host",
        "--user",
        BERTH_UID,
        "--volume",
        &format!("{}:/var/lib/berth", made.volume),
        "--volume",
        &format!("{}:/etc/berth/berth.toml:ro", config.display()),
        IMAGE,
        "serve",
        "--config",
        "/etc/berth/berth.toml",
    ]);
    let addrs = poll(Duration::from_secs(30), || {
        if made.inspect("{{.State.Running}}") != "true" {
            panic!("the container stopped: {}", made.log());
        }
        Some((made.logged_addr("listening")?, made.logged_addr("admin listening")?))
    });
    let (addr, admin) = addrs.unwrap_or_else(|| panic!("berth in the container did not listen: {}", made.log()));
    let healthy = poll(Duration::from_secs(30), || {
        (raw_get(admin, "/_berth/health").0 == 200).then_some(())
    });
    assert!(
        healthy.is_some(),
        "/_berth/health: {:?}\n{}",
        raw_get(admin, "/_berth/health"),
        made.log()
    );

    // Non-root, seen from the host and from inside.
    let pid = made.inspect("{{.State.Pid}}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the container's process");
    let ids = |key: &str| -> Vec<String> {
        let line = status.lines().find(|l| l.starts_with(key)).expect("Uid/Gid line");
        line.split_whitespace().skip(1).map(str::to_string).collect()
    };
    assert_eq!(ids("Uid:"), vec![BERTH_UID; 4], "{status}");
    assert!(ids("Gid:").iter().all(|g| g != "0"), "{status}");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .expect("comm")
            .trim(),
        "berth"
    );
    assert_eq!(docker.docker(&["exec", &made.container, "id", "-u"]).trim(), BERTH_UID);

    // A real client pulls through it.
    let source = format!("docker://{addr}/app:1.0");
    let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &source]).stdout;
    assert_eq!(sha256_hex(&raw), manifest, "manifest bytes through the container");
    // The dir: transport keeps the manifest and blobs as they came.
    let copy = tempfile::tempdir().expect("copy dir");
    let dest = format!("dir:{}", copy.path().display());
    let copied = skopeo(&["copy", "--src-tls-verify=false", &source, &dest]);
    eprintln!(
        "skopeo copy {source} {dest}:\n{}",
        String::from_utf8_lossy(&copied.stdout)
    );
    let read = |name: &str| std::fs::read(copy.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(sha256_hex(&read("manifest.json")), manifest);
    let hex = layer.strip_prefix("sha256:").expect("sha256");
    assert_eq!(sha256_hex(&read(hex)), layer, "the layer arrived whole");

    // SIGTERM: berth drains (nothing in flight) and exits 0 well within
    // its 25 s grace; docker would SIGKILL after 40 s.
    let stopping = Instant::now();
    docker.docker(&["stop", "--time", "40", &made.container]);
    let took = stopping.elapsed();
    let log = made.log();
    assert_eq!(made.inspect("{{.State.ExitCode}}"), "0", "{log}");
    assert!(took < Duration::from_secs(25), "docker stop took {took:?}:\n{log}");
    let messages: Vec<String> = made
        .events()
        .iter()
        .filter_map(|e| e["message"].as_str().map(str::to_string))
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("shutting down: no new connections")),
        "{log}"
    );
    assert_eq!(messages.last().map(String::as_str), Some("stopped"), "{log}");
    eprintln!(
        "docker stop: exit 0 after {took:?}; last log lines: {:?}",
        &messages[messages.len().saturating_sub(3)..]
    );

    // The cache outlives the container, owned by berth.
    let mountpoint = docker.docker(&["volume", "inspect", "--format", "{{.Mountpoint}}", &made.volume]);
    let blob = support::blob_path(Path::new(mountpoint.trim()), &layer);
    let bytes = std::fs::read(&blob).unwrap_or_else(|e| panic!("{} in the cache volume: {e}", blob.display()));
    assert_eq!(sha256_hex(&bytes), layer);
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(std::fs::metadata(&blob).expect("blob").uid().to_string(), BERTH_UID);
    eprintln!("whole test: {:?}", started.elapsed());
}
