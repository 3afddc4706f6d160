//! berth on an open network: clients that send half a request, hold
//! connections, invent methods, or read a little of a large blob and leave
//! must not take it down, grow its memory, or make it read far more from
//! disk than it sends.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::{Berth, UpstreamToml, blob_path, eventually, lazy, raw_get};

/// An upstream nothing answers at: these tests need only berth itself.
fn no_upstream() -> String {
    UpstreamToml::default_docker_io("http://127.0.0.1:9").to_toml()
}

fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to berth")
}

/// Whether berth closed the connection within `within` (EOF or reset).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn half_sent_request_heads_are_closed_while_others_are_served() {
    let berth = Berth::start(&format!("[server]\nheader_timeout = \"2s\"\n{}", no_upstream()));
    let started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = connect(berth.addr);
            s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\nX-Slow: ")
                .expect("send half a head");
            s
        })
        .collect();
    // A normal client is served all the while.
    while started.elapsed() < Duration::from_secs(3) {
        assert_eq!(raw_get(berth.addr, "/v2/").0, 200, "served while 200 heads hang");
    }
    // Every half-sent head is closed soon after the timeout (2 s), long before
    // the 12 s this allows.
    for (i, s) in slow.iter_mut().enumerate() {
        let left = Duration::from_secs(12).saturating_sub(started.elapsed());
        assert!(
            closed_within(s, left),
            "half-sent head {i} still open after {:?}",
            started.elapsed()
        );
    }
    assert_eq!(raw_get(berth.addr, "/v2/").0, 200);
}

#[test]
fn running_out_of_file_descriptors_does_not_stop_berth() {
    let berth = Berth::start_with_fd_limit(&no_upstream(), 256);
    // 300 connections: more than berth has descriptors for.
    let held: Vec<TcpStream> = (0..300).map(|_| connect(berth.addr)).collect();
    eventually(
        Duration::from_secs(10),
        lazy(|| format!("berth ran out of descriptors: {}", berth.log())),
        || berth.log().contains("accept failed"),
    );
    drop(held);
    // Once they are closed, berth serves again.
    eventually(
        Duration::from_secs(15),
        lazy(|| format!("berth serves again after the connections closed: {}", berth.log())),
        || raw_get(berth.addr, "/v2/").0 == 200,
    );
    // Backing off, not spinning: the failure is logged once per run of failures.
    let logged = berth.log().matches("accept failed").count();
    assert!(logged <= 5, "accept failures flooded the log: {logged} lines");
}

#[test]
fn too_many_connections_from_one_client_are_refused_but_others_served() {
    let berth = Berth::start(&format!("[server]\nmax_connections_per_client = 4\n{}", no_upstream()));
    let _held: Vec<TcpStream> = (0..4).map(|_| connect(berth.addr)).collect();
    let mut fifth = connect(berth.addr);
    assert!(
        closed_within(&mut fifth, Duration::from_secs(5)),
        "fifth connection closed"
    );
    drop(_held);
    eventually(Duration::from_secs(5), "berth serves again", || {
        raw_get(berth.addr, "/v2/").0 == 200
    });
}

fn metrics(addr: SocketAddr) -> String {
    let (status, body) = raw_get(addr, "/metrics");
    assert_eq!(status, 200);
    body
}

