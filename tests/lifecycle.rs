//! Graceful lifecycle: on SIGTERM berth stops accepting at once, lets the
//! responses in flight finish within `server.shutdown_grace`, leaves no
//! temp files, flushes its metadata and exits 0; past the grace period it
//! closes what is still open and exits all the same.

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
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("send");
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

#[test]
fn sigterm_lets_a_download_in_flight_finish_then_exits_clean() {
    let mut registry = Registry::start();
    push_tiny_image(&registry, "library/app", "1.0", false);
    let (digest, content) = push_random_blob(&registry, "library/app", BLOB, 7);
    let work = tempfile::tempdir().expect("work");
    let cache = work.path().join("cache");
    let upstream = UpstreamToml::default_docker_io(&registry.url()).to_toml();
    let mut berth = Berth::start_in(work.path(), &cache, &upstream);
    let tag = support::raw_get(berth.addr, "/v2/library/app/manifests/1.0");
    assert_eq!(tag.0, 200, "{}", tag.1);

    // A cold blob, read slowly: about 2 s for 32 MiB at 256 KiB per 15 ms.
    let (tx, rx) = mpsc::channel();
    let addr = berth.addr;
    let path = format!("/v2/library/app/blobs/{digest}");
    let reader = std::thread::spawn(move || slow_get(addr, &path, tx, Duration::from_millis(15)));
    rx.recv_timeout(Duration::from_secs(30)).expect("the download started");
    berth.signal("TERM");
    assert!(
        poll(Duration::from_secs(10), || logged(&berth, "shutting down")
            .then_some(()))
        .is_some(),
        "{}",
        berth.log()
    );
    // The readiness probe says so while the download drains.
    let (status, body) = support::raw_get(berth.admin_addr, "/_berth/health");
    assert_eq!((status, body.contains("stopping")), (503, true), "{body}");
    // No new connections from now on.
    assert!(
        TcpStream::connect_timeout(&berth.addr, Duration::from_secs(2)).is_err(),
        "a new client is refused once shutdown began"
    );
    let body = reader.join().expect("reader");
    assert_eq!(body.len(), content.len(), "the download in flight finished");
    assert_eq!(sha256_hex(&body), digest, "the body verifies");
    let status = berth
        .wait_exit(Duration::from_secs(30))
        .expect("berth exits after draining");
    assert!(status.success(), "{status}: {}", berth.log());
    assert!(logged(&berth, "every response in flight finished"), "{}", berth.log());
    let tmp: Vec<_> = std::fs::read_dir(cache.join("tmp"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");

    // Metadata and the blob are durable: with the upstream gone, a restart
    // serves the tag and the blob.
    registry.stop();
    let again = Berth::start_in(work.path(), &cache, &upstream);
    assert_eq!(support::raw_get(again.addr, "/v2/library/app/manifests/1.0").0, 200);
    let (status, _) = support::raw_get(again.addr, &format!("/v2/library/app/blobs/{digest}"));
    assert_eq!(status, 200);
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
