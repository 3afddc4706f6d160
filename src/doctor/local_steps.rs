//! The checks on this machine: the config (loaded before doctor runs; a bad
//! one never gets here), the cache directory (writable, free space against
//! `cache.max_size`) and its lock, read without taking it.

use std::path::Path;
use std::time::Instant;

use super::{Outcome, Step, Steps};
use crate::cache::{CacheError, LockState, lock_state};
use crate::config::Config;
use crate::failure::FailureCause;

pub fn check(config: &Config, origin: &str) -> Vec<Step> {
    let mut s = Steps::new("local");
    let started = Instant::now();
    let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
    s.pass(
        "config",
        format!("{origin}: valid; upstreams: {}", names.join(", ")),
        started,
    );
    let dir = config.cache_dir.as_path();
    writable(&mut s, dir);
    free_space(&mut s, dir, config.max_size);
    lock(&mut s, dir);
    s.into_steps()
}

fn writable(s: &mut Steps, dir: &Path) {
    let started = Instant::now();
    if !dir.exists() {
        // berth creates it at start; creating it here would be a side effect.
        let parent = nearest_existing(dir);
        return match rustix::fs::access(&parent, rustix::fs::Access::WRITE_OK) {
            Ok(()) => s.pass(
                "cache dir",
                format!(
                    "{} does not exist yet; berth will create it ({} is writable)",
                    dir.display(),
                    parent.display()
                ),
                started,
            ),
            Err(e) => s.fail(
                "cache dir",
                FailureCause::StorageError,
                format!(
                    "{} does not exist and {} is not writable: {e}",
                    dir.display(),
                    parent.display()
                ),
                started,
            ),
        };
    }
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, b"berth doctor\n")?;
            f.sync_all()
        });
    let _ = std::fs::remove_file(&probe);
    match result {
        Ok(()) => s.pass("cache dir", format!("{} is writable", dir.display()), started),
        Err(e) => {
            let detail = format!("cannot write in {}: {e}", dir.display());
            s.fail(
                "cache dir",
                CacheError::Io(std::sync::Arc::new(e)).cause(),
                detail,
                started,
            );
        }
    }
}

fn free_space(s: &mut Steps, dir: &Path, max_size: u64) {
    let started = Instant::now();
    let at = nearest_existing(dir);
    match rustix::fs::statvfs(&at) {
        Ok(st) => {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            let detail = format!(
                "{} free on the cache's filesystem; cache.max_size is {}",
                size(free),
                size(max_size)
            );
            if free >= max_size {
                s.pass("free space", detail, started);
            } else {
                let detail = format!("{detail}: the disk may fill before the cache does");
                s.push(
                    "free space",
                    Outcome::Warn,
                    Some(FailureCause::DiskFull),
                    detail,
                    started,
                );
            }
        }
        Err(e) => s.fail(
            "free space",
            FailureCause::StorageError,
            format!("cannot read the free space of {}: {e}", at.display()),
            started,
        ),
    }
}

fn lock(s: &mut Steps, dir: &Path) {
    let started = Instant::now();
    match lock_state(dir) {
        Ok(LockState::NoFile) => s.pass("cache lock", "no lock file: no berth has used it yet".into(), started),
        Ok(LockState::Free) => s.pass("cache lock", "free: no berth is running on it".into(), started),
        Ok(LockState::Held { pid }) => {
            let pid = pid.map_or_else(|| "unknown".to_string(), |p| p.to_string());
            s.push(
                "cache lock",
                Outcome::Info,
                None,
                format!("held by a running berth (pid {pid}); doctor does not take it"),
                started,
            );
        }
        Err(e) => s.push(
            "cache lock",
            Outcome::Info,
            None,
            format!("cannot tell whether a berth holds it: {e}"),
            started,
        ),
    }
}

/// `dir`, or its nearest ancestor that exists.
fn nearest_existing(dir: &Path) -> std::path::PathBuf {
    dir.ancestors()
        .find(|p| !p.as_os_str().is_empty() && p.exists())
        .map_or_else(|| std::path::PathBuf::from("."), Path::to_path_buf)
}

/// Bytes in the largest binary unit that keeps a whole number in front.
pub(super) fn size(bytes: u64) -> String {
    crate::units::format_size(bytes)
}
