//! `MetaStore` for replicas sharing one bucket (`[storage] kind = "s3"`):
//! every record another replica needs (tags with their check time, manifest
//! records, tag lists, conversions, repository links, referrers) is an
//! object under `meta/` in the bucket, so a tag pulled through one replica
//! is served by the others when the upstream is down, and a replica that
//! lost its disk rebuilds nothing. What is this replica's own (access
//! times, the eviction index) stays in its local sled, which also keeps a
//! copy of every shared record it read or wrote.
//!
//! Records keyed by digest never change, so the local copy answers them.
//! Tags, tag lists and referrers change: they are read from the bucket
//! (the local copy answers only when the bucket cannot).

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use object_store::aws::AmazonS3;
use object_store::path::Path as Key;
use object_store::{ObjectStore, PutPayload};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    IndexedItem, ManifestRecord, MetaError, MetaStore, ReferrersRecord, SledMetaStore, StoredItem, TagEntry,
    TagListRecord, TagRecord, now_secs,
};
use crate::reference::{Digest, RepoName};

pub struct S3MetaStore {
    bucket: Arc<AmazonS3>,
    local: SledMetaStore,
}

fn shared(e: object_store::Error) -> MetaError {
    MetaError::Shared(e.to_string())
}

fn digest_part(d: &Digest) -> String {
    format!("{}-{}", d.algorithm().as_str(), d.hex())
}

impl S3MetaStore {
    pub(super) fn new(bucket: Arc<AmazonS3>, local: SledMetaStore) -> Self {
        Self { bucket, local }
    }

    async fn get_json<T: DeserializeOwned>(&self, key: &Key) -> Result<Option<T>, MetaError> {
        match self.bucket.get(key).await {
            // An undecodable record (another version) is treated as absent.
            Ok(got) => Ok(serde_json::from_slice(&got.bytes().await.map_err(shared)?).ok()),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(shared(e)),
        }
    }

    async fn put_json<T: Serialize>(&self, key: &Key, value: &T) -> Result<(), MetaError> {
        let bytes = serde_json::to_vec(value).map_err(|e| MetaError::Shared(e.to_string()))?;
        self.bucket
            .put(key, PutPayload::from(bytes))
            .await
            .map(drop)
            .map_err(shared)
    }

    async fn exists(&self, key: &Key) -> Result<bool, MetaError> {
        match self.bucket.head(key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(shared(e)),
        }
    }
}

fn tag_key(upstream: &str, repo: &RepoName, tag: &str) -> Key {
    Key::from(format!("meta/tags/{upstream}/{repo}/{tag}"))
}

fn manifest_key(d: &Digest) -> Key {
    Key::from(format!("meta/manifests/{}", digest_part(d)))
}

fn tag_list_key(upstream: &str, repo: &RepoName) -> Key {
    Key::from(format!("meta/tag-lists/{upstream}/{repo}"))
}

fn referrers_key(upstream: &str, repo: &RepoName, subject: &Digest) -> Key {
    Key::from(format!("meta/referrers/{upstream}/{repo}/{}", digest_part(subject)))
}

fn converted_key(version: u32, original: &Digest) -> Key {
    Key::from(format!("meta/converted/v{version}/{}", digest_part(original)))
}

fn converted_from_key(converted: &Digest) -> Key {
    Key::from(format!("meta/converted-from/{}", digest_part(converted)))
}

fn link_key(upstream: &str, repo: &RepoName, d: &Digest) -> Key {
    Key::from(format!("meta/links/{upstream}/{repo}/{}", digest_part(d)))
}

#[derive(Serialize, serde::Deserialize)]
struct Converted {
    digest: String,
}

#[async_trait]
impl MetaStore for S3MetaStore {
    async fn tag(&self, upstream: &str, repo: &RepoName, tag: &str) -> Result<Option<TagRecord>, MetaError> {
        match self.get_json::<TagRecord>(&tag_key(upstream, repo, tag)).await {
            Ok(found) => Ok(found),
            // The bucket cannot answer: what this replica last knew.
            Err(e) => match self.local.tag(upstream, repo, tag).await? {
                Some(rec) => {
                    tracing::warn!(error = %e, "shared tag record unreadable; serving this replica's copy");
                    Ok(Some(rec))
                }
                None => Err(e),
            },
        }
    }

    async fn put_tag(&self, upstream: &str, repo: &RepoName, tag: &str, digest: &Digest) -> Result<(), MetaError> {
        let rec = TagRecord {
            digest: digest.to_string(),
            checked_at: now_secs(),
        };
        self.put_json(&tag_key(upstream, repo, tag), &rec).await?;
        self.local.put_tag(upstream, repo, tag, digest).await
    }

    async fn manifest(&self, digest: &Digest) -> Result<Option<ManifestRecord>, MetaError> {
        if let Some(rec) = self.local.manifest(digest).await? {
            return Ok(Some(rec));
        }
        let rec: Option<ManifestRecord> = self.get_json(&manifest_key(digest)).await?;
        if let Some(r) = &rec {
            let refs: Vec<Digest> = r.refs.iter().flatten().filter_map(|d| Digest::parse(d).ok()).collect();
            self.local.put_manifest(digest, &r.media_type, r.size, &refs).await?;
        }
        Ok(rec)
    }

    async fn put_manifest(
        &self,
        digest: &Digest,
        media_type: &str,
        size: u64,
        refs: &[Digest],
    ) -> Result<(), MetaError> {
        let rec = ManifestRecord::new(media_type, size, refs);
        self.put_json(&manifest_key(digest), &rec).await?;
        self.local.put_manifest(digest, media_type, size, refs).await
    }

