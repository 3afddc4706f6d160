//! The measurements: curl for blob throughput, wrk for manifest load,
//! concurrent hashing clients for the cold fan-out, /proc for memory, the
//! upstream's access log for the bytes it sent, and wall time for skopeo.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest as _;

/// Aggregate MB/s (10^6 bytes) of `clients` curl processes each fetching
/// `url` once. Panics if a body is short.
pub fn curl_throughput(url: &str, clients: usize, expected_len: u64) -> f64 {
    curl_throughput_with(url, &[], clients, expected_len)
}

/// `curl_throughput` with extra curl arguments (credentials, certificates).
pub fn curl_throughput_with(url: &str, extra: &[String], clients: usize, expected_len: u64) -> f64 {
    curl_throughput_over(&[url], extra, clients, expected_len)
}

/// Aggregate MB/s of `clients` curl processes, client `i` fetching
/// `urls[i % urls.len()]` once (round-robin over replicas).
pub fn curl_throughput_over(urls: &[&str], extra: &[String], clients: usize, expected_len: u64) -> f64 {
    let started = Instant::now();
    let children: Vec<_> = (0..clients)
        .map(|i| {
            Command::new("curl")
                .args(["-sS", "--noproxy", "*", "-o", "/dev/null", "-w", "%{size_download}"])
                .args(extra)
                .arg(urls[i % urls.len()])
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn curl")
        })
        .collect();
    let mut total = 0u64;
    for child in children {
        let out = child.wait_with_output().expect("curl output");
        let got: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
        assert!(
            out.status.success() && got == expected_len,
            "curl {urls:?}: {got} of {expected_len} bytes"
        );
        total += got;
    }
    total as f64 / started.elapsed().as_secs_f64() / 1e6
}

/// The median MB/s of each URL over `rounds` rounds, the URLs taking turns
/// within a round so that drift in the machine's state hits them alike.
pub fn curl_throughput_interleaved(urls: &[&str], clients: usize, expected_len: u64, rounds: usize) -> Vec<f64> {
    curl_throughput_interleaved_with(urls, &[], clients, expected_len, rounds)
}

/// [`curl_throughput_interleaved`] with extra curl arguments for every URL.
pub fn curl_throughput_interleaved_with(
    urls: &[&str],
    extra: &[String],
    clients: usize,
    expected_len: u64,
    rounds: usize,
) -> Vec<f64> {
    let mut samples = vec![Vec::new(); urls.len()];
    for _ in 0..rounds {
        for (i, url) in urls.iter().enumerate() {
            samples[i].push(curl_throughput_with(url, extra, clients, expected_len));
        }
    }
    samples.iter_mut().map(|s| median(s)).collect()
}

pub struct WrkResult {
    pub req_per_sec: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

/// `wrk` with `connections` connections for `secs` seconds.
pub fn wrk(url: &str, accept: &str, connections: usize, secs: u64) -> WrkResult {
    wrk_with(url, &[format!("Accept: {accept}")], connections, secs)
}

/// `wrk` sending these request headers.
pub fn wrk_with(url: &str, headers: &[String], connections: usize, secs: u64) -> WrkResult {
    let out = Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{secs}s"), "--latency"])
        .args(headers.iter().flat_map(|h| ["-H", h.as_str()]))
        .arg(url)
        .output()
        .expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "wrk {url}: {text}");
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
    };
    let req_per_sec = field("Requests/sec:").and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let p99_ms = field("99%").and_then(|v| duration_ms(&v)).unwrap_or(f64::NAN);
    let non_2xx: u64 = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let socket_errors: u64 = field("Socket errors:")
        .map(|v| {
            v.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    WrkResult {
        req_per_sec,
        p99_ms,
        errors: non_2xx + socket_errors,
    }
}

/// wrk's durations: `250.00us`, `5.00ms`, `1.20s`, `2.00m`.
fn duration_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

pub struct FanOut {
    pub wall: Duration,
    pub verified: usize,
}

/// `clients` concurrent GETs of `url`, each body hashed and compared with
/// `digest`; counts the bodies that verified.
pub fn cold_fan_out(url: &str, clients: usize, digest: &str) -> FanOut {
    cold_fan_out_over(&[url], clients, digest)
}

/// `cold_fan_out` with client `i` asking `urls[i % urls.len()]`.
pub fn cold_fan_out_over(urls: &[&str], clients: usize, digest: &str) -> FanOut {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let http = reqwest::Client::builder().no_proxy().build().expect("http client");
        let started = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|i| {
                let (http, url) = (http.clone(), urls[i % urls.len()].to_string());
                tokio::spawn(async move {
                    let mut resp = http.get(&url).send().await.ok()?.error_for_status().ok()?;
                    let mut hasher = sha2::Sha256::new();
                    while let Some(chunk) = resp.chunk().await.ok()? {
                        hasher.update(&chunk);
                    }
                    Some(format!("sha256:{}", hex::encode(hasher.finalize())))
                })
            })
            .collect();
        let mut verified = 0;
        for t in tasks {
            if let Ok(Some(got)) = t.await {
                verified += usize::from(got == digest);
            }
        }
        FanOut {
            wall: started.elapsed(),
            verified,
        }
    })
}

