//! The command line: bad configs stop startup naming the key; check-config
//! prints the effective config; `[tls]` serves HTTPS through rustls.

mod support;

use std::process::Command;

use support::{Berth, HttpClient, UpstreamToml, blob_path};

fn berth_cmd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .env_remove("BERTH_LISTEN")
        .env_remove("BERTH_CACHE_DIR")
        .env_remove("BERTH_LOG_FORMAT")
        .output()
        .expect("run berth")
}

#[test]
fn check_config_prints_the_embedded_default() {
    let out = berth_cmd(&["check-config"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("https://registry-1.docker.io"), "{text}");
    assert!(text.contains("cache_dir = \"berth-data\""), "{text}");
}

#[test]
fn check_config_never_prints_a_password_from_an_endpoint_url() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        UpstreamToml::default_docker_io("https://mirror-user:s3cr3t-pw@mirror.example:5000/")
            .endpoint("https://registry-1.docker.io")
            .to_toml(),
    )
    .unwrap();
    let out = berth_cmd(&["check-config", "--config", good.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("s3cr3t-pw") && !text.contains("mirror-user"), "{text}");
    assert!(text.contains("https://<redacted>@mirror.example:5000/"), "{text}");
    // A URL refused by validation is quoted in the error without its password.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        UpstreamToml::new("docker.io", "ftp://mirror-user:s3cr3t-pw@mirror.example/").to_toml(),
    )
    .unwrap();
    let out = berth_cmd(&["check-config", "--config", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("endpoints") && !err.contains("s3cr3t-pw"), "{err}");
}

#[test]
fn shipped_configs_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for dir in ["config", "config/examples", "docker"] {
        for entry in std::fs::read_dir(root.join(dir)).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "toml") && !path.ends_with("hosts.toml") {
                let out = berth_cmd(&["check-config", "--config", path.to_str().unwrap()]);
                assert!(
                    out.status.success(),
                    "{}: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 2, "config/berth.toml and docker/berth.toml at least");
}

#[test]
fn env_and_flags_override_the_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["check-config"])
        .env("BERTH_CACHE_DIR", "/srv/berth")
        .env("BERTH_LOG_FORMAT", "json")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cache_dir = \"/srv/berth\""), "{text}");
    assert!(text.contains("log_format = \"json\""), "{text}");
}

#[test]
fn bad_configs_stop_startup_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = UpstreamToml::new("docker.io", "https://r");
    let cases = [
        ("listen = \"x\"\nbogus_key = 1\n".to_string(), "bogus_key"),
        (format!("[cache]\ntag_ttl = \"soon\"\n{upstream}"), "cache.tag_ttl"),
        (
            format!("[cache]\nmax_size = \"12 bananas\"\n{upstream}"),
            "cache.max_size",
        ),
        ("log_format = \"text\"\n".to_string(), "upstream: at least one"),
        (
            format!("[tls]\ncert = \"/nonexistent.crt\"\nkey = \"/nonexistent.key\"\n{upstream}"),
            "tls.cert",
        ),
        (
            UpstreamToml::new("docker.io", "not a url").to_toml(),
            "upstream[0].endpoints",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&path, text).unwrap();
        for cmd in ["check-config", "serve"] {
            let out = berth_cmd(&[cmd, "--config", path.to_str().unwrap()]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd} {text}: {err}");
            assert!(err.contains(key), "{cmd}: {key} not named in: {err}");
        }
    }
    let out = berth_cmd(&["serve", "--config", "/nonexistent/berth.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/berth.toml"));
}

/// A self-signed certificate for 127.0.0.1 in `dir`: (cert, key).
fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    support::pki::self_signed(dir)
}

fn https_client(cert: &std::path::Path) -> reqwest::Client {
    HttpClient::new().trusting(cert).build()
}

/// `[tls]` with this cert and key, and an upstream nothing answers at.
fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> String {
    format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n{}",
        cert.display(),
        key.display(),
        UpstreamToml::default_docker_io("http://127.0.0.1:9")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_with_rustls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let berth = Berth::start(&tls_config(&cert, &key));
    let http = https_client(&cert);
    let resp = http.get(format!("https://{}/v2/", berth.host())).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["docker-distribution-api-version"], "registry/2.0");
    // Plain HTTP to the TLS port does not get a registry answer.
    let plain = http.get(format!("http://{}/v2/", berth.host())).send().await;
    assert!(plain.map(|r| r.status().as_u16() != 200).unwrap_or(true));
}

