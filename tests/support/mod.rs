//! Shared helpers for the integration tests: the real upstream, test images,
//! berth as a process, a counting/auth relay, and small client utilities.
#![allow(dead_code)]

pub mod berth;
pub mod daemons;
pub mod fake_upstream;
pub mod garage;
pub mod images;
pub mod netns;
pub mod pki;
pub mod recorder;
pub mod registry;
pub mod relay;
pub mod upstream_toml;

use std::collections::HashSet;
use std::fmt::Display;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

#[allow(unused_imports)] // not every test file starts a berth
pub use berth::Berth;
#[allow(unused_imports)] // the load bench, which shares this module, writes its own config
pub use upstream_toml::UpstreamToml;

/// Where proxy-honouring programs are sent: nothing listens there.
pub const DEAD_PROXY: &str = "http://127.0.0.1:9";
pub const NO_PROXY: &str = "127.0.0.1,localhost";

/// How long a wait sleeps between two checks of its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Polls `cond` until it gives a value, or gives `None` once `timeout` has
/// passed. The one poll loop of the tests: `eventually` and the start-up
/// waits (which panic with a process's log) are built on it; nothing waits
/// by sleeping a fixed time.
pub fn poll<T>(timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = cond() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// An address for a server that takes a fixed address (Distribution,
/// Garage, Prometheus, a replica its peers must know beforehand). The port
/// lies below the kernel's ephemeral range, so neither an outgoing
/// connection (which takes its local port from that range) nor a `:0`
/// listener can take it between this pick and the server's bind; a bind
/// here checks that nothing holds it now. CI once lost a replica's port to
/// that race when ports came from `:0`.
pub fn fixed_port_addr() -> std::net::SocketAddr {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let ephemeral_low: u16 = range
        .split_whitespace()
        .next()
        .and_then(|low| low.parse().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_100));
    for _ in 0..200 {
        let port = rand::random_range(low..high);
        if let Ok(addr) = std::net::TcpListener::bind(("127.0.0.1", port)).and_then(|l| l.local_addr()) {
            return addr;
        }
    }
    panic!("no free port below the ephemeral range ({low}..{high}) in 200 tries");
}

/// Waits until `cond` holds; after `timeout` panics saying `what` did not
/// happen. A blob becomes visible in the cache just after its last byte went
/// out (the fsync and rename follow the verification), so tests wait for it
/// rather than assume it. `what` is formatted only on timeout, so a
/// [`lazy`] description can show a log as it was then.
#[track_caller]
pub fn eventually(timeout: Duration, what: impl Display, mut cond: impl FnMut() -> bool) {
    if poll(timeout, || cond().then_some(())).is_none() {
        panic!("timed out after {timeout:?} waiting for: {what}");
    }
}

/// [`eventually`] inside an async test: sleeps on the runtime, so the tasks
/// the test spawned (pulls, relays) go on while it waits.
pub async fn eventually_async(timeout: Duration, what: impl Display, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A description worked out only when shown: `lazy(|| berth.log())`.
pub fn lazy<F: Fn() -> String>(describe: F) -> impl Display {
    struct Lazy<F>(F);
    impl<F: Fn() -> String> Display for Lazy<F> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&(self.0)())
        }
    }
    Lazy(describe)
}

/// A verified blob is committed to the cache soon after it was served.
pub const COMMIT_WAIT: Duration = Duration::from_secs(10);

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Where berth keeps a verified blob: `blobs/sha256/<first two hex>/<hex>`
/// under its cache dir.
pub fn blob_path(cache_dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    cache_dir.join("blobs/sha256").join(&hex[..2]).join(hex)
}

/// Every blob file in a cache dir (none if it has no blob tree yet).
pub fn stored_blobs(cache_dir: &Path) -> Vec<PathBuf> {
    let shards = std::fs::read_dir(cache_dir.join("blobs/sha256")).into_iter().flatten();
    shards
        .flat_map(|shard| std::fs::read_dir(shard.expect("shard").path()).expect("shard dir"))
        .map(|file| file.expect("blob file").path())
        .collect()
}

/// An HTTP client for the servers a test started. It never uses a proxy
/// (the environment names a dead one); the options cover what tests vary.
pub struct HttpClient(reqwest::ClientBuilder);

impl Default for HttpClient {
    fn default() -> HttpClient {
        HttpClient::new()
    }
}

impl HttpClient {
    pub fn new() -> HttpClient {
        HttpClient(reqwest::Client::builder().no_proxy())
    }

    /// Hand redirects back instead of following them.
    pub fn no_redirects(self) -> HttpClient {
        HttpClient(self.0.redirect(reqwest::redirect::Policy::none()))
    }

    /// Trust the PEM certificate at `cert` (a test's self-signed one).
    pub fn trusting(self, cert: &Path) -> HttpClient {
        let pem = std::fs::read(cert).expect("read certificate");
        let ca = reqwest::Certificate::from_pem(&pem).expect("PEM certificate");
        HttpClient(self.0.add_root_certificate(ca))
    }

    pub fn build(self) -> reqwest::Client {
        self.0.build().expect("HTTP client")
    }
}

/// The plain client: no proxy, redirects followed.
pub fn client() -> reqwest::Client {
    HttpClient::new().build()
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

/// `skopeo copy` of `reference` from the registry at `host` (berth) into a
/// fresh dir, each blob checked against its name; the digests
/// of what it wrote, or skopeo's error.
pub fn skopeo_pull(host: &str, reference: &str) -> Result<Vec<String>, String> {
    let dest = tempfile::tempdir().expect("pull dir");
    let out = skopeo_try(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{host}/{reference}"),
        &format!("dir:{}", dest.path().display()),
    ]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let mut digests = Vec::new();
    for entry in std::fs::read_dir(dest.path()).expect("read pull dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if name.len() == 64 {
            let bytes = std::fs::read(&path).expect("read blob");
            assert_eq!(sha256_hex(&bytes), format!("sha256:{name}"), "skopeo's {name} is whole");
            digests.push(format!("sha256:{name}"));
        }
    }
    digests.sort();
    Ok(digests)
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
