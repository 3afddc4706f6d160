//! The cache's index made to match what the store holds, when the cache
//! opens: records pointing at missing content dropped, the index of items
//! set to the listing, manifest references filled in. A shared bucket that
//! does not answer then is listed again in the background, berth serving by
//! pass-through meanwhile (see `store::Gate`).

use std::sync::Arc;
use std::time::Duration;

use super::CacheError;
use super::evict::Evictor;
use crate::store::{BlobStore, Gate, MetaStore, StoredItem};

/// What the store held when the cache opened.
pub(super) enum Listing {
    /// Listed: the index is made to match before berth serves.
    Now(Vec<StoredItem>),
    /// A shared bucket that did not answer: listed again until it does; its
    /// gate opens after the index matches.
    Later(Arc<Gate>),
}

/// First wait before listing a bucket again, doubled up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(15);

/// Make the index match `items`; the bytes they hold.
pub(super) async fn reconcile(
    store: &dyn BlobStore,
    meta: &dyn MetaStore,
    items: &[StoredItem],
) -> Result<u64, CacheError> {
    let present = items.iter().map(|i| i.digest.clone()).collect();
    let removed = meta.repair(&present).await?;
    if removed > 0 {
        tracing::warn!(
            removed,
            "cache metadata pointed at missing content; those records were dropped"
        );
    }
    meta.sync_items(items).await?;
    record_missing_refs(store, meta).await?;
    Ok(items.iter().map(|i| i.size).sum())
}

/// List the bucket behind `gate` until it answers, make the index match and
/// open the gate: from then on pulls are stored again.
pub(super) async fn open_when_the_bucket_answers(gate: Arc<Gate>, meta: Arc<dyn MetaStore>, evictor: Arc<Evictor>) {
    let mut wait = RETRY_FIRST;
    loop {
        tokio::time::sleep(wait).await;
        let listed = gate.inner().list().await.map_err(CacheError::from);
        let reconciled = match listed {
            Ok(items) => reconcile(gate.inner().as_ref(), meta.as_ref(), &items)
                .await
                .map(|used| (items.len(), used)),
            Err(e) => Err(e),
        };
        match reconciled {
            Ok((items, used)) => {
                // Nothing was stored while the gate was shut: the listing is
                // all there is.
                evictor.reaccount(used);
                gate.open();
                tracing::info!(
                    items,
                    used,
                    "the bucket answered: its listing is in the index, pulls are stored again"
                );
                return;
            }
            Err(e) => tracing::debug!(error = %e, "the bucket still does not answer"),
        }
        wait = wait.saturating_mul(2).min(RETRY_MAX);
    }
}

/// Manifest records written before berth kept references get them from the
/// stored bytes, once, so eviction knows every image's content.
async fn record_missing_refs(store: &dyn BlobStore, meta: &dyn MetaStore) -> Result<(), CacheError> {
    for (digest, refs) in meta.manifest_refs().await? {
        if refs.is_some() {
            continue;
        }
        let Some(bytes) = store.read(&digest, crate::upstream::MAX_MANIFEST_SIZE as u64).await? else {
            continue;
        };
        let Some(rec) = meta.manifest(&digest).await? else {
            continue;
        };
        let refs = crate::manifest::references(&bytes);
        meta.put_manifest(&digest, &rec.media_type, rec.size, &refs).await?;
    }
    Ok(())
}
