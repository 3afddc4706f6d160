//! Test images built locally (there is no internet): a rootfs from Debian's
//! `busybox-static`, written as an OCI image layout by hand, then pushed to the
//! real upstream with skopeo. What the upstream then holds (digests, media
//! types) is read back from it, so tests compare against the upstream's truth.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use super::registry::Registry;
use super::{sha256_hex, skopeo, skopeo_try};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// One image as the upstream holds it.
#[derive(Debug, Clone)]
pub struct Image {
    /// The upstream repository, e.g. `library/busybox`.
    pub repo: String,
    pub tag: String,
    /// sha256 of the manifest bytes the upstream serves for the tag.
    pub digest: String,
    pub media_type: String,
    /// Config and layer digests (empty for an index).
    pub blobs: Vec<String>,
    /// Child manifest digests (an index only).
    pub children: Vec<String>,
}

pub struct Fixtures {
    pub v2s2: Image,
    pub oci: Image,
    pub index: Image,
    pub layers: Image,
    pub nested: Image,
}

impl Fixtures {
    pub fn all(&self) -> Vec<&Image> {
        vec![&self.v2s2, &self.oci, &self.index, &self.layers, &self.nested]
    }
}

/// Build the fixture images and push them to `registry`.
pub fn seed(registry: &Registry) -> Fixtures {
    let work = tempfile::tempdir().expect("image work dir");
    let layout = Layout::new(work.path().join("layout"));
    let base = layer(work.path(), "busybox", true, 0);

    let one = layout.image("amd64", &[&base], "one");
    layout.tag(&one, "one");
    let five_layers: Vec<Layer> = (1..=4)
        .map(|i| layer(work.path(), &format!("extra{i}"), false, i))
        .collect();
    let mut refs = vec![&base];
    refs.extend(five_layers.iter());
    let five = layout.image("amd64", &refs, "five");
    layout.tag(&five, "five");
    let nested = layout.image("amd64", &[&base, &layer(work.path(), "nested", false, 9)], "nested");
    layout.tag(&nested, "nested");
    let amd = layout.image("amd64", &[&base, &layer(work.path(), "amd64", false, 10)], "amd64");
    let arm = layout.image("arm64", &[&base, &layer(work.path(), "arm64", false, 11)], "arm64");
    let index = layout.index(&[(&amd, "amd64"), (&arm, "arm64")]);
    layout.tag(&index, "index");
    layout.write_index();

    let push = |src_tag: &str, repo: &str, tag: &str, format: Option<&str>| {
        push_from_layout(registry, &layout, src_tag, repo, tag, format)
    };
    Fixtures {
        v2s2: push("one", "library/busybox", "v2s2", Some("v2s2")),
        oci: push("one", "library/busybox", "oci", Some("oci")),
        layers: push("five", "library/layers", "five", None),
        nested: push("nested", "a/b/c", "nested", None),
        index: push("index", "library/multi", "index", None),
    }
}

/// Copy `src_tag` of an OCI layout to `repo:tag` with skopeo (`--all` for
/// the index), optionally in another manifest `format`; what the upstream
/// then serves.
fn push_from_layout(
    registry: &Registry,
    layout: &Layout,
    src_tag: &str,
    repo: &str,
    tag: &str,
    format: Option<&str>,
) -> Image {
    let src = format!("oci:{}:{src_tag}", layout.dir.display());
    let dest = format!("docker://{}/{repo}:{tag}", registry.host());
    let mut args = vec!["copy", "--dest-tls-verify=false"];
    if let Some(f) = format {
        args.extend(["--format", f]);
    }
    if src_tag == "index" {
        args.push("--all");
    }
    args.extend([src.as_str(), dest.as_str()]);
    skopeo(&args);
    read_back(registry, repo, tag)
}

