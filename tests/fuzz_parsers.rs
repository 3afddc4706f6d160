//! Property tests over every parser that reads client or upstream input
//! (fuzzing on stable Rust): arbitrary bytes and strings never panic, and
//! what is accepted round-trips. The private parsers (Range, auth challenges,
//! the upstream tag list and Link header) have theirs in their own modules,
//! named `fuzz_*`.
//!
//! A few thousand cases each by default; `PROPTEST_CASES=100000` for a long
//! run (see README, "Fuzzing").

use std::collections::HashMap;

use axum::http::{HeaderMap, HeaderValue, header::ACCEPT};
use berth::api::path::{Endpoint, parse};
use berth::convert::{convert_index, convert_manifest, index_children, platform_from_config};
use berth::manifest::media_type;
use berth::media::{Accept, DOCKER_MANIFEST_V2, OCI_INDEX, OCI_MANIFEST};
use berth::reference::{Digest, Reference, RepoName, Tag};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    ProptestConfig::with_cases(cases)
}

/// Strings from an alphabet that hits the grammars' edges often.
fn edgy() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~]{0,40}",
        "[a-zA-Z0-9._/:@%+-]{0,40}",
        "[a-z0-9]{1,8}(/(manifests|blobs|tags|referrers|uploads|list|sha256:[0-9a-f]{0,70}|[a-z._-]{0,8})){0,6}",
        "(sha256|sha512|md5|SHA256):[0-9a-fA-F]{0,130}",
    ]
}

/// Component by the distribution grammar: `[a-z0-9]+([._-][a-z0-9]+)*`.
const COMPONENT: &str = "[a-z0-9]{1,6}([._-][a-z0-9]{1,6}){0,3}";

