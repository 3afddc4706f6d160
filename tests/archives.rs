//! `berth export` and `berth import`: images move to a site without a
//! network as registry content. Exported from berth A (warm, its upstream a
//! real Distribution), imported into berth B whose upstream is a closed
//! port, they pull from B by tag and by the origin's digest, with their
//! referrers; skopeo reads the archive itself (`oci-archive:FILE:REF`). Bad
//! archives are refused whole; classic `docker save` archives only with
//! `--docker-save`, after a warning, and with digests of berth's making.
//! The real-daemon test is `real_clients_*` (run it alone with that filter).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use support::images::{
    push_image_with_layers, push_manifest_with_subject, push_raw_manifest, push_tiny_image, random_bytes,
};
use support::registry::Registry;
use support::{Berth, UpstreamToml, client, sha256_hex, skopeo, stored_blobs};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";
const SPDX: &str = "application/spdx+json";
const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

fn berth(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .env("HTTP_PROXY", support::DEAD_PROXY)
        .env("NO_PROXY", support::NO_PROXY)
        .output()
        .expect("run berth");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A port nothing listens on: B's upstream, so B is cut off.
fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

/// B: a cache dir and a config whose docker.io upstream is unreachable.
struct Site {
    work: tempfile::TempDir,
    cache: PathBuf,
    config: PathBuf,
    upstream: String,
}

impl Site {
    fn new() -> Site {
        let work = tempfile::tempdir().expect("work");
        let cache = work.path().join("cache");
        let upstream = UpstreamToml::default_docker_io(&closed_port())
            .retry("10ms", "20ms")
            .set("attempts", 1)
            .to_toml();
        let config = work.path().join("site.toml");
        std::fs::write(&config, format!("cache_dir = \"{}\"\n{upstream}", cache.display())).expect("config");
        Site {
            work,
            cache,
            config,
            upstream,
        }
    }

    fn import(&self, archive: &Path, extra: &[&str]) -> (i32, String, String) {
        let config = self.config.display().to_string();
        let archive = archive.display().to_string();
        let mut args = vec!["import", "--config", &config];
        args.extend(extra);
        args.push(&archive);
        berth(&args)
    }

    fn serve(&self) -> Berth {
        Berth::start_in(self.work.path(), &self.cache, &self.upstream)
    }
}

async fn manifest_digest(base: &str, repo: &str, reference: &str) -> (u16, String) {
    let r = client()
        .get(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("accept", ACCEPT)
        .send()
        .await
        .expect("manifest request");
    let status = r.status().as_u16();
    let body = r.bytes().await.expect("body");
    (status, sha256_hex(&body))
}

async fn referrers(base: &str, repo: &str, digest: &str) -> Value {
    let r = client()
        .get(format!("{base}/v2/{repo}/referrers/{digest}"))
        .send()
        .await
        .expect("referrers request");
    assert_eq!(r.status(), 200, "referrers of {digest}");
    r.json().await.expect("referrers json")
}

fn digests_of(index: &Value) -> Vec<String> {
    let mut d: Vec<String> = index["manifests"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|d| d["digest"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    d.sort();
    d
}

/// A signature (cosign's tag) and an SBOM (oras' subject + fallback tag) of `image`.
fn sign(registry: &Registry, repo: &str, image: &str, size: usize) -> (String, String) {
    let hex = image.strip_prefix("sha256:").expect("sha256");
    let subject = json!({"mediaType": OCI_MANIFEST, "digest": image, "size": size});
    let sig = push_manifest_with_subject(
        registry,
        repo,
        &format!("sha256-{hex}.sig"),
        OCI_MANIFEST,
        None,
        (
            OCI_CONFIG,
            br#"{"architecture":"","os":"","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#,
        ),
        &[(
            SIMPLESIGNING,
            br#"{"critical":{"type":"cosign container image signature"}}"#,
        )],
        None,
        None,
    );
    let sbom = push_manifest_with_subject(
        registry,
        repo,
        "sbom-by-digest-first",
        OCI_MANIFEST,
        Some(SPDX),
        (EMPTY, b"{}"),
        &[(SPDX, br#"{"spdxVersion":"SPDX-2.3"}"#)],
        Some(subject),
        None,
    );
    let fallback = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": sbom.digest, "size": sbom.size, "artifactType": SPDX}],
    });
    push_raw_manifest(
        registry,
        repo,
        &format!("sha256-{hex}"),
        OCI_INDEX,
        &serde_json::to_vec(&fallback).expect("json"),
    );
    (sig.digest, sbom.digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exported_images_import_offline_with_the_origins_digests_tags_and_referrers() {
    let registry = Registry::start();
    let repo = "library/signed";
    let (signed, layered) = tokio::task::block_in_place(|| {
        let (image, _, _) = push_tiny_image(&registry, repo, "v1", true);
        let layers = [random_bytes(300 << 10, 7), random_bytes(100 << 10, 8)];
        let layered = push_image_with_layers(&registry, "site/app", "2.0", &[&layers[0], &layers[1]]);
        (image, layered)
    });
    let size = reqwest::Client::new()
        .get(format!("{}/v2/{repo}/manifests/{signed}", registry.url()))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("manifest")
        .bytes()
        .await
        .expect("bytes")
        .len();
    let (sig, sbom) = tokio::task::block_in_place(|| sign(&registry, repo, &signed, size));
    let a = Berth::start(&UpstreamToml::default_docker_io(&registry.url()).to_toml());
    let on_a = referrers(&a.url(), "signed", &signed).await;
    let mut want = vec![sig.clone(), sbom.clone()];
    want.sort();
    assert_eq!(digests_of(&on_a), want, "A lists the signature and the SBOM: {on_a}");

    // A running berth owns its cache: --config is refused, naming --url.
    let out = tempfile::tempdir().expect("out");
    let bundle = out.path().join("bundle.tar");
    let bundle_s = bundle.display().to_string();
    let (code, _, err) = tokio::task::block_in_place(|| {
        berth(&[
            "export",
            "--config",
            &a.config_path.display().to_string(),
            "-o",
            &bundle_s,
            "signed:v1",
        ])
    });
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--url"), "{err}");
    assert!(!bundle.exists(), "no archive from a refused export");

    let (code, summary, err) = tokio::task::block_in_place(|| {
        berth(&[
            "export",
            "--url",
            &a.admin_url(),
            "-o",
            &bundle_s,
            "signed:v1",
            "site/app:2.0",
        ])
    });
    assert_eq!(code, 0, "{summary}{err}");
    eprintln!(
        "$ berth export --url {} -o bundle.tar signed:v1 site/app:2.0\n{summary}",
        a.admin_url()
    );
    assert!(
        summary.contains("export: 2 images, 4 manifests (2 of them referrers), 9 blobs"),
        "{summary}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(out.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        leftovers,
        vec![std::ffi::OsString::from("bundle.tar")],
        "no temp file left"
    );

    // A failed export leaves nothing under the name, nor a temp file.
    let failed = out.path().join("failed.tar");
    let (code, _, err) = tokio::task::block_in_place(|| {
        let failed = failed.display().to_string();
        berth(&[
            "export",
            "--url",
            &a.admin_url(),
            "-o",
            &failed,
            "site/app:2.0",
            "signed:no-such-tag",
        ])
    });
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no-such-tag"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(out.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        leftovers,
        vec![std::ffi::OsString::from("bundle.tar")],
        "nothing from the failed export"
    );
    let cache_files = |dir: &Path| {
        std::fs::read_dir(dir)
            .expect("ls cache")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().contains("export-"))
            })
            .count()
    };
    assert_eq!(cache_files(&a.cache_dir), 0, "no export left in A's cache directory");

    // skopeo reads the archive by the ref name berth gives each image
    // (skopeo 1.9 looks only at OCI-typed descriptors: the OCI image here).
    let src = format!("oci-archive:{bundle_s}:docker.io/library/signed:v1");
    let raw = tokio::task::block_in_place(|| skopeo(&["inspect", "--raw", &src]).stdout);
    assert_eq!(sha256_hex(&raw), signed, "skopeo inspect {src}");
    let copied = out.path().join("copied");
    tokio::task::block_in_place(|| skopeo(&["copy", &src, &format!("dir:{}", copied.display())]));
    assert_eq!(
        sha256_hex(&std::fs::read(copied.join("manifest.json")).expect("manifest")),
        signed
    );

    // B, cut off from any upstream, stopped: import with --config.
    let site = Site::new();
    let (code, summary, err) = tokio::task::block_in_place(|| site.import(&bundle, &[]));
    assert_eq!(code, 0, "{summary}{err}");
    eprintln!("$ berth import --config site.toml bundle.tar\n{summary}");
    assert!(
        summary.contains("import: 2 images, 4 manifests (2 referrers), 13 blobs with the manifests: 13 new"),
        "{summary}"
    );
    assert!(summary.contains("0 already present"), "{summary}");
    let (code, again, err) = tokio::task::block_in_place(|| site.import(&bundle, &[]));
    assert_eq!(code, 0, "{err}");
    assert!(
        again.contains(": 0 new (0 B)"),
        "a second import stores nothing: {again}"
    );

    let b = site.serve();
    let (code, _, err) = tokio::task::block_in_place(|| site.import(&bundle, &[]));
    assert_eq!(code, 2, "a running berth owns B's cache: {err}");
    assert!(err.contains("berth import --url"), "{err}");
    for (name, tag, digest) in [("signed", "v1", &signed), ("site/app", "2.0", &layered.manifest)] {
        assert_eq!(
            manifest_digest(&b.url(), name, tag).await,
            (200, digest.clone()),
            "{name}:{tag} on B"
        );
        assert_eq!(
            manifest_digest(&b.url(), name, digest).await,
            (200, digest.clone()),
            "{name}@{digest} on B"
        );
    }
    let dest = out.path().join("pulled");
    tokio::task::block_in_place(|| {
        skopeo(&[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{}/site/app:2.0", b.host()),
            &format!("dir:{}", dest.display()),
        ])
    });
    let on_b = referrers(&b.url(), "signed", &signed).await;
    assert_eq!(digests_of(&on_b), want, "B lists them offline: {on_b}");
    assert_eq!(on_b, on_a, "the same referrers index");
    for d in [&sig, &sbom] {
        assert_eq!(
            manifest_digest(&b.url(), "signed", d).await,
            (200, d.clone()),
            "referrer {d} on B"
        );
    }

    // A running site berth takes the archive with --url.
    let site_two = Site::new();
    let running = site_two.serve();
    let (code, summary, err) =
        tokio::task::block_in_place(|| berth(&["import", "--url", &running.admin_url(), &bundle_s]));
    assert_eq!(code, 0, "{summary}{err}");
    assert!(summary.contains("import: 2 images"), "{summary}");
    assert_eq!(
        manifest_digest(&running.url(), "site/app", "2.0").await,
        (200, layered.manifest.clone())
    );
    assert_eq!(digests_of(&referrers(&running.url(), "signed", &signed).await), want);

    // --platform: the index travels as served, only that platform's manifest with it.
    let (amd, arm) = tokio::task::block_in_place(|| {
        (
            push_tiny_image(&registry, "site/multi", "amd", true).0,
            push_tiny_image(&registry, "site/multi", "arm", true).0,
        )
    });
    // Sizes from the registry below.
    let child = |digest: &str, arch: &str| json!({"mediaType": OCI_MANIFEST, "digest": digest, "platform": {"os": "linux", "architecture": arch}});
    let mut children = vec![child(&amd, "amd64"), child(&arm, "arm64")];
    for c in &mut children {
        let digest = c["digest"].as_str().expect("digest").to_string();
        let bytes = reqwest::Client::new()
            .get(format!("{}/v2/site/multi/manifests/{digest}", registry.url()))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("child")
            .bytes()
            .await
            .expect("bytes");
        c["size"] = json!(bytes.len());
    }
    let index =
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children})).expect("json");
    let index_digest =
        tokio::task::block_in_place(|| push_raw_manifest(&registry, "site/multi", "1", OCI_INDEX, &index));
    let arm_bundle = out.path().join("arm.tar").display().to_string();
    let (code, summary, err) = tokio::task::block_in_place(|| {
        berth(&[
            "export",
            "--url",
            &a.admin_url(),
            "--platform",
            "linux/arm64",
            "-o",
            &arm_bundle,
            "site/multi:1",
        ])
    });
    assert_eq!(code, 0, "{summary}{err}");
    assert!(
        summary.contains("export: 1 images, 2 manifests"),
        "the index and arm64's: {summary}"
    );
    let (code, summary, err) =
        tokio::task::block_in_place(|| berth(&["import", "--url", &running.admin_url(), &arm_bundle]));
    assert_eq!(code, 0, "{summary}{err}");
    assert_eq!(
        manifest_digest(&running.url(), "site/multi", "1").await,
        (200, index_digest)
    );
    assert_eq!(
        manifest_digest(&running.url(), "site/multi", &arm).await,
        (200, arm.clone())
    );
    assert_ne!(
        manifest_digest(&running.url(), "site/multi", &amd).await.0,
        200,
        "amd64 was not exported"
    );
}