/// What the upstream serves for `repo:tag`, read with skopeo.
fn read_back(registry: &Registry, repo: &str, tag: &str) -> Image {
    let sep = if tag.starts_with("sha256:") { '@' } else { ':' };
    let src = format!("docker://{}/{repo}{sep}{tag}", registry.host());
    let out = skopeo_try(&["inspect", "--raw", "--tls-verify=false", &src]);
    assert!(
        out.status.success(),
        "read back {src}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = out.stdout;
    let m: Value = serde_json::from_slice(&raw).expect("manifest JSON");
    let digests = |key: &str| -> Vec<String> {
        m[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d["digest"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut blobs = Vec::new();
    if let Some(c) = m["config"]["digest"].as_str() {
        blobs.push(c.to_string());
    }
    blobs.extend(digests("layers"));
    Image {
        repo: repo.into(),
        tag: tag.into(),
        digest: sha256_hex(&raw),
        media_type: m["mediaType"].as_str().unwrap_or_default().to_string(),
        blobs,
        children: digests("manifests"),
    }
}

pub struct Layer {
    gz: Vec<u8>,
    diff_id: String,
}

/// A gzip layer: the busybox rootfs (`with_busybox`) or a few KiB of
/// deterministic data, plus a file naming the layer so every layer differs.
fn layer(work: &Path, label: &str, with_busybox: bool, seed: u32) -> Layer {
    let data: Vec<u8> = (0..32 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8)
        .collect();
    layer_with_data(work, label, with_busybox, &data)
}

fn layer_with_data(work: &Path, label: &str, with_busybox: bool, data: &[u8]) -> Layer {
    let root = work.join(format!("rootfs-{label}"));
    std::fs::create_dir_all(root.join("etc")).expect("rootfs dir");
    if with_busybox {
        std::fs::create_dir_all(root.join("bin")).expect("bin dir");
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))
            .expect("copy /bin/busybox (apt-get install busybox-static)");
        for applet in ["sh", "ls", "cat", "echo"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("applet link");
        }
    }
    std::fs::write(root.join("etc/berth-layer"), label).expect("label file");
    std::fs::write(root.join(format!("etc/data-{label}")), data).expect("data file");
    let tar = work.join(format!("{label}.tar"));
    run(Command::new("tar")
        .args([
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-C",
        ])
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    let raw = std::fs::read(&tar).expect("read tar");
    run(Command::new("gzip").args(["-n", "-f"]).arg(&tar));
    let gz = std::fs::read(work.join(format!("{label}.tar.gz"))).expect("read tar.gz");
    Layer {
        gz,
        diff_id: sha256_hex(&raw),
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A descriptor written into the layout.
#[derive(Clone)]
pub struct Desc {
    media_type: &'static str,
    digest: String,
    size: usize,
}

struct Layout {
    dir: PathBuf,
    refs: std::cell::RefCell<Vec<Value>>,
}

impl Layout {
    fn new(dir: PathBuf) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).expect("layout dir");
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
        Layout {
            dir,
            refs: Default::default(),
        }
    }

    fn blob(&self, media_type: &'static str, bytes: &[u8]) -> Desc {
        let digest = sha256_hex(bytes);
        std::fs::write(self.dir.join("blobs/sha256").join(&digest[7..]), bytes).expect("write blob");
        Desc {
            media_type,
            digest,
            size: bytes.len(),
        }
    }

    fn image(&self, arch: &str, layers: &[&Layer], name: &str) -> Desc {
        let config = json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"], "Labels": {"berth.test": name}},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
            "history": layers.iter().map(|_| json!({"created_by": "berth test fixture"})).collect::<Vec<_>>(),
        });
        let config = self.blob(
            "application/vnd.oci.image.config.v1+json",
            &serde_json::to_vec(&config).expect("config json"),
        );
        let layer_descs: Vec<Value> = layers
            .iter()
            .map(|l| {
                let d = self.blob("application/vnd.oci.image.layer.v1.tar+gzip", &l.gz);
                json!({"mediaType": d.media_type, "digest": d.digest, "size": d.size})
            })
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.size},
            "layers": layer_descs,
        });
        self.blob(OCI_MANIFEST, &serde_json::to_vec(&manifest).expect("manifest json"))
    }

    fn index(&self, children: &[(&Desc, &str)]) -> Desc {
        let manifests: Vec<Value> = children
            .iter()
            .map(|(d, arch)| {
                json!({"mediaType": d.media_type, "digest": d.digest, "size": d.size,
                       "platform": {"architecture": arch, "os": "linux"}})
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
        self.blob(OCI_INDEX, &serde_json::to_vec(&index).expect("index json"))
    }

    fn tag(&self, d: &Desc, tag: &str) {
        self.refs.borrow_mut().push(json!({
            "mediaType": d.media_type, "digest": d.digest, "size": d.size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
    }

    fn write_index(&self) {
        let index = json!({"schemaVersion": 2, "manifests": *self.refs.borrow()});
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).expect("index.json"),
        )
        .expect("write index.json");
    }
}

/// Images for the conversion tests.
pub struct ConversionFixtures {
    /// OCI index: linux/amd64, linux/arm64 and a buildx-style attestation.
    pub attested: Image,
    /// The two image children of `attested` (amd64, arm64), in order.
    pub attested_children: Vec<Image>,
    /// OCI image whose layer is zstd-compressed.
    pub zstd: Image,
    /// OCI manifest with a non-image config: an artifact.
    pub artifact: Image,
}

/// Seed the conversion fixtures. The attestation index and the artifact are
/// pushed through the registry API with curl (skopeo rewrites or refuses
/// such content); the zstd image with skopeo.
pub fn seed_conversion(registry: &Registry) -> ConversionFixtures {
    let work = tempfile::tempdir().expect("image work dir");
    let layout = Layout::new(work.path().join("layout"));
    let base = layer(work.path(), "busybox", true, 0);
    let amd = layout.image("amd64", &[&base, &layer(work.path(), "c-amd64", false, 20)], "c-amd64");
    let arm = layout.image("arm64", &[&base, &layer(work.path(), "c-arm64", false, 21)], "c-arm64");
    layout.tag(&amd, "amd");
    layout.write_index();

    // zstd: skopeo recompresses the layer on the way to the registry.
    let zstd_src = format!("oci:{}:amd", layout.dir.display());
    let zstd_dest = format!("docker://{}/library/zstd:zstd", registry.host());
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--format",
        "oci",
        "--dest-compress-format",
        "zstd",
        &zstd_src,
        &zstd_dest,
    ]);
    let zstd = read_back(registry, "library/zstd", "zstd");

    // Children of the attested index, then the attestation, then the index.
    let repo = "library/attested";
    for d in [&amd, &arm] {
        push_manifest_tree(registry, &layout, repo, d);
    }
    let statement = layout.blob(
        "application/vnd.in-toto+json",
        br#"{"_type":"https://in-toto.io/Statement/v0.1"}"#,
    );
    let att_config = layout.blob(
        "application/vnd.oci.image.config.v1+json",
        br#"{"architecture":"unknown","os":"unknown","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#,
    );
    let att_manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": att_config.media_type, "digest": att_config.digest, "size": att_config.size},
        "layers": [{"mediaType": statement.media_type, "digest": statement.digest, "size": statement.size,
                    "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"}}],
    });
    let att = layout.blob(
        OCI_MANIFEST,
        &serde_json::to_vec(&att_manifest).expect("attestation json"),
    );
    push_manifest_tree(registry, &layout, repo, &att);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": amd.digest, "size": amd.size, "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": arm.digest, "size": arm.size, "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            {"mediaType": OCI_MANIFEST, "digest": att.digest, "size": att.size, "platform": {"architecture": "unknown", "os": "unknown"},
             "annotations": {"vnd.docker.reference.digest": amd.digest, "vnd.docker.reference.type": "attestation-manifest"}},
        ],
    });
    let index = serde_json::to_vec(&index).expect("index json");
    put_manifest(registry, repo, "attested", OCI_INDEX, &index);
    let attested = read_back(registry, repo, "attested");
    let attested_children = [&amd, &arm]
        .iter()
        .map(|d| {
            let mut i = read_back(registry, repo, &d.digest);
            i.tag = d.digest.clone();
            i
        })
        .collect();

    // An artifact: a manifest whose config is not an image config.
    let art_config = layout.blob("application/vnd.example.thing.config.v1+json", br#"{"thing":true}"#);
    let art_layer = layout.blob("application/vnd.example.thing.layer.v1+json", br#"{"payload":1}"#);
    let artifact = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": art_config.media_type, "digest": art_config.digest, "size": art_config.size},
        "layers": [{"mediaType": art_layer.media_type, "digest": art_layer.digest, "size": art_layer.size}],
    });
    for d in [&art_config, &art_layer] {
        push_blob(registry, "library/artifact", &layout, d);
    }
    put_manifest(
        registry,
        "library/artifact",
        "thing",
        OCI_MANIFEST,
        &serde_json::to_vec(&artifact).expect("artifact json"),
    );
    let artifact = read_back(registry, "library/artifact", "thing");

    ConversionFixtures {
        attested,
        attested_children,
        zstd,
        artifact,
    }
}

