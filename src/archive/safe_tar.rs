//! Reading an archive without trusting it (pass 1 of an import): every entry
//! is checked before anything is written — regular files and directories
//! only (no symlinks, hard links or devices), relative paths without `..`,
//! no entry twice, each file as long as its header says, the end-of-archive
//! marker present — and every file is hashed. Nothing is extracted: what an
//! import stores later is read back at the offsets found here and hashed
//! again as it is committed.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use bytes::Bytes;

use super::ArchiveError;
use crate::reference::{Algorithm, Digest, Hasher};

/// Files kept in memory while scanning (manifests, configs, index.json).
pub const SMALL_FILE: u64 = 4 << 20;
/// All kept files together: a hostile archive cannot fill memory.
const SMALL_TOTAL: u64 = 256 << 20;

/// One regular file of the archive.
#[derive(Debug, Clone)]
pub struct FileInfo {
    /// Its hash by the algorithm its name says (`blobs/sha512/…`), else sha256.
    pub digest: Digest,
    pub size: u64,
    /// Where its bytes start in the archive.
    pub offset: u64,
    /// Starts with the gzip magic.
    pub gzip: bool,
    /// Its bytes, when no larger than `SMALL_FILE`.
    pub bytes: Option<Bytes>,
}

/// An archive's regular files by normalised path.
#[derive(Debug, Default)]
pub struct Scanned {
    pub files: BTreeMap<String, FileInfo>,
}

/// The entry path as stored, checked: relative, no `..`, `.` and empty
/// components dropped.
pub fn normalise(raw: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "its path is not UTF-8".to_string())?;
    if text.starts_with('/') {
        return Err("an absolute path".into());
    }
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("a path with `..`".into()),
            p if p.contains('\\') || p.contains('\0') => return Err("a path with `\\` or NUL".into()),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err("an empty path".into());
    }
    Ok(parts.join("/"))
}

fn algorithm_of(path: &str) -> Algorithm {
    match path.strip_prefix("blobs/").and_then(|p| p.split_once('/')) {
        Some(("sha512", _)) => Algorithm::Sha512,
        _ => Algorithm::Sha256,
    }
}

/// Pass 1: check and hash every entry of the tar at `path`.
pub fn scan(path: &Path) -> Result<Scanned, ArchiveError> {
    let io = |source| ArchiveError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut scanned = Scanned::default();
    let mut kept = 0u64;
    let mut end = 0u64;
    let mut seen = std::collections::HashSet::new();
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(|e| ArchiveError::Unreadable {
            after: last_name(&scanned),
            reason: e.to_string(),
        })?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let bad = |problem: String| ArchiveError::Entry {
            entry: shown.clone(),
            problem,
        };
        let name = normalise(&raw).map_err(|p| bad(format!("refused: {p}")))?;
        let kind = entry.header().entry_type();
        if !seen.insert(name.clone()) {
            return Err(bad("refused: the archive holds this entry twice".into()));
        }
        if kind.is_dir() {
            continue;
        }
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            let what = match kind {
                tar::EntryType::Symlink => "a symbolic link",
                tar::EntryType::Link => "a hard link",
                tar::EntryType::Char | tar::EntryType::Block => "a device",
                tar::EntryType::Fifo => "a FIFO",
                _ => "not a regular file",
            };
            return Err(bad(format!("refused: {what}; an archive holds regular files only")));
        }
        let size = entry.size();
        let offset = entry.raw_file_position();
        if name == super::layout::INDEX_FILE && size > SMALL_FILE {
            return Err(bad(format!(
                "refused: {size} bytes, more than the {SMALL_FILE} an index.json may have"
            )));
        }
        let small = size <= SMALL_FILE && kept.saturating_add(size) <= SMALL_TOTAL;
        let mut hasher = Hasher::new(algorithm_of(&name));
        let mut held = Vec::new();
        let mut got = 0u64;
        let mut head = [0u8; 2];
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = entry.read(&mut buf).map_err(|e| bad(format!("unreadable: {e}")))?;
            if n == 0 {
                break;
            }
            let piece = buf.get(..n).unwrap_or_default();
            if got < 2 {
                for (i, b) in piece.iter().take(2).enumerate() {
                    if let Some(slot) = head.get_mut(usize::try_from(got).unwrap_or(2).saturating_add(i)) {
                        *slot = *b;
                    }
                }
            }
            hasher.update(piece);
            if small {
                held.extend_from_slice(piece);
            }
            got = got.saturating_add(n as u64);
        }
        if got != size {
            return Err(bad(format!("truncated: {got} of its {size} bytes are in the archive")));
        }
        if small {
            kept = kept.saturating_add(size);
        }
        end = offset.saturating_add(size.div_ceil(512).saturating_mul(512));
        scanned.files.insert(
            name,
            FileInfo {
                digest: hasher.finish(),
                size,
                offset,
                gzip: head == [0x1f, 0x8b],
                bytes: small.then(|| Bytes::from(held)),
            },
        );
    }
    // A tar cut at an entry boundary reads like a shorter one: only the
    // end-of-archive marker (two zero blocks) tells them apart.
    let mut file = std::fs::File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(end)).map_err(io)?;
    let mut marker = [1u8; 1024];
    let whole = file.read_exact(&mut marker).is_ok() && marker.iter().all(|b| *b == 0);
    if !whole {
        return Err(ArchiveError::Unreadable {
            after: last_name(&scanned),
            reason: "the archive ends without its end-of-archive marker: truncated".into(),
        });
    }
    Ok(scanned)
}

fn last_name(scanned: &Scanned) -> String {
    scanned
        .files
        .iter()
        .max_by_key(|(_, f)| f.offset)
        .map(|(n, _)| n.clone())
        .unwrap_or_else(|| "(start)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_relative_and_never_climb() {
        assert_eq!(normalise(b"./blobs//sha256/ab").unwrap(), "blobs/sha256/ab");
        assert!(normalise(b"/etc/passwd").is_err());
        assert!(normalise(b"blobs/../../x").is_err());
        assert!(normalise(b"./").is_err());
    }
}
