//! Content-addressed files under `<cache_dir>/blobs/<alg>/<2 hex>/<hex>`.
//!
//! Content becomes visible only by a commit: written to a temp file under
//! `<cache_dir>/tmp`, fsynced, renamed into place, directory fsynced, all on
//! the blocking pool. Paths are built only from a parsed `Digest`, so no
//! input can name a file elsewhere.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use rand::Rng;

use super::fs_read::{self, Watch};
use super::{BlobStore, BlobUpload, ByteStream, OnDamaged, PartialRead, ReadMode, StoredItem, blocking};
use crate::reference::{Digest, Verified};

pub struct FsBlobStore {
    root: PathBuf,
    tmp: PathBuf,
}

impl FsBlobStore {
    /// Open the store; leftover temp files of an earlier run are removed, as
    /// they were never verified.
    pub fn open(cache_dir: &Path) -> io::Result<Self> {
        let root = cache_dir.join("blobs");
        let tmp = cache_dir.join("tmp");
        std::fs::create_dir_all(&root)?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        Ok(Self { root, tmp })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root.join(digest.algorithm().as_str()).join(&hex[..2]).join(hex)
    }

    /// A new, uniquely named temp file for content being written.
    fn temp_file(&self) -> io::Result<(PathBuf, std::fs::File)> {
        let name = format!("{:016x}.part", rand::rng().random::<u64>());
        let path = self.tmp.join(name);
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
        Ok((path, file))
    }
}

/// Make a written, verified temp file durable and visible under `dest`.
fn commit_file(file: &std::fs::File, temp: &Path, dest: &Path) -> io::Result<()> {
    file.sync_all()?;
    let dir = dest
        .parent()
        .ok_or_else(|| io::Error::other("blob path has no directory"))?;
    std::fs::create_dir_all(dir)?;
    std::fs::rename(temp, dest)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The size of a regular file, if there is one.
fn file_size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().filter(|m| m.is_file()).map(|m| m.len())
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn stat(&self, digest: &Digest) -> io::Result<Option<u64>> {
        // One metadata lookup, answered from the kernel's caches: a trip to
        // the blocking pool would cost more than the call, on every request.
        Ok(file_size(&self.path(digest)))
    }

    async fn read(&self, digest: &Digest, limit: u64) -> io::Result<Option<Bytes>> {
        let path = self.path(digest);
        blocking(move || {
            // Blobs share the store: asking for a large layer as a manifest
            // must not read the layer into memory.
            match file_size(&path) {
                Some(size) if size <= limit => match std::fs::read(&path) {
                    Ok(bytes) => Ok(Some(Bytes::from(bytes))),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                },
                _ => Ok(None),
            }
        })
        .await
    }

    async fn read_range(
        &self,
        digest: &Digest,
        start: u64,
        end: u64,
        mode: ReadMode,
        damaged: OnDamaged,
    ) -> io::Result<ByteStream> {
        let path = self.path(digest);
        let opened = path.clone();
        let file = blocking(move || std::fs::File::open(opened)).await;
        let stream = file.and_then(|file| match mode {
            ReadMode::Mapped => fs_read::read_range_mapped(file, start, end).map(|s| Box::pin(s) as ByteStream),
            ReadMode::Copied => {
                fs_read::read_range(file, start, end, fs_read::READ_CHUNK).map(|s| Box::pin(s) as ByteStream)
            }
        });
        let watch = Watch::new(path, end, damaged);
        match stream {
            Ok(stream) => Ok(watch.guard(stream)),
            Err(e) => Err(watch.damaged(e)),
        }
    }

    async fn put(&self, digest: &Digest, bytes: Bytes) -> io::Result<bool> {
        let mut hasher = crate::reference::Hasher::new(digest.algorithm());
        hasher.update(&bytes);
        if hasher.verify(digest).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("content does not hash to {digest}; not stored"),
            ));
        }
        let dest = self.path(digest);
        if file_size(&dest) == Some(bytes.len() as u64) {
            return Ok(false);
        }
        let (temp, mut file) = self.temp_file()?;
        blocking(move || {
            let result = file.write_all(&bytes).and_then(|_| commit_file(&file, &temp, &dest));
            if result.is_err() {
                let _ = std::fs::remove_file(&temp);
            }
            result.map(|_| true)
        })
        .await
    }

    async fn begin(&self, digest: &Digest) -> io::Result<Box<dyn BlobUpload>> {
        let (temp, writer) = self.temp_file()?;
        // Readers share one read-only handle, opened now: it stays valid when
        // the file is renamed into place.
        let reader = std::fs::File::open(&temp)?;
        Ok(Box::new(FsUpload {
            writer: Some(writer),
            temp,
            dest: self.path(digest),
            digest: digest.clone(),
            partial: Arc::new(FsPartial(Arc::new(reader))),
            done: false,
        }))
    }

    async fn delete(&self, digest: &Digest) -> io::Result<()> {
        let path = self.path(digest);
        blocking(move || std::fs::remove_file(path)).await
    }

    async fn list(&self) -> io::Result<Vec<StoredItem>> {
        let root = self.root.clone();
        blocking(move || list_files(&root)).await
    }

    async fn writable(&self) -> io::Result<()> {
        let (path, mut file) = self.temp_file()?;
        blocking(move || {
            let written = std::io::Write::write_all(&mut file, b"ok");
            let removed = std::fs::remove_file(&path);
            written.and(removed)
        })
        .await
    }
}

