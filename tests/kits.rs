//! The operations kits in `docker/` checked by the real tools: the
//! Prometheus alert rules by `promtool check rules` and their unit tests by
//! `promtool test rules`; and a real Prometheus (Debian's `prometheus`)
//! scraping a berth's admin listener, with a berth metric read back through
//! its query API; the Grafana dashboard, whose every metric name is one a
//! berth that saw traffic exposes, and whose every query Prometheus accepts.

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
    let addr = support::fixed_port_addr();
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
    // The berth.toml in each ConfigMap is one berth accepts, its secret
    // files replaced by temp ones; the StatefulSet's with the `self` its
    // pods are given in BERTH_CLUSTER_SELF.
    let work = tempfile::tempdir().expect("dir");
    let secret = work.path().join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").expect("secret");
    let secret = secret.to_str().expect("utf-8");
    let mut checked = Vec::new();
    for (file, self_url) in [
        ("berth.yaml", None),
        ("berth-statefulset.yaml", Some("http://10.0.0.7:5000")),
    ] {
        let manifest = std::fs::read_to_string(dir.join(file)).expect(file);
        let start =
            manifest.find("  berth.toml: |\n").expect("berth.toml in the ConfigMap") + "  berth.toml: |\n".len();
        let toml: String = manifest[start..]
            .lines()
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
            .collect();
        assert!(toml.contains("admin_listen"), "{toml}");
        // Every secret the config names is mounted from a Secret.
        let secrets: Vec<&str> = toml
            .lines()
            .filter_map(|l| l.split_once("_file = \"").map(|(_, path)| path.trim_end_matches('"')))
            .collect();
        for path in &secrets {
            let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or(path);
            assert!(
                manifest.contains(&format!("mountPath: {dir}, readOnly: true")),
                "{file}: {path} is not on a mounted Secret"
            );
        }
        let mut toml = toml.clone();
        for path in &secrets {
            toml = toml.replace(path, secret);
        }
        let config = work.path().join(file).with_extension("toml");
        std::fs::write(&config, &toml).expect("config");
        let mut check = Command::new(env!("CARGO_BIN_EXE_berth"));
        check.args(["check-config", "--config"]).arg(&config);
        check.env_remove("BERTH_CLUSTER_SELF");
        if let Some(self_url) = self_url {
            // As the pod spec builds it from the pod's IP.
            let spec = "value: \"http://$(POD_IP):5000\"";
            assert!(
                manifest.contains("name: BERTH_CLUSTER_SELF\n") && manifest.contains(spec),
                "{file}: BERTH_CLUSTER_SELF from the pod's IP"
            );
            check.env("BERTH_CLUSTER_SELF", self_url);
        }
        let out = check.output().expect("berth check-config");
        let effective = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file}: {}\n{toml}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(self_url) = self_url {
            assert!(effective.contains(&format!("self = \"{self_url}\"")), "{effective}");
            assert!(
                effective.contains("kind = \"s3\"") && effective.contains("peers_dns"),
                "{effective}"
            );
        }
        checked.push(file);
    }
    assert_eq!(checked.len(), 2);
}

/// Every metric name (`berth_[a-z0-9_]+`) in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("berth_") {
        let preceded = rest[..at].chars().last();
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // `xberth_…` is another identifier, not a berth metric.
        if !preceded.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// The metric names an exposition offers: every sample's name, and for
/// each `# TYPE` family (even one without samples yet) the names its type
/// gives it.
fn exposed_names(exposition: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in exposition.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut words = declared.split_whitespace();
            let (Some(family), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            if end > 0 {
                names.insert(line[..end].to_string());
            }
        }
    }
    names
}

/// The panels of a dashboard, rows' nested panels included.
fn dashboard_panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        panels.push(panel);
        panels.extend(panel["panels"].as_array().into_iter().flatten());
    }
    panels
}

