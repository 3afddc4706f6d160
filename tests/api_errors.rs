//! The read API against a real upstream: headers, Range, pagination, and the
//! spec status and error code for every kind of bad request.

mod support;

use reqwest::StatusCode;
use support::images::seed;
use support::registry::Registry;
use support::{Berth, client_name, raw_get, sha256_hex};

fn berth_for(registry: &Registry) -> Berth {
    Berth::start(&format!(
        "[[upstream]]\nname = \"docker.io\"\nendpoints = [\"{}\"]\ndefault = true\n",
        registry.url()
    ))
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

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spec_errors_headers_ranges_and_tags() {
    let registry = Registry::start();
    let fixtures = tokio::task::block_in_place(|| seed(&registry));
    let berth = berth_for(&registry);
    let http = client();
    let url = |p: &str| format!("{}/v2/{p}", berth.url());

    // Base endpoint and its version header.
    let r = http.get(url("")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["docker-distribution-api-version"], "registry/2.0");

    // Manifest headers, by tag, with Accept spread over several lines.
    let oci = &fixtures.oci;
    let name = client_name(&oci.repo);
    let r = http
        .get(url(&format!("{name}/manifests/{}", oci.tag)))
        .header("accept", "application/vnd.docker.distribution.manifest.v2+json")
        .header("accept", "application/vnd.docker.distribution.manifest.list.v2+json")
        .header(
            "accept",
            "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["docker-content-digest"], oci.digest.as_str());
    assert_eq!(r.headers()["content-type"], oci.media_type.as_str());
    let len: usize = r.headers()["content-length"].to_str().unwrap().parse().unwrap();
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), len);
    assert_eq!(sha256_hex(&body), oci.digest);

    // HEAD agrees with GET, by digest.
    let r = http
        .head(url(&format!("{name}/manifests/{}", oci.digest)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["docker-content-digest"], oci.digest.as_str());
    assert_eq!(r.headers()["content-length"], len.to_string().as_str());

    // A client that accepts none of the types berth could serve.
    let r = http
        .get(url(&format!("{name}/manifests/{}", oci.tag)))
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

    // A Range on a cold blob answers 206 with the right bytes.
    let layer = oci.blobs.last().expect("a layer");
    let blob_url = url(&format!("{name}/blobs/{layer}"));
    let r = http.get(&blob_url).header("range", "bytes=10-19").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    let content_range = r.headers()["content-range"].to_str().unwrap().to_string();
    assert!(content_range.starts_with("bytes 10-19/"), "{content_range}");
    let part = r.bytes().await.unwrap();
    let whole = http.get(&blob_url).send().await.unwrap();
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(whole.headers()["docker-content-digest"], layer.as_str());
    let whole = whole.bytes().await.unwrap();
    assert_eq!(sha256_hex(&whole), *layer);
    assert_eq!(&part[..], &whole[10..20]);
    assert_eq!(content_range, format!("bytes 10-19/{}", whole.len()));
    // Warm: a suffix range.
    let r = http.get(&blob_url).header("range", "bytes=-5").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.bytes().await.unwrap()[..], &whole[whole.len() - 5..]);
    // HEAD of a blob.
    let r = http.head(&blob_url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], whole.len().to_string().as_str());

    // Tags with pagination.
    let r = http.get(url(&format!("{name}/tags/list?n=1"))).send().await.unwrap();
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

    // Errors: (path, method, range, status, code).
    let missing_digest = format!("sha256:{}", "0".repeat(64));
    let cases: Vec<(String, &str, Option<&str>, StatusCode, &str)> = vec![
        (
            format!("{name}/manifests/no-such-tag"),
            "GET",
            None,
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        ),
        (
            "no-such-repo/tags/list".into(),
            "GET",
            None,
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
        ),
        (
            "no-such-repo/manifests/latest".into(),
            "GET",
            None,
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("{name}/blobs/{missing_digest}"),
            "GET",
            None,
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
        ),
        (
            format!("{name}/manifests/sha256:1234"),
            "GET",
            None,
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            format!("{name}/blobs/sha256:XYZ"),
            "GET",
            None,
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            format!("{name}/blobs/md5:{}", "0".repeat(32)),
            "GET",
            None,
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            "BusyBox/manifests/latest".into(),
            "GET",
            None,
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            "a//b/manifests/latest".into(),
            "GET",
            None,
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        // A tag that cannot exist names no manifest (OCI conformance).
        (
            format!("{name}/manifests/-bad-tag"),
            "GET",
            None,
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("{name}/manifests/.INVALID_MANIFEST_NAME"),
            "GET",
            None,
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        ),
        // A push is refused only after its reference was parsed.
        (
            format!("{name}/manifests/sha256:1234"),
            "PUT",
            None,
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            format!("{name}/manifests/sha256:1234"),
            "DELETE",
            None,
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            format!("{name}/blobs/sha256:XYZ"),
            "DELETE",
            None,
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            format!("{name}/manifests/.INVALID_MANIFEST_NAME"),
            "PUT",
            None,
            StatusCode::BAD_REQUEST,
            "TAG_INVALID",
        ),
        (
            "BusyBox/manifests/latest".into(),
            "PUT",
            None,
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            "BusyBox/blobs/uploads/".into(),
            "POST",
            None,
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            format!("{name}/blobs/{layer}"),
            "DELETE",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
        (
            format!("{name}/blobs/{layer}"),
            "GET",
            Some("bytes=99999999-"),
            StatusCode::RANGE_NOT_SATISFIABLE,
            "RANGE_INVALID",
        ),
        (
            format!("{name}/blobs/{layer}"),
            "GET",
            Some("bytes=0-1,5-6"),
            StatusCode::RANGE_NOT_SATISFIABLE,
            "RANGE_INVALID",
        ),
        (
            format!("{name}/manifests/latest"),
            "PUT",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
        (
            format!("{name}/blobs/uploads/"),
            "POST",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
        (
            format!("{name}/manifests/{}", oci.digest),
            "DELETE",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
        (
            format!("{name}/tags/list?n=lots"),
            "GET",
            None,
            StatusCode::BAD_REQUEST,
            "PAGINATION_NUMBER_INVALID",
        ),
        (
            "quay.io/org/img/manifests/latest".into(),
            "GET",
            None,
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
        ),
        (
            format!("{name}/manifests/latest?ns=quay.io"),
            "GET",
            None,
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
        ),
    ];
    for (path, method, range, want_status, want_code) in cases {
        let mut req = http.request(method.parse().unwrap(), url(&path));
        if let Some(range) = range {
            req = req.header("range", range);
        }
        let (status, code, message) = error_code(req.send().await.unwrap()).await;
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

    // The messages of the spec-required 404 and of the refused push name the cause.
    for (path, method) in [
        (format!("{name}/manifests/.INVALID_MANIFEST_NAME"), "GET"),
        (format!("{name}/manifests/sha256:1234"), "PUT"),
    ] {
        let r = http.request(method.parse().unwrap(), url(&path)).send().await.unwrap();
        let (_, _, message) = error_code(r).await;
        assert!(
            message.contains("(cause=invalid_reference)"),
            "{method} {path}: {message}"
        );
    }
    // Pushes name `unsupported_operation`; requests berth cannot serve as
    // asked (Range, pagination, unknown endpoints) name `invalid_request`.
    for (path, method, range, cause) in [
        (format!("{name}/manifests/latest"), "PUT", None, "unsupported_operation"),
        (format!("{name}/blobs/uploads/"), "POST", None, "unsupported_operation"),
        (
            format!("{name}/blobs/{layer}"),
            "GET",
            Some("bytes=99999999-"),
            "invalid_request",
        ),
        (format!("{name}/tags/list?n=abc"), "GET", None, "invalid_request"),
        (format!("{name}/things/x"), "GET", None, "invalid_request"),
    ] {
        let mut rq = http.request(method.parse().unwrap(), url(&path));
        if let Some(range) = range {
            rq = rq.header("range", range);
        }
        let (_, _, message) = error_code(rq.send().await.unwrap()).await;
        assert!(
            message.contains(&format!("(cause={cause})")),
            "{method} {path}: {message}"
        );
    }
    // HEAD answers the same status as GET (a HEAD answer has no body).
    let r = http
        .head(url(&format!("{name}/manifests/.INVALID_MANIFEST_NAME")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let failures: serde_json::Value = http
        .get(format!("{}/_berth/failures", berth.url()))
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

    // Paths a URL library would normalise away are sent raw.
    for path in [
        "/v2/a/../b/manifests/latest",
        "/v2/a/%2e%2e/b/manifests/latest",
        "/v2/a/./b/manifests/latest",
    ] {
        let (status, body) = raw_get(berth.addr, path);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("NAME_INVALID"), "{path}: {body}");
    }

    // Nothing invalid created anything outside the cache's blob tree.
    let cached: Vec<_> = walk(&berth.cache_dir.join("blobs"));
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
