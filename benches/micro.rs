//! Criterion micro-benches: the CPU work on berth's hot paths. Hashing runs
//! over every byte of every cold blob; manifest handling (media type, Accept
//! negotiation, conversion, reference parsing) runs on every manifest request.
//!
//! `cargo bench --bench micro` (or `bash benches/run.sh`, which runs these
//! and the load benchmark). Under `cargo test` each bench runs once, as a smoke
//! test.

use std::collections::HashMap;
use std::hint::black_box;

use axum::http::{HeaderMap, HeaderValue, header::ACCEPT};
use berth::config::ConvertMode;
use berth::convert::{ChildOutcome, convert_index, convert_manifest};
use berth::media::{Accept, negotiate};
use berth::reference::{Algorithm, Digest, Hasher, RepoName, Tag};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn hashing(c: &mut Criterion) {
    let data: Vec<u8> = (0..(8u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let mut group = c.benchmark_group("hash");
    group.throughput(Throughput::Bytes(data.len() as u64));
    // The chunk sizes berth hashes in: a network read, and the file chunk.
    for chunk in [16usize << 10, 256 << 10] {
        group.bench_function(format!("sha256_8MiB_in_{}KiB_chunks", chunk >> 10), |b| {
            b.iter(|| {
                let mut h = Hasher::new(Algorithm::Sha256);
                for part in data.chunks(chunk) {
                    h.update(part);
                }
                black_box(h.finish())
            })
        });
    }
    group.bench_function("sha512_8MiB_in_256KiB_chunks", |b| {
        b.iter(|| {
            let mut h = Hasher::new(Algorithm::Sha512);
            for part in data.chunks(256 << 10) {
                h.update(part);
            }
            black_box(h.finish())
        })
    });
    group.finish();
}

fn digest_hex(i: usize) -> String {
    format!("sha256:{i:064x}")
}

/// An OCI image manifest with `layers` gzip layers.
fn oci_manifest(layers: usize) -> Vec<u8> {
    let layers: Vec<_> = (0..layers)
        .map(|i| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest_hex(i + 1),
                "size": 1000 + i,
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_hex(0), "size": 1234},
        "layers": layers,
        "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
    }))
    .unwrap_or_default()
}

/// A buildx-style index: two platforms and an attestation.
fn oci_index() -> (Vec<u8>, HashMap<String, ChildOutcome>) {
    let children = [
        ("amd64", "linux", 101),
        ("arm64", "linux", 102),
        ("unknown", "unknown", 103),
    ];
    let manifests: Vec<_> = children
        .iter()
        .map(|(arch, os, i)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest_hex(*i),
                "size": 500,
                "platform": {"architecture": arch, "os": os},
            })
        })
        .collect();
    let bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .unwrap_or_default();
    let mut outcomes = HashMap::new();
    for i in [101usize, 102] {
        outcomes.insert(
            digest_hex(i),
            ChildOutcome::Kept {
                digest: digest_hex(i + 100),
                size: 480,
                media_type: "application/vnd.docker.distribution.manifest.v2+json".into(),
                platform: None,
            },
        );
    }
    (bytes, outcomes)
}

/// docker 1.13's Accept: one header line per type.
fn docker_113_accept() -> HeaderMap {
    let mut h = HeaderMap::new();
    for t in [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    ] {
        h.append(ACCEPT, HeaderValue::from_static(t));
    }
    h
}

fn manifests(c: &mut Criterion) {
    let manifest = oci_manifest(20);
    let (index, outcomes) = oci_index();
    let headers = docker_113_accept();
    let mut group = c.benchmark_group("manifest");
    group.bench_function("media_type_of_20_layer_manifest", |b| {
        b.iter(|| black_box(berth::manifest::media_type(black_box(&manifest), None)))
    });
    group.bench_function("accept_merge_and_negotiate", |b| {
        b.iter(|| {
            let accept = Accept::from_headers(black_box(&headers));
            black_box(negotiate(
                &accept,
                "application/vnd.oci.image.manifest.v1+json",
                true,
                ConvertMode::Auto,
                false,
            ))
        })
    });
    group.bench_function("convert_20_layer_oci_manifest", |b| {
        b.iter(|| black_box(convert_manifest(black_box(&manifest))))
    });
    group.bench_function("convert_index_with_attestation", |b| {
        b.iter(|| black_box(convert_index(black_box(&index), &outcomes)))
    });
    group.bench_function("sha256_of_manifest", |b| {
        b.iter(|| black_box(Digest::sha256_of(black_box(&manifest))))
    });
    group.finish();
}

fn references(c: &mut Criterion) {
    let digest = digest_hex(42);
    let mut group = c.benchmark_group("reference");
    group.bench_function("parse_nested_repo_name", |b| {
        b.iter(|| black_box(RepoName::parse(black_box("library/org-name/some.image_name/sub"))))
    });
    group.bench_function("parse_tag", |b| {
        b.iter(|| black_box(Tag::parse(black_box("v1.2.3-alpine3.19"))))
    });
    group.bench_function("parse_digest", |b| {
        b.iter(|| black_box(Digest::parse(black_box(&digest))))
    });
    group.finish();
}

criterion_group!(benches, hashing, manifests, references);
criterion_main!(benches);
