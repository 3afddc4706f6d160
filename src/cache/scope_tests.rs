//! In-process tests of repository scoping against a scripted upstream whose
//! layer and manifest exist only under `private/app` and `public/has`: what
//! another name gets, how many HEADs it costs, what an outage does, and that
//! links survive a reopen and go with their content.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::{Method, StatusCode};
use bytes::Bytes;

use super::{Cache, CacheError, CacheLock, ReadMode};
use crate::events::Events;
use crate::failure::FailureCause;
use crate::media::OCI_MANIFEST;
use crate::reference::{Digest, Reference};
use crate::routing::Route;
use crate::store::{BlobStore, FsBlobStore, MetaStore, SledMetaStore};
use crate::testing::{FakeUpstream, Reply, blob, collect, eventually, route};

/// Repositories the upstream holds the image under; any other name is 404.
const HOLDERS: [&str; 2] = ["private/app", "public/has"];

struct World {
    up: FakeUpstream,
    /// Every request answered 503 while set.
    down: Arc<AtomicBool>,
    layer: (Bytes, Digest),
    manifest: (Bytes, Digest),
    dir: tempfile::TempDir,
}

/// An OCI image manifest of one layer (its config is never fetched).
fn oci_manifest(layer: &(Bytes, Digest)) -> (Bytes, Digest) {
    let config = Digest::sha256_of(b"config");
    let text = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":6}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{}}}]}}"#,
        layer.1,
        layer.0.len()
    );
    let bytes = Bytes::from(text);
    let digest = Digest::sha256_of(&bytes);
    (bytes, digest)
}

async fn world() -> World {
    let layer = blob(50_000);
    let manifest = oci_manifest(&layer);
    let down = Arc::new(AtomicBool::new(false));
    let (l, m, d) = (layer.clone(), manifest.clone(), down.clone());
    let up = FakeUpstream::start(move |hit| {
        if d.load(Ordering::SeqCst) {
            return Reply::Error {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "UNAVAILABLE",
            };
        }
        let held = HOLDERS.iter().any(|r| hit.path.starts_with(&format!("/v2/{r}/")));
        let blob = format!("/blobs/{}", l.1);
        let manifest = [format!("/manifests/{}", m.1), "/manifests/1.0".to_string()];
        if held && hit.path.ends_with(&blob) {
            Reply::whole(&l.0)
        } else if held && manifest.iter().any(|p| hit.path.ends_with(p)) {
            Reply::Manifest {
                body: m.0.clone(),
                media_type: OCI_MANIFEST,
            }
        } else if hit.path.contains("/blobs/") {
            Reply::Error {
                status: StatusCode::NOT_FOUND,
                code: "BLOB_UNKNOWN",
            }
        } else {
            Reply::Error {
                status: StatusCode::NOT_FOUND,
                code: "MANIFEST_UNKNOWN",
            }
        }
    })
    .await;
    World {
        up,
        down,
        layer,
        manifest,
        dir: tempfile::tempdir().expect("tempdir"),
    }
}

struct Open {
    cache: Cache,
    config: crate::config::Config,
    events: Arc<Events>,
}

impl Open {
    fn route(&self, repo: &str) -> Route {
        route(&self.config, &self.events, repo)
    }
}

/// The cache on the world's directory. The metadata of a cache just dropped
/// may still be held by its last fetch task for a moment: retried.
async fn open(w: &World, scoped: bool) -> Open {
    let dir = w.dir.path();
    let config = w.up.config(dir, "");
    let events = Arc::new(Events::default());
    let lock = CacheLock::acquire(dir).expect("lock");
    let mut meta = None;
    eventually("the metadata opens", || {
        meta = SledMetaStore::open(dir).ok();
        std::future::ready(meta.is_some())
    })
    .await;
    let meta: Arc<dyn MetaStore> = Arc::new(meta.expect("opened"));
    let store: Arc<dyn BlobStore> = Arc::new(FsBlobStore::open(dir).expect("store"));
    let cache = Cache::with_stores(&config, store, meta, lock, events.clone())
        .await
        .expect("cache")
        .scope_by_repository(scoped);
    Open { cache, config, events }
}

