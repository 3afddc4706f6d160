//! Manifest media types and `Accept` negotiation.
//!
//! Clients send `Accept` as several header lines (dockerd sends six, docker
//! 1.13 one per type in random order) and as comma lists; both are merged here.

use axum::http::HeaderMap;
use axum::http::header::ACCEPT;

use crate::config::ConvertMode;

pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_MANIFEST_V1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
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
            .map(|item| item.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
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
        self.types
            .iter()
            .any(|t| t == "*/*" || *t == media_type || (t == "application/*" && media_type.starts_with("application/")))
    }
}

/// Whether a stored media type is an OCI type that has a Docker equivalent.
pub fn is_oci(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == OCI_INDEX
}

/// What to answer for a stored manifest, given the client's Accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiation {
    /// Serve the stored bytes.
    Original,
    /// Serve the Docker schema2 conversion.
    Convert,
    /// The client accepts neither the stored type nor its conversion.
    NotAcceptable,
    /// By the original digest, a Docker-only client: converting would hand it
    /// bytes that do not match the digest it asked for.
    ByDigestNotAcceptable,
}

/// `by_tag`: the request named a tag; `converted`: the digest asked for is
/// one berth produced by conversion (served whatever the Accept).
pub fn negotiate(accept: &Accept, stored: &str, by_tag: bool, mode: ConvertMode, converted: bool) -> Negotiation {
    let original_ok = accept.accepts(stored);
    let Some(docker) = docker_equivalent(stored) else {
        return if original_ok || converted {
            Negotiation::Original
        } else {
            Negotiation::NotAcceptable
        };
    };
    if !by_tag {
        return match () {
            _ if original_ok || converted => Negotiation::Original,
            _ if mode != ConvertMode::Never && accept.accepts(docker) => Negotiation::ByDigestNotAcceptable,
            _ => Negotiation::NotAcceptable,
        };
    }
    match mode {
        ConvertMode::Docker => Negotiation::Convert,
        _ if original_ok => Negotiation::Original,
        ConvertMode::Auto if accept.accepts(docker) => Negotiation::Convert,
        _ => Negotiation::NotAcceptable,
    }
}

/// The Docker type an OCI type converts to.
pub fn docker_equivalent(media_type: &str) -> Option<&'static str> {
    match media_type {
        OCI_MANIFEST => Some(DOCKER_MANIFEST_V2),
        OCI_INDEX => Some(DOCKER_MANIFEST_LIST),
        _ => None,
    }
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
        for t in [DOCKER_MANIFEST_V2, OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST] {
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
    fn negotiation_table() {
        use ConvertMode::*;
        use Negotiation::*;
        let docker_only = Accept::from_headers(&headers(&[
            DOCKER_MANIFEST_V2,
            DOCKER_MANIFEST_LIST,
            DOCKER_MANIFEST_V1_SIGNED,
        ]));
        let modern = Accept::from_headers(&headers(&[
            OCI_INDEX,
            OCI_MANIFEST,
            DOCKER_MANIFEST_V2,
            DOCKER_MANIFEST_LIST,
        ]));
        let none = Accept::default();
        let oci_only = Accept::from_headers(&headers(&[OCI_MANIFEST]));
        let cases = [
            // (accept, stored, by_tag, mode, converted) -> outcome
            (&docker_only, OCI_MANIFEST, true, Auto, false, Convert),
            (&docker_only, OCI_INDEX, true, Auto, false, Convert),
            (&docker_only, OCI_MANIFEST, true, Never, false, NotAcceptable),
            (&docker_only, OCI_MANIFEST, false, Auto, false, ByDigestNotAcceptable),
            (&docker_only, DOCKER_MANIFEST_V2, false, Auto, true, Original),
            (&oci_only, DOCKER_MANIFEST_V2, false, Auto, true, Original),
            (&docker_only, DOCKER_MANIFEST_V2, true, Auto, false, Original),
            (&modern, OCI_MANIFEST, true, Auto, false, Original),
            (&modern, OCI_MANIFEST, true, Docker, false, Convert),
            (&modern, OCI_MANIFEST, false, Docker, false, Original),
            (&none, OCI_INDEX, true, Auto, false, Original),
            (&oci_only, OCI_INDEX, true, Auto, false, NotAcceptable),
            (&oci_only, DOCKER_MANIFEST_V2, true, Auto, false, NotAcceptable),
        ];
        for (i, (accept, stored, by_tag, mode, converted, want)) in cases.into_iter().enumerate() {
            assert_eq!(negotiate(accept, stored, by_tag, mode, converted), want, "case {i}");
        }
    }

    #[test]
    fn wildcard_and_absent() {
        assert!(Accept::from_headers(&HeaderMap::new()).accepts(OCI_INDEX));
        assert!(Accept::from_headers(&headers(&["*/*"])).accepts(OCI_INDEX));
        assert!(Accept::from_headers(&headers(&["application/*"])).accepts(OCI_MANIFEST));
        assert!(!Accept::from_headers(&headers(&["text/html"])).accepts(OCI_MANIFEST));
    }
}