/// A request with a made-up method of `len` bytes; whatever berth answers.
fn odd_method(addr: SocketAddr, len: usize) {
    let mut s = connect(addr);
    let method = "X".repeat(len);
    let _ = s.write_all(
        format!("{method} /v2/library/busybox/manifests/latest HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(
        out.starts_with(b"HTTP/1.1 "),
        "berth answered: {}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn invented_methods_do_not_grow_the_metrics() {
    let berth = Berth::start(&no_upstream());
    odd_method(berth.addr, 2048);
    // The first scrape adds its own series; measure from the second.
    metrics(berth.admin_addr);
    let before = metrics(berth.admin_addr).len();
    for i in 0..500 {
        // Each a different method: every one would be a new series if
        // labels came from input.
        odd_method(berth.addr, 1500 + i);
    }
    let after = metrics(berth.admin_addr).len();
    // Only counter values grow (a few digits).
    assert!(
        after.abs_diff(before) < 64,
        "/metrics grew from {before} to {after} bytes after 500 invented methods"
    );
}

/// Bytes berth's process read from the block device so far.
fn disk_read_bytes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("read /proc/<pid>/io");
    io.lines()
        .find_map(|l| l.strip_prefix("read_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("read_bytes in /proc/<pid>/io")
}

/// Ask the kernel to drop a (clean) file from the page cache, so that the
/// next read of it comes from the disk and shows in `read_bytes`.
fn drop_from_page_cache(path: &std::path::Path) {
    let status = std::process::Command::new("dd")
        .arg(format!("if={}", path.display()))
        .args(["iflag=nocache", "count=0", "status=none"])
        .status()
        .expect("run dd");
    assert!(status.success());
}

fn served_bytes(addr: SocketAddr) -> u64 {
    metrics(addr)
        .lines()
        .find_map(|l| l.strip_prefix("berth_served_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A stored 256 MiB blob, put in place before berth starts.
fn cache_with_large_blob(dir: &std::path::Path) -> (std::path::PathBuf, String, std::path::PathBuf) {
    const SIZE: usize = 256 << 20;
    let data = support::images::random_bytes(SIZE, 42);
    let digest = support::sha256_hex(&data);
    let cache = dir.join("cache");
    let path = blob_path(&cache, &digest);
    std::fs::create_dir_all(path.parent().expect("shard dir")).expect("blob dir");
    let mut f = std::fs::File::create(&path).expect("create blob");
    f.write_all(&data).expect("write blob");
    f.sync_all().expect("sync blob");
    (cache, digest, path)
}

/// GET the blob from `offset` on, read `keep` bytes, and leave.
fn read_a_little(addr: SocketAddr, digest: &str, offset: u64, keep: usize) {
    let mut s = connect(addr);
    let req = format!("GET /v2/library/big/blobs/{digest} HTTP/1.1\r\nHost: berth\r\nRange: bytes={offset}-\r\n\r\n");
    s.write_all(req.as_bytes()).expect("send request");
    let mut got = 0;
    let mut buf = vec![0u8; 16 << 10];
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    while got < keep {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if head.len() < 64 {
                    head.extend_from_slice(&buf[..n.min(64)]);
                }
                got += n;
            }
        }
    }
    assert!(head.starts_with(b"HTTP/1.1 206"), "{}", String::from_utf8_lossy(&head));
}

#[test]
fn short_lived_range_requests_read_about_what_they_are_sent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cache, digest, path) = cache_with_large_blob(dir.path());
    let berth = Berth::start_in(dir.path(), &cache, &no_upstream());
    let (read_before, sent_before) = (disk_read_bytes(berth.pid()), served_bytes(berth.admin_addr));
    for i in 0..60u64 {
        drop_from_page_cache(&path);
        read_a_little(berth.addr, &digest, i * (4 << 20), 256 << 10);
    }
    // Let the requests' streams notice their clients left.
    eventually(Duration::from_secs(5), "berth answers /v2/", || {
        raw_get(berth.addr, "/v2/").0 == 200
    });
    let read = disk_read_bytes(berth.pid()) - read_before;
    let sent = served_bytes(berth.admin_addr) - sent_before;
    println!("60 short-lived range requests: berth sent {sent} bytes, read {read} bytes from disk");
    assert!(sent > 0);
    assert!(
        read <= 4 * sent,
        "berth read {read} bytes from disk to send {sent} ({}x)",
        read / sent.max(1)
    );
}

#[test]
fn a_blob_truncated_under_a_reader_fails_that_reader_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cache, digest, path) = cache_with_large_blob(dir.path());
    let berth = Berth::start_in(dir.path(), &cache, &no_upstream());
    let mut s = connect(berth.addr);
    let req = format!("GET /v2/library/big/blobs/{digest} HTTP/1.1\r\nHost: berth\r\n\r\n");
    s.write_all(req.as_bytes()).expect("send request");
    let mut buf = vec![0u8; 64 << 10];
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let n = s.read(&mut buf).expect("first bytes");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // Behind berth's back, the stored file loses most of its bytes.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(1 << 20))
        .expect("truncate the stored blob");
    let mut got = n;
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got < 256 << 20, "the reader must not get a complete-looking body");
    // The process lives and serves; the damaged blob is gone from the cache.
    assert_eq!(raw_get(berth.addr, "/v2/").0, 200, "berth survives: {}", berth.log());
    // The file goes first, then berth logs why: wait for both.
    eventually(
        Duration::from_secs(5),
        lazy(|| format!("the unreadable blob removed and logged: {}", berth.log())),
        || !path.exists() && berth.log().contains("stored blob unreadable"),
    );
}

#[test]
fn beyond_max_connections_new_clients_wait_for_a_free_one() {
    let berth = Berth::start(&format!("[server]\nmax_connections = 3\n{}", no_upstream()));
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect(berth.addr)).collect();
    // All three are accepted: each answers a request.
    for s in &mut held {
        s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\n\r\n")
            .expect("request");
        let mut buf = [0u8; 512];
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let n = s.read(&mut buf).expect("answer");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }
    // A fourth waits in the backlog: no answer while the three are open.
    let mut fourth = connect(berth.addr);
    fourth
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n")
        .expect("request");
    let _ = fourth.set_read_timeout(Some(Duration::from_millis(1500)));
    let mut buf = [0u8; 512];
    assert!(
        fourth.read(&mut buf).is_err(),
        "a fourth connection is not served while three are open"
    );
    // One closes: the fourth is served.
    drop(held.pop());
    let _ = fourth.set_read_timeout(Some(Duration::from_secs(5)));
    let n = fourth.read(&mut buf).expect("served once a connection closed");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}
