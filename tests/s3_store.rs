//! The S3 blob store against a real 3-node Garage cluster (replication
//! factor 3): content is visible under its digest only after a verified
//! commit; an aborted or dropped upload leaves nothing in the bucket; ranges
//! are ranged GETs; a blob pieced together from many writes arrives whole;
//! with one node down, reads and writes go on.

mod support;

use berth::reference::{Algorithm, Digest, Hasher};
use berth::store::{BlobStore, ReadMode, S3BlobStore, S3Config};
use bytes::Bytes;
use futures_util::StreamExt;
use support::garage::{BUCKET, Garage};
use support::images::random_bytes;

fn store(garage: &Garage, node: usize, spool: &std::path::Path) -> S3BlobStore {
    S3BlobStore::open(
        &S3Config {
            endpoint: garage.endpoint(node),
            bucket: BUCKET.into(),
            region: "garage".into(),
            access_key_id: garage.key_id.clone(),
            secret_access_key: garage.secret.clone(),
        },
        spool,
    )
    .expect("s3 store")
}

async fn read_all(store: &S3BlobStore, digest: &Digest, start: u64, end: u64) -> Vec<u8> {
    let mut stream = store
        .read_range(digest, start, end, ReadMode::Copied, Box::new(|_, _| {}))
        .await
        .expect("range");
    let mut out = Vec::new();
    while let Some(piece) = stream.next().await {
        out.extend_from_slice(&piece.expect("piece"));
    }
    out
}

fn proof(bytes: &[u8], digest: &Digest) -> berth::reference::Verified {
    let mut h = Hasher::new(Algorithm::Sha256);
    h.update(bytes);
    h.verify(digest).expect("proof")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_appear_in_the_bucket_only_after_a_verified_commit() {
    let mut garage = tokio::task::block_in_place(Garage::start);
    let spool = tempfile::tempdir().expect("spool");
    let s3 = store(&garage, 0, spool.path());
    s3.writable().await.expect("the bucket takes writes");

    // Small content in one go, hashed first.
    let small = Bytes::from_static(b"a small manifest");
    let d = Digest::sha256_of(&small);
    assert!(s3.put(&d, small.clone()).await.expect("put"), "written");
    assert!(!s3.put(&d, small.clone()).await.expect("put again"), "there already");
    assert_eq!(s3.read(&d, 1 << 20).await.expect("read").as_deref(), Some(&small[..]));
    let wrong = Digest::sha256_of(b"something else");
    assert!(
        s3.put(&wrong, small.clone()).await.is_err(),
        "content must hash to its digest"
    );
    assert_eq!(s3.stat(&wrong).await.expect("stat"), None);

    // 20 MiB in 64 KiB pieces: three parts, visible only once committed.
    let big = random_bytes(20 << 20, 3);
    let bd = Digest::sha256_of(&big);
    let mut up = s3.begin(&bd).await.expect("begin");
    let partial = up.partial();
    for chunk in big.chunks(64 << 10) {
        up.write(vec![Bytes::copy_from_slice(chunk)]).await.expect("write");
    }
    assert_eq!(
        s3.stat(&bd).await.expect("stat"),
        None,
        "nothing visible before the commit"
    );
    let head = partial.read_at(0, 1000).await.expect("a joined reader reads the spool");
    assert_eq!(&head[..], &big[..1000]);
    up.commit(proof(&big, &bd)).await.expect("commit");
    assert_eq!(s3.stat(&bd).await.expect("stat"), Some(big.len() as u64));
    // From another node of the cluster, ranges included.
    let other = store(&garage, 2, spool.path());
    assert_eq!(read_all(&other, &bd, 0, big.len() as u64).await, big);
    assert_eq!(
        read_all(&other, &bd, 5_000_000, 9_000_123).await,
        &big[5_000_000..9_000_123]
    );
    let listed = other.list().await.expect("list");
    assert!(
        listed.iter().any(|i| i.digest == bd && i.size == big.len() as u64),
        "{listed:?}"
    );

    // Aborted, and dropped without either: nothing under the digest.
    let gone = random_bytes(9 << 20, 4);
    let gd = Digest::sha256_of(&gone);
    let mut up = s3.begin(&gd).await.expect("begin");
    up.write(vec![Bytes::from(gone.clone())]).await.expect("write");
    up.abort().await;
    assert_eq!(s3.stat(&gd).await.expect("stat"), None, "aborted");
    let mut up = s3.begin(&gd).await.expect("begin");
    up.write(vec![Bytes::from(gone.clone())]).await.expect("write");
    drop(up);
    assert_eq!(s3.stat(&gd).await.expect("stat"), None, "dropped");

    // One node down: the other two still read and write (quorum 2 of 3).
    garage.nodes[1].kill();
    assert_eq!(read_all(&s3, &bd, 0, 1 << 20).await, &big[..1 << 20]);
    let during = Bytes::from(random_bytes(100 << 10, 5));
    let dd = Digest::sha256_of(&during);
    assert!(s3.put(&dd, during.clone()).await.expect("put with a node down"));
    garage.nodes[1].restart();
    let back = store(&garage, 1, spool.path());
    assert_eq!(
        back.read(&dd, 1 << 20).await.expect("read").as_deref(),
        Some(&during[..])
    );
    assert!(s3.delete(&d).await.is_ok());
    assert_eq!(s3.stat(&d).await.expect("stat"), None);
}