/// A berth that has seen what makes every metric family appear: a manifest
/// and a blob pulled cold then warm from a real Distribution, a misspelt
/// tag, an upstream announcing its rate limit (low headroom: degraded), and
/// a blob it could not store (its cache's temp dir replaced by a file).
fn berth_after_traffic() -> (Berth, Registry, support::fake_upstream::FakeUpstream) {
    use support::fake_upstream::{Answer, FakeUpstream};
    let registry = Registry::start();
    let (_, config, layer) = support::images::push_tiny_image(&registry, "library/app", "1.0", false);
    let ghcr = FakeUpstream::start();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": support::sha256_hex(b"c"), "size": 1},
        "layers": []
    })
    .to_string();
    let digest = support::sha256_hex(manifest.as_bytes());
    ghcr.route("/v2/org/app/manifests/1.0", move |_, _| {
        Answer::json(200, manifest.clone())
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .header("docker-content-digest", &digest)
            .header("ratelimit-limit", "100;w=21600")
            .header("ratelimit-remaining", "5;w=21600")
    });
    let upstreams = format!(
        "{}{}",
        UpstreamToml::default_docker_io(&registry.url()),
        UpstreamToml::new("ghcr.io", &ghcr.url())
    );
    let berth = Berth::start(&upstreams);
    for _ in 0..2 {
        assert_eq!(raw_get(berth.addr, "/v2/library/app/manifests/1.0").0, 200);
        assert_eq!(raw_get(berth.addr, &format!("/v2/library/app/blobs/{layer}")).0, 200);
        support::eventually(support::COMMIT_WAIT, "the layer is stored", || {
            support::blob_path(&berth.cache_dir, &layer).exists()
        });
    }
    assert_eq!(raw_get(berth.addr, "/v2/library/app/manifests/nope").0, 404);
    assert_eq!(raw_get(berth.addr, "/v2/ghcr.io/org/app/manifests/1.0").0, 200);
    let tmp = berth.cache_dir.join("tmp");
    std::fs::remove_dir_all(&tmp).expect("remove the cache's tmp");
    std::fs::write(&tmp, b"not a directory").expect("tmp as a file");
    assert_eq!(raw_get(berth.addr, &format!("/v2/library/app/blobs/{config}")).0, 200);
    std::fs::remove_file(&tmp).expect("remove the file");
    std::fs::create_dir(&tmp).expect("tmp again");
    (berth, registry, ghcr)
}