/// Push a manifest's config and layers, then the manifest (by digest).
fn push_manifest_tree(registry: &Registry, layout: &Layout, repo: &str, manifest: &Desc) {
    let bytes = std::fs::read(layout.dir.join("blobs/sha256").join(&manifest.digest[7..])).expect("read manifest");
    let m: Value = serde_json::from_slice(&bytes).expect("manifest json");
    let mut blobs = vec![m["config"].clone()];
    blobs.extend(m["layers"].as_array().cloned().unwrap_or_default());
    for b in blobs {
        let digest = b["digest"].as_str().expect("digest").to_string();
        let d = Desc {
            media_type: "application/octet-stream",
            digest,
            size: 0,
        };
        push_blob(registry, repo, layout, &d);
    }
    put_manifest(registry, repo, &manifest.digest, manifest.media_type, &bytes);
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--noproxy", "*", "-H", "Expect:", "-D", "-", "-o", "/dev/null"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `size` bytes of deterministic pseudo-random (incompressible) content.
pub fn random_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..size)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

/// An image of `layers` gzip layers, each holding `layer_bytes` of random
/// data, pushed with skopeo to `repo:tag` as Docker schema2 (the load
/// benchmark's many-layer image).
pub fn push_layered_image(
    registry: &Registry,
    repo: &str,
    tag: &str,
    layers: usize,
    layer_bytes: usize,
    seed: u64,
) -> Image {
    let work = tempfile::tempdir().expect("image work dir");
    let layout = Layout::new(work.path().join("layout"));
    let built: Vec<Layer> = (0..layers)
        .map(|i| {
            let data = random_bytes(layer_bytes, seed.wrapping_mul(1000).wrapping_add(i as u64));
            layer_with_data(work.path(), &format!("{tag}-{i}"), false, &data)
        })
        .collect();
    let image = layout.image("amd64", &built.iter().collect::<Vec<_>>(), tag);
    layout.tag(&image, tag);
    layout.write_index();
    push_from_layout(registry, &layout, tag, repo, tag, Some("v2s2"))
}

