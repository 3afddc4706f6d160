//! `berth doctor`: checks the config, the cache directory and every endpoint
//! of every upstream step by step, then resolves the images asked for, and
//! reports each step with the failure cause and hint a pull would get.
//!
//! Calls go one way: doctor reads `config`, asks `upstream` (through its
//! single-request probes) and the cache lock's state, and names causes from
//! `failure`; it never uses `api` or `server`, and never takes the cache
//! lock. After a step fails, the steps that depend on it are shown skipped.

mod image_steps;
mod local_steps;
mod render;
mod upstream_steps;

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use thiserror::Error;

use crate::config::Config;
use crate::events::Events;
use crate::failure::{Category, FailureCause};
pub use crate::image_ref::{ImageRef, ImageRefError};
use crate::upstream::Upstream;
pub use render::{json, table};

#[derive(Debug, Error)]
pub enum DoctorError {
    #[error("{0}")]
    Image(#[from] ImageRefError),
}

/// How a step ended. Only `Fail` makes doctor exit 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    /// Works now, but is close to failing (little rate-limit headroom, a
    /// disk smaller than `cache.max_size`).
    Warn,
    /// Worth knowing, not a problem (a lock held by a running berth).
    Info,
    Fail,
    /// Not tried: a step it depends on failed.
    Skip,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Warn => "warn",
            Outcome::Info => "info",
            Outcome::Fail => "fail",
            Outcome::Skip => "skip",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// What the step belongs to: "local", "upstream docker.io https://…", "image …".
    pub group: String,
    pub step: String,
    pub result: Outcome,
    pub cause: Option<FailureCause>,
    pub category: Option<Category>,
    pub hint: Option<&'static str>,
    pub detail: String,
    pub elapsed_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    /// No step failed.
    pub ok: bool,
    pub steps: Vec<Step>,
}

/// The steps of one group, in order.
pub(crate) struct Steps {
    group: String,
    steps: Vec<Step>,
}

impl Steps {
    fn new(group: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            steps: Vec::new(),
        }
    }

    fn push(&mut self, step: &str, result: Outcome, cause: Option<FailureCause>, detail: String, started: Instant) {
        self.steps.push(Step {
            group: self.group.clone(),
            step: step.to_string(),
            result,
            cause,
            category: cause.map(FailureCause::category),
            hint: cause.map(FailureCause::hint),
            detail,
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
    }

    fn pass(&mut self, step: &str, detail: String, started: Instant) {
        self.push(step, Outcome::Pass, None, detail, started);
    }

    fn fail(&mut self, step: &str, cause: FailureCause, detail: String, started: Instant) {
        self.push(step, Outcome::Fail, Some(cause), detail, started);
    }

    /// Every step in `names` as skipped, because `why`.
    fn skip_all(&mut self, names: &[&str], why: &str) {
        let now = Instant::now();
        for name in names {
            self.push(name, Outcome::Skip, None, why.to_string(), now);
        }
    }

    fn into_steps(self) -> Vec<Step> {
        self.steps
    }
}

/// Run every check; `images` as a person types them to docker. An image
/// that is not a valid reference is a usage error, not a finding.
pub async fn run(config: &Config, origin: &str, images: &[String]) -> Result<Report, DoctorError> {
    let mut refs = Vec::new();
    let mut unrouted = Vec::new();
    for text in images {
        match ImageRef::parse(text, &config.upstreams) {
            Ok(r) => refs.push(r),
            Err(e @ ImageRefError::NotConfigured { .. }) => unrouted.push(e),
            Err(e) => return Err(e.into()),
        }
    }
    let mut steps = local_steps::check(config, origin);
    let events = Arc::new(Events::default());
    for (index, cfg) in config.upstreams.iter().enumerate() {
        let mine: Vec<&ImageRef> = refs.iter().filter(|r| r.upstream == index).collect();
        let upstream = match Upstream::new(cfg, events.clone()) {
            Ok(u) => u,
            Err(e) => {
                let mut s = Steps::new(format!("upstream {}", cfg.name));
                s.fail("client", e.cause(), e.to_string(), Instant::now());
                steps.extend(s.into_steps());
                continue;
            }
        };
        let healthy = upstream_steps::check(&upstream, mine.first().copied(), &mut steps).await;
        for image in mine {
            steps.extend(image_steps::resolve(&upstream, healthy, image).await);
        }
    }
    for e in unrouted {
        let mut s = Steps::new(format!("image {}", e.image()));
        s.fail(
            "route",
            FailureCause::UpstreamNotConfigured,
            e.to_string(),
            Instant::now(),
        );
        steps.extend(s.into_steps());
    }
    let ok = !steps.iter().any(|s| s.result == Outcome::Fail);
    Ok(Report { ok, steps })
}