/// `VmRSS` or `VmHWM` of a process, in MiB.
pub fn memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Reset the process's peak RSS (`VmHWM`) to its current RSS.
pub fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Bytes the upstream sent in answer to GETs whose path contains `needle`,
/// from Distribution's access log (combined log format: `"GET path proto"
/// status bytes`).
pub fn upstream_get_bytes(log: &str, needle: &str) -> u64 {
    log.lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("\"GET ")?;
            let (request, after) = rest.split_once('"')?;
            if !request.contains(needle) {
                return None;
            }
            let mut fields = after.split_whitespace();
            let _status = fields.next()?;
            fields.next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Wall time of one `skopeo copy` from `src` to a fresh `dir:` destination,
/// on the cpus `cpus` (a taskset list) when given.
pub fn skopeo_copy_secs(src: &str, cpus: Option<&str>) -> f64 {
    let dest = tempfile::tempdir().expect("copy destination");
    let mut command = match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus, "skopeo"]);
            c
        }
        None => Command::new("skopeo"),
    };
    let started = Instant::now();
    let out = command
        .args(["copy", "--src-tls-verify=false", src])
        .arg(format!("dir:{}", dest.path().join("img").display()))
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .expect("run skopeo");
    let secs = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "skopeo copy {src}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    secs
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// What `https_load` needs for TLS: the CA that signed berth's certificate,
/// and the client's certificate and key (PEM) when it presents one.
pub struct TlsClient<'a> {
    pub ca: &'a std::path::Path,
    pub identity: Option<(&'a std::path::Path, &'a std::path::Path)>,
}

/// wrk's measurement for what wrk cannot do, a client certificate: GET `url`
/// over `connections` HTTP/1.1 keep-alive connections (one client each, as
/// wrk's connections) for `secs` seconds. Used for both sides of a ratio, so
/// the load client's own cost is the same on each.
pub fn https_load(url: &str, accept: &str, tls: &TlsClient<'_>, connections: usize, secs: u64) -> WrkResult {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(tls.ca).expect("read CA")).expect("CA PEM");
    let identity = tls.identity.map(|(cert, key)| {
        let mut pem = std::fs::read(cert).expect("read client cert");
        pem.extend(std::fs::read(key).expect("read client key"));
        reqwest::Identity::from_pem(&pem).expect("client identity PEM")
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("load runtime");
    let (latencies, errors) = runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let mut builder = reqwest::Client::builder()
                .http1_only()
                .pool_max_idle_per_host(1)
                .add_root_certificate(ca.clone())
                .no_proxy();
            if let Some(identity) = &identity {
                builder = builder.identity(identity.clone());
            }
            let client = builder.build().expect("load client");
            let (url, accept) = (url.to_string(), accept.to_string());
            tasks.push(tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0u64);
                while tokio::time::Instant::now() < deadline {
                    let start = Instant::now();
                    let ok = match client.get(&url).header("Accept", &accept).send().await {
                        Ok(resp) => resp.status().is_success() && resp.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    if ok {
                        latencies.push(start.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        errors += 1;
                    }
                }
                (latencies, errors)
            }));
        }
        let (mut all, mut errors) = (Vec::new(), 0);
        for task in tasks {
            let (l, e) = task.await.expect("load task");
            all.extend(l);
            errors += e;
        }
        (all, errors)
    });
    let mut latencies = latencies;
    latencies.sort_by(|a, b| a.total_cmp(b));
    let p99_ms = latencies
        .get(latencies.len().saturating_mul(99) / 100)
        .copied()
        .unwrap_or(f64::NAN);
    WrkResult {
        req_per_sec: latencies.len() as f64 / secs as f64,
        p99_ms,
        errors,
    }
}
