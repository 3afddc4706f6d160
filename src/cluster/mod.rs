//! Replicas that share one `[storage]` bucket: each digest has an owner
//! among `[cluster] peers` by rendezvous hashing (every replica computes the
//! same owner from the same list, and a peer added or gone moves only the
//! digests it wins or held). A replica that misses a blob it does not own
//! streams it from the owner's registry API, verified and not stored again
//! (the owner stores it in the shared bucket), so concurrent cold pulls
//! across the fleet join the owner's single upstream fetch. A request from
//! another berth is never forwarded again, and an owner that cannot be
//! reached means fetching locally: correct first, one fetch second.
//!
//! With `peers_dns`, the list is what a name (a Kubernetes headless Service)
//! resolves to, read again every `DNS_EVERY`: replicas that come and go move
//! only the digests they win or held, as with a list.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

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
    /// Swapped whole when `peers_dns` resolves to another set.
    peers: RwLock<Arc<Vec<Arc<Peer>>>>,
    clients: PeerClients,
    dns: Option<(String, u16)>,
    scheme: String,
    eviction_check: Duration,
}

/// What a peer's client is made from.
struct PeerClients {
    base: UpstreamConfig,
    secret: Option<String>,
    events: Arc<Events>,
}

/// How often `peers_dns` is resolved again.
pub const DNS_EVERY: Duration = Duration::from_secs(15);

/// Where a replica answers what it has served (`InUse`), to the replica
/// evicting for the fleet; under `/v2/` (no repository is named `_berth`)
/// so it passes the same access check as a replica's other requests.
pub const IN_USE_PATH: &str = "/v2/_berth/cluster/in-use";

/// Bound on an `InUse` answer read (a million access times fit).
const MAX_IN_USE_BYTES: usize = 128 << 20;

/// What a replica tells the one evicting for the fleet: when it last
/// served each digest (ms since the epoch), and what it is reading now.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct InUse {
    pub used: Vec<(String, u64)>,
    pub pinned: Vec<String>,
}

