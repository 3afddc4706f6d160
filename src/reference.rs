//! Repository names, tags and digests, parsed by the distribution grammar.
//!
//! Every string that later becomes part of a file path or an upstream URL goes
//! through these types first; nothing else in berth accepts raw user input for
//! those purposes. The grammar is deliberately hand-written (no regex crate):
//! it is small, and keeping it explicit makes the rejection reasons precise.

use std::fmt;

use thiserror::Error;

/// Longest repository name the distribution spec allows.
const MAX_NAME_LEN: usize = 255;
/// Longest tag: one leading word character plus up to 127 more.
const MAX_TAG_LEN: usize = 128;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid repository name {0:?}: {1}")]
    Name(String, &'static str),
    #[error("invalid tag {0:?}: must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")]
    Tag(String),
    #[error("invalid digest {0:?}: {1}")]
    Digest(String, &'static str),
}

/// A validated repository name such as `library/busybox` or `a/b/c`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let bad = |why| Err(ReferenceError::Name(s.to_string(), why));
        if s.is_empty() {
            return bad("empty");
        }
        if s.len() > MAX_NAME_LEN {
            return bad("longer than 255 characters");
        }
        for component in s.split('/') {
            if !valid_component(component) {
                return bad(
                    "each path component must match [a-z0-9]+([._-][a-z0-9]+)* (lower case, no empty component, no '..')",
                );
            }
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first path component (used for prefix routing).
    pub fn first_component(&self) -> &str {
        self.0.split('/').next().unwrap_or_default()
    }

    /// The name without its first component, if more remain.
    pub fn strip_first_component(&self) -> Option<RepoName> {
        self.0.split_once('/').map(|(_, rest)| RepoName(rest.to_string()))
    }

    pub fn component_count(&self) -> usize {
        self.0.split('/').count()
    }

    /// Prepend a component already known to be valid (e.g. `library`).
    pub fn with_prefix(&self, prefix: &str) -> Result<RepoName, ReferenceError> {
        RepoName::parse(&format!("{prefix}/{}", self.0))
    }
}

/// `[a-z0-9]+([._-][a-z0-9]+)*`, with the `__` separator the spec also allows.
fn valid_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator: '.', '_', '__', or one or more '-'.
        let start = i;
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < bytes.len() && bytes[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < bytes.len() && bytes[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= bytes.len() || !alnum(bytes[i]) {
            return false;
        }
    }
    true
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tag(String);

impl Tag {
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let bytes = s.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= MAX_TAG_LEN
            && word(bytes[0])
            && bytes[1..].iter().all(|&b| word(b) || b == b'.' || b == b'-');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(ReferenceError::Tag(s.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated digest: `sha256:<64 lower hex>` or `sha512:<128 lower hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let bad = |why| Err(ReferenceError::Digest(s.to_string(), why));
        let Some((alg, hex)) = s.split_once(':') else {
            return bad("expected algorithm:hex");
        };
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return bad("unsupported algorithm (sha256 or sha512)"),
        };
        if hex.len() != algorithm.hex_len() {
            return bad("wrong hex length for the algorithm");
        }
        if !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return bad("hex part must be lower-case hexadecimal");
        }
        Ok(Self {
            algorithm,
            hex: hex.to_string(),
        })
    }

    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Self {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(sha2::Sha256::digest(bytes)),
        }
    }

    pub fn from_parts(algorithm: Algorithm, hex: String) -> Self {
        Self { algorithm, hex }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

/// The digest of `bytes` under `algorithm`.
pub fn digest_of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
    let mut h = Hasher::new(algorithm);
    h.update(bytes);
    h.finish()
}

/// A streaming hasher for either supported algorithm.
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Self {
        use sha2::Digest as _;
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        use sha2::Digest as _;
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> Digest {
        use sha2::Digest as _;
        match self {
            Hasher::Sha256(h) => Digest::from_parts(Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => Digest::from_parts(Algorithm::Sha512, hex::encode(h.finalize())),
        }
    }
}

/// Proof that content hashed to its digest: only `Hasher::verify` makes
/// one, and a store makes content visible under a digest only with one.
#[derive(Debug)]
pub struct Verified {
    digest: Digest,
}

impl Verified {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
}

impl Hasher {
    /// The proof that what was hashed is `expected`, or the digest it really has.
    pub fn verify(self, expected: &Digest) -> Result<Verified, Digest> {
        let actual = self.finish();
        if &actual == expected {
            Ok(Verified { digest: actual })
        } else {
            Err(actual)
        }
    }
}

/// What a manifest request names: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    /// A reference containing ':' must be a digest; anything else a tag.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if s.contains(':') {
            Digest::parse(s).map(Reference::Digest)
        } else {
            Tag::parse(s).map(Reference::Tag)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "busybox",
            "library/busybox",
            "a/b/c",
            "my-org/my_app",
            "a__b",
            "a---b",
            "x.y/z",
            "0",
        ] {
            assert!(RepoName::parse(ok).is_ok(), "{ok} should parse");
        }
        for bad in [
            "", "Busybox", "a//b", "/a", "a/", "..", "a/../b", "a/./b", "-a", "a-", "a___b", "a._b", "a b", "a%2fb",
            "a\\b",
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(RepoName::parse(&"a".repeat(256)).is_err());
        assert!(RepoName::parse(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn tags() {
        for ok in ["latest", "v1.2.3", "_x", "A-b_c.d", &"a".repeat(128)] {
            assert!(Tag::parse(ok).is_ok(), "{ok} should parse");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "a+b", &"a".repeat(129)] {
            assert!(Tag::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn digests() {
        let hex64 = "a".repeat(64);
        assert!(Digest::parse(&format!("sha256:{hex64}")).is_ok());
        assert!(Digest::parse(&format!("sha512:{}", "0".repeat(128))).is_ok());
        for bad in [
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("md5:{hex64}"),
            format!("sha256{hex64}"),
            "sha256:../../etc/passwd".to_string(),
            format!("sha512:{hex64}"),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn reference_kind() {
        assert!(matches!(Reference::parse("latest"), Ok(Reference::Tag(_))));
        let d = format!("sha256:{}", "b".repeat(64));
        assert!(matches!(Reference::parse(&d), Ok(Reference::Digest(_))));
        assert!(Reference::parse("sha256:xyz").is_err());
    }

    #[test]
    fn sha256_of_empty() {
        assert_eq!(
            Digest::sha256_of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
