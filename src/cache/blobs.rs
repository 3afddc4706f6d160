//! Content-addressed files under `<cache_dir>/blobs/<alg>/<2 hex>/<hex>`.
//!
//! Content becomes visible only by `commit`: written to a temp file under
//! `<cache_dir>/tmp`, fsynced, renamed into place, directory fsynced. Paths are
//! built only from a parsed `Digest`, so no input can name a file elsewhere.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::Rng;

use crate::reference::Digest;

pub struct BlobStore {
    root: PathBuf,
    tmp: PathBuf,
}

impl BlobStore {
    /// Open the store; leftover temp files of an earlier run are removed, as
    /// they were never verified.
    pub fn open(cache_dir: &Path) -> std::io::Result<Self> {
        let root = cache_dir.join("blobs");
        let tmp = cache_dir.join("tmp");
        std::fs::create_dir_all(&root)?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        Ok(Self { root, tmp })
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root.join(digest.algorithm().as_str()).join(&hex[..2]).join(hex)
    }

    /// The size of a stored blob, if present.
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        std::fs::metadata(self.path(digest))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// A new, uniquely named temp file for a download in progress.
    pub fn temp_file(&self) -> std::io::Result<(PathBuf, std::fs::File)> {
        let name = format!("{:016x}.part", rand::rng().random::<u64>());
        let path = self.tmp.join(name);
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
        Ok((path, file))
    }

    /// Make a verified temp file visible under its digest. The caller has
    /// fsynced the file; this renames it and fsyncs the directory.
    pub fn commit(&self, temp: &Path, digest: &Digest) -> std::io::Result<PathBuf> {
        let dest = self.path(digest);
        let dir = dest.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir)?;
        std::fs::rename(temp, &dest)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(dest)
    }

    /// Store small, already verified content (manifests) in one go.
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> std::io::Result<()> {
        if self.size(digest) == Some(bytes.len() as u64) {
            return Ok(());
        }
        let (path, mut file) = self.temp_file()?;
        let result = file
            .write_all(bytes)
            .and_then(|_| file.sync_all())
            .and_then(|_| self.commit(&path, digest).map(|_| ()));
        if result.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_read_and_temp_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"hello");
        store.put(&d, b"hello").unwrap();
        assert_eq!(std::fs::read(store.path(&d)).unwrap(), b"hello");
        assert!(store.path(&d).starts_with(dir.path().join("blobs/sha256")));
        let (stale, _) = store.temp_file().unwrap();
        drop(store);
        let store = BlobStore::open(dir.path()).unwrap();
        assert!(!stale.exists(), "temp files are removed on open");
        assert_eq!(store.size(&d), Some(5));
    }
}
