//! `berth export` and `berth import`: moving *registry content* to a site
//! without a network. An export is an OCI image-layout tar (`layout.rs`)
//! holding every manifest, config and layer of the images exactly as the
//! cache serves them, with their referrers (`export.rs`). An import reads an
//! archive without trusting it (`safe_tar.rs`), verifies every digest and
//! that every image is whole before anything becomes visible, then files it
//! under its upstream and repository (`import.rs`). Classic `docker save`
//! archives carry no registry manifests; `docker_save.rs` builds some, with
//! digests that cannot be the origin's. Calls go one way: archive → cache.

mod docker_save;
mod export;
mod import;
pub mod layout;
pub mod safe_tar;

use thiserror::Error;

use crate::cache::CacheError;

pub use docker_save::DOCKER_SAVE_WARNING;
pub use export::{ExportRequest, ExportSummary, export};
pub use import::{ImportOptions, ImportSummary, import};

#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("archive entry {entry:?}: {problem}")]
    Entry { entry: String, problem: String },
    #[error("the archive cannot be read after entry {after:?}: {reason}")]
    Unreadable { after: String, reason: String },
    #[error("archive refused: {0}")]
    Invalid(String),
    #[error(
        "this is a classic `docker save` archive: it has no registry manifests, so berth would have to \
         write new ones whose digests differ from the origin's (pulls by tag would work, pulls by the \
         origin's digest would not); pass --docker-save to import it anyway"
    )]
    DockerSaveRefused,
    #[error("upstream {0:?} is not configured (configured: {1}); name one with --upstream")]
    UnknownUpstream(String, String),
    #[error("{0}")]
    Image(#[from] crate::image_ref::ImageRefError),
    #[error("{image}: {source}")]
    Cache {
        image: String,
        #[source]
        source: CacheError,
    },
    #[error("{0}")]
    Usage(String),
}

impl ArchiveError {
    fn cache(image: &str, source: CacheError) -> Self {
        ArchiveError::Cache {
            image: image.to_string(),
            source,
        }
    }

    /// A problem with how berth was asked, not with an archive or a cache.
    pub fn is_usage(&self) -> bool {
        matches!(self, ArchiveError::Usage(_) | ArchiveError::Image(_))
    }
}
