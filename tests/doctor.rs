//! `berth doctor`: a healthy upstream passes every step (per-blob HEADs
//! included); each fault of the matrix fails the step it belongs to, with
//! the cause a pull would get and exit 1; bad usage or config exits 2.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::fake_upstream::{Answer, FakeUpstream};
use support::images::push_tiny_image;
use support::netns::NetNs;
use support::registry::Registry;
use support::relay::{Relay, RelayOptions};
use support::{Berth, DEAD_PROXY, NO_PROXY, UpstreamToml};

/// What one doctor run gave.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("doctor --json prints JSON ({e}):\n{}\n{}", self.stdout, self.stderr))
    }

    /// The first step named `name` (in `group` when given).
    fn step(&self, name: &str) -> Value {
        let json = self.json();
        json["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["step"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no step {name:?} in {json:#}"))
    }

    /// Assert `name` failed with `cause`, every later step of its group was
    /// skipped, and doctor exits 1.
    fn expect_failure(&self, name: &str, cause: &str) {
        assert_eq!(
            self.code, 1,
            "exit 1 for a problem found:\n{}\n{}",
            self.stdout, self.stderr
        );
        let json = self.json();
        let steps = json["steps"].as_array().expect("steps");
        let at = steps
            .iter()
            .position(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name:?} in {json:#}"));
        let failed = &steps[at];
        assert_eq!(failed["result"], "fail", "{name}: {failed:#}");
        assert_eq!(failed["cause"], cause, "{name}: {failed:#}");
        assert!(failed["hint"].as_str().is_some_and(|h| !h.is_empty()), "{failed:#}");
        let failures: Vec<_> = steps.iter().filter(|s| s["result"] == "fail").collect();
        assert_eq!(failures.len(), 1, "one failure, not failed twice: {json:#}");
        let group = &failed["group"];
        for later in steps[at + 1..].iter().filter(|s| &s["group"] == group) {
            assert_eq!(later["result"], "skip", "after {name}: {later:#}");
        }
    }
}

/// `berth doctor --json --config <file> ARGS` with `upstreams` as the config's
/// `[[upstream]]` sections, the cache in a fresh directory, the dead proxy
/// of the test environment (overridable through `env`).
fn doctor_in(netns: Option<&str>, dir: &Path, upstreams: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let config = dir.join("doctor.toml");
    std::fs::write(
        &config,
        // A small max_size: the free-space step passes on any test machine.
        format!(
            "cache_dir = \"{}\"\n[cache]\nmax_size = \"1MiB\"\n{upstreams}",
            dir.join("cache").display()
        ),
    )
    .expect("write config");
    let bin = env!("CARGO_BIN_EXE_berth");
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, bin]);
            c
        }
        None => Command::new(bin),
    };
    let out = cmd
        .args(["doctor", "--json", "--config"])
        .arg(&config)
        .args(args)
        .env("HTTP_PROXY", DEAD_PROXY)
        .env("HTTPS_PROXY", DEAD_PROXY)
        .env("NO_PROXY", NO_PROXY)
        .envs(env.iter().copied())
        .output()
        .expect("run berth doctor");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    };
    eprintln!("doctor {args:?}: exit {}\n{}{}", run.code, run.stdout, run.stderr);
    run
}

fn doctor(upstreams: &str, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    doctor_in(None, dir.path(), upstreams, args, &[])
}

/// docker.io at `endpoint`, failing fast.
fn upstream(endpoint: &str) -> UpstreamToml {
    UpstreamToml::default_docker_io(endpoint).set("attempts", 1)
}

fn closed_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

