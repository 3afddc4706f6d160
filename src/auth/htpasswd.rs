//! The htpasswd file (`[auth] htpasswd`): its parsed form, and the live
//! users berth checks HTTP Basic credentials against. Entries must be bcrypt
//! (`htpasswd -B`): the other formats htpasswd writes are unsalted or
//! trivially brute-forced. A password check runs bcrypt on the blocking pool
//! behind a `CredentialCache`; the file is re-read, at most once per
//! `RELOAD_CHECK_EVERY`, when its modification time, size or inode changed,
//! so a user added or removed needs no restart. A reload that fails keeps the
//! entries berth has, and says so once. No error or log line carries a hash.

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::credential_cache::CredentialCache;

/// How often the file's metadata is looked at: once a second keeps a
/// changed file's delay below what a person notices, and a stat per second
/// costs nothing.
const RELOAD_CHECK_EVERY: Duration = Duration::from_secs(1);

/// A problem on one line of an htpasswd file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based.
    pub line: usize,
    pub problem: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.problem)
    }
}

/// The users of one htpasswd file and their bcrypt hashes. `Debug` shows
/// only the user names.
#[derive(Clone, Default)]
pub struct HtpasswdFile {
    users: HashMap<String, String>,
}

impl HtpasswdFile {
    /// Parse `user:hash` lines; blank lines and `#` comments are skipped.
    /// Every bad line is reported.
    pub fn parse(text: &str) -> Result<HtpasswdFile, Vec<LineError>> {
        let mut users = HashMap::new();
        let mut first_line = HashMap::new();
        let mut problems = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let mut problem = |p: String| problems.push(LineError { line: n, problem: p });
            let Some((user, hash)) = line.split_once(':') else {
                problem("is not user:hash".into());
                continue;
            };
            if user.is_empty() || user.chars().any(char::is_control) {
                problem("has no user name before the ':'".into());
            } else if user == "anonymous" {
                problem("user \"anonymous\": the name is reserved for clients without credentials".into());
            } else if !is_bcrypt(hash) {
                problem(format!(
                    "user {user:?}: the password is not a bcrypt hash ($2y$...); create entries with htpasswd -B"
                ));
            } else if let Some(first) = first_line.get(user) {
                problem(format!("user {user:?} is already listed on line {first}"));
            } else {
                first_line.insert(user.to_string(), n);
                users.insert(user.to_string(), hash.to_string());
            }
        }
        if problems.is_empty() {
            Ok(HtpasswdFile { users })
        } else {
            Err(problems)
        }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    fn hash(&self, user: &str) -> Option<&str> {
        self.users.get(user).map(String::as_str)
    }
}

impl fmt::Debug for HtpasswdFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.users.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("HtpasswdFile").field("users", &names).finish()
    }
}

/// `$2a$`, `$2b$` or `$2y$`, a two-digit cost, `$`, then 53 characters of
/// bcrypt's base64 (22 of salt, 31 of hash).
fn is_bcrypt(hash: &str) -> bool {
    let b = hash.as_bytes();
    b.len() == 60
        && (hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$"))
        && b[4].is_ascii_digit()
        && b[5].is_ascii_digit()
        && b[6] == b'$'
        && b[7..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'.' || c == b'/')
}

/// Checks a password against a hash: bcrypt, or a counting stand-in in tests.
pub(super) type Verifier = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

fn bcrypt_verifier() -> Verifier {
    Arc::new(|password, hash| bcrypt::verify(password, hash).unwrap_or(false))
}

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// Read and parse `path`, each problem one message naming the file.
pub fn read(path: &Path) -> Result<HtpasswdFile, Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
    HtpasswdFile::parse(&text).map_err(|lines| lines.into_iter().map(|l| format!("{} {l}", path.display())).collect())
}

/// The live users: the file as last read, re-read when it changes.
pub struct Htpasswd {
    path: PathBuf,
    verifier: Verifier,
    check_every: Duration,
    state: Mutex<State>,
}

