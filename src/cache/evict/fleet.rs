//! Eviction for replicas sharing one bucket. Each replica deciding alone
//! would delete by its own view: what it committed since it started and
//! what it served, so one replica could take the image another serves
//! every minute. Instead one replica evicts for the fleet (the owner of a
//! fixed key by the same rendezvous hashing as digests): it sizes the
//! bucket up by listing it every `[cluster] eviction_check`, and plans from
//! that listing with every replica's access times and reads under way
//! (asked of each at `cluster::IN_USE_PATH`). The others never delete.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Evictor;
use crate::cluster::Cluster;
use crate::reference::Digest;
use crate::store::IndexedItem;

impl Evictor {
    /// Evict as one of `cluster`'s replicas from now on.
    pub fn in_fleet(self: &Arc<Self>, cluster: Arc<Cluster>) {
        let every = cluster.eviction_check();
        if self.fleet.set(cluster).is_err() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                this.size_up_bucket().await;
            }
        });
    }

    /// On the replica evicting for the fleet: the bucket's size as listed
    /// now becomes `used` (every replica's commits), then evict if over.
    async fn size_up_bucket(self: &Arc<Self>) {
        let Some(cluster) = self.fleet.get() else { return };
        let here = cluster.evicts_here();
        self.events.metrics.cluster_evicting.set(i64::from(here));
        if !here {
            return;
        }
        match self.store.list().await {
            Ok(listed) => {
                let total = listed.iter().fold(0u64, |sum, i| sum.saturating_add(i.size));
                self.used.store(total, Ordering::SeqCst);
                self.evict_if_over(None);
            }
            Err(e) => tracing::warn!(error = %e, "eviction: cannot list the shared bucket to size it up"),
        }
    }

    /// What a fleet-wide plan starts from: the bucket as listed now (every
    /// replica's commits), each item last used when any replica last served
    /// it; what any replica is reading joins `kept`. A replica that does not
    /// answer is planned without (it is down, or its reads fail over to a
    /// fetch, verified as always): eviction must not stop with it.
    pub(super) async fn fleet_items(
        &self,
        cluster: &Cluster,
        kept: &mut HashSet<Digest>,
    ) -> std::io::Result<Vec<IndexedItem>> {
        let listed = self.store.list().await?;
        self.meta.sync_items(&listed).await.map_err(std::io::Error::other)?;
        // What the images the others stored reference: an image goes whole.
        self.meta
            .learn_shared_manifests()
            .await
            .map_err(std::io::Error::other)?;
        let mut items = self.meta.items().await.map_err(std::io::Error::other)?;
        let mut served: HashMap<Digest, u64> = HashMap::new();
        for (peer, answer) in cluster.in_use_of_peers().await {
            match answer {
                Ok(in_use) => {
                    for (digest, ms) in in_use.used {
                        if let Ok(digest) = Digest::parse(&digest) {
                            let last = served.entry(digest).or_insert(0);
                            *last = (*last).max(ms);
                        }
                    }
                    kept.extend(in_use.pinned.iter().filter_map(|d| Digest::parse(d).ok()));
                }
                Err(error) => tracing::warn!(
                    peer = %peer,
                    error = %error,
                    "eviction: a replica did not say what it served; planning without its access times"
                ),
            }
        }
        for item in &mut items {
            if let Some(&ms) = served.get(&item.digest) {
                item.last_used_ms = item.last_used_ms.max(ms);
            }
        }
        Ok(items)
    }

    /// What this replica tells the one evicting for the fleet.
    pub async fn in_use(&self) -> Result<crate::cluster::InUse, crate::store::MetaError> {
        let used = self.meta.access_times().await?;
        Ok(crate::cluster::InUse {
            used: used.into_iter().map(|(d, ms)| (d.to_string(), ms)).collect(),
            pinned: self.pins.held().iter().map(Digest::to_string).collect(),
        })
    }
}
