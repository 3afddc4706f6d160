//! Graceful lifecycle: on SIGTERM berth stops accepting at once, lets the
//! responses in flight finish within `server.shutdown_grace`, leaves no
//! temp files, flushes its metadata and exits 0; past the grace period it
//! closes what is still open and exits all the same. On SIGHUP it reads its
//! config again: new upstreams, credentials, htpasswd and TLS files are in
//! force for new requests while those in flight finish; an invalid config
//! changes nothing.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use support::images::{push_random_blob, push_tiny_image};
use support::registry::Registry;
use support::{Berth, UpstreamToml, poll, sha256_hex};

const BLOB: usize = 32 << 20;

/// GET `path` over one connection, read the head and the first MiB, say so
/// on `started`, then read the rest `chunk` bytes at a time with a pause
/// between (a slow client); the body, or what arrived before the cut.
fn slow_get(addr: SocketAddr, path: &str, started: mpsc::Sender<()>, pause: Duration) -> Vec<u8> {
    slow_get_with(addr, path, "", started, pause)
}

/// `slow_get` with extra header lines (each ending in CRLF).
fn slow_get_with(addr: SocketAddr, path: &str, headers: &str, started: mpsc::Sender<()>, pause: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut told = false;
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        if !told && got.len() > 1 << 20 {
            told = true;
            let _ = started.send(());
        }
        if told {
            std::thread::sleep(pause);
        }
    }
    let at = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(got.len(), |i| i + 4);
    got.split_off(at)
}

fn logged(berth: &Berth, message: &str) -> bool {
    berth
        .events()
        .iter()
        .any(|e| e["message"].as_str().is_some_and(|m| m.starts_with(message)))
}

/// Downloads in flight when SIGTERM comes, each of its own cold blob.
const TRANSFERS: usize = 10;
const TRANSFER_BLOB: usize = 8 << 20;