/// The key whose owner evicts from the shared bucket for the whole fleet:
/// one replica plans from every replica's access times, so two never
/// delete by two different views, and a replica joining or leaving moves
/// the job only when it wins or held it.
fn eviction_key() -> Digest {
    Digest::sha256_of(b"berth: eviction of the shared bucket")
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

impl PeerClients {
    fn peer(&self, url: &url::Url) -> Result<Peer, UpstreamError> {
        let mut cfg = self.base.clone();
        cfg.name = format!("replica {}", url.as_str().trim_end_matches('/'));
        cfg.endpoints = vec![url.clone()];
        cfg.default = false;
        cfg.prefix = String::new();
        // The owner lets a replica in by the cluster secret.
        cfg.credentials = self.secret.as_ref().map(|secret| crate::config::Credentials {
            username: crate::auth::REPLICA_USER.to_string(),
            password: secret.clone(),
        });
        cfg.offline = false;
        cfg.auth_hosts = Vec::new();
        cfg.convert = crate::config::ConvertMode::Never;
        Ok(Peer {
            url: url.to_string(),
            client: Arc::new(Upstream::direct(&cfg, self.events.clone())?),
        })
    }
}

/// The peer URLs `addrs` name: `scheme://address:port/`, this replica's
/// own left out, each once, in a stable order.
fn urls_of(addrs: &[SocketAddr], scheme: &str, self_url: &str) -> Vec<url::Url> {
    let mut urls: Vec<url::Url> = addrs
        .iter()
        .filter_map(|a| url::Url::parse(&format!("{scheme}://{a}")).ok())
        .filter(|u| u.as_str() != self_url)
        .collect();
    urls.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    urls.dedup();
    urls
}

impl Cluster {
    /// `base`: an upstream's settings the peer clients start from (timeouts,
    /// retries); their endpoint, name and credentials are the peer's.
    pub fn new(config: &ClusterConfig, base: &UpstreamConfig, events: &Arc<Events>) -> Result<Self, UpstreamError> {
        let clients = PeerClients {
            base: base.clone(),
            secret: config.secret.clone(),
            events: events.clone(),
        };
        let mut peers = Vec::new();
        for url in config.peers.iter().filter(|p| **p != config.self_url) {
            peers.push(Arc::new(clients.peer(url)?));
        }
        Ok(Self {
            self_url: config.self_url.to_string(),
            peers: RwLock::new(Arc::new(peers)),
            clients,
            dns: config.peers_dns.clone(),
            scheme: config.self_url.scheme().to_string(),
            eviction_check: config.eviction_check,
        })
    }

    fn current(&self) -> Arc<Vec<Arc<Peer>>> {
        self.peers.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The peer that owns `digest`; None when this replica does.
    pub fn owner(&self, digest: &Digest) -> Option<Arc<Peer>> {
        let mine = score(&self.self_url, digest);
        self.current()
            .iter()
            .map(|p| (score(&p.url, digest), p))
            .filter(|(s, _)| *s > mine)
            .max_by_key(|(s, _)| *s)
            .map(|(_, p)| p.clone())
    }

    /// `[cluster] eviction_check`.
    pub fn eviction_check(&self) -> Duration {
        self.eviction_check
    }

    /// Whether this replica evicts from the shared bucket for the fleet now.
    pub fn evicts_here(&self) -> bool {
        self.owner(&eviction_key()).is_none()
    }

    /// What every other replica says it has served and is reading, each
    /// with its URL; a replica that does not answer, with why.
    pub async fn in_use_of_peers(&self) -> Vec<(String, Result<InUse, String>)> {
        let peers = self.current();
        let asks = peers.iter().map(|p| async move {
            let answer = match p.client.internal_get(IN_USE_PATH, MAX_IN_USE_BYTES).await {
                Ok(body) => serde_json::from_slice::<InUse>(&body).map_err(|e| format!("not an in-use answer: {e}")),
                Err(e) => Err(e.to_string()),
            };
            (p.url.clone(), answer)
        });
        futures_util::future::join_all(asks).await
    }

    /// The other replicas' URLs now.
    pub fn peer_urls(&self) -> Vec<String> {
        self.current().iter().map(|p| p.url.clone()).collect()
    }

    /// Put `urls` in force as the other replicas, keeping the clients (and
    /// their circuit state) of those already known. Whether the set changed.
    fn adopt(&self, urls: &[url::Url]) -> bool {
        let now = self.current();
        if now.len() == urls.len() && now.iter().zip(urls).all(|(p, u)| p.url == u.as_str()) {
            return false;
        }
        let mut next = Vec::with_capacity(urls.len());
        for url in urls {
            match now.iter().find(|p| p.url == url.as_str()) {
                Some(known) => next.push(known.clone()),
                None => match self.clients.peer(url) {
                    Ok(p) => next.push(Arc::new(p)),
                    Err(e) => {
                        tracing::warn!(peer = %url, error = %e, "cluster: cannot make a client for this peer; left out")
                    }
                },
            }
        }
        *self.peers.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        true
    }

    /// Resolve `peers_dns` now and adopt what it names. A failed lookup
    /// keeps the peers in force (a DNS hiccup must not make every replica
    /// the owner of everything); no `peers_dns`: nothing to do.
    pub async fn resolve(&self) {
        let Some((host, port)) = &self.dns else { return };
        match tokio::net::lookup_host((host.as_str(), *port)).await {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                let urls = urls_of(&addrs, &self.scheme, &self.self_url);
                if self.adopt(&urls) {
                    tracing::info!(name = %host, peers = ?self.peer_urls(), "cluster: peers from DNS");
                }
            }
            Err(e) => {
                tracing::warn!(name = %host, error = %e, "cluster: peers_dns did not resolve; keeping the peers in force")
            }
        }
    }

    /// Resolve `peers_dns` every `DNS_EVERY` while the cluster is in use.
    pub fn watch(cluster: &Arc<Cluster>) {
        if cluster.dns.is_none() {
            return;
        }
        let weak = Arc::downgrade(cluster);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(DNS_EVERY).await;
                let Some(cluster) = weak.upgrade() else { return };
                cluster.resolve().await;
            }
        });
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

    fn dns_cluster() -> Cluster {
        let text = "[[upstream]]\nname = \"docker.io\"\nendpoints = [\"https://r\"]\ndefault = true\n\
                    [cluster]\nself = \"http://10.0.0.1:5000\"\npeers_dns = \"berth-peers.default.svc:5000\"\n";
        let config = crate::config::Config::from_toml(text, "test", crate::config::Overrides::default()).unwrap();
        let cluster = config.cluster.as_ref().unwrap();
        assert_eq!(cluster.peers_dns, Some(("berth-peers.default.svc".to_string(), 5000)));
        Cluster::new(cluster, &config.upstreams[0], &Arc::new(Events::default())).unwrap()
    }

    #[test]
    fn resolved_addresses_become_peers_without_this_replica() {
        let addrs: Vec<SocketAddr> = ["10.0.0.2:5000", "10.0.0.1:5000", "10.0.0.2:5000", "[fd00::1]:5000"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let urls: Vec<String> = urls_of(&addrs, "http", "http://10.0.0.1:5000/")
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(urls, ["http://10.0.0.2:5000/", "http://[fd00::1]:5000/"]);
    }

    #[tokio::test]
    async fn a_replica_that_comes_or_goes_in_dns_moves_only_the_digests_it_wins_or_held() {
        let cluster = dns_cluster();
        assert!(cluster.peer_urls().is_empty(), "alone until resolved");
        let digests: Vec<Digest> = (0..200u32).map(|n| Digest::sha256_of(&n.to_be_bytes())).collect();
        assert!(digests.iter().all(|d| cluster.owner(d).is_none()), "alone, it owns all");
        let url = |s: &str| url::Url::parse(s).unwrap();
        let two = [url("http://10.0.0.2:5000"), url("http://10.0.0.3:5000")];
        assert!(cluster.adopt(&two));
        assert!(!cluster.adopt(&two), "the same set is no change");
        let owners = |c: &Cluster| -> Vec<Option<String>> {
            digests.iter().map(|d| c.owner(d).map(|p| p.url.clone())).collect()
        };
        let before = owners(&cluster);
        let mine = before.iter().filter(|o| o.is_none()).count();
        assert!(mine > 30 && mine < 110, "about a third stays here: {mine}");
        let kept = cluster.owner(&digests[0]).map(|p| Arc::as_ptr(&p.client));
        // 10.0.0.3 goes: only what it owned moves, and the other's client is kept.
        assert!(cluster.adopt(&two[..1]));
        let after = owners(&cluster);
        for (b, a) in before.iter().zip(&after) {
            if b.as_deref() != Some("http://10.0.0.3:5000/") {
                assert_eq!(b, a, "a digest 10.0.0.3 did not own stays where it was");
            }
        }
        if before[0].as_deref() == Some("http://10.0.0.2:5000/") {
            assert_eq!(cluster.owner(&digests[0]).map(|p| Arc::as_ptr(&p.client)), kept);
        }
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_keeps_the_peers_in_force() {
        let cluster = dns_cluster();
        let url = url::Url::parse("http://10.0.0.2:5000").unwrap();
        cluster.adopt(std::slice::from_ref(&url));
        // `.invalid` never resolves (RFC 6761); the lookup fails, the set stays.
        let cluster = Cluster {
            dns: Some(("berth-peers.invalid".into(), 5000)),
            ..cluster
        };
        cluster.resolve().await;
        assert_eq!(cluster.peer_urls(), ["http://10.0.0.2:5000/"]);
    }

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
