//! berth: a pull-through caching registry mirror.
//!
//! Layers call one way: `api` → `cache` → `upstream` / the blob store.
//! `server` wires them to listeners; `failure` is the taxonomy every error
//! ends in.

pub mod admin;
pub mod api;
pub mod archive;
pub mod auth;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod convert;
pub mod doctor;
pub mod events;
pub mod failure;
pub mod failure_filter;
pub mod failures_table;
pub mod gc_table;
pub mod image_ref;
pub mod manifest;
pub mod media;
pub mod metrics;
pub mod prefetch;
pub mod redact;
pub mod reference;
pub mod routing;
pub mod server;
pub mod store;
pub mod suggest;
#[cfg(test)]
pub(crate) mod testing;
pub mod units;
pub mod upstream;

/// The in-module property tests (`fuzz_*`): a few thousand cases by default,
/// `PROPTEST_CASES` for a long run (see README, "Fuzzing").
#[cfg(test)]
pub(crate) fn fuzz_config() -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    proptest::test_runner::Config::with_cases(cases)
}