/// Push `size` bytes of deterministic pseudo-random content as a blob of
/// `repo`; returns (digest, content).
pub fn push_random_blob(registry: &Registry, repo: &str, size: usize, seed: u64) -> (String, Vec<u8>) {
    let content = random_bytes(size, seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = Layout::new(dir.path().to_path_buf());
    let d = layout.blob("application/octet-stream", &content);
    push_blob(registry, repo, &layout, &d);
    (d.digest, content)
}

/// Monolithic blob upload: POST to start, PUT with the digest to finish.
fn push_blob(registry: &Registry, repo: &str, layout: &Layout, d: &Desc) {
    let headers = curl(&["-X", "POST", &format!("{}/v2/{repo}/blobs/uploads/", registry.url())]);
    let location = headers
        .lines()
        .find_map(|l| l.strip_prefix("Location: ").or_else(|| l.strip_prefix("location: ")))
        .expect("upload Location header")
        .trim()
        .to_string();
    let location = if location.starts_with('/') {
        format!("{}{location}", registry.url())
    } else {
        location
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let file = layout.dir.join("blobs/sha256").join(&d.digest[7..]);
    let headers = curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("{location}{sep}digest={}", d.digest),
    ]);
    assert!(
        headers.starts_with("HTTP/1.1 201"),
        "blob upload of {}: {headers}",
        d.digest
    );
}

fn put_manifest(registry: &Registry, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("manifest.json");
    std::fs::write(&file, bytes).expect("write manifest");
    let headers = curl(&[
        "-X",
        "PUT",
        "-H",
        &format!("Content-Type: {media_type}"),
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("{}/v2/{repo}/manifests/{reference}", registry.url()),
    ]);
    assert!(
        headers.starts_with("HTTP/1.1 201"),
        "manifest PUT {repo}:{reference}: {headers}"
    );
}

/// A one-layer image pushed straight to `repo:tag` (faster than `seed`):
/// returns (manifest digest, config digest, layer digest). `oci` picks the
/// OCI media types, otherwise Docker schema2.
pub fn push_tiny_image(registry: &Registry, repo: &str, tag: &str, oci: bool) -> (String, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = Layout::new(dir.path().to_path_buf());
    let config_bytes = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "config": {}
    }))
    .expect("config json");
    let (config_type, layer_type, manifest_type) = if oci {
        (
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.manifest.v1+json",
        )
    } else {
        (
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
    };
    let config = layout.blob(config_type, &config_bytes);
    let layer = layout.blob(layer_type, format!("layer of {repo}:{tag}").as_bytes());
    push_blob(registry, repo, &layout, &config);
    push_blob(registry, repo, &layout, &layer);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": config.digest, "size": config_bytes.len()},
        "layers": [{"mediaType": layer_type, "digest": layer.digest, "size": layer.size}]
    }))
    .expect("manifest json");
    put_manifest(registry, repo, tag, manifest_type, &manifest);
    let digest = {
        use sha2::Digest as _;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&manifest)))
    };
    (digest, config.digest, layer.digest)
}