/// Over TLS berth itself reads a blob's bytes (to encrypt them): a stored
/// blob truncated under a TLS reader must fail that reader, not kill berth
/// (a memory map would raise SIGBUS in the encryption).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_truncated_under_a_tls_reader_fails_that_reader_only() {
    use futures_util::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let data = support::images::random_bytes(32 << 20, 7);
    let digest = support::sha256_hex(&data);
    let cache = dir.path().join("cache");
    let path = blob_path(&cache, &digest);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &data).unwrap();
    let berth = Berth::start_in(dir.path(), &cache, &tls_config(&cert, &key));
    let http = https_client(&cert);
    let url = format!("https://{}/v2/library/big/blobs/{digest}", berth.host());
    // Whole, over TLS, it verifies.
    let body = http.get(&url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(support::sha256_hex(&body), digest);
    // Truncated after the first bytes went out.
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut stream = resp.bytes_stream();
    let mut got = stream.next().await.unwrap().unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(1 << 20))
        .unwrap();
    let mut broke = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(b) => got += b.len(),
            Err(_) => {
                broke = true;
                break;
            }
        }
    }
    assert!(
        broke || got < data.len(),
        "the reader must not get a complete-looking body"
    );
    let alive = http.get(format!("https://{}/v2/", berth.host())).send().await;
    assert_eq!(
        alive.map(|r| r.status().as_u16()).ok(),
        Some(200),
        "berth survives: {}",
        berth.log()
    );
}

/// `curl` over TLS to berth's `/v2/` trusting `ca`, with a client
/// certificate if given; the HTTP status, or None when TLS failed.
fn curl_v2(berth: &Berth, ca: &std::path::Path, client: Option<&support::pki::Pair>) -> Option<u16> {
    let url = format!("https://{}/v2/", berth.host());
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "--noproxy",
        "*",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "20",
        "--cacert",
    ])
    .arg(ca);
    if let Some(c) = client {
        cmd.arg("--cert").arg(&c.cert).arg("--key").arg(&c.key);
    }
    let out = cmd.arg(&url).output().expect("curl");
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    (out.status.success() && code != 0).then_some(code)
}

#[test]
fn client_certificates_are_verified_against_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = support::pki::Pki::new(&dir.path().join("pki"), "berth");
    let rogue = support::pki::Pki::new(&dir.path().join("rogue"), "rogue");
    let config = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n{}",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca_cert.display(),
        UpstreamToml::default_docker_io("http://127.0.0.1:9")
    );
    let berth = Berth::start(&config);
    assert_eq!(
        curl_v2(&berth, &pki.ca_cert, Some(&pki.client("node-1"))),
        Some(200),
        "a certificate the CA signed"
    );
    assert_eq!(
        curl_v2(&berth, &pki.ca_cert, None),
        Some(200),
        "no certificate: the handshake goes on (Basic may follow)"
    );
    assert_eq!(
        curl_v2(&berth, &pki.ca_cert, Some(&rogue.client("node-1"))),
        None,
        "a certificate another CA signed fails the handshake: {}",
        berth.log()
    );
}

#[test]
fn a_missing_client_ca_is_named_by_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let config = dir.path().join("berth.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"/nonexistent/ca.pem\"\n{}",
            cert.display(),
            key.display(),
            UpstreamToml::default_docker_io("http://127.0.0.1:9")
        ),
    )
    .unwrap();
    let out = berth_cmd(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tls.client_ca"), "{stderr}");
}

#[test]
fn lending_upstream_credentials_to_anyone_is_warned() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("berth.toml");
    let upstream = UpstreamToml::default_docker_io("http://127.0.0.1:9")
        .set("username", "me")
        .set("password", "not-printed")
        .to_toml();
    std::fs::write(&config, format!("listen = \"0.0.0.0:5000\"\n{upstream}")).unwrap();
    let out = berth_cmd(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning") && stderr.contains("[auth]"), "{stderr}");
    assert!(!stderr.contains("not-printed"));
    // On loopback there is no one to lend them to.
    std::fs::write(&config, format!("listen = \"127.0.0.1:5000\"\n{upstream}")).unwrap();
    let out = berth_cmd(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
}
