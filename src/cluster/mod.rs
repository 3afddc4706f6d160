//! Replicas that share one `[storage]` bucket: each digest has an owner
//! among `[cluster] peers` by rendezvous hashing (every replica computes the
//! same owner from the same list, and a peer added or gone moves only the
//! digests it wins or held). A replica that misses a blob it does not own
//! streams it from the owner's registry API, verified and not stored again
//! (the owner stores it in the shared bucket), so concurrent cold pulls
//! across the fleet join the owner's single upstream fetch. A request from
//! another berth is never forwarded again, and an owner that cannot be
//! reached means fetching locally: correct first, one fetch second.

use std::sync::Arc;

use sha2::Digest as _;

use crate::config::{ClusterConfig, UpstreamConfig};
use crate::events::Events;
use crate::reference::{Digest, RepoName};
use crate::upstream::{Upstream, UpstreamError};

/// Another replica, as berth asks it.
pub struct Peer {
    pub url: String,
    /// A client of the peer's `/v2/` (named after it), per configured
    /// upstream: the peer routes by the same names.
    client: Arc<Upstream>,
}

pub struct Cluster {
    self_url: String,
    peers: Vec<Peer>,
}

/// The rendezvous score of `peer` (its URL as configured, normalised) for
/// `digest`: the highest score owns it.
pub fn score(peer: &str, digest: &Digest) -> u64 {
    let h = sha2::Sha256::new()
        .chain_update(peer.as_bytes())
        .chain_update([0u8])
        .chain_update(digest.to_string().as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&h[..8]);
    u64::from_be_bytes(first)
}

impl Cluster {
    /// `base`: an upstream's settings the peer clients start from (timeouts,
    /// retries); their endpoint, name and credentials are the peer's.
    pub fn new(config: &ClusterConfig, base: &UpstreamConfig, events: &Arc<Events>) -> Result<Self, UpstreamError> {
        let mut peers = Vec::new();
        for url in config.peers.iter().filter(|p| **p != config.self_url) {
            let url: &url::Url = url;
            let mut cfg = base.clone();
            cfg.name = format!("replica {}", url.as_str().trim_end_matches('/'));
            cfg.endpoints = vec![url.clone()];
            cfg.default = false;
            cfg.prefix = String::new();
            // The owner lets a replica in by the cluster secret.
            cfg.credentials = config.secret.as_ref().map(|secret| crate::config::Credentials {
                username: crate::auth::REPLICA_USER.to_string(),
                password: secret.clone(),
            });
            cfg.offline = false;
            cfg.auth_hosts = Vec::new();
            cfg.convert = crate::config::ConvertMode::Never;
            peers.push(Peer {
                url: url.to_string(),
                client: Arc::new(Upstream::new(&cfg, events.clone())?),
            });
        }
        Ok(Self {
            self_url: config.self_url.to_string(),
            peers,
        })
    }

    /// The peer that owns `digest`; None when this replica does.
    pub fn owner(&self, digest: &Digest) -> Option<&Peer> {
        let mine = score(&self.self_url, digest);
        self.peers
            .iter()
            .map(|p| (score(&p.url, digest), p))
            .filter(|(s, _)| *s > mine)
            .max_by_key(|(s, _)| *s)
            .map(|(_, p)| p)
    }
}

impl Peer {
    pub fn client(&self) -> &Arc<Upstream> {
        &self.client
    }

    /// The name under which the peer routes `repo` of `upstream` as this
    /// replica did: as is for the default upstream, under its prefix otherwise.
    pub fn repo_for(&self, upstream: &UpstreamConfig, repo: &RepoName) -> Option<RepoName> {
        if upstream.default {
            return Some(repo.clone());
        }
        repo.with_prefix(&upstream.prefix).ok()
    }
}

/// Whether a request came from a berth (a peer asking its owner, or a berth
/// using this one as its upstream): such requests are never forwarded.
pub fn from_a_berth(user_agent: Option<&str>) -> bool {
    user_agent.is_some_and(|ua| ua.starts_with("berth/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_replica_names_the_same_owner_and_owners_spread() {
        let peers = ["http://a:5000", "http://b:5000", "http://c:5000"];
        let mut owned = [0usize; 3];
        for n in 0..300u32 {
            let d = Digest::sha256_of(&n.to_be_bytes());
            let best = peers
                .iter()
                .enumerate()
                .max_by_key(|(_, p)| score(p, &d))
                .map(|(i, _)| i)
                .unwrap_or_default();
            owned[best] += 1;
        }
        assert!(owned.iter().all(|&n| n > 60), "spread over the three: {owned:?}");
        // A peer gone moves only what it owned.
        let d = Digest::sha256_of(b"x");
        let with_c = peers.iter().max_by_key(|p| score(p, &d)).copied();
        let without_c = peers[..2].iter().max_by_key(|p| score(p, &d)).copied();
        if with_c != Some("http://c:5000") {
            assert_eq!(with_c, without_c);
        }
        assert!(from_a_berth(Some("berth/0.1.0")) && !from_a_berth(Some("docker/24")) && !from_a_berth(None));
    }
}