#[test]
fn sigterm_lets_ten_downloads_in_flight_finish_then_exits_clean() {
    let mut registry = Registry::start();
    push_tiny_image(&registry, "library/app", "1.0", false);
    let blobs: Vec<(String, Vec<u8>)> = (0..TRANSFERS)
        .map(|i| push_random_blob(&registry, "library/app", TRANSFER_BLOB, 70 + i as u64))
        .collect();
    let work = tempfile::tempdir().expect("work");
    let cache = work.path().join("cache");
    let upstream = UpstreamToml::default_docker_io(&registry.url()).to_toml();
    let mut berth = Berth::start_in(work.path(), &cache, &upstream);
    let tag = support::raw_get(berth.addr, "/v2/library/app/manifests/1.0");
    assert_eq!(tag.0, 200, "{}", tag.1);

    // Ten cold blobs, each read slowly: about 1.5 s for 8 MiB at 256 KiB
    // per 50 ms once the first MiB arrived; SIGTERM once all ten are going.
    let (tx, rx) = mpsc::channel();
    let addr = berth.addr;
    let readers: Vec<_> = blobs
        .iter()
        .map(|(digest, _)| {
            let (tx, path) = (tx.clone(), format!("/v2/library/app/blobs/{digest}"));
            std::thread::spawn(move || slow_get(addr, &path, tx, Duration::from_millis(50)))
        })
        .collect();
    for n in 0..TRANSFERS {
        rx.recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("only {n} of {TRANSFERS} downloads started"));
    }
    berth.signal("TERM");
    assert!(
        poll(Duration::from_secs(10), || logged(&berth, "shutting down")
            .then_some(()))
        .is_some(),
        "{}",
        berth.log()
    );
    // The readiness probe says so while the downloads drain.
    let (status, body) = support::raw_get(berth.admin_addr, "/_berth/health");
    assert_eq!((status, body.contains("stopping")), (503, true), "{body}");
    // No new connections from now on.
    assert!(
        TcpStream::connect_timeout(&berth.addr, Duration::from_secs(2)).is_err(),
        "a new client is refused once shutdown began"
    );
    for (reader, (digest, content)) in readers.into_iter().zip(&blobs) {
        let body = reader.join().expect("reader");
        assert_eq!(body.len(), content.len(), "the download of {digest} in flight finished");
        assert_eq!(sha256_hex(&body), *digest, "the body verifies");
    }
    let status = berth
        .wait_exit(Duration::from_secs(30))
        .expect("berth exits after draining");
    assert!(status.success(), "{status}: {}", berth.log());
    assert!(logged(&berth, "every response in flight finished"), "{}", berth.log());
    let tmp: Vec<_> = std::fs::read_dir(cache.join("tmp"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");

    // Metadata and the blobs are durable: with the upstream gone, a restart
    // serves the tag and every blob.
    registry.stop();
    let again = Berth::start_in(work.path(), &cache, &upstream);
    assert_eq!(support::raw_get(again.addr, "/v2/library/app/manifests/1.0").0, 200);
    for (digest, _) in &blobs {
        let (status, _) = support::raw_get(again.addr, &format!("/v2/library/app/blobs/{digest}"));
        assert_eq!(status, 200, "{digest} after the restart");
    }
}

#[test]
fn past_the_grace_period_what_is_still_open_is_closed_and_berth_exits() {
    let registry = Registry::start();
    let (digest, _) = push_random_blob(&registry, "library/app", BLOB, 8);
    let upstream = UpstreamToml::default_docker_io(&registry.url()).to_toml();
    let mut berth = Berth::start(&format!("[server]\nshutdown_grace = \"1s\"\n{upstream}"));
    let (tx, rx) = mpsc::channel();
    let addr = berth.addr;
    let path = format!("/v2/library/app/blobs/{digest}");
    // Far too slow to finish: 256 KiB a second.
    let reader = std::thread::spawn(move || slow_get(addr, &path, tx, Duration::from_secs(1)));
    rx.recv_timeout(Duration::from_secs(30)).expect("the download started");
    berth.signal("TERM");
    let status = berth
        .wait_exit(Duration::from_secs(15))
        .expect("berth exits after the grace period");
    assert!(status.success(), "{status}: {}", berth.log());
    assert!(logged(&berth, "grace period over"), "{}", berth.log());
    let body = reader.join().expect("reader");
    assert!(body.len() < BLOB, "the slow download was cut");
}

/// SIGHUP reads the TLS files again: new connections get the new
/// certificate, a connection already open keeps working, and a botched
/// rotation keeps the certificate in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tls_certificate_without_dropping_connections() {
    let dir = tempfile::tempdir().expect("dir");
    let old = support::pki::Pki::new(&dir.path().join("old"), "old");
    let new = support::pki::Pki::new(&dir.path().join("new"), "new");
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    std::fs::copy(&old.server_cert, &cert).expect("cert");
    std::fs::copy(&old.server_key, &key).expect("key");
    let berth = Berth::start(&format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n{}",
        cert.display(),
        key.display(),
        UpstreamToml::default_docker_io("http://127.0.0.1:9").to_toml()
    ));
    let base = format!("https://{}/v2/", berth.host());
    let trusting = |ca: &std::path::Path| support::HttpClient::new().trusting(ca).build();
    let kept = trusting(&old.ca_cert);
    assert_eq!(kept.get(&base).send().await.expect("old cert").status(), 200);

    std::fs::copy(&new.server_cert, &cert).expect("cert");
    std::fs::copy(&new.server_key, &key).expect("key");
    berth.signal("HUP");
    let reloaded = || logged(&berth, "SIGHUP: TLS certificate and key reloaded").then_some(());
    assert!(poll(Duration::from_secs(10), reloaded).is_some(), "{}", berth.log());
    let fresh = trusting(&new.ca_cert);
    assert_eq!(fresh.get(&base).send().await.expect("new cert").status(), 200);
    assert!(
        trusting(&old.ca_cert).get(&base).send().await.is_err(),
        "a new connection gets the new certificate"
    );
    assert_eq!(
        kept.get(&base).send().await.expect("the open connection").status(),
        200,
        "a connection opened before the reload keeps working"
    );

    std::fs::write(&cert, "not a certificate").expect("botched cert");
    berth.signal("HUP");
    let failed = || logged(&berth, "SIGHUP: TLS reload failed").then_some(());
    assert!(poll(Duration::from_secs(10), failed).is_some(), "{}", berth.log());
    let again = trusting(&new.ca_cert);
    assert_eq!(again.get(&base).send().await.expect("still the new cert").status(), 200);
}

