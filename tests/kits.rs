//! The operations kits in `docker/` checked by the real tools: the
//! Prometheus alert rules by `promtool check rules` and their unit tests by
//! `promtool test rules`; and a real Prometheus (Debian's `prometheus`)
//! scraping a berth's admin listener, with a berth metric read back through
//! its query API.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::registry::Registry;
use support::{Berth, UpstreamToml, poll, raw_get};

fn kit(relative: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docker").join(relative)
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool (apt-get install prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_alert_rules_check_and_pass_their_unit_tests() {
    let dir = kit("prometheus");
    let checked = promtool(&["check", "rules", "alerts.yml"], &dir);
    assert!(checked.contains("SUCCESS: 5 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts_test.yml"], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// A Prometheus process on an ephemeral loopback port, stopped by its pid.
struct Prometheus {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_scraping(target: std::net::SocketAddr) -> Prometheus {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: berth\n    static_configs:\n      - targets: ['{target}']\n",
            kit("prometheus/alerts.yml").display()
        ),
    )
    .expect("prometheus.yml");
    // Prometheus takes a fixed address: pick a free port first.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn prometheus (apt-get install prometheus)");
    Prometheus { child, addr, _dir: dir }
}

#[test]
fn a_real_prometheus_scrapes_berth_and_reads_its_metrics_back() {
    let registry = Registry::start();
    support::images::push_tiny_image(&registry, "library/app", "1.0", false);
    let berth = Berth::start(&UpstreamToml::default_docker_io(&registry.url()).to_toml());
    assert_eq!(raw_get(berth.addr, "/v2/library/app/manifests/1.0").0, 200);
    assert_eq!(raw_get(berth.addr, "/v2/library/app/manifests/nope").0, 404);
    let prometheus = prometheus_scraping(berth.admin_addr);
    let query = |q: &str| {
        let path = format!("/api/v1/query?query={q}");
        let (status, body) = raw_get(prometheus.addr, &path);
        (status == 200)
            .then(|| serde_json::from_str::<serde_json::Value>(&body).ok())
            .flatten()
            .filter(|v| v["data"]["result"].as_array().is_some_and(|r| !r.is_empty()))
    };
    let failures = poll(Duration::from_secs(60), || {
        query("berth_pull_failures_total%7Bcause%3D%22manifest_unknown%22%7D")
    })
    .expect("Prometheus scraped berth_pull_failures_total");
    let sample = &failures["data"]["result"][0];
    assert_eq!(sample["metric"]["job"], "berth");
    assert_eq!(sample["metric"]["upstream"], "docker.io");
    assert_eq!(sample["value"][1], "1", "{failures}");
    let up = query("up%7Bjob%3D%22berth%22%7D").expect("up");
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");
    // The rules loaded: Prometheus knows the group.
    let (status, rules) = raw_get(prometheus.addr, "/api/v1/rules");
    assert_eq!(status, 200);
    assert!(rules.contains("BerthUpstreamDown"), "{rules}");
}

/// `kubernetes-validate` (PyPI), installed by tests/run.sh into a venv
/// named by `BERTH_KUBERNETES_VALIDATE`, or found on PATH.
fn kubernetes_validate() -> String {
    std::env::var("BERTH_KUBERNETES_VALIDATE").unwrap_or_else(|_| "kubernetes-validate".into())
}

#[test]
fn the_kubernetes_manifests_validate_offline_and_carry_a_valid_berth_config() {
    let dir = kit("kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("docker/kubernetes")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    for file in &files {
        let out = Command::new(kubernetes_validate())
            .args(["--kubernetes-version", "1.29.0", "--strict"])
            .arg(file)
            .output()
            .expect("run kubernetes-validate (tests/run.sh installs it from PyPI)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{}:\n{text}", file.display());
        assert!(!text.contains("ERROR"), "{text}");
    }
    // The berth.toml in the ConfigMap is one berth accepts (its secret file
    // replaced by a temp one).
    let manifest = std::fs::read_to_string(dir.join("berth.yaml")).expect("berth.yaml");
    let start = manifest.find("  berth.toml: |\n").expect("berth.toml in the ConfigMap") + "  berth.toml: |\n".len();
    let toml: String = manifest[start..]
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let work = tempfile::tempdir().expect("dir");
    let token = work.path().join("token");
    std::fs::write(&token, "a token\n").expect("token");
    let toml = toml.replace("/run/secrets/berth/dockerhub-token", token.to_str().expect("utf-8"));
    assert!(toml.contains("admin_listen"), "{toml}");
    let config = work.path().join("berth.toml");
    std::fs::write(&config, &toml).expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .expect("berth check-config");
    assert!(out.status.success(), "{}\n{toml}", String::from_utf8_lossy(&out.stderr));
}