/// Requests the upstream saw with `method` under repository `repo`.
fn asked(w: &World, method: Method, repo: &str) -> usize {
    let prefix = format!("/v2/{repo}/");
    w.up.hits("")
        .iter()
        .filter(|h| h.method == method && h.path.starts_with(&prefix))
        .count()
}

async fn pull(o: &Open, repo: &str, digest: &Digest) -> Result<Vec<u8>, CacheError> {
    let blob = o.cache.blob(&o.route(repo), digest).await?;
    let size = blob.size();
    let (bytes, err) = collect(blob.range(0, size, ReadMode::Copied).await?).await;
    match err {
        Some(e) => Err(e),
        None => Ok(bytes),
    }
}

/// Pull the layer and the manifest (by digest) through `private/app`, and
/// wait until the layer is stored.
async fn pull_private(w: &World, o: &Open) {
    assert_eq!(pull(o, "private/app", &w.layer.1).await.expect("layer"), w.layer.0);
    let by_digest = Reference::Digest(w.manifest.1.clone());
    let m = o.cache.manifest(&o.route("private/app"), &by_digest).await;
    assert_eq!(m.expect("manifest").digest, w.manifest.1);
    eventually("the layer is stored", || async {
        o.cache.store.stat(&w.layer.1).await.ok().flatten().is_some()
    })
    .await;
}

#[tokio::test]
async fn content_of_a_private_repository_is_unknown_under_a_name_the_upstream_lacks() {
    let w = world().await;
    let o = open(&w, true).await;
    pull_private(&w, &o).await;
    let err = pull(&o, "public/x", &w.layer.1).await.expect_err("not served");
    assert_eq!(err.cause(), FailureCause::BlobUnknown, "{err}");
    assert!(
        !err.to_string().contains("private"),
        "the answer names no other repository: {err}"
    );
    // The HEAD of a blob asks the same question, answered from the first.
    let err = o
        .cache
        .blob_size(&o.route("public/x"), &w.layer.1)
        .await
        .expect_err("HEAD");
    assert_eq!(err.cause(), FailureCause::BlobUnknown);
    assert_eq!(asked(&w, Method::HEAD, "public/x"), 1, "one HEAD under public/x");
    assert_eq!(asked(&w, Method::GET, "public/x"), 0, "nothing fetched under it");

    let by_digest = Reference::Digest(w.manifest.1.clone());
    let err = o
        .cache
        .manifest(&o.route("public/x"), &by_digest)
        .await
        .expect_err("manifest");
    assert_eq!(err.cause(), FailureCause::ManifestUnknown, "{err}");
    assert_eq!(asked(&w, Method::HEAD, "public/x"), 2, "one HEAD for the manifest");
    // What was fetched through private/app stays served there, unasked.
    assert_eq!(pull(&o, "private/app", &w.layer.1).await.expect("linked"), w.layer.0);
    o.cache
        .manifest(&o.route("private/app"), &by_digest)
        .await
        .expect("linked");
    assert_eq!(asked(&w, Method::HEAD, "private/app"), 0);
}

#[tokio::test]
async fn a_repository_the_upstream_confirms_is_served_after_one_head() {
    let w = world().await;
    let o = open(&w, true).await;
    pull_private(&w, &o).await;
    assert_eq!(pull(&o, "public/has", &w.layer.1).await.expect("confirmed"), w.layer.0);
    assert_eq!(asked(&w, Method::HEAD, "public/has"), 1);
    let by_digest = Reference::Digest(w.manifest.1.clone());
    o.cache
        .manifest(&o.route("public/has"), &by_digest)
        .await
        .expect("confirmed");
    assert_eq!(asked(&w, Method::HEAD, "public/has"), 2);
    // Linked now: the second ask (and a HEAD) needs no upstream.
    w.down.store(true, Ordering::SeqCst);
    assert_eq!(pull(&o, "public/has", &w.layer.1).await.expect("linked"), w.layer.0);
    let size = o.cache.blob_size(&o.route("public/has"), &w.layer.1).await;
    assert_eq!(size.expect("linked"), Some(w.layer.0.len() as u64));
    o.cache
        .manifest(&o.route("public/has"), &by_digest)
        .await
        .expect("linked");
    assert_eq!(asked(&w, Method::HEAD, "public/has"), 2);
    assert_eq!(asked(&w, Method::GET, "public/has"), 0, "served from the store");
}

