//! In-process tests of the cache's blob path against a scripted upstream:
//! resumes (206, 200, overlap, gap, overlong), hold-back, late joiners,
//! pass-through windows, eviction under a reader. Each runs in milliseconds.

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;

use super::{Cache, CacheError, CacheLock, ReadMode};
use crate::events::Events;
use crate::failure::FailureCause;
use crate::reference::Digest;
use crate::routing::Route;
use crate::store::{BlobStore, FsBlobStore, MetaStore, SledMetaStore};
use crate::testing::{FakeUpstream, FullDisk, Hit, Reply, blob, collect, eventually, route};

const SIZE: usize = 300_000;
const BREAK: usize = 100_000;

struct Fixture {
    cache: Cache,
    route: Route,
    _dir: tempfile::TempDir,
}

async fn fixture(up: &FakeUpstream, extra: &str, full_disk_after: Option<u64>) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = up.config(dir.path(), extra);
    let events = Arc::new(Events::default());
    let route = route(&config, &events, "library/app");
    let lock = CacheLock::acquire(dir.path()).expect("lock");
    let fs = FsBlobStore::open(dir.path()).expect("store");
    let store: Arc<dyn BlobStore> = match full_disk_after {
        Some(fail_after) => Arc::new(FullDisk { inner: fs, fail_after }),
        None => Arc::new(fs),
    };
    let meta: Arc<dyn MetaStore> = Arc::new(SledMetaStore::open(dir.path()).expect("meta"));
    let cache = Cache::with_stores(&config, store, meta, lock, events)
        .await
        .expect("cache");
    Fixture {
        cache,
        route,
        _dir: dir,
    }
}

fn is_blob(h: &Hit) -> bool {
    h.method == Method::GET && h.path.contains("/blobs/")
}

/// GET the whole blob through the cache.
async fn pull(f: &Fixture, digest: &Digest) -> (Vec<u8>, Option<CacheError>) {
    let blob = f.cache.blob(&f.route, digest).await.expect("blob");
    let size = blob.size();
    collect(blob.range(0, size, ReadMode::Copied).await.expect("body")).await
}

/// The first GET breaks after `BREAK` bytes; resumes are answered by `resume`.
async fn breaking_upstream(
    resume: impl Fn(&Bytes, u64) -> Reply + Send + Sync + 'static,
) -> (FakeUpstream, Bytes, Digest) {
    let (bytes, digest) = blob(SIZE);
    let body = bytes.clone();
    let up = FakeUpstream::start(move |hit| match hit.range_from {
        None => Reply::whole(&body).cut_after(BREAK),
        Some(from) => resume(&body, from),
    })
    .await;
    (up, bytes, digest)
}

#[tokio::test]
async fn a_broken_transfer_resumes_with_a_range_where_it_broke() {
    let (up, bytes, digest) = breaking_upstream(|b, from| Reply::partial(b, from as usize, from as usize)).await;
    let f = fixture(&up, "", None).await;
    let (got, err) = pull(&f, &digest).await;
    assert!(err.is_none(), "{err:?}");
    assert!(got == bytes, "the whole blob, verified");
    let gets: Vec<Hit> = up.hits("").into_iter().filter(is_blob).collect();
    assert_eq!(gets.len(), 2, "one GET and one resume");
    assert_eq!(gets[1].range_from, Some(BREAK as u64), "resumed at the byte reached");
    // Stored: the next pull asks the upstream nothing.
    assert_eq!(pull(&f, &digest).await.0.len(), SIZE);
    assert_eq!(up.hits("").iter().filter(|h| is_blob(h)).count(), 2);
}

#[tokio::test]
async fn a_resume_answered_with_the_whole_blob_skips_what_arrived() {
    let (up, bytes, digest) = breaking_upstream(|b, _| Reply::whole(b)).await;
    let f = fixture(&up, "", None).await;
    let (got, err) = pull(&f, &digest).await;
    assert!(err.is_none() && got == bytes, "{err:?}");
}

#[tokio::test]
async fn a_resume_answer_starting_earlier_is_trimmed() {
    let (up, bytes, digest) = breaking_upstream(|b, from| {
        let start = from as usize - 1000;
        Reply::partial(b, start, start)
    })
    .await;
    let f = fixture(&up, "", None).await;
    let (got, err) = pull(&f, &digest).await;
    assert!(err.is_none() && got == bytes, "{err:?}");
}