/// Every stored item under `root`; files whose names are not digests are
/// left out.
fn list_files(root: &Path) -> io::Result<Vec<StoredItem>> {
    let mut out = Vec::new();
    for alg in std::fs::read_dir(root)? {
        let alg = alg?;
        let Some(alg_name) = alg.file_name().to_str().map(str::to_string) else {
            continue;
        };
        for shard in std::fs::read_dir(alg.path())? {
            for file in std::fs::read_dir(shard?.path())? {
                let file = file?;
                let Some(hex) = file.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let Ok(digest) = Digest::parse(&format!("{alg_name}:{hex}")) else {
                    continue;
                };
                let meta = file.metadata()?;
                let stored_ms = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    .unwrap_or_default();
                out.push(StoredItem {
                    digest,
                    size: meta.len(),
                    stored_ms,
                });
            }
        }
    }
    Ok(out)
}

struct FsUpload {
    /// Taken while a write is on the blocking pool.
    writer: Option<std::fs::File>,
    temp: PathBuf,
    dest: PathBuf,
    digest: Digest,
    partial: Arc<FsPartial>,
    /// Committed or aborted: nothing left to clean up.
    done: bool,
}

impl Drop for FsUpload {
    fn drop(&mut self) {
        if !self.done {
            // Unlinking a temp file is one quick call; a dropped upload must
            // not leave it behind even outside a runtime.
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

#[async_trait]
impl BlobUpload for FsUpload {
    async fn write(&mut self, pieces: Vec<Bytes>) -> io::Result<()> {
        let mut writer = self
            .writer
            .take()
            .ok_or_else(|| io::Error::other("an earlier write of this upload failed"))?;
        let (writer, result) = tokio::task::spawn_blocking(move || {
            let result = pieces.iter().try_for_each(|p| writer.write_all(p));
            (writer, result)
        })
        .await
        .map_err(io::Error::other)?;
        self.writer = Some(writer);
        result
    }

    fn partial(&self) -> Arc<dyn PartialRead> {
        self.partial.clone()
    }

    async fn commit(mut self: Box<Self>, proof: Verified) -> io::Result<()> {
        if proof.digest() != &self.digest {
            return Err(io::Error::other(format!(
                "commit of {} with the proof of {}",
                self.digest,
                proof.digest()
            )));
        }
        let writer = self
            .writer
            .take()
            .ok_or_else(|| io::Error::other("an earlier write of this upload failed"))?;
        let (temp, dest) = (self.temp.clone(), self.dest.clone());
        let result = blocking(move || commit_file(&writer, &temp, &dest)).await;
        if result.is_ok() {
            self.done = true;
        }
        result
    }

    async fn abort(mut self: Box<Self>) {
        let temp = self.temp.clone();
        self.done = true;
        let _ = blocking(move || std::fs::remove_file(temp)).await;
    }
}

struct FsPartial(Arc<std::fs::File>);

#[async_trait]
impl PartialRead for FsPartial {
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        let file = self.0.clone();
        blocking(move || fs_read::read_at_most(&file, pos, len)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_read_and_temp_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"hello");
        assert!(store.put(&d, Bytes::from_static(b"hello")).await.unwrap());
        assert!(!store.put(&d, Bytes::from_static(b"hello")).await.unwrap());
        assert_eq!(std::fs::read(store.path(&d)).unwrap(), b"hello");
        assert!(store.path(&d).starts_with(dir.path().join("blobs/sha256")));
        assert_eq!(store.read(&d, 5).await.unwrap().as_deref(), Some(&b"hello"[..]));
        assert_eq!(store.read(&d, 4).await.unwrap(), None, "larger than the limit");
        let wrong = Digest::sha256_of(b"other");
        assert!(store.put(&wrong, Bytes::from_static(b"hello")).await.is_err());
        assert_eq!(
            store.stat(&wrong).await.unwrap(),
            None,
            "unverified content is not stored"
        );
        let (stale, _) = store.temp_file().unwrap();
        drop(store);
        let store = FsBlobStore::open(dir.path()).unwrap();
        assert!(!stale.exists(), "temp files are removed on open");
        assert_eq!(store.stat(&d).await.unwrap(), Some(5));
    }

    #[tokio::test]
    async fn an_upload_is_visible_only_after_its_verified_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"hello world");
        let mut up = store.begin(&d).await.unwrap();
        let partial = up.partial();
        up.write(vec![Bytes::from_static(b"hello "), Bytes::from_static(b"world")])
            .await
            .unwrap();
        assert_eq!(partial.read_at(6, 5).await.unwrap(), Bytes::from_static(b"world"));
        assert_eq!(store.stat(&d).await.unwrap(), None, "not visible before the commit");
        let mut h = crate::reference::Hasher::new(d.algorithm());
        h.update(b"hello world");
        up.commit(h.verify(&d).unwrap()).await.unwrap();
        assert_eq!(store.stat(&d).await.unwrap(), Some(11));
        assert_eq!(
            partial.read_at(0, 5).await.unwrap(),
            Bytes::from_static(b"hello"),
            "readable after the rename"
        );
        // A dropped upload leaves no temp file behind.
        let other = store.begin(&Digest::sha256_of(b"x")).await.unwrap();
        drop(other);
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