/// `Authorization: Basic …` for `user:password`, as a header line.
fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Authorization: Basic {token}\r\n")
}

/// The status of a GET of `path` sent with `headers`, on a new connection.
fn status_with(addr: SocketAddr, path: &str, headers: &str) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// An htpasswd file at `path` with one bcrypt entry.
fn htpasswd(path: &std::path::Path, user: &str, password: &str) {
    let hash = bcrypt::hash(password, 5).expect("bcrypt");
    std::fs::write(path, format!("{user}:{hash}\n")).expect("write htpasswd");
}

/// Wait (bounded) until `/_berth/status` counts `ok` good and `failed` refused reloads.
fn wait_reloads(berth: &Berth, ok: u64, failed: u64) -> serde_json::Value {
    let counted = || {
        let status = berth.status();
        let r = &status["config_reloads"];
        (r["ok"] == ok && r["failed"] == failed).then_some(status)
    };
    poll(Duration::from_secs(10), counted)
        .unwrap_or_else(|| panic!("no reload counted ({ok} ok, {failed} failed): {}", berth.log()))
}

/// The first log event whose message starts with `message`.
fn event(berth: &Berth, message: &str) -> Option<serde_json::Value> {
    berth
        .events()
        .into_iter()
        .find(|e| e["message"].as_str().is_some_and(|m| m.starts_with(message)))
}

fn auth_toml(htpasswd: &std::path::Path, upstream: &str) -> String {
    format!(
        "[auth]\nhtpasswd = \"{}\"\n[[access]]\nidentities = [\"alice\", \"carol\"]\n{upstream}",
        htpasswd.display()
    )
}

