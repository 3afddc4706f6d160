//! Shared helpers for the integration tests: the real upstream, test images,
//! berth as a process, a counting/auth relay, and small client utilities.
#![allow(dead_code)]

pub mod berth;
pub mod daemons;
pub mod fake_upstream;
pub mod images;
pub mod netns;
pub mod recorder;
pub mod registry;
pub mod relay;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

pub use berth::Berth;

/// Where proxy-honouring programs are sent: nothing listens there.
pub const DEAD_PROXY: &str = "http://127.0.0.1:9";
pub const NO_PROXY: &str = "127.0.0.1,localhost";

/// Whether `cond` holds within `timeout`, polled. A blob becomes visible in
/// the cache just after its last byte went out (the fsync and rename follow
/// the verification), so tests wait for it rather than assume it.
pub fn eventually(timeout: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A verified blob is committed to the cache soon after it was served.
pub const COMMIT_WAIT: Duration = Duration::from_secs(10);

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// The name a client uses for an upstream repository (`library/` is implied).
pub fn client_name(repo: &str) -> String {
    repo.strip_prefix("library/").unwrap_or(repo).to_string()
}

pub fn skopeo_try(args: &[&str]) -> Output {
    Command::new("skopeo")
        .args(args)
        .env("HTTP_PROXY", DEAD_PROXY)
        .env("HTTPS_PROXY", DEAD_PROXY)
        .env("NO_PROXY", NO_PROXY)
        .output()
        .expect("run skopeo (apt-get install skopeo)")
}

pub fn skopeo(args: &[&str]) -> Output {
    let out = skopeo_try(args);
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Check every blob of an OCI layout hashes to its name; return the digests.
pub fn verify_oci_dir(dir: &Path) -> HashSet<String> {
    let mut seen = HashSet::new();
    for entry in std::fs::read_dir(dir.join("blobs/sha256")).expect("oci blobs dir") {
        let path = entry.expect("dir entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("blob name")
            .to_string();
        let bytes = std::fs::read(&path).expect("read blob");
        assert_eq!(
            sha256_hex(&bytes),
            format!("sha256:{name}"),
            "blob {} verifies",
            path.display()
        );
        seen.insert(format!("sha256:{name}"));
    }
    seen
}

/// A GET with the path sent exactly as given (no normalisation of `..`).
/// Returns (status, body); status 0 when nothing answered.
pub fn raw_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
