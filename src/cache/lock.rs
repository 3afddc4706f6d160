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

/// Who holds the lock on a cache directory, found without taking it (so a
/// berth starting at that moment is never refused): the kernel's table of
/// `flock`s in `/proc/locks`, matched by the lock file's inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockState {
    /// No lock file: no berth has used this directory.
    NoFile,
    Free,
    Held {
        pid: Option<u32>,
    },
}

/// The state of `cache_dir`'s lock, read from `/proc/locks`.
pub fn lock_state(cache_dir: &Path) -> std::io::Result<LockState> {
    use std::os::unix::fs::MetadataExt as _;
    let path = cache_dir.join(LOCK_FILE);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LockState::NoFile),
        Err(e) => return Err(e),
    };
    let written = File::open(&path).ok().and_then(|mut f| holder_pid(&mut f));
    let table = std::fs::read_to_string("/proc/locks")?;
    let device = (rustix::fs::major(meta.dev()), rustix::fs::minor(meta.dev()));
    Ok(holder_in(&table, device, meta.ino(), written))
}

/// The holder in a `/proc/locks` table of the flock on inode `ino`: on the
/// file's device, or (overlay filesystems report another device there) held
/// by the pid written in the file.
fn holder_in(table: &str, device: (u32, u32), ino: u64, written: Option<u32>) -> LockState {
    for line in table.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK ADVISORY WRITE <pid> <maj>:<min>:<ino> 0 EOF"; a waiter's line has "->".
        let [_, "FLOCK", _, _, pid, id, ..] = fields.as_slice() else {
            continue;
        };
        let mut parts = id.split(':');
        let (Some(maj), Some(min), Some(i)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if i.parse::<u64>().ok() != Some(ino) {
            continue;
        }
        let pid = pid.parse::<u32>().ok();
        let same_device =
            u32::from_str_radix(maj, 16).ok() == Some(device.0) && u32::from_str_radix(min, 16).ok() == Some(device.1);
        if same_device || (pid.is_some() && pid == written) {
            return LockState::Held { pid: pid.or(written) };
        }
    }
    LockState::Free
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
    fn the_state_is_read_without_taking_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        assert_eq!(lock_state(&cache).unwrap(), LockState::NoFile);
        let held = CacheLock::acquire(&cache).expect("lock");
        assert_eq!(
            lock_state(&cache).unwrap(),
            LockState::Held {
                pid: Some(std::process::id())
            }
        );
        drop(held);
        assert_eq!(lock_state(&cache).unwrap(), LockState::Free);
        // Reading it took nothing: the lock can be taken.
        CacheLock::acquire(&cache).expect("lock again");
    }

    #[test]
    fn proc_locks_lines() {
        let table = "1: FLOCK  ADVISORY  WRITE 26542 fe:00:6095025 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 7 fe:00:77 0 EOF\n\
                     3: POSIX  ADVISORY  WRITE 9 fe:00:77 0 EOF\n";
        assert_eq!(
            holder_in(table, (0xfe, 0), 6095025, None),
            LockState::Held { pid: Some(26542) }
        );
        assert_eq!(holder_in(table, (0xfe, 1), 6095025, None), LockState::Free);
        assert_eq!(
            holder_in(table, (8, 1), 6095025, Some(26542)),
            LockState::Held { pid: Some(26542) },
            "another device (overlay), the pid in the file"
        );
        assert_eq!(
            holder_in(table, (0xfe, 0), 77, None),
            LockState::Free,
            "waiters and POSIX locks"
        );
    }

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