#[tokio::test]
async fn with_the_upstream_down_unconfirmed_content_is_not_served() {
    let w = world().await;
    let o = open(&w, true).await;
    pull_private(&w, &o).await;
    w.down.store(true, Ordering::SeqCst);
    let err = pull(&o, "public/has", &w.layer.1).await.expect_err("not served");
    assert_eq!(err.cause(), FailureCause::UpstreamUnavailable, "{err}");
    let by_digest = Reference::Digest(w.manifest.1.clone());
    let err = o
        .cache
        .manifest(&o.route("public/has"), &by_digest)
        .await
        .expect_err("manifest");
    assert_eq!(err.cause(), FailureCause::UpstreamUnavailable, "{err}");
    // Back up: the same name is confirmed and served.
    w.down.store(false, Ordering::SeqCst);
    assert_eq!(pull(&o, "public/has", &w.layer.1).await.expect("confirmed"), w.layer.0);
}

#[tokio::test]
async fn unscoped_stored_content_is_served_under_any_name_without_asking() {
    let w = world().await;
    let o = open(&w, false).await;
    pull_private(&w, &o).await;
    assert_eq!(pull(&o, "public/x", &w.layer.1).await.expect("served"), w.layer.0);
    let size = o.cache.blob_size(&o.route("public/x"), &w.layer.1).await;
    assert_eq!(size.expect("served"), Some(w.layer.0.len() as u64));
    let by_digest = Reference::Digest(w.manifest.1.clone());
    o.cache
        .manifest(&o.route("public/x"), &by_digest)
        .await
        .expect("served");
    assert!(w.up.hits("").iter().all(|h| !h.path.starts_with("/v2/public/x/")));
    let private = crate::reference::RepoName::parse("private/app").expect("name");
    assert!(
        !o.cache.meta.has_link("fake", &private, &w.layer.1).await.expect("meta"),
        "no links are written unscoped"
    );
}

#[tokio::test]
async fn a_tag_resolution_links_its_digest() {
    let w = world().await;
    let o = open(&w, true).await;
    let tag = Reference::parse("1.0").expect("tag");
    let m = o.cache.manifest(&o.route("private/app"), &tag).await.expect("by tag");
    assert_eq!(m.digest, w.manifest.1);
    let by_digest = Reference::Digest(w.manifest.1.clone());
    o.cache
        .manifest(&o.route("private/app"), &by_digest)
        .await
        .expect("by digest");
    assert_eq!(asked(&w, Method::HEAD, "private/app"), 0, "known from the tag");
}

#[tokio::test]
async fn concurrent_checks_share_one_head() {
    let w = world().await;
    let o = open(&w, true).await;
    pull_private(&w, &o).await;
    let route = o.route("public/has");
    let by_digest = Reference::Digest(w.manifest.1.clone());
    let asks = (0..10).map(|_| o.cache.manifest(&route, &by_digest));
    for m in futures_util::future::join_all(asks).await {
        assert_eq!(m.expect("confirmed").digest, w.manifest.1);
    }
    assert_eq!(asked(&w, Method::HEAD, "public/has"), 1);
}