fn repo_name() -> impl Strategy<Value = String> {
    proptest::collection::vec(COMPONENT, 1..5).prop_map(|c| c.join("/"))
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        "[a-z:./+0-9]{0,20}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::from(OCI_MANIFEST)),
        Just(serde_json::Value::from(OCI_INDEX)),
        Just(serde_json::Value::from("application/vnd.oci.image.layer.v1.tar+gzip")),
        Just(serde_json::Value::from("application/vnd.oci.image.config.v1+json")),
        "[0-9a-f]{64}".prop_map(|h| serde_json::Value::from(format!("sha256:{h}"))),
    ];
    let keys = prop_oneof![
        Just("schemaVersion"),
        Just("mediaType"),
        Just("config"),
        Just("layers"),
        Just("manifests"),
        Just("digest"),
        Just("size"),
        Just("platform"),
        Just("architecture"),
        Just("os"),
        Just("urls"),
        Just("annotations"),
        Just("artifactType"),
        Just("subject"),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            proptest::collection::vec((keys.clone(), inner), 0..7).prop_map(|kv| {
                serde_json::Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

fn bytes_or_json() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// The path parser never panics, and what it recognises puts the path
    /// back together exactly.
    #[test]
    fn fuzz_path_parse_reassembles(rest in edgy()) {
        let rebuilt = match parse(&rest) {
            Endpoint::Base => Some(String::new()),
            Endpoint::Manifest { name, reference } => Some(format!("{name}/manifests/{reference}")),
            Endpoint::Blob { name, digest } => Some(format!("{name}/blobs/{digest}")),
            Endpoint::Referrers { name, digest } => Some(format!("{name}/referrers/{digest}")),
            Endpoint::Tags { name } => Some(format!("{name}/tags/list")),
            Endpoint::Upload { name } => {
                let tail = rest.strip_prefix(name).and_then(|t| t.strip_prefix("/blobs/uploads"));
                prop_assert!(tail.is_some_and(|t| t.is_empty() || t.starts_with('/')), "{rest:?}");
                None
            }
            Endpoint::Unknown => None,
        };
        if let Some(rebuilt) = rebuilt {
            prop_assert_eq!(rebuilt, rest);
        }
    }

    #[test]
    fn fuzz_repo_name_round_trips(s in prop_oneof![edgy(), repo_name()]) {
        if let Ok(name) = RepoName::parse(&s) {
            prop_assert_eq!(name.to_string(), s.clone());
            prop_assert!(s.len() <= 255);
            prop_assert!(!s.contains("..") && !s.contains("//") && !s.starts_with('/'));
            prop_assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)));
            prop_assert_eq!(name.component_count(), s.split('/').count());
        }
    }

    #[test]
    fn fuzz_grammar_names_are_accepted(s in repo_name()) {
        prop_assume!(s.len() <= 255);
        prop_assert_eq!(RepoName::parse(&s).map(|n| n.to_string()), Ok(s));
    }

    #[test]
    fn fuzz_tag_round_trips(s in prop_oneof![edgy(), "[A-Za-z0-9_][A-Za-z0-9_.-]{0,130}"]) {
        let grammar = s.len() <= 128
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        match Tag::parse(&s) {
            Ok(t) => {
                prop_assert!(grammar, "{s:?}");
                prop_assert_eq!(t.to_string(), s);
            }
            Err(_) => prop_assert!(!grammar, "{s:?} matches the grammar"),
        }
    }

    #[test]
    fn fuzz_digest_round_trips(
        s in prop_oneof![
            edgy(),
            "sha256:[0-9a-f]{64}",
            "sha512:[0-9a-f]{128}",
        ]
    ) {
        if let Ok(d) = Digest::parse(&s) {
            prop_assert_eq!(d.to_string(), s.clone());
            prop_assert_eq!(d.hex().len(), if s.starts_with("sha256:") { 64 } else { 128 });
            // Safe as a path component and a URL segment.
            prop_assert!(d.hex().bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
        let by_grammar = s.strip_prefix("sha256:").is_some_and(|h| h.len() == 64)
            || s.strip_prefix("sha512:").is_some_and(|h| h.len() == 128);
        if by_grammar && s.bytes().skip(7).all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            prop_assert!(Digest::parse(&s).is_ok(), "{s:?}");
        }
    }

    #[test]
    fn fuzz_reference_round_trips(s in edgy()) {
        if let Ok(r) = Reference::parse(&s) {
            prop_assert_eq!(r.to_string(), s.clone());
            prop_assert_eq!(matches!(r, Reference::Digest(_)), s.contains(':'));
        }
    }

    /// Accept lines of arbitrary bytes never panic; a type named on any line
    /// (with or without parameters) is accepted, and no Accept accepts all.
    #[test]
    fn fuzz_accept_lines(
        lines in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64),
                "[a-z/.+*;=, 0-9-]{0,60}".prop_map(String::into_bytes),
            ],
            0..6,
        ),
        named in "[a-z]{1,8}/[a-z.+-]{1,12}",
        q in "(;q=0\\.[0-9])?",
    ) {
        let mut headers = HeaderMap::new();
        for l in &lines {
            if let Ok(v) = HeaderValue::from_bytes(l) {
                headers.append(ACCEPT, v);
            }
        }
        let before = Accept::from_headers(&headers);
        let _ = before.accepts(DOCKER_MANIFEST_V2);
        let _ = before.accepts(&named);
        if headers.is_empty() {
            prop_assert!(before.accepts(&named));
        }
        headers.append(ACCEPT, HeaderValue::from_str(&format!("text/x, {}{q}", named.to_uppercase())).unwrap());
        prop_assert!(Accept::from_headers(&headers).accepts(&named));
    }

    /// Arbitrary bytes and arbitrary manifest-shaped JSON: no panic in type
    /// detection or conversion; a conversion that succeeds is a schema2
    /// manifest whose own type detection agrees, and is deterministic.
    #[test]
    fn fuzz_manifest_parsing_and_conversion(bytes in bytes_or_json(), content_type in proptest::option::of("[a-z/.+;= -]{0,40}")) {
        if let Ok(t) = media_type(&bytes, content_type.as_deref()) {
            prop_assert!(!t.is_empty());
        }
        if let Ok(out) = convert_manifest(&bytes) {
            prop_assert_eq!(media_type(&out, None), Ok(DOCKER_MANIFEST_V2.to_string()));
            prop_assert_eq!(convert_manifest(&bytes).ok(), Some(out));
        }
        let _ = index_children(&bytes);
        let _ = convert_index(&bytes, &HashMap::new());
        let _ = platform_from_config(&bytes);
    }
}