#[tokio::test]
async fn a_resume_answer_with_a_gap_fails_with_the_first_break_and_stores_nothing() {
    let (up, _, digest) = breaking_upstream(|b, from| {
        let start = from as usize + 1000;
        Reply::partial(b, start, start)
    })
    .await;
    let f = fixture(&up, "", None).await;
    let (got, err) = pull(&f, &digest).await;
    let err = err.expect("the transfer fails");
    assert_eq!(err.cause(), FailureCause::ConnectionReset, "{err}");
    assert!(got.len() < SIZE, "never a complete body");
    assert_eq!(f.cache.store.stat(&digest).await.unwrap(), None);
}

#[tokio::test]
async fn a_resume_that_runs_past_the_announced_size_is_refused() {
    let (up, _, digest) = breaking_upstream(|b, _| {
        let mut longer = b.to_vec();
        longer.extend_from_slice(&[0u8; 5000]);
        Reply::whole(&Bytes::from(longer))
    })
    .await;
    let f = fixture(&up, "", None).await;
    let (got, err) = pull(&f, &digest).await;
    let err = err.expect("refused");
    assert!(err.to_string().contains("announced"), "{err}");
    assert!(got.len() < SIZE);
    assert_eq!(f.cache.store.stat(&digest).await.unwrap(), None);
}

#[tokio::test]
async fn a_corrupt_blob_ends_every_response_before_its_last_byte() {
    let (bytes, digest) = blob(SIZE);
    let mut corrupt = bytes.to_vec();
    corrupt[SIZE / 2] ^= 0xff;
    let corrupt = Bytes::from(corrupt);
    let corrupt_copy = corrupt.clone();
    let up = FakeUpstream::start(move |_| Reply::whole(&corrupt)).await;
    let f = fixture(&up, "", None).await;
    let (got, err) = pull(&f, &digest).await;
    assert_eq!(err.expect("mismatch").cause(), FailureCause::DigestMismatch);
    assert!(got.len() < SIZE, "never the complete body");
    assert!(got[..] == corrupt_copy[..got.len()], "what went out is what arrived");
    assert_eq!(f.cache.store.stat(&digest).await.unwrap(), None, "never stored");
}

#[tokio::test]
async fn a_window_keeps_its_last_byte_until_the_blob_is_verified() {
    let (bytes, digest) = blob(SIZE);
    let gate = Arc::new(tokio::sync::Notify::new());
    let (body, g) = (bytes.clone(), gate.clone());
    let up = FakeUpstream::start(move |_| Reply::whole(&body).gated(BREAK, g.clone())).await;
    let f = fixture(&up, "", None).await;
    let blob = f.cache.blob(&f.route, &digest).await.expect("blob");
    let mut window = blob.range(0, Some(10), ReadMode::Copied).await.expect("body");
    let mut got = Vec::new();
    while got.len() < 9 {
        got.extend_from_slice(&window.next().await.expect("bytes").expect("ok"));
    }
    assert_eq!(got, &bytes[..9]);
    // The upstream stalls at BREAK: byte 9 is in the file, but not verified.
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), window.next()).await;
    assert!(early.is_err(), "the window's last byte waits for the digest");
    gate.notify_one();
    let rest = window.next().await.expect("last byte").expect("ok");
    assert_eq!(&rest[..], &bytes[9..10]);
    assert!(window.next().await.is_none());
}

#[tokio::test]
async fn a_late_joiner_shares_the_one_upstream_fetch() {
    let (bytes, digest) = blob(SIZE);
    let gate = Arc::new(tokio::sync::Notify::new());
    let (body, g) = (bytes.clone(), gate.clone());
    let up = FakeUpstream::start(move |_| Reply::whole(&body).gated(BREAK, g.clone())).await;
    let f = fixture(&up, "", None).await;
    let first = f.cache.blob(&f.route, &digest).await.expect("first");
    let mut first = first.range(0, None, ReadMode::Copied).await.expect("body");
    let head = first.next().await.expect("bytes").expect("ok");
    // Joins while the fetch is stalled half way.
    let second = f.cache.blob(&f.route, &digest).await.expect("second");
    assert_eq!(second.size(), Some(SIZE as u64), "the announced size");
    let second = second.range(0, None, ReadMode::Copied).await.expect("body");
    gate.notify_one();
    let (rest, err) = collect(first).await;
    assert!(err.is_none());
    assert!([head.to_vec(), rest].concat() == bytes);
    let (joined, err) = collect(second).await;
    assert!(err.is_none() && joined == bytes, "{err:?}");
    assert_eq!(up.hits("").iter().filter(|h| is_blob(h)).count(), 1, "asked once");
}

