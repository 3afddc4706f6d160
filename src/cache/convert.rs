//! Conversion through the cache: fetch what an OCI manifest or index needs
//! (children, configs for missing platforms), convert with the pure functions
//! of `crate::convert`, and persist the converted bytes and the
//! original → converted mapping so later requests by either digest are
//! answered from the cache, with the upstream down.

use std::collections::HashMap;

use thiserror::Error;

use super::{BlobSource, Cache, CacheError, CachedManifest};
use crate::convert::{self, CONVERSION_VERSION, ChildOutcome, Refusal};
use crate::media::{DOCKER_MANIFEST_V2, OCI_INDEX, OCI_MANIFEST};
use crate::reference::{Digest, Reference, RepoName};

/// Image configs are small; this bounds what is read to learn a platform.
const MAX_CONFIG_SIZE: u64 = 4 << 20;

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

impl From<super::meta::MetaError> for ConvertError {
    fn from(e: super::meta::MetaError) -> Self {
        ConvertError::Cache(e.into())
    }
}

impl Cache {
    /// Whether `digest` names a manifest berth produced by conversion.
    pub fn is_converted(&self, digest: &Digest) -> bool {
        self.meta.is_converted(digest).unwrap_or(false)
    }

    /// The Docker schema2 form of an OCI manifest or index.
    pub async fn converted(
        &self,
        up: usize,
        repo: &RepoName,
        m: &CachedManifest,
    ) -> Result<CachedManifest, ConvertError> {
        if let Some(d) = self.meta.converted(CONVERSION_VERSION, &m.digest)?
            && let Some(c) = self.load_manifest(&d).await
        {
            return Ok(c);
        }
        let (bytes, media_type) = match m.media_type.as_str() {
            OCI_MANIFEST => (convert::convert_manifest(&m.bytes)?, DOCKER_MANIFEST_V2),
            OCI_INDEX => (
                self.convert_index(up, repo, m).await?,
                crate::media::DOCKER_MANIFEST_LIST,
            ),
            other => {
                return Err(Refusal::Invalid(format!("{other} is not an OCI manifest type")).into());
            }
        };
        let digest = Digest::sha256_of(&bytes);
        if self.store.put(&digest, &bytes)? {
            self.evictor.committed(&digest, bytes.len() as u64);
        }
        self.meta.put_manifest(&digest, media_type, bytes.len() as u64)?;
        self.meta.put_converted(CONVERSION_VERSION, &m.digest, &digest)?;
        tracing::info!(original = %m.digest, converted = %digest, media_type, "converted manifest to Docker schema2");
        Ok(CachedManifest {
            bytes: bytes.into(),
            media_type: media_type.to_string(),
            digest,
        })
    }

    async fn convert_index(&self, up: usize, repo: &RepoName, index: &CachedManifest) -> Result<Vec<u8>, ConvertError> {
        let mut outcomes = HashMap::new();
        for child in convert::index_children(&index.bytes)? {
            let outcome = if convert::is_attestation(&child) {
                ChildOutcome::Dropped(Refusal::UnknownLayerType("attestation manifest".into()))
            } else {
                self.convert_child(up, repo, &child).await?
            };
            if let ChildOutcome::Dropped(why) = &outcome {
                tracing::debug!(index = %index.digest, child = %child.digest, reason = why.reason(), "index child dropped in conversion");
            }
            outcomes.insert(child.digest.clone(), outcome);
        }
        Ok(convert::convert_index(&index.bytes, &outcomes)?)
    }

    async fn convert_child(
        &self,
        up: usize,
        repo: &RepoName,
        child: &convert::Descriptor,
    ) -> Result<ChildOutcome, ConvertError> {
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
        let original = self.manifest(up, repo, &Reference::Digest(digest)).await?;
        let converted = match Box::pin(self.converted(up, repo, &original)).await {
            Ok(c) => c,
            Err(ConvertError::Refused(r)) => return Ok(ChildOutcome::Dropped(r)),
            Err(e) => return Err(e),
        };
        // A platform is read from the child's config, never guessed.
        let platform = match child.platform {
            Some(_) => None,
            None => self.config_platform(up, repo, &original.bytes).await?,
        };
        Ok(ChildOutcome::Kept {
            digest: converted.digest.to_string(),
            size: converted.bytes.len() as u64,
            media_type: converted.media_type,
            platform,
        })
    }

    async fn config_platform(
        &self,
        up: usize,
        repo: &RepoName,
        manifest: &[u8],
    ) -> Result<Option<convert::Platform>, ConvertError> {
        let config = serde_json::from_slice::<serde_json::Value>(manifest)
            .ok()
            .and_then(|v| v["config"]["digest"].as_str().and_then(|d| Digest::parse(d).ok()));
        let Some(config) = config else {
            return Ok(None);
        };
        let path = match self.blob(up, repo, &config).await? {
            BlobSource::Stored { path, size } if size <= MAX_CONFIG_SIZE => path,
            BlobSource::Stored { .. } => return Ok(None),
            BlobSource::Fetching { mut joined, .. } => joined.done().await?.1,
            BlobSource::PassThrough { mut pass, .. } => {
                let mut bytes = Vec::new();
                while let Some(chunk) = pass.next_chunk().await? {
                    if bytes.len() + chunk.len() > MAX_CONFIG_SIZE as usize {
                        return Ok(None);
                    }
                    bytes.extend_from_slice(&chunk);
                }
                return Ok(convert::platform_from_config(&bytes));
            }
        };
        let bytes = tokio::fs::read(path).await.map_err(CacheError::from)?;
        Ok(convert::platform_from_config(&bytes))
    }
}
