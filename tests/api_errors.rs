//! The read API against a real upstream: headers, Range, pagination, and the
//! spec status and error code for every kind of bad request. Every check is
//! its own test with its own berth and cache, so one failure hides no other
//! and no check depends on what another did first. They share one seeded
//! upstream, which none of them changes (berth refuses every push), so the
//! images are pushed once and not once per check.

mod support;

use reqwest::StatusCode;
use std::sync::OnceLock;

use support::images::{Fixtures, Image, seed};
use support::registry::Registry;
use support::{
    Berth, COMMIT_WAIT, UpstreamToml, blob_path, client, client_name, eventually_async, raw_get, sha256_hex,
};

/// The upstream with the fixture images, for the life of this test process.
fn upstream() -> &'static (Registry, Fixtures) {
    static UPSTREAM: OnceLock<(Registry, Fixtures)> = OnceLock::new();
    UPSTREAM.get_or_init(|| {
        let registry = Registry::start_for_this_process();
        let fixtures = seed(&registry);
        (registry, fixtures)
    })
}

/// A fresh berth, with an empty cache, in front of the seeded upstream.
struct Env {
    berth: Berth,
    http: reqwest::Client,
    /// The OCI image every check uses (`library/busybox:oci`).
    oci: &'static Image,
}

impl Env {
    fn start() -> Env {
        let (registry, fixtures) = upstream();
        let berth = Berth::start(&UpstreamToml::default_docker_io(&registry.url()).to_toml());
        Env {
            berth,
            http: client(),
            oci: &fixtures.oci,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{path}", self.berth.url())
    }

    /// The name a client uses for the image's repository.
    fn name(&self) -> String {
        client_name(&self.oci.repo)
    }

    fn layer(&self) -> &str {
        self.oci.blobs.last().expect("a layer")
    }

    fn layer_url(&self) -> String {
        self.url(&format!("{}/blobs/{}", self.name(), self.layer()))
    }

    async fn send(&self, method: &str, path: &str, range: Option<&str>) -> reqwest::Response {
        let mut req = self.http.request(method.parse().unwrap(), self.url(path));
        if let Some(range) = range {
            req = req.header("range", range);
        }
        req.send().await.unwrap()
    }

    /// GET the manifest by tag, with Accept spread over several lines.
    async fn manifest_by_tag(&self) -> reqwest::Response {
        self.http
            .get(self.url(&format!("{}/manifests/{}", self.name(), self.oci.tag)))
            .header("accept", "application/vnd.docker.distribution.manifest.v2+json")
            .header("accept", "application/vnd.docker.distribution.manifest.list.v2+json")
            .header(
                "accept",
                "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json;q=0.5",
            )
            .send()
            .await
            .unwrap()
    }

    async fn whole_layer(&self) -> reqwest::Response {
        self.http.get(self.layer_url()).send().await.unwrap()
    }

    /// The whole layer, pulled and then committed to the cache: what the
    /// checks of a warm blob start from. (Committed, not only served: a HEAD
    /// between the two answers `content-length: 0`.)
    async fn warm_layer(&self) -> bytes::Bytes {
        let whole = self.whole_layer().await;
        assert_eq!(whole.status(), StatusCode::OK, "the layer is pulled");
        let whole = whole.bytes().await.unwrap();
        let stored = blob_path(&self.berth.cache_dir, self.layer());
        eventually_async(COMMIT_WAIT, "the layer is cached", || stored.exists()).await;
        whole
    }
}

async fn env() -> Env {
    tokio::task::block_in_place(Env::start)
}

async fn error_code(resp: reqwest::Response) -> (StatusCode, String, String) {
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.expect("spec error body is JSON");
    let e = &body["errors"][0];
    (
        status,
        e["code"].as_str().unwrap_or_default().to_string(),
        e["message"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn base_endpoint_names_the_api_version() {
    let env = env().await;
    let r = env.http.get(env.url("")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["docker-distribution-api-version"], "registry/2.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manifest_by_tag_has_its_digest_type_and_length() {
    let env = env().await;
    let r = env.manifest_by_tag().await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["docker-content-digest"], env.oci.digest.as_str());
    assert_eq!(r.headers()["content-type"], env.oci.media_type.as_str());
    let len: usize = r.headers()["content-length"].to_str().unwrap().parse().unwrap();
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), len);
    assert_eq!(sha256_hex(&body), env.oci.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manifest_head_by_digest_agrees_with_get() {
    let env = env().await;
    let len = env.manifest_by_tag().await.bytes().await.unwrap().len();
    let r = env
        .http
        .head(env.url(&format!("{}/manifests/{}", env.name(), env.oci.digest)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["docker-content-digest"], env.oci.digest.as_str());
    assert_eq!(r.headers()["content-length"], len.to_string().as_str());
}

/// A client that accepts none of the types berth could serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_accepting_no_servable_type_gets_manifest_unknown() {
    let env = env().await;
    let r = env
        .http
        .get(env.url(&format!("{}/manifests/{}", env.name(), env.oci.tag)))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    let (status, code, message) = error_code(r).await;
    assert_eq!((status, code.as_str()), (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"));
    assert!(
        message.contains("OCI manifest found, but accept header does not support OCI manifests"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_range_on_a_cold_blob_answers_206_with_the_right_bytes() {
    let env = env().await;
    let r = env
        .http
        .get(env.layer_url())
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    let content_range = r.headers()["content-range"].to_str().unwrap().to_string();
    assert!(content_range.starts_with("bytes 10-19/"), "{content_range}");
    let part = r.bytes().await.unwrap();
    let whole = env.whole_layer().await;
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(whole.headers()["docker-content-digest"], env.layer());
    let whole = whole.bytes().await.unwrap();
    assert_eq!(sha256_hex(&whole), env.layer());
    assert_eq!(&part[..], &whole[10..20]);
    assert_eq!(content_range, format!("bytes 10-19/{}", whole.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_suffix_range_on_a_warm_blob_answers_its_last_bytes() {
    let env = env().await;
    let whole = env.warm_layer().await;
    let r = env
        .http
        .get(env.layer_url())
        .header("range", "bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.bytes().await.unwrap()[..], &whole[whole.len() - 5..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn head_of_a_blob_has_its_length() {
    let env = env().await;
    let whole = env.warm_layer().await;
    let r = env.http.head(env.layer_url()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], whole.len().to_string().as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tags_are_paginated_with_a_link_to_the_next_page() {
    let env = env().await;
    let name = env.name();
    let r = env
        .http
        .get(env.url(&format!("{name}/tags/list?n=1")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let link = r.headers().get("link").map(|v| v.to_str().unwrap().to_string());
    let page: serde_json::Value = r.json().await.unwrap();
    assert_eq!(page["name"], name);
    assert_eq!(page["tags"].as_array().unwrap().len(), 1);
    let link = link.expect("a Link header when more tags follow");
    assert!(
        link.contains(&format!("/v2/{name}/tags/list?n=1&last=")) && link.ends_with("rel=\"next\""),
        "{link}"
    );
}

/// A request berth refuses, and what its answer must say.
struct Refused {
    method: &'static str,
    /// Under `/v2/`, with `{name}`, `{layer}`, `{digest}` (the image's
    /// manifest) and `{missing}` (a digest nothing has) filled in.
    path: &'static str,
    /// A Range is asked of a warm blob (see `Env::warm_layer`).
    range: Option<&'static str>,
    expect: Expect,
}

enum Expect {
    /// The spec status and error code, and a message naming some cause.
    Error(StatusCode, &'static str),
    /// A message naming this cause.
    Cause(&'static str),
}

impl Refused {
    fn path(&self, env: &Env) -> String {
        self.path
            .replace("{name}", &env.name())
            .replace("{layer}", env.layer())
            .replace("{digest}", &env.oci.digest)
            .replace("{missing}", &format!("sha256:{}", "0".repeat(64)))
    }

    async fn send(&self, env: &Env) -> reqwest::Response {
        if self.range.is_some() {
            env.warm_layer().await;
        }
        env.send(self.method, &self.path(env), self.range).await
    }

    async fn check(&self, env: &Env) {
        let (method, path) = (self.method, self.path(env));
        let (status, code, message) = error_code(self.send(env).await).await;
        match self.expect {
            Expect::Error(want_status, want_code) => {
                assert_eq!(
                    (status, code.as_str()),
                    (want_status, want_code),
                    "{method} {path}: {message}"
                );
                assert!(
                    message.contains("(cause="),
                    "{method} {path}: message names the cause: {message}"
                );
            }
            Expect::Cause(cause) => assert!(
                message.contains(&format!("(cause={cause})")),
                "{method} {path}: {message}"
            ),
        }
    }
}

/// One test per row, each on its own berth, and `all_refused()` listing
/// every row for the checks that need them all sent first.
macro_rules! refused {
    ($($test:ident: $method:literal $path:literal $(range $range:literal)? => $expect:expr;)*) => {
        fn all_refused() -> Vec<Refused> {
            vec![$(Refused { method: $method, path: $path, range: refused!(@range $($range)?), expect: $expect }),*]
        }
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let env = env().await;
                Refused { method: $method, path: $path, range: refused!(@range $($range)?), expect: $expect }
                    .check(&env)
                    .await;
            }
        )*
    };
    (@range) => { None };
    (@range $range:literal) => { Some($range) };
}

use Expect::{Cause, Error};
const BAD_REQUEST: StatusCode = StatusCode::BAD_REQUEST;
const NOT_FOUND: StatusCode = StatusCode::NOT_FOUND;
const NOT_ALLOWED: StatusCode = StatusCode::METHOD_NOT_ALLOWED;
const NOT_SATISFIABLE: StatusCode = StatusCode::RANGE_NOT_SATISFIABLE;

refused! {
    unknown_tag_is_manifest_unknown: "GET" "{name}/manifests/no-such-tag" => Error(NOT_FOUND, "MANIFEST_UNKNOWN");
    tags_of_an_unknown_repo_are_name_unknown: "GET" "no-such-repo/tags/list" => Error(NOT_FOUND, "NAME_UNKNOWN");
    manifest_of_an_unknown_repo_is_name_unknown: "GET" "no-such-repo/manifests/latest" => Error(NOT_FOUND, "NAME_UNKNOWN");
    missing_blob_is_blob_unknown: "GET" "{name}/blobs/{missing}" => Error(NOT_FOUND, "BLOB_UNKNOWN");
    short_manifest_digest_is_digest_invalid: "GET" "{name}/manifests/sha256:1234" => Error(BAD_REQUEST, "DIGEST_INVALID");
    non_hex_blob_digest_is_digest_invalid: "GET" "{name}/blobs/sha256:XYZ" => Error(BAD_REQUEST, "DIGEST_INVALID");
    md5_blob_digest_is_digest_invalid: "GET" "{name}/blobs/md5:00000000000000000000000000000000" => Error(BAD_REQUEST, "DIGEST_INVALID");
    upper_case_name_is_name_invalid: "GET" "BusyBox/manifests/latest" => Error(BAD_REQUEST, "NAME_INVALID");
    empty_name_component_is_name_invalid: "GET" "a//b/manifests/latest" => Error(BAD_REQUEST, "NAME_INVALID");
    // A tag that cannot exist names no manifest (OCI conformance).
    tag_starting_with_a_dash_is_manifest_unknown: "GET" "{name}/manifests/-bad-tag" => Error(NOT_FOUND, "MANIFEST_UNKNOWN");
    tag_starting_with_a_dot_is_manifest_unknown: "GET" "{name}/manifests/.INVALID_MANIFEST_NAME" => Error(NOT_FOUND, "MANIFEST_UNKNOWN");
    // A push is refused only after its reference was parsed.
    put_of_a_short_digest_is_digest_invalid: "PUT" "{name}/manifests/sha256:1234" => Error(BAD_REQUEST, "DIGEST_INVALID");
    delete_of_a_short_digest_is_digest_invalid: "DELETE" "{name}/manifests/sha256:1234" => Error(BAD_REQUEST, "DIGEST_INVALID");
    delete_of_a_non_hex_blob_digest_is_digest_invalid: "DELETE" "{name}/blobs/sha256:XYZ" => Error(BAD_REQUEST, "DIGEST_INVALID");
    put_of_an_invalid_tag_is_tag_invalid: "PUT" "{name}/manifests/.INVALID_MANIFEST_NAME" => Error(BAD_REQUEST, "TAG_INVALID");
    put_to_an_upper_case_name_is_name_invalid: "PUT" "BusyBox/manifests/latest" => Error(BAD_REQUEST, "NAME_INVALID");
    upload_to_an_upper_case_name_is_name_invalid: "POST" "BusyBox/blobs/uploads/" => Error(BAD_REQUEST, "NAME_INVALID");
    delete_of_a_blob_is_unsupported: "DELETE" "{name}/blobs/{layer}" => Error(NOT_ALLOWED, "UNSUPPORTED");
    range_past_the_end_is_range_invalid: "GET" "{name}/blobs/{layer}" range "bytes=99999999-" => Error(NOT_SATISFIABLE, "RANGE_INVALID");
    multiple_ranges_are_range_invalid: "GET" "{name}/blobs/{layer}" range "bytes=0-1,5-6" => Error(NOT_SATISFIABLE, "RANGE_INVALID");
    put_of_a_manifest_is_unsupported: "PUT" "{name}/manifests/latest" => Error(NOT_ALLOWED, "UNSUPPORTED");
    blob_upload_is_unsupported: "POST" "{name}/blobs/uploads/" => Error(NOT_ALLOWED, "UNSUPPORTED");
    delete_of_a_manifest_is_unsupported: "DELETE" "{name}/manifests/{digest}" => Error(NOT_ALLOWED, "UNSUPPORTED");
    non_numeric_page_size_is_pagination_number_invalid: "GET" "{name}/tags/list?n=lots" => Error(BAD_REQUEST, "PAGINATION_NUMBER_INVALID");
    unconfigured_registry_prefix_is_name_unknown: "GET" "quay.io/org/img/manifests/latest" => Error(NOT_FOUND, "NAME_UNKNOWN");
    unconfigured_ns_parameter_is_name_unknown: "GET" "{name}/manifests/latest?ns=quay.io" => Error(NOT_FOUND, "NAME_UNKNOWN");

    // The messages of the spec-required 404 and of the refused push name the cause.
    spec_required_404_names_invalid_reference: "GET" "{name}/manifests/.INVALID_MANIFEST_NAME" => Cause("invalid_reference");
    refused_push_names_invalid_reference: "PUT" "{name}/manifests/sha256:1234" => Cause("invalid_reference");
    // Pushes name `unsupported_operation`; requests berth cannot serve as
    // asked (Range, pagination, unknown endpoints) name `invalid_request`.
    manifest_push_names_unsupported_operation: "PUT" "{name}/manifests/latest" => Cause("unsupported_operation");
    blob_upload_names_unsupported_operation: "POST" "{name}/blobs/uploads/" => Cause("unsupported_operation");
    unsatisfiable_range_names_invalid_request: "GET" "{name}/blobs/{layer}" range "bytes=99999999-" => Cause("invalid_request");
    bad_page_size_names_invalid_request: "GET" "{name}/tags/list?n=abc" => Cause("invalid_request");
    unknown_endpoint_names_invalid_request: "GET" "{name}/things/x" => Cause("invalid_request");
}

const INVALID_TAG: &str = "{name}/manifests/.INVALID_MANIFEST_NAME";

/// HEAD answers the same status as GET (a HEAD answer has no body).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn head_of_an_invalid_tag_answers_as_get_does() {
    let env = env().await;
    let path = INVALID_TAG.replace("{name}", &env.name());
    let r = env.send("HEAD", &path, None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_references_are_recorded_as_failures() {
    let env = env().await;
    let path = INVALID_TAG.replace("{name}", &env.name());
    for method in ["GET", "HEAD", "PUT"] {
        env.send(method, &path, None).await;
    }
    let failures: serde_json::Value = env
        .http
        .get(format!("{}/_berth/failures", env.berth.admin_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let invalid = failures["failures"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["reference"] == ".INVALID_MANIFEST_NAME" && f["cause"] == "invalid_reference")
        .count();
    assert!(invalid >= 3, "GET, HEAD and PUT recorded: {failures}");
}

/// Paths a URL library would normalise away are sent raw.
fn assert_raw_path_is_name_invalid(env: &Env, path: &str) {
    let (status, body) = raw_get(env.berth.addr, path);
    assert_eq!(status, 400, "{path}: {body}");
    assert!(body.contains("NAME_INVALID"), "{path}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dot_dot_component_is_name_invalid() {
    assert_raw_path_is_name_invalid(&env().await, "/v2/a/../b/manifests/latest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_escaped_dot_dot_component_is_name_invalid() {
    assert_raw_path_is_name_invalid(&env().await, "/v2/a/%2e%2e/b/manifests/latest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dot_component_is_name_invalid() {
    assert_raw_path_is_name_invalid(&env().await, "/v2/a/./b/manifests/latest");
}

/// Nothing invalid created anything outside the cache's blob tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_requests_store_nothing_but_verified_blobs() {
    let env = env().await;
    for refused in all_refused() {
        refused.send(&env).await;
    }
    let path = INVALID_TAG.replace("{name}", &env.name());
    env.send("HEAD", &path, None).await;
    for path in [
        "/v2/a/../b/manifests/latest",
        "/v2/a/%2e%2e/b/manifests/latest",
        "/v2/a/./b/manifests/latest",
    ] {
        raw_get(env.berth.addr, path);
    }
    let cached: Vec<_> = walk(&env.berth.cache_dir.join("blobs"));
    assert!(
        cached
            .iter()
            .all(|p| p.file_name().unwrap().to_str().unwrap().len() == 64),
        "{cached:?}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The head of the answer to `METHOD path` over HTTP/1.1, exactly as sent:
/// the status line with its reason phrase, then the headers.
fn raw_head(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to berth");
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    text.split_once("\r\n\r\n").map(|(h, _)| h.to_string()).unwrap_or(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelt_tag_is_manifest_unknown_naming_the_closest_tags_everywhere() {
    let env = env().await;
    let path = format!("/v2/{}/manifests/v2s3", env.name());
    let head = tokio::task::block_in_place(|| raw_head(env.berth.addr, "HEAD", &path));
    let status_line = head.lines().next().unwrap_or_default().to_string();
    assert!(
        status_line.starts_with("HTTP/1.1 404 Not Found (berth: manifest_unknown: ")
            && status_line.contains("did you mean v2s2?"),
        "{status_line}"
    );
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nberth-cause: manifest_unknown"), "{head}");
    assert!(lower.contains("did you mean v2s2?"), "{head}");
    let resp = env
        .http
        .get(env.url(&format!("{}/manifests/v2s3", env.name())))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_UNKNOWN");
    let hint = body["errors"][0]["detail"]["hint"].as_str().unwrap_or_default();
    assert!(hint.ends_with("did you mean v2s2?"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_the_upstream_does_not_have_is_name_unknown() {
    let env = env().await;
    let resp = env
        .http
        .get(env.url("library/no-such-repo/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["berth-cause"], "name_unknown");
    let (status, code, message) = error_code(resp).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code, "NAME_UNKNOWN", "{message}");
    assert!(message.contains("library/no-such-repo"), "{message}");
    let head =
        tokio::task::block_in_place(|| raw_head(env.berth.addr, "HEAD", "/v2/library/no-such-repo/manifests/latest"));
    assert!(
        head.starts_with("HTTP/1.1 404 Not Found (berth: name_unknown: "),
        "{head}"
    );
    let failures: serde_json::Value = env
        .http
        .get(format!("{}/_berth/failures", env.berth.admin_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(failures["failures"][0]["cause"], "name_unknown", "{failures}");
}