/// One raw tar entry: the name is written as given (`..`, `/` and all),
/// which the `tar` crate's own builder would refuse.
fn entry(out: &mut Vec<u8>, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(kind);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        entry(&mut out, name, tar::EntryType::Regular, "", data);
    }
    out
}

fn end(mut tar: Vec<u8>) -> Vec<u8> {
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

fn blob(bytes: &[u8]) -> (String, String) {
    let digest = sha256_hex(bytes);
    let name = format!("blobs/sha256/{}", digest.strip_prefix("sha256:").expect("hex"));
    (digest, name)
}

/// A small valid berth archive of `bad/img:t`, as (name, bytes) files.
fn good_layout() -> Vec<(String, Vec<u8>)> {
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    let layer = random_bytes(40 << 10, 99);
    let (config_digest, config_name) = blob(&config);
    let (layer_digest, layer_name) = blob(&layer);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}],
    }))
    .expect("json");
    let (manifest_digest, manifest_name) = blob(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": manifest.len(), "annotations": {
            "org.opencontainers.image.ref.name": "docker.io/bad/img:t",
            "io.github.berth.upstream": "docker.io",
            "io.github.berth.repository": "bad/img",
            "io.github.berth.tag": "t",
        }}],
    }))
    .expect("json");
    vec![
        ("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        (config_name, config),
        (layer_name, layer),
        (manifest_name, manifest),
        ("index.json".into(), index),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_archives_are_refused_whole_and_write_nothing() {
    let site = Site::new();
    let good = good_layout();
    let layer_name = good[2].0.clone();
    let escaped = format!("escaped-by-berth-{}", std::process::id());
    let absolute = format!("/tmp/berth-absolute-{}", std::process::id());
    let with = |extra: &dyn Fn(&mut Vec<u8>)| {
        let mut t = tar_of(&good);
        extra(&mut t);
        end(t)
    };
    let mut cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "dotdot",
            with(&|t| entry(t, &format!("../../{escaped}"), tar::EntryType::Regular, "", b"x")),
            vec!["../../escaped-by-berth", "a path with `..`"],
        ),
        (
            "absolute",
            with(&|t| entry(t, &absolute, tar::EntryType::Regular, "", b"x")),
            vec![absolute.as_str(), "an absolute path"],
        ),
        (
            "symlink",
            with(&|t| entry(t, "blobs/sha256/evil", tar::EntryType::Symlink, "/etc/passwd", b"")),
            vec!["blobs/sha256/evil", "a symbolic link"],
        ),
        (
            "hardlink",
            with(&|t| entry(t, "blobs/sha256/hard", tar::EntryType::Link, "index.json", b"")),
            vec!["blobs/sha256/hard", "a hard link"],
        ),
        (
            "duplicate",
            with(&|t| entry(t, "index.json", tar::EntryType::Regular, "", b"{}")),
            vec!["\"index.json\"", "twice"],
        ),
        (
            "digest mismatch",
            {
                let mut files = good.clone();
                files[2].1[0] ^= 0xff;
                end(tar_of(&files))
            },
            vec![layer_name.as_str(), "digest mismatch"],
        ),
        (
            "oversized index.json",
            {
                let mut files = good.clone();
                files[4].1.resize(5 << 20, b' ');
                end(tar_of(&files))
            },
            vec!["\"index.json\"", "more than the 4194304"],
        ),
        (
            "missing blob",
            {
                let mut files = good.clone();
                files.remove(2);
                end(tar_of(&files))
            },
            vec!["references blob", "missing blob"],
        ),
    ];
    let whole = end(tar_of(&good));
    // Cut inside the layer's bytes, and at an entry boundary (no end marker).
    let layer_at = tar_of(&good[..2]).len() + 512;
    cases.push((
        "truncated in a file",
        whole[..layer_at + 1000].to_vec(),
        vec![layer_name.as_str(), "truncated"],
    ));
    cases.push(("truncated between entries", tar_of(&good), vec!["truncated"]));

    let dir = tempfile::tempdir().expect("archives");
    for (what, bytes, said) in &cases {
        let path = dir.path().join(format!("{}.tar", what.replace(' ', "-")));
        std::fs::write(&path, bytes).expect("write archive");
        let (code, out, err) = tokio::task::block_in_place(|| site.import(&path, &[]));
        assert_eq!(code, 1, "{what}: {out}{err}");
        for s in said {
            assert!(err.contains(s), "{what}: stderr names {s:?}: {err}");
        }
        assert_eq!(
            stored_blobs(&site.cache),
            Vec::<PathBuf>::new(),
            "{what}: no blob stored"
        );
    }
    for outside in [
        site.cache.join("../..").join(&escaped),
        site.work.path().join(&escaped),
        std::env::current_dir().expect("cwd").join("../..").join(&escaped),
        PathBuf::from(&absolute),
    ] {
        assert!(!outside.exists(), "nothing written at {}", outside.display());
    }
    {
        let b = site.serve();
        assert_ne!(
            manifest_digest(&b.url(), "bad/img", "t").await.0,
            200,
            "no tag from a bad archive"
        );
    }
    // The same archive whole imports: each case failed for its defect alone.
    let path = dir.path().join("good.tar");
    std::fs::write(&path, &whole).expect("write archive");
    // --upstream must name a configured upstream.
    let (code, out, err) = tokio::task::block_in_place(|| site.import(&path, &["--upstream", "quay.io"]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("\"quay.io\" is not configured (configured: docker.io)"),
        "{err}"
    );
    assert_eq!(stored_blobs(&site.cache), Vec::<PathBuf>::new());
    let (code, out, err) = tokio::task::block_in_place(|| site.import(&path, &["--upstream", "docker.io"]));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(stored_blobs(&site.cache).len(), 3, "config, layer, manifest");
}

/// A classic `docker save` archive: manifest.json, the config json, a layer tar.
fn docker_save_archive() -> (Vec<u8>, Vec<u8>) {
    let mut layer = Vec::new();
    entry(
        &mut layer,
        "hello.txt",
        tar::EntryType::Regular,
        "",
        b"hello from a docker save\n",
    );
    let layer = end(layer);
    let config = br#"{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#.to_vec();
    let manifest = serde_json::to_vec(&json!([{
        "Config": "0123abcd.json",
        "RepoTags": ["saved/app:1"],
        "Layers": ["4567/layer.tar"],
    }]))
    .expect("json");
    let files = vec![
        ("0123abcd.json".to_string(), config),
        ("4567/layer.tar".to_string(), layer.clone()),
        ("4567/VERSION".to_string(), b"1.0".to_vec()),
        ("manifest.json".to_string(), manifest),
        ("repositories".to_string(), br#"{"saved/app":{"1":"4567"}}"#.to_vec()),
    ];
    (end(tar_of(&files)), layer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_save_archives_need_the_flag_warn_first_and_pull_by_tag_with_berths_digest() {
    let site = Site::new();
    let dir = tempfile::tempdir().expect("dir");
    let (archive, layer) = docker_save_archive();
    let path = dir.path().join("saved.tar");
    std::fs::write(&path, &archive).expect("write");

    let (code, out, err) = tokio::task::block_in_place(|| site.import(&path, &[]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("docker save") && err.contains("--docker-save"), "{err}");
    assert!(err.contains("digests differ from the origin's"), "{err}");
    assert_eq!(stored_blobs(&site.cache), Vec::<PathBuf>::new());

    let (code, out, err) = tokio::task::block_in_place(|| site.import(&path, &["--docker-save"]));
    assert_eq!(code, 0, "{out}{err}");
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.contains("warning") && first.contains("digests will differ"),
        "the warning comes first: {err}"
    );
    assert!(
        out.contains("docker.io/saved/app:1@sha256:") && out.contains("digest made by berth"),
        "{out}"
    );

    let b = site.serve();
    let pulled = dir.path().join("pulled");
    tokio::task::block_in_place(|| {
        skopeo(&[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{}/saved/app:1", b.host()),
            &format!("dir:{}", pulled.display()),
        ])
    });
    let manifest = std::fs::read(pulled.join("manifest.json")).expect("manifest");
    let (status, digest) = manifest_digest(&b.url(), "saved/app", "1").await;
    assert_eq!((status, digest.clone()), (200, sha256_hex(&manifest)));
    assert!(out.contains(&digest), "the digest berth made is the one served: {out}");
    let m: Value = serde_json::from_slice(&manifest).expect("json");
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar"
    );
    assert_eq!(m["layers"][0]["digest"], sha256_hex(&layer), "the layer tar as it was");
}

/// The real clients at the site: dockerd (registry mirror) and containerd
/// (`ctr --hosts-dir`) pull exported images from an offline berth by tag
/// and by the origin's digest. Exported here with `--config` from A's
/// stopped cache (A warms it from the upstream on the way).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_clients_dockerd_and_containerd_pull_imported_images_by_tag_and_origin_digest() {
    let registry = Registry::start();
    let fixtures = tokio::task::block_in_place(|| support::images::seed(&registry));
    let images = [&fixtures.v2s2, &fixtures.oci, &fixtures.index];
    let work = tempfile::tempdir().expect("work");
    let a_config = work.path().join("a.toml");
    std::fs::write(
        &a_config,
        format!(
            "cache_dir = \"{}\"\n{}",
            work.path().join("a-cache").display(),
            UpstreamToml::default_docker_io(&registry.url())
        ),
    )
    .expect("config");
    let bundle = work.path().join("bundle.tar");
    let names: Vec<String> = images.iter().map(|i| format!("{}:{}", i.repo, i.tag)).collect();
    let mut args = vec![
        "export".to_string(),
        "--config".into(),
        a_config.display().to_string(),
        "-o".into(),
        bundle.display().to_string(),
    ];
    args.extend(names.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = tokio::task::block_in_place(|| berth(&args));
    assert_eq!(code, 0, "{out}{err}");
    eprintln!(
        "$ berth export --config a.toml -o bundle.tar {}\n{out}",
        names.join(" ")
    );

    let site = Site::new();
    let (code, out, err) = tokio::task::block_in_place(|| site.import(&bundle, &[]));
    assert_eq!(code, 0, "{out}{err}");
    eprintln!("$ berth import --config site.toml bundle.tar   # upstream: a closed port\n{out}");
    let b = site.serve();

    let dockerd = tokio::task::block_in_place(|| support::daemons::Dockerd::start(&b.host()));
    for image in images {
        let name = support::client_name(&image.repo);
        // By the origin's digest first, while dockerd has nothing of it.
        for reference in [format!("{name}@{}", image.digest), format!("{name}:{}", image.tag)] {
            let pulled = tokio::task::block_in_place(|| dockerd.docker(&["pull", &reference]));
            eprintln!("$ docker pull {reference}\n{pulled}");
            let digests = tokio::task::block_in_place(|| dockerd.repo_digests(&reference));
            let want = format!("{name}@{}", image.digest);
            assert!(
                digests.contains(&want),
                "{reference}: RepoDigests {digests:?} lack {want}"
            );
        }
    }
    drop(dockerd);

    let containerd = tokio::task::block_in_place(support::daemons::Containerd::start);
    let hosts = containerd.hosts_dir("containerd", &b.host());
    let hosts = hosts.to_str().expect("utf-8");
    for image in images {
        for reference in [
            format!("docker.io/{}@{}", image.repo, image.digest),
            format!("docker.io/{}:{}", image.repo, image.tag),
        ] {
            tokio::task::block_in_place(|| {
                containerd.ctr(&[
                    "images",
                    "pull",
                    "--hosts-dir",
                    hosts,
                    "--snapshotter",
                    "native",
                    "--platform",
                    "linux/amd64",
                    &reference,
                ])
            });
            let got = tokio::task::block_in_place(|| containerd.image_digest(&reference));
            assert_eq!(got, image.digest, "ctr pull {reference}");
        }
    }
}