#[tokio::test]
async fn a_cache_that_cannot_store_streams_the_window_from_the_upstream() {
    let (bytes, digest) = blob(SIZE);
    let body = bytes.clone();
    let up = FakeUpstream::start(move |hit| match hit.range_from {
        None => Reply::whole(&body),
        Some(from) => Reply::partial(&body, from as usize, from as usize),
    })
    .await;
    let f = fixture(&up, "", Some(0)).await;
    let blob = f.cache.blob(&f.route, &digest).await.expect("blob");
    let (got, err) = collect(blob.range(1000, Some(5000), ReadMode::Copied).await.expect("body")).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, &bytes[1000..5000]);
    assert_eq!(f.cache.store.stat(&digest).await.unwrap(), None, "nothing stored");
}

#[tokio::test]
async fn a_reader_whose_fetch_fails_to_store_goes_on_from_the_upstream() {
    let (bytes, digest) = blob(SIZE);
    let gate = Arc::new(tokio::sync::Notify::new());
    let (body, g) = (bytes.clone(), gate.clone());
    let up = FakeUpstream::start(move |hit| match hit.range_from {
        None => Reply::whole(&body).gated(BREAK, g.clone()),
        Some(from) => Reply::partial(&body, from as usize, from as usize),
    })
    .await;
    // The disk fills once the bytes before the stall are written.
    let f = fixture(&up, "", Some(BREAK as u64)).await;
    let blob = f.cache.blob(&f.route, &digest).await.expect("blob");
    let mut body = blob.range(0, None, ReadMode::Copied).await.expect("body");
    let head = body.next().await.expect("bytes").expect("ok");
    gate.notify_one();
    // The reader reads nothing more until the fetch has failed: it sent
    // `head`, which the upload holds (written before the stall) whether or
    // not this reader was woken after that write.
    eventually("the fetch failed to store", || async {
        f.cache.inflight.snapshot().is_empty()
    })
    .await;
    let (rest, err) = collect(body).await;
    assert!(err.is_none(), "{err:?}");
    assert!([head.to_vec(), rest].concat() == bytes, "the whole blob, verified");
    let gets: Vec<Hit> = up.hits("").into_iter().filter(is_blob).collect();
    assert_eq!(gets.len(), 2);
    assert_eq!(
        gets[1].range_from,
        Some(head.len() as u64),
        "only the rest is asked for"
    );
    assert_eq!(f.cache.store.stat(&digest).await.unwrap(), None);
}

#[tokio::test]
async fn eviction_leaves_a_blob_being_read_until_its_reader_is_done() {
    let (bytes, digest) = blob(3 << 20);
    let body = bytes.clone();
    let up = FakeUpstream::start(move |_| Reply::whole(&body)).await;
    let f = fixture(&up, "[cache]\nmax_size = \"1MiB\"\nkeep_recent = \"0s\"", None).await;
    let (got, _) = pull(&f, &digest).await;
    assert_eq!(got.len(), bytes.len());
    // Readers finish at verification; the commit follows.
    // Stored, and indexed (the index entry follows the commit).
    eventually("the blob is stored and indexed", || async {
        f.cache.store.stat(&digest).await.ok().flatten().is_some() && f.cache.usage().0 > 0
    })
    .await;
    let blob = f.cache.blob(&f.route, &digest).await.expect("stored");
    let mut reading = blob.range(0, None, ReadMode::Copied).await.expect("body");
    let head = reading.next().await.expect("bytes").expect("ok");
    let (plan, evicted) = f.cache.evictor.run(None).await.expect("eviction");
    assert_eq!(evicted.items, 0, "a blob being read is kept: {plan:?}");
    assert!(plan.short, "over max_size, but nothing may go");
    assert!(f.cache.store.stat(&digest).await.unwrap().is_some());
    let (rest, err) = collect(reading).await;
    assert!(err.is_none(), "{err:?}");
    assert!([head.to_vec(), rest].concat() == bytes, "the reader gets every byte");
    let (_, evicted) = f.cache.evictor.run(None).await.expect("eviction");
    assert_eq!(evicted.items, 1, "read to the end, the blob may go");
    assert_eq!(f.cache.store.stat(&digest).await.unwrap(), None);
}

