//! The `[[access]]` matcher: which identity may pull which repository of
//! which upstream. Rules are tried in order, the first whose identity,
//! upstream and repository all match wins, and no match means denied. Pure:
//! patterns are parsed (and refused) once, when the config is validated.
//!
//! Identity patterns: `alice` (an htpasswd user), `cn:node-*` (a client
//! certificate's common name), `anonymous`; `*` matches any run of
//! characters, so `*` alone is every htpasswd user and `cn:*` every
//! certificate. Repository patterns match the repository's path within its
//! upstream (`library/busybox`, without the upstream's prefix): a `*` inside a
//! component matches within that one component (`library/*`, `team-*/app`),
//! a `**` component matches any number of components, zero included
//! (`team/**` matches `team`, `team/a` and `team/a/b`).

use std::fmt;

use super::Identity;

/// `*` matches any run of characters (none included); everything else is literal.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wildcard(String);

impl Wildcard {
    fn matches(&self, text: &str) -> bool {
        wildcard_match(self.0.as_bytes(), text.as_bytes())
    }
}

/// Greedy wildcard match with one backtrack point: linear in practice, and
/// never exponential however many `*` a pattern has.
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Who a rule (or `[auth] admins`) names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityPattern {
    User(String),
    Cert(String),
    Anonymous,
}

impl IdentityPattern {
    pub fn parse(text: &str) -> Result<IdentityPattern, String> {
        if text == "anonymous" {
            return Ok(IdentityPattern::Anonymous);
        }
        if let Some(cn) = text.strip_prefix("cn:") {
            if cn.is_empty() {
                return Err(format!(
                    "{text:?} names no common name: write cn:<name>, e.g. cn:node-*"
                ));
            }
            return Ok(IdentityPattern::Cert(cn.to_string()));
        }
        if text.is_empty() || text.contains(':') || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "{text:?} is not an identity: an htpasswd user, cn:<common name> or anonymous"
            ));
        }
        Ok(IdentityPattern::User(text.to_string()))
    }

    pub fn matches(&self, identity: &Identity) -> bool {
        match (self, identity) {
            (IdentityPattern::User(p), Identity::User(u)) => wildcard_match(p.as_bytes(), u.as_bytes()),
            (IdentityPattern::Cert(p), Identity::Cert(cn)) => wildcard_match(p.as_bytes(), cn.as_bytes()),
            (IdentityPattern::Anonymous, Identity::Anonymous) => true,
            _ => false,
        }
    }
}

impl fmt::Display for IdentityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityPattern::User(p) => f.write_str(p),
            IdentityPattern::Cert(p) => write!(f, "cn:{p}"),
            IdentityPattern::Anonymous => f.write_str("anonymous"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// `**`: any number of components, zero included.
    AnyDepth,
    /// One component; `*` in it matches within the component.
    One(Wildcard),
}

/// A repository glob (`library/*`, `team/**`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoPattern {
    parts: Vec<Part>,
    text: String,
}

impl RepoPattern {
    pub fn parse(text: &str) -> Result<RepoPattern, String> {
        let bad = |why: &str| format!("{text:?} is not a repository pattern: {why}");
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        let mut parts = Vec::new();
        for component in text.split('/') {
            if component.is_empty() {
                return Err(bad("it has an empty path component (a leading, trailing or double /)"));
            }
            if component == "**" {
                parts.push(Part::AnyDepth);
                continue;
            }
            if component.contains("**") {
                return Err(bad("** must be a whole path component, as in team/**"));
            }
            if !component
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-' | b'*'))
            {
                return Err(bad("a component may hold only a-z, 0-9, '.', '_', '-' and '*'"));
            }
            parts.push(Part::One(Wildcard(component.to_string())));
        }
        Ok(RepoPattern {
            parts,
            text: text.to_string(),
        })
    }

    pub fn matches(&self, repository: &str) -> bool {
        let components: Vec<&str> = repository.split('/').collect();
        // matched[j]: the parts so far can match the first j components.
        let mut matched = vec![false; components.len() + 1];
        matched[0] = true;
        for part in &self.parts {
            let mut next = vec![false; components.len() + 1];
            match part {
                Part::AnyDepth => {
                    let mut reachable = false;
                    for j in 0..=components.len() {
                        reachable |= matched[j];
                        next[j] = reachable;
                    }
                }
                Part::One(w) => {
                    for j in 0..components.len() {
                        next[j + 1] = matched[j] && w.matches(components[j]);
                    }
                }
            }
            matched = next;
        }
        matched[components.len()]
    }
}

impl fmt::Display for RepoPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One `[[access]]` rule, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRule {
    /// Never empty.
    pub identities: Vec<IdentityPattern>,
    /// Upstream names; `None`: every upstream.
    pub upstreams: Option<Vec<String>>,
    /// `None`: every repository.
    pub repositories: Option<Vec<RepoPattern>>,
}

impl AccessRule {
    pub fn matches(&self, identity: &Identity, upstream: &str, repository: &str) -> bool {
        self.identities.iter().any(|p| p.matches(identity))
            && self
                .upstreams
                .as_ref()
                .is_none_or(|names| names.iter().any(|n| n == upstream))
            && self
                .repositories
                .as_ref()
                .is_none_or(|pats| pats.iter().any(|p| p.matches(repository)))
    }
}

