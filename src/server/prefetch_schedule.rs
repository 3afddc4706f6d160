//! `[[prefetch]]`: each schedule warms its images once berth listens, then
//! every `every`, through the upstreams in force at that moment (a SIGHUP
//! that changes them is followed). Tags revalidate as for any pull, so a
//! moved tag's new digest is fetched. Each run's outcome goes to the
//! metrics and `/_berth/status`; a failing image is logged with its cause.

use std::sync::Arc;

use crate::api::AppState;
use crate::config::PrefetchSchedule;
use crate::metrics::{PrefetchFailure, PrefetchOutcome};
use crate::prefetch::PrefetchRequest;

pub fn start(state: &Arc<AppState>) {
    for (n, schedule) in state.config.prefetch.iter().enumerate() {
        let (state, schedule) = (state.clone(), schedule.clone());
        tokio::spawn(async move {
            loop {
                run_once(&state, n, &schedule).await;
                tokio::time::sleep(schedule.every).await;
            }
        });
    }
}

async fn run_once(state: &AppState, n: usize, schedule: &PrefetchSchedule) {
    let platforms: Vec<Option<String>> = match schedule.platforms.as_slice() {
        [] => vec![None],
        some => some.iter().cloned().map(Some).collect(),
    };
    let mut outcome = PrefetchOutcome {
        schedule: n,
        at_unix_ms: 0,
        every_secs: schedule.every.as_secs(),
        images: schedule.images.len(),
        ok: 0,
        failed: 0,
        bytes_fetched: 0,
        failures: Vec::new(),
    };
    let mut failed = std::collections::BTreeSet::new();
    for platform in platforms {
        let request = PrefetchRequest {
            images: schedule.images.clone(),
            platform,
        };
        let upstreams = state.live().upstreams.clone();
        match crate::prefetch::run(&state.cache, &upstreams, &request, &|_, _| {}).await {
            Ok(report) => {
                outcome.bytes_fetched = outcome.bytes_fetched.saturating_add(report.bytes_fetched);
                for image in report.images.iter().filter(|i| i.warmed.is_none()) {
                    let cause = image.cause.clone().unwrap_or_default();
                    tracing::warn!(
                        schedule = n,
                        image = %image.image,
                        cause = %cause,
                        error = image.error.as_deref().unwrap_or_default(),
                        "prefetch: image not warmed"
                    );
                    if failed.insert(image.image.clone()) {
                        outcome.failures.push(PrefetchFailure {
                            image: image.image.clone(),
                            cause,
                            hint: image.hint.clone().unwrap_or_default(),
                        });
                    }
                }
            }
            // Validated at start; a platform cannot fail to parse here.
            Err(e) => tracing::warn!(schedule = n, error = %e, "prefetch: run refused"),
        }
    }
    outcome.failed = failed.len();
    outcome.ok = outcome.images.saturating_sub(outcome.failed);
    outcome.at_unix_ms = crate::events::now_ms();
    tracing::info!(
        schedule = n,
        images = outcome.images,
        ok = outcome.ok,
        failed = outcome.failed,
        bytes_fetched = outcome.bytes_fetched,
        "prefetch run done"
    );
    state.events.metrics.prefetched(outcome);
}