struct State {
    file: Arc<HtpasswdFile>,
    stamp: Option<Stamp>,
    checked_at: Instant,
    /// The stamp of a version that failed to load, so it is reported once.
    failed: Option<Option<Stamp>>,
    /// Bumped by every reload; a check begun before one is not remembered.
    generation: u64,
    cache: CredentialCache,
}

impl fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Htpasswd")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Htpasswd {
    /// Read `path` now (startup): every problem is an error naming the file.
    pub fn open(path: &Path) -> Result<Htpasswd, Vec<String>> {
        Self::with(path, bcrypt_verifier(), RELOAD_CHECK_EVERY)
    }

    pub(super) fn with(path: &Path, verifier: Verifier, check_every: Duration) -> Result<Htpasswd, Vec<String>> {
        let stamp = stamp(path).ok();
        let file = read(path)?;
        Ok(Htpasswd {
            path: path.to_path_buf(),
            verifier,
            check_every,
            state: Mutex::new(State {
                file: Arc::new(file),
                stamp,
                checked_at: Instant::now(),
                failed: None,
                generation: 0,
                cache: CredentialCache::new(),
            }),
        })
    }

    /// Users in the file as last read.
    pub fn users(&self) -> usize {
        self.state().file.len()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `password` is `user`'s. Unknown users are refused without a
    /// bcrypt; known ones cost one per distinct credential per cache entry.
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        self.refresh().await;
        let (key, hash, generation) = {
            let state = self.state();
            let key = state.cache.key(user, password);
            if let Some(ok) = state.cache.get(&key, Instant::now()) {
                return ok;
            }
            (key, state.file.hash(user).map(str::to_string), state.generation)
        };
        let Some(hash) = hash else {
            return false;
        };
        let verifier = self.verifier.clone();
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || verifier(&password, &hash))
            .await
            .unwrap_or(false);
        let mut state = self.state();
        if state.generation == generation {
            state.cache.insert(key, ok, Instant::now());
        }
        ok
    }

    /// Re-read the file if it changed since the last look, at most once per
    /// `check_every`; concurrent callers do not wait for one another.
    async fn refresh(&self) {
        let known = {
            let mut state = self.state();
            if state.checked_at.elapsed() < self.check_every {
                return;
            }
            state.checked_at = Instant::now();
            state.stamp.clone()
        };
        let path = self.path.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let now = stamp(&path).ok();
            if now.is_some() && now == known {
                return None;
            }
            Some((now.clone(), read(&path)))
        })
        .await
        .ok()
        .flatten();
        let Some((now, result)) = outcome else {
            return;
        };
        let mut state = self.state();
        match result {
            Ok(file) => {
                tracing::info!(path = %self.path.display(), users = file.len(), "htpasswd reloaded");
                state.file = Arc::new(file);
                state.stamp = now;
                state.failed = None;
                state.generation += 1;
                state.cache.clear();
            }
            Err(problems) => {
                if state.failed.as_ref() != Some(&now) {
                    tracing::warn!(
                        path = %self.path.display(),
                        problems = %problems.join("; "),
                        "htpasswd reload failed; keeping the users loaded before"
                    );
                    state.failed = Some(now);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A real bcrypt hash at the lowest cost, so tests stay fast.
    fn hash(password: &str) -> String {
        bcrypt::hash(password, 4).unwrap()
    }

    #[test]
    fn parses_good_files() {
        let text = format!(
            "# users\nalice:{}\r\n\nbob:{}\ncarol:{}\n",
            hash("a"),
            hash("b").replacen("$2b$", "$2y$", 1),
            hash("c").replacen("$2b$", "$2a$", 1)
        );
        let f = HtpasswdFile::parse(&text).unwrap();
        assert_eq!(f.len(), 3);
        assert!(f.hash("alice").is_some() && f.hash("dave").is_none());
        let debug = format!("{f:?}");
        assert!(debug.contains("alice") && !debug.contains("$2"), "{debug}");
        assert!(HtpasswdFile::parse("").unwrap().is_empty());
    }

    #[test]
    fn reports_every_bad_line_without_the_hash() {
        let good = hash("a");
        let text = format!(
            "alice:{good}\nno colon here\nmd5user:$apr1$abcdefgh$0123456789abcdefghijkl\n\
             shauser:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n:{good}\nalice:{good}\nanonymous:{good}\ntrunc:{}\n",
            &good[..59]
        );
        let problems = HtpasswdFile::parse(&text).unwrap_err();
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6, 7, 8], "{problems:?}");
        assert!(problems[1].problem.contains("md5user") && problems[1].problem.contains("htpasswd -B"));
        assert!(problems[4].problem.contains("line 1"), "{:?}", problems[4]);
        for p in &problems {
            let shown = p.to_string();
            assert!(
                !shown.contains(&good[7..]) && !shown.contains("$apr1$") && !shown.contains("{SHA}"),
                "{shown}"
            );
        }
    }

    #[test]
    fn read_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        assert!(read(&missing).unwrap_err()[0].starts_with(&format!("cannot read {}", missing.display())));
        let bad = dir.path().join("htpasswd");
        std::fs::write(&bad, "x\n").unwrap();
        assert_eq!(
            read(&bad).unwrap_err(),
            [format!("{} line 1: is not user:hash", bad.display())]
        );
    }

    /// A bcrypt verifier that counts its calls.
    fn counting() -> (Verifier, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let v: Verifier = Arc::new(move |pw, h| {
            c.fetch_add(1, Ordering::SeqCst);
            bcrypt::verify(pw, h).unwrap_or(false)
        });
        (v, calls)
    }

    #[tokio::test]
    async fn verifies_with_real_bcrypt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, format!("alice:{}\n", hash("s3cret"))).unwrap();
        let h = Htpasswd::open(&path).unwrap();
        assert!(h.verify("alice", "s3cret").await);
        assert!(!h.verify("alice", "wrong").await);
        assert!(!h.verify("bob", "s3cret").await);
        assert!(!format!("{h:?}").contains("$2"));
    }

    #[tokio::test]
    async fn a_cached_credential_costs_one_bcrypt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, format!("alice:{}\n", hash("s3cret"))).unwrap();
        let (v, calls) = counting();
        let h = Htpasswd::with(&path, v, RELOAD_CHECK_EVERY).unwrap();
        for _ in 0..20 {
            assert!(h.verify("alice", "s3cret").await);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one bcrypt for twenty requests");
        for _ in 0..20 {
            assert!(!h.verify("alice", "wrong").await);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "a wrong password is remembered too");
        assert!(!h.verify("nobody", "x").await);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "an unknown user needs no bcrypt");
    }

    #[tokio::test]
    async fn a_changed_file_is_reloaded_and_clears_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, format!("alice:{}\n", hash("old"))).unwrap();
        let (v, calls) = counting();
        let h = Htpasswd::with(&path, v, Duration::ZERO).unwrap();
        assert!(h.verify("alice", "old").await);
        assert!(!h.verify("bob", "b").await);

        // Replaced by rename, as editors and config management do.
        let next = dir.path().join("htpasswd.new");
        std::fs::write(&next, format!("alice:{}\nbob:{}\n", hash("new"), hash("b"))).unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert!(!h.verify("alice", "old").await, "the cached success was dropped");
        assert!(h.verify("alice", "new").await);
        assert!(h.verify("bob", "b").await);
        let before = calls.load(Ordering::SeqCst);

        // A broken version keeps the users loaded before.
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(h.verify("bob", "b").await);
        assert!(h.verify("alice", "new").await);
        assert_eq!(calls.load(Ordering::SeqCst), before, "a failed reload keeps the cache");
        assert_eq!(h.state().failed.as_ref().map(Option::is_some), Some(true));

        // So does a removed file.
        std::fs::remove_file(&path).unwrap();
        assert!(h.verify("bob", "b").await);
    }

    #[tokio::test]
    async fn the_file_is_looked_at_at_most_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, format!("alice:{}\n", hash("a"))).unwrap();
        let h = Htpasswd::with(&path, bcrypt_verifier(), Duration::from_secs(3600)).unwrap();
        std::fs::write(&path, format!("alice:{}\nbob:{}\n", hash("a"), hash("b"))).unwrap();
        assert!(!h.verify("bob", "b").await, "not looked at yet");
    }
}
