//! One process owns a cache directory. Before anything in the directory is
//! touched (the blob store empties `tmp/`, sled may be repaired), the owner
//! takes an exclusive `flock` on `<cache_dir>/lock` and writes its pid there;
//! a second process finds the lock held and stops, naming the holder.
//!
//! The lock lives as long as the returned `CacheLock` (the `Cache` keeps it);
//! the kernel drops it when the process dies, so a crash never leaves a stale
//! lock behind: the pid in the file is information, not the lock itself.
//! `std::fs::File::try_lock` (flock on Linux) is used rather than a crate.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The lock file's name inside the cache directory.
pub const LOCK_FILE: &str = "lock";

#[derive(Debug, Error)]
pub enum LockError {
    #[error(
        "cache directory {dir} is in use by another berth (pid {}); one process per cache directory: \
         stop it, or give this one another cache_dir",
        pid.map_or_else(|| "unknown".to_string(), |p| p.to_string())
    )]
    Held { dir: PathBuf, pid: Option<u32> },
    #[error("cannot lock the cache directory ({path}): {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Held for the life of the process that owns the cache directory.
#[derive(Debug)]
pub struct CacheLock {
    _file: File,
}

impl CacheLock {
    /// Take the lock on `cache_dir` (created if missing) without waiting.
    pub fn acquire(cache_dir: &Path) -> Result<Self, LockError> {
        let path = cache_dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(cache_dir).map_err(io)?;
        // Not truncated on open: the holder's pid must survive our attempt.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    dir: cache_dir.to_path_buf(),
                    pid: holder_pid(&mut file),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(Self { _file: file })
    }
}

/// The pid the holder wrote (absent in the instant between its lock and write).
fn holder_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

impl LockError {
    /// Another process holds the lock (as opposed to an I/O failure).
    pub fn is_held(&self) -> bool {
        matches!(self, LockError::Held { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let first = CacheLock::acquire(&cache).expect("first lock");
        let err = CacheLock::acquire(&cache).expect_err("second lock refused");
        match &err {
            LockError::Held { dir, pid } => {
                assert_eq!(dir, &cache);
                assert_eq!(*pid, Some(std::process::id()));
            }
            other => panic!("{other}"),
        }
        let text = err.to_string();
        assert!(text.contains(&std::process::id().to_string()), "{text}");
        assert!(text.contains(&cache.display().to_string()), "{text}");
        drop(first);
        CacheLock::acquire(&cache).expect("free again once the holder is gone");
    }
}