    async fn manifest_refs(&self) -> Result<Vec<(Digest, Option<Vec<Digest>>)>, MetaError> {
        self.local.manifest_refs().await
    }

    async fn tag_list(&self, upstream: &str, repo: &RepoName) -> Result<Option<TagListRecord>, MetaError> {
        match self.get_json(&tag_list_key(upstream, repo)).await {
            Ok(found) => Ok(found),
            Err(e) => self.local.tag_list(upstream, repo).await?.map(Some).ok_or(e),
        }
    }

    async fn put_tag_list(&self, upstream: &str, repo: &RepoName, tags: Vec<String>) -> Result<(), MetaError> {
        let rec = TagListRecord {
            tags: tags.clone(),
            fetched_at: now_secs(),
        };
        self.put_json(&tag_list_key(upstream, repo), &rec).await?;
        self.local.put_tag_list(upstream, repo, tags).await
    }

    async fn referrers(
        &self,
        upstream: &str,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Option<ReferrersRecord>, MetaError> {
        match self.get_json(&referrers_key(upstream, repo, subject)).await {
            Ok(found) => Ok(found),
            Err(e) => self.local.referrers(upstream, repo, subject).await?.map(Some).ok_or(e),
        }
    }

    async fn put_referrers(
        &self,
        upstream: &str,
        repo: &RepoName,
        subject: &Digest,
        index: &str,
    ) -> Result<(), MetaError> {
        let rec = ReferrersRecord {
            index: index.to_string(),
            fetched_at: now_secs(),
        };
        self.put_json(&referrers_key(upstream, repo, subject), &rec).await?;
        self.local.put_referrers(upstream, repo, subject, index).await
    }

    async fn converted(&self, version: u32, original: &Digest) -> Result<Option<Digest>, MetaError> {
        if let Some(d) = self.local.converted(version, original).await? {
            return Ok(Some(d));
        }
        let found: Option<Converted> = self.get_json(&converted_key(version, original)).await?;
        let found = found.and_then(|c| Digest::parse(&c.digest).ok());
        if let Some(d) = &found {
            self.local.put_converted(version, original, d).await?;
        }
        Ok(found)
    }

    async fn put_converted(&self, version: u32, original: &Digest, converted: &Digest) -> Result<(), MetaError> {
        let to = Converted {
            digest: converted.to_string(),
        };
        let from = Converted {
            digest: original.to_string(),
        };
        self.put_json(&converted_from_key(converted), &from).await?;
        self.put_json(&converted_key(version, original), &to).await?;
        self.local.put_converted(version, original, converted).await
    }

    async fn is_converted(&self, digest: &Digest) -> Result<bool, MetaError> {
        if self.local.is_converted(digest).await? {
            return Ok(true);
        }
        self.exists(&converted_from_key(digest)).await
    }

    async fn put_link(&self, upstream: &str, repo: &RepoName, digest: &Digest) -> Result<(), MetaError> {
        if self.local.has_link(upstream, repo, digest).await? {
            return Ok(());
        }
        self.bucket
            .put(&link_key(upstream, repo, digest), PutPayload::from_static(b""))
            .await
            .map_err(shared)?;
        self.local.put_link(upstream, repo, digest).await
    }

    async fn has_link(&self, upstream: &str, repo: &RepoName, digest: &Digest) -> Result<bool, MetaError> {
        if self.local.has_link(upstream, repo, digest).await? {
            return Ok(true);
        }
        let found = self.exists(&link_key(upstream, repo, digest)).await?;
        if found {
            self.local.put_link(upstream, repo, digest).await?;
        }
        Ok(found)
    }

    /// Only this replica's copies: what another replica stored is not this
    /// one's to drop.
    async fn repair(&self, present: &HashSet<Digest>) -> Result<usize, MetaError> {
        self.local.repair(present).await
    }

    async fn touch(&self, digest: &Digest) -> Result<(), MetaError> {
        self.local.touch(digest).await
    }

    async fn last_used_ms(&self, digest: &Digest) -> Option<u64> {
        self.local.last_used_ms(digest).await
    }

    async fn forget(&self, digest: &Digest) {
        self.local.forget(digest).await
    }

    async fn put_item(&self, digest: &Digest, size: u64) -> Result<(), MetaError> {
        self.local.put_item(digest, size).await
    }

    async fn items(&self) -> Result<Vec<IndexedItem>, MetaError> {
        self.local.items().await
    }

    async fn sync_items(&self, listed: &[StoredItem]) -> Result<(), MetaError> {
        self.local.sync_items(listed).await
    }

    async fn learn_shared_manifests(&self) -> Result<usize, MetaError> {
        use futures_util::StreamExt;
        let prefix = Key::from("meta/manifests");
        let mut listed = self.bucket.list(Some(&prefix));
        let mut unknown = Vec::new();
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(shared)?;
            let text = meta.location.to_string();
            let Some(digest) = text
                .rsplit('/')
                .next()
                .and_then(|part| part.split_once('-'))
                .and_then(|(algorithm, hex)| Digest::parse(&format!("{algorithm}:{hex}")).ok())
            else {
                continue;
            };
            if self.local.manifest(&digest).await?.is_none() {
                unknown.push(digest);
            }
        }
        let mut learnt = 0;
        for digest in unknown {
            // Reads it from the bucket into the local copy.
            if self.manifest(&digest).await?.is_some() {
                learnt += 1;
            }
        }
        Ok(learnt)
    }

    async fn access_times(&self) -> Result<Vec<(Digest, u64)>, MetaError> {
        self.local.access_times().await
    }

    async fn tags_all(&self) -> Result<Vec<TagEntry>, MetaError> {
        self.local.tags_all().await
    }

    async fn flush(&self) -> Result<(), MetaError> {
        self.local.flush().await
    }
}