/// What `push_image_with_layers` pushed: digests of the manifest, the config
/// and each layer, in order.
pub struct PushedImage {
    pub manifest: String,
    pub config: String,
    pub layers: Vec<String>,
}

/// A Docker schema2 image of the given layer contents (opaque bytes: only
/// their digests matter to a registry and to `skopeo copy … dir:`), pushed
/// to `repo:tag`. Layers with the same contents in two images are one blob,
/// as a shared base layer is.
pub fn push_image_with_layers(registry: &Registry, repo: &str, tag: &str, layers: &[&[u8]]) -> PushedImage {
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = Layout::new(dir.path().to_path_buf());
    let config_type = "application/vnd.docker.container.image.v1+json";
    let layer_type = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    let manifest_type = "application/vnd.docker.distribution.manifest.v2+json";
    let config_bytes = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "config": {"Labels": {"image": format!("{repo}:{tag}")}}
    }))
    .expect("config json");
    let config = layout.blob(config_type, &config_bytes);
    push_blob(registry, repo, &layout, &config);
    let descs: Vec<Desc> = layers.iter().map(|bytes| layout.blob(layer_type, bytes)).collect();
    for d in &descs {
        push_blob(registry, repo, &layout, d);
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": config.digest, "size": config_bytes.len()},
        "layers": descs.iter().map(|d| serde_json::json!({"mediaType": layer_type, "digest": d.digest, "size": d.size})).collect::<Vec<_>>()
    }))
    .expect("manifest json");
    put_manifest(registry, repo, tag, manifest_type, &manifest);
    let digest = {
        use sha2::Digest as _;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&manifest)))
    };
    PushedImage {
        manifest: digest,
        config: config.digest,
        layers: descs.into_iter().map(|d| d.digest).collect(),
    }
}

/// What `push_manifest_with_subject` pushed.
pub struct PushedManifest {
    pub digest: String,
    pub size: usize,
    pub media_type: &'static str,
}

/// A manifest of `media_type` pushed to `repo:reference` with its blobs:
/// a config of `config_type` holding `config`, one layer per
/// `(media type, content)`, and, when given, `artifactType`, a `subject`
/// descriptor (`{"mediaType","digest","size"}`) and manifest annotations.
/// What oras and cosign push for a signature or an SBOM.
#[allow(clippy::too_many_arguments)]
pub fn push_manifest_with_subject(
    registry: &Registry,
    repo: &str,
    reference: &str,
    media_type: &'static str,
    artifact_type: Option<&str>,
    (config_type, config): (&'static str, &[u8]),
    layers: &[(&'static str, &[u8])],
    subject: Option<Value>,
    annotations: Option<Value>,
) -> PushedManifest {
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = Layout::new(dir.path().to_path_buf());
    let config = layout.blob(config_type, config);
    push_blob(registry, repo, &layout, &config);
    let layers: Vec<Desc> = layers.iter().map(|(t, bytes)| layout.blob(t, bytes)).collect();
    for d in &layers {
        push_blob(registry, repo, &layout, d);
    }
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.size},
        "layers": layers.iter().map(|d| json!({"mediaType": d.media_type, "digest": d.digest, "size": d.size})).collect::<Vec<_>>(),
    });
    if let Some(t) = artifact_type {
        manifest["artifactType"] = json!(t);
    }
    if let Some(s) = subject {
        manifest["subject"] = s;
    }
    if let Some(a) = annotations {
        manifest["annotations"] = a;
    }
    let bytes = serde_json::to_vec(&manifest).expect("manifest json");
    put_manifest(registry, repo, reference, media_type, &bytes);
    PushedManifest {
        digest: sha256_hex(&bytes),
        size: bytes.len(),
        media_type,
    }
}

/// Push `bytes` as a manifest of `media_type` to `repo:reference` (an index
/// whose children are pushed already); returns its digest.
pub fn push_raw_manifest(registry: &Registry, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) -> String {
    put_manifest(registry, repo, reference, media_type, bytes);
    sha256_hex(bytes)
}