#[tokio::test]
async fn a_fetch_in_flight_is_joined_under_another_name_only_once_confirmed() {
    let w = world().await;
    let gate = Arc::new(tokio::sync::Notify::new());
    let (bytes, digest) = blob(300_000);
    let (body, g, d) = (bytes.clone(), gate.clone(), digest.clone());
    let up = FakeUpstream::start(move |hit| {
        let held = HOLDERS.iter().any(|r| hit.path.starts_with(&format!("/v2/{r}/")));
        match (held, hit.method == Method::HEAD, hit.path.ends_with(&d.to_string())) {
            (true, false, true) => Reply::whole(&body).gated(100_000, g.clone()),
            (true, true, true) => Reply::whole(&body),
            _ => Reply::Error {
                status: StatusCode::NOT_FOUND,
                code: "BLOB_UNKNOWN",
            },
        }
    })
    .await;
    let w = World { up, ..w };
    let o = open(&w, true).await;
    let first = o.cache.blob(&o.route("private/app"), &digest).await.expect("leads");
    let first = first.range(0, None, ReadMode::Copied).await.expect("body");
    let err = o
        .cache
        .blob(&o.route("public/x"), &digest)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.cause(), FailureCause::BlobUnknown, "{err}");
    let joined = o
        .cache
        .blob(&o.route("public/has"), &digest)
        .await
        .expect("confirmed, joins");
    let joined = joined.range(0, None, ReadMode::Copied).await.expect("body");
    gate.notify_one();
    let ((a, ea), (b, eb)) = (collect(first).await, collect(joined).await);
    assert!(ea.is_none() && eb.is_none(), "{ea:?} {eb:?}");
    assert!(a == bytes && b == bytes);
    assert_eq!(asked(&w, Method::HEAD, "public/x"), 1);
    assert_eq!(asked(&w, Method::HEAD, "public/has"), 1);
    assert_eq!(
        w.up.hits("").iter().filter(|h| h.method == Method::GET).count(),
        1,
        "one fetch"
    );
}

#[tokio::test]
async fn a_converted_manifest_is_linked_where_it_was_made_or_reused() {
    let w = world().await;
    let o = open(&w, true).await;
    let (private, public) = (o.route("private/app"), o.route("public/has"));
    let original = Reference::Digest(w.manifest.1.clone());
    let m = o.cache.manifest(&private, &original).await.expect("original");
    let converted = o.cache.converted(&private, &m).await.expect("converted");
    let by_converted = Reference::Digest(converted.digest.clone());
    o.cache.manifest(&private, &by_converted).await.expect("linked");
    assert_eq!(asked(&w, Method::HEAD, "private/app"), 0);
    // The upstream has never heard of the converted digest.
    let err = o
        .cache
        .manifest(&public, &by_converted)
        .await
        .expect_err("not made here");
    assert_eq!(err.cause(), FailureCause::ManifestUnknown, "{err}");
    // Made for public/has too (reused): served by digest there after.
    let m = o.cache.manifest(&public, &original).await.expect("confirmed");
    let again = o.cache.converted(&public, &m).await.expect("reused");
    assert_eq!(again.digest, converted.digest);
    let heads = asked(&w, Method::HEAD, "public/has");
    o.cache.manifest(&public, &by_converted).await.expect("linked");
    assert_eq!(asked(&w, Method::HEAD, "public/has"), heads);
}

#[tokio::test]
async fn links_survive_a_reopen() {
    let w = world().await;
    let o = open(&w, true).await;
    pull_private(&w, &o).await;
    drop(o);
    let o = open(&w, true).await;
    w.down.store(true, Ordering::SeqCst);
    assert_eq!(pull(&o, "private/app", &w.layer.1).await.expect("linked"), w.layer.0);
    let by_digest = Reference::Digest(w.manifest.1.clone());
    o.cache
        .manifest(&o.route("private/app"), &by_digest)
        .await
        .expect("linked");
    assert_eq!(asked(&w, Method::HEAD, "private/app"), 0);
}

#[tokio::test]
async fn repair_drops_links_to_missing_content() {
    let w = world().await;
    let o = open(&w, true).await;
    pull_private(&w, &o).await;
    let private = crate::reference::RepoName::parse("private/app").expect("name");
    assert!(o.cache.meta.has_link("fake", &private, &w.layer.1).await.expect("meta"));
    drop(o);
    let store = FsBlobStore::open(w.dir.path()).expect("store");
    store.delete(&w.layer.1).await.expect("removed by hand");
    let o = open(&w, true).await;
    let meta = &o.cache.meta;
    assert!(!meta.has_link("fake", &private, &w.layer.1).await.expect("meta"));
    assert!(
        meta.has_link("fake", &private, &w.manifest.1).await.expect("meta"),
        "still present"
    );
}
