//! Manifest media types and `Accept` negotiation.
//!
//! Clients send `Accept` as several header lines (dockerd sends six, docker
//! 1.13 one per type in random order) and as comma lists; both are merged here.

use axum::http::HeaderMap;
use axum::http::header::ACCEPT;

pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_MANIFEST_V1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Every manifest type berth asks the upstream for, so the cached tag holds
/// the upstream's own manifest (the list/index rather than one platform).
pub const ALL_MANIFEST_TYPES: [&str; 6] = [
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST_V2,
    DOCKER_MANIFEST_V1_SIGNED,
    DOCKER_MANIFEST_V1,
];

/// The media types a client accepts, merged from every `Accept` line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accept {
    types: Vec<String>,
}

impl Accept {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let types = headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|line| line.split(','))
            // q-values and other parameters do not change what berth can serve.
            .map(|item| {
                item.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            })
            .filter(|t| !t.is_empty())
            .collect();
        Self { types }
    }

    /// Whether a manifest of `media_type` may be served as is. No `Accept`, or
    /// `*/*`, accepts everything; otherwise the stored type must be named.
    pub fn accepts(&self, media_type: &str) -> bool {
        if self.types.is_empty() {
            return true;
        }
        let media_type = media_type.to_ascii_lowercase();
        self.types.iter().any(|t| {
            t == "*/*"
                || *t == media_type
                || (t == "application/*" && media_type.starts_with("application/"))
        })
    }
}

/// Whether a stored media type is an OCI type that has a Docker equivalent.
pub fn is_oci(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == OCI_INDEX
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(ACCEPT, HeaderValue::from_str(l).unwrap());
        }
        h
    }

    #[test]
    fn merges_lines_and_comma_lists() {
        let a = Accept::from_headers(&headers(&[
            DOCKER_MANIFEST_V2,
            &format!("{OCI_INDEX}, {OCI_MANIFEST};q=0.9"),
            DOCKER_MANIFEST_LIST,
        ]));
        for t in [
            DOCKER_MANIFEST_V2,
            OCI_INDEX,
            OCI_MANIFEST,
            DOCKER_MANIFEST_LIST,
        ] {
            assert!(a.accepts(t), "{t}");
        }
        assert!(!a.accepts(DOCKER_MANIFEST_V1));
    }

    #[test]
    fn docker_1_13_rejects_oci() {
        // docker 1.13 sends these three, one per line, in random order.
        let a = Accept::from_headers(&headers(&[
            DOCKER_MANIFEST_LIST,
            DOCKER_MANIFEST_V1_SIGNED,
            DOCKER_MANIFEST_V2,
        ]));
        assert!(!a.accepts(OCI_MANIFEST));
        assert!(!a.accepts(OCI_INDEX));
        assert!(a.accepts(DOCKER_MANIFEST_V2));
    }

    #[test]
    fn wildcard_and_absent() {
        assert!(Accept::from_headers(&HeaderMap::new()).accepts(OCI_INDEX));
        assert!(Accept::from_headers(&headers(&["*/*"])).accepts(OCI_INDEX));
        assert!(Accept::from_headers(&headers(&["application/*"])).accepts(OCI_MANIFEST));
        assert!(!Accept::from_headers(&headers(&["text/html"])).accepts(OCI_MANIFEST));
    }
}