#[tokio::test]
async fn an_upstream_error_status_is_a_typed_cause() {
    let (_, digest) = blob(10);
    let up = FakeUpstream::start(|_| Reply::Error {
        status: StatusCode::NOT_FOUND,
        code: "BLOB_UNKNOWN",
    })
    .await;
    let f = fixture(&up, "", None).await;
    let err = f.cache.blob(&f.route, &digest).await.err().expect("unknown");
    assert_eq!(err.cause(), FailureCause::BlobUnknown);
}

/// A by-tag MANIFEST_UNKNOWN (which Distribution answers for a missing
/// repository and a missing tag alike) is told apart by the tag list.
fn unknown_tags_upstream() -> impl Fn(&Hit) -> Reply + Send + Sync + 'static {
    |hit| {
        if hit.path == "/v2/library/app/tags/list" {
            let body = Bytes::from_static(br#"{"name":"library/app","tags":["1.35","1.36","latest"]}"#);
            return Reply::whole(&body);
        }
        if hit.path.ends_with("/tags/list") {
            return Reply::Error {
                status: StatusCode::NOT_FOUND,
                code: "NAME_UNKNOWN",
            };
        }
        Reply::Error {
            status: StatusCode::NOT_FOUND,
            code: "MANIFEST_UNKNOWN",
        }
    }
}

#[tokio::test]
async fn a_missing_tag_names_the_closest_existing_ones() {
    let up = FakeUpstream::start(unknown_tags_upstream()).await;
    let f = fixture(&up, "", None).await;
    let tag = crate::reference::Reference::parse("1.3").expect("tag");
    let e = f.cache.manifest(&f.route, &tag).await.expect_err("no such tag");
    assert_eq!(e.cause(), FailureCause::ManifestUnknown);
    assert_eq!(e.suggestion().as_deref(), Some("did you mean 1.35, 1.36?"));
    assert_eq!(e.upstream_status(), Some(404));
    // A burst of the same slip costs one tag-list walk.
    for _ in 0..3 {
        let e = f.cache.manifest(&f.route, &tag).await.expect_err("no such tag");
        assert_eq!(e.cause(), FailureCause::ManifestUnknown);
    }
    assert_eq!(up.hits("/tags/list").len(), 1);
}

#[tokio::test]
async fn a_missing_repository_is_name_unknown() {
    let up = FakeUpstream::start(unknown_tags_upstream()).await;
    let f = fixture(&up, "", None).await;
    let events = Arc::new(Events::default());
    let config = up.config(f._dir.path(), "");
    let nope = route(&config, &events, "library/nope");
    let tag = crate::reference::Reference::parse("latest").expect("tag");
    let e = f.cache.manifest(&nope, &tag).await.expect_err("no such repository");
    assert_eq!(e.cause(), FailureCause::NameUnknown, "{e}");
    assert!(e.to_string().contains("library/nope"), "{e}");
    assert_eq!(e.suggestion(), None);
}

#[tokio::test]
async fn a_missing_tag_far_from_every_other_suggests_nothing_and_other_errors_stay() {
    let up = FakeUpstream::start(|hit| {
        if hit.path.ends_with("/tags/list") {
            return Reply::Error {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "UNAVAILABLE",
            };
        }
        Reply::Error {
            status: StatusCode::NOT_FOUND,
            code: "MANIFEST_UNKNOWN",
        }
    })
    .await;
    let f = fixture(&up, "", None).await;
    let tag = crate::reference::Reference::parse("bookworm").expect("tag");
    let e = f.cache.manifest(&f.route, &tag).await.expect_err("no such tag");
    // The list could not be had: the upstream's own answer stands.
    assert_eq!(e.cause(), FailureCause::ManifestUnknown);
    assert!(matches!(e, CacheError::Upstream { .. }), "{e:?}");
}