#[test]
fn healthy_upstream_passes_every_step() {
    let registry = Registry::start();
    let (digest, config, layer) = push_tiny_image(&registry, "library/foo", "v1", true);
    let dir = tempfile::tempdir().expect("temp dir");
    let toml = upstream(&registry.url()).to_toml();
    let run = doctor_in(None, dir.path(), &toml, &["library/foo:v1"], &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let json = run.json();
    assert_eq!(json["ok"], true);
    let steps = json["steps"].as_array().expect("steps");
    for s in steps {
        assert_eq!(s["result"], "pass", "every step passes: {s:#}");
        assert!(s["cause"].is_null(), "{s:#}");
    }
    let names: Vec<&str> = steps.iter().filter_map(|s| s["step"].as_str()).collect();
    for expected in [
        "config",
        "cache dir",
        "free space",
        "cache lock",
        "dns",
        "tcp",
        "ping /v2/",
        "auth challenge",
        "token",
        "rate limit",
        "manifest",
        "blob config",
        "blob layer 1/1",
    ] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    let detail = |name: &str| run.step(name)["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail("manifest").contains(&digest), "{}", detail("manifest"));
    assert!(detail("blob config").contains(&config));
    assert!(detail("blob layer 1/1").contains(&layer));

    // A running berth holds the cache's lock: information, not a failure,
    // and doctor leaves the lock alone (berth keeps serving).
    let berth = Berth::start_in(dir.path(), &dir.path().join("cache"), &toml);
    let run = doctor_in(None, dir.path(), &toml, &["foo:v1"], &[]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    let lock = run.step("cache lock");
    assert_eq!(lock["result"], "info", "{lock:#}");
    assert!(
        lock["detail"]
            .as_str()
            .unwrap_or_default()
            .contains(&berth.pid().to_string()),
        "{lock:#}"
    );
    let (status, _) = support::raw_get(berth.addr, "/v2/");
    assert_eq!(status, 200, "berth still serves");

    // The table for a person says the same.
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["doctor", "--config"])
        .arg(dir.path().join("doctor.toml"))
        .arg("foo:v1")
        .env("NO_PROXY", NO_PROXY)
        .output()
        .expect("run doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("blob layer 1/1") && text.contains("ok: "), "{text}");
}

#[test]
fn an_index_is_resolved_for_every_platform() {
    let registry = Registry::start();
    let fixtures = support::images::seed(&registry);
    let index = &fixtures.index;
    let run = doctor(&upstream(&registry.url()).to_toml(), &[&format!("multi:{}", index.tag)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json = run.json();
    let steps: Vec<&Value> = json["steps"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter(|s| s["group"] == format!("image multi:{}", index.tag))
                .collect()
        })
        .unwrap_or_default();
    let names: Vec<&str> = steps.iter().filter_map(|s| s["step"].as_str()).collect();
    for expected in [
        "manifest",
        "manifest linux/amd64",
        "linux/amd64 blob config",
        "linux/amd64 blob layer 2/2",
        "manifest linux/arm64",
        "linux/arm64 blob layer 2/2",
    ] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    let details: String = steps.iter().filter_map(|s| s["detail"].as_str()).collect();
    for child in &index.children {
        assert!(details.contains(child.as_str()), "child {child} resolved: {details}");
    }
    assert!(steps.iter().all(|s| s["result"] == "pass"), "{steps:#?}");
}

#[test]
fn missing_tag_fails_the_image_step() {
    let registry = Registry::start();
    push_tiny_image(&registry, "library/foo", "v1", true);
    let run = doctor(&upstream(&registry.url()).to_toml(), &["foo:v2"]);
    run.expect_failure("manifest", "manifest_unknown");
    // As a pull is told: the closest existing tag, and a missing repository
    // apart from a missing tag.
    let detail = run.step("manifest")["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.ends_with("did you mean v1?"), "{detail}");
    let run = doctor(&upstream(&registry.url()).to_toml(), &["nosuch:v1"]);
    run.expect_failure("manifest", "name_unknown");
    assert_eq!(
        run.step("rate limit")["result"],
        "info",
        "the answer came; the image step reports it"
    );
}

#[test]
fn closed_port_fails_at_tcp() {
    let run = doctor(&upstream(&format!("http://{}", closed_port())).to_toml(), &["foo:v1"]);
    run.expect_failure("tcp", "connection_refused");
    assert_eq!(run.step("dns")["result"], "pass");
    assert_eq!(run.step("manifest")["result"], "skip");
}

#[test]
fn every_endpoint_is_checked_and_the_image_resolved_on_one_that_works() {
    let registry = Registry::start();
    push_tiny_image(&registry, "library/foo", "v1", true);
    let dead = format!("http://{}", closed_port());
    let run = doctor(&upstream(&dead).endpoint(&registry.url()).to_toml(), &["foo:v1"]);
    run.expect_failure("tcp", "connection_refused");
    let json = run.json();
    let steps = json["steps"].as_array().expect("steps");
    let second: Vec<&Value> = steps
        .iter()
        .filter(|s| s["group"] == format!("upstream docker.io {}", registry.url()))
        .collect();
    assert!(
        second.len() >= 6 && second.iter().all(|s| s["result"] == "pass"),
        "{second:#?}"
    );
    let manifest = run.step("manifest");
    assert_eq!(manifest["result"], "pass");
    assert!(
        manifest["detail"]
            .as_str()
            .unwrap_or_default()
            .contains(&registry.url()),
        "{manifest:#}"
    );
}

#[test]
fn dropped_packets_fail_at_tcp_with_connect_timeout() {
    let ns = NetNs::create("doctor-drop");
    ns.iptables(&["-A", "OUTPUT", "-p", "tcp", "--dport", "5999", "-j", "DROP"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let toml = upstream("http://127.0.0.1:5999")
        .set("connect_timeout", "300ms")
        .to_toml();
    let started = std::time::Instant::now();
    let run = doctor_in(Some(&ns.name), dir.path(), &toml, &[], &[]);
    run.expect_failure("tcp", "connect_timeout");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "connect_timeout is honoured"
    );
}

#[test]
fn untrusted_certificate_fails_at_tls() {
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key) = support::pki::self_signed(dir.path());
    // The upstream is a berth serving TLS with that self-signed certificate.
    let tls_upstream = Berth::start(&format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n{}",
        cert.display(),
        key.display(),
        upstream("http://127.0.0.1:9")
    ));
    let run = doctor(&upstream(&format!("https://{}", tls_upstream.host())).to_toml(), &[]);
    run.expect_failure("tls", "tls_error");
    assert_eq!(run.step("tcp")["result"], "pass");
}

#[test]
fn dead_proxy_fails_at_the_proxy_step() {
    let dead = format!("http://{}", closed_port());
    let dir = tempfile::tempdir().expect("temp dir");
    let run = doctor_in(
        None,
        dir.path(),
        &upstream("https://registry.example.test").to_toml(),
        &[],
        &[("HTTPS_PROXY", &dead)],
    );
    run.expect_failure("proxy", "proxy_error");
    let json = run.json();
    let names: Vec<&str> = json["steps"]
        .as_array()
        .map(|s| s.iter().filter_map(|s| s["step"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        !names.contains(&"dns"),
        "berth does not resolve a proxied host itself: {names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_fail_at_the_token_step() {
    let registry = Registry::start();
    tokio::task::block_in_place(|| push_tiny_image(&registry, "library/foo", "v1", true));
    let relay = Relay::start(
        &registry.url(),
        RelayOptions {
            token_auth: Some(("puller".into(), "right-secret".into())),
            ..RelayOptions::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().expect("dir");
    let password_file = dir.path().join("password");
    let toml = upstream(&relay.url())
        .set("username", "puller")
        .set("password_file", password_file.display().to_string())
        .to_toml();

    // The right password: a token, and the image resolves with it.
    std::fs::write(&password_file, "right-secret\n").expect("password file");
    let run = tokio::task::block_in_place(|| doctor(&toml, &["foo:v1"]));
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.step("token")["detail"], "token issued as puller");
    assert_eq!(run.step("blob layer 1/1")["result"], "pass");
    assert!(!run.stdout.contains("right-secret") && !run.stdout.contains("tok-"));

    std::fs::write(&password_file, "wrong-secret\n").expect("password file");
    let run = tokio::task::block_in_place(|| doctor(&toml, &["foo:v1"]));
    run.expect_failure("token", "unauthorized");
    assert_eq!(run.step("auth challenge")["result"], "pass");
    assert!(
        relay.count(|r| r.contains("/token")) >= 1,
        "the token service was asked"
    );
    assert!(!run.stdout.contains("wrong-secret"), "the password is never printed");
}

#[test]
fn rate_limited_upstream_fails_at_the_rate_limit_step() {
    let fake = FakeUpstream::start();
    fake.route("/v2/library/foo/manifests/v1", |_, _| {
        Answer::json(
            429,
            r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit"}]}"#,
        )
        .header("ratelimit-limit", "100;w=21600")
        .header("ratelimit-remaining", "0;w=21600")
        .header("retry-after", "3600")
    });
    let run = doctor(&upstream(&fake.url()).to_toml(), &["foo:v1"]);
    run.expect_failure("rate limit", "rate_limited");
    let detail = run.step("rate limit")["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(detail.contains("0 of 100"), "{detail}");
    assert!(detail.contains("retry after 3600 s"), "{detail}");
    assert_eq!(fake.count(|r| r.starts_with("HEAD /v2/library/foo/manifests/v1")), 1);
}

#[test]
fn bad_usage_or_config_exits_2() {
    let dir = tempfile::tempdir().expect("dir");
    let bin = env!("CARGO_BIN_EXE_berth");
    let run = |args: &[&str]| {
        let out = Command::new(bin).args(args).output().expect("run berth");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let invalid = dir.path().join("invalid.toml");
    std::fs::write(&invalid, "cache_dir = 5\nno_such_key = true\n").expect("write");
    let (code, err) = run(&["doctor", "--config", &invalid.display().to_string()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.starts_with("berth: config"), "berth's config error: {err}");
    let missing = dir.path().join("missing.toml").display().to_string();
    let (code, err) = run(&["doctor", "--config", &missing]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot read config file"), "{err}");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, upstream("http://127.0.0.1:9").to_toml()).expect("write");
    let (code, err) = run(&["doctor", "--config", &good.display().to_string(), "Not/A:Valid:Image"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is not an image reference"), "{err}");
    let (code, _) = run(&["doctor", "--no-such-flag"]);
    assert_eq!(code, Some(2));
}