/// The config names another htpasswd file (alice out, carol in): after
/// SIGHUP alice is refused and carol let in, while a download alice began
/// before the reload goes on to its last byte on its open connection.
#[test]
fn sighup_swaps_the_htpasswd_while_a_download_in_flight_finishes() {
    let registry = Registry::start();
    let (digest, content) = push_random_blob(&registry, "library/app", BLOB, 11);
    let dir = tempfile::tempdir().expect("dir");
    let (old, new) = (dir.path().join("old.htpasswd"), dir.path().join("new.htpasswd"));
    htpasswd(&old, "alice", "alice-pw");
    htpasswd(&new, "carol", "carol-pw");
    let upstream = UpstreamToml::default_docker_io(&registry.url()).to_toml();
    let berth = Berth::start(&auth_toml(&old, &upstream));
    let (alice, carol) = (basic("alice", "alice-pw"), basic("carol", "carol-pw"));
    assert_eq!(status_with(berth.addr, "/v2/", &alice), 200);
    assert_eq!(status_with(berth.addr, "/v2/", &carol), 401);

    // A cold 32 MiB blob read slowly: about 4 s at 256 KiB per 30 ms.
    let (tx, rx) = mpsc::channel();
    let (addr, path, auth) = (berth.addr, format!("/v2/library/app/blobs/{digest}"), alice.clone());
    let reader = std::thread::spawn(move || slow_get_with(addr, &path, &auth, tx, Duration::from_millis(30)));
    rx.recv_timeout(Duration::from_secs(30)).expect("the download started");

    berth.rewrite_config(&auth_toml(&new, &upstream));
    berth.signal("HUP");
    let status = wait_reloads(&berth, 1, 0);
    assert!(!reader.is_finished(), "the download was still in flight at the reload");
    let summary = status["config_reloads"]["last"]["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("auth reloaded (1 htpasswd users)"), "{summary}");
    assert_eq!(
        status_with(berth.addr, "/v2/", &alice),
        401,
        "the old credential is refused"
    );
    assert_eq!(status_with(berth.addr, "/v2/", &carol), 200, "the new one is accepted");

    let body = reader.join().expect("reader");
    assert_eq!(
        body.len(),
        content.len(),
        "the download begun before the reload finished"
    );
    assert_eq!(sha256_hex(&body), digest, "and verifies");
    let reloaded = event(&berth, "SIGHUP: config reloaded").expect("the reload is logged");
    assert_eq!(reloaded["auth_reloaded"], true, "{reloaded}");
    assert!(
        !berth.log().contains("alice-pw") && !berth.log().contains("$2b$"),
        "no credentials logged"
    );
}

/// docker.io pointed at a closed port, then at a registry that has the
/// image: after SIGHUP the pull works, and a key that needs a restart is
/// named in a warning.
#[test]
fn sighup_points_an_upstream_at_another_registry() {
    let b = Registry::start();
    push_tiny_image(&b, "library/only-b", "1.0", false);
    let closed = UpstreamToml::default_docker_io("http://127.0.0.1:9").set("attempts", 1);
    let berth = Berth::start(&closed.to_toml());
    let path = "/v2/library/only-b/manifests/1.0";
    assert_ne!(support::raw_get(berth.addr, path).0, 200, "nothing listens on port 9");

    let to_b = UpstreamToml::default_docker_io(&b.url()).to_toml();
    berth.rewrite_config(&format!("[cache]\ntag_ttl = \"1m\"\n{to_b}"));
    berth.signal("HUP");
    let status = wait_reloads(&berth, 1, 0);
    let summary = status["config_reloads"]["last"]["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("changed: docker.io"), "{summary}");
    let (code, body) = support::raw_get(berth.addr, path);
    assert_eq!(code, 200, "the image only B has pulls after the reload: {body}");
    let metrics = support::raw_get(berth.admin_addr, "/metrics").1;
    assert!(
        metrics.contains(r#"berth_config_reloads_total{result="ok"} 1"#),
        "{metrics}"
    );
    let warning = event(&berth, "SIGHUP: cache.tag_ttl needs a restart").expect("a restart key is named");
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert!(
        event(&berth, "SIGHUP: listen needs a restart").is_none(),
        "listen did not change"
    );
}

/// A config with bad values changes nothing: berth says which keys are bad
/// and goes on pulling through the upstream it had.
#[test]
fn sighup_with_an_invalid_config_keeps_serving_the_old_one() {
    let registry = Registry::start();
    push_tiny_image(&registry, "library/app", "1.0", false);
    push_tiny_image(&registry, "library/app", "2.0", false);
    let upstream = UpstreamToml::default_docker_io(&registry.url()).to_toml();
    let berth = Berth::start(&upstream);
    assert_eq!(support::raw_get(berth.addr, "/v2/library/app/manifests/1.0").0, 200);

    berth.rewrite_config(
        "[cache]\nmax_size = \"lots\"\n[[upstream]]\nname = \"docker.io\"\nendpoints = [\"ftp://x\"]\ndefault = true\n",
    );
    berth.signal("HUP");
    let status = wait_reloads(&berth, 0, 1);
    let failed = event(
        &berth,
        "SIGHUP: config reload failed; still serving the previous config",
    )
    .expect("the refused reload is logged");
    assert_eq!(failed["level"], "ERROR", "{failed}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("upstream[0].endpoints") && error.contains("cache.max_size"),
        "{error}"
    );
    assert_eq!(status["config_reloads"]["last"]["ok"], false);
    let metrics = support::raw_get(berth.admin_addr, "/metrics").1;
    assert!(
        metrics.contains(r#"berth_config_reloads_total{result="failed"} 1"#)
            && metrics.contains(r#"berth_config_reloads_total{result="ok"} 0"#),
        "{metrics}"
    );
    assert!(
        event(&berth, "SIGHUP: cache.max_size needs a restart").is_none(),
        "nothing of a refused config is applied"
    );
    let (code, body) = support::raw_get(berth.addr, "/v2/library/app/manifests/2.0");
    assert_eq!(code, 200, "still pulling through the old upstream: {body}");
}
