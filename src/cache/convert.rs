//! Conversion through the cache: fetch what an OCI manifest or index needs
//! (children, configs for missing platforms), convert with the pure functions
//! of `crate::convert`, and persist the converted bytes and the
//! original → converted mapping so later requests by either digest are
//! answered from the cache, with the upstream down.

use std::collections::HashMap;

use thiserror::Error;

use super::{Cache, CacheError, CachedManifest, ReadMode};
use crate::convert::{self, CONVERSION_VERSION, ChildOutcome, Refusal};
use crate::media::{DOCKER_MANIFEST_V2, OCI_INDEX, OCI_MANIFEST};
use crate::reference::{Digest, Reference};
use crate::routing::Route;

/// Image configs are small; this bounds what is read to learn a platform
/// (the manifest limit: a config is a JSON document like a manifest).
const MAX_CONFIG_SIZE: u64 = crate::upstream::MAX_MANIFEST_SIZE as u64;
/// Children of one index that berth converts, at most. Real multi-platform
/// images have a few dozen (with attestations); more is not an image anyone
/// pulls, and each child costs a manifest fetch. Children that are indexes
/// themselves are dropped, so conversion never nests deeper than one level.
pub const MAX_INDEX_CHILDREN: usize = 256;

#[derive(Debug, Error)]
pub enum ConvertError {
    #[error("{0}")]
    Refused(#[from] Refusal),
    #[error("{0}")]
    Cache(#[from] CacheError),
}

impl From<std::io::Error> for ConvertError {
    fn from(e: std::io::Error) -> Self {
        ConvertError::Cache(e.into())
    }
}

impl From<crate::store::MetaError> for ConvertError {
    fn from(e: crate::store::MetaError) -> Self {
        ConvertError::Cache(e.into())
    }
}

impl Cache {
    /// Whether `digest` names a manifest berth produced by conversion.
    pub async fn is_converted(&self, digest: &Digest) -> bool {
        self.meta.is_converted(digest).await.unwrap_or(false)
    }

    /// The Docker schema2 form of an OCI manifest or index.
    pub async fn converted(&self, route: &Route, m: &CachedManifest) -> Result<CachedManifest, ConvertError> {
        // The converted digest is linked to every repository it is made or
        // reused for: the upstream has never heard of it, so no HEAD could
        // confirm it later, and a client GETs it by digest next.
        if let Some(d) = self.meta.converted(CONVERSION_VERSION, &m.digest).await?
            && let Some(c) = self.load_manifest(&d).await
        {
            self.link(route, &c.digest).await;
            return Ok(c);
        }
        let (bytes, media_type) = match m.media_type.as_str() {
            OCI_MANIFEST => (convert::convert_manifest(&m.bytes)?, DOCKER_MANIFEST_V2),
            OCI_INDEX => (self.convert_index(route, m).await?, crate::media::DOCKER_MANIFEST_LIST),
            other => {
                return Err(Refusal::Invalid(format!("{other} is not an OCI manifest type")).into());
            }
        };
        let digest = Digest::sha256_of(&bytes);
        let size = bytes.len() as u64;
        let bytes = bytes::Bytes::from(bytes);
        let written = self.store.put(&digest, bytes.clone()).await?;
        let refs = crate::manifest::references(&bytes);
        self.meta.put_manifest(&digest, media_type, size, &refs).await?;
        if written {
            self.evictor.committed(&digest, size).await;
        }
        self.meta.put_converted(CONVERSION_VERSION, &m.digest, &digest).await?;
        self.link(route, &digest).await;
        tracing::info!(original = %m.digest, converted = %digest, media_type, "converted manifest to Docker schema2");
        Ok(CachedManifest {
            bytes,
            media_type: media_type.to_string(),
            digest,
        })
    }

    async fn convert_index(&self, route: &Route, index: &CachedManifest) -> Result<Vec<u8>, ConvertError> {
        let mut outcomes = HashMap::new();
        let children = convert::index_children(&index.bytes)?;
        if children.len() > MAX_INDEX_CHILDREN {
            return Err(Refusal::Invalid(format!(
                "the index has {} children; berth converts indexes of at most {MAX_INDEX_CHILDREN}",
                children.len()
            ))
            .into());
        }
        for child in children {
            let outcome = if convert::is_attestation(&child) {
                ChildOutcome::Dropped(Refusal::UnknownLayerType("attestation manifest".into()))
            } else {
                self.convert_child(route, &child).await?
            };
            if let ChildOutcome::Dropped(why) = &outcome {
                tracing::debug!(index = %index.digest, child = %child.digest, reason = why.reason(), "index child dropped in conversion");
            }
            outcomes.insert(child.digest.clone(), outcome);
        }
        Ok(convert::convert_index(&index.bytes, &outcomes)?)
    }

    async fn convert_child(&self, route: &Route, child: &convert::Descriptor) -> Result<ChildOutcome, ConvertError> {
        let Ok(digest) = Digest::parse(&child.digest) else {
            return Ok(ChildOutcome::Dropped(Refusal::Invalid(format!(
                "bad child digest {}",
                child.digest
            ))));
        };
        if child.media_type == DOCKER_MANIFEST_V2 {
            return Ok(ChildOutcome::Kept {
                digest: child.digest.clone(),
                size: child.size,
                media_type: child.media_type.clone(),
                platform: None,
            });
        }
        if child.media_type != OCI_MANIFEST {
            return Ok(ChildOutcome::Dropped(Refusal::UnknownLayerType(
                child.media_type.clone(),
            )));
        }
        let original = self.manifest(route, &Reference::Digest(digest)).await?;
        let converted = match Box::pin(self.converted(route, &original)).await {
            Ok(c) => c,
            Err(ConvertError::Refused(r)) => return Ok(ChildOutcome::Dropped(r)),
            Err(e) => return Err(e),
        };
        // A platform is read from the child's config, never guessed.
        let platform = match child.platform {
            Some(_) => None,
            None => self.config_platform(route, &original.bytes).await?,
        };
        Ok(ChildOutcome::Kept {
            digest: converted.digest.to_string(),
            size: converted.bytes.len() as u64,
            media_type: converted.media_type,
            platform,
        })
    }

    async fn config_platform(&self, route: &Route, manifest: &[u8]) -> Result<Option<convert::Platform>, ConvertError> {
        let value = serde_json::from_slice::<serde_json::Value>(manifest).ok();
        let descriptor = value.as_ref().map(|v| &v["config"]);
        let config = descriptor.and_then(|c| c["digest"].as_str().and_then(|d| Digest::parse(d).ok()));
        let Some(config) = config else {
            return Ok(None);
        };
        // Refused before anything is fetched: a "config" announced as large
        // is not one, and reading it would be gigabytes for one request.
        let declared = descriptor.and_then(|c| c["size"].as_u64());
        if declared.is_none_or(|size| size > MAX_CONFIG_SIZE) {
            tracing::debug!(config = %config, ?declared, "image config missing a size or over the limit; platform not read");
            return Ok(None);
        }
        let blob = self.blob(route, &config).await?;
        let size = blob.size();
        if size.is_some_and(|size| size > MAX_CONFIG_SIZE) {
            return Ok(None);
        }
        let Some(bytes) = collect_limited(blob.range(0, size, ReadMode::Copied).await?).await? else {
            return Ok(None);
        };
        Ok(convert::platform_from_config(&bytes))
    }
}

/// A config blob's bytes, read with the limit: `None` once it exceeds it.
async fn collect_limited(
    stream: impl futures_util::Stream<Item = Result<bytes::Bytes, CacheError>>,
) -> Result<Option<Vec<u8>>, CacheError> {
    use futures_util::StreamExt;
    let mut stream = std::pin::pin!(stream);
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if (bytes.len() + chunk.len()) as u64 > MAX_CONFIG_SIZE {
            return Ok(None);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Some(bytes))
}