#[test]
fn every_metric_in_the_grafana_dashboard_is_one_berth_exposes() {
    let text = std::fs::read_to_string(kit("grafana/berth.json")).expect("docker/grafana/berth.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dashboard["schemaVersion"].as_u64() >= Some(36), "schemaVersion");
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    // Importable anywhere: the data source is a variable (and an import input).
    let templating = dashboard["templating"]["list"].as_array().expect("templating");
    assert!(
        templating
            .iter()
            .any(|v| v["type"] == "datasource" && v["name"] == "datasource"),
        "a datasource variable"
    );
    assert_eq!(dashboard["__inputs"][0]["pluginId"], "prometheus");

    let mut exprs: Vec<(String, String)> = Vec::new();
    let panels = dashboard_panels(&dashboard);
    let data_panels: Vec<_> = panels.iter().filter(|p| p["type"] != "row").collect();
    assert!(data_panels.len() >= 15, "{} panels", data_panels.len());
    for panel in &data_panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}: datasource");
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty());
        for target in targets.unwrap_or_else(|| panic!("{title}: no target")) {
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "{title}: target datasource"
            );
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: a target without expr"));
            assert!(!metric_names(expr).is_empty(), "{title}: {expr} names no berth metric");
            exprs.push((title.to_string(), expr.to_string()));
        }
    }
    for var in templating.iter().filter(|v| v["type"] == "query") {
        let query = var["definition"].as_str().expect("query variable definition");
        exprs.push((format!("variable {}", var["name"]), query.to_string()));
    }

    let (berth, _registry, _ghcr) = berth_after_traffic();
    let (status, exposition) = raw_get(berth.admin_addr, "/metrics");
    assert_eq!(status, 200, "{exposition}");
    let exposed = exposed_names(&exposition);
    let mut used = std::collections::BTreeSet::new();
    for (title, expr) in &exprs {
        for name in metric_names(expr) {
            assert!(
                exposed.contains(&name),
                "{title}: {name} is not exposed by berth; it offers {exposed:#?}"
            );
            used.insert(name);
        }
    }
    eprintln!(
        "dashboard: {} panels, metrics checked against /metrics: {used:#?}",
        data_panels.len()
    );

    // Each panel query is one a real Prometheus accepts, with Grafana's
    // variables put in; once it scraped berth, the traffic shows.
    let prometheus = prometheus_scraping(berth.admin_addr);
    let query = |expr: &str| {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "5m")
            .replace("$instance", ".*")
            .replace("$upstream", ".*");
        let (status, body) = raw_get(prometheus.addr, &format!("/api/v1/query?query={}", url_encode(&expr)));
        (status, expr, body)
    };
    let instant = |expr: &str| -> serde_json::Value {
        let (status, expr, body) = query(expr);
        assert_eq!(status, 200, "Prometheus refused {expr}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{expr}: {e}: {body}"))
    };
    let scraped = |expr: &str| {
        let (status, _, body) = query(expr);
        let answer = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .filter(|_| status == 200);
        answer.is_some_and(|a| a["data"]["result"].as_array().is_some_and(|r| !r.is_empty()))
    };
    // Two scrapes, so rate() has two points.
    let ready = poll(Duration::from_secs(60), || {
        scraped("count_over_time(berth_http_requests_total[1m]) >= 2").then_some(())
    });
    assert!(ready.is_some(), "Prometheus scraped berth twice");
    let mut with_data = 0;
    for (title, expr) in exprs.iter().filter(|(t, _)| !t.starts_with("variable ")) {
        let answer = instant(expr);
        assert_eq!(answer["status"], "success", "{title}: {expr}: {answer}");
        with_data += usize::from(answer["data"]["result"].as_array().is_some_and(|r| !r.is_empty()));
    }
    let panel_queries = exprs.iter().filter(|(t, _)| !t.starts_with("variable ")).count();
    eprintln!("Prometheus: {panel_queries} panel queries accepted, {with_data} with data");
    // The gauges need no rate window: the headroom panel shows the 5 of 100
    // the upstream announced.
    let headroom = exprs
        .iter()
        .find(|(t, _)| t == "Rate-limit headroom")
        .expect("a headroom panel");
    let answer = instant(&headroom.1);
    assert_eq!(answer["data"]["result"][0]["metric"]["upstream"], "ghcr.io", "{answer}");
    assert_eq!(
        answer["data"]["result"][0]["value"][1], "0.05",
        "{}: {answer}",
        headroom.1
    );
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `systemd-analyze` on a copy of the unit whose `ExecStart` names the
/// built berth (verify checks that the binary exists); (status, output).
fn systemd_analyze(args: &[&str], unit_text: &str) -> (bool, String, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let unit = dir.path().join("berth.service");
    let text = unit_text.replace(
        "ExecStart=/usr/local/bin/berth ",
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_berth")),
    );
    std::fs::write(&unit, text).expect("unit copy");
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(&unit)
        .output()
        .expect("run systemd-analyze (apt-get install systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text, unit, dir)
}

/// A `Duration` from a systemd or berth time span such as `40s` or `2min`.
fn seconds(span: &str) -> u64 {
    let digits: String = span.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits.parse().unwrap_or_else(|_| panic!("a time span: {span}"));
    match &span[digits.len()..] {
        "s" | "" => n,
        "min" | "m" => n * 60,
        unit => panic!("unit {unit} in {span}"),
    }
}

/// The highest exposure `systemd-analyze security` may give the unit (0 is
/// fully sandboxed, 10 not at all; berth needs the host's network).
const MAX_EXPOSURE: f64 = 2.0;

#[test]
fn the_systemd_unit_verifies_and_its_sandbox_exposure_is_low() {
    let unit = std::fs::read_to_string(kit("berth.service")).expect("docker/berth.service");
    let key = |name: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name}= in berth.service"))
    };
    assert_eq!(
        key("ExecStart"),
        "/usr/local/bin/berth serve --config /etc/berth/berth.toml"
    );
    assert_eq!(key("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(key("KillSignal"), "SIGTERM");
    // systemd waits longer than berth drains: the default grace, as
    // `berth check-config` prints it for the embedded config.
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("check-config")
        .output()
        .expect("berth check-config");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let effective = String::from_utf8_lossy(&out.stdout).to_string();
    let grace = effective
        .lines()
        .find_map(|l| l.strip_prefix("shutdown_grace = "))
        .map(|v| seconds(v.trim_matches('"')))
        .unwrap_or_else(|| panic!("shutdown_grace in check-config's output:\n{effective}"));
    let stop = seconds(key("TimeoutStopSec"));
    assert!(
        stop > grace,
        "TimeoutStopSec={stop}s must exceed shutdown_grace {grace}s"
    );

    let (ok, verified, copy, _dir) = systemd_analyze(&["verify"], &unit);
    eprintln!(
        "systemd-analyze verify {}: {}",
        copy.display(),
        if verified.is_empty() { "(no output)" } else { &verified }
    );
    assert!(ok, "systemd-analyze verify:\n{verified}");
    let about_the_unit: Vec<_> = verified.lines().filter(|l| l.contains("berth")).collect();
    assert!(about_the_unit.is_empty(), "systemd-analyze verify warns:\n{verified}");

    let (ok, security, _, _dir) = systemd_analyze(&["security", "--offline=yes"], &unit);
    assert!(ok, "systemd-analyze security:\n{security}");
    let exposure: f64 = security
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for berth.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("an exposure level in:\n{security}"));
    let open: Vec<_> = security.lines().filter(|l| l.starts_with('✗')).collect();
    eprintln!(
        "systemd-analyze security --offline=yes: exposure {exposure}; not sandboxed:\n{}",
        open.join("\n")
    );
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} > {MAX_EXPOSURE}:\n{security}"
    );
}
