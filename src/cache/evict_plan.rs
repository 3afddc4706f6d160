//! What an eviction run removes, decided from the metadata's index alone
//! (pure: no store, no clock). Content goes by *image*, not blob by blob:
//! an image is a manifest no other cached manifest references, with
//! everything it reaches (an index's child manifests, their configs and
//! layers). Images are taken least recently served first; a blob goes only
//! when no image still kept references it, so a base layer shared by two
//! images stays while either is kept. Content that no cached manifest
//! references (blobs pulled by digest alone) goes by its own last use.
//! Images served within `keep_recent`, and anything in `keep` (just
//! committed, or being read), are never taken.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::reference::Digest;
use crate::store::IndexedItem;

/// What the plan starts from.
pub struct PlanInput<'a> {
    pub items: &'a [IndexedItem],
    /// Manifest → what it references (present or not).
    pub refs: &'a HashMap<Digest, Vec<Digest>>,
    /// Never removed, nor anything in a unit holding one of these.
    pub keep: &'a HashSet<Digest>,
    pub now_ms: u64,
    pub keep_recent_ms: u64,
    /// Stop once the stored bytes are at most this.
    pub target: u64,
}

/// Why an item goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "unit", rename_all = "snake_case")]
pub enum Why {
    /// Part of the image whose top manifest is `image`; nothing kept needs it.
    Image { image: String, last_served_ms: u64 },
    /// Referenced by no cached manifest.
    Unreferenced { last_used_ms: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Removal {
    pub digest: String,
    pub size: u64,
    pub manifest: bool,
    pub why: Why,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Items and bytes stored before the run.
    pub items: u64,
    pub stored: u64,
    pub target: u64,
    /// In removal order: whole images (and loose blobs) least recently used first.
    pub removals: Vec<Removal>,
    /// Images (and loose items) left alone because they were used within keep_recent.
    pub kept_recent: usize,
    /// Blobs of removed images kept because an image still kept needs them.
    pub kept_shared: usize,
    /// Whether removing everything allowed still leaves the store over the target.
    pub short: bool,
    /// How long planning took, index reads included (set by the evictor).
    pub plan_ms: u64,
}

impl Plan {
    pub fn bytes(&self) -> u64 {
        self.removals.iter().map(|r| r.size).sum()
    }
}

struct Unit {
    /// Top manifest, for images; None for one loose item.
    image: Option<usize>,
    members: Vec<usize>,
    last_used_ms: u64,
    protected: bool,
    /// Holds a kept digest (pinned, being read), or references one that is
    /// not stored yet (a layer being fetched for the image).
    holds_kept: bool,
}

pub fn plan(input: &PlanInput) -> Plan {
    let items = input.items;
    let index: HashMap<&Digest, usize> = items.iter().enumerate().map(|(i, it)| (&it.digest, i)).collect();
    let stored: u64 = items.iter().map(|i| i.size).fold(0, u64::saturating_add);
    let mut plan = Plan {
        items: items.len() as u64,
        stored,
        target: input.target,
        ..Plan::default()
    };
    if stored <= input.target {
        return plan;
    }
    // References between present items only.
    let children: HashMap<usize, Vec<usize>> = input
        .refs
        .iter()
        .filter_map(|(m, refs)| {
            let at = *index.get(m)?;
            Some((at, refs.iter().filter_map(|r| index.get(r).copied()).collect()))
        })
        .collect();
    let referenced: HashSet<usize> = children.values().flatten().copied().collect();
    let mut units: Vec<Unit> = Vec::new();
    let mut in_an_image = vec![false; items.len()];
    let mut roots: Vec<usize> = children.keys().copied().filter(|m| !referenced.contains(m)).collect();
    roots.sort_unstable();
    for root in roots {
        let mut members = Vec::new();
        let mut seen = HashSet::new();
        let mut todo = vec![root];
        let mut last_used_ms = 0;
        let mut holds_kept = false;
        while let Some(at) = todo.pop() {
            if !seen.insert(at) {
                continue;
            }
            members.push(at);
            in_an_image[at] = true;
            // A kept reference counts whether it is stored or not (yet): a
            // layer being fetched keeps the image it completes.
            holds_kept |= input.keep.contains(&items[at].digest)
                || input
                    .refs
                    .get(&items[at].digest)
                    .is_some_and(|refs| refs.iter().any(|r| input.keep.contains(r)));
            if let Some(kids) = children.get(&at) {
                // Recency of an image: when any of its manifests was served.
                last_used_ms = last_used_ms.max(items[at].last_used_ms);
                todo.extend(kids);
            }
        }
        units.push(Unit {
            image: Some(root),
            members,
            last_used_ms,
            protected: false,
            holds_kept,
        });
    }
    for (at, _) in items.iter().enumerate().filter(|(at, _)| !in_an_image[*at]) {
        units.push(Unit {
            image: None,
            members: vec![at],
            last_used_ms: items[at].last_used_ms,
            protected: false,
            holds_kept: input.keep.contains(&items[at].digest),
        });
    }
    let recent_since = input.now_ms.saturating_sub(input.keep_recent_ms);
    let mut holders = vec![0usize; items.len()];
    for unit in &mut units {
        unit.protected = unit.holds_kept || (input.keep_recent_ms > 0 && unit.last_used_ms >= recent_since);
        for &m in &unit.members {
            holders[m] += 1;
        }
    }
    plan.kept_recent = units.iter().filter(|u| u.protected && !u.holds_kept).count();
    let mut order: Vec<usize> = (0..units.len()).filter(|&u| !units[u].protected).collect();
    order.sort_by_key(|&u| (units[u].last_used_ms, units[u].members.first().copied()));
    let mut left = stored;
    for u in order {
        if left <= input.target {
            break;
        }
        let unit = &units[u];
        let why = match unit.image {
            Some(root) => Why::Image {
                image: items[root].digest.to_string(),
                last_served_ms: unit.last_used_ms,
            },
            None => Why::Unreferenced {
                last_used_ms: unit.last_used_ms,
            },
        };
        for &m in &unit.members {
            holders[m] = holders[m].saturating_sub(1);
            if holders[m] > 0 {
                plan.kept_shared += 1;
                continue;
            }
            left = left.saturating_sub(items[m].size);
            plan.removals.push(Removal {
                digest: items[m].digest.to_string(),
                size: items[m].size,
                manifest: children.contains_key(&m),
                why: why.clone(),
            });
        }
    }
    plan.short = left > input.target;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    fn item(n: u8, size: u64, used: u64) -> IndexedItem {
        IndexedItem {
            digest: d(n),
            size,
            last_used_ms: used,
        }
    }

    fn removed(p: &Plan) -> Vec<String> {
        let mut r: Vec<String> = p.removals.iter().map(|r| r.digest.clone()).collect();
        r.sort();
        r
    }

    fn names(ns: &[u8]) -> Vec<String> {
        let mut r: Vec<String> = ns.iter().map(|&n| d(n).to_string()).collect();
        r.sort();
        r
    }

    /// Two images sharing base layer 10: image A = manifest 1 → {10, 11},
    /// image B = manifest 2 → {10, 12}. A's manifest was served last, but its
    /// own layer 11 is the oldest blob: blob-by-blob LRU would take 11 and
    /// break A; by image, B goes and 10 stays.
    #[test]
    fn the_least_recently_served_image_goes_and_shared_layers_stay() {
        let items = [
            item(1, 1, 300),
            item(2, 1, 200),
            item(10, 40, 200),
            item(11, 10, 100),
            item(12, 30, 200),
        ];
        let refs = HashMap::from([(d(1), vec![d(10), d(11)]), (d(2), vec![d(10), d(12)])]);
        let keep = HashSet::new();
        let input = PlanInput {
            items: &items,
            refs: &refs,
            keep: &keep,
            now_ms: 10_000,
            keep_recent_ms: 0,
            target: 60,
        };
        let p = plan(&input);
        assert_eq!(removed(&p), names(&[2, 12]));
        assert_eq!(p.kept_shared, 1, "layer 10 is still A's");
        assert!(!p.short);
        assert_eq!(
            p.removals[0].why,
            Why::Image {
                image: d(2).to_string(),
                last_served_ms: 200
            }
        );
        // Pressure for more: A goes too, and 10 with it.
        let p = plan(&PlanInput { target: 0, ..input });
        assert_eq!(removed(&p), names(&[1, 2, 10, 11, 12]));
    }

    /// Image 1 → {10, 11}, 11 being fetched now (kept, not stored yet):
    /// the manifest and layer 10 stay, or the fetch would complete an image
    /// whose manifest is gone.
    #[test]
    fn an_image_whose_layer_is_being_fetched_stays() {
        let items = [item(1, 1, 100), item(10, 10, 100), item(2, 1, 50), item(20, 10, 50)];
        let refs = HashMap::from([(d(1), vec![d(10), d(11)]), (d(2), vec![d(20)])]);
        let keep = HashSet::from([d(11)]);
        let input = PlanInput {
            items: &items,
            refs: &refs,
            keep: &keep,
            now_ms: 10_000,
            keep_recent_ms: 0,
            target: 0,
        };
        let p = plan(&input);
        assert_eq!(removed(&p), names(&[2, 20]));
        assert!(p.short);
        assert_eq!(p.kept_recent, 0, "kept for the fetch, not for recency");
        let none = HashSet::new();
        let p = plan(&PlanInput { keep: &none, ..input });
        assert_eq!(removed(&p), names(&[1, 2, 10, 20]));
    }

    #[test]
    fn index_children_belong_to_the_index_and_recent_images_are_kept() {
        // Index 1 → manifests 2, 3 → layers 10, 11; loose blob 20.
        let items = [
            item(1, 1, 100),
            item(2, 1, 900),
            item(3, 1, 100),
            item(10, 10, 100),
            item(11, 10, 100),
            item(20, 10, 50),
        ];
        let refs = HashMap::from([(d(1), vec![d(2), d(3)]), (d(2), vec![d(10)]), (d(3), vec![d(11)])]);
        let keep = HashSet::new();
        let input = PlanInput {
            items: &items,
            refs: &refs,
            keep: &keep,
            now_ms: 1000,
            keep_recent_ms: 500,
            target: 0,
        };
        // Child 2 was served at 900, within keep_recent: the whole index stays.
        let p = plan(&input);
        assert_eq!(removed(&p), names(&[20]));
        assert_eq!(p.kept_recent, 1);
        assert!(p.short);
        // Without keep_recent everything goes, loose blob 20 (oldest) first.
        let p = plan(&PlanInput {
            keep_recent_ms: 0,
            ..input
        });
        assert_eq!(p.removals[0].digest, d(20).to_string());
        assert_eq!(removed(&p), names(&[1, 2, 3, 10, 11, 20]));
        assert!(p.removals.iter().filter(|r| r.manifest).count() == 3);
    }

    #[test]
    fn nothing_kept_or_under_the_target_is_planned() {
        let items = [item(1, 1, 10), item(10, 10, 10), item(20, 10, 5)];
        let refs = HashMap::from([(d(1), vec![d(10)])]);
        // Layer 10 is being read: its image stays whole.
        let keep = HashSet::from([d(10)]);
        let input = PlanInput {
            items: &items,
            refs: &refs,
            keep: &keep,
            now_ms: 100,
            keep_recent_ms: 0,
            target: 0,
        };
        assert_eq!(removed(&plan(&input)), names(&[20]));
        assert_eq!(
            plan(&PlanInput { target: 21, ..input }),
            Plan {
                items: 3,
                stored: 21,
                target: 21,
                ..Plan::default()
            }
        );
    }
}