/// The index of the first rule allowing `identity` to pull `repository` of
/// `upstream`; `None` is denied.
pub fn first_match(rules: &[AccessRule], identity: &Identity, upstream: &str, repository: &str) -> Option<usize> {
    rules.iter().position(|r| r.matches(identity, upstream, repository))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(identities: &[&str], upstreams: Option<&[&str]>, repositories: Option<&[&str]>) -> AccessRule {
        AccessRule {
            identities: identities.iter().map(|i| IdentityPattern::parse(i).unwrap()).collect(),
            upstreams: upstreams.map(|u| u.iter().map(|s| s.to_string()).collect()),
            repositories: repositories.map(|r| r.iter().map(|p| RepoPattern::parse(p).unwrap()).collect()),
        }
    }

    fn user(u: &str) -> Identity {
        Identity::User(u.into())
    }

    fn cert(cn: &str) -> Identity {
        Identity::Cert(cn.into())
    }

    #[test]
    fn wildcards() {
        for (p, t, want) in [
            ("*", "", true),
            ("*", "anything", true),
            ("node-*", "node-1", true),
            ("node-*", "node-", true),
            ("node-*", "nod", false),
            ("*-prod", "web-prod", true),
            ("*-prod", "web-prod-2", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("**", "x", true),
        ] {
            assert_eq!(wildcard_match(p.as_bytes(), t.as_bytes()), want, "{p} ~ {t}");
        }
    }

    #[test]
    fn repository_patterns() {
        for (p, repo, want) in [
            ("library/*", "library/busybox", true),
            ("library/*", "library", false),
            ("library/*", "library/a/b", false),
            ("library/busybox", "library/busybox", true),
            ("library/busybox", "library/busybox2", false),
            ("team/**", "team", true),
            ("team/**", "team/a", true),
            ("team/**", "team/a/b/c", true),
            ("team/**", "teams/a", false),
            ("**", "anything/at/all", true),
            ("**/app", "app", true),
            ("**/app", "x/y/app", true),
            ("**/app", "x/y/app2", false),
            ("a/**/z", "a/z", true),
            ("a/**/z", "a/b/c/z", true),
            ("a/**/z", "a/b/c", false),
            ("team-*/app", "team-red/app", true),
            ("team-*/app", "team-red/x/app", false),
            ("*/*", "library/busybox", true),
            ("*/*", "busybox", false),
            ("**/**", "x", true),
        ] {
            assert_eq!(RepoPattern::parse(p).unwrap().matches(repo), want, "{p} ~ {repo}");
        }
    }

    #[test]
    fn bad_repository_patterns() {
        for bad in [
            "",
            "/library",
            "library/",
            "a//b",
            "team/***",
            "a**/b",
            "Library/*",
            "a b",
        ] {
            assert!(RepoPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn identity_patterns() {
        assert_eq!(IdentityPattern::parse("anonymous"), Ok(IdentityPattern::Anonymous));
        assert_eq!(
            IdentityPattern::parse("cn:node-*"),
            Ok(IdentityPattern::Cert("node-*".into()))
        );
        assert_eq!(
            IdentityPattern::parse("alice"),
            Ok(IdentityPattern::User("alice".into()))
        );
        for bad in ["", "cn:", "a:b", "al ice"] {
            assert!(IdentityPattern::parse(bad).is_err(), "{bad:?}");
        }
        let any_user = IdentityPattern::parse("*").unwrap();
        assert!(any_user.matches(&user("bob")));
        assert!(!any_user.matches(&cert("bob")));
        assert!(!any_user.matches(&Identity::Anonymous));
        let nodes = IdentityPattern::parse("cn:node-*").unwrap();
        assert!(nodes.matches(&cert("node-7")));
        assert!(!nodes.matches(&user("node-7")), "a user is not a certificate");
        assert!(!nodes.matches(&cert("web-1")));
        assert_eq!(nodes.to_string(), "cn:node-*");
    }

    #[test]
    fn first_match_wins_and_no_match_is_denied() {
        let rules = vec![
            rule(&["alice"], Some(&["docker.io"]), Some(&["library/*"])),
            rule(&["alice", "cn:node-*"], None, Some(&["team/**"])),
            rule(&["anonymous"], Some(&["docker.io"]), Some(&["public/*"])),
            rule(&["cn:admin"], None, None),
        ];
        let table: &[(Identity, &str, &str, Option<usize>)] = &[
            (user("alice"), "docker.io", "library/busybox", Some(0)),
            (user("alice"), "ghcr.io", "library/busybox", None),
            (user("alice"), "ghcr.io", "team/x/y", Some(1)),
            (user("alice"), "docker.io", "team", Some(1)),
            (cert("node-3"), "quay.io", "team/a", Some(1)),
            (cert("node-3"), "docker.io", "library/busybox", None),
            (user("node-3"), "quay.io", "team/a", None),
            (Identity::Anonymous, "docker.io", "public/x", Some(2)),
            (Identity::Anonymous, "docker.io", "public/x/y", None),
            (Identity::Anonymous, "ghcr.io", "public/x", None),
            (cert("admin"), "anything.io", "any/repo/at/all", Some(3)),
            (user("bob"), "docker.io", "library/busybox", None),
        ];
        for (identity, upstream, repo, want) in table {
            assert_eq!(
                first_match(&rules, identity, upstream, repo),
                *want,
                "{identity} {upstream}/{repo}"
            );
        }
        assert_eq!(first_match(&[], &user("alice"), "docker.io", "x"), None);
    }

    #[test]
    fn defaults_are_every_upstream_and_repository() {
        let rules = vec![rule(&["*"], None, None)];
        assert_eq!(first_match(&rules, &user("x"), "a.io", "b/c/d"), Some(0));
        assert_eq!(first_match(&rules, &Identity::Anonymous, "a.io", "b"), None);
    }
}
